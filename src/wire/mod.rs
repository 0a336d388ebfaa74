//! The SMTP wire format, pure: no I/O, no tokio, nothing of ours. Shared by the inbound face
//! (`smtp`), the outbound client (`upstream`), the diagnostics, the load generator and the
//! sandbox, so each side speaks the protocol the same way (compare smtp-proto's split of codec
//! from I/O).
//!
//! - [`reply`]: replies both ways, parsed exactly (enhanced codes above 255 kept) or built.
//! - [`data`]: the DATA phase: decoding (unstuffing, CRLF normalising, smuggling-safe end)
//!   and encoding (dot-stuffing, terminator).
//! - [`address`]: what client-given names and addresses may contain.
//! - [`header`]: the message's header block, read as it streams by.
//! - [`missing`]: `Date:` and `Message-ID:` for a message that has none.
//! - [`xoauth2`]: the SASL XOAUTH2 initial response.

pub mod address;
pub mod data;
pub mod header;
pub mod missing;
pub mod reply;
pub mod rewrite;
pub mod xoauth2;

pub use reply::Reply;
