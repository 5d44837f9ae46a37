//! Validation: one function per section of the file, turning [`file`] structs into the runtime
//! ones. Each refuses a bad value with a [`ConfigError::Invalid`] naming the key
//! (`server.listen`, `oauth.clients[0].client_id`), and relative paths are resolved against
//! `base`, the directory of the config file.
//!
//! [`Config::from_file`](super::Config::from_file) calls them in the file's order; the first
//! problem found is the one reported. The sections with more than a handful of keys have a
//! file each (`validate/{server,tls,upstream,store,oauth,mail}.rs`); the short ones and the
//! helpers they all share (`invalid`, `resolve`, `nonzero`, `bounded`, …) are here.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    AuthConfig, ConfigError, ConsoleConfig, HistoryConfig, LimitsConfig, LockoutConfig, MfaPolicy,
    PasswordPolicy, TokensConfig, file,
};

mod mail;
mod oauth;
mod server;
mod store;
mod tls;
mod upstream;
pub(super) use mail::mail;
pub(super) use oauth::oauth;
pub(super) use server::server;
pub(super) use store::store;
pub(super) use tls::{acme_cache_default, tls};
pub(super) use upstream::upstream;

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
