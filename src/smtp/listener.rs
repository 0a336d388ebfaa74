//! The tokio driver for inbound SMTP: accept under a connection limit, one task per client,
//! timeouts on every read, replies batched for pipelining, DATA streamed to the spool.
//!
//! Decisions live in `session` (commands) and `data` (body decoding); this file only moves
//! bytes, files and time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use smtp_proto::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::reply::{self, Reply};
use super::session::{Action, Session, SessionConfig, Transaction};
use super::ListenSettings;
use crate::delivery::{Delivery, Spooled};
use crate::envelope::{Envelope, MessageId};
use crate::spool::sink::BodySink;
use crate::spool::Spool;
use crate::wire::data::{BodyDecoder, Progress};

/// What every connection task shares.
pub struct ListenerContext {
    pub listen: ListenSettings,
    pub delivery: Arc<Delivery>,
    pub spool: Spool,
    pub shutdown: CancellationToken,
    /// True while the accept loop runs (readiness).
    pub accepting: Arc<std::sync::atomic::AtomicBool>,
}

/// Accepts connections until `shutdown` is cancelled. A permit is taken *before* accepting,
/// so at most `max_connections` clients are served and the rest wait in the backlog.
pub async fn run(listener: TcpListener, ctx: Arc<ListenerContext>, tracker: TaskTracker) {
    let limit = Arc::new(Semaphore::new(ctx.listen.max_connections));
    ctx.accepting
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = ctx.shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = ctx.shutdown.cancelled() => break,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(10);
                pair
            }
            Err(e) => {
                // Out of file descriptors and the like: wait and try again, never exit.
                tracing::warn!(error = %e, "accept failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let ctx = ctx.clone();
        metrics::counter!("smtp_oauth_relay_inbound_connections_total").increment(1);
        let active = metrics::gauge!("smtp_oauth_relay_inbound_connections_active");
        active.increment(1.0);
        tracker.spawn(async move {
            let _ = socket.set_nodelay(true);
            if let Err(e) = handle(socket, peer, &ctx).await {
                tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
            }
            active.decrement(1.0);
            drop(permit);
        });
    }
    ctx.accepting
        .store(false, std::sync::atomic::Ordering::Relaxed);
    tracing::info!("listener stopped accepting");
}

/// Serves one client until QUIT, timeout, error or shutdown.
async fn handle(
    mut socket: TcpStream,
    peer: SocketAddr,
    ctx: &ListenerContext,
) -> std::io::Result<()> {
    let listen = &ctx.listen;
    if !listen.permits(peer.ip()) {
        tracing::warn!(client = %peer, "connection refused: not in listen.allow");
        metrics::counter!("smtp_oauth_relay_inbound_connections_refused_total", "reason" => "not_allowed")
            .increment(1);
        socket.write_all(&reply::access_denied().to_bytes()).await?;
        return Ok(());
    }
    let mut session = Session::new(
        SessionConfig {
            hostname: listen.hostname.clone(),
            max_message_size: listen.max_message_size,
            max_recipients: listen.max_recipients,
        },
        peer,
    );
    let mut out = session.greeting().to_bytes();
    let mut lines = LineFramer::default();
    let mut input: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 64 * 1024];
    // When the command line now being received started: the command timeout covers a whole
    // line, so a client trickling one byte at a time cannot hold the connection forever.
    let mut line_started: Option<Instant> = None;
    loop {
        // Answer every complete command already received, in order.
        let mut next = Next::Read;
        let mut consumed = 0;
        while let Some((frame, used)) = lines.next_line(&input[consumed..]) {
            consumed += used;
            let action = match frame {
                Framed::Line(line) => session.command(Request::parse(&mut line.iter())),
                Framed::TooLong => Action::Reply(reply::line_too_long()),
                Framed::Skipped => continue,
            };
            match action {
                Action::Reply(r) => r.write_to(&mut out),
                Action::StartData(r) => {
                    r.write_to(&mut out);
                    next = Next::Data;
                    break;
                }
                Action::Close(r) => {
                    r.write_to(&mut out);
                    next = Next::Close;
                    break;
                }
            }
        }
        if next == Next::Read {
            // Everything left is a partial line: the framer keeps it.
            if lines.absorb(&input[consumed..]) {
                reply::line_too_long().write_to(&mut out);
            }
            consumed = input.len();
        }
        input.drain(..consumed);
        if !out.is_empty() {
            send(
                &mut socket,
                &out,
                listen.command_timeout,
                Some(&ctx.shutdown),
            )
            .await?;
            out.clear();
        }
        match next {
            Next::Close => return Ok(()),
            Next::Data => {
                let transaction = session
                    .take_transaction()
                    .expect("DATA needs a transaction");
                match receive_message(
                    &mut socket,
                    &mut input,
                    &mut chunk,
                    &session,
                    transaction,
                    ctx,
                )
                .await?
                {
                    DataEnd::Reply(r) => r.write_to(&mut out),
                    DataEnd::Close(r) => {
                        send(&mut socket, &r.to_bytes(), FAREWELL_TIMEOUT, None).await?;
                        return Ok(());
                    }
                }
                line_started = None;
                continue;
            }
            Next::Read => {}
        }
        let now = Instant::now();
        let deadline = if lines.pending() {
            *line_started.get_or_insert(now) + listen.command_timeout
        } else {
            line_started = None;
            now + listen.command_timeout
        };
        // Wait for more commands (or time out, or shut down).
        let read = tokio::select! {
            r = tokio::time::timeout_at(deadline.into(), socket.read(&mut chunk)) => r,
            _ = ctx.shutdown.cancelled() => {
                let bye = reply::shutting_down(&listen.hostname).to_bytes();
                send(&mut socket, &bye, FAREWELL_TIMEOUT, None).await?;
                return Ok(());
            }
        };
        match read {
            Err(_) => {
                let bye = reply::timeout(&listen.hostname).to_bytes();
                send(&mut socket, &bye, FAREWELL_TIMEOUT, None).await?;
                return Ok(());
            }
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(n)) => input.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// How long a last reply before closing (421, 221 after errors) may take to write.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(5);

/// The slowest body transfer we wait for: beyond `data_timeout` of silence at any point, the
/// whole DATA phase may take at most `data_timeout` plus the largest message at this rate.
const MIN_DATA_RATE: u64 = 32 * 1024;

/// Writes to the client within `limit`, so a client that never reads cannot pin the task.
/// Once the relay is shutting down (`shutdown` cancelled), the write gets at most
/// [`FAREWELL_TIMEOUT`] more: replies already due (e.g. the `250` for a message that was
/// committed during shutdown) are still delivered, never cut off at random.
async fn send(
    socket: &mut TcpStream,
    bytes: &[u8],
    limit: Duration,
    shutdown: Option<&CancellationToken>,
) -> std::io::Result<()> {
    let write = socket.write_all(bytes);
    tokio::pin!(write);
    let result = match shutdown {
        Some(token) => tokio::select! {
            biased;
            r = tokio::time::timeout(limit, &mut write) => r,
            _ = token.cancelled() => tokio::time::timeout(FAREWELL_TIMEOUT, &mut write).await,
        },
        None => tokio::time::timeout(limit, &mut write).await,
    };
    result.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

#[derive(PartialEq, Eq)]
enum Next {
    Read,
    Data,
    Close,
}

enum DataEnd {
    Reply(Reply),
    Close(Reply),
}

/// Receives one message body into the spool, then hands it to delivery. `input` holds bytes
/// already read; on return it holds what followed the end of data (pipelined commands).
async fn receive_message(
    socket: &mut TcpStream,
    input: &mut Vec<u8>,
    chunk: &mut [u8],
    session: &Session,
    transaction: Transaction,
    ctx: &ListenerContext,
) -> std::io::Result<DataEnd> {
    let listen = &ctx.listen;
    // 354 was sent; the client may already be streaming.
    let id = MessageId::generate();
    let received_at = SystemTime::now();
    let mut sink = BodySink::new(&ctx.spool, &id).await;
    let mut header_len = 0u64;
    if listen.received_header {
        let header = received_header(session, &transaction, &id, &listen.hostname, received_at);
        sink.write(header.as_bytes()).await;
        header_len = header.len() as u64;
    }
    let mut decoder = BodyDecoder::new(listen.max_message_size);
    let mut sniffer = crate::wire::header::MessageIdSniffer::new();
    // Used only while the body goes to a file; a body in memory is decoded straight into it.
    let mut decoded = Vec::new();
    let data_deadline = Instant::now()
        + listen.data_timeout
        + Duration::from_secs(listen.max_message_size / MIN_DATA_RATE);
    loop {
        let mut iter = input.iter();
        let progress = match sink.memory_buffer() {
            Some(buf) => {
                let start = buf.len();
                let progress = decoder.ingest(&mut iter, buf);
                sniffer.feed(&buf[start..]);
                progress
            }
            None => decoder.ingest(&mut iter, &mut decoded),
        };
        let consumed = input.len() - iter.as_slice().len();
        input.drain(..consumed);
        if !decoded.is_empty() {
            sniffer.feed(&decoded);
            sink.write(&decoded).await;
            decoded.clear();
        }
        sink.spill_if_big().await;
        if progress == Progress::Done {
            break;
        }
        // DATA in progress finishes even during shutdown; a silent client times out, and so
        // does one that trickles the body slower than MIN_DATA_RATE overall.
        let deadline = (Instant::now() + listen.data_timeout).min(data_deadline);
        match tokio::time::timeout_at(deadline.into(), socket.read(chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                sink.discard(&ctx.spool).await;
                tracing::info!(id = %id, client = %session.peer(), "client went away during DATA; nothing accepted");
                return Ok(DataEnd::Close(reply::timeout(&listen.hostname)));
            }
            Err(_) => {
                sink.discard(&ctx.spool).await;
                tracing::info!(id = %id, client = %session.peer(), "client timed out during DATA; nothing accepted");
                return Ok(DataEnd::Close(reply::timeout(&listen.hostname)));
            }
            Ok(Ok(n)) => input.extend_from_slice(&chunk[..n]),
        }
    }
    if decoder.oversized() {
        sink.discard(&ctx.spool).await;
        return Ok(DataEnd::Reply(reply::message_too_big(
            listen.max_message_size,
        )));
    }
    let Some(body) = sink.finish(&ctx.spool).await else {
        return Ok(DataEnd::Reply(reply::local_error()));
    };
    let size = header_len + decoder.size();
    let envelope = Envelope {
        id,
        mail_from: transaction.mail_from,
        rcpt_to: transaction.rcpt_to,
        client: session.peer(),
        helo: session.helo_name(),
        body_8bit: transaction.body_8bit,
        smtputf8: transaction.smtputf8,
        received_at,
        message_id: sniffer.message_id(),
    };
    let outcome = ctx
        .delivery
        .submit(Spooled {
            envelope,
            body,
            size,
        })
        .await;
    Ok(DataEnd::Reply(super::outcome::reply(&outcome)))
}

/// Longest command line we accept, CRLF included (RFC 5321 §4.5.3.1.4 asks for 512; we allow
/// what smtp-proto allows, for long UTF-8 addresses and parameters).
pub const MAX_COMMAND_LINE: usize = 4096;

/// Splits the command stream into lines, whatever the read boundaries: a line longer than
/// [`MAX_COMMAND_LINE`] is refused once and skipped up to its end, never buffered whole.
#[derive(Debug, Default)]
pub struct LineFramer {
    partial: Vec<u8>,
    skipping: bool,
}

/// What the framer found at the front of the input.
#[derive(Debug, PartialEq, Eq)]
pub enum Framed<'a> {
    /// A complete command line, CRLF included.
    Line(std::borrow::Cow<'a, [u8]>),
    /// A line longer than the limit: refuse it.
    TooLong,
    /// The end of an over-long line that was already refused: nothing to answer.
    Skipped,
}

impl LineFramer {
    /// The next complete line in `input` (joined with any partial line kept from earlier),
    /// and how many bytes of `input` it used.
    pub fn next_line<'a>(&mut self, input: &'a [u8]) -> Option<(Framed<'a>, usize)> {
        let nl = memchr::memchr(b'\n', input)?;
        let used = nl + 1;
        if self.skipping {
            // The refusal was sent when the line passed the limit.
            self.skipping = false;
            self.partial.clear();
            return Some((Framed::Skipped, used));
        }
        if self.partial.len() + used > MAX_COMMAND_LINE {
            self.partial.clear();
            return Some((Framed::TooLong, used));
        }
        let line = if self.partial.is_empty() {
            std::borrow::Cow::Borrowed(&input[..used])
        } else {
            let mut whole = std::mem::take(&mut self.partial);
            whole.extend_from_slice(&input[..used]);
            std::borrow::Cow::Owned(whole)
        };
        Some((Framed::Line(line), used))
    }

    /// Whether part of a command line has been received (or an over-long one is being
    /// skipped).
    pub fn pending(&self) -> bool {
        self.skipping || !self.partial.is_empty()
    }

    /// Keeps a trailing partial line (no LF in `input`); all of `input` is taken. Returns
    /// true when the partial line just passed the limit: the caller refuses it now and the
    /// rest of it is skipped.
    pub fn absorb(&mut self, input: &[u8]) -> bool {
        if self.skipping {
            return false;
        }
        self.partial.extend_from_slice(input);
        if self.partial.len() > MAX_COMMAND_LINE {
            self.partial.clear();
            self.skipping = true;
            return true;
        }
        false
    }
}

/// RFC 5321 §4.4 trace header, folded over three lines.
pub fn received_header(
    session: &Session,
    t: &Transaction,
    id: &MessageId,
    hostname: &str,
    at: SystemTime,
) -> String {
    let protocol = match (session.is_esmtp(), t.smtputf8) {
        (_, true) => "UTF8SMTP",
        (true, false) => "ESMTP",
        (false, false) => "SMTP",
    };
    let date = httpdate::fmt_http_date(at).replace(" GMT", " +0000");
    let for_clause = match t.rcpt_to.as_slice() {
        [one] => format!("\r\n\tfor <{one}>"),
        _ => String::new(),
    };
    format!(
        "Received: from {} ({})\r\n\tby {hostname} (smtp-oauth-relay) with {protocol} id {id}{for_clause};\r\n\t{date}\r\n",
        session.helo_name(),
        format_ip(session.peer()),
    )
}

fn format_ip(peer: SocketAddr) -> String {
    match peer.ip().to_canonical() {
        std::net::IpAddr::V4(v4) => format!("[{v4}]"),
        std::net::IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames everything in `input`: the lines answered (None = refused as too long) and
    /// whether the trailing partial line overflowed.
    fn frame_all(f: &mut LineFramer, input: &[u8]) -> (Vec<Option<Vec<u8>>>, bool) {
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some((frame, used)) = f.next_line(&input[pos..]) {
            pos += used;
            match frame {
                Framed::Line(l) => out.push(Some(l.into_owned())),
                Framed::TooLong => out.push(None),
                Framed::Skipped => {}
            }
        }
        let overflow = f.absorb(&input[pos..]);
        (out, overflow)
    }

    #[test]
    fn framer_joins_partial_lines_and_caps_length() {
        let mut f = LineFramer::default();
        assert_eq!(
            frame_all(&mut f, b"NOOP\r\nRS"),
            (vec![Some(b"NOOP\r\n".to_vec())], false)
        );
        assert_eq!(
            frame_all(&mut f, b"ET\r\n"),
            (vec![Some(b"RSET\r\n".to_vec())], false)
        );
        // Too long in one piece: refused once, following lines still framed.
        let mut long = vec![b'z'; MAX_COMMAND_LINE + 10];
        long.extend_from_slice(b"\r\nQUIT\r\n");
        assert_eq!(
            frame_all(&mut f, &long),
            (vec![None, Some(b"QUIT\r\n".to_vec())], false)
        );
        // Too long across reads: refused when it passes the limit, then skipped to its end.
        let (lines, overflow) = frame_all(&mut f, &vec![b'z'; MAX_COMMAND_LINE + 1]);
        assert!(lines.is_empty() && overflow);
        assert_eq!(frame_all(&mut f, &vec![b'z'; 10_000]), (vec![], false));
        assert_eq!(
            frame_all(&mut f, b"zz\r\nNOOP\r\n"),
            (vec![Some(b"NOOP\r\n".to_vec())], false)
        );
        // The skipped end arriving alone, then the next command split across reads.
        let (lines, overflow) = frame_all(&mut f, &vec![b'z'; MAX_COMMAND_LINE + 1]);
        assert!(lines.is_empty() && overflow);
        assert_eq!(frame_all(&mut f, b"zz\r\nNO"), (vec![], false));
        assert_eq!(
            frame_all(&mut f, b"OP\r\n"),
            (vec![Some(b"NOOP\r\n".to_vec())], false)
        );
        // Exactly at the limit is fine.
        let mut max = vec![b'a'; MAX_COMMAND_LINE - 2];
        max.extend_from_slice(b"\r\n");
        assert_eq!(frame_all(&mut f, &max).0, vec![Some(max.clone())]);
    }

    #[test]
    fn received_header_shape() {
        let mut s = Session::new(
            SessionConfig {
                hostname: "relay.test".into(),
                max_message_size: 100,
                max_recipients: 10,
            },
            "127.0.0.1:5000".parse().unwrap(),
        );
        s.command(Request::parse(&mut b"EHLO app.example\r\n".iter()));
        let t = Transaction {
            mail_from: "a@x".into(),
            rcpt_to: vec!["b@y".into()],
            ..Default::default()
        };
        let id = MessageId::generate();
        let h = received_header(&s, &t, &id, "relay.test", SystemTime::UNIX_EPOCH);
        assert_eq!(
            h,
            format!("Received: from app.example ([127.0.0.1])\r\n\tby relay.test (smtp-oauth-relay) with ESMTP id {id}\r\n\tfor <b@y>;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n")
        );
        assert!(h.lines().all(|l| l.len() < 998));
    }
}
