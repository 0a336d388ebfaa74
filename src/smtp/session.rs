//! The inbound ESMTP state machine (RFC 5321): a parsed request goes in, an [`Action`] comes
//! out. No I/O and no tokio here; the listener drives it and streams DATA itself.
//!
//! Lenient where legacy apps need it (MAIL without a preceding EHLO is accepted, as most MTAs
//! do) and strict where safety needs it (limits on recipients and size, unadvertised
//! extensions refused). STARTTLS and AUTH are offered only when the listener has them
//! ([`Security`]): AUTH only inside TLS unless plain AUTH is allowed for loopback clients;
//! `require_tls` and `require_auth` refuse `MAIL` before them with `530 5.7.0`; an
//! authenticated user's sender list is checked at `MAIL` (`550 5.7.1`). The driver runs the
//! handshake and the SASL exchange ([`Action::StartTls`], [`Action::Auth`]) and reports back
//! ([`Session::tls_started`], [`Session::authenticated`]).

use std::borrow::Cow;
use std::net::SocketAddr;

use smtp_proto::{
    Request, MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_REQUIRETLS, MAIL_SMTPUTF8,
};

use super::mail_rcpt::Refusal;
use super::reply::{self, Reply};
use crate::delivery::route::SenderPattern;
use crate::wire::address::{clean_host_name, is_safe_address};
use crate::wire::data::Terminator;

/// Limits and names a session needs; shared by all sessions of a listener.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub security: Security,
}

/// What the listener offers and demands: STARTTLS, AUTH and when they are required.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// A certificate is configured (or self-signed): STARTTLS is offered before TLS.
    pub starttls: bool,
    /// `MAIL` before TLS gets `530 5.7.0`.
    pub require_tls: bool,
    /// AUTH PLAIN and LOGIN are offered (a users file or accept-any mode).
    pub auth: bool,
    /// AUTH is offered without TLS to loopback clients.
    pub auth_without_tls_on_loopback: bool,
    /// `MAIL` before AUTH gets `530 5.7.0`.
    pub require_auth: bool,
}

/// A client that authenticated: its name, and the senders it may use (empty: any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub name: String,
    pub senders: Vec<SenderPattern>,
}

/// Which SASL mechanism a client chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMechanism {
    Plain,
    Login,
}

/// What the driver must do after a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send the reply and read the next command.
    Reply(Reply),
    /// Send the reply, then read the message body for this transaction (which ends here:
    /// whatever becomes of the body, the next `MAIL` starts a new one).
    StartData(Reply, Transaction),
    /// Send the reply and close the connection.
    Close(Reply),
    /// Send the reply (`220`), discard any input already received, and do the TLS handshake.
    StartTls(Reply),
    /// Run a SASL exchange; `initial` is the initial response, if the client sent one.
    Auth {
        mechanism: AuthMechanism,
        initial: Option<InitialResponse>,
    },
}

/// A SASL initial response as the client sent it (base64; for PLAIN it holds the password):
/// its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct InitialResponse(String);

impl InitialResponse {
    pub fn new(text: &str) -> Self {
        InitialResponse(text.to_string())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for InitialResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InitialResponse([redacted])")
    }
}

/// The envelope collected for one mail transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub declared_size: u64,
    pub body_8bit: bool,
    pub smtputf8: bool,
}

/// One client connection's protocol state.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    peer: SocketAddr,
    helo: Option<String>,
    esmtp: bool,
    transaction: Option<Transaction>,
    tls: bool,
    user: Option<Authenticated>,
    /// What ends the next DATA (set by the driver, which sees how lines end).
    data_terminator: Terminator,
}

impl Session {
    pub fn new(config: SessionConfig, peer: SocketAddr) -> Self {
        Session {
            config,
            peer,
            helo: None,
            esmtp: false,
            transaction: None,
            tls: false,
            user: None,
            data_terminator: Terminator::CrlfOnly,
        }
    }

    /// What ends the data of the next message: `CRLF . CRLF`, or for a client that has sent
    /// only bare-LF lines, `LF . LF` too.
    pub fn set_data_terminator(&mut self, terminator: Terminator) {
        self.data_terminator = terminator;
    }

    pub fn data_terminator(&self) -> Terminator {
        self.data_terminator
    }

    /// The TLS handshake succeeded: the session starts over (RFC 3207 §4.2), now in TLS.
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.helo = None;
        self.esmtp = false;
        self.transaction = None;
        self.user = None;
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The SASL exchange succeeded for this user.
    pub fn authenticated(&mut self, user: Authenticated) {
        self.user = Some(user);
    }

    /// The authenticated user, if any.
    pub fn user(&self) -> Option<&Authenticated> {
        self.user.as_ref()
    }

    /// Whether AUTH may be used now: offered, and inside TLS (or plain from loopback when
    /// that is allowed).
    pub fn auth_available(&self) -> bool {
        let sec = &self.config.security;
        sec.auth
            && (self.tls
                || (sec.auth_without_tls_on_loopback
                    && self.peer.ip().to_canonical().is_loopback()))
    }

    /// The EHLO keywords the listener adds in this state.
    fn extensions(&self) -> Vec<&'static str> {
        let mut extra = Vec::new();
        if self.config.security.starttls && !self.tls {
            extra.push("STARTTLS");
        }
        if self.auth_available() && self.user.is_none() {
            extra.push("AUTH PLAIN LOGIN");
        }
        extra
    }

    pub fn greeting(&self) -> Reply {
        reply::greeting(&self.config.hostname)
    }

    /// The name the client gave in HELO/EHLO (sanitised), or its IP address.
    pub fn helo_name(&self) -> String {
        self.helo
            .clone()
            .unwrap_or_else(|| format!("[{}]", self.peer.ip()))
    }

    pub fn is_esmtp(&self) -> bool {
        self.esmtp
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Handles one command line as received (CRLF included). `MAIL` and `RCPT` arguments are
    /// read from the raw bytes ([`super::mail_rcpt`]), so addresses stay exactly as written;
    /// every other command goes through smtp-proto's parser. (The connection calls
    /// [`parse_line`], its slot budget, then [`command`](Self::command); tests call this.)
    #[cfg(test)]
    pub fn line(&mut self, line: &[u8]) -> Action {
        match parse_line(line) {
            Ok(request) => self.command(request),
            Err(reply) => Action::Reply(reply),
        }
    }

    /// Handles one parsed command line (or the parser's complaint about it).
    pub fn command(&mut self, request: Result<Request<Cow<'_, str>>, smtp_proto::Error>) -> Action {
        let request = match request {
            Ok(r) => r,
            Err(e) => return Action::Reply(parse_error_reply(&e)),
        };
        match request {
            Request::Ehlo { host } => {
                self.helo = Some(clean_host_name(&host));
                self.esmtp = true;
                self.transaction = None;
                Action::Reply(reply::ehlo(
                    &self.config.hostname,
                    &self.helo_name(),
                    self.config.max_message_size,
                    &self.extensions(),
                ))
            }
            Request::Helo { host } => {
                self.helo = Some(clean_host_name(&host));
                self.esmtp = false;
                self.transaction = None;
                Action::Reply(reply::helo(&self.config.hostname, &self.helo_name()))
            }
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { to } => self.rcpt(to.address.as_ref()),
            Request::Data => match self.transaction.take() {
                None => Action::Reply(reply::need_mail()),
                Some(t) if t.rcpt_to.is_empty() => {
                    self.transaction = Some(t);
                    Action::Reply(reply::need_rcpt())
                }
                Some(t) => Action::StartData(reply::start_data(), t),
            },
            Request::Rset => {
                self.transaction = None;
                Action::Reply(reply::reset())
            }
            Request::Noop { .. } => Action::Reply(reply::ok()),
            Request::Vrfy { .. } => Action::Reply(reply::vrfy()),
            Request::Help { .. } => Action::Reply(reply::help()),
            Request::Quit => Action::Close(reply::quit(&self.config.hostname)),
            Request::StartTls => self.starttls(),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, &initial_response),
            other => Action::Reply(reply::not_implemented(other.name())),
        }
    }

    fn starttls(&mut self) -> Action {
        if !self.config.security.starttls {
            return Action::Reply(reply::starttls_unavailable());
        }
        if self.tls {
            return Action::Reply(reply::tls_already_active());
        }
        Action::StartTls(reply::ready_for_tls())
    }

    fn auth(&mut self, mechanism: u64, initial: &str) -> Action {
        if !self.config.security.auth {
            return Action::Reply(reply::auth_not_needed());
        }
        if !self.auth_available() {
            return Action::Reply(reply::auth_needs_tls());
        }
        if self.user.is_some() {
            return Action::Reply(reply::already_authenticated());
        }
        if self.transaction.is_some() {
            return Action::Reply(reply::auth_in_transaction());
        }
        let mechanism = match mechanism {
            smtp_proto::AUTH_PLAIN => AuthMechanism::Plain,
            smtp_proto::AUTH_LOGIN => AuthMechanism::Login,
            _ => return Action::Reply(reply::auth_mechanism_unknown()),
        };
        let initial = (!initial.is_empty()).then(|| InitialResponse::new(initial));
        Action::Auth { mechanism, initial }
    }

    fn mail(&mut self, from: smtp_proto::MailFrom<Cow<'_, str>>) -> Action {
        if self.transaction.is_some() {
            return Action::Reply(reply::nested_mail());
        }
        let sec = &self.config.security;
        if sec.require_tls && !self.tls {
            return Action::Reply(reply::tls_required());
        }
        if sec.require_auth && self.user.is_none() {
            return Action::Reply(reply::auth_required());
        }
        if from.flags & MAIL_BODY_BINARYMIME != 0 {
            return Action::Reply(reply::unsupported_parameter("BODY=BINARYMIME"));
        }
        if from.flags & MAIL_REQUIRETLS != 0 {
            return Action::Reply(reply::unsupported_parameter("REQUIRETLS"));
        }
        if from.size as u64 > self.config.max_message_size {
            return Action::Reply(reply::message_too_big(self.config.max_message_size));
        }
        let address = from.address.as_ref();
        if !is_safe_address(address) {
            return Action::Reply(reply::bad_sender());
        }
        if !address.is_ascii() && from.flags & MAIL_SMTPUTF8 == 0 {
            return Action::Reply(reply::needs_smtputf8());
        }
        if let Some(user) = &self.user {
            if !user.senders.is_empty() && !SenderPattern::any_matches(&user.senders, address) {
                return Action::Reply(reply::sender_not_allowed_for_user(address, &user.name));
            }
        }
        self.transaction = Some(Transaction {
            mail_from: address.to_string(),
            rcpt_to: Vec::new(),
            declared_size: from.size as u64,
            body_8bit: from.flags & MAIL_BODY_8BITMIME != 0,
            smtputf8: from.flags & MAIL_SMTPUTF8 != 0,
        });
        Action::Reply(reply::sender_ok())
    }

    fn rcpt(&mut self, address: &str) -> Action {
        let max = self.config.max_recipients;
        let Some(t) = self.transaction.as_mut() else {
            return Action::Reply(reply::need_mail());
        };
        if address.is_empty() || !is_safe_address(address) {
            return Action::Reply(reply::bad_recipient());
        }
        if !address.is_ascii() && !t.smtputf8 {
            return Action::Reply(reply::needs_smtputf8());
        }
        if t.rcpt_to.len() >= max {
            return Action::Reply(reply::too_many_recipients(max));
        }
        t.rcpt_to.push(address.to_string());
        Action::Reply(reply::recipient_ok())
    }

    /// The transaction being collected (between `MAIL` and `DATA`), if any.
    pub fn transaction(&self) -> Option<&Transaction> {
        self.transaction.as_ref()
    }

    /// Ends the transaction just begun (its sender was refused after all): the next command
    /// needs a new `MAIL`.
    pub fn drop_transaction(&mut self) {
        self.transaction = None;
    }
}

/// Maps smtp-proto's parse errors to replies.
pub fn parse_error_reply(e: &smtp_proto::Error) -> Reply {
    use smtp_proto::Error as E;
    match e {
        E::UnknownCommand => reply::unknown_command(),
        E::InvalidSenderAddress => reply::bad_sender(),
        E::InvalidRecipientAddress => reply::bad_recipient(),
        E::SyntaxError { syntax } => reply::syntax(syntax),
        E::InvalidParameter { param } => reply::invalid_parameter(param),
        E::UnsupportedParameter { param } => reply::unsupported_parameter(param),
        E::ResponseTooLong => reply::line_too_long(),
        E::NeedsMoreData { .. } | E::InvalidResponse { .. } => reply::unknown_command(),
    }
}

/// One command line as the session reads it: `MAIL`/`RCPT` from the raw bytes (quoted local
/// parts kept, UTF-8 and `SIZE` checked), anything else through smtp-proto. `Err` is a refusal
/// worded already (a bad address or `SIZE`); `Ok(Err(..))` is the parser's own complaint.
pub fn parse_line(line: &[u8]) -> Result<Result<Request<Cow<'_, str>>, smtp_proto::Error>, Reply> {
    match super::mail_rcpt::parse(line) {
        Some(Ok(request)) => Ok(Ok(request)),
        Some(Err(Refusal::Reply(reply))) => Err(reply),
        Some(Err(Refusal::Parse(e))) => Ok(Err(e)),
        None => Ok(Request::parse(&mut line.iter())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session::new(
            SessionConfig {
                hostname: "relay.test".into(),
                max_message_size: 1000,
                max_recipients: 2,
                security: Security::default(),
            },
            "127.0.0.1:40000".parse().unwrap(),
        )
    }

    /// Feeds command lines through the session as the connection does; returns reply codes.
    fn run(s: &mut Session, lines: &[&str]) -> Vec<(u16, Action)> {
        let mut out = Vec::new();
        for line in lines {
            let bytes = format!("{line}\r\n");
            let action = s.line(bytes.as_bytes());
            let code = match &action {
                Action::Reply(r)
                | Action::StartData(r, _)
                | Action::Close(r)
                | Action::StartTls(r) => r.code,
                Action::Auth { .. } => 334,
            };
            out.push((code, action));
        }
        out
    }

    fn codes(s: &mut Session, lines: &[&str]) -> Vec<u16> {
        run(s, lines).into_iter().map(|(c, _)| c).collect()
    }

    #[test]
    fn happy_path() {
        let mut s = session();
        let mut actions = run(
            &mut s,
            &[
                "EHLO app",
                "MAIL FROM:<a@x.org>",
                "RCPT TO:<b@y.org>",
                "DATA",
            ],
        );
        let codes: Vec<u16> = actions.iter().map(|(c, _)| *c).collect();
        assert_eq!(codes, vec![250, 250, 250, 354]);
        let Some((_, Action::StartData(_, t))) = actions.pop() else {
            panic!("DATA starts the body")
        };
        assert_eq!(t.mail_from, "a@x.org");
        assert_eq!(t.rcpt_to, vec!["b@y.org".to_string()]);
        assert!(s.transaction().is_none(), "DATA ends the transaction");
    }

    #[test]
    fn ehlo_advertises_what_we_support_and_nothing_else() {
        let mut s = session();
        let (_, action) = run(&mut s, &["EHLO app"]).remove(0);
        let Action::Reply(r) = action else { panic!() };
        let text = r.lines.join("\n");
        for ext in [
            "PIPELINING",
            "SIZE 1000",
            "ENHANCEDSTATUSCODES",
            "8BITMIME",
            "SMTPUTF8",
        ] {
            assert!(text.contains(ext), "{ext} missing");
        }
        for ext in ["AUTH", "STARTTLS", "CHUNKING"] {
            assert!(!text.contains(ext), "{ext} must not be offered");
        }
    }

    #[test]
    fn sequencing_errors() {
        let mut s = session();
        assert_eq!(
            codes(&mut s, &["RCPT TO:<b@y.org>", "DATA"]),
            vec![503, 503]
        );
        assert_eq!(
            codes(
                &mut s,
                &["MAIL FROM:<a@x.org>", "MAIL FROM:<a@x.org>", "DATA"]
            ),
            vec![250, 503, 503]
        );
        assert_eq!(codes(&mut s, &["RSET", "MAIL FROM:<>"]), vec![250, 250]);
    }

    #[test]
    fn limits() {
        let mut s = session();
        assert_eq!(
            codes(
                &mut s,
                &[
                    "MAIL FROM:<a@x.org> SIZE=1001",
                    "MAIL FROM:<a@x.org> SIZE=999"
                ]
            ),
            vec![552, 250]
        );
        assert_eq!(
            codes(&mut s, &["RCPT TO:<1@y>", "RCPT TO:<2@y>", "RCPT TO:<3@y>"]),
            vec![250, 250, 452]
        );
    }

    #[test]
    fn flags_and_refusals() {
        let mut s = session();
        assert_eq!(
            codes(&mut s, &["MAIL FROM:<a@x.org> BODY=8BITMIME SMTPUTF8"]),
            vec![250]
        );
        let t = s.transaction().unwrap();
        assert!(t.body_8bit && t.smtputf8);
        assert_eq!(codes(&mut s, &["RSET"]), vec![250]);
        assert_eq!(
            codes(
                &mut s,
                &[
                    "MAIL FROM:<a@x.org> BODY=BINARYMIME",
                    "AUTH PLAIN AGZvbwBiYXI=",
                    "STARTTLS",
                    "BDAT 10 LAST",
                    "VRFY x",
                    "NOOP",
                    "HELP",
                    "FOO"
                ]
            ),
            vec![555, 502, 502, 502, 252, 250, 214, 500]
        );
    }

    #[test]
    fn quit_closes() {
        let mut s = session();
        let (code, action) = run(&mut s, &["QUIT"]).remove(0);
        assert_eq!(code, 221);
        assert!(matches!(action, Action::Close(_)));
    }

    #[test]
    fn utf8_addresses_are_kept() {
        let mut s = session();
        assert_eq!(
            codes(
                &mut s,
                &[
                    "MAIL FROM:<jörg@bücher.de> SMTPUTF8",
                    "RCPT TO:<用户@例子.广告>"
                ]
            ),
            vec![250, 250]
        );
        let t = s.transaction().unwrap();
        assert_eq!(t.mail_from, "jörg@bücher.de");
        assert_eq!(t.rcpt_to[0], "用户@例子.广告");
    }

    #[test]
    fn non_ascii_needs_smtputf8() {
        let mut s = session();
        assert_eq!(
            codes(
                &mut s,
                &[
                    "MAIL FROM:<jörg@bücher.de>",
                    "MAIL FROM:<a@x.org>",
                    "RCPT TO:<用户@例子.广告>",
                    "RCPT TO:<b@y.org>"
                ]
            ),
            vec![553, 250, 553, 250]
        );
        let (_, action) = run(&mut s, &["RCPT TO:<ü@y.org>"]).remove(0);
        let Action::Reply(r) = action else { panic!() };
        assert_eq!(
            (r.code, r.to_string().contains("5.6.7")),
            (553, true),
            "{r}"
        );
    }

    #[test]
    fn quoted_local_parts_and_sizes_from_the_raw_line() {
        let mut s = session();
        assert_eq!(
            codes(
                &mut s,
                &[
                    "MAIL FROM:<a@x.org> SIZE=99999999999999999999999",
                    "MAIL FROM:<a@x.org> SIZE=18446744073709551615",
                    "MAIL FROM:<a@x.org> SIZE=ten",
                    "MAIL FROM:<\"a\\\"b\"@x.org> SIZE=999",
                    "RCPT TO:<\"john smith\"@y.org>",
                ]
            ),
            vec![552, 552, 501, 250, 250]
        );
        let t = s.transaction().unwrap();
        assert_eq!(t.mail_from, "\"a\\\"b\"@x.org");
        assert_eq!(t.rcpt_to, vec!["\"john smith\"@y.org".to_string()]);
        assert_eq!(t.declared_size, 999);
        let mut s = session();
        let (_, action) = run(&mut s, &["MAIL FROM:<a@x.org> SIZE=1001"]).remove(0);
        let Action::Reply(r) = action else { panic!() };
        assert!(r.to_string().starts_with("552 5.3.4"), "{r}");
        let mut s = session();
        let bytes = b"MAIL FROM:<j\xf6rg@x.org>\r\n";
        let Action::Reply(r) = s.line(bytes) else {
            panic!()
        };
        assert_eq!(r.code, 501);
    }

    #[test]
    fn helo_name_is_sanitised() {
        let mut s = session();
        codes(&mut s, &["EHLO bad\u{7}name"]);
        assert_eq!(s.helo_name(), "badname");
    }
}

#[cfg(test)]
#[path = "session_security_tests.rs"]
mod security_tests;
