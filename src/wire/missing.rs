//! Adding `Date:` and `Message-ID:` to a message that has none (issue 13). Pure: a header
//! block in, a new one out, like [`super::rewrite`].
//!
//! Exchange's message trace finds a message by its `Message-ID`, and RFC 5322 §3.6 requires
//! `Date:` (and asks for `Message-ID:`); devices and scripts often send neither. The fields
//! added are fixed for a message ([`Additions::new`]: our id, our host name, the time we
//! accepted it), so every attempt at it, and every batch of its recipients, sends the same.
//!
//! Detection looks only at the header block (up to the first blank line, as
//! [`super::rewrite::header_block_len`] measures it): a field counts when its name, at the
//! start of a line, is `Date` or `Message-ID` in any case (`Resent-Message-ID` or
//! `X-Message-ID` do not), folded values included. A field that is there but empty counts as
//! missing, and is replaced rather than joined by a second one.

use super::rewrite::{eol, fields, value, Field};

/// Which of the two fields a header block lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Missing {
    pub date: bool,
    pub message_id: bool,
}

impl Missing {
    /// What `block` (a header block, blank line included or not) lacks.
    pub fn of(block: &[u8]) -> Missing {
        let all = fields(block);
        Self::of_fields(&all[..header_end(&all)])
    }

    fn of_fields(header: &[Field<'_>]) -> Missing {
        Missing {
            date: !has(header, b"date"),
            message_id: !has(header, b"message-id"),
        }
    }

    /// Whether anything is missing.
    pub fn any(self) -> bool {
        self.date || self.message_id
    }
}

/// How many of `all` come before the blank line that ends the header block (all of them when
/// there is none): what follows it is body, even when it looks like a field.
fn header_end(all: &[Field<'_>]) -> usize {
    all.iter()
        .position(|f| f.name.is_empty() && f.raw.iter().all(|b| matches!(b, b'\r' | b'\n')))
        .unwrap_or(all.len())
}

/// A field named `name` (lower case) with a value.
fn has(all: &[Field<'_>], name: &[u8]) -> bool {
    all.iter()
        .any(|f| f.name.eq_ignore_ascii_case(name) && !value(f).is_empty())
}

/// The two fields a message gets when it lacks them, whole lines without their line end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Additions {
    /// `Date: Mon, 07 Dec 2026 17:39:01 +0000`
    pub date: String,
    /// `Message-ID: <id@host>`
    pub message_id: String,
}

impl Additions {
    /// The fields for the message we know as `id`, accepted by the relay named `hostname` at
    /// `received_at` (unix seconds): the same for every attempt at it.
    pub fn new(id: &str, hostname: &str, received_at: u64) -> Additions {
        Additions {
            date: format!("Date: {}", rfc5322_date(received_at)),
            message_id: format!("Message-ID: {}", msg_id(id, hostname)),
        }
    }

    /// The `<id@host>` of [`Self::message_id`].
    pub fn msg_id(&self) -> &str {
        self.message_id.trim_start_matches("Message-ID: ")
    }
}

/// `<id@host>`, a valid RFC 5322 §3.6.4 `msg-id`: both sides as `dot-atom-text`, any
/// character that is not `atext` written as `-`, empty atoms dropped. (Our ids are hex and
/// `-` already; a host name is checked to be printable ASCII, which is more than `atext`.)
pub fn msg_id(id: &str, hostname: &str) -> String {
    format!(
        "<{}@{}>",
        dot_atom(id, "relay"),
        dot_atom(hostname, "localhost")
    )
}

fn dot_atom(text: &str, fallback: &str) -> String {
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    let atoms: Vec<String> = text
        .split('.')
        .filter(|a| !a.is_empty())
        .map(|a| a.chars().map(|c| if atext(c) { c } else { '-' }).collect())
        .collect();
    if atoms.is_empty() {
        fallback.to_string()
    } else {
        atoms.join(".")
    }
}

/// `block` with the fields of `add` it lacks, or `None` when it lacks neither. An empty
/// `Date:` or `Message-ID:` field is dropped when its replacement goes in. Line ends follow
/// the block's own; a block without a blank line (a message that is all headers, or has no
/// header block at all) gets none.
///
/// Where they go: at the top, right after the leading trace fields (our `Received:`, any
/// `Return-Path:` or `Received:` before it), not at the end of the block. A message whose
/// block holds a line that is not a header field at all (a device that sends bare text, no
/// headers) has no clear end of its header section: a reader may take that line as the start
/// of the body, and fields appended after it would be read as body text. At the top they are
/// read as header fields whatever follows, and the trace fields stay first, where RFC 5321
/// §4.4 keeps them. The rest of the message is left exactly as the client wrote it; it is not
/// ours to repair.
pub fn add_missing(block: &[u8], add: &Additions) -> Option<Vec<u8>> {
    let all = fields(block);
    let end = header_end(&all);
    let missing = Missing::of_fields(&all[..end]);
    if !missing.any() {
        return None;
    }
    let eol = eol(block);
    let trace = all
        .iter()
        .take_while(|f| {
            f.name.eq_ignore_ascii_case(b"received") || f.name.eq_ignore_ascii_case(b"return-path")
        })
        .count();
    let replaced = |i: usize, f: &Field<'_>| {
        i < end
            && ((missing.date && f.name.eq_ignore_ascii_case(b"date"))
                || (missing.message_id && f.name.eq_ignore_ascii_case(b"message-id")))
    };
    let mut out = Vec::with_capacity(block.len() + 128);
    let insert = |out: &mut Vec<u8>| {
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.extend_from_slice(eol);
        }
        for (wanted, line) in [
            (missing.date, &add.date),
            (missing.message_id, &add.message_id),
        ] {
            if wanted {
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(eol);
            }
        }
    };
    for (i, field) in all.iter().enumerate() {
        if i == trace {
            insert(&mut out);
        }
        if !replaced(i, field) {
            out.extend_from_slice(field.raw);
        }
    }
    if trace == all.len() {
        insert(&mut out);
    }
    Some(out)
}

/// An RFC 5322 §3.3 date-time in UTC: `Mon, 07 Dec 2026 17:39:01 +0000`. `unix` is seconds
/// since 1970 (later than 9999 is clamped to the last second of 9999).
pub fn rfc5322_date(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const LAST: u64 = 253_402_300_799; // 9999-12-31 23:59:59
    let unix = unix.min(LAST);
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} +0000",
        DAYS[((days + 4) % 7) as usize], // 1970-01-01 was a Thursday
        MONTHS[(month - 1) as usize],
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
    )
}

/// (year, month 1-12, day 1-31) of a day counted from 1970-01-01, in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let doe = z - era * 146_097; // day of the 400-year era
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the year starting in March
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn adds() -> Additions {
        Additions::new("0190f-00002a-deadbeef", "relay.contoso.com", 1_796_665_141)
    }

    fn added(block: &str) -> Option<String> {
        add_missing(block.as_bytes(), &adds()).map(|b| String::from_utf8(b).unwrap())
    }

    const DATE: &str = "Date: Mon, 07 Dec 2026 17:39:01 +0000";
    const MID: &str = "Message-ID: <0190f-00002a-deadbeef@relay.contoso.com>";

    #[test]
    fn dates_in_rfc5322_form() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_796_665_141),
            "Mon, 07 Dec 2026 17:39:01 +0000"
        );
        assert_eq!(
            rfc5322_date(1_709_251_199),
            "Thu, 29 Feb 2024 23:59:59 +0000"
        );
        assert_eq!(rfc5322_date(951_868_800), "Wed, 01 Mar 2000 00:00:00 +0000");
        assert_eq!(rfc5322_date(u64::MAX), "Fri, 31 Dec 9999 23:59:59 +0000");
    }

    #[test]
    fn dates_agree_with_httpdate_across_centuries() {
        // httpdate writes the same fields with `GMT` for the zone: an independent oracle.
        let mut t: u64 = 0;
        for _ in 0..20_000 {
            let http = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(t));
            assert_eq!(rfc5322_date(t), http.replace(" GMT", " +0000"), "at {t}");
            t += 1_234_567 + t % 86_399; // every weekday, month, leap year and time of day
        }
        // Past 2100 (not a leap year) and 2400 (one).
        assert!(t > 13_574_649_600, "the walk covers centuries: {t}");
    }

    #[test]
    fn msg_ids_are_valid_dot_atoms() {
        assert_eq!(
            msg_id("abc-1", "relay.contoso.com"),
            "<abc-1@relay.contoso.com>"
        );
        assert_eq!(msg_id("a b", "host:25"), "<a-b@host-25>");
        assert_eq!(msg_id("x", ".relay..example."), "<x@relay.example>");
        assert_eq!(msg_id("", "..."), "<relay@localhost>");
        assert_eq!(msg_id("id", "[10.0.0.1]"), "<id@-10.0.0.1->");
        assert_eq!(adds().msg_id(), "<0190f-00002a-deadbeef@relay.contoso.com>");
    }

    #[test]
    fn both_are_added_after_the_trace_fields() {
        let got = added("Received: from x\r\n by y\r\nSubject: s\r\nTo: a@b\r\n\r\n").unwrap();
        assert_eq!(
            got,
            format!(
                "Received: from x\r\n by y\r\n{DATE}\r\n{MID}\r\nSubject: s\r\nTo: a@b\r\n\r\n"
            )
        );
        // Several trace fields stay together on top.
        let got = added("Return-Path: <a@b>\r\nReceived: one\r\nreceived: two\r\nX: y\r\n\r\n");
        assert_eq!(
            got.unwrap(),
            format!("Return-Path: <a@b>\r\nReceived: one\r\nreceived: two\r\n{DATE}\r\n{MID}\r\nX: y\r\n\r\n")
        );
        // No trace field: at the very top.
        assert_eq!(
            added("Subject: s\r\n\r\n").unwrap(),
            format!("{DATE}\r\n{MID}\r\nSubject: s\r\n\r\n")
        );
    }

    #[test]
    fn only_what_is_missing_and_nothing_when_both_are_there() {
        let both =
            "Received: r\r\nmessage-id: <a@b>\r\nDATE: Tue, 1 Dec 2026 10:00:00 +0100\r\n\r\n";
        assert_eq!(added(both), None);
        assert_eq!(
            added("Received: r\r\nMessage-ID:\r\n <folded@x>\r\n\r\n").unwrap(),
            format!("Received: r\r\n{DATE}\r\nMessage-ID:\r\n <folded@x>\r\n\r\n")
        );
        assert_eq!(
            added("Date: Tue, 1 Dec 2026 10:00:00 +0100\r\n\r\n").unwrap(),
            format!("{MID}\r\nDate: Tue, 1 Dec 2026 10:00:00 +0100\r\n\r\n")
        );
        // `Date :` (obsolete syntax) is a Date too.
        assert_eq!(
            added("Date : Tue, 1 Dec 2026 10:00:00 +0100\r\n\r\n").unwrap(),
            format!("{MID}\r\nDate : Tue, 1 Dec 2026 10:00:00 +0100\r\n\r\n")
        );
    }

    #[test]
    fn look_alikes_and_the_body_do_not_count() {
        let block = "Resent-Message-ID: <r@x>\r\nX-Message-ID: <y@x>\r\nResent-Date: d\r\nX-Date: d\r\n\r\n";
        let got = added(block).unwrap();
        assert_eq!(got, format!("{DATE}\r\n{MID}\r\n{block}"));
        // The block is what header_block_len measured: a Message-ID in the body is not in it.
        let msg = b"Subject: s\r\n\r\nMessage-ID: <in@body>\r\nDate: x\r\n";
        let len = super::super::rewrite::header_block_len(msg, true).unwrap();
        assert_eq!(
            Missing::of(&msg[..len]),
            Missing {
                date: true,
                message_id: true
            }
        );
        assert_eq!(
            Missing::of(msg),
            Missing {
                date: true,
                message_id: true
            }
        );
        assert_eq!(
            added("Subject: s\r\n\r\nMessage-ID:\r\n").unwrap(),
            format!("{DATE}\r\n{MID}\r\nSubject: s\r\n\r\nMessage-ID:\r\n"),
            "an empty look-alike in the body is body text, not dropped"
        );
        assert_eq!(
            Missing::of(b"Subject: s\r\nMessage-ID: <in@head>\r\nDate: x\r\n\r\n"),
            Missing::default(),
            "the same lines before the blank line count"
        );
    }

    #[test]
    fn an_empty_field_is_replaced_not_joined() {
        let got = added("Message-ID:   \r\nSubject: s\r\nDate:\r\n \r\n\r\n").unwrap();
        assert_eq!(got, format!("{DATE}\r\n{MID}\r\nSubject: s\r\n\r\n"));
        assert_eq!(got.matches("Message-ID:").count(), 1);
        assert_eq!(got.matches("Date:").count(), 1);
    }

    #[test]
    fn messages_without_a_separator_or_without_headers() {
        // All headers, no blank line, no body: no blank line is made up.
        assert_eq!(
            added("Received: r\r\nSubject: s\r\n").unwrap(),
            format!("Received: r\r\n{DATE}\r\n{MID}\r\nSubject: s\r\n")
        );
        // Only our Received:, then bare text: the fields go between, the text stays as it is.
        assert_eq!(
            added("Received: r\r\nhello there\r\nsecond line\r\n").unwrap(),
            format!("Received: r\r\n{DATE}\r\n{MID}\r\nhello there\r\nsecond line\r\n")
        );
        // Bare text and no Received: at the very top; a Message-ID after a non-field line
        // is still in the header block and counts.
        assert_eq!(
            added("hello\r\nMessage-ID: <m@x>\r\n\r\nbody").unwrap(),
            format!("{DATE}\r\nhello\r\nMessage-ID: <m@x>\r\n\r\nbody")
        );
        // A message that starts with the blank line (body only), and an empty one.
        assert_eq!(added("\r\n").unwrap(), format!("{DATE}\r\n{MID}\r\n\r\n"));
        assert_eq!(added("").unwrap(), format!("{DATE}\r\n{MID}\r\n"));
        // A last line without its line end does not swallow ours.
        assert_eq!(
            added("Received: r").unwrap(),
            format!("Received: r\r\n{DATE}\r\n{MID}\r\n")
        );
    }

    #[test]
    fn bare_lf_blocks_keep_bare_lf() {
        assert_eq!(
            added("Received: r\nSubject: s\n\n").unwrap(),
            format!("Received: r\n{DATE}\n{MID}\nSubject: s\n\n")
        );
    }

    #[test]
    fn the_same_message_always_gets_the_same_fields() {
        let a = Additions::new("id1", "h", 1_796_665_141);
        assert_eq!(a, Additions::new("id1", "h", 1_796_665_141));
        assert_ne!(
            a.message_id,
            Additions::new("id2", "h", 1_796_665_141).message_id
        );
        assert_ne!(a.date, Additions::new("id1", "h", 1_796_665_142).date);
    }
}
