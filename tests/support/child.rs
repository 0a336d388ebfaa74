//! The relay binary as a child process, for tests that must kill it (SIGKILL) or stop it
//! (SIGTERM) like an operator or the kernel would. Environment: the parent's, stripped of
//! every `SMTP_OAUTH_RELAY_*` and `RUST_LOG`, plus exactly what the test passes. stderr goes
//! to a file; the child is killed when the handle drops. Every wait is bounded.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr")
}

/// A running (or finished) relay process.
pub struct RelayChild {
    child: Child,
    stderr_path: PathBuf,
}

impl RelayChild {
    /// Starts `binary` with `args` and `env`; stderr is appended to `stderr_path` (so a
    /// restarted relay can share one log file with its predecessor).
    pub fn spawn(
        binary: &Path,
        args: &[&str],
        env: &[(String, String)],
        cwd: &Path,
        stderr_path: &Path,
    ) -> RelayChild {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(stderr_path)
            .expect("open the stderr file");
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        for (name, _) in std::env::vars_os() {
            let n = name.to_string_lossy();
            if n.starts_with("SMTP_OAUTH_RELAY_") || n == "RUST_LOG" {
                cmd.env_remove(&name);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        RelayChild {
            child: cmd.spawn().expect("spawn the relay binary"),
            stderr_path: stderr_path.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The captured stderr so far, without ANSI colour sequences.
    pub fn stderr(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.stderr_path).unwrap_or_default())
    }

    /// The last `n` lines of stderr (for failure messages).
    pub fn stderr_tail(&self, n: usize) -> String {
        let text = self.stderr();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Polls `addr` until the relay answers `220`, or panics (with stderr) if the child exits
    /// or `limit` passes.
    pub async fn wait_ready(&mut self, addr: SocketAddr, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "relay exited before listening ({status}); stderr:\n{}",
                    self.stderr_tail(40)
                );
            }
            if let Ok(Ok(true)) =
                tokio::time::timeout(Duration::from_secs(2), greets_220(addr)).await
            {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "relay did not answer 220 on {addr} within {limit:?}; stderr:\n{}",
                    self.stderr_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls stderr every 20 ms until it contains `needle`; panics (with the tail of stderr)
    /// if the child exits first or `limit` passes.
    pub async fn wait_stderr(&mut self, needle: &str, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.stderr().contains(needle) {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "relay exited ({status}) before logging {needle:?}; stderr:\n{}",
                    self.stderr_tail(40)
                );
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "relay did not log {needle:?} within {limit:?}; stderr:\n{}",
                    self.stderr_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, then reap. The process gets no chance to clean up.
    pub fn sigkill(&mut self) -> ExitStatus {
        self.child.kill().expect("SIGKILL the relay");
        self.child.wait().expect("reap the relay")
    }

    /// Sends SIGTERM with the `kill` utility (no libc/nix needed).
    pub async fn sigterm(&self) {
        let pid = self.pid().to_string();
        let status = tokio::task::spawn_blocking(move || {
            Command::new("kill").arg("-TERM").arg(pid).status()
        })
        .await
        .expect("join")
        .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Sends SIGHUP (re-read certificate, users and credential files) with `kill`.
    pub async fn sighup(&self) {
        let pid = self.pid().to_string();
        let status =
            tokio::task::spawn_blocking(move || Command::new("kill").arg("-HUP").arg(pid).status())
                .await
                .expect("join")
                .expect("run kill");
        assert!(status.success(), "kill -HUP failed: {status}");
    }

    /// Waits at most `limit` for the process to end; kills it and panics otherwise.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "relay did not exit within {limit:?}; stderr:\n{}",
                    self.stderr_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RelayChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Removes `ESC [ ... <letter>` sequences.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Connects, reads the greeting and says QUIT. `Ok(true)` if the greeting was `220`.
pub async fn greets_220(addr: SocketAddr) -> std::io::Result<bool> {
    let mut s = TcpStream::connect(addr).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !buf.ends_with(b"\r\n") {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(false);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let ok = buf.starts_with(b"220 ");
    let _ = s.write_all(b"QUIT\r\n").await;
    let _ = s.read(&mut chunk).await;
    Ok(ok)
}

/// Files in a spool sub-directory (anything at all: bodies, envelopes, temporary files).
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
