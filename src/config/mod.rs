//! Configuration: plain data, loaded once (TOML file, then environment), validated once,
//! before any port is bound (DESIGN §9).
//!
//! [`Config`] is what the file and the environment say; [`Config::validate`] turns it into a
//! [`ValidConfig`] or a [`ConfigError`] that names the key at fault. Nothing else in the
//! crate reads raw configuration, so unvalidated values cannot be used by mistake.
//!
//! Config sits above the rooms: each room defines the settings it needs
//! ([`crate::smtp::ListenSettings`], [`crate::upstream::UpstreamSettings`],
//! [`crate::delivery::DeliverySettings`], [`crate::governor::Limits`],
//! [`crate::token::SourceSettings`]) and [`ValidConfig`] is made of them; no room imports
//! this one.
//!
//! - `file.rs`: the file's shape and its defaults; `mod.rs`: loading.
//! - `env.rs`: the environment variables and how they map to keys.
//! - `validate.rs`: checks and resolution into room settings.
//!
//! The environment is passed in as a list of `(name, value)` pairs instead of being read
//! here, so tests never have to set real environment variables.

mod account;
mod accounts;
mod address;
mod credential;
mod env;
mod file;
mod governor;
mod inbound;
mod keys;
#[cfg(test)]
mod tests;
mod validate;

use std::path::Path;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;

pub use account::{upstream_address, ValidLane};
use env::env_value;
pub use env::{env_overrides, unknown_env_vars, ENV_KEYS, ENV_PREFIX};
pub use file::{
    AccountConfig, AdminConfig, Config, ConfigError, DeliveryConfig, EndpointKind, GovernorConfig,
    ListenConfig, LogConfig, LogFormat, RouteConfig, ShutdownConfig, TlsConfig, UpstreamConfig,
    DEFAULT_AUTHORITY, DEFAULT_SCOPE, DEFAULT_UPSTREAM, EXCHANGE_MAX_SIZE, HVE_UPSTREAM,
};
pub use validate::{split_authority, split_host_port, validate_admin, ValidAccount, ValidConfig};

impl Config {
    /// Loads the TOML file (if any), then applies environment overrides: the public names
    /// of [`ENV_KEYS`], `SMTP_OAUTH_RELAY__SECTION__KEY` for any key, and
    /// `SMTP_OAUTH_RELAY__ACCOUNT__<NAME>__<KEY>` for a key of the account named `<name>`
    /// (made if the file has none of that name).
    pub fn load(file: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::new(
                    "--config",
                    format!("configuration file {} does not exist", path.display()),
                ));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // A syntax error names the file (its line and column come with the message).
        let in_file = |e: figment::Error| {
            let key = match (e.path.is_empty(), file) {
                (false, _) => e.path.join("."),
                (true, Some(path)) => path.display().to_string(),
                (true, None) => "config".to_string(),
            };
            ConfigError::new(&key, e.kind.to_string())
        };
        let mut merged: serde_json::Value = figment.extract().map_err(in_file)?;
        if !merged.is_object() {
            merged = serde_json::Value::Object(Default::default());
        }
        let mut overrides = Vec::new();
        for (key, value) in env_overrides(env) {
            let value = serde_json::to_value(env_value(&key, value)).unwrap_or_default();
            overrides.push((key, value));
        }
        accounts::apply_overrides(&mut merged, overrides)?;
        accounts::normalise(&mut merged);
        // Every unknown key at once, before serde stops at the first.
        let mut known = serde_json::to_value(Config::default()).unwrap_or_default();
        if let Some(k) = known.as_object_mut() {
            // Known keys of the list sections are those of one entry.
            for list in ["account", "route"] {
                if let Some(v) = k.get_mut(list) {
                    *v = serde_json::Value::Array(vec![v.take()]);
                }
            }
        }
        let unknown = keys::unknown_keys(&merged, &known);
        if !unknown.is_empty() {
            let names: Vec<&str> = unknown.iter().map(|(k, _)| k.as_str()).collect();
            return Err(ConfigError::new(
                &names.join(", "),
                keys::describe(&unknown),
            ));
        }
        // A bad value in an account is named as the account's key (`account.cloud`, or
        // `account.<name>.cloud` among several), not by its place in the list.
        let accounts = merged
            .get("account")
            .and_then(serde_json::Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut config = Figment::from(Serialized::defaults(merged))
            .extract_lossy::<Config>()
            .map_err(|mut e| {
                if e.path.len() >= 2 && e.path[0] == "account" {
                    if let Ok(i) = e.path[1].parse::<usize>() {
                        let name = accounts
                            .get(i)
                            .and_then(|a| a.get("name"))
                            .and_then(serde_json::Value::as_str);
                        match (accounts.len(), name) {
                            (1, _) => {
                                e.path.remove(1);
                            }
                            (_, Some(n)) => e.path[1] = n.to_string(),
                            _ => e.path[1] = format!("[{}]", i + 1),
                        }
                    }
                }
                in_file(e)
            })?;
        if let [account] = config.account.as_mut_slice() {
            apply_azure_env(account, env);
        } else if config.account.is_empty() {
            let mut account = AccountConfig::default();
            apply_azure_env(&mut account, env);
            config.account.push(account);
        }
        Ok(config)
    }

    /// Loads from a TOML string (tests, `config/*.toml` checks).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let named = |e: figment::Error| ConfigError::new(&e.path.join("."), e.kind.to_string());
        let mut value: serde_json::Value =
            Figment::from(Toml::string(text)).extract().map_err(named)?;
        accounts::normalise(&mut value);
        Figment::from(Serialized::defaults(value))
            .extract::<Config>()
            .map_err(named)
    }

    /// Checks every value and resolves files (secret, CA). Names the key at fault.
    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        validate::validate(self)
    }
}

/// The workload identity variables of an AKS pod (`AZURE_*`, reference §1.4) configure the
/// account when it uses workload identity: named so, or with no other credential configured.
/// Our own settings win over them.
fn apply_azure_env(account: &mut AccountConfig, env: &[(String, String)]) {
    use crate::token::CredentialKind;
    let get = |name: &str| {
        env.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let Some(token_file) = get("AZURE_FEDERATED_TOKEN_FILE") else {
        return;
    };
    let applies = match account.credential {
        Some(kind) => kind == CredentialKind::WorkloadIdentity,
        None => credential::configured_kinds(account)
            .iter()
            .all(|k| *k == CredentialKind::WorkloadIdentity),
    };
    if !applies {
        return;
    }
    if account.federated_token_file.is_none() {
        account.federated_token_file = Some(token_file.into());
    }
    if account.client_id.is_none() {
        account.client_id = get("AZURE_CLIENT_ID");
    }
    if account.tenant.is_none() {
        account.tenant = get("AZURE_TENANT_ID");
    }
    if account.authority.is_none() {
        account.authority = get("AZURE_AUTHORITY_HOST");
    }
}
