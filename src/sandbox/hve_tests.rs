//! Loopback dialogs of the per-mailbox SendAs rights (`enforce_send_as`, `send_as`) and of
//! High Volume Email mode (`hve`): the exact replies, and that nothing refused is stored.

use std::time::Duration;

use super::dialog_tests::{start_with, tls_session, token, xoauth2, Client, Fixture};

const A: &str = "a@contoso.example";
const B: &str = "b@contoso.example";
const SHARED: &str = "shared@contoso.example";

async fn authed_as(fx: &Fixture, mailbox: &str, token: &str) -> Client {
    let (mut c, _) = tls_session(fx).await;
    let reply = c
        .cmd(&format!("AUTH XOAUTH2 {}", xoauth2(mailbox, token)))
        .await;
    assert_eq!(reply, "235 2.7.0 Authentication successful");
    c
}

/// One transaction with `from` as envelope sender and `header_from` in `From:`; returns the
/// reply to the end of DATA.
async fn send_as(c: &mut Client, from: &str, header_from: &str, rcpt: &str) -> String {
    assert_eq!(
        c.cmd(&format!("MAIL FROM:<{from}>")).await,
        "250 2.1.0 Sender OK"
    );
    assert_eq!(
        c.cmd(&format!("RCPT TO:<{rcpt}>")).await,
        "250 2.1.5 Recipient OK"
    );
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(format!("From: <{header_from}>\r\nSubject: x\r\n\r\nbody\r\n.\r\n").as_bytes())
        .await;
    c.reply().await
}

fn denied(user: &str, from: &str) -> String {
    format!(
        "554 5.2.252 SendAsDenied; {user} not allowed to send as {from}; \
         STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; \
         Failed to process message due to a permanent exception"
    )
}

#[tokio::test]
async fn each_mailbox_sends_as_itself_and_what_it_was_granted_only() {
    let fx = start_with(|o| {
        o.mailboxes = vec![A.into(), B.into()];
        o.enforce_send_as = true;
        o.send_as = vec![(A.into(), SHARED.into())];
    })
    .await;
    let token = token(&fx).await;
    let mut a = authed_as(&fx, A, &token).await;
    let mut b = authed_as(&fx, B, &token).await;
    let to = "someone@example.com";

    assert!(send_as(&mut a, A, A, to).await.starts_with("250 2.0.0 OK"));
    assert!(send_as(&mut b, B, B, to).await.starts_with("250 2.0.0 OK"));
    assert_eq!(send_as(&mut a, B, B, to).await, denied(A, B));
    assert_eq!(send_as(&mut b, A, A, to).await, denied(B, A));
    // The grant is A's: A may send as the shared address, B may not.
    assert!(send_as(&mut a, SHARED, SHARED, to)
        .await
        .starts_with("250 2.0.0 OK"));
    assert_eq!(send_as(&mut b, SHARED, SHARED, to).await, denied(B, SHARED));
    // The From: header is judged too, as in Exchange's transcript.
    assert_eq!(send_as(&mut a, A, B, to).await, denied(A, B));

    let stored = fx.sandbox.messages();
    let senders: Vec<(&str, &str)> = stored
        .iter()
        .map(|m| (m.envelope.auth_user.as_str(), m.envelope.mail_from.as_str()))
        .collect();
    assert_eq!(senders, vec![(A, A), (B, B), (A, SHARED)]);
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn without_enforcement_mail_from_must_be_the_mailbox() {
    let fx = start_with(|o| {
        o.mailboxes = vec![A.into(), B.into()];
        o.send_as = vec![(A.into(), SHARED.into())];
    })
    .await;
    let token = token(&fx).await;
    let mut a = authed_as(&fx, A, &token).await;
    assert_eq!(
        a.cmd(&format!("MAIL FROM:<{SHARED}>")).await,
        "550 5.7.60 SMTP; Client does not have permissions to send as this sender"
    );
    // Not enforced: the From: header is not judged.
    assert!(send_as(&mut a, A, B, "x@example.com")
        .await
        .starts_with("250 2.0.0 OK"));
    fx.sandbox.shutdown().await;
}

fn hve(o: &mut super::SandboxOptions) {
    o.mailboxes = vec!["hve@contoso.example".into()];
    o.hve = true;
    o.app_roles = vec!["Mail.Send".into()];
}

#[tokio::test]
async fn hve_sends_inside_the_organisation_only() {
    let fx = start_with(hve).await;
    let token = token(&fx).await;
    let mut c = authed_as(&fx, "hve@contoso.example", &token).await;
    assert_eq!(
        c.cmd("MAIL FROM:<hve@contoso.example>").await,
        "250 2.1.0 Sender OK"
    );
    assert_eq!(
        c.cmd("RCPT TO:<someone@example.com>").await,
        "550 5.5.105 External sending is not supported for High Volume Email accounts"
    );
    assert_eq!(
        c.cmd("RCPT TO:<colleague@CONTOSO.example>").await,
        "250 2.1.5 Recipient OK"
    );
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0 OK"));
    let stored = fx.sandbox.messages();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].envelope.rcpt_to,
        vec!["colleague@CONTOSO.example"]
    );
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn hve_accepted_domains_can_be_set() {
    let fx = start_with(|o| {
        hve(o);
        o.accepted_domains = vec!["fabrikam.example".into()];
    })
    .await;
    let token = token(&fx).await;
    let mut c = authed_as(&fx, "hve@contoso.example", &token).await;
    c.cmd("MAIL FROM:<hve@contoso.example>").await;
    assert!(c
        .cmd("RCPT TO:<x@contoso.example>")
        .await
        .starts_with("550 5.5.105"));
    assert!(c
        .cmd("RCPT TO:<x@fabrikam.example>")
        .await
        .starts_with("250 "));
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn hve_auth_wants_mail_send_ten_minutes_and_an_hve_account() {
    // An SMTP.SendAsApp token (the standard endpoint's permission) is refused as Exchange
    // refuses a missing permission.
    let fx = start_with(|o| {
        hve(o);
        o.app_roles = vec!["SMTP.SendAsApp".into()];
    })
    .await;
    let t = token(&fx).await;
    let (mut c, _) = tls_session(&fx).await;
    let reply = c
        .cmd(&format!(
            "AUTH XOAUTH2 {}",
            xoauth2("hve@contoso.example", &t)
        ))
        .await;
    assert!(
        reply.starts_with("535 5.7.3 Authentication unsuccessful"),
        "{reply}"
    );
    fx.sandbox.shutdown().await;

    // Nine-minute tokens: too close to expiry; a longer one issued later works.
    let fx = start_with(|o| {
        hve(o);
        o.token_lifetime = Duration::from_secs(9 * 60);
    })
    .await;
    let short = token(&fx).await;
    let (mut c, _) = tls_session(&fx).await;
    assert_eq!(
        c.cmd(&format!(
            "AUTH XOAUTH2 {}",
            xoauth2("hve@contoso.example", &short)
        ))
        .await,
        "501 5.5.127 Invalid XOAUTH2 auth data - Token will expire soon"
    );
    assert_eq!(
        c.cmd(&format!(
            "AUTH XOAUTH2 {}",
            xoauth2("other@contoso.example", &short)
        ))
        .await,
        "501 5.5.124 Invalid XOAUTH2 auth data - User address provided is not valid. \
         Please ensure the auth data is correct"
    );
    fx.sandbox.set_token_lifetime(Duration::from_secs(3599));
    let long = token(&fx).await;
    authed_as(&fx, "hve@contoso.example", &long).await;
    assert_eq!(fx.sandbox.auth_failures(), 2);
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn the_standard_endpoint_refuses_a_mail_send_only_token() {
    let fx = start_with(|o| o.app_roles = vec!["Mail.Send".into()]).await;
    let t = token(&fx).await;
    let (mut c, _) = tls_session(&fx).await;
    let reply = c
        .cmd(&format!(
            "AUTH XOAUTH2 {}",
            xoauth2(&fx.sandbox.options().mailboxes[0], &t)
        ))
        .await;
    assert!(reply.starts_with("535 5.7.3 "), "{reply}");
    fx.sandbox.shutdown().await;
}
