//! The thin async wrapper around [`GovernorState`]: [`Governor`], shared via `Arc` by every
//! sender of one mailbox, and the [`Permit`] each send holds. All decisions are the state's;
//! this file only locks, waits and wakes.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Decision, GovernorState, Limits, Snapshot};
use crate::sync::Lock as _;

/// The async wrapper around [`GovernorState`] for one mailbox, shared via `Arc`.
///
/// Waiters are woken when a [`Permit`] drops (a slot frees) and sleep until the instant a
/// window frees or a throttle steps back. Woken waiters all re-check; there is no FIFO order
/// among them (a handful of sessions per mailbox, so fairness does not matter here).
pub struct Governor {
    limits: Limits,
    state: Mutex<GovernorState>,
    notify: Notify,
}

impl std::fmt::Debug for Governor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Governor")
            .field("limits", &self.limits)
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

/// The right to run one send. Dropping it frees the connection slot and wakes waiters; the
/// send keeps counting against the rate and the daily budget, unless it was
/// [`refund`](Permit::refund)ed because it never reached Exchange.
pub struct Permit {
    governor: Arc<Governor>,
    started: Instant,
    recipients: u32,
    refund: bool,
}

impl Permit {
    /// Ends a send that never reached Exchange (nothing up to MAIL FROM was sent): it gives
    /// back its slot, its place in the rate window and its recipients.
    pub fn refund(mut self) {
        self.refund = true;
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").finish_non_exhaustive()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        {
            let mut state = self.governor.lock();
            if self.refund {
                state.refund(self.started, self.recipients);
            } else {
                state.finish_send(self.started, Instant::now());
            }
        }
        self.governor.notify.notify_waiters();
    }
}

impl Governor {
    pub fn new(limits: Limits) -> Arc<Governor> {
        Arc::new(Governor {
            state: Mutex::new(GovernorState::new(limits.clone())),
            limits,
            notify: Notify::new(),
        })
    }

    /// Takes a permit if the batch may go now; never waits. Hybrid mode queues the message at
    /// once on `Err`, and the decision says until when (if known).
    pub fn try_acquire(self: &Arc<Self>, recipients: u32) -> Result<Permit, Decision> {
        let now = Instant::now();
        let mut state = self.lock();
        match state.check(now, recipients) {
            Decision::Go => {
                state.start(now, recipients);
                Ok(Permit {
                    governor: Arc::clone(self),
                    started: now,
                    recipients,
                    refund: false,
                })
            }
            other => Err(other),
        }
    }

    /// Waits until the batch may go and takes a permit. Cancel-safe: dropping the future
    /// before it completes records nothing and holds nothing.
    pub async fn acquire(self: &Arc<Self>, recipients: u32) -> Permit {
        self.acquire_unless(recipients, |_| false)
            .await
            .expect("never gives up")
    }

    /// Waits for a session slot only: returns a permit once one frees, or `None` as soon as
    /// the send would have to wait for the rate window, the daily budget or a quota hold
    /// (hybrid mode queues then instead of keeping the client waiting).
    pub async fn acquire_slot(self: &Arc<Self>, recipients: u32) -> Option<Permit> {
        self.acquire_unless(recipients, |d| *d != Decision::WaitForSlot)
            .await
    }

    /// Waits for a permit, or returns `None` as soon as `give_up` accepts the reason to wait.
    /// Counts the waits (`smtp_oauth_relay_governor_wait*`).
    async fn acquire_unless(
        self: &Arc<Self>,
        recipients: u32,
        give_up: impl Fn(&Decision) -> bool,
    ) -> Option<Permit> {
        let mut waited: Option<Instant> = None;
        loop {
            // Registered before the check, so a permit dropped in between still wakes us
            // (`notify_waiters` reaches every `Notified` created before the call).
            let notified = self.notify.notified();
            let decision = match self.try_acquire(recipients) {
                Ok(permit) => {
                    if let Some(since) = waited {
                        metrics::histogram!("smtp_oauth_relay_governor_wait_seconds")
                            .record(since.elapsed().as_secs_f64());
                    }
                    return Some(permit);
                }
                Err(d) => d,
            };
            if give_up(&decision) {
                return None;
            }
            if waited.is_none() {
                waited = Some(Instant::now());
                let reason = match decision {
                    Decision::WaitUntil(_) => "rate",
                    Decision::HeldUntil(_) => "quota",
                    _ => "connections",
                };
                metrics::counter!("smtp_oauth_relay_governor_waits_total", "reason" => reason)
                    .increment(1);
            }
            let wake_at = match decision {
                Decision::WaitUntil(t) | Decision::HeldUntil(t) => Some(t),
                Decision::WaitForSlot => self.lock().next_restore(Instant::now()),
                Decision::Go => unreachable!("try_acquire returns Go as Ok"),
            };
            match wake_at {
                Some(t) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(t) => {}
                        () = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Exchange said `432 4.3.2`; see [`GovernorState::on_concurrency_throttle`].
    pub fn on_concurrency_throttle(&self) {
        self.lock().on_concurrency_throttle(Instant::now());
    }

    /// Exchange said `554 5.2.0 …SubmissionQuotaExceeded`; see
    /// [`GovernorState::on_quota_exceeded`].
    pub fn on_quota_exceeded(&self) {
        self.lock().on_quota_exceeded(Instant::now());
    }

    pub fn snapshot(&self) -> Snapshot {
        self.lock().snapshot(Instant::now())
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The state has no invariant a panic elsewhere could break half-way (its methods do not
    /// panic), so a poisoned lock is still usable; this also keeps `Permit::drop` panic-free.
    fn lock(&self) -> MutexGuard<'_, GovernorState> {
        self.state.locked()
    }
}
