//! Reading the header block of a message (RFC 5322) as it streams by, without buffering it.

/// Longest header value we keep (RFC 5322's line limit).
const MAX_VALUE: usize = 998;
const MESSAGE_ID: &[u8] = b"message-id:";

/// Finds the `Message-ID` header while the body streams by, without buffering the header
/// block: it looks only at the start of each header line and keeps the value of the one it
/// wants (folded lines included), at most 998 bytes (RFC 5322's line limit). Stops at the
/// blank line that ends the headers.
#[derive(Debug, Default)]
pub struct MessageIdSniffer {
    /// Bytes of the current line seen so far (for the header name check), at most 11.
    prefix: Vec<u8>,
    line_len: usize,
    capturing: bool,
    /// The previous line was our header: a continuation line (leading WSP) belongs to it.
    may_continue: bool,
    value: Vec<u8>,
    found: bool,
    done: bool,
}

impl MessageIdSniffer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds decoded message bytes (CRLF line ends, dot-stuffing removed).
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.done {
                return;
            }
            match b {
                b'\n' => {
                    if self.line_len == 0 {
                        self.done = true; // blank line: end of the header block
                    }
                    self.may_continue = self.capturing;
                    self.capturing = false;
                    self.line_len = 0;
                    self.prefix.clear();
                }
                b'\r' => {}
                _ => {
                    if self.line_len == 0 {
                        if (b == b' ' || b == b'\t') && self.may_continue {
                            self.capturing = true;
                        } else if self.found {
                            self.done = true; // the header ended; first occurrence wins
                            return;
                        }
                        self.may_continue = false;
                    }
                    self.line_len += 1;
                    if self.capturing {
                        if self.value.len() < MAX_VALUE {
                            self.value.push(b);
                        }
                    } else if self.prefix.len() < MESSAGE_ID.len() {
                        self.prefix.push(b.to_ascii_lowercase());
                        if self.prefix == MESSAGE_ID && !self.found {
                            self.capturing = true;
                            self.found = true;
                        }
                    }
                }
            }
        }
    }

    /// The header's value, trimmed and made safe for a log line.
    pub fn message_id(&self) -> Option<String> {
        if !self.found {
            return None;
        }
        let v = clean(&String::from_utf8_lossy(&self.value));
        (!v.is_empty()).then_some(v)
    }
}

/// Printable ASCII only, whitespace runs as one space, at most 255 characters: a header value
/// from a client must not be able to forge log lines or flood them.
pub fn clean(s: &str) -> String {
    let mut out = String::new();
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(
            word.chars()
                .map(|c| if c.is_ascii_graphic() { c } else { '?' }),
        );
    }
    out.truncate(255);
    out
}

/// `text` safe to print on a terminal: control and invisible format characters (ESC, BEL,
/// C1 controls such as CSI, bidi overrides, zero-width marks) written as Rust escapes
/// (`\u{1b}`), the way the audit log shows client text (tracing prints field values with
/// `escape_debug`); line ends and tabs kept, printable text (UTF-8 included) unchanged. A
/// header can then not clear the screen, recolour it or write the clipboard (OSC 52).
pub fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' | '\\' | '\'' | '"' => out.push(c),
            c => out.extend(c.escape_debug()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sniff(parts: &[&[u8]]) -> Option<String> {
        let mut s = MessageIdSniffer::new();
        for p in parts {
            s.feed(p);
        }
        s.message_id()
    }

    #[test]
    fn finds_the_header_in_any_case_and_split_anywhere() {
        let msg = b"From: a@b\r\nMESSAGE-id: <x1@host>\r\nSubject: s\r\n\r\nbody";
        assert_eq!(sniff(&[msg]).as_deref(), Some("<x1@host>"));
        for cut in 0..msg.len() {
            assert_eq!(
                sniff(&[&msg[..cut], &msg[cut..]]).as_deref(),
                Some("<x1@host>"),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn folded_value_is_joined() {
        let msg = b"Message-ID:\r\n <folded@host>\r\nTo: x\r\n\r\n";
        assert_eq!(sniff(&[msg]).as_deref(), Some("<folded@host>"));
    }

    #[test]
    fn body_and_look_alikes_are_ignored() {
        assert_eq!(
            sniff(&[b"Subject: x\r\n\r\nMessage-ID: <in@body>\r\n"]),
            None
        );
        assert_eq!(sniff(&[b"X-Message-ID: <no@x>\r\n\r\n"]), None);
        assert_eq!(sniff(&[b"Message-IDs: <no@x>\r\n\r\n"]), None);
        assert_eq!(sniff(&[b"Message-ID:   \r\n\r\n"]), None);
    }

    #[test]
    fn first_occurrence_wins_and_value_is_bounded() {
        let msg = b"Message-ID: <a@x>\r\nMessage-ID: <b@x>\r\n\r\n";
        assert_eq!(sniff(&[msg]).as_deref(), Some("<a@x>"));
        let long = format!("Message-ID: <{}@x>\r\n\r\n", "y".repeat(5000));
        assert_eq!(sniff(&[long.as_bytes()]).unwrap().len(), 255);
    }

    #[test]
    fn clean_keeps_log_lines_single_and_printable() {
        assert_eq!(clean(" <a@b>\r\nforged=1 "), "<a@b> forged=1");
        assert_eq!(clean("<ä@b>"), "<?@b>");
    }

    #[test]
    fn terminal_safe_escapes_what_a_terminal_would_obey() {
        let hostile = "Subject: \u{1b}[2J\u{1b}]52;c;aGk=\u{7}\u{9b}31m\u{202e}x\r\n";
        assert_eq!(
            terminal_safe(hostile),
            "Subject: \\u{1b}[2J\\u{1b}]52;c;aGk=\\u{7}\\u{9b}31m\\u{202e}x\\r\n"
        );
        let plain = "Subject: Grüße \"quoted\" it's C:\\dir\n\tfolded\n";
        assert_eq!(terminal_safe(plain), plain);
    }
}
