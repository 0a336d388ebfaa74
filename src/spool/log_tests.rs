//! The segment log through the spool's own API: commit, read back, move out, fail, finish,
//! reclaim, torn tails, edits by a reader beside the owner, and the one-writer lock.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use super::writer::SEGMENT_MAX;
use super::*;

fn entry(id: &str, size: usize) -> QueueEntry {
    let mut e = QueueEntry::new(
        id.into(),
        "app@example.com".into(),
        vec!["a@example.com".into()],
        "relay@example.com".into(),
        size as u64,
    );
    e.client = "127.0.0.1:1".into();
    e.received_at_ms = 0;
    e
}

fn body(id: &str, size: usize) -> Vec<u8> {
    let mut b = format!("Subject: {id}\r\n\r\n").into_bytes();
    b.resize(size.max(b.len()), b'x');
    b
}

async fn commit(spool: &Spool, id: &str, size: usize) {
    spool
        .commit_bytes(Arc::new(body(id, size)), &entry(id, size))
        .await
        .unwrap();
}

fn ids(entries: &[QueueEntry]) -> BTreeSet<String> {
    entries.iter().map(|e| e.id.clone()).collect()
}

fn files_in(dir: &Path, ext: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == ext)
        })
        .count()
}

#[tokio::test]
async fn small_bodies_go_to_the_log_and_read_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    commit(&spool, "a", 100).await;
    commit(&spool, "b", 5000).await;
    // Nothing per message in queue/: the bodies are in a segment.
    assert_eq!(
        std::fs::read_dir(dir.path().join("queue")).unwrap().count(),
        0
    );
    assert_eq!(
        spool.read_logged("b").await.unwrap().unwrap(),
        body("b", 5000)
    );
    assert!(spool.read_logged("nope").await.is_none());
    assert!(spool.log_fsyncs() >= 1);
    drop(spool);

    let (spool, queued) = Spool::open(dir.path()).unwrap();
    assert_eq!(ids(&queued), ids(&[entry("a", 0), entry("b", 0)]));
    assert_eq!(
        (queued[0].size, queued[0].rcpt_to.clone()),
        (100, vec!["a@example.com".to_string()])
    );
    assert_eq!(
        spool.read_logged("a").await.unwrap().unwrap(),
        body("a", 100)
    );
    assert_eq!(spool.read_body(Area::Queue, "b").unwrap(), body("b", 5000));
}

#[tokio::test]
async fn a_large_body_keeps_a_file_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let big = log::SEGMENT_BODY_MAX + 1;
    commit(&spool, "big", big).await;
    assert!(spool.body_path("big").exists());
    assert!(spool.read_logged("big").await.is_none());
}

#[tokio::test]
async fn finished_messages_stay_finished_and_their_segment_goes() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let (spool, _) = Spool::open(dir.path()).unwrap();
    // Enough to fill more than two segments.
    let size = 100 * 1024;
    let n = (2 * SEGMENT_MAX as usize) / size + 5;
    for i in 0..n {
        commit(&spool, &format!("m{i:03}"), size).await;
    }
    assert!(files_in(&log_dir, "seg") >= 3);
    for i in 0..n - 1 {
        spool.complete(&format!("m{i:03}")).await.unwrap();
    }
    // Only the active segment (with the last message) is left.
    assert_eq!(files_in(&log_dir, "seg"), 1);
    assert_eq!(files_in(&log_dir, "done"), 1);
    drop(spool);
    let (spool, queued) = Spool::open(dir.path()).unwrap();
    assert_eq!(ids(&queued), BTreeSet::from([format!("m{:03}", n - 1)]));
    spool.complete(&queued[0].id).await.unwrap();
    drop(spool);
    let (_, queued) = Spool::open(dir.path()).unwrap();
    assert!(queued.is_empty());
    assert_eq!(
        files_in(&log_dir, "seg"),
        1,
        "only the new start's empty segment"
    );
}

#[tokio::test]
async fn a_deferred_message_moves_to_its_own_file_with_its_new_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    commit(&spool, "d", 300).await;
    let mut later = entry("d", 300);
    later.attempts = 2;
    later.last_error = Some("451 4.7.500 later".into());
    spool.update(&later).await.unwrap();
    assert!(spool.read_logged("d").await.is_none(), "out of the log");
    assert_eq!(std::fs::read(spool.body_path("d")).unwrap(), body("d", 300));
    assert_eq!(spool.find("d").unwrap().unwrap().1.attempts, 2);
    drop(spool);
    let (_, queued) = Spool::open(dir.path()).unwrap();
    assert_eq!(queued.len(), 1, "once, not twice: {queued:?}");
    assert_eq!(queued[0].attempts, 2);
}

#[tokio::test]
async fn a_failed_message_is_copied_to_failed_then_finished() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    commit(&spool, "f", 300).await;
    let mut f = entry("f", 300);
    f.failed_at = Some(now_unix());
    f.failure_reason = Some("550 5.1.10 no such user".into());
    spool.fail(&f).await.unwrap();
    assert_eq!(spool.find("f").unwrap().unwrap().0, Area::Failed);
    assert_eq!(
        std::fs::read(spool.body_in(Area::Failed, "f")).unwrap(),
        body("f", 300)
    );
    drop(spool);
    let (spool, queued) = Spool::open(dir.path()).unwrap();
    assert!(queued.is_empty());
    // And `queue retry` brings it back as a file of its own.
    assert!(spool.retry("f").unwrap());
    assert_eq!(
        ids(&spool.list(Area::Queue).unwrap()),
        ids(&[entry("f", 0)])
    );
}

#[tokio::test]
async fn a_copy_in_queue_or_failed_wins_over_the_log_at_start_up() {
    // A move out of the log (or into failed/) cut short by a crash after the file was made.
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    commit(&spool, "moved", 200).await;
    commit(&spool, "failed", 200).await;
    commit(&spool, "stays", 200).await;
    drop(spool);
    let mut moved = entry("moved", 200);
    moved.attempts = 4;
    files::write_synced(&dir.path().join("queue/moved.eml"), b"x").unwrap();
    files::write_synced(
        &dir.path().join("queue/moved.json"),
        &serde_json::to_vec(&moved).unwrap(),
    )
    .unwrap();
    files::write_synced(&dir.path().join("failed/failed.eml"), b"x").unwrap();
    files::write_synced(
        &dir.path().join("failed/failed.json"),
        &serde_json::to_vec(&entry("failed", 200)).unwrap(),
    )
    .unwrap();
    let (_, queued) = Spool::open(dir.path()).unwrap();
    assert_eq!(
        ids(&queued),
        BTreeSet::from(["moved".into(), "stays".into()])
    );
    assert_eq!(queued.iter().find(|e| e.id == "moved").unwrap().attempts, 4);
}

/// Commits `n` messages, returning the byte range of the last record in its segment.
async fn spool_with_records(root: &Path, n: usize, size: usize) -> (PathBuf, u64, u64) {
    let (spool, _) = Spool::open(root).unwrap();
    let mut before = 0;
    for i in 0..n {
        if i == n - 1 {
            before = std::fs::metadata(only_segment(root)).unwrap().len();
        }
        commit(&spool, &format!("m{i}"), size).await;
    }
    let seg = only_segment(root);
    let after = std::fs::metadata(&seg).unwrap().len();
    (seg, before, after)
}

fn only_segment(root: &Path) -> PathBuf {
    let segs = log_read::segments(&root.join("log")).unwrap();
    let with_data: Vec<_> = segs
        .into_iter()
        .filter(|s| std::fs::metadata(&s.path).unwrap().len() > 0)
        .collect();
    assert!(with_data.len() <= 1, "{with_data:?}");
    with_data.first().map_or_else(
        || log_read::SegmentFiles::new(&root.join("log"), 1).path,
        |s| s.path.clone(),
    )
}

#[tokio::test]
async fn a_segment_cut_at_any_byte_of_its_last_record_recovers_every_whole_message() {
    let made = tempfile::tempdir().unwrap();
    let (seg, start, end) = spool_with_records(made.path(), 3, 150).await;
    let whole = std::fs::read(&seg).unwrap();
    assert_eq!(whole.len() as u64, end);
    let expected: BTreeSet<String> = ["m0", "m1"].map(String::from).into();
    for cut in start..end {
        let copy = tempfile::tempdir().unwrap();
        copy_tree(made.path(), copy.path());
        let seg_copy = copy.path().join(seg.strip_prefix(made.path()).unwrap());
        std::fs::write(&seg_copy, &whole[..cut as usize]).unwrap();
        let (spool, queued) = Spool::open(copy.path()).unwrap();
        assert_eq!(ids(&queued), expected, "cut at {cut} of {start}..{end}");
        for id in ["m0", "m1"] {
            assert_eq!(
                spool.read_logged(id).await.unwrap().unwrap(),
                body(id, 150),
                "cut at {cut}"
            );
        }
    }
    // Uncut: all three.
    let (_, queued) = Spool::open(made.path()).unwrap();
    assert_eq!(queued.len(), 3);
}

#[tokio::test]
async fn a_torn_done_record_is_cut_so_later_ones_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    for id in ["a", "b", "c"] {
        commit(&spool, id, 100).await;
    }
    spool.complete("a").await.unwrap();
    drop(spool);
    // A crash tore the next done record.
    let done = log_read::segments(&dir.path().join("log")).unwrap()[0]
        .done
        .clone();
    let mut bytes = std::fs::read(&done).unwrap();
    bytes.extend_from_slice(&record::done("b")[..10]);
    std::fs::write(&done, &bytes).unwrap();
    let (spool, queued) = Spool::open(dir.path()).unwrap();
    assert_eq!(ids(&queued), BTreeSet::from(["b".into(), "c".into()]));
    spool.complete("c").await.unwrap();
    drop(spool);
    let (_, queued) = Spool::open(dir.path()).unwrap();
    assert_eq!(ids(&queued), BTreeSet::from(["b".into()]));
}

#[tokio::test]
async fn queue_commands_beside_the_owner_edit_and_the_owner_applies() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, _) = Spool::open(dir.path()).unwrap();
    for id in ["keep", "retry", "gone", "adopt"] {
        commit(&relay, id, 200).await;
    }
    // A `queue` command: another handle, not the owner.
    let cli = Spool::open_existing(dir.path()).unwrap();
    assert_eq!(ids(&cli.list(Area::Queue).unwrap()).len(), 4);
    assert_eq!(
        cli.read_body(Area::Queue, "keep").unwrap(),
        body("keep", 200)
    );
    assert!(matches!(
        cli.body_at(Area::Queue, "keep").unwrap(),
        BodyAt::Segment { .. }
    ));
    assert!(cli.retry("retry").unwrap());
    assert!(cli.delete("gone").unwrap());
    let to = Destination {
        tenant: "t".into(),
        client_id: "c".into(),
        mailbox: "other@example.com".into(),
        upstream: "smtp.office365.com:587".into(),
    };
    assert!(cli.set_destination("adopt", Some(&to)).unwrap());
    // The reader sees its edits at once.
    let seen = cli.list(Area::Queue).unwrap();
    assert_eq!(
        ids(&seen),
        BTreeSet::from(["adopt".into(), "keep".into(), "retry".into()])
    );
    assert!(cli.find("gone").unwrap().is_none());
    assert_eq!(
        cli.find("adopt").unwrap().unwrap().1.mailbox,
        "other@example.com"
    );
    // The owner applies them when it re-reads the queue: edited ones become files.
    let listed = relay.list(Area::Queue).unwrap();
    assert_eq!(ids(&listed), ids(&seen));
    assert!(relay.read_logged("retry").await.is_none());
    assert_eq!(
        std::fs::read(relay.body_path("retry")).unwrap(),
        body("retry", 200)
    );
    assert!(relay.read_logged("gone").await.is_none());
    assert!(relay.read_logged("keep").await.is_some());
    assert_eq!(
        std::fs::read_dir(dir.path().join("log/edits"))
            .unwrap()
            .count(),
        0,
        "every edit applied"
    );
    drop(relay);
    let (_, queued) = Spool::open(dir.path()).unwrap();
    assert_eq!(ids(&queued), ids(&seen));
}

#[tokio::test]
async fn an_edit_of_a_message_finished_meanwhile_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, _) = Spool::open(dir.path()).unwrap();
    commit(&relay, "late", 200).await;
    // Edits left for a message the relay delivers before it re-reads the queue.
    let edits = dir.path().join("log/edits");
    std::fs::write(edits.join("late.eml"), b"x").unwrap();
    std::fs::write(
        edits.join("late.json"),
        serde_json::to_vec(&entry("late", 200)).unwrap(),
    )
    .unwrap();
    relay.complete("late").await.unwrap();
    assert!(
        relay.list(Area::Queue).unwrap().is_empty(),
        "not brought back"
    );
    assert_eq!(std::fs::read_dir(&edits).unwrap().count(), 0);
    // And a reader that edits after the relay finished it is told so.
    commit(&relay, "done2", 200).await;
    let cli = Spool::open_existing(dir.path()).unwrap();
    assert!(cli.find("done2").unwrap().is_some());
    relay.complete("done2").await.unwrap();
    assert!(!cli.retry("done2").unwrap());
    assert_eq!(std::fs::read_dir(&edits).unwrap().count(), 0);
}

#[tokio::test]
async fn a_second_relay_on_the_spool_writes_files_and_leaves_the_log_to_its_owner() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = Spool::open(dir.path()).unwrap();
    commit(&first, "firsts", 100).await;
    let (second, queued) = Spool::open(dir.path()).unwrap();
    assert!(
        queued.is_empty(),
        "the owner's messages are not the second's"
    );
    commit(&second, "seconds", 100).await;
    assert!(second.body_path("seconds").exists(), "a file of its own");
    assert_eq!(
        ids(&second.list(Area::Queue).unwrap()),
        BTreeSet::from(["seconds".into()])
    );
    assert_eq!(
        ids(&first.list(Area::Queue).unwrap()),
        BTreeSet::from(["firsts".into(), "seconds".into()])
    );
    // The lock is the log's: a third open after the first stops owns it.
    drop(second);
    drop(first);
    let (third, queued) = Spool::open(dir.path()).unwrap();
    assert_eq!(queued.len(), 2);
    commit(&third, "thirds", 100).await;
    assert!(third.read_logged("thirds").await.is_some());
}

#[tokio::test]
async fn a_refused_commit_leaves_nothing_and_the_next_one_works() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    commit(&spool, "before", 100).await;
    spool.faults().inject(Some(WriteFault::NoSpace));
    assert!(spool
        .commit_bytes(Arc::new(body("refused", 100)), &entry("refused", 100))
        .await
        .is_err());
    spool.faults().inject(None);
    commit(&spool, "after", 100).await;
    drop(spool);
    let (_, queued) = Spool::open(dir.path()).unwrap();
    assert_eq!(
        ids(&queued),
        BTreeSet::from(["after".into(), "before".into()])
    );
}

fn copy_tree(from: &Path, to: &Path) {
    for item in std::fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        let target = to.join(item.file_name());
        if item.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&item.path(), &target);
        } else if item.file_name() != "lock" {
            std::fs::copy(item.path(), &target).unwrap();
        }
    }
}

#[tokio::test]
async fn an_edit_of_a_message_that_moved_out_meanwhile_applies_to_its_file() {
    // The relay defers a message (it moves to a file of its own) after a `queue` command
    // left an edit for it: the edit must neither be lost nor bring back old state.
    let dir = tempfile::tempdir().unwrap();
    let (relay, _) = Spool::open(dir.path()).unwrap();
    commit(&relay, "retried", 200).await;
    commit(&relay, "deleted", 200).await;
    let cli = Spool::open_existing(dir.path()).unwrap();
    assert!(cli.retry("retried").unwrap());
    assert!(cli.delete("deleted").unwrap());
    let mut later = entry("retried", 200);
    later.attempts = 3;
    later.next_attempt = now_unix() + 3600;
    relay.update(&later).await.unwrap();
    // A delete asked for before the deferral wins over it.
    assert!(relay.update(&entry("deleted", 200)).await.is_err());
    let listed = relay.list(Area::Queue).unwrap();
    assert_eq!(ids(&listed), BTreeSet::from(["retried".into()]));
    let e = &listed[0];
    assert_eq!(e.attempts, 3, "the relay's newer envelope is kept");
    assert!(e.next_attempt <= now_unix(), "and the retry applies to it");
    assert_eq!(
        std::fs::read_dir(dir.path().join("log/edits"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read(relay.body_path("retried")).unwrap(),
        body("retried", 200)
    );
}
