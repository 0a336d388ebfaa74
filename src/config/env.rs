//! The environment: the public short names (a stable interface for manifests and scripts),
//! `SMTP_OAUTH_RELAY__SECTION__KEY` for any key, and the typo check.

use figment::value::Value;

/// Prefix of every environment variable the relay reads.
pub const ENV_PREFIX: &str = "SMTP_OAUTH_RELAY_";

/// The public single-account environment variables (DESIGN §9) and the key each sets.
/// These names are a public interface: keep them stable.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("LISTEN", "listen.address"),
    ("LISTEN_TLS", "listen.implicit_tls_address"),
    ("INBOUND_TLS_CERT_FILE", "listen.tls_certificate_file"),
    ("INBOUND_TLS_KEY_FILE", "listen.tls_key_file"),
    ("INBOUND_TLS_SELF_SIGNED", "listen.tls_self_signed"),
    ("REQUIRE_TLS", "listen.require_tls"),
    ("USERS_FILE", "listen.users_file"),
    ("REQUIRE_AUTH", "listen.require_auth"),
    ("TENANT", "account.tenant"),
    ("CLIENT_ID", "account.client_id"),
    ("CLIENT_SECRET", "account.client_secret"),
    ("CLIENT_SECRET_FILE", "account.client_secret_file"),
    ("CLIENT_CERTIFICATE_FILE", "account.client_certificate_file"),
    ("CLIENT_KEY_FILE", "account.client_key_file"),
    (
        "CLIENT_KEY_PASSPHRASE_FILE",
        "account.client_key_passphrase_file",
    ),
    ("CREDENTIAL", "account.credential"),
    ("CLOUD", "account.cloud"),
    ("FEDERATED_TOKEN_FILE", "account.federated_token_file"),
    (
        "MANAGED_IDENTITY_CLIENT_ID",
        "account.managed_identity_client_id",
    ),
    ("REFRESH_TOKEN_FILE", "account.refresh_token_file"),
    ("MAILBOX", "account.mailbox"),
    ("AUTHORITY", "account.authority"),
    ("SCOPE", "account.scope"),
    ("UPSTREAM", "upstream.address"),
    ("MAX_CONNECTIONS", "upstream.max_connections"),
    ("EXTRA_CA_FILE", "tls.extra_ca_file"),
    ("SPOOL_DIR", "delivery.spool_dir"),
    ("RATE_PER_MINUTE", "governor.rate_per_minute"),
    ("GOVERNOR_SHARED", "governor.shared"),
    (
        "GOVERNOR_SHARED_PASSWORD_FILE",
        "governor.shared_password_file",
    ),
    ("GOVERNOR_EXPECTED_REPLICAS", "governor.expected_replicas"),
    ("MODE", "delivery.mode"),
    ("NOTICE_TO", "notice.to"),
    ("LOG_FORMAT", "log.format"),
    ("ADMIN_LISTEN", "admin.listen"),
    ("SHUTDOWN_GRACE_SECS", "shutdown.grace_secs"),
];

/// Variables with our prefix that are read elsewhere (not configuration keys).
const ENV_NOT_KEYS: &[&str] = &["CONFIG"];

/// An environment value as configuration: a list (`["10.0.0.0/8", "::1/128"]` or
/// `10.0.0.0/8,::1/128`) for a key that takes one, else the string as given (so an all-digit secret stays a string; serde
/// turns strings into numbers and booleans where the key wants them).
pub(super) fn env_value(key: &str, value: String) -> Value {
    if is_list_key(key) {
        if value.trim_start().starts_with('[') {
            // figment parses a string into a value and never fails (at worst: a string).
            let Ok(v) = value.parse::<Value>();
            return v;
        } else {
            // Also `10.0.0.0/8,192.168.0.0/16`, the form people type into manifests.
            let items: Vec<Value> = value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(Value::from)
                .collect();
            return Value::from(items);
        }
    }
    Value::from(value)
}

/// Keys whose value is a list.
const LIST_KEYS: &[&str] = &["listen.allow"];
/// Keys of an account whose value is a list (`account.<key>` or `account.<name>.<key>`).
const ACCOUNT_LIST_KEYS: &[&str] = &["senders", "send_as"];

fn is_list_key(key: &str) -> bool {
    if LIST_KEYS.contains(&key) {
        return true;
    }
    let parts: Vec<&str> = key.split('.').collect();
    matches!(parts.as_slice(), ["account", field] | ["account", _, field] if ACCOUNT_LIST_KEYS.contains(field))
}

/// Turns the environment into `(dotted.key, value)` overrides. Unknown variables with our
/// prefix are reported as warnings by [`unknown_env_vars`].
pub fn env_overrides(env: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, value) in env {
        if let Some(rest) = name.strip_prefix("SMTP_OAUTH_RELAY__") {
            let key = rest
                .split("__")
                .map(|s| s.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(".");
            out.push((key, value.clone()));
        } else if let Some(short) = name.strip_prefix(ENV_PREFIX) {
            if let Some((_, key)) = ENV_KEYS.iter().find(|(n, _)| *n == short) {
                out.push(((*key).to_string(), value.clone()));
            }
        }
    }
    out
}

/// Variables that look like ours but are not read: probably typos.
pub fn unknown_env_vars(env: &[(String, String)]) -> Vec<String> {
    env.iter()
        .filter_map(|(name, _)| {
            let short = name.strip_prefix(ENV_PREFIX)?;
            if short.starts_with('_')
                || ENV_KEYS.iter().any(|(n, _)| *n == short)
                || ENV_NOT_KEYS.contains(&short)
            {
                None
            } else {
                Some(name.clone())
            }
        })
        .collect()
}
