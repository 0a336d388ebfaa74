//! The token endpoint every credential kind talks to (reference §1.1, §1.7, §1.8): one form
//! POST to `{authority}/{tenant}/oauth2/v2.0/token` (or, for managed identity, one GET to
//! IMDS), a bounded body, and the pure parsing of Entra's answer.
//!
//! Why a direct reqwest POST and not the oauth2 crate: see DESIGN §5 (it pins an older reqwest
//! and pulls a second crypto provider). The HTTPS client uses the relay's own rustls
//! configuration (`crate::tls::client_config`: aws-lc-rs, platform verifier plus
//! `extra_ca_file`), does not follow redirects (a redirect means the URL is wrong, and following
//! one could carry the secret elsewhere) and has one overall timeout.
//!
//! Parsing the response is pure (no I/O) and tested below: `expires_in` may be a number or a
//! string (reference §1.7); error JSON becomes [`TokenError::Rejected`] with the AADSTS codes,
//! the first description line, trace and correlation ids and `Retry-After`. Anything the server
//! says is scrubbed of our secret (raw, URL-encoded, any case) and of JWTs before it goes into
//! an error, in case a proxy echoes the form, and before it is cut to an excerpt (`scrub.rs`).

use std::fmt;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, ACCEPT, RETRY_AFTER};
use reqwest::Url;
use rustls_pki_types::CertificateDer;
use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::error::TokenError;
use super::error::{first_line, single_line_excerpt};
use super::scrub::Scrubber;
use super::source::AccessToken;
use crate::tls::TlsSetupError;

/// Largest token response we read (tokens are 1.5-3 KB; error pages are small too).
const MAX_BODY: usize = 256 * 1024;
/// Longest description or body excerpt kept in an error.
const MAX_TEXT: usize = 400;
/// Time limit for one token request when the settings say zero.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `Retry-After` we honour; anything longer is treated as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The token URL for an authority and a tenant:
/// `{authority without trailing '/'}/{tenant}/oauth2/v2.0/token`.
pub fn token_url(authority: &str, tenant: &str) -> String {
    format!(
        "{}/{}/oauth2/v2.0/token",
        authority.trim_end_matches('/'),
        tenant
    )
}

/// One token endpoint and the HTTPS client that talks to it: the part every credential kind
/// shares. Each kind builds its form (or, for IMDS, its URL) and hands it here; this makes the
/// one request, reads a bounded body, and parses it into a [`TokenGrant`] or a scrubbed
/// [`TokenError`].
pub struct TokenEndpoint {
    client: reqwest::Client,
    url: Result<Url, String>,
    token_url: String,
}

impl fmt::Debug for TokenEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEndpoint")
            .field("token_url", &self.token_url)
            .finish_non_exhaustive()
    }
}

impl TokenEndpoint {
    /// Builds the HTTPS client. Fails only if the TLS configuration cannot be built; a
    /// malformed token URL is reported by every request as [`TokenError::InvalidUrl`] (a
    /// configuration error). A `timeout` of zero means [`DEFAULT_TIMEOUT`].
    pub fn new(
        token_url: &str,
        extra_roots: &[CertificateDer<'static>],
        timeout: Duration,
    ) -> Result<Self, TlsSetupError> {
        Self::build(token_url, extra_roots, timeout, true)
    }

    /// [`new`](Self::new), but never through a proxy: IMDS (a link-local address on the
    /// machine itself) must be reached directly, and a proxy taken from `HTTP_PROXY` would
    /// answer for it or not at all.
    pub fn direct(
        token_url: &str,
        extra_roots: &[CertificateDer<'static>],
        timeout: Duration,
    ) -> Result<Self, TlsSetupError> {
        Self::build(token_url, extra_roots, timeout, false)
    }

    fn build(
        token_url: &str,
        extra_roots: &[CertificateDer<'static>],
        timeout: Duration,
        proxy: bool,
    ) -> Result<Self, TlsSetupError> {
        let tls = crate::tls::client_config(extra_roots)?;
        let timeout = if timeout.is_zero() {
            DEFAULT_TIMEOUT
        } else {
            timeout
        };
        let mut builder = reqwest::Client::builder();
        if !proxy {
            builder = builder.no_proxy();
        }
        let client = builder
            .tls_backend_preconfigured((*tls).clone())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("smtp-oauth-relay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TlsSetupError::Verifier(format!("cannot build the HTTPS client: {e}")))?;
        Ok(TokenEndpoint {
            client,
            url: Url::parse(token_url).map_err(|e| e.to_string()),
            token_url: token_url.to_string(),
        })
    }

    /// The token URL this endpoint posts to.
    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// The tenant named in the token URL, if it has the usual shape.
    pub fn tenant(&self) -> Option<String> {
        tenant_of(&self.token_url)
    }

    /// Where the credential is used, for a source's `describe`: `in tenant <tenant>`, or
    /// `at <token URL>` when the URL names none.
    pub fn place(&self) -> String {
        match self.tenant() {
            Some(tenant) => format!("in tenant {tenant}"),
            None => format!("at {}", self.token_url),
        }
    }

    /// The client credentials grant with `assertion` as a JWT bearer client assertion
    /// (reference §1.3, §1.4): the request of the certificate, workload identity and
    /// managed identity kinds. The assertion is scrubbed from anything quoted in an error.
    pub async fn post_assertion(
        &self,
        client_id: &str,
        scope: &str,
        assertion: &SecretString,
        source: &str,
    ) -> Result<TokenGrant, TokenError> {
        let form = assertion_form(client_id, scope, assertion.expose_secret());
        self.post_form(&form, assertion.expose_secret(), source)
            .await
    }

    /// POSTs `form` to the token URL and parses the answer. `secret` (the client secret, a
    /// refresh token; empty when there is none) is scrubbed from anything quoted in an error,
    /// as are JWTs (assertions). `source` names the credential in debug logs.
    pub async fn post_form(
        &self,
        form: &[(&str, &str)],
        secret: &str,
        source: &str,
    ) -> Result<TokenGrant, TokenError> {
        let url = self.url.clone().map_err(|reason| TokenError::InvalidUrl {
            url: self.token_url.clone(),
            reason,
        })?;
        let request = self
            .client
            .post(url)
            .header(ACCEPT, "application/json")
            .form(form);
        self.exchange(request, secret, source).await
    }

    /// GETs `url` with `headers` (the IMDS token call: plain HTTP on a link-local address)
    /// and parses the answer as a token response.
    pub async fn get(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        source: &str,
    ) -> Result<TokenGrant, TokenError> {
        let parsed = Url::parse(url).map_err(|e| TokenError::InvalidUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let mut request = self.client.get(parsed).header(ACCEPT, "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.exchange(request, "", source).await
    }

    /// POSTs `form` to `url`, another endpoint of the same authority (the device code
    /// endpoint, reference §1.6), and returns the JSON object of a 2xx answer. An error
    /// answer becomes a [`TokenError`] exactly as [`post_form`](Self::post_form) makes it;
    /// `secret` is scrubbed the same way.
    pub async fn post_form_json(
        &self,
        url: &str,
        form: &[(&str, &str)],
        secret: &str,
        source: &str,
    ) -> Result<serde_json::Map<String, Value>, TokenError> {
        let parsed = Url::parse(url).map_err(|e| TokenError::InvalidUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let request = self
            .client
            .post(parsed)
            .header(ACCEPT, "application/json")
            .form(form);
        let scrubber = Scrubber::new(secret);
        let (status, retry_after, mut body) = self.read(request, &scrubber, source).await?;
        let json = match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(map)) if (200..300).contains(&status) => Ok(map),
            _ if (200..300).contains(&status) => Err(TokenError::BadResponse(format!(
                "HTTP {status} body is not a JSON object"
            ))),
            _ => match parse_token_response(status, retry_after, &body, &scrubber) {
                Err(e) => Err(scrubber.scrub_error(e)),
                Ok(_) => Err(TokenError::BadResponse(format!(
                    "HTTP {status} with a token where none was expected"
                ))),
            },
        };
        body.zeroize();
        if let Err(error) = &json {
            tracing::debug!(status, source, %error, "request to {url} failed");
        }
        json
    }

    /// Sends `request` and reads the status, `Retry-After` and a bounded body.
    async fn read(
        &self,
        request: reqwest::RequestBuilder,
        scrubber: &Scrubber,
        source: &str,
    ) -> Result<(u16, Option<Duration>, Vec<u8>), TokenError> {
        let mut response = request
            .send()
            .await
            .map_err(|e| self.request_error(&e, scrubber, source))?;
        let status = response.status().as_u16();
        let retry_after = retry_after_header(response.headers(), SystemTime::now());
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.request_error(&e, scrubber, source))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                body.zeroize();
                return Err(TokenError::BadResponse(format!(
                    "HTTP {status} response larger than {} KiB",
                    MAX_BODY / 1024
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, retry_after, body))
    }

    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        secret: &str,
        source: &str,
    ) -> Result<TokenGrant, TokenError> {
        let scrubber = Scrubber::new(secret);
        let started = tokio::time::Instant::now();
        let (status, retry_after, mut body) = self.read(request, &scrubber, source).await?;
        let parsed = parse_token_response(status, retry_after, &body, &scrubber);
        body.zeroize();
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match parsed {
            Ok(grant) => {
                tracing::debug!(
                    status,
                    expires_in = grant.expires_in,
                    token_type = grant.token_type.as_deref().unwrap_or(""),
                    elapsed_ms,
                    source,
                    "token endpoint issued a token"
                );
                Ok(grant)
            }
            Err(error) => {
                let error = scrubber.scrub_error(error);
                if let TokenError::Rejected {
                    error: class,
                    codes,
                    trace_id,
                    correlation_id,
                    ..
                } = &error
                {
                    tracing::debug!(
                        status,
                        error = %class,
                        codes = ?codes,
                        trace_id = trace_id.as_deref().unwrap_or(""),
                        correlation_id = correlation_id.as_deref().unwrap_or(""),
                        retry_after_s = error.retry_after().map(|d| d.as_secs()),
                        elapsed_ms,
                        source,
                        "token endpoint refused the request"
                    );
                } else {
                    tracing::debug!(status, elapsed_ms, source, %error, "token request failed");
                }
                Err(error)
            }
        }
    }

    /// Maps a transport error. reqwest's text names the URL (no secret in it) and the cause.
    fn request_error(&self, e: &reqwest::Error, scrubber: &Scrubber, source: &str) -> TokenError {
        let error = if e.is_timeout() {
            TokenError::Timeout
        } else if e.is_builder() {
            TokenError::InvalidUrl {
                url: self.token_url.clone(),
                reason: error_chain(e),
            }
        } else {
            TokenError::Network(error_chain(e))
        };
        let error = scrubber.scrub_error(error);
        tracing::debug!(source, %error, "token request failed");
        error
    }
}

/// The tenant segment of a token URL (`…/{tenant}/oauth2/v2.0/token`).
pub(crate) fn tenant_of(token_url: &str) -> Option<String> {
    let url = Url::parse(token_url).ok()?;
    let segments: Vec<&str> = url.path_segments()?.collect();
    let pos = segments.iter().position(|s| *s == "oauth2")?;
    pos.checked_sub(1)
        .map(|i| segments[i].to_owned())
        .filter(|t| !t.is_empty())
}

/// An error and its sources, joined with ": " (reqwest's own Display is terse).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// `client_assertion_type` of a JWT bearer assertion (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The form of [`TokenEndpoint::post_assertion`]. Pure.
pub(crate) fn assertion_form<'a>(
    client_id: &'a str,
    scope: &'a str,
    assertion: &'a str,
) -> [(&'a str, &'a str); 5] {
    [
        ("client_id", client_id),
        ("scope", scope),
        ("grant_type", "client_credentials"),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion),
    ]
}

/// What a successful response gave us. `Debug` shows no token.
pub struct TokenGrant {
    pub access_token: SecretString,
    pub expires_in: u64,
    pub token_type: Option<String>,
    /// Delegated grants only: the rotated refresh token, to be stored in place of the old one.
    pub refresh_token: Option<SecretString>,
    /// Delegated grants only: the scopes granted.
    pub scope: Option<String>,
}

impl fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenGrant")
            .field("access_token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .field("token_type", &self.token_type)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("scope", &self.scope)
            .finish()
    }
}

impl TokenGrant {
    /// The access token, its lifetime counted from now.
    pub fn access(&self) -> AccessToken {
        AccessToken::new(self.access_token.clone(), self.expires_in)
    }
}

/// Turns a token endpoint answer (status, `Retry-After`, body) into a grant or an error.
/// Pure. Error texts never quote a 2xx body (it may hold a token); what they quote of an
/// error body is scrubbed whole by `scrub` first, and only then cut to an excerpt.
pub fn parse_token_response(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    scrub: &Scrubber,
) -> Result<TokenGrant, TokenError> {
    let success = (200..300).contains(&status);
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let json = json.filter(Value::is_object);
    let error_class = json
        .as_ref()
        .and_then(|j| j.get("error"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let has_token = json
        .as_ref()
        .map(|j| j.get("access_token").is_some())
        .unwrap_or(false);

    if let (Some(json), Some(_)) = (&json, error_class) {
        if !(success && has_token) {
            return Err(parse_error_json(status, json, retry_after, scrub));
        }
    }
    if !success {
        return Err(TokenError::Http {
            status,
            body: single_line_excerpt(&scrub.scrub(&String::from_utf8_lossy(body)), MAX_TEXT / 2),
            retry_after,
        });
    }
    let Some(json) = json else {
        return Err(TokenError::BadResponse(
            match serde_json::from_slice::<Value>(body) {
                Err(e) => format!(
                    "HTTP {status} body is not JSON (line {}, column {})",
                    e.line(),
                    e.column()
                ),
                Ok(_) => format!("HTTP {status} body is JSON but not an object"),
            },
        ));
    };
    let access_token = match json.get("access_token") {
        Some(Value::String(t)) if !t.trim().is_empty() => SecretString::from(t.trim()),
        Some(Value::String(_)) => {
            return Err(TokenError::BadResponse("access_token is empty".into()))
        }
        Some(_) => {
            return Err(TokenError::BadResponse(
                "access_token is not a string".into(),
            ))
        }
        None => return Err(TokenError::BadResponse("no access_token".into())),
    };
    let expires_in = match json.get("expires_in") {
        Some(v) => parse_expires_in(v).ok_or_else(|| {
            TokenError::BadResponse("expires_in is not a non-negative number of seconds".into())
        })?,
        None => return Err(TokenError::BadResponse("no expires_in".into())),
    };
    let token_type = json
        .get("token_type")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let Some(t) = &token_type {
        if !t.eq_ignore_ascii_case("bearer") {
            return Err(TokenError::BadResponse(format!(
                "token_type is {:?}, expected Bearer",
                single_line_excerpt(t, 40)
            )));
        }
    }
    let refresh_token = json
        .get("refresh_token")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(SecretString::from);
    let scope = json.get("scope").and_then(Value::as_str).map(str::to_owned);
    Ok(TokenGrant {
        access_token,
        expires_in,
        token_type,
        refresh_token,
        scope,
    })
}

/// `expires_in` as a number (integer or float) or a string holding one.
fn parse_expires_in(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        }),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<u64>().ok().or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f as u64)
            })
        }
        _ => None,
    }
}

/// The OAuth error JSON (reference §1.8) as a [`TokenError::Rejected`]; every text scrubbed
/// whole before it is cut.
fn parse_error_json(
    status: u16,
    json: &Value,
    retry_after: Option<Duration>,
    scrub: &Scrubber,
) -> TokenError {
    let text = |key: &str| {
        json.get(key)
            .and_then(Value::as_str)
            .map(|s| single_line_excerpt(&scrub.scrub(s), 100))
            .filter(|s| !s.is_empty())
    };
    let codes = json
        .get("error_codes")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| {
                    c.as_u64()
                        .or_else(|| c.as_str().and_then(|s| s.trim().parse().ok()))
                })
                .filter_map(|c| u32::try_from(c).ok())
                .collect()
        })
        .unwrap_or_default();
    TokenError::Rejected {
        status,
        error: text("error").unwrap_or_default(),
        codes,
        description: json
            .get("error_description")
            .and_then(Value::as_str)
            .map(|d| single_line_excerpt(&first_line(&scrub.scrub(d), MAX_TEXT), MAX_TEXT + 1))
            .unwrap_or_default(),
        trace_id: text("trace_id").map(String::into_boxed_str),
        correlation_id: text("correlation_id").map(String::into_boxed_str),
        retry_after,
    }
}

/// The `Retry-After` header: delay-seconds or an HTTP date, capped at an hour.
fn retry_after_header(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now))
}

/// Parses a `Retry-After` value (RFC 9110 §10.2.3). Pure.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::super::client_secret::{ClientSecretSettings, ClientSecretSource};
    use super::super::scrub::form_encode;
    use super::super::source::TokenSource;
    use super::*;
    use secrecy::ExposeSecret;
    use serde_json::json;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const SECRET: &str = "abc8Q~Secret+Value/with=odd&chars~_.-x";

    fn ok(body: &str) -> TokenGrant {
        match parse_token_response(200, None, body.as_bytes(), &Scrubber::new("")) {
            Ok(g) => g,
            Err(e) => panic!("expected success, got {e}"),
        }
    }

    fn err(status: u16, body: &str) -> TokenError {
        match parse_token_response(status, None, body.as_bytes(), &Scrubber::new("")) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    #[test]
    fn token_url_shape() {
        assert_eq!(
            token_url(
                "https://login.microsoftonline.com/",
                "contoso.onmicrosoft.com"
            ),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(
            token_url("https://login.microsoftonline.us", "t"),
            "https://login.microsoftonline.us/t/oauth2/v2.0/token"
        );
        assert_eq!(
            tenant_of("https://login.microsoftonline.com/tid-1/oauth2/v2.0/token").as_deref(),
            Some("tid-1")
        );
        assert_eq!(tenant_of("not a url"), None);
    }

    #[test]
    fn success_with_numeric_expires_in() {
        let g = ok(
            r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ0.a.b"}"#,
        );
        assert_eq!(g.access_token.expose_secret(), "eyJ0.a.b");
        assert_eq!(g.expires_in, 3599);
        assert_eq!(g.token_type.as_deref(), Some("Bearer"));
    }

    #[test]
    fn success_with_string_expires_in() {
        let g = ok(r#"{"token_type":"Bearer","expires_in":"3599","access_token":"tok"}"#);
        assert_eq!(g.expires_in, 3599);
        let g = ok(r#"{"expires_in":3599.0,"access_token":"tok"}"#);
        assert_eq!(g.expires_in, 3599);
        assert!(g.token_type.is_none());
    }

    #[test]
    fn unusable_success_bodies() {
        for (body, needle) in [
            (
                r#"{"token_type":"Bearer","access_token":"eyJ.secret"}"#,
                "no expires_in",
            ),
            (
                r#"{"token_type":"Bearer","expires_in":3599}"#,
                "no access_token",
            ),
            (
                r#"{"expires_in":"soon","access_token":"eyJ.secret"}"#,
                "expires_in",
            ),
            (
                r#"{"expires_in":-5,"access_token":"eyJ.secret"}"#,
                "expires_in",
            ),
            (r#"{"expires_in":5,"access_token":""}"#, "empty"),
            (
                r#"{"expires_in":5,"access_token":"eyJ.secret","token_type":"mac"}"#,
                "Bearer",
            ),
            ("eyJ.secret not json", "not JSON"),
            ("[1,2]", "not an object"),
        ] {
            let e = err(200, body);
            assert!(matches!(e, TokenError::BadResponse(_)), "{body}: {e:?}");
            let shown = format!("{e} {e:?}");
            assert!(shown.contains(needle), "{shown}");
            assert!(!shown.contains("eyJ"), "body leaked: {shown}");
            assert!(e.is_transient());
        }
    }

    #[test]
    fn error_json_becomes_rejected() {
        let body = r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '00000000-0000-0000-0000-000000000001'.\r\nTrace ID: 0b2c-trace\r\nCorrelation ID: 5d1e-corr\r\nTimestamp: 2025-11-01 10:00:00Z","error_codes":[7000215],"timestamp":"2025-11-01 10:00:00Z","trace_id":"0b2c-trace","correlation_id":"5d1e-corr","error_uri":"https://login.microsoftonline.com/error?code=7000215"}"#;
        let e = parse_token_response(
            401,
            Some(Duration::from_secs(3)),
            body.as_bytes(),
            &Scrubber::new(""),
        )
        .err()
        .unwrap();
        match &e {
            TokenError::Rejected {
                status,
                error,
                codes,
                description,
                trace_id,
                correlation_id,
                retry_after,
            } => {
                assert_eq!(*status, 401);
                assert_eq!(error, "invalid_client");
                assert_eq!(codes, &vec![7000215]);
                assert!(description.starts_with("AADSTS7000215: Invalid client secret provided."));
                assert!(!description.contains("Trace ID"));
                assert_eq!(trace_id.as_deref(), Some("0b2c-trace"));
                assert_eq!(correlation_id.as_deref(), Some("5d1e-corr"));
                assert_eq!(*retry_after, Some(Duration::from_secs(3)));
            }
            other => panic!("{other:?}"),
        }
        assert!(e.is_config());
        assert_eq!(e.aadsts(), Some(7000215));
        assert!(e.advice().unwrap().contains("Value"));
        let shown = e.to_string();
        assert!(shown.starts_with(
            "token endpoint refused the request (HTTP 401 invalid_client, AADSTS7000215: Invalid client secret provided."
        ));
        assert!(shown.ends_with("; trace id 0b2c-trace, correlation id 5d1e-corr)"));
    }

    #[test]
    fn error_classes_from_json() {
        let cases: &[(u16, &str, u32, bool)] = &[
            (401, "invalid_client", 7000222, true),
            (400, "unauthorized_client", 700016, true),
            (400, "invalid_request", 90002, true),
            (400, "invalid_scope", 1002012, true),
            (400, "invalid_resource", 500011, true),
            (400, "invalid_grant", 53003, true),
            (400, "unsupported_grant_type", 70003, true),
            (400, "invalid_request", 50196, false),
            (429, "invalid_request", 90055, false),
            (503, "temporarily_unavailable", 50196, false),
            (400, "temporarily_unavailable", 0, false),
        ];
        for &(status, class, code, config) in cases {
            let body = format!(
                r#"{{"error":"{class}","error_description":"AADSTS{code}: x\r\nTrace ID: t","error_codes":[{code}]}}"#
            );
            let e = err(status, &body);
            assert!(matches!(e, TokenError::Rejected { .. }), "{e:?}");
            assert_eq!(e.is_config(), config, "{status} {class} {code}");
            assert_eq!(e.oauth_error(), Some(class));
        }
    }

    #[test]
    fn non_oauth_error_bodies() {
        let e = err(404, "<html>\n<body>Not Found</body></html>");
        assert!(matches!(e, TokenError::Http { status: 404, .. }));
        assert!(e.is_config());
        assert!(e.advice().is_some());
        assert!(e.to_string().contains("Not Found"));
        let e = err(502, "");
        assert!(e.is_transient());
        assert_eq!(
            e.to_string(),
            "token endpoint answered HTTP 502 without an OAuth error"
        );
        let e = err(302, "");
        assert!(e.is_config());
    }

    #[test]
    fn retry_after_values() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("30", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after(" 5 ", now), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_retry_after("99999999", now),
            Some(Duration::from_secs(3600))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(120));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(120))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(120));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    /// An error as `fetch_once` returns it: parsed, then scrubbed once more.
    fn refused(status: u16, body: &[u8], scrub: &Scrubber) -> TokenError {
        match parse_token_response(status, None, body, scrub) {
            Ok(_) => panic!("expected an error"),
            Err(e) => scrub.scrub_error(e),
        }
    }

    /// Whether `shown` holds any 8-character piece of the secret, raw or form-encoded, in
    /// any ASCII case.
    fn leaks(shown: &str) -> Option<String> {
        let shown = shown.to_ascii_lowercase();
        for form in [SECRET.to_string(), form_encode(SECRET)] {
            let form = form.to_ascii_lowercase();
            let chars: Vec<char> = form.chars().collect();
            for w in chars.windows(8) {
                let piece: String = w.iter().collect();
                if shown.contains(&piece) {
                    return Some(piece);
                }
            }
        }
        None
    }

    #[test]
    fn echoed_secrets_are_scrubbed_before_any_excerpt_is_cut() {
        let scrub = Scrubber::new(SECRET);
        let echo = format!(
            "client_id=app&client_secret={}&scope=x",
            form_encode(SECRET)
        );
        // Every position of the echo around each cut: the plain-text body's (200), the
        // description's (400), the other fields' (100).
        for pad in 0..460 {
            let echoed = format!("{}{echo}", "x".repeat(pad));
            let bodies = [
                echoed.clone(),
                json!({"error": "invalid_request", "error_description": echoed}).to_string(),
                json!({"error": echoed, "trace_id": echoed, "correlation_id": echoed}).to_string(),
            ];
            for body in bodies {
                let e = refused(400, body.as_bytes(), &scrub);
                let shown = format!("{e} {e:?}");
                assert_eq!(leaks(&shown), None, "pad {pad}: {shown}");
            }
        }
        let e = scrub.scrub_error(TokenError::Network(format!("weird {SECRET}")));
        assert_eq!(leaks(&e.to_string()), None);
    }

    #[test]
    fn jwts_in_error_bodies_are_scrubbed() {
        let jwt = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL28ifQ.c2lnbmF0dXJl";
        let body = json!({"error": "invalid_grant", "error_description": format!("token {jwt} was refused")})
            .to_string();
        let e = refused(400, body.as_bytes(), &Scrubber::new(""));
        let shown = e.to_string();
        assert!(
            !shown.contains("eyJ0eXAi") && shown.contains("<redacted token>"),
            "{shown}"
        );
        let e = refused(502, jwt.as_bytes(), &Scrubber::new(""));
        assert!(!e.to_string().contains("eyJ0eXAi"), "{e}");
    }

    #[test]
    fn settings_debug_hides_the_secret() {
        let s = settings("http://127.0.0.1:1/t/oauth2/v2.0/token");
        let shown = format!("{s:?}");
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(!shown.contains("8Q~"), "{shown}");
        assert!(shown.contains("client-1"));
    }

    fn settings(url: &str) -> ClientSecretSettings {
        ClientSecretSettings {
            token_url: url.into(),
            client_id: "client-1".into(),
            client_secret: SecretString::from(SECRET),
            scope: "https://outlook.office365.com/.default".into(),
            extra_roots: vec![],
            timeout: Duration::from_secs(5),
        }
    }

    /// Reads one HTTP/1.1 request (head and Content-Length body), answers `response`.
    async fn answer<S>(mut sock: S, response: &str) -> (String, String)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        let head_end = loop {
            let n = sock.read(&mut tmp).await.unwrap();
            assert!(n > 0, "client closed early");
            buf.extend_from_slice(&tmp[..n]);
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let n = sock.read(&mut tmp).await.unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&tmp[..n]);
        }
        let body = String::from_utf8(buf[head_end..head_end + len].to_vec()).unwrap();
        sock.write_all(response.as_bytes()).await.unwrap();
        sock.shutdown().await.ok();
        (head, body)
    }

    /// Serves one canned HTTP response per connection; returns every request it saw.
    async fn serve(
        responses: Vec<String>,
    ) -> (String, tokio::task::JoinHandle<Vec<(String, String)>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = tokio::spawn(async move {
            let mut seen = Vec::new();
            for response in responses {
                let (sock, _) = listener.accept().await.unwrap();
                seen.push(answer(sock, &response).await);
            }
            seen
        });
        (format!("http://{addr}/tenant-1/oauth2/v2.0/token"), handle)
    }

    fn http_response(status: &str, extra: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json; charset=utf-8\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn form_decode(body: &str) -> Vec<(String, String)> {
        fn dec(s: &str) -> String {
            let bytes = s.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < bytes.len() {
                match bytes[i] {
                    b'+' => out.push(b' '),
                    b'%' => {
                        out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                        i += 2;
                    }
                    b => out.push(b),
                }
                i += 1;
            }
            String::from_utf8(out).unwrap()
        }
        body.split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (dec(k), dec(v))
            })
            .collect()
    }

    /// Collects log output so tests can assert what never appears in it.
    #[derive(Clone, Default)]
    struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for LogBuffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl LogBuffer {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    #[tokio::test]
    async fn loopback_success_and_rejection() {
        // Everything at TRACE (ours, reqwest's, hyper's) goes to `logs`; this runtime is
        // single-threaded, so the thread-local default covers the spawned server too.
        let logs = LogBuffer::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _log_guard = tracing::subscriber::set_default(subscriber);

        let (url, server) = serve(vec![
            http_response(
                "200 OK",
                "",
                r#"{"token_type":"Bearer","expires_in":"3599","ext_expires_in":3599,"access_token":"eyJ0eXAiOiJKV1Qi.payload.sig"}"#,
            ),
            http_response(
                "401 Unauthorized",
                "Retry-After: 7\r\n",
                r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: tr-1\r\nCorrelation ID: co-1","error_codes":[7000215],"trace_id":"tr-1","correlation_id":"co-1"}"#,
            ),
        ])
        .await;
        let source: Arc<dyn TokenSource> =
            Arc::new(ClientSecretSource::new(settings(&url)).unwrap());
        assert_eq!(
            source.describe(),
            "client secret for app client-1 in tenant tenant-1"
        );

        let token = source.fetch().await.unwrap();
        assert_eq!(token.expose(), "eyJ0eXAiOiJKV1Qi.payload.sig");
        assert_eq!(token.expires_in(), 3599);

        let e = source.fetch().await.unwrap_err();
        assert!(e.is_config());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        match &e {
            TokenError::Rejected {
                status,
                codes,
                trace_id,
                ..
            } => {
                assert_eq!(*status, 401);
                assert_eq!(codes, &vec![7000215]);
                assert_eq!(trace_id.as_deref(), Some("tr-1"));
            }
            other => panic!("{other:?}"),
        }
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(SECRET) && !shown.contains("8Q~"), "{shown}");

        // tracing's interest cache is process-global, so when tests run in parallel an
        // individual event can be missed; only assert that logging was captured at all, and
        // that nothing captured holds a secret.
        let logged = logs.text();
        assert!(!logged.is_empty(), "no log output captured");
        for needle in [
            SECRET,
            form_encode(SECRET).as_str(),
            "8Q~",
            "eyJ0eXAiOiJKV1Qi",
        ] {
            assert!(
                !logged.contains(needle),
                "{needle} leaked into logs: {logged}"
            );
        }

        let seen = server.await.unwrap();
        assert_eq!(seen.len(), 2);
        for (head, body) in &seen {
            assert!(
                head.starts_with("POST /tenant-1/oauth2/v2.0/token HTTP/1.1\r\n"),
                "{head}"
            );
            let head_lc = head.to_ascii_lowercase();
            assert!(
                head_lc.contains("content-type: application/x-www-form-urlencoded"),
                "{head}"
            );
            assert!(!head_lc.contains("authorization:"), "{head}");
            let form = form_decode(body);
            let get = |k: &str| {
                form.iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.as_str())
            };
            assert_eq!(get("client_id"), Some("client-1"));
            assert_eq!(get("client_secret"), Some(SECRET), "encoded exactly once");
            assert_eq!(get("scope"), Some("https://outlook.office365.com/.default"));
            assert_eq!(get("grant_type"), Some("client_credentials"));
            assert_eq!(form.len(), 4);
        }
    }

    #[tokio::test]
    async fn loopback_timeout_and_refused() {
        // A server that accepts and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(sock);
        });
        let mut s = settings(&format!("http://{addr}/t/oauth2/v2.0/token"));
        s.timeout = Duration::from_millis(200);
        let e = ClientSecretSource::new(s)
            .unwrap()
            .fetch()
            .await
            .unwrap_err();
        assert_eq!(e, TokenError::Timeout);
        assert!(e.is_transient());
        hold.abort();

        // Nothing listening: a network error.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let e = ClientSecretSource::new(settings(&format!("http://{addr}/t/oauth2/v2.0/token")))
            .unwrap()
            .fetch()
            .await
            .unwrap_err();
        assert!(matches!(e, TokenError::Network(_)), "{e:?}");
        assert!(e.is_transient());

        // A URL that cannot be parsed: configuration.
        let e = ClientSecretSource::new(settings("login.microsoftonline.com/t"))
            .unwrap()
            .fetch()
            .await
            .unwrap_err();
        assert!(matches!(e, TokenError::InvalidUrl { .. }), "{e:?}");
        assert!(e.is_config());
    }

    /// The HTTPS client really uses our rustls configuration: a server whose certificate
    /// chains to an `extra_roots` CA is trusted, and without that root it is refused.
    #[tokio::test]
    async fn loopback_https_with_extra_root() {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut handshakes = 0;
            for _ in 0..2 {
                let (sock, _) = listener.accept().await.unwrap();
                let Ok(tls) = acceptor.accept(sock).await else {
                    continue; // the client without the root refuses the handshake
                };
                handshakes += 1;
                answer(
                    tls,
                    &http_response(
                        "200 OK",
                        "",
                        r#"{"token_type":"Bearer","expires_in":3599,"access_token":"tls-token"}"#,
                    ),
                )
                .await;
            }
            handshakes
        });
        let url = format!("https://{addr}/tenant-1/oauth2/v2.0/token");

        let mut trusted = settings(&url);
        trusted.extra_roots = vec![ca.der().clone()];
        let token = ClientSecretSource::new(trusted)
            .unwrap()
            .fetch()
            .await
            .unwrap();
        assert_eq!(token.expose(), "tls-token");

        let e = ClientSecretSource::new(settings(&url))
            .unwrap()
            .fetch()
            .await
            .unwrap_err();
        assert!(matches!(e, TokenError::Network(_)), "{e:?}");
        assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
        assert_eq!(server.await.unwrap(), 1);
    }
}
