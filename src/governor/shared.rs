//! The shared governor's pure parts: its settings, the key names, what the scripts answer,
//! the limits a replica keeps alone when Redis cannot be reached, and the health state that
//! decides when to try Redis again. No `.await` here; `coordinator.rs` is the driver.
//!
//! # Why
//! A fleet of sidecars sending as one mailbox shares that mailbox's limits (reference §4.1:
//! they belong to the mailbox, not to the pod). With `governor.shared` set, every replica
//! takes each send's permit from Redis (one Lua script per acquisition, so the check and
//! the update are atomic across the fleet). Redis is a coordinator, never a dependency of
//! correctness: when it cannot be reached within the timeout, each replica keeps
//! `limits / expected_replicas` alone ([`Limits::divided`]) and goes back to the shared
//! limits when Redis answers again, first recording the sends it made meanwhile.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use super::Limits;

/// The Redis key prefix when none is configured.
pub const DEFAULT_PREFIX: &str = "smtp-oauth-relay";

/// How long a session lease lasts unless renewed (a crashed replica's slot frees this late).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How long one Redis call may take before the replica falls back to its own limits.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);

/// After a failed call, Redis is tried again no sooner than this (until then the replica
/// keeps its own limits without waiting for a timeout on every send).
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How often a replica waiting for a session slot leased elsewhere asks again.
pub const SLOT_POLL: Duration = Duration::from_millis(100);

/// Where the shared limits live and how to use them (built and checked by `config`).
#[derive(Clone)]
pub struct SharedSettings {
    /// `redis://[user[:password]@]host[:port][/db]` or `rediss://…` (TLS). May hold a
    /// password: never shown; see [`SharedSettings::display_url`].
    pub url: String,
    /// The password, read from `governor.shared_password_file` (wins over one in the URL).
    pub password: Option<String>,
    /// A PEM file of the CA that signed a `rediss://` server's certificate, when it is not
    /// one the system trusts.
    pub ca_file: Option<PathBuf>,
    /// The first part of every key (several fleets can share one Redis).
    pub prefix: String,
    /// How many replicas share the mailbox: the divisor of the limits when Redis is away.
    pub expected_replicas: u32,
    pub lease: Duration,
    pub timeout: Duration,
}

impl fmt::Debug for SharedSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSettings")
            .field("url", &self.display_url())
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("ca_file", &self.ca_file)
            .field("prefix", &self.prefix)
            .field("expected_replicas", &self.expected_replicas)
            .field("lease", &self.lease)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl SharedSettings {
    /// The URL without its user information (a password may be there), for logs.
    pub fn display_url(&self) -> String {
        redact_url(&self.url)
    }
}

/// `scheme://user:secret@host/db` → `scheme://***@host/db`; a URL without `@` is unchanged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "[not a URL]".into();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// Checks a `governor.shared` value: a `redis://` or `rediss://` URL with a host. The
/// message never repeats the URL (it may hold a password).
pub fn check_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(
            "must be a URL such as redis://redis.mail.svc:6379/0 (or rediss:// for TLS)".into(),
        );
    };
    if !matches!(scheme, "redis" | "rediss" | "valkey" | "valkeys") {
        return Err(format!(
            "the scheme {scheme:?} is not redis:// or rediss:// (TLS); Valkey speaks the same protocol"
        ));
    }
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() || host.starts_with(':') {
        return Err("names no host (redis://host:port/db)".into());
    }
    Ok(())
}

/// The keys of one mailbox's shared limits. Every key of a mailbox carries the same hash tag
/// (`{tenant/mailbox}`), so a Redis Cluster keeps them on one node and a script may use them
/// together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub rate: String,
    pub daily: String,
    pub daily_total: String,
    pub sessions: String,
    pub quota_hold: String,
    pub hold: String,
}

impl Keys {
    pub fn new(prefix: &str, tenant: &str, mailbox: &str) -> Keys {
        let tag = format!(
            "{prefix}:{{{}/{}}}",
            tenant.to_ascii_lowercase(),
            mailbox.to_ascii_lowercase()
        );
        Keys {
            rate: format!("{tag}:rate"),
            daily: format!("{tag}:daily"),
            daily_total: format!("{tag}:daily-total"),
            sessions: format!("{tag}:sessions"),
            quota_hold: format!("{tag}:quota-hold"),
            hold: format!("{tag}:hold"),
        }
    }
}

/// What the acquisition script said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Taken: a lease, a place in the window, the recipients.
    Go,
    /// The rate window or the daily budget frees in this long.
    Wait(Duration),
    /// Every session slot of the mailbox is leased (by this or another replica).
    Slot,
    /// The mailbox is held (quota) for this long.
    Held(Duration),
}

impl Answer {
    /// Reads the script's `{code, ms}` reply.
    pub fn from_reply(code: i64, ms: i64) -> Option<Answer> {
        let ms = Duration::from_millis(u64::try_from(ms.max(0)).unwrap_or(0));
        Some(match code {
            0 => Answer::Go,
            1 => Answer::Wait(ms),
            2 => Answer::Slot,
            3 => Answer::Held(ms),
            _ => return None,
        })
    }
}

impl Limits {
    /// The limits one of `replicas` replicas keeps alone while Redis is away: each limit
    /// divided, rounded down, never below 1 (a limit that is off stays off). The batch size
    /// is the mailbox's, not a share.
    pub fn divided(&self, replicas: u32) -> Limits {
        let share = |v: u32| {
            if v == 0 {
                0
            } else {
                (v / replicas.max(1)).max(1)
            }
        };
        Limits {
            max_connections: share(self.max_connections),
            rate: share(self.rate),
            rate_window: self.rate_window,
            daily_recipients: share(self.daily_recipients),
            max_recipients_per_message: self.max_recipients_per_message,
        }
    }
}

/// Whether Redis answers, and when to try it again if not. Pure: every method takes `now`.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// Since when calls fail (`None`: Redis answers).
    down_since: Option<Instant>,
    /// No call before this while down.
    next_try: Option<Instant>,
    /// Counts the returns from fallback: a governor that saw an older value records the
    /// sends it made meanwhile before anything else.
    epoch: u64,
    /// Fallback time not yet counted in the metric: since this instant while down, plus
    /// `uncounted` from an earlier fallback.
    uncounted_from: Option<Instant>,
    uncounted: Duration,
}

/// A change of [`Health`] worth a log line and a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// Calls started failing: the replica keeps its own share of the limits now.
    WentDown,
    /// Redis answers again after this long.
    CameBack(Duration),
}

impl Health {
    pub fn is_down(&self) -> bool {
        self.down_since.is_some()
    }

    pub fn down_since(&self) -> Option<Instant> {
        self.down_since
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// May a call go to Redis now? While down, one call per [`RETRY_AFTER`]: this claims it.
    pub fn claim_try(&mut self, now: Instant) -> bool {
        if self.down_since.is_none() {
            return true;
        }
        match self.next_try {
            Some(t) if t > now => false,
            _ => {
                self.next_try = Some(now + RETRY_AFTER);
                true
            }
        }
    }

    pub fn on_success(&mut self, now: Instant) -> Change {
        self.next_try = None;
        if let Some(from) = self.uncounted_from.take() {
            self.uncounted += now.saturating_duration_since(from);
        }
        match self.down_since.take() {
            Some(since) => {
                self.epoch += 1;
                Change::CameBack(now.saturating_duration_since(since))
            }
            None => Change::None,
        }
    }

    pub fn on_failure(&mut self, now: Instant) -> Change {
        self.next_try = Some(now + RETRY_AFTER);
        if self.down_since.is_some() {
            return Change::None;
        }
        self.down_since = Some(now);
        self.uncounted_from = Some(now);
        Change::WentDown
    }

    /// Whole seconds of fallback not yet counted, for the fallback-seconds counter; the
    /// fraction stays for the next call (several lanes may call it each second).
    pub fn take_fallback_secs(&mut self, now: Instant) -> u64 {
        if let Some(from) = self.uncounted_from {
            self.uncounted += now.saturating_duration_since(from);
            self.uncounted_from = self.down_since.map(|_| now);
        }
        let secs = self.uncounted.as_secs();
        self.uncounted -= Duration::from_secs(secs);
        secs
    }
}

/// An error text with the URL's user information and any password taken out (a client
/// error might quote them).
pub fn scrub(text: &str, settings: &SharedSettings) -> String {
    let mut out = text.replace(&settings.url, &settings.display_url());
    if let Some(p) = settings.password.as_deref().filter(|p| !p.is_empty()) {
        out = out.replace(p, "***");
    }
    if let Some((_, rest)) = settings.url.split_once("://") {
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            let secret = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
            for form in [secret.to_string(), percent_decoded(secret)] {
                if !form.is_empty() {
                    out = out.replace(&form, "***");
                }
            }
        }
    }
    out
}

/// `%XX` escapes decoded (a URL's password may be written so; a client may quote it plain).
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("redis://:s3cret@redis:6379/0"),
            "redis://***@redis:6379/0"
        );
        assert_eq!(
            redact_url("rediss://relay:p@ss@w0rd@r.example:6380"),
            "rediss://***@r.example:6380"
        );
        assert_eq!(redact_url("redis://redis:6379/2"), "redis://redis:6379/2");
        assert_eq!(redact_url("s3cret"), "[not a URL]");
        let s = SharedSettings {
            url: "redis://:s3cret@redis:6379/0".into(),
            password: Some("filepass".into()),
            ca_file: None,
            prefix: DEFAULT_PREFIX.into(),
            expected_replicas: 3,
            lease: DEFAULT_LEASE,
            timeout: DEFAULT_TIMEOUT,
        };
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("filepass"),
            "{shown}"
        );
    }

    #[test]
    fn urls_are_checked_without_echoing_them() {
        assert!(check_url("redis://127.0.0.1:6379/0").is_ok());
        assert!(check_url("rediss://:pw@redis.svc:6380").is_ok());
        for bad in [
            "127.0.0.1:6379",
            "http://redis:6379",
            "redis://",
            "redis://:pw@:6379/0",
        ] {
            let e = check_url(bad).expect_err(bad);
            assert!(!e.contains("pw@"), "{e}");
        }
    }

    #[test]
    fn keys_share_one_hash_tag_per_mailbox() {
        let k = Keys::new("fleet", "Contoso.onmicrosoft.com", "ERP@Contoso.com");
        assert_eq!(
            k.rate,
            "fleet:{contoso.onmicrosoft.com/erp@contoso.com}:rate"
        );
        for key in [
            &k.daily,
            &k.daily_total,
            &k.sessions,
            &k.quota_hold,
            &k.hold,
        ] {
            assert!(key.starts_with("fleet:{contoso.onmicrosoft.com/erp@contoso.com}:"));
        }
        assert_ne!(
            k,
            Keys::new("fleet", "contoso.onmicrosoft.com", "scans@contoso.com")
        );
    }

    #[test]
    fn fallback_limits_are_a_share_never_zero() {
        let full = Limits::default();
        let third = full.divided(3);
        assert_eq!(
            (third.max_connections, third.rate, third.daily_recipients),
            (1, 10, 3333)
        );
        assert_eq!(third.max_recipients_per_message, 500);
        let tenth = full.divided(10);
        assert_eq!((tenth.max_connections, tenth.rate), (1, 3));
        assert_eq!(full.divided(1), full);
        assert_eq!(full.divided(0), full, "0 replicas reads as 1");
        let off = Limits::unlimited().divided(4);
        assert_eq!(
            (off.max_connections, off.rate, off.daily_recipients),
            (0, 0, 0)
        );
    }

    #[test]
    fn answers_read_from_replies() {
        assert_eq!(Answer::from_reply(0, 123), Some(Answer::Go));
        assert_eq!(
            Answer::from_reply(1, 1500),
            Some(Answer::Wait(Duration::from_millis(1500)))
        );
        assert_eq!(Answer::from_reply(2, 0), Some(Answer::Slot));
        assert_eq!(
            Answer::from_reply(3, -5),
            Some(Answer::Held(Duration::ZERO))
        );
        assert_eq!(Answer::from_reply(7, 0), None);
    }

    #[test]
    fn health_tries_again_once_per_interval_and_counts_returns() {
        let t0 = Instant::now();
        let mut h = Health::default();
        assert!(h.claim_try(t0) && h.claim_try(t0), "up: always");
        assert_eq!(h.on_failure(t0), Change::WentDown);
        assert_eq!(h.on_failure(t0), Change::None, "said once");
        assert!(h.is_down());
        assert!(!h.claim_try(t0 + RETRY_AFTER / 2), "not yet");
        assert!(h.claim_try(t0 + RETRY_AFTER), "one probe");
        assert!(!h.claim_try(t0 + RETRY_AFTER), "only one");
        assert_eq!(h.epoch(), 0);
        let back = t0 + RETRY_AFTER * 3;
        assert_eq!(h.on_success(back), Change::CameBack(RETRY_AFTER * 3));
        assert_eq!(h.epoch(), 1);
        assert!(!h.is_down());
        assert_eq!(h.on_success(back), Change::None);
    }

    #[test]
    fn fallback_time_is_counted_once_to_the_second() {
        let t0 = Instant::now();
        let mut h = Health::default();
        assert_eq!(h.take_fallback_secs(t0), 0);
        h.on_failure(t0);
        let s = Duration::from_secs(1);
        assert_eq!(h.take_fallback_secs(t0 + s), 1);
        assert_eq!(h.take_fallback_secs(t0 + s * 3), 2);
        // Taken often (one call per lane per second): the fractions add up.
        let ms = Duration::from_millis(400);
        assert_eq!(h.take_fallback_secs(t0 + s * 3 + ms), 0);
        assert_eq!(h.take_fallback_secs(t0 + s * 3 + ms * 2), 0);
        assert_eq!(h.take_fallback_secs(t0 + s * 3 + ms * 3), 1);
        h.on_success(t0 + s * 5);
        assert_eq!(
            h.take_fallback_secs(t0 + s * 6),
            1,
            "0.2 left + 0.8 up to the return"
        );
        assert_eq!(h.take_fallback_secs(t0 + s * 9), 0, "nothing after it");
        h.on_failure(t0 + s * 10);
        assert_eq!(h.take_fallback_secs(t0 + s * 10 + ms / 2), 0);
        assert_eq!(h.take_fallback_secs(t0 + s * 11), 1);
    }

    #[test]
    fn error_texts_lose_every_form_of_the_password() {
        let settings = SharedSettings {
            url: "redis://relay:p%40ss%3Aw0rd@redis:6379/0".into(),
            password: Some("filepw".into()),
            ca_file: None,
            prefix: "p".into(),
            expected_replicas: 2,
            lease: Duration::from_secs(30),
            timeout: Duration::from_millis(200),
        };
        let text = "failed redis://relay:p%40ss%3Aw0rd@redis:6379/0 with p@ss:w0rd and filepw";
        let out = scrub(text, &settings);
        for secret in ["p%40ss%3Aw0rd", "p@ss:w0rd", "filepw"] {
            assert!(!out.contains(secret), "{out}");
        }
        assert!(out.contains("redis:6379"), "{out}");
        assert_eq!(percent_decoded("a%2Fb%zz%4"), "a/b%zz%4");
    }
}
