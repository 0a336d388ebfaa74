//! The shared governor's driver: one Redis connection per relay ([`Coordinator`], a redis-rs
//! `ConnectionManager`, which reconnects by itself) and, per mailbox, the scripts' calls
//! ([`SharedMailbox`]; what it owes Redis is kept in `ledger.rs`). Every call has the configured timeout (200 ms by default); a call that
//! fails or times out puts the relay into fallback (`shared.rs`: [`Health`]), where each
//! mailbox keeps `limits / expected_replicas` alone and Redis is tried again once a second.
//!
//! Sends made in fallback are remembered (`ledger.rs`) and recorded in Redis when it answers
//! again, by age, so the shared window counts them where they happened. Every record is keyed
//! by its send's id, so recording one twice counts it once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, FromRedisValue, IntoConnectionInfo, ScriptInvocation};
use tokio::time::Instant;

use super::ledger::Ledger;
use super::scripts::{self, BACKFILL, HOLD, QUOTA};
use super::shared::{scrub, Answer, Change, Health, Keys, SharedSettings, SLOT_POLL};
use super::{Limits, DAILY_WINDOW, QUOTA_HOLD_MIN, QUOTA_HOLD_UNKNOWN};
use crate::sync::Lock as _;

/// Redis could not be used for this call (down, slow, or in the pause between tries): the
/// caller keeps its own share of the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// One relay's connection to the shared limits.
pub struct Coordinator {
    conn: ConnectionManager,
    settings: SharedSettings,
    health: Mutex<Health>,
    /// Names this process in lease and send ids (several replicas share one Redis).
    replica: String,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("redis", &self.settings.display_url())
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl Coordinator {
    /// Prepares the connection; nothing is sent until the first call, so a relay starts (in
    /// fallback) while Redis is away. Errors name the setting and never the URL itself.
    pub fn new(settings: SharedSettings) -> Result<Arc<Coordinator>, String> {
        let mut info = settings.url.as_str().into_connection_info().map_err(|e| {
            format!(
                "governor.shared is not a Redis URL: {}",
                scrub(&e.to_string(), &settings)
            )
        })?;
        if let Some(password) = &settings.password {
            let redis = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(redis);
        }
        let client = match &settings.ca_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("governor.shared_ca_file {}: {e}", path.display()))?;
                Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
            None => Client::open(info),
        }
        .map_err(|e| format!("governor.shared: {}", scrub(&e.to_string(), &settings)))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("governor.shared: {}", scrub(&e.to_string(), &settings)))?;
        let replica = format!(
            "{}-{}-{:08x}",
            gethostname::gethostname().to_string_lossy(),
            std::process::id(),
            rand::random::<u32>()
        );
        tracing::info!(
            redis = %settings.display_url(),
            expected_replicas = settings.expected_replicas,
            prefix = %settings.prefix,
            "mailbox limits are shared through Redis by every replica using it"
        );
        Ok(Arc::new(Coordinator {
            conn,
            settings,
            health: Mutex::new(Health::default()),
            replica,
            next_id: AtomicU64::new(0),
        }))
    }

    pub fn settings(&self) -> &SharedSettings {
        &self.settings
    }

    /// A fresh id for one send (its lease, its window entry, its recipients).
    fn new_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.replica)
    }

    /// Falling back now (Redis failed, and the pause before the next try is not over)?
    pub fn in_fallback(&self) -> bool {
        self.health.locked().is_down()
    }

    fn epoch(&self) -> u64 {
        self.health.locked().epoch()
    }

    /// For `/readyz`: what the relay does while Redis is away (a warning, never unready).
    pub fn warning(&self) -> Option<String> {
        let since = self.health.locked().down_since()?;
        Some(format!(
            "governor: Redis ({}) has not answered for {}s; each replica keeps its share of the mailbox limits (limits / governor.expected_replicas = {}) until it does; mail is still accepted and delivered",
            self.settings.display_url(),
            since.elapsed().as_secs(),
            self.settings.expected_replicas
        ))
    }

    /// Adds the fallback time since the last call to its counter.
    pub fn count_fallback_time(&self) {
        let secs = self.health.locked().take_fallback_secs(Instant::now());
        if secs > 0 {
            metrics::counter!("smtp_oauth_relay_governor_shared_fallback_seconds_total")
                .increment(secs);
        }
    }

    /// Runs one script with the timeout, and keeps the health state.
    async fn call<T: FromRedisValue>(&self, inv: &ScriptInvocation<'_>) -> Result<T, Unavailable> {
        if !self.health.locked().claim_try(Instant::now()) {
            return Err(Unavailable);
        }
        let mut conn = self.conn.clone();
        let started = Instant::now();
        let result = tokio::time::timeout(self.settings.timeout, inv.invoke_async(&mut conn)).await;
        metrics::histogram!("smtp_oauth_relay_governor_redis_seconds")
            .record(started.elapsed().as_secs_f64());
        let error = match result {
            Ok(Ok(v)) => {
                let change = self.health.locked().on_success(Instant::now());
                if let Change::CameBack(after) = change {
                    metrics::gauge!("smtp_oauth_relay_governor_shared_fallback").set(0.0);
                    tracing::info!(
                        redis = %self.settings.display_url(),
                        after_secs = after.as_secs(),
                        "shared governor: Redis answers again; the mailbox limits are shared by the fleet again"
                    );
                }
                return Ok(v);
            }
            Ok(Err(e)) => scrub(&e.to_string(), &self.settings),
            Err(_) => format!("no answer within {} ms", self.settings.timeout.as_millis()),
        };
        self.failed(&error);
        Err(Unavailable)
    }

    /// A call failed (or answered nonsense): the relay falls back until Redis answers again.
    fn failed(&self, error: &str) {
        if self.health.locked().on_failure(Instant::now()) == Change::WentDown {
            metrics::gauge!("smtp_oauth_relay_governor_shared_fallback").set(1.0);
            metrics::counter!("smtp_oauth_relay_governor_shared_fallbacks_total").increment(1);
            tracing::warn!(
                redis = %self.settings.display_url(),
                error = %error,
                expected_replicas = self.settings.expected_replicas,
                "shared governor: Redis cannot be used; this replica keeps its share of each mailbox's limits (limits / governor.expected_replicas) until Redis answers again; mail is still accepted and delivered"
            );
        } else {
            tracing::debug!(error = %error, "shared governor: Redis still unavailable");
        }
    }
}

/// A configuration hold found in Redis (set by this or another replica).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedHold {
    pub advice: String,
    pub from_token: bool,
    pub until: Instant,
}

/// One mailbox's shared limits, as one governor uses them.
#[derive(Debug)]
pub struct SharedMailbox {
    coord: Arc<Coordinator>,
    keys: Keys,
    full: Limits,
    fallback: Limits,
    /// Leases to renew, sends and refunds Redis does not know of yet.
    ledger: Mutex<Ledger>,
    /// Orders the lease calls of this mailbox: a renewal never reaches Redis after the
    /// release of a lease it still names.
    lease_calls: tokio::sync::Mutex<()>,
    /// The coordinator's epoch this mailbox last caught up with.
    synced_epoch: AtomicU64,
    hold: Mutex<Option<SharedHold>>,
    /// One acquisition at a time talks to Redis for this mailbox in this replica; the
    /// others wait here instead of polling Redis side by side.
    pub(super) gate: tokio::sync::Mutex<()>,
}

impl SharedMailbox {
    pub fn new(coord: Arc<Coordinator>, keys: Keys, full: Limits) -> SharedMailbox {
        let fallback = full.divided(coord.settings.expected_replicas);
        SharedMailbox {
            coord,
            keys,
            full,
            fallback,
            ledger: Mutex::new(Ledger::default()),
            lease_calls: tokio::sync::Mutex::new(()),
            synced_epoch: AtomicU64::new(0),
            hold: Mutex::new(None),
            gate: tokio::sync::Mutex::new(()),
        }
    }

    pub fn coordinator(&self) -> &Arc<Coordinator> {
        &self.coord
    }

    /// The limits this replica keeps locally: the mailbox's own while Redis answers (Redis
    /// keeps the fleet's), a share of them in `fallback`.
    pub(super) fn limits_for(&self, fallback: bool) -> &Limits {
        if fallback {
            &self.fallback
        } else {
            &self.full
        }
    }

    pub(super) fn in_fallback(&self) -> bool {
        self.coord.in_fallback()
    }

    pub(super) fn new_id(&self) -> String {
        self.coord.new_id()
    }

    /// Asks Redis for one send's permit: `allowed` sessions (the mailbox's, lower after a
    /// `432 4.3.2`) and `recipients` recipients. On `Go` the lease is held from now.
    pub(super) async fn acquire(
        &self,
        id: &str,
        recipients: u32,
        allowed: u32,
    ) -> Result<Answer, Unavailable> {
        self.catch_up().await?;
        let inv = scripts::acquire(
            &self.keys,
            id,
            recipients,
            &self.full,
            allowed,
            self.coord.settings.lease,
            None,
        );
        let (code, ms): (i64, i64) = self.coord.call(&inv).await?;
        let Some(answer) = Answer::from_reply(code, ms) else {
            self.coord.failed(&format!(
                "unexpected reply {code} from the acquisition script"
            ));
            return Err(Unavailable);
        };
        if answer == Answer::Go {
            self.ledger.locked().leased(id);
        }
        Ok(answer)
    }

    /// A send taken locally while Redis was away: recorded there when it is back.
    pub(super) fn taken_in_fallback(&self, id: &str, started: Instant, recipients: u32) {
        self.ledger
            .locked()
            .taken_in_fallback(id, started, recipients);
    }

    /// A send ended (its permit dropped), or an acquisition was abandoned (`refund`): its
    /// lease is no longer renewed from this moment. Call [`settle`](Self::settle) next.
    pub(super) fn end(&self, id: &str, refund: bool) {
        self.ledger.locked().end(id, Instant::now(), refund);
    }

    /// Tells Redis that a send [`end`](Self::end)ed: frees its lease and counts it from now,
    /// or gives everything back when `refund`. What Redis cannot take now is owed and sent
    /// when it answers again.
    pub(super) async fn settle(&self, id: &str, started: Instant, recipients: u32, refund: bool) {
        let _calls = self.lease_calls.lock().await;
        let now = Instant::now();
        if refund {
            if self.refund(&[(id.to_string(), recipients)]).await.is_err() {
                self.ledger.locked().refund_failed(id, recipients);
            }
            return;
        }
        let inv = scripts::release(&self.keys, id, &self.full, None);
        if self.coord.call::<i64>(&inv).await.is_err() {
            self.ledger
                .locked()
                .release_failed(id, started, now, recipients);
        }
    }

    async fn refund(&self, sends: &[(String, u32)]) -> Result<(), Unavailable> {
        let inv = scripts::refund(&self.keys, sends);
        self.coord.call::<i64>(&inv).await.map(|_| ())
    }

    /// Before this mailbox asks for anything else: after a return from fallback, renews the
    /// leases held; then sends what it owes (sends Redis may not know of, refunds it did not
    /// confirm), a chunk per call.
    pub(super) async fn catch_up(&self) -> Result<(), Unavailable> {
        let epoch = self.coord.epoch();
        let returned = self.synced_epoch.load(Ordering::Relaxed) != epoch;
        if !returned && !self.ledger.locked().owes() {
            return Ok(());
        }
        let _calls = self.lease_calls.lock().await;
        if returned {
            self.renew_locked().await?;
            self.synced_epoch.store(epoch, Ordering::Relaxed);
        }
        let mut recorded = 0;
        loop {
            let refunds = self.ledger.locked().refunds();
            if refunds.is_empty() {
                break;
            }
            self.refund(&refunds).await?;
            self.ledger.locked().refunded(&refunds);
        }
        loop {
            let now = Instant::now();
            let backlog = self.ledger.locked().backlog(now, DAILY_WINDOW);
            if backlog.is_empty() {
                break;
            }
            let mut inv = BACKFILL.prepare_invoke();
            inv.key(&self.keys.rate)
                .key(&self.keys.daily)
                .key(&self.keys.daily_total)
                .arg(if self.full.rate > 0 {
                    millis(self.full.rate_window)
                } else {
                    0
                })
                .arg(if self.full.daily_recipients > 0 {
                    millis(DAILY_WINDOW)
                } else {
                    0
                })
                .arg("");
            for p in &backlog {
                let finished = p.finished.map_or(-1, |f| {
                    i64::try_from(millis(now.saturating_duration_since(f))).unwrap_or(i64::MAX)
                });
                inv.arg(&p.id)
                    .arg(finished)
                    .arg(millis(now.saturating_duration_since(p.started)))
                    .arg(p.recipients);
            }
            self.coord.call::<i64>(&inv).await?;
            self.ledger.locked().recorded(&backlog);
            recorded += backlog.len();
        }
        if recorded > 0 {
            tracing::info!(
                sends = recorded,
                "shared governor: sends Redis did not know of (made while it was away) are recorded in the shared limits"
            );
        }
        Ok(())
    }

    /// Renews the leases of the sends in progress (and puts back any Redis lost).
    pub(super) async fn renew(&self) -> Result<(), Unavailable> {
        let _calls = self.lease_calls.lock().await;
        self.renew_locked().await
    }

    /// [`renew`](Self::renew) with `lease_calls` held: a lease ended meanwhile is not in the
    /// snapshot, and its release reaches Redis after this renewal, never before.
    async fn renew_locked(&self) -> Result<(), Unavailable> {
        let leases = self.ledger.locked().leases();
        if leases.is_empty() {
            return Ok(());
        }
        let inv = scripts::renew(&self.keys, self.coord.settings.lease, &leases, None);
        let missing: i64 = self.coord.call(&inv).await?;
        if missing > 0 {
            tracing::debug!(
                missing,
                "shared governor: session leases put back (they expired, or were taken while Redis was away)"
            );
        }
        Ok(())
    }

    /// Exchange said SubmissionQuotaExceeded: the hold is shared with every replica.
    pub(super) async fn quota_exceeded(&self) {
        let mut inv = QUOTA.prepare_invoke();
        inv.key(&self.keys.daily)
            .key(&self.keys.quota_hold)
            .arg(millis(DAILY_WINDOW))
            .arg(millis(QUOTA_HOLD_UNKNOWN))
            .arg(millis(QUOTA_HOLD_MIN))
            .arg("");
        let _ = self.coord.call::<i64>(&inv).await;
    }

    /// Shares a configuration hold for `for_` with every replica.
    pub async fn set_hold(&self, advice: &str, from_token: bool, for_: Duration) {
        let mut inv = HOLD.prepare_invoke();
        inv.key(&self.keys.hold)
            .arg("set")
            .arg(format!("{}:{advice}", u8::from(from_token)))
            .arg(millis(for_).max(1));
        if self.coord.call::<i64>(&inv).await.is_ok() {
            *self.hold.locked() = Some(SharedHold {
                advice: advice.to_string(),
                from_token,
                until: Instant::now() + for_,
            });
        }
    }

    /// Lifts the shared configuration hold (only one the token endpoint caused, when
    /// `only_token`).
    pub async fn lift_hold(&self, only_token: bool) {
        {
            let mut hold = self.hold.locked();
            if hold.as_ref().is_some_and(|h| !only_token || h.from_token) {
                *hold = None;
            }
        }
        let mut inv = HOLD.prepare_invoke();
        inv.key(&self.keys.hold)
            .arg("lift")
            .arg(u8::from(only_token).to_string());
        let _ = self.coord.call::<i64>(&inv).await;
    }

    /// The shared configuration hold as last read (by [`refresh_hold`](Self::refresh_hold)).
    pub fn hold(&self, now: Instant) -> Option<SharedHold> {
        self.hold.locked().clone().filter(|h| h.until > now)
    }

    /// Reads the shared hold; returns it when it is new to this replica.
    pub(super) async fn refresh_hold(&self) -> Result<Option<SharedHold>, Unavailable> {
        let mut inv = HOLD.prepare_invoke();
        inv.key(&self.keys.hold).arg("get");
        let got: Option<(String, i64)> = self.coord.call(&inv).await?;
        let now = Instant::now();
        let read = got.and_then(|(value, ms)| {
            let (flag, advice) = value.split_once(':')?;
            Some(SharedHold {
                advice: advice.to_string(),
                from_token: flag == "1",
                until: now + Duration::from_millis(u64::try_from(ms).ok()?),
            })
        });
        let mut cached = self.hold.locked();
        let new = match (&*cached, &read) {
            (Some(old), Some(h)) if old.advice == h.advice => None,
            (_, h) => h.clone(),
        };
        *cached = read;
        Ok(new)
    }

    pub(super) fn has_leases(&self) -> bool {
        self.ledger.locked().has_leases()
    }

    /// How long a waiter for a slot leased elsewhere sleeps before asking again.
    pub(super) fn slot_poll(&self) -> Duration {
        // Some jitter, so replicas waiting side by side do not ask in step.
        SLOT_POLL / 2 + SLOT_POLL.mul_f64(rand::random::<f64>())
    }

    pub(super) fn lease(&self) -> Duration {
        self.coord.settings.lease
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
