//! Messages without `Date:` or `Message-ID:` (issue 13), end to end against the sandbox: the
//! relay adds them at send time (`delivery.add_missing_headers`, on by default), the same ones
//! on every attempt, and leaves every other byte alone; Bcc-only and To-less messages reach
//! their envelope recipients.
//!
//! Every wait is bounded; loopback only.

mod support;

use std::time::{Duration, Instant};

use smtp_oauth_relay::app::Relay;
use smtp_oauth_relay::sandbox::StoredMessage;
use smtp_oauth_relay::spool::{Area, QueueEntry, Spool};
use smtp_oauth_relay::wire::missing::rfc5322_date;
use support::{eventually, reply_id, strip_received, wait_until, RawClient, World};

/// The relay's host name in these tests: the right side of the Message-ID it adds.
const HOST: &str = "relay.test.example";
const HOSTNAME: (&str, &str) = ("SMTP_OAUTH_RELAY__LISTEN__HOSTNAME", HOST);
const SWITCH: &str = "SMTP_OAUTH_RELAY__DELIVERY__ADD_MISSING_HEADERS";

/// Sends one message (`body` dot-stuffed, ending in CRLF) and returns the DATA reply.
async fn send(relay: &Relay, to: &[&str], body: &str) -> String {
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO app.example", 250).await;
    let reply = c.send_mail("app@example.com", to, body.as_bytes()).await;
    c.cmd("QUIT", 221).await;
    reply
}

/// The stored message whose text contains `marker`.
fn find<'a>(stored: &'a [StoredMessage], marker: &str) -> &'a StoredMessage {
    stored
        .iter()
        .find(|m| String::from_utf8_lossy(&m.data).contains(marker))
        .unwrap_or_else(|| panic!("no stored message contains {marker:?}"))
}

/// The header fields named `name` (any case) in the header block of `data`, whole lines.
fn fields(data: &[u8], name: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let prefix = format!("{}:", name.to_ascii_lowercase());
    head.split("\r\n")
        .filter(|l| l.to_ascii_lowercase().starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// What the client sent: the stored message without the relay's `Received:` and the two
/// added lines, which must be there exactly once each and right after `Received:`.
fn without_additions<'a>(data: &'a [u8], id: &str) -> &'a [u8] {
    let rest = strip_received(data);
    let text = std::str::from_utf8(rest).expect("test messages are ASCII");
    let date = text
        .strip_prefix("Date: ")
        .and_then(|t| t.split_once("\r\n"))
        .unwrap_or_else(|| panic!("no Date: after Received: in {text:?}"));
    let want_mid = format!("Message-ID: <{id}@{HOST}>\r\n");
    assert!(
        date.1.starts_with(&want_mid),
        "no {want_mid:?} after Date: in {text:?}"
    );
    &rest[rest.len() - date.1.len() + want_mid.len()..]
}

#[tokio::test]
async fn bcc_only_and_to_less_messages_reach_every_recipient_with_date_and_message_id() {
    let world = World::start().await;
    let relay = world.relay(&[HOSTNAME]).await;
    let rcpts = ["one@contoso.com", "two@fabrikam.example", "three@x.example"];
    let bcc_only = "From: App <app@example.com>\r\nBcc: one@contoso.com, two@fabrikam.example\r\n\
                    Subject: bcc only\r\n\r\nhello Bcc\r\n";
    let to_less = "From: app@example.com\r\nSubject: nobody in To\r\nX-Folded: a\r\n\tb\r\n\r\n\
                   hello\r\nMessage-ID: <in@the.body>\r\n";
    let mut ids = Vec::new();
    for body in [bcc_only, to_less] {
        let reply = send(&relay, &rcpts, body).await;
        assert!(reply.starts_with("250 "), "{reply}");
        assert!(reply.contains("delivered"), "{reply}");
        ids.push(reply_id(&reply));
    }
    let stored = world.wait_for(2).await;
    assert_eq!(stored.len(), 2);
    for ((body, id), subject) in [bcc_only, to_less]
        .iter()
        .zip(&ids)
        .zip(["bcc only", "nobody in To"])
    {
        let m = find(&stored, subject);
        assert_eq!(
            m.envelope.rcpt_to, rcpts,
            "every envelope recipient, {subject}"
        );
        assert_eq!(fields(&m.data, "date").len(), 1, "{subject}");
        assert_eq!(
            fields(&m.data, "message-id"),
            [format!("Message-ID: <{id}@{HOST}>")],
            "{subject}: the Message-ID in the body is not a header"
        );
        assert_eq!(
            without_additions(&m.data, id),
            body.as_bytes(),
            "{subject}: every other byte as sent"
        );
    }
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_message_without_any_header_gets_them_on_top_and_keeps_its_text() {
    let world = World::start().await;
    let relay = world.relay(&[HOSTNAME]).await;
    // A device that sends bare text: the first line is no header field at all.
    let body = "Disk /dev/sda1 is 97% full\r\nsecond line: with a colon\r\n";
    let reply = send(&relay, &["ops@contoso.com"], body).await;
    assert!(reply.starts_with("250 "), "{reply}");
    let stored = world.wait_for(1).await;
    let m = &stored[0];
    assert_eq!(
        without_additions(&m.data, &reply_id(&reply)),
        body.as_bytes()
    );
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_message_with_both_keeps_them_byte_for_byte() {
    let world = World::start().await;
    let relay = world.relay(&[HOSTNAME]).await;
    // Unusual but valid forms: lower case, folded, extra spaces, and look-alikes around.
    let body = "Resent-Message-ID: <resent@app>\r\nmessage-id:\r\n <own.id@app.example>\r\n\
                To: someone@contoso.com\r\nDATE:   Tue, 1 Dec 2026 10:00:00 +0100\r\n\
                Subject: has both\r\n\r\nbody\r\n";
    let reply = send(&relay, &["someone@contoso.com"], body).await;
    assert!(reply.starts_with("250 "), "{reply}");
    let stored = world.wait_for(1).await;
    assert_eq!(strip_received(&stored[0].data), body.as_bytes());
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn switched_off_nothing_is_added() {
    let world = World::start().await;
    let relay = world.relay(&[HOSTNAME, (SWITCH, "false")]).await;
    let body = "From: app@example.com\r\nSubject: as written\r\n\r\nbody\r\n";
    let reply = send(&relay, &["someone@contoso.com"], body).await;
    assert!(reply.starts_with("250 "), "{reply}");
    let stored = world.wait_for(1).await;
    assert_eq!(strip_received(&stored[0].data), body.as_bytes());
    assert!(fields(&stored[0].data, "date").is_empty());
    assert!(fields(&stored[0].data, "message-id").is_empty());
    relay.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn the_switch_is_a_boolean_and_says_so() {
    let env = vec![(SWITCH.to_string(), "sometimes".to_string())];
    let err = smtp_oauth_relay::config::Config::load(None, &env)
        .expect_err("a switch that is neither true nor false is refused")
        .to_string();
    assert!(
        err.contains("delivery.add_missing_headers"),
        "names the key: {err}"
    );
    assert!(err.contains("boolean"), "says what it wants: {err}");
}

fn queue(spool: &Spool) -> Vec<QueueEntry> {
    spool.list(Area::Queue).expect("list the spool")
}

/// Waits until no attempt is in flight, so a `queue retry` is not overwritten by an attempt
/// that ends afterwards.
async fn wait_idle(relay: &Relay) {
    let idle = eventually(Duration::from_secs(30), || {
        relay.delivery().attempts_running() == 0
            && relay.delivery().governor().snapshot().in_flight == 0
    })
    .await;
    assert!(idle, "attempts still running after 30 s");
}

/// Queue mode, two attempts: the first reaches one recipient and is throttled for the other
/// (the sandbox's rate limit, one message per mailbox), the retry reaches the second. Both
/// copies Exchange got carry the same Date and Message-ID, which is what the queue entry
/// (the audit trail's `message_id`) records.
#[tokio::test]
async fn a_retry_sends_the_same_date_and_message_id() {
    let world = World::start_with(|o| {
        o.rate_limit = 1;
        o.rate_window = Duration::from_secs(600);
    })
    .await;
    let relay = world
        .relay(&[
            HOSTNAME,
            ("SMTP_OAUTH_RELAY_MODE", "queue"),
            // One recipient per transaction, so each is its own MAIL FROM at the sandbox.
            ("SMTP_OAUTH_RELAY__GOVERNOR__RECIPIENTS_PER_MESSAGE", "1"),
        ])
        .await;
    let spool = relay.delivery().spool().clone();
    let body = "From: app@example.com\r\nSubject: twice\r\n\r\nbody\r\n";
    let reply = send(&relay, &["first@contoso.com", "second@contoso.com"], body).await;
    assert!(reply.contains("queued"), "{reply}");
    let id = reply_id(&reply);
    let first = world.wait_for(1).await;
    assert_eq!(first[0].envelope.rcpt_to, ["first@contoso.com"]);
    wait_until(
        "the first attempt to leave the second recipient queued",
        Duration::from_secs(20),
        || {
            queue(&spool)
                .iter()
                .any(|e| e.attempts >= 1 && e.rcpt_to == ["second@contoso.com"])
        },
    )
    .await;
    let entry = queue(&spool).remove(0);
    assert_eq!(entry.id, id);
    let want_mid = format!("<{id}@{HOST}>");
    assert_eq!(entry.message_id.as_deref(), Some(want_mid.as_str()));
    // The retry goes in a later second than the first attempt: a Date taken at send time
    // would differ.
    let first_sent = Instant::now();
    world.sandbox.set_rate_limit(0, Duration::from_secs(600));
    wait_idle(&relay).await;
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(first_sent.elapsed())).await;
    assert!(spool.retry(&id).expect("queue retry"), "unknown id {id}");
    let both = world.wait_for(2).await;
    assert_eq!(both.len(), 2, "{both:?}");
    let second = both.iter().find(|m| m.id != first[0].id).unwrap();
    assert_eq!(second.envelope.rcpt_to, ["second@contoso.com"]);
    assert_eq!(
        String::from_utf8_lossy(&second.data),
        String::from_utf8_lossy(&first[0].data),
        "both attempts send the same bytes"
    );
    assert_eq!(
        fields(&second.data, "message-id"),
        [format!("Message-ID: {want_mid}")]
    );
    assert_eq!(
        fields(&second.data, "date"),
        [format!("Date: {}", rfc5322_date(entry.received_at))],
        "Date is when the relay accepted the message"
    );
    assert_eq!(without_additions(&second.data, &id), body.as_bytes());
    assert!(
        eventually(Duration::from_secs(10), || queue(&spool).is_empty()).await,
        "delivered and gone from the queue"
    );
    relay.shutdown(Duration::from_secs(5)).await;
}
