//! What every command shares: exit codes (DESIGN §8), the tokio runtime, the one way logs
//! are set up, and how a configuration error is reported.

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Bad configuration or usage (the message names the key).
pub const EXIT_CONFIG: u8 = 64;
/// The upstream or the credentials are unusable (diagnostic commands).
pub const EXIT_UNAVAILABLE: u8 = 69;
/// A temporary failure: try again later (`sendmail`: neither the relay nor the spool took
/// the message; sysexits.h `EX_TEMPFAIL`).
pub const EXIT_TEMPFAIL: u8 = 75;

/// A tokio runtime (`multi`: one worker per core, for `serve`), or the exit code after saying
/// why there is none.
pub fn runtime(multi: bool) -> Result<tokio::runtime::Runtime, ExitCode> {
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

/// Says what is wrong on stderr and gives the configuration exit code.
pub fn config_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("smtp-oauth-relay: {e}");
    ExitCode::from(EXIT_CONFIG)
}

/// Logs to stderr, filtered by `RUST_LOG` or else `default_filter` (`serve` logs `info`; the
/// commands that print their own report log only `warn` or `error`). Colour only on a
/// terminal: journald, files and pipes get plain text.
pub fn init_tracing(default_filter: &str, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
