//! Entra's delegated flows as the sandbox plays them (reference §1.6, §1.10): the device code
//! endpoint `POST /{tenant}/oauth2/v2.0/devicecode`, and the token endpoint's
//! `urn:ietf:params:oauth:grant-type:device_code` and `refresh_token` grants.
//!
//! The app registration is a public client for these grants ("Allow public client flows"):
//! no secret is needed, and one sent anyway gets AADSTS700025, as Entra answers. Checks run
//! in Entra's order: tenant, client, credential, then the grant's own parameters. The state
//! (device codes, refresh tokens and their rotation) is `sandbox::delegated`; the pure checks
//! and the minting of a delegated token live here, with `answer_*` as thin glue to the shared
//! state.
//!
//! Which texts come from where: the OAuth `error` classes (`authorization_pending`,
//! `authorization_declined`, `bad_verification_code`, `expired_token`), AADSTS700025 with
//! its text, and the codes AADSTS70008 and 50173 for refused refresh tokens are from the
//! reference (§1.6, §1.8). `slow_down` is RFC 8628's. The other AADSTS numbers and all the
//! other wording are the sandbox's plausible stand-ins, not checked against Entra.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::json;

use super::entra::{error_response, key_thumbprint, random_b64url, random_guid, EntraError};
use super::http::Response;
use crate::sandbox::clock::unix_now;
use crate::sandbox::delegated::{PollVerdict, RefreshVerdict};
use crate::sandbox::issued::{IssuedToken, EXCHANGE_AUDIENCES};
use crate::sandbox::shared::Shared;
use crate::sync::Lock as _;

/// The device code grant type (RFC 8628 §3.4).
pub(super) const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// The tenant of a device code path (`/{tenant}/oauth2/v2.0/devicecode`).
pub(super) fn devicecode_path_tenant(target: &str) -> Option<&str> {
    let path = target.split('?').next().unwrap_or(target);
    let (tenant, tail) = path.strip_prefix('/')?.split_once('/')?;
    (tail == "oauth2/v2.0/devicecode" && !tenant.is_empty()).then_some(tenant)
}

/// True for the grants this file answers.
pub(super) fn is_delegated_grant(grant_type: Option<&str>) -> bool {
    matches!(grant_type, Some(DEVICE_CODE_GRANT | "refresh_token"))
}

/// Tenant, client and (absent) credential of a public client request, in Entra's order.
fn check_client(
    app_tenant: &str,
    app_client_id: &str,
    tenant: &str,
    form: &HashMap<String, String>,
) -> Result<(), EntraError> {
    let tenant_ok =
        tenant.eq_ignore_ascii_case(app_tenant) || tenant.eq_ignore_ascii_case("organizations");
    if !tenant_ok {
        return Err(EntraError::new(
            400,
            "invalid_request",
            90002,
            format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."),
        ));
    }
    let Some(client_id) = form.get("client_id") else {
        return Err(missing("client_id"));
    };
    if !client_id.eq_ignore_ascii_case(app_client_id) {
        return Err(EntraError::new(
            400,
            "unauthorized_client",
            700016,
            format!("Application with identifier '{client_id}' was not found in the directory '{app_tenant}'."),
        ));
    }
    if form.contains_key("client_secret") || form.contains_key("client_assertion") {
        return Err(EntraError::new(
            401,
            "invalid_client",
            700025,
            "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.".into(),
        ));
    }
    Ok(())
}

fn missing(name: &str) -> EntraError {
    EntraError::new(
        400,
        "invalid_request",
        900144,
        format!("The request body must contain the following parameter: '{name}'."),
    )
}

/// A delegated scope for SMTP: `{Exchange resource}/SMTP.Send` (or `/.default`), plus
/// `offline_access` for a refresh token. Returns the audience and whether a refresh token is
/// wanted.
fn delegated_scope(scope: &str) -> Result<(String, bool), EntraError> {
    let mut aud = None;
    let mut offline = false;
    for item in scope.split_whitespace() {
        if item == "offline_access" {
            offline = true;
        } else if let Some((resource, permission)) = item.rsplit_once('/') {
            let resource = resource.trim_end_matches('/').to_ascii_lowercase();
            let known = EXCHANGE_AUDIENCES.iter().find(|a| **a == resource);
            if let (Some(a), "SMTP.Send" | ".default") = (known, permission) {
                aud = Some(a.to_string());
            }
        }
    }
    match aud {
        Some(aud) => Ok((aud, offline)),
        None => Err(EntraError::new(
            400,
            "invalid_scope",
            70011,
            format!("The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."),
        )),
    }
}

/// The error for a device code poll that did not succeed.
fn poll_error(verdict: &PollVerdict) -> EntraError {
    let (error, code, text) = match verdict {
        PollVerdict::Pending => (
            "authorization_pending",
            70016,
            "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
        ),
        PollVerdict::SlowDown => (
            "slow_down",
            70016,
            "OAuth 2.0 device flow error. Polling faster than the interval; slow down.",
        ),
        PollVerdict::Expired => (
            "expired_token",
            70020,
            "The provided value for the input parameter 'device_code' is not valid. This device code has expired.",
        ),
        PollVerdict::Declined => (
            "authorization_declined",
            70000,
            "The user declined the sign-in request.",
        ),
        PollVerdict::Unknown | PollVerdict::Approved { .. } => (
            "bad_verification_code",
            70019,
            "The provided value for the input parameter 'device_code' is not valid.",
        ),
    };
    EntraError::new(400, error, code, text.to_string())
}

/// The error for a refresh token that does not work.
fn refresh_error(verdict: &RefreshVerdict) -> EntraError {
    let (code, text) = match verdict {
        RefreshVerdict::Reused => (70008, "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource."),
        RefreshVerdict::Revoked => (50173, "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password."),
        RefreshVerdict::Unknown | RefreshVerdict::Rotate { .. } => (9002313, "Invalid request. Request is malformed or invalid."),
    };
    EntraError::new(400, "invalid_grant", code, text.to_string())
}

/// The claims of a delegated token that differ from app-only ones.
pub(super) struct User<'a> {
    pub upn: &'a str,
    pub aud: &'a str,
    pub tenant_id: &'a str,
    pub client_id: &'a str,
    pub lifetime: u64,
}

/// A JWT-shaped delegated access token with v1 claims (reference §1.10): `scp` `SMTP.Send`,
/// `upn` and `unique_name` the user, no `roles`.
pub(super) fn mint_delegated(user: &User<'_>, now: u64) -> (String, IssuedToken) {
    let nbf = now.saturating_sub(300);
    let exp = now + user.lifetime;
    let iss = format!("https://sts.windows.net/{}/", user.tenant_id);
    let header = format!(
        r#"{{"typ":"JWT","alg":"RS256","x5t":"{x5t}","kid":"{x5t}"}}"#,
        x5t = key_thumbprint()
    );
    let oid = random_guid();
    let payload = json!({
        "aud": user.aud, "iss": iss, "iat": nbf, "nbf": nbf, "exp": exp,
        "acr": "1", "aio": random_b64url(48), "amr": ["pwd"],
        "app_displayname": "smtp-oauth-relay sandbox", "appid": user.client_id, "appidacr": "0",
        "idtyp": "user", "ipaddr": "127.0.0.1", "name": user.upn, "oid": oid,
        "rh": format!("0.{}.", random_b64url(40)), "scp": "SMTP.Send", "sid": random_guid(),
        "sub": random_b64url(32), "tid": user.tenant_id, "unique_name": user.upn,
        "upn": user.upn, "uti": random_b64url(16), "ver": "1.0",
    });
    let token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        random_b64url(256)
    );
    let issued = IssuedToken {
        aud: user.aud.to_string(),
        roles: Vec::new(),
        nbf,
        exp,
        upn: Some(user.upn.to_string()),
        scp: Some("SMTP.Send".to_string()),
    };
    (token, issued)
}

/// "Now" for device codes: tokio's clock, so tests on a paused clock see virtual time.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Answers `POST /{tenant}/oauth2/v2.0/devicecode`.
pub(super) fn answer_devicecode(
    shared: &Shared,
    tenant: &str,
    form: &HashMap<String, String>,
    correlation: Option<&str>,
) -> Response {
    let opts = &shared.opts;
    let checked = check_client(&opts.tenant, &opts.client_id, tenant, form).and_then(|()| {
        let scope = form.get("scope").ok_or_else(|| missing("scope"))?;
        delegated_scope(scope).map(|_| scope.clone())
    });
    let scope = match checked {
        Ok(s) => s,
        Err(e) => return error_response(&e, correlation),
    };
    let (expires_in, interval) = (opts.device_code_lifetime, opts.device_code_interval);
    let (device_code, user_code) =
        shared
            .delegated
            .locked()
            .start(&scope, now(), expires_in, interval);
    let uri = "https://microsoft.com/devicelogin";
    let body = json!({
        "user_code": user_code,
        "device_code": device_code,
        "verification_uri": uri,
        "expires_in": expires_in.as_secs(),
        "interval": interval.as_secs(),
        "message": format!("To sign in, use a web browser to open the page {uri} and enter the code {user_code} to authenticate."),
    });
    Response {
        status: 200,
        body: body.to_string(),
        retry_after: false,
    }
}

/// Answers a device code or refresh token grant at the token endpoint.
pub(super) fn answer_grant(
    shared: &Shared,
    tenant: &str,
    form: &HashMap<String, String>,
    correlation: Option<&str>,
) -> Response {
    let opts = &shared.opts;
    if let Err(e) = check_client(&opts.tenant, &opts.client_id, tenant, form) {
        return error_response(&e, correlation);
    }
    let (upn, scope) = if form.get("grant_type").map(String::as_str) == Some(DEVICE_CODE_GRANT) {
        let Some(code) = form.get("device_code") else {
            return error_response(&missing("device_code"), correlation);
        };
        match shared.delegated.locked().poll(code, now()) {
            PollVerdict::Approved { upn, scope } => (upn, scope),
            other => return error_response(&poll_error(&other), correlation),
        }
    } else {
        let Some(token) = form.get("refresh_token") else {
            return error_response(&missing("refresh_token"), correlation);
        };
        match shared.delegated.locked().refresh(token) {
            RefreshVerdict::Rotate { upn, scope } => (upn, scope),
            other => return error_response(&refresh_error(&other), correlation),
        }
    };
    let (aud, offline) = match delegated_scope(&scope) {
        Ok(s) => s,
        Err(e) => return error_response(&e, correlation),
    };
    let lifetime = opts.token_lifetime.as_secs();
    let user = User {
        upn: &upn,
        aud: &aud,
        tenant_id: &shared.tenant_id,
        client_id: &opts.client_id,
        lifetime,
    };
    let (token, issued) = mint_delegated(&user, unix_now());
    shared.tokens.insert(token.clone(), issued);
    shared
        .counters
        .tokens_issued
        .fetch_add(1, Ordering::Relaxed);
    let mut body = json!({
        "token_type": "Bearer",
        "scope": format!("{aud}/SMTP.Send"),
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": token,
    });
    if offline {
        // Rotation: every answer carries a new refresh token; the one used is now spent.
        body["refresh_token"] = json!(shared.delegated.locked().issue_refresh(&upn, &scope));
    }
    Response {
        status: 200,
        body: body.to_string(),
        retry_after: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "11111111-2222-3333-4444-555555555555";
    const APP: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn paths_and_grants() {
        assert_eq!(
            devicecode_path_tenant("/t1/oauth2/v2.0/devicecode"),
            Some("t1")
        );
        assert_eq!(devicecode_path_tenant("/t1/oauth2/v2.0/token"), None);
        assert!(is_delegated_grant(Some(DEVICE_CODE_GRANT)));
        assert!(is_delegated_grant(Some("refresh_token")));
        assert!(!is_delegated_grant(Some("client_credentials")));
    }

    #[test]
    fn public_client_checks_in_entras_order() {
        let ok = form(&[("client_id", APP)]);
        assert!(check_client(TENANT, APP, TENANT, &ok).is_ok());
        assert!(check_client(TENANT, APP, "organizations", &ok).is_ok());
        let code = |tenant: &str, f: &HashMap<String, String>| {
            check_client(TENANT, APP, tenant, f).unwrap_err().code
        };
        assert_eq!(code("contoso.example", &ok), 90002);
        assert_eq!(code(TENANT, &form(&[])), 900144);
        assert_eq!(code(TENANT, &form(&[("client_id", "other")])), 700016);
        let with_secret = form(&[("client_id", APP), ("client_secret", "abc8Q~x")]);
        let e = check_client(TENANT, APP, TENANT, &with_secret).unwrap_err();
        assert_eq!((e.status, e.error, e.code), (401, "invalid_client", 700025));
    }

    #[test]
    fn delegated_scopes() {
        assert_eq!(
            delegated_scope("https://outlook.office.com/SMTP.Send offline_access").unwrap(),
            ("https://outlook.office.com".to_string(), true)
        );
        assert_eq!(
            delegated_scope("https://outlook.office365.com/SMTP.Send").unwrap(),
            ("https://outlook.office365.com".to_string(), false)
        );
        for bad in [
            "https://graph.microsoft.com/Mail.Send offline_access",
            "offline_access",
            "https://outlook.office.com/SMTP.AccessAsUser.All",
        ] {
            assert_eq!(delegated_scope(bad).unwrap_err().code, 70011, "{bad}");
        }
    }

    #[test]
    fn poll_and_refresh_errors_use_the_oauth_classes() {
        let class = |v: PollVerdict| poll_error(&v).error;
        assert_eq!(class(PollVerdict::Pending), "authorization_pending");
        assert_eq!(class(PollVerdict::SlowDown), "slow_down");
        assert_eq!(class(PollVerdict::Expired), "expired_token");
        assert_eq!(class(PollVerdict::Declined), "authorization_declined");
        assert_eq!(class(PollVerdict::Unknown), "bad_verification_code");
        let e = refresh_error(&RefreshVerdict::Revoked);
        assert_eq!((e.error, e.code), ("invalid_grant", 50173));
        assert_eq!(refresh_error(&RefreshVerdict::Reused).code, 70008);
    }

    #[test]
    fn delegated_tokens_carry_scp_and_upn_and_no_roles() {
        let user = User {
            upn: "alice@sandbox.example",
            aud: "https://outlook.office.com",
            tenant_id: TENANT,
            client_id: APP,
            lifetime: 3599,
        };
        let (token, issued) = mint_delegated(&user, 1_000_000);
        let payload = token.split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(claims["scp"], "SMTP.Send");
        assert_eq!(claims["upn"], "alice@sandbox.example");
        assert_eq!(claims["unique_name"], "alice@sandbox.example");
        assert_eq!(claims["aud"], "https://outlook.office.com");
        assert!(claims.get("roles").is_none());
        assert!(issued.accepts(
            "alice@sandbox.example",
            1_000_000,
            crate::sandbox::issued::SMTP_ROLE,
            &[]
        ));
        assert!(!issued.accepts(
            "relay@sandbox.example",
            1_000_000,
            crate::sandbox::issued::SMTP_ROLE,
            &[]
        ));
    }
}
