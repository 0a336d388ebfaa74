//! The session's door (issue 13): STARTTLS and AUTH offered only when and where they may be,
//! `require_tls` / `require_auth`, and a user's senders.

use super::*;

fn session_with(security: Security, peer: &str) -> Session {
    Session::new(
        SessionConfig {
            hostname: "relay.test".into(),
            max_message_size: 1000,
            max_recipients: 2,
            security,
        },
        peer.parse().unwrap(),
    )
}

fn tls_and_auth() -> Security {
    Security {
        starttls: true,
        auth: true,
        ..Security::default()
    }
}

fn reply_of(action: Action) -> Reply {
    match action {
        Action::Reply(r) | Action::Close(r) | Action::StartTls(r) | Action::StartData(r, _) => r,
        Action::Auth { .. } => panic!("an AUTH exchange, not a reply"),
    }
}

fn line(s: &mut Session, text: &str) -> Action {
    s.line(format!("{text}\r\n").as_bytes())
}

fn ehlo_text(s: &mut Session) -> String {
    reply_of(line(s, "EHLO app")).lines.join("\n")
}

#[test]
fn starttls_is_offered_only_when_configured_and_only_before_tls() {
    let mut plain = session_with(Security::default(), "10.0.0.5:1000");
    assert!(!ehlo_text(&mut plain).contains("STARTTLS"));
    assert_eq!(reply_of(line(&mut plain, "STARTTLS")).code, 502);

    let mut s = session_with(tls_and_auth(), "10.0.0.5:1000");
    let text = ehlo_text(&mut s);
    assert!(text.contains("STARTTLS"), "{text}");
    assert!(
        !text.contains("AUTH"),
        "no AUTH before TLS off loopback: {text}"
    );
    let Action::StartTls(r) = line(&mut s, "STARTTLS") else {
        panic!("STARTTLS starts the handshake")
    };
    assert_eq!(r.code, 220);
    s.tls_started();
    assert!(s.is_tls());
    let text = ehlo_text(&mut s);
    assert!(!text.contains("STARTTLS"), "{text}");
    assert!(text.contains("AUTH PLAIN LOGIN"), "{text}");
    assert_eq!(reply_of(line(&mut s, "STARTTLS")).code, 503);
}

#[test]
fn the_handshake_forgets_everything_said_before_it() {
    let mut s = session_with(tls_and_auth(), "10.0.0.5:1000");
    line(&mut s, "EHLO before");
    assert_eq!(reply_of(line(&mut s, "MAIL FROM:<a@x.org>")).code, 250);
    s.tls_started();
    assert!(s.transaction().is_none());
    assert!(!s.is_esmtp());
    assert_eq!(s.helo_name(), "[10.0.0.5]");
}

#[test]
fn auth_outside_tls_is_refused_except_from_loopback_when_allowed() {
    let mut s = session_with(tls_and_auth(), "10.0.0.5:1000");
    assert_eq!(reply_of(line(&mut s, "AUTH PLAIN")).code, 538);

    let loopback_ok = Security {
        auth_without_tls_on_loopback: true,
        ..tls_and_auth()
    };
    let mut local = session_with(loopback_ok.clone(), "127.0.0.1:1000");
    assert!(ehlo_text(&mut local).contains("AUTH PLAIN LOGIN"));
    assert!(matches!(
        line(&mut local, "AUTH LOGIN"),
        Action::Auth { .. }
    ));
    // The switch is for this host only.
    let mut remote = session_with(loopback_ok, "10.0.0.5:1000");
    assert!(!ehlo_text(&mut remote).contains("AUTH"));
    assert_eq!(reply_of(line(&mut remote, "AUTH LOGIN")).code, 538);

    // No AUTH configured at all: the old answer.
    let mut none = session_with(Security::default(), "127.0.0.1:1000");
    assert_eq!(reply_of(line(&mut none, "AUTH PLAIN")).code, 502);
}

#[test]
fn auth_commands_in_the_wrong_state_or_with_other_mechanisms() {
    let mut s = session_with(tls_and_auth(), "10.0.0.5:1000");
    s.tls_started();
    match line(&mut s, "AUTH PLAIN AGFsaWNlAHB3") {
        Action::Auth { mechanism, initial } => {
            assert_eq!(mechanism, AuthMechanism::Plain);
            let initial = initial.expect("an initial response");
            assert_eq!(initial.expose(), "AGFsaWNlAHB3");
            assert!(
                !format!("{initial:?}").contains("AGFsaWNl"),
                "Debug hides it"
            );
        }
        other => panic!("{other:?}"),
    }
    match line(&mut s, "auth login") {
        Action::Auth { mechanism, initial } => {
            assert_eq!(mechanism, AuthMechanism::Login);
            assert_eq!(initial, None);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(reply_of(line(&mut s, "AUTH CRAM-MD5")).code, 504);
    line(&mut s, "MAIL FROM:<a@x.org>");
    assert_eq!(
        reply_of(line(&mut s, "AUTH PLAIN")).code,
        503,
        "not inside a transaction"
    );
    line(&mut s, "RSET");
    s.authenticated(Authenticated {
        name: "printer".into(),
        senders: Vec::new(),
    });
    assert_eq!(reply_of(line(&mut s, "AUTH PLAIN")).code, 503, "only once");
    assert!(
        !ehlo_text(&mut s).contains("AUTH"),
        "not offered once logged in"
    );
}

#[test]
fn require_tls_and_require_auth_refuse_mail_with_530() {
    let mut s = session_with(
        Security {
            require_tls: true,
            require_auth: true,
            ..tls_and_auth()
        },
        "10.0.0.5:1000",
    );
    let r = reply_of(line(&mut s, "MAIL FROM:<a@x.org>"));
    assert_eq!((r.code, r.status()), (530, Some("5.7.0")));
    assert!(r.lines[0].contains("STARTTLS"), "{r}");
    s.tls_started();
    let r = reply_of(line(&mut s, "MAIL FROM:<a@x.org>"));
    assert_eq!((r.code, r.status()), (530, Some("5.7.0")));
    assert!(r.lines[0].contains("Authentication required"), "{r}");
    s.authenticated(Authenticated {
        name: "u".into(),
        senders: Vec::new(),
    });
    assert_eq!(reply_of(line(&mut s, "MAIL FROM:<a@x.org>")).code, 250);
}

#[test]
fn a_user_sends_only_as_its_senders() {
    let mut s = session_with(tls_and_auth(), "10.0.0.5:1000");
    s.tls_started();
    s.authenticated(Authenticated {
        name: "scanner".into(),
        senders: vec![
            SenderPattern::parse("scan@contoso.com").unwrap(),
            SenderPattern::parse("@printers.contoso.com").unwrap(),
        ],
    });
    let r = reply_of(line(&mut s, "MAIL FROM:<ceo@contoso.com>"));
    assert_eq!((r.code, r.status()), (550, Some("5.7.1")));
    assert!(r.lines[0].contains("not allowed for user scanner"), "{r}");
    assert!(s.transaction().is_none());
    assert_eq!(
        reply_of(line(&mut s, "MAIL FROM:<Scan@Contoso.com>")).code,
        250
    );
    line(&mut s, "RSET");
    assert_eq!(
        reply_of(line(&mut s, "MAIL FROM:<x@printers.contoso.com>")).code,
        250
    );
}
