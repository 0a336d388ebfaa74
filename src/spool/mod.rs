//! The spool: the one place a message lives between "the client sent it" and "Exchange took
//! it" (DESIGN §2: a `250` means delivered, or fsync'd here and owned by the delivery loop).
//!
//! Layout under `delivery.spool_dir`:
//! ```text
//! incoming/<id>.tmp        body while it arrives (no 250 yet; discarded at start-up)
//! incoming/<id>.json.tmp   envelope being written during commit (discarded at start-up)
//! log/                     the segment log: small messages, many to a file (see `log.rs`)
//! queue/<id>.eml           a committed body with a file of its own (large, deferred, or
//!                          dropped by `sendmail`, or written before the log existed)
//! queue/<id>.json          its envelope and delivery state; present = committed
//! failed/<id>.eml|.json    permanent failures, with the reason, kept for a while
//! control/rescan           dropped by `queue retry|delete` so a running relay re-reads queue/
//! ```
//! Every file is created `0600` and every directory `0700`, whatever the umask (see
//! `files.rs`); a spool root that other users can read is warned about at start-up.
//! Each queued envelope records the destination it was accepted for ([`destination`]).
//!
//! Queue mode commits a body held in memory (up to 128 KiB) to the segment log: one record
//! appended, one `fdatasync` shared by every commit waiting (`log.rs`). Everything else is
//! a file of its own: fsync the body, write and fsync the envelope, rename both into
//! `queue/`, fsync the directory. Directory fsyncs are group-committed too. Removal deletes
//! the envelope first, so a crash can only leave a body without envelope, which recovery
//! treats as never committed. A message found both in the log and as a file is the file's.

pub mod body;
mod commands;
pub mod destination;
mod dropping;
mod entry;
pub mod fault;
mod files;
mod group;
mod log;
mod log_read;
#[cfg(test)]
mod log_tests;
mod record;
mod writer;
pub mod sink;

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::envelope::MessageId;
use body::{Lease, MemoryBudget};
pub use commands::BodyAt;
pub use entry::{now_unix, unix, Destination, QueueEntry, Refusal};
use fault::Faults;
pub use fault::WriteFault;
use files::{create_private, private_dir, readable_by_others, remove_if_exists, write_synced};
use group::GroupSync;
use log::{Log, SEGMENT_BODY_MAX};

/// Which part of the spool an entry is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    Queue,
    Failed,
}

impl Area {
    fn dir(self) -> &'static str {
        match self {
            Area::Queue => "queue",
            Area::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    incoming: PathBuf,
    queue: PathBuf,
    failed: PathBuf,
    control: PathBuf,
    queue_sync: std::sync::Arc<GroupSync>,
    failed_sync: std::sync::Arc<GroupSync>,
    /// Commits writing files at once. More only make threads spin on the directory's lock
    /// (seen with perf: a quarter of the relay's CPU at 50 concurrent commits); the fsyncs of
    /// these few still share journal commits, and the directory fsync is grouped anyway.
    committers: std::sync::Arc<tokio::sync::Semaphore>,
    /// Rescan requests this process has taken from `control/`, shared by every clone: each
    /// of a relay's lanes compares it with the last it acted on, so one lane taking the
    /// request does not hide it from the others.
    rescans: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// What bodies held in memory may use, shared by every connection (see [`body`]).
    memory: Arc<MemoryBudget>,
    /// Write failures (and the tests' seam that causes them), shared by every clone.
    faults: Arc<Faults>,
    /// The segment log small messages are committed to: only in the relay that owns the
    /// spool (`open`); the `queue` commands and `sendmail` write files of their own.
    log: Option<Arc<Log>>,
    /// Another relay process owns the log: its messages are its own to deliver.
    foreign_log: bool,
    /// What a reader (a `queue` command) read of the log, read once per command.
    log_view: Arc<std::sync::Mutex<Option<commands::LogView>>>,
}

/// See `Spool::committers`.
const COMMITTERS: usize = 4;

impl Spool {
    /// The paths under `root`; touches nothing on disk.
    fn layout(root: &Path) -> Spool {
        Spool {
            root: root.to_owned(),
            incoming: root.join("incoming"),
            queue: root.join("queue"),
            failed: root.join("failed"),
            control: root.join("control"),
            queue_sync: std::sync::Arc::new(GroupSync::new(root.join("queue"))),
            committers: std::sync::Arc::new(tokio::sync::Semaphore::new(COMMITTERS)),
            rescans: Default::default(),
            failed_sync: std::sync::Arc::new(GroupSync::new(root.join("failed"))),
            memory: MemoryBudget::new(body::MEMORY_BUDGET),
            faults: Arc::default(),
            log: None,
            foreign_log: false,
            log_view: Default::default(),
        }
    }

    /// Creates the layout if needed, proves it is writable, removes half-written files, and
    /// returns the committed queue (recovery after a restart or crash).
    pub fn open(root: &Path) -> io::Result<(Spool, Vec<QueueEntry>)> {
        let mut spool = Spool::prepare(root)?;
        let log_dir = root.join("log");
        let (log, recovered) = match Log::open(&log_dir) {
            Ok(opened) => opened,
            Err(e) if e.kind() == io::ErrorKind::ResourceBusy => {
                tracing::warn!(
                    spool = %root.display(),
                    "another relay process owns this spool's log: this one commits each message to a file of its own (slower) and leaves the other's queued messages to it"
                );
                spool.foreign_log = true;
                let queued = spool.recover_queue()?;
                return Ok((spool, queued));
            }
            Err(e) => return Err(with_path(e, &log_dir)),
        };
        // Edits the `queue` commands left while no relay ran become files in `queue/`,
        // read with the others below.
        log.absorb_edits(&spool.queue)?;
        let mut queued = spool.recover_queue()?;
        let mut with_files: HashSet<String> = queued.iter().map(|e| e.id.clone()).collect();
        with_files.extend(ids_in(&spool.failed)?);
        let settled = log.settle(&with_files)?;
        if recovered.live > 0 || settled > 0 {
            tracing::info!(
                messages = recovered.live - settled,
                segments = recovered.segments,
                "read the spool's log back"
            );
        }
        queued.extend(log.entries());
        queued.sort_by(|a, b| a.id.cmp(&b.id));
        spool.log = Some(Arc::new(log));
        Ok((spool, queued))
    }

    /// Creates the layout if needed, proves it is writable, and removes half-received
    /// bodies; reads nothing back.
    fn prepare(root: &Path) -> io::Result<Spool> {
        let spool = Spool::layout(root);
        // The root is created private if it is new; an existing one is the operator's.
        if !root.exists() {
            private_dir(root).map_err(|e| with_path(e, root))?;
        }
        for dir in [&spool.incoming, &spool.queue, &spool.failed, &spool.control] {
            private_dir(dir).map_err(|e| with_path(e, dir))?;
        }
        if let Some(mode) = readable_by_others(root).map_err(|e| with_path(e, root))? {
            tracing::warn!(
                spool = %root.display(),
                mode = %format!("{mode:03o}"),
                "the spool directory can be read by other users; queued mail is private (files 0600, directories 0700), but restrict it: chmod 700 {}",
                root.display()
            );
        }
        let probe = spool.incoming.join(".write-test");
        create_private(&probe).map_err(|e| with_path(e, &spool.incoming))?;
        std::fs::remove_file(&probe).map_err(|e| with_path(e, &probe))?;

        let mut discarded = 0usize;
        for entry in std::fs::read_dir(&spool.incoming)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                std::fs::remove_file(&path).map_err(|e| with_path(e, &path))?;
                discarded += 1;
            }
        }
        if discarded > 0 {
            tracing::warn!(
                discarded,
                "removed half-received messages left by an earlier stop (their clients never got a 250)"
            );
        }
        Ok(spool)
    }

    /// Opens an existing spool without creating, probing or cleaning anything: for the
    /// `queue` commands, which run beside a live relay whose `incoming/*.tmp` files are
    /// messages still arriving. Fails with `NotFound` if the layout is not there.
    pub fn open_existing(root: &Path) -> io::Result<Spool> {
        let spool = Spool::layout(root);
        for dir in [&spool.queue, &spool.failed, &spool.control] {
            if !dir.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "no spool at {} (missing {}): is delivery.spool_dir right?",
                        root.display(),
                        dir.display()
                    ),
                ));
            }
        }
        Ok(spool)
    }

    fn recover_queue(&self) -> io::Result<Vec<QueueEntry>> {
        let mut entries = Vec::new();
        for item in std::fs::read_dir(&self.queue)? {
            let path = item?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if let Some(id) = name.strip_suffix(".eml") {
                if !self.queue.join(format!("{id}.json")).exists() {
                    // Body renamed, envelope not: the commit never finished, no 250 was sent.
                    std::fs::remove_file(&path)?;
                    tracing::warn!(id, "discarded a body whose commit did not finish");
                }
            } else if let Some(id) = name.strip_suffix(".json") {
                if !self.queue.join(format!("{id}.eml")).exists() {
                    std::fs::remove_file(&path)?;
                    tracing::warn!(
                        id,
                        "discarded an envelope without body (commit did not finish)"
                    );
                    continue;
                }
                match read_entry(&path) {
                    Ok(e) => entries.push(e),
                    Err(e) => {
                        tracing::error!(path = %path.display(), error = %e, "unreadable queue envelope; moving it to failed/");
                        let _ = std::fs::rename(&path, self.failed.join(name));
                        let eml = self.queue.join(format!("{id}.eml"));
                        let _ = std::fs::rename(&eml, self.failed.join(format!("{id}.eml")));
                    }
                }
            } else if name.ends_with(".tmp") {
                std::fs::remove_file(&path)?;
            }
        }
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(entries)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Write failures, and the seam that injects them in tests.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Directory fsyncs run for the queue (group commit makes this far smaller than the
    /// number of commits under concurrency).
    pub fn queue_dir_fsyncs(&self) -> u64 {
        self.queue_sync.fsyncs()
    }

    /// A lease for a body kept in memory while it arrives, if the budget allows. (In `queue`
    /// mode it saves the trips to the blocking pool for creating and writing the file: the
    /// commit writes and fsyncs it in one.)
    pub fn memory_lease(&self) -> Option<Lease> {
        self.memory.try_lease(body::MEMORY_LEASE)
    }

    /// Where the body of message `id` is written while it arrives.
    pub fn incoming_path(&self, id: &MessageId) -> PathBuf {
        self.incoming_file(id.as_str())
    }

    /// Where the body of message `id` (given as text) is written before it is committed.
    pub fn incoming_file(&self, id: &str) -> PathBuf {
        self.incoming.join(format!("{id}.tmp"))
    }

    /// The committed body of a queued message.
    pub fn body_path(&self, id: &str) -> PathBuf {
        self.queue.join(format!("{id}.eml"))
    }

    fn path(&self, area: Area, id: &str, ext: &str) -> PathBuf {
        self.root.join(area.dir()).join(format!("{id}.{ext}"))
    }

    /// Removes a body that is no longer needed. Missing files are fine.
    pub async fn discard(&self, path: &Path) {
        if let Err(e) = tokio::fs::remove_file(path).await {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove spool file");
            }
        }
    }

    /// Makes a received message durable: after this returns `Ok`, a `250` may be sent.
    pub async fn commit(&self, incoming: &Path, entry: &QueueEntry) -> io::Result<()> {
        self.commit_body(Some(incoming.to_owned()), None, entry)
            .await
    }

    /// [`commit`](Self::commit) for a body held in memory: written, fsync'd and committed in
    /// one trip to the blocking pool. Leaves nothing behind when it fails.
    pub async fn commit_bytes(
        &self,
        bytes: Arc<dyn AsRef<[u8]> + Send + Sync>,
        entry: &QueueEntry,
    ) -> io::Result<()> {
        if let Some(log) = &self.log {
            let body: &[u8] = (*bytes).as_ref();
            if body.len() <= SEGMENT_BODY_MAX {
                let result = match self.faults.check() {
                    Ok(()) => log.commit(entry, body).await,
                    Err(e) => Err(e),
                };
                match &result {
                    Ok(()) => self.faults.worked(),
                    Err(e) => {
                        self.faults.failed(e);
                    }
                }
                return result;
            }
        }
        self.commit_body(None, Some(bytes), entry).await
    }

    /// The body of a queued message in the log (`None`: it is not there, but in a file).
    pub async fn read_logged(&self, id: &str) -> Option<io::Result<Vec<u8>>> {
        let log = self.log.as_ref().filter(|l| l.contains(id))?.clone();
        let id = id.to_owned();
        match tokio::task::spawn_blocking(move || log.read_body(&id)).await {
            Ok(read) => read,
            Err(e) => Some(Err(io::Error::other(e))),
        }
    }

    /// Segment fsyncs run (group commit: far fewer than commits under concurrency).
    pub fn log_fsyncs(&self) -> u64 {
        self.log.as_ref().map_or(0, |l| l.fsyncs())
    }

    /// The log, if `id` is in it.
    fn logging(&self, id: &str) -> Option<&Arc<Log>> {
        self.log.as_ref().filter(|l| l.contains(id))
    }

    /// A message of the log that must wait for a retry moves to a file of its own in
    /// `queue/`, with its new envelope, so that it does not keep its segment on disk.
    /// Returns false if it had left the log already (see [`Log::finish`]).
    async fn move_out(&self, log: &Arc<Log>, entry: &QueueEntry) -> io::Result<bool> {
        let deleted = self
            .root
            .join("log/edits")
            .join(format!("{}.deleted", entry.id));
        if tokio::fs::try_exists(&deleted).await.unwrap_or(false) {
            // `queue delete` asked for it meanwhile: do not keep it.
            log.finish(&entry.id).await?;
            let _ = tokio::fs::remove_file(&deleted).await;
            return Err(io::ErrorKind::NotFound.into());
        }
        let Some(body) = self.read_logged(&entry.id).await else {
            return Ok(false);
        };
        self.commit_body(None, Some(Arc::new(body?)), entry).await?;
        if let Err(e) = log.finish_moved(&entry.id).await {
            // Still in the log: the file must go again, or both would be delivered.
            let json = self.path(Area::Queue, &entry.id, "json");
            let eml = self.body_path(&entry.id);
            let _ = tokio::task::spawn_blocking(move || {
                remove_if_exists(&json).and_then(|()| remove_if_exists(&eml))
            })
            .await;
            return Err(e);
        }
        Ok(true)
    }

    async fn commit_body(
        &self,
        incoming: Option<PathBuf>,
        bytes: Option<Arc<dyn AsRef<[u8]> + Send + Sync>>,
        entry: &QueueEntry,
    ) -> io::Result<()> {
        let result = self.commit_files(incoming, bytes, entry).await;
        match &result {
            Ok(()) => self.faults.worked(),
            Err(e) => {
                self.faults.failed(e);
            }
        }
        result
    }

    async fn commit_files(
        &self,
        incoming: Option<PathBuf>,
        bytes: Option<Arc<dyn AsRef<[u8]> + Send + Sync>>,
        entry: &QueueEntry,
    ) -> io::Result<()> {
        self.faults.check()?;
        let written = incoming.is_none();
        let incoming = incoming.unwrap_or_else(|| self.incoming_file(&entry.id));
        let json_tmp = self.incoming.join(format!("{}.json.tmp", entry.id));
        let body = self.body_path(&entry.id);
        let json = self.path(Area::Queue, &entry.id, "json");
        let envelope = serde_json::to_vec_pretty(entry).map_err(io::Error::other)?;
        let permit = self
            .committers
            .clone()
            .acquire_owned()
            .await
            .map_err(io::Error::other)?;
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let _permit = permit;
            let result = (|| {
                match &bytes {
                    Some(b) => write_synced(&incoming, b.as_ref().as_ref())?,
                    None => std::fs::File::open(&incoming)?.sync_data()?,
                }
                write_synced(&json_tmp, &envelope)?;
                std::fs::rename(&incoming, &body)?;
                std::fs::rename(&json_tmp, &json)
            })();
            if result.is_err() && written {
                let _ = remove_if_exists(&incoming);
                let _ = remove_if_exists(&json_tmp);
            }
            result
        })
        .await
        .map_err(io::Error::other)??;
        self.queue_sync.sync().await
    }

    /// Rewrites a queued message's envelope (attempts, next attempt, remaining recipients).
    /// Not followed by a directory fsync: losing an update in a crash only costs a retry.
    pub async fn update(&self, entry: &QueueEntry) -> io::Result<()> {
        if let Some(log) = self.logging(&entry.id) {
            if self.move_out(log, entry).await? {
                return Ok(());
            }
            // It left the log meanwhile (a `queue` command's edit): it is a file now.
        }
        let path = self.path(Area::Queue, &entry.id, "json");
        let tmp = self.path(Area::Queue, &entry.id, "json.tmp");
        let bytes = serde_json::to_vec_pretty(entry).map_err(io::Error::other)?;
        let faults = self.faults.clone();
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            if !path.exists() {
                // Deleted meanwhile (`queue delete`): do not resurrect it.
                return Err(io::ErrorKind::NotFound.into());
            }
            faults
                .check()
                .and_then(|()| write_synced(&tmp, &bytes))
                .inspect_err(|e| {
                    faults.failed(e);
                })?;
            faults.worked();
            std::fs::rename(&tmp, &path)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Writes a body made by the relay itself (a failure notice) to `incoming/`, privately,
    /// ready for [`commit`](Self::commit).
    pub async fn write_incoming(&self, id: &MessageId, bytes: Vec<u8>) -> io::Result<PathBuf> {
        let path = self.incoming_path(id);
        let faults = self.faults.clone();
        let to = path.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            faults.check()?;
            create_private(&to)?.write_all(&bytes)
        })
        .await
        .map_err(io::Error::other)?
        .inspect_err(|e| {
            self.faults.failed(e);
        })?;
        Ok(path)
    }

    /// Removes a delivered message (envelope first).
    pub async fn complete(&self, id: &str) -> io::Result<()> {
        if let Some(log) = self.logging(id) {
            if log.finish(id).await? {
                return Ok(());
            }
            // It left the log meanwhile (a `queue` command's edit): it is a file now.
        }
        let json = self.path(Area::Queue, id, "json");
        let eml = self.path(Area::Queue, id, "eml");
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            remove_if_exists(&json)?;
            remove_if_exists(&eml)
        })
        .await
        .map_err(io::Error::other)??;
        self.queue_sync.sync().await
    }

    /// Moves a message to `failed/` with its reason.
    pub async fn fail(&self, entry: &QueueEntry) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(entry).map_err(io::Error::other)?;
        let failed_json = self.path(Area::Failed, &entry.id, "json");
        let failed_eml = self.path(Area::Failed, &entry.id, "eml");
        let queue_json = self.path(Area::Queue, &entry.id, "json");
        let queue_eml = self.path(Area::Queue, &entry.id, "eml");
        let faults = self.faults.clone();
        if let Some(log) = self.logging(&entry.id) {
            // Its copy in failed/ first (body, then the envelope that makes it one), then
            // the done record: a crash between leaves both, and the file wins at start-up.
            if let Some(body) = self.read_logged(&entry.id).await {
                let body = body?;
                let (eml, json, bytes) = (failed_eml.clone(), failed_json.clone(), bytes.clone());
                let faults = faults.clone();
                tokio::task::spawn_blocking(move || -> io::Result<()> {
                    faults
                        .check()
                        .and_then(|()| write_synced(&eml, &body))
                        .and_then(|()| write_synced(&json, &bytes))
                        .inspect_err(|e| {
                            faults.failed(e);
                        })?;
                    faults.worked();
                    Ok(())
                })
                .await
                .map_err(io::Error::other)??;
                self.failed_sync.sync().await?;
                if log.finish(&entry.id).await? {
                    return Ok(());
                }
            }
            // It left the log meanwhile (a `queue` command's edit): it is a file now.
        }
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            faults
                .check()
                .and_then(|()| write_synced(&failed_json, &bytes))
                .inspect_err(|e| {
                    faults.failed(e);
                })?;
            faults.worked();
            // Envelope, then body, then the queue envelope goes: a crash at any point leaves
            // either a complete queued message or a complete failed one (recovery discards a
            // queue envelope whose body has moved).
            match std::fs::rename(&queue_eml, &failed_eml) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                other => other?,
            }
            remove_if_exists(&queue_json)
        })
        .await
        .map_err(io::Error::other)??;
        self.failed_sync.sync().await?;
        self.queue_sync.sync().await
    }
}

fn read_entry(path: &Path) -> io::Result<QueueEntry> {
    let bytes = std::fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The ids of the envelopes in `dir`.
fn ids_in(dir: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let name = item?.file_name();
        if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) {
            out.push(id.to_owned());
        }
    }
    Ok(out)
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {

    #[test]
    fn every_clone_sees_each_rescan_request() {
        // A relay's lanes share one spool: the lane that takes the request from `control/`
        // must not hide it from the others.
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let lane2 = spool.clone();
        assert_eq!(spool.rescan_generation(), 0);
        spool.request_rescan().unwrap();
        let seen_by_lane1 = spool.rescan_generation();
        assert_eq!(seen_by_lane1, 1, "the first reader takes the request");
        assert_eq!(lane2.rescan_generation(), 1, "and the second still sees it");
        assert_eq!(
            spool.rescan_generation(),
            1,
            "once: no new request, no new count"
        );
        lane2.request_rescan().unwrap();
        assert_eq!(lane2.rescan_generation(), 2);
        assert_eq!(spool.rescan_generation(), 2);
    }
    use super::*;
    use std::time::Duration;

    fn entry(id: &str) -> QueueEntry {
        let mut e = QueueEntry::new(
            id.into(),
            "app@example.com".into(),
            vec!["a@example.com".into()],
            "relay@example.com".into(),
            5,
        );
        e.client = "127.0.0.1:1".into();
        e.helo = "app".into();
        e.received_at_ms = 0;
        e
    }

    async fn receive(spool: &Spool, id: &str, body: &[u8]) -> PathBuf {
        let path = spool.incoming.join(format!("{id}.tmp"));
        tokio::fs::write(&path, body).await.unwrap();
        path
    }

    #[tokio::test]
    async fn commit_then_recover() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, queued) = Spool::open(dir.path()).unwrap();
        assert!(queued.is_empty());
        let p = receive(&spool, "m1", b"hello").await;
        spool.commit(&p, &entry("m1")).await.unwrap();
        assert!(!p.exists());
        assert_eq!(std::fs::read(spool.body_path("m1")).unwrap(), b"hello");
        drop(spool);
        let (_, queued) = Spool::open(dir.path()).unwrap();
        assert_eq!(queued, vec![entry_with_times("m1", &queued[0])]);
    }

    fn entry_with_times(id: &str, other: &QueueEntry) -> QueueEntry {
        let mut e = entry(id);
        e.received_at = other.received_at;
        e.next_attempt = other.next_attempt;
        e
    }

    #[tokio::test]
    async fn crash_leftovers_are_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        // Half-received body, half-written envelope, body renamed without envelope, envelope
        // without body: none of them got a 250.
        receive(&spool, "a", b"x").await;
        std::fs::write(spool.incoming.join("b.json.tmp"), b"{").unwrap();
        std::fs::write(spool.body_path("c"), b"x").unwrap();
        std::fs::write(
            spool.queue.join("d.json"),
            serde_json::to_vec(&entry("d")).unwrap(),
        )
        .unwrap();
        let p = receive(&spool, "ok", b"body").await;
        spool.commit(&p, &entry("ok")).await.unwrap();
        drop(spool);
        let (_, queued) = Spool::open(dir.path()).unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].id, "ok");
        let left: Vec<_> = std::fs::read_dir(dir.path().join("queue"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert_eq!(
            std::fs::read_dir(dir.path().join("incoming"))
                .unwrap()
                .count(),
            0
        );
    }

    #[tokio::test]
    async fn update_complete_fail_retry_delete() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        for id in ["u", "c", "f"] {
            let p = receive(&spool, id, b"b").await;
            spool.commit(&p, &entry(id)).await.unwrap();
        }
        let mut u = entry("u");
        u.attempts = 3;
        u.last_error = Some("451 4.7.500 later".into());
        spool.update(&u).await.unwrap();
        assert_eq!(spool.find("u").unwrap().unwrap().1.attempts, 3);

        spool.complete("c").await.unwrap();
        assert!(spool.find("c").unwrap().is_none());
        assert!(!spool.body_path("c").exists());

        let mut f = entry("f");
        f.failed_at = Some(now_unix());
        f.failure_reason = Some("550 5.1.10 no such user".into());
        spool.fail(&f).await.unwrap();
        let (area, e) = spool.find("f").unwrap().unwrap();
        assert_eq!(area, Area::Failed);
        assert!(e.failure_reason.unwrap().contains("5.1.10"));
        assert_eq!(spool.list(Area::Failed).unwrap().len(), 1);

        // An update after deletion must not resurrect the message.
        assert!(spool.delete("u").unwrap());
        assert!(spool.update(&u).await.is_err());
        assert!(spool.find("u").unwrap().is_none());
        assert!(spool.take_rescan_request());
        assert!(!spool.take_rescan_request());

        // Retry brings a failed message back into the queue, due now.
        assert!(spool.retry("f").unwrap());
        let (area, e) = spool.find("f").unwrap().unwrap();
        assert_eq!(area, Area::Queue);
        assert!(e.failure_reason.is_none());
        assert!(spool.body_path("f").exists());
        assert!(!spool.retry("nope").unwrap());

        drop(spool);
        let (_, queued) = Spool::open(dir.path()).unwrap();
        assert_eq!(
            queued.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            vec!["f"]
        );
    }

    #[tokio::test]
    async fn purge_keeps_recent_failures() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        for (id, age) in [("old", 10_000u64), ("new", 10)] {
            let p = receive(&spool, id, b"b").await;
            spool.commit(&p, &entry(id)).await.unwrap();
            let mut e = entry(id);
            e.failed_at = Some(now_unix() - age);
            spool.fail(&e).await.unwrap();
        }
        assert_eq!(spool.purge_failed(Duration::from_secs(1000)).unwrap(), 1);
        assert_eq!(spool.list(Area::Failed).unwrap()[0].id, "new");
    }

    #[tokio::test]
    async fn open_existing_never_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Spool::open_existing(&dir.path().join("nope")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        assert!(missing.to_string().contains("no spool at"), "{missing}");
        assert!(
            !dir.path().join("nope").exists(),
            "must not create anything"
        );

        let (spool, _) = Spool::open(dir.path()).unwrap();
        let arriving = receive(&spool, "arriving", b"half").await;
        let p = receive(&spool, "q", b"body").await;
        spool.commit(&p, &entry("q")).await.unwrap();
        let ro = Spool::open_existing(dir.path()).unwrap();
        assert!(arriving.exists(), "a body still arriving must survive");
        assert_eq!(ro.list(Area::Queue).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn dropping_never_cleans_up_and_stays_out_of_another_users_spool() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("new-spool");
        Spool::for_dropping(&fresh).unwrap();
        assert!(fresh.join("queue").is_dir(), "a missing spool is made");

        let root = dir.path().join("spool");
        let (relay, _) = Spool::open(&root).unwrap();
        let arriving = receive(&relay, "arriving", b"half").await;
        let spool = Spool::for_dropping(&root).unwrap();
        assert!(arriving.exists(), "a body still arriving must survive");
        spool
            .commit_bytes(Arc::new(b"body".to_vec()), &entry("dropped"))
            .await
            .unwrap();
        for path in [spool.body_path("dropped"), root.join("queue/dropped.json")] {
            let m = std::fs::metadata(&path).unwrap();
            assert_eq!(m.mode() & 0o777, 0o600, "{}", path.display());
        }
        assert_eq!(relay.list(Area::Queue).unwrap()[0].id, "dropped");

        // A spool that belongs to another user (the relay's), when we may say so (root):
        // never written into by this process.
        if std::os::unix::fs::chown(&root, Some(65534), Some(65534)).is_ok()
            && std::fs::metadata("/proc/self").unwrap().uid() != 65534
        {
            let Err(err) = Spool::for_dropping(&root) else {
                panic!("refused")
            };
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
            assert!(err.to_string().contains("belongs to uid 65534"), "{err}");
        }
    }

    #[test]
    fn unwritable_spool_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let err = Spool::open(&file).unwrap_err();
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }
}
