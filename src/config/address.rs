//! Addresses in the configuration, parsed without I/O: authorities (and the tenant a
//! Jama-style one names), `host:port`, addresses to listen on, and an upstream's settings for
//! one address.

use std::net::{IpAddr, SocketAddr};

use rustls_pki_types::ServerName;

use super::file::{ConfigError, UpstreamConfig, DEFAULT_AUTHORITY, DEFAULT_UPSTREAM};
use crate::upstream::UpstreamSettings;

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

/// `base` pointed at `address` (`host:port`), the certificate name following the host unless
/// `upstream.tls_server_name` is set. `key` names where the address came from.
pub(super) fn upstream_for(
    base: &UpstreamSettings,
    u: &UpstreamConfig,
    address: &str,
    key: &str,
) -> Result<UpstreamSettings, ConfigError> {
    let (host, port) = split_host_port(address).ok_or_else(|| {
        ConfigError::new(
            key,
            format!("`{address}` is not host:port such as {DEFAULT_UPSTREAM}"),
        )
    })?;
    let name = u.tls_server_name.clone().unwrap_or_else(|| host.clone());
    let server_name = ServerName::try_from(name.clone()).map_err(|_| {
        ConfigError::new(
            "upstream.tls_server_name",
            format!("`{name}` is not a valid TLS server name"),
        )
    })?;
    Ok(UpstreamSettings {
        host,
        port,
        server_name,
        ..base.clone()
    })
}

/// A plain address such as `admin@contoso.com`: one `@` with text on both sides, no spaces,
/// control characters or angle brackets.
pub(super) fn is_plain_address(a: &str) -> bool {
    a.split_once('@')
        .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'))
        && !a.contains(|c: char| c.is_whitespace() || c.is_control() || "<>".contains(c))
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
