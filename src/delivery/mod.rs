//! Delivery: what happens to a message once its body is in the spool.
//!
//! This version has the `direct` mode of DESIGN §3: the client waits while the relay tries
//! Exchange once, and its DATA reply is Exchange's verdict. Nothing is kept after the answer:
//! a transient failure becomes `451` so the client retries. The durable queue (`queue`,
//! `hybrid`) plugs in here: [`Dispatcher::submit`] is the seam the listener calls.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::config::{DeliveryMode, EnvelopeSender};
use crate::envelope::Envelope;
use crate::smtp::reply::Reply;
use crate::spool::Spool;
use crate::upstream::{Delivered, OutboundMessage, Upstream, UpstreamError, Verdict};

/// A message whose body is complete on disk.
#[derive(Debug, Clone)]
pub struct Spooled {
    pub envelope: Envelope,
    pub path: PathBuf,
    pub size: u64,
}

/// Hands spooled messages to the upstream according to the delivery mode.
pub struct Dispatcher {
    mode: DeliveryMode,
    envelope_sender: EnvelopeSender,
    upstream: Arc<Upstream>,
    spool: Spool,
    /// The last configuration problem logged at error level, so a storm of messages logs the
    /// advice once rather than once per message.
    last_config_problem: Mutex<Option<String>>,
}

impl Dispatcher {
    pub fn new(
        mode: DeliveryMode,
        envelope_sender: EnvelopeSender,
        upstream: Arc<Upstream>,
        spool: Spool,
    ) -> Self {
        Dispatcher {
            mode,
            envelope_sender,
            upstream,
            spool,
            last_config_problem: Mutex::new(None),
        }
    }

    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// Delivers (direct mode) and returns the client's DATA reply. Always consumes the
    /// spool file.
    pub async fn submit(&self, msg: Spooled) -> Reply {
        debug_assert_eq!(self.mode, DeliveryMode::Direct);
        let env = &msg.envelope;
        let outbound = OutboundMessage {
            mail_from: upstream_sender(
                self.envelope_sender,
                &env.mail_from,
                self.upstream.mailbox(),
            ),
            rcpt_to: env.rcpt_to.clone(),
            body: msg.path.clone(),
            size: msg.size,
            body_8bit: env.body_8bit,
            smtputf8: env.smtputf8,
        };
        let started = std::time::Instant::now();
        let result = self.upstream.send(&outbound).await;
        self.spool.discard(&msg.path).await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(d) => {
                self.clear_config_problem();
                tracing::info!(
                    id = %env.id,
                    from = %env.mail_from,
                    recipients = env.rcpt_to.len(),
                    size = msg.size,
                    client = %env.client,
                    elapsed_ms,
                    upstream = %d.reply,
                    "delivered"
                );
                for (rcpt, reply) in &d.rejected {
                    tracing::warn!(id = %env.id, recipient = %rcpt, upstream = %reply, "recipient refused by upstream; not delivered to it");
                }
            }
            Err(e) => self.log_failure(env, msg.size, elapsed_ms, e),
        }
        direct_reply(&env.id.to_string(), &result)
    }

    fn log_failure(&self, env: &Envelope, size: u64, elapsed_ms: u64, e: &UpstreamError) {
        let verdict = e.verdict();
        if verdict == Verdict::Config {
            let advice = e.advice().unwrap_or_else(|| "see the error above".into());
            let key = format!("{e}");
            let first = {
                let mut last = self.last_config_problem.lock().expect("lock");
                let first = last.as_deref() != Some(key.as_str());
                *last = Some(key);
                first
            };
            if first {
                tracing::error!(id = %env.id, error = %e, advice = %advice, "relay configuration problem; mail is refused with 451 until it is fixed");
            } else {
                tracing::warn!(id = %env.id, error = %e, "refused: same configuration problem as before");
            }
            return;
        }
        tracing::warn!(
            id = %env.id,
            from = %env.mail_from,
            recipients = env.rcpt_to.len(),
            size,
            client = %env.client,
            elapsed_ms,
            verdict = ?verdict,
            error = %e,
            "not delivered"
        );
    }

    fn clear_config_problem(&self) {
        let mut last = self.last_config_problem.lock().expect("lock");
        if last.take().is_some() {
            tracing::info!("upstream delivery works again");
        }
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

/// The client's DATA reply in direct mode (DESIGN §3): delivered → `250` with the
/// upstream's id; permanent → the upstream's own 5xx; transient or unreachable → `451 4.4.x`;
/// configuration → `451 4.7.0` with the advice.
pub fn direct_reply(id: &str, result: &Result<Delivered, UpstreamError>) -> Reply {
    match result {
        Ok(d) => {
            let mut text = format!("{id} delivered: {}", d.reply.text());
            if !d.rejected.is_empty() {
                text.push_str(&format!(
                    " ({} of {} recipients refused upstream: {})",
                    d.rejected.len(),
                    d.rejected.len() + d.accepted.len(),
                    d.rejected[0].1
                ));
            }
            Reply::new(250, "2.0.0", text)
        }
        Err(e) => match e.verdict() {
            Verdict::Permanent => match e.reply() {
                Some(r) => Reply::new(
                    if r.code >= 500 { r.code } else { 554 },
                    r.status().filter(|s| s.starts_with('5')).unwrap_or("5.0.0"),
                    format!("upstream: {}", r.text()),
                ),
                None => Reply::new(554, "5.0.0", format!("upstream refused the message: {e}")),
            },
            Verdict::Transient => match e {
                UpstreamError::Connect { .. } => {
                    Reply::new(451, "4.4.1", "upstream unreachable, try again later")
                }
                UpstreamError::Timeout { .. } => {
                    Reply::new(451, "4.4.2", "upstream timed out, try again later")
                }
                _ => match e.reply() {
                    Some(r) => {
                        Reply::new(451, "4.4.0", format!("upstream temporarily refused: {r}"))
                    }
                    None => Reply::new(
                        451,
                        "4.4.0",
                        format!("upstream failed, try again later: {e}"),
                    ),
                },
            },
            Verdict::Config => Reply::new(
                451,
                "4.7.0",
                format!(
                    "relay configuration problem, see the relay log: {}",
                    e.advice().unwrap_or_else(|| e.to_string())
                ),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::reply::UpstreamReply;
    use crate::upstream::Stage;

    fn reply(text: &str) -> UpstreamReply {
        UpstreamReply::parse(format!("{text}\r\n").as_bytes())
            .unwrap()
            .unwrap()
            .0
    }

    #[test]
    fn delivered_carries_exchange_id() {
        let d = Delivered {
            reply: reply("250 2.0.0 OK <abc@prod.outlook.com> [Hostname=X]"),
            accepted: vec!["a@b".into()],
            rejected: vec![],
        };
        let r = direct_reply("ID1", &Ok(d));
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
        let r = direct_reply("ID", &Err(e));
        assert_eq!((r.code, r.status.as_deref()), (554, Some("5.2.252")));
        assert!(r.lines[0].contains("SendAsDenied"));
    }

    #[test]
    fn transient_is_451_4_4_x_and_never_leaks_255() {
        let e = UpstreamError::Rejected {
            stage: Stage::EndOfData,
            reply: reply("451 4.7.500 Access denied, please try again later"),
        };
        let r = direct_reply("ID", &Err(e));
        assert_eq!((r.code, r.status.as_deref()), (451, Some("4.4.0")));
        assert!(r.lines[0].contains("4.7.500"));
        let e = UpstreamError::Connect {
            addr: "x:1".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert_eq!(direct_reply("ID", &Err(e)).status.as_deref(), Some("4.4.1"));
        let e = UpstreamError::Timeout {
            stage: Stage::EndOfData,
        };
        assert_eq!(direct_reply("ID", &Err(e)).status.as_deref(), Some("4.4.2"));
    }

    #[test]
    fn quota_is_deferred_not_bounced() {
        let e = UpstreamError::Rejected {
            stage: Stage::EndOfData,
            reply: reply(
                "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
            ),
        };
        assert_eq!(direct_reply("ID", &Err(e)).code, 451);
    }

    #[test]
    fn config_gets_451_4_7_0_with_advice() {
        let e = UpstreamError::Auth {
            reply: reply("535 5.7.3 Authentication unsuccessful"),
            after_refresh: true,
        };
        let r = direct_reply("ID", &Err(e));
        assert_eq!((r.code, r.status.as_deref()), (451, Some("4.7.0")));
        assert!(r.lines[0].contains("SMTP.SendAsApp"));
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
