//! The [`Delivery`] value every job of this room works on (the listener's sessions submit to
//! it, the queue loop runs on it), what it is built from, and the small helpers they share.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::hold::Holds;
use super::queue::Queue;
use super::settings::DeliverySettings;
use crate::envelope::Envelope;
use crate::governor::Governor;
use crate::ops::audit;
use crate::spool::body::Body;
use crate::spool::destination::{self, Sorted};
use crate::spool::{Destination, QueueEntry, Spool};
use crate::sync::Lock as _;
use crate::upstream::{Upstream, UpstreamError};

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
    /// The destination this lane delivers to: recorded in every message it accepts, and
    /// the only one whose queued messages it delivers.
    pub destination: Destination,
    /// The destinations of the relay's other lanes: their queued mail is theirs, neither
    /// delivered here nor reported as another relay's.
    pub siblings: Vec<Destination>,
    /// Whether this lane adopts queued mail with no recorded destination (the first lane).
    pub adopts: bool,
    /// The queue as the spool had it at start-up.
    pub recovered: Vec<QueueEntry>,
    /// Owns the background attempts and the loop's deliveries.
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
}

/// Everything delivery needs, shared by the listener's sessions and the loop.
pub struct Delivery {
    pub(super) settings: DeliverySettings,
    pub(super) hostname: String,
    pub(super) upstream: Arc<Upstream>,
    pub(super) governor: Arc<Governor>,
    pub(super) spool: Spool,
    pub(super) destination: Destination,
    pub(super) siblings: Vec<Destination>,
    pub(super) adopts: bool,
    /// Queued messages kept for other destinations (never delivered here), per destination.
    pub(super) others: Mutex<Vec<(Destination, usize)>>,
    pub(super) queue: Queue,
    pub(super) holds: Holds,
    /// Hybrid messages queued for want of budget since the loop's last summary line.
    pub(super) paced: AtomicU64,
    /// The spool's rescan count this lane last re-read the queue for.
    pub(super) rescans_seen: AtomicU64,
    pub(super) tracker: TaskTracker,
    pub(super) shutdown: CancellationToken,
}

impl Delivery {
    pub fn new(parts: Parts) -> Arc<Self> {
        let sorted = destination::sort_among(
            parts.recovered,
            &destination::Lane {
                ours: &parts.destination,
                siblings: &parts.siblings,
                adopts: parts.adopts,
            },
        );
        if !sorted.mine.is_empty() {
            tracing::info!(
                queued = sorted.mine.len(),
                spool = %parts.spool.root().display(),
                "resuming delivery of queued messages"
            );
        }
        report_sorted(&sorted, &parts.destination, &parts.spool);
        Arc::new(Delivery {
            settings: parts.settings,
            hostname: parts.hostname,
            upstream: parts.upstream,
            governor: parts.governor,
            spool: parts.spool,
            destination: parts.destination,
            siblings: parts.siblings,
            adopts: parts.adopts,
            others: Mutex::new(sorted.others),
            queue: Queue::new(sorted.mine),
            holds: Holds::default(),
            paced: AtomicU64::new(0),
            rescans_seen: AtomicU64::new(0),
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

    /// The destination this relay delivers to.
    pub fn destination(&self) -> &Destination {
        &self.destination
    }

    /// Queued messages kept in the spool for other destinations, per destination: this relay
    /// never delivers them.
    pub fn others(&self) -> Vec<(Destination, usize)> {
        self.others.locked().clone()
    }

    /// Brings the in-memory queue in line with `on_disk` (after a queue command), keeping
    /// other destinations' messages out of it.
    pub(super) fn resync(&self, on_disk: Vec<QueueEntry>) {
        let sorted = destination::sort_among(
            on_disk,
            &destination::Lane {
                ours: &self.destination,
                siblings: &self.siblings,
                adopts: self.adopts,
            },
        );
        report_sorted(&sorted, &self.destination, &self.spool);
        *self.others.locked() = sorted.others;
        self.queue.sync_with_disk(sorted.mine);
    }

    /// Queued messages being attempted right now (claimed by the loop or a hybrid attempt
    /// that outlasted its client's wait). Each writes its result to the spool before it
    /// stops counting here.
    pub fn attempts_running(&self) -> usize {
        self.queue.claimed()
    }

    /// When the oldest queued message was received (unix seconds), if any.
    pub fn oldest_queued(&self) -> Option<u64> {
        self.queue.oldest_received_at()
    }
}

impl Delivery {
    /// Holds the account after configuration error `e`, logging the advice once.
    pub(super) fn hold(&self, e: &UpstreamError) {
        let advice = e.hold_advice(self.upstream.mailbox());
        let from_token = matches!(e, UpstreamError::Token(_));
        self.governor
            .share_hold(&advice, from_token, super::hold::HOLD_FOR);
        if self.holds.set(advice.clone(), from_token, Instant::now()) {
            tracing::error!(error = %e, advice = %advice, "relay configuration problem; new mail is refused with 451 (queued mail waits) until it is fixed");
        } else {
            tracing::debug!(error = %e, "same configuration problem as before");
        }
    }

    /// The advice of a current configuration hold, if any.
    pub fn held(&self) -> Option<String> {
        self.holds
            .current(Instant::now())
            .or_else(|| self.governor.shared_hold().map(|h| h.advice))
    }

    /// Lifts a configuration hold that the token endpoint caused, once it issues tokens
    /// again (a hold from Exchange's side stays until a delivery works).
    pub fn token_recovered(&self) {
        self.holds.token_recovered();
        self.governor.lift_shared_hold(true);
    }
}

/// Logs what the relay adopted and what it keeps for other destinations.
fn report_sorted(sorted: &Sorted, ours: &Destination, spool: &Spool) {
    if sorted.adopted > 0 {
        tracing::warn!(
            adopted = sorted.adopted,
            destination = %ours,
            "queued messages without a recorded destination (queued by `sendmail`, or by an older version) are adopted by this relay and will be delivered to its destination"
        );
    }
    for (other, count) in &sorted.others {
        tracing::warn!(
            count,
            destination = %other,
            ours = %ours,
            spool = %spool.root().display(),
            "queued messages were accepted for another destination: this relay keeps them in the spool and does not deliver them (deliver them with a relay configured for that destination, or see `queue adopt` and `queue delete`)"
        );
    }
}

/// How many recipients the first batch of a message has (the governor's permit covers it).
pub(super) fn first_batch_len(rcpts: &[String], governor: &Governor) -> u32 {
    let max = governor.limits().max_recipients_per_message;
    let n = rcpts.len() as u32;
    if max == 0 {
        n
    } else {
        n.min(max)
    }
}

/// What the audit trail says about a message.
pub(super) fn facts(e: &QueueEntry) -> audit::Facts<'_> {
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
