//! Configuration: the TOML file format (`file::*`, serde structs that reject unknown keys) and
//! the validated runtime [`Config`] the rest of the program reads.
//!
//! The two shapes are kept apart on purpose: the file is what an operator writes (strings,
//! optional keys, human durations), the runtime config is what code wants (socket addresses,
//! `Duration`s, resolved secrets). Every validation error names the key and the problem in one
//! line, so a bad file stops the start with a message an operator can act on.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;

/// A configuration problem, always naming the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}, line {line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("config key {key}: {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        problem: problem.into(),
    }
}

/// The TOML file, exactly as an operator writes it.
pub mod file {
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
        pub session_idle_timeout: String,
        /// ... and this long after sign-in, however active.
        pub session_lifetime: String,
    }

    impl Default for Console {
        fn default() -> Self {
            Self {
                session_idle_timeout: "30m".into(),
                session_lifetime: "8h".into(),
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
        pub header_read_timeout: String,
        pub tls_handshake_timeout: String,
        pub body_read_timeout: String,
        pub max_login_body_bytes: usize,
        pub max_soap_body_bytes: usize,
        pub max_header_bytes: usize,
        pub max_connections: usize,
        /// Peers whose X-Forwarded-For is believed (CIDR list); default none.
        pub trusted_proxies: Vec<String>,
        /// How long a shutdown waits for in-flight requests.
        pub drain_timeout: String,
        /// Request bodies tokengate holds in memory at once, all requests together.
        pub max_buffered_body_bytes: usize,
        /// A connection with no request in flight for this long is closed.
        pub idle_timeout: String,
        /// Connections one client address (IPv6: its /64) may hold open.
        pub max_connections_per_ip: usize,
        /// HTTP/2 streams one connection may have open at once.
        pub max_concurrent_streams: u32,
        /// Host names clients may address besides `public_url`'s (421 otherwise).
        pub allowed_hosts: Vec<String>,
        /// The Strict-Transport-Security value on every answer; "off" sends none.
        pub hsts: String,
    }

    impl Default for Server {
        fn default() -> Self {
            Self {
                listen: "127.0.0.1:8443".into(),
                public_url: None,
                org_id: "00D000000000001".into(),
                org_name: "tokengate".into(),
                header_read_timeout: "10s".into(),
                tls_handshake_timeout: "10s".into(),
                body_read_timeout: "30s".into(),
                max_login_body_bytes: 64 * 1024,
                max_soap_body_bytes: 16 * 1024 * 1024,
                max_header_bytes: 64 * 1024,
                max_connections: 10_000,
                trusted_proxies: Vec::new(),
                drain_timeout: "30s".into(),
                max_buffered_body_bytes: 256 * 1024 * 1024,
                idle_timeout: "60s".into(),
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
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Upstream {
        pub url: String,
        pub ca: Option<String>,
        pub connect_timeout: String,
        pub response_timeout: String,
        pub pool_idle_timeout: String,
        pub pool_max_idle_per_host: usize,
        /// Upstream connections open at once, idle or busy; requests beyond wait (up to
        /// `connect_timeout`), then get 503.
        pub max_connections: usize,
        /// A response body from the upstream that sends nothing for this long is aborted.
        pub body_idle_timeout: String,
    }

    impl Default for Upstream {
        fn default() -> Self {
            Self {
                url: "http://127.0.0.1:8080".into(),
                ca: None,
                connect_timeout: "5s".into(),
                response_timeout: "60s".into(),
                pool_idle_timeout: "90s".into(),
                pool_max_idle_per_host: 256,
                max_connections: 1024,
                body_idle_timeout: "60s".into(),
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Store {
        pub path: String,
        pub cache_capacity_mib: u64,
    }

    impl Default for Store {
        fn default() -> Self {
            Self {
                path: "tokengate-data".into(),
                cache_capacity_mib: 32,
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Auth {
        pub token_length: usize,
        pub session_idle_timeout: String,
        pub session_lifetime: String,
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
        pub hashing_queue_timeout: String,
        pub password_min_length: usize,
        pub password_require_letter_and_digit: bool,
        /// From these networks the password alone is accepted (CIDR list).
        pub trusted_networks: Vec<String>,
        pub credential_cache_ttl: String,
        pub credential_cache_size: usize,
    }

    impl Default for Auth {
        fn default() -> Self {
            Self {
                token_length: 24,
                session_idle_timeout: "2h".into(),
                session_lifetime: "2h".into(),
                max_sessions: 500_000,
                max_sessions_per_user: 1000,
                max_secret_bytes: 4096,
                argon2_memory_kib: 19_456,
                argon2_iterations: 2,
                argon2_parallelism: 1,
                hashing_concurrency: 0,
                hashing_queue: 256,
                hashing_queue_timeout: "2s".into(),
                password_min_length: 8,
                password_require_letter_and_digit: true,
                trusted_networks: Vec::new(),
                credential_cache_ttl: "5m".into(),
                credential_cache_size: 100_000,
            }
        }
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct OAuth {
        pub clients: Vec<OAuthClient>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct OAuthClient {
        pub client_id: String,
        pub client_secret: Option<String>,
        /// Name of an environment variable holding the secret, so it stays out of the file.
        pub client_secret_env: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Tokens {
        pub grace_period: String,
        pub revoke_sessions_on_reset: bool,
        pub reset_per_user_per_hour: u32,
        pub reset_per_ip_per_hour: u32,
        pub rotation_check_interval: String,
    }

    impl Default for Tokens {
        fn default() -> Self {
            Self {
                grace_period: "0s".into(),
                revoke_sessions_on_reset: true,
                reset_per_user_per_hour: 5,
                reset_per_ip_per_hour: 30,
                rotation_check_interval: "30s".into(),
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
        pub timeout: String,
        pub from: String,
        pub reply_to: Option<String>,
        pub brand: String,
        pub compliance_retry_interval: String,
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
                timeout: "30s".into(),
                from: "tokengate <tokengate@localhost>".into(),
                reply_to: None,
                brand: "tokengate".into(),
                compliance_retry_interval: "60s".into(),
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Limits {
        pub login_per_ip: u32,
        pub login_per_ip_period: String,
        pub login_per_user: u32,
        pub login_per_user_period: String,
        /// Global cap on password verifications per second.
        pub argon2_per_second: u32,
        /// Most keys a keyed limiter holds; beyond, a coarse shared limiter takes over.
        pub max_keys: usize,
        pub housekeeping_interval: String,
        /// Failed logins are answered no sooner than this after they arrived; "0" turns it off.
        pub failure_delay: String,
        /// Failed logins held for the delay at once; beyond, answered at once.
        pub max_delayed_failures: usize,
    }

    impl Default for Limits {
        fn default() -> Self {
            Self {
                login_per_ip: 600,
                login_per_ip_period: "1m".into(),
                login_per_user: 3600,
                login_per_user_period: "1h".into(),
                argon2_per_second: 200,
                max_keys: 100_000,
                housekeeping_interval: "60s".into(),
                failure_delay: "250ms".into(),
                max_delayed_failures: 10_000,
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Lockout {
        /// Failed logins within `window` that lock the account; 0 turns lockout off.
        pub max_failures: u32,
        pub window: String,
        /// How long a lock lasts, or "forever" (until an admin unlocks).
        pub lockout_period: String,
    }

    impl Default for Lockout {
        fn default() -> Self {
            Self {
                max_failures: 10,
                window: "15m".into(),
                lockout_period: "15m".into(),
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct History {
        pub max_age: String,
        pub max_rows: usize,
        /// Bound of the queue between logins and the history writer.
        pub queue: usize,
    }

    impl Default for History {
        fn default() -> Self {
            Self {
                max_age: "90d".into(),
                max_rows: 1_000_000,
                queue: 10_000,
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Log {
        pub level: String,
    }

    impl Default for Log {
        fn default() -> Self {
            Self {
                level: "info".into(),
            }
        }
    }
}

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: TlsConfig,
    pub upstream: UpstreamConfig,
    pub store: StoreConfig,
    pub auth: AuthConfig,
    pub oauth_clients: Vec<OAuthClient>,
    pub tokens: TokensConfig,
    pub mail: MailConfig,
    pub limits: LimitsConfig,
    pub lockout: LockoutConfig,
    pub history: HistoryConfig,
    /// The Prometheus listener, if on (always a loopback address).
    pub metrics_listen: Option<SocketAddr>,
    pub log_level: String,
    /// `[loadtest] allow_synthetic_users`: the admin API may create load-test users.
    pub allow_synthetic_users: bool,
    pub console: ConsoleConfig,
}

/// `[console]`: how long a console sign-in lasts.
#[derive(Debug, Clone, Copy)]
pub struct ConsoleConfig {
    pub session_idle_timeout: Duration,
    pub session_lifetime: Duration,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub login_per_ip: std::num::NonZeroU32,
    pub login_per_ip_period: Duration,
    pub login_per_user: std::num::NonZeroU32,
    pub login_per_user_period: Duration,
    pub argon2_per_second: std::num::NonZeroU32,
    pub max_keys: usize,
    pub housekeeping_interval: Duration,
    /// Zero: failures are answered as soon as they are known.
    pub failure_delay: Duration,
    pub max_delayed_failures: usize,
}

#[derive(Debug, Clone)]
pub struct LockoutConfig {
    /// Zero: lockout off.
    pub max_failures: u32,
    pub window: Duration,
    /// `None`: until an admin unlocks.
    pub period: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct HistoryConfig {
    pub max_age: Duration,
    pub max_rows: usize,
    pub queue: usize,
}

#[derive(Debug, Clone)]
pub struct TokensConfig {
    /// How long a superseded token keeps working after a rotation (zero: not at all).
    pub grace_period: Duration,
    pub revoke_sessions_on_reset: bool,
    pub reset_per_user_per_hour: std::num::NonZeroU32,
    pub reset_per_ip_per_hour: std::num::NonZeroU32,
    pub rotation_check_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmtpSecurity {
    None,
    StartTls,
    Tls,
}

#[derive(Clone)]
pub enum MailTransport {
    /// No mail can be sent: token resets answer "email delivery is not configured".
    None,
    Smtp {
        host: String,
        port: u16,
        security: SmtpSecurity,
        credentials: Option<(String, String)>,
        /// Extra trust anchors for the server's certificate (a private CA).
        ca: Option<PathBuf>,
    },
    /// `.eml` files in a directory: for the demo only.
    File { dir: PathBuf },
}

impl std::fmt::Debug for MailTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MailTransport::None => f.write_str("None"),
            MailTransport::Smtp {
                host,
                port,
                security,
                credentials,
                ca,
            } => f
                .debug_struct("Smtp")
                .field("host", host)
                .field("port", port)
                .field("security", security)
                .field("username", &credentials.as_ref().map(|c| &c.0))
                .field("ca", ca)
                .finish_non_exhaustive(),
            MailTransport::File { dir } => f.debug_struct("File").field("dir", dir).finish(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct MailConfig {
    pub transport: MailTransport,
    /// Bounds a whole send: connect, dialogue and data.
    pub timeout: Duration,
    pub from: lettre::message::Mailbox,
    pub reply_to: Option<lettre::message::Mailbox>,
    pub brand: String,
    pub compliance_retry_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `https://host[:port]`, no trailing slash: what `serverUrl` and `instance_url` start with.
    pub public_url: Option<String>,
    pub org: OrgId,
    pub org_name: String,
    pub header_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_login_body_bytes: usize,
    pub max_soap_body_bytes: usize,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub drain_timeout: Duration,
    pub max_buffered_body_bytes: usize,
    pub idle_timeout: Duration,
    pub max_connections_per_ip: usize,
    pub max_concurrent_streams: u32,
    /// Lower-case host names (no port) clients may address: `public_url`'s and
    /// `allowed_hosts`. The server adds the host of its public origin when `public_url` is
    /// unset (the listen address, or localhost).
    pub allowed_hosts: Vec<String>,
    /// `None`: no Strict-Transport-Security header.
    pub hsts: Option<http::HeaderValue>,
}

#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub url: Uri,
    pub ca: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub max_connections: usize,
    pub body_idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The data directory: the database, the generated certificate and the admin socket.
    pub path: PathBuf,
    pub cache_capacity_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub token_length: usize,
    pub session_idle_timeout: Duration,
    pub session_lifetime: Duration,
    pub max_sessions: usize,
    pub max_sessions_per_user: usize,
    pub max_secret_bytes: usize,
    pub argon2: argon2::Params,
    pub hashing_concurrency: NonZeroUsize,
    pub hashing_queue: usize,
    pub hashing_queue_timeout: Duration,
    pub password_policy: PasswordPolicy,
    pub trusted_networks: Vec<ipnet::IpNet>,
    pub credential_cache_ttl: Duration,
    pub credential_cache_size: usize,
}

#[derive(Debug, Clone)]
pub struct PasswordPolicy {
    pub min_length: usize,
    pub require_letter_and_digit: bool,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_length: 8,
            require_letter_and_digit: true,
        }
    }
}

impl PasswordPolicy {
    /// A sentence describing the policy, for error messages and forms.
    pub fn describe(&self) -> String {
        if self.require_letter_and_digit {
            format!(
                "at least {} characters, mixing letters and digits",
                self.min_length
            )
        } else {
            format!("at least {} characters", self.min_length)
        }
    }

    pub fn check(&self, pw: &str) -> Result<(), String> {
        let ok = pw.chars().count() >= self.min_length
            && pw.len() <= 1024
            && (!self.require_letter_and_digit
                || (pw.chars().any(char::is_alphabetic) && pw.chars().any(|c| c.is_ascii_digit())));
        if ok { Ok(()) } else { Err(self.describe()) }
    }
}

#[derive(Clone)]
pub struct OAuthClient {
    pub client_id: String,
    pub client_secret: String,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

/// A Salesforce-style organization id: 15 case-sensitive characters and the 18-character form
/// with its case-insensitive checksum suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgId {
    pub id15: String,
    pub id18: String,
}

impl OrgId {
    pub fn parse(s: &str) -> Option<Self> {
        let ok = (s.len() == 15 || s.len() == 18)
            && s.bytes().all(|b| b.is_ascii_alphanumeric())
            && s.starts_with("00D");
        if !ok {
            return None;
        }
        let id15 = s[..15].to_owned();
        let id18 = crate::ids::to_18(&id15);
        if s.len() == 18 && !s.eq_ignore_ascii_case(&id18) {
            return None;
        }
        Some(Self { id15, id18 })
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses TOML text; `path` only labels errors and anchors relative paths.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: file::ConfigFile = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| {
                    text.as_bytes()[..s.start.min(text.len())]
                        .iter()
                        .filter(|&&b| b == b'\n')
                        .count()
                        + 1
                })
                .unwrap_or(0);
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                message: e.message().replace('\n', " "),
            }
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_file(file, base)
    }

    /// The embedded defaults (what `demo` and a missing config start from).
    pub fn defaults() -> Self {
        Self::from_file(file::ConfigFile::default(), Path::new("."))
            .expect("built-in defaults are valid")
    }

    /// Validates the file structs. Relative paths are resolved against `base` (the directory
    /// of the config file), so a config works whatever the current directory is.
    pub fn from_file(f: file::ConfigFile, base: &Path) -> Result<Self, ConfigError> {
        let resolve = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };

        let s = &f.server;
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
            header_read_timeout: duration("server.header_read_timeout", &s.header_read_timeout)?,
            tls_handshake_timeout: duration(
                "server.tls_handshake_timeout",
                &s.tls_handshake_timeout,
            )?,
            body_read_timeout: duration("server.body_read_timeout", &s.body_read_timeout)?,
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
            max_header_bytes: bounded(
                "server.max_header_bytes",
                s.max_header_bytes,
                8192,
                1 << 20,
            )?,
            max_connections: bounded("server.max_connections", s.max_connections, 1, 1_000_000)?,
            trusted_proxies: cidrs("server.trusted_proxies", &s.trusted_proxies)?,
            drain_timeout: duration("server.drain_timeout", &s.drain_timeout)?,
            max_buffered_body_bytes: bounded(
                "server.max_buffered_body_bytes",
                s.max_buffered_body_bytes,
                64 * 1024,
                1 << 40,
            )?,
            idle_timeout: duration("server.idle_timeout", &s.idle_timeout)?,
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

        let tls = match (&f.tls.cert, &f.tls.key) {
            (None, None) => TlsConfig::default(),
            (Some(c), Some(k)) => {
                let (cert, key) = (resolve(c), resolve(k));
                for (key_name, p) in [("tls.cert", &cert), ("tls.key", &key)] {
                    if !p.is_file() {
                        return Err(invalid(
                            key_name,
                            format!("file {} does not exist", p.display()),
                        ));
                    }
                }
                TlsConfig {
                    cert: Some(cert),
                    key: Some(key),
                }
            }
            (Some(_), None) => {
                return Err(invalid("tls.key", "tls.cert is set but tls.key is not"));
            }
            (None, Some(_)) => {
                return Err(invalid("tls.cert", "tls.key is set but tls.cert is not"));
            }
        };

        let u = &f.upstream;
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
            Some(p) => {
                let p = resolve(p);
                if !p.is_file() {
                    return Err(invalid(
                        "upstream.ca",
                        format!("file {} does not exist", p.display()),
                    ));
                }
                Some(p)
            }
        };
        let upstream = UpstreamConfig {
            url,
            ca,
            connect_timeout: duration("upstream.connect_timeout", &u.connect_timeout)?,
            response_timeout: duration("upstream.response_timeout", &u.response_timeout)?,
            pool_idle_timeout: duration("upstream.pool_idle_timeout", &u.pool_idle_timeout)?,
            pool_max_idle_per_host: bounded(
                "upstream.pool_max_idle_per_host",
                u.pool_max_idle_per_host,
                0,
                100_000,
            )?,
            max_connections: bounded("upstream.max_connections", u.max_connections, 1, 1_000_000)?,
            body_idle_timeout: duration("upstream.body_idle_timeout", &u.body_idle_timeout)?,
        };

        if f.store.path.is_empty() {
            return Err(invalid("store.path", "must not be empty"));
        }
        let store = StoreConfig {
            path: resolve(&f.store.path),
            cache_capacity_bytes: bounded(
                "store.cache_capacity_mib",
                f.store.cache_capacity_mib as usize,
                1,
                65_536,
            )? as u64
                * 1024
                * 1024,
        };

        let a = &f.auth;
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
            session_idle_timeout: duration("auth.session_idle_timeout", &a.session_idle_timeout)?,
            session_lifetime: duration("auth.session_lifetime", &a.session_lifetime)?,
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
            hashing_queue_timeout: duration(
                "auth.hashing_queue_timeout",
                &a.hashing_queue_timeout,
            )?,
            password_policy: PasswordPolicy {
                min_length: bounded("auth.password_min_length", a.password_min_length, 1, 256)?,
                require_letter_and_digit: a.password_require_letter_and_digit,
            },
            trusted_networks: cidrs("auth.trusted_networks", &a.trusted_networks)?,
            credential_cache_ttl: duration("auth.credential_cache_ttl", &a.credential_cache_ttl)?,
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

        let mut oauth_clients = Vec::with_capacity(f.oauth.clients.len());
        for (i, c) in f.oauth.clients.iter().enumerate() {
            let key = format!("oauth.clients[{i}]");
            if c.client_id.is_empty() || c.client_id.len() > 256 {
                return Err(invalid(
                    &format!("{key}.client_id"),
                    "must be 1 to 256 characters",
                ));
            }
            if oauth_clients
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
                (None, Some(var)) => std::env::var(var).map_err(|_| {
                    invalid(
                        &format!("{key}.client_secret_env"),
                        format!("environment variable {var} is not set"),
                    )
                })?,
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
            oauth_clients.push(OAuthClient {
                client_id: c.client_id.clone(),
                client_secret: secret,
            });
        }

        let t = &f.tokens;
        let per_hour = |key: &str, v: u32| {
            std::num::NonZeroU32::new(v).ok_or_else(|| invalid(key, "must be at least 1"))
        };
        let tokens = TokensConfig {
            grace_period: duration_or_zero("tokens.grace_period", &t.grace_period)?,
            revoke_sessions_on_reset: t.revoke_sessions_on_reset,
            reset_per_user_per_hour: per_hour(
                "tokens.reset_per_user_per_hour",
                t.reset_per_user_per_hour,
            )?,
            reset_per_ip_per_hour: per_hour(
                "tokens.reset_per_ip_per_hour",
                t.reset_per_ip_per_hour,
            )?,
            rotation_check_interval: duration(
                "tokens.rotation_check_interval",
                &t.rotation_check_interval,
            )?,
        };
        let mail = mail_config(&f.mail, &resolve)?;
        let l = &f.limits;
        let limits = LimitsConfig {
            login_per_ip: per_hour("limits.login_per_ip", l.login_per_ip)?,
            login_per_ip_period: duration("limits.login_per_ip_period", &l.login_per_ip_period)?,
            login_per_user: per_hour("limits.login_per_user", l.login_per_user)?,
            login_per_user_period: duration(
                "limits.login_per_user_period",
                &l.login_per_user_period,
            )?,
            argon2_per_second: per_hour("limits.argon2_per_second", l.argon2_per_second)?,
            max_keys: bounded("limits.max_keys", l.max_keys, 100, 100_000_000)?,
            housekeeping_interval: duration(
                "limits.housekeeping_interval",
                &l.housekeeping_interval,
            )?,
            failure_delay: match duration_or_zero("limits.failure_delay", &l.failure_delay)? {
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
        };
        let lo = &f.lockout;
        let lockout = LockoutConfig {
            max_failures: lo.max_failures,
            window: duration("lockout.window", &lo.window)?,
            period: match lo.lockout_period.trim() {
                "forever" => None,
                p => Some(duration("lockout.lockout_period", p)?),
            },
        };
        let console = ConsoleConfig {
            session_idle_timeout: duration(
                "console.session_idle_timeout",
                &f.console.session_idle_timeout,
            )?,
            session_lifetime: duration("console.session_lifetime", &f.console.session_lifetime)?,
        };
        if console.session_lifetime < console.session_idle_timeout {
            return Err(invalid(
                "console.session_lifetime",
                "must not be shorter than console.session_idle_timeout",
            ));
        }
        let metrics_listen = match &f.metrics.listen {
            None => None,
            Some(l) => {
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
                Some(addr)
            }
        };
        let h = &f.history;
        let history = HistoryConfig {
            max_age: duration("history.max_age", &h.max_age)?,
            max_rows: bounded("history.max_rows", h.max_rows, 1, 1_000_000_000)?,
            queue: bounded("history.queue", h.queue, 1, 10_000_000)?,
        };

        tracing_subscriber::EnvFilter::try_new(&f.log.level)
            .map_err(|e| invalid("log.level", format!("'{}': {e}", f.log.level)))?;

        Ok(Self {
            server,
            tls,
            upstream,
            store,
            auth,
            oauth_clients,
            tokens,
            mail,
            limits,
            lockout,
            history,
            metrics_listen,
            log_level: f.log.level.clone(),
            allow_synthetic_users: f.loadtest.allow_synthetic_users,
            console,
        })
    }

    /// The https origin clients are told to use: `public_url` or, when unset, the listen
    /// address (with `localhost` for an unspecified address).
    pub fn public_origin(&self, bound: SocketAddr) -> String {
        if let Some(u) = &self.server.public_url {
            return u.clone();
        }
        let host = if bound.ip().is_unspecified() {
            "localhost".to_owned()
        } else if bound.is_ipv6() {
            format!("[{}]", bound.ip())
        } else {
            bound.ip().to_string()
        };
        if bound.port() == 443 {
            format!("https://{host}")
        } else {
            format!("https://{host}:{}", bound.port())
        }
    }
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

fn mail_config(
    m: &file::Mail,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<MailConfig, ConfigError> {
    let security = match m.security.as_str() {
        "none" => SmtpSecurity::None,
        "starttls" => SmtpSecurity::StartTls,
        "tls" => SmtpSecurity::Tls,
        other => {
            return Err(invalid(
                "mail.security",
                format!("'{other}' is not one of none, starttls, tls"),
            ));
        }
    };
    let transport = match m.transport.as_str() {
        "none" => MailTransport::None,
        "file" => {
            let dir = m
                .dir
                .as_deref()
                .ok_or_else(|| invalid("mail.dir", "transport = \"file\" needs a directory"))?;
            MailTransport::File { dir: resolve(dir) }
        }
        "smtp" => {
            if m.host.is_empty() {
                return Err(invalid("mail.host", "must not be empty"));
            }
            let password = match (&m.password, &m.password_env) {
                (Some(p), None) => Some(p.clone()),
                (None, Some(var)) => Some(std::env::var(var).map_err(|_| {
                    invalid(
                        "mail.password_env",
                        format!("environment variable {var} is not set"),
                    )
                })?),
                (None, None) => None,
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "mail.password",
                        "set only one of password and password_env",
                    ));
                }
            };
            let credentials = match (&m.username, password) {
                (Some(u), Some(p)) => Some((u.clone(), p)),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(invalid(
                        "mail.password",
                        "mail.username is set but no password",
                    ));
                }
                (None, Some(_)) => {
                    return Err(invalid(
                        "mail.username",
                        "a password is set but no username",
                    ));
                }
            };
            if credentials.is_some() && security == SmtpSecurity::None {
                return Err(invalid(
                    "mail.security",
                    "credentials would travel in clear text; use starttls or tls",
                ));
            }
            let port = m.port.unwrap_or(match security {
                SmtpSecurity::None => 25,
                SmtpSecurity::StartTls => 587,
                SmtpSecurity::Tls => 465,
            });
            let ca = match &m.ca {
                None => None,
                Some(p) => {
                    let p = resolve(p);
                    if !p.is_file() {
                        return Err(invalid(
                            "mail.ca",
                            format!("file {} does not exist", p.display()),
                        ));
                    }
                    Some(p)
                }
            };
            MailTransport::Smtp {
                host: m.host.clone(),
                port,
                security,
                credentials,
                ca,
            }
        }
        other => {
            return Err(invalid(
                "mail.transport",
                format!("'{other}' is not one of none, smtp, file"),
            ));
        }
    };
    let mailbox = |key: &str, v: &str| {
        v.parse::<lettre::message::Mailbox>()
            .map_err(|e| invalid(key, format!("'{v}' is not an email address ({e})")))
    };
    if m.brand.is_empty() || m.brand.len() > 80 || m.brand.chars().any(char::is_control) {
        return Err(invalid(
            "mail.brand",
            "must be 1 to 80 printable characters",
        ));
    }
    Ok(MailConfig {
        transport,
        timeout: duration("mail.timeout", &m.timeout)?,
        from: mailbox("mail.from", &m.from)?,
        reply_to: m
            .reply_to
            .as_deref()
            .map(|r| mailbox("mail.reply_to", r))
            .transpose()?,
        brand: m.brand.clone(),
        compliance_retry_interval: duration(
            "mail.compliance_retry_interval",
            &m.compliance_retry_interval,
        )?,
    })
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

fn duration_or_zero(key: &str, value: &str) -> Result<Duration, ConfigError> {
    if value.trim() == "0" || value.trim() == "0s" {
        return Ok(Duration::ZERO);
    }
    duration(key, value)
}

fn duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(value).map_err(|e| {
        invalid(
            key,
            format!("'{value}' is not a duration such as 15m or 2h ({e})"),
        )
    })?;
    if d.is_zero() {
        return Err(invalid(key, "must be longer than zero"));
    }
    Ok(d)
}

fn bounded(key: &str, v: usize, min: usize, max: usize) -> Result<usize, ConfigError> {
    if v < min || v > max {
        return Err(invalid(key, format!("{v} is outside {min}..={max}")));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/tokengate/tokengate.toml"))
    }

    #[test]
    fn defaults_are_valid_and_match_the_documented_values() {
        let c = Config::defaults();
        assert_eq!(c.auth.token_length, 24);
        assert_eq!(c.auth.session_idle_timeout, Duration::from_secs(7200));
        assert_eq!(c.auth.argon2.m_cost(), 19_456);
        assert_eq!(c.auth.argon2.t_cost(), 2);
        assert_eq!(c.auth.argon2.p_cost(), 1);
        assert_eq!(c.server.org.id18, "00D000000000001EAA");
    }

    #[test]
    fn unknown_key_names_the_key_and_line() {
        let e = parse("[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("listen_port"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("[server]\nlisten = \"nope\"", "server.listen"),
            ("[server]\norg_id = \"001\"", "server.org_id"),
            ("[server]\npublic_url = \"http://x\"", "server.public_url"),
            (
                "[server]\npublic_url = \"https://my-api.example.com\"",
                "server.public_url",
            ),
            ("[upstream]\nurl = \"ftp://x\"", "upstream.url"),
            (
                "[auth]\nsession_idle_timeout = \"soon\"",
                "auth.session_idle_timeout",
            ),
            ("[auth]\ntoken_length = 3", "auth.token_length"),
            ("[auth]\nargon2_memory_kib = 1", "auth.argon2"),
            (
                "[tls]\ncert = \"/nonexistent.pem\"\nkey = \"/nonexistent.key\"",
                "tls.cert",
            ),
            (
                "[[oauth.clients]]\nclient_id = \"a\"",
                "oauth.clients[0].client_secret",
            ),
            ("[log]\nlevel = \"info,,=[\"", "log.level"),
            ("[mail]\ntransport = \"pigeon\"", "mail.transport"),
            ("[mail]\ntransport = \"file\"", "mail.dir"),
            ("[mail]\nfrom = \"not an address\"", "mail.from"),
            (
                "[mail]\ntransport = \"smtp\"\nsecurity = \"none\"\nusername = \"u\"\npassword = \"p\"",
                "mail.security",
            ),
            (
                "[tokens]\ngrace_period = \"a while\"",
                "tokens.grace_period",
            ),
            (
                "[tokens]\nreset_per_user_per_hour = 0",
                "tokens.reset_per_user_per_hour",
            ),
            (
                "[auth]\ntrusted_networks = [\"10.0.0.0/33\"]",
                "auth.trusted_networks",
            ),
            (
                "[server]\ntrusted_proxies = [\"proxy\"]",
                "server.trusted_proxies",
            ),
            (
                "[lockout]\nlockout_period = \"never\"",
                "lockout.lockout_period",
            ),
            ("[limits]\nlogin_per_user = 0", "limits.login_per_user"),
            ("[history]\nmax_age = \"old\"", "history.max_age"),
            ("[metrics]\nlisten = \"0.0.0.0:9464\"", "metrics.listen"),
            (
                "[server]\ndrain_timeout = \"never\"",
                "server.drain_timeout",
            ),
        ] {
            let msg = parse(text).unwrap_err().to_string();
            assert!(msg.contains(key), "{text:?} gave {msg}");
        }
    }

    #[test]
    fn oauth_client_secret_can_come_from_the_environment() {
        // SAFETY of the test: the variable name is unique to this test.
        let var = "TOKENGATE_TEST_OAUTH_SECRET_4711";
        let missing = parse(&format!(
            "[[oauth.clients]]\nclient_id = \"a\"\nclient_secret_env = \"{var}\""
        ))
        .unwrap_err()
        .to_string();
        assert!(missing.contains(var), "{missing}");
    }

    #[test]
    fn public_url_is_normalised_to_an_origin() {
        let c = parse("[server]\npublic_url = \"https://proxy.example.com:8443/\"").unwrap();
        assert_eq!(
            c.server.public_url.as_deref(),
            Some("https://proxy.example.com:8443")
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let c = parse("[store]\npath = \"data\"").unwrap();
        assert_eq!(c.store.path, Path::new("/etc/tokengate/data"));
    }
}
