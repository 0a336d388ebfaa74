//! The AUTH exchange, once the session has checked that AUTH may start: `XOAUTH2` checked
//! against the tokens the sandbox issued, and `LOGIN` walked through and refused (reference
//! §3.3, §3.5).
//!
//! Why the sandbox checks tokens for real: the relay must learn, in tests, each way Exchange
//! refuses a token. An XOAUTH2 `user=` must be a configured mailbox with SMTP AUTH on, and
//! the token one the token endpoint issued and nobody revoked, with an Exchange audience,
//! the `SMTP.SendAsApp` role (or, delegated, `SMTP.Send` and `upn` = `user=` or FullAccess),
//! and within `nbf`..`exp`. Every XOAUTH2 refusal but the SMTP AUTH switch gets Exchange's
//! uninformative `535 5.7.3`. In High Volume Email mode the role is `Mail.Send`, a `user=`
//! that is not a configured mailbox gets `501 5.5.124`, and a token with less than 10 minutes
//! left gets `501 5.5.127` (reference §3.6). Neither the token nor the blob is ever logged.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::exchange::{HOST, HVE_EXPIRES_SOON, HVE_USER_INVALID};
use super::wire::{trim_eol, LineRead, Wire, MAX_AUTH_LINE};
use crate::sandbox::clock::{unix_now, UtcTime};
use crate::sandbox::issued::{HVE_ROLE, SMTP_ROLE};
use crate::sandbox::shared::{SessionGuard, Shared};

/// An authenticated session: its mailbox, counted in that mailbox's concurrency while the
/// guard lives.
pub(super) struct Authed {
    pub mailbox: String,
    pub guard: SessionGuard,
}

/// How an AUTH exchange ended.
pub(super) enum AuthEnd {
    /// `235` was sent: the session is now the mailbox's.
    Authenticated(Authed),
    /// A `535` was sent; the session goes on unauthenticated.
    Refused,
    /// The client went away, or sent an over-long line (answered): close.
    Close,
}

/// Runs the exchange for `mechanism` (`LOGIN` or `XOAUTH2`, upper-case) with the optional
/// initial response; counts it in `auth_attempts` and, unless it succeeds, `auth_failures`.
pub(super) async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    session_id: &str,
    mechanism: &str,
    initial: Option<&str>,
    wire: &mut Wire<S>,
) -> io::Result<AuthEnd> {
    let counters = &shared.counters;
    if mechanism == "LOGIN" {
        // Basic authentication: walk through the exchange, then refuse it as a tenant
        // with Basic SMTP AUTH turned off does (reference §3.5).
        let prompts = if initial.is_some() {
            &["334 UGFzc3dvcmQ6"][..]
        } else {
            &["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6"][..]
        };
        for prompt in prompts {
            wire.reply(prompt);
            match wire.read_line(|_| MAX_AUTH_LINE).await? {
                LineRead::Line(_) => {}
                LineRead::TooLong => {
                    wire.reply("500 5.5.6 Line too long");
                    return Ok(AuthEnd::Close);
                }
                LineRead::Closed => return Ok(AuthEnd::Close),
            }
        }
        counters.auth_attempts.fetch_add(1, Ordering::Relaxed);
        counters.auth_failures.fetch_add(1, Ordering::Relaxed);
        wire.reply("535 5.7.139 Authentication unsuccessful, basic authentication is disabled.");
        return Ok(AuthEnd::Refused);
    }

    let blob = match initial {
        Some(blob) => blob.to_string(),
        None => {
            wire.reply("334 ");
            match wire.read_line(|_| MAX_AUTH_LINE).await? {
                LineRead::Line(line) => String::from_utf8_lossy(trim_eol(&line)).into_owned(),
                LineRead::TooLong => {
                    wire.reply("500 5.5.6 Line too long");
                    return Ok(AuthEnd::Close);
                }
                LineRead::Closed => return Ok(AuthEnd::Close),
            }
        }
    };
    counters.auth_attempts.fetch_add(1, Ordering::Relaxed);
    match verify_xoauth2(shared, session_id, &blob) {
        Ok(mailbox) => {
            let guard = shared.session_authenticated(&mailbox);
            wire.reply("235 2.7.0 Authentication successful");
            Ok(AuthEnd::Authenticated(Authed { mailbox, guard }))
        }
        Err(reply) => {
            counters.auth_failures.fetch_add(1, Ordering::Relaxed);
            wire.reply(&reply);
            Ok(AuthEnd::Refused)
        }
    }
}

/// Checks an XOAUTH2 response; returns the mailbox, or the failure reply.
fn verify_xoauth2(shared: &Shared, session_id: &str, blob: &str) -> Result<String, String> {
    let failed = || {
        format!(
            "535 5.7.3 Authentication unsuccessful [{HOST} {} {}]",
            UtcTime::now().iso_millis(),
            session_id
        )
    };
    let (user, token) = crate::wire::xoauth2::decode(blob).ok_or_else(failed)?;
    let opts = &shared.opts;
    if !opts.mailboxes.iter().any(|m| m.eq_ignore_ascii_case(&user)) {
        return Err(if opts.hve {
            HVE_USER_INVALID.into()
        } else {
            failed()
        });
    }
    if opts
        .smtp_auth_disabled
        .iter()
        .any(|m| m.eq_ignore_ascii_case(&user))
    {
        return Err(
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is \
                    disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for \
                    more information."
                .into(),
        );
    }
    let role = if opts.hve { HVE_ROLE } else { SMTP_ROLE };
    let now = unix_now();
    match shared.tokens.lookup(&token) {
        Some(issued) if issued.accepts(&user, now, role, &opts.full_access) => {
            if opts.hve && issued.expires_soon_for_hve(now) {
                Err(HVE_EXPIRES_SOON.into())
            } else {
                Ok(user)
            }
        }
        _ => Err(failed()),
    }
}
