//! End-to-end throughput and memory (issue 6). Run: `cargo bench --bench e2e` (release).
//!
//! One run, in this order, all on loopback:
//! - `ceiling`: `loadgen` -> the sandbox directly (STARTTLS + AUTH XOAUTH2, limits off). The
//!   most this machine, this load generator and this Exchange stand-in can do together.
//! - `direct`, `hybrid`, `queue`: `loadgen` -> the relay (a child process, the release binary)
//!   -> the sandbox, in each delivery mode.
//! - `postfix` (issue 14), when Postfix is installed (Debian package `postfix`, run as root):
//!   `loadgen` -> a throwaway Postfix (`support/postfix.rs`: its own config, queue and data
//!   directories in a temporary directory, never the system's) -> a do-nothing SMTP sink in
//!   this process, with the same messages, clients and size as queue mode. The summary gives
//!   queue mode's messages/s over Postfix's, each round's pair compared. Skipped, with a line
//!   saying why, when Postfix is missing or does not start.
//! - `memory`: a fresh relay's peak RSS relaying one 10 KB message, then one 30 MB message
//!   (the growth must stay under 10 MB: bodies stream through disk), and its RSS with 1,000
//!   idle connections (each greeted and past EHLO).
//!
//! Every scenario reports messages/s and its ratio to the ceiling, MB/s, latency per
//! transaction (p50/p90/p99/max, and the p99 added to the ceiling's), errors, and for the
//! relay its peak RSS (`VmHWM`) and CPU seconds (user + system, from `/proc/<pid>/stat`) per
//! 1,000 messages. Queue mode's CPU and "all delivered" time include draining the queue; so do
//! Postfix's (its master's process group, from `/proc`, until the sink has every message).
//!
//! The sandbox and the load generator run in this process on two tokio runtimes of two
//! workers each; the relay is its own process, as in production. The sandbox's mail store is
//! on `/dev/shm` (Exchange's disks are not ours); the relay's spool on the system temporary
//! directory, since its fsyncs are part of what is measured.
//!
//! Each scenario runs `BENCH_ROUNDS` times (default 3), interleaved round by round; the
//! summary shows each scenario's median round and the ratio of medians.
//!
//! Environment: `BENCH_MESSAGES` (5000), `BENCH_CONCURRENCY` (50), `BENCH_SIZE` (5k; any
//! `loadgen --size` spec), `BENCH_SCENARIOS` (comma list, default all),
//! `BENCH_MAX_CONNECTIONS` (the relay's upstream sessions, default 50), `BENCH_JSON` (also
//! write the results there), `BENCH_SPOOL_DIR`, `BENCH_STORE_DIR` (/dev/shm).

#[path = "support/postfix.rs"]
mod postfix;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use smtp_oauth_relay::cli::loadgen::{self, parse_size_spec, Auth, Options, Report, Tls};
use smtp_oauth_relay::sandbox::{Sandbox, SandboxOptions};
use smtp_oauth_relay::token::{ClientSecretSettings, ClientSecretSource, TokenSource};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

const MAILBOX: &str = "relay@sandbox.example";
const ALL: &[&str] = &["ceiling", "direct", "hybrid", "queue", "postfix", "memory"];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn tempdir_in(var: &str, fallback: Option<&str>, what: &str) -> tempfile::TempDir {
    let parent = std::env::var(var).ok().or(fallback.map(str::to_string));
    match parent.filter(|p| Path::new(p).is_dir()) {
        Some(p) => tempfile::Builder::new().prefix(what).tempdir_in(p),
        None => tempfile::Builder::new().prefix(what).tempdir(),
    }
    .expect("temporary directory")
}

/// `/proc/<pid>` readings of the relay.
struct Proc(u32);

impl Proc {
    fn status_kb(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.0)).unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
    fn peak_rss_mb(&self) -> f64 {
        self.status_kb("VmHWM:") as f64 / 1024.0
    }
    fn rss_mb(&self) -> f64 {
        self.status_kb("VmRSS:") as f64 / 1024.0
    }
    /// User + system CPU seconds so far.
    fn cpu_secs(&self) -> f64 {
        let text = std::fs::read_to_string(format!("/proc/{}/stat", self.0)).unwrap_or_default();
        // Fields after the command name (which is in parentheses and may contain spaces).
        let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        ticks as f64 / 100.0 // USER_HZ is 100 on Linux
    }
}

/// The relay as a child process, stopped with SIGTERM when dropped.
struct RelayProcess {
    child: Child,
    listen: SocketAddr,
    _spool: tempfile::TempDir,
    log: PathBuf,
}

impl RelayProcess {
    fn start(bench: &Bench, mode: &str) -> RelayProcess {
        let spool = tempdir_in("BENCH_SPOOL_DIR", None, "relay-spool-");
        let listen = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let o = bench.sandbox.options();
        let log = spool.path().join("relay.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_smtp-oauth-relay"));
        cmd.arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SMTP_OAUTH_RELAY_") {
                cmd.env_remove(name);
            }
        }
        let upstream = format!("localhost:{}", bench.sandbox.smtp_addr().port());
        for (k, v) in [
            ("SMTP_OAUTH_RELAY_LISTEN", listen.to_string()),
            ("SMTP_OAUTH_RELAY_ADMIN_LISTEN", "off".into()),
            ("SMTP_OAUTH_RELAY_TENANT", o.tenant.clone()),
            ("SMTP_OAUTH_RELAY_CLIENT_ID", o.client_id.clone()),
            (
                "SMTP_OAUTH_RELAY_CLIENT_SECRET",
                o.client_secret.expose_secret().to_string(),
            ),
            ("SMTP_OAUTH_RELAY_MAILBOX", MAILBOX.into()),
            ("SMTP_OAUTH_RELAY_AUTHORITY", bench.sandbox.authority()),
            ("SMTP_OAUTH_RELAY_UPSTREAM", upstream),
            (
                "SMTP_OAUTH_RELAY_EXTRA_CA_FILE",
                bench.ca_file.display().to_string(),
            ),
            (
                "SMTP_OAUTH_RELAY_SPOOL_DIR",
                spool.path().join("spool").display().to_string(),
            ),
            ("SMTP_OAUTH_RELAY_MODE", mode.into()),
            ("SMTP_OAUTH_RELAY_RATE_PER_MINUTE", "0".into()),
            (
                "SMTP_OAUTH_RELAY_MAX_CONNECTIONS",
                bench.max_connections.to_string(),
            ),
            ("SMTP_OAUTH_RELAY__GOVERNOR__DAILY_RECIPIENTS", "0".into()),
            ("SMTP_OAUTH_RELAY__LISTEN__HOSTNAME", "relay.bench".into()),
            // Logging costs CPU too, but an operator runs with it on: keep the default.
            ("RUST_LOG", "warn".into()),
        ] {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start the relay");
        let relay = RelayProcess {
            child,
            listen,
            _spool: spool,
            log,
        };
        relay.wait_listening();
        relay
    }

    fn proc(&self) -> Proc {
        Proc(self.child.id())
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(self.listen).is_err() {
            assert!(
                Instant::now() < deadline,
                "relay did not listen: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Bench {
    sandbox: Sandbox,
    ca_file: PathBuf,
    token: SecretString,
    messages: u64,
    concurrency: usize,
    size: String,
    max_connections: u32,
    load: Runtime,
    /// The `postfix` scenario's installation and sink, if it runs.
    postfix: Option<(postfix::Install, postfix::Sink)>,
    /// Set when Postfix failed to start: the later rounds skip it too.
    postfix_failed: Cell<bool>,
}

/// One scenario's numbers.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    scenario: String,
    report: Report,
    ratio_to_ceiling: Option<f64>,
    p99_added_ms: Option<f64>,
    relay_peak_rss_mb: Option<f64>,
    relay_cpu_secs_per_1000: Option<f64>,
    all_delivered_secs: Option<f64>,
    /// On the `postfix` row: queue mode's messages/s over Postfix's, in the same round.
    queue_to_postfix: Option<f64>,
}

impl Bench {
    fn options(&self, target: SocketAddr, messages: u64, size: &str) -> Options {
        let mut o = Options::new(target);
        o.messages = Some(messages);
        o.concurrency = self.concurrency;
        o.size = parse_size_spec(size).expect("BENCH_SIZE");
        o.rcpt_domain = "bench.example".into();
        // The sandbox, like Exchange, accepts only the authenticated mailbox as sender; the
        // relay sends as the mailbox anyway (account.envelope_sender = "mailbox").
        o.from = MAILBOX.into();
        o.reply_timeout = Duration::from_secs(60);
        o
    }

    fn ceiling(&self) -> Row {
        let mut o = self.options(self.sandbox.smtp_addr(), self.messages, &self.size);
        let roots = smtp_oauth_relay::tls::load_pem_certificates(&self.ca_file).unwrap();
        o.tls = Some(Tls {
            server_name: "localhost".into(),
            config: smtp_oauth_relay::tls::client_config(&roots).unwrap(),
        });
        o.auth = Some(Auth::XOAuth2 {
            user: MAILBOX.into(),
            token: self.token.clone(),
        });
        let before = self.sandbox.message_count();
        let report = self.load.block_on(loadgen::run(o));
        assert_eq!(
            self.sandbox.message_count() - before,
            report.messages_ok as usize,
            "the sandbox stored what it acknowledged"
        );
        Row {
            scenario: "ceiling".into(),
            report,
            ratio_to_ceiling: None,
            p99_added_ms: None,
            relay_peak_rss_mb: None,
            relay_cpu_secs_per_1000: None,
            all_delivered_secs: None,
            queue_to_postfix: None,
        }
    }

    fn relay(&self, mode: &str, ceiling: Option<&Row>) -> Row {
        let relay = RelayProcess::start(self, mode);
        let p = relay.proc();
        // One message first: the relay's token and first sessions are not what we measure.
        let warm = self.options(relay.listen, 1, "5k");
        let before = self.sandbox.message_count() + 1;
        assert_eq!(self.load.block_on(loadgen::run(warm)).messages_ok, 1);
        self.wait_delivered(before, Duration::from_secs(30));
        let cpu0 = p.cpu_secs();
        let start = Instant::now();
        let report = self.load.block_on(loadgen::run(self.options(
            relay.listen,
            self.messages,
            &self.size,
        )));
        let delivered = self.wait_delivered(
            before + report.messages_ok as usize,
            Duration::from_secs(300),
        );
        let all_delivered = delivered.then(|| start.elapsed().as_secs_f64());
        let cpu = p.cpu_secs() - cpu0;
        Row {
            scenario: mode.into(),
            ratio_to_ceiling: ceiling.map(|c| report.messages_per_sec / c.report.messages_per_sec),
            p99_added_ms: ceiling.map(|c| report.latency_ms.p99 - c.report.latency_ms.p99),
            relay_peak_rss_mb: Some(p.peak_rss_mb()),
            relay_cpu_secs_per_1000: Some(cpu / report.messages_ok.max(1) as f64 * 1000.0),
            all_delivered_secs: all_delivered,
            queue_to_postfix: None,
            report,
        }
    }

    /// The Postfix peer: a fresh throwaway instance per round, like the relay; `None` (with a
    /// line saying why) when it is not installed or does not start.
    fn postfix(&self, ceiling: Option<&Row>) -> Option<Row> {
        let (install, sink) = self.postfix.as_ref()?;
        if self.postfix_failed.get() {
            return None;
        }
        let mut o = postfix::PeerOptions::new(sink.addr());
        // The same disk as the relay's spool: both fsync before answering 250.
        o.parent_dir = std::env::var("BENCH_SPOOL_DIR")
            .ok()
            .map(PathBuf::from)
            .filter(|p| p.is_dir());
        let mut peer = match postfix::PostfixPeer::start(install, &o) {
            Ok(p) => p,
            Err(e) => {
                println!("postfix: skipped, it did not start: {e}");
                self.postfix_failed.set(true);
                return None;
            }
        };
        let warm = self.options(peer.listen(), 1, "5k");
        let before = sink.messages() + 1;
        let ok = self.load.block_on(loadgen::run(warm)).messages_ok == 1
            && sink.wait_for(before, Duration::from_secs(30));
        if !ok {
            println!(
                "postfix: skipped, the first message did not reach the sink:\n{}",
                peer.log()
            );
            self.postfix_failed.set(true);
            return None;
        }
        let cpu0 = peer.cpu_secs();
        let start = Instant::now();
        let report = self.load.block_on(loadgen::run(self.options(
            peer.listen(),
            self.messages,
            &self.size,
        )));
        let delivered = sink.wait_for(before + report.messages_ok, Duration::from_secs(300));
        let all_delivered = delivered.then(|| start.elapsed().as_secs_f64());
        let cpu = peer.cpu_secs() - cpu0;
        let stopped = peer.stop();
        if stopped.killed || stopped.left_running > 0 {
            println!("postfix: did not stop on SIGTERM: {stopped:?}");
        }
        Some(Row {
            scenario: "postfix".into(),
            ratio_to_ceiling: ceiling.map(|c| report.messages_per_sec / c.report.messages_per_sec),
            p99_added_ms: ceiling.map(|c| report.latency_ms.p99 - c.report.latency_ms.p99),
            relay_peak_rss_mb: None,
            relay_cpu_secs_per_1000: Some(cpu / report.messages_ok.max(1) as f64 * 1000.0),
            all_delivered_secs: all_delivered,
            queue_to_postfix: None,
            report,
        })
    }

    /// Waits until the sandbox holds `n` messages; false on timeout.
    fn wait_delivered(&self, n: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.sandbox.message_count() < n {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    fn memory(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        let relay = RelayProcess::start(self, "hybrid");
        let p = relay.proc();
        let one = |size: &str| {
            let mut o = self.options(relay.listen, 1, size);
            o.concurrency = 1;
            let r = self.load.block_on(loadgen::run(o));
            assert_eq!(r.messages_ok, 1, "{size}: {}", r.text());
        };
        one("10k");
        let small = p.peak_rss_mb();
        one("30m");
        let big = p.peak_rss_mb();
        out.insert("peak_rss_mb_after_10kb".into(), small);
        out.insert("peak_rss_mb_after_30mb".into(), big);
        out.insert("growth_mb_30mb_message".into(), big - small);
        drop(relay);

        let relay = RelayProcess::start(self, "hybrid");
        let p = relay.proc();
        let mut o = self.options(relay.listen, 1, "5k");
        o.concurrency = 1;
        assert_eq!(self.load.block_on(loadgen::run(o)).messages_ok, 1);
        std::thread::sleep(Duration::from_millis(300));
        let before = p.rss_mb();
        let n = 1000;
        let conns = self.load.block_on(async {
            let mut conns = Vec::with_capacity(n);
            for _ in 0..n {
                let mut s = tokio::net::TcpStream::connect(relay.listen).await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await.unwrap();
                s.write_all(b"EHLO idle.example\r\n").await.unwrap();
                let _ = s.read(&mut buf).await.unwrap();
                conns.push(s);
            }
            conns
        });
        std::thread::sleep(Duration::from_millis(500));
        let with = p.rss_mb();
        let peak = p.peak_rss_mb();
        out.insert("rss_mb_before_idle".into(), before);
        out.insert("rss_mb_with_1000_idle".into(), with);
        out.insert("peak_rss_mb_with_1000_idle".into(), peak);
        out.insert(
            "kb_per_idle_connection".into(),
            (with - before) * 1024.0 / n as f64,
        );
        drop(conns);
        out
    }
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters nothing here.
    let scenarios: Vec<String> = std::env::var("BENCH_SCENARIOS")
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect())
        .unwrap_or_else(|_| ALL.iter().map(|s| s.to_string()).collect());
    let up = runtime("up");
    let store = tempdir_in("BENCH_STORE_DIR", Some("/dev/shm"), "sandbox-store-");
    let sandbox = up.block_on(async {
        let mut o = SandboxOptions::new(store.path().to_path_buf());
        o.mailboxes = vec![MAILBOX.into()];
        o.max_connections_per_mailbox = 0;
        o.rate_limit = 0;
        Sandbox::start(o).await.expect("sandbox")
    });
    let ca_file = store.path().join("sandbox-ca.pem");
    sandbox.write_ca_file(&ca_file).unwrap();
    let roots = smtp_oauth_relay::tls::load_pem_certificates(&ca_file).unwrap();
    let o = sandbox.options();
    let source = ClientSecretSource::new(ClientSecretSettings {
        token_url: sandbox.token_url(),
        client_id: o.client_id.clone(),
        client_secret: o.client_secret.clone(),
        scope: "https://outlook.office365.com/.default".into(),
        extra_roots: roots,
        timeout: Duration::from_secs(10),
    })
    .unwrap();
    let token = up
        .block_on(source.fetch())
        .expect("sandbox token")
        .expose()
        .to_string();
    let postfix = scenarios
        .iter()
        .any(|s| s == "postfix")
        .then(|| match postfix::Install::find() {
            Ok(install) => {
                let sink = up.block_on(postfix::Sink::start()).expect("the sink");
                Some((install, sink))
            }
            Err(reason) => {
                println!("postfix: skipped: {reason}");
                None
            }
        })
        .flatten();
    let bench = Bench {
        sandbox,
        ca_file,
        token: SecretString::from(token),
        messages: env_or("BENCH_MESSAGES", 5000),
        concurrency: env_or("BENCH_CONCURRENCY", 50),
        size: std::env::var("BENCH_SIZE").unwrap_or_else(|_| "5k".into()),
        max_connections: env_or("BENCH_MAX_CONNECTIONS", 50),
        load: runtime("load"),
        postfix,
        postfix_failed: Cell::new(false),
    };
    println!(
        "e2e: {} messages of {} bytes, {} clients, relay upstream sessions {}; {} cores",
        bench.messages,
        bench.size,
        bench.concurrency,
        bench.max_connections,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // Rounds, each running every scenario once, in order: this shared 2-core machine is noisy,
    // so each figure is the median over the rounds, and each ratio compares medians.
    let rounds: usize = env_or("BENCH_ROUNDS", 3).max(1);
    let mut by_scenario: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for round in 1..=rounds {
        println!("round {round} of {rounds}");
        let mut ceiling = None;
        let mut this_round: Vec<Row> = Vec::new();
        for s in &scenarios {
            let row = match s.as_str() {
                "ceiling" => {
                    let r = bench.ceiling();
                    ceiling = Some(r.clone());
                    r
                }
                "direct" | "hybrid" | "queue" => bench.relay(s, ceiling.as_ref()),
                "postfix" => match bench.postfix(ceiling.as_ref()) {
                    Some(r) => r,
                    None => continue,
                },
                _ => continue,
            };
            print_row(&row);
            this_round.push(row);
        }
        // Queue mode against Postfix: the pair of this round.
        let queue = this_round.iter().find(|r| r.scenario == "queue");
        let ratio = queue.map(|q| q.report.messages_per_sec);
        if let Some(p) = this_round.iter_mut().find(|r| r.scenario == "postfix") {
            p.queue_to_postfix = ratio.map(|q| q / p.report.messages_per_sec);
            if let Some(r) = p.queue_to_postfix {
                println!("         queue / postfix this round: {r:.2}");
            }
        }
        for row in this_round {
            by_scenario
                .entry(row.scenario.clone())
                .or_default()
                .push(row);
        }
    }
    // The summary: each scenario's median round by messages/s, with the median (and range)
    // of its per-round ratios: each ratio compares with the ceiling of the same round.
    let mut rows: Vec<Row> = Vec::new();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    println!("median of {rounds} rounds (ratio: median of the per-round ratios, [min, max]):");
    for s in &scenarios {
        let Some(list) = by_scenario.get(s) else {
            continue;
        };
        let mut list = list.clone();
        list.sort_by(|a, b| {
            a.report
                .messages_per_sec
                .total_cmp(&b.report.messages_per_sec)
        });
        let mut row = list[list.len() / 2].clone();
        let ratios: Vec<f64> = list.iter().filter_map(|r| r.ratio_to_ceiling).collect();
        row.ratio_to_ceiling = median(ratios.clone());
        row.p99_added_ms = median(list.iter().filter_map(|r| r.p99_added_ms).collect());
        let vs_postfix: Vec<f64> = list.iter().filter_map(|r| r.queue_to_postfix).collect();
        row.queue_to_postfix = median(vs_postfix.clone());
        print_row(&row);
        if let (Some(lo), Some(hi)) = (
            ratios.iter().copied().reduce(f64::min),
            ratios.iter().copied().reduce(f64::max),
        ) {
            println!("         ratio range over the rounds: [{lo:.2}, {hi:.2}]");
        }
        if let (Some(r), Some(lo), Some(hi)) = (
            row.queue_to_postfix,
            vs_postfix.iter().copied().reduce(f64::min),
            vs_postfix.iter().copied().reduce(f64::max),
        ) {
            let queue = by_scenario
                .get("queue")
                .and_then(|l| median(l.iter().map(|q| q.report.messages_per_sec).collect()));
            println!(
                "         queue / postfix: {r:.2} [{lo:.2}, {hi:.2}] (median of the per-round \
                 ratios; issue 14 asks >= 2): queue {} msg/s, postfix {:.1} msg/s, postfix \
                 p99 {:.2} ms, postfix CPU per 1,000 messages {}",
                queue.map_or("-".into(), |q| format!("{q:.1}")),
                row.report.messages_per_sec,
                row.report.latency_ms.p99,
                row.relay_cpu_secs_per_1000
                    .map_or("-".into(), |c| format!("{c:.2} s")),
            );
        }
        rows.push(row);
    }
    let memory = scenarios
        .iter()
        .any(|s| s == "memory")
        .then(|| bench.memory());
    if let Some(m) = &memory {
        println!("memory (relay process):");
        for (k, v) in m {
            println!("  {k:<32} {v:>9.2}");
        }
    }
    if let Ok(path) = std::env::var("BENCH_JSON") {
        let json = serde_json::json!({ "scenarios": rows, "memory": memory });
        std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
        println!("results written to {path}");
    }
    up.block_on(bench.sandbox.shutdown());
}

fn print_row(r: &Row) {
    let rep = &r.report;
    let l = &rep.latency_ms;
    let opt = |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.2}{unit}"));
    println!(
        "{:<8} {:>8.1} msg/s  ratio {:>6}  {:>6.2} MB/s  p50 {:>6.2} p90 {:>6.2} p99 {:>6.2} max {:>7.2} ms  \
         p99 added {:>8}  peak RSS {:>9}  CPU/1000 msgs {:>7}  all delivered {:>7}  errors {:?}",
        r.scenario,
        rep.messages_per_sec,
        opt(r.ratio_to_ceiling, ""),
        rep.megabytes_per_sec,
        l.p50,
        l.p90,
        l.p99,
        l.max,
        opt(r.p99_added_ms, " ms"),
        opt(r.relay_peak_rss_mb, " MB"),
        opt(r.relay_cpu_secs_per_1000, " s"),
        opt(r.all_delivered_secs, " s"),
        rep.errors,
    );
}
