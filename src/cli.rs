//! The command line (DESIGN §8). `serve` is the default command.
//!
//! Exit codes: 0 ok, 64 bad configuration or usage, 69 upstream or credentials unusable,
//! 1 anything else.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::app::Relay;
use crate::config::{unknown_env_vars, Config, LogFormat, ValidConfig};
use crate::doctor::Doctor;
use crate::queue_cmd::QueueCommand;
use crate::sandbox::{Sandbox, SandboxOptions};

pub const EXIT_CONFIG: u8 = 64;
pub const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Debug, Parser)]
#[command(
    name = "smtp-oauth-relay",
    version,
    about = "SMTP relay: plain SMTP in, Exchange Online SMTP AUTH with OAuth2 (XOAUTH2) out"
)]
pub struct Cli {
    /// Configuration file (TOML). Environment variables override it.
    #[arg(long, global = true, env = "SMTP_OAUTH_RELAY_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay (the default).
    Serve(ServeArgs),
    /// Look at and act on the spool (safe while the relay runs); needs only
    /// delivery.spool_dir from the configuration.
    Queue(QueueArgs),
    /// Check the set-up: configuration, token and its claims, STARTTLS + AUTH XOAUTH2 with
    /// Exchange (nothing is sent). Exit 0 only if every step passes.
    Check,
    /// Fetch a token and print its expiry and claims (never the token itself).
    Token,
    /// Send one real test message through the full path and print each step with timings.
    SendTest(SendTestArgs),
}

#[derive(Debug, clap::Args)]
pub struct SendTestArgs {
    /// Recipient of the test message.
    #[arg(long)]
    pub to: String,
    /// Envelope and header sender (default: the mailbox).
    #[arg(long)]
    pub from: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct QueueArgs {
    #[command(subcommand)]
    pub command: QueueCommand,
}

#[derive(Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// Use the embedded Exchange Online stand-in instead of Microsoft: no tenant needed.
    #[arg(long)]
    pub sandbox: bool,
    /// Where the sandbox stores the mail it receives.
    #[arg(long, default_value = "./sandbox-mail")]
    pub sandbox_dir: PathBuf,
    /// Seconds to let in-flight messages finish after SIGTERM/SIGINT.
    #[arg(long, default_value_t = 30)]
    pub grace_secs: u64,
}

/// Parses the command line and runs the chosen command.
pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print and exit 0; a usage error exits 64 (DESIGN §8), not
        // clap's 2.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let env: Vec<(String, String)> = std::env::vars().collect();
    match cli.command {
        None => serve(
            cli.config.as_deref(),
            &env,
            ServeArgs {
                sandbox_dir: PathBuf::from("./sandbox-mail"),
                grace_secs: 30,
                ..Default::default()
            },
        ),
        Some(Command::Serve(args)) => serve(cli.config.as_deref(), &env, args),
        Some(Command::Queue(args)) => queue(cli.config.as_deref(), &env, args),
        Some(Command::Check) => doctor(cli.config.as_deref(), &env, Doctor::Check),
        Some(Command::Token) => doctor(cli.config.as_deref(), &env, Doctor::Token),
        Some(Command::SendTest(a)) => doctor(
            cli.config.as_deref(),
            &env,
            Doctor::SendTest {
                to: a.to,
                from: a.from,
            },
        ),
    }
}

/// `queue ...`: only `delivery.spool_dir` matters, so the account need not be configured
/// (no `validate()`). Logs only warnings (e.g. an unreadable envelope) unless RUST_LOG says.
fn queue(config_file: Option<&Path>, env: &[(String, String)], args: QueueArgs) -> ExitCode {
    let config = match Config::load(config_file, env) {
        Ok(c) => c,
        Err(e) => return config_error(e),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let spool_dir = &config.delivery.spool_dir;
    if spool_dir.as_os_str().is_empty() {
        return config_error("delivery.spool_dir: must not be empty");
    }
    crate::queue_cmd::run(args.command, spool_dir)
}

fn doctor(config_file: Option<&Path>, env: &[(String, String)], which: Doctor) -> ExitCode {
    let config = match Config::load(config_file, env) {
        Ok(c) => c,
        Err(e) => return config_error(e),
    };
    // Quiet logs: the command prints its own report. RUST_LOG still works.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    crate::doctor::run(which, config)
}

fn config_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("smtp-oauth-relay: {e}");
    ExitCode::from(EXIT_CONFIG)
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: journald, files and pipes get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn serve(config_file: Option<&Path>, env: &[(String, String)], args: ServeArgs) -> ExitCode {
    let config = match Config::load(config_file, env) {
        Ok(c) => c,
        Err(e) => return config_error(e),
    };
    init_tracing(config.log.format);
    for name in unknown_env_vars(env) {
        tracing::warn!(variable = %name, "unknown environment variable ignored (a typo?)");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("smtp-oauth-relay: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let mut config = config;
        let sandbox = if args.sandbox {
            match start_sandbox(&mut config, &args.sandbox_dir).await {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("smtp-oauth-relay: cannot start the sandbox: {e}");
                    return ExitCode::FAILURE;
                }
            }
        } else {
            if config.account.tenant.is_none() && config.account.client_id.is_none() {
                return config_error(
                    "no Microsoft 365 tenant is configured (account.tenant / \
                     SMTP_OAUTH_RELAY_TENANT). Configure one (see config/relay.example.toml), \
                     or try the relay first with `smtp-oauth-relay serve --sandbox`, which uses \
                     the embedded Exchange Online stand-in",
                );
            }
            None
        };
        let valid: ValidConfig = match config.validate() {
            Ok(v) => v,
            Err(e) => return config_error(e),
        };
        for w in &valid.warnings {
            tracing::warn!("{w}");
        }
        let relay = match Relay::start(valid).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("smtp-oauth-relay: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(s) = &sandbox {
            tracing::info!(
                relay = %relay.local_addr(),
                mail_store = %args.sandbox_dir.display(),
                "sandbox mode: send mail to the relay; every message Exchange's stand-in accepts is written to the mail store as <id>.eml with its envelope in <id>.json"
            );
            let _ = s;
        }
        wait_for_signal().await;
        tracing::info!(grace_secs = args.grace_secs, "shutting down: no new connections, finishing messages in progress");
        let shutdown = relay.shutdown(Duration::from_secs(args.grace_secs));
        let finished = tokio::select! {
            f = shutdown => f,
            _ = wait_for_signal() => {
                tracing::warn!("second signal: exiting now");
                false
            }
        };
        if let Some(s) = sandbox {
            s.shutdown().await;
        }
        if finished {
            tracing::info!("stopped");
        } else {
            tracing::warn!("stopped before every connection finished");
        }
        ExitCode::SUCCESS
    })
}

/// Starts the embedded sandbox and points the account at it.
async fn start_sandbox(config: &mut Config, dir: &Path) -> std::io::Result<Sandbox> {
    if config.account.tenant.is_some() {
        tracing::warn!("--sandbox: the configured Microsoft tenant and upstream are ignored");
    }
    std::fs::create_dir_all(dir)?;
    let mut opts = SandboxOptions::new(dir.to_path_buf());
    opts.mailboxes = vec!["relay@sandbox.example".into()];
    let sandbox = Sandbox::start(opts).await?;
    let ca = dir.join("sandbox-ca.pem");
    sandbox.write_ca_file(&ca)?;
    let o = sandbox.options();
    let account = &mut config.account;
    account.tenant = Some(o.tenant.clone());
    account.client_id = Some(o.client_id.clone());
    account.client_secret = Some(o.client_secret.clone());
    account.client_secret_file = None;
    account.mailbox = Some(o.mailboxes[0].clone());
    account.authority = sandbox.authority();
    config.upstream.address = sandbox.smtp_addr().to_string();
    config.upstream.tls_server_name = Some("localhost".into());
    config.tls.extra_ca_file = Some(ca);
    tracing::info!(
        token_endpoint = %sandbox.token_url(),
        smtp = %sandbox.smtp_addr(),
        "sandbox started (embedded Exchange Online stand-in on loopback)"
    );
    Ok(sandbox)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Exit code for "upstream or credentials unusable" (used by diagnostic commands).
pub fn exit_unavailable() -> ExitCode {
    ExitCode::from(EXIT_UNAVAILABLE)
}
