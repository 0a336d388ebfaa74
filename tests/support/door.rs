//! The relay's safe door in tests (issue 13): a certificate for the listener, a users file
//! with cheap argon2 hashes, and a TLS client that trusts only that certificate. Include it
//! with `#[path = "support/door.rs"] mod door;` beside `mod support;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A certificate and key in PEM files, and the certificate's PEM (to trust it).
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub pem: String,
}

/// Writes a fresh self-signed certificate for `localhost` and 127.0.0.1 into `dir` as
/// `<stem>.crt` / `<stem>.key` (replacing files of that name: a rotation).
pub fn write_cert(dir: &Path, stem: &str) -> CertFiles {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("relay test {stem}"));
    let cert = params.self_signed(&key).expect("certificate");
    let (c, k) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    // Written beside and renamed, as an operator's tooling (cert-manager, certbot) does.
    let tmp = dir.join(format!(".{stem}.tmp"));
    std::fs::write(&tmp, cert.pem()).unwrap();
    std::fs::rename(&tmp, &c).unwrap();
    std::fs::write(&tmp, key.serialize_pem()).unwrap();
    std::fs::rename(&tmp, &k).unwrap();
    CertFiles {
        cert: c,
        key: k,
        pem: cert.pem(),
    }
}

/// An argon2id hash of `password` with low cost parameters (fast in tests; the relay honours
/// the parameters written in the hash).
pub fn cheap_hash(password: &str) -> String {
    use argon2::PasswordHasher;
    let params = argon2::Params::new(256, 1, 1, None).expect("params");
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    argon
        .hash_password(password.as_bytes())
        .expect("hash")
        .to_string()
}

/// Writes a users file: `(name, password, senders)` a user (senders comma-separated, or "").
pub fn write_users(dir: &Path, users: &[(&str, &str, &str)]) -> PathBuf {
    let mut text = String::from("# test users\n");
    for (name, password, senders) in users {
        text.push_str(&format!("{name}:{}", cheap_hash(password)));
        if !senders.is_empty() {
            text.push_str(&format!(":{senders}"));
        }
        text.push('\n');
    }
    let path = dir.join("users");
    std::fs::write(&path, text).unwrap();
    path
}

/// A TLS client that trusts only `pem`, limited to `versions` (empty: TLS 1.2 and 1.3).
pub fn connector(
    pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions = if versions.is_empty() {
        vec![&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        versions.to_vec()
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// The TLS handshake over `tcp` (after `220 Ready to start TLS`, or at once on the
/// implicit-TLS port), as `localhost`.
pub async fn handshake(
    connector: &TlsConnector,
    tcp: TcpStream,
) -> std::io::Result<TlsStream<TcpStream>> {
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// The certificate the server showed in `tls`, as PEM-decoded DER, to tell two apart.
pub fn peer_certificate(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    let (_, conn) = tls.get_ref();
    conn.peer_certificates().expect("a certificate")[0].to_vec()
}

/// base64 of `bytes` (SASL answers).
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
