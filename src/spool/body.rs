//! A received message body: in memory when it is small, else a file in the spool's
//! `incoming/`. The [`super::sink`] puts it there while it arrives.
//!
//! Why: a 5 KB message delivered while the client waits never needs a file. Creating,
//! writing, reading back and unlinking one per message cost more CPU than everything else
//! the relay does for it (ext4 inode allocation and directory locks under load, and a
//! blocking-pool hop per file operation). Memory stays bounded: a body lives in memory only
//! up to [`MEMORY_BODY_MAX`] bytes and only while a [`Lease`] on the shared
//! [`MemoryBudget`] can be had; a bigger body, or one arriving when the budget is spent,
//! streams to disk as before. Whenever a body must be kept (queued; in `queue` mode always),
//! it is written to a file and committed (fsync) before the client hears `250`, exactly like
//! a file body, in one trip to the blocking pool (`Spool::commit_bytes`).
//!
//! The budget belongs to the spool ([`super::Spool::memory_lease`]), so every connection of a
//! listener draws on one pool of memory.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The largest body kept in memory.
pub const MEMORY_BODY_MAX: usize = 128 * 1024;
/// What one in-memory body reserves: the limit plus one socket read, by which a body may
/// pass the limit before it is moved to disk.
pub const MEMORY_LEASE: usize = MEMORY_BODY_MAX + 64 * 1024;
/// All in-memory bodies together (default budget).
pub const MEMORY_BUDGET: usize = 32 * 1024 * 1024;

/// Bytes of memory that in-memory bodies may use, shared by all connections.
#[derive(Debug)]
pub struct MemoryBudget {
    used: AtomicUsize,
    limit: usize,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Reserves `n` bytes, or `None` if that would pass the limit.
    pub fn try_lease(self: &Arc<Self>, n: usize) -> Option<Lease> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used + n > self.limit {
                return None;
            }
            match self.used.compare_exchange_weak(
                used,
                used + n,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Lease {
                        budget: self.clone(),
                        n,
                    })
                }
                Err(now) => used = now,
            }
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// Bytes reserved from a [`MemoryBudget`], given back when dropped.
#[derive(Debug)]
pub struct Lease {
    budget: Arc<MemoryBudget>,
    n: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// A body held in memory, with the lease that pays for it.
#[derive(Debug)]
pub struct MemoryBody {
    bytes: Vec<u8>,
    _lease: Lease,
}

impl MemoryBody {
    pub fn new(bytes: Vec<u8>, lease: Lease) -> Self {
        MemoryBody {
            bytes,
            _lease: lease,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl AsRef<[u8]> for MemoryBody {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Where a received body is.
#[derive(Debug, Clone)]
pub enum Body {
    Memory(Arc<MemoryBody>),
    /// A file in `incoming/` (not yet committed).
    File(PathBuf),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_leases_and_returns() {
        let b = MemoryBudget::new(100);
        let a = b.try_lease(60).unwrap();
        assert!(b.try_lease(50).is_none(), "over the limit");
        let c = b.try_lease(40).unwrap();
        assert_eq!(b.used(), 100);
        drop(a);
        assert_eq!(b.used(), 40);
        let body = MemoryBody::new(vec![1, 2, 3], b.try_lease(60).unwrap());
        assert_eq!(body.bytes(), &[1, 2, 3]);
        drop(c);
        drop(body);
        assert_eq!(b.used(), 0);
    }
}
