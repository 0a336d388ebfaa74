//! Streaming a message body into the spool while it arrives (DATA): the sink decides between
//! memory and an `incoming/` file (created `0600`), and hands over a complete [`Body`], or
//! why it could not keep one.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::body::{Body, Lease, MemoryBody, MEMORY_BODY_MAX, MEMORY_LEASE};
use super::fault::{Faults, WriteFault};
use super::files::FILE_MODE;
use super::Spool;
use crate::envelope::MessageId;

/// The most one write to a body's file takes at a time. tokio's `File` copies each write into
/// a buffer of its own and writes it on the blocking pool while the next block is decoded;
/// that buffer stays with the file, so it is kept small: hundreds of clients in DATA at once
/// must not cost hundreds of MB (issue 11, item 6). No `BufWriter` on top: one copy is enough.
const FILE_BUFFER: usize = 32 * 1024;
/// Free room the in-memory body keeps ahead of the decoder (one read, decoded).
const MEMORY_GROWTH: usize = 32 * 1024;

/// Where a body goes while it arrives: into memory while it is small and the spool's memory
/// budget allows (see [`super::body`]), else (or once it grows) into its file in `incoming/`.
/// After the first write failure the rest of the body is only read and dropped, so the
/// session can answer `452` (no space) or `451` at the end of DATA.
pub struct BodySink {
    path: PathBuf,
    memory: Option<(Vec<u8>, Lease)>,
    file: Option<tokio::fs::File>,
    failed: Option<WriteFault>,
    faults: Arc<Faults>,
}

impl BodySink {
    /// A sink for message `id`: in memory if the budget allows, else its incoming file.
    pub async fn new(spool: &Spool, id: &MessageId) -> BodySink {
        let mut sink = BodySink {
            path: spool.incoming_path(id),
            memory: spool
                .memory_lease()
                .map(|l| (Vec::with_capacity(MEMORY_GROWTH), l)),
            file: None,
            failed: None,
            faults: spool.faults.clone(),
        };
        if sink.memory.is_none() {
            sink.open_file().await;
        }
        sink
    }

    async fn open_file(&mut self) {
        let opened = match self.faults.check() {
            Ok(()) => {
                tokio::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(FILE_MODE)
                    .open(&self.path)
                    .await
            }
            Err(e) => Err(e),
        };
        match opened {
            Ok(mut f) => {
                // Its default is 2 MiB, kept for the file's life.
                f.set_max_buf_size(FILE_BUFFER);
                self.file = Some(f);
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot create spool file");
                self.failed = Some(self.faults.failed(&e));
            }
        }
    }

    /// The in-memory body, while there is one: the decoder appends to it directly. It grows
    /// by doubling, but never past what its lease paid for ([`MEMORY_LEASE`]).
    pub fn memory_buffer(&mut self) -> Option<&mut Vec<u8>> {
        let (buf, _) = self.memory.as_mut()?;
        if buf.capacity() - buf.len() < MEMORY_GROWTH && buf.capacity() < MEMORY_LEASE {
            let target = (buf.capacity() * 2).clamp(MEMORY_GROWTH, MEMORY_LEASE);
            buf.reserve_exact(target - buf.len());
        }
        Some(buf)
    }

    /// Moves the body to its file once it is larger than [`MEMORY_BODY_MAX`]; from then on
    /// it streams to disk. (One read past the limit at most: the lease covers it.)
    pub async fn spill_if_big(&mut self) {
        if let Some((buf, _lease)) = self.memory.take_if(|(buf, _)| buf.len() > MEMORY_BODY_MAX) {
            self.open_file().await;
            self.write_file(&buf).await;
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if let Some((buf, _)) = &mut self.memory {
            buf.extend_from_slice(bytes);
            self.spill_if_big().await;
            return;
        }
        self.write_file(bytes).await;
    }

    async fn write_file(&mut self, bytes: &[u8]) {
        if let Some(w) = self.file.as_mut() {
            let written = match self.faults.check() {
                Ok(()) => w.write_all(bytes).await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                tracing::error!(error = %e, "spool write failed");
                self.failed = Some(self.faults.failed(&e));
            }
        }
    }

    /// The complete body, or why it could not be written (nothing is kept then).
    pub async fn finish(mut self, spool: &Spool) -> Result<Body, WriteFault> {
        if let Some((bytes, lease)) = self.memory.take() {
            return Ok(Body::Memory(Arc::new(MemoryBody::new(bytes, lease))));
        }
        if self.failed.is_none() {
            if let Some(w) = self.file.as_mut() {
                if let Err(e) = w.flush().await {
                    tracing::error!(error = %e, "spool write failed");
                    self.failed = Some(self.faults.failed(&e));
                }
            }
        }
        let failed = match (self.file.take(), self.failed) {
            (Some(_), None) => {
                self.faults.worked();
                return Ok(Body::File(self.path));
            }
            (_, Some(fault)) => fault,
            (None, None) => WriteFault::Other,
        };
        spool.discard(&self.path).await;
        Err(failed)
    }

    pub async fn discard(self, spool: &Spool) {
        if self.memory.is_none() {
            drop(self.file);
            spool.discard(&self.path).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn spool() -> (tempfile::TempDir, Spool) {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        (dir, spool)
    }

    fn incoming_files(spool: &Spool) -> usize {
        std::fs::read_dir(spool.root().join("incoming"))
            .unwrap()
            .count()
    }

    #[tokio::test]
    async fn a_small_body_stays_in_memory() {
        let (_d, spool) = spool().await;
        let mut sink = BodySink::new(&spool, &MessageId::generate()).await;
        sink.write(b"Subject: hi\r\n\r\nhello\r\n").await;
        sink.spill_if_big().await;
        assert_eq!(incoming_files(&spool), 0, "no file for a small body");
        match sink.finish(&spool).await {
            Ok(Body::Memory(m)) => assert_eq!(m.bytes(), b"Subject: hi\r\n\r\nhello\r\n"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_large_body_spills_to_its_file_whole() {
        let (_d, spool) = spool().await;
        let id = MessageId::generate();
        let mut sink = BodySink::new(&spool, &id).await;
        let line = vec![b'x'; 1000];
        let mut expected = Vec::new();
        for _ in 0..(MEMORY_BODY_MAX / 1000 + 10) {
            sink.write(&line).await;
            expected.extend_from_slice(&line);
        }
        assert!(
            sink.memory_buffer().is_none(),
            "moved to disk past the limit"
        );
        match sink.finish(&spool).await {
            Ok(Body::File(path)) => {
                assert_eq!(path, spool.incoming_path(&id));
                assert_eq!(std::fs::read(&path).unwrap(), expected);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_discarded_body_leaves_nothing() {
        let (_d, spool) = spool().await;
        let mut sink = BodySink::new(&spool, &MessageId::generate()).await;
        sink.write(&vec![b'y'; MEMORY_BODY_MAX + 1]).await;
        assert_eq!(incoming_files(&spool), 1);
        sink.discard(&spool).await;
        assert_eq!(incoming_files(&spool), 0);
    }

    #[tokio::test]
    async fn a_full_disk_is_told_apart_and_leaves_nothing() {
        use std::os::unix::fs::PermissionsExt;
        let (_d, spool) = spool().await;
        let id = MessageId::generate();
        let mut sink = BodySink::new(&spool, &id).await;
        sink.write(&vec![b'z'; MEMORY_BODY_MAX + 1]).await;
        let mode = std::fs::metadata(spool.incoming_path(&id))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "a body file is private");
        spool.faults().inject(Some(WriteFault::NoSpace));
        sink.write(b"more").await;
        assert!(matches!(
            sink.finish(&spool).await,
            Err(WriteFault::NoSpace)
        ));
        assert_eq!(incoming_files(&spool), 0);
        spool.faults().inject(Some(WriteFault::Other));
        let leases: Vec<Lease> = std::iter::from_fn(|| spool.memory_lease()).collect();
        let sink = BodySink::new(&spool, &MessageId::generate()).await;
        assert!(matches!(sink.finish(&spool).await, Err(WriteFault::Other)));
        drop(leases);
        spool.faults().inject(None);
        assert!(
            spool.faults().full(),
            "the last no-space failure is remembered"
        );
        // A body written to disk again (no commit needed: hybrid may deliver it straight
        // away) says the spool is writable.
        let mut sink = BodySink::new(&spool, &MessageId::generate()).await;
        sink.write(&vec![b'z'; MEMORY_BODY_MAX + 1]).await;
        assert!(matches!(sink.finish(&spool).await, Ok(Body::File(_))));
        assert!(!spool.faults().full(), "a successful write clears it");
    }

    #[tokio::test]
    async fn without_memory_budget_the_body_goes_to_a_file() {
        let (_d, spool) = spool().await;
        // Take the whole budget, as many large bodies arriving at once would.
        let leases: Vec<Lease> = std::iter::from_fn(|| spool.memory_lease()).collect();
        assert!(!leases.is_empty());
        let mut sink = BodySink::new(&spool, &MessageId::generate()).await;
        sink.write(b"small").await;
        assert!(matches!(sink.finish(&spool).await, Ok(Body::File(_))));
        drop(leases);
        assert!(spool.memory_lease().is_some(), "leases come back");
    }
}
