//! What every connection of a listener shares ([`Context`]), where a complete message goes
//! ([`Deliver`]), and the one way bytes are read from a client ([`read_some`]): in bounded
//! steps into the connection's one input buffer, so a connection holds little memory however
//! much it is sent.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use super::ListenSettings;
use crate::delivery::{Delivery, Lanes, Spooled, Submitted};
use crate::spool::Spool;

/// Where a complete message goes: delivery, in the relay; a stand-in in tests.
pub trait Deliver: Send + Sync + 'static {
    /// Takes the message and says what became of it.
    fn submit(&self, msg: Spooled) -> impl Future<Output = Submitted> + Send;

    /// At `MAIL FROM`: `Err` with the reason when mail from `sender` (sent by `client`,
    /// logged in as `user`) has nowhere to go, so the client hears `550 5.7.1` before it
    /// sends a body.
    fn check_sender(&self, sender: &str, client: IpAddr, user: Option<&str>) -> Result<(), String> {
        let _ = (sender, client, user);
        Ok(())
    }
}

impl Deliver for Arc<Delivery> {
    fn submit(&self, msg: Spooled) -> impl Future<Output = Submitted> + Send {
        Delivery::submit(self, msg)
    }
}

impl Deliver for Arc<Lanes> {
    fn submit(&self, msg: Spooled) -> impl Future<Output = Submitted> + Send {
        let lanes = self.clone();
        async move { Lanes::submit(&lanes, msg).await }
    }

    fn check_sender(&self, sender: &str, client: IpAddr, user: Option<&str>) -> Result<(), String> {
        Lanes::check_sender(self, sender, client, user)
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

/// The most one read takes from a client. Small on purpose: a connection's input buffer,
/// the decoder's scratch and the decoded block each hold about this much, so hundreds of
/// clients streaming large bodies at once cost a few MB, not hundreds (issue 11, item 6).
pub const READ_SIZE: usize = 16 * 1024;

/// Reads once from `socket`, appending at most about [`READ_SIZE`] bytes to `input`; `Ok(0)`
/// at end of stream. Cancel-safe (no byte is lost if the future is dropped).
pub async fn read_some<S: AsyncRead + Unpin>(
    socket: &mut S,
    input: &mut Vec<u8>,
) -> io::Result<usize> {
    let room = input.capacity() - input.len();
    if room < READ_SIZE {
        // Exact: the buffer never doubles past what one read needs.
        input.reserve_exact(READ_SIZE);
    }
    socket.read_buf(input).await
}

/// Gives back what a large read grew the buffer to, once it is (nearly) empty again.
pub fn shrink(input: &mut Vec<u8>) {
    if input.capacity() > 2 * READ_SIZE && input.len() <= READ_SIZE {
        input.shrink_to(READ_SIZE);
    }
}
