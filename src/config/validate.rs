//! Checking every value and resolving it into the rooms' settings, naming the key at fault.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, ServerName};

use super::account::{validate_accounts, ValidLane};
use super::address::socket_address;
pub use super::address::{split_authority, split_host_port};
use super::file::{
    AdminConfig, Config, ConfigError, DeliveryConfig, GovernorConfig, ListenConfig, NoticeConfig,
    UpstreamConfig, DEFAULT_UPSTREAM, EXCHANGE_MAX_SIZE,
};
use super::inbound::{check_route_users, validate_door};
use crate::delivery::route::Routes;
use crate::delivery::{DeliverySettings, EnvelopeSender, FromRewrite};
use crate::governor::shared::{check_url, SharedSettings};
use crate::governor::Limits;
use crate::smtp::ListenSettings;
use crate::upstream::UpstreamSettings;

pub use super::account::ValidAccount;

/// Validated, resolved configuration: the only form the rest of the crate accepts. Made of
/// the rooms' own settings.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    pub listen: ListenSettings,
    /// Every account, in the order of the file (one when configured by environment).
    pub accounts: Vec<ValidAccount>,
    /// Every mailbox mail goes out through, with its account: each gets its own upstream
    /// pool, governor, hold and queue. The first lane of each account is its own mailbox.
    pub lanes: Vec<ValidLane>,
    /// Which lane each envelope sender (and client) goes out through.
    pub routes: Routes,
    pub extra_roots: Vec<CertificateDer<'static>>,
    pub spool_dir: PathBuf,
    /// Delivery settings shared by every lane (each lane adds its account's sender policy).
    pub delivery: DeliverySettings,
    /// Admin HTTP address; `None` when `admin.listen = "off"`.
    pub admin: Option<SocketAddr>,
    pub shutdown_grace: Duration,
    /// The fleet's shared limits (`governor.shared`), if configured.
    pub shared: Option<SharedSettings>,
    /// Things worth a log line but not worth refusing to start.
    pub warnings: Vec<String>,
}

impl ValidConfig {
    /// The first account: the only one of a relay configured by environment variables.
    pub fn account(&self) -> &ValidAccount {
        &self.accounts[0]
    }

    /// The first account, to change (tests and `serve --sandbox`).
    pub fn account_mut(&mut self) -> &mut ValidAccount {
        &mut self.accounts[0]
    }

    /// The delivery settings of a lane: the shared ones with its account's sender policy.
    pub fn lane_delivery(&self, lane: &ValidLane) -> DeliverySettings {
        let account = &self.accounts[lane.account];
        DeliverySettings {
            envelope_sender: account.envelope_sender,
            from_rewrite: account.from_rewrite,
            send_as: account.send_as.clone(),
            ..self.delivery.clone()
        }
    }
}

/// See [`Config::validate`].
pub(super) fn validate(config: Config) -> Result<ValidConfig, ConfigError> {
    let mut warnings = Vec::new();
    // In the order of the file, so that the first of several mistakes is the one named.
    let listen = validate_listen(&config.listen)?;
    check_route_users(&config.route, &listen.auth)?;
    let mut base_upstream = validate_upstream(&config.upstream, &listen.hostname)?;
    let base_limits = validate_governor(&config.governor, &config.upstream);
    let shared = validate_shared(&config.governor, &mut warnings)?;
    // With shared limits a session counts for the fleet while it is open, so none is kept
    // idle (Exchange's own advice too: connect, send, QUIT; reference §4.5).
    base_upstream.keep_idle = shared.is_none();
    let (mut accounts, lanes, routes) = validate_accounts(
        &config.account,
        &config.route,
        &config.upstream,
        &base_upstream,
        &base_limits,
        &mut warnings,
    )?;
    let extra_roots = match &config.tls.extra_ca_file {
        None => Vec::new(),
        Some(path) => crate::tls::load_pem_certificates(path)
            .map_err(|e| ConfigError::new("tls.extra_ca_file", e.to_string()))?,
    };
    for account in &mut accounts {
        account.credential.extra_roots = extra_roots.clone();
    }
    let delivery = validate_delivery(&config.delivery, &config.notice)?;
    if config.delivery.spool_dir.as_os_str().is_empty() {
        return Err(ConfigError::new("delivery.spool_dir", "must not be empty"));
    }
    Ok(ValidConfig {
        listen,
        accounts,
        lanes,
        routes,
        extra_roots,
        spool_dir: config.delivery.spool_dir,
        delivery,
        admin: validate_admin(&config.admin)?,
        shutdown_grace: Duration::from_secs(config.shutdown.grace_secs),
        shared,
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

fn validate_delivery(
    d: &DeliveryConfig,
    n: &NoticeConfig,
) -> Result<DeliverySettings, ConfigError> {
    let notice_to = match n.to.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(a) => {
            if !super::address::is_plain_address(a) {
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
        // Each lane's account sets these (`ValidConfig::lane_delivery`).
        envelope_sender: EnvelopeSender::Mailbox,
        from_rewrite: FromRewrite::Never,
        send_as: Vec::new(),
        try_now_timeout: Duration::from_secs(d.try_now_timeout_secs),
        max_age: Duration::from_secs(d.max_age_secs),
        failed_retention: Duration::from_secs(d.failed_retention_secs),
        failure_notice: d.failure_notice,
        add_missing_headers: d.add_missing_headers,
        notice_to,
    })
}

pub(super) fn validate_governor(g: &GovernorConfig, u: &UpstreamConfig) -> Limits {
    Limits {
        max_connections: u.max_connections as u32,
        rate: g.rate_per_minute,
        rate_window: Duration::from_secs(g.rate_window_secs.max(1)),
        daily_recipients: g.daily_recipients,
        max_recipients_per_message: g.recipients_per_message,
    }
}

/// `governor.shared` and its companions. The password file is read here, so a missing one
/// stops the start with its name; no message repeats the URL or the password.
pub(super) fn validate_shared(
    g: &GovernorConfig,
    warnings: &mut Vec<String>,
) -> Result<Option<SharedSettings>, ConfigError> {
    let Some(url) = g.shared.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    check_url(url).map_err(|m| ConfigError::new("governor.shared", m))?;
    if g.expected_replicas == 0 {
        return Err(ConfigError::new(
            "governor.expected_replicas",
            "must be at least 1 (the number of relays sharing the mailbox)",
        ));
    }
    if g.shared_lease_secs < 3 {
        return Err(ConfigError::new(
            "governor.shared_lease_secs",
            "must be at least 3 seconds (leases are renewed every third of it)",
        ));
    }
    if g.shared_timeout_ms == 0 {
        return Err(ConfigError::new(
            "governor.shared_timeout_ms",
            "must be at least 1 millisecond",
        ));
    }
    let password = match &g.shared_password_file {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(
                    "governor.shared_password_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let p = text.trim_end_matches(['\r', '\n']).to_string();
            if p.is_empty() {
                return Err(ConfigError::new(
                    "governor.shared_password_file",
                    format!("{} is empty", path.display()),
                ));
            }
            Some(p)
        }
    };
    if g.expected_replicas == 1 {
        warnings.push("governor.shared is set and governor.expected_replicas is 1: while Redis cannot be reached, every replica keeps the mailbox's whole limits; set it to the number of replicas".into());
    }
    Ok(Some(SharedSettings {
        url: url.to_string(),
        password,
        ca_file: g.shared_ca_file.clone(),
        prefix: g.shared_key_prefix.clone(),
        expected_replicas: g.expected_replicas,
        lease: Duration::from_secs(g.shared_lease_secs),
        timeout: Duration::from_millis(g.shared_timeout_ms),
    }))
}

pub(super) fn validate_listen(l: &ListenConfig) -> Result<ListenSettings, ConfigError> {
    let address =
        socket_address(&l.address, 2525).map_err(|m| ConfigError::new("listen.address", m))?;
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
    let door = validate_door(l, address, &hostname)?;
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
        tls: door.tls,
        implicit_tls_address: door.implicit_tls_address,
        require_tls: door.require_tls,
        auth: door.auth,
    })
}

/// The `[upstream]` settings every account shares; the host and port are resolved per
/// account ([`upstream_for`]), here only checked when set.
fn validate_upstream(u: &UpstreamConfig, hostname: &str) -> Result<UpstreamSettings, ConfigError> {
    let address = u
        .address
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_UPSTREAM);
    let (host, port) = split_host_port(address).ok_or_else(|| {
        ConfigError::new(
            "upstream.address",
            format!("`{address}` is not host:port such as {DEFAULT_UPSTREAM}"),
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
        keep_idle: true,
    })
}
