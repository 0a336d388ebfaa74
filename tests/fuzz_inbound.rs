//! Fuzzing the inbound side with property tests (stable Rust, so proptest rather than
//! cargo-fuzz). Three targets, each fed arbitrary bytes split at arbitrary points:
//!
//! 1. the whole connection (`smtp::connection::serve` over `tokio::io::duplex`, a recording
//!    stand-in for delivery, tokio's paused clock);
//! 2. the DATA decoder alone (`wire::data::BodyDecoder`);
//! 3. the command line framer (`smtp::framing::LineFramer`).
//!
//! Each is checked against a small reference model written here from the modules' docs, so a
//! property says what the bytes must become, not merely "no panic". The seeds in
//! `fuzz/corpus/` are replayed whole and at every split point, and mixed into the generated
//! inputs. The default run is small (`cargo test`); the `#[ignore]`d `*_long` tests run
//! `FUZZ_CASES` cases each (50,000 unless set), from `.ci/run`. See `fuzz/README.md`.

use std::net::SocketAddr;

use smtp_oauth_relay::smtp::auth::InboundAuth;
use smtp_oauth_relay::smtp::auth_limit::AuthLimiter;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use smtp_oauth_relay::delivery::{Outcome, Queued, Spooled, Submitted};
use smtp_oauth_relay::smtp::connection::{serve, Context, Deliver};
use smtp_oauth_relay::smtp::framing::{Framed, LineFramer, MAX_COMMAND_LINE};
use smtp_oauth_relay::smtp::limits::Slots;
use smtp_oauth_relay::smtp::reply::Reply;
use smtp_oauth_relay::smtp::ListenSettings;
use smtp_oauth_relay::spool::body::Body;
use smtp_oauth_relay::spool::Spool;
use smtp_oauth_relay::wire::data::{BodyDecoder, Progress, Terminator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Running: case counts, corpus, splitting.

/// Cases per target in the default run (the whole file stays well under 20 s).
const DEFAULT_CASES: u32 = 1024;
/// Cases per target in the long run, unless `FUZZ_CASES` says otherwise.
const LONG_CASES: u32 = 50_000;
/// Real time one session case may take before it counts as a hang.
const HANG_LIMIT: Duration = Duration::from_secs(30);
/// Paused-clock time within which the server must have finished (twice its session cap).
const VIRTUAL_LIMIT: Duration = Duration::from_secs(2 * 1800);
/// The largest message the fuzzed listener takes: small, so the size limit is reached too.
const MAX_SIZE: u64 = 4096;

fn long_cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LONG_CASES)
}

fn runner(cases: u32, name: &str) -> TestRunner {
    let regressions = format!("proptest-regressions/fuzz_inbound_{name}.txt");
    TestRunner::new(Config {
        cases,
        max_shrink_iters: 4096,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(Box::leak(
            regressions.into_boxed_str(),
        )))),
        ..Config::default()
    })
}

/// A spool for the session cases, in memory where the machine has a tmpfs: a body that
/// spills to a file is fsync'd, and thousands of fsyncs would make the run wait on the disk.
fn scratch_spool() -> (tempfile::TempDir, Spool) {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("temp dir");
    let (spool, _) = Spool::open(dir.path()).expect("spool opens");
    (dir, spool)
}

fn corpus_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(kind)
}

/// Every seed file of one corpus (`session` or `data`) with its name, sorted.
fn corpus(kind: &str, ext: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus_dir(kind))
        .unwrap_or_else(|e| panic!("read fuzz/corpus/{kind}: {e}"))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("read corpus file"))
        })
        .collect();
    files.sort();
    assert!(files.len() >= 5, "fuzz/corpus/{kind} holds too few seeds");
    files
}

fn session_seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        corpus("session", "smtp")
            .into_iter()
            .map(|(_, b)| b)
            .collect()
    })
}

fn data_seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| corpus("data", "bin").into_iter().map(|(_, b)| b).collect())
}

/// `input` cut at the given positions (in any order, repeats allowed).
fn split<'a>(input: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
    at.sort_unstable();
    at.dedup();
    let mut pieces = Vec::new();
    let mut from = 0;
    for c in at {
        pieces.push(&input[from..c]);
        from = c;
    }
    pieces.push(&input[from..]);
    pieces
}

// ---------------------------------------------------------------------------------------------
// Reference models, byte at a time, from the modules' docs.

/// Bare LF and bare CR become CRLF; CRLF stays (`wire::data` module doc).
fn reference_crlf(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'\r' if input.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// The body a client sent after `354`, as the relay must keep it: the data ends on exactly
/// `CRLF . CRLF` (or `. CRLF` as the very first line), where the CRLF is a real CR LF pair;
/// a dot starting a line (at the start, or after a CR LF pair) is removed; a dot after a bare
/// LF or CR is text; then bare line ends become CRLF. Returns the body and where the data
/// ended (`None`: not ended).
fn reference_body(input: &[u8]) -> (Vec<u8>, Option<usize>) {
    reference_body_with(input, Terminator::CrlfOnly)
}

/// As [`reference_body`]; with [`Terminator::AlsoBareLf`] a bare LF ends a line too, so a dot
/// after it is stuffing and `. LF` at a line start also ends the data.
fn reference_body_with(input: &[u8], terminator: Terminator) -> (Vec<u8>, Option<usize>) {
    let bare_lf = terminator == Terminator::AlsoBareLf;
    let mut unstuffed = Vec::new();
    let mut line_start = true;
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if line_start && b == b'.' {
            if input[i + 1..].starts_with(b"\r\n") {
                return (reference_crlf(&unstuffed), Some(i + 3));
            }
            if bare_lf && input.get(i + 1) == Some(&b'\n') {
                return (reference_crlf(&unstuffed), Some(i + 2));
            }
            line_start = false;
            i += 1;
            continue;
        }
        unstuffed.push(b);
        line_start = b == b'\n' && (bare_lf || (i > 0 && input[i - 1] == b'\r'));
        i += 1;
    }
    (reference_crlf(&unstuffed), None)
}

/// What the framer must make of a command stream: one event per line (split at LF), `None`
/// for a line longer than the cap (LF included), and one `None` for an unfinished last line
/// that is already over the cap.
fn reference_lines(input: &[u8]) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(nl) = input[from..].iter().position(|&b| b == b'\n') {
        let line = &input[from..from + nl + 1];
        out.push((line.len() <= MAX_COMMAND_LINE).then(|| line.to_vec()));
        from += nl + 1;
    }
    if input.len() - from > MAX_COMMAND_LINE {
        out.push(None);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Target 1: the whole connection.

/// A message handed to delivery: its id and body.
type Message = (String, Vec<u8>);

/// Delivery's stand-in: keeps every message's id and body, and queues it.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Message>>>);

impl Deliver for Recorder {
    fn submit(&self, msg: Spooled) -> impl std::future::Future<Output = Submitted> + Send {
        let body = match &msg.body {
            Body::Memory(m) => m.bytes().to_vec(),
            Body::File(path) => {
                let bytes = std::fs::read(path).expect("read spooled body");
                let _ = std::fs::remove_file(path);
                bytes
            }
        };
        let id = msg.envelope.id.to_string();
        self.0.lock().unwrap().push((id.clone(), body));
        async move {
            Submitted::kept(Outcome::Queued {
                id,
                why: Queued::Accepted,
            })
        }
    }
}

fn settings() -> ListenSettings {
    ListenSettings {
        address: "127.0.0.1:0".parse().unwrap(),
        allow: Vec::new(),
        hostname: "relay.test".into(),
        max_connections: 10,
        max_message_size: MAX_SIZE,
        max_recipients: 5,
        command_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(60),
        stress_timeout: Duration::from_secs(5),
        max_session: Duration::from_secs(1800),
        max_junk_commands: 50,
        max_messages_per_session: 10,
        max_connections_per_client: 2,
        received_header: false,
        // No TLS here: a handshake over fuzz bytes ends in a TLS alert, not an SMTP reply.
        tls: None,
        implicit_tls_address: None,
        require_tls: false,
        // AUTH offered to this loopback client and any credentials accepted, so the SASL
        // dialog (its lines are answers, not commands) is fuzzed inside sessions too.
        auth: InboundAuth {
            accept_any: true,
            without_tls_on_loopback: true,
            limiter: Some(std::sync::Arc::new(AuthLimiter::new(
                3,
                Duration::from_secs(60),
                Duration::from_secs(3600),
            ))),
            ..InboundAuth::default()
        },
    }
}

/// What one session came to.
struct Session {
    /// Everything the server wrote.
    replies: Vec<u8>,
    /// Messages handed to delivery, in order.
    submitted: Vec<Message>,
    served: Result<(), String>,
}

/// One session to serve, and where to say what it came to.
type Job = (Spool, Vec<Vec<u8>>, mpsc::Sender<Result<Session, String>>);

thread_local! {
    /// This test thread's worker: a thread with one paused-clock runtime, serving sessions
    /// one after another (a runtime and a thread for each case would cost more than the case).
    static WORKER: std::cell::RefCell<Option<mpsc::Sender<Job>>> = const { std::cell::RefCell::new(None) };
}

fn start_worker() -> mpsc::Sender<Job> {
    let (jobs, next) = mpsc::channel::<Job>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        while let Ok((spool, chunks, done)) = next.recv() {
            let _ = done.send(rt.block_on(drive(spool, chunks)));
        }
    });
    jobs
}

/// Serves one connection that sends `chunks` (one read each: the client waits until the
/// server has taken a chunk before it writes the next) and then closes its side, on a
/// paused clock, in a worker thread so that a panic or a hang is caught in real time too.
fn run_session(spool: &Spool, chunks: Vec<Vec<u8>>) -> Result<Session, String> {
    let (done, result) = mpsc::channel();
    WORKER.with(|w| {
        let mut w = w.borrow_mut();
        let mut job = (spool.clone(), chunks, done);
        for _ in 0..2 {
            match w.get_or_insert_with(start_worker).send(job) {
                Ok(()) => return,
                // The worker is gone (a panic in an earlier case): start another.
                Err(mpsc::SendError(back)) => {
                    job = back;
                    *w = None;
                }
            }
        }
        panic!("could not start a session worker");
    });
    let outcome = match result.recv_timeout(HANG_LIMIT) {
        Ok(session) => return session,
        Err(mpsc::RecvTimeoutError::Timeout) => format!("hang: no end in {HANG_LIMIT:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => "the server panicked".to_string(),
    };
    // That worker is stuck or dead: the next case gets a new one.
    WORKER.with(|w| *w.borrow_mut() = None);
    Err(outcome)
}

async fn drive(spool: Spool, chunks: Vec<Vec<u8>>) -> Result<Session, String> {
    let recorder = Recorder::default();
    let ctx = Context {
        listen: settings(),
        deliver: recorder.clone(),
        spool,
        shutdown: CancellationToken::new(),
    };
    let slots = Slots::new(10, 2);
    let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    let slot = slots.enter(peer.ip());
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (mut from_server, mut to_server) = tokio::io::split(client);
    let serving = async {
        // `server` is dropped when this returns: the client then reads the end.
        serve(server, peer, &ctx, &slot)
            .await
            .map_err(|e| e.to_string())
    };
    let writing = async {
        for chunk in chunks {
            if to_server.write_all(&chunk).await.is_err() {
                return;
            }
            // On the paused clock this returns only once the server waits for more.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let _ = to_server.shutdown().await;
    };
    let reading = async {
        let mut replies = Vec::new();
        let _ = from_server.read_to_end(&mut replies).await;
        replies
    };
    let all = async { tokio::join!(serving, writing, reading) };
    let (served, (), replies) = tokio::time::timeout(VIRTUAL_LIMIT, all)
        .await
        .map_err(|_| format!("the server was still running after {VIRTUAL_LIMIT:?}"))?;
    let submitted = std::mem::take(&mut *recorder.0.lock().unwrap());
    Ok(Session {
        replies,
        submitted,
        served,
    })
}

/// Splits the server's output into replies; every byte must belong to a well-formed one.
fn parse_replies(bytes: &[u8]) -> Result<Vec<Reply>, String> {
    for (i, &b) in bytes.iter().enumerate() {
        let bad = match b {
            b'\n' => i == 0 || bytes[i - 1] != b'\r',
            b'\r' => bytes.get(i + 1) != Some(&b'\n'),
            _ => false,
        };
        if bad {
            return Err(format!("bare line end at byte {i} of the replies"));
        }
    }
    for line in bytes.split(|&b| b == b'\n') {
        if line.len() > 510 {
            return Err(format!("reply line of {} bytes (over 512)", line.len()));
        }
    }
    let mut replies = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        match Reply::parse(&bytes[pos..]) {
            Ok(Some((reply, used))) => {
                if !(200..600).contains(&reply.code) {
                    return Err(format!("reply code {} out of range", reply.code));
                }
                replies.push(reply);
                pos += used;
            }
            Ok(None) => return Err(format!("unfinished reply {:?}", lossy(&bytes[pos..]))),
            Err(e) => return Err(format!("malformed reply: {e}")),
        }
    }
    Ok(replies)
}

/// Where a message may start: just after a line (ended by LF) that begins with `DATA`.
fn data_starts(input: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut from = 0;
    while let Some(nl) = input[from..].iter().position(|&b| b == b'\n') {
        if input[from..].len() >= 4 && input[from..from + 4].eq_ignore_ascii_case(b"DATA") {
            starts.push(from + nl + 1);
        }
        from += nl + 1;
    }
    starts
}

/// The session properties: no panic, an end in time, well-formed replies only, one queued
/// `250` per message handed on (with its id, in order), and each message exactly what the
/// reference decoder makes of the bytes after some `DATA`, the next one starting after the
/// end of the last; so no message was ever ended by anything but `CRLF.CRLF`.
/// The end-of-data rules a session may be under after `before`: CRLF only once any line
/// ended in CRLF; LF . LF too while every line ended in a bare LF. (The framer sees command
/// lines only, not bodies, so where both kinds appear either rule is accepted here.)
fn terminators_before(before: &[u8]) -> Vec<Terminator> {
    let crlf = before.windows(2).any(|w| w == b"\r\n");
    let bare_lf = before
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || before[i - 1] != b'\r'));
    match (crlf, bare_lf) {
        (_, false) => vec![Terminator::CrlfOnly],
        (false, true) => vec![Terminator::AlsoBareLf],
        (true, true) => vec![Terminator::CrlfOnly, Terminator::AlsoBareLf],
    }
}

fn check_session(spool: &Spool, input: &[u8], pieces: &[&[u8]]) -> Result<(), String> {
    let chunks = pieces.iter().map(|p| p.to_vec()).collect();
    let session = run_session(spool, chunks)?;
    session.served.map_err(|e| format!("serve failed: {e}"))?;
    let replies = parse_replies(&session.replies)?;
    if replies.first().map(|r| r.code) != Some(220) {
        return Err(format!("no greeting first: {:?}", replies.first()));
    }
    if let Some(i) = replies.iter().position(|r| r.code == 221) {
        if i + 1 != replies.len() {
            return Err(format!("replies after 221: {:?}", &replies[i + 1..]));
        }
    }
    let queued: Vec<String> = replies
        .iter()
        .filter(|r| r.code == 250)
        .filter_map(|r| {
            let first = r.lines.first()?;
            let id = first
                .strip_prefix("2.0.0 ")?
                .strip_suffix(" queued for delivery")?;
            Some(id.to_string())
        })
        .collect();
    let ids: Vec<String> = session.submitted.iter().map(|(id, _)| id.clone()).collect();
    if queued != ids {
        return Err(format!("250 replies for {queued:?}, messages {ids:?}"));
    }
    let starts = data_starts(input);
    let mut from = 0;
    for (n, (_, body)) in session.submitted.iter().enumerate() {
        let found = starts.iter().filter(|&&s| s >= from).find_map(|&s| {
            terminators_before(&input[..s]).iter().find_map(|&t| {
                match reference_body_with(&input[s..], t) {
                    (reference, Some(end)) if &reference == body => Some(s + end),
                    _ => None,
                }
            })
        });
        match found {
            Some(end) => from = end,
            None => {
                return Err(format!(
                    "message {n} ({:?}) is not what any DATA after byte {from} sent",
                    lossy(body)
                ))
            }
        }
        if body.len() as u64 > MAX_SIZE {
            return Err(format!(
                "message {n} of {} bytes passed the limit",
                body.len()
            ));
        }
    }
    Ok(())
}

fn lossy(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    s.chars().take(300).collect()
}

/// Command verbs, a few of which end or change the session.
fn verb() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        3 => Just("EHLO"),
        3 => Just("HELO"),
        6 => Just("MAIL FROM:"),
        6 => Just("RCPT TO:"),
        6 => Just("DATA"),
        1 => Just("BDAT"),
        2 => Just("RSET"),
        2 => Just("NOOP"),
        1 => Just("QUIT"),
        1 => Just("STARTTLS"),
        1 => Just("AUTH"),
        1 => Just("VRFY"),
        1 => Just("HELP"),
        1 => Just("MAIL"),
        1 => Just("X"),
    ]
}

fn argument() -> impl Strategy<Value = Vec<u8>> {
    let fixed: &[&[u8]] = &[
        b" app.example",
        b"<a@x.example>",
        b" <b@y.example>",
        b"a@x.example",
        b"<>",
        b"<\"q u\"@x.example>",
        b"<@route:a@x.example>",
        b" SIZE=123",
        b" SIZE=99999999999999999999",
        b" BODY=8BITMIME",
        b" BODY=BINARYMIME",
        b" SMTPUTF8",
        b" 10 LAST",
        b" PLAIN AGZvbwBiYXI=",
        b" LOGIN",
        b"<j\xc3\xb6rg@b\xc3\xbccher.de>",
        b"<j\xf6rg@x>",
        b"\0",
        b" ",
        b":",
    ];
    prop_oneof![
        6 => prop::sample::select(fixed).prop_map(<[u8]>::to_vec),
        1 => prop::collection::vec(any::<u8>(), 0..16),
        1 => (4000usize..4200).prop_map(|n| vec![b'x'; n]),
    ]
}

fn line_end() -> impl Strategy<Value = &'static [u8]> {
    prop_oneof![
        8 => Just(&b"\r\n"[..]),
        3 => Just(&b"\n"[..]),
        1 => Just(&b"\r"[..]),
        1 => Just(&b"\r\r\n"[..]),
        1 => Just(&b""[..]),
    ]
}

fn command() -> impl Strategy<Value = Vec<u8>> {
    (
        verb(),
        0u8..3,
        prop::collection::vec(argument(), 0..3),
        line_end(),
    )
        .prop_map(|(verb, case, args, end)| {
            let mut line: Vec<u8> = match case {
                0 => verb.as_bytes().to_vec(),
                1 => verb.to_ascii_lowercase().into_bytes(),
                _ => verb
                    .bytes()
                    .enumerate()
                    .map(|(i, b)| {
                        if i % 2 == 0 {
                            b.to_ascii_lowercase()
                        } else {
                            b
                        }
                    })
                    .collect(),
            };
            for a in args {
                line.extend_from_slice(&a);
            }
            line.extend_from_slice(end);
            line
        })
}

/// Pieces of a body, with every end-of-data lookalike of the smuggling research.
fn body_piece() -> impl Strategy<Value = Vec<u8>> {
    let fixed: &[&[u8]] = &[
        b"Subject: hi\r\n\r\n",
        b"hello",
        b"\r\n",
        b"\n",
        b"\r",
        b".",
        b"..",
        b"\r\n..\r\n",
        b"\n.\n",
        b"\r.\r",
        b"\r\n.\r",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r.\r\n",
        b"\r\n.\r\r\n",
        b"\r\n.\r\n",
        b"MAIL FROM:<evil@x.example>\r\nRCPT TO:<v@y.example>\r\nDATA\r\n",
        b"\xe9t\xc3\xa9\0",
    ];
    prop_oneof![
        8 => prop::sample::select(fixed).prop_map(<[u8]>::to_vec),
        1 => prop::collection::vec(any::<u8>(), 0..24),
        1 => (500usize..5000).prop_map(|n| vec![b'y'; n]),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(body_piece(), 0..10),
        prop_oneof![
            6 => Just(&b"\r\n.\r\n"[..]),
            1 => Just(&b""[..]),
            1 => Just(&b"\n.\n"[..]),
            1 => Just(&b"\r.\r"[..]),
        ],
    )
        .prop_map(|(pieces, end)| {
            let mut b = pieces.concat();
            b.extend_from_slice(end);
            b
        })
}

/// A transaction with CRLF command lines, then a body: most cases reach DATA this way.
fn transaction() -> impl Strategy<Value = Vec<u8>> {
    (any::<bool>(), body()).prop_map(|(helo, body)| {
        let mut t = if helo {
            b"HELO app\r\n".to_vec()
        } else {
            Vec::new()
        };
        t.extend_from_slice(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n");
        t.extend_from_slice(&body);
        t
    })
}

fn session_piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => command(),
        4 => transaction(),
        2 => body(),
        1 => prop::collection::vec(any::<u8>(), 0..48),
        1 => prop::sample::select(session_seeds()),
    ]
}

fn session_input() -> impl Strategy<Value = (Vec<u8>, Vec<Index>)> {
    (
        prop::collection::vec(session_piece(), 0..12).prop_map(|p| p.concat()),
        prop::collection::vec(any::<Index>(), 0..10),
    )
}

fn fuzz_sessions(cases: u32) {
    let (_dir, spool) = scratch_spool();
    runner(cases, "session")
        .run(&session_input(), |(input, cuts)| {
            check_session(&spool, &input, &split(&input, &cuts)).map_err(TestCaseError::fail)
        })
        .unwrap();
}

#[test]
fn sessions_hold_their_properties() {
    fuzz_sessions(DEFAULT_CASES);
}

#[test]
#[ignore = "long fuzz run: FUZZ_CASES per target, from .ci/run"]
fn sessions_hold_their_properties_long() {
    fuzz_sessions(long_cases());
}

#[test]
fn session_corpus_holds_the_properties_whole_and_at_every_split() {
    let (_dir, spool) = scratch_spool();
    for (name, input) in corpus("session", "smtp") {
        let fail = |e: String| panic!("{name}: {e}");
        check_session(&spool, &input, &[&input]).unwrap_or_else(fail);
        if input.len() <= 1024 {
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            check_session(&spool, &input, &bytes).unwrap_or_else(fail);
            for at in 1..input.len() {
                let (a, b) = input.split_at(at);
                check_session(&spool, &input, &[a, b]).unwrap_or_else(fail);
            }
        }
    }
}

/// The seeds named `smuggle-*` carry a second `MAIL`/`RCPT`/`DATA` behind an end-of-data
/// lookalike: exactly one message must come of each, holding the would-be second one as text.
#[test]
fn smuggling_seeds_make_one_message_each() {
    let (_dir, spool) = scratch_spool();
    let seeds: Vec<_> = corpus("session", "smtp")
        .into_iter()
        .filter(|(name, _)| name.starts_with("smuggle-"))
        .collect();
    assert!(seeds.len() >= 5, "the smuggling seeds are missing");
    for (name, input) in seeds {
        let session = run_session(&spool, vec![input]).unwrap();
        assert_eq!(session.submitted.len(), 1, "{name}");
        let body = lossy(&session.submitted[0].1);
        assert!(body.contains("MAIL FROM:<evil@"), "{name}: {body:?}");
        assert!(
            !body.replace("\r\n", "").contains(['\r', '\n']),
            "{name}: {body:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Target 2: the DATA decoder.

/// Decodes `pieces` in order: (body, bytes used, ended, oversized).
fn decode(pieces: &[&[u8]], max: u64, terminator: Terminator) -> (Vec<u8>, usize, bool, bool) {
    let mut decoder = BodyDecoder::with_terminator(max, terminator);
    let mut out = Vec::new();
    let mut used = 0;
    for piece in pieces {
        let mut iter = piece.iter();
        let progress = decoder.ingest(&mut iter, &mut out);
        used += piece.len() - iter.as_slice().len();
        if progress == Progress::Done {
            return (out, used, true, decoder.oversized());
        }
        assert_eq!(iter.as_slice().len(), 0, "More, but bytes were left over");
    }
    (out, used, false, decoder.oversized())
}

fn check_decoder(
    input: &[u8],
    pieces: &[&[u8]],
    max: u64,
    terminator: Terminator,
) -> Result<(), String> {
    let split = decode(pieces, max, terminator);
    let whole = decode(&[input], max, terminator);
    // Past the limit the bytes kept so far are discarded whatever they are (the module doc):
    // only where it ended and that it was oversized must agree then.
    let comparable = |d: &(Vec<u8>, usize, bool, bool)| (d.3 || d.0 == whole.0, d.1, d.2, d.3);
    if comparable(&split) != comparable(&whole) {
        return Err(format!("split {split:?} != whole {whole:?}"));
    }
    let (body, used, done, oversized) = split;
    let (reference, end) = reference_body_with(input, terminator);
    match end {
        Some(end) => {
            if !done || used != end {
                return Err(format!("ended {done} at {used}, reference at {end}"));
            }
            let over = reference.len() as u64 > max;
            if oversized != over {
                return Err(format!(
                    "oversized {oversized}, reference size {}",
                    reference.len()
                ));
            }
            if !over && body != reference {
                return Err(format!(
                    "body {:?} != reference {:?}",
                    lossy(&body),
                    lossy(&reference)
                ));
            }
            if over && body.len() as u64 > max {
                return Err(format!("{} bytes kept past the limit {max}", body.len()));
            }
        }
        None => {
            if done || used != input.len() {
                return Err(format!("ended at {used} where the reference does not end"));
            }
            if !oversized && !reference.starts_with(&body) {
                return Err(format!("partial body {:?} not a prefix", lossy(&body)));
            }
        }
    }
    Ok(())
}

fn data_input() -> impl Strategy<Value = (Vec<u8>, Vec<Index>, u64, Terminator)> {
    let byte = prop_oneof![
        8 => prop::sample::select(&b"ab.\r\n"[..]),
        1 => any::<u8>(),
    ];
    let piece = prop_oneof![
        4 => prop::collection::vec(byte, 0..40),
        4 => body_piece(),
        1 => prop::sample::select(data_seeds()),
    ];
    (
        prop::collection::vec(piece, 0..10).prop_map(|p| p.concat()),
        prop::collection::vec(any::<Index>(), 0..10),
        prop_oneof![3 => Just(u64::MAX), 1 => 0u64..300],
        prop_oneof![3 => Just(Terminator::CrlfOnly), 1 => Just(Terminator::AlsoBareLf)],
    )
}

fn fuzz_decoder(cases: u32) {
    runner(cases, "data")
        .run(&data_input(), |(input, cuts, max, terminator)| {
            check_decoder(&input, &split(&input, &cuts), max, terminator)
                .map_err(TestCaseError::fail)
        })
        .unwrap();
}

#[test]
fn the_data_decoder_is_split_invariant_and_equals_the_reference() {
    fuzz_decoder(DEFAULT_CASES * 4);
}

#[test]
#[ignore = "long fuzz run: FUZZ_CASES per target, from .ci/run"]
fn the_data_decoder_is_split_invariant_and_equals_the_reference_long() {
    fuzz_decoder(long_cases());
}

#[test]
fn data_corpus_decodes_the_same_at_every_split() {
    for (name, input) in corpus("data", "bin") {
        let fail = |e: String| panic!("{name}: {e}");
        for max in [u64::MAX, 16] {
            for t in [Terminator::CrlfOnly, Terminator::AlsoBareLf] {
                check_decoder(&input, &[&input], max, t).unwrap_or_else(fail);
                let bytes: Vec<&[u8]> = input.chunks(1).collect();
                check_decoder(&input, &bytes, max, t).unwrap_or_else(fail);
                for at in 0..=input.len() {
                    let (a, b) = input.split_at(at);
                    check_decoder(&input, &[a, b], max, t).unwrap_or_else(fail);
                }
            }
        }
    }
}

/// The reference itself, on the cases the module's docs spell out.
#[test]
fn the_reference_decoder_follows_the_documented_rules() {
    assert_eq!(
        reference_body(b"a\r\n..b\r\n.\r\nNEXT"),
        (b"a\r\n.b\r\n".to_vec(), Some(11))
    );
    assert_eq!(reference_body(b".\r\n"), (Vec::new(), Some(3)));
    for sep in [
        &b"\n.\n"[..],
        b"\r.\r",
        b"\r\n.\r",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r\n.\r\r\n",
    ] {
        let mut input = b"x".to_vec();
        input.extend_from_slice(sep);
        assert_eq!(reference_body(&input).1, None, "{sep:?}");
    }
    assert_eq!(
        reference_body(b"a\nb\r.\r\n").0,
        b"a\r\nb\r\n.\r\n".to_vec()
    );
    let lf = |input: &[u8]| reference_body_with(input, Terminator::AlsoBareLf);
    assert_eq!(lf(b"a\n..b\n.\nX"), (b"a\r\n.b\r\n".to_vec(), Some(8)));
    assert_eq!(lf(b"a\r.\rb\n").1, None, "a bare CR is still no line end");
}

// ---------------------------------------------------------------------------------------------
// Target 3: the line framer.

/// Frames `pieces` as the connection does: complete lines first, then the rest is absorbed.
/// Returns the lines (`None`: refused as too long) and whether the session was bare-LF only.
fn frame(pieces: &[&[u8]]) -> (Vec<Option<Vec<u8>>>, bool) {
    let mut framer = LineFramer::default();
    let mut out = Vec::new();
    for piece in pieces {
        let mut pos = 0;
        while let Some((frame, used)) = framer.next_line(&piece[pos..]) {
            pos += used;
            match frame {
                Framed::Line(line) => out.push(Some(line.into_owned())),
                Framed::TooLong => out.push(None),
                Framed::Skipped => {}
            }
        }
        if framer.absorb(&piece[pos..]) {
            out.push(None);
        }
    }
    (out, framer.only_bare_lf())
}

/// Whether every complete line (at least one) of `input` ends in a bare LF.
fn reference_only_bare_lf(input: &[u8]) -> bool {
    let mut lines = input
        .split_inclusive(|&b| b == b'\n')
        .filter(|l| l.ends_with(b"\n"))
        .peekable();
    lines.peek().is_some() && lines.all(|l| !l.ends_with(b"\r\n"))
}

fn check_framer(input: &[u8], pieces: &[&[u8]]) -> Result<(), String> {
    let (split, only_bare_lf) = frame(pieces);
    let reference = reference_lines(input);
    if only_bare_lf != reference_only_bare_lf(input) {
        return Err(format!(
            "only_bare_lf {only_bare_lf} for {:?}",
            lossy(input)
        ));
    }
    if split != reference {
        let show = |v: &[Option<Vec<u8>>]| -> Vec<Option<String>> {
            v.iter().map(|l| l.as_deref().map(lossy)).collect()
        };
        return Err(format!(
            "framed {:?}, reference {:?}",
            show(&split),
            show(&reference)
        ));
    }
    Ok(())
}

fn framer_input() -> impl Strategy<Value = (Vec<u8>, Vec<Index>)> {
    let piece = prop_oneof![
        4 => command(),
        2 => prop::collection::vec(prop::sample::select(&b"a\r\n"[..]), 0..40),
        1 => (MAX_COMMAND_LINE - 4..MAX_COMMAND_LINE + 4).prop_map(|n| vec![b'z'; n]),
        1 => (MAX_COMMAND_LINE..3 * MAX_COMMAND_LINE).prop_map(|n| vec![b'w'; n]),
    ];
    (
        prop::collection::vec(piece, 0..10).prop_map(|p| p.concat()),
        prop::collection::vec(any::<Index>(), 0..12),
    )
}

fn fuzz_framer(cases: u32) {
    runner(cases, "framing")
        .run(&framer_input(), |(input, cuts)| {
            check_framer(&input, &split(&input, &cuts)).map_err(TestCaseError::fail)
        })
        .unwrap();
}

#[test]
fn the_line_framer_is_split_invariant_and_equals_the_reference() {
    fuzz_framer(DEFAULT_CASES * 2);
}

#[test]
#[ignore = "long fuzz run: FUZZ_CASES per target, from .ci/run"]
fn the_line_framer_is_split_invariant_and_equals_the_reference_long() {
    fuzz_framer(long_cases());
}

#[test]
fn the_framer_caps_lines_exactly_at_the_limit_in_any_split() {
    let mut input = vec![b'a'; MAX_COMMAND_LINE - 1];
    input.push(b'\n');
    input.extend_from_slice(&vec![b'b'; MAX_COMMAND_LINE]);
    input.extend_from_slice(b"\nNOOP\n");
    input.extend_from_slice(&vec![b'c'; MAX_COMMAND_LINE + 1]);
    let reference = reference_lines(&input);
    assert_eq!(reference.len(), 4);
    assert!(reference[0].is_some() && reference[1].is_none());
    assert_eq!(reference[2].as_deref(), Some(&b"NOOP\n"[..]));
    assert!(reference[3].is_none());
    for at in (0..=input.len()).step_by(97) {
        let (a, b) = input.split_at(at);
        check_framer(&input, &[a, b]).unwrap();
    }
}
