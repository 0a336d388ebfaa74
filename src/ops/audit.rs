//! The audit trail: one structured log line per message event (received, delivered,
//! deferred, failed, refused) under the tracing target `audit`, and the metrics that count the same
//! events, so the log and `/metrics` can never disagree.
//!
//! Each line carries our id, the message's `Message-ID` header, the sender, the recipient
//! count, the size, the client's address, the attempt number and, once Exchange answered, its
//! reply with the id it assigned (`250 2.0.0 OK <id@...prod.outlook.com>`), which is what an
//! admin pastes into Exchange message trace. Bodies, tokens and secrets never appear here.
//!
//! The pure part ([`exchange_id`]) has tests below; the
//! event functions only format and count.

use std::time::Duration;

/// Exchange's id for a message, from its reply to the end of data:
/// `250 2.0.0 OK <BN8PR...@BN8PR....prod.outlook.com> [Hostname=...]` gives the part in `<>`.
pub fn exchange_id(reply: &str) -> Option<&str> {
    let start = reply.find('<')? + 1;
    let len = reply[start..].find('>')?;
    let id = &reply[start..start + len];
    (!id.is_empty() && id.contains('@')).then_some(id)
}

/// One audit line at `$level` with the fields every event shares, then the event's own.
macro_rules! audit_line {
    ($level:ident, $event:literal, $f:expr, recipients = $n:expr $(, $($rest:tt)+)?) => {
        tracing::$level!(
            target: "audit",
            event = $event,
            id = $f.id,
            message_id = $f.message_id.unwrap_or(""),
            from = $f.from,
            recipients = $n,
            size = $f.size,
            client = $f.client,
            $($($rest)+ ,)?
            $event
        )
    };
}

/// What every event line says about the message.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub id: &'a str,
    pub message_id: Option<&'a str>,
    pub from: &'a str,
    pub recipients: usize,
    pub size: u64,
    pub client: &'a str,
    /// The mailbox (account) that sends it: the metrics label.
    pub account: &'a str,
}

/// A message's body arrived complete from a client (what the client is told follows in a
/// `delivered`, `deferred` or `refused` line; in `queue` mode it is queued at once).
pub fn received(f: &Facts, mode: &str) {
    metrics::counter!("smtp_oauth_relay_messages_received_total", "account" => f.account.to_string())
        .increment(1);
    audit_line!(info, "received", f, recipients = f.recipients, mode);
}

/// Exchange accepted the message for `delivered` recipients.
pub fn delivered(f: &Facts, attempt: u32, delivered: usize, reply: &str, latency: Duration) {
    let account = f.account.to_string();
    metrics::counter!("smtp_oauth_relay_messages_delivered_total", "account" => account.clone())
        .increment(1);
    metrics::histogram!("smtp_oauth_relay_delivery_latency_seconds", "account" => account)
        .record(latency.as_secs_f64());
    audit_line!(
        info,
        "delivered",
        f,
        recipients = delivered,
        attempt,
        upstream_reply = reply,
        exchange_id = exchange_id(reply).unwrap_or(""),
        latency_ms = latency.as_millis() as u64
    );
}

/// Not delivered this time and kept in the queue; tried again at `next_attempt` (unix
/// seconds). `class` is the reply class (`transient`, `throttled`, `quota`, `config`), or
/// `paced` / `slow` for hybrid mode's queueing.
pub fn deferred(f: &Facts, attempt: u32, class: &'static str, reason: &str, next_attempt: u64) {
    metrics::counter!(
        "smtp_oauth_relay_messages_deferred_total",
        "account" => f.account.to_string(),
        "class" => class
    )
    .increment(1);
    audit_line!(
        warn,
        "deferred",
        f,
        recipients = f.recipients,
        attempt,
        class,
        upstream_reply = reason,
        next_attempt
    );
}

/// A message queued in hybrid mode because the mailbox had no sending budget right now.
/// Counted like any deferral, but its line is at debug: under load every message past
/// Exchange's 30 a minute is one, so the delivery loop logs one summary per interval instead
/// ([`paced_summary`]).
pub fn deferred_paced(f: &Facts, reason: &str, next_attempt: u64) {
    metrics::counter!(
        "smtp_oauth_relay_messages_deferred_total",
        "account" => f.account.to_string(),
        "class" => "paced"
    )
    .increment(1);
    audit_line!(
        debug,
        "deferred",
        f,
        recipients = f.recipients,
        attempt = 0,
        class = "paced",
        upstream_reply = reason,
        next_attempt
    );
}

/// The one line for `messages` paced deferrals over the last `interval`.
pub fn paced_summary(messages: u64, interval: Duration) {
    let secs = interval.as_secs().max(1);
    tracing::warn!(
        target: "audit",
        event = "paced",
        messages,
        interval_secs = secs,
        "{messages} messages deferred by pacing in the last {secs} s (the mailbox is at its sending limit; they go out as its budget frees)"
    );
}

/// A queued message was given up for good (refused by Exchange, or too old): it moves to
/// `failed/`.
pub fn failed(f: &Facts, attempt: u32, class: &'static str, reason: &str) {
    metrics::counter!(
        "smtp_oauth_relay_messages_failed_total",
        "account" => f.account.to_string(),
        "class" => class
    )
    .increment(1);
    audit_line!(
        error,
        "failed",
        f,
        recipients = f.recipients,
        attempt,
        class,
        upstream_reply = reason
    );
}

/// The client was answered with a refusal (`reply`) and nothing was kept: Exchange refused the
/// message for good (hybrid, direct), or a transient problem in direct mode, or a
/// configuration hold. The client (the app) owns the message again.
pub fn refused(f: &Facts, attempt: u32, class: &'static str, reply: &str) {
    metrics::counter!(
        "smtp_oauth_relay_messages_refused_total",
        "account" => f.account.to_string(),
        "class" => class
    )
    .increment(1);
    audit_line!(
        warn,
        "refused",
        f,
        recipients = f.recipients,
        attempt,
        class,
        reply
    );
}

/// A `refused` event waiting for its reply text: the room that decided to refuse (delivery)
/// builds it, the room that answers the client (the face) records it with the words it used.
#[derive(Debug, Clone)]
pub struct Refused {
    id: String,
    message_id: Option<String>,
    from: String,
    recipients: usize,
    size: u64,
    client: String,
    account: String,
    attempt: u32,
    class: &'static str,
}

impl Refused {
    pub fn new(f: &Facts, attempt: u32, class: &'static str) -> Self {
        Refused {
            id: f.id.to_string(),
            message_id: f.message_id.map(str::to_string),
            from: f.from.to_string(),
            recipients: f.recipients,
            size: f.size,
            client: f.client.to_string(),
            account: f.account.to_string(),
            attempt,
            class,
        }
    }

    /// Writes the event: the client was answered `reply`.
    pub fn record(&self, reply: &str) {
        let facts = Facts {
            id: &self.id,
            message_id: self.message_id.as_deref(),
            from: &self.from,
            recipients: self.recipients,
            size: self.size,
            client: &self.client,
            account: &self.account,
        };
        refused(&facts, self.attempt, self.class, reply);
    }
}

/// Counts one reply from the upstream by its code (`smtp_oauth_relay_upstream_replies_total`).
pub fn upstream_reply(code: u16) {
    metrics::counter!("smtp_oauth_relay_upstream_replies_total", "code" => code.to_string())
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_id_from_the_end_of_data_reply() {
        let r = "250 2.0.0 OK <BN8PR12MB3587.namprd12.prod.outlook.com@BN8PR12MB3587> [Hostname=BN8PR12MB3587.namprd12.prod.outlook.com]";
        assert_eq!(
            exchange_id(r),
            Some("BN8PR12MB3587.namprd12.prod.outlook.com@BN8PR12MB3587")
        );
        assert_eq!(exchange_id("250 2.0.0 OK"), None);
        assert_eq!(exchange_id("250 <>"), None);
        assert_eq!(exchange_id("250 <unterminated"), None);
    }
}
