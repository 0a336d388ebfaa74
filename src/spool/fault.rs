//! When the spool cannot write. A full disk or an exhausted quota (`ENOSPC`, `EDQUOT`) is
//! told apart from other local errors, because the client is told differently: `452 4.3.1`
//! (insufficient system storage, RFC 5321 §4.2.2 and RFC 3463) instead of `451 4.3.0`. Every
//! failed write is counted in `smtp_oauth_relay_spool_write_failures_total{kind}`, and
//! `smtp_oauth_relay_spool_full` is 1 from a failure for lack of space until a write works
//! again.
//!
//! [`Faults::inject`] is a seam for tests: it makes the spool's writes fail as a full disk
//! would, without filling one.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// What kind of write failure it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFault {
    /// No space left on the file system, or the user's quota is exhausted.
    NoSpace,
    /// Any other local error (permissions, I/O error, read-only file system, ...).
    Other,
}

impl WriteFault {
    /// The kind of `e`.
    pub fn of(e: &io::Error) -> WriteFault {
        match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => WriteFault::NoSpace,
            _ => WriteFault::Other,
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            WriteFault::NoSpace => "no_space",
            WriteFault::Other => "other",
        }
    }

    /// An error of this kind, as the file system would return it (for the seam).
    fn error(self) -> io::Error {
        match self {
            // ENOSPC on Linux (and the BSDs): "No space left on device".
            WriteFault::NoSpace => io::Error::from_raw_os_error(28),
            WriteFault::Other => io::Error::other("injected spool write failure"),
        }
    }
}

const NONE: u8 = 0;

/// The spool's record of write failures, shared by its clones.
#[derive(Debug, Default)]
pub struct Faults {
    injected: AtomicU8,
    full: AtomicBool,
}

impl Faults {
    /// Test seam: from now on every spool write fails with `fault` (`None`: writes work
    /// again).
    pub fn inject(&self, fault: Option<WriteFault>) {
        let v = match fault {
            None => NONE,
            Some(WriteFault::NoSpace) => 1,
            Some(WriteFault::Other) => 2,
        };
        self.injected.store(v, Ordering::Relaxed);
    }

    /// The injected failure, if one is set; checked before each write.
    pub fn check(&self) -> io::Result<()> {
        match self.injected.load(Ordering::Relaxed) {
            NONE => Ok(()),
            1 => Err(WriteFault::NoSpace.error()),
            _ => Err(WriteFault::Other.error()),
        }
    }

    /// Counts a failed write and says what kind it was.
    pub fn failed(&self, e: &io::Error) -> WriteFault {
        let fault = WriteFault::of(e);
        metrics::counter!("smtp_oauth_relay_spool_write_failures_total", "kind" => fault.label())
            .increment(1);
        if fault == WriteFault::NoSpace && !self.full.swap(true, Ordering::Relaxed) {
            metrics::gauge!("smtp_oauth_relay_spool_full").set(1.0);
            tracing::error!(error = %e, "the spool's file system is full: new mail is refused with 452 4.3.1 until space returns");
        }
        fault
    }

    /// A write worked: the spool is not full (any more).
    pub fn worked(&self) {
        if self.full.load(Ordering::Relaxed) && self.full.swap(false, Ordering::Relaxed) {
            metrics::gauge!("smtp_oauth_relay_spool_full").set(0.0);
            tracing::info!("the spool can be written again");
        }
    }

    /// Whether the last write failed for lack of space.
    pub fn full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disk_and_quota_are_no_space() {
        assert_eq!(
            WriteFault::of(&io::Error::from_raw_os_error(28)),
            WriteFault::NoSpace
        );
        // EDQUOT on Linux.
        assert_eq!(
            WriteFault::of(&io::Error::from_raw_os_error(122)),
            WriteFault::NoSpace
        );
        for other in [
            io::Error::from(io::ErrorKind::PermissionDenied),
            io::Error::from_raw_os_error(30), // EROFS
            io::Error::other("x"),
        ] {
            assert_eq!(WriteFault::of(&other), WriteFault::Other, "{other}");
        }
    }

    #[test]
    fn the_seam_fails_writes_until_cleared() {
        let f = Faults::default();
        assert!(f.check().is_ok());
        f.inject(Some(WriteFault::NoSpace));
        let e = f.check().unwrap_err();
        assert_eq!(f.failed(&e), WriteFault::NoSpace);
        assert!(f.full());
        f.inject(Some(WriteFault::Other));
        assert_eq!(WriteFault::of(&f.check().unwrap_err()), WriteFault::Other);
        f.inject(None);
        assert!(f.check().is_ok());
        f.worked();
        assert!(!f.full());
    }
}
