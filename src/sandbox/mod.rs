//! The sandbox: an embedded stand-in for Microsoft Entra's token endpoint and Exchange
//! Online's SMTP AUTH submission service (DESIGN §10).
//!
//! Why it exists: the relay's whole job is talking to two Microsoft services that tests,
//! demos (`serve --sandbox`) and benchmarks cannot reach. The sandbox reproduces what the
//! relay depends on, with Microsoft's exact reply texts (reference §1.7-1.10, §3-§6):
//!
//! ```text
//!  relay ── HTTPS POST /{tenant}/oauth2/v2.0/token ──▶ token.rs   (client credentials, AADSTS errors)
//!  relay ── SMTP, STARTTLS, AUTH XOAUTH2 ───────────▶ smtp.rs    (EHLO lists, SendAs, limits, faults)
//!                                                        │
//!                                                        ▼
//!                                                     store.rs   (<id>.eml + <id>.json per message)
//! ```
//!
//! `tls.rs` makes the self-signed certificate both listeners use; `clock.rs` formats dates.
//! Everything binds loopback only: the sandbox accepts any client and stores mail on disk,
//! so it must never be reachable from elsewhere. Tokens and secrets are never logged.

mod clock;
#[cfg(test)]
mod dialog_tests;
mod smtp;
mod store;
mod tls;
mod token;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use secrecy::SecretString;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use store::{StoredEnvelope, StoredMessage};

/// How the sandbox is set up. `Debug` redacts the client secret (it is a `SecretString`).
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// The one tenant the token endpoint accepts (GUID or domain, case-insensitive).
    pub tenant: String,
    /// The application (client) ID of the one registered app.
    pub client_id: String,
    /// The app's client secret value.
    pub client_secret: SecretString,
    /// Mailboxes the app may authenticate as (XOAUTH2 `user=`), compared case-insensitively.
    pub mailboxes: Vec<String>,
    /// Mailboxes whose SMTP AUTH switch is off: AUTH gets `535 5.7.139` (reference §3.5).
    pub smtp_auth_disabled: Vec<String>,
    /// `expires_in` of issued tokens (Entra shows 3599 s for app-only tokens).
    pub token_lifetime: Duration,
    /// Where accepted messages are written (created if missing).
    pub store_dir: PathBuf,
    /// Concurrent authenticated sessions per mailbox before MAIL gets `432 4.3.2`
    /// (Exchange Online: 3, reference §4.1). 0 = unlimited, for benchmarks.
    pub max_connections_per_mailbox: u32,
    /// Address to listen on. Must be loopback; `Sandbox::start` refuses anything else.
    pub listen_ip: IpAddr,
    /// SMTP port; 0 = ephemeral.
    pub smtp_port: u16,
    /// Token endpoint (HTTPS) port; 0 = ephemeral.
    pub token_port: u16,
}

impl SandboxOptions {
    /// Defaults that look like a real single-tenant app registration, with a fresh random
    /// secret in Microsoft's current value shape.
    pub fn new(store_dir: PathBuf) -> Self {
        SandboxOptions {
            tenant: "11111111-2222-3333-4444-555555555555".to_string(),
            client_id: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".to_string(),
            client_secret: SecretString::from(random_client_secret()),
            mailboxes: vec!["relay@sandbox.example".to_string()],
            smtp_auth_disabled: Vec::new(),
            token_lifetime: Duration::from_secs(3599),
            store_dir,
            max_connections_per_mailbox: 3,
            listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            smtp_port: 0,
            token_port: 0,
        }
    }
}

/// Characters Entra uses in client secret values.
const SECRET_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-";

/// A 40-character secret in Microsoft's value shape: 3 chars, a digit, `Q~`, 34 chars
/// (reference §1.9), so the relay's secret-shape diagnostics see a plausible value.
fn random_client_secret() -> String {
    let mut rng = rand::rng();
    let mut pick = |n: usize| -> String {
        (0..n)
            .map(|_| SECRET_CHARS[rng.random_range(0..SECRET_CHARS.len())] as char)
            .collect()
    };
    let head = pick(3);
    let tail = pick(34);
    let digit = char::from(b'0' + rand::random_range(0..10u8));
    format!("{head}{digit}Q~{tail}")
}

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

/// Counters the tests and benchmarks read.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub token_requests: AtomicU64,
    pub tokens_issued: AtomicU64,
    pub auth_attempts: AtomicU64,
    pub auth_failures: AtomicU64,
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
    pub tokens: token::Registry,
    pub token_failure: Mutex<Option<TokenFailure>>,
    sessions: Mutex<HashMap<String, MailboxSessions>>,
    pub store: store::Store,
    /// Cancelled on shutdown; every connection task races its I/O against it.
    pub cancel: CancellationToken,
}

impl Shared {
    /// Records that a session authenticated as `mailbox`; the guard undoes it when dropped.
    pub(crate) fn session_authenticated(self: &Arc<Self>, mailbox: &str) -> SessionGuard {
        let key = mailbox.to_ascii_lowercase();
        let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
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
        let map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&mailbox.to_ascii_lowercase())
            .map_or(0, |s| s.active)
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
        let mut map = self
            .shared
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = map.get_mut(&self.key) {
            entry.active = entry.active.saturating_sub(1);
        }
    }
}

/// A running sandbox. Dropping it cancels its tasks; `shutdown` also waits for them.
pub struct Sandbox {
    shared: Arc<Shared>,
    smtp_addr: SocketAddr,
    token_addr: SocketAddr,
    ca_pem: String,
    tracker: TaskTracker,
}

/// Concurrent connections per listener: a bound on tasks, far above what tests need.
const MAX_CONNECTIONS: usize = 1024;

impl Sandbox {
    /// Binds both listeners (loopback only) and starts serving.
    pub async fn start(opts: SandboxOptions) -> io::Result<Sandbox> {
        if !opts.listen_ip.is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "sandbox refuses to listen on {}: only loopback addresses are allowed",
                    opts.listen_ip
                ),
            ));
        }
        let tls = tls::generate()?;
        let store = store::Store::open(&opts.store_dir)?;
        let smtp_listener =
            TcpListener::bind(SocketAddr::new(opts.listen_ip, opts.smtp_port)).await?;
        let token_listener =
            TcpListener::bind(SocketAddr::new(opts.listen_ip, opts.token_port)).await?;
        let smtp_addr = smtp_listener.local_addr()?;
        let token_addr = token_listener.local_addr()?;

        let tenant_id = if token::is_guid(&opts.tenant) {
            opts.tenant.to_ascii_lowercase()
        } else {
            token::random_guid()
        };
        let shared = Arc::new(Shared {
            opts,
            tenant_id,
            app_oid: token::random_guid(),
            counters: Counters::default(),
            tokens: token::Registry::default(),
            token_failure: Mutex::new(None),
            sessions: Mutex::new(HashMap::new()),
            store,
            cancel: CancellationToken::new(),
        });
        let tracker = TaskTracker::new();

        let smtp_acceptor = tokio_rustls::TlsAcceptor::from(tls.smtp);
        tracker.spawn(accept_loop(
            smtp_listener,
            shared.clone(),
            tracker.clone(),
            move |shared, tcp, peer| smtp::serve(shared, smtp_acceptor.clone(), tcp, peer),
        ));
        let https_acceptor = tokio_rustls::TlsAcceptor::from(tls.https);
        tracker.spawn(accept_loop(
            token_listener,
            shared.clone(),
            tracker.clone(),
            move |shared, tcp, _peer| token::serve(shared, https_acceptor.clone(), tcp),
        ));

        Ok(Sandbox {
            shared,
            smtp_addr,
            token_addr,
            ca_pem: tls.ca_pem,
            tracker,
        })
    }

    /// `https://127.0.0.1:PORT`; the token URL is `{authority}/{tenant}/oauth2/v2.0/token`.
    pub fn authority(&self) -> String {
        format!("https://{}", self.token_addr)
    }

    /// The full token URL for the configured tenant.
    pub fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.authority(),
            self.shared.opts.tenant
        )
    }

    pub fn smtp_addr(&self) -> SocketAddr {
        self.smtp_addr
    }

    pub fn token_addr(&self) -> SocketAddr {
        self.token_addr
    }

    /// PEM of the self-signed certificate: the trust anchor clients add.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes `ca_pem()` to `path` (for the relay's `extra_ca_file`).
    pub fn write_ca_file(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.ca_pem.as_bytes())
    }

    pub fn options(&self) -> &SandboxOptions {
        &self.shared.opts
    }

    /// POSTs to the token endpoint, whatever their outcome.
    pub fn token_requests(&self) -> u64 {
        self.shared.counters.token_requests.load(Ordering::Relaxed)
    }

    pub fn tokens_issued(&self) -> u64 {
        self.shared.counters.tokens_issued.load(Ordering::Relaxed)
    }

    /// AUTH exchanges that reached a verdict (`235` or `535`): XOAUTH2, and LOGIN (always
    /// refused). An AUTH answered `504`/`503` is not counted.
    pub fn auth_attempts(&self) -> u64 {
        self.shared.counters.auth_attempts.load(Ordering::Relaxed)
    }

    pub fn auth_failures(&self) -> u64 {
        self.shared.counters.auth_failures.load(Ordering::Relaxed)
    }

    /// The most concurrent authenticated sessions seen for `mailbox` (case-insensitive).
    pub fn peak_sessions(&self, mailbox: &str) -> u32 {
        let map = self
            .shared
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.get(&mailbox.to_ascii_lowercase()).map_or(0, |s| s.peak)
    }

    /// Every token issued so far becomes invalid: the next AUTH with one gets `535 5.7.3`.
    pub fn revoke_tokens(&self) {
        self.shared.tokens.revoke_all();
    }

    /// Makes the token endpoint fail in the given way until called with `None`.
    pub fn set_token_failure(&self, failure: Option<TokenFailure>) {
        *self
            .shared
            .token_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = failure;
    }

    /// Every stored message, oldest first.
    pub fn messages(&self) -> Vec<StoredMessage> {
        self.shared.store.messages()
    }

    /// Polls the store until at least `n` messages are there or `timeout` passes, then
    /// returns what is there.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<StoredMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n || tokio::time::Instant::now() >= deadline {
                return messages;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops both listeners and every session in flight, and waits for them to end.
    pub async fn shutdown(self) {
        self.shared.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

/// Accepts connections until shutdown, one tracked task each, at most `MAX_CONNECTIONS`
/// at once (the permit is taken before `accept`, as in mini-redis).
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    handle: F,
) where
    F: Fn(Arc<Shared>, TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let cancel = shared.cancel.clone();
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                let task = handle(shared.clone(), tcp, peer);
                tracker.spawn(async move {
                    task.await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Usually EMFILE or a connection reset before accept: back off briefly.
                tracing::warn!(error = %e, "sandbox accept failed");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn default_secret_has_microsofts_value_shape() {
        for _ in 0..50 {
            let s = random_client_secret();
            assert_eq!(s.len(), 40);
            let b = s.as_bytes();
            assert!(b[3].is_ascii_digit());
            assert_eq!(&b[4..6], b"Q~");
            assert!(b.iter().all(|c| SECRET_CHARS.contains(c)));
        }
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let opts = SandboxOptions::new(PathBuf::from("/tmp/x"));
        let shown = format!("{opts:?}");
        assert!(!shown.contains(opts.client_secret.expose_secret()));
    }

    #[tokio::test]
    async fn refuses_a_non_loopback_address() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = SandboxOptions::new(dir.path().to_path_buf());
        opts.listen_ip = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let err = Sandbox::start(opts)
            .await
            .err()
            .expect("must refuse 0.0.0.0");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn starts_and_shuts_down() {
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::start(SandboxOptions::new(dir.path().to_path_buf()))
            .await
            .unwrap();
        assert!(sandbox.smtp_addr().ip().is_loopback());
        assert!(sandbox.authority().starts_with("https://127.0.0.1:"));
        assert!(sandbox.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let ca = dir.path().join("ca.pem");
        sandbox.write_ca_file(&ca).unwrap();
        assert!(crate::tls::load_pem_certificates(&ca).is_ok());
        assert!(sandbox.messages().is_empty());
        sandbox.shutdown().await;
    }
}
