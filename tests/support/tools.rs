//! Running real third-party programs (SMTP clients) from integration tests, shared by
//! `third_party_clients.rs` and `compat_clients.rs`. Include it beside `mod support;` with
//! `#[path = "support/tools.rs"] mod tools;` ([`exactly`] uses `crate::support::World`).
//!
//! A missing tool skips its test with "skipped: <tool> not installed", except when
//! `COMPAT_REQUIRE_TOOLS` (set by `.ci/run`) or `CI` is set: there a missing tool fails the
//! test, so CI cannot go green by skipping.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use smtp_oauth_relay::app::Relay;
use smtp_oauth_relay::sandbox::StoredMessage;

use crate::support::World;

/// How long one external client may run.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether a missing tool must fail the test instead of skipping it.
fn tools_required() -> bool {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    set("COMPAT_REQUIRE_TOOLS") || set("CI")
}

/// Whether `tool` can be run. Missing: panics when tools are required, otherwise prints why
/// (so a skipped test says so) and returns false.
pub fn tool_available(tool: &str) -> bool {
    let probe = Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match probe {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if tools_required() {
                panic!(
                    "{tool} is not installed, but COMPAT_REQUIRE_TOOLS or CI is set \
                     (.ci/run installs it with apt-get)"
                );
            }
            eprintln!("skipped: {tool} not installed");
            false
        }
        Err(e) => panic!("cannot run {tool}: {e}"),
    }
}

/// What a finished tool said.
pub struct ToolOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ToolOutput {
    pub fn assert_success(&self, what: &str) {
        assert!(
            self.status.success(),
            "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }
}

/// Runs `program args` with no input; see [`run_tool_with_stdin`].
pub async fn run_tool(program: &str, args: &[&str], cwd: &Path) -> ToolOutput {
    run_tool_with_stdin(program, args, None, cwd).await
}

/// Runs `program args` in `cwd` with `stdin` (a file, or nothing) and its output captured to
/// files (no pipe can fill up), polling for its end without blocking the runtime; killed
/// after [`TOOL_TIMEOUT`].
pub async fn run_tool_with_stdin(
    program: &str,
    args: &[&str],
    stdin: Option<&Path>,
    cwd: &Path,
) -> ToolOutput {
    let out_path = cwd.join(format!("{program}.stdout"));
    let err_path = cwd.join(format!("{program}.stderr"));
    let input = match stdin {
        Some(path) => Stdio::from(
            std::fs::File::open(path)
                .unwrap_or_else(|e| panic!("open {} for stdin: {e}", path.display())),
        ),
        None => Stdio::null(),
    };
    let mut child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(input)
        .stdout(Stdio::from(
            std::fs::File::create(&out_path).expect("stdout file"),
        ))
        .stderr(Stdio::from(
            std::fs::File::create(&err_path).expect("stderr file"),
        ))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let deadline = tokio::time::Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{program} did not finish within {TOOL_TIMEOUT:?}:\nstdout:\n{}\nstderr:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    ToolOutput {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// Waits for `n` stored messages, then proves no more will come: `relay.shutdown` returns
/// true only once every session and every delivery the relay started has ended, and an empty
/// `queue/` means nothing waits for a later attempt; so whatever the client's visit makes the
/// relay deliver is in the store by then. (Call it after the client is done.)
pub async fn exactly(world: &World, relay: Relay, n: usize) -> Vec<StoredMessage> {
    let got = world.wait_for(n).await;
    assert_eq!(got.len(), n, "expected {n} stored message(s)");
    assert!(
        relay.shutdown(Duration::from_secs(10)).await,
        "the relay finishes every session and delivery"
    );
    let queued = std::fs::read_dir(world.spool_dir().join("queue"))
        .expect("queue/")
        .count();
    assert_eq!(queued, 0, "nothing left queued for a later attempt");
    let got = world.sandbox.messages();
    assert_eq!(got.len(), n, "expected exactly {n} stored message(s)");
    got
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

pub fn decode_base64(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .expect("base64 from the tool")
}
