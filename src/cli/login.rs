//! `login`: signs a user in once for a delegated account (DESIGN §8, reference §1.6) with the
//! device code flow, and stores the refresh token the relay then uses and rotates.
//!
//! Reads the same configuration as `serve` (file, then environment) and refuses anything but
//! `account.credential = "delegated"`. Prints Microsoft's instructions (where to go, which
//! code to enter) on stdout, polls until the user has signed in, stores the refresh token in
//! `account.refresh_token_file` (0600, atomically; the directory is created 0700 if missing),
//! and says who signed in and whether that matches `account.mailbox`. The pure parts live in
//! `token::device_code`; this file is the driver. Nothing printed holds a token or the device
//! code.
//!
//! Exit codes: 0 signed in and stored, 64 configuration or usage, 69 the sign-in failed
//! (declined, expired, refused), 1 anything else (the file could not be written).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use super::process::{init_tracing, runtime, EXIT_CONFIG, EXIT_UNAVAILABLE};
use crate::config::{Config, ValidAccount};
use crate::diagnose;
use crate::token::device_code::DeviceCodeFlow;
use crate::token::{refresh_file, Credential, TokenError};

pub fn command(
    config_file: Option<&Path>,
    env: &[(String, String)],
    name: Option<&str>,
) -> ExitCode {
    let config = match Config::load(config_file, env) {
        Ok(c) => c,
        Err(e) => return super::process::config_error(e),
    };
    init_tracing("error", config.log.format);
    let valid = match config.validate() {
        Ok(v) => v,
        Err(e) => return super::process::config_error(e),
    };
    let account = match choose(&valid.accounts, name) {
        Ok(a) => a,
        Err(message) => return super::process::config_error(message),
    };
    let Credential::Delegated { refresh_token_file } = &account.credential.credential else {
        return super::process::config_error(format!(
            "`login` signs a user in for a delegated account, but account.credential is `{}`. \
             Set account.credential = \"delegated\" (SMTP_OAUTH_RELAY_CREDENTIAL=delegated) and \
             account.refresh_token_file (SMTP_OAUTH_RELAY_REFRESH_TOKEN_FILE) to use it.",
            account.credential.credential.kind()
        ));
    };
    let file = refresh_token_file.clone();
    let runtime = match runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(login(account, &file, &mut std::io::stdout()))
}

/// The account `login` is for: the one named, else the one delegated account (or the only
/// account, so that its error says what to configure).
fn choose<'a>(
    accounts: &'a [ValidAccount],
    name: Option<&str>,
) -> Result<&'a ValidAccount, String> {
    if let Some(name) = name {
        return accounts
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                let names: Vec<&str> = accounts.iter().map(|a| a.name.as_str()).collect();
                format!(
                    "--account {name}: no account has that name; the accounts are: {}",
                    names.join(", ")
                )
            });
    }
    let delegated: Vec<&ValidAccount> = accounts
        .iter()
        .filter(|a| matches!(a.credential.credential, Credential::Delegated { .. }))
        .collect();
    match delegated.as_slice() {
        [one] => Ok(one),
        [] => Ok(&accounts[0]),
        many => Err(format!(
            "several accounts are delegated ({}); say which one with --account NAME",
            many.iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Runs the flow for `account`, storing into `file`; instructions and the result go to `out`,
/// failures to stderr.
async fn login(account: &ValidAccount, file: &Path, out: &mut impl Write) -> ExitCode {
    let flow = match DeviceCodeFlow::new(&account.credential) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("smtp-oauth-relay: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match flow.request_code().await {
        Ok(c) => c,
        Err(e) => return refused("cannot get a device code", &e),
    };
    let received_at = tokio::time::Instant::now();
    let _ = writeln!(out, "{}", code.instructions());
    let _ = writeln!(
        out,
        "Sign in as the user whose mailbox the relay sends from ({}). Waiting up to {} s...",
        account.mailbox,
        code.expires_in.as_secs()
    );
    let _ = out.flush();
    let grant = match flow.wait_for_sign_in(&code, received_at).await {
        Ok(g) => g,
        Err(crate::token::device_code::SignInError::Refused(e)) => {
            return refused("the sign-in was refused", &e)
        }
        Err(e) => {
            eprintln!("smtp-oauth-relay: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let Some(refresh) = &grant.refresh_token else {
        eprintln!("smtp-oauth-relay: the sign-in gave no refresh token");
        return ExitCode::from(EXIT_UNAVAILABLE);
    };
    let stored = tokio::task::spawn_blocking({
        let (file, refresh) = (file.to_path_buf(), refresh.clone());
        move || refresh_file::store(&file, &refresh, true)
    })
    .await
    .unwrap_or_else(|e| Err(format!("the write task failed: {e}")));
    if let Err(why) = stored {
        eprintln!(
            "smtp-oauth-relay: the sign-in worked but the refresh token cannot be stored: {why}"
        );
        return ExitCode::FAILURE;
    }
    let claims = diagnose::decode_claims(secrecy::ExposeSecret::expose_secret(&grant.access_token));
    let user = claims.and_then(|c| c.upn.or(c.unique_name));
    for line in summary(user.as_deref(), &account.mailbox, file) {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
    ExitCode::SUCCESS
}

/// Says why the endpoint refused, with the fix, on stderr; exit 69 (or 64 for a bad URL).
fn refused(what: &str, e: &TokenError) -> ExitCode {
    eprintln!("smtp-oauth-relay: {what}: {e}");
    let advice = if e.aadsts() == Some(7000218) {
        Some(diagnose::public_client_flows_off().to_string())
    } else {
        e.advice()
    };
    if let Some(advice) = advice {
        eprintln!("  fix: {advice}");
    }
    if matches!(e, TokenError::InvalidUrl { .. }) {
        ExitCode::from(EXIT_CONFIG)
    } else {
        ExitCode::from(EXIT_UNAVAILABLE)
    }
}

/// What `login` prints once the token is stored: who signed in, where the token went, and a
/// warning when the user is not the mailbox (a shared mailbox needs FullAccess). Pure.
fn summary(user: Option<&str>, mailbox: &str, file: &Path) -> Vec<String> {
    let mut lines = vec![match user {
        Some(u) => format!("Signed in as {u}."),
        None => "Signed in (the token does not name the user).".to_string(),
    }];
    match user {
        Some(u) if u.eq_ignore_ascii_case(mailbox) => lines.push(format!(
            "{u} is account.mailbox: the relay sends as {mailbox}."
        )),
        Some(u) => lines.push(format!(
            "warning: {u} is not account.mailbox ({mailbox}). Exchange accepts this only if \
             {u} has FullAccess to {mailbox} (a shared mailbox: `Add-MailboxPermission \
             -Identity {mailbox} -User {u} -AccessRights FullAccess`); otherwise sign in as \
             {mailbox} or change account.mailbox."
        )),
        None => {}
    }
    lines.push(format!(
        "The refresh token is stored in {} (readable by this user only); the relay replaces \
         it on every refresh. Start the relay, or send a running one SIGHUP to read it.",
        file.display()
    ));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_names_the_user_and_warns_on_another_mailbox() {
        let file = Path::new("/var/lib/relay/refresh-token");
        let same = summary(Some("Relay@Contoso.com"), "relay@contoso.com", file);
        assert_eq!(same[0], "Signed in as Relay@Contoso.com.");
        assert!(same[1].contains("the relay sends as relay@contoso.com"));
        assert!(same.iter().all(|l| !l.starts_with("warning")));
        assert!(same[2].contains("/var/lib/relay/refresh-token"));

        let other = summary(Some("alice@contoso.com"), "shared@contoso.com", file);
        assert!(other[1].starts_with("warning: alice@contoso.com is not account.mailbox"));
        assert!(other[1].contains("FullAccess"), "{}", other[1]);

        let unknown = summary(None, "relay@contoso.com", file);
        assert_eq!(unknown.len(), 2);
    }

    #[test]
    fn a_confidential_app_is_told_to_allow_public_client_flows() {
        let advice = diagnose::public_client_flows_off().to_string();
        assert!(advice.contains("Allow public client flows"), "{advice}");
    }
}
