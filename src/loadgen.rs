//! `loadgen`: an SMTP load generator for benchmarks (DESIGN §1, user 3).
//!
//! C connections share N messages (or run for a duration). Each connection greets once
//! (EHLO, optional STARTTLS and AUTH) and then sends message after message on the same
//! session: `MAIL`, `RCPT` x R and `DATA` in one write when the server offers PIPELINING
//! (RFC 2920; the group ends at `DATA`), then the body and the final dot. Latency is measured
//! per transaction, from writing `MAIL` to reading the reply to the final dot. A refused
//! command counts under its stage and code (`RCPT 451`), is followed by `RSET`, and the
//! connection goes on; a broken connection counts as `io` and is opened again.
//!
//! Message bodies are built once per size: generated headers (with a unique `Message-ID`) and
//! 76-character filler lines that never start with `.`, so no dot-stuffing is needed and the
//! bytes on the wire are exactly the requested size.
//!
//! The pure parts (size specs, bodies, percentiles, the report) are tested below; the driver
//! is [`run`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::sync::Lock as _;
use crate::wire::Reply;

/// Message sizes: one size, a uniform range, or a weighted mix.
#[derive(Debug, Clone, PartialEq)]
pub enum SizeSpec {
    Fixed(usize),
    /// Uniform between the two, inclusive.
    Range(usize, usize),
    /// `(size, weight)` pairs.
    Mix(Vec<(usize, u32)>),
}

/// Smallest message we generate: the headers alone take this much.
pub const MIN_SIZE: usize = 300;

/// Parses `5000`, `5k`, `1m`, `1k-100k` or `1k:70,10k:25,1m:5` (k = 1,000, m = 1,000,000).
pub fn parse_size_spec(s: &str) -> Result<SizeSpec, String> {
    let one = |t: &str| -> Result<usize, String> {
        let t = t.trim().to_ascii_lowercase();
        let (num, mult) = match t.strip_suffix('k') {
            Some(n) => (n, 1_000),
            None => match t.strip_suffix('m') {
                Some(n) => (n, 1_000_000),
                None => (t.as_str(), 1),
            },
        };
        let n: f64 = num
            .parse()
            .map_err(|_| format!("`{t}` is not a size such as 5000, 5k or 1m"))?;
        let bytes = (n * mult as f64) as usize;
        if bytes < MIN_SIZE {
            return Err(format!("{bytes} bytes is too small (at least {MIN_SIZE})"));
        }
        Ok(bytes)
    };
    if s.contains(':') {
        let mut mix = Vec::new();
        for part in s.split(',') {
            let (size, weight) = part
                .split_once(':')
                .ok_or_else(|| format!("`{part}` is not SIZE:WEIGHT"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("`{weight}` is not a whole-number weight"))?;
            mix.push((one(size)?, weight));
        }
        if mix.iter().all(|(_, w)| *w == 0) {
            return Err("the weights add up to 0".into());
        }
        Ok(SizeSpec::Mix(mix))
    } else if let Some((lo, hi)) = s.split_once('-') {
        let (lo, hi) = (one(lo)?, one(hi)?);
        if lo > hi {
            return Err(format!("range {lo}-{hi} runs backwards"));
        }
        Ok(SizeSpec::Range(lo, hi))
    } else {
        Ok(SizeSpec::Fixed(one(s)?))
    }
}

impl SizeSpec {
    /// The size for the `n`th message; `r` is uniform in [0, 1).
    pub fn pick(&self, r: f64) -> usize {
        match self {
            SizeSpec::Fixed(n) => *n,
            SizeSpec::Range(lo, hi) => lo + ((hi - lo + 1) as f64 * r) as usize,
            SizeSpec::Mix(mix) => {
                let total: u32 = mix.iter().map(|(_, w)| w).sum();
                let mut at = (f64::from(total) * r) as u32;
                for (size, w) in mix {
                    if at < *w {
                        return *size;
                    }
                    at -= w;
                }
                mix.last().map(|(s, _)| *s).unwrap_or(MIN_SIZE)
            }
        }
    }

    /// The distinct sizes it can produce with a range sampled at 16 points (bodies are
    /// prepared for each).
    fn sizes(&self) -> Vec<usize> {
        match self {
            SizeSpec::Fixed(n) => vec![*n],
            SizeSpec::Range(lo, hi) => (0..16).map(|i| lo + (hi - lo) * i / 15).collect(),
            SizeSpec::Mix(mix) => mix.iter().map(|(s, _)| *s).collect(),
        }
    }
}

/// Authentication after STARTTLS (or in the clear if the server allows it).
#[derive(Clone)]
pub enum Auth {
    Plain {
        user: String,
        password: SecretString,
    },
    XOAuth2 {
        user: String,
        token: SecretString,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Plain { user, .. } => write!(f, "Plain({user}, <redacted>)"),
            Auth::XOAuth2 { user, .. } => write!(f, "XOAuth2({user}, <redacted>)"),
        }
    }
}

impl Auth {
    fn command(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        match self {
            Auth::Plain { user, password } => format!(
                "AUTH PLAIN {}\r\n",
                b64.encode(format!("\0{user}\0{}", password.expose_secret()))
            ),
            Auth::XOAuth2 { user, token } => format!(
                "AUTH XOAUTH2 {}\r\n",
                crate::wire::xoauth2::encode(user, token.expose_secret())
            ),
        }
    }
}

/// STARTTLS settings.
#[derive(Clone)]
pub struct Tls {
    pub server_name: String,
    pub config: Arc<rustls::ClientConfig>,
}

/// What to send, where, and how hard.
#[derive(Clone)]
pub struct Options {
    pub target: SocketAddr,
    /// Total messages; `None` runs until `duration`.
    pub messages: Option<u64>,
    pub duration: Option<Duration>,
    pub concurrency: usize,
    pub size: SizeSpec,
    pub recipients: u32,
    pub from: String,
    /// Recipients are `loadgen-<n>@<rcpt_domain>`.
    pub rcpt_domain: String,
    pub tls: Option<Tls>,
    pub auth: Option<Auth>,
    pub pipelining: bool,
    /// Print a progress line to stderr every this often.
    pub progress: Option<Duration>,
    /// Longest wait for any one reply.
    pub reply_timeout: Duration,
}

impl Options {
    /// Defaults for `target`: 1,000 messages of 5 KB, 10 connections, one recipient each.
    pub fn new(target: SocketAddr) -> Options {
        Options {
            target,
            messages: Some(1000),
            duration: None,
            concurrency: 10,
            size: SizeSpec::Fixed(5000),
            recipients: 1,
            from: "loadgen@loadgen.example".into(),
            rcpt_domain: "loadgen.example".into(),
            tls: None,
            auth: None,
            pipelining: true,
            progress: None,
            reply_timeout: Duration::from_secs(120),
        }
    }
}

/// What a run achieved.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub target: String,
    pub concurrency: usize,
    pub messages_ok: u64,
    pub messages_failed: u64,
    pub bytes_ok: u64,
    pub elapsed_secs: f64,
    pub messages_per_sec: f64,
    pub megabytes_per_sec: f64,
    /// Milliseconds, per transaction (MAIL .. the reply to the final dot), successful ones.
    pub latency_ms: Latency,
    /// `STAGE CODE` (e.g. `DATA 451`) or `io`/`connect` -> count.
    pub errors: BTreeMap<String, u64>,
    pub pipelining: bool,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Percentiles of `micros` (sorted in place). Nearest-rank.
pub fn latency(micros: &mut [u32]) -> Latency {
    if micros.is_empty() {
        return Latency::default();
    }
    micros.sort_unstable();
    let rank = |p: f64| {
        let i = ((p * micros.len() as f64).ceil() as usize).clamp(1, micros.len()) - 1;
        f64::from(micros[i]) / 1000.0
    };
    let sum: u64 = micros.iter().map(|&m| u64::from(m)).sum();
    Latency {
        p50: rank(0.50),
        p90: rank(0.90),
        p99: rank(0.99),
        max: f64::from(*micros.last().unwrap()) / 1000.0,
        mean: sum as f64 / micros.len() as f64 / 1000.0,
    }
}

impl Report {
    /// The human-readable summary.
    pub fn text(&self) -> String {
        let mut out = format!(
            "loadgen -> {}: {} messages ok, {} failed, in {:.3} s over {} connections{}\n",
            self.target,
            self.messages_ok,
            self.messages_failed,
            self.elapsed_secs,
            self.concurrency,
            if self.pipelining { " (pipelining)" } else { "" },
        );
        out += &format!(
            "  throughput: {:.1} msg/s, {:.2} MB/s\n",
            self.messages_per_sec, self.megabytes_per_sec
        );
        let l = &self.latency_ms;
        out += &format!(
            "  latency per transaction: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n",
            l.p50, l.p90, l.p99, l.max
        );
        if self.errors.is_empty() {
            out += "  errors: none\n";
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            out += &format!("  errors: {}\n", list.join(", "));
        }
        out
    }
}

/// A message body of exactly `size` bytes (ending in CRLF, no line starting with `.`), with
/// a placeholder Message-ID of fixed width that [`stamp`] fills in per message.
pub fn body(size: usize, from: &str) -> Vec<u8> {
    let mut b = format!(
        "From: <{from}>\r\nTo: <loadgen@loadgen.example>\r\nSubject: loadgen\r\n\
         Message-ID: <{}@loadgen>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n",
        "0".repeat(ID_WIDTH)
    )
    .into_bytes();
    const LINE: &[u8] =
        b"The quick brown fox jumps over the lazy dog; 0123456789 abcdefghijklmnopqr";
    while b.len() + 2 < size {
        let room = size - b.len() - 2;
        let take = room.min(LINE.len());
        b.extend_from_slice(&LINE[..take]);
        b.extend_from_slice(b"\r\n");
    }
    // Pad a last short gap (0 or 1 byte) without breaking CRLF: widen the last line.
    while b.len() < size {
        let at = b.len() - 2;
        b.insert(at, b'x');
    }
    b
}

const ID_WIDTH: usize = 20;

/// Writes `n` into the Message-ID placeholder of a [`body`].
pub fn stamp(body: &mut [u8], n: u64) {
    let marker = b"Message-ID: <";
    if let Some(at) = memchr::memmem::find(body, marker) {
        let digits = format!("{n:0width$}", width = ID_WIDTH);
        let start = at + marker.len();
        body[start..start + ID_WIDTH].copy_from_slice(&digits.as_bytes()[..ID_WIDTH]);
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Conn {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    timeout: Duration,
}

#[derive(Debug)]
enum Failure {
    /// The server refused: stage and reply.
    Refused(&'static str, u16),
    Io(String),
}

impl Conn {
    async fn reply(&mut self) -> Result<Reply, Failure> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match Reply::parse(&self.buf) {
                Ok(Some((r, used))) => {
                    self.buf.drain(..used);
                    return Ok(r);
                }
                Ok(None) => {}
                Err(e) => return Err(Failure::Io(e.to_string())),
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.io.read(&mut chunk))
                .await
                .map_err(|_| Failure::Io("reply timeout".into()))?
                .map_err(|e| Failure::Io(e.to_string()))?;
            if n == 0 {
                return Err(Failure::Io("connection closed".into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn expect(&mut self, stage: &'static str, class: u16) -> Result<Reply, Failure> {
        let r = self.reply().await?;
        if r.code / 100 != class {
            return Err(Failure::Refused(stage, r.code));
        }
        Ok(r)
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.io
            .write_all(bytes)
            .await
            .map_err(|e| Failure::Io(e.to_string()))
    }

    async fn cmd(&mut self, line: &str, stage: &'static str, class: u16) -> Result<Reply, Failure> {
        self.send(line.as_bytes()).await?;
        self.expect(stage, class).await
    }
}

/// Opens a session: greeting, EHLO, STARTTLS and AUTH as configured. Returns the connection
/// and whether the server offers PIPELINING.
async fn open(o: &Options) -> Result<(Conn, bool), Failure> {
    let tcp = tokio::time::timeout(o.reply_timeout, TcpStream::connect(o.target))
        .await
        .map_err(|_| Failure::Io("connect timeout".into()))?
        .map_err(|e| Failure::Io(format!("connect: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let mut c = Conn {
        io: Box::new(tcp),
        buf: Vec::with_capacity(4096),
        timeout: o.reply_timeout,
    };
    c.expect("greeting", 2).await?;
    let mut ehlo = c.cmd("EHLO loadgen.example\r\n", "EHLO", 2).await?;
    if let Some(tls) = &o.tls {
        c.cmd("STARTTLS\r\n", "STARTTLS", 2).await?;
        let name = rustls_pki_types::ServerName::try_from(tls.server_name.clone())
            .map_err(|e| Failure::Io(format!("TLS name: {e}")))?;
        let Conn { io, buf, timeout } = c;
        if !buf.is_empty() {
            return Err(Failure::Io("data after STARTTLS reply".into()));
        }
        let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
            .connect(name, io)
            .await
            .map_err(|e| Failure::Io(format!("TLS: {e}")))?;
        c = Conn {
            io: Box::new(stream),
            buf,
            timeout,
        };
        ehlo = c.cmd("EHLO loadgen.example\r\n", "EHLO", 2).await?;
    }
    if let Some(auth) = &o.auth {
        c.cmd(&auth.command(), "AUTH", 2).await?;
    }
    let pipelining = ehlo
        .lines
        .iter()
        .any(|l| l.eq_ignore_ascii_case("PIPELINING"));
    Ok((c, pipelining))
}

/// One transaction; `Ok` on `250` after the final dot.
async fn transaction(
    c: &mut Conn,
    o: &Options,
    pipelined: bool,
    body: &[u8],
    n: u64,
) -> Result<(), Failure> {
    let mut envelope = format!("MAIL FROM:<{}> SIZE={}\r\n", o.from, body.len());
    for r in 0..o.recipients {
        envelope += &format!(
            "RCPT TO:<loadgen-{}@{}>\r\n",
            (n + u64::from(r)) % 1000,
            o.rcpt_domain
        );
    }
    if pipelined {
        envelope += "DATA\r\n";
        c.send(envelope.as_bytes()).await?;
        let mut refused = None;
        let mail = c.reply().await?;
        if mail.code / 100 != 2 {
            refused.get_or_insert(Failure::Refused("MAIL", mail.code));
        }
        for _ in 0..o.recipients {
            let r = c.reply().await?;
            if r.code / 100 != 2 {
                refused.get_or_insert(Failure::Refused("RCPT", r.code));
            }
        }
        let data = c.reply().await?;
        if data.code != 354 {
            refused.get_or_insert(Failure::Refused("DATA", data.code));
            return Err(refused.unwrap());
        }
        if let Some(f) = refused {
            // DATA was accepted although an earlier command failed: end the (empty) message.
            c.send(b".\r\n").await?;
            let _ = c.reply().await?;
            return Err(f);
        }
    } else {
        c.cmd(
            &format!("MAIL FROM:<{}> SIZE={}\r\n", o.from, body.len()),
            "MAIL",
            2,
        )
        .await?;
        for line in envelope.lines().skip(1) {
            c.cmd(&format!("{line}\r\n"), "RCPT", 2).await?;
        }
        c.cmd("DATA\r\n", "DATA", 3).await?;
    }
    c.send(body).await?;
    c.send(b".\r\n").await?;
    c.expect("end of data", 2).await.map(|_| ())
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    bytes: u64,
    micros: Vec<u32>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn error(&mut self, f: &Failure) {
        let key = match f {
            Failure::Refused(stage, code) => format!("{stage} {code}"),
            Failure::Io(_) => "io".to_string(),
        };
        *self.errors.entry(key).or_default() += 1;
    }
}

/// Runs the load and returns the report. The first error of each kind that is not a reply
/// (I/O, TLS) is printed to stderr once, so a misconfiguration is visible.
pub async fn run(o: Options) -> Report {
    let o = Arc::new(o);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let said = Arc::new(Mutex::new(std::collections::HashSet::<String>::new()));
    let bodies: Arc<BTreeMap<usize, Vec<u8>>> = Arc::new(
        o.size
            .sizes()
            .into_iter()
            .map(|s| (s, body(s, &o.from)))
            .collect(),
    );
    let started = Instant::now();
    let deadline = o.duration.map(|d| started + d);
    let progress = o.progress.map(|every| {
        let (done, stop) = (done.clone(), stop.clone());
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            loop {
                tokio::time::sleep(every).await;
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let now = (Instant::now(), done.load(Ordering::Relaxed));
                let rate = (now.1 - last.1) as f64 / (now.0 - last.0).as_secs_f64();
                eprintln!(
                    "loadgen: {} messages in {:.0} s, {:.0} msg/s now",
                    now.1,
                    started.elapsed().as_secs_f64(),
                    rate
                );
                last = now;
            }
        })
    });
    let mut workers = Vec::new();
    for w in 0..o.concurrency.max(1) {
        let (o, next, done, bodies, said) = (
            o.clone(),
            next.clone(),
            done.clone(),
            bodies.clone(),
            said.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let mut conn: Option<(Conn, bool)> = None;
            let mut rng_state: u64 = 0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1);
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                if o.messages.is_some_and(|m| n >= m) {
                    break;
                }
                if conn.is_none() {
                    match open(&o).await {
                        Ok(c) => conn = Some(c),
                        Err(f) => {
                            report_once(&said, &f);
                            t.error(&f);
                            t.failed += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    }
                }
                let (c, offers_pipelining) = conn.as_mut().expect("connected");
                // xorshift: cheap, deterministic per worker.
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                let size = o.size.pick((rng_state >> 11) as f64 / (1u64 << 53) as f64);
                let key = *bodies
                    .range(..=size)
                    .next_back()
                    .map(|(k, _)| k)
                    .unwrap_or_else(|| bodies.keys().next().expect("a body"));
                let mut msg = bodies[&key].clone();
                stamp(&mut msg, n);
                let t0 = Instant::now();
                match transaction(c, &o, o.pipelining && *offers_pipelining, &msg, n).await {
                    Ok(()) => {
                        t.ok += 1;
                        t.bytes += msg.len() as u64;
                        t.micros
                            .push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    }
                    Err(f) => {
                        t.failed += 1;
                        t.error(&f);
                        match f {
                            Failure::Io(_) => {
                                report_once(&said, &f);
                                conn = None;
                            }
                            Failure::Refused(..) => {
                                if c.cmd("RSET\r\n", "RSET", 2).await.is_err() {
                                    conn = None;
                                }
                            }
                        }
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            if let Some((mut c, _)) = conn {
                let _ = c.send(b"QUIT\r\n").await;
                let _ = tokio::time::timeout(Duration::from_secs(1), c.reply()).await;
            }
            t
        }));
    }
    let mut total = Tally::default();
    for w in workers {
        if let Ok(t) = w.await {
            total.ok += t.ok;
            total.failed += t.failed;
            total.bytes += t.bytes;
            total.micros.extend(t.micros);
            for (k, v) in t.errors {
                *total.errors.entry(k).or_default() += v;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        p.abort();
    }
    Report {
        target: o.target.to_string(),
        concurrency: o.concurrency,
        messages_ok: total.ok,
        messages_failed: total.failed,
        bytes_ok: total.bytes,
        elapsed_secs: elapsed,
        messages_per_sec: total.ok as f64 / elapsed.max(1e-9),
        megabytes_per_sec: total.bytes as f64 / 1e6 / elapsed.max(1e-9),
        latency_ms: latency(&mut total.micros),
        errors: total.errors,
        pipelining: o.pipelining,
    }
}

fn report_once(said: &Mutex<std::collections::HashSet<String>>, f: &Failure) {
    if let Failure::Io(text) = f {
        if said.locked().insert(text.clone()) {
            eprintln!("loadgen: {text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_specs() {
        assert_eq!(parse_size_spec("5000"), Ok(SizeSpec::Fixed(5000)));
        assert_eq!(parse_size_spec("5k"), Ok(SizeSpec::Fixed(5000)));
        assert_eq!(parse_size_spec("1.5m"), Ok(SizeSpec::Fixed(1_500_000)));
        assert_eq!(
            parse_size_spec("1k-100k"),
            Ok(SizeSpec::Range(1000, 100_000))
        );
        assert_eq!(
            parse_size_spec("1k:70,10k:25,1m:5"),
            Ok(SizeSpec::Mix(vec![
                (1000, 70),
                (10_000, 25),
                (1_000_000, 5)
            ]))
        );
        for bad in ["", "x", "10", "5k-1k", "1k:x", "1k:0", "1k;3"] {
            assert!(parse_size_spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn picks_follow_the_spec() {
        let mix = parse_size_spec("1k:3,2k:1").unwrap();
        let picks: Vec<usize> = (0..4).map(|i| mix.pick(f64::from(i) / 4.0)).collect();
        assert_eq!(picks, [1000, 1000, 1000, 2000]);
        let range = SizeSpec::Range(1000, 2000);
        assert_eq!(range.pick(0.0), 1000);
        assert_eq!(range.pick(0.999_999), 2000);
    }

    #[test]
    fn bodies_have_the_exact_size_and_need_no_stuffing() {
        for size in [MIN_SIZE, 301, 302, 377, 5000, 65_536, 1_000_001] {
            let mut b = body(size, "a@b");
            assert_eq!(b.len(), size);
            assert!(b.ends_with(b"\r\n"));
            assert!(!b.windows(3).any(|w| w == b"\n.\r" || w == b"\n.."));
            assert!(!b.split(|&c| c == b'\n').any(|l| l.starts_with(b".")));
            assert!(b.split(|&c| c == b'\n').all(|l| l.len() <= 1000));
            stamp(&mut b, 42);
            let text = String::from_utf8(b).unwrap();
            assert!(text.contains("Message-ID: <00000000000000000042@loadgen>"));
            assert_eq!(text.len(), size);
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        let l = latency(&mut v);
        assert_eq!((l.p50, l.p90, l.p99, l.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(l.mean, 50.5);
        assert_eq!(latency(&mut []), Latency::default());
    }

    #[test]
    fn auth_is_redacted_in_debug() {
        let a = Auth::XOAuth2 {
            user: "u@x".into(),
            token: SecretString::from("eyJ-secret-token"),
        };
        assert!(!format!("{a:?}").contains("secret-token"));
        assert!(a.command().starts_with("AUTH XOAUTH2 "));
    }

    #[test]
    fn report_text_names_errors() {
        let mut errors = BTreeMap::new();
        errors.insert("DATA 451".to_string(), 3);
        let r = Report {
            target: "127.0.0.1:2525".into(),
            concurrency: 2,
            messages_ok: 10,
            messages_failed: 3,
            bytes_ok: 50_000,
            elapsed_secs: 1.0,
            messages_per_sec: 10.0,
            megabytes_per_sec: 0.05,
            latency_ms: Latency::default(),
            errors,
            pipelining: true,
        };
        let t = r.text();
        assert!(t.contains("10 messages ok, 3 failed"), "{t}");
        assert!(t.contains("errors: DATA 451: 3"), "{t}");
    }
}
