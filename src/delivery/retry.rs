//! What to do after a failed attempt: pure, no I/O, no clock reads (times are passed in).
//!
//! The upstream's reply has already been turned into a [`Verdict`] in `upstream::error` (the
//! one place that reads reply codes); this file turns a verdict plus the message's history
//! into the next step: when to try again, or give up.

use std::time::Duration;

use crate::upstream::Verdict;

/// First retry within a minute (RFC 5321 §4.5.4.1 suggests at least 30 minutes between
/// attempts for MTAs; a sidecar in front of one known server can be quicker at first).
pub const FIRST_RETRY: Duration = Duration::from_secs(60);
/// Backoff never waits longer than this between attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(3600);
/// A held account (configuration error) is tried again this often, so a fix is noticed.
pub const HOLD_RETRY: Duration = Duration::from_secs(300);
/// After `432 4.3.2` the governor lowers concurrency; the message itself goes again soon.
pub const THROTTLE_RETRY: Duration = Duration::from_secs(30);
/// The shortest quota deferral.
pub const MIN_QUOTA_DEFER: Duration = Duration::from_secs(15 * 60);

/// The next step for a message after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Try again at this Unix time.
    RetryAt(u64),
    /// Give up: move to `failed/`.
    Fail(String),
}

/// Exponential backoff with jitter: attempt 1 waits 30–60 s, then doubling, capped at one
/// hour. `jitter` is a uniform random number in `[0, 1)` (passed in so tests are exact).
pub fn backoff(attempts: u32, jitter: f64) -> Duration {
    let exp = attempts.saturating_sub(1).min(16);
    let nominal = FIRST_RETRY
        .saturating_mul(1u32 << exp)
        .min(MAX_RETRY)
        .as_secs_f64();
    // Between half and all of the nominal delay: spreads retries after an outage.
    Duration::from_secs_f64(nominal * (0.5 + 0.5 * jitter.clamp(0.0, 1.0)))
}

/// What the history of a message looks like when deciding.
#[derive(Debug, Clone, Copy)]
pub struct History {
    /// Attempts made, including the one that just failed.
    pub attempts: u32,
    /// Unix seconds.
    pub received_at: u64,
    /// Unix seconds.
    pub now: u64,
    pub max_age: Duration,
    /// When the governor says the daily quota frees (Unix seconds), if known.
    pub quota_frees_at: Option<u64>,
    pub jitter: f64,
}

/// The next step after an attempt whose outcome was `verdict` (with `reason` for the record).
pub fn next_step(verdict: Verdict, reason: &str, h: History) -> Step {
    let wait = match verdict {
        Verdict::Permanent => return Step::Fail(reason.to_string()),
        Verdict::Transient => backoff(h.attempts, h.jitter),
        Verdict::Throttled => THROTTLE_RETRY,
        Verdict::Config => HOLD_RETRY,
        Verdict::Quota => {
            let until = h
                .quota_frees_at
                .map(|t| Duration::from_secs(t.saturating_sub(h.now)))
                .unwrap_or(MAX_RETRY);
            until.max(MIN_QUOTA_DEFER)
        }
    };
    let at = h.now + wait.as_secs().max(1);
    let deadline = h.received_at + h.max_age.as_secs();
    if h.now >= deadline || at > deadline + MAX_RETRY.as_secs() {
        return Step::Fail(format!(
            "gave up after {} attempts over {}: last error: {reason}",
            h.attempts,
            human(Duration::from_secs(h.now.saturating_sub(h.received_at)))
        ));
    }
    // Never schedule past the deadline by much: one last try at the deadline itself.
    Step::RetryAt(at.min(deadline.max(h.now + 1)))
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 86_400 {
        format!("{:.1} days", s as f64 / 86_400.0)
    } else if s >= 3600 {
        format!("{:.1} hours", s as f64 / 3600.0)
    } else {
        format!("{s} seconds")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::error::{classify_auth, classify_reply};
    use crate::wire::Reply;

    const DAY: u64 = 86_400;

    fn h(attempts: u32) -> History {
        History {
            attempts,
            received_at: 1_000_000,
            now: 1_000_000 + 100,
            max_age: Duration::from_secs(5 * DAY),
            quota_frees_at: None,
            jitter: 0.5,
        }
    }

    #[test]
    fn backoff_starts_within_a_minute_and_caps_at_an_hour() {
        assert!(backoff(1, 0.0) >= Duration::from_secs(30));
        assert!(backoff(1, 0.999) <= Duration::from_secs(60));
        assert_eq!(backoff(2, 1.0), Duration::from_secs(120));
        assert_eq!(backoff(3, 1.0), Duration::from_secs(240));
        for n in 7..40 {
            assert!(backoff(n, 1.0) <= MAX_RETRY);
            assert!(backoff(n, 0.0) >= MAX_RETRY / 2);
        }
        assert!(backoff(0, 0.5) <= FIRST_RETRY, "attempt 0 behaves like 1");
    }

    #[test]
    fn gives_up_after_max_age() {
        let mut late = h(40);
        late.now = late.received_at + 5 * DAY;
        match next_step(Verdict::Transient, "451 4.7.500 later", late) {
            Step::Fail(reason) => {
                assert!(reason.contains("gave up after 40 attempts"), "{reason}");
                assert!(reason.contains("451 4.7.500"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // Just before the deadline: one more try, not beyond the deadline.
        let mut almost = h(30);
        almost.now = almost.received_at + 5 * DAY - 10;
        assert_eq!(
            next_step(Verdict::Transient, "x", almost),
            Step::RetryAt(almost.received_at + 5 * DAY)
        );
    }

    #[test]
    fn quota_defers_until_the_window_frees() {
        let mut q = h(1);
        q.quota_frees_at = Some(q.now + 6 * 3600);
        assert_eq!(
            next_step(Verdict::Quota, "x", q),
            Step::RetryAt(q.now + 6 * 3600)
        );
        q.quota_frees_at = Some(q.now + 10);
        assert_eq!(
            next_step(Verdict::Quota, "x", q),
            Step::RetryAt(q.now + MIN_QUOTA_DEFER.as_secs())
        );
    }

    /// What the relay does with each row of the reference's reply-code handbook (§6).
    #[derive(Debug, PartialEq)]
    enum Expect {
        /// Retry within the first backoff step.
        RetrySoon,
        /// Hold the account: retry at the hold interval.
        Hold,
        /// Defer until the quota frees (15 min at least), do not bounce.
        Defer,
        Fail,
    }

    #[test]
    fn every_handbook_row() {
        // (stage is AUTH?, reply, expected)
        let rows: &[(bool, &str, Expect)] = &[
            (false, "421 4.7.66 TLS 1.0 and 1.1 are not supported. Please upgrade/update your client to support TLS 1.2. Visit https://aka.ms/smtp_auth_tls. [host]", Expect::Hold),
            (false, "421 4.3.2 Service not available", Expect::RetrySoon),
            (false, "421 4.3.2 The maximum number of concurrent connections has exceeded a limit, closing transmission channel", Expect::RetrySoon),
            (true, "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.", Expect::Hold),
            (true, "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information.", Expect::Hold),
            (true, "535 5.7.139 Authentication unsuccessful, the request did not meet the criteria to be authenticated successfully. Contact your administrator.", Expect::Hold),
            (true, "504 5.7.4 Unrecognized authentication type [host]", Expect::Hold),
            (true, "454 4.7.0 Temporary authentication failure", Expect::RetrySoon),
            (false, "530 5.7.57 SMTP; Client was not authenticated to send anonymous mail during MAIL FROM [host]", Expect::Hold),
            (false, "550 5.7.60 SMTP; Client does not have permissions to send as this sender", Expect::Fail),
            (false, "432 4.3.2 Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending for more information.", Expect::RetrySoon),
            (false, "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded [Hostname=x]", Expect::RetrySoon),
            (false, "452 4.5.3 Too many recipients", Expect::RetrySoon),
            (false, "554 5.2.252 SendAsDenied; a@x not allowed to send as b@y; STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied", Expect::Fail),
            (false, "430 4.2.0 STOREDRV; mailbox logon failure; Failed to process message", Expect::RetrySoon),
            (false, "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message", Expect::Defer),
            (false, "554 5.2.2 mailbox full; STOREDRV.Submission.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded", Expect::Hold),
            (false, "550 5.1.8 Access denied, bad outbound sender", Expect::Hold),
            (false, "550 5.7.705 Access denied, tenant has exceeded threshold", Expect::Hold),
            (false, "550 5.7.708 Access denied, traffic not accepted from this IP", Expect::Hold),
            (false, "550 5.7.750 Service unavailable. Client blocked from sending from unregistered domains", Expect::Hold),
            (false, "451 4.7.500 Access denied, please try again later", Expect::RetrySoon),
            (false, "451 4.7.650 Access denied, please try again later", Expect::RetrySoon),
            (false, "552 5.3.4 Message size exceeds fixed maximum message size", Expect::Fail),
            (false, "554 5.6.0 Invalid message content, contains bare linefeeds", Expect::Fail),
            (false, "451 4.7.0 Timeout waiting for client input", Expect::RetrySoon),
            (false, "421 4.4.1 Connection timed out", Expect::RetrySoon),
            (false, "421 4.7.0 Too many errors on this connection, closing transmission channel", Expect::RetrySoon),
        ];
        for (auth, text, expect) in rows {
            let r = Reply::line(text);
            let verdict = if *auth {
                // A 535 5.7.3 gets one fresh token first; the rows here are final replies.
                classify_auth(&r, true)
            } else {
                classify_reply(&r)
            };
            let hist = h(1);
            let step = next_step(verdict, text, hist);
            let got = match step {
                Step::Fail(_) => Expect::Fail,
                Step::RetryAt(at) => {
                    let wait = at - hist.now;
                    if verdict == Verdict::Config {
                        assert_eq!(wait, HOLD_RETRY.as_secs(), "{text}");
                        Expect::Hold
                    } else if wait >= MIN_QUOTA_DEFER.as_secs() {
                        Expect::Defer
                    } else {
                        assert!(wait <= 60, "{text}: waits {wait}");
                        Expect::RetrySoon
                    }
                }
            };
            assert_eq!(&got, expect, "{text}");
        }
        // 535 5.7.3: once transient (fresh token, try again), then configuration.
        let r = Reply::line("535 5.7.3 Authentication unsuccessful [host ts id]");
        assert_eq!(classify_auth(&r, false), Verdict::Transient);
        assert_eq!(classify_auth(&r, true), Verdict::Config);
    }
}
