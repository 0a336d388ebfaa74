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

/// End of DATA when the mailbox may not send as the sender (reference §4.3, the Nov-2025
/// transcript); `user` is the authenticated mailbox, `from` the address refused.
pub(super) fn send_as_denied(user: &str, from: &str) -> String {
    format!(
        "554 5.2.252 SendAsDenied; {user} not allowed to send as {from}; \
         STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; \
         Failed to process message due to a permanent exception"
    )
}

/// High Volume Email, AUTH with a token too close to expiry (reference §3.6, exact text).
pub(super) const HVE_EXPIRES_SOON: &str =
    "501 5.5.127 Invalid XOAUTH2 auth data - Token will expire soon";
/// High Volume Email, AUTH as an address that is not an HVE account. The reference has only
/// a log excerpt cut after "Please ensure the auth d"; the rest here is our guess.
pub(super) const HVE_USER_INVALID: &str = "501 5.5.124 Invalid XOAUTH2 auth data - User address \
    provided is not valid. Please ensure the auth data is correct";
/// High Volume Email, RCPT outside the organisation. The code is from the reference's short
/// form (§8: "an external one gets `550 5.5.105`"); the text is the one reported in §4.7.
pub(super) const HVE_EXTERNAL_RECIPIENT: &str =
    "550 5.5.105 External sending is not supported for High Volume Email accounts";

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
