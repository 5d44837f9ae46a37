//! Configuration: the validated runtime [`Config`] the rest of the program reads, its errors,
//! and [`Config::load`] / [`Config::from_toml`] (in `load`), which read a file through the
//! TOML format of [`file`] and the checks of `validate`.
//!
//! The two shapes are kept apart on purpose: the file is what an operator writes (strings,
//! optional keys, human durations), the runtime config is what code wants (socket addresses,
//! `Duration`s, resolved secrets). Every error names the key and the problem in one line, so a
//! bad file stops the start with a message an operator can act on.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;

pub use crate::ids::OrgId;

pub mod file;
mod load;
mod validate;

#[cfg(test)]
mod tests;

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

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: TlsConfig,
    pub upstream: UpstreamConfig,
    pub store: StoreConfig,
    pub auth: AuthConfig,
    pub oauth_clients: Vec<OAuthClient>,
    /// `[oauth] max_refresh_families_per_user`.
    pub refresh_families_per_user: usize,
    pub tokens: TokensConfig,
    pub mail: MailConfig,
    pub limits: LimitsConfig,
    pub lockout: LockoutConfig,
    pub history: HistoryConfig,
    /// The Prometheus listener, if on (always a loopback address).
    pub metrics_listen: Option<SocketAddr>,
    pub log_level: String,
    /// `[log] access`: one access-log line per request (`server::access`).
    pub log_access: bool,
    /// `[loadtest] allow_synthetic_users`: the admin API may create load-test users.
    pub allow_synthetic_users: bool,
    pub console: ConsoleConfig,
}

/// `[console]`: how long a console sign-in lasts, who needs a second factor, and where the
/// console listens.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    pub session_idle_timeout: Duration,
    pub session_lifetime: Duration,
    pub mfa: MfaPolicy,
    /// The console's and the admin API's own listener (same certificate), if set.
    pub listen: Option<SocketAddr>,
    /// The zone the console's times are shown in (the server cannot know a browser's, and
    /// the console runs no script to ask).
    pub time_zone: jiff::tz::TimeZone,
}

/// `[server] workers`: how the public listener's connections are spread over threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One work-stealing runtime for everything (the default): a busy or descheduled thread's
    /// connections are taken over by another, so a slow call (a database read, a stalled
    /// thread) holds up nobody else.
    Shared,
    /// One listening socket (`SO_REUSEPORT`) and one single-threaded event loop per core, each
    /// serving the connections it accepted, as nginx's workers do: no hand-over between
    /// threads, so less CPU per request, but a thread that blocks or is descheduled holds up
    /// every connection it owns.
    PerCore,
}

impl Workers {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "shared" => Some(Self::Shared),
            "per-core" => Some(Self::PerCore),
            _ => None,
        }
    }
}

/// `[console] mfa`: which users must present a second factor to sign in to the console
/// (`mfa::Policy`, which decides whom it covers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MfaPolicy {
    Off,
    Admins,
    All,
}

impl MfaPolicy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "off" => Some(Self::Off),
            "admins" => Some(Self::Admins),
            "all" => Some(Self::All),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Admins => "admins",
            Self::All => "all",
        }
    }
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
    /// Audit trail retention (pruned on the same pass as the login history).
    pub audit_max_age: Duration,
}

#[derive(Debug, Clone)]
pub struct TokensConfig {
    /// How long a superseded token keeps working after a rotation (zero: not at all).
    pub grace_period: Duration,
    pub revoke_sessions_on_reset: bool,
    pub reset_per_user_per_hour: std::num::NonZeroU32,
    pub reset_per_ip_per_hour: std::num::NonZeroU32,
    pub rotation_check_interval: Duration,
    /// Named tokens a user may hold besides the default one (0..=100; 0: none).
    pub max_named_per_user: usize,
    /// A password change keeps the named tokens (otherwise it resets and emails each).
    pub keep_named_tokens_on_password_change: bool,
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
    pub workers: Workers,
}

#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Set: the certificate comes from an ACME CA (`cert`/`key` are then unset).
    pub acme: Option<AcmeConfig>,
}

/// The validated `[tls] acme` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// Lower-case DNS names, at least one, no wildcard (TLS-ALPN-01 cannot prove one,
    /// RFC 8737 §3).
    pub domains: Vec<String>,
    pub contact: Option<String>,
    /// The directory URL (https).
    pub directory: String,
    pub ca_roots: Option<PathBuf>,
    /// How long one order may run past its due time before the ACME client is rebuilt.
    pub order_timeout: Duration,
    pub cache: PathBuf,
}

/// `tls.acme.order_timeout`'s default: an order takes seconds; minutes mean the CA stalled.
pub const ACME_ORDER_TIMEOUT: Duration = Duration::from_secs(300);

/// Let's Encrypt's directories, for `directory = "production"` (the default) and `"staging"`.
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

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
    /// `public_paths`: forwarded without authentication or identity.
    pub public_paths: PublicPaths,
}

/// `[upstream] public_paths`, validated: paths of the upstream anyone may call, forwarded
/// without authentication and without identity headers. An entry is an exact path, or a
/// prefix when written with a trailing `*`. They are matched against the path the router
/// uses (`server::target`: no dot segments or encoded separators, slashes collapsed), so what
/// matches here is what the upstream is asked for.
#[derive(Debug, Clone, Default)]
pub struct PublicPaths {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl PublicPaths {
    pub fn new(exact: Vec<String>, prefixes: Vec<String>) -> Self {
        Self { exact, prefixes }
    }

    /// Whether nothing is public (the default): the forwarding path then asks nothing more.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    /// Whether `path` (canonical, as routed) is public.
    pub fn matches(&self, path: &str) -> bool {
        self.exact.iter().any(|e| e == path) || self.prefixes.iter().any(|p| path.starts_with(p))
    }
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The data directory: the database (sled), the generated certificate and the admin
    /// socket.
    pub path: PathBuf,
    pub cache_capacity_bytes: u64,
    pub backend: Backend,
}

/// Where the records live.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The embedded sled database in the data directory (one process).
    Sled,
    /// A PostgreSQL database shared by any number of replicas.
    Postgres(Box<PostgresConfig>),
}

impl Backend {
    /// The bound on a call to the database (`[store] timeout`); sled's reads are local.
    pub fn timeout(&self) -> Option<Duration> {
        match self {
            Backend::Sled => None,
            Backend::Postgres(p) => Some(p.timeout),
        }
    }
}

/// `[store] backend = "postgres"`.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// Connection parameters (its `Debug` redacts the password).
    pub connect: tokio_postgres::Config,
    pub tls: PgTls,
    pub ca: Option<PathBuf>,
    pub pool_size: usize,
    /// Bounds every database call.
    pub timeout: Duration,
    /// How long a replica trusts its caches without hearing the change channel.
    pub max_staleness: Duration,
}

/// The URL's `sslmode`, as libpq reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgTls {
    /// `disable`: plain TCP (a loopback or private network).
    Disable,
    /// `require`: encrypted, the server's certificate not checked.
    Require,
    /// `verify-full`: encrypted, the certificate checked against the CA and the host name.
    VerifyFull,
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

/// A registered OAuth client (`[[oauth.clients]]`) with its policy resolved: the global
/// defaults filled in, usernames canonical.
#[derive(Clone)]
pub struct OAuthClient {
    pub client_id: String,
    pub client_secret: String,
    /// The password grant's answer carries a refresh token (RFC 6749 §6).
    pub refresh_tokens: bool,
    /// A refresh token family ends this long after its login ...
    pub refresh_token_lifetime: Duration,
    /// ... and this long after its last use.
    pub refresh_token_idle: Duration,
    /// The canonical username the client_credentials grant acts as.
    pub run_as: Option<String>,
    pub allow_interactive_run_as: bool,
    /// Canonical usernames; `None`: every user.
    pub permitted_users: Option<Vec<String>>,
    /// Logins through this client ignore the user's login ranges (Salesforce's "Relax IP
    /// restrictions"); the token is still required outside trusted networks.
    pub relax_ip: bool,
    /// Idle timeout of this client's sessions; `None`: `[auth] session_idle_timeout`.
    pub session_idle_timeout: Option<Duration>,
}

impl OAuthClient {
    /// A client with the default policy: the password grant only, for every user.
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        let d = file::OAuth::default();
        Self {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            refresh_tokens: false,
            refresh_token_lifetime: d.refresh_token_lifetime,
            refresh_token_idle: d.refresh_token_idle,
            run_as: None,
            allow_interactive_run_as: false,
            permitted_users: None,
            relax_ip: false,
            session_idle_timeout: None,
        }
    }

    /// Whether `canonical_username` may log in through this client.
    pub fn permits(&self, canonical_username: &str) -> bool {
        self.permitted_users
            .as_ref()
            .is_none_or(|users| users.iter().any(|u| u == canonical_username))
    }
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("refresh_tokens", &self.refresh_tokens)
            .field("run_as", &self.run_as)
            .field("permitted_users", &self.permitted_users)
            .field("relax_ip", &self.relax_ip)
            .finish_non_exhaustive()
    }
}

impl Config {
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
