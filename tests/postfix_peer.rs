//! The Postfix peer of the e2e benchmark (issue 14): its sink, and (ignored: it needs the
//! Debian package `postfix` and root) a throwaway instance relaying to that sink without
//! touching the system's Postfix. Run those with
//! `cargo test --locked --test postfix_peer -- --ignored`.

#[path = "../benches/support/postfix.rs"]
mod postfix;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use postfix::{live_members, Install, PeerOptions, PostfixPeer, Sink, SYSTEM_PATHS};
use smtp_oauth_relay::cli::loadgen::{self, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn loadgen_options(target: std::net::SocketAddr, messages: u64) -> Options {
    let mut o = Options::new(target);
    o.messages = Some(messages);
    o.concurrency = 2;
    o.rcpt_domain = "bench.example".into();
    o.reply_timeout = Duration::from_secs(30);
    o
}

#[tokio::test]
async fn the_sink_accepts_and_counts_what_loadgen_sends() {
    let sink = Sink::start().await.unwrap();
    let report = loadgen::run(loadgen_options(sink.addr(), 7)).await;
    assert_eq!(report.messages_ok, 7, "{}", report.text());
    assert!(report.pipelining, "the sink offers PIPELINING");
    assert_eq!(sink.messages(), 7);
}

/// A dot-stuffed line and a lone dot without its CR end nothing; only CRLF.CRLF ends the data.
#[tokio::test]
async fn the_sink_ends_data_only_at_crlf_dot_crlf() {
    let sink = Sink::start().await.unwrap();
    let mut s = tokio::net::TcpStream::connect(sink.addr()).await.unwrap();
    s.write_all(
        b"EHLO t\r\nMAIL FROM:<a@t>\r\nRCPT TO:<b@t>\r\nDATA\r\n\
          x\r\n..\r\n.\nstill data\r\n.\r\nQUIT\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the sink closes after QUIT")
        .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert_eq!(out.matches("250 2.0.0 discarded").count(), 1, "{out}");
    assert!(out.ends_with("221 2.0.0 bye\r\n"), "{out}");
    assert_eq!(sink.messages(), 1);
}

#[tokio::test]
async fn the_sink_refuses_what_it_does_not_know_and_stops_when_dropped() {
    let sink = Sink::start().await.unwrap();
    let addr = sink.addr();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"STARTTLS\r\nQUIT\r\n").await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert!(String::from_utf8_lossy(&out).contains("502 "), "{out:?}");
    drop(sink);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the sink still listens after being dropped"
    );
}

/// Modification time and size of each system Postfix directory and of what is directly in it
/// (`None` for a missing path).
fn system_snapshot() -> BTreeMap<String, Option<(SystemTime, u64)>> {
    let mut out = BTreeMap::new();
    let stamp = |p: &Path| {
        std::fs::symlink_metadata(p)
            .ok()
            .map(|m| (m.modified().unwrap(), m.len()))
    };
    for dir in SYSTEM_PATHS {
        let dir = Path::new(dir);
        out.insert(dir.display().to_string(), stamp(dir));
        for sub in ["", "pid"] {
            let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
                continue;
            };
            for e in entries.flatten() {
                out.insert(e.path().display().to_string(), stamp(&e.path()));
            }
        }
    }
    out
}

fn install() -> Install {
    Install::find().unwrap_or_else(|reason| {
        panic!("this test needs Postfix (apt-get install postfix, as root): {reason}")
    })
}

#[test]
#[ignore = "needs the Debian package postfix and root; run with --ignored"]
fn a_throwaway_postfix_relays_ten_messages_to_the_sink_and_leaves_the_system_one_alone() {
    let install = install();
    let before = system_snapshot();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sink = rt.block_on(Sink::start()).unwrap();
    let mut peer = PostfixPeer::start(&install, &PeerOptions::new(sink.addr()))
        .unwrap_or_else(|e| panic!("Postfix did not start: {e}"));
    assert!(
        peer.version().starts_with('3'),
        "version {}",
        peer.version()
    );
    let root = peer.layout().root.clone();
    let pid = peer.master_pid();
    assert!(
        !live_members(pid).is_empty(),
        "the master runs in its own group"
    );

    let report = rt.block_on(loadgen::run(loadgen_options(peer.listen(), 10)));
    assert_eq!(report.messages_ok, 10, "{}\n{}", report.text(), peer.log());
    assert!(
        sink.wait_for(10, Duration::from_secs(30)),
        "the sink got {} of 10 messages\n{}",
        sink.messages(),
        peer.log()
    );
    assert_eq!(sink.messages(), 10, "no message twice");
    // The tree the CPU figure sums: the master, qmgr, postlogd, smtpd, cleanup, smtp, ...
    assert!(
        postfix::group_members(pid).len() >= 4,
        "{:?}",
        postfix::group_members(pid)
    );
    assert!(peer.cpu_secs() >= 0.0);
    let log = peer.log();
    assert_eq!(log.matches("status=sent").count(), 10, "{log}");

    let stopped = peer.stop();
    assert!(!stopped.killed, "SIGTERM was enough: {stopped:?}");
    assert_eq!(stopped.left_running, 0);
    assert!(
        live_members(pid).is_empty(),
        "Postfix processes left running"
    );
    assert!(!root.exists(), "{} was not removed", root.display());
    assert_eq!(
        system_snapshot(),
        before,
        "the system Postfix's files changed"
    );
}

/// The port is taken (by a listener that never greets): the master exits at start-up, and the
/// harness says so with what Postfix left, stops nothing else and removes its directory.
#[test]
#[ignore = "needs the Debian package postfix and root; run with --ignored"]
fn a_postfix_that_cannot_start_is_reported_and_leaves_nothing_behind() {
    let install = install();
    let before = system_snapshot();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sink = rt.block_on(Sink::start()).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut o = PeerOptions::new(sink.addr());
    let parent = tempfile::tempdir().unwrap();
    o.parent_dir = Some(parent.path().to_path_buf());
    o.listen = Some(taken.local_addr().unwrap());
    o.start_timeout = Duration::from_secs(10);
    let started = std::time::Instant::now();
    let err = match PostfixPeer::start(&install, &o) {
        Ok(peer) => panic!("Postfix started on a taken port:\n{}", peer.log()),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(text.contains("exited at start-up"), "{text}");
    // Postfix's words, or the configuration it was given when it logged none.
    assert!(
        text.contains("Address already in use") || text.contains("[main.cf]"),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it waited out the timeout"
    );
    let left: Vec<_> = std::fs::read_dir(parent.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "the instance's directory was left: {left:?}"
    );
    assert_eq!(
        system_snapshot(),
        before,
        "the system Postfix's files changed"
    );
}
