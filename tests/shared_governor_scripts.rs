//! The shared governor's Lua scripts against a real Redis (issue 15): the window edges, the
//! daily budget, leases that expire when a replica crashes and stay while renewed, refunds,
//! the shared holds, recording sends made in fallback once, and TTLs on every key. Each test
//! names the time (the scripts' last argument), so the edges are exact.

mod support;
#[path = "support/redis.rs"]
mod redis_server;
#[path = "support/tools.rs"]
mod tools;

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use smtp_oauth_relay::governor::shared::Keys;
use smtp_oauth_relay::governor::{scripts, Limits};

const SEC: i64 = 1000;
const DAY: i64 = 24 * 3600 * SEC;

struct Fixture {
    _server: redis_server::RedisServer,
    con: MultiplexedConnection,
    keys: Keys,
}

async fn fixture() -> Option<Fixture> {
    if !redis_server::available() {
        return None;
    }
    let server = redis_server::RedisServer::start();
    let con = server.connect().await;
    Some(Fixture {
        _server: server,
        con,
        keys: Keys::new("test", "tenant", "box@example.com"),
    })
}

/// The limits one acquisition passes.
#[derive(Clone, Copy)]
struct Lim {
    rate: i64,
    window: i64,
    daily: i64,
    sessions: i64,
    lease: i64,
}

const OFF: Lim = Lim {
    rate: 0,
    window: 60 * SEC,
    daily: 0,
    sessions: 0,
    lease: 30 * SEC,
};

impl Lim {
    /// The limits as the relay holds them (the scripts take what the relay passes).
    fn limits(self) -> Limits {
        let ms = |v: i64| Duration::from_millis(v as u64);
        Limits {
            max_connections: self.sessions as u32,
            rate: self.rate as u32,
            rate_window: ms(self.window),
            daily_recipients: self.daily as u32,
            max_recipients_per_message: 0,
        }
    }
}

/// The relay's own calls of the scripts (`governor::scripts`), at a time the test names.
impl Fixture {
    async fn acquire(&mut self, id: &str, n: i64, l: Lim, now: i64) -> (i64, i64) {
        let lease = Duration::from_millis(l.lease as u64);
        let inv = scripts::acquire(
            &self.keys,
            id,
            n as u32,
            &l.limits(),
            l.sessions as u32,
            lease,
            Some(now as u64),
        );
        inv.invoke_async(&mut self.con).await.expect("acquire runs")
    }

    async fn release(&mut self, id: &str, l: Lim, now: i64) {
        let inv = scripts::release(&self.keys, id, &l.limits(), Some(now as u64));
        let _: i64 = inv.invoke_async(&mut self.con).await.expect("release runs");
    }

    async fn refund(&mut self, id: &str, n: i64) {
        let inv = scripts::refund(&self.keys, &[(id.to_string(), n as u32)]);
        let _: i64 = inv.invoke_async(&mut self.con).await.expect("refund runs");
    }

    async fn renew(&mut self, lease: i64, now: i64, ids: &[&str]) -> i64 {
        let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        let lease = Duration::from_millis(lease as u64);
        let inv = scripts::renew(&self.keys, lease, &ids, Some(now as u64));
        inv.invoke_async(&mut self.con).await.expect("renew runs")
    }

    async fn cmd<T: redis::FromRedisValue>(&mut self, args: &[&str]) -> T {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query_async(&mut self.con).await.expect("command runs")
    }
}

/// One replica's governor for `box@example.com` on `server`, with its upkeep running until
/// `stop` (the relay runs it beside every shared governor).
fn replica(
    server: &redis_server::RedisServer,
    limits: &smtp_oauth_relay::governor::Limits,
    lease: std::time::Duration,
    timeout: std::time::Duration,
    stop: &tokio_util::sync::CancellationToken,
) -> std::sync::Arc<smtp_oauth_relay::governor::Governor> {
    use smtp_oauth_relay::governor::shared::{SharedSettings, DEFAULT_PREFIX};
    use smtp_oauth_relay::governor::{Coordinator, Governor, SharedMailbox};
    let coord = Coordinator::new(SharedSettings {
        url: server.url(),
        password: None,
        ca_file: None,
        prefix: DEFAULT_PREFIX.into(),
        expected_replicas: 2,
        lease,
        timeout,
    })
    .expect("coordinator");
    let keys = Keys::new(DEFAULT_PREFIX, "tenant", "box@example.com");
    let g = Governor::with_shared(
        limits.clone(),
        SharedMailbox::new(coord, keys, limits.clone()),
    );
    tokio::spawn(g.clone().upkeep(stop.clone()));
    g
}

#[tokio::test]
async fn the_rate_window_lets_rate_sends_through_and_frees_at_its_exact_edge() {
    let Some(mut f) = fixture().await else { return };
    let l = Lim {
        rate: 3,
        window: 1000,
        ..OFF
    };
    let t0 = 1_000_000;
    for (i, t) in [t0, t0 + 10, t0 + 20].into_iter().enumerate() {
        assert_eq!(f.acquire(&format!("s{i}"), 1, l, t).await.0, 0, "send {i}");
    }
    assert_eq!(
        f.acquire("s3", 1, l, t0 + 30).await,
        (1, 970),
        "full: the first leaves at t0+1000"
    );
    assert_eq!(
        f.acquire("s3", 1, l, t0 + 999).await,
        (1, 1),
        "one ms before the edge"
    );
    assert_eq!(
        f.acquire("s3", 1, l, t0 + 1000).await.0,
        0,
        "at the edge: the first has left"
    );
    assert_eq!(
        f.acquire("s4", 1, l, t0 + 1001).await,
        (1, 9),
        "the next frees when s1 leaves"
    );
    // A waiting answer takes nothing.
    let in_window: i64 = f.cmd(&["ZCARD", &f.keys.rate.clone()]).await;
    assert_eq!(in_window, 3);
}

#[tokio::test]
async fn the_edges_hold_at_todays_clock_values() {
    // Redis's TIME in ms is a 13-digit number: Lua's numbers (doubles, printed with %.14g
    // where a script builds a string) must keep it exact.
    let Some(mut f) = fixture().await else { return };
    let l = Lim {
        rate: 2,
        window: 60 * SEC,
        daily: 3,
        ..OFF
    };
    let t0: i64 = 1_796_000_000_123;
    assert_eq!(f.acquire("a", 1, l, t0).await.0, 0);
    assert_eq!(f.acquire("b", 1, l, t0 + 1).await.0, 0);
    assert_eq!(f.acquire("c", 1, l, t0 + 60 * SEC - 1).await, (1, 1));
    assert_eq!(f.acquire("c", 1, l, t0 + 60 * SEC).await.0, 0);
    assert_eq!(
        f.acquire("d", 1, l, t0 + 61 * SEC).await,
        (1, DAY - 61 * SEC),
        "3 recipients used: frees when a's leaves the day"
    );
    let mut inv = scripts::QUOTA.prepare_invoke();
    inv.key(&f.keys.daily)
        .key(&f.keys.quota_hold)
        .arg(DAY)
        .arg(3600 * SEC)
        .arg(900 * SEC)
        .arg(t0 + 62 * SEC);
    let held: i64 = inv.invoke_async(&mut f.con).await.unwrap();
    assert_eq!(
        held,
        DAY - 62 * SEC,
        "the oldest of the day is found at this size too"
    );
}

#[tokio::test]
async fn a_finished_send_counts_from_its_end_and_a_refund_gives_everything_back() {
    let Some(mut f) = fixture().await else { return };
    let l = Lim {
        rate: 1,
        window: 1000,
        daily: 100,
        sessions: 1,
        ..OFF
    };
    let t0 = 5_000_000;
    assert_eq!(f.acquire("a", 10, l, t0).await.0, 0);
    assert_eq!(
        f.acquire("b", 1, l, t0 + 1).await,
        (1, 999),
        "rate: counted from its start while it runs"
    );
    f.release("a", l, t0 + 400).await;
    assert_eq!(
        f.acquire("b", 1, l, t0 + 1000).await,
        (1, 400),
        "moved to its end: frees at t0+400+1000"
    );
    assert_eq!(
        f.acquire("b", 1, l, t0 + 1400).await.0,
        0,
        "and not a ms later"
    );
    let total: i64 = f.cmd(&["GET", &f.keys.daily_total.clone()]).await;
    assert_eq!(total, 11);
    // b never reached Exchange: its lease, window entry and recipient go back.
    f.refund("b", 1).await;
    let (sessions, rate, total): (i64, i64, i64) = (
        f.cmd(&["ZCARD", &f.keys.sessions.clone()]).await,
        f.cmd(&["ZCARD", &f.keys.rate.clone()]).await,
        f.cmd(&["GET", &f.keys.daily_total.clone()]).await,
    );
    // a left the window at t0+1400 (when b was let through); b's own entry went back.
    assert_eq!(
        (sessions, rate, total),
        (0, 0, 10),
        "only a's recipients stay"
    );
    // A second refund of the same send changes nothing.
    f.refund("b", 1).await;
    let total: i64 = f.cmd(&["GET", &f.keys.daily_total.clone()]).await;
    assert_eq!(total, 10);
}

#[tokio::test]
async fn the_daily_budget_rolls_over_24_hours() {
    let Some(mut f) = fixture().await else { return };
    let l = Lim { daily: 10, ..OFF };
    let t0 = 10_000_000;
    assert_eq!(f.acquire("a", 6, l, t0).await.0, 0);
    assert_eq!(
        f.acquire("b", 4, l, t0 + SEC).await.0,
        0,
        "exactly the budget"
    );
    assert_eq!(
        f.acquire("c", 1, l, t0 + 2 * SEC).await,
        (1, DAY - 2 * SEC),
        "full: frees when a's 6 leave"
    );
    assert_eq!(
        f.acquire("c", 5, l, t0 + DAY).await.0,
        0,
        "a left at its 24 h edge"
    );
    assert_eq!(
        f.acquire("d", 2, l, t0 + DAY + 1).await,
        (1, SEC - 1),
        "b's 4 leave next"
    );
    // A batch bigger than the whole budget goes when the day is empty, not never.
    f.keys = Keys::new("test", "tenant", "other@example.com");
    assert_eq!(f.acquire("big", 25, l, t0).await.0, 0);
    assert_eq!(f.acquire("one", 1, l, t0 + 1).await, (1, DAY - 1));
    // ... and only then: with some of the day used, it waits for the day to empty.
    f.keys = Keys::new("test", "tenant", "third@example.com");
    assert_eq!(f.acquire("small", 5, l, t0).await.0, 0);
    assert_eq!(f.acquire("huge", 25, l, t0 + 1).await, (1, DAY - 1));
}

#[tokio::test]
async fn a_crashed_replicas_lease_expires_and_a_renewed_one_stays() {
    let Some(mut f) = fixture().await else { return };
    let l = Lim {
        sessions: 2,
        lease: 5 * SEC,
        ..OFF
    };
    let t0 = 20_000_000;
    assert_eq!(f.acquire("live", 1, l, t0).await.0, 0);
    assert_eq!(f.acquire("crashed", 1, l, t0).await.0, 0);
    assert_eq!(
        f.acquire("x", 1, l, t0 + 1).await,
        (2, 0),
        "both slots leased"
    );
    // "live" is renewed while its session runs; "crashed" never is again.
    assert_eq!(f.renew(l.lease, t0 + 4 * SEC, &["live"]).await, 0);
    assert_eq!(f.acquire("x", 1, l, t0 + 5 * SEC - 1).await, (2, 0));
    assert_eq!(
        f.acquire("x", 1, l, t0 + 5 * SEC).await.0,
        0,
        "the crashed replica's slot is free at its lease's end"
    );
    assert_eq!(
        f.acquire("y", 1, l, t0 + 6 * SEC).await,
        (2, 0),
        "the renewed lease still holds"
    );
    f.release("x", l, t0 + 6 * SEC).await;
    assert_eq!(
        f.acquire("y", 1, l, t0 + 6 * SEC).await.0,
        0,
        "a released slot is free at once"
    );
    // Leases Redis dropped (they expired while the replica could not renew them; the next
    // acquisition cleared them) are put back: those sessions are still open.
    assert_eq!(f.acquire("z", 1, l, t0 + 20 * SEC).await.0, 0);
    assert_eq!(f.renew(l.lease, t0 + 20 * SEC, &["live", "y"]).await, 2);
    let leased: i64 = f.cmd(&["ZCARD", &f.keys.sessions.clone()]).await;
    assert_eq!(leased, 3);
}

#[tokio::test]
async fn holds_are_shared_and_a_quota_hold_stops_every_acquisition() {
    let Some(mut f) = fixture().await else { return };
    let l = Lim { daily: 100, ..OFF };
    let t0 = 30_000_000;
    assert_eq!(f.acquire("a", 3, l, t0).await.0, 0);
    let mut inv = scripts::QUOTA.prepare_invoke();
    inv.key(&f.keys.daily)
        .key(&f.keys.quota_hold)
        .arg(DAY)
        .arg(3600 * SEC)
        .arg(900 * SEC)
        .arg(t0 + SEC);
    let held_ms: i64 = inv.invoke_async(&mut f.con).await.expect("quota runs");
    assert_eq!(
        held_ms,
        DAY - SEC,
        "until the oldest recipients leave the day"
    );
    let (code, ms) = f.acquire("b", 1, l, t0 + 2 * SEC).await;
    assert_eq!((code, ms), (3, DAY - 2 * SEC), "held for every replica");

    // The configuration hold: set by one replica, read by another, lifted by a delivery or,
    // for a token hold, by a working token.
    let hold = f.keys.hold.clone();
    let call = |args: Vec<String>| {
        let mut inv = scripts::HOLD.prepare_invoke();
        inv.key(&hold);
        for a in args {
            inv.arg(a);
        }
        inv
    };
    let inv = call(vec![
        "set".into(),
        "1:fix the client secret".into(),
        "60000".into(),
    ]);
    let _: i64 = inv.invoke_async(&mut f.con).await.unwrap();
    let got: Option<(String, i64)> = call(vec!["get".into()])
        .invoke_async(&mut f.con)
        .await
        .unwrap();
    let (value, ms) = got.expect("a hold");
    assert_eq!(value, "1:fix the client secret");
    assert!(ms > 0 && ms <= 60_000, "{ms}");
    let inv = call(vec![
        "set".into(),
        "0:enable SMTP AUTH".into(),
        "60000".into(),
    ]);
    let _: i64 = inv.invoke_async(&mut f.con).await.unwrap();
    let lifted: i64 = call(vec!["lift".into(), "1".into()])
        .invoke_async(&mut f.con)
        .await
        .unwrap();
    assert_eq!(lifted, 0, "a working token does not lift Exchange's hold");
    let lifted: i64 = call(vec!["lift".into(), "0".into()])
        .invoke_async(&mut f.con)
        .await
        .unwrap();
    assert_eq!(lifted, 1, "a delivery does");
    let got: Option<(String, i64)> = call(vec!["get".into()])
        .invoke_async(&mut f.con)
        .await
        .unwrap();
    assert_eq!(got, None);
}

#[tokio::test]
async fn sends_made_in_fallback_are_recorded_once_where_they_happened() {
    let Some(mut f) = fixture().await else { return };
    let l = Lim {
        rate: 3,
        window: 1000,
        daily: 10,
        ..OFF
    };
    let now = 40_000_000;
    let backfill = |f: &Fixture| {
        let mut inv = scripts::BACKFILL.prepare_invoke();
        inv.key(&f.keys.rate)
            .key(&f.keys.daily)
            .key(&f.keys.daily_total)
            .arg(l.window)
            .arg(DAY)
            .arg(now);
        // Finished 200 ms ago (4 recipients); still running, started 300 ms ago (2); finished
        // 5 s ago, outside the window (3).
        for (id, finished, started, n) in [
            ("f1", 200, 250, 4),
            ("r1", -1, 300, 2),
            ("old", 5000, 5100, 3),
        ] {
            inv.arg(id).arg(finished).arg(started).arg(n);
        }
        inv
    };
    let added: i64 = backfill(&f).invoke_async(&mut f.con).await.unwrap();
    assert_eq!(
        added, 1,
        "only f1 is inside the rate window; r1 counts when it ends"
    );
    let again: i64 = backfill(&f).invoke_async(&mut f.con).await.unwrap();
    assert_eq!(again, 0, "recorded once");
    let total: i64 = f.cmd(&["GET", &f.keys.daily_total.clone()]).await;
    assert_eq!(total, 9, "every recipient of the day, once");
    assert_eq!(
        f.acquire("n", 1, l, now).await.0,
        0,
        "one recipient left of 10"
    );
    assert_eq!(
        f.acquire("m", 1, l, now + 1).await,
        (1, DAY - 5100 - 1),
        "the day is full: frees when 'old' leaves"
    );
}

#[tokio::test]
async fn every_key_expires() {
    let Some(mut f) = fixture().await else { return };
    let l = Lim {
        rate: 5,
        window: 1000,
        daily: 100,
        sessions: 3,
        lease: 5000,
    };
    // Redis's own clock this time, as the relay runs it (an empty time argument).
    let mut inv = scripts::ACQUIRE.prepare_invoke();
    inv.key(&f.keys.rate)
        .key(&f.keys.daily)
        .key(&f.keys.daily_total)
        .key(&f.keys.sessions)
        .key(&f.keys.quota_hold)
        .arg("a")
        .arg(2)
        .arg(l.rate)
        .arg(l.window)
        .arg(l.daily)
        .arg(l.sessions)
        .arg(l.lease)
        .arg(DAY)
        .arg("");
    let (code, _): (i64, i64) = inv.invoke_async(&mut f.con).await.unwrap();
    assert_eq!(code, 0);
    let mut inv = scripts::QUOTA.prepare_invoke();
    inv.key(&f.keys.daily)
        .key(&f.keys.quota_hold)
        .arg(DAY)
        .arg(3600 * SEC)
        .arg(900 * SEC)
        .arg("");
    let _: i64 = inv.invoke_async(&mut f.con).await.unwrap();
    let mut inv = scripts::HOLD.prepare_invoke();
    inv.key(&f.keys.hold).arg("set").arg("0:advice").arg(60_000);
    let _: i64 = inv.invoke_async(&mut f.con).await.unwrap();
    for key in [
        f.keys.rate.clone(),
        f.keys.daily.clone(),
        f.keys.daily_total.clone(),
        f.keys.sessions.clone(),
        f.keys.quota_hold.clone(),
        f.keys.hold.clone(),
    ] {
        let ttl: i64 = f.cmd(&["PTTL", &key]).await;
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }
    let keys: Vec<String> = f.cmd(&["KEYS", "*"]).await;
    assert!(
        keys.iter()
            .all(|k| k.starts_with("test:{tenant/box@example.com}:")),
        "every key carries the prefix and the mailbox: {keys:?}"
    );
}

/// A call that times out after Redis ran the script (Redis paused, then resumed): the relay
/// falls back and sends under its share, and when Redis answers again it gives back what the
/// lost answer had granted and records its fallback send, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_acquisition_is_given_back_and_the_fallback_send_recorded() {
    use smtp_oauth_relay::governor::shared::DEFAULT_PREFIX;

    if !redis_server::available() {
        return;
    }
    let server = redis_server::RedisServer::start();
    let limits = Limits {
        max_connections: 2,
        daily_recipients: 100,
        ..Limits::unlimited()
    };
    let keys = Keys::new(DEFAULT_PREFIX, "tenant", "box@example.com");
    let stop = tokio_util::sync::CancellationToken::new();
    let g = replica(
        &server,
        &limits,
        Duration::from_secs(30),
        Duration::from_millis(100),
        &stop,
    );
    let mut con = server.connect().await;
    // Warm up (connection, script cache), then start from nothing.
    drop(g.acquire(1).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();

    // Redis holds every command for 600 ms: the acquisition's script runs only afterwards.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(600)
        .arg("ALL")
        .query_async(&mut con)
        .await
        .unwrap();
    let permit = tokio::time::timeout(Duration::from_secs(2), g.acquire(5))
        .await
        .expect("a permit under the fallback share, not a wait");
    drop(permit);

    // Redis answers again; within a few seconds the lease it granted is gone, and the day
    // counts the one send that happened (5 recipients), not the abandoned one as well.
    let mut state = (i64::MAX, None);
    for _ in 0..100 {
        // While Redis is paused, this client's own questions time out too: ask again.
        let leases: Result<i64, _> = redis::cmd("ZCARD")
            .arg(&keys.sessions)
            .query_async(&mut con)
            .await;
        let total: Result<Option<i64>, _> = redis::cmd("GET")
            .arg(&keys.daily_total)
            .query_async(&mut con)
            .await;
        if let (Ok(leases), Ok(total)) = (leases, total) {
            state = (leases, total);
        }
        if state == (0, Some(5)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    assert_eq!(state, (0, Some(5)), "(leases, recipients of the day)");
}

/// The governor itself over a real Redis: an acquisition cancelled while its question is on
/// the wire (a client's wait ran out) must not leave a lease behind, or the mailbox would be
/// a session short for a whole lease time.
#[tokio::test]
async fn a_cancelled_acquisition_leaves_no_lease_behind() {
    use smtp_oauth_relay::governor::shared::DEFAULT_PREFIX;

    if !redis_server::available() {
        return;
    }
    let server = redis_server::RedisServer::start();
    let limits = Limits {
        max_connections: 1,
        ..Limits::unlimited()
    };
    let keys = Keys::new(DEFAULT_PREFIX, "tenant", "box@example.com");
    let stop = tokio_util::sync::CancellationToken::new();
    let g = replica(
        &server,
        &limits,
        Duration::from_secs(30),
        Duration::from_secs(2),
        &stop,
    );
    let mut con = server.connect().await;
    let leases = |mut con: MultiplexedConnection| {
        let key = keys.sessions.clone();
        async move {
            let n: i64 = redis::cmd("ZCARD")
                .arg(key)
                .query_async(&mut con)
                .await
                .unwrap();
            n
        }
    };
    // Warm the connection and the script cache: one permit, taken and given back.
    drop(g.acquire(1).await);
    for _ in 0..50 {
        if leases(con.clone()).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        leases(con.clone()).await,
        0,
        "a released permit's lease is gone"
    );

    let mut cancelled_mid_call = 0;
    for _ in 0..20 {
        // Polled once: it asks Redis, then the zero timeout cancels it before the answer.
        if tokio::time::timeout(Duration::ZERO, g.acquire(1))
            .await
            .is_err()
        {
            cancelled_mid_call += 1;
        }
    }
    assert!(
        cancelled_mid_call > 0,
        "no acquisition was cancelled mid-call"
    );
    let mut left = i64::MAX;
    for _ in 0..100 {
        left = leases(con.clone()).await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(left, 0, "cancelled acquisitions left leases behind");
    // And the slot is really free: the next permit comes at once.
    let permit = tokio::time::timeout(Duration::from_secs(2), g.acquire(1))
        .await
        .expect("the one session slot is free");
    drop(permit);
    let _ = &mut con;
}

/// A send that outlasts its lease keeps its session slot (the governor renews the lease while
/// the permit lives); another replica gets the slot as soon as the send ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_send_keeps_its_slot_past_the_lease_time() {
    use std::time::Instant;

    if !redis_server::available() {
        return;
    }
    let server = redis_server::RedisServer::start();
    let lease = Duration::from_secs(3);
    let limits = Limits {
        max_connections: 1,
        ..Limits::unlimited()
    };
    let stop = tokio_util::sync::CancellationToken::new();
    // Two replicas of one mailbox, each with its own connection and upkeep.
    let one = || replica(&server, &limits, lease, Duration::from_secs(1), &stop);
    let (a, b) = (one(), one());
    let long_send = a.acquire(1).await;
    let waited = tokio::time::timeout(lease + Duration::from_millis(1500), b.acquire(1)).await;
    assert!(
        waited.is_err(),
        "the other replica got the slot while the long send still ran"
    );
    let ended = Instant::now();
    drop(long_send);
    let permit = tokio::time::timeout(Duration::from_secs(2), b.acquire(1))
        .await
        .expect("the slot frees when the send ends");
    eprintln!(
        "slot passed to the other replica {:?} after the send ended",
        ended.elapsed()
    );
    drop(permit);
    stop.cancel();
}
