//! A full disk (issue 11, item 4): a spool write that fails for lack of space answers the
//! client `452 4.3.1` (insufficient system storage; other local errors keep `451 4.3.0`),
//! shows in `/readyz` and in the metrics, and new mail is accepted again once space returns.
//!
//! Two ways: the spool's seam injects the failure into a relay running in-process (always
//! runs); and a real, small tmpfs filled up under the relay binary (needs root and `mount`:
//! `#[ignore]`d, run by `.ci/run`; it unmounts what it mounted).
//!
//! Loopback only; every wait is bounded.

mod support;

#[path = "support/child.rs"]
mod child;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use child::{free_addr, RelayChild};
use smtp_oauth_relay::spool::WriteFault;
use support::{http_get, metric, relay_binary, RawClient, World};

const NO_SPACE: &str = "smtp_oauth_relay_spool_write_failures_total{kind=\"no_space\"}";
const OTHER: &str = "smtp_oauth_relay_spool_write_failures_total{kind=\"other\"}";
const FULL: &str = "smtp_oauth_relay_spool_full";

fn small(subject: &str) -> Vec<u8> {
    format!("Subject: {subject}\r\n\r\nhello\r\n").into_bytes()
}

/// A body larger than what is held in memory: it streams to a file in `incoming/`.
fn big(subject: &str) -> Vec<u8> {
    let mut b = format!("Subject: {subject}\r\n\r\n").into_bytes();
    for i in 0..4000 {
        b.extend_from_slice(
            format!("line {i:05} of a body too large to stay in memory\r\n").as_bytes(),
        );
    }
    b
}

async fn send(c: &mut RawClient, body: &[u8]) -> String {
    c.send_mail("app@example.com", &["someone@example.com"], body)
        .await
}

async fn metrics(admin: SocketAddr) -> String {
    http_get(admin, "/metrics").await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_full_disk_answers_452_and_mail_flows_again_after() {
    let world = World::start().await;
    let relay = world.relay(&[("SMTP_OAUTH_RELAY_MODE", "queue")]).await;
    let admin = relay.admin_addr().expect("admin port");
    let spool = relay.delivery().spool().clone();
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO app.example", 250).await;

    spool.faults().inject(Some(WriteFault::NoSpace));
    for body in [small("in memory"), big("streamed")] {
        let reply = send(&mut c, &body).await;
        assert!(
            reply.starts_with("452 4.3.1 Insufficient system storage"),
            "{reply}"
        );
    }
    let text = metrics(admin).await;
    assert!(metric(&text, NO_SPACE).unwrap_or(0.0) >= 2.0, "{text}");
    assert_eq!(metric(&text, FULL), Some(1.0), "{text}");
    let (_, ready) = http_get(admin, "/readyz").await;
    assert!(
        ready.contains("WARN spool: the last write failed: no space left"),
        "{ready}"
    );

    // Any other local error keeps its own code.
    spool.faults().inject(Some(WriteFault::Other));
    let reply = send(&mut c, &small("other error")).await;
    assert!(reply.starts_with("451 4.3.0 "), "{reply}");
    assert!(metric(&metrics(admin).await, OTHER).unwrap_or(0.0) >= 1.0);

    // Space is back: mail is accepted and delivered again, the alarm clears.
    spool.faults().inject(None);
    let reply = send(&mut c, &small("after")).await;
    assert!(
        reply.starts_with("250 ") && reply.contains("queued"),
        "{reply}"
    );
    let got = world.wait_for(1).await;
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: after"));
    assert_eq!(got.len(), 1, "nothing refused was kept");
    assert_eq!(metric(&metrics(admin).await, FULL), Some(0.0));
    let (_, ready) = http_get(admin, "/readyz").await;
    assert!(!ready.contains("no space"), "{ready}");
    assert!(
        child::files_in(&spool.root().join("incoming")).is_empty(),
        "refused bodies leave nothing behind"
    );
    c.cmd("QUIT", 221).await;
    relay.shutdown(Duration::from_secs(5)).await;
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A tmpfs mounted for the test; unmounted (lazily, should a file still be open) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=700"),
                "tmpfs",
            ])
            .arg(at)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Writes `path` until the file system says it is full (at most `limit` bytes).
fn fill(path: &Path, limit: usize) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0u8; 16 * 1024];
    let mut written = 0;
    while written < limit {
        match f.write_all(&chunk) {
            Ok(()) => written += chunk.len(),
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => return,
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }
    panic!("the tmpfs took {limit} bytes without filling up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and mount -t tmpfs: run by .ci/run"]
async fn a_real_full_tmpfs_answers_452_and_recovers() {
    if !is_root() {
        eprintln!("skipped: needs root to mount a tmpfs");
        return;
    }
    let world = World::start().await;
    let dir = world.dir.path();
    let Some(tmpfs) = Tmpfs::mount(&dir.join("mnt"), "1m") else {
        eprintln!("skipped: mount -t tmpfs failed");
        return;
    };
    let spool = tmpfs.0.join("spool");
    let (smtp, admin) = (free_addr(), free_addr());
    let mut env = world.env();
    env.retain(|(k, _)| {
        !matches!(
            k.as_str(),
            "SMTP_OAUTH_RELAY_LISTEN"
                | "SMTP_OAUTH_RELAY_ADMIN_LISTEN"
                | "SMTP_OAUTH_RELAY_SPOOL_DIR"
        )
    });
    env.extend([
        ("SMTP_OAUTH_RELAY_LISTEN".to_string(), smtp.to_string()),
        (
            "SMTP_OAUTH_RELAY_ADMIN_LISTEN".to_string(),
            admin.to_string(),
        ),
        (
            "SMTP_OAUTH_RELAY_SPOOL_DIR".to_string(),
            spool.display().to_string(),
        ),
        ("SMTP_OAUTH_RELAY_MODE".to_string(), "queue".to_string()),
    ]);
    let mut relay = RelayChild::spawn(
        relay_binary(),
        &["serve"],
        &env,
        dir,
        &dir.join("relay.log"),
    );
    relay.wait_ready(smtp, Duration::from_secs(30)).await;

    let filler = tmpfs.0.join("filler");
    fill(&filler, 4 << 20);
    let mut c = RawClient::connect(smtp).await;
    c.cmd("EHLO app.example", 250).await;
    let reply = send(&mut c, &small("disk full")).await;
    assert!(
        reply.starts_with("452 4.3.1 Insufficient system storage"),
        "{reply}"
    );
    let (status, ready) = http_get(admin, "/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready.contains("FAIL spool: not writable: no space ("),
        "{ready}"
    );
    let text = metrics(admin).await;
    assert!(metric(&text, NO_SPACE).unwrap_or(0.0) >= 1.0, "{text}");
    assert_eq!(metric(&text, FULL), Some(1.0), "{text}");

    std::fs::remove_file(&filler).unwrap();
    let reply = send(&mut c, &small("space again")).await;
    assert!(
        reply.starts_with("250 ") && reply.contains("queued"),
        "{reply}"
    );
    let (_, ready) = http_get(admin, "/readyz").await;
    assert!(ready.contains("ok   spool: writable"), "{ready}");
    assert_eq!(metric(&metrics(admin).await, FULL), Some(0.0));
    let got = world.wait_for(1).await;
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: space again"));
    c.cmd("QUIT", 221).await;
    relay.sigterm().await;
    relay.wait_exit(Duration::from_secs(30)).await;
    drop(tmpfs);
    assert!(
        !std::fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .contains(&dir.join("mnt").display().to_string()),
        "the tmpfs is unmounted"
    );
}
