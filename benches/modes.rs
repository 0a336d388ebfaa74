//! End-to-end throughput of the delivery modes (issue 3's benchmark; issue 6 grows from it).
//!
//! Run: `cargo bench --bench modes` (release profile). Everything runs in this one process on
//! loopback: the sandbox (Exchange stand-in, limits off), a trivial SMTP sink, a fresh relay per
//! scenario (fresh spool, `RATE_PER_MINUTE=0`, daily budget off, upstream `MAX_CONNECTIONS`
//! from `BENCH_MAX_CONNECTIONS`, default 8: with 0 = unlimited, queue mode opens a TLS
//! session per in-flight delivery, ~230 for 2,000 messages, and accepts half as fast, while
//! direct and hybrid mode measure the same either way) and a load generator of C
//! clients, each on one connection sending its share of N messages of S bytes with pipelined
//! `MAIL`/`RCPT`/`DATA` (RFC 2920: the group ends at `DATA`, then the body).
//!
//! Scenarios, in one run, in this order:
//! - `sink`: clients -> an in-process sink that accepts and discards (the ceiling of this
//!   machine and this load generator; the sandbox itself needs STARTTLS + AUTH).
//! - `direct`, `hybrid`, `queue`: clients -> relay -> sandbox in each delivery mode.
//! - `queue1`: queue mode with one client, to show what the spool's group commit buys.
//!
//! Reported per scenario: accepted messages/s and MB/s (first pipelined command after all
//! clients are connected, to the last `250` after the final dot), p50/p99 of the DATA step
//! (body + dot written -> final reply), errors by stage and reply code, CPU seconds by
//! component, and for the relay modes the time until the sandbox holds every accepted message
//! and the spool's directory fsyncs per message.
//!
//! The components run on three multi-thread tokio runtimes (2 workers each) whose threads are
//! named `load`, `relay` and `up` (sandbox and sink), so CPU time can be charged to each from
//! `/proc/self/task/*/stat`; in production they are separate processes too.
//!
//! Environment: `BENCH_MESSAGES` (2000), `BENCH_CONCURRENCY` (50), `BENCH_SIZE` (5000 bytes),
//! `BENCH_MAX_CONNECTIONS` (8), `BENCH_TIMEOUT` (120 s per scenario), `BENCH_SCENARIOS`
//! (comma list of the names above, default all), `BENCH_JSON` (write the results there as
//! JSON), `BENCH_SPOOL_DIR` (parent of the relay spools; default the system temporary
//! directory, since the spool's fsyncs are part of what is measured), `BENCH_STORE_DIR`
//! (parent of the sandbox's store; default `/dev/shm`, since Exchange's disks are not ours),
//! `RUST_LOG` (logging is off unless set: it would distort the numbers).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use smtp_oauth_relay::app::Relay;
use smtp_oauth_relay::config::Config;
use smtp_oauth_relay::sandbox::{Sandbox, SandboxOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const MAILBOX: &str = "relay@sandbox.example";
const SENDER: &str = "app@bench.example";

struct Params {
    messages: usize,
    concurrency: usize,
    size: usize,
    max_connections: String,
    timeout: Duration,
    scenarios: Vec<String>,
    json: Option<String>,
    spool_parent: Option<String>,
    store_parent: Option<String>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

impl Params {
    fn from_env() -> Params {
        let scenarios: String = env_or("BENCH_SCENARIOS", ALL_SCENARIOS.join(","));
        let scenarios: Vec<String> = scenarios
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        for s in &scenarios {
            assert!(
                ALL_SCENARIOS.contains(&s.as_str()),
                "unknown scenario {s:?}; known: {ALL_SCENARIOS:?}"
            );
        }
        let p = Params {
            messages: env_or("BENCH_MESSAGES", 2000),
            concurrency: env_or("BENCH_CONCURRENCY", 50),
            size: env_or("BENCH_SIZE", 5000),
            max_connections: env_or("BENCH_MAX_CONNECTIONS", "8".to_string()),
            timeout: Duration::from_secs(env_or("BENCH_TIMEOUT", 120)),
            scenarios,
            json: std::env::var("BENCH_JSON").ok(),
            spool_parent: std::env::var("BENCH_SPOOL_DIR").ok(),
            store_parent: std::env::var("BENCH_STORE_DIR").ok(),
        };
        assert!(
            p.messages > 0 && p.concurrency > 0,
            "need messages and clients"
        );
        p
    }
}

const ALL_SCENARIOS: &[&str] = &["sink", "direct", "hybrid", "queue", "queue1"];

fn runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        // Blocking threads must outlive a scenario, or their CPU time vanishes from the tally.
        .thread_keep_alive(Duration::from_secs(3600))
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn main() {
    let params = Params::from_env();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    smtp_oauth_relay::tls::install_crypto_provider();
    let load_rt = runtime("load");
    let relay_rt = runtime("relay");
    let up_rt = runtime("up");

    let dir = tempdir_in(params.spool_parent.as_deref(), "spool");
    // The sandbox's store stands in for Exchange's disks, not ours: keep it off the disk the
    // spool is measured on (tmpfs when there is one), so its file churn does not compete.
    let store = tempdir_in(params.store_parent.as_deref(), "store");
    let mut opts = SandboxOptions::new(store.path().to_path_buf());
    opts.mailboxes = vec![MAILBOX.into()];
    opts.max_connections_per_mailbox = 0;
    opts.rate_limit = 0;
    let sandbox = up_rt
        .block_on(Sandbox::start(opts))
        .expect("sandbox starts");
    let ca_file = dir.path().join("ca.pem");
    sandbox.write_ca_file(&ca_file).expect("write CA");
    let sink_addr = up_rt.block_on(sink::start()).expect("sink starts");
    let template = Arc::new(load::Template::new(params.size));

    println!(
        "smtp-oauth-relay modes benchmark: {} messages of ~{} bytes from {} clients per scenario; \
         upstream MAX_CONNECTIONS={} ({}); {} CPUs; timeout {} s per scenario",
        params.messages,
        template.typical_size(),
        params.concurrency,
        params.max_connections,
        if params.max_connections == "0" {
            "unlimited"
        } else {
            "pool bound"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        params.timeout.as_secs()
    );
    println!(
        "relay spools under {} ({}); sandbox store under {} ({})",
        dir.path().display(),
        fs_type(dir.path()),
        store.path().display(),
        fs_type(store.path())
    );

    let mut results = Vec::new();
    for (i, name) in params.scenarios.iter().enumerate() {
        let (mode, clients) = match name.as_str() {
            "sink" => (None, params.concurrency),
            "direct" => (Some("direct"), params.concurrency),
            "hybrid" => (Some("hybrid"), params.concurrency),
            "queue" => (Some("queue"), params.concurrency),
            "queue1" => (Some("queue"), 1),
            _ => unreachable!("checked in Params::from_env"),
        };
        let world = World {
            params: &params,
            sandbox: &sandbox,
            ca_file: &ca_file,
            spool_dir: &dir.path().join(format!("spool-{i}-{name}")),
            template: &template,
        };
        eprintln!("running {name} ...");
        let outcome = match mode {
            None => run_sink(&world, &load_rt, name, sink_addr, clients),
            Some(mode) => run_relay(&world, &load_rt, &relay_rt, name, mode, clients),
        };
        eprintln!("  {}", outcome.one_line());
        results.push(outcome);
    }

    report::print(&results);
    if let Some(path) = &params.json {
        std::fs::write(path, report::json(&params, &results)).expect("write BENCH_JSON");
        println!("results written to {path}");
    }
    up_rt.block_on(sandbox.shutdown());
    load_rt.shutdown_timeout(Duration::from_secs(1));
    relay_rt.shutdown_timeout(Duration::from_secs(1));
    up_rt.shutdown_timeout(Duration::from_secs(1));
}

/// A temporary directory under `parent`, or under the default place for `what`: the system
/// temporary directory for the spool, `/dev/shm` (if present) for the sandbox store.
fn tempdir_in(parent: Option<&str>, what: &str) -> tempfile::TempDir {
    let parent = match parent {
        Some(p) => std::path::PathBuf::from(p),
        None if what == "store" && Path::new("/dev/shm").is_dir() => "/dev/shm".into(),
        None => std::env::temp_dir(),
    };
    tempfile::Builder::new()
        .prefix(&format!("relay-bench-{what}-"))
        .tempdir_in(&parent)
        .unwrap_or_else(|e| panic!("temporary directory under {}: {e}", parent.display()))
}

/// The file system type holding `path`, from `/proc/mounts` (Linux), e.g. `ext4`.
fn fs_type(path: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "unknown fs".into();
    };
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let Some((_, dev, fs)) = mounts
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (dev, mount, fs) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(mount)
                .then(|| (mount.len(), dev.to_string(), fs.to_string()))
        })
        .max()
    else {
        return "unknown fs".into();
    };
    // ext4 without a journal skips recently deleted inodes one by one on every create, which
    // makes a file-per-message spool slow down with churn: worth knowing when reading numbers.
    let dev = dev.trim_start_matches("/dev/");
    if fs == "ext4" && Path::new("/proc/fs/jbd2").is_dir() {
        let journaled = std::fs::read_dir("/proc/fs/jbd2")
            .map(|d| {
                d.flatten().any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{dev}-"))
                })
            })
            .unwrap_or(true);
        if !journaled {
            return format!("{fs}, no journal");
        }
    }
    fs
}

/// What every scenario shares.
struct World<'a> {
    params: &'a Params,
    sandbox: &'a Sandbox,
    ca_file: &'a Path,
    spool_dir: &'a Path,
    template: &'a Arc<load::Template>,
}

impl World<'_> {
    /// The environment a user would set to point the relay at the sandbox, limits off.
    fn relay_env(&self, mode: &str) -> Vec<(String, String)> {
        let o = self.sandbox.options();
        [
            ("SMTP_OAUTH_RELAY_LISTEN", "127.0.0.1:0".to_string()),
            ("SMTP_OAUTH_RELAY_ADMIN_LISTEN", "off".to_string()),
            ("SMTP_OAUTH_RELAY_TENANT", o.tenant.clone()),
            ("SMTP_OAUTH_RELAY_CLIENT_ID", o.client_id.clone()),
            (
                "SMTP_OAUTH_RELAY_CLIENT_SECRET",
                o.client_secret.expose_secret().to_string(),
            ),
            ("SMTP_OAUTH_RELAY_MAILBOX", MAILBOX.to_string()),
            ("SMTP_OAUTH_RELAY_AUTHORITY", self.sandbox.authority()),
            (
                "SMTP_OAUTH_RELAY_UPSTREAM",
                format!("localhost:{}", self.sandbox.smtp_addr().port()),
            ),
            (
                "SMTP_OAUTH_RELAY_EXTRA_CA_FILE",
                self.ca_file.display().to_string(),
            ),
            (
                "SMTP_OAUTH_RELAY_SPOOL_DIR",
                self.spool_dir.display().to_string(),
            ),
            ("SMTP_OAUTH_RELAY_MODE", mode.to_string()),
            ("SMTP_OAUTH_RELAY_RATE_PER_MINUTE", "0".to_string()),
            (
                "SMTP_OAUTH_RELAY_MAX_CONNECTIONS",
                self.params.max_connections.clone(),
            ),
            (
                "SMTP_OAUTH_RELAY__GOVERNOR__DAILY_RECIPIENTS",
                "0".to_string(),
            ),
            (
                "SMTP_OAUTH_RELAY__LISTEN__HOSTNAME",
                "relay.bench.example".to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// One scenario's results.
#[derive(Debug, Default)]
struct Outcome {
    name: String,
    clients: usize,
    planned: usize,
    stats: load::Stats,
    /// First pipelined command to last final reply.
    elapsed: Duration,
    /// Relay modes: time from the start until the sandbox held every accepted message.
    delivered_after: Option<Duration>,
    /// Relay modes: messages the sandbox received during the scenario.
    delivered: Option<usize>,
    /// Queue directory fsyncs when the last reply arrived, and at the end (incl. removals).
    fsyncs_accept: Option<u64>,
    fsyncs_total: Option<u64>,
    /// Relay modes: upstream sessions opened (sandbox AUTH attempts), i.e. TLS handshakes.
    sessions: Option<u64>,
    cpu: cpu::Usage,
    /// Why the scenario did not finish, if it did not.
    failure: Option<String>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        per_sec(self.stats.ok, self.elapsed)
    }

    fn mb_rate(&self) -> f64 {
        self.stats.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn one_line(&self) -> String {
        format!(
            "{}: {}/{} ok in {:.2} s = {:.0} msg/s{}",
            self.name,
            self.stats.ok,
            self.planned,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.failure
                .as_ref()
                .map(|f| format!(" FAILED: {f}"))
                .unwrap_or_default()
        )
    }
}

fn per_sec(n: usize, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

/// Runs the load against `addr` with the scenario's deadline. Returns the stats, the elapsed
/// time and a failure note if the deadline passed.
fn drive(
    world: &World<'_>,
    load_rt: &Runtime,
    addr: SocketAddr,
    clients: usize,
    deadline: Instant,
) -> (load::Stats, Duration, Option<String>) {
    let run = load::run(
        addr,
        world.params.messages,
        clients,
        world.template.clone(),
        deadline,
    );
    load_rt.block_on(run)
}

fn run_sink(
    world: &World<'_>,
    load_rt: &Runtime,
    name: &str,
    addr: SocketAddr,
    clients: usize,
) -> Outcome {
    let deadline = Instant::now() + world.params.timeout;
    let before = cpu::Usage::now();
    let (stats, elapsed, failure) = drive(world, load_rt, addr, clients, deadline);
    Outcome {
        name: name.into(),
        clients,
        planned: world.params.messages,
        stats,
        elapsed,
        cpu: cpu::Usage::now().since(&before),
        failure,
        ..Default::default()
    }
}

fn run_relay(
    world: &World<'_>,
    load_rt: &Runtime,
    relay_rt: &Runtime,
    name: &str,
    mode: &str,
    clients: usize,
) -> Outcome {
    let mut outcome = Outcome {
        name: name.into(),
        clients,
        planned: world.params.messages,
        ..Default::default()
    };
    let config = match Config::load(None, &world.relay_env(mode)).and_then(|c| c.validate()) {
        Ok(c) => c,
        Err(e) => {
            outcome.failure = Some(format!("relay configuration: {e}"));
            return outcome;
        }
    };
    let relay = match relay_rt.block_on(Relay::start(config)) {
        Ok(r) => r,
        Err(e) => {
            outcome.failure = Some(format!("relay start: {e}"));
            return outcome;
        }
    };
    let deadline = Instant::now() + world.params.timeout;
    let baseline = world.sandbox.message_count();
    let auths = world.sandbox.auth_attempts();
    let before = cpu::Usage::now();
    let started = Instant::now();
    let (stats, elapsed, failure) = drive(world, load_rt, relay.local_addr(), clients, deadline);
    let spool = relay.delivery().spool().clone();
    outcome.fsyncs_accept = Some(spool.queue_dir_fsyncs());
    outcome.failure = failure;
    // Every accepted message must reach the sandbox; in queue mode this is where the
    // background delivery finishes.
    let target = baseline + stats.ok;
    loop {
        // The queue length is free to read; the sandbox count lists its store, so it is read
        // only once the queue is empty (polling it would steal CPU from the relay).
        let drained = relay.delivery().queued() == 0;
        let count = if drained {
            world.sandbox.message_count()
        } else {
            baseline
        };
        if count >= target && drained {
            outcome.delivered_after = Some(started.elapsed());
            break;
        }
        if Instant::now() >= deadline {
            if outcome.failure.is_none() {
                outcome.failure = Some(format!(
                    "timed out: the sandbox has {} of {} accepted messages, {} still queued",
                    count - baseline,
                    stats.ok,
                    relay.delivery().queued()
                ));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    outcome.delivered = Some(world.sandbox.message_count() - baseline);
    outcome.fsyncs_total = Some(spool.queue_dir_fsyncs());
    outcome.sessions = Some(world.sandbox.auth_attempts() - auths);
    outcome.cpu = cpu::Usage::now().since(&before);
    outcome.stats = stats;
    outcome.elapsed = elapsed;
    if !relay_rt.block_on(relay.shutdown(Duration::from_secs(5))) {
        eprintln!("  note: relay did not shut down within 5 s");
    }
    outcome
}

/// The load generator: C clients, one connection each, pipelined MAIL/RCPT/DATA.
mod load {
    use super::*;

    /// A message: realistic headers (with a unique Message-ID) and a plain text body.
    pub struct Template {
        body: Vec<u8>,
        date: String,
    }

    impl Template {
        pub fn new(size: usize) -> Template {
            let date = httpdate::fmt_http_date(std::time::SystemTime::now());
            let mut t = Template {
                body: Vec::new(),
                date,
            };
            let head = t.header(0, 0).len();
            let want = size.saturating_sub(head).max(2);
            const WORDS: &str = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do \
                eiusmod tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim \
                veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo \
                consequat. Invoice 4711 is attached as text; totals: EUR 1,234.56. ";
            let mut line = String::new();
            let mut words = WORDS.split(' ').filter(|w| !w.is_empty()).cycle();
            while t.body.len() < want {
                let word = words.next().expect("cycle");
                if line.len() + word.len() + 1 > 72 {
                    t.body.extend_from_slice(line.as_bytes());
                    t.body.extend_from_slice(b"\r\n");
                    line.clear();
                }
                if !line.is_empty() {
                    line.push(' ');
                }
                line.push_str(word);
            }
            t.body.truncate(want - 2);
            t.body.extend_from_slice(b"\r\n");
            t
        }

        fn header(&self, client: usize, seq: usize) -> String {
            format!(
                "From: Billing App <{SENDER}>\r\n\
                 To: Customer {seq} <customer{seq}@bench.example>\r\n\
                 Subject: Your invoice {client}-{seq} is ready\r\n\
                 Date: {}\r\n\
                 Message-ID: <{client}.{seq}.bench@bench.example>\r\n\
                 MIME-Version: 1.0\r\n\
                 Content-Type: text/plain; charset=utf-8\r\n\
                 Content-Transfer-Encoding: 7bit\r\n\
                 X-Mailer: smtp-oauth-relay modes bench\r\n\
                 \r\n",
                self.date
            )
        }

        pub fn typical_size(&self) -> usize {
            self.header(10, 1000).len() + self.body.len()
        }

        /// The message as sent: headers, body (no line starts with '.'), end of data.
        fn render(&self, client: usize, seq: usize, out: &mut Vec<u8>) -> usize {
            out.clear();
            out.extend_from_slice(self.header(client, seq).as_bytes());
            out.extend_from_slice(&self.body);
            let size = out.len();
            out.extend_from_slice(b".\r\n");
            size
        }
    }

    /// What the clients saw. `latencies_us` is sorted once merged.
    #[derive(Debug, Default)]
    pub struct Stats {
        pub ok: usize,
        pub bytes: u64,
        pub errors: BTreeMap<String, usize>,
        pub latencies_us: Vec<u64>,
    }

    impl Stats {
        fn error(&mut self, key: impl Into<String>, n: usize) {
            if n > 0 {
                *self.errors.entry(key.into()).or_insert(0) += n;
            }
        }

        fn merge(&mut self, other: Stats) {
            self.ok += other.ok;
            self.bytes += other.bytes;
            for (k, v) in other.errors {
                self.error(k, v);
            }
            self.latencies_us.extend(other.latencies_us);
        }

        pub fn percentile_ms(&self, p: f64) -> f64 {
            if self.latencies_us.is_empty() {
                return f64::NAN;
            }
            let i = ((self.latencies_us.len() as f64 * p).ceil() as usize)
                .clamp(1, self.latencies_us.len());
            self.latencies_us[i - 1] as f64 / 1000.0
        }

        pub fn error_count(&self) -> usize {
            self.errors.values().sum()
        }
    }

    /// Runs `messages` spread over `clients` connections. The clock starts once every client
    /// is connected and greeted, and stops at the last final reply.
    pub async fn run(
        addr: SocketAddr,
        messages: usize,
        clients: usize,
        template: Arc<Template>,
        deadline: Instant,
    ) -> (Stats, Duration, Option<String>) {
        let ready = Arc::new(tokio::sync::Barrier::new(clients + 1));
        let replies = Arc::new(AtomicUsize::new(0));
        let mut set = tokio::task::JoinSet::new();
        for c in 0..clients {
            let count = messages / clients + usize::from(c < messages % clients);
            set.spawn(client(
                addr,
                c,
                count,
                template.clone(),
                ready.clone(),
                replies.clone(),
            ));
        }
        let connected = tokio::time::timeout_at(deadline.into(), ready.wait()).await;
        let start = Instant::now();
        let mut stats = Stats::default();
        let mut last = start;
        if connected.is_err() {
            set.abort_all();
            return (
                stats,
                Duration::ZERO,
                Some("timed out while connecting the clients".into()),
            );
        }
        let mut failure = None;
        loop {
            match tokio::time::timeout_at(deadline.into(), set.join_next()).await {
                Ok(Some(Ok((s, end)))) => {
                    stats.merge(s);
                    last = last.max(end);
                }
                Ok(Some(Err(e))) => stats.error(format!("client task: {e}"), 1),
                Ok(None) => break,
                Err(_) => {
                    set.abort_all();
                    failure = Some(format!(
                        "timed out: {} of {messages} transactions answered",
                        replies.load(Ordering::Relaxed)
                    ));
                    last = Instant::now();
                    break;
                }
            }
        }
        stats.latencies_us.sort_unstable();
        (stats, last.duration_since(start), failure)
    }

    /// One client: connect, EHLO, then `count` transactions, then QUIT. Returns its stats and
    /// when its last final reply arrived.
    async fn client(
        addr: SocketAddr,
        id: usize,
        count: usize,
        template: Arc<Template>,
        ready: Arc<tokio::sync::Barrier>,
        replies: Arc<AtomicUsize>,
    ) -> (Stats, Instant) {
        let mut stats = Stats::default();
        let conn = tokio::time::timeout(Duration::from_secs(10), Conn::open(addr)).await;
        ready.wait().await;
        let mut conn = match conn {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                stats.error(format!("connect: {e}"), count);
                return (stats, Instant::now());
            }
            Err(_) => {
                stats.error("connect: timed out", count);
                return (stats, Instant::now());
            }
        };
        let mut last = Instant::now();
        let mut msg = Vec::with_capacity(template.typical_size() + 64);
        for seq in 0..count {
            match conn.transaction(&template, id, seq, &mut msg).await {
                Ok(Sent::Accepted { size, latency }) => {
                    stats.ok += 1;
                    stats.bytes += size as u64;
                    stats.latencies_us.push(latency.as_micros() as u64);
                }
                Ok(Sent::Refused(key)) => stats.error(key, 1),
                Err(e) => {
                    stats.error(format!("connection lost: {e}"), 1);
                    stats.error("not sent (connection lost)", count - seq - 1);
                    replies.fetch_add(1, Ordering::Relaxed);
                    return (stats, Instant::now());
                }
            }
            last = Instant::now();
            replies.fetch_add(1, Ordering::Relaxed);
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.command(b"QUIT\r\n")).await;
        (stats, last)
    }

    enum Sent {
        Accepted {
            size: usize,
            latency: Duration,
        },
        /// Stage and reply code, e.g. `end of data 451`.
        Refused(String),
    }

    struct Conn {
        stream: TcpStream,
        buf: Vec<u8>,
    }

    /// Per reply: long enough for a slow hybrid attempt, short enough to stay in the deadline.
    const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

    impl Conn {
        async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let mut conn = Conn {
                stream,
                buf: Vec::with_capacity(4096),
            };
            let greeting = conn.reply().await?;
            if greeting != 220 {
                return Err(std::io::Error::other(format!("greeting {greeting}")));
            }
            let ehlo = conn.command(b"EHLO client.bench.example\r\n").await?;
            if ehlo != 250 {
                return Err(std::io::Error::other(format!("EHLO {ehlo}")));
            }
            Ok(conn)
        }

        async fn command(&mut self, line: &[u8]) -> std::io::Result<u16> {
            self.stream.write_all(line).await?;
            self.reply().await
        }

        /// One pipelined transaction: MAIL, RCPT and DATA in one write, then the body.
        async fn transaction(
            &mut self,
            template: &Template,
            client: usize,
            seq: usize,
            msg: &mut Vec<u8>,
        ) -> std::io::Result<Sent> {
            let envelope = format!(
                "MAIL FROM:<{SENDER}> SIZE={}\r\nRCPT TO:<customer{seq}@bench.example>\r\nDATA\r\n",
                template.typical_size()
            );
            self.stream.write_all(envelope.as_bytes()).await?;
            let mail = self.reply().await?;
            let rcpt = self.reply().await?;
            let data = self.reply().await?;
            for code in [mail, rcpt, data] {
                if code == 421 {
                    return Err(std::io::Error::other("421 from the server"));
                }
            }
            if data != 354 {
                self.command(b"RSET\r\n").await?;
                let key = if mail != 250 {
                    format!("MAIL {mail}")
                } else if rcpt != 250 {
                    format!("RCPT {rcpt}")
                } else {
                    format!("DATA {data}")
                };
                return Ok(Sent::Refused(key));
            }
            let size = template.render(client, seq, msg);
            let started = Instant::now();
            self.stream.write_all(msg).await?;
            let end = self.reply().await?;
            let latency = started.elapsed();
            Ok(if end == 250 && mail == 250 && rcpt == 250 {
                Sent::Accepted { size, latency }
            } else if end == 421 {
                return Err(std::io::Error::other("421 from the server"));
            } else {
                Sent::Refused(format!("end of data {end}"))
            })
        }

        /// Reads one complete (possibly multi-line) reply and returns its code.
        async fn reply(&mut self) -> std::io::Result<u16> {
            tokio::time::timeout(REPLY_TIMEOUT, async {
                loop {
                    if let Some((code, end)) = parse_reply(&self.buf) {
                        self.buf.drain(..end);
                        return Ok(code);
                    }
                    let mut chunk = [0u8; 4096];
                    let n = self.stream.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
            })
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
        }
    }

    /// The code and length of the first complete reply in `buf`.
    fn parse_reply(buf: &[u8]) -> Option<(u16, usize)> {
        let mut pos = 0;
        while let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) {
            let line = &buf[pos..pos + nl + 1];
            pos += nl + 1;
            if line.len() < 4 || line[3] != b'-' {
                let code = std::str::from_utf8(line.get(..3)?).ok()?.parse().ok()?;
                return Some((code, pos));
            }
        }
        None
    }
}

/// The ceiling: an SMTP server that accepts everything (pipelined) and discards it.
mod sink {
    use super::*;

    pub async fn start() -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(session(socket));
            }
        });
        Ok(addr)
    }

    async fn session(mut s: TcpStream) -> std::io::Result<()> {
        s.set_nodelay(true)?;
        s.write_all(b"220 sink.bench.example ESMTP\r\n").await?;
        let (mut buf, mut out) = (Vec::with_capacity(65536), Vec::with_capacity(1024));
        let mut chunk = vec![0u8; 65536];
        let mut in_data = false;
        loop {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut pos = 0;
            let mut quit = false;
            loop {
                if in_data {
                    // The data starts with the CRLF that ended `DATA`, so the terminator is
                    // always CRLF . CRLF.
                    match memchr::memmem::find(&buf[pos..], b"\r\n.\r\n") {
                        Some(i) => {
                            pos += i + 5;
                            in_data = false;
                            out.extend_from_slice(b"250 2.0.0 OK discarded\r\n");
                        }
                        None => {
                            pos = buf.len().saturating_sub(4).max(pos);
                            break;
                        }
                    }
                    continue;
                }
                let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) else {
                    break;
                };
                let line = &buf[pos..pos + nl + 1];
                pos += nl + 1;
                let mut verb = [0u8; 4];
                let n = line.len().min(4);
                verb[..n].copy_from_slice(&line[..n]);
                verb.make_ascii_uppercase();
                let crlf = line.ends_with(b"\r\n");
                match &verb {
                    b"EHLO" => out.extend_from_slice(
                        b"250-sink.bench.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 157286400\r\n",
                    ),
                    b"HELO" | b"MAIL" | b"RCPT" | b"RSET" | b"NOOP" => {
                        out.extend_from_slice(b"250 2.0.0 OK\r\n")
                    }
                    b"DATA" => {
                        out.extend_from_slice(b"354 Go ahead\r\n");
                        in_data = true;
                        // Keep the line's CRLF: the terminator search then needs no special
                        // case for a body that starts with the dot line.
                        if crlf {
                            pos -= 2;
                        }
                    }
                    b"QUIT" => {
                        out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                        quit = true;
                        break;
                    }
                    _ => out.extend_from_slice(b"500 5.5.2 Unknown command\r\n"),
                }
            }
            buf.drain(..pos);
            if !out.is_empty() {
                s.write_all(&out).await?;
                out.clear();
            }
            if quit {
                return Ok(());
            }
        }
    }
}

/// CPU time by component, from the per-thread counters in `/proc/self/task/*/stat` (Linux;
/// elsewhere everything reads as zero). Threads are grouped by name: `load`, `relay`, `up`.
mod cpu {
    use std::collections::HashMap;

    /// Clock ticks per second of `/proc` times (USER_HZ, 100 on every Linux build we meet).
    const TICKS: f64 = 100.0;

    #[derive(Debug, Default, Clone)]
    pub struct Usage {
        /// Ticks per thread id, with the thread's group.
        threads: HashMap<u32, (&'static str, u64)>,
        /// Sum over all threads. (The process line of `/proc/self/stat` would include
        /// exited threads, but on this kind of VM it reads more than wall time x CPUs.)
        pub total: f64,
        pub load: f64,
        pub relay: f64,
        pub up: f64,
        pub other: f64,
    }

    fn ticks(stat: &str) -> Option<(String, u64)> {
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let comm = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // Fields 14 and 15 of stat(5) are utime and stime; field 3 is the first after ')'.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((comm, utime + stime))
    }

    fn group(comm: &str) -> &'static str {
        match comm {
            "load" => "load",
            "relay" => "relay",
            "up" => "up",
            _ => "other",
        }
    }

    impl Usage {
        pub fn now() -> Usage {
            let mut u = Usage::default();
            if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
                for entry in dir.flatten() {
                    let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                        continue;
                    };
                    let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                        continue;
                    };
                    if let Some((comm, t)) = ticks(&stat) {
                        if std::env::var_os("BENCH_THREADS").is_some() {
                            eprintln!("thread {tid} {comm} {t}");
                        }
                        u.threads.insert(tid, (group(&comm), t));
                    }
                }
            }
            u
        }

        /// CPU seconds used since `before`, by group.
        pub fn since(&self, before: &Usage) -> Usage {
            let mut d = Usage::default();
            for (tid, (group, t)) in &self.threads {
                let was = before.threads.get(tid).map_or(0, |(_, t)| *t);
                let secs = t.saturating_sub(was) as f64 / TICKS;
                d.total += secs;
                match *group {
                    "load" => d.load += secs,
                    "relay" => d.relay += secs,
                    "up" => d.up += secs,
                    _ => d.other += secs,
                }
            }
            d
        }
    }
}

mod report {
    use super::*;

    fn ms(v: f64) -> String {
        if v.is_nan() {
            "-".into()
        } else {
            format!("{v:.2}")
        }
    }

    fn ratio(a: f64, b: Option<f64>) -> String {
        match b {
            Some(b) if b > 0.0 && a > 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        }
    }

    fn rate_of(results: &[Outcome], name: &str) -> Option<f64> {
        results
            .iter()
            .find(|o| o.name == name && o.failure.is_none())
            .map(Outcome::rate)
    }

    pub fn print(results: &[Outcome]) {
        let direct = rate_of(results, "direct");
        let sink = rate_of(results, "sink");
        println!();
        println!(
            "{:<8} {:>3} {:>11} {:>7} {:>8} {:>6} {:>7} {:>7} {:>6} {:>6}  {:>24}",
            "scenario",
            "C",
            "ok/N",
            "secs",
            "msg/s",
            "MB/s",
            "p50 ms",
            "p99 ms",
            "/direct",
            "/sink",
            "CPU s load/relay/up"
        );
        for o in results {
            println!(
                "{:<8} {:>3} {:>11} {:>7.2} {:>8.0} {:>6.1} {:>7} {:>7} {:>7} {:>6}  {:>24}",
                o.name,
                o.clients,
                format!("{}/{}", o.stats.ok, o.planned),
                o.elapsed.as_secs_f64(),
                o.rate(),
                o.mb_rate(),
                ms(o.stats.percentile_ms(0.50)),
                ms(o.stats.percentile_ms(0.99)),
                ratio(o.rate(), direct),
                ratio(o.rate(), sink),
                format!("{:.2}/{:.2}/{:.2}", o.cpu.load, o.cpu.relay, o.cpu.up),
            );
        }
        println!();
        for o in results {
            let mut notes = Vec::new();
            if let Some(f) = &o.failure {
                notes.push(format!("FAILED: {f}"));
            }
            if o.stats.error_count() > 0 {
                let errs: Vec<String> = o
                    .stats
                    .errors
                    .iter()
                    .map(|(k, v)| format!("{k} x{v}"))
                    .collect();
                notes.push(format!("errors: {}", errs.join(", ")));
            } else {
                notes.push("no errors".into());
            }
            if let (Some(after), Some(n)) = (o.delivered_after, o.delivered) {
                notes.push(format!(
                    "sandbox had all {n} after {:.2} s ({:.0} msg/s end to end)",
                    after.as_secs_f64(),
                    per_sec(n, after)
                ));
            } else if let Some(n) = o.delivered {
                notes.push(format!("sandbox received {n}"));
            }
            if let Some(n) = o.sessions {
                notes.push(format!("{n} upstream sessions"));
            }
            if let (Some(a), Some(t)) = (o.fsyncs_accept, o.fsyncs_total) {
                if t > 0 {
                    notes.push(format!(
                        "queue dir fsyncs: {a} by the last 250 ({:.3}/msg), {t} in all incl. removals ({:.3}/msg)",
                        a as f64 / o.planned as f64,
                        t as f64 / o.planned as f64
                    ));
                }
            }
            if o.stats.ok > 0 {
                notes.push(format!(
                    "CPU {:.2} s in all, {:.2} other ({:.2} s per 1000 msgs; relay {:.2} s per 1000)",
                    o.cpu.total,
                    o.cpu.other,
                    o.cpu.total * 1000.0 / o.stats.ok as f64,
                    o.cpu.relay * 1000.0 / o.stats.ok as f64
                ));
            }
            println!("{:<8} {}", o.name, notes.join("; "));
        }
    }

    pub fn json(params: &Params, results: &[Outcome]) -> String {
        let direct = rate_of(results, "direct");
        let sink = rate_of(results, "sink");
        let rows: Vec<serde_json::Value> = results
            .iter()
            .map(|o| {
                serde_json::json!({
                    "scenario": o.name,
                    "clients": o.clients,
                    "planned": o.planned,
                    "ok": o.stats.ok,
                    "seconds": o.elapsed.as_secs_f64(),
                    "messages_per_second": o.rate(),
                    "mb_per_second": o.mb_rate(),
                    "p50_ms": o.stats.percentile_ms(0.5),
                    "p99_ms": o.stats.percentile_ms(0.99),
                    "ratio_to_direct": direct.map(|d| o.rate() / d),
                    "ratio_to_sink": sink.map(|s| o.rate() / s),
                    "errors": o.stats.errors,
                    "delivered": o.delivered,
                    "delivered_after_seconds": o.delivered_after.map(|d| d.as_secs_f64()),
                    "queue_dir_fsyncs_at_last_reply": o.fsyncs_accept,
                    "queue_dir_fsyncs_total": o.fsyncs_total,
                    "upstream_sessions": o.sessions,
                    "cpu_seconds": {
                        "total": o.cpu.total, "load": o.cpu.load, "relay": o.cpu.relay,
                        "up": o.cpu.up, "other": o.cpu.other,
                    },
                    "failure": o.failure,
                })
            })
            .collect();
        serde_json::to_string_pretty(&serde_json::json!({
            "messages": params.messages,
            "concurrency": params.concurrency,
            "size": params.size,
            "upstream_max_connections": params.max_connections,
            "results": rows,
        }))
        .expect("JSON")
    }
}
