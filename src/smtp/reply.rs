//! Our reply catalogue: every answer the relay gives a client, with its RFC 3463 enhanced
//! status code (we advertise ENHANCEDSTATUSCODES, RFC 2034, so every reply but the greeting
//! and EHLO carries one).

use std::fmt;

/// One SMTP reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code such as `2.0.0`; `None` for the greeting and EHLO.
    pub status: Option<String>,
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply with an enhanced status code.
    pub fn new(code: u16, status: &str, text: impl Into<String>) -> Self {
        Reply {
            code,
            status: Some(status.to_string()),
            lines: vec![sanitise(&text.into())],
        }
    }

    /// A reply without an enhanced status code (greeting, EHLO).
    pub fn plain(code: u16, lines: Vec<String>) -> Self {
        Reply {
            code,
            status: None,
            lines: lines.iter().map(|l| sanitise(l)).collect(),
        }
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// Appends the wire form (`code[-| ][status ]text CRLF` per line) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        if self.lines.is_empty() {
            out.extend_from_slice(format!("{}\r\n", self.code).as_bytes());
            return;
        }
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let text = match &self.status {
                Some(s) => format!("{}{sep}{s} {line}\r\n", self.code),
                None => format!("{}{sep}{line}\r\n", self.code),
            };
            out.extend_from_slice(text.as_bytes());
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(s) = &self.status {
            write!(f, " {s}")?;
        }
        write!(f, " {}", self.lines.join(" / "))
    }
}

/// Replies must be one line each and free of control characters (upstream text is quoted).
fn sanitise(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    const MAX: usize = 400;
    if cleaned.len() > MAX {
        let mut end = MAX;
        while !cleaned.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &cleaned[..end])
    } else {
        cleaned
    }
}

// The catalogue. Texts say what happened and, where it helps, what to do.

pub fn greeting(host: &str) -> Reply {
    Reply::plain(220, vec![format!("{host} ESMTP smtp-oauth-relay ready")])
}

pub fn ehlo(host: &str, client_name: &str, max_size: u64) -> Reply {
    Reply::plain(
        250,
        vec![
            format!("{host} Hello {client_name}"),
            "PIPELINING".into(),
            format!("SIZE {max_size}"),
            "ENHANCEDSTATUSCODES".into(),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
        ],
    )
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
pub fn bad_sender() -> Reply {
    Reply::new(501, "5.1.7", "Bad sender address syntax")
}
pub fn bad_recipient() -> Reply {
    Reply::new(501, "5.1.3", "Bad recipient address syntax")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_wire_form() {
        let r = ehlo("relay.local", "client", 100);
        let text = String::from_utf8(r.to_bytes()).unwrap();
        assert!(text.starts_with("250-relay.local Hello client\r\n250-PIPELINING\r\n"));
        assert!(text.ends_with("250 SMTPUTF8\r\n"));
    }

    #[test]
    fn status_on_every_line_and_no_controls() {
        let r = Reply::new(451, "4.4.0", "bad\r\nMAIL FROM:<x>");
        assert_eq!(r.to_bytes(), b"451 4.4.0 bad  MAIL FROM:<x>\r\n");
    }

    #[test]
    fn long_text_is_capped() {
        let r = Reply::new(550, "5.0.0", "é".repeat(500));
        assert!(r.lines[0].len() < 420);
    }
}
