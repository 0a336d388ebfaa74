//! SMTP replies (RFC 5321 §4.2), both ways: parsed from a server exactly as received, and
//! built by us for a client.
//!
//! One type for both directions, kept as text lines after the code: the enhanced status code
//! (RFC 3463, RFC 2034) is the first word of the first line. We parse replies ourselves rather
//! than through smtp-proto's `Response`, which saturates enhanced status details above 255
//! (Exchange's `4.7.500` would read `4.7.255`): the exact text is what logs, diagnostics and
//! classification need, and it must never reach a client as `x.y.255`.

use std::fmt;

/// A complete (possibly multi-line) reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Text of each line after the code and separator (the first starts with the enhanced
    /// status code, when there is one).
    pub lines: Vec<String>,
}

/// Why bytes from the server are not a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("malformed reply line: {0:?}")]
    Malformed(String),
    #[error("reply longer than {0} bytes")]
    TooLong(usize),
}

/// Longest reply we accept (EHLO lists are short; Exchange's 554 5.2.252 text is long).
pub const MAX_REPLY: usize = 64 * 1024;

/// Longest line of text we put into a reply of our own.
const MAX_TEXT: usize = 400;

impl Reply {
    /// A one-line reply of ours with an enhanced status code. The text is made safe first:
    /// one line, no control characters, at most 400 bytes (upstream text is often quoted).
    pub fn new(code: u16, status: &str, text: impl Into<String>) -> Self {
        Reply {
            code,
            lines: vec![format!("{status} {}", sanitise(&text.into()))],
        }
    }

    /// A reply of ours without an enhanced status code (greeting, EHLO), one entry a line.
    pub fn plain(code: u16, lines: Vec<String>) -> Self {
        Reply {
            code,
            lines: lines.iter().map(|l| sanitise(l)).collect(),
        }
    }

    /// Parses one reply from the start of `buf`. `Ok(None)` means more bytes are needed;
    /// `Ok(Some((reply, used)))` says how many bytes it took.
    pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
        let mut pos = 0;
        let mut lines = Vec::new();
        let mut code = None;
        loop {
            let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) else {
                if buf.len() > MAX_REPLY {
                    return Err(ReplyError::TooLong(MAX_REPLY));
                }
                return Ok(None);
            };
            let raw = &buf[pos..pos + nl];
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            pos += nl + 1;
            let line = String::from_utf8_lossy(raw);
            let bytes = line.as_bytes();
            if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
                return Err(ReplyError::Malformed(line.chars().take(80).collect()));
            }
            let this_code: u16 = line[..3].parse().unwrap_or(0);
            if *code.get_or_insert(this_code) != this_code {
                return Err(ReplyError::Malformed(line.chars().take(80).collect()));
            }
            let sep = bytes.get(3).copied();
            let text = line.get(4..).unwrap_or("").to_string();
            lines.push(text);
            match sep {
                None | Some(b' ') => {
                    return Ok(Some((
                        Reply {
                            code: this_code,
                            lines,
                        },
                        pos,
                    )))
                }
                Some(b'-') => continue,
                Some(_) => return Err(ReplyError::Malformed(line.chars().take(80).collect())),
            }
        }
    }

    /// A reply written as one line of text (`"451 4.7.500 Access denied"`), for tests.
    #[cfg(test)]
    pub(crate) fn line(text: &str) -> Reply {
        match Reply::parse(format!("{text}\r\n").as_bytes()) {
            Ok(Some((reply, _))) => reply,
            other => panic!("not a reply: {text:?} ({other:?})"),
        }
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The enhanced status code of the first line (`4.7.500`), exactly as sent, if its class
    /// matches the reply code's first digit.
    pub fn status(&self) -> Option<&str> {
        let first = self.lines.first()?;
        let candidate = first.split_whitespace().next()?;
        let parts: Vec<&str> = candidate.split('.').collect();
        let ok = parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.chars().all(|c| c.is_ascii_digit()))
            && parts[0].parse::<u16>().ok() == Some(self.code / 100);
        ok.then_some(candidate)
    }

    /// The reply text without the enhanced status code, lines joined by a space.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for (i, line) in self.lines.iter().enumerate() {
            let line = if i == 0 {
                match self.status() {
                    Some(s) => line[s.len()..].trim_start(),
                    None => line.as_str(),
                }
            } else {
                line.as_str()
            };
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(line);
        }
        out
    }

    /// Whether the reply names this enhanced status code.
    pub fn has_status(&self, status: &str) -> bool {
        self.status() == Some(status)
    }

    /// Whether any line contains `needle` (case-insensitive).
    pub fn mentions(&self, needle: &str) -> bool {
        let needle = needle.to_ascii_lowercase();
        self.lines
            .iter()
            .any(|l| l.to_ascii_lowercase().contains(&needle))
    }

    /// EHLO keyword lookup (lines after the first): `AUTH`, `STARTTLS`, ...
    pub fn ehlo_keyword(&self, keyword: &str) -> Option<&str> {
        self.lines.iter().skip(1).find_map(|l| {
            let mut words = l.splitn(2, ' ');
            let kw = words.next()?;
            kw.eq_ignore_ascii_case(keyword)
                .then(|| words.next().unwrap_or(""))
        })
    }

    /// Appends the wire form (`code[-| ]text CRLF` per line) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        if self.lines.is_empty() {
            out.extend_from_slice(format!("{}\r\n", self.code).as_bytes());
            return;
        }
        let last = self.lines.len() - 1;
        let code = self.code.to_string();
        for (i, line) in self.lines.iter().enumerate() {
            out.extend_from_slice(code.as_bytes());
            out.push(if i == last { b' ' } else { b'-' });
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
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
        write!(f, "{} {}", self.code, self.lines.join(" "))
    }
}

/// Our reply lines must be one line each and free of control characters.
fn sanitise(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if cleaned.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !cleaned.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &cleaned[..end])
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_line() {
        let (r, used) = Reply::parse(b"250 2.0.0 OK <id@x> [Hostname=y]\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!(used, 34);
        assert_eq!(r.code, 250);
        assert_eq!(r.status(), Some("2.0.0"));
        assert_eq!(r.text(), "OK <id@x> [Hostname=y]");
        let ehlo = b"250-host Hello [1.2.3.4]\r\n250-SIZE 157286400\r\n250-AUTH LOGIN XOAUTH2\r\n250 SMTPUTF8\r\n";
        let (r, used) = Reply::parse(ehlo).unwrap().unwrap();
        assert_eq!(used, ehlo.len());
        assert_eq!(r.ehlo_keyword("auth"), Some("LOGIN XOAUTH2"));
        assert_eq!(r.ehlo_keyword("SMTPUTF8"), Some(""));
        assert_eq!(r.ehlo_keyword("STARTTLS"), None);
        assert_eq!(r.to_bytes(), ehlo);
    }

    #[test]
    fn partial_needs_more() {
        assert_eq!(Reply::parse(b"250-a\r\n250 b").unwrap(), None);
        assert_eq!(Reply::parse(b"").unwrap(), None);
    }

    #[test]
    fn enhanced_details_above_255_are_kept() {
        let (r, _) = Reply::parse(b"451 4.7.500 Access denied, please try again later\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.status(), Some("4.7.500"));
        assert!(r.to_string().contains("4.7.500"));
    }

    #[test]
    fn status_must_match_class() {
        let (r, _) = Reply::parse(b"354 Start mail input; end with <CRLF>.<CRLF>\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.status(), None);
        let (r, _) = Reply::parse(b"550 4.1.1 odd\r\n").unwrap().unwrap();
        assert_eq!(r.status(), None);
    }

    #[test]
    fn malformed() {
        assert!(Reply::parse(b"hello\r\n").is_err());
        assert!(Reply::parse(b"250-a\r\n251 b\r\n").is_err());
        assert!(Reply::parse(&vec![b'2'; MAX_REPLY + 1]).is_err());
    }

    #[test]
    fn our_replies_round_trip_through_the_parser() {
        let ours = Reply::new(451, "4.4.0", "upstream temporarily refused");
        assert_eq!(
            ours.to_bytes(),
            b"451 4.4.0 upstream temporarily refused\r\n"
        );
        let (parsed, _) = Reply::parse(&ours.to_bytes()).unwrap().unwrap();
        assert_eq!(parsed, ours);
        assert_eq!(parsed.status(), Some("4.4.0"));
        assert_eq!(parsed.text(), "upstream temporarily refused");
        let ehlo = Reply::plain(250, vec!["relay Hello x".into(), "PIPELINING".into()]);
        assert_eq!(ehlo.to_bytes(), b"250-relay Hello x\r\n250 PIPELINING\r\n");
        assert_eq!(ehlo.status(), None);
    }

    #[test]
    fn our_text_is_one_line_without_controls() {
        let r = Reply::new(451, "4.4.0", "bad\r\nMAIL FROM:<x>");
        assert_eq!(r.to_bytes(), b"451 4.4.0 bad  MAIL FROM:<x>\r\n");
    }

    #[test]
    fn our_long_text_is_capped() {
        let r = Reply::new(550, "5.0.0", "é".repeat(500));
        assert!(r.lines[0].len() < 420);
        assert!(r.lines[0].ends_with("..."));
    }
}
