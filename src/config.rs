//! Configuration: plain data, loaded once (TOML file, then environment), validated once,
//! before any port is bound (DESIGN §9).
//!
//! [`Config`] is what the file and the environment say; [`Config::validate`] turns it into a
//! [`ValidConfig`] or a [`ConfigError`] that names the key at fault. Nothing else in the
//! crate reads raw configuration, so unvalidated values cannot be used by mistake.
//!
//! The environment is passed in as a list of `(name, value)` pairs instead of being read
//! here, so tests never have to set real environment variables.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::Value;
use figment::Figment;
use ipnet::IpNet;
use rustls_pki_types::CertificateDer;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Prefix of every environment variable the relay reads.
pub const ENV_PREFIX: &str = "SMTP_OAUTH_RELAY_";

/// Default Microsoft identity platform host (global cloud).
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// The documented scope for app-only SMTP AUTH (reference §1.2).
pub const DEFAULT_SCOPE: &str = "https://outlook.office365.com/.default";
/// Exchange Online client submission endpoint (reference §0).
pub const DEFAULT_UPSTREAM: &str = "smtp.office365.com:587";
/// Exchange Online's advertised `SIZE` ceiling (reference §4.2); larger limits make no sense.
pub const EXCHANGE_MAX_SIZE: u64 = 157_286_400;

/// The public single-account environment variables (DESIGN §9) and the key each sets.
/// These names are a public interface: keep them stable.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("LISTEN", "listen.address"),
    ("TENANT", "account.tenant"),
    ("CLIENT_ID", "account.client_id"),
    ("CLIENT_SECRET", "account.client_secret"),
    ("CLIENT_SECRET_FILE", "account.client_secret_file"),
    ("MAILBOX", "account.mailbox"),
    ("AUTHORITY", "account.authority"),
    ("SCOPE", "account.scope"),
    ("UPSTREAM", "upstream.address"),
    ("MAX_CONNECTIONS", "upstream.max_connections"),
    ("EXTRA_CA_FILE", "tls.extra_ca_file"),
    ("SPOOL_DIR", "delivery.spool_dir"),
    ("RATE_PER_MINUTE", "governor.rate_per_minute"),
    ("MODE", "delivery.mode"),
    ("LOG_FORMAT", "log.format"),
    ("ADMIN_LISTEN", "admin.listen"),
    ("SHUTDOWN_GRACE_SECS", "shutdown.grace_secs"),
];

/// Variables with our prefix that are read elsewhere (not configuration keys).
const ENV_NOT_KEYS: &[&str] = &["CONFIG"];

/// Everything the configuration file and environment may say. Defaults are the documented
/// defaults of `config/relay.example.toml`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: ListenConfig,
    pub account: AccountConfig,
    pub upstream: UpstreamConfig,
    pub tls: TlsConfig,
    pub delivery: DeliveryConfig,
    pub governor: GovernorConfig,
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub shutdown: ShutdownConfig,
}

/// The admin HTTP server: `/healthz`, `/readyz`, `/metrics`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port` for the admin HTTP server, or `off`. Loopback by default; in a Kubernetes
    /// pod set `0.0.0.0:9325` so the kubelet's probes and Prometheus can reach it (it serves
    /// no secrets and accepts no changes).
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9325".into(),
        }
    }
}

/// What SIGTERM/SIGINT do.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Seconds to let messages in DATA and deliveries in flight finish after SIGTERM/SIGINT.
    /// A second signal exits at once. Queued mail stays in the spool either way.
    pub grace_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { grace_secs: 30 }
    }
}

/// The inbound SMTP listener: where legacy apps connect.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// `host:port` to listen on. Loopback by default: the relay is a sidecar.
    pub address: String,
    /// Client networks allowed to connect besides loopback. Required before a non-loopback
    /// address may be bound, so the relay never becomes an accidental open relay.
    pub allow: Vec<IpNet>,
    /// Name used in the greeting, EHLO reply and `Received:` header. Default: system host name.
    pub hostname: Option<String>,
    /// Concurrent inbound connections; further clients wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Largest message accepted, in bytes (`552 5.3.4` above it). Default 35 MiB, a common
    /// Exchange Online mailbox `MaxSendSize`.
    pub max_message_size: u64,
    /// Recipients per message (`452 4.5.3` above it). Exchange's default per-message cap.
    pub max_recipients: usize,
    /// Seconds to wait for the next command before `421`.
    pub command_timeout_secs: u64,
    /// Seconds to wait for the next block of message data before `421`.
    pub data_timeout_secs: u64,
    /// Prepend one RFC 5321 §4.4 `Received:` trace header to every message.
    pub received_header: bool,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:2525".into(),
            allow: Vec::new(),
            hostname: None,
            max_connections: 1000,
            max_message_size: 35 * 1024 * 1024,
            max_recipients: 500,
            command_timeout_secs: 300,
            data_timeout_secs: 300,
            received_header: true,
        }
    }
}

/// The Microsoft 365 app registration and mailbox the relay sends as.
#[derive(Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountConfig {
    /// Directory (tenant) ID, or a verified domain. Not `common`/`organizations`.
    pub tenant: Option<String>,
    /// Application (client) ID of the app registration.
    pub client_id: Option<String>,
    /// The client secret *value* (not its ID). Prefer `client_secret_file`.
    #[serde(serialize_with = "serialize_redacted")]
    pub client_secret: Option<SecretString>,
    /// File holding the client secret value (trailing newline ignored).
    pub client_secret_file: Option<PathBuf>,
    /// Mailbox to send as: the XOAUTH2 `user=`.
    pub mailbox: Option<String>,
    /// Token service base URL. A Jama-style `https://login.microsoftonline.com/<tenant>/v2.0`
    /// is accepted too and supplies the tenant.
    pub authority: String,
    /// Token scope.
    pub scope: String,
    /// Refresh the token in the background when less than this many seconds are left.
    pub refresh_margin_secs: u64,
    /// Seconds a token request may take.
    pub token_timeout_secs: u64,
    /// Which address goes into the upstream `MAIL FROM`: `mailbox` (the authenticated
    /// mailbox, which Exchange always accepts) or `client` (the app's own envelope sender,
    /// which needs SendAs rights on that address).
    pub envelope_sender: EnvelopeSender,
}

impl Default for AccountConfig {
    fn default() -> Self {
        Self {
            tenant: None,
            client_id: None,
            client_secret: None,
            client_secret_file: None,
            mailbox: None,
            authority: DEFAULT_AUTHORITY.into(),
            scope: DEFAULT_SCOPE.into(),
            refresh_margin_secs: 15 * 60,
            token_timeout_secs: 30,
            envelope_sender: EnvelopeSender::Mailbox,
        }
    }
}

impl std::fmt::Debug for AccountConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountConfig")
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("client_secret_file", &self.client_secret_file)
            .field("mailbox", &self.mailbox)
            .field("authority", &self.authority)
            .field("scope", &self.scope)
            .field("refresh_margin_secs", &self.refresh_margin_secs)
            .field("envelope_sender", &self.envelope_sender)
            .finish()
    }
}

/// Configuration is serialised only to list its keys (docs checks): never the secret.
fn serialize_redacted<S: serde::Serializer>(
    value: &Option<SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_some(&value.as_ref().map(|_| "<redacted>"))
}

/// See [`AccountConfig::envelope_sender`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvelopeSender {
    Mailbox,
    Client,
}

/// Exchange Online's SMTP submission endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `host:port` of the STARTTLS submission server.
    pub address: String,
    /// Name to verify the server certificate against. Default: the host of `address`.
    pub tls_server_name: Option<String>,
    /// Authenticated connections per mailbox. Exchange allows 3 (reference §4.1); 0 = no
    /// limit (benchmarks against the sandbox).
    pub max_connections: usize,
    /// Seconds for TCP connect plus greeting.
    pub connect_timeout_secs: u64,
    /// Seconds for each command reply.
    pub command_timeout_secs: u64,
    /// Seconds to send the body and get the final reply.
    pub data_timeout_secs: u64,
    /// Close an idle pooled connection after this many seconds.
    pub idle_timeout_secs: u64,
    /// Retire a pooled connection after this many seconds, however busy.
    pub max_session_age_secs: u64,
    /// Name sent in EHLO. Default: `listen.hostname`.
    pub helo_name: Option<String>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            address: DEFAULT_UPSTREAM.into(),
            tls_server_name: None,
            max_connections: 3,
            connect_timeout_secs: 30,
            command_timeout_secs: 60,
            data_timeout_secs: 600,
            idle_timeout_secs: 60,
            max_session_age_secs: 600,
            helo_name: None,
        }
    }
}

/// TLS trust for outbound connections (token endpoint and upstream).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of extra trusted CAs (corporate TLS proxy, or the sandbox's CA).
    pub extra_ca_file: Option<PathBuf>,
}

/// When the client gets its answer (DESIGN §3).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    pub mode: DeliveryMode,
    /// The spool: bodies stream here as they arrive; queued messages live here until
    /// delivered or failed.
    pub spool_dir: PathBuf,
    /// Hybrid mode: how long the client waits for the first delivery attempt before it gets
    /// `250` (queued) and the attempt goes on in the background.
    pub try_now_timeout_secs: u64,
    /// Give up on a message this many seconds after it was received (default 5 days).
    pub max_age_secs: u64,
    /// Keep permanently failed messages in `failed/` this many seconds (default 7 days).
    pub failed_retention_secs: u64,
    /// Send a short failure notice to the envelope sender, through the same mailbox, when a
    /// queued message finally fails.
    pub failure_notice: bool,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            mode: DeliveryMode::Hybrid,
            spool_dir: PathBuf::from("./spool"),
            try_now_timeout_secs: 30,
            max_age_secs: 5 * 24 * 3600,
            failed_retention_secs: 7 * 24 * 3600,
            failure_notice: false,
        }
    }
}

/// Per-mailbox pacing (reference §4.1). `0` disables a limit (benchmarks against the sandbox).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GovernorConfig {
    /// Messages per rolling window (Exchange: 30 per minute).
    pub rate_per_minute: u32,
    /// The window `rate_per_minute` counts over, in seconds. Exchange's is 60; shorter windows
    /// are for tests and benchmarks.
    pub rate_window_secs: u64,
    /// Recipients per rolling 24 hours (Exchange: 10,000).
    pub daily_recipients: u32,
    /// Messages with more recipients are sent in batches of this size (Exchange: 500).
    pub recipients_per_message: u32,
}

impl Default for GovernorConfig {
    fn default() -> Self {
        Self {
            rate_per_minute: 30,
            rate_window_secs: 60,
            daily_recipients: 10_000,
            recipients_per_message: 500,
        }
    }
}

/// See DESIGN §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    Hybrid,
    Queue,
    Direct,
}

/// Log output.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A configuration problem, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration error in `{key}`: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: &str, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Validated, resolved configuration: the only form the rest of the crate accepts.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    pub listen: ValidListen,
    pub account: ValidAccount,
    pub upstream: ValidUpstream,
    pub extra_roots: Vec<CertificateDer<'static>>,
    pub mode: DeliveryMode,
    pub spool_dir: PathBuf,
    pub delivery: ValidDelivery,
    pub governor: crate::governor::Limits,
    pub log_format: LogFormat,
    /// Admin HTTP address; `None` when `admin.listen = "off"`.
    pub admin: Option<SocketAddr>,
    pub shutdown_grace: Duration,
    /// Things worth a log line but not worth refusing to start.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ValidListen {
    pub address: SocketAddr,
    pub allow: Vec<IpNet>,
    pub hostname: String,
    pub max_connections: usize,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub received_header: bool,
}

impl ValidListen {
    /// Whether a client at `ip` may use the relay: loopback always, others only if allowed.
    pub fn permits(&self, ip: IpAddr) -> bool {
        ip.is_loopback()
            || ip.to_canonical().is_loopback()
            || self
                .allow
                .iter()
                .any(|net| net.contains(&ip) || net.contains(&ip.to_canonical()))
    }
}

#[derive(Clone)]
pub struct ValidAccount {
    pub tenant: String,
    pub client_id: String,
    pub client_secret: SecretString,
    pub mailbox: String,
    /// Full token endpoint URL.
    pub token_url: String,
    pub scope: String,
    pub refresh_margin: Duration,
    pub token_timeout: Duration,
    pub envelope_sender: EnvelopeSender,
    /// Where the secret came from, if a file: SIGHUP reads it again.
    pub client_secret_file: Option<PathBuf>,
}

impl std::fmt::Debug for ValidAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidAccount")
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("mailbox", &self.mailbox)
            .field("token_url", &self.token_url)
            .field("scope", &self.scope)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct ValidDelivery {
    pub try_now_timeout: Duration,
    pub max_age: Duration,
    pub failed_retention: Duration,
    pub failure_notice: bool,
}

#[derive(Debug, Clone)]
pub struct ValidUpstream {
    pub host: String,
    pub port: u16,
    pub tls_server_name: String,
    pub max_connections: usize,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_session_age: Duration,
    pub helo_name: String,
}

impl Config {
    /// Loads the TOML file (if any), then applies environment overrides: the public names
    /// of [`ENV_KEYS`], and `SMTP_OAUTH_RELAY__SECTION__KEY` for any key.
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
        for (key, value) in env_overrides(env) {
            figment = figment.merge(Serialized::global(&key, env_value(&key, value)));
        }
        figment.extract_lossy::<Config>().map_err(|e| {
            let key = if e.path.is_empty() {
                "config".to_string()
            } else {
                e.path.join(".")
            };
            ConfigError::new(&key, e.kind.to_string())
        })
    }

    /// Loads from a TOML string (tests, `config/*.toml` checks).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Figment::from(Toml::string(text))
            .extract::<Config>()
            .map_err(|e| ConfigError::new(&e.path.join("."), e.kind.to_string()))
    }

    /// Checks every value and resolves files (secret, CA). Names the key at fault.
    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        let mut warnings = Vec::new();
        let listen = validate_listen(&self.listen)?;
        let account = validate_account(&self.account, &mut warnings)?;
        let upstream = validate_upstream(&self.upstream, &listen.hostname)?;
        let extra_roots = match &self.tls.extra_ca_file {
            None => Vec::new(),
            Some(path) => crate::tls::load_pem_certificates(path)
                .map_err(|e| ConfigError::new("tls.extra_ca_file", e.to_string()))?,
        };
        let delivery = validate_delivery(&self.delivery)?;
        let governor = validate_governor(&self.governor, &self.upstream);
        if self.delivery.spool_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("delivery.spool_dir", "must not be empty"));
        }
        Ok(ValidConfig {
            listen,
            account,
            upstream,
            extra_roots,
            mode: self.delivery.mode,
            spool_dir: self.delivery.spool_dir,
            delivery,
            governor,
            log_format: self.log.format,
            admin: validate_admin(&self.admin)?,
            shutdown_grace: Duration::from_secs(self.shutdown.grace_secs),
            warnings,
        })
    }
}

/// An environment value as configuration: a list (`["10.0.0.0/8", "::1/128"]` or
/// `10.0.0.0/8,::1/128`) for a key that takes one, else the string as given (so an all-digit secret stays a string; serde
/// turns strings into numbers and booleans where the key wants them).
fn env_value(key: &str, value: String) -> Value {
    if LIST_KEYS.contains(&key) {
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

/// `admin.listen`: `off` or a socket address (no name lookup: the admin port is local).
pub fn validate_admin(a: &AdminConfig) -> Result<Option<SocketAddr>, ConfigError> {
    let v = a.listen.trim();
    if v.eq_ignore_ascii_case("off") || v.is_empty() {
        return Ok(None);
    }
    v.parse::<SocketAddr>().map(Some).map_err(|_| {
        ConfigError::new(
            "admin.listen",
            format!("`{v}` is not host:port with an IP address (e.g. 127.0.0.1:9325), or `off`"),
        )
    })
}

fn validate_delivery(d: &DeliveryConfig) -> Result<ValidDelivery, ConfigError> {
    for (key, v) in [
        ("delivery.try_now_timeout_secs", d.try_now_timeout_secs),
        ("delivery.max_age_secs", d.max_age_secs),
    ] {
        if v == 0 {
            return Err(ConfigError::new(key, "must be at least 1 second"));
        }
    }
    Ok(ValidDelivery {
        try_now_timeout: Duration::from_secs(d.try_now_timeout_secs),
        max_age: Duration::from_secs(d.max_age_secs),
        failed_retention: Duration::from_secs(d.failed_retention_secs),
        failure_notice: d.failure_notice,
    })
}

fn validate_governor(g: &GovernorConfig, u: &UpstreamConfig) -> crate::governor::Limits {
    crate::governor::Limits {
        max_connections: u.max_connections as u32,
        rate: g.rate_per_minute,
        rate_window: Duration::from_secs(g.rate_window_secs.max(1)),
        daily_recipients: g.daily_recipients,
        max_recipients_per_message: g.recipients_per_message,
    }
}

fn validate_listen(l: &ListenConfig) -> Result<ValidListen, ConfigError> {
    let address: SocketAddr = l.address.parse().map_err(|_| {
        ConfigError::new(
            "listen.address",
            format!(
                "`{}` is not an IP address and port such as 127.0.0.1:2525",
                l.address
            ),
        )
    })?;
    if !address.ip().is_loopback() && l.allow.is_empty() {
        return Err(ConfigError::new(
            "listen.allow",
            format!(
                "listening on non-loopback address {address} needs `listen.allow`, the client \
                 networks that may relay (e.g. [\"10.0.0.0/8\"]); without it the relay would be \
                 an open relay"
            ),
        ));
    }
    if l.max_connections == 0 {
        return Err(ConfigError::new(
            "listen.max_connections",
            "must be at least 1",
        ));
    }
    if l.max_message_size == 0 || l.max_message_size > EXCHANGE_MAX_SIZE {
        return Err(ConfigError::new(
            "listen.max_message_size",
            format!("must be between 1 and {EXCHANGE_MAX_SIZE} bytes (Exchange Online's ceiling)"),
        ));
    }
    if l.max_recipients == 0 {
        return Err(ConfigError::new(
            "listen.max_recipients",
            "must be at least 1",
        ));
    }
    for (key, v) in [
        ("listen.command_timeout_secs", l.command_timeout_secs),
        ("listen.data_timeout_secs", l.data_timeout_secs),
    ] {
        if v == 0 {
            return Err(ConfigError::new(key, "must be at least 1 second"));
        }
    }
    let hostname = match &l.hostname {
        Some(h) => h.clone(),
        None => gethostname::gethostname()
            .into_string()
            .unwrap_or_else(|_| "localhost".into()),
    };
    if hostname.is_empty() || !hostname.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ConfigError::new(
            "listen.hostname",
            format!("`{hostname}` is not a usable host name"),
        ));
    }
    Ok(ValidListen {
        address,
        allow: l.allow.clone(),
        hostname,
        max_connections: l.max_connections,
        max_message_size: l.max_message_size,
        max_recipients: l.max_recipients,
        command_timeout: Duration::from_secs(l.command_timeout_secs),
        data_timeout: Duration::from_secs(l.data_timeout_secs),
        received_header: l.received_header,
    })
}

fn required<'a>(value: &'a Option<String>, key: &str, what: &str) -> Result<&'a str, ConfigError> {
    match value.as_deref().map(str::trim) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(ConfigError::new(
            key,
            format!(
                "missing: {what} (env {})",
                env_name_for(key).unwrap_or_else(|| "-".into())
            ),
        )),
    }
}

fn env_name_for(key: &str) -> Option<String> {
    ENV_KEYS
        .iter()
        .find(|(_, k)| *k == key)
        .map(|(n, _)| format!("{ENV_PREFIX}{n}"))
}

fn validate_account(
    a: &AccountConfig,
    warnings: &mut Vec<String>,
) -> Result<ValidAccount, ConfigError> {
    let (authority, tenant_from_authority) =
        split_authority(&a.authority).map_err(|m| ConfigError::new("account.authority", m))?;
    let tenant = match (a.tenant.as_deref().map(str::trim), tenant_from_authority) {
        (Some(t), Some(from_url)) if !t.is_empty() && !t.eq_ignore_ascii_case(&from_url) => {
            return Err(ConfigError::new(
                "account.authority",
                format!(
                    "the authority URL names tenant `{from_url}` but `account.tenant` is `{t}`; \
                     keep one of them"
                ),
            ))
        }
        (Some(t), _) if !t.is_empty() => t.to_string(),
        (_, Some(from_url)) => from_url,
        _ => required(&a.tenant, "account.tenant", "the Directory (tenant) ID")?.to_string(),
    };
    if let Some(a) = crate::diagnose::lint_tenant(&tenant) {
        return Err(ConfigError::new("account.tenant", a.to_string()));
    }
    let client_id = required(
        &a.client_id,
        "account.client_id",
        "the Application (client) ID",
    )?
    .to_string();
    if let Some(a) = crate::diagnose::lint_client_id(&client_id) {
        return Err(ConfigError::new("account.client_id", a.to_string()));
    }
    let client_secret = resolve_secret(a)?;
    if let Some(a) = crate::diagnose::lint_secret(client_secret.expose_secret()) {
        return Err(ConfigError::new("account.client_secret", a.to_string()));
    }
    let mailbox = required(&a.mailbox, "account.mailbox", "the mailbox to send as")?.to_string();
    if !mailbox.contains('@') || mailbox.chars().any(|c| c.is_whitespace() || c == '<') {
        return Err(ConfigError::new(
            "account.mailbox",
            format!("`{mailbox}` is not an email address such as relay@contoso.com"),
        ));
    }
    let scope = a.scope.trim().to_string();
    if let Some(a) = crate::diagnose::lint_scope(&scope) {
        return Err(ConfigError::new("account.scope", a.to_string()));
    }
    if a.refresh_margin_secs < 60 {
        warnings.push(format!(
            "account.refresh_margin_secs = {} is short; tokens will be refreshed late",
            a.refresh_margin_secs
        ));
    }
    if a.token_timeout_secs == 0 {
        return Err(ConfigError::new(
            "account.token_timeout_secs",
            "must be at least 1 second",
        ));
    }
    Ok(ValidAccount {
        token_url: crate::token::client_secret::token_url(&authority, &tenant),
        tenant,
        client_id,
        client_secret,
        mailbox,
        scope,
        refresh_margin: Duration::from_secs(a.refresh_margin_secs),
        token_timeout: Duration::from_secs(a.token_timeout_secs),
        envelope_sender: a.envelope_sender,
        client_secret_file: a.client_secret_file.clone(),
    })
}

fn resolve_secret(a: &AccountConfig) -> Result<SecretString, ConfigError> {
    match (&a.client_secret, &a.client_secret_file) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            "account.client_secret_file",
            "set either client_secret or client_secret_file, not both",
        )),
        (Some(s), None) => {
            let trimmed = s.expose_secret().trim();
            if trimmed.is_empty() {
                return Err(ConfigError::new("account.client_secret", "is empty"));
            }
            Ok(SecretString::from(trimmed.to_string()))
        }
        (None, Some(path)) => read_secret_file(path),
        (None, None) => Err(ConfigError::new(
            "account.client_secret",
            format!(
                "missing: the client secret value (env {ENV_PREFIX}CLIENT_SECRET or \
                 {ENV_PREFIX}CLIENT_SECRET_FILE)"
            ),
        )),
    }
}

/// Reads a secret file (trailing newline ignored). Used at start-up and again on SIGHUP, when a rotated secret has been written to the file.
pub fn read_secret_file(path: &Path) -> Result<SecretString, ConfigError> {
    let key = "account.client_secret_file";
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(ConfigError::new(
            key,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(SecretString::from(trimmed.to_string()))
}

/// Splits an authority into base URL and, for a Jama/MSAL-style authority
/// (`https://login.microsoftonline.com/<tenant>/v2.0`), the tenant it names.
pub fn split_authority(authority: &str) -> Result<(String, Option<String>), String> {
    let a = authority.trim().trim_end_matches('/');
    let (scheme, rest) = a
        .split_once("://")
        .ok_or_else(|| format!("`{authority}` is not a URL such as {DEFAULT_AUTHORITY}"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() {
        return Err(format!("`{authority}` has no host"));
    }
    match scheme {
        "https" => {}
        "http" if is_loopback_host(host) => {}
        _ => {
            return Err(format!(
            "`{authority}` must use https:// (plain http is allowed only on loopback, for tests)"
        ))
        }
    }
    let mut segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    for suffix in [
        &["oauth2", "v2.0", "token"][..],
        &["oauth2", "v2.0"],
        &["v2.0"],
    ] {
        if segments.ends_with(suffix) {
            segments.truncate(segments.len() - suffix.len());
            break;
        }
    }
    let base = format!("{scheme}://{host}");
    match segments.as_slice() {
        [] => Ok((base, None)),
        [tenant] => Ok((base, Some((*tenant).to_string()))),
        _ => Err(format!(
            "`{authority}` has an unexpected path; use {DEFAULT_AUTHORITY} or \
             {DEFAULT_AUTHORITY}/<tenant id>/v2.0"
        )),
    }
}

fn is_loopback_host(host_port: &str) -> bool {
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

fn validate_upstream(u: &UpstreamConfig, hostname: &str) -> Result<ValidUpstream, ConfigError> {
    let (host, port) = split_host_port(&u.address).ok_or_else(|| {
        ConfigError::new(
            "upstream.address",
            format!(
                "`{}` is not host:port such as {DEFAULT_UPSTREAM}",
                u.address
            ),
        )
    })?;
    for (key, v) in [
        ("upstream.connect_timeout_secs", u.connect_timeout_secs),
        ("upstream.command_timeout_secs", u.command_timeout_secs),
        ("upstream.data_timeout_secs", u.data_timeout_secs),
    ] {
        if v == 0 {
            return Err(ConfigError::new(key, "must be at least 1 second"));
        }
    }
    let tls_server_name = u.tls_server_name.clone().unwrap_or_else(|| host.clone());
    if rustls_pki_types::ServerName::try_from(tls_server_name.clone()).is_err() {
        return Err(ConfigError::new(
            "upstream.tls_server_name",
            format!("`{tls_server_name}` is not a valid TLS server name"),
        ));
    }
    Ok(ValidUpstream {
        host,
        port,
        tls_server_name,
        // 0 = unlimited (benchmarks); a pool still needs a bound.
        max_connections: if u.max_connections == 0 {
            1024
        } else {
            u.max_connections
        },
        connect_timeout: Duration::from_secs(u.connect_timeout_secs),
        command_timeout: Duration::from_secs(u.command_timeout_secs),
        data_timeout: Duration::from_secs(u.data_timeout_secs),
        idle_timeout: Duration::from_secs(u.idle_timeout_secs),
        max_session_age: Duration::from_secs(u.max_session_age_secs),
        helo_name: u.helo_name.clone().unwrap_or_else(|| hostname.to_string()),
    })
}

/// `host:port`, `[v6]:port`. Returns the host without brackets.
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some((addr.ip().to_string(), addr.port()));
    }
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if host.is_empty() || host.contains(':') || port == 0 {
        return None;
    }
    Some((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const GOOD: &[(&str, &str)] = &[
        (
            "SMTP_OAUTH_RELAY_TENANT",
            "11111111-2222-3333-4444-555555555555",
        ),
        (
            "SMTP_OAUTH_RELAY_CLIENT_ID",
            "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        ),
        (
            "SMTP_OAUTH_RELAY_CLIENT_SECRET",
            "abc8Q~abcdefghijklmnopqrstuvwxyz01234567",
        ),
        ("SMTP_OAUTH_RELAY_MAILBOX", "relay@contoso.com"),
    ];

    fn load(extra: &[(&str, &str)]) -> Result<ValidConfig, ConfigError> {
        let mut pairs = GOOD.to_vec();
        pairs.extend_from_slice(extra);
        Config::load(None, &env(&pairs))?.validate()
    }

    #[test]
    fn env_alone_configures_a_single_account() {
        let c = load(&[]).unwrap();
        assert_eq!(c.account.mailbox, "relay@contoso.com");
        assert_eq!(
            c.account.token_url,
            "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/oauth2/v2.0/token"
        );
        assert_eq!(c.upstream.host, "smtp.office365.com");
        assert_eq!(c.upstream.port, 587);
        assert_eq!(c.listen.address, "127.0.0.1:2525".parse().unwrap());
        assert_eq!(c.mode, DeliveryMode::Hybrid);
    }

    #[test]
    fn nested_env_and_numbers_override() {
        let c = load(&[
            ("SMTP_OAUTH_RELAY__LISTEN__MAX_RECIPIENTS", "7"),
            ("SMTP_OAUTH_RELAY_MAX_CONNECTIONS", "2"),
            ("SMTP_OAUTH_RELAY__LISTEN__RECEIVED_HEADER", "false"),
        ])
        .unwrap();
        assert_eq!(c.listen.max_recipients, 7);
        assert_eq!(c.upstream.max_connections, 2);
        assert!(!c.listen.received_header);
    }

    #[test]
    fn all_digit_secret_stays_a_string() {
        let c = load(&[("SMTP_OAUTH_RELAY_CLIENT_SECRET", "12345678901234567890")]).unwrap();
        assert_eq!(
            c.account.client_secret.expose_secret(),
            "12345678901234567890"
        );
    }

    #[test]
    fn missing_values_name_the_key() {
        let err = Config::load(None, &env(&GOOD[..3]))
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(err.key, "account.mailbox");
        assert!(err.message.contains("SMTP_OAUTH_RELAY_MAILBOX"), "{err}");
    }

    #[test]
    fn secret_id_and_token_are_refused() {
        let err = load(&[(
            "SMTP_OAUTH_RELAY_CLIENT_SECRET",
            "0f0f0f0f-1111-2222-3333-444455556666",
        )])
        .unwrap_err();
        assert_eq!(err.key, "account.client_secret");
        assert!(err.message.contains("secret ID"));
        assert!(
            !err.to_string().contains("0f0f0f0f-1111"),
            "no echo of secret"
        );
        let err =
            load(&[("SMTP_OAUTH_RELAY_CLIENT_SECRET", "eyJ0eXAi.eyJhdWQi.c2ln")]).unwrap_err();
        assert!(err.message.contains("access token"));
    }

    #[test]
    fn secret_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "abc8Q~file-secret-value-000000000000000\n").unwrap();
        let mut pairs = GOOD[..2].to_vec();
        let p = path.to_string_lossy().to_string();
        pairs.push(("SMTP_OAUTH_RELAY_CLIENT_SECRET_FILE", &p));
        pairs.push(("SMTP_OAUTH_RELAY_MAILBOX", "relay@contoso.com"));
        let c = Config::load(None, &env(&pairs))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(
            c.account.client_secret.expose_secret(),
            "abc8Q~file-secret-value-000000000000000"
        );
    }

    #[test]
    fn jama_style_authority_supplies_tenant() {
        let mut pairs = GOOD[1..].to_vec();
        pairs.push((
            "SMTP_OAUTH_RELAY_AUTHORITY",
            "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
        ));
        let c = Config::load(None, &env(&pairs))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(c.account.tenant, "11111111-2222-3333-4444-555555555555");
        assert!(c
            .account
            .token_url
            .ends_with("/11111111-2222-3333-4444-555555555555/oauth2/v2.0/token"));
    }

    #[test]
    fn authority_shapes() {
        assert_eq!(
            split_authority("https://login.microsoftonline.com/").unwrap(),
            ("https://login.microsoftonline.com".into(), None)
        );
        assert_eq!(
            split_authority("https://login.microsoftonline.com/contoso.com/oauth2/v2.0/token")
                .unwrap()
                .1
                .as_deref(),
            Some("contoso.com")
        );
        assert!(split_authority("http://login.microsoftonline.com").is_err());
        assert!(split_authority("http://127.0.0.1:8443").is_ok());
        assert!(split_authority("login.microsoftonline.com").is_err());
    }

    #[test]
    fn tenant_aliases_refused() {
        let err = load(&[("SMTP_OAUTH_RELAY_TENANT", "common")]).unwrap_err();
        assert_eq!(err.key, "account.tenant");
        assert!(err.message.contains("AADSTS50194"));
    }

    #[test]
    fn graph_and_permission_scopes_refused() {
        let err = load(&[(
            "SMTP_OAUTH_RELAY_SCOPE",
            "https://graph.microsoft.com/.default",
        )])
        .unwrap_err();
        assert_eq!(err.key, "account.scope");
        let err = load(&[(
            "SMTP_OAUTH_RELAY_SCOPE",
            "https://outlook.office365.com/SMTP.SendAsApp",
        )])
        .unwrap_err();
        assert!(err.message.contains("AADSTS1002012"));
    }

    #[test]
    fn non_loopback_listen_needs_allow() {
        let err = load(&[("SMTP_OAUTH_RELAY_LISTEN", "0.0.0.0:2525")]).unwrap_err();
        assert_eq!(err.key, "listen.allow");
        let c =
            Config::from_toml("[listen]\naddress = \"0.0.0.0:2525\"\nallow = [\"10.0.0.0/8\"]\n")
                .unwrap();
        assert_eq!(c.listen.allow.len(), 1);
        let l = validate_listen(&c.listen).unwrap();
        assert!(l.permits("10.1.2.3".parse().unwrap()));
        assert!(l.permits("127.0.0.1".parse().unwrap()));
        assert!(!l.permits("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn modes_and_governor_settings() {
        assert_eq!(
            load(&[]).unwrap().mode,
            DeliveryMode::Hybrid,
            "hybrid is the default"
        );
        for (text, mode) in [
            ("queue", DeliveryMode::Queue),
            ("direct", DeliveryMode::Direct),
        ] {
            assert_eq!(load(&[("SMTP_OAUTH_RELAY_MODE", text)]).unwrap().mode, mode);
        }
        let err = load(&[("SMTP_OAUTH_RELAY_MODE", "fast")]).unwrap_err();
        assert_eq!(err.key, "delivery.mode");
        let c = load(&[
            ("SMTP_OAUTH_RELAY_RATE_PER_MINUTE", "0"),
            ("SMTP_OAUTH_RELAY_MAX_CONNECTIONS", "0"),
        ])
        .unwrap();
        assert_eq!(c.governor.rate, 0);
        assert_eq!(c.governor.max_connections, 0);
        assert!(c.upstream.max_connections > 3, "0 means no pool limit");
        assert_eq!(load(&[]).unwrap().governor.rate, 30);
    }

    #[test]
    fn unknown_keys_and_vars_are_reported() {
        let err = Config::from_toml("[listen]\nadress = \"x\"\n").unwrap_err();
        assert!(err.message.contains("adress"), "{err}");
        let unknown = unknown_env_vars(&env(&[
            ("SMTP_OAUTH_RELAY_TENNANT", "x"),
            ("SMTP_OAUTH_RELAY_TENANT", "x"),
            ("SMTP_OAUTH_RELAY_CONFIG", "x"),
        ]));
        assert_eq!(unknown, vec!["SMTP_OAUTH_RELAY_TENNANT".to_string()]);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let c = load(&[]).unwrap();
        let text = format!("{c:?}");
        assert!(!text.contains("abcdefghijklmnop"), "{text}");
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("smtp.office365.com:587"),
            Some(("smtp.office365.com".into(), 587))
        );
        assert_eq!(split_host_port("[::1]:25"), Some(("::1".into(), 25)));
        assert_eq!(split_host_port("smtp.office365.com"), None);
        assert_eq!(split_host_port(":25"), None);
    }

    #[test]
    fn list_keys_from_the_environment() {
        for value in [
            r#"["10.0.0.0/8", "192.168.1.0/24"]"#,
            "10.0.0.0/8, 192.168.1.0/24",
        ] {
            let env = vec![(
                "SMTP_OAUTH_RELAY__LISTEN__ALLOW".to_string(),
                value.to_string(),
            )];
            let c = Config::load(None, &env).unwrap_or_else(|e| panic!("{value}: {e}"));
            let got: Vec<String> = c.listen.allow.iter().map(|n| n.to_string()).collect();
            assert_eq!(got, ["10.0.0.0/8", "192.168.1.0/24"], "{value}");
        }
        let env = vec![(
            "SMTP_OAUTH_RELAY__LISTEN__ALLOW".to_string(),
            "not-a-network".to_string(),
        )];
        let e = Config::load(None, &env).unwrap_err();
        assert!(e.key.starts_with("listen.allow"), "{e}");
    }

    /// Every key of the configuration is documented in the example file, in its section.
    #[test]
    fn example_config_documents_every_key() {
        let text = include_str!("../config/relay.example.toml");
        let all = serde_json::to_value(Config::default()).unwrap();
        for (section, keys) in all.as_object().unwrap() {
            let header = format!("[{section}]");
            let start = text
                .find(&header)
                .unwrap_or_else(|| panic!("{header} missing"));
            let rest = &text[start + header.len()..];
            let body = &rest[..rest.find("\n[").unwrap_or(rest.len())];
            for key in keys.as_object().unwrap().keys() {
                let documented = body.lines().any(|l| {
                    let l = l.trim_start_matches('#').trim_start();
                    l.starts_with(&format!("{key} ="))
                });
                assert!(
                    documented,
                    "`{section}.{key}` is not in config/relay.example.toml"
                );
            }
        }
        assert!(!serde_json::to_string(&Config::default())
            .unwrap()
            .contains("secret\":\"a"));
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../config/relay.example.toml");
        Config::from_toml(text).expect("config/relay.example.toml must parse");
    }
}
