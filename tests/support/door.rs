//! The relay's safe door in tests (issue 13): a certificate for the listener, a users file
//! with cheap argon2 hashes, and a TLS client that trusts only that certificate. Include it
//! with `#[path = "support/door.rs"] mod door;` beside `mod support;`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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

/// A client that accepts any server certificate: only for reading what a relay with a
/// self-signed certificate presents (the test then trusts exactly that certificate).
pub fn any_cert_connector() -> TlsConnector {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A DER certificate as PEM (to trust a certificate read off the wire with [`connector`]).
pub fn pem_of(der: &[u8]) -> String {
    let text = b64(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in text.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// The TLS version `tls` negotiated.
pub fn tls_version(tls: &TlsStream<TcpStream>) -> Option<rustls::ProtocolVersion> {
    tls.get_ref().1.protocol_version()
}

/// How long one reply may take before a test fails. Only a failing case waits that long.
pub const REPLY_LIMIT: std::time::Duration = std::time::Duration::from_secs(15);

/// A byte-level SMTP client over any stream: plain TCP before `STARTTLS`, TLS after it or on
/// the implicit-TLS port.
pub struct Smtp<S> {
    pub io: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Smtp<S> {
    pub fn new(io: S) -> Smtp<S> {
        Smtp {
            io,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write");
        self.io.flush().await.expect("flush");
    }

    /// One complete reply (all its lines), or `EOF <rest>` when the relay closed the
    /// connection (a TLS connection cut without `close_notify` counts as closed too).
    pub async fn reply(&mut self) -> String {
        tokio::time::timeout(REPLY_LIMIT, async {
            loop {
                if let Some(end) = complete_reply(&self.buf) {
                    let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                    self.buf.drain(..end);
                    return text;
                }
                let mut chunk = [0u8; 4096];
                match self.io.read(&mut chunk).await {
                    Ok(0) | Err(_) => {
                        let text = String::from_utf8_lossy(&self.buf).into_owned();
                        self.buf.clear();
                        return format!("EOF {text}");
                    }
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .expect("a reply within the limit")
    }

    /// Sends a command line and asserts the reply code; returns the reply.
    pub async fn cmd(&mut self, line: &str, code: u16) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        let reply = self.reply().await;
        assert!(
            reply.starts_with(&code.to_string()),
            "{line} -> expected {code}, got {reply}"
        );
        reply
    }

    /// MAIL, RCPTs, DATA with a body that ends with CRLF (no dot at line starts); returns
    /// the reply to the body.
    pub async fn send_mail(&mut self, from: &str, to: &[&str], body: &[u8]) -> String {
        self.cmd(&format!("MAIL FROM:<{from}>"), 250).await;
        for r in to {
            self.cmd(&format!("RCPT TO:<{r}>"), 250).await;
        }
        self.cmd("DATA", 354).await;
        self.send(body).await;
        self.send(b".\r\n").await;
        self.reply().await
    }

    /// Bytes received and not yet taken as a reply (must be none before a handshake).
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }
}

fn complete_reply(buf: &[u8]) -> Option<usize> {
    let mut pos = 0;
    while let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') {
        let line = &buf[pos..pos + nl + 1];
        pos += nl + 1;
        if line.len() < 4 || line[3] == b' ' {
            return Some(pos);
        }
    }
    None
}

/// Connects to the plain port and reads the greeting, which must be `220`.
pub async fn plain(addr: SocketAddr) -> Smtp<TcpStream> {
    let tcp = TcpStream::connect(addr)
        .await
        .expect("connect to the relay");
    let mut c = Smtp::new(tcp);
    let greeting = c.reply().await;
    assert!(greeting.starts_with("220 "), "greeting: {greeting}");
    c
}

/// EHLO (which must offer STARTTLS), STARTTLS, and the handshake with `connector`.
pub async fn upgrade(
    mut c: Smtp<TcpStream>,
    connector: &TlsConnector,
) -> std::io::Result<Smtp<TlsStream<TcpStream>>> {
    let ehlo = c.cmd("EHLO client.example", 250).await;
    assert!(
        ehlo.contains("STARTTLS"),
        "EHLO must offer STARTTLS: {ehlo}"
    );
    c.cmd("STARTTLS", 220).await;
    assert!(c.pending().is_empty(), "nothing may follow the 220");
    let tls = handshake(connector, c.io).await?;
    Ok(Smtp::new(tls))
}

/// The plain port, STARTTLS and a handshake with `connector` (which must succeed).
pub async fn starttls(addr: SocketAddr, connector: &TlsConnector) -> Smtp<TlsStream<TcpStream>> {
    upgrade(plain(addr).await, connector)
        .await
        .expect("the STARTTLS handshake")
}

/// The implicit-TLS port: the handshake first, then the greeting (inside TLS), which must be
/// `220`.
pub async fn implicit(addr: SocketAddr, connector: &TlsConnector) -> Smtp<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr)
        .await
        .expect("connect to the TLS port");
    let tls = handshake(connector, tcp)
        .await
        .expect("the implicit-TLS handshake");
    let mut c = Smtp::new(tls);
    let greeting = c.reply().await;
    assert!(
        greeting.starts_with("220 "),
        "greeting inside TLS: {greeting}"
    );
    c
}

/// The `AUTH PLAIN` initial response for `user` and `password`.
pub fn plain_blob(user: &str, password: &str) -> String {
    b64(format!("\0{user}\0{password}").as_bytes())
}

/// A small message with a distinctive subject.
pub fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: app@example.com\r\nTo: desk@example.com\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n"
    )
    .into_bytes()
}

/// The protocol named by the relay's `Received:` header (`with <protocol> id`) in `data`.
pub fn received_with(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let after = head
        .split(" with ")
        .nth(1)
        .unwrap_or_else(|| panic!("no `with` clause in the headers: {head}"));
    after
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The configuration from `env` with `extra` pairs overriding, validated: `Err` is the
/// error a relay would exit 64 with.
pub fn config_result(
    mut env: Vec<(String, String)>,
    extra: &[(&str, &str)],
) -> Result<smtp_oauth_relay::config::ValidConfig, smtp_oauth_relay::config::ConfigError> {
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v.to_string()));
    }
    smtp_oauth_relay::config::Config::load(None, &env)?.validate()
}

/// `config_result`, which must fail: the error.
pub fn config_error(
    env: Vec<(String, String)>,
    extra: &[(&str, &str)],
) -> smtp_oauth_relay::config::ConfigError {
    match config_result(env, extra) {
        Ok(_) => panic!("the configuration must be refused: {extra:?}"),
        Err(e) => e,
    }
}

/// Every base64 body line of a PEM text (to check a key never reaches a log).
pub fn pem_body_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .map(str::to_string)
        .collect()
}
