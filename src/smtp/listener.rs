//! The tokio driver for inbound SMTP: accept under a connection limit, one task per client,
//! timeouts on every read, replies batched for pipelining, DATA streamed to the spool.
//!
//! Decisions live in `session` (commands) and `data` (body decoding); this file only moves
//! bytes, files and time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use smtp_proto::request::receiver::RequestReceiver;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::data::{BodyDecoder, Progress};
use super::reply::{self, Reply};
use super::session::{Action, Session, SessionConfig, Transaction};
use crate::config::ValidListen;
use crate::delivery::{Dispatcher, Spooled};
use crate::envelope::{Envelope, MessageId};
use crate::spool::Spool;

/// What every connection task shares.
pub struct ListenerContext {
    pub listen: ValidListen,
    pub dispatcher: Arc<Dispatcher>,
    pub spool: Spool,
    pub shutdown: CancellationToken,
}

/// Accepts connections until `shutdown` is cancelled. A permit is taken *before* accepting,
/// so at most `max_connections` clients are served and the rest wait in the backlog.
pub async fn run(listener: TcpListener, ctx: Arc<ListenerContext>, tracker: TaskTracker) {
    let limit = Arc::new(Semaphore::new(ctx.listen.max_connections));
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
        tracker.spawn(async move {
            let _ = socket.set_nodelay(true);
            if let Err(e) = handle(socket, peer, &ctx).await {
                tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
            }
            drop(permit);
        });
    }
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
    let mut receiver = RequestReceiver::default();
    let mut input: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Answer every complete command already received, in order.
        let mut next = Next::Read;
        let consumed = {
            let mut iter = input.iter();
            loop {
                match receiver.ingest(&mut iter) {
                    Err(smtp_proto::Error::NeedsMoreData { .. }) => break,
                    result => match session.command(result) {
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
                    },
                }
            }
            input.len() - iter.as_slice().len()
        };
        input.drain(..consumed);
        if !out.is_empty() {
            socket.write_all(&out).await?;
            out.clear();
        }
        match next {
            Next::Close => return Ok(()),
            Next::Data => {
                let transaction = session.take_transaction().expect("DATA needs a transaction");
                match receive_message(&mut socket, &mut input, &mut chunk, &session, transaction, ctx)
                    .await?
                {
                    DataEnd::Reply(r) => r.write_to(&mut out),
                    DataEnd::Close(r) => {
                        socket.write_all(&r.to_bytes()).await?;
                        return Ok(());
                    }
                }
                continue;
            }
            Next::Read => {}
        }
        // Wait for more commands (or time out, or shut down).
        let read = tokio::select! {
            r = tokio::time::timeout(listen.command_timeout, socket.read(&mut chunk)) => r,
            _ = ctx.shutdown.cancelled() => {
                socket.write_all(&reply::shutting_down(&listen.hostname).to_bytes()).await?;
                return Ok(());
            }
        };
        match read {
            Err(_) => {
                socket.write_all(&reply::timeout(&listen.hostname).to_bytes()).await?;
                return Ok(());
            }
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(n)) => input.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e),
        }
    }
}

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
    let path = ctx.spool.incoming_path(&id);
    let mut writer = match tokio::fs::File::create(&path).await {
        Ok(f) => Some(BufWriter::with_capacity(256 * 1024, f)),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot create spool file");
            None
        }
    };
    if listen.received_header {
        let header = received_header(session, &transaction, &id, &listen.hostname, received_at);
        write_or_fail(&mut writer, header.as_bytes()).await;
    }
    let mut decoder = BodyDecoder::new(listen.max_message_size);
    let mut decoded = Vec::with_capacity(64 * 1024);
    loop {
        let (progress, consumed) = {
            let mut iter = input.iter();
            let progress = decoder.ingest(&mut iter, &mut decoded);
            (progress, input.len() - iter.as_slice().len())
        };
        input.drain(..consumed);
        if !decoded.is_empty() {
            write_or_fail(&mut writer, &decoded).await;
            decoded.clear();
        }
        if progress == Progress::Done {
            break;
        }
        // DATA in progress finishes even during shutdown; only a silent client times out.
        match tokio::time::timeout(listen.data_timeout, socket.read(chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                ctx.spool.discard(&path).await;
                tracing::info!(id = %id, client = %session.peer(), "client went away during DATA; nothing accepted");
                return Ok(DataEnd::Close(reply::timeout(&listen.hostname)));
            }
            Err(_) => {
                ctx.spool.discard(&path).await;
                tracing::info!(id = %id, client = %session.peer(), "client timed out during DATA; nothing accepted");
                return Ok(DataEnd::Close(reply::timeout(&listen.hostname)));
            }
            Ok(Ok(n)) => input.extend_from_slice(&chunk[..n]),
        }
    }
    let flushed = match writer.as_mut() {
        Some(w) => w.flush().await.is_ok(),
        None => false,
    };
    drop(writer);
    if decoder.oversized() {
        ctx.spool.discard(&path).await;
        return Ok(DataEnd::Reply(reply::message_too_big(listen.max_message_size)));
    }
    if !flushed {
        ctx.spool.discard(&path).await;
        return Ok(DataEnd::Reply(reply::local_error()));
    }
    let size = match tokio::fs::metadata(&path).await {
        Ok(m) => m.len(),
        Err(_) => {
            ctx.spool.discard(&path).await;
            return Ok(DataEnd::Reply(reply::local_error()));
        }
    };
    let envelope = Envelope {
        id,
        mail_from: transaction.mail_from,
        rcpt_to: transaction.rcpt_to,
        client: session.peer(),
        helo: session.helo_name(),
        body_8bit: transaction.body_8bit,
        smtputf8: transaction.smtputf8,
        received_at,
    };
    let reply = ctx
        .dispatcher
        .submit(Spooled {
            envelope,
            path,
            size,
        })
        .await;
    Ok(DataEnd::Reply(reply))
}

/// Writes to the spool file; after the first failure the rest of the body is only read and
/// dropped, so the session can answer `451` at the end of DATA.
async fn write_or_fail<W: AsyncWrite + Unpin>(writer: &mut Option<W>, bytes: &[u8]) {
    if let Some(w) = writer.as_mut() {
        if let Err(e) = w.write_all(bytes).await {
            tracing::error!(error = %e, "spool write failed");
            *writer = None;
        }
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
        let mut r = RequestReceiver::default();
        s.command(r.ingest(&mut b"EHLO app.example\r\n".iter()));
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
