//! The SMTP connection as the session sees it: buffered input split into lines under a
//! cap, buffered replies, and what the connection does after a command ([`Flow`]).
//!
//! Why framing is done here, not by smtp-proto's `RequestReceiver`: that receiver caps every
//! line at 4 KiB, while an `AUTH XOAUTH2 <blob>` line carries a 2-3 KB JWT in base64. So
//! command lines are capped at 4 KiB, AUTH lines and AUTH continuations at 12 KiB (RFC 4954
//! §4); [`command_cap`] picks the cap from the start of the pending input.
//!
//! PIPELINING: replies are buffered and written only when more input is needed, i.e. when
//! no complete command is left in the input, so a batch of commands in one write gets its
//! replies in order, in one write. Every read races the idle timeout and the sandbox's
//! shutdown, and answers either before the session ends.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::exchange::SERVICE_NOT_AVAILABLE;

pub(super) const MAX_LINE: usize = 4096;
pub(super) const MAX_AUTH_LINE: usize = 12 * 1024;
/// On-premises Exchange's receive-connector inactivity default (reference §4.5).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub(super) const READ_CHUNK: usize = 16 * 1024;

/// What the driver does after a command.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Flow {
    Continue,
    /// `220` was sent: upgrade the connection.
    StartTls,
    /// Say nothing more (after QUIT, a fatal error, or a timeout) and close.
    Close,
    /// Close at once without flushing: a scripted drop.
    Drop,
}

pub(super) fn starts_with_ignore_case(bytes: &[u8], prefix: &[u8]) -> bool {
    bytes.len() >= prefix.len() && bytes[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// The line cap for a command that starts with `pending`.
pub(super) fn command_cap(pending: &[u8]) -> usize {
    if starts_with_ignore_case(pending, b"AUTH ") {
        MAX_AUTH_LINE
    } else {
        MAX_LINE
    }
}

/// The line without its `\r\n` (or bare `\n`).
pub(super) fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// What a read of a line produced.
pub(super) enum LineRead {
    Line(Vec<u8>),
    TooLong,
    /// End of input, idle timeout or shutdown (the matching reply was already sent).
    Closed,
}

/// A connection with buffered input and buffered replies.
pub(super) struct Wire<S> {
    pub stream: S,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    cancel: CancellationToken,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    pub(super) fn new(stream: S, cancel: CancellationToken) -> Self {
        Wire {
            stream,
            rbuf: Vec::with_capacity(READ_CHUNK),
            rpos: 0,
            wbuf: Vec::with_capacity(1024),
            cancel,
        }
    }

    pub(super) fn pending(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.rpos += n;
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        }
    }

    pub(super) fn discard_pending(&mut self) {
        self.rbuf.clear();
        self.rpos = 0;
    }

    pub(super) fn reply(&mut self, line: &str) {
        self.wbuf.extend_from_slice(line.as_bytes());
        self.wbuf.extend_from_slice(b"\r\n");
    }

    pub(super) async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Writes pending replies, then reads more input. `Ok(false)`: stop the session (end of
    /// input, or an idle timeout or shutdown, which were answered first).
    pub(super) async fn fill(&mut self) -> io::Result<bool> {
        self.flush().await?;
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        self.rbuf.reserve(READ_CHUNK);
        let read = tokio::select! {
            _ = self.cancel.cancelled() => None,
            read = tokio::time::timeout(IDLE_TIMEOUT, self.stream.read_buf(&mut self.rbuf)) => Some(read),
        };
        match read {
            None => {
                self.reply(SERVICE_NOT_AVAILABLE);
                self.flush().await?;
                Ok(false)
            }
            Some(Err(_elapsed)) => {
                self.reply("451 4.7.0 Timeout waiting for client input");
                self.flush().await?;
                Ok(false)
            }
            Some(Ok(read)) => Ok(read? > 0),
        }
    }

    /// Reads one line (with its terminator); `cap` sees the start of the pending input.
    pub(super) async fn read_line(&mut self, cap: impl Fn(&[u8]) -> usize) -> io::Result<LineRead> {
        loop {
            let pending = self.pending();
            let limit = cap(pending);
            match pending.iter().position(|&b| b == b'\n') {
                Some(pos) if pos < limit => {
                    let line = pending[..=pos].to_vec();
                    self.consume(pos + 1);
                    return Ok(LineRead::Line(line));
                }
                Some(_) => return Ok(LineRead::TooLong),
                None if pending.len() >= limit => return Ok(LineRead::TooLong),
                None => {
                    if !self.fill().await? {
                        return Ok(LineRead::Closed);
                    }
                }
            }
        }
    }

    pub(super) async fn close(mut self) {
        if self.flush().await.is_ok() {
            let _ = self.stream.shutdown().await;
        }
    }
}

/// Reads and discards `n` bytes. `Ok(false)` if the session ended first.
pub(super) async fn skip_bytes<S: AsyncRead + AsyncWrite + Unpin>(
    wire: &mut Wire<S>,
    mut n: usize,
) -> io::Result<bool> {
    while n > 0 {
        if wire.pending().is_empty() && !wire.fill().await? {
            return Ok(false);
        }
        let take = n.min(wire.pending().len());
        wire.consume(take);
        n -= take;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_lines_get_the_larger_cap() {
        assert_eq!(command_cap(b"auth xoauth2 abc"), MAX_AUTH_LINE);
        assert_eq!(command_cap(b"AUTH"), MAX_LINE);
        assert_eq!(command_cap(b"MAIL FROM:<a@b>"), MAX_LINE);
    }
}
