//! The inbound TLS identity: the certificate the relay shows to clients that use STARTTLS
//! or connect to the implicit-TLS port (issue 13).
//!
//! Either PEM files (`listen.tls_certificate_file`, `listen.tls_key_file`), read again on
//! SIGHUP, or a self-signed certificate made at start for devices that only need "some
//! TLS". A reload swaps the certificate for new handshakes only: a connection already in TLS
//! keeps the session it has. Bad new files keep the old certificate, and say why.
//!
//! TLS 1.2 and 1.3, aws-lc-rs (the one provider, DESIGN §5), no client certificates.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::sync::RwLock as _;

/// Where the certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    Files {
        certificate: PathBuf,
        key: PathBuf,
    },
    /// Made at start for this host name; gone at exit.
    SelfSigned {
        hostname: String,
    },
}

/// The relay's server-side TLS: one acceptor for STARTTLS and the implicit-TLS listener.
pub struct InboundTls {
    source: TlsSource,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
}

impl fmt::Debug for InboundTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key: only where it came from.
        f.debug_struct("InboundTls")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The certificate handshakes use now.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read_now().clone())
    }
}

impl InboundTls {
    /// Reads the certificate chain and key from PEM files; every mistake named in plain words.
    pub fn from_files(certificate: &Path, key: &Path) -> Result<InboundTls, String> {
        let certified = load_files(certificate, key)?;
        InboundTls::new(
            TlsSource::Files {
                certificate: certificate.to_path_buf(),
                key: key.to_path_buf(),
            },
            certified,
        )
    }

    /// A fresh key and a self-signed certificate naming `hostname`, `localhost` and the
    /// loopback addresses. Clients that verify certificates will refuse it: it is for
    /// devices that only need "some TLS".
    pub fn self_signed(hostname: &str) -> Result<InboundTls, String> {
        let mut names = vec![
            hostname.to_string(),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        names.dedup();
        let why = |e: rcgen::Error| format!("cannot make a self-signed certificate: {e}");
        let mut params = rcgen::CertificateParams::new(names).map_err(why)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, hostname);
        let key = rcgen::KeyPair::generate().map_err(why)?;
        let cert = params.self_signed(&key).map_err(why)?;
        let key_der = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| format!("cannot use the self-signed key: {e}"))?;
        let certified = certified_key(vec![cert.der().clone()], key_der)?;
        InboundTls::new(
            TlsSource::SelfSigned {
                hostname: hostname.to_string(),
            },
            certified,
        )
    }

    fn new(source: TlsSource, certified: CertifiedKey) -> Result<InboundTls, String> {
        let current = Arc::new(Current(RwLock::new(Arc::new(certified))));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS set-up: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        Ok(InboundTls {
            source,
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    pub fn source(&self) -> &TlsSource {
        &self.source
    }

    /// Reads the files again (SIGHUP). `Ok(true)` when the certificate changed, `Ok(false)`
    /// when it is the same or self-signed; `Err` keeps the old one.
    pub fn reload(&self) -> Result<bool, String> {
        let TlsSource::Files { certificate, key } = &self.source else {
            return Ok(false);
        };
        let fresh = load_files(certificate, key)?;
        let mut current = self.current.0.write_now();
        if current.cert == fresh.cert {
            return Ok(false);
        }
        *current = Arc::new(fresh);
        Ok(true)
    }

    /// For the start-up log: where the certificate came from and when it expires.
    pub fn describe(&self) -> String {
        match &self.source {
            TlsSource::Files { certificate, .. } => {
                let leaf = self.current.0.read_now().cert.first().cloned();
                match leaf.and_then(|c| not_after(&c)) {
                    Some(until) => format!(
                        "certificate {} (valid until {})",
                        certificate.display(),
                        httpdate::fmt_http_date(until)
                    ),
                    None => format!("certificate {}", certificate.display()),
                }
            }
            TlsSource::SelfSigned { hostname } => format!(
                "a self-signed certificate for {hostname}, made at start (clients that check \
                 certificates will refuse it; set listen.tls_certificate_file and \
                 listen.tls_key_file for a real one)"
            ),
        }
    }
}

fn load_files(certificate: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .map_err(|e| {
            format!(
                "cannot read the TLS certificate {}: {}",
                certificate.display(),
                pem_error(&e)
            )
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            format!(
                "the TLS certificate {} is not valid PEM: {}",
                certificate.display(),
                pem_error(&e)
            )
        })?;
    if chain.is_empty() {
        return Err(format!(
            "{} holds no certificate (expected a PEM block `BEGIN CERTIFICATE`)",
            certificate.display()
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "cannot read the TLS private key {}: {} (expected a PEM private key: PKCS#8 \
             `BEGIN PRIVATE KEY`, `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY`, unencrypted)",
            key.display(),
            pem_error(&e)
        )
    })?;
    certified_key(chain, key_der).map_err(|e| {
        format!(
            "{} and {} do not make a usable pair: {e}",
            certificate.display(),
            key.display()
        )
    })
}

/// The error's words without any of the file's bytes (a key must never reach a log).
fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => "no PEM block of the expected kind found".into(),
        Error::MissingSectionEnd { .. } => "a PEM block has no END line".into(),
        Error::IllegalSectionStart { .. } => "a malformed BEGIN line".into(),
        Error::Base64Decode(_) => "a PEM block is not valid base64".into(),
        _ => "not a PEM file of the expected kind".into(),
    }
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, String> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|_| "the private key is not a supported RSA, ECDSA or Ed25519 key".to_string())?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|_| "the private key does not belong to the certificate".to_string())?;
    Ok(certified)
}

/// The certificate's end of validity, when it can be read.
fn not_after(cert: &CertificateDer<'_>) -> Option<SystemTime> {
    use x509_cert::der::Decode;
    let parsed = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
    Some(parsed.tbs_certificate.validity.not_after.to_system_time())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let c = dir.join(format!("{name}.crt"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k, key.serialize_pem())
    }

    #[test]
    fn files_load_and_reload_swaps_only_a_changed_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k, _) = write_pair(dir.path(), "one.test");
        let tls = InboundTls::from_files(&c, &k).unwrap();
        assert!(tls.describe().contains("valid until"), "{}", tls.describe());
        assert_eq!(tls.reload(), Ok(false), "same files: unchanged");
        let (c2, k2, _) = write_pair(dir.path(), "two.test");
        std::fs::rename(c2, &c).unwrap();
        std::fs::rename(k2, &k).unwrap();
        assert_eq!(tls.reload(), Ok(true));
    }

    #[test]
    fn a_bad_reload_keeps_the_old_certificate_and_never_shows_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k, key_pem) = write_pair(dir.path(), "one.test");
        let tls = InboundTls::from_files(&c, &k).unwrap();
        let before = tls.current.0.read_now().cert.clone();
        // A key that belongs to another certificate.
        let (_, other_key, other_pem) = write_pair(dir.path(), "other.test");
        std::fs::copy(&other_key, &k).unwrap();
        let err = tls.reload().unwrap_err();
        assert!(err.contains("does not belong"), "{err}");
        assert_eq!(tls.current.0.read_now().cert, before);
        for secret in [&key_pem, &other_pem] {
            let body = secret.lines().nth(1).unwrap();
            assert!(!err.contains(body));
        }
        assert!(!format!("{tls:?}").contains(key_pem.lines().nth(1).unwrap()));
    }

    #[test]
    fn mistakes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k, _) = write_pair(dir.path(), "one.test");
        let missing = dir.path().join("missing.pem");
        let err = InboundTls::from_files(&missing, &k).unwrap_err();
        assert!(err.contains("cannot read the TLS certificate"), "{err}");
        let err = InboundTls::from_files(&c, &missing).unwrap_err();
        assert!(err.contains("cannot read the TLS private key"), "{err}");
        // Certificate and key swapped.
        let err = InboundTls::from_files(&k, &c).unwrap_err();
        assert!(
            err.contains("no certificate") || err.contains("PEM"),
            "{err}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello\n").unwrap();
        let err = InboundTls::from_files(&junk, &k).unwrap_err();
        assert!(err.contains("no certificate"), "{err}");
    }

    #[test]
    fn self_signed_names_the_host_and_says_so() {
        let tls = InboundTls::self_signed("relay.example").unwrap();
        assert!(tls.describe().contains("self-signed"));
        assert_eq!(tls.reload(), Ok(false));
    }
}
