//! Holding the account after a configuration error: new mail gets `451 4.7.0` with the
//! advice for a short while (hybrid and direct; queue mode keeps accepting), and the next
//! message after that tries again, so a fix is noticed without a restart. The advice is
//! logged at error level once per distinct problem, not once per message.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync::Lock as _;

/// How long new mail is refused after a configuration error before it is tried again.
pub const HOLD_FOR: Duration = Duration::from_secs(60);

/// The account's hold state. Pure apart from its lock: every method takes `now`.
#[derive(Debug, Default)]
pub struct Holds {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    hold: Option<Hold>,
    /// The last configuration problem logged at error level (its advice, which is stable,
    /// unlike error texts with trace ids).
    last_problem: Option<String>,
}

#[derive(Debug, Clone)]
struct Hold {
    advice: String,
    until: Instant,
    /// The token endpoint refused us (not Exchange): a working token lifts it.
    from_token: bool,
}

impl Holds {
    /// Holds the account with `advice` until `now + HOLD_FOR`. True when this problem differs
    /// from the last one logged (log it).
    pub fn set(&self, advice: String, from_token: bool, now: Instant) -> bool {
        let mut st = self.state.locked();
        let first = st.last_problem.as_deref() != Some(advice.as_str());
        st.last_problem = Some(advice.clone());
        st.hold = Some(Hold {
            advice,
            until: now + HOLD_FOR,
            from_token,
        });
        first
    }

    /// The advice of the hold in force at `now`, if any.
    pub fn current(&self, now: Instant) -> Option<String> {
        let st = self.state.locked();
        st.hold
            .as_ref()
            .filter(|h| h.until > now)
            .map(|h| h.advice.clone())
    }

    /// A delivery worked: lifts any hold. True if there was a hold or a logged problem.
    pub fn lift(&self) -> bool {
        let mut st = self.state.locked();
        let had_hold = st.hold.take().is_some();
        let had_problem = st.last_problem.take().is_some();
        had_hold || had_problem
    }

    /// The token endpoint issues tokens again: lifts a hold it caused (a hold from
    /// Exchange's side stays until a delivery works).
    pub fn token_recovered(&self) {
        let mut st = self.state.locked();
        if st.hold.as_ref().is_some_and(|h| h.from_token) {
            st.hold = None;
            st.last_problem = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_lasts_its_time_and_logs_each_problem_once() {
        let h = Holds::default();
        let t0 = Instant::now();
        assert_eq!(h.current(t0), None);
        assert!(
            h.set("fix the secret".into(), true, t0),
            "first time: log it"
        );
        assert!(
            !h.set("fix the secret".into(), true, t0),
            "same problem: quiet"
        );
        assert_eq!(h.current(t0).as_deref(), Some("fix the secret"));
        assert_eq!(h.current(t0 + HOLD_FOR), None, "expired: try again");
        assert!(
            h.set("enable SMTP AUTH".into(), false, t0),
            "a new problem is logged"
        );
    }

    #[test]
    fn only_a_token_hold_is_lifted_by_a_working_token() {
        let h = Holds::default();
        let t0 = Instant::now();
        h.set("exchange says no".into(), false, t0);
        h.token_recovered();
        assert!(h.current(t0).is_some(), "Exchange's hold stays");
        h.set("fix the secret".into(), true, t0);
        h.token_recovered();
        assert_eq!(h.current(t0), None);
        assert!(
            h.set("fix the secret".into(), true, t0),
            "logged again next time"
        );
    }

    #[test]
    fn a_delivery_lifts_everything() {
        let h = Holds::default();
        assert!(!h.lift(), "nothing to lift");
        h.set("x".into(), false, Instant::now());
        assert!(h.lift());
        assert_eq!(h.current(Instant::now()), None);
        assert!(!h.lift());
    }
}
