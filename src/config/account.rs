//! The accounts, their mailboxes and the routes between them: each `[account]` checked and
//! resolved (credential, cloud, endpoint, limits), the lanes (one per mailbox mail goes out
//! through) and the routing table, naming the key at fault.
//!
//! One account configured by environment is called `default` and its keys are `account.…`;
//! with several, each needs a unique `name` and its keys are `account.<name>.…` (the form of
//! `SMTP_OAUTH_RELAY__ACCOUNT__<NAME>__<KEY>`).

use std::time::Duration;

use super::address::{is_plain_address, split_authority, upstream_for};
use super::env::{ENV_KEYS, ENV_PREFIX};
use super::file::{
    AccountConfig, ConfigError, EndpointKind, RouteConfig, UpstreamConfig, HVE_UPSTREAM,
};
use crate::delivery::route::{Routes, Rule, SenderPattern};
use crate::delivery::{EnvelopeSender, FromRewrite};
use crate::governor::Limits;
use crate::token::{token_url, Cloud, CredentialKind, SourceSettings};
use crate::upstream::UpstreamSettings;

/// HVE refuses tokens with less than 10 minutes left (reference §3.6): refresh before that.
const HVE_MIN_TOKEN_LIFE_SECS: u64 = 10 * 60 + 60;

/// An account: which tenant and app, the credential its token source uses, its own mailbox,
/// endpoint and limits.
#[derive(Debug, Clone)]
pub struct ValidAccount {
    /// `default` for the single account of an environment-only configuration.
    pub name: String,
    pub tenant: String,
    /// The account's own mailbox (the XOAUTH2 `user=` unless a route names another).
    pub mailbox: String,
    pub cloud: Cloud,
    /// What the token source needs: endpoint, app, scope and credential (its `Debug` hides
    /// every secret). One token serves every mailbox of the account.
    pub credential: SourceSettings,
    pub refresh_margin: Duration,
    /// The SMTP endpoint and session settings of this account's mailboxes.
    pub upstream: UpstreamSettings,
    pub endpoint: EndpointKind,
    /// Each of the account's mailboxes is paced within these (Exchange's limits are per
    /// mailbox).
    pub limits: Limits,
    pub envelope_sender: EnvelopeSender,
    pub from_rewrite: FromRewrite,
    /// Addresses the account's mailboxes may send as (`from_rewrite = when-not-allowed`).
    pub send_as: Vec<SenderPattern>,
}

/// One mailbox mail goes out through, and the account whose token it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidLane {
    /// Index into [`super::ValidConfig::accounts`].
    pub account: usize,
    pub mailbox: String,
}

/// What every account's settings start from.
pub(super) struct Shared<'a> {
    pub upstream: &'a UpstreamSettings,
    pub upstream_config: &'a UpstreamConfig,
    pub limits: &'a Limits,
}

/// The SMTP `host:port` an account sends to: its own `upstream`, else `upstream.address`
/// (`global`), else its endpoint's host in its cloud. Pure; the queue commands use it too.
pub fn upstream_address(a: &AccountConfig, global: Option<&str>) -> String {
    a.upstream
        .as_deref()
        .or(global)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| match a.endpoint {
            EndpointKind::Hve if a.cloud == Cloud::Global => HVE_UPSTREAM.to_string(),
            _ => a.cloud.smtp_address().to_string(),
        })
}

fn account_name(a: &AccountConfig) -> String {
    a.name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
        .to_string()
}

/// Checks every account and route; returns the accounts, the lanes and the routing table.
pub(super) fn validate_accounts(
    accounts: &[AccountConfig],
    routes: &[RouteConfig],
    upstream_config: &UpstreamConfig,
    upstream: &UpstreamSettings,
    limits: &Limits,
    warnings: &mut Vec<String>,
) -> Result<(Vec<ValidAccount>, Vec<ValidLane>, Routes), ConfigError> {
    let default = [AccountConfig::default()];
    let accounts = if accounts.is_empty() {
        &default[..]
    } else {
        accounts
    };
    let several = accounts.len() > 1;
    let shared = Shared {
        upstream,
        upstream_config,
        limits,
    };
    let mut valid: Vec<ValidAccount> = Vec::new();
    for (i, a) in accounts.iter().enumerate() {
        let key = if several {
            let Some(name) = a.name.as_deref().map(str::trim).filter(|n| !n.is_empty()) else {
                return Err(ConfigError::new(
                    &format!("account[{}].name", i + 1),
                    "with several [[account]] entries each needs a `name` (used by [[route]] \
                     entries, logs and metrics)",
                ));
            };
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(ConfigError::new(
                    &format!("account[{}].name", i + 1),
                    format!("`{name}` may use only letters, digits, `-` and `_`"),
                ));
            }
            if valid.iter().any(|v| v.name.eq_ignore_ascii_case(name)) {
                return Err(ConfigError::new(
                    &format!("account.{name}.name"),
                    format!("two accounts are named `{name}`"),
                ));
            }
            format!("account.{name}")
        } else {
            "account".to_string()
        };
        valid.push(validate_account(a, &key, &shared, warnings)?);
    }
    // An account's `senders` is a route to its own mailbox, after the [[route]] entries.
    let mut all_routes = routes.to_vec();
    for (a, v) in accounts.iter().zip(&valid) {
        if !a.senders.is_empty() {
            all_routes.push(RouteConfig {
                senders: a.senders.clone(),
                clients: Vec::new(),
                users: Vec::new(),
                account: Some(v.name.clone()),
                mailbox: None,
            });
        }
    }
    let (lanes, routes) = resolve_routes(&valid, &all_routes, warnings)?;
    Ok((valid, lanes, routes))
}

/// The lanes (each account's own mailbox first, then the other mailboxes routes name) and
/// the routing table over them.
fn resolve_routes(
    accounts: &[ValidAccount],
    routes: &[RouteConfig],
    warnings: &mut Vec<String>,
) -> Result<(Vec<ValidLane>, Routes), ConfigError> {
    let mut lanes: Vec<ValidLane> = accounts
        .iter()
        .enumerate()
        .map(|(i, a)| ValidLane {
            account: i,
            mailbox: a.mailbox.clone(),
        })
        .collect();
    if routes.is_empty() {
        if accounts.len() > 1 {
            return Err(ConfigError::new(
                "route",
                format!(
                    "with several accounts, [[route]] entries (or each account's `senders`) must \
                     say which senders use which account, e.g. [[route]] senders = \
                     [\"@erp.contoso.com\"] account = \"{}\"",
                    accounts[0].name
                ),
            ));
        }
        return Ok((lanes, Routes::everything_to_first()));
    }
    let mut rules = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        let key = format!("route[{}]", i + 1);
        let account = match r.account.as_deref().map(str::trim) {
            Some(name) if !name.is_empty() => accounts
                .iter()
                .position(|a| a.name.eq_ignore_ascii_case(name))
                .ok_or_else(|| {
                    let names: Vec<&str> = accounts.iter().map(|a| a.name.as_str()).collect();
                    ConfigError::new(
                        &format!("{key}.account"),
                        format!(
                            "no account is named `{name}`; the accounts are: {}",
                            names.join(", ")
                        ),
                    )
                })?,
            _ if accounts.len() == 1 => 0,
            _ => {
                return Err(ConfigError::new(
                    &format!("{key}.account"),
                    "missing: the name of the account this route sends through",
                ))
            }
        };
        if r.senders.is_empty() {
            return Err(ConfigError::new(
                &format!("{key}.senders"),
                "missing: the envelope senders of this route (an address, @domain, or *)",
            ));
        }
        let senders = r
            .senders
            .iter()
            .map(|s| {
                SenderPattern::parse(s).map_err(|m| ConfigError::new(&format!("{key}.senders"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mailbox = match r
            .mailbox
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty())
        {
            None => accounts[account].mailbox.clone(),
            Some(m) => {
                if !is_plain_address(m) {
                    return Err(ConfigError::new(
                        &format!("{key}.mailbox"),
                        format!("`{m}` is not an email address such as relay@contoso.com"),
                    ));
                }
                m.to_string()
            }
        };
        let lane = match lanes
            .iter()
            .position(|l| l.account == account && l.mailbox.eq_ignore_ascii_case(&mailbox))
        {
            Some(l) => l,
            None => {
                lanes.push(ValidLane { account, mailbox });
                lanes.len() - 1
            }
        };
        rules.push(Rule {
            senders,
            clients: r.clients.clone(),
            users: r.users.iter().map(|u| u.trim().to_string()).collect(),
            lane,
        });
    }
    // Two accounts of one app sending as one mailbox would be two lanes with one
    // destination: two governors for one mailbox's limits, and each lane delivering the
    // other's queued mail.
    for (i, a) in lanes.iter().enumerate() {
        for b in &lanes[..i] {
            let (x, y) = (&accounts[a.account], &accounts[b.account]);
            let same = a.account != b.account
                && a.mailbox.eq_ignore_ascii_case(&b.mailbox)
                && x.tenant.eq_ignore_ascii_case(&y.tenant)
                && x.credential
                    .client_id
                    .eq_ignore_ascii_case(&y.credential.client_id)
                && x.upstream.host.eq_ignore_ascii_case(&y.upstream.host)
                && x.upstream.port == y.upstream.port;
            if same {
                return Err(ConfigError::new(
                    &format!("account.{}.mailbox", x.name),
                    format!(
                        "accounts `{}` and `{}` both send as {} through the same app and \
                         endpoint; Exchange's limits belong to the mailbox, so one account must \
                         serve it: route those senders to one of them",
                        y.name, x.name, a.mailbox
                    ),
                ));
            }
        }
    }
    for (i, a) in accounts.iter().enumerate() {
        if !rules.iter().any(|r| lanes[r.lane].account == i) {
            warnings.push(format!(
                "account `{}` is named by no [[route]]: no new mail goes out through it (its \
                 queued mail is still delivered)",
                a.name
            ));
        }
    }
    Ok((lanes, Routes::new(rules)))
}

fn required<'a>(value: &'a Option<String>, key: &str, what: &str) -> Result<&'a str, ConfigError> {
    match value.as_deref().map(str::trim) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(ConfigError::new(
            key,
            format!("missing: {what} (env {})", env_name_for(key)),
        )),
    }
}

/// For an account of several (`key` is `account.<name>`): the single-account variables an
/// error names are refused as ambiguous there, so it names the account's own instead
/// (`SMTP_OAUTH_RELAY__ACCOUNT__<NAME>__<KEY>`); the `AZURE_*` variables serve only a single
/// account. Pure.
fn named_env_vars(mut e: ConfigError, key: &str) -> ConfigError {
    if key == "account" {
        return e;
    }
    e.message = e.message.replace(" or AZURE_FEDERATED_TOKEN_FILE", "");
    let mut names: Vec<&(&str, &str)> = ENV_KEYS
        .iter()
        .filter(|(_, k)| k.starts_with("account."))
        .collect();
    // Longer names first: CLIENT_SECRET_FILE before CLIENT_SECRET.
    names.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
    for (short, k) in names {
        let public = format!("{ENV_PREFIX}{short}");
        if e.message.contains(&public) {
            let field = k.trim_start_matches("account.");
            let mut parts = e.message.split(public.as_str());
            let mut out = parts.next().unwrap_or_default().to_string();
            for rest in parts {
                // Only whole names: `…_CLIENT_SECRET` is not the start of `…_CLIENT_SECRET_FILE`.
                if rest.starts_with(|c: char| c.is_ascii_uppercase() || c == '_') {
                    out.push_str(&public);
                } else {
                    out.push_str(&env_name_for(&format!("{key}.{field}")));
                }
                out.push_str(rest);
            }
            e.message = out;
        }
    }
    e
}

/// The environment variable that sets `key`: a public short name for the single account,
/// `SMTP_OAUTH_RELAY__ACCOUNT__<NAME>__<KEY>` for a named one.
fn env_name_for(key: &str) -> String {
    if let Some((n, _)) = ENV_KEYS.iter().find(|(_, k)| *k == key) {
        return format!("{ENV_PREFIX}{n}");
    }
    format!(
        "SMTP_OAUTH_RELAY__{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

fn validate_account(
    a: &AccountConfig,
    key: &str,
    shared: &Shared<'_>,
    warnings: &mut Vec<String>,
) -> Result<ValidAccount, ConfigError> {
    let k = |field: &str| format!("{key}.{field}");
    let cloud = a.cloud;
    let authority_text = a
        .authority
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or(cloud.authority());
    let (authority, tenant_from_authority) =
        split_authority(authority_text).map_err(|m| ConfigError::new(&k("authority"), m))?;
    let tenant = match (a.tenant.as_deref().map(str::trim), tenant_from_authority) {
        (Some(t), Some(from_url)) if !t.is_empty() && !t.eq_ignore_ascii_case(&from_url) => {
            return Err(ConfigError::new(
                &k("authority"),
                format!(
                    "the authority URL names tenant `{from_url}` but `{key}.tenant` is `{t}`; \
                     keep one of them"
                ),
            ))
        }
        (Some(t), _) if !t.is_empty() => t.to_string(),
        (_, Some(from_url)) => from_url,
        _ => required(&a.tenant, &k("tenant"), "the Directory (tenant) ID")?.to_string(),
    };
    if let Some(a) = crate::diagnose::lint_tenant(&tenant) {
        return Err(ConfigError::new(&k("tenant"), a.to_string()));
    }
    let client_id =
        required(&a.client_id, &k("client_id"), "the Application (client) ID")?.to_string();
    if let Some(a) = crate::diagnose::lint_client_id(&client_id) {
        return Err(ConfigError::new(&k("client_id"), a.to_string()));
    }
    let credential =
        super::credential::resolve(a, key, warnings).map_err(|e| named_env_vars(e, key))?;
    let mailbox = required(&a.mailbox, &k("mailbox"), "the mailbox to send as")?.to_string();
    if !mailbox.contains('@') || mailbox.chars().any(|c| c.is_whitespace() || c == '<') {
        return Err(ConfigError::new(
            &k("mailbox"),
            format!("`{mailbox}` is not an email address such as relay@contoso.com"),
        ));
    }
    let delegated = credential.kind() == CredentialKind::Delegated;
    let scope = match a.scope.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => s.to_string(),
        None if delegated => cloud.delegated_scope(),
        None => cloud.app_scope(),
    };
    if !delegated {
        if let Some(a) = crate::diagnose::lint_scope(&scope) {
            return Err(ConfigError::new(&k("scope"), a.to_string()));
        }
    }
    if a.refresh_margin_secs < 60 {
        warnings.push(format!(
            "{key}.refresh_margin_secs = {} is short; tokens will be refreshed late",
            a.refresh_margin_secs
        ));
    }
    if a.token_timeout_secs == 0 {
        return Err(ConfigError::new(
            &k("token_timeout_secs"),
            "must be at least 1 second",
        ));
    }
    let upstream_key = match &a.upstream {
        Some(_) => k("upstream"),
        None => "upstream.address".to_string(),
    };
    let address = upstream_address(a, shared.upstream_config.address.as_deref());
    if a.upstream.is_none()
        && shared.upstream_config.address.is_some()
        && (a.endpoint == EndpointKind::Hve || cloud != Cloud::Global)
    {
        warnings.push(format!(
            "{key} uses upstream.address {address} (set for every account), not the default of \
             its endpoint or cloud; set {key}.upstream if this account needs another host"
        ));
    }
    if a.endpoint == EndpointKind::Hve && cloud != Cloud::Global && a.upstream.is_none() {
        warnings.push(format!(
            "{key}.endpoint = \"hve\" in the {cloud} cloud: High Volume Email is documented \
             for the global cloud only; set {key}.upstream to the endpoint you were given"
        ));
    }
    let mut upstream = upstream_for(
        shared.upstream,
        shared.upstream_config,
        &address,
        &upstream_key,
    )?;
    upstream.endpoint = match a.endpoint {
        EndpointKind::Standard => crate::upstream::Endpoint::Standard,
        EndpointKind::Hve => crate::upstream::Endpoint::Hve,
    };
    if let Some(n) = a.max_connections {
        // 0 = unlimited (benchmarks); a pool still needs a bound.
        upstream.max_connections = if n == 0 { 1024 } else { n };
    }
    let mut limits = shared.limits.clone();
    if let Some(n) = a.max_connections {
        limits.max_connections = n as u32;
    }
    if let Some(r) = a.rate_per_minute {
        limits.rate = r;
    }
    if let Some(d) = a.daily_recipients {
        limits.daily_recipients = d;
    }
    if a.endpoint == EndpointKind::Hve && a.refresh_margin_secs < HVE_MIN_TOKEN_LIFE_SECS {
        warnings.push(format!(
            "{key}.refresh_margin_secs = {} is under 10 minutes: the HVE endpoint refuses \
             tokens with less than 10 minutes left (501 5.5.127), so tokens are refreshed \
             {HVE_MIN_TOKEN_LIFE_SECS} s ahead instead",
            a.refresh_margin_secs
        ));
    }
    let refresh_margin_secs = match a.endpoint {
        EndpointKind::Hve => a.refresh_margin_secs.max(HVE_MIN_TOKEN_LIFE_SECS),
        EndpointKind::Standard => a.refresh_margin_secs,
    };
    let send_as = a
        .send_as
        .iter()
        .map(|p| SenderPattern::parse(p).map_err(|m| ConfigError::new(&k("send_as"), m)))
        .collect::<Result<Vec<_>, _>>()?;
    for p in &a.senders {
        // Checked here to name the key; the route it makes is built with the others.
        SenderPattern::parse(p).map_err(|m| ConfigError::new(&k("senders"), m))?;
    }
    Ok(ValidAccount {
        name: account_name(a),
        upstream,
        limits,
        endpoint: a.endpoint,
        envelope_sender: a.envelope_sender,
        from_rewrite: a.from_rewrite,
        send_as,
        credential: SourceSettings {
            token_url: token_url(&authority, &tenant),
            client_id,
            scope,
            // Filled in once `tls.extra_ca_file` is read.
            extra_roots: Vec::new(),
            timeout: Duration::from_secs(a.token_timeout_secs),
            credential,
        },
        tenant,
        mailbox,
        cloud,
        refresh_margin: Duration::from_secs(refresh_margin_secs),
    })
}

#[cfg(test)]
#[path = "account_tests.rs"]
mod tests;
