//! Reading the segment log back from disk: by the relay at start-up, before it owns the log,
//! and by the `queue` commands beside a running relay (which only read here; their changes
//! go to `log/edits/`, see `log.rs`).

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use super::entry::QueueEntry;
use super::record::{self, Kind};

/// One segment's files.
#[derive(Debug, Clone)]
pub struct SegmentFiles {
    pub seq: u64,
    pub path: PathBuf,
    pub done: PathBuf,
}

impl SegmentFiles {
    pub fn new(dir: &Path, seq: u64) -> SegmentFiles {
        SegmentFiles {
            seq,
            path: dir.join(format!("{seq:016x}.seg")),
            done: dir.join(format!("{seq:016x}.done")),
        }
    }
}

/// A message of a segment that is not done, and where its body is.
#[derive(Debug, Clone)]
pub struct LiveMessage {
    pub entry: QueueEntry,
    pub body_offset: u64,
    pub body_len: u64,
}

/// What one segment holds.
#[derive(Debug, Default)]
pub struct ReadSegment {
    /// Messages not marked done, in the order written.
    pub live: Vec<LiveMessage>,
    /// Bytes after the last whole record of the segment, if any (a write a crash tore: it
    /// never got a `250`).
    pub torn: Option<(usize, usize)>,
    /// Whole bytes of the done file, and its length (more means a torn done record).
    pub done_valid: usize,
    pub done_len: usize,
    /// Message records whose envelope cannot be read (with valid CRCs: another version's?).
    pub unreadable: usize,
}

/// The segments under `dir`, oldest first. Files that are not segments are not listed.
pub fn segments(dir: &Path) -> io::Result<Vec<SegmentFiles>> {
    let mut out = Vec::new();
    for name in names_in(dir)? {
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        else {
            continue;
        };
        out.push(SegmentFiles::new(dir, seq));
    }
    out.sort_by_key(|s| s.seq);
    Ok(out)
}

/// The names in `dir`; none if it does not exist (a spool from before the log).
fn names_in(dir: &Path) -> io::Result<Vec<std::ffi::OsString>> {
    match std::fs::read_dir(dir) {
        Ok(items) => items.map(|i| i.map(|i| i.file_name())).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The done files under `dir` whose segment is gone (a reclaim cut short).
pub fn orphan_done_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let path = item?.path();
        if path.extension().is_some_and(|e| e == "done") && !path.with_extension("seg").exists() {
            out.push(path);
        }
    }
    Ok(out)
}

/// Reads a segment and its done file. A segment that vanished meanwhile (reclaimed by the
/// relay while a `queue` command reads) reads as empty.
pub fn read_segment(files: &SegmentFiles) -> io::Result<ReadSegment> {
    // The done file first: read after the segment, a reclaim in between (done file gone)
    // would show every message of it as live.
    let done_bytes = match std::fs::read(&files.done) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let bytes = match std::fs::read(&files.path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ReadSegment::default()),
        Err(e) => return Err(e),
    };
    let done = record::parse(&done_bytes);
    let finished = done_ids(&done_bytes);
    let parsed = record::parse(&bytes);
    let mut out = ReadSegment {
        torn: parsed
            .has_tail(bytes.len())
            .then_some((parsed.valid, bytes.len())),
        done_valid: done.valid,
        done_len: done_bytes.len(),
        ..ReadSegment::default()
    };
    for r in parsed.records.iter().filter(|r| r.kind == Kind::Message) {
        let Some((envelope, body_at)) = record::split_message(r.payload) else {
            continue;
        };
        let entry: QueueEntry = match serde_json::from_slice(envelope) {
            Ok(e) => e,
            Err(_) => {
                out.unreadable += 1;
                continue;
            }
        };
        if finished.contains(entry.id.as_bytes()) {
            continue;
        }
        out.live.push(LiveMessage {
            entry,
            body_offset: (r.payload_offset() + body_at) as u64,
            body_len: (r.payload.len() - body_at) as u64,
        });
    }
    Ok(out)
}

/// The ids a done file names.
pub fn done_ids(bytes: &[u8]) -> HashSet<&[u8]> {
    record::parse(bytes)
        .records
        .iter()
        .filter(|r| r.kind == Kind::Done)
        .map(|r| r.payload)
        .collect()
}

/// Changes the `queue` commands asked for on messages in the log, which they cannot write:
/// `<id>.json` with `<id>.eml` (the message with a new envelope), or `<id>.deleted`.
#[derive(Debug, Default)]
pub struct Edits {
    pub changed: HashSet<String>,
    pub deleted: HashSet<String>,
}

/// Reads `log/edits/`. Half-written edits (`.tmp`, or a `.json` without `.eml`) are not
/// edits.
pub fn edits(dir: &Path) -> io::Result<Edits> {
    let mut out = Edits::default();
    for name in names_in(dir)? {
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name.strip_suffix(".deleted") {
            out.deleted.insert(id.to_owned());
        } else if let Some(id) = name.strip_suffix(".json") {
            if dir.join(format!("{id}.eml")).exists() {
                out.changed.insert(id.to_owned());
            }
        }
    }
    Ok(out)
}

/// Reads a body of `len` bytes at `offset` of a segment.
pub fn read_at(file: &std::fs::File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}
