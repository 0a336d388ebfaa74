//! The sandbox's SMTP server: Exchange Online's client submission endpoint as the relay
//! meets it (reference §3, §4.1, §4.3, §5, §6).
//!
//! Why it is strict where Exchange is strict: the relay must learn, in tests, every reply it
//! will get in production. So the EHLO lists differ before and after STARTTLS exactly as in
//! the Nov 2025 transcript, AUTH exists only after TLS, XOAUTH2 tokens are checked against
//! what the token endpoint issued (audience, role, expiry, revocation), `MAIL FROM` must be
//! the authenticated mailbox, and a mailbox gets at most three concurrent sessions.
//!
//! Faults are scripted by recipient local part (any domain), in the manner of Stalwart's
//! test servers: `rcpt-perm`, `rcpt-temp`, `data-perm`, `data-temp`, `sendas-denied`,
//! `slow-<N>`, `drop-data`, `drop-after-dot` (see [`Script`]).
//!
//! Limits and switches the relay's governor and retry tests need, with Exchange's replies:
//! at `MAIL`, the per-mailbox concurrency limit (`432 4.3.2`, changeable at runtime) and
//! message rate limit in a rolling window (`451 4.7.500`); `SmtpOutage::Greeting421` in
//! place of the greeting, `SmtpOutage::Storm451` at `MAIL` and end of DATA, and the
//! submission quota (`554 5.2.0`) at end of DATA. `SmtpOutage::Refuse` lives in the
//! listener (`mod.rs`).
//!
//! Framing is done here, not by smtp-proto's `RequestReceiver`, because that receiver caps
//! every line at 4 KiB while an `AUTH XOAUTH2 <blob>` line carries a 2-3 KB JWT in base64:
//! command lines are capped at 4 KiB, AUTH lines and AUTH continuations at 12 KiB
//! (RFC 4954 §4). Complete non-AUTH lines are parsed with smtp-proto's `Request::parse`;
//! message bodies go through smtp-proto's `DataReceiver` (ends only on CRLF.CRLF, so SMTP
//! smuggling is refused) and stream to the store, never whole in memory.
//!
//! PIPELINING: replies are buffered and written when no complete command is left in the
//! input, so a batch of commands in one write gets its replies in order, in one write.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use smtp_proto::request::receiver::DataReceiver;
use smtp_proto::{Error as ParseError, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::clock::{unix_now, UtcTime};
use super::shared::{SessionGuard, Shared, SmtpOutage};
use super::store::Incoming;

/// The front-end host name in greetings and bracketed diagnostics.
const HOST: &str = "sandbox.outlook.office365.com";
/// The "mailbox server" named in the final `250` after DATA.
const MAILBOX_SERVER: &str = "SANDBOX01.prod.outlook.com";
/// Exchange Online's advertised ceiling (reference §4.2).
const MAX_MESSAGE: u64 = 157_286_400;
/// Default recipients-per-message limit (reference §4.1).
const MAX_RECIPIENTS: usize = 500;
const MAX_LINE: usize = 4096;
const MAX_AUTH_LINE: usize = 12 * 1024;
/// On-premises Exchange's receive-connector inactivity default (reference §4.5).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Body bytes gathered before a write to the store.
const WRITE_CHUNK: usize = 64 * 1024;
/// Leading message bytes kept to find the `From:` header for the 5.2.252 text.
const HEAD_CAPTURE: usize = 8 * 1024;
const READ_CHUNK: usize = 16 * 1024;

/// Exchange's throttling reply (reference §6): the rate limit, `SmtpOutage::Storm451` and
/// the `data-temp` script.
const ACCESS_DENIED_LATER: &str = "451 4.7.500 Access denied, please try again later";
/// Instead of the greeting under `SmtpOutage::Greeting421`, and to idle sessions on shutdown.
const SERVICE_NOT_AVAILABLE: &str = "421 4.3.2 Service not available, closing transmission channel";
/// End of DATA while `Sandbox::set_quota_exceeded(true)` (reference §6).
const QUOTA_EXCEEDED: &str = "554 5.2.0 STOREDRV.Submission.Exception:\
    SubmissionQuotaExceededException; Failed to process message due to a permanent exception \
    with message [BeginDiagnosticData]Cannot submit message.";

// ---------------------------------------------------------------------------------------
// Fault scripts (pure)

/// A fault scripted by a recipient's local part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Script {
    /// RCPT: `550 5.1.10` recipient not found.
    RcptPerm,
    /// RCPT: `451 4.4.0` temporary server error.
    RcptTemp,
    /// End of DATA: `554 5.6.0`, not stored.
    DataPerm,
    /// End of DATA: `451 4.7.500`, not stored.
    DataTemp,
    /// End of DATA: `554 5.2.252 SendAsDenied`, not stored.
    SendAsDenied,
    /// End of DATA: wait this many seconds, then accept.
    Slow(u64),
    /// During DATA: close the connection once some body bytes arrived, without a reply.
    DropData,
    /// End of DATA: close right after the final dot, without a reply; nothing stored.
    DropAfterDot,
}

impl Script {
    /// The script named by `address`'s local part, if any (case-insensitive).
    pub(crate) fn of(address: &str) -> Option<Script> {
        let local = address
            .rsplit_once('@')
            .map_or(address, |(local, _)| local)
            .to_ascii_lowercase();
        Some(match local.as_str() {
            "rcpt-perm" => Script::RcptPerm,
            "rcpt-temp" => Script::RcptTemp,
            "data-perm" => Script::DataPerm,
            "data-temp" => Script::DataTemp,
            "sendas-denied" => Script::SendAsDenied,
            "drop-data" => Script::DropData,
            "drop-after-dot" => Script::DropAfterDot,
            other => {
                let secs = other.strip_prefix("slow-")?.parse::<u64>().ok()?;
                Script::Slow(secs.min(600))
            }
        })
    }

    fn at_end_of_data(self) -> bool {
        matches!(
            self,
            Script::DataPerm
                | Script::DataTemp
                | Script::SendAsDenied
                | Script::Slow(_)
                | Script::DropAfterDot
        )
    }
}

/// The end-of-DATA script of the first recipient that has one.
pub(crate) fn end_of_data_script(rcpts: &[String]) -> Option<Script> {
    rcpts
        .iter()
        .filter_map(|r| Script::of(r))
        .find(|s| s.at_end_of_data())
}

fn drops_data(rcpts: &[String]) -> bool {
    rcpts
        .iter()
        .any(|r| Script::of(r) == Some(Script::DropData))
}

// ---------------------------------------------------------------------------------------
// Pure helpers

/// The address in the first `From:` header of a message head, if any.
pub(crate) fn header_from(head: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    let headers = text.split("\r\n\r\n").next().unwrap_or_default();
    let value = headers.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("from").then_some(value)
    })?;
    let address = match (value.rfind('<'), value.rfind('>')) {
        (Some(open), Some(close)) if open < close => &value[open + 1..close],
        _ => value.trim(),
    };
    (!address.is_empty()).then(|| address.to_string())
}

fn starts_with_ignore_case(bytes: &[u8], prefix: &[u8]) -> bool {
    bytes.len() >= prefix.len() && bytes[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// The line cap for a command that starts with `pending`.
fn command_cap(pending: &[u8]) -> usize {
    if starts_with_ignore_case(pending, b"AUTH ") {
        MAX_AUTH_LINE
    } else {
        MAX_LINE
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn session_id() -> String {
    format!("{:016X}", rand::random::<u64>())
}

// ---------------------------------------------------------------------------------------
// The wire: buffered input, buffered replies

/// What a read of a line produced.
enum LineRead {
    Line(Vec<u8>),
    TooLong,
    /// End of input, idle timeout or shutdown (the matching reply was already sent).
    Closed,
}

struct Wire<S> {
    stream: S,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    cancel: CancellationToken,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    fn new(stream: S, cancel: CancellationToken) -> Self {
        Wire {
            stream,
            rbuf: Vec::with_capacity(READ_CHUNK),
            rpos: 0,
            wbuf: Vec::with_capacity(1024),
            cancel,
        }
    }

    fn pending(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    fn consume(&mut self, n: usize) {
        self.rpos += n;
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        }
    }

    fn discard_pending(&mut self) {
        self.rbuf.clear();
        self.rpos = 0;
    }

    fn reply(&mut self, line: &str) {
        self.wbuf.extend_from_slice(line.as_bytes());
        self.wbuf.extend_from_slice(b"\r\n");
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Writes pending replies, then reads more input. `Ok(false)`: stop the session (end of
    /// input, or an idle timeout or shutdown, which were answered first).
    async fn fill(&mut self) -> io::Result<bool> {
        self.flush().await?;
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        self.rbuf.reserve(READ_CHUNK);
        let read = tokio::select! {
            _ = self.cancel.cancelled() => None,
            read = tokio::time::timeout(IDLE_TIMEOUT, self.stream.read_buf(&mut self.rbuf)) => Some(read),
        };
        match read {
            None => {
                self.reply(SERVICE_NOT_AVAILABLE);
                self.flush().await?;
                Ok(false)
            }
            Some(Err(_elapsed)) => {
                self.reply("451 4.7.0 Timeout waiting for client input");
                self.flush().await?;
                Ok(false)
            }
            Some(Ok(read)) => Ok(read? > 0),
        }
    }

    /// Reads one line (with its terminator); `cap` sees the start of the pending input.
    async fn read_line(&mut self, cap: impl Fn(&[u8]) -> usize) -> io::Result<LineRead> {
        loop {
            let pending = self.pending();
            let limit = cap(pending);
            match pending.iter().position(|&b| b == b'\n') {
                Some(pos) if pos < limit => {
                    let line = pending[..=pos].to_vec();
                    self.consume(pos + 1);
                    return Ok(LineRead::Line(line));
                }
                Some(_) => return Ok(LineRead::TooLong),
                None if pending.len() >= limit => return Ok(LineRead::TooLong),
                None => {
                    if !self.fill().await? {
                        return Ok(LineRead::Closed);
                    }
                }
            }
        }
    }

    async fn close(mut self) {
        if self.flush().await.is_ok() {
            let _ = self.stream.shutdown().await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The session

/// What the driver does after a command.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// `220` was sent: upgrade the connection.
    StartTls,
    /// Say nothing more (after QUIT, a fatal error, or a timeout) and close.
    Close,
    /// Close at once without flushing: a scripted drop.
    Drop,
}

struct Authed {
    mailbox: String,
    guard: SessionGuard,
}

/// One mail transaction (MAIL to end of DATA/BDAT LAST).
struct Txn {
    mail_from: String,
    rcpts: Vec<String>,
    body: Option<Incoming>,
    /// The store could not take the body: answer 451 at the end.
    store_failed: bool,
    /// BDAT chunks have started (DATA is then out of sequence).
    chunking: bool,
    bytes: u64,
    too_big: bool,
    head: Vec<u8>,
}

impl Txn {
    fn new(mail_from: String) -> Self {
        Txn {
            mail_from,
            rcpts: Vec::new(),
            body: None,
            store_failed: false,
            chunking: false,
            bytes: 0,
            too_big: false,
            head: Vec::new(),
        }
    }

    async fn start_body(&mut self, shared: &Shared) {
        if self.body.is_none() && !self.store_failed {
            match shared.store.begin().await {
                Ok(body) => self.body = Some(body),
                Err(e) => {
                    tracing::warn!(error = %e, "sandbox store cannot create a message file");
                    self.store_failed = true;
                }
            }
        }
    }

    async fn append(&mut self, bytes: &[u8]) {
        if self.head.len() < HEAD_CAPTURE {
            let take = bytes.len().min(HEAD_CAPTURE - self.head.len());
            self.head.extend_from_slice(&bytes[..take]);
        }
        self.bytes += bytes.len() as u64;
        if self.bytes > MAX_MESSAGE {
            self.too_big = true;
            self.body = None;
            return;
        }
        if let Some(body) = self.body.as_mut() {
            if let Err(e) = body.write(bytes).await {
                tracing::warn!(error = %e, "sandbox store write failed");
                self.body = None;
                self.store_failed = true;
            }
        }
    }
}

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
                let reply = self.mail(&from.address, from.size as u64);
                wire.reply(&reply);
            }
            Request::Rcpt { to } => {
                let reply = self.rcpt(&to.address);
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
        if !from.eq_ignore_ascii_case(&auth.mailbox) {
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

        // Prime the receiver as if a line had just ended: its initial state does not treat a
        // '.' at the very start of the body as the start of a line, which would mis-parse a
        // dot-stuffed first line or an empty message.
        let mut receiver = DataReceiver::new();
        receiver.ingest(&mut b"\r\n".iter(), &mut Vec::new());
        let mut out = Vec::with_capacity(WRITE_CHUNK + READ_CHUNK);
        loop {
            let pending = wire.pending();
            let mut bytes = pending.iter();
            let done = receiver.ingest(&mut bytes, &mut out);
            let used = pending.len() - bytes.as_slice().len();
            wire.consume(used);
            if done || out.len() >= WRITE_CHUNK {
                // Keep the last byte until the end: the receiver pops the '\r' that
                // precedes the terminating ".\r\n" from this buffer.
                let n = if done { out.len() } else { out.len() - 1 };
                txn.append(&out[..n]).await;
                out.drain(..n);
            }
            if done {
                break;
            }
            if !wire.fill().await? {
                return Ok(Flow::Close);
            }
        }
        self.finish(txn, wire).await
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
        let mut left = size;
        while left > 0 {
            if wire.pending().is_empty() && !wire.fill().await? {
                return Ok(Flow::Close);
            }
            let take = left.min(wire.pending().len());
            txn.append(&wire.pending()[..take]).await;
            wire.consume(take);
            left -= take;
        }
        if last {
            self.finish(txn, wire).await
        } else {
            wire.reply(&format!("250 2.0.0 {size} bytes received"));
            self.txn = Some(txn);
            Ok(Flow::Continue)
        }
    }

    /// After the final dot (or `BDAT ... LAST`): apply the script, store, reply.
    async fn finish<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        txn: Txn,
        wire: &mut Wire<S>,
    ) -> io::Result<Flow> {
        self.shared
            .counters
            .bodies_received
            .fetch_add(1, Ordering::Relaxed);
        if txn.too_big {
            wire.reply("552 5.3.4 Message size exceeds fixed maximum message size");
            return Ok(Flow::Continue);
        }
        if self.shared.smtp_outage() == Some(SmtpOutage::Storm451) {
            wire.reply(ACCESS_DENIED_LATER);
            return Ok(Flow::Continue);
        }
        if self.shared.quota_exceeded.load(Ordering::Relaxed) {
            wire.reply(QUOTA_EXCEEDED);
            return Ok(Flow::Continue);
        }
        let auth_user = self
            .auth
            .as_ref()
            .map(|a| a.mailbox.clone())
            .unwrap_or_default();
        match end_of_data_script(&txn.rcpts) {
            Some(Script::DataPerm) => {
                wire.reply("554 5.6.0 Invalid message content");
                return Ok(Flow::Continue);
            }
            Some(Script::DataTemp) => {
                wire.reply(ACCESS_DENIED_LATER);
                return Ok(Flow::Continue);
            }
            Some(Script::SendAsDenied) => {
                let from = header_from(&txn.head).unwrap_or_else(|| txn.mail_from.clone());
                wire.reply(&format!(
                    "554 5.2.252 SendAsDenied; {auth_user} not allowed to send as {from}; \
                     STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; \
                     Failed to process message due to a permanent exception"
                ));
                return Ok(Flow::Continue);
            }
            Some(Script::DropAfterDot) => return Ok(Flow::Drop),
            Some(Script::Slow(secs)) => {
                // Flush what came before so only the final reply is late.
                wire.flush().await?;
                let cancel = self.shared.cancel.clone();
                tokio::select! {
                    _ = cancel.cancelled() => {
                        wire.reply(SERVICE_NOT_AVAILABLE);
                        return Ok(Flow::Close);
                    }
                    _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
                }
            }
            _ => {}
        }
        let Txn {
            mail_from,
            rcpts,
            body,
            ..
        } = txn;
        let stored = match body {
            Some(body) => body.commit(&mail_from, &rcpts, &auth_user).await.ok(),
            None => None,
        };
        match stored {
            Some(id) => wire.reply(&format!(
                "250 2.0.0 OK <{id}@sandbox.prod.outlook.com> [Hostname={MAILBOX_SERVER}]"
            )),
            None => wire.reply("451 4.3.0 Temporary server error. Please try again later"),
        }
        Ok(Flow::Continue)
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
        let counters = &self.shared.counters;
        if mechanism == "LOGIN" {
            // Basic authentication: walk through the exchange, then refuse it as a tenant
            // with Basic SMTP AUTH turned off does (reference §3.5).
            let prompts = if initial.is_some() {
                &["334 UGFzc3dvcmQ6"][..]
            } else {
                &["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6"][..]
            };
            for prompt in prompts {
                wire.reply(prompt);
                match wire.read_line(|_| MAX_AUTH_LINE).await? {
                    LineRead::Line(_) => {}
                    LineRead::TooLong => {
                        wire.reply("500 5.5.6 Line too long");
                        return Ok(Flow::Close);
                    }
                    LineRead::Closed => return Ok(Flow::Close),
                }
            }
            counters.auth_attempts.fetch_add(1, Ordering::Relaxed);
            counters.auth_failures.fetch_add(1, Ordering::Relaxed);
            wire.reply(
                "535 5.7.139 Authentication unsuccessful, basic authentication is disabled.",
            );
            return Ok(Flow::Continue);
        }

        let blob = match initial {
            Some(blob) => blob.to_string(),
            None => {
                wire.reply("334 ");
                match wire.read_line(|_| MAX_AUTH_LINE).await? {
                    LineRead::Line(line) => String::from_utf8_lossy(trim_eol(&line)).into_owned(),
                    LineRead::TooLong => {
                        wire.reply("500 5.5.6 Line too long");
                        return Ok(Flow::Close);
                    }
                    LineRead::Closed => return Ok(Flow::Close),
                }
            }
        };
        counters.auth_attempts.fetch_add(1, Ordering::Relaxed);
        match self.verify_xoauth2(&blob) {
            Ok(mailbox) => {
                let guard = self.shared.session_authenticated(&mailbox);
                self.auth = Some(Authed { mailbox, guard });
                wire.reply("235 2.7.0 Authentication successful");
            }
            Err(reply) => {
                counters.auth_failures.fetch_add(1, Ordering::Relaxed);
                wire.reply(&reply);
            }
        }
        Ok(Flow::Continue)
    }

    /// Checks an XOAUTH2 response; returns the mailbox, or the failure reply.
    fn verify_xoauth2(&self, blob: &str) -> Result<String, String> {
        let failed = || {
            format!(
                "535 5.7.3 Authentication unsuccessful [{HOST} {} {}]",
                UtcTime::now().iso_millis(),
                self.id
            )
        };
        let (user, token) = crate::wire::xoauth2::decode(blob).ok_or_else(failed)?;
        let opts = &self.shared.opts;
        if !opts.mailboxes.iter().any(|m| m.eq_ignore_ascii_case(&user)) {
            return Err(failed());
        }
        if opts
            .smtp_auth_disabled
            .iter()
            .any(|m| m.eq_ignore_ascii_case(&user))
        {
            return Err(
                "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is \
                        disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for \
                        more information."
                    .into(),
            );
        }
        match self.shared.tokens.lookup(&token) {
            Some(issued) if issued.valid_for_smtp(unix_now()) => Ok(user),
            _ => Err(failed()),
        }
    }
}

/// The `drop-data` script: make sure some body bytes arrived, then hang up without a reply.
async fn drop_after_some_bytes<S: AsyncRead + AsyncWrite + Unpin>(
    wire: &mut Wire<S>,
) -> io::Result<Flow> {
    wire.flush().await?;
    if wire.pending().is_empty() {
        wire.fill().await?;
    }
    Ok(Flow::Drop)
}

/// Reads and discards `n` bytes. `Ok(false)` if the session ended first.
async fn skip_bytes<S: AsyncRead + AsyncWrite + Unpin>(
    wire: &mut Wire<S>,
    mut n: usize,
) -> io::Result<bool> {
    while n > 0 {
        if wire.pending().is_empty() && !wire.fill().await? {
            return Ok(false);
        }
        let take = n.min(wire.pending().len());
        wire.consume(take);
        n -= take;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_by_local_part() {
        assert_eq!(Script::of("rcpt-perm@x.example"), Some(Script::RcptPerm));
        assert_eq!(Script::of("RCPT-TEMP@x.example"), Some(Script::RcptTemp));
        assert_eq!(Script::of("slow-3@any"), Some(Script::Slow(3)));
        assert_eq!(Script::of("slow-99999@any"), Some(Script::Slow(600)));
        assert_eq!(Script::of("slow-x@any"), None);
        assert_eq!(Script::of("someone@data-perm"), None);
        assert_eq!(Script::of("drop-after-dot"), Some(Script::DropAfterDot));
        let rcpts = vec![
            "a@x".to_string(),
            "drop-data@x".to_string(),
            "data-temp@x".to_string(),
            "data-perm@x".to_string(),
        ];
        assert_eq!(end_of_data_script(&rcpts), Some(Script::DataTemp));
        assert!(drops_data(&rcpts));
        assert_eq!(end_of_data_script(&rcpts[..2]), None);
    }

    #[test]
    fn from_header_extraction() {
        let head = b"Subject: x\r\nFROM: \"A, B\" <a@b.example>\r\n\r\nFrom: <c@d>\r\n";
        assert_eq!(header_from(head), Some("a@b.example".to_string()));
        assert_eq!(
            header_from(b"From: plain@x\r\n\r\n"),
            Some("plain@x".to_string())
        );
        assert_eq!(header_from(b"Subject: x\r\n\r\nFrom: <c@d>\r\n"), None);
    }

    #[test]
    fn quota_reply_is_exchanges_text() {
        assert_eq!(
            QUOTA_EXCEEDED,
            "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed \
             to process message due to a permanent exception with message \
             [BeginDiagnosticData]Cannot submit message."
        );
    }

    #[test]
    fn auth_lines_get_the_larger_cap() {
        assert_eq!(command_cap(b"auth xoauth2 abc"), MAX_AUTH_LINE);
        assert_eq!(command_cap(b"AUTH"), MAX_LINE);
        assert_eq!(command_cap(b"MAIL FROM:<a@b>"), MAX_LINE);
    }
}
