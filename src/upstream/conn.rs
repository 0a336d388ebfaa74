//! One SMTP client connection to the upstream: connect, EHLO, STARTTLS (required), EHLO,
//! AUTH XOAUTH2 (`auth.rs`), then mail transactions with a pipelined envelope and a streamed
//! body, over the reply reader of `stream.rs`.
//!
//! Written on tokio-rustls directly (not mail-send's client) because the relay needs what
//! mail-send's `SmtpClient` does not give: replies kept byte-exact (enhanced codes above 255),
//! pipelined replies that may arrive in one segment without being dropped, a body streamed
//! from the spool file rather than held in memory, and dot-stuffing of a first line that
//! starts with a dot.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeek, AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::auth::authenticate;
use super::endpoint::Endpoint;
use super::error::{Stage, UpstreamError};
use super::stream::SmtpStream;
use crate::token::TokenCache;
use crate::wire::data::DotStuffer;
use crate::wire::Reply;

/// What the server's post-TLS EHLO offered that matters for sending.
#[derive(Debug, Clone, Copy, Default)]
pub struct Capabilities {
    pub pipelining: bool,
    /// SIZE was advertised (RFC 1870), so `MAIL FROM` may carry `SIZE=`.
    pub size_ext: bool,
    pub eight_bit: bool,
    pub smtputf8: bool,
    pub size: Option<u64>,
}

/// Settings for opening connections.
pub struct ConnectParams<'a> {
    pub host: &'a str,
    pub port: u16,
    pub server_name: &'a ServerName<'static>,
    pub tls: &'a Arc<rustls::ClientConfig>,
    pub helo_name: &'a str,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub mailbox: &'a str,
    pub tokens: &'a TokenCache,
    /// Standard or High Volume Email: what AUTH needs of the token, and whose advice a
    /// refusal gets.
    pub endpoint: Endpoint,
}

/// An authenticated session, ready for `MAIL FROM`.
pub struct Connection {
    pub(crate) stream: SmtpStream<TlsStream<TcpStream>>,
    pub caps: Capabilities,
    pub created: Instant,
    pub last_used: Instant,
    /// When the token this session authenticated with expires.
    pub token_expires_at: Instant,
    /// A failed transaction left state on the server: send RSET first.
    pub needs_reset: bool,
}

impl Connection {
    /// Connects, secures and authenticates. Retries AUTH once with a fresh token after
    /// `535 5.7.3`; a second refusal is reported with `after_refresh: true`.
    pub async fn open(p: &ConnectParams<'_>) -> Result<Connection, UpstreamError> {
        let addr = format!("{}:{}", p.host, p.port);
        let tcp = match timeout(p.connect_timeout, TcpStream::connect((p.host, p.port))).await {
            // No answer to the connection attempt: a firewall that drops packets looks like
            // this, so it is reported (and advised on) as a failed connect.
            Err(_) => {
                let source = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", p.connect_timeout.as_secs()),
                );
                return Err(UpstreamError::Connect { addr, source });
            }
            Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
            Ok(Ok(s)) => s,
        };
        let _ = tcp.set_nodelay(true);
        let mut plain = SmtpStream::new(tcp, p.command_timeout);
        let greeting = plain.read_reply(Stage::Greeting, p.connect_timeout).await?;
        if greeting.code != 220 {
            return Err(UpstreamError::Rejected {
                stage: Stage::Greeting,
                reply: greeting,
            });
        }
        let greeting_ehlo = ehlo(&mut plain, p.helo_name).await?;
        if greeting_ehlo.ehlo_keyword("STARTTLS").is_none() {
            return Err(UpstreamError::NoStartTls);
        }
        let reply = plain.command("STARTTLS", Stage::StartTls).await?;
        if reply.code != 220 {
            return Err(UpstreamError::Rejected {
                stage: Stage::StartTls,
                reply,
            });
        }
        if plain.has_unread() {
            return Err(UpstreamError::Protocol {
                stage: Stage::StartTls,
                detail: "server sent data before the TLS handshake (possible injection)".into(),
            });
        }
        let connector = TlsConnector::from(p.tls.clone());
        let tls = match timeout(
            p.command_timeout,
            connector.connect(p.server_name.clone(), plain.into_inner()),
        )
        .await
        {
            Err(_) => {
                return Err(UpstreamError::Timeout {
                    stage: Stage::StartTls,
                })
            }
            Ok(Err(e)) => return Err(tls_error(e)),
            Ok(Ok(s)) => s,
        };
        let mut stream = SmtpStream::new(tls, p.command_timeout);
        let ehlo = ehlo(&mut stream, p.helo_name).await?;
        let auth = ehlo.ehlo_keyword("AUTH").unwrap_or("");
        if !auth
            .split_whitespace()
            .any(|m| m.eq_ignore_ascii_case("XOAUTH2"))
        {
            return Err(UpstreamError::NoXoauth2 {
                offered: if auth.is_empty() {
                    "no AUTH".into()
                } else {
                    auth.into()
                },
            });
        }
        let caps = Capabilities {
            pipelining: ehlo.ehlo_keyword("PIPELINING").is_some(),
            size_ext: ehlo.ehlo_keyword("SIZE").is_some(),
            eight_bit: ehlo.ehlo_keyword("8BITMIME").is_some(),
            smtputf8: ehlo.ehlo_keyword("SMTPUTF8").is_some(),
            size: ehlo
                .ehlo_keyword("SIZE")
                .and_then(|s| s.trim().parse().ok())
                .filter(|&s: &u64| s > 0),
        };
        let token = authenticate(&mut stream, p.mailbox, p.tokens, p.endpoint).await?;
        let now = Instant::now();
        Ok(Connection {
            stream,
            caps,
            created: now,
            last_used: now,
            token_expires_at: token.expires_at(),
            needs_reset: false,
        })
    }

    /// Sends `QUIT` without waiting long, and waits (briefly) for the server to close: the
    /// session is over at Exchange, not only here, when this returns. Used when retiring a
    /// connection, and after every send with shared limits, whose session lease must not be
    /// given back while Exchange still counts the session.
    pub async fn quit(mut self) {
        let _ = timeout(Duration::from_secs(2), async {
            if self.stream.command("QUIT", Stage::Greeting).await.is_ok() {
                self.stream.wait_for_close(Duration::from_secs(1)).await;
            }
        })
        .await;
    }
}

async fn ehlo<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut SmtpStream<S>,
    name: &str,
) -> Result<Reply, UpstreamError> {
    let reply = s.command(&format!("EHLO {name}"), Stage::Ehlo).await?;
    if reply.code != 250 {
        return Err(UpstreamError::Rejected {
            stage: Stage::Ehlo,
            reply,
        });
    }
    Ok(reply)
}

fn tls_error(e: std::io::Error) -> UpstreamError {
    let inner = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .map(|r| r.to_string());
    match inner {
        Some(text) => UpstreamError::Tls(text),
        None => UpstreamError::Io {
            stage: Stage::StartTls,
            source: e,
        },
    }
}

/// A message body as the upstream reads it. It may be read more than once: a pooled session
/// that turns out dead before any data was sent is replaced, and the body sent again from
/// its start.
pub enum MessageBody<'a> {
    /// The whole body in memory: sent without copying it into a read buffer.
    Bytes(&'a [u8]),
    /// A body to stream (a spool file), read from its start each time.
    Stream(&'a mut (dyn BodyStream + 'a)),
}

/// What [`MessageBody::Stream`] reads from: anything that can be read and rewound.
pub trait BodyStream: AsyncRead + AsyncSeek + Unpin + Send {}

impl<T: AsyncRead + AsyncSeek + Unpin + Send> BodyStream for T {}

/// A replacement for the start of a body: `block` is sent instead of its first `replaces`
/// bytes (a rewritten header block, see `wire::rewrite`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSwap {
    pub block: Vec<u8>,
    pub replaces: u64,
}

/// One message (or one batch of its recipients) for one transaction. The body is passed
/// separately ([`MessageBody`]), so it can be read again from the start.
#[derive(Debug, Clone)]
pub struct OutboundMessage {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub size: u64,
    pub body_8bit: bool,
    pub smtputf8: bool,
    /// Direct mode, where nothing is kept: if any recipient is refused temporarily, send no
    /// DATA at all (the client gets 451 and retries the whole message) rather than deliver
    /// to some recipients and silently drop the others.
    pub all_or_nothing: bool,
    /// Sent in place of the body's first bytes (the From rewrite), if set. `size` already
    /// counts it.
    pub headers: Option<HeaderSwap>,
    /// The envelope must have been accepted by then, or the attempt ends before any message
    /// data is sent (`Timeout`), so a client that gave up cannot cause a duplicate.
    pub start_by: Option<Instant>,
}

/// The upstream's verdict on a message it took.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The final reply, e.g. `250 2.0.0 OK <id@...prod.outlook.com> [Hostname=...]`.
    pub reply: Reply,
    pub accepted: Vec<String>,
    /// Recipients refused at RCPT, with the reply for each.
    pub rejected: Vec<(String, Reply)>,
}

/// An envelope beyond ASCII cannot go to a server that did not offer `SMTPUTF8` (RFC 6531
/// §3.4): the refusal the client would get, worded as if the server had said it. (Exchange
/// Online offers it, so this is for other upstreams.)
fn needs_smtputf8(msg: &OutboundMessage, caps: &Capabilities) -> Option<Reply> {
    let non_ascii = !msg.mail_from.is_ascii() || msg.rcpt_to.iter().any(|r| !r.is_ascii());
    (non_ascii && !caps.smtputf8).then(|| {
        Reply::new(
            553,
            "5.6.7",
            "not sent: the address is not ASCII and the upstream does not offer SMTPUTF8",
        )
    })
}

impl Connection {
    /// Runs one mail transaction. On `Err`, `needs_reset` says whether the session is still
    /// usable after an RSET (a refusal) or must be dropped (I/O, timeout, protocol).
    pub async fn transact(
        &mut self,
        msg: &OutboundMessage,
        body: &mut MessageBody<'_>,
        data_timeout: Duration,
    ) -> Result<Delivered, UpstreamError> {
        if let Some(refusal) = needs_smtputf8(msg, &self.caps) {
            return Err(UpstreamError::Rejected {
                stage: Stage::MailFrom,
                reply: refusal,
            });
        }
        let mut lines = Vec::with_capacity(msg.rcpt_to.len() + 2);
        let reset = self.needs_reset;
        if reset {
            lines.push("RSET".to_string());
        }
        let mut mail = format!("MAIL FROM:<{}>", msg.mail_from);
        if self.caps.size_ext {
            mail.push_str(&format!(" SIZE={}", msg.size));
        }
        if msg.body_8bit && self.caps.eight_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if msg.smtputf8 && self.caps.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        lines.push(mail);
        for rcpt in &msg.rcpt_to {
            lines.push(format!("RCPT TO:<{rcpt}>"));
        }
        self.needs_reset = true;
        let replies = self.envelope(&lines).await?;
        let mut replies = replies.into_iter();
        if reset {
            let r = replies.next().expect("one reply per command");
            if !r.is_positive() {
                return Err(UpstreamError::Protocol {
                    stage: Stage::MailFrom,
                    detail: format!("RSET refused: {r}"),
                });
            }
        }
        let mail_reply = replies.next().expect("one reply per command");
        if !mail_reply.is_positive() {
            return Err(UpstreamError::Rejected {
                stage: Stage::MailFrom,
                reply: mail_reply,
            });
        }
        let mut accepted = Vec::new();
        let mut rejected = Vec::new();
        for (rcpt, reply) in msg.rcpt_to.iter().zip(replies) {
            if reply.is_positive() {
                accepted.push(rcpt.clone());
            } else {
                rejected.push((rcpt.clone(), reply));
            }
        }
        let transient = rejected.iter().find(|(_, r)| r.is_transient());
        if msg.all_or_nothing {
            if let Some((_, reply)) = transient {
                // needs_reset stays set: the next transaction starts with RSET.
                return Err(UpstreamError::Rejected {
                    stage: Stage::RcptTo,
                    reply: reply.clone(),
                });
            }
        }
        if msg.start_by.is_some_and(|t| Instant::now() > t) {
            return Err(UpstreamError::Timeout {
                stage: Stage::RcptTo,
            });
        }
        if accepted.is_empty() {
            // Prefer a transient refusal: the client should retry rather than give up.
            let reply = rejected
                .iter()
                .map(|(_, r)| r)
                .find(|r| r.is_transient())
                .or(rejected.first().map(|(_, r)| r))
                .cloned()
                .expect("at least one recipient");
            return Err(UpstreamError::Rejected {
                stage: Stage::RcptTo,
                reply,
            });
        }
        let reply = self.stream.command("DATA", Stage::Data).await?;
        if reply.code != 354 {
            return Err(UpstreamError::Rejected {
                stage: Stage::Data,
                reply,
            });
        }
        let reply = match timeout(data_timeout, self.send_body(body, msg.headers.as_ref())).await {
            Err(_) => {
                return Err(UpstreamError::Timeout {
                    stage: Stage::EndOfData,
                })
            }
            Ok(r) => r?,
        };
        // Whatever the final reply, the transaction is over on the server.
        self.needs_reset = false;
        self.last_used = Instant::now();
        if !reply.is_positive() {
            return Err(UpstreamError::Rejected {
                stage: Stage::EndOfData,
                reply,
            });
        }
        Ok(Delivered {
            reply,
            accepted,
            rejected,
        })
    }

    /// Sends the envelope commands, pipelined when the server allows it (RFC 2920).
    async fn envelope(&mut self, lines: &[String]) -> Result<Vec<Reply>, UpstreamError> {
        let stage_of = |line: &str| {
            if line.starts_with("RCPT") {
                Stage::RcptTo
            } else {
                Stage::MailFrom
            }
        };
        let mut replies = Vec::with_capacity(lines.len());
        if self.caps.pipelining {
            let mut batch = Vec::with_capacity(lines.iter().map(|l| l.len() + 2).sum());
            for line in lines {
                batch.extend_from_slice(line.as_bytes());
                batch.extend_from_slice(b"\r\n");
            }
            self.stream.write_all(&batch, Stage::MailFrom).await?;
            // One deadline for the whole envelope, however many recipients.
            let deadline = Instant::now() + self.stream.command_timeout;
            for line in lines {
                let limit = deadline.saturating_duration_since(Instant::now());
                replies.push(self.stream.read_reply(stage_of(line), limit).await?);
            }
        } else {
            for line in lines {
                let reply = self.stream.command(line, stage_of(line)).await?;
                let stop = line.starts_with("MAIL") && !reply.is_positive();
                replies.push(reply);
                if stop {
                    break;
                }
            }
            // Keep one reply per command for the caller's bookkeeping.
            while replies.len() < lines.len() {
                replies.push(Reply {
                    code: 503,
                    lines: vec!["5.5.1 not sent: MAIL FROM was refused".into()],
                });
            }
        }
        Ok(replies)
    }

    /// Streams the spooled body from its start, dot-stuffed, then the terminator; returns
    /// the final reply.
    async fn send_body(
        &mut self,
        body: &mut MessageBody<'_>,
        swap: Option<&HeaderSwap>,
    ) -> Result<Reply, UpstreamError> {
        const CHUNK: usize = 64 * 1024;
        let mut stuffer = DotStuffer::default();
        let mut out = Vec::new();
        let skip = match swap {
            Some(h) => {
                stuffer.push(&h.block, &mut out);
                h.replaces
            }
            None => 0,
        };
        match body {
            MessageBody::Bytes(bytes) => {
                let bytes = &bytes[(skip as usize).min(bytes.len())..];
                out.reserve(bytes.len().min(CHUNK) + 1024);
                let mut pieces = bytes.chunks(CHUNK).peekable();
                while let Some(piece) = pieces.next() {
                    stuffer.push(piece, &mut out);
                    // The last piece goes out together with the terminator: one write.
                    if pieces.peek().is_some() {
                        self.write_body(&out).await?;
                        out.clear();
                    }
                }
            }
            MessageBody::Stream(stream) => {
                stream
                    .seek(std::io::SeekFrom::Start(skip))
                    .await
                    .map_err(UpstreamError::Body)?;
                let mut chunk = vec![0u8; CHUNK];
                out.reserve(CHUNK + 2048);
                loop {
                    let n = stream.read(&mut chunk).await.map_err(UpstreamError::Body)?;
                    if n == 0 {
                        break;
                    }
                    stuffer.push(&chunk[..n], &mut out);
                    self.write_body(&out).await?;
                    out.clear();
                }
            }
        }
        out.extend_from_slice(stuffer.terminator());
        self.write_body(&out).await?;
        self.stream
            .stream
            .flush()
            .await
            .map_err(|source| UpstreamError::Io {
                stage: Stage::EndOfData,
                source,
            })?;
        self.stream
            .read_reply(Stage::EndOfData, Duration::from_secs(24 * 3600))
            .await
    }

    async fn write_body(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        self.stream
            .stream
            .write_all(bytes)
            .await
            .map_err(|source| UpstreamError::Io {
                stage: Stage::EndOfData,
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_envelopes_need_an_upstream_that_offers_smtputf8() {
        let msg = |from: &str, to: &str| OutboundMessage {
            mail_from: from.into(),
            rcpt_to: vec!["a@x".into(), to.into()],
            size: 1,
            body_8bit: false,
            smtputf8: true,
            all_or_nothing: false,
            headers: None,
            start_by: None,
        };
        let without = Capabilities::default();
        let with = Capabilities {
            smtputf8: true,
            ..Capabilities::default()
        };
        assert!(needs_smtputf8(&msg("a@x", "b@y"), &without).is_none());
        assert!(needs_smtputf8(&msg("jörg@x", "b@y"), &with).is_none());
        let r = needs_smtputf8(&msg("a@x", "用户@y"), &without).expect("refused");
        assert_eq!(r.code, 553);
        assert!(needs_smtputf8(&msg("jörg@x", "b@y"), &without).is_some());
    }
}
