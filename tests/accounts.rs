//! Many accounts end to end against the sandbox: two accounts with different credentials (a
//! client secret and a certificate), each delivering as its own mailbox with its own pacing;
//! a sender no route matches refused at `MAIL FROM`; and the From rewrite that lets a device
//! sending from any address through a mailbox Exchange checks SendAs rights for.

mod support;

use std::path::Path;
use std::time::Duration;

use smtp_oauth_relay::app::Relay;
use smtp_oauth_relay::config::{Config, ValidConfig};
use smtp_oauth_relay::sandbox::RegisteredCertificate;
use support::{http_get, wait_until, RawClient, World};

const ERP: &str = "erp@sandbox.example";
const SCANS: &str = "scans@sandbox.example";

/// A self-signed RSA certificate and its PKCS#8 key, registered on the sandbox's app.
fn certificate(world: &World) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let params = rcgen::CertificateParams::new(vec!["smtp-relay".into()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    world
        .sandbox
        .register_certificate(RegisteredCertificate::from_pem(&cert.pem()).unwrap());
    (cert.pem(), key.serialize_pem())
}

/// Two accounts of the sandbox's app: `erp` with the client secret (in a file) and one
/// message a minute, `scanners` with a certificate and no pacing; `extra` is appended.
fn two_accounts(world: &World, dir: &Path, erp_extra: &str, scans_extra: &str) -> String {
    let o = world.sandbox.options();
    let secret = dir.join("erp-secret");
    std::fs::write(&secret, format!("{}\n", world.secret())).unwrap();
    let (cert, key) = certificate(world);
    std::fs::write(dir.join("scans-cert.pem"), cert).unwrap();
    std::fs::write(dir.join("scans-key.pem"), key).unwrap();
    let authority = world.sandbox.authority();
    format!(
        r#"
[[account]]
name = "erp"
tenant = "{tenant}"
client_id = "{client}"
client_secret_file = "{secret}"
mailbox = "{ERP}"
authority = "{authority}"
rate_per_minute = 1
senders = ["@erp.example"]
{erp_extra}

[[account]]
name = "scanners"
tenant = "{tenant}"
client_id = "{client}"
client_certificate_file = "{dir}/scans-cert.pem"
client_key_file = "{dir}/scans-key.pem"
mailbox = "{SCANS}"
authority = "{authority}"
rate_per_minute = 0
{scans_extra}

[[route]]
senders = ["@printers.example"]
account = "scanners"
"#,
        tenant = o.tenant,
        client = o.client_id,
        secret = secret.display(),
        dir = dir.display(),
    )
}

/// The relay's configuration: `toml` for the accounts, the world's environment for the rest
/// (listener, admin port, spool, trusted CA, upstream), without its single-account keys.
fn config(world: &World, toml: &str) -> ValidConfig {
    let path = world.dir.path().join("relay.toml");
    std::fs::write(&path, toml).unwrap();
    let env: Vec<(String, String)> = world
        .env()
        .into_iter()
        .filter(|(k, _)| {
            [
                "SMTP_OAUTH_RELAY_LISTEN",
                "SMTP_OAUTH_RELAY_ADMIN_LISTEN",
                "SMTP_OAUTH_RELAY_UPSTREAM",
                "SMTP_OAUTH_RELAY_EXTRA_CA_FILE",
                "SMTP_OAUTH_RELAY_SPOOL_DIR",
            ]
            .contains(&k.as_str())
        })
        .collect();
    Config::load(Some(&path), &env)
        .expect("config loads")
        .validate()
        .expect("config validates")
}

fn message(from_header: &str, n: u32) -> Vec<u8> {
    format!(
        "From: {from_header}\r\nTo: desk@sandbox.example\r\nMessage-ID: <acct-{n}@example.com>\r\nSubject: {n}\r\n\r\nbody {n}\r\n"
    )
    .into_bytes()
}

async fn send(relay: &Relay, from: &str, from_header: &str, n: u32) -> String {
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO app", 250).await;
    let r = c
        .send_mail(from, &["desk@sandbox.example"], &message(from_header, n))
        .await;
    c.cmd("QUIT", 221).await;
    r
}

#[tokio::test]
async fn two_accounts_with_different_credentials_send_as_their_own_mailboxes_with_their_own_pacing()
{
    let world = World::start_with(|o| o.mailboxes = vec![ERP.into(), SCANS.into()]).await;
    let dir = world.dir.path().to_path_buf();
    let config = config(&world, &two_accounts(&world, &dir, "", ""));
    assert_eq!(config.lanes.len(), 2);
    let relay = Relay::start(config).await.expect("relay starts");

    // Two messages for each account. erp may send one a minute: its second waits in the
    // queue. The scanners' mailbox is paced on its own and sends both at once.
    for n in 0..2 {
        let r = send(&relay, "clerk@erp.example", "clerk@erp.example", n).await;
        assert!(r.starts_with("250"), "erp {n}: {r}");
        let r = send(
            &relay,
            "scan@printers.example",
            "scan@printers.example",
            10 + n,
        )
        .await;
        assert!(r.starts_with("250"), "scanners {n}: {r}");
    }
    let stored = world
        .sandbox
        .wait_for_messages(3, Duration::from_secs(10))
        .await;
    let by = |mailbox: &str| {
        stored
            .iter()
            .filter(|m| m.envelope.auth_user == mailbox)
            .count()
    };
    assert_eq!((by(ERP), by(SCANS)), (1, 2), "{stored:?}");
    for m in &stored {
        assert_eq!(
            m.envelope.mail_from, m.envelope.auth_user,
            "each goes out as its own mailbox"
        );
    }
    let lanes = relay.lanes().all();
    assert_eq!(lanes[0].upstream().mailbox(), ERP);
    assert_eq!(
        lanes[0].queued(),
        1,
        "erp's second message waits for its pace"
    );
    assert_eq!(lanes[1].queued(), 0);
    assert_eq!(world.sandbox.message_count(), 3);
    // The certificate account really signed assertions; the secret account used its secret.
    assert!(!world.sandbox.accepted_assertions().is_empty());

    // /readyz names each account's token and each mailbox.
    let admin = relay.admin_addr().unwrap();
    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    for line in [
        "token (erp): valid",
        "token (scanners): valid",
        "mailbox erp@sandbox.example: not held",
        "mailbox scans@sandbox.example: not held",
    ] {
        assert!(body.contains(line), "{line}: {body}");
    }
    let (_, metrics) = http_get(admin, "/metrics").await;
    for line in [
        "smtp_oauth_relay_governor_recipients_24h{mailbox=\"scans@sandbox.example\"} 2",
        "smtp_oauth_relay_governor_recipients_24h{mailbox=\"erp@sandbox.example\"} 1",
    ] {
        assert!(metrics.contains(line), "{line}: {metrics}");
    }
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_sender_no_route_matches_is_refused_at_mail_from() {
    let world = World::start_with(|o| o.mailboxes = vec![ERP.into(), SCANS.into()]).await;
    let dir = world.dir.path().to_path_buf();
    let relay = Relay::start(config(&world, &two_accounts(&world, &dir, "", "")))
        .await
        .expect("relay starts");
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO app", 250).await;
    let refused = c.cmd("MAIL FROM:<someone@elsewhere.example>", 550).await;
    assert!(refused.starts_with("550 5.7.1 "), "{refused}");
    assert!(refused.contains("someone@elsewhere.example"), "{refused}");
    assert!(refused.contains("[[route]]"), "{refused}");
    // The transaction did not start: a recipient now is out of sequence.
    c.cmd("RCPT TO:<desk@sandbox.example>", 503).await;
    // The null sender matches no route either (no `*`).
    c.cmd("MAIL FROM:<>", 550).await;
    // A routed sender on the same connection still works.
    let r = c
        .send_mail(
            "a@printers.example",
            &["desk@sandbox.example"],
            &message("a@printers.example", 1),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT", 221).await;
    let stored = world
        .sandbox
        .wait_for_messages(1, Duration::from_secs(10))
        .await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].envelope.auth_user, SCANS);
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn from_rewrite_sends_a_device_as_the_mailbox_and_keeps_the_original_in_reply_to() {
    // Exchange checks SendAs: a From: the mailbox has no rights on is refused.
    let world = World::start_with(|o| {
        o.mailboxes = vec![ERP.into(), SCANS.into()];
        o.enforce_send_as = true;
        o.send_as = vec![(SCANS.into(), "helpdesk@sandbox.example".into())];
    })
    .await;
    let dir = world.dir.path().to_path_buf();
    let toml = two_accounts(
        &world,
        &dir,
        "rate_per_minute = 0",
        "from_rewrite = \"when-not-allowed\"\nsend_as = [\"helpdesk@sandbox.example\"]",
    )
    .replace("rate_per_minute = 1\n", "");
    let relay = Relay::start(config(&world, &toml))
        .await
        .expect("relay starts");

    // erp does not rewrite: its app's own From: is refused by Exchange, and the app hears it.
    let r = send(&relay, "clerk@erp.example", "clerk@erp.example", 1).await;
    assert!(r.starts_with("554 5.2.252"), "{r}");

    // The scanners' account rewrites a From: it may not send as.
    let r = send(
        &relay,
        "scan3@printers.example",
        "\"Scanner 3\" <scan3@printers.example>",
        2,
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    // An address it may send as is left alone.
    let r = send(&relay, "x@printers.example", "helpdesk@sandbox.example", 3).await;
    assert!(r.starts_with("250"), "{r}");
    let stored = world
        .sandbox
        .wait_for_messages(2, Duration::from_secs(10))
        .await;
    let text = |n: u32| {
        let m = stored
            .iter()
            .find(|m| String::from_utf8_lossy(&m.data).contains(&format!("Subject: {n}\r\n")))
            .unwrap_or_else(|| panic!("message {n} stored: {stored:?}"));
        (
            m.envelope.mail_from.clone(),
            String::from_utf8_lossy(&m.data).to_string(),
        )
    };
    let (mail_from, data) = text(2);
    assert_eq!(mail_from, SCANS);
    assert!(
        data.contains("\r\nFrom: \"Scanner 3\" <scans@sandbox.example>\r\n"),
        "{data}"
    );
    assert!(
        data.contains("\r\nReply-To: \"Scanner 3\" <scan3@printers.example>\r\n"),
        "{data}"
    );
    assert!(
        data.ends_with("\r\n\r\nbody 2\r\n"),
        "the body is untouched: {data}"
    );
    let (_, data) = text(3);
    assert!(
        data.contains("\r\nFrom: helpdesk@sandbox.example\r\n"),
        "{data}"
    );
    assert!(!data.contains("Reply-To:"), "{data}");
    wait_until("nothing left queued", Duration::from_secs(5), || {
        relay.lanes().all().iter().all(|l| l.queued() == 0)
    })
    .await;
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn queue_retry_reaches_the_lane_that_owns_the_message() {
    use smtp_oauth_relay::sandbox::SmtpOutage;
    use smtp_oauth_relay::spool::Area;
    let world = World::start_with(|o| o.mailboxes = vec![ERP.into(), SCANS.into()]).await;
    let dir = world.dir.path().to_path_buf();
    let toml = format!(
        "[delivery]\nmode = \"queue\"\n{}",
        two_accounts(&world, &dir, "", "")
    );
    let relay = Relay::start(config(&world, &toml))
        .await
        .expect("relay starts");
    world.sandbox.set_smtp_outage(Some(SmtpOutage::Refuse));
    let r = send(&relay, "scan@printers.example", "scan@printers.example", 7).await;
    assert!(r.starts_with("250"), "queued: {r}");
    let spool = relay.delivery().spool().clone();
    let tried = |spool: &smtp_oauth_relay::spool::Spool| {
        spool
            .list(Area::Queue)
            .unwrap()
            .first()
            .map(|e| (e.id.clone(), e.attempts))
    };
    wait_until(
        "the scanners' lane tried once",
        Duration::from_secs(10),
        || tried(&spool).is_some_and(|(_, n)| n >= 1),
    )
    .await;
    let (id, _) = tried(&spool).unwrap();
    world.sandbox.set_smtp_outage(None);
    // What `queue retry ID` does: due now, and a rescan request for the running relay. The
    // first lane's loop may take the request; the scanners' lane must still re-read.
    assert!(spool.retry(&id).unwrap());
    let stored = world
        .sandbox
        .wait_for_messages(1, Duration::from_secs(20))
        .await;
    assert_eq!(stored.len(), 1, "delivered after the retry");
    assert_eq!(stored[0].envelope.auth_user, SCANS);
    relay.shutdown(Duration::from_secs(5)).await;
}
