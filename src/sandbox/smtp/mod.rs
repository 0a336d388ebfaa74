//! The sandbox's SMTP server: Exchange Online's client submission endpoint as the relay
//! meets it (reference §3, §4.1, §4.3, §5, §6). This file is the session driver: one task
//! per connection, the greeting, STARTTLS, and each command's checks and reply.
//!
//! Why it is strict where Exchange is strict: the relay must learn, in tests, every reply it
//! will get in production. So the EHLO lists differ before and after STARTTLS exactly as in
//! the Nov 2025 transcript, AUTH exists only after TLS, XOAUTH2 tokens are checked against
//! what the token endpoint issued (audience, role, expiry, revocation), `MAIL FROM` must be
//! the authenticated mailbox, and a mailbox gets at most three concurrent sessions.
//!
//! Limits and switches the relay's governor and retry tests need, with Exchange's replies:
//! at `MAIL`, the per-mailbox concurrency limit (`432 4.3.2`, changeable at runtime) and
//! message rate limit in a rolling window (`451 4.7.500`); `SmtpOutage::Greeting421` in
//! place of the greeting, `SmtpOutage::Storm451` at `MAIL` and end of DATA, and the
//! submission quota (`554 5.2.0`) at end of DATA. `SmtpOutage::Refuse` lives in the
//! listener (`listener.rs`).
//!
//! The parts, each in its file: `wire.rs` frames lines (with a larger cap for AUTH, which
//! is why smtp-proto's receiver is not used for framing) and buffers replies for
//! PIPELINING; `auth.rs` runs AUTH; `body.rs` streams DATA and BDAT to the store and decides
//! the end of data; `script.rs` holds the faults scripted by recipient local part
//! (`rcpt-perm`, `slow-<N>`, ...); `rights.rs` decides SendAs rights and High Volume Email's
//! internal-only rule; `exchange.rs` holds Exchange's names, limits and shared reply texts. Complete non-AUTH command lines are parsed here with smtp-proto's
//! `Request::parse`.

mod auth;
mod body;
mod exchange;
mod rights;
mod script;
mod wire;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use smtp_proto::{Error as ParseError, Request};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::clock::UtcTime;
use super::shared::{Shared, SmtpOutage};
use auth::{authenticate, AuthEnd, Authed};
use body::{drop_after_some_bytes, finish, receive_chunk, receive_data, Txn};
use exchange::{
    ACCESS_DENIED_LATER, HOST, HVE_EXTERNAL_RECIPIENT, MAX_MESSAGE, MAX_RECIPIENTS,
    SERVICE_NOT_AVAILABLE,
};
use script::{drops_data, Script};
use wire::{command_cap, skip_bytes, starts_with_ignore_case, trim_eol, Flow, LineRead, Wire};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

fn session_id() -> String {
    format!("{:016X}", rand::random::<u64>())
}

/// One connection's state, kept across STARTTLS (which resets `tls` and `greeted` only).
struct Session {
    shared: Arc<Shared>,
    peer: SocketAddr,
    id: String,
    tls: bool,
    greeted: bool,
    auth: Option<Authed>,
    txn: Option<Txn>,
}

/// Serves one SMTP connection: greeting, plaintext phase, STARTTLS, TLS phase.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let cancel = shared.cancel.clone();
    let mut session = Session {
        shared,
        peer,
        id: session_id(),
        tls: false,
        greeted: false,
        auth: None,
        txn: None,
    };
    let mut wire = Wire::new(tcp, cancel.clone());
    if session.shared.smtp_outage() == Some(SmtpOutage::Greeting421) {
        wire.reply(SERVICE_NOT_AVAILABLE);
        return wire.close().await;
    }
    wire.reply(&format!(
        "220 {HOST} Microsoft ESMTP MAIL Service ready at {} [{}]",
        UtcTime::now().rfc2822(),
        session.id
    ));
    match session.run(&mut wire).await {
        Ok(Flow::StartTls) => {}
        Ok(Flow::Drop) | Err(_) => return,
        Ok(_) => return wire.close().await,
    }
    // RFC 3207 §4.2: anything pipelined after STARTTLS was sent in clear; forget it.
    wire.discard_pending();
    let tcp = wire.stream;
    let tls = tokio::select! {
        _ = cancel.cancelled() => return,
        tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => match tls {
            Ok(Ok(tls)) => tls,
            _ => return,
        },
    };
    session.tls = true;
    session.greeted = false;
    let mut wire = Wire::new(tls, cancel);
    match session.run(&mut wire).await {
        Ok(Flow::Drop) | Err(_) => {}
        Ok(_) => wire.close().await,
    }
}

impl Session {
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<S>,
    ) -> io::Result<Flow> {
        loop {
            let line = match wire.read_line(command_cap).await? {
                LineRead::Line(line) => line,
                LineRead::TooLong => {
                    wire.reply("500 5.5.6 Line too long");
                    return Ok(Flow::Close);
                }
                LineRead::Closed => return Ok(Flow::Close),
            };
            match self.command(&line, wire).await? {
                Flow::Continue => {}
                Flow::StartTls => {
                    wire.flush().await?;
                    return Ok(Flow::StartTls);
                }
                other => return Ok(other),
            }
        }
    }

    async fn command<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        line: &[u8],
        wire: &mut Wire<S>,
    ) -> io::Result<Flow> {
        let text = trim_eol(line);
        if starts_with_ignore_case(text, b"AUTH ") || text.eq_ignore_ascii_case(b"AUTH") {
            // Handled here, not by smtp-proto: the line may exceed its 4 KiB cap.
            let args = String::from_utf8_lossy(&text[4..]).trim().to_string();
            return self.auth(&args, wire).await;
        }
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request,
            Err(e) => {
                wire.reply(match e {
                    ParseError::UnknownCommand => "500 5.3.3 Unrecognized command",
                    ParseError::InvalidSenderAddress => "501 5.1.7 Invalid address",
                    ParseError::InvalidRecipientAddress => "501 5.1.3 Invalid address",
                    _ => "501 5.5.4 Invalid arguments",
                });
                return Ok(Flow::Continue);
            }
        };
        match request {
            Request::Ehlo { .. } => {
                self.greeted = true;
                self.txn = None;
                self.ehlo(wire);
            }
            Request::Helo { .. } => {
                self.greeted = true;
                self.txn = None;
                wire.reply(&format!("250 {HOST} Hello [{}]", self.peer.ip()));
            }
            Request::StartTls => {
                if self.tls {
                    wire.reply("503 5.5.2 Only one STARTTLS command can be issued per session");
                } else {
                    wire.reply("220 2.0.0 SMTP server ready");
                    return Ok(Flow::StartTls);
                }
            }
            Request::Mail { from } => {
                let reply = self.mail(as_written(line, &from.address), from.size as u64);
                wire.reply(&reply);
            }
            Request::Rcpt { to } => {
                let reply = self.rcpt(as_written(line, &to.address));
                wire.reply(&reply);
            }
            Request::Data => return self.data(wire).await,
            Request::Bdat {
                chunk_size,
                is_last,
            } => return self.bdat(chunk_size, is_last, wire).await,
            Request::Rset => {
                self.txn = None;
                wire.reply("250 2.0.0 Resetting");
            }
            Request::Noop { .. } => wire.reply("250 2.0.0 OK"),
            Request::Quit => {
                // The session is over at QUIT: it stops counting against the mailbox's
                // concurrent sessions before the reply, not whenever this task gets to
                // close the socket (a client that waits for the close may start its next
                // session at once).
                self.auth = None;
                wire.reply("221 2.0.0 Service closing transmission channel");
                return Ok(Flow::Close);
            }
            Request::Vrfy { .. } => wire.reply("252 2.1.5 Cannot VRFY user"),
            _ => wire.reply("500 5.3.3 Unrecognized command"),
        }
        Ok(Flow::Continue)
    }

    /// EHLO lists before and after STARTTLS (reference §5).
    fn ehlo<S: AsyncRead + AsyncWrite + Unpin>(&self, wire: &mut Wire<S>) {
        wire.reply(&format!("250-{HOST} Hello [{}]", self.peer.ip()));
        wire.reply(&format!("250-SIZE {MAX_MESSAGE}"));
        wire.reply("250-PIPELINING");
        wire.reply("250-DSN");
        wire.reply("250-ENHANCEDSTATUSCODES");
        if self.tls {
            wire.reply("250-AUTH LOGIN XOAUTH2");
        } else {
            wire.reply("250-STARTTLS");
        }
        wire.reply("250-8BITMIME");
        wire.reply("250-BINARYMIME");
        wire.reply("250-CHUNKING");
        wire.reply("250 SMTPUTF8");
    }

    /// The reply to a command that needs TLS, EHLO and AUTH, if one of them is missing.
    fn not_ready(&self) -> Option<String> {
        if !self.tls {
            Some("530 5.7.0 Must issue a STARTTLS command first".into())
        } else if !self.greeted {
            Some("503 5.5.2 Send hello first".into())
        } else if self.auth.is_none() {
            Some(format!(
                "530 5.7.57 SMTP; Client was not authenticated to send anonymous mail during \
                 MAIL FROM [{HOST}]"
            ))
        } else {
            None
        }
    }

    fn mail(&mut self, from: &str, declared_size: u64) -> String {
        if let Some(reply) = self.not_ready() {
            return reply;
        }
        let Some(auth) = self.auth.as_ref() else {
            return "503 5.5.1 Bad sequence of commands".into();
        };
        if self.txn.is_some() {
            return "503 5.5.2 Sender already specified".into();
        }
        if declared_size > MAX_MESSAGE {
            return "552 5.3.4 Message size exceeds fixed maximum message size".into();
        }
        // With SendAs rights enforced, the sender is judged at the end of DATA (5.2.252).
        if !self.shared.opts.enforce_send_as && !from.eq_ignore_ascii_case(&auth.mailbox) {
            return "550 5.7.60 SMTP; Client does not have permissions to send as this sender"
                .into();
        }
        if self.shared.smtp_outage() == Some(SmtpOutage::Storm451) {
            return ACCESS_DENIED_LATER.into();
        }
        let limit = self.shared.max_connections.load(Ordering::Relaxed);
        let others = self
            .shared
            .active_sessions(auth.guard.mailbox_key())
            .saturating_sub(1);
        if limit > 0 && others >= limit {
            self.shared
                .counters
                .concurrency_rejections
                .fetch_add(1, Ordering::Relaxed);
            return "432 4.3.2 Concurrent connections limit exceeded. Visit \
                    https://aka.ms/concurrent_sending for more information."
                .into();
        }
        if !self.shared.admit_message(auth.guard.mailbox_key()) {
            return ACCESS_DENIED_LATER.into();
        }
        self.txn = Some(Txn::new(from.to_string()));
        "250 2.1.0 Sender OK".into()
    }

    fn rcpt(&mut self, to: &str) -> String {
        if let Some(reply) = self.not_ready() {
            return reply;
        }
        let Some(txn) = self.txn.as_mut() else {
            return "503 5.5.2 Need mail command".into();
        };
        if txn.rcpts.len() >= MAX_RECIPIENTS {
            return "452 4.5.3 Too many recipients".into();
        }
        let opts = &self.shared.opts;
        if opts.hve
            && !rights::is_internal(
                to,
                &rights::accepted_domains(&opts.accepted_domains, &opts.mailboxes),
            )
        {
            return HVE_EXTERNAL_RECIPIENT.into();
        }
        match Script::of(to) {
            Some(Script::RcptPerm) => {
                "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address \
                 lookup"
                    .into()
            }
            Some(Script::RcptTemp) => {
                "451 4.4.0 Temporary server error. Please try again later".into()
            }
            _ => {
                txn.rcpts.push(to.to_string());
                "250 2.1.5 Recipient OK".into()
            }
        }
    }

    /// The reply that refuses DATA or BDAT, if the transaction is not ready for a body.
    fn body_refusal(&self) -> Option<String> {
        if let Some(reply) = self.not_ready() {
            return Some(reply);
        }
        match self.txn.as_ref() {
            None => Some("503 5.5.1 Bad sequence of commands".into()),
            Some(txn) if txn.rcpts.is_empty() => Some("503 5.5.2 Need rcpt command".into()),
            Some(_) => None,
        }
    }

    async fn data<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<S>,
    ) -> io::Result<Flow> {
        if let Some(reply) = self.body_refusal() {
            wire.reply(&reply);
            return Ok(Flow::Continue);
        }
        let Some(mut txn) = self.txn.take() else {
            return Ok(Flow::Continue);
        };
        if txn.chunking {
            self.txn = Some(txn);
            wire.reply("503 5.5.1 Bad sequence of commands");
            return Ok(Flow::Continue);
        }
        wire.reply("354 Start mail input; end with <CRLF>.<CRLF>");
        if drops_data(&txn.rcpts) {
            return drop_after_some_bytes(wire).await;
        }
        txn.start_body(&self.shared).await;
        if !receive_data(wire, &mut txn).await? {
            return Ok(Flow::Close);
        }
        finish(&self.shared, self.auth_user(), txn, wire).await
    }

    async fn bdat<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        size: usize,
        last: bool,
        wire: &mut Wire<S>,
    ) -> io::Result<Flow> {
        let refusal = self.body_refusal();
        let mut txn = match (refusal, self.txn.take()) {
            (None, Some(txn)) => txn,
            (refusal, txn) => {
                // The chunk follows the command regardless: read past it.
                self.txn = txn;
                if !skip_bytes(wire, size).await? {
                    return Ok(Flow::Close);
                }
                wire.reply(
                    refusal
                        .as_deref()
                        .unwrap_or("503 5.5.1 Bad sequence of commands"),
                );
                return Ok(Flow::Continue);
            }
        };
        if drops_data(&txn.rcpts) {
            return drop_after_some_bytes(wire).await;
        }
        txn.chunking = true;
        txn.start_body(&self.shared).await;
        if !receive_chunk(wire, &mut txn, size).await? {
            return Ok(Flow::Close);
        }
        if last {
            finish(&self.shared, self.auth_user(), txn, wire).await
        } else {
            wire.reply(&format!("250 2.0.0 {size} bytes received"));
            self.txn = Some(txn);
            Ok(Flow::Continue)
        }
    }

    async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        args: &str,
        wire: &mut Wire<S>,
    ) -> io::Result<Flow> {
        let (mechanism, initial) = match args.split_once(' ') {
            Some((m, rest)) => (m, Some(rest.trim())),
            None => (args, None),
        };
        let mechanism = mechanism.to_ascii_uppercase();
        if !self.tls || !matches!(mechanism.as_str(), "XOAUTH2" | "LOGIN") {
            wire.reply(&format!(
                "504 5.7.4 Unrecognized authentication type [{HOST}]"
            ));
            return Ok(Flow::Continue);
        }
        if !self.greeted {
            wire.reply("503 5.5.2 Send hello first");
            return Ok(Flow::Continue);
        }
        if self.auth.is_some() {
            wire.reply("503 5.5.2 Already authenticated");
            return Ok(Flow::Continue);
        }
        if self.txn.is_some() {
            wire.reply("503 5.5.1 Bad sequence of commands");
            return Ok(Flow::Continue);
        }
        match authenticate(&self.shared, &self.id, &mechanism, initial, wire).await? {
            AuthEnd::Authenticated(authed) => {
                self.auth = Some(authed);
                Ok(Flow::Continue)
            }
            AuthEnd::Refused => Ok(Flow::Continue),
            AuthEnd::Close => Ok(Flow::Close),
        }
    }

    /// The mailbox the session authenticated as; empty before AUTH.
    fn auth_user(&self) -> &str {
        self.auth.as_ref().map_or("", |a| a.mailbox.as_str())
    }
}

/// The address of a `MAIL FROM`/`RCPT TO` line as the client wrote it, as Exchange keeps it:
/// smtp-proto drops the quotes of a quoted local part (`"a\"b"@x` would read `a"b@x`).
fn as_written<'a>(line: &'a [u8], parsed: &'a str) -> &'a str {
    line.iter()
        .position(|&b| b == b':')
        .and_then(|colon| crate::wire::address::split_path(&line[colon + 1..]).ok())
        .map_or(parsed, |path| path.address)
}
