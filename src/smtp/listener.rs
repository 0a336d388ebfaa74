//! The accept loop (as in mini-redis): a connection permit is taken *before* accepting, so at
//! most `max_connections` clients are served and the rest wait in the kernel's backlog;
//! accept errors (out of file descriptors) are retried with backoff, never fatal; one task a
//! client, owned by the relay's task tracker and stopped by its shutdown token. Each client
//! holds a [`Slot`](super::limits::Slot) while it is served: the count of slots in use tells
//! connections when the relay is under stress, and counts connections per client address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::connection::{self, Context, Deliver, Door};
use super::limits::Slots;

/// How many connected clients may wait in the kernel for a slot (capped by the kernel's
/// `net.core.somaxconn`). The standard library's 128 is too few in front of 1,000 slots: when
/// it overflows during a burst, the kernel drops the handshake's last packet and a client that
/// waits for the greeting before it sends anything hangs on a connection that never was.
pub const BACKLOG: u32 = 1024;

/// Binds the SMTP port with an accept queue of [`BACKLOG`].
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The connection slots every listener of a relay shares (the SMTP port and the
/// implicit-TLS port): `max_connections` in all, and per client address.
#[derive(Clone)]
pub struct Gate {
    limit: Arc<Semaphore>,
    slots: Arc<Slots>,
}

impl Gate {
    pub fn new(max_connections: usize, per_client: usize) -> Gate {
        Gate {
            limit: Arc::new(Semaphore::new(max_connections)),
            slots: Slots::new(max_connections, per_client),
        }
    }
}

/// Accepts connections until the context's shutdown is cancelled. `accepting` is true while
/// the loop runs (readiness).
pub async fn run<D: Deliver>(
    listener: TcpListener,
    ctx: Arc<Context<D>>,
    accepting: Arc<AtomicBool>,
    tracker: TaskTracker,
) {
    let gate = Gate::new(
        ctx.listen.max_connections,
        ctx.listen.max_connections_per_client,
    );
    run_at(listener, ctx, gate, Door::Plain, accepting, tracker).await
}

/// [`run`] for one door of several, sharing their `gate`.
pub async fn run_at<D: Deliver>(
    listener: TcpListener,
    ctx: Arc<Context<D>>,
    gate: Gate,
    door: Door,
    accepting: Arc<AtomicBool>,
    tracker: TaskTracker,
) {
    let Gate { limit, slots } = gate;
    accepting.store(true, Ordering::Relaxed);
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // closed: never, but not worth a panic
            },
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
        let slot = slots.enter(peer.ip());
        tracker.spawn(async move {
            let _ = socket.set_nodelay(true);
            if let Err(e) = connection::serve_at(socket, peer, &ctx, &slot, door).await {
                tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
            }
            active.decrement(1.0);
            drop(slot);
            drop(permit);
        });
    }
    accepting.store(false, Ordering::Relaxed);
    tracing::info!(door = ?door, "listener stopped accepting");
}
