//! The relay's safe door, AUTH half (issue 13), end to end on loopback: AUTH PLAIN and LOGIN
//! inside TLS only, the brute-force pause, senders per user, `require_auth`, accept-any mode,
//! plain AUTH for loopback clients, routing by the logged-in user, the exposure rules, and
//! passwords kept out of the log of the real binary.

mod support;
#[path = "support/child.rs"]
mod child;
#[path = "support/door.rs"]
mod door;

use std::net::IpAddr;
use std::time::Duration;

use child::{free_addr, RelayChild};
use door::{b64, plain, plain_blob, starttls, write_cert, write_users, CertFiles, Smtp};
use smtp_oauth_relay::app::Relay;
use smtp_oauth_relay::config::Config;
use support::{relay_binary, World, MAILBOX};
use tokio::net::TcpStream;

const CERT: &str = "SMTP_OAUTH_RELAY_INBOUND_TLS_CERT_FILE";
const KEY: &str = "SMTP_OAUTH_RELAY_INBOUND_TLS_KEY_FILE";
const USERS: &str = "SMTP_OAUTH_RELAY_USERS_FILE";
const MAX_FAILURES: &str = "SMTP_OAUTH_RELAY__LISTEN__AUTH_MAX_FAILURES";
const PAUSE: &str = "SMTP_OAUTH_RELAY__LISTEN__AUTH_PAUSE_SECS";
const ON_LOOPBACK: &str = "SMTP_OAUTH_RELAY__LISTEN__AUTH_WITHOUT_TLS_ON_LOOPBACK";
const ACCEPT_ANY: &str = "SMTP_OAUTH_RELAY__LISTEN__AUTH_ACCEPT_ANY";
const ALLOW: &str = "SMTP_OAUTH_RELAY__LISTEN__ALLOW";
const REQUIRE_AUTH: &str = "SMTP_OAUTH_RELAY_REQUIRE_AUTH";

const GOOD: &str = "good-printer-pass-7261";
const PRINTER_BOX: &str = "printers@sandbox.example";

/// A world with a certificate and a users file (`printer` with `GOOD`, any sender;
/// `scanner` with `GOOD`, only `scan@sandbox.example`) in its directory.
struct Door {
    world: World,
    cert: CertFiles,
    pairs: Vec<(&'static str, String)>,
}

impl Door {
    async fn new() -> Door {
        let world = World::start_with(|o| {
            o.mailboxes = vec![MAILBOX.into(), PRINTER_BOX.into()];
        })
        .await;
        let cert = write_cert(world.dir.path(), "door");
        let users = write_users(
            world.dir.path(),
            &[
                ("printer", GOOD, ""),
                ("scanner", GOOD, "scan@sandbox.example"),
                ("clerk", GOOD, ""),
            ],
        );
        let pairs = vec![
            (CERT, cert.cert.display().to_string()),
            (KEY, cert.key.display().to_string()),
            (USERS, users.display().to_string()),
        ];
        Door { world, cert, pairs }
    }

    /// The door's pairs plus `extra` (which override), as `World::relay` takes them.
    fn with<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut all: Vec<(&str, &str)> = self
            .pairs
            .iter()
            .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        all.extend_from_slice(extra);
        all
    }

    async fn relay(&self, extra: &[(&str, &str)]) -> Relay {
        self.world.relay(&self.with(extra)).await
    }

    fn connector(&self) -> tokio_rustls::TlsConnector {
        door::connector(&self.cert.pem, &[])
    }
}

/// STARTTLS and EHLO: the session AUTH is offered in.
async fn tls_session(d: &Door, relay: &Relay) -> Smtp<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut c = starttls(relay.local_addr(), &d.connector()).await;
    let ehlo = c.cmd("EHLO client.example", 250).await;
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN"),
        "AUTH offered inside TLS: {ehlo}"
    );
    c
}

#[tokio::test]
async fn auth_is_offered_only_inside_tls_and_plain_and_login_log_in() {
    let d = Door::new().await;
    let relay = d.relay(&[]).await;
    let mut p = plain(relay.local_addr()).await;
    let ehlo = p.cmd("EHLO client.example", 250).await;
    assert!(!ehlo.contains("AUTH"), "no AUTH in the clear: {ehlo}");
    let r = p
        .cmd(&format!("AUTH PLAIN {}", plain_blob("printer", GOOD)), 538)
        .await;
    assert!(r.contains("5.7.11"), "{r}");

    let mut c = door::upgrade(p, &d.connector()).await.expect("handshake");
    let ehlo = c.cmd("EHLO client.example", 250).await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    // A wrong password, then the right one in the same session.
    let r = c
        .cmd(
            &format!("AUTH PLAIN {}", plain_blob("printer", "nope")),
            535,
        )
        .await;
    assert!(r.contains("5.7.8"), "{r}");
    c.cmd(&format!("AUTH PLAIN {}", plain_blob("printer", GOOD)), 235)
        .await;
    c.cmd(&format!("AUTH PLAIN {}", plain_blob("printer", GOOD)), 503)
        .await;
    let r = c
        .send_mail(
            "app@example.com",
            &["desk@example.com"],
            &door::message("plain auth"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT", 221).await;
    let stored = d.world.wait_for(1).await;
    assert_eq!(door::received_with(&stored[0].data), "ESMTPSA");

    // LOGIN: both prompts, wrong then right.
    let mut c = tls_session(&d, &relay).await;
    for (password, code) in [("wrong", 535), (GOOD, 235)] {
        let r = c.cmd("AUTH LOGIN", 334).await;
        assert_eq!(r.trim_end(), "334 VXNlcm5hbWU6", "asks for the user name");
        let r = c.cmd(&b64(b"printer"), 334).await;
        assert_eq!(r.trim_end(), "334 UGFzc3dvcmQ6", "asks for the password");
        let r = c.cmd(&b64(password.as_bytes()), code).await;
        if code == 535 {
            assert!(r.contains("5.7.8"), "{r}");
        }
    }
    let r = c
        .send_mail(
            "app@example.com",
            &["desk@example.com"],
            &door::message("login auth"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    d.world.wait_for(2).await;
}

#[tokio::test]
async fn too_many_failures_close_the_session_and_pause_the_address() {
    let d = Door::new().await;
    // Where AUTH is required, a paused address gets no session at all.
    let relay = d
        .relay(&[
            (MAX_FAILURES, "2"),
            (PAUSE, "30"),
            ("SMTP_OAUTH_RELAY_LISTEN_TLS", "127.0.0.1:0"),
            ("SMTP_OAUTH_RELAY_REQUIRE_AUTH", "true"),
        ])
        .await;
    // A session opened before the pause begins.
    let mut early = tls_session(&d, &relay).await;

    let mut c = tls_session(&d, &relay).await;
    for _ in 0..2 {
        let r = c
            .cmd(
                &format!("AUTH PLAIN {}", plain_blob("printer", "guess")),
                535,
            )
            .await;
        assert!(r.contains("5.7.8"), "{r}");
    }
    let r = c
        .cmd(
            &format!("AUTH PLAIN {}", plain_blob("printer", "guess")),
            421,
        )
        .await;
    assert!(r.contains("4.7.0"), "{r}");
    assert!(
        c.reply().await.starts_with("EOF"),
        "then the connection closes"
    );

    // A new connection from the same address: 421 instead of the greeting.
    let mut again = Smtp::new(TcpStream::connect(relay.local_addr()).await.unwrap());
    let r = again.reply().await;
    assert!(r.starts_with("421") && r.contains("4.7.0"), "{r}");
    assert!(again.reply().await.starts_with("EOF"));
    // The implicit-TLS port too (inside TLS: that is where its greeting would be).
    let tls = door::handshake(
        &d.connector(),
        TcpStream::connect(relay.tls_addr().unwrap()).await.unwrap(),
    )
    .await
    .expect("handshake");
    let r = Smtp::new(tls).reply().await;
    assert!(r.starts_with("421") && r.contains("4.7.0"), "{r}");

    // The session opened before: even the right password is not checked during the pause.
    let r = early
        .cmd(&format!("AUTH PLAIN {}", plain_blob("printer", GOOD)), 454)
        .await;
    assert!(r.contains("4.7.0") && r.contains("try again"), "{r}");
    early.cmd("MAIL FROM:<app@example.com>", 530).await;
    assert!(d.world.sandbox.messages().is_empty());
}

#[tokio::test]
async fn where_auth_is_optional_a_paused_address_still_sends_without_logging_in() {
    let d = Door::new().await;
    let relay = d.relay(&[(MAX_FAILURES, "1"), (PAUSE, "30")]).await;
    let mut c = tls_session(&d, &relay).await;
    let login = |pw: &str| format!("AUTH PLAIN {}", plain_blob("printer", pw));
    c.cmd(&login("guess"), 535).await;
    c.cmd(&login("guess"), 421).await;
    // Another app at the same address (loopback here) that never logs in keeps working.
    let mut app = tls_session(&d, &relay).await;
    let r = app.cmd(&login(GOOD), 454).await;
    assert!(r.contains("4.7.0"), "only AUTH is refused: {r}");
    let r = app
        .send_mail(
            "app@example.com",
            &["desk@example.com"],
            &door::message("no login"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    d.world.wait_for(1).await;
}

#[tokio::test]
async fn after_the_pause_the_right_password_logs_in() {
    let d = Door::new().await;
    let relay = d.relay(&[(MAX_FAILURES, "1"), (PAUSE, "1")]).await;
    let mut c = tls_session(&d, &relay).await;
    let login = |pw: &str| format!("AUTH PLAIN {}", plain_blob("printer", pw));
    c.cmd(&login("guess"), 535).await;
    c.cmd(&login("guess"), 421).await;
    let mut early = tls_session(&d, &relay).await;
    let r = early.cmd(&login(GOOD), 454).await;
    assert!(r.contains("4.7.0"), "still paused: {r}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut c = tls_session(&d, &relay).await;
    c.cmd(&login(GOOD), 235).await;
    let r = c
        .send_mail(
            "app@example.com",
            &["desk@example.com"],
            &door::message("after pause"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    d.world.wait_for(1).await;
}

#[tokio::test]
async fn a_user_may_send_only_as_its_senders() {
    let d = Door::new().await;
    let relay = d.relay(&[]).await;
    let mut c = tls_session(&d, &relay).await;
    c.cmd(&format!("AUTH PLAIN {}", plain_blob("scanner", GOOD)), 235)
        .await;
    let r = c.cmd("MAIL FROM:<other@sandbox.example>", 550).await;
    assert!(r.contains("5.7.1") && r.contains("scanner"), "{r}");
    assert!(r.contains("other@sandbox.example"), "{r}");
    let r = c
        .send_mail(
            "scan@sandbox.example",
            &["desk@example.com"],
            &door::message("scanned"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    let stored = d.world.wait_for(1).await;
    assert!(String::from_utf8_lossy(&stored[0].data).contains("body of scanned"));
}

#[tokio::test]
async fn require_auth_refuses_mail_before_auth() {
    let d = Door::new().await;
    let relay = d.relay(&[(REQUIRE_AUTH, "true")]).await;
    let mut p = plain(relay.local_addr()).await;
    p.cmd("EHLO client.example", 250).await;
    let r = p.cmd("MAIL FROM:<app@example.com>", 530).await;
    assert!(r.contains("5.7.0"), "{r}");
    let mut c = tls_session(&d, &relay).await;
    let r = c.cmd("MAIL FROM:<app@example.com>", 530).await;
    assert!(r.contains("5.7.0"), "{r}");
    c.cmd(&format!("AUTH PLAIN {}", plain_blob("clerk", GOOD)), 235)
        .await;
    let r = c
        .send_mail(
            "app@example.com",
            &["desk@example.com"],
            &door::message("required"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    d.world.wait_for(1).await;
}

#[tokio::test]
async fn accept_any_mode_takes_any_password_and_needs_an_allow_list() {
    let d = Door::new().await;
    let certs = [(CERT, d.pairs[0].1.as_str()), (KEY, d.pairs[1].1.as_str())];
    let mut extra = certs.to_vec();
    extra.extend([(ACCEPT_ANY, "true"), (ALLOW, "10.0.0.0/8")]);
    let relay = d.world.relay(&extra).await;
    let mut c = tls_session(&d, &relay).await;
    c.cmd(
        &format!("AUTH PLAIN {}", plain_blob("whoever", "whatever")),
        235,
    )
    .await;
    let r = c
        .send_mail(
            "app@example.com",
            &["desk@example.com"],
            &door::message("any"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    let stored = d.world.wait_for(1).await;
    assert_eq!(door::received_with(&stored[0].data), "ESMTPSA");

    let mut without = certs.to_vec();
    without.push((ACCEPT_ANY, "true"));
    let e = door::config_error(d.world.env(), &without);
    assert_eq!(e.key, "listen.auth_accept_any", "{e}");
    assert!(e.message.contains("listen.allow"), "{e}");
    // And never together with a users file.
    let e = door::config_error(
        d.world.env(),
        &d.with(&[(ACCEPT_ANY, "true"), (ALLOW, "10.0.0.0/8")]),
    );
    assert_eq!(e.key, "listen.auth_accept_any", "{e}");
}

#[tokio::test]
async fn loopback_clients_may_log_in_without_tls_when_allowed() {
    let d = Door::new().await;
    let users = [(USERS, d.pairs[2].1.as_str())];
    // Without the switch, a users file without a certificate is refused.
    let e = door::config_error(d.world.env(), &users);
    assert_eq!(e.key, "listen.users_file", "{e}");
    assert!(e.message.contains("only inside TLS"), "{e}");

    let mut extra = users.to_vec();
    extra.push((ON_LOOPBACK, "true"));
    let relay = d.world.relay(&extra).await;
    let mut c = plain(relay.local_addr()).await;
    let ehlo = c.cmd("EHLO client.example", 250).await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    assert!(
        !ehlo.contains("STARTTLS"),
        "no certificate, no STARTTLS: {ehlo}"
    );
    c.cmd(
        &format!("AUTH PLAIN {}", plain_blob("printer", "nope")),
        535,
    )
    .await;
    c.cmd(&format!("AUTH PLAIN {}", plain_blob("printer", GOOD)), 235)
        .await;
    let r = c
        .send_mail(
            "app@example.com",
            &["desk@example.com"],
            &door::message("loopback"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    let stored = d.world.wait_for(1).await;
    assert_eq!(door::received_with(&stored[0].data), "ESMTPA");
}

#[tokio::test]
async fn a_route_limited_to_a_user_sends_that_users_mail_through_its_mailbox() {
    let d = Door::new().await;
    let path = d.world.dir.path().join("relay.toml");
    std::fs::write(
        &path,
        format!(
            "[[route]]\nsenders = [\"*\"]\n\n[[route]]\nsenders = [\"*\"]\nusers = [\"printer\"]\nmailbox = \"{PRINTER_BOX}\"\n"
        ),
    )
    .unwrap();
    let mut env = d.world.env();
    env.push((USERS.into(), d.pairs[2].1.clone()));
    env.push((ON_LOOPBACK.into(), "true".into()));
    let config = Config::load(Some(&path), &env)
        .expect("config loads")
        .validate()
        .expect("config validates");
    let relay = Relay::start(config).await.expect("relay starts");
    for (user, subject) in [("printer", "from printer"), ("clerk", "from clerk")] {
        let mut c = plain(relay.local_addr()).await;
        c.cmd("EHLO client.example", 250).await;
        c.cmd(&format!("AUTH PLAIN {}", plain_blob(user, GOOD)), 235)
            .await;
        let r = c
            .send_mail(
                "app@example.com",
                &["desk@example.com"],
                &door::message(subject),
            )
            .await;
        assert!(r.starts_with("250"), "{user}: {r}");
    }
    // A client that did not log in: the open route.
    let mut c = plain(relay.local_addr()).await;
    c.cmd("EHLO client.example", 250).await;
    let r = c
        .send_mail(
            "app@example.com",
            &["desk@example.com"],
            &door::message("anonymous"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    let stored = d.world.wait_for(3).await;
    let mailbox_of = |subject: &str| {
        stored
            .iter()
            .find(|m| String::from_utf8_lossy(&m.data).contains(&format!("body of {subject}")))
            .unwrap_or_else(|| panic!("{subject} delivered"))
            .envelope
            .auth_user
            .clone()
    };
    assert_eq!(mailbox_of("from printer"), PRINTER_BOX);
    assert_eq!(mailbox_of("from clerk"), MAILBOX);
    assert_eq!(mailbox_of("anonymous"), MAILBOX);

    // A route naming a user the file does not know is refused.
    std::fs::write(&path, "[[route]]\nsenders = [\"*\"]\nusers = [\"ghost\"]\n").unwrap();
    let e = match Config::load(Some(&path), &env).and_then(|c| c.validate()) {
        Ok(_) => panic!("a route for an unknown user must be refused"),
        Err(e) => e,
    };
    assert!(
        e.key.contains("users") && e.message.contains("ghost"),
        "{e}"
    );
}

#[tokio::test]
async fn exposure_rules_keep_the_relay_from_being_an_open_relay() {
    let d = Door::new().await;
    let everywhere = [("SMTP_OAUTH_RELAY_LISTEN", "0.0.0.0:2525")];
    let e = door::config_error(d.world.env(), &everywhere);
    assert_eq!(e.key, "listen.allow", "{e}");
    assert!(e.message.contains("open relay"), "{e}");
    let e = door::config_error(d.world.env(), &[(ALLOW, "0.0.0.0/0")]);
    assert_eq!(e.key, "listen.allow", "{e}");
    assert!(e.message.contains("open relay"), "{e}");
    // Accept-any is no lock: everyone plus accept-any is refused even with require_auth.
    let e = door::config_error(
        d.world.env(),
        &[
            (CERT, d.pairs[0].1.as_str()),
            (KEY, d.pairs[1].1.as_str()),
            (ACCEPT_ANY, "true"),
            (REQUIRE_AUTH, "true"),
            (ALLOW, "0.0.0.0/0"),
        ],
    );
    assert!(e.message.contains("open relay"), "{e}");

    let stranger: IpAddr = "192.0.2.7".parse().unwrap();
    // An allow list lets its networks in and no one else.
    let listed = door::config_result(d.world.env(), &[everywhere[0], (ALLOW, "10.0.0.0/8")])
        .expect("an allow list is enough");
    assert!(listed.listen.permits("10.1.2.3".parse().unwrap()));
    assert!(!listed.listen.permits(stranger));
    // require_auth with real users and a certificate: anyone may connect, and must log in.
    let auth = door::config_result(
        d.world.env(),
        &d.with(&[everywhere[0], (REQUIRE_AUTH, "true")]),
    )
    .expect("require_auth with users and a certificate is enough");
    assert!(auth.listen.permits(stranger));
    assert!(auth.listen.auth.required);
    // Without a certificate, network clients could never log in.
    let e = door::config_error(
        d.world.env(),
        &[
            everywhere[0],
            (USERS, d.pairs[2].1.as_str()),
            (REQUIRE_AUTH, "true"),
            (ON_LOOPBACK, "true"),
        ],
    );
    assert_eq!(e.key, "listen.require_auth", "{e}");
}

#[tokio::test]
async fn passwords_never_reach_the_log_even_at_trace_level() {
    const SECRET_OK: &str = "Zq8-correct-horse-door-31337";
    const SECRET_BAD: &str = "Xv4-wrong-battery-door-27182";
    let world = World::start().await;
    let work = tempfile::tempdir().unwrap();
    let cert = write_cert(work.path(), "door");
    let users = write_users(work.path(), &[("printer", SECRET_OK, "")]);
    let addr = free_addr();
    let mut env = world.env();
    for (k, v) in [
        ("SMTP_OAUTH_RELAY_LISTEN", addr.to_string()),
        ("SMTP_OAUTH_RELAY_ADMIN_LISTEN", "off".to_string()),
        (CERT, cert.cert.display().to_string()),
        (KEY, cert.key.display().to_string()),
        (USERS, users.display().to_string()),
        ("RUST_LOG", "trace".to_string()),
    ] {
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v));
    }
    let mut relay = RelayChild::spawn(
        relay_binary(),
        &["serve"],
        &env,
        work.path(),
        &work.path().join("relay.stderr"),
    );
    relay.wait_ready(addr, Duration::from_secs(30)).await;
    let connector = door::connector(&cert.pem, &[]);

    let mut c = starttls(addr, &connector).await;
    c.cmd("EHLO client.example", 250).await;
    c.cmd(
        &format!("AUTH PLAIN {}", plain_blob("printer", SECRET_BAD)),
        535,
    )
    .await;
    c.cmd("AUTH LOGIN", 334).await;
    c.cmd(&b64(b"printer"), 334).await;
    c.cmd(&b64(SECRET_BAD.as_bytes()), 535).await;
    c.cmd(
        &format!("AUTH PLAIN {}", plain_blob("printer", SECRET_OK)),
        235,
    )
    .await;
    let r = c
        .send_mail(
            "app@example.com",
            &["desk@example.com"],
            &door::message("logged"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT", 221).await;
    world.wait_for(1).await;
    relay
        .wait_stderr("AUTH succeeded", Duration::from_secs(10))
        .await;

    let log = relay.stderr();
    assert!(
        log.contains("DEBUG"),
        "the log shows debug lines (trace level)"
    );
    for secret in [SECRET_OK, SECRET_BAD] {
        for form in [
            secret.to_string(),
            b64(secret.as_bytes()),
            plain_blob("printer", secret),
        ] {
            assert!(!log.contains(&form), "{form} reached the log");
        }
    }
    let failed: Vec<&str> = log.lines().filter(|l| l.contains("AUTH failed")).collect();
    assert_eq!(failed.len(), 2, "one line a failed attempt: {failed:?}");
    for line in failed {
        assert!(
            line.contains("printer"),
            "the failure names the user: {line}"
        );
    }
    let ok = log.lines().find(|l| l.contains("AUTH succeeded")).unwrap();
    assert!(ok.contains("printer"), "{ok}");
}

#[tokio::test]
async fn reloading_the_users_file_takes_new_passwords_and_keeps_the_old_users_on_a_mistake() {
    let d = Door::new().await;
    let relay = d
        .relay(&[("SMTP_OAUTH_RELAY_LISTEN_TLS", "127.0.0.1:0")])
        .await;
    let login = |user: &str, pw: &str| format!("AUTH PLAIN {}", plain_blob(user, pw));
    // New passwords and a new user, written over the same file; then SIGHUP's reload.
    write_users(
        d.world.dir.path(),
        &[("printer", "rotated-pass", ""), ("newbie", GOOD, "")],
    );
    let lines = relay.reload_inbound();
    assert!(
        lines
            .iter()
            .any(|l| l.as_ref().is_ok_and(|t| t.contains("2 users"))),
        "{lines:?}"
    );
    // On the implicit-TLS port this time.
    let mut c = door::implicit(relay.tls_addr().unwrap(), &d.connector()).await;
    c.cmd("EHLO client.example", 250).await;
    c.cmd(&login("printer", GOOD), 535).await;
    c.cmd(&login("printer", "rotated-pass"), 235).await;
    let mut n = tls_session(&d, &relay).await;
    n.cmd(&login("newbie", GOOD), 235).await;
    // A plain-text password by mistake: the file is refused without echoing it.
    std::fs::write(d.pairs[2].1.as_str(), "printer:hunter2-in-the-clear\n").unwrap();
    let lines = relay.reload_inbound();
    let err = lines
        .iter()
        .find_map(|l| l.as_ref().err())
        .expect("an error line");
    assert!(err.contains("keeping the users read before"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    let mut c = tls_session(&d, &relay).await;
    c.cmd(&login("printer", "rotated-pass"), 235).await;
}
