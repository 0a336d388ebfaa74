//! Real SMTP clients against an in-process relay and sandbox: Python's `smtplib`, `curl`
//! and `swaks`, run as child processes the way legacy apps and admins would use them.
//!
//! More clients and legacy dialogs are in `compat_clients.rs`. A missing tool skips its test
//! with "skipped: <tool> not installed", except when `COMPAT_REQUIRE_TOOLS` or `CI` is set:
//! `.ci/run` installs them (`apt-get install swaks curl python3`), so there a missing tool
//! fails the test (`support/tools.rs`).

mod support;
#[path = "support/tools.rs"]
mod tools;

use std::path::Path;

use support::{strip_received, World};
use tools::{contains, decode_base64, exactly, run_tool, tool_available};

/// The relay adds a missing Date or Message-ID by default; byte-exact tests switch it off.
const NOTHING_ADDED: (&str, &str) = ("SMTP_OAUTH_RELAY__DELIVERY__ADD_MISSING_HEADERS", "false");

// ---------------------------------------------------------------------------------------
// Python smtplib
// ---------------------------------------------------------------------------------------

/// Sends with `smtplib.SMTP.send_message` and prints, base64, the exact bytes smtplib
/// flattens the message to (before dot-stuffing), which is what must be stored.
const PYTHON_SCRIPT: &str = r#"
import base64, smtplib, sys
from email.message import EmailMessage

host, port = sys.argv[1], int(sys.argv[2])
msg = EmailMessage()
msg["From"] = "App <app@example.com>"
msg["To"] = "Alice <alice@example.com>, bob@example.org"
msg["Subject"] = "smtplib through the relay"
msg["Message-ID"] = "<smtplib-1@third-party.test>"
msg.set_content(
    "Hello from smtplib.\n"
    ".a line that starts with a dot\n"
    "..and one with two\n"
    ".\n"
    "Gr\u00fc\u00dfe aus K\u00f6ln, na\u00efve caf\u00e9, \u2713 \u65e5\u672c\n"
    "last line\n"
)
with smtplib.SMTP(host, port, timeout=30) as s:
    refused = s.send_message(msg)
    if refused:
        sys.exit("refused: %r" % (refused,))
flat = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
print(base64.b64encode(flat).decode())
"#;

#[tokio::test]
async fn python_smtplib_send_message() {
    if !tool_available("python3") {
        return;
    }
    let world = World::start().await;
    // Byte-exact: no Date or Message-ID added (tests/missing_headers.rs).
    let relay = world.relay(&[NOTHING_ADDED]).await;
    let addr = relay.local_addr();
    let port = addr.port().to_string();
    let host = addr.ip().to_string();
    let out = run_tool(
        "python3",
        &["-c", PYTHON_SCRIPT, &host, &port],
        world.dir.path(),
    )
    .await;
    out.assert_success("python3 smtplib");

    let expected = decode_base64(&out.stdout);
    let stored = exactly(&world, relay, 1).await;
    let m = &stored[0];
    assert_eq!(
        m.envelope.rcpt_to,
        vec!["alice@example.com", "bob@example.org"]
    );
    let data = strip_received(&m.data);
    // Sanity: what smtplib sent has the tricky lines at all.
    assert!(contains(
        &expected,
        b"\r\n.a line that starts with a dot\r\n"
    ));
    assert!(contains(&expected, "Grüße aus Köln".as_bytes()));
    assert!(contains(&expected, b"Content-Transfer-Encoding: 8bit\r\n"));
    assert_eq!(
        String::from_utf8_lossy(data),
        String::from_utf8_lossy(&expected),
        "stored message differs from what smtplib sent"
    );
    assert_eq!(data, &expected[..]);
}

// ---------------------------------------------------------------------------------------
// curl
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn curl_upload_file_is_stored_byte_exact() {
    if !tool_available("curl") {
        return;
    }
    let world = World::start().await;
    // Byte-exact: no Date or Message-ID added (tests/missing_headers.rs).
    let relay = world.relay(&[NOTHING_ADDED]).await;
    let addr = relay.local_addr();

    let message: &[u8] = b"From: a@b\r\n\
To: x@y\r\n\
Subject: curl through the relay\r\n\
Message-ID: <curl-1@third-party.test>\r\n\
\r\n\
Uploaded by curl.\r\n\
.a leading dot that curl must stuff\r\n\
..two dots\r\n\
.\r\n\
last line\r\n";
    let file = world.dir.path().join("message.eml");
    std::fs::write(&file, message).expect("write message file");

    let url = format!("smtp://{addr}");
    let file_arg = file.display().to_string();
    let out = run_tool(
        "curl",
        &[
            "--silent",
            "--show-error",
            "--max-time",
            "30",
            "--url",
            &url,
            "--mail-from",
            "a@b",
            "--mail-rcpt",
            "x@y",
            "--upload-file",
            &file_arg,
        ],
        world.dir.path(),
    )
    .await;
    out.assert_success("curl");
    assert_eq!(out.status.code(), Some(0));

    let stored = exactly(&world, relay, 1).await;
    let m = &stored[0];
    assert_eq!(m.envelope.rcpt_to, vec!["x@y"]);
    assert_eq!(
        String::from_utf8_lossy(strip_received(&m.data)),
        String::from_utf8_lossy(message)
    );
    assert_eq!(strip_received(&m.data), message);
}

// ---------------------------------------------------------------------------------------
// swaks
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn swaks_default_message() {
    if !tool_available("swaks") {
        return;
    }
    let world = World::start().await;
    let relay = world.relay(&[]).await;
    let server = relay.local_addr().to_string();
    let out = run_tool(
        "swaks",
        &[
            "--server",
            &server,
            "--to",
            "someone@example.com",
            "--timeout",
            "30",
        ],
        world.dir.path(),
    )
    .await;
    out.assert_success("swaks");

    let stored = exactly(&world, relay, 1).await;
    let m = &stored[0];
    assert_eq!(m.envelope.rcpt_to, vec!["someone@example.com"]);
    let data = strip_received(&m.data);
    assert!(
        contains(data, b"To: someone@example.com\r\n"),
        "{}",
        String::from_utf8_lossy(data)
    );
    assert!(
        contains(data, b"This is a test mailing"),
        "{}",
        String::from_utf8_lossy(data)
    );
    assert!(data.ends_with(b"\r\n"));
}

#[tokio::test]
async fn swaks_body_with_leading_dots() {
    if !tool_available("swaks") {
        return;
    }
    let world = World::start().await;
    let relay = world.relay(&[]).await;
    let server = relay.local_addr().to_string();
    let body = "first line\n.leading dot line\n..two leading dots\n.\nlast line";
    let out = run_tool(
        "swaks",
        &[
            "--server",
            &server,
            "--from",
            "app@example.com",
            "--to",
            "someone@example.com,other@example.org",
            "--header",
            "Subject: swaks dots",
            "--body",
            body,
            "--timeout",
            "30",
        ],
        world.dir.path(),
    )
    .await;
    out.assert_success("swaks --body");

    let stored = exactly(&world, relay, 1).await;
    let m = &stored[0];
    assert_eq!(
        m.envelope.rcpt_to,
        vec!["someone@example.com", "other@example.org"]
    );
    let data = strip_received(&m.data);
    let text = String::from_utf8_lossy(data);
    assert!(text.contains("Subject: swaks dots\r\n"), "{text}");
    assert!(
        text.contains(
            "\r\n\r\nfirst line\r\n.leading dot line\r\n..two leading dots\r\n.\r\nlast line\r\n"
        ),
        "the body must arrive un-stuffed, line for line:\n{text}"
    );
}

// ---------------------------------------------------------------------------------------
// The README's quick-start examples, exactly as a new user pastes them
// ---------------------------------------------------------------------------------------

/// The shell lines of the README's first code block after `marker`.
fn readme_block_after(marker: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let rest = readme
        .split_once(marker)
        .unwrap_or_else(|| panic!("README lacks {marker:?}"))
        .1;
    let block = rest
        .split_once("```sh\n")
        .expect("a sh block follows")
        .1
        .split_once("```")
        .expect("the block ends")
        .0;
    block
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn readme_quick_start_mail_examples_run_as_written() {
    let lines = readme_block_after("send it mail from **a second terminal**");
    for tool in ["swaks", "curl", "python3"] {
        assert!(
            lines.iter().any(|l| l.starts_with(tool)),
            "the block shows {tool}"
        );
        if !tool_available(tool) {
            return;
        }
    }
    let world = World::start().await;
    let relay = world.relay(&[]).await;
    let port = relay.local_addr().port();
    // A fresh directory, as on a new clone: every file a line needs, an earlier line makes.
    let cwd = tempfile::tempdir().expect("tempdir");
    let mut sent = 0;
    for line in &lines {
        let line = line
            .replace("127.0.0.1:2525", &format!("127.0.0.1:{port}"))
            .replace("\"127.0.0.1\", 2525", &format!("\"127.0.0.1\", {port}"));
        assert!(!line.contains("2525"), "port not replaced in: {line}");
        let out = run_tool("sh", &["-c", &line], cwd.path()).await;
        out.assert_success(&line);
        if !line.starts_with("printf") {
            sent += 1;
        }
    }
    assert_eq!(sent, 3, "swaks, curl and python each send one message");
    exactly(&world, relay, sent).await;
}
