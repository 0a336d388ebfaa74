//! The segment log's record format, and the parser that reads it back (pure: no I/O).
//!
//! ```text
//! offset  size  field
//! 0       4     magic "SRQ1"
//! 4       1     kind: 1 = message, 2 = done
//! 5       3     zero
//! 8       4     payload length, little-endian
//! 12      4     CRC-32 of bytes 4..12 and of the payload, little-endian
//! 16      n     payload
//! ```
//! A message's payload is the envelope's length (4 bytes, little-endian), the envelope (the
//! queue entry as JSON) and the body. A done record's payload is the message id.
//!
//! Reading stops at the first record that is not whole and correct: a write torn by a crash
//! (the file ends inside it), or bytes that are not a record. Nothing after it is read, ever:
//! a message body may contain bytes that look like records, and only the chain of whole
//! records from the start of the file says where records begin. The writer keeps that true:
//! a record whose write failed ends its segment (see `log.rs`), so a bad record can only be
//! the last thing in a file, and it never got a `250`.

pub const MAGIC: [u8; 4] = *b"SRQ1";
pub const HEADER: usize = 16;
/// No record is larger: a length beyond it is damage, not a record.
pub const MAX_PAYLOAD: usize = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Message = 1,
    Done = 2,
}

impl Kind {
    fn of(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Message),
            2 => Some(Kind::Done),
            _ => None,
        }
    }
}

/// One record read back: where it starts in the file, and its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub offset: usize,
    pub kind: Kind,
    pub payload: &'a [u8],
}

impl Record<'_> {
    /// Where the payload starts in the file.
    pub fn payload_offset(&self) -> usize {
        self.offset + HEADER
    }
}

/// What [`parse`] found: the whole records, and how many bytes of the file they fill.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub records: Vec<Record<'a>>,
    /// Bytes from the start that are whole records; anything after is not read.
    pub valid: usize,
}

impl Parsed<'_> {
    /// Whether bytes follow the last whole record (a torn or damaged tail).
    pub fn has_tail(&self, len: usize) -> bool {
        self.valid < len
    }
}

/// Encodes one record of `kind` whose payload is `parts`, one after the other.
pub fn encode(kind: Kind, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    assert!(len <= MAX_PAYLOAD, "a spool record of {len} bytes");
    let mut out = Vec::with_capacity(HEADER + len);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[kind as u8, 0, 0, 0]);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[4..12]);
    for p in parts {
        crc.update(p);
    }
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

/// A message record: the envelope and the body.
pub fn message(envelope: &[u8], body: &[u8]) -> Vec<u8> {
    let env_len = (envelope.len() as u32).to_le_bytes();
    encode(Kind::Message, &[&env_len, envelope, body])
}

/// A done record: message `id` needs nothing more from its segment.
pub fn done(id: &str) -> Vec<u8> {
    encode(Kind::Done, &[id.as_bytes()])
}

/// Where, in a message record's payload, the body starts; and the envelope. `None` if the
/// payload is not a message's.
pub fn split_message(payload: &[u8]) -> Option<(&[u8], usize)> {
    let len = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let envelope = payload.get(4..4 + len)?;
    Some((envelope, 4 + len))
}

/// Reads the whole records at the start of `buf`, up to the first that is not.
pub fn parse(buf: &[u8]) -> Parsed<'_> {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(record) = one(buf, at) {
        at += HEADER + record.payload.len();
        records.push(record);
    }
    Parsed { records, valid: at }
}

fn one(buf: &[u8], at: usize) -> Option<Record<'_>> {
    let header = buf.get(at..at + HEADER)?;
    if header[..4] != MAGIC || header[5..8] != [0, 0, 0] {
        return None;
    }
    let kind = Kind::of(header[4])?;
    let len = u32::from_le_bytes(header[8..12].try_into().ok()?) as usize;
    if len > MAX_PAYLOAD {
        return None;
    }
    let stored = u32::from_le_bytes(header[12..16].try_into().ok()?);
    let payload = buf.get(at + HEADER..at + HEADER + len)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[4..12]);
    crc.update(payload);
    if crc.finalize() != stored {
        return None;
    }
    if kind == Kind::Message && split_message(payload).is_none() {
        return None;
    }
    Some(Record {
        offset: at,
        kind,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(records: &[Vec<u8>]) -> Vec<u8> {
        records.concat()
    }

    #[test]
    fn records_read_back_as_written() {
        let a = message(b"{\"id\":\"a\"}", b"Subject: a\r\n\r\nbody\r\n");
        let b = done("a");
        let c = message(b"{}", b"");
        let buf = file(&[a.clone(), b.clone(), c.clone()]);
        let parsed = parse(&buf);
        assert_eq!(parsed.valid, buf.len());
        assert!(!parsed.has_tail(buf.len()));
        let kinds: Vec<Kind> = parsed.records.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, [Kind::Message, Kind::Done, Kind::Message]);
        let (env, body_at) = split_message(parsed.records[0].payload).unwrap();
        assert_eq!(env, b"{\"id\":\"a\"}");
        assert_eq!(
            &parsed.records[0].payload[body_at..],
            b"Subject: a\r\n\r\nbody\r\n"
        );
        assert_eq!(parsed.records[1].payload, b"a");
        assert_eq!(parsed.records[2].offset, a.len() + b.len());
        let start = parsed.records[0].payload_offset() + body_at;
        assert_eq!(&buf[start..start + 4], b"Subj");
    }

    #[test]
    fn a_record_cut_at_any_byte_is_dropped_and_the_ones_before_are_kept() {
        let whole = [
            message(b"{\"id\":\"1\"}", b"one\r\n"),
            message(b"{\"id\":\"2\"}", &[b'x'; 300]),
            done("1"),
        ];
        let buf = file(&whole);
        let last = whole[2].len();
        let before = buf.len() - last;
        for cut in before..buf.len() {
            let parsed = parse(&buf[..cut]);
            assert_eq!(parsed.records.len(), 2, "cut at {cut}");
            assert_eq!(parsed.valid, before, "cut at {cut}");
        }
        // And every cut of every record: only whole records, always a prefix.
        for cut in 0..=buf.len() {
            let parsed = parse(&buf[..cut]);
            let ends: Vec<usize> = whole
                .iter()
                .scan(0, |at, r| {
                    *at += r.len();
                    Some(*at)
                })
                .collect();
            let expect = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(parsed.records.len(), expect, "cut at {cut}");
        }
    }

    #[test]
    fn any_flipped_byte_ends_the_chain_there() {
        let a = message(b"{\"id\":\"1\"}", b"one\r\n");
        let b = message(b"{\"id\":\"2\"}", b"two\r\n");
        let buf = file(&[a.clone(), b.clone()]);
        for i in a.len()..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x20;
            let parsed = parse(&bad);
            assert_eq!(parsed.records.len(), 1, "byte {i} flipped");
            assert_eq!(parsed.valid, a.len());
        }
    }

    #[test]
    fn a_record_inside_a_body_is_not_read_after_damage() {
        // A body that carries a whole forged record: after the real record is torn, the
        // parser must not find the forgery by looking for the magic.
        let forged = message(b"{\"id\":\"forged\"}", b"x");
        let mut body = b"Subject: hi\r\n\r\n".to_vec();
        body.extend_from_slice(&forged);
        let real = message(b"{\"id\":\"real\"}", &body);
        let cut = real.len() - 1;
        let parsed = parse(&real[..cut]);
        assert!(parsed.records.is_empty());
        assert_eq!(parsed.valid, 0);
        assert!(parsed.has_tail(cut));
    }

    #[test]
    fn zeros_and_lengths_beyond_the_limit_are_not_records() {
        assert!(parse(&[0u8; 64]).records.is_empty());
        let mut huge = message(b"{}", b"x");
        huge[8..12].copy_from_slice(&((MAX_PAYLOAD as u32) + 1).to_le_bytes());
        assert!(parse(&huge).records.is_empty());
        // A message payload whose envelope length runs past its end.
        let bad = encode(Kind::Message, &[&100u32.to_le_bytes(), b"{}"]);
        assert!(parse(&bad).records.is_empty());
    }
}
