//! The spool as a process outside the relay sees it when it only adds finished messages to
//! the queue (`sendmail` while no relay answers): nothing is cleaned up, and what it commits
//! belongs to the spool directory's owner.

use std::io;
use std::path::Path;

use super::{with_path, Spool};

impl Spool {
    /// A spool for a process that only drops finished messages into the queue while no relay
    /// may be running (`sendmail`): the existing layout, untouched ([`open_existing`]), or,
    /// where no relay has ever made one, a new one ([`open`]; nothing there to clean up).
    /// Every file it commits belongs to the spool directory's owner, so a relay running as
    /// its own user can read what root wrote.
    ///
    /// [`open_existing`]: Self::open_existing
    /// [`open`]: Self::open
    pub fn for_dropping(root: &Path) -> io::Result<Spool> {
        let mut spool = match Spool::open_existing(root) {
            Ok(spool) => spool,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Spool::open(root)?.0,
            Err(e) => return Err(e),
        };
        let meta = std::fs::metadata(root).map_err(|e| with_path(e, root))?;
        spool.owner = Some((
            std::os::unix::fs::MetadataExt::uid(&meta),
            std::os::unix::fs::MetadataExt::gid(&meta),
        ));
        Ok(spool)
    }
}
