//! `smtp-oauth-relay sendmail`, also what the binary does when it is called `sendmail`
//! (`/usr/sbin/sendmail -> smtp-oauth-relay`): for apps that hand mail to
//! `/usr/sbin/sendmail` (PHP's `mail()`, cron, logwatch, mailx).
//!
//! Reads one message on stdin and hands it to the running relay over plain SMTP on its
//! `listen.address` (EHLO, MAIL, RCPT, DATA; every step with a deadline). When no relay
//! answers, or it answers `4xx`, or the dialog breaks off before the message was accepted,
//! the message is committed into `delivery.spool_dir` as a queued message with no recorded
//! destination: the next relay to start (or a running one, asked to re-read its queue) adopts
//! it for its first account and delivers it. Only `listen.address`, `listen.max_message_size`,
//! `delivery.spool_dir` and the first account's `mailbox` are read from the configuration;
//! nothing needs to validate.
//!
//! Exit codes (sysexits.h, as sendmail): 0 handed over (to the relay, or queued in the
//! spool), 64 usage, 69 the relay refused the message for good (`5xx`: its reply is printed),
//! 75 neither the relay nor the spool took it. Nothing is printed on success: cron mails any
//! output.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use super::dialog::{Conn, Failure};
use super::process::{config_error, runtime, EXIT_CONFIG, EXIT_TEMPFAIL, EXIT_UNAVAILABLE};
use super::sendmail_args::{parse_args, prepare, Prepared};
use crate::config::{split_host_port, Config};
use crate::envelope::MessageId;
use crate::spool::{QueueEntry, Spool};
use crate::wire::data::DotStuffer;
use crate::wire::header::MessageIdSniffer;
use crate::wire::Reply;

/// The name that makes the binary behave as this command.
pub const NAME: &str = "sendmail";
/// Connecting to the relay on loopback.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Each reply before the end of the data.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// The reply to the end of the data (RFC 5321 §4.5.3.2.6: 10 minutes); the relay may be
/// delivering it to Exchange before it answers.
const DATA_TIMEOUT: Duration = Duration::from_secs(600);

/// Whether the program was called by the name `sendmail` (its file name, whatever the
/// directory: `/usr/sbin/sendmail`, `/usr/lib/sendmail`).
pub fn invoked_as_sendmail(argv0: Option<&OsStr>) -> bool {
    argv0
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == NAME)
}

/// The binary called as `sendmail`: the configuration file comes from `-C` or
/// `SMTP_OAUTH_RELAY_CONFIG`, the rest of the configuration from the environment.
pub fn main(argv: Vec<OsString>) -> ExitCode {
    let args: Vec<String> = argv
        .into_iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let env: Vec<(String, String)> = std::env::vars().collect();
    let config = env
        .iter()
        .find(|(k, v)| k == "SMTP_OAUTH_RELAY_CONFIG" && !v.is_empty())
        .map(|(_, v)| std::path::PathBuf::from(v));
    command(config.as_deref(), &env, &args)
}

/// `sendmail [options] [--] recipient...` with the message on stdin.
pub fn command(config_file: Option<&Path>, env: &[(String, String)], args: &[String]) -> ExitCode {
    let inv = match parse_args(args) {
        Ok(inv) => inv,
        Err(usage) => return fail(EXIT_CONFIG, usage),
    };
    let config = match Config::load(inv.config.as_deref().or(config_file), env) {
        Ok(c) => c,
        Err(e) => return config_error(e),
    };
    let Some(relay) = relay_address(&config.listen.address) else {
        return config_error(format!(
            "listen.address: `{}` is not an address sendmail can reach the relay at (IP:PORT or localhost:PORT)",
            config.listen.address
        ));
    };
    let limit = config.listen.max_message_size;
    let mut raw = Vec::new();
    if let Err(e) = std::io::stdin().take(limit + 1).read_to_end(&mut raw) {
        return fail(
            EXIT_TEMPFAIL,
            format!("cannot read the message from stdin: {e}"),
        );
    }
    let host = host_name();
    let mailbox = config
        .account
        .first()
        .and_then(|a| a.mailbox.as_deref())
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(String::from);
    let sender = default_sender(mailbox.as_deref(), env, &host);
    let prepared = match prepare(&inv, &raw, &sender) {
        Ok(p) => p,
        Err(usage) => return fail(EXIT_CONFIG, usage),
    };
    if prepared.message.len() as u64 > limit {
        return fail(
            EXIT_UNAVAILABLE,
            format!(
                "the message is larger than the relay takes ({limit} bytes, listen.max_message_size)"
            ),
        );
    }
    let rt = match runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let spool_dir = config.delivery.spool_dir.clone();
    rt.block_on(async {
        let why = match hand_to_relay(relay, &host, &prepared).await {
            Handoff::Accepted => return ExitCode::SUCCESS,
            Handoff::Refused(reply) => {
                return fail(
                    EXIT_UNAVAILABLE,
                    format!("the relay refused the message: {reply}"),
                )
            }
            Handoff::NotAccepted(why) => why,
        };
        match queue_in_spool(&spool_dir, &prepared, &host, mailbox.as_deref()).await {
            Ok(_id) => ExitCode::SUCCESS,
            Err(e) => fail(
                EXIT_TEMPFAIL,
                format!(
                    "the message was not sent: {why}; and it cannot be queued in the spool {}: {e}",
                    spool_dir.display()
                ),
            ),
        }
    })
}

fn fail(code: u8, why: impl std::fmt::Display) -> ExitCode {
    eprintln!("sendmail: {why}");
    ExitCode::from(code)
}

/// Where to reach the relay: its listen address, a wildcard one (`0.0.0.0`, `[::]`) by
/// loopback, `localhost` as 127.0.0.1.
pub fn relay_address(listen: &str) -> Option<SocketAddr> {
    let (host, port) = split_host_port(listen)?;
    let ip: std::net::IpAddr = if host.eq_ignore_ascii_case("localhost") {
        std::net::Ipv4Addr::LOCALHOST.into()
    } else {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?
    };
    let ip = match ip {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    Some(SocketAddr::new(ip, port))
}

/// The envelope sender without `-f`: the first account's mailbox (what the relay sends as
/// anyway), else `$LOGNAME@host` (or `$USER`, or `sendmail` when neither is set).
pub fn default_sender(mailbox: Option<&str>, env: &[(String, String)], host: &str) -> String {
    if let Some(m) = mailbox {
        return m.to_string();
    }
    let user = ["LOGNAME", "USER"]
        .iter()
        .find_map(|name| env.iter().find(|(k, v)| k == name && !v.trim().is_empty()))
        .map_or("sendmail", |(_, v)| v.trim());
    format!("{user}@{host}")
}

fn host_name() -> String {
    let name = gethostname::gethostname().to_string_lossy().into_owned();
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if ok {
        name
    } else {
        "localhost".into()
    }
}

/// What became of the message at the relay.
#[derive(Debug)]
pub enum Handoff {
    /// `250` to the end of the data: the relay has it.
    Accepted,
    /// Refused for good (`5xx`).
    Refused(Reply),
    /// Not taken, and not refused for good: no relay, a `4xx`, a timeout, a broken dialog.
    NotAccepted(String),
}

/// The dialog's failure as a hand-off: a `5xx` refuses, anything else leaves it to the spool.
pub fn classify(failure: Failure, relay: SocketAddr) -> Handoff {
    match failure {
        // 530: the relay wants TLS or a login from every client (require_tls/require_auth),
        // which a local sendmail cannot give; the spool is its door then.
        Failure::Refused(stage, reply) if reply.code == 530 => Handoff::NotAccepted(format!(
            "the relay at {relay} wants TLS or a login first ({stage}: {reply})"
        )),
        Failure::Refused(_, reply) if reply.is_permanent() => Handoff::Refused(reply),
        Failure::Refused(stage, reply) => Handoff::NotAccepted(format!(
            "the relay at {relay} answered {stage} with {reply}"
        )),
        Failure::Io(text) => Handoff::NotAccepted(format!("the relay at {relay}: {text}")),
    }
}

async fn hand_to_relay(relay: SocketAddr, host: &str, p: &Prepared) -> Handoff {
    match dialog(relay, host, p).await {
        Ok(()) => Handoff::Accepted,
        Err(f) => classify(f, relay),
    }
}

async fn dialog(relay: SocketAddr, host: &str, p: &Prepared) -> Result<(), Failure> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(relay))
        .await
        .map_err(|_| Failure::Io("no answer to connect".into()))?
        .map_err(|e| Failure::Io(format!("cannot connect: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let mut c = Conn::new(Box::new(tcp), REPLY_TIMEOUT);
    c.expect("the greeting", 2).await?;
    c.cmd(&format!("EHLO {host}\r\n"), "EHLO", 2).await?;
    let mut mail = format!("MAIL FROM:<{}> SIZE={}", p.sender, p.message.len());
    if p.body_8bit {
        mail.push_str(" BODY=8BITMIME");
    }
    if p.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    c.cmd(&format!("{mail}\r\n"), "MAIL", 2).await?;
    for r in &p.recipients {
        c.cmd(&format!("RCPT TO:<{r}>\r\n"), "RCPT", 2).await?;
    }
    c.cmd("DATA\r\n", "DATA", 3).await?;
    let mut stuffer = DotStuffer::default();
    let mut wire = Vec::with_capacity(p.message.len() + p.message.len() / 64 + 8);
    stuffer.push(&p.message, &mut wire);
    wire.extend_from_slice(stuffer.terminator());
    c.timeout = DATA_TIMEOUT;
    c.send(&wire).await?;
    c.expect("the end of the data", 2).await?;
    c.timeout = REPLY_TIMEOUT;
    // The message is the relay's now; how QUIT goes does not matter.
    let _ = c.cmd("QUIT\r\n", "QUIT", 2).await;
    Ok(())
}

/// Commits the message into the spool's queue, durably (the spool's own commit: body and
/// envelope fsync'd, renamed, directory fsync'd), with no recorded destination, and asks a
/// running relay to re-read its queue. Returns its id.
async fn queue_in_spool(
    dir: &Path,
    p: &Prepared,
    host: &str,
    mailbox: Option<&str>,
) -> std::io::Result<String> {
    if dir.as_os_str().is_empty() {
        return Err(std::io::Error::other("delivery.spool_dir is empty"));
    }
    let spool = Spool::for_dropping(dir)?;
    let entry = queue_entry(p, host, mailbox);
    let body: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(p.message.clone());
    spool.commit_bytes(body, &entry).await?;
    spool.request_rescan()?;
    Ok(entry.id)
}

/// The envelope of a message queued by `sendmail`: unrecorded destination (the relay that
/// reads it adopts it), `client` says where it came from.
pub fn queue_entry(p: &Prepared, host: &str, mailbox: Option<&str>) -> QueueEntry {
    let mut entry = QueueEntry::new(
        MessageId::generate().to_string(),
        p.sender.clone(),
        p.recipients.clone(),
        mailbox.unwrap_or_default().to_string(),
        p.message.len() as u64,
    );
    entry.client = "sendmail".into();
    entry.helo = host.to_string();
    entry.body_8bit = p.body_8bit;
    entry.smtputf8 = p.smtputf8;
    let mut sniffer = MessageIdSniffer::new();
    sniffer.feed(&p.message);
    entry.message_id = sniffer.message_id();
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_sendmail_selects_the_command() {
        assert!(invoked_as_sendmail(Some(OsStr::new("/usr/sbin/sendmail"))));
        assert!(invoked_as_sendmail(Some(OsStr::new("sendmail"))));
        assert!(!invoked_as_sendmail(Some(OsStr::new(
            "/usr/bin/smtp-oauth-relay"
        ))));
        assert!(!invoked_as_sendmail(Some(OsStr::new(
            "/usr/sbin/sendmail.real"
        ))));
        assert!(!invoked_as_sendmail(None));
    }

    #[test]
    fn the_relay_is_reached_on_loopback_for_wildcards() {
        let a = |s: &str| relay_address(s).map(|a| a.to_string());
        assert_eq!(a("127.0.0.1:2525").as_deref(), Some("127.0.0.1:2525"));
        assert_eq!(a("localhost:2600").as_deref(), Some("127.0.0.1:2600"));
        assert_eq!(a("0.0.0.0:25").as_deref(), Some("127.0.0.1:25"));
        assert_eq!(a("[::]:25").as_deref(), Some("[::1]:25"));
        assert_eq!(a("[::1]:25").as_deref(), Some("[::1]:25"));
        assert_eq!(a("10.1.2.3:25").as_deref(), Some("10.1.2.3:25"));
        assert_eq!(a("relay.example:25"), None, "no names are looked up");
        assert_eq!(a("nonsense"), None);
    }

    #[test]
    fn the_default_sender_is_the_mailbox_else_the_user_at_this_host() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            default_sender(Some("relay@x"), &env(&[("USER", "u")]), "h"),
            "relay@x"
        );
        assert_eq!(
            default_sender(None, &env(&[("USER", "u"), ("LOGNAME", "l")]), "h"),
            "l@h"
        );
        assert_eq!(default_sender(None, &env(&[("USER", "u")]), "h"), "u@h");
        assert_eq!(default_sender(None, &env(&[]), "h"), "sendmail@h");
    }

    #[test]
    fn only_a_5xx_refuses_everything_else_goes_to_the_spool() {
        let relay: SocketAddr = "127.0.0.1:2525".parse().unwrap();
        let reply = |t: &str| {
            Reply::parse(format!("{t}\r\n").as_bytes())
                .unwrap()
                .unwrap()
                .0
        };
        assert!(matches!(
            classify(Failure::Refused("MAIL", reply("550 5.7.1 not routed")), relay),
            Handoff::Refused(r) if r.code == 550
        ));
        match classify(Failure::Refused("RCPT", reply("452 4.5.3 too many")), relay) {
            Handoff::NotAccepted(why) => {
                assert_eq!(
                    why,
                    "the relay at 127.0.0.1:2525 answered RCPT with 452 4.5.3 too many"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(Failure::Refused("MAIL", reply("530 5.7.0 Authentication required")), relay),
            Handoff::NotAccepted(why) if why.contains("TLS or a login")
        ));
        assert!(matches!(
            classify(Failure::Io("cannot connect: refused".into()), relay),
            Handoff::NotAccepted(why) if why.contains("cannot connect")
        ));
    }

    #[test]
    fn a_queued_message_is_unrecorded_and_says_where_it_came_from() {
        let p = Prepared {
            sender: "app@x".into(),
            recipients: vec!["a@y".into()],
            message: b"Message-ID: <m1@x>\r\n\r\nhi\r\n".to_vec(),
            body_8bit: false,
            smtputf8: false,
        };
        let e = queue_entry(&p, "host", Some("relay@x"));
        assert_eq!(e.destination, None);
        assert_eq!((e.client.as_str(), e.helo.as_str()), ("sendmail", "host"));
        assert_eq!(e.mailbox, "relay@x");
        assert_eq!(e.size, p.message.len() as u64);
        assert_eq!(e.message_id.as_deref(), Some("<m1@x>"));
        assert_eq!(e.attempts, 0);
    }
}
