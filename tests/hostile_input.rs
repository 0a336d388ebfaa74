//! Client input that must not pass through unchanged (issue 11, items 9 to 11), through the
//! real binary: hostile EHLO names against the `Received:` header, envelope addresses and
//! `SIZE=` as a raw client and Python's `smtplib` send them, and header bytes that must not
//! reach an operator's terminal from `queue show`.
//!
//! Every wait is bounded; children are killed when their handles drop.

#[path = "support/child.rs"]
mod child;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use child::{free_addr, RelayChild};
use smtp_oauth_relay::sandbox::SmtpOutage;
use support::{relay_binary, RawClient, World, MAILBOX};

/// How long a child command (the relay starting, `queue show`, python) may take.
const CHILD_LIMIT: Duration = Duration::from_secs(30);

/// The relay binary serving `world`'s sandbox on a fresh loopback port.
async fn relay_child(
    world: &World,
    work: &Path,
    extra: &[(&str, &str)],
) -> (RelayChild, SocketAddr) {
    let addr = free_addr();
    let mut env = world.env();
    let listen = addr.to_string();
    for (k, v) in [("SMTP_OAUTH_RELAY_LISTEN", listen.as_str())]
        .iter()
        .chain(extra)
    {
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v.to_string()));
    }
    let log = work.join("relay.stderr");
    let mut relay = RelayChild::spawn(relay_binary(), &[], &env, work, &log);
    relay.wait_ready(addr, CHILD_LIMIT).await;
    (relay, addr)
}

/// Runs `program args` to completion (killed after [`CHILD_LIMIT`]); (exit code, stdout,
/// stderr). Output goes to files, so a chatty child never blocks.
async fn run_child(
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"));
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("SMTP_OAUTH_RELAY_") || n == "RUST_LOG" {
            cmd.env_remove(&name);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    let deadline = tokio::time::Instant::now() + CHILD_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} {args:?} did not finish within {CHILD_LIMIT:?}",
                program.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    (
        status.code(),
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default(),
    )
}

/// The relay's `Received:` header at the top of a stored message, CRLF included.
fn received_header(data: &[u8]) -> &[u8] {
    let rest = support::strip_received(data);
    &data[..data.len() - rest.len()]
}

/// Reads a `Received:` header back as RFC 5322 does (comments nest, `\` quotes) and checks
/// what a hostile name must not change: every byte printable ASCII (tabs only where lines
/// fold), comments balanced, exactly one `from` (first), `by relay-host` and `;`, and after
/// the `;` only the date.
fn structure(header: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(header).map_err(|_| "not UTF-8, let alone ASCII")?;
    let body = text.strip_suffix("\r\n").ok_or("no CRLF at the end")?;
    let mut unfolded = String::new();
    for (i, line) in body.split("\r\n").enumerate() {
        let line = if i == 0 {
            line.strip_prefix("Received:")
                .ok_or("not a Received header")?
        } else {
            line.strip_prefix('\t').ok_or("a line that does not fold")?
        };
        if let Some(b) = line.bytes().find(|b| !(0x20..=0x7e).contains(b)) {
            return Err(format!("byte {b:#04x} is not printable ASCII"));
        }
        unfolded.push(' ');
        unfolded.push_str(line);
    }
    // Words outside comments; None stands for the `;`.
    let mut words: Vec<Option<String>> = Vec::new();
    let mut chars = unfolded.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' => {}
            '(' => {
                let mut depth = 1;
                while depth > 0 {
                    match chars.next().ok_or("unclosed comment")? {
                        '\\' => {
                            chars.next().ok_or("a lone backslash")?;
                        }
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                }
            }
            ')' => return Err("a ) that closes nothing".into()),
            ';' => words.push(None),
            '<' => {
                let mut quoted = false;
                loop {
                    match chars.next().ok_or("unclosed <")? {
                        '\\' if quoted => {
                            chars.next();
                        }
                        '"' => quoted = !quoted,
                        '>' if !quoted => break,
                        _ => {}
                    }
                }
            }
            _ => {
                let mut w = c.to_string();
                while let Some(&n) = chars.peek() {
                    if n == ' ' || "();<".contains(n) {
                        break;
                    }
                    w.push(n);
                    chars.next();
                }
                words.push(Some(w));
            }
        }
    }
    let is = |w: &Option<String>, k: &str| w.as_deref().is_some_and(|w| w.eq_ignore_ascii_case(k));
    if !is(&words[0], "from") || words.iter().filter(|w| is(w, "from")).count() != 1 {
        return Err("not exactly one from, first".into());
    }
    let by: Vec<usize> = (0..words.len()).filter(|&i| is(&words[i], "by")).collect();
    if by.len() != 1 || words.get(by[0] + 1).cloned().flatten().as_deref() != Some("relay.test") {
        return Err(format!("{} by clauses, or by someone else", by.len()));
    }
    let semis: Vec<usize> = (0..words.len()).filter(|&i| words[i].is_none()).collect();
    let [semi] = semis[..] else {
        return Err(format!("{} semicolons", semis.len()));
    };
    let date: Vec<String> = words[semi + 1..].iter().flatten().cloned().collect();
    let date = date.join(" ").replace(" +0000", " GMT");
    httpdate::parse_http_date(&date).map_err(|_| format!("the date reads {date:?}"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ehlo_names_cannot_shape_the_received_header() {
    let world = World::start().await;
    let work = tempfile::tempdir().expect("tempdir");
    let (_relay, addr) = relay_child(
        &world,
        work.path(),
        &[("SMTP_OAUTH_RELAY__LISTEN__HOSTNAME", "relay.test")],
    )
    .await;
    // The names from the issue, then Unicode a message without SMTPUTF8 must not carry.
    let names: &[&[u8]] = &[
        b"x(",
        b"a)by(trusted.mx.example)",
        b"evil;Thu,_01_Jan_1970",
        "\u{202e}moc.elgoog".as_bytes(),
        "bücher.de".as_bytes(),
        b"a\\)(b",
        b"\xff\xfe(",
        b"by",
        b"app.example",
    ];
    for (i, name) in names.iter().enumerate() {
        let mut c = RawClient::connect(addr).await;
        let mut ehlo = b"EHLO ".to_vec();
        ehlo.extend_from_slice(name);
        ehlo.extend_from_slice(b"\r\n");
        c.send(&ehlo).await;
        let r = c.reply().await;
        assert!(r.starts_with("250"), "EHLO {name:?}: {r}");
        let body = format!("Subject: hostile {i}\r\n\r\nbody\r\n");
        let r = c
            .send_mail("app@example.com", &["b@example.com"], body.as_bytes())
            .await;
        assert!(r.starts_with("250 "), "{r}");
        c.cmd("QUIT", 221).await;
    }
    let stored = world.wait_for(names.len()).await;
    assert_eq!(stored.len(), names.len());
    for m in &stored {
        let h = received_header(&m.data);
        let subject = String::from_utf8_lossy(support::strip_received(&m.data))
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        if let Err(why) = structure(h) {
            panic!("{subject}: {why}\n{}", String::from_utf8_lossy(h));
        }
        if subject.ends_with(&format!(" {}", names.len() - 1)) {
            assert!(
                h.starts_with(b"Received: from app.example ([127.0.0.1])"),
                "a plain name is kept: {}",
                String::from_utf8_lossy(h)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_addresses_and_sizes_are_read_exactly() {
    let world = World::start().await;
    let work = tempfile::tempdir().expect("tempdir");
    let (_relay, addr) = relay_child(&world, work.path(), &[]).await;
    let mut c = RawClient::connect(addr).await;
    c.cmd("EHLO app.example", 250).await;

    // SIZE: any number over the limit is too big, however long; a word is not a number.
    for huge in ["99999999999999999999999", "18446744073709551615"] {
        let r = c
            .cmd(&format!("MAIL FROM:<app@example.com> SIZE={huge}"), 552)
            .await;
        assert!(r.starts_with("552 5.3.4 "), "{r}");
    }
    c.cmd("MAIL FROM:<app@example.com> SIZE=big", 501).await;

    // Beyond ASCII only with SMTPUTF8; bytes that are not UTF-8 never.
    let r = c.cmd("MAIL FROM:<jörg@bücher.de>", 553).await;
    assert!(r.starts_with("553 5.6.7 "), "{r}");
    c.send(b"MAIL FROM:<j\xf6rg@example.com>\r\n").await;
    let r = c.reply().await;
    assert!(r.starts_with("501 ") && r.contains("UTF-8"), "{r}");
    c.cmd("MAIL FROM:<app@example.com>", 250).await;
    let r = c.cmd("RCPT TO:<用户@例子.广告>", 553).await;
    assert!(r.starts_with("553 5.6.7 "), "{r}");
    c.send(b"RCPT TO:<\xe7\x94@example.com>\r\n").await;
    let r = c.reply().await;
    assert!(r.starts_with("501 ") && r.contains("UTF-8"), "{r}");

    // Quoted local parts reach Exchange as written.
    c.cmd(r#"RCPT TO:<"a\"b"@example.com>"#, 250).await;
    c.cmd(r#"RCPT TO:<"john smith"@example.com>"#, 250).await;
    c.cmd("DATA", 354).await;
    c.send(b"Subject: quoted\r\n\r\nbody\r\n.\r\n").await;
    let r = c.reply().await;
    assert!(r.starts_with("250 "), "{r}");
    // With SMTPUTF8 declared, a UTF-8 envelope is still fine.
    c.cmd("MAIL FROM:<jörg@bücher.de> SMTPUTF8", 250).await;
    c.cmd("RCPT TO:<用户@例子.广告>", 250).await;
    c.cmd("QUIT", 221).await;

    let stored = world.wait_for(1).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].envelope.rcpt_to,
        vec![r#""a\"b"@example.com"#, r#""john smith"@example.com"#]
    );
}

/// Python's smtplib quotes local parts as RFC 5321 says; they arrive as it sent them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_quoted_recipients_arrive_intact() {
    let python = Path::new("python3");
    if Command::new(python).arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "CI must install python3");
        eprintln!("skipped: python3 not installed");
        return;
    }
    let world = World::start().await;
    let work = tempfile::tempdir().expect("tempdir");
    let (_relay, addr) = relay_child(&world, work.path(), &[]).await;
    let script = r#"
import smtplib, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=20)
refused = s.sendmail("app@example.com", ['"a\\"b"@example.com', '"john smith"@example.com'],
                     "Subject: smtplib quoted\r\n\r\nbody\r\n")
s.quit()
print(refused)
"#;
    let (code, out, err) = run_child(
        python,
        &[
            "-c",
            script,
            &addr.ip().to_string(),
            &addr.port().to_string(),
        ],
        &[],
    )
    .await;
    assert_eq!(code, Some(0), "python3: {out}\n{err}");
    assert_eq!(out.trim(), "{}", "nothing refused");
    let stored = world.wait_for(1).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].envelope.rcpt_to,
        vec![r#""a\"b"@example.com"#, r#""john smith"@example.com"#]
    );
}

/// `queue show` prints a queued message's headers; control bytes in them are the sender's,
/// and must reach the operator's terminal as visible escapes, not as commands to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_show_escapes_terminal_controls_in_headers() {
    let world = World::start().await;
    world.sandbox.set_smtp_outage(Some(SmtpOutage::Refuse));
    let relay = world.relay(&[("SMTP_OAUTH_RELAY_MODE", "queue")]).await;
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO app.example", 250).await;
    // Clear screen and red (CSI), OSC 52 (write the clipboard) ended by BEL, a C1 CSI
    // (U+009B) and a bidi override.
    let headers = "Subject: \u{1b}[2J\u{1b}[31mred\r\n\
                   X-Clip: \u{1b}]52;c;cm0gLXJmIH4=\u{7}\r\n\
                   X-C1: \u{9b}1;1H\u{202e}txt.exe\r\n\r\nbody\r\n";
    let r = c
        .send_mail("app@example.com", &[MAILBOX], headers.as_bytes())
        .await;
    assert!(r.starts_with("250 ") && r.contains("queued"), "{r}");
    let id = r.split_whitespace().nth(2).expect("id").to_string();
    c.cmd("QUIT", 221).await;

    let spool = world.spool_dir();
    let (code, out, err) = run_child(
        relay_binary(),
        &["queue", "show", &id],
        &[(
            "SMTP_OAUTH_RELAY_SPOOL_DIR",
            spool.to_str().expect("UTF-8 path"),
        )],
    )
    .await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    for control in ['\u{1b}', '\u{7}', '\u{9b}', '\u{202e}'] {
        assert!(
            !out.contains(control),
            "{control:?} reached the terminal:\n{out:?}"
        );
    }
    for visible in [
        r"Subject: \u{1b}[2J\u{1b}[31mred",
        r"X-Clip: \u{1b}]52;c;cm0gLXJmIH4=\u{7}",
        r"X-C1: \u{9b}1;1H\u{202e}txt.exe",
    ] {
        assert!(out.contains(visible), "{visible} missing:\n{out}");
    }
    relay.shutdown(Duration::from_secs(5)).await;
}
