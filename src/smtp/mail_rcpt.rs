//! `MAIL FROM` and `RCPT TO` read from the raw command line, pure, for the session.
//!
//! smtp-proto's `Request::parse` drops the quotes of a quoted local part (`"a\"b"@x` became
//! the invalid `a"b@x` upstream), replaces bytes that are not UTF-8 with U+FFFD, and reads a
//! `SIZE=` beyond `usize` as some other number. So the path is split here
//! ([`crate::wire::address::split_path`]: kept exactly as written), `SIZE=` is read here
//! (any number, however long, compared with the limit; anything else refused), and smtp-proto
//! reads only the remaining parameters (`BODY=`, `SMTPUTF8`, …) into its flags.
//!
//! Lenient where legacy apps need it, as Postfix is by default (`strict_rfc821_envelopes =
//! no`): any case, spaces around the colon (`MAIL FROM: <a@b>`), a bare LF line end, and a
//! path without its angle brackets (`MAIL FROM:a@b`, `RCPT TO:b@c`), read up to the first
//! space outside a quoted local part and checked exactly as a bracketed one.

use std::borrow::Cow;

use smtp_proto::request::parser::Rfc5321Parser;
use smtp_proto::{MailFrom, RcptTo, Request};

use super::reply::{self, Reply};
use crate::wire::address::{split_path, PathError};

/// Why a `MAIL`/`RCPT` argument was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Refused here, with this reply.
    Reply(Reply),
    /// smtp-proto refused a parameter; the session answers as for any parse error.
    Parse(smtp_proto::Error),
}

/// The request on `line` if it is `MAIL` or `RCPT`: `None` for any other command (the
/// caller parses those with smtp-proto), `Err` for a refused argument.
pub fn parse(line: &[u8]) -> Option<Result<Request<Cow<'_, str>>, Refusal>> {
    let verb = line.get(..4)?;
    if line.get(4) != Some(&b' ') {
        return None;
    }
    if verb.eq_ignore_ascii_case(b"MAIL") {
        Some(mail(&line[5..]))
    } else if verb.eq_ignore_ascii_case(b"RCPT") {
        Some(rcpt(&line[5..]))
    } else {
        None
    }
}

const MAIL_SYNTAX: &str = "MAIL FROM:<reverse-path> [parameters]";
const RCPT_SYNTAX: &str = "RCPT TO:<forward-path> [parameters]";

/// The argument after `keyword` and its colon (`FROM:`, `TO:`; spaces around the colon
/// tolerated, as smtp-proto does).
fn after_keyword<'a>(rest: &'a [u8], keyword: &[u8]) -> Option<&'a [u8]> {
    let rest = trim_start(rest);
    let head = rest.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    trim_start(&rest[keyword.len()..]).strip_prefix(b":")
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|&&c| c == b' ').count();
    &b[n..]
}

/// A path argument as a legacy client may write it: `<path> params`, or a bare address
/// without the angle brackets (`a@b params`). Returns the address and the parameters.
fn path_arg(arg: &[u8]) -> Result<(Cow<'_, str>, &[u8]), PathError> {
    let arg = trim_start(arg);
    if arg.first() == Some(&b'<') {
        let path = split_path(arg)?;
        return Ok((Cow::Borrowed(path.address), path.params));
    }
    let (token, params) = arg.split_at(bare_address_len(arg));
    // A stray bracket means a mangled `<path>`, not a bare address; and the null path has
    // to be written `<>`.
    if token.is_empty() || token.iter().any(|&b| b == b'<' || b == b'>') {
        return Err(PathError::Syntax);
    }
    let mut bracketed = Vec::with_capacity(token.len() + 2);
    bracketed.push(b'<');
    bracketed.extend_from_slice(token);
    bracketed.push(b'>');
    let path = split_path(&bracketed)?;
    if path.address.is_empty() {
        return Err(PathError::Syntax);
    }
    Ok((Cow::Owned(path.address.to_owned()), params))
}

/// Length of a bare address at the start of `arg`: up to the first space or line end that is
/// not inside a quoted local part.
fn bare_address_len(arg: &[u8]) -> usize {
    let mut in_quote = false;
    let mut i = 0;
    while let Some(&b) = arg.get(i) {
        match b {
            b'\\' if in_quote => i += 1,
            b'"' => in_quote = !in_quote,
            b'\r' | b'\n' => return i,
            b' ' | b'\t' if !in_quote => return i,
            _ => {}
        }
        i += 1;
    }
    arg.len()
}

fn mail(rest: &[u8]) -> Result<Request<Cow<'_, str>>, Refusal> {
    let arg =
        after_keyword(rest, b"FROM").ok_or_else(|| Refusal::Reply(reply::syntax(MAIL_SYNTAX)))?;
    let (address, params) = path_arg(arg).map_err(|e| {
        Refusal::Reply(match e {
            PathError::Syntax => reply::syntax(MAIL_SYNTAX),
            PathError::NotUtf8 => reply::sender_not_utf8(),
            PathError::BadAddress => reply::bad_sender(),
        })
    })?;
    let (size, others) = take_size(params).map_err(Refusal::Reply)?;
    let mut iter = others.iter();
    let mut parser = Rfc5321Parser::new(&mut iter);
    parser.stop_char = b' ';
    let parsed = parser
        .mail_from_parameters(Cow::Borrowed(""))
        .map_err(Refusal::Parse)?;
    Ok(Request::Mail {
        from: MailFrom {
            address,
            flags: parsed.flags,
            size: usize::try_from(size).unwrap_or(usize::MAX),
            ..MailFrom::default()
        },
    })
}

fn rcpt(rest: &[u8]) -> Result<Request<Cow<'_, str>>, Refusal> {
    let arg =
        after_keyword(rest, b"TO").ok_or_else(|| Refusal::Reply(reply::syntax(RCPT_SYNTAX)))?;
    let (address, params) = path_arg(arg).map_err(|e| {
        Refusal::Reply(match e {
            PathError::Syntax => reply::syntax(RCPT_SYNTAX),
            PathError::NotUtf8 => reply::recipient_not_utf8(),
            PathError::BadAddress => reply::bad_recipient(),
        })
    })?;
    let mut iter = params.iter();
    let mut parser = Rfc5321Parser::new(&mut iter);
    parser.stop_char = b' ';
    let parsed = parser
        .rcpt_to_parameters(Cow::Borrowed(""))
        .map_err(Refusal::Parse)?;
    Ok(Request::Rcpt {
        to: RcptTo {
            address,
            orcpt: None,
            rrvs: parsed.rrvs,
            flags: parsed.flags,
        },
    })
}

/// Takes `SIZE=` out of the parameters (RFC 1870): its value (saturating at `u64::MAX`, so
/// any number over the limit is over it), and the other parameters for smtp-proto. A value
/// that is not a number is refused.
fn take_size(params: &[u8]) -> Result<(u64, Vec<u8>), Reply> {
    let mut size = 0u64;
    let mut others = Vec::with_capacity(params.len() + 1);
    for word in params.split(|b| b.is_ascii_whitespace()) {
        if word.is_empty() {
            continue;
        }
        match word.get(..5) {
            Some(key) if key.eq_ignore_ascii_case(b"SIZE=") => {
                let digits = &word[5..];
                if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                    return Err(reply::invalid_parameter("SIZE"));
                }
                size = digits.iter().fold(0u64, |n, d| {
                    n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                });
            }
            _ => {
                others.push(b' ');
                others.extend_from_slice(word);
            }
        }
    }
    others.extend_from_slice(b"\r\n");
    Ok((size, others))
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp_proto::{MAIL_BODY_8BITMIME, MAIL_SMTPUTF8};

    /// The address, size and flags; or the code refused with (0: left to smtp-proto's
    /// error replies).
    fn mail_from(line: &str) -> Result<(String, usize, u64), u16> {
        match parse(line.as_bytes()).expect("a MAIL line") {
            Ok(Request::Mail { from }) => Ok((from.address.into_owned(), from.size, from.flags)),
            Ok(other) => panic!("{other:?}"),
            Err(Refusal::Reply(r)) => Err(r.code),
            Err(Refusal::Parse(_)) => Err(0),
        }
    }

    fn refusal(line: &[u8]) -> Reply {
        match parse(line) {
            Some(Err(Refusal::Reply(r))) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_commands_are_left_to_smtp_proto() {
        for line in ["EHLO x\r\n", "DATA\r\n", "MAILX\r\n", "RSET\r\n", "MAI"] {
            assert!(parse(line.as_bytes()).is_none(), "{line}");
        }
    }

    #[test]
    fn quoted_local_part_survives() {
        assert_eq!(
            mail_from("MAIL FROM:<\"a\\\"b\"@x>\r\n"),
            Ok(("\"a\\\"b\"@x".into(), 0, 0))
        );
        let Some(Ok(Request::Rcpt { to })) = parse(b"rcpt to: <\"john smith\"@y.example>\r\n")
        else {
            panic!("RCPT parses")
        };
        assert_eq!(to.address, "\"john smith\"@y.example");
    }

    #[test]
    fn parameters_still_reach_the_flags() {
        let (addr, size, flags) =
            mail_from("MAIL FROM:<jörg@bücher.de> size=1000 BODY=8BITMIME SMTPUTF8\r\n").unwrap();
        assert_eq!((addr.as_str(), size), ("jörg@bücher.de", 1000));
        assert_eq!(flags, MAIL_BODY_8BITMIME | MAIL_SMTPUTF8);
        assert_eq!(mail_from("MAIL FROM:<a@x> BODY=BOGUS\r\n"), Err(0));
        assert_eq!(mail_from("MAIL FROM:<a@x> FOO=1\r\n"), Err(0));
        assert!(matches!(
            parse(b"RCPT TO:<a@x> FOO=1\r\n"),
            Some(Err(Refusal::Parse(
                smtp_proto::Error::UnsupportedParameter { .. }
            )))
        ));
    }

    #[test]
    fn any_size_is_read_whole() {
        assert_eq!(mail_from("MAIL FROM:<a@x> SIZE=5\r\n").unwrap().1, 5);
        for huge in [
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999",
        ] {
            let (_, size, _) = mail_from(&format!("MAIL FROM:<a@x> SIZE={huge}\r\n")).unwrap();
            assert_eq!(size, usize::MAX, "{huge}");
        }
        for bad in ["", "12k", "-1", "1e9", "0x10"] {
            assert_eq!(
                mail_from(&format!("MAIL FROM:<a@x> SIZE={bad}\r\n")),
                Err(501),
                "{bad}"
            );
        }
    }

    /// The address and parameters read from a RCPT line.
    fn rcpt_to(line: &[u8]) -> Result<(String, u64), u16> {
        match parse(line).expect("a RCPT line") {
            Ok(Request::Rcpt { to }) => Ok((to.address.into_owned(), to.flags)),
            Ok(other) => panic!("{other:?}"),
            Err(Refusal::Reply(r)) => Err(r.code),
            Err(Refusal::Parse(_)) => Err(0),
        }
    }

    #[test]
    fn legacy_client_forms_are_accepted() {
        let a = |addr: &str| Ok((addr.to_string(), 0, 0));
        // Any case, a space after the colon (or before it), a bare LF line end.
        for line in [
            "mail from:<a@x.example>\r\n",
            "Mail From: <a@x.example>\r\n",
            "MAIL FROM : <a@x.example>\r\n",
            "MAIL FROM:<a@x.example>\n",
            "mail from: <a@x.example>\n",
        ] {
            assert_eq!(mail_from(line), a("a@x.example"), "{line:?}");
        }
        // No angle brackets: the address up to the first space, parameters after it.
        assert_eq!(mail_from("MAIL FROM:a@x.example\r\n"), a("a@x.example"));
        assert_eq!(mail_from("MAIL FROM: a@x.example\n"), a("a@x.example"));
        assert_eq!(mail_from("mail from:a@x.example\n"), a("a@x.example"));
        assert_eq!(
            mail_from("MAIL FROM:a@x.example SIZE=42 BODY=8BITMIME\r\n"),
            Ok(("a@x.example".into(), 42, MAIL_BODY_8BITMIME))
        );
        assert_eq!(
            mail_from("MAIL FROM:\"john smith\"@x.example SIZE=7\r\n"),
            Ok(("\"john smith\"@x.example".into(), 7, 0))
        );
        assert_eq!(mail_from("MAIL FROM:postmaster\r\n"), a("postmaster"));
        for line in [
            &b"RCPT TO:b@y.example\r\n"[..],
            b"rcpt to: b@y.example\n",
            b"RCPT TO:<b@y.example>\n",
            b"rcpt to : <b@y.example>\r\n",
        ] {
            assert_eq!(
                rcpt_to(line),
                Ok(("b@y.example".into(), 0)),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        // The bare form is read as strictly as the bracketed one.
        assert_eq!(rcpt_to(b"RCPT TO:b@y.example FOO=1\r\n"), Err(0));
        assert_eq!(rcpt_to(b"RCPT TO:b\xf6@y.example\r\n"), Err(501));
        assert_eq!(rcpt_to(b"RCPT TO:b@y.example SIZE=1\r\n"), Err(0));
    }

    #[test]
    fn bare_addresses_that_are_not_addresses_are_refused() {
        // Nothing, a null path without brackets, a mangled bracket, no domain, bad characters.
        for line in [
            "MAIL FROM:\r\n",
            "MAIL FROM: \n",
            "MAIL FROM:@\r\n",
            "MAIL FROM:a@x.example>\r\n",
            "MAIL FROM:Name <a@x.example>\r\n",
            "MAIL FROM:a\r\n",
            "MAIL FROM:a,b@x.example\r\n",
            "MAIL FROM:a@x.example SIZE=ten\r\n",
        ] {
            assert_eq!(mail_from(line), Err(501), "{line:?}");
        }
        let r = refusal(b"MAIL FROM:\r\n");
        assert!(r.to_string().contains("MAIL FROM:<reverse-path>"), "{r}");
        let r = refusal(b"RCPT TO:x\r\n");
        assert!(r.to_string().contains("Bad recipient address"), "{r}");
        let r = refusal(b"RCPT TO:\"open@x.example\r\n");
        assert!(r.to_string().contains("RCPT TO:<forward-path>"), "{r}");
    }

    #[test]
    fn refusals_name_the_problem() {
        assert_eq!(mail_from("MAIL TO:<a@x>\r\n"), Err(501));
        assert_eq!(mail_from("MAIL FROM:<a>\r\n"), Err(501));
        let r = refusal(b"MAIL FROM:<j\xf6rg@x>\r\n");
        assert!(r.to_string().contains("UTF-8"), "{r}");
        let r = refusal(b"RCPT TO:<j\xf6rg@x>\r\n");
        assert!(r.to_string().contains("UTF-8"), "{r}");
    }
}
