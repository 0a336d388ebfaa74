//! Entra's rules for the client credentials grant, without I/O: which request gets a token
//! and which gets which `AADSTS` error, the error body Entra sends, and the token minted.
//!
//! Why apart from the HTTP driver: these are the texts and the order of checks the relay's
//! diagnostics are written against (reference §1.2, §1.7, §1.8, §1.10), so they are plain
//! functions over data, tested here without a socket. [`decide`] checks in Entra's order:
//! tenant, grant type, client, credential, scope; [`classify_scope`] knows that a client
//! credentials scope is exactly one resource suffixed `/.default`. Tokens are JWT-shaped
//! (v1 claims) but unsigned: what makes one genuine is the registry in `issued.rs`. The
//! secret is compared in constant time and never appears in an error text.

use std::sync::OnceLock;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::json;

use super::http::Response;
use crate::sandbox::clock::UtcTime;
use crate::sandbox::issued::{IssuedToken, EXCHANGE_AUDIENCES, GRAPH_AUDIENCE};

// ---------------------------------------------------------------------------------------
// The grant decision (pure)

/// Checks a client assertion, as Entra would (`assertion.rs` behind the sandbox's lock).
pub(crate) type CheckAssertion<'a> = dyn Fn(&str) -> Result<(), EntraError> + 'a;

/// The registered app, as the decision needs it.
pub(crate) struct App<'a> {
    pub tenant: &'a str,
    pub client_id: &'a str,
    pub client_secret: &'a str,
    /// Checks a certificate client assertion (`assertion.rs`); `None`: no certificate is
    /// registered, so every assertion names an unknown key.
    pub check_assertion: Option<&'a CheckAssertion<'a>>,
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
    pub(super) fn new(status: u16, error: &'static str, code: u32, text: String) -> Self {
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

    pub(super) fn bad_secret(client_id: &str) -> Self {
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

    pub(super) fn expired_secret(client_id: &str) -> Self {
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
        (None, Some(jws)) => {
            match app.check_assertion {
                Some(check) => check(jws)?,
                None => return Err(EntraError::new(
                    401,
                    "invalid_client",
                    700027,
                    "Client assertion contains an invalid signature. [Reason - The key was not \
                     found.]"
                        .to_string(),
                )),
            }
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
// Error bodies

/// Entra's error body (reference §1.8).
pub(super) fn error_response(err: &EntraError, correlation_id: Option<&str>) -> Response {
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

/// The claims every token carries whatever the request: who issued it, for which app, and
/// for how long.
pub(super) struct Issuer<'a> {
    /// `tid` (and the tenant in `iss`): the tenant GUID.
    pub tenant_id: &'a str,
    /// `oid` and `sub`: the service principal's object ID.
    pub app_oid: &'a str,
    /// `appid`: the application (client) ID.
    pub client_id: &'a str,
    /// `roles` of Exchange tokens: the app's consented application permissions.
    pub app_roles: &'a [String],
    /// `expires_in`; `exp` is this long after the request.
    pub lifetime: Duration,
}

/// Builds a JWT-shaped access token with v1 claims (reference §1.10).
pub(super) fn mint(issuer: &Issuer<'_>, grant: &Grant, now: u64) -> (String, IssuedToken) {
    let (aud, roles) = match grant {
        Grant::Exchange { aud } => (aud.clone(), issuer.app_roles.to_vec()),
        Grant::Graph => (GRAPH_AUDIENCE.to_string(), vec!["Mail.Send".to_string()]),
    };
    let lifetime = issuer.lifetime.as_secs();
    // Entra back-dates nbf/iat by five minutes to allow for clock skew.
    let nbf = now.saturating_sub(300);
    let exp = now + lifetime;
    let iss = format!("https://sts.windows.net/{}/", issuer.tenant_id);
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
        "appid": issuer.client_id,
        "appidacr": "1",
        "idp": iss,
        "idtyp": "app",
        "oid": issuer.app_oid,
        "rh": format!("0.{}.", random_b64url(40)),
        "roles": roles,
        "sid": random_guid(),
        "sub": issuer.app_oid,
        "tid": issuer.tenant_id,
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

#[cfg(test)]
mod tests {
    use super::*;

    const APP: App<'static> = App {
        tenant: "11111111-2222-3333-4444-555555555555",
        client_id: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        client_secret: "abc8Q~0123456789abcdefghijklmnopqrstuvwx",
        check_assertion: None,
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
    fn guids() {
        for _ in 0..20 {
            assert!(is_guid(&random_guid()));
        }
        assert!(is_guid("11111111-2222-3333-4444-555555555555"));
        assert!(!is_guid("contoso.onmicrosoft.com"));
        assert!(!is_guid("11111111-2222-3333-4444-55555555555"));
    }
}
