//! The client assertion of the certificate credential (reference §1.3), without I/O: the
//! certificate's thumbprints, the JWS header and claims, and the compact signed JWT.
//!
//! PS256 (RSA-PSS, SHA-256) goes with the `x5t#S256` header (SHA-256 of the certificate's
//! DER), RS256 (PKCS#1 v1.5) with the older SHA-1 `x5t`: the two pairings MSAL keeps. The
//! claims are `aud` = the token URL, `iss` = `sub` = the client ID, a fresh `jti` GUID,
//! `nbf` a few seconds back (clock skew), `iat` now and `exp` five minutes on. base64url
//! without padding throughout. The signed assertion is a [`SecretString`]: whoever holds it
//! can get tokens for the app until it expires.

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RsaEncoding, RsaKeyPair};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use secrecy::SecretString;
use serde_json::json;

use serde::{Deserialize, Serialize};

/// The JWS algorithm of a certificate assertion (reference §1.3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AssertionAlgorithm {
    /// RSA-PSS with SHA-256 and the `x5t#S256` thumbprint: Microsoft's current advice.
    #[default]
    PS256,
    /// RSA PKCS#1 v1.5 with SHA-256 and the SHA-1 `x5t` thumbprint: older registrations.
    RS256,
}

/// Lifetime of an assertion: Microsoft advises 5–10 minutes at most (reference §1.3).
pub const LIFETIME_SECS: u64 = 300;
/// How far `nbf` is set back, for a token endpoint whose clock is slightly behind ours.
pub const NBF_BACKDATE_SECS: u64 = 5;

/// The certificate's fingerprints: SHA-1 (the portal's "Thumbprint" column, and `x5t`) and
/// SHA-256 (`x5t#S256`), both over the certificate's DER bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumbprints {
    pub sha1: [u8; 20],
    pub sha256: [u8; 32],
}

impl Thumbprints {
    pub fn of(der: &[u8]) -> Self {
        let mut sha1 = [0u8; 20];
        sha1.copy_from_slice(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref());
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest::digest(&digest::SHA256, der).as_ref());
        Thumbprints { sha1, sha256 }
    }

    /// `x5t`: base64url of the SHA-1 digest.
    pub fn x5t(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.sha1)
    }

    /// `x5t#S256`: base64url of the SHA-256 digest.
    pub fn x5t_s256(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.sha256)
    }

    /// The SHA-1 thumbprint as Entra's "Certificates & secrets" page shows it (upper-case hex).
    pub fn portal(&self) -> String {
        self.sha1.iter().map(|b| format!("{b:02X}")).collect()
    }
}

/// The JOSE header for `alg`.
pub fn header(alg: AssertionAlgorithm, thumbprints: &Thumbprints) -> serde_json::Value {
    match alg {
        AssertionAlgorithm::PS256 => {
            json!({"alg": "PS256", "typ": "JWT", "x5t#S256": thumbprints.x5t_s256()})
        }
        AssertionAlgorithm::RS256 => {
            json!({"alg": "RS256", "typ": "JWT", "x5t": thumbprints.x5t()})
        }
    }
}

/// The claims of one assertion made at `now` (Unix seconds).
pub fn claims(token_url: &str, client_id: &str, jti: &str, now: u64) -> serde_json::Value {
    json!({
        "aud": token_url,
        "iss": client_id,
        "sub": client_id,
        "jti": jti,
        "nbf": now.saturating_sub(NBF_BACKDATE_SECS),
        "iat": now,
        "exp": now + LIFETIME_SECS,
    })
}

fn encoding(alg: AssertionAlgorithm) -> &'static dyn RsaEncoding {
    match alg {
        AssertionAlgorithm::PS256 => &aws_lc_rs::signature::RSA_PSS_SHA256,
        AssertionAlgorithm::RS256 => &aws_lc_rs::signature::RSA_PKCS1_SHA256,
    }
}

/// Signs `header.claims` with `key` and returns the compact JWS. Fails only if the
/// signature cannot be computed (never with key material in the message).
pub fn sign(
    key: &RsaKeyPair,
    alg: AssertionAlgorithm,
    header: &serde_json::Value,
    claims: &serde_json::Value,
) -> Result<SecretString, String> {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut signature = vec![0u8; key.public_modulus_len()];
    key.sign(
        encoding(alg),
        &SystemRandom::new(),
        input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| "the RSA signature of the client assertion failed".to_string())?;
    Ok(SecretString::from(format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    )))
}

/// A random (version 4) GUID, lower-case, for `jti`.
pub fn new_guid() -> String {
    let mut b = [0u8; 16];
    // The system's random source does not fail on any platform we run on; should it, the
    // all-zero fallback would be caught by the endpoint's replay check, not silently reused.
    let _ = aws_lc_rs::rand::fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{KeyPair, UnparsedPublicKey};
    use secrecy::ExposeSecret;
    use std::sync::OnceLock;

    fn key() -> &'static RsaKeyPair {
        static KEY: OnceLock<RsaKeyPair> = OnceLock::new();
        KEY.get_or_init(|| {
            RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key generation")
        })
    }

    fn parts(jws: &str) -> (serde_json::Value, serde_json::Value, Vec<u8>, String) {
        let p: Vec<&str> = jws.split('.').collect();
        assert_eq!(p.len(), 3, "compact JWS has three parts");
        for part in &p {
            assert!(!part.contains('='), "no padding: {part}");
        }
        let h = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p[0]).unwrap()).unwrap();
        let c = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p[1]).unwrap()).unwrap();
        let s = URL_SAFE_NO_PAD.decode(p[2]).unwrap();
        (h, c, s, format!("{}.{}", p[0], p[1]))
    }

    #[test]
    fn thumbprints_of_known_bytes() {
        let t = Thumbprints::of(b"abc");
        // SHA-1("abc") and SHA-256("abc"), the FIPS test vectors.
        assert_eq!(t.portal(), "A9993E364706816ABA3E25717850C26C9CD0D89D");
        assert_eq!(t.x5t(), "qZk-NkcGgWq6PiVxeFDCbJzQ2J0");
        assert_eq!(t.x5t_s256(), "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0");
    }

    #[test]
    fn ps256_assertion_verifies_and_has_the_claims() {
        let t = Thumbprints::of(b"certificate der");
        let url = "https://login.microsoftonline.com/tenant/oauth2/v2.0/token";
        let jws = sign(
            key(),
            AssertionAlgorithm::PS256,
            &header(AssertionAlgorithm::PS256, &t),
            &claims(url, "client-1", "jti-1", 1_000_000),
        )
        .unwrap();
        let (h, c, sig, input) = parts(jws.expose_secret());
        assert_eq!(h["alg"], "PS256");
        assert_eq!(h["typ"], "JWT");
        assert_eq!(h["x5t#S256"], t.x5t_s256());
        assert!(h.get("x5t").is_none());
        assert_eq!(c["aud"], url);
        assert_eq!(c["iss"], "client-1");
        assert_eq!(c["sub"], "client-1");
        assert_eq!(c["jti"], "jti-1");
        assert_eq!(c["iat"], 1_000_000);
        assert_eq!(c["nbf"], 1_000_000 - NBF_BACKDATE_SECS);
        assert_eq!(c["exp"], 1_000_000 + LIFETIME_SECS);
        const { assert!(LIFETIME_SECS <= 300) };
        let public = UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256,
            key().public_key().as_ref(),
        );
        public
            .verify(input.as_bytes(), &sig)
            .expect("PS256 verifies");
        // Not a PKCS#1 v1.5 signature, and a changed claim breaks it.
        let pkcs1 = UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            key().public_key().as_ref(),
        );
        assert!(pkcs1.verify(input.as_bytes(), &sig).is_err());
        assert!(public
            .verify(input.replace('A', "B").as_bytes(), &sig)
            .is_err());
    }

    #[test]
    fn rs256_assertion_uses_sha1_x5t_and_pkcs1() {
        let t = Thumbprints::of(b"certificate der");
        let jws = sign(
            key(),
            AssertionAlgorithm::RS256,
            &header(AssertionAlgorithm::RS256, &t),
            &claims("https://x/t/oauth2/v2.0/token", "c", "j", 10),
        )
        .unwrap();
        let (h, c, sig, input) = parts(jws.expose_secret());
        assert_eq!(h["alg"], "RS256");
        assert_eq!(h["x5t"], t.x5t());
        assert!(h.get("x5t#S256").is_none());
        assert_eq!(c["nbf"], 5);
        let public = UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            key().public_key().as_ref(),
        );
        public
            .verify(input.as_bytes(), &sig)
            .expect("RS256 verifies");
    }

    #[test]
    fn guids_are_fresh_version_4() {
        let a = new_guid();
        let b = new_guid();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
        assert_eq!(a.matches('-').count(), 4);
    }
}
