//! What a credential gives: an [`AccessToken`], fetched by a [`TokenSource`] (one
//! implementation per credential kind). Caching is the cache's job, not the source's.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::error::TokenError;

/// A bearer token for Exchange Online and when it stops working.
///
/// Clones share the secret; [`is_same`](Self::is_same) tells whether two values came from the
/// same fetch (the cache uses it so that many connections failing with one stale token cause
/// one refetch).
#[derive(Clone)]
pub struct AccessToken {
    secret: Arc<SecretString>,
    expires_at: Instant,
    expires_in: u64,
}

impl AccessToken {
    /// A token that expires `expires_in` seconds from now (the `expires_in` of the response).
    pub fn new(token: SecretString, expires_in: u64) -> Self {
        Self::with_expiry(token, expires_in, Instant::now())
    }

    /// A token that expires `expires_in` seconds after `issued_at`.
    pub fn with_expiry(token: SecretString, expires_in: u64, issued_at: Instant) -> Self {
        AccessToken {
            secret: Arc::new(token),
            expires_at: issued_at + Duration::from_secs(expires_in),
            expires_in,
        }
    }

    /// The token itself. The single place it is revealed: the XOAUTH2 encoder.
    pub fn expose(&self) -> &str {
        self.secret.expose_secret()
    }

    /// True when both values come from the same fetch (not merely equal text).
    pub fn is_same(&self, other: &AccessToken) -> bool {
        Arc::ptr_eq(&self.secret, &other.secret)
    }

    /// When the token stops working.
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// The lifetime the endpoint granted, in seconds (`expires_in` of the response).
    pub fn expires_in(&self) -> u64 {
        self.expires_in
    }

    /// Time left before expiry (zero once expired).
    pub fn remaining(&self) -> Duration {
        self.remaining_at(Instant::now())
    }

    /// Time left at `now` (zero once expired).
    pub fn remaining_at(&self, now: Instant) -> Duration {
        self.expires_at.saturating_duration_since(now)
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AccessToken(<redacted>, expires in {}s)",
            self.remaining().as_secs()
        )
    }
}

/// The future a [`TokenSource`] returns.
pub type FetchFuture<'a> =
    Pin<Box<dyn Future<Output = Result<AccessToken, TokenError>> + Send + 'a>>;

/// One credential that can obtain access tokens (client secret, certificate, federation, ...).
/// It fetches; caching and single-flight are [`super::TokenCache`]'s job.
pub trait TokenSource: Send + Sync + 'static {
    /// Asks the token endpoint for a fresh token. Every call is one request.
    fn fetch(&self) -> FetchFuture<'_>;

    /// Says which credential this is, for logs and `check` output, without any secret,
    /// e.g. `client secret for app <client_id> in tenant <tenant>`.
    fn describe(&self) -> String;

    /// SIGHUP: reads the credential's files again (a rotated secret, certificate or key) and
    /// uses them from the next request on. The error names the file and what is wrong with
    /// it, never its content. Kinds with nothing to re-read keep the default.
    fn reload(&self) -> Result<Reloaded, String> {
        Ok(Reloaded::NothingToReload)
    }

    /// When the credential itself stops working (a certificate's `notAfter`), for kinds that
    /// have such a date: `check` and the log warn ahead of it, `/readyz` fails after it.
    fn not_after(&self) -> Option<std::time::SystemTime> {
        None
    }
}

/// What [`TokenSource::reload`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The files were read again and hold a new credential.
    Changed,
    /// The files were read again and hold the credential in use.
    Unchanged,
    /// This credential has no file to read again.
    NothingToReload,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn debug_is_redacted() {
        let t = AccessToken::new(SecretString::from("eyJ0eXAiOiJKV1Qi.secret.sig"), 3599);
        let shown = format!("{t:?}");
        assert_eq!(shown, "AccessToken(<redacted>, expires in 3599s)");
        assert!(!shown.contains("eyJ"));
        tokio::time::advance(Duration::from_secs(99)).await;
        assert_eq!(
            format!("{t:?}"),
            "AccessToken(<redacted>, expires in 3500s)"
        );
        assert_eq!(t.expose(), "eyJ0eXAiOiJKV1Qi.secret.sig");
        assert_eq!(t.expires_in(), 3599);
    }

    #[tokio::test(start_paused = true)]
    async fn is_same_means_same_fetch() {
        let a = AccessToken::new(SecretString::from("tok"), 60);
        let b = AccessToken::new(SecretString::from("tok"), 60);
        assert!(a.is_same(&a.clone()));
        assert!(!a.is_same(&b));
    }

    #[tokio::test(start_paused = true)]
    async fn remaining_saturates() {
        let t = AccessToken::new(SecretString::from("tok"), 10);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(t.remaining(), Duration::ZERO);
    }
}
