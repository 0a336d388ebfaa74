//! Dialog tests over loopback: a raw HTTPS client against the token endpoint and a raw SMTP
//! client (STARTTLS with the relay's own `crate::tls::client_config`, trusting only
//! `ca_pem`) against the SMTP server. Raw clients, so every reply text is checked as sent.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use secrecy::ExposeSecret;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Sandbox, SandboxOptions, TokenFailure};

pub(super) struct Fixture {
    pub(super) sandbox: Sandbox,
    pub(super) client: Arc<ClientConfig>,
    pub(super) _dir: tempfile::TempDir,
}

pub(super) const MAILBOX: &str = "relay@sandbox.example";

pub(super) async fn start_with(configure: impl FnOnce(&mut SandboxOptions)) -> Fixture {
    crate::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = SandboxOptions::new(dir.path().join("store"));
    configure(&mut opts);
    let sandbox = Sandbox::start(opts).await.unwrap();
    let roots = crate::tls::parse_pem_certificates(sandbox.ca_pem().as_bytes()).unwrap();
    let client = crate::tls::client_config(&roots).unwrap();
    Fixture {
        sandbox,
        client,
        _dir: dir,
    }
}

pub(super) async fn start() -> Fixture {
    start_with(|_| {}).await
}

// ---------------------------------------------------------------------------------------
// HTTPS helpers

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

struct HttpReply {
    status: u16,
    head: String,
    json: serde_json::Value,
}

async fn https(fx: &Fixture, request: String) -> HttpReply {
    let tcp = TcpStream::connect(fx.sandbox.token_addr()).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(fx.client.clone());
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    // The server closes after a `Connection: close` request; a missing close_notify is fine.
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("response head");
    let status = head[9..12].parse().unwrap();
    HttpReply {
        status,
        head: head.to_string(),
        json: serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    }
}

async fn post_token(fx: &Fixture, tenant: &str, body: &str, extra_headers: &str) -> HttpReply {
    https(
        fx,
        format!(
            "POST /{tenant}/oauth2/v2.0/token HTTP/1.1\r\nHost: login.microsoftonline.com\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
             Connection: close\r\n{extra_headers}\r\n{body}",
            body.len()
        ),
    )
    .await
}

fn secret(fx: &Fixture) -> String {
    fx.sandbox
        .options()
        .client_secret
        .expose_secret()
        .to_string()
}

fn token_form(fx: &Fixture, scope: &str) -> String {
    let opts = fx.sandbox.options();
    form(&[
        ("client_id", &opts.client_id),
        ("client_secret", &secret(fx)),
        ("scope", scope),
        ("grant_type", "client_credentials"),
    ])
}

pub(super) async fn token_for(fx: &Fixture, scope: &str) -> String {
    let tenant = fx.sandbox.options().tenant.clone();
    let reply = post_token(fx, &tenant, &token_form(fx, scope), "").await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    reply.json["access_token"].as_str().unwrap().to_string()
}

pub(super) async fn token(fx: &Fixture) -> String {
    token_for(fx, "https://outlook.office365.com/.default").await
}

fn jwt_payload(token: &str) -> serde_json::Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn error_code(reply: &HttpReply) -> (u16, String, u64) {
    (
        reply.status,
        reply.json["error"].as_str().unwrap_or_default().to_string(),
        reply.json["error_codes"][0].as_u64().unwrap_or_default(),
    )
}

// ---------------------------------------------------------------------------------------
// Token endpoint

#[tokio::test]
async fn token_success_has_entra_shape_and_v1_claims() {
    let fx = start().await;
    let tenant = fx.sandbox.options().tenant.clone();
    let reply = post_token(
        &fx,
        &tenant,
        &token_form(&fx, "https://outlook.office365.com/.default"),
        "",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(reply.head.contains("Content-Type: application/json"));
    assert_eq!(reply.json["token_type"], "Bearer");
    assert_eq!(reply.json["expires_in"], 3599);
    assert_eq!(reply.json["ext_expires_in"], 3599);
    let token = reply.json["access_token"].as_str().unwrap();
    assert!(token.starts_with("eyJ0eXAiOiJKV1Qi"), "{token}");
    let header: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "RS256");
    assert!(header["x5t"].is_string());
    let claims = jwt_payload(token);
    assert_eq!(claims["aud"], "https://outlook.office365.com");
    assert_eq!(claims["iss"], format!("https://sts.windows.net/{tenant}/"));
    assert_eq!(claims["tid"], tenant.as_str());
    assert_eq!(claims["appid"], fx.sandbox.options().client_id.as_str());
    assert_eq!(claims["roles"], serde_json::json!(["SMTP.SendAsApp"]));
    assert_eq!(claims["ver"], "1.0");
    assert!(claims["oid"].is_string());
    assert!(claims.get("upn").is_none() && claims.get("scp").is_none());
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 3599 + 300);
    assert!(claims["nbf"].as_u64().unwrap() <= super::clock::unix_now());
    assert_eq!(fx.sandbox.token_requests(), 1);
    assert_eq!(fx.sandbox.tokens_issued(), 1);

    // Two tokens are never the same.
    assert_ne!(
        token,
        token_for(&fx, "https://outlook.office.com/.default").await
    );
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn token_errors_mimic_entra() {
    let fx = start().await;
    let opts = fx.sandbox.options().clone();
    let tenant = opts.tenant.as_str();
    let good = secret(&fx);
    let exo = "https://outlook.office365.com/.default";
    let body = |id: &str, secret: Option<&str>, scope: &str, grant: &str| {
        let mut pairs = vec![("client_id", id), ("scope", scope), ("grant_type", grant)];
        if let Some(secret) = secret {
            pairs.push(("client_secret", secret));
        }
        form(&pairs)
    };
    let cid = opts.client_id.as_str();
    let cases: Vec<(&str, String, (u16, &str, u64))> = vec![
        (
            "contoso.onmicrosoft.com",
            body(cid, Some(&good), exo, "client_credentials"),
            (400, "invalid_request", 90002),
        ),
        (
            "common",
            body(cid, Some(&good), exo, "client_credentials"),
            (400, "invalid_request", 50194),
        ),
        (
            "organizations",
            body(cid, Some(&good), exo, "client_credentials"),
            (400, "invalid_request", 50194),
        ),
        (
            tenant,
            body(
                "99999999-bbbb-cccc-dddd-eeeeeeeeeeee",
                Some(&good),
                exo,
                "client_credentials",
            ),
            (400, "unauthorized_client", 700016),
        ),
        (
            tenant,
            body(cid, None, exo, "client_credentials"),
            (401, "invalid_client", 7000218),
        ),
        (
            tenant,
            body(
                cid,
                Some("abc8Q~wrongwrongwrongwrongwrongwrongwron"),
                exo,
                "client_credentials",
            ),
            (401, "invalid_client", 7000215),
        ),
        (
            tenant,
            body(
                cid,
                Some("0f0f0f0f-1111-2222-3333-444444444444"),
                exo,
                "client_credentials",
            ),
            (401, "invalid_client", 7000215),
        ),
        (
            tenant,
            body(
                cid,
                Some(&good),
                "https://outlook.office365.com/SMTP.SendAsApp",
                "client_credentials",
            ),
            (400, "invalid_scope", 1002012),
        ),
        (
            tenant,
            body(
                cid,
                Some(&good),
                "https://example.com/.default",
                "client_credentials",
            ),
            (400, "invalid_scope", 70011),
        ),
        (
            tenant,
            body(cid, Some(&good), exo, "authorization_code"),
            (400, "unsupported_grant_type", 70003),
        ),
    ];
    let n = cases.len() as u64;
    for (tenant, body, (status, error, code)) in cases {
        let reply = post_token(&fx, tenant, &body, "").await;
        assert_eq!(
            error_code(&reply),
            (status, error.to_string(), code),
            "tenant {tenant}, body {body}: {}",
            reply.json
        );
        let description = reply.json["error_description"].as_str().unwrap();
        assert!(
            description.starts_with(&format!("AADSTS{code}: ")),
            "{description}"
        );
        assert!(description.contains("\r\nTrace ID: "), "{description}");
        assert!(
            description.contains("\r\nCorrelation ID: "),
            "{description}"
        );
        assert!(description.contains("\r\nTimestamp: "), "{description}");
        assert!(reply.json["trace_id"].is_string());
        assert!(reply.json["correlation_id"].is_string());
        assert!(reply.json["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(
            reply.json["error_uri"],
            format!("https://login.microsoftonline.com/error?code={code}")
        );
        // The secret never appears in an error body.
        assert!(!reply.json.to_string().contains(&good));
    }
    let reply = post_token(
        &fx,
        tenant,
        &body(cid, Some("x"), exo, "client_credentials"),
        "client-request-id: 01234567-89ab-cdef-0123-456789abcdef\r\n",
    )
    .await;
    assert_eq!(
        reply.json["correlation_id"],
        "01234567-89ab-cdef-0123-456789abcdef"
    );
    assert_eq!(fx.sandbox.token_requests(), n + 1);
    assert_eq!(fx.sandbox.tokens_issued(), 0);
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn token_accepts_client_secret_basic() {
    let fx = start().await;
    let opts = fx.sandbox.options().clone();
    let basic = STANDARD.encode(format!(
        "{}:{}",
        urlencode(&opts.client_id),
        urlencode(&secret(&fx))
    ));
    let body = form(&[
        ("scope", "https://outlook.office365.com/.default"),
        ("grant_type", "client_credentials"),
    ]);
    let reply = post_token(
        &fx,
        &opts.tenant,
        &body,
        &format!("Authorization: Basic {basic}\r\n"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn token_endpoint_rejects_get_and_unknown_paths() {
    let fx = start().await;
    let tenant = fx.sandbox.options().tenant.clone();
    let reply = https(
        &fx,
        format!("GET /{tenant}/oauth2/v2.0/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(error_code(&reply), (400, "invalid_request".into(), 900561));
    let reply = https(
        &fx,
        "GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert_eq!(reply.status, 404);
    assert_eq!(fx.sandbox.token_requests(), 0);
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn token_failure_injection() {
    let fx = start().await;
    let tenant = fx.sandbox.options().tenant.clone();
    let body = token_form(&fx, "https://outlook.office365.com/.default");

    fx.sandbox
        .set_token_failure(Some(TokenFailure::Unavailable503));
    let reply = post_token(&fx, &tenant, &body, "").await;
    assert_eq!(reply.status, 503);
    assert!(reply.head.contains("\r\nRetry-After: 1"), "{}", reply.head);
    assert_eq!(
        reply.json,
        serde_json::json!({"error": "temporarily_unavailable"})
    );

    fx.sandbox.set_token_failure(Some(TokenFailure::TooMany429));
    let reply = post_token(&fx, &tenant, &body, "").await;
    assert_eq!(reply.status, 429);
    assert!(reply.head.contains("\r\nRetry-After: 1"), "{}", reply.head);

    fx.sandbox
        .set_token_failure(Some(TokenFailure::InvalidClient));
    let reply = post_token(&fx, &tenant, &body, "").await;
    assert_eq!(error_code(&reply), (401, "invalid_client".into(), 7000215));

    fx.sandbox
        .set_token_failure(Some(TokenFailure::SecretExpired));
    let reply = post_token(&fx, &tenant, &body, "").await;
    assert_eq!(error_code(&reply), (401, "invalid_client".into(), 7000222));

    fx.sandbox.set_token_failure(None);
    let reply = post_token(&fx, &tenant, &body, "").await;
    assert_eq!(reply.status, 200);
    assert_eq!(fx.sandbox.token_requests(), 5);
    assert_eq!(fx.sandbox.tokens_issued(), 1);
    fx.sandbox.shutdown().await;
}

/// The relay fetches tokens with reqwest over the same TLS configuration; check that pairing
/// (ALPN, keep-alive, form body) works end to end.
#[tokio::test]
async fn reqwest_with_the_relay_tls_config_gets_a_token() {
    let fx = start().await;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured((*fx.client).clone())
        .build()
        .unwrap();
    let opts = fx.sandbox.options();
    let url = format!(
        "{}/{}/oauth2/v2.0/token",
        fx.sandbox.authority(),
        opts.tenant
    );
    assert_eq!(url, fx.sandbox.token_url());
    let secret = secret(&fx);
    for _ in 0..2 {
        let response = client
            .post(&url)
            .form(&[
                ("client_id", opts.client_id.as_str()),
                ("client_secret", secret.as_str()),
                ("scope", "https://outlook.office365.com/.default"),
                ("grant_type", "client_credentials"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let json: serde_json::Value = response.json().await.unwrap();
        assert!(json["access_token"].is_string());
    }
    assert_eq!(fx.sandbox.tokens_issued(), 2);
    fx.sandbox.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// SMTP helpers

pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub(super) struct Client {
    io: Option<Box<dyn Io>>,
    tcp: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Client {
    pub(super) async fn connect(fx: &Fixture) -> (Client, String) {
        let tcp = TcpStream::connect(fx.sandbox.smtp_addr()).await.unwrap();
        let mut client = Client {
            io: None,
            tcp: Some(tcp),
            buf: Vec::new(),
        };
        let greeting = client.reply().await;
        (client, greeting)
    }

    fn stream(&mut self) -> &mut (dyn Io + 'static) {
        match (&mut self.io, &mut self.tcp) {
            (Some(io), _) => io.as_mut(),
            (None, Some(tcp)) => tcp,
            (None, None) => unreachable!("no stream"),
        }
    }

    pub(super) async fn send(&mut self, bytes: &[u8]) {
        let stream = self.stream();
        stream.write_all(bytes).await.unwrap();
        stream.flush().await.unwrap();
    }

    /// Reads one reply (all lines); returns its lines joined by '\n'.
    pub(super) async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let pos = loop {
                if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break pos;
                }
                let mut chunk = [0u8; 4096];
                let n =
                    tokio::time::timeout(Duration::from_secs(20), self.stream().read(&mut chunk))
                        .await
                        .expect("reply timed out")
                        .unwrap_or(0);
                assert!(n > 0, "connection closed; got so far: {lines:?}");
                self.buf.extend_from_slice(&chunk[..n]);
            };
            let line = String::from_utf8(self.buf[..pos].to_vec()).unwrap();
            self.buf.drain(..pos + 2);
            let last = line.len() < 4 || line.as_bytes()[3] == b' ';
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    pub(super) async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    pub(super) async fn starttls(&mut self, fx: &Fixture) {
        assert_eq!(self.cmd("STARTTLS").await, "220 2.0.0 SMTP server ready");
        assert!(self.buf.is_empty());
        let tcp = self.tcp.take().unwrap();
        let connector = tokio_rustls::TlsConnector::from(fx.client.clone());
        let tls = connector
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .expect("TLS handshake with the sandbox certificate");
        self.io = Some(Box::new(tls));
    }

    /// True if the server closed the connection (reads to EOF or error), with no reply.
    pub(super) async fn closed_without_reply(&mut self) -> bool {
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            self.stream().read_to_end(&mut rest),
        )
        .await
        .expect("server did not close");
        self.buf.is_empty() && rest.is_empty()
    }
}

pub(super) fn xoauth2(user: &str, token: &str) -> String {
    secrecy::ExposeSecret::expose_secret(&crate::wire::xoauth2::encode(user, token)).to_string()
}

/// Connects, upgrades to TLS and says EHLO; returns the client and the EHLO reply.
pub(super) async fn tls_session(fx: &Fixture) -> (Client, String) {
    let (mut c, _) = Client::connect(fx).await;
    assert!(c.cmd("EHLO app.example").await.starts_with("250-"));
    c.starttls(fx).await;
    let ehlo = c.cmd("EHLO app.example").await;
    (c, ehlo)
}

pub(super) async fn authed_session(fx: &Fixture, token: &str) -> Client {
    let (mut c, _) = tls_session(fx).await;
    let reply = c
        .cmd(&format!("AUTH XOAUTH2 {}", xoauth2(MAILBOX, token)))
        .await;
    assert_eq!(reply, "235 2.7.0 Authentication successful");
    c
}

/// Sends one message with DATA; returns the final reply.
pub(super) async fn send_message(c: &mut Client, rcpts: &[&str], body: &[u8]) -> String {
    assert_eq!(
        c.cmd(&format!("MAIL FROM:<{MAILBOX}>")).await,
        "250 2.1.0 Sender OK"
    );
    for rcpt in rcpts {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<{rcpt}>")).await,
            "250 2.1.5 Recipient OK"
        );
    }
    assert_eq!(
        c.cmd("DATA").await,
        "354 Start mail input; end with <CRLF>.<CRLF>"
    );
    c.send(body).await;
    c.send(b".\r\n").await;
    c.reply().await
}

// ---------------------------------------------------------------------------------------
// SMTP

#[tokio::test]
async fn smtp_happy_path_matches_exchange_transcript() {
    let fx = start().await;
    let token = token(&fx).await;
    let (mut c, greeting) = Client::connect(&fx).await;
    assert!(
        greeting.starts_with(
            "220 sandbox.outlook.office365.com Microsoft ESMTP MAIL Service ready at "
        ),
        "{greeting}"
    );
    assert!(greeting.contains(" +0000 ["), "{greeting}");
    let before = c.cmd("EHLO app.example").await;
    assert_eq!(
        before,
        "250-sandbox.outlook.office365.com Hello [127.0.0.1]\n250-SIZE 157286400\n\
         250-PIPELINING\n250-DSN\n250-ENHANCEDSTATUSCODES\n250-STARTTLS\n250-8BITMIME\n\
         250-BINARYMIME\n250-CHUNKING\n250 SMTPUTF8"
    );
    c.starttls(&fx).await;
    let after = c.cmd("EHLO app.example").await;
    assert_eq!(
        after,
        "250-sandbox.outlook.office365.com Hello [127.0.0.1]\n250-SIZE 157286400\n\
         250-PIPELINING\n250-DSN\n250-ENHANCEDSTATUSCODES\n250-AUTH LOGIN XOAUTH2\n\
         250-8BITMIME\n250-BINARYMIME\n250-CHUNKING\n250 SMTPUTF8"
    );
    assert_eq!(
        c.cmd(&format!("AUTH XOAUTH2 {}", xoauth2(MAILBOX, &token)))
            .await,
        "235 2.7.0 Authentication successful"
    );
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    let body =
        b"From: <relay@sandbox.example>\r\nTo: <a@b.example>\r\nSubject: hi\r\n\r\nHello.\r\n";
    let reply = send_message(&mut c, &["a@b.example", "c@d.example"], body).await;
    assert!(
        reply.starts_with("250 2.0.0 OK <")
            && reply.ends_with("@sandbox.prod.outlook.com> [Hostname=SANDBOX01.prod.outlook.com]"),
        "{reply}"
    );
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 Resetting");
    assert_eq!(
        c.cmd("QUIT").await,
        "221 2.0.0 Service closing transmission channel"
    );

    let messages = fx.sandbox.messages();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert!(reply.contains(&format!("<{}@", m.id)));
    assert_eq!(m.data, body);
    assert_eq!(m.envelope.mail_from, MAILBOX);
    assert_eq!(m.envelope.rcpt_to, vec!["a@b.example", "c@d.example"]);
    assert_eq!(m.envelope.auth_user, MAILBOX);
    assert_eq!(m.envelope.size, body.len() as u64);
    assert!(m.envelope.received_at.ends_with('Z'));
    assert_eq!(fx.sandbox.auth_attempts(), 1);
    assert_eq!(fx.sandbox.auth_failures(), 0);
    assert_eq!(fx.sandbox.peak_sessions(MAILBOX), 1);
    assert_eq!(fx.sandbox.peak_sessions("RELAY@SANDBOX.EXAMPLE"), 1);
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn smtp_auth_continuation_form_and_long_lines() {
    let fx = start().await;
    let token = token(&fx).await;
    let (mut c, _) = tls_session(&fx).await;
    // An AUTH line far beyond smtp-proto's 4 KiB command cap is still read and judged.
    let junk = STANDARD.encode(vec![b'x'; 6000]);
    let reply = c.cmd(&format!("AUTH XOAUTH2 {junk}")).await;
    assert!(
        reply.starts_with("535 5.7.3 Authentication unsuccessful [sandbox.outlook.office365.com "),
        "{reply}"
    );
    // Two-step form, lower-case as in Microsoft's sample.
    assert_eq!(c.cmd("auth xoauth2").await, "334 ");
    assert_eq!(
        c.cmd(&xoauth2("Relay@Sandbox.Example", &token)).await,
        "235 2.7.0 Authentication successful"
    );
    assert_eq!(
        c.cmd(&format!("AUTH XOAUTH2 {}", xoauth2(MAILBOX, &token)))
            .await,
        "503 5.5.2 Already authenticated"
    );
    // A plain command line over 4 KiB is refused and the session closed.
    let reply = c.cmd(&format!("NOOP {}", "x".repeat(5000))).await;
    assert_eq!(reply, "500 5.5.6 Line too long");
    assert_eq!(fx.sandbox.auth_attempts(), 2);
    assert_eq!(fx.sandbox.auth_failures(), 1);
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn smtp_before_starttls() {
    let fx = start().await;
    let (mut c, _) = Client::connect(&fx).await;
    assert_eq!(
        c.cmd("MAIL FROM:<relay@sandbox.example>").await,
        "530 5.7.0 Must issue a STARTTLS command first"
    );
    c.cmd("EHLO app.example").await;
    assert_eq!(
        c.cmd("MAIL FROM:<relay@sandbox.example>").await,
        "530 5.7.0 Must issue a STARTTLS command first"
    );
    assert_eq!(
        c.cmd("RCPT TO:<a@b.example>").await,
        "530 5.7.0 Must issue a STARTTLS command first"
    );
    assert!(c
        .cmd("AUTH XOAUTH2 abc")
        .await
        .starts_with("504 5.7.4 Unrecognized authentication type"));
    assert!(c
        .cmd("AUTH LOGIN")
        .await
        .starts_with("504 5.7.4 Unrecognized authentication type"));
    c.starttls(&fx).await;
    c.cmd("EHLO app.example").await;
    assert_eq!(
        c.cmd("STARTTLS").await,
        "503 5.5.2 Only one STARTTLS command can be issued per session"
    );
    assert!(c
        .cmd("AUTH PLAIN AGEAYg==")
        .await
        .starts_with("504 5.7.4 Unrecognized authentication type"));
    assert_eq!(
        c.cmd("MAIL FROM:<relay@sandbox.example>").await,
        "530 5.7.57 SMTP; Client was not authenticated to send anonymous mail during MAIL FROM [sandbox.outlook.office365.com]"
    );
    assert_eq!(fx.sandbox.auth_attempts(), 0);
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn smtp_plaintext_pipelined_after_starttls_is_discarded() {
    let fx = start().await;
    let (mut c, _) = Client::connect(&fx).await;
    c.cmd("EHLO app.example").await;
    // STARTTLS command injection: the NOOP must not be answered inside TLS.
    c.send(b"STARTTLS\r\nNOOP\r\n").await;
    assert_eq!(c.reply().await, "220 2.0.0 SMTP server ready");
    let tcp = c.tcp.take().unwrap();
    let tls = tokio_rustls::TlsConnector::from(fx.client.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    c.io = Some(Box::new(tls));
    assert!(c.cmd("EHLO app.example").await.starts_with("250-"));
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn smtp_rejects_bad_revoked_expired_and_graph_tokens() {
    let fx = start_with(|o| {
        o.mailboxes.push("off@sandbox.example".into());
        o.smtp_auth_disabled.push("OFF@sandbox.example".into());
    })
    .await;
    let good = token(&fx).await;
    let graph = token_for(&fx, "https://graph.microsoft.com/.default").await;
    let graph_claims = jwt_payload(&graph);
    assert_eq!(graph_claims["aud"], "https://graph.microsoft.com");
    assert_eq!(graph_claims["roles"], serde_json::json!(["Mail.Send"]));

    let (mut c, _) = tls_session(&fx).await;
    let is_535 =
        |r: &str| r.starts_with("535 5.7.3 Authentication unsuccessful [") && r.ends_with(']');
    for (user, token) in [
        (MAILBOX, "not-a-token"),
        (MAILBOX, graph.as_str()),
        ("other@sandbox.example", good.as_str()),
    ] {
        let reply = c
            .cmd(&format!("AUTH XOAUTH2 {}", xoauth2(user, token)))
            .await;
        assert!(is_535(&reply), "{user}: {reply}");
    }
    let reply = c.cmd("AUTH XOAUTH2 bm90IHhvYXV0aDI=").await;
    assert!(is_535(&reply), "{reply}");
    let reply = c
        .cmd(&format!(
            "AUTH XOAUTH2 {}",
            xoauth2("off@sandbox.example", &good)
        ))
        .await;
    assert_eq!(
        reply,
        "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information."
    );
    // Basic auth is walked through and refused.
    assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(c.cmd("cmVsYXk=").await, "334 UGFzc3dvcmQ6");
    assert!(c.cmd("cGFzcw==").await.starts_with("535 5.7.139 "));

    fx.sandbox.revoke_tokens();
    let reply = c
        .cmd(&format!("AUTH XOAUTH2 {}", xoauth2(MAILBOX, &good)))
        .await;
    assert!(is_535(&reply), "{reply}");
    // A fresh token works again.
    let fresh = token(&fx).await;
    let reply = c
        .cmd(&format!("AUTH XOAUTH2 {}", xoauth2(MAILBOX, &fresh)))
        .await;
    assert_eq!(reply, "235 2.7.0 Authentication successful");
    assert_eq!(fx.sandbox.auth_attempts(), 8);
    assert_eq!(fx.sandbox.auth_failures(), 7);
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn smtp_rejects_an_expired_token() {
    let fx = start_with(|o| o.token_lifetime = Duration::ZERO).await;
    let token = token(&fx).await;
    let (mut c, _) = tls_session(&fx).await;
    let reply = c
        .cmd(&format!("AUTH XOAUTH2 {}", xoauth2(MAILBOX, &token)))
        .await;
    assert!(reply.starts_with("535 5.7.3 "), "{reply}");
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn smtp_sender_must_be_the_authenticated_mailbox() {
    let fx = start().await;
    let token = token(&fx).await;
    let mut c = authed_session(&fx, &token).await;
    assert_eq!(
        c.cmd("MAIL FROM:<someone.else@sandbox.example>").await,
        "550 5.7.60 SMTP; Client does not have permissions to send as this sender"
    );
    assert_eq!(
        c.cmd("RCPT TO:<a@b.example>").await,
        "503 5.5.2 Need mail command"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<RELAY@sandbox.example> SIZE=1000").await,
        "250 2.1.0 Sender OK"
    );
    assert_eq!(c.cmd("DATA").await, "503 5.5.2 Need rcpt command");
    assert_eq!(
        c.cmd("MAIL FROM:<relay@sandbox.example>").await,
        "503 5.5.2 Sender already specified"
    );
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 Resetting");
    assert_eq!(
        c.cmd("MAIL FROM:<relay@sandbox.example> SIZE=200000000")
            .await,
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn smtp_dot_unstuffing_is_byte_exact() {
    let fx = start().await;
    let token = token(&fx).await;
    let mut c = authed_session(&fx, &token).await;
    // Wire form (dot-stuffed) -> stored form.
    let cases: [(&[u8], &[u8]); 4] = [
        (
            b"..starts with a dot\r\nx\r\n",
            b".starts with a dot\r\nx\r\n",
        ),
        (b"", b""),
        (b"a\r\n..\r\n...b\r\n\r\n", b"a\r\n.\r\n..b\r\n\r\n"),
        // A bare LF before a dot does not end the message (no SMTP smuggling).
        (b"a\n.\nb\r\n", b"a\n.\nb\r\n"),
    ];
    for (wire, _) in &cases {
        let reply = send_message(&mut c, &["a@b.example"], wire).await;
        assert!(reply.starts_with("250 2.0.0 OK"), "{reply}");
    }
    let stored = fx.sandbox.messages();
    assert_eq!(stored.len(), cases.len());
    for (message, (_, expected)) in stored.iter().zip(cases.iter()) {
        assert_eq!(
            String::from_utf8_lossy(&message.data),
            String::from_utf8_lossy(expected)
        );
        assert_eq!(message.envelope.size, expected.len() as u64);
    }
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn smtp_large_body_in_small_writes() {
    let fx = start().await;
    let token = token(&fx).await;
    let mut c = authed_session(&fx, &token).await;
    let mut body = Vec::new();
    for i in 0..20_000 {
        body.extend_from_slice(
            format!("line {i} ........................................\r\n").as_bytes(),
        );
    }
    c.cmd(&format!("MAIL FROM:<{MAILBOX}>")).await;
    c.cmd("RCPT TO:<a@b.example>").await;
    assert!(c.cmd("DATA").await.starts_with("354 "));
    // Odd-sized writes so chunk boundaries fall inside "\r\n.\r\n".
    let mut wire = body.clone();
    wire.extend_from_slice(b".\r\n");
    for chunk in wire.chunks(7919) {
        c.send(chunk).await;
    }
    assert!(c.reply().await.starts_with("250 2.0.0 OK"));
    let stored = fx.sandbox.messages();
    assert_eq!(stored[0].data.len(), body.len());
    assert!(stored[0].data == body);
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn smtp_pipelined_commands_are_answered_in_order() {
    let fx = start().await;
    let token = token(&fx).await;
    let mut c = authed_session(&fx, &token).await;
    c.send(
        format!("MAIL FROM:<{MAILBOX}>\r\nRCPT TO:<a@b.example>\r\nRCPT TO:<rcpt-perm@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(c.reply().await, "250 2.1.0 Sender OK");
    assert_eq!(c.reply().await, "250 2.1.5 Recipient OK");
    assert!(c.reply().await.starts_with("550 5.1.10 "));
    assert_eq!(c.reply().await, "250 2.1.5 Recipient OK");
    assert!(c.reply().await.starts_with("354 "));
    c.send(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nNOOP\r\nQUIT\r\n")
        .await;
    assert!(c.reply().await.starts_with("250 2.0.0 OK"));
    assert_eq!(c.reply().await, "250 2.0.0 OK");
    assert!(c.reply().await.starts_with("221 "));
    let stored = fx.sandbox.messages();
    assert_eq!(
        stored[0].envelope.rcpt_to,
        vec!["a@b.example", "c@d.example"]
    );
    assert_eq!(stored[0].data, b"Subject: pipelined\r\n\r\nbody\r\n");
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn smtp_bdat_chunks_are_stored_byte_exact() {
    let fx = start().await;
    let token = token(&fx).await;
    let mut c = authed_session(&fx, &token).await;
    c.cmd(&format!("MAIL FROM:<{MAILBOX}>")).await;
    c.cmd("RCPT TO:<a@b.example>").await;
    let first = b"Subject: chunks\r\n\r\n.line with dot\r\n";
    let second = b"end\r\n";
    c.send(format!("BDAT {}\r\n", first.len()).as_bytes()).await;
    c.send(first).await;
    assert_eq!(
        c.reply().await,
        format!("250 2.0.0 {} bytes received", first.len())
    );
    assert_eq!(c.cmd("DATA").await, "503 5.5.1 Bad sequence of commands");
    c.send(format!("BDAT {} LAST\r\n", second.len()).as_bytes())
        .await;
    c.send(second).await;
    assert!(c.reply().await.starts_with("250 2.0.0 OK"));
    let stored = fx.sandbox.messages();
    assert_eq!(stored[0].data, [&first[..], &second[..]].concat());
    // BDAT without a transaction: the chunk is skipped and refused.
    c.send(b"BDAT 5 LAST\r\nhello").await;
    assert_eq!(c.reply().await, "503 5.5.1 Bad sequence of commands");
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn smtp_concurrency_limit_per_mailbox() {
    let fx = start().await;
    let token = token(&fx).await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let mut c = authed_session(&fx, &token).await;
        assert_eq!(
            c.cmd(&format!("MAIL FROM:<{MAILBOX}>")).await,
            "250 2.1.0 Sender OK"
        );
        sessions.push(c);
    }
    let mut fourth = authed_session(&fx, &token).await;
    assert_eq!(
        fourth.cmd(&format!("MAIL FROM:<{MAILBOX}>")).await,
        "432 4.3.2 Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending for more information."
    );
    assert_eq!(fx.sandbox.peak_sessions(MAILBOX), 4);
    // When one session leaves, the fourth may send.
    let mut first = sessions.remove(0);
    first.cmd("QUIT").await;
    assert!(first.closed_without_reply().await);
    let mut accepted = false;
    for _ in 0..100 {
        let reply = fourth.cmd(&format!("MAIL FROM:<{MAILBOX}>")).await;
        if reply == "250 2.1.0 Sender OK" {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(accepted);
    assert_eq!(fx.sandbox.peak_sessions(MAILBOX), 4);
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn smtp_no_concurrency_limit_when_zero() {
    let fx = start_with(|o| o.max_connections_per_mailbox = 0).await;
    let token = token(&fx).await;
    let mut sessions = Vec::new();
    for _ in 0..5 {
        let mut c = authed_session(&fx, &token).await;
        assert_eq!(
            c.cmd(&format!("MAIL FROM:<{MAILBOX}>")).await,
            "250 2.1.0 Sender OK"
        );
        sessions.push(c);
    }
    assert_eq!(fx.sandbox.peak_sessions(MAILBOX), 5);
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn smtp_fault_scripts() {
    let fx = start().await;
    let token = token(&fx).await;
    let mut c = authed_session(&fx, &token).await;
    c.cmd(&format!("MAIL FROM:<{MAILBOX}>")).await;
    assert_eq!(
        c.cmd("RCPT TO:<rcpt-perm@x.example>").await,
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"
    );
    assert_eq!(
        c.cmd("RCPT TO:<Rcpt-Temp@y.example>").await,
        "451 4.4.0 Temporary server error. Please try again later"
    );
    c.cmd("RSET").await;

    let body = b"From: \"Boss\" <boss@sandbox.example>\r\nSubject: x\r\n\r\nhi\r\n";
    let reply = send_message(&mut c, &["a@b.example", "data-perm@x.example"], body).await;
    assert_eq!(reply, "554 5.6.0 Invalid message content");
    let reply = send_message(
        &mut c,
        &["data-temp@x.example", "data-perm@x.example"],
        body,
    )
    .await;
    assert_eq!(reply, "451 4.7.500 Access denied, please try again later");
    let reply = send_message(&mut c, &["sendas-denied@x.example"], body).await;
    assert_eq!(
        reply,
        "554 5.2.252 SendAsDenied; relay@sandbox.example not allowed to send as boss@sandbox.example; STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; Failed to process message due to a permanent exception"
    );
    assert!(fx.sandbox.messages().is_empty());

    let started = std::time::Instant::now();
    let reply = send_message(&mut c, &["slow-1@x.example"], body).await;
    assert!(reply.starts_with("250 2.0.0 OK"), "{reply}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(fx.sandbox.messages().len(), 1);

    // drop-after-dot: no reply, nothing stored.
    c.cmd(&format!("MAIL FROM:<{MAILBOX}>")).await;
    c.cmd("RCPT TO:<drop-after-dot@x.example>").await;
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(b"hi\r\n.\r\n").await;
    assert!(c.closed_without_reply().await);

    // drop-data: closed during the body.
    let mut c = authed_session(&fx, &token).await;
    c.cmd(&format!("MAIL FROM:<{MAILBOX}>")).await;
    c.cmd("RCPT TO:<a@b.example>").await;
    c.cmd("RCPT TO:<drop-data@x.example>").await;
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(b"Subject: partial\r\n").await;
    assert!(c.closed_without_reply().await);

    assert_eq!(fx.sandbox.messages().len(), 1);
    let leftovers = std::fs::read_dir(&fx.sandbox.options().store_dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    assert_eq!(leftovers, 0);
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_sessions_in_flight() {
    let fx = start().await;
    let token = token(&fx).await;
    let mut c = authed_session(&fx, &token).await;
    c.cmd(&format!("MAIL FROM:<{MAILBOX}>")).await;
    c.cmd("RCPT TO:<slow-600@x.example>").await;
    c.cmd("DATA").await;
    c.send(b"hi\r\n.\r\n").await;
    // Counted at the final dot, before the slow script starts sitting on the message.
    until("the slow body to be counted", || {
        fx.sandbox.bodies_received() == 1
    })
    .await;
    let addr = fx.sandbox.smtp_addr();
    tokio::time::timeout(Duration::from_secs(5), fx.sandbox.shutdown())
        .await
        .expect("shutdown must not wait for the slow script");
    assert!(c.reply().await.starts_with("421 4.3.2 "));
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn wait_for_messages_returns_when_enough_arrived() {
    let fx = start().await;
    let empty = fx
        .sandbox
        .wait_for_messages(1, Duration::from_millis(50))
        .await;
    assert!(empty.is_empty());
    let token = token(&fx).await;
    let mut c = authed_session(&fx, &token).await;
    let reply = send_message(&mut c, &["a@b.example"], b"x\r\n").await;
    assert!(reply.starts_with("250 "));
    let got = fx
        .sandbox
        .wait_for_messages(1, Duration::from_secs(5))
        .await;
    assert_eq!(got.len(), 1);
    fx.sandbox.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Events for tests that wait instead of sleeping

/// Polls `cond` every 10 ms; panics naming `what` after 10 s.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn held_token_requests_are_counted_at_once_and_answered_on_release() {
    let fx = start().await;
    fx.sandbox.hold_token_requests();
    {
        let request = token(&fx);
        tokio::pin!(request);
        let counted = tokio::select! {
            t = &mut request => panic!("a held request was answered: {t}"),
            n = fx.sandbox.wait_for_token_requests(1, Duration::from_secs(10)) => n,
        };
        assert_eq!(counted, 1);
        assert_eq!(fx.sandbox.tokens_issued(), 0, "held: nothing issued");
        fx.sandbox.release_token_requests();
        let t = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .expect("answered once released");
        assert!(t.starts_with("eyJ"), "{t}");
    }
    assert_eq!(fx.sandbox.tokens_issued(), 1);
    // Released for good: the next request is answered as usual.
    token(&fx).await;
    assert_eq!(fx.sandbox.token_requests(), 2);
    // Not enough requests: returns the count when the time is up.
    assert_eq!(
        fx.sandbox
            .wait_for_token_requests(3, Duration::from_millis(50))
            .await,
        2
    );

    // A request still held at shutdown does not keep the sandbox from stopping.
    fx.sandbox.hold_token_requests();
    let (addr, client) = (fx.sandbox.token_addr(), fx.client.clone());
    let tenant = fx.sandbox.options().tenant.clone();
    let body = token_form(&fx, "https://outlook.office365.com/.default");
    let held = tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .unwrap();
        let request = format!(
            "POST /{tenant}/oauth2/v2.0/token HTTP/1.1\r\nHost: x\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let _ = tls.read_to_end(&mut raw).await;
        raw
    });
    assert_eq!(
        fx.sandbox
            .wait_for_token_requests(3, Duration::from_secs(10))
            .await,
        3
    );
    tokio::time::timeout(Duration::from_secs(5), fx.sandbox.shutdown())
        .await
        .expect("shutdown does not wait for a held token request");
    let raw = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the held request's connection ends")
        .unwrap();
    assert!(
        raw.is_empty(),
        "no answer: {}",
        String::from_utf8_lossy(&raw)
    );
}

#[tokio::test]
async fn bodies_sessions_and_connections_are_counted() {
    let fx = start().await;
    let token = token(&fx).await;
    let sb = &fx.sandbox;
    assert_eq!(sb.smtp_connections_open(), 0);
    let (mut plain, _) = Client::connect(&fx).await;
    until("one open connection", || sb.smtp_connections_open() == 1).await;
    assert_eq!(sb.active_sessions(MAILBOX), 0, "not authenticated yet");
    let mut c = authed_session(&fx, &token).await;
    assert_eq!(sb.smtp_connections_open(), 2);
    assert_eq!(sb.active_sessions("RELAY@sandbox.example"), 1);

    // A refused body is counted too: the count is of ends of data, whatever the reply.
    let reply = send_message(&mut c, &["data-perm@x.example"], b"x\r\n").await;
    assert!(reply.starts_with("554 "), "{reply}");
    assert_eq!(sb.bodies_received(), 1);
    assert_eq!(sb.message_count(), 0);

    // A slow message is counted while the sandbox still sits on it.
    c.cmd(&format!("MAIL FROM:<{MAILBOX}>")).await;
    c.cmd("RCPT TO:<slow-600@x.example>").await;
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(b"hi\r\n.\r\n").await;
    until("the slow body to be counted", || sb.bodies_received() == 2).await;
    assert_eq!(sb.message_count(), 0, "600 s from being stored");

    assert_eq!(
        plain.cmd("QUIT").await,
        "221 2.0.0 Service closing transmission channel"
    );
    drop(plain);
    until("the plain connection to end", || {
        sb.smtp_connections_open() == 1
    })
    .await;
    assert_eq!(sb.active_sessions(MAILBOX), 1);
    fx.sandbox.shutdown().await;
}
