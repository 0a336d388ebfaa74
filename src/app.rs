//! Wiring only: build every room from a validated configuration, start the listener, and
//! drain on shutdown. No protocol logic lives here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ValidConfig;
use crate::delivery::Delivery;
use crate::governor::Governor;
use crate::smtp::listener::{self, ListenerContext};
use crate::spool::Spool;
use crate::token::{ClientSecretSettings, ClientSecretSource, TokenCache};
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
}

/// A running relay.
pub struct Relay {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    upstream: Arc<Upstream>,
    delivery: Arc<Delivery>,
}

impl Relay {
    /// Builds the rooms, binds the listener and starts accepting. Returns once the port is
    /// bound, so callers (tests, `serve`) can connect right away.
    pub async fn start(config: ValidConfig) -> Result<Relay, StartError> {
        let (spool, recovered) =
            Spool::open(&config.spool_dir).map_err(|source| StartError::Spool {
                dir: config.spool_dir.display().to_string(),
                source,
            })?;
        let account = &config.account;
        let source = ClientSecretSource::new(ClientSecretSettings {
            token_url: account.token_url.clone(),
            client_id: account.client_id.clone(),
            client_secret: account.client_secret.clone(),
            scope: account.scope.clone(),
            extra_roots: config.extra_roots.clone(),
            timeout: account.token_timeout,
        })?;
        let tokens = TokenCache::new(Arc::new(source), account.refresh_margin);
        let tls = crate::tls::client_config(&config.extra_roots)?;
        let upstream = Arc::new(Upstream::new(
            config.upstream.clone(),
            tls,
            tokens,
            account.mailbox.clone(),
        ));
        let listener = TcpListener::bind(config.listen.address)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen.address,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen.address,
            source,
        })?;
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let governor = Governor::new(config.governor.clone());
        let delivery = Delivery::new(
            config.mode,
            account.envelope_sender,
            config.delivery.clone(),
            config.listen.hostname.clone(),
            upstream.clone(),
            governor,
            spool.clone(),
            recovered,
            tracker.clone(),
            shutdown.clone(),
        );
        let ctx = Arc::new(ListenerContext {
            listen: config.listen.clone(),
            delivery: delivery.clone(),
            spool,
            shutdown: shutdown.clone(),
        });
        tracker.spawn(listener::run(listener, ctx, tracker.clone()));
        tracker.spawn(delivery.clone().run());
        tracker.spawn(reap_idle(
            upstream.clone(),
            shutdown.clone(),
            config.upstream.idle_timeout,
        ));
        tracing::info!(
            listen = %local_addr,
            upstream = %format!("{}:{}", config.upstream.host, config.upstream.port),
            mailbox = %account.mailbox,
            token_url = %account.token_url,
            mode = ?config.mode,
            "smtp-oauth-relay ready"
        );
        Ok(Relay {
            local_addr,
            shutdown,
            tracker,
            upstream,
            delivery,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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
        finished
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
