//! The `[tls]` section: a certificate and key on disk, or `[tls.acme]` (the directory, the
//! contacts, the cache and the order timeout).

use std::path::Path;

use http::Uri;

use super::{existing_file, invalid, nonzero, resolve};
use crate::config::{AcmeConfig, ConfigError, TlsConfig, file};

pub(in crate::config) fn tls(t: &file::Tls, base: &Path) -> Result<TlsConfig, ConfigError> {
    if let Some(a) = &t.acme {
        if t.cert.is_some() || t.key.is_some() {
            return Err(invalid(
                "tls.acme",
                "set either tls.acme or tls.cert and tls.key, not both",
            ));
        }
        return Ok(TlsConfig {
            acme: Some(acme(a, base)?),
            ..TlsConfig::default()
        });
    }
    match (&t.cert, &t.key) {
        (None, None) => Ok(TlsConfig::default()),
        (Some(c), Some(k)) => {
            let (cert, key) = (resolve(base, c), resolve(base, k));
            Ok(TlsConfig {
                cert: Some(existing_file("tls.cert", cert)?),
                key: Some(existing_file("tls.key", key)?),
                acme: None,
            })
        }
        (Some(_), None) => Err(invalid("tls.key", "tls.cert is set but tls.key is not")),
        (None, Some(_)) => Err(invalid("tls.cert", "tls.key is set but tls.cert is not")),
    }
}

fn acme(a: &file::Acme, base: &Path) -> Result<AcmeConfig, ConfigError> {
    if a.domains.is_empty() {
        return Err(invalid("tls.acme.domains", "list at least one DNS name"));
    }
    let mut domains = Vec::with_capacity(a.domains.len());
    for (i, d) in a.domains.iter().enumerate() {
        let key = format!("tls.acme.domains[{i}]");
        let d = d.to_ascii_lowercase();
        // TLS-ALPN-01 cannot validate a wildcard (RFC 8737 §3) and a CA issues no publicly
        // trusted certificate for an IP address by it here.
        if d.contains('*') {
            return Err(invalid(
                &key,
                format!("'{d}': wildcards need the DNS-01 challenge, which tokengate does not do"),
            ));
        }
        if d.parse::<std::net::IpAddr>().is_ok()
            || rustls_pki_types::DnsName::try_from(d.as_str()).is_err()
            || !d.contains('.') && d != "localhost"
        {
            return Err(invalid(&key, format!("'{d}' is not a DNS name")));
        }
        if domains.contains(&d) {
            return Err(invalid(&key, format!("'{d}' is listed twice")));
        }
        domains.push(d);
    }
    let contact = match &a.contact {
        None => None,
        Some(c) => match c.strip_prefix("mailto:") {
            Some(addr) if addr.contains('@') && !addr.contains(char::is_whitespace) => {
                Some(c.clone())
            }
            _ => {
                return Err(invalid(
                    "tls.acme.contact",
                    format!("'{c}' is not a mailto: URI such as mailto:ops@example.com"),
                ));
            }
        },
    };
    let directory = match a.directory.as_deref() {
        None | Some("production") => crate::config::LETS_ENCRYPT_PRODUCTION.to_owned(),
        Some("staging") => crate::config::LETS_ENCRYPT_STAGING.to_owned(),
        Some(u) => match u.parse::<Uri>() {
            Ok(url) if url.scheme_str() == Some("https") && url.authority().is_some() => {
                u.to_owned()
            }
            _ => {
                return Err(invalid(
                    "tls.acme.directory",
                    format!("'{u}' is not an https:// URL, \"production\" or \"staging\""),
                ));
            }
        },
    };
    let ca_roots = match &a.ca_roots {
        None => None,
        Some(p) => {
            let p = existing_file("tls.acme.ca_roots", resolve(base, p))?;
            match crate::tls::client_roots(Some(&p)) {
                Ok(roots) if !roots.is_empty() => {}
                Ok(_) => {
                    return Err(invalid(
                        "tls.acme.ca_roots",
                        format!("{}: no CERTIFICATE section found", p.display()),
                    ));
                }
                Err(e) => {
                    return Err(invalid(
                        "tls.acme.ca_roots",
                        format!("{}: {e}", p.display()),
                    ));
                }
            }
            Some(p)
        }
    };
    let order_timeout = match a.order_timeout {
        None => crate::config::ACME_ORDER_TIMEOUT,
        Some(d) => nonzero("tls.acme.order_timeout", d)?,
    };
    Ok(AcmeConfig {
        domains,
        contact,
        directory,
        ca_roots,
        order_timeout,
        // Filled in by `acme_cache_default` once the store's path is known.
        cache: a
            .cache
            .as_deref()
            .map(|c| resolve(base, c))
            .unwrap_or_default(),
    })
}

/// The ACME cache defaults to `acme` in the data directory.
pub(in crate::config) fn acme_cache_default(mut tls: TlsConfig, store: &Path) -> TlsConfig {
    if let Some(a) = &mut tls.acme
        && a.cache.as_os_str().is_empty()
    {
        a.cache = store.join("acme");
    }
    tls
}
