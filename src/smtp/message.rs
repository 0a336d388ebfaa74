//! One message body (DATA): streamed from the client into the spool, then handed to
//! delivery; the reply to the final dot comes back. Every read has a deadline (see
//! [`super::limits::Timeouts::data_deadline`]); the buffers are bounded ([`READ_SIZE`](super::context::READ_SIZE)
//! per read) and given back when the message is done.

use std::io;
use std::time::SystemTime;

use tokio::io::AsyncRead;
use tokio::time::Instant;

use super::context::{read_some, shrink, Context, Deliver};
use super::limits::{Slot, Timeouts};
use super::received::received_header;
use super::reply::{self, Reply};
use super::session::{Session, Transaction};
use crate::delivery::Spooled;
use crate::envelope::{Envelope, MessageId};
use crate::spool::sink::BodySink;
use crate::wire::data::{BodyDecoder, Progress};
use crate::wire::header::MessageIdSniffer;

/// How the DATA phase ended.
pub enum DataEnd {
    /// Say this and read the next command; `accepted` when the message was taken.
    Reply { reply: Reply, accepted: bool },
    /// Say this and close the connection.
    Close(Reply),
}

/// Receives one message body into the spool, then hands it to delivery. `input` holds bytes
/// already read; on return it holds what followed the end of data (pipelined commands).
pub async fn receive<S, D>(
    socket: &mut S,
    input: &mut Vec<u8>,
    session: &Session,
    transaction: Transaction,
    ctx: &Context<D>,
    timeouts: &Timeouts,
    slot: &Slot,
) -> io::Result<DataEnd>
where
    S: AsyncRead + Unpin,
    D: Deliver,
{
    let listen = &ctx.listen;
    // 354 was sent; the client may already be streaming.
    let id = MessageId::generate();
    let received_at = SystemTime::now();
    let started = Instant::now();
    let mut sink = BodySink::new(&ctx.spool, &id).await;
    let mut header_len = 0u64;
    if listen.received_header {
        let header = received_header(session, &transaction, &id, &listen.hostname, received_at);
        sink.write(header.as_bytes()).await;
        header_len = header.len() as u64;
    }
    let mut decoder =
        BodyDecoder::with_terminator(listen.max_message_size, session.data_terminator());
    let mut sniffer = MessageIdSniffer::new();
    let mut received = 0u64;
    loop {
        // Used only while the body goes to a file (a body in memory is decoded straight into
        // it); one block at a time, freed before the next wait for the client.
        let mut decoded = Vec::new();
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
        }
        drop(decoded);
        sink.spill_if_big().await;
        if progress == Progress::Done {
            break;
        }
        // DATA in progress finishes even during shutdown; a silent client times out, and so
        // does one that trickles the body too slowly (see Timeouts::data_deadline).
        let deadline = timeouts.data_deadline(Instant::now(), started, received, slot.stressed());
        match tokio::time::timeout_at(deadline, read_some(socket, input)).await {
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
            Ok(Ok(n)) => received += n as u64,
        }
    }
    shrink(input);
    if decoder.oversized() {
        sink.discard(&ctx.spool).await;
        return Ok(DataEnd::Reply {
            reply: reply::message_too_big(listen.max_message_size),
            accepted: false,
        });
    }
    let body = match sink.finish(&ctx.spool).await {
        Ok(body) => body,
        Err(fault) => {
            return Ok(DataEnd::Reply {
                reply: reply::spool_failed(fault),
                accepted: false,
            })
        }
    };
    let size = header_len + decoder.size();
    drop(decoder);
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
        user: session.user().map(|u| u.name.clone()),
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
    let accepted = reply.code / 100 == 2;
    Ok(DataEnd::Reply { reply, accepted })
}
