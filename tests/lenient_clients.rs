//! What legacy clients really send, over loopback into the relay and on to the sandbox:
//! printers and scanners with bare LF line ends, `HELO` only, lower-case commands, a space
//! after the colon, paths without angle brackets, QUIT pipelined behind the final dot, and
//! no QUIT at all. Each message must arrive byte for byte as expected (bare line ends made
//! CRLF, nothing else changed). The parsing behind it is unit-tested in `smtp/framing.rs` and
//! `smtp/mail_rcpt.rs`; the fuzz target (`tests/fuzz_inbound.rs`) holds the smuggling rule.

mod support;

use std::time::Duration;

use smtp_oauth_relay::app::Relay;
use support::{RawClient, World};

/// A relay for `world` that adds no `Received:` header, so stored bodies compare exactly.
async fn relay(world: &World) -> Relay {
    world
        .relay(&[
            ("SMTP_OAUTH_RELAY__LISTEN__RECEIVED_HEADER", "false"),
            // Byte-exact checks: no Date/Message-ID added (tests/missing_headers.rs).
            ("SMTP_OAUTH_RELAY__DELIVERY__ADD_MISSING_HEADERS", "false"),
        ])
        .await
}

/// Sends `script` in one write, as a client that never waits for replies, then reads every
/// reply up to the relay's close (at most `max`).
async fn blast(c: &mut RawClient, script: &[u8], max: usize) -> Vec<String> {
    c.send(script).await;
    let mut replies = Vec::new();
    for _ in 0..max {
        let r = c.reply().await;
        if r.starts_with("EOF") {
            break;
        }
        replies.push(r);
    }
    replies
}

fn codes(replies: &[String]) -> Vec<&str> {
    replies.iter().map(|r| &r[..3]).collect()
}

#[tokio::test]
async fn a_printer_with_bare_lf_line_ends_is_served_and_its_mail_made_crlf() {
    let world = World::start().await;
    let relay = relay(&world).await;
    let mut c = RawClient::connect(relay.local_addr()).await;
    // Commands and body lines end in LF alone, as many scanners send them. In a session of
    // bare-LF lines only, a bare LF ends a line in the body too, so the stuffed dot after it
    // is removed; the message is ended by CRLF.CRLF here (LF.LF: the test below).
    c.send(b"HELO scanner\n").await;
    assert!(c.reply().await.starts_with("250 "));
    c.send(b"MAIL FROM:<scan@printer.example>\n").await;
    assert!(c.reply().await.starts_with("250 "));
    c.send(b"RCPT TO:<user@example.com>\n").await;
    assert!(c.reply().await.starts_with("250 "));
    c.send(b"DATA\n").await;
    assert!(c.reply().await.starts_with("354 "));
    c.send(b"Subject: Scanned document\nX-Pages: 2\n\npage one\n..dotted\npage two\r\n.\r\n")
        .await;
    let r = c.reply().await;
    assert!(r.starts_with("250 "), "{r}");
    c.send(b"QUIT\n").await;
    assert!(c.reply().await.starts_with("221 "));

    let stored = world.wait_for(1).await;
    assert_eq!(
        stored[0].data,
        b"Subject: Scanned document\r\nX-Pages: 2\r\n\r\npage one\r\n.dotted\r\npage two\r\n"
    );
    assert_eq!(stored[0].envelope.rcpt_to, vec!["user@example.com"]);
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn helo_only_lower_case_and_a_space_after_the_colon_are_accepted() {
    let world = World::start().await;
    let relay = relay(&world).await;
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("helo legacy.example", 250).await;
    c.cmd("mail from: <app@example.com>", 250).await;
    c.cmd("Rcpt To: <someone@example.com>", 250).await;
    c.cmd("data", 354).await;
    c.send(b"Subject: old app\r\n\r\nhello\r\n.\r\n").await;
    let r = c.reply().await;
    assert!(r.starts_with("250 "), "{r}");
    c.cmd("quit", 221).await;

    let stored = world.wait_for(1).await;
    assert_eq!(stored[0].data, b"Subject: old app\r\n\r\nhello\r\n");
    assert_eq!(stored[0].envelope.rcpt_to, vec!["someone@example.com"]);
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn paths_without_angle_brackets_are_accepted_and_checked() {
    let world = World::start().await;
    let relay = relay(&world).await;
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO app", 250).await;
    // Not an address, bracketed or not: refused in plain words.
    let r = c.cmd("MAIL FROM:app", 501).await;
    assert!(r.contains("Bad sender address"), "{r}");
    c.cmd("MAIL FROM:app@example.com SIZE=40", 250).await;
    let r = c.cmd("RCPT TO:someone", 501).await;
    assert!(r.contains("Bad recipient address"), "{r}");
    c.cmd("RCPT TO:someone@example.com", 250).await;
    c.cmd("RCPT TO: other@example.org", 250).await;
    c.cmd("DATA", 354).await;
    c.send(b"Subject: bare\r\n\r\nno brackets\r\n.\r\n").await;
    let r = c.reply().await;
    assert!(r.starts_with("250 "), "{r}");
    c.cmd("QUIT", 221).await;

    let stored = world.wait_for(1).await;
    assert_eq!(stored[0].data, b"Subject: bare\r\n\r\nno brackets\r\n");
    assert_eq!(
        stored[0].envelope.rcpt_to,
        vec!["someone@example.com", "other@example.org"]
    );
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_client_that_pipelines_everything_and_quit_gets_every_reply_in_order() {
    let world = World::start().await;
    let relay = relay(&world).await;
    let mut c = RawClient::connect(relay.local_addr()).await;
    // HELO (so no PIPELINING was offered), and still all in one write, QUIT behind the dot.
    let script = b"HELO mfp\r\nMAIL FROM:<mfp@example.com>\r\nRCPT TO:<a@example.com>\r\nDATA\r\nSubject: one go\r\n\r\nall at once\r\n.\r\nQUIT\r\n";
    let replies = blast(&mut c, script, 10).await;
    assert_eq!(
        codes(&replies),
        ["250", "250", "250", "354", "250", "221"],
        "{replies:?}"
    );
    let stored = world.wait_for(1).await;
    assert_eq!(stored[0].data, b"Subject: one go\r\n\r\nall at once\r\n");
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_client_that_closes_without_quit_keeps_its_mail_and_the_relay_serves_on() {
    let world = World::start().await;
    let relay = relay(&world).await;
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("HELO app", 250).await;
    c.cmd("MAIL FROM:<app@example.com>", 250).await;
    c.cmd("RCPT TO:<a@example.com>", 250).await;
    c.cmd("DATA", 354).await;
    c.send(b"Subject: no quit\r\n\r\nbye\r\n.\r\n").await;
    let r = c.reply().await;
    assert!(r.starts_with("250 "), "{r}");
    drop(c);

    let stored = world.wait_for(1).await;
    assert_eq!(stored[0].data, b"Subject: no quit\r\n\r\nbye\r\n");
    // The closed session took nothing with it: the next client is served as usual.
    let mut next = RawClient::connect(relay.local_addr()).await;
    next.cmd("NOOP", 250).await;
    next.cmd("QUIT", 221).await;
    relay.shutdown(Duration::from_secs(5)).await;
}

/// A session of LF line ends only, ended by LF . LF, as the simplest printers send it. The
/// decoder ends DATA on CRLF.CRLF only, in every session, so today this waits for the data
/// timeout. Letting `LF . LF` end the data only in a session whose every line so far ended in
/// a bare LF needs the connection to tell the decoder so (issue 13 report).
#[tokio::test]
async fn a_session_of_bare_lf_only_may_end_its_data_with_lf_dot_lf() {
    let world = World::start().await;
    let relay = relay(&world).await;
    let mut c = RawClient::connect(relay.local_addr()).await;
    let script = b"HELO scanner\nMAIL FROM:<scan@printer.example>\nRCPT TO:<user@example.com>\nDATA\nSubject: scan\n\npage\n.\nQUIT\n";
    let replies = blast(&mut c, script, 10).await;
    assert_eq!(
        codes(&replies),
        ["250", "250", "250", "354", "250", "221"],
        "{replies:?}"
    );
    let stored = world.wait_for(1).await;
    assert_eq!(stored[0].data, b"Subject: scan\r\n\r\npage\r\n");
    relay.shutdown(Duration::from_secs(5)).await;
}
