//! Message bodies: the transaction a `MAIL FROM` opens, DATA and BDAT chunks streamed into
//! the store, and the end of data, where the outage, quota and fault scripts get their say
//! before the message is committed (reference §4.2, §6).
//!
//! Why streamed: benchmarks push large messages, so a body goes to the store in
//! `WRITE_CHUNK` pieces and is never whole in memory; only the first `HEAD_CAPTURE` bytes
//! are kept, to name the `From:` in a `5.2.252` reply. DATA goes through smtp-proto's
//! `DataReceiver`, which ends only on CRLF.CRLF (so SMTP smuggling is refused) and undoes dot
//! stuffing. `bodies_received` is counted before any end-of-data script runs, so a test can
//! see a `slow-<N>` message arrive while the sandbox still sits on it.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use smtp_proto::request::receiver::DataReceiver;
use tokio::io::{AsyncRead, AsyncWrite};

use super::exchange::{
    send_as_denied, ACCESS_DENIED_LATER, MAILBOX_SERVER, MAX_MESSAGE, QUOTA_EXCEEDED,
    SERVICE_NOT_AVAILABLE,
};
use super::rights::send_as_refusal;
use super::script::{end_of_data_script, header_from, Script};
use super::wire::{Flow, Wire, READ_CHUNK};
use crate::sandbox::shared::{Shared, SmtpOutage};
use crate::sandbox::store::Incoming;

/// Body bytes gathered before a write to the store.
const WRITE_CHUNK: usize = 64 * 1024;
/// Leading message bytes kept to find the `From:` header for the 5.2.252 text.
const HEAD_CAPTURE: usize = 8 * 1024;

/// One mail transaction (MAIL to end of DATA/BDAT LAST).
pub(super) struct Txn {
    pub mail_from: String,
    pub rcpts: Vec<String>,
    body: Option<Incoming>,
    /// The store could not take the body: answer 451 at the end.
    store_failed: bool,
    /// BDAT chunks have started (DATA is then out of sequence).
    pub chunking: bool,
    bytes: u64,
    too_big: bool,
    head: Vec<u8>,
}

impl Txn {
    pub(super) fn new(mail_from: String) -> Self {
        Txn {
            mail_from,
            rcpts: Vec::new(),
            body: None,
            store_failed: false,
            chunking: false,
            bytes: 0,
            too_big: false,
            head: Vec::new(),
        }
    }

    /// Opens the store file for the body, once; a failure is answered at the end of data.
    pub(super) async fn start_body(&mut self, shared: &Shared) {
        if self.body.is_none() && !self.store_failed {
            match shared.store.begin().await {
                Ok(body) => self.body = Some(body),
                Err(e) => {
                    tracing::warn!(error = %e, "sandbox store cannot create a message file");
                    self.store_failed = true;
                }
            }
        }
    }

    /// Takes body bytes: keeps the head for the `From:` lookup, counts the size against
    /// `MAX_MESSAGE`, and writes them to the store.
    pub(super) async fn append(&mut self, bytes: &[u8]) {
        if self.head.len() < HEAD_CAPTURE {
            let take = bytes.len().min(HEAD_CAPTURE - self.head.len());
            self.head.extend_from_slice(&bytes[..take]);
        }
        self.bytes += bytes.len() as u64;
        if self.bytes > MAX_MESSAGE {
            self.too_big = true;
            self.body = None;
            return;
        }
        if let Some(body) = self.body.as_mut() {
            if let Err(e) = body.write(bytes).await {
                tracing::warn!(error = %e, "sandbox store write failed");
                self.body = None;
                self.store_failed = true;
            }
        }
    }
}

/// Reads a DATA body, up to and including the final dot, into `txn`. `Ok(false)`: the
/// session ended first.
pub(super) async fn receive_data<S: AsyncRead + AsyncWrite + Unpin>(
    wire: &mut Wire<S>,
    txn: &mut Txn,
) -> io::Result<bool> {
    // Prime the receiver as if a line had just ended: its initial state does not treat a
    // '.' at the very start of the body as the start of a line, which would mis-parse a
    // dot-stuffed first line or an empty message.
    let mut receiver = DataReceiver::new();
    receiver.ingest(&mut b"\r\n".iter(), &mut Vec::new());
    let mut out = Vec::with_capacity(WRITE_CHUNK + READ_CHUNK);
    loop {
        let pending = wire.pending();
        let mut bytes = pending.iter();
        let done = receiver.ingest(&mut bytes, &mut out);
        let used = pending.len() - bytes.as_slice().len();
        wire.consume(used);
        if done || out.len() >= WRITE_CHUNK {
            // Keep the last byte until the end: the receiver pops the '\r' that
            // precedes the terminating ".\r\n" from this buffer.
            let n = if done { out.len() } else { out.len() - 1 };
            txn.append(&out[..n]).await;
            out.drain(..n);
        }
        if done {
            break;
        }
        if !wire.fill().await? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Reads a BDAT chunk of `size` bytes into `txn`. `Ok(false)`: the session ended first.
pub(super) async fn receive_chunk<S: AsyncRead + AsyncWrite + Unpin>(
    wire: &mut Wire<S>,
    txn: &mut Txn,
    size: usize,
) -> io::Result<bool> {
    let mut left = size;
    while left > 0 {
        if wire.pending().is_empty() && !wire.fill().await? {
            return Ok(false);
        }
        let take = left.min(wire.pending().len());
        txn.append(&wire.pending()[..take]).await;
        wire.consume(take);
        left -= take;
    }
    Ok(true)
}

/// After the final dot (or `BDAT ... LAST`): apply the script, store, reply.
pub(super) async fn finish<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    auth_user: &str,
    txn: Txn,
    wire: &mut Wire<S>,
) -> io::Result<Flow> {
    shared
        .counters
        .bodies_received
        .fetch_add(1, Ordering::Relaxed);
    if txn.too_big {
        wire.reply("552 5.3.4 Message size exceeds fixed maximum message size");
        return Ok(Flow::Continue);
    }
    if shared.smtp_outage() == Some(SmtpOutage::Storm451) {
        wire.reply(ACCESS_DENIED_LATER);
        return Ok(Flow::Continue);
    }
    if shared.quota_exceeded.load(Ordering::Relaxed) {
        wire.reply(QUOTA_EXCEEDED);
        return Ok(Flow::Continue);
    }
    if shared.opts.enforce_send_as {
        let header = header_from(&txn.head);
        if let Some(refused) = send_as_refusal(
            auth_user,
            &txn.mail_from,
            header.as_deref(),
            &shared.opts.send_as,
        ) {
            wire.reply(&send_as_denied(auth_user, refused));
            return Ok(Flow::Continue);
        }
    }
    match end_of_data_script(&txn.rcpts) {
        Some(Script::DataPerm) => {
            wire.reply("554 5.6.0 Invalid message content");
            return Ok(Flow::Continue);
        }
        Some(Script::DataTemp) => {
            wire.reply(ACCESS_DENIED_LATER);
            return Ok(Flow::Continue);
        }
        Some(Script::SendAsDenied) => {
            let from = header_from(&txn.head).unwrap_or_else(|| txn.mail_from.clone());
            wire.reply(&send_as_denied(auth_user, &from));
            return Ok(Flow::Continue);
        }
        Some(Script::DropAfterDot) => return Ok(Flow::Drop),
        Some(Script::Slow(secs)) => {
            // Flush what came before so only the final reply is late.
            wire.flush().await?;
            let cancel = shared.cancel.clone();
            tokio::select! {
                _ = cancel.cancelled() => {
                    wire.reply(SERVICE_NOT_AVAILABLE);
                    return Ok(Flow::Close);
                }
                _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
            }
        }
        _ => {}
    }
    let Txn {
        mail_from,
        rcpts,
        body,
        ..
    } = txn;
    let stored = match body {
        Some(body) => body.commit(&mail_from, &rcpts, auth_user).await.ok(),
        None => None,
    };
    match stored {
        Some(id) => wire.reply(&format!(
            "250 2.0.0 OK <{id}@sandbox.prod.outlook.com> [Hostname={MAILBOX_SERVER}]"
        )),
        None => wire.reply("451 4.3.0 Temporary server error. Please try again later"),
    }
    Ok(Flow::Continue)
}

/// The `drop-data` script: make sure some body bytes arrived, then hang up without a reply.
pub(super) async fn drop_after_some_bytes<S: AsyncRead + AsyncWrite + Unpin>(
    wire: &mut Wire<S>,
) -> io::Result<Flow> {
    wire.flush().await?;
    if wire.pending().is_empty() {
        wire.fill().await?;
    }
    Ok(Flow::Drop)
}
