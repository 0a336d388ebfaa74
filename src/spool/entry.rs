//! What the spool keeps about a message besides its body: the envelope file
//! (`queue/<id>.json`, `failed/<id>.json`).
//!
//! The format is JSON so an admin can read it; fields added later carry `#[serde(default)]`
//! so a spool written by an older relay is read by a newer one.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;

/// The envelope file of a queued (or failed) message: everything needed to deliver it again
/// after a restart, plus its delivery history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub id: String,
    /// The client's reverse path (empty for `<>`).
    pub mail_from: String,
    /// Recipients still to deliver (delivered ones are removed as they succeed).
    pub rcpt_to: Vec<String>,
    pub client: String,
    pub helo: String,
    pub body_8bit: bool,
    pub smtputf8: bool,
    /// The mailbox (account) that sends it.
    pub mailbox: String,
    pub size: u64,
    /// Unix seconds.
    pub received_at: u64,
    pub attempts: u32,
    /// Unix seconds.
    pub next_attempt: u64,
    pub last_error: Option<String>,
    /// A failure notice written by the relay itself: never answered with another notice.
    #[serde(default)]
    pub notice: bool,
    /// Set when moved to `failed/`.
    #[serde(default)]
    pub failed_at: Option<u64>,
    #[serde(default)]
    pub failure_reason: Option<String>,
    /// Recipients Exchange refused for good, kept for the failure record.
    #[serde(default)]
    pub refused: Vec<Refusal>,
    /// The `Message-ID` header, for the audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// `received_at` in unix milliseconds (0 in entries written before it existed), for the
    /// delivery latency metric.
    #[serde(default)]
    pub received_at_ms: u64,
    /// The destination the message was accepted for (see [`super::destination`]). `None` in
    /// envelopes written before it existed: the relay that reads them adopts them.
    #[serde(default)]
    pub destination: Option<Destination>,
}

impl QueueEntry {
    /// A message received just now, due at once, never attempted.
    pub fn new(
        id: String,
        mail_from: String,
        rcpt_to: Vec<String>,
        mailbox: String,
        size: u64,
    ) -> Self {
        Self::received(id, mail_from, rcpt_to, mailbox, size, SystemTime::now())
    }

    /// A message the client handed over in `envelope`, accepted for `destination` (and so
    /// sent as its mailbox).
    pub fn from_envelope(envelope: &Envelope, destination: &Destination, size: u64) -> Self {
        let mut e = Self::received(
            envelope.id.to_string(),
            envelope.mail_from.clone(),
            envelope.rcpt_to.clone(),
            destination.mailbox.clone(),
            size,
            envelope.received_at,
        );
        e.destination = Some(destination.clone());
        e.client = envelope.client.to_string();
        e.helo = envelope.helo.clone();
        e.body_8bit = envelope.body_8bit;
        e.smtputf8 = envelope.smtputf8;
        e.message_id = envelope.message_id.clone();
        e
    }

    fn received(
        id: String,
        mail_from: String,
        rcpt_to: Vec<String>,
        mailbox: String,
        size: u64,
        at: SystemTime,
    ) -> Self {
        QueueEntry {
            id,
            mail_from,
            rcpt_to,
            client: String::new(),
            helo: String::new(),
            body_8bit: false,
            smtputf8: false,
            mailbox,
            size,
            received_at: unix(at),
            attempts: 0,
            next_attempt: now_unix(),
            last_error: None,
            notice: false,
            failed_at: None,
            failure_reason: None,
            refused: Vec::new(),
            message_id: None,
            received_at_ms: at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            destination: None,
        }
    }
}

/// Where a message was accepted to go. Compared without regard to ASCII case or surrounding
/// spaces (tenant and client ids are GUIDs or domains, mailboxes and host names are
/// case-insensitive at Exchange).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// The Entra tenant (GUID or domain).
    pub tenant: String,
    /// The application (client) id.
    pub client_id: String,
    /// The mailbox the relay authenticates as.
    pub mailbox: String,
    /// The upstream SMTP server as `host:port` (`sandbox` for `serve --sandbox`, whose port
    /// changes with every start).
    pub upstream: String,
}

impl Destination {
    /// Whether `other` names the same destination.
    pub fn same_as(&self, other: &Destination) -> bool {
        let eq = |a: &str, b: &str| a.trim().eq_ignore_ascii_case(b.trim());
        eq(&self.tenant, &other.tenant)
            && eq(&self.client_id, &other.client_id)
            && eq(&self.mailbox, &other.mailbox)
            && eq(&self.upstream, &other.upstream)
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mailbox {} via {} (tenant {}, client {})",
            self.mailbox, self.upstream, self.tenant, self.client_id
        )
    }
}

/// A recipient Exchange refused for good, and why: its reply (`550 5.1.10 …`), or our
/// reason when there was none (`gave up after …`).
///
/// Typed in memory; on disk it stays the `"address: reason"` text envelopes have always held,
/// so an older relay (a rollback) and scripts reading `queue show --json` still understand
/// it. The split is unambiguous: an address never contains `": "` (no whitespace is allowed
/// in one, see `wire::address`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", from = "RefusalOnDisk")]
pub struct Refusal {
    pub rcpt: String,
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rcpt, self.reason)
    }
}

impl From<Refusal> for String {
    fn from(r: Refusal) -> String {
        r.to_string()
    }
}

/// What an envelope may hold: the text form, or the object form a development build wrote
/// for a while (read, never written).
#[derive(Deserialize)]
#[serde(untagged)]
enum RefusalOnDisk {
    Text(String),
    Typed { rcpt: String, reason: String },
}

impl From<RefusalOnDisk> for Refusal {
    fn from(r: RefusalOnDisk) -> Self {
        match r {
            RefusalOnDisk::Typed { rcpt, reason } => Refusal { rcpt, reason },
            RefusalOnDisk::Text(text) => match text.split_once(": ") {
                Some((rcpt, reason)) => Refusal {
                    rcpt: rcpt.to_string(),
                    reason: reason.to_string(),
                },
                None => Refusal {
                    rcpt: text,
                    reason: String::new(),
                },
            },
        }
    }
}

/// Unix seconds now.
pub fn now_unix() -> u64 {
    unix(SystemTime::now())
}

pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_typed_in_memory_and_text_on_disk() {
        let e = QueueEntry::new(
            "m".into(),
            "a@x".into(),
            vec!["b@y".into()],
            "r@z".into(),
            9,
        );
        let mut with = e.clone();
        with.refused.push(Refusal {
            rcpt: "c@y".into(),
            reason: "550 5.1.10 RESOLVER.ADR.RecipientNotFound; not found".into(),
        });
        let json = serde_json::to_value(&with).unwrap();
        // The form envelopes have always had: older relays and scripts read it.
        assert_eq!(
            json["refused"],
            serde_json::json!(["c@y: 550 5.1.10 RESOLVER.ADR.RecipientNotFound; not found"])
        );
        let back: QueueEntry = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, with);
        // The object form is read too.
        let mut object = json;
        object["refused"] = serde_json::json!([{"rcpt": "c@y", "reason": "550 5.1.10 RESOLVER.ADR.RecipientNotFound; not found"}]);
        let read: QueueEntry = serde_json::from_value(object).unwrap();
        assert_eq!(read.refused, with.refused);
    }

    #[test]
    fn an_entry_from_an_envelope_is_due_now() {
        let env = Envelope {
            id: crate::envelope::MessageId::generate(),
            mail_from: "app@x".into(),
            rcpt_to: vec!["a@y".into(), "b@y".into()],
            client: "127.0.0.1:4000".parse().unwrap(),
            helo: "app".into(),
            body_8bit: true,
            smtputf8: false,
            received_at: UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123),
            message_id: Some("<m@x>".into()),
            user: None,
        };
        let dest = Destination {
            tenant: "t".into(),
            client_id: "c".into(),
            mailbox: "relay@z".into(),
            upstream: "smtp.office365.com:587".into(),
        };
        let e = QueueEntry::from_envelope(&env, &dest, 42);
        assert_eq!(e.destination.as_ref(), Some(&dest));
        assert_eq!(e.id, env.id.to_string());
        assert_eq!(
            (e.client.as_str(), e.helo.as_str()),
            ("127.0.0.1:4000", "app")
        );
        assert_eq!(
            (e.received_at, e.received_at_ms),
            (1_700_000_000, 1_700_000_000_123)
        );
        assert_eq!((e.mailbox.as_str(), e.size, e.attempts), ("relay@z", 42, 0));
        assert!(e.body_8bit && e.next_attempt >= e.received_at);
        assert_eq!(e.message_id.as_deref(), Some("<m@x>"));
    }
}
