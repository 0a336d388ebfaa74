//! What became of a message the client handed over, as delivery sees it. Delivery returns
//! an [`Outcome`]; the face (`smtp`) words the client's reply from it. Pure, tested below.

use std::fmt;

use super::attempt::Report;
use crate::ops::audit;
use crate::spool::Refusal;
use crate::upstream::{UpstreamError, Verdict};
use crate::wire::Reply;

/// What [`Delivery::submit`](super::Delivery::submit) hands back: the outcome, and, when the
/// client is refused with nothing kept, the audit event for the face to record with the
/// words it answers.
#[derive(Debug)]
pub struct Submitted {
    pub outcome: Outcome,
    pub refused: Option<audit::Refused>,
}

impl Submitted {
    /// An outcome that refuses nobody (delivered to all, or queued).
    pub fn kept(outcome: Outcome) -> Self {
        Submitted {
            outcome,
            refused: None,
        }
    }

    /// An outcome that refuses the client (or some of its recipients), nothing kept for them.
    pub fn refused(outcome: Outcome, refused: audit::Refused) -> Self {
        Submitted {
            outcome,
            refused: Some(refused),
        }
    }
}

/// The fate of one submitted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exchange took it for at least one recipient.
    Delivered {
        id: String,
        /// Exchange's reply to the end of data (it carries Exchange's message id).
        reply: Option<Reply>,
        /// How many recipients it took.
        delivered: usize,
        /// The recipients it did not take, with why (refused for good, in the modes that
        /// keep nothing for them).
        not_delivered: Vec<Refusal>,
    },
    /// On disk (fsync'd) and owned by the queue: it goes out later.
    Queued { id: String, why: Queued },
    /// Refused for good; nothing is kept. `reply` is Exchange's, when it gave one.
    Refused {
        reply: Option<Reply>,
        reason: String,
    },
    /// The account is held for a configuration problem; nothing is kept.
    Held { advice: String },
    /// Not delivered now and nothing is kept: the client should try again.
    Temporary(Temporary),
}

/// Why a message was queued rather than delivered while the client waited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Queued {
    /// Queue mode: every message is queued first.
    Accepted,
    /// Hybrid: the mailbox had no sending budget right now.
    Paced,
    /// Hybrid: the attempt outlasted the client's wait; it goes on in the background.
    Slow,
    /// Hybrid: the attempt failed for a while; it is retried, after this reason.
    WillRetry(String),
}

/// Why nothing could be done now (and nothing was kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Temporary {
    Unreachable,
    TimedOut,
    /// Exchange refused for now, with this reply.
    Refused(Reply),
    /// Another temporary failure, in our words.
    Failed(String),
    /// Direct mode: the mailbox stayed at its sending limit for the whole wait.
    Paced,
    /// The spool could not keep the message.
    Local,
    /// The spool could not keep the message: its file system (or quota) is full.
    NoSpace,
    /// The attempt ended without any recipient's result.
    NothingDelivered,
}

impl Outcome {
    /// What an attempt the client waited for comes to, when nothing of it is kept: delivered
    /// (perhaps not to everyone), refused for good, held, or temporary. `mailbox` names the
    /// account in configuration advice.
    pub fn of_attempt(id: &str, report: &Report, mailbox: &str) -> Outcome {
        if !report.delivered.is_empty() {
            return Outcome::Delivered {
                id: id.to_string(),
                reply: report.last_reply.clone(),
                delivered: report.delivered.len(),
                not_delivered: report.failed.iter().map(|f| f.refusal()).collect(),
            };
        }
        // A temporary failure decides, if there is one: the client should retry rather than
        // give up.
        let Some(first) = report
            .failed
            .iter()
            .find(|f| f.verdict != Verdict::Permanent)
            .or(report.failed.first())
        else {
            return Outcome::Temporary(Temporary::NothingDelivered);
        };
        if let Some(e) = &report.first_error {
            if first.verdict == e.verdict() {
                return Outcome::of_error(e, mailbox);
            }
        }
        match (first.verdict, &first.reply) {
            (Verdict::Permanent, reply) => Outcome::Refused {
                reply: reply.clone(),
                reason: first.reason.clone(),
            },
            (_, Some(r)) => Outcome::Temporary(Temporary::Refused(r.clone())),
            (_, None) => Outcome::Temporary(Temporary::Failed(first.reason.clone())),
        }
    }

    /// What an attempt that failed as a whole with `e` comes to.
    pub fn of_error(e: &UpstreamError, mailbox: &str) -> Outcome {
        match e.verdict() {
            Verdict::Permanent => Outcome::Refused {
                reply: e.reply().cloned(),
                reason: e.to_string(),
            },
            Verdict::Transient | Verdict::Throttled | Verdict::Quota => {
                Outcome::Temporary(match e {
                    UpstreamError::Connect { .. } => Temporary::Unreachable,
                    UpstreamError::Timeout { .. } => Temporary::TimedOut,
                    _ => match e.reply() {
                        Some(r) => Temporary::Refused(r.clone()),
                        None => Temporary::Failed(e.to_string()),
                    },
                })
            }
            Verdict::Config => Outcome::Held {
                advice: e.hold_advice(mailbox),
            },
        }
    }
}

/// One line for the audit trail and logs: what happened, in delivery's words (Exchange's
/// reply where there is one).
impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Delivered { reply, .. } => match reply {
                Some(r) => write!(f, "delivered: {r}"),
                None => f.write_str("delivered"),
            },
            Outcome::Queued { why, .. } => match why {
                Queued::Accepted => f.write_str("queued"),
                Queued::Paced => f.write_str("queued: the mailbox is at its sending pace"),
                Queued::Slow => f.write_str("queued: Exchange is slow to answer"),
                Queued::WillRetry(reason) => write!(f, "queued, will retry: {reason}"),
            },
            Outcome::Refused { reply, reason } => match reply {
                Some(r) => write!(f, "{r}"),
                None => f.write_str(reason),
            },
            Outcome::Held { advice } => write!(f, "relay configuration problem: {advice}"),
            Outcome::Temporary(t) => match t {
                Temporary::Unreachable => f.write_str("upstream unreachable"),
                Temporary::TimedOut => f.write_str("upstream timed out"),
                Temporary::Refused(r) => write!(f, "{r}"),
                Temporary::Failed(reason) => f.write_str(reason),
                Temporary::Paced => f.write_str("the mailbox is at its sending limit"),
                Temporary::Local => f.write_str("the spool could not keep the message"),
                Temporary::NoSpace => {
                    f.write_str("the spool could not keep the message: no space left")
                }
                Temporary::NothingDelivered => f.write_str("nothing was delivered"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::attempt::RcptFailure;
    use super::*;
    use crate::upstream::Stage;

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

    fn of(report: &Report) -> Outcome {
        Outcome::of_attempt("ID", report, "relay@contoso.com")
    }

    #[test]
    fn delivered_keeps_exchanges_reply_and_names_who_was_not() {
        let report = Report {
            delivered: vec!["ok@x".into()],
            last_reply: Some(Reply::line(
                "250 2.0.0 OK <abc@prod.outlook.com> [Hostname=X]",
            )),
            failed: vec![RcptFailure {
                rcpt: "bad@x".into(),
                verdict: Verdict::Permanent,
                reason: "550 5.1.10 not found".into(),
                reply: Some(Reply::line("550 5.1.10 not found")),
            }],
            first_error: None,
        };
        assert_eq!(
            of(&report),
            Outcome::Delivered {
                id: "ID".into(),
                reply: Some(Reply::line(
                    "250 2.0.0 OK <abc@prod.outlook.com> [Hostname=X]"
                )),
                delivered: 1,
                not_delivered: vec![Refusal {
                    rcpt: "bad@x".into(),
                    reason: "550 5.1.10 not found".into()
                }],
            }
        );
    }

    #[test]
    fn a_permanent_refusal_carries_exchanges_reply() {
        let e = UpstreamError::Rejected {
            stage: Stage::EndOfData,
            reply: Reply::line("554 5.2.252 SendAsDenied; x not allowed"),
        };
        let o = of(&failed_with(e, &["a@b"]));
        assert!(
            matches!(&o, Outcome::Refused { reply: Some(r), .. } if r.has_status("5.2.252")),
            "{o:?}"
        );
    }

    #[test]
    fn temporary_failures_say_which() {
        let e = UpstreamError::Rejected {
            stage: Stage::EndOfData,
            reply: Reply::line("451 4.7.500 Access denied, please try again later"),
        };
        assert_eq!(
            of(&failed_with(e, &["a@b"])),
            Outcome::Temporary(Temporary::Refused(Reply::line(
                "451 4.7.500 Access denied, please try again later"
            )))
        );
        let e = UpstreamError::Connect {
            addr: "x:1".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert_eq!(
            of(&failed_with(e, &["a"])),
            Outcome::Temporary(Temporary::Unreachable)
        );
        let e = UpstreamError::Timeout {
            stage: Stage::EndOfData,
        };
        assert_eq!(
            of(&failed_with(e, &["a"])),
            Outcome::Temporary(Temporary::TimedOut)
        );
        assert_eq!(
            of(&Report::default()),
            Outcome::Temporary(Temporary::NothingDelivered)
        );
    }

    #[test]
    fn quota_is_temporary_not_a_bounce() {
        let e = UpstreamError::Rejected {
            stage: Stage::EndOfData,
            reply: Reply::line(
                "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
            ),
        };
        assert!(matches!(
            of(&failed_with(e, &["a"])),
            Outcome::Temporary(Temporary::Refused(_))
        ));
    }

    #[test]
    fn configuration_holds_with_advice_naming_the_mailbox() {
        let e = UpstreamError::Auth {
            reply: Reply::line("535 5.7.3 Authentication unsuccessful"),
            after_refresh: true,
        };
        match of(&failed_with(e, &["a"])) {
            Outcome::Held { advice } => {
                assert!(advice.contains("SMTP.SendAsApp"), "{advice}");
                assert!(advice.contains("relay@contoso.com"), "{advice}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_temporary_recipient_decides_over_a_permanent_one() {
        let report = Report {
            failed: vec![
                RcptFailure {
                    rcpt: "gone@x".into(),
                    verdict: Verdict::Permanent,
                    reason: "550 5.1.10 not found".into(),
                    reply: Some(Reply::line("550 5.1.10 not found")),
                },
                RcptFailure {
                    rcpt: "later@x".into(),
                    verdict: Verdict::Transient,
                    reason: "451 4.7.500 later".into(),
                    reply: Some(Reply::line("451 4.7.500 later")),
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            of(&report),
            Outcome::Temporary(Temporary::Refused(Reply::line("451 4.7.500 later")))
        );
    }
}
