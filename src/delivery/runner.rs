//! The queue loop: claims due messages, delivers them through the governor and the upstream,
//! and records each attempt in the spool (done, retry later, or failed for good with an
//! optional notice). It also picks up `queue retry|delete` requests and purges old failures;
//! that file-system work runs on the blocking pool, never on the async workers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::attempt::Report;
use super::notice;
use super::retry::{next_step, History, Step};
use super::state::{facts, first_batch_len, Delivery};
use crate::envelope::MessageId;
use crate::ops::audit;
use crate::spool::body::{Body, MEMORY_BODY_MAX};
use crate::spool::{now_unix, Area, QueueEntry, Refusal};
use crate::upstream::MessageBody;

/// How often the loop looks for a `queue retry|delete` request (`control/rescan`): together
/// with [`MAX_SLEEP`], a running relay notices one within about two seconds.
const RESCAN_EVERY: Duration = Duration::from_secs(1);
/// The longest the loop sleeps when nothing is due.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// How often the loop logs one line for the hybrid messages queued by pacing meanwhile.
const PACED_SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// How often `failed/` is purged of messages past `failed_retention`.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// Messages claimed from the queue at once (most of them wait for the governor).
fn max_in_flight(limit: u32) -> usize {
    match limit {
        0 => 256,
        n => (n as usize * 4).clamp(8, 256),
    }
}

impl Delivery {
    /// The delivery loop: claims due messages and delivers them until shutdown.
    pub async fn run(self: Arc<Self>) {
        let mut last_purge: Option<Instant> = None;
        let mut last_rescan: Option<Instant> = None;
        let mut last_summary = Instant::now();
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            if last_summary.elapsed() >= PACED_SUMMARY_EVERY {
                self.summarize_paced(last_summary.elapsed());
                last_summary = Instant::now();
            }
            if last_rescan.is_none_or(|t| t.elapsed() >= RESCAN_EVERY) {
                last_rescan = Some(Instant::now());
                let purge = last_purge.is_none_or(|t| t.elapsed() >= PURGE_EVERY);
                if purge {
                    last_purge = Some(Instant::now());
                }
                self.housekeeping(purge).await;
            }
            let limit = self.governor.limits().max_connections;
            let room = max_in_flight(limit).saturating_sub(self.queue.claimed());
            for entry in self.queue.claim_due(now_unix(), room) {
                let me = self.clone();
                self.tracker
                    .spawn(async move { me.deliver_queued(entry).await });
            }
            let wait = match self.queue.next_due() {
                Some(at) => Duration::from_secs(at.saturating_sub(now_unix()))
                    .clamp(Duration::from_millis(50), MAX_SLEEP),
                None => MAX_SLEEP,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.queue.changed() => {}
                _ = self.shutdown.cancelled() => break,
            }
        }
        self.summarize_paced(last_summary.elapsed());
        tracing::debug!("delivery loop stopped");
    }

    /// One log line for the paced deferrals of the last `interval`, if there were any.
    fn summarize_paced(&self, interval: Duration) {
        let n = self.paced.swap(0, Ordering::Relaxed);
        if n > 0 {
            audit::paced_summary(n, interval);
        }
    }

    /// Re-reads `queue/` after a queue command asked for it, and purges old failures when
    /// `purge`: on the blocking pool.
    async fn housekeeping(&self, purge: bool) {
        let spool = self.spool.clone();
        let retention = self.settings.failed_retention;
        let seen = self.rescans_seen.load(std::sync::atomic::Ordering::SeqCst);
        let work = tokio::task::spawn_blocking(move || {
            let generation = spool.rescan_generation();
            let rescan = (generation != seen).then(|| (generation, spool.list(Area::Queue)));
            let purged = purge.then(|| spool.purge_failed(retention));
            (rescan, purged)
        });
        let (rescan, purged) = match work.await {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(error = %e, "spool housekeeping failed");
                return;
            }
        };
        let rescan = rescan.map(|(generation, listed)| {
            self.rescans_seen
                .store(generation, std::sync::atomic::Ordering::SeqCst);
            listed
        });
        match rescan {
            Some(Ok(entries)) => {
                tracing::info!(
                    queued = entries.len(),
                    "re-read the queue after a queue command"
                );
                self.resync(entries);
            }
            Some(Err(e)) => tracing::warn!(error = %e, "cannot re-read the queue"),
            None => {}
        }
        match purged {
            Some(Ok(0)) | None => {}
            Some(Ok(n)) => tracing::info!(purged = n, "removed expired failed messages"),
            Some(Err(e)) => tracing::warn!(error = %e, "cannot purge failed messages"),
        }
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
        // A message in the spool's log: its body is read whole, in one trip (it is small).
        if let Some(read) = self.spool.read_logged(&entry.id).await {
            let report = match read {
                Ok(bytes) => {
                    self.attempt(&entry, &mut MessageBody::Bytes(&bytes), Some(permit))
                        .await
                }
                Err(e) => {
                    permit.refund();
                    Report::from_spool_error(&entry.rcpt_to, e)
                }
            };
            self.apply(entry, report).await;
            return;
        }
        let path = self.spool.body_path(&entry.id);
        // A small body is read whole in one trip to the blocking pool, under the spool's
        // memory budget: streaming it costs a trip per seek and read, for the header block
        // (Date, Message-ID, From) and again for the upstream.
        if entry.size <= MEMORY_BODY_MAX as u64 {
            if let Some(lease) = self.spool.memory_lease() {
                match tokio::fs::read(&path).await {
                    Ok(bytes) => {
                        let report = self
                            .attempt(&entry, &mut MessageBody::Bytes(&bytes), Some(permit))
                            .await;
                        drop(lease);
                        self.apply(entry, report).await;
                        return;
                    }
                    // Not there, or unreadable: the file path below says which, as before.
                    Err(_) => drop(lease),
                }
            }
        }
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                permit.refund();
                tracing::info!(id = %entry.id, "message was deleted from the queue");
                self.queue.remove(&entry.id);
                return;
            }
            Err(e) => {
                // Nothing was sent: the mailbox's budget stays whole.
                permit.refund();
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

    /// Records an attempt on a queued message: done, retry later, or failed for good.
    pub(super) async fn apply(self: &Arc<Self>, mut entry: QueueEntry, report: Report) {
        self.note_attempt(&entry, &report);
        entry.attempts += 1;
        entry
            .refused
            .extend(report.permanent().map(|f| f.refusal()));
        let Some((verdict, reason)) = report.retry_verdict() else {
            // Nothing left to try: delivered, or refused for good.
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
        };
        let reason = reason.to_string();
        entry.rcpt_to = report.transient().map(|f| f.rcpt.clone()).collect();
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

    /// What `retry` needs to know about a message's history now.
    pub(super) fn history(&self, entry: &QueueEntry) -> History {
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

    /// Moves a message to `failed/`, logs one line, and notifies the sender (see `notice.rs`).
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
            // It stays in queue/ as it was: the next start tries it again and fails it then,
            // with its one notice (a notice now would say it was kept in failed/).
            tracing::error!(id = %entry.id, error = %e, "cannot move the message to failed/; it stays queued until the next start");
            self.queue.remove(&entry.id);
            return;
        }
        self.queue.remove(&entry.id);
        let to = notice::notice_to(
            &entry,
            self.settings.failure_notice,
            self.settings.notice_to.as_deref(),
            self.upstream.mailbox(),
        );
        if let Some(to) = to {
            self.send_notice(&entry, to).await;
        }
    }

    /// Queues a failure notice about `failed`, through the same mailbox: durable like any
    /// queued message, and marked as a notice so it never gets one of its own.
    async fn send_notice(&self, failed: &QueueEntry, to: notice::NoticeTo) {
        let id = MessageId::generate();
        let mailbox = self.upstream.mailbox();
        let now = SystemTime::now();
        let body = match &to {
            notice::NoticeTo::Sender(addr) => {
                notice::failure_notice(failed, mailbox, addr, &self.hostname, id.as_str(), now)
            }
            notice::NoticeTo::Mailbox(_) => {
                // The notice that failed is in failed/ now; quote what it said.
                let first = tokio::fs::read(self.spool.body_in(Area::Failed, &failed.id))
                    .await
                    .unwrap_or_default();
                notice::fallback_notice(failed, &first, mailbox, &self.hostname, id.as_str(), now)
            }
        };
        let len = body.len();
        // Through the spool, so the notice's file is private (0600) like any queued body.
        let path = match self.spool.write_incoming(&id, body).await {
            Ok(path) => path,
            Err(e) => {
                tracing::error!(error = %e, "cannot write the failure notice");
                return;
            }
        };
        let mut entry = QueueEntry::new(
            id.to_string(),
            String::new(),
            vec![to.address().to_string()],
            mailbox.to_string(),
            len as u64,
        );
        entry.destination = Some(self.destination.clone());
        entry.client = "relay".into();
        entry.helo = self.hostname.clone();
        entry.body_8bit = true;
        entry.notice = true;
        match self.enqueue(&Body::File(path), entry, false).await {
            Ok(()) => match &to {
                notice::NoticeTo::Sender(addr) => {
                    tracing::info!(notice = %id, about = %failed.id, to = %addr, "failure notice queued")
                }
                notice::NoticeTo::Mailbox(addr) => {
                    tracing::warn!(notice = %id, about = %failed.id, to = %addr, "the failure notice could not be delivered; a copy goes to the relay's own mailbox")
                }
            },
            // No client to answer: the event says what happened in delivery's words.
            Err(s) => {
                if let Some(refused) = s.refused {
                    refused.record(&s.outcome.to_string());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_scale_with_the_session_limit() {
        assert_eq!(max_in_flight(0), 256, "no limit: a generous bound");
        assert_eq!(max_in_flight(1), 8);
        assert_eq!(max_in_flight(3), 12);
        assert_eq!(max_in_flight(1000), 256);
    }
}
