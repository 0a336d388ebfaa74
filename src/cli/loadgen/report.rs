//! What a `loadgen` run achieved: throughput, latency percentiles, errors by stage and code;
//! as text or JSON.

use std::collections::BTreeMap;

/// What a run achieved.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub target: String,
    pub concurrency: usize,
    /// Every message the server answered `250` at the end of data.
    pub messages_ok: u64,
    /// Of those, the ones the relay said it delivered (`250 … delivered: …`).
    pub messages_delivered: u64,
    /// Of those, the ones the relay only queued (`250 … queued…`): not delivered yet.
    pub messages_queued: u64,
    pub messages_failed: u64,
    pub bytes_ok: u64,
    pub elapsed_secs: f64,
    pub messages_per_sec: f64,
    pub megabytes_per_sec: f64,
    /// Milliseconds, per transaction (MAIL .. the reply to the final dot), successful ones.
    pub latency_ms: Latency,
    /// `STAGE CODE` (e.g. `DATA 451`) or `io: <what went wrong>` -> count.
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

/// What a `250` at the end of data said became of the message, in the relay's wording
/// (`smtp::outcome`: `250 2.0.0 <id> delivered: …`, `250 2.0.0 <id> queued…`). Other
/// servers (Exchange, the sandbox) say neither: the message was accepted, no more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    Delivered,
    Queued,
    Other,
}

/// Reads [`Accepted`] from the text of a `250` reply (enhanced code included, as
/// [`crate::wire::Reply`] keeps its lines): the word after our id.
pub fn accepted_as(text: &str) -> Accepted {
    let first: Vec<String> = text
        .split_whitespace()
        .take(3)
        .map(|w| w.trim_end_matches([':', ',']).to_ascii_lowercase())
        .collect();
    if first.iter().any(|w| w == "delivered") {
        Accepted::Delivered
    } else if first.iter().any(|w| w == "queued") {
        Accepted::Queued
    } else {
        Accepted::Other
    }
}

/// How many distinct I/O error texts a report names; the rarer ones are summed up.
pub const MAX_IO_REASONS: usize = 10;

/// Key under which an I/O failure is counted: what went wrong, in the error's own words.
pub fn io_key(text: &str) -> String {
    format!("io: {text}")
}

/// Keeps at most [`MAX_IO_REASONS`] I/O error texts (the most frequent), summing the rest
/// under `io: other errors`, so a report stays readable whatever the failures said.
pub fn cap_io_reasons(errors: &mut BTreeMap<String, u64>) {
    let mut io: Vec<(String, u64)> = errors
        .iter()
        .filter(|(k, _)| k.starts_with("io: "))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    if io.len() <= MAX_IO_REASONS {
        return;
    }
    io.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut rest = 0;
    for (k, v) in io.drain(MAX_IO_REASONS..) {
        errors.remove(&k);
        rest += v;
    }
    *errors.entry("io: other errors".into()).or_default() += rest;
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
        let mut outcome = Vec::new();
        if self.messages_delivered > 0 {
            outcome.push(format!("{} delivered", self.messages_delivered));
        }
        if self.messages_queued > 0 {
            outcome.push(format!(
                "{} only queued by the relay, not yet delivered",
                self.messages_queued
            ));
        }
        let other = self.messages_ok - self.messages_delivered - self.messages_queued;
        if !outcome.is_empty() && other > 0 {
            outcome.push(format!("{other} accepted"));
        }
        let outcome = if outcome.is_empty() {
            String::new()
        } else {
            format!(" ({})", outcome.join(", "))
        };
        let mut out = format!(
            "loadgen -> {}: {} messages ok{outcome}, {} failed, in {:.3} s over {} connections{}\n",
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
