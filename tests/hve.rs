//! High Volume Email end to end: client -> relay (upstream endpoint `hve`) -> sandbox in HVE
//! mode. Internal recipients are delivered, an external one is refused with an explanation,
//! a token with less than 10 minutes left is replaced before AUTH, and the setup mistakes
//! HVE has get advice naming its permissions. Also the sandbox's per-mailbox SendAs rights
//! through the relay (standard endpoint).
//!
//! The configuration key for the endpoint comes with multi-account configuration; until then
//! the relay is started from a validated configuration with `upstream.endpoint` set.

mod support;

use std::time::Duration;

use smtp_oauth_relay::app::Relay;
use smtp_oauth_relay::sandbox::SandboxOptions;
use smtp_oauth_relay::upstream::Endpoint;
use support::{RawClient, World, MAILBOX};

const INTERNAL: &str = "colleague@sandbox.example";
const EXTERNAL: &str = "someone@example.com";

fn hve(o: &mut SandboxOptions) {
    o.hve = true;
    o.app_roles = vec!["Mail.Send".into()];
}

async fn hve_relay(world: &World) -> Relay {
    // The account's `endpoint = "hve"`, set as a key of the one account.
    let config = world.config(&[("SMTP_OAUTH_RELAY__ACCOUNT__ENDPOINT", "hve")]);
    assert_eq!(config.account().upstream.endpoint, Endpoint::Hve);
    Relay::start(config).await.expect("relay starts")
}

/// Sends one message through the relay; returns the reply to DATA.
async fn send(relay: &Relay, from_header: &str, to: &[&str]) -> String {
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO app.example", 250).await;
    let body = format!("From: <{from_header}>\r\nSubject: hve\r\n\r\nhello\r\n");
    c.send_mail("app@sandbox.example", to, body.as_bytes())
        .await
}

#[tokio::test]
async fn internal_recipients_are_delivered_and_an_external_one_is_explained() {
    let world = World::start_with(hve).await;
    let relay = hve_relay(&world).await;
    let reply = send(&relay, MAILBOX, &[INTERNAL, EXTERNAL]).await;
    assert!(reply.starts_with("250 "), "{reply}");
    assert!(reply.contains("1 of 2 recipients not delivered"), "{reply}");
    assert!(reply.contains("550 5.5.105"), "{reply}");
    assert!(reply.contains("inside your organisation"), "{reply}");
    assert!(reply.contains("standard endpoint"), "{reply}");
    let stored = world.wait_for(1).await;
    assert_eq!(stored[0].envelope.rcpt_to, vec![INTERNAL.to_string()]);
    assert_eq!(stored[0].envelope.auth_user, MAILBOX);

    // Only external recipients: refused for good with HVE's own reply.
    let reply = send(&relay, MAILBOX, &[EXTERNAL]).await;
    assert!(reply.starts_with("550 5.5.105 "), "{reply}");
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_token_with_less_than_ten_minutes_left_is_replaced_before_auth() {
    // The relay's first token lives 9 minutes; later ones an hour.
    let world = World::start_with(|o| {
        hve(o);
        o.token_lifetime = Duration::from_secs(9 * 60);
    })
    .await;
    let relay = hve_relay(&world).await;
    // The relay fetches a token as it starts (its keeper keeps one ready).
    assert_eq!(
        world
            .sandbox
            .wait_for_token_requests(1, Duration::from_secs(30))
            .await,
        1
    );
    world.sandbox.set_token_lifetime(Duration::from_secs(3599));
    let reply = send(&relay, MAILBOX, &[INTERNAL]).await;
    assert!(reply.starts_with("250 "), "{reply}");
    assert_eq!(world.wait_for(1).await.len(), 1);
    // The short token never reached AUTH: a fresh one was fetched first.
    assert_eq!(world.sandbox.tokens_issued(), 2);
    assert_eq!(world.sandbox.auth_failures(), 0);
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn tokens_that_never_live_ten_minutes_hold_the_account_with_a_clear_reason() {
    let world = World::start_with(|o| {
        hve(o);
        o.token_lifetime = Duration::from_secs(9 * 60);
    })
    .await;
    let relay = hve_relay(&world).await;
    let reply = send(&relay, MAILBOX, &[INTERNAL]).await;
    assert!(reply.starts_with("451 4.7.0 "), "{reply}");
    assert!(reply.contains("at least 10 minutes"), "{reply}");
    assert!(world.sandbox.auth_failures() >= 1);
    assert_eq!(world.sandbox.message_count(), 0);
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_hve_token_without_mail_send_gets_advice_naming_mail_send_and_add_hveappaccess() {
    // The app has the standard endpoint's permission only.
    let world = World::start_with(|o| {
        o.hve = true;
        o.app_roles = vec!["SMTP.SendAsApp".into()];
    })
    .await;
    let relay = hve_relay(&world).await;
    let reply = send(&relay, MAILBOX, &[INTERNAL]).await;
    assert!(reply.starts_with("451 4.7.0 "), "{reply}");
    assert!(reply.contains("Mail.Send"), "{reply}");
    assert!(reply.contains("Add-HVEAppAccess"), "{reply}");
    assert!(!reply.contains("Add-MailboxPermission"), "{reply}");
    // One fresh token was tried before giving up, as after any 535 5.7.3.
    assert_eq!(world.sandbox.auth_failures(), 2);
    assert_eq!(world.sandbox.message_count(), 0);
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn send_as_rights_are_per_mailbox() {
    const OTHER: &str = "other@sandbox.example";
    let world = World::start_with(|o| {
        o.mailboxes = vec![MAILBOX.into(), OTHER.into()];
        o.enforce_send_as = true;
    })
    .await;
    let relay = world.relay(&[]).await;
    let other = world.relay(&[("SMTP_OAUTH_RELAY_MAILBOX", OTHER)]).await;

    let reply = send(&relay, MAILBOX, &[EXTERNAL]).await;
    assert!(reply.starts_with("250 "), "{reply}");
    let reply = send(&other, OTHER, &[EXTERNAL]).await;
    assert!(reply.starts_with("250 "), "{reply}");
    let reply = send(&relay, OTHER, &[EXTERNAL]).await;
    assert!(reply.starts_with("554 5.2.252 "), "{reply}");
    assert!(
        reply.contains(&format!("{MAILBOX} not allowed to send as {OTHER}")),
        "{reply}"
    );
    let reply = send(&other, MAILBOX, &[EXTERNAL]).await;
    assert!(
        reply.contains(&format!("{OTHER} not allowed to send as {MAILBOX}")),
        "{reply}"
    );

    let stored = world.wait_for(2).await;
    let mut users: Vec<&str> = stored
        .iter()
        .map(|m| m.envelope.auth_user.as_str())
        .collect();
    users.sort();
    assert_eq!(users, vec![OTHER, MAILBOX]);
    relay.shutdown(Duration::from_secs(5)).await;
    other.shutdown(Duration::from_secs(5)).await;
}
