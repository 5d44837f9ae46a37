//! The `[store]` section: the data directory, and the backend (sled, or PostgreSQL with its
//! URL, TLS, pool and timeouts).

use std::path::Path;
use std::time::Duration;

use super::{bounded, from_env, invalid, resolve};
use crate::config::{Backend, ConfigError, PgTls, PostgresConfig, StoreConfig, file};

pub(in crate::config) fn store(s: &file::Store, base: &Path) -> Result<StoreConfig, ConfigError> {
    if s.path.is_empty() {
        return Err(invalid("store.path", "must not be empty"));
    }
    Ok(StoreConfig {
        backend: backend(s, base)?,
        path: resolve(base, &s.path),
        cache_capacity_bytes: bounded(
            "store.cache_capacity_mib",
            s.cache_capacity_mib as usize,
            1,
            65_536,
        )? as u64
            * 1024
            * 1024,
    })
}

/// `[store] backend` and, for PostgreSQL, its URL (or the variable that holds it), TLS and
/// bounds.
fn backend(s: &file::Store, base: &Path) -> Result<Backend, ConfigError> {
    match s.backend.as_str() {
        "sled" => {
            for (key, set) in [
                ("store.url", s.url.is_some()),
                ("store.url_env", s.url_env.is_some()),
                ("store.ca", s.ca.is_some()),
            ] {
                if set {
                    return Err(invalid(key, "is for backend = \"postgres\""));
                }
            }
            Ok(Backend::Sled)
        }
        "postgres" => {
            let url = match (&s.url, &s.url_env) {
                (Some(u), None) => u.clone(),
                (None, Some(var)) => from_env("store.url_env", var)?,
                _ => {
                    return Err(invalid(
                        "store.url",
                        "set exactly one of url and url_env for backend = \"postgres\"",
                    ));
                }
            };
            let (connect, tls) = postgres_url(&url)?;
            Ok(Backend::Postgres(Box::new(PostgresConfig {
                connect,
                tls,
                ca: s.ca.as_deref().map(|p| resolve(base, p)),
                pool_size: bounded("store.pool_size", s.pool_size, 1, 1024)?,
                timeout: between("store.timeout", s.timeout, 10, 60_000)?,
                max_staleness: between("store.max_staleness", s.max_staleness, 100, 3_600_000)?,
            })))
        }
        other => Err(invalid(
            "store.backend",
            format!("'{other}' is neither \"sled\" nor \"postgres\""),
        )),
    }
}

/// A `postgres://` URL and its `sslmode`. tokio-postgres reads every libpq parameter but
/// `sslmode=verify-full`, so `sslmode` is taken out and applied here. Messages never quote the
/// URL: it may hold a password.
fn postgres_url(url: &str) -> Result<(tokio_postgres::Config, PgTls), ConfigError> {
    if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
        return Err(invalid(
            "store.url",
            "must be a postgres:// URL (postgres://user@host:5432/db?sslmode=verify-full)",
        ));
    }
    let (head, query) = url.split_once('?').unwrap_or((url, ""));
    let mut tls = PgTls::VerifyFull;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", mode)) => {
                tls = match mode {
                    "disable" => PgTls::Disable,
                    "require" => PgTls::Require,
                    "verify-full" => PgTls::VerifyFull,
                    other => {
                        return Err(invalid(
                            "store.url",
                            format!(
                                "sslmode={} is not supported: use disable, require or verify-full",
                                other.chars().take(20).collect::<String>()
                            ),
                        ));
                    }
                }
            }
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        head.to_owned()
    } else {
        format!("{head}?{}", kept.join("&"))
    };
    let mut connect: tokio_postgres::Config =
        rest.parse().map_err(|e: tokio_postgres::Error| {
            invalid("store.url", format!("not a PostgreSQL URL: {e}"))
        })?;
    connect.ssl_mode(if tls == PgTls::Disable {
        tokio_postgres::config::SslMode::Disable
    } else {
        tokio_postgres::config::SslMode::Require
    });
    if connect.get_application_name().is_none() {
        connect.application_name("tokengate");
    }
    Ok((connect, tls))
}

/// A duration within `min_ms..=max_ms`.
fn between(key: &str, d: Duration, min_ms: u64, max_ms: u64) -> Result<Duration, ConfigError> {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms < min_ms || ms > max_ms {
        return Err(invalid(
            key,
            format!(
                "{} is outside {}..={}",
                humantime::format_duration(d),
                humantime::format_duration(Duration::from_millis(min_ms)),
                humantime::format_duration(Duration::from_millis(max_ms))
            ),
        ));
    }
    Ok(d)
}
