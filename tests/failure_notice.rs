//! The failure notice (RFC 5321 §6.1), end to end against the sandbox: a message that fails
//! for good after the client got `250` is reported to its sender by default, through the same
//! mailbox; a notice Exchange refuses goes once to the relay's own mailbox; nothing loops.
//!
//! The sandbox refuses any recipient whose local part is `rcpt-perm` with
//! `550 5.1.10 RESOLVER.ADR.RecipientNotFound` (see `sandbox/smtp/script.rs`).

mod support;

use std::time::Duration;

use smtp_oauth_relay::spool::{Area, QueueEntry, Spool};
use support::{eventually, reply_id, RawClient, World, MAILBOX};

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: app@example.com\r\n\
         To: someone@example.com\r\n\
         Subject: {subject}\r\n\
         \r\n\
         Hello.\r\n"
    )
    .into_bytes()
}

fn list(spool: &Spool, area: Area) -> Vec<QueueEntry> {
    spool.list(area).expect("list the spool")
}

/// Whether a line of `text` names `rcpt` with Exchange's `550 5.1.10`.
fn names_refusal(text: &str, rcpt: &str) -> bool {
    text.lines()
        .any(|l| l.trim_start().starts_with(&format!("{rcpt}:")) && l.contains("550 5.1.10"))
}

/// Sends one message in its own session and returns the relay's id from the `250`.
async fn send(relay: &smtp_oauth_relay::app::Relay, from: &str, to: &str) -> String {
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO app.example", 250).await;
    let reply = c.send_mail(from, &[to], &message("report")).await;
    assert!(reply.starts_with("250 "), "accepted first: {reply}");
    c.cmd("QUIT", 221).await;
    reply_id(&reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_mode_refusal_after_250_is_reported_to_the_sender_by_default() {
    let world = World::start().await;
    // No failure-notice setting at all: the default must report.
    let relay = world.relay(&[("SMTP_OAUTH_RELAY_MODE", "queue")]).await;
    let spool = relay.delivery().spool().clone();
    let id = send(&relay, "app@example.com", "rcpt-perm@x.example").await;

    let stored = world.wait_for(1).await;
    let notice = stored
        .iter()
        .find(|m| m.envelope.rcpt_to == vec!["app@example.com".to_string()])
        .unwrap_or_else(|| panic!("a failure notice to app@example.com; stored: {stored:#?}"));
    assert_eq!(
        notice.envelope.auth_user, MAILBOX,
        "sent through the same mailbox"
    );
    assert_eq!(notice.envelope.mail_from, MAILBOX);
    let text = String::from_utf8_lossy(&notice.data);
    assert!(text.contains(&id), "names the message:\n{text}");
    assert!(names_refusal(&text, "rcpt-perm@x.example"), "{text}");
    assert!(
        text.contains("\r\nAuto-Submitted: auto-replied\r\n"),
        "{text}"
    );

    assert!(
        eventually(Duration::from_secs(10), || relay.delivery().queued() == 0).await,
        "the notice leaves the queue once delivered"
    );
    let failed = list(&spool, Area::Failed);
    assert_eq!(failed.len(), 1, "only the original failed: {failed:#?}");
    assert_eq!(failed[0].id, id);
    assert!(relay.shutdown(Duration::from_secs(10)).await);
    assert_eq!(world.sandbox.message_count(), 1, "exactly one notice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notice_to_overrides_the_sender_and_the_off_switch_still_works() {
    let world = World::start().await;
    let relay = world
        .relay(&[
            ("SMTP_OAUTH_RELAY_MODE", "queue"),
            ("SMTP_OAUTH_RELAY_NOTICE_TO", "ops@example.com"),
        ])
        .await;
    let id = send(&relay, "app@example.com", "rcpt-perm@x.example").await;
    let stored = world.wait_for(1).await;
    assert_eq!(stored[0].envelope.rcpt_to, vec!["ops@example.com"]);
    assert!(String::from_utf8_lossy(&stored[0].data).contains(&id));
    assert!(relay.shutdown(Duration::from_secs(10)).await);

    // `delivery.failure_notice = false`: failed/ only, no notice.
    let world = World::start().await;
    let relay = world
        .relay(&[
            ("SMTP_OAUTH_RELAY_MODE", "queue"),
            ("SMTP_OAUTH_RELAY__DELIVERY__FAILURE_NOTICE", "false"),
        ])
        .await;
    let spool = relay.delivery().spool().clone();
    let id = send(&relay, "app@example.com", "rcpt-perm@x.example").await;
    assert!(
        eventually(Duration::from_secs(20), || list(&spool, Area::Failed)
            .iter()
            .any(|e| e.id == id))
        .await
    );
    assert!(relay.shutdown(Duration::from_secs(10)).await);
    assert_eq!(world.sandbox.message_count(), 0, "notices switched off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_notice_goes_once_to_the_relays_mailbox() {
    let world = World::start().await;
    let relay = world.relay(&[("SMTP_OAUTH_RELAY_MODE", "queue")]).await;
    let spool = relay.delivery().spool().clone();
    // The sender's own address is one Exchange refuses: the notice to it fails too.
    let id = send(&relay, "rcpt-perm@sender.example", "rcpt-perm@x.example").await;

    let stored = world.wait_for(1).await;
    assert_eq!(
        stored[0].envelope.rcpt_to,
        vec![MAILBOX.to_string()],
        "the fallback goes to the mailbox: {stored:#?}"
    );
    let text = String::from_utf8_lossy(&stored[0].data);
    assert!(
        names_refusal(&text, "rcpt-perm@sender.example"),
        "why: {text}"
    );
    assert!(text.contains(&id), "quotes the first notice: {text}");
    assert!(
        text.contains("\r\nAuto-Submitted: auto-replied\r\n"),
        "{text}"
    );

    assert!(eventually(Duration::from_secs(10), || relay.delivery().queued() == 0).await);
    let failed = list(&spool, Area::Failed);
    assert_eq!(failed.len(), 2, "the original and its notice: {failed:#?}");
    let notice = failed.iter().find(|e| e.id != id).unwrap();
    assert!(notice.notice, "the notice is marked as one in its entry");
    assert!(notice.mail_from.is_empty());
    assert!(relay.shutdown(Duration::from_secs(10)).await);
    assert_eq!(world.sandbox.message_count(), 1, "one fallback, no more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_loops_when_the_mailbox_refuses_too_or_the_sender_is_null() {
    // The relay's own mailbox is one the sandbox refuses as a recipient.
    let mailbox = "rcpt-perm@sandbox.example";
    let world = World::start_with(|o| o.mailboxes = vec![mailbox.into()]).await;
    let relay = world
        .relay(&[
            ("SMTP_OAUTH_RELAY_MODE", "queue"),
            ("SMTP_OAUTH_RELAY_MAILBOX", mailbox),
        ])
        .await;
    let spool = relay.delivery().spool().clone();
    let id = send(&relay, "rcpt-perm@sender.example", "rcpt-perm@x.example").await;
    let bounce = send(&relay, "", "rcpt-perm@x.example").await;

    // The original, its notice and the fallback fail; the bounce fails without a notice.
    let settled = eventually(Duration::from_secs(30), || {
        list(&spool, Area::Failed).len() >= 4 && relay.delivery().queued() == 0
    })
    .await;
    let failed = list(&spool, Area::Failed);
    assert!(settled, "four failures expected: {failed:#?}");
    // Counted once nothing more can come: shutdown returned true, so every started
    // delivery has ended.
    assert!(relay.shutdown(Duration::from_secs(10)).await);
    let failed = list(&spool, Area::Failed);
    assert_eq!(
        failed.len(),
        4,
        "no notice of a notice's fallback: {failed:#?}"
    );
    assert_eq!(failed.iter().filter(|e| e.notice).count(), 2);
    assert!(failed.iter().any(|e| e.id == id) && failed.iter().any(|e| e.id == bounce));
    assert!(list(&spool, Area::Queue).is_empty());
    assert_eq!(world.sandbox.message_count(), 0);
}
