//! The relay's safe door, TLS half (issue 13), end to end on loopback: STARTTLS and the
//! implicit-TLS port with TLS 1.2 and 1.3, STARTTLS injection (CVE-2011-0411), `require_tls`,
//! a failed handshake, a self-signed certificate, certificate rotation on SIGHUP with a
//! connection open across it (the real binary), and the configuration mistakes.

mod support;
#[path = "support/child.rs"]
mod child;
#[path = "support/door.rs"]
mod door;

use std::time::Duration;

use child::{free_addr, RelayChild};
use door::{plain, starttls, write_cert, CertFiles, Smtp};
use rustls::pki_types::pem::PemObject;
use support::{relay_binary, World};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CERT: &str = "SMTP_OAUTH_RELAY_INBOUND_TLS_CERT_FILE";
const KEY: &str = "SMTP_OAUTH_RELAY_INBOUND_TLS_KEY_FILE";
const LISTEN_TLS: &str = "SMTP_OAUTH_RELAY_LISTEN_TLS";
const SELF_SIGNED: &str = "SMTP_OAUTH_RELAY_INBOUND_TLS_SELF_SIGNED";

/// The certificate's two environment pairs.
fn tls_env(cert: &CertFiles) -> [(String, String); 2] {
    [
        (CERT.to_string(), cert.cert.display().to_string()),
        (KEY.to_string(), cert.key.display().to_string()),
    ]
}

/// A world, a certificate in its directory, and a relay using it; `extra` pairs override.
async fn relay_with_cert(
    extra: &[(&str, &str)],
) -> (World, CertFiles, smtp_oauth_relay::app::Relay) {
    let world = World::start().await;
    let cert = write_cert(world.dir.path(), "door");
    let [(ck, cv), (kk, kv)] = tls_env(&cert);
    let mut pairs: Vec<(&str, &str)> = vec![(&ck, &cv), (&kk, &kv)];
    pairs.extend_from_slice(extra);
    let relay = world.relay(&pairs).await;
    (world, cert, relay)
}

/// Reads until the relay closes the connection (EOF or reset), within 15 s.
async fn closed(tcp: &mut TcpStream) {
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .expect("the relay closes the connection");
}

#[tokio::test]
async fn starttls_upgrades_the_session_and_the_message_says_esmtps() {
    let (world, cert, relay) = relay_with_cert(&[]).await;
    let connector = door::connector(&cert.pem, &[]);
    let mut c = starttls(relay.local_addr(), &connector).await;
    assert_eq!(door::peer_certificate(&c.io), {
        let der = rustls::pki_types::CertificateDer::from_pem_slice(cert.pem.as_bytes());
        der.unwrap().to_vec()
    });
    let ehlo = c.cmd("EHLO client.example", 250).await;
    assert!(
        !ehlo.contains("STARTTLS"),
        "inside TLS STARTTLS is no longer offered: {ehlo}"
    );
    c.cmd("STARTTLS", 503).await;
    let r = c
        .send_mail(
            "app@example.com",
            &["desk@example.com"],
            &door::message("inside tls"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT", 221).await;
    let stored = world.wait_for(1).await;
    assert!(String::from_utf8_lossy(&stored[0].data).contains("body of inside tls"));
    assert_eq!(door::received_with(&stored[0].data), "ESMTPS");

    // Without STARTTLS the same relay still says ESMTP: the S means TLS.
    let mut p = plain(relay.local_addr()).await;
    p.cmd("EHLO client.example", 250).await;
    let r = p
        .send_mail(
            "app@example.com",
            &["desk@example.com"],
            &door::message("plain"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    let stored = world.wait_for(2).await;
    let plain_one = stored
        .iter()
        .find(|m| String::from_utf8_lossy(&m.data).contains("body of plain"))
        .expect("the plain message");
    assert_eq!(door::received_with(&plain_one.data), "ESMTP");
}

#[tokio::test]
async fn tls_1_2_and_1_3_work_on_both_doors_and_the_greeting_comes_inside_tls() {
    let (world, cert, relay) = relay_with_cert(&[(LISTEN_TLS, "127.0.0.1:0")]).await;
    let tls_addr = relay.tls_addr().expect("the implicit-TLS port is on");
    assert_ne!(tls_addr, relay.local_addr());
    let versions: [(
        &'static rustls::SupportedProtocolVersion,
        rustls::ProtocolVersion,
    ); 2] = [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ];
    let mut sent = 0;
    for (version, expected) in versions {
        let connector = door::connector(&cert.pem, &[version]);
        for implicit in [false, true] {
            let mut c = if implicit {
                door::implicit(tls_addr, &connector).await
            } else {
                starttls(relay.local_addr(), &connector).await
            };
            assert_eq!(
                door::tls_version(&c.io),
                Some(expected),
                "implicit: {implicit}"
            );
            let ehlo = c.cmd("EHLO client.example", 250).await;
            assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
            let subject = format!("{expected:?} implicit={implicit}");
            let r = c
                .send_mail(
                    "app@example.com",
                    &["desk@example.com"],
                    &door::message(&subject),
                )
                .await;
            assert!(r.starts_with("250"), "{subject}: {r}");
            c.cmd("QUIT", 221).await;
            sent += 1;
        }
    }
    let stored = world.wait_for(sent).await;
    for m in &stored {
        assert_eq!(door::received_with(&m.data), "ESMTPS");
    }

    // The implicit-TLS port says nothing in the clear: a plain client hears no greeting.
    let mut tcp = TcpStream::connect(tls_addr).await.unwrap();
    let mut chunk = [0u8; 64];
    let heard = tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut chunk)).await;
    assert!(
        heard.is_err(),
        "no plain-text greeting on the TLS port: {heard:?}"
    );
}

#[tokio::test]
async fn a_command_injected_after_starttls_is_never_answered_inside_tls() {
    let (_world, cert, relay) = relay_with_cert(&[]).await;
    let mut c = plain(relay.local_addr()).await;
    c.cmd("EHLO client.example", 250).await;
    // A man in the middle appends a command to the client's STARTTLS, in the same packet.
    c.send(b"STARTTLS\r\nNOOP\r\n").await;
    let r = c.reply().await;
    assert!(r.starts_with("220 "), "{r}");
    assert!(
        c.pending().is_empty(),
        "the NOOP is not answered in the clear"
    );
    let tls = door::handshake(&door::connector(&cert.pem, &[]), c.io)
        .await
        .expect("handshake");
    let mut t = Smtp::new(tls);
    // HELP answers 214, the injected NOOP would answer 250: the first reply in TLS must be
    // the answer to the first command sent in TLS.
    t.send(b"HELP\r\n").await;
    let first = t.reply().await;
    assert!(first.starts_with("214"), "first reply inside TLS: {first}");
    t.cmd("QUIT", 221).await;
}

#[tokio::test]
async fn require_tls_refuses_mail_before_starttls_and_accepts_it_after() {
    let (world, cert, relay) = relay_with_cert(&[("SMTP_OAUTH_RELAY_REQUIRE_TLS", "true")]).await;
    let mut p = plain(relay.local_addr()).await;
    p.cmd("EHLO client.example", 250).await;
    let r = p.cmd("MAIL FROM:<app@example.com>", 530).await;
    assert!(r.contains("5.7.0"), "{r}");
    let mut t = door::upgrade(p, &door::connector(&cert.pem, &[]))
        .await
        .expect("handshake");
    t.cmd("EHLO client.example", 250).await;
    let r = t
        .send_mail(
            "app@example.com",
            &["desk@example.com"],
            &door::message("required tls"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    world.wait_for(1).await;
}

#[tokio::test]
async fn a_failed_handshake_closes_that_connection_and_the_relay_serves_others() {
    let (world, cert, relay) = relay_with_cert(&[(LISTEN_TLS, "127.0.0.1:0")]).await;
    let connector = door::connector(&cert.pem, &[]);
    // Garbage after 220 on the plain port.
    let mut p = plain(relay.local_addr()).await;
    p.cmd("EHLO client.example", 250).await;
    p.cmd("STARTTLS", 220).await;
    p.io.write_all(b"GET / HTTP/1.0\r\nthis is not a TLS ClientHello\r\n\r\n")
        .await
        .unwrap();
    closed(&mut p.io).await;
    // Garbage as the first bytes on the implicit-TLS port.
    let mut raw = TcpStream::connect(relay.tls_addr().unwrap()).await.unwrap();
    raw.write_all(b"EHLO not-tls.example\r\n").await.unwrap();
    closed(&mut raw).await;
    // A client that does not trust the certificate gives up: the relay sees a failed
    // handshake too.
    let stranger = write_cert(world.dir.path(), "stranger");
    let other = door::connector(&stranger.pem, &[]);
    let refused = door::upgrade(plain(relay.local_addr()).await, &other).await;
    assert!(
        refused.is_err(),
        "a client trusting another certificate refuses this one"
    );

    // Others are served as before, on both doors.
    for implicit in [false, true] {
        let mut c = if implicit {
            door::implicit(relay.tls_addr().unwrap(), &connector).await
        } else {
            starttls(relay.local_addr(), &connector).await
        };
        c.cmd("EHLO client.example", 250).await;
        let r = c
            .send_mail(
                "app@example.com",
                &["desk@example.com"],
                &door::message(&format!("after garbage {implicit}")),
            )
            .await;
        assert!(r.starts_with("250"), "{r}");
    }
    world.wait_for(2).await;
}

/// The relay binary with the world's settings, `extra` overriding; its stderr log in `work`.
async fn spawn_relay(
    world: &World,
    extra: &[(&str, String)],
    work: &std::path::Path,
) -> (RelayChild, std::net::SocketAddr) {
    let addr = free_addr();
    let mut env = world.env();
    let mut pairs = vec![
        ("SMTP_OAUTH_RELAY_LISTEN", addr.to_string()),
        ("SMTP_OAUTH_RELAY_ADMIN_LISTEN", "off".to_string()),
    ];
    pairs.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    for (k, v) in pairs {
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v));
    }
    let mut relay = RelayChild::spawn(
        relay_binary(),
        &["serve"],
        &env,
        work,
        &work.join("relay.stderr"),
    );
    relay.wait_ready(addr, Duration::from_secs(30)).await;
    (relay, addr)
}

#[tokio::test]
async fn a_self_signed_certificate_serves_starttls_and_the_binary_warns_about_it() {
    let world = World::start().await;
    let work = tempfile::tempdir().unwrap();
    let (mut relay, addr) = spawn_relay(
        &world,
        &[
            (SELF_SIGNED, "true".into()),
            (
                "SMTP_OAUTH_RELAY__LISTEN__HOSTNAME",
                "relay.door.test".into(),
            ),
        ],
        work.path(),
    )
    .await;
    relay
        .wait_stderr("SELF-SIGNED", Duration::from_secs(10))
        .await;
    let warning = relay
        .stderr()
        .lines()
        .find(|l| l.contains("SELF-SIGNED"))
        .unwrap()
        .to_string();
    assert!(warning.contains("WARN"), "a warning: {warning}");
    assert!(warning.contains("relay.door.test"), "{warning}");

    // What the relay presents, read without checking it.
    let c = starttls(addr, &door::any_cert_connector()).await;
    let der = door::peer_certificate(&c.io);
    drop(c);
    {
        use x509_cert::der::Decode;
        let parsed = x509_cert::Certificate::from_der(&der).expect("an X.509 certificate");
        let tbs = &parsed.tbs_certificate;
        assert_eq!(tbs.issuer, tbs.subject, "self-signed: issuer is subject");
        assert!(
            tbs.subject.to_string().contains("relay.door.test"),
            "named for the host: {}",
            tbs.subject
        );
    }
    // A client that trusts exactly that certificate verifies it and sends mail.
    let trusting = door::connector(&door::pem_of(&der), &[]);
    let mut t = starttls(addr, &trusting).await;
    t.cmd("EHLO client.example", 250).await;
    let r = t
        .send_mail(
            "app@example.com",
            &["desk@example.com"],
            &door::message("self-signed"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    world.wait_for(1).await;
    // A client that checks certificates against anything else refuses it.
    let stranger = write_cert(work.path(), "stranger");
    let refused = door::upgrade(plain(addr).await, &door::connector(&stranger.pem, &[])).await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn sighup_rotates_the_certificate_for_new_connections_while_an_open_one_goes_on() {
    let world = World::start().await;
    let work = tempfile::tempdir().unwrap();
    let first = write_cert(work.path(), "server");
    let (mut relay, addr) = spawn_relay(
        &world,
        &[
            (CERT, first.cert.display().to_string()),
            (KEY, first.key.display().to_string()),
        ],
        work.path(),
    )
    .await;
    let mut a = starttls(addr, &door::connector(&first.pem, &[])).await;
    a.cmd("EHLO client-a.example", 250).await;
    let cert_a = door::peer_certificate(&a.io);

    // Rotation: new files under the same names, then SIGHUP.
    let second = write_cert(work.path(), "server");
    relay.sighup().await;
    relay
        .wait_stderr(
            "inbound TLS certificate read again",
            Duration::from_secs(10),
        )
        .await;
    let mut b = starttls(addr, &door::connector(&second.pem, &[])).await;
    let cert_b = door::peer_certificate(&b.io);
    assert_ne!(cert_a, cert_b, "a new connection sees the new certificate");
    b.cmd("EHLO client-b.example", 250).await;
    // A client that trusts only the old certificate now refuses the relay's.
    let old = door::upgrade(plain(addr).await, &door::connector(&first.pem, &[])).await;
    assert!(old.is_err(), "the old certificate is no longer shown");

    // The connection open across the reload goes on in the TLS session it had.
    let r = a
        .send_mail(
            "app@example.com",
            &["desk@example.com"],
            &door::message("across the reload"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    a.cmd("QUIT", 221).await;
    let stored = world.wait_for(1).await;
    assert!(String::from_utf8_lossy(&stored[0].data).contains("across the reload"));

    // A key that does not belong to the certificate: the current certificate stays, and
    // the error says why without the key.
    let other = write_cert(work.path(), "other");
    std::fs::copy(&other.key, &second.key).unwrap();
    relay.sighup().await;
    relay
        .wait_stderr("keeping the one in use", Duration::from_secs(10))
        .await;
    let log = relay.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("keeping the one in use"))
        .unwrap();
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("does not belong"), "{line}");
    let other_key = std::fs::read_to_string(&other.key).unwrap();
    for secret in door::pem_body_lines(&other_key) {
        assert!(!log.contains(&secret), "the new key's PEM reached the log");
    }
    assert!(!log.contains("PRIVATE KEY"), "no PEM block in the log");
    let mut c = starttls(addr, &door::connector(&second.pem, &[])).await;
    assert_eq!(
        door::peer_certificate(&c.io),
        cert_b,
        "the current one is kept"
    );
    c.cmd("QUIT", 221).await;
    b.cmd("QUIT", 221).await;
}

#[tokio::test]
async fn tls_configuration_mistakes_are_refused_with_the_key_named() {
    let world = World::start().await;
    let cert = write_cert(world.dir.path(), "door");
    let (c, k) = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
    );

    let e = door::config_error(world.env(), &[(CERT, &c)]);
    assert_eq!(e.key, "listen.tls_key_file", "{e}");
    assert!(e.message.contains("missing"), "{e}");
    let e = door::config_error(world.env(), &[(KEY, &k)]);
    assert_eq!(e.key, "listen.tls_certificate_file", "{e}");

    let e = door::config_error(world.env(), &[(LISTEN_TLS, "127.0.0.1:0")]);
    assert_eq!(e.key, "listen.implicit_tls_address", "{e}");
    assert!(e.message.contains("needs a certificate"), "{e}");
    let e = door::config_error(world.env(), &[("SMTP_OAUTH_RELAY_REQUIRE_TLS", "true")]);
    assert_eq!(e.key, "listen.require_tls", "{e}");
    assert!(e.message.contains("needs a certificate"), "{e}");

    // Certificate and key swapped, and a key of another certificate.
    let e = door::config_error(world.env(), &[(CERT, &k), (KEY, &c)]);
    assert_eq!(e.key, "listen.tls_certificate_file", "{e}");
    let other = write_cert(world.dir.path(), "other");
    let other_key = other.key.display().to_string();
    let e = door::config_error(world.env(), &[(CERT, &c), (KEY, &other_key)]);
    assert!(e.message.contains("does not belong"), "{e}");
    let key_pem = std::fs::read_to_string(&other.key).unwrap();
    for secret in door::pem_body_lines(&key_pem) {
        assert!(!e.to_string().contains(&secret));
    }

    // The same settings pass once complete.
    assert!(door::config_result(
        world.env(),
        &[
            (CERT, &c),
            (KEY, &k),
            (LISTEN_TLS, "127.0.0.1:0"),
            ("SMTP_OAUTH_RELAY_REQUIRE_TLS", "true")
        ]
    )
    .is_ok());

    // The binary exits 64 and says which key is wrong.
    let work = tempfile::tempdir().unwrap();
    let mut env = world.env();
    env.push((LISTEN_TLS.into(), "127.0.0.1:0".into()));
    env.push(("SMTP_OAUTH_RELAY_ADMIN_LISTEN".into(), "off".into()));
    let mut relay = RelayChild::spawn(
        relay_binary(),
        &["serve"],
        &env,
        work.path(),
        &work.path().join("relay.stderr"),
    );
    let status = relay.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(64), "{}", relay.stderr_tail(10));
    let err = relay.stderr();
    assert!(err.contains("listen.implicit_tls_address"), "{err}");
    assert!(err.contains("needs a certificate"), "{err}");
}
