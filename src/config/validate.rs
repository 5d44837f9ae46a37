//! Validation: one function per section of the file, turning [`file`] structs into the runtime
//! ones. Each refuses a bad value with a [`ConfigError::Invalid`] naming the key
//! (`server.listen`, `oauth.clients[0].client_id`), and relative paths are resolved against
//! `base`, the directory of the config file.
//!
//! [`Config::from_file`](super::Config::from_file) calls them in the file's order; the first
//! problem found is the one reported.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;

use super::{
    AcmeConfig, AuthConfig, Backend, ConfigError, ConsoleConfig, HistoryConfig, LimitsConfig,
    LockoutConfig, MfaPolicy, OAuthClient, OrgId, PasswordPolicy, PgTls, PostgresConfig,
    ServerConfig, StoreConfig, TlsConfig, TokensConfig, UpstreamConfig, file,
};

mod mail;
pub(super) use mail::mail;

pub(super) fn server(s: &file::Server) -> Result<ServerConfig, ConfigError> {
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

pub(super) fn tls(t: &file::Tls, base: &Path) -> Result<TlsConfig, ConfigError> {
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
        None | Some("production") => super::LETS_ENCRYPT_PRODUCTION.to_owned(),
        Some("staging") => super::LETS_ENCRYPT_STAGING.to_owned(),
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
        None => super::ACME_ORDER_TIMEOUT,
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
pub(super) fn acme_cache_default(mut tls: TlsConfig, store: &Path) -> TlsConfig {
    if let Some(a) = &mut tls.acme
        && a.cache.as_os_str().is_empty()
    {
        a.cache = store.join("acme");
    }
    tls
}

pub(super) fn upstream(u: &file::Upstream, base: &Path) -> Result<UpstreamConfig, ConfigError> {
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
fn public_paths(list: &[String]) -> Result<super::PublicPaths, ConfigError> {
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
    Ok(super::PublicPaths::new(exact, prefixes))
}

pub(super) fn store(s: &file::Store, base: &Path) -> Result<StoreConfig, ConfigError> {
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

pub(super) fn auth(a: &file::Auth) -> Result<AuthConfig, ConfigError> {
    let argon2 = argon2::Params::new(
        a.argon2_memory_kib,
        a.argon2_iterations,
        a.argon2_parallelism,
        None,
    )
    .map_err(|e| invalid("auth.argon2_*", format!("invalid argon2 parameters: {e}")))?;
    crate::secret::check_argon2_params(&argon2).map_err(|e| invalid("auth.argon2_*", e))?;
    let concurrency = if a.hashing_concurrency == 0 {
        std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
    } else {
        a.hashing_concurrency
    };
    let auth = AuthConfig {
        token_length: bounded("auth.token_length", a.token_length, 16, 64)?,
        session_idle_timeout: nonzero("auth.session_idle_timeout", a.session_idle_timeout)?,
        session_lifetime: nonzero("auth.session_lifetime", a.session_lifetime)?,
        max_sessions: bounded("auth.max_sessions", a.max_sessions, 1, 50_000_000)?,
        max_sessions_per_user: bounded(
            "auth.max_sessions_per_user",
            a.max_sessions_per_user,
            1,
            1_000_000,
        )?,
        max_secret_bytes: bounded("auth.max_secret_bytes", a.max_secret_bytes, 64, 16_384)?,
        argon2,
        hashing_concurrency: NonZeroUsize::new(bounded(
            "auth.hashing_concurrency",
            concurrency,
            1,
            1024,
        )?)
        .expect("bounded above zero"),
        hashing_queue: bounded("auth.hashing_queue", a.hashing_queue, 0, 1_000_000)?,
        hashing_queue_timeout: nonzero("auth.hashing_queue_timeout", a.hashing_queue_timeout)?,
        password_policy: PasswordPolicy {
            min_length: bounded("auth.password_min_length", a.password_min_length, 1, 256)?,
            require_letter_and_digit: a.password_require_letter_and_digit,
        },
        trusted_networks: cidrs("auth.trusted_networks", &a.trusted_networks)?,
        credential_cache_ttl: nonzero("auth.credential_cache_ttl", a.credential_cache_ttl)?,
        credential_cache_size: bounded(
            "auth.credential_cache_size",
            a.credential_cache_size,
            0,
            10_000_000,
        )?,
    };
    if auth.session_lifetime < auth.session_idle_timeout {
        return Err(invalid(
            "auth.session_lifetime",
            "must not be shorter than auth.session_idle_timeout",
        ));
    }
    Ok(auth)
}

pub(super) fn oauth(o: &file::OAuth) -> Result<Vec<OAuthClient>, ConfigError> {
    let mut clients = Vec::with_capacity(o.clients.len());
    for (i, c) in o.clients.iter().enumerate() {
        let key = format!("oauth.clients[{i}]");
        if c.client_id.is_empty() || c.client_id.len() > 256 {
            return Err(invalid(
                &format!("{key}.client_id"),
                "must be 1 to 256 characters",
            ));
        }
        if clients
            .iter()
            .any(|o: &OAuthClient| o.client_id == c.client_id)
        {
            return Err(invalid(
                &format!("{key}.client_id"),
                format!("'{}' is listed twice", c.client_id),
            ));
        }
        let secret = match (&c.client_secret, &c.client_secret_env) {
            (Some(s), None) => s.clone(),
            (None, Some(var)) => from_env(&format!("{key}.client_secret_env"), var)?,
            _ => {
                return Err(invalid(
                    &format!("{key}.client_secret"),
                    "set exactly one of client_secret and client_secret_env",
                ));
            }
        };
        if secret.len() < 8 {
            return Err(invalid(
                &format!("{key}.client_secret"),
                "must be at least 8 characters",
            ));
        }
        let lifetime = nonzero(
            &format!("{key}.refresh_token_lifetime"),
            c.refresh_token_lifetime.unwrap_or(o.refresh_token_lifetime),
        )?;
        let idle = nonzero(
            &format!("{key}.refresh_token_idle"),
            c.refresh_token_idle.unwrap_or(o.refresh_token_idle),
        )?;
        if idle > lifetime {
            return Err(invalid(
                &format!("{key}.refresh_token_idle"),
                "must not be longer than refresh_token_lifetime",
            ));
        }
        let username = |k: &str, u: &str| {
            let u = crate::domain::canonical_username(u);
            if u.is_empty() || u.len() > 256 {
                Err(invalid(
                    &format!("{key}.{k}"),
                    "a username is 1 to 256 characters",
                ))
            } else {
                Ok(u)
            }
        };
        let run_as = c
            .run_as
            .as_deref()
            .map(|u| username("run_as", u))
            .transpose()?;
        if c.allow_interactive_run_as && run_as.is_none() {
            return Err(invalid(
                &format!("{key}.allow_interactive_run_as"),
                "needs run_as",
            ));
        }
        let permitted_users = match &c.permitted_users {
            None => None,
            Some(list) if list.is_empty() => {
                return Err(invalid(
                    &format!("{key}.permitted_users"),
                    "lists nobody: leave it out to permit every user",
                ));
            }
            Some(list) => Some(
                list.iter()
                    .map(|u| username("permitted_users", u))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let relax_ip = match c.ip_relaxation.as_deref() {
            None | Some("enforce") => false,
            Some("relax") => true,
            Some(other) => {
                return Err(invalid(
                    &format!("{key}.ip_relaxation"),
                    format!("'{other}' is not enforce or relax"),
                ));
            }
        };
        let session_idle_timeout = c
            .session_idle_timeout
            .map(|d| nonzero(&format!("{key}.session_idle_timeout"), d))
            .transpose()?;
        clients.push(OAuthClient {
            client_id: c.client_id.clone(),
            client_secret: secret,
            refresh_tokens: c.refresh_tokens,
            refresh_token_lifetime: lifetime,
            refresh_token_idle: idle,
            run_as,
            allow_interactive_run_as: c.allow_interactive_run_as,
            permitted_users,
            relax_ip,
            session_idle_timeout,
        });
    }
    Ok(clients)
}

pub(super) fn tokens(t: &file::Tokens) -> Result<TokensConfig, ConfigError> {
    Ok(TokensConfig {
        grace_period: or_zero("tokens.grace_period", t.grace_period)?,
        revoke_sessions_on_reset: t.revoke_sessions_on_reset,
        reset_per_user_per_hour: at_least_one(
            "tokens.reset_per_user_per_hour",
            t.reset_per_user_per_hour,
        )?,
        reset_per_ip_per_hour: at_least_one(
            "tokens.reset_per_ip_per_hour",
            t.reset_per_ip_per_hour,
        )?,
        rotation_check_interval: nonzero(
            "tokens.rotation_check_interval",
            t.rotation_check_interval,
        )?,
        max_named_per_user: bounded("tokens.max_named_per_user", t.max_named_per_user, 0, 100)?,
        keep_named_tokens_on_password_change: t.keep_named_tokens_on_password_change,
    })
}

pub(super) fn limits(l: &file::Limits) -> Result<LimitsConfig, ConfigError> {
    Ok(LimitsConfig {
        login_per_ip: at_least_one("limits.login_per_ip", l.login_per_ip)?,
        login_per_ip_period: nonzero("limits.login_per_ip_period", l.login_per_ip_period)?,
        login_per_user: at_least_one("limits.login_per_user", l.login_per_user)?,
        login_per_user_period: nonzero("limits.login_per_user_period", l.login_per_user_period)?,
        argon2_per_second: at_least_one("limits.argon2_per_second", l.argon2_per_second)?,
        max_keys: bounded("limits.max_keys", l.max_keys, 100, 100_000_000)?,
        housekeeping_interval: nonzero("limits.housekeeping_interval", l.housekeeping_interval)?,
        failure_delay: match or_zero("limits.failure_delay", l.failure_delay)? {
            d if d > Duration::from_secs(10) => {
                return Err(invalid("limits.failure_delay", "must be at most 10s"));
            }
            d => d,
        },
        max_delayed_failures: bounded(
            "limits.max_delayed_failures",
            l.max_delayed_failures,
            1,
            1_000_000,
        )?,
    })
}

pub(super) fn lockout(l: &file::Lockout) -> Result<LockoutConfig, ConfigError> {
    Ok(LockoutConfig {
        max_failures: l.max_failures,
        window: nonzero("lockout.window", l.window)?,
        period: l
            .lockout_period
            .map(|p| nonzero("lockout.lockout_period", p))
            .transpose()?,
    })
}

pub(super) fn console(c: &file::Console) -> Result<ConsoleConfig, ConfigError> {
    let console = ConsoleConfig {
        session_idle_timeout: nonzero("console.session_idle_timeout", c.session_idle_timeout)?,
        session_lifetime: nonzero("console.session_lifetime", c.session_lifetime)?,
        mfa: MfaPolicy::parse(&c.mfa).ok_or_else(|| {
            invalid(
                "console.mfa",
                format!(
                    "'{}' is not one of \"admins\", \"all\" or \"off\"",
                    c.mfa.chars().take(40).collect::<String>()
                ),
            )
        })?,
        listen: match &c.listen {
            None => None,
            Some(l) => Some(l.parse().map_err(|_| {
                invalid(
                    "console.listen",
                    format!(
                        "'{}' is not an address such as 127.0.0.1:9443",
                        l.chars().take(80).collect::<String>()
                    ),
                )
            })?),
        },
        time_zone: jiff::tz::TimeZone::get(&c.time_zone).map_err(|_| {
            invalid(
                "console.time_zone",
                format!(
                    "'{}' is not a time zone: use an IANA name such as \"Europe/London\", or \"UTC\"",
                    c.time_zone.chars().take(80).collect::<String>()
                ),
            )
        })?,
    };
    if console.session_lifetime < console.session_idle_timeout {
        return Err(invalid(
            "console.session_lifetime",
            "must not be shorter than console.session_idle_timeout",
        ));
    }
    Ok(console)
}

/// The Prometheus listener, if on: always a loopback address.
pub(super) fn metrics(m: &file::Metrics) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(l) = &m.listen else {
        return Ok(None);
    };
    let addr: SocketAddr = l.parse().map_err(|_| {
        invalid(
            "metrics.listen",
            format!("'{l}' is not an address such as 127.0.0.1:9464"),
        )
    })?;
    if !addr.ip().is_loopback() {
        return Err(invalid(
            "metrics.listen",
            "must be a loopback address (metrics are for the local collector)",
        ));
    }
    Ok(Some(addr))
}

pub(super) fn history(h: &file::History) -> Result<HistoryConfig, ConfigError> {
    Ok(HistoryConfig {
        max_age: nonzero("history.max_age", h.max_age)?,
        max_rows: bounded("history.max_rows", h.max_rows, 1, 1_000_000_000)?,
        queue: bounded("history.queue", h.queue, 1, 10_000_000)?,
        audit_max_age: nonzero("history.audit_max_age", h.audit_max_age)?,
    })
}

/// The tracing filter, checked for syntax.
pub(super) fn log(l: &file::Log) -> Result<String, ConfigError> {
    tracing_subscriber::EnvFilter::try_new(&l.level)
        .map_err(|e| invalid("log.level", format!("'{}': {e}", l.level)))?;
    Ok(l.level.clone())
}

/// The value of the environment variable `var` that the `*_env` key `key` names.
fn from_env(key: &str, var: &str) -> Result<String, ConfigError> {
    std::env::var(var).map_err(|_| invalid(key, format!("environment variable {var} is not set")))
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        problem: problem.into(),
    }
}

/// `p` as written if absolute, else under `base`.
fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

fn existing_file(key: &str, p: PathBuf) -> Result<PathBuf, ConfigError> {
    if !p.is_file() {
        return Err(invalid(key, format!("file {} does not exist", p.display())));
    }
    Ok(p)
}

fn cidrs(key: &str, list: &[String]) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    list.iter()
        .map(|c| {
            c.parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| invalid(key, format!("'{c}' is not a network such as 10.0.0.0/8")))
        })
        .collect()
}

/// A duration that must not be zero (durations that may be written "0" to turn something off
/// are read as `None` and go through [`or_zero`]).
fn nonzero(key: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        return Err(invalid(key, "must be longer than zero"));
    }
    Ok(d)
}

/// A duration written "0" (`None`: off) or else one longer than zero.
fn or_zero(key: &str, d: Option<Duration>) -> Result<Duration, ConfigError> {
    d.map_or(Ok(Duration::ZERO), |d| nonzero(key, d))
}

fn at_least_one(key: &str, v: u32) -> Result<NonZeroU32, ConfigError> {
    NonZeroU32::new(v).ok_or_else(|| invalid(key, "must be at least 1"))
}

pub(super) fn bounded(key: &str, v: usize, min: usize, max: usize) -> Result<usize, ConfigError> {
    if v < min || v > max {
        return Err(invalid(key, format!("{v} is outside {min}..={max}")));
    }
    Ok(v)
}
