//! Replies from the upstream server, kept exactly as received.
//!
//! We parse replies ourselves rather than through smtp-proto's `Response`, which saturates
//! enhanced status details above 255 (Exchange's `4.7.500` would read `4.7.255`): the raw
//! text is what logs, diagnostics and classification need.

use std::fmt;

/// A complete (possibly multi-line) reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamReply {
    pub code: u16,
    /// Text of each line after the code and separator.
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

impl UpstreamReply {
    /// Parses one reply from the start of `buf`. `Ok(None)` means more bytes are needed;
    /// `Ok(Some((reply, used)))` says how many bytes it took.
    pub fn parse(buf: &[u8]) -> Result<Option<(UpstreamReply, usize)>, ReplyError> {
        let mut pos = 0;
        let mut lines = Vec::new();
        let mut code = None;
        loop {
            let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') else {
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
                        UpstreamReply {
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
}

impl fmt::Display for UpstreamReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.lines.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_line() {
        let (r, used) = UpstreamReply::parse(b"250 2.0.0 OK <id@x> [Hostname=y]\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!(used, 34);
        assert_eq!(r.code, 250);
        assert_eq!(r.status(), Some("2.0.0"));
        assert_eq!(r.text(), "OK <id@x> [Hostname=y]");
        let ehlo = b"250-host Hello [1.2.3.4]\r\n250-SIZE 157286400\r\n250-AUTH LOGIN XOAUTH2\r\n250 SMTPUTF8\r\n";
        let (r, used) = UpstreamReply::parse(ehlo).unwrap().unwrap();
        assert_eq!(used, ehlo.len());
        assert_eq!(r.ehlo_keyword("auth"), Some("LOGIN XOAUTH2"));
        assert_eq!(r.ehlo_keyword("SMTPUTF8"), Some(""));
        assert_eq!(r.ehlo_keyword("STARTTLS"), None);
    }

    #[test]
    fn partial_needs_more() {
        assert_eq!(UpstreamReply::parse(b"250-a\r\n250 b").unwrap(), None);
        assert_eq!(UpstreamReply::parse(b"").unwrap(), None);
    }

    #[test]
    fn enhanced_details_above_255_are_kept() {
        let (r, _) = UpstreamReply::parse(b"451 4.7.500 Access denied, please try again later\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.status(), Some("4.7.500"));
        assert!(r.to_string().contains("4.7.500"));
    }

    #[test]
    fn status_must_match_class() {
        let (r, _) = UpstreamReply::parse(b"354 Start mail input; end with <CRLF>.<CRLF>\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.status(), None);
        let (r, _) = UpstreamReply::parse(b"550 4.1.1 odd\r\n").unwrap().unwrap();
        assert_eq!(r.status(), None);
    }

    #[test]
    fn malformed() {
        assert!(UpstreamReply::parse(b"hello\r\n").is_err());
        assert!(UpstreamReply::parse(b"250-a\r\n251 b\r\n").is_err());
        assert!(UpstreamReply::parse(&vec![b'2'; MAX_REPLY + 1]).is_err());
    }
}
