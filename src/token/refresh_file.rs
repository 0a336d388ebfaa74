//! The file that holds a delegated credential's refresh token (reference §1.6): read at start
//! and on SIGHUP, replaced on every refresh because Entra rotates the token.
//!
//! Why so careful: the refresh token is the only thing that lets the relay send as the user
//! without a human signing in again, and each response makes the old one obsolete. A crash
//! in the middle of a write must leave either the old token or the new one on disk, never a
//! torn file, so a write goes to a temporary file (0600) in the same directory, is fsynced,
//! renamed over the old one, and the directory is fsynced so the rename survives a power
//! loss. Errors name the file, never its content.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

/// What reading the refresh token file found.
#[derive(Debug)]
pub enum Stored {
    /// The token (surrounding whitespace removed).
    Token(SecretString),
    /// No file, or only whitespace in it: nobody has signed in yet.
    Missing,
}

/// Reads the refresh token file. A missing or empty file is [`Stored::Missing`], not an
/// error; the error (unreadable file) names the file and the cause.
pub fn read(path: &Path) -> Result<Stored, String> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim();
            if token.is_empty() {
                Ok(Stored::Missing)
            } else {
                Ok(Stored::Token(SecretString::from(token.to_string())))
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Stored::Missing),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Replaces the file's content with `token` atomically and durably: a temporary file 0600 in
/// the same directory, fsync, rename, fsync of the directory. With `create_dir`, a missing
/// parent directory is created 0700 first (`login`); the relay itself never creates it.
pub fn store(path: &Path, token: &SecretString, create_dir: bool) -> Result<(), String> {
    let dir = parent(path);
    if create_dir && !dir.exists() {
        create_private_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| format!("{} is not a file name", path.display()))?;
    let temp = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let written = write_private(&temp, token.expose_secret());
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(format!("cannot write {}: {e}", temp.display()));
    }
    if let Err(e) = fs::rename(&temp, path) {
        let _ = fs::remove_file(&temp);
        return Err(format!(
            "cannot replace {} with {}: {e}",
            path.display(),
            temp.display()
        ));
    }
    sync_dir(&dir).map_err(|e| format!("cannot sync the directory {}: {e}", dir.display()))
}

/// The directory holding `path` (`.` for a bare file name).
fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `text` and a newline into a new file readable by the owner only, and fsyncs it.
fn write_private(path: &Path, text: &str) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Makes a rename in `dir` durable (a no-op where directories cannot be opened).
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(path: &Path) -> String {
        match read(path).unwrap() {
            Stored::Token(t) => t.expose_secret().to_string(),
            Stored::Missing => panic!("no token in {}", path.display()),
        }
    }

    #[test]
    fn missing_and_empty_files_are_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refresh-token");
        assert!(matches!(read(&path).unwrap(), Stored::Missing));
        fs::write(&path, " \n").unwrap();
        assert!(matches!(read(&path).unwrap(), Stored::Missing));
        fs::write(&path, "0.AXoA-token\n").unwrap();
        assert_eq!(token(&path), "0.AXoA-token");
    }

    #[test]
    fn store_replaces_the_token_0600_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refresh-token");
        store(&path, &SecretString::from("first"), false).unwrap();
        store(&path, &SecretString::from("second"), false).unwrap();
        assert_eq!(token(&path), "second");
        assert_eq!(fs::read_to_string(&path).unwrap(), "second\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["refresh-token".to_string()]);
    }

    #[test]
    fn login_creates_the_directory_0700_the_relay_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/sub/refresh-token");
        let e = store(&path, &SecretString::from("tok-secret"), false).unwrap_err();
        assert!(e.contains("cannot write"), "{e}");
        assert!(!e.contains("tok-secret"), "{e}");
        store(&path, &SecretString::from("tok-secret"), true).unwrap();
        assert_eq!(token(&path), "tok-secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }

    #[cfg(unix)]
    #[test]
    fn an_unreadable_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be cannot be read as text.
        let path = dir.path().join("refresh-token");
        fs::create_dir(&path).unwrap();
        let e = read(&path).unwrap_err();
        assert!(e.contains("refresh-token"), "{e}");
    }
}
