//! The inbound side, the relay's face: plain SMTP from legacy apps.
//!
//! Pure: `session` decides (the ESMTP state machine), `framing` splits the command stream
//! into lines, `mail_rcpt` reads `MAIL`/`RCPT` arguments from the raw line, `received` writes
//! the trace header, `reply` is our catalogue of answers, `outcome` words the reply to DATA
//! from what delivery did, and `limits` decides how long and how much a client may hold a
//! slot (stress, junk, session caps, per-client count). Drivers: `listener` (the accept loop
//! and its slots), `connection` (one client's commands, every timeout) and `message` (one
//! body, DATA), with `context` (what they share, bounded reads), thin around them.
//!
//! For `AUTH` (pure as well): `users` reads the users file and checks passwords (argon2,
//! blocking), `sasl` decodes the PLAIN and LOGIN exchanges, and `auth_limit` pauses client
//! addresses that fail too often.
//!
//! The safe door (issue 13): `tls` (the certificate shown to clients, reloaded on SIGHUP),
//! `stream` (a client's stream, plain or TLS), `auth` (the SASL exchange, who may log in,
//! the brute-force pause).

pub mod auth;
pub mod auth_limit;
pub mod connection;
pub mod context;
pub mod framing;
pub mod limits;
pub mod listener;
pub mod mail_rcpt;
pub mod message;
pub mod outcome;
pub mod received;
pub mod reply;
pub mod sasl;
pub mod session;
pub mod stream;
pub mod tls;
pub mod users;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use auth::InboundAuth;
use session::Security;
use tls::InboundTls;

/// What the inbound side needs to know (built and checked by `config`).
#[derive(Debug, Clone)]
pub struct ListenSettings {
    pub address: SocketAddr,
    /// Client networks allowed besides loopback.
    pub allow: Vec<IpNet>,
    /// Our name in the greeting, the EHLO reply and the `Received:` header.
    pub hostname: String,
    /// Clients served at once; more wait in the accept queue.
    pub max_connections: usize,
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// Longest wait for a command line (a whole line, however it trickles in).
    pub command_timeout: Duration,
    /// Longest silence during DATA.
    pub data_timeout: Duration,
    /// Replaces both timeouts (when shorter) while most slots are taken (see `limits`).
    pub stress_timeout: Duration,
    /// Longest session; it ends with `421` at the next wait for a command.
    pub max_session: Duration,
    /// `NOOP`/`RSET`/`VRFY`/`HELP`/refused commands allowed between accepted messages.
    pub max_junk_commands: usize,
    /// Messages one session may send; the next `MAIL` gets `421`.
    pub max_messages_per_session: usize,
    /// Slots one client address other than loopback may hold.
    pub max_connections_per_client: usize,
    /// Prepend one `Received:` trace header.
    pub received_header: bool,
    /// The certificate for STARTTLS and the implicit-TLS port; `None`: no TLS offered.
    pub tls: Option<Arc<InboundTls>>,
    /// The second listener, TLS from the first byte (465 style).
    pub implicit_tls_address: Option<SocketAddr>,
    /// `MAIL` before TLS gets `530 5.7.0`.
    pub require_tls: bool,
    /// Who may log in, and when they must.
    pub auth: InboundAuth,
}

impl ListenSettings {
    /// Whether a client at `ip` may use the relay: loopback always, others if allowed; with
    /// AUTH required and no allow list, any client (it must log in before `MAIL`).
    pub fn permits(&self, ip: IpAddr) -> bool {
        ip.is_loopback()
            || ip.to_canonical().is_loopback()
            || (self.allow.is_empty() && self.auth.required)
            || self
                .allow
                .iter()
                .any(|net| net.contains(&ip) || net.contains(&ip.to_canonical()))
    }

    /// What sessions offer and demand.
    pub fn security(&self) -> Security {
        Security {
            starttls: self.tls.is_some(),
            require_tls: self.require_tls,
            auth: self.auth.offered(),
            auth_without_tls_on_loopback: self.auth.without_tls_on_loopback,
            require_auth: self.auth.required,
        }
    }
}
