//! What the `queue` commands, and the relay when it re-reads the queue, do to the spool:
//! list, find, read a body, retry, delete, adopt, purge.
//!
//! A message in the segment log is changed by an edit in `log/edits/` (see `log.rs`): its
//! body and new envelope (`<id>.eml`, `<id>.json`), or `<id>.deleted`. The relay that owns
//! the log applies edits when it re-reads the queue (these commands ask it to) or at its
//! next start; a command run in the relay's own process applies them at once. Readers see
//! an edit as done as soon as it is written.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::sync::Lock as _;
use std::time::Duration;

use super::files::{create_private, remove_if_exists, sync_dir, write_synced};
use super::log_read;
use super::{now_unix, read_entry, Area, Destination, MessageId, QueueEntry, Spool};

/// Where a body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyAt {
    File(PathBuf),
    Segment {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
}

impl BodyAt {
    pub fn read(&self) -> io::Result<Vec<u8>> {
        match self {
            BodyAt::File(path) => std::fs::read(path),
            BodyAt::Segment { path, offset, len } => {
                log_read::read_at(&std::fs::File::open(path)?, *offset, *len)
            }
        }
    }

    /// The first `max` bytes (or fewer: the whole body).
    pub fn read_prefix(&self, max: usize) -> io::Result<Vec<u8>> {
        match self {
            BodyAt::File(path) => {
                use std::io::Read;
                let mut buf = Vec::new();
                std::fs::File::open(path)?
                    .take(max as u64)
                    .read_to_end(&mut buf)?;
                Ok(buf)
            }
            BodyAt::Segment { path, offset, len } => {
                let len = (*len).min(max as u64);
                log_read::read_at(&std::fs::File::open(path)?, *offset, len)
            }
        }
    }

    /// For people: the file, or the segment with the body's place in it.
    pub fn describe(&self) -> String {
        match self {
            BodyAt::File(path) => path.display().to_string(),
            BodyAt::Segment { path, offset, len } => {
                format!("{} (bytes {offset}..{})", path.display(), offset + len)
            }
        }
    }
}

/// The log as a reader read it: each live message, with its segment.
pub type LogView = Arc<Vec<(String, log_read::LiveMessage, PathBuf)>>;

/// A message in the log as a reader sees it.
#[derive(Debug)]
struct Logged {
    entry: QueueEntry,
    at: BodyAt,
}

impl Spool {
    /// Reads every envelope of an area (for `queue list` and rescans): the files, and in
    /// the queue the messages in the log. In the relay, edits left by the `queue` commands
    /// are applied first.
    pub fn list(&self, area: Area) -> io::Result<Vec<QueueEntry>> {
        // First: in the relay this applies edits, which may move messages into queue/.
        let logged = match area {
            Area::Queue => self.logged()?,
            Area::Failed => HashMap::new(),
        };
        let mut out = self.list_files(area)?;
        if area == Area::Queue {
            let files: HashSet<String> = out.iter().map(|e| e.id.clone()).collect();
            out.extend(
                logged
                    .into_values()
                    .filter(|m| !files.contains(&m.entry.id))
                    .map(|m| m.entry),
            );
            out.sort_by(|a, b| a.id.cmp(&b.id));
        }
        Ok(out)
    }

    fn list_files(&self, area: Area) -> io::Result<Vec<QueueEntry>> {
        let dir = self.root.join(area.dir());
        let mut out = Vec::new();
        for item in std::fs::read_dir(&dir)? {
            let path = item?.path();
            if path.extension().is_some_and(|e| e == "json") {
                match read_entry(&path) {
                    Ok(e) => out.push(e),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "unreadable envelope")
                    }
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Finds a message by id in either area.
    pub fn find(&self, id: &str) -> io::Result<Option<(Area, QueueEntry)>> {
        // First: in the relay this applies edits, which may move messages into queue/.
        let logged = self.logged_one(id)?;
        for area in [Area::Queue, Area::Failed] {
            match read_entry(&self.path(area, id, "json")) {
                Ok(e) => return Ok(Some((area, e))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(logged.map(|m| (Area::Queue, m.entry)))
    }

    /// Where the body of a message is: a file, or a place in a segment of the log.
    pub fn body_at(&self, area: Area, id: &str) -> io::Result<BodyAt> {
        let file = self.body_in(area, id);
        if area == Area::Failed || file.exists() {
            return Ok(BodyAt::File(file));
        }
        Ok(match self.logged_one(id)? {
            Some(m) => m.at,
            None => BodyAt::File(file),
        })
    }

    /// The body of a message, read whole.
    pub fn read_body(&self, area: Area, id: &str) -> io::Result<Vec<u8>> {
        self.body_at(area, id)?.read()
    }

    /// The body file of a message in an area.
    pub fn body_in(&self, area: Area, id: &str) -> PathBuf {
        self.path(area, id, "eml")
    }

    /// `queue retry`: due now; a failed message goes back into the queue. Returns false if
    /// the id is unknown.
    pub fn retry(&self, id: &str) -> io::Result<bool> {
        let Some((area, mut entry)) = self.find(id)? else {
            return Ok(false);
        };
        if area == Area::Queue && !self.path(area, id, "json").exists() {
            entry.next_attempt = now_unix();
            entry.failed_at = None;
            entry.failure_reason = None;
            return self.edit(id, Some(&entry));
        }
        if !self.body_in(area, id).exists() {
            // Completed or failed by the relay since we read the envelope: nothing to retry,
            // and writing the envelope back would leave one without a body.
            return Ok(false);
        }
        entry.next_attempt = now_unix();
        entry.failed_at = None;
        entry.failure_reason = None;
        if area == Area::Failed {
            // Give it a fresh life: max_age counts from now.
            entry.received_at = now_unix();
            entry.attempts = 0;
            // `rcpt_to` already holds the refused recipients (see `Delivery::fail`); keeping
            // them in `refused` too would fail the message again after a good delivery.
            entry.refused.clear();
        }
        let bytes = serde_json::to_vec_pretty(&entry).map_err(io::Error::other)?;
        let queue_json = self.path(Area::Queue, id, "json");
        if area == Area::Failed {
            std::fs::rename(self.path(Area::Failed, id, "eml"), self.body_path(id))?;
            write_synced(&self.path(Area::Queue, id, "json.tmp"), &bytes)?;
            std::fs::rename(self.path(Area::Queue, id, "json.tmp"), &queue_json)?;
            std::fs::remove_file(self.path(Area::Failed, id, "json"))?;
        } else {
            write_synced(&self.path(Area::Queue, id, "json.tmp"), &bytes)?;
            std::fs::rename(self.path(Area::Queue, id, "json.tmp"), &queue_json)?;
        }
        sync_dir(&self.queue)?;
        self.request_rescan()?;
        Ok(true)
    }

    /// `queue delete`: removes a message from either area. Returns false if unknown.
    pub fn delete(&self, id: &str) -> io::Result<bool> {
        let Some((area, _)) = self.find(id)? else {
            return Ok(false);
        };
        if area == Area::Queue && !self.path(area, id, "json").exists() {
            return self.edit(id, None);
        }
        remove_if_exists(&self.path(area, id, "json"))?;
        remove_if_exists(&self.path(area, id, "eml"))?;
        sync_dir(&self.root.join(area.dir()))?;
        self.request_rescan()?;
        Ok(true)
    }

    /// `queue adopt`: records `to` as the destination of a queued message (the configured
    /// one), or forgets the recorded one when the configuration names none, so that the next
    /// relay to read the queue adopts it. A running relay re-reads the queue within about two
    /// seconds. Returns false if the id is not queued.
    pub fn set_destination(&self, id: &str, to: Option<&Destination>) -> io::Result<bool> {
        let mut entry = match read_entry(&self.path(Area::Queue, id, "json")) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let Some(mut entry) = self.logged_one(id)?.map(|m| m.entry) else {
                    return Ok(false);
                };
                entry.destination = to.cloned();
                if let Some(to) = to {
                    entry.mailbox = to.mailbox.clone();
                }
                return self.edit(id, Some(&entry));
            }
            Err(e) => return Err(e),
        };
        if !self.body_path(id).exists() {
            return Ok(false);
        }
        entry.destination = to.cloned();
        if let Some(to) = to {
            entry.mailbox = to.mailbox.clone();
        }
        let bytes = serde_json::to_vec_pretty(&entry).map_err(io::Error::other)?;
        // A name of this process's own: the running relay writes `<id>.json.tmp` for its updates.
        let tmp = self.path(
            Area::Queue,
            id,
            &format!("json.adopt-{}.tmp", std::process::id()),
        );
        write_synced(&tmp, &bytes)?;
        std::fs::rename(&tmp, self.path(Area::Queue, id, "json"))?;
        Ok(true)
    }

    /// After `queue adopt`: makes the rewritten envelopes durable and asks a running relay to
    /// re-read the queue (once for any number of messages).
    pub fn adopted(&self) -> io::Result<()> {
        sync_dir(&self.queue)?;
        self.request_rescan()
    }

    /// Asks a running relay to re-read `queue/`.
    pub fn request_rescan(&self) -> io::Result<()> {
        // A new file renamed into place: nothing already at `control/rescan` (a symlink left
        // there, say) is ever opened or written through.
        let tmp = self
            .control
            .join(format!("rescan.{}", MessageId::generate()));
        create_private(&tmp)?;
        std::fs::rename(&tmp, self.control.join("rescan")).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    /// Whether a rescan was requested since the last call (consumes the request).
    pub fn take_rescan_request(&self) -> bool {
        std::fs::remove_file(self.control.join("rescan")).is_ok()
    }

    /// How many rescans this process has been asked for: takes a pending request (counting
    /// it) and returns the count. A reader that saw a smaller count last time re-reads the
    /// queue; every clone shares the count, so each of several lanes sees each request.
    pub fn rescan_generation(&self) -> u64 {
        use std::sync::atomic::Ordering;
        if self.take_rescan_request() {
            self.rescans.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            self.rescans.load(Ordering::SeqCst)
        }
    }

    /// Removes failed messages older than `retention`. Returns how many.
    pub fn purge_failed(&self, retention: Duration) -> io::Result<usize> {
        let cutoff = now_unix().saturating_sub(retention.as_secs());
        let mut purged = 0;
        for entry in self.list(Area::Failed)? {
            if entry.failed_at.unwrap_or(0) < cutoff {
                remove_if_exists(&self.path(Area::Failed, &entry.id, "json"))?;
                remove_if_exists(&self.path(Area::Failed, &entry.id, "eml"))?;
                purged += 1;
            }
        }
        Ok(purged)
    }

    /// The messages in the log, by id, with edits applied and without those that have a
    /// file of their own (which is the message then).
    fn logged(&self) -> io::Result<HashMap<String, Logged>> {
        if self.foreign_log {
            return Ok(HashMap::new());
        }
        if let Some(log) = &self.log {
            log.absorb_edits(&self.queue)?;
            return Ok(log
                .held()
                .into_iter()
                .map(|(h, path)| {
                    let at = BodyAt::Segment {
                        path,
                        offset: h.body_offset,
                        len: h.body_len,
                    };
                    (h.entry.id.clone(), Logged { entry: h.entry, at })
                })
                .collect());
        }
        let mut out = HashMap::new();
        for (id, m, path) in self.log_live()?.iter() {
            if let Some(logged) = self.as_reader_sees(id, m, path)? {
                out.insert(id.clone(), logged);
            }
        }
        Ok(out)
    }

    /// [`logged`](Self::logged) for one message.
    fn logged_one(&self, id: &str) -> io::Result<Option<Logged>> {
        if self.log.is_some() || self.foreign_log {
            return Ok(self.logged()?.remove(id));
        }
        match self.log_live()?.iter().find(|(live, _, _)| live == id) {
            Some((id, m, path)) => self.as_reader_sees(id, m, path),
            None => Ok(None),
        }
    }

    /// A live message of the log with the edits and files that override it applied.
    fn as_reader_sees(
        &self,
        id: &str,
        m: &log_read::LiveMessage,
        path: &Path,
    ) -> io::Result<Option<Logged>> {
        let edits_dir = self.edits_dir();
        if edits_dir.join(format!("{id}.deleted")).exists()
            || self.path(Area::Queue, id, "json").exists()
            || self.path(Area::Failed, id, "json").exists()
        {
            return Ok(None);
        }
        let eml = edits_dir.join(format!("{id}.eml"));
        if eml.exists() {
            match read_entry(&edits_dir.join(format!("{id}.json"))) {
                Ok(entry) => {
                    return Ok(Some(Logged {
                        entry,
                        at: BodyAt::File(eml),
                    }))
                }
                // Not (or no longer: applied by the relay) an edit.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let at = BodyAt::Segment {
            path: path.to_owned(),
            offset: m.body_offset,
            len: m.body_len,
        };
        Ok(Some(Logged {
            entry: m.entry.clone(),
            at,
        }))
    }

    /// Every message of the log not marked done, as the files say (edits not applied):
    /// read once per handle, so that `retry --all` does not read the log for each message
    /// (a reader's handle lives for one command).
    fn log_live(&self) -> io::Result<LogView> {
        let mut cached = self.log_view.locked();
        if let Some(view) = &*cached {
            return Ok(view.clone());
        }
        let mut out = Vec::new();
        for files in log_read::segments(&self.root.join("log"))? {
            for m in log_read::read_segment(&files)?.live {
                out.push((m.entry.id.clone(), m, files.path.clone()));
            }
        }
        let view = Arc::new(out);
        *cached = Some(view.clone());
        Ok(view)
    }

    /// Whether message `id` of segment `segment` is still live, from the disk now: the
    /// segment is there and its done file does not name it.
    fn still_live(&self, id: &str, segment: &Path) -> io::Result<bool> {
        if !segment.exists() {
            return Ok(false);
        }
        let done = match std::fs::read(segment.with_extension("done")) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(!log_read::done_ids(&done).contains(id.as_bytes()))
    }

    fn edits_dir(&self) -> PathBuf {
        self.root.join("log").join("edits")
    }

    /// Leaves an edit of message `id` of the log: its new envelope (its body copied beside
    /// it), or its deletion (`None`). Returns false if the message left the log meanwhile.
    fn edit(&self, id: &str, entry: Option<&QueueEntry>) -> io::Result<bool> {
        let dir = self.edits_dir();
        let written = match entry {
            Some(entry) => {
                let body = self.read_body(Area::Queue, id)?;
                let json = serde_json::to_vec_pretty(entry).map_err(io::Error::other)?;
                let tmp = |ext: &str| dir.join(format!("{id}.{ext}.{}.tmp", std::process::id()));
                write_synced(&tmp("eml"), &body)?;
                std::fs::rename(tmp("eml"), dir.join(format!("{id}.eml")))?;
                write_synced(&tmp("json"), &json)?;
                std::fs::rename(tmp("json"), dir.join(format!("{id}.json")))?;
                vec![
                    dir.join(format!("{id}.json")),
                    dir.join(format!("{id}.eml")),
                ]
            }
            None => {
                let path = dir.join(format!("{id}.deleted"));
                create_private(&path)?.sync_all()?;
                vec![path]
            }
        };
        sync_dir(&dir)?;
        if let Some(log) = &self.log {
            log.absorb_edits(&self.queue)?;
            self.request_rescan()?;
            return Ok(true);
        }
        // The relay may have finished it while the edit was written: then the edit must
        // not bring it back (the relay drops edits of messages it no longer has, too).
        let segment = self
            .log_live()?
            .iter()
            .find(|(live, _, _)| live == id)
            .map(|(_, _, segment)| segment.clone());
        if !segment.is_some_and(|s| self.still_live(id, &s).unwrap_or(false)) {
            for path in written {
                remove_if_exists(&path)?;
            }
            return Ok(false);
        }
        self.request_rescan()?;
        Ok(true)
    }
}
