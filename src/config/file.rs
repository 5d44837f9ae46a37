//! The TOML file, exactly as an operator writes it: serde structs that reject unknown keys and
//! fill in the documented defaults. Durations are read here, as strings ("10s", "15m", "2h"),
//! with `humantime-serde`; whether a value makes sense (a zero timeout, a bad address) is for
//! [`super::validate`] to say. A duration that cannot be read is reported by its key, in the
//! words of [`duration_problem`].

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    pub server: Server,
    pub tls: Tls,
    pub upstream: Upstream,
    pub store: Store,
    pub auth: Auth,
    pub oauth: OAuth,
    pub tokens: Tokens,
    pub mail: Mail,
    pub limits: Limits,
    pub lockout: Lockout,
    pub history: History,
    pub metrics: Metrics,
    pub log: Log,
    pub loadtest: Loadtest,
    pub console: Console,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Console {
    /// A console session ends after this long without a request.
    #[serde(with = "humantime_serde")]
    pub session_idle_timeout: Duration,
    /// ... and this long after sign-in, however active.
    #[serde(with = "humantime_serde")]
    pub session_lifetime: Duration,
    /// Who must present a second factor (TOTP) to sign in: "admins", "all" or "off".
    pub mfa: String,
    /// The console's and the admin API's own TLS listener; absent: the public one serves them.
    pub listen: Option<String>,
    /// The time zone the console shows times in: an IANA name ("Europe/London",
    /// "America/New_York") or "UTC".
    pub time_zone: String,
}

impl Default for Console {
    fn default() -> Self {
        Self {
            session_idle_timeout: Duration::from_secs(30 * 60),
            session_lifetime: Duration::from_secs(8 * 3600),
            mfa: "admins".into(),
            listen: None,
            time_zone: "UTC".into(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Loadtest {
    /// Whether the admin API may create synthetic load-test users (a token chosen by the
    /// caller, no email). Only on a test server.
    pub allow_synthetic_users: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Prometheus listener (plain HTTP, loopback only); absent: off.
    pub listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    pub listen: String,
    pub public_url: Option<String>,
    pub org_id: String,
    pub org_name: String,
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    pub max_login_body_bytes: usize,
    pub max_soap_body_bytes: usize,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    /// Peers whose X-Forwarded-For is believed (CIDR list); default none.
    pub trusted_proxies: Vec<String>,
    /// How long a shutdown waits for in-flight requests.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Request bodies tokengate holds in memory at once, all requests together.
    pub max_buffered_body_bytes: usize,
    /// A connection with no request in flight for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections one client address (IPv6: its /64) may hold open.
    pub max_connections_per_ip: usize,
    /// HTTP/2 streams one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Host names clients may address besides `public_url`'s (421 otherwise).
    pub allowed_hosts: Vec<String>,
    /// The Strict-Transport-Security value on every answer; "off" sends none.
    pub hsts: String,
    /// How the public listener's connections are spread over threads: "shared" (one
    /// work-stealing pool) or "per-core" (a listener and a single-threaded loop per core).
    pub workers: String,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8443".into(),
            public_url: None,
            org_id: "00D000000000001".into(),
            org_name: "tokengate".into(),
            header_read_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_login_body_bytes: 64 * 1024,
            max_soap_body_bytes: 16 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            trusted_proxies: Vec::new(),
            drain_timeout: Duration::from_secs(30),
            max_buffered_body_bytes: 256 * 1024 * 1024,
            workers: "shared".into(),
            idle_timeout: Duration::from_secs(60),
            max_connections_per_ip: 256,
            max_concurrent_streams: 100,
            allowed_hosts: Vec::new(),
            hsts: "max-age=31536000".into(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    pub cert: Option<String>,
    pub key: Option<String>,
    /// Certificates ordered and renewed over ACME instead of `cert`/`key`.
    pub acme: Option<Acme>,
}

/// `[tls] acme = { ... }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acme {
    pub domains: Vec<String>,
    /// A `mailto:` URI for the CA's notices; absent: the account has no contact.
    pub contact: Option<String>,
    /// The directory URL, or "production" / "staging" (Let's Encrypt); absent: production.
    pub directory: Option<String>,
    /// PEM file of the roots to trust the ACME server by; absent: the Mozilla roots.
    pub ca_roots: Option<String>,
    /// Where the account key and certificates are kept; absent: `<store.path>/acme`.
    pub cache: Option<String>,
    /// The longest one order (or the renewal or retry it waits for) may overrun before the
    /// ACME client is rebuilt from the cache; absent: 5 minutes.
    #[serde(default, with = "humantime_serde")]
    pub order_timeout: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Upstream {
    pub url: String,
    pub ca: Option<String>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// Upstream connections open at once, idle or busy; requests beyond wait (up to
    /// `connect_timeout`), then get 503.
    pub max_connections: usize,
    /// A response body from the upstream that sends nothing for this long is aborted.
    #[serde(with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    /// Paths forwarded without authentication: exact, or a prefix when ending in `*`.
    pub public_paths: Vec<String>,
}

impl Default for Upstream {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8080".into(),
            ca: None,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
            max_connections: 1024,
            body_idle_timeout: Duration::from_secs(60),
            public_paths: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Store {
    pub path: String,
    pub cache_capacity_mib: u64,
    /// "sled" (embedded, the default) or "postgres" (shared by several replicas).
    pub backend: String,
    /// `postgres://user[:password]@host:port/db?sslmode=verify-full`; or `url_env`.
    pub url: Option<String>,
    pub url_env: Option<String>,
    /// CA file for `sslmode=verify-full` (default: the system's roots).
    pub ca: Option<String>,
    pub pool_size: usize,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub max_staleness: Duration,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            path: "tokengate-data".into(),
            cache_capacity_mib: 32,
            backend: "sled".into(),
            url: None,
            url_env: None,
            ca: None,
            pool_size: 16,
            timeout: Duration::from_secs(2),
            max_staleness: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    pub token_length: usize,
    #[serde(with = "humantime_serde")]
    pub session_idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub session_lifetime: Duration,
    pub max_sessions: usize,
    /// Sessions one user may hold; past it the user's oldest session ends.
    pub max_sessions_per_user: usize,
    pub max_secret_bytes: usize,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    /// 0 means one per CPU core.
    pub hashing_concurrency: usize,
    pub hashing_queue: usize,
    #[serde(with = "humantime_serde")]
    pub hashing_queue_timeout: Duration,
    pub password_min_length: usize,
    pub password_require_letter_and_digit: bool,
    /// From these networks the password alone is accepted (CIDR list).
    pub trusted_networks: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub credential_cache_ttl: Duration,
    pub credential_cache_size: usize,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            token_length: 24,
            session_idle_timeout: Duration::from_secs(2 * 3600),
            session_lifetime: Duration::from_secs(2 * 3600),
            max_sessions: 500_000,
            max_sessions_per_user: 1000,
            max_secret_bytes: 4096,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            hashing_concurrency: 0,
            hashing_queue: 256,
            hashing_queue_timeout: Duration::from_secs(2),
            password_min_length: 8,
            password_require_letter_and_digit: true,
            trusted_networks: Vec::new(),
            credential_cache_ttl: Duration::from_secs(5 * 60),
            credential_cache_size: 100_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuth {
    pub clients: Vec<OAuthClient>,
    /// A refresh token family ends this long after its login, however used (clients may say
    /// otherwise).
    #[serde(with = "humantime_serde")]
    pub refresh_token_lifetime: Duration,
    /// ... and this long after its last use.
    #[serde(with = "humantime_serde")]
    pub refresh_token_idle: Duration,
    /// Live refresh token families one user may hold; past it the oldest ends.
    pub max_refresh_families_per_user: usize,
}

impl Default for OAuth {
    fn default() -> Self {
        Self {
            clients: Vec::new(),
            refresh_token_lifetime: Duration::from_secs(90 * 86_400),
            refresh_token_idle: Duration::from_secs(30 * 86_400),
            max_refresh_families_per_user: 100,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthClient {
    pub client_id: String,
    pub client_secret: Option<String>,
    /// Name of an environment variable holding the secret, so it stays out of the file.
    pub client_secret_env: Option<String>,
    /// Whether the password grant's answer carries a refresh token.
    #[serde(default)]
    pub refresh_tokens: bool,
    /// This client's `[oauth] refresh_token_lifetime` / `refresh_token_idle`.
    #[serde(default, with = "humantime_serde")]
    pub refresh_token_lifetime: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub refresh_token_idle: Option<Duration>,
    /// The user the client_credentials grant acts as; absent: no client_credentials grant.
    pub run_as: Option<String>,
    /// `run_as` may name a user who is not API-only.
    #[serde(default)]
    pub allow_interactive_run_as: bool,
    /// The only users who may log in through this client; absent: all.
    pub permitted_users: Option<Vec<String>>,
    /// "enforce" (the default) or "relax": this client's logins ignore the user's login ranges.
    pub ip_relaxation: Option<String>,
    /// The idle timeout of sessions from this client's logins; absent: `[auth]`'s.
    #[serde(default, with = "humantime_serde")]
    pub session_idle_timeout: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tokens {
    /// How long a superseded token keeps working; "0" or "0s" (`None`): not at all.
    #[serde(with = "duration_or_off")]
    pub grace_period: Option<Duration>,
    pub revoke_sessions_on_reset: bool,
    pub reset_per_user_per_hour: u32,
    pub reset_per_ip_per_hour: u32,
    #[serde(with = "humantime_serde")]
    pub rotation_check_interval: Duration,
    /// Named tokens (one per integration) a user may hold besides the default token.
    pub max_named_per_user: usize,
    /// Keep a user's named tokens across a password change (by default each is reset).
    pub keep_named_tokens_on_password_change: bool,
}

impl Default for Tokens {
    fn default() -> Self {
        Self {
            grace_period: None,
            revoke_sessions_on_reset: true,
            reset_per_user_per_hour: 5,
            reset_per_ip_per_hour: 30,
            rotation_check_interval: Duration::from_secs(30),
            max_named_per_user: 20,
            keep_named_tokens_on_password_change: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mail {
    /// "none", "smtp" or "file".
    pub transport: String,
    pub dir: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// "none", "starttls" or "tls".
    pub security: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_env: Option<String>,
    /// PEM file of CA certificates to trust for the SMTP server's TLS (default: the
    /// public web roots).
    pub ca: Option<String>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub from: String,
    pub reply_to: Option<String>,
    pub brand: String,
    #[serde(with = "humantime_serde")]
    pub compliance_retry_interval: Duration,
}

impl Default for Mail {
    fn default() -> Self {
        Self {
            transport: "none".into(),
            dir: None,
            host: "localhost".into(),
            port: None,
            security: "starttls".into(),
            username: None,
            password: None,
            password_env: None,
            ca: None,
            timeout: Duration::from_secs(30),
            from: "tokengate <tokengate@localhost>".into(),
            reply_to: None,
            brand: "tokengate".into(),
            compliance_retry_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub login_per_ip: u32,
    #[serde(with = "humantime_serde")]
    pub login_per_ip_period: Duration,
    pub login_per_user: u32,
    #[serde(with = "humantime_serde")]
    pub login_per_user_period: Duration,
    /// Global cap on password verifications per second.
    pub argon2_per_second: u32,
    /// Most keys a keyed limiter holds; beyond, a coarse shared limiter takes over.
    pub max_keys: usize,
    #[serde(with = "humantime_serde")]
    pub housekeeping_interval: Duration,
    /// Failed logins are answered no sooner than this after they arrived; "0" or "0s"
    /// (`None`) turns it off.
    #[serde(with = "duration_or_off")]
    pub failure_delay: Option<Duration>,
    /// Failed logins held for the delay at once; beyond, answered at once.
    pub max_delayed_failures: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            login_per_ip: 600,
            login_per_ip_period: Duration::from_secs(60),
            login_per_user: 3600,
            login_per_user_period: Duration::from_secs(3600),
            argon2_per_second: 200,
            max_keys: 100_000,
            housekeeping_interval: Duration::from_secs(60),
            failure_delay: Some(Duration::from_millis(250)),
            max_delayed_failures: 10_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lockout {
    /// Failed logins within `window` that lock the account; 0 turns lockout off.
    pub max_failures: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How long a lock lasts, or "forever" (until an admin unlocks): `None`.
    #[serde(with = "duration_or_forever")]
    pub lockout_period: Option<Duration>,
}

impl Default for Lockout {
    fn default() -> Self {
        Self {
            max_failures: 10,
            window: Duration::from_secs(15 * 60),
            lockout_period: Some(Duration::from_secs(15 * 60)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct History {
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    pub max_rows: usize,
    /// Bound of the queue between logins and the history writer.
    pub queue: usize,
    /// How long audit trail records are kept.
    #[serde(with = "humantime_serde")]
    pub audit_max_age: Duration,
}

impl Default for History {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(90 * 86_400),
            max_rows: 1_000_000,
            queue: 10_000,
            audit_max_age: Duration::from_secs(365 * 86_400),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub level: String,
    /// One line per request on the `tokengate::access` target.
    pub access: bool,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            level: "info".into(),
            access: true,
        }
    }
}

/// A duration, or "0" / "0s" (surrounding spaces ignored) for none: `None`. Other spellings of
/// zero ("0ms") are read as `Some(0)`, which validation refuses like any zero duration.
///
/// Both readers here refuse a value with "expected a duration ...", like `humantime_serde`:
/// `Config::from_toml` recognises those words and reports the key with [`duration_problem`].
mod duration_or_off {
    use std::time::Duration;

    use serde::de::{Deserializer, Error, Unexpected};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        if matches!(text.trim(), "0" | "0s") {
            return Ok(None);
        }
        humantime::parse_duration(&text).map(Some).map_err(|_| {
            D::Error::invalid_value(Unexpected::Str(&text), &"a duration such as 250ms, or 0")
        })
    }
}

/// A duration, or "forever" for none: `None`. Surrounding spaces are ignored.
mod duration_or_forever {
    use std::time::Duration;

    use serde::de::{Deserializer, Error, Unexpected};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        match text.trim() {
            "forever" => Ok(None),
            t => humantime::parse_duration(t).map(Some).map_err(|_| {
                D::Error::invalid_value(
                    Unexpected::Str(&text),
                    &"a duration such as 15m, or forever",
                )
            }),
        }
    }
}

/// The problem with a duration the file structs could not read, in the words validation uses
/// for a bad value: `'soon' is not a duration such as 15m or 2h (expected number at 0)`.
/// `lockout.lockout_period` is read with surrounding spaces trimmed, and quoted so.
pub(super) fn duration_problem(key: &str, value: &str) -> String {
    let value = if key == "lockout.lockout_period" {
        value.trim()
    } else {
        value
    };
    match humantime::parse_duration(value) {
        Err(e) => format!("'{value}' is not a duration such as 15m or 2h ({e})"),
        Ok(_) => format!("'{value}' is not a duration such as 15m or 2h"),
    }
}
