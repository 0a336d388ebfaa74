//! The Lua scripts, each with the shared prelude in front, and the calls the relay makes of
//! them. Public so the tests make the same calls against a real Redis, with a time of their
//! choosing (the last argument); the relay always leaves the time to Redis.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{Script, ScriptInvocation};

use super::shared::Keys;
use super::{Limits, DAILY_WINDOW};

const PRELUDE: &str = include_str!("lua/prelude.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

pub static ACQUIRE: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/acquire.lua")));
pub static RELEASE: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/release.lua")));
pub static REFUND: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/refund.lua")));
pub static RENEW: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/renew.lua")));
pub static BACKFILL: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/backfill.lua")));
pub static QUOTA: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/quota.lua")));
pub static HOLD: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/hold.lua")));

/// The time argument: empty for Redis's own clock (the relay), or a time in ms (tests).
fn time_arg(time: Option<u64>) -> String {
    time.map(|t| t.to_string()).unwrap_or_default()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One acquisition, as the relay asks it: `recipients` recipients under `limits` (rate,
/// window and daily budget), with `allowed` session slots and leases of `lease`.
pub fn acquire(
    keys: &Keys,
    id: &str,
    recipients: u32,
    limits: &Limits,
    allowed: u32,
    lease: Duration,
    time: Option<u64>,
) -> ScriptInvocation<'static> {
    let mut inv = ACQUIRE.prepare_invoke();
    inv.key(&keys.rate)
        .key(&keys.daily)
        .key(&keys.daily_total)
        .key(&keys.sessions)
        .key(&keys.quota_hold)
        .arg(id)
        .arg(recipients)
        .arg(limits.rate)
        .arg(millis(limits.rate_window))
        .arg(limits.daily_recipients)
        .arg(allowed)
        .arg(millis(lease))
        .arg(millis(DAILY_WINDOW))
        .arg(time_arg(time));
    inv
}

/// The end of a send: its lease goes, and it counts in the window from now.
pub fn release(
    keys: &Keys,
    id: &str,
    limits: &Limits,
    time: Option<u64>,
) -> ScriptInvocation<'static> {
    let mut inv = RELEASE.prepare_invoke();
    inv.key(&keys.rate)
        .key(&keys.sessions)
        .arg(id)
        .arg(u32::from(limits.rate > 0))
        .arg(millis(limits.rate_window))
        .arg(time_arg(time));
    inv
}

/// Gives back everything `sends` (id, recipients) took.
pub fn refund(keys: &Keys, sends: &[(String, u32)]) -> ScriptInvocation<'static> {
    let mut inv = REFUND.prepare_invoke();
    inv.key(&keys.rate)
        .key(&keys.daily)
        .key(&keys.daily_total)
        .key(&keys.sessions);
    for (id, n) in sends {
        inv.arg(id).arg(n);
    }
    inv
}

/// Renews (or puts back) the leases `ids` for another `lease`.
pub fn renew(
    keys: &Keys,
    lease: Duration,
    ids: &[String],
    time: Option<u64>,
) -> ScriptInvocation<'static> {
    let mut inv = RENEW.prepare_invoke();
    inv.key(&keys.sessions)
        .arg(millis(lease))
        .arg(time_arg(time));
    for id in ids {
        inv.arg(id);
    }
    inv
}
