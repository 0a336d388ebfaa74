//! Client credentials grant with a shared secret (reference §1.2): `client_id`,
//! `client_secret`, `scope`, `grant_type=client_credentials`, posted to the token endpoint.
//!
//! The secret is scrubbed from anything the endpoint says back (`endpoint.rs`). SIGHUP reads
//! a secret file again ([`ClientSecretSource::reload`]): a rotated secret is used from the next
//! request on, without a restart.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use secrecy::{ExposeSecret, SecretString};

use super::endpoint::TokenEndpoint;
use super::error::TokenError;
use super::source::AccessToken;
use super::source::{FetchFuture, Reloaded, TokenSource};
use crate::sync::RwLock as _;
use crate::tls::TlsSetupError;

/// Everything a [`ClientSecretSource`] needs. `Debug` shows no secret and no certificate bytes.
#[derive(Clone)]
pub struct ClientSecretSettings {
    /// Full token URL, see [`super::token_url`].
    pub token_url: String,
    /// Application (client) ID.
    pub client_id: String,
    /// The secret **value** (not the secret ID).
    pub client_secret: SecretString,
    /// Normally `https://outlook.office365.com/.default`.
    pub scope: String,
    /// Extra trusted CAs (corporate TLS proxy, sandbox).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Overall time limit for one token request (connect, TLS, request, response).
    /// Zero means [`super::endpoint::DEFAULT_TIMEOUT`].
    pub timeout: Duration,
}

impl fmt::Debug for ClientSecretSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSecretSettings")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("scope", &self.scope)
            .field("extra_roots", &self.extra_roots.len())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Gets tokens with the client credentials grant and a client secret.
pub struct ClientSecretSource {
    endpoint: TokenEndpoint,
    client_id: String,
    /// Replaced on SIGHUP when the secret file was rotated ([`Self::replace_secret`]).
    client_secret: std::sync::RwLock<SecretString>,
    /// The file the secret came from, if any: [`TokenSource::reload`] reads it again.
    secret_file: Option<PathBuf>,
    scope: String,
}

impl fmt::Debug for ClientSecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSecretSource")
            .field("token_url", &self.endpoint.token_url())
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl ClientSecretSource {
    /// Builds the HTTPS client. Fails only if the TLS configuration cannot be built; a malformed
    /// token URL is reported by every [`fetch`](TokenSource::fetch) as
    /// [`super::TokenError::InvalidUrl`] (a configuration error).
    pub fn new(settings: ClientSecretSettings) -> Result<Self, TlsSetupError> {
        let endpoint =
            TokenEndpoint::new(&settings.token_url, &settings.extra_roots, settings.timeout)?;
        Ok(ClientSecretSource {
            endpoint,
            client_id: settings.client_id,
            client_secret: std::sync::RwLock::new(settings.client_secret),
            secret_file: None,
            scope: settings.scope,
        })
    }

    /// The same source, whose [`reload`](TokenSource::reload) reads `file` again.
    pub fn with_secret_file(mut self, file: Option<PathBuf>) -> Self {
        self.secret_file = file;
        self
    }

    /// The token URL this source posts to.
    pub fn token_url(&self) -> &str {
        self.endpoint.token_url()
    }

    /// Uses `secret` for every request from now on (a rotated secret). Returns whether it
    /// differs from the one in use.
    pub fn replace_secret(&self, secret: SecretString) -> bool {
        let mut current = self.client_secret.write_now();
        let changed = current.expose_secret() != secret.expose_secret();
        *current = secret;
        changed
    }

    fn secret(&self) -> SecretString {
        self.client_secret.read_now().clone()
    }

    async fn fetch_once(&self) -> Result<AccessToken, TokenError> {
        let secret = self.secret();
        let form = [
            ("client_id", self.client_id.as_str()),
            ("client_secret", secret.expose_secret()),
            ("scope", self.scope.as_str()),
            ("grant_type", "client_credentials"),
        ];
        let grant = self
            .endpoint
            .post_form(&form, secret.expose_secret(), &self.describe())
            .await?;
        Ok(grant.access())
    }
}

impl TokenSource for ClientSecretSource {
    fn fetch(&self) -> FetchFuture<'_> {
        Box::pin(self.fetch_once())
    }

    fn describe(&self) -> String {
        format!(
            "client secret for app {} {}",
            self.client_id,
            self.endpoint.place()
        )
    }

    fn reload(&self) -> Result<Reloaded, String> {
        let Some(path) = &self.secret_file else {
            return Ok(Reloaded::NothingToReload);
        };
        let secret = read_secret_file(path)?;
        if let Some(advice) = crate::diagnose::lint_secret(secret.expose_secret()) {
            return Err(format!("{}: {advice}", path.display()));
        }
        Ok(if self.replace_secret(secret) {
            Reloaded::Changed
        } else {
            Reloaded::Unchanged
        })
    }
}

/// Reads a secret file (surrounding whitespace and the trailing newline ignored). The error
/// names the file, never its content.
pub fn read_secret_file(path: &std::path::Path) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(SecretString::from(trimmed.to_string()))
}
