//! `healthcheck`: ask a running relay's admin port whether it is alive (`/healthz`) or ready
//! (`/readyz`); exit 0 if so. For Docker's `HEALTHCHECK` and exec probes: no shell, no curl.

use std::net::SocketAddr;
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
    let addr = asked_address(addr);
    let path = if args.ready { "/readyz" } else { "/healthz" };
    let runtime = match runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(probe(addr, path, Duration::from_secs(5))) {
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

/// The address to ask for `listen`: a wildcard (`0.0.0.0`, `::`) is asked on loopback.
pub fn asked_address(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], listen.port()))
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, listen.port()))
        }
        _ => listen,
    }
}

/// `healthcheck`: GET `path` from the admin port and report whether it answered 200. Plain
/// HTTP/1.0 over a TCP socket: no shell, no curl, so it works in a distroless image.
pub async fn probe(addr: SocketAddr, path: &str, limit: Duration) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to the admin port {addr}: {e}"))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.take(64 * 1024)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split_whitespace().nth(1).unwrap_or("");
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.trim().to_string())
            .unwrap_or_default();
        if status == "200" {
            Ok(body)
        } else {
            Err(format!("{path} answered {status}: {body}"))
        }
    };
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer from {addr} within {limit:?}")))
}
