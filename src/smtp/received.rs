//! The `Received:` trace header we prepend (RFC 5321 §4.4): pure, beside the session whose
//! facts it records.
//!
//! The client's EHLO name is its own claim, so it must not be able to shape the header: a
//! `(` that opens a comment, a `)by(…)` that forges a `by` clause, a `;` that forges the date,
//! or a byte beyond ASCII in a message that never declared SMTPUTF8. It appears as the
//! `from` domain only when it is a plain domain or address literal; otherwise the client's
//! address is the `from` domain and the name goes into a comment (RFC 5322 §3.2.2), with `(`,
//! `)` and `\` quoted and everything outside printable ASCII (and `;`) replaced by `?`. The
//! header is 7-bit whatever the client sent.

use std::net::SocketAddr;
use std::time::SystemTime;

use super::session::{Session, Transaction};
use crate::envelope::MessageId;

/// RFC 5321 §4.4 trace header, folded over three lines (four with a `for` clause).
pub fn received_header(
    session: &Session,
    t: &Transaction,
    id: &MessageId,
    hostname: &str,
    at: SystemTime,
) -> String {
    // RFC 3848 and RFC 6531: S for TLS, A for an authenticated client.
    // The S and A forms exist for ESMTP only: a HELO session in TLS or logged in is ESMTPS etc.
    let extended = session.is_esmtp() || session.is_tls() || session.user().is_some();
    let base = match (extended, t.smtputf8) {
        (_, true) => "UTF8SMTP",
        (true, false) => "ESMTP",
        (false, false) => "SMTP",
    };
    let protocol = match (session.is_tls(), session.user().is_some()) {
        (true, true) => format!("{base}SA"),
        (true, false) => format!("{base}S"),
        (false, true) => format!("{base}A"),
        (false, false) => base.to_string(),
    };
    let date = httpdate::fmt_http_date(at).replace(" GMT", " +0000");
    let for_clause = match t.rcpt_to.as_slice() {
        [one] if is_plain_path(one) => format!("\r\n\tfor <{one}>"),
        _ => String::new(),
    };
    let ip = format_ip(session.peer());
    let name = session.helo_name();
    let from = if is_plain_domain(&name) || is_address_literal(&name) {
        format!("{name} ({ip})")
    } else {
        format!("{ip} (helo={})", comment_text(&name))
    };
    format!(
        "Received: from {from}\r\n\tby {hostname} (smtp-oauth-relay) with {protocol} id {id}{for_clause};\r\n\t{date}\r\n",
    )
}

fn format_ip(peer: SocketAddr) -> String {
    match peer.ip().to_canonical() {
        std::net::IpAddr::V4(v4) => format!("[{v4}]"),
        std::net::IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

/// An ASCII host name (RFC 5321 `Domain`): labels of letters, digits and hyphens, and not
/// one of the header's own keywords (`EHLO by` must not read as a second `by` clause).
fn is_plain_domain(name: &str) -> bool {
    const KEYWORDS: [&str; 6] = ["from", "by", "via", "with", "id", "for"];
    !KEYWORDS.iter().any(|k| name.eq_ignore_ascii_case(k))
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `[192.0.2.1]` or `[IPv6:…]`, as some clients greet with their address.
fn is_address_literal(name: &str) -> bool {
    name.strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .is_some_and(|inside| {
            let addr = inside.strip_prefix("IPv6:").unwrap_or(inside);
            addr.parse::<std::net::IpAddr>().is_ok()
        })
}

/// `text` made safe inside a comment: `(`, `)` and `\` quoted (RFC 5322 `quoted-pair`), and
/// anything but printable ASCII, and `;` (which naive readers take for the date's start),
/// replaced by `?`.
fn comment_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '(' | ')' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ';' => out.push('?'),
            c if c.is_ascii_graphic() => out.push(c),
            _ => out.push('?'),
        }
    }
    out
}

/// A recipient that can stand in the `for` clause as it is: printable ASCII and none of the
/// characters that mean something in a header (quotes, comments, `;`). Others are left out;
/// the clause is optional.
fn is_plain_path(address: &str) -> bool {
    address
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b"\"()\\;<>".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::session::SessionConfig;
    use smtp_proto::Request;
    use std::borrow::Cow;

    fn session_greeted_as(name: &str) -> Session {
        let mut s = Session::new(
            SessionConfig {
                hostname: "relay.test".into(),
                max_message_size: 100,
                max_recipients: 10,
                security: Default::default(),
            },
            "127.0.0.1:5000".parse().unwrap(),
        );
        s.command(Ok(Request::Ehlo {
            host: Cow::Owned(name.to_string()),
        }));
        s
    }

    fn header_for(name: &str, rcpt: &[&str]) -> (String, MessageId) {
        let t = Transaction {
            mail_from: "a@x".into(),
            rcpt_to: rcpt.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        };
        let id = MessageId::generate();
        let s = session_greeted_as(name);
        let h = received_header(&s, &t, &id, "relay.test", SystemTime::UNIX_EPOCH);
        (h, id)
    }

    #[test]
    fn received_header_shape() {
        let (h, id) = header_for("app.example", &["b@y"]);
        assert_eq!(
            h,
            format!("Received: from app.example ([127.0.0.1])\r\n\tby relay.test (smtp-oauth-relay) with ESMTP id {id}\r\n\tfor <b@y>;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n")
        );
        assert!(h.lines().all(|l| l.len() < 998));
    }

    #[test]
    fn a_name_that_is_not_a_domain_goes_into_an_escaped_comment() {
        let (h, _) = header_for("a)by(trusted.mx.example)", &["\"x;y\"@z"]);
        assert!(
            h.starts_with(
                "Received: from [127.0.0.1] (helo=a\\)by\\(trusted.mx.example\\))\r\n\tby relay.test"
            ),
            "{h}"
        );
        assert!(
            !h.contains("for <"),
            "an unusual recipient is left out: {h}"
        );
        let (h, _) = header_for("evil;Thu,_01_Jan_1970\u{202e}é", &[]);
        assert!(h.contains("(helo=evil?Thu,_01_Jan_1970??)"), "{h}");
        let (h, _) = header_for("[192.0.2.7]", &[]);
        assert!(
            h.starts_with("Received: from [192.0.2.7] ([127.0.0.1])"),
            "{h}"
        );
    }

    /// One token of a `Received:` value, read as RFC 5322 says (comments nest, `\\` quotes).
    #[derive(Debug, PartialEq)]
    enum Tok {
        Word(String),
        Comment,
        Angle,
        Semi,
    }

    /// Reads the header back: every byte printable ASCII (tabs only where lines fold),
    /// comments balanced, angle addresses closed.
    fn read_back(h: &str) -> Result<Vec<Tok>, String> {
        let body = h.strip_suffix("\r\n").ok_or("no CRLF at the end")?;
        let mut unfolded = String::new();
        for (i, line) in body.split("\r\n").enumerate() {
            let line = if i == 0 {
                line.strip_prefix("Received:")
                    .ok_or("not a Received header")?
            } else {
                line.strip_prefix('\t').ok_or("a line that does not fold")?
            };
            if let Some(b) = line.bytes().find(|b| !(0x20..=0x7e).contains(b)) {
                return Err(format!("byte {b:#04x} is not printable ASCII"));
            }
            unfolded.push(' ');
            unfolded.push_str(line);
        }
        let mut toks = Vec::new();
        let mut chars = unfolded.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                ' ' => {}
                '(' => {
                    let mut depth = 1;
                    while depth > 0 {
                        match chars.next().ok_or("unclosed comment")? {
                            '\\' => {
                                chars.next().ok_or("a lone backslash")?;
                            }
                            '(' => depth += 1,
                            ')' => depth -= 1,
                            _ => {}
                        }
                    }
                    toks.push(Tok::Comment);
                }
                ')' => return Err("a ) that closes nothing".into()),
                '<' => {
                    let mut quoted = false;
                    loop {
                        match chars.next().ok_or("unclosed <")? {
                            '\\' if quoted => {
                                chars.next();
                            }
                            '"' => quoted = !quoted,
                            '>' if !quoted => break,
                            _ => {}
                        }
                    }
                    toks.push(Tok::Angle);
                }
                ';' => toks.push(Tok::Semi),
                _ => {
                    let mut word = c.to_string();
                    while let Some(&n) = chars.peek() {
                        if n == ' ' || "();<".contains(n) {
                            break;
                        }
                        word.push(n);
                        chars.next();
                    }
                    toks.push(Tok::Word(word));
                }
            }
        }
        Ok(toks)
    }

    /// The structure every header must have: `from X … by relay.test … ; <the date>`.
    fn check(h: &str) -> Result<(), String> {
        let toks = read_back(h)?;
        let words: Vec<&str> = toks
            .iter()
            .filter_map(|t| match t {
                Tok::Word(w) => Some(w.as_str()),
                _ => None,
            })
            .collect();
        let count = |w: &str| words.iter().filter(|x| x.eq_ignore_ascii_case(w)).count();
        if words.first() != Some(&"from") || count("from") != 1 {
            return Err("not exactly one from, first".into());
        }
        if count("by") != 1 || count("with") != 1 || count("id") != 1 {
            return Err("not exactly one by, with and id".into());
        }
        let by = words
            .iter()
            .position(|w| w.eq_ignore_ascii_case("by"))
            .unwrap();
        if words.get(by + 1) != Some(&"relay.test") {
            return Err("by names someone else".into());
        }
        let semis: Vec<usize> = (0..toks.len()).filter(|&i| toks[i] == Tok::Semi).collect();
        let [semi] = semis[..] else {
            return Err(format!("{} semicolons", semis.len()));
        };
        let date: Vec<&str> = toks[semi + 1..]
            .iter()
            .map(|t| match t {
                Tok::Word(w) => Ok(w.as_str()),
                other => Err(format!("{other:?} after the date's ;")),
            })
            .collect::<Result<_, _>>()?;
        if date.join(" ") != "Thu, 01 Jan 1970 00:00:00 +0000" {
            return Err(format!("the date reads {date:?}"));
        }
        Ok(())
    }

    #[test]
    fn the_reader_catches_forgeries() {
        let forged = [
            "Received: from x( ([127.0.0.1])\r\n\tby relay.test (r) with ESMTP id 1;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n",
            "Received: from a)by(trusted ([127.0.0.1])\r\n\tby relay.test (r) with ESMTP id 1;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n",
            "Received: from a by b ([127.0.0.1])\r\n\tby relay.test (r) with ESMTP id 1;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n",
            "Received: from evil;x ([127.0.0.1])\r\n\tby relay.test (r) with ESMTP id 1;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n",
            "Received: from \u{202e}x ([127.0.0.1])\r\n\tby relay.test (r) with ESMTP id 1;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n",
        ];
        for h in forged {
            assert!(check(h).is_err(), "{h}");
        }
    }

    /// Property: whatever the client calls itself, the header reads back with its structure.
    #[test]
    fn any_ehlo_name_keeps_the_structure() {
        const PIECES: &[&str] = &[
            "(",
            ")",
            "\\",
            ";",
            "\"",
            "<",
            ">",
            " ",
            "\t",
            "\r",
            "\n",
            "by",
            "from",
            "with",
            "id",
            "for",
            "x.example",
            ".",
            "[",
            "]",
            "Thu,",
            "01",
            ":",
            "\u{202e}",
            "\u{200b}",
            "é",
            "用户",
            "\u{1b}[2J",
            "\u{7}",
            "\u{0}",
            "\u{85}",
            "\u{9b}",
            "\u{feff}",
            "a",
            "-",
            "IPv6:",
            "\u{fffd}",
        ];
        let mut names: Vec<String> = [
            "x(",
            "a)by(trusted.mx.example)",
            "evil;Thu,_01_Jan_1970",
            "\u{202e}moc.live",
            "bücher.de",
            "a\\",
            "((((",
            "))))",
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let len = next() % 24;
            names.push(
                (0..len)
                    .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                    .collect(),
            );
        }
        for name in &names {
            for rcpt in [&["b@y"][..], &["\"a(b\"@y"], &["a@b", "c@d"]] {
                let (h, _) = header_for(name, rcpt);
                if let Err(why) = check(&h) {
                    panic!("EHLO {name:?}: {why}\n{h}");
                }
            }
        }
    }
}
