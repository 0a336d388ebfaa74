//! Which credential an account uses, and its inputs checked: the kind is named by
//! `credential`, or found when exactly one kind is configured. Names the key at fault, and
//! never quotes a secret.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use super::env::ENV_PREFIX;
use super::file::{AccountConfig, ConfigError, DEFAULT_IMDS_ENDPOINT};
use crate::token::{CertificateFiles, Credential, CredentialKind};

/// The kinds whose inputs are set in `a`, in documentation order.
pub(super) fn configured_kinds(a: &AccountConfig) -> Vec<CredentialKind> {
    let mut kinds = Vec::new();
    if a.client_secret.is_some() || a.client_secret_file.is_some() {
        kinds.push(CredentialKind::Secret);
    }
    if a.client_certificate_file.is_some() || a.client_key_file.is_some() {
        kinds.push(CredentialKind::Certificate);
    }
    if a.federated_token_file.is_some() {
        kinds.push(CredentialKind::WorkloadIdentity);
    }
    if a.managed_identity_client_id.is_some() || a.imds_endpoint != DEFAULT_IMDS_ENDPOINT {
        kinds.push(CredentialKind::ManagedIdentity);
    }
    if a.refresh_token_file.is_some() {
        kinds.push(CredentialKind::Delegated);
    }
    kinds
}

/// The kind `a` uses: `credential` when set, else the one kind configured. Pure.
pub(super) fn choose_kind(a: &AccountConfig, key: &str) -> Result<CredentialKind, ConfigError> {
    if let Some(kind) = a.credential {
        return Ok(kind);
    }
    let kinds = configured_kinds(a);
    match kinds.as_slice() {
        [one] => Ok(*one),
        [] => Err(ConfigError::new(
            &format!("{key}.client_secret"),
            format!(
                "missing: a credential. Set the client secret value (env {ENV_PREFIX}CLIENT_SECRET \
                 or {ENV_PREFIX}CLIENT_SECRET_FILE), a certificate \
                 ({ENV_PREFIX}CLIENT_CERTIFICATE_FILE), or choose another kind with \
                 {key}.credential ({ENV_PREFIX}CREDENTIAL): {}",
                kind_list()
            ),
        )),
        many => Err(ConfigError::new(
            &format!("{key}.credential"),
            format!(
                "several credentials are configured ({}); say which one to use with \
                 {key}.credential ({ENV_PREFIX}CREDENTIAL)",
                many.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

fn kind_list() -> String {
    CredentialKind::ALL
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resolves the credential of account `a` (its keys are `{key}.…`, e.g. `account`).
/// Inputs of other kinds that are set anyway get a warning: they are not used.
pub(super) fn resolve(
    a: &AccountConfig,
    key: &str,
    warnings: &mut Vec<String>,
) -> Result<Credential, ConfigError> {
    let kind = choose_kind(a, key)?;
    for other in configured_kinds(a) {
        if other != kind {
            warnings.push(format!(
                "{key}.credential is `{kind}`: the settings of the `{other}` credential are \
                 set but not used"
            ));
        }
    }
    match kind {
        CredentialKind::Secret => resolve_secret(a, key),
        CredentialKind::Certificate => {
            let certificate = required_file(
                &a.client_certificate_file,
                &format!("{key}.client_certificate_file"),
                "the PEM certificate registered on the app",
                "CLIENT_CERTIFICATE_FILE",
            )?;
            for (path, name) in [
                (&a.client_key_file, "client_key_file"),
                (&a.client_key_passphrase_file, "client_key_passphrase_file"),
            ] {
                if let Some(p) = path {
                    readable(p, &format!("{key}.{name}"))?;
                }
            }
            let files = CertificateFiles {
                certificate,
                key: a.client_key_file.clone(),
                passphrase: a.client_key_passphrase_file.clone(),
                algorithm: a.certificate_algorithm,
            };
            // Parse now, so a wrong key or passphrase is named before the relay starts.
            let loaded = crate::token::certificate_files::load(&files)
                .map_err(|f| ConfigError::new(&format!("{key}.{}", f.at.key_name()), f.message))?;
            if let Some(e) =
                crate::token::expiry(Some(loaded.not_after), std::time::SystemTime::now())
            {
                warnings.push(format!(
                    "{key}.client_certificate_file: {e} (thumbprint {})",
                    loaded.thumbprints.portal()
                ));
            }
            Ok(Credential::Certificate(files))
        }
        CredentialKind::WorkloadIdentity => Ok(Credential::WorkloadIdentity {
            token_file: required_file(
                &a.federated_token_file,
                &format!("{key}.federated_token_file"),
                "the federated (service account) token file",
                "FEDERATED_TOKEN_FILE or AZURE_FEDERATED_TOKEN_FILE",
            )?,
        }),
        CredentialKind::ManagedIdentity => {
            let url = a.imds_endpoint.trim();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::new(
                    &format!("{key}.imds_endpoint"),
                    format!("`{url}` is not a URL such as {DEFAULT_IMDS_ENDPOINT}"),
                ));
            }
            let identity_client_id = a
                .managed_identity_client_id
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            if let Some(id) = &identity_client_id {
                if let Some(advice) = crate::diagnose::lint_client_id(id) {
                    return Err(ConfigError::new(
                        &format!("{key}.managed_identity_client_id"),
                        advice.to_string(),
                    ));
                }
            }
            if identity_client_id.is_none() {
                warnings.push(format!(
                    "{key}.managed_identity_client_id is not set: IMDS answers with the VM's only \
                     identity, and Entra cannot use a system-assigned identity as a federated \
                     credential (only a user-assigned one); set the user-assigned identity's \
                     client ID"
                ));
            }
            Ok(Credential::ManagedIdentity {
                imds_endpoint: url.to_string(),
                identity_client_id,
                federation_audience: a.cloud.federation_audience().to_string(),
            })
        }
        CredentialKind::Delegated => {
            let Some(path) = a.refresh_token_file.clone() else {
                return Err(ConfigError::new(
                    &format!("{key}.refresh_token_file"),
                    format!(
                        "missing: the file where `smtp-oauth-relay login` keeps the refresh token \
                         (env {ENV_PREFIX}REFRESH_TOKEN_FILE), e.g. \
                         /var/lib/smtp-oauth-relay/refresh-token"
                    ),
                ));
            };
            Ok(Credential::Delegated {
                refresh_token_file: path,
            })
        }
    }
}

fn required_file(
    value: &Option<PathBuf>,
    key: &str,
    what: &str,
    env: &str,
) -> Result<PathBuf, ConfigError> {
    match value {
        Some(p) if !p.as_os_str().is_empty() => {
            readable(p, key)?;
            Ok(p.clone())
        }
        _ => Err(ConfigError::new(
            key,
            format!("missing: {what} (env {ENV_PREFIX}{env})"),
        )),
    }
}

/// The file exists and can be opened (its content is checked by the token room).
fn readable(path: &Path, key: &str) -> Result<(), ConfigError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))
}

fn resolve_secret(a: &AccountConfig, key: &str) -> Result<Credential, ConfigError> {
    let secret_key = format!("{key}.client_secret");
    let file_key = format!("{key}.client_secret_file");
    let secret = match (&a.client_secret, &a.client_secret_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                &file_key,
                "set either client_secret or client_secret_file, not both",
            ))
        }
        (Some(s), None) => {
            let trimmed = s.expose_secret().trim();
            if trimmed.is_empty() {
                return Err(ConfigError::new(&secret_key, "is empty"));
            }
            SecretString::from(trimmed.to_string())
        }
        (None, Some(path)) => {
            crate::token::read_secret_file(path).map_err(|m| ConfigError::new(&file_key, m))?
        }
        (None, None) => {
            return Err(ConfigError::new(
                &secret_key,
                format!(
                    "missing: the client secret value (env {ENV_PREFIX}CLIENT_SECRET or \
                     {ENV_PREFIX}CLIENT_SECRET_FILE)"
                ),
            ))
        }
    };
    if let Some(advice) = crate::diagnose::lint_secret(secret.expose_secret()) {
        // Name where the value came from: the file, when there is one.
        return Err(match &a.client_secret_file {
            Some(path) => ConfigError::new(
                &file_key,
                format!("the file {} holds a bad value. {advice}", path.display()),
            ),
            None => ConfigError::new(&secret_key, advice.to_string()),
        });
    }
    Ok(Credential::Secret {
        secret,
        file: a.client_secret_file.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> AccountConfig {
        AccountConfig::default()
    }

    #[test]
    fn the_one_configured_kind_is_chosen() {
        let mut a = account();
        a.client_secret_file = Some("/s".into());
        assert_eq!(choose_kind(&a, "account").unwrap(), CredentialKind::Secret);
        let mut a = account();
        a.client_certificate_file = Some("/c.pem".into());
        assert_eq!(
            choose_kind(&a, "account").unwrap(),
            CredentialKind::Certificate
        );
        let mut a = account();
        a.federated_token_file = Some("/t".into());
        assert_eq!(
            choose_kind(&a, "account").unwrap(),
            CredentialKind::WorkloadIdentity
        );
        let mut a = account();
        a.managed_identity_client_id = Some("x".into());
        assert_eq!(
            choose_kind(&a, "account").unwrap(),
            CredentialKind::ManagedIdentity
        );
        let mut a = account();
        a.refresh_token_file = Some("/r".into());
        assert_eq!(
            choose_kind(&a, "account").unwrap(),
            CredentialKind::Delegated
        );
    }

    #[test]
    fn none_or_several_need_a_choice() {
        let e = choose_kind(&account(), "account").unwrap_err();
        assert_eq!(e.key, "account.client_secret");
        assert!(e.message.contains("CLIENT_SECRET"), "{}", e.message);
        assert!(e.message.contains("workload-identity"), "{}", e.message);

        let mut a = account();
        a.client_secret_file = Some("/s".into());
        a.client_certificate_file = Some("/c.pem".into());
        let e = choose_kind(&a, "account").unwrap_err();
        assert_eq!(e.key, "account.credential");
        assert!(e.message.contains("secret, certificate"), "{}", e.message);

        a.credential = Some(CredentialKind::Certificate);
        assert_eq!(
            choose_kind(&a, "account").unwrap(),
            CredentialKind::Certificate
        );
    }

    #[test]
    fn unused_inputs_of_another_kind_are_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        std::fs::write(&cert, rsa_pem()).unwrap();
        let mut a = account();
        a.credential = Some(CredentialKind::Certificate);
        a.client_certificate_file = Some(cert);
        a.client_secret = Some(SecretString::from("abc8Q~not-used"));
        let mut warnings = Vec::new();
        let c = resolve(&a, "account", &mut warnings).unwrap();
        assert_eq!(c.kind(), CredentialKind::Certificate);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("`secret`"), "{warnings:?}");
        assert!(!format!("{c:?} {warnings:?}").contains("abc8Q~"));
    }

    /// A self-signed RSA certificate followed by its key.
    fn rsa_pem() -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["relay".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        format!("{}{}", cert.pem(), key.serialize_pem())
    }

    #[test]
    fn certificate_faults_name_the_key_at_fault() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        std::fs::write(&cert, rsa_pem()).unwrap();
        std::fs::write(&key, "not a key").unwrap();
        let mut a = account();
        a.client_certificate_file = Some(cert.clone());
        assert!(resolve(&a, "account", &mut Vec::new()).is_ok());
        a.client_key_file = Some(key.clone());
        let e = resolve(&a, "account", &mut Vec::new()).unwrap_err();
        assert_eq!(e.key, "account.client_key_file");
        assert!(e.message.contains("k.pem"), "{}", e.message);
        a.client_key_file = None;
        std::fs::write(&cert, "garbage").unwrap();
        let e = resolve(&a, "account", &mut Vec::new()).unwrap_err();
        assert_eq!(e.key, "account.client_certificate_file");
    }

    #[test]
    fn missing_files_are_named() {
        let mut a = account();
        a.client_certificate_file = Some("/nonexistent/cert.pem".into());
        let e = resolve(&a, "account", &mut Vec::new()).unwrap_err();
        assert_eq!(e.key, "account.client_certificate_file");
        assert!(e.message.contains("/nonexistent/cert.pem"), "{}", e.message);

        let mut a = account();
        a.credential = Some(CredentialKind::WorkloadIdentity);
        let e = resolve(&a, "account", &mut Vec::new()).unwrap_err();
        assert_eq!(e.key, "account.federated_token_file");
        assert!(
            e.message.contains("AZURE_FEDERATED_TOKEN_FILE"),
            "{}",
            e.message
        );

        let mut a = account();
        a.credential = Some(CredentialKind::Delegated);
        let e = resolve(&a, "account", &mut Vec::new()).unwrap_err();
        assert_eq!(e.key, "account.refresh_token_file");

        let mut a = account();
        a.credential = Some(CredentialKind::ManagedIdentity);
        a.imds_endpoint = "169.254.169.254".into();
        let e = resolve(&a, "account", &mut Vec::new()).unwrap_err();
        assert_eq!(e.key, "account.imds_endpoint");
    }
}
