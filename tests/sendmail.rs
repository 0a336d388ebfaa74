//! `sendmail`: the real binary, called as `smtp-oauth-relay sendmail` or through a symlink
//! named `sendmail`, handing messages to a relay in front of the sandbox; a recording SMTP
//! server where the exact dialog matters; the spool when no relay runs; and every exit code.
//!
//! Loopback only; every wait is bounded.

mod support;

#[path = "support/child.rs"]
mod child;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use child::free_addr;
use smtp_oauth_relay::app::Relay;
use support::{relay_binary, strip_received, World, MAILBOX};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// What a run of the binary ended with.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `program` with `args`, exactly `env` among the relay's variables, and `stdin`.
async fn run_program(program: &Path, args: &[&str], env: &[(String, String)], stdin: &[u8]) -> Run {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("SMTP_OAUTH_RELAY") || n == "RUST_LOG" {
            cmd.env_remove(&name);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let mut child = cmd.spawn().expect("spawn the binary");
    let mut input = child.stdin.take().unwrap();
    let bytes = stdin.to_vec();
    // The writer may find stdin closed early (a usage error exits before reading it).
    let writer = tokio::spawn(async move {
        let _ = input.write_all(&bytes).await;
    });
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("sendmail finishes within 60 s")
        .expect("wait for sendmail");
    let _ = writer.await;
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `smtp-oauth-relay sendmail ARGS` with the message on stdin.
async fn sendmail(env: &[(String, String)], args: &[&str], stdin: &[u8]) -> Run {
    let mut all = vec!["sendmail"];
    all.extend_from_slice(args);
    run_program(relay_binary(), &all, env, stdin).await
}

/// The world's environment with the listener at `listen`.
fn env_at(world: &World, listen: &str) -> Vec<(String, String)> {
    let mut env = world.env();
    env.retain(|(k, _)| k != "SMTP_OAUTH_RELAY_LISTEN");
    env.push(("SMTP_OAUTH_RELAY_LISTEN".into(), listen.to_string()));
    env
}

/// A relay in front of the world's sandbox, and the environment that points sendmail at it.
/// Byte-exact checks: the relay's own Date/Message-ID additions are off here
/// (tests/missing_headers.rs and the PHP case of compat_secure_clients.rs cover them).
const NOTHING_ADDED: (&str, &str) = ("SMTP_OAUTH_RELAY__DELIVERY__ADD_MISSING_HEADERS", "false");

async fn relay(world: &World) -> (Relay, Vec<(String, String)>) {
    let relay = world.relay(&[NOTHING_ADDED]).await;
    let env = env_at(world, &relay.local_addr().to_string());
    (relay, env)
}

fn assert_silent_success(run: &Run) {
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_eq!(run.stdout, "", "nothing on stdout (cron mails any output)");
    assert_eq!(run.stderr, "", "nothing on stderr (cron mails any output)");
}

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(strip_received(data)).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line_recipients_get_a_bare_lf_message_as_crlf() {
    let world = World::start().await;
    let (relay, env) = relay(&world).await;
    let message = b"From: app@example.com\nSubject: report\n\nline one\n.leading dot\nlast\n";
    let run = sendmail(&env, &["-i", "a@example.com", "B <b@example.com>"], message).await;
    assert_silent_success(&run);
    let stored = world.wait_for(1).await;
    assert_eq!(
        stored[0].envelope.rcpt_to,
        ["a@example.com", "b@example.com"]
    );
    assert_eq!(
        text(&stored[0].data),
        "From: app@example.com\r\nSubject: report\r\n\r\nline one\r\n.leading dot\r\nlast\r\n",
        "CRLF line ends, the leading dot arrives as one dot"
    );
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t_takes_to_cc_and_bcc_and_the_bcc_header_stays_behind() {
    let world = World::start().await;
    let (relay, env) = relay(&world).await;
    let message = b"From: app@example.com\nTo: To One <to@example.com>\nCc: cc@example.com,\n  \"Doe, J\" <cc2@example.com>\nBcc: hidden@example.com\nSubject: t\n\nbody\n";
    let run = sendmail(&env, &["-t", "-i"], message).await;
    assert_silent_success(&run);
    let stored = world.wait_for(1).await;
    assert_eq!(
        stored[0].envelope.rcpt_to,
        [
            "to@example.com",
            "cc@example.com",
            "cc2@example.com",
            "hidden@example.com"
        ]
    );
    let data = text(&stored[0].data);
    assert!(!data.to_ascii_lowercase().contains("bcc"), "{data}");
    assert!(!data.contains("hidden@example.com"), "{data}");
    assert!(data.contains("Cc: cc@example.com,\r\n  \"Doe, J\" <cc2@example.com>\r\n"));
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_full_name_adds_a_from_header_only_when_there_is_none() {
    let world = World::start().await;
    let (relay, env) = relay(&world).await;
    // Cron's own arguments.
    let cron = ["-FCronDaemon", "-odi", "-oem", "-oi", "-t"];
    let run = sendmail(&env, &cron, b"To: ops@example.com\nSubject: cron\n\nout\n").await;
    assert_silent_success(&run);
    let own = b"From: me@example.com\nTo: ops@example.com\nSubject: own\n\nout\n";
    let run = sendmail(&env, &["-F", "Ignored Name", "-t"], own).await;
    assert_silent_success(&run);
    let stored = world.wait_for(2).await;
    let by_subject = |s: &str| {
        stored
            .iter()
            .map(|m| text(&m.data))
            .find(|t| t.contains(&format!("Subject: {s}\r\n")))
            .unwrap_or_else(|| panic!("no message {s}"))
    };
    assert!(
        by_subject("cron").starts_with(&format!("From: CronDaemon <{MAILBOX}>\r\nTo: ops@")),
        "the default sender is the configured mailbox: {}",
        by_subject("cron")
    );
    let own = by_subject("own");
    assert!(own.starts_with("From: me@example.com\r\n"), "{own}");
    assert!(!own.contains("Ignored Name"), "{own}");
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_dot_line_is_kept_with_i_and_ends_the_message_without() {
    let world = World::start().await;
    let (relay, env) = relay(&world).await;
    let body = |s: &str| format!("Subject: {s}\nTo: x@example.com\n\nbefore\n.\nafter\n");
    assert_silent_success(&sendmail(&env, &["-i", "x@example.com"], body("kept").as_bytes()).await);
    assert_silent_success(&sendmail(&env, &["x@example.com"], body("cut").as_bytes()).await);
    let stored = world.wait_for(2).await;
    let texts: Vec<String> = stored.iter().map(|m| text(&m.data)).collect();
    assert!(
        texts
            .contains(&"Subject: kept\r\nTo: x@example.com\r\n\r\nbefore\r\n.\r\nafter\r\n".into()),
        "{texts:?}"
    );
    assert!(
        texts.contains(&"Subject: cut\r\nTo: x@example.com\r\n\r\nbefore\r\n".into()),
        "{texts:?}"
    );
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn called_sendmail_through_a_symlink_it_is_sendmail() {
    let world = World::start().await;
    let (relay, env) = relay(&world).await;
    let bin = world.dir.path().join("sbin");
    std::fs::create_dir(&bin).unwrap();
    let link = bin.join("sendmail");
    std::os::unix::fs::symlink(relay_binary(), &link).unwrap();
    // PHP's mail(): sendmail_path = "sendmail -t -i".
    let message = b"To: php@example.com\nSubject: from php\n\nhello\n";
    let run = run_program(&link, &["-t", "-i"], &env, message).await;
    assert_silent_success(&run);
    let stored = world.wait_for(1).await;
    assert_eq!(stored[0].envelope.rcpt_to, ["php@example.com"]);
    // The relay's own usage errors do not apply: `-t` is sendmail's option here.
    let bad = run_program(&link, &["-X", "log"], &env, b"").await;
    assert_eq!(bad.code, 64);
    assert!(bad.stderr.contains("unknown option -X"), "{}", bad.stderr);
    relay.shutdown(Duration::from_secs(5)).await;
}

/// One SMTP session that records every line it is sent and answers each command with what
/// `answer` says (`250` by default): the dialog as sendmail writes it.
async fn recording_server(
    answer: fn(&str) -> Option<&'static str>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (stream, _) = tokio::time::timeout(Duration::from_secs(30), listener.accept())
            .await
            .expect("sendmail connects")
            .unwrap();
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        write.write_all(b"220 recorder ESMTP\r\n").await.unwrap();
        let mut lines = Vec::new();
        let mut in_data = false;
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(30), read.read_line(&mut line))
                .await
                .expect("a line within 30 s")
                .unwrap();
            if n == 0 {
                break;
            }
            lines.push(line.clone());
            let reply = if in_data {
                if line != ".\r\n" {
                    continue;
                }
                in_data = false;
                answer(".").unwrap_or("250 2.0.0 queued")
            } else if line.starts_with("DATA") {
                in_data = true;
                answer("DATA").unwrap_or("354 go on")
            } else if line.starts_with("QUIT") {
                write.write_all(b"221 bye\r\n").await.unwrap();
                break;
            } else {
                answer(&line).unwrap_or("250 ok")
            };
            write
                .write_all(format!("{reply}\r\n").as_bytes())
                .await
                .unwrap();
        }
        let mut rest = Vec::new();
        let _ = read.read_to_end(&mut rest).await;
        lines
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sets_mail_from_and_the_body_is_dot_stuffed_on_the_wire() {
    let world = World::start().await;
    let (addr, server) = recording_server(|_| None).await;
    let env = env_at(&world, &addr.to_string());
    let message = "Subject: ü\n\n.one\n..two\n".as_bytes();
    let run = sendmail(
        &env,
        &["-i", "-f", "bounce@example.com", "--", "r@example.com"],
        message,
    )
    .await;
    assert_silent_success(&run);
    let lines = server.await.unwrap();
    let size = "Subject: ü\r\n\r\n.one\r\n..two\r\n".len();
    assert!(lines[0].starts_with("EHLO "), "{lines:?}");
    assert_eq!(
        lines[1..],
        [
            format!("MAIL FROM:<bounce@example.com> SIZE={size} BODY=8BITMIME\r\n"),
            "RCPT TO:<r@example.com>\r\n".into(),
            "DATA\r\n".into(),
            "Subject: ü\r\n".into(),
            "\r\n".into(),
            "..one\r\n".into(),
            "...two\r\n".into(),
            ".\r\n".into(),
            "QUIT\r\n".into(),
        ]
    );
    assert!(
        !world.spool_dir().exists(),
        "a message the relay took is not queued again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_relay_the_message_waits_in_the_spool_for_the_next_start() {
    let world = World::start().await;
    let nobody = free_addr().to_string();
    let env = env_at(&world, &nobody);
    let message = b"From: app@example.com\nTo: later@example.com\nSubject: queued\n\nwaits\n";
    let run = sendmail(&env, &["-t"], message).await;
    assert_silent_success(&run);
    let queue = world.spool_dir().join("queue");
    let files: Vec<_> = std::fs::read_dir(&queue)
        .expect("sendmail made the spool")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 2, "one body and one envelope: {files:?}");
    for f in &files {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is private", f.display());
    }
    assert!(
        std::fs::read_dir(world.spool_dir().join("incoming"))
            .unwrap()
            .next()
            .is_none(),
        "nothing half-written is left behind"
    );
    // The queue commands see it as mail any relay adopts.
    let list = run_program(relay_binary(), &["queue", "list"], &env, b"").await;
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(list.stdout.contains("later@example.com"), "{}", list.stdout);
    assert!(list.stdout.contains("unrecorded"), "{}", list.stdout);
    // The next relay on this spool delivers it.
    assert_eq!(world.sandbox.messages().len(), 0);
    let relay = world.relay(&[NOTHING_ADDED]).await;
    let stored = world.wait_for(1).await;
    assert_eq!(stored[0].envelope.rcpt_to, ["later@example.com"]);
    assert_eq!(
        String::from_utf8_lossy(&stored[0].data),
        "From: app@example.com\r\nTo: later@example.com\r\nSubject: queued\r\n\r\nwaits\r\n"
    );
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_refusal_queues_the_message_too() {
    let world = World::start().await;
    let (addr, server) = recording_server(|line| {
        line.starts_with("RCPT")
            .then_some("451 4.3.0 try again later")
    })
    .await;
    let env = env_at(&world, &addr.to_string());
    let run = sendmail(&env, &["r@example.com"], b"Subject: s\n\nb\n").await;
    assert_silent_success(&run);
    let lines = server.await.unwrap();
    assert!(!lines.iter().any(|l| l == "DATA\r\n"), "{lines:?}");
    let queued = std::fs::read_dir(world.spool_dir().join("queue"))
        .unwrap()
        .count();
    assert_eq!(queued, 2, "body and envelope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_64_naming_the_problem() {
    let world = World::start().await;
    let env = env_at(&world, &free_addr().to_string());
    let bad = sendmail(&env, &["-t", "-q1h"], b"To: a@example.com\n\n").await;
    assert_eq!(bad.code, 64, "{}", bad.stderr);
    assert!(bad.stderr.contains("unknown option -q1h"), "{}", bad.stderr);
    let none = sendmail(&env, &["-i"], b"To: a@example.com\n\nbody\n").await;
    assert_eq!(none.code, 64, "{}", none.stderr);
    assert!(none.stderr.contains("no recipients"), "{}", none.stderr);
    let none_t = sendmail(&env, &["-t"], b"Subject: nobody\n\nbody\n").await;
    assert_eq!(none_t.code, 64, "{}", none_t.stderr);
    assert!(
        none_t.stderr.contains("no To:, Cc: or Bcc: header"),
        "{}",
        none_t.stderr
    );
    let root = sendmail(&env, &["root"], b"Subject: x\n\n").await;
    assert_eq!(root.code, 64, "{}", root.stderr);
    assert!(
        root.stderr.contains("\"root\" is not a full address"),
        "{}",
        root.stderr
    );
    assert!(!world.spool_dir().exists(), "nothing was queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_refusal_exits_69_with_the_relays_reply() {
    let world = World::start().await;
    // Only @allowed.example senders are routed: any other is refused at MAIL FROM.
    let relay = world
        .relay(&[("SMTP_OAUTH_RELAY__ACCOUNT__SENDERS", "@allowed.example")])
        .await;
    let env = env_at(&world, &relay.local_addr().to_string());
    let run = sendmail(
        &env,
        &["-f", "app@elsewhere.example", "r@example.com"],
        b"Subject: s\n\nb\n",
    )
    .await;
    assert_eq!(run.code, 69, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("the relay refused the message: 550 5.7.1"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("app@elsewhere.example"),
        "{}",
        run.stderr
    );
    let ok = sendmail(
        &env,
        &["-f", "app@allowed.example", "r@example.com"],
        b"Subject: s\n\nb\n",
    )
    .await;
    assert_silent_success(&ok);
    assert_eq!(world.wait_for(1).await.len(), 1);
    let queued = std::fs::read_dir(world.spool_dir().join("queue"))
        .unwrap()
        .count();
    assert_eq!(queued, 0, "a refused message is not queued");
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_relay_and_an_unwritable_spool_exit_75() {
    let world = World::start().await;
    let file = world.dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let mut env = env_at(&world, &free_addr().to_string());
    env.retain(|(k, _)| k != "SMTP_OAUTH_RELAY_SPOOL_DIR");
    let spool = file.join("spool");
    env.push((
        "SMTP_OAUTH_RELAY_SPOOL_DIR".into(),
        spool.display().to_string(),
    ));
    let run = sendmail(&env, &["r@example.com"], b"Subject: s\n\nb\n").await;
    assert_eq!(run.code, 75, "{}", run.stderr);
    assert!(
        run.stderr.contains("the message was not sent"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("cannot connect"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "cannot be queued in the spool {}",
            spool.display()
        )),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(&world.secret()), "no secret in errors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_relay_that_answers_4xx_delivers_the_queued_message_after_a_rescan() {
    let world = World::start().await;
    // One recipient per message: the second RCPT gets `452 4.5.3`.
    let relay = world
        .relay(&[
            ("SMTP_OAUTH_RELAY__LISTEN__MAX_RECIPIENTS", "1"),
            NOTHING_ADDED,
        ])
        .await;
    let env = env_at(&world, &relay.local_addr().to_string());
    let run = sendmail(
        &env,
        &["one@example.com", "two@example.com"],
        b"Subject: two\n\nb\n",
    )
    .await;
    assert_silent_success(&run);
    // Queued whole by sendmail, adopted by the running relay when it re-reads its queue.
    let stored = world.wait_for(1).await;
    assert_eq!(
        stored[0].envelope.rcpt_to,
        ["one@example.com", "two@example.com"]
    );
    assert_eq!(
        String::from_utf8_lossy(&stored[0].data),
        "Subject: two\r\n\r\nb\r\n"
    );
    relay.shutdown(Duration::from_secs(5)).await;
}
