//! A plain SMTP client's side of a dialog over any stream, for the commands that talk to an
//! SMTP server themselves: `loadgen` (to the relay or the sandbox, optionally over TLS) and
//! `sendmail` (to the local relay). Reads whole replies ([`Reply::parse`]), each within the
//! connection's timeout; what to send and what a reply means is the caller's business.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::wire::Reply;

/// A byte stream a dialog runs over: TCP, or TLS on TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One connection to an SMTP server.
pub struct Conn {
    pub io: Box<dyn Io>,
    /// Bytes read past the last reply (nothing, unless the server pipelines ahead).
    pub buf: Vec<u8>,
    /// How long each reply may take.
    pub timeout: Duration,
}

/// Why a step of the dialog failed.
#[derive(Debug)]
pub enum Failure {
    /// The server refused: the stage (`MAIL`, `RCPT`, …) and its reply.
    Refused(&'static str, Reply),
    /// The connection failed, closed, timed out or spoke no SMTP.
    Io(String),
}

impl Conn {
    pub fn new(io: Box<dyn Io>, timeout: Duration) -> Conn {
        Conn {
            io,
            buf: Vec::with_capacity(4096),
            timeout,
        }
    }

    /// The next whole reply, within [`Conn::timeout`].
    pub async fn reply(&mut self) -> Result<Reply, Failure> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match Reply::parse(&self.buf) {
                Ok(Some((r, used))) => {
                    self.buf.drain(..used);
                    return Ok(r);
                }
                Ok(None) => {}
                Err(e) => return Err(Failure::Io(e.to_string())),
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.io.read(&mut chunk))
                .await
                .map_err(|_| Failure::Io("reply timeout".into()))?
                .map_err(|e| Failure::Io(e.to_string()))?;
            if n == 0 {
                return Err(Failure::Io("connection closed".into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next reply, which must be of `class` (2 for 2xx, 3 for 3xx).
    pub async fn expect(&mut self, stage: &'static str, class: u16) -> Result<Reply, Failure> {
        let r = self.reply().await?;
        if r.code / 100 != class {
            return Err(Failure::Refused(stage, r));
        }
        Ok(r)
    }

    /// Writes `bytes` whole, within [`Conn::timeout`].
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        tokio::time::timeout(self.timeout, self.io.write_all(bytes))
            .await
            .map_err(|_| Failure::Io("write timeout".into()))?
            .map_err(|e| Failure::Io(e.to_string()))
    }

    /// Sends a command line (with its CRLF) and expects a reply of `class`.
    pub async fn cmd(
        &mut self,
        line: &str,
        stage: &'static str,
        class: u16,
    ) -> Result<Reply, Failure> {
        self.send(line.as_bytes()).await?;
        self.expect(stage, class).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replies_are_read_whole_and_classified() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut c = Conn::new(Box::new(client), Duration::from_secs(5));
        server
            .write_all(b"250-first\r\n250 last\r\n550 5.7.1 no\r\n")
            .await
            .unwrap();
        let r = c.cmd("EHLO x\r\n", "EHLO", 2).await.unwrap();
        assert_eq!(r.lines, ["first", "last"]);
        match c.expect("MAIL", 2).await {
            Err(Failure::Refused("MAIL", r)) => assert_eq!(r.code, 550),
            other => panic!("{other:?}"),
        }
        let mut sent = [0u8; 8];
        server.read_exact(&mut sent).await.unwrap();
        assert_eq!(&sent, b"EHLO x\r\n");
        drop(server);
        assert!(matches!(c.reply().await, Err(Failure::Io(t)) if t == "connection closed"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_server_times_out() {
        let (client, _server) = tokio::io::duplex(1024);
        let mut c = Conn::new(Box::new(client), Duration::from_secs(5));
        assert!(matches!(c.reply().await, Err(Failure::Io(t)) if t == "reply timeout"));
    }
}
