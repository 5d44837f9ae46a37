//! The `[server]` section: the listener, the public URL and the host names clients may
//! address, trusted proxies, and the connection, header and body bounds.

use std::net::SocketAddr;

use http::Uri;

use super::{bounded, cidrs, invalid, nonzero};
use crate::config::{ConfigError, OrgId, ServerConfig, Workers, file};

pub(in crate::config) fn server(s: &file::Server) -> Result<ServerConfig, ConfigError> {
    let listen: SocketAddr = s.listen.parse().map_err(|_| {
        invalid(
            "server.listen",
            format!("'{}' is not an address such as 127.0.0.1:8443", s.listen),
        )
    })?;
    let public_url = match &s.public_url {
        None => None,
        Some(u) => Some(parse_public_url(u)?),
    };
    let org = OrgId::parse(&s.org_id).ok_or_else(|| {
        invalid(
            "server.org_id",
            format!(
                "'{}' is not a 15- or 18-character id starting with 00D",
                s.org_id
            ),
        )
    })?;
    if s.org_name.is_empty() || s.org_name.len() > 80 {
        return Err(invalid("server.org_name", "must be 1 to 80 characters"));
    }
    let server = ServerConfig {
        listen,
        public_url,
        org,
        org_name: s.org_name.clone(),
        header_read_timeout: nonzero("server.header_read_timeout", s.header_read_timeout)?,
        tls_handshake_timeout: nonzero("server.tls_handshake_timeout", s.tls_handshake_timeout)?,
        body_read_timeout: nonzero("server.body_read_timeout", s.body_read_timeout)?,
        max_login_body_bytes: bounded(
            "server.max_login_body_bytes",
            s.max_login_body_bytes,
            1024,
            16 << 20,
        )?,
        max_soap_body_bytes: bounded(
            "server.max_soap_body_bytes",
            s.max_soap_body_bytes,
            1024,
            1 << 30,
        )?,
        max_header_bytes: bounded("server.max_header_bytes", s.max_header_bytes, 8192, 1 << 20)?,
        max_connections: bounded("server.max_connections", s.max_connections, 1, 1_000_000)?,
        trusted_proxies: cidrs("server.trusted_proxies", &s.trusted_proxies)?,
        drain_timeout: nonzero("server.drain_timeout", s.drain_timeout)?,
        max_buffered_body_bytes: bounded(
            "server.max_buffered_body_bytes",
            s.max_buffered_body_bytes,
            64 * 1024,
            1 << 40,
        )?,
        idle_timeout: nonzero("server.idle_timeout", s.idle_timeout)?,
        max_connections_per_ip: bounded(
            "server.max_connections_per_ip",
            s.max_connections_per_ip,
            1,
            1_000_000,
        )?,
        max_concurrent_streams: bounded(
            "server.max_concurrent_streams",
            s.max_concurrent_streams as usize,
            1,
            10_000,
        )? as u32,
        allowed_hosts: allowed_hosts(s.public_url.as_deref(), &s.allowed_hosts)?,
        workers: Workers::parse(&s.workers).ok_or_else(|| {
            invalid(
                "server.workers",
                format!(
                    "'{}' is not one of \"shared\" or \"per-core\"",
                    s.workers.chars().take(40).collect::<String>()
                ),
            )
        })?,
        hsts: match s.hsts.trim() {
            "off" | "" => None,
            v => Some(http::HeaderValue::from_str(v).map_err(|_| {
                invalid(
                    "server.hsts",
                    "must be a header value such as max-age=31536000, or off",
                )
            })?),
        },
    };
    if server.max_login_body_bytes > server.max_buffered_body_bytes {
        return Err(invalid(
            "server.max_buffered_body_bytes",
            "must be at least server.max_login_body_bytes",
        ));
    }
    Ok(server)
}

/// The host names clients may address: `public_url`'s, then the listed ones, lower case and
/// without ports.
fn allowed_hosts(public_url: Option<&str>, listed: &[String]) -> Result<Vec<String>, ConfigError> {
    let mut hosts = Vec::new();
    if let Some(host) = public_url
        .and_then(|u| u.parse::<Uri>().ok())
        .and_then(|u| u.host().map(str::to_ascii_lowercase))
    {
        hosts.push(host);
    }
    for (i, h) in listed.iter().enumerate() {
        let name = h.trim().to_ascii_lowercase();
        let valid = !name.is_empty()
            && name.len() <= 253
            && (name.parse::<std::net::IpAddr>().is_ok()
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::Ipv6Addr>()
                    .is_ok()
                || name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
        if !valid {
            return Err(invalid(
                &format!("server.allowed_hosts[{i}]"),
                format!("'{h}' is not a host name (no scheme, port or path)"),
            ));
        }
        if !hosts.contains(&name) {
            hosts.push(name);
        }
    }
    Ok(hosts)
}

fn parse_public_url(u: &str) -> Result<String, ConfigError> {
    let uri: Uri = u
        .parse()
        .map_err(|_| invalid("server.public_url", format!("'{u}' is not a URL")))?;
    if uri.scheme_str() != Some("https") || uri.authority().is_none() {
        return Err(invalid(
            "server.public_url",
            format!("'{u}' must be an https:// origin such as https://proxy.example.com"),
        ));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(invalid(
            "server.public_url",
            "must be an origin without a path: clients append /services/... to it",
        ));
    }
    let host = uri.host().unwrap_or_default();
    // simple-salesforce strips "-api" from the host it is given (docs/salesforce-protocol.md §1.4).
    if host.contains("-api") {
        return Err(invalid(
            "server.public_url",
            "the host must not contain '-api' (simple-salesforce removes it)",
        ));
    }
    Ok(format!("https://{}", uri.authority().expect("checked")))
}
