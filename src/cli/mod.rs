//! The command line (DESIGN §8): parsing and dispatch. `serve` is the default command.
//!
//! - `serve`: run the relay ([`serve`]);
//! - `check`, `token`, `send-test`: the set-up diagnostics ([`doctor`]);
//! - `queue list|show|retry|delete|adopt`: the spool, safe while the relay runs ([`queue`],
//!   with the table renderer in [`table`] and whose each message is in [`adopt`]);
//! - `loadgen`: benchmark load ([`loadgen`]);
//! - `healthcheck`: ask the admin port ([`healthcheck`]);
//! - `login`: sign a user in once for a delegated account ([`login`]);
//! - `hash-password`: a password hash for the inbound users file ([`hash_password`]).
//! - `sendmail`: hand one message from stdin to the relay, or its spool ([`sendmail`], with
//!   the pure options and header work in [`sendmail_args`]); also what the binary does when
//!   called `sendmail`. [`dialog`] is the plain SMTP client it shares with `loadgen`.
//!
//! Exit codes ([`process`]): 0 ok, 64 bad configuration or usage, 69 upstream or credentials
//! unusable, 75 (`sendmail`) try again later, 1 anything else.

pub mod adopt;
pub mod dialog;
pub mod doctor;
pub mod hash_password;
pub mod healthcheck;
pub mod loadgen;
pub mod login;
pub mod process;
pub mod proxy;
pub mod queue;
pub mod sendmail;
pub mod sendmail_args;
pub mod serve;
pub mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use doctor::{Doctor, SendTestArgs};
use healthcheck::HealthcheckArgs;
use process::EXIT_CONFIG;
use queue::QueueArgs;
use serve::ServeArgs;

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
    Loadgen(Box<loadgen::LoadgenArgs>),
    /// Sign a user in once for `account.credential = "delegated"` (device code flow): prints
    /// where to go and which code to enter, waits for the sign-in, and stores the refresh
    /// token in account.refresh_token_file (0600). Exit 0 when stored, 69 if the sign-in
    /// failed or expired.
    Login {
        /// The `[[account]]` to sign in for, by name (needed when several are delegated).
        #[arg(long)]
        account: Option<String>,
    },
    /// Hash a password for the users file (inbound AUTH): reads it from the first line of
    /// stdin, prints its argon2id hash, or with NAME the users-file line `NAME:HASH`. Exit 64
    /// for an empty password or a NAME with `:` or whitespace.
    HashPassword(hash_password::HashPasswordArgs),
    /// Send one message read from stdin, like /usr/sbin/sendmail (also what the binary does
    /// when called `sendmail`): `-t`, `-i`, `-f ADDR`, `-F NAME`, `--`, recipients. Hands it
    /// to the running relay, or queues it in the spool when none answers. Exit 0 handed
    /// over, 64 usage, 69 refused (5xx), 75 neither the relay nor the spool took it.
    #[command(disable_help_flag = true)]
    Sendmail {
        /// sendmail's options and recipients, as sendmail takes them.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
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
    let config = cli.config.as_deref();
    match cli.command {
        None => serve::run(
            config,
            &env,
            ServeArgs {
                sandbox_dir: PathBuf::from("./sandbox-mail"),
                ..Default::default()
            },
        ),
        Some(Command::Serve(args)) => serve::run(config, &env, args),
        Some(Command::Queue(args)) => queue::command(config, &env, args),
        Some(Command::Check) => doctor::command(config, &env, Doctor::Check),
        Some(Command::Token) => doctor::command(config, &env, Doctor::Token),
        Some(Command::Healthcheck(a)) => healthcheck::run(config, &env, a),
        Some(Command::Loadgen(a)) => loadgen::command(*a),
        Some(Command::Login { account }) => login::command(config, &env, account.as_deref()),
        Some(Command::HashPassword(a)) => hash_password::command(a),
        Some(Command::Sendmail { args }) => sendmail::command(config, &env, &args),
        Some(Command::SendTest(a)) => doctor::command(
            config,
            &env,
            Doctor::SendTest {
                to: a.to,
                from: a.from,
            },
        ),
    }
}
