//! Shared helpers for integration tests: the sandbox (Exchange stand-in) and the relay, both
//! in-process on loopback, plus a raw SMTP client for byte-level dialogs.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::ExposeSecret;
use smtp_oauth_relay::app::Relay;
use smtp_oauth_relay::config::{Config, ValidConfig};
use smtp_oauth_relay::sandbox::{Sandbox, SandboxOptions, StoredMessage};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const MAILBOX: &str = "relay@sandbox.example";

/// A sandbox plus the directory holding its store, CA file and the relay's spool.
pub struct World {
    pub dir: TempDir,
    pub sandbox: Sandbox,
    pub ca_file: PathBuf,
}

impl World {
    pub async fn start() -> World {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut SandboxOptions)) -> World {
        smtp_oauth_relay::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = SandboxOptions::new(dir.path().join("store"));
        opts.mailboxes = vec![MAILBOX.into()];
        tweak(&mut opts);
        let sandbox = Sandbox::start(opts).await.expect("sandbox starts");
        let ca_file = dir.path().join("ca.pem");
        sandbox.write_ca_file(&ca_file).expect("write CA");
        World {
            dir,
            sandbox,
            ca_file,
        }
    }

    /// The sandbox's client secret value (for checks that it never leaks).
    pub fn secret(&self) -> String {
        self.sandbox
            .options()
            .client_secret
            .expose_secret()
            .to_string()
    }

    /// The environment a user would set to point the relay at this sandbox.
    pub fn env(&self) -> Vec<(String, String)> {
        let o = self.sandbox.options();
        let pairs = [
            ("SMTP_OAUTH_RELAY_LISTEN", "127.0.0.1:0".to_string()),
            // Any free port: tests run side by side.
            ("SMTP_OAUTH_RELAY_ADMIN_LISTEN", "127.0.0.1:0".to_string()),
            ("SMTP_OAUTH_RELAY_TENANT", o.tenant.clone()),
            ("SMTP_OAUTH_RELAY_CLIENT_ID", o.client_id.clone()),
            (
                "SMTP_OAUTH_RELAY_CLIENT_SECRET",
                o.client_secret.expose_secret().to_string(),
            ),
            ("SMTP_OAUTH_RELAY_MAILBOX", MAILBOX.to_string()),
            ("SMTP_OAUTH_RELAY_AUTHORITY", self.sandbox.authority()),
            (
                "SMTP_OAUTH_RELAY_UPSTREAM",
                format!("localhost:{}", self.sandbox.smtp_addr().port()),
            ),
            (
                "SMTP_OAUTH_RELAY_EXTRA_CA_FILE",
                self.ca_file.display().to_string(),
            ),
            (
                "SMTP_OAUTH_RELAY_SPOOL_DIR",
                self.dir.path().join("spool").display().to_string(),
            ),
            // Tests that are not about pacing must not wait for Exchange's 30/min.
            ("SMTP_OAUTH_RELAY_RATE_PER_MINUTE", "0".to_string()),
        ];
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// A validated relay configuration for this sandbox; `extra` env pairs override.
    pub fn config(&self, extra: &[(&str, &str)]) -> ValidConfig {
        let mut env = self.env();
        for (k, v) in extra {
            env.retain(|(name, _)| name != k);
            env.push((k.to_string(), v.to_string()));
        }
        Config::load(None, &env)
            .expect("config loads")
            .validate()
            .expect("config validates")
    }

    pub async fn relay(&self, extra: &[(&str, &str)]) -> Relay {
        Relay::start(self.config(extra))
            .await
            .expect("relay starts")
    }

    pub async fn wait_for(&self, n: usize) -> Vec<StoredMessage> {
        self.sandbox
            .wait_for_messages(n, Duration::from_secs(30))
            .await
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }
}

/// Strips the relay's `Received:` header (first header, folded lines) from a stored message.
pub fn strip_received(data: &[u8]) -> &[u8] {
    assert!(
        data.starts_with(b"Received: from "),
        "message must start with the relay's Received header: {:?}",
        String::from_utf8_lossy(&data[..data.len().min(200)])
    );
    let mut pos = 0;
    loop {
        let nl = data[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("header line end")
            + pos
            + 2;
        pos = nl;
        if !matches!(data.get(pos), Some(b' ') | Some(b'\t')) {
            return &data[pos..];
        }
    }
}

/// A byte-level SMTP client: sends exactly what it is told, reads replies whole.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("connect to relay");
        let mut c = RawClient {
            stream,
            buf: Vec::new(),
        };
        let greeting = c.reply().await;
        assert!(greeting.starts_with("220 "), "greeting: {greeting}");
        c
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads one complete reply (all lines), with a 60 s limit.
    pub async fn reply(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                if let Some(end) = complete_reply(&self.buf) {
                    let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                    self.buf.drain(..end);
                    return text;
                }
                let mut chunk = [0u8; 4096];
                let n = self.stream.read(&mut chunk).await.expect("read");
                if n == 0 {
                    let text = String::from_utf8_lossy(&self.buf).into_owned();
                    self.buf.clear();
                    return format!("EOF {text}");
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("reply within 60 s")
    }

    /// Sends a command line and asserts the reply code.
    pub async fn cmd(&mut self, line: &str, code: u16) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        let reply = self.reply().await;
        assert!(
            reply.starts_with(&code.to_string()),
            "{line} -> expected {code}, got {reply}"
        );
        reply
    }

    /// A whole transaction: EHLO (once), MAIL, RCPTs, DATA with an already dot-stuffed body
    /// that ends with CRLF. Returns the DATA reply.
    pub async fn send_mail(&mut self, from: &str, to: &[&str], stuffed_body: &[u8]) -> String {
        self.cmd(&format!("MAIL FROM:<{from}>"), 250).await;
        for r in to {
            self.cmd(&format!("RCPT TO:<{r}>"), 250).await;
        }
        self.cmd("DATA", 354).await;
        self.send(stuffed_body).await;
        self.send(b".\r\n").await;
        self.reply().await
    }
}

fn complete_reply(buf: &[u8]) -> Option<usize> {
    let mut pos = 0;
    while let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') {
        let line = &buf[pos..pos + nl + 1];
        pos += nl + 1;
        if line.len() >= 4 && line[3] == b' ' || line.len() < 4 {
            return Some(pos);
        }
    }
    None
}

/// Polls `cond` every 10 ms until it holds; panics naming `what` if `limit` passes first. The
/// limit only matters when the test fails: it is not a guess at how long something takes.
pub async fn wait_until(what: &str, limit: Duration, cond: impl FnMut() -> bool) {
    assert!(
        eventually(limit, cond).await,
        "timed out after {limit:?} waiting for {what}"
    );
}

/// The send queue (bytes not yet acknowledged by the peer) and the receive queue (bytes the
/// application has not read yet) of the IPv4 TCP socket `local` -> `remote`, from the kernel's
/// table (`/proc/net/tcp`, Linux).
fn tcp_queues(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<(u64, u64)> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => panic!("tcp_queues: IPv4 only, got {a}"),
    };
    let (local, remote) = (hex(local), hex(remote));
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || f[1] != local || f[2] != remote {
            return None;
        }
        let (tx, rx) = f[4].split_once(':')?;
        Some((
            u64::from_str_radix(tx, 16).ok()?,
            u64::from_str_radix(rx, 16).ok()?,
        ))
    })
}

/// Waits until the program at the other end of `stream` (a relay on loopback) has read every
/// byte written to `stream` so far: the kernel has no unacknowledged bytes on our side and
/// none unread on the peer's side. This is the event "the relay read it", where tests used to
/// sleep and hope. Panics after 10 s (only a stuck peer takes that long).
pub async fn wait_until_read_by_peer(stream: &TcpStream, what: &str) {
    wait_until_read_by_peer_within(stream, what, Duration::from_secs(10)).await
}

/// How many connections wait in the accept queue of the IPv4 listening socket `listen`:
/// completed by the kernel, never accepted by the program (`/proc/net/tcp`, Linux).
pub fn accept_queue_len(listen: SocketAddr) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let unconnected = SocketAddr::from(([0, 0, 0, 0], 0));
    tcp_queues(&table, listen, unconnected)
        .unwrap_or_else(|| panic!("no listening socket on {listen}"))
        .1
}

/// One plain HTTP/1.0 GET on loopback: (status, body); (0, "") if there is no answer in 10 s.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let work = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8(buf).ok()?;
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n")?.1.to_string();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .ok()
        .flatten()
        .unwrap_or((0, String::new()))
}

/// The value of one series (`name{labels}` exactly as exposed) in Prometheus text, if present.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// The relay binary built by cargo for integration tests.
pub fn relay_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_smtp-oauth-relay"))
}

/// [`wait_until_read_by_peer`] with a limit of the caller's choosing, for tests whose peer
/// has much to read (hundreds of large bodies at once).
pub async fn wait_until_read_by_peer_within(stream: &TcpStream, what: &str, limit: Duration) {
    let local = stream.local_addr().expect("local addr");
    let peer = stream.peer_addr().expect("peer addr");
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
        let ours = tcp_queues(&table, local, peer);
        let theirs = tcp_queues(&table, peer, local);
        if let (Some((0, _)), Some((_, 0))) = (ours, theirs) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: the peer did not read everything within {limit:?} \
             (ours tx/rx {ours:?}, peer's tx/rx {theirs:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The relay's queue id from a `250 2.0.0 <id> ...` reply.
pub fn reply_id(reply: &str) -> String {
    reply
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no id in {reply:?}"))
        .to_string()
}

/// Polls `cond` every 10 ms until it holds or `limit` passes. Returns whether it held (for
/// tests that assert on the outcome themselves; [`wait_until`] panics instead).
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
