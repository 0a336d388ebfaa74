//! The relay as users run it: the real binary as a child process, configured by environment
//! variables (or `serve --sandbox`), stopped by SIGTERM. The Exchange stand-in runs
//! in-process (`World`), except for the `--sandbox` test where the binary embeds its own.
//!
//! Every wait is bounded; the child is killed when its handle drops. `std::process` is used
//! with non-blocking `try_wait` polling (tokio's `process` feature is not enabled).

#[path = "support/child.rs"]
mod child;
mod support;
use child::{greets_220, strip_ansi};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use support::{relay_binary, strip_received, RawClient, World};
use tempfile::TempDir;

/// How long the child may take to answer its first `220`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a configuration error may take to end the process.
const CONFIG_EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long SIGTERM may take to end an idle relay.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A loopback address with a port that was free a moment ago.
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr")
}

/// `world.env()` with `SMTP_OAUTH_RELAY_LISTEN` set to `listen` and `extra` overriding.
fn world_env(world: &World, listen: SocketAddr, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = world.env();
    let listen = listen.to_string();
    for (k, v) in [("SMTP_OAUTH_RELAY_LISTEN", listen.as_str())]
        .iter()
        .chain(extra.iter())
    {
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

/// A running (or finished) child relay with its stderr captured to a file.
struct RelayProcess {
    child: Child,
    stderr_path: PathBuf,
    /// Holds the stderr file (and the working directory when the test needs none of its own).
    _dir: TempDir,
}

impl RelayProcess {
    /// Starts the binary with exactly `env` on top of the parent's environment stripped of
    /// every `SMTP_OAUTH_RELAY_*` and `RUST_LOG`. `cwd` defaults to a fresh temporary
    /// directory, so a stray `./spool` or `./sandbox-mail` never lands in the repository.
    fn spawn(args: &[&str], env: &[(String, String)], cwd: Option<&Path>) -> RelayProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let stderr_path = dir.path().join("relay.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr file");
        let mut cmd = Command::new(relay_binary());
        cmd.args(args)
            .current_dir(cwd.unwrap_or(dir.path()))
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
        let child = cmd.spawn().expect("spawn the relay binary");
        RelayProcess {
            child,
            stderr_path,
            _dir: dir,
        }
    }

    /// The captured stderr so far, without ANSI colour sequences (the relay colours its
    /// text log even when stderr is not a terminal).
    fn stderr(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.stderr_path).unwrap_or_default())
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `addr` until the relay answers `220` (then says QUIT), or panics with the
    /// child's stderr if it exits or takes longer than `READY_TIMEOUT`.
    async fn wait_ready(&mut self, addr: SocketAddr) {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "relay exited before listening ({status}); stderr:\n{}",
                    self.stderr()
                );
            }
            if let Ok(Ok(true)) =
                tokio::time::timeout(Duration::from_secs(2), greets_220(addr)).await
            {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "relay did not answer 220 on {addr} within {READY_TIMEOUT:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM (with the `kill` utility: no libc/nix needed).
    async fn sigterm(&self) {
        let pid = self.pid().to_string();
        let status = tokio::task::spawn_blocking(move || {
            Command::new("kill").arg("-TERM").arg(pid).status()
        })
        .await
        .expect("join")
        .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits at most `limit` for the process to end.
    async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
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
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls the captured stderr until it contains `needle` (at most `limit`).
    async fn wait_stderr(&self, needle: &str, limit: Duration) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let text = self.stderr();
            if text.contains(needle) || tokio::time::Instant::now() >= deadline {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for RelayProcess {
    /// Kills the child if it is still running (SIGKILL), like tokio's `kill_on_drop`.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn body(subject: &str) -> Vec<u8> {
    format!(
        "From: app@example.com\r\n\
         To: someone@example.com\r\n\
         Subject: {subject}\r\n\
         Message-ID: <{subject}@cli-process.test>\r\n\
         \r\n\
         Hello from a child relay.\r\n\
         ..a stuffed leading dot\r\n\
         last line\r\n"
    )
    .into_bytes()
}

/// The body as stored: `body()` with the dot-stuffing removed.
fn unstuffed(stuffed: &[u8]) -> Vec<u8> {
    String::from_utf8(stuffed.to_vec())
        .unwrap()
        .replace("\r\n..", "\r\n.")
        .into_bytes()
}

/// `data` after the `Date:` the relay adds by default to a message without one
/// (tests/missing_headers.rs), which must be there; the message's own `Message-ID:` is kept,
/// not joined by a second one.
fn without_added_date(data: &[u8]) -> &[u8] {
    let text = String::from_utf8_lossy(data);
    let date = text.split("\r\n").next().unwrap_or("");
    assert!(date.starts_with("Date: "), "Date: added first: {text}");
    assert_eq!(text.matches("Message-ID:").count(), 1, "{text}");
    &data[date.len() + 2..]
}

// ---------------------------------------------------------------------------------------
// a. happy path, configured by environment variables only
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn env_only_child_relay_delivers_byte_exact() {
    let world = World::start().await;
    let addr = free_addr();
    let mut relay = RelayProcess::spawn(&[], &world_env(&world, addr, &[]), None);
    relay.wait_ready(addr).await;

    let mut c = RawClient::connect(addr).await;
    c.cmd("EHLO app.example", 250).await;
    let stuffed = body("env-only");
    let reply = c
        .send_mail("app@example.com", &["someone@example.com"], &stuffed)
        .await;
    assert!(reply.starts_with("250 "), "DATA reply: {reply}");
    c.cmd("QUIT", 221).await;

    let stored = world.wait_for(1).await;
    assert_eq!(stored.len(), 1, "stderr:\n{}", relay.stderr());
    assert_eq!(stored[0].envelope.rcpt_to, vec!["someone@example.com"]);
    assert_eq!(
        String::from_utf8_lossy(without_added_date(strip_received(&stored[0].data))),
        String::from_utf8_lossy(&unstuffed(&stuffed))
    );

    let log = relay.stderr();
    assert!(log.contains("smtp-oauth-relay ready"), "stderr:\n{log}");
    assert!(log.contains(&format!("listen={addr}")), "stderr:\n{log}");
}

// ---------------------------------------------------------------------------------------
// b. wrong client secret: 451 4.7.0 and advice in the log, never the secret
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn wrong_client_secret_gets_451_and_advice_without_the_secret() {
    let world = World::start().await;
    let real_secret = world.secret();
    // Microsoft's value shape: 3 chars, a digit, `Q~`, 34 chars.
    let wrong = format!("xyz8Q~{}", "Wr0ngS3cretWr0ngS3cretWr0ngS3cret_");
    assert_eq!(wrong.len(), 40);
    let addr = free_addr();
    let env = world_env(
        &world,
        addr,
        &[("SMTP_OAUTH_RELAY_CLIENT_SECRET", wrong.as_str())],
    );
    let mut relay = RelayProcess::spawn(&[], &env, None);
    relay.wait_ready(addr).await;

    let mut c = RawClient::connect(addr).await;
    c.cmd("EHLO app.example", 250).await;
    let reply = c
        .send_mail(
            "app@example.com",
            &["someone@example.com"],
            &body("wrong-secret"),
        )
        .await;
    assert!(
        reply.starts_with("451 4.7.0"),
        "DATA with a wrong secret must get 451 4.7.0, got: {reply}"
    );

    let log = relay
        .wait_stderr("AADSTS7000215", Duration::from_secs(10))
        .await;
    assert!(log.contains("AADSTS7000215"), "stderr:\n{log}");
    assert!(
        log.contains("Value") && log.contains("secret ID"),
        "the log must say to use the secret Value, not the secret ID:\n{log}"
    );
    for (what, text) in [("stderr", &log), ("DATA reply", &reply)] {
        assert!(
            !text.contains(&wrong),
            "{what} contains the wrong secret:\n{text}"
        );
        assert!(
            !text.contains(&real_secret),
            "{what} contains the sandbox's real secret:\n{text}"
        );
    }
    assert!(world.sandbox.messages().is_empty());
}

#[tokio::test]
async fn serve_logs_what_to_open_when_the_token_endpoint_is_unreachable() {
    let world = World::start().await;
    let addr = free_addr();
    let closed = free_addr();
    let authority = format!("https://{closed}");
    let env = world_env(
        &world,
        addr,
        &[("SMTP_OAUTH_RELAY_AUTHORITY", authority.as_str())],
    );
    let mut relay = RelayProcess::spawn(&[], &env, None);
    relay.wait_ready(addr).await;
    let log = relay
        .wait_stderr("cannot obtain an access token", Duration::from_secs(10))
        .await;
    let line = log
        .lines()
        .find(|l| l.contains("cannot obtain an access token"))
        .expect("the warning line");
    assert!(!line.contains("advice=\"\""), "empty advice:\n{line}");
    assert!(
        line.contains("outbound HTTPS (TCP 443)") && line.contains("HTTPS_PROXY"),
        "the advice names the port and the proxy variable:\n{line}"
    );
}

// ---------------------------------------------------------------------------------------
// c. secrets and tokens never logged, even at trace level
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn trace_logging_never_shows_secret_or_tokens() {
    let world = World::start().await;
    let secret = world.secret();
    let addr = free_addr();
    let mut env = world_env(&world, addr, &[]);
    env.push(("RUST_LOG".into(), "trace".into()));
    let mut relay = RelayProcess::spawn(&[], &env, None);
    relay.wait_ready(addr).await;

    let mut c = RawClient::connect(addr).await;
    c.cmd("EHLO app.example", 250).await;
    for i in 0..2 {
        let reply = c
            .send_mail(
                "app@example.com",
                &["someone@example.com"],
                &body(&format!("trace-{i}")),
            )
            .await;
        assert!(reply.starts_with("250 "), "message {i}: {reply}");
    }
    c.cmd("QUIT", 221).await;
    assert_eq!(world.wait_for(2).await.len(), 2);
    assert!(world.sandbox.tokens_issued() >= 1);

    relay.sigterm().await;
    let status = relay.wait_exit(STOP_TIMEOUT).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", relay.stderr());

    let log = relay.stderr();
    assert!(
        log.contains("delivered") && log.contains("TRACE") && log.len() > 1000,
        "trace log should be substantial and mention deliveries:\n{log}"
    );
    // The secret as it would appear in a logged form body (`~` is encoded there).
    let form_encoded = secret.replace('~', "%7E");
    let forbidden: [(&str, &str); 5] = [
        (secret.as_str(), "the client secret"),
        (form_encoded.as_str(), "the form-encoded client secret"),
        ("eyJ", "a JWT (access token)"),
        ("dXNlcj", "a base64 XOAUTH2 string (user=...)"),
        ("auth=Bearer", "a decoded XOAUTH2 string"),
    ];
    for (needle, what) in forbidden {
        if let Some(pos) = log.find(needle) {
            let start = log[..pos].rfind('\n').map_or(0, |p| p + 1);
            let end = log[pos..].find('\n').map_or(log.len(), |p| pos + p);
            panic!(
                "trace log contains {what}; first such line:\n{}",
                &log[start..end].replace(&secret, "<SECRET>")
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// d. configuration errors: exit 64, name the key, bind nothing
// ---------------------------------------------------------------------------------------

const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const CLIENT_ID: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
const SECRET: &str = "abc8Q~abcdefghijklmnopqrstuvwxyz01234567";
const MAILBOX: &str = "relay@contoso.com";

/// A complete, valid single-account environment (pointing at Microsoft, never contacted
/// because every test below breaks one value) listening on `listen`.
fn good_env(listen: SocketAddr) -> Vec<(String, String)> {
    [
        ("SMTP_OAUTH_RELAY_LISTEN", listen.to_string()),
        ("SMTP_OAUTH_RELAY_TENANT", TENANT.to_string()),
        ("SMTP_OAUTH_RELAY_CLIENT_ID", CLIENT_ID.to_string()),
        ("SMTP_OAUTH_RELAY_CLIENT_SECRET", SECRET.to_string()),
        ("SMTP_OAUTH_RELAY_MAILBOX", MAILBOX.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn with(mut env: Vec<(String, String)>, name: &str, value: Option<&str>) -> Vec<(String, String)> {
    env.retain(|(n, _)| n != name);
    if let Some(v) = value {
        env.push((name.to_string(), v.to_string()));
    }
    env
}

/// A loopback port this test holds while the child runs: a relay that bound its listener
/// before validating would fail with "cannot listen" (exit 1) instead of exiting 64.
fn held_port() -> (std::net::TcpListener, SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = l.local_addr().expect("local addr");
    (l, addr)
}

/// Runs the binary with `env`, expects exit 64 within `CONFIG_EXIT_TIMEOUT` and a stderr
/// that contains every `must` and none of `must_not`, and shows nothing was bound or started.
async fn expect_config_error(env: Vec<(String, String)>, must: &[&str], must_not: &[&str]) {
    let mut relay = RelayProcess::spawn(&[], &env, None);
    let status = relay.wait_exit(CONFIG_EXIT_TIMEOUT).await;
    let log = relay.stderr();
    assert_eq!(
        status.code(),
        Some(64),
        "exit status {status}; stderr:\n{log}"
    );
    for m in must {
        assert!(log.contains(m), "stderr must mention {m:?}:\n{log}");
    }
    for m in must_not {
        assert!(!log.contains(m), "stderr must not contain {m:?}:\n{log}");
    }
    for m in ["smtp-oauth-relay ready", "cannot listen", "sandbox started"] {
        assert!(
            !log.contains(m),
            "a configuration error must stop the relay before it binds or starts anything \
             (found {m:?}):\n{log}"
        );
    }
}

#[tokio::test]
async fn missing_mailbox_exits_64_naming_key_and_env_var() {
    let (_hold, listen) = held_port();
    let env = with(good_env(listen), "SMTP_OAUTH_RELAY_MAILBOX", None);
    expect_config_error(
        env,
        &["account.mailbox", "SMTP_OAUTH_RELAY_MAILBOX"],
        &[SECRET],
    )
    .await;
}

#[tokio::test]
async fn guid_client_secret_exits_64_without_echoing_it() {
    let (_hold, listen) = held_port();
    let guid = "0f0f0f0f-1111-2222-3333-444455556666";
    let env = with(
        good_env(listen),
        "SMTP_OAUTH_RELAY_CLIENT_SECRET",
        Some(guid),
    );
    expect_config_error(
        env,
        &["account.client_secret", "secret ID"],
        &[guid, "0f0f0f0f"],
    )
    .await;
}

#[tokio::test]
async fn unknown_mode_exits_64() {
    let (_hold, listen) = held_port();
    let env = with(good_env(listen), "SMTP_OAUTH_RELAY_MODE", Some("fast"));
    expect_config_error(env, &["delivery.mode"], &[SECRET]).await;
}

#[tokio::test]
async fn non_loopback_listen_without_allow_exits_64() {
    // Nothing may bind 0.0.0.0:2525 here: `listen.allow` is missing.
    let (_hold, listen) = held_port();
    let env = with(
        good_env(listen),
        "SMTP_OAUTH_RELAY_LISTEN",
        Some("0.0.0.0:2525"),
    );
    expect_config_error(env, &["listen.allow"], &[SECRET]).await;
}

#[tokio::test]
async fn common_tenant_exits_64() {
    let (_hold, listen) = held_port();
    let env = with(good_env(listen), "SMTP_OAUTH_RELAY_TENANT", Some("common"));
    expect_config_error(env, &["account.tenant"], &[SECRET]).await;
}

#[tokio::test]
async fn no_tenant_and_no_sandbox_exits_64_suggesting_sandbox() {
    let (_hold, listen) = held_port();
    let env = vec![("SMTP_OAUTH_RELAY_LISTEN".to_string(), listen.to_string())];
    expect_config_error(env, &["--sandbox", "SMTP_OAUTH_RELAY_TENANT"], &[]).await;
}

// ---------------------------------------------------------------------------------------
// e. `serve --sandbox` in an empty working directory
// ---------------------------------------------------------------------------------------

/// Stored `.eml` files (not temporary ones) directly in `dir`.
fn eml_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".eml") && !name.starts_with('.') && p.with_extension("json").is_file()
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn serve_sandbox_stores_mail_in_cwd_and_stops_on_sigterm() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let addr = free_addr();
    let env = vec![
        ("SMTP_OAUTH_RELAY_LISTEN".to_string(), addr.to_string()),
        (
            "SMTP_OAUTH_RELAY_ADMIN_LISTEN".to_string(),
            "127.0.0.1:0".to_string(),
        ),
    ];
    let mut relay = RelayProcess::spawn(&["serve", "--sandbox"], &env, Some(cwd.path()));
    relay.wait_ready(addr).await;

    let mut c = RawClient::connect(addr).await;
    c.cmd("EHLO app.example", 250).await;
    let stuffed = body("sandbox-mode");
    let reply = c
        .send_mail("app@example.com", &["someone@example.com"], &stuffed)
        .await;
    assert!(
        reply.starts_with("250 "),
        "DATA reply: {reply}; stderr:\n{}",
        relay.stderr()
    );
    c.cmd("QUIT", 221).await;

    let store = cwd.path().join("sandbox-mail");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let files = loop {
        let files = eml_files(&store);
        if !files.is_empty() || tokio::time::Instant::now() >= deadline {
            break files;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        files.len(),
        1,
        "one .eml expected in {}; stderr:\n{}",
        store.display(),
        relay.stderr()
    );
    let data = std::fs::read(&files[0]).expect("read .eml");
    assert_eq!(
        String::from_utf8_lossy(without_added_date(strip_received(&data))),
        String::from_utf8_lossy(&unstuffed(&stuffed))
    );
    let envelope = std::fs::read_to_string(files[0].with_extension("json")).expect("read .json");
    assert!(envelope.contains("someone@example.com"), "{envelope}");

    relay.sigterm().await;
    let status = relay.wait_exit(STOP_TIMEOUT).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", relay.stderr());
}

// ---------------------------------------------------------------------------------------
// f. SIGTERM tells an idle client 421 4.3.2 and exits 0
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn sigterm_sends_421_to_idle_client_and_exits_0() {
    let world = World::start().await;
    let addr = free_addr();
    let mut relay = RelayProcess::spawn(&[], &world_env(&world, addr, &[]), None);
    relay.wait_ready(addr).await;

    let mut c = RawClient::connect(addr).await;
    c.cmd("EHLO app.example", 250).await;
    relay.sigterm().await;
    let reply = tokio::time::timeout(STOP_TIMEOUT, c.reply())
        .await
        .expect("a reply after SIGTERM");
    assert!(
        reply.starts_with("421 4.3.2"),
        "idle client must be told 421 4.3.2, got: {reply}"
    );
    let status = relay.wait_exit(STOP_TIMEOUT).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", relay.stderr());
}
