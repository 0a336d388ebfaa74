//! Tokens the sandbox issued: what the token endpoint remembers about each one and what the
//! SMTP server checks at `AUTH XOAUTH2` (audience, role, validity, revocation).
//!
//! Why a module of its own: it is the noun the two servers exchange (the token endpoint
//! inserts, SMTP looks up, `Sandbox::revoke_tokens` clears), and the shared state holds the
//! registry, so it sits below all three and imports none of them. Tokens are JWT-shaped but
//! unsigned (see `token::entra`), so the registry, not a signature, is what makes a token
//! genuine. Token strings are never logged.

use std::collections::HashMap;
use std::sync::Mutex;

use super::clock::unix_now;
use crate::sync::Lock as _;

/// Audiences Exchange accepts for SMTP AUTH (reference §1.2, §1.10).
pub(crate) const EXCHANGE_AUDIENCES: [&str; 2] = [
    "https://outlook.office365.com",
    "https://outlook.office.com",
];
/// The audience of a Graph token: issued, but SMTP AUTH refuses it.
pub(crate) const GRAPH_AUDIENCE: &str = "https://graph.microsoft.com";
/// The application permission an app-only SMTP token must carry.
pub(crate) const SMTP_ROLE: &str = "SMTP.SendAsApp";
/// The application permission High Volume Email checks instead (reference §8).
pub(crate) const HVE_ROLE: &str = "Mail.Send";
/// High Volume Email refuses a token with less life than this left (reference §3.6).
pub(crate) const HVE_MIN_LIFE_SECS: u64 = 600;

/// Beyond this many remembered tokens, expired ones are forgotten.
const PRUNE_ABOVE: usize = 10_000;

/// What the sandbox remembers about a token it issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IssuedToken {
    pub aud: String,
    pub roles: Vec<String>,
    pub nbf: u64,
    pub exp: u64,
    /// Delegated tokens only: the signed-in user (`upn`) and the scopes (`scp`).
    pub upn: Option<String>,
    pub scp: Option<String>,
}

impl IssuedToken {
    /// Would Exchange accept this token for app-only SMTP AUTH at `now` (Unix seconds), on an
    /// endpoint that checks `role` ([`SMTP_ROLE`], or [`HVE_ROLE`] for High Volume Email)?
    pub(crate) fn valid_for_smtp(&self, now: u64, role: &str) -> bool {
        self.nbf <= now
            && now < self.exp
            && EXCHANGE_AUDIENCES.contains(&self.aud.as_str())
            && self.roles.iter().any(|r| r == role)
    }

    /// Whether High Volume Email finds the token too close to expiry at `now`.
    pub(crate) fn expires_soon_for_hve(&self, now: u64) -> bool {
        self.exp.saturating_sub(now) < HVE_MIN_LIFE_SECS
    }

    /// Would Exchange accept this token for XOAUTH2 `user=` at `now`? App-only tokens as
    /// [`valid_for_smtp`](Self::valid_for_smtp); a delegated token (reference §1.10) needs an
    /// Exchange audience, `SMTP.Send` in `scp`, and `user` to be its `upn` or a mailbox the
    /// user has FullAccess to (`full_access`: (user, mailbox) pairs).
    /// `role` is the application permission app-only tokens must carry on this endpoint.
    pub(crate) fn accepts(
        &self,
        user: &str,
        now: u64,
        role: &str,
        full_access: &[(String, String)],
    ) -> bool {
        let Some(upn) = &self.upn else {
            return self.valid_for_smtp(now, role);
        };
        let scoped = self
            .scp
            .as_deref()
            .is_some_and(|s| s.split_whitespace().any(|p| p == "SMTP.Send"));
        let may_send_as = upn.eq_ignore_ascii_case(user)
            || full_access
                .iter()
                .any(|(u, m)| u.eq_ignore_ascii_case(upn) && m.eq_ignore_ascii_case(user));
        self.nbf <= now
            && now < self.exp
            && EXCHANGE_AUDIENCES.contains(&self.aud.as_str())
            && scoped
            && may_send_as
    }
}

/// Tokens issued and not revoked, by token string.
#[derive(Default)]
pub(crate) struct Registry {
    tokens: Mutex<HashMap<String, IssuedToken>>,
}

impl Registry {
    pub(crate) fn insert(&self, token: String, issued: IssuedToken) {
        let mut map = self.tokens.locked();
        if map.len() >= PRUNE_ABOVE {
            let now = unix_now();
            map.retain(|_, t| t.exp > now);
        }
        map.insert(token, issued);
    }

    pub(crate) fn lookup(&self, token: &str) -> Option<IssuedToken> {
        let map = self.tokens.locked();
        map.get(token).cloned()
    }

    pub(crate) fn revoke_all(&self) {
        self.tokens.locked().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_validity_for_smtp() {
        let t = IssuedToken {
            aud: "https://outlook.office365.com".into(),
            roles: vec![SMTP_ROLE.into()],
            nbf: 100,
            exp: 200,
            upn: None,
            scp: None,
        };
        assert!(t.valid_for_smtp(150, SMTP_ROLE));
        assert!(
            t.accepts("anyone@x", 150, SMTP_ROLE, &[]),
            "app-only: any mailbox"
        );
        assert!(!t.valid_for_smtp(99, SMTP_ROLE));
        assert!(!t.valid_for_smtp(200, SMTP_ROLE));
        assert!(!t.valid_for_smtp(150, HVE_ROLE), "HVE wants Mail.Send");
        let graph = IssuedToken {
            aud: GRAPH_AUDIENCE.into(),
            roles: vec!["Mail.Send".into()],
            ..t.clone()
        };
        assert!(!graph.valid_for_smtp(150, SMTP_ROLE));
        assert!(!graph.valid_for_smtp(150, HVE_ROLE), "Graph audience");
        let mail_send = IssuedToken {
            roles: vec![HVE_ROLE.into()],
            ..t.clone()
        };
        assert!(mail_send.valid_for_smtp(150, HVE_ROLE));
        assert!(!mail_send.valid_for_smtp(150, SMTP_ROLE));
        let no_role = IssuedToken { roles: vec![], ..t };
        assert!(!no_role.valid_for_smtp(150, SMTP_ROLE));
    }

    #[test]
    fn hve_wants_ten_minutes_left() {
        let t = IssuedToken {
            aud: "https://outlook.office365.com".into(),
            roles: vec![HVE_ROLE.into()],
            nbf: 0,
            exp: 10_000,
            upn: None,
            scp: None,
        };
        assert!(!t.expires_soon_for_hve(10_000 - 600));
        assert!(t.expires_soon_for_hve(10_000 - 599));
        assert!(t.expires_soon_for_hve(20_000));
    }

    #[test]
    fn delegated_tokens_send_as_their_user_or_a_full_access_mailbox() {
        let t = IssuedToken {
            aud: "https://outlook.office.com".into(),
            roles: vec![],
            nbf: 100,
            exp: 200,
            upn: Some("alice@x".into()),
            scp: Some("SMTP.Send".into()),
        };
        assert!(t.accepts("Alice@X", 150, SMTP_ROLE, &[]));
        assert!(!t.accepts("shared@x", 150, SMTP_ROLE, &[]));
        let grants = [("alice@x".to_string(), "shared@x".to_string())];
        assert!(t.accepts("shared@x", 150, SMTP_ROLE, &grants));
        assert!(!t.accepts("other@x", 150, SMTP_ROLE, &grants));
        assert!(!t.accepts("alice@x", 200, SMTP_ROLE, &[]), "expired");
        let no_scope = IssuedToken {
            scp: Some("Mail.Read".into()),
            ..t.clone()
        };
        assert!(!no_scope.accepts("alice@x", 150, SMTP_ROLE, &[]));
        let graph = IssuedToken {
            aud: GRAPH_AUDIENCE.into(),
            ..t
        };
        assert!(!graph.accepts("alice@x", 150, SMTP_ROLE, &[]));
    }
}
