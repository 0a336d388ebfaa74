//! What the upstream does differently per endpoint ([`Endpoint`], reference §3.6, §8): High
//! Volume Email refuses a token with less than 10 minutes left at AUTH (`501 5.5.127 Invalid
//! XOAUTH2 auth data - Token will expire soon`), so before AUTH on HVE a cached token with less
//! than that, plus a margin for the dialog and clock differences, is replaced by a fresh one.
//! Pure: the minimum here, the fetching in `auth.rs` (`TokenCache::get_with_at_least`).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hve_wants_ten_minutes_and_a_margin() {
        assert_eq!(min_token_life_at_auth(Endpoint::Standard), Duration::ZERO);
        assert_eq!(
            min_token_life_at_auth(Endpoint::Hve),
            Duration::from_secs(11 * 60)
        );
    }
}
