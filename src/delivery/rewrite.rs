//! The From rewrite of an account (`from_rewrite`): whether a message's `From:` is replaced
//! by the mailbox (pure, [`decide`]), and reading the header block it needs from the spooled
//! body ([`header_swap`], a thin driver). The header manipulation itself is `wire::rewrite`.

use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::route::SenderPattern;
use super::settings::FromRewrite;
use crate::upstream::{HeaderSwap, MessageBody};
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

/// The rewritten header block for `body`, when the policy says to rewrite it; `None` to send
/// it as it is. A header block longer than `wire::rewrite::MAX_HEADER_BLOCK` is sent as it
/// is (logged).
pub(super) async fn header_swap(
    mode: FromRewrite,
    mailbox: &str,
    send_as: &[SenderPattern],
    envelope_sender: &str,
    body: &mut MessageBody<'_>,
) -> std::io::Result<Option<HeaderSwap>> {
    if mode == FromRewrite::Never {
        return Ok(None);
    }
    let head = match body {
        MessageBody::Bytes(bytes) => {
            let len = header_block_len(bytes, true);
            len.map(|n| bytes[..n].to_vec())
        }
        MessageBody::Stream(stream) => {
            stream.seek(std::io::SeekFrom::Start(0)).await?;
            let mut buf = vec![0u8; MAX_HEADER_BLOCK];
            let mut filled = 0;
            let mut eof = false;
            while filled < buf.len() {
                let n = stream.read(&mut buf[filled..]).await?;
                if n == 0 {
                    eof = true;
                    break;
                }
                filled += n;
            }
            buf.truncate(filled);
            header_block_len(&buf, eof).map(|n| {
                buf.truncate(n);
                buf
            })
        }
    };
    let Some(head) = head else {
        tracing::warn!(
            limit = MAX_HEADER_BLOCK,
            "from_rewrite: the header block is too long to rewrite; the message goes out as it is"
        );
        return Ok(None);
    };
    let from = from_value(&head)
        .and_then(|v| address_of(&v))
        .or_else(|| (!envelope_sender.is_empty()).then(|| envelope_sender.to_string()));
    if !decide(mode, from.as_deref(), mailbox, send_as) {
        return Ok(None);
    }
    Ok(Some(HeaderSwap {
        block: rewrite_from(&head, mailbox),
        replaces: head.len() as u64,
    }))
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

    #[tokio::test]
    async fn header_swap_reads_memory_and_file_bodies_alike() {
        let msg = b"From: Scanner <scan@printer.local>\r\nSubject: s\r\n\r\nbody\r\n.\r\n";
        let want = b"From: Scanner <relay@contoso.com>\r\nReply-To: Scanner <scan@printer.local>\r\nSubject: s\r\n\r\n";
        let swap = header_swap(
            FromRewrite::Always,
            "relay@contoso.com",
            &[],
            "",
            &mut MessageBody::Bytes(msg),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(swap.block, want.to_vec());
        assert_eq!(swap.replaces, 50);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        std::fs::write(&path, msg).unwrap();
        let mut file = tokio::fs::File::open(&path).await.unwrap();
        let from_file = header_swap(
            FromRewrite::Always,
            "relay@contoso.com",
            &[],
            "",
            &mut MessageBody::Stream(&mut file),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(from_file, swap);
        // Allowed senders are left alone.
        let none = header_swap(
            FromRewrite::WhenNotAllowed,
            "scan@printer.local",
            &[],
            "",
            &mut MessageBody::Bytes(msg),
        )
        .await
        .unwrap();
        assert_eq!(none, None);
    }
}
