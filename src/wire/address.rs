//! What we accept in names and addresses from clients, before they go into replies, logs, the
//! `Received:` header and upstream commands.

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

/// Whether a mailbox address may go into an upstream `MAIL FROM`/`RCPT TO`: at most 512
/// bytes, and no spaces, angle brackets or control characters that could end or add a
/// command. (The syntax itself is the client's business and Exchange's to judge.)
pub fn is_safe_address(address: &str) -> bool {
    address.len() <= 512
        && !address
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '<' || c == '>')
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
        for bad in ["a@b>\r\nRCPT TO:<c@d", "a b@c", "<a@b>", "a@b\t"] {
            assert!(!is_safe_address(bad), "{bad:?}");
        }
        assert!(!is_safe_address(&"a".repeat(513)));
    }
}
