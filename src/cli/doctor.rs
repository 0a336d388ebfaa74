//! `check`, `token` and `send-test`: the set-up diagnostics a new user runs first (the
//! equivalent of an app's "Test Email" button, with the reason when it fails).
//!
//! Thin drivers: the advice itself comes from the pure `diagnose` room. Every step prints OK
//! or the problem with its fix, and its time. Nothing printed contains the secret, the token
//! or the XOAUTH2 string.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use super::process::{init_tracing, runtime, EXIT_CONFIG, EXIT_UNAVAILABLE};
use crate::config::{unknown_env_vars, Config, ValidAccount, ValidConfig};
use crate::diagnose;
use crate::token::TokenCache;
use crate::upstream::{MessageBody, OutboundMessage, Upstream};

#[derive(Debug, clap::Args)]
pub struct SendTestArgs {
    /// Recipient of the test message.
    #[arg(long)]
    pub to: String,
    /// Envelope and header sender (default: the mailbox).
    #[arg(long)]
    pub from: Option<String>,
}

/// Which diagnostic to run.
#[derive(Debug, Clone)]
pub enum Doctor {
    /// Lint, token, claims, STARTTLS + AUTH without sending.
    Check,
    /// Lint, token, claims; print them.
    Token,
    /// Everything, then one real message.
    SendTest { to: String, from: Option<String> },
}

struct Report<W: Write> {
    out: W,
    failed: bool,
}

impl<W: Write> Report<W> {
    fn ok(&mut self, step: &str, took: Option<Duration>, detail: &str) {
        let _ = writeln!(
            self.out,
            "[ OK ] {step}{}{}",
            timing(took),
            detail_sep(detail)
        );
    }

    fn fail(&mut self, step: &str, took: Option<Duration>, problem: &str, fix: Option<&str>) {
        self.failed = true;
        let _ = writeln!(self.out, "[FAIL] {step}{}: {problem}", timing(took));
        if let Some(fix) = fix {
            let _ = writeln!(self.out, "       fix: {fix}");
        }
    }

    fn info(&mut self, line: &str) {
        let _ = writeln!(self.out, "       {line}");
    }
}

fn timing(took: Option<Duration>) -> String {
    took.map(|d| format!(" ({} ms)", d.as_millis()))
        .unwrap_or_default()
}

fn detail_sep(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

pub fn command(config_file: Option<&Path>, env: &[(String, String)], which: Doctor) -> ExitCode {
    let config = match Config::load(config_file, env) {
        Ok(c) => c,
        Err(e) => return super::process::config_error(e),
    };
    // Quiet logs: the command prints its own report. RUST_LOG still works.
    init_tracing("error", config.log.format);
    run(which, config, env)
}

/// Runs a diagnostic; prints to stdout. Exit 0 only if every step passed. `env` is the
/// environment the configuration came from (typos in it are noted, its proxy is named).
pub fn run(which: Doctor, config: Config, env: &[(String, String)]) -> ExitCode {
    let mut report = Report {
        out: std::io::stdout(),
        failed: false,
    };
    for name in unknown_env_vars(env) {
        report.info(&format!(
            "note: unknown environment variable {name} ignored (a typo?)"
        ));
    }
    let valid = match config.validate() {
        Ok(v) => v,
        Err(e) => {
            report.fail(
                &format!("configuration `{}`", e.key),
                None,
                &e.message,
                None,
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for account in &valid.accounts {
        let name = if valid.accounts.len() > 1 {
            format!("account {}: ", account.name)
        } else {
            String::new()
        };
        report.ok(
            "configuration",
            None,
            &format!(
                "{name}tenant {}, app {}, credential {}, mailbox {}, upstream {}:{}",
                account.tenant,
                account.credential.client_id,
                account.credential.credential.kind(),
                account.mailbox,
                account.upstream.host,
                account.upstream.port
            ),
        );
    }
    for w in &valid.warnings {
        report.info(&format!("note: {w}"));
    }
    report.info(&format!(
        "proxy for the token request: {}",
        super::proxy::describe(&valid.account().credential.token_url, env)
    ));
    let runtime = match runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(diagnose_online(which, valid, &mut report));
    let _ = report.out.flush();
    if report.failed {
        ExitCode::from(EXIT_UNAVAILABLE)
    } else {
        ExitCode::SUCCESS
    }
}

/// Every account in turn (`send-test` sends through the first only).
async fn diagnose_online<W: Write>(which: Doctor, valid: ValidConfig, report: &mut Report<W>) {
    let several = valid.accounts.len() > 1;
    for (i, account) in valid.accounts.iter().enumerate() {
        if several {
            report.info(&format!("account {}:", account.name));
        }
        let which = match &which {
            Doctor::SendTest { .. } if i > 0 => Doctor::Check,
            other => other.clone(),
        };
        diagnose_account(which, &valid, account, report).await;
    }
}

async fn diagnose_account<W: Write>(
    which: Doctor,
    valid: &ValidConfig,
    account: &ValidAccount,
    report: &mut Report<W>,
) {
    let source = match crate::token::credential::build(&account.credential) {
        Ok(s) => s,
        Err(e) => return report.fail("credential", None, &e.to_string(), None),
    };
    // A certificate about to expire is a note of the configuration step; an expired one fails.
    if let Some(e) = crate::token::expiry(source.not_after(), SystemTime::now()) {
        if e.is_expired() {
            report.fail("credential", None, &e.to_string(), None);
        }
    }

    // Token.
    let started = Instant::now();
    let token = match source.fetch().await {
        Ok(t) => t,
        Err(e) => {
            let advice = e.advice();
            return report.fail(
                &format!("token from {}", account.credential.token_url),
                Some(started.elapsed()),
                &e.to_string(),
                advice.as_deref(),
            );
        }
    };
    report.ok(
        "token",
        Some(started.elapsed()),
        &format!("expires in {} s", token.expires_in()),
    );
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match diagnose::decode_claims(token.expose()) {
        None => report.info("claims: the token is opaque (not a JWT); nothing to check"),
        Some(claims) => {
            report.info(&format!("aud:   {}", claims.aud));
            report.info(&format!(
                "roles: {}",
                if claims.roles.is_empty() {
                    "(none)".to_string()
                } else {
                    claims.roles.join(", ")
                }
            ));
            if let Some(scp) = &claims.scp {
                report.info(&format!("scp:   {scp}"));
            }
            report.info(&format!(
                "appid: {}",
                claims.appid.as_deref().unwrap_or("-")
            ));
            report.info(&format!("tid:   {}", claims.tid.as_deref().unwrap_or("-")));
            let problems = diagnose::check_claims(
                &claims,
                now,
                &account.credential.client_id,
                account.upstream.endpoint,
            );
            if problems.is_empty() {
                report.ok(
                    "token claims",
                    None,
                    &format!(
                        "Exchange audience and {} role",
                        account.upstream.endpoint.role()
                    ),
                );
            }
            for a in problems {
                report.fail("token claims", None, &a.problem, Some(&a.fix));
            }
        }
    }
    if matches!(which, Doctor::Token) {
        return;
    }

    // Upstream: connect, STARTTLS, AUTH XOAUTH2.
    let tls = match crate::tls::client_config(&valid.extra_roots) {
        Ok(t) => t,
        Err(e) => return report.fail("TLS set-up", None, &e.to_string(), None),
    };
    let tokens = TokenCache::new(source, account.refresh_margin);
    let upstream = Upstream::new(
        account.upstream.clone(),
        tls,
        tokens,
        account.mailbox.clone(),
    );
    let started = Instant::now();
    let conn = upstream.connect().await;
    let mut conn = match conn {
        Ok(c) => c,
        Err(e) => {
            let advice = e.advice_for(&account.mailbox);
            return report.fail(
                &format!(
                    "SMTP {}:{} (STARTTLS, AUTH XOAUTH2 as {})",
                    account.upstream.host, account.upstream.port, account.mailbox
                ),
                Some(started.elapsed()),
                &e.to_string(),
                advice.as_deref(),
            );
        }
    };
    report.ok(
        "SMTP",
        Some(started.elapsed()),
        &format!(
            "{}:{} connect, EHLO, STARTTLS (TLS verified), EHLO, AUTH XOAUTH2 user={} <token redacted>: 235",
            account.upstream.host, account.upstream.port, account.mailbox
        ),
    );
    let Doctor::SendTest { to, from } = which else {
        conn.quit().await;
        return;
    };

    // One real message.
    let from = from.unwrap_or_else(|| account.mailbox.clone());
    let id = crate::envelope::MessageId::generate();
    let body = test_message(&from, &to, id.as_str(), &valid.listen.hostname);
    let msg = OutboundMessage {
        mail_from: from.clone(),
        rcpt_to: vec![to.clone()],
        size: body.len() as u64,
        body_8bit: false,
        smtputf8: false,
        all_or_nothing: true,
        headers: None,
        start_by: None,
    };
    let started = Instant::now();
    let result = conn
        .transact(
            &msg,
            &mut MessageBody::Bytes(&body),
            account.upstream.data_timeout,
        )
        .await;
    match result {
        Ok(d) => {
            report.ok(
                "send",
                Some(started.elapsed()),
                &format!(
                    "MAIL FROM:<{from}> RCPT TO:<{to}> DATA ({} bytes): {}",
                    body.len(),
                    d.reply
                ),
            );
            conn.quit().await;
        }
        Err(e) => {
            let advice = e.advice_for(&account.mailbox);
            report.fail(
                &format!("send MAIL FROM:<{from}> RCPT TO:<{to}>"),
                Some(started.elapsed()),
                &e.to_string(),
                advice.as_deref(),
            );
        }
    }
}

/// The `send-test` message: plain text, CRLF line ends.
pub fn test_message(from: &str, to: &str, id: &str, hostname: &str) -> Vec<u8> {
    let date = httpdate::fmt_http_date(SystemTime::now()).replace(" GMT", " +0000");
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: smtp-oauth-relay test message\r\nDate: {date}\r\n\
         Message-ID: <{id}@{hostname}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         This is a test message from smtp-oauth-relay on {hostname}.\r\n\
         If you can read it, the relay can send through Exchange Online.\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines() {
        let mut r = Report {
            out: Vec::new(),
            failed: false,
        };
        r.ok(
            "token",
            Some(Duration::from_millis(12)),
            "expires in 3599 s",
        );
        r.fail("SMTP", None, "refused", Some("do this"));
        let text = String::from_utf8(r.out).unwrap();
        assert_eq!(
            text,
            "[ OK ] token (12 ms): expires in 3599 s\n[FAIL] SMTP: refused\n       fix: do this\n"
        );
        assert!(r.failed);
    }

    #[test]
    fn test_message_is_crlf_text() {
        let m = String::from_utf8(test_message("a@x", "b@y", "id1", "host")).unwrap();
        assert!(m.starts_with("From: <a@x>\r\nTo: <b@y>\r\n"));
        assert!(!m.replace("\r\n", "").contains('\n'));
        assert!(m.ends_with("\r\n"));
    }
}
