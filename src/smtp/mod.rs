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
pub mod users;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

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
}

impl ListenSettings {
    /// Whether a client at `ip` may use the relay: loopback always, others only if allowed.
    pub fn permits(&self, ip: IpAddr) -> bool {
        ip.is_loopback()
            || ip.to_canonical().is_loopback()
            || self
                .allow
                .iter()
                .any(|net| net.contains(&ip) || net.contains(&ip.to_canonical()))
    }
}
