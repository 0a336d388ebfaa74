//! Group commit for directory fsyncs: every caller needs "my rename is durable", and one
//! fsync started after a rename makes every rename before it durable. So concurrent callers
//! share fsyncs: one runs, the ones that arrive meanwhile wait for the next, which covers all
//! of them. Throughput no longer serialises on one fsync per message.

use std::io;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::sync::Lock as _;
use tokio::sync::Notify;

use super::files::sync_dir;

#[derive(Debug)]
pub struct GroupSync {
    dir: PathBuf,
    state: Mutex<State>,
    done: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Tickets handed out (one per caller).
    requested: u64,
    /// Every ticket up to this one is covered by a finished fsync.
    completed: u64,
    running: bool,
    /// fsyncs actually run (for tests and metrics).
    fsyncs: u64,
}

impl GroupSync {
    pub fn new(dir: PathBuf) -> Self {
        GroupSync {
            dir,
            state: Mutex::new(State::default()),
            done: Notify::new(),
        }
    }

    /// Returns once an fsync of the directory that started after this call has finished.
    pub async fn sync(&self) -> io::Result<()> {
        let ticket = {
            let mut s = self.state.locked();
            s.requested += 1;
            s.requested
        };
        loop {
            // Registered before checking, so a wake-up between check and wait is not lost.
            let notified = self.done.notified();
            let target = {
                let mut s = self.state.locked();
                if s.completed >= ticket {
                    return Ok(());
                }
                if s.running {
                    None
                } else {
                    s.running = true;
                    Some(s.requested)
                }
            };
            match target {
                None => notified.await,
                Some(target) => {
                    let lead = Lead { group: self };
                    let dir = self.dir.clone();
                    let result = tokio::task::spawn_blocking(move || sync_dir(&dir))
                        .await
                        .map_err(io::Error::other)
                        .and_then(|r| r);
                    {
                        let mut s = self.state.locked();
                        s.fsyncs += 1;
                        if result.is_ok() {
                            s.completed = s.completed.max(target);
                        }
                    }
                    drop(lead);
                    result?;
                }
            }
        }
    }

    /// How many fsyncs ran.
    pub fn fsyncs(&self) -> u64 {
        self.state.locked().fsyncs
    }
}

/// The leader's duty to hand the lead back, however its future ends. Dropped mid-fsync (its
/// client went away, its task was aborted), the leader would otherwise leave `running` set,
/// and every later commit would wait forever for an fsync nobody runs. The waiters it wakes
/// elect a new leader, whose fsync covers them all.
struct Lead<'a> {
    group: &'a GroupSync,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        self.group.state.locked().running = false;
        self.group.done.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let g = Arc::new(GroupSync::new(dir.path().to_owned()));
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let g = g.clone();
            tasks.push(tokio::spawn(async move { g.sync().await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let n = g.fsyncs();
        assert!((1..200).contains(&n), "200 callers, {n} fsyncs");
    }

    #[tokio::test]
    async fn a_lone_caller_gets_its_own_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let g = GroupSync::new(dir.path().to_owned());
        g.sync().await.unwrap();
        g.sync().await.unwrap();
        assert_eq!(g.fsyncs(), 2);
    }

    #[tokio::test]
    async fn a_leader_dropped_mid_fsync_hands_the_lead_back() {
        let dir = tempfile::tempdir().unwrap();
        let g = Arc::new(GroupSync::new(dir.path().to_owned()));
        // Poll a caller once: it becomes the leader and waits for its fsync. Then drop it.
        let mut leader = Box::pin(g.sync());
        let first = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(leader.as_mut().poll(cx).is_pending())
        })
        .await;
        assert!(first, "the leader is waiting for its fsync");
        assert!(g.state.locked().running);
        // A follower that arrived meanwhile, and one that arrives after the drop.
        let follower = tokio::spawn({
            let g = g.clone();
            async move { g.sync().await }
        });
        tokio::task::yield_now().await;
        drop(leader);
        let later = tokio::time::timeout(Duration::from_secs(10), g.sync()).await;
        assert!(matches!(later, Ok(Ok(()))), "a later commit must not hang");
        let followed = tokio::time::timeout(Duration::from_secs(10), follower).await;
        assert!(
            matches!(followed, Ok(Ok(Ok(())))),
            "a waiting commit must not hang"
        );
    }

    #[tokio::test]
    async fn errors_are_reported() {
        let g = GroupSync::new(PathBuf::from("/nonexistent/dir/for/sure"));
        assert!(g.sync().await.is_err());
    }
}
