//! Wall-clock formatting for the sandbox's wire texts.
//!
//! Microsoft stamps its replies in three shapes: RFC 2822 in the SMTP greeting
//! (`Sun, 23 Nov 2025 11:12:20 +0000`), ISO 8601 with milliseconds inside `535 5.7.3 [...]`
//! brackets, and `YYYY-MM-DD HH:MM:SSZ` in Entra error bodies (reference §1.8, §3.3, §5).
//! The sandbox only needs UTC, so a small civil-date conversion is enough and saves a
//! date-time dependency. Wall-clock time (not tokio's clock) is used on purpose: token
//! `exp`/`nbf` claims are Unix seconds, as in Entra.

use std::time::{SystemTime, UNIX_EPOCH};

/// A UTC calendar instant, split into the fields the formats need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UtcTime {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    millis: u32,
    /// 0 = Sunday.
    weekday: u32,
}

const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Seconds since the Unix epoch, now (0 if the clock is before 1970).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl UtcTime {
    pub(crate) fn now() -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self::from_unix_millis(since.as_millis() as i64)
    }

    pub(crate) fn from_unix_millis(ms: i64) -> Self {
        let secs = ms.div_euclid(1000);
        let millis = ms.rem_euclid(1000) as u32;
        let days = secs.div_euclid(86_400);
        let of_day = secs.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        UtcTime {
            year,
            month,
            day,
            hour: of_day / 3600,
            minute: of_day / 60 % 60,
            second: of_day % 60,
            millis,
            weekday: (days + 4).rem_euclid(7) as u32,
        }
    }

    /// `2024-03-20T10:27:56.998Z`
    pub(crate) fn iso_millis(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.millis
        )
    }

    /// `2025-11-23 11:12:20Z` (Entra's `timestamp` field).
    pub(crate) fn entra(&self) -> String {
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// `Sun, 23 Nov 2025 11:12:20 +0000` (RFC 2822, as in Exchange's greeting).
    pub(crate) fn rfc2822(&self) -> String {
        format!(
            "{}, {} {} {:04} {:02}:{:02}:{:02} +0000",
            WEEKDAYS[self.weekday as usize % 7],
            self.day,
            MONTHS[(self.month as usize + 11) % 12],
            self.year,
            self.hour,
            self.minute,
            self.second
        )
    }
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_is_a_thursday() {
        let t = UtcTime::from_unix_millis(0);
        assert_eq!(t.rfc2822(), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(t.iso_millis(), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn formats_a_known_instant() {
        // 2025-11-23 11:12:20.123 UTC, the day of the reference transcript (a Sunday).
        let t = UtcTime::from_unix_millis(1_763_896_340_123);
        assert_eq!(t.rfc2822(), "Sun, 23 Nov 2025 11:12:20 +0000");
        assert_eq!(t.iso_millis(), "2025-11-23T11:12:20.123Z");
        assert_eq!(t.entra(), "2025-11-23 11:12:20Z");
    }

    #[test]
    fn leap_day() {
        // 2024-02-29 00:00:00 UTC
        let t = UtcTime::from_unix_millis(1_709_164_800_000);
        assert_eq!(t.entra(), "2024-02-29 00:00:00Z");
        assert_eq!(t.rfc2822(), "Thu, 29 Feb 2024 00:00:00 +0000");
    }
}
