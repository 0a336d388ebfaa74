//! The spool's segment log (issue 14) from outside: a property test over any interleaving of
//! commit, deliver, fail, defer, the queue commands and restart; and the upgrade from a
//! spool written before the log (`tests/fixtures/spool-before-log/`), delivered by the relay.
//! (Torn tails at every byte of the last record: `src/spool/log_tests.rs`. SIGKILL under
//! load in queue mode: `tests/delivery_modes.rs`.)

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use smtp_oauth_relay::spool::{now_unix, Area, QueueEntry, Spool};
use support::{RawClient, World};

#[derive(Debug, Clone)]
enum Op {
    /// A message whose body is small (the log) or large (a file of its own).
    Commit {
        large: bool,
        len: usize,
    },
    Deliver(usize),
    Fail(usize),
    /// A transient failure: attempts + 1, tried again later.
    Defer(usize),
    /// `queue retry` and `queue delete`, from a second handle as the command would.
    CliRetry(usize),
    CliDelete(usize),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<bool>(), 1usize..3000).prop_map(|(l, len)| Op::Commit {
            large: l && len % 5 == 0,
            len
        }),
        3 => any::<usize>().prop_map(Op::Deliver),
        1 => any::<usize>().prop_map(Op::Fail),
        2 => any::<usize>().prop_map(Op::Defer),
        1 => any::<usize>().prop_map(Op::CliRetry),
        1 => any::<usize>().prop_map(Op::CliDelete),
        2 => Just(Op::Restart),
    ]
}

fn entry(id: &str, size: usize) -> QueueEntry {
    QueueEntry::new(
        id.into(),
        "app@example.com".into(),
        vec!["someone@example.com".into()],
        "relay@example.com".into(),
        size as u64,
    )
}

fn body(n: usize, len: usize) -> Vec<u8> {
    let mut b = format!("Subject: {n}\r\n\r\n").into_bytes();
    b.extend((0..len).map(|i| b'a' + ((i + n) % 26) as u8));
    b
}

/// The model: what must be queued (with its body and envelope) and what failed.
#[derive(Default)]
struct Model {
    queued: BTreeMap<String, (Vec<u8>, QueueEntry)>,
    failed: BTreeSet<String>,
}

impl Model {
    fn pick(&self, i: usize) -> Option<String> {
        let n = self.queued.len();
        (n > 0).then(|| self.queued.keys().nth(i % n).unwrap().clone())
    }
}

/// Recovered equals committed minus completed, with the same bodies and attempts.
fn check(root: &Path, spool: &Spool, recovered: &[QueueEntry], model: &Model) {
    let got: BTreeSet<&str> = recovered.iter().map(|e| e.id.as_str()).collect();
    let want: BTreeSet<&str> = model.queued.keys().map(String::as_str).collect();
    assert_eq!(got, want, "recovered after a restart");
    for e in recovered {
        let (b, expected) = &model.queued[&e.id];
        assert_eq!(e.attempts, expected.attempts, "{}: attempts", e.id);
        assert_eq!(&spool.read_body(Area::Queue, &e.id).unwrap(), b, "{}", e.id);
    }
    let failed: BTreeSet<String> = spool
        .list(Area::Failed)
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(failed, model.failed, "failed/");
    // The queue commands' view agrees.
    let cli = Spool::open_existing(root).unwrap();
    let listed: BTreeSet<String> = cli
        .list(Area::Queue)
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(
        listed.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        want
    );
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut spool, _) = Spool::open(root).unwrap();
    let mut model = Model::default();
    for (n, op) in ops.into_iter().enumerate() {
        match op {
            Op::Commit { large, len } => {
                let len = if large { 130 * 1024 + len } else { len };
                let id = format!("m{n:04}");
                let b = body(n, len);
                let e = entry(&id, b.len());
                spool.commit_bytes(Arc::new(b.clone()), &e).await.unwrap();
                model.queued.insert(id, (b, e));
            }
            Op::Deliver(i) => {
                let Some(id) = model.pick(i) else { continue };
                spool.complete(&id).await.unwrap();
                model.queued.remove(&id);
            }
            Op::Fail(i) => {
                let Some(id) = model.pick(i) else { continue };
                let (_, mut e) = model.queued.remove(&id).unwrap();
                e.failed_at = Some(now_unix());
                e.failure_reason = Some("550 5.1.10 no such user".into());
                spool.fail(&e).await.unwrap();
                model.failed.insert(id);
            }
            Op::Defer(i) => {
                let Some(id) = model.pick(i) else { continue };
                let slot = model.queued.get_mut(&id).unwrap();
                slot.1.attempts += 1;
                slot.1.last_error = Some("451 4.7.500 Server busy".into());
                spool.update(&slot.1).await.unwrap();
            }
            Op::CliRetry(i) => {
                let Some(id) = model.pick(i) else { continue };
                let cli = Spool::open_existing(root).unwrap();
                assert!(cli.retry(&id).unwrap(), "retry {id}");
            }
            Op::CliDelete(i) => {
                let Some(id) = model.pick(i) else { continue };
                let cli = Spool::open_existing(root).unwrap();
                assert!(cli.delete(&id).unwrap(), "delete {id}");
                model.queued.remove(&id);
            }
            Op::Restart => {
                drop(spool);
                let (reopened, recovered) = Spool::open(root).unwrap();
                spool = reopened;
                check(root, &spool, &recovered, &model);
            }
        }
    }
    drop(spool);
    let (spool, recovered) = Spool::open(root).unwrap();
    check(root, &spool, &recovered, &model);
}

fn cases() -> u32 {
    std::env::var("SPOOL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn recovered_is_committed_minus_completed(ops in prop::collection::vec(op(), 1..40)) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(ops));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for item in std::fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        std::fs::copy(item.path(), to.join(item.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_written_before_the_log_is_delivered_after_the_upgrade() {
    let world = World::start().await;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spool-before-log");
    copy_dir(&fixture.join("queue"), &world.spool_dir().join("queue"));
    let relay = world.relay(&[("SMTP_OAUTH_RELAY_MODE", "queue")]).await;
    // And a new message beside them, which goes to the log.
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO app.example", 250).await;
    let reply = c
        .send_mail(
            "app@example.com",
            &["someone@example.com"],
            b"Subject: after the upgrade\r\nX-Test-Seq: after\r\n\r\nnew\r\n",
        )
        .await;
    assert!(reply.starts_with("250 "), "{reply}");
    c.cmd("QUIT", 221).await;
    let got = world.wait_for(3).await;
    let subjects: BTreeSet<String> = got
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(&m.data);
            text.lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(
        subjects,
        BTreeSet::from([
            "after the upgrade".to_string(),
            "upgrade one".to_string(),
            "upgrade two".to_string()
        ])
    );
    let old = got
        .iter()
        .find(|m| String::from_utf8_lossy(&m.data).contains("Subject: upgrade one"))
        .unwrap();
    assert!(String::from_utf8_lossy(&old.data).ends_with("queued before the upgrade\r\n"));
    // Nothing left: the old files are gone and the log holds nothing live.
    let spool = relay.delivery().spool().clone();
    assert!(
        support::eventually(Duration::from_secs(10), || spool
            .list(Area::Queue)
            .unwrap()
            .is_empty())
        .await
    );
    assert_eq!(
        std::fs::read_dir(world.spool_dir().join("queue"))
            .unwrap()
            .count(),
        0
    );
    relay.shutdown(Duration::from_secs(5)).await;
}
