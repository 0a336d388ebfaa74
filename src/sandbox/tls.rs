//! The sandbox's TLS identity: a fresh self-signed certificate per start.
//!
//! Clients trust the sandbox by adding `ca_pem()` as an extra root (the relay's
//! `extra_ca_file`), never by turning verification off, so the relay's real verification
//! path (rustls-platform-verifier over webpki) is what the tests exercise. The certificate
//! names `localhost`, `127.0.0.1` and `::1`, the only places the sandbox may listen.
//!
//! webpki accepts a self-signed end-entity certificate (no CA basic constraints) as its own
//! trust anchor: the anchor is just a subject plus a public key, and the certificate's
//! issuer is that subject. The test at the bottom checks this through `crate::tls`.
//!
//! One crypto provider only: aws-lc-rs (DESIGN §5).

use std::io;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// The certificate (PEM, for clients) and the server configurations built from it.
pub(crate) struct SandboxTls {
    pub ca_pem: String,
    /// For the SMTP listener (STARTTLS): no ALPN.
    pub smtp: Arc<ServerConfig>,
    /// For the token endpoint: ALPN `http/1.1`, the only protocol it speaks.
    pub https: Arc<ServerConfig>,
}

fn tls_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("sandbox TLS setup: {e}"))
}

/// Generates a new key and self-signed certificate and the server configurations.
pub(crate) fn generate() -> io::Result<SandboxTls> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let mut params = rcgen::CertificateParams::new(names).map_err(tls_error)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "smtp-oauth-relay sandbox");
    let key = rcgen::KeyPair::generate().map_err(tls_error)?;
    let cert = params.self_signed(&key).map_err(tls_error)?;

    let config = |alpn: Vec<Vec<u8>>| -> io::Result<Arc<ServerConfig>> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(tls_error)?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key_der)
            .map_err(tls_error)?;
        config.alpn_protocols = alpn;
        Ok(Arc::new(config))
    };

    Ok(SandboxTls {
        ca_pem: cert.pem(),
        smtp: config(Vec::new())?,
        https: config(vec![b"http/1.1".to_vec()])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Handshakes with the relay's own client configuration, trusting only `ca_pem` as an
    /// extra root, for every name the certificate carries.
    #[tokio::test]
    async fn relay_client_config_trusts_the_sandbox_certificate() {
        crate::tls::install_crypto_provider();
        let tls = generate().expect("generate");
        let roots = crate::tls::parse_pem_certificates(tls.ca_pem.as_bytes()).expect("pem");
        let client = crate::tls::client_config(&roots).expect("client config");
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.smtp.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut s = acceptor.accept(tcp).await.unwrap();
                s.write_all(b"hi").await.unwrap();
                s.shutdown().await.unwrap();
            }
        });
        for name in ["127.0.0.1", "localhost"] {
            let connector = tokio_rustls::TlsConnector::from(client.clone());
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let server_name = ServerName::try_from(name.to_string()).unwrap();
            let mut s = connector
                .connect(server_name, tcp)
                .await
                .unwrap_or_else(|e| panic!("handshake as {name}: {e}"));
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"hi");
        }
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_wrong_name_is_rejected() {
        crate::tls::install_crypto_provider();
        let tls = generate().expect("generate");
        let roots = crate::tls::parse_pem_certificates(tls.ca_pem.as_bytes()).expect("pem");
        let client = crate::tls::client_config(&roots).expect("client config");
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.smtp.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = acceptor.accept(tcp).await;
        });
        let connector = tokio_rustls::TlsConnector::from(client);
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("smtp.office365.com").unwrap();
        assert!(connector.connect(name, tcp).await.is_err());
    }
}
