//! The in-memory index of the spool's queue: which messages are due, and which are being
//! worked on ("claimed") so no message is ever attempted twice at once. The spool on disk is
//! the truth; this index is rebuilt from it at start-up and on `queue retry|delete`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::spool::QueueEntry;
use crate::sync::Lock as _;

#[derive(Debug)]
struct Slot {
    entry: QueueEntry,
    claimed: bool,
}

/// The index proper. `ready` orders the unclaimed messages by (next attempt, id), so that
/// claiming the next due ones and finding the next due time cost a few steps, not a scan
/// and sort of the whole queue: the delivery loop asks after every change, and with
/// thousands queued (queue mode under load) the scans were a third of the relay's CPU.
#[derive(Debug, Default)]
struct Index {
    slots: HashMap<String, Slot>,
    ready: BTreeSet<(u64, String)>,
    claimed: usize,
}

impl Index {
    /// Takes a message out of the index, keeping `ready` and `claimed` in step.
    fn take(&mut self, id: &str) -> Option<Slot> {
        let slot = self.slots.remove(id)?;
        if slot.claimed {
            self.claimed -= 1;
        } else {
            self.ready
                .remove(&(slot.entry.next_attempt, slot.entry.id.clone()));
        }
        Some(slot)
    }

    fn put(&mut self, entry: QueueEntry, claimed: bool) {
        self.take(&entry.id);
        if claimed {
            self.claimed += 1;
        } else {
            self.ready.insert((entry.next_attempt, entry.id.clone()));
        }
        self.slots.insert(entry.id.clone(), Slot { entry, claimed });
    }
}

#[derive(Debug, Default)]
pub struct Queue {
    index: Mutex<Index>,
    wake: Notify,
}

impl Queue {
    pub fn new(entries: Vec<QueueEntry>) -> Self {
        let q = Queue::default();
        for e in entries {
            q.insert(e, false);
        }
        q
    }

    /// Adds (or replaces) a message. `claimed` is true when an attempt is already running.
    pub fn insert(&self, entry: QueueEntry, claimed: bool) {
        self.index.locked().put(entry, claimed);
        self.wake.notify_one();
    }

    /// When the oldest message in the queue was received (unix seconds), if any.
    pub fn oldest_received_at(&self) -> Option<u64> {
        let index = self.index.locked();
        index.slots.values().map(|s| s.entry.received_at).min()
    }

    /// Claims up to `max` due, unclaimed messages, earliest first.
    pub fn claim_due(&self, now: u64, max: usize) -> Vec<QueueEntry> {
        let mut index = self.index.locked();
        let mut out = Vec::new();
        while out.len() < max {
            match index.ready.first() {
                Some((at, _)) if *at <= now => {}
                _ => break,
            }
            let (_, id) = index.ready.pop_first().expect("checked above");
            let slot = index.slots.get_mut(&id).expect("every ready id has a slot");
            slot.claimed = true;
            out.push(slot.entry.clone());
            index.claimed += 1;
        }
        out
    }

    /// Ends a claim with the message's new state (still queued).
    pub fn release(&self, entry: QueueEntry) {
        let mut index = self.index.locked();
        if index.slots.contains_key(&entry.id) {
            index.put(entry, false);
        }
        drop(index);
        self.wake.notify_one();
    }

    /// Forgets a message (delivered, failed or deleted).
    pub fn remove(&self, id: &str) {
        self.index.locked().take(id);
        self.wake.notify_one();
    }

    /// The earliest `next_attempt` among unclaimed messages.
    pub fn next_due(&self) -> Option<u64> {
        self.index.locked().ready.first().map(|(at, _)| *at)
    }

    pub fn len(&self) -> usize {
        self.index.locked().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn claimed(&self) -> usize {
        self.index.locked().claimed
    }

    /// Brings the index in line with the queue on disk (after `queue retry|delete`): new
    /// entries are added, unclaimed ones take the disk's state, unclaimed ones gone from disk
    /// are dropped. Claimed ones are left to their running attempt.
    pub fn sync_with_disk(&self, on_disk: Vec<QueueEntry>) {
        let mut index = self.index.locked();
        let ids: HashSet<&str> = on_disk.iter().map(|e| e.id.as_str()).collect();
        let gone: Vec<String> = index
            .slots
            .iter()
            .filter(|(id, s)| !s.claimed && !ids.contains(id.as_str()))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            index.take(&id);
        }
        for e in on_disk {
            if index.slots.get(&e.id).is_some_and(|s| s.claimed) {
                continue;
            }
            index.put(e, false);
        }
        drop(index);
        self.wake.notify_one();
    }

    /// Resolves when something changed (insert, release, remove).
    pub async fn changed(&self) {
        self.wake.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: &str, next: u64) -> QueueEntry {
        let mut e = QueueEntry::new(
            id.into(),
            String::new(),
            vec!["r@x".into()],
            String::new(),
            0,
        );
        e.received_at = 0;
        e.next_attempt = next;
        e.received_at_ms = 0;
        e
    }

    #[test]
    fn claims_due_once_in_order() {
        let q = Queue::new(vec![e("b", 5), e("a", 5), e("c", 1), e("later", 100)]);
        let got: Vec<String> = q.claim_due(10, 2).into_iter().map(|e| e.id).collect();
        assert_eq!(got, vec!["c", "a"]);
        let got: Vec<String> = q.claim_due(10, 10).into_iter().map(|e| e.id).collect();
        assert_eq!(got, vec!["b"], "claimed ones are not handed out again");
        assert_eq!(q.claimed(), 3);
        assert_eq!(q.next_due(), Some(100));
        q.release(e("a", 50));
        assert_eq!(q.next_due(), Some(50));
        q.remove("b");
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn disk_sync_leaves_running_attempts_alone() {
        let q = Queue::new(vec![e("running", 0), e("gone", 0), e("edited", 50)]);
        assert_eq!(q.claim_due(0, 1)[0].id, "gone");
        // "gone" is claimed, so it survives; "running" is unclaimed but deleted on disk.
        q.sync_with_disk(vec![e("edited", 1), e("new", 2)]);
        let mut ids: Vec<String> = q.claim_due(10, 10).into_iter().map(|e| e.id).collect();
        ids.sort();
        assert_eq!(ids, vec!["edited", "new"]);
        assert_eq!(q.len(), 3);
        assert_eq!(q.claimed(), 3);
        assert_eq!(q.next_due(), None);
    }

    #[test]
    fn the_index_agrees_with_a_scan_after_any_sequence() {
        // The ordered index against the plain model it replaced: scan, sort, take.
        let q = Queue::new(Vec::new());
        let mut model: HashMap<String, (u64, bool)> = HashMap::new();
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 33
        };
        for step in 0..5000 {
            let id = format!("m{}", next() % 40);
            let at = next() % 20;
            match next() % 5 {
                0 | 1 => {
                    q.insert(e(&id, at), false);
                    model.insert(id, (at, false));
                }
                2 => {
                    q.remove(&id);
                    model.remove(&id);
                }
                3 => {
                    if model.get(&id).is_some_and(|m| m.1) {
                        q.release(e(&id, at));
                        model.insert(id, (at, false));
                    }
                }
                _ => {
                    let now = next() % 20;
                    let max = (next() % 4) as usize;
                    let got: Vec<String> =
                        q.claim_due(now, max).into_iter().map(|e| e.id).collect();
                    let mut due: Vec<(u64, String)> = model
                        .iter()
                        .filter(|(_, (t, c))| !c && *t <= now)
                        .map(|(id, (t, _))| (*t, id.clone()))
                        .collect();
                    due.sort();
                    let want: Vec<String> = due.into_iter().take(max).map(|d| d.1).collect();
                    assert_eq!(got, want, "step {step}");
                    for id in &want {
                        model.get_mut(id).unwrap().1 = true;
                    }
                }
            }
            assert_eq!(q.len(), model.len(), "step {step}");
            assert_eq!(q.claimed(), model.values().filter(|m| m.1).count());
            let next_due = model.values().filter(|m| !m.1).map(|m| m.0).min();
            assert_eq!(q.next_due(), next_due, "step {step}");
        }
    }
}
