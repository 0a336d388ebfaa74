//! Which credential an account uses, as plain settings, and the one place a [`TokenSource`]
//! is built from them. Each kind lives in its own file and makes one HTTP request per token
//! (DESIGN §6); the cache in front of them is shared.
//!
//! | kind | file | the request |
//! |---|---|---|
//! | `secret` | `client_secret.rs` | client credentials with `client_secret` (reference §1.2) |
//! | `certificate` | `certificate.rs` | client credentials with a signed JWT assertion (§1.3) |
//! | `workload-identity` | `workload_identity.rs` | client credentials with the projected token file as assertion (§1.4) |
//! | `managed-identity` | `managed_identity.rs` | IMDS token for `api://AzureADTokenExchange`, then §1.4 (§1.5) |
//! | `delegated` | `delegated.rs` | refresh token grant; the token rotates and is stored 0600 (§1.6) |

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

pub use super::certificate_files::CertificateFiles;
use super::client_secret::{ClientSecretSettings, ClientSecretSource};
use super::endpoint::TokenEndpoint;
pub use super::jwt::AssertionAlgorithm;
use super::managed_identity::{ImdsSettings, ManagedIdentitySource};
use super::source::TokenSource;
use super::workload_identity::WorkloadIdentitySource;
use crate::tls::TlsSetupError;

/// The credential kinds, by their configuration names (`account.credential`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialKind {
    Secret,
    Certificate,
    WorkloadIdentity,
    ManagedIdentity,
    Delegated,
}

impl CredentialKind {
    /// The configuration name (`secret`, `workload-identity`, ...).
    pub fn name(self) -> &'static str {
        match self {
            CredentialKind::Secret => "secret",
            CredentialKind::Certificate => "certificate",
            CredentialKind::WorkloadIdentity => "workload-identity",
            CredentialKind::ManagedIdentity => "managed-identity",
            CredentialKind::Delegated => "delegated",
        }
    }

    /// Every kind, in the order the documentation lists them.
    pub const ALL: [CredentialKind; 5] = [
        CredentialKind::Secret,
        CredentialKind::Certificate,
        CredentialKind::WorkloadIdentity,
        CredentialKind::ManagedIdentity,
        CredentialKind::Delegated,
    ];
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A credential, resolved from configuration. `Debug` shows no secret.
#[derive(Clone)]
pub enum Credential {
    /// A client secret value, and the file it came from (SIGHUP reads it again).
    Secret {
        secret: SecretString,
        file: Option<PathBuf>,
    },
    Certificate(CertificateFiles),
    /// The projected service-account token file, read again for every request.
    WorkloadIdentity {
        token_file: PathBuf,
    },
    /// IMDS's token URL (without query) and, for a user-assigned identity, its client ID;
    /// the audience its token is asked for (the cloud's `api://AzureADTokenExchange…`).
    ManagedIdentity {
        imds_endpoint: String,
        identity_client_id: Option<String>,
        federation_audience: String,
    },
    /// The file holding the refresh token `login` stored (0600, rotated on every refresh).
    Delegated {
        refresh_token_file: PathBuf,
    },
}

impl Credential {
    pub fn kind(&self) -> CredentialKind {
        match self {
            Credential::Secret { .. } => CredentialKind::Secret,
            Credential::Certificate(_) => CredentialKind::Certificate,
            Credential::WorkloadIdentity { .. } => CredentialKind::WorkloadIdentity,
            Credential::ManagedIdentity { .. } => CredentialKind::ManagedIdentity,
            Credential::Delegated { .. } => CredentialKind::Delegated,
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Secret { file, .. } => f
                .debug_struct("Secret")
                .field("secret", &"<redacted>")
                .field("file", file)
                .finish(),
            Credential::Certificate(files) => f.debug_tuple("Certificate").field(files).finish(),
            Credential::WorkloadIdentity { token_file } => f
                .debug_struct("WorkloadIdentity")
                .field("token_file", token_file)
                .finish(),
            Credential::ManagedIdentity {
                imds_endpoint,
                identity_client_id,
                federation_audience,
            } => f
                .debug_struct("ManagedIdentity")
                .field("imds_endpoint", imds_endpoint)
                .field("identity_client_id", identity_client_id)
                .field("federation_audience", federation_audience)
                .finish(),
            Credential::Delegated { refresh_token_file } => f
                .debug_struct("Delegated")
                .field("refresh_token_file", refresh_token_file)
                .finish(),
        }
    }
}

/// Everything a token source needs: the endpoint, the app, the scope, and the credential.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// `{authority}/{tenant}/oauth2/v2.0/token`, see [`super::token_url`].
    pub token_url: String,
    /// Application (client) ID of the app registration.
    pub client_id: String,
    /// `https://outlook.office365.com/.default` for app-only (per cloud); the delegated kind
    /// asks for `…/SMTP.Send offline_access` instead.
    pub scope: String,
    /// Extra trusted CAs (corporate TLS proxy, sandbox).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Time limit of one token request; zero means the default.
    pub timeout: Duration,
    pub credential: Credential,
}

/// Why a token source could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("TLS setup: {0}")]
    Tls(#[from] TlsSetupError),
    /// The credential's files are unusable: names the file and what is wrong, never a secret.
    #[error("{0}")]
    Credential(String),
}

/// Builds the token source for `settings`.
pub fn build(settings: &SourceSettings) -> Result<Arc<dyn TokenSource>, BuildError> {
    match &settings.credential {
        Credential::Secret { secret, file } => {
            let source = ClientSecretSource::new(ClientSecretSettings {
                token_url: settings.token_url.clone(),
                client_id: settings.client_id.clone(),
                client_secret: secret.clone(),
                scope: settings.scope.clone(),
                extra_roots: settings.extra_roots.clone(),
                timeout: settings.timeout,
            })?
            .with_secret_file(file.clone());
            Ok(Arc::new(source))
        }
        Credential::Delegated { refresh_token_file } => {
            let source = super::delegated::DelegatedSource::new(settings, refresh_token_file)
                .map_err(|e| match e {
                    super::delegated::BuildFailure::Tls(t) => BuildError::Tls(t),
                    super::delegated::BuildFailure::File(m) => BuildError::Credential(m),
                })?;
            Ok(Arc::new(source))
        }
        Credential::WorkloadIdentity { token_file } => Ok(Arc::new(WorkloadIdentitySource::new(
            entra(settings)?,
            settings.client_id.clone(),
            settings.scope.clone(),
            token_file.clone(),
        ))),
        Credential::ManagedIdentity {
            imds_endpoint,
            identity_client_id,
            federation_audience,
        } => Ok(Arc::new(ManagedIdentitySource::new(
            entra(settings)?,
            settings.client_id.clone(),
            settings.scope.clone(),
            ImdsSettings {
                endpoint: imds_endpoint.clone(),
                identity_client_id: identity_client_id.clone(),
                audience: federation_audience.clone(),
            },
            settings.timeout,
        )?)),
        Credential::Certificate(files) => {
            use super::certificate::{CertificateError, CertificateSettings, CertificateSource};
            let certificate = CertificateSettings {
                token_url: settings.token_url.clone(),
                client_id: settings.client_id.clone(),
                scope: settings.scope.clone(),
                extra_roots: settings.extra_roots.clone(),
                timeout: settings.timeout,
                files: files.clone(),
            };
            match CertificateSource::new(certificate) {
                Ok(source) => Ok(Arc::new(source)),
                Err(CertificateError::Tls(e)) => Err(BuildError::Tls(e)),
                Err(CertificateError::Files(f)) => Err(BuildError::Credential(f.message)),
            }
        }
    }
}

/// The HTTPS client for the account's token URL.
fn entra(settings: &SourceSettings) -> Result<TokenEndpoint, TlsSetupError> {
    TokenEndpoint::new(&settings.token_url, &settings.extra_roots, settings.timeout)
}
