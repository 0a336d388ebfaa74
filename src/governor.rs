//! Per-mailbox pacing: the relay keeps inside Exchange Online's sending limits instead of
//! being throttled by them (reference §4.1, DESIGN §2 "Respect Exchange", §7).
//!
//! One [`Governor`] per mailbox enforces, with every limit switchable off by `0` (benchmarks):
//! - at most `max_connections` sessions submitting at once (Exchange: 3, else
//!   `432 4.3.2 Concurrent connections limit exceeded`);
//! - at most `rate` messages per rolling `rate_window` (Exchange: 30 per minute);
//! - at most `daily_recipients` recipients per rolling 24 h (Exchange: 10,000, else
//!   `554 5.2.0 …SubmissionQuotaExceededException`);
//! - at most `max_recipients_per_message` recipients per submitted message: [`split_batches`]
//!   cuts larger envelopes into batches, and each batch asks the governor on its own.
//!
//! It also reacts to what Exchange says: [`GovernorState::on_concurrency_throttle`] after a
//! `432 4.3.2` (one connection fewer for [`THROTTLE_STEP`], then one step back per
//! [`THROTTLE_STEP`] until `max_connections`), [`GovernorState::on_quota_exceeded`] after a
//! `554 5.2.0 …SubmissionQuotaExceeded` (hold the mailbox until its budget frees).
//!
//! # Why a rolling-window log and not a token bucket
//!
//! Exchange counts messages per minute. A token bucket with rate R and burst B lets B messages
//! out at once and then refills, so one 60 s window can see B + R messages, which Exchange may
//! count as a violation (and then carries the excess over, i.e. delays it anyway). Instead we
//! keep the exact instants of the sends of the last window in a `VecDeque` and allow a send
//! when fewer than R of them are younger than `rate_window`. A burst of R goes at once (good
//! latency for hybrid mode, where the client waits), and no window of length `rate_window`,
//! wherever it starts, ever holds more than R sends. The log holds at most R instants. The
//! window is configurable so integration tests can use e.g. 10 per second.
//!
//! The daily recipient budget works the same way with `(instant, recipients)` entries over
//! 24 h. A single batch with more recipients than the whole budget (`recipients >
//! daily_recipients`) could never fit; instead of waiting forever it goes when the 24 h log is
//! empty (and counts in full afterwards), so it waits at most one day.
//!
//! # Shape
//!
//! [`GovernorState`] is the pure decision logic: no `.await`, no clock of its own; every
//! method takes `now`. [`Governor`] (`governor/pacer.rs`) is the thin async wrapper shared via
//! `Arc`: a mutex around the state, a `Notify` that wakes waiters when a [`Permit`] drops, and `sleep_until` for the
//! instant a window frees. It must not know about SMTP or mailboxes by name: callers map
//! replies to [`Governor::on_concurrency_throttle`] / [`Governor::on_quota_exceeded`] and log
//! with the mailbox.
//!
//! Old log entries are pruned lazily, when a send is recorded; the read-only methods simply
//! ignore entries that have left their window. `now` must not go backwards between calls
//! (tokio's `Instant` is monotonic).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

mod coordinator;
mod ledger;
mod pacer;
pub mod scripts;
pub mod shared;

pub use coordinator::{Coordinator, SharedHold, SharedMailbox};
pub use pacer::{Governor, Permit};

/// The rolling window of the daily recipient budget (reference §4.1: "rolling 24 h").
pub const DAILY_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// After a `432 4.3.2`, one connection fewer for this long; then one more connection per
/// further step until `max_connections` is reached again.
pub const THROTTLE_STEP: Duration = Duration::from_secs(5 * 60);

/// Hold after `SubmissionQuotaExceeded` when we have no record of recent recipients (another
/// client of the same mailbox used the budget, or the daily limit is off).
pub const QUOTA_HOLD_UNKNOWN: Duration = Duration::from_secs(60 * 60);

/// The shortest hold after `SubmissionQuotaExceeded`: Exchange knows better than our log, so
/// never hammer it again right away.
pub const QUOTA_HOLD_MIN: Duration = Duration::from_secs(15 * 60);

/// Exchange Online's per-mailbox limits (reference §4.1). `0` switches a limit off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Sessions submitting at the same time (Exchange: 3). `0` = unlimited.
    pub max_connections: u32,
    /// Messages per `rate_window` (Exchange: 30 per minute). `0` = unlimited.
    pub rate: u32,
    /// The rolling window of `rate`; 60 s for Exchange, shorter in tests. (A zero window
    /// holds nothing, so it disables the rate limit too.)
    pub rate_window: Duration,
    /// Recipients per rolling 24 h (Exchange: 10,000). `0` = unlimited.
    pub daily_recipients: u32,
    /// Recipients per submitted message, the batch size of [`split_batches`] (Exchange: 500 by
    /// default, at most 1,000). `0` = never split.
    pub max_recipients_per_message: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 3,
            rate: 30,
            rate_window: Duration::from_secs(60),
            daily_recipients: 10_000,
            max_recipients_per_message: 500,
        }
    }
}

impl Limits {
    /// Every limit off: for benchmarks against the sandbox with its limits switched off.
    pub fn unlimited() -> Self {
        Limits {
            max_connections: 0,
            rate: 0,
            rate_window: Duration::from_secs(60),
            daily_recipients: 0,
            max_recipients_per_message: 0,
        }
    }
}

/// What the governor says about sending one batch now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send now.
    Go,
    /// The message rate or the daily recipient budget is used up; it frees at this instant
    /// (the later of the two when both are).
    WaitUntil(Instant),
    /// Every allowed connection is busy; a slot frees when a send finishes (or when a
    /// throttle reduction steps back, see [`GovernorState::next_restore`]).
    WaitForSlot,
    /// The mailbox is held after `SubmissionQuotaExceeded` until this instant.
    HeldUntil(Instant),
}

/// The governor's numbers at one instant, for logs, metrics and readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// Sends started and not finished.
    pub in_flight: u32,
    /// Connections allowed now: `max_connections`, lower after a `432 4.3.2`; 0 = unlimited.
    pub allowed_connections: u32,
    /// Sends in the current rate window (0 when the rate limit is off: nothing is logged).
    pub sends_in_window: u32,
    /// Recipients in the last 24 h (0 when the daily limit is off: nothing is logged).
    pub recipients_in_24h: u64,
    /// The quota hold, if one is in force.
    pub held_until: Option<Instant>,
}

/// A reduction of the allowed connections after a `432 4.3.2`.
#[derive(Debug, Clone, Copy)]
struct Throttle {
    /// Allowed connections right after the reply.
    reduced_to: u32,
    /// When the reply came; restoration steps count from here.
    at: Instant,
}

/// The pure pacing state of one mailbox. Every method takes `now`; nothing waits.
#[derive(Debug, Clone)]
pub struct GovernorState {
    limits: Limits,
    in_flight: u32,
    /// Instants of recent sends, oldest first; only kept when `rate > 0`.
    sends: VecDeque<Instant>,
    /// `(instant, recipients)` of recent sends, oldest first; only kept when
    /// `daily_recipients > 0`.
    recipients: VecDeque<(Instant, u32)>,
    /// Sum of the recipients in `recipients` (including entries not yet pruned).
    recipients_total: u64,
    throttle: Option<Throttle>,
    held_until: Option<Instant>,
}

impl GovernorState {
    pub fn new(limits: Limits) -> Self {
        GovernorState {
            limits,
            in_flight: 0,
            sends: VecDeque::new(),
            recipients: VecDeque::new(),
            recipients_total: 0,
            throttle: None,
            held_until: None,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Changes the limits from now on (shared limits: this replica's share while Redis is
    /// away, the mailbox's own while it answers). What was recorded keeps counting.
    pub fn set_limits(&mut self, limits: &Limits) {
        if self.limits != *limits {
            self.limits = limits.clone();
        }
    }

    /// May a batch of `recipients` recipients (at most `max_recipients_per_message`) be sent
    /// now? A quota hold wins over everything, then the time-based budgets (rate and daily;
    /// the later instant when both are used up), then the connection slots.
    pub fn check(&self, now: Instant, recipients: u32) -> Decision {
        if let Some(until) = self.held_until.filter(|&t| t > now) {
            return Decision::HeldUntil(until);
        }
        let wait = match (
            self.rate_frees_at(now),
            self.daily_frees_at(now, recipients),
        ) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let Some(at) = wait {
            return Decision::WaitUntil(at);
        }
        match self.allowed_connections(now) {
            Some(allowed) if self.in_flight >= allowed => Decision::WaitForSlot,
            _ => Decision::Go,
        }
    }

    /// Records a send that [`check`](Self::check) allowed: one entry in the rate log, the
    /// recipients in the daily log, one more in flight. Prunes entries that left their window.
    pub fn start(&mut self, now: Instant, recipients: u32) {
        self.prune(now);
        self.in_flight = self.in_flight.saturating_add(1);
        if self.limits.rate > 0 {
            self.sends.push_back(now);
        }
        if self.limits.daily_recipients > 0 && recipients > 0 {
            self.recipients.push_back((now, recipients));
            self.recipients_total += u64::from(recipients);
        }
    }

    /// A send has finished (whatever its outcome): its connection slot is free again.
    /// The send keeps counting against the rate and the daily budget.
    pub fn finish(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Like [`finish`](Self::finish), and moves the send's rate entry from `started` to `now`.
    /// Exchange counts a message when its MAIL FROM arrives, which is somewhere between the
    /// permit and the end of the send (a new session first needs connect, TLS and AUTH);
    /// counting it at the end means sends the governor spaced a window apart can never arrive
    /// at Exchange inside one window.
    pub fn finish_send(&mut self, started: Instant, now: Instant) {
        self.finish();
        if let Some(pos) = self.sends.iter().rposition(|&t| t == started) {
            self.sends.remove(pos);
            let at = self.sends.partition_point(|&t| t <= now);
            self.sends.insert(at, now);
        }
    }

    /// Ends a send that never reached Exchange (no token, no connection, TLS or AUTH
    /// refused: no MAIL FROM was sent): frees its slot and takes back what
    /// [`start`](Self::start) counted, its rate entry and its recipients. Exchange never saw
    /// it, so it must not spend the mailbox's budget.
    pub fn refund(&mut self, started: Instant, recipients: u32) {
        self.finish();
        if let Some(pos) = self.sends.iter().rposition(|&t| t == started) {
            self.sends.remove(pos);
        }
        let entry = (started, recipients);
        if let Some(pos) = self.recipients.iter().rposition(|&e| e == entry) {
            self.recipients.remove(pos);
            self.recipients_total -= u64::from(recipients);
        }
    }

    /// Exchange said `432 4.3.2` (too many concurrent sessions, possibly some of them from
    /// other clients of the same mailbox): allow one connection fewer (never fewer than one)
    /// for [`THROTTLE_STEP`], then one more per further step until `max_connections`. Another
    /// `432` meanwhile reduces again from the current value and restarts the clock.
    /// Ignored when `max_connections` is 0: the operator switched the limit off.
    pub fn on_concurrency_throttle(&mut self, now: Instant) {
        let Some(current) = self.allowed_connections(now) else {
            return;
        };
        self.throttle = Some(Throttle {
            reduced_to: current.saturating_sub(1).max(1),
            at: now,
        });
    }

    /// Exchange said `554 5.2.0 …SubmissionQuotaExceededException`: nothing more goes out for
    /// this mailbox until the oldest recipients we know of leave the 24 h window, or for
    /// [`QUOTA_HOLD_UNKNOWN`] when we know of none; never shorter than [`QUOTA_HOLD_MIN`].
    /// An existing longer hold is kept.
    pub fn on_quota_exceeded(&mut self, now: Instant) {
        let until = match self.daily_entries(now).next() {
            Some(&(oldest, _)) => oldest + DAILY_WINDOW,
            None => now + QUOTA_HOLD_UNKNOWN,
        }
        .max(now + QUOTA_HOLD_MIN);
        self.held_until = Some(match self.held_until {
            Some(held) if held > until => held,
            _ => until,
        });
    }

    /// The instant at which a throttle reduction steps back up by one connection, if the
    /// allowed connections are below `max_connections` now. Waiters for a slot sleep until
    /// then as well as waiting for a permit to drop.
    pub fn next_restore(&self, now: Instant) -> Option<Instant> {
        let th = self.throttle?;
        let max = self.limits.max_connections;
        if max == 0 || self.allowed_connections(now)? >= max {
            return None;
        }
        let steps = steps_since(th.at, now);
        Some(th.at + THROTTLE_STEP * (steps + 1))
    }

    pub fn snapshot(&self, now: Instant) -> Snapshot {
        Snapshot {
            in_flight: self.in_flight,
            allowed_connections: self.allowed_connections(now).unwrap_or(0),
            sends_in_window: u32::try_from(self.sends_in_window(now).len()).unwrap_or(u32::MAX),
            recipients_in_24h: self.recipients_in_24h(now),
            held_until: self.held_until.filter(|&t| t > now),
        }
    }

    /// Connections allowed at `now`; `None` = unlimited.
    fn allowed_connections(&self, now: Instant) -> Option<u32> {
        let max = self.limits.max_connections;
        if max == 0 {
            return None;
        }
        Some(match self.throttle {
            None => max,
            Some(th) => {
                let restored =
                    u64::from(th.reduced_to).saturating_add(u64::from(steps_since(th.at, now)));
                u32::try_from(restored).unwrap_or(u32::MAX).min(max)
            }
        })
    }

    /// The sends younger than `rate_window`, oldest first.
    fn sends_in_window(&self, now: Instant) -> impl ExactSizeIterator<Item = &Instant> {
        let window = self.limits.rate_window;
        let first = self
            .sends
            .partition_point(|&t| now.saturating_duration_since(t) >= window);
        self.sends.range(first..)
    }

    /// When the rate limit lets the next send through, or `None` if it does now.
    fn rate_frees_at(&self, now: Instant) -> Option<Instant> {
        let rate = usize::try_from(self.limits.rate).unwrap_or(usize::MAX);
        if rate == 0 {
            return None;
        }
        let mut recent = self.sends_in_window(now);
        let count = recent.len();
        if count < rate {
            return None;
        }
        // `count - rate + 1` sends must leave the window; the last of them is at index
        // `count - rate`.
        recent
            .nth(count - rate)
            .map(|&t| t + self.limits.rate_window)
    }

    /// The recipient entries younger than 24 h, oldest first.
    fn daily_entries(&self, now: Instant) -> impl Iterator<Item = &(Instant, u32)> {
        self.recipients
            .iter()
            .skip_while(move |&&(t, _)| now.saturating_duration_since(t) >= DAILY_WINDOW)
    }

    fn recipients_in_24h(&self, now: Instant) -> u64 {
        let stale: u64 = self
            .recipients
            .iter()
            .take_while(|&&(t, _)| now.saturating_duration_since(t) >= DAILY_WINDOW)
            .map(|&(_, n)| u64::from(n))
            .sum();
        self.recipients_total - stale
    }

    /// When the daily budget has room for `recipients` more, or `None` if it has now.
    /// A batch larger than the whole budget fits when the log is empty.
    fn daily_frees_at(&self, now: Instant, recipients: u32) -> Option<Instant> {
        let daily = self.limits.daily_recipients;
        if daily == 0 {
            return None;
        }
        let wanted = u64::from(recipients.min(daily));
        let used = self.recipients_in_24h(now);
        let excess = (used + wanted)
            .checked_sub(u64::from(daily))
            .filter(|&e| e > 0)?;
        let mut freed = 0u64;
        for &(t, n) in self.daily_entries(now) {
            freed += u64::from(n);
            if freed >= excess {
                return Some(t + DAILY_WINDOW);
            }
        }
        // Unreachable: `excess <= used`, the sum of the entries walked above.
        None
    }

    fn prune(&mut self, now: Instant) {
        let window = self.limits.rate_window;
        while self
            .sends
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= window)
        {
            self.sends.pop_front();
        }
        while let Some(&(t, n)) = self.recipients.front() {
            if now.saturating_duration_since(t) < DAILY_WINDOW {
                break;
            }
            self.recipients.pop_front();
            self.recipients_total -= u64::from(n);
        }
        if self.held_until.is_some_and(|t| t <= now) {
            self.held_until = None;
        }
        if self.throttle.is_some() && self.next_restore(now).is_none() {
            self.throttle = None;
        }
    }
}

/// Whole [`THROTTLE_STEP`]s from `from` to `now`.
fn steps_since(from: Instant, now: Instant) -> u32 {
    let steps = now.saturating_duration_since(from).as_nanos() / THROTTLE_STEP.as_nanos();
    u32::try_from(steps).unwrap_or(u32::MAX)
}

/// Cuts an envelope's recipients into batches of at most `max` (`0` = one batch). An empty
/// list gives no batches.
pub fn split_batches<T>(recipients: &[T], max: u32) -> Vec<&[T]> {
    if recipients.is_empty() {
        return Vec::new();
    }
    match usize::try_from(max) {
        Ok(0) | Err(_) => vec![recipients],
        Ok(size) => recipients.chunks(size).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const MIN: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);

    fn limits(max_connections: u32, rate: u32, daily_recipients: u32) -> Limits {
        Limits {
            max_connections,
            rate,
            rate_window: MIN,
            daily_recipients,
            max_recipients_per_message: 500,
        }
    }

    /// Every half-open window `[t, t + window)` starting at a send holds at most `rate` sends.
    /// (A window starting elsewhere holds no more than the one starting at its first send.)
    fn assert_rolling_window(instants: &[Instant], rate: usize, window: Duration) {
        let mut sorted = instants.to_vec();
        sorted.sort();
        for (i, &start) in sorted.iter().enumerate() {
            let inside = sorted[i..]
                .iter()
                .take_while(|&&t| t < start + window)
                .count();
            assert!(
                inside <= rate,
                "{inside} sends in the window starting at send #{i}"
            );
        }
    }

    // ---- pure state ----

    #[test]
    #[should_panic(expected = "31 sends in the window")]
    fn window_check_catches_a_token_bucket_burst() {
        // Burst 30 at t0, then a refilled token at t0 + 2 s: 31 in one minute.
        let t0 = Instant::now();
        let mut sends = vec![t0; 30];
        sends.push(t0 + Duration::from_secs(2));
        assert_rolling_window(&sends, 30, MIN);
    }

    #[test]
    fn defaults_match_exchange() {
        let l = Limits::default();
        assert_eq!(
            (
                l.max_connections,
                l.rate,
                l.rate_window,
                l.daily_recipients,
                l.max_recipients_per_message
            ),
            (3, 30, MIN, 10_000, 500)
        );
    }

    #[test]
    fn burst_of_rate_goes_then_waits_for_the_oldest_to_leave() {
        let t0 = Instant::now();
        let mut s = GovernorState::new(limits(0, 30, 0));
        for i in 0..30 {
            let now = t0 + Duration::from_millis(i * 10);
            assert_eq!(s.check(now, 1), Decision::Go, "send #{i}");
            s.start(now, 1);
            s.finish();
        }
        let now = t0 + Duration::from_secs(1);
        assert_eq!(s.check(now, 1), Decision::WaitUntil(t0 + MIN));
        // Just before the first send leaves: still full. At exactly t0 + 60 s: one free.
        assert_eq!(
            s.check(t0 + MIN - Duration::from_nanos(1), 1),
            Decision::WaitUntil(t0 + MIN)
        );
        assert_eq!(s.check(t0 + MIN, 1), Decision::Go);
        s.start(t0 + MIN, 1);
        // The next frees when the second send (t0 + 10 ms) leaves.
        assert_eq!(
            s.check(t0 + MIN, 1),
            Decision::WaitUntil(t0 + MIN + Duration::from_millis(10))
        );
    }

    #[test]
    fn simulated_sequential_sends_never_exceed_rate_in_any_window() {
        let t0 = Instant::now();
        let mut s = GovernorState::new(limits(3, 30, 0));
        let mut now = t0;
        let mut sent = Vec::new();
        while sent.len() < 100 {
            match s.check(now, 1) {
                Decision::Go => {
                    s.start(now, 1);
                    sent.push(now);
                    now += Duration::from_millis(700);
                    s.finish();
                }
                Decision::WaitUntil(t) => now = t,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_rolling_window(&sent, 30, MIN);
        // Bursts of 30 at the start of each minute: 100 sends need 3 full windows.
        assert!(*sent.last().unwrap() >= t0 + 3 * MIN);
        // The log stays bounded by the rate.
        assert!(s.sends.len() <= 30);
    }

    #[test]
    fn concurrency_limit_and_finish() {
        let t0 = Instant::now();
        let mut s = GovernorState::new(limits(3, 0, 0));
        for _ in 0..3 {
            assert_eq!(s.check(t0, 1), Decision::Go);
            s.start(t0, 1);
        }
        assert_eq!(s.check(t0, 1), Decision::WaitForSlot);
        assert_eq!(s.snapshot(t0).in_flight, 3);
        s.finish();
        assert_eq!(s.check(t0, 1), Decision::Go);
    }

    #[test]
    fn throttle_reduces_then_restores_one_step_at_a_time() {
        let t0 = Instant::now();
        let mut s = GovernorState::new(limits(3, 0, 0));
        for _ in 0..3 {
            s.start(t0, 1);
        }
        s.on_concurrency_throttle(t0);
        assert_eq!(s.snapshot(t0).allowed_connections, 2);
        assert_eq!(s.next_restore(t0), Some(t0 + THROTTLE_STEP));
        s.finish();
        // 2 in flight, 2 allowed.
        assert_eq!(s.check(t0, 1), Decision::WaitForSlot);
        s.finish();
        assert_eq!(s.check(t0, 1), Decision::Go);
        s.start(t0, 1);

        // A second 432 a minute later: down to 1, clock restarts.
        let t1 = t0 + MIN;
        s.on_concurrency_throttle(t1);
        assert_eq!(s.snapshot(t1).allowed_connections, 1);
        // Never below one.
        s.on_concurrency_throttle(t1);
        assert_eq!(s.snapshot(t1).allowed_connections, 1);

        assert_eq!(s.next_restore(t1), Some(t1 + THROTTLE_STEP));
        let almost = t1 + THROTTLE_STEP - Duration::from_nanos(1);
        assert_eq!(s.snapshot(almost).allowed_connections, 1);
        assert_eq!(s.snapshot(t1 + THROTTLE_STEP).allowed_connections, 2);
        assert_eq!(
            s.next_restore(t1 + THROTTLE_STEP),
            Some(t1 + 2 * THROTTLE_STEP)
        );
        assert_eq!(s.snapshot(t1 + 2 * THROTTLE_STEP).allowed_connections, 3);
        assert_eq!(s.snapshot(t1 + 9 * THROTTLE_STEP).allowed_connections, 3);
        assert_eq!(s.next_restore(t1 + 2 * THROTTLE_STEP), None);

        // Once restored, a prune forgets the throttle.
        s.start(t1 + 2 * THROTTLE_STEP, 1);
        assert!(s.throttle.is_none());
    }

    #[test]
    fn throttle_is_ignored_when_concurrency_is_unlimited() {
        let t0 = Instant::now();
        let mut s = GovernorState::new(limits(0, 0, 0));
        for _ in 0..50 {
            s.start(t0, 1);
        }
        s.on_concurrency_throttle(t0);
        assert_eq!(s.check(t0, 1), Decision::Go);
        assert_eq!(s.snapshot(t0).allowed_connections, 0);
        assert_eq!(s.next_restore(t0), None);
    }

    #[test]
    fn quota_hold_until_oldest_recipients_leave() {
        let t0 = Instant::now();
        let mut s = GovernorState::new(limits(3, 30, 10_000));
        s.start(t0, 40);
        s.finish();
        s.start(t0 + HOUR, 10);
        s.finish();
        let now = t0 + 2 * HOUR;
        s.on_quota_exceeded(now);
        let until = t0 + DAILY_WINDOW;
        assert_eq!(s.check(now, 1), Decision::HeldUntil(until));
        assert_eq!(s.snapshot(now).held_until, Some(until));
        assert_eq!(
            s.check(until - Duration::from_nanos(1), 1),
            Decision::HeldUntil(until)
        );
        assert_eq!(s.check(until, 1), Decision::Go);
        assert_eq!(s.snapshot(until).held_until, None);
    }

    #[test]
    fn quota_hold_with_empty_log_is_one_hour_and_never_under_fifteen_minutes() {
        let t0 = Instant::now();
        let mut s = GovernorState::new(limits(3, 30, 10_000));
        s.on_quota_exceeded(t0);
        assert_eq!(s.check(t0, 1), Decision::HeldUntil(t0 + HOUR));

        // Oldest entry about to leave the window: the hold is still 15 minutes.
        let mut s = GovernorState::new(limits(3, 30, 10_000));
        s.start(t0, 5);
        let now = t0 + DAILY_WINDOW - MIN;
        s.on_quota_exceeded(now);
        assert_eq!(s.check(now, 1), Decision::HeldUntil(now + QUOTA_HOLD_MIN));

        // A second reply recomputes the hold from the log (here: longer than the first).
        let mut s = GovernorState::new(limits(3, 30, 10_000));
        s.on_quota_exceeded(t0); // until t0 + 1 h
        s.start(t0 + Duration::from_secs(1), 5); // bypasses check(): the test pokes state
        s.on_quota_exceeded(t0 + Duration::from_secs(2));
        assert_eq!(
            s.check(t0 + Duration::from_secs(2), 1),
            Decision::HeldUntil(t0 + Duration::from_secs(1) + DAILY_WINDOW)
        );

        // Daily limit off: nothing logged, so one hour.
        let mut s = GovernorState::new(limits(3, 30, 0));
        s.start(t0, 5);
        s.on_quota_exceeded(t0);
        assert_eq!(s.check(t0, 1), Decision::HeldUntil(t0 + HOUR));
    }

    #[test]
    fn daily_budget_waits_until_enough_recipients_leave() {
        let t0 = Instant::now();
        let mut s = GovernorState::new(limits(0, 0, 10));
        s.start(t0, 4);
        s.start(t0 + HOUR, 3);
        s.start(t0 + 2 * HOUR, 2);
        let now = t0 + 3 * HOUR;
        assert_eq!(s.snapshot(now).recipients_in_24h, 9);
        assert_eq!(s.check(now, 1), Decision::Go);
        // 9 + 2 = 11 > 10: the 4 from t0 must leave.
        assert_eq!(s.check(now, 2), Decision::WaitUntil(t0 + DAILY_WINDOW));
        // 9 + 8 = 17: 7 must leave, the entries of t0 and t0 + 1 h.
        assert_eq!(
            s.check(now, 8),
            Decision::WaitUntil(t0 + HOUR + DAILY_WINDOW)
        );
        assert_eq!(s.check(t0 + DAILY_WINDOW, 2), Decision::Go);
        assert_eq!(s.snapshot(t0 + DAILY_WINDOW).recipients_in_24h, 5);
        // Pruning keeps the running total right.
        s.start(t0 + DAILY_WINDOW, 2);
        assert_eq!(s.recipients.len(), 3);
        assert_eq!(s.snapshot(t0 + DAILY_WINDOW).recipients_in_24h, 7);
    }

    #[test]
    fn batch_larger_than_daily_budget_goes_when_log_is_empty() {
        let t0 = Instant::now();
        let mut s = GovernorState::new(limits(0, 0, 10));
        assert_eq!(s.check(t0, 25), Decision::Go);
        s.start(t0, 25);
        assert_eq!(s.snapshot(t0).recipients_in_24h, 25);
        // Counts in full: nothing else for 24 h.
        assert_eq!(
            s.check(t0 + HOUR, 1),
            Decision::WaitUntil(t0 + DAILY_WINDOW)
        );
        s.start(t0 + DAILY_WINDOW - MIN, 0); // zero recipients are not logged
        assert_eq!(s.recipients.len(), 1);
        s.start(t0 + DAILY_WINDOW, 1);
        // Another oversize batch waits until the whole log is empty again.
        assert_eq!(
            s.check(t0 + DAILY_WINDOW, 25),
            Decision::WaitUntil(t0 + 2 * DAILY_WINDOW)
        );
    }

    #[test]
    fn zero_disables_each_limit() {
        let t0 = Instant::now();
        let mut s = GovernorState::new(Limits::unlimited());
        for _ in 0..10_000 {
            assert_eq!(s.check(t0, 1_000_000), Decision::Go);
            s.start(t0, 1_000_000);
        }
        assert_eq!(
            s.snapshot(t0),
            Snapshot {
                in_flight: 10_000,
                allowed_connections: 0,
                sends_in_window: 0,
                recipients_in_24h: 0,
                held_until: None,
            }
        );
        // Nothing logged: memory stays flat for benchmarks.
        assert!(s.sends.is_empty() && s.recipients.is_empty());

        // Each limit alone.
        let mut s = GovernorState::new(limits(0, 2, 5));
        s.start(t0, 1);
        s.start(t0, 1);
        assert_eq!(s.check(t0, 1), Decision::WaitUntil(t0 + MIN)); // rate still on
        let mut s = GovernorState::new(limits(1, 0, 5));
        s.start(t0, 1);
        assert_eq!(s.check(t0, 1), Decision::WaitForSlot); // connections still on
        let mut s = GovernorState::new(limits(1, 2, 0));
        s.start(t0, 1_000);
        s.finish();
        assert_eq!(s.check(t0, 1_000), Decision::Go); // daily off
    }

    #[test]
    fn decision_priority_hold_then_time_then_slot() {
        let t0 = Instant::now();
        let mut s = GovernorState::new(limits(1, 1, 3));
        s.start(t0, 3);
        // Rate frees at t0 + 60 s, daily at t0 + 24 h, slot busy: the later instant wins.
        assert_eq!(s.check(t0, 1), Decision::WaitUntil(t0 + DAILY_WINDOW));
        assert_eq!(s.check(t0, 0), Decision::WaitUntil(t0 + MIN));
        s.on_quota_exceeded(t0);
        assert_eq!(s.check(t0, 0), Decision::HeldUntil(t0 + DAILY_WINDOW));
        let mut s = GovernorState::new(limits(1, 5, 0));
        s.start(t0, 1);
        assert_eq!(s.check(t0, 1), Decision::WaitForSlot);
    }

    #[test]
    fn snapshot_counts_only_the_current_windows() {
        let t0 = Instant::now();
        let mut s = GovernorState::new(limits(3, 30, 100));
        s.start(t0, 10);
        s.start(t0 + Duration::from_secs(30), 20);
        s.finish();
        let snap = s.snapshot(t0 + Duration::from_secs(45));
        assert_eq!(
            snap,
            Snapshot {
                in_flight: 1,
                allowed_connections: 3,
                sends_in_window: 2,
                recipients_in_24h: 30,
                held_until: None,
            }
        );
        let snap = s.snapshot(t0 + Duration::from_secs(75));
        assert_eq!((snap.sends_in_window, snap.recipients_in_24h), (1, 30));
        let snap = s.snapshot(t0 + DAILY_WINDOW);
        assert_eq!((snap.sends_in_window, snap.recipients_in_24h), (0, 20));
    }

    #[test]
    fn a_send_counts_from_when_it_finished() {
        let t0 = Instant::now();
        let mut s = GovernorState::new(Limits {
            rate: 2,
            rate_window: Duration::from_secs(10),
            ..Limits::unlimited()
        });
        s.start(t0, 1);
        s.start(t0 + Duration::from_secs(1), 1);
        // The first send took 5 s (slow session set-up): it counts from t0 + 5 s.
        s.finish_send(t0, t0 + Duration::from_secs(5));
        assert_eq!(
            s.check(t0 + Duration::from_secs(10), 1),
            Decision::WaitUntil(t0 + Duration::from_secs(11))
        );
        // Counted from its start (t0) it would have left the window at t0 + 10 already.
        assert_eq!(s.check(t0 + Duration::from_secs(11), 1), Decision::Go);
    }

    #[test]
    fn split_batches_cases() {
        let rcpts: Vec<String> = (0..1_201).map(|i| format!("r{i}@example.com")).collect();
        let sizes =
            |max| -> Vec<usize> { split_batches(&rcpts, max).iter().map(|b| b.len()).collect() };
        assert_eq!(sizes(500), [500, 500, 201]);
        assert_eq!(sizes(0), [1_201]);
        assert_eq!(sizes(1_201), [1_201]);
        assert_eq!(sizes(5_000), [1_201]);
        // Order and content are kept.
        let batches = split_batches(&rcpts, 500);
        assert_eq!(batches.concat(), rcpts);
        assert_eq!(batches[2][0], "r1000@example.com");

        let exact: Vec<String> = (0..1_000).map(|i| i.to_string()).collect();
        let sizes: Vec<usize> = split_batches(&exact, 500).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [500, 500]);
        let sizes: Vec<usize> = split_batches(&exact, 1).iter().map(|b| b.len()).collect();
        assert_eq!(sizes.len(), 1_000);

        let none: Vec<String> = Vec::new();
        assert!(split_batches(&none, 500).is_empty());
        assert!(split_batches(&none, 0).is_empty());
    }

    // ---- async wrapper (paused clock: sleeps advance time instantly) ----

    #[tokio::test(start_paused = true)]
    async fn slot_wait_gives_up_when_the_rate_runs_out() {
        // One session, two sends per window: the second waits for the slot, gets it; the
        // third waits for the slot, but by then the window is spent: it gets None at once.
        let g = Governor::new(limits(1, 2, 0));
        let first = g.acquire(1).await;
        let waiter = {
            let g = g.clone();
            tokio::spawn(async move { g.acquire_slot(1).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished(), "waits while the slot is busy");
        drop(first);
        let second = waiter.await.unwrap().expect("the slot freed");
        let t0 = Instant::now();
        let waiter = {
            let g = g.clone();
            tokio::spawn(async move { g.acquire_slot(1).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(second);
        assert!(waiter.await.unwrap().is_none(), "rate spent: no long wait");
        assert!(Instant::now() - t0 < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn burst_of_rate_goes_without_waiting() {
        let g = Governor::new(limits(0, 30, 0));
        let t0 = Instant::now();
        for _ in 0..30 {
            drop(g.acquire(1).await);
        }
        assert_eq!(Instant::now(), t0);
        assert_eq!(g.try_acquire(1).unwrap_err(), Decision::WaitUntil(t0 + MIN));
        drop(g.acquire(1).await);
        assert_eq!(Instant::now(), t0 + MIN);
    }

    #[tokio::test(start_paused = true)]
    async fn sequential_acquisitions_respect_every_rolling_window() {
        let g = Governor::new(Limits::default());
        let mut sent = Vec::new();
        for i in 0..100u64 {
            let permit = g.acquire(1).await;
            sent.push(Instant::now());
            tokio::time::sleep(Duration::from_millis(50 + (i * 37) % 900)).await;
            drop(permit);
        }
        assert_rolling_window(&sent, 30, MIN);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_acquisitions_respect_every_rolling_window_and_concurrency() {
        use std::sync::atomic::{AtomicU32, Ordering};

        let g = Governor::new(Limits::default());
        let in_flight = Arc::new(AtomicU32::new(0));
        let max_seen = Arc::new(AtomicU32::new(0));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..100u64 {
            let (g, in_flight, max_seen, sent) =
                (g.clone(), in_flight.clone(), max_seen.clone(), sent.clone());
            tasks.spawn(async move {
                tokio::time::sleep(Duration::from_millis(i * 113 % 7_000)).await;
                let permit = g.acquire(1).await;
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                max_seen.fetch_max(now, Ordering::SeqCst);
                sent.lock().unwrap().push(Instant::now());
                tokio::time::sleep(Duration::from_millis(200 + (i * 71) % 3_000)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                drop(permit);
            });
        }
        while let Some(res) = tasks.join_next().await {
            res.unwrap();
        }
        let sent = sent.lock().unwrap();
        assert_eq!(sent.len(), 100);
        assert_rolling_window(&sent, 30, MIN);
        assert_eq!(max_seen.load(Ordering::SeqCst), 3);
        assert_eq!(g.snapshot().in_flight, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn waiter_wakes_when_a_permit_drops() {
        let g = Governor::new(limits(1, 0, 0));
        let first = g.acquire(1).await;
        let t0 = Instant::now();
        let waiter = tokio::spawn({
            let g = g.clone();
            async move {
                let _p = g.acquire(1).await;
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiter.is_finished());
        drop(first);
        assert_eq!(waiter.await.unwrap(), t0 + Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_reduces_then_restores_concurrency() {
        let g = Governor::new(limits(3, 0, 0));
        let t0 = Instant::now();
        let a = g.acquire(1).await;
        let b = g.acquire(1).await;
        g.on_concurrency_throttle();
        g.on_concurrency_throttle();
        assert_eq!(g.snapshot().allowed_connections, 1);
        drop(b);
        assert_eq!(g.try_acquire(1).unwrap_err(), Decision::WaitForSlot);
        // Nobody drops a permit: the waiter wakes when the throttle steps back.
        let c = g.acquire(1).await;
        assert_eq!(Instant::now(), t0 + THROTTLE_STEP);
        assert_eq!(g.snapshot().allowed_connections, 2);
        assert_eq!(g.try_acquire(1).unwrap_err(), Decision::WaitForSlot);
        let d = g.acquire(1).await;
        assert_eq!(Instant::now(), t0 + 2 * THROTTLE_STEP);
        assert_eq!(g.snapshot().in_flight, 3);
        drop((a, c, d));
        assert_eq!(g.snapshot().in_flight, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn quota_hold_delays_acquire() {
        let g = Governor::new(Limits::default());
        let t0 = Instant::now();
        drop(g.acquire(7).await);
        g.on_quota_exceeded().await;
        assert_eq!(
            g.try_acquire(1).unwrap_err(),
            Decision::HeldUntil(t0 + DAILY_WINDOW)
        );
        assert_eq!(g.snapshot().held_until, Some(t0 + DAILY_WINDOW));
        drop(g.acquire(1).await);
        assert_eq!(Instant::now(), t0 + DAILY_WINDOW);
    }

    #[tokio::test(start_paused = true)]
    async fn daily_budget_delays_acquire() {
        let g = Governor::new(limits(3, 30, 10));
        let t0 = Instant::now();
        drop(g.acquire(6).await);
        tokio::time::sleep(HOUR).await;
        drop(g.acquire(4).await);
        assert_eq!(
            g.try_acquire(1).unwrap_err(),
            Decision::WaitUntil(t0 + DAILY_WINDOW)
        );
        drop(g.acquire(5).await);
        assert_eq!(Instant::now(), t0 + DAILY_WINDOW);
        assert_eq!(g.snapshot().recipients_in_24h, 9);
    }

    #[tokio::test(start_paused = true)]
    async fn try_acquire_decisions() {
        let g = Governor::new(limits(2, 3, 100));
        let t0 = Instant::now();
        let a = g.try_acquire(1).unwrap();
        let _b = g.try_acquire(1).unwrap();
        assert_eq!(g.try_acquire(1).unwrap_err(), Decision::WaitForSlot);
        drop(a);
        let _c = g.try_acquire(1).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        // Rate (3 per minute) used up; also no slot, but the time-based reason wins.
        assert_eq!(g.try_acquire(1).unwrap_err(), Decision::WaitUntil(t0 + MIN));
        g.on_quota_exceeded().await;
        assert_eq!(
            g.try_acquire(1).unwrap_err(),
            Decision::HeldUntil(t0 + DAILY_WINDOW)
        );
        assert_eq!(g.snapshot().in_flight, 2);
        assert_eq!(g.limits().rate, 3);
    }

    #[test]
    fn a_refunded_send_gives_back_its_rate_entry_recipients_and_slot() {
        let t0 = Instant::now();
        let mut st = GovernorState::new(limits(3, 2, 10));
        st.start(t0, 4);
        st.start(t0 + Duration::from_secs(1), 4);
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(
            st.check(t1, 1),
            Decision::WaitUntil(t0 + MIN),
            "rate used up"
        );
        st.refund(t0 + Duration::from_secs(1), 4);
        let snap = st.snapshot(t1);
        assert_eq!(snap.in_flight, 1);
        assert_eq!(
            snap.sends_in_window, 1,
            "only the send that went out counts"
        );
        assert_eq!(snap.recipients_in_24h, 4);
        assert_eq!(
            st.check(t1, 6),
            Decision::Go,
            "budget back for 6 recipients"
        );
        // The other one went to Exchange: it keeps counting.
        st.finish_send(t0, t1);
        assert_eq!(st.snapshot(t1).sends_in_window, 1);
        assert_eq!(st.snapshot(t1).in_flight, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn refunded_permits_leave_the_budget_whole_and_wake_waiters() {
        let g = Governor::new(limits(1, 2, 100));
        for _ in 0..10 {
            g.try_acquire(5).expect("budget is whole").refund();
        }
        let snap = g.snapshot();
        assert_eq!(
            (snap.in_flight, snap.sends_in_window, snap.recipients_in_24h),
            (0, 0, 0)
        );
        // A waiter for the one slot wakes when the holder's permit is refunded.
        let held = g.try_acquire(1).unwrap();
        let waiter = {
            let g = g.clone();
            tokio::spawn(async move { g.acquire(1).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        held.refund();
        let permit = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken at once")
            .unwrap();
        drop(permit);
        assert_eq!(g.snapshot().sends_in_window, 1, "a dropped permit counts");
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_acquire_records_nothing() {
        let g = Governor::new(limits(1, 10, 0));
        let held = g.acquire(1).await;
        let res = tokio::time::timeout(Duration::from_secs(1), g.acquire(1)).await;
        assert!(res.is_err());
        assert_eq!(g.snapshot().in_flight, 1);
        assert_eq!(g.snapshot().sends_in_window, 1);
        drop(held);
        drop(g.try_acquire(1).unwrap());
        assert_eq!(g.snapshot().sends_in_window, 2);
        assert_eq!(g.snapshot().in_flight, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits() {
        let g = Governor::new(Limits::unlimited());
        let t0 = Instant::now();
        let permits: Vec<Permit> = (0..1_000).map(|_| g.try_acquire(10_000).unwrap()).collect();
        g.on_concurrency_throttle();
        let more = g.acquire(1).await;
        assert_eq!(Instant::now(), t0);
        assert_eq!(g.snapshot().in_flight, 1_001);
        drop((permits, more));
        assert_eq!(g.snapshot().in_flight, 0);
    }
}
