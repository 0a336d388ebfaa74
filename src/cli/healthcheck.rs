//! `healthcheck`: ask a running relay's admin port whether it is alive (`/healthz`) or ready
//! (`/readyz`); exit 0 if so. For Docker's `HEALTHCHECK` and exec probes: no shell, no curl.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use super::process::{config_error, runtime};
use crate::config::{validate_admin, AdminConfig, Config};

#[derive(Debug, clap::Args)]
pub struct HealthcheckArgs {
    /// Check readiness (`/readyz`) instead of liveness (`/healthz`).
    #[arg(long)]
    pub ready: bool,
    /// Admin address to ask (default: admin.listen from the configuration; a wildcard
    /// address such as 0.0.0.0 is asked on loopback).
    #[arg(long)]
    pub addr: Option<String>,
}

/// `healthcheck`: exit 0 if the admin port answers 200.
pub fn run(
    config_file: Option<&Path>,
    env: &[(String, String)],
    args: HealthcheckArgs,
) -> ExitCode {
    let listen = match args.addr {
        Some(a) => a,
        None => match Config::load(config_file, env) {
            Ok(c) => c.admin.listen,
            Err(e) => return config_error(e),
        },
    };
    let addr = match validate_admin(&AdminConfig { listen }) {
        Ok(Some(a)) => a,
        Ok(None) => return config_error("admin.listen is off: there is no admin port to ask"),
        Err(e) => return config_error(e),
    };
    let addr = crate::ops::admin::asked_address(addr);
    let path = if args.ready { "/readyz" } else { "/healthz" };
    let runtime = match runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(crate::ops::admin::probe(addr, path, Duration::from_secs(5))) {
        Ok(body) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            ExitCode::FAILURE
        }
    }
}
