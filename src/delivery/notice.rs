//! The failure notice (RFC 5321 §6.1): when a message the relay accepted with `250` fails
//! for good, a short, DSN-style text message goes to its envelope sender (or to `notice.to`),
//! through the same mailbox and the same queue as any message. On by default;
//! `delivery.failure_notice = false` turns it off. Pure: who gets one, and its bytes.
//!
//! It cannot loop:
//! - a notice is marked as one in its queue entry (`notice`) and carries
//!   `Auto-Submitted: auto-replied` (RFC 3834);
//! - a message with the null reverse path `<>` (itself a bounce) gets none;
//! - a notice that fails gets no notice of its own, only one fallback copy to the relay's
//!   own mailbox (the sender's address may be one Exchange cannot reach), and that fallback
//!   gets nothing when it fails in turn.
//!
//! It is deliberately plain text rather than a full RFC 3464 multipart report: legacy apps'
//! mailboxes are read by people, and the relay's own log and `failed/` keep the details.

use std::time::SystemTime;

use crate::spool::{QueueEntry, Refusal};

/// Who gets a notice about a message that failed for good, if anyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoticeTo {
    /// The first notice about a failed message: to its sender, or to `notice.to`.
    Sender(String),
    /// The one fallback: a notice that itself failed goes, once, to the relay's mailbox.
    Mailbox(String),
}

impl NoticeTo {
    pub fn address(&self) -> &str {
        match self {
            NoticeTo::Sender(a) | NoticeTo::Mailbox(a) => a,
        }
    }
}

/// Who gets a notice about `failed` (pure). `enabled` is `delivery.failure_notice`, `to` is
/// `notice.to`, `mailbox` the relay's own.
pub fn notice_to(
    failed: &QueueEntry,
    enabled: bool,
    to: Option<&str>,
    mailbox: &str,
) -> Option<NoticeTo> {
    if !enabled {
        return None;
    }
    if failed.notice {
        // A notice that failed: one fallback to the mailbox, unless it went there already.
        let to_mailbox = failed
            .rcpt_to
            .iter()
            .chain(failed.refused.iter().map(|r| &r.rcpt))
            .any(|r| r.eq_ignore_ascii_case(mailbox));
        return (!to_mailbox).then(|| NoticeTo::Mailbox(mailbox.to_string()));
    }
    if failed.mail_from.is_empty() {
        return None; // `<>`: a bounce itself (RFC 5321 §6.1, §4.5.5)
    }
    Some(NoticeTo::Sender(
        to.unwrap_or(failed.mail_from.as_str()).to_string(),
    ))
}

/// The notice's body (RFC 5322 message, CRLF line ends), from `mailbox` to `to`.
pub fn failure_notice(
    entry: &QueueEntry,
    mailbox: &str,
    to: &str,
    hostname: &str,
    notice_id: &str,
    now: SystemTime,
) -> Vec<u8> {
    let subject = format!("Undelivered mail: message {}", entry.id);
    let mut text = headers(mailbox, to, &subject, hostname, notice_id, now);
    text.push_str(&format!(
        "The mail relay on {hostname} could not deliver message {id}\r\n\
         (received from {client}) to these recipients:\r\n\r\n",
        id = entry.id,
        client = entry.client,
    ));
    push_refusals(&mut text, entry);
    text.push_str("\r\nThe message is kept on the relay for its administrator.\r\n");
    text.into_bytes()
}

/// The one fallback, to the relay's own `mailbox`, when the notice `failed` could not be
/// delivered: why, and the text the notice had (`first`, its RFC 5322 bytes).
pub fn fallback_notice(
    failed: &QueueEntry,
    first: &[u8],
    mailbox: &str,
    hostname: &str,
    notice_id: &str,
    now: SystemTime,
) -> Vec<u8> {
    let subject = format!("Undeliverable failure notice {}", failed.id);
    let mut text = headers(mailbox, mailbox, &subject, hostname, notice_id, now);
    text.push_str(&format!(
        "The mail relay on {hostname} could not deliver its failure notice {id}\r\n\
         to the sender, so it comes to this mailbox instead:\r\n\r\n",
        id = failed.id,
    ));
    push_refusals(&mut text, failed);
    text.push_str("\r\nThe notice said:\r\n\r\n");
    let first = String::from_utf8_lossy(first);
    let body = first.split_once("\r\n\r\n").map_or(&*first, |(_, b)| b);
    for line in body.lines().take(MAX_QUOTED_LINES) {
        text.push_str("  ");
        text.push_str(&line.replace('\r', " "));
        text.push_str("\r\n");
    }
    text.into_bytes()
}

/// Lines of the first notice quoted in a fallback (a notice has a line per recipient).
const MAX_QUOTED_LINES: usize = 1000;

fn headers(
    mailbox: &str,
    to: &str,
    subject: &str,
    hostname: &str,
    notice_id: &str,
    now: SystemTime,
) -> String {
    let date = httpdate::fmt_http_date(now).replace(" GMT", " +0000");
    format!(
        "From: Mail relay <{mailbox}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{notice_id}@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n"
    )
}

/// One line per recipient not reached, then the reason, if any.
fn push_refusals(text: &mut String, entry: &QueueEntry) {
    let reasons: Vec<String> = if entry.refused.is_empty() {
        entry.rcpt_to.clone()
    } else {
        entry.refused.iter().map(Refusal::to_string).collect()
    };
    for line in reasons {
        text.push_str("  ");
        text.push_str(&line.replace(['\r', '\n'], " "));
        text.push_str("\r\n");
    }
    if let Some(reason) = &entry.failure_reason {
        text.push_str(&format!(
            "\r\nReason: {}\r\n",
            reason.replace(['\r', '\n'], " ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_names_the_recipients_and_reason_in_crlf_text() {
        let entry = {
            let mut e = QueueEntry::new(
                "abc".into(),
                "app@example.com".into(),
                vec![],
                "relay@contoso.com".into(),
                1,
            );
            e.client = "127.0.0.1:5".into();
            e.helo = "app".into();
            e.received_at = 0;
            e.attempts = 3;
            e.next_attempt = 0;
            e.failed_at = Some(1);
            e.failure_reason = Some("gave up\r\nafter 5 days".into());
            e.refused = vec![Refusal {
                rcpt: "x@y".into(),
                reason: "550 5.1.10 no such user".into(),
            }];
            e.received_at_ms = 0;
            e
        };
        let n = failure_notice(
            &entry,
            "relay@contoso.com",
            "app@example.com",
            "relay",
            "n1",
            SystemTime::UNIX_EPOCH,
        );
        let text = String::from_utf8(n).unwrap();
        assert!(text.contains("To: <app@example.com>\r\n"));
        assert!(text.contains("  x@y: 550 5.1.10 no such user\r\n"));
        assert!(text.contains("Reason: gave up  after 5 days\r\n"));
        assert!(text.contains("Auto-Submitted: auto-replied"));
        assert!(!text.replace("\r\n", "").contains('\n'));
    }

    fn failed(from: &str, to: &str, notice: bool) -> QueueEntry {
        let mut e = QueueEntry::new(
            "n1".into(),
            from.into(),
            vec![],
            "relay@contoso.com".into(),
            1,
        );
        e.notice = notice;
        e.refused = vec![Refusal {
            rcpt: to.into(),
            reason: "550 5.1.10 RESOLVER.ADR.RecipientNotFound".into(),
        }];
        e
    }

    #[test]
    fn who_gets_a_notice_and_no_loop() {
        let mbx = "relay@contoso.com";
        let msg = failed("app@example.com", "x@y", false);
        assert_eq!(
            notice_to(&msg, true, None, mbx),
            Some(NoticeTo::Sender("app@example.com".into()))
        );
        assert_eq!(
            notice_to(&msg, true, Some("ops@contoso.com"), mbx),
            Some(NoticeTo::Sender("ops@contoso.com".into()))
        );
        assert_eq!(notice_to(&msg, false, None, mbx), None, "switched off");
        let bounce = failed("", "x@y", false);
        assert_eq!(
            notice_to(&bounce, true, None, mbx),
            None,
            "null reverse path"
        );
        assert_eq!(
            notice_to(&bounce, true, Some("ops@contoso.com"), mbx),
            None,
            "null reverse path, whatever notice.to says"
        );
        // A notice that failed (its own mail_from is `<>`): one fallback to the mailbox...
        let first = failed("", "app@example.com", true);
        assert_eq!(
            notice_to(&first, true, None, mbx),
            Some(NoticeTo::Mailbox(mbx.into()))
        );
        // ...and nothing after the fallback fails, whatever the case of the address.
        let fallback = failed("", "Relay@Contoso.com", true);
        assert_eq!(notice_to(&fallback, true, None, mbx), None);
        let mut pending = failed("", "x@y", true);
        pending.refused.clear();
        pending.rcpt_to = vec![mbx.into()];
        assert_eq!(notice_to(&pending, true, None, mbx), None);
    }

    #[test]
    fn fallback_quotes_the_notice_and_says_why() {
        let orig = failed("app@example.com", "x@y", false);
        let first = failure_notice(
            &orig,
            "relay@contoso.com",
            "app@example.com",
            "relay",
            "n1",
            SystemTime::UNIX_EPOCH,
        );
        let failed_notice = failed("", "app@example.com", true);
        let text = fallback_notice(
            &failed_notice,
            &first,
            "relay@contoso.com",
            "relay",
            "n2",
            SystemTime::UNIX_EPOCH,
        );
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("To: <relay@contoso.com>\r\n"), "{text}");
        assert!(text.contains("Auto-Submitted: auto-replied\r\n"));
        assert!(text.contains("  app@example.com: 550 5.1.10"), "{text}");
        assert!(
            text.contains("    x@y: 550 5.1.10"),
            "quotes the first notice: {text}"
        );
        assert!(
            !text.contains("  Subject: Undelivered"),
            "headers not quoted: {text}"
        );
        assert!(!text.replace("\r\n", "").contains('\n'));
    }
}
