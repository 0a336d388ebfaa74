//! The door's settings and exposure rules, through the whole load-and-validate path.

use super::super::tests::{load, GOOD};
use super::super::*;

fn refused(extra: &[(&str, &str)], key: &str, words: &str) {
    match load(extra) {
        Ok(_) => panic!("{extra:?} must be refused"),
        Err(e) => {
            assert_eq!(e.key, key, "{e}");
            assert!(e.message.contains(words), "{e}");
        }
    }
}

/// A users file with one cheap argon2id hash, in a directory kept for the test.
fn users_file(dir: &std::path::Path) -> String {
    use argon2::PasswordHasher;
    let params = argon2::Params::new(256, 1, 1, None).unwrap();
    let hash = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(b"pw")
        .unwrap()
        .to_string();
    let path = dir.join("users");
    std::fs::write(&path, format!("printer:{hash}\n")).unwrap();
    path.display().to_string()
}

const SELF_SIGNED: (&str, &str) = ("SMTP_OAUTH_RELAY_INBOUND_TLS_SELF_SIGNED", "true");

#[test]
fn the_implicit_tls_port_needs_its_own_port_and_a_certificate() {
    // Port 0 twice: each listener gets a free port of its own.
    let c = load(&[
        ("SMTP_OAUTH_RELAY_LISTEN", "127.0.0.1:0"),
        ("SMTP_OAUTH_RELAY_LISTEN_TLS", "127.0.0.1:0"),
        SELF_SIGNED,
    ])
    .unwrap();
    assert!(c.listen.implicit_tls_address.is_some() && c.listen.tls.is_some());
    refused(
        &[
            ("SMTP_OAUTH_RELAY_LISTEN", "127.0.0.1:2525"),
            ("SMTP_OAUTH_RELAY_LISTEN_TLS", "127.0.0.1:2525"),
            SELF_SIGNED,
        ],
        "listen.implicit_tls_address",
        "its own port",
    );
    refused(
        &[("SMTP_OAUTH_RELAY_LISTEN_TLS", "127.0.0.1:465")],
        "listen.implicit_tls_address",
        "needs a certificate",
    );
    refused(
        &[("SMTP_OAUTH_RELAY_REQUIRE_TLS", "true")],
        "listen.require_tls",
        "needs a certificate",
    );
    refused(
        &[(
            "SMTP_OAUTH_RELAY_INBOUND_TLS_CERT_FILE",
            "/nonexistent/tls.crt",
        )],
        "listen.tls_key_file",
        "missing",
    );
}

#[test]
fn exposure_needs_an_allow_list_or_real_auth() {
    let dir = tempfile::tempdir().unwrap();
    let users = users_file(dir.path());
    refused(
        &[("SMTP_OAUTH_RELAY_LISTEN", "0.0.0.0:2525")],
        "listen.allow",
        "open relay",
    );
    refused(
        &[
            ("SMTP_OAUTH_RELAY_LISTEN", "0.0.0.0:2525"),
            ("SMTP_OAUTH_RELAY__LISTEN__ALLOW", "0.0.0.0/0"),
        ],
        "listen.allow",
        "open relay",
    );
    for everyone in [
        "0.0.0.0/1,128.0.0.0/1",
        "::ffff:0:0/96",
        "::/8",
        "1.0.0.0/7",
    ] {
        refused(
            &[
                ("SMTP_OAUTH_RELAY_LISTEN", "[::]:2525"),
                ("SMTP_OAUTH_RELAY__LISTEN__ALLOW", everyone),
            ],
            "listen.allow",
            "open relay",
        );
    }
    // Everyone may connect when every client must log in with a real user.
    let c = load(&[
        ("SMTP_OAUTH_RELAY_LISTEN", "0.0.0.0:2525"),
        ("SMTP_OAUTH_RELAY_USERS_FILE", &users),
        ("SMTP_OAUTH_RELAY_REQUIRE_AUTH", "true"),
        SELF_SIGNED,
    ])
    .unwrap();
    assert!(c.listen.permits("203.0.113.9".parse().unwrap()));
    let c = load(&[
        ("SMTP_OAUTH_RELAY_LISTEN", "0.0.0.0:2525"),
        ("SMTP_OAUTH_RELAY__LISTEN__ALLOW", "0.0.0.0/0"),
        ("SMTP_OAUTH_RELAY_USERS_FILE", &users),
        ("SMTP_OAUTH_RELAY_REQUIRE_AUTH", "true"),
        SELF_SIGNED,
    ])
    .unwrap();
    assert!(c.listen.security().require_auth);
    // With an allow list, only its networks.
    let c = load(&[
        ("SMTP_OAUTH_RELAY_LISTEN", "0.0.0.0:2525"),
        ("SMTP_OAUTH_RELAY__LISTEN__ALLOW", "10.0.0.0/8"),
        ("SMTP_OAUTH_RELAY_USERS_FILE", &users),
        ("SMTP_OAUTH_RELAY_REQUIRE_AUTH", "true"),
        SELF_SIGNED,
    ])
    .unwrap();
    assert!(!c.listen.permits("203.0.113.9".parse().unwrap()));
    assert!(c.listen.permits("10.1.2.3".parse().unwrap()));
}

#[test]
fn accept_any_is_only_a_compatibility_switch() {
    let dir = tempfile::tempdir().unwrap();
    let users = users_file(dir.path());
    let any = ("SMTP_OAUTH_RELAY__LISTEN__AUTH_ACCEPT_ANY", "true");
    refused(
        &[any, SELF_SIGNED],
        "listen.auth_accept_any",
        "needs listen.allow",
    );
    // Accept-any with everyone allowed is still an open relay.
    refused(
        &[
            any,
            SELF_SIGNED,
            ("SMTP_OAUTH_RELAY_REQUIRE_AUTH", "true"),
            ("SMTP_OAUTH_RELAY__LISTEN__ALLOW", "0.0.0.0/0"),
        ],
        "listen.allow",
        "open relay",
    );
    refused(
        &[any, SELF_SIGNED, ("SMTP_OAUTH_RELAY_USERS_FILE", &users)],
        "listen.auth_accept_any",
        "one of the two",
    );
    let c = load(&[
        any,
        SELF_SIGNED,
        ("SMTP_OAUTH_RELAY__LISTEN__ALLOW", "10.9.0.0/24"),
    ])
    .unwrap();
    assert!(c.listen.auth.accept_any && c.listen.security().auth);
}

#[test]
fn auth_needs_users_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let users = users_file(dir.path());
    refused(
        &[("SMTP_OAUTH_RELAY_REQUIRE_AUTH", "true"), SELF_SIGNED],
        "listen.require_auth",
        "users_file",
    );
    refused(
        &[("SMTP_OAUTH_RELAY_USERS_FILE", &users)],
        "listen.users_file",
        "only inside TLS",
    );
    // Plain AUTH for this host only.
    let c = load(&[
        ("SMTP_OAUTH_RELAY_USERS_FILE", &users),
        (
            "SMTP_OAUTH_RELAY__LISTEN__AUTH_WITHOUT_TLS_ON_LOOPBACK",
            "true",
        ),
    ])
    .unwrap();
    assert!(c.listen.tls.is_none() && c.listen.security().auth);
    // ... which network clients could never use.
    refused(
        &[
            ("SMTP_OAUTH_RELAY_LISTEN", "0.0.0.0:2525"),
            ("SMTP_OAUTH_RELAY_USERS_FILE", &users),
            ("SMTP_OAUTH_RELAY_REQUIRE_AUTH", "true"),
            (
                "SMTP_OAUTH_RELAY__LISTEN__AUTH_WITHOUT_TLS_ON_LOOPBACK",
                "true",
            ),
        ],
        "listen.require_auth",
        "never log in",
    );
    refused(
        &[
            ("SMTP_OAUTH_RELAY_USERS_FILE", "/nonexistent/users"),
            SELF_SIGNED,
        ],
        "listen.users_file",
        "/nonexistent/users",
    );
    refused(
        &[
            ("SMTP_OAUTH_RELAY_USERS_FILE", &users),
            SELF_SIGNED,
            ("SMTP_OAUTH_RELAY__LISTEN__AUTH_MAX_FAILURES", "0"),
        ],
        "listen.auth_max_failures",
        "at least 1",
    );
}

#[test]
fn routes_name_users_the_file_knows() {
    let dir = tempfile::tempdir().unwrap();
    let users = users_file(dir.path());
    let file = dir.path().join("relay.toml");
    let write = |user: &str, with_users: bool| {
        let listen = if with_users {
            format!("[listen]\nusers_file = \"{users}\"\ntls_self_signed = true\n")
        } else {
            String::new()
        };
        std::fs::write(
            &file,
            format!("{listen}[[route]]\nsenders = [\"*\"]\nusers = [\"{user}\"]\n"),
        )
        .unwrap();
    };
    let pairs: Vec<(String, String)> = GOOD
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let load_file = || Config::load(Some(&file), &pairs).and_then(|c| c.validate());
    write("printer", true);
    let c = load_file().unwrap();
    assert_eq!(
        c.routes
            .route("a@b.c", "127.0.0.1".parse().unwrap(), Some("printer")),
        Some(0)
    );
    write("scanner", true);
    let Err(e) = load_file() else {
        panic!("unknown user refused")
    };
    assert_eq!(e.key, "route[1].users");
    assert!(e.message.contains("`scanner` is not a user"), "{e}");
    // Accept-any mode: anyone could log in as `printer`.
    std::fs::write(
        &file,
        "[listen]\nauth_accept_any = true\nallow = [\"10.0.0.0/8\"]\ntls_self_signed = true\n\
         [[route]]\nsenders = [\"*\"]\nusers = [\"printer\"]\n",
    )
    .unwrap();
    let Err(e) = load_file() else {
        panic!("a route by user in accept-any mode refused")
    };
    assert!(e.message.contains("accept-any"), "{e}");
    write("printer", false);
    let Err(e) = load_file() else {
        panic!("users without AUTH refused")
    };
    assert!(
        e.message.contains("needs inbound AUTH with a users file"),
        "{e}"
    );
}
