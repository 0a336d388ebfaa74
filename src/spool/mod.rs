//! The spool directory: where message bodies are streamed while they arrive.
//!
//! In this version (direct mode) a body lives in `incoming/` only while its client waits for
//! Exchange's verdict, and is removed afterwards. Files left there by a crash never got a
//! `250`, so they are discarded at start-up. The durable queue (fsync, envelope files,
//! restart recovery) builds on this layout.

use std::io;
use std::path::{Path, PathBuf};

use crate::envelope::MessageId;

#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    incoming: PathBuf,
}

impl Spool {
    /// Creates the layout if needed, proves it is writable and removes half-written files.
    pub fn open(root: &Path) -> io::Result<Spool> {
        let incoming = root.join("incoming");
        std::fs::create_dir_all(&incoming).map_err(|e| with_path(e, &incoming))?;
        let probe = incoming.join(".write-test");
        std::fs::write(&probe, b"ok").map_err(|e| with_path(e, &incoming))?;
        std::fs::remove_file(&probe).map_err(|e| with_path(e, &probe))?;
        let mut discarded = 0usize;
        for entry in std::fs::read_dir(&incoming)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                std::fs::remove_file(&path).map_err(|e| with_path(e, &path))?;
                discarded += 1;
            }
        }
        if discarded > 0 {
            tracing::warn!(
                discarded,
                dir = %incoming.display(),
                "removed half-received messages left by an earlier stop (their clients never got a 250)"
            );
        }
        Ok(Spool {
            root: root.to_owned(),
            incoming,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the body of message `id` is written while it arrives.
    pub fn incoming_path(&self, id: &MessageId) -> PathBuf {
        self.incoming.join(format!("{id}.tmp"))
    }

    /// Removes a body that is no longer needed. Missing files are fine.
    pub async fn discard(&self, path: &Path) {
        if let Err(e) = tokio::fs::remove_file(path).await {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove spool file");
            }
        }
    }
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_discarded_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let incoming = dir.path().join("incoming");
        std::fs::create_dir_all(&incoming).unwrap();
        std::fs::write(incoming.join("x.tmp"), b"half").unwrap();
        std::fs::write(incoming.join("keep.txt"), b"other").unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert!(!incoming.join("x.tmp").exists());
        assert!(incoming.join("keep.txt").exists());
        let id = MessageId::generate();
        assert!(spool.incoming_path(&id).starts_with(&incoming));
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
