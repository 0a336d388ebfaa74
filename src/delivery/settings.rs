//! How delivery behaves: its settings (built and checked by `config`) and the pure policy
//! that follows from them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// When the client gets its answer (DESIGN §3, the table above).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    Hybrid,
    Queue,
    Direct,
}

impl DeliveryMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryMode::Queue => "queue",
            DeliveryMode::Hybrid => "hybrid",
            DeliveryMode::Direct => "direct",
        }
    }
}

/// Which address goes into the upstream `MAIL FROM`: the authenticated mailbox (which
/// Exchange always accepts) or the client's own envelope sender (needs SendAs rights).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvelopeSender {
    Mailbox,
    Client,
}

/// Whether the `From:` header (and `MAIL FROM`) is rewritten to the mailbox (issue 12).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FromRewrite {
    /// Messages go out as the app wrote them.
    #[default]
    Never,
    /// Only when the sender is neither the mailbox nor an address it may send as.
    WhenNotAllowed,
    /// Every message.
    Always,
}

/// How delivery behaves (built and checked by `config`).
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub mode: DeliveryMode,
    pub envelope_sender: EnvelopeSender,
    /// Hybrid (and direct): how long the client waits for the attempt.
    pub try_now_timeout: Duration,
    /// Give up on a queued message this long after it was received.
    pub max_age: Duration,
    /// Keep `failed/` messages this long.
    pub failed_retention: Duration,
    /// Send a failure notice when a message accepted with `250` fails for good (RFC 5321
    /// §6.1; on by default).
    pub failure_notice: bool,
    /// Where failure notices go instead of the envelope sender (`notice.to`).
    pub notice_to: Option<String>,
    /// The account's From rewrite, and the addresses its mailbox may send as.
    pub from_rewrite: FromRewrite,
    pub send_as: Vec<super::route::SenderPattern>,
    /// Give a message without `Date:` or `Message-ID:` one at send time (on by default;
    /// Exchange's message trace finds messages by their `Message-ID`).
    pub add_missing_headers: bool,
}

/// The upstream `MAIL FROM` (see `account.envelope_sender`). The null sender always becomes
/// the mailbox: Exchange does not accept `<>` for submission.
pub fn upstream_sender(policy: EnvelopeSender, client_sender: &str, mailbox: &str) -> String {
    match policy {
        EnvelopeSender::Client if !client_sender.is_empty() => client_sender.to_string(),
        _ => mailbox.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_policy() {
        assert_eq!(
            upstream_sender(EnvelopeSender::Mailbox, "app@x", "mbx@y"),
            "mbx@y"
        );
        assert_eq!(
            upstream_sender(EnvelopeSender::Client, "app@x", "mbx@y"),
            "app@x"
        );
        assert_eq!(
            upstream_sender(EnvelopeSender::Client, "", "mbx@y"),
            "mbx@y"
        );
    }
}
