//! The optional failure notice (`delivery.failure_notice`): a short, DSN-style text message
//! to the envelope sender when a queued message finally fails. Pure: builds bytes only.
//!
//! It is deliberately plain text rather than a full RFC 3464 multipart report: legacy apps'
//! mailboxes are read by people, and the relay's own log and `failed/` keep the details.

use std::time::SystemTime;

use crate::spool::{QueueEntry, Refusal};

/// The notice's body (RFC 5322 message, CRLF line ends), from `mailbox` to `to`.
pub fn failure_notice(
    entry: &QueueEntry,
    mailbox: &str,
    to: &str,
    hostname: &str,
    notice_id: &str,
    now: SystemTime,
) -> Vec<u8> {
    let date = httpdate::fmt_http_date(now).replace(" GMT", " +0000");
    let mut text = format!(
        "From: Mail relay <{mailbox}>\r\n\
         To: <{to}>\r\n\
         Subject: Undelivered mail: message {id}\r\n\
         Date: {date}\r\n\
         Message-ID: <{notice_id}@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         The mail relay on {hostname} could not deliver message {id}\r\n\
         (received from {client}) to these recipients:\r\n\r\n",
        id = entry.id,
        client = entry.client,
    );
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
    text.push_str("\r\nThe message is kept on the relay for its administrator.\r\n");
    text.into_bytes()
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
}
