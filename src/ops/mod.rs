//! Operations: what an operator sees of the relay, kept apart from the message path.
//!
//! - [`audit`]: one log line and one counter per message event, from plain facts.
//! - [`metrics`]: the Prometheus recorder and the description of every metric.
//! - [`admin`]: the admin HTTP port (`/healthz`, `/readyz`, `/metrics`), fed by the running
//!   relay through a trait, so this room imports no other.
//! - [`http`]: the admin port's HTTP server and its limits (connections, timeouts, body size).
//!
//! A leaf: every room may report here; nothing here reaches back into a room.

pub mod admin;
pub mod audit;
pub mod http;
pub mod metrics;
