//! The face speaks: what delivery did with a message ([`Outcome`]) becomes the client's reply
//! to DATA. Pure; the wording of every case is here and tested below.
//!
//! | outcome | reply |
//! |---|---|
//! | delivered | `250 2.0.0 <id> delivered: <Exchange's reply text>` (and who was not) |
//! | queued | `250 2.0.0 <id> queued…` with the reason |
//! | refused for good | Exchange's own 5xx (`554` and `5.0.0` when it gave none) |
//! | held | `451 4.7.0 relay configuration problem, see the relay log: <advice>` |
//! | temporary | `451 4.4.1` unreachable, `4.4.2` timed out, `4.4.0` otherwise (quoting Exchange); `4.3.2` paced, `4.3.0` local; `452 4.3.1` when the spool is full |
//!
//! Exchange's reply is quoted as text, never passed through as our own enhanced code unless
//! it is a 5xx one (so an `x.y.255` artefact can never reach a client).

use crate::delivery::{Outcome, Queued, Temporary};
use crate::wire::Reply;

/// The client's reply to DATA for `outcome`.
pub fn reply(outcome: &Outcome) -> Reply {
    match outcome {
        Outcome::Delivered {
            id,
            reply,
            delivered,
            not_delivered,
        } => {
            let upstream = reply.as_ref().map(|r| r.text()).unwrap_or_default();
            let mut text = format!("{id} delivered: {upstream}");
            if let Some(first) = not_delivered.first() {
                let total = not_delivered.len() + delivered;
                text.push_str(&format!(
                    " ({} of {total} recipients not delivered: {})",
                    not_delivered.len(),
                    first.reason
                ));
            }
            Reply::new(250, "2.0.0", text)
        }
        Outcome::Queued { id, why } => {
            let why = match why {
                Queued::Accepted => "queued for delivery".to_string(),
                Queued::Paced => "queued: the mailbox is at its sending pace".to_string(),
                Queued::Slow => {
                    "queued: Exchange is slow to answer, delivery continues".to_string()
                }
                Queued::WillRetry(reason) => format!("queued, will retry: {reason}"),
            };
            Reply::new(250, "2.0.0", format!("{id} {why}"))
        }
        Outcome::Refused { reply: Some(r), .. } => Reply::new(
            if r.code >= 500 { r.code } else { 554 },
            r.status().filter(|s| s.starts_with('5')).unwrap_or("5.0.0"),
            format!("upstream: {}", r.text()),
        ),
        Outcome::Refused {
            reply: None,
            reason,
        } => Reply::new(
            554,
            "5.0.0",
            format!("upstream refused the message: {reason}"),
        ),
        Outcome::Held { advice } => Reply::new(
            451,
            "4.7.0",
            format!("relay configuration problem, see the relay log: {advice}"),
        ),
        Outcome::Temporary(t) => match t {
            Temporary::Unreachable => {
                Reply::new(451, "4.4.1", "upstream unreachable, try again later")
            }
            Temporary::TimedOut => Reply::new(451, "4.4.2", "upstream timed out, try again later"),
            Temporary::Refused(r) => {
                Reply::new(451, "4.4.0", format!("upstream temporarily refused: {r}"))
            }
            Temporary::Failed(reason) => Reply::new(
                451,
                "4.4.0",
                format!("upstream failed, try again later: {reason}"),
            ),
            Temporary::Paced => Reply::new(
                451,
                "4.3.2",
                "the mailbox is at its sending limit, try again later",
            ),
            Temporary::Local => super::reply::local_error(),
            Temporary::NoSpace => super::reply::insufficient_storage(),
            Temporary::NothingDelivered => {
                Reply::new(451, "4.3.0", "nothing was delivered, try again later")
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Refusal;

    fn wire(outcome: &Outcome) -> String {
        String::from_utf8(reply(outcome).to_bytes()).unwrap()
    }

    #[test]
    fn delivered_carries_exchanges_id_and_who_was_not_reached() {
        let outcome = Outcome::Delivered {
            id: "ID1".into(),
            reply: Some(Reply::line(
                "250 2.0.0 OK <abc@prod.outlook.com> [Hostname=X]",
            )),
            delivered: 1,
            not_delivered: vec![],
        };
        assert_eq!(
            wire(&outcome),
            "250 2.0.0 ID1 delivered: OK <abc@prod.outlook.com> [Hostname=X]\r\n"
        );
        let partial = Outcome::Delivered {
            id: "ID".into(),
            reply: Some(Reply::line("250 2.0.0 OK <id@x>")),
            delivered: 1,
            not_delivered: vec![Refusal {
                rcpt: "bad@x".into(),
                reason: "550 5.1.10 not found".into(),
            }],
        };
        assert_eq!(
            wire(&partial),
            "250 2.0.0 ID delivered: OK <id@x> (1 of 2 recipients not delivered: 550 5.1.10 not found)\r\n"
        );
    }

    #[test]
    fn queued_says_why() {
        let q = |why| Outcome::Queued {
            id: "ID".into(),
            why,
        };
        assert_eq!(
            wire(&q(Queued::Accepted)),
            "250 2.0.0 ID queued for delivery\r\n"
        );
        assert_eq!(
            wire(&q(Queued::Paced)),
            "250 2.0.0 ID queued: the mailbox is at its sending pace\r\n"
        );
        assert_eq!(
            wire(&q(Queued::Slow)),
            "250 2.0.0 ID queued: Exchange is slow to answer, delivery continues\r\n"
        );
        assert_eq!(
            wire(&q(Queued::WillRetry("451 4.7.500 later".into()))),
            "250 2.0.0 ID queued, will retry: 451 4.7.500 later\r\n"
        );
    }

    #[test]
    fn a_permanent_refusal_passes_exchanges_5xx() {
        let r = reply(&Outcome::Refused {
            reply: Some(Reply::line("554 5.2.252 SendAsDenied; x not allowed")),
            reason: String::new(),
        });
        assert_eq!((r.code, r.status()), (554, Some("5.2.252")));
        assert_eq!(r.text(), "upstream: SendAsDenied; x not allowed");
        // A 4xx-classed reply that is still final gets a 5xx of ours, never its 4.x.x.
        let r = reply(&Outcome::Refused {
            reply: Some(Reply::line("452 4.5.3 odd")),
            reason: String::new(),
        });
        assert_eq!((r.code, r.status()), (554, Some("5.0.0")));
        let r = reply(&Outcome::Refused {
            reply: None,
            reason: "message too large".into(),
        });
        assert_eq!(
            r.to_bytes(),
            b"554 5.0.0 upstream refused the message: message too large\r\n"
        );
    }

    #[test]
    fn temporary_is_451_and_never_leaks_an_upstream_status() {
        let r = reply(&Outcome::Temporary(Temporary::Refused(Reply::line(
            "451 4.7.500 Access denied, please try again later",
        ))));
        assert_eq!((r.code, r.status()), (451, Some("4.4.0")));
        assert!(r.text().contains("4.7.500"), "{r}");
        for (t, status) in [
            (Temporary::Unreachable, "4.4.1"),
            (Temporary::TimedOut, "4.4.2"),
            (Temporary::Failed("x".into()), "4.4.0"),
            (Temporary::Paced, "4.3.2"),
            (Temporary::Local, "4.3.0"),
            (Temporary::NothingDelivered, "4.3.0"),
        ] {
            let r = reply(&Outcome::Temporary(t));
            assert_eq!((r.code, r.status()), (451, Some(status)), "{r}");
        } // A full spool has its own code: insufficient system storage.
        let r = reply(&Outcome::Temporary(Temporary::NoSpace));
        assert_eq!((r.code, r.status()), (452, Some("4.3.1")), "{r}");
        assert!(r.text().starts_with("Insufficient system storage"), "{r}");
    }

    #[test]
    fn held_is_451_4_7_0_with_the_advice() {
        let r = reply(&Outcome::Held {
            advice: "Grant SMTP.SendAsApp.".into(),
        });
        assert_eq!(
            r.to_bytes(),
            b"451 4.7.0 relay configuration problem, see the relay log: Grant SMTP.SendAsApp.\r\n"
        );
    }

    /// From an upstream failure to the client's words, across both rooms.
    #[test]
    fn upstream_failures_reach_the_client_as_before() {
        use crate::delivery::{RcptFailure, Report};
        use crate::upstream::{Stage, UpstreamError};
        let failed = |e: UpstreamError| {
            let verdict = e.verdict();
            Report {
                failed: vec![RcptFailure {
                    rcpt: "a@b".into(),
                    verdict,
                    reason: e.to_string(),
                    reply: e.reply().cloned(),
                }],
                first_error: Some(e),
                ..Default::default()
            }
        };
        let speak = |report: &Report| reply(&Outcome::of_attempt("ID", report, "relay@x"));
        let r = speak(&failed(UpstreamError::Rejected {
            stage: Stage::EndOfData,
            reply: Reply::line(
                "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
            ),
        }));
        assert_eq!(r.code, 451, "quota is deferred, not bounced: {r}");
        let r = speak(&failed(UpstreamError::Auth {
            reply: Reply::line("535 5.7.3 Authentication unsuccessful"),
            after_refresh: true,
        }));
        assert_eq!((r.code, r.status()), (451, Some("4.7.0")));
        assert!(r.text().contains("SMTP.SendAsApp"), "{r}");
        let r = speak(&failed(UpstreamError::Rejected {
            stage: Stage::RcptTo,
            reply: Reply::line("550 5.1.10 RESOLVER.ADR.RecipientNotFound"),
        }));
        assert_eq!((r.code, r.status()), (550, Some("5.1.10")));
    }
}
