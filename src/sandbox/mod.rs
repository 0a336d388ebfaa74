//! The sandbox: an embedded stand-in for Microsoft Entra's token endpoint and Exchange
//! Online's SMTP AUTH submission service (DESIGN §10).
//!
//! Why it exists: the relay's whole job is talking to two Microsoft services that tests,
//! demos (`serve --sandbox`) and benchmarks cannot reach. The sandbox reproduces what the
//! relay depends on, with Microsoft's exact reply texts (reference §1.7-1.10, §3-§6):
//!
//! ```text
//!  relay ── HTTPS POST /{tenant}/oauth2/v2.0/token ──▶ token/   (client credentials, AADSTS errors)
//!  relay ── SMTP, STARTTLS, AUTH XOAUTH2 ───────────▶ smtp/    (EHLO lists, SendAs, limits, faults)
//!                                                       │
//!                                                       ▼
//!                                                    store.rs  (<id>.eml + <id>.json per message)
//! ```
//!
//! The room, by job (dependencies run downwards only):
//! - this file: the public [`Sandbox`] handle; `start` builds the shared state and wires
//!   both servers to their listeners.
//! - `token/` (driver; `entra.rs` Entra's rules, `http.rs` HTTP/1.1 parsing, both pure) and
//!   `smtp/` (session driver; `wire.rs`, `auth.rs`, `body.rs`, `script.rs`,
//!   `exchange.rs`): the two servers. Neither imports the other or this file.
//! - `listener.rs`: sockets that close and re-bind at runtime, and the accept loop.
//! - `shared.rs`: the runtime state both servers and the handle use (counters, switches,
//!   limits, session guards); `options.rs`: [`SandboxOptions`]; `issued.rs`: the tokens the
//!   token endpoint issued and SMTP checks; `assertion.rs`: Entra's checks of certificate
//!   client assertions (registered certificates, signature, claims, time, one use per `jti`);
//!   `federated.rs`: federated tokens the sandbox mints as an OIDC issuer or IMDS, and the
//!   app's federated credentials (checked by `token/federation.rs`; IMDS is `token/imds.rs`,
//!   plain HTTP on loopback, `imds_url`); `store.rs`: the mail store; `tls.rs`: the
//!   self-signed certificate both listeners use; `clock.rs`: dates in Microsoft's formats;
//!   `delegated.rs`: device codes and rotating refresh tokens of delegated sign-ins, which
//!   tests steer with `approve_device_code`, `decline_device_code` and
//!   `revoke_refresh_tokens`.
//!
//! Tests of the relay's queue and governor steer it at runtime: rate and concurrency limits
//! (`set_rate_limit`, `set_concurrency_limit`), outages (`set_smtp_outage`,
//! `set_token_failure`), the submission quota (`set_quota_exceeded`), the app's certificates
//! (`register_certificate`, `unregister_certificate`; `accepted_assertions` reads back which
//! certificate signed each token request), and read back
//! `message_times`, `rate_violations`, `concurrency_rejections`, `message_count` and
//! `count_by_header` (duplicates). Tests that wait for an event instead of sleeping can hold
//! token requests unanswered (`hold_token_requests`, `wait_for_token_requests`) and read
//! `bodies_received`, `active_sessions` and `smtp_connections_open`. The store is plain
//! files, so a sandbox started again on the same `store_dir` (and, if wanted, the same
//! `smtp_port`) sees every earlier message.
//! Everything binds loopback only: the sandbox accepts any client and stores mail on disk,
//! so it must never be reachable from elsewhere. Tokens and secrets are never logged.

mod assertion;
mod clock;
mod delegated;
#[cfg(test)]
mod dialog_tests;
mod federated;
mod issued;
#[cfg(test)]
mod hve_tests;
#[cfg(test)]
mod limits_tests;
mod listener;
mod options;
mod shared;
mod smtp;
mod store;
mod tls;
mod token;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sync::Lock as _;
use tokio_util::task::TaskTracker;

pub use assertion::AcceptedAssertion;
pub use federated::{
    FederatedCredential, ManagedIdentity, DEFAULT_OIDC_ISSUER, DEFAULT_SUBJECT, FEDERATION_AUDIENCE,
};
pub use options::{RegisteredCertificate, SandboxOptions};
pub use shared::{SmtpOutage, TokenFailure};
pub use store::{StoredEnvelope, StoredMessage};

use listener::Listener;
use shared::{OpenConnection, Shared};

/// A running sandbox. Dropping it cancels its tasks; `shutdown` also waits for them.
pub struct Sandbox {
    shared: Arc<Shared>,
    smtp_addr: SocketAddr,
    token_addr: SocketAddr,
    /// The IMDS stand-in (plain HTTP).
    imds_addr: SocketAddr,
    /// Closed and re-bound by `SmtpOutage::Refuse`.
    smtp_listener: Arc<Listener>,
    ca_pem: String,
    tracker: TaskTracker,
}

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
        let smtp_listener = Arc::new(Listener::bind(SocketAddr::new(
            opts.listen_ip,
            opts.smtp_port,
        ))?);
        let token_listener = Arc::new(Listener::bind(SocketAddr::new(
            opts.listen_ip,
            opts.token_port,
        ))?);
        let imds_listener = Arc::new(Listener::bind(SocketAddr::new(opts.listen_ip, 0))?);
        let smtp_addr = smtp_listener.addr;
        let token_addr = token_listener.addr;
        let imds_addr = imds_listener.addr;

        let tenant_id = if token::is_guid(&opts.tenant) {
            opts.tenant.to_ascii_lowercase()
        } else {
            token::random_guid()
        };
        let shared = Arc::new(Shared::new(opts, store, tenant_id, token::random_guid()));
        let tracker = TaskTracker::new();

        let smtp_acceptor = tokio_rustls::TlsAcceptor::from(tls.smtp);
        let smtp_shared = shared.clone();
        tracker.spawn(listener::accept_loop(
            smtp_listener.clone(),
            shared.cancel.clone(),
            tracker.clone(),
            move |tcp, peer| {
                // Counted here, before the task is spawned, so a connection is never
                // accepted without being counted as open.
                let open = OpenConnection::new(smtp_shared.clone());
                let session = smtp::serve(smtp_shared.clone(), smtp_acceptor.clone(), tcp, peer);
                async move {
                    session.await;
                    drop(open);
                }
            },
        ));
        let https_acceptor = tokio_rustls::TlsAcceptor::from(tls.https);
        let token_shared = shared.clone();
        tracker.spawn(listener::accept_loop(
            token_listener,
            shared.cancel.clone(),
            tracker.clone(),
            move |tcp, _peer| token::serve(token_shared.clone(), https_acceptor.clone(), tcp),
        ));
        let imds_shared = shared.clone();
        tracker.spawn(listener::accept_loop(
            imds_listener,
            shared.cancel.clone(),
            tracker.clone(),
            move |tcp, _peer| token::serve_imds(imds_shared.clone(), tcp),
        ));

        Ok(Sandbox {
            shared,
            smtp_addr,
            token_addr,
            imds_addr,
            smtp_listener,
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

    /// The IMDS stand-in's token URL (plain HTTP on loopback), for `account.imds_endpoint`:
    /// `http://127.0.0.1:PORT/metadata/identity/oauth2/token`.
    pub fn imds_url(&self) -> String {
        format!("http://{}/metadata/identity/oauth2/token", self.imds_addr)
    }

    /// IMDS requests answered with a token.
    pub fn imds_tokens_issued(&self) -> u64 {
        self.shared.federation.imds_tokens.load(Ordering::Relaxed)
    }

    /// A federated token as a cluster's OIDC issuer would project it into a pod: issuer
    /// `options().oidc_issuer`, this `subject` (`system:serviceaccount:<ns>:<sa>`) and
    /// `audience`, valid from now for `lifetime` (zero: already expired). Remembered, so the
    /// token endpoint accepts it as genuine when a federated credential matches.
    pub fn federated_token(&self, subject: &str, audience: &str, lifetime: Duration) -> String {
        let now = clock::unix_now();
        self.shared
            .federation
            .mint(federated::service_account_claims(
                &self.shared.opts.oidc_issuer,
                subject,
                audience,
                now,
                now + lifetime.as_secs(),
            ))
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
        self.shared.peak_sessions(mailbox)
    }

    /// From now on, token requests are received and counted (`token_requests`) but not
    /// answered until [`release_token_requests`](Self::release_token_requests); then each is
    /// answered as if it had just arrived (a failure set meanwhile applies). For tests that
    /// need a request in flight, e.g. a token cache that stays cold until the test says so.
    pub fn hold_token_requests(&self) {
        self.shared.token_hold.send_replace(true);
    }

    /// Answers the held token requests and stops holding new ones.
    pub fn release_token_requests(&self) {
        self.shared.token_hold.send_replace(false);
    }

    /// Waits until at least `n` token requests were counted (held ones included) or
    /// `timeout` passes; returns the count then. Woken by each request, no polling.
    pub async fn wait_for_token_requests(&self, n: u64, timeout: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.shared.token_arrived.notified();
            tokio::pin!(arrived);
            // Registered before the count is read, so no request is missed.
            arrived.as_mut().enable();
            let count = self.token_requests();
            if count >= n {
                return count;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.token_requests();
            }
        }
    }

    /// Message bodies the SMTP side read to their end (final dot or `BDAT ... LAST`),
    /// whatever it answered; counted before an end-of-data script runs, so a `slow-<N>`
    /// message is counted while the sandbox still sits on it.
    pub fn bodies_received(&self) -> u64 {
        self.shared.counters.bodies_received.load(Ordering::Relaxed)
    }

    /// Authenticated SMTP sessions of `mailbox` (case-insensitive) open now.
    pub fn active_sessions(&self, mailbox: &str) -> u32 {
        self.shared.active_sessions(mailbox)
    }

    /// SMTP connections accepted and still being served (authenticated or not). Zero after
    /// a client has gone means every session it had is over: nothing more of it gets stored.
    pub fn smtp_connections_open(&self) -> u64 {
        self.shared.smtp_connections_open()
    }

    /// Uploads a certificate to the app (or replaces the one with the same bytes, e.g. to
    /// mark it expired): assertions it signs are accepted from now on.
    pub fn register_certificate(&self, cert: RegisteredCertificate) {
        let mut state = self.shared.assertions.locked();
        state.registered.retain(|r| r.der != cert.der);
        state.registered.push(cert);
    }

    /// Deletes the certificate with these DER bytes from the app.
    pub fn unregister_certificate(&self, der: &[u8]) {
        self.shared
            .assertions
            .locked()
            .registered
            .retain(|r| r.der != der);
    }

    /// The certificate assertions accepted so far (the latest 1000), oldest first.
    pub fn accepted_assertions(&self) -> Vec<AcceptedAssertion> {
        self.shared.assertions.locked().accepted.clone()
    }

    /// Every token issued so far becomes invalid: the next AUTH with one gets `535 5.7.3`.
    pub fn revoke_tokens(&self) {
        self.shared.tokens.revoke_all();
    }

    /// Tokens issued from now on live `lifetime` (`expires_in`); tokens already issued keep
    /// theirs. `options()` keeps showing the lifetime the sandbox started with.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.set_token_lifetime(lifetime);
    }

    /// The user `upn` signs in with the device code whose user code is `user_code` (every
    /// waiting code when `None`), as on Microsoft's device login page: the next poll of
    /// `login` gets tokens for `upn`. Returns how many codes were approved.
    pub fn approve_device_code(&self, user_code: Option<&str>, upn: &str) -> usize {
        let now = tokio::time::Instant::now().into_std();
        self.shared.delegated.locked().approve(user_code, upn, now)
    }

    /// The user declines the sign-in (every waiting code when `None`): the next poll gets
    /// `authorization_declined`.
    pub fn decline_device_code(&self, user_code: Option<&str>) -> usize {
        let now = tokio::time::Instant::now().into_std();
        self.shared.delegated.locked().decline(user_code, now)
    }

    /// User codes issued and still waiting for a sign-in.
    pub fn pending_device_codes(&self) -> Vec<String> {
        let now = tokio::time::Instant::now().into_std();
        self.shared.delegated.locked().pending(now)
    }

    /// Every refresh token issued so far is revoked (a password reset or an admin revoking
    /// the user's sessions): the next refresh gets `invalid_grant` AADSTS50173.
    pub fn revoke_refresh_tokens(&self) {
        self.shared.delegated.locked().revoke_all();
    }

    /// Makes the token endpoint fail in the given way until called with `None`.
    pub fn set_token_failure(&self, failure: Option<TokenFailure>) {
        *self.shared.token_failure.locked() = failure;
    }

    /// The most concurrent authenticated sessions allowed per mailbox from now on (`MAIL`
    /// beyond it gets `432 4.3.2`); 0 = unlimited. Sessions already past `MAIL` keep going.
    /// `options()` keeps showing the value the sandbox started with.
    pub fn set_concurrency_limit(&self, n: u32) {
        self.shared.max_connections.store(n, Ordering::Relaxed);
    }

    /// `MAIL` commands refused with `432 4.3.2` by the concurrency limit.
    pub fn concurrency_rejections(&self) -> u64 {
        self.shared
            .counters
            .concurrency_rejections
            .load(Ordering::Relaxed)
    }

    /// Changes the message rate limit (`limit` per `window` and mailbox, 0 = off) from now
    /// on; the times already recorded count towards it.
    pub fn set_rate_limit(&self, limit: u32, window: Duration) {
        self.shared.set_rate_limit(limit, window);
    }

    /// `MAIL` commands refused with `451 4.7.500` by the message rate limit.
    pub fn rate_violations(&self) -> u64 {
        self.shared.counters.rate_violations.load(Ordering::Relaxed)
    }

    /// When each `MAIL FROM` of `mailbox` (case-insensitive) was accepted, oldest first,
    /// whatever became of the transaction. Taken from tokio's clock: on a paused clock these
    /// are virtual instants (compare them with `tokio::time::Instant::now().into_std()`),
    /// otherwise they are ordinary `std::time::Instant::now()` values.
    pub fn message_times(&self, mailbox: &str) -> Vec<Instant> {
        self.shared.message_times(mailbox)
    }

    /// Puts the SMTP side into the given outage until called with `None` (see
    /// [`SmtpOutage`]). `Refuse` closes the listening socket before this returns, so the
    /// next connection attempt is refused; clearing it binds the same port again before this
    /// returns (if that fails, the sandbox keeps retrying in the background).
    pub fn set_smtp_outage(&self, outage: Option<SmtpOutage>) {
        self.shared.set_smtp_outage(outage);
        if outage == Some(SmtpOutage::Refuse) {
            self.smtp_listener.close();
        } else if let Err(e) = self.smtp_listener.reopen() {
            tracing::warn!(error = %e, addr = %self.smtp_addr, "sandbox cannot bind its SMTP port again yet; retrying");
        }
    }

    /// While on, the end of DATA gets Exchange's submission quota reply (`554 5.2.0
    /// STOREDRV.Submission.Exception:SubmissionQuotaExceededException; ...`) and nothing is
    /// stored.
    pub fn set_quota_exceeded(&self, on: bool) {
        self.shared.quota_exceeded.store(on, Ordering::Relaxed);
    }

    /// Every stored message, oldest first. Reads every body: for counts use
    /// `message_count`, for duplicate checks `count_by_header`.
    pub fn messages(&self) -> Vec<StoredMessage> {
        self.shared.store.messages()
    }

    /// How many complete messages the store holds (counts `.json` files; reads nothing).
    pub fn message_count(&self) -> usize {
        self.shared.store.message_count()
    }

    /// For every stored message, the value of its first header field named `header`
    /// (case-insensitive, unfolded, trimmed), counted: a value with a count above 1 was
    /// stored more than once. Messages without the header are not counted. Reads only the
    /// header section of each message.
    pub fn count_by_header(&self, header: &str) -> HashMap<String, usize> {
        self.shared.store.count_by_header(header)
    }

    /// Polls the store until at least `n` messages are there or `timeout` passes, then
    /// returns what is there.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<StoredMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Count first: reading every body each poll is slow with thousands of messages.
            if self.message_count() >= n || tokio::time::Instant::now() >= deadline {
                return self.messages();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    #[tokio::test(start_paused = true)]
    async fn pacing_follows_a_paused_clock() {
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let mut opts = SandboxOptions::new(dir.path().to_path_buf());
        opts.rate_limit = 2;
        let sandbox = Sandbox::start(opts).await.unwrap();
        let shared = &sandbox.shared;
        assert!(shared.admit_message("Relay@Sandbox.example"));
        assert!(shared.admit_message("relay@sandbox.example"));
        assert!(!shared.admit_message("relay@sandbox.example"));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!shared.admit_message("relay@sandbox.example"));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(shared.admit_message("relay@sandbox.example"));
        assert_eq!(sandbox.rate_violations(), 2);
        let times = sandbox.message_times("RELAY@sandbox.example");
        assert_eq!(times.len(), 3);
        // Virtual instants: 61 s apart although no real time passed.
        assert_eq!(times[2] - times[0], Duration::from_secs(61));
        sandbox.shutdown().await;
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
