//! Checking every value and resolving it into the rooms' settings, naming the key at fault.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::{CertificateDer, ServerName};
use secrecy::{ExposeSecret, SecretString};

use super::env::{ENV_KEYS, ENV_PREFIX};
use super::file::{
    AccountConfig, AdminConfig, Config, ConfigError, DeliveryConfig, GovernorConfig, ListenConfig,
    NoticeConfig, UpstreamConfig, DEFAULT_AUTHORITY, DEFAULT_UPSTREAM, EXCHANGE_MAX_SIZE,
};
use crate::delivery::{DeliverySettings, EnvelopeSender};
use crate::governor::Limits;
use crate::smtp::ListenSettings;
use crate::token::{token_url, ClientSecretSettings};
use crate::upstream::UpstreamSettings;

/// Validated, resolved configuration: the only form the rest of the crate accepts. Made of
/// the rooms' own settings.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    pub listen: ListenSettings,
    pub account: ValidAccount,
    pub upstream: UpstreamSettings,
    pub extra_roots: Vec<CertificateDer<'static>>,
    pub spool_dir: PathBuf,
    pub delivery: DeliverySettings,
    pub governor: Limits,
    /// Admin HTTP address; `None` when `admin.listen = "off"`.
    pub admin: Option<SocketAddr>,
    pub shutdown_grace: Duration,
    /// Things worth a log line but not worth refusing to start.
    pub warnings: Vec<String>,
}

/// The account: which tenant and mailbox, and the credential the token source uses.
#[derive(Debug, Clone)]
pub struct ValidAccount {
    pub tenant: String,
    /// The mailbox to send as (the XOAUTH2 `user=`).
    pub mailbox: String,
    /// What the client-secret token source needs (its `Debug` hides the secret).
    pub credential: ClientSecretSettings,
    pub refresh_margin: Duration,
    /// Where the secret came from, if a file: SIGHUP reads it again.
    pub client_secret_file: Option<PathBuf>,
}

/// See [`Config::validate`].
pub(super) fn validate(config: Config) -> Result<ValidConfig, ConfigError> {
    let mut warnings = Vec::new();
    // In the order of the file, so that the first of several mistakes is the one named.
    let listen = validate_listen(&config.listen)?;
    let mut account = validate_account(&config.account, &mut warnings)?;
    let upstream = validate_upstream(&config.upstream, &listen.hostname)?;
    let extra_roots = match &config.tls.extra_ca_file {
        None => Vec::new(),
        Some(path) => crate::tls::load_pem_certificates(path)
            .map_err(|e| ConfigError::new("tls.extra_ca_file", e.to_string()))?,
    };
    account.credential.extra_roots = extra_roots.clone();
    let delivery = validate_delivery(
        &config.delivery,
        &config.notice,
        config.account.envelope_sender,
    )?;
    let governor = validate_governor(&config.governor, &config.upstream);
    if config.delivery.spool_dir.as_os_str().is_empty() {
        return Err(ConfigError::new("delivery.spool_dir", "must not be empty"));
    }
    Ok(ValidConfig {
        listen,
        account,
        upstream,
        extra_roots,
        spool_dir: config.delivery.spool_dir,
        delivery,
        governor,
        admin: validate_admin(&config.admin)?,
        shutdown_grace: Duration::from_secs(config.shutdown.grace_secs),
        warnings,
    })
}

/// `admin.listen`: `off` or a socket address (no name lookup: the admin port is local).
pub fn validate_admin(a: &AdminConfig) -> Result<Option<SocketAddr>, ConfigError> {
    let v = a.listen.trim();
    if v.eq_ignore_ascii_case("off") || v.is_empty() {
        return Ok(None);
    }
    socket_address(v, 9325)
        .map(Some)
        .map_err(|m| ConfigError::new("admin.listen", format!("{m}, or `off`")))
}

/// A listening address: an IP address and port, or `localhost:PORT` (loopback, 127.0.0.1).
/// No other name is looked up: a name can resolve to an address nobody meant to expose.
/// The error says exactly what to type, with `port` as the example's port.
pub fn socket_address(text: &str, port: u16) -> Result<SocketAddr, String> {
    let v = text.trim();
    if let Ok(addr) = v.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Some((host, p)) = v.rsplit_once(':') {
        if host.eq_ignore_ascii_case("localhost") {
            if let Ok(p) = p.parse::<u16>() {
                return Ok(SocketAddr::from(([127, 0, 0, 1], p)));
            }
        }
    }
    let hint = if v.parse::<u16>().is_ok() {
        format!("a port alone is not enough: write 127.0.0.1:{v}")
    } else {
        format!(
            "write an IP address and port: 127.0.0.1:{port} or localhost:{port} (this machine \
             only), 0.0.0.0:{port} (every IPv4 interface), [::]:{port} (every interface)"
        )
    };
    Err(format!("`{v}` is not an address to listen on; {hint}"))
}

fn validate_delivery(
    d: &DeliveryConfig,
    n: &NoticeConfig,
    envelope_sender: EnvelopeSender,
) -> Result<DeliverySettings, ConfigError> {
    let notice_to = match n.to.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(a) => {
            let plain = a
                .split_once('@')
                .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'))
                && !a.contains(|c: char| c.is_whitespace() || c.is_control() || "<>".contains(c));
            if !plain {
                return Err(ConfigError::new(
                    "notice.to",
                    format!("`{a}` is not a plain address like admin@contoso.com"),
                ));
            }
            Some(a.to_string())
        }
    };
    for (key, v) in [
        ("delivery.try_now_timeout_secs", d.try_now_timeout_secs),
        ("delivery.max_age_secs", d.max_age_secs),
    ] {
        if v == 0 {
            return Err(ConfigError::new(key, "must be at least 1 second"));
        }
    }
    Ok(DeliverySettings {
        mode: d.mode,
        envelope_sender,
        try_now_timeout: Duration::from_secs(d.try_now_timeout_secs),
        max_age: Duration::from_secs(d.max_age_secs),
        failed_retention: Duration::from_secs(d.failed_retention_secs),
        failure_notice: d.failure_notice,
        notice_to,
    })
}

fn validate_governor(g: &GovernorConfig, u: &UpstreamConfig) -> Limits {
    Limits {
        max_connections: u.max_connections as u32,
        rate: g.rate_per_minute,
        rate_window: Duration::from_secs(g.rate_window_secs.max(1)),
        daily_recipients: g.daily_recipients,
        max_recipients_per_message: g.recipients_per_message,
    }
}

pub(super) fn validate_listen(l: &ListenConfig) -> Result<ListenSettings, ConfigError> {
    let address =
        socket_address(&l.address, 2525).map_err(|m| ConfigError::new("listen.address", m))?;
    if let Some(everyone) = l.allow.iter().find(|net| net.prefix_len() == 0) {
        return Err(ConfigError::new(
            "listen.allow",
            format!(
                "`{everyone}` lets every host on every network relay through your mailbox (an \
                 open relay); list only the networks of your clients, e.g. [\"10.0.0.0/8\"]"
            ),
        ));
    }
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
        ("listen.stress_timeout_secs", l.stress_timeout_secs),
        ("listen.max_session_secs", l.max_session_secs),
    ] {
        if v == 0 {
            return Err(ConfigError::new(key, "must be at least 1 second"));
        }
    }
    for (key, v) in [
        ("listen.max_junk_commands", l.max_junk_commands),
        (
            "listen.max_messages_per_session",
            l.max_messages_per_session,
        ),
        (
            "listen.max_connections_per_client",
            l.max_connections_per_client,
        ),
    ] {
        if v == 0 {
            return Err(ConfigError::new(key, "must be at least 1"));
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
    Ok(ListenSettings {
        address,
        allow: l.allow.clone(),
        hostname,
        max_connections: l.max_connections,
        max_message_size: l.max_message_size,
        max_recipients: l.max_recipients,
        command_timeout: Duration::from_secs(l.command_timeout_secs),
        data_timeout: Duration::from_secs(l.data_timeout_secs),
        stress_timeout: Duration::from_secs(l.stress_timeout_secs),
        max_session: Duration::from_secs(l.max_session_secs),
        max_junk_commands: l.max_junk_commands,
        max_messages_per_session: l.max_messages_per_session,
        max_connections_per_client: l.max_connections_per_client,
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
    if let Some(advice) = crate::diagnose::lint_secret(client_secret.expose_secret()) {
        // Name where the value came from: the file, when there is one.
        return Err(match &a.client_secret_file {
            Some(path) => ConfigError::new(
                "account.client_secret_file",
                format!("the file {} holds a bad value. {advice}", path.display()),
            ),
            None => ConfigError::new("account.client_secret", advice.to_string()),
        });
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
        credential: ClientSecretSettings {
            token_url: token_url(&authority, &tenant),
            client_id,
            client_secret,
            scope,
            // Filled in once `tls.extra_ca_file` is read.
            extra_roots: Vec::new(),
            timeout: Duration::from_secs(a.token_timeout_secs),
        },
        tenant,
        mailbox,
        refresh_margin: Duration::from_secs(a.refresh_margin_secs),
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

fn validate_upstream(u: &UpstreamConfig, hostname: &str) -> Result<UpstreamSettings, ConfigError> {
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
    let server_name = ServerName::try_from(tls_server_name.clone()).map_err(|_| {
        ConfigError::new(
            "upstream.tls_server_name",
            format!("`{tls_server_name}` is not a valid TLS server name"),
        )
    })?;
    Ok(UpstreamSettings {
        host,
        port,
        server_name,
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
        endpoint: crate::upstream::Endpoint::Standard,
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
