//! Drain on SIGTERM (issue text): "a test sends SIGTERM while DATA is in progress and
//! deliveries are in flight; the message in progress is committed or refused (never
//! half-accepted), in-flight deliveries finish, the process exits 0 within the grace period."
//!
//! The relay binary runs as a child process (hybrid mode, the default) against the in-process
//! sandbox, stopped by a real SIGTERM. At the moment of the signal:
//!
//! - two messages to `slow-7@…` already have their `250 … queued` (the client's wait,
//!   `try_now_timeout_secs = 3`, ended) while their first upstream attempt is still running;
//! - one message to `slow-2@…` and one to `slow-5@…` have sent their final dot and wait for
//!   the reply; the first attempt of each is running. The `slow-2` one is answered during the
//!   drain after its delivery; the `slow-5` one outlives the client's wait, so it is
//!   committed to the queue during the drain and its attempt goes on;
//! - one client is half-way through DATA (354 seen, part of the body sent, no final dot); it
//!   finishes the body after the relay has told an idle client `421`;
//! - one client is half-way through DATA and walks away after the signal;
//! - one client is idle (EHLO only) and must be told `421 4.3.2`.
//!
//! After the exit (code 0, within the grace period, with the drain reported as finished),
//! every message that got a `250` is in the sandbox exactly once and whole, the abandoned and
//! any refused message are nowhere, and the spool's `incoming/`, `queue/` and `failed/` are
//! empty: the in-flight attempts finished and recorded their outcome before the exit.
//!
//! Every wait is bounded; loopback only; about 10 s.

mod support;

#[path = "support/child.rs"]
mod child;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use child::{files_in, free_addr, RelayChild};
use smtp_oauth_relay::spool::{Area, Spool};
use support::{
    relay_binary, reply_id, strip_received, wait_until, wait_until_read_by_peer, RawClient, World,
};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const SEQ: &str = "X-Test-Seq";
/// `serve --grace-secs` (and `shutdown.grace_secs`, so both ways of setting it agree).
const GRACE: Duration = Duration::from_secs(10);
/// Slack on top of the grace period for the process to end and be reaped.
const EXIT_SLACK: Duration = Duration::from_secs(1);
/// Hybrid mode's client wait (`delivery.try_now_timeout_secs`).
const TRY_NOW_SECS: u64 = 3;
/// Upstream sessions allowed on both sides: every attempt in this test runs at once, so none
/// of them waits for a session slot (that is the pacing tests' subject, not this one's).
const SESSIONS: u32 = 8;
/// Every single wait for a reply.
const REPLY_LIMIT: Duration = Duration::from_secs(15);

/// A small message carrying `X-Test-Seq: <seq>` (no line starts with a dot).
fn message(seq: &str) -> Vec<u8> {
    format!(
        "From: app@example.com\r\n\
         To: someone@example.com\r\n\
         Subject: drain {seq}\r\n\
         {SEQ}: {seq}\r\n\
         Message-ID: <{seq}@drain.test>\r\n\
         \r\n\
         Hello, this is message {seq}.\r\n"
    )
    .into_bytes()
}

/// A larger message (about 160 KB), so "half-way through DATA" is many TCP segments in.
fn big_message(seq: &str) -> Vec<u8> {
    let mut m = format!(
        "From: app@example.com\r\n\
         To: someone@example.com\r\n\
         Subject: drain {seq}\r\n\
         {SEQ}: {seq}\r\n\
         Message-ID: <{seq}@drain.test>\r\n\
         \r\n"
    )
    .into_bytes();
    for i in 0..2000 {
        m.extend_from_slice(
            format!(
                "{seq} line {i:05}: the quick brown fox jumps over the lazy dog 0123456789\r\n"
            )
            .as_bytes(),
        );
    }
    m
}

/// Ids of the queue entries on disk (`queue/<id>.json`), read without touching the spool
/// (`Spool::open` would clean `incoming/` and hide left-overs).
fn queued_ids(spool_dir: &Path) -> BTreeSet<String> {
    let spool = Spool::open_existing(spool_dir).expect("the spool exists");
    spool
        .list(Area::Queue)
        .expect("list queue/")
        .into_iter()
        .map(|e| e.id)
        .collect()
}

/// Reads one reply within `limit`.
async fn reply_within(c: &mut RawClient, limit: Duration, what: &str) -> String {
    tokio::time::timeout(limit, c.reply())
        .await
        .unwrap_or_else(|_| panic!("{what}: no reply within {limit:?}"))
}

/// Connects and says EHLO.
async fn client(addr: SocketAddr, helo: &str) -> RawClient {
    let mut c = tokio::time::timeout(REPLY_LIMIT, RawClient::connect(addr))
        .await
        .expect("connect and greeting in time");
    c.cmd(&format!("EHLO {helo}"), 250).await;
    c
}

/// MAIL, RCPT, DATA (354) and the first `head` bytes of `body`: a transaction in DATA.
async fn start_data(addr: SocketAddr, helo: &str, rcpt: &str, head: &[u8]) -> RawClient {
    let mut c = client(addr, helo).await;
    c.cmd("MAIL FROM:<app@example.com>", 250).await;
    c.cmd(&format!("RCPT TO:<{rcpt}>"), 250).await;
    c.cmd("DATA", 354).await;
    c.send(head).await;
    c
}

/// A whole transaction in a task: returns the client and the DATA reply.
fn send_in_task(
    addr: SocketAddr,
    helo: &'static str,
    rcpt: &'static str,
    body: Vec<u8>,
) -> JoinHandle<(RawClient, String)> {
    tokio::spawn(async move {
        let mut c = client(addr, helo).await;
        let reply =
            tokio::time::timeout(REPLY_LIMIT, c.send_mail("app@example.com", &[rcpt], &body))
                .await
                .unwrap_or_else(|_| panic!("{helo}: no DATA reply within {REPLY_LIMIT:?}"));
        (c, reply)
    })
}

async fn join(task: JoinHandle<(RawClient, String)>, what: &str) -> (RawClient, String) {
    tokio::time::timeout(REPLY_LIMIT + Duration::from_secs(5), task)
        .await
        .unwrap_or_else(|_| panic!("{what}: task did not end"))
        .unwrap_or_else(|e| panic!("{what}: task failed: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_data_in_progress_and_deliveries_in_flight() {
    let started = Instant::now();
    let world = World::start_with(|o| o.max_connections_per_mailbox = SESSIONS).await;
    let addr = free_addr();
    let grace = GRACE.as_secs().to_string();
    let try_now = TRY_NOW_SECS.to_string();
    let sessions = SESSIONS.to_string();
    let mut env = world.env();
    for (k, v) in [
        ("SMTP_OAUTH_RELAY_LISTEN", addr.to_string()),
        ("SMTP_OAUTH_RELAY_MODE", "hybrid".to_string()),
        ("SMTP_OAUTH_RELAY__DELIVERY__TRY_NOW_TIMEOUT_SECS", try_now),
        ("SMTP_OAUTH_RELAY_MAX_CONNECTIONS", sessions),
        ("SMTP_OAUTH_RELAY_SHUTDOWN_GRACE_SECS", grace.clone()),
        // Several relays run at once in the test suite: no fixed admin port.
        ("SMTP_OAUTH_RELAY_ADMIN_LISTEN", "off".to_string()),
        // Stored messages are compared byte for byte: no Date or Message-ID added.
        (
            "SMTP_OAUTH_RELAY__DELIVERY__ADD_MISSING_HEADERS",
            "false".to_string(),
        ),
    ] {
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v));
    }
    let work = tempfile::tempdir().expect("tempdir");
    let log = work.path().join("relay.stderr");
    let mut relay = RelayChild::spawn(
        relay_binary(),
        &["serve", "--grace-secs", &grace],
        &env,
        work.path(),
        &log,
    );
    relay.wait_ready(addr, Duration::from_secs(20)).await;
    let spool_dir = world.spool_dir();

    // --- Before the signal ------------------------------------------------------------

    // Queued with the attempt in flight: the client's wait (3 s) ends long before the
    // sandbox answers (7 s after the final dot).
    let queued_early: Vec<_> = ["slow-7-a", "slow-7-b"]
        .into_iter()
        .map(|seq| {
            (
                seq,
                send_in_task(addr, seq, "slow-7@example.com", message(seq)),
            )
        })
        .collect();
    let mut idle_after_250 = Vec::new();
    let mut acked: BTreeMap<String, String> = BTreeMap::new(); // seq -> relay id
    for (seq, task) in queued_early {
        let (c, reply) = join(task, seq).await;
        assert!(
            reply.starts_with("250 ") && reply.contains("queued"),
            "{seq}: a slow upstream in hybrid mode must be queued with 250 after the client's \
             wait, got {reply:?}; stderr:\n{}",
            relay.stderr_tail(30)
        );
        acked.insert(seq.to_string(), reply_id(&reply));
        idle_after_250.push((seq, c));
    }

    // In DATA: 60% of a big body sent, cut in the middle of a line. One will be finished
    // after the signal, the other abandoned.
    let in_data_body = big_message("in-data");
    let cut = in_data_body.len() * 6 / 10;
    let mut in_data = start_data(
        addr,
        "in-data.example",
        "someone@example.com",
        &in_data_body[..cut],
    )
    .await;
    let abandoned_body = big_message("abandoned");
    let abandoned = start_data(
        addr,
        "abandoned.example",
        "someone@example.com",
        &abandoned_body[..abandoned_body.len() / 2],
    )
    .await;
    let mut idle = client(addr, "idle.example").await;

    // Waiting for their reply, first attempt running: one answered (delivered) during the
    // drain, one whose wait ends during the drain (committed to the queue then).
    let waiting_short = send_in_task(addr, "slow-2", "slow-2@example.com", message("slow-2"));
    let waiting_long = send_in_task(addr, "slow-5", "slow-5@example.com", message("slow-5"));
    // The relay has read the first part of both bodies in DATA...
    wait_until_read_by_peer(&in_data.stream, "in-data: the first 60% of the body").await;
    wait_until_read_by_peer(&abandoned.stream, "abandoned: the first half of the body").await;
    // ...and the slow-2 and slow-5 messages have reached the sandbox's end of data, where it
    // sits on them: four bodies in all with the two slow-7 ones (the two in DATA are not
    // complete, so they cannot be among them).
    wait_until(
        "slow-2 and slow-5 to reach the sandbox",
        Duration::from_secs(10),
        || world.sandbox.bodies_received() >= 4,
    )
    .await;
    assert_eq!(world.sandbox.bodies_received(), 4);

    // Preconditions: deliveries really are in flight.
    assert_eq!(
        world.sandbox.message_count(),
        0,
        "nothing may be delivered yet (the sandbox is slow for every message so far)"
    );
    assert!(
        !waiting_short.is_finished() && !waiting_long.is_finished(),
        "the slow-2 and slow-5 clients must still wait for their reply at SIGTERM"
    );
    let queued_at_signal = queued_ids(&spool_dir);
    let early_ids: BTreeSet<String> = acked.values().cloned().collect();
    assert_eq!(
        queued_at_signal, early_ids,
        "at SIGTERM queue/ holds exactly the two messages answered `queued`"
    );
    let incoming_at_signal = files_in(&spool_dir.join("incoming"));
    eprintln!(
        "drain: at SIGTERM {:?} after start; queue/ {queued_at_signal:?}; incoming/ {incoming_at_signal:?}",
        started.elapsed()
    );

    // --- SIGTERM ----------------------------------------------------------------------

    let signalled = Instant::now();
    relay.sigterm().await;

    let bye = reply_within(&mut idle, Duration::from_secs(5), "idle client").await;
    assert!(
        bye.starts_with("421 4.3.2"),
        "an idle client is told 421 4.3.2 at SIGTERM, got {bye:?}"
    );
    for (seq, c) in &mut idle_after_250 {
        let bye = reply_within(c, Duration::from_secs(5), seq).await;
        assert!(
            bye.starts_with("421 4.3.2"),
            "{seq}: idle after its 250, told 421 4.3.2 at SIGTERM, got {bye:?}"
        );
    }
    // No new connections once draining (the listener is closed, soon if not at once).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await {
            Ok(Err(_)) => break,
            _ if Instant::now() >= deadline => {
                panic!("the relay still accepts connections 3 s after SIGTERM")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }

    // The abandoned client walks away mid-DATA.
    drop(abandoned);
    // The client in DATA finishes its body, after the relay has begun to drain.
    in_data.send(&in_data_body[cut..]).await;
    in_data.send(b".\r\n").await;
    let in_data_reply = reply_within(&mut in_data, REPLY_LIMIT, "in-data DATA reply").await;
    let in_data_committed = if in_data_reply.starts_with("250 ") {
        acked.insert("in-data".into(), reply_id(&in_data_reply));
        true
    } else {
        assert!(
            in_data_reply.starts_with('4') || in_data_reply.starts_with('5'),
            "DATA in progress at SIGTERM ends with 250 (committed) or a 4xx/5xx refusal, \
             got {in_data_reply:?}; stderr:\n{}",
            relay.stderr_tail(30)
        );
        false
    };
    eprintln!(
        "drain: DATA in progress at SIGTERM answered {:?} after {:?}",
        in_data_reply.trim_end(),
        signalled.elapsed()
    );

    for (seq, task) in [("slow-2", waiting_short), ("slow-5", waiting_long)] {
        let (mut c, reply) = join(task, seq).await;
        assert!(
            reply.starts_with("250 "),
            "{seq}: its attempt was in flight at SIGTERM and must finish: 250 expected, got \
             {reply:?}; stderr:\n{}",
            relay.stderr_tail(30)
        );
        eprintln!(
            "drain: {seq} answered {:?} after {:?}",
            reply.trim_end(),
            signalled.elapsed()
        );
        acked.insert(seq.to_string(), reply_id(&reply));
        let bye = reply_within(&mut c, Duration::from_secs(5), seq).await;
        assert!(
            bye.starts_with("421 4.3.2") || bye.starts_with("EOF"),
            "{seq}: after its reply during the drain the client is told 421 or closed, got {bye:?}"
        );
    }
    if in_data_committed {
        let bye = reply_within(&mut in_data, Duration::from_secs(5), "in-data").await;
        assert!(
            bye.starts_with("421 4.3.2") || bye.starts_with("EOF"),
            "in-data: after its reply during the drain the client is told 421 or closed, got {bye:?}"
        );
    }

    // --- Exit ------------------------------------------------------------------------

    let status = relay.wait_exit(GRACE + Duration::from_secs(5)).await;
    let took = signalled.elapsed();
    let stderr = relay.stderr();
    eprintln!("drain: exited {status} {took:?} after SIGTERM");
    assert_eq!(
        status.code(),
        Some(0),
        "exit code after SIGTERM; stderr:\n{}",
        relay.stderr_tail(40)
    );
    assert!(
        took < GRACE + EXIT_SLACK,
        "the drain must end within the grace period ({GRACE:?} + {EXIT_SLACK:?}), took {took:?}"
    );
    assert!(
        !stderr.contains("stopped before every connection finished"),
        "the drain ran out of its grace period instead of finishing; stderr:\n{}",
        relay.stderr_tail(40)
    );

    // --- Nothing lost, nothing half-accepted ------------------------------------------

    // Read right after the exit: what the in-flight attempts delivered, they delivered
    // before the process ended.
    let counts = world.sandbox.count_by_header(SEQ);
    let queued_after = queued_ids(&spool_dir);
    let leftover_incoming = files_in(&spool_dir.join("incoming"));
    let leftover_queue = files_in(&spool_dir.join("queue"));
    let leftover_failed = files_in(&spool_dir.join("failed"));
    eprintln!(
        "drain: sandbox {counts:?}; queue/ {leftover_queue:?}; incoming/ {leftover_incoming:?}; \
         failed/ {leftover_failed:?}"
    );

    // Every 250 is delivered or safely queued (a complete .eml + .json pair).
    let lost: Vec<&String> = acked
        .iter()
        .filter(|(seq, id)| !counts.contains_key(*seq) && !queued_after.contains(*id))
        .map(|(seq, _)| seq)
        .collect();
    assert!(
        lost.is_empty(),
        "messages that got a 250 are neither delivered nor queued: {lost:?}; stderr:\n{}",
        relay.stderr_tail(40)
    );
    let reader = Spool::open_existing(&spool_dir).expect("the spool exists");
    for id in &queued_after {
        assert!(
            reader.read_body(Area::Queue, id).is_ok(),
            "queued {id} without its body"
        );
    }
    // Never half-accepted: the abandoned message and a refused one are nowhere; nothing
    // stays in incoming/.
    assert!(
        !counts.contains_key("abandoned"),
        "a message abandoned mid-DATA was delivered"
    );
    if !in_data_committed {
        assert!(
            !counts.contains_key("in-data"),
            "the DATA in progress was refused ({in_data_reply:?}) yet delivered"
        );
    }
    assert!(
        leftover_incoming.is_empty(),
        "incoming/ must be empty after the drain (half-received bodies discarded, complete ones \
         committed or discarded): {leftover_incoming:?}"
    );
    let unexpected: Vec<&String> = counts.keys().filter(|s| !acked.contains_key(*s)).collect();
    assert!(
        unexpected.is_empty(),
        "delivered without a 250 to the client: {unexpected:?}"
    );

    // In-flight deliveries finished: each message with a 250 is in the sandbox exactly once,
    // and the queue is empty (the attempts that outlived the client's wait recorded their
    // success before the exit).
    let not_delivered: Vec<&String> = acked.keys().filter(|s| !counts.contains_key(*s)).collect();
    let duplicated: Vec<(&String, &usize)> = counts.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        not_delivered.is_empty() && duplicated.is_empty(),
        "every in-flight delivery finishes exactly once before the exit: not delivered \
         {not_delivered:?} (still queued: {queued_after:?}), duplicated {duplicated:?}; \
         stderr:\n{}",
        relay.stderr_tail(40)
    );
    assert!(
        leftover_queue.is_empty() && leftover_failed.is_empty(),
        "the finished attempts must have cleared queue/ ({leftover_queue:?}) and left nothing \
         in failed/ ({leftover_failed:?})"
    );

    // Each delivered message is whole, byte for byte behind the relay's Received header.
    for m in world.sandbox.messages() {
        let text = String::from_utf8_lossy(&m.data);
        let seq = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{SEQ}: ")))
            .unwrap_or_else(|| panic!("stored message without {SEQ}"))
            .to_string();
        let want = if seq == "in-data" {
            in_data_body.clone()
        } else {
            message(&seq)
        };
        assert!(
            strip_received(&m.data) == want.as_slice(),
            "{seq}: the stored message differs from what the client sent ({} vs {} bytes)",
            m.data.len(),
            want.len()
        );
    }
    eprintln!("drain: test took {:?}", started.elapsed());
}

/// A second SIGTERM during the drain exits at once (code 1), and a message whose delivery
/// was still running stays in the queue for the next start: nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn second_signal_exits_at_once_and_keeps_the_queue() {
    let world = World::start().await;
    let addr = free_addr();
    let mut env = world.env();
    for (k, v) in [
        ("SMTP_OAUTH_RELAY_LISTEN", addr.to_string()),
        (
            "SMTP_OAUTH_RELAY__DELIVERY__TRY_NOW_TIMEOUT_SECS",
            "1".into(),
        ),
        ("SMTP_OAUTH_RELAY_SHUTDOWN_GRACE_SECS", "60".into()),
        ("SMTP_OAUTH_RELAY_ADMIN_LISTEN", "off".into()),
    ] {
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v));
    }
    let work = tempfile::tempdir().expect("tempdir");
    let mut relay = RelayChild::spawn(
        relay_binary(),
        &["serve"],
        &env,
        work.path(),
        &work.path().join("relay.stderr"),
    );
    relay.wait_ready(addr, Duration::from_secs(20)).await;
    // The sandbox takes 30 s to answer: the client gets 250 (queued) after 1 s.
    let (_c, reply) = join(
        send_in_task(addr, "slow", "slow-30@example.com", message("slow-30")),
        "slow-30",
    )
    .await;
    assert!(
        reply.starts_with("250 ") && reply.contains("queued"),
        "{reply}"
    );
    let id = reply_id(&reply);

    relay.sigterm().await;
    // The first signal was handled (the relay logs that it drains) before the second is sent:
    // two signals that arrive before the relay looks are one signal to it.
    relay
        .wait_stderr("shutting down: no new connections", Duration::from_secs(10))
        .await;
    let t = Instant::now();
    relay.sigterm().await;
    let status = relay.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(1), "{}", relay.stderr_tail(20));
    assert!(t.elapsed() < Duration::from_secs(2), "exited at once");
    assert!(relay.stderr().contains("second signal: exiting now"));
    assert!(
        queued_ids(&world.spool_dir()).contains(&id),
        "the acknowledged message is still queued"
    );
}
