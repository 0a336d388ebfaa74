//! The metrics registry: one process-wide Prometheus recorder, and a description of every
//! metric the relay records (names, units, help texts), so `/metrics` explains itself.
//!
//! The rooms record through the `metrics` facade where things happen; this file only installs
//! the recorder and renders it.

use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The process-wide Prometheus recorder, installed on first use. One per process: several
/// relays in one test process share it (their counters add up).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_seconds".into()),
                &[
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    300.0, 3600.0,
                ],
            )
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        describe();
        handle
    })
}

fn describe() {
    describe_counter!(
        "smtp_oauth_relay_messages_received_total",
        "Messages whose body arrived complete from a client"
    );
    describe_counter!(
        "smtp_oauth_relay_messages_delivered_total",
        "Messages Exchange accepted (per transaction)"
    );
    describe_counter!(
        "smtp_oauth_relay_messages_deferred_total",
        "Messages kept in the queue for a later attempt, by reply class"
    );
    describe_counter!(
        "smtp_oauth_relay_messages_failed_total",
        "Queued messages given up for good (moved to failed/), by class"
    );
    describe_counter!(
        "smtp_oauth_relay_messages_refused_total",
        "Messages refused back to the client with nothing kept, by class"
    );
    describe_counter!(
        "smtp_oauth_relay_upstream_replies_total",
        "Replies read from the upstream, by SMTP code"
    );
    describe_gauge!(
        "smtp_oauth_relay_spool_messages",
        "Messages in the spool's queue"
    );
    describe_gauge!(
        "smtp_oauth_relay_spool_oldest_message_age_seconds",
        Unit::Seconds,
        "Age of the oldest queued message"
    );
    describe_counter!(
        "smtp_oauth_relay_spool_write_failures_total",
        "Spool writes that failed, by kind (no_space: file system or quota full; other)"
    );
    describe_gauge!(
        "smtp_oauth_relay_spool_full",
        "1 from a spool write that failed for lack of space until a write works again"
    );
    describe_counter!(
        "smtp_oauth_relay_token_refreshes_total",
        "Access tokens obtained from the token endpoint"
    );
    describe_counter!(
        "smtp_oauth_relay_token_refresh_failures_total",
        "Failed token requests, by kind (config or transient)"
    );
    describe_gauge!(
        "smtp_oauth_relay_token_expiry_seconds",
        Unit::Seconds,
        "Seconds until the cached access token expires (0 when there is none)"
    );
    describe_counter!(
        "smtp_oauth_relay_governor_waits_total",
        "Sends that had to wait for the per-mailbox governor, by reason"
    );
    describe_histogram!(
        "smtp_oauth_relay_governor_wait_seconds",
        Unit::Seconds,
        "How long sends waited for the governor"
    );
    describe_counter!(
        "smtp_oauth_relay_governor_shared_waits_total",
        "Sends that waited for the fleet's shared limits in Redis, by reason (rate, connections, quota)"
    );
    describe_histogram!(
        "smtp_oauth_relay_governor_redis_seconds",
        Unit::Seconds,
        "Round-trip time of the shared governor's Redis calls (timeouts included)"
    );
    describe_gauge!(
        "smtp_oauth_relay_governor_shared_fallback",
        "1 while Redis cannot be used and each replica keeps its share of the limits"
    );
    describe_counter!(
        "smtp_oauth_relay_governor_shared_fallbacks_total",
        "Times the shared governor fell back to local limits"
    );
    describe_counter!(
        "smtp_oauth_relay_governor_shared_fallback_seconds_total",
        Unit::Seconds,
        "Seconds spent in fallback to local limits"
    );
    describe_gauge!(
        "smtp_oauth_relay_governor_sends_in_window",
        "Sends in the current rate window (the mailbox's current rate)"
    );
    describe_gauge!(
        "smtp_oauth_relay_governor_sessions_in_flight",
        "Upstream sends in progress for the mailbox"
    );
    describe_gauge!(
        "smtp_oauth_relay_governor_recipients_24h",
        "Recipients sent in the last 24 hours"
    );
    describe_gauge!(
        "smtp_oauth_relay_account_held",
        "1 while the account is held for a configuration error"
    );
    describe_counter!(
        "smtp_oauth_relay_inbound_connections_total",
        "Inbound SMTP connections accepted"
    );
    describe_gauge!(
        "smtp_oauth_relay_inbound_connections_active",
        "Inbound SMTP connections open now"
    );
    describe_counter!(
        "smtp_oauth_relay_inbound_connections_refused_total",
        "Inbound SMTP connections refused, by reason"
    );
    describe_histogram!(
        "smtp_oauth_relay_delivery_latency_seconds",
        Unit::Seconds,
        "From receipt to Exchange's acceptance"
    );
}
