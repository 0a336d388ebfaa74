//! A byte stream to the upstream with a read buffer and exact reply parsing: one reply at a
//! time, each within its deadline, however the server's bytes arrive (pipelined replies in
//! one segment are all kept). Counts every reply by its code for `/metrics`.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout, Instant};

use super::error::{Stage, UpstreamError};
use crate::wire::Reply;

/// A byte stream with a read buffer and reply parsing.
pub struct SmtpStream<S> {
    pub(super) stream: S,
    rbuf: Vec<u8>,
    pub(super) command_timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> SmtpStream<S> {
    pub fn new(stream: S, command_timeout: Duration) -> Self {
        SmtpStream {
            stream,
            rbuf: Vec::with_capacity(4096),
            command_timeout,
        }
    }

    /// Reads one complete reply, waiting at most `limit`.
    pub async fn read_reply(
        &mut self,
        stage: Stage,
        limit: Duration,
    ) -> Result<Reply, UpstreamError> {
        let deadline = Instant::now() + limit;
        loop {
            match Reply::parse(&self.rbuf) {
                Ok(Some((reply, used))) => {
                    self.rbuf.drain(..used);
                    crate::ops::audit::upstream_reply(reply.code);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(UpstreamError::Protocol {
                        stage,
                        detail: e.to_string(),
                    })
                }
            }
            let mut chunk = [0u8; 4096];
            let n = match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(UpstreamError::Timeout { stage }),
                Ok(Err(source)) => return Err(UpstreamError::Io { stage, source }),
                Ok(Ok(n)) => n,
            };
            if n == 0 {
                return Err(UpstreamError::Io {
                    stage,
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                });
            }
            self.rbuf.extend_from_slice(&chunk[..n]);
        }
    }

    pub async fn write_all(&mut self, bytes: &[u8], stage: Stage) -> Result<(), UpstreamError> {
        match timeout(self.command_timeout, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
        {
            Err(_) => Err(UpstreamError::Timeout { stage }),
            Ok(Err(source)) => Err(UpstreamError::Io { stage, source }),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Sends one command line (without CRLF) and reads its reply.
    pub async fn command(&mut self, line: &str, stage: Stage) -> Result<Reply, UpstreamError> {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        self.write_all(&bytes, stage).await?;
        self.read_reply(stage, self.command_timeout).await
    }

    /// Reads and drops whatever comes until the server closes the connection, an error, or
    /// `limit`. After `QUIT`'s `221` the server closes (RFC 5321 §4.1.1.10); waiting for that
    /// means the server has ended the session before the caller counts it as ended.
    pub async fn wait_for_close(&mut self, limit: Duration) {
        let _ = timeout(limit, async {
            let mut chunk = [0u8; 512];
            while let Ok(n) = self.stream.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }

    /// True when the server sent bytes we have not asked for (STARTTLS injection guard).
    pub fn has_unread(&self) -> bool {
        !self.rbuf.is_empty()
    }

    pub fn into_inner(self) -> S {
        self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replies_arriving_together_are_all_read() {
        let (client, mut server) = tokio::io::duplex(1024);
        server
            .write_all(b"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n550 5.1.10 nope\r\n")
            .await
            .unwrap();
        let mut s = SmtpStream::new(client, Duration::from_secs(1));
        let a = s
            .read_reply(Stage::MailFrom, Duration::from_secs(1))
            .await
            .unwrap();
        let b = s
            .read_reply(Stage::RcptTo, Duration::from_secs(1))
            .await
            .unwrap();
        let c = s
            .read_reply(Stage::RcptTo, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!((a.code, b.code, c.code), (250, 250, 550));
    }

    #[tokio::test(start_paused = true)]
    async fn after_quit_the_close_is_awaited_and_bounded() {
        // A server that closes after its 221: returns as soon as it has.
        let (client, mut server) = tokio::io::duplex(1024);
        let mut s = SmtpStream::new(client, Duration::from_secs(5));
        let closer = tokio::spawn(async move {
            server.write_all(b"221 2.0.0 Bye\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(server);
        });
        let t0 = Instant::now();
        let reply = s.read_reply(Stage::Greeting, Duration::from_secs(1)).await;
        assert_eq!(reply.unwrap().code, 221);
        s.wait_for_close(Duration::from_secs(10)).await;
        assert_eq!(
            t0.elapsed(),
            Duration::from_millis(300),
            "returned when it closed"
        );
        closer.await.unwrap();
        // One that never closes: given up at the limit.
        let (client, _server) = tokio::io::duplex(1024);
        let mut s = SmtpStream::new(client, Duration::from_secs(5));
        let t0 = Instant::now();
        s.wait_for_close(Duration::from_secs(1)).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_server_times_out() {
        let (client, _server) = tokio::io::duplex(1024);
        let mut s = SmtpStream::new(client, Duration::from_secs(5));
        let err = s
            .read_reply(Stage::Greeting, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            UpstreamError::Timeout {
                stage: Stage::Greeting
            }
        ));
    }
}
