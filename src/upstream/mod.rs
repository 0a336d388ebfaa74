//! The outbound side: Exchange Online's submission endpoint, with STARTTLS and XOAUTH2.
//!
//! [`Upstream`] owns a small pool of authenticated sessions for one mailbox: at most
//! `max_connections` (Exchange allows 3 per mailbox, reference §4.1), reused while young and
//! while their token is not near expiry, reset with `RSET` after a refusal. It pulls tokens
//! from the token cache when it opens a connection (DESIGN §4: data flows one way).
//!
//! `error.rs` is the one place replies become verdicts; `conn.rs` speaks the protocol (replies
//! are parsed exactly by `wire::reply`).

mod auth;
pub mod conn;
pub mod endpoint;
pub mod error;
mod stream;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::sync::Semaphore;
use tokio::time::Instant;

pub use conn::{BodyStream, Delivered, HeaderSwap, MessageBody, OutboundMessage};
pub use endpoint::Endpoint;
pub use error::{Stage, UpstreamError, Verdict};

use crate::sync::Lock as _;
use crate::token::TokenCache;
use conn::{ConnectParams, Connection};

/// Where and how to reach the upstream (built and checked by `config`).
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub host: String,
    pub port: u16,
    /// The name the server certificate must carry.
    pub server_name: ServerName<'static>,
    /// Authenticated sessions at once (Exchange allows 3 per mailbox).
    pub max_connections: usize,
    /// TCP connect plus greeting.
    pub connect_timeout: Duration,
    /// Each command's reply.
    pub command_timeout: Duration,
    /// Sending a body and its final reply.
    pub data_timeout: Duration,
    /// A pooled session idle this long is closed.
    pub idle_timeout: Duration,
    /// A pooled session this old is retired however busy.
    pub max_session_age: Duration,
    /// Our name in EHLO.
    pub helo_name: String,
    /// The Exchange service behind `host`: standard SMTP AUTH or High Volume Email, which
    /// needs `Mail.Send`, at least 10 minutes of token life at AUTH, and internal recipients.
    pub endpoint: Endpoint,
    /// Keep sessions open between sends (the pool). Off with shared limits: an open session
    /// counts against the mailbox's 3 for the whole fleet, so each is closed (`QUIT`) after
    /// its send, before its lease is given back.
    pub keep_idle: bool,
}

/// Don't start a transaction on a session whose token expires sooner than this.
const TOKEN_REUSE_MARGIN: Duration = Duration::from_secs(120);

/// The pool of sessions for one mailbox.
pub struct Upstream {
    settings: UpstreamSettings,
    tls: Arc<rustls::ClientConfig>,
    tokens: TokenCache,
    mailbox: String,
    permits: Semaphore,
    idle: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("host", &self.settings.host)
            .field("port", &self.settings.port)
            .field("mailbox", &self.mailbox)
            .finish()
    }
}

impl Upstream {
    pub fn new(
        settings: UpstreamSettings,
        tls: Arc<rustls::ClientConfig>,
        tokens: TokenCache,
        mailbox: String,
    ) -> Upstream {
        Upstream {
            permits: Semaphore::new(settings.max_connections),
            tls,
            tokens,
            mailbox,
            idle: Mutex::new(Vec::new()),
            settings,
        }
    }

    pub fn mailbox(&self) -> &str {
        &self.mailbox
    }

    pub fn tokens(&self) -> &TokenCache {
        &self.tokens
    }

    /// The Exchange service this upstream submits to.
    pub fn endpoint(&self) -> Endpoint {
        self.settings.endpoint
    }

    fn params(&self) -> ConnectParams<'_> {
        ConnectParams {
            host: &self.settings.host,
            port: self.settings.port,
            server_name: &self.settings.server_name,
            tls: &self.tls,
            helo_name: &self.settings.helo_name,
            connect_timeout: self.settings.connect_timeout,
            command_timeout: self.settings.command_timeout,
            mailbox: &self.mailbox,
            tokens: &self.tokens,
            endpoint: self.settings.endpoint,
        }
    }

    /// Opens an authenticated session outside the pool (connect, STARTTLS, AUTH), for the
    /// set-up diagnostics (`check`, `send-test`), which report each step themselves.
    pub async fn connect(&self) -> Result<Connection, UpstreamError> {
        Connection::open(&self.params()).await
    }

    /// Where this upstream is, as `host:port`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.settings.host, self.settings.port)
    }

    /// Sends one message. Waits for a free session slot first (at most `max_connections`
    /// sessions run at once). A reused session that turns out to be dead before anything was
    /// sent is replaced once by a fresh one, so a server-side idle timeout never fails a
    /// message.
    pub async fn send(
        &self,
        msg: &OutboundMessage,
        body: &mut MessageBody<'_>,
    ) -> Result<Delivered, UpstreamError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("semaphore never closed");
        if let Some(mut conn) = self.take_idle() {
            match conn.transact(msg, body, self.settings.data_timeout).await {
                Ok(d) => {
                    self.after_send(conn).await;
                    return Ok(d);
                }
                Err(e) if stale_session(&e) => {
                    tracing::debug!(error = %e, "pooled upstream session was gone; reconnecting");
                }
                Err(e) => {
                    self.after_error(conn, &e).await;
                    return Err(e);
                }
            }
        }
        let mut conn = Connection::open(&self.params()).await?;
        match conn.transact(msg, body, self.settings.data_timeout).await {
            Ok(d) => {
                self.after_send(conn).await;
                Ok(d)
            }
            Err(e) => {
                self.after_error(conn, &e).await;
                Err(e)
            }
        }
    }

    /// A session after its send: pooled, or closed when sessions are not kept idle.
    async fn after_send(&self, conn: Connection) {
        if self.settings.keep_idle {
            self.put_idle(conn);
        } else {
            conn.quit().await;
        }
    }

    async fn after_error(&self, conn: Connection, e: &UpstreamError) {
        // A refusal leaves the session usable (after RSET); anything else may have left it
        // mid-command, so it is dropped.
        if matches!(e, UpstreamError::Rejected { .. }) && !closing_reply(e) {
            self.after_send(conn).await;
        }
    }

    fn take_idle(&self) -> Option<Connection> {
        let mut idle = self.idle.locked();
        let now = Instant::now();
        while let Some(conn) = idle.pop() {
            if self.reusable(&conn, now) {
                return Some(conn);
            }
            // Dropped: closes the socket.
        }
        None
    }

    fn reusable(&self, conn: &Connection, now: Instant) -> bool {
        now.duration_since(conn.last_used) < self.settings.idle_timeout
            && now.duration_since(conn.created) < self.settings.max_session_age
            && conn.token_expires_at > now + TOKEN_REUSE_MARGIN
    }

    fn put_idle(&self, mut conn: Connection) {
        conn.last_used = Instant::now();
        let mut idle = self.idle.locked();
        if idle.len() < self.settings.max_connections {
            idle.push(conn);
        }
    }

    /// Closes idle sessions that are too old (called periodically and at shutdown).
    pub async fn close_idle(&self, all: bool) {
        let retired: Vec<Connection> = {
            let mut idle = self.idle.locked();
            let now = Instant::now();
            let (keep, retire): (Vec<_>, Vec<_>) =
                idle.drain(..).partition(|c| !all && self.reusable(c, now));
            *idle = keep;
            retire
        };
        for conn in retired {
            conn.quit().await;
        }
    }
}

/// Failures of a reused session that mean "it was already closed", before any message data
/// was sent: safe to retry on a new session.
fn stale_session(e: &UpstreamError) -> bool {
    match e {
        UpstreamError::Io { stage, .. }
        | UpstreamError::Protocol { stage, .. }
        | UpstreamError::Timeout { stage } => {
            matches!(stage, Stage::MailFrom | Stage::RcptTo | Stage::Data)
        }
        UpstreamError::Rejected { stage, reply } => {
            reply.code == 421 && matches!(stage, Stage::MailFrom | Stage::RcptTo | Stage::Data)
        }
        _ => false,
    }
}

fn closing_reply(e: &UpstreamError) -> bool {
    e.reply().map(|r| r.code == 421).unwrap_or(false)
}
