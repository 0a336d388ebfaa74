//! Delivery modes, the spool and the governor, end to end against the in-process sandbox
//! (issue 3, DESIGN §2-§3, §7): a `250` means "delivered or safely on disk", transient
//! trouble never loses a message, permanent refusals reach the client in hybrid mode, the
//! governor keeps inside Exchange's limits, and a crash or a restart loses nothing.
//!
//! Every wait is bounded; every load loop is bounded in count and time; loopback only.
//!
//! Queued messages retry after 30-60 s (retry.rs `FIRST_RETRY`), too slow for tests: where a
//! test needs a queued message to go again, it makes it due with the spool's `queue retry`
//! (`Spool::retry`, which a running relay picks up within ~2 s), after waiting until no
//! attempt is in flight (a running attempt would overwrite the retry with its own schedule).

mod support;

#[path = "support/child.rs"]
mod child;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use child::{files_in, free_addr, RelayChild};
use smtp_oauth_relay::app::Relay;
use smtp_oauth_relay::sandbox::{SmtpOutage, TokenFailure};
use smtp_oauth_relay::spool::{now_unix, Area, QueueEntry, Spool};
use support::{
    eventually, relay_binary, reply_id, wait_until, wait_until_read_by_peer, RawClient, World,
    MAILBOX,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SEQ: &str = "X-Test-Seq";

// ---------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------

/// A small message carrying `X-Test-Seq: <seq>` (already dot-stuffed: it has no dots).
fn message(seq: &str) -> Vec<u8> {
    format!(
        "From: app@example.com\r\n\
         To: someone@example.com\r\n\
         Subject: delivery modes {seq}\r\n\
         {SEQ}: {seq}\r\n\
         Message-ID: <{seq}@delivery-modes.test>\r\n\
         \r\n\
         Hello, this is message {seq}.\r\n"
    )
    .into_bytes()
}

fn list(spool: &Spool, area: Area) -> Vec<QueueEntry> {
    spool.list(area).expect("list the spool")
}

/// Waits until the queue on disk holds `n` messages, each attempted at least once.
async fn wait_attempted(spool: &Spool, n: usize) {
    let ok = eventually(Duration::from_secs(20), || {
        let q = list(spool, Area::Queue);
        q.len() == n && q.iter().all(|e| e.attempts >= 1)
    })
    .await;
    assert!(
        ok,
        "expected {n} queued messages, each attempted once; queue: {:#?}",
        list(spool, Area::Queue)
    );
}

/// Waits until no queued message is being attempted (so a `queue retry` is not overwritten
/// by an attempt that ends afterwards): an attempt records its result in the spool before it
/// stops counting as running.
async fn wait_idle(relay: &Relay) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while relay.delivery().attempts_running() > 0
        || relay.delivery().governor().snapshot().in_flight > 0
    {
        assert!(
            Instant::now() < deadline,
            "{} attempts still running after 30 s: {:?}",
            relay.delivery().attempts_running(),
            relay.delivery().governor().snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `queue retry` for every queued message. Returns the ids.
fn retry_all(spool: &Spool) -> Vec<String> {
    let ids: Vec<String> = list(spool, Area::Queue).into_iter().map(|e| e.id).collect();
    for id in &ids {
        assert!(spool.retry(id).expect("queue retry"), "unknown id {id}");
    }
    ids
}

/// Waits until the sandbox holds every `X-Test-Seq` in `want` (bounded), returning the counts.
async fn wait_for_seqs(
    world: &World,
    want: &BTreeSet<String>,
    limit: Duration,
) -> HashMap<String, usize> {
    let deadline = Instant::now() + limit;
    loop {
        let counts = world.sandbox.count_by_header(SEQ);
        if want.iter().all(|s| counts.contains_key(s)) || Instant::now() >= deadline {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that every seq in `want` was stored exactly once and nothing else was stored.
fn assert_exactly_once(counts: &HashMap<String, usize>, want: &BTreeSet<String>) {
    let missing: Vec<&String> = want.iter().filter(|s| !counts.contains_key(*s)).collect();
    let dups: BTreeMap<&String, &usize> = counts.iter().filter(|(_, &n)| n > 1).collect();
    let extra: Vec<&String> = counts.keys().filter(|s| !want.contains(*s)).collect();
    assert!(
        missing.is_empty() && dups.is_empty() && extra.is_empty(),
        "every message exactly once: missing {missing:?}, duplicated {dups:?}, unexpected {extra:?}"
    );
}

/// One connection, EHLO, then `seqs` as messages to someone@example.com; asserts each `250`.
async fn send_all(addr: SocketAddr, seqs: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut c = RawClient::connect(addr).await;
    c.cmd("EHLO app.example", 250).await;
    let mut replies = Vec::new();
    for seq in seqs {
        let reply = c
            .send_mail("app@example.com", &["someone@example.com"], &message(&seq))
            .await;
        assert!(reply.starts_with("250 "), "message {seq}: {reply}");
        replies.push(reply);
    }
    c.cmd("QUIT", 221).await;
    replies
}

fn seqs(range: std::ops::Range<usize>) -> impl Iterator<Item = String> {
    range.map(|n| n.to_string())
}

// ---------------------------------------------------------------------------------------
// 1. crash safety: SIGKILL mid-load, restart on the same spool
// ---------------------------------------------------------------------------------------

/// A client that never panics: load clients must survive the relay being killed.
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
}

const WIRE_TIMEOUT: Duration = Duration::from_secs(30);

impl Wire {
    async fn connect(addr: SocketAddr) -> std::io::Result<Wire> {
        let stream = tokio::time::timeout(WIRE_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        let mut w = Wire {
            stream,
            buf: Vec::new(),
        };
        let greeting = w.reply().await?;
        if !greeting.starts_with("220 ") {
            return Err(std::io::Error::other(format!("greeting: {greeting}")));
        }
        Ok(w)
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        tokio::time::timeout(WIRE_TIMEOUT, self.stream.write_all(bytes))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)?
    }

    async fn reply(&mut self) -> std::io::Result<String> {
        let deadline = tokio::time::Instant::now() + WIRE_TIMEOUT;
        loop {
            if let Some(end) = complete_reply(&self.buf) {
                let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end);
                return Ok(text);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .map_err(|_| std::io::ErrorKind::TimedOut)??;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn cmd(&mut self, line: &str, code: &str) -> std::io::Result<()> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        let reply = self.reply().await?;
        if reply.starts_with(code) {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("{line} -> {reply}")))
        }
    }
}

fn complete_reply(buf: &[u8]) -> Option<usize> {
    let mut pos = 0;
    while let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') {
        let line = &buf[pos..pos + nl + 1];
        pos += nl + 1;
        if line.len() < 4 || line[3] == b' ' {
            return Some(pos);
        }
    }
    None
}

/// What the load clients saw.
#[derive(Default)]
struct Ledger {
    /// Messages whose final dot the client started to write (the relay may have committed
    /// them even if the client never saw the reply).
    sent: BTreeSet<usize>,
    /// Messages that got a `250` after DATA.
    acked: BTreeSet<usize>,
    /// Replies other than 250 after a complete DATA (not expected from a healthy relay).
    refused: Vec<(usize, String)>,
}

/// Sends messages `first..first + count` on one connection until done or the first error.
async fn load_client(
    addr: SocketAddr,
    first: usize,
    count: usize,
    ledger: Arc<Mutex<Ledger>>,
    acked: Arc<AtomicUsize>,
) -> Option<String> {
    let mut w = match Wire::connect(addr).await {
        Ok(w) => w,
        Err(e) => return Some(format!("connect: {e}")),
    };
    if let Err(e) = w.cmd("EHLO load.example", "250").await {
        return Some(format!("EHLO: {e}"));
    }
    for n in first..first + count {
        let result: std::io::Result<String> = async {
            w.cmd("MAIL FROM:<app@example.com>", "250").await?;
            w.cmd("RCPT TO:<someone@example.com>", "250").await?;
            w.cmd("DATA", "354").await?;
            w.send(&message(&n.to_string())).await?;
            ledger.lock().unwrap().sent.insert(n);
            w.send(b".\r\n").await?;
            w.reply().await
        }
        .await;
        match result {
            Ok(reply) if reply.starts_with("250 ") => {
                ledger.lock().unwrap().acked.insert(n);
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(reply) => {
                ledger.lock().unwrap().refused.push((n, reply.clone()));
                return Some(format!("message {n}: {reply}"));
            }
            Err(e) => return Some(format!("message {n}: {e}")),
        }
    }
    let _ = w.cmd("QUIT", "221").await;
    None
}

/// `world.env()` with the listen address and `extra` overriding.
fn child_env(world: &World, listen: SocketAddr, extra: &[(&str, &str)]) -> Vec<(String, String)> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_safety_sigkill_mid_load() {
    const CLIENTS: usize = 20;
    const PER_CLIENT: usize = 100;
    const TOTAL: usize = CLIENTS * PER_CLIENT;
    /// Kill once this many 250s have been seen: well inside the load, whatever its speed.
    const KILL_AFTER_ACKS: usize = 400;

    let started = Instant::now();
    // Limits off on both sides: this test is about durability, not pacing.
    let world = World::start_with(|o| o.max_connections_per_mailbox = 0).await;
    let addr = free_addr();
    let env = child_env(
        &world,
        addr,
        &[
            ("SMTP_OAUTH_RELAY_MODE", "queue"),
            ("SMTP_OAUTH_RELAY_RATE_PER_MINUTE", "0"),
            ("SMTP_OAUTH_RELAY_MAX_CONNECTIONS", "0"),
        ],
    );
    let work = tempfile::tempdir().expect("tempdir");
    let log = work.path().join("relay.stderr");
    let mut relay = RelayChild::spawn(relay_binary(), &[], &env, work.path(), &log);
    relay.wait_ready(addr, Duration::from_secs(20)).await;

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let acked = Arc::new(AtomicUsize::new(0));
    let load_start = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(load_client(
                addr,
                c * PER_CLIENT,
                PER_CLIENT,
                ledger.clone(),
                acked.clone(),
            ))
        })
        .collect();

    // Mid-load: after KILL_AFTER_ACKS acknowledgements (at most 30 s).
    let reached = eventually(Duration::from_secs(30), || {
        acked.load(Ordering::Relaxed) >= KILL_AFTER_ACKS
    })
    .await;
    assert!(
        reached,
        "only {} of {TOTAL} messages acknowledged in 30 s; relay stderr:\n{}",
        acked.load(Ordering::Relaxed),
        relay.stderr_tail(40)
    );
    let killed_after = load_start.elapsed();
    let status = relay.sigkill();
    let acked_at_kill = acked.load(Ordering::Relaxed);

    let mut client_errors = Vec::new();
    for c in clients {
        let outcome = tokio::time::timeout(Duration::from_secs(45), c)
            .await
            .expect("load client ends within 45 s of the kill")
            .expect("load client task");
        if let Some(e) = outcome {
            client_errors.push(e);
        }
    }
    let (sent, acked_set, refused) = {
        let l = ledger.lock().unwrap();
        (l.sent.clone(), l.acked.clone(), l.refused.clone())
    };
    eprintln!(
        "crash test: killed ({status}) after {killed_after:?} with {acked_at_kill} acked; \
         finally {} acked, {} sent (final dot written), {} clients stopped by errors",
        acked_set.len(),
        sent.len(),
        client_errors.len()
    );
    assert!(
        refused.is_empty(),
        "the relay refused complete messages before the kill: {:?}",
        &refused[..refused.len().min(10)]
    );
    assert!(
        acked_set.len() < TOTAL,
        "the kill was not mid-load: all {TOTAL} messages were acknowledged"
    );
    assert!(acked_set.is_subset(&sent));

    let spool_dir = world.spool_dir();
    // Queue mode committed these small messages to the spool's segment log (issue 14).
    let logged: u64 = std::fs::read_dir(spool_dir.join("log"))
        .expect("the spool has a log")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        logged > 0,
        "queue mode wrote no segment: the test did not cover the log"
    );
    let leftovers_before = files_in(&spool_dir.join("incoming"));
    eprintln!(
        "crash test: {} files in incoming/ after the kill (half-received or mid-commit)",
        leftovers_before.len()
    );

    // Restart on the same spool and the same port.
    let mut relay = RelayChild::spawn(relay_binary(), &[], &env, work.path(), &log);
    relay.wait_ready(addr, Duration::from_secs(20)).await;
    let incoming_after_start = files_in(&spool_dir.join("incoming"));
    assert!(
        incoming_after_start.is_empty(),
        "incoming/ must be cleaned at start-up: {incoming_after_start:?}"
    );

    // Every acknowledged message arrives (at least once).
    let want: BTreeSet<String> = acked_set.iter().map(|n| n.to_string()).collect();
    let counts = wait_for_seqs(&world, &want, Duration::from_secs(60)).await;
    let missing: Vec<&String> = want.iter().filter(|s| !counts.contains_key(*s)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged messages never reached the sandbox (first: {:?}); relay stderr:\n{}",
        missing.len(),
        &missing[..missing.len().min(20)],
        relay.stderr_tail(40)
    );

    // Let the restarted relay finish whatever else it committed.
    let settled = eventually(Duration::from_secs(60), || {
        files_in(&spool_dir.join("queue")).is_empty()
            && Spool::open_existing(&spool_dir)
                .and_then(|s| s.list(Area::Queue))
                .is_ok_and(|q| q.is_empty())
    })
    .await;
    let queue_left = files_in(&spool_dir.join("queue"));
    assert!(
        settled,
        "the queue did not drain after the restart: {} files left (first: {:?})",
        queue_left.len(),
        &queue_left[..queue_left.len().min(10)]
    );

    let counts = world.sandbox.count_by_header(SEQ);
    let stored: BTreeMap<usize, usize> = counts
        .iter()
        .map(|(k, &v)| (k.parse::<usize>().expect("numeric X-Test-Seq"), v))
        .collect();
    let never_sent: Vec<usize> = stored
        .keys()
        .filter(|n| !sent.contains(n))
        .copied()
        .collect();
    assert!(
        never_sent.is_empty(),
        "the sandbox holds messages whose DATA was never completed by the client: {never_sent:?}"
    );
    let duplicates: BTreeMap<usize, usize> = stored
        .iter()
        .filter(|(_, &c)| c > 1)
        .map(|(&n, &c)| (n, c))
        .collect();
    let unacked_delivered: Vec<usize> = stored
        .keys()
        .filter(|n| !acked_set.contains(n))
        .copied()
        .collect();
    eprintln!(
        "crash test: {} distinct messages stored ({} in total); {} duplicated: {:?}; \
         {} delivered although the client saw no 250: {:?}",
        stored.len(),
        stored.values().sum::<usize>(),
        duplicates.len(),
        duplicates,
        unacked_delivered.len(),
        unacked_delivered
    );
    for area in ["incoming", "queue", "failed"] {
        let left = files_in(&spool_dir.join(area));
        assert!(
            left.is_empty(),
            "{area}/ must be empty once settled: {left:?}"
        );
    }

    relay.sigterm().await;
    let status = relay.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", relay.stderr_tail(40));
    eprintln!("crash test: total {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------
// 2. upstream down for a while: refused, 451 storm, token endpoint 503
// ---------------------------------------------------------------------------------------

async fn upstream_down_then_recovers(mode: &str) {
    let world = World::start().await;
    let relay = world
        .relay(&[
            ("SMTP_OAUTH_RELAY_MODE", mode),
            ("SMTP_OAUTH_RELAY__DELIVERY__TRY_NOW_TIMEOUT_SECS", "2"),
            // Pooled sessions go stale after 1 s, so phase C must open (and authenticate)
            // new sessions instead of reusing ones authenticated in phase B.
            ("SMTP_OAUTH_RELAY__UPSTREAM__IDLE_TIMEOUT_SECS", "1"),
        ])
        .await;
    let addr = relay.local_addr();
    let spool = relay.delivery().spool().clone();
    let sb = &world.sandbox;

    // Phase A: connection refused.
    sb.set_smtp_outage(Some(SmtpOutage::Refuse));
    send_all(addr, seqs(0..10)).await;
    wait_attempted(&spool, 10).await;
    assert_eq!(relay.delivery().queued(), 10);

    // Phase B: every MAIL and end of DATA gets 451 4.7.500.
    sb.set_smtp_outage(Some(SmtpOutage::Storm451));
    send_all(addr, seqs(10..20)).await;
    wait_attempted(&spool, 20).await;
    let b_errors: Vec<String> = list(&spool, Area::Queue)
        .into_iter()
        .filter_map(|e| e.last_error)
        .filter(|e| e.contains("4.7.500"))
        .collect();
    assert!(
        !b_errors.is_empty(),
        "phase B attempts must have met the 451 storm: {:#?}",
        list(&spool, Area::Queue)
    );

    // Phase C: SMTP is back, but the cached token is revoked and the token endpoint says 503.
    sb.set_token_failure(Some(TokenFailure::Unavailable503));
    sb.revoke_tokens();
    sb.set_smtp_outage(None);
    // The sessions phase B authenticated are gone (the relay's reaper closes them once idle
    // for 1 s): the sandbox counts no authenticated session, so phase C must open new ones,
    // and authenticating them needs a token.
    wait_until(
        "the relay to close the sessions phase B authenticated",
        Duration::from_secs(20),
        || sb.active_sessions(MAILBOX) == 0,
    )
    .await;
    let token_requests = sb.token_requests();
    send_all(addr, seqs(20..30)).await;
    wait_attempted(&spool, 30).await;
    assert!(
        sb.token_requests() > token_requests,
        "phase C must have asked the (failing) token endpoint"
    );
    assert_eq!(
        sb.message_count(),
        0,
        "nothing can be delivered during the outage"
    );
    assert!(list(&spool, Area::Failed).is_empty());

    // Recovery: clear everything, wait until the relay's token cache hands out a token again
    // (it answers from its memory of the failure for 2 s, then asks the endpoint), make every
    // queued message due now.
    sb.set_token_failure(None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = relay.tokens().get().await {
        assert!(
            Instant::now() < deadline,
            "the relay still has no token 20 s after the endpoint recovered: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_idle(&relay).await;
    assert_eq!(retry_all(&spool).len(), 30);
    let want: BTreeSet<String> = seqs(0..30).collect();
    let counts = wait_for_seqs(&world, &want, Duration::from_secs(20)).await;
    if !want.iter().all(|s| counts.contains_key(s)) {
        // A second round for anything whose retry raced with an attempt.
        wait_idle(&relay).await;
        retry_all(&spool);
        wait_for_seqs(&world, &want, Duration::from_secs(20)).await;
    }
    let drained = eventually(Duration::from_secs(10), || {
        relay.delivery().queued() == 0 && list(&spool, Area::Queue).is_empty()
    })
    .await;
    assert!(
        drained,
        "queue not empty after recovery: {} in memory, on disk {:#?}",
        relay.delivery().queued(),
        list(&spool, Area::Queue)
    );
    assert!(list(&spool, Area::Failed).is_empty());
    // Judged only once a duplicate can no longer come: the queue is empty and the relay's
    // shutdown returned true, i.e. every delivery it had started has ended.
    assert!(relay.shutdown(Duration::from_secs(10)).await);
    assert_exactly_once(&sb.count_by_header(SEQ), &want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_then_recovers_queue_mode() {
    upstream_down_then_recovers("queue").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_then_recovers_hybrid_mode() {
    upstream_down_then_recovers("hybrid").await;
}

// ---------------------------------------------------------------------------------------
// 3. hybrid: permanent passes through, transient is queued
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_permanent_is_passed_through_and_transient_is_queued() {
    let world = World::start().await;
    let relay = world
        .relay(&[
            ("SMTP_OAUTH_RELAY_MODE", "hybrid"),
            ("SMTP_OAUTH_RELAY__DELIVERY__TRY_NOW_TIMEOUT_SECS", "10"),
        ])
        .await;
    let spool = relay.delivery().spool().clone();
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO app.example", 250).await;

    // Permanent: Exchange's own 5xx, nothing kept.
    let reply = c
        .send_mail(
            "app@example.com",
            &["data-perm@x.example"],
            &message("perm"),
        )
        .await;
    assert!(reply.starts_with("554 5.6.0"), "permanent refusal: {reply}");
    assert_eq!(relay.delivery().queued(), 0);
    assert!(list(&spool, Area::Queue).is_empty());
    assert!(list(&spool, Area::Failed).is_empty());
    assert!(files_in(&spool.root().join("incoming")).is_empty());
    assert_eq!(world.sandbox.message_count(), 0);

    // Transient: 250 (queued), delivered once the upstream is back.
    world.sandbox.set_smtp_outage(Some(SmtpOutage::Storm451));
    let reply = c
        .send_mail(
            "app@example.com",
            &["someone@example.com"],
            &message("temp"),
        )
        .await;
    assert!(reply.starts_with("250 "), "transient failure: {reply}");
    assert!(reply.contains("queued"), "{reply}");
    assert_eq!(relay.delivery().queued(), 1);
    let q = list(&spool, Area::Queue);
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].id, reply_id(&reply));
    assert_eq!(q[0].attempts, 1);
    assert!(
        q[0].last_error.as_deref().unwrap_or("").contains("4.7.500"),
        "{:?}",
        q[0]
    );
    assert_eq!(world.sandbox.message_count(), 0);

    world.sandbox.set_smtp_outage(None);
    wait_idle(&relay).await;
    retry_all(&spool);
    let want: BTreeSet<String> = ["temp".to_string()].into();
    wait_for_seqs(&world, &want, Duration::from_secs(20)).await;
    assert!(
        eventually(Duration::from_secs(10), || relay.delivery().queued() == 0
            && list(&spool, Area::Queue).is_empty())
        .await
    );
    c.cmd("QUIT", 221).await;
    // Judged only once a duplicate can no longer come: the queue is empty and the relay's
    // shutdown returned true, i.e. every delivery it had started has ended.
    assert!(relay.shutdown(Duration::from_secs(10)).await);
    assert_exactly_once(&world.sandbox.count_by_header(SEQ), &want);
}

// ---------------------------------------------------------------------------------------
// 4. pacing: rate and connections at the sandbox
// ---------------------------------------------------------------------------------------

async fn pacing_respects_rate_and_connections(mode: &str) {
    const CLIENTS: usize = 10;
    const PER_CLIENT: usize = 10;
    const TOTAL: usize = CLIENTS * PER_CLIENT;
    // The sandbox counts 10 per 900 ms, slightly stricter than the relay's 10 per 1 s, to
    // absorb the jitter between the governor's decision and the MAIL FROM on the wire.
    let world = World::start_with(|o| {
        o.rate_limit = 10;
        o.rate_window = Duration::from_millis(900);
    })
    .await;
    assert_eq!(world.sandbox.options().max_connections_per_mailbox, 3);
    let relay = world
        .relay(&[
            ("SMTP_OAUTH_RELAY_MODE", mode),
            ("SMTP_OAUTH_RELAY_RATE_PER_MINUTE", "10"),
            ("SMTP_OAUTH_RELAY__GOVERNOR__RATE_WINDOW_SECS", "1"),
            ("SMTP_OAUTH_RELAY_MAX_CONNECTIONS", "3"),
        ])
        .await;
    let addr = relay.local_addr();
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(send_all(addr, seqs(c * PER_CLIENT..(c + 1) * PER_CLIENT))))
        .collect();
    for c in clients {
        tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .expect("clients finish within 60 s")
            .expect("client task");
    }
    let accepted_in = started.elapsed();
    let stored = world
        .sandbox
        .wait_for_messages(TOTAL, Duration::from_secs(40))
        .await;
    let delivered_in = started.elapsed();
    assert_eq!(
        stored.len(),
        TOTAL,
        "all delivered within 40 s; rate violations {}, concurrency rejections {}, \
         peak sessions {}; still queued: {:#?}",
        world.sandbox.rate_violations(),
        world.sandbox.concurrency_rejections(),
        world.sandbox.peak_sessions(MAILBOX),
        list(relay.delivery().spool(), Area::Queue)
            .iter()
            .map(|e| (e.attempts, e.last_error.clone()))
            .collect::<Vec<_>>()
    );
    assert_exactly_once(
        &world.sandbox.count_by_header(SEQ),
        &seqs(0..TOTAL).collect(),
    );
    let sb = &world.sandbox;
    eprintln!(
        "pacing ({mode}): accepted in {accepted_in:?}, delivered in {delivered_in:?}; \
         rate violations {}, concurrency rejections {}, peak sessions {}",
        sb.rate_violations(),
        sb.concurrency_rejections(),
        sb.peak_sessions(MAILBOX)
    );
    assert_eq!(sb.rate_violations(), 0, "the relay exceeded the rate");
    assert_eq!(
        sb.concurrency_rejections(),
        0,
        "the relay exceeded 3 connections"
    );
    assert!(
        sb.peak_sessions(MAILBOX) <= 3,
        "peak {}",
        sb.peak_sessions(MAILBOX)
    );

    let times = sb.message_times(MAILBOX);
    assert_eq!(times.len(), TOTAL, "one MAIL FROM per message");
    let window = Duration::from_millis(900);
    for (i, &start) in times.iter().enumerate() {
        let inside = times[i..]
            .iter()
            .take_while(|&&t| t - start < window)
            .count();
        assert!(
            inside <= 10,
            "{inside} messages in the 900 ms after message #{i}"
        );
    }
    let span = *times.last().unwrap() - times[0];
    assert!(
        span >= Duration::from_secs(8),
        "100 messages at 10/s cannot span less than 9 windows: {span:?}"
    );
    assert!(relay.shutdown(Duration::from_secs(10)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pacing_respects_rate_and_connections_queue_mode() {
    pacing_respects_rate_and_connections("queue").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pacing_respects_rate_and_connections_hybrid_mode() {
    pacing_respects_rate_and_connections("hybrid").await;
}

// ---------------------------------------------------------------------------------------
// 5. submission quota: deferred, not bounced
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_is_deferred_not_bounced() {
    let world = World::start().await;
    let relay = world
        .relay(&[
            ("SMTP_OAUTH_RELAY_MODE", "hybrid"),
            ("SMTP_OAUTH_RELAY__DELIVERY__TRY_NOW_TIMEOUT_SECS", "10"),
        ])
        .await;
    let spool = relay.delivery().spool().clone();
    world.sandbox.set_quota_exceeded(true);
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO app.example", 250).await;
    let reply = c
        .send_mail(
            "app@example.com",
            &["someone@example.com"],
            &message("quota-1"),
        )
        .await;
    assert!(reply.starts_with("250 "), "quota must be deferred: {reply}");
    assert_eq!(relay.delivery().queued(), 1);
    assert!(list(&spool, Area::Failed).is_empty());
    let snapshot = relay.delivery().governor().snapshot();
    assert!(
        snapshot.held_until.is_some(),
        "the governor must hold the mailbox: {snapshot:?}"
    );
    let q = list(&spool, Area::Queue);
    assert_eq!(q.len(), 1);
    assert!(
        q[0].last_error
            .as_deref()
            .unwrap_or("")
            .contains("SubmissionQuotaExceeded"),
        "{:?}",
        q[0]
    );
    assert!(
        q[0].next_attempt >= now_unix() + 14 * 60,
        "a quota deferral is long (at least 15 min): next attempt in {} s",
        q[0].next_attempt.saturating_sub(now_unix())
    );

    // While held, hybrid queues at once without asking Exchange.
    let mails_before = world.sandbox.message_times(MAILBOX).len();
    let t = Instant::now();
    let reply = c
        .send_mail(
            "app@example.com",
            &["someone@example.com"],
            &message("quota-2"),
        )
        .await;
    assert!(
        reply.starts_with("250 ") && reply.contains("queued"),
        "{reply}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "queued at once");
    assert_eq!(world.sandbox.message_times(MAILBOX).len(), mails_before);
    assert_eq!(relay.delivery().queued(), 2);

    // And it stays that way: nothing bounced, nothing sent. The delivery loop is where every
    // later attempt and every bounce starts; instead of giving it time, make it go over the
    // queue: each `control/rescan` it consumes starts a pass, so once the second request is
    // consumed, a whole pass has run since the deferral. Then look at what it did.
    let rescan = spool.root().join("control").join("rescan");
    for pass in 1..=2 {
        spool.request_rescan().expect("request a rescan");
        wait_until(
            &format!("the delivery loop to start pass {pass} over the queue"),
            Duration::from_secs(10),
            || !rescan.exists(),
        )
        .await;
    }
    assert_eq!(
        world.sandbox.message_times(MAILBOX).len(),
        mails_before,
        "no MAIL FROM while the mailbox is held"
    );
    assert_eq!(relay.delivery().governor().snapshot().in_flight, 0);
    assert_eq!(relay.delivery().queued(), 2);
    assert_eq!(list(&spool, Area::Queue).len(), 2);
    assert!(list(&spool, Area::Failed).is_empty());
    assert_eq!(world.sandbox.message_count(), 0);
    c.cmd("QUIT", 221).await;
    assert!(relay.shutdown(Duration::from_secs(10)).await);
}

// ---------------------------------------------------------------------------------------
// 6. max age: failed/ with the reason, and a failure notice to the sender
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_moves_to_failed_with_notice() {
    let world = World::start().await;
    let relay = world
        .relay(&[
            ("SMTP_OAUTH_RELAY_MODE", "queue"),
            ("SMTP_OAUTH_RELAY__DELIVERY__MAX_AGE_SECS", "1"),
            ("SMTP_OAUTH_RELAY__DELIVERY__FAILURE_NOTICE", "true"),
        ])
        .await;
    let spool = relay.delivery().spool().clone();
    // `data-temp` fails every attempt with 451 4.7.500 (a transient reply) while the notice
    // to app@example.com goes through: a global outage would also fail the notice, which
    // has the same 1 s max age.
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO app.example", 250).await;
    let reply = c
        .send_mail("app@example.com", &["data-temp@x.example"], &message("old"))
        .await;
    assert!(reply.starts_with("250 "), "{reply}");
    let id = reply_id(&reply);
    c.cmd("QUIT", 221).await;

    // The envelope is written to failed/ before the body is moved there: wait for both.
    let failed = eventually(Duration::from_secs(20), || {
        list(&spool, Area::Failed).iter().any(|e| e.id == id)
            && spool.body_in(Area::Failed, &id).is_file()
    })
    .await;
    assert!(
        failed,
        "past max_age the message must move to failed/; queue: {:#?}",
        list(&spool, Area::Queue)
    );
    let entry = list(&spool, Area::Failed)
        .into_iter()
        .find(|e| e.id == id)
        .unwrap();
    let reason = entry.failure_reason.clone().unwrap_or_default();
    assert!(
        reason.contains("4.7.500"),
        "the reason must name the last error: {entry:#?}"
    );
    assert!(entry.failed_at.is_some());
    assert_eq!(entry.rcpt_to, vec!["data-temp@x.example"]);
    assert!(spool.body_in(Area::Failed, &id).is_file());

    let stored = world
        .sandbox
        .wait_for_messages(1, Duration::from_secs(20))
        .await;
    let notice = stored
        .iter()
        .find(|m| m.envelope.rcpt_to == vec!["app@example.com".to_string()])
        .unwrap_or_else(|| panic!("a failure notice to app@example.com; stored: {stored:#?}"));
    let text = String::from_utf8_lossy(&notice.data);
    assert!(text.contains(&id), "the notice names the message:\n{text}");
    assert!(text.contains("data-temp@x.example"), "{text}");
    assert!(
        eventually(Duration::from_secs(10), || relay.delivery().queued() == 0
            && list(&spool, Area::Queue).is_empty())
        .await
    );
    assert_eq!(
        list(&spool, Area::Failed).len(),
        1,
        "only the original failed"
    );
    // Counted only once a second notice can no longer come: the queue is empty and the
    // relay's shutdown returned true, i.e. every delivery it had started has ended.
    assert!(relay.shutdown(Duration::from_secs(10)).await);
    assert_eq!(world.sandbox.message_count(), 1, "exactly one notice");
}

// ---------------------------------------------------------------------------------------
// 7. restart: queued messages survive and go out once
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recovers_queued_messages() {
    let world = World::start().await;
    let queue = [("SMTP_OAUTH_RELAY_MODE", "queue")];
    let relay = world.relay(&queue).await;
    world.sandbox.set_smtp_outage(Some(SmtpOutage::Refuse));
    send_all(relay.local_addr(), seqs(0..5)).await;
    wait_attempted(relay.delivery().spool(), 5).await;
    assert!(relay.shutdown(Duration::from_secs(10)).await);
    world.sandbox.set_smtp_outage(None);

    let relay = world.relay(&queue).await;
    assert_eq!(relay.delivery().queued(), 5, "recovered from the spool");
    let spool = relay.delivery().spool().clone();
    wait_idle(&relay).await;
    retry_all(&spool);
    let want: BTreeSet<String> = seqs(0..5).collect();
    wait_for_seqs(&world, &want, Duration::from_secs(20)).await;
    assert!(
        eventually(Duration::from_secs(10), || relay.delivery().queued() == 0
            && list(&spool, Area::Queue).is_empty())
        .await
    );
    // Judged only once a duplicate can no longer come: the queue is empty and the relay's
    // shutdown returned true, i.e. every delivery it had started has ended.
    assert!(relay.shutdown(Duration::from_secs(10)).await);
    assert_exactly_once(&world.sandbox.count_by_header(SEQ), &want);
}

// ---------------------------------------------------------------------------------------
// 8. graceful shutdown: DATA in progress finishes and commits
// ---------------------------------------------------------------------------------------

/// One round: a client half-way through DATA, an idle client, `shutdown(5 s)` meanwhile.
async fn shutdown_round(round: usize) {
    const GRACE: Duration = Duration::from_secs(5);
    let world = World::start().await;
    let relay = world
        .relay(&[
            ("SMTP_OAUTH_RELAY_MODE", "hybrid"),
            ("SMTP_OAUTH_RELAY__DELIVERY__TRY_NOW_TIMEOUT_SECS", "3"),
        ])
        .await;
    let addr = relay.local_addr();
    let seq = format!("shutdown-{round}");
    let body = message(&seq);
    let (head, tail) = body.split_at(body.len() / 2);

    let mut busy = RawClient::connect(addr).await;
    busy.cmd("EHLO busy.example", 250).await;
    busy.cmd("MAIL FROM:<app@example.com>", 250).await;
    busy.cmd("RCPT TO:<someone@example.com>", 250).await;
    busy.cmd("DATA", 354).await;
    busy.send(head).await;
    let mut idle = RawClient::connect(addr).await;
    idle.cmd("EHLO idle.example", 250).await;
    // The relay has read the first half before the shutdown starts.
    wait_until_read_by_peer(&busy.stream, "the first half of the body").await;

    let t0 = Instant::now();
    let stop = tokio::spawn(relay.shutdown(GRACE));
    let bye = tokio::time::timeout(Duration::from_secs(5), idle.reply())
        .await
        .expect("the idle client hears from the relay");
    assert!(
        bye.starts_with("421 4.3.2"),
        "round {round}: idle client got {bye:?}"
    );

    busy.send(tail).await;
    busy.send(b".\r\n").await;
    let reply = tokio::time::timeout(Duration::from_secs(10), busy.reply())
        .await
        .expect("the DATA reply within 10 s");
    if !reply.starts_with("250 ") {
        // Say where the message went, for the report: a lost reply on a delivered or
        // committed message makes the app send it again (a duplicate). Looked at once the
        // shutdown has ended, so a delivery still running has finished.
        let _ = tokio::time::timeout(GRACE + Duration::from_secs(5), stop).await;
        let delivered = world.sandbox.count_by_header(SEQ).get(&seq).copied();
        let queued = std::fs::read_dir(world.spool_dir().join("queue"))
            .map(|d| d.count())
            .unwrap_or(0);
        panic!(
            "round {round}: DATA in progress at shutdown must finish with 250, got {reply:?} \
             (the message was nevertheless delivered {delivered:?} times; {queued} files in queue/)"
        );
    }
    let finished = tokio::time::timeout(GRACE + Duration::from_secs(5), stop)
        .await
        .expect("shutdown returns")
        .expect("shutdown task");
    let took = t0.elapsed();
    assert!(
        finished,
        "round {round}: shutdown did not finish within its grace"
    );
    assert!(
        took <= GRACE + Duration::from_secs(1),
        "round {round}: shutdown took {took:?}"
    );

    // Delivered (hybrid) or committed to the queue, never a half message.
    let want: BTreeSet<String> = [seq.clone()].into();
    let counts = wait_for_seqs(&world, &want, Duration::from_secs(2)).await;
    if counts.contains_key(&seq) {
        assert_exactly_once(&counts, &want);
        let stored = world.sandbox.messages();
        let text = String::from_utf8_lossy(&stored[0].data);
        assert!(
            text.ends_with(&String::from_utf8_lossy(&body).to_string()),
            "round {round}: the whole body arrives:\n{text}"
        );
    } else {
        let (spool, queued) = Spool::open(&world.spool_dir()).expect("open the spool");
        assert_eq!(
            queued.len(),
            1,
            "round {round}: a 250 without delivery must leave the message queued"
        );
        let eml = spool.read_body(Area::Queue, &queued[0].id).unwrap();
        assert!(
            eml.ends_with(&body),
            "round {round}: the whole body is queued"
        );
    }
    // The listener is gone.
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "round {round}: no new connections after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_commits_data_in_progress() {
    // Several rounds: the order in which the relay notices "shutdown" and "reply ready" varies.
    for round in 0..6 {
        shutdown_round(round).await;
    }
}
