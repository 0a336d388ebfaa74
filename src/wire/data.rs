//! The DATA phase (RFC 5321 §4.1.1.4, §4.5.2) both ways: decoding what a client sends
//! ([`BodyDecoder`]) and encoding what we send ([`DotStuffer`]). Pure, chunk by chunk,
//! bounded memory.
//!
//! Our own small state machine rather than smtp-proto's `DataReceiver`, which also ends the
//! data on `<CRLF>.<CR><CR><LF>` (it stays in its after-dot state across repeated CRs), so a
//! second message could be smuggled behind it. Here the data ends on exactly `CRLF . CRLF`;
//! a dot after a bare LF or CR is body text (so `<LF>.<CR><LF>` and `<CR>.<CR><LF>` smuggling
//! attempts stay inside the body), and a leading dot is removed only at the start of a line
//! that followed a CRLF (or the start of the body).
//!
//! One exception, for the simplest printers and scripts, which end every line with a bare LF
//! (`DATA<LF>…<LF>.<LF>`): a decoder made with [`Terminator::AlsoBareLf`] also takes a bare
//! LF as a line end, so a dot after it is stuffing and `LF . LF` ends the data too. Its
//! caller must choose it only for a session whose every command line ended in a bare LF;
//! in a session that uses CRLF only `CRLF . CRLF` ends the data, whatever follows.
//!
//! Around it: bare LF and bare CR are normalised to CRLF (Exchange rejects bare line feeds
//! with `554 5.6.0`, reference §4.1), and the size limit is enforced on the decoded bytes;
//! beyond it, the rest of the body is read and discarded so the session can answer
//! `552 5.3.4` and continue.

/// Turns bare LF and bare CR into CRLF; CRLF passes unchanged. Streaming: state survives
/// chunk boundaries.
#[derive(Debug, Default)]
pub struct CrlfNormaliser {
    pending_cr: bool,
}

impl CrlfNormaliser {
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + 16);
        let mut i = 0;
        if self.pending_cr && !input.is_empty() {
            // The CR was written; a LF completes it, anything else makes it a bare CR.
            out.push(b'\n');
            if input[0] == b'\n' {
                i = 1;
            }
            self.pending_cr = false;
        }
        let mut start = i;
        // Jump from line end to line end (memchr), not byte by byte.
        while let Some(off) = memchr::memchr2(b'\r', b'\n', &input[i..]) {
            let j = i + off;
            if input[j] == b'\n' {
                // A bare LF (a CRLF is stepped over whole below).
                out.extend_from_slice(&input[start..j]);
                out.extend_from_slice(b"\r\n");
                i = j + 1;
                start = i;
                continue;
            }
            match input.get(j + 1) {
                Some(b'\n') => i = j + 2,
                Some(_) => {
                    out.extend_from_slice(&input[start..=j]);
                    out.push(b'\n');
                    i = j + 1;
                    start = i;
                }
                None => {
                    out.extend_from_slice(&input[start..=j]);
                    self.pending_cr = true;
                    return;
                }
            }
        }
        out.extend_from_slice(&input[start..]);
    }

    /// Completes a trailing bare CR.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr {
            out.push(b'\n');
            self.pending_cr = false;
        }
    }
}

/// What one call to [`BodyDecoder::ingest`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// More body bytes are needed.
    More,
    /// The terminating `CRLF.CRLF` was seen; the iterator points just past it.
    Done,
}

/// Where the decoder is relative to lines and the terminator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// After CRLF (or at the start of the body): a dot here is stuffing or the terminator.
    LineStart,
    /// Saw `.` at a line start.
    Dot,
    /// Saw `.` CR at a line start: LF now ends the data.
    DotCr,
    /// Inside a line.
    Mid,
    /// Saw CR inside a line.
    Cr,
}

/// Which line ends can end the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminator {
    /// Only `CRLF . CRLF` (RFC 5321): a dot after a bare LF or CR is body text.
    CrlfOnly,
    /// A bare LF ends a line too, so `LF . LF` (and `LF . CRLF`) ends the data: only for a
    /// session whose every command line ended in a bare LF.
    AlsoBareLf,
}

/// Decodes one message body. Feed it the bytes after `354`; it appends the decoded,
/// normalised body to the caller's buffer (to be flushed to the spool file).
pub struct BodyDecoder {
    state: State,
    terminator: Terminator,
    unstuffed: Vec<u8>,
    normaliser: CrlfNormaliser,
    size: u64,
    max_size: u64,
    oversized: bool,
}

impl BodyDecoder {
    /// A decoder for which only `CRLF . CRLF` ends the data.
    pub fn new(max_size: u64) -> Self {
        Self::with_terminator(max_size, Terminator::CrlfOnly)
    }

    /// A decoder with the given end-of-data rule (see [`Terminator`]).
    pub fn with_terminator(max_size: u64, terminator: Terminator) -> Self {
        BodyDecoder {
            state: State::LineStart,
            terminator,
            // One read's worth at a time, freed after each (see `ingest`).
            unstuffed: Vec::new(),
            normaliser: CrlfNormaliser::default(),
            size: 0,
            max_size,
            oversized: false,
        }
    }

    /// Consumes bytes from `input`, appending decoded body bytes to `out` (nothing once the
    /// size limit was passed). On [`Progress::Done`], `input` is left at the first byte after
    /// the end of data (pipelined commands).
    pub fn ingest(&mut self, input: &mut std::slice::Iter<'_, u8>, out: &mut Vec<u8>) -> Progress {
        let bytes = input.as_slice();
        let (used, done) = self.unstuff(bytes);
        *input = bytes[used..].iter();
        if !self.oversized {
            let start = out.len();
            self.normaliser.push(&self.unstuffed, out);
            if done {
                self.normaliser.finish(out);
            }
            self.size += (out.len() - start) as u64;
            if self.size > self.max_size {
                self.oversized = true;
                out.truncate(start);
            }
        }
        // Given back at once: a decoder waiting for the client's next block holds nothing.
        self.unstuffed = Vec::new();
        if done {
            Progress::Done
        } else {
            Progress::More
        }
    }

    /// Runs the state machine over `bytes`, writing unstuffed body bytes to `self.unstuffed`.
    /// Returns how many bytes were used and whether the terminator was seen.
    fn unstuff(&mut self, bytes: &[u8]) -> (usize, bool) {
        let bare_lf_ends_lines = self.terminator == Terminator::AlsoBareLf;
        let mut i = 0;
        while i < bytes.len() {
            if self.state == State::Mid {
                // Fast path: copy up to the next line end in one go.
                match memchr::memchr2(b'\r', b'\n', &bytes[i..]) {
                    None => {
                        self.unstuffed.extend_from_slice(&bytes[i..]);
                        return (bytes.len(), false);
                    }
                    Some(n) => {
                        self.unstuffed.extend_from_slice(&bytes[i..i + n]);
                        i += n;
                    }
                }
            }
            let b = bytes[i];
            i += 1;
            self.state = match (self.state, b) {
                (State::LineStart, b'.') => State::Dot,
                (State::Dot, b'\r') => State::DotCr,
                (State::DotCr, b'\n') => return (i, true),
                (State::Dot, b'\n') if bare_lf_ends_lines => return (i, true),
                (State::DotCr, _) => {
                    // `.` CR x: the dot was stuffing; the CR is body text.
                    self.unstuffed.push(b'\r');
                    self.after(b)
                }
                (State::Cr, b'\n') => {
                    self.unstuffed.push(b);
                    State::LineStart
                }
                (_, b'\n') if bare_lf_ends_lines => {
                    self.unstuffed.push(b);
                    State::LineStart
                }
                (_, _) => self.after(b),
            };
        }
        (bytes.len(), false)
    }

    /// Emits a body byte inside a line and returns the next state.
    fn after(&mut self, b: u8) -> State {
        self.unstuffed.push(b);
        if b == b'\r' {
            State::Cr
        } else {
            State::Mid
        }
    }

    /// Decoded size so far (stops growing once oversized).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The body passed the size limit; its bytes were discarded.
    pub fn oversized(&self) -> bool {
        self.oversized
    }
}

/// Dot-stuffing for sending a body (RFC 5321 §4.5.2), streaming. A dot is doubled when it
/// starts a line; like mail-send, a line start is any position after CR or LF, so a body
/// with stray line ends can never produce a terminator upstream. The state starts at a line
/// start (right after `DATA`'s CRLF), which mail-send's `write_message` gets wrong.
#[derive(Debug)]
pub struct DotStuffer {
    at_line_start: bool,
    last_two: [u8; 2],
    total: u64,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            at_line_start: true,
            last_two: [b'\r', b'\n'],
            total: 0,
        }
    }
}

impl DotStuffer {
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 64 + 4);
        if self.at_line_start && input.first() == Some(&b'.') {
            out.push(b'.');
        }
        let mut start = 0;
        let mut i = 0;
        // Only bytes after a line end can need a dot: jump between them (memchr).
        while let Some(off) = memchr::memchr2(b'\r', b'\n', &input[i..]) {
            let j = i + off;
            if input.get(j + 1) == Some(&b'.') {
                out.extend_from_slice(&input[start..=j]);
                out.push(b'.');
                start = j + 1;
            }
            i = j + 1;
        }
        out.extend_from_slice(&input[start..]);
        if let Some(&last) = input.last() {
            self.at_line_start = last == b'\r' || last == b'\n';
        }
        if let Some(&last) = input.last() {
            self.last_two = if input.len() >= 2 {
                [input[input.len() - 2], last]
            } else {
                [self.last_two[1], last]
            };
        }
        self.total += input.len() as u64;
    }

    /// The end-of-data marker to send after the body: the body's own final CRLF doubles as
    /// the CRLF before the dot, so a message is never given an extra blank line.
    pub fn terminator(&self) -> &'static [u8] {
        if self.total == 0 || self.last_two == *b"\r\n" {
            b".\r\n"
        } else {
            b"\r\n.\r\n"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-at-a-time definitions the fast (memchr) versions must equal.
    fn reference_crlf(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < input.len() {
            match input[i] {
                b'\r' if input.get(i + 1) == Some(&b'\n') => {
                    out.extend_from_slice(b"\r\n");
                    i += 1;
                }
                b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
                b => out.push(b),
            }
            i += 1;
        }
        out
    }

    fn reference_stuff(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at_start = true;
        for &b in input {
            if b == b'.' && at_start {
                out.push(b'.');
            }
            out.push(b);
            at_start = b == b'\r' || b == b'\n';
        }
        out
    }

    #[test]
    fn fast_paths_equal_the_byte_at_a_time_definitions_in_any_chunking() {
        let alphabet = b"ab.\r\n";
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..3000 {
            let len = (next() % 40) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let mut cuts: Vec<usize> = (0..(next() % 4))
                .map(|_| (next() as usize) % (len + 1))
                .collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut at = 0;
            for c in cuts {
                pieces.push(&input[at..c]);
                at = c;
            }
            pieces.push(&input[at..]);

            let mut n = CrlfNormaliser::default();
            let mut out = Vec::new();
            for p in &pieces {
                n.push(p, &mut out);
            }
            n.finish(&mut out);
            assert_eq!(
                out,
                reference_crlf(&input),
                "crlf {:?} in {pieces:?}",
                input
            );

            let mut d = DotStuffer::default();
            let mut out = Vec::new();
            for p in &pieces {
                d.push(p, &mut out);
            }
            assert_eq!(
                out,
                reference_stuff(&input),
                "stuff {:?} in {pieces:?}",
                input
            );
        }
    }

    /// Decodes `wire` fed in chunks of `chunk` bytes; returns (body, rest after the end).
    fn decode(wire: &[u8], chunk: usize, max: u64) -> (Vec<u8>, Vec<u8>, bool) {
        decode_with(wire, chunk, max, Terminator::CrlfOnly)
    }

    fn decode_with(
        wire: &[u8],
        chunk: usize,
        max: u64,
        terminator: Terminator,
    ) -> (Vec<u8>, Vec<u8>, bool) {
        let mut d = BodyDecoder::with_terminator(max, terminator);
        let mut out = Vec::new();
        for (n, piece) in wire.chunks(chunk).enumerate() {
            let mut iter = piece.iter();
            if d.ingest(&mut iter, &mut out) == Progress::Done {
                let mut rest = iter.as_slice().to_vec();
                for later in wire.chunks(chunk).skip(n + 1) {
                    rest.extend_from_slice(later);
                }
                return (out, rest, d.oversized());
            }
        }
        panic!("no end of data in {:?}", String::from_utf8_lossy(wire));
    }

    fn decode_all_splits(wire: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let whole = decode(wire, wire.len(), u64::MAX);
        for chunk in 1..wire.len().min(12) {
            let split = decode(wire, chunk, u64::MAX);
            assert_eq!(
                (&split.0, &split.1),
                (&whole.0, &whole.1),
                "chunk size {chunk}"
            );
        }
        (whole.0, whole.1)
    }

    #[test]
    fn plain_body_is_byte_exact() {
        let (body, rest) = decode_all_splits(b"Subject: hi\r\n\r\nhello\r\n.\r\nQUIT\r\n");
        assert_eq!(body, b"Subject: hi\r\n\r\nhello\r\n");
        assert_eq!(rest, b"QUIT\r\n");
    }

    #[test]
    fn dot_unstuffing_including_first_line() {
        let (body, _) = decode_all_splits(b"..first\r\nmid\r\n..\r\n...x\r\n.\r\n");
        assert_eq!(body, b".first\r\nmid\r\n.\r\n..x\r\n");
    }

    #[test]
    fn empty_body() {
        let (body, rest) = decode_all_splits(b".\r\nNOOP\r\n");
        assert_eq!(body, b"");
        assert_eq!(rest, b"NOOP\r\n");
    }

    #[test]
    fn smuggling_attempts_stay_in_the_body() {
        for sep in [&b"\n.\r\n"[..], b"\r.\r\n", b"\n.\n", b"\r\n.\n"] {
            let mut wire = b"Subject: a\r\n\r\nbody".to_vec();
            wire.extend_from_slice(sep);
            wire.extend_from_slice(
                b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\nsmuggled\r\n.\r\n",
            );
            let (body, rest) = decode_all_splits(&wire);
            assert!(rest.is_empty(), "ended early for {sep:?}");
            let text = String::from_utf8(body).unwrap();
            assert!(text.contains("MAIL FROM:<evil@x>\r\n"), "{text:?}");
            assert!(
                !text.contains('\n') || !text.replace("\r\n", "").contains('\n'),
                "bare LF left: {text:?}"
            );
            assert!(
                !text.replace("\r\n", "").contains('\r'),
                "bare CR left: {text:?}"
            );
        }
    }

    #[test]
    fn only_crlf_dot_crlf_ends_the_data() {
        // smtp-proto 0.2.5 ends on <CRLF>.<CR><CR><LF>; we must not.
        let wire = b"a\r\n.\r\r\nMAIL FROM:<evil@x>\r\n.\r\nQUIT\r\n";
        let (body, rest) = decode_all_splits(wire);
        assert_eq!(rest, b"QUIT\r\n");
        assert_eq!(body, b"a\r\n\r\n\r\nMAIL FROM:<evil@x>\r\n");
        // `.` followed by LF, or by text, at a line start: stuffing, not an end.
        let (body, _) = decode_all_splits(b"a\r\n.\nb\r\n.x\r\n.\r\n");
        assert_eq!(body, b"a\r\n\r\nb\r\nx\r\n");
    }

    /// As [`decode_all_splits`], for a session of bare LF line ends.
    fn decode_lf_session(wire: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let whole = decode_with(wire, wire.len(), u64::MAX, Terminator::AlsoBareLf);
        for chunk in 1..wire.len().min(12) {
            let split = decode_with(wire, chunk, u64::MAX, Terminator::AlsoBareLf);
            assert_eq!((&split.0, &split.1), (&whole.0, &whole.1), "chunk {chunk}");
        }
        (whole.0, whole.1)
    }

    #[test]
    fn in_a_bare_lf_session_lf_dot_lf_ends_the_data_and_dots_are_unstuffed() {
        let (body, rest) = decode_lf_session(b"Subject: scan\n\n..dot\npage\n.\nQUIT\n");
        assert_eq!(body, b"Subject: scan\r\n\r\n.dot\r\npage\r\n");
        assert_eq!(rest, b"QUIT\n");
        // CRLF still works, and so does a mix; the very first line may be the end.
        let (body, rest) = decode_lf_session(b"a\r\nb\n.\r\nNOOP\n");
        assert_eq!((&body[..], &rest[..]), (&b"a\r\nb\r\n"[..], &b"NOOP\n"[..]));
        let (body, rest) = decode_lf_session(b".\nNOOP\n");
        assert_eq!((&body[..], &rest[..]), (&b""[..], &b"NOOP\n"[..]));
        // A bare CR is still no line end: `CR . CR` and `CR . LF` are text.
        let (body, _) = decode_lf_session(b"a\r.\rb\r.\nc\n.\n");
        assert_eq!(body, b"a\r\n.\r\nb\r\n.\r\nc\r\n");
        // `.x` at a line start is stuffing, `..` a dot.
        let (body, _) = decode_lf_session(b".x\n..\n.\n");
        assert_eq!(body, b"x\r\n.\r\n");
    }

    #[test]
    fn the_bare_lf_rule_is_off_unless_asked_for() {
        // The same bytes in a CRLF session: LF . LF is body text, the data goes on.
        let (body, rest) = decode_all_splits(b"page\n.\nMAIL FROM:<evil@x>\r\n.\r\nQUIT\r\n");
        assert_eq!(body, b"page\r\n.\r\nMAIL FROM:<evil@x>\r\n");
        assert_eq!(rest, b"QUIT\r\n");
    }

    #[test]
    fn bare_line_ends_are_normalised() {
        let (body, _) = decode_all_splits(b"a\nb\rc\r\r\nd\n\n\r\n.\r\n");
        assert_eq!(body, b"a\r\nb\r\nc\r\n\r\nd\r\n\r\n\r\n");
    }

    #[test]
    fn normaliser_streaming() {
        let mut n = CrlfNormaliser::default();
        let mut out = Vec::new();
        n.push(b"x\r", &mut out);
        n.push(b"\ny\r", &mut out);
        n.push(b"z", &mut out);
        n.push(b"\r", &mut out);
        n.finish(&mut out);
        assert_eq!(out, b"x\r\ny\r\nz\r\n");
    }

    #[test]
    fn size_limit_discards_and_still_finds_the_end() {
        let mut wire = vec![b'a'; 100];
        wire.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
        let (body, rest, oversized) = decode(&wire, 7, 50);
        assert!(oversized);
        assert!(body.len() <= 50);
        assert_eq!(rest, b"QUIT\r\n");
        let (_, _, oversized) = decode(&wire, 7, 102);
        assert!(!oversized, "exactly at the limit is fine");
    }

    fn stuff(chunks: &[&[u8]]) -> Vec<u8> {
        let mut s = DotStuffer::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        out.extend_from_slice(s.terminator());
        out
    }

    #[test]
    fn stuffing_round_trips_through_the_decoder() {
        let bodies: [&[u8]; 6] = [
            b".first\r\nx\r\n.\r\n..\r\n",
            b"",
            b"no final newline",
            b"a\r\n",
            b"x\r\n.\r",
            b"line\r\n.",
        ];
        for body in bodies {
            // The spool only ever holds normalised bodies.
            let mut normalised = Vec::new();
            let mut n = CrlfNormaliser::default();
            n.push(body, &mut normalised);
            n.finish(&mut normalised);
            let body = &normalised[..];
            for split in 0..=body.len() {
                let wire = stuff(&[&body[..split], &body[split..]]);
                let (decoded, rest, _) = decode(&wire, 3, u64::MAX);
                assert!(rest.is_empty());
                // A body not ending in a line end gains exactly one CRLF (RFC 5321 §4.1.1.4).
                let mut expected = body.to_vec();
                if !expected.is_empty() && !expected.ends_with(b"\r\n") {
                    expected.extend_from_slice(b"\r\n");
                }
                assert_eq!(
                    decoded,
                    expected,
                    "body {:?} split {split}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }

    #[test]
    fn stuffing_neutralises_smuggling_line_ends() {
        assert_eq!(stuff(&[b"A: \n.\r\nMAIL"]), b"A: \n..\r\nMAIL\r\n.\r\n");
        assert_eq!(stuff(&[b"A: \r.\r\nMAIL"]), b"A: \r..\r\nMAIL\r\n.\r\n");
        assert_eq!(stuff(&[b"a\r\n"]), b"a\r\n.\r\n");
    }
}
