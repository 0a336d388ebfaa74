//! The segment log: where queue mode commits small messages (bodies up to
//! [`SEGMENT_BODY_MAX`]), many to a file, so that a `250` costs one shared `fdatasync`
//! instead of files created, renamed, fsync'd and unlinked per message (issue 14; the
//! measurements are in the architecture notes).
//!
//! ```text
//! log/lock                   held (flock) by the one relay that writes the log
//! log/<seq>.seg              records appended: messages (envelope + body), CRC each
//! log/<seq>.done             done records: ids that need nothing more from <seq>.seg
//! log/edits/<id>.json|.eml   a `queue` command's new envelope for a message in the log
//! log/edits/<id>.deleted     a `queue delete` of a message in the log
//! ```
//! - **Commit**: the record goes to the log's one writer thread (`writer.rs`), which writes
//!   every record waiting at the end of the active segment and then `fdatasync`s once for
//!   all of them (group commit) before it answers: the `250` comes after. A new segment
//!   starts after [`SEGMENT_MAX`](super::writer::SEGMENT_MAX) bytes; the old one is synced
//!   first and the directory after the new file is made.
//! - **Done**: delivered, failed (its copy in `failed/` made first) or moved out: a done
//!   record in the segment's done file, group-committed too. A segment that is no longer
//!   the active one and has nothing live is removed, with its done file.
//! - **Moved out**: a message that must wait for a retry leaves the log for a file of its
//!   own in `queue/` (the older one-file-per-message format, which stays for large bodies,
//!   for `sendmail` and for spools written before the log), so that one slow message does
//!   not keep a whole segment on disk. A message found in the log and in `queue/` or
//!   `failed/` is the file's: the move was cut short after the file was made.
//! - **Torn writes**: a record whose write fails ends its segment (the next commit starts a
//!   new one), so a damaged record is always the last of its file, and the reader stops
//!   there (`record.rs`). It never got a `250`.
//! - **One writer**: the relay that holds `log/lock`. The `queue` commands read the log and
//!   leave their changes in `log/edits/`, which the relay applies when it re-reads the queue
//!   ([`Log::absorb_edits`]) or at its next start.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use crate::sync::Lock as _;

use super::body::MEMORY_BODY_MAX;
use super::entry::QueueEntry;
use super::files::{private_dir, remove_if_exists, sync_dir, FILE_MODE};
use super::log_read;
use super::record;
pub use super::writer::Held;
use super::writer::{create_segment, open_done, Append, Op, Reply, Segment, State, Writer};

/// The largest body committed to the log; larger ones keep a file of their own.
pub const SEGMENT_BODY_MAX: usize = MEMORY_BODY_MAX;

pub struct Log {
    dir: PathBuf,
    state: Arc<Mutex<State>>,
    ops: Option<mpsc::Sender<Op>>,
    writer: Option<std::thread::JoinHandle<()>>,
    fsyncs: Arc<AtomicU64>,
    /// Held for as long as the log is open; released after the writer has stopped.
    _lock: File,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("dir", &self.dir).finish()
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        // The writer answers what it has taken and stops; only then is the lock released.
        drop(self.ops.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// What opening the log found, for the start-up log lines.
#[derive(Debug, Default)]
pub struct Recovered {
    pub segments: usize,
    pub live: usize,
}

impl Log {
    /// Opens the log under `dir` (creating it), takes the writer's lock, and reads back
    /// every message not yet done. Starts a new active segment.
    pub fn open(dir: &Path) -> io::Result<(Log, Recovered)> {
        private_dir(dir)?;
        private_dir(&dir.join("edits"))?;
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .open(dir.join("lock"))?;
        if let Err(e) = lock.try_lock() {
            return Err(match e {
                std::fs::TryLockError::WouldBlock => io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!(
                        "another relay process is using the spool's log (its lock {} is held); one spool serves one relay",
                        dir.join("lock").display()
                    ),
                ),
                std::fs::TryLockError::Error(e) => e,
            });
        }
        for item in std::fs::read_dir(dir.join("edits"))? {
            let path = item?.path();
            // Half-written edits, and an envelope whose body was already moved to `queue/`
            // when a crash came (that edit is lost; its message is still in the log).
            let stray = path.extension().is_some_and(|e| e == "tmp")
                || (path.extension().is_some_and(|e| e == "json")
                    && !path.with_extension("eml").exists());
            if stray {
                remove_if_exists(&path)?;
            }
        }
        for orphan in log_read::orphan_done_files(dir)? {
            remove_if_exists(&orphan)?;
        }
        let mut recovered = Recovered::default();
        let mut segments = BTreeMap::new();
        let mut index = HashMap::new();
        let mut last = 0;
        for files in log_read::segments(dir)? {
            last = files.seq;
            let read = log_read::read_segment(&files)?;
            if let Some((valid, len)) = read.torn {
                tracing::warn!(
                    segment = %files.path.display(),
                    dropped_bytes = len - valid,
                    "dropped a partial record at the end of a spool segment (a write cut short; its client never got a 250)"
                );
            }
            if read.unreadable > 0 {
                tracing::error!(
                    segment = %files.path.display(),
                    messages = read.unreadable,
                    "spool segment holds messages whose envelope cannot be read; the segment is kept"
                );
            }
            let live = read.live.len() + read.unreadable;
            if live == 0 {
                remove_if_exists(&files.path)?;
                remove_if_exists(&files.done)?;
                continue;
            }
            let done = open_done(&files.done)?;
            if read.done_valid < read.done_len {
                // A done record torn by a crash: cut it, or later ones would follow it
                // unread. Its message is live again (sent once more at worst).
                done.set_len(read.done_valid as u64)?;
            }
            let file = File::open(&files.path)?;
            for m in read.live {
                index.insert(
                    m.entry.id.clone(),
                    Held {
                        seq: files.seq,
                        body_offset: m.body_offset,
                        body_len: m.body_len,
                        entry: m.entry,
                    },
                );
            }
            recovered.segments += 1;
            segments.insert(
                files.seq,
                Segment {
                    file: Arc::new(file),
                    done: Arc::new(done),
                    files,
                    live,
                },
            );
        }
        recovered.live = index.len();
        let active = last + 1;
        let first = create_segment(dir, active)?;
        segments.insert(active, first);
        sync_dir(dir)?;
        let state = Arc::new(Mutex::new(State {
            active,
            len: 0,
            broken: false,
            segments,
            index,
            moved: Default::default(),
        }));
        let fsyncs = Arc::new(AtomicU64::new(0));
        let (ops, receiver) = mpsc::channel();
        let writer = Writer {
            dir: dir.to_owned(),
            state: state.clone(),
            fsyncs: fsyncs.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("spool-log".into())
            .spawn(move || writer.run(receiver))?;
        Ok((
            Log {
                dir: dir.to_owned(),
                state,
                ops: Some(ops),
                writer: Some(writer),
                fsyncs,
                _lock: lock,
            },
            recovered,
        ))
    }

    /// The messages in the log.
    pub fn entries(&self) -> Vec<QueueEntry> {
        let s = self.state.locked();
        s.index.values().map(|h| h.entry.clone()).collect()
    }

    /// The messages in the log with the segment each body is in.
    pub fn held(&self) -> Vec<(Held, PathBuf)> {
        let s = self.state.locked();
        s.index
            .values()
            .map(|h| (h.clone(), s.segments[&h.seq].files.path.clone()))
            .collect()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.state.locked().index.contains_key(id)
    }

    /// Fsyncs of segments run (group commit keeps this far below the commits).
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    fn send(&self, op: Op) -> io::Result<()> {
        self.ops
            .as_ref()
            .and_then(|ops| ops.send(op).ok())
            .ok_or_else(|| io::Error::other("the spool's log writer has stopped"))
    }

    /// Makes a message durable in the log: after `Ok`, a `250` may be sent.
    pub async fn commit(&self, entry: &QueueEntry, body: &[u8]) -> io::Result<()> {
        let envelope = serde_json::to_vec(entry).map_err(io::Error::other)?;
        let record = record::message(&envelope, body);
        let body_at = (record.len() - body.len()) as u64;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(Op::Append(Box::new(Append {
            record,
            body_at,
            entry: entry.clone(),
            reply: Reply::Async(reply),
        })))?;
        answer.await.map_err(|_| stopped())?
    }

    /// The body of a message in the log, if it is there (blocking).
    pub fn read_body(&self, id: &str) -> Option<io::Result<Vec<u8>>> {
        let (file, held) = {
            let s = self.state.locked();
            let held = s.index.get(id)?;
            (s.segments[&held.seq].file.clone(), held.clone())
        };
        Some(log_read::read_at(&file, held.body_offset, held.body_len))
    }

    /// Records that message `id` needs nothing more from the log, durably; its segment
    /// goes when nothing in it is live. Returns false if `id` was not in the log, or was
    /// finished by another caller meanwhile (who then owns what follows).
    pub async fn finish(&self, id: &str) -> io::Result<bool> {
        self.finish_as(id, false).await
    }

    /// [`finish`](Self::finish) for a message that moved to a file of its own.
    pub async fn finish_moved(&self, id: &str) -> io::Result<bool> {
        self.finish_as(id, true).await
    }

    async fn finish_as(&self, id: &str, moved: bool) -> io::Result<bool> {
        if !self.contains(id) {
            return Ok(false);
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(Op::Finish {
            ids: vec![id.to_owned()],
            moved,
            reply: Reply::Async(reply),
        })?;
        Ok(answer.await.map_err(|_| stopped())?? == 1)
    }

    /// [`finish`](Self::finish) for several messages, blocking (re-reading the queue).
    /// Returns how many this call took out of the log.
    pub fn finish_now(&self, ids: &[&str]) -> io::Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let (reply, answer) = mpsc::channel();
        self.send(Op::Finish {
            ids: ids.iter().map(|id| id.to_string()).collect(),
            moved: false,
            reply: Reply::Blocking(reply),
        })?;
        answer.recv().map_err(|_| stopped())?
    }

    /// Applies what the `queue` commands left in `log/edits/` (blocking): a deleted message
    /// is done; a changed one moves to `queue/` as its own file, with its new envelope.
    /// Edits of messages no longer in the log are dropped (delivered or failed meanwhile).
    pub fn absorb_edits(&self, queue: &Path) -> io::Result<usize> {
        let edits_dir = self.dir.join("edits");
        let edits = log_read::edits(&edits_dir)?;
        let mut applied = 0;
        let file_of = |id: &str| {
            (
                queue.join(format!("{id}.json")),
                queue.join(format!("{id}.eml")),
            )
        };
        for id in &edits.deleted {
            let (json, eml) = file_of(id);
            if self.contains(id) {
                self.finish_now(&[id])?;
                applied += 1;
            } else if json.exists() {
                // It moved to a file of its own meanwhile (waiting for a retry): the
                // deletion is for that file now.
                remove_if_exists(&json)?;
                remove_if_exists(&eml)?;
                sync_dir(queue)?;
                applied += 1;
            }
            remove_if_exists(&edits_dir.join(format!("{id}.deleted")))?;
        }
        for id in edits.changed.difference(&edits.deleted) {
            let json = edits_dir.join(format!("{id}.json"));
            let eml = edits_dir.join(format!("{id}.eml"));
            let (to_json, to_eml) = file_of(id);
            let in_log = self.contains(id);
            if !in_log && !to_json.exists() {
                // Delivered or failed meanwhile: the edit comes too late.
                remove_if_exists(&json)?;
                remove_if_exists(&eml)?;
                continue;
            }
            if !in_log {
                // It moved to a file of its own meanwhile (waiting for a retry), whose
                // envelope is newer than the edit's: the edit's changes go onto it.
                merge_edit(&json, &to_json)?;
                remove_if_exists(&json)?;
                remove_if_exists(&eml)?;
                applied += 1;
                continue;
            }
            // The file first, then the done record: a crash between leaves both, and the
            // file wins at start-up.
            std::fs::rename(&eml, &to_eml)?;
            std::fs::rename(&json, &to_json)?;
            sync_dir(queue)?;
            sync_dir(&edits_dir)?;
            if self.finish_now(&[id])? == 0 && !self.moved_lately(id) {
                // Delivered or failed by the relay between the two: the edit comes too
                // late, and the file it made must not send the message again.
                remove_if_exists(&to_json)?;
                remove_if_exists(&to_eml)?;
                sync_dir(queue)?;
                continue;
            }
            applied += 1;
        }
        Ok(applied)
    }

    /// Whether `id` left the log lately for a file of its own (see `State::moved`).
    fn moved_lately(&self, id: &str) -> bool {
        self.state.locked().moved.iter().any(|m| m == id)
    }

    /// Messages in the log that also have a file of their own in `queue/` or `failed/`: a
    /// move out of the log, or into `failed/`, cut short. The file is the message now.
    pub fn settle(&self, ids_with_files: &HashSet<String>) -> io::Result<usize> {
        let doubled: Vec<String> = {
            let s = self.state.locked();
            s.index
                .keys()
                .filter(|id| ids_with_files.contains(*id))
                .cloned()
                .collect()
        };
        let ids: Vec<&str> = doubled.iter().map(String::as_str).collect();
        self.finish_now(&ids)
    }
}

/// Applies what a `queue` command changes (the next attempt, the destination) from the
/// edit's envelope onto the newer one at `to`.
fn merge_edit(edit: &Path, to: &Path) -> io::Result<()> {
    let read = |path: &Path| -> io::Result<QueueEntry> {
        serde_json::from_slice(&std::fs::read(path)?)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    };
    let edit = read(edit)?;
    let mut entry = read(to)?;
    entry.next_attempt = entry.next_attempt.min(edit.next_attempt);
    entry.destination = edit.destination;
    entry.mailbox = edit.mailbox;
    let tmp = to.with_extension("json.edit.tmp");
    super::files::write_synced(
        &tmp,
        &serde_json::to_vec_pretty(&entry).map_err(io::Error::other)?,
    )?;
    std::fs::rename(&tmp, to)
}

fn stopped() -> io::Error {
    io::Error::other("the spool's log writer has stopped")
}
