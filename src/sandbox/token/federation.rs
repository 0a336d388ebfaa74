//! What Entra checks of a federated client assertion (reference §1.4, §1.5, §1.8), without
//! I/O: a token another issuer minted (a Kubernetes service-account token, an IMDS token for
//! a managed identity) presented as `client_assertion`.
//!
//! The checks, in order: a federated identity credential on the app must match the
//! assertion's `iss` and `sub` exactly and name one of its `aud` values (else
//! `invalid_request` AADSTS70021, quoting issuer, subject and audience); the token must be
//! genuine, which in the sandbox means minted by it (else AADSTS700027, a bad signature); and
//! `nbf <= now < exp` (else AADSTS700024, the stale-token-file case).
//!
//! [`check`] answers `None` for assertions that are not federated: not JWT-shaped, or
//! self-signed by the app (`iss` equals the client ID: a certificate assertion, §1.3), so
//! another check can take those. Nothing here quotes the assertion itself.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

use super::entra::EntraError;
use crate::sandbox::clock::UtcTime;
use crate::sandbox::federated::{audiences, FederatedCredential, FederatedToken};

/// The claims of an assertion that Entra matches against federated credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AssertionClaims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub nbf: Option<u64>,
    pub exp: Option<u64>,
}

/// The payload of a JWT-shaped assertion, if it has one with string `iss` and `sub`.
pub(crate) fn claims_of(assertion: &str) -> Option<AssertionClaims> {
    let mut parts = assertion.trim().split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let json: Value = serde_json::from_slice(&bytes).ok()?;
    Some(AssertionClaims {
        iss: json.get("iss")?.as_str()?.to_string(),
        sub: json.get("sub")?.as_str()?.to_string(),
        aud: audiences(json.get("aud")),
        nbf: json.get("nbf").and_then(Value::as_u64),
        exp: json.get("exp").and_then(Value::as_u64),
    })
}

/// Entra's verdict on a federated assertion for app `client_id`, or `None` when the
/// assertion is not a federated one (see the module doc). `minted` is what the sandbox
/// remembers of exactly this token string, if it minted it; `now` is Unix seconds.
pub(crate) fn check(
    assertion: &str,
    client_id: &str,
    credentials: &[FederatedCredential],
    minted: Option<&FederatedToken>,
    now: u64,
) -> Option<Result<(), EntraError>> {
    let claims = claims_of(assertion)?;
    if claims.iss.eq_ignore_ascii_case(client_id) {
        return None;
    }
    Some(verdict(&claims, credentials, minted, now))
}

fn verdict(
    claims: &AssertionClaims,
    credentials: &[FederatedCredential],
    minted: Option<&FederatedToken>,
    now: u64,
) -> Result<(), EntraError> {
    let matches = credentials.iter().any(|c| {
        c.issuer == claims.iss && c.subject == claims.sub && claims.aud.contains(&c.audience)
    });
    if !matches {
        return Err(no_matching_record(claims));
    }
    let Some(minted) = minted else {
        return Err(EntraError::new(
            401,
            "invalid_client",
            700027,
            "Client assertion failed signature validation.".to_string(),
        ));
    };
    // The sandbox's own record, not the payload, says when the token is valid: a payload
    // is only as good as its signature.
    if now < minted.nbf || now >= minted.exp {
        let at = |t: u64| UtcTime::from_unix_millis(t as i64 * 1000).iso_millis();
        return Err(EntraError::new(
            401,
            "invalid_client",
            700024,
            format!(
                "Client assertion is not within its valid time range. Current time: {}, \
                 assertion valid from {}, expiry time of assertion {}.",
                at(now),
                at(minted.nbf),
                at(minted.exp)
            ),
        ));
    }
    Ok(())
}

/// AADSTS70021, quoting what the assertion says (reference §1.8).
fn no_matching_record(claims: &AssertionClaims) -> EntraError {
    EntraError::new(
        400,
        "invalid_request",
        70021,
        format!(
            "No matching federated identity record found for presented assertion. Assertion \
             Issuer: '{}'. Assertion Subject: '{}'. Assertion Audience: '{}'.",
            claims.iss,
            claims.sub,
            claims.aud.join(",")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::federated::{
        service_account_claims, Federation, DEFAULT_OIDC_ISSUER, DEFAULT_SUBJECT,
        FEDERATION_AUDIENCE,
    };
    use serde_json::json;

    const APP: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";

    fn fics() -> Vec<FederatedCredential> {
        vec![FederatedCredential {
            issuer: DEFAULT_OIDC_ISSUER.into(),
            subject: DEFAULT_SUBJECT.into(),
            audience: FEDERATION_AUDIENCE.into(),
        }]
    }

    /// A token minted by `f` for `subject`/`audience`, valid 1000..2000.
    fn mint(f: &Federation, issuer: &str, subject: &str, audience: &str) -> String {
        f.mint(service_account_claims(
            issuer, subject, audience, 1000, 2000,
        ))
    }

    fn run(f: &Federation, token: &str, now: u64) -> Option<Result<(), EntraError>> {
        check(token, APP, &fics(), f.lookup(token).as_ref(), now)
    }

    fn code(result: Option<Result<(), EntraError>>) -> (u16, &'static str, u32, String) {
        let e = result.expect("a federated assertion").expect_err("refused");
        (e.status, e.error, e.code, e.text)
    }

    #[test]
    fn a_matching_genuine_current_token_passes() {
        let f = Federation::default();
        let token = mint(
            &f,
            DEFAULT_OIDC_ISSUER,
            DEFAULT_SUBJECT,
            FEDERATION_AUDIENCE,
        );
        assert_eq!(run(&f, &token, 1500), Some(Ok(())));
    }

    #[test]
    fn issuer_subject_or_audience_mismatch_is_70021() {
        let f = Federation::default();
        for (issuer, subject, audience) in [
            (
                "https://other.example/",
                DEFAULT_SUBJECT,
                FEDERATION_AUDIENCE,
            ),
            (
                DEFAULT_OIDC_ISSUER,
                "system:serviceaccount:mail:other",
                FEDERATION_AUDIENCE,
            ),
            (
                DEFAULT_OIDC_ISSUER,
                DEFAULT_SUBJECT,
                "api://AzureADTokenExchangeUSGov",
            ),
            // Exact comparison: a case difference is a mismatch too.
            (
                DEFAULT_OIDC_ISSUER,
                "system:serviceaccount:Mail:smtp-oauth-relay",
                FEDERATION_AUDIENCE,
            ),
        ] {
            let token = mint(&f, issuer, subject, audience);
            let (status, error, code_, text) = code(run(&f, &token, 1500));
            assert_eq!((status, error, code_), (400, "invalid_request", 70021));
            assert_eq!(
                text,
                format!(
                    "No matching federated identity record found for presented assertion. \
                     Assertion Issuer: '{issuer}'. Assertion Subject: '{subject}'. Assertion \
                     Audience: '{audience}'."
                )
            );
            assert!(!text.contains(&token));
        }
    }

    #[test]
    fn an_unknown_token_is_a_bad_signature() {
        let f = Federation::default();
        let token = mint(
            &f,
            DEFAULT_OIDC_ISSUER,
            DEFAULT_SUBJECT,
            FEDERATION_AUDIENCE,
        );
        // Same claims, minted by someone else.
        let other = Federation::default();
        let forged = mint(
            &other,
            DEFAULT_OIDC_ISSUER,
            DEFAULT_SUBJECT,
            FEDERATION_AUDIENCE,
        );
        assert_ne!(token, forged);
        let (status, error, c, _) = code(run(&f, &forged, 1500));
        assert_eq!((status, error, c), (401, "invalid_client", 700027));
    }

    #[test]
    fn outside_its_lifetime_is_700024() {
        let f = Federation::default();
        let token = mint(
            &f,
            DEFAULT_OIDC_ISSUER,
            DEFAULT_SUBJECT,
            FEDERATION_AUDIENCE,
        );
        for now in [999, 2000, 5000] {
            let (status, error, c, text) = code(run(&f, &token, now));
            assert_eq!((status, error, c), (401, "invalid_client", 700024), "{now}");
            assert!(text.starts_with("Client assertion is not within its valid time range."));
            assert!(
                text.contains("expiry time of assertion 1970-01-01T00:33:20.000Z"),
                "{text}"
            );
        }
        assert_eq!(run(&f, &token, 1999), Some(Ok(())));
        assert_eq!(run(&f, &token, 1000), Some(Ok(())));
    }

    #[test]
    fn self_signed_and_opaque_assertions_are_left_to_other_checks() {
        let f = Federation::default();
        // A certificate assertion: issued by the app itself.
        let own =
            f.mint(json!({"iss": APP, "sub": APP, "aud": "https://login/x", "nbf": 1, "exp": 9}));
        assert_eq!(run(&f, &own, 5), None);
        assert_eq!(run(&f, "not-a-jwt", 5), None);
        assert_eq!(run(&f, "a.b.c", 5), None);
        assert_eq!(run(&f, "a.eyJpc3MiOjF9.c", 5), None);
    }

    #[test]
    fn claims_accept_aud_as_string_or_array() {
        let f = Federation::default();
        let t = f.mint(json!({"iss": "i", "sub": "s", "aud": "a", "nbf": 1, "exp": 2}));
        let c = claims_of(&t).unwrap();
        assert_eq!(c.aud, vec!["a"]);
        assert_eq!((c.nbf, c.exp), (Some(1), Some(2)));
        let t = mint(&f, "i", "s", "b");
        assert_eq!(claims_of(&t).unwrap().aud, vec!["b"]);
    }
}
