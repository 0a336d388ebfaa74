//! Entra's checks of a certificate client assertion (reference §1.3, §1.8), without I/O.
//!
//! What Microsoft checks, in this order: the JWT parses; its header names a certificate
//! registered on the app (`x5t#S256` or `x5t`), which has not expired; the signature
//! verifies with that certificate's key under the header's `alg` (PS256 or RS256); `iss` and
//! `sub` are the client ID; `aud` is the token URL; `nbf`..`exp` contains now, give or take
//! [`SKEW_SECS`]; and the `jti` was not seen before. The state is plain data (the registered
//! certificates, the `jti`s seen until they expire, the assertions accepted) kept behind one
//! lock in the shared state; the token endpoint's driver asks it.

use std::collections::HashMap;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, UnparsedPublicKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use pkcs8::der::Decode as _;
use serde_json::Value;

use super::clock::UtcTime;
use super::options::RegisteredCertificate;

/// Entra's refusal of an assertion: HTTP status, OAuth `error`, AADSTS code and its text
/// (the token endpoint's driver turns it into Entra's error body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub status: u16,
    pub error: &'static str,
    pub code: u32,
    pub text: String,
}

/// Clock skew tolerated on `nbf` and `exp`.
pub(crate) const SKEW_SECS: u64 = 60;
/// Most `jti`s remembered; past it the one expiring first is forgotten.
const MAX_JTIS: usize = 10_000;
/// Most accepted assertions kept for tests to read.
const MAX_ACCEPTED: usize = 1_000;

/// An assertion the endpoint accepted, as a test sees it afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedAssertion {
    /// `PS256` or `RS256`.
    pub alg: String,
    /// Upper-case hex SHA-1 of the certificate that signed it (the portal's thumbprint).
    pub thumbprint: String,
    /// Which thumbprint header named it: `x5t#S256` or `x5t`.
    pub by: &'static str,
    pub jti: String,
}

/// What the request must match.
pub(crate) struct Expected<'a> {
    /// The token URL the request was sent to (`aud`).
    pub token_url: &'a str,
    pub client_id: &'a str,
    /// Unix seconds.
    pub now: u64,
}

/// The registered certificates and what was seen.
#[derive(Debug, Default)]
pub(crate) struct AssertionState {
    pub registered: Vec<RegisteredCertificate>,
    /// `jti` → `exp`, forgotten once the assertion could no longer pass the time check.
    jtis: HashMap<String, u64>,
    pub accepted: Vec<AcceptedAssertion>,
}

fn invalid_client(code: u32, text: String) -> Refused {
    Refused {
        status: 401,
        error: "invalid_client",
        code,
        text,
    }
}

/// AADSTS50027 for a JWT that cannot be read. The code and wording follow Entra's public
/// error list ("InvalidJwtToken"), not the reference.
fn malformed(why: &str) -> Refused {
    invalid_client(50027, format!("JWT token is invalid or malformed: {why}."))
}

fn key_not_found(thumbprint: &str, client_id: &str) -> Refused {
    invalid_client(
        700027,
        format!(
            "Client assertion contains an invalid signature. [Reason - The key was not found., \
             Thumbprint of key used by client: '{thumbprint}', Please visit the Azure Portal, \
             Graph Explorer or directly use MS Graph to see configured keys for app Id \
             '{client_id}'.]"
        ),
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn b64_json(part: &str) -> Option<Value> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

/// The certificate's RSA public key (RFC 8017 DER), if it has one.
fn rsa_public_key(der: &[u8]) -> Option<Vec<u8>> {
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let spki = &cert.tbs_certificate.subject_public_key_info;
    spki.subject_public_key.as_bytes().map(<[u8]>::to_vec)
}

impl AssertionState {
    pub(crate) fn new(registered: Vec<RegisteredCertificate>) -> Self {
        AssertionState {
            registered,
            ..Default::default()
        }
    }

    /// Checks `assertion` as Entra would and, when it passes, remembers its `jti`.
    pub(crate) fn check(
        &mut self,
        assertion: &str,
        expected: &Expected<'_>,
    ) -> Result<AcceptedAssertion, Refused> {
        let parts: Vec<&str> = assertion.split('.').collect();
        let [h, c, s] = parts.as_slice() else {
            return Err(malformed("not three dot-separated parts"));
        };
        let header = b64_json(h).ok_or_else(|| malformed("the header is not base64url JSON"))?;
        let claims = b64_json(c).ok_or_else(|| malformed("the payload is not base64url JSON"))?;
        let signature = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| malformed("the signature is not base64url"))?;

        // Which registered certificate: by x5t#S256, else by x5t.
        let (by, sent, algorithm): (&'static str, Vec<u8>, &'static digest::Algorithm) =
            if let Some(t) = header["x5t#S256"].as_str() {
                (
                    "x5t#S256",
                    URL_SAFE_NO_PAD.decode(t).unwrap_or_default(),
                    &digest::SHA256,
                )
            } else if let Some(t) = header["x5t"].as_str() {
                (
                    "x5t",
                    URL_SAFE_NO_PAD.decode(t).unwrap_or_default(),
                    &digest::SHA1_FOR_LEGACY_USE_ONLY,
                )
            } else {
                return Err(key_not_found("", expected.client_id));
            };
        let found = self
            .registered
            .iter()
            .find(|r| digest::digest(algorithm, &r.der).as_ref() == sent.as_slice());
        let Some(cert) = found else {
            return Err(key_not_found(&hex(&sent), expected.client_id));
        };
        let thumbprint = hex(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &cert.der).as_ref());
        if cert.expired {
            return Err(invalid_client(
                700027,
                format!(
                    "The certificate with identifier used to sign the client assertion is \
                     expired on application. [Reason - The certificate is expired., Thumbprint \
                     of key used by client: '{thumbprint}']"
                ),
            ));
        }
        let verification: &'static dyn signature::VerificationAlgorithm =
            match header["alg"].as_str() {
                Some("PS256") => &signature::RSA_PSS_2048_8192_SHA256,
                Some("RS256") => &signature::RSA_PKCS1_2048_8192_SHA256,
                _ => return Err(signature_failed()),
            };
        let public = rsa_public_key(&cert.der).ok_or_else(signature_failed)?;
        let input = format!("{h}.{c}");
        UnparsedPublicKey::new(verification, &public)
            .verify(input.as_bytes(), &signature)
            .map_err(|_| signature_failed())?;

        // AADSTS700021 for iss/sub and AADSTS50027 for aud: codes from Entra's public error
        // list, not from the reference; the relay treats both as configuration errors.
        for name in ["iss", "sub"] {
            if claims[name].as_str() != Some(expected.client_id) {
                return Err(invalid_client(
                    700021,
                    format!(
                        "Client assertion application identifier doesn't match 'client_id' \
                         parameter. Review the documentation at \
                         https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials . [claim '{name}']"
                    ),
                ));
            }
        }
        let aud = claims["aud"].as_str().unwrap_or_default();
        if !aud
            .trim_end_matches('/')
            .eq_ignore_ascii_case(expected.token_url)
        {
            return Err(invalid_client(
                50027,
                format!(
                    "JWT token is invalid or malformed: the audience '{aud}' is not the token \
                     endpoint '{}'.",
                    expected.token_url
                ),
            ));
        }
        let (Some(nbf), Some(exp)) = (claims["nbf"].as_u64(), claims["exp"].as_u64()) else {
            return Err(malformed("the nbf and exp claims are required"));
        };
        let now = expected.now;
        if now + SKEW_SECS < nbf || exp + SKEW_SECS < now {
            let at = |secs: u64| UtcTime::from_unix_millis(secs as i64 * 1000).entra();
            return Err(invalid_client(
                700024,
                format!(
                    "Client assertion is not within its valid time range. Current time: {}, \
                     assertion valid from {}, expiry time of assertion {}. Review the \
                     documentation at \
                     https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials .",
                    at(now),
                    at(nbf),
                    at(exp)
                ),
            ));
        }
        let Some(jti) = claims["jti"].as_str().filter(|j| !j.is_empty()) else {
            return Err(malformed("the jti claim is required"));
        };
        self.jtis.retain(|_, e| *e + SKEW_SECS >= now);
        if self.jtis.contains_key(jti) {
            // Not from Microsoft's docs: Entra does not document how it words a replayed
            // assertion. AADSTS50013 is its general "the assertion is invalid" code.
            return Err(invalid_client(
                50013,
                format!(
                    "Assertion failed signature validation or is invalid: the jti '{jti}' was \
                     already used. Every client assertion needs a new jti."
                ),
            ));
        }
        if self.jtis.len() >= MAX_JTIS {
            if let Some(first) = self
                .jtis
                .iter()
                .min_by_key(|(_, e)| **e)
                .map(|(j, _)| j.clone())
            {
                self.jtis.remove(&first);
            }
        }
        self.jtis.insert(jti.to_string(), exp);
        let accepted = AcceptedAssertion {
            alg: header["alg"].as_str().unwrap_or_default().to_string(),
            thumbprint,
            by,
            jti: jti.to_string(),
        };
        if self.accepted.len() >= MAX_ACCEPTED {
            self.accepted.remove(0);
        }
        self.accepted.push(accepted.clone());
        Ok(accepted)
    }
}

fn signature_failed() -> Refused {
    invalid_client(
        700027,
        "Client assertion failed signature validation.".to_string(),
    )
}

#[cfg(test)]
#[path = "assertion_tests.rs"]
mod tests;
