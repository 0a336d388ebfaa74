//! The device code flow (reference §1.6, RFC 8628) that `smtp-oauth-relay login` runs once:
//! ask `{authority}/{tenant}/oauth2/v2.0/devicecode` for a code, show the user where to enter
//! it, and poll the token endpoint until they have signed in, declined, or the code expired.
//!
//! The parsing of the device code answer and every polling decision ([`Polling::next`]: wait
//! how long, or stop with which outcome) are pure and tested below; [`DeviceCodeFlow`] is the
//! thin driver around them. Polling is bounded by the code's `expires_in`: no wait is started
//! that would end after it. `slow_down` adds 5 s to the interval, as RFC 8628 §3.5 says.
//! The device code is a secret (whoever holds it gets the user's tokens once they sign in):
//! `Debug` redacts it and it is scrubbed from anything the endpoint says back.

use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::credential::{BuildError, SourceSettings};
use super::endpoint::{TokenEndpoint, TokenGrant};
use super::error::TokenError;

/// The interval when the answer names none (RFC 8628 §3.2).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// What `slow_down` adds to the interval (RFC 8628 §3.5).
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// The shortest interval we poll at, whatever the server says.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The device code endpoint next to a token URL (`…/oauth2/v2.0/token` →
/// `…/oauth2/v2.0/devicecode`). Pure.
pub fn devicecode_url(token_url: &str) -> Option<String> {
    token_url
        .strip_suffix("/token")
        .map(|base| format!("{base}/devicecode"))
}

/// A device code answer. `Debug` shows no device code.
pub struct DeviceCode {
    pub device_code: SecretString,
    pub user_code: String,
    pub verification_uri: String,
    pub expires_in: Duration,
    pub interval: Duration,
    /// Microsoft's own instructions, e.g. "To sign in, use a web browser to open the page …".
    pub message: Option<String>,
}

impl fmt::Debug for DeviceCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCode")
            .field("device_code", &"<redacted>")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("expires_in", &self.expires_in)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl DeviceCode {
    /// What to tell the user: Microsoft's `message`, or our own wording of the same.
    pub fn instructions(&self) -> String {
        match &self.message {
            Some(m) if !m.trim().is_empty() => m.trim().to_string(),
            _ => format!(
                "To sign in, open {} and enter the code {}",
                self.verification_uri, self.user_code
            ),
        }
    }
}

/// Parses the device code endpoint's JSON (reference §1.6). Pure. Errors never quote the
/// body (it holds the device code).
pub fn parse_device_code(json: &Map<String, Value>) -> Result<DeviceCode, TokenError> {
    let text = |key: &str| {
        json.get(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let bad = |what: &str| TokenError::BadResponse(format!("device code answer: {what}"));
    let device_code = text("device_code").ok_or_else(|| bad("no device_code"))?;
    let user_code = text("user_code").ok_or_else(|| bad("no user_code"))?;
    // v1 endpoints said `verification_url`.
    let verification_uri = text("verification_uri")
        .or_else(|| text("verification_url"))
        .ok_or_else(|| bad("no verification_uri"))?;
    let seconds = |key: &str| match json.get(key) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or(()),
        Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| ()),
        Some(_) => Err(()),
    };
    let expires_in = seconds("expires_in")
        .map_err(|_| bad("expires_in is not a number"))?
        .filter(|s| *s > 0)
        .ok_or_else(|| bad("no expires_in"))?;
    let interval = seconds("interval")
        .map_err(|_| bad("interval is not a number"))?
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_INTERVAL)
        .max(MIN_INTERVAL);
    Ok(DeviceCode {
        device_code: SecretString::from(device_code),
        user_code,
        verification_uri,
        expires_in: Duration::from_secs(expires_in),
        interval,
        message: text("message"),
    })
}

/// Why a sign-in ended without a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignInError {
    #[error("the sign-in was declined (authorization_declined)")]
    Declined,
    #[error("the code expired before anyone signed in with it; run `login` again")]
    Expired,
    #[error("Entra does not know this device code (bad_verification_code); run `login` again")]
    BadCode,
    #[error(
        "the sign-in gave no refresh token: the scope must include offline_access \
         (account.scope)"
    )]
    NoRefreshToken,
    #[error("{0}")]
    Refused(TokenError),
}

/// What to do after one poll.
#[derive(Debug)]
pub enum Step {
    /// Poll again after this long.
    Wait(Duration),
    /// Signed in: the grant holds the access and the refresh token.
    Done(TokenGrant),
    /// Stop: the sign-in failed.
    Fail(SignInError),
}

/// The polling state: the interval now in force and when the code expires.
#[derive(Debug, Clone)]
pub struct Polling {
    interval: Duration,
    deadline: Instant,
}

impl Polling {
    /// For `code`, received at `received_at`.
    pub fn new(code: &DeviceCode, received_at: Instant) -> Self {
        Polling {
            interval: code.interval,
            deadline: received_at + code.expires_in,
        }
    }

    /// How long to wait now (before the first poll, or after a `slow_down`).
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The first wait, or the end if the code expires before it.
    pub fn first(&self, now: Instant) -> Step {
        self.wait(self.interval, now)
    }

    /// Decides what follows one poll's `answer`, at `now`. Pure.
    pub fn next(&mut self, answer: Result<TokenGrant, TokenError>, now: Instant) -> Step {
        let error = match answer {
            Ok(grant) if grant.refresh_token.is_none() => {
                return Step::Fail(SignInError::NoRefreshToken)
            }
            Ok(grant) => return Step::Done(grant),
            Err(e) => e,
        };
        match error.oauth_error() {
            Some("authorization_pending") => self.wait(self.interval, now),
            Some("slow_down") => {
                self.interval += SLOW_DOWN_STEP;
                self.wait(self.interval, now)
            }
            Some("expired_token") => Step::Fail(SignInError::Expired),
            Some("authorization_declined") => Step::Fail(SignInError::Declined),
            Some("bad_verification_code") => Step::Fail(SignInError::BadCode),
            _ if error.is_transient() => {
                let wait = error.retry_after().unwrap_or_default().max(self.interval);
                self.wait(wait, now)
            }
            _ => Step::Fail(SignInError::Refused(error)),
        }
    }

    fn wait(&self, wait: Duration, now: Instant) -> Step {
        if now + wait >= self.deadline {
            Step::Fail(SignInError::Expired)
        } else {
            Step::Wait(wait)
        }
    }
}

/// The driver: the two requests of the flow, and the polling loop.
pub struct DeviceCodeFlow {
    endpoint: TokenEndpoint,
    devicecode_url: String,
    client_id: String,
    scope: String,
}

impl DeviceCodeFlow {
    /// For the delegated account in `settings` (its token URL, app and scope).
    pub fn new(settings: &SourceSettings) -> Result<Self, BuildError> {
        let devicecode_url = devicecode_url(&settings.token_url).ok_or_else(|| {
            BuildError::Credential(format!(
                "the token URL {} does not end in /token",
                settings.token_url
            ))
        })?;
        Ok(DeviceCodeFlow {
            endpoint: TokenEndpoint::new(
                &settings.token_url,
                &settings.extra_roots,
                settings.timeout,
            )?,
            devicecode_url,
            client_id: settings.client_id.clone(),
            scope: settings.scope.clone(),
        })
    }

    /// `POST …/devicecode` with `client_id` and `scope`.
    pub async fn request_code(&self) -> Result<DeviceCode, TokenError> {
        let form = [
            ("client_id", self.client_id.as_str()),
            ("scope", self.scope.as_str()),
        ];
        let json = self
            .endpoint
            .post_form_json(&self.devicecode_url, &form, "", "device code request")
            .await?;
        parse_device_code(&json)
    }

    /// One poll of the token endpoint with the device code grant.
    pub async fn poll(&self, code: &DeviceCode) -> Result<TokenGrant, TokenError> {
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("client_id", self.client_id.as_str()),
            ("device_code", code.device_code.expose_secret()),
        ];
        self.endpoint
            .post_form(
                &form,
                code.device_code.expose_secret(),
                "device code sign-in",
            )
            .await
    }

    /// Polls until the user has signed in, or the sign-in failed or expired. `received_at` is
    /// when `code` arrived (its `expires_in` counts from then).
    pub async fn wait_for_sign_in(
        &self,
        code: &DeviceCode,
        received_at: Instant,
    ) -> Result<TokenGrant, SignInError> {
        let mut polling = Polling::new(code, received_at);
        let mut step = polling.first(Instant::now());
        loop {
            match step {
                Step::Wait(wait) => tokio::time::sleep(wait).await,
                Step::Done(grant) => return Ok(grant),
                Step::Fail(e) => return Err(e),
            }
            let answer = self.poll(code).await;
            step = polling.next(answer, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code(expires_in: u64, interval: u64) -> DeviceCode {
        DeviceCode {
            device_code: SecretString::from("DAQABAAEAAAD-device-secret"),
            user_code: "ABCD1234".into(),
            verification_uri: "https://microsoft.com/devicelogin".into(),
            expires_in: Duration::from_secs(expires_in),
            interval: Duration::from_secs(interval),
            message: None,
        }
    }

    fn oauth(error: &str) -> TokenError {
        TokenError::Rejected {
            status: 400,
            error: error.into(),
            codes: vec![70016],
            description: String::new(),
            trace_id: None,
            correlation_id: None,
            retry_after: None,
        }
    }

    fn grant(refresh: bool) -> TokenGrant {
        TokenGrant {
            access_token: SecretString::from("eyJ.a.b"),
            expires_in: 3599,
            token_type: Some("Bearer".into()),
            refresh_token: refresh.then(|| SecretString::from("0.AXoA")),
            scope: None,
        }
    }

    #[test]
    fn device_code_url_sits_beside_the_token_url() {
        assert_eq!(
            devicecode_url("https://login.microsoftonline.com/t/oauth2/v2.0/token").as_deref(),
            Some("https://login.microsoftonline.com/t/oauth2/v2.0/devicecode")
        );
        assert_eq!(devicecode_url("https://x/elsewhere"), None);
    }

    #[test]
    fn parses_entras_answer() {
        let j = json!({
            "user_code": "FGH7JKLMN",
            "device_code": "DAQABAAEAAAD-secret",
            "verification_uri": "https://microsoft.com/devicelogin",
            "expires_in": 900,
            "interval": 5,
            "message": "To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code FGH7JKLMN to authenticate."
        });
        let c = parse_device_code(j.as_object().unwrap()).unwrap();
        assert_eq!(c.user_code, "FGH7JKLMN");
        assert_eq!(c.expires_in, Duration::from_secs(900));
        assert_eq!(c.interval, Duration::from_secs(5));
        assert!(c.instructions().contains("FGH7JKLMN"));
        assert!(!format!("{c:?}").contains("DAQAB"), "{c:?}");
    }

    #[test]
    fn fills_in_defaults_and_our_own_instructions() {
        let j = json!({"user_code": "U1", "device_code": "D1",
            "verification_url": "https://v", "expires_in": "600", "interval": 0});
        let c = parse_device_code(j.as_object().unwrap()).unwrap();
        assert_eq!(c.verification_uri, "https://v");
        assert_eq!(c.expires_in, Duration::from_secs(600));
        assert_eq!(c.interval, MIN_INTERVAL, "never faster than once a second");
        assert_eq!(
            c.instructions(),
            "To sign in, open https://v and enter the code U1"
        );
        let j = json!({"user_code": "U1", "device_code": "D1",
            "verification_uri": "https://v", "expires_in": 600});
        let c = parse_device_code(j.as_object().unwrap()).unwrap();
        assert_eq!(c.interval, DEFAULT_INTERVAL);
    }

    #[test]
    fn rejects_unusable_answers_without_quoting_them() {
        for j in [
            json!({"user_code": "U", "verification_uri": "v", "expires_in": 9}),
            json!({"device_code": "D-secret", "verification_uri": "v", "expires_in": 9}),
            json!({"device_code": "D-secret", "user_code": "U", "expires_in": 9}),
            json!({"device_code": "D-secret", "user_code": "U", "verification_uri": "v"}),
            json!({"device_code": "D-secret", "user_code": "U", "verification_uri": "v",
                   "expires_in": "soon"}),
        ] {
            let e = parse_device_code(j.as_object().unwrap()).err().unwrap();
            assert!(matches!(e, TokenError::BadResponse(_)), "{e:?}");
            assert!(!e.to_string().contains("D-secret"), "{e}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pending_keeps_the_interval_and_slow_down_adds_five_seconds() {
        let t0 = Instant::now();
        let mut p = Polling::new(&code(900, 5), t0);
        assert!(matches!(p.first(t0), Step::Wait(w) if w == Duration::from_secs(5)));
        let step = p.next(Err(oauth("authorization_pending")), t0);
        assert!(matches!(step, Step::Wait(w) if w == Duration::from_secs(5)));
        let step = p.next(Err(oauth("slow_down")), t0);
        assert!(matches!(step, Step::Wait(w) if w == Duration::from_secs(10)));
        // The slower interval stays in force.
        let step = p.next(Err(oauth("authorization_pending")), t0);
        assert!(matches!(step, Step::Wait(w) if w == Duration::from_secs(10)));
        assert_eq!(p.interval(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn final_answers_end_the_polling() {
        let t0 = Instant::now();
        let mut p = Polling::new(&code(900, 5), t0);
        for (error, want) in [
            ("expired_token", SignInError::Expired),
            ("authorization_declined", SignInError::Declined),
            ("bad_verification_code", SignInError::BadCode),
        ] {
            match p.next(Err(oauth(error)), t0) {
                Step::Fail(e) => assert_eq!(e, want),
                other => panic!("{error}: {other:?}"),
            }
        }
        match p.next(Err(oauth("invalid_client")), t0) {
            Step::Fail(SignInError::Refused(e)) => {
                assert_eq!(e.oauth_error(), Some("invalid_client"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(p.next(Ok(grant(true)), t0), Step::Done(_)));
        assert!(matches!(
            p.next(Ok(grant(false)), t0),
            Step::Fail(SignInError::NoRefreshToken)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_wait_at_least_retry_after() {
        let t0 = Instant::now();
        let mut p = Polling::new(&code(900, 5), t0);
        let step = p.next(Err(TokenError::Timeout), t0);
        assert!(matches!(step, Step::Wait(w) if w == Duration::from_secs(5)));
        let throttled = TokenError::Http {
            status: 429,
            body: String::new(),
            retry_after: Some(Duration::from_secs(30)),
        };
        let step = p.next(Err(throttled), t0);
        assert!(matches!(step, Step::Wait(w) if w == Duration::from_secs(30)));
    }

    #[tokio::test(start_paused = true)]
    async fn no_wait_reaches_past_expires_in() {
        let t0 = Instant::now();
        let mut p = Polling::new(&code(12, 5), t0);
        let step = p.next(
            Err(oauth("authorization_pending")),
            t0 + Duration::from_secs(5),
        );
        assert!(matches!(step, Step::Wait(_)));
        let step = p.next(
            Err(oauth("authorization_pending")),
            t0 + Duration::from_secs(7),
        );
        assert!(matches!(step, Step::Fail(SignInError::Expired)), "{step:?}");
        // A code that expires before the first poll ends at once.
        let p = Polling::new(&code(3, 5), t0);
        assert!(matches!(p.first(t0), Step::Fail(SignInError::Expired)));
    }
}
