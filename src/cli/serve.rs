//! `serve` (the default command): load and validate the configuration before binding
//! anything, start the relay (against the embedded sandbox with `--sandbox`), then run until
//! a signal: SIGTERM/SIGINT drain for the grace time (a second one exits at once), SIGHUP
//! re-reads the client secret file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::Figment;

use super::process::{config_error, init_tracing, runtime};
use crate::app::Relay;
use crate::config::{env_overrides, unknown_env_vars, AccountConfig, Config, ValidConfig};
use crate::sandbox::{Sandbox, SandboxOptions};
use crate::token::Reloaded;

/// What `serve --sandbox` records as the upstream of the mail it queues: the stand-in's port
/// changes with every start, while its queued mail must survive a restart.
pub const SANDBOX_UPSTREAM: &str = "sandbox";

#[derive(Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// Use the embedded Exchange Online stand-in instead of Microsoft: no tenant needed.
    #[arg(long)]
    pub sandbox: bool,
    /// Where the sandbox stores the mail it receives. Its spool is `<sandbox-dir>/spool`
    /// unless delivery.spool_dir is set, so test mail never shares a queue with real mail.
    #[arg(long, default_value = "./sandbox-mail")]
    pub sandbox_dir: PathBuf,
    /// Seconds to let in-flight messages finish after SIGTERM/SIGINT (default:
    /// shutdown.grace_secs, 30).
    #[arg(long)]
    pub grace_secs: Option<u64>,
}

pub fn run(config_file: Option<&Path>, env: &[(String, String)], args: ServeArgs) -> ExitCode {
    let config = match Config::load(config_file, env) {
        Ok(c) => c,
        Err(e) => return config_error(e),
    };
    init_tracing("info", config.log.format);
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
        if args.sandbox && !spool_dir_is_set(config_file, env) {
            config.delivery.spool_dir = args.sandbox_dir.join("spool");
        }
        let sandbox = if args.sandbox {
            match start_sandbox(&mut config, &args.sandbox_dir).await {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("smtp-oauth-relay: cannot start the sandbox: {e}");
                    return ExitCode::FAILURE;
                }
            }
        } else {
            let none = config
                .account
                .iter()
                .all(|a| a.tenant.is_none() && a.client_id.is_none());
            if none {
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
        let mut destination = crate::app::destination(&valid);
        if sandbox.is_some() {
            destination.upstream = SANDBOX_UPSTREAM.into();
        }
        let relay = match Relay::start_for(valid, destination).await {
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
                spool = %relay.delivery().spool().root().display(),
                "sandbox mode: send mail to the relay; every message Exchange's stand-in accepts is written to the mail store as <id>.eml with its envelope in <id>.json"
            );
            let _ = s;
        }
        let grace = args.grace_secs.map(Duration::from_secs).unwrap_or(grace);
        loop {
            match signals.next().await {
                Signal::Stop => break,
                Signal::Reload => {
                    for line in relay.reload_inbound() {
                        match line {
                            Ok(done) => tracing::info!("SIGHUP: {done}"),
                            Err(e) => tracing::error!(error = %e, "SIGHUP: cannot use a listener file"),
                        }
                    }
                    match relay.reload_secrets() {
                    Ok(Reloaded::Changed) => {
                        tracing::info!("SIGHUP: credential files read again; the new credential is used from the next token request");
                    }
                    Ok(Reloaded::Unchanged) => {
                        tracing::info!("SIGHUP: credential files read again; unchanged");
                    }
                    Ok(Reloaded::NothingToReload) => {
                        tracing::info!("SIGHUP: nothing to re-read (the credential is not from a file; restart to change configuration)");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: cannot use the credential files; keeping the credential in use");
                    }
                    }
                }
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

/// Whether the configuration file or the environment sets `delivery.spool_dir` (else
/// `--sandbox` uses its own spool under `--sandbox-dir`).
fn spool_dir_is_set(config_file: Option<&Path>, env: &[(String, String)]) -> bool {
    const KEY: &str = "delivery.spool_dir";
    env_overrides(env).iter().any(|(key, _)| key == KEY)
        || config_file.is_some_and(|f| Figment::from(Toml::file_exact(f)).find_value(KEY).is_ok())
}

/// Starts the embedded sandbox and points the account at it.
async fn start_sandbox(config: &mut Config, dir: &Path) -> std::io::Result<Sandbox> {
    if config.account.iter().any(|a| a.tenant.is_some()) {
        tracing::warn!("--sandbox: the configured Microsoft tenants, accounts, routes and upstream are ignored");
    }
    std::fs::create_dir_all(dir)?;
    let mut opts = SandboxOptions::new(dir.to_path_buf());
    opts.mailboxes = vec!["relay@sandbox.example".into()];
    let sandbox = Sandbox::start(opts).await?;
    let ca = dir.join("sandbox-ca.pem");
    sandbox.write_ca_file(&ca)?;
    let o = sandbox.options();
    // One account, the sandbox's app with its client secret; the sender policy of the first
    // configured account is kept, so its From rewrite can be tried out.
    let first = config.account.first().cloned().unwrap_or_default();
    config.account = vec![AccountConfig {
        tenant: Some(o.tenant.clone()),
        client_id: Some(o.client_id.clone()),
        client_secret: Some(o.client_secret.clone()),
        mailbox: Some(o.mailboxes[0].clone()),
        authority: Some(sandbox.authority()),
        envelope_sender: first.envelope_sender,
        from_rewrite: first.from_rewrite,
        send_as: first.send_as,
        ..AccountConfig::default()
    }];
    config.route.clear();
    config.upstream.address = Some(sandbox.smtp_addr().to_string());
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
