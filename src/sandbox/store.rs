//! The sandbox's mail store: one `<id>.eml` (the message bytes exactly as received, after
//! dot-unstuffing) plus one `<id>.json` (the envelope) per accepted message.
//!
//! Why files and not memory: benchmarks push many large messages, and tests (or a human
//! running `serve --sandbox`) want to open what was delivered. Bodies stream to a hidden
//! temporary file while they arrive; on acceptance the `.eml` is renamed into place first and
//! the `.json` last, so a reader that lists `*.json` only ever sees complete pairs. A message
//! that is refused or cut off leaves nothing behind (`Incoming` deletes its file on drop).

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::clock::UtcTime;

/// The SMTP envelope of a stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEnvelope {
    /// The `MAIL FROM` address, as sent.
    pub mail_from: String,
    /// The accepted `RCPT TO` addresses, in order.
    pub rcpt_to: Vec<String>,
    /// The mailbox the session authenticated as (XOAUTH2 `user=`).
    pub auth_user: String,
    /// Bytes in the `.eml`.
    pub size: u64,
    /// When the message was accepted, ISO 8601 UTC with milliseconds.
    pub received_at: String,
}

/// A message read back from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: String,
    pub data: Vec<u8>,
    pub envelope: StoredEnvelope,
}

/// The store directory and a sequence for unique, time-ordered ids.
pub(crate) struct Store {
    dir: PathBuf,
    seq: AtomicU64,
}

impl Store {
    /// Opens (creating if needed) the store directory.
    pub(crate) fn open(dir: &Path) -> io::Result<Store> {
        std::fs::create_dir_all(dir)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            seq: AtomicU64::new(0),
        })
    }

    /// Starts receiving a message into a temporary file.
    pub(crate) async fn begin(&self) -> io::Result<Incoming> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let id = message_id(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            seq,
            rand::random(),
        );
        let tmp = self.dir.join(format!(".{id}.eml.tmp"));
        let file = tokio::fs::File::create(&tmp).await?;
        Ok(Incoming {
            id,
            dir: self.dir.clone(),
            tmp: Some(tmp),
            file: Some(file),
            size: 0,
        })
    }

    /// Ids of every complete message (those with a `.json`), unordered.
    fn ids(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let id = name.strip_suffix(".json")?;
                (!id.starts_with('.')).then(|| id.to_string())
            })
            .collect()
    }

    /// How many complete messages the store holds; reads only the directory.
    pub(crate) fn message_count(&self) -> usize {
        self.ids().len()
    }

    /// Every complete message in the store, oldest first. Unreadable entries are skipped.
    pub(crate) fn messages(&self) -> Vec<StoredMessage> {
        let mut out: Vec<StoredMessage> = self
            .ids()
            .into_iter()
            .filter_map(|id| {
                let json = std::fs::read(self.dir.join(format!("{id}.json"))).ok()?;
                let envelope: StoredEnvelope = serde_json::from_slice(&json).ok()?;
                let data = std::fs::read(self.dir.join(format!("{id}.eml"))).ok()?;
                Some(StoredMessage { id, data, envelope })
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// For every complete message, the value of its first `name` header, counted. Reads
    /// only each message's header section (at most `MAX_HEAD` bytes).
    pub(crate) fn count_by_header(&self, name: &str) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for id in self.ids() {
            let Ok(head) = read_head(&self.dir.join(format!("{id}.eml"))) else {
                continue;
            };
            if let Some(value) = header_value(&head, name) {
                *counts.entry(value).or_insert(0) += 1;
            }
        }
        counts
    }
}

/// Header bytes read per message by `count_by_header`.
const MAX_HEAD: u64 = 256 * 1024;

/// The header section of a message file: up to and including the first empty line, or at
/// most `MAX_HEAD` bytes.
fn read_head(path: &Path) -> io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut reader = BufReader::new(file.take(MAX_HEAD));
    let mut head = Vec::new();
    loop {
        let start = head.len();
        if reader.read_until(b'\n', &mut head)? == 0 {
            return Ok(head);
        }
        let line = &head[start..];
        if line == b"\r\n" || line == b"\n" {
            return Ok(head);
        }
    }
}

/// The value of the first header field called `name` (case-insensitive) in a message head:
/// folded lines joined (RFC 5322 §2.2.3), surrounding whitespace trimmed. Stops at the
/// first empty line.
pub(crate) fn header_value(head: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    let mut value: Option<String> = None;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(value) = value.as_mut() {
            if line.starts_with([' ', '\t']) {
                value.push_str(line);
                continue;
            }
            break;
        }
        if line.is_empty() {
            break;
        }
        if let Some((field, rest)) = line.split_once(':') {
            if field.trim_end().eq_ignore_ascii_case(name) {
                value = Some(rest.to_string());
            }
        }
    }
    value.map(|v| v.trim().to_string())
}

/// `<unix millis>-<seq>-<random>`: sorts by arrival, unique across runs sharing a store.
fn message_id(unix_millis: u64, seq: u64, random: u32) -> String {
    format!("{unix_millis:013}-{seq:06}-{random:08x}")
}

/// A message being received. Dropped without `commit`, it deletes its temporary file.
pub(crate) struct Incoming {
    id: String,
    dir: PathBuf,
    tmp: Option<PathBuf>,
    file: Option<tokio::fs::File>,
    size: u64,
}

impl Incoming {
    pub(crate) async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("message already committed"))?;
        file.write_all(bytes).await?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Moves the message into place and writes its envelope; returns the message id.
    pub(crate) async fn commit(
        mut self,
        mail_from: &str,
        rcpt_to: &[String],
        auth_user: &str,
    ) -> io::Result<String> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("message already committed"))?;
        // tokio's File finishes writes in the background: flush before renaming.
        file.flush().await?;
        drop(file);
        let tmp = self
            .tmp
            .take()
            .ok_or_else(|| io::Error::other("message already committed"))?;
        let eml = self.dir.join(format!("{}.eml", self.id));
        if let Err(e) = tokio::fs::rename(&tmp, &eml).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        let envelope = StoredEnvelope {
            mail_from: mail_from.to_string(),
            rcpt_to: rcpt_to.to_vec(),
            auth_user: auth_user.to_string(),
            size: self.size,
            received_at: UtcTime::now().iso_millis(),
        };
        let json = serde_json::to_vec_pretty(&envelope).map_err(io::Error::other)?;
        let json_tmp = self.dir.join(format!(".{}.json.tmp", self.id));
        tokio::fs::write(&json_tmp, json).await?;
        tokio::fs::rename(&json_tmp, self.dir.join(format!("{}.json", self.id))).await?;
        Ok(std::mem::take(&mut self.id))
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ids_sort_by_time_then_sequence() {
        let a = message_id(1_700_000_000_000, 9, 0xffff_ffff);
        let b = message_id(1_700_000_000_000, 10, 0);
        let c = message_id(1_700_000_000_001, 0, 0);
        assert!(a < b && b < c, "{a} {b} {c}");
    }

    #[test]
    fn header_values_are_found_unfolded_and_only_in_the_head() {
        let head =
            b"Received: x\r\nmessage-id:  <a@b>\r\nX-Seq: 1\r\n\tand more\r\nX-Seq: 2\r\n\r\n";
        assert_eq!(header_value(head, "Message-ID"), Some("<a@b>".to_string()));
        assert_eq!(header_value(head, "x-seq"), Some("1\tand more".to_string()));
        assert_eq!(header_value(head, "X-Se"), None);
        assert_eq!(header_value(b"A: 1\n\nX-Seq: 3\n", "x-seq"), None);
        assert_eq!(
            header_value(b"X-Seq: 3\nB: 1\n", "x-seq"),
            Some("3".to_string())
        );
        assert_eq!(header_value(b"X-Seq:\r\n", "x-seq"), Some(String::new()));
        assert_eq!(header_value(b"\r\nX-Seq: 3\r\n", "x-seq"), None);
    }

    #[tokio::test]
    async fn five_thousand_messages_count_and_read_back_quickly() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(dir.path()).unwrap());
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..8 {
            let store = store.clone();
            tasks.spawn(async move {
                for n in (worker..5000).step_by(8) {
                    let mut incoming = store.begin().await.unwrap();
                    let seq = if n == 4999 { 0 } else { n };
                    let body = format!(
                        "X-Test-Seq: {seq}\r\nSubject: s\r\n\r\n{}\r\n",
                        "x".repeat(2000)
                    );
                    incoming.write(body.as_bytes()).await.unwrap();
                    incoming
                        .commit("a@x", &["b@y".to_string()], "a@x")
                        .await
                        .unwrap();
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }

        let started = std::time::Instant::now();
        assert_eq!(store.message_count(), 5000);
        let count_took = started.elapsed();

        let started = std::time::Instant::now();
        let counts = store.count_by_header("X-Test-Seq");
        let header_took = started.elapsed();
        assert_eq!(counts.len(), 4999);
        assert_eq!(counts.get("0"), Some(&2));
        assert_eq!(counts.values().sum::<usize>(), 5000);

        let started = std::time::Instant::now();
        let all = store.messages();
        let read_took = started.elapsed();
        assert_eq!(all.len(), 5000);
        assert!(all.windows(2).all(|w| w[0].id < w[1].id));

        // A reopened store (a restarted sandbox) sees the same messages, and new ids sort
        // after the old ones.
        let reopened = Store::open(dir.path()).unwrap();
        let mut incoming = reopened.begin().await.unwrap();
        incoming.write(b"X-Test-Seq: new\r\n\r\n").await.unwrap();
        let id = incoming
            .commit("a@x", &["b@y".to_string()], "a@x")
            .await
            .unwrap();
        assert_eq!(reopened.message_count(), 5001);
        assert!(all.iter().all(|m| m.id < id));

        eprintln!("5000 messages: count {count_took:?}, count_by_header {header_took:?}, messages {read_took:?}");
        // Generous bounds for a loaded debug build; typical figures are far lower.
        assert!(count_took < Duration::from_secs(2), "{count_took:?}");
        assert!(header_took < Duration::from_secs(10), "{header_took:?}");
        assert!(read_took < Duration::from_secs(10), "{read_took:?}");
    }

    #[tokio::test]
    async fn committed_messages_read_back_and_aborted_ones_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();

        let mut kept = store.begin().await.unwrap();
        kept.write(b"Subject: hi\r\n\r\nbody\r\n").await.unwrap();
        let id = kept
            .commit("a@x", &["b@y".to_string()], "a@x")
            .await
            .unwrap();

        let mut dropped = store.begin().await.unwrap();
        dropped.write(b"partial").await.unwrap();
        drop(dropped);

        let all = store.messages();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].id, id);
        assert_eq!(all[0].data, b"Subject: hi\r\n\r\nbody\r\n");
        assert_eq!(all[0].envelope.rcpt_to, vec!["b@y".to_string()]);
        assert_eq!(all[0].envelope.size, 21);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
