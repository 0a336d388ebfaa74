//! The inbound side: plain SMTP from legacy apps.
//!
//! `session` decides (pure state machine), `data` decodes the message body (pure), `reply`
//! is our catalogue of answers, `listener` is the thin tokio driver around them.

pub mod listener;
pub mod reply;
pub mod session;
