//! The sandbox's mail store: one `<id>.eml` (the message bytes exactly as received, after
//! dot-unstuffing) plus one `<id>.json` (the envelope) per accepted message.
//!
//! Why files and not memory: benchmarks push many large messages, and tests (or a human
//! running `serve --sandbox`) want to open what was delivered. Bodies stream to a hidden
//! temporary file while they arrive; on acceptance the `.eml` is renamed into place first and
//! the `.json` last, so a reader that lists `*.json` only ever sees complete pairs. A message
//! that is refused or cut off leaves nothing behind (`Incoming` deletes its file on drop).

use std::io;
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

    /// Every complete message in the store, oldest first. Unreadable entries are skipped.
    pub(crate) fn messages(&self) -> Vec<StoredMessage> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<StoredMessage> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let id = name.strip_suffix(".json")?;
                if id.starts_with('.') {
                    return None;
                }
                let json = std::fs::read(entry.path()).ok()?;
                let envelope: StoredEnvelope = serde_json::from_slice(&json).ok()?;
                let data = std::fs::read(self.dir.join(format!("{id}.eml"))).ok()?;
                Some(StoredMessage {
                    id: id.to_string(),
                    data,
                    envelope,
                })
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
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

    #[test]
    fn ids_sort_by_time_then_sequence() {
        let a = message_id(1_700_000_000_000, 9, 0xffff_ffff);
        let b = message_id(1_700_000_000_000, 10, 0);
        let c = message_id(1_700_000_000_001, 0, 0);
        assert!(a < b && b < c, "{a} {b} {c}");
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
