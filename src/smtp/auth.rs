//! Inbound AUTH (issue 13): who may log in ([`InboundAuth`]: the users file, or accept-any
//! mode for devices whose password cannot be managed), the SASL exchange as a pure state
//! machine ([`Dialog`]: PLAIN and LOGIN, RFC 4954), and the check itself ([`verify`]: argon2
//! off the async threads, the brute-force pause per client address).
//!
//! A password is held in a `SecretBox` from the line it arrives on to the hash check and is
//! never logged, worded into a reply, or shown by `Debug`; a user name is logged only made
//! safe for terminals.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;

use super::auth_limit::{AuthLimiter, Failure};
use super::reply::{self, Reply};
pub use super::sasl::Credentials;
use super::sasl::{self, SaslError};
use super::session::{AuthMechanism, Authenticated};
use super::users::Users;
use crate::sync::RwLock as _;
use crate::wire::header::terminal_safe;

/// Who may log in, and when they must (built by `config`).
#[derive(Clone, Default)]
pub struct InboundAuth {
    /// The users file (`listen.users_file`), read again on SIGHUP.
    pub users: Option<Arc<UsersFile>>,
    /// Accept any user name and password (`listen.auth_accept_any`): only with an allow list.
    pub accept_any: bool,
    /// `MAIL` before AUTH gets `530 5.7.0` (`listen.require_auth`).
    pub required: bool,
    /// AUTH offered without TLS to loopback clients (`listen.auth_without_tls_on_loopback`).
    pub without_tls_on_loopback: bool,
    /// Failures per client address before `421` and a pause.
    pub limiter: Option<Arc<AuthLimiter>>,
}

impl fmt::Debug for InboundAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundAuth")
            .field("users", &self.users.as_ref().map(|u| u.path.clone()))
            .field("accept_any", &self.accept_any)
            .field("required", &self.required)
            .field("without_tls_on_loopback", &self.without_tls_on_loopback)
            .finish()
    }
}

impl InboundAuth {
    /// Whether AUTH is offered at all.
    pub fn offered(&self) -> bool {
        self.users.is_some() || self.accept_any
    }

    /// How long `ip` must still wait after too many failures, if it must.
    pub fn paused(&self, ip: std::net::IpAddr) -> Option<Duration> {
        self.limiter.as_ref()?.check(ip, Instant::now()).err()
    }
}

/// The users file and the users read from it last.
pub struct UsersFile {
    path: PathBuf,
    current: RwLock<Arc<Users>>,
}

impl UsersFile {
    pub fn load(path: &Path) -> Result<UsersFile, String> {
        let users = Users::load(path)?;
        Ok(UsersFile {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(users)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn current(&self) -> Arc<Users> {
        self.current.read_now().clone()
    }

    /// Reads the file again (SIGHUP): the number of users now. A file that cannot be used
    /// keeps the users read before.
    pub fn reload(&self) -> Result<usize, String> {
        let users = Users::load(&self.path)?;
        let count = users.len();
        *self.current.write_now() = Arc::new(users);
        Ok(count)
    }
}

/// One step of the SASL exchange.
#[derive(Debug)]
pub enum Step {
    /// Send this `334` challenge and wait for the client's answer.
    Challenge(Reply),
    /// The exchange is complete: check these credentials.
    Verify(Credentials),
    /// The exchange ended without credentials (cancelled, malformed): send this.
    Failed(Reply),
}

/// A SASL exchange waiting for the client's next answer.
#[derive(Debug)]
pub struct Dialog {
    mechanism: AuthMechanism,
    /// LOGIN: the user name, once given.
    user: Option<String>,
}

impl Dialog {
    /// `AUTH <mechanism> [initial]`: the first step, and the dialog when it goes on.
    pub fn start(mechanism: AuthMechanism, initial: Option<&str>) -> (Option<Dialog>, Step) {
        match (mechanism, initial) {
            (AuthMechanism::Plain, Some(first)) => (None, plain(first)),
            (AuthMechanism::Plain, None) => (
                Some(Dialog {
                    mechanism,
                    user: None,
                }),
                Step::Challenge(reply::auth_challenge("")),
            ),
            (AuthMechanism::Login, Some(first)) => match login_user(first) {
                Ok(user) => (
                    Some(Dialog {
                        mechanism,
                        user: Some(user),
                    }),
                    Step::Challenge(reply::auth_challenge(sasl::LOGIN_PASSWORD_PROMPT)),
                ),
                Err(r) => (None, Step::Failed(r)),
            },
            (AuthMechanism::Login, None) => (
                Some(Dialog {
                    mechanism,
                    user: None,
                }),
                Step::Challenge(reply::auth_challenge(sasl::LOGIN_USERNAME_PROMPT)),
            ),
        }
    }

    /// The client's answer to the last challenge (a whole line, its ending included).
    pub fn answer(&mut self, line: &[u8]) -> Step {
        let Ok(text) = std::str::from_utf8(line) else {
            return Step::Failed(refusal(SaslError::BadBase64));
        };
        let text = text.trim_end_matches(['\r', '\n']);
        match (self.mechanism, self.user.take()) {
            (AuthMechanism::Plain, _) => plain(text),
            (AuthMechanism::Login, None) => match login_user(text) {
                Ok(user) => {
                    self.user = Some(user);
                    Step::Challenge(reply::auth_challenge(sasl::LOGIN_PASSWORD_PROMPT))
                }
                Err(r) => Step::Failed(r),
            },
            (AuthMechanism::Login, Some(user)) => match sasl::decode_line(text) {
                Ok(password) => match Credentials::from_login(user.into_bytes(), password) {
                    Ok(credentials) => Step::Verify(credentials),
                    Err(e) => Step::Failed(refusal(e)),
                },
                Err(e) => Step::Failed(refusal(e)),
            },
        }
    }
}

fn plain(line: &str) -> Step {
    match sasl::decode_plain(line) {
        Ok(credentials) => Step::Verify(credentials),
        Err(e) => Step::Failed(refusal(e)),
    }
}

fn login_user(line: &str) -> Result<String, Reply> {
    let bytes = sasl::decode_line(line).map_err(refusal)?;
    String::from_utf8(bytes).map_err(|_| reply::auth_malformed("the user name is not UTF-8"))
}

fn refusal(e: SaslError) -> Reply {
    match e {
        SaslError::Cancelled => reply::auth_cancelled(),
        other => reply::auth_malformed(&other.to_string()),
    }
}

/// The password checks that may run at once: one per core.
fn checks() -> &'static tokio::sync::Semaphore {
    static CHECKS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    CHECKS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores)
    })
}

/// Why [`verify`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `535`: the client may try again in this session.
    TryAgain,
    /// Too many failures: `421`, and this address waits this long.
    Pause(Duration),
}

/// Checks a finished exchange's credentials: the users file (argon2, on a blocking thread),
/// or anything in accept-any mode. Counts failures per client address.
pub async fn verify(
    auth: &InboundAuth,
    credentials: Credentials,
    peer: SocketAddr,
) -> Result<Authenticated, Refused> {
    let shown = terminal_safe(&credentials.user);
    let found = if auth.accept_any {
        Some(Authenticated {
            name: credentials.user.clone(),
            senders: Vec::new(),
        })
    } else if let Some(file) = &auth.users {
        let users = file.current();
        // One argon2 check per core at a time: a crowd of logins waits here instead of
        // filling the blocking pool with checks of 19 MiB each.
        let _permit = checks().acquire().await;
        tokio::task::spawn_blocking(move || {
            users.verify(&credentials.user, credentials.password.expose_secret())
        })
        .await
        .ok()
        .flatten()
        .map(|user| Authenticated {
            name: user.name.clone(),
            senders: user.senders.clone(),
        })
    } else {
        None
    };
    match found {
        Some(user) => {
            // A good login does not wipe the failures: they decay on their own. Otherwise one
            // known password (a printer's) would buy unlimited guesses at the others.
            metrics::counter!("smtp_oauth_relay_inbound_auth_total", "result" => "ok").increment(1);
            if auth.accept_any {
                tracing::info!(client = %peer, user = %shown, "AUTH accepted without a check (listen.auth_accept_any)");
            } else {
                tracing::info!(client = %peer, user = %shown, "AUTH succeeded");
            }
            Ok(user)
        }
        None => {
            metrics::counter!("smtp_oauth_relay_inbound_auth_total", "result" => "failed")
                .increment(1);
            let failure = match &auth.limiter {
                Some(limiter) => limiter.failure(peer.ip(), Instant::now()),
                None => Failure::TryAgain { left: u32::MAX },
            };
            match failure {
                Failure::TryAgain { .. } => {
                    tracing::warn!(client = %peer, user = %shown, "AUTH failed: unknown user or wrong password");
                    Err(Refused::TryAgain)
                }
                Failure::Pause(wait) => {
                    tracing::warn!(client = %peer, user = %shown, pause_secs = wait.as_secs(), "AUTH failed too often from this address: closing, and refusing it for a while");
                    Err(Refused::Pause(wait))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn verified(step: Step) -> Credentials {
        match step {
            Step::Verify(c) => c,
            other => panic!("expected credentials, got {other:?}"),
        }
    }

    fn challenge(step: &Step) -> String {
        match step {
            Step::Challenge(r) => {
                assert_eq!(r.code, 334);
                r.lines.join("")
            }
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    #[test]
    fn plain_with_and_without_an_initial_response() {
        let line = b64(b"\0alice\0s3cret");
        let (dialog, step) = Dialog::start(AuthMechanism::Plain, Some(&line));
        assert!(dialog.is_none());
        let c = verified(step);
        assert_eq!(c.user, "alice");
        assert_eq!(c.password.expose_secret(), b"s3cret");

        let (dialog, step) = Dialog::start(AuthMechanism::Plain, None);
        assert_eq!(challenge(&step), "");
        let c = verified(dialog.unwrap().answer(format!("{line}\r\n").as_bytes()));
        assert_eq!(c.user, "alice");
    }

    #[test]
    fn login_asks_for_the_user_then_the_password() {
        let (dialog, step) = Dialog::start(AuthMechanism::Login, None);
        assert_eq!(challenge(&step), sasl::LOGIN_USERNAME_PROMPT);
        let mut dialog = dialog.unwrap();
        let step = dialog.answer(format!("{}\r\n", b64(b"printer")).as_bytes());
        assert_eq!(challenge(&step), sasl::LOGIN_PASSWORD_PROMPT);
        let c = verified(dialog.answer(format!("{}\n", b64(b"pw")).as_bytes()));
        assert_eq!(
            (c.user.as_str(), c.password.expose_secret()),
            ("printer", &b"pw"[..])
        );

        // The user name as initial response: straight to the password.
        let (dialog, step) = Dialog::start(AuthMechanism::Login, Some(&b64(b"scanner")));
        assert_eq!(challenge(&step), sasl::LOGIN_PASSWORD_PROMPT);
        let c = verified(
            dialog
                .unwrap()
                .answer(format!("{}\r\n", b64(b"x")).as_bytes()),
        );
        assert_eq!(c.user, "scanner");
    }

    #[test]
    fn cancel_and_garbage_end_the_exchange_without_echoing_it() {
        let (dialog, _) = Dialog::start(AuthMechanism::Login, None);
        match dialog.unwrap().answer(b"*\r\n") {
            Step::Failed(r) => assert_eq!(r.code, 501),
            other => panic!("{other:?}"),
        }
        let (_, step) = Dialog::start(AuthMechanism::Plain, Some("!!not-base64!!"));
        match step {
            Step::Failed(r) => {
                assert_eq!(r.code, 501);
                assert!(!r.lines.join(" ").contains("not-base64"), "{r}");
            }
            other => panic!("{other:?}"),
        }
        let (dialog, _) = Dialog::start(AuthMechanism::Login, None);
        match dialog.unwrap().answer(&[0xff, 0xfe, b'\r', b'\n']) {
            Step::Failed(r) => assert_eq!(r.code, 501),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn debug_of_a_step_never_shows_the_password() {
        let (_, step) = Dialog::start(AuthMechanism::Plain, Some(&b64(b"\0u\0hunter2-secret")));
        assert!(!format!("{step:?}").contains("hunter2"));
    }
}
