//! Entry point: install the one crypto provider, then hand over to the CLI.

fn main() -> std::process::ExitCode {
    // First thing: rustls panics at runtime if it must choose between two providers.
    smtp_oauth_relay::tls::install_crypto_provider();
    smtp_oauth_relay::cli::run()
}
