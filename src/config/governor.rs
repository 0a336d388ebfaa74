//! The `[governor]` section: per-mailbox pacing, and the fleet's shared limits in Redis
//! (`governor.shared`), whose URL may hold a password and is never shown.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Per-mailbox pacing (reference §4.1). `0` disables a limit (benchmarks against the sandbox).
/// `Debug` shows the Redis URL without its password.
#[derive(Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GovernorConfig {
    /// Messages per rolling window (Exchange: 30 per minute).
    pub rate_per_minute: u32,
    /// The window `rate_per_minute` counts over, in seconds. Exchange's is 60; shorter windows
    /// are for tests and benchmarks.
    pub rate_window_secs: u64,
    /// Recipients per rolling 24 hours (Exchange: 10,000).
    pub daily_recipients: u32,
    /// Messages with more recipients are sent in batches of this size (Exchange: 500).
    pub recipients_per_message: u32,
    /// `redis://host:port/db` or `rediss://…`: the mailbox limits are kept in Redis (or
    /// Valkey) and shared by every replica using it. May hold a password: never shown.
    #[serde(serialize_with = "serialize_redacted_url")]
    pub shared: Option<String>,
    /// A file holding the Redis password (wins over one in the URL).
    pub shared_password_file: Option<PathBuf>,
    /// A PEM file of the CA that signed a `rediss://` server's certificate (when the system
    /// does not trust it).
    pub shared_ca_file: Option<PathBuf>,
    /// The first part of every Redis key (several fleets can share one Redis).
    pub shared_key_prefix: String,
    /// How many replicas share a mailbox: while Redis cannot be reached, each keeps
    /// `limits / expected_replicas` alone.
    pub expected_replicas: u32,
    /// A session lease lasts this long unless renewed (a crashed replica's sessions free
    /// this late).
    pub shared_lease_secs: u64,
    /// One Redis call may take this long; slower means "Redis is away" (fallback).
    pub shared_timeout_ms: u64,
}

impl Default for GovernorConfig {
    fn default() -> Self {
        Self {
            rate_per_minute: 30,
            rate_window_secs: 60,
            daily_recipients: 10_000,
            recipients_per_message: 500,
            shared: None,
            shared_password_file: None,
            shared_ca_file: None,
            shared_key_prefix: crate::governor::shared::DEFAULT_PREFIX.into(),
            expected_replicas: 1,
            shared_lease_secs: crate::governor::shared::DEFAULT_LEASE.as_secs(),
            shared_timeout_ms: crate::governor::shared::DEFAULT_TIMEOUT.as_millis() as u64,
        }
    }
}

impl std::fmt::Debug for GovernorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GovernorConfig")
            .field("rate_per_minute", &self.rate_per_minute)
            .field("rate_window_secs", &self.rate_window_secs)
            .field("daily_recipients", &self.daily_recipients)
            .field("recipients_per_message", &self.recipients_per_message)
            .field(
                "shared",
                &self
                    .shared
                    .as_deref()
                    .map(crate::governor::shared::redact_url),
            )
            .field("shared_password_file", &self.shared_password_file)
            .field("shared_ca_file", &self.shared_ca_file)
            .field("shared_key_prefix", &self.shared_key_prefix)
            .field("expected_replicas", &self.expected_replicas)
            .field("shared_lease_secs", &self.shared_lease_secs)
            .field("shared_timeout_ms", &self.shared_timeout_ms)
            .finish()
    }
}

fn serialize_redacted_url<S: serde::Serializer>(
    v: &Option<String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(url) => s.serialize_some(&crate::governor::shared::redact_url(url)),
        None => s.serialize_none(),
    }
}
