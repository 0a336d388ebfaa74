//! The admin HTTP port over loopback: `/healthz`, `/readyz` (flips with the token endpoint and
//! back), `/metrics` (valid Prometheus text whose counters move with the mail), the
//! `healthcheck` command, SIGHUP re-reading a rotated secret file without dropping
//! connections, and the audit trail a log search would find.

#[path = "support/child.rs"]
mod child;
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use child::{free_addr, RelayChild};
use smtp_oauth_relay::sandbox::TokenFailure;
use support::{http_get, relay_binary, RawClient, World, MAILBOX};

/// Polls `/readyz` until its status is `want`, or panics with the last body.
async fn readyz_becomes(addr: SocketAddr, want: u16, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = http_get(addr, "/readyz").await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {status} (wanted {want}) for {limit:?}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Parses Prometheus text exposition format strictly enough to catch a broken page: every
/// sample line is `name{labels} value` with a valid name and a number, every `# TYPE` names a
/// known type. Returns `name{labels}` -> value.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().unwrap_or("");
            let kind = parts.next().unwrap_or("");
            assert!(valid_name(name), "bad metric name in {line:?}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad type in {line:?}"
            );
            continue;
        }
        if line.starts_with('#') {
            assert!(line.starts_with("# HELP "), "unknown comment {line:?}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let name = series.split('{').next().unwrap();
        assert!(valid_name(name), "bad metric name in {line:?}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(
                    labels.starts_with('{') && labels.ends_with('}'),
                    "bad labels in {line:?}"
                );
            }
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        samples.insert(series.to_string(), v);
    }
    samples
}

async fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    parse_prometheus(&body)
}

fn value(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

fn message(n: usize) -> Vec<u8> {
    format!(
        "From: app@example.com\r\nTo: someone@example.com\r\nMessage-ID: <admin-{n}@example.com>\r\nSubject: {n}\r\n\r\nbody {n}\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn healthz_and_the_healthcheck_command() {
    let world = World::start().await;
    let relay = world.relay(&[]).await;
    let admin = relay.admin_addr().expect("admin is on");
    assert_eq!(http_get(admin, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(http_get(admin, "/nope").await.0, 404);
    readyz_becomes(admin, 200, Duration::from_secs(10)).await;

    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(relay_binary())
                .args(&args)
                .env_remove("SMTP_OAUTH_RELAY_ADMIN_LISTEN")
                .output()
                .expect("run healthcheck")
        })
    };
    let a = admin.to_string();
    let ok = run(vec!["healthcheck".into(), "--addr".into(), a.clone()])
        .await
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    let ready = run(vec![
        "healthcheck".into(),
        "--ready".into(),
        "--addr".into(),
        a,
    ])
    .await
    .unwrap();
    assert!(ready.status.success(), "{ready:?}");
    assert!(String::from_utf8_lossy(&ready.stdout).contains("token: valid"));
    let closed = free_addr().to_string();
    let down = run(vec!["healthcheck".into(), "--addr".into(), closed])
        .await
        .unwrap();
    assert_eq!(down.status.code(), Some(1), "{down:?}");
    assert!(String::from_utf8_lossy(&down.stdout).contains("cannot connect"));
    let off = run(vec!["healthcheck".into(), "--addr".into(), "off".into()])
        .await
        .unwrap();
    assert_eq!(off.status.code(), Some(64), "{off:?}");
}

#[tokio::test]
async fn readiness_flips_on_invalid_client_and_back() {
    let world = World::start().await;
    let relay = world.relay(&[]).await;
    let admin = relay.admin_addr().expect("admin is on");
    let body = readyz_becomes(admin, 200, Duration::from_secs(10)).await;
    assert!(body.starts_with("ready\n"), "{body}");
    assert!(body.contains("token: valid"), "{body}");

    // The secret is revoked in Entra: the token endpoint says invalid_client, and the token
    // in hand stops working at Exchange.
    world
        .sandbox
        .set_token_failure(Some(TokenFailure::InvalidClient));
    world.sandbox.revoke_tokens();
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO app", 250).await;
    let r = c
        .send_mail("app@example.com", &["someone@example.com"], &message(1))
        .await;
    assert!(r.starts_with("451 4.7.0"), "held for configuration: {r}");

    let body = readyz_becomes(admin, 503, Duration::from_secs(10)).await;
    assert!(body.starts_with("not ready\n"), "{body}");
    let failed: Vec<&str> = body.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        failed
            .iter()
            .any(|l| l.contains("token") && l.contains("invalid_client")),
        "the failing check is named: {body}"
    );
    assert!(body.contains("ok   spool: writable"), "{body}");
    let secret = world.secret();
    assert!(!body.contains(&secret), "no secret in /readyz");

    // Fixed in Entra: readiness comes back by itself, and mail flows again.
    world.sandbox.set_token_failure(None);
    let body = readyz_becomes(admin, 200, Duration::from_secs(30)).await;
    assert!(!body.contains("FAIL"), "{body}");
    let r = c
        .send_mail("app@example.com", &["someone@example.com"], &message(2))
        .await;
    assert!(r.starts_with("250"), "{r}");
}

#[tokio::test]
async fn metrics_parse_and_counters_move_with_the_mail() {
    let world = World::start().await;
    let relay = world.relay(&[]).await;
    let admin = relay.admin_addr().expect("admin is on");
    readyz_becomes(admin, 200, Duration::from_secs(10)).await;
    let account = format!("{{account=\"{MAILBOX}\"}}");
    let before = scrape(admin).await;
    assert!(
        value(&before, "smtp_oauth_relay_token_expiry_seconds") > 60.0,
        "token expiry gauge: {before:?}"
    );

    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO app", 250).await;
    for n in 0..3 {
        let r = c
            .send_mail("app@example.com", &["someone@example.com"], &message(n))
            .await;
        assert!(r.starts_with("250"), "{r}");
    }
    // Permanently refused by the sandbox (SendAs denied): counted as refused, not delivered.
    let r = c
        .send_mail("app@example.com", &["data-perm@example.com"], &message(9))
        .await;
    assert!(r.starts_with('5'), "{r}");
    // A temporary failure at the end of DATA: queued for a retry (hybrid), counted deferred.
    let r = c
        .send_mail("app@example.com", &["data-temp@example.com"], &message(10))
        .await;
    assert!(r.starts_with("250") && r.contains("will retry"), "{r}");

    let after = scrape(admin).await;
    let moved = |series: &str| value(&after, series) - value(&before, series);
    // Other tests in this process share the recorder (same mailbox): at least, not exactly.
    assert!(
        moved(&format!(
            "smtp_oauth_relay_messages_received_total{account}"
        )) >= 4.0,
        "{after:?}"
    );
    assert!(
        moved(&format!(
            "smtp_oauth_relay_messages_delivered_total{account}"
        )) >= 3.0
    );
    assert!(
        moved(&format!(
            "smtp_oauth_relay_messages_refused_total{{account=\"{MAILBOX}\",class=\"permanent\"}}"
        )) >= 1.0,
        "{after:?}"
    );
    assert!(moved("smtp_oauth_relay_upstream_replies_total{code=\"250\"}") >= 3.0);
    assert!(moved("smtp_oauth_relay_upstream_replies_total{code=\"451\"}") >= 1.0);
    let deferred: f64 = after
        .iter()
        .filter(|(k, _)| {
            k.starts_with(&format!(
                "smtp_oauth_relay_messages_deferred_total{{account=\"{MAILBOX}\""
            ))
        })
        .map(|(k, v)| v - value(&before, k))
        .sum();
    assert!(deferred >= 1.0, "deferred counter: {after:?}");
    assert!(value(&after, "smtp_oauth_relay_token_refreshes_total") >= 1.0);
    assert!(
        value(&after, "smtp_oauth_relay_spool_messages") >= 1.0,
        "one is queued"
    );
    assert!(moved("smtp_oauth_relay_inbound_connections_total") >= 1.0);
    assert!(
        moved(&format!(
            "smtp_oauth_relay_delivery_latency_seconds_count{account}"
        )) >= 3.0,
        "latency histogram: {after:?}"
    );
    assert!(after.contains_key(&format!(
        "smtp_oauth_relay_delivery_latency_seconds_bucket{{account=\"{MAILBOX}\",le=\"+Inf\"}}"
    )));
    for gauge in [
        "smtp_oauth_relay_spool_messages",
        "smtp_oauth_relay_spool_oldest_message_age_seconds",
        "smtp_oauth_relay_inbound_connections_active",
    ] {
        assert!(after.contains_key(gauge), "{gauge} missing: {after:?}");
    }
    assert!(after.contains_key(&format!(
        "smtp_oauth_relay_governor_sends_in_window{{mailbox=\"{MAILBOX}\"}}"
    )));
    let (_, text) = http_get(admin, "/metrics").await;
    let secret = world.secret();
    assert!(!text.contains(&secret), "no secret in /metrics");
}

/// A wrong-but-well-formed secret value (the sandbox answers invalid_client).
const WRONG_SECRET: &str = "Wr0ng8Q~abcdefghijklmnopqrstuvwxyz0123456";

#[tokio::test]
async fn sighup_rereads_a_rotated_secret_without_dropping_connections() {
    let world = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("client-secret");
    std::fs::write(&secret_file, format!("{WRONG_SECRET}\n")).unwrap();
    let listen = free_addr();
    let admin = free_addr();
    let mut env: Vec<(String, String)> = world
        .env()
        .into_iter()
        .filter(|(k, _)| k != "SMTP_OAUTH_RELAY_CLIENT_SECRET")
        .collect();
    for (k, v) in [
        ("SMTP_OAUTH_RELAY_LISTEN", listen.to_string()),
        ("SMTP_OAUTH_RELAY_ADMIN_LISTEN", admin.to_string()),
        (
            "SMTP_OAUTH_RELAY_CLIENT_SECRET_FILE",
            secret_file.display().to_string(),
        ),
        ("SMTP_OAUTH_RELAY_LOG_FORMAT", "json".into()),
    ] {
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v));
    }
    let mut relay = RelayChild::spawn(
        relay_binary(),
        &["serve"],
        &env,
        dir.path(),
        &dir.path().join("stderr.log"),
    );
    relay.wait_ready(listen, Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http_get(admin, "/readyz").await;
        assert_eq!(status, 503, "{body}");
        if body.contains("invalid_client") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz does not name invalid_client:\n{body}\n{}",
            relay.stderr_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A client connected before the rotation stays connected through it.
    let mut c = RawClient::connect(listen).await;
    c.cmd("EHLO app", 250).await;

    let right = world.secret();
    std::fs::write(&secret_file, format!("{right}\n")).unwrap();
    let pid = relay.pid().to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    readyz_becomes(admin, 200, Duration::from_secs(10)).await;

    c.cmd("NOOP", 250).await;
    let r = c
        .send_mail("app@example.com", &["someone@example.com"], &message(7))
        .await;
    assert!(r.starts_with("250"), "{r}");
    // Refused for good by Exchange's stand-in (SendAs denied): the app hears the refusal.
    let refusal = c
        .send_mail(
            "app@example.com",
            &["sendas-denied@example.com"],
            &message(8),
        )
        .await;
    assert!(refusal.starts_with("554 5.2.252 "), "{refusal}");
    c.cmd("QUIT", 221).await;

    relay.sigterm().await;
    let status = relay.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{}", relay.stderr_tail(30));

    let log = relay.stderr();
    assert!(log.contains("credential files read again"), "{log}");
    assert!(
        !log.contains(WRONG_SECRET),
        "the old secret leaked into the log"
    );
    assert!(!log.contains(&right), "the new secret leaked into the log");

    // The audit trail: one JSON line per event, with what message trace needs.
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "audit")
        .collect();
    let of = |event: &str| {
        events
            .iter()
            .find(|v| v["fields"]["event"] == event)
            .unwrap_or_else(|| panic!("no {event} line in:\n{log}"))
            .clone()
    };
    let received = of("received");
    let delivered = of("delivered");
    for e in [&received, &delivered] {
        let f = &e["fields"];
        assert_eq!(f["message_id"], "<admin-7@example.com>", "{e}");
        assert_eq!(f["from"], "app@example.com", "{e}");
        assert_eq!(f["recipients"], 1, "{e}");
        assert!(f["size"].as_u64().unwrap() > 50, "{e}");
        assert!(
            f["client"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{e}"
        );
        assert_eq!(f["id"], received["fields"]["id"], "{e}");
    }
    let f = &delivered["fields"];
    assert_eq!(f["attempt"], 1);
    let reply = f["upstream_reply"].as_str().unwrap();
    assert!(reply.starts_with("250 2.0.0 OK <"), "{reply}");
    let exchange_id = f["exchange_id"].as_str().unwrap();
    assert!(
        !exchange_id.is_empty() && reply.contains(&format!("<{exchange_id}>")),
        "exchange id {exchange_id:?} from {reply:?}"
    );
    assert!(!log.contains("body 7"), "message bodies are never logged");
    // The refusal's event carries exactly what the app was told.
    let refused = of("refused");
    let f = &refused["fields"];
    assert_eq!(f["class"], "permanent", "{refused}");
    assert_eq!(f["message_id"], "<admin-8@example.com>", "{refused}");
    assert_eq!(f["reply"], refusal.trim_end(), "{refused}");
}
