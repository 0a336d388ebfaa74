//! The sandbox's memory of delegated sign-ins (reference §1.6): device codes waiting for a
//! user, and the refresh tokens issued to signed-in users, with their rotation.
//!
//! Why a module of its own: like `issued.rs`, it is the noun the token endpoint (which
//! starts, polls and refreshes) and the public handle (which approves, declines and revokes,
//! standing in for the user and the admin) share, so it sits below both and imports neither.
//! Every rule is a plain method over data and the time passed in, tested below:
//! - a device code is `authorization_pending` until approved, `slow_down` when polled sooner
//!   than its interval after the previous poll (which then grows by 5 s, RFC 8628 §3.5),
//!   `expired_token` once `expires_in` has passed, and is used up by the poll that succeeds;
//! - a refresh token works once: using it returns a new one and spends the old, whose reuse
//!   is refused; `revoke_all` refuses every one (a password reset or admin revoke).
//!
//! Tokens and device codes are never logged.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// Arrivals this much sooner than the interval still count as on time (timer granularity).
const POLL_SLACK: Duration = Duration::from_millis(50);
/// What `slow_down` adds to a device code's interval (RFC 8628 §3.5).
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// One device code and its sign-in.
#[derive(Debug)]
struct DeviceRecord {
    device_code: String,
    user_code: String,
    scope: String,
    issued: Instant,
    expires_in: Duration,
    interval: Duration,
    last_poll: Option<Instant>,
    /// The user who approved it.
    approved: Option<String>,
    declined: bool,
}

/// What the token endpoint answers to a device code poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PollVerdict {
    Pending,
    SlowDown,
    Expired,
    Declined,
    /// No such device code (or one already used).
    Unknown,
    /// Signed in: issue tokens for this user and scope.
    Approved {
        upn: String,
        scope: String,
    },
}

/// Where a refresh token stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefreshState {
    Active,
    /// Used once; a newer one replaced it.
    Rotated,
    Revoked,
}

#[derive(Debug)]
struct RefreshRecord {
    upn: String,
    scope: String,
    state: RefreshState,
}

/// What the token endpoint answers to a refresh token grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RefreshVerdict {
    /// Valid: issue tokens (and a new refresh token) for this user and scope.
    Rotate {
        upn: String,
        scope: String,
    },
    /// Already used once.
    Reused,
    /// Revoked by `revoke_all`.
    Revoked,
    Unknown,
}

/// Device codes and refresh tokens.
#[derive(Debug, Default)]
pub(crate) struct Delegated {
    devices: Vec<DeviceRecord>,
    refresh: HashMap<String, RefreshRecord>,
}

fn random_b64url(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A user code like Entra's: 9 characters without look-alikes.
fn random_user_code() -> String {
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    (0..9)
        .map(|_| CHARS[rand::random_range(0..CHARS.len())] as char)
        .collect()
}

impl Delegated {
    /// Issues a device code for `scope`; returns `(device_code, user_code)`.
    pub(crate) fn start(
        &mut self,
        scope: &str,
        now: Instant,
        expires_in: Duration,
        interval: Duration,
    ) -> (String, String) {
        self.devices
            .retain(|d| now < d.issued + d.expires_in + Duration::from_secs(600));
        let device_code = format!("DAQABIQEAAAD{}", random_b64url(96));
        let user_code = random_user_code();
        self.devices.push(DeviceRecord {
            device_code: device_code.clone(),
            user_code: user_code.clone(),
            scope: scope.to_string(),
            issued: now,
            expires_in,
            interval,
            last_poll: None,
            approved: None,
            declined: false,
        });
        (device_code, user_code)
    }

    /// One poll with `device_code` at `now`.
    pub(crate) fn poll(&mut self, device_code: &str, now: Instant) -> PollVerdict {
        let Some(pos) = self
            .devices
            .iter()
            .position(|d| d.device_code == device_code)
        else {
            return PollVerdict::Unknown;
        };
        let d = &mut self.devices[pos];
        if now >= d.issued + d.expires_in {
            self.devices.remove(pos);
            return PollVerdict::Expired;
        }
        let too_soon = d
            .last_poll
            .is_some_and(|last| now + POLL_SLACK < last + d.interval);
        d.last_poll = Some(now);
        if too_soon {
            d.interval += SLOW_DOWN_STEP;
            return PollVerdict::SlowDown;
        }
        if d.declined {
            self.devices.remove(pos);
            return PollVerdict::Declined;
        }
        match d.approved.clone() {
            Some(upn) => {
                let scope = self.devices.remove(pos).scope;
                PollVerdict::Approved { upn, scope }
            }
            None => PollVerdict::Pending,
        }
    }

    /// The user `upn` signs in with `user_code` (every waiting code when `None`); returns
    /// how many codes were approved. Expired codes are not.
    pub(crate) fn approve(&mut self, user_code: Option<&str>, upn: &str, now: Instant) -> usize {
        self.waiting(user_code, now)
            .map(|d| d.approved = Some(upn.to_string()))
            .count()
    }

    /// The user declines the sign-in for `user_code` (every waiting code when `None`).
    pub(crate) fn decline(&mut self, user_code: Option<&str>, now: Instant) -> usize {
        self.waiting(user_code, now)
            .map(|d| d.declined = true)
            .count()
    }

    /// User codes issued, not yet expired, approved or declined.
    pub(crate) fn pending(&self, now: Instant) -> Vec<String> {
        self.devices
            .iter()
            .filter(|d| now < d.issued + d.expires_in && d.approved.is_none() && !d.declined)
            .map(|d| d.user_code.clone())
            .collect()
    }

    fn waiting<'a>(
        &'a mut self,
        user_code: Option<&'a str>,
        now: Instant,
    ) -> impl Iterator<Item = &'a mut DeviceRecord> + 'a {
        self.devices.iter_mut().filter(move |d| {
            now < d.issued + d.expires_in
                && d.approved.is_none()
                && !d.declined
                && user_code.is_none_or(|c| c.eq_ignore_ascii_case(&d.user_code))
        })
    }

    /// A new refresh token for `upn` and `scope` (opaque, never a JWT: reference §1.9).
    pub(crate) fn issue_refresh(&mut self, upn: &str, scope: &str) -> String {
        let token = format!("0.AXoA{}", random_b64url(200));
        self.refresh.insert(
            token.clone(),
            RefreshRecord {
                upn: upn.to_string(),
                scope: scope.to_string(),
                state: RefreshState::Active,
            },
        );
        token
    }

    /// Uses `token` once: a valid one is spent (the caller issues its successor).
    pub(crate) fn refresh(&mut self, token: &str) -> RefreshVerdict {
        let Some(record) = self.refresh.get_mut(token) else {
            return RefreshVerdict::Unknown;
        };
        match record.state {
            RefreshState::Revoked => RefreshVerdict::Revoked,
            RefreshState::Rotated => RefreshVerdict::Reused,
            RefreshState::Active => {
                record.state = RefreshState::Rotated;
                RefreshVerdict::Rotate {
                    upn: record.upn.clone(),
                    scope: record.scope.clone(),
                }
            }
        }
    }

    /// Every refresh token issued so far stops working (password reset, admin revoke).
    pub(crate) fn revoke_all(&mut self) {
        for record in self.refresh.values_mut() {
            record.state = RefreshState::Revoked;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCOPE: &str = "https://outlook.office.com/SMTP.Send offline_access";

    fn started(d: &mut Delegated, t0: Instant) -> (String, String) {
        d.start(SCOPE, t0, Duration::from_secs(60), Duration::from_secs(5))
    }

    #[test]
    fn pending_until_approved_then_used_up() {
        let mut d = Delegated::default();
        let t0 = Instant::now();
        let (code, user_code) = started(&mut d, t0);
        assert_eq!(user_code.len(), 9);
        assert_eq!(d.pending(t0), vec![user_code.clone()]);
        assert_eq!(d.poll(&code, t0), PollVerdict::Pending);
        assert_eq!(d.approve(Some("nope"), "u@x", t0), 0);
        assert_eq!(d.approve(Some(&user_code.to_lowercase()), "u@x", t0), 1);
        assert!(d.pending(t0).is_empty());
        assert_eq!(
            d.poll(&code, t0 + Duration::from_secs(5)),
            PollVerdict::Approved {
                upn: "u@x".into(),
                scope: SCOPE.into()
            }
        );
        assert_eq!(
            d.poll(&code, t0 + Duration::from_secs(10)),
            PollVerdict::Unknown
        );
    }

    #[test]
    fn polling_sooner_than_the_interval_is_slow_down_and_grows_it() {
        let mut d = Delegated::default();
        let t0 = Instant::now();
        let (code, _) = started(&mut d, t0);
        assert_eq!(d.poll(&code, t0), PollVerdict::Pending);
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(d.poll(&code, t1), PollVerdict::SlowDown);
        // Now 10 s apart are needed.
        let t2 = t1 + Duration::from_secs(6);
        assert_eq!(d.poll(&code, t2), PollVerdict::SlowDown);
        let t3 = t2 + Duration::from_secs(15);
        assert_eq!(d.poll(&code, t3), PollVerdict::Pending);
        // At the interval exactly is on time.
        assert_eq!(
            d.poll(&code, t3 + Duration::from_secs(15)),
            PollVerdict::Pending
        );
    }

    #[test]
    fn expired_codes_say_so_once_and_cannot_be_approved() {
        let mut d = Delegated::default();
        let t0 = Instant::now();
        let (code, user_code) = started(&mut d, t0);
        let late = t0 + Duration::from_secs(60);
        assert_eq!(d.approve(Some(&user_code), "u@x", late), 0);
        assert!(d.pending(late).is_empty());
        assert_eq!(d.poll(&code, late), PollVerdict::Expired);
        assert_eq!(d.poll(&code, late), PollVerdict::Unknown);
    }

    #[test]
    fn declined_codes_end_the_sign_in() {
        let mut d = Delegated::default();
        let t0 = Instant::now();
        let (a, _) = started(&mut d, t0);
        let (b, _) = started(&mut d, t0);
        assert_eq!(d.decline(None, t0), 2);
        assert_eq!(d.poll(&a, t0), PollVerdict::Declined);
        assert_eq!(d.poll(&b, t0), PollVerdict::Declined);
    }

    #[test]
    fn refresh_tokens_rotate_and_can_be_revoked() {
        let mut d = Delegated::default();
        let first = d.issue_refresh("u@x", SCOPE);
        assert!(!first.starts_with("eyJ"), "opaque, not a JWT");
        assert_eq!(
            d.refresh(&first),
            RefreshVerdict::Rotate {
                upn: "u@x".into(),
                scope: SCOPE.into()
            }
        );
        assert_eq!(d.refresh(&first), RefreshVerdict::Reused);
        let second = d.issue_refresh("u@x", SCOPE);
        assert_ne!(first, second);
        d.revoke_all();
        assert_eq!(d.refresh(&second), RefreshVerdict::Revoked);
        assert_eq!(d.refresh("0.AXoAunknown"), RefreshVerdict::Unknown);
    }
}
