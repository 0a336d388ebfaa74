use std::sync::OnceLock;

use aws_lc_rs::signature::RsaKeyPair;
use secrecy::ExposeSecret;
use serde_json::Value;

use super::*;
use crate::token::jwt;
use crate::token::AssertionAlgorithm;

const URL: &str = "https://127.0.0.1:4433/tenant-1/oauth2/v2.0/token";
const CLIENT: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
const NOW: u64 = 2_000_000_000;

struct Cert {
    der: Vec<u8>,
    key: RsaKeyPair,
}

fn make() -> Cert {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["app".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    Cert {
        der: cert.der().to_vec(),
        key: RsaKeyPair::from_pkcs8(&key.serialize_der()).unwrap(),
    }
}

fn one() -> &'static Cert {
    static C: OnceLock<Cert> = OnceLock::new();
    C.get_or_init(make)
}

fn two() -> &'static Cert {
    static C: OnceLock<Cert> = OnceLock::new();
    C.get_or_init(make)
}

fn claims(jti: &str) -> Value {
    jwt::claims(URL, CLIENT, jti, NOW)
}

fn signed(cert: &Cert, alg: AssertionAlgorithm, claims: &Value) -> String {
    let header = jwt::header(alg, &jwt::Thumbprints::of(&cert.der));
    signed_with(cert, alg, &header, claims)
}

fn signed_with(cert: &Cert, alg: AssertionAlgorithm, header: &Value, claims: &Value) -> String {
    jwt::sign(&cert.key, alg, header, claims)
        .unwrap()
        .expose_secret()
        .to_string()
}

fn expected() -> Expected<'static> {
    Expected {
        token_url: URL,
        client_id: CLIENT,
        now: NOW,
    }
}

fn state() -> AssertionState {
    AssertionState::new(vec![RegisteredCertificate::from_der(one().der.clone())])
}

fn refused(state: &mut AssertionState, jws: &str) -> Refused {
    match state.check(jws, &expected()) {
        Ok(a) => panic!("accepted {a:?}"),
        Err(e) => e,
    }
}

#[test]
fn ps256_and_rs256_from_a_registered_certificate_pass() {
    let mut s = state();
    let a = s
        .check(
            &signed(one(), AssertionAlgorithm::PS256, &claims("j1")),
            &expected(),
        )
        .unwrap();
    let portal = jwt::Thumbprints::of(&one().der).portal();
    assert_eq!(
        (a.alg.as_str(), a.by, a.jti.as_str()),
        ("PS256", "x5t#S256", "j1")
    );
    assert_eq!(a.thumbprint, portal);
    let b = s
        .check(
            &signed(one(), AssertionAlgorithm::RS256, &claims("j2")),
            &expected(),
        )
        .unwrap();
    assert_eq!((b.alg.as_str(), b.by), ("RS256", "x5t"));
    assert_eq!(s.accepted.len(), 2);
}

#[test]
fn an_unregistered_certificate_is_a_key_not_found() {
    let mut s = state();
    let e = refused(
        &mut s,
        &signed(two(), AssertionAlgorithm::RS256, &claims("j")),
    );
    assert_eq!((e.status, e.error, e.code), (401, "invalid_client", 700027));
    assert!(e.text.contains("The key was not found."), "{}", e.text);
    let sha1 = jwt::Thumbprints::of(&two().der).portal();
    assert!(
        e.text
            .contains(&format!("Thumbprint of key used by client: '{sha1}'")),
        "{}",
        e.text
    );
    assert!(e.text.contains(CLIENT), "{}", e.text);
}

#[test]
fn an_expired_certificate_is_refused() {
    let mut s = AssertionState::new(vec![
        RegisteredCertificate::from_der(one().der.clone()).expired()
    ]);
    let e = refused(
        &mut s,
        &signed(one(), AssertionAlgorithm::PS256, &claims("j")),
    );
    assert_eq!(e.code, 700027);
    assert!(
        e.text.starts_with(
            "The certificate with identifier used to sign the client assertion is expired on application."
        ),
        "{}",
        e.text
    );
}

#[test]
fn a_bad_signature_or_a_wrong_alg_fails_validation() {
    let mut s = state();
    // Header names certificate one, signed with the key of two.
    let header = jwt::header(AssertionAlgorithm::PS256, &jwt::Thumbprints::of(&one().der));
    let forged = signed_with(two(), AssertionAlgorithm::PS256, &header, &claims("j"));
    let e = refused(&mut s, &forged);
    assert_eq!(
        (e.code, e.text.as_str()),
        (700027, "Client assertion failed signature validation.")
    );
    // PKCS#1 signature under an alg that says PSS.
    let mut header = jwt::header(AssertionAlgorithm::RS256, &jwt::Thumbprints::of(&one().der));
    let jws = signed_with(one(), AssertionAlgorithm::RS256, &header, &claims("j"));
    header["alg"] = "PS256".into();
    let (_, rest) = jws.split_once('.').unwrap();
    let relabelled = format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header.to_string()));
    assert_eq!(refused(&mut s, &relabelled).code, 700027);
    // A changed claim after signing.
    let good = signed(one(), AssertionAlgorithm::PS256, &claims("j"));
    let parts: Vec<&str> = good.split('.').collect();
    let mut c = claims("j");
    c["sub"] = "someone-else".into();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(c.to_string()),
        parts[2]
    );
    assert_eq!(refused(&mut s, &tampered).code, 700027);
    assert!(s.accepted.is_empty());
}

#[test]
fn claims_must_name_the_app_and_the_endpoint() {
    let mut s = state();
    for field in ["iss", "sub"] {
        let mut c = claims("j");
        c[field] = "bbbbbbbb-0000-0000-0000-000000000000".into();
        let e = refused(&mut s, &signed(one(), AssertionAlgorithm::PS256, &c));
        assert_eq!((e.status, e.code), (401, 700021), "{field}");
    }
    let mut c = claims("j");
    c["aud"] = "https://login.microsoftonline.com/other/oauth2/v2.0/token".into();
    let e = refused(&mut s, &signed(one(), AssertionAlgorithm::PS256, &c));
    assert_eq!(e.code, 50027);
    assert!(e.text.contains("audience"), "{}", e.text);
}

#[test]
fn time_range_with_small_skew() {
    let mut s = state();
    // Issued 10 minutes ago (exp 5 minutes ago): out of range.
    let stale = jwt::claims(URL, CLIENT, "old", NOW - 600);
    let e = refused(&mut s, &signed(one(), AssertionAlgorithm::PS256, &stale));
    assert_eq!((e.status, e.error, e.code), (401, "invalid_client", 700024));
    assert!(e
        .text
        .starts_with("Client assertion is not within its valid time range."));
    // From the future.
    let future = jwt::claims(URL, CLIENT, "new", NOW + 600);
    assert_eq!(
        refused(&mut s, &signed(one(), AssertionAlgorithm::PS256, &future)).code,
        700024
    );
    // Within the skew either way passes.
    let late = jwt::claims(
        URL,
        CLIENT,
        "late",
        NOW - jwt::LIFETIME_SECS - SKEW_SECS / 2,
    );
    assert!(s
        .check(
            &signed(one(), AssertionAlgorithm::PS256, &late),
            &expected()
        )
        .is_ok());
    let early = jwt::claims(URL, CLIENT, "early", NOW + SKEW_SECS / 2);
    assert!(s
        .check(
            &signed(one(), AssertionAlgorithm::PS256, &early),
            &expected()
        )
        .is_ok());
}

#[test]
fn a_jti_is_used_once() {
    let mut s = state();
    let first = signed(one(), AssertionAlgorithm::PS256, &claims("same"));
    assert!(s.check(&first, &expected()).is_ok());
    let again = signed(one(), AssertionAlgorithm::PS256, &claims("same"));
    let e = refused(&mut s, &again);
    assert_eq!(e.code, 50013);
    assert!(e.text.contains("already used"), "{}", e.text);
    // Once the first could no longer pass the time check, its jti is forgotten.
    let later = Expected {
        now: NOW + jwt::LIFETIME_SECS + SKEW_SECS + 1,
        ..expected()
    };
    let fresh = jwt::claims(URL, CLIENT, "other", later.now);
    assert!(s
        .check(&signed(one(), AssertionAlgorithm::PS256, &fresh), &later)
        .is_ok());
    assert_eq!(s.jtis.len(), 1, "the expired jti was forgotten");
}

#[test]
fn malformed_assertions() {
    let mut s = state();
    for jws in ["", "a.b", "a.b.c", "e30.e30.!!"] {
        let e = refused(&mut s, jws);
        assert_eq!((e.status, e.code), (401, 50027), "{jws}");
    }
    // A JWT without any thumbprint header.
    let header = serde_json::json!({"alg": "PS256", "typ": "JWT"});
    let e = refused(
        &mut s,
        &signed_with(one(), AssertionAlgorithm::PS256, &header, &claims("j")),
    );
    assert_eq!(e.code, 700027);
}
