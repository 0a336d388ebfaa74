//! What a message's header block becomes at send time: the From rewrite of an account
//! (`from_rewrite`, [`decide`]) and the `Date:` / `Message-ID:` a message lacks
//! (`delivery.add_missing_headers`), as one [`HeaderSwap`] ([`plan`], pure), and reading the
//! header block they need from the spooled body ([`header_plan`], a thin driver). The header
//! manipulation itself is `wire::rewrite` and `wire::missing`; the spool keeps the message as
//! the client sent it.

use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::route::SenderPattern;
use super::settings::FromRewrite;
use super::state::Delivery;
use crate::spool::body::Body;
use crate::spool::QueueEntry;
use crate::upstream::{HeaderSwap, MessageBody};
use crate::wire::missing::{add_missing, Additions, Missing};
use crate::wire::rewrite::{
    address_of, from_value, header_block_len, rewrite_from, MAX_HEADER_BLOCK,
};

/// Whether a message goes out with its `From:` rewritten to `mailbox`. `from` is the address
/// in its `From:` header (the envelope sender when it has none). Pure.
pub fn decide(
    mode: FromRewrite,
    from: Option<&str>,
    mailbox: &str,
    send_as: &[SenderPattern],
) -> bool {
    match mode {
        FromRewrite::Never => false,
        FromRewrite::Always => true,
        FromRewrite::WhenNotAllowed => match from.map(str::trim).filter(|f| !f.is_empty()) {
            None => true,
            Some(f) => !(f.eq_ignore_ascii_case(mailbox) || SenderPattern::any_matches(send_as, f)),
        },
    }
}

/// The header changes that apply to one lane's messages.
#[derive(Debug, Clone, Copy)]
pub(super) struct HeaderPolicy<'a> {
    pub from_rewrite: FromRewrite,
    pub mailbox: &'a str,
    pub send_as: &'a [SenderPattern],
    /// The fields a message gets if it lacks them; `None` when `add_missing_headers` is off.
    pub additions: Option<&'a Additions>,
}

impl HeaderPolicy<'_> {
    fn changes_nothing(&self) -> bool {
        self.from_rewrite == FromRewrite::Never && self.additions.is_none()
    }
}

/// What one message's header block becomes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct HeaderPlan {
    /// Sent in place of the header block; `None`: the message goes out as it is.
    pub swap: Option<HeaderSwap>,
    /// The `From:` was rewritten to the mailbox (so `MAIL FROM` is the mailbox too).
    pub from_rewritten: bool,
}

/// The plan for the header block `head` (as `wire::rewrite::header_block_len` measured it,
/// blank line included when there is one). Two pure steps in order: the missing fields first
/// (placed after the trace fields at the top), then the From rewrite on the result, which
/// finds and keeps them like any other field. Both see the same block and it is replaced
/// once. Pure.
pub(super) fn plan(policy: &HeaderPolicy<'_>, envelope_sender: &str, head: &[u8]) -> HeaderPlan {
    let added = policy.additions.and_then(|a| add_missing(head, a));
    let block = added.as_deref().unwrap_or(head);
    let from_rewritten = policy.from_rewrite != FromRewrite::Never && {
        let from = from_value(block)
            .and_then(|v| address_of(&v))
            .or_else(|| (!envelope_sender.is_empty()).then(|| envelope_sender.to_string()));
        decide(
            policy.from_rewrite,
            from.as_deref(),
            policy.mailbox,
            policy.send_as,
        )
    };
    let block = if from_rewritten {
        rewrite_from(block, policy.mailbox)
    } else {
        match added {
            Some(added) => added,
            None => return HeaderPlan::default(),
        }
    };
    HeaderPlan {
        swap: Some(HeaderSwap {
            block,
            replaces: head.len() as u64,
        }),
        from_rewritten,
    }
}

/// The header block at the start of `body`, read from its start (at most
/// `wire::rewrite::MAX_HEADER_BLOCK` bytes); `None` when it runs longer.
async fn read_head(body: &mut MessageBody<'_>) -> std::io::Result<Option<Vec<u8>>> {
    let head = match body {
        MessageBody::Bytes(bytes) => {
            let len = header_block_len(bytes, true);
            len.map(|n| bytes[..n].to_vec())
        }
        MessageBody::Stream(stream) => {
            // A piece at a time, up to the limit: most header blocks are a few hundred
            // bytes, and many bodies may be read at once.
            const PIECE: usize = 8 * 1024;
            stream.seek(std::io::SeekFrom::Start(0)).await?;
            let mut buf = Vec::with_capacity(PIECE);
            loop {
                let want = PIECE.min(MAX_HEADER_BLOCK - buf.len());
                let start = buf.len();
                buf.resize(start + want, 0);
                let n = stream.read(&mut buf[start..]).await?;
                buf.truncate(start + n);
                let eof = n == 0;
                if let Some(len) = header_block_len(&buf, eof) {
                    buf.truncate(len);
                    break Some(buf);
                }
                if eof || buf.len() >= MAX_HEADER_BLOCK {
                    break None;
                }
            }
        }
    };
    Ok(head)
}

/// The plan for `body` under `policy` (see [`plan`]). A header block longer than
/// `wire::rewrite::MAX_HEADER_BLOCK` is sent as it is (logged).
pub(super) async fn header_plan(
    policy: &HeaderPolicy<'_>,
    envelope_sender: &str,
    body: &mut MessageBody<'_>,
) -> std::io::Result<HeaderPlan> {
    if policy.changes_nothing() {
        return Ok(HeaderPlan::default());
    }
    Ok(match read_head(body).await? {
        Some(head) => plan(policy, envelope_sender, &head),
        None => {
            tracing::warn!(
                limit = MAX_HEADER_BLOCK,
                "the header block is too long to change (From rewrite, missing Date or \
                 Message-ID); the message goes out as it is"
            );
            HeaderPlan::default()
        }
    })
}

impl Delivery {
    /// The `Date:` and `Message-ID:` `entry` gets if it lacks them, or `None` when
    /// `add_missing_headers` is off. Made of what the entry keeps (id, time received) and
    /// our host name: the same on every attempt, after a restart too.
    pub(super) fn additions(&self, entry: &QueueEntry) -> Option<Additions> {
        self.settings
            .add_missing_headers
            .then(|| Additions::new(&entry.id, &self.hostname, entry.received_at))
    }

    /// The `Message-ID` the message will be sent with when the relay adds one (it lacks
    /// one, and `add_missing_headers` is on), for the audit trail; `None` to keep what the
    /// session saw. Reads the same header block an attempt reads, so the two agree.
    pub(super) async fn added_message_id(&self, entry: &QueueEntry, body: &Body) -> Option<String> {
        // The session found a Message-ID with a value at the start of a header line: the
        // header block has one, no need to read it again.
        if entry.message_id.is_some() {
            return None;
        }
        let additions = self.additions(entry)?;
        let head = match body {
            Body::Memory(m) => read_head(&mut MessageBody::Bytes(m.bytes())).await,
            Body::File(path) => match tokio::fs::File::open(path).await {
                Ok(mut file) => read_head(&mut MessageBody::Stream(&mut file)).await,
                Err(e) => Err(e),
            },
        };
        match head {
            Ok(Some(head)) if Missing::of(&head).message_id => Some(additions.msg_id().to_string()),
            Ok(_) => None,
            Err(e) => {
                // The attempt meets the same error and reports it; the audit keeps the
                // session's view.
                tracing::debug!(id = %entry.id, error = %e, "cannot read the header block");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        let send_as = vec![
            SenderPattern::parse("helpdesk@contoso.com").unwrap(),
            SenderPattern::parse("@alerts.contoso.com").unwrap(),
        ];
        let mbx = "relay@contoso.com";
        let cases: &[(FromRewrite, Option<&str>, bool)] = &[
            (FromRewrite::Never, Some("scanner@printer.local"), false),
            (FromRewrite::Never, None, false),
            (FromRewrite::Always, Some("relay@contoso.com"), true),
            (
                FromRewrite::WhenNotAllowed,
                Some("Relay@Contoso.com"),
                false,
            ),
            (
                FromRewrite::WhenNotAllowed,
                Some("helpdesk@contoso.com"),
                false,
            ),
            (
                FromRewrite::WhenNotAllowed,
                Some("disk@alerts.contoso.com"),
                false,
            ),
            (
                FromRewrite::WhenNotAllowed,
                Some("scanner@printer.local"),
                true,
            ),
            (FromRewrite::WhenNotAllowed, Some("x@contoso.com"), true),
            (FromRewrite::WhenNotAllowed, None, true),
            (FromRewrite::WhenNotAllowed, Some(" "), true),
        ];
        for (mode, from, want) in cases {
            assert_eq!(
                decide(*mode, *from, mbx, &send_as),
                *want,
                "{mode:?} {from:?}"
            );
        }
    }

    fn policy<'a>(
        from_rewrite: FromRewrite,
        mailbox: &'a str,
        additions: Option<&'a Additions>,
    ) -> HeaderPolicy<'a> {
        HeaderPolicy {
            from_rewrite,
            mailbox,
            send_as: &[],
            additions,
        }
    }

    fn adds() -> Additions {
        Additions::new("id-1", "relay.example", 1_796_665_141)
    }

    const DATE: &str = "Date: Mon, 07 Dec 2026 17:39:01 +0000\r\n";
    const MID: &str = "Message-ID: <id-1@relay.example>\r\n";

    fn text(plan: &HeaderPlan) -> String {
        String::from_utf8(plan.swap.as_ref().unwrap().block.clone()).unwrap()
    }

    #[test]
    fn missing_fields_and_the_from_rewrite_compose() {
        let a = adds();
        let head = b"Received: from x\r\nFrom: Scanner <scan@printer.local>\r\nSubject: s\r\n\r\n";
        let both = plan(
            &policy(FromRewrite::Always, "relay@contoso.com", Some(&a)),
            "",
            head,
        );
        assert_eq!(
            text(&both),
            format!(
                "Received: from x\r\n{DATE}{MID}From: Scanner <relay@contoso.com>\r\n\
                 Reply-To: Scanner <scan@printer.local>\r\nSubject: s\r\n\r\n"
            )
        );
        assert!(both.from_rewritten);
        assert_eq!(both.swap.as_ref().unwrap().replaces, head.len() as u64);
        // Only the fields: From stays, MAIL FROM is not the rewrite's business.
        let only_added = plan(
            &policy(FromRewrite::Never, "relay@contoso.com", Some(&a)),
            "",
            head,
        );
        assert_eq!(
            text(&only_added),
            format!(
                "Received: from x\r\n{DATE}{MID}From: Scanner <scan@printer.local>\r\n\
                 Subject: s\r\n\r\n"
            )
        );
        assert!(!only_added.from_rewritten);
        // Only the rewrite.
        let only_from = plan(
            &policy(FromRewrite::Always, "relay@contoso.com", None),
            "",
            head,
        );
        assert!(!text(&only_from).contains("Date:"));
        assert!(only_from.from_rewritten);
        // Neither: the message goes out as it is.
        let none = plan(
            &policy(FromRewrite::Never, "relay@contoso.com", None),
            "",
            head,
        );
        assert_eq!(none, HeaderPlan::default());
    }

    #[test]
    fn a_message_with_both_fields_is_left_alone_unless_its_from_is_rewritten() {
        let a = adds();
        let head = b"Date: Tue, 1 Dec 2026 10:00:00 +0100\r\nMessage-ID: <own@app>\r\nFrom: relay@contoso.com\r\n\r\n";
        let p = plan(
            &policy(FromRewrite::WhenNotAllowed, "relay@contoso.com", Some(&a)),
            "",
            head,
        );
        assert_eq!(p, HeaderPlan::default());
        let p = plan(
            &policy(FromRewrite::Always, "other@contoso.com", Some(&a)),
            "",
            head,
        );
        let out = text(&p);
        assert!(
            out.starts_with("Date: Tue, 1 Dec 2026 10:00:00 +0100\r\nMessage-ID: <own@app>\r\n"),
            "{out}"
        );
        assert_eq!(out.matches("Message-ID:").count(), 1);
    }

    #[test]
    fn the_rewrite_decision_sees_the_from_not_the_added_fields() {
        // An allowed sender: no rewrite, but the fields are still added.
        let a = adds();
        let head = b"From: helpdesk@contoso.com\r\n\r\n";
        let send_as = vec![SenderPattern::parse("helpdesk@contoso.com").unwrap()];
        let p = plan(
            &HeaderPolicy {
                send_as: &send_as,
                ..policy(FromRewrite::WhenNotAllowed, "relay@contoso.com", Some(&a))
            },
            "",
            head,
        );
        assert!(!p.from_rewritten);
        assert_eq!(
            text(&p),
            format!("{DATE}{MID}From: helpdesk@contoso.com\r\n\r\n")
        );
        // No From: at all: the envelope sender decides, and a From: is added last.
        let p = plan(
            &policy(FromRewrite::WhenNotAllowed, "relay@contoso.com", Some(&a)),
            "relay@contoso.com",
            b"Subject: s\r\n\r\n",
        );
        assert!(!p.from_rewritten);
        let p = plan(
            &policy(FromRewrite::WhenNotAllowed, "relay@contoso.com", Some(&a)),
            "dev@printer.local",
            b"Subject: s\r\n\r\n",
        );
        assert!(p.from_rewritten);
        assert_eq!(
            text(&p),
            format!("{DATE}{MID}Subject: s\r\nFrom: <relay@contoso.com>\r\n\r\n")
        );
    }

    #[tokio::test]
    async fn header_plan_reads_memory_and_file_bodies_alike_and_repeats_itself() {
        let a = adds();
        let msg = b"From: Scanner <scan@printer.local>\r\nSubject: s\r\n\r\nbody\r\n.\r\n";
        let want = format!(
            "{DATE}{MID}From: Scanner <relay@contoso.com>\r\nReply-To: Scanner <scan@printer.local>\r\nSubject: s\r\n\r\n"
        );
        let pol = policy(FromRewrite::Always, "relay@contoso.com", Some(&a));
        let from_memory = header_plan(&pol, "", &mut MessageBody::Bytes(msg))
            .await
            .unwrap();
        assert_eq!(text(&from_memory), want);
        assert_eq!(from_memory.swap.as_ref().unwrap().replaces, 50);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        std::fs::write(&path, msg).unwrap();
        let mut file = tokio::fs::File::open(&path).await.unwrap();
        let mut stream = MessageBody::Stream(&mut file);
        let first = header_plan(&pol, "", &mut stream).await.unwrap();
        assert_eq!(first, from_memory);
        // A second attempt reads the body again from its start and sends the same block.
        let again = header_plan(&pol, "", &mut stream).await.unwrap();
        assert_eq!(again, first);
        // Allowed senders are left alone, and with the fields switched off nothing changes.
        let none = header_plan(
            &policy(FromRewrite::WhenNotAllowed, "scan@printer.local", None),
            "",
            &mut MessageBody::Bytes(msg),
        )
        .await
        .unwrap();
        assert_eq!(none, HeaderPlan::default());
    }

    #[tokio::test]
    async fn a_header_block_too_long_to_read_is_sent_as_it_is() {
        let a = adds();
        let pol = policy(FromRewrite::Never, "relay@contoso.com", Some(&a));
        let message = |header_bytes: usize| {
            let mut msg = b"Subject: s\r\n".to_vec();
            while msg.len() < header_bytes {
                msg.extend_from_slice(b"X-Filler: 0123456789\r\n");
            }
            msg.extend_from_slice(b"\r\nbody\r\n");
            msg
        };
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (MAX_HEADER_BLOCK + 1, false),
            (MAX_HEADER_BLOCK - 100, true),
        ];
        for (header_bytes, gets_them) in cases {
            let msg = message(header_bytes);
            let from_memory = header_plan(&pol, "", &mut MessageBody::Bytes(&msg))
                .await
                .unwrap();
            // From a file it is read in pieces: the same answer.
            let path = dir.path().join("b");
            std::fs::write(&path, &msg).unwrap();
            let mut file = tokio::fs::File::open(&path).await.unwrap();
            let from_file = header_plan(&pol, "", &mut MessageBody::Stream(&mut file))
                .await
                .unwrap();
            assert_eq!(from_file, from_memory, "{header_bytes}");
            if gets_them {
                assert!(text(&from_file).starts_with(&format!("{DATE}{MID}Subject: s\r\n")));
                let swap = from_file.swap.unwrap();
                assert_eq!(swap.replaces as usize, msg.len() - b"body\r\n".len());
            } else {
                assert_eq!(from_file, HeaderPlan::default(), "{header_bytes}");
            }
        }
    }
}
