//! One cached token per credential: single-flight on a miss, refresh ahead of expiry, brief
//! memory of failures.
//!
//! Why these rules (DESIGN §6, reference §1.7/§1.8):
//! - Entra gives app-only tokens a random 60-90 minute life, so we go by `expires_in` and
//!   refresh when less than `refresh_margin` (default 15 min) is left. That refresh is the
//!   keeper's job ([`TokenCache::keep_warm`], a task the relay owns and stops): callers keep
//!   getting the still-valid token, never wait for it, and only wake the keeper. Without a
//!   keeper (the one-shot `check`), a token is simply fetched again once it is unusable.
//! - Only when there is no usable token do callers wait, and then all of them wait on one
//!   request and share its result, the error included. 200 connections opening at once after
//!   a start or an outage make one request, not 200 (Entra throttles: AADSTS50196/90055).
//! - A failure is remembered for a short while (10 s for configuration errors, 2 s for
//!   transient ones, longer if the endpoint sent `Retry-After`), so a storm of callers is
//!   answered from memory instead of hammering Entra. Retrying for real is the caller's
//!   business (delivery backoff, mailbox hold).
//! - After `535 5.7.3` the upstream calls [`TokenCache::invalidate`] with the token that
//!   failed; only the first such call drops it, so several connections that failed with the
//!   same stale token cause one refetch.
//!
//! Time is `tokio::time::Instant` throughout so the tests run on a paused clock. The decision
//! about a cached token ([`phase`]) and the failure hold ([`error_hold`]) are pure functions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::error::TokenError;
use super::source::{AccessToken, TokenSource};
use crate::sync::Lock as _;

/// A token with less than this left is not handed out (connect + STARTTLS + AUTH must fit).
/// Scaled down for very short-lived tokens, see [`phase`].
pub const SAFETY_MARGIN: Duration = Duration::from_secs(30);
/// The safety margin never shrinks below this (unless the token lives shorter): Entra's `exp`
/// is whole Unix seconds counted from when it issued the token, while we count `expires_in`
/// from when we read the response, so a token can stop working up to a second earlier than
/// we think, and AUTH itself takes a moment.
pub const MIN_SAFETY_MARGIN: Duration = Duration::from_secs(2);
/// How long a configuration error is served from memory before Entra is asked again.
pub const CONFIG_ERROR_HOLD: Duration = Duration::from_secs(10);
/// How long a transient error is served from memory (unless `Retry-After` says longer).
pub const TRANSIENT_ERROR_HOLD: Duration = Duration::from_secs(2);
/// The longest any failure is held, whatever `Retry-After` says.
pub const MAX_ERROR_HOLD: Duration = Duration::from_secs(300);

/// Where a cached token stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// More than the refresh margin left: hand it out.
    Fresh,
    /// Inside the refresh margin but still safe to use: hand it out and refresh in the background.
    RefreshDue,
    /// Expired or about to: callers must wait for a new one.
    Unusable,
}

/// Classifies a token at `now`. The margins shrink for short-lived tokens (refresh at half
/// the lifetime at the latest, unusable in the last quarter at the latest, but never later
/// than [`MIN_SAFETY_MARGIN`] before expiry) so that a token living less than the refresh
/// margin does not cause a refresh on every call.
pub fn phase(token: &AccessToken, now: Instant, refresh_margin: Duration) -> Phase {
    let lifetime = Duration::from_secs(token.expires_in());
    let safety = SAFETY_MARGIN
        .min(lifetime / 4)
        .max(MIN_SAFETY_MARGIN)
        .min(lifetime);
    let margin = refresh_margin.min(lifetime / 2).max(safety);
    let remaining = token.remaining_at(now);
    if remaining <= safety {
        Phase::Unusable
    } else if remaining <= margin {
        Phase::RefreshDue
    } else {
        Phase::Fresh
    }
}

/// How long a failed fetch is answered from memory: the class default, or `Retry-After` if
/// that is longer, never more than [`MAX_ERROR_HOLD`].
pub fn error_hold(error: &TokenError) -> Duration {
    let base = if error.is_config() {
        CONFIG_ERROR_HOLD
    } else {
        TRANSIENT_ERROR_HOLD
    };
    base.max(error.retry_after().unwrap_or_default())
        .min(MAX_ERROR_HOLD)
}

/// How long [`TokenCache::keep_warm`] waits after its `failures`-th failure in a row: the
/// failure's hold, doubled for every further failure, at most [`KEEP_WARM_MAX_WAIT`] (or a
/// longer `Retry-After`). A pod that is not ready gets no mail, so only the keeper notices a
/// fix: it must not wait long.
pub fn keep_warm_backoff(error: &TokenError, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(8);
    let hold = error_hold(error);
    (hold * (1u32 << doublings)).min(KEEP_WARM_MAX_WAIT.max(hold))
}

/// The longest the token keeper waits between tries while the endpoint fails.
pub const KEEP_WARM_MAX_WAIT: Duration = Duration::from_secs(60);

/// A shared, cheaply cloned token cache in front of one [`TokenSource`].
#[derive(Clone)]
pub struct TokenCache {
    inner: Arc<Inner>,
}

struct Inner {
    source: Arc<dyn TokenSource>,
    refresh_margin: Duration,
    state: Mutex<State>,
    /// Held for the whole of every fetch: at most one request in flight per credential.
    fetch_lock: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
    /// Bumped by [`TokenCache::forget_failure`]: a request started before it (with the old
    /// secret) does not record its failure afterwards.
    generation: AtomicU64,
    /// Woken when a fetch fails, the token is invalidated or a failure is forgotten, so
    /// [`TokenCache::keep_warm`] reacts at once instead of at its next period.
    events: tokio::sync::Notify,
    /// Woken by [`TokenCache::forget_failure`] (a reloaded secret): the keeper tries at once
    /// even while it backs off.
    reloaded: tokio::sync::Notify,
    /// Woken (once) when a caller finds the token inside its refresh margin: the keeper
    /// refreshes it ahead of expiry.
    refresh_due: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    token: Option<AccessToken>,
    /// The last failure and until when it is served without asking again.
    failure: Option<(TokenError, Instant)>,
    /// Completed fetches (success or failure): waiters use it to see that a fetch finished
    /// while they queued, and take its result instead of fetching again.
    completed: u64,
    /// Whether the latest completed fetch succeeded.
    last_ok: bool,
    /// A caller saw the token inside its refresh margin and woke the keeper; cleared when the
    /// keeper attempts the refresh (so a refresh on hold is not asked for again and again).
    refresh_wanted: bool,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.lock();
        f.debug_struct("TokenCache")
            .field("source", &self.inner.source.describe())
            .field("refresh_margin", &self.inner.refresh_margin)
            .field("token", &st.token)
            .field("failure", &st.failure.as_ref().map(|(e, _)| e))
            .finish()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this short lock cannot leave State inconsistent.
        self.state.locked()
    }

    /// One request to the source, with the fetch lock held by the caller; stores the outcome.
    async fn fetch_and_store(&self) -> Result<AccessToken, TokenError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let generation = self.generation.load(Ordering::Relaxed);
        let result = self.source.fetch().await;
        let now = Instant::now();
        let mut st = self.lock();
        st.completed += 1;
        match &result {
            Ok(token) => {
                tracing::debug!(
                    source = %self.source.describe(),
                    expires_in = token.expires_in(),
                    "access token obtained"
                );
                st.token = Some(token.clone());
                st.failure = None;
                st.last_ok = true;
                metrics::counter!("smtp_oauth_relay_token_refreshes_total").increment(1);
            }
            Err(_) if self.generation.load(Ordering::Relaxed) != generation => {
                // Asked with a secret that has been replaced since: says nothing about the new one.
                st.last_ok = false;
            }
            Err(error) => {
                let hold = error_hold(error);
                tracing::debug!(
                    source = %self.source.describe(),
                    %error,
                    hold_s = hold.as_secs_f32(),
                    "token request failed"
                );
                st.failure = Some((error.clone(), now + hold));
                st.last_ok = false;
                let kind = if error.is_config() {
                    "config"
                } else {
                    "transient"
                };
                metrics::counter!("smtp_oauth_relay_token_refresh_failures_total", "kind" => kind)
                    .increment(1);
                self.events.notify_waiters();
            }
        }
        result
    }
}

impl TokenCache {
    /// A cache in front of `source`. Its keeper ([`keep_warm`](Self::keep_warm)) refreshes the
    /// token when less than `refresh_margin` is left.
    pub fn new(source: Arc<dyn TokenSource>, refresh_margin: Duration) -> Self {
        TokenCache {
            inner: Arc::new(Inner {
                source,
                refresh_margin,
                state: Mutex::new(State::default()),
                fetch_lock: tokio::sync::Mutex::new(()),
                fetches: AtomicU64::new(0),
                generation: AtomicU64::new(0),
                events: tokio::sync::Notify::new(),
                reloaded: tokio::sync::Notify::new(),
                refresh_due: tokio::sync::Notify::new(),
            }),
        }
    }

    /// A usable token: the cached one if it has life left (waking the keeper to refresh it when
    /// it is inside the refresh margin), else the result of one shared fetch. A recent failure
    /// is returned from memory while its hold lasts.
    pub async fn get(&self) -> Result<AccessToken, TokenError> {
        let seen = {
            let mut st = self.inner.lock();
            let now = Instant::now();
            if let Some(token) = &st.token {
                match phase(token, now, self.inner.refresh_margin) {
                    Phase::Fresh => return Ok(token.clone()),
                    Phase::RefreshDue => {
                        let token = token.clone();
                        if !st.refresh_wanted {
                            st.refresh_wanted = true;
                            self.inner.refresh_due.notify_one();
                        }
                        return Ok(token);
                    }
                    Phase::Unusable => {}
                }
            }
            if let Some((error, until)) = &st.failure {
                if now < *until {
                    return Err(error.clone());
                }
            }
            st.completed
        };

        let _in_flight = self.inner.fetch_lock.lock().await;
        {
            let st = self.inner.lock();
            if st.completed != seen {
                // A fetch finished while we queued: share its outcome.
                if st.last_ok {
                    if let Some(token) = &st.token {
                        return Ok(token.clone());
                    }
                    // Invalidated since: fall through and fetch.
                } else if let Some((error, _)) = &st.failure {
                    return Err(error.clone());
                }
            }
        }
        self.inner.fetch_and_store().await
    }

    /// A usable token with at least `min` life left (High Volume Email wants 10 minutes at
    /// AUTH): as [`get`](Self::get), but when the token it gives has less, one fresh one is
    /// fetched (single-flight) and returned whatever its life. The cached token is replaced
    /// only by a successful fetch, so other users of the cache keep theirs if it fails; a
    /// failure still held in memory is returned without asking again.
    pub async fn get_with_at_least(&self, min: Duration) -> Result<AccessToken, TokenError> {
        let token = self.get().await?;
        if token.remaining() >= min {
            return Ok(token);
        }
        let _in_flight = self.inner.fetch_lock.lock().await;
        {
            let st = self.inner.lock();
            if let Some(t) = st.token.as_ref().filter(|t| t.remaining() >= min) {
                return Ok(t.clone()); // fetched by someone else while we queued
            }
            if let Some((error, until)) = &st.failure {
                if Instant::now() < *until {
                    return Err(error.clone());
                }
            }
        }
        self.inner.fetch_and_store().await
    }

    /// Drops the cached token if it is still `token` (from the same fetch). Call it after the
    /// upstream rejected `token` (`535 5.7.3`); the next [`get`](Self::get) fetches a new one.
    pub fn invalidate(&self, token: &AccessToken) {
        let mut st = self.inner.lock();
        if st.token.as_ref().is_some_and(|t| t.is_same(token)) {
            st.token = None;
            tracing::debug!(source = %self.inner.source.describe(), "cached access token invalidated");
            self.inner.events.notify_waiters();
        }
    }

    /// How many requests the source has been asked to make (tests, metrics).
    pub fn fetch_count(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// Time left on the cached token while [`get`](Self::get) would still hand it out
    /// (readiness); `None` when there is none or it is about to expire.
    pub fn usable_for(&self) -> Option<Duration> {
        let st = self.inner.lock();
        st.token
            .as_ref()
            .filter(|t| phase(t, Instant::now(), self.inner.refresh_margin) != Phase::Unusable)
            .map(AccessToken::remaining)
    }

    /// Time left on the cached token, `None` when there is none or it has expired.
    pub fn expires_in(&self) -> Option<Duration> {
        let st = self.inner.lock();
        st.token
            .as_ref()
            .map(AccessToken::remaining)
            .filter(|d| !d.is_zero())
    }

    /// The most recent failure, while no fetch has succeeded since (readiness, `check`).
    pub fn last_error(&self) -> Option<TokenError> {
        let st = self.inner.lock();
        st.failure.as_ref().map(|(e, _)| e.clone())
    }

    /// Forgets a remembered failure so the next [`get`](Self::get) asks the endpoint again
    /// (after SIGHUP brought a rotated secret).
    pub fn forget_failure(&self) {
        self.inner.generation.fetch_add(1, Ordering::Relaxed);
        self.inner.lock().failure = None;
        self.inner.reloaded.notify_waiters();
    }

    /// Keeps a token ready so the first message after a quiet spell does not wait for one,
    /// refreshes it ahead of expiry, and lets readiness tell the truth about the credentials:
    /// asks [`get`](Self::get) at least every `period`, refreshes when the token is inside its
    /// margin (at once when a caller notices), and after a failure tries again when its hold
    /// ends, backing off ([`keep_warm_backoff`]) to [`KEEP_WARM_MAX_WAIT`]. A failed refresh
    /// keeps the current token while it is usable. `on_recovered` runs after a success that
    /// follows a failure. Returns when `shutdown` is cancelled.
    pub async fn keep_warm(
        &self,
        period: Duration,
        shutdown: tokio_util::sync::CancellationToken,
        on_recovered: impl Fn(),
    ) {
        let mut failures: u32 = 0;
        loop {
            // Registered before the fetch, so an event during it is not missed.
            let event = self.inner.events.notified();
            let reloaded = self.inner.reloaded.notified();
            tokio::pin!(event, reloaded);
            event.as_mut().enable();
            reloaded.as_mut().enable();
            // A stop must not wait for a slow or unreachable token endpoint (up to the token
            // timeout): the drain's grace is for messages.
            let look = async {
                match self.get().await {
                    Ok(token) => self.refresh_if_due(token).await,
                    Err(error) => Err((error, None)),
                }
            };
            let outcome = tokio::select! {
                outcome = look => outcome,
                _ = shutdown.cancelled() => return,
            };
            let wait = match outcome {
                Ok(token) => {
                    if failures > 0 {
                        tracing::info!(source = %self.describe(), "token endpoint works again");
                        on_recovered();
                    }
                    failures = 0;
                    period
                        .min(token.remaining() / 2)
                        .max(Duration::from_secs(1))
                }
                Err((error, still)) => {
                    if failures == 0 {
                        match &still {
                            None => tracing::warn!(
                                source = %self.describe(),
                                %error,
                                advice = error.advice(),
                                "cannot obtain an access token; will keep trying"
                            ),
                            Some(token) => tracing::warn!(
                                source = %self.describe(),
                                %error,
                                advice = error.advice(),
                                remaining_s = token.remaining().as_secs(),
                                "token refresh failed; keeping the current token and trying again"
                            ),
                        }
                    }
                    failures = failures.saturating_add(1);
                    let backoff = keep_warm_backoff(&error, failures);
                    match still {
                        // Try again before the current token runs out.
                        Some(token) => backoff
                            .min(token.remaining() / 2)
                            .max(Duration::from_secs(1)),
                        None => backoff,
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // While all is well, a failure seen by a sender or an invalidated token means
                // look again now; while failing, only a reloaded secret cuts the backoff
                // short, so a failing endpoint is not asked in a loop.
                _ = &mut event, if failures == 0 => {}
                _ = self.inner.refresh_due.notified(), if failures == 0 => {}
                _ = &mut reloaded => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Refreshes `token` if it is inside its refresh margin and no failure is on hold: one
    /// fetch, shared with any caller that finds no usable token meanwhile. A failure keeps
    /// `token` (returned with the error, for the keeper's backoff).
    async fn refresh_if_due(
        &self,
        token: AccessToken,
    ) -> Result<AccessToken, (TokenError, Option<AccessToken>)> {
        {
            let mut st = self.inner.lock();
            let now = Instant::now();
            if phase(&token, now, self.inner.refresh_margin) != Phase::RefreshDue {
                st.refresh_wanted = false;
                return Ok(token);
            }
            if let Some((error, until)) = &st.failure {
                if now < *until {
                    return Err((error.clone(), Some(token)));
                }
            }
            st.refresh_wanted = false;
        }
        let _in_flight = self.inner.fetch_lock.lock().await;
        let current = self.inner.lock().token.clone();
        match current {
            // Replaced while we queued (a caller fetched): nothing to refresh.
            Some(t) if !t.is_same(&token) => Ok(t),
            Some(_) => self
                .inner
                .fetch_and_store()
                .await
                .map_err(|error| (error, Some(token))),
            // Invalidated while we queued: it is no good any more, fetch its successor.
            None => self.inner.fetch_and_store().await.map_err(|e| (e, None)),
        }
    }

    /// Which credential this cache serves (no secrets).
    pub fn describe(&self) -> String {
        self.inner.source.describe()
    }

    /// When the credential itself stops working (a certificate's `notAfter`), if it has such
    /// a date: readiness fails after it.
    pub fn not_after(&self) -> Option<std::time::SystemTime> {
        self.inner.source.not_after()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::FetchFuture;
    use secrecy::SecretString;
    use std::collections::VecDeque;
    use tokio::task::JoinSet;
    use tokio::time::advance;

    const MARGIN: Duration = Duration::from_secs(900);

    /// A source that takes `delay` per request and answers from a script, then with tokens
    /// of `lifetime` seconds.
    struct Fake {
        calls: AtomicU64,
        delay: Duration,
        lifetime: u64,
        script: Mutex<VecDeque<Result<u64, TokenError>>>,
    }

    impl Fake {
        fn new(delay_ms: u64, lifetime: u64) -> Arc<Self> {
            Arc::new(Fake {
                calls: AtomicU64::new(0),
                delay: Duration::from_millis(delay_ms),
                lifetime,
                script: Mutex::new(VecDeque::new()),
            })
        }

        fn then(&self, outcome: Result<u64, TokenError>) {
            self.script.lock().unwrap().push_back(outcome);
        }
    }

    impl TokenSource for Fake {
        fn fetch(&self) -> FetchFuture<'_> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(self.delay).await;
                let next = self.script.lock().unwrap().pop_front();
                let lifetime = match next {
                    Some(Err(e)) => return Err(e),
                    Some(Ok(l)) => l,
                    None => self.lifetime,
                };
                Ok(AccessToken::new(
                    SecretString::from(format!("tok-{n}")),
                    lifetime,
                ))
            })
        }

        fn describe(&self) -> String {
            "fake source".into()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn get_with_at_least_fetches_once_and_keeps_the_old_token_on_failure() {
        let src = Fake::new(0, 3600);
        let cache = TokenCache::new(src.clone(), MARGIN);
        let ten = Duration::from_secs(600);
        assert_eq!(
            cache.get_with_at_least(ten).await.unwrap().expose(),
            "tok-1"
        );
        assert_eq!(cache.fetch_count(), 1);
        advance(Duration::from_secs(55 * 60)).await;
        // Five minutes left: a fresh token, which the cache keeps for everyone.
        assert_eq!(
            cache.get_with_at_least(ten).await.unwrap().expose(),
            "tok-2"
        );
        assert_eq!(cache.get().await.unwrap().expose(), "tok-2");
        assert_eq!(cache.fetch_count(), 2);
        advance(Duration::from_secs(55 * 60)).await;
        // The fresh fetch fails: the error, but the old token stays for plain `get`, and
        // the failure is answered from memory while it is held.
        src.then(Err(config_error()));
        assert!(cache.get_with_at_least(ten).await.is_err());
        assert_eq!(cache.get().await.unwrap().expose(), "tok-2");
        assert!(cache.get_with_at_least(ten).await.is_err());
        assert_eq!(cache.fetch_count(), 3);
        // Short-lived tokens: one fetch per call, and the fresh one is returned as it is.
        let short = TokenCache::new(Fake::new(0, 300), MARGIN);
        assert_eq!(
            short.get_with_at_least(ten).await.unwrap().expose(),
            "tok-2"
        );
        assert_eq!(short.fetch_count(), 2);
    }

    fn config_error() -> TokenError {
        TokenError::Rejected {
            status: 401,
            error: "invalid_client".into(),
            codes: vec![7000215],
            description: "AADSTS7000215: Invalid client secret provided.".into(),
            trace_id: None,
            correlation_id: None,
            retry_after: None,
        }
    }

    fn cache(fake: &Arc<Fake>) -> TokenCache {
        TokenCache::new(fake.clone(), MARGIN)
    }

    #[tokio::test(start_paused = true)]
    async fn phases() {
        let t = AccessToken::new(SecretString::from("x"), 3600);
        let now = Instant::now();
        assert_eq!(phase(&t, now, MARGIN), Phase::Fresh);
        assert_eq!(
            phase(&t, now + Duration::from_secs(2699), MARGIN),
            Phase::Fresh
        );
        assert_eq!(
            phase(&t, now + Duration::from_secs(2701), MARGIN),
            Phase::RefreshDue
        );
        assert_eq!(
            phase(&t, now + Duration::from_secs(3569), MARGIN),
            Phase::RefreshDue
        );
        assert_eq!(
            phase(&t, now + Duration::from_secs(3571), MARGIN),
            Phase::Unusable
        );
        assert_eq!(
            phase(&t, now + Duration::from_secs(4000), MARGIN),
            Phase::Unusable
        );
        // A 60 s token with a 15 min margin: refresh at 30 s left, unusable at 15 s.
        let short = AccessToken::new(SecretString::from("x"), 60);
        assert_eq!(
            phase(&short, now + Duration::from_secs(29), MARGIN),
            Phase::Fresh
        );
        assert_eq!(
            phase(&short, now + Duration::from_secs(31), MARGIN),
            Phase::RefreshDue
        );
        assert_eq!(
            phase(&short, now + Duration::from_secs(46), MARGIN),
            Phase::Unusable
        );
        let zero = AccessToken::new(SecretString::from("x"), 0);
        assert_eq!(phase(&zero, now, MARGIN), Phase::Unusable);
        // A 3 s token: its whole-second `exp` may end a second early, so it is not handed
        // out in its last 2 s (a quarter, 0.75 s, would be too little).
        let tiny = AccessToken::new(SecretString::from("x"), 3);
        assert_eq!(
            phase(&tiny, now + Duration::from_millis(900), MARGIN),
            Phase::Fresh
        );
        assert_eq!(
            phase(&tiny, now + Duration::from_millis(1100), MARGIN),
            Phase::Unusable
        );
    }

    #[test]
    fn error_holds() {
        assert_eq!(error_hold(&config_error()), CONFIG_ERROR_HOLD);
        assert_eq!(error_hold(&TokenError::Timeout), TRANSIENT_ERROR_HOLD);
        let throttled = TokenError::Http {
            status: 429,
            body: String::new(),
            retry_after: Some(Duration::from_secs(45)),
        };
        assert_eq!(error_hold(&throttled), Duration::from_secs(45));
        let huge = TokenError::Http {
            status: 503,
            body: String::new(),
            retry_after: Some(Duration::from_secs(86400)),
        };
        assert_eq!(error_hold(&huge), MAX_ERROR_HOLD);
    }

    #[tokio::test(start_paused = true)]
    async fn cold_storm_makes_one_fetch() {
        let fake = Fake::new(500, 3600);
        let cache = cache(&fake);
        let mut set = JoinSet::new();
        for _ in 0..200 {
            let c = cache.clone();
            set.spawn(async move { c.get().await });
        }
        let tokens: Vec<AccessToken> = set
            .join_all()
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(tokens.len(), 200);
        assert_eq!(cache.fetch_count(), 1);
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
        assert!(tokens.iter().all(|t| t.is_same(&tokens[0])));
        assert_eq!(tokens[0].expose(), "tok-1");
        // Warm: no more fetches.
        cache.get().await.unwrap();
        assert_eq!(cache.fetch_count(), 1);
        assert_eq!(cache.expires_in(), Some(Duration::from_secs(3600)));
    }

    /// Starts the keeper, as the relay does.
    fn keeper(cache: &TokenCache, period: Duration) -> tokio_util::sync::CancellationToken {
        let stop = tokio_util::sync::CancellationToken::new();
        let (c, s) = (cache.clone(), stop.clone());
        tokio::spawn(async move { c.keep_warm(period, s, || {}).await });
        stop
    }

    const LONG: Duration = Duration::from_secs(3600);
    /// A margin that the keeper's own schedule (at half the time left) does not land on, so
    /// a refresh before its next tick can only come from a caller waking it.
    const WIDE_MARGIN: Duration = Duration::from_secs(1000);

    #[tokio::test(start_paused = true)]
    async fn a_caller_in_the_margin_wakes_the_keeper_and_never_waits() {
        let fake = Fake::new(5_000, 3600);
        let cache = TokenCache::new(fake.clone(), WIDE_MARGIN);
        let stop = keeper(&cache, LONG);
        let first = cache.get().await.unwrap(); // the keeper's start-up fetch, shared
        assert_eq!(cache.fetch_count(), 1);
        let issued = Instant::now();

        // 955 s left: inside the margin. The keeper's own next look is at 900 s left.
        advance(Duration::from_secs(2_645)).await;
        let before = Instant::now();
        for _ in 0..50 {
            let t = cache.get().await.unwrap();
            assert!(t.is_same(&first), "callers keep the current token");
        }
        assert_eq!(
            Instant::now(),
            before,
            "callers did not wait for the refresh"
        );

        tokio::time::sleep(Duration::from_secs(6)).await; // the refresh takes 5 s
        assert!(
            issued.elapsed() < Duration::from_secs(2_700),
            "before the keeper's tick"
        );
        assert_eq!(cache.fetch_count(), 2, "exactly one refresh");
        let second = cache.get().await.unwrap();
        assert_eq!(second.expose(), "tok-2");
        assert_eq!(cache.fetch_count(), 2);
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn the_keeper_refreshes_ahead_on_its_own() {
        let fake = Fake::new(0, 3600);
        let cache = cache(&fake);
        let stop = keeper(&cache, Duration::from_secs(60));
        let first = cache.get().await.unwrap();
        // No caller at all: still refreshed before the token gets anywhere near expiry.
        tokio::time::sleep(Duration::from_secs(2_700 + 60)).await;
        assert_eq!(cache.fetch_count(), 2);
        assert!(!cache.get().await.unwrap().is_same(&first));
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_causes_a_new_fetch() {
        let fake = Fake::new(100, 3600);
        let cache = cache(&fake);
        let first = cache.get().await.unwrap();
        advance(Duration::from_secs(3_590)).await; // 10 s left: inside the safety margin
        let second = cache.get().await.unwrap();
        assert!(!second.is_same(&first));
        assert_eq!(cache.fetch_count(), 2);
        advance(Duration::from_secs(4_000)).await; // long expired
        assert_eq!(cache.expires_in(), None);
        let third = cache.get().await.unwrap();
        assert_eq!(third.expose(), "tok-3");
        assert_eq!(cache.fetch_count(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn invalidate_only_the_current_token() {
        let fake = Fake::new(100, 3600);
        let cache = cache(&fake);
        let stale = cache.get().await.unwrap();

        // Three connections fail with the same token: one refetch.
        for _ in 0..3 {
            cache.invalidate(&stale);
        }
        let mut set = JoinSet::new();
        for _ in 0..3 {
            let c = cache.clone();
            set.spawn(async move { c.get().await.unwrap() });
        }
        let fresh = set.join_all().await;
        assert_eq!(cache.fetch_count(), 2);
        assert!(fresh.iter().all(|t| t.expose() == "tok-2"));

        // A late report about the old token changes nothing.
        cache.invalidate(&stale);
        let again = cache.get().await.unwrap();
        assert!(again.is_same(&fresh[0]));
        assert_eq!(cache.fetch_count(), 2);

        // Invalidating the current one refetches once.
        cache.invalidate(&again);
        cache.invalidate(&again);
        let newest = cache.get().await.unwrap();
        assert_eq!(newest.expose(), "tok-3");
        assert_eq!(cache.fetch_count(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn config_error_is_shared_and_held() {
        let fake = Fake::new(300, 3600);
        fake.then(Err(config_error()));
        fake.then(Err(config_error()));
        let cache = cache(&fake);

        let mut set = JoinSet::new();
        for _ in 0..50 {
            let c = cache.clone();
            set.spawn(async move { c.get().await });
        }
        for r in set.join_all().await {
            assert_eq!(r.unwrap_err().aadsts(), Some(7000215));
        }
        assert_eq!(cache.fetch_count(), 1, "waiters share one failing request");

        // Within the hold: answered from memory.
        advance(Duration::from_secs(5)).await;
        assert!(cache.get().await.unwrap_err().is_config());
        assert_eq!(cache.fetch_count(), 1);
        assert!(cache.last_error().is_some());

        // After the hold: asked again (fails again), then held again.
        advance(Duration::from_secs(6)).await;
        assert!(cache.get().await.is_err());
        assert_eq!(cache.fetch_count(), 2);
        assert!(cache.get().await.is_err());
        assert_eq!(cache.fetch_count(), 2);

        // Fixed: next attempt after the hold succeeds and clears the error.
        advance(Duration::from_secs(11)).await;
        assert_eq!(cache.get().await.unwrap().expose(), "tok-3");
        assert!(cache.last_error().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn transient_error_honours_retry_after() {
        let fake = Fake::new(10, 3600);
        fake.then(Err(TokenError::Rejected {
            status: 429,
            error: "temporarily_unavailable".into(),
            codes: vec![90055],
            description: String::new(),
            trace_id: None,
            correlation_id: None,
            retry_after: Some(Duration::from_secs(30)),
        }));
        let cache = cache(&fake);
        assert!(cache.get().await.unwrap_err().is_transient());
        advance(Duration::from_secs(20)).await;
        assert!(cache.get().await.is_err());
        assert_eq!(cache.fetch_count(), 1);
        advance(Duration::from_secs(11)).await;
        assert!(cache.get().await.is_ok());
        assert_eq!(cache.fetch_count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_refresh_keeps_the_token_and_backs_off() {
        let fake = Fake::new(1_000, 3600);
        fake.then(Ok(3600));
        fake.then(Err(TokenError::Timeout));
        let cache = TokenCache::new(fake.clone(), WIDE_MARGIN);
        let stop = keeper(&cache, LONG);
        let first = cache.get().await.unwrap();

        advance(Duration::from_secs(2_645)).await; // inside the margin
        assert!(cache.get().await.unwrap().is_same(&first)); // wakes the keeper
        tokio::time::sleep(Duration::from_millis(1_500)).await; // its refresh fails
        assert_eq!(cache.fetch_count(), 2);
        assert!(cache.last_error().is_some());

        // Within the transient hold: still the old token, no new request.
        for _ in 0..20 {
            assert!(cache.get().await.unwrap().is_same(&first));
        }
        assert_eq!(cache.fetch_count(), 2);

        // The keeper tries again when the hold ends, and that one succeeds.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(cache.fetch_count(), 3);
        assert_eq!(cache.get().await.unwrap().expose(), "tok-3");
        assert!(cache.last_error().is_none());
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn cold_callers_share_a_running_refresh() {
        let fake = Fake::new(1_000_000, 3600); // every request takes 1,000 s
        let cache = TokenCache::new(fake.clone(), WIDE_MARGIN);
        let stop = keeper(&cache, LONG);
        let first = cache.get().await.unwrap();
        // The keeper starts its refresh at 900 s left; it will take 1,000 s. At 20 s left
        // the token is unusable and a caller must wait: for the refresh already running.
        // (A sleep, not `advance`: the keeper's timers must fire at their own times.)
        tokio::time::sleep(Duration::from_secs(3_580)).await;
        let waited_from = Instant::now();
        let got = cache.get().await.unwrap();
        assert!(!got.is_same(&first));
        assert_eq!(got.expose(), "tok-2");
        assert_eq!(
            waited_from.elapsed(),
            Duration::from_secs(120),
            "the rest of that refresh"
        );
        assert_eq!(cache.fetch_count(), 2, "no fetch of its own");
        stop.cancel();
    }

    #[test]
    fn keep_warm_backs_off_from_the_hold() {
        let e = config_error();
        assert_eq!(keep_warm_backoff(&e, 1), CONFIG_ERROR_HOLD);
        assert_eq!(keep_warm_backoff(&e, 2), CONFIG_ERROR_HOLD * 2);
        assert_eq!(keep_warm_backoff(&e, 3), CONFIG_ERROR_HOLD * 4);
        assert_eq!(keep_warm_backoff(&e, 40), KEEP_WARM_MAX_WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn keep_warm_recovers_and_reports_it() {
        let fake = Fake::new(0, 3600);
        fake.then(Err(config_error()));
        fake.then(Ok(3600));
        let c = cache(&fake);
        let recovered = Arc::new(AtomicU64::new(0));
        let stop = tokio_util::sync::CancellationToken::new();
        let task = {
            let (c, r, stop) = (c.clone(), recovered.clone(), stop.clone());
            tokio::spawn(async move {
                c.keep_warm(Duration::from_secs(60), stop, move || {
                    r.fetch_add(1, Ordering::Relaxed);
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(c.last_error().is_some(), "the first fetch failed");
        assert_eq!(recovered.load(Ordering::Relaxed), 0);
        tokio::time::sleep(CONFIG_ERROR_HOLD).await;
        assert!(
            c.last_error().is_none(),
            "fetched again once the hold ended"
        );
        assert!(c.expires_in().is_some());
        assert_eq!(recovered.load(Ordering::Relaxed), 1);
        assert_eq!(c.fetch_count(), 2);
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_does_not_wait_for_a_slow_token_endpoint() {
        let fake = Fake::new(30_000, 3600); // every request takes 30 s
        let c = cache(&fake);
        let stop = tokio_util::sync::CancellationToken::new();
        let task = {
            let (c, stop) = (c.clone(), stop.clone());
            tokio::spawn(async move { c.keep_warm(Duration::from_secs(60), stop, || {}).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await; // its first fetch is under way
        assert_eq!(c.fetch_count(), 1);
        let asked = Instant::now();
        stop.cancel();
        task.await.unwrap();
        assert_eq!(asked.elapsed(), Duration::ZERO, "stopped at once");
    }

    #[tokio::test(start_paused = true)]
    async fn debug_shows_no_token() {
        let fake = Fake::new(1, 3600);
        let cache = cache(&fake);
        cache.get().await.unwrap();
        let shown = format!("{cache:?}");
        assert!(!shown.contains("tok-1"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }
}
