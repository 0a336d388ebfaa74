//! What one mailbox's replica owes Redis: the leases of its sends in progress (renewed while
//! they run), the sends Redis may not know of (made in fallback, or whose release failed), and
//! the refunds Redis has not confirmed (a send cancelled or timed out after the script may have
//! run). Pure: no `.await`, every method takes what it needs; `coordinator.rs` makes the calls.
//! Every record in Redis is keyed by its send's id, so sending one twice counts it once.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

/// A send Redis may not have recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub id: String,
    pub started: Instant,
    /// `None` while it runs (its window entry is made when it ends).
    pub finished: Option<Instant>,
    pub recipients: u32,
}

/// The most sends one backfill call carries (a long outage is sent in several calls, each
/// well inside the call timeout).
pub const BACKFILL_CHUNK: usize = 200;

#[derive(Debug, Default)]
pub struct Ledger {
    leases: HashSet<String>,
    pending: Vec<Pending>,
    refunds: Vec<(String, u32)>,
}

impl Ledger {
    /// Redis granted `id` a lease.
    pub fn leased(&mut self, id: &str) {
        self.leases.insert(id.to_string());
    }

    /// A send taken locally while Redis was away: it holds a lease (put in Redis by the next
    /// renewal) and is recorded when Redis is back.
    pub fn taken_in_fallback(&mut self, id: &str, started: Instant, recipients: u32) {
        self.leases.insert(id.to_string());
        self.pending.push(Pending {
            id: id.to_string(),
            started,
            finished: None,
            recipients,
        });
    }

    /// A send ended (or was given back, `refund`): its lease is no longer renewed. A pending
    /// send is marked finished, or forgotten when refunded.
    pub fn end(&mut self, id: &str, now: Instant, refund: bool) {
        self.leases.remove(id);
        if let Some(i) = self.pending.iter().position(|p| p.id == id) {
            if refund {
                self.pending.remove(i);
            } else {
                self.pending[i].finished = Some(now);
            }
        }
    }

    /// Redis did not take a finished send's release: record it when it is back.
    pub fn release_failed(
        &mut self,
        id: &str,
        started: Instant,
        finished: Instant,
        recipients: u32,
    ) {
        match self.pending.iter_mut().find(|p| p.id == id) {
            Some(p) => p.finished = Some(finished),
            None => self.pending.push(Pending {
                id: id.to_string(),
                started,
                finished: Some(finished),
                recipients,
            }),
        }
    }

    /// Redis did not confirm a refund: try again later.
    pub fn refund_failed(&mut self, id: &str, recipients: u32) {
        if !self.refunds.iter().any(|(r, _)| r == id) {
            self.refunds.push((id.to_string(), recipients));
        }
    }

    pub fn leases(&self) -> Vec<String> {
        self.leases.iter().cloned().collect()
    }

    pub fn has_leases(&self) -> bool {
        !self.leases.is_empty()
    }

    /// Anything to send to Redis before the next acquisition?
    pub fn owes(&self) -> bool {
        !self.pending.is_empty() || !self.refunds.is_empty()
    }

    /// The next sends to record (at most [`BACKFILL_CHUNK`]), after forgetting finished ones
    /// older than `day` (they count nowhere any more).
    pub fn backlog(&mut self, now: Instant, day: Duration) -> Vec<Pending> {
        self.pending
            .retain(|p| p.finished.is_none() || now.saturating_duration_since(p.started) < day);
        self.pending.iter().take(BACKFILL_CHUNK).cloned().collect()
    }

    /// Redis recorded `sent`. An entry that finished meanwhile stays, so its end is recorded
    /// too; a send still running counts in the window when it ends (its release).
    pub fn recorded(&mut self, sent: &[Pending]) {
        self.pending.retain(|p| {
            !sent
                .iter()
                .any(|s| s.id == p.id && s.finished == p.finished)
        });
    }

    /// The refunds to try again.
    pub fn refunds(&self) -> Vec<(String, u32)> {
        self.refunds.iter().take(BACKFILL_CHUNK).cloned().collect()
    }

    pub fn refunded(&mut self, done: &[(String, u32)]) {
        self.refunds.retain(|r| !done.contains(r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn fallback_sends_are_owed_until_recorded() {
        let t0 = Instant::now();
        let mut l = Ledger::default();
        assert!(!l.owes());
        l.taken_in_fallback("a", t0, 2);
        l.taken_in_fallback("b", t0, 1);
        assert!(l.owes() && l.has_leases());
        l.end("a", t0 + Duration::from_secs(1), false);
        l.end("b", t0, true);
        assert_eq!(
            l.leases(),
            Vec::<String>::new(),
            "no lease renewed after its send"
        );
        let sent = l.backlog(t0, DAY);
        assert_eq!(sent.len(), 1, "a refunded send is not owed");
        assert_eq!(sent[0].finished, Some(t0 + Duration::from_secs(1)));
        l.recorded(&sent);
        assert!(!l.owes());
    }

    #[test]
    fn a_send_that_finishes_while_being_recorded_stays_owed() {
        let t0 = Instant::now();
        let mut l = Ledger::default();
        l.taken_in_fallback("a", t0, 1);
        let sent = l.backlog(t0, DAY);
        // It ends while the backfill is on the wire.
        l.end("a", t0 + Duration::from_millis(5), false);
        l.recorded(&sent);
        let again = l.backlog(t0, DAY);
        assert_eq!(again.len(), 1, "its end is recorded next time");
        l.recorded(&again);
        assert!(!l.owes());
    }

    #[test]
    fn a_failed_release_and_a_failed_refund_are_owed_once() {
        let t0 = Instant::now();
        let mut l = Ledger::default();
        l.leased("x");
        l.end("x", t0, false);
        l.release_failed("x", t0, t0, 3);
        l.release_failed("x", t0, t0 + Duration::from_secs(1), 3);
        let owed = l.backlog(t0, DAY);
        assert_eq!(owed.len(), 1);
        assert_eq!(owed[0].finished, Some(t0 + Duration::from_secs(1)));
        l.refund_failed("y", 4);
        l.refund_failed("y", 4);
        assert_eq!(l.refunds(), vec![("y".to_string(), 4)]);
        l.refunded(&[("y".to_string(), 4)]);
        l.recorded(&owed);
        assert!(!l.owes());
    }

    #[test]
    fn old_sends_are_forgotten_and_long_backlogs_go_in_chunks() {
        let t0 = Instant::now();
        let mut l = Ledger::default();
        for i in 0..(BACKFILL_CHUNK + 50) {
            l.taken_in_fallback(&format!("s{i}"), t0, 1);
            l.end(&format!("s{i}"), t0, false);
        }
        let first = l.backlog(t0, DAY);
        assert_eq!(first.len(), BACKFILL_CHUNK);
        l.recorded(&first);
        assert_eq!(l.backlog(t0, DAY).len(), 50);
        // A day later they count nowhere: forgotten, not sent.
        assert!(l.backlog(t0 + DAY, DAY).is_empty());
        assert!(!l.owes());
        // A send still running is kept however old.
        l.taken_in_fallback("long", t0, 1);
        assert_eq!(l.backlog(t0 + DAY * 2, DAY).len(), 1);
    }
}
