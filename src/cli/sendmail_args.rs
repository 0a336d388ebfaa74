//! `sendmail`'s pure half: the command line (the options msmtp's and Postfix's sendmail
//! take that matter to a relay, and the ones apps pass that do not), and the message as it
//! comes from stdin: where it ends, its line endings, the recipients in its headers, the
//! `Bcc:` header that must not travel, and the `From:` that `-F` adds. No I/O.
//!
//! What apps pass (and what is accepted here): PHP's `mail()` `-t -i`; Vixie cron
//! `-FCronDaemon -odi -oem -oi -t`; cronie and Debian cron add `-i -B8BITMIME`; mailx
//! `-i [-r from] -- rcpt…`; mutt `-oem -oi`; logwatch `-t`. Delivery and error modes
//! (`-od?`, `-oe?`, `-e?`), `-v`, `-U`, `-n`, `-om`, `-bm` and the DSN and body-type options
//! (`-B`, `-N`, `-R`, `-V`, `-L`, which take a value) are accepted and change nothing: the
//! relay delivers, and every failure is the exit code plus a line on stderr.

use std::path::PathBuf;

use crate::wire::address::is_safe_address;
use crate::wire::data::CrlfNormaliser;

/// The one-line usage, for usage errors.
pub const USAGE: &str =
    "usage: sendmail [-t] [-i] [-f sender] [-F full-name] [-C config.toml] [--] recipient...";

/// What the command line asked for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `-t`: recipients from the `To:`, `Cc:` and `Bcc:` headers too.
    pub extract: bool,
    /// `-i`, `-oi`: a line with a single `.` is message text, not the end of input.
    pub ignore_dots: bool,
    /// `-f ADDR`, `-r ADDR`: the envelope sender (`""` for the null sender `<>`).
    pub sender: Option<String>,
    /// `-F NAME`: the full name for a `From:` header, added when the message has none.
    pub full_name: Option<String>,
    /// `-C FILE`: the relay's configuration file (sendmail's own `-C` names its config).
    pub config: Option<PathBuf>,
    /// The arguments after the options: addresses, or address lists (`a@x, B <b@y>`).
    pub recipients: Vec<String>,
}

/// A usage error: what is wrong, in words for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses sendmail's arguments (without the program name). Flags may be grouped (`-ti`), a
/// value may follow its letter (`-fADDR`) or come next (`-f ADDR`); options may follow
/// recipients, as with GNU getopt; `--` ends them.
pub fn parse_args(args: &[String]) -> Result<Invocation, Usage> {
    let mut inv = Invocation::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            inv.recipients.extend(args[i..].iter().cloned());
            break;
        }
        let Some(flags) = arg.strip_prefix('-').filter(|f| !f.is_empty()) else {
            inv.recipients.push(arg.clone());
            continue;
        };
        if flags.starts_with('-') {
            return Err(unknown(arg));
        }
        for (at, letter) in flags.char_indices() {
            let rest = &flags[at + letter.len_utf8()..];
            match letter {
                't' => inv.extract = true,
                'i' => inv.ignore_dots = true,
                // Verbose, initial submission, no aliasing: nothing to do here.
                'v' | 'U' | 'n' => {}
                'f' | 'r' | 'F' | 'C' | 'B' | 'N' | 'R' | 'V' | 'L' => {
                    let value = if rest.is_empty() {
                        let v = args.get(i).ok_or_else(|| {
                            Usage(format!("option -{letter} needs a value; {USAGE}"))
                        })?;
                        i += 1;
                        v.clone()
                    } else {
                        rest.to_string()
                    };
                    match letter {
                        'f' | 'r' => inv.sender = Some(sender_arg(&value)),
                        'F' => inv.full_name = Some(value),
                        'C' => inv.config = Some(PathBuf::from(value)),
                        // Body type, DSN notify/return/envid, label: the relay decides.
                        _ => {}
                    }
                    break;
                }
                'o' => {
                    match rest {
                        "i" => inv.ignore_dots = true,
                        "em" | "ee" | "ep" | "eq" | "ew" | "m" => {}
                        d if d.len() == 2
                            && d.starts_with('d')
                            && matches!(d.as_bytes()[1], b'i' | b'b' | b'q' | b'd') => {}
                        _ => return Err(unknown(arg)),
                    }
                    break;
                }
                'e' => {
                    if !matches!(rest, "m" | "e" | "p" | "q" | "w") {
                        return Err(unknown(arg));
                    }
                    break;
                }
                'b' => {
                    if rest != "m" {
                        return Err(Usage(format!(
                            "option {arg} is not supported: this sendmail only sends one message read from stdin (-bm); {USAGE}"
                        )));
                    }
                    break;
                }
                _ => return Err(unknown(arg)),
            }
        }
    }
    Ok(inv)
}

fn unknown(arg: &str) -> Usage {
    Usage(format!("unknown option {arg}; {USAGE}"))
}

/// `-f` as apps write it: `addr`, `<addr>`, `<>`.
fn sender_arg(value: &str) -> String {
    let v = value.trim();
    v.strip_prefix('<')
        .and_then(|v| v.strip_suffix('>'))
        .unwrap_or(v)
        .trim()
        .to_string()
}

/// The message as it goes to the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub sender: String,
    pub recipients: Vec<String>,
    /// CRLF line ends, ending in CRLF (unless empty), not dot-stuffed, no `Bcc:` header.
    pub message: Vec<u8>,
    /// A byte beyond ASCII in the message: `BODY=8BITMIME`.
    pub body_8bit: bool,
    /// An address beyond ASCII: `SMTPUTF8`.
    pub smtputf8: bool,
}

/// Turns stdin's bytes and the command line into what is sent. `default_sender` is used
/// without `-f`.
pub fn prepare(inv: &Invocation, raw: &[u8], default_sender: &str) -> Result<Prepared, Usage> {
    let mut message = to_crlf(end_of_input(raw, inv.ignore_dots));
    let mut recipients = Vec::new();
    for arg in &inv.recipients {
        recipients.extend(address_list(arg));
    }
    if inv.extract {
        recipients.extend(header_recipients(&message));
    }
    let mut seen = std::collections::HashSet::new();
    recipients.retain(|r| seen.insert(r.to_ascii_lowercase()));
    if recipients.is_empty() {
        return Err(Usage(if inv.extract {
            "no recipients: none on the command line and no To:, Cc: or Bcc: header".into()
        } else {
            format!("no recipients: name them as arguments, or use -t to take them from the To:, Cc: and Bcc: headers; {USAGE}")
        }));
    }
    for r in &recipients {
        if r.is_empty() || !is_safe_address(r) {
            return Err(Usage(not_an_address(r, "recipient")));
        }
    }
    let sender = inv
        .sender
        .clone()
        .unwrap_or_else(|| default_sender.to_string());
    if !is_safe_address(&sender) {
        return Err(Usage(not_an_address(&sender, "sender (-f)")));
    }
    message = remove_bcc(&message);
    if let Some(name) = &inv.full_name {
        if !has_field(&message, "from") {
            let mut with = from_header(name, &sender).into_bytes();
            with.extend_from_slice(&message);
            message = with;
        }
    }
    Ok(Prepared {
        body_8bit: !message.is_ascii(),
        smtputf8: !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii()),
        sender,
        recipients,
        message,
    })
}

fn not_an_address(text: &str, what: &str) -> String {
    if !text.contains('@') && !text.is_empty() && is_safe_address(&format!("{text}@x")) {
        format!("{text:?} is not a full address: a {what} needs a domain (like {text}@example.com); this sendmail has no local mailboxes or aliases")
    } else {
        format!("{text:?} is not an address a {what} can have (like someone@example.com)")
    }
}

/// Without `-i`, input ends at a line holding a single `.` (traditional sendmail); the
/// line and what follows are dropped. With `-i`, everything is the message.
pub fn end_of_input(raw: &[u8], ignore_dots: bool) -> &[u8] {
    if ignore_dots {
        return raw;
    }
    let mut start = 0;
    loop {
        let end = memchr::memchr(b'\n', &raw[start..]).map(|n| start + n);
        let line = &raw[start..end.unwrap_or(raw.len())];
        if line == b"." || line == b".\r" {
            return &raw[..start];
        }
        match end {
            Some(n) => start = n + 1,
            None => return raw,
        }
    }
}

/// Bare LF and bare CR become CRLF (what PHP and cron write has LF only); a message that
/// does not end with a line end gets one.
pub fn to_crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32 + 2);
    let mut n = CrlfNormaliser::default();
    n.push(bytes, &mut out);
    n.finish(&mut out);
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One header field of a CRLF message: its name and where it lies (all its lines).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    name: String,
    start: usize,
    end: usize,
}

impl Field {
    /// The value, unfolded (line ends removed), lossy for bytes that are not UTF-8.
    fn value(&self, message: &[u8]) -> String {
        let raw = &message[self.start + self.name.len() + 1..self.end];
        String::from_utf8_lossy(raw)
            .replace("\r\n", "")
            .trim()
            .to_string()
    }
}

/// The header fields of a CRLF message: lines up to the first empty one (or the first line
/// that is neither a field nor a continuation of one).
fn fields(message: &[u8]) -> Vec<Field> {
    let mut out: Vec<Field> = Vec::new();
    let mut pos = 0;
    while pos < message.len() {
        let end =
            memchr::memmem::find(&message[pos..], b"\r\n").map_or(message.len(), |n| pos + n + 2);
        let line = &message[pos..end];
        if line == b"\r\n" {
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            match out.last_mut() {
                Some(f) => f.end = end,
                None => break,
            }
        } else {
            let name_len = line
                .iter()
                .position(|&b| b == b':')
                .filter(|&n| n > 0 && line[..n].iter().all(|b| (33..=126).contains(b)));
            let Some(n) = name_len else { break };
            out.push(Field {
                name: String::from_utf8_lossy(&line[..n]).into_owned(),
                start: pos,
                end,
            });
        }
        pos = end;
    }
    out
}

fn has_field(message: &[u8], name: &str) -> bool {
    fields(message)
        .iter()
        .any(|f| f.name.eq_ignore_ascii_case(name))
}

/// The addresses of the `To:`, `Cc:` and `Bcc:` headers, in order.
pub fn header_recipients(message: &[u8]) -> Vec<String> {
    fields(message)
        .iter()
        .filter(|f| {
            ["to", "cc", "bcc"]
                .iter()
                .any(|n| f.name.eq_ignore_ascii_case(n))
        })
        .flat_map(|f| address_list(&f.value(message)))
        .collect()
}

/// The message without its `Bcc:` header fields (folded lines included): the blind copies'
/// addresses must not reach the other recipients.
pub fn remove_bcc(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len());
    let mut pos = 0;
    for f in fields(message) {
        if f.name.eq_ignore_ascii_case("bcc") {
            out.extend_from_slice(&message[pos..f.start]);
            pos = f.end;
        }
    }
    out.extend_from_slice(&message[pos..]);
    out
}

/// `From: Full Name <sender>` (RFC 5322): the name as an atom phrase when it is one, a quoted
/// string when it is ASCII, an encoded word (RFC 2047) beyond ASCII. Line ends and other
/// control characters in the name are dropped (no header can be smuggled in through `-F`).
pub fn from_header(name: &str, sender: &str) -> String {
    use base64::Engine as _;
    let name: String = name.chars().filter(|c| !c.is_control()).collect();
    let name = name.trim();
    let address = if sender.is_empty() {
        String::from("<>")
    } else {
        format!("<{sender}>")
    };
    if name.is_empty() {
        return format!("From: {address}\r\n");
    }
    let phrase = if !name.is_ascii() {
        format!(
            "=?UTF-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(name)
        )
    } else if name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == ' ' || "!#$%&'*+-/=?^_`{|}~".contains(c))
    {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
    };
    format!("From: {phrase} {address}\r\n")
}

/// The addresses of an RFC 5322 address list: `a@x`, `Name <a@x>`, `"Doe, J" <j@x>`,
/// `a@x (comment)`, groups `team: a@x, b@y;` and `undisclosed-recipients:;`. Display names
/// and comments are dropped; a quoted local part keeps its quotes.
pub fn address_list(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut angle: Option<String> = None;
    let mut in_angle = false;
    let mut in_quote = false;
    let mut depth = 0usize;
    let finish = |word: &mut String, angle: &mut Option<String>, out: &mut Vec<String>| {
        let address = angle.take().unwrap_or_else(|| word.clone());
        word.clear();
        let address = address.trim();
        if !address.is_empty() {
            out.push(address.to_string());
        }
    };
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        let target = if in_angle {
            angle.get_or_insert_with(String::new)
        } else {
            &mut word
        };
        if in_quote {
            target.push(c);
            if c == '\\' {
                target.extend(chars.next());
            } else if c == '"' {
                in_quote = false;
            }
            continue;
        }
        if depth > 0 {
            match c {
                '\\' => {
                    let _ = chars.next();
                }
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            continue;
        }
        match c {
            '(' => depth = 1,
            '"' => {
                in_quote = true;
                target.push(c);
            }
            '<' if !in_angle => {
                in_angle = true;
                angle = Some(String::new());
            }
            '>' if in_angle => in_angle = false,
            c if in_angle => {
                if !c.is_whitespace() {
                    target.push(c);
                }
            }
            ',' | ';' => finish(&mut word, &mut angle, &mut out),
            // A group's name (what came before is its display name, not an address).
            ':' => word.clear(),
            c => word.push(c),
        }
    }
    finish(&mut word, &mut angle, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    fn parsed(line: &str) -> Invocation {
        parse_args(&args(line)).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    #[test]
    fn what_apps_pass_is_understood() {
        let php = parsed("-t -i");
        assert!(php.extract && php.ignore_dots && php.recipients.is_empty());
        let cron = parsed("-FCronDaemon -odi -oem -oi -t");
        assert_eq!(cron.full_name.as_deref(), Some("CronDaemon"));
        assert!(cron.extract && cron.ignore_dots);
        let debian = parsed("-i -FCronDaemon -B8BITMIME -oem root@example.com");
        assert_eq!(debian.recipients, ["root@example.com"]);
        assert!(!debian.extract);
        let mailx = parsed("-i -r app@example.com -- a@example.com -b@example.com");
        assert_eq!(mailx.sender.as_deref(), Some("app@example.com"));
        assert_eq!(mailx.recipients, ["a@example.com", "-b@example.com"]);
        let grouped = parsed("-ti -f<bounce@example.com> -F Build Bot");
        assert!(grouped.extract && grouped.ignore_dots);
        assert_eq!(grouped.sender.as_deref(), Some("bounce@example.com"));
        assert_eq!(grouped.full_name.as_deref(), Some("Build"));
        assert_eq!(grouped.recipients, ["Bot"], "one argument is one value");
        let null = parsed("-f <> -v -U -bm -em -odb -N never -C /etc/relay.toml x@y");
        assert_eq!(null.sender.as_deref(), Some(""));
        assert_eq!(null.config, Some(PathBuf::from("/etc/relay.toml")));
        assert_eq!(null.recipients, ["x@y"]);
        let after = parsed("x@y -oi");
        assert!(
            after.ignore_dots,
            "options after recipients, as GNU getopt allows"
        );
    }

    #[test]
    fn anything_else_is_a_usage_error_naming_the_option() {
        for (line, named) in [
            ("-X /tmp/log", "-X"),
            ("-q", "-q"),
            ("-tq", "-tq"),
            ("--verbose", "--verbose"),
            ("-oQ/var/spool", "-oQ/var/spool"),
            ("-ex", "-ex"),
        ] {
            let e = parse_args(&args(line)).unwrap_err();
            assert!(
                e.0.contains(&format!("unknown option {named}")),
                "{line}: {e}"
            );
            assert!(e.0.contains("usage: sendmail"), "{e}");
        }
        let bs = parse_args(&args("-bs")).unwrap_err();
        assert!(bs.0.contains("-bs is not supported"), "{bs}");
        let missing = parse_args(&args("-t -f")).unwrap_err();
        assert!(missing.0.contains("option -f needs a value"), "{missing}");
    }

    #[test]
    fn a_lone_dot_ends_input_unless_i() {
        let raw = b"Subject: x\n\nbody\n.\nafter\n";
        assert_eq!(end_of_input(raw, false), b"Subject: x\n\nbody\n");
        assert_eq!(end_of_input(raw, true), raw);
        assert_eq!(end_of_input(b"a\r\n.\r\nb", false), b"a\r\n");
        assert_eq!(end_of_input(b".\n", false), b"");
        assert_eq!(end_of_input(b"a\n..\n.b\n. \n", false), b"a\n..\n.b\n. \n");
        assert_eq!(
            end_of_input(b"a\n.", false),
            b"a\n",
            "a final dot without newline"
        );
    }

    #[test]
    fn line_ends_become_crlf() {
        assert_eq!(to_crlf(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd\r\n");
        assert_eq!(to_crlf(b""), b"");
        assert_eq!(to_crlf(b"x\r"), b"x\r\n");
    }

    #[test]
    fn address_lists_yield_their_addresses() {
        assert_eq!(
            address_list(r#"a@x, "Doe, John" <j@y>, Team: b@z (Bee), <c@w>;, d@v"#),
            ["a@x", "j@y", "b@z", "c@w", "d@v"]
        );
        assert_eq!(
            address_list("undisclosed-recipients:;"),
            Vec::<String>::new()
        );
        assert_eq!(address_list(r#""a b"@x"#), [r#""a b"@x"#]);
        assert_eq!(
            address_list("Name (with, comma) <a@x>, (only comment) b@y"),
            ["a@x", "b@y"]
        );
        assert_eq!(address_list(""), Vec::<String>::new());
        assert_eq!(address_list("<@route,@r2:a@x>"), ["@route,@r2:a@x"]);
    }

    const MESSAGE: &[u8] = b"From: app@example.com\r\nTo: A <a@example.com>,\r\n  b@example.com\r\nCc: c@example.com\r\nBcc: hidden@example.com,\r\n\tsecret@example.com\r\nSubject: Bcc: not a header\r\n\r\nBcc: body text\r\n";

    #[test]
    fn headers_give_recipients_and_bcc_goes() {
        assert_eq!(
            header_recipients(MESSAGE),
            [
                "a@example.com",
                "b@example.com",
                "c@example.com",
                "hidden@example.com",
                "secret@example.com"
            ]
        );
        let without = remove_bcc(MESSAGE);
        let text = String::from_utf8(without).unwrap();
        assert!(
            !text.contains("hidden") && !text.contains("secret"),
            "{text}"
        );
        assert!(text.contains("Subject: Bcc: not a header\r\n\r\nBcc: body text\r\n"));
        assert!(text.starts_with("From: app@example.com\r\nTo: A <a@example.com>,\r\n  b@"));
        // The body is never read as headers.
        assert!(header_recipients(b"Subject: x\r\n\r\nTo: body@x\r\n").is_empty());
        assert!(header_recipients(b"no header here\r\nTo: a@x\r\n").is_empty());
    }

    #[test]
    fn from_is_added_only_with_f_and_without_one() {
        assert_eq!(
            from_header("Cron Daemon", "root@h.example"),
            "From: Cron Daemon <root@h.example>\r\n"
        );
        assert_eq!(
            from_header("Doe, \"J\"", "a@x"),
            "From: \"Doe, \\\"J\\\"\" <a@x>\r\n"
        );
        assert_eq!(
            from_header("Jörg", "a@x"),
            "From: =?UTF-8?B?SsO2cmc=?= <a@x>\r\n"
        );
        assert_eq!(
            from_header("x\r\nBcc: evil@x", "a@x"),
            "From: \"xBcc: evil@x\" <a@x>\r\n",
            "no line end gets through"
        );
        let inv = Invocation {
            full_name: Some("Cron".into()),
            recipients: vec!["r@x".into()],
            ..Default::default()
        };
        let p = prepare(&inv, b"Subject: s\n\nbody\n", "me@h").unwrap();
        assert_eq!(
            p.message,
            b"From: Cron <me@h>\r\nSubject: s\r\n\r\nbody\r\n"
        );
        let kept = prepare(&inv, b"from: own@x\nSubject: s\n\nbody\n", "me@h").unwrap();
        assert_eq!(kept.message, b"from: own@x\r\nSubject: s\r\n\r\nbody\r\n");
    }

    #[test]
    fn prepare_joins_command_line_and_headers() {
        let inv = Invocation {
            extract: true,
            sender: Some("bounce@x".into()),
            recipients: vec!["extra@y, a@example.com".into()],
            ..Default::default()
        };
        let p = prepare(&inv, MESSAGE, "me@h").unwrap();
        assert_eq!(p.sender, "bounce@x");
        assert_eq!(
            p.recipients,
            [
                "extra@y",
                "a@example.com",
                "b@example.com",
                "c@example.com",
                "hidden@example.com",
                "secret@example.com"
            ],
            "duplicates once"
        );
        assert!(!p.body_8bit && !p.smtputf8);
        let utf8 = prepare(
            &Invocation {
                recipients: vec!["jörg@bücher.de".into()],
                ..Default::default()
            },
            "Subject: ü\n\n".as_bytes(),
            "me@h",
        )
        .unwrap();
        assert!(utf8.body_8bit && utf8.smtputf8);
        assert_eq!(utf8.sender, "me@h");
    }

    #[test]
    fn bad_or_missing_recipients_are_usage_errors() {
        let none = prepare(&Invocation::default(), b"Subject: x\n\n", "me@h").unwrap_err();
        assert!(none.0.starts_with("no recipients"), "{none}");
        let t = Invocation {
            extract: true,
            ..Default::default()
        };
        let none_t = prepare(&t, b"To: undisclosed-recipients:;\n\n", "me@h").unwrap_err();
        assert!(none_t.0.contains("no To:, Cc: or Bcc: header"), "{none_t}");
        let root = prepare(&t, b"To: root\n\n", "me@h").unwrap_err();
        assert!(root.0.contains("\"root\" is not a full address"), "{root}");
        let spaced = Invocation {
            recipients: vec!["a b@c".into()],
            ..Default::default()
        };
        let e = prepare(&spaced, b"", "me@h").unwrap_err();
        assert!(
            e.0.contains("\"a b@c\" is not an address a recipient"),
            "{e}"
        );
        let inject = Invocation {
            sender: Some("a@b>\r\nRCPT TO:<c@d".into()),
            recipients: vec!["r@x".into()],
            ..Default::default()
        };
        assert!(prepare(&inject, b"", "me@h").is_err());
        let bad_sender = Invocation {
            sender: Some("a b@c".into()),
            recipients: vec!["r@x".into()],
            ..Default::default()
        };
        let e = prepare(&bad_sender, b"", "me@h").unwrap_err();
        assert!(e.0.contains("sender (-f)"), "{e}");
    }
}
