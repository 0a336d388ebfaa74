//! A relay's lanes: one [`Delivery`] per mailbox mail goes out through (each with its own
//! upstream pool, governor, hold and queue, as Exchange's limits are per mailbox), and the
//! routing table that sends each message to one of them (`route.rs`).
//!
//! The listener asks [`Lanes::check_sender`] at `MAIL FROM`, so a sender no route matches is
//! refused there (`550 5.7.1`), before the client sends a body; [`Lanes::submit`] routes the
//! finished message the same way.

use std::net::IpAddr;
use std::sync::Arc;

use super::outcome::{Outcome, Submitted};
use super::route::Routes;
use super::state::{Delivery, Spooled};
use crate::spool::body::Body;
use crate::wire::Reply;

/// Every lane of a relay and the routes between them.
pub struct Lanes {
    routes: Routes,
    lanes: Vec<Arc<Delivery>>,
}

impl Lanes {
    /// `routes` name lanes by their index in `lanes`; there is at least one lane.
    pub fn new(routes: Routes, lanes: Vec<Arc<Delivery>>) -> Arc<Self> {
        assert!(!lanes.is_empty(), "a relay has at least one lane");
        Arc::new(Lanes { routes, lanes })
    }

    /// Every lane, the first account's own mailbox first.
    pub fn all(&self) -> &[Arc<Delivery>] {
        &self.lanes
    }

    /// The first lane (the only one of a single-account relay).
    pub fn first(&self) -> &Arc<Delivery> {
        &self.lanes[0]
    }

    /// The lane mail from `sender` sent by `client` (logged in as `user`) goes out through.
    pub fn lane_for(
        &self,
        sender: &str,
        client: IpAddr,
        user: Option<&str>,
    ) -> Option<&Arc<Delivery>> {
        self.routes
            .route(sender, client, user)
            .and_then(|i| self.lanes.get(i))
    }

    /// `Err` with the refusal's text when no route takes mail from `sender`.
    pub fn check_sender(
        &self,
        sender: &str,
        client: IpAddr,
        user: Option<&str>,
    ) -> Result<(), String> {
        match self.lane_for(sender, client, user) {
            Some(_) => Ok(()),
            None => Err(no_route_text(sender)),
        }
    }

    /// Routes a finished message to its lane, which takes it from there.
    pub async fn submit(&self, msg: Spooled) -> Submitted {
        let client = msg.envelope.client.ip();
        let user = msg.envelope.user.as_deref();
        match self.lane_for(&msg.envelope.mail_from, client, user) {
            Some(lane) => lane.submit(msg).await,
            None => {
                // Checked at MAIL FROM already; kept for safety: nothing is sent or kept.
                if let Body::File(path) = &msg.body {
                    self.first().spool().discard(path).await;
                }
                let text = no_route_text(&msg.envelope.mail_from);
                Submitted::kept(Outcome::Refused {
                    reply: Some(Reply::new(550, "5.7.1", text.clone())),
                    reason: text,
                })
            }
        }
    }
}

/// Why a sender is refused, in words an operator can act on.
pub fn no_route_text(sender: &str) -> String {
    let shown = if sender.is_empty() { "<>" } else { sender };
    format!(
        "sender {shown} is not routed through this relay: no [[route]] matches it (add its \
         address, @domain or * to a route's senders)"
    )
}
