//! Our reply catalogue: every answer the relay gives a client, with its RFC 3463 enhanced
//! status code (we advertise ENHANCEDSTATUSCODES, RFC 2034, so every reply but the greeting
//! and EHLO carries one). The reply type itself is the wire format's ([`crate::wire::Reply`]).

use crate::spool::WriteFault;
pub use crate::wire::Reply;

// The catalogue. Texts say what happened and, where it helps, what to do.

pub fn greeting(host: &str) -> Reply {
    Reply::plain(220, vec![format!("{host} ESMTP smtp-oauth-relay ready")])
}

/// The EHLO reply: what every listener supports, then `extra` (STARTTLS, AUTH) when offered.
pub fn ehlo(host: &str, client_name: &str, max_size: u64, extra: &[&str]) -> Reply {
    let mut lines = vec![
        format!("{host} Hello {client_name}"),
        "PIPELINING".into(),
        format!("SIZE {max_size}"),
        "ENHANCEDSTATUSCODES".into(),
        "8BITMIME".into(),
        "SMTPUTF8".into(),
    ];
    lines.extend(extra.iter().map(|e| e.to_string()));
    Reply::plain(250, lines)
}

pub fn helo(host: &str, client_name: &str) -> Reply {
    Reply::plain(250, vec![format!("{host} Hello {client_name}")])
}

pub fn ok() -> Reply {
    Reply::new(250, "2.0.0", "OK")
}
pub fn sender_ok() -> Reply {
    Reply::new(250, "2.1.0", "Sender OK")
}
pub fn recipient_ok() -> Reply {
    Reply::new(250, "2.1.5", "Recipient OK")
}
pub fn start_data() -> Reply {
    Reply::plain(354, vec!["Start mail input; end with <CRLF>.<CRLF>".into()])
}
pub fn reset() -> Reply {
    Reply::new(250, "2.0.0", "Reset OK")
}
pub fn quit(host: &str) -> Reply {
    Reply::new(
        221,
        "2.0.0",
        format!("{host} Service closing transmission channel"),
    )
}
pub fn vrfy() -> Reply {
    Reply::new(
        252,
        "2.5.0",
        "Cannot VRFY user, but will accept message and attempt delivery",
    )
}
pub fn help() -> Reply {
    Reply::new(
        214,
        "2.0.0",
        "smtp-oauth-relay: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY QUIT",
    )
}
pub fn nested_mail() -> Reply {
    Reply::new(503, "5.5.1", "Sender already specified; send RSET first")
}
pub fn need_mail() -> Reply {
    Reply::new(503, "5.5.1", "Need MAIL command first")
}
pub fn need_rcpt() -> Reply {
    Reply::new(503, "5.5.1", "Need RCPT command first")
}
pub fn too_many_recipients(max: usize) -> Reply {
    Reply::new(
        452,
        "4.5.3",
        format!("Too many recipients (at most {max} per message)"),
    )
}
pub fn message_too_big(max: u64) -> Reply {
    Reply::new(
        552,
        "5.3.4",
        format!("Message size exceeds fixed maximum message size of {max} bytes"),
    )
}
pub fn not_implemented(cmd: &str) -> Reply {
    Reply::new(502, "5.5.1", format!("{cmd} not implemented"))
}
pub fn auth_not_needed() -> Reply {
    Reply::new(
        502,
        "5.5.1",
        "AUTH not available: this relay needs no authentication, send without it",
    )
}
pub fn ready_for_tls() -> Reply {
    Reply::new(220, "2.0.0", "Ready to start TLS")
}
pub fn tls_already_active() -> Reply {
    Reply::new(503, "5.5.1", "TLS is already active")
}
pub fn tls_required() -> Reply {
    Reply::new(530, "5.7.0", "Must issue a STARTTLS command first")
}
pub fn auth_required() -> Reply {
    Reply::new(530, "5.7.0", "Authentication required")
}
pub fn auth_needs_tls() -> Reply {
    Reply::new(
        538,
        "5.7.11",
        "Encryption required for requested authentication mechanism: use STARTTLS first",
    )
}
pub fn already_authenticated() -> Reply {
    Reply::new(503, "5.5.1", "Already authenticated")
}
pub fn auth_in_transaction() -> Reply {
    Reply::new(
        503,
        "5.5.1",
        "AUTH is not allowed during a mail transaction",
    )
}
pub fn auth_mechanism_unknown() -> Reply {
    Reply::new(
        504,
        "5.5.4",
        "Unrecognized authentication mechanism: use PLAIN or LOGIN",
    )
}
pub fn auth_succeeded() -> Reply {
    Reply::new(235, "2.7.0", "Authentication successful")
}
pub fn auth_failed() -> Reply {
    Reply::new(535, "5.7.8", "Authentication credentials invalid")
}
pub fn auth_cancelled() -> Reply {
    Reply::new(501, "5.7.0", "Authentication cancelled")
}
pub fn auth_malformed(why: &str) -> Reply {
    Reply::new(501, "5.5.2", format!("Cannot decode the response: {why}"))
}
/// A SASL challenge: `334` and the base64 text (empty for PLAIN without initial response).
pub fn auth_challenge(base64: &str) -> Reply {
    Reply::plain(334, vec![base64.to_string()])
}
pub fn auth_paused(hostname: &str, wait: std::time::Duration) -> Reply {
    Reply::new(
        421,
        "4.7.0",
        format!(
            "{hostname} Too many failed authentications from your address; try again in {} seconds",
            wait.as_secs().max(1)
        ),
    )
}
/// AUTH while the client's address serves a pause (AUTH is optional here: the session goes
/// on without it).
pub fn auth_paused_try_later(wait: std::time::Duration) -> Reply {
    Reply::new(
        454,
        "4.7.0",
        format!(
            "Too many failed authentications from your address; try again in {} seconds",
            wait.as_secs().max(1)
        ),
    )
}
pub fn sender_not_allowed_for_user(sender: &str, user: &str) -> Reply {
    Reply::new(
        550,
        "5.7.1",
        format!(
            "Sender {} is not allowed for user {}",
            crate::wire::header::terminal_safe(sender),
            crate::wire::header::terminal_safe(user)
        ),
    )
}
pub fn starttls_unavailable() -> Reply {
    Reply::new(502, "5.5.1", "STARTTLS not available on this listener")
}
pub fn unknown_command() -> Reply {
    Reply::new(500, "5.5.1", "Command unrecognized")
}
pub fn line_too_long() -> Reply {
    Reply::new(500, "5.5.6", "Command line too long (at most 4096 bytes)")
}
pub fn syntax(what: &str) -> Reply {
    Reply::new(501, "5.5.4", format!("Syntax error, expected: {what}"))
}
/// No route takes mail from this sender (issue 12): refused for good, with the reason.
pub fn sender_not_routed(why: &str) -> Reply {
    Reply::new(550, "5.7.1", why)
}
pub fn bad_sender() -> Reply {
    Reply::new(501, "5.1.7", "Bad sender address syntax")
}
pub fn bad_recipient() -> Reply {
    Reply::new(501, "5.1.3", "Bad recipient address syntax")
}
pub fn sender_not_utf8() -> Reply {
    Reply::new(501, "5.1.7", "Bad sender address: not valid UTF-8")
}
pub fn recipient_not_utf8() -> Reply {
    Reply::new(501, "5.1.3", "Bad recipient address: not valid UTF-8")
}
/// RFC 6531 §3.5: an address beyond ASCII needs `SMTPUTF8` on `MAIL FROM`.
pub fn needs_smtputf8() -> Reply {
    Reply::new(
        553,
        "5.6.7",
        "Non-ASCII address needs SMTPUTF8: declare it on MAIL FROM",
    )
}
pub fn invalid_parameter(param: &str) -> Reply {
    Reply::new(501, "5.5.4", format!("Invalid parameter {param}"))
}
pub fn unsupported_parameter(param: &str) -> Reply {
    Reply::new(555, "5.5.4", format!("Unsupported parameter {param}"))
}
pub fn access_denied() -> Reply {
    Reply::new(
        554,
        "5.7.1",
        "Access denied: your address is not in listen.allow",
    )
}
pub fn timeout(host: &str) -> Reply {
    Reply::new(
        421,
        "4.4.2",
        format!("{host} Timeout waiting for client input, closing connection"),
    )
}
pub fn too_much_junk(host: &str) -> Reply {
    Reply::new(
        421,
        "4.7.0",
        format!("{host} Too many commands that move no mail, closing connection"),
    )
}
pub fn too_many_messages(host: &str) -> Reply {
    Reply::new(
        421,
        "4.7.0",
        format!("{host} Too many messages in one session, reconnect to send more"),
    )
}
pub fn session_too_long(host: &str) -> Reply {
    Reply::new(
        421,
        "4.7.0",
        format!("{host} Session too long, reconnect to send more"),
    )
}
pub fn too_many_connections(host: &str) -> Reply {
    Reply::new(
        421,
        "4.7.0",
        format!("{host} Too many connections from your address, try again later"),
    )
}
pub fn shutting_down(host: &str) -> Reply {
    Reply::new(
        421,
        "4.3.2",
        format!("{host} Service shutting down, try again later"),
    )
}
pub fn local_error() -> Reply {
    Reply::new(
        451,
        "4.3.0",
        "Local error in processing (spool write failed), try again later",
    )
}
/// The spool's file system (or quota) is full: RFC 5321 §4.2.2's `452`, RFC 3463's `4.3.1`
/// (mail system full).
pub fn insufficient_storage() -> Reply {
    Reply::new(
        452,
        "4.3.1",
        "Insufficient system storage (the relay's spool is full), try again later",
    )
}
/// The reply when the spool could not keep a body.
pub fn spool_failed(fault: WriteFault) -> Reply {
    match fault {
        WriteFault::NoSpace => insufficient_storage(),
        WriteFault::Other => local_error(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_wire_form() {
        let r = ehlo("relay.local", "client", 100, &[]);
        let text = String::from_utf8(r.to_bytes()).unwrap();
        assert!(text.starts_with("250-relay.local Hello client\r\n250-PIPELINING\r\n"));
        assert!(text.ends_with("250 SMTPUTF8\r\n"));
    }
}
