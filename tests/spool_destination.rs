//! Test mail and real mail never cross (issue 11, item 1), through the binary as a user runs
//! it:
//!
//! - a real relay queues a message while Exchange is down; a later `serve --sandbox` pointed
//!   at the same spool keeps it (log, `/readyz`), delivers only its own mail, and leaves the
//!   message's files untouched;
//! - `serve --sandbox` keeps its own spool under `--sandbox-dir`; mail it queued (paced) is
//!   not delivered by a relay configured for another destination (here: another upstream)
//!   until an operator runs `queue adopt`;
//! - on shutdown each relay logs how many messages remain queued, and where.
//!
//! The "Exchange" of the real relay is the in-process sandbox on loopback. Every wait is
//! bounded; a child that overruns is killed.

mod support;

#[path = "support/child.rs"]
mod child;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use child::{free_addr, RelayChild};
use smtp_oauth_relay::sandbox::SmtpOutage;
use support::{http_get, relay_binary, RawClient, World};

const START: Duration = Duration::from_secs(30);
const EXIT: Duration = Duration::from_secs(30);
const LOG: Duration = Duration::from_secs(10);

/// `env` with `extra` set (replacing what was there).
fn with(mut env: Vec<(String, String)>, extra: &[(&str, String)]) -> Vec<(String, String)> {
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v.clone()));
    }
    env
}

/// Sends one message with `subject`; returns the DATA reply.
async fn send(addr: std::net::SocketAddr, subject: &str) -> String {
    let mut c = RawClient::connect(addr).await;
    c.cmd("EHLO app.example", 250).await;
    let body = format!("Subject: {subject}\r\n\r\nbody of {subject}\r\n");
    let reply = c
        .send_mail("app@example.com", &["someone@example.com"], body.as_bytes())
        .await;
    c.cmd("QUIT", 221).await;
    reply
}

/// The id in `250 2.0.0 <id> ...`.
fn id_of(reply: &str) -> String {
    assert!(reply.starts_with("250 "), "not accepted: {reply}");
    reply.split_whitespace().nth(2).expect("id").to_string()
}

/// `.eml` files in a sandbox mail store.
fn stored(store: &Path) -> Vec<String> {
    child::files_in(store)
        .into_iter()
        .filter(|n| n.ends_with(".eml"))
        .collect()
}

/// Runs `smtp-oauth-relay <args>` to completion (at most 20 s): (exit code, stdout).
async fn cli(env: &[(String, String)], args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("stdout");
    let mut cmd = Command::new(relay_binary());
    cmd.args(args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(Stdio::null());
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("SMTP_OAUTH_RELAY_") || n == "RUST_LOG" {
            cmd.env_remove(&name);
        }
    }
    cmd.envs(env.iter().cloned()).env("COLUMNS", "400");
    let mut child = cmd.spawn().expect("spawn the relay binary");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{}` did not finish in 20 s", args.join(" "));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    (
        status.code(),
        std::fs::read_to_string(&out).unwrap_or_default(),
    )
}

/// SIGTERM, a clean exit, and the shutdown line with what remains queued.
async fn stop(relay: &mut RelayChild) -> String {
    relay.sigterm().await;
    let status = relay.wait_exit(EXIT).await;
    assert!(status.success(), "{status}; {}", relay.stderr_tail(20));
    let log = relay.stderr();
    // The last one: a restarted relay appends to the same log.
    log.lines()
        .rev()
        .find(|l| l.contains("messages remain queued in the spool"))
        .unwrap_or_else(|| panic!("no shutdown line about the queue:\n{log}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_mail_is_not_delivered_by_a_sandbox_relay_on_the_same_spool() {
    let world = World::start().await;
    let dir = world.dir.path();
    let spool = world.spool_dir();
    // Exchange is down: the real relay keeps what it accepts.
    world.sandbox.set_smtp_outage(Some(SmtpOutage::Refuse));
    let (smtp, admin) = (free_addr(), free_addr());
    let real_env = with(
        world.env(),
        &[
            ("SMTP_OAUTH_RELAY_LISTEN", smtp.to_string()),
            ("SMTP_OAUTH_RELAY_ADMIN_LISTEN", admin.to_string()),
            ("SMTP_OAUTH_RELAY_MODE", "queue".into()),
        ],
    );
    let mut real = RelayChild::spawn(
        relay_binary(),
        &["serve"],
        &real_env,
        dir,
        &dir.join("real.log"),
    );
    real.wait_ready(smtp, START).await;
    let id = id_of(&send(smtp, "real mail for Exchange").await);
    let line = stop(&mut real).await;
    assert!(line.contains("queued=1"), "{line}");
    assert!(line.contains(&spool.display().to_string()), "{line}");
    // Due now, so a relay that took it would send it at once.
    let (code, out) = cli(&real_env, &["queue", "retry", &id]).await;
    assert_eq!(code, Some(0), "{out}");
    // The message as the queue commands see it, whichever form it is kept in (the spool's
    // log, or a file of its own once an attempt has deferred it).
    let snapshot = || {
        let s = smtp_oauth_relay::spool::Spool::open_existing(&spool).unwrap();
        let (area, entry) = s.find(&id).unwrap().expect("the message is queued");
        let body = s.read_body(area, &id).unwrap();
        (area, entry, body)
    };
    let before = snapshot();

    // `serve --sandbox`, pointed at the real spool on purpose.
    let store = dir.join("sandbox-mail");
    let (smtp2, admin2) = (free_addr(), free_addr());
    let sandbox_env = vec![
        ("SMTP_OAUTH_RELAY_LISTEN".to_string(), smtp2.to_string()),
        (
            "SMTP_OAUTH_RELAY_ADMIN_LISTEN".to_string(),
            admin2.to_string(),
        ),
        (
            "SMTP_OAUTH_RELAY_SPOOL_DIR".to_string(),
            spool.display().to_string(),
        ),
    ];
    let store_arg = store.display().to_string();
    let mut sandbox = RelayChild::spawn(
        relay_binary(),
        &["serve", "--sandbox", "--sandbox-dir", &store_arg],
        &sandbox_env,
        dir,
        &dir.join("sandbox.log"),
    );
    sandbox.wait_ready(smtp2, START).await;
    sandbox
        .wait_stderr("queued messages were accepted for another destination", LOG)
        .await;
    let log = sandbox.stderr();
    let warn = log
        .lines()
        .find(|l| l.contains("accepted for another destination"))
        .unwrap();
    assert!(warn.contains("count=1"), "{warn}");
    assert!(
        warn.contains(&format!(
            "via localhost:{}",
            world.sandbox.smtp_addr().port()
        )),
        "names the destination it was accepted for: {warn}"
    );
    let (_, ready) = http_get(admin2, "/readyz").await;
    assert!(
        ready.contains("WARN spool: 1 queued message(s) for another destination (mailbox relay@sandbox.example via localhost:"),
        "{ready}"
    );

    // The sandbox relay still does its own job.
    let own = send(smtp2, "sandbox mail").await;
    assert!(own.contains("delivered"), "{own}");
    // The drain lets every attempt in flight finish: had it taken the real message, the
    // stand-in would hold it now.
    let line = stop(&mut sandbox).await;
    assert!(line.contains("queued=0"), "{line}");
    assert!(line.contains("for_other_destinations=1"), "{line}");
    let delivered = stored(&store);
    assert_eq!(
        delivered.len(),
        1,
        "only the sandbox's own mail: {delivered:?}"
    );
    let text = std::fs::read_to_string(store.join(&delivered[0])).unwrap();
    assert!(text.contains("Subject: sandbox mail"), "{text}");
    assert_eq!(
        snapshot(),
        before,
        "the real message stays in the spool untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_mail_is_not_delivered_by_a_relay_for_another_destination() {
    let world = World::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let dir = cwd.path();
    let (smtp, admin) = (free_addr(), free_addr());
    // The quick start: `serve --sandbox` from a folder, paced like Exchange (1 a minute here).
    let sandbox_env = vec![
        ("SMTP_OAUTH_RELAY_LISTEN".to_string(), smtp.to_string()),
        (
            "SMTP_OAUTH_RELAY_ADMIN_LISTEN".to_string(),
            admin.to_string(),
        ),
        (
            "SMTP_OAUTH_RELAY_RATE_PER_MINUTE".to_string(),
            "1".to_string(),
        ),
    ];
    let mut sandbox = RelayChild::spawn(
        relay_binary(),
        &["serve", "--sandbox"],
        &sandbox_env,
        dir,
        &dir.join("sandbox.log"),
    );
    sandbox.wait_ready(smtp, START).await;
    assert!(
        sandbox.stderr().contains("spool=./sandbox-mail/spool"),
        "the sandbox says where its spool is:\n{}",
        sandbox.stderr()
    );
    let first = send(smtp, "sandbox one").await;
    assert!(first.contains("delivered"), "{first}");
    let second = send(smtp, "sandbox two").await;
    assert!(second.contains("at its sending pace"), "{second}");
    let line = stop(&mut sandbox).await;
    assert!(line.contains("queued=1"), "{line}");
    assert!(line.contains("sandbox-mail/spool"), "{line}");
    assert!(
        !dir.join("spool").exists(),
        "the sandbox keeps out of ./spool"
    );
    let spool = dir.join("sandbox-mail").join("spool");

    // A relay for another destination (its own Exchange) on that spool.
    let (smtp2, admin2) = (free_addr(), free_addr());
    let real_env = with(
        world.env(),
        &[
            ("SMTP_OAUTH_RELAY_LISTEN", smtp2.to_string()),
            ("SMTP_OAUTH_RELAY_ADMIN_LISTEN", admin2.to_string()),
            ("SMTP_OAUTH_RELAY_SPOOL_DIR", spool.display().to_string()),
        ],
    );
    let log = dir.join("real.log");
    let mut real = RelayChild::spawn(relay_binary(), &["serve"], &real_env, dir, &log);
    real.wait_ready(smtp2, START).await;
    real.wait_stderr("queued messages were accepted for another destination", LOG)
        .await;
    // A warning, not unreadiness: ready once the first token is in hand.
    let mut ready = String::new();
    for _ in 0..150 {
        ready = http_get(admin2, "/readyz").await.1;
        if ready.starts_with("ready\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready.starts_with("ready\n"), "{ready}");
    assert!(
        ready.contains("WARN spool: 1 queued message(s) for another destination (mailbox relay@sandbox.example via sandbox"),
        "{ready}"
    );
    let (code, list) = cli(&real_env, &["queue", "list"]).await;
    assert_eq!(code, Some(0), "{list}");
    assert!(
        list.contains("OTHER: relay@sandbox.example via sandbox"),
        "{list}"
    );
    assert!(list.contains("1 for another destination"), "{list}");
    let own = send(smtp2, "real mail").await;
    assert!(own.contains("delivered"), "{own}");
    let line = stop(&mut real).await;
    assert!(line.contains("for_other_destinations=1"), "{line}");
    let got = world.sandbox.messages();
    assert_eq!(
        got.len(),
        1,
        "only the relay's own mail reached its Exchange"
    );
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: real mail"));

    // The way out: adopt it, and a running relay sends it.
    let mut real = RelayChild::spawn(relay_binary(), &["serve"], &real_env, dir, &log);
    real.wait_ready(smtp2, START).await;
    let (code, out) = cli(&real_env, &["queue", "adopt", "--all"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("adopted 1 message(s)"), "{out}");
    let got = world.wait_for(2).await;
    assert!(
        got.iter()
            .any(|m| String::from_utf8_lossy(&m.data).contains("Subject: sandbox two")),
        "the adopted sandbox message went out"
    );
    let line = stop(&mut real).await;
    assert!(line.contains("queued=0"), "{line}");
    assert!(line.contains("for_other_destinations=0"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_queued_before_destinations_were_recorded_is_still_delivered() {
    use smtp_oauth_relay::spool::{QueueEntry, Spool};
    let world = World::start().await;
    let spool_dir = world.spool_dir();
    {
        // An envelope as an older relay wrote it: no `destination` field at all.
        let (spool, _) = Spool::open(&spool_dir).unwrap();
        let tmp = spool_dir.join("incoming").join("old-1.tmp");
        std::fs::write(&tmp, b"Subject: queued by an older version\r\n\r\nhi\r\n").unwrap();
        let entry = QueueEntry::new(
            "old-1".into(),
            "app@example.com".into(),
            vec!["someone@example.com".into()],
            support::MAILBOX.into(),
            40,
        );
        spool.commit(&tmp, &entry).await.unwrap();
        let path = spool_dir.join("queue").join("old-1.json");
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        json.as_object_mut().unwrap().remove("destination");
        std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    }
    let relay = world.relay(&[]).await;
    let got = world.wait_for(1).await;
    assert!(String::from_utf8_lossy(&got[0].data).contains("queued by an older version"));
    assert!(relay.delivery().others().is_empty());
    relay.shutdown(Duration::from_secs(5)).await;
}
