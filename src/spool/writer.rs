//! The segment log's one writer: a thread of its own that takes commits and done records
//! from a channel, writes all that are waiting, and syncs once for all of them (group
//! commit), then answers each.
//!
//! Why a thread and not the blocking pool: with a trip to the pool per commit (and one per
//! shared sync), `perf` put the pool's spawning and wake-ups at more than a quarter of the
//! relay's CPU in queue mode. One thread that drains its channel batches by itself: while
//! it syncs, the next commits queue up, and they are written and synced together.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use crate::sync::Lock as _;

use super::entry::QueueEntry;
use super::files::{remove_if_exists, sync_dir, FILE_MODE};
use super::log_read::SegmentFiles;
use super::record;

/// A segment is closed after this many bytes, and a new one started.
pub const SEGMENT_MAX: u64 = 8 << 20;
/// The most operations written and synced together.
const BATCH_MAX: usize = 1024;

/// A message in the log, and where its body is.
#[derive(Debug, Clone)]
pub struct Held {
    pub seq: u64,
    pub body_offset: u64,
    pub body_len: u64,
    pub entry: QueueEntry,
}

#[derive(Debug)]
pub(super) struct Segment {
    pub file: Arc<File>,
    pub done: Arc<File>,
    pub files: SegmentFiles,
    pub live: usize,
}

/// What the writer and the readers share.
#[derive(Debug)]
pub(super) struct State {
    pub active: u64,
    /// Bytes written to the active segment.
    pub len: u64,
    /// A write or sync failed: the next commit starts a new segment.
    pub broken: bool,
    pub segments: BTreeMap<u64, Segment>,
    pub index: HashMap<String, Held>,
    /// Messages taken out of the log lately because they moved to a file of their own
    /// (newest last, a few thousand at most): an edit applied at the same moment must not
    /// take that file for a delivered message's left-over.
    pub moved: std::collections::VecDeque<String>,
}

/// How many recent moves [`State::moved`] remembers.
const MOVED_KEPT: usize = 4096;

/// Where an answer goes: an async caller, or a blocking one (re-reading the queue).
pub(super) enum Reply<T> {
    Async(tokio::sync::oneshot::Sender<io::Result<T>>),
    Blocking(mpsc::Sender<io::Result<T>>),
}

impl<T> Reply<T> {
    fn send(self, result: io::Result<T>) {
        // A caller that went away (its client hung up) needs no answer.
        let _ = match self {
            Reply::Async(tx) => tx.send(result).map_err(|_| ()),
            Reply::Blocking(tx) => tx.send(result).map_err(|_| ()),
        };
    }
}

pub(super) struct Append {
    pub record: Vec<u8>,
    /// Where the body starts in `record`.
    pub body_at: u64,
    pub entry: QueueEntry,
    pub reply: Reply<()>,
}

pub(super) enum Op {
    Append(Box<Append>),
    /// Done records for these messages; answers how many this took out of the log.
    /// `moved`: they leave for files of their own in `queue/`, not delivered or failed.
    Finish {
        ids: Vec<String>,
        moved: bool,
        reply: Reply<usize>,
    },
}

pub(super) struct Writer {
    pub dir: PathBuf,
    pub state: Arc<Mutex<State>>,
    pub fsyncs: Arc<AtomicU64>,
}

impl Writer {
    /// Runs until every sender is gone, answering every operation it took.
    pub fn run(self, ops: mpsc::Receiver<Op>) {
        while let Ok(first) = ops.recv() {
            let mut batch = vec![first];
            while batch.len() < BATCH_MAX {
                match ops.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.process(batch);
        }
    }

    fn process(&self, batch: Vec<Op>) {
        let mut appends = Vec::new();
        let mut finishes = Vec::new();
        let mut written: Vec<Arc<File>> = Vec::new();
        // A segment whose sync failed while rolling: its records of this batch may be lost
        // (and a second sync would not say so: Linux reports a writeback error once).
        let mut poisoned = None;
        for op in batch {
            match op {
                Op::Append(a) => {
                    let result = self.write(&a, &mut written, &mut poisoned);
                    appends.push((a, result));
                }
                Op::Finish { ids, moved, reply } => finishes.push((ids, moved, reply)),
            }
        }
        let synced = sync_each(&written);
        let lost = |held: &Held| synced.is_err() || poisoned == Some(held.seq);
        self.fsyncs
            .fetch_add(written.len() as u64, Ordering::Relaxed);
        let mut done_files = Vec::new();
        if synced.is_err() || poisoned.is_some() {
            // Whether these records reached the disk is unknown: they must not be
            // delivered later as if accepted (their clients hear 451 and send again).
            let mut s = self.state.locked();
            s.broken = true;
            for (a, held) in &appends {
                if let Some(held) = held.as_ref().ok().filter(|h| lost(h)) {
                    if let Some(segment) = s.segments.get_mut(&held.seq) {
                        segment.live = segment.live.saturating_sub(1);
                        if append_done(&segment.done, &a.entry.id).is_ok() {
                            done_files.push(segment.done.clone());
                        }
                    }
                }
            }
        }
        let mut marked = Vec::new();
        for (ids, moved, reply) in finishes {
            let result = ids.iter().try_for_each(|id| {
                let file = self.mark(id)?;
                done_files.extend(file);
                Ok(())
            });
            marked.push((ids, moved, reply, result));
        }
        let done_synced = sync_each(&done_files);
        // Answers: commits first (their clients wait for a 250), then the done records.
        for (a, held) in appends {
            let result = match held {
                Ok(held) if !lost(&held) => {
                    self.state.locked().index.insert(a.entry.id.clone(), held);
                    Ok(())
                }
                Ok(_) => Err(match &synced {
                    Err(e) => copy(e),
                    Ok(()) => io::Error::other("the spool segment could not be synced"),
                }),
                Err(e) => Err(e),
            };
            a.reply.send(result);
        }
        for (ids, moved, reply, result) in marked {
            let result = match (result, &done_synced) {
                (Err(e), _) => Err(e),
                (Ok(()), Err(e)) => Err(copy(e)),
                (Ok(()), Ok(())) => {
                    let (taken, gone) = self.forget(&ids, moved);
                    gone.iter().for_each(reclaim);
                    Ok(taken)
                }
            };
            reply.send(result);
        }
    }

    /// Writes one message record at the end of the active segment.
    fn write(
        &self,
        a: &Append,
        written: &mut Vec<Arc<File>>,
        poisoned: &mut Option<u64>,
    ) -> io::Result<Held> {
        let mut s = self.state.locked();
        let len = a.record.len() as u64;
        if s.broken || (s.len > 0 && s.len + len > SEGMENT_MAX) {
            let old = s.active;
            if let Err(e) = s.segments[&old].file.sync_data() {
                *poisoned = Some(old);
                s.broken = true;
                return Err(e);
            }
            roll(&self.dir, &mut s).inspect_err(|_| s.broken = true)?;
        }
        let offset = s.len;
        let active = s.active;
        let segment = s.segments.get_mut(&active).expect("the active segment");
        if let Err(e) = segment.file.write_all_at(&a.record, offset) {
            // Cut the partial record off if we can; either way the segment ends here.
            let _ = segment.file.set_len(offset);
            s.broken = true;
            return Err(e);
        }
        segment.live += 1;
        if !written.iter().any(|f| Arc::ptr_eq(f, &segment.file)) {
            written.push(segment.file.clone());
        }
        s.len += len;
        Ok(Held {
            seq: active,
            body_offset: offset + a.body_at,
            body_len: len - a.body_at,
            entry: a.entry.clone(),
        })
    }

    /// Appends a done record for `id` to its segment's done file; returns the file, to
    /// sync, or `None` if `id` is not in the log.
    fn mark(&self, id: &str) -> io::Result<Option<Arc<File>>> {
        let s = self.state.locked();
        let Some(seq) = s.index.get(id).map(|h| h.seq) else {
            return Ok(None);
        };
        let done = s.segments[&seq].done.clone();
        append_done(&done, id)?;
        Ok(Some(done))
    }

    /// Drops finished messages from the index: how many were there, and the segments now
    /// to remove.
    fn forget(&self, ids: &[String], moved: bool) -> (usize, Vec<SegmentFiles>) {
        let mut s = self.state.locked();
        let mut gone = Vec::new();
        let mut taken = 0;
        for id in ids {
            let Some(held) = s.index.remove(id) else {
                continue;
            };
            taken += 1;
            if moved {
                if s.moved.len() == MOVED_KEPT {
                    s.moved.pop_front();
                }
                s.moved.push_back(id.clone());
            }
            let active = s.active;
            let Some(segment) = s.segments.get_mut(&held.seq) else {
                continue;
            };
            segment.live = segment.live.saturating_sub(1);
            if segment.live == 0 && held.seq != active {
                if let Some(segment) = s.segments.remove(&held.seq) {
                    gone.push(segment.files);
                }
            }
        }
        (taken, gone)
    }
}

/// Appends a done record; one that fails part-way is cut off again, or the records after
/// it would never be read (the reader stops at the first that is not whole).
fn append_done(done: &File, id: &str) -> io::Result<()> {
    use std::io::Write;
    let before = done.metadata()?.len();
    let mut file = done;
    file.write_all(&record::done(id)).inspect_err(|_| {
        let _ = done.set_len(before);
    })
}

/// Syncs each file once.
fn sync_each(files: &[Arc<File>]) -> io::Result<()> {
    let mut synced: Vec<*const File> = Vec::new();
    for f in files {
        if !synced.contains(&Arc::as_ptr(f)) {
            f.sync_data()?;
            synced.push(Arc::as_ptr(f));
        }
    }
    Ok(())
}

/// An error for each of several callers (`io::Error` is not `Clone`).
fn copy(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

/// Closes the active segment and starts the next. The caller has synced the old one:
/// records written to it in this batch are then durable whatever the batch syncs.
fn roll(dir: &Path, s: &mut State) -> io::Result<()> {
    let old = s.active;
    let next = old + 1;
    let segment = create_segment(dir, next)
        .and_then(|segment| sync_dir(dir).map(|()| segment))
        .inspect_err(|_| {
            // Half made: gone again, so that the next try can make it.
            let files = SegmentFiles::new(dir, next);
            let _ = remove_if_exists(&files.path);
            let _ = remove_if_exists(&files.done);
        })?;
    s.segments.insert(next, segment);
    s.active = next;
    s.len = 0;
    s.broken = false;
    if s.segments[&old].live == 0 {
        if let Some(gone) = s.segments.remove(&old) {
            reclaim(&gone.files);
        }
    }
    Ok(())
}

pub(super) fn open_done(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .open(path)
}

pub(super) fn create_segment(dir: &Path, seq: u64) -> io::Result<Segment> {
    let files = SegmentFiles::new(dir, seq);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&files.path)?;
    let done = open_done(&files.done)?;
    Ok(Segment {
        file: Arc::new(file),
        done: Arc::new(done),
        files,
        live: 0,
    })
}

/// Removes a segment nothing needs: the segment first, so that a crash between the two
/// leaves a done file without segment (removed at the next start), never a segment whose
/// done records are gone.
pub(super) fn reclaim(files: &SegmentFiles) {
    let dir = files.path.parent().unwrap_or(Path::new("."));
    let removed = remove_if_exists(&files.path)
        .and_then(|()| sync_dir(dir))
        .and_then(|()| remove_if_exists(&files.done));
    if let Err(e) = removed {
        tracing::warn!(segment = %files.path.display(), error = %e, "cannot remove a finished spool segment");
    }
}
