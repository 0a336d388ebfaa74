//! Compatibility suite, the safe door (issue 13): real clients that speak STARTTLS, implicit
//! TLS and AUTH to an in-process relay in front of the sandbox, and PHP's `mail()` through the
//! `sendmail` command. The plain-SMTP cases are in `compat_clients.rs`.
//!
//! The relay here has a certificate for `localhost` (written by the test, trusted by the
//! clients through a CA file and nothing else), a users file with one user, `require_auth`
//! on, and an implicit-TLS listener beside the SMTP port. AUTH is offered inside TLS only, so
//! a message in the store proves the client did TLS and AUTH; the relay's `Received:` header
//! says so too (`with ESMTPSA`: S for TLS, A for an authenticated client, RFC 3848), and every
//! case checks it besides the envelope and the message, byte for byte.
//!
//! Clients: Python `smtplib` (`starttls()` + `login()`, `SMTP_SSL`), `curl` (`smtp://` with
//! `--ssl-reqd`, `smtps://`), `swaks` (`--tls`, `--tlsc`, AUTH LOGIN and PLAIN), `msmtp`
//! (`tls_starttls` on and off), lettre in-process (`Tls::Required`, `Tls::Wrapper`), and a
//! multifunction printer's byte dialog over STARTTLS with bare-LF commands. A wrong password
//! makes each real client fail, with nothing delivered. PHP's `mail()` hands its message to a
//! symlink named `sendmail` (the relay binary), which passes it to the running relay, or
//! queues it in the spool when no relay runs.
//!
//! A missing tool skips its test with a message, unless `COMPAT_REQUIRE_TOOLS` is set
//! (`.ci/run` sets it): then it fails (`support/tools.rs`).

mod support;
#[path = "support/child.rs"]
mod child;
#[path = "support/door.rs"]
mod door;
#[path = "support/tools.rs"]
mod tools;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use smtp_oauth_relay::app::Relay;
use smtp_oauth_relay::sandbox::StoredMessage;
use support::{relay_binary, strip_received, RawClient, World, MAILBOX};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tools::{exactly, run_tool, run_tool_with_stdin, tool_available, ToolOutput};

/// The sender every client here uses.
const SENDER: &str = "app@example.com";

/// The one user in the relay's users file, and its password.
const USER: &str = "scanner01";
const PASSWORD: &str = "Tr0ub4dor-and-3";

/// A password that is not the user's.
const WRONG_PASSWORD: &str = "not-the-password";

/// How long a byte dialog waits for one reply. Only a failing case waits that long.
const REPLY_LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// The relay with its door (TLS and AUTH), and what the store must hold
// ---------------------------------------------------------------------------------------

/// A sandbox, and a relay in front of it with a certificate, one user, `require_auth` and an
/// implicit-TLS port. The relay passes the client's `MAIL FROM` upstream (so the store shows
/// what the client said), and the sandbox's mailbox may send as `@example.com` and
/// `@printers.example`.
struct Secured {
    world: World,
    relay: Relay,
    /// The relay's certificate (self-signed for `localhost`): the clients' only trust anchor.
    ca_file: PathBuf,
    ca_pem: String,
}

impl Secured {
    async fn start() -> Secured {
        let world = World::start_with(|o| {
            o.enforce_send_as = true;
            o.send_as = ["@example.com", "@printers.example"]
                .iter()
                .map(|domain| (MAILBOX.to_string(), domain.to_string()))
                .collect();
        })
        .await;
        let cert = door::write_cert(world.dir.path(), "relay");
        let users = door::write_users(world.dir.path(), &[(USER, PASSWORD, "")]);
        let (cert_file, key_file) = (
            cert.cert.display().to_string(),
            cert.key.display().to_string(),
        );
        let users = users.display().to_string();
        let implicit = "127.0.0.1:0".to_string();
        let relay = world
            .relay(&[
                ("SMTP_OAUTH_RELAY__ACCOUNT__ENVELOPE_SENDER", "client"),
                // Byte-exact checks: no Date/Message-ID added (tests/missing_headers.rs).
                ("SMTP_OAUTH_RELAY__DELIVERY__ADD_MISSING_HEADERS", "false"),
                ("SMTP_OAUTH_RELAY_INBOUND_TLS_CERT_FILE", &cert_file),
                ("SMTP_OAUTH_RELAY_INBOUND_TLS_KEY_FILE", &key_file),
                ("SMTP_OAUTH_RELAY_USERS_FILE", &users),
                ("SMTP_OAUTH_RELAY_REQUIRE_AUTH", "true"),
                ("SMTP_OAUTH_RELAY_LISTEN_TLS", &implicit),
            ])
            .await;
        Secured {
            world,
            relay,
            ca_file: cert.cert,
            ca_pem: cert.pem,
        }
    }

    /// The SMTP port (STARTTLS).
    fn smtp_port(&self) -> u16 {
        self.relay.local_addr().port()
    }

    /// The implicit-TLS port.
    fn tls_port(&self) -> u16 {
        self.relay
            .tls_addr()
            .expect("an implicit-TLS listener")
            .port()
    }

    fn ca(&self) -> String {
        self.ca_file.display().to_string()
    }

    /// Waits for `n` stored messages and proves no more come ([`exactly`]).
    async fn exactly(self, n: usize) -> Vec<StoredMessage> {
        exactly(&self.world, self.relay, n).await
    }
}

/// Checks one stored message: the envelope, the message after the relay's `Received:`
/// header exactly, and that the header says the client used TLS and AUTH.
fn assert_stored(m: &StoredMessage, rcpt_to: &[&str], data: &[u8]) {
    assert_eq!(m.envelope.mail_from, SENDER, "stored MAIL FROM");
    assert_eq!(m.envelope.rcpt_to, rcpt_to, "stored RCPT TOs, in order");
    let body = strip_received(&m.data);
    let received = String::from_utf8_lossy(&m.data[..m.data.len() - body.len()]);
    assert!(
        received.contains(" with ESMTPSA id "),
        "the Received header must say TLS and AUTH (`with ESMTPSA`): {received}"
    );
    assert_eq!(
        String::from_utf8_lossy(body),
        String::from_utf8_lossy(data),
        "stored message differs from what the client sent"
    );
    assert_eq!(body, data);
}

/// `text` with every LF turned into CRLF.
fn crlf(text: &str) -> Vec<u8> {
    text.replace('\n', "\r\n").into_bytes()
}

// ---------------------------------------------------------------------------------------
// Python smtplib
// ---------------------------------------------------------------------------------------

/// One smtplib session (argv: case, host, port, CA file, user, password): `starttls` on the
/// SMTP port or `ssl` (`SMTP_SSL`) on the implicit-TLS port, with a context that trusts only
/// the CA file and checks the name `localhost`; then `login()`, which picks its mechanism
/// from those offered, and one message. Prints JSON: what AUTH offered before and inside TLS,
/// the mechanisms `login()` tried, the TLS version. A refused login exits 3 with the code.
const PYTHON_DRIVER: &str = r#"
import json, smtplib, ssl, sys

case, host, port, cafile, user, password = sys.argv[1:7]
context = ssl.create_default_context(cafile=cafile)
tried = []

def recording(cls):
    class Recording(cls):
        def auth(self, mechanism, authobject, *, initial_response_ok=True):
            tried.append(mechanism)
            return super().auth(mechanism, authobject, initial_response_ok=initial_response_ok)
    return Recording

MESSAGE = (b"From: app@example.com\r\nTo: a@example.com\r\nSubject: smtplib in TLS\r\n"
           b"Message-ID: <smtplib-tls@compat.test>\r\n\r\n"
           b"Sent inside TLS after AUTH.\r\n.a line with a leading dot\r\nend\r\n")

plain_auth = None
if case == "starttls":
    s = recording(smtplib.SMTP)(host, int(port), timeout=30)
    s.ehlo()
    plain_auth = s.esmtp_features.get("auth")
    s.starttls(context=context)
    s.ehlo()
elif case == "ssl":
    s = recording(smtplib.SMTP_SSL)(host, int(port), context=context, timeout=30)
    s.ehlo()
else:
    sys.exit("unknown case " + case)
tls_auth = s.esmtp_features.get("auth")
version = s.sock.version()
try:
    s.login(user, password)
except smtplib.SMTPAuthenticationError as e:
    print(json.dumps({"auth_error": e.smtp_code, "tried": tried}))
    s.quit()
    sys.exit(3)
refused = s.sendmail("app@example.com", ["a@example.com", "b@example.net"], MESSAGE)
s.quit()
print(json.dumps({
    "plain_auth": plain_auth, "tls_auth": tls_auth, "tried": tried,
    "tls": version, "refused": list(refused),
}))
"#;

/// The message [`PYTHON_DRIVER`] sends, as the store must hold it.
const PYTHON_MESSAGE: &[u8] = b"From: app@example.com\r\nTo: a@example.com\r\n\
Subject: smtplib in TLS\r\nMessage-ID: <smtplib-tls@compat.test>\r\n\r\n\
Sent inside TLS after AUTH.\r\n.a line with a leading dot\r\nend\r\n";

/// Runs [`PYTHON_DRIVER`]: its exit and its JSON. `None` if python3 is absent.
async fn python(
    secured: &Secured,
    case: &str,
    port: u16,
    password: &str,
) -> Option<(ToolOutput, serde_json::Value)> {
    if !tool_available("python3") {
        return None;
    }
    let (port, ca) = (port.to_string(), secured.ca());
    let args = [
        "-c",
        PYTHON_DRIVER,
        case,
        "localhost",
        &port,
        &ca,
        USER,
        password,
    ];
    let out = run_tool("python3", &args, secured.world.dir.path()).await;
    let json = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "smtplib ({case}) printed no JSON ({e}), {}:\nstdout:\n{}\nstderr:\n{}",
            out.status, out.stdout, out.stderr
        )
    });
    Some((out, json))
}

/// smtplib's `login()` tried exactly one mechanism, and it was one the relay offers.
fn assert_one_mechanism(json: &serde_json::Value) {
    let tried = json["tried"].as_array().expect("tried");
    assert_eq!(tried.len(), 1, "login() succeeded at once: {json}");
    let offered = json["tls_auth"].as_str().expect("AUTH offered inside TLS");
    let mechanism = tried[0].as_str().unwrap();
    assert!(
        offered.split_whitespace().any(|m| m == mechanism),
        "{mechanism} is among {offered}"
    );
}

#[tokio::test]
async fn python_starttls_then_login() {
    let secured = Secured::start().await;
    let Some((out, json)) = python(&secured, "starttls", secured.smtp_port(), PASSWORD).await
    else {
        return;
    };
    out.assert_success("smtplib starttls() + login()");
    assert!(
        json["plain_auth"].is_null(),
        "no AUTH before STARTTLS: {json}"
    );
    assert_one_mechanism(&json);
    assert!(
        json["tls"].as_str().unwrap().starts_with("TLSv1."),
        "{json}"
    );
    assert_eq!(json["refused"], serde_json::json!([]));
    let stored = secured.exactly(1).await;
    assert_stored(
        &stored[0],
        &["a@example.com", "b@example.net"],
        PYTHON_MESSAGE,
    );
}

#[tokio::test]
async fn python_smtp_ssl_on_the_implicit_tls_port() {
    let secured = Secured::start().await;
    let Some((out, json)) = python(&secured, "ssl", secured.tls_port(), PASSWORD).await else {
        return;
    };
    out.assert_success("smtplib SMTP_SSL + login()");
    assert_one_mechanism(&json);
    let stored = secured.exactly(1).await;
    assert_stored(
        &stored[0],
        &["a@example.com", "b@example.net"],
        PYTHON_MESSAGE,
    );
}

/// Failure path: `login()` raises `SMTPAuthenticationError` (535) after trying every
/// mechanism it knows among those offered; nothing is delivered.
#[tokio::test]
async fn python_wrong_password_raises_and_delivers_nothing() {
    let secured = Secured::start().await;
    let Some((out, json)) = python(&secured, "starttls", secured.smtp_port(), WRONG_PASSWORD).await
    else {
        return;
    };
    assert_eq!(out.status.code(), Some(3), "login() raised: {}", out.stderr);
    assert_eq!(json["auth_error"], 535, "{json}");
    assert!(!json["tried"].as_array().unwrap().is_empty(), "{json}");
    secured.exactly(0).await;
}

// ---------------------------------------------------------------------------------------
// curl
// ---------------------------------------------------------------------------------------

const CURL_MESSAGE: &[u8] = b"From: app@example.com\r\n\
To: a@example.com\r\n\
Subject: curl in TLS\r\n\
Message-ID: <curl-tls@compat.test>\r\n\
\r\n\
Uploaded inside TLS.\r\n\
.leading dot\r\n";

/// `curl URL --cacert CA --user USER:password --mail-from SENDER --mail-rcpt a@example.com
/// --upload-file message` plus `extra`, `localhost` resolving to 127.0.0.1 (the name the
/// certificate carries). `None` if curl is absent.
async fn curl(secured: &Secured, url: &str, password: &str, extra: &[&str]) -> Option<ToolOutput> {
    if !tool_available("curl") {
        return None;
    }
    let dir = secured.world.dir.path();
    let file = dir.join("curl-message.eml");
    std::fs::write(&file, CURL_MESSAGE).expect("write the message file");
    let port = url.rsplit(':').next().expect("a port");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let (ca, user, file) = (
        secured.ca(),
        format!("{USER}:{password}"),
        file.display().to_string(),
    );
    let mut args = vec![
        "--silent",
        "--show-error",
        "--max-time",
        "30",
        "--url",
        url,
        "--resolve",
        &resolve,
        "--cacert",
        &ca,
        "--user",
        &user,
        "--mail-from",
        SENDER,
        "--mail-rcpt",
        "a@example.com",
        "--upload-file",
        &file,
    ];
    args.extend(extra);
    Some(run_tool("curl", &args, dir).await)
}

/// `smtp://` with `--ssl-reqd`: STARTTLS, then AUTH, then the upload.
#[tokio::test]
async fn curl_starttls_with_ssl_reqd_and_user() {
    let secured = Secured::start().await;
    let url = format!("smtp://localhost:{}", secured.smtp_port());
    let Some(out) = curl(&secured, &url, PASSWORD, &["--ssl-reqd"]).await else {
        return;
    };
    out.assert_success("curl smtp:// --ssl-reqd --user");
    let stored = secured.exactly(1).await;
    assert_stored(&stored[0], &["a@example.com"], CURL_MESSAGE);
}

/// `smtps://` on the implicit-TLS port.
#[tokio::test]
async fn curl_smtps_on_the_implicit_tls_port() {
    let secured = Secured::start().await;
    let url = format!("smtps://localhost:{}", secured.tls_port());
    let Some(out) = curl(&secured, &url, PASSWORD, &[]).await else {
        return;
    };
    out.assert_success("curl smtps:// --user");
    let stored = secured.exactly(1).await;
    assert_stored(&stored[0], &["a@example.com"], CURL_MESSAGE);
}

/// Failure path: curl reports the refused login (exit 67, "Login denied") and nothing is
/// delivered.
#[tokio::test]
async fn curl_wrong_password_is_login_denied_and_delivers_nothing() {
    let secured = Secured::start().await;
    let url = format!("smtp://localhost:{}", secured.smtp_port());
    let Some(out) = curl(&secured, &url, WRONG_PASSWORD, &["--ssl-reqd"]).await else {
        return;
    };
    assert_eq!(
        out.status.code(),
        Some(67),
        "curl: login denied: {}",
        out.stderr
    );
    assert!(out.stderr.contains("(67)"), "{}", out.stderr);
    secured.exactly(0).await;
}

// ---------------------------------------------------------------------------------------
// swaks
// ---------------------------------------------------------------------------------------

const SWAKS_MESSAGE: &str = "From: app@example.com\n\
To: a@example.com\n\
Subject: swaks in TLS\n\
Message-ID: <swaks-tls@compat.test>\n\
\n\
Sent by swaks inside TLS.\n\
.leading dot\n";

/// What the store must hold after swaks sent [`SWAKS_MESSAGE`]: CRLF lines, and one empty
/// line more (swaks sends CRLF . CRLF after the file's last newline).
fn swaks_stored() -> Vec<u8> {
    let mut data = crlf(SWAKS_MESSAGE);
    data.extend_from_slice(b"\r\n");
    data
}

/// `swaks --server 127.0.0.1:PORT --tls-verify --tls-ca-path CA --auth-user USER
/// --auth-password password --from SENDER --to a@example.com --data @FILE` plus `args` (the
/// TLS mode and the mechanism). swaks checks the certificate's chain against the CA file (it
/// does not check names). `None` if swaks is absent.
async fn swaks(secured: &Secured, port: u16, password: &str, args: &[&str]) -> Option<ToolOutput> {
    if !tool_available("swaks") {
        return None;
    }
    let dir = secured.world.dir.path();
    let file = dir.join("swaks-message.eml");
    std::fs::write(&file, SWAKS_MESSAGE).expect("write the message file");
    let server = format!("127.0.0.1:{port}");
    let (ca, data) = (secured.ca(), format!("@{}", file.display()));
    let mut all = vec![
        "--server",
        &server,
        "--timeout",
        "30",
        "--tls-verify",
        "--tls-ca-path",
        &ca,
        "--auth-user",
        USER,
        "--auth-password",
        password,
        "--from",
        SENDER,
        "--to",
        "a@example.com",
        "--data",
        &data,
    ];
    all.extend(args);
    Some(run_tool("swaks", &all, dir).await)
}

/// `--tls --auth LOGIN`: STARTTLS, then AUTH LOGIN with its two prompts.
#[tokio::test]
async fn swaks_starttls_auth_login() {
    let secured = Secured::start().await;
    let args = ["--tls", "--auth", "LOGIN"];
    let Some(out) = swaks(&secured, secured.smtp_port(), PASSWORD, &args).await else {
        return;
    };
    out.assert_success("swaks --tls --auth LOGIN");
    assert!(out.stdout.contains("-> STARTTLS"), "{}", out.stdout);
    assert!(out.stdout.contains("~> AUTH LOGIN"), "{}", out.stdout);
    assert!(out.stdout.contains("<~  235"), "{}", out.stdout);
    let stored = secured.exactly(1).await;
    assert_stored(&stored[0], &["a@example.com"], &swaks_stored());
}

/// `--tls --auth PLAIN`.
#[tokio::test]
async fn swaks_starttls_auth_plain() {
    let secured = Secured::start().await;
    let args = ["--tls", "--auth", "PLAIN"];
    let Some(out) = swaks(&secured, secured.smtp_port(), PASSWORD, &args).await else {
        return;
    };
    out.assert_success("swaks --tls --auth PLAIN");
    assert!(out.stdout.contains("~> AUTH PLAIN"), "{}", out.stdout);
    let stored = secured.exactly(1).await;
    assert_stored(&stored[0], &["a@example.com"], &swaks_stored());
}

/// `--tlsc`: TLS from the first byte on the implicit-TLS port.
#[tokio::test]
async fn swaks_tls_on_connect_on_the_implicit_tls_port() {
    let secured = Secured::start().await;
    let args = ["--tlsc", "--auth", "LOGIN"];
    let Some(out) = swaks(&secured, secured.tls_port(), PASSWORD, &args).await else {
        return;
    };
    out.assert_success("swaks --tlsc --auth LOGIN");
    assert!(!out.stdout.contains("-> STARTTLS"), "{}", out.stdout);
    let stored = secured.exactly(1).await;
    assert_stored(&stored[0], &["a@example.com"], &swaks_stored());
}

/// Failure path: swaks reports the refused AUTH and exits non-zero; nothing is delivered, and
/// no reply of the relay repeats the password.
#[tokio::test]
async fn swaks_wrong_password_fails_and_delivers_nothing() {
    let secured = Secured::start().await;
    let args = ["--tls", "--auth", "LOGIN"];
    let Some(out) = swaks(&secured, secured.smtp_port(), WRONG_PASSWORD, &args).await else {
        return;
    };
    assert!(!out.status.success(), "swaks must fail: {}", out.stdout);
    assert!(out.stdout.contains("<~* 535"), "{}", out.stdout);
    assert!(!out.stdout.contains("~> DATA"), "{}", out.stdout);
    // The relay's replies (swaks marks them `<~`) never echo the password, plain or base64.
    let encoded = door::b64(WRONG_PASSWORD.as_bytes());
    for reply in out.stdout.lines().filter(|l| l.starts_with("<~")) {
        assert!(
            !reply.contains(WRONG_PASSWORD) && !reply.contains(&encoded),
            "a reply repeats the password: {reply}"
        );
    }
    secured.exactly(0).await;
}

// ---------------------------------------------------------------------------------------
// msmtp
// ---------------------------------------------------------------------------------------

const MSMTP_MESSAGE: &str = "Date: Mon, 07 Dec 2026 10:00:00 +0000\n\
From: App <app@example.com>\n\
To: a@example.com\n\
Subject: msmtp in TLS\n\
Message-ID: <msmtp-tls@compat.test>\n\
\n\
Sent by msmtp inside TLS.\n\
.leading dot\n";

/// `msmtp -C FILE -t < message` with `tls on`, `tls_starttls` as given, the CA file, `auth
/// on`, the user and `password`, to `localhost` (the certificate's name). `None` if msmtp is
/// absent.
async fn msmtp(secured: &Secured, port: u16, starttls: bool, password: &str) -> Option<ToolOutput> {
    if !tool_available("msmtp") {
        return None;
    }
    let dir = secured.world.dir.path().join("msmtp");
    std::fs::create_dir_all(&dir).expect("msmtp dir");
    let config = dir.join("msmtprc");
    std::fs::write(
        &config,
        format!(
            "defaults\ntimeout 30\n\n\
             account default\nhost localhost\nport {port}\nfrom {SENDER}\n\
             tls on\ntls_starttls {}\ntls_trust_file {}\n\
             auth on\nuser {USER}\npassword {password}\n",
            if starttls { "on" } else { "off" },
            secured.ca()
        ),
    )
    .expect("write msmtprc");
    // msmtp refuses a configuration file that others may read, as it holds a password.
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod msmtprc");
    let input = dir.join("message.eml");
    std::fs::write(&input, MSMTP_MESSAGE).expect("write the message");
    let config = config.display().to_string();
    Some(run_tool_with_stdin("msmtp", &["-C", &config, "-t"], Some(&input), &dir).await)
}

#[tokio::test]
async fn msmtp_starttls_with_auth() {
    let secured = Secured::start().await;
    let Some(out) = msmtp(&secured, secured.smtp_port(), true, PASSWORD).await else {
        return;
    };
    out.assert_success("msmtp tls_starttls on");
    let stored = secured.exactly(1).await;
    assert_stored(&stored[0], &["a@example.com"], &crlf(MSMTP_MESSAGE));
}

#[tokio::test]
async fn msmtp_implicit_tls_with_auth() {
    let secured = Secured::start().await;
    let Some(out) = msmtp(&secured, secured.tls_port(), false, PASSWORD).await else {
        return;
    };
    out.assert_success("msmtp tls_starttls off");
    let stored = secured.exactly(1).await;
    assert_stored(&stored[0], &["a@example.com"], &crlf(MSMTP_MESSAGE));
}

/// Failure path: msmtp says the server refused the authentication and exits non-zero;
/// nothing is delivered, and msmtp does not print the password.
#[tokio::test]
async fn msmtp_wrong_password_fails_and_delivers_nothing() {
    let secured = Secured::start().await;
    let Some(out) = msmtp(&secured, secured.smtp_port(), true, WRONG_PASSWORD).await else {
        return;
    };
    assert!(!out.status.success(), "msmtp must fail: {}", out.stdout);
    assert!(
        out.stderr.contains("authentication failed"),
        "msmtp names the failure: {}",
        out.stderr
    );
    secured.exactly(0).await;
}

// ---------------------------------------------------------------------------------------
// lettre (in-process)
// ---------------------------------------------------------------------------------------

/// A lettre transport to `localhost:port` with `tls` (built by `mode` from parameters that
/// trust only the relay's certificate) and the user's credentials.
fn lettre_mailer(
    secured: &Secured,
    port: u16,
    mode: fn(TlsParameters) -> Tls,
) -> AsyncSmtpTransport<Tokio1Executor> {
    let cert = Certificate::from_pem(secured.ca_pem.as_bytes()).expect("the relay's certificate");
    let params = TlsParameters::builder("localhost".into())
        .certificate_store(CertificateStore::None)
        .add_root_certificate(cert)
        .build_rustls()
        .expect("TLS parameters");
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("localhost")
        .port(port)
        .tls(mode(params))
        .credentials(Credentials::new(USER.into(), PASSWORD.into()))
        .build()
}

/// Sends one message with `mailer` and checks the store.
async fn lettre_sends(secured: Secured, mailer: AsyncSmtpTransport<Tokio1Executor>) {
    let email = Message::builder()
        .from("App <app@example.com>".parse().unwrap())
        .to("a@example.com".parse().unwrap())
        .subject("lettre in TLS")
        .message_id(Some("<lettre-tls@compat.test>".into()))
        .body(String::from("Sent by lettre inside TLS.\n"))
        .unwrap();
    // lettre appends CRLF . CRLF to its formatted message: one CRLF more in the store when
    // the message already ends with one.
    let mut expected = email.formatted();
    if expected.ends_with(b"\r\n") {
        expected.extend_from_slice(b"\r\n");
    }
    let response = mailer.send(email).await.expect("the relay accepts");
    assert_eq!(response.code().to_string(), "250");
    let stored = secured.exactly(1).await;
    assert_stored(&stored[0], &["a@example.com"], &expected);
}

#[tokio::test]
async fn lettre_starttls_required_with_credentials() {
    let secured = Secured::start().await;
    let mailer = lettre_mailer(&secured, secured.smtp_port(), Tls::Required);
    lettre_sends(secured, mailer).await;
}

#[tokio::test]
async fn lettre_implicit_tls_with_credentials() {
    let secured = Secured::start().await;
    let mailer = lettre_mailer(&secured, secured.tls_port(), Tls::Wrapper);
    lettre_sends(secured, mailer).await;
}

// ---------------------------------------------------------------------------------------
// A multifunction printer over STARTTLS: byte dialog
// ---------------------------------------------------------------------------------------

/// The scanner's message, as the store must hold it.
const SCAN: &[u8] = b"From: scanner@printers.example\r\nSubject: Scan 0002\r\n\r\n\
Scanned page attached.\r\n";

/// Reads one whole SMTP reply (every line up to the one with a space after the code) from
/// `stream`, within [`REPLY_LIMIT`]; "EOF ..." when the peer closes first.
async fn read_reply<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> String {
    let work = async {
        loop {
            let mut start = 0;
            while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
                let line = &buf[start..start + nl + 1];
                start += nl + 1;
                if line.len() < 4 || line[3] == b' ' {
                    let text = String::from_utf8_lossy(&buf[..start]).into_owned();
                    buf.drain(..start);
                    return text;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = match stream.read(&mut chunk).await {
                Ok(n) => n,
                // The relay closes after its 221 without TLS's close_notify, which rustls
                // reports as an error; for a client that said QUIT it is the end all the same.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => panic!("read a reply: {e}"),
            };
            if n == 0 {
                return format!("EOF {}", String::from_utf8_lossy(buf));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(REPLY_LIMIT, work)
        .await
        .unwrap_or_else(|_| panic!("no reply within {REPLY_LIMIT:?}"))
}

/// A printer's dialog: EHLO and STARTTLS in plain text, the handshake (trusting only the
/// relay's certificate, as `localhost`), then every command inside TLS ended by `eol`, AUTH
/// LOGIN answering both base64 prompts, and the message ended by CRLF . CRLF.
async fn printer_over_starttls(eol: &str) -> Secured {
    let secured = Secured::start().await;
    let mut c = RawClient::connect(secured.relay.local_addr()).await;
    let ehlo = c.cmd("EHLO printer", 250).await;
    assert!(ehlo.contains("STARTTLS"), "STARTTLS offered: {ehlo}");
    assert!(!ehlo.contains("AUTH"), "no AUTH before TLS: {ehlo}");
    c.cmd("STARTTLS", 220).await;
    let connector = door::connector(&secured.ca_pem, &[]);
    let mut tls = door::handshake(&connector, c.stream)
        .await
        .expect("TLS handshake with the relay's certificate");
    let mut buf = Vec::new();
    let mut transcript = String::new();
    let steps: [(String, &str); 10] = [
        (format!("EHLO printer{eol}"), "250"),
        (format!("AUTH LOGIN{eol}"), "334 VXNlcm5hbWU6"),
        (
            format!("{}{eol}", door::b64(USER.as_bytes())),
            "334 UGFzc3dvcmQ6",
        ),
        (format!("{}{eol}", door::b64(PASSWORD.as_bytes())), "235"),
        (format!("MAIL FROM:<scanner@printers.example>{eol}"), "250"),
        (format!("RCPT TO:<office@example.com>{eol}"), "250"),
        (format!("DATA{eol}"), "354"),
        (format!("{}.\r\n", String::from_utf8_lossy(SCAN)), "250"),
        (format!("QUIT{eol}"), "221"),
        (String::new(), "EOF "),
    ];
    for (command, want) in &steps {
        if !command.is_empty() {
            transcript.push_str(&format!("C: {command:?}\n"));
            tls.write_all(command.as_bytes()).await.expect("write");
        }
        let reply = read_reply(&mut tls, &mut buf).await;
        transcript.push_str(&format!("S: {reply:?}\n"));
        assert!(
            reply.starts_with(want),
            "expected {want:?}, got {reply:?}:\n{transcript}"
        );
        if command.starts_with("EHLO") {
            assert!(reply.contains("AUTH"), "AUTH inside TLS:\n{transcript}");
            assert!(
                !reply.contains("STARTTLS"),
                "no second STARTTLS:\n{transcript}"
            );
        }
    }
    secured
}

fn assert_scan(stored: &[StoredMessage]) {
    assert_eq!(stored[0].envelope.mail_from, "scanner@printers.example");
    assert_eq!(stored[0].envelope.rcpt_to, ["office@example.com"]);
    let body = strip_received(&stored[0].data);
    let received = String::from_utf8_lossy(&stored[0].data[..stored[0].data.len() - body.len()]);
    assert!(received.contains(" with ESMTPSA id "), "{received}");
    assert_eq!(body, SCAN);
}

/// Printers end their commands with a bare LF, inside TLS too.
#[tokio::test]
async fn printer_starttls_auth_login_with_bare_lf_commands() {
    let secured = printer_over_starttls("\n").await;
    assert_scan(&secured.exactly(1).await);
}

/// The same dialog with CRLF, as the RFC has it.
#[tokio::test]
async fn printer_starttls_auth_login_with_crlf_commands() {
    let secured = printer_over_starttls("\r\n").await;
    assert_scan(&secured.exactly(1).await);
}

// ---------------------------------------------------------------------------------------
// PHP mail() through the sendmail command
// ---------------------------------------------------------------------------------------

/// What PHP's `mail()` is given: the recipient, subject, body (with a lone dot line, which
/// `-i` keeps as text) and additional headers.
const PHP_SCRIPT: &str = r#"
$ok = mail("someone@example.com", "PHP mail() test",
    "Hello from PHP.\n.\nafter a lone dot\n",
    "From: App <app@example.com>\r\nX-Mailer: compat-test");
echo $ok ? "sent" : "failed";
exit($ok ? 0 : 1);
"#;

/// The message as the store must hold it: PHP writes `To:`, `Subject:`, the additional
/// headers, an empty line, the body and a CRLF of its own; sendmail turns bare LFs into CRLF.
/// PHP's message as stored: PHP writes no `Date:` or `Message-ID:`, so the relay adds both on
/// top (Exchange's message trace needs the Message-ID); the rest is PHP's, byte for byte.
fn assert_php_stored(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(3, "\r\n");
    let date = lines.next().unwrap_or_default();
    let id = lines.next().unwrap_or_default();
    assert!(
        date.starts_with("Date: ") && date.ends_with(" +0000"),
        "{text}"
    );
    assert!(
        id.starts_with("Message-ID: <") && id.ends_with('>'),
        "{text}"
    );
    assert_eq!(lines.next().unwrap_or_default(), PHP_STORED);
}

const PHP_STORED: &str = "To: someone@example.com\r\nSubject: PHP mail() test\r\n\
From: App <app@example.com>\r\nX-Mailer: compat-test\r\n\r\n\
Hello from PHP.\r\n.\r\nafter a lone dot\r\n\r\n";

/// A symlink named `sendmail` to the relay binary, and a configuration file for it that
/// names `listen` (where the relay is, or nobody) and the world's spool, as an admin writes
/// it for PHP (which does not have the relay's environment). Returns (symlink, config).
fn sendmail_setup(world: &World, listen: SocketAddr) -> (PathBuf, PathBuf) {
    let bin = world.dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let link = bin.join("sendmail");
    std::os::unix::fs::symlink(relay_binary(), &link).expect("symlink sendmail");
    let config = world.dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\naddress = \"{listen}\"\n\n[delivery]\nspool_dir = \"{}\"\n\n\
             [account]\nmailbox = \"{MAILBOX}\"\n",
            world.spool_dir().display()
        ),
    )
    .expect("write relay.toml");
    (link, config)
}

/// Runs `program args` in the world's directory with `SMTP_OAUTH_RELAY_CONFIG` set to
/// `config` and no other `SMTP_OAUTH_RELAY_*` variable, as an app that knows nothing of the
/// relay's environment; killed after [`tools::TOOL_TIMEOUT`].
async fn run_with_config(
    world: &World,
    program: &Path,
    args: &[&str],
    config: &Path,
) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(world.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SMTP_OAUTH_RELAY") {
            cmd.env_remove(&name);
        }
    }
    cmd.env("SMTP_OAUTH_RELAY_CONFIG", config);
    tokio::time::timeout(tools::TOOL_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{} did not finish", program.display()))
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

/// `php -n -d sendmail_path="<link> -t -i" -r PHP_SCRIPT` with the relay's configuration
/// file in `SMTP_OAUTH_RELAY_CONFIG` (which PHP passes on to sendmail). `None` if php is
/// absent.
async fn php_mail(world: &World, link: &Path, config: &Path) -> Option<std::process::Output> {
    if !tool_available("php") {
        return None;
    }
    let sendmail_path = format!("sendmail_path={} -t -i", link.display());
    let args = ["-n", "-d", &sendmail_path, "-r", PHP_SCRIPT];
    Some(run_with_config(world, Path::new("php"), &args, config).await)
}

fn assert_php_sent(out: &std::process::Output) {
    assert!(
        out.status.success() && out.stdout == b"sent",
        "mail() returned true ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// PHP's `mail()` hands the message to the sendmail symlink, which passes it to the running
/// relay: `To:` is the recipient (`-t`), the sender is the relay's mailbox (PHP passes no
/// `-f`), and the message is PHP's, with CRLF lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_mail_through_the_sendmail_symlink() {
    let world = World::start().await;
    let relay = world.relay(&[]).await;
    let (link, config) = sendmail_setup(&world, relay.local_addr());
    let Some(out) = php_mail(&world, &link, &config).await else {
        return;
    };
    assert_php_sent(&out);
    let stored = exactly(&world, relay, 1).await;
    assert_eq!(stored[0].envelope.mail_from, MAILBOX);
    assert_eq!(stored[0].envelope.rcpt_to, ["someone@example.com"]);
    assert_php_stored(strip_received(&stored[0].data));
}

/// No relay runs: sendmail queues PHP's message in the spool (`mail()` still returns true),
/// `queue list` shows it, and the next relay started on that spool delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_mail_without_a_relay_is_queued_then_delivered() {
    let world = World::start().await;
    let (link, config) = sendmail_setup(&world, child::free_addr());
    let Some(out) = php_mail(&world, &link, &config).await else {
        return;
    };
    assert_php_sent(&out);
    let queue = world.spool_dir().join("queue");
    let files = std::fs::read_dir(&queue)
        .expect("sendmail made the queue")
        .count();
    assert_eq!(files, 2, "one body and one envelope in {}", queue.display());
    let list = run_with_config(&world, relay_binary(), &["queue", "list"], &config).await;
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success() && listed.contains("someone@example.com"),
        "queue list shows it ({}):\n{listed}\n{}",
        list.status,
        String::from_utf8_lossy(&list.stderr)
    );
    assert_eq!(world.sandbox.messages().len(), 0, "nothing delivered yet");
    let relay = world.relay(&[]).await;
    let stored = exactly(&world, relay, 1).await;
    assert_eq!(stored[0].envelope.rcpt_to, ["someone@example.com"]);
    // Queued by sendmail, the message has no Received header: it never passed a session.
    assert_php_stored(&stored[0].data);
}
