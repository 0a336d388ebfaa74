//! The nouns every room shares: a message's id and its envelope.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Our id for one accepted message: sortable by time, unique within the process and, thanks to
/// the random part, across restarts. Safe in file names and log lines.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(String);

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

impl MessageId {
    /// A fresh id: `<unix millis hex>-<sequence hex>-<random hex>`.
    pub fn generate() -> Self {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let random: u32 = rand::random();
        MessageId(format!("{millis:011x}-{seq:06x}-{random:08x}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who sent a message to whom, as the client said it, plus what we need to pass it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub id: MessageId,
    /// Reverse path; empty for the null sender `<>`.
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The client's address.
    pub client: SocketAddr,
    /// What the client said in HELO/EHLO.
    pub helo: String,
    /// `BODY=8BITMIME` was declared.
    pub body_8bit: bool,
    /// `SMTPUTF8` was declared.
    pub smtputf8: bool,
    pub received_at: SystemTime,
    /// The message's `Message-ID` header (cleaned for logs), for the audit trail.
    pub message_id: Option<String>,
    /// The user the client logged in as (inbound AUTH), for routing and the audit trail.
    pub user: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_file_safe() {
        let a = MessageId::generate();
        let b = MessageId::generate();
        assert_ne!(a, b);
        assert!(a
            .as_str()
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == '-'));
    }
}
