//! Delivery: what happens to a message once its body is in the spool (DESIGN §3).
//!
//! | mode | the client's DATA reply | transient trouble |
//! |---|---|---|
//! | `hybrid` | after one attempt (at most `try_now_timeout`) | fsync'd into the queue, `250` |
//! | `queue` | right after the fsync | retried in the background |
//! | `direct` | after the attempt | `451`, nothing kept |
//!
//! A `250` therefore always means "delivered" or "on disk and owned by the delivery loop".
//! Delivery never words a reply: it returns an [`Outcome`] and the face (`smtp`) speaks.
//!
//! - `submit.rs`: the policy per mode ([`Delivery::submit`]).
//! - `attempt.rs`: one attempt, recipient by recipient, in governor-paced batches.
//! - `outcome.rs`: what an attempt comes to for the client (pure).
//! - `runner.rs`: the queue loop ([`Delivery::run`]) and what each attempt leaves in the
//!   spool.
//! - `hold.rs`: holding the account after a configuration error.
//! - `retry.rs`: when to try again (pure); `queue.rs`: the in-memory index of due messages;
//!   `notice.rs`: the failure notice's text (pure).

mod attempt;
mod hold;
pub mod notice;
pub mod outcome;
pub mod queue;
pub mod retry;
mod runner;
mod submit;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::envelope::Envelope;
use crate::governor::Governor;
use crate::ops::audit;
use crate::spool::body::Body;
use crate::spool::{QueueEntry, Spool};
use crate::upstream::Upstream;
pub use attempt::{RcptFailure, Report};
use hold::Holds;
pub use outcome::{Outcome, Queued, Temporary};
use queue::Queue;

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
    /// Send a failure notice when a queued message fails for good.
    pub failure_notice: bool,
}

/// A message the client handed over, its body complete (in memory or in `incoming/`).
#[derive(Debug, Clone)]
pub struct Spooled {
    pub envelope: Envelope,
    pub body: Body,
    pub size: u64,
}

/// What delivery is built from.
pub struct Parts {
    pub settings: DeliverySettings,
    /// Our host name (the failure notice's `Message-ID`, `HELO` in its record).
    pub hostname: String,
    pub upstream: Arc<Upstream>,
    pub governor: Arc<Governor>,
    pub spool: Spool,
    /// The queue as the spool had it at start-up.
    pub recovered: Vec<QueueEntry>,
    /// Owns the background attempts and the loop's deliveries.
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
}

/// Everything delivery needs, shared by the listener's sessions and the loop.
pub struct Delivery {
    settings: DeliverySettings,
    hostname: String,
    upstream: Arc<Upstream>,
    governor: Arc<Governor>,
    spool: Spool,
    queue: Queue,
    holds: Holds,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Delivery {
    pub fn new(parts: Parts) -> Arc<Self> {
        if !parts.recovered.is_empty() {
            tracing::info!(
                queued = parts.recovered.len(),
                "resuming delivery of queued messages"
            );
        }
        Arc::new(Delivery {
            settings: parts.settings,
            hostname: parts.hostname,
            upstream: parts.upstream,
            governor: parts.governor,
            spool: parts.spool,
            queue: Queue::new(parts.recovered),
            holds: Holds::default(),
            tracker: parts.tracker,
            shutdown: parts.shutdown,
        })
    }

    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    pub fn governor(&self) -> &Arc<Governor> {
        &self.governor
    }

    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Messages in the queue (including those being attempted).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// When the oldest queued message was received (unix seconds), if any.
    pub fn oldest_queued(&self) -> Option<u64> {
        self.queue.oldest_received_at()
    }
}

/// How many recipients the first batch of a message has (the governor's permit covers it).
fn first_batch_len(rcpts: &[String], governor: &Governor) -> u32 {
    let max = governor.limits().max_recipients_per_message;
    let n = rcpts.len() as u32;
    if max == 0 {
        n
    } else {
        n.min(max)
    }
}

/// What the audit trail says about a message.
fn facts(e: &QueueEntry) -> audit::Facts<'_> {
    audit::Facts {
        id: &e.id,
        message_id: e.message_id.as_deref(),
        from: &e.mail_from,
        recipients: e.rcpt_to.len(),
        size: e.size,
        client: &e.client,
        account: &e.mailbox,
    }
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
