//! Delivery: what happens to a message once its body is in the spool (DESIGN §3).
//!
//! | mode | the client's DATA reply | transient trouble |
//! |---|---|---|
//! | `hybrid` | after one attempt (at most `try_now_timeout`) | fsync'd into the queue, `250` |
//! | `queue` | right after the fsync | retried in the background |
//! | `direct` | after the attempt | `451`, nothing kept |
//!
//! A `250` therefore always means "delivered" or "on disk and owned by the delivery loop".
//! Delivery never words a reply: it returns an [`Outcome`] and the face (`smtp`) speaks.
//!
//! - `submit.rs`: the policy per mode ([`Delivery::submit`]).
//! - `attempt.rs`: one attempt, recipient by recipient, in governor-paced batches.
//! - `outcome.rs`: what an attempt comes to for the client (pure).
//! - `runner.rs`: the queue loop ([`Delivery::run`]) and what each attempt leaves in the
//!   spool.
//! - `hold.rs`: holding the account after a configuration error.
//! - `settings.rs`: the settings and the sender policy; `state.rs`: the [`Delivery`] value.
//! - `retry.rs`: when to try again (pure); `queue.rs`: the in-memory index of due messages;
//!   `notice.rs`: who gets a failure notice, and its text (pure).

mod attempt;
mod hold;
pub mod lanes;
pub mod notice;
pub mod outcome;
pub mod queue;
pub mod route;
pub mod retry;
mod rewrite;
mod runner;
mod settings;
mod state;
mod submit;

pub use attempt::{RcptFailure, Report};
pub use lanes::Lanes;
pub use outcome::{Outcome, Queued, Submitted, Temporary};
pub use settings::{upstream_sender, DeliveryMode, DeliverySettings, EnvelopeSender, FromRewrite};
pub use state::{Delivery, Parts, Spooled};
