//! When the credential itself runs out (a certificate's `notAfter`), in plain words. Pure:
//! the start-up log, `check` and `/readyz` all ask [`expiry`] with the source's
//! [`not_after`](super::TokenSource::not_after) and the current time.

use std::fmt;
use std::time::{Duration, SystemTime};

/// How long ahead of expiry the log and `check` warn.
pub const WARN_AHEAD: Duration = Duration::from_secs(30 * 24 * 3600);

/// A credential that has expired or soon will.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    /// Past `notAfter`: Entra refuses it; `/readyz` fails.
    Expired { on: String },
    /// Within [`WARN_AHEAD`] of `notAfter`.
    Soon { on: String, days: u64 },
}

impl Expiry {
    pub fn is_expired(&self) -> bool {
        matches!(self, Expiry::Expired { .. })
    }
}

impl fmt::Display for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expiry::Expired { on } => write!(
                f,
                "the certificate expired on {on}: make a new one, upload its public part under \
                 Certificates & secrets of the app registration, replace the files and send \
                 SIGHUP"
            ),
            Expiry::Soon { on, days } => write!(
                f,
                "the certificate expires on {on} (in {days} day(s)): make a new one, upload its \
                 public part under Certificates & secrets of the app registration, replace the \
                 files and send SIGHUP"
            ),
        }
    }
}

/// Whether `not_after` has passed at `now` or comes within [`WARN_AHEAD`]. `None` for a
/// credential without such a date, or one far from it.
pub fn expiry(not_after: Option<SystemTime>, now: SystemTime) -> Option<Expiry> {
    let not_after = not_after?;
    let on = date(not_after);
    match not_after.duration_since(now) {
        Err(_) => Some(Expiry::Expired { on }),
        Ok(left) if left.is_zero() => Some(Expiry::Expired { on }),
        Ok(left) if left <= WARN_AHEAD => Some(Expiry::Soon {
            on,
            days: left.as_secs() / 86_400,
        }),
        Ok(_) => None,
    }
}

/// RFC 3339 in UTC, to the second.
fn date(t: SystemTime) -> String {
    match pkcs8::der::DateTime::from_system_time(t) {
        Ok(d) => d.to_string(),
        Err(_) => httpdate::fmt_http_date(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    #[test]
    fn expired_soon_and_far() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_209_075_200); // 2040-01-02
        assert_eq!(expiry(None, now), None);
        let far = now + Duration::from_secs(31 * DAY);
        assert_eq!(expiry(Some(far), now), None);
        let soon = now + Duration::from_secs(10 * DAY + 5);
        let e = expiry(Some(soon), now).unwrap();
        assert_eq!(
            e,
            Expiry::Soon {
                on: "2040-01-12T00:00:05Z".into(),
                days: 10
            }
        );
        assert!(!e.is_expired());
        assert!(e.to_string().contains("in 10 day(s)"), "{e}");
        let past = now - Duration::from_secs(DAY);
        let e = expiry(Some(past), now).unwrap();
        assert!(e.is_expired());
        assert!(
            e.to_string()
                .starts_with("the certificate expired on 2040-01-01T00:00:00Z"),
            "{e}"
        );
        assert!(expiry(Some(now), now).unwrap().is_expired());
    }
}
