//! A token endpoint (or a proxy) that echoes the request must not leak any piece of the client
//! secret: not in the log, `/readyz`, `check`, `token`, nor the `451` a client gets.
//!
//! The sandbox's echoing mode answers every token request with a `400` whose body is filler and
//! then the form body, so the URL-encoded secret straddles the 200-character excerpt the error
//! keeps: cutting before scrubbing would leave a piece of it that no longer matches the whole.
//! The secret has upper case and every character that URL-encodes (`~`, `+`, `/`, `=`).

mod support;
#[path = "support/child.rs"]
mod child;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use child::{free_addr, RelayChild};
use secrecy::SecretString;
use support::{http_get, relay_binary, RawClient, World};

const SECRET: &str = "Zq8Q~Ab+Cd/Ef=GhIjKlMnOpQrStUvWxYz~+/=9A";
/// With `client_id=<36>&client_secret=` (61 characters) after it, the encoded secret runs
/// from character 181 to 237 of the echo: across the 200-character cut.
const FILLER: usize = 120;

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The first 8-character piece of the secret (raw or URL-encoded, any ASCII case) in `text`.
fn leak(text: &str) -> Option<String> {
    let text = text.to_ascii_lowercase();
    for form in [SECRET.to_string(), form_encode(SECRET)] {
        let form = form.to_ascii_lowercase();
        let chars: Vec<char> = form.chars().collect();
        for w in chars.windows(8) {
            let piece: String = w.iter().collect();
            if text.contains(&piece) {
                return Some(piece);
            }
        }
    }
    None
}

/// Asserts `text` (what `what` showed) quotes the echo, scrubbed, and holds no piece of it.
fn assert_scrubbed(what: &str, text: &str) {
    assert_eq!(
        leak(text),
        None,
        "{what} leaks a piece of the secret:\n{text}"
    );
    assert!(
        text.contains("<redacted>"),
        "{what} should show the echo with the secret scrubbed (else this test proves nothing):\n{text}"
    );
}

/// Runs a one-shot command of the binary; its stdout and stderr together.
fn run(args: &[&str], env: &[(String, String)], cwd: &Path) -> String {
    let mut cmd = Command::new(relay_binary());
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("SMTP_OAUTH_RELAY_") || n == "RUST_LOG" {
            cmd.env_remove(&name);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn the relay binary");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echoing_token_endpoint_leaks_no_piece_of_the_secret() {
    let world = World::start_with(|o| {
        o.client_secret = SecretString::from(SECRET);
        o.echo_token_requests = Some(FILLER);
    })
    .await;
    assert_eq!(world.secret(), SECRET);
    let addr = free_addr();
    let admin = free_addr();
    let mut env = world.env();
    env.retain(|(k, _)| k != "SMTP_OAUTH_RELAY_LISTEN" && k != "SMTP_OAUTH_RELAY_ADMIN_LISTEN");
    env.push(("SMTP_OAUTH_RELAY_LISTEN".into(), addr.to_string()));
    env.push(("SMTP_OAUTH_RELAY_ADMIN_LISTEN".into(), admin.to_string()));
    env.push(("RUST_LOG".into(), "info,smtp_oauth_relay=debug".into()));

    // `check` and `token`.
    let cwd = world.dir.path().to_path_buf();
    let (check, token) = tokio::task::spawn_blocking({
        let env = env.clone();
        move || (run(&["check"], &env, &cwd), run(&["token"], &env, &cwd))
    })
    .await
    .unwrap();
    assert_scrubbed("check", &check);
    assert_scrubbed("token", &token);

    // `serve`: the client's 451, /readyz, the log.
    let log = world.dir.path().join("relay.log");
    let mut relay = RelayChild::spawn(relay_binary(), &[], &env, world.dir.path(), &log);
    relay.wait_ready(addr, Duration::from_secs(30)).await;
    let mut c = RawClient::connect(addr).await;
    c.cmd("EHLO app.example", 250).await;
    let reply = c
        .send_mail(
            "app@example.com",
            &["someone@example.com"],
            b"Subject: x\r\n\r\nHello.\r\n",
        )
        .await;
    assert!(reply.starts_with("451 "), "a held account: {reply}");
    assert_scrubbed("the 451 reply", &reply);
    c.cmd("QUIT", 221).await;

    let (status, readyz) = http_get(admin, "/readyz").await;
    assert_eq!(status, 503, "{readyz}");
    assert_scrubbed("/readyz", &readyz);

    relay.sigterm().await;
    relay.wait_exit(Duration::from_secs(30)).await;
    assert_scrubbed("the log", &relay.stderr());
}
