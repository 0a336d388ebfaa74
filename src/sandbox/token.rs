//! The sandbox's token endpoint: Entra's `POST /{tenant}/oauth2/v2.0/token` for the client
//! credentials grant, over HTTPS.
//!
//! Why hand-written HTTP/1.1: the endpoint is one route with a form body, and a minimal
//! server (request line, headers, `Content-Length` body, keep-alive) keeps the sandbox free of
//! a web framework. Header block capped at 16 KiB, body at 64 KiB.
//!
//! What it must get right is Entra's behaviour as the relay sees it (reference §1.2, §1.7,
//! §1.8): success bodies with integer `expires_in`, error bodies with `AADSTSnnnn:` text,
//! `error_codes`, trace and correlation IDs, 401 for `invalid_client`, and the realistic
//! mistakes (secret ID instead of value, wrong scope, a Graph token). Tokens are JWT-shaped
//! (v1 claims, §1.10) but not signed; the sandbox remembers each one (`issued.rs`) so SMTP
//! AUTH can check it. Neither tokens nor secrets are ever logged.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use secrecy::ExposeSecret;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::clock::{unix_now, UtcTime};
use super::issued::{IssuedToken, EXCHANGE_AUDIENCES, GRAPH_AUDIENCE};
use super::shared::{Shared, TokenFailure};
use crate::sync::Lock as _;

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// The grant decision (pure)

/// The registered app, as the decision needs it.
pub(crate) struct App<'a> {
    pub tenant: &'a str,
    pub client_id: &'a str,
    pub client_secret: &'a str,
}

/// The fields of a token request that matter, after form and Basic decoding.
#[derive(Debug, Default, Clone)]
pub(crate) struct TokenRequest {
    pub tenant: String,
    pub grant_type: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_assertion: Option<String>,
    pub scope: Option<String>,
}

/// What kind of token to issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Grant {
    /// An Exchange token with this audience and the `SMTP.SendAsApp` role.
    Exchange { aud: String },
    /// A Graph token (`Mail.Send`): issued, but SMTP AUTH rejects it.
    Graph,
}

/// An Entra error: HTTP status, OAuth `error`, AADSTS code and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntraError {
    pub status: u16,
    pub error: &'static str,
    pub code: u32,
    pub text: String,
}

impl EntraError {
    fn new(status: u16, error: &'static str, code: u32, text: String) -> Self {
        EntraError {
            status,
            error,
            code,
            text,
        }
    }

    fn missing(name: &str) -> Self {
        Self::new(
            400,
            "invalid_request",
            900144,
            format!("The request body must contain the following parameter: '{name}'."),
        )
    }

    fn bad_secret(client_id: &str) -> Self {
        Self::new(
            401,
            "invalid_client",
            7000215,
            format!(
                "Invalid client secret provided. Ensure the secret being sent in the request is \
                 the client secret value, not the client secret ID, for a secret added to app \
                 '{client_id}'."
            ),
        )
    }

    fn expired_secret(client_id: &str) -> Self {
        Self::new(
            401,
            "invalid_client",
            7000222,
            format!(
                "The provided client secret keys for app '{client_id}' are expired. Visit the \
                 Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, \
                 or consider using certificate credentials for added security: \
                 https://aka.ms/certCreds."
            ),
        )
    }
}

/// Decides a client credentials request the way Entra does, in Entra's order: tenant,
/// grant type, client, credential, scope.
pub(crate) fn decide(app: &App<'_>, req: &TokenRequest) -> Result<Grant, EntraError> {
    let client_id = req.client_id.as_deref().unwrap_or_default();
    if ["common", "organizations", "consumers"]
        .iter()
        .any(|t| req.tenant.eq_ignore_ascii_case(t))
    {
        return Err(EntraError::new(
            400,
            "invalid_request",
            50194,
            format!(
                "Application '{client_id}' is not configured as a multi-tenant application. \
                 Usage of the /common endpoint is not supported for such applications created \
                 after '10/15/2018'. Use a tenant-specific endpoint or configure the application \
                 to be multi-tenant."
            ),
        ));
    }
    if !req.tenant.eq_ignore_ascii_case(app.tenant) {
        return Err(EntraError::new(
            400,
            "invalid_request",
            90002,
            format!(
                "Tenant '{}' not found. Check to make sure you have the correct tenant ID and \
                 are signing into the correct cloud. Check with your subscription administrator, \
                 this may happen if there are no active subscriptions for the tenant.",
                req.tenant
            ),
        ));
    }
    match req.grant_type.as_deref() {
        None => return Err(EntraError::missing("grant_type")),
        Some("client_credentials") => {}
        Some(other) => {
            return Err(EntraError::new(
                400,
                "unsupported_grant_type",
                70003,
                format!("The app requested an unsupported grant type '{other}'."),
            ))
        }
    }
    let Some(client_id) = req.client_id.as_deref() else {
        return Err(EntraError::missing("client_id"));
    };
    if !client_id.eq_ignore_ascii_case(app.client_id) {
        return Err(EntraError::new(
            400,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory \
                 '{}'. This can happen if the application has not been installed by the \
                 administrator of the tenant or consented to by any user in the tenant. You may \
                 have sent your authentication request to the wrong tenant.",
                app.tenant
            ),
        ));
    }
    match (
        req.client_secret.as_deref(),
        req.client_assertion.as_deref(),
    ) {
        (Some(secret), _) => {
            if !constant_time_eq(secret.as_bytes(), app.client_secret.as_bytes()) {
                return Err(EntraError::bad_secret(client_id));
            }
        }
        (None, Some(_)) => {
            return Err(EntraError::new(
                401,
                "invalid_client",
                700027,
                "Client assertion contains an invalid signature. [Reason - The key was not \
                 found.]"
                    .to_string(),
            ))
        }
        (None, None) => {
            return Err(EntraError::new(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or \
                 'client_secret'."
                    .to_string(),
            ))
        }
    }
    let Some(scope) = req.scope.as_deref() else {
        return Err(EntraError::missing("scope"));
    };
    classify_scope(scope)
}

/// Client credentials scopes: exactly one resource, suffixed `/.default` (reference §1.2).
pub(crate) fn classify_scope(scope: &str) -> Result<Grant, EntraError> {
    let items: Vec<&str> = scope.split_whitespace().collect();
    if items.is_empty() {
        return Err(EntraError::missing("scope"));
    }
    let mut resources = Vec::new();
    for item in &items {
        let Some(resource) = item.strip_suffix("/.default") else {
            return Err(EntraError::new(
                400,
                "invalid_scope",
                1002012,
                format!(
                    "The provided value for scope {scope} is not valid. Client credential flows \
                     must have a scope value with /.default suffixed to the resource identifier \
                     (application ID URI)."
                ),
            ));
        };
        let resource = resource.trim_end_matches('/').to_ascii_lowercase();
        if !resources.contains(&resource) {
            resources.push(resource);
        }
    }
    if resources.len() > 1 {
        return Err(EntraError::new(
            400,
            "invalid_scope",
            700022,
            format!(
                "The provided value for the input parameter scope is not valid because it \
                 contains more than one resource. Scope {scope} is not valid."
            ),
        ));
    }
    let resource = resources.remove(0);
    if let Some(aud) = EXCHANGE_AUDIENCES.iter().find(|a| **a == resource) {
        return Ok(Grant::Exchange {
            aud: (*aud).to_string(),
        });
    }
    if resource == GRAPH_AUDIENCE || resource == "00000003-0000-0000-c000-000000000000" {
        return Ok(Grant::Graph);
    }
    Err(EntraError::new(
        400,
        "invalid_scope",
        70011,
        format!(
            "The provided value for the input parameter 'scope' is not valid. The scope {scope} \
             is not valid."
        ),
    ))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---------------------------------------------------------------------------------------
// Minting (JWT-shaped, unsigned)

fn random_b64url(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The key thumbprint in every token header, fixed per process like a real signing key.
fn key_thumbprint() -> &'static str {
    static X5T: OnceLock<String> = OnceLock::new();
    X5T.get_or_init(|| random_b64url(20))
}

/// Builds a JWT-shaped access token with v1 claims (reference §1.10).
fn mint(shared: &Shared, grant: &Grant, now: u64) -> (String, IssuedToken) {
    let (aud, roles) = match grant {
        Grant::Exchange { aud } => (aud.clone(), shared.opts.app_roles.clone()),
        Grant::Graph => (GRAPH_AUDIENCE.to_string(), vec!["Mail.Send".to_string()]),
    };
    let lifetime = shared.opts.token_lifetime.as_secs();
    // Entra back-dates nbf/iat by five minutes to allow for clock skew.
    let nbf = now.saturating_sub(300);
    let exp = now + lifetime;
    let iss = format!("https://sts.windows.net/{}/", shared.tenant_id);
    // Written by hand to keep Entra's member order: real tokens start `eyJ0eXAiOiJKV1Qi`
    // (`{"typ":"JWT"`), a shape the relay's diagnostics may look for.
    let header = format!(
        r#"{{"typ":"JWT","alg":"RS256","x5t":"{x5t}","kid":"{x5t}"}}"#,
        x5t = key_thumbprint()
    );
    let payload = json!({
        "aud": aud,
        "iss": iss,
        "iat": nbf,
        "nbf": nbf,
        "exp": exp,
        "aio": random_b64url(48),
        "app_displayname": "smtp-oauth-relay sandbox",
        "appid": shared.opts.client_id,
        "appidacr": "1",
        "idp": iss,
        "idtyp": "app",
        "oid": shared.app_oid,
        "rh": format!("0.{}.", random_b64url(40)),
        "roles": roles,
        "sid": random_guid(),
        "sub": shared.app_oid,
        "tid": shared.tenant_id,
        "uti": random_b64url(16),
        "ver": "1.0",
    });
    let token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        random_b64url(256)
    );
    (
        token,
        IssuedToken {
            aud,
            roles,
            nbf,
            exp,
        },
    )
}

pub(crate) fn random_guid() -> String {
    let v: u128 = rand::random();
    let h = format!("{v:032x}");
    format!(
        "{}-{}-4{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[16..20],
        &h[20..32]
    )
}

pub(crate) fn is_guid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

// ---------------------------------------------------------------------------------------
// Form and header decoding (pure)

/// Decodes `application/x-www-form-urlencoded`: `+` is a space, `%XX` a byte. Malformed
/// escapes are kept literally. The first occurrence of a name wins.
pub(crate) fn parse_form(body: &[u8]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        out.entry(form_decode(name))
            .or_insert_with(|| form_decode(value));
    }
    out
}

pub(crate) fn form_decode(input: &[u8]) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < input.len() => match (hex(input[i + 1]), hex(input[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
pub(crate) fn parse_basic(header: &str) -> Option<(String, String)> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(rest.trim()).ok()?;
    let i = decoded.iter().position(|&b| b == b':')?;
    Some((form_decode(&decoded[..i]), form_decode(&decoded[i + 1..])))
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub method: String,
    pub target: String,
    /// `HTTP/1.0` closes by default.
    pub http10: bool,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn wants_close(&self) -> bool {
        match self.header("connection") {
            Some(v) if v.eq_ignore_ascii_case("close") => true,
            Some(v) if v.eq_ignore_ascii_case("keep-alive") => false,
            _ => self.http10,
        }
    }
}

/// Parses the head (request line and headers, without the blank line).
pub(crate) fn parse_head(head: &[u8]) -> Result<Head, &'static str> {
    let text = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().ok_or("empty request")?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line");
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err("unsupported HTTP version"),
    };
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or("malformed header line")?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Head {
        method: method.to_string(),
        target: target.to_string(),
        http10,
        headers,
    })
}

/// The tenant segment of `/{tenant}/oauth2/v2.0/token`, if that is the path.
pub(crate) fn token_path_tenant(target: &str) -> Option<&str> {
    let path = target.split('?').next().unwrap_or(target);
    let rest = path.strip_prefix('/')?;
    let (tenant, tail) = rest.split_once('/')?;
    (tail == "oauth2/v2.0/token" && !tenant.is_empty()).then_some(tenant)
}

// ---------------------------------------------------------------------------------------
// Responses

pub(crate) struct Response {
    status: u16,
    body: String,
    retry_after: bool,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Entra's error body (reference §1.8).
fn error_response(err: &EntraError, correlation_id: Option<&str>) -> Response {
    let now = UtcTime::now().entra();
    let trace_id = random_guid();
    let correlation_id = correlation_id
        .filter(|c| is_guid(c))
        .map(str::to_string)
        .unwrap_or_else(random_guid);
    let description = format!(
        "AADSTS{}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {now}",
        err.code, err.text
    );
    let body = json!({
        "error": err.error,
        "error_description": description,
        "error_codes": [err.code],
        "timestamp": now,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": format!("https://login.microsoftonline.com/error?code={}", err.code),
    });
    Response {
        status: err.status,
        body: body.to_string(),
        retry_after: err.status == 429,
    }
}

fn encode_response(resp: &Response, close: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json; charset=utf-8\r\n\
         Content-Length: {}\r\nCache-Control: no-store, no-cache\r\nPragma: no-cache\r\n",
        resp.status,
        reason(resp.status),
        resp.body.len()
    );
    if resp.retry_after {
        out.push_str("Retry-After: 1\r\n");
    }
    out.push_str(if close {
        "Connection: close\r\n\r\n"
    } else {
        "Connection: keep-alive\r\n\r\n"
    });
    out.push_str(&resp.body);
    out.into_bytes()
}

/// Answers one request. Counts every POST to the token path; while token requests are held
/// (`Sandbox::hold_token_requests`), such a POST is counted on arrival and answered on
/// release. `None`: the sandbox shut down while the request was held.
async fn handle(shared: &Shared, head: &Head, body: &[u8]) -> Option<Response> {
    let correlation = head.header("client-request-id");
    let Some(tenant) = token_path_tenant(&head.target) else {
        return Some(Response {
            status: 404,
            body: json!({"error": "not_found"}).to_string(),
            retry_after: false,
        });
    };
    if head.method != "POST" {
        let err = EntraError::new(
            400,
            "invalid_request",
            900561,
            "The endpoint only accepts POST requests. Received a GET request.".to_string(),
        );
        return Some(error_response(&err, correlation));
    }
    shared.count_token_request();
    if !shared.token_request_released().await {
        return None;
    }
    Some(answer(shared, tenant, head, body))
}

/// Answers a counted token request.
fn answer(shared: &Shared, tenant: &str, head: &Head, body: &[u8]) -> Response {
    let correlation = head.header("client-request-id");
    let failure = *shared.token_failure.locked();
    match failure {
        Some(TokenFailure::Unavailable503) => {
            return Response {
                status: 503,
                body: json!({"error": "temporarily_unavailable"}).to_string(),
                retry_after: true,
            }
        }
        Some(TokenFailure::TooMany429) => {
            let err = EntraError::new(
                429,
                "temporarily_unavailable",
                90055,
                "TenantThrottlingError - There are too many pending requests for this tenant. \
                 Please try again later."
                    .to_string(),
            );
            return error_response(&err, correlation);
        }
        Some(TokenFailure::InvalidClient) => {
            return error_response(&EntraError::bad_secret(&shared.opts.client_id), correlation)
        }
        Some(TokenFailure::SecretExpired) => {
            return error_response(
                &EntraError::expired_secret(&shared.opts.client_id),
                correlation,
            )
        }
        None => {}
    }

    let mut form = parse_form(body);
    let basic = head.header("authorization").and_then(parse_basic);
    let (client_id, client_secret) = match basic {
        Some((id, secret)) => (Some(id), Some(secret)),
        None => (form.remove("client_id"), form.remove("client_secret")),
    };
    let req = TokenRequest {
        tenant: tenant.to_string(),
        grant_type: form.remove("grant_type"),
        client_id,
        client_secret,
        client_assertion: form.remove("client_assertion"),
        scope: form.remove("scope"),
    };
    let app = App {
        tenant: &shared.opts.tenant,
        client_id: &shared.opts.client_id,
        client_secret: shared.opts.client_secret.expose_secret(),
    };
    match decide(&app, &req) {
        Ok(grant) => {
            let (token, issued) = mint(shared, &grant, unix_now());
            let lifetime = shared.opts.token_lifetime.as_secs();
            let body = json!({
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": token,
            });
            shared.tokens.insert(token, issued);
            shared
                .counters
                .tokens_issued
                .fetch_add(1, Ordering::Relaxed);
            Response {
                status: 200,
                body: body.to_string(),
                retry_after: false,
            }
        }
        Err(err) => error_response(&err, correlation),
    }
}

// ---------------------------------------------------------------------------------------
// The connection driver

/// Why a request could not be read.
#[derive(Debug, PartialEq, Eq)]
enum ReadError {
    /// Answer with this status and close.
    Reject(u16, &'static str),
    /// The peer went away or the read failed: just close.
    Gone,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one request (head and body) from `stream`, keeping any pipelined surplus in `buf`.
/// `Ok(None)` is a clean end of the connection between requests.
async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Option<(Head, Vec<u8>)>, ReadError> {
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(pos) = find(buf, b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Reject(431, "header block too large"));
        }
        let n = stream.read(&mut chunk).await.map_err(|_| ReadError::Gone)?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::Gone)
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if head_end > MAX_HEAD {
        return Err(ReadError::Reject(431, "header block too large"));
    }
    let head = parse_head(&buf[..head_end]).map_err(|why| ReadError::Reject(400, why))?;
    if head.header("transfer-encoding").is_some() {
        return Err(ReadError::Reject(411, "chunked bodies are not supported"));
    }
    let length = match head.header("content-length") {
        None => 0,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| ReadError::Reject(400, "bad Content-Length"))?,
    };
    if length > MAX_BODY {
        return Err(ReadError::Reject(413, "body too large"));
    }
    let body_start = head_end + 4;
    while buf.len() < body_start + length {
        let n = stream.read(&mut chunk).await.map_err(|_| ReadError::Gone)?;
        if n == 0 {
            return Err(ReadError::Gone);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[body_start..body_start + length].to_vec();
    buf.drain(..body_start + length);
    Ok(Some((head, body)))
}

/// Serves one HTTPS connection until the peer closes, asks to close, idles out, or the
/// sandbox shuts down.
pub(crate) async fn serve(shared: Arc<Shared>, acceptor: TlsAcceptor, tcp: TcpStream) {
    let cancel = shared.cancel.clone();
    let mut stream = tokio::select! {
        _ = cancel.cancelled() => return,
        accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => match accepted {
            Ok(Ok(stream)) => stream,
            _ => return,
        },
    };
    let mut buf = Vec::new();
    loop {
        let read = tokio::select! {
            _ = cancel.cancelled() => return,
            read = tokio::time::timeout(IDLE_TIMEOUT, read_request(&mut stream, &mut buf)) => read,
        };
        let (resp, close) = match read {
            Err(_) | Ok(Ok(None)) | Ok(Err(ReadError::Gone)) => return,
            Ok(Err(ReadError::Reject(status, why))) => (
                Response {
                    status,
                    body: json!({"error": "invalid_request", "error_description": why}).to_string(),
                    retry_after: false,
                },
                true,
            ),
            Ok(Ok(Some((head, body)))) => match handle(&shared, &head, &body).await {
                Some(resp) => (resp, head.wants_close()),
                None => return,
            },
        };
        if write_response(&mut stream, &resp, close).await.is_err() || close {
            return;
        }
    }
}

async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    resp: &Response,
    close: bool,
) -> std::io::Result<()> {
    stream.write_all(&encode_response(resp, close)).await?;
    stream.flush().await?;
    if close {
        stream.shutdown().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: App<'static> = App {
        tenant: "11111111-2222-3333-4444-555555555555",
        client_id: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        client_secret: "abc8Q~0123456789abcdefghijklmnopqrstuvwx",
    };

    fn good() -> TokenRequest {
        TokenRequest {
            tenant: APP.tenant.to_string(),
            grant_type: Some("client_credentials".into()),
            client_id: Some(APP.client_id.into()),
            client_secret: Some(APP.client_secret.into()),
            client_assertion: None,
            scope: Some("https://outlook.office365.com/.default".into()),
        }
    }

    fn code(req: &TokenRequest) -> (u16, &'static str, u32) {
        let e = decide(&APP, req).expect_err("must fail");
        (e.status, e.error, e.code)
    }

    #[test]
    fn accepts_both_exchange_scopes_and_graph() {
        assert_eq!(
            decide(&APP, &good()),
            Ok(Grant::Exchange {
                aud: "https://outlook.office365.com".into()
            })
        );
        let mut r = good();
        r.scope = Some("https://outlook.office.com/.default".into());
        assert_eq!(
            decide(&APP, &r),
            Ok(Grant::Exchange {
                aud: "https://outlook.office.com".into()
            })
        );
        r.scope = Some("https://graph.microsoft.com/.default".into());
        assert_eq!(decide(&APP, &r), Ok(Grant::Graph));
        // The tenant may be written in any case.
        r.tenant = APP.tenant.to_uppercase();
        assert_eq!(decide(&APP, &r), Ok(Grant::Graph));
    }

    #[test]
    fn each_mistake_gets_its_aadsts_code() {
        let mut r = good();
        r.tenant = "common".into();
        assert_eq!(code(&r), (400, "invalid_request", 50194));
        r.tenant = "organizations".into();
        assert_eq!(code(&r), (400, "invalid_request", 50194));
        r.tenant = "contoso.onmicrosoft.com".into();
        assert_eq!(code(&r), (400, "invalid_request", 90002));

        let mut r = good();
        r.grant_type = Some("password".into());
        assert_eq!(code(&r), (400, "unsupported_grant_type", 70003));
        r.grant_type = None;
        assert_eq!(code(&r), (400, "invalid_request", 900144));

        let mut r = good();
        r.client_id = Some("bbbbbbbb-bbbb-cccc-dddd-eeeeeeeeeeee".into());
        assert_eq!(code(&r), (400, "unauthorized_client", 700016));

        let mut r = good();
        r.client_secret = None;
        assert_eq!(code(&r), (401, "invalid_client", 7000218));
        r.client_secret = Some("wrong".into());
        assert_eq!(code(&r), (401, "invalid_client", 7000215));
        // The secret ID (a GUID) pasted instead of the value.
        r.client_secret = Some("0f0f0f0f-1111-2222-3333-444444444444".into());
        assert_eq!(code(&r), (401, "invalid_client", 7000215));

        let mut r = good();
        r.scope = Some("https://outlook.office365.com/SMTP.SendAsApp".into());
        assert_eq!(code(&r), (400, "invalid_scope", 1002012));
        r.scope = Some("https%3A%2F%2Foutlook.office365.com%2F.default".into());
        assert_eq!(code(&r), (400, "invalid_scope", 1002012));
        r.scope = Some("https://example.com/.default".into());
        assert_eq!(code(&r), (400, "invalid_scope", 70011));
        r.scope = Some(
            "https://outlook.office365.com/.default https://graph.microsoft.com/.default".into(),
        );
        assert_eq!(code(&r), (400, "invalid_scope", 700022));
        r.scope = None;
        assert_eq!(code(&r), (400, "invalid_request", 900144));
    }

    #[test]
    fn secret_id_text_names_the_value_vs_id_trap() {
        let mut r = good();
        r.client_secret = Some("x".into());
        let e = decide(&APP, &r).unwrap_err();
        assert!(e.text.contains("not the client secret ID"), "{}", e.text);
        assert!(e.text.contains(APP.client_id));
    }

    #[test]
    fn form_decoding() {
        let f = parse_form(b"a=1&scope=https%3A%2F%2Fx%2F.default&s=a+b%7E&bad=%zz%4&a=2&flag");
        assert_eq!(f["a"], "1");
        assert_eq!(f["scope"], "https://x/.default");
        assert_eq!(f["s"], "a b~");
        assert_eq!(f["bad"], "%zz%4");
        assert_eq!(f["flag"], "");
        assert_eq!(form_decode(b"%"), "%");
        assert_eq!(form_decode(b"%4"), "%4");
        assert_eq!(form_decode(b"%41"), "A");
    }

    #[test]
    fn basic_auth_decoding() {
        // id "a b", secret "x:y~" (form-encoded before base64, RFC 6749 2.3.1)
        let header = format!("Basic {}", STANDARD.encode("a+b:x%3Ay~"));
        assert_eq!(parse_basic(&header), Some(("a b".into(), "x:y~".into())));
        assert_eq!(parse_basic("Bearer abc"), None);
        assert_eq!(parse_basic("Basic !!!"), None);
    }

    #[test]
    fn head_parsing_and_routing() {
        let head = parse_head(
            b"POST /t/oauth2/v2.0/token?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nConnection: close",
        )
        .unwrap();
        assert_eq!(head.method, "POST");
        assert_eq!(head.header("content-length"), Some("3"));
        assert!(head.wants_close());
        assert_eq!(token_path_tenant(&head.target), Some("t"));
        assert_eq!(token_path_tenant("/t/oauth2/token"), None);
        assert_eq!(token_path_tenant("//oauth2/v2.0/token"), None);
        assert!(parse_head(b"GET / HTTP/2").is_err());
        assert!(parse_head(b"GET /\r\n").is_err());
        assert!(!parse_head(b"GET / HTTP/1.1").unwrap().wants_close());
        assert!(parse_head(b"GET / HTTP/1.0").unwrap().wants_close());
    }

    #[test]
    fn guids() {
        for _ in 0..20 {
            assert!(is_guid(&random_guid()));
        }
        assert!(is_guid("11111111-2222-3333-4444-555555555555"));
        assert!(!is_guid("contoso.onmicrosoft.com"));
        assert!(!is_guid("11111111-2222-3333-4444-55555555555"));
    }
}
