//! The thin async wrapper around [`GovernorState`]: [`Governor`], shared via `Arc` by every
//! sender of one mailbox, and the [`Permit`] each send holds. All decisions are the state's
//! (and, with `governor.shared`, the Redis scripts'); this file only locks, waits and wakes.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::coordinator::{SharedHold, SharedMailbox};
use super::shared::Answer;
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
    /// The fleet's limits in Redis (`governor.shared`); the local state then keeps this
    /// replica's own bounds, a share of the limits while Redis is away.
    shared: Option<SharedMailbox>,
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
    /// The send's id in Redis (its lease, window entry and recipients), when shared.
    shared_id: Option<String>,
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
        if let Some(id) = self.shared_id.take() {
            settle_later(
                &self.governor,
                id,
                self.started,
                self.recipients,
                self.refund,
            );
        }
    }
}

impl Governor {
    pub fn new(limits: Limits) -> Arc<Governor> {
        Arc::new(Governor {
            state: Mutex::new(GovernorState::new(limits.clone())),
            limits,
            notify: Notify::new(),
            shared: None,
        })
    }

    /// A governor whose limits the fleet shares through Redis (`governor.shared`).
    pub fn with_shared(limits: Limits, shared: SharedMailbox) -> Arc<Governor> {
        Arc::new(Governor {
            state: Mutex::new(GovernorState::new(
                shared.limits_for(shared.in_fallback()).clone(),
            )),
            limits,
            notify: Notify::new(),
            shared: Some(shared),
        })
    }

    /// Takes a permit if the local state lets the batch go now; never waits. Without shared
    /// limits only: with them Redis must be asked too (the `acquire` methods do).
    pub(super) fn try_acquire(self: &Arc<Self>, recipients: u32) -> Result<Permit, Decision> {
        let now = Instant::now();
        let mut state = self.lock();
        match state.check(now, recipients) {
            Decision::Go => {
                state.start(now, recipients);
                Ok(self.permit(now, recipients, None))
            }
            other => Err(other),
        }
    }

    fn permit(
        self: &Arc<Self>,
        started: Instant,
        recipients: u32,
        shared_id: Option<String>,
    ) -> Permit {
        Permit {
            governor: Arc::clone(self),
            started,
            recipients,
            refund: false,
            shared_id,
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
        if self.shared.is_some() {
            return self.acquire_shared(recipients, give_up).await;
        }
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
                count_wait(&decision, "smtp_oauth_relay_governor_waits_total");
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

    /// [`acquire_unless`](Self::acquire_unless) with the fleet's limits in Redis. One task
    /// per mailbox and replica talks to Redis at a time (the gate); a task that must wait
    /// for the rate window or the daily budget lets go of the gate while it sleeps. While
    /// Redis is away the local state alone decides, with this replica's share of the limits.
    async fn acquire_shared(
        self: &Arc<Self>,
        recipients: u32,
        give_up: impl Fn(&Decision) -> bool,
    ) -> Option<Permit> {
        let shared = self.shared.as_ref().expect("called with shared limits");
        let mut waited: Option<Instant> = None;
        'retry: loop {
            let gate = shared.gate.lock().await;
            let notified = self.notify.notified();
            let decision = 'decide: {
                let now = Instant::now();
                // Read once: the limits and the path below must agree.
                let fallback = shared.in_fallback();
                let allowed = {
                    let mut state = self.lock();
                    state.set_limits(shared.limits_for(fallback));
                    match state.check(now, recipients) {
                        Decision::Go => state.snapshot(now).allowed_connections,
                        local => break 'decide local,
                    }
                };
                let id = shared.new_id();
                if fallback {
                    self.lock().start(now, recipients);
                    shared.taken_in_fallback(&id, now, recipients);
                    return Some(self.took(waited, now, recipients, id));
                }
                let asking = Asking {
                    governor: Arc::clone(self),
                    id: Some(id.clone()),
                    recipients,
                };
                match shared.acquire(&id, recipients, allowed).await {
                    Ok(Answer::Go) => {
                        // The gate kept other local acquisitions out meanwhile, but a quota
                        // hold or a 432 may have come in: the local state has the last word.
                        let now = Instant::now();
                        let mut state = self.lock();
                        match state.check(now, recipients) {
                            Decision::Go => {
                                state.start(now, recipients);
                                drop(state);
                                asking.answered();
                                return Some(self.took(waited, now, recipients, id));
                            }
                            // Dropping `asking` gives back what Redis granted.
                            local => break 'decide local,
                        }
                    }
                    Ok(answer) => {
                        asking.answered();
                        let d = match answer {
                            Answer::Wait(d) => Decision::WaitUntil(Instant::now() + d),
                            Answer::Held(d) => Decision::HeldUntil(Instant::now() + d),
                            _ => Decision::WaitForSlot,
                        };
                        if waited.is_none() {
                            count_wait(&d, "smtp_oauth_relay_governor_shared_waits_total");
                        }
                        d
                    }
                    // Now in fallback: decide again, locally. The script may have run before
                    // the timeout: dropping `asking` gives that back once Redis answers.
                    Err(_) => continue 'retry,
                }
            };
            if give_up(&decision) {
                return None;
            }
            if waited.is_none() {
                waited = Some(Instant::now());
                count_wait(&decision, "smtp_oauth_relay_governor_waits_total");
            }
            match decision {
                Decision::WaitUntil(t) | Decision::HeldUntil(t) => {
                    // Others may ask meanwhile (they get the same answer, or one for
                    // fewer recipients).
                    drop(gate);
                    tokio::select! {
                        () = tokio::time::sleep_until(t) => {}
                        () = notified => {}
                    }
                }
                _ => {
                    // A slot: keep the gate, ask again soon (a slot leased by another
                    // replica frees without a word to us) or when a local send ends.
                    let poll = Instant::now() + shared.slot_poll();
                    let restore = self.lock().next_restore(Instant::now());
                    let t = restore.map_or(poll, |r| r.min(poll));
                    tokio::select! {
                        () = tokio::time::sleep_until(t) => {}
                        () = notified => {}
                    }
                    drop(gate);
                }
            }
        }
    }

    /// A permit taken with shared limits; records the wait it ended.
    fn took(
        self: &Arc<Self>,
        waited: Option<Instant>,
        now: Instant,
        recipients: u32,
        id: String,
    ) -> Permit {
        if let Some(since) = waited {
            metrics::histogram!("smtp_oauth_relay_governor_wait_seconds")
                .record(since.elapsed().as_secs_f64());
        }
        self.permit(now, recipients, Some(id))
    }

    /// Exchange said `432 4.3.2`; see [`GovernorState::on_concurrency_throttle`].
    pub fn on_concurrency_throttle(&self) {
        self.lock().on_concurrency_throttle(Instant::now());
    }

    /// Exchange said `554 5.2.0 …SubmissionQuotaExceeded`; see
    /// [`GovernorState::on_quota_exceeded`].
    pub async fn on_quota_exceeded(&self) {
        self.lock().on_quota_exceeded(Instant::now());
        if let Some(shared) = &self.shared {
            shared.quota_exceeded().await;
        }
    }

    /// Shares a configuration hold with the replicas of this mailbox (no-op without shared
    /// limits; Redis is written by a task, the caller does not wait).
    pub fn share_hold(self: &Arc<Self>, advice: &str, from_token: bool, for_: std::time::Duration) {
        if self.shared.is_none() {
            return;
        }
        let (me, advice) = (Arc::clone(self), advice.to_string());
        tokio::spawn(async move {
            if let Some(shared) = &me.shared {
                shared.set_hold(&advice, from_token, for_).await;
            }
        });
    }

    /// Lifts the shared configuration hold: any (a delivery worked), or only one the token
    /// endpoint caused (it issues tokens again). Skipped when none is known here.
    pub fn lift_shared_hold(self: &Arc<Self>, only_token: bool) {
        let Some(shared) = &self.shared else {
            return;
        };
        if shared.hold(Instant::now()).is_none() {
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            if let Some(shared) = &me.shared {
                shared.lift_hold(only_token).await;
            }
        });
    }

    /// The configuration hold another replica (or this one) shared, if one is in force.
    pub fn shared_hold(&self) -> Option<SharedHold> {
        self.shared.as_ref()?.hold(Instant::now())
    }

    /// Keeps the shared limits going while the relay runs: renews the leases of sends in
    /// progress, reads the shared configuration hold (logging one that is new here), counts
    /// fallback time, and so notices when Redis is back. Returns at `stop`.
    pub async fn upkeep(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let Some(shared) = &self.shared else {
            return;
        };
        let tick = std::time::Duration::from_secs(1);
        let renew_every = (shared.lease() / 3).max(tick);
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                () = stop.cancelled() => return,
            }
            shared.coordinator().count_fallback_time();
            if let Ok(Some(hold)) = shared.refresh_hold().await {
                tracing::error!(
                    advice = %hold.advice,
                    "relay configuration problem reported by a replica sharing this mailbox; new mail is refused with 451 (queued mail waits) until it is fixed"
                );
            }
            // Back from fallback: record what was sent meanwhile even when nothing is waiting
            // to send now.
            let _ = shared.catch_up().await;
            if shared.has_leases()
                && renewed.elapsed() >= renew_every
                && shared.renew().await.is_ok()
            {
                renewed = Instant::now();
            }
        }
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

/// A question to Redis in flight. If the acquisition is cancelled meanwhile (a client's wait
/// ran out, shutdown), Redis may have granted a lease, a window place and recipients that no
/// permit will ever give back: dropped before [`answered`](Asking::answered), it refunds
/// them (a refund of what was never taken changes nothing).
struct Asking {
    governor: Arc<Governor>,
    id: Option<String>,
    recipients: u32,
}

impl Asking {
    fn answered(mut self) {
        self.id = None;
    }
}

impl Drop for Asking {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            settle_later(&self.governor, id, Instant::now(), self.recipients, true);
        }
    }
}

/// A shared send ended (or an acquisition was abandoned, `refund`): its lease stops being
/// renewed now, and a task tells Redis (a drop cannot wait). Without a runtime (the relay is
/// exiting) Redis is not told; the lease expires by itself.
fn settle_later(
    governor: &Arc<Governor>,
    id: String,
    started: Instant,
    recipients: u32,
    refund: bool,
) {
    let Some(shared) = &governor.shared else {
        return;
    };
    shared.end(&id, refund);
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let governor = Arc::clone(governor);
        rt.spawn(async move {
            if let Some(shared) = &governor.shared {
                shared.settle(&id, started, recipients, refund).await;
            }
            governor.notify.notify_waiters();
        });
    }
}

/// Counts one wait in `counter`, by reason.
fn count_wait(decision: &Decision, counter: &'static str) {
    let reason = match decision {
        Decision::WaitUntil(_) => "rate",
        Decision::HeldUntil(_) => "quota",
        _ => "connections",
    };
    metrics::counter!(counter, "reason" => reason).increment(1);
}
