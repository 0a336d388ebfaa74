//! What the upstream does differently per endpoint ([`Endpoint`], reference §3.6, §8): High
//! Volume Email refuses a token with less than 10 minutes left at AUTH (`501 5.5.127 Invalid
//! XOAUTH2 auth data - Token will expire soon`), so before AUTH on HVE a cached token with less
//! than that, plus a margin for the dialog and clock differences, is replaced by a fresh one.
//! Pure: the decision here, the fetching in `auth.rs`.
//!
//! The noun itself lives in `diagnose` (advice depends on it, and that room is below this one)
//! and is re-exported from here and from `upstream`.

use std::time::Duration;

pub use crate::diagnose::Endpoint;
use crate::diagnose::HVE_MIN_TOKEN_MINUTES;

/// Added to HVE's 10 minutes: connect and AUTH take a moment, and Exchange's clock is not ours.
pub const HVE_AUTH_MARGIN: Duration = Duration::from_secs(60);

/// The least token life `endpoint` needs at AUTH, margin included (zero: any usable token).
pub fn min_token_life_at_auth(endpoint: Endpoint) -> Duration {
    match endpoint {
        Endpoint::Standard => Duration::ZERO,
        Endpoint::Hve => Duration::from_secs(HVE_MIN_TOKEN_MINUTES * 60) + HVE_AUTH_MARGIN,
    }
}

/// Whether a token with `remaining` life must be replaced by a fresh one before AUTH.
pub fn needs_fresh_token(endpoint: Endpoint, remaining: Duration) -> bool {
    remaining < min_token_life_at_auth(endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hve_wants_ten_minutes_and_a_margin() {
        let min = |m: u64| Duration::from_secs(m * 60);
        assert!(!needs_fresh_token(
            Endpoint::Standard,
            Duration::from_secs(5)
        ));
        assert!(needs_fresh_token(Endpoint::Hve, min(9)));
        assert!(needs_fresh_token(Endpoint::Hve, min(10)));
        assert!(needs_fresh_token(
            Endpoint::Hve,
            min(11) - Duration::from_secs(1)
        ));
        assert!(!needs_fresh_token(Endpoint::Hve, min(11)));
        assert!(!needs_fresh_token(Endpoint::Hve, min(60)));
        assert_eq!(min_token_life_at_auth(Endpoint::Hve), min(11));
    }
}
