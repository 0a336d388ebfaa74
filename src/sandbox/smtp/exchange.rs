//! Exchange Online's fixed words and numbers as the sandbox's SMTP side quotes them: the
//! host names in its replies, the limits it advertises and enforces, and the reply texts
//! used in more than one place (reference §4.1, §4.2, §6).
//!
//! Why a module of its own: the greeting, the command replies, the body phase and the wire
//! (which answers idle and shut-down sessions) all use these, and the relay's tests compare
//! them byte for byte, so each text is written once, here. Replies used in one place only
//! stay next to the code that sends them.

/// The front-end host name in greetings and bracketed diagnostics.
pub(super) const HOST: &str = "sandbox.outlook.office365.com";
/// The "mailbox server" named in the final `250` after DATA.
pub(super) const MAILBOX_SERVER: &str = "SANDBOX01.prod.outlook.com";
/// Exchange Online's advertised ceiling (reference §4.2).
pub(super) const MAX_MESSAGE: u64 = 157_286_400;
/// Default recipients-per-message limit (reference §4.1).
pub(super) const MAX_RECIPIENTS: usize = 500;

/// Exchange's throttling reply (reference §6): the rate limit, `SmtpOutage::Storm451` and
/// the `data-temp` script.
pub(super) const ACCESS_DENIED_LATER: &str = "451 4.7.500 Access denied, please try again later";
/// Instead of the greeting under `SmtpOutage::Greeting421`, and to idle sessions on shutdown.
pub(super) const SERVICE_NOT_AVAILABLE: &str =
    "421 4.3.2 Service not available, closing transmission channel";
/// End of DATA while `Sandbox::set_quota_exceeded(true)` (reference §6).
pub(super) const QUOTA_EXCEEDED: &str = "554 5.2.0 STOREDRV.Submission.Exception:\
    SubmissionQuotaExceededException; Failed to process message due to a permanent exception \
    with message [BeginDiagnosticData]Cannot submit message.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_reply_is_exchanges_text() {
        assert_eq!(
            QUOTA_EXCEEDED,
            "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed \
             to process message due to a permanent exception with message \
             [BeginDiagnosticData]Cannot submit message."
        );
    }
}
