//! End to end over loopback: client -> relay -> sandbox (token endpoint + STARTTLS/XOAUTH2
//! SMTP). Every test brings its own sandbox and relay.

mod support;

use std::time::{Duration, Instant};

use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use support::{
    http_get, metric, strip_received, wait_until_read_by_peer, RawClient, World, MAILBOX,
};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn lettre_message_arrives_byte_exact_through_xoauth2() {
    let world = World::start().await;
    // lettre writes no Message-ID: the relay would add one (tests/missing_headers.rs).
    let relay = world
        .relay(&[("SMTP_OAUTH_RELAY__DELIVERY__ADD_MISSING_HEADERS", "false")])
        .await;
    let addr = relay.local_addr();
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .build();
    let email = Message::builder()
        .from("App <app@example.com>".parse().unwrap())
        .to("Someone <someone@example.com>".parse().unwrap())
        .subject("Ticket #42 updated")
        .header(ContentType::TEXT_PLAIN)
        .body(String::from(".leading dot\nplain line\n..two dots\n"))
        .unwrap();
    // lettre appends "\r\n.\r\n" to a body that already ends in CRLF, so what it puts on the
    // wire (and what the relay must pass on unchanged) is its formatted message plus one CRLF.
    let mut expected = email.formatted();
    expected.extend_from_slice(b"\r\n");
    let response = mailer.send(email).await.expect("relay accepts");
    assert_eq!(response.code().to_string(), "250");
    let text = response.message().collect::<Vec<_>>().join(" ");
    assert!(
        text.contains("sandbox.prod.outlook.com"),
        "upstream id in reply: {text}"
    );

    let stored = world.wait_for(1).await;
    assert_eq!(stored.len(), 1);
    let m = &stored[0];
    assert_eq!(strip_received(&m.data), &expected[..]);
    assert_eq!(m.envelope.rcpt_to, vec!["someone@example.com".to_string()]);
    // The relay authenticated as the mailbox and sent as it (account.envelope_sender = mailbox).
    assert_eq!(m.envelope.auth_user, MAILBOX);
    assert_eq!(m.envelope.mail_from, MAILBOX);
    assert_eq!(world.sandbox.tokens_issued(), 1);
    // Nothing is left in the spool after a direct delivery.
    let left = std::fs::read_dir(world.spool_dir().join("incoming"))
        .unwrap()
        .count();
    assert_eq!(left, 0);
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn raw_dialogs_keep_every_byte() {
    let world = World::start().await;
    let relay = world
        .relay(&[
            ("SMTP_OAUTH_RELAY__LISTEN__RECEIVED_HEADER", "false"),
            // Every byte as sent: no Date or Message-ID added (tests/missing_headers.rs).
            ("SMTP_OAUTH_RELAY__DELIVERY__ADD_MISSING_HEADERS", "false"),
        ])
        .await;
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO app.example", 250).await;

    // Lines starting with dots (stuffed on the wire), and a 998-byte line.
    let long_line = "x".repeat(998);
    let body = format!("Subject: dots\r\n\r\n.one\r\n..two\r\n.\r\n{long_line}\r\nend\r\n");
    let stuffed = format!("Subject: dots\r\n\r\n..one\r\n...two\r\n..\r\n{long_line}\r\nend\r\n");
    let r = c
        .send_mail("app@example.com", &["a@example.com"], stuffed.as_bytes())
        .await;
    assert!(r.starts_with("250 "), "{r}");

    // UTF-8 headers and body with SMTPUTF8 and 8BITMIME; UTF-8 recipient.
    let utf8 = "From: Jörg <jörg@bücher.de>\r\nSubject: Grüße 你好\r\n\r\nÄrger über Öl — 価格\r\n";
    c.cmd("MAIL FROM:<jörg@bücher.de> BODY=8BITMIME SMTPUTF8", 250)
        .await;
    c.cmd("RCPT TO:<用户@例子.广告>", 250).await;
    c.cmd("DATA", 354).await;
    c.send(utf8.as_bytes()).await;
    c.send(b".\r\n").await;
    let r = c.reply().await;
    assert!(r.starts_with("250 "), "{r}");

    // Several recipients, and the whole transaction pipelined in one write (RFC 2920).
    let pipelined = b"MAIL FROM:<app@example.com>\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.org>\r\nDATA\r\n";
    c.send(pipelined).await;
    for _ in 0..4 {
        let r = c.reply().await;
        assert!(r.starts_with("250 "), "{r}");
    }
    assert!(c.reply().await.starts_with("354 "));
    c.send(b"Subject: many\r\n\r\nhello all\r\n.\r\nQUIT\r\n")
        .await;
    let r = c.reply().await;
    assert!(r.starts_with("250 "), "{r}");
    assert!(c.reply().await.starts_with("221 "));

    let stored = world.wait_for(3).await;
    assert_eq!(stored.len(), 3);
    let find = |needle: &str| {
        stored
            .iter()
            .find(|m| String::from_utf8_lossy(&m.data).contains(needle))
            .unwrap_or_else(|| panic!("no message containing {needle}"))
    };
    assert_eq!(find("Subject: dots").data, body.as_bytes());
    let m = find("Grüße");
    assert_eq!(m.data, utf8.as_bytes());
    assert_eq!(m.envelope.rcpt_to, vec!["用户@例子.广告".to_string()]);
    let m = find("Subject: many");
    assert_eq!(m.data, b"Subject: many\r\n\r\nhello all\r\n");
    assert_eq!(
        m.envelope.rcpt_to,
        vec!["a@example.com", "b@example.com", "c@example.org"]
    );
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn twenty_megabyte_message_streams_through_unchanged() {
    let world = World::start().await;
    let relay = world.relay(&[]).await;
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO big", 250).await;
    // 20 MiB of 76-character lines, base64-like, as attachments look.
    let line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n";
    let mut body = b"Subject: big\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
    while body.len() < 20 * 1024 * 1024 {
        body.extend_from_slice(line);
    }
    let r = c
        .send_mail("app@example.com", &["big@example.com"], &body)
        .await;
    assert!(r.starts_with("250 "), "{r}");
    let stored = world.wait_for(1).await;
    // The body (a spool file, read back in pieces) is unchanged; the header block has the
    // Date and Message-ID it lacked in front (tests/missing_headers.rs).
    let data = strip_received(&stored[0].data);
    let added = format!("Message-ID: <{}@", support::reply_id(&r));
    let date_end = data.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    let mid_end = date_end
        + data[date_end..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap()
        + 2;
    assert!(data.starts_with(b"Date: "), "Date: added first");
    assert!(
        data[date_end..].starts_with(added.as_bytes()),
        "then {added}"
    );
    let data = &data[mid_end..];
    assert_eq!(data.len(), body.len());
    assert!(data == &body[..], "20 MiB body differs");
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn smuggled_commands_stay_inside_one_message() {
    for separator in ["\n.\r\n", "\r.\r\n", "\r\n.\r\r\n"] {
        let world = World::start().await;
        let relay = world.relay(&[]).await;
        let mut c = RawClient::connect(relay.local_addr()).await;
        c.cmd("EHLO smuggler", 250).await;
        c.cmd("MAIL FROM:<app@example.com>", 250).await;
        c.cmd("RCPT TO:<victim@example.com>", 250).await;
        c.cmd("DATA", 354).await;
        let payload = format!(
            "Subject: innocent\r\n\r\nhello{separator}MAIL FROM:<ceo@example.com>\r\nRCPT TO:<other@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n"
        );
        c.send(payload.as_bytes()).await;
        let r = c.reply().await;
        assert!(r.starts_with("250 "), "{separator:?}: {r}");
        // Had the relay taken the smuggled lines for commands, the reply to QUIT would be
        // one of theirs (250 or 354), not 221.
        c.cmd("QUIT", 221).await;
        let stored = world.wait_for(1).await;
        // No time given to a smuggled second message: the relay's shutdown returns true only
        // once every session and every delivery it started has ended, and nothing is left
        // queued for later, so whatever it would ever deliver is in the store by now.
        let spool = world.spool_dir();
        assert!(
            relay.shutdown(Duration::from_secs(5)).await,
            "{separator:?}: the relay finished every session and delivery"
        );
        assert!(
            std::fs::read_dir(spool.join("queue"))
                .unwrap()
                .next()
                .is_none(),
            "{separator:?}: nothing left queued for a later attempt"
        );
        let stored_now = world.sandbox.messages();
        assert_eq!(stored_now.len(), 1, "{separator:?}: exactly one message");
        let text = String::from_utf8_lossy(&stored[0].data).into_owned();
        assert!(text.contains("MAIL FROM:<ceo@example.com>"), "{text}");
        assert!(text.contains("Subject: smuggled"), "{text}");
        assert_eq!(
            stored[0].envelope.rcpt_to,
            vec!["victim@example.com".to_string()]
        );
        // Bare line ends were normalised to CRLF on the way.
        assert!(!text.replace("\r\n", "").contains(['\r', '\n']), "{text:?}");
    }
}

/// The cache is really cold when the clients come: the sandbox holds token requests
/// unanswered, so the request the token keeper (`TokenCache::keep_warm`) makes at start-up
/// stays in flight until all 200 clients have sent their whole message and wait for the
/// relay's answer. Only then is it answered; one request must serve them all.
#[tokio::test]
async fn two_hundred_clients_on_a_cold_cache_make_one_token_request() {
    const CLIENTS: usize = 200;
    // A mailbox of its own: the metrics recorder is one per process (tests run side by side
    // in it), and its `account` label then counts this test's messages only.
    const COLD: &str = "cold-cache@sandbox.example";
    let world = World::start_with(|o| o.mailboxes = vec![COLD.into()]).await;
    world.sandbox.hold_token_requests();
    let relay = world.relay(&[("SMTP_OAUTH_RELAY_MAILBOX", COLD)]).await;
    assert_eq!(
        world
            .sandbox
            .wait_for_token_requests(1, Duration::from_secs(10))
            .await,
        1,
        "the token keeper asks for a token at start-up (held, unanswered)"
    );
    let addr = relay.local_addr();
    let admin = relay.admin_addr().expect("the admin port is on");
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        tasks.push(tokio::spawn(async move {
            let mut c = RawClient::connect(addr).await;
            c.cmd("EHLO load", 250).await;
            let body = format!("Subject: client {i}\r\n\r\nhello {i}\r\n");
            c.send_mail("app@example.com", &["load@example.com"], body.as_bytes())
                .await
        }));
    }
    // Every client is past its final dot: the relay counted all 200 bodies as received.
    let series = format!("smtp_oauth_relay_messages_received_total{{account=\"{COLD}\"}}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, text) = http_get(admin, "/metrics").await;
        let received = metric(&text, &series).unwrap_or(0.0);
        if received >= CLIENTS as f64 {
            assert_eq!(received, CLIENTS as f64, "{series}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {received} of {CLIENTS} messages received after 60 s (/metrics {status})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // No token exists yet, so none of them can have been answered: all 200 wait on the one
    // request in flight, and they added no request of their own.
    assert_eq!(world.sandbox.tokens_issued(), 0);
    let answered = tasks.iter().filter(|t| t.is_finished()).count();
    assert_eq!(answered, 0, "clients answered before any token existed");
    assert_eq!(world.sandbox.token_requests(), 1);

    world.sandbox.release_token_requests();
    for t in tasks {
        let r = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("every client is answered within 60 s of the token")
            .unwrap();
        assert!(r.starts_with("250 "), "{r}");
    }
    let stored = world.wait_for(CLIENTS).await;
    assert_eq!(stored.len(), CLIENTS);
    assert_eq!(
        world.sandbox.token_requests(),
        1,
        "single-flight token fetch"
    );
    assert_eq!(world.sandbox.tokens_issued(), 1);
    assert!(
        world.sandbox.peak_sessions(COLD) <= 3,
        "never more than 3 upstream sessions"
    );
}

#[tokio::test]
async fn expiring_tokens_are_refreshed_and_delivery_continues() {
    let world = World::start_with(|o| o.token_lifetime = Duration::from_secs(3)).await;
    let relay = world
        .relay(&[("SMTP_OAUTH_RELAY__ACCOUNT__REFRESH_MARGIN_SECS", "1")])
        .await;
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO steady", 250).await;
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(8) {
        let r = c
            .send_mail(
                "app@example.com",
                &["x@example.com"],
                b"Subject: tick\r\n\r\ntick\r\n",
            )
            .await;
        assert!(r.starts_with("250 "), "message {sent}: {r}");
        sent += 1;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(world.wait_for(sent).await.len(), sent);
    let issued = world.sandbox.tokens_issued();
    assert!(
        issued >= 3,
        "tokens must be renewed as they expire: {issued} issued"
    );
    assert_eq!(
        world.sandbox.auth_failures(),
        0,
        "no AUTH with an expired token"
    );
}

#[tokio::test]
async fn revoked_token_is_replaced_once_and_the_message_still_goes() {
    let world = World::start().await;
    let relay = world.relay(&[]).await;
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO x", 250).await;
    let r = c
        .send_mail(
            "a@example.com",
            &["x@example.com"],
            b"Subject: 1\r\n\r\n1\r\n",
        )
        .await;
    assert!(r.starts_with("250 "), "{r}");
    // Drop pooled sessions so the next message authenticates again, with a now-dead token.
    relay.upstream().close_idle(true).await;
    world.sandbox.revoke_tokens();
    let r = c
        .send_mail(
            "a@example.com",
            &["x@example.com"],
            b"Subject: 2\r\n\r\n2\r\n",
        )
        .await;
    assert!(r.starts_with("250 "), "{r}");
    assert_eq!(
        world.sandbox.token_requests(),
        2,
        "exactly one fresh token after 535"
    );
    assert_eq!(world.sandbox.auth_failures(), 1);
    assert_eq!(world.wait_for(2).await.len(), 2);
}

#[tokio::test]
async fn token_rejected_twice_is_a_configuration_error_not_a_loop() {
    // The sandbox issues Graph tokens for a Graph scope; Exchange refuses them with 535 5.7.3.
    // The relay refuses a Graph scope itself, so reproduce it with an SMTP-disabled mailbox
    // (535 5.7.139) and with a mailbox the app may not use (535 5.7.3 twice).
    let world = World::start_with(|o| o.smtp_auth_disabled = vec![MAILBOX.into()]).await;
    let relay = world.relay(&[]).await;
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO x", 250).await;
    let r = c
        .send_mail(
            "a@example.com",
            &["x@example.com"],
            b"Subject: 1\r\n\r\n1\r\n",
        )
        .await;
    assert!(r.starts_with("451 4.7.0"), "{r}");
    assert!(
        r.contains("SmtpClientAuthenticationDisabled"),
        "advice in reply: {r}"
    );
    assert_eq!(
        world.sandbox.token_requests(),
        1,
        "5.7.139 is not retried with a new token"
    );

    let world = World::start().await;
    let relay = world
        .relay(&[("SMTP_OAUTH_RELAY_MAILBOX", "someone-else@sandbox.example")])
        .await;
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO x", 250).await;
    let r = c
        .send_mail(
            "a@example.com",
            &["x@example.com"],
            b"Subject: 1\r\n\r\n1\r\n",
        )
        .await;
    assert!(r.starts_with("451 4.7.0"), "{r}");
    assert!(r.contains("SMTP.SendAsApp"), "{r}");
    assert_eq!(
        world.sandbox.token_requests(),
        2,
        "one retry with a fresh token, no loop"
    );
    assert_eq!(world.sandbox.auth_failures(), 2);
    assert!(world.sandbox.messages().is_empty());
}

#[tokio::test]
async fn upstream_refusals_reach_the_client() {
    let world = World::start().await;
    let relay = world
        .relay(&[
            ("SMTP_OAUTH_RELAY_MODE", "direct"),
            ("SMTP_OAUTH_RELAY_MODE", "direct"),
        ])
        .await;
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO x", 250).await;
    let body = b"Subject: s\r\n\r\nb\r\n";
    // Permanent refusal after the final dot: the upstream's own 5xx.
    let r = c
        .send_mail("a@example.com", &["data-perm@example.com"], body)
        .await;
    assert!(r.starts_with("554 5.6.0"), "{r}");
    let r = c
        .send_mail("a@example.com", &["sendas-denied@example.com"], body)
        .await;
    assert!(r.starts_with("554 5.2.252"), "{r}");
    assert!(r.contains("SendAsDenied"), "{r}");
    // Permanent refusal of the only recipient.
    let r = c
        .send_mail("a@example.com", &["rcpt-perm@example.com"], body)
        .await;
    assert!(r.starts_with("550 5.1.10"), "{r}");
    // Transient: 451 4.4.0 quoting the upstream (whose 4.7.500 is kept exact).
    let r = c
        .send_mail("a@example.com", &["data-temp@example.com"], body)
        .await;
    assert!(r.starts_with("451 4.4.0"), "{r}");
    assert!(r.contains("4.7.500"), "{r}");
    // One good and one refused recipient: delivered to the good one, and the reply says so.
    let r = c
        .send_mail(
            "a@example.com",
            &["ok@example.com", "rcpt-perm@example.com"],
            body,
        )
        .await;
    assert!(r.starts_with("250 "), "{r}");
    assert!(r.contains("1 of 2 recipients not delivered"), "{r}");
    // A temporary refusal of one recipient: direct mode keeps nothing, so it must not deliver
    // to the others and drop that one; nothing is sent and the client retries the message.
    let r = c
        .send_mail(
            "a@example.com",
            &["also-ok@example.com", "rcpt-temp@example.com"],
            body,
        )
        .await;
    assert!(r.starts_with("451 4.4.0"), "{r}");
    // The session stays usable after all that.
    let r = c
        .send_mail("a@example.com", &["fine@example.com"], body)
        .await;
    assert!(r.starts_with("250 "), "{r}");
    let stored = world.wait_for(2).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(
        stored
            .iter()
            .filter(|m| m.envelope.rcpt_to == vec!["ok@example.com".to_string()])
            .count(),
        1
    );
}

#[tokio::test]
async fn unreachable_or_slow_upstream_answers_451_within_the_timeout() {
    let world = World::start().await;
    // A port with nothing listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let relay = world
        .relay(&[
            ("SMTP_OAUTH_RELAY_MODE", "direct"),
            ("SMTP_OAUTH_RELAY_UPSTREAM", &format!("127.0.0.1:{closed}")),
        ])
        .await;
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO x", 250).await;
    let started = Instant::now();
    let r = c
        .send_mail(
            "a@example.com",
            &["x@example.com"],
            b"Subject: s\r\n\r\nb\r\n",
        )
        .await;
    assert!(r.starts_with("451 4.4.1"), "{r}");
    assert!(started.elapsed() < Duration::from_secs(5));
    relay.shutdown(Duration::from_secs(5)).await;

    // An upstream that takes 5 s to answer the final dot, with a 1 s data timeout.
    let relay = world
        .relay(&[
            ("SMTP_OAUTH_RELAY_MODE", "direct"),
            ("SMTP_OAUTH_RELAY__UPSTREAM__DATA_TIMEOUT_SECS", "1"),
        ])
        .await;
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO x", 250).await;
    let started = Instant::now();
    let r = c
        .send_mail(
            "a@example.com",
            &["slow-5@example.com"],
            b"Subject: s\r\n\r\nb\r\n",
        )
        .await;
    assert!(r.starts_with("451 4.4.2"), "{r}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "took {took:?}");
    // An upstream that drops the connection mid-DATA: transient, client retries.
    let r = c
        .send_mail(
            "a@example.com",
            &["drop-data@example.com"],
            b"Subject: s\r\n\r\nb\r\n",
        )
        .await;
    assert!(r.starts_with("451 "), "{r}");
}

#[tokio::test]
async fn wrong_secret_gets_a_4xx_not_a_silent_250() {
    let world = World::start().await;
    let relay = world
        .relay(&[
            ("SMTP_OAUTH_RELAY_MODE", "direct"),
            (
                "SMTP_OAUTH_RELAY_CLIENT_SECRET",
                "wrg8Q~wrongwrongwrongwrongwrongwrongwron",
            ),
        ])
        .await;
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO x", 250).await;
    let r = c
        .send_mail(
            "a@example.com",
            &["x@example.com"],
            b"Subject: s\r\n\r\nb\r\n",
        )
        .await;
    assert!(r.starts_with("451 4.7.0"), "{r}");
    assert!(r.contains("secret"), "advice names the secret problem: {r}");
    assert!(!r.contains("wrongwrong"), "the secret is never echoed: {r}");
    assert!(world.sandbox.messages().is_empty());
}

#[tokio::test]
async fn token_endpoint_outage_is_transient() {
    use smtp_oauth_relay::sandbox::TokenFailure;
    let world = World::start().await;
    world
        .sandbox
        .set_token_failure(Some(TokenFailure::Unavailable503));
    let relay = world
        .relay(&[
            ("SMTP_OAUTH_RELAY_MODE", "direct"),
            ("SMTP_OAUTH_RELAY_MODE", "direct"),
        ])
        .await;
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO x", 250).await;
    let r = c
        .send_mail(
            "a@example.com",
            &["x@example.com"],
            b"Subject: s\r\n\r\nb\r\n",
        )
        .await;
    assert!(r.starts_with("451 4.4.0"), "{r}");
    world.sandbox.set_token_failure(None);
    // The failure is remembered only briefly (Retry-After: 1); then delivery works again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c
            .send_mail(
                "a@example.com",
                &["x@example.com"],
                b"Subject: s\r\n\r\nb\r\n",
            )
            .await;
        if r.starts_with("250 ") {
            break;
        }
        assert!(Instant::now() < deadline, "still failing: {r}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn inbound_limits_are_enforced() {
    let world = World::start().await;
    let relay = world
        .relay(&[
            ("SMTP_OAUTH_RELAY__LISTEN__MAX_MESSAGE_SIZE", "1000"),
            ("SMTP_OAUTH_RELAY__LISTEN__MAX_RECIPIENTS", "2"),
        ])
        .await;
    let mut c = RawClient::connect(relay.local_addr()).await;
    let ehlo = c.cmd("EHLO x", 250).await;
    assert!(ehlo.contains("SIZE 1000"), "{ehlo}");
    c.cmd("MAIL FROM:<a@example.com> SIZE=5000", 552).await;
    c.cmd("MAIL FROM:<a@example.com>", 250).await;
    c.cmd("RCPT TO:<1@example.com>", 250).await;
    c.cmd("RCPT TO:<2@example.com>", 250).await;
    c.cmd("RCPT TO:<3@example.com>", 452).await;
    c.cmd("DATA", 354).await;
    let big = format!("Subject: big\r\n\r\n{}\r\n.\r\n", "y".repeat(2000));
    c.send(big.as_bytes()).await;
    let r = c.reply().await;
    assert!(r.starts_with("552 5.3.4"), "{r}");
    // A command line over 4 KiB.
    let long = format!("NOOP {}\r\n", "z".repeat(5000));
    c.send(long.as_bytes()).await;
    let r = c.reply().await;
    assert!(r.starts_with("500 5.5.6"), "{r}");
    // Exactly one refusal, and the next commands are answered in order.
    c.send(b"RSET\r\nNOOP\r\n").await;
    let r = c.reply().await;
    assert!(r.starts_with("250 2.0.0 Reset"), "{r}");
    let r = c.reply().await;
    assert!(r.starts_with("250 2.0.0 OK"), "{r}");
    // The same line trickled in pieces, with the next command in the last piece. Each piece
    // is read by the relay before the next is sent, so it really meets the line in pieces.
    c.send(format!("NOOP {}", "z".repeat(3000)).as_bytes())
        .await;
    wait_until_read_by_peer(&c.stream, "the first 3000 bytes of the line").await;
    c.send("z".repeat(3000).as_bytes()).await;
    let r = c.reply().await;
    assert!(r.starts_with("500 5.5.6"), "{r}");
    c.send(b"zzz\r\nNO").await;
    wait_until_read_by_peer(&c.stream, "the line's end and half a NOOP").await;
    c.send(b"OP\r\n").await;
    let r = c.reply().await;
    assert!(r.starts_with("250 2.0.0 OK"), "{r}");
    assert!(world.sandbox.messages().is_empty());
}

#[tokio::test]
async fn trickling_clients_cannot_outlast_the_timeouts() {
    let world = World::start().await;
    let relay = world
        .relay(&[
            ("SMTP_OAUTH_RELAY__LISTEN__COMMAND_TIMEOUT_SECS", "1"),
            ("SMTP_OAUTH_RELAY__LISTEN__DATA_TIMEOUT_SECS", "1"),
            ("SMTP_OAUTH_RELAY__LISTEN__MAX_MESSAGE_SIZE", "1000"),
        ])
        .await;
    // One byte of a command every 400 ms: the command timeout covers the whole line.
    let mut c = RawClient::connect(relay.local_addr()).await;
    let started = Instant::now();
    for b in b"NOOP and more and more and more\r\n" {
        if c.stream.write_all(&[*b]).await.is_err() || started.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let answer = c.reply().await;
    assert!(answer.starts_with("421 4.4.2"), "{answer}");
    // The body trickled: DATA may take data_timeout plus the largest message at 32 KiB/s,
    // here about 1 s in all, whatever the pace of the bytes.
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("MAIL FROM:<a@example.com>", 250).await;
    c.cmd("RCPT TO:<b@example.com>", 250).await;
    c.cmd("DATA", 354).await;
    let started = Instant::now();
    loop {
        if c.stream.write_all(b"x").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    let r = c.reply().await;
    assert!(r.starts_with("421 4.4.2"), "{r}");
    assert!(world.sandbox.messages().is_empty());
}

#[tokio::test]
async fn idle_clients_time_out_with_421() {
    let world = World::start().await;
    let relay = world
        .relay(&[("SMTP_OAUTH_RELAY__LISTEN__COMMAND_TIMEOUT_SECS", "1")])
        .await;
    let mut c = RawClient::connect(relay.local_addr()).await;
    let started = Instant::now();
    let r = c.reply().await;
    assert!(r.starts_with("421 4.4.2"), "{r}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn connection_limit_holds_extra_clients_until_a_slot_frees() {
    let world = World::start().await;
    let relay = world
        .relay(&[("SMTP_OAUTH_RELAY__LISTEN__MAX_CONNECTIONS", "2")])
        .await;
    let addr = relay.local_addr();
    let mut a = RawClient::connect(addr).await;
    let mut b = RawClient::connect(addr).await;
    // The third is accepted by the kernel but gets no greeting while two are connected: it
    // waits in the listener's accept queue, the kernel's record that the relay never took it.
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    support::wait_until(
        "the third client in the accept queue",
        Duration::from_secs(10),
        || support::accept_queue_len(addr) == 1,
    )
    .await;
    // The relay answers the other two after the third was queued, so its listener had its
    // turn meanwhile; the third is still not taken, and nothing was sent to it.
    a.cmd("NOOP", 250).await;
    b.cmd("NOOP", 250).await;
    assert_eq!(
        support::accept_queue_len(addr),
        1,
        "the relay took a third client beyond the limit of 2"
    );
    let mut buf = [0u8; 64];
    assert!(
        matches!(third.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "no greeting beyond the limit"
    );
    drop(a);
    use tokio::io::AsyncReadExt;
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("greeted once a slot frees")
        .unwrap();
    assert!(buf[..n].starts_with(b"220 "));
}

#[tokio::test]
async fn shutdown_tells_idle_clients_421() {
    let world = World::start().await;
    let relay = world.relay(&[]).await;
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO x", 250).await;
    let stop = tokio::spawn(relay.shutdown(Duration::from_secs(5)));
    let r = c.reply().await;
    assert!(r.starts_with("421 4.3.2"), "{r}");
    assert!(stop.await.unwrap(), "drained within the grace period");
}
