//! A fleet of relay processes sharing one mailbox's limits through one Redis (issue 15),
//! against one sandbox that enforces Exchange's limits: 3 sessions per mailbox (`432 4.3.2`
//! beyond) and a message rate per rolling window (scaled down to 10 per second here, on both
//! sides). The control shows the same fleet without sharing breaks those limits, so the checks
//! can fail; the fallback test stops Redis mid-run and starts it again.

mod support;
#[path = "support/child.rs"]
mod child;
#[path = "support/redis.rs"]
mod redis_server;
#[path = "support/tools.rs"]
mod tools;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use child::{free_addr, RelayChild};
use redis_server::RedisServer;
use smtp_oauth_relay::governor::shared::Keys;
use support::{http_get, metric, relay_binary, RawClient, World, MAILBOX};
use tempfile::TempDir;

/// Messages per window, at the sandbox and at the relays.
const RATE: usize = 10;
const WINDOW: Duration = Duration::from_secs(1);
const SESSIONS: u32 = 3;
const SHARED: &str = "SMTP_OAUTH_RELAY_GOVERNOR_SHARED";

struct Relay {
    child: RelayChild,
    smtp: SocketAddr,
    admin: SocketAddr,
}

struct Fleet {
    relays: Vec<Relay>,
    _work: TempDir,
}

impl Fleet {
    /// `n` relay processes on the sandbox, each with its own spool, with `extra` settings
    /// (the Redis URL among them, for a shared fleet).
    async fn start(world: &World, n: usize, extra: &[(&str, &str)]) -> Fleet {
        let work = tempfile::tempdir().expect("tempdir");
        let mut relays = Vec::new();
        for i in 0..n {
            let (smtp, admin) = (free_addr(), free_addr());
            let mut env = world.env();
            let spool = work.path().join(format!("spool-{i}"));
            let mut set = |k: &str, v: String| {
                env.retain(|(name, _)| name != k);
                env.push((k.to_string(), v));
            };
            set("SMTP_OAUTH_RELAY_LISTEN", smtp.to_string());
            set("SMTP_OAUTH_RELAY_ADMIN_LISTEN", admin.to_string());
            set("SMTP_OAUTH_RELAY_SPOOL_DIR", spool.display().to_string());
            set("SMTP_OAUTH_RELAY_RATE_PER_MINUTE", RATE.to_string());
            set(
                "SMTP_OAUTH_RELAY__GOVERNOR__RATE_WINDOW_SECS",
                WINDOW.as_secs().to_string(),
            );
            set("SMTP_OAUTH_RELAY_MAX_CONNECTIONS", SESSIONS.to_string());
            set("SMTP_OAUTH_RELAY_GOVERNOR_EXPECTED_REPLICAS", n.to_string());
            for (k, v) in extra {
                set(k, v.to_string());
            }
            let log = work.path().join(format!("relay-{i}.stderr"));
            let mut child = RelayChild::spawn(relay_binary(), &[], &env, work.path(), &log);
            child.wait_ready(smtp, Duration::from_secs(30)).await;
            relays.push(Relay { child, smtp, admin });
        }
        Fleet {
            relays,
            _work: work,
        }
    }

    /// `clients` clients, spread over the relays, send `total` messages between them; every
    /// one must be accepted (`250`).
    async fn send(&self, clients: usize, total: usize, tag: &str) {
        let mut tasks = Vec::new();
        for c in 0..clients {
            let addr = self.relays[c % self.relays.len()].smtp;
            let mine: Vec<usize> = (c..total).step_by(clients).collect();
            let tag = tag.to_string();
            tasks.push(tokio::spawn(async move {
                let mut client = RawClient::connect(addr).await;
                client.cmd("EHLO fleet.test", 250).await;
                for m in mine {
                    let body = format!("Subject: {tag} {m}\r\n\r\nmessage {m}\r\n");
                    let reply = client
                        .send_mail(MAILBOX, &["someone@example.com"], body.as_bytes())
                        .await;
                    assert!(reply.starts_with("250"), "{tag} {m}: {reply}");
                }
                client.cmd("QUIT", 221).await;
            }));
        }
        for t in tasks {
            t.await.expect("client task");
        }
    }

    fn stderr(&self) -> String {
        self.relays
            .iter()
            .map(|r| r.child.stderr())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The most `MAIL FROM`s the sandbox accepted inside any window of length `WINDOW`.
fn busiest_window(world: &World) -> usize {
    let mut times = world.sandbox.message_times(MAILBOX);
    times.sort();
    (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|&&t| t < times[i] + WINDOW)
                .count()
        })
        .max()
        .unwrap_or(0)
}

async fn world() -> World {
    World::start_with(|o| {
        o.max_connections_per_mailbox = SESSIONS;
        o.rate_limit = RATE as u32;
        o.rate_window = WINDOW;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_relays_sharing_redis_stay_inside_the_mailbox_limits() {
    if !redis_server::available() {
        return;
    }
    let redis = RedisServer::start();
    let world = world().await;
    let fleet = Fleet::start(&world, 3, &[(SHARED, &redis.url())]).await;
    let started = Instant::now();
    fleet.send(20, 120, "fleet").await;
    let got = world
        .sandbox
        .wait_for_messages(120, Duration::from_secs(120))
        .await;
    let took = started.elapsed();
    assert_eq!(
        got.len(),
        120,
        "every message delivered; stderr:\n{}",
        fleet.stderr()
    );
    // Nothing twice: a moment later there are still exactly 120.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(world.sandbox.message_count(), 120);
    let (peak, rejected, over_rate, busiest) = (
        world.sandbox.peak_sessions(MAILBOX),
        world.sandbox.concurrency_rejections(),
        world.sandbox.rate_violations(),
        busiest_window(&world),
    );
    eprintln!(
        "fleet: 120 messages in {took:?}; peak sessions {peak}, 432s {rejected}, rate refusals {over_rate}, busiest {WINDOW:?} window {busiest}"
    );
    assert!(peak <= SESSIONS, "{peak} sessions at once");
    assert_eq!(rejected, 0, "no 432 4.3.2");
    assert_eq!(over_rate, 0, "the sandbox never refused for rate");
    assert!(busiest <= RATE, "{busiest} messages in one window");
    assert!(!fleet.stderr().contains("432 4.3.2"), "no relay saw a 432");
    // 120 messages at 10 per second cannot take less than 11 windows.
    assert!(took >= WINDOW * 11, "too fast for the rate: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_the_same_fleet_without_sharing_breaks_the_limits() {
    let world = world().await;
    let fleet = Fleet::start(&world, 3, &[]).await;
    fleet.send(20, 60, "alone").await;
    // Each relay keeps the whole limits alone: 3 x 3 sessions, 3 x 10 per second.
    let broke = support::eventually(Duration::from_secs(30), || {
        world.sandbox.peak_sessions(MAILBOX) > SESSIONS
            || world.sandbox.concurrency_rejections() > 0
            || world.sandbox.rate_violations() > 0
    })
    .await;
    eprintln!(
        "control: peak sessions {}, 432s {}, rate refusals {}, busiest window {}",
        world.sandbox.peak_sessions(MAILBOX),
        world.sandbox.concurrency_rejections(),
        world.sandbox.rate_violations(),
        busiest_window(&world)
    );
    assert!(
        broke,
        "three unshared relays stayed inside one mailbox's limits: the fleet test could not fail"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_stopped_mid_run_means_local_shares_and_redis_back_means_shared_limits() {
    if !redis_server::available() {
        return;
    }
    let mut redis = RedisServer::start();
    let world = world().await;
    let fleet = Fleet::start(&world, 2, &[(SHARED, &redis.url())]).await;
    let admin = fleet.relays[0].admin;

    fleet.send(4, 10, "before").await;
    world.wait_for(10).await;

    redis.stop();
    // Mail is accepted and delivered while Redis is away.
    fleet.send(4, 20, "during").await;
    // Each relay notices within its next call (a second at most, with nothing to send).
    let warned = support::eventually(Duration::from_secs(15), || {
        let (status, body) = blocking_get(admin, "/readyz");
        status == 200 && body.contains("governor: Redis")
    })
    .await;
    assert!(
        warned,
        "/readyz warns (and stays ready) while Redis is away"
    );
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(
        metric(&metrics, "smtp_oauth_relay_governor_shared_fallback"),
        Some(1.0)
    );
    let got = world
        .sandbox
        .wait_for_messages(30, Duration::from_secs(60))
        .await;
    assert_eq!(got.len(), 30, "stderr:\n{}", fleet.stderr());
    assert!(
        fleet.stderr().contains("Redis cannot be used"),
        "the fallback is logged"
    );

    redis.restart();
    let back = support::eventually(Duration::from_secs(15), || {
        let (_, body) = blocking_get(admin, "/readyz");
        !body.contains("governor: Redis")
    })
    .await;
    assert!(back, "the warning goes when Redis answers again");
    fleet.send(4, 10, "after").await;
    let got = world
        .sandbox
        .wait_for_messages(40, Duration::from_secs(60))
        .await;
    assert_eq!(got.len(), 40, "stderr:\n{}", fleet.stderr());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(world.sandbox.message_count(), 40, "nothing twice");
    assert!(fleet.stderr().contains("Redis answers again"));

    // The restarted Redis kept nothing (no persistence): what it counts now is the 20 sends
    // made while it was away, recorded by the relays when it came back, and the 10 after.
    let mut con = redis.connect().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let counted = loop {
        let n = day_count(&mut con, &world).await;
        if n == Some(30) || Instant::now() >= deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(counted, Some(30), "the shared daily count");

    let (peak, rejected, over_rate, busiest) = (
        world.sandbox.peak_sessions(MAILBOX),
        world.sandbox.concurrency_rejections(),
        world.sandbox.rate_violations(),
        busiest_window(&world),
    );
    eprintln!("fallback: peak sessions {peak}, 432s {rejected}, rate refusals {over_rate}, busiest window {busiest}");
    assert!(peak <= SESSIONS);
    assert_eq!((rejected, over_rate), (0, 0));
    assert!(busiest <= RATE, "{busiest} in one window");
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(
        metric(&metrics, "smtp_oauth_relay_governor_shared_fallback"),
        Some(0.0)
    );
    assert!(
        metric(&metrics, "smtp_oauth_relay_governor_shared_fallbacks_total").unwrap_or(0.0) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_redis_password_comes_from_a_file_and_never_shows() {
    if !redis_server::available() {
        return;
    }
    const PASSWORD: &str = "pw-from-file-8c1e";
    const WRONG: &str = "wrong-in-url-5d2a";
    let redis = RedisServer::start_with(&["--requirepass", PASSWORD]);
    let world = world().await;
    let file = world.dir.path().join("redis-password");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    let file = file.display().to_string();
    let good = Fleet::start(
        &world,
        1,
        &[
            (SHARED, &redis.url()),
            ("SMTP_OAUTH_RELAY_GOVERNOR_SHARED_PASSWORD_FILE", &file),
        ],
    )
    .await;
    good.send(1, 3, "password").await;
    world.wait_for(3).await;
    // The relay authenticated: its sends are counted in Redis.
    let mut con = redis::Client::open(format!("redis://:{PASSWORD}@{}/0", redis.addr))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let counted = day_count(&mut con, &world).await;
    assert_eq!(counted, Some(3), "stderr:\n{}", good.stderr());

    // A wrong password (in the URL): Redis refuses, the relay keeps its share and delivers.
    let url = format!("redis://:{WRONG}@{}/0", redis.addr);
    let bad = Fleet::start(&world, 1, &[(SHARED, &url)]).await;
    bad.send(1, 2, "wrong").await;
    world.wait_for(5).await;
    let err = bad.stderr();
    assert!(err.contains("Redis cannot be used"), "{err}");
    for log in [good.stderr(), err] {
        assert!(
            !log.contains(PASSWORD) && !log.contains(WRONG),
            "a password in the log:\n{log}"
        );
        assert!(
            log.contains("***@") || log.contains("redis://127.0.0.1"),
            "{log}"
        );
    }
    let (_, ready) = http_get(bad.relays[0].admin, "/readyz").await;
    assert!(!ready.contains(WRONG), "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_configuration_hold_found_by_one_replica_holds_them_all() {
    if !redis_server::available() {
        return;
    }
    let redis = RedisServer::start();
    let world = World::start_with(|o| o.smtp_auth_disabled = vec![MAILBOX.into()]).await;
    let fleet = Fleet::start(&world, 2, &[(SHARED, &redis.url())]).await;
    let (first, second) = (&fleet.relays[0], &fleet.relays[1]);

    // The first relay meets the mistake (SMTP AUTH off for the mailbox) and holds.
    let mut c = RawClient::connect(first.smtp).await;
    c.cmd("EHLO fleet.test", 250).await;
    let reply = c
        .send_mail(
            MAILBOX,
            &["someone@example.com"],
            b"Subject: one\r\n\r\nx\r\n",
        )
        .await;
    assert!(reply.starts_with("451"), "{reply}");
    let attempts = world.sandbox.auth_attempts();
    assert!(attempts >= 1);

    // The second one learns it from Redis: not ready, and new mail refused with the same
    // advice, without an attempt of its own.
    let held = support::eventually(Duration::from_secs(10), || {
        let (status, body) = blocking_get(second.admin, "/readyz");
        status == 503 && body.contains("SMTP AUTH")
    })
    .await;
    assert!(
        held,
        "the second relay shows the shared hold; stderr:\n{}",
        fleet.stderr()
    );
    let mut c = RawClient::connect(second.smtp).await;
    c.cmd("EHLO fleet.test", 250).await;
    let reply = c
        .send_mail(
            MAILBOX,
            &["someone@example.com"],
            b"Subject: two\r\n\r\nx\r\n",
        )
        .await;
    assert!(
        reply.starts_with("451") && reply.contains("SMTP AUTH"),
        "{reply}"
    );
    assert_eq!(
        world.sandbox.auth_attempts(),
        attempts,
        "the second relay did not rediscover the mistake"
    );
    assert!(second
        .child
        .stderr()
        .contains("reported by a replica sharing this mailbox"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_limits_are_shared_over_tls_with_a_private_ca() {
    if !redis_server::available() {
        return;
    }
    let redis = RedisServer::start_tls();
    let ca_pem = redis.tls_ca.clone().expect("TLS");
    let world = world().await;
    let ca = world.dir.path().join("redis-ca.pem");
    std::fs::write(&ca, &ca_pem).unwrap();
    let url = format!("rediss://{}/0", redis.addr);
    let ca = ca.display().to_string();
    let fleet = Fleet::start(
        &world,
        1,
        &[
            (SHARED, &url),
            ("SMTP_OAUTH_RELAY__GOVERNOR__SHARED_CA_FILE", &ca),
        ],
    )
    .await;
    fleet.send(1, 3, "tls").await;
    world.wait_for(3).await;
    let client = redis::Client::build_with_tls(
        url.as_str(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca_pem.into_bytes()),
        },
    )
    .unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let counted = day_count(&mut con, &world).await;
    assert_eq!(
        counted,
        Some(3),
        "counted over TLS; stderr:\n{}",
        fleet.stderr()
    );
    assert!(
        !fleet.stderr().contains("Redis cannot be used"),
        "{}",
        fleet.stderr()
    );
}

/// The mailbox's recipients of the day as Redis counts them.
async fn day_count(con: &mut redis::aio::MultiplexedConnection, world: &World) -> Option<i64> {
    let keys = Keys::new("smtp-oauth-relay", &world.sandbox.options().tenant, MAILBOX);
    redis::cmd("GET")
        .arg(&keys.daily_total)
        .query_async(con)
        .await
        .unwrap()
}

/// `http_get` from a synchronous condition (`eventually` takes a closure).
fn blocking_get(addr: SocketAddr, path: &str) -> (u16, String) {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(http_get(addr, path)))
}
