//! The one place where what happened upstream becomes a verdict: delivered, retry, hold for
//! configuration, or fail (DESIGN §4, reference §6 "Reply-code handbook").

use crate::diagnose::{self, Endpoint};
use crate::token::TokenError;
use crate::wire::Reply;

/// Where in the dialog a reply arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Greeting,
    Ehlo,
    StartTls,
    Auth,
    MailFrom,
    RcptTo,
    Data,
    EndOfData,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Greeting => "greeting",
            Stage::Ehlo => "EHLO",
            Stage::StartTls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::MailFrom => "MAIL FROM",
            Stage::RcptTo => "RCPT TO",
            Stage::Data => "DATA",
            Stage::EndOfData => "end of DATA",
        }
    }
}

/// What went wrong talking to the upstream. Never carries a token or secret.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("upstream timed out during {}", stage.as_str())]
    Timeout { stage: Stage },
    #[error("connection to upstream failed during {}: {source}", stage.as_str())]
    Io {
        stage: Stage,
        source: std::io::Error,
    },
    #[error("upstream sent something that is not SMTP during {}: {detail}", stage.as_str())]
    Protocol { stage: Stage, detail: String },
    #[error("TLS with upstream failed: {0}")]
    Tls(String),
    #[error("upstream does not offer STARTTLS; the relay never sends credentials without TLS")]
    NoStartTls,
    #[error("upstream does not offer AUTH XOAUTH2 after STARTTLS (it offered: {offered})")]
    NoXoauth2 { offered: String },
    #[error("no access token: {0}")]
    Token(#[from] TokenError),
    #[error("upstream refused authentication{}: {reply}", if *after_refresh { " with a freshly fetched token" } else { "" })]
    Auth { reply: Reply, after_refresh: bool },
    /// As `Auth`, on the High Volume Email endpoint, whose permissions differ (`Mail.Send`
    /// and `Add-HVEAppAccess`, not `SMTP.SendAsApp`), so its advice does too.
    #[error("the High Volume Email endpoint refused authentication{}: {reply}", if *after_refresh { " with a freshly fetched token" } else { "" })]
    HveAuth { reply: Reply, after_refresh: bool },
    #[error("upstream refused at {}: {reply}", stage.as_str())]
    Rejected { stage: Stage, reply: Reply },
    #[error("cannot read the spooled message: {0}")]
    Body(std::io::Error),
}

/// What a failure means for the message and the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try again later; the message is fine.
    Transient,
    /// Exchange says the mailbox has too many sessions (`432 4.3.2`): retry soon, with fewer
    /// connections.
    Throttled,
    /// The mailbox's 10,000 recipients / 24 h quota is used up (`554 5.2.0
    /// …SubmissionQuotaExceeded`): defer until it frees, never bounce.
    Quota,
    /// This message will never be accepted as it is.
    Permanent,
    /// The relay's setup (credential, permissions, mailbox switches) is wrong: an operator
    /// must act. Retrying before that is pointless.
    Config,
}

impl Verdict {
    /// The verdict as a label in metrics and the audit trail.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Transient => "transient",
            Verdict::Throttled => "throttled",
            Verdict::Quota => "quota",
            Verdict::Permanent => "permanent",
            Verdict::Config => "config",
        }
    }
}

impl UpstreamError {
    pub fn verdict(&self) -> Verdict {
        match self {
            UpstreamError::Connect { .. }
            | UpstreamError::Timeout { .. }
            | UpstreamError::Io { .. }
            | UpstreamError::Protocol { .. }
            | UpstreamError::Body(_) => Verdict::Transient,
            UpstreamError::Tls(_) | UpstreamError::NoStartTls | UpstreamError::NoXoauth2 { .. } => {
                Verdict::Config
            }
            UpstreamError::Token(e) => {
                if e.is_config() {
                    Verdict::Config
                } else {
                    Verdict::Transient
                }
            }
            UpstreamError::Auth {
                reply,
                after_refresh,
            }
            | UpstreamError::HveAuth {
                reply,
                after_refresh,
            } => classify_auth(reply, *after_refresh),
            UpstreamError::Rejected { reply, .. } => classify_reply(reply),
        }
    }

    /// Whether the attempt got as far as a mail transaction (MAIL FROM was sent): only then
    /// can Exchange have counted a message against the mailbox's limits. A missing token, a
    /// failed connect, TLS, EHLO or AUTH never did.
    pub fn reached_mail_from(&self) -> bool {
        match self {
            UpstreamError::Connect { .. }
            | UpstreamError::Tls(_)
            | UpstreamError::NoStartTls
            | UpstreamError::NoXoauth2 { .. }
            | UpstreamError::Token(_)
            | UpstreamError::Auth { .. }
            | UpstreamError::HveAuth { .. } => false,
            UpstreamError::Timeout { stage }
            | UpstreamError::Io { stage, .. }
            | UpstreamError::Protocol { stage, .. }
            | UpstreamError::Rejected { stage, .. } => !matches!(
                stage,
                Stage::Greeting | Stage::Ehlo | Stage::StartTls | Stage::Auth
            ),
            UpstreamError::Body(_) => true,
        }
    }

    /// The upstream's reply, when the failure is one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            UpstreamError::Auth { reply, .. }
            | UpstreamError::HveAuth { reply, .. }
            | UpstreamError::Rejected { reply, .. } => Some(reply),
            _ => None,
        }
    }
}

impl UpstreamError {
    /// One or two sentences an admin can act on, for configuration-class failures, naming
    /// `mailbox` in the PowerShell commands.
    pub fn advice_for(&self, mailbox: &str) -> Option<String> {
        match self {
            UpstreamError::Token(e) => e.advice(),
            UpstreamError::NoStartTls => Some(diagnose::no_starttls().to_string()),
            UpstreamError::NoXoauth2 { .. } => Some(diagnose::no_xoauth2().to_string()),
            UpstreamError::Tls(_) => Some(diagnose::tls_unverified().to_string()),
            UpstreamError::Connect { addr, .. } => {
                Some(diagnose::upstream_unreachable(addr).to_string())
            }
            UpstreamError::Auth { reply, .. } | UpstreamError::Rejected { reply, .. } => {
                diagnose::smtp_reply(reply, mailbox, Endpoint::Standard).map(|a| a.to_string())
            }
            UpstreamError::HveAuth { reply, .. } => {
                diagnose::smtp_reply(reply, mailbox, Endpoint::Hve).map(|a| a.to_string())
            }
            _ => None,
        }
    }

    /// What a configuration hold says: the advice, or the error itself when there is none.
    pub fn hold_advice(&self, mailbox: &str) -> String {
        self.advice_for(mailbox).unwrap_or_else(|| self.to_string())
    }

    /// Why the recipients of a failed attempt were not delivered, for the log, the client's
    /// reply and the failure notice: the error, with advice when every recipient was refused
    /// in a way whose reply alone does not say what to do (see [`recipient_reason`]).
    pub fn reason(&self) -> String {
        match self {
            UpstreamError::Rejected {
                stage: Stage::RcptTo,
                reply,
            } => match diagnose::recipient_refused(reply) {
                Some(advice) => format!("{self} ({advice})"),
                None => self.to_string(),
            },
            _ => self.to_string(),
        }
    }
}

/// Why one recipient was refused at RCPT: Exchange's reply, plus plain advice when the reply
/// alone does not say what to do (`550 5.5.105`: High Volume Email sends only inside the
/// organisation).
pub fn recipient_reason(reply: &Reply) -> String {
    match diagnose::recipient_refused(reply) {
        Some(advice) => format!("{reply} ({advice})"),
        None => reply.to_string(),
    }
}

/// AUTH replies (reference §3.5, §3.6): `535 5.7.3` and HVE's `501 5.5.127` (token will
/// expire soon) are worth one fresh token, then configuration; `5.7.139` (SMTP AUTH switched
/// off, Conditional Access) and HVE's `501 5.5.124` (not an HVE account) are configuration at
/// once.
pub fn classify_auth(reply: &Reply, after_refresh: bool) -> Verdict {
    if reply.is_transient() && !reply.has_status("4.7.66") {
        return Verdict::Transient;
    }
    if worth_a_fresh_token(reply) && !after_refresh {
        return Verdict::Transient;
    }
    Verdict::Config
}

/// AUTH refusals a freshly fetched token may cure: a token Exchange no longer takes
/// (`535 5.7.3`), or one HVE finds too close to expiry (`501 5.5.127`).
pub fn worth_a_fresh_token(reply: &Reply) -> bool {
    reply.has_status("5.7.3") || reply.has_status("5.5.127")
}

/// Replies to MAIL, RCPT, DATA and the final dot (reference §6). Classified by enhanced
/// status code plus known text, not by the first digit alone.
pub fn classify_reply(reply: &Reply) -> Verdict {
    let status = reply.status().unwrap_or("");
    // 5xx that clears with time: the 10,000 recipients / 24 h submission quota.
    if reply.mentions("SubmissionQuotaExceeded") {
        return Verdict::Quota;
    }
    // Too many concurrent sessions for the mailbox.
    if status == "4.3.2"
        && (reply.code == 432 || reply.mentions("concurrent") || reply.mentions("thread limit"))
    {
        return Verdict::Throttled;
    }
    // 4xx that never clears by itself: TLS too old.
    if status == "4.7.66" {
        return Verdict::Config;
    }
    if reply.is_transient() {
        return Verdict::Transient;
    }
    match status {
        // Not authenticated (client bug), mailbox full, restricted sender, tenant/IP blocks.
        "5.7.57" | "5.2.2" | "5.1.8" | "5.7.705" | "5.7.708" | "5.7.750" | "5.7.139" => {
            Verdict::Config
        }
        _ if reply.is_permanent() => Verdict::Permanent,
        _ => Verdict::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_mail_transaction_reaches_exchanges_count() {
        let io = || std::io::Error::other("reset");
        let reply = |t: &str| Reply::parse(t.as_bytes()).unwrap().unwrap().0;
        let before = [
            UpstreamError::Connect {
                addr: "x:587".into(),
                source: io(),
            },
            UpstreamError::Token(TokenError::Timeout),
            UpstreamError::Tls("bad certificate".into()),
            UpstreamError::NoStartTls,
            UpstreamError::Auth {
                reply: reply("535 5.7.3 Authentication unsuccessful\r\n"),
                after_refresh: false,
            },
            UpstreamError::Timeout {
                stage: Stage::Greeting,
            },
            UpstreamError::Io {
                stage: Stage::Auth,
                source: io(),
            },
            UpstreamError::Rejected {
                stage: Stage::Ehlo,
                reply: reply("421 4.3.2 Service not available\r\n"),
            },
        ];
        for e in &before {
            assert!(!e.reached_mail_from(), "{e}");
        }
        let after = [
            UpstreamError::Rejected {
                stage: Stage::MailFrom,
                reply: reply("550 5.7.60 no SendAs\r\n"),
            },
            UpstreamError::Io {
                stage: Stage::Data,
                source: io(),
            },
            UpstreamError::Timeout {
                stage: Stage::EndOfData,
            },
            UpstreamError::Body(io()),
        ];
        for e in &after {
            assert!(e.reached_mail_from(), "{e}");
        }
    }

    #[test]
    fn handbook_rows() {
        let rows: &[(&str, Verdict)] = &[
            ("421 4.3.2 Service not available", Verdict::Transient),
            (
                "421 4.7.66 TLS 1.0 and 1.1 are not supported.",
                Verdict::Config,
            ),
            (
                "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
                Verdict::Permanent,
            ),
            (
                "432 4.3.2 Concurrent connections limit exceeded.",
                Verdict::Throttled,
            ),
            ("452 4.5.3 Too many recipients", Verdict::Transient),
            (
                "554 5.2.252 SendAsDenied; a not allowed to send as b",
                Verdict::Permanent,
            ),
            (
                "430 4.2.0 STOREDRV; mailbox logon failure;",
                Verdict::Transient,
            ),
            (
                "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
                Verdict::Quota,
            ),
            (
                "554 5.2.2 mailbox full; STOREDRV.Submission.Exception:QuotaExceededException",
                Verdict::Config,
            ),
            (
                "550 5.1.8 Access denied, bad outbound sender",
                Verdict::Config,
            ),
            (
                "550 5.7.708 Access denied, traffic not accepted from this IP",
                Verdict::Config,
            ),
            (
                "451 4.7.500 Access denied, please try again later",
                Verdict::Transient,
            ),
            (
                "552 5.3.4 Message size exceeds fixed maximum message size",
                Verdict::Permanent,
            ),
            (
                "554 5.6.0 Invalid message content, contains bare linefeeds",
                Verdict::Permanent,
            ),
            (
                "451 4.7.0 Timeout waiting for client input",
                Verdict::Transient,
            ),
            (
                "530 5.7.57 SMTP; Client was not authenticated",
                Verdict::Config,
            ),
            (
                "550 5.1.10 RESOLVER.ADR.RecipientNotFound",
                Verdict::Permanent,
            ),
            (
                "550 5.5.105 External sending is not supported for High Volume Email accounts",
                Verdict::Permanent,
            ),
        ];
        for (text, verdict) in rows {
            assert_eq!(classify_reply(&Reply::line(text)), *verdict, "{text}");
        }
    }

    #[test]
    fn auth_rows() {
        let bad_token = Reply::line("535 5.7.3 Authentication unsuccessful [host ts id]");
        assert_eq!(classify_auth(&bad_token, false), Verdict::Transient);
        assert_eq!(classify_auth(&bad_token, true), Verdict::Config);
        let disabled = Reply::line("535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox.");
        assert_eq!(classify_auth(&disabled, false), Verdict::Config);
        assert_eq!(
            classify_auth(
                &Reply::line("454 4.7.0 Temporary authentication failure"),
                false
            ),
            Verdict::Transient
        );
        assert_eq!(
            classify_auth(
                &Reply::line("504 5.7.4 Unrecognized authentication type"),
                false
            ),
            Verdict::Config
        );
        let soon = Reply::line("501 5.5.127 Invalid XOAUTH2 auth data - Token will expire soon");
        assert_eq!(classify_auth(&soon, false), Verdict::Transient);
        assert_eq!(classify_auth(&soon, true), Verdict::Config);
        let not_hve = Reply::line(
            "501 5.5.124 Invalid XOAUTH2 auth data - User address provided is not valid",
        );
        assert_eq!(classify_auth(&not_hve, false), Verdict::Config);
    }

    #[test]
    fn advice_names_the_permissions_of_the_endpoint_that_refused() {
        let refused = || Reply::line("535 5.7.3 Authentication unsuccessful");
        let standard = UpstreamError::Auth {
            reply: refused(),
            after_refresh: true,
        };
        let hve = UpstreamError::HveAuth {
            reply: refused(),
            after_refresh: true,
        };
        assert_eq!(hve.verdict(), Verdict::Config);
        assert!(!hve.reached_mail_from());
        let s = standard.hold_advice("relay@contoso.com");
        assert!(
            s.contains("SMTP.SendAsApp") && !s.contains("Mail.Send"),
            "{s}"
        );
        let h = hve.hold_advice("hve@contoso.com");
        assert!(
            h.contains("Mail.Send") && h.contains("Add-HVEAppAccess"),
            "{h}"
        );
        assert!(hve.to_string().contains("High Volume Email"), "{hve}");
        let soon = UpstreamError::HveAuth {
            reply: Reply::line("501 5.5.127 Invalid XOAUTH2 auth data - Token will expire soon"),
            after_refresh: true,
        };
        assert_eq!(soon.verdict(), Verdict::Config);
        assert!(soon.hold_advice("m").contains("10 minutes"), "{soon}");
    }

    #[test]
    fn an_external_recipient_on_hve_is_explained() {
        let external = Reply::line(
            "550 5.5.105 External sending is not supported for High Volume Email accounts",
        );
        let one = recipient_reason(&external);
        assert!(one.starts_with("550 5.5.105 External sending"), "{one}");
        assert!(one.contains("inside your organisation"), "{one}");
        assert!(one.contains("standard endpoint"), "{one}");
        let other = Reply::line("550 5.1.10 RESOLVER.ADR.RecipientNotFound");
        assert_eq!(recipient_reason(&other), other.to_string());
        let all = UpstreamError::Rejected {
            stage: Stage::RcptTo,
            reply: external.clone(),
        };
        assert_eq!(all.verdict(), Verdict::Permanent);
        assert!(
            all.reason().contains("inside your organisation"),
            "{}",
            all.reason()
        );
        let at_data = UpstreamError::Rejected {
            stage: Stage::EndOfData,
            reply: other,
        };
        assert_eq!(at_data.reason(), at_data.to_string());
    }
}
