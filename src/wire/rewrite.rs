//! Rewriting the `From:` header to the sending mailbox, keeping the original in `Reply-To:`
//! (issue 12, "From rewrite per account"). Pure: a header block in, a new one out.
//!
//! Devices that send from arbitrary addresses make Exchange refuse the message with
//! `554 5.2.252 SendAsDenied`. The rewrite puts the mailbox in `From:`, keeps the original
//! display name, and sets `Reply-To:` to the original `From:` so replies still reach the
//! original sender (a `Reply-To:` the message already has is kept as it is). Only the header
//! block changes; the body is never touched.

/// Longest header block looked at. A message whose headers run longer is sent unchanged.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// The length of the header block at the start of `message`, including the blank line that
/// ends it (`CRLF CRLF`, or a bare `LF LF`), or `None` when no end is found within
/// [`MAX_HEADER_BLOCK`] bytes. A message that is all headers (no blank line, no body) counts
/// as all header block when it is shorter than the limit and `complete` says it ended.
pub fn header_block_len(message: &[u8], complete: bool) -> Option<usize> {
    let window = &message[..message.len().min(MAX_HEADER_BLOCK)];
    if window.starts_with(b"\r\n") {
        return Some(2);
    }
    if window.starts_with(b"\n") {
        return Some(1);
    }
    let mut i = 0;
    while let Some(pos) = memchr::memchr(b'\n', &window[i..]) {
        let end = i + pos + 1; // just past this LF
        let rest = &window[end..];
        if rest.starts_with(b"\r\n") {
            return Some(end + 2);
        }
        if rest.starts_with(b"\n") {
            return Some(end + 1);
        }
        i = end;
    }
    (complete && message.len() <= MAX_HEADER_BLOCK).then_some(message.len())
}

/// One header field: its name and its whole raw text (folded lines included).
pub(super) struct Field<'a> {
    pub(super) name: &'a [u8],
    pub(super) raw: &'a [u8],
}

/// Splits a header block into fields (continuation lines stay with their field). Anything
/// before the first field or malformed is kept as a field without a name.
pub(super) fn fields(block: &[u8]) -> Vec<Field<'_>> {
    let mut out: Vec<Field<'_>> = Vec::new();
    let mut start = 0;
    while start < block.len() {
        let end = memchr::memchr(b'\n', &block[start..])
            .map(|p| start + p + 1)
            .unwrap_or(block.len());
        let line = &block[start..end];
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        match out.last_mut() {
            Some(last) if continuation => {
                let from = last.raw.as_ptr() as usize - block.as_ptr() as usize;
                last.raw = &block[from..end];
            }
            _ => {
                // `From :` (obsolete syntax, RFC 5322 §4.5.3) names `From` too.
                let name = match memchr::memchr(b':', line) {
                    Some(colon) => {
                        let name = line[..colon].trim_ascii_end();
                        if !name.is_empty() && name.iter().all(|b| b.is_ascii_graphic()) {
                            name
                        } else {
                            &[][..]
                        }
                    }
                    None => &[][..],
                };
                out.push(Field { name, raw: line });
            }
        }
        start = end;
    }
    out
}

/// The line end a block uses: CRLF unless it uses bare LF only.
pub(super) fn eol(block: &[u8]) -> &'static [u8] {
    if block.windows(2).any(|w| w == b"\r\n") || !block.contains(&b'\n') {
        b"\r\n"
    } else {
        b"\n"
    }
}

/// The value of a field: after the colon, unfolded, trimmed.
pub(super) fn value(field: &Field<'_>) -> String {
    let colon = memchr::memchr(b':', field.raw).map_or(field.raw.len(), |c| c + 1);
    let raw = &field.raw[colon..];
    let text = String::from_utf8_lossy(raw);
    text.split(['\r', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The (first) `From:` field's value, unfolded, if there is one.
pub fn from_value(block: &[u8]) -> Option<String> {
    fields(block)
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case(b"from"))
        .map(value)
}

/// The address in a `From:` value: the part in angle brackets, or the bare address.
/// Lower-cased. `None` when there is no address-like text.
pub fn address_of(from: &str) -> Option<String> {
    let candidate = match (from.rfind('<'), from.rfind('>')) {
        (Some(open), Some(close)) if open < close => &from[open + 1..close],
        _ => from.split(',').next().unwrap_or(from),
    };
    let candidate = candidate.trim();
    (candidate.contains('@') && !candidate.contains(char::is_whitespace))
        .then(|| candidate.to_ascii_lowercase())
}

/// The display name of a `From:` value as the message wrote it (`"Scanner 3"`, an RFC 2047
/// encoded-word, UTF-8 in an SMTPUTF8 message), kept verbatim: rewritten, it could lose its
/// encoding. `None` for a bare address.
fn display_name(from: &str) -> Option<&str> {
    let open = from.rfind('<')?;
    let name = from[..open].trim();
    (!name.is_empty() && !name.contains(['\r', '\n'])).then_some(name)
}

/// The header block with `From:` set to `mailbox` (the original display name kept) and the
/// original `From:` value moved to `Reply-To:` unless the message has a `Reply-To:` already.
/// A block without `From:` gets one. Line ends follow the block's own (CRLF unless it uses
/// bare LF). `block` is what [`header_block_len`] measured, blank line included.
pub fn rewrite_from(block: &[u8], mailbox: &str) -> Vec<u8> {
    let eol = eol(block);
    let all = fields(block);
    let original = all
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case(b"from"))
        .map(value);
    let has_reply_to = all.iter().any(|f| f.name.eq_ignore_ascii_case(b"reply-to"));
    let original = original.filter(|v| !v.is_empty());
    let new_from = match original.as_deref().and_then(display_name) {
        Some(name) => format!("From: {name} <{mailbox}>"),
        None => format!("From: <{mailbox}>"),
    };
    let mut out = Vec::with_capacity(block.len() + 128);
    let mut from_done = false;
    for field in &all {
        let blank = field.name.is_empty() && field.raw.iter().all(|b| *b == b'\r' || *b == b'\n');
        if blank {
            continue; // the end of the block: written last
        }
        if field.name.eq_ignore_ascii_case(b"from") {
            if !from_done {
                out.extend_from_slice(new_from.as_bytes());
                out.extend_from_slice(eol);
                if let (Some(orig), false) = (&original, has_reply_to) {
                    out.extend_from_slice(b"Reply-To: ");
                    out.extend_from_slice(orig.as_bytes());
                    out.extend_from_slice(eol);
                }
                from_done = true;
            }
            continue; // a second From: field is dropped (RFC 5322 allows one)
        }
        out.extend_from_slice(field.raw);
    }
    if !from_done {
        out.extend_from_slice(new_from.as_bytes());
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(eol);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_block_ends_at_the_blank_line() {
        assert_eq!(
            header_block_len(b"A: b\r\nC: d\r\n\r\nbody\r\n", true),
            Some(14)
        );
        assert_eq!(header_block_len(b"A: b\nC: d\n\nbody\n", true), Some(11));
        assert_eq!(header_block_len(b"\r\nbody", true), Some(2));
        assert_eq!(header_block_len(b"A: b\r\n", true), Some(6));
        assert_eq!(header_block_len(b"A: b\r\n", false), None);
        let long = vec![b'x'; MAX_HEADER_BLOCK + 10];
        assert_eq!(header_block_len(&long, true), None);
    }

    #[test]
    fn from_value_and_address() {
        let block = b"Subject: hi\r\nFrom: \"Scanner 3\"\r\n <scan3@printers.example>\r\n\r\n";
        let v = from_value(block).unwrap();
        assert_eq!(v, "\"Scanner 3\" <scan3@printers.example>");
        assert_eq!(address_of(&v).unwrap(), "scan3@printers.example");
        assert_eq!(
            address_of("Plain@Example.com").unwrap(),
            "plain@example.com"
        );
        assert_eq!(address_of("undisclosed"), None);
        assert_eq!(from_value(b"Subject: x\r\n\r\n"), None);
    }

    #[test]
    fn rewrite_keeps_the_name_and_moves_the_original_to_reply_to() {
        let block = b"Received: from x\r\n by y\r\nFrom: \"Scanner 3\" <scan3@printers.example>\r\nTo: a@b\r\nSubject: Scan\r\n\r\n";
        let out = rewrite_from(block, "relay@contoso.com");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Received: from x\r\n by y\r\nFrom: \"Scanner 3\" <relay@contoso.com>\r\n\
             Reply-To: \"Scanner 3\" <scan3@printers.example>\r\nTo: a@b\r\nSubject: Scan\r\n\r\n"
        );
    }

    #[test]
    fn an_existing_reply_to_is_kept() {
        let block = b"Reply-To: desk@contoso.com\r\nFrom: dev@x.example\r\n\r\n";
        let out = String::from_utf8(rewrite_from(block, "relay@contoso.com")).unwrap();
        assert_eq!(
            out,
            "Reply-To: desk@contoso.com\r\nFrom: <relay@contoso.com>\r\n\r\n"
        );
    }

    #[test]
    fn a_missing_from_is_added_and_bare_lf_is_kept() {
        let out = String::from_utf8(rewrite_from(b"Subject: x\n\n", "relay@contoso.com")).unwrap();
        assert_eq!(out, "Subject: x\nFrom: <relay@contoso.com>\n\n");
        let out = String::from_utf8(rewrite_from(b"", "relay@contoso.com")).unwrap();
        assert_eq!(out, "From: <relay@contoso.com>\r\n\r\n");
    }

    #[test]
    fn display_names_are_kept_as_written_and_odd_froms_handled() {
        let out = |block: &[u8]| String::from_utf8(rewrite_from(block, "m@z")).unwrap();
        // An encoded-word stays an encoded-word (not a quoted string, RFC 2047 §5).
        assert_eq!(
            out(b"From: =?UTF-8?Q?J=C3=B6rg?= <j@x>\r\n\r\n"),
            "From: =?UTF-8?Q?J=C3=B6rg?= <m@z>\r\nReply-To: =?UTF-8?Q?J=C3=B6rg?= <j@x>\r\n\r\n"
        );
        // UTF-8 of an SMTPUTF8 message stays UTF-8.
        assert_eq!(
            out("From: Jörg Müller <j@x>\r\n\r\n".as_bytes()),
            "From: Jörg Müller <m@z>\r\nReply-To: Jörg Müller <j@x>\r\n\r\n"
        );
        // An empty From: gives no empty Reply-To:.
        assert_eq!(
            out(b"From:\r\nSubject: s\r\n\r\n"),
            "From: <m@z>\r\nSubject: s\r\n\r\n"
        );
        // `From :` is a From: too.
        assert_eq!(
            out(b"From : a@x\r\n\r\n"),
            "From: <m@z>\r\nReply-To: a@x\r\n\r\n"
        );
    }

    #[test]
    fn a_second_from_is_dropped_and_quotes_are_escaped() {
        let block = b"From: \"A \\\"B\\\"\" <a@x>\r\nFrom: c@y\r\n\r\n";
        let out = String::from_utf8(rewrite_from(block, "m@z")).unwrap();
        assert_eq!(
            out,
            "From: \"A \\\"B\\\"\" <m@z>\r\nReply-To: \"A \\\"B\\\"\" <a@x>\r\n\r\n"
        );
        assert_eq!(out.matches("From:").count(), 1);
    }
}
