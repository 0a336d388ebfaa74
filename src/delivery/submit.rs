//! The policy per delivery mode (DESIGN §3): what happens to a message the client just sent,
//! and what the client is told, as an [`Outcome`].
//!
//! - `queue`: commit to the spool (fsync), then `Queued`.
//! - `hybrid`: one attempt while the client waits (at most `try_now_timeout`). Delivered,
//!   refused for good or held: the client hears it and nothing is kept. Anything else (a
//!   temporary failure, no sending budget now, an attempt still running when the wait ends):
//!   commit, then `Queued`.
//! - `direct`: one attempt; nothing is ever kept, so a temporary failure is `Temporary`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::attempt::Report;
use super::outcome::{Outcome, Queued, Submitted, Temporary};
use super::retry::{next_step, Step};
use super::settings::DeliveryMode;
use super::state::{facts, first_batch_len, Delivery, Spooled};
use crate::ops::audit;
use crate::spool::body::Body;
use crate::spool::{now_unix, QueueEntry, WriteFault};
use crate::upstream::Verdict;

impl Delivery {
    /// Takes a received message and says what became of it (DESIGN §3).
    pub async fn submit(self: &Arc<Self>, msg: Spooled) -> Submitted {
        let mut entry = QueueEntry::from_envelope(&msg.envelope, &self.destination, msg.size);
        // The audit trail names the Message-ID Exchange's trace will show: ours, if we add it.
        if let Some(added) = self.added_message_id(&entry, &msg.body).await {
            entry.message_id = Some(added);
        }
        audit::received(&facts(&entry), self.settings.mode.as_str());
        match self.settings.mode {
            DeliveryMode::Queue => self.submit_queue(msg, entry).await,
            DeliveryMode::Hybrid => self.submit_hybrid(msg, entry).await,
            DeliveryMode::Direct => self.submit_direct(msg, entry).await,
        }
    }

    /// Commits to the queue and hands the message to the loop (`claimed`: an attempt is
    /// already running). `Err` is the outcome for the client: nothing was kept.
    pub(super) async fn enqueue(
        &self,
        body: &Body,
        entry: QueueEntry,
        claimed: bool,
    ) -> Result<(), Submitted> {
        debug_assert!(
            entry.destination.is_some(),
            "every queued message records its destination"
        );
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
                let why = match WriteFault::of(&e) {
                    WriteFault::NoSpace => Temporary::NoSpace,
                    WriteFault::Other => Temporary::Local,
                };
                Err(Submitted::refused(
                    Outcome::Temporary(why),
                    audit::Refused::new(&facts(&entry), entry.attempts, "local"),
                ))
            }
        }
    }

    /// Drops a received body that is not kept.
    pub(super) async fn discard(&self, body: &Body) {
        if let Body::File(path) = body {
            self.spool.discard(path).await;
        }
    }

    async fn submit_queue(self: &Arc<Self>, msg: Spooled, entry: QueueEntry) -> Submitted {
        let id = entry.id.clone();
        match self.enqueue(&msg.body, entry, false).await {
            Ok(()) => Submitted::kept(Outcome::Queued {
                id,
                why: Queued::Accepted,
            }),
            Err(refused) => refused,
        }
    }

    async fn submit_direct(self: &Arc<Self>, msg: Spooled, entry: QueueEntry) -> Submitted {
        if let Some(advice) = self.held() {
            return self.refuse_held(&msg, &entry, advice).await;
        }
        let first = first_batch_len(&entry.rcpt_to, &self.governor);
        let permit = tokio::select! {
            p = self.governor.acquire(first) => p,
            _ = tokio::time::sleep(self.settings.try_now_timeout) => {
                self.discard(&msg.body).await;
                return Submitted::refused(
                    Outcome::Temporary(Temporary::Paced),
                    audit::Refused::new(&facts(&entry), 0, "paced"),
                );
            }
        };
        let report = self.attempt_body(&entry, &msg.body, Some(permit)).await;
        self.discard(&msg.body).await;
        self.note_attempt(&entry, &report);
        self.answered(&entry, &report)
    }

    async fn submit_hybrid(self: &Arc<Self>, msg: Spooled, mut entry: QueueEntry) -> Submitted {
        if let Some(advice) = self.held() {
            return self.refuse_held(&msg, &entry, advice).await;
        }
        let id = entry.id.clone();
        let first = first_batch_len(&entry.rcpt_to, &self.governor);
        let deadline = tokio::time::Instant::now() + self.settings.try_now_timeout;
        // A permit now, or after a short wait for a busy session slot (one frees within
        // moments); out of rate or daily budget, it gives up at once: the message is queued
        // and the client does not wait for the pacer.
        let permit = tokio::time::timeout_at(deadline, self.governor.acquire_slot(first))
            .await
            .ok()
            .flatten();
        let Some(permit) = permit else {
            if let Err(refused) = self.enqueue(&msg.body, entry.clone(), false).await {
                return refused;
            }
            let why = "the mailbox is at its sending pace";
            audit::deferred_paced(&facts(&entry), why, entry.next_attempt);
            self.paced.fetch_add(1, Ordering::Relaxed);
            return Submitted::kept(Outcome::Queued {
                id,
                why: Queued::Paced,
            });
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
                if let Err(refused) = self.enqueue(&msg.body, entry.clone(), true).await {
                    // Not kept: the attempt must not deliver what the client is told failed.
                    drop(attempt);
                    return refused;
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
                return Submitted::kept(Outcome::Queued {
                    id,
                    why: Queued::Slow,
                });
            }
        };
        self.note_attempt(&entry, &report);
        let (verdict, reason) = match report.retry_verdict() {
            // Delivered and/or refused for good, or held for configuration: nothing to keep;
            // the client (the app, and its admin) hears the truth now.
            None => {
                self.discard(&msg.body).await;
                return self.answered(&entry, &report);
            }
            Some((Verdict::Config, _)) if report.delivered.is_empty() => {
                self.discard(&msg.body).await;
                return self.answered(&entry, &report);
            }
            Some((verdict, reason)) => (verdict, reason.to_string()),
        };
        // Keep what is still to do; record what was refused for good.
        entry.rcpt_to = report.transient().map(|f| f.rcpt.clone()).collect();
        entry.refused = report.permanent().map(|f| f.refusal()).collect();
        entry.attempts = 1;
        entry.last_error = Some(reason.clone());
        match next_step(verdict, &reason, self.history(&entry)) {
            Step::RetryAt(at) => entry.next_attempt = at,
            Step::Fail(_) => entry.next_attempt = now_unix(),
        }
        if let Err(refused) = self.enqueue(&msg.body, entry.clone(), false).await {
            return refused;
        }
        audit::deferred(
            &facts(&entry),
            1,
            verdict.label(),
            &reason,
            entry.next_attempt,
        );
        Submitted::kept(Outcome::Queued {
            id,
            why: Queued::WillRetry(reason),
        })
    }

    /// A configuration hold: the client hears the advice, nothing is kept.
    async fn refuse_held(&self, msg: &Spooled, entry: &QueueEntry, advice: String) -> Submitted {
        self.discard(&msg.body).await;
        Submitted::refused(
            Outcome::Held { advice },
            audit::Refused::new(&facts(entry), 0, "config"),
        )
    }

    /// The outcome of an attempt the client waited for and of which nothing is kept; the
    /// recipients it did not reach are refused back to the client.
    fn answered(&self, entry: &QueueEntry, report: &Report) -> Submitted {
        let outcome = Outcome::of_attempt(&entry.id, report, self.upstream.mailbox());
        match report.refusal_class() {
            Some(class) => {
                let mut refused = facts(entry);
                refused.recipients = report.failed.len();
                Submitted::refused(outcome, audit::Refused::new(&refused, 1, class.label()))
            }
            None => Submitted::kept(outcome),
        }
    }
}
