//! The sandbox's token endpoint: Entra's `POST /{tenant}/oauth2/v2.0/token` for the client
//! credentials grant, over HTTPS. This file is the driver: one task per connection reads
//! requests, answers them, and keeps the connection alive until the peer closes, asks to
//! close, idles out, or the sandbox shuts down.
//!
//! What it must get right is Entra's behaviour as the relay sees it (reference §1.2, §1.7,
//! §1.8): success bodies with integer `expires_in`, error bodies with `AADSTSnnnn:` text,
//! `error_codes`, trace and correlation IDs, 401 for `invalid_client`, and the realistic
//! mistakes (secret ID instead of value, wrong scope, a Graph token). The delegated flows
//! (device code endpoint, device code and refresh token grants) are `device.rs`. Those rules live in
//! `entra.rs`, the HTTP/1.1 parsing and encoding in `http.rs`, both without I/O; this file
//! adds what needs the shared state: the failure switches (`TokenFailure`), held requests
//! (`Sandbox::hold_token_requests`), counting, and remembering each token issued
//! (`issued.rs`) so SMTP AUTH can check it. Header block capped at 16 KiB, body at 64 KiB.
//! Neither tokens nor secrets are ever logged.

mod device;
mod entra;
mod federation;
mod http;
mod imds;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::assertion::Expected;
use super::clock::unix_now;
use super::shared::{Shared, TokenFailure};
use crate::sync::Lock as _;
use entra::{decide, error_response, mint, App, EntraError, Issuer, TokenRequest};
use http::{
    encode_response, parse_basic, parse_form, parse_head, token_path_tenant, Head, Response,
};

pub(crate) use entra::{is_guid, random_guid};
pub(crate) use imds::serve as serve_imds;

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Answering a request

/// Answers one request. Counts every POST to the token path; while token requests are held
/// (`Sandbox::hold_token_requests`), such a POST is counted on arrival and answered on
/// release. `None`: the sandbox shut down while the request was held.
async fn handle(shared: &Shared, head: &Head, body: &[u8]) -> Option<Response> {
    let correlation = head.header("client-request-id");
    if let Some(tenant) = device::devicecode_path_tenant(&head.target) {
        return Some(device::answer_devicecode(
            shared,
            tenant,
            &parse_form(body),
            correlation,
        ));
    }
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
    if let Some(filler) = shared.opts.echo_token_requests {
        return echo(filler, body);
    }
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
    if device::is_delegated_grant(form.get("grant_type").map(String::as_str)) {
        return device::answer_grant(shared, tenant, &form, correlation);
    }
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
    let federated = |assertion: &str| {
        let minted = shared.federation.lookup(assertion);
        let (client_id, fics) = (&shared.opts.client_id, &shared.opts.federated_credentials);
        federation::check(assertion, client_id, fics, minted.as_ref(), unix_now())
    };
    // Certificate assertions are checked against the registered certificates and the URL
    // this request was sent to (`aud`).
    let token_url = format!(
        "https://{}{}",
        head.header("host").unwrap_or(""),
        head.target
    );
    let check_assertion = |jws: &str| {
        let expected = Expected {
            token_url: &token_url,
            client_id: &shared.opts.client_id,
            now: unix_now(),
        };
        // Every assertion the federated check leaves (its own issuer is the app) is a
        // certificate's.
        Some(match shared.assertions.locked().check(jws, &expected) {
            Ok(_) => Ok(()),
            Err(r) => Err(EntraError::new(r.status, r.error, r.code, r.text)),
        })
    };
    let app = App {
        tenant: &shared.opts.tenant,
        client_id: &shared.opts.client_id,
        client_secret: shared.opts.client_secret.expose_secret(),
        assertion_checks: &[&federated, &check_assertion],
    };
    match decide(&app, &req) {
        Ok(grant) => {
            let issuer = Issuer {
                tenant_id: &shared.tenant_id,
                app_oid: &shared.app_oid,
                client_id: &shared.opts.client_id,
                app_roles: &shared.opts.app_roles,
                lifetime: shared.token_lifetime(),
            };
            let (token, issued) = mint(&issuer, &grant, unix_now());
            let lifetime = issuer.lifetime.as_secs();
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

/// The answer of an endpoint that echoes what it got (`SandboxOptions::echo_token_requests`).
fn echo(filler: usize, body: &[u8]) -> Response {
    Response {
        status: 400,
        body: format!("{}{}", ".".repeat(filler), String::from_utf8_lossy(body)),
        retry_after: false,
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
