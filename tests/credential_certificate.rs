//! The certificate credential end to end against the sandbox, which checks assertions as
//! Entra does (registered certificate by thumbprint, signature, claims, time, one use per
//! `jti`): a relay configured by environment variables delivers with PS256 and RS256, with
//! plain and encrypted keys; mistakes are named at validation; an unregistered certificate
//! gets the AADSTS700027 advice; expiry shows in `/readyz` and `check`; the certificate
//! rotates on SIGHUP without a restart; no key, passphrase or assertion reaches a log.

#[path = "support/child.rs"]
mod child;
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use child::{free_addr, RelayChild};
use smtp_oauth_relay::config::{Config, ConfigError, ValidConfig};
use smtp_oauth_relay::sandbox::RegisteredCertificate;
use smtp_oauth_relay::token::credential;
use support::{http_get, relay_binary, RawClient, World};

/// A self-signed RSA (or EC) certificate and its key, as an admin would make them.
struct Pair {
    cert_pem: String,
    /// PKCS#8 `PRIVATE KEY`.
    key_pem: String,
    key_der: Vec<u8>,
    cert_der: Vec<u8>,
}

impl Pair {
    fn rsa_until(not_after: time::OffsetDateTime) -> Pair {
        Self::make(&rcgen::PKCS_RSA_SHA256, not_after)
    }

    fn rsa() -> Pair {
        Self::rsa_until(time::OffsetDateTime::now_utc() + time::Duration::days(365))
    }

    fn make(alg: &'static rcgen::SignatureAlgorithm, not_after: time::OffsetDateTime) -> Pair {
        let key = rcgen::KeyPair::generate_for(alg).expect("key generation");
        let mut params = rcgen::CertificateParams::new(vec!["smtp-relay".into()]).unwrap();
        params.not_before = not_after - time::Duration::days(400);
        params.not_after = not_after;
        let cert = params.self_signed(&key).unwrap();
        Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
            cert_der: cert.der().to_vec(),
        }
    }

    fn registered(&self) -> RegisteredCertificate {
        RegisteredCertificate::from_pem(&self.cert_pem).expect("a CERTIFICATE block")
    }

    /// The SHA-1 thumbprint as the portal shows it.
    fn thumbprint(&self) -> String {
        let d =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &self.cert_der);
        d.as_ref().iter().map(|b| format!("{b:02X}")).collect()
    }

    /// The key as PKCS#1 `RSA PRIVATE KEY`.
    fn pkcs1_pem(&self) -> String {
        let info = pkcs8::PrivateKeyInfo::try_from(self.key_der.as_slice()).unwrap();
        pem::encode(&pem::Pem::new("RSA PRIVATE KEY", info.private_key))
    }

    /// The key as encrypted PKCS#8 (PBES2, PBKDF2-SHA256, AES-256-CBC), as `openssl pkcs8
    /// -topk8 -v2 aes-256-cbc` writes it.
    fn encrypted_pem(&self, passphrase: &str) -> String {
        let info = pkcs8::PrivateKeyInfo::try_from(self.key_der.as_slice()).unwrap();
        let params =
            pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(2048, &[3u8; 16], &[5u8; 16])
                .unwrap();
        let doc = info
            .encrypt_with_params(params, passphrase.as_bytes())
            .unwrap();
        pem::encode(&pem::Pem::new("ENCRYPTED PRIVATE KEY", doc.as_bytes()))
    }

    /// One base64 line from the middle of the key, to look for in logs.
    fn key_line(&self) -> String {
        self.key_pem.lines().nth(3).unwrap().to_string()
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// The world's environment with the client secret replaced by `extra`.
fn cert_env(world: &World, extra: &[(&str, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = world
        .env()
        .into_iter()
        .filter(|(k, _)| k != "SMTP_OAUTH_RELAY_CLIENT_SECRET")
        .collect();
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v.clone()));
    }
    env
}

fn validate(env: &[(String, String)]) -> Result<ValidConfig, ConfigError> {
    Config::load(None, env).expect("config loads").validate()
}

fn message(n: u32) -> Vec<u8> {
    format!(
        "From: app@example.com\r\nTo: someone@example.com\r\nMessage-ID: <cert-{n}@example.com>\r\nSubject: {n}\r\n\r\nbody {n}\r\n"
    )
    .into_bytes()
}

async fn send(addr: std::net::SocketAddr, n: u32) {
    let mut c = RawClient::connect(addr).await;
    c.cmd("EHLO app", 250).await;
    let r = c
        .send_mail("app@example.com", &["someone@example.com"], &message(n))
        .await;
    assert!(r.starts_with("250"), "message {n}: {r}");
    c.cmd("QUIT", 221).await;
}

#[tokio::test]
async fn ps256_certificate_from_the_environment_delivers() {
    let pair = Pair::rsa();
    let reg = pair.registered();
    let world = World::start_with(|o| o.certificates = vec![reg]).await;
    let dir = tempfile::tempdir().unwrap();
    // Certificate and key in one file; the kind is found because it is the only one set.
    let both = write(
        dir.path(),
        "relay.pem",
        &format!("{}{}", pair.cert_pem, pair.key_pem),
    );
    let env = cert_env(
        &world,
        &[("SMTP_OAUTH_RELAY_CLIENT_CERTIFICATE_FILE", path(&both))],
    );
    let valid = validate(&env).expect("validates");
    assert!(valid.warnings.is_empty(), "{:?}", valid.warnings);
    let relay = smtp_oauth_relay::app::Relay::start(valid).await.unwrap();
    assert!(
        relay.tokens().describe().contains(&pair.thumbprint()),
        "{}",
        relay.tokens().describe()
    );
    send(relay.local_addr(), 1).await;
    assert_eq!(world.wait_for(1).await.len(), 1);
    let seen = world.sandbox.accepted_assertions();
    let last = seen.last().expect("an assertion was accepted");
    assert_eq!(last.alg, "PS256");
    assert_eq!(last.by, "x5t#S256");
    assert_eq!(last.thumbprint, pair.thumbprint());
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn rs256_with_a_pkcs1_key_file_and_fresh_jtis() {
    let pair = Pair::rsa();
    let reg = pair.registered();
    let world = World::start_with(|o| o.certificates = vec![reg]).await;
    let dir = tempfile::tempdir().unwrap();
    let cert = write(dir.path(), "cert.pem", &pair.cert_pem);
    let key = write(dir.path(), "key.pem", &pair.pkcs1_pem());
    let env = cert_env(
        &world,
        &[
            ("SMTP_OAUTH_RELAY_CREDENTIAL", "certificate".into()),
            ("SMTP_OAUTH_RELAY_CLIENT_CERTIFICATE_FILE", path(&cert)),
            ("SMTP_OAUTH_RELAY_CLIENT_KEY_FILE", path(&key)),
            (
                "SMTP_OAUTH_RELAY__ACCOUNT__CERTIFICATE_ALGORITHM",
                "RS256".into(),
            ),
        ],
    );
    let valid = validate(&env).expect("validates");
    let source = credential::build(&valid.account().credential).expect("builds");
    // Three fetches, three different jtis (the sandbox would refuse a repeat).
    for _ in 0..3 {
        source.fetch().await.expect("a token");
    }
    let seen = world.sandbox.accepted_assertions();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|a| a.alg == "RS256" && a.by == "x5t"));
    let mut jtis: Vec<&str> = seen.iter().map(|a| a.jti.as_str()).collect();
    jtis.sort();
    jtis.dedup();
    assert_eq!(jtis.len(), 3, "every assertion has its own jti");
}

#[tokio::test]
async fn an_encrypted_key_with_its_passphrase_file() {
    let pair = Pair::rsa();
    let reg = pair.registered();
    let world = World::start_with(|o| o.certificates = vec![reg]).await;
    let dir = tempfile::tempdir().unwrap();
    let cert = write(dir.path(), "cert.pem", &pair.cert_pem);
    let key = write(dir.path(), "key.pem", &pair.encrypted_pem("tr0ub4dor&3"));
    let pass = write(dir.path(), "passphrase", "tr0ub4dor&3\n");
    let env = cert_env(
        &world,
        &[
            ("SMTP_OAUTH_RELAY_CLIENT_CERTIFICATE_FILE", path(&cert)),
            ("SMTP_OAUTH_RELAY_CLIENT_KEY_FILE", path(&key)),
            ("SMTP_OAUTH_RELAY_CLIENT_KEY_PASSPHRASE_FILE", path(&pass)),
        ],
    );
    let valid = validate(&env).expect("validates");
    let shown = format!("{:?}", valid.account().credential);
    assert!(!shown.contains("tr0ub4dor"), "{shown}");
    let source = credential::build(&valid.account().credential).expect("builds");
    source.fetch().await.expect("a token");
    assert_eq!(world.sandbox.accepted_assertions().len(), 1);
}

#[tokio::test]
async fn validation_names_the_key_at_fault() {
    let world = World::start().await;
    let pair = Pair::rsa();
    let other = Pair::rsa();
    let ec = Pair::make(
        &rcgen::PKCS_ECDSA_P256_SHA256,
        time::OffsetDateTime::now_utc() + time::Duration::days(30),
    );
    let dir = tempfile::tempdir().unwrap();
    let cert = write(dir.path(), "cert.pem", &pair.cert_pem);
    let encrypted = write(dir.path(), "enc.pem", &pair.encrypted_pem("right"));
    let wrong = write(dir.path(), "wrong-pass", "not-the-passphrase\n");
    let foreign = write(dir.path(), "other.pem", &other.key_pem);
    let ec_key = write(dir.path(), "ec.pem", &ec.key_pem);
    let cert_var = ("SMTP_OAUTH_RELAY_CLIENT_CERTIFICATE_FILE", path(&cert));
    let key_var = |p: &Path| ("SMTP_OAUTH_RELAY_CLIENT_KEY_FILE", path(p));

    let e = validate(&cert_env(
        &world,
        &[
            cert_var.clone(),
            key_var(&encrypted),
            ("SMTP_OAUTH_RELAY_CLIENT_KEY_PASSPHRASE_FILE", path(&wrong)),
        ],
    ))
    .unwrap_err();
    assert_eq!(e.key, "account.client_key_passphrase_file", "{e:?}");
    assert!(e.message.contains("wrong passphrase"), "{}", e.message);
    assert!(e.message.contains(&path(&wrong)), "{}", e.message);
    assert!(!e.message.contains("not-the-passphrase"), "{}", e.message);

    let e = validate(&cert_env(&world, &[cert_var.clone(), key_var(&foreign)])).unwrap_err();
    assert_eq!(e.key, "account.client_key_file", "{e:?}");
    assert!(
        e.message.contains("does not belong to the certificate"),
        "{}",
        e.message
    );

    let e = validate(&cert_env(&world, &[cert_var.clone(), key_var(&ec_key)])).unwrap_err();
    assert_eq!(e.key, "account.client_key_file", "{e:?}");
    assert!(e.message.contains("not an RSA key"), "{}", e.message);

    let no_key = write(dir.path(), "only-cert.pem", &pair.cert_pem);
    let e = validate(&cert_env(
        &world,
        &[("SMTP_OAUTH_RELAY_CLIENT_CERTIFICATE_FILE", path(&no_key))],
    ))
    .unwrap_err();
    assert_eq!(e.key, "account.client_certificate_file", "{e:?}");
    assert!(e.message.contains("client_key_file"), "{}", e.message);
    for text in [&e.message, &format!("{e:?}")] {
        assert!(!text.contains(&pair.key_line()), "no key material: {text}");
    }
}

#[tokio::test]
async fn an_unregistered_certificate_gets_the_700027_advice() {
    let world = World::start().await;
    let pair = Pair::rsa();
    let dir = tempfile::tempdir().unwrap();
    let both = write(
        dir.path(),
        "relay.pem",
        &format!("{}{}", pair.cert_pem, pair.key_pem),
    );
    let env = cert_env(
        &world,
        &[("SMTP_OAUTH_RELAY_CLIENT_CERTIFICATE_FILE", path(&both))],
    );
    let valid = validate(&env).unwrap();
    let source = credential::build(&valid.account().credential).unwrap();
    let e = source.fetch().await.expect_err("not registered");
    assert_eq!(e.aadsts(), Some(700027), "{e}");
    assert!(e.is_config(), "{e}");
    let text = e.to_string();
    assert!(text.contains("The key was not found"), "{text}");
    assert!(!text.contains("eyJ"), "no assertion in the error: {text}");
    let advice = e.advice().expect("advice");
    assert!(advice.contains("Certificates & secrets"), "{advice}");
    assert!(advice.contains("public part"), "{advice}");
}

async fn readyz_until(addr: std::net::SocketAddr, want: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http_get(addr, "/readyz").await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {status}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_expired_certificate_makes_readyz_fail() {
    let pair = Pair::rsa_until(time::OffsetDateTime::now_utc() - time::Duration::days(2));
    let reg = pair.registered().expired();
    let world = World::start_with(|o| o.certificates = vec![reg]).await;
    let dir = tempfile::tempdir().unwrap();
    let both = write(
        dir.path(),
        "relay.pem",
        &format!("{}{}", pair.cert_pem, pair.key_pem),
    );
    let env = cert_env(
        &world,
        &[("SMTP_OAUTH_RELAY_CLIENT_CERTIFICATE_FILE", path(&both))],
    );
    let valid = validate(&env).expect("an expired certificate is not a syntax error");
    assert!(
        valid
            .warnings
            .iter()
            .any(|w| w.contains("the certificate expired on")),
        "{:?}",
        valid.warnings
    );
    let relay = smtp_oauth_relay::app::Relay::start(valid).await.unwrap();
    let admin = relay.admin_addr().expect("admin is on");
    let body = readyz_until(admin, 503).await;
    assert!(
        body.lines()
            .any(|l| l.starts_with("FAIL credential: the certificate expired on")),
        "{body}"
    );
    relay.shutdown(Duration::from_secs(5)).await;
}

/// Runs `smtp-oauth-relay check` with exactly `env` (plus PATH), bounded in time.
async fn check(env: &[(String, String)]) -> (Option<i32>, String) {
    let mut cmd = tokio::process::Command::new(relay_binary());
    cmd.arg("check").env_clear().kill_on_drop(true);
    if let Some(p) = std::env::var_os("PATH") {
        cmd.env("PATH", p);
    }
    cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("check finishes within 60 s")
        .expect("run check");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn check_warns_ahead_of_expiry_and_fails_after_it() {
    let soon = Pair::rsa_until(time::OffsetDateTime::now_utc() + time::Duration::days(10));
    let gone = Pair::rsa_until(time::OffsetDateTime::now_utc() - time::Duration::days(1));
    let (r1, r2) = (soon.registered(), gone.registered().expired());
    let world = World::start_with(|o| o.certificates = vec![r1, r2]).await;
    let dir = tempfile::tempdir().unwrap();
    let soon_file = write(
        dir.path(),
        "soon.pem",
        &format!("{}{}", soon.cert_pem, soon.key_pem),
    );
    let (code, out) = check(&cert_env(
        &world,
        &[("SMTP_OAUTH_RELAY_CLIENT_CERTIFICATE_FILE", path(&soon_file))],
    ))
    .await;
    assert_eq!(code, Some(0), "{out}");
    let note = out
        .lines()
        .find(|l| l.contains("the certificate expires on"))
        .unwrap_or_else(|| panic!("no expiry warning:\n{out}"));
    assert!(note.contains("day(s)"), "{note}");
    assert!(note.contains(&soon.thumbprint()), "{note}");
    assert!(!out.contains(&soon.key_line()), "{out}");

    let gone_file = write(
        dir.path(),
        "gone.pem",
        &format!("{}{}", gone.cert_pem, gone.key_pem),
    );
    let (code, out) = check(&cert_env(
        &world,
        &[("SMTP_OAUTH_RELAY_CLIENT_CERTIFICATE_FILE", path(&gone_file))],
    ))
    .await;
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("[FAIL] credential: the certificate expired on"),
        "{out}"
    );
    assert!(out.contains("AADSTS700027"), "Entra refuses it too:\n{out}");
}

#[tokio::test]
async fn rotation_in_process_takes_the_new_certificate_for_the_next_token() {
    let old = Pair::rsa();
    let new = Pair::rsa();
    let reg = old.registered();
    let world = World::start_with(|o| o.certificates = vec![reg]).await;
    let dir = tempfile::tempdir().unwrap();
    let cert = write(dir.path(), "cert.pem", &old.cert_pem);
    let key = write(dir.path(), "key.pem", &old.key_pem);
    let env = cert_env(
        &world,
        &[
            ("SMTP_OAUTH_RELAY_CLIENT_CERTIFICATE_FILE", path(&cert)),
            ("SMTP_OAUTH_RELAY_CLIENT_KEY_FILE", path(&key)),
        ],
    );
    let relay = smtp_oauth_relay::app::Relay::start(validate(&env).unwrap())
        .await
        .unwrap();
    let first = relay
        .tokens()
        .get()
        .await
        .expect("a token with the old certificate");

    // A half-written rotation (new certificate, old key) is refused; the old pair stays.
    std::fs::write(&cert, &new.cert_pem).unwrap();
    let err = relay.reload_secrets().expect_err("key does not match");
    assert!(err.contains(&path(&key)), "{err}");
    assert!(relay.tokens().describe().contains(&old.thumbprint()));

    // The admin uploads the new certificate and deletes the old one; the files follow.
    world.sandbox.register_certificate(new.registered());
    world.sandbox.unregister_certificate(&old.cert_der);
    std::fs::write(&key, &new.key_pem).unwrap();
    assert_eq!(
        relay.reload_secrets(),
        Ok(smtp_oauth_relay::token::Reloaded::Changed)
    );
    assert!(relay.tokens().describe().contains(&new.thumbprint()));
    // Exchange stops taking the old token: the next message needs a new one.
    relay.tokens().invalidate(&first);
    world.sandbox.revoke_tokens();
    send(relay.local_addr(), 2).await;
    assert_eq!(world.wait_for(1).await.len(), 1);
    let seen = world.sandbox.accepted_assertions();
    assert_eq!(seen.first().unwrap().thumbprint, old.thumbprint());
    assert_eq!(seen.last().unwrap().thumbprint, new.thumbprint());
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn sighup_rotates_the_certificate_and_no_secret_reaches_the_log() {
    let old = Pair::rsa();
    let new = Pair::rsa();
    let reg = old.registered();
    let world = World::start_with(|o| o.certificates = vec![reg]).await;
    let dir = tempfile::tempdir().unwrap();
    let cert = write(dir.path(), "cert.pem", &old.cert_pem);
    let key = write(
        dir.path(),
        "key.pem",
        &old.encrypted_pem("first passphrase"),
    );
    let pass = write(dir.path(), "passphrase", "first passphrase\n");
    let listen = free_addr();
    let admin = free_addr();
    let env = cert_env(
        &world,
        &[
            ("SMTP_OAUTH_RELAY_LISTEN", listen.to_string()),
            ("SMTP_OAUTH_RELAY_ADMIN_LISTEN", admin.to_string()),
            ("SMTP_OAUTH_RELAY_CLIENT_CERTIFICATE_FILE", path(&cert)),
            ("SMTP_OAUTH_RELAY_CLIENT_KEY_FILE", path(&key)),
            ("SMTP_OAUTH_RELAY_CLIENT_KEY_PASSPHRASE_FILE", path(&pass)),
            ("RUST_LOG", "debug".into()),
        ],
    );
    let mut relay = RelayChild::spawn(
        relay_binary(),
        &["serve"],
        &env,
        dir.path(),
        &dir.path().join("stderr.log"),
    );
    relay.wait_ready(listen, Duration::from_secs(20)).await;
    // Ready means a token was fetched with the old certificate. No message yet: a pooled,
    // already authenticated session would not need the next token.
    readyz_until(admin, 200).await;

    world.sandbox.register_certificate(new.registered());
    world.sandbox.unregister_certificate(&old.cert_der);
    std::fs::write(&cert, &new.cert_pem).unwrap();
    std::fs::write(&key, new.encrypted_pem("second passphrase")).unwrap();
    std::fs::write(&pass, "second passphrase\n").unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &relay.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    // Wait for the relay to say it read the files again, then make it need a new token.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !relay.stderr().contains("credential files read again") {
        assert!(Instant::now() < deadline, "{}", relay.stderr_tail(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    world.sandbox.revoke_tokens();
    send(listen, 2).await;
    assert_eq!(world.wait_for(1).await.len(), 1);
    let seen = world.sandbox.accepted_assertions();
    assert_eq!(seen.last().unwrap().thumbprint, new.thumbprint());
    assert_eq!(seen.first().unwrap().thumbprint, old.thumbprint());

    relay.sigterm().await;
    let status = relay.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{}", relay.stderr_tail(30));
    let log = relay.stderr();
    for (what, needle) in [
        ("the old key", old.key_line()),
        ("the new key", new.key_line()),
        ("the first passphrase", "first passphrase".to_string()),
        ("the second passphrase", "second passphrase".to_string()),
        ("an assertion or token (a JWT)", "eyJ".to_string()),
    ] {
        assert!(!log.contains(&needle), "{what} reached the log:\n{log}");
    }
    assert!(
        log.contains(&new.thumbprint()),
        "the log names the certificate:\n{log}"
    );
}
