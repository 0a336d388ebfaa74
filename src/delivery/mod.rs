//! Delivery: what happens to a message once its body is in the spool (DESIGN §3).
//!
//! | mode | the client's DATA reply | transient trouble |
//! |---|---|---|
//! | `hybrid` | after one attempt (at most `try_now_timeout`) | fsync'd into the queue, `250` |
//! | `queue` | right after the fsync | retried in the background |
//! | `direct` | after the attempt | `451`, nothing kept |
//!
//! A `250` therefore always means "delivered" or "on disk and owned by the delivery loop".
//! The loop ([`Delivery::run`]) takes due messages from the queue, paces them through the
//! [`Governor`], sends them through the [`Upstream`] and records the outcome in the spool.
//! `retry.rs` decides when to try again; `queue.rs` keeps the in-memory index; `notice.rs`
//! writes the optional failure notice.

pub mod notice;
pub mod queue;
pub mod retry;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::envelope::{Envelope, MessageId};
use crate::governor::{split_batches, Decision, Governor, Permit};
use crate::ops::audit;
use crate::spool::body::Body;
use crate::spool::{now_unix, QueueEntry, Refusal, Spool};
use crate::sync::Lock as _;
use crate::upstream::error::classify_reply;
use crate::upstream::{MessageBody, OutboundMessage, Upstream, UpstreamError, Verdict};
use crate::wire::Reply;
use queue::Queue;
use retry::{next_step, History, Step};

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

/// A message whose body is complete on disk (in `incoming/`).
#[derive(Debug, Clone)]
pub struct Spooled {
    pub envelope: Envelope,
    pub body: Body,
    pub size: u64,
}

/// One recipient that was not delivered in an attempt.
#[derive(Debug, Clone)]
pub struct RcptFailure {
    pub rcpt: String,
    pub verdict: Verdict,
    pub reason: String,
    pub reply: Option<Reply>,
}

impl RcptFailure {
    /// The record kept in the spool for a recipient refused for good.
    fn refusal(&self) -> Refusal {
        Refusal {
            rcpt: self.rcpt.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// What one attempt achieved, recipient by recipient.
#[derive(Debug, Default)]
pub struct Report {
    pub delivered: Vec<String>,
    /// The upstream's last `250` after DATA (carries Exchange's message id).
    pub last_reply: Option<Reply>,
    pub failed: Vec<RcptFailure>,
    /// The first error that failed a whole batch, for the client's reply.
    pub first_error: Option<UpstreamError>,
}

impl Report {
    fn permanent(&self) -> impl Iterator<Item = &RcptFailure> {
        self.failed
            .iter()
            .filter(|f| f.verdict == Verdict::Permanent)
    }

    fn transient(&self) -> impl Iterator<Item = &RcptFailure> {
        self.failed
            .iter()
            .filter(|f| f.verdict != Verdict::Permanent)
    }

    /// The verdict that decides the retry timing when several recipients failed transiently:
    /// configuration first (hold), then quota, throttling, plain transient.
    fn retry_verdict(&self) -> Option<(Verdict, &str)> {
        let rank = |v: Verdict| match v {
            Verdict::Config => 0,
            Verdict::Quota => 1,
            Verdict::Throttled => 2,
            _ => 3,
        };
        self.transient()
            .min_by_key(|f| rank(f.verdict))
            .map(|f| (f.verdict, f.reason.as_str()))
    }

    fn from_spool_error(rcpts: &[String], e: std::io::Error) -> Report {
        let reason = format!("cannot read the spooled body: {e}");
        Report {
            failed: rcpts
                .iter()
                .map(|r| RcptFailure {
                    rcpt: r.clone(),
                    verdict: Verdict::Transient,
                    reason: reason.clone(),
                    reply: None,
                })
                .collect(),
            first_error: Some(UpstreamError::Body(e)),
            ..Default::default()
        }
    }
}

/// An account held for a configuration error: new mail gets `451 4.7.0` with the advice for
/// a short while (hybrid and direct); the next message after that tries again, so a fix is
/// noticed without a restart.
#[derive(Debug, Clone)]
struct Hold {
    advice: String,
    until: Instant,
    /// The token endpoint refused us (not Exchange): a working token lifts it.
    from_token: bool,
}

const HOLD_FOR: Duration = Duration::from_secs(60);

/// Everything delivery needs, shared by the listener's sessions and the loop.
pub struct Delivery {
    settings: DeliverySettings,
    hostname: String,
    upstream: Arc<Upstream>,
    governor: Arc<Governor>,
    spool: Spool,
    queue: Queue,
    hold: Mutex<Option<Hold>>,
    /// The last configuration problem logged at error level, so a storm of messages logs the
    /// advice once rather than once per message.
    last_config_problem: Mutex<Option<String>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// Messages claimed from the queue at once (most of them wait for the governor).
fn max_in_flight(governor: &Governor) -> usize {
    match governor.limits().max_connections {
        0 => 256,
        n => (n as usize * 4).clamp(8, 256),
    }
}

impl Delivery {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: DeliverySettings,
        hostname: String,
        upstream: Arc<Upstream>,
        governor: Arc<Governor>,
        spool: Spool,
        recovered: Vec<QueueEntry>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        if !recovered.is_empty() {
            tracing::info!(
                queued = recovered.len(),
                "resuming delivery of queued messages"
            );
        }
        Arc::new(Delivery {
            settings,
            hostname,
            upstream,
            governor,
            spool,
            queue: Queue::new(recovered),
            hold: Mutex::new(None),
            last_config_problem: Mutex::new(None),
            tracker,
            shutdown,
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

    /// Lifts a configuration hold that the token endpoint caused, once it issues tokens
    /// again (a hold from Exchange's side stays until a delivery works).
    pub fn token_recovered(&self) {
        let mut hold = self.hold.locked();
        if hold.as_ref().is_some_and(|h| h.from_token) {
            *hold = None;
            self.last_config_problem.locked().take();
        }
    }

    /// The advice of a current configuration hold, if any.
    pub fn held(&self) -> Option<String> {
        let hold = self.hold.locked();
        hold.as_ref()
            .filter(|h| h.until > Instant::now())
            .map(|h| h.advice.clone())
    }

    /// Takes a received message and returns the client's DATA reply (DESIGN §3).
    pub async fn submit(self: &Arc<Self>, msg: Spooled) -> Reply {
        let entry = self.new_entry(&msg);
        audit::received(&facts(&entry), self.settings.mode.as_str());
        match self.settings.mode {
            DeliveryMode::Queue => self.submit_queue(msg, entry).await,
            DeliveryMode::Hybrid => self.submit_hybrid(msg, entry).await,
            DeliveryMode::Direct => self.submit_direct(msg, entry).await,
        }
    }

    fn new_entry(&self, msg: &Spooled) -> QueueEntry {
        QueueEntry::from_envelope(&msg.envelope, self.upstream.mailbox(), msg.size)
    }

    /// Commits to the queue and hands the message to the loop. `Err` is the client's reply.
    async fn enqueue(&self, body: &Body, entry: QueueEntry, claimed: bool) -> Result<(), Reply> {
        let committed = match body {
            Body::File(path) => self.spool.commit(path, &entry).await,
            // Kept after all: written and committed like any other.
            Body::Memory(m) => self.spool.commit_bytes(m.clone(), &entry).await,
        };
        match committed {
            Ok(()) => {
                self.queue.insert(entry, claimed);
                Ok(())
            }
            Err(e) => {
                tracing::error!(id = %entry.id, error = %e, "cannot commit the message to the spool");
                self.discard(body).await;
                let reply = crate::smtp::reply::local_error();
                audit::refused(&facts(&entry), entry.attempts, "local", &reply.to_string());
                Err(reply)
            }
        }
    }

    async fn submit_queue(self: &Arc<Self>, msg: Spooled, entry: QueueEntry) -> Reply {
        let id = entry.id.clone();
        if let Err(reply) = self.enqueue(&msg.body, entry, false).await {
            return reply;
        }
        queued_reply(&id, "queued for delivery")
    }

    async fn submit_direct(self: &Arc<Self>, msg: Spooled, entry: QueueEntry) -> Reply {
        if let Some(advice) = self.held() {
            return self.refuse_held(&msg, &entry, &advice).await;
        }
        let first = first_batch_len(&entry.rcpt_to, &self.governor);
        let permit = tokio::select! {
            p = self.governor.acquire(first) => p,
            _ = tokio::time::sleep(self.settings.try_now_timeout) => {
                self.discard(&msg.body).await;
                let reply = Reply::new(451, "4.3.2", "the mailbox is at its sending limit, try again later");
                audit::refused(&facts(&entry), 0, "paced", &reply.to_string());
                return reply;
            }
        };
        let report = self.attempt_body(&entry, &msg.body, Some(permit)).await;
        self.discard(&msg.body).await;
        self.note_outcome(&entry, &report);
        let reply = client_reply(&entry.id, &report);
        self.note_refusal(&entry, &report, &reply);
        reply
    }

    /// A configuration hold: the client gets `451 4.7.0` with the advice, nothing is kept.
    async fn refuse_held(&self, msg: &Spooled, entry: &QueueEntry, advice: &str) -> Reply {
        self.discard(&msg.body).await;
        let reply = held_reply(advice);
        audit::refused(&facts(entry), 0, "config", &reply.to_string());
        reply
    }

    /// Records in the audit trail that recipients were refused back to the client (nothing
    /// kept for them).
    fn note_refusal(&self, entry: &QueueEntry, report: &Report, reply: &Reply) {
        if let Some(f) = report.failed.first() {
            let class = if report.permanent().next().is_some() {
                Verdict::Permanent
            } else {
                f.verdict
            };
            let mut refused = facts(entry);
            refused.recipients = report.failed.len();
            audit::refused(&refused, 1, class.label(), &reply.to_string());
        }
    }

    async fn submit_hybrid(self: &Arc<Self>, msg: Spooled, mut entry: QueueEntry) -> Reply {
        if let Some(advice) = self.held() {
            return self.refuse_held(&msg, &entry, &advice).await;
        }
        let id = entry.id.clone();
        let first = first_batch_len(&entry.rcpt_to, &self.governor);
        let deadline = tokio::time::Instant::now() + self.settings.try_now_timeout;
        let permit = match self.governor.try_acquire(first) {
            Ok(p) => Some(p),
            // All allowed sessions are busy: one frees within moments, worth a short wait.
            // If the rate or daily budget runs out meanwhile, queue at once (no long wait).
            Err(Decision::WaitForSlot) => {
                tokio::time::timeout_at(deadline, self.governor.acquire_slot(first))
                    .await
                    .ok()
                    .flatten()
            }
            // Out of rate or daily budget: don't make the client wait for the pacer.
            Err(_) => None,
        };
        let Some(permit) = permit else {
            if let Err(reply) = self.enqueue(&msg.body, entry.clone(), false).await {
                return reply;
            }
            let why = "the mailbox is at its sending pace";
            audit::deferred(&facts(&entry), 0, "paced", why, entry.next_attempt);
            return queued_reply(&id, "queued: the mailbox is at its sending pace");
        };
        // The attempt runs here while the client waits (no task, no channel: most attempts
        // finish in time); if the wait ends first, the same attempt moves to a task.
        let mut attempt = {
            let me = self.clone();
            let entry = entry.clone();
            let body = msg.body.clone();
            Box::pin(async move { me.attempt_body(&entry, &body, Some(permit)).await })
        };
        let report = match tokio::time::timeout_at(deadline, &mut attempt).await {
            Ok(report) => report,
            Err(_) => {
                // Still trying: make it durable, answer 250, and let the attempt finish in
                // the background. It stays claimed so the loop doesn't start a second one.
                if let Err(reply) = self.enqueue(&msg.body, entry.clone(), true).await {
                    // Not kept: the attempt must not deliver what the client is told failed.
                    drop(attempt);
                    return reply;
                }
                audit::deferred(
                    &facts(&entry),
                    0,
                    "slow",
                    "first attempt still running when the client's wait ended",
                    entry.next_attempt,
                );
                let me = self.clone();
                self.tracker.spawn(async move {
                    let report = attempt.await;
                    me.apply(entry, report).await;
                });
                return queued_reply(
                    &id,
                    "queued: Exchange is slow to answer, delivery continues",
                );
            }
        };
        self.note_outcome(&entry, &report);
        let transient: Vec<String> = report.transient().map(|f| f.rcpt.clone()).collect();
        if transient.is_empty()
            || (report.delivered.is_empty()
                && report.retry_verdict().map(|v| v.0) == Some(Verdict::Config))
        {
            // Delivered and/or refused for good, or held for configuration: nothing to keep;
            // the client (the app, and its admin) hears the truth now.
            self.discard(&msg.body).await;
            let reply = client_reply(&id, &report);
            self.note_refusal(&entry, &report, &reply);
            return reply;
        }
        // Keep what is still to do; record what was refused for good.
        entry.rcpt_to = transient;
        entry.refused = report.permanent().map(RcptFailure::refusal).collect();
        entry.attempts = 1;
        let (verdict, reason) = report.retry_verdict().expect("transient failures present");
        let reason = reason.to_string();
        entry.last_error = Some(reason.clone());
        match next_step(verdict, &reason, self.history(&entry)) {
            Step::RetryAt(at) => entry.next_attempt = at,
            Step::Fail(_) => entry.next_attempt = now_unix(),
        }
        if let Err(reply) = self.enqueue(&msg.body, entry.clone(), false).await {
            return reply;
        }
        let class = verdict.label();
        audit::deferred(&facts(&entry), 1, class, &reason, entry.next_attempt);
        queued_reply(&id, &format!("queued, will retry: {reason}"))
    }

    fn history(&self, entry: &QueueEntry) -> History {
        let now = now_unix();
        History {
            attempts: entry.attempts,
            received_at: entry.received_at,
            now,
            max_age: self.settings.max_age,
            quota_frees_at: self.governor.snapshot().held_until.map(|until| {
                now + until
                    .saturating_duration_since(tokio::time::Instant::now())
                    .as_secs()
            }),
            jitter: rand::random::<f64>(),
        }
    }

    /// Drops a received body that is not kept.
    async fn discard(&self, body: &Body) {
        if let Body::File(path) = body {
            self.spool.discard(path).await;
        }
    }

    /// Opens the body and runs one attempt.
    async fn attempt_body(&self, entry: &QueueEntry, body: &Body, first: Option<Permit>) -> Report {
        let path = match body {
            Body::Memory(m) => {
                return self
                    .attempt(entry, &mut MessageBody::Bytes(m.bytes()), first)
                    .await
            }
            Body::File(path) => path,
        };
        let file = match tokio::fs::File::open(path).await {
            // Hybrid mode: the client's wait ended and the body was committed to the queue
            // before this attempt got to open it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tokio::fs::File::open(self.spool.body_path(&entry.id)).await
            }
            other => other,
        };
        match file {
            Ok(mut file) => {
                self.attempt(entry, &mut MessageBody::Stream(&mut file), first)
                    .await
            }
            Err(e) => Report::from_spool_error(&entry.rcpt_to, e),
        }
    }

    /// One delivery attempt: every remaining recipient, in batches the governor allows, each
    /// batch paced by it. `first` is a permit already held for the first batch.
    async fn attempt(
        &self,
        entry: &QueueEntry,
        body: &mut MessageBody<'_>,
        mut first: Option<Permit>,
    ) -> Report {
        // Direct mode keeps nothing, so it must not half-deliver, and must not start sending
        // after its client may have given up.
        let direct = self.settings.mode == DeliveryMode::Direct;
        let start_by = direct.then(|| tokio::time::Instant::now() + self.settings.try_now_timeout);
        let mut report = Report::default();
        let batch_size = self.governor.limits().max_recipients_per_message;
        let batches: Vec<Vec<String>> = split_batches(&entry.rcpt_to, batch_size)
            .into_iter()
            .map(|b| b.to_vec())
            .collect();
        let mut stop: Option<(Verdict, String)> = None;
        for batch in batches {
            if let Some((verdict, reason)) = &stop {
                report.failed.extend(batch.iter().map(|r| RcptFailure {
                    rcpt: r.clone(),
                    verdict: *verdict,
                    reason: reason.clone(),
                    reply: None,
                }));
                continue;
            }
            let permit = match first.take() {
                Some(p) => p,
                None => tokio::select! {
                    p = self.governor.acquire(batch.len() as u32) => p,
                    _ = self.shutdown.cancelled() => {
                        stop = Some((Verdict::Transient, "relay shutting down".into()));
                        report.failed.extend(batch.iter().map(|r| RcptFailure {
                            rcpt: r.clone(),
                            verdict: Verdict::Transient,
                            reason: "relay shutting down".into(),
                            reply: None,
                        }));
                        continue;
                    }
                },
            };
            let msg = OutboundMessage {
                mail_from: upstream_sender(
                    self.settings.envelope_sender,
                    &entry.mail_from,
                    self.upstream.mailbox(),
                ),
                rcpt_to: batch.clone(),
                size: entry.size,
                body_8bit: entry.body_8bit,
                smtputf8: entry.smtputf8,
                all_or_nothing: direct,
                start_by,
            };
            let result = self.upstream.send(&msg, body).await;
            drop(permit);
            match result {
                Ok(d) => {
                    report.delivered.extend(d.accepted);
                    for (rcpt, reply) in d.rejected {
                        let verdict = classify_reply(&reply);
                        self.governor_feedback(verdict);
                        report.failed.push(RcptFailure {
                            rcpt,
                            verdict,
                            reason: reply.to_string(),
                            reply: Some(reply),
                        });
                    }
                    report.last_reply = Some(d.reply);
                }
                Err(e) => {
                    let verdict = e.verdict();
                    self.governor_feedback(verdict);
                    let reason = e.to_string();
                    report.failed.extend(batch.iter().map(|r| RcptFailure {
                        rcpt: r.clone(),
                        verdict,
                        reason: reason.clone(),
                        reply: e.reply().cloned(),
                    }));
                    if verdict == Verdict::Config {
                        self.set_hold(&e);
                        stop = Some((verdict, reason));
                    }
                    if report.first_error.is_none() {
                        report.first_error = Some(e);
                    }
                }
            }
        }
        report
    }

    fn governor_feedback(&self, verdict: Verdict) {
        match verdict {
            Verdict::Throttled => self.governor.on_concurrency_throttle(),
            Verdict::Quota => self.governor.on_quota_exceeded(),
            _ => {}
        }
    }

    fn set_hold(&self, e: &UpstreamError) {
        let advice = e
            .advice_for(self.upstream.mailbox())
            .unwrap_or_else(|| e.to_string());
        // Keyed by the advice, which is stable, not by the error text (trace ids differ).
        let key = advice.clone();
        let first = {
            let mut last = self.last_config_problem.locked();
            let first = last.as_deref() != Some(key.as_str());
            *last = Some(key);
            first
        };
        if first {
            tracing::error!(error = %e, advice = %advice, "relay configuration problem; new mail is refused with 451 (queued mail waits) until it is fixed");
        } else {
            tracing::debug!(error = %e, "same configuration problem as before");
        }
        *self.hold.locked() = Some(Hold {
            advice,
            until: Instant::now() + HOLD_FOR,
            from_token: matches!(e, UpstreamError::Token(_)),
        });
    }

    /// Logs an attempt's outcome and lifts a hold after a success.
    fn note_outcome(&self, entry: &QueueEntry, report: &Report) {
        if !report.delivered.is_empty() {
            let had_hold = self.hold.locked().take().is_some();
            let had_problem = self.last_config_problem.locked().take().is_some();
            if had_hold || had_problem {
                tracing::info!("upstream delivery works again");
            }
            let received = if entry.received_at_ms > 0 {
                Duration::from_millis(entry.received_at_ms)
            } else {
                Duration::from_secs(entry.received_at)
            };
            let latency = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH + received)
                .unwrap_or_default();
            audit::delivered(
                &facts(entry),
                entry.attempts + 1,
                report.delivered.len(),
                &report
                    .last_reply
                    .as_ref()
                    .map(|r| r.to_string())
                    .unwrap_or_default(),
                latency,
            );
        }
        for f in &report.failed {
            if f.verdict == Verdict::Config {
                continue; // logged once by set_hold
            }
            tracing::warn!(
                id = %entry.id,
                recipient = %f.rcpt,
                attempt = entry.attempts + 1,
                verdict = ?f.verdict,
                reason = %f.reason,
                "not delivered"
            );
        }
    }

    /// Records an attempt on a queued message: done, retry later, or failed for good.
    async fn apply(self: &Arc<Self>, mut entry: QueueEntry, report: Report) {
        self.note_outcome(&entry, &report);
        entry.attempts += 1;
        entry
            .refused
            .extend(report.permanent().map(RcptFailure::refusal));
        let transient: Vec<String> = report.transient().map(|f| f.rcpt.clone()).collect();
        let retry = report.retry_verdict().map(|(v, r)| (v, r.to_string()));
        if transient.is_empty() {
            if entry.refused.is_empty() {
                if let Err(e) = self.spool.complete(&entry.id).await {
                    tracing::error!(id = %entry.id, error = %e, "delivered, but cannot remove it from the spool (it may be sent again)");
                }
                self.queue.remove(&entry.id);
            } else {
                let refused: Vec<String> = entry.refused.iter().map(Refusal::to_string).collect();
                let reason = format!("refused by Exchange: {}", refused.join("; "));
                self.fail(entry, "permanent", reason).await;
            }
            return;
        }
        let (verdict, reason) = retry.expect("transient failures present");
        entry.rcpt_to = transient;
        entry.last_error = Some(reason.clone());
        match next_step(verdict, &reason, self.history(&entry)) {
            Step::RetryAt(at) => {
                entry.next_attempt = at;
                audit::deferred(&facts(&entry), entry.attempts, verdict.label(), &reason, at);
                match self.spool.update(&entry).await {
                    Ok(()) => self.queue.release(entry),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        tracing::info!(id = %entry.id, "message was deleted from the queue meanwhile");
                        self.queue.remove(&entry.id);
                    }
                    Err(e) => {
                        tracing::error!(id = %entry.id, error = %e, "cannot record the attempt in the spool; will retry");
                        self.queue.release(entry);
                    }
                }
            }
            Step::Fail(reason) => {
                for r in &entry.rcpt_to {
                    entry.refused.push(Refusal {
                        rcpt: r.clone(),
                        reason: reason.clone(),
                    });
                }
                self.fail(entry, "expired", reason).await;
            }
        }
    }

    /// Moves a message to `failed/`, logs one line, and optionally notifies the sender.
    async fn fail(self: &Arc<Self>, mut entry: QueueEntry, class: &'static str, reason: String) {
        entry.failed_at = Some(now_unix());
        entry.failure_reason = Some(reason.clone());
        entry.rcpt_to = entry.refused.iter().map(|r| r.rcpt.clone()).collect();
        audit::failed(&facts(&entry), entry.attempts, class, &reason);
        tracing::error!(
            id = %entry.id,
            recipients = %entry.rcpt_to.join(","),
            "message failed permanently; kept in the spool's failed/ directory"
        );
        if let Err(e) = self.spool.fail(&entry).await {
            tracing::error!(id = %entry.id, error = %e, "cannot move the message to failed/");
        }
        self.queue.remove(&entry.id);
        if self.settings.failure_notice && !entry.notice && !entry.mail_from.is_empty() {
            self.send_notice(&entry).await;
        }
    }

    async fn send_notice(&self, failed: &QueueEntry) {
        let id = MessageId::generate();
        let body = notice::failure_notice(
            failed,
            self.upstream.mailbox(),
            &failed.mail_from,
            &self.hostname,
            id.as_str(),
            SystemTime::now(),
        );
        let path = self.spool.incoming_path(&id);
        if let Err(e) = tokio::fs::write(&path, &body).await {
            tracing::error!(error = %e, "cannot write the failure notice");
            return;
        }
        let mut entry = QueueEntry::new(
            id.to_string(),
            String::new(),
            vec![failed.mail_from.clone()],
            self.upstream.mailbox().to_string(),
            body.len() as u64,
        );
        entry.client = "relay".into();
        entry.helo = self.hostname.clone();
        entry.body_8bit = true;
        entry.notice = true;
        if self.enqueue(&Body::File(path), entry, false).await.is_ok() {
            tracing::info!(notice = %id, about = %failed.id, to = %failed.mail_from, "failure notice queued");
        }
    }

    /// The delivery loop: claims due messages and delivers them until shutdown. Also picks up
    /// `queue retry|delete` requests and purges old failures.
    pub async fn run(self: Arc<Self>) {
        let mut last_purge: Option<Instant> = None;
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            if self.spool.take_rescan_request() {
                match self.spool.list(crate::spool::Area::Queue) {
                    Ok(entries) => {
                        tracing::info!(
                            queued = entries.len(),
                            "re-read the queue after a queue command"
                        );
                        self.queue.sync_with_disk(entries);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot re-read the queue"),
                }
            }
            if last_purge.is_none_or(|t| t.elapsed() > Duration::from_secs(3600)) {
                last_purge = Some(Instant::now());
                match self.spool.purge_failed(self.settings.failed_retention) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(purged = n, "removed expired failed messages"),
                    Err(e) => tracing::warn!(error = %e, "cannot purge failed messages"),
                }
            }
            let room = max_in_flight(&self.governor).saturating_sub(self.queue.claimed());
            for entry in self.queue.claim_due(now_unix(), room) {
                let me = self.clone();
                self.tracker
                    .spawn(async move { me.deliver_queued(entry).await });
            }
            let wait = match self.queue.next_due() {
                Some(at) => Duration::from_secs(at.saturating_sub(now_unix()))
                    .clamp(Duration::from_millis(50), Duration::from_secs(2)),
                None => Duration::from_secs(2),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.queue.changed() => {}
                _ = self.shutdown.cancelled() => break,
            }
        }
        tracing::debug!("delivery loop stopped");
    }

    async fn deliver_queued(self: Arc<Self>, entry: QueueEntry) {
        let first = first_batch_len(&entry.rcpt_to, &self.governor);
        let permit = tokio::select! {
            p = self.governor.acquire(first) => p,
            _ = self.shutdown.cancelled() => {
                // Not started: stays queued for the next start.
                self.queue.release(entry);
                return;
            }
        };
        let path = self.spool.body_path(&entry.id);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(id = %entry.id, "message was deleted from the queue");
                self.queue.remove(&entry.id);
                return;
            }
            Err(e) => {
                let report = Report::from_spool_error(&entry.rcpt_to, e);
                self.apply(entry, report).await;
                return;
            }
        };
        let report = self
            .attempt(&entry, &mut MessageBody::Stream(&mut file), Some(permit))
            .await;
        self.apply(entry, report).await;
    }
}

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

fn queued_reply(id: &str, why: &str) -> Reply {
    Reply::new(250, "2.0.0", format!("{id} {why}"))
}

fn held_reply(advice: &str) -> Reply {
    Reply::new(
        451,
        "4.7.0",
        format!("relay configuration problem, see the relay log: {advice}"),
    )
}

/// The upstream `MAIL FROM` (see `account.envelope_sender`). The null sender always becomes
/// the mailbox: Exchange does not accept `<>` for submission.
pub fn upstream_sender(policy: EnvelopeSender, client_sender: &str, mailbox: &str) -> String {
    match policy {
        EnvelopeSender::Client if !client_sender.is_empty() => client_sender.to_string(),
        _ => mailbox.to_string(),
    }
}

/// The client's DATA reply after an attempt it waited for: delivered → `250` with the
/// upstream's id; refused for good → the upstream's own 5xx; transient or unreachable →
/// `451 4.4.x`; configuration → `451 4.7.0` with the advice.
pub fn client_reply(id: &str, report: &Report) -> Reply {
    if !report.delivered.is_empty() {
        let upstream = report
            .last_reply
            .as_ref()
            .map(|r| r.text())
            .unwrap_or_default();
        let mut text = format!("{id} delivered: {upstream}");
        if let Some(first) = report.failed.first() {
            text.push_str(&format!(
                " ({} of {} recipients not delivered: {})",
                report.failed.len(),
                report.failed.len() + report.delivered.len(),
                first.reason
            ));
        }
        return Reply::new(250, "2.0.0", text);
    }
    let Some(first) = report
        .failed
        .iter()
        .find(|f| f.verdict != Verdict::Permanent)
        .or(report.failed.first())
    else {
        return Reply::new(451, "4.3.0", "nothing was delivered, try again later");
    };
    if let Some(e) = &report.first_error {
        if first.verdict == e.verdict() {
            return error_reply(e);
        }
    }
    match (first.verdict, &first.reply) {
        (Verdict::Permanent, Some(r)) => permanent_reply(r),
        (Verdict::Permanent, None) => Reply::new(
            554,
            "5.0.0",
            format!("upstream refused the message: {}", first.reason),
        ),
        (_, Some(r)) => Reply::new(451, "4.4.0", format!("upstream temporarily refused: {r}")),
        (_, None) => Reply::new(
            451,
            "4.4.0",
            format!("upstream failed, try again later: {}", first.reason),
        ),
    }
}

fn permanent_reply(r: &Reply) -> Reply {
    Reply::new(
        if r.code >= 500 { r.code } else { 554 },
        r.status().filter(|s| s.starts_with('5')).unwrap_or("5.0.0"),
        format!("upstream: {}", r.text()),
    )
}

/// The reply for an attempt that failed as a whole.
pub fn error_reply(e: &UpstreamError) -> Reply {
    match e.verdict() {
        Verdict::Permanent => match e.reply() {
            Some(r) => permanent_reply(r),
            None => Reply::new(554, "5.0.0", format!("upstream refused the message: {e}")),
        },
        Verdict::Transient | Verdict::Throttled | Verdict::Quota => match e {
            UpstreamError::Connect { .. } => {
                Reply::new(451, "4.4.1", "upstream unreachable, try again later")
            }
            UpstreamError::Timeout { .. } => {
                Reply::new(451, "4.4.2", "upstream timed out, try again later")
            }
            _ => match e.reply() {
                Some(r) => Reply::new(451, "4.4.0", format!("upstream temporarily refused: {r}")),
                None => Reply::new(
                    451,
                    "4.4.0",
                    format!("upstream failed, try again later: {e}"),
                ),
            },
        },
        Verdict::Config => held_reply(&e.advice().unwrap_or_else(|| e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Stage;

    fn reply(text: &str) -> Reply {
        Reply::parse(format!("{text}\r\n").as_bytes())
            .unwrap()
            .unwrap()
            .0
    }

    fn failed_with(e: UpstreamError, rcpts: &[&str]) -> Report {
        let verdict = e.verdict();
        Report {
            failed: rcpts
                .iter()
                .map(|r| RcptFailure {
                    rcpt: r.to_string(),
                    verdict,
                    reason: e.to_string(),
                    reply: e.reply().cloned(),
                })
                .collect(),
            first_error: Some(e),
            ..Default::default()
        }
    }

    #[test]
    fn delivered_carries_exchange_id() {
        let report = Report {
            delivered: vec!["a@b".into()],
            last_reply: Some(reply("250 2.0.0 OK <abc@prod.outlook.com> [Hostname=X]")),
            ..Default::default()
        };
        let r = client_reply("ID1", &report);
        assert_eq!(r.code, 250);
        assert!(r.lines[0].contains("<abc@prod.outlook.com>"));
        assert!(r.lines[0].contains("ID1"));
    }

    #[test]
    fn permanent_passes_upstream_5xx() {
        let e = UpstreamError::Rejected {
            stage: Stage::EndOfData,
            reply: reply("554 5.2.252 SendAsDenied; x not allowed"),
        };
        let r = client_reply("ID", &failed_with(e, &["a@b"]));
        assert_eq!((r.code, r.status()), (554, Some("5.2.252")));
        assert!(r.lines[0].contains("SendAsDenied"));
    }

    #[test]
    fn transient_is_451_4_4_x_and_never_leaks_255() {
        let e = UpstreamError::Rejected {
            stage: Stage::EndOfData,
            reply: reply("451 4.7.500 Access denied, please try again later"),
        };
        let r = client_reply("ID", &failed_with(e, &["a@b"]));
        assert_eq!((r.code, r.status()), (451, Some("4.4.0")));
        assert!(r.lines[0].contains("4.7.500"));
        let e = UpstreamError::Connect {
            addr: "x:1".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert_eq!(
            client_reply("ID", &failed_with(e, &["a"])).status(),
            Some("4.4.1")
        );
        let e = UpstreamError::Timeout {
            stage: Stage::EndOfData,
        };
        assert_eq!(
            client_reply("ID", &failed_with(e, &["a"])).status(),
            Some("4.4.2")
        );
    }

    #[test]
    fn quota_is_deferred_not_bounced() {
        let e = UpstreamError::Rejected {
            stage: Stage::EndOfData,
            reply: reply(
                "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
            ),
        };
        assert_eq!(client_reply("ID", &failed_with(e, &["a"])).code, 451);
    }

    #[test]
    fn config_gets_451_4_7_0_with_advice() {
        let e = UpstreamError::Auth {
            reply: reply("535 5.7.3 Authentication unsuccessful"),
            after_refresh: true,
        };
        let r = client_reply("ID", &failed_with(e, &["a"]));
        assert_eq!((r.code, r.status()), (451, Some("4.7.0")));
        assert!(r.lines[0].contains("SMTP.SendAsApp"));
    }

    #[test]
    fn partial_recipient_refusal_is_named_in_the_250() {
        let report = Report {
            delivered: vec!["ok@x".into()],
            last_reply: Some(reply("250 2.0.0 OK <id@x>")),
            failed: vec![RcptFailure {
                rcpt: "bad@x".into(),
                verdict: Verdict::Permanent,
                reason: "550 5.1.10 not found".into(),
                reply: Some(reply("550 5.1.10 not found")),
            }],
            first_error: None,
        };
        let r = client_reply("ID", &report);
        assert_eq!(r.code, 250);
        assert!(
            r.lines[0].contains("1 of 2 recipients not delivered"),
            "{r}"
        );
    }

    #[test]
    fn retry_verdict_prefers_config_then_quota() {
        let f = |v| RcptFailure {
            rcpt: "r".into(),
            verdict: v,
            reason: format!("{v:?}"),
            reply: None,
        };
        let report = Report {
            failed: vec![
                f(Verdict::Transient),
                f(Verdict::Quota),
                f(Verdict::Permanent),
            ],
            ..Default::default()
        };
        assert_eq!(report.retry_verdict().unwrap().0, Verdict::Quota);
        assert_eq!(report.transient().count(), 2);
    }

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
