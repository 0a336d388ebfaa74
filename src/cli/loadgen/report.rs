//! What a `loadgen` run achieved: throughput, latency percentiles, errors by stage and code;
//! as text or JSON.

use std::collections::BTreeMap;

/// What a run achieved.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub target: String,
    pub concurrency: usize,
    pub messages_ok: u64,
    pub messages_failed: u64,
    pub bytes_ok: u64,
    pub elapsed_secs: f64,
    pub messages_per_sec: f64,
    pub megabytes_per_sec: f64,
    /// Milliseconds, per transaction (MAIL .. the reply to the final dot), successful ones.
    pub latency_ms: Latency,
    /// `STAGE CODE` (e.g. `DATA 451`) or `io`/`connect` -> count.
    pub errors: BTreeMap<String, u64>,
    pub pipelining: bool,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Percentiles of `micros` (sorted in place). Nearest-rank.
pub fn latency(micros: &mut [u32]) -> Latency {
    if micros.is_empty() {
        return Latency::default();
    }
    micros.sort_unstable();
    let rank = |p: f64| {
        let i = ((p * micros.len() as f64).ceil() as usize).clamp(1, micros.len()) - 1;
        f64::from(micros[i]) / 1000.0
    };
    let sum: u64 = micros.iter().map(|&m| u64::from(m)).sum();
    Latency {
        p50: rank(0.50),
        p90: rank(0.90),
        p99: rank(0.99),
        max: f64::from(*micros.last().unwrap()) / 1000.0,
        mean: sum as f64 / micros.len() as f64 / 1000.0,
    }
}

impl Report {
    /// The human-readable summary.
    pub fn text(&self) -> String {
        let mut out = format!(
            "loadgen -> {}: {} messages ok, {} failed, in {:.3} s over {} connections{}\n",
            self.target,
            self.messages_ok,
            self.messages_failed,
            self.elapsed_secs,
            self.concurrency,
            if self.pipelining { " (pipelining)" } else { "" },
        );
        out += &format!(
            "  throughput: {:.1} msg/s, {:.2} MB/s\n",
            self.messages_per_sec, self.megabytes_per_sec
        );
        let l = &self.latency_ms;
        out += &format!(
            "  latency per transaction: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n",
            l.p50, l.p90, l.p99, l.max
        );
        if self.errors.is_empty() {
            out += "  errors: none\n";
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            out += &format!("  errors: {}\n", list.join(", "));
        }
        out
    }
}
