//! `smtp-oauth-relay loadgen` as a user runs it: against the relay (plain SMTP), against the
//! sandbox directly (STARTTLS + AUTH XOAUTH2, the benchmark's ceiling), and with bad input.

mod support;

use std::process::Output;
use std::time::Duration;

use smtp_oauth_relay::sandbox::SmtpOutage;
use smtp_oauth_relay::token::{ClientSecretSettings, ClientSecretSource, TokenSource};
use support::{relay_binary, World};

async fn loadgen(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(relay_binary())
            .arg("loadgen")
            .args(&args)
            .env_remove("RUST_LOG")
            .output()
            .expect("run loadgen")
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test]
async fn loadgen_through_the_relay_reports_what_arrived() {
    let world = World::start().await;
    let relay = world.relay(&[]).await;
    let to = relay.local_addr().to_string();
    let out = loadgen(args(&[
        "--to",
        &to,
        "--messages",
        "30",
        "--concurrency",
        "4",
        "--size",
        "1k-20k",
        "--recipients",
        "2",
        "--json",
    ]))
    .await;
    assert!(out.status.success(), "{out:?}");
    let r = json(&out);
    assert_eq!(r["messages_ok"], 30, "{r}");
    assert_eq!(r["messages_failed"], 0, "{r}");
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    assert!(r["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    let stored = world.wait_for(30).await;
    assert_eq!(stored.len(), 30);
    assert!(stored.iter().all(|m| m.envelope.rcpt_to.len() == 2));
    let bytes: u64 = r["bytes_ok"].as_u64().unwrap();
    assert!((30 * 1000..=30 * 20_000).contains(&bytes), "{bytes}");

    // Text output, one connection, no pipelining, refused recipients counted by code.
    let out = loadgen(args(&[
        "--to",
        &to,
        "--messages",
        "3",
        "--concurrency",
        "1",
        "--no-pipelining",
    ]))
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("3 messages ok ("), "{text}");
    assert!(text.contains(", 0 failed"), "{text}");
    assert!(text.contains("errors: none"), "{text}");
}

/// A `250` from the relay says whether the message was delivered or only queued; the report
/// counts them apart (the issue: "1000 messages ok" when 970 were only queued).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_tells_delivered_from_queued() {
    let world = World::start().await;
    let direct = world.relay(&[("SMTP_OAUTH_RELAY_MODE", "direct")]).await;
    let run = |to: String| {
        loadgen(args(&[
            "--to",
            &to,
            "--messages",
            "5",
            "--concurrency",
            "2",
            "--json",
        ]))
    };
    let out = run(direct.local_addr().to_string()).await;
    assert!(out.status.success(), "{out:?}");
    let r = json(&out);
    assert_eq!(
        (
            &r["messages_ok"],
            &r["messages_delivered"],
            &r["messages_queued"]
        ),
        (&5.into(), &5.into(), &0.into()),
        "{r}"
    );
    direct.shutdown(Duration::from_secs(5)).await;

    // Queue mode with Exchange down: every message gets 250, none is delivered.
    world.sandbox.set_smtp_outage(Some(SmtpOutage::Refuse));
    let queue = world.relay(&[("SMTP_OAUTH_RELAY_MODE", "queue")]).await;
    let out = run(queue.local_addr().to_string()).await;
    assert!(out.status.success(), "{out:?}");
    let r = json(&out);
    assert_eq!(
        (
            &r["messages_ok"],
            &r["messages_delivered"],
            &r["messages_queued"]
        ),
        (&5.into(), &0.into(), &5.into()),
        "{r}"
    );
    let out = loadgen(args(&[
        "--to",
        &queue.local_addr().to_string(),
        "--messages",
        "3",
        "--concurrency",
        "1",
    ]))
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("3 messages ok (3 only queued by the relay, not yet delivered), 0 failed"),
        "{text}"
    );
    queue.shutdown(Duration::from_secs(5)).await;
}

/// Nothing listens: the report says why every attempt failed, not just `io: 3`.
#[tokio::test]
async fn loadgen_names_the_io_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let to = closed.to_string();
    let out = loadgen(args(&[
        "--to",
        &to,
        "--messages",
        "3",
        "--concurrency",
        "1",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let errors = text
        .lines()
        .find(|l| l.trim_start().starts_with("errors:"))
        .unwrap_or_else(|| panic!("no errors line: {text}"));
    assert!(
        errors.contains("io: connect: Connection refused") && errors.ends_with(": 3"),
        "{errors}"
    );
    let out = loadgen(args(&["--to", &to, "--messages", "2", "--json"])).await;
    let r = json(&out);
    let io: Vec<(&String, &serde_json::Value)> = r["errors"]
        .as_object()
        .expect("errors object")
        .iter()
        .collect();
    assert_eq!(io.len(), 1, "{r}");
    assert!(io[0].0.contains("refused"), "{r}");
    assert_eq!(io[0].1, 2, "{r}");
}

#[tokio::test]
async fn loadgen_against_the_sandbox_with_starttls_and_xoauth2() {
    let world = World::start().await;
    let o = world.sandbox.options();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    world.sandbox.write_ca_file(&ca).unwrap();
    let roots = smtp_oauth_relay::tls::load_pem_certificates(&ca).unwrap();
    let token = ClientSecretSource::new(ClientSecretSettings {
        token_url: world.sandbox.token_url(),
        client_id: o.client_id.clone(),
        client_secret: o.client_secret.clone(),
        scope: "https://outlook.office365.com/.default".into(),
        extra_roots: roots,
        timeout: Duration::from_secs(10),
    })
    .unwrap()
    .fetch()
    .await
    .unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token.expose()).unwrap();
    let to = format!("localhost:{}", world.sandbox.smtp_addr().port());
    let common = |secret: &str| {
        args(&[
            "--to",
            &to,
            "--messages",
            "10",
            "--concurrency",
            "2",
            "--starttls",
            "--ca-file",
            ca.to_str().unwrap(),
            "--auth",
            "xoauth2",
            "--user",
            support::MAILBOX,
            "--secret-file",
            secret,
            "--json",
        ])
    };
    let out = loadgen(common(token_file.to_str().unwrap())).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(json(&out)["messages_ok"], 10);
    assert_eq!(world.wait_for(10).await.len(), 10);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(token.expose()),
        "the token is never printed"
    );

    // A wrong token: every attempt fails at AUTH, counted by reply code; exit 1.
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "eyJ0eXAiOiJKV1QifQ.e30.bm9wZQ").unwrap();
    let out = loadgen(common(bad.to_str().unwrap())).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let r = json(&out);
    assert_eq!(r["messages_ok"], 0);
    assert!(r["errors"]["AUTH 535"].as_u64().unwrap() >= 1, "{r}");
}

#[tokio::test]
async fn loadgen_explains_bad_input_with_exit_64() {
    for (list, says) in [
        (vec!["--to", "nowhere"], "not host:port"),
        (vec!["--to", "127.0.0.1:1", "--size", "10"], "too small"),
        (
            vec!["--to", "127.0.0.1:1", "--concurrency", "0"],
            "--concurrency",
        ),
        (vec!["--to", "127.0.0.1:1", "--auth", "xoauth2"], "--user"),
        (
            vec!["--to", "127.0.0.1:1", "--ca-file", "x.pem"],
            "--starttls",
        ),
        (vec!["--to", "127.0.0.1:1", "--messages", "0"], "at least 1"),
    ] {
        let out = loadgen(args(&list)).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{list:?}: {err}");
        assert!(err.contains(says), "{list:?}: {err}");
    }
}
