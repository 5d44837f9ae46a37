//! The `[upstream]` section: where calls are forwarded, its TLS, its timeouts and pool, and
//! the public paths that pass without a login.

use std::path::Path;

use http::Uri;

use super::{bounded, existing_file, invalid, nonzero, resolve};
use crate::config::{ConfigError, UpstreamConfig, file};

pub(in crate::config) fn upstream(
    u: &file::Upstream,
    base: &Path,
) -> Result<UpstreamConfig, ConfigError> {
    let url: Uri = u
        .url
        .parse()
        .map_err(|_| invalid("upstream.url", format!("'{}' is not a URL", u.url)))?;
    match (url.scheme_str(), url.authority()) {
        (Some("http" | "https"), Some(_)) => {}
        _ => {
            return Err(invalid(
                "upstream.url",
                format!("'{}' must be an http:// or https:// URL with a host", u.url),
            ));
        }
    }
    let ca = match &u.ca {
        None => None,
        Some(p) => Some(existing_file("upstream.ca", resolve(base, p))?),
    };
    Ok(UpstreamConfig {
        url,
        ca,
        connect_timeout: nonzero("upstream.connect_timeout", u.connect_timeout)?,
        response_timeout: nonzero("upstream.response_timeout", u.response_timeout)?,
        pool_idle_timeout: nonzero("upstream.pool_idle_timeout", u.pool_idle_timeout)?,
        pool_max_idle_per_host: bounded(
            "upstream.pool_max_idle_per_host",
            u.pool_max_idle_per_host,
            0,
            100_000,
        )?,
        max_connections: bounded("upstream.max_connections", u.max_connections, 1, 1_000_000)?,
        body_idle_timeout: nonzero("upstream.body_idle_timeout", u.body_idle_timeout)?,
        public_paths: public_paths(&u.public_paths)?,
    })
}

/// `upstream.public_paths`: each entry a canonical path (as `server::target` leaves a path the
/// router matches: starting with `/`, no dot segments, no `%`, no repeated slashes), with `*`
/// only as its last character; none may reach tokengate's own `/tokengate/` paths.
fn public_paths(list: &[String]) -> Result<crate::config::PublicPaths, ConfigError> {
    const KEY: &str = "upstream.public_paths";
    let (mut exact, mut prefixes) = (Vec::new(), Vec::new());
    for entry in list {
        let (path, prefix) = match entry.strip_suffix('*') {
            Some(p) => (p, true),
            None => (entry.as_str(), false),
        };
        let canonical = path.starts_with('/')
            && !path.contains(['*', '%', '?', '#', '\\'])
            && !path.contains("//")
            && !path.bytes().any(|b| b.is_ascii_control() || b == b' ')
            && !path.split('/').any(|seg| seg == "." || seg == "..");
        if !canonical {
            return Err(invalid(
                KEY,
                format!(
                    "'{entry}' must be a path such as /status or a prefix such as /status/*, \
                     without dot segments, '%', repeated slashes, or '*' before the end"
                ),
            ));
        }
        // A path under /tokengate/ (or a prefix that covers it) would hand tokengate's own
        // endpoints to anyone, were they ever forwarded.
        let ours = if prefix {
            "/tokengate/".starts_with(path) || path.starts_with("/tokengate/")
        } else {
            path == "/tokengate" || path.starts_with("/tokengate/")
        };
        if ours {
            return Err(invalid(
                KEY,
                format!("'{entry}' reaches tokengate's own paths under /tokengate/"),
            ));
        }
        if prefix {
            prefixes.push(path.to_owned());
        } else {
            exact.push(path.to_owned());
        }
    }
    Ok(crate::config::PublicPaths::new(exact, prefixes))
}
