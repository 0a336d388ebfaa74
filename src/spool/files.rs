//! The durable file operations the spool is made of: write and fsync, remove if present,
//! fsync a directory (what makes a rename durable). Blocking: callers run them on the
//! blocking pool.
//!
//! Queued mail is private: every file the spool creates is `0600` and every directory
//! `0700`, set at creation whatever the process umask (a umask only ever removes bits).

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The mode of every file in the spool: the relay's user only.
pub const FILE_MODE: u32 = 0o600;
/// The mode of every directory the spool creates.
pub const DIR_MODE: u32 = 0o700;

/// Creates (or truncates) `path` for writing, readable by the relay's user only.
pub fn create_private(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Writes `bytes` to a new file at `path` and fsyncs its data.
pub fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = create_private(path)?;
    f.write_all(bytes)?;
    f.sync_data()
}

/// Creates `dir` (and missing parents) as [`DIR_MODE`]; an existing `dir` is set to it.
/// Only for directories the spool owns (its sub-directories), never the operator's root.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode != DIR_MODE {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

/// The permission bits of `dir` if group or other users may read it.
pub fn readable_by_others(dir: &Path) -> io::Result<Option<u32>> {
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    Ok((mode & 0o044 != 0).then_some(mode))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_directories_are_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        private_dir(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&root.path().join("a")), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(readable_by_others(&dir).unwrap(), Some(0o755));
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700, "an existing directory is tightened");
        assert_eq!(readable_by_others(&dir).unwrap(), None);
        let file = dir.join("f");
        write_synced(&file, b"x").unwrap();
        assert_eq!(mode(&file), 0o600);
    }
}
