//! One delivery attempt: every remaining recipient of a message, in batches the governor
//! allows (Exchange takes at most 500 recipients a message), each batch paced by it, and the
//! result recipient by recipient ([`Report`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::rewrite::{header_plan, HeaderPlan, HeaderPolicy};
use super::settings::{upstream_sender, DeliveryMode};
use super::state::{facts, Delivery};
use crate::governor::{split_batches, Permit};
use crate::ops::audit;
use crate::spool::body::Body;
use crate::spool::{QueueEntry, Refusal};
use crate::upstream::error::{classify_reply, recipient_reason};
use crate::upstream::{MessageBody, OutboundMessage, UpstreamError, Verdict};
use crate::wire::Reply;

/// One recipient that was not delivered in an attempt.
#[derive(Debug, Clone)]
pub struct RcptFailure {
    pub rcpt: String,
    pub verdict: Verdict,
    pub reason: String,
    pub reply: Option<Reply>,
}

impl RcptFailure {
    /// The record kept for a recipient refused for good.
    pub fn refusal(&self) -> Refusal {
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
    /// Recipients refused for good.
    pub fn permanent(&self) -> impl Iterator<Item = &RcptFailure> {
        self.failed
            .iter()
            .filter(|f| f.verdict == Verdict::Permanent)
    }

    /// Recipients worth another try.
    pub fn transient(&self) -> impl Iterator<Item = &RcptFailure> {
        self.failed
            .iter()
            .filter(|f| f.verdict != Verdict::Permanent)
    }

    /// The verdict that decides the retry timing when several recipients failed transiently:
    /// configuration first (hold), then quota, throttling, plain transient.
    pub fn retry_verdict(&self) -> Option<(Verdict, &str)> {
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

    /// The verdict that classes a refusal back to the client: permanent if any recipient
    /// was refused for good, else the first failure's.
    pub fn refusal_class(&self) -> Option<Verdict> {
        let first = self.failed.first()?;
        Some(if self.permanent().next().is_some() {
            Verdict::Permanent
        } else {
            first.verdict
        })
    }

    /// Every recipient failed because the body could not be read.
    pub fn from_spool_error(rcpts: &[String], e: std::io::Error) -> Report {
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

    fn fail_all(
        &mut self,
        batch: &[String],
        verdict: Verdict,
        reason: &str,
        reply: Option<&Reply>,
    ) {
        self.failed.extend(batch.iter().map(|r| RcptFailure {
            rcpt: r.clone(),
            verdict,
            reason: reason.to_string(),
            reply: reply.cloned(),
        }));
    }
}

impl Delivery {
    /// Opens a received body and runs one attempt.
    pub(super) async fn attempt_body(
        &self,
        entry: &QueueEntry,
        body: &Body,
        first: Option<Permit>,
    ) -> Report {
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
            Err(e) => {
                // Exchange never saw this attempt: its permit spends nothing.
                if let Some(permit) = first {
                    permit.refund();
                }
                Report::from_spool_error(&entry.rcpt_to, e)
            }
        }
    }

    /// One delivery attempt: every remaining recipient, in batches the governor allows, each
    /// batch paced by it. `first` is a permit already held for the first batch.
    pub(super) async fn attempt(
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
        let additions = self.additions(entry);
        let policy = HeaderPolicy {
            from_rewrite: self.settings.from_rewrite,
            mailbox: self.upstream.mailbox(),
            send_as: &self.settings.send_as,
            additions: additions.as_ref(),
        };
        let HeaderPlan {
            swap,
            from_rewritten,
        } = match header_plan(&policy, &entry.mail_from, body).await {
            Ok(plan) => plan,
            Err(e) => {
                if let Some(permit) = first {
                    permit.refund();
                }
                return Report::from_spool_error(&entry.rcpt_to, e);
            }
        };
        let size = match &swap {
            Some(h) => entry.size - h.replaces.min(entry.size) + h.block.len() as u64,
            None => entry.size,
        };
        let batch_size = self.governor.limits().max_recipients_per_message;
        let mut stop: Option<(Verdict, String)> = None;
        for batch in split_batches(&entry.rcpt_to, batch_size) {
            if let Some((verdict, reason)) = &stop {
                report.fail_all(batch, *verdict, reason, None);
                continue;
            }
            let permit = match first.take() {
                Some(p) => p,
                None => tokio::select! {
                    p = self.governor.acquire(batch.len() as u32) => p,
                    _ = self.shutdown.cancelled() => {
                        let reason = "relay shutting down".to_string();
                        report.fail_all(batch, Verdict::Transient, &reason, None);
                        stop = Some((Verdict::Transient, reason));
                        continue;
                    }
                },
            };
            let msg = OutboundMessage {
                // A rewritten From: goes with the mailbox as the envelope sender too.
                mail_from: if from_rewritten {
                    self.upstream.mailbox().to_string()
                } else {
                    upstream_sender(
                        self.settings.envelope_sender,
                        &entry.mail_from,
                        self.upstream.mailbox(),
                    )
                },
                rcpt_to: batch.to_vec(),
                size,
                body_8bit: entry.body_8bit,
                smtputf8: entry.smtputf8,
                all_or_nothing: direct,
                headers: swap.clone(),
                start_by,
            };
            let result = self.upstream.send(&msg, body).await;
            match &result {
                // Exchange never saw it: no budget spent (a dead token endpoint or network
                // must not leave the mailbox "at its sending pace").
                Err(e) if !e.reached_mail_from() => permit.refund(),
                _ => drop(permit),
            }
            match result {
                Ok(d) => {
                    report.delivered.extend(d.accepted);
                    for (rcpt, reply) in d.rejected {
                        let verdict = classify_reply(&reply);
                        self.governor_feedback(verdict).await;
                        report.failed.push(RcptFailure {
                            rcpt,
                            verdict,
                            reason: recipient_reason(&reply),
                            reply: Some(reply),
                        });
                    }
                    report.last_reply = Some(d.reply);
                }
                Err(e) => {
                    let verdict = e.verdict();
                    self.governor_feedback(verdict).await;
                    let reason = e.reason();
                    report.fail_all(batch, verdict, &reason, e.reply());
                    if verdict == Verdict::Config {
                        self.hold(&e);
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

    /// Logs an attempt's outcome, audits a delivery and lifts a hold after a success.
    pub(super) fn note_attempt(&self, entry: &QueueEntry, report: &Report) {
        if !report.delivered.is_empty() {
            if self.holds.lift() {
                tracing::info!("upstream delivery works again");
            }
            self.governor.lift_shared_hold(false);
            let received = if entry.received_at_ms > 0 {
                Duration::from_millis(entry.received_at_ms)
            } else {
                Duration::from_secs(entry.received_at)
            };
            let latency = SystemTime::now()
                .duration_since(UNIX_EPOCH + received)
                .unwrap_or_default();
            let reply = report
                .last_reply
                .as_ref()
                .map(|r| r.to_string())
                .unwrap_or_default();
            audit::delivered(
                &facts(entry),
                entry.attempts + 1,
                report.delivered.len(),
                &reply,
                latency,
            );
        }
        for f in &report.failed {
            if f.verdict == Verdict::Config {
                continue; // logged once by hold()
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

    /// Tells the governor what Exchange said about its limits.
    async fn governor_feedback(&self, verdict: Verdict) {
        match verdict {
            Verdict::Throttled => self.governor.on_concurrency_throttle(),
            Verdict::Quota => self.governor.on_quota_exceeded().await,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: Verdict) -> RcptFailure {
        RcptFailure {
            rcpt: "r".into(),
            verdict: v,
            reason: format!("{v:?}"),
            reply: None,
        }
    }

    #[test]
    fn retry_verdict_prefers_config_then_quota() {
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
        assert_eq!(report.refusal_class(), Some(Verdict::Permanent));
        let only_transient = Report {
            failed: vec![f(Verdict::Throttled), f(Verdict::Transient)],
            ..Default::default()
        };
        assert_eq!(only_transient.refusal_class(), Some(Verdict::Throttled));
        assert_eq!(Report::default().refusal_class(), None);
    }
}
