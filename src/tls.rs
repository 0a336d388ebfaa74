//! TLS client configuration shared by every outbound connection (token endpoint, upstream SMTP).
//!
//! One crypto provider only: aws-lc-rs (DESIGN §5). Certificates are verified with the
//! platform verifier (system store, `SSL_CERT_FILE`), optionally augmented by the PEM file
//! named in `extra_ca_file` (a corporate TLS proxy, or the sandbox's self-signed CA).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Why a TLS client configuration could not be built. Names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read extra CA file {path}: {source}")]
    ReadCa {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("extra CA file {path} holds no PEM certificate")]
    NoCertificates { path: PathBuf },
    #[error("extra CA file {path} is not valid PEM: {reason}")]
    BadPem { path: PathBuf, reason: String },
    #[error("cannot set up certificate verification: {0}")]
    Verifier(String),
}

/// Reads every certificate in a PEM file.
pub fn load_pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let bytes = std::fs::read(path).map_err(|source| TlsSetupError::ReadCa {
        path: path.to_owned(),
        source,
    })?;
    parse_pem_certificates(&bytes).map_err(|reason| match reason {
        None => TlsSetupError::NoCertificates {
            path: path.to_owned(),
        },
        Some(reason) => TlsSetupError::BadPem {
            path: path.to_owned(),
            reason,
        },
    })
}

/// Parses PEM bytes into certificates. `Err(None)` means no certificate was present.
pub fn parse_pem_certificates(
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, Option<String>> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Some(e.to_string()))?;
    if certs.is_empty() {
        return Err(None);
    }
    Ok(certs)
}

/// A rustls client configuration: TLS 1.2 and 1.3 only, platform verifier plus `extra_roots`.
pub fn client_config(
    extra_roots: &[CertificateDer<'static>],
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(
        extra_roots.iter().cloned(),
        provider.clone(),
    )
    .map_err(|e| TlsSetupError::Verifier(e.to_string()))?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsSetupError::Verifier(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Installs aws-lc-rs as the process-wide rustls provider. Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
