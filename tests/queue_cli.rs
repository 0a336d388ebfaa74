//! `smtp-oauth-relay queue list|show|retry|delete` as an operator runs it: the real binary as
//! a child process, configured only with `SMTP_OAUTH_RELAY_SPOOL_DIR` (no Microsoft account),
//! next to a relay running in-process in `queue` mode whose Exchange stand-in is down, so
//! the messages stay in the spool.
//!
//! Every wait is bounded; a child that overruns is killed.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use smtp_oauth_relay::app::Relay;
use smtp_oauth_relay::envelope::MessageId;
use smtp_oauth_relay::sandbox::SmtpOutage;
use smtp_oauth_relay::spool::{now_unix, Area, QueueEntry, Refusal, Spool};
use support::{relay_binary, RawClient, World, MAILBOX};

/// How long one queue command may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the relay may take to attempt a message or notice a queue command (its loop
/// sleeps at most 2 s between looks at `control/rescan`).
const RELAY_TIMEOUT: Duration = Duration::from_secs(20);

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Output {
    fn ok(&self) -> &Self {
        assert_eq!(
            self.code,
            Some(0),
            "expected success; stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `smtp-oauth-relay queue <args>` with only the spool directory configured (and a wide
/// `COLUMNS` so nothing is truncated). Output goes to files, so a chatty child never blocks.
async fn queue_cli(spool_dir: &Path, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut cmd = Command::new(relay_binary());
    cmd.arg("queue")
        .args(args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"));
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("SMTP_OAUTH_RELAY_") || n == "RUST_LOG" || n == "COLUMNS" {
            cmd.env_remove(&name);
        }
    }
    cmd.env("SMTP_OAUTH_RELAY_SPOOL_DIR", spool_dir)
        .env("COLUMNS", "400");
    let mut child = cmd.spawn().expect("spawn the relay binary");
    let deadline = tokio::time::Instant::now() + CLI_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`queue {}` did not finish within {CLI_TIMEOUT:?}",
                args.join(" ")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Output {
        code: status.code(),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// Polls `check` every 50 ms until it holds, or panics naming `what` after `timeout`.
async fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The envelope of `id` as the spool has it now.
fn on_disk(spool_dir: &Path, id: &str) -> Option<(Area, QueueEntry)> {
    Spool::open_existing(spool_dir)
        .expect("spool exists")
        .find(id)
        .expect("readable envelope")
}

/// The id in a queue-mode `250 2.0.0 <id> queued for delivery`.
fn queued_id(reply: &str) -> String {
    assert!(reply.starts_with("250 "), "not queued: {reply}");
    reply
        .split_whitespace()
        .nth(2)
        .expect("id in the 250 reply")
        .to_string()
}

/// A relay in queue mode against a sandbox whose SMTP side refuses connections.
async fn relay_with_upstream_down(world: &World) -> Relay {
    world.sandbox.set_smtp_outage(Some(SmtpOutage::Refuse));
    world.relay(&[("SMTP_OAUTH_RELAY_MODE", "queue")]).await
}

/// Sends one message per subject; returns the queued ids.
async fn send(relay: &Relay, subjects: &[&str]) -> Vec<String> {
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO app.example", 250).await;
    let mut ids = Vec::new();
    for s in subjects {
        let body = format!("Subject: {s}\r\nX-Test: queue-cli\r\n\r\nBODY-MARKER {s}\r\n");
        let r = c
            .send_mail(
                "app@example.com",
                &["first@example.com", "second@example.com"],
                body.as_bytes(),
            )
            .await;
        ids.push(queued_id(&r));
    }
    c.cmd("QUIT", 221).await;
    ids
}

/// Waits until the relay has made (and recorded) at least one failed attempt on each id.
async fn wait_for_attempts(spool_dir: &Path, ids: &[String], n: u32) {
    for id in ids {
        wait_until(
            &format!("attempt {n} on {id} recorded in the spool"),
            RELAY_TIMEOUT,
            || {
                on_disk(spool_dir, id)
                    .is_some_and(|(_, e)| e.attempts >= n && e.last_error.is_some())
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_show_delete_while_the_relay_runs() {
    let world = World::start().await;
    let relay = relay_with_upstream_down(&world).await;
    let spool_dir = world.spool_dir();
    let ids = send(&relay, &["queue-cli one", "queue-cli two"]).await;
    wait_for_attempts(&spool_dir, &ids, 1).await;
    assert_eq!(relay.delivery().queued(), 2);

    // A body still arriving must survive the commands (no start-up clean-up).
    let arriving = spool_dir.join("incoming").join("still-arriving.tmp");
    std::fs::write(&arriving, b"half a message").unwrap();

    // list: one row per message with attempts, next attempt and the last error.
    let out = queue_cli(&spool_dir, &["list"]).await;
    out.ok();
    let header = out.stdout.lines().next().expect("header line");
    for h in [
        "ID",
        "AGE",
        "FROM",
        "RECIPIENTS",
        "ATTEMPTS",
        "NEXT ATTEMPT",
        "LAST ERROR",
    ] {
        assert!(header.contains(h), "{h} missing in {header:?}");
    }
    for id in &ids {
        let (_, e) = on_disk(&spool_dir, id).unwrap();
        let row = out
            .stdout
            .lines()
            .find(|l| l.starts_with(id.as_str()))
            .unwrap_or_else(|| panic!("no row for {id}:\n{}", out.stdout));
        assert!(row.contains("app@example.com"), "{row}");
        assert!(row.contains("2: first@example.com"), "{row}");
        assert!(row.contains(&format!("  {}  ", e.attempts)), "{row}");
        assert!(row.contains("in ") || row.contains("due"), "{row}");
        let last_error = e.last_error.unwrap();
        let first_line = last_error.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(row.contains(&first_line), "{row} lacks {first_line:?}");
    }
    assert!(out.stdout.contains("2 queued"), "{}", out.stdout);

    // list --json: one object per line.
    let out = queue_cli(&spool_dir, &["list", "--json"]).await;
    out.ok();
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    for v in &lines {
        assert_eq!(v["area"], "queued");
        assert!(v["attempts"].as_u64().unwrap() >= 1);
        assert!(v["last_error"].is_string());
        assert_eq!(v["rcpt_to"][1], "second@example.com");
    }

    // show: the envelope, the headers, the files; never the body.
    let out = queue_cli(&spool_dir, &["show", &ids[0]]).await;
    out.ok();
    let s = &out.stdout;
    assert!(s.contains("queued (queue/)"), "{s}");
    assert!(
        s.contains("first@example.com") && s.contains("second@example.com"),
        "{s}"
    );
    assert!(s.contains("Subject: queue-cli one"), "{s}");
    assert!(s.contains("X-Test: queue-cli"), "{s}");
    assert!(!s.contains("BODY-MARKER"), "the body leaked:\n{s}");
    let eml = spool_dir.join("queue").join(format!("{}.eml", ids[0]));
    let json = spool_dir.join("queue").join(format!("{}.json", ids[0]));
    assert!(s.contains(&eml.display().to_string()), "{s}");
    assert!(s.contains(&json.display().to_string()), "{s}");
    let out = queue_cli(&spool_dir, &["show", &ids[0], "--json"]).await;
    out.ok();
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["id"], ids[0].as_str());
    assert_eq!(v["body_path"], eml.display().to_string());

    // delete: files gone, and the running relay drops it after the rescan.
    let out = queue_cli(&spool_dir, &["delete", &ids[0]]).await;
    out.ok();
    assert!(out.stdout.contains(&ids[0]), "{}", out.stdout);
    assert!(
        out.stdout.contains(&eml.display().to_string()),
        "{}",
        out.stdout
    );
    assert!(!eml.exists() && !json.exists(), "files must be gone");
    let delivery = relay.delivery().clone();
    wait_until(
        "the relay to drop the deleted message",
        RELAY_TIMEOUT,
        || delivery.queued() == 1,
    )
    .await;
    let out = queue_cli(&spool_dir, &["list", "--json"]).await;
    out.ok();
    assert_eq!(out.stdout.lines().count(), 1);
    assert!(out.stdout.contains(&ids[1]));

    // Unknown ids are usage errors.
    for args in [
        vec!["show", "nope-123"],
        vec!["retry", "nope-123"],
        vec!["delete", "nope-123"],
        vec!["delete", &ids[0]],
    ] {
        let out = queue_cli(&spool_dir, &args).await;
        assert_eq!(out.code, Some(64), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr
                .contains(&format!("no message {} in the queue or failed/", args[1])),
            "{args:?}: {}",
            out.stderr
        );
    }
    // So are a missing id and an id that is a path.
    assert_eq!(queue_cli(&spool_dir, &["retry"]).await.code, Some(64));
    assert_eq!(
        queue_cli(&spool_dir, &["delete", "../queue/x"]).await.code,
        Some(64)
    );

    assert!(
        arriving.exists(),
        "queue commands removed a body still arriving"
    );
    std::fs::remove_file(&arriving).unwrap();
    relay.shutdown(Duration::from_secs(5)).await;
}

/// Puts a message straight into `failed/` through the spool API, as the relay would after
/// a permanent refusal.
async fn failed_message(spool_dir: &Path) -> String {
    let (spool, _) = Spool::open(spool_dir).expect("spool opens");
    let id = MessageId::generate();
    let body = b"Subject: failed once\r\n\r\nFAILED-BODY\r\n";
    let incoming = spool.incoming_path(&id);
    std::fs::write(&incoming, body).unwrap();
    let now = now_unix();
    let mut entry = {
        let mut e = QueueEntry::new(
            id.to_string(),
            "app@example.com".into(),
            vec!["again@example.com".into()],
            MAILBOX.into(),
            body.len() as u64,
        );
        e.client = "127.0.0.1:1".into();
        e.helo = "app.example".into();
        e.received_at = now - 3600;
        e.attempts = 7;
        e.next_attempt = now;
        e.last_error = Some("451 4.4.316 connection refused".into());
        e.notice = true; // no failure notice about this one
        e.received_at_ms = 0;
        e
    };
    spool.commit(&incoming, &entry).await.unwrap();
    entry.failed_at = Some(now - 60);
    entry.failure_reason = Some("gave up after 5 days: 451 4.4.316 connection refused".into());
    entry.refused = vec![Refusal {
        rcpt: "again@example.com".into(),
        reason: "451 4.4.316 connection refused".into(),
    }];
    spool.fail(&entry).await.unwrap();
    id.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_all_makes_due_and_revives_failed() {
    let world = World::start().await;
    let spool_dir: PathBuf = world.spool_dir();
    let failed = failed_message(&spool_dir).await;
    let relay = relay_with_upstream_down(&world).await;
    let ids = send(&relay, &["queue-cli retry"]).await;
    let queued = ids[0].clone();
    wait_for_attempts(&spool_dir, &ids, 1).await;
    let (_, e) = on_disk(&spool_dir, &queued).unwrap();
    assert!(
        e.next_attempt > now_unix(),
        "the first retry is later: {e:?}"
    );

    // list --failed: the failure time and reason.
    let out = queue_cli(&spool_dir, &["list", "--failed"]).await;
    out.ok();
    let header = out.stdout.lines().next().unwrap();
    assert!(
        header.contains("FAILED") && header.contains("REASON"),
        "{header}"
    );
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with(failed.as_str()))
        .unwrap_or_else(|| panic!("no row for {failed}:\n{}", out.stdout));
    assert!(row.contains("1m ago"), "{row}");
    assert!(row.contains("gave up after 5 days"), "{row}");
    assert!(!out.stdout.contains(&queued));

    // retry --all: the queued message becomes due now (the relay attempts it again at
    // once); the failed one stays failed.
    let out = queue_cli(&spool_dir, &["retry", "--all"]).await;
    out.ok();
    assert!(
        out.stdout.contains(&format!("{queued}: due now")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("retried 1 queued"), "{}", out.stdout);
    assert!(!out.stdout.contains(&failed), "{}", out.stdout);
    assert_eq!(on_disk(&spool_dir, &failed).unwrap().0, Area::Failed);
    wait_for_attempts(&spool_dir, &ids, 2).await;

    // Exchange is back; retry --all --failed: both go out now.
    world.sandbox.set_smtp_outage(None);
    let out = queue_cli(&spool_dir, &["retry", "--all", "--failed"]).await;
    out.ok();
    assert!(
        out.stdout
            .contains(&format!("{failed}: moved from failed/ back to the queue")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("retried 1 queued and 1 failed"),
        "{}",
        out.stdout
    );
    let delivered = world.wait_for(2).await;
    assert_eq!(delivered.len(), 2, "both messages reach Exchange");
    let subjects: Vec<String> = delivered
        .iter()
        .map(|m| String::from_utf8_lossy(&m.data).into_owned())
        .collect();
    assert!(subjects.iter().any(|d| d.contains("Subject: failed once")));
    assert!(subjects
        .iter()
        .any(|d| d.contains("Subject: queue-cli retry")));
    let delivery = relay.delivery().clone();
    wait_until("the queue to empty", RELAY_TIMEOUT, || {
        delivery.queued() == 0
    })
    .await;
    let spool = Spool::open_existing(&spool_dir).unwrap();
    assert!(spool.list(Area::Queue).unwrap().is_empty());
    assert!(spool.list(Area::Failed).unwrap().is_empty());

    // Nothing left: retry --all says so and succeeds.
    let out = queue_cli(&spool_dir, &["retry", "--all", "--failed"]).await;
    out.ok();
    assert!(out.stdout.contains("nothing to retry"), "{}", out.stdout);
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn missing_spool_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-spool-here");
    let out = queue_cli(&missing, &["list"]).await;
    assert_eq!(out.code, Some(64), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("no spool at {}", missing.display())),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("is delivery.spool_dir right?"),
        "{}",
        out.stderr
    );
    assert!(!missing.exists(), "a queue command must not create a spool");
}
