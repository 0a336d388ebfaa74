//! The spool as a process outside the relay sees it when it only adds finished messages to
//! the queue (`sendmail` while no relay answers): nothing is cleaned up, and only the spool's
//! own user writes into it. Root never writes into a spool another user owns: that user could
//! have put symlinks there for root to write through.

use std::io;
use std::path::Path;

use std::os::unix::fs::MetadataExt;

use super::Spool;

impl Spool {
    /// A spool for a process that only drops finished messages into the queue while no relay
    /// may be running (`sendmail`): the existing layout, untouched ([`open_existing`]), or,
    /// where no relay has ever made one, a new one ([`open`]; nothing there to clean up).
    /// Refused (`PermissionDenied`, in words) when the spool belongs to another user than
    /// this process's.
    ///
    /// [`open_existing`]: Self::open_existing
    /// [`open`]: Self::open
    pub fn for_dropping(root: &Path) -> io::Result<Spool> {
        if let (Ok(meta), Ok(me)) = (std::fs::metadata(root), std::fs::metadata("/proc/self")) {
            if meta.uid() != me.uid() {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "the spool {} belongs to uid {}, and this process runs as uid {}: \
                         run sendmail as the relay's user, or keep the relay running",
                        root.display(),
                        meta.uid(),
                        me.uid()
                    ),
                ));
            }
        }
        match Spool::open_existing(root) {
            Ok(spool) => Ok(spool),
            // A new spool: made without its log, which only a relay writes.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Spool::prepare(root),
            Err(e) => Err(e),
        }
    }
}
