//! The `Received:` trace header we prepend (RFC 5321 §4.4): pure, beside the session whose
//! facts it records.

use std::net::SocketAddr;
use std::time::SystemTime;

use super::session::{Session, Transaction};
use crate::envelope::MessageId;

/// RFC 5321 §4.4 trace header, folded over three lines.
pub fn received_header(
    session: &Session,
    t: &Transaction,
    id: &MessageId,
    hostname: &str,
    at: SystemTime,
) -> String {
    let protocol = match (session.is_esmtp(), t.smtputf8) {
        (_, true) => "UTF8SMTP",
        (true, false) => "ESMTP",
        (false, false) => "SMTP",
    };
    let date = httpdate::fmt_http_date(at).replace(" GMT", " +0000");
    let for_clause = match t.rcpt_to.as_slice() {
        [one] => format!("\r\n\tfor <{one}>"),
        _ => String::new(),
    };
    format!(
        "Received: from {} ({})\r\n\tby {hostname} (smtp-oauth-relay) with {protocol} id {id}{for_clause};\r\n\t{date}\r\n",
        session.helo_name(),
        format_ip(session.peer()),
    )
}

fn format_ip(peer: SocketAddr) -> String {
    match peer.ip().to_canonical() {
        std::net::IpAddr::V4(v4) => format!("[{v4}]"),
        std::net::IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::session::SessionConfig;
    use smtp_proto::Request;

    #[test]
    fn received_header_shape() {
        let mut s = Session::new(
            SessionConfig {
                hostname: "relay.test".into(),
                max_message_size: 100,
                max_recipients: 10,
            },
            "127.0.0.1:5000".parse().unwrap(),
        );
        s.command(Request::parse(&mut b"EHLO app.example\r\n".iter()));
        let t = Transaction {
            mail_from: "a@x".into(),
            rcpt_to: vec!["b@y".into()],
            ..Default::default()
        };
        let id = MessageId::generate();
        let h = received_header(&s, &t, &id, "relay.test", SystemTime::UNIX_EPOCH);
        assert_eq!(
            h,
            format!("Received: from app.example ([127.0.0.1])\r\n\tby relay.test (smtp-oauth-relay) with ESMTP id {id}\r\n\tfor <b@y>;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n")
        );
        assert!(h.lines().all(|l| l.len() < 998));
    }
}
