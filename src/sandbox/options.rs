//! How a sandbox is set up: [`SandboxOptions`], with defaults that look like a real
//! single-tenant app registration (reference §1.9).
//!
//! Plain data, read by both servers through the shared state and never changed after
//! `Sandbox::start` (the knobs that change at runtime live in `shared.rs`, so `options()`
//! keeps showing what the sandbox started with). The client secret is a `SecretString`, so
//! `Debug` and logs never show it.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use rand::Rng;
use secrecy::SecretString;

use super::federated::{
    entra_issuer, FederatedCredential, ManagedIdentity, DEFAULT_OIDC_ISSUER, DEFAULT_SUBJECT,
    FEDERATION_AUDIENCE,
};
use super::issued::SMTP_ROLE;

/// How the sandbox is set up. `Debug` redacts the client secret (it is a `SecretString`).
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// The one tenant the token endpoint accepts (GUID or domain, case-insensitive).
    pub tenant: String,
    /// The application (client) ID of the one registered app.
    pub client_id: String,
    /// The app's client secret value.
    pub client_secret: SecretString,
    /// Mailboxes the app may authenticate as (XOAUTH2 `user=`), compared case-insensitively.
    pub mailboxes: Vec<String>,
    /// Mailboxes whose SMTP AUTH switch is off: AUTH gets `535 5.7.139` (reference §3.5).
    pub smtp_auth_disabled: Vec<String>,
    /// Application permissions granted (with admin consent) to the app: the `roles` of its
    /// Exchange tokens. Empty reproduces "SMTP.SendAsApp was never added or consented",
    /// which Exchange answers with `535 5.7.3`.
    pub app_roles: Vec<String>,
    /// `expires_in` of issued tokens (Entra shows 3599 s for app-only tokens).
    pub token_lifetime: Duration,
    /// Where accepted messages are written (created if missing).
    pub store_dir: PathBuf,
    /// Concurrent authenticated sessions per mailbox before MAIL gets `432 4.3.2`
    /// (Exchange Online: 3, reference §4.1). 0 = unlimited, for benchmarks.
    /// `Sandbox::set_concurrency_limit` changes it at runtime.
    pub max_connections_per_mailbox: u32,
    /// Messages (accepted `MAIL FROM`s) per mailbox within `rate_window` before `MAIL` gets
    /// `451 4.7.500 Access denied, please try again later`, Exchange's throttling reply
    /// (Exchange Online: 30 per minute, reference §4.1). 0 = off (the default).
    pub rate_limit: u32,
    /// The rolling window of `rate_limit` (default 60 s).
    pub rate_window: Duration,
    /// Address to listen on. Must be loopback; `Sandbox::start` refuses anything else.
    pub listen_ip: IpAddr,
    /// SMTP port; 0 = ephemeral.
    pub smtp_port: u16,
    /// Token endpoint (HTTPS) port; 0 = ephemeral.
    pub token_port: u16,
    /// An endpoint, or a proxy or gateway in front of it, that echoes the request: when set,
    /// every token request is refused with a non-JSON `400` whose body is this many filler
    /// characters followed by the request's form body, client secret and all (URL-encoded).
    /// The filler lets a test put the secret where an error excerpt is cut. `None` (the
    /// default): Entra's own answers.
    pub echo_token_requests: Option<usize>,
    /// SendAs rights: (mailbox, address or `@domain`) pairs, compared case-insensitively. A
    /// mailbox may always send as itself. Read only while `enforce_send_as` is on.
    pub send_as: Vec<(String, String)>,
    /// When on, `MAIL FROM` may name any address, and the end of DATA refuses a message whose
    /// envelope sender or `From:` is neither the authenticated mailbox nor covered by
    /// `send_as` with Exchange's `554 5.2.252 SendAsDenied` (reference §4.3). When off (the
    /// default), `MAIL FROM` must be the authenticated mailbox (`550 5.7.60` otherwise).
    pub enforce_send_as: bool,
    /// High Volume Email mode (reference §3.6, §4.7): AUTH wants the `Mail.Send` role and at
    /// least 10 minutes of token life (`501 5.5.127`), a `user=` that is not one of
    /// `mailboxes` gets `501 5.5.124`, and a recipient outside `accepted_domains` gets
    /// `550 5.5.105`.
    pub hve: bool,
    /// The organisation's domains, for HVE's internal-only rule. Empty (the default): the
    /// domains of `mailboxes`.
    pub accepted_domains: Vec<String>,
    /// Delegated sign-ins: (user, mailbox) pairs where the user has FullAccess to the mailbox
    /// (a shared mailbox), so the user's delegated token may authenticate as it.
    pub full_access: Vec<(String, String)>,
    /// `expires_in` of device codes (Entra: 900 s).
    pub device_code_lifetime: Duration,
    /// `interval` of device codes: how often `login` may poll (Entra: 5 s).
    pub device_code_interval: Duration,
    /// The issuer (`iss`) of `Sandbox::federated_token`: the sandbox plays a cluster's OIDC
    /// issuer. Default: an AKS-shaped URL.
    pub oidc_issuer: String,
    /// The app's federated identity credentials (reference §1.4). Default: the service
    /// account `system:serviceaccount:mail:smtp-oauth-relay` of `oidc_issuer`, and the
    /// first of `managed_identities` (issuer Entra, subject its object ID), both for
    /// `api://AzureADTokenExchange`.
    pub federated_credentials: Vec<FederatedCredential>,
    /// User-assigned identities attached to the machine the IMDS stand-in serves. Default:
    /// one.
    pub managed_identities: Vec<ManagedIdentity>,
    /// The machine's system-assigned identity, if it has one (default: none). It can get an
    /// IMDS token but cannot be a federated credential (reference §1.5).
    pub system_assigned_identity: Option<ManagedIdentity>,
    /// `expires_in` of IMDS tokens (IMDS: about 24 h).
    pub imds_token_lifetime: Duration,
    /// Certificates uploaded to the app ("Certificates & secrets"): client assertions signed
    /// with their keys are accepted. `Sandbox::register_certificate` and
    /// `unregister_certificate` change the list at runtime.
    pub certificates: Vec<RegisteredCertificate>,
}

/// A certificate uploaded to the app registration: its DER bytes, and whether it has expired
/// (Entra then refuses assertions it signed with AADSTS700027).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredCertificate {
    pub der: Vec<u8>,
    pub expired: bool,
}

impl RegisteredCertificate {
    pub fn from_der(der: Vec<u8>) -> Self {
        RegisteredCertificate {
            der,
            expired: false,
        }
    }

    /// The first `CERTIFICATE` block of a PEM text (the public part one uploads), if any.
    pub fn from_pem(pem_text: &str) -> Option<Self> {
        let blocks = pem::parse_many(pem_text).ok()?;
        let cert = blocks.into_iter().find(|b| b.tag() == "CERTIFICATE")?;
        Some(Self::from_der(cert.into_contents()))
    }

    /// The same certificate, marked expired.
    pub fn expired(mut self) -> Self {
        self.expired = true;
        self
    }
}

impl SandboxOptions {
    /// Defaults that look like a real single-tenant app registration, with a fresh random
    /// secret in Microsoft's current value shape.
    pub fn new(store_dir: PathBuf) -> Self {
        SandboxOptions {
            tenant: "11111111-2222-3333-4444-555555555555".to_string(),
            client_id: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".to_string(),
            client_secret: SecretString::from(random_client_secret()),
            mailboxes: vec!["relay@sandbox.example".to_string()],
            smtp_auth_disabled: Vec::new(),
            app_roles: vec![SMTP_ROLE.to_string()],
            token_lifetime: Duration::from_secs(3599),
            store_dir,
            max_connections_per_mailbox: 3,
            rate_limit: 0,
            rate_window: Duration::from_secs(60),
            listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            smtp_port: 0,
            token_port: 0,
            echo_token_requests: None,
            send_as: Vec::new(),
            enforce_send_as: false,
            hve: false,
            accepted_domains: Vec::new(),
            full_access: Vec::new(),
            device_code_lifetime: Duration::from_secs(900),
            device_code_interval: Duration::from_secs(5),
            oidc_issuer: DEFAULT_OIDC_ISSUER.to_string(),
            federated_credentials: Vec::new(),
            managed_identities: vec![ManagedIdentity {
                client_id: "99999999-8888-7777-6666-555555555555".to_string(),
                object_id: "12121212-3434-5656-7878-909090909090".to_string(),
            }],
            system_assigned_identity: None,
            imds_token_lifetime: Duration::from_secs(86399),
            certificates: Vec::new(),
        }
        .with_default_federation()
    }

    /// The default federated credentials (see [`Self::federated_credentials`]).
    fn with_default_federation(mut self) -> Self {
        self.federated_credentials = vec![FederatedCredential {
            issuer: self.oidc_issuer.clone(),
            subject: DEFAULT_SUBJECT.to_string(),
            audience: FEDERATION_AUDIENCE.to_string(),
        }];
        if let Some(mi) = self.managed_identities.first() {
            self.federated_credentials.push(FederatedCredential {
                issuer: entra_issuer(&self.tenant),
                subject: mi.object_id.clone(),
                audience: FEDERATION_AUDIENCE.to_string(),
            });
        }
        self
    }
}

/// Characters Entra uses in client secret values.
const SECRET_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-";

/// A 40-character secret in Microsoft's value shape: 3 chars, a digit, `Q~`, 34 chars
/// (reference §1.9), so the relay's secret-shape diagnostics see a plausible value.
fn random_client_secret() -> String {
    let mut rng = rand::rng();
    let mut pick = |n: usize| -> String {
        (0..n)
            .map(|_| SECRET_CHARS[rng.random_range(0..SECRET_CHARS.len())] as char)
            .collect()
    };
    let head = pick(3);
    let tail = pick(34);
    let digit = char::from(b'0' + rand::random_range(0..10u8));
    format!("{head}{digit}Q~{tail}")
}
#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn default_secret_has_microsofts_value_shape() {
        for _ in 0..50 {
            let s = random_client_secret();
            assert_eq!(s.len(), 40);
            let b = s.as_bytes();
            assert!(b[3].is_ascii_digit());
            assert_eq!(&b[4..6], b"Q~");
            assert!(b.iter().all(|c| SECRET_CHARS.contains(c)));
        }
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let opts = SandboxOptions::new(PathBuf::from("/tmp/x"));
        let shown = format!("{opts:?}");
        assert!(!shown.contains(opts.client_secret.expose_secret()));
    }
}
