//! One client connection: reads commands, answers them (batched, for pipelining), streams
//! DATA into the spool and hands the message to delivery, with a deadline on every read and
//! write. Generic over the stream (a `TcpStream` in the relay, `tokio::io::duplex` in the
//! tests below, which run every timeout on tokio's paused clock) and over where a message
//! goes ([`Deliver`]).
//!
//! Decisions live elsewhere: `session` (commands), `framing` (lines), `wire::data` (the
//! body), `outcome` (the reply to DATA), `auth` (the SASL exchange and its checks). This file
//! only moves bytes and time, and switches the stream to TLS (`STARTTLS`, or at once on the
//! implicit-TLS port).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::auth::{self, Dialog, Step};
use super::context::{read_some, shrink};
pub use super::context::{Context, Deliver};
use super::framing::{Framed, LineFramer};
pub use super::limits::MIN_DATA_RATE;
use super::limits::{Budget, CommandWait, Slot, Timeouts};
use super::message::{self, DataEnd};
use super::reply;
use super::session::{Action, Session, SessionConfig, Transaction};
use super::stream::Stream;
use crate::wire::data::Terminator;
use smtp_proto::Request;

/// How long a last reply before closing (421, 221 after errors) may take to write.
pub const FAREWELL_TIMEOUT: Duration = Duration::from_secs(5);

/// Which door a client came in by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// The SMTP port: plain, STARTTLS when offered.
    Plain,
    /// The implicit-TLS port (465 style): the handshake comes before the greeting.
    ImplicitTls,
}

/// Serves one client of the plain port (see [`serve_at`]).
pub async fn serve<S, D>(
    socket: S,
    peer: SocketAddr,
    ctx: &Context<D>,
    slot: &Slot,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    D: Deliver,
{
    serve_at(socket, peer, ctx, slot, Door::Plain).await
}

/// Serves one client until QUIT, timeout, a limit, error or shutdown. `slot` is the
/// connection slot the listener took for it (stress and the per-client count).
pub async fn serve_at<S, D>(
    socket: S,
    peer: SocketAddr,
    ctx: &Context<D>,
    slot: &Slot,
    door: Door,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    D: Deliver,
{
    let mut socket = Stream::Plain(socket);
    let listen = &ctx.listen;
    if !listen.permits(peer.ip()) {
        tracing::warn!(client = %peer, "connection refused: not in listen.allow");
        metrics::counter!("smtp_oauth_relay_inbound_connections_refused_total", "reason" => "not_allowed")
            .increment(1);
        let denied = reply::access_denied().to_bytes();
        return send(&mut socket, &denied, FAREWELL_TIMEOUT, None).await;
    }
    if slot.over_client_limit() {
        tracing::warn!(client = %peer, limit = listen.max_connections_per_client, "connection refused: too many from this address");
        metrics::counter!("smtp_oauth_relay_inbound_connections_refused_total", "reason" => "per_client_limit")
            .increment(1);
        let bye = reply::too_many_connections(&listen.hostname).to_bytes();
        return send(&mut socket, &bye, FAREWELL_TIMEOUT, None).await;
    }
    let mut session = Session::new(
        SessionConfig {
            hostname: listen.hostname.clone(),
            max_message_size: listen.max_message_size,
            max_recipients: listen.max_recipients,
            security: listen.security(),
        },
        peer,
    );
    let timeouts = Timeouts {
        command: listen.command_timeout,
        data: listen.data_timeout,
        stress: listen.stress_timeout,
        session_end: Instant::now() + listen.max_session,
        max_message_size: listen.max_message_size,
    };
    if door == Door::ImplicitTls {
        if !start_tls(
            &mut socket,
            ctx,
            peer,
            timeouts.write_limit(slot.stressed()),
        )
        .await
        {
            return Ok(());
        }
        session.tls_started();
    }
    // Asked only where AUTH is required: every other connection skips the limiter's lock.
    let paused = match listen.auth.required {
        true => listen.auth.paused(peer.ip()),
        false => None,
    };
    if let Some(wait) = paused {
        // Still serving a pause for failed AUTH where nothing works without it: no session
        // until it is over. (Where AUTH is optional, only AUTH is refused: apps at the same
        // address that never log in keep working.)
        let bye = reply::auth_paused(&listen.hostname, wait).to_bytes();
        return send(&mut socket, &bye, FAREWELL_TIMEOUT, None).await;
    }
    let mut budget = Budget::new(listen.max_junk_commands, listen.max_messages_per_session);
    let mut out = session.greeting().to_bytes();
    let mut lines = LineFramer::default();
    let mut input: Vec<u8> = Vec::new();
    // When the command line now being received started: the command timeout covers a whole
    // line, so a client trickling one byte at a time cannot hold the connection forever.
    let mut line_started: Option<Instant> = None;
    // A SASL exchange in progress: its lines are answers, not commands.
    let mut dialog: Option<Dialog> = None;
    loop {
        // Answer every complete command already received, in order.
        let mut next = Next::Read;
        let mut consumed = 0;
        while let Some((frame, used)) = lines.next_line(&input[consumed..]) {
            consumed += used;
            if let Some(d) = dialog.as_mut() {
                let step = match frame {
                    Framed::Line(line) => d.answer(&line),
                    Framed::TooLong => Step::Failed(reply::line_too_long()),
                    Framed::Skipped => continue,
                };
                match step {
                    Step::Challenge(r) => r.write_to(&mut out),
                    Step::Failed(r) => {
                        dialog = None;
                        r.write_to(&mut out);
                    }
                    Step::Verify(credentials) => {
                        dialog = None;
                        next = Next::Verify(credentials);
                        break;
                    }
                }
                continue;
            }
            let action = match frame {
                Framed::Line(line) => match super::session::parse_line(&line) {
                    Ok(request) => match budget.check(&request, &listen.hostname) {
                        Some(bye) => Action::Close(bye),
                        None => {
                            let mail = matches!(request, Ok(Request::Mail { .. }));
                            let action = session.command(request);
                            if mail {
                                route_sender(&mut session, action, &ctx.deliver, peer)
                            } else {
                                action
                            }
                        }
                    },
                    Err(refusal) => Action::Reply(refusal),
                },
                Framed::TooLong => Action::Reply(reply::line_too_long()),
                Framed::Skipped => continue,
            };
            // Every refused command counts as junk, whatever refused it.
            let action = match action {
                Action::Reply(r) if !r.is_positive() => match budget.refused(&listen.hostname) {
                    Some(bye) => Action::Close(bye),
                    None => Action::Reply(r),
                },
                other => other,
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
                Action::StartTls(r) => {
                    r.write_to(&mut out);
                    next = Next::StartTls;
                    break;
                }
                Action::Auth { mechanism, initial } => {
                    if let Some(wait) = listen.auth.paused(peer.ip()) {
                        reply::auth_paused_try_later(wait).write_to(&mut out);
                        continue;
                    }
                    let (pending, step) =
                        Dialog::start(mechanism, initial.as_ref().map(|i| i.expose()));
                    dialog = pending;
                    match step {
                        Step::Challenge(r) | Step::Failed(r) => r.write_to(&mut out),
                        Step::Verify(credentials) => {
                            next = Next::Verify(credentials);
                            break;
                        }
                    }
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
        shrink(&mut input);
        if !out.is_empty() {
            let limit = timeouts.write_limit(slot.stressed());
            send(&mut socket, &out, limit, Some(&ctx.shutdown)).await?;
            out.clear();
            out.shrink_to(4096);
        }
        match next {
            Next::Close => {
                if socket.is_tls() {
                    // TLS ends with close_notify, so the client can tell an end from a cut.
                    let _ = tokio::time::timeout(FAREWELL_TIMEOUT, socket.shutdown()).await;
                }
                return Ok(());
            }
            Next::StartTls => {
                // Whatever the client sent after STARTTLS was sent in the clear: never
                // read it as if it came inside TLS (CVE-2011-0411, "STARTTLS injection").
                input.clear();
                lines = LineFramer::default();
                let limit = timeouts.write_limit(slot.stressed());
                if !start_tls(&mut socket, ctx, peer, limit).await {
                    return Ok(());
                }
                session.tls_started();
                line_started = None;
                continue;
            }
            Next::Verify(credentials) => {
                match auth::verify(&listen.auth, credentials, peer).await {
                    Ok(user) => {
                        session.authenticated(user);
                        reply::auth_succeeded().write_to(&mut out);
                    }
                    Err(auth::Refused::TryAgain) => reply::auth_failed().write_to(&mut out),
                    Err(auth::Refused::Pause(wait)) => {
                        let bye = reply::auth_paused(&listen.hostname, wait).to_bytes();
                        send(&mut socket, &bye, FAREWELL_TIMEOUT, None).await?;
                        return Ok(());
                    }
                }
                continue;
            }
            Next::Data(transaction) => {
                // A client that has sent only bare-LF lines may end its data with LF . LF;
                // one CRLF line and only CRLF . CRLF ends it (no smuggling).
                session.set_data_terminator(if lines.only_bare_lf() {
                    Terminator::AlsoBareLf
                } else {
                    Terminator::CrlfOnly
                });
                let end = message::receive(
                    &mut socket,
                    &mut input,
                    &session,
                    transaction,
                    ctx,
                    &timeouts,
                    slot,
                )
                .await?;
                match end {
                    DataEnd::Reply { reply, accepted } => {
                        if accepted {
                            budget.message_accepted();
                        }
                        reply.write_to(&mut out)
                    }
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
        if lines.pending() {
            line_started.get_or_insert(now);
        } else {
            line_started = None;
        }
        let (deadline, why) = timeouts.command_deadline(now, line_started, slot.stressed());
        // Wait for more commands (or time out, or shut down).
        let read = tokio::select! {
            r = tokio::time::timeout_at(deadline, read_some(&mut socket, &mut input)) => r,
            _ = ctx.shutdown.cancelled() => {
                let bye = reply::shutting_down(&listen.hostname).to_bytes();
                send(&mut socket, &bye, FAREWELL_TIMEOUT, None).await?;
                return Ok(());
            }
        };
        match read {
            Err(_) => {
                let bye = match why {
                    CommandWait::Timeout => reply::timeout(&listen.hostname),
                    CommandWait::SessionTooLong => reply::session_too_long(&listen.hostname),
                };
                send(&mut socket, &bye.to_bytes(), FAREWELL_TIMEOUT, None).await?;
                return Ok(());
            }
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// After an accepted `MAIL FROM`: a sender no route takes is refused with `550 5.7.1` and
/// its transaction dropped, so the client never sends a body that has nowhere to go.
fn route_sender<D: Deliver>(
    session: &mut Session,
    action: Action,
    deliver: &D,
    peer: SocketAddr,
) -> Action {
    let Action::Reply(r) = &action else {
        return action;
    };
    if !r.is_positive() {
        return action;
    }
    let Some(sender) = session.transaction().map(|t| t.mail_from.clone()) else {
        return action;
    };
    let user = session.user().map(|u| u.name.clone());
    match deliver.check_sender(&sender, peer.ip(), user.as_deref()) {
        Ok(()) => action,
        Err(why) => {
            session.drop_transaction();
            tracing::info!(client = %peer, sender = %crate::wire::header::terminal_safe(&sender), "sender refused at MAIL FROM: no route");
            Action::Reply(reply::sender_not_routed(&why))
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

/// The TLS handshake, bounded by `limit`: the command timeout, or the stress timeout while
/// the listener is under stress (a client that never says its ClientHello must not hold a
/// slot longer than an idle one). `false`: it failed (logged), and the connection is over.
async fn start_tls<S, D>(
    socket: &mut Stream<S>,
    ctx: &Context<D>,
    peer: SocketAddr,
    limit: Duration,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
    D: Deliver,
{
    let Some(tls) = ctx.listen.tls.as_ref() else {
        return false;
    };
    let handshake = tokio::time::timeout(limit, socket.start_tls(tls.acceptor()));
    let result = tokio::select! {
        r = handshake => r,
        _ = ctx.shutdown.cancelled() => return false,
    };
    match result {
        Ok(Ok(())) => {
            tracing::debug!(client = %peer, tls = socket.tls_description().unwrap_or_default(), "TLS started");
            true
        }
        Ok(Err(e)) => {
            tracing::info!(client = %peer, error = %e, "TLS handshake failed");
            metrics::counter!("smtp_oauth_relay_inbound_tls_failures_total").increment(1);
            false
        }
        Err(_) => {
            tracing::info!(client = %peer, "TLS handshake timed out");
            metrics::counter!("smtp_oauth_relay_inbound_tls_failures_total").increment(1);
            false
        }
    }
}

enum Next {
    Read,
    /// Read the body of this transaction.
    Data(Transaction),
    Close,
    /// Switch the stream to TLS.
    StartTls,
    /// Check the credentials of a finished SASL exchange.
    Verify(auth::Credentials),
}

/// Every timeout of the inbound side, on tokio's paused clock: the times asserted are exact.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{Outcome, Queued, Spooled, Submitted};
    use crate::smtp::limits::Slots;
    use crate::smtp::reply::Reply;
    use crate::smtp::ListenSettings;
    use crate::spool::Spool;
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, DuplexStream};
    use tokio::task::JoinHandle;

    const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
    const DATA_TIMEOUT: Duration = Duration::from_secs(10);
    const MAX_SIZE: u64 = 64 * 1024;
    const STRESS_TIMEOUT: Duration = Duration::from_secs(5);
    const MAX_SESSION: Duration = Duration::from_secs(1800);

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
            allow: vec!["192.0.2.0/24".parse().unwrap()],
            hostname: "relay.test".into(),
            max_connections: 10,
            max_message_size: MAX_SIZE,
            max_recipients: 10,
            command_timeout: COMMAND_TIMEOUT,
            data_timeout: DATA_TIMEOUT,
            stress_timeout: STRESS_TIMEOUT,
            max_session: MAX_SESSION,
            max_junk_commands: 100,
            max_messages_per_session: 3,
            max_connections_per_client: 2,
            received_header: false,
            tls: None,
            implicit_tls_address: None,
            require_tls: false,
            auth: crate::smtp::auth::InboundAuth::default(),
        }
    }

    /// Starts a connection from `peer` over an in-memory pipe of `buffer` bytes each way.
    fn connect(peer: &str, buffer: usize) -> Client {
        connect_to(peer, buffer, &Slots::new(10, 2))
    }

    /// As [`connect`], taking a slot from `slots` (shared with other connections).
    fn connect_to(peer: &str, buffer: usize, slots: &Arc<Slots>) -> Client {
        connect_door(peer, buffer, slots, settings(), Door::Plain)
    }

    /// As [`connect_to`], with these settings, through this door.
    fn connect_door(
        peer: &str,
        buffer: usize,
        slots: &Arc<Slots>,
        listen: ListenSettings,
        door: Door,
    ) -> Client {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let ctx = Arc::new(Context {
            listen,
            deliver: Arc::new(Counting::default()),
            spool,
            shutdown: CancellationToken::new(),
        });
        let (io, server_end) = tokio::io::duplex(buffer);
        let peer: SocketAddr = peer.parse().unwrap();
        let slot = slots.enter(peer.ip());
        let server = tokio::spawn({
            let ctx = ctx.clone();
            async move { serve_at(server_end, peer, &ctx, &slot, door).await }
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

    /// Slots of a listener of 10 with 8 already taken: the next connection makes 9 (stress).
    fn crowded() -> (Arc<Slots>, Vec<crate::smtp::limits::Slot>) {
        let slots = Slots::new(10, 2);
        let held = (0..8)
            .map(|_| slots.enter("127.0.0.1".parse().unwrap()))
            .collect();
        (slots, held)
    }

    #[tokio::test(start_paused = true)]
    async fn under_stress_an_idle_client_gets_421_after_the_stress_timeout() {
        let (slots, _held) = crowded();
        let mut c = connect_to("127.0.0.1:4000", 64 * 1024, &slots);
        c.expect(220).await;
        let start = Instant::now();
        let r = c.expect(421).await;
        assert_eq!(start.elapsed(), STRESS_TIMEOUT);
        assert_eq!(r.status(), Some("4.4.2"));
        assert!(c.reply().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn under_stress_a_trickled_command_line_loses_its_slot_from_its_first_byte() {
        let (slots, _held) = crowded();
        let mut c = connect_to("127.0.0.1:4000", 64 * 1024, &slots);
        c.expect(220).await;
        let first_byte = Instant::now();
        c.send(b"E").await;
        let io = &mut c.io;
        // One more byte every 2 s: never silent for the stress timeout, never a whole line.
        let drip = async {
            for b in b"HLO slow.example".iter() {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if io.write_all(&[*b]).await.is_err() {
                    break;
                }
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            r = &mut c.server => r.unwrap().unwrap(),
            _ = drip => unreachable!(),
        }
        assert_eq!(first_byte.elapsed(), STRESS_TIMEOUT);
        assert_eq!(c.expect(421).await.status(), Some("4.4.2"));
    }

    #[tokio::test(start_paused = true)]
    async fn under_stress_a_body_dripped_byte_by_byte_loses_its_slot() {
        let (slots, _held) = crowded();
        let mut c = connect_to("127.0.0.1:4000", 64 * 1024, &slots);
        c.start_data().await;
        let start = Instant::now();
        let io = &mut c.io;
        // One byte every 3 s: far below MIN_DATA_RATE, never silent for the stress timeout.
        let drip = async {
            while io.write_all(b"x").await.is_ok() {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            r = &mut c.server => r.unwrap().unwrap(),
            _ = drip => unreachable!(),
        }
        assert!(start.elapsed() <= STRESS_TIMEOUT, "{:?}", start.elapsed());
        assert_eq!(c.expect(421).await.status(), Some("4.4.2"));
        assert_eq!(c.submitted(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn without_stress_the_same_drip_keeps_the_normal_timeouts() {
        let mut c = connect("127.0.0.1:4000", 64 * 1024);
        c.start_data().await;
        c.send(b"x").await;
        tokio::time::sleep(STRESS_TIMEOUT * 2).await;
        c.send(b"\r\n.\r\n").await;
        assert_eq!(c.expect(250).await.code, 250);
    }

    #[tokio::test(start_paused = true)]
    async fn a_noop_every_ten_seconds_gets_421_after_the_junk_limit() {
        let mut c = connect("127.0.0.1:4000", 64 * 1024);
        c.expect(220).await;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_secs(10)).await;
            c.send(b"NOOP\r\n").await;
            c.expect(250).await;
        }
        c.send(b"NOOP\r\n").await;
        let r = c.expect(421).await;
        assert_eq!(r.status(), Some("4.7.0"));
        assert!(c.reply().await.is_none(), "and the slot is free");
        c.server.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn refused_commands_of_every_kind_count_as_junk() {
        let mut c = connect("127.0.0.1:4000", 64 * 1024);
        c.expect(220).await;
        // Out of sequence (503), a bad address (553 5.6.7 without SMTPUTF8), unknown (500).
        let lines: [(&[u8], u16); 3] = [
            (b"RCPT TO:<b@y>\r\n", 503),
            ("MAIL FROM:<j\u{f6}rg@x>\r\n".as_bytes(), 553),
            (b"FOO\r\n", 500),
        ];
        for i in 0..100 {
            let (line, code) = lines[i % 3];
            c.send(line).await;
            c.expect(code).await;
        }
        c.send(b"RCPT TO:<b@y>\r\n").await;
        let r = c.expect(421).await;
        assert_eq!(r.status(), Some("4.7.0"));
        assert!(c.reply().await.is_none(), "and the slot is free");
        c.server.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_ends_at_max_session_between_commands() {
        let mut c = connect("127.0.0.1:4000", 64 * 1024);
        let start = Instant::now();
        c.expect(220).await;
        // EHLO is not junk: only the session cap ends this. 25 x 70 s = 1750 s.
        for _ in 0..25 {
            tokio::time::sleep(Duration::from_secs(70)).await;
            c.send(b"EHLO app\r\n").await;
            c.expect(250).await;
        }
        let r = c.expect(421).await;
        assert_eq!(r.status(), Some("4.7.0"));
        assert_eq!(start.elapsed(), MAX_SESSION);
        assert!(c.reply().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_message_after_max_messages_per_session_gets_421() {
        let mut c = connect("127.0.0.1:4000", 64 * 1024);
        c.expect(220).await;
        for _ in 0..3 {
            c.send(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n")
                .await;
            for code in [250, 250, 354] {
                c.expect(code).await;
            }
            c.send(b"hi\r\n.\r\n").await;
            c.expect(250).await;
        }
        c.send(b"MAIL FROM:<a@x>\r\n").await;
        assert_eq!(c.expect(421).await.status(), Some("4.7.0"));
        assert_eq!(c.submitted(), 3);
    }

    /// Settings with a self-signed certificate: STARTTLS and the implicit-TLS door work.
    fn tls_settings() -> ListenSettings {
        ListenSettings {
            tls: Some(Arc::new(
                crate::smtp::tls::InboundTls::self_signed("relay.test").unwrap(),
            )),
            ..settings()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_tls_handshake_that_never_comes_gets_the_command_timeout() {
        for door in [Door::ImplicitTls, Door::Plain] {
            let mut c = connect_door(
                "127.0.0.1:4000",
                64 * 1024,
                &Slots::new(10, 2),
                tls_settings(),
                door,
            );
            if door == Door::Plain {
                c.expect(220).await;
                c.send(b"STARTTLS\r\n").await;
                c.expect(220).await;
            }
            let start = Instant::now();
            (&mut c.server).await.unwrap().unwrap();
            assert_eq!(start.elapsed(), COMMAND_TIMEOUT, "{door:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn under_stress_a_tls_handshake_that_never_comes_loses_its_slot() {
        for door in [Door::ImplicitTls, Door::Plain] {
            let (slots, _held) = crowded();
            let mut c = connect_door("127.0.0.1:4000", 64 * 1024, &slots, tls_settings(), door);
            if door == Door::Plain {
                c.expect(220).await;
                c.send(b"STARTTLS\r\n").await;
                c.expect(220).await;
            }
            let start = Instant::now();
            (&mut c.server).await.unwrap().unwrap();
            assert_eq!(start.elapsed(), STRESS_TIMEOUT, "{door:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_client_address_may_hold_only_its_share_of_slots() {
        let slots = Slots::new(10, 2);
        let mut a = connect_to("192.0.2.7:4000", 64 * 1024, &slots);
        let mut b = connect_to("192.0.2.7:4001", 64 * 1024, &slots);
        a.expect(220).await;
        b.expect(220).await;
        let mut c = connect_to("192.0.2.7:4002", 64 * 1024, &slots);
        assert_eq!(c.expect(421).await.status(), Some("4.7.0"));
        assert!(c.reply().await.is_none());
        c.server.await.unwrap().unwrap();
        let mut other = connect_to("192.0.2.8:4000", 64 * 1024, &slots);
        other.expect(220).await;
        // Loopback is never counted.
        let lo: Vec<Client> = (0..3)
            .map(|i| connect_to(&format!("127.0.0.1:{}", 5000 + i), 64 * 1024, &slots))
            .collect();
        for mut l in lo {
            l.expect(220).await;
        }
        // A slot given back can be taken again.
        a.send(b"QUIT\r\n").await;
        a.expect(221).await;
        a.server.await.unwrap().unwrap();
        let mut again = connect_to("192.0.2.7:4003", 64 * 1024, &slots);
        again.expect(220).await;
    }
}
