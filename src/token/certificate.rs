//! Client credentials grant with a certificate (reference §1.3, private_key_jwt): instead of
//! a secret, every request carries a fresh JWT signed with the private key of a certificate
//! uploaded to the app registration.
//!
//! The files are read and checked once at start ([`CertificateSource::new`], and before that
//! by configuration validation), and again on SIGHUP ([`TokenSource::reload`]): a renewed
//! certificate and key are used from the next request on; files that cannot be used leave
//! the credential in use untouched. The assertion is built by `jwt.rs` and scrubbed from
//! anything the endpoint says back, like a secret.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;

use super::certificate_files::{load, CertificateFiles, Fault, Loaded};
use super::endpoint::TokenEndpoint;
use super::error::TokenError;
use super::jwt::{self, AssertionAlgorithm};
use super::source::{AccessToken, FetchFuture, Reloaded, TokenSource};
use crate::sync::RwLock as _;
use crate::tls::TlsSetupError;

/// Everything a [`CertificateSource`] needs. `Debug` shows paths, no key material.
#[derive(Debug, Clone)]
pub struct CertificateSettings {
    /// Full token URL (also the assertion's `aud`), see [`super::token_url`].
    pub token_url: String,
    /// Application (client) ID: the assertion's `iss` and `sub`.
    pub client_id: String,
    pub scope: String,
    /// Extra trusted CAs (corporate TLS proxy, sandbox).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Time limit of one token request; zero means the default.
    pub timeout: Duration,
    pub files: CertificateFiles,
}

/// Why a certificate source cannot be built.
#[derive(Debug)]
pub enum CertificateError {
    Tls(TlsSetupError),
    Files(Fault),
}

/// Gets tokens with a signed client assertion. `Debug` shows the thumbprint, never the key.
pub struct CertificateSource {
    endpoint: TokenEndpoint,
    client_id: String,
    scope: String,
    files: CertificateFiles,
    /// Replaced on SIGHUP when the files hold a new certificate.
    current: std::sync::RwLock<Arc<Loaded>>,
}

impl fmt::Debug for CertificateSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateSource")
            .field("token_url", &self.endpoint.token_url())
            .field("client_id", &self.client_id)
            .field("files", &self.files)
            .field("certificate", &self.loaded())
            .finish_non_exhaustive()
    }
}

impl CertificateSource {
    /// Reads and checks the files, and builds the HTTPS client.
    pub fn new(settings: CertificateSettings) -> Result<Self, CertificateError> {
        let loaded = load(&settings.files).map_err(CertificateError::Files)?;
        let endpoint =
            TokenEndpoint::new(&settings.token_url, &settings.extra_roots, settings.timeout)
                .map_err(CertificateError::Tls)?;
        Ok(CertificateSource {
            endpoint,
            client_id: settings.client_id,
            scope: settings.scope,
            files: settings.files,
            current: std::sync::RwLock::new(Arc::new(loaded)),
        })
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.current.read_now().clone()
    }

    /// The SHA-1 thumbprint of the certificate in use, as the portal shows it.
    pub fn thumbprint(&self) -> String {
        self.loaded().thumbprints.portal()
    }

    fn algorithm(&self) -> AssertionAlgorithm {
        self.files.algorithm
    }

    async fn fetch_once(&self) -> Result<AccessToken, TokenError> {
        let loaded = self.loaded();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let alg = self.algorithm();
        let assertion = jwt::sign(
            &loaded.key,
            alg,
            &jwt::header(alg, &loaded.thumbprints),
            &jwt::claims(
                self.endpoint.token_url(),
                &self.client_id,
                &jwt::new_guid(),
                now,
            ),
        )
        .map_err(TokenError::Credential)?;
        let grant = self
            .endpoint
            .post_assertion(&self.client_id, &self.scope, &assertion, &self.describe())
            .await?;
        Ok(grant.access())
    }
}

impl TokenSource for CertificateSource {
    fn fetch(&self) -> FetchFuture<'_> {
        Box::pin(self.fetch_once())
    }

    fn describe(&self) -> String {
        format!(
            "certificate {} ({}) for app {} {}",
            self.thumbprint(),
            match self.algorithm() {
                AssertionAlgorithm::PS256 => "PS256",
                AssertionAlgorithm::RS256 => "RS256",
            },
            self.client_id,
            self.endpoint.place()
        )
    }

    fn reload(&self) -> Result<Reloaded, String> {
        let fresh = load(&self.files).map_err(|f| f.message)?;
        let mut current = self.current.write_now();
        let changed = current.der != fresh.der;
        *current = Arc::new(fresh);
        Ok(if changed {
            Reloaded::Changed
        } else {
            Reloaded::Unchanged
        })
    }

    fn not_after(&self) -> Option<SystemTime> {
        Some(self.loaded().not_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec![name.into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let path = dir.join("cert.pem");
        std::fs::write(&path, format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
        (path, key.serialize_pem())
    }

    fn settings(files: &CertificateFiles) -> CertificateSettings {
        CertificateSettings {
            token_url:
                "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token".into(),
            client_id: "app-1".into(),
            scope: "https://outlook.office365.com/.default".into(),
            extra_roots: Vec::new(),
            timeout: Duration::ZERO,
            files: files.clone(),
        }
    }

    #[test]
    fn describe_debug_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (path, key_pem) = write_pair(dir.path(), "one");
        let files = CertificateFiles {
            certificate: path.clone(),
            key: None,
            passphrase: None,
            algorithm: AssertionAlgorithm::PS256,
        };
        let source = CertificateSource::new(settings(&files)).unwrap();
        let first = source.thumbprint();
        assert_eq!(first.len(), 40);
        let d = source.describe();
        assert_eq!(
            d,
            format!("certificate {first} (PS256) for app app-1 in tenant contoso.onmicrosoft.com")
        );
        let shown = format!("{source:?}");
        assert!(shown.contains(&first), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        let key_body: String = key_pem.lines().nth(1).unwrap().to_string();
        assert!(!shown.contains(&key_body), "{shown}");
        assert!(source.not_after().is_some());

        assert_eq!(source.reload(), Ok(Reloaded::Unchanged));
        // A broken file keeps the certificate in use and names the file.
        std::fs::write(&path, "garbage").unwrap();
        let err = source.reload().unwrap_err();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert_eq!(source.thumbprint(), first);
        // A new pair is taken.
        write_pair(dir.path(), "two");
        assert_eq!(source.reload(), Ok(Reloaded::Changed));
        assert_ne!(source.thumbprint(), first);
    }
}
