//! Brute-force limit for inbound `AUTH`, per client address. Pure: the time is passed in.
//!
//! An address may fail `max_failures` times; the next failure ends the session with `421` and
//! pauses the address for `base_pause` (every `AUTH` from it is refused until then); each
//! failure after a pause doubles the pause, up to `max_pause` (a failure that arrives during a
//! pause, from a session that passed `check` just before it began, counts as one after it and
//! restarts the pause, doubled, from then). A good login forgets nothing: failures decay,
//! so one known password cannot buy unlimited guesses at the others.
//! An address with no failure for `max_pause` (or an hour, whichever is longer) is forgotten
//! too, and the table holds at most `max_entries` addresses (those whose last failure is
//! oldest go first), so it cannot grow without bound. Loopback is not exempt; an IPv4-mapped
//! IPv6 address counts as its IPv4 address, and an IPv6 address by its /64.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync::Lock;

/// Addresses tracked at most, by default.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;
/// The shortest time after which an address without failures is forgotten.
const MIN_DECAY: Duration = Duration::from_secs(3600);
/// The longest pause (keeps `Instant` arithmetic far from overflow).
const LONGEST_PAUSE: Duration = Duration::from_secs(365 * 24 * 3600);

/// What the session does after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The client may try again in this session; `left` more failures are allowed before a
    /// pause.
    TryAgain { left: u32 },
    /// Close with `421`: the address is now paused for this long.
    Pause(Duration),
}

/// One address's record.
#[derive(Debug, Clone, Copy)]
struct State {
    /// Failures counted before the first pause.
    failures: u32,
    /// The last pause served, once there was one (the next failure doubles it).
    pause: Option<Duration>,
    /// Until when `check` refuses the address.
    paused_until: Option<Instant>,
    last_failure: Instant,
}

/// The per-address failure table (see the module docs).
#[derive(Debug)]
pub struct AuthLimiter {
    max_failures: u32,
    base_pause: Duration,
    max_pause: Duration,
    /// Forget an address after this long without a failure.
    decay: Duration,
    max_entries: usize,
    states: Mutex<HashMap<IpAddr, State>>,
}

impl AuthLimiter {
    /// `max_failures` failures from one address are allowed; the next one closes with 421 and
    /// starts a pause of `base_pause`; every further failure after a pause doubles it, up to
    /// `max_pause`. (A `base_pause` above `max_pause` is taken as `max_pause`; pauses are
    /// capped at a year.)
    pub fn new(max_failures: u32, base_pause: Duration, max_pause: Duration) -> Self {
        let max_pause = max_pause.min(LONGEST_PAUSE);
        AuthLimiter {
            max_failures,
            base_pause: base_pause.min(max_pause),
            max_pause,
            decay: max_pause.max(MIN_DECAY),
            max_entries: DEFAULT_MAX_ENTRIES,
            states: Mutex::new(HashMap::new()),
        }
    }

    /// The same limiter tracking at most `max_entries` addresses (at least one).
    pub fn with_max_entries(mut self, max_entries: usize) -> Self {
        self.max_entries = max_entries.max(1);
        self
    }

    /// Before an AUTH attempt: `Err(remaining pause)` while the address is paused.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let ip = key(ip);
        let mut states = self.states.locked();
        let Some(state) = states.get(&ip) else {
            return Ok(());
        };
        if self.decayed(state, now) {
            states.remove(&ip);
            return Ok(());
        }
        match state.paused_until {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// After a failed attempt: whether the client may try again in this session, or must be
    /// closed with the pause it now serves.
    pub fn failure(&self, ip: IpAddr, now: Instant) -> Failure {
        let ip = key(ip);
        let mut states = self.states.locked();
        if states.get(&ip).is_some_and(|s| self.decayed(s, now)) {
            states.remove(&ip);
        }
        if !states.contains_key(&ip) && states.len() >= self.max_entries {
            self.make_room(&mut states, now);
        }
        let state = states.entry(ip).or_insert(State {
            failures: 0,
            pause: None,
            paused_until: None,
            last_failure: now,
        });
        state.last_failure = now;
        let pause = match state.pause {
            None => {
                state.failures = state.failures.saturating_add(1);
                if state.failures <= self.max_failures {
                    return Failure::TryAgain {
                        left: self.max_failures - state.failures,
                    };
                }
                self.base_pause
            }
            Some(last) => last.saturating_mul(2).min(self.max_pause),
        };
        state.pause = Some(pause);
        state.paused_until = Some(now + pause);
        Failure::Pause(pause)
    }

    /// How many addresses are tracked now.
    pub fn tracked(&self) -> usize {
        self.states.locked().len()
    }

    /// Whether `state` has gone `decay` without a failure (its pause, never longer than
    /// `decay`, is then over too).
    fn decayed(&self, state: &State, now: Instant) -> bool {
        now.saturating_duration_since(state.last_failure) >= self.decay
    }

    /// Called when the table is full and a new address comes: drops every forgotten address,
    /// and if that frees nothing, the eighth of the table whose last failure is oldest (so a
    /// flood of new addresses costs one sort per eighth, not one per address).
    fn make_room(&self, states: &mut HashMap<IpAddr, State>, now: Instant) {
        states.retain(|_, s| !self.decayed(s, now));
        if states.len() < self.max_entries {
            return;
        }
        let drop = (self.max_entries / 8).max(1);
        let mut ages: Vec<(Instant, IpAddr)> =
            states.iter().map(|(ip, s)| (s.last_failure, *ip)).collect();
        ages.select_nth_unstable(drop - 1);
        for (_, ip) in &ages[..drop] {
            states.remove(ip);
        }
    }
}

/// What failures are counted by: an IPv4 address (a mapped one as itself), or an IPv6
/// address's /64, the block one customer usually gets, so a client cannot step through its
/// own 2^64 addresses for a fresh count each time.
fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::from(octets)
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const MIN: Duration = Duration::from_secs(60);

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    fn tracks(l: &AuthLimiter, a: IpAddr) -> bool {
        l.states.locked().contains_key(&a)
    }

    fn limiter() -> AuthLimiter {
        AuthLimiter::new(3, MIN, 8 * MIN)
    }

    #[test]
    fn counts_failures_then_pauses() {
        let l = limiter();
        let t = Instant::now();
        let a = ip(1);
        assert_eq!(l.check(a, t), Ok(()));
        assert_eq!(l.failure(a, t), Failure::TryAgain { left: 2 });
        assert_eq!(l.failure(a, t), Failure::TryAgain { left: 1 });
        assert_eq!(l.failure(a, t), Failure::TryAgain { left: 0 });
        assert_eq!(l.check(a, t), Ok(()), "failures alone do not pause");
        assert_eq!(l.failure(a, t), Failure::Pause(MIN));
        assert_eq!(l.check(a, t), Err(MIN));
        assert_eq!(
            l.check(a, t + Duration::from_secs(45)),
            Err(Duration::from_secs(15))
        );
        assert_eq!(l.check(a, t + MIN), Ok(()), "the pause is over");
        // Another address is not affected.
        assert_eq!(l.check(ip(2), t), Ok(()));
        assert_eq!(l.failure(ip(2), t), Failure::TryAgain { left: 2 });
    }

    #[test]
    fn each_failure_after_a_pause_doubles_it_up_to_the_cap() {
        let l = limiter();
        let a = ip(1);
        let mut t = Instant::now();
        for _ in 0..3 {
            l.failure(a, t);
        }
        let mut served = Vec::new();
        for _ in 0..6 {
            match l.failure(a, t) {
                Failure::Pause(p) => {
                    assert_eq!(l.check(a, t), Err(p));
                    served.push(p);
                    t += p;
                    assert_eq!(l.check(a, t), Ok(()));
                }
                other => panic!("expected a pause, got {other:?}"),
            }
        }
        assert_eq!(served, [MIN, 2 * MIN, 4 * MIN, 8 * MIN, 8 * MIN, 8 * MIN]);
    }

    #[test]
    fn a_failure_during_a_pause_doubles_it_from_then() {
        let l = AuthLimiter::new(1, MIN, 8 * MIN);
        let t = Instant::now();
        let a = ip(1);
        l.failure(a, t);
        assert_eq!(l.failure(a, t), Failure::Pause(MIN));
        // Another session of the same client, already past `check`, fails 10 s later.
        let t2 = t + Duration::from_secs(10);
        assert_eq!(l.failure(a, t2), Failure::Pause(2 * MIN));
        assert_eq!(l.check(a, t2 + MIN), Err(MIN));
    }

    #[test]
    fn zero_failures_allowed_pauses_at_the_first() {
        let l = AuthLimiter::new(0, MIN, MIN);
        let t = Instant::now();
        assert_eq!(l.failure(ip(1), t), Failure::Pause(MIN));
        assert_eq!(l.failure(ip(1), t + MIN), Failure::Pause(MIN), "capped");
    }

    #[test]
    fn a_base_pause_above_the_cap_is_the_cap() {
        let l = AuthLimiter::new(0, 10 * MIN, MIN);
        assert_eq!(l.failure(ip(1), Instant::now()), Failure::Pause(MIN));
    }

    #[test]
    fn failures_decay_after_an_hour_or_the_longest_pause() {
        let t = Instant::now();
        let hour = Duration::from_secs(3600);
        let l = limiter();
        let a = ip(1);
        l.failure(a, t);
        l.failure(a, t);
        assert_eq!(
            l.failure(a, t + hour - Duration::from_secs(1)),
            Failure::TryAgain { left: 0 }
        );
        // An hour after the last failure, the address starts afresh.
        let later = t + 2 * hour;
        assert_eq!(l.failure(a, later), Failure::TryAgain { left: 2 });

        // A pause history decays too: no doubling after the decay.
        for _ in 0..2 {
            l.failure(a, later);
        }
        assert_eq!(l.failure(a, later), Failure::Pause(MIN));
        assert_eq!(l.failure(a, later + MIN), Failure::Pause(2 * MIN));
        let much_later = later + MIN + hour;
        assert_eq!(l.check(a, much_later), Ok(()));
        assert_eq!(l.tracked(), 0, "check forgot the decayed address");
        assert_eq!(l.failure(a, much_later), Failure::TryAgain { left: 2 });

        // With a cap above an hour, the cap is the decay time.
        let l = AuthLimiter::new(0, 2 * hour, 8 * hour);
        assert_eq!(l.failure(a, t), Failure::Pause(2 * hour));
        let t3 = t + 3 * hour;
        assert_eq!(
            l.failure(a, t3),
            Failure::Pause(4 * hour),
            "not forgotten after 3 h"
        );
        assert_eq!(
            l.failure(a, t3 + 8 * hour),
            Failure::Pause(2 * hour),
            "forgotten after 8 h"
        );
    }

    #[test]
    fn ipv4_mapped_ipv6_counts_as_ipv4_and_loopback_is_not_exempt() {
        let l = AuthLimiter::new(1, MIN, MIN);
        let t = Instant::now();
        let v4 = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
        let mapped = IpAddr::V6(Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped());
        assert_eq!(l.failure(v4, t), Failure::TryAgain { left: 0 });
        assert_eq!(l.failure(mapped, t), Failure::Pause(MIN));
        assert_eq!(l.check(v4, t), Err(MIN));
        assert_eq!(
            l.check(IpAddr::V6(Ipv6Addr::LOCALHOST), t),
            Ok(()),
            "::1 is its own"
        );
    }

    #[test]
    fn the_table_is_bounded_dropping_forgotten_then_oldest() {
        let t = Instant::now();
        let l = limiter().with_max_entries(16);
        // 16 addresses, address n failing at t + n seconds.
        for n in 0..16u8 {
            l.failure(ip(n), t + Duration::from_secs(n.into()));
        }
        assert_eq!(l.tracked(), 16);
        // One more: the two oldest (an eighth of 16) go, the rest stay.
        l.failure(ip(100), t + Duration::from_secs(20));
        assert_eq!(l.tracked(), 15);
        for n in 0..16u8 {
            assert_eq!(tracks(&l, ip(n)), n >= 2, "address {n}");
        }
        assert!(tracks(&l, ip(100)));

        // Full of addresses that have decayed: they all go, and nothing fresh is dropped.
        let l = limiter().with_max_entries(4);
        for n in 0..3u8 {
            l.failure(ip(n), t);
        }
        let later = t + Duration::from_secs(2 * 3600);
        l.failure(ip(50), later);
        assert_eq!(l.tracked(), 4);
        l.failure(ip(51), later);
        assert_eq!(l.tracked(), 2, "the three decayed addresses went");
        assert_eq!(l.failure(ip(50), later), Failure::TryAgain { left: 1 });

        // Many more addresses than the bound: never more than the bound.
        let l = limiter().with_max_entries(100);
        for n in 0..1000u32 {
            let a = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
            l.failure(a, t + Duration::from_millis(n.into()));
            assert!(l.tracked() <= 100);
        }
        // The newest address is still counted.
        assert_eq!(
            l.failure(
                IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + 999)),
                t + Duration::from_secs(1)
            ),
            Failure::TryAgain { left: 1 }
        );
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64() {
        let l = AuthLimiter::new(1, Duration::from_secs(10), Duration::from_secs(100));
        let now = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(matches!(l.failure(a, now), Failure::TryAgain { .. }));
        assert!(matches!(l.failure(b, now), Failure::Pause(_)), "same /64");
        assert!(l.check(a, now).is_err());
        assert!(l.check(other, now).is_ok(), "another /64 is another client");
    }
}
