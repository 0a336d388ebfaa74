use super::*;

/// Made by the reference implementation (Debian's `argon2` tool, not this crate):
/// `printf 'correct horse' | argon2 fixture-salt-0123 -id -m 8 -t 1 -p 1 -e` (m=256 KiB, one
/// pass: cheap to verify), and the same with `-i` and `-d`.
const ID: &str = "$argon2id$v=19$m=256,t=1,p=1$Zml4dHVyZS1zYWx0LTAxMjM$rJ6KUhY13YY09usddlebPrTTtffMC79pz7lKpfkRRN8";
const I: &str = "$argon2i$v=19$m=256,t=1,p=1$Zml4dHVyZS1zYWx0LTAxMjM$cjUcR1t/tiyAyfXevN4v0UXplo4i7+lvgV8NjS5i7tg";
const D: &str = "$argon2d$v=19$m=256,t=1,p=1$Zml4dHVyZS1zYWx0LTAxMjM$YvwlyHY2mDMi5uIQ0AxYK6sgecvFZTWn5LCxRlGghI0";
const PASSWORD: &[u8] = b"correct horse";

/// A cheap argon2id hash of `password` made by this crate (random salt).
fn cheap(password: &[u8]) -> String {
    Argon2::new(
        Algorithm::Argon2id,
        argon2::Version::V0x13,
        Params::new(256, 1, 1, None).unwrap(),
    )
    .hash_password(password)
    .unwrap()
    .to_string()
}

fn err(text: &str) -> String {
    Users::parse(text).expect_err(text)
}

#[test]
fn parses_users_comments_blank_lines_and_senders() {
    let text = format!(
        "# the relay's users\n\
         \n\
         \x20 app : {ID} \n\
         printer:{I}:scan@contoso.com, @alerts.contoso.com\n\
         \t# an indented comment\n\
         cron:{D}:*\n\
         empty-list:{ID}:\n"
    );
    let users = Users::parse(&text).unwrap();
    assert_eq!(users.len(), 4);
    assert!(!users.is_empty());
    let app = users.get("app").unwrap();
    assert!(app.senders.is_empty());
    assert!(app.may_send_as("anyone@anywhere.example"));
    let printer = users.get("printer").unwrap();
    assert_eq!(
        printer.senders,
        vec![
            SenderPattern::Exact("scan@contoso.com".into()),
            SenderPattern::Domain("alerts.contoso.com".into()),
        ]
    );
    assert!(printer.may_send_as("SCAN@contoso.com"));
    assert!(printer.may_send_as("disk@alerts.contoso.com"));
    assert!(!printer.may_send_as("ceo@contoso.com"));
    assert!(!printer.may_send_as(""));
    assert_eq!(users.get("cron").unwrap().senders, vec![SenderPattern::Any]);
    assert!(users.get("empty-list").unwrap().senders.is_empty());
    assert!(users.get("nobody").is_none());
}

#[test]
fn verifies_reference_hashes_of_all_three_variants() {
    let users = Users::parse(&format!("a:{ID}\nb:{I}\nc:{D}\n")).unwrap();
    for name in ["a", "b", "c"] {
        let user = users
            .verify(name, PASSWORD)
            .unwrap_or_else(|| panic!("{name}"));
        assert_eq!(user.name, name);
        assert!(users.verify(name, b"correct horse ").is_none(), "{name}");
        assert!(users.verify(name, b"").is_none(), "{name}");
    }
}

#[test]
fn a_wrong_password_an_unknown_user_and_a_case_changed_name_fail() {
    let users = Users::parse(&format!("app:{}\n", cheap(b"s3cret"))).unwrap();
    assert_eq!(users.verify("app", b"s3cret").unwrap().name, "app");
    assert!(users.verify("app", b"s3cre").is_none());
    assert!(users.verify("app", b"S3CRET").is_none());
    assert!(users.verify("nobody", b"s3cret").is_none());
    assert!(users.verify("APP", b"s3cret").is_none());
    assert!(users.verify("", b"").is_none());
}

#[test]
fn an_unknown_name_is_checked_against_a_dummy_with_the_first_users_parameters() {
    let users = Users::parse(&format!("app:{ID}\n")).unwrap();
    let model = PasswordHash::new(ID).unwrap();
    assert_eq!(users.dummy.algorithm, model.algorithm);
    assert_eq!(users.dummy.version, model.version);
    assert_eq!(users.dummy.params, model.params);
    assert_ne!(users.dummy.salt, model.salt);
    assert_eq!(users.dummy.hash.unwrap().len(), model.hash.unwrap().len());
    // The dummy really is a verifiable argon2 hash (so the work is done), just never matched.
    let verify = Argon2::default().verify_password(PASSWORD, &users.dummy);
    assert_eq!(verify, Err(argon2::password_hash::Error::PasswordInvalid));
}

#[test]
fn hash_password_makes_a_default_argon2id_hash_that_verifies() {
    let hash = hash_password(b"pa:ss word").unwrap();
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    assert!(!hash.contains(':'));
    let other = hash_password(b"pa:ss word").unwrap();
    assert_ne!(hash, other, "a random salt each time");
    let users = Users::parse(&format!("app:{hash}")).unwrap();
    assert!(users.verify("app", b"pa:ss word").is_some());
    assert!(users.verify("app", b"pa:ss words").is_none());
}

#[test]
fn an_empty_or_comment_only_file_is_no_users() {
    for text in ["", "\n\n", "# only a comment\n   \n#another\n"] {
        assert!(err(text).contains("no users"), "{text:?}");
    }
}

#[test]
fn each_bad_line_is_refused_with_its_line_number_and_user() {
    let cases: Vec<(String, &str)> = vec![
        ("justaname".into(), "line 1: expected `name:argon2-hash`"),
        (format!(":{ID}"), "line 1: the user name is empty"),
        (
            format!("a b:{ID}"),
            "line 1: a user name cannot contain spaces",
        ),
        ("app:".into(), "line 1: user `app` has no password hash"),
        (
            format!("ok:{ID}\n\napp:{ID}:not-a-pattern"),
            "line 3: user `app`: `not-a-pattern` is not a sender pattern",
        ),
        (
            format!("app:{ID}:@"),
            "line 1: user `app`: `@` is not a domain pattern",
        ),
        (
            format!("app:{ID}\n# c\napp:{I}"),
            "line 3: user `app` is listed twice",
        ),
    ];
    for (text, want) in cases {
        let e = err(&text);
        assert!(e.starts_with(want), "{text:?}: {e}");
    }
}

/// Each refused password field, with what the error must say, and the field itself (which
/// the error must never echo).
#[test]
fn refused_password_fields_are_named_but_never_echoed() {
    let huge_memory = ID.replace("m=256", "m=2000000");
    let many_passes = ID.replace("t=1", "t=65");
    let cases: Vec<(String, &str)> = vec![
        (
            "hunter2-plaintext".into(),
            "not an argon2 hash (a plain-text password?)",
        ),
        (
            "$2y$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy".into(),
            "is a bcrypt hash",
        ),
        ("$6$saltsalt$hashhashhashhash".into(), "is a crypt(3) hash"),
        (
            "$scrypt$ln=16,r=8,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".into(),
            "is an scrypt hash",
        ),
        (
            "$pbkdf2-sha256$29000$c2FsdA$aGFzaA".into(),
            "is a PBKDF2 hash",
        ),
        ("$whatever$x".into(), "is not an argon2 hash"),
        (
            "$argon2id$v=19$m=256,t=1,p=1$!!bad!!$xx".into(),
            "not a well-formed PHC string",
        ),
        (
            "$argon2id$v=19$m=1,t=1,p=1$Zml4dHVyZS1zYWx0LTAxMjM".into(),
            "out of range",
        ),
        (
            "$argon2id$v=19$m=256,t=1,p=1$Zml4dHVyZS1zYWx0LTAxMjM".into(),
            "lacks its salt or its output",
        ),
        (huge_memory, "2000000 KiB of memory"),
        (many_passes, "65 passes"),
    ];
    for (field, want) in cases {
        let e = err(&format!("# users\nsecretuser:{field}:app@contoso.com\n"));
        assert!(e.starts_with("line 2: user `secretuser`: "), "{field}: {e}");
        assert!(e.contains(want), "{field}: {e}");
        assert!(!e.contains(&field), "the error echoes the field: {e}");
        // Nor any long piece of it (salt, output, a bcrypt body).
        let ours = ["argon2id", "argon2i", "argon2d"];
        let pieces = field.split(['$', ',', '=']);
        for piece in pieces.filter(|p| p.len() >= 8 && !ours.contains(p)) {
            assert!(!e.contains(piece), "the error echoes `{piece}`: {e}");
        }
    }
}

#[test]
fn debug_shows_names_and_senders_but_no_hash() {
    let users = Users::parse(&format!("app:{ID}:@contoso.com\nprinter:{I}\n")).unwrap();
    let debug = format!("{users:?}");
    assert!(
        debug.contains("app") && debug.contains("printer"),
        "{debug}"
    );
    assert!(debug.contains("contoso.com"), "{debug}");
    for hash in [ID, I] {
        let salt_and_output = hash.rsplit('$').take(2).collect::<Vec<_>>();
        for part in salt_and_output {
            assert!(!debug.contains(part), "{debug}");
        }
    }
    assert!(!debug.contains("argon2"), "{debug}");
}

#[test]
fn load_reads_a_file_and_names_it_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("users");
    std::fs::write(&good, format!("app:{ID}\n")).unwrap();
    assert_eq!(Users::load(&good).unwrap().len(), 1);

    let bad = dir.path().join("bad-users");
    std::fs::write(&bad, "app:plaintextpassword\n").unwrap();
    let e = Users::load(&bad).unwrap_err();
    assert!(
        e.contains(&bad.display().to_string()) && e.contains("line 1"),
        "{e}"
    );
    assert!(!e.contains("plaintextpassword"), "{e}");

    let missing = dir.path().join("missing");
    let e = Users::load(&missing).unwrap_err();
    assert!(
        e.starts_with("cannot read the users file") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn check_name_refuses_what_the_file_cannot_hold() {
    assert!(check_name("app").is_ok());
    assert!(check_name("app@contoso.com").is_ok());
    for bad in ["", "a:b", "a b", "a\tb", "#app"] {
        assert!(check_name(bad).is_err(), "{bad:?}");
    }
}
