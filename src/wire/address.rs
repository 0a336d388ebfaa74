//! What we accept in names and addresses from clients, before they go into replies, logs, the
//! `Received:` header and upstream commands.
//!
//! Paths (`MAIL FROM:<…>`, `RCPT TO:<…>`) are split here from the raw command line, so an
//! address reaches Exchange exactly as the client wrote it: a quoted local part keeps its
//! quotes and backslashes (RFC 5321 §4.1.2), and bytes that are not UTF-8 are refused rather
//! than replaced.

/// A host name from HELO/EHLO, kept printable and short: it goes into replies, logs and the
/// `Received:` header. `unknown` when nothing printable is left.
pub fn clean_host_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .filter(|c| c.is_ascii_graphic() || (!c.is_ascii() && !c.is_control()))
        .take(255)
        .collect();
    if cleaned.is_empty() {
        "unknown".into()
    } else {
        cleaned
    }
}

/// Longest address we take (RFC 5321 §4.5.3.1.3: a path is at most 256 octets).
pub const MAX_ADDRESS: usize = 256;

/// A path from `MAIL FROM:`/`RCPT TO:`, split from the parameters that follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathArg<'a> {
    /// The address exactly as written between `<` and `>`, a source route (`@a,@b:`) dropped
    /// (RFC 5321 §4.1.1.3 says to ignore it); empty for the null path `<>`.
    pub address: &'a str,
    /// Everything after the closing `>`: the ESMTP parameters, line end included.
    pub params: &'a [u8],
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// No `<…>` where the path belongs, or it does not end on this line.
    Syntax,
    /// The address holds bytes that are not UTF-8 (RFC 6531 allows UTF-8 only).
    NotUtf8,
    /// Not a mailbox: no `local@domain`, a bad character, an empty part, too long.
    BadAddress,
}

/// Splits the argument of `MAIL FROM:`/`RCPT TO:` (what follows the colon) into the path and
/// its parameters. Spaces before `<` are tolerated, as most MTAs do.
pub fn split_path(arg: &[u8]) -> Result<PathArg<'_>, PathError> {
    let start = arg.iter().position(|&b| b != b' ').unwrap_or(arg.len());
    if arg.get(start) != Some(&b'<') {
        return Err(PathError::Syntax);
    }
    let inner_start = start + 1;
    let mut in_quote = false;
    let mut i = inner_start;
    let end = loop {
        let Some(&b) = arg.get(i) else {
            return Err(PathError::Syntax);
        };
        match b {
            b'\r' | b'\n' => return Err(PathError::Syntax),
            b'\\' if in_quote => i += 1,
            b'"' => in_quote = !in_quote,
            b'>' if !in_quote => break i,
            _ => {}
        }
        i += 1;
    };
    let inner = std::str::from_utf8(&arg[inner_start..end]).map_err(|_| PathError::NotUtf8)?;
    let address = match inner.strip_prefix('@') {
        Some(route) => route.split_once(':').ok_or(PathError::BadAddress)?.1,
        None => inner,
    };
    if !address.is_empty() && !address.eq_ignore_ascii_case("postmaster") {
        check_mailbox(address)?;
    }
    Ok(PathArg {
        address,
        params: &arg[end + 1..],
    })
}

/// RFC 5321 §4.1.2 `Mailbox`, widened by RFC 6531 to UTF-8: a dot-string or a quoted string,
/// `@`, and a domain or an address literal. Lenient in the domain (any atext, as legacy
/// apps use names like `host_1`), strict where a character could end or add a command.
fn check_mailbox(address: &str) -> Result<(), PathError> {
    if address.len() > MAX_ADDRESS {
        return Err(PathError::BadAddress);
    }
    let (local, domain) = match address.strip_prefix('"') {
        Some(quoted) => {
            let close = quoted_end(quoted).ok_or(PathError::BadAddress)?;
            let rest = &quoted[close + 1..];
            let domain = rest.strip_prefix('@').ok_or(PathError::BadAddress)?;
            (&address[..close + 2], domain)
        }
        None => {
            let (local, domain) = address.split_once('@').ok_or(PathError::BadAddress)?;
            if !is_dot_string(local) {
                return Err(PathError::BadAddress);
            }
            (local, domain)
        }
    };
    if local.is_empty() || !is_domain(domain) {
        return Err(PathError::BadAddress);
    }
    Ok(())
}

/// Where the quoted string that `s` continues (after its opening `"`) closes, if its content
/// is qtextSMTP or quoted pairs (RFC 5321 §4.1.2) or UTF-8 beyond ASCII (RFC 6531).
fn quoted_end(s: &str) -> Option<usize> {
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some(i),
            '\\' => {
                let (_, next) = chars.next()?;
                if !(' '..='~').contains(&next) {
                    return None;
                }
            }
            ' '..='~' => {}
            c if !c.is_ascii() && !c.is_control() => {}
            _ => return None,
        }
    }
    None
}

/// RFC 5322 atext, plus UTF-8 beyond ASCII (RFC 6531).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (!c.is_ascii() && !c.is_control())
}

fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

fn is_domain(d: &str) -> bool {
    match d.strip_prefix('[') {
        Some(literal) => literal.strip_suffix(']').is_some_and(|inside| {
            !inside.is_empty()
                && inside
                    .chars()
                    .all(|c| c.is_ascii_graphic() && !"[]\\".contains(c))
        }),
        None => is_dot_string(d),
    }
}

/// Whether a mailbox address may go into an upstream `MAIL FROM`/`RCPT TO`: empty (the null
/// path), or a mailbox as [`split_path`] accepts it, so nothing in it can end or add a
/// command. (Beyond that the syntax is the client's business and Exchange's to judge.)
pub fn is_safe_address(address: &str) -> bool {
    address.is_empty()
        || address.eq_ignore_ascii_case("postmaster")
        || check_mailbox(address).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_printable() {
        assert_eq!(clean_host_name("bad\u{7}name"), "badname");
        assert_eq!(clean_host_name("\u{1}\u{2}"), "unknown");
        assert_eq!(clean_host_name(&"a".repeat(300)).len(), 255);
        assert_eq!(clean_host_name("bücher.de"), "bücher.de");
    }

    #[test]
    fn addresses_cannot_carry_commands() {
        assert!(is_safe_address("jörg@bücher.de"));
        assert!(is_safe_address(""));
        assert!(is_safe_address("\"a b\"@c"));
        for bad in [
            "a@b>\r\nRCPT TO:<c@d",
            "a b@c",
            "<a@b>",
            "a@b\t",
            "\"a\r\nb\"@c",
            "\"a\"b\"@c",
        ] {
            assert!(!is_safe_address(bad), "{bad:?}");
        }
        assert!(!is_safe_address(&format!("{}@b", "a".repeat(300))));
    }

    fn path(arg: &str) -> Result<(&str, &[u8]), PathError> {
        split_path(arg.as_bytes()).map(|p| (p.address, p.params))
    }

    #[test]
    fn quoted_local_parts_are_kept_as_written() {
        assert_eq!(
            path("<\"a\\\"b\"@x>\r\n"),
            Ok(("\"a\\\"b\"@x", &b"\r\n"[..]))
        );
        assert_eq!(
            path("<\"john smith\"@example.com> SIZE=10\r\n"),
            Ok(("\"john smith\"@example.com", &b" SIZE=10\r\n"[..]))
        );
        // A `>` inside quotes does not end the path.
        assert_eq!(path("<\"a>b\"@x>\r\n"), Ok(("\"a>b\"@x", &b"\r\n"[..])));
        assert_eq!(path("<\"a\\\\\"@x>"), Ok(("\"a\\\\\"@x", &b""[..])));
    }

    #[test]
    fn plain_null_routed_and_postmaster_paths() {
        assert_eq!(path("<a.b+c@x.example>"), Ok(("a.b+c@x.example", &b""[..])));
        assert_eq!(path(" <a@x>"), Ok(("a@x", &b""[..])));
        assert_eq!(path("<>\r\n"), Ok(("", &b"\r\n"[..])));
        assert_eq!(path("<@r1,@r2:a@x>"), Ok(("a@x", &b""[..])));
        assert_eq!(path("<Postmaster>"), Ok(("Postmaster", &b""[..])));
        assert_eq!(path("<a@[192.0.2.1]>"), Ok(("a@[192.0.2.1]", &b""[..])));
        assert_eq!(path("<用户@例子.广告>"), Ok(("用户@例子.广告", &b""[..])));
    }

    #[test]
    fn broken_paths_are_refused() {
        for (arg, want) in [
            ("a@x", PathError::Syntax),
            ("<a@x", PathError::Syntax),
            ("<\"a>@x\r\n", PathError::Syntax),
            ("<a@x\r\n>", PathError::Syntax),
            ("<a>", PathError::BadAddress),
            ("<@x>", PathError::BadAddress),
            ("<a@>", PathError::BadAddress),
            ("<a..b@x>", PathError::BadAddress),
            ("<.a@x>", PathError::BadAddress),
            ("<a@x..y>", PathError::BadAddress),
            ("<a b@x>", PathError::BadAddress),
            ("<a\"b@x>", PathError::Syntax),
            ("<\"a\"b@x>", PathError::BadAddress),
            ("<a@x\u{7}>", PathError::BadAddress),
            ("<\"a\u{1b}\"@x>", PathError::BadAddress),
            ("<@r1a@x>", PathError::BadAddress),
        ] {
            assert_eq!(path(arg), Err(want), "{arg:?}");
        }
        assert_eq!(
            split_path(b"<j\xf6rg@x>"),
            Err(PathError::NotUtf8),
            "Latin-1 is not UTF-8"
        );
        let long = format!("<{}@x>", "a".repeat(MAX_ADDRESS));
        assert_eq!(path(&long), Err(PathError::BadAddress));
    }
}
