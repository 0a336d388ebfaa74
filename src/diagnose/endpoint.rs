//! Which Exchange Online submission service an account sends through, and what that changes
//! in the advice: the application permission a token must carry, and the replies only High
//! Volume Email gives (reference §3.6, §4.7, §8 "Update, December 2026").
//!
//! Why the noun lives here and not in `upstream`, which talks to the endpoint: advice depends
//! on it, and this room is a leaf the upstream uses, so the type sits in the lower room and
//! `upstream` re-exports it (STYLE principle 9). Pure, like the rest of `diagnose`.

use super::Advice;
use crate::wire::Reply;

/// The Exchange Online service an account submits to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Endpoint {
    /// SMTP AUTH client submission, `smtp.office365.com:587`. App-only tokens need the
    /// application permission `SMTP.SendAsApp`, and the app needs rights on the mailbox.
    #[default]
    Standard,
    /// High Volume Email, `smtp-hve.office365.com:587`: internal recipients only. App-only
    /// tokens need the application permission `Mail.Send`, the app must be on the HVE
    /// account's allowed apps (`Add-HVEAppAccess`), and a token needs at least 10 minutes of
    /// life left when it is used at AUTH.
    Hve,
}

/// HVE refuses a token with less than this left at AUTH (`501 5.5.127`, reference §3.6).
pub const HVE_MIN_TOKEN_MINUTES: u64 = 10;

impl Endpoint {
    /// The configuration spelling: `standard` or `hve`.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Standard => "standard",
            Endpoint::Hve => "hve",
        }
    }

    /// The application permission (a `roles` value of the token) this endpoint checks.
    pub fn role(self) -> &'static str {
        match self {
            Endpoint::Standard => "SMTP.SendAsApp",
            Endpoint::Hve => "Mail.Send",
        }
    }

    /// What an admin grants so that the app may send as `mailbox` through this endpoint.
    pub fn permissions_fix(self, mailbox: &str) -> String {
        match self {
            Endpoint::Standard => format!(
                "Check: the app has Office 365 Exchange Online > Application permission \
                 SMTP.SendAsApp with admin consent; `New-ServicePrincipal -AppId <client id> \
                 -ObjectId <Enterprise application object id>` was run; `Add-MailboxPermission \
                 -Identity {mailbox} -User <client id> -AccessRights FullAccess` was granted \
                 (allow up to an hour)."
            ),
            Endpoint::Hve => format!(
                "For High Volume Email check: the app has Office 365 Exchange Online > \
                 Application permission Mail.Send with admin consent (HVE does not use \
                 SMTP.SendAsApp); the app is on the HVE account's allowed apps: \
                 `Add-HVEAppAccess -Identity {mailbox} -AppIds <client id>` (at most 10 apps \
                 per HVE account; changes take up to 5 minutes)."
            ),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Exchange refused the token at AUTH (`535 5.7.3`, which gives no finer reason): the
/// permissions this endpoint checks.
pub(super) fn token_refused(endpoint: Endpoint, mailbox: &str) -> Advice {
    match endpoint {
        Endpoint::Standard => Advice::new(
            "smtp-535-5.7.3",
            "Exchange refused the token (535 5.7.3); it gives no finer reason.",
            endpoint.permissions_fix(mailbox),
        ),
        Endpoint::Hve => Advice::new(
            "smtp-535-5.7.3-hve",
            "The High Volume Email endpoint refused the token (535 5.7.3); it gives no finer \
             reason.",
            endpoint.permissions_fix(mailbox),
        ),
    }
}

/// The token's `roles` lack the permission `endpoint` checks. `None` when the role is there.
pub(super) fn missing_role(roles: &[String], endpoint: Endpoint) -> Option<Advice> {
    let role = endpoint.role();
    if roles.iter().any(|r| r == role) {
        return None;
    }
    let other = match endpoint {
        Endpoint::Standard => Endpoint::Hve,
        Endpoint::Hve => Endpoint::Standard,
    };
    let problem = if roles.iter().any(|r| r == other.role()) {
        format!(
            "The token carries {} but not {role}: on the {} endpoint {} does not authorize \
             SMTP AUTH.",
            other.role(),
            endpoint.as_str(),
            other.role()
        )
    } else {
        format!(
            "The token has no {role} role (roles: {}).",
            if roles.is_empty() {
                "none".into()
            } else {
                roles.join(", ")
            }
        )
    };
    let fix = match endpoint {
        Endpoint::Standard => {
            "In App registrations > your app > API permissions add Office 365 Exchange Online > \
             Application permissions > SMTP.SendAsApp and grant admin consent (not SMTP.Send, \
             which is delegated). If you use Exchange RBAC for Applications instead, no role is \
             expected."
        }
        Endpoint::Hve => {
            "In App registrations > your app > API permissions add Office 365 Exchange Online > \
             Application permissions > Mail.Send and grant admin consent, and put the app on \
             the HVE account's allowed apps with `Add-HVEAppAccess -Identity <HVE account> \
             -AppIds <client id>`."
        }
    };
    Some(Advice::new("token-missing-role", problem, fix))
}

/// Replies only the High Volume Email endpoint gives (reference §3.6, §4.7). They name HVE by
/// their codes, so they need no endpoint. `mailbox` is the XOAUTH2 user.
pub(super) fn hve_reply(reply: &Reply, mailbox: &str) -> Option<Advice> {
    let status = reply.status().unwrap_or("");
    let a = match status {
        "5.5.127" => Advice::new(
            "hve-token-expires-soon",
            format!(
                "The High Volume Email endpoint wants at least {HVE_MIN_TOKEN_MINUTES} minutes \
                 of token life left at AUTH (501 5.5.127 Token will expire soon), and even a \
                 freshly fetched token had less."
            ),
            format!(
                "Entra's app-only tokens live 60-90 minutes, so check this machine's clock (NTP) \
                 and that the token endpoint is Entra's; keep account.refresh_margin_secs at \
                 least {} seconds.",
                HVE_MIN_TOKEN_MINUTES * 60 + 60
            ),
        ),
        "5.5.124" => Advice::new(
            "hve-user-invalid",
            format!(
                "The High Volume Email endpoint does not accept {mailbox} as the sending account \
                 (501 5.5.124 User address provided is not valid)."
            ),
            "Set account.mailbox to the HVE account's primary address (an HVE account is a \
             mail user created under Exchange admin center > Mail flow > High volume email), \
             not a regular mailbox.",
        ),
        "5.5.105" => external_recipient(),
        _ => return None,
    };
    Some(a)
}

/// `550 5.5.105` to a recipient: HVE does not send outside the organisation.
fn external_recipient() -> Advice {
    Advice::new(
        "hve-external-recipient",
        // Short: it is quoted after Exchange's reply in a client's one-line reply.
        "High Volume Email sends only inside your organisation (accepted domains).",
        "Send external mail through an account on the standard endpoint.",
    )
}

/// Advice for a reply refusing one recipient, when the reply alone does not say what to do.
pub fn recipient_refused(reply: &Reply) -> Option<Advice> {
    (reply.status() == Some("5.5.105")).then(external_recipient)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_endpoint_names_its_own_permission() {
        let standard = token_refused(Endpoint::Standard, "relay@contoso.com").to_string();
        assert!(standard.contains("SMTP.SendAsApp"), "{standard}");
        assert!(standard.contains("Add-MailboxPermission -Identity relay@contoso.com"));
        assert!(!standard.contains("Mail.Send"), "{standard}");
        assert!(!standard.contains("HVE"), "{standard}");
        let hve = token_refused(Endpoint::Hve, "hve@contoso.com").to_string();
        assert!(hve.contains("Mail.Send"), "{hve}");
        assert!(
            hve.contains("Add-HVEAppAccess -Identity hve@contoso.com"),
            "{hve}"
        );
        assert!(!hve.contains("Add-MailboxPermission"), "{hve}");
        assert_eq!(Endpoint::default(), Endpoint::Standard);
        assert_eq!(Endpoint::Hve.to_string(), "hve");
    }

    #[test]
    fn the_role_each_endpoint_expects() {
        let roles = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(missing_role(&roles(&["SMTP.SendAsApp"]), Endpoint::Standard).is_none());
        assert!(missing_role(&roles(&["Mail.Send"]), Endpoint::Hve).is_none());
        let a = missing_role(&roles(&["SMTP.SendAsApp"]), Endpoint::Hve).unwrap();
        assert!(a.problem.contains("not Mail.Send"), "{a}");
        assert!(a.fix.contains("Add-HVEAppAccess"), "{a}");
        let a = missing_role(&roles(&["Mail.Send"]), Endpoint::Standard).unwrap();
        assert!(a.problem.contains("not SMTP.SendAsApp"), "{a}");
        assert!(!a.fix.contains("HVE"), "{a}");
        let a = missing_role(&[], Endpoint::Hve).unwrap();
        assert!(a.problem.contains("no Mail.Send role (roles: none)"), "{a}");
    }

    #[test]
    fn hve_only_replies() {
        let rows: &[(&str, &str, &str)] = &[
            (
                "501 5.5.127 Invalid XOAUTH2 auth data - Token will expire soon",
                "hve-token-expires-soon",
                "10 minutes",
            ),
            (
                "501 5.5.124 Invalid XOAUTH2 auth data - User address provided is not valid",
                "hve-user-invalid",
                "hve@contoso.com",
            ),
            (
                "550 5.5.105 External sending is not supported for High Volume Email accounts",
                "hve-external-recipient",
                "inside your organisation",
            ),
        ];
        for (text, rule, says) in rows {
            let a = hve_reply(&Reply::line(text), "hve@contoso.com").expect(text);
            assert_eq!(a.rule, *rule);
            assert!(a.to_string().contains(says), "{a}");
        }
        assert!(hve_reply(&Reply::line("535 5.7.3 nope"), "m").is_none());
        let external = Reply::line("550 5.5.105 External sending is not supported");
        assert!(recipient_refused(&external)
            .unwrap()
            .fix
            .contains("standard endpoint"));
        assert!(recipient_refused(&Reply::line("550 5.1.10 RecipientNotFound")).is_none());
    }
}
