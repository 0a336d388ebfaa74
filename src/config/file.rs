//! The configuration's shape: every key the file and the environment may set, with its
//! documented default (the same as `config/relay.example.toml`), and the error that names a
//! key at fault.

use std::path::PathBuf;

use ipnet::IpNet;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::delivery::{DeliveryMode, EnvelopeSender, FromRewrite};
use crate::token::{AssertionAlgorithm, Cloud, CredentialKind};

pub use super::governor::GovernorConfig;

/// IMDS's token URL on an Azure VM or VM scale set (reference §1.5).
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
/// Default Microsoft identity platform host (global cloud).
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// The documented scope for app-only SMTP AUTH (reference §1.2).
pub const DEFAULT_SCOPE: &str = "https://outlook.office365.com/.default";
/// Exchange Online client submission endpoint (reference §0).
pub const DEFAULT_UPSTREAM: &str = "smtp.office365.com:587";
/// Exchange Online's advertised `SIZE` ceiling (reference §4.2); larger limits make no sense.
pub const EXCHANGE_MAX_SIZE: u64 = 157_286_400;

/// Everything the configuration file and environment may say. Defaults are the documented
/// defaults of `config/relay.example.toml`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: ListenConfig,
    /// One `[account]` table, or several `[[account]]` entries (each with a `name`); the
    /// loaders make a single table the list's one entry.
    #[serde(serialize_with = "serialize_first_account")]
    pub account: Vec<AccountConfig>,
    /// `[[route]]` entries: which senders go out through which account and mailbox.
    #[serde(serialize_with = "serialize_route_keys")]
    pub route: Vec<RouteConfig>,
    pub upstream: UpstreamConfig,
    pub tls: TlsConfig,
    pub delivery: DeliveryConfig,
    pub notice: NoticeConfig,
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
    /// While more than 80% of `max_connections` are in use: both timeouts shorten to this,
    /// and a body must keep coming at 32 KiB/s from the start of DATA (Postfix's stress mode).
    pub stress_timeout_secs: u64,
    /// Longest session in seconds; it then ends with `421` (a message in progress finishes).
    pub max_session_secs: u64,
    /// `NOOP`, `RSET`, `VRFY`, `HELP` and refused commands allowed between accepted
    /// messages; one more gets `421`.
    pub max_junk_commands: usize,
    /// Messages per session; the next `MAIL` gets `421` (clients reconnect).
    pub max_messages_per_session: usize,
    /// Connections one client address may hold at once (loopback is not limited).
    pub max_connections_per_client: usize,
    /// Prepend one RFC 5321 §4.4 `Received:` trace header to every message.
    pub received_header: bool,
    /// PEM certificate chain for STARTTLS and the implicit-TLS port.
    pub tls_certificate_file: Option<PathBuf>,
    /// PEM private key of that certificate (unencrypted; keep it mode 0600).
    pub tls_key_file: Option<PathBuf>,
    /// Without a certificate: make a self-signed one at start, for devices that only need
    /// "some TLS" (clients that check certificates refuse it).
    pub tls_self_signed: bool,
    /// A second listener, TLS from the first byte (port 465 style). Off by default.
    pub implicit_tls_address: Option<String>,
    /// Refuse `MAIL` before STARTTLS (`530 5.7.0`).
    pub require_tls: bool,
    /// Local users for AUTH PLAIN/LOGIN: `name:argon2-hash[:sender,sender]` a line
    /// (`smtp-oauth-relay hash-password NAME` prints one).
    pub users_file: Option<PathBuf>,
    /// Refuse `MAIL` before AUTH (`530 5.7.0`).
    pub require_auth: bool,
    /// Compatibility switch for devices that insist on AUTH but whose password cannot be
    /// managed: any user name and password is accepted. Only with `allow`.
    pub auth_accept_any: bool,
    /// Offer AUTH without TLS to loopback clients (it is otherwise offered only inside TLS).
    pub auth_without_tls_on_loopback: bool,
    /// Failed AUTH attempts one client address may make before `421` and a pause.
    pub auth_max_failures: u32,
    /// The first pause after too many failures, in seconds; each further failure doubles
    /// it, up to an hour.
    pub auth_pause_secs: u64,
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
            stress_timeout_secs: 5,
            max_session_secs: 1800,
            max_junk_commands: 100,
            max_messages_per_session: 1000,
            max_connections_per_client: 50,
            received_header: true,
            tls_certificate_file: None,
            tls_key_file: None,
            tls_self_signed: false,
            implicit_tls_address: None,
            require_tls: false,
            users_file: None,
            require_auth: false,
            auth_accept_any: false,
            auth_without_tls_on_loopback: false,
            auth_max_failures: 5,
            auth_pause_secs: 60,
        }
    }
}

/// Configuration is serialised only to list its keys (the unknown-key check and the docs
/// checks): `account` shows the keys of one account, `route` those of one route.
fn serialize_first_account<S: serde::Serializer>(
    value: &[AccountConfig],
    s: S,
) -> Result<S::Ok, S::Error> {
    value.first().cloned().unwrap_or_default().serialize(s)
}

fn serialize_route_keys<S: serde::Serializer>(_: &[RouteConfig], s: S) -> Result<S::Ok, S::Error> {
    RouteConfig::default().serialize(s)
}

/// A routing rule (`[[route]]`): mail from these senders (and, if listed, these client
/// networks) goes out through this account and mailbox.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// Envelope senders: an address (`app@contoso.com`), a domain (`@contoso.com`) or `*`.
    pub senders: Vec<String>,
    /// Client networks the rule is limited to (empty: any client).
    pub clients: Vec<IpNet>,
    /// Inbound users (`listen.users_file`) the rule is limited to (empty: anyone).
    pub users: Vec<String>,
    /// The `name` of the account to send through (may be left out with one account).
    pub account: Option<String>,
    /// The mailbox to send as (the XOAUTH2 `user=`); default: the account's `mailbox`. One
    /// app-only token serves every mailbox of the app registration.
    pub mailbox: Option<String>,
}

/// The Microsoft 365 app registration and mailbox the relay sends as.
#[derive(Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountConfig {
    /// The account's name, for `[[route]]` entries, logs and metrics. Needed with several
    /// accounts; one account is called `default`.
    pub name: Option<String>,
    /// Directory (tenant) ID, or a verified domain. Not `common`/`organizations`.
    pub tenant: Option<String>,
    /// Application (client) ID of the app registration.
    pub client_id: Option<String>,
    /// How the relay proves who it is: `secret`, `certificate`, `workload-identity`,
    /// `managed-identity` or `delegated`. Chosen automatically when only one kind is
    /// configured.
    pub credential: Option<CredentialKind>,
    /// `global`, `usgov` (GCC High, DoD) or `china` (21Vianet): chooses the login host, the
    /// token scope and the default SMTP host.
    pub cloud: Cloud,
    /// The client secret *value* (not its ID). Prefer `client_secret_file`.
    #[serde(serialize_with = "serialize_redacted")]
    pub client_secret: Option<SecretString>,
    /// File holding the client secret value (trailing newline ignored).
    pub client_secret_file: Option<PathBuf>,
    /// PEM certificate registered on the app, with its private key unless
    /// `client_key_file` is set.
    pub client_certificate_file: Option<PathBuf>,
    /// PEM private key of the certificate (PKCS#8, PKCS#1 or encrypted PKCS#8).
    pub client_key_file: Option<PathBuf>,
    /// File holding the passphrase of an encrypted private key.
    pub client_key_passphrase_file: Option<PathBuf>,
    /// `PS256` (with `x5t#S256`, the default) or `RS256` (with the SHA-1 `x5t`, for old
    /// registrations).
    pub certificate_algorithm: AssertionAlgorithm,
    /// Workload identity: the projected service-account token file (re-read for every
    /// request). Set by `AZURE_FEDERATED_TOKEN_FILE` in an AKS pod.
    pub federated_token_file: Option<PathBuf>,
    /// Managed identity: client ID of the user-assigned identity (a federated credential of
    /// the app registration).
    pub managed_identity_client_id: Option<String>,
    /// Managed identity: IMDS's token URL.
    pub imds_endpoint: String,
    /// Delegated: the file `login` stores the refresh token in (0600, rotated on every
    /// refresh).
    pub refresh_token_file: Option<PathBuf>,
    /// Mailbox to send as: the XOAUTH2 `user=`.
    pub mailbox: Option<String>,
    /// Token service base URL. Default: the cloud's login host. A Jama-style
    /// `https://login.microsoftonline.com/<tenant>/v2.0` is accepted too and supplies the
    /// tenant.
    pub authority: Option<String>,
    /// Token scope. Default: the cloud's Exchange resource with `/.default` (app-only), or
    /// `…/SMTP.Send offline_access` (delegated).
    pub scope: Option<String>,
    /// Refresh the token in the background when less than this many seconds are left.
    pub refresh_margin_secs: u64,
    /// Seconds a token request may take.
    pub token_timeout_secs: u64,
    /// Which address goes into the upstream `MAIL FROM`: `mailbox` (the authenticated
    /// mailbox, which Exchange always accepts) or `client` (the app's own envelope sender,
    /// which needs SendAs rights on that address).
    pub envelope_sender: EnvelopeSender,
    /// Rewrite `From:` (and `MAIL FROM`) to the mailbox, keeping the original in
    /// `Reply-To:`: `never`, `when-not-allowed` (the sender is neither the mailbox nor in
    /// `send_as`) or `always`. For devices that send from arbitrary addresses.
    pub from_rewrite: FromRewrite,
    /// Addresses (or `@domain`) the mailbox has SendAs rights on: `when-not-allowed` leaves
    /// these alone.
    pub send_as: Vec<String>,
    /// Envelope senders (address, `@domain`, `*`) that go out through this account's own
    /// mailbox: a short form of a `[[route]]`, which environment variables can set
    /// (`SMTP_OAUTH_RELAY__ACCOUNT__<NAME>__SENDERS=@erp.contoso.com,billing@contoso.com`).
    pub senders: Vec<String>,
    /// `standard` (`smtp.office365.com`) or `hve` (High Volume Email,
    /// `smtp-hve.office365.com`: internal recipients only, `Mail.Send` permission).
    pub endpoint: EndpointKind,
    /// This account's SMTP `host:port`. Default: `upstream.address`, else the endpoint's and
    /// cloud's host.
    pub upstream: Option<String>,
    /// This account's messages per rolling window. Default: `governor.rate_per_minute`.
    pub rate_per_minute: Option<u32>,
    /// This account's sessions per mailbox. Default: `upstream.max_connections`.
    pub max_connections: Option<usize>,
    /// This account's recipients per 24 h per mailbox. Default: `governor.daily_recipients`.
    pub daily_recipients: Option<u32>,
}

/// Which Exchange Online submission endpoint an account uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    /// `smtp.office365.com` (SMTP AUTH client submission, `SMTP.SendAsApp`).
    #[default]
    Standard,
    /// `smtp-hve.office365.com` (High Volume Email).
    Hve,
}

/// The High Volume Email submission endpoint (reference §8).
pub const HVE_UPSTREAM: &str = "smtp-hve.office365.com:587";

impl Default for AccountConfig {
    fn default() -> Self {
        Self {
            name: None,
            tenant: None,
            client_id: None,
            credential: None,
            cloud: Cloud::Global,
            client_secret: None,
            client_secret_file: None,
            client_certificate_file: None,
            client_key_file: None,
            client_key_passphrase_file: None,
            certificate_algorithm: AssertionAlgorithm::PS256,
            federated_token_file: None,
            managed_identity_client_id: None,
            imds_endpoint: DEFAULT_IMDS_ENDPOINT.into(),
            refresh_token_file: None,
            mailbox: None,
            authority: None,
            scope: None,
            refresh_margin_secs: 15 * 60,
            token_timeout_secs: 30,
            envelope_sender: EnvelopeSender::Mailbox,
            from_rewrite: FromRewrite::Never,
            send_as: Vec::new(),
            senders: Vec::new(),
            endpoint: EndpointKind::Standard,
            upstream: None,
            rate_per_minute: None,
            max_connections: None,
            daily_recipients: None,
        }
    }
}

impl std::fmt::Debug for AccountConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountConfig")
            .field("name", &self.name)
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("credential", &self.credential)
            .field("cloud", &self.cloud)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("client_secret_file", &self.client_secret_file)
            .field("client_certificate_file", &self.client_certificate_file)
            .field("client_key_file", &self.client_key_file)
            .field(
                "client_key_passphrase_file",
                &self.client_key_passphrase_file,
            )
            .field("federated_token_file", &self.federated_token_file)
            .field(
                "managed_identity_client_id",
                &self.managed_identity_client_id,
            )
            .field("refresh_token_file", &self.refresh_token_file)
            .field("mailbox", &self.mailbox)
            .field("authority", &self.authority)
            .field("scope", &self.scope)
            .field("refresh_margin_secs", &self.refresh_margin_secs)
            .field("envelope_sender", &self.envelope_sender)
            .field("from_rewrite", &self.from_rewrite)
            .field("endpoint", &self.endpoint)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

/// Configuration is serialised only to list its keys (docs checks): never the secret.
fn serialize_redacted<S: serde::Serializer>(
    value: &Option<SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_some(&value.as_ref().map(|_| "<redacted>"))
}

/// Exchange Online's SMTP submission endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `host:port` of the STARTTLS submission server. Default: the cloud's SMTP host
    /// (`smtp.office365.com:587` in the global cloud).
    pub address: Option<String>,
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
            address: None,
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
    /// Send a short failure notice, through the same mailbox, when a message accepted with
    /// `250` finally fails (RFC 5321 §6.1). On by default; `false` turns it off.
    pub failure_notice: bool,
    /// Give a message without `Date:` or `Message-ID:` one when it is sent (`Date:` when
    /// the relay accepted it, `Message-ID: <our id@listen.hostname>`), so Exchange's message
    /// trace can find it. On by default; `false` sends messages as the client wrote them.
    pub add_missing_headers: bool,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            mode: DeliveryMode::Hybrid,
            spool_dir: PathBuf::from("./spool"),
            try_now_timeout_secs: 30,
            max_age_secs: 5 * 24 * 3600,
            failed_retention_secs: 7 * 24 * 3600,
            failure_notice: true,
            add_missing_headers: true,
        }
    }
}

/// Where failure notices go (`delivery.failure_notice` switches them on and off).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NoticeConfig {
    /// One address for every failure notice instead of each message's envelope sender (an
    /// admin's mailbox, say). A notice Exchange refuses goes once to the relay's own mailbox.
    pub to: Option<String>,
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
    pub(crate) fn new(key: &str, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}
