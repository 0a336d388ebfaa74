//! The Lua scripts, each with the shared prelude in front. Public so the tests can run them
//! against a real Redis with a time of their choosing (their last argument); the relay
//! always leaves that argument empty.

use std::sync::LazyLock;

use redis::Script;

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
