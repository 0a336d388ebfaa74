//! Loopback tests of what the relay's queue, retry and governor tests lean on: the message
//! rate limit, the concurrency limit changed at runtime, SMTP outages, the quota reply,
//! duplicate accounting by header, and a store that outlives a sandbox.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::dialog_tests::{
    authed_session, send_message, start, start_with, tls_session, token, xoauth2, Client, Fixture,
    MAILBOX,
};
use super::{Sandbox, SandboxOptions, SmtpOutage};

const OTHER: &str = "other@sandbox.example";
const ACCESS_DENIED: &str = "451 4.7.500 Access denied, please try again later";
const CONCURRENCY: &str = "432 4.3.2 Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending for more information.";
const QUOTA: &str = "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot submit message.";
const GREETING_421: &str = "421 4.3.2 Service not available, closing transmission channel";

async fn authed_as(fx: &Fixture, mailbox: &str, token: &str) -> Client {
    let (mut c, _) = tls_session(fx).await;
    let reply = c
        .cmd(&format!("AUTH XOAUTH2 {}", xoauth2(mailbox, token)))
        .await;
    assert_eq!(reply, "235 2.7.0 Authentication successful");
    c
}

fn mail_from(mailbox: &str) -> String {
    format!("MAIL FROM:<{mailbox}>")
}

fn tmp_leftovers(sandbox: &Sandbox) -> usize {
    std::fs::read_dir(&sandbox.options().store_dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .count()
}

/// Connecting is refused promptly (never a hang).
async fn assert_refused(addr: std::net::SocketAddr) {
    let attempt = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .expect("connect must fail at once, not hang");
    let err = attempt.expect_err("connection must be refused");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
}

// ---------------------------------------------------------------------------------------
// Rate limit

#[tokio::test]
async fn rate_limit_per_mailbox_answers_451_and_recovers_after_the_window() {
    let fx = start_with(|o| {
        o.rate_limit = 3;
        o.rate_window = Duration::from_millis(800);
        o.mailboxes.push(OTHER.to_string());
    })
    .await;
    let token = token(&fx).await;
    let mut c = authed_session(&fx, &token).await;
    for _ in 0..3 {
        let reply = send_message(&mut c, &["a@b.example"], b"Subject: x\r\n\r\nx\r\n").await;
        assert!(reply.starts_with("250 2.0.0 OK"), "{reply}");
    }
    // The fourth MAIL within the window is throttled, with Exchange's text.
    assert_eq!(c.cmd(&mail_from(MAILBOX)).await, ACCESS_DENIED);
    assert_eq!(c.cmd(&mail_from(MAILBOX)).await, ACCESS_DENIED);
    assert_eq!(fx.sandbox.rate_violations(), 2);
    // Refused MAILs are not counted as messages; lookups are case-insensitive.
    let times = fx.sandbox.message_times(&MAILBOX.to_ascii_uppercase());
    assert_eq!(times.len(), 3);
    assert!(times.windows(2).all(|w| w[0] <= w[1]));

    // Another mailbox has its own budget.
    let mut other = authed_as(&fx, OTHER, &token).await;
    assert_eq!(other.cmd(&mail_from(OTHER)).await, "250 2.1.0 Sender OK");
    assert_eq!(fx.sandbox.message_times(OTHER).len(), 1);

    // Once the first three have left the window, MAIL is accepted again.
    let until = times[0] + Duration::from_millis(850);
    tokio::time::sleep(until.saturating_duration_since(std::time::Instant::now())).await;
    let reply = send_message(&mut c, &["a@b.example"], b"Subject: y\r\n\r\ny\r\n").await;
    assert!(reply.starts_with("250 2.0.0 OK"), "{reply}");
    assert_eq!(fx.sandbox.message_times(MAILBOX).len(), 4);
    assert_eq!(fx.sandbox.message_count(), 4);
    assert_eq!(fx.sandbox.rate_violations(), 2);

    // Changed at runtime: off, then back on with the recorded times counting.
    fx.sandbox.set_rate_limit(0, Duration::from_secs(60));
    c.cmd("RSET").await;
    assert_eq!(c.cmd(&mail_from(MAILBOX)).await, "250 2.1.0 Sender OK");
    c.cmd("RSET").await;
    fx.sandbox.set_rate_limit(5, Duration::from_secs(60));
    assert_eq!(c.cmd(&mail_from(MAILBOX)).await, ACCESS_DENIED);
    assert_eq!(fx.sandbox.rate_violations(), 3);
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn rate_limit_is_off_by_default() {
    let fx = start().await;
    assert_eq!(fx.sandbox.options().rate_limit, 0);
    assert_eq!(fx.sandbox.options().rate_window, Duration::from_secs(60));
    let token = token(&fx).await;
    let mut c = authed_session(&fx, &token).await;
    for _ in 0..40 {
        assert_eq!(c.cmd(&mail_from(MAILBOX)).await, "250 2.1.0 Sender OK");
        c.cmd("RSET").await;
    }
    assert_eq!(fx.sandbox.message_times(MAILBOX).len(), 40);
    assert_eq!(fx.sandbox.rate_violations(), 0);
    fx.sandbox.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Concurrency limit

#[tokio::test]
async fn concurrency_limit_changes_at_runtime_and_432s_are_counted() {
    let fx = start().await;
    let token = token(&fx).await;
    fx.sandbox.set_concurrency_limit(1);
    let mut a = authed_session(&fx, &token).await;
    assert_eq!(a.cmd(&mail_from(MAILBOX)).await, "250 2.1.0 Sender OK");
    let mut b = authed_session(&fx, &token).await;
    assert_eq!(b.cmd(&mail_from(MAILBOX)).await, CONCURRENCY);
    assert_eq!(fx.sandbox.concurrency_rejections(), 1);
    // A 432 is not a rate violation and not a message.
    assert_eq!(fx.sandbox.rate_violations(), 0);
    assert_eq!(fx.sandbox.message_times(MAILBOX).len(), 1);

    fx.sandbox.set_concurrency_limit(0);
    assert_eq!(b.cmd(&mail_from(MAILBOX)).await, "250 2.1.0 Sender OK");

    fx.sandbox.set_concurrency_limit(2);
    let mut c = authed_session(&fx, &token).await;
    assert_eq!(c.cmd(&mail_from(MAILBOX)).await, CONCURRENCY);
    assert_eq!(c.cmd(&mail_from(MAILBOX)).await, CONCURRENCY);
    assert_eq!(fx.sandbox.concurrency_rejections(), 3);
    // The option still shows the starting value.
    assert_eq!(fx.sandbox.options().max_connections_per_mailbox, 3);
    fx.sandbox.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Outages

#[tokio::test]
async fn refuse_outage_closes_the_port_and_binds_the_same_one_again() {
    let fx = start().await;
    let addr = fx.sandbox.smtp_addr();
    let token = token(&fx).await;
    let mut in_flight = authed_session(&fx, &token).await;

    for round in 0..3 {
        fx.sandbox.set_smtp_outage(Some(SmtpOutage::Refuse));
        assert_refused(addr).await;
        assert_refused(addr).await;
        // The session that was already open may finish its work.
        let reply = send_message(&mut in_flight, &["a@b.example"], b"x\r\n").await;
        assert!(reply.starts_with("250 2.0.0 OK"), "round {round}: {reply}");
        // The token endpoint is not part of the outage.
        assert!(!token_is_empty(&fx).await);

        fx.sandbox.set_smtp_outage(None);
        assert_eq!(fx.sandbox.smtp_addr(), addr);
        let mut fresh = authed_session(&fx, &token).await;
        let reply = send_message(&mut fresh, &["a@b.example"], b"y\r\n").await;
        assert!(reply.starts_with("250 2.0.0 OK"), "round {round}: {reply}");
    }
    // Clearing twice, or refusing twice, is harmless.
    fx.sandbox.set_smtp_outage(None);
    fx.sandbox.set_smtp_outage(Some(SmtpOutage::Refuse));
    fx.sandbox.set_smtp_outage(Some(SmtpOutage::Refuse));
    assert_refused(addr).await;
    // Another outage kind needs the socket: it comes back.
    fx.sandbox.set_smtp_outage(Some(SmtpOutage::Greeting421));
    let (_c, greeting) = raw_greeting(addr).await;
    assert_eq!(greeting, format!("{GREETING_421}\r\n"));
    fx.sandbox.set_smtp_outage(None);
    assert_eq!(fx.sandbox.message_count(), 6);

    // After shutdown the port stays closed.
    fx.sandbox.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err());
}

async fn token_is_empty(fx: &Fixture) -> bool {
    token(fx).await.is_empty()
}

/// Connects and reads everything the server sends until it closes.
async fn raw_greeting(addr: std::net::SocketAddr) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut got))
        .await
        .expect("server must close")
        .unwrap();
    (tcp, String::from_utf8(got).unwrap())
}

#[tokio::test]
async fn greeting_421_outage_answers_and_closes() {
    let fx = start().await;
    let addr = fx.sandbox.smtp_addr();
    fx.sandbox.set_smtp_outage(Some(SmtpOutage::Greeting421));
    for _ in 0..3 {
        let (_tcp, got) = raw_greeting(addr).await;
        assert_eq!(got, format!("{GREETING_421}\r\n"));
    }
    fx.sandbox.set_smtp_outage(None);
    let (_c, greeting) = Client::connect(&fx).await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn storm_451_refuses_mail_and_end_of_data() {
    let fx = start().await;
    let token = token(&fx).await;
    let mut c = authed_session(&fx, &token).await;
    // A transaction under way when the storm starts fails at its end.
    assert_eq!(c.cmd(&mail_from(MAILBOX)).await, "250 2.1.0 Sender OK");
    assert_eq!(
        c.cmd("RCPT TO:<a@b.example>").await,
        "250 2.1.5 Recipient OK"
    );
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(b"Subject: storm\r\n\r\nbody\r\n").await;
    fx.sandbox.set_smtp_outage(Some(SmtpOutage::Storm451));
    c.send(b".\r\n").await;
    assert_eq!(c.reply().await, ACCESS_DENIED);
    // New transactions fail at MAIL, on old and new sessions; greeting and AUTH still work.
    assert_eq!(c.cmd(&mail_from(MAILBOX)).await, ACCESS_DENIED);
    let mut fresh = authed_session(&fx, &token).await;
    assert_eq!(fresh.cmd(&mail_from(MAILBOX)).await, ACCESS_DENIED);
    assert_eq!(fx.sandbox.message_count(), 0);
    assert_eq!(fx.sandbox.rate_violations(), 0);

    fx.sandbox.set_smtp_outage(None);
    let reply = send_message(&mut c, &["a@b.example"], b"ok\r\n").await;
    assert!(reply.starts_with("250 2.0.0 OK"), "{reply}");
    assert_eq!(fx.sandbox.message_count(), 1);
    assert_eq!(tmp_leftovers(&fx.sandbox), 0);
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn quota_exceeded_refuses_at_end_of_data() {
    let fx = start().await;
    let token = token(&fx).await;
    let mut c = authed_session(&fx, &token).await;
    fx.sandbox.set_quota_exceeded(true);
    let reply = send_message(&mut c, &["a@b.example"], b"Subject: q\r\n\r\nq\r\n").await;
    assert_eq!(reply, QUOTA);
    // BDAT too.
    assert_eq!(c.cmd(&mail_from(MAILBOX)).await, "250 2.1.0 Sender OK");
    c.cmd("RCPT TO:<a@b.example>").await;
    c.send(b"BDAT 3 LAST\r\nq\r\n").await;
    assert_eq!(c.reply().await, QUOTA);
    assert_eq!(fx.sandbox.message_count(), 0);
    assert_eq!(tmp_leftovers(&fx.sandbox), 0);

    fx.sandbox.set_quota_exceeded(false);
    let reply = send_message(&mut c, &["a@b.example"], b"Subject: q\r\n\r\nq\r\n").await;
    assert!(reply.starts_with("250 2.0.0 OK"), "{reply}");
    assert_eq!(fx.sandbox.message_count(), 1);
    fx.sandbox.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Store: duplicates and restarts

#[tokio::test]
async fn count_by_header_finds_messages_stored_twice() {
    let fx = start_with(|o| o.max_connections_per_mailbox = 0).await;
    let token = token(&fx).await;
    let mut c = authed_session(&fx, &token).await;
    let bodies: [&[u8]; 6] = [
        b"Message-ID: <1@app>\r\nX-Test-Seq: 1\r\n\r\nX-Test-Seq: body\r\n",
        b"Message-ID: <2@app>\r\nx-test-seq:2\r\n\r\n",
        b"Message-ID: <2@app>\r\nX-TEST-SEQ: 2 \r\n\r\n",
        b"Message-ID:\r\n <3@app>\r\nX-Test-Seq: 3\r\nX-Test-Seq: 99\r\n\r\n",
        b"Subject: no sequence\r\n\r\nX-Test-Seq: 4\r\n",
        b"X-Test-Seq-Other: 5\r\n\r\n",
    ];
    for body in bodies {
        let reply = send_message(&mut c, &["a@b.example"], body).await;
        assert!(reply.starts_with("250 2.0.0 OK"), "{reply}");
    }
    assert_eq!(fx.sandbox.message_count(), 6);
    let seq = fx.sandbox.count_by_header("x-test-seq");
    let expected: HashMap<String, usize> = [("1", 1), ("2", 2), ("3", 1)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(seq, expected);
    let ids = fx.sandbox.count_by_header("Message-ID");
    assert_eq!(ids.get("<2@app>"), Some(&2));
    assert_eq!(ids.get("<3@app>"), Some(&1));
    assert_eq!(ids.values().sum::<usize>(), 4);
    assert!(fx.sandbox.count_by_header("X-Absent").is_empty());
    fx.sandbox.shutdown().await;
}

#[tokio::test]
async fn stored_messages_survive_a_restart_on_the_same_directory_and_port() {
    crate::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let mut opts = SandboxOptions::new(store_dir.clone());
    opts.max_connections_per_mailbox = 0;

    let fx = fixture(Sandbox::start(opts.clone()).await.unwrap());
    let port = fx.sandbox.smtp_addr().port();
    let token1 = token(&fx).await;
    let mut c = authed_session(&fx, &token1).await;
    for n in 0..2 {
        let body = format!("X-Test-Seq: {n}\r\n\r\nfirst run\r\n");
        let reply = send_message(&mut c, &["a@b.example"], body.as_bytes()).await;
        assert!(reply.starts_with("250 "), "{reply}");
    }
    let before = fx.sandbox.messages();
    assert_eq!(before.len(), 2);
    drop(c);
    fx.sandbox.shutdown().await;

    // Same directory and same SMTP port, as a relay configured for the first one expects.
    opts.smtp_port = port;
    let fx = fixture(Sandbox::start(opts).await.unwrap());
    assert_eq!(fx.sandbox.smtp_addr().port(), port);
    assert_eq!(fx.sandbox.message_count(), 2);
    let token2 = token(&fx).await;
    let mut c = authed_session(&fx, &token2).await;
    let reply = send_message(&mut c, &["a@b.example"], b"X-Test-Seq: 1\r\n\r\nagain\r\n").await;
    assert!(reply.starts_with("250 "), "{reply}");

    let after = fx.sandbox.messages();
    assert_eq!(after.len(), 3);
    assert_eq!(&after[..2], &before[..], "old messages first, unchanged");
    assert_eq!(after[2].data, b"X-Test-Seq: 1\r\n\r\nagain\r\n");
    assert_eq!(fx.sandbox.count_by_header("X-Test-Seq").get("1"), Some(&2));
    fx.sandbox.shutdown().await;
    drop(dir);
}

fn fixture(sandbox: Sandbox) -> Fixture {
    let roots = crate::tls::parse_pem_certificates(sandbox.ca_pem().as_bytes()).unwrap();
    let client = crate::tls::client_config(&roots).unwrap();
    Fixture {
        sandbox,
        client,
        // The store lives in the caller's directory; this one is only a placeholder.
        _dir: tempfile::tempdir().unwrap(),
    }
}

#[tokio::test]
async fn wait_for_messages_counts_without_reading_bodies() {
    let fx = start().await;
    let token = token(&fx).await;
    let mut c = authed_session(&fx, &token).await;
    let waiter = async {
        fx.sandbox
            .wait_for_messages(2, Duration::from_secs(10))
            .await
    };
    let sender = async {
        for _ in 0..2 {
            let reply = send_message(&mut c, &["a@b.example"], b"x\r\n").await;
            assert!(reply.starts_with("250 "), "{reply}");
        }
    };
    let (got, ()) = tokio::join!(waiter, sender);
    assert_eq!(got.len(), 2);
    fx.sandbox.shutdown().await;
}
