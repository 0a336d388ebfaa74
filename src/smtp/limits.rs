//! How long and how much one client may hold a connection slot: pure decisions, beside the
//! drivers (`listener`, `connection`, `message`) that apply them.
//!
//! Learnt from Postfix (`STRESS_README`, `smtpd_junk_command_limit`,
//! `smtpd_client_connection_count_limit`): a slot held by a client that does nothing useful is
//! a slot a real client waits for. So:
//!
//! - **Stress.** When more than [`STRESS_PERCENT`] of `listen.max_connections` slots are in use,
//!   every wait shortens to `listen.stress_timeout_secs`: the wait for a command line (a whole
//!   line, however it trickles in) and the silence allowed in DATA, and the body must keep
//!   coming at [`MIN_DATA_RATE`] from the start of DATA on (the deadline is
//!   `stress timeout + bytes so far / rate` after the `354`), so a client dripping one byte at
//!   a time loses its slot within seconds instead of minutes.
//! - **Junk.** `NOOP`, `RSET`, `VRFY`, `HELP`, `EXPN` and commands we refuse as unknown or
//!   malformed move no mail; after `listen.max_junk_commands` of them since the last accepted
//!   message the client gets `421` (a keep-alive `NOOP` every 10 s no longer holds a slot
//!   forever).
//! - **Session caps.** A session ends with `421` once it has lasted `listen.max_session_secs`
//!   (checked while waiting for a command: a message being received is not cut short), or
//!   when it starts a message beyond `listen.max_messages_per_session`.
//! - **Per client.** A client address other than loopback may hold at most
//!   `listen.max_connections_per_client` slots; more get `421` at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smtp_proto::Request;
use tokio::time::Instant;

use super::reply::{self, Reply};
use crate::sync::Lock;

/// Above this share of slots in use (percent), the relay is under stress.
pub const STRESS_PERCENT: usize = 80;

/// The slowest body transfer we wait for: beyond `data_timeout` of silence at any point, the
/// whole DATA phase may take at most `data_timeout` plus the largest message at this rate.
/// Under stress, the body must keep this rate from the start of DATA on.
pub const MIN_DATA_RATE: u64 = 32 * 1024;

/// The connection slots of one listener: how many are in use, and by which client address.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    per_client: usize,
    in_use: AtomicUsize,
    by_client: Mutex<HashMap<IpAddr, usize>>,
}

/// One slot in use; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    /// The counted client address (never loopback).
    client: Option<IpAddr>,
    over_client_limit: bool,
}

impl Slots {
    /// `max` slots in all, at most `per_client` for one non-loopback address.
    pub fn new(max: usize, per_client: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max,
            per_client,
            in_use: AtomicUsize::new(0),
            by_client: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a slot for a client at `ip` (see [`Slot::over_client_limit`]).
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Slot {
        self.in_use.fetch_add(1, Ordering::AcqRel);
        let ip = ip.to_canonical();
        let (client, over_client_limit) = if ip.is_loopback() {
            (None, false)
        } else {
            let mut map = self.by_client.locked();
            let n = map.entry(ip).or_insert(0);
            *n += 1;
            (Some(ip), *n > self.per_client)
        };
        Slot {
            slots: self.clone(),
            client,
            over_client_limit,
        }
    }

    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }

    /// More than [`STRESS_PERCENT`] of the slots are in use.
    pub fn stressed(&self) -> bool {
        self.in_use() * 100 > self.max * STRESS_PERCENT
    }
}

impl Slot {
    /// This client address already holds `max_connections_per_client` other slots: refuse it.
    pub fn over_client_limit(&self) -> bool {
        self.over_client_limit
    }

    /// The listener this slot belongs to is under stress.
    pub fn stressed(&self) -> bool {
        self.slots.stressed()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(ip) = self.client {
            let mut map = self.slots.by_client.locked();
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
        self.slots.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a wait for a command ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandWait {
    /// The command timeout (shortened under stress): `421 4.4.2`.
    Timeout,
    /// The session reached `max_session_secs`.
    SessionTooLong,
}

/// The timeouts of one connection; which apply depends on the load when asked.
#[derive(Debug, Clone)]
pub struct Timeouts {
    pub command: Duration,
    pub data: Duration,
    /// Replaces both, when shorter, under stress.
    pub stress: Duration,
    /// When the session must end (checked between commands).
    pub session_end: Instant,
    /// The largest message: with [`MIN_DATA_RATE`] it bounds the whole DATA phase.
    pub max_message_size: u64,
}

impl Timeouts {
    /// When the wait for the command line now being received ends, and why. `line_started`
    /// is when its first byte came (none yet: the wait starts `now`).
    pub fn command_deadline(
        &self,
        now: Instant,
        line_started: Option<Instant>,
        stressed: bool,
    ) -> (Instant, CommandWait) {
        let deadline = line_started.unwrap_or(now) + self.write_limit(stressed);
        if self.session_end <= deadline {
            (self.session_end, CommandWait::SessionTooLong)
        } else {
            (deadline, CommandWait::Timeout)
        }
    }

    /// The command timeout in force: also how long a reply may take to write.
    pub fn write_limit(&self, stressed: bool) -> Duration {
        if stressed {
            self.command.min(self.stress)
        } else {
            self.command
        }
    }

    /// When the next read of message data must have returned: `data_timeout` of silence, and
    /// the whole phase within `data_timeout` plus the largest message at [`MIN_DATA_RATE`];
    /// under stress, the stress timeout of silence and `stress + received / MIN_DATA_RATE`
    /// after `started` (the `354`).
    pub fn data_deadline(
        &self,
        now: Instant,
        started: Instant,
        received: u64,
        stressed: bool,
    ) -> Instant {
        let whole = started + self.data + rate_time(self.max_message_size);
        let deadline = (now + self.data).min(whole);
        if !stressed {
            return deadline;
        }
        let credit = started + self.stress + rate_time(received);
        deadline.min(now + self.stress).min(credit)
    }
}

/// How long `bytes` take at [`MIN_DATA_RATE`].
fn rate_time(bytes: u64) -> Duration {
    Duration::from_millis(bytes.saturating_mul(1000) / MIN_DATA_RATE)
}

/// What a session may still do: junk commands and messages left.
#[derive(Debug, Clone)]
pub struct Budget {
    max_junk: usize,
    max_messages: usize,
    junk: usize,
    messages: usize,
}

impl Budget {
    pub fn new(max_junk: usize, max_messages: usize) -> Budget {
        Budget {
            max_junk,
            max_messages,
            junk: 0,
            messages: 0,
        }
    }

    /// Looks at a command before the session does: `Some(reply)` ends the connection with it.
    pub fn check<T>(
        &mut self,
        request: &Result<Request<T>, smtp_proto::Error>,
        hostname: &str,
    ) -> Option<Reply> {
        let junk = match request {
            Ok(Request::Noop { .. } | Request::Rset | Request::Vrfy { .. })
            | Ok(Request::Help { .. } | Request::Expn { .. }) => true,
            Ok(Request::Mail { .. }) if self.messages >= self.max_messages => {
                return Some(reply::too_many_messages(hostname));
            }
            // Lines the parser refuses count when their refusal is answered (`refused`).
            Ok(_) | Err(_) => false,
        };
        if junk {
            self.junk += 1;
            if self.junk > self.max_junk {
                return Some(reply::too_much_junk(hostname));
            }
        }
        None
    }

    /// A command the relay refused (any 4xx or 5xx answer: unknown, bad syntax, out of
    /// sequence, a bad address, a line too long) counts as junk too: a client looping on
    /// refusals must not hold its slot for the whole session.
    pub fn refused(&mut self, hostname: &str) -> Option<Reply> {
        self.junk += 1;
        (self.junk > self.max_junk).then(|| reply::too_much_junk(hostname))
    }

    /// A message was accepted: one more in this session, and the junk count starts again.
    pub fn message_accepted(&mut self) {
        self.messages += 1;
        self.junk = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp_proto::request::receiver::RequestReceiver;

    fn parse(line: &str) -> Result<Request<String>, smtp_proto::Error> {
        let bytes = format!("{line}\r\n");
        let mut iter = bytes.as_bytes().iter();
        RequestReceiver::default()
            .ingest(&mut iter)
            .map(|r| r.into_owned())
    }

    #[test]
    fn slots_count_stress_and_clients() {
        let slots = Slots::new(10, 2);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let far: IpAddr = "10.0.0.7".parse().unwrap();
        let mut held: Vec<Slot> = (0..8).map(|_| slots.enter(lo)).collect();
        assert_eq!(slots.in_use(), 8);
        assert!(!slots.stressed(), "80% is not yet stress");
        held.push(slots.enter(lo));
        assert!(slots.stressed());
        assert!(
            held.iter().all(|s| !s.over_client_limit()),
            "loopback is not counted"
        );
        held.clear();
        assert_eq!(slots.in_use(), 0);
        assert!(!slots.stressed());

        let a = slots.enter(far);
        let b = slots.enter("::ffff:10.0.0.7".parse().unwrap());
        let c = slots.enter(far);
        assert!(!a.over_client_limit() && !b.over_client_limit());
        assert!(
            c.over_client_limit(),
            "third from one address (either notation)"
        );
        assert!(!slots.enter("10.0.0.8".parse().unwrap()).over_client_limit());
        drop(c);
        drop(a);
        assert!(!slots.enter(far).over_client_limit(), "slots come back");
    }

    fn timeouts(now: Instant) -> Timeouts {
        Timeouts {
            command: Duration::from_secs(300),
            data: Duration::from_secs(300),
            stress: Duration::from_secs(5),
            session_end: now + Duration::from_secs(1800),
            max_message_size: 32 * MIN_DATA_RATE,
        }
    }

    #[test]
    fn command_deadline_covers_a_whole_line_and_shortens_under_stress() {
        let now = Instant::now();
        let t = timeouts(now);
        let s = Duration::from_secs;
        assert_eq!(
            t.command_deadline(now, None, false),
            (now + s(300), CommandWait::Timeout)
        );
        let started = now - s(2);
        assert_eq!(
            t.command_deadline(now, Some(started), false),
            (started + s(300), CommandWait::Timeout)
        );
        assert_eq!(
            t.command_deadline(now, Some(started), true),
            (started + s(5), CommandWait::Timeout)
        );
        let late = now + s(1700);
        assert_eq!(
            t.command_deadline(late, None, false),
            (now + s(1800), CommandWait::SessionTooLong)
        );
    }

    #[test]
    fn data_deadline_wants_progress_under_stress() {
        let now = Instant::now();
        let t = timeouts(now);
        let s = Duration::from_secs;
        // Unstressed: silence of data_timeout, the whole phase bounded.
        assert_eq!(t.data_deadline(now, now, 0, false), now + s(300));
        assert_eq!(
            t.data_deadline(now + s(100), now, 0, false),
            now + s(300 + 32),
            "data_timeout + max size at the minimum rate"
        );
        // Stressed: the stress timeout, plus one second per MIN_DATA_RATE bytes so far.
        assert_eq!(t.data_deadline(now, now, 0, true), now + s(5));
        assert_eq!(t.data_deadline(now + s(3), now, 10, true), now + s(5));
        assert_eq!(
            t.data_deadline(now + s(3), now, 4 * MIN_DATA_RATE, true),
            now + s(8),
            "a client that keeps the rate keeps a silence allowance"
        );
    }

    #[test]
    fn junk_commands_are_limited_and_reset_by_a_message() {
        let mut b = Budget::new(3, 2);
        for line in ["NOOP", "RSET", "VRFY x"] {
            assert_eq!(b.check(&parse(line), "relay.test"), None, "{line}");
        }
        assert_eq!(b.check(&parse("MAIL FROM:<a@b>"), "relay.test"), None);
        assert_eq!(b.check(&parse("EHLO x"), "relay.test"), None, "not junk");
        let r = b
            .check(&parse("HELP"), "relay.test")
            .expect("fourth junk command");
        assert_eq!((r.code, r.status()), (421, Some("4.7.0")));

        let mut b = Budget::new(3, 2);
        assert_eq!(b.check(&parse("FOO"), "h"), None, "counted when refused");
        assert_eq!(b.refused("h"), None);
        assert_eq!(b.refused("h"), None);
        assert_eq!(b.check(&parse("NOOP"), "h"), None);
        b.message_accepted();
        for _ in 0..3 {
            assert_eq!(b.check(&parse("NOOP"), "h"), None, "counting starts again");
        }
        assert!(b.refused("h").is_some());
    }

    #[test]
    fn messages_per_session_are_limited() {
        let mut b = Budget::new(100, 2);
        let mail = parse("MAIL FROM:<a@b>");
        assert_eq!(b.check(&mail, "h"), None);
        b.message_accepted();
        assert_eq!(b.check(&mail, "h"), None);
        b.message_accepted();
        let r = b.check(&mail, "h").expect("third message refused");
        assert_eq!((r.code, r.status()), (421, Some("4.7.0")));
        assert_eq!(b.check(&parse("QUIT"), "h"), None);
    }
}
