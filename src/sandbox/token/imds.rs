//! The Instance Metadata Service stand-in: `GET /metadata/identity/oauth2/token` over plain
//! HTTP, as an Azure VM's IMDS answers it on `169.254.169.254` (reference §1.5), here on
//! loopback (`Sandbox::imds_url`).
//!
//! What it must get right is what the relay depends on: the `Metadata: true` header is
//! required (a request without it, as a proxy would forward it, is refused); `api-version`
//! and `resource` are required; `client_id` picks a user-assigned identity, and an unknown
//! one gets IMDS's `{"error":"invalid_request","error_description":"Identity not found"}`.
//! Without `client_id` the system-assigned identity answers, or, when the machine has none,
//! its only user-assigned one. The success body carries its numbers as **strings**
//! (`"expires_in": "86399"`), as IMDS does. The token is a federated token for the
//! identity (its object ID as `sub`, Entra as issuer) and the requested resource as
//! audience, remembered so the token endpoint can check it.
//!
//! [`decide`] and [`token_body`] are pure; [`serve`] is the connection driver.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::TcpStream;

use super::http::{parse_form, Head, Response};
use super::{read_request, write_response, ReadError};
use crate::sandbox::clock::unix_now;
use crate::sandbox::federated::{entra_issuer, ManagedIdentity};
use crate::sandbox::shared::Shared;

/// IMDS's token path.
pub(crate) const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Who asks and for what, once the request passed IMDS's checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImdsGrant {
    pub identity: ManagedIdentity,
    pub resource: String,
}

fn refuse(status: u16, error: &str, description: &str) -> Response {
    Response {
        status,
        body: json!({"error": error, "error_description": description}).to_string(),
        retry_after: false,
    }
}

/// IMDS's checks, in its order: path, method, `Metadata` header, query, identity. Pure.
pub(crate) fn decide(
    head: &Head,
    user_assigned: &[ManagedIdentity],
    system_assigned: Option<&ManagedIdentity>,
) -> Result<ImdsGrant, Response> {
    let (path, query) = head.target.split_once('?').unwrap_or((&head.target, ""));
    if path != IMDS_PATH {
        return Err(refuse(404, "not_found", "Not found"));
    }
    if head.method != "GET" {
        return Err(refuse(400, "invalid_request", "Only GET is supported"));
    }
    if !head
        .header("metadata")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return Err(refuse(
            400,
            "invalid_request",
            "Required metadata header not specified",
        ));
    }
    let query = parse_form(query.as_bytes());
    if query.get("api-version").is_none_or(|v| v.is_empty()) {
        return Err(refuse(
            400,
            "invalid_request",
            "Required query variable 'api-version' is missing",
        ));
    }
    let Some(resource) = query.get("resource").filter(|r| !r.is_empty()) else {
        return Err(refuse(
            400,
            "invalid_request",
            "Required audience parameter not specified",
        ));
    };
    let identity = match query.get("client_id") {
        Some(id) => user_assigned
            .iter()
            .find(|i| i.client_id.eq_ignore_ascii_case(id)),
        None => system_assigned.or(match user_assigned {
            [only] => Some(only),
            _ => None,
        }),
    };
    let Some(identity) = identity else {
        return Err(refuse(400, "invalid_request", "Identity not found"));
    };
    Ok(ImdsGrant {
        identity: identity.clone(),
        resource: resource.clone(),
    })
}

/// The claims of the token IMDS hands out for `grant` in `tenant`.
pub(crate) fn token_claims(grant: &ImdsGrant, tenant: &str, nbf: u64, exp: u64) -> Value {
    json!({
        "aud": grant.resource,
        "iss": entra_issuer(tenant),
        "iat": nbf,
        "nbf": nbf,
        "exp": exp,
        "azp": grant.identity.client_id,
        "appid": grant.identity.client_id,
        "idtyp": "app",
        "oid": grant.identity.object_id,
        "sub": grant.identity.object_id,
        "tid": tenant,
        "ver": "2.0",
    })
}

/// IMDS's success body: every number a string. Pure.
pub(crate) fn token_body(token: &str, grant: &ImdsGrant, nbf: u64, exp: u64) -> String {
    let lifetime = exp.saturating_sub(nbf);
    json!({
        "access_token": token,
        "client_id": grant.identity.client_id,
        "expires_in": lifetime.to_string(),
        "expires_on": exp.to_string(),
        "ext_expires_in": lifetime.to_string(),
        "not_before": nbf.to_string(),
        "resource": grant.resource,
        "token_type": "Bearer",
    })
    .to_string()
}

fn answer(shared: &Shared, head: &Head) -> Response {
    let opts = &shared.opts;
    match decide(
        head,
        &opts.managed_identities,
        opts.system_assigned_identity.as_ref(),
    ) {
        Err(refused) => refused,
        Ok(grant) => {
            let nbf = unix_now();
            let exp = nbf + opts.imds_token_lifetime.as_secs();
            let token = shared
                .federation
                .mint(token_claims(&grant, &opts.tenant, nbf, exp));
            shared
                .federation
                .imds_tokens
                .fetch_add(1, Ordering::Relaxed);
            Response {
                status: 200,
                body: token_body(&token, &grant, nbf, exp),
                retry_after: false,
            }
        }
    }
}

/// Serves one plain-HTTP connection until the peer closes, asks to close, idles out, or the
/// sandbox shuts down.
pub(crate) async fn serve(shared: Arc<Shared>, mut tcp: TcpStream) {
    let cancel = shared.cancel.clone();
    let mut buf = Vec::new();
    loop {
        let read = tokio::select! {
            _ = cancel.cancelled() => return,
            read = tokio::time::timeout(IDLE_TIMEOUT, read_request(&mut tcp, &mut buf)) => read,
        };
        let (resp, close) = match read {
            Err(_) | Ok(Ok(None)) | Ok(Err(ReadError::Gone)) => return,
            Ok(Err(ReadError::Reject(status, why))) => {
                (refuse(status, "invalid_request", why), true)
            }
            Ok(Ok(Some((head, _body)))) => (answer(&shared, &head), head.wants_close()),
        };
        if write_response(&mut tcp, &resp, close).await.is_err() || close {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::federated::FEDERATION_AUDIENCE;

    fn uami(n: u8) -> ManagedIdentity {
        ManagedIdentity {
            client_id: format!("{n}{n}{n}{n}{n}{n}{n}{n}-0000-0000-0000-000000000000"),
            object_id: format!("{n}{n}{n}{n}{n}{n}{n}{n}-1111-1111-1111-111111111111"),
        }
    }

    fn head(target: &str, metadata: Option<&str>) -> Head {
        let mut headers = vec![("host".to_string(), "169.254.169.254".to_string())];
        if let Some(m) = metadata {
            headers.push(("metadata".to_string(), m.to_string()));
        }
        Head {
            method: "GET".into(),
            target: target.into(),
            http10: false,
            headers,
        }
    }

    fn query(extra: &str) -> String {
        format!(
            "{IMDS_PATH}?api-version=2018-02-01&resource=api%3A%2F%2FAzureADTokenExchange{extra}"
        )
    }

    fn granted(r: Result<ImdsGrant, Response>) -> ImdsGrant {
        match r {
            Ok(g) => g,
            Err(resp) => panic!("refused: {} {}", resp.status, resp.body),
        }
    }

    fn refused(r: Result<ImdsGrant, Response>) -> (u16, Value) {
        let Err(resp) = r else { panic!("granted") };
        (resp.status, serde_json::from_str(&resp.body).unwrap())
    }

    #[test]
    fn metadata_header_is_required() {
        for metadata in [None, Some("false"), Some("")] {
            let (status, body) = refused(decide(&head(&query(""), metadata), &[uami(1)], None));
            assert_eq!(status, 400);
            assert_eq!(body["error"], "invalid_request");
            assert_eq!(
                body["error_description"],
                "Required metadata header not specified"
            );
        }
        granted(decide(&head(&query(""), Some("True")), &[uami(1)], None));
    }

    #[test]
    fn api_version_and_resource_are_required() {
        let (status, body) = refused(decide(
            &head(&format!("{IMDS_PATH}?resource=x"), Some("true")),
            &[uami(1)],
            None,
        ));
        assert_eq!(status, 400);
        assert!(body["error_description"]
            .as_str()
            .unwrap()
            .contains("api-version"));
        let (status, body) = refused(decide(
            &head(&format!("{IMDS_PATH}?api-version=2018-02-01"), Some("true")),
            &[uami(1)],
            None,
        ));
        assert_eq!(status, 400);
        assert!(body["error_description"]
            .as_str()
            .unwrap()
            .contains("audience"));
        let (status, _) = refused(decide(
            &head("/metadata/instance?api-version=1", Some("true")),
            &[uami(1)],
            None,
        ));
        assert_eq!(status, 404);
    }

    #[test]
    fn client_id_selects_a_user_assigned_identity() {
        let ids = [uami(1), uami(2)];
        let g = granted(decide(
            &head(
                &query(&format!("&client_id={}", uami(2).client_id)),
                Some("true"),
            ),
            &ids,
            None,
        ));
        assert_eq!(g.identity, uami(2));
        assert_eq!(g.resource, FEDERATION_AUDIENCE);

        let (status, body) = refused(decide(
            &head(
                &query(&format!("&client_id={}", uami(3).client_id)),
                Some("true"),
            ),
            &ids,
            None,
        ));
        assert_eq!(status, 400);
        assert_eq!(
            body,
            json!({"error": "invalid_request", "error_description": "Identity not found"})
        );
        // No client_id: the system-assigned identity, else the only user-assigned one.
        let (status, _) = refused(decide(&head(&query(""), Some("true")), &ids, None));
        assert_eq!(status, 400);
        let system = uami(9);
        let g = granted(decide(&head(&query(""), Some("true")), &ids, Some(&system)));
        assert_eq!(g.identity, system);
        let g = granted(decide(&head(&query(""), Some("true")), &ids[..1], None));
        assert_eq!(g.identity, uami(1));
    }

    #[test]
    fn numbers_are_strings_and_the_token_names_the_identity() {
        let grant = ImdsGrant {
            identity: uami(1),
            resource: FEDERATION_AUDIENCE.into(),
        };
        let body: Value = serde_json::from_str(&token_body("tok", &grant, 1000, 87399)).unwrap();
        assert_eq!(body["expires_in"], "86399");
        assert_eq!(body["expires_on"], "87399");
        assert_eq!(body["not_before"], "1000");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["resource"], FEDERATION_AUDIENCE);
        let claims = token_claims(&grant, "tid", 1000, 87399);
        assert_eq!(claims["sub"], uami(1).object_id);
        assert_eq!(claims["aud"], FEDERATION_AUDIENCE);
        assert_eq!(claims["iss"], "https://login.microsoftonline.com/tid/v2.0");
    }
}
