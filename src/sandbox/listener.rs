//! The sandbox's listening sockets and their accept loops.
//!
//! A [`Listener`] can be closed and bound again on the same address while the sandbox runs,
//! which is how `SmtpOutage::Refuse` makes connections fail with `ECONNREFUSED` (not a hang)
//! and then come back on the same port. [`accept_loop`] follows mini-redis: it takes a
//! connection permit *before* `accept`, so at most `MAX_CONNECTIONS` connections are served
//! at once, spawns one tracked task per connection, backs off briefly when `accept` fails,
//! and stops on cancellation. It knows nothing of SMTP or HTTPS: what to do with a
//! connection is the `handle` closure `mod.rs` passes in.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::sync::Lock as _;

/// Concurrent connections per listener: a bound on tasks, far above what tests need.
const MAX_CONNECTIONS: usize = 1024;

/// A listening socket that can be closed and bound again on the same address at runtime
/// (`SmtpOutage::Refuse`). Sockets are made with `SO_REUSEADDR`, so binding again works while
/// connections accepted earlier are still open or in TIME_WAIT.
pub(crate) struct Listener {
    pub addr: SocketAddr,
    state: Mutex<ListenerState>,
    /// Woken whenever the socket is closed or replaced.
    changed: Notify,
    /// The runtime the sandbox started on: sockets register with its reactor.
    runtime: tokio::runtime::Handle,
}

struct ListenerState {
    socket: Option<TcpListener>,
    /// False while an outage keeps the socket closed.
    wanted: bool,
    /// The accept loop ended (shutdown): never bind again.
    retired: bool,
}

/// Backlog of the listening sockets.
const BACKLOG: u32 = 1024;

fn bind_reusable(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

impl Listener {
    /// Binds `addr` (port 0 = ephemeral; the chosen port is kept for re-binding). Must run
    /// inside a tokio runtime.
    pub(crate) fn bind(addr: SocketAddr) -> io::Result<Listener> {
        let socket = bind_reusable(addr)?;
        Ok(Listener {
            addr: socket.local_addr()?,
            state: Mutex::new(ListenerState {
                socket: Some(socket),
                wanted: true,
                retired: false,
            }),
            changed: Notify::new(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ListenerState> {
        self.state.locked()
    }

    /// Closes the socket now: connections not yet accepted are reset, new ones refused.
    pub(crate) fn close(&self) {
        let socket = {
            let mut state = self.lock();
            state.wanted = false;
            state.socket.take()
        };
        drop(socket);
        self.changed.notify_waiters();
    }

    /// Binds the address again if the socket is closed (no-op after shutdown).
    pub(crate) fn reopen(&self) -> io::Result<()> {
        let result = {
            let mut state = self.lock();
            if state.retired {
                return Ok(());
            }
            state.wanted = true;
            if state.socket.is_none() {
                let _runtime = self.runtime.enter();
                bind_reusable(self.addr).map(|socket| state.socket = Some(socket))
            } else {
                Ok(())
            }
        };
        self.changed.notify_waiters();
        result
    }

    /// For good: closes the socket and never binds again.
    fn retire(&self) {
        let socket = {
            let mut state = self.lock();
            state.retired = true;
            state.wanted = false;
            state.socket.take()
        };
        drop(socket);
        self.changed.notify_waiters();
    }

    /// The next connection; `None` on shutdown. Waits while the socket is closed, and keeps
    /// trying to bind again if it should be open but binding failed.
    async fn accept(
        &self,
        cancel: &CancellationToken,
    ) -> Option<io::Result<(TcpStream, SocketAddr)>> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the state is looked at, so no change is missed.
            changed.as_mut().enable();
            let rebind = {
                let state = self.lock();
                state.wanted && state.socket.is_none()
            };
            let accept = std::future::poll_fn(|cx| match self.lock().socket.as_ref() {
                Some(socket) => socket.poll_accept(cx),
                None => Poll::Pending,
            });
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = &mut changed => {}
                _ = tokio::time::sleep(Duration::from_millis(50)), if rebind => {
                    if let Err(e) = self.reopen() {
                        tracing::debug!(error = %e, addr = %self.addr, "sandbox re-bind failed");
                    }
                }
                accepted = accept => return Some(accepted),
            }
        }
    }
}

/// Accepts connections until shutdown, one tracked task each, at most `MAX_CONNECTIONS`
/// at once (the permit is taken before `accept`, as in mini-redis). On the way out the
/// socket is closed for good.
pub(crate) async fn accept_loop<F, Fut>(
    listener: Arc<Listener>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    serve_listener(&listener, &cancel, &tracker, handle).await;
    listener.retire();
}

async fn serve_listener<F, Fut>(
    listener: &Listener,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let Some(accepted) = listener.accept(cancel).await else {
            return;
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                let task = handle(tcp, peer);
                tracker.spawn(async move {
                    task.await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Usually EMFILE or a connection reset before accept: back off briefly.
                tracing::warn!(error = %e, "sandbox accept failed");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
}
