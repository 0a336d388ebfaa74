//! Queued mail is private (issue 11, item 3): started under the usual `umask 022`, the relay
//! binary creates every spool file `0600` and every directory `0700` (bodies that arrive in
//! memory or stream through `incoming/`, envelopes, `failed/`, the queue commands' rescan
//! request), and warns at start-up about a spool directory other users can read.
//!
//! Loopback only; every wait is bounded.

mod support;

#[path = "support/child.rs"]
mod child;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use child::{free_addr, RelayChild};
use support::{relay_binary, wait_until, RawClient, World};

const START: Duration = Duration::from_secs(30);

/// The shell line that sets the usual umask, then runs the relay with the arguments after it.
const UMASK_022: &str = "umask 022; exec \"$0\" \"$@\"";

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every directory and file under `root` (not `root` itself).
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

fn env_for(world: &World, smtp: std::net::SocketAddr) -> Vec<(String, String)> {
    let mut env = world.env();
    env.retain(|(k, _)| k != "SMTP_OAUTH_RELAY_LISTEN" && k != "SMTP_OAUTH_RELAY_ADMIN_LISTEN");
    env.push(("SMTP_OAUTH_RELAY_LISTEN".into(), smtp.to_string()));
    env.push(("SMTP_OAUTH_RELAY_ADMIN_LISTEN".into(), "off".into()));
    env.push(("SMTP_OAUTH_RELAY_MODE".into(), "queue".into()));
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_files_are_private_under_umask_022() {
    let world = World::start().await;
    let dir = world.dir.path();
    let spool = world.spool_dir();
    let smtp = free_addr();
    let env = env_for(&world, smtp);
    let binary = relay_binary().display().to_string();
    let mut relay = RelayChild::spawn(
        Path::new("/bin/sh"),
        &["-c", UMASK_022, &binary, "serve"],
        &env,
        dir,
        &dir.join("relay.log"),
    );
    relay.wait_ready(smtp, START).await;
    let mut c = RawClient::connect(smtp).await;
    c.cmd("EHLO app.example", 250).await;
    // Kept in the queue (Exchange answers 451 to the end of data every time): one small body
    // (held in memory, written at commit) and one that streams through `incoming/`.
    let small = c
        .send_mail(
            "app@example.com",
            &["data-temp@example.com"],
            b"Subject: small\r\n\r\nhi\r\n",
        )
        .await;
    assert!(small.starts_with("250 "), "{small}");
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    for i in 0..4000 {
        big.extend_from_slice(
            format!("line {i:05} of a body larger than the in-memory limit\r\n").as_bytes(),
        );
    }
    let big = c
        .send_mail("app@example.com", &["data-temp@example.com"], &big)
        .await;
    assert!(big.starts_with("250 "), "{big}");
    // Refused for good: moved to failed/.
    let perm = c
        .send_mail(
            "app@example.com",
            &["data-perm@example.com"],
            b"Subject: perm\r\n\r\nno\r\n",
        )
        .await;
    assert!(perm.starts_with("250 "), "{perm}");
    c.cmd("QUIT", 221).await;
    let failed = spool.join("failed");
    wait_until("a message in failed/", Duration::from_secs(20), || {
        child::files_in(&failed)
            .iter()
            .any(|n| n.ends_with(".json"))
    })
    .await;
    // Both deferred: the small one leaves the spool's log for a file of its own then.
    wait_until(
        "two deferred bodies in queue/",
        Duration::from_secs(20),
        || {
            child::files_in(&spool.join("queue"))
                .iter()
                .filter(|n| n.ends_with(".eml"))
                .count()
                >= 2
        },
    )
    .await;

    relay.sigterm().await;
    relay.wait_exit(Duration::from_secs(30)).await;
    // A queue command under the same umask rewrites envelopes and drops control/rescan.
    let status = Command::new("/bin/sh")
        .args(["-c", UMASK_022, &binary, "queue", "retry", "--all"])
        .env("SMTP_OAUTH_RELAY_SPOOL_DIR", &spool)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(spool.join("control/rescan").exists());

    assert_eq!(mode(&spool), 0o700, "the spool directory");
    let mut files = 0;
    for p in walk(&spool) {
        if p.is_dir() {
            assert_eq!(mode(&p), 0o700, "{}", p.display());
        } else {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
            files += 1;
        }
    }
    assert!(
        files >= 7,
        "bodies, envelopes, failed/, rescan: {:?}",
        walk(&spool)
    );
    assert!(
        !relay.stderr().contains("can be read by other users"),
        "a spool it created itself is private: {}",
        relay.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_other_users_can_read_is_warned_about() {
    let world = World::start().await;
    let dir = world.dir.path();
    let spool = world.spool_dir();
    std::fs::create_dir(&spool).unwrap();
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let smtp = free_addr();
    let mut relay = RelayChild::spawn(
        relay_binary(),
        &["serve"],
        &env_for(&world, smtp),
        dir,
        &dir.join("relay.log"),
    );
    relay.wait_ready(smtp, START).await;
    let log = relay.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("the spool directory can be read by other users"))
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("mode=755"), "{line}");
    assert!(
        line.contains(&format!("chmod 700 {}", spool.display())),
        "{line}"
    );
    // Its own sub-directories are private all the same.
    for sub in ["incoming", "queue", "failed", "control"] {
        assert_eq!(mode(&spool.join(sub)), 0o700, "{sub}");
    }
}
