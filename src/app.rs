//! Wiring only: build every room from a validated configuration, start the listener, and
//! drain on shutdown. No protocol logic lives here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ValidConfig;
use crate::delivery::{self, Delivery};
use crate::governor::Governor;
use crate::ops::admin;
use crate::smtp::connection::Context;
use crate::smtp::listener;
use crate::spool::{now_unix, Destination, Spool};
use crate::token::{Reloaded, TokenCache, TokenSource};
use crate::upstream::Upstream;

/// Why the relay could not start. Each variant names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("spool directory {dir}: {source}")]
    Spool { dir: String, source: std::io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(#[from] crate::tls::TlsSetupError),
    #[error("credential: {0}")]
    Credential(String),
    #[error("cannot listen on {addr} (admin.listen / SMTP_OAUTH_RELAY_ADMIN_LISTEN): {source}")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl From<crate::token::BuildError> for StartError {
    fn from(e: crate::token::BuildError) -> Self {
        match e {
            crate::token::BuildError::Tls(t) => StartError::Tls(t),
            crate::token::BuildError::Credential(m) => StartError::Credential(m),
        }
    }
}

/// How often the token keeper looks at the cached token when all is well (it refreshes ahead
/// of expiry when due, see `TokenCache::keep_warm`).
const KEEP_WARM_PERIOD: Duration = Duration::from_secs(60);

/// The destination a relay with `config` delivers to: recorded in every message it queues,
/// and the only one whose queued messages it delivers.
pub fn destination(config: &ValidConfig) -> Destination {
    Destination {
        tenant: config.account.tenant.clone(),
        client_id: config.account.credential.client_id.clone(),
        mailbox: config.account.mailbox.clone(),
        upstream: format!("{}:{}", config.upstream.host, config.upstream.port),
    }
}

/// A running relay.
pub struct Relay {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    upstream: Arc<Upstream>,
    delivery: Arc<Delivery>,
    tokens: TokenCache,
    source: Arc<dyn TokenSource>,
    admin_addr: Option<SocketAddr>,
    admin_stop: CancellationToken,
    admin_task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    /// Builds the rooms, binds the listener and starts accepting. Returns once the port is
    /// bound, so callers (tests, `serve`) can connect right away.
    pub async fn start(config: ValidConfig) -> Result<Relay, StartError> {
        let destination = destination(&config);
        Relay::start_for(config, destination).await
    }

    /// [`start`](Self::start), recording and delivering queued mail for `destination`
    /// instead of the one the configuration names (`serve --sandbox`: the stand-in's port
    /// changes with every start, its mail must not).
    pub async fn start_for(
        config: ValidConfig,
        destination: Destination,
    ) -> Result<Relay, StartError> {
        // Installed first, so the counters of recovery and the first messages are not lost.
        if config.admin.is_some() {
            crate::ops::metrics::prometheus();
        }
        let (spool, recovered) =
            Spool::open(&config.spool_dir).map_err(|source| StartError::Spool {
                dir: config.spool_dir.display().to_string(),
                source,
            })?;
        let account = &config.account;
        let source = crate::token::credential::build(&account.credential)?;
        let tokens = TokenCache::new(source.clone(), account.refresh_margin);
        let tls = crate::tls::client_config(&config.extra_roots)?;
        let upstream = Arc::new(Upstream::new(
            config.upstream.clone(),
            tls,
            tokens.clone(),
            account.mailbox.clone(),
        ));
        let listener =
            listener::bind(config.listen.address).map_err(|source| StartError::Bind {
                addr: config.listen.address,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen.address,
            source,
        })?;
        let admin_listener = match config.admin {
            Some(addr) => Some(
                admin::bind(addr)
                    .await
                    .map_err(|source| StartError::AdminBind { addr, source })?,
            ),
            None => None,
        };
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let governor = Governor::new(config.governor.clone());
        let delivery = Delivery::new(delivery::Parts {
            settings: config.delivery.clone(),
            hostname: config.listen.hostname.clone(),
            upstream: upstream.clone(),
            governor,
            spool: spool.clone(),
            destination,
            recovered,
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
        });
        let accepting = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ctx = Arc::new(Context {
            listen: config.listen.clone(),
            deliver: delivery.clone(),
            spool,
            shutdown: shutdown.clone(),
        });
        tracker.spawn(listener::run(
            listener,
            ctx,
            accepting.clone(),
            tracker.clone(),
        ));
        tracker.spawn(delivery.clone().run());
        tracker.spawn(reap_idle(
            upstream.clone(),
            shutdown.clone(),
            config.upstream.idle_timeout,
        ));
        {
            // Keep a token ready: the first message need not wait, and readiness tells
            // the truth about the credentials.
            let (tokens, delivery, stop) = (tokens.clone(), delivery.clone(), shutdown.clone());
            tracker.spawn(async move {
                tokens
                    .keep_warm(KEEP_WARM_PERIOD, stop, || delivery.token_recovered())
                    .await
            });
        }
        let admin_stop = CancellationToken::new();
        let mut admin_addr = None;
        let admin_task = admin_listener.map(|l| {
            admin_addr = l.local_addr().ok();
            let health = Arc::new(admin::Health {
                listen: local_addr,
                accepting,
                draining: shutdown.clone(),
                spool_dir: config.spool_dir.clone(),
                state: Arc::new(Observed {
                    tokens: tokens.clone(),
                    delivery: delivery.clone(),
                    mailbox: account.mailbox.clone(),
                }),
            });
            tokio::spawn(admin::serve(l, health, admin_stop.clone()))
        });
        tracing::info!(
            listen = %local_addr,
            admin = %admin_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
            upstream = %upstream.address(),
            mailbox = %account.mailbox,
            token_url = %account.credential.token_url,
            mode = ?config.delivery.mode,
            spool = %config.spool_dir.display(),
            "smtp-oauth-relay ready"
        );
        Ok(Relay {
            local_addr,
            shutdown,
            tracker,
            upstream,
            delivery,
            tokens,
            source,
            admin_addr,
            admin_stop,
            admin_task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin HTTP address, unless `admin.listen = "off"`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn tokens(&self) -> &TokenCache {
        &self.tokens
    }

    /// SIGHUP: reads the credential's files again (a rotated secret, certificate or key)
    /// and uses them for the next token request. Connections and the current token are kept.
    /// The error names the file and what is wrong with it.
    pub fn reload_secrets(&self) -> Result<Reloaded, String> {
        let reloaded = self.source.reload()?;
        if reloaded == Reloaded::Changed {
            // A failure remembered for the old credential must not hold back the new one.
            self.tokens.forget_failure();
        }
        Ok(reloaded)
    }

    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    pub fn delivery(&self) -> &Arc<Delivery> {
        &self.delivery
    }

    /// A handle that stops the relay when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, tells idle clients `421`, lets messages in DATA finish and commit,
    /// lets deliveries in flight finish, and waits at most `grace` for all of it. Whatever is
    /// still queued stays in the spool for the next start.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.shutdown.cancel();
        self.tracker.close();
        let finished = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        self.upstream.close_idle(true).await;
        let others: usize = self.delivery.others().iter().map(|(_, n)| n).sum();
        tracing::info!(
            queued = self.delivery.queued(),
            for_other_destinations = others,
            spool = %self.delivery.spool().root().display(),
            "messages remain queued in the spool for the next start"
        );
        self.admin_stop.cancel();
        if let Some(task) = self.admin_task {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        finished
    }
}

/// The relay's state as the admin port reports it.
struct Observed {
    tokens: TokenCache,
    delivery: Arc<Delivery>,
    mailbox: String,
}

impl admin::RelayState for Observed {
    fn token(&self) -> admin::TokenState {
        admin::TokenState {
            valid_for: self.tokens.usable_for(),
            last_error: self.tokens.last_error().map(|e| {
                let text = match e.advice() {
                    Some(a) => format!("{e} ({a})"),
                    None => e.to_string(),
                };
                (e.is_config(), text)
            }),
            credential_expired: crate::token::expiry(
                self.tokens.not_after(),
                std::time::SystemTime::now(),
            )
            .filter(|e| e.is_expired())
            .map(|e| e.to_string()),
        }
    }

    fn held(&self) -> Option<String> {
        self.delivery.held()
    }

    fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .delivery
            .others()
            .into_iter()
            .map(|(d, n)| {
                format!(
                    "spool: {n} queued message(s) for another destination ({d}) are kept and not delivered by this relay"
                )
            })
            .collect();
        if self.delivery.spool().faults().full() {
            out.push("spool: the last write failed: no space left; new mail is refused with 452 4.3.1 until a write works again".into());
        }
        out
    }

    fn gauges(&self) -> admin::Gauges {
        let governor = self.delivery.governor().snapshot();
        admin::Gauges {
            mailbox: self.mailbox.clone(),
            queued: self.delivery.queued(),
            oldest_queued_secs: self
                .delivery
                .oldest_queued()
                .map(|t| now_unix().saturating_sub(t))
                .unwrap_or(0),
            token_expiry_secs: self
                .tokens
                .expires_in()
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            sends_in_window: governor.sends_in_window,
            sessions_in_flight: governor.in_flight,
            recipients_24h: governor.recipients_in_24h,
            held: self.delivery.held().is_some(),
        }
    }
}

/// Closes pooled upstream sessions that have been idle too long.
async fn reap_idle(upstream: Arc<Upstream>, shutdown: CancellationToken, idle: Duration) {
    let period = (idle / 2).max(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => upstream.close_idle(false).await,
            _ = shutdown.cancelled() => return,
        }
    }
}
