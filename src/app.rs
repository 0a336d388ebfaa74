//! Wiring only: build every room from a validated configuration, start the listener, and
//! drain on shutdown. No protocol logic lives here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ValidConfig, ValidLane};
use crate::delivery::{self, Delivery, Lanes};
use crate::governor::shared::Keys;
use crate::governor::{Coordinator, Governor, SharedMailbox};
use crate::ops::admin;
use crate::smtp::connection::{Context, Door};
use crate::smtp::listener;
use crate::smtp::tls::TlsSource;
use crate::smtp::ListenSettings;
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
    /// `governor.shared` could not be prepared (the message never holds the URL's password).
    #[error("{0}")]
    Shared(String),
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

/// The destination of the relay's first lane (its first account's own mailbox): recorded in
/// every message it queues, and the only one whose queued messages that lane delivers.
pub fn destination(config: &ValidConfig) -> Destination {
    lane_destination(config, &config.lanes[0])
}

/// The destination of one lane: its account's tenant, app and endpoint, and its mailbox.
pub fn lane_destination(config: &ValidConfig, lane: &ValidLane) -> Destination {
    let account = &config.accounts[lane.account];
    Destination {
        tenant: account.tenant.clone(),
        client_id: account.credential.client_id.clone(),
        mailbox: lane.mailbox.clone(),
        upstream: format!("{}:{}", account.upstream.host, account.upstream.port),
    }
}

/// One account at run time: its token source and the cache every mailbox of it shares.
struct Account {
    name: String,
    source: Arc<dyn TokenSource>,
    tokens: TokenCache,
}

/// A running relay.
pub struct Relay {
    local_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    listen: ListenSettings,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    lanes: Arc<Lanes>,
    accounts: Vec<Account>,
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

    /// [`start`](Self::start), recording and delivering queued mail of the first lane for
    /// `destination` instead of the one the configuration names (`serve --sandbox`: the
    /// stand-in's port changes with every start, its mail must not).
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
        let mut accounts = Vec::with_capacity(config.accounts.len());
        for account in &config.accounts {
            let source = crate::token::credential::build(&account.credential)?;
            let tokens = TokenCache::new(source.clone(), account.refresh_margin);
            accounts.push(Account {
                name: account.name.clone(),
                source,
                tokens,
            });
        }
        let tls = crate::tls::client_config(&config.extra_roots)?;
        let listener =
            listener::bind(config.listen.address).map_err(|source| StartError::Bind {
                addr: config.listen.address,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen.address,
            source,
        })?;
        let tls_listener = match config.listen.implicit_tls_address {
            Some(addr) => {
                let l = listener::bind(addr).map_err(|source| StartError::Bind { addr, source })?;
                let bound = l
                    .local_addr()
                    .map_err(|source| StartError::Bind { addr, source })?;
                Some((l, bound))
            }
            None => None,
        };
        let tls_addr = tls_listener.as_ref().map(|(_, a)| *a);
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
        let mut destinations: Vec<Destination> = config
            .lanes
            .iter()
            .map(|lane| lane_destination(&config, lane))
            .collect();
        destinations[0] = destination;
        let coordinator = config.shared.clone().map(Coordinator::new);
        let coordinator = coordinator.transpose().map_err(StartError::Shared)?;
        let mut lanes = Vec::with_capacity(config.lanes.len());
        for (i, lane) in config.lanes.iter().enumerate() {
            let account = &config.accounts[lane.account];
            let upstream = Arc::new(Upstream::new(
                account.upstream.clone(),
                tls.clone(),
                accounts[lane.account].tokens.clone(),
                lane.mailbox.clone(),
            ));
            let governor = match &coordinator {
                Some(c) => {
                    let keys = Keys::new(&c.settings().prefix, &account.tenant, &lane.mailbox);
                    let g = Governor::with_shared(
                        account.limits.clone(),
                        SharedMailbox::new(c.clone(), keys, account.limits.clone()),
                    );
                    tracker.spawn(g.clone().upkeep(shutdown.clone()));
                    g
                }
                None => Governor::new(account.limits.clone()),
            };
            let siblings = destinations
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, d)| d.clone())
                .collect();
            let delivery = Delivery::new(delivery::Parts {
                settings: config.lane_delivery(lane),
                hostname: config.listen.hostname.clone(),
                upstream: upstream.clone(),
                governor: governor.clone(),
                spool: spool.clone(),
                destination: destinations[i].clone(),
                siblings,
                adopts: i == 0,
                recovered: recovered.clone(),
                tracker: tracker.clone(),
                shutdown: shutdown.clone(),
            });
            tracker.spawn(delivery.clone().run());
            tracker.spawn(reap_idle(
                upstream,
                shutdown.clone(),
                account.upstream.idle_timeout,
            ));
            lanes.push(delivery);
        }
        let lanes = Lanes::new(config.routes.clone(), lanes);
        let accepting = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ctx = Arc::new(Context {
            listen: config.listen.clone(),
            deliver: lanes.clone(),
            spool,
            shutdown: shutdown.clone(),
        });
        for (a, account) in accounts.iter().enumerate() {
            // Keep a token ready: the first message need not wait, and readiness tells
            // the truth about the credentials. A token that works again lifts the holds it
            // caused on every mailbox of the account.
            let mine: Vec<Arc<Delivery>> = config
                .lanes
                .iter()
                .zip(lanes.all())
                .filter(|(l, _)| l.account == a)
                .map(|(_, d)| d.clone())
                .collect();
            let (tokens, stop) = (account.tokens.clone(), shutdown.clone());
            tracker.spawn(async move {
                tokens
                    .keep_warm(KEEP_WARM_PERIOD, stop, || {
                        for d in &mine {
                            d.token_recovered();
                        }
                    })
                    .await
            });
        }
        let admin_stop = CancellationToken::new();
        let mut admin_addr = None;
        let admin_task = admin_listener.map(|l| {
            admin_addr = l.local_addr().ok();
            let health = Arc::new(admin::Health {
                listen: local_addr,
                accepting: accepting.clone(),
                draining: shutdown.clone(),
                spool_dir: config.spool_dir.clone(),
                state: Arc::new(Observed {
                    accounts: accounts
                        .iter()
                        .map(|a| (a.name.clone(), a.tokens.clone()))
                        .collect(),
                    lanes: lanes.clone(),
                    coordinator: coordinator.clone(),
                }),
            });
            tokio::spawn(admin::serve(l, health, admin_stop.clone()))
        });
        for (lane, d) in config.lanes.iter().zip(lanes.all()) {
            let account = &config.accounts[lane.account];
            tracing::info!(
                account = %account.name,
                mailbox = %lane.mailbox,
                upstream = %d.upstream().address(),
                token_url = %account.credential.token_url,
                credential = %account.credential.credential.kind(),
                "lane ready"
            );
        }
        tracing::info!(
            listen = %local_addr,
            admin = %admin_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
            accounts = config.accounts.len(),
            mailboxes = config.lanes.len(),
            mode = ?config.delivery.mode,
            spool = %config.spool_dir.display(),
            "smtp-oauth-relay ready"
        );
        log_door(&config.listen, tls_addr);
        // Accepting starts after the lines above: whoever sees the port open can read them.
        let gate = listener::Gate::new(
            config.listen.max_connections,
            config.listen.max_connections_per_client,
        );
        if let Some((l, _)) = tls_listener {
            // Readiness follows the SMTP port; this flag is the TLS port's own.
            let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
            tracker.spawn(listener::run_at(
                l,
                ctx.clone(),
                gate.clone(),
                Door::ImplicitTls,
                flag,
                tracker.clone(),
            ));
        }
        tracker.spawn(listener::run_at(
            listener,
            ctx,
            gate,
            Door::Plain,
            accepting,
            tracker.clone(),
        ));
        Ok(Relay {
            local_addr,
            tls_addr,
            listen: config.listen.clone(),
            shutdown,
            tracker,
            lanes,
            accounts,
            admin_addr,
            admin_stop,
            admin_task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The implicit-TLS port's address, when it is on.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// SIGHUP, the listener's part: reads the inbound TLS certificate and the users file
    /// again. Each line says what happened; a file that cannot be used keeps the old one and
    /// its line says why (`Err`).
    pub fn reload_inbound(&self) -> Vec<Result<String, String>> {
        let mut out = Vec::new();
        if let Some(tls) = &self.listen.tls {
            out.push(match tls.reload() {
                Ok(true) => Ok(
                    "inbound TLS certificate read again: new connections use the new one".into(),
                ),
                Ok(false) => Ok("inbound TLS certificate unchanged".into()),
                Err(e) => Err(format!(
                    "inbound TLS certificate: {e}; keeping the one in use"
                )),
            });
        }
        if let Some(users) = &self.listen.auth.users {
            out.push(match users.reload() {
                Ok(n) => Ok(format!(
                    "users file {} read again: {n} users",
                    users.path().display()
                )),
                Err(e) => Err(format!("users file: {e}; keeping the users read before")),
            });
        }
        out
    }

    /// The admin HTTP address, unless `admin.listen = "off"`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The first account's token cache.
    pub fn tokens(&self) -> &TokenCache {
        &self.accounts[0].tokens
    }

    /// SIGHUP: reads every account's credential files again (a rotated secret, certificate
    /// or key) and uses them for the next token request. Connections and current tokens are
    /// kept. `Changed` when any credential changed; the error names the account, the file and
    /// what is wrong (the other accounts are reloaded all the same).
    pub fn reload_secrets(&self) -> Result<Reloaded, String> {
        let mut result = Reloaded::NothingToReload;
        let mut errors = Vec::new();
        for account in &self.accounts {
            match account.source.reload() {
                Ok(Reloaded::Changed) => {
                    // A failure remembered for the old credential must not hold back the new.
                    account.tokens.forget_failure();
                    result = Reloaded::Changed;
                }
                Ok(Reloaded::Unchanged) if result == Reloaded::NothingToReload => {
                    result = Reloaded::Unchanged;
                }
                Ok(_) => {}
                Err(e) if self.accounts.len() == 1 => errors.push(e),
                Err(e) => errors.push(format!("account {}: {e}", account.name)),
            }
        }
        if errors.is_empty() {
            return Ok(result);
        }
        let mut text = errors.join("; ");
        if result == Reloaded::Changed {
            text.push_str(" (the other accounts' new credentials are in use)");
        }
        Err(text)
    }

    /// The first lane's upstream pool.
    pub fn upstream(&self) -> &Arc<Upstream> {
        self.lanes.first().upstream()
    }

    /// The first lane (the only one of a single-account relay).
    pub fn delivery(&self) -> &Arc<Delivery> {
        self.lanes.first()
    }

    /// Every lane, in configuration order.
    pub fn lanes(&self) -> &Arc<Lanes> {
        &self.lanes
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
        let mut queued = 0;
        for lane in self.lanes.all() {
            lane.upstream().close_idle(true).await;
            queued += lane.queued();
        }
        let first = self.lanes.first();
        let others: usize = first.others().iter().map(|(_, n)| n).sum();
        tracing::info!(
            queued,
            for_other_destinations = others,
            spool = %first.spool().root().display(),
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
    /// Each account's name and token cache.
    accounts: Vec<(String, TokenCache)>,
    lanes: Arc<Lanes>,
    /// The shared limits' connection, when configured (its fallback is a warning).
    coordinator: Option<Arc<Coordinator>>,
}

impl admin::RelayState for Observed {
    fn tokens(&self) -> Vec<(String, admin::TokenState)> {
        let one = self.accounts.len() == 1;
        self.accounts
            .iter()
            .map(|(name, tokens)| {
                let state = admin::TokenState {
                    valid_for: tokens.usable_for(),
                    last_error: tokens.last_error().map(|e| {
                        let text = match e.advice() {
                            Some(a) => format!("{e} ({a})"),
                            None => e.to_string(),
                        };
                        (e.is_config(), text)
                    }),
                    credential_expired: crate::token::expiry(
                        tokens.not_after(),
                        std::time::SystemTime::now(),
                    )
                    .filter(|e| e.is_expired())
                    .map(|e| e.to_string()),
                };
                (if one { String::new() } else { name.clone() }, state)
            })
            .collect()
    }

    fn holds(&self) -> Vec<(String, Option<String>)> {
        let one = self.lanes.all().len() == 1;
        self.lanes
            .all()
            .iter()
            .map(|d| {
                let label = if one {
                    String::new()
                } else {
                    d.upstream().mailbox().to_string()
                };
                (label, d.held())
            })
            .collect()
    }

    fn warnings(&self) -> Vec<String> {
        let first = self.lanes.first();
        let mut out: Vec<String> = first
            .others()
            .into_iter()
            .map(|(d, n)| {
                format!(
                    "spool: {n} queued message(s) for another destination ({d}) are kept and not delivered by this relay"
                )
            })
            .collect();
        if first.spool().faults().full() {
            out.push("spool: the last write failed: no space left; new mail is refused with 452 4.3.1 until a write works again".into());
        }
        out.extend(self.coordinator.as_ref().and_then(|c| c.warning()));
        out
    }

    fn gauges(&self) -> admin::Gauges {
        let lanes = self.lanes.all();
        let oldest = lanes.iter().filter_map(|d| d.oldest_queued()).min();
        let token_expiry = self
            .accounts
            .iter()
            .filter_map(|(_, t)| t.expires_in())
            .min()
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        admin::Gauges {
            queued: lanes.iter().map(|d| d.queued()).sum(),
            oldest_queued_secs: oldest.map(|t| now_unix().saturating_sub(t)).unwrap_or(0),
            token_expiry_secs: token_expiry,
            mailboxes: lanes
                .iter()
                .map(|d| {
                    let governor = d.governor().snapshot();
                    admin::MailboxGauges {
                        mailbox: d.upstream().mailbox().to_string(),
                        sends_in_window: governor.sends_in_window,
                        sessions_in_flight: governor.in_flight,
                        recipients_24h: governor.recipients_in_24h,
                        held: d.held().is_some(),
                    }
                })
                .collect(),
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

/// The door's start-up lines: TLS, where its certificate comes from, AUTH and its mode.
fn log_door(listen: &ListenSettings, tls_addr: Option<SocketAddr>) {
    if let Some(tls) = &listen.tls {
        let text = tls.describe();
        match tls.source() {
            TlsSource::SelfSigned { .. } => {
                tracing::warn!(certificate = %text, implicit_tls = ?tls_addr, "inbound TLS with a SELF-SIGNED certificate")
            }
            TlsSource::Files { .. } => {
                tracing::info!(certificate = %text, implicit_tls = ?tls_addr, require_tls = listen.require_tls, "inbound TLS: STARTTLS offered")
            }
        }
    }
    let auth = &listen.auth;
    if auth.accept_any {
        tracing::warn!(allow = ?listen.allow, "inbound AUTH in ACCEPT-ANY mode (listen.auth_accept_any): any user name and password is accepted from the allowed networks");
    } else if let Some(users) = &auth.users {
        tracing::info!(users_file = %users.path().display(), users = users.current().len(), required = auth.required, "inbound AUTH: PLAIN and LOGIN offered");
    }
}
