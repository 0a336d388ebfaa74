//! Compatibility suite: real legacy clients replayed against an in-process relay and sandbox,
//! beyond the basic sends of `third_party_clients.rs`: Python `smtplib` (Bcc-only, no `To:`,
//! a recipient list, bare LF, SMTPUTF8), `curl` with several recipients, `swaks` (HELO,
//! PIPELINING, QUIT early), `lettre` with a multipart message, `msmtp -t`, and the byte-level
//! dialogs of multifunction printers and scanners.
//!
//! Every case checks what reached the sandbox's store, not an exit code: the envelope and the
//! message after the relay's `Received:` header, byte for byte wherever the client's exact
//! bytes are known. The relay runs with `account.envelope_sender = "client"`, so the store's
//! `MAIL FROM` is the sender the relay read from the client (with the default, `mailbox`, it
//! would always be the mailbox and prove nothing about the client's dialog).
//!
//! Layout: one small driver per client (`python`, `curl`, `swaks`, `msmtp`, `replay` for byte
//! scripts; lettre runs in-process) and one test per case, so a new client is a driver plus a
//! few cases. A missing tool skips its test with a message, unless `COMPAT_REQUIRE_TOOLS` is
//! set (`.ci/run` sets it): then it fails (`support/tools.rs`).
//!
//! Every dialog here is one a real client sends; none is ignored.

mod support;
#[path = "support/tools.rs"]
mod tools;

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Attachment, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use smtp_oauth_relay::app::Relay;
use smtp_oauth_relay::sandbox::StoredMessage;
use support::{strip_received, RawClient, World, MAILBOX};
use tools::{
    contains, decode_base64, exactly, run_tool, run_tool_with_stdin, tool_available, ToolOutput,
};

/// The sender every client here uses (a printer's or an app's own address).
const SENDER: &str = "app@example.com";

/// How long a byte script waits for one reply. Only a failing case waits that long.
const REPLY_LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// The relay and what the store must hold
// ---------------------------------------------------------------------------------------

/// A sandbox and a relay that passes the client's `MAIL FROM` upstream unchanged and keeps
/// its `Received:` header (which tells HELO from EHLO: `with SMTP` / `with ESMTP`). The
/// sandbox's mailbox has SendAs rights for the senders' domains used here, as a tenant that
/// lets devices send as their own addresses would grant.
async fn start() -> (World, Relay) {
    let world = World::start_with(|o| {
        o.enforce_send_as = true;
        o.send_as = ["@example.com", "@printers.example", "@bücher.example"]
            .iter()
            .map(|domain| (MAILBOX.to_string(), domain.to_string()))
            .collect();
    })
    .await;
    // Byte-exact checks: the Date and Message-ID the relay adds when missing are switched
    // off here (tests/missing_headers.rs covers them).
    let relay = world
        .relay(&[
            ("SMTP_OAUTH_RELAY__ACCOUNT__ENVELOPE_SENDER", "client"),
            ("SMTP_OAUTH_RELAY__DELIVERY__ADD_MISSING_HEADERS", "false"),
        ])
        .await;
    (world, relay)
}

/// What one stored message must be.
struct Expect<'a> {
    mail_from: &'a str,
    rcpt_to: &'a [&'a str],
    /// The message after the relay's `Received:` header, exactly.
    data: &'a [u8],
    /// The protocol the `Received:` header names: `SMTP` (HELO), `ESMTP` (EHLO) or
    /// `UTF8SMTP` (SMTPUTF8).
    protocol: &'a str,
}

fn assert_stored(m: &StoredMessage, want: &Expect) {
    assert_eq!(m.envelope.mail_from, want.mail_from, "stored MAIL FROM");
    assert_eq!(
        m.envelope.rcpt_to, want.rcpt_to,
        "stored RCPT TOs, in order"
    );
    let data = strip_received(&m.data);
    let received = String::from_utf8_lossy(&m.data[..m.data.len() - data.len()]);
    assert!(
        received.contains(&format!(" with {} id ", want.protocol)),
        "the Received header must say `with {}`: {received}",
        want.protocol
    );
    assert_eq!(
        String::from_utf8_lossy(data),
        String::from_utf8_lossy(want.data),
        "stored message differs from what the client sent"
    );
    assert_eq!(data, want.data);
}

/// `text` with every LF turned into CRLF (the message files below are written with LF, as a
/// user writes them; the clients put CRLF on the wire).
fn crlf(text: &str) -> Vec<u8> {
    text.replace('\n', "\r\n").into_bytes()
}

// ---------------------------------------------------------------------------------------
// Python smtplib
// ---------------------------------------------------------------------------------------

/// One smtplib session per case (argv: case, host, port). Prints JSON: `sent`, base64 of
/// each message smtplib handed to `SMTP.data` (its bytes before dot-stuffing: what must be
/// stored), and `refused`, the recipients smtplib reports refused, with their codes.
const PYTHON_DRIVER: &str = r#"
import base64, json, smtplib, sys
from email.message import EmailMessage

case, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
sent = []

class Recording(smtplib.SMTP):
    def data(self, msg):
        sent.append(bytes(msg))
        return super().data(msg)

def message(headers, body):
    msg = EmailMessage()
    for name, value in headers:
        msg[name] = value
    msg.set_content(body)
    return msg

LIST_BODY = (b"From: app@example.com\r\nSubject: one copy each\r\n"
             b"Message-ID: <list@compat.test>\r\n\r\n"
             b"One copy for each.\r\n.a line with a leading dot\r\nend\r\n")

with Recording(host, port, timeout=30) as s:
    s.ehlo()
    if case == "bcc-only":
        refused = s.send_message(message([
            ("From", "App <app@example.com>"),
            ("Bcc", "Hidden <hidden@example.com>, other@example.org"),
            ("Subject", "nobody in To or Cc"),
            ("Message-ID", "<bcc-only@compat.test>"),
        ], "Only blind copies.\n"))
    elif case == "no-to":
        refused = s.send_message(message([
            ("From", "App <app@example.com>"),
            ("Cc", "Carol <carol@example.com>"),
            ("Subject", "no To header"),
            ("Message-ID", "<no-to@compat.test>"),
        ], "Cc only.\n"))
    elif case == "sendmail-list":
        refused = s.sendmail("app@example.com",
            ["a@example.com", "b@example.net", "c@example.org"], LIST_BODY)
    elif case == "refused-recipient":
        refused = s.sendmail("app@example.com",
            ["a@example.com", "x@bad..example", "c@example.org"], LIST_BODY)
    elif case == "bare-lf":
        refused = s.sendmail("app@example.com", ["lf@example.com"],
            b"From: app@example.com\nTo: lf@example.com\nSubject: bare LF\n\nline one\nline two\n")
    elif case == "smtputf8":
        if not s.has_extn("smtputf8"):
            sys.exit("the relay does not offer SMTPUTF8")
        refused = s.send_message(message([
            ("From", "J\u00f6rg <j\u00f6rg@b\u00fccher.example>"),
            ("To", "\u7528\u6237@\u4f8b\u5b50.example"),
            ("Subject", "Gr\u00fc\u00dfe \u2713"),
            ("Message-ID", "<utf8@compat.test>"),
        ], "\u00c4rger \u00fcber \u00d6l \u2014 \u4fa1\u683c\n"))
    else:
        sys.exit("unknown case " + case)

print(json.dumps({
    "sent": [base64.b64encode(m).decode() for m in sent],
    "refused": {rcpt: code for rcpt, (code, _) in refused.items()},
}))
"#;

/// What one smtplib run did.
struct PythonRun {
    /// The messages smtplib handed to `SMTP.data`, before dot-stuffing.
    sent: Vec<Vec<u8>>,
    /// Refused recipients and their reply codes, as smtplib reports them.
    refused: serde_json::Map<String, serde_json::Value>,
}

/// Runs [`PYTHON_DRIVER`] with `case` against `relay`; `None` if python3 is absent.
async fn python(world: &World, relay: &Relay, case: &str) -> Option<PythonRun> {
    if !tool_available("python3") {
        return None;
    }
    let addr = relay.local_addr();
    let (host, port) = (addr.ip().to_string(), addr.port().to_string());
    let out = run_tool(
        "python3",
        &["-c", PYTHON_DRIVER, case, &host, &port],
        world.dir.path(),
    )
    .await;
    out.assert_success(&format!("python3 smtplib ({case})"));
    let json: serde_json::Value =
        serde_json::from_str(out.stdout.trim()).expect("the driver prints JSON");
    let sent = json["sent"]
        .as_array()
        .expect("sent")
        .iter()
        .map(|m| decode_base64(m.as_str().expect("base64 text")))
        .collect();
    let refused = json["refused"].as_object().expect("refused").clone();
    Some(PythonRun { sent, refused })
}

/// The one message smtplib sent, as the store must hold it: smtplib adds a CRLF to a message
/// that does not end with one (`SMTP.data`).
fn only_sent(run: &PythonRun) -> Vec<u8> {
    assert_eq!(run.sent.len(), 1, "smtplib sent one message");
    let mut m = run.sent[0].clone();
    if !m.ends_with(b"\r\n") {
        m.extend_from_slice(b"\r\n");
    }
    m
}

#[tokio::test]
async fn python_send_message_bcc_only() {
    let (world, relay) = start().await;
    let Some(run) = python(&world, &relay, "bcc-only").await else {
        return;
    };
    assert!(run.refused.is_empty(), "{:?}", run.refused);
    let sent = only_sent(&run);
    // smtplib takes the recipients from Bcc and leaves the header out of what it sends.
    assert!(!contains(&sent, b"Bcc:") && !contains(&sent, b"hidden@"));
    let stored = exactly(&world, relay, 1).await;
    assert_stored(
        &stored[0],
        &Expect {
            mail_from: SENDER,
            rcpt_to: &["hidden@example.com", "other@example.org"],
            data: &sent,
            protocol: "ESMTP",
        },
    );
}

#[tokio::test]
async fn python_send_message_without_to_header() {
    let (world, relay) = start().await;
    let Some(run) = python(&world, &relay, "no-to").await else {
        return;
    };
    assert!(run.refused.is_empty(), "{:?}", run.refused);
    let sent = only_sent(&run);
    assert!(contains(&sent, b"\r\nCc: Carol <carol@example.com>\r\n"));
    let stored = exactly(&world, relay, 1).await;
    // The relay adds no To: of its own.
    assert!(!contains(strip_received(&stored[0].data), b"\r\nTo:"));
    assert_stored(
        &stored[0],
        &Expect {
            mail_from: SENDER,
            rcpt_to: &["carol@example.com"],
            data: &sent,
            protocol: "ESMTP",
        },
    );
}

#[tokio::test]
async fn python_sendmail_with_a_list_of_recipients() {
    let (world, relay) = start().await;
    let Some(run) = python(&world, &relay, "sendmail-list").await else {
        return;
    };
    assert!(run.refused.is_empty(), "{:?}", run.refused);
    let stored = exactly(&world, relay, 1).await;
    assert_stored(
        &stored[0],
        &Expect {
            mail_from: SENDER,
            rcpt_to: &["a@example.com", "b@example.net", "c@example.org"],
            data: b"From: app@example.com\r\nSubject: one copy each\r\n\
Message-ID: <list@compat.test>\r\n\r\n\
One copy for each.\r\n.a line with a leading dot\r\nend\r\n",
            protocol: "ESMTP",
        },
    );
}

/// Failure path: one bad address among three. smtplib reports it refused (5xx) and the
/// message still goes to the other two, once.
#[tokio::test]
async fn python_sendmail_one_refused_recipient_is_reported_and_the_rest_delivered() {
    let (world, relay) = start().await;
    let Some(run) = python(&world, &relay, "refused-recipient").await else {
        return;
    };
    assert_eq!(run.refused.len(), 1, "{:?}", run.refused);
    let code = run.refused["x@bad..example"].as_u64().expect("a code");
    assert!((500..600).contains(&code), "a permanent refusal: {code}");
    let stored = exactly(&world, relay, 1).await;
    assert_eq!(
        stored[0].envelope.rcpt_to,
        ["a@example.com", "c@example.org"]
    );
    assert!(contains(
        strip_received(&stored[0].data),
        b"\r\n.a line with a leading dot\r\n"
    ));
}

/// A Unix-built message with LF-only lines, handed to smtplib as bytes (which it sends as
/// they are): every bare LF arrives as CRLF. smtplib ends the data with CRLF after the last
/// bare LF, which is one more (empty) line.
#[tokio::test]
async fn python_sendmail_bare_lf_lines_arrive_as_crlf() {
    let (world, relay) = start().await;
    let Some(run) = python(&world, &relay, "bare-lf").await else {
        return;
    };
    assert!(run.refused.is_empty(), "{:?}", run.refused);
    assert!(!contains(&run.sent[0], b"\r"), "smtplib passed the LFs on");
    let stored = exactly(&world, relay, 1).await;
    assert_stored(
        &stored[0],
        &Expect {
            mail_from: SENDER,
            rcpt_to: &["lf@example.com"],
            data: b"From: app@example.com\r\nTo: lf@example.com\r\nSubject: bare LF\r\n\r\n\
line one\r\nline two\r\n\r\n",
            protocol: "ESMTP",
        },
    );
}

/// Non-ASCII addresses: smtplib checks that SMTPUTF8 is offered, says `SMTPUTF8
/// BODY=8BITMIME` on MAIL FROM and sends the 8-bit UTF-8 message unencoded.
#[tokio::test]
async fn python_send_message_smtputf8_with_an_8bit_body() {
    let (world, relay) = start().await;
    let Some(run) = python(&world, &relay, "smtputf8").await else {
        return;
    };
    assert!(run.refused.is_empty(), "{:?}", run.refused);
    let sent = only_sent(&run);
    assert!(contains(
        &sent,
        "From: Jörg <jörg@bücher.example>".as_bytes()
    ));
    assert!(contains(&sent, "Ärger über Öl — 価格".as_bytes()));
    assert!(contains(&sent, b"Content-Transfer-Encoding: 8bit\r\n"));
    let stored = exactly(&world, relay, 1).await;
    assert_stored(
        &stored[0],
        &Expect {
            mail_from: "jörg@bücher.example",
            rcpt_to: &["用户@例子.example"],
            data: &sent,
            protocol: "UTF8SMTP",
        },
    );
}

// ---------------------------------------------------------------------------------------
// curl
// ---------------------------------------------------------------------------------------

/// `curl smtp://relay --mail-from FROM --mail-rcpt R ... --upload-file message` plus `extra`.
/// `None` if curl is absent.
async fn curl(
    world: &World,
    relay: &Relay,
    rcpts: &[&str],
    message: &[u8],
    extra: &[&str],
) -> Option<ToolOutput> {
    if !tool_available("curl") {
        return None;
    }
    let file = world.dir.path().join("curl-message.eml");
    std::fs::write(&file, message).expect("write the message file");
    let url = format!("smtp://{}", relay.local_addr());
    let file = file.display().to_string();
    let mut args = vec![
        "--silent",
        "--show-error",
        "--max-time",
        "30",
        "--url",
        &url,
        "--mail-from",
        SENDER,
    ];
    for r in rcpts {
        args.extend(["--mail-rcpt", r]);
    }
    args.extend(["--upload-file", &file]);
    args.extend(extra);
    Some(run_tool("curl", &args, world.dir.path()).await)
}

const CURL_MESSAGE: &[u8] = b"From: app@example.com\r\n\
To: a@example.com, b@example.net\r\n\
Subject: curl to several recipients\r\n\
Message-ID: <curl-many@compat.test>\r\n\
\r\n\
One upload, three recipients.\r\n\
.leading dot\r\n\
last line\r\n";

#[tokio::test]
async fn curl_mail_rcpt_several_times() {
    let (world, relay) = start().await;
    let rcpts = ["a@example.com", "b@example.net", "hidden@example.org"];
    let Some(out) = curl(&world, &relay, &rcpts, CURL_MESSAGE, &[]).await else {
        return;
    };
    out.assert_success("curl --mail-rcpt x3");
    let stored = exactly(&world, relay, 1).await;
    assert_stored(
        &stored[0],
        &Expect {
            mail_from: SENDER,
            rcpt_to: &rcpts,
            data: CURL_MESSAGE,
            protocol: "ESMTP",
        },
    );
}

/// Failure path: curl gives up on the first refused recipient, says so, and nothing is
/// delivered to anyone.
#[tokio::test]
async fn curl_refused_recipient_fails_the_upload_and_delivers_nothing() {
    let (world, relay) = start().await;
    let rcpts = ["a@example.com", "x@bad..example", "c@example.org"];
    let Some(out) = curl(&world, &relay, &rcpts, CURL_MESSAGE, &[]).await else {
        return;
    };
    assert!(!out.status.success(), "curl must fail: {}", out.stdout);
    assert!(
        out.stderr.contains("(55) RCPT failed: 5"),
        "curl names the refused RCPT: {}",
        out.stderr
    );
    exactly(&world, relay, 0).await;
}

// ---------------------------------------------------------------------------------------
// swaks
// ---------------------------------------------------------------------------------------

/// `swaks --server relay --timeout 30 --from SENDER --data @FILE` plus `args`, with
/// `message` (LF lines, as a user writes the file) as the whole DATA. `None` if absent.
/// swaks sends the file's lines with CRLF and then CRLF . CRLF, so a file that ends with a
/// newline arrives with one empty line more ([`swaks_stored`]).
async fn swaks(world: &World, relay: &Relay, message: &str, args: &[&str]) -> Option<ToolOutput> {
    if !tool_available("swaks") {
        return None;
    }
    let file = world.dir.path().join("swaks-message.eml");
    std::fs::write(&file, message).expect("write the message file");
    let server = relay.local_addr().to_string();
    let data = format!("@{}", file.display());
    let mut all = vec![
        "--server",
        &server,
        "--timeout",
        "30",
        "--from",
        SENDER,
        "--data",
        &data,
    ];
    all.extend(args);
    Some(run_tool("swaks", &all, world.dir.path()).await)
}

const SWAKS_MESSAGE: &str = "From: app@example.com\n\
To: helo@example.com\n\
Subject: swaks\n\
Message-ID: <swaks@compat.test>\n\
\n\
Sent by swaks.\n\
.leading dot\n";

/// What the store must hold after swaks sent `message` as its DATA.
fn swaks_stored(message: &str) -> Vec<u8> {
    let mut data = crlf(message);
    data.extend_from_slice(b"\r\n");
    data
}

/// `--protocol SMTP`: HELO, never EHLO, as the oldest clients do.
#[tokio::test]
async fn swaks_helo_instead_of_ehlo() {
    let (world, relay) = start().await;
    let args = ["--protocol", "SMTP", "--to", "helo@example.com"];
    let Some(out) = swaks(&world, &relay, SWAKS_MESSAGE, &args).await else {
        return;
    };
    out.assert_success("swaks --protocol SMTP");
    assert!(out.stdout.contains("-> HELO "), "{}", out.stdout);
    assert!(!out.stdout.contains("-> EHLO "), "{}", out.stdout);
    let stored = exactly(&world, relay, 1).await;
    assert_stored(
        &stored[0],
        &Expect {
            mail_from: SENDER,
            rcpt_to: &["helo@example.com"],
            data: &swaks_stored(SWAKS_MESSAGE),
            protocol: "SMTP",
        },
    );
}

/// `--pipeline`: MAIL, every RCPT and DATA in one write (RFC 2920).
#[tokio::test]
async fn swaks_pipelined_session() {
    let (world, relay) = start().await;
    let args = [
        "--pipeline",
        "--to",
        "helo@example.com,b@example.net,c@example.org",
    ];
    let Some(out) = swaks(&world, &relay, SWAKS_MESSAGE, &args).await else {
        return;
    };
    out.assert_success("swaks --pipeline");
    // swaks pipelines only if PIPELINING is offered: then DATA goes out before the first
    // reply to MAIL FROM comes back.
    let data_sent = out.stdout.find(" -> DATA").expect("swaks sent DATA");
    let mail_answered = out
        .stdout
        .find("<-  250 2.1.0")
        .expect("MAIL FROM answered");
    assert!(
        data_sent < mail_answered,
        "the envelope was not pipelined:\n{}",
        out.stdout
    );
    let stored = exactly(&world, relay, 1).await;
    assert_stored(
        &stored[0],
        &Expect {
            mail_from: SENDER,
            rcpt_to: &["helo@example.com", "b@example.net", "c@example.org"],
            data: &swaks_stored(SWAKS_MESSAGE),
            protocol: "ESMTP",
        },
    );
}

/// `--quit-after RCPT`: an address check that says QUIT before DATA. Nothing may be
/// delivered, and the relay ends the session cleanly.
#[tokio::test]
async fn swaks_quit_after_rcpt_delivers_nothing() {
    let (world, relay) = start().await;
    let args = ["--quit-after", "RCPT", "--to", "helo@example.com"];
    let Some(out) = swaks(&world, &relay, SWAKS_MESSAGE, &args).await else {
        return;
    };
    out.assert_success("swaks --quit-after RCPT");
    assert!(out.stdout.contains("<-  250"), "{}", out.stdout);
    assert!(out.stdout.contains("<-  221"), "{}", out.stdout);
    assert!(!out.stdout.contains("-> DATA"), "{}", out.stdout);
    exactly(&world, relay, 0).await;
}

// ---------------------------------------------------------------------------------------
// lettre (in-process)
// ---------------------------------------------------------------------------------------

/// A multipart/mixed message (text and HTML alternatives plus a binary attachment) with a
/// Bcc: lettre builds the envelope from To, Cc and Bcc and leaves Bcc out of the message.
#[tokio::test]
async fn lettre_multipart_with_attachment_and_bcc() {
    let (world, relay) = start().await;
    let addr = relay.local_addr();
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .build();
    let pdf: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let email = Message::builder()
        .from("App <app@example.com>".parse().unwrap())
        .to("Someone <someone@example.com>".parse().unwrap())
        .cc("copy@example.net".parse().unwrap())
        .bcc("archive@example.org".parse().unwrap())
        .subject("Invoice 42")
        .message_id(Some("<lettre-multipart@compat.test>".into()))
        .multipart(
            MultiPart::mixed()
                .multipart(
                    MultiPart::alternative()
                        .singlepart(SinglePart::plain(String::from(
                            "Invoice attached.\n.dot line\n",
                        )))
                        .singlepart(SinglePart::html(String::from(
                            "<p>Invoice <b>attached</b>.</p>",
                        ))),
                )
                .singlepart(
                    Attachment::new("invoice.pdf".into())
                        .body(pdf, ContentType::parse("application/pdf").unwrap()),
                ),
        )
        .unwrap();
    let formatted = email.formatted();
    assert!(!contains(&formatted, b"archive@"), "lettre drops Bcc");
    // lettre appends CRLF . CRLF to its formatted message, which already ends with CRLF (the
    // closing boundary's): on the wire, and so in the store, one empty line more.
    assert!(formatted.ends_with(b"--\r\n"));
    let mut expected = formatted.clone();
    expected.extend_from_slice(b"\r\n");
    let response = mailer.send(email).await.expect("relay accepts");
    assert_eq!(response.code().to_string(), "250");
    let stored = exactly(&world, relay, 1).await;
    let data = strip_received(&stored[0].data);
    assert!(contains(data, b"Content-Type: multipart/alternative;"));
    assert!(contains(data, b"filename=\"invoice.pdf\""));
    assert_stored(
        &stored[0],
        &Expect {
            mail_from: SENDER,
            rcpt_to: &[
                "someone@example.com",
                "copy@example.net",
                "archive@example.org",
            ],
            data: &expected,
            protocol: "ESMTP",
        },
    );
}

// ---------------------------------------------------------------------------------------
// msmtp
// ---------------------------------------------------------------------------------------

/// `msmtp -C FILE -t < message` with its own config (127.0.0.1, the relay's port, no auth,
/// no TLS). `None` if msmtp is absent.
async fn msmtp(world: &World, relay: &Relay, message: &str) -> Option<ToolOutput> {
    if !tool_available("msmtp") {
        return None;
    }
    let dir = world.dir.path().join("msmtp");
    std::fs::create_dir_all(&dir).expect("msmtp dir");
    let config = dir.join("msmtprc");
    std::fs::write(
        &config,
        format!(
            "defaults\nauth off\ntls off\ntimeout 30\n\n\
             account default\nhost 127.0.0.1\nport {}\nfrom {SENDER}\n",
            relay.local_addr().port()
        ),
    )
    .expect("write msmtprc");
    let input = dir.join("message.eml");
    std::fs::write(&input, message).expect("write the message");
    let config = config.display().to_string();
    Some(run_tool_with_stdin("msmtp", &["-C", &config, "-t"], Some(&input), &dir).await)
}

#[tokio::test]
async fn msmtp_reads_recipients_from_the_headers() {
    let (world, relay) = start().await;
    let message = "From: App <app@example.com>\n\
To: Alice <alice@example.com>\n\
Cc: bob@example.net\n\
Bcc: audit@example.org\n\
Subject: msmtp -t\n\
Date: Mon, 07 Dec 2026 10:00:00 +0000\n\
Message-ID: <msmtp@compat.test>\n\
\n\
Sent by msmtp.\n\
.leading dot\n\
end\n";
    let Some(out) = msmtp(&world, &relay, message).await else {
        return;
    };
    out.assert_success("msmtp -t");
    let stored = exactly(&world, relay, 1).await;
    // msmtp sends CRLF lines and removes the Bcc header; nothing else changes.
    let expected = crlf(&message.replace("Bcc: audit@example.org\n", ""));
    assert_stored(
        &stored[0],
        &Expect {
            mail_from: SENDER,
            rcpt_to: &["alice@example.com", "bob@example.net", "audit@example.org"],
            data: &expected,
            protocol: "ESMTP",
        },
    );
}

/// Failure path: a recipient the relay refuses makes msmtp fail with a message naming it,
/// and nothing is delivered.
#[tokio::test]
async fn msmtp_refused_recipient_fails_and_delivers_nothing() {
    let (world, relay) = start().await;
    let message = "From: app@example.com\nTo: a@example.com, x@bad..example\n\
Subject: one bad\n\nbody\n";
    let Some(out) = msmtp(&world, &relay, message).await else {
        return;
    };
    assert!(!out.status.success(), "msmtp must fail: {}", out.stdout);
    assert!(
        out.stderr.contains("x@bad..example not accepted"),
        "msmtp names the refused recipient: {}",
        out.stderr
    );
    exactly(&world, relay, 0).await;
}

// ---------------------------------------------------------------------------------------
// Multifunction printers and scanners: byte scripts
// ---------------------------------------------------------------------------------------

/// One step of a byte-level dialog.
#[derive(Clone, Copy)]
enum Step {
    /// The client writes these bytes, exactly.
    Client(&'static [u8]),
    /// The server's next reply; it must start with this code.
    Server(&'static str),
    /// The server closes the connection after its last reply.
    ServerCloses,
    /// The client drops the connection now, reading nothing more.
    HangUp,
}
use Step::{Client, HangUp, Server, ServerCloses};

/// The scanner's message, as the store must hold it.
const SCAN: &[u8] = b"From: scanner@printers.example\r\nSubject: Scan 0001\r\n\r\n\
Scanned page attached.\r\n";

/// Plays `script` against a fresh relay after its 220 greeting; each reply within
/// [`REPLY_LIMIT`]. Returns what the store holds once the relay has finished everything.
async fn replay(script: &[Step], expected_messages: usize) -> Vec<StoredMessage> {
    let (world, relay) = start().await;
    let mut c = RawClient::connect(relay.local_addr()).await;
    let mut transcript = String::new();
    for step in script {
        match step {
            Client(bytes) => {
                transcript.push_str(&format!("C: {:?}\n", String::from_utf8_lossy(bytes)));
                c.send(bytes).await;
            }
            Server(code) => {
                let reply = tokio::time::timeout(REPLY_LIMIT, c.reply())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("no reply within {REPLY_LIMIT:?} (expected {code}):\n{transcript}")
                    });
                transcript.push_str(&format!("S: {reply:?}\n"));
                assert!(
                    reply.starts_with(code),
                    "expected {code}, got {reply:?}:\n{transcript}"
                );
            }
            ServerCloses => {
                let rest = tokio::time::timeout(REPLY_LIMIT, c.reply())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("the relay kept the connection open:\n{transcript}")
                    });
                assert_eq!(rest, "EOF ", "nothing after the last reply:\n{transcript}");
            }
            HangUp => break,
        }
    }
    drop(c);
    exactly(&world, relay, expected_messages).await
}

/// Plays `script` and checks that it delivered the scanner's one message, [`SCAN`] from
/// `scanner@printers.example` to `office@example.com`, spoken over `protocol` (`SMTP` after
/// HELO, `ESMTP` after EHLO).
async fn check_dialog(protocol: &str, script: &[Step]) {
    let stored = replay(script, 1).await;
    assert_stored(
        &stored[0],
        &Expect {
            mail_from: "scanner@printers.example",
            rcpt_to: &["office@example.com"],
            data: SCAN,
            protocol,
        },
    );
}

/// A HELO session up to the scanner's message, without the end of data: the start shared
/// by the dialogs that differ only in how they end.
const HELO_UNTIL_THE_DOT: &[Step] = &[
    Client(b"HELO scanner\r\n"),
    Server("250"),
    Client(b"MAIL FROM:<scanner@printers.example>\r\n"),
    Server("250"),
    Client(b"RCPT TO:<office@example.com>\r\n"),
    Server("250"),
    Client(b"DATA\r\n"),
    Server("354"),
    Client(SCAN),
];

/// Every line ends in a bare LF, the body too, and the data ends with LF . LF: the relay is
/// to store the message with CRLF lines.
#[tokio::test]
async fn printer_lf_only_line_endings() {
    let body: &[u8] =
        b"From: scanner@printers.example\nSubject: Scan 0001\n\nScanned page attached.\n.\n";
    check_dialog(
        "SMTP",
        &[
            Client(b"HELO scanner\n"),
            Server("250"),
            Client(b"MAIL FROM:<scanner@printers.example>\n"),
            Server("250"),
            Client(b"RCPT TO:<office@example.com>\n"),
            Server("250"),
            Client(b"DATA\n"),
            Server("354"),
            Client(body),
            Server("250"),
            Client(b"QUIT\n"),
            Server("221"),
            ServerCloses,
        ],
    )
    .await;
}

#[tokio::test]
async fn printer_helo_only() {
    check_dialog(
        "SMTP",
        &[
            Client(b"HELO scanner\r\n"),
            Server("250"),
            Client(b"MAIL FROM:<scanner@printers.example>\r\n"),
            Server("250"),
            Client(b"RCPT TO:<office@example.com>\r\n"),
            Server("250"),
            Client(b"DATA\r\n"),
            Server("354"),
            Client(SCAN),
            Client(b".\r\n"),
            Server("250"),
            Client(b"QUIT\r\n"),
            Server("221"),
            ServerCloses,
        ],
    )
    .await;
}

#[tokio::test]
async fn printer_lower_case_commands() {
    check_dialog(
        "SMTP",
        &[
            Client(b"helo scanner\r\n"),
            Server("250"),
            Client(b"mail from:<scanner@printers.example>\r\n"),
            Server("250"),
            Client(b"rcpt to:<office@example.com>\r\n"),
            Server("250"),
            Client(b"data\r\n"),
            Server("354"),
            Client(SCAN),
            Client(b".\r\n"),
            Server("250"),
            Client(b"quit\r\n"),
            Server("221"),
            ServerCloses,
        ],
    )
    .await;
}

#[tokio::test]
async fn printer_space_after_the_colon() {
    check_dialog(
        "ESMTP",
        &[
            Client(b"EHLO scanner\r\n"),
            Server("250"),
            Client(b"MAIL FROM: <scanner@printers.example>\r\n"),
            Server("250"),
            Client(b"RCPT TO: <office@example.com>\r\n"),
            Server("250"),
            Client(b"DATA\r\n"),
            Server("354"),
            Client(SCAN),
            Client(b".\r\n"),
            Server("250"),
            Client(b"QUIT\r\n"),
            Server("221"),
            ServerCloses,
        ],
    )
    .await;
}

#[tokio::test]
async fn printer_addresses_without_angle_brackets() {
    check_dialog(
        "SMTP",
        &[
            Client(b"HELO scanner\r\n"),
            Server("250"),
            Client(b"MAIL FROM:scanner@printers.example\r\n"),
            Server("250"),
            Client(b"RCPT TO:office@example.com\r\n"),
            Server("250"),
            Client(b"DATA\r\n"),
            Server("354"),
            Client(SCAN),
            Client(b".\r\n"),
            Server("250"),
            Client(b"QUIT\r\n"),
            Server("221"),
            ServerCloses,
        ],
    )
    .await;
}

/// The end of data and QUIT in one write, before the DATA reply: both replies come, in order.
#[tokio::test]
async fn printer_quit_without_waiting_for_the_data_reply() {
    let end = [
        Client(b".\r\nQUIT\r\n"),
        Server("250"),
        Server("221"),
        ServerCloses,
    ];
    check_dialog("SMTP", &[HELO_UNTIL_THE_DOT, &end].concat()).await;
}

/// The end of data and QUIT in one write, then the printer hangs up without reading
/// anything: the message was complete, so it is delivered.
#[tokio::test]
async fn printer_quit_and_hang_up_without_reading_the_data_reply() {
    let end = [Client(b".\r\nQUIT\r\n"), HangUp];
    check_dialog("SMTP", &[HELO_UNTIL_THE_DOT, &end].concat()).await;
}

/// The printer reads its 250 and closes the connection without QUIT.
#[tokio::test]
async fn printer_closes_without_quit_after_the_250() {
    let end = [Client(b".\r\n"), Server("250"), HangUp];
    check_dialog("SMTP", &[HELO_UNTIL_THE_DOT, &end].concat()).await;
}

/// Failure path: a printer that loses power mid-DATA (no end-of-data) delivers nothing,
/// and the relay keeps nothing of it.
#[tokio::test]
async fn printer_cut_off_mid_data_delivers_nothing() {
    replay(&[HELO_UNTIL_THE_DOT, &[HangUp]].concat(), 0).await;
}
