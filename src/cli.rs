//! The command line (DESIGN §8). `serve` is the default command.
//!
//! Exit codes: 0 ok, 64 bad configuration or usage, 69 upstream or credentials unusable,
//! 1 anything else.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::app::{Relay, Reload};
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
    /// Ask a running relay's admin port whether it is alive (`/healthz`), or ready with
    /// `--ready` (`/readyz`). Exit 0 if so, 1 if not. For Docker's HEALTHCHECK and exec
    /// probes: needs no shell or curl.
    Healthcheck(HealthcheckArgs),
    /// Benchmark load: send many messages over many connections to an SMTP server (the
    /// relay, or the sandbox) and report messages/s, MB/s, latency percentiles and errors.
    Loadgen(Box<LoadgenArgs>),
}

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
    /// Seconds to let in-flight messages finish after SIGTERM/SIGINT (default:
    /// shutdown.grace_secs, 30).
    #[arg(long)]
    pub grace_secs: Option<u64>,
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
                ..Default::default()
            },
        ),
        Some(Command::Serve(args)) => serve(cli.config.as_deref(), &env, args),
        Some(Command::Queue(args)) => queue(cli.config.as_deref(), &env, args),
        Some(Command::Check) => doctor(cli.config.as_deref(), &env, Doctor::Check),
        Some(Command::Token) => doctor(cli.config.as_deref(), &env, Doctor::Token),
        Some(Command::Healthcheck(a)) => healthcheck(cli.config.as_deref(), &env, a),
        Some(Command::Loadgen(a)) => loadgen(*a),
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

/// `healthcheck`: exit 0 if the admin port answers 200.
fn healthcheck(
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
    let addr = match crate::config::validate_admin(&crate::config::AdminConfig { listen }) {
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

/// `loadgen`: builds the options (every mistake exits 64 with the reason), runs, reports.
fn loadgen(a: LoadgenArgs) -> ExitCode {
    match loadgen_options(&a) {
        Ok(options) => {
            let runtime = match runtime(true) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let report = runtime.block_on(crate::loadgen::run(options));
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

fn loadgen_options(a: &LoadgenArgs) -> Result<crate::loadgen::Options, String> {
    use crate::loadgen::{parse_size_spec, Auth, Options, Tls};
    let (host, port) = crate::config::split_host_port(&a.to)
        .ok_or_else(|| format!("--to `{}` is not host:port", a.to))?;
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
        let secret = crate::config::read_secret_file(path)
            .map_err(|e| format!("--secret-file: {}", e.message))?;
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

/// A tokio runtime (`multi`: one worker per core, for `serve`), or the exit code after saying
/// why there is none.
pub(crate) fn runtime(multi: bool) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = if multi {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().map_err(|e| {
        eprintln!("smtp-oauth-relay: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
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
    let runtime = match runtime(true) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        // Before anything starts: a signal during start-up must drain (or be a reload), not
        // kill the process with the default action.
        let mut signals = match Signals::new() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("smtp-oauth-relay: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
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
        let grace = valid.shutdown_grace;
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
        let grace = args.grace_secs.map(Duration::from_secs).unwrap_or(grace);
        loop {
            match signals.next().await {
                Signal::Stop => break,
                Signal::Reload => match relay.reload_secrets() {
                    Ok(Reload::SecretReloaded { changed: true }) => {
                        tracing::info!("SIGHUP: client secret file read again; the new secret is used from the next token request");
                    }
                    Ok(Reload::SecretReloaded { changed: false }) => {
                        tracing::info!("SIGHUP: client secret file read again; unchanged");
                    }
                    Ok(Reload::NothingToReload) => {
                        tracing::info!("SIGHUP: nothing to re-read (the client secret is not from a file; restart to change configuration)");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: cannot use the secret file; keeping the secret in use");
                    }
                },
            }
        }
        tracing::info!(grace_secs = grace.as_secs(), "shutting down: no new connections, finishing messages in progress (a second signal exits at once)");
        let shutdown = relay.shutdown(grace);
        tokio::pin!(shutdown);
        let finished = loop {
            tokio::select! {
                f = &mut shutdown => break f,
                s = signals.next() => if s == Signal::Stop {
                    tracing::warn!("second signal: exiting now; queued mail stays in the spool, a message still in DATA was not accepted");
                    return ExitCode::FAILURE;
                },
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

/// What a signal asks of `serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// SIGTERM or SIGINT: drain and stop (a second one: stop now).
    Stop,
    /// SIGHUP: re-read secret files.
    Reload,
}

/// The signals `serve` listens to, installed once so none is missed between waits.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}

/// Exit code for "upstream or credentials unusable" (used by diagnostic commands).
pub fn exit_unavailable() -> ExitCode {
    ExitCode::from(EXIT_UNAVAILABLE)
}
