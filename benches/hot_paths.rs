//! Micro-benchmarks of the relay's hot paths (issue 6), with criterion.
//!
//! Run: `cargo bench --bench hot_paths` (about a minute), or `cargo bench --bench hot_paths --
//! --quick` for a rough pass. A name after `--` filters, e.g. `-- spool`.
//!
//! Groups:
//! - `inbound_data`: `BodyDecoder` on a ~1 MiB body fed in 64 KiB reads as the listener does
//!   (decode, then drain what was consumed): a text message with many dot-stuffed lines, and a
//!   base64 attachment (no stuffing, 76-byte lines). Throughput in wire bytes.
//! - `inbound_commands`: a fresh `Session` answering a pipelined `EHLO`, `MAIL`, 2 x `RCPT`,
//!   `DATA` the way the listener does it (framed with `LineFramer`, parsed with smtp-proto's
//!   `Request::parse`, replies written to the output buffer). Throughput in commands.
//! - `spool_commit`: `Spool::commit` of a 5 KB body with real fsyncs, one at a time and 32 at
//!   once (group commit of the queue directory's fsync). Throughput in messages; directory
//!   fsyncs per message are printed. The spool lives under `BENCH_SPOOL_DIR` if set, else the
//!   system temporary directory (a real disk, not tmpfs: the fsyncs are what is measured).
//! - `token_cache`: `TokenCache::get` with a fresh token cached (the per-connection cost).
//! - `upstream_reply`: `classify_reply` over a mix of Exchange Online replies (parsed before
//!   timing), and, for scale, `UpstreamReply::parse` of the same texts.
//! - `audit`: `MessageIdSniffer::feed` over a typical ~2 KB header block.
//!
//! Timed work only: bodies and replies are built before the timed loops; the spool's incoming
//! files are written (without fsync, as the listener leaves them) outside the timed part.

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use secrecy::SecretString;
use smtp_oauth_relay::envelope::MessageId;
use smtp_oauth_relay::smtp::framing::{Framed, LineFramer};
use smtp_oauth_relay::smtp::reply;
use smtp_oauth_relay::smtp::session::{Action, Session, SessionConfig};
use smtp_oauth_relay::spool::{now_unix, QueueEntry, Spool};
use smtp_oauth_relay::token::{AccessToken, FetchFuture, TokenCache, TokenSource};
use smtp_oauth_relay::upstream::error::classify_reply;
use smtp_oauth_relay::wire::data::{BodyDecoder, Progress};
use smtp_oauth_relay::wire::header::MessageIdSniffer;
use smtp_oauth_relay::wire::Reply as UpstreamReply;
use smtp_proto::Request;

/// The listener's read buffer.
const READ_CHUNK: usize = 64 * 1024;
/// The default `listen.max_message_size` (Exchange's limit).
const MAX_MESSAGE_SIZE: u64 = 35 * 1024 * 1024;
/// Target size of the DATA benchmark bodies.
const BODY_SIZE: usize = 1024 * 1024;
/// Body size for the spool commits (issue 6's 5 KB messages).
const SPOOL_BODY_SIZE: usize = 5 * 1024;
/// Commits in flight at once in the group-commit benchmark.
const CONCURRENT_COMMITS: usize = 32;

const MESSAGE_ID: &str = "<CAF3x9q2V+Lk7YwN0b1oR8tT4uZ5aB6cD7eF8gH9iJ@mail.app.example.com>";

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/// A small deterministic generator (xorshift64*), so every run decodes the same bytes.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A typical header block of an application's message after a hop or two: about 2 KB, the
/// `Message-ID` late in it (so the sniffer scans most of the block), ending with the blank line.
fn header_block() -> String {
    let mut h = String::new();
    h.push_str(
        "Received: from app-worker-7.internal.example.com (app-worker-7.internal.example.com [10.20.30.47])\r\n\
         \tby mta1.internal.example.com (Postfix) with ESMTPS id 4XyZ2k1Lq9z3Wm\r\n\
         \tfor <orders@customer.example.org>; Tue, 14 Oct 2025 09:41:27 +0000 (UTC)\r\n\
         Received: from localhost (localhost [127.0.0.1])\r\n\
         \tby app-worker-7.internal.example.com (Postfix) with ESMTP id 9F1C2A0B3D\r\n\
         \tfor <orders@customer.example.org>; Tue, 14 Oct 2025 09:41:26 +0000 (UTC)\r\n\
         DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=app.example.com;\r\n\
         \ts=selector1; t=1760434886; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n\
         \th=From:To:Subject:Date:Message-ID:MIME-Version:Content-Type;\r\n\
         \tb=Jq3mZk0oV9cR2bT7xY4wN1aL8pE6uH5sD3fG0jK9lM2nB4vC7xZ1qW8eR5tY2uI6oP3aS9dF4g\r\n\
         \tH7jK0lZ2xC5vB8nM1qW4eR7tY0uI3oP6aS9dF2gH5jK8lZ1xC4vB7nM0qW3eR6tY9uI2oP5aS8dF1\r\n\
         \tgH4jK7lZ0xC3vB6nM9qW2eR5tY8uI1oP4aS7dF0gH3jK6lZ9xC2vB5nM8qW1eR4tY7uI0oP3aS6d\r\n\
         \tF9gH2jK5lZ8xC1vB4nM7qW0eR3tY6uI9oP2aS5dF8gH1jK4lZ7xC0vB3nM6qW9eR2tY5uI8oP1aS\r\n\
         From: \"Order Service\" <orders-noreply@app.example.com>\r\n\
         Reply-To: support@app.example.com\r\n\
         To: \"Customer Orders\" <orders@customer.example.org>\r\n\
         Cc: archive@app.example.com\r\n\
         Subject: =?UTF-8?Q?Your_order_#A-2025-104857_has_shipped_=E2=80=93_tracking?=\r\n\
         \t=?UTF-8?Q?_details_inside?=\r\n\
         Date: Tue, 14 Oct 2025 09:41:26 +0000\r\n\
         X-Mailer: app-notifier/4.12.0 (+https://app.example.com/notifier)\r\n\
         X-App-Tenant: 3f2b9c1e-7a4d-4e8f-9b6a-2c5d8e1f0a3b\r\n\
         X-App-Correlation-Id: 0d9e8f7a-6b5c-4d3e-2f1a-0b9c8d7e6f5a\r\n\
         List-Unsubscribe: <https://app.example.com/unsubscribe?u=7f3a9c&l=orders>,\r\n\
         \t<mailto:unsubscribe@app.example.com?subject=unsubscribe-7f3a9c>\r\n\
         List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\
         Auto-Submitted: auto-generated\r\n\
         Precedence: bulk\r\n\
         Feedback-ID: orders:shipping:app-notifier:app.example.com\r\n\
         Thread-Topic: Your order #A-2025-104857 has shipped\r\n\
         Thread-Index: AdwG3k1Lq9z3WmXyZ2k1Lq9z3WmXyZ2k1Lq9z3Wm==\r\n\
         Content-Language: en-US\r\n\
         X-MS-Has-Attach: yes\r\n\
         X-MS-TNEF-Correlator:\r\n",
    );
    h.push_str("Message-ID: ");
    h.push_str(MESSAGE_ID);
    h.push_str(
        "\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed;\r\n\
         \tboundary=\"----=_Part_104857_1760434886.1760434886123\"\r\n\
         \r\n",
    );
    h
}

/// A text body of realistic lines (mostly 40-78 bytes, some short, some blank) where about one
/// line in six starts with `.` (lists, log excerpts, `...`), with the header block in front.
/// Returns (wire bytes, dot-stuffed and ending in `CRLF.CRLF`; the decoded body).
fn text_body(rng: &mut Rng) -> (Vec<u8>, Vec<u8>) {
    const WORDS: &[&str] = &[
        "the",
        "order",
        "shipment",
        "tracking",
        "customer",
        "invoice",
        "warehouse",
        "delivery",
        "package",
        "status",
        "update",
        "please",
        "contact",
        "support",
        "reference",
        "item",
        "quantity",
        "total",
        "EUR",
        "2025-10-14",
        "A-2025-104857",
        "carrier",
        "estimated",
        "arrival",
        "address",
        "line",
        "and",
        "for",
        "with",
        "your",
        "is",
        "has",
        "been",
    ];
    let mut decoded = header_block().into_bytes();
    while decoded.len() < BODY_SIZE {
        let mut line = String::new();
        match rng.below(20) {
            0 => {} // blank line
            1..=3 => line.push('.'),
            4 => line.push_str("..."),
            _ => {}
        }
        let target = match rng.below(10) {
            0 => 5 + rng.below(20),
            _ => 40 + rng.below(39),
        } as usize;
        if !line.is_empty() || target > 0 {
            while line.len() < target {
                if !line.is_empty() && !line.ends_with('.') {
                    line.push(' ');
                }
                line.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
            }
            line.truncate(78);
        }
        decoded.extend_from_slice(line.as_bytes());
        decoded.extend_from_slice(b"\r\n");
    }
    (stuff(&decoded), decoded)
}

/// A base64 attachment of about the same size: 76-byte lines, nothing to unstuff.
fn base64_body(rng: &mut Rng) -> (Vec<u8>, Vec<u8>) {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut decoded = header_block().into_bytes();
    decoded.extend_from_slice(
        b"------=_Part_104857_1760434886.1760434886123\r\n\
          Content-Type: application/pdf; name=\"invoice-A-2025-104857.pdf\"\r\n\
          Content-Transfer-Encoding: base64\r\n\
          Content-Disposition: attachment; filename=\"invoice-A-2025-104857.pdf\"\r\n\r\n",
    );
    while decoded.len() < BODY_SIZE {
        for _ in 0..76 {
            decoded.push(ALPHABET[rng.below(64) as usize]);
        }
        decoded.extend_from_slice(b"\r\n");
    }
    decoded.extend_from_slice(b"------=_Part_104857_1760434886.1760434886123--\r\n");
    (stuff(&decoded), decoded)
}

/// Dot-stuffs a CRLF-terminated body and appends the end-of-data marker.
fn stuff(decoded: &[u8]) -> Vec<u8> {
    let mut wire = Vec::with_capacity(decoded.len() + decoded.len() / 32 + 8);
    for line in decoded.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
    }
    wire.extend_from_slice(b".\r\n");
    wire
}

/// The listener's DATA loop without the socket and the file: append a read, decode, drain
/// what was consumed. Returns the decoded length (the bytes that would go to the spool).
fn receive(wire: &[u8], input: &mut Vec<u8>, decoded: &mut Vec<u8>) -> usize {
    input.clear();
    let mut decoder = BodyDecoder::new(MAX_MESSAGE_SIZE);
    let mut written = 0;
    for read in wire.chunks(READ_CHUNK) {
        input.extend_from_slice(read);
        let (progress, consumed) = {
            let mut iter = input.iter();
            let progress = decoder.ingest(&mut iter, decoded);
            (progress, input.len() - iter.as_slice().len())
        };
        input.drain(..consumed);
        if !decoded.is_empty() {
            written += decoded.len();
            black_box(&decoded[..]);
            decoded.clear();
        }
        if progress == Progress::Done {
            return written;
        }
    }
    panic!("end of data not found");
}

/// Checks once, untimed, that the decoder returns exactly the body that was stuffed.
fn check_decode(wire: &[u8], expected: &[u8]) {
    let mut input = Vec::new();
    let mut decoder = BodyDecoder::new(MAX_MESSAGE_SIZE);
    let mut out = Vec::new();
    let mut done = false;
    for read in wire.chunks(READ_CHUNK) {
        input.extend_from_slice(read);
        let mut iter = input.iter();
        done = decoder.ingest(&mut iter, &mut out) == Progress::Done;
        let consumed = input.len() - iter.as_slice().len();
        input.drain(..consumed);
    }
    assert!(done && input.is_empty(), "decoder did not end at CRLF.CRLF");
    assert!(out == expected, "decoded body differs from the original");
}

// ---------------------------------------------------------------------------------------------
// 1. Inbound session parsing
// ---------------------------------------------------------------------------------------------

fn inbound_data(c: &mut Criterion) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let bodies = [
        ("text_dot_stuffed_1MiB", text_body(&mut rng)),
        ("base64_attachment_1MiB", base64_body(&mut rng)),
    ];
    let mut group = c.benchmark_group("inbound_data");
    for (name, (wire, decoded)) in &bodies {
        check_decode(wire, decoded);
        let stuffed = wire.len() - decoded.len() - 3;
        println!(
            "inbound_data/{name}: {} wire bytes, {} lines, {stuffed} dot-stuffed",
            wire.len(),
            decoded.split(|&b| b == b'\n').count() - 1,
        );
        group.throughput(Throughput::Bytes(wire.len() as u64));
        let mut input = Vec::with_capacity(8192);
        let mut out = Vec::with_capacity(READ_CHUNK);
        group.bench_function(*name, |b| {
            b.iter(|| receive(black_box(wire), &mut input, &mut out))
        });
    }
    group.finish();
}

/// The commands of one typical message from an application that pipelines (RFC 2920).
const COMMANDS: &[u8] = b"EHLO app-worker-7.internal.example.com\r\n\
    MAIL FROM:<orders-noreply@app.example.com> SIZE=48213 BODY=8BITMIME\r\n\
    RCPT TO:<orders@customer.example.org>\r\n\
    RCPT TO:<archive@app.example.com>\r\n\
    DATA\r\n";

/// One connection's command phase as the listener runs it: frame, parse, decide, write the
/// reply. Returns the number of commands answered.
fn run_commands(config: &SessionConfig, peer: SocketAddr, out: &mut Vec<u8>) -> usize {
    let mut session = Session::new(config.clone(), peer);
    let mut lines = LineFramer::default();
    out.clear();
    let mut consumed = 0;
    let mut answered = 0;
    while let Some((frame, used)) = lines.next_line(&COMMANDS[consumed..]) {
        consumed += used;
        let action = match frame {
            Framed::Line(line) => session.command(Request::parse(&mut line.iter())),
            Framed::TooLong => Action::Reply(reply::line_too_long()),
            Framed::Skipped => continue,
        };
        answered += 1;
        match action {
            Action::Reply(r) => r.write_to(out),
            Action::StartData(r, t) => {
                r.write_to(out);
                assert_eq!(t.rcpt_to.len(), 2);
                black_box(t);
                break;
            }
            Action::Close(r) => {
                r.write_to(out);
                break;
            }
            Action::StartTls(_) | Action::Auth { .. } => unreachable!("not offered here"),
        }
    }
    answered
}

fn inbound_commands(c: &mut Criterion) {
    let config = SessionConfig {
        hostname: "relay.internal.example.com".into(),
        max_message_size: MAX_MESSAGE_SIZE,
        max_recipients: 100,
        security: Default::default(),
    };
    let peer: SocketAddr = "10.20.30.47:51234".parse().unwrap();
    let mut out = Vec::with_capacity(1024);
    let n = run_commands(&config, peer, &mut out);
    let replies = String::from_utf8_lossy(&out);
    let codes: Vec<&str> = replies
        .lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .map(|l| &l[..3])
        .collect();
    assert_eq!(n, 5);
    assert_eq!(codes, ["250", "250", "250", "250", "354"], "{replies}");

    let mut group = c.benchmark_group("inbound_commands");
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function("ehlo_mail_rcpt2_data", |b| {
        b.iter(|| run_commands(&config, black_box(peer), &mut out))
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// 2. Spool commit
// ---------------------------------------------------------------------------------------------

fn spool_parent() -> PathBuf {
    std::env::var_os("BENCH_SPOOL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// Writes an incoming body the way the listener leaves it (written, flushed, not fsync'd) and
/// the envelope delivery would commit with it.
fn prepare(spool: &Spool, body: &[u8]) -> (PathBuf, QueueEntry) {
    let id = MessageId::generate();
    let path = spool.incoming_path(&id);
    std::fs::write(&path, body).unwrap();
    let now = now_unix();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let entry = {
        let mut e = QueueEntry::new(
            id.to_string(),
            "orders-noreply@app.example.com".into(),
            vec!["orders@customer.example.org".into()],
            "relay@tenant.example.com".into(),
            body.len() as u64,
        );
        e.client = "10.20.30.47:51234".into();
        e.helo = "app-worker-7.internal.example.com".into();
        e.body_8bit = true;
        e.received_at = now;
        e.next_attempt = now;
        e.message_id = Some(MESSAGE_ID.into());
        e.received_at_ms = now_ms;
        e
    };
    (path, entry)
}

/// Removes committed messages (untimed), as delivery would, so the queue directory stays small.
fn clear_queue(spool: &Spool, ids: &[String]) {
    for id in ids {
        let _ = std::fs::remove_file(spool.body_path(id));
        let _ = std::fs::remove_file(spool.root().join("queue").join(format!("{id}.json")));
    }
}

#[derive(Default)]
struct CommitStats {
    commits: AtomicU64,
    fsyncs: AtomicU64,
}

impl CommitStats {
    fn add(&self, commits: u64, fsyncs: u64) {
        self.commits.fetch_add(commits, Ordering::Relaxed);
        self.fsyncs.fetch_add(fsyncs, Ordering::Relaxed);
    }

    fn report(&self, name: &str) {
        let commits = self.commits.load(Ordering::Relaxed);
        let fsyncs = self.fsyncs.load(Ordering::Relaxed);
        println!(
            "spool_commit/{name}: {commits} commits, {fsyncs} queue directory fsyncs ({:.3} per message)",
            fsyncs as f64 / commits.max(1) as f64
        );
    }
}

fn spool_commit(c: &mut Criterion) {
    // Like the relay: a multi-thread runtime (commit uses spawn_blocking for the fsyncs).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let parent = spool_parent();
    let dir = tempfile::Builder::new()
        .prefix("hot-paths-spool-")
        .tempdir_in(&parent)
        .unwrap_or_else(|e| panic!("cannot create a spool under {}: {e}", parent.display()));
    let body: Vec<u8> = header_block()
        .into_bytes()
        .into_iter()
        .chain(std::iter::repeat_n(b'x', SPOOL_BODY_SIZE))
        .take(SPOOL_BODY_SIZE)
        .collect();
    println!("spool_commit: spool in {}", dir.path().display());

    let mut group = c.benchmark_group("spool_commit");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    // One message at a time: every commit pays its own directory fsync.
    let (spool, _) = Spool::open(&dir.path().join("sequential")).unwrap();
    let stats = Arc::new(CommitStats::default());
    group.throughput(Throughput::Elements(1));
    group.bench_function("sequential", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (spool, stats, body) = (spool.clone(), stats.clone(), &body);
            async move { commit_sequential(&spool, &stats, body, iters).await }
        })
    });
    stats.report("sequential");

    // CONCURRENT_COMMITS at once, as many clients finishing DATA together: one directory
    // fsync covers every rename made before it started.
    let (spool, _) = Spool::open(&dir.path().join("concurrent")).unwrap();
    let stats = Arc::new(CommitStats::default());
    group.throughput(Throughput::Elements(CONCURRENT_COMMITS as u64));
    group.bench_function(format!("concurrent_{CONCURRENT_COMMITS}"), |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (spool, stats, body) = (spool.clone(), stats.clone(), &body);
            async move { commit_concurrent(&spool, &stats, body, iters).await }
        })
    });
    stats.report(&format!("concurrent_{CONCURRENT_COMMITS}"));
    group.finish();
}

async fn commit_sequential(
    spool: &Spool,
    stats: &CommitStats,
    body: &[u8],
    iters: u64,
) -> Duration {
    let mut timed = Duration::ZERO;
    let mut ids = Vec::with_capacity(iters as usize);
    let fsyncs = spool.queue_dir_fsyncs();
    for _ in 0..iters {
        let (path, entry) = prepare(spool, body);
        let start = Instant::now();
        spool.commit(&path, &entry).await.unwrap();
        timed += start.elapsed();
        ids.push(entry.id);
    }
    stats.add(iters, spool.queue_dir_fsyncs() - fsyncs);
    clear_queue(spool, &ids);
    timed
}

async fn commit_concurrent(
    spool: &Spool,
    stats: &CommitStats,
    body: &[u8],
    iters: u64,
) -> Duration {
    let mut timed = Duration::ZERO;
    let mut ids = Vec::with_capacity(iters as usize * CONCURRENT_COMMITS);
    let fsyncs = spool.queue_dir_fsyncs();
    for _ in 0..iters {
        let batch: Vec<(PathBuf, QueueEntry)> = (0..CONCURRENT_COMMITS)
            .map(|_| prepare(spool, body))
            .collect();
        ids.extend(batch.iter().map(|(_, e)| e.id.clone()));
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (path, entry) in batch {
            let spool = spool.clone();
            tasks.spawn(async move { spool.commit(&path, &entry).await });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap().unwrap();
        }
        timed += start.elapsed();
    }
    stats.add(
        iters * CONCURRENT_COMMITS as u64,
        spool.queue_dir_fsyncs() - fsyncs,
    );
    clear_queue(spool, &ids);
    timed
}

// ---------------------------------------------------------------------------------------------
// 3. Token cache hit
// ---------------------------------------------------------------------------------------------

/// A token source that answers at once with a one-hour token and counts its calls.
struct FakeSource {
    fetches: AtomicU64,
}

impl TokenSource for FakeSource {
    fn fetch(&self) -> FetchFuture<'_> {
        Box::pin(async move {
            let n = self.fetches.fetch_add(1, Ordering::Relaxed) + 1;
            Ok(AccessToken::new(
                SecretString::from(format!(
                    "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.bench-{n}.sig"
                )),
                3599,
            ))
        })
    }

    fn describe(&self) -> String {
        "bench fake source".into()
    }
}

fn token_cache(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let source = Arc::new(FakeSource {
        fetches: AtomicU64::new(0),
    });
    let cache = TokenCache::new(source.clone(), Duration::from_secs(300));
    rt.block_on(cache.get()).unwrap();
    assert_eq!(cache.fetch_count(), 1);

    let mut group = c.benchmark_group("token_cache");
    group.throughput(Throughput::Elements(1));
    let cache = &cache;
    group.bench_function("get_fresh_hit", |b| b.to_async(&rt).iter(|| cache.get()));
    group.finish();
    assert_eq!(
        source.fetches.load(Ordering::Relaxed),
        1,
        "a fresh token must be served from the cache"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Reply classification and Message-ID sniffing
// ---------------------------------------------------------------------------------------------

/// What Exchange Online answers (shared/reference/exchange-online.md §3-§6), weighted toward the
/// happy path as a busy relay sees it.
const EXCHANGE_REPLIES: &[&str] = &[
    "250 2.1.0 Sender OK",
    "250 2.1.5 Recipient OK",
    "250 2.1.5 Recipient OK",
    "354 Start mail input; end with <CRLF>.<CRLF>",
    "250 2.0.0 OK <AM9PR07MB7249D1E5B3C4A2F0E9D8C7B6A5F4E3D2@AM9PR07MB7249.eurprd07.prod.outlook.com> [Hostname=AM9PR07MB7249.eurprd07.prod.outlook.com]",
    "250 2.1.0 Sender OK",
    "250 2.1.5 Recipient OK",
    "354 Start mail input; end with <CRLF>.<CRLF>",
    "250 2.0.0 OK <DB8PR04MB6809A1B2C3D4E5F6A7B8C9D0E1F2A3B4@DB8PR04MB6809.eurprd04.prod.outlook.com> [Hostname=DB8PR04MB6809.eurprd04.prod.outlook.com]",
    "451 4.7.500 Server busy. Please try again later from [10.20.30.47]. (S77719) [DB5EUR03FT012.eop-EUR03.prod.protection.outlook.com]",
    "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded [Hostname=AM9PR07MB7249.eurprd07.prod.outlook.com]",
    "432 4.3.2 Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending for more information. [Hostname=AM9PR07MB7249.eurprd07.prod.outlook.com]",
    "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot submit message.[EndDiagnosticData]",
    "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information. [AM9PR07CA0012.eurprd07.prod.outlook.com 2025-10-14T09:41:27.123Z 08DDE1F2A3B4C5D6]",
    "550 5.7.60 SMTP; Client does not have permissions to send as this sender [AM9PR07MB7249.eurprd07.prod.outlook.com 2025-10-14T09:41:27.456Z 08DDE1F2A3B4C5D7]",
    "554 5.2.252 SendAsDenied; relay@tenant.example.com not allowed to send as orders-noreply@app.example.com; STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot submit message. 0.35250:0A00B2C1, 1.36674:0A000000, 1.61250:00000000[EndDiagnosticData] [Hostname=AM9PR07MB7249.eurprd07.prod.outlook.com]",
    "535 5.7.3 Authentication unsuccessful [VI1PR0902CA0036.eurprd09.prod.outlook.com 2025-10-14T10:27:56.998Z 08DC48BEE95C08E5]",
    "421 4.7.66 TLS 1.0 and 1.1 are not supported. Please upgrade/update your client to support TLS 1.2. Visit https://aka.ms/smtp_auth_tls. [AM9PR07CA0012.eurprd07.prod.outlook.com]",
    "452 4.5.3 Too many recipients",
    "421 4.3.2 Service not available",
    "550 5.1.8 Access denied, bad outbound sender",
    "554 5.2.2 mailbox full; STOREDRV.Submission.Exception:QuotaExceededException",
];

fn wire(text: &str) -> Vec<u8> {
    format!("{text}\r\n").into_bytes()
}

fn upstream_reply(c: &mut Criterion) {
    let wires: Vec<Vec<u8>> = EXCHANGE_REPLIES.iter().map(|t| wire(t)).collect();
    let replies: Vec<UpstreamReply> = wires
        .iter()
        .map(|w| UpstreamReply::parse(w).unwrap().expect("complete reply").0)
        .collect();

    let mut group = c.benchmark_group("upstream_reply");
    group.throughput(Throughput::Elements(replies.len() as u64));
    group.bench_function("classify_mix", |b| {
        b.iter(|| {
            for r in black_box(&replies) {
                black_box(classify_reply(r));
            }
        })
    });
    group.bench_function("parse_mix", |b| {
        b.iter(|| {
            for w in black_box(&wires) {
                black_box(UpstreamReply::parse(w).unwrap());
            }
        })
    });
    group.finish();
}

fn audit(c: &mut Criterion) {
    // What the listener feeds: the first decoded chunk, headers then the start of the body.
    let headers = header_block();
    let mut chunk = headers.clone().into_bytes();
    chunk.extend_from_slice(b"This is a multi-part message in MIME format.\r\n\r\n");
    let mut sniffer = MessageIdSniffer::new();
    sniffer.feed(&chunk);
    assert_eq!(sniffer.message_id().as_deref(), Some(MESSAGE_ID));

    let mut group = c.benchmark_group("audit");
    group.throughput(Throughput::Bytes(headers.len() as u64));
    group.bench_function(
        format!("message_id_sniffer_{}B_headers", headers.len()),
        |b| {
            b.iter(|| {
                let mut sniffer = MessageIdSniffer::new();
                sniffer.feed(black_box(&chunk));
                sniffer.message_id()
            })
        },
    );
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = hot_paths;
    config = config();
    targets = inbound_data, inbound_commands, spool_commit, token_cache, upstream_reply, audit
}
criterion_main!(hot_paths);
