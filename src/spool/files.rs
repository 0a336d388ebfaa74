//! The durable file operations the spool is made of: write and fsync, remove if present,
//! fsync a directory (what makes a rename durable). Blocking: callers run them on the
//! blocking pool.

use std::io;
use std::path::Path;

/// Writes `bytes` to a new file at `path` and fsyncs its data.
pub fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_data()
}

/// Removes `path`; a file that is already gone is fine.
pub fn remove_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Fsyncs a directory, so the renames and removals in it survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
