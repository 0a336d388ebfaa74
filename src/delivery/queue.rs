//! The in-memory index of the spool's queue: which messages are due, and which are being
//! worked on ("claimed") so no message is ever attempted twice at once. The spool on disk is
//! the truth; this index is rebuilt from it at start-up and on `queue retry|delete`.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::spool::QueueEntry;
use crate::sync::Lock as _;

#[derive(Debug)]
struct Slot {
    entry: QueueEntry,
    claimed: bool,
}

#[derive(Debug, Default)]
pub struct Queue {
    slots: Mutex<HashMap<String, Slot>>,
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
        self.slots
            .locked()
            .insert(entry.id.clone(), Slot { entry, claimed });
        self.wake.notify_one();
    }

    /// When the oldest message in the queue was received (unix seconds), if any.
    pub fn oldest_received_at(&self) -> Option<u64> {
        let slots = self.slots.locked();
        slots.values().map(|s| s.entry.received_at).min()
    }

    /// Claims up to `max` due, unclaimed messages, earliest first.
    pub fn claim_due(&self, now: u64, max: usize) -> Vec<QueueEntry> {
        let mut slots = self.slots.locked();
        let mut due: Vec<&mut Slot> = slots
            .values_mut()
            .filter(|s| !s.claimed && s.entry.next_attempt <= now)
            .collect();
        due.sort_by(|a, b| {
            (a.entry.next_attempt, &a.entry.id).cmp(&(b.entry.next_attempt, &b.entry.id))
        });
        due.into_iter()
            .take(max)
            .map(|s| {
                s.claimed = true;
                s.entry.clone()
            })
            .collect()
    }

    /// Ends a claim with the message's new state (still queued).
    pub fn release(&self, entry: QueueEntry) {
        let mut slots = self.slots.locked();
        if let Some(slot) = slots.get_mut(&entry.id) {
            slot.entry = entry;
            slot.claimed = false;
        }
        drop(slots);
        self.wake.notify_one();
    }

    /// Forgets a message (delivered, failed or deleted).
    pub fn remove(&self, id: &str) {
        self.slots.locked().remove(id);
        self.wake.notify_one();
    }

    /// The earliest `next_attempt` among unclaimed messages.
    pub fn next_due(&self) -> Option<u64> {
        self.slots
            .locked()
            .values()
            .filter(|s| !s.claimed)
            .map(|s| s.entry.next_attempt)
            .min()
    }

    pub fn len(&self) -> usize {
        self.slots.locked().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn claimed(&self) -> usize {
        self.slots.locked().values().filter(|s| s.claimed).count()
    }

    /// Brings the index in line with the queue on disk (after `queue retry|delete`): new
    /// entries are added, unclaimed ones take the disk's state, unclaimed ones gone from disk
    /// are dropped. Claimed ones are left to their running attempt.
    pub fn sync_with_disk(&self, on_disk: Vec<QueueEntry>) {
        let mut slots = self.slots.locked();
        let ids: std::collections::HashSet<String> = on_disk.iter().map(|e| e.id.clone()).collect();
        slots.retain(|id, s| s.claimed || ids.contains(id));
        for e in on_disk {
            match slots.get_mut(&e.id) {
                Some(s) if s.claimed => {}
                Some(s) => s.entry = e,
                None => {
                    slots.insert(
                        e.id.clone(),
                        Slot {
                            entry: e,
                            claimed: false,
                        },
                    );
                }
            }
        }
        drop(slots);
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
    }
}
