//! Splitting the command stream into lines (RFC 5321 §4.5.3.1.4), whatever the read
//! boundaries, with a cap: pure, beside the session it feeds.
//!
//! Our own rather than smtp-proto's receiver, which accepts any complete line: a line longer
//! than [`MAX_COMMAND_LINE`] is refused once and skipped up to its end, never buffered whole.

/// Longest command line we accept, CRLF included (RFC 5321 §4.5.3.1.4 asks for 512; we allow
/// what smtp-proto allows, for long UTF-8 addresses and parameters).
pub const MAX_COMMAND_LINE: usize = 4096;

/// Splits the command stream into lines, whatever the read boundaries: a line longer than
/// [`MAX_COMMAND_LINE`] is refused once and skipped up to its end, never buffered whole.
#[derive(Debug, Default)]
pub struct LineFramer {
    partial: Vec<u8>,
    skipping: bool,
    /// The last byte taken into a partial line (or a skipped one): the byte before the LF
    /// when the LF comes in the next read.
    last_absorbed: Option<u8>,
    /// Some line so far ended in CRLF / in a bare LF (see [`LineFramer::only_bare_lf`]).
    saw_crlf: bool,
    saw_bare_lf: bool,
}

/// What the framer found at the front of the input.
#[derive(Debug, PartialEq, Eq)]
pub enum Framed<'a> {
    /// A complete command line, CRLF included.
    Line(std::borrow::Cow<'a, [u8]>),
    /// A line longer than the limit: refuse it.
    TooLong,
    /// The end of an over-long line that was already refused: nothing to answer.
    Skipped,
}

impl LineFramer {
    /// The next complete line in `input` (joined with any partial line kept from earlier),
    /// and how many bytes of `input` it used.
    pub fn next_line<'a>(&mut self, input: &'a [u8]) -> Option<(Framed<'a>, usize)> {
        let nl = memchr::memchr(b'\n', input)?;
        let used = nl + 1;
        let before_lf = match nl {
            0 => self.last_absorbed.take(),
            _ => input.get(nl - 1).copied(),
        };
        self.last_absorbed = None;
        if before_lf == Some(b'\r') {
            self.saw_crlf = true;
        } else {
            self.saw_bare_lf = true;
        }
        if self.skipping {
            // The refusal was sent when the line passed the limit.
            self.skipping = false;
            self.partial.clear();
            return Some((Framed::Skipped, used));
        }
        if self.partial.len() + used > MAX_COMMAND_LINE {
            self.partial.clear();
            return Some((Framed::TooLong, used));
        }
        let line = if self.partial.is_empty() {
            std::borrow::Cow::Borrowed(&input[..used])
        } else {
            let mut whole = std::mem::take(&mut self.partial);
            whole.extend_from_slice(&input[..used]);
            std::borrow::Cow::Owned(whole)
        };
        Some((Framed::Line(line), used))
    }

    /// Whether every command line so far (at least one) ended in a bare LF, never in CRLF:
    /// the session of a client that only knows LF, whose data may end on `LF . LF`
    /// ([`crate::wire::data::Terminator::AlsoBareLf`]). One CRLF line and it is false for
    /// good, so a session that uses CRLF keeps the strict `CRLF . CRLF` rule.
    pub fn only_bare_lf(&self) -> bool {
        self.saw_bare_lf && !self.saw_crlf
    }

    /// Whether part of a command line has been received (or an over-long one is being
    /// skipped).
    pub fn pending(&self) -> bool {
        self.skipping || !self.partial.is_empty()
    }

    /// Keeps a trailing partial line (no LF in `input`); all of `input` is taken. Returns
    /// true when the partial line just passed the limit: the caller refuses it now and the
    /// rest of it is skipped.
    pub fn absorb(&mut self, input: &[u8]) -> bool {
        if let Some(&last) = input.last() {
            self.last_absorbed = Some(last);
        }
        if self.skipping {
            return false;
        }
        self.partial.extend_from_slice(input);
        if self.partial.len() > MAX_COMMAND_LINE {
            self.partial.clear();
            self.skipping = true;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames everything in `input`: the lines answered (None = refused as too long) and
    /// whether the trailing partial line overflowed.
    fn frame_all(f: &mut LineFramer, input: &[u8]) -> (Vec<Option<Vec<u8>>>, bool) {
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some((frame, used)) = f.next_line(&input[pos..]) {
            pos += used;
            match frame {
                Framed::Line(l) => out.push(Some(l.into_owned())),
                Framed::TooLong => out.push(None),
                Framed::Skipped => {}
            }
        }
        let overflow = f.absorb(&input[pos..]);
        (out, overflow)
    }

    #[test]
    fn a_bare_lf_ends_a_line_as_crlf_does() {
        // Printers and scripts end commands with LF alone, or mix both; a bare CR is no line
        // end (RFC 5321 §2.3.8), so it stays inside the line for the parser to refuse.
        let mut f = LineFramer::default();
        assert_eq!(
            frame_all(
                &mut f,
                b"HELO scanner\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\nDA"
            ),
            (
                vec![
                    Some(b"HELO scanner\n".to_vec()),
                    Some(b"MAIL FROM:<a@b>\r\n".to_vec()),
                    Some(b"RCPT TO:<c@d>\n".to_vec()),
                ],
                false
            )
        );
        assert_eq!(
            frame_all(&mut f, b"TA\nNOOP\rQUIT\n"),
            (
                vec![Some(b"DATA\n".to_vec()), Some(b"NOOP\rQUIT\n".to_vec())],
                false
            )
        );
        assert!(!f.pending());
        // The cap counts the LF alone the same way: a line of exactly the limit is fine.
        let mut max = vec![b'a'; MAX_COMMAND_LINE - 1];
        max.push(b'\n');
        assert_eq!(frame_all(&mut f, &max).0, vec![Some(max.clone())]);
        max.insert(0, b'a');
        assert_eq!(frame_all(&mut f, &max).0, vec![None]);
    }

    #[test]
    fn a_session_is_bare_lf_only_until_its_first_crlf_line() {
        let mut f = LineFramer::default();
        assert!(!f.only_bare_lf(), "no line yet");
        frame_all(&mut f, b"HELO scanner\nMAIL FROM:<a@b>\n");
        assert!(f.only_bare_lf());
        // A CR and its LF in different reads are still a CRLF.
        frame_all(&mut f, b"RCPT TO:<c@d>\r");
        assert!(f.only_bare_lf(), "the line is not finished");
        frame_all(&mut f, b"\nDATA\n");
        assert!(
            !f.only_bare_lf(),
            "one CRLF line makes the session a CRLF one"
        );
        frame_all(&mut f, b"NOOP\n");
        assert!(!f.only_bare_lf(), "for good");

        // An over-long line counts by its end too, however it was split.
        let mut f = LineFramer::default();
        frame_all(&mut f, &vec![b'z'; MAX_COMMAND_LINE + 1]);
        frame_all(&mut f, b"zz\n");
        assert!(f.only_bare_lf());
        frame_all(&mut f, &vec![b'z'; MAX_COMMAND_LINE + 1]);
        frame_all(&mut f, b"\r");
        frame_all(&mut f, b"\n");
        assert!(!f.only_bare_lf());
        // A bare CR in the middle of a line is not a CRLF.
        let mut f = LineFramer::default();
        frame_all(&mut f, b"NO\rOP\n");
        assert!(f.only_bare_lf());
    }

    #[test]
    fn framer_joins_partial_lines_and_caps_length() {
        let mut f = LineFramer::default();
        assert_eq!(
            frame_all(&mut f, b"NOOP\r\nRS"),
            (vec![Some(b"NOOP\r\n".to_vec())], false)
        );
        assert_eq!(
            frame_all(&mut f, b"ET\r\n"),
            (vec![Some(b"RSET\r\n".to_vec())], false)
        );
        // Too long in one piece: refused once, following lines still framed.
        let mut long = vec![b'z'; MAX_COMMAND_LINE + 10];
        long.extend_from_slice(b"\r\nQUIT\r\n");
        assert_eq!(
            frame_all(&mut f, &long),
            (vec![None, Some(b"QUIT\r\n".to_vec())], false)
        );
        // Too long across reads: refused when it passes the limit, then skipped to its end.
        let (lines, overflow) = frame_all(&mut f, &vec![b'z'; MAX_COMMAND_LINE + 1]);
        assert!(lines.is_empty() && overflow);
        assert_eq!(frame_all(&mut f, &vec![b'z'; 10_000]), (vec![], false));
        assert_eq!(
            frame_all(&mut f, b"zz\r\nNOOP\r\n"),
            (vec![Some(b"NOOP\r\n".to_vec())], false)
        );
        // The skipped end arriving alone, then the next command split across reads.
        let (lines, overflow) = frame_all(&mut f, &vec![b'z'; MAX_COMMAND_LINE + 1]);
        assert!(lines.is_empty() && overflow);
        assert_eq!(frame_all(&mut f, b"zz\r\nNO"), (vec![], false));
        assert_eq!(
            frame_all(&mut f, b"OP\r\n"),
            (vec![Some(b"NOOP\r\n".to_vec())], false)
        );
        // Exactly at the limit is fine.
        let mut max = vec![b'a'; MAX_COMMAND_LINE - 2];
        max.extend_from_slice(b"\r\n");
        assert_eq!(frame_all(&mut f, &max).0, vec![Some(max.clone())]);
    }
}
