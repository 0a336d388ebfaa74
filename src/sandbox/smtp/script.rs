//! Faults scripted by a recipient's local part (any domain), in the manner of Stalwart's
//! test servers: `rcpt-perm`, `rcpt-temp`, `data-perm`, `data-temp`, `sendas-denied`,
//! `slow-<N>`, `drop-data`, `drop-after-dot` (see [`Script`]).
//!
//! Why by address: a test of the relay steers the far side with nothing but the message it
//! sends, so one sandbox serves every scenario at once and tests can run in parallel. Pure
//! functions over addresses and message bytes; the session driver applies the verdicts.
//! [`header_from`] finds the address the `sendas-denied` reply names, as Exchange names the
//! `From:` it refused.

/// A fault scripted by a recipient's local part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Script {
    /// RCPT: `550 5.1.10` recipient not found.
    RcptPerm,
    /// RCPT: `451 4.4.0` temporary server error.
    RcptTemp,
    /// End of DATA: `554 5.6.0`, not stored.
    DataPerm,
    /// End of DATA: `451 4.7.500`, not stored.
    DataTemp,
    /// End of DATA: `554 5.2.252 SendAsDenied`, not stored.
    SendAsDenied,
    /// End of DATA: wait this many seconds, then accept.
    Slow(u64),
    /// During DATA: close the connection once some body bytes arrived, without a reply.
    DropData,
    /// End of DATA: close right after the final dot, without a reply; nothing stored.
    DropAfterDot,
}

impl Script {
    /// The script named by `address`'s local part, if any (case-insensitive).
    pub(crate) fn of(address: &str) -> Option<Script> {
        let local = address
            .rsplit_once('@')
            .map_or(address, |(local, _)| local)
            .to_ascii_lowercase();
        Some(match local.as_str() {
            "rcpt-perm" => Script::RcptPerm,
            "rcpt-temp" => Script::RcptTemp,
            "data-perm" => Script::DataPerm,
            "data-temp" => Script::DataTemp,
            "sendas-denied" => Script::SendAsDenied,
            "drop-data" => Script::DropData,
            "drop-after-dot" => Script::DropAfterDot,
            other => {
                let secs = other.strip_prefix("slow-")?.parse::<u64>().ok()?;
                Script::Slow(secs.min(600))
            }
        })
    }

    fn at_end_of_data(self) -> bool {
        matches!(
            self,
            Script::DataPerm
                | Script::DataTemp
                | Script::SendAsDenied
                | Script::Slow(_)
                | Script::DropAfterDot
        )
    }
}

/// The end-of-DATA script of the first recipient that has one.
pub(crate) fn end_of_data_script(rcpts: &[String]) -> Option<Script> {
    rcpts
        .iter()
        .filter_map(|r| Script::of(r))
        .find(|s| s.at_end_of_data())
}

/// Whether a recipient scripts `drop-data`.
pub(super) fn drops_data(rcpts: &[String]) -> bool {
    rcpts
        .iter()
        .any(|r| Script::of(r) == Some(Script::DropData))
}

/// The address in the first `From:` header of a message head, if any.
pub(crate) fn header_from(head: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    let headers = text.split("\r\n\r\n").next().unwrap_or_default();
    let value = headers.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("from").then_some(value)
    })?;
    let address = match (value.rfind('<'), value.rfind('>')) {
        (Some(open), Some(close)) if open < close => &value[open + 1..close],
        _ => value.trim(),
    };
    (!address.is_empty()).then(|| address.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_by_local_part() {
        assert_eq!(Script::of("rcpt-perm@x.example"), Some(Script::RcptPerm));
        assert_eq!(Script::of("RCPT-TEMP@x.example"), Some(Script::RcptTemp));
        assert_eq!(Script::of("slow-3@any"), Some(Script::Slow(3)));
        assert_eq!(Script::of("slow-99999@any"), Some(Script::Slow(600)));
        assert_eq!(Script::of("slow-x@any"), None);
        assert_eq!(Script::of("someone@data-perm"), None);
        assert_eq!(Script::of("drop-after-dot"), Some(Script::DropAfterDot));
        let rcpts = vec![
            "a@x".to_string(),
            "drop-data@x".to_string(),
            "data-temp@x".to_string(),
            "data-perm@x".to_string(),
        ];
        assert_eq!(end_of_data_script(&rcpts), Some(Script::DataTemp));
        assert!(drops_data(&rcpts));
        assert_eq!(end_of_data_script(&rcpts[..2]), None);
    }

    #[test]
    fn from_header_extraction() {
        let head = b"Subject: x\r\nFROM: \"A, B\" <a@b.example>\r\n\r\nFrom: <c@d>\r\n";
        assert_eq!(header_from(head), Some("a@b.example".to_string()));
        assert_eq!(
            header_from(b"From: plain@x\r\n\r\n"),
            Some("plain@x".to_string())
        );
        assert_eq!(header_from(b"Subject: x\r\n\r\nFrom: <c@d>\r\n"), None);
    }
}
