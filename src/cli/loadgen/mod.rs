//! `loadgen`: an SMTP load generator for benchmarks (DESIGN §1, user 3).
//!
//! C connections share N messages (or run for a duration). Each connection greets once
//! (EHLO, optional STARTTLS and AUTH) and then sends message after message on the same
//! session: `MAIL`, `RCPT` x R and `DATA` in one write when the server offers PIPELINING
//! (RFC 2920; the group ends at `DATA`), then the body and the final dot. Latency is measured
//! per transaction, from writing `MAIL` to reading the reply to the final dot. A refused
//! command counts under its stage and code (`RCPT 451`), is followed by `RSET`, and the
//! connection goes on; a broken connection counts under `io: <what went wrong>` (refused,
//! reset, timeout…) and is opened again. A `250` at the end of data counts as ok, and also
//! as delivered or queued when the relay's reply says which.
//!
//! Message bodies are built once per size: generated headers (with a unique `Message-ID`) and
//! 76-character filler lines that never start with `.`, so no dot-stuffing is needed and the
//! bytes on the wire are exactly the requested size.
//!
//! - `spec.rs`: sizes, bodies, TLS and AUTH (pure parts tested);
//! - `report.rs`: the report and its percentiles;
//! - `run.rs`: the driver ([`run`]);
//! - here: the command line's options, checked (every mistake exits 64 with the reason).

mod report;
mod run;
mod spec;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::process::{config_error, runtime};
use crate::config::split_host_port;
use crate::token::read_secret_file;
pub use report::{latency, Latency, Report};
pub use run::run;
pub use spec::{body, parse_size_spec, stamp, Auth, Options, SizeSpec, Tls, MIN_SIZE};

#[derive(Debug, clap::Args)]
pub struct LoadgenArgs {
    /// Server to send to, host:port (e.g. the relay at 127.0.0.1:2525).
    #[arg(long)]
    pub to: String,
    /// Messages to send in all (default 1000 unless --duration is given).
    #[arg(long)]
    pub messages: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Concurrent connections.
    #[arg(long, default_value_t = 10)]
    pub concurrency: usize,
    /// Message size in bytes: 5000, 5k, 1m; a range 1k-100k; or a mix 1k:70,10k:25,1m:5
    /// (k = 1,000).
    #[arg(long, default_value = "5000")]
    pub size: String,
    /// Recipients per message.
    #[arg(long, default_value_t = 1)]
    pub recipients: u32,
    /// Envelope sender (default: --user when authenticating, which Exchange and the sandbox
    /// require; else loadgen@loadgen.example).
    #[arg(long)]
    pub from: Option<String>,
    /// Send each command and wait for its reply, even if the server offers PIPELINING.
    #[arg(long)]
    pub no_pipelining: bool,
    /// Use STARTTLS (required before AUTH by most servers).
    #[arg(long)]
    pub starttls: bool,
    /// Name to verify the server certificate against (default: the host of --to).
    #[arg(long)]
    pub tls_name: Option<String>,
    /// PEM file of extra CAs to trust (e.g. the sandbox's sandbox-ca.pem).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// AUTH mechanism after STARTTLS: plain or xoauth2.
    #[arg(long, value_parser = ["plain", "xoauth2"])]
    pub auth: Option<String>,
    /// AUTH user name (for xoauth2: the mailbox).
    #[arg(long)]
    pub user: Option<String>,
    /// File holding the AUTH password or the OAuth2 access token (never printed).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Progress line on stderr every N seconds (default: every 5 s when stderr is a
    /// terminal; 0 = never).
    #[arg(long)]
    pub progress: Option<u64>,
}

/// `loadgen`: builds the options (every mistake exits 64 with the reason), runs, reports.
pub fn command(a: LoadgenArgs) -> ExitCode {
    match options(&a) {
        Ok(options) => {
            let runtime = match runtime(true) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let report = runtime.block_on(run(options));
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("report serializes")
                );
            } else {
                print!("{}", report.text());
            }
            if report.messages_ok == 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => config_error(format!("loadgen: {e}")),
    }
}

fn options(a: &LoadgenArgs) -> Result<Options, String> {
    let (host, port) =
        split_host_port(&a.to).ok_or_else(|| format!("--to `{}` is not host:port", a.to))?;
    let target = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .map_err(|e| format!("--to {}: {e}", a.to))?
        .next()
        .ok_or_else(|| format!("--to {}: no address", a.to))?;
    let mut o = Options::new(target);
    o.messages = match (a.messages, a.duration) {
        (Some(n), _) => Some(n),
        (None, Some(_)) => None,
        (None, None) => Some(1000),
    };
    if a.messages == Some(0) {
        return Err("--messages must be at least 1".into());
    }
    o.duration = match a.duration {
        Some(d) if !(d > 0.0 && d.is_finite()) => {
            return Err("--duration must be a positive number of seconds".into())
        }
        Some(d) => Some(Duration::from_secs_f64(d)),
        None => None,
    };
    if a.concurrency == 0 || a.concurrency > 10_000 {
        return Err("--concurrency must be between 1 and 10000".into());
    }
    o.concurrency = a.concurrency;
    o.size = parse_size_spec(&a.size).map_err(|e| format!("--size: {e}"))?;
    if a.recipients == 0 || a.recipients > 1000 {
        return Err("--recipients must be between 1 and 1000".into());
    }
    o.recipients = a.recipients;
    if let Some(from) = a
        .from
        .clone()
        .or_else(|| a.auth.as_ref().and(a.user.clone()))
    {
        o.from = from;
    }
    o.pipelining = !a.no_pipelining;
    if a.starttls {
        let roots = match &a.ca_file {
            Some(p) => {
                crate::tls::load_pem_certificates(p).map_err(|e| format!("--ca-file: {e}"))?
            }
            None => Vec::new(),
        };
        let config = crate::tls::client_config(&roots).map_err(|e| e.to_string())?;
        o.tls = Some(Tls {
            server_name: a.tls_name.clone().unwrap_or(host),
            config,
        });
    } else if a.ca_file.is_some() || a.tls_name.is_some() {
        return Err("--ca-file and --tls-name need --starttls".into());
    }
    if let Some(mech) = &a.auth {
        let user = a.user.clone().ok_or("--auth needs --user")?;
        let path = a.secret_file.as_ref().ok_or("--auth needs --secret-file")?;
        let secret = read_secret_file(path).map_err(|e| format!("--secret-file: {e}"))?;
        o.auth = Some(match mech.as_str() {
            "plain" => Auth::Plain {
                user,
                password: secret,
            },
            _ => Auth::XOAuth2 {
                user,
                token: secret,
            },
        });
    } else if a.user.is_some() || a.secret_file.is_some() {
        return Err("--user and --secret-file need --auth".into());
    }
    o.progress = match a.progress {
        Some(0) => None,
        Some(n) => Some(Duration::from_secs(n)),
        None => {
            std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| Duration::from_secs(5))
        }
    };
    Ok(o)
}
