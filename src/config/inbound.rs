//! The listener's door (issue 13): who may connect, TLS, AUTH, and the exposure rules that
//! keep the relay from becoming an open relay when it listens beyond loopback.
//!
//! - A non-loopback address (either listener) needs `listen.allow` or `listen.require_auth`.
//! - An allow list entry of everything (`0.0.0.0/0`, `::/0`) needs `listen.require_auth`
//!   with real users (never accept-any mode).
//! - Accept-any mode needs an allow list: it is a compatibility switch, not a lock.
//! - AUTH is offered inside TLS only, unless `auth_without_tls_on_loopback` (loopback only).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::address::socket_address;
use super::{ConfigError, ListenConfig, RouteConfig};
use crate::smtp::auth::{InboundAuth, UsersFile};
use crate::smtp::auth_limit::AuthLimiter;
use crate::smtp::tls::InboundTls;

/// The longest pause after failed AUTH attempts.
pub const MAX_AUTH_PAUSE: Duration = Duration::from_secs(3600);

/// The door's settings, checked.
pub(super) struct Door {
    pub tls: Option<Arc<InboundTls>>,
    pub implicit_tls_address: Option<SocketAddr>,
    pub require_tls: bool,
    pub auth: InboundAuth,
}

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::new(&format!("listen.{key}"), message)
}

/// Checks the door's settings of `l` (its `address` already parsed as `address`); reads the
/// certificate and the users file.
pub(super) fn validate_door(
    l: &ListenConfig,
    address: SocketAddr,
    hostname: &str,
) -> Result<Door, ConfigError> {
    let implicit_tls_address = match l
        .implicit_tls_address
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.eq_ignore_ascii_case("off"))
    {
        None => None,
        Some(a) => {
            let a = socket_address(a, 465).map_err(|m| err("implicit_tls_address", m))?;
            // Port 0 asks the kernel for a free port: two of them never collide.
            if a == address && a.port() != 0 {
                return Err(err(
                    "implicit_tls_address",
                    format!("{a} is listen.address already: give the TLS port its own port (465 is usual)"),
                ));
            }
            Some(a)
        }
    };
    let tls = tls(l, hostname)?;
    if tls.is_none() {
        let why = "needs a certificate: set listen.tls_certificate_file and listen.tls_key_file \
                   (SMTP_OAUTH_RELAY_INBOUND_TLS_CERT_FILE, …_KEY_FILE), or listen.tls_self_signed \
                   = true for devices that only need some TLS";
        if implicit_tls_address.is_some() {
            return Err(err(
                "implicit_tls_address",
                format!("the implicit-TLS port {why}"),
            ));
        }
        if l.require_tls {
            return Err(err("require_tls", format!("requiring TLS {why}")));
        }
    }
    let auth = auth(l, tls.is_some())?;
    exposure(l, address, implicit_tls_address, &auth, tls.is_some())?;
    Ok(Door {
        tls,
        implicit_tls_address,
        require_tls: l.require_tls,
        auth,
    })
}

fn tls(l: &ListenConfig, hostname: &str) -> Result<Option<Arc<InboundTls>>, ConfigError> {
    match (&l.tls_certificate_file, &l.tls_key_file) {
        (Some(cert), Some(key)) => {
            if l.tls_self_signed {
                return Err(err(
                    "tls_self_signed",
                    "a certificate is configured: remove tls_self_signed, or the certificate files",
                ));
            }
            InboundTls::from_files(cert, key)
                .map(|t| Some(Arc::new(t)))
                .map_err(|m| err("tls_certificate_file", m))
        }
        (Some(_), None) => Err(err(
            "tls_key_file",
            "missing: the private key of listen.tls_certificate_file (PEM)",
        )),
        (None, Some(_)) => Err(err(
            "tls_certificate_file",
            "missing: the certificate (PEM) for listen.tls_key_file",
        )),
        (None, None) if l.tls_self_signed => InboundTls::self_signed(hostname)
            .map(|t| Some(Arc::new(t)))
            .map_err(|m| err("tls_self_signed", m)),
        (None, None) => Ok(None),
    }
}

fn auth(l: &ListenConfig, tls: bool) -> Result<InboundAuth, ConfigError> {
    let users = match &l.users_file {
        Some(path) => Some(Arc::new(
            UsersFile::load(path).map_err(|m| err("users_file", m))?,
        )),
        None => None,
    };
    if l.auth_accept_any && users.is_some() {
        return Err(err(
            "auth_accept_any",
            "accept-any mode ignores the users file: use one of the two",
        ));
    }
    let offered = users.is_some() || l.auth_accept_any;
    if l.require_auth && !offered {
        return Err(err(
            "require_auth",
            "requiring AUTH needs users: set listen.users_file (SMTP_OAUTH_RELAY_USERS_FILE)",
        ));
    }
    if offered && !tls && !l.auth_without_tls_on_loopback {
        return Err(err(
            if users.is_some() {
                "users_file"
            } else {
                "auth_accept_any"
            },
            "AUTH is offered only inside TLS, so passwords never cross the network in the clear: \
             set listen.tls_certificate_file and listen.tls_key_file (or listen.tls_self_signed \
             = true), or listen.auth_without_tls_on_loopback = true for clients on this host only",
        ));
    }
    if l.auth_max_failures == 0 {
        return Err(err("auth_max_failures", "must be at least 1"));
    }
    if l.auth_pause_secs == 0 {
        return Err(err("auth_pause_secs", "must be at least 1 second"));
    }
    let base = Duration::from_secs(l.auth_pause_secs).min(MAX_AUTH_PAUSE);
    Ok(InboundAuth {
        users,
        accept_any: l.auth_accept_any,
        required: l.require_auth,
        without_tls_on_loopback: l.auth_without_tls_on_loopback,
        limiter: offered
            .then(|| Arc::new(AuthLimiter::new(l.auth_max_failures, base, MAX_AUTH_PAUSE))),
    })
}

fn exposure(
    l: &ListenConfig,
    address: SocketAddr,
    implicit: Option<SocketAddr>,
    auth: &InboundAuth,
    tls: bool,
) -> Result<(), ConfigError> {
    let real_auth = auth.required && !auth.accept_any;
    if let Some(everyone) = l.allow.iter().find(|net| covers_the_internet(net)) {
        if !real_auth {
            return Err(err(
                "allow",
                format!(
                    "`{everyone}` lets (nearly) every host on every network relay through your \
                     mailbox (an open relay); list only the networks of your clients, e.g. [\"10.0.0.0/8\"], \
                     or require AUTH with a users file (listen.require_auth, listen.users_file)"
                ),
            ));
        }
    }
    if auth.accept_any && !l.allow.iter().any(|n: &IpNet| !covers_the_internet(n)) {
        return Err(err(
            "auth_accept_any",
            "accept-any mode lets anyone who can connect send as your mailbox: it needs \
             listen.allow, the networks of the devices that need it (e.g. [\"10.9.0.0/24\"])",
        ));
    }
    let network = !address.ip().is_loopback() || implicit.is_some_and(|a| !a.ip().is_loopback());
    if auth.required && !tls && network {
        return Err(err(
            "require_auth",
            "clients on the network could never log in: without TLS, AUTH is offered to \
             loopback clients only; configure a certificate (listen.tls_certificate_file) too",
        ));
    }
    for (key, a) in [
        ("address", Some(address)),
        ("implicit_tls_address", implicit),
    ] {
        let Some(a) = a else { continue };
        if !a.ip().is_loopback() && l.allow.is_empty() && !real_auth {
            return Err(err(
                if key == "address" { "allow" } else { key },
                format!(
                    "listening on non-loopback address {a} needs `listen.allow`, the client \
                     networks that may relay (e.g. [\"10.0.0.0/8\"]), or listen.require_auth \
                     with a users file; without either the relay would be an open relay"
                ),
            ));
        }
    }
    Ok(())
}

/// Whether an allow-list entry lets in (nearly) everyone: all of IPv4 or an eighth of it and
/// more (`0.0.0.0/0`, `0.0.0.0/1` + `128.0.0.0/1`), very short IPv6 prefixes, and the
/// IPv4-mapped range a dual-stack listener matches IPv4 clients against (`::ffff:0:0/96`).
fn covers_the_internet(net: &IpNet) -> bool {
    match net {
        IpNet::V4(v4) => v4.prefix_len() < 8,
        IpNet::V6(v6) => {
            let mapped = std::net::Ipv4Addr::UNSPECIFIED.to_ipv6_mapped();
            v6.prefix_len() < 16 || (v6.contains(&mapped) && v6.prefix_len() < 96 + 8)
        }
    }
}

/// Keys of `[[route]]` entries that name inbound users: they need AUTH, and users the file
/// knows.
pub(super) fn check_route_users(
    routes: &[RouteConfig],
    auth: &InboundAuth,
) -> Result<(), ConfigError> {
    for (i, r) in routes.iter().enumerate() {
        if r.users.is_empty() {
            continue;
        }
        let key = format!("route[{}].users", i + 1);
        // Accept-any mode takes any name: a route by user there would be anyone's to pick.
        let Some(file) = &auth.users else {
            return Err(ConfigError::new(
                &key,
                "routing by user needs inbound AUTH with a users file (listen.users_file); \
                 in accept-any mode any client could log in as any name",
            ));
        };
        {
            let users = file.current();
            if let Some(unknown) = r.users.iter().find(|u| users.get(u.trim()).is_none()) {
                return Err(ConfigError::new(
                    &key,
                    format!("`{unknown}` is not a user of {}", file.path().display()),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "inbound_tests.rs"]
mod tests;
