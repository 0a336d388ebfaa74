//! Entry point: install the one crypto provider, then hand over to the CLI.

fn main() -> std::process::ExitCode {
    // First thing: rustls panics at runtime if it must choose between two providers.
    smtp_oauth_relay::tls::install_crypto_provider();
    // Called as /usr/sbin/sendmail (a symlink): sendmail's own command line, not ours.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if smtp_oauth_relay::cli::sendmail::invoked_as_sendmail(argv.first().map(|a| a.as_os_str())) {
        return smtp_oauth_relay::cli::sendmail::main(argv);
    }
    smtp_oauth_relay::cli::run()
}
