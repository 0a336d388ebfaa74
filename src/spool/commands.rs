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
use std::path::PathBuf;
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
        let mut logged = self.logged()?;
        for area in [Area::Queue, Area::Failed] {
            match read_entry(&self.path(area, id, "json")) {
                Ok(e) => return Ok(Some((area, e))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(logged.remove(id).map(|m| (Area::Queue, m.entry)))
    }

    /// Where the body of a message is: a file, or a place in a segment of the log.
    pub fn body_at(&self, area: Area, id: &str) -> io::Result<BodyAt> {
        let file = self.body_in(area, id);
        if area == Area::Failed || file.exists() {
            return Ok(BodyAt::File(file));
        }
        Ok(match self.logged()?.remove(id) {
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
                let Some(mut entry) = self.logged()?.remove(id).map(|m| m.entry) else {
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
        let edits_dir = self.edits_dir();
        let edits = log_read::edits(&edits_dir)?;
        let mut out = HashMap::new();
        for (id, m, path) in self.log_live()? {
            if edits.deleted.contains(&id)
                || self.path(Area::Queue, &id, "json").exists()
                || self.path(Area::Failed, &id, "json").exists()
            {
                continue;
            }
            let logged = if edits.changed.contains(&id) {
                match read_entry(&edits_dir.join(format!("{id}.json"))) {
                    Ok(entry) => Logged {
                        entry,
                        at: BodyAt::File(edits_dir.join(format!("{id}.eml"))),
                    },
                    // Applied by the relay meanwhile: the message is a file in queue/ now.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            } else {
                let at = BodyAt::Segment {
                    path,
                    offset: m.body_offset,
                    len: m.body_len,
                };
                Logged { entry: m.entry, at }
            };
            out.insert(id, logged);
        }
        Ok(out)
    }

    /// Every message of the log not marked done, as the files say (edits not applied).
    fn log_live(&self) -> io::Result<Vec<(String, log_read::LiveMessage, PathBuf)>> {
        let mut out = Vec::new();
        for files in log_read::segments(&self.root.join("log"))? {
            for m in log_read::read_segment(&files)?.live {
                out.push((m.entry.id.clone(), m, files.path.clone()));
            }
        }
        Ok(out)
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
        if !self.log_live()?.iter().any(|(live, _, _)| live == id) {
            for path in written {
                remove_if_exists(&path)?;
            }
            return Ok(false);
        }
        self.request_rescan()?;
        Ok(true)
    }
}
