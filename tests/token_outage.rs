//! A token endpoint outage must not spend the mailbox's sending budget, and the client must
//! hear the real reason. Attempts that never reached Exchange (no token, no connection, TLS or
//! AUTH refused) give their governor permit back; a new message in hybrid mode is attempted
//! and queued "because the token endpoint cannot be reached", not "at its sending pace".
//!
//! The token endpoint sits behind a switchable TCP forwarder on loopback: while it is down,
//! every connection is closed at once (and live ones are cut), as a firewall or a dead proxy
//! would.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use smtp_oauth_relay::app::Relay;
use smtp_oauth_relay::spool::Area;
use support::{eventually, RawClient, World};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// A TCP forwarder to `target` that can be switched off.
struct Switch {
    addr: SocketAddr,
    up: watch::Sender<bool>,
}

impl Switch {
    async fn start(target: SocketAddr) -> Switch {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (up, rx) = watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !*rx.borrow() {
                    continue; // dropped: closed at once
                }
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Switch { addr, up }
    }

    fn set(&self, up: bool) {
        self.up.send_replace(up);
    }

    fn authority(&self) -> String {
        format!("https://{}", self.addr)
    }
}

async fn send_one(relay: &Relay, seq: usize) -> String {
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO app.example", 250).await;
    let body = format!("Subject: outage {seq}\r\n\r\nHello {seq}.\r\n");
    let reply = c
        .send_mail("app@example.com", &["someone@example.com"], body.as_bytes())
        .await;
    c.cmd("QUIT", 221).await;
    reply
}

const QUEUED: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_outage_spends_no_budget_and_the_client_hears_why() {
    let world = World::start().await;
    let switch = Switch::start(world.sandbox.token_addr()).await;
    let authority = switch.authority();

    // 1. A queue of 40 messages that no attempt has touched: the first relay's one attempt
    //    waits on a token request the sandbox holds, and its budget (1 a minute) keeps the
    //    others waiting until it stops.
    world.sandbox.hold_token_requests();
    let first = world
        .relay(&[
            ("SMTP_OAUTH_RELAY_MODE", "queue"),
            ("SMTP_OAUTH_RELAY_AUTHORITY", &authority),
            ("SMTP_OAUTH_RELAY_RATE_PER_MINUTE", "1"),
        ])
        .await;
    let spool = first.delivery().spool().clone();
    let mut c = RawClient::connect(first.local_addr()).await;
    c.cmd("EHLO app.example", 250).await;
    for seq in 0..QUEUED {
        let body = format!("Subject: queued {seq}\r\n\r\nHello {seq}.\r\n");
        let reply = c
            .send_mail("app@example.com", &["someone@example.com"], body.as_bytes())
            .await;
        assert!(reply.starts_with("250 "), "{reply}");
    }
    c.cmd("QUIT", 221).await;
    // Stopped with its one attempt still waiting for a token; then the endpoint goes away.
    // The attempt outlives the grace: wait until it has ended (and written its record), so
    // two relays never work on one spool at once.
    let first_delivery = first.delivery().clone();
    first.shutdown(Duration::from_millis(500)).await;
    switch.set(false);
    world.sandbox.release_token_requests();
    support::wait_until(
        "the first relay's attempt ends",
        Duration::from_secs(10),
        || first_delivery.attempts_running() == 0,
    )
    .await;
    // The held request is answered on release: under load the first relay's one attempt may
    // still get its token and deliver one message before the endpoint is really gone.
    let queued = spool.list(Area::Queue).unwrap().len();
    assert_eq!(queued + world.sandbox.messages().len(), QUEUED);
    assert!(queued >= QUEUED - 1, "at most the one attempt went out");
    // The first relay is gone: nothing of it may keep the spool (its log's lock goes with
    // its last handle, as it would with its process).
    drop(first_delivery);
    drop(spool);

    // 2. A relay resumes the queue with Exchange's 30 a minute while the endpoint is down.
    let relay = world
        .relay(&[
            ("SMTP_OAUTH_RELAY_AUTHORITY", &authority),
            ("SMTP_OAUTH_RELAY_RATE_PER_MINUTE", "30"),
        ])
        .await;
    let spool = relay.delivery().spool().clone();
    let attempted = || {
        spool
            .list(Area::Queue)
            .unwrap()
            .iter()
            .filter(|e| e.attempts >= 1)
            .count()
    };
    // Exchange's budget is 30 a minute: by now it would be spent if failures counted.
    assert!(
        eventually(Duration::from_secs(20), || attempted() >= 30).await,
        "the resumed queue is attempted: {} of {queued}",
        attempted()
    );

    // 3. A new message hears the real reason.
    let reply = send_one(&relay, 1).await;
    assert!(reply.starts_with("250 "), "{reply}");
    assert!(
        reply.contains("token endpoint") && !reply.contains("sending pace"),
        "the reason must be the token endpoint, not pacing: {reply}; governor {:?}",
        relay.delivery().governor().snapshot()
    );
    // More than 30 attempts in a minute are possible only if failures spend nothing.
    let all = eventually(Duration::from_secs(20), || attempted() > queued).await;
    assert!(
        all,
        "every resumed message (and the new one) is attempted at once: {} of {}; governor {:?}",
        attempted(),
        queued + 1,
        relay.delivery().governor().snapshot()
    );

    // 4. Nothing of the outage counts against the mailbox.
    let governor = relay.delivery().governor().clone();
    let whole = eventually(Duration::from_secs(10), || {
        let s = governor.snapshot();
        s.in_flight == 0 && s.sends_in_window == 0 && s.recipients_in_24h == 0
    })
    .await;
    assert!(whole, "budget spent by failures: {:?}", governor.snapshot());

    // 5. The endpoint returns: mail goes out at once, the budget whole.
    switch.set(true);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seq = 2;
    loop {
        let reply = send_one(&relay, seq).await;
        if reply.contains(" delivered") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no delivery after the endpoint returned: {reply}"
        );
        seq += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(relay.shutdown(Duration::from_secs(10)).await);
}
