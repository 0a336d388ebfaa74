//! The sandbox's runtime state, shared by both listeners, every connection and the public
//! handle: the options, the counters tests read, the switches tests flip (token failure, SMTP
//! outage, submission quota, concurrency and rate limits, held token requests), and the
//! per-mailbox bookkeeping behind the limits (authenticated sessions, `MAIL FROM` times).
//!
//! Why a module of its own: the token endpoint, the SMTP server and `Sandbox` all read and
//! change this state, so it sits below them and imports none of them; `mod.rs` builds it and
//! hands it to the servers. Session counts, pacing, the SMTP outage and the count of open
//! connections are private and changed only through methods here; the guards
//! ([`SessionGuard`], [`OpenConnection`]) undo their count on drop, so a session that ends in
//! any way is counted out. Locks are `std` mutexes taken through `crate::sync::Lock` for
//! a few statements and never held across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::federated::Federation;
use super::issued::Registry;
use super::options::SandboxOptions;
use super::store::Store;
use crate::sync::Lock as _;

/// Ways to make the token endpoint fail on purpose, until cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFailure {
    /// 401 `invalid_client` AADSTS7000215 (as if the secret had been rotated).
    InvalidClient,
    /// 401 `invalid_client` AADSTS7000222 (the secret expired).
    SecretExpired,
    /// HTTP 503 with `Retry-After: 1` and `{"error":"temporarily_unavailable"}`.
    Unavailable503,
    /// HTTP 429 with `Retry-After: 1` (AADSTS90055 tenant throttling).
    TooMany429,
}

/// Ways to make the SMTP side unavailable on purpose, until cleared. Sessions already in
/// progress are not cut off (only `Storm451` affects their later commands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpOutage {
    /// The listening socket is closed, so new connections are refused (`ECONNREFUSED`, not
    /// a hang); when the outage ends the same port is bound again.
    Refuse,
    /// New connections are accepted, answered `421 4.3.2 Service not available, closing
    /// transmission channel` instead of the greeting, and closed.
    Greeting421,
    /// `MAIL FROM` and the end of DATA get `451 4.7.500 Access denied, please try again
    /// later`; nothing is stored.
    Storm451,
}

/// Counters the tests and benchmarks read.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub token_requests: AtomicU64,
    pub tokens_issued: AtomicU64,
    pub auth_attempts: AtomicU64,
    pub auth_failures: AtomicU64,
    /// `MAIL` refused with `451 4.7.500` by the message rate limit.
    pub rate_violations: AtomicU64,
    /// `MAIL` refused with `432 4.3.2` by the concurrency limit.
    pub concurrency_rejections: AtomicU64,
    /// Message bodies whose end (the final dot, or `BDAT ... LAST`) was read, whatever the
    /// reply: counted before any end-of-data script (such as `slow-<N>`) runs.
    pub bodies_received: AtomicU64,
}

/// The per-mailbox message rate limit and every accepted `MAIL FROM`'s time.
#[derive(Debug)]
struct Pacing {
    limit: u32,
    window: Duration,
    /// Lowercased mailbox -> times of accepted `MAIL FROM`s, oldest first.
    times: HashMap<String, Vec<Instant>>,
}

/// Rolling-window admission. `times` are earlier admissions, oldest first. Admits `now`
/// (appending it) unless `limit` (0 = no limit) admissions already lie within `window`
/// before it, i.e. in `(now - window, now]`.
fn admit(times: &mut Vec<Instant>, now: Instant, limit: u32, window: Duration) -> bool {
    if limit > 0 {
        let in_window = match now.checked_sub(window) {
            Some(since) => times.len() - times.partition_point(|&t| t <= since),
            None => times.len(),
        };
        if in_window >= limit as usize {
            return false;
        }
    }
    times.push(now);
    true
}

/// "Now" for pacing: tokio's clock, so a test running on a paused clock sees virtual time.
/// Without a paused clock it is `std::time::Instant::now()`.
fn pacing_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Authenticated sessions of one mailbox: now and the most seen at once.
#[derive(Debug, Default, Clone, Copy)]
struct MailboxSessions {
    active: u32,
    peak: u32,
}

/// State shared by both listeners and every connection.
pub(crate) struct Shared {
    pub opts: SandboxOptions,
    /// `tid` claim: the tenant GUID (random if the tenant option is a domain name).
    pub tenant_id: String,
    /// `oid` claim: the service principal's object ID.
    pub app_oid: String,
    pub counters: Counters,
    pub tokens: Registry,
    /// Device codes and refresh tokens of delegated sign-ins.
    pub delegated: Mutex<super::delegated::Delegated>,
    /// Federated tokens minted (`Sandbox::federated_token`, IMDS) and IMDS's count.
    pub federation: Federation,
    /// Registered certificates, `jti`s seen, assertions accepted (`assertion.rs`).
    pub assertions: Mutex<super::assertion::AssertionState>,
    pub token_failure: Mutex<Option<TokenFailure>>,
    sessions: Mutex<HashMap<String, MailboxSessions>>,
    pub store: Store,
    /// Cancelled on shutdown; every connection task races its I/O against it.
    pub cancel: CancellationToken,
    /// The SMTP outage in force, if any.
    smtp_outage: Mutex<Option<SmtpOutage>>,
    /// End of DATA gets `554 5.2.0 ...SubmissionQuotaExceededException` while set.
    pub quota_exceeded: AtomicBool,
    /// The concurrency limit in force (starts as `max_connections_per_mailbox`).
    pub max_connections: AtomicU32,
    pacing: Mutex<Pacing>,
    /// True while token requests are held unanswered (`Sandbox::hold_token_requests`).
    pub token_hold: tokio::sync::watch::Sender<bool>,
    /// Woken whenever a token request is counted (`Sandbox::wait_for_token_requests`).
    pub token_arrived: Notify,
    /// SMTP connections whose task is running (accepted and not yet finished).
    smtp_open: AtomicU64,
    /// `expires_in` of tokens issued from now on, in seconds (starts as `token_lifetime`).
    token_lifetime_secs: AtomicU64,
}

impl Shared {
    /// The state of a sandbox about to start: no sessions, no outage, no failure, the
    /// limits from `opts`. `tenant_id` and `app_oid` are the `tid` and `oid` claims.
    pub(crate) fn new(
        opts: SandboxOptions,
        store: Store,
        tenant_id: String,
        app_oid: String,
    ) -> Shared {
        let pacing = Pacing {
            limit: opts.rate_limit,
            window: opts.rate_window,
            times: HashMap::new(),
        };
        let max_connections = AtomicU32::new(opts.max_connections_per_mailbox);
        let token_lifetime_secs = AtomicU64::new(opts.token_lifetime.as_secs());
        let assertions = Mutex::new(super::assertion::AssertionState::new(
            opts.certificates.clone(),
        ));
        Shared {
            assertions,
            opts,
            tenant_id,
            app_oid,
            counters: Counters::default(),
            tokens: Registry::default(),
            delegated: Mutex::new(Default::default()),
            federation: Federation::default(),
            token_failure: Mutex::new(None),
            sessions: Mutex::new(HashMap::new()),
            store,
            cancel: CancellationToken::new(),
            smtp_outage: Mutex::new(None),
            quota_exceeded: AtomicBool::new(false),
            max_connections,
            pacing: Mutex::new(pacing),
            token_hold: tokio::sync::watch::Sender::new(false),
            token_arrived: Notify::new(),
            smtp_open: AtomicU64::new(0),
            token_lifetime_secs,
        }
    }

    /// The lifetime of tokens issued from now on.
    pub(crate) fn token_lifetime(&self) -> Duration {
        Duration::from_secs(self.token_lifetime_secs.load(Ordering::Relaxed))
    }

    pub(crate) fn set_token_lifetime(&self, lifetime: Duration) {
        self.token_lifetime_secs
            .store(lifetime.as_secs(), Ordering::Relaxed);
    }

    /// Counts one token request (a POST to the token path) and wakes whoever waits for it.
    pub(crate) fn count_token_request(&self) {
        self.counters.token_requests.fetch_add(1, Ordering::Relaxed);
        self.token_arrived.notify_waiters();
    }

    /// Returns at once unless token requests are held; then waits for the release. `false`
    /// if the sandbox shuts down meanwhile.
    pub(crate) async fn token_request_released(&self) -> bool {
        let mut held = self.token_hold.subscribe();
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            released = held.wait_for(|h| !*h) => released.is_ok(),
        }
    }

    /// Records that a session authenticated as `mailbox`; the guard undoes it when dropped.
    pub(crate) fn session_authenticated(self: &Arc<Self>, mailbox: &str) -> SessionGuard {
        let key = mailbox.to_ascii_lowercase();
        let mut map = self.sessions.locked();
        let entry = map.entry(key.clone()).or_default();
        entry.active += 1;
        entry.peak = entry.peak.max(entry.active);
        SessionGuard {
            shared: self.clone(),
            key,
        }
    }

    /// Authenticated sessions of `mailbox`, this one included.
    pub(crate) fn active_sessions(&self, mailbox: &str) -> u32 {
        let map = self.sessions.locked();
        map.get(&mailbox.to_ascii_lowercase())
            .map_or(0, |s| s.active)
    }

    /// The most concurrent authenticated sessions seen for `mailbox`.
    pub(crate) fn peak_sessions(&self, mailbox: &str) -> u32 {
        let map = self.sessions.locked();
        map.get(&mailbox.to_ascii_lowercase()).map_or(0, |s| s.peak)
    }

    pub(crate) fn smtp_outage(&self) -> Option<SmtpOutage> {
        *self.smtp_outage.locked()
    }

    pub(crate) fn set_smtp_outage(&self, outage: Option<SmtpOutage>) {
        *self.smtp_outage.locked() = outage;
    }

    /// Changes the message rate limit; the times already recorded count towards it.
    pub(crate) fn set_rate_limit(&self, limit: u32, window: Duration) {
        let mut pacing = self.pacing.locked();
        pacing.limit = limit;
        pacing.window = window;
    }

    /// When each `MAIL FROM` of `mailbox` was admitted, oldest first.
    pub(crate) fn message_times(&self, mailbox: &str) -> Vec<Instant> {
        let pacing = self.pacing.locked();
        pacing
            .times
            .get(&mailbox.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }

    /// SMTP connections accepted and still being served.
    pub(crate) fn smtp_connections_open(&self) -> u64 {
        self.smtp_open.load(Ordering::Relaxed)
    }

    /// Applies the message rate limit to a `MAIL FROM` of `mailbox`: records it and returns
    /// true, or counts a violation and returns false.
    pub(crate) fn admit_message(&self, mailbox: &str) -> bool {
        let mut pacing = self.pacing.locked();
        let (limit, window) = (pacing.limit, pacing.window);
        let times = pacing
            .times
            .entry(mailbox.to_ascii_lowercase())
            .or_default();
        // "Now" is taken under the lock, so every list stays in order.
        let admitted = admit(times, pacing_now(), limit, window);
        if !admitted {
            self.counters
                .rate_violations
                .fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }
}

/// Held by an authenticated SMTP session; counts it in its mailbox's concurrency.
pub(crate) struct SessionGuard {
    shared: Arc<Shared>,
    key: String,
}

impl SessionGuard {
    pub(crate) fn mailbox_key(&self) -> &str {
        &self.key
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut map = self.shared.sessions.locked();
        if let Some(entry) = map.get_mut(&self.key) {
            entry.active = entry.active.saturating_sub(1);
        }
    }
}

/// One SMTP connection counted in `Shared::smtp_open` for as long as it lives.
pub(crate) struct OpenConnection(Arc<Shared>);

impl OpenConnection {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        shared.smtp_open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(shared)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.smtp_open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admit_is_a_rolling_window() {
        let t0 = Instant::now() + Duration::from_secs(1000);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let window = Duration::from_secs(10);
        let mut times = Vec::new();
        assert!(admit(&mut times, at(0), 2, window));
        assert!(admit(&mut times, at(1_000), 2, window));
        assert!(!admit(&mut times, at(5_000), 2, window));
        assert!(!admit(&mut times, at(9_999), 2, window));
        // Exactly one window after the first: it has left the window.
        assert!(admit(&mut times, at(10_000), 2, window));
        assert!(!admit(&mut times, at(10_500), 2, window));
        assert!(admit(&mut times, at(11_000), 2, window));
        assert_eq!(times, vec![at(0), at(1_000), at(10_000), at(11_000)]);
        // 0 = no limit.
        let mut unlimited = Vec::new();
        assert!((0..1000).all(|ms| admit(&mut unlimited, at(ms), 0, window)));
        // A window longer than the clock's history counts everything.
        let mut early = vec![Instant::now()];
        assert!(!admit(&mut early, Instant::now(), 1, Duration::MAX));
    }
}
