//! The admin port's HTTP server: hyper's HTTP/1 connection builder with limits, around the
//! routes of [`super::admin`]. `axum::serve` has no header timeout, idle timeout, connection cap
//! or body limit, so silent, half-sent and idle keep-alive connections stayed open for ever and
//! a few hundred of them took the file descriptors the SMTP listener needs (issue 11, item 8).
//!
//! Here every connection takes a permit before it is accepted (at most
//! [`Limits::max_connections`]; more wait in the kernel's accept queue and cost us nothing),
//! must send a request's headers within [`Limits::header_timeout`] (which hyper also applies to
//! the wait for the next request on a kept-alive connection), lives at most
//! [`Limits::max_age`] (then it is closed after the request in progress, which may take
//! [`Limits::header_timeout`] more), and may not send a body larger than
//! [`Limits::max_body`] (`413`, then closed). Our routes read no body at all.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, Request, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The admin server's limits (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub max_age: Duration,
    pub max_body: u64,
}

impl Default for Limits {
    /// A probe or a scrape needs one small request now and then: 64 connections, 10 s for the
    /// headers (and between requests), 60 s per connection, 1 KiB of body.
    fn default() -> Self {
        Limits {
            max_connections: 64,
            header_timeout: Duration::from_secs(10),
            max_age: Duration::from_secs(60),
            max_body: 1024,
        }
    }
}

/// The largest request head we read (hyper's minimum buffer; its default is ~400 KB).
const MAX_HEAD: usize = 8 * 1024;

/// Serves `router` on `listener` within `limits` until `stop` is cancelled; then connections
/// finish the request in progress (for at most `header_timeout`) and close.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.cancelled() => break,
        };
        let socket = tokio::select! {
            r = listener.accept() => match r {
                Ok((socket, _)) => {
                    backoff = Duration::from_millis(10);
                    socket
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        tracker.spawn(connection(
            socket,
            router.clone(),
            limits,
            stop.clone(),
            permit,
        ));
    }
    tracker.close();
    tracker.wait().await;
}

/// One connection, within the limits; the permit is given back when it ends.
async fn connection(
    socket: TcpStream,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let mut router = router.clone();
        async move {
            if body_too_large(&req, limits.max_body) {
                return Ok::<_, Infallible>(payload_too_large());
            }
            tower_service::Service::call(&mut router, req.map(axum::body::Body::new)).await
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(socket), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = tokio::time::sleep(limits.max_age) => None,
        _ = stop.cancelled() => None,
    };
    if ended.is_none() {
        // Finish the request in progress, if any, then close; never wait for ever.
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(limits.header_timeout, conn).await;
    }
}

/// The request declares a body over `max` bytes, or one of unknown length (chunked).
fn body_too_large<B>(req: &Request<B>, max: u64) -> bool {
    let headers = req.headers();
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().parse::<u64>().map_or(true, |n| n > max))
        .unwrap_or(false)
}

fn payload_too_large() -> Response<axum::body::Body> {
    let mut r = Response::new(axum::body::Body::from("request body too large\n"));
    *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
    r.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    r
}

/// Each limit over loopback, with limits short enough for a test (real time: hyper's timer).
#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::net::SocketAddr;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const HEADER: Duration = Duration::from_millis(400);

    async fn start(limits: Limits) -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let router = Router::new().route("/x", get(|| async { "ok\n" }));
        tokio::spawn(serve(listener, router, limits, stop.clone()));
        (addr, stop)
    }

    fn limits() -> Limits {
        Limits {
            max_connections: 8,
            header_timeout: HEADER,
            max_age: Duration::from_secs(30),
            max_body: 1024,
        }
    }

    /// Reads until the server closes the connection; how long that took (at most 10 s).
    async fn closed_after(s: &mut TcpStream) -> Duration {
        let start = Instant::now();
        let mut buf = [0u8; 1024];
        tokio::time::timeout(Duration::from_secs(10), async {
            while !matches!(s.read(&mut buf).await, Ok(0) | Err(_)) {}
        })
        .await
        .expect("the server closes the connection within 10 s");
        start.elapsed()
    }

    /// Reads one response (head and a `Content-Length` body); returns its status line.
    async fn response(s: &mut TcpStream) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    return head.lines().next().unwrap().to_string();
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("a response within 5 s")
                .unwrap();
            assert!(n > 0, "closed before a whole response: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn silent_half_sent_and_idle_keep_alive_connections_are_closed() {
        let (addr, _stop) = start(limits()).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n")
            .await
            .unwrap();
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(response(&mut idle).await, "HTTP/1.1 200 OK");
        let (a, b, c) = tokio::join!(
            closed_after(&mut silent),
            closed_after(&mut half),
            closed_after(&mut idle)
        );
        for (what, took) in [("silent", a), ("half-sent", b), ("idle keep-alive", c)] {
            assert!(
                took <= HEADER + Duration::from_millis(600),
                "{what}: {took:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_header_trickled_byte_by_byte_is_cut_at_the_header_timeout() {
        let (addr, _stop) = start(limits()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let start = Instant::now();
        for b in b"GET /x HTTP/1.1\r\nHost: a\r\nX-Slow: "
            .iter()
            .cycle()
            .take(400)
        {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            if start.elapsed() > Duration::from_secs(5) {
                break;
            }
        }
        closed_after(&mut s).await;
        let took = start.elapsed();
        assert!(took <= HEADER + Duration::from_millis(600), "{took:?}");
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_until_a_permit_is_free() {
        let (addr, _stop) = start(Limits {
            max_connections: 2,
            ..limits()
        })
        .await;
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        assert!(
            tokio::time::timeout(HEADER / 2, c.read(&mut buf))
                .await
                .is_err(),
            "served while two connections held both permits"
        );
        // The two silent ones are closed at the header timeout; then the third is served.
        assert_eq!(response(&mut c).await, "HTTP/1.1 200 OK");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_and_the_connection_closed() {
        let (addr, _stop) = start(limits()).await;
        for req in [
            "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            assert_eq!(response(&mut s).await, "HTTP/1.1 413 Payload Too Large");
            assert!(closed_after(&mut s).await < HEADER, "closed at once");
        }
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
            .await
            .unwrap();
        assert_eq!(response(&mut s).await, "HTTP/1.1 200 OK");
    }

    #[tokio::test]
    async fn a_connection_lives_at_most_max_age() {
        let (addr, _stop) = start(Limits {
            max_age: Duration::from_millis(800),
            ..limits()
        })
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let start = Instant::now();
        // A request every 200 ms: never idle for the header timeout.
        let mut served = 0;
        loop {
            if s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .is_err()
            {
                break;
            }
            let mut buf = [0u8; 256];
            match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => served += 1,
                _ => break,
            }
            assert!(start.elapsed() < Duration::from_secs(3), "still open");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(served >= 2, "served {served}");
        assert!(start.elapsed() < Duration::from_millis(800) + HEADER + Duration::from_millis(400));
    }
}
