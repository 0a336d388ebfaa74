//! One client connection: reads commands, answers them (batched, for pipelining), streams
//! DATA into the spool and hands the message to delivery, with a deadline on every read and
//! write. Generic over the stream (a `TcpStream` in the relay, `tokio::io::duplex` in the
//! tests below, which run every timeout on tokio's paused clock) and over where a message
//! goes ([`Deliver`]).
//!
//! Decisions live elsewhere: `session` (commands), `framing` (lines), `wire::data` (the
//! body), `outcome` (the reply to DATA). This file only moves bytes and time.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::framing::{Framed, LineFramer};
use super::received::received_header;
use super::reply::{self, Reply};
use super::session::{Action, Session, SessionConfig, Transaction};
use super::ListenSettings;
use crate::delivery::{Delivery, Spooled, Submitted};
use crate::envelope::{Envelope, MessageId};
use crate::spool::sink::BodySink;
use crate::spool::Spool;
use crate::wire::data::{BodyDecoder, Progress};
use crate::wire::header::MessageIdSniffer;

/// Where a complete message goes: delivery, in the relay; a stand-in in tests.
pub trait Deliver: Send + Sync + 'static {
    /// Takes the message and says what became of it.
    fn submit(&self, msg: Spooled) -> impl Future<Output = Submitted> + Send;
}

impl Deliver for Arc<Delivery> {
    fn submit(&self, msg: Spooled) -> impl Future<Output = Submitted> + Send {
        Delivery::submit(self, msg)
    }
}

/// What every connection of a listener shares.
pub struct Context<D> {
    pub listen: ListenSettings,
    pub deliver: D,
    pub spool: Spool,
    /// Cancelled when the relay stops: idle clients get `421`, DATA in progress finishes.
    pub shutdown: CancellationToken,
}

/// How long a last reply before closing (421, 221 after errors) may take to write.
pub const FAREWELL_TIMEOUT: Duration = Duration::from_secs(5);

/// The slowest body transfer we wait for: beyond `data_timeout` of silence at any point, the
/// whole DATA phase may take at most `data_timeout` plus the largest message at this rate.
pub const MIN_DATA_RATE: u64 = 32 * 1024;

/// Serves one client until QUIT, timeout, error or shutdown.
pub async fn serve<S, D>(mut socket: S, peer: SocketAddr, ctx: &Context<D>) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    D: Deliver,
{
    let listen = &ctx.listen;
    if !listen.permits(peer.ip()) {
        tracing::warn!(client = %peer, "connection refused: not in listen.allow");
        metrics::counter!("smtp_oauth_relay_inbound_connections_refused_total", "reason" => "not_allowed")
            .increment(1);
        let denied = reply::access_denied().to_bytes();
        return send(&mut socket, &denied, FAREWELL_TIMEOUT, None).await;
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
                Framed::Line(line) => session.line(&line),
                Framed::TooLong => Action::Reply(reply::line_too_long()),
                Framed::Skipped => continue,
            };
            match action {
                Action::Reply(r) => r.write_to(&mut out),
                Action::StartData(r, transaction) => {
                    r.write_to(&mut out);
                    next = Next::Data(transaction);
                    break;
                }
                Action::Close(r) => {
                    r.write_to(&mut out);
                    next = Next::Close;
                    break;
                }
            }
        }
        if matches!(next, Next::Read) {
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
            Next::Data(transaction) => {
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
            r = tokio::time::timeout_at(deadline, socket.read(&mut chunk)) => r,
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

/// Writes to the client within `limit`, so a client that never reads cannot pin the task.
/// Once the relay is shutting down (`shutdown` cancelled), the write gets at most
/// [`FAREWELL_TIMEOUT`] more: replies already due (e.g. the `250` for a message that was
/// committed during shutdown) are still delivered, never cut off at random.
async fn send<S: AsyncWrite + Unpin>(
    socket: &mut S,
    bytes: &[u8],
    limit: Duration,
    shutdown: Option<&CancellationToken>,
) -> io::Result<()> {
    let write = async {
        socket.write_all(bytes).await?;
        socket.flush().await
    };
    tokio::pin!(write);
    let result = match shutdown {
        Some(token) => tokio::select! {
            biased;
            r = tokio::time::timeout(limit, &mut write) => r,
            _ = token.cancelled() => tokio::time::timeout(FAREWELL_TIMEOUT, &mut write).await,
        },
        None => tokio::time::timeout(limit, &mut write).await,
    };
    result.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

enum Next {
    Read,
    /// Read the body of this transaction.
    Data(Transaction),
    Close,
}

enum DataEnd {
    Reply(Reply),
    Close(Reply),
}

/// Receives one message body into the spool, then hands it to delivery. `input` holds bytes
/// already read; on return it holds what followed the end of data (pipelined commands).
async fn receive_message<S, D>(
    socket: &mut S,
    input: &mut Vec<u8>,
    chunk: &mut [u8],
    session: &Session,
    transaction: Transaction,
    ctx: &Context<D>,
) -> io::Result<DataEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
    D: Deliver,
{
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
    let mut sniffer = MessageIdSniffer::new();
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
        match tokio::time::timeout_at(deadline, socket.read(chunk)).await {
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
    let body = match sink.finish(&ctx.spool).await {
        Ok(body) => body,
        Err(fault) => return Ok(DataEnd::Reply(reply::spool_failed(fault))),
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
    let submitted = ctx
        .deliver
        .submit(Spooled {
            envelope,
            body,
            size,
        })
        .await;
    let reply = super::outcome::reply(&submitted.outcome);
    if let Some(refused) = &submitted.refused {
        refused.record(&reply.to_string());
    }
    Ok(DataEnd::Reply(reply))
}

/// Every timeout of the inbound side, on tokio's paused clock: the times asserted are exact.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{Outcome, Queued};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::DuplexStream;
    use tokio::task::JoinHandle;

    const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
    const DATA_TIMEOUT: Duration = Duration::from_secs(10);
    const MAX_SIZE: u64 = 64 * 1024;

    /// Delivery's stand-in: counts messages and queues them.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl Deliver for Arc<Counting> {
        fn submit(&self, msg: Spooled) -> impl Future<Output = Submitted> + Send {
            self.0.fetch_add(1, Ordering::SeqCst);
            async move {
                Submitted::kept(Outcome::Queued {
                    id: msg.envelope.id.to_string(),
                    why: Queued::Accepted,
                })
            }
        }
    }

    struct Client {
        io: DuplexStream,
        buf: Vec<u8>,
        server: JoinHandle<io::Result<()>>,
        ctx: Arc<Context<Arc<Counting>>>,
        _dir: tempfile::TempDir,
    }

    fn settings() -> ListenSettings {
        ListenSettings {
            address: "127.0.0.1:0".parse().unwrap(),
            allow: Vec::new(),
            hostname: "relay.test".into(),
            max_connections: 10,
            max_message_size: MAX_SIZE,
            max_recipients: 10,
            command_timeout: COMMAND_TIMEOUT,
            data_timeout: DATA_TIMEOUT,
            received_header: false,
        }
    }

    /// Starts a connection from `peer` over an in-memory pipe of `buffer` bytes each way.
    fn connect(peer: &str, buffer: usize) -> Client {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let ctx = Arc::new(Context {
            listen: settings(),
            deliver: Arc::new(Counting::default()),
            spool,
            shutdown: CancellationToken::new(),
        });
        let (io, server_end) = tokio::io::duplex(buffer);
        let peer: SocketAddr = peer.parse().unwrap();
        let server = tokio::spawn({
            let ctx = ctx.clone();
            async move { serve(server_end, peer, &ctx).await }
        });
        Client {
            io,
            buf: Vec::new(),
            server,
            ctx,
            _dir: dir,
        }
    }

    impl Client {
        async fn send(&mut self, bytes: &[u8]) {
            self.io.write_all(bytes).await.unwrap();
        }

        /// The next reply, or `None` when the server closed the connection.
        async fn reply(&mut self) -> Option<Reply> {
            loop {
                if let Some((r, used)) = Reply::parse(&self.buf).unwrap() {
                    self.buf.drain(..used);
                    return Some(r);
                }
                let mut chunk = [0u8; 4096];
                match self.io.read(&mut chunk).await.unwrap() {
                    0 => return None,
                    n => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        }

        async fn expect(&mut self, code: u16) -> Reply {
            let r = self.reply().await.expect("a reply");
            assert_eq!(r.code, code, "{r}");
            r
        }

        async fn start_data(&mut self) {
            self.expect(220).await;
            self.send(b"EHLO app\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n")
                .await;
            for code in [250, 250, 250, 354] {
                self.expect(code).await;
            }
        }

        fn submitted(&self) -> usize {
            self.ctx.deliver.0.load(Ordering::SeqCst)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_client_gets_421_after_the_command_timeout() {
        let mut c = connect("127.0.0.1:4000", 64 * 1024);
        c.expect(220).await;
        let start = Instant::now();
        let r = c.expect(421).await;
        assert_eq!(start.elapsed(), COMMAND_TIMEOUT);
        assert_eq!(r.status(), Some("4.4.2"));
        assert!(c.reply().await.is_none(), "then the connection closes");
        c.server.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_line_trickled_in_times_out_from_its_first_byte() {
        let mut c = connect("127.0.0.1:4000", 64 * 1024);
        c.expect(220).await;
        c.send(b"NOOP\r\n").await;
        c.expect(250).await;
        let first_byte = Instant::now();
        c.send(b"NO").await;
        tokio::time::sleep(COMMAND_TIMEOUT - Duration::from_secs(100)).await;
        c.send(b"O").await; // more bytes, but the same line: the deadline stays
        let r = c.expect(421).await;
        assert_eq!(first_byte.elapsed(), COMMAND_TIMEOUT);
        assert_eq!(r.status(), Some("4.4.2"));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_during_data_gets_421_and_nothing_is_accepted() {
        let mut c = connect("127.0.0.1:4000", 64 * 1024);
        c.start_data().await;
        c.send(b"Subject: half\r\n").await;
        let start = Instant::now();
        let r = c.expect(421).await;
        assert_eq!(start.elapsed(), DATA_TIMEOUT);
        assert_eq!(r.status(), Some("4.4.2"));
        assert!(c.reply().await.is_none());
        assert_eq!(c.submitted(), 0, "a message cut off is never handed on");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_trickled_below_the_minimum_rate_times_out_as_a_whole() {
        let mut c = connect("127.0.0.1:4000", 64 * 1024);
        c.start_data().await;
        let start = Instant::now();
        // One byte every 5 s: never silent for DATA_TIMEOUT, but far below MIN_DATA_RATE.
        let io = &mut c.io;
        let trickle = async {
            while io.write_all(b"x").await.is_ok() {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            std::future::pending::<()>().await
        };
        let ended = tokio::time::timeout(Duration::from_secs(3600), async {
            tokio::select! {
                r = &mut c.server => r,
                _ = trickle => unreachable!(),
            }
        })
        .await
        .expect("the whole DATA phase has a deadline");
        ended.unwrap().unwrap();
        let whole = DATA_TIMEOUT + Duration::from_secs(MAX_SIZE / MIN_DATA_RATE);
        assert_eq!(start.elapsed(), whole);
        let r = c.expect(421).await;
        assert_eq!(r.status(), Some("4.4.2"));
        assert_eq!(c.submitted(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_reads_is_dropped_after_the_command_timeout() {
        // 256 bytes each way: forty NOOPs fit, their forty replies do not.
        let mut c = connect("127.0.0.1:4000", 256);
        c.send(&b"NOOP\r\n".repeat(40)).await;
        let start = Instant::now();
        let result = (&mut c.server).await.unwrap();
        assert_eq!(start.elapsed(), COMMAND_TIMEOUT);
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_says_421_to_an_idle_client() {
        let mut c = connect("127.0.0.1:4000", 64 * 1024);
        c.expect(220).await;
        c.ctx.shutdown.cancel();
        let r = c.expect(421).await;
        assert_eq!(r.status(), Some("4.3.2"));
        assert!(c.reply().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_lets_data_in_progress_finish_and_answers_it() {
        let mut c = connect("127.0.0.1:4000", 64 * 1024);
        c.start_data().await;
        c.send(b"Subject: late\r\n\r\n").await;
        c.ctx.shutdown.cancel();
        tokio::time::sleep(DATA_TIMEOUT / 2).await;
        c.send(b"the rest\r\n.\r\n").await;
        let r = c.expect(250).await;
        assert!(r.text().contains("queued for delivery"), "{r}");
        assert_eq!(c.submitted(), 1);
        assert_eq!(c.expect(421).await.status(), Some("4.3.2"));
    }

    #[tokio::test(start_paused = true)]
    async fn during_shutdown_a_client_that_never_reads_gets_the_farewell_timeout() {
        let mut c = connect("127.0.0.1:4000", 256);
        c.send(&b"NOOP\r\n".repeat(40)).await;
        // Let the server fill the pipe and block on its write.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!c.server.is_finished());
        let start = Instant::now();
        c.ctx.shutdown.cancel();
        let result = (&mut c.server).await.unwrap();
        assert_eq!(start.elapsed(), FAREWELL_TIMEOUT);
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_client_that_never_reads_is_dropped_after_the_farewell_timeout() {
        // 16 bytes each way: the 554 does not fit, and the client reads nothing.
        let mut c = connect("10.0.0.7:4000", 16);
        let start = Instant::now();
        let result = (&mut c.server).await.unwrap();
        assert_eq!(start.elapsed(), FAREWELL_TIMEOUT);
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_outside_listen_allow_is_refused_at_once() {
        let mut c = connect("10.0.0.7:4000", 64 * 1024);
        let r = c.expect(554).await;
        assert_eq!(r.status(), Some("5.7.1"));
        assert!(c.reply().await.is_none());
        c.server.await.unwrap().unwrap();
    }
}
