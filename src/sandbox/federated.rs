//! Federated tokens: what the sandbox, acting as an OIDC issuer (a Kubernetes cluster's
//! service-account issuer, or IMDS for a managed identity), mints and remembers, and the
//! federated identity credentials (FICs) the app registration trusts (reference §1.4, §1.5).
//!
//! Why a module of its own: like `issued.rs`, it is a noun several parts exchange: the
//! handle mints (`Sandbox::federated_token`), the IMDS stand-in mints, the token endpoint
//! looks up, and the shared state holds the registry; so it sits below them and imports
//! none of them. Tokens are JWT-shaped but unsigned: the registry, not a signature, is what
//! makes one genuine, and a token the sandbox never issued is refused as a bad signature.
//! Token strings are never logged.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use super::clock::unix_now;
use crate::sync::Lock as _;

/// The audience Entra expects in federated tokens (global cloud, reference §1.4).
pub const FEDERATION_AUDIENCE: &str = "api://AzureADTokenExchange";
/// The issuer of `Sandbox::federated_token` unless the options say otherwise: shaped like an
/// AKS cluster's OIDC issuer URL.
pub const DEFAULT_OIDC_ISSUER: &str =
    "https://oidc.sandbox.example/11111111-2222-3333-4444-555555555555/cluster/";
/// The service account of the default workload identity FIC (namespace `mail`).
pub const DEFAULT_SUBJECT: &str = "system:serviceaccount:mail:smtp-oauth-relay";

/// A federated identity credential on the app registration: Entra accepts an assertion whose
/// `iss` and `sub` equal these and whose `aud` holds `audience` (all compared exactly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedCredential {
    pub issuer: String,
    pub subject: String,
    pub audience: String,
}

/// A user-assigned managed identity attached to the machine IMDS serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedIdentity {
    /// The identity's client ID: what `client_id=` asks IMDS for.
    pub client_id: String,
    /// Its object (principal) ID: the `sub` of its tokens, and a FIC's subject.
    pub object_id: String,
}

/// The issuer of tokens IMDS hands out for a tenant's managed identities (Entra v2).
pub fn entra_issuer(tenant: &str) -> String {
    format!("https://login.microsoftonline.com/{tenant}/v2.0")
}

/// What the sandbox remembers about a federated token it minted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FederatedToken {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub nbf: u64,
    pub exp: u64,
}

/// Beyond this many remembered tokens, expired ones are forgotten.
const PRUNE_ABOVE: usize = 10_000;

/// Federated tokens minted, by token string, and the IMDS requests counted.
#[derive(Default)]
pub(crate) struct Federation {
    tokens: Mutex<HashMap<String, FederatedToken>>,
    /// Requests the IMDS stand-in answered with a token.
    pub imds_tokens: AtomicU64,
}

impl Federation {
    /// Mints a JWT-shaped token with `claims` (`iss`, `sub`, `aud`, `nbf`, `exp` and any
    /// more), remembers it, and returns it. `aud` may be a string or an array.
    pub(crate) fn mint(&self, claims: Value) -> String {
        let text = |k: &str| {
            claims
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let number = |k: &str| claims.get(k).and_then(Value::as_u64).unwrap_or(0);
        let remembered = FederatedToken {
            iss: text("iss"),
            sub: text("sub"),
            aud: audiences(claims.get("aud")),
            nbf: number("nbf"),
            exp: number("exp"),
        };
        let header = json!({"alg": "RS256", "kid": "sandbox-oidc", "typ": "JWT"});
        let signature: Vec<u8> = (0..256).map(|_| rand::random::<u8>()).collect();
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(signature)
        );
        let mut map = self.tokens.locked();
        if map.len() >= PRUNE_ABOVE {
            let now = unix_now();
            map.retain(|_, t| t.exp > now);
        }
        map.insert(token.clone(), remembered);
        token
    }

    /// The token as minted, if the sandbox minted exactly this string.
    pub(crate) fn lookup(&self, token: &str) -> Option<FederatedToken> {
        self.tokens.locked().get(token).cloned()
    }
}

/// `aud` as a list: a string is a list of one.
pub(crate) fn audiences(aud: Option<&Value>) -> Vec<String> {
    match aud {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// The claims of a Kubernetes projected service-account token for `subject`
/// (`system:serviceaccount:<ns>:<sa>`), `aud` as an array as the kubelet writes it.
pub(crate) fn service_account_claims(
    issuer: &str,
    subject: &str,
    audience: &str,
    nbf: u64,
    exp: u64,
) -> Value {
    let mut parts = subject.splitn(4, ':').skip(2);
    let namespace = parts.next().unwrap_or("default");
    let account = parts.next().unwrap_or("default");
    json!({
        "aud": [audience],
        "exp": exp,
        "iat": nbf,
        "iss": issuer,
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": {"name": account, "uid": format!("{:032x}", rand::random::<u128>())},
        },
        "nbf": nbf,
        "sub": subject,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(token: &str) -> Value {
        let part = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn minted_tokens_are_remembered_as_minted() {
        let f = Federation::default();
        let claims = service_account_claims(
            DEFAULT_OIDC_ISSUER,
            DEFAULT_SUBJECT,
            FEDERATION_AUDIENCE,
            100,
            200,
        );
        let token = f.mint(claims);
        assert!(token.starts_with("eyJ"));
        assert_eq!(token.split('.').count(), 3);
        let p = payload(&token);
        assert_eq!(p["kubernetes.io"]["namespace"], "mail");
        assert_eq!(
            p["kubernetes.io"]["serviceaccount"]["name"],
            "smtp-oauth-relay"
        );
        assert_eq!(
            f.lookup(&token),
            Some(FederatedToken {
                iss: DEFAULT_OIDC_ISSUER.into(),
                sub: DEFAULT_SUBJECT.into(),
                aud: vec![FEDERATION_AUDIENCE.into()],
                nbf: 100,
                exp: 200,
            })
        );
        // One character changed: not a token the sandbox issued.
        let mut forged = token.clone();
        forged.pop();
        forged.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(f.lookup(&forged), None);
    }

    #[test]
    fn audience_forms() {
        assert_eq!(audiences(Some(&json!("a"))), vec!["a"]);
        assert_eq!(audiences(Some(&json!(["a", "b", 3]))), vec!["a", "b"]);
        assert!(audiences(None).is_empty());
        assert_eq!(
            entra_issuer("t"),
            "https://login.microsoftonline.com/t/v2.0"
        );
    }
}
