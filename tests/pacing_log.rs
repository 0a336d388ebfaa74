//! Paced deferrals make one summary line per interval in the relay's log, not a WARN line per
//! message: under load every message past Exchange's 30 a minute is one.
//!
//! Through the binary, with JSON logs: 20 messages in hybrid mode against a budget of 1 a
//! minute; the relay is stopped with SIGTERM (which flushes the summary), and its log lines
//! are counted.

mod support;
#[path = "support/child.rs"]
mod child;

use std::time::Duration;

use child::{free_addr, RelayChild};
use support::{relay_binary, RawClient, World};

const MESSAGES: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_deferrals_are_summarised_not_logged_one_by_one() {
    let world = World::start().await;
    let addr = free_addr();
    let mut env = world.env();
    env.retain(|(k, _)| k != "SMTP_OAUTH_RELAY_LISTEN" && k != "SMTP_OAUTH_RELAY_RATE_PER_MINUTE");
    env.push(("SMTP_OAUTH_RELAY_LISTEN".into(), addr.to_string()));
    env.push(("SMTP_OAUTH_RELAY_RATE_PER_MINUTE".into(), "1".into()));
    env.push(("SMTP_OAUTH_RELAY_LOG_FORMAT".into(), "json".into()));
    let log = world.dir.path().join("relay.log");
    let mut relay = RelayChild::spawn(relay_binary(), &[], &env, world.dir.path(), &log);
    relay.wait_ready(addr, Duration::from_secs(30)).await;

    let mut c = RawClient::connect(addr).await;
    c.cmd("EHLO app.example", 250).await;
    let mut paced = 0;
    for seq in 0..MESSAGES {
        let body = format!("Subject: paced {seq}\r\n\r\nHello {seq}.\r\n");
        let reply = c
            .send_mail("app@example.com", &["someone@example.com"], body.as_bytes())
            .await;
        assert!(reply.starts_with("250 "), "{reply}");
        if reply.contains("sending pace") {
            paced += 1;
        }
    }
    c.cmd("QUIT", 221).await;
    assert!(
        paced >= MESSAGES - 1,
        "the budget of 1 paces the rest: {paced}"
    );

    relay.sigterm().await;
    let status = relay.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "{status}; log:\n{}",
        relay.stderr_tail(20)
    );

    let lines: Vec<serde_json::Value> = relay
        .stderr()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        !lines.is_empty(),
        "JSON log lines: {}",
        relay.stderr_tail(20)
    );
    let field = |l: &serde_json::Value, k: &str| l["fields"][k].clone();
    let per_message_warnings = lines
        .iter()
        .filter(|l| {
            l["level"] == "WARN" && field(l, "event") == "deferred" && field(l, "class") == "paced"
        })
        .count();
    assert_eq!(per_message_warnings, 0, "no WARN line per paced message");
    let summaries: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            field(l, "message")
                .as_str()
                .is_some_and(|m| m.contains("deferred by pacing"))
        })
        .collect();
    assert_eq!(summaries.len(), 1, "one summary line: {summaries:#?}");
    assert_eq!(
        field(summaries[0], "messages"),
        serde_json::json!(paced),
        "{:#?}",
        summaries[0]
    );
    let message = field(summaries[0], "message");
    assert!(
        message
            .as_str()
            .unwrap()
            .starts_with(&format!("{paced} messages deferred by pacing in the last ")),
        "{message}"
    );
}
