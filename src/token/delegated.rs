//! Delegated credential (reference §1.6): a user signed in once with `smtp-oauth-relay login`,
//! which stored a refresh token; every access token comes from the refresh token grant
//! (`grant_type=refresh_token`, `client_id`, `refresh_token`, `scope`; a public client sends
//! no secret).
//!
//! Entra rotates the refresh token: every response holds a new one, which replaces the old
//! one. The new token is written to the file (atomically and durably, `refresh_file.rs`)
//! *before* the access token is handed out, so a crash never leaves the relay with only a
//! token it has already spent. Refreshes run one at a time for the same reason. The file is
//! read at start and the in-memory copy kept; SIGHUP ([`TokenSource::reload`]) reads it again
//! after a new `login`. While no one has signed in, every fetch looks at the file again, so
//! the first `login` is picked up without a signal.
//!
//! The refresh token is scrubbed from anything the endpoint says back (it is the secret passed
//! to `post_form`), and never appears in `Debug`, a log or an error. Errors that mean "a human
//! must sign in again" (AADSTS700082, 50173, 70043, 50076, 65001, and any other `invalid_grant`
//! or `interaction_required`) carry that advice.

use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use super::endpoint::TokenEndpoint;
use super::error::TokenError;
use super::refresh_file::{self, Stored};
use super::source::{AccessToken, FetchFuture, Reloaded, TokenSource};
use crate::sync::Lock as _;
use crate::tls::TlsSetupError;

/// Gets tokens with the refresh token grant and keeps the rotating refresh token on disk.
pub struct DelegatedSource {
    endpoint: TokenEndpoint,
    client_id: String,
    scope: String,
    file: PathBuf,
    /// The refresh token in use; `None` until someone has signed in.
    current: std::sync::Mutex<Option<SecretString>>,
    /// One refresh at a time: each one spends the token the next one needs.
    refreshing: tokio::sync::Mutex<()>,
    /// The last rotated token could not be written: the file holds a spent one.
    unsaved: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for DelegatedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DelegatedSource")
            .field("token_url", &self.endpoint.token_url())
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .field("refresh_token_file", &self.file)
            .field("refresh_token", &"<redacted>")
            .finish()
    }
}

impl DelegatedSource {
    /// Builds the HTTPS client and reads the refresh token file. A missing or empty file is
    /// not an error here (every fetch then says to run `login`); an unreadable one is.
    pub fn new(settings: &super::SourceSettings, file: &Path) -> Result<Self, BuildFailure> {
        let endpoint =
            TokenEndpoint::new(&settings.token_url, &settings.extra_roots, settings.timeout)
                .map_err(BuildFailure::Tls)?;
        let current = match refresh_file::read(file).map_err(BuildFailure::File)? {
            Stored::Token(t) => Some(t),
            Stored::Missing => None,
        };
        Ok(DelegatedSource {
            endpoint,
            client_id: settings.client_id.clone(),
            scope: settings.scope.clone(),
            file: file.to_path_buf(),
            current: std::sync::Mutex::new(current),
            refreshing: tokio::sync::Mutex::new(()),
            unsaved: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The refresh token to use: the one in memory, or else whatever the file holds now.
    fn refresh_token(&self) -> Result<SecretString, TokenError> {
        if let Some(t) = self.current.locked().clone() {
            return Ok(t);
        }
        match refresh_file::read(&self.file).map_err(TokenError::Credential)? {
            Stored::Token(t) => {
                *self.current.locked() = Some(t.clone());
                Ok(t)
            }
            Stored::Missing => Err(TokenError::Credential(
                crate::diagnose::not_signed_in(&self.file.display().to_string()).to_string(),
            )),
        }
    }

    /// The token the file holds now, when it differs from `used`: someone ran `login` (or
    /// another process rotated it) since this source read it.
    fn newer_in_file(&self, used: &SecretString) -> Option<SecretString> {
        if self.unsaved.load(std::sync::atomic::Ordering::SeqCst) {
            // The file still holds a token we spent (the last write failed): not newer.
            return None;
        }
        match refresh_file::read(&self.file) {
            Ok(Stored::Token(t)) if t.expose_secret() != used.expose_secret() => Some(t),
            _ => None,
        }
    }

    async fn fetch_once(&self) -> Result<AccessToken, TokenError> {
        let _one_at_a_time = self.refreshing.lock().await;
        let mut used = self.refresh_token()?;
        let mut retried = false;
        let grant = loop {
            let form = [
                ("client_id", self.client_id.as_str()),
                ("grant_type", "refresh_token"),
                ("refresh_token", used.expose_secret()),
                ("scope", self.scope.as_str()),
            ];
            match self
                .endpoint
                .post_form(&form, used.expose_secret(), &self.describe())
                .await
            {
                Ok(grant) => break grant,
                // Refused, but the file holds another token (a new `login`, or `check` run
                // beside the relay rotated it): use that one, once.
                Err(e) if !retried && e.is_config() => match self.newer_in_file(&used) {
                    Some(newer) => {
                        tracing::info!(file = %self.file.display(), "the stored refresh token was refused; the file holds a newer one, trying it");
                        *self.current.locked() = Some(newer.clone());
                        used = newer;
                        retried = true;
                    }
                    None => return Err(explain(e, &self.file)),
                },
                Err(e) => return Err(explain(e, &self.file)),
            }
        };
        if let Some(rotated) = &grant.refresh_token {
            // A `login` that wrote the file meanwhile wins: its token is the one to keep,
            // and ours (of the older sign-in) is dropped rather than written over it.
            if let Some(newer) = self.newer_in_file(&used) {
                tracing::info!(file = %self.file.display(), "a new sign-in was stored meanwhile; keeping it");
                *self.current.locked() = Some(newer);
                return Ok(grant.access());
            }
            // Stored before the access token is used: the old refresh token is spent.
            let file = self.file.clone();
            let token = rotated.clone();
            let stored =
                tokio::task::spawn_blocking(move || refresh_file::store(&file, &token, false))
                    .await
                    .unwrap_or_else(|e| Err(format!("the write task failed: {e}")));
            {
                let mut current = self.current.locked();
                // A SIGHUP that read a new login meanwhile wins over our rotation.
                let unchanged = current
                    .as_ref()
                    .is_none_or(|c| c.expose_secret() == used.expose_secret());
                if unchanged {
                    *current = Some(rotated.clone());
                }
            }
            self.unsaved
                .store(stored.is_err(), std::sync::atomic::Ordering::SeqCst);
            if let Err(why) = stored {
                tracing::warn!(file = %self.file.display(), error = %why, "cannot store the rotated refresh token");
                return Err(TokenError::Credential(format!(
                    "cannot store the rotated refresh token: {why} (the relay keeps it in memory \
                     and writes it again on the next refresh)"
                )));
            }
        }
        Ok(grant.access())
    }
}

/// Why a [`DelegatedSource`] could not be built.
#[derive(Debug)]
pub enum BuildFailure {
    Tls(TlsSetupError),
    /// The refresh token file exists but cannot be read (names it, never the content).
    File(String),
}

/// Gives a refused refresh the advice to sign in again when the endpoint's code is not one
/// `diagnose::aadsts` already explains that way (any `invalid_grant` or
/// `interaction_required` means a human must sign in again, reference §1.6). Pure.
pub fn explain(error: TokenError, file: &Path) -> TokenError {
    let needs_sign_in = matches!(
        error.oauth_error(),
        Some("invalid_grant" | "interaction_required")
    );
    if !needs_sign_in || error.advice().is_some() {
        return error;
    }
    let advice = crate::diagnose::sign_in_again(&file.display().to_string());
    TokenError::Credential(format!("{error}. {advice}"))
}

impl TokenSource for DelegatedSource {
    fn fetch(&self) -> FetchFuture<'_> {
        Box::pin(self.fetch_once())
    }

    fn describe(&self) -> String {
        format!(
            "delegated sign-in (refresh token in {}) for app {} {}",
            self.file.display(),
            self.client_id,
            self.endpoint.place()
        )
    }

    fn reload(&self) -> Result<Reloaded, String> {
        if self.unsaved.load(std::sync::atomic::Ordering::SeqCst) {
            // The file holds a spent token: write the one in memory before reading anything.
            let current = self.current.locked().clone();
            if let Some(token) = current {
                refresh_file::store(&self.file, &token, false).map_err(|why| {
                    format!(
                        "the rotated refresh token is still not written ({why}); the relay keeps \
                         it in memory"
                    )
                })?;
                self.unsaved
                    .store(false, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let stored = refresh_file::read(&self.file)?;
        let Stored::Token(token) = stored else {
            return Err(format!(
                "{} holds no refresh token: run `smtp-oauth-relay login` first",
                self.file.display()
            ));
        };
        let mut current = self.current.locked();
        let changed = current
            .as_ref()
            .is_none_or(|c| c.expose_secret() != token.expose_secret());
        *current = Some(token);
        Ok(if changed {
            Reloaded::Changed
        } else {
            Reloaded::Unchanged
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(error: &str, code: u32) -> TokenError {
        TokenError::Rejected {
            status: 400,
            error: error.into(),
            codes: vec![code],
            description: format!("AADSTS{code}: something"),
            trace_id: Some("t-1".into()),
            correlation_id: None,
            retry_after: None,
        }
    }

    #[test]
    fn known_sign_in_codes_keep_their_code_and_say_login() {
        for code in [700082, 70008, 50173, 70043, 50076, 65001] {
            let e = explain(rejected("invalid_grant", code), Path::new("/x/rt"));
            assert_eq!(e.aadsts(), Some(code), "{e:?}");
            let advice = e.advice().expect("advice");
            assert!(
                advice.contains("smtp-oauth-relay login"),
                "{code}: {advice}"
            );
            assert!(e.is_config());
        }
    }

    #[test]
    fn other_invalid_grants_say_sign_in_again_and_name_the_file() {
        let e = explain(rejected("invalid_grant", 9002313), Path::new("/x/rt"));
        assert!(matches!(e, TokenError::Credential(_)), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("smtp-oauth-relay login"), "{text}");
        assert!(text.contains("/x/rt"), "{text}");
        assert!(
            text.contains("AADSTS9002313"),
            "the original error is kept: {text}"
        );
        assert!(e.is_config());
        let e = explain(rejected("interaction_required", 1), Path::new("/x/rt"));
        assert!(e.to_string().contains("login"), "{e}");
    }

    #[test]
    fn unrelated_errors_pass_through() {
        let e = explain(rejected("invalid_client", 7000215), Path::new("/x/rt"));
        assert_eq!(e, rejected("invalid_client", 7000215));
        assert_eq!(
            explain(TokenError::Timeout, Path::new("/x")),
            TokenError::Timeout
        );
    }

    fn settings(dir: &Path) -> super::super::SourceSettings {
        super::super::SourceSettings {
            token_url: "https://127.0.0.1:9/tenant-1/oauth2/v2.0/token".into(),
            client_id: "app-1".into(),
            scope: "https://outlook.office.com/SMTP.Send offline_access".into(),
            extra_roots: Vec::new(),
            timeout: std::time::Duration::from_secs(1),
            credential: super::super::Credential::Delegated {
                refresh_token_file: dir.join("rt"),
            },
        }
    }

    #[tokio::test]
    async fn no_login_yet_says_run_login_and_a_later_login_is_picked_up_by_reload() {
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rt");
        let source = DelegatedSource::new(&settings(dir.path()), &file).unwrap();
        let e = source.fetch().await.unwrap_err();
        assert!(matches!(e, TokenError::Credential(_)), "{e:?}");
        assert!(e.to_string().contains("smtp-oauth-relay login"), "{e}");
        assert!(e.to_string().contains(&file.display().to_string()), "{e}");
        assert!(source.reload().unwrap_err().contains("login"));

        std::fs::write(&file, "0.AXoA-refresh-secret\n").unwrap();
        assert_eq!(source.reload(), Ok(Reloaded::Changed));
        assert_eq!(source.reload(), Ok(Reloaded::Unchanged));
        let shown = format!("{source:?} {}", source.describe());
        assert!(!shown.contains("refresh-secret"), "{shown}");
        assert!(shown.contains("rt"), "{shown}");
    }
}
