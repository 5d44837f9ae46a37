//! Prometheus metrics, names prefixed `tokengate_`, in the OpenMetrics text format
//! (`prometheus-client`). One [`Metrics`] per server: a registry of its own, so two servers in
//! one process (the tests) never count into each other. Labelled counters on the request path
//! are resolved once, at start, and every counter and histogram is kept per thread
//! (`striped`), so recording is one relaxed add to a cache line no other thread writes; gauges are read from their
//! owners at scrape time ([`Gauges`]), and so are the standard `process_*` metrics (CPU
//! seconds, resident memory, open and allowed file descriptors: read from `/proc/self` on
//! Linux, absent elsewhere). No label ever carries a username, password, token or session id:
//! labels are fixed, small sets (dialect, outcome, kind, status class, rotation reason).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::domain::{Dialect, Outcome, TokenReason};

mod striped;

pub use striped::Count;
use striped::{Bank, Durations, NewCount};

/// The exposition's media type (OpenMetrics 1.0, which Prometheus negotiates and reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

const PREFIX: &str = "tokengate";
/// Histogram bucket upper bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
const UPSTREAM_LABELS: [&str; 7] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error", "timeout"];
const MAIL_KINDS: [&str; 2] = ["user", "compliance"];
const ROTATION_REASONS: [TokenReason; 6] = [
    TokenReason::Scheduled,
    TokenReason::AdminRotation,
    TokenReason::Requested,
    TokenReason::PasswordChange,
    TokenReason::AccountCreated,
    TokenReason::IntegrationAdded,
];

/// The `reason` label of a token rotation.
fn rotation_label(r: TokenReason) -> &'static str {
    match r {
        TokenReason::Scheduled => "scheduled",
        TokenReason::AdminRotation => "admin",
        TokenReason::Requested => "self_service",
        TokenReason::PasswordChange => "password_change",
        TokenReason::AccountCreated => "account_created",
        TokenReason::IntegrationAdded => "integration_added",
    }
}

type Labels<const N: usize> = [(&'static str, &'static str); N];

/// Which email a send was.
#[derive(Clone, Copy)]
pub enum MailKind {
    User = 0,
    Compliance = 1,
}

/// One server's counters and histograms.
pub struct Metrics {
    registry: Registry,
    /// `[dialect][outcome]`, in the order of `Dialect::ALL` and `Outcome::ALL`.
    logins: Vec<Vec<Count>>,
    /// Successful logins by the kind of token they presented: default, named.
    token_logins: [Count; 2],
    login_duration: Durations,
    argon2_verifications: Count,
    argon2_rejections: Count,
    failures_undelayed: Count,
    cache_hits: Count,
    cache_misses: Count,
    lockouts: Count,
    /// `[kind]`: sent, failed.
    emails: [(Count, Count); 2],
    upstream: Vec<Count>,
    upstream_duration: Durations,
    tls_handshake_failures: Count,
    /// Records appended to the audit trail by this process (`audit::Audit` holds a clone).
    pub audit_records: Count,
    /// In the order of `ROTATION_REASONS`.
    token_rotations: Vec<Count>,
    certificate_expiry: Gauge,
    /// `[tls] acme` orders: issued, failed.
    acme_orders: [Count; 2],
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Slots in a server's [`Bank`]: every counter, and a histogram's buckets and sum. A test
/// that makes a [`Metrics`] fails if they outgrow it.
const BANK_SLOTS: usize = 128;

/// A family of counters labelled by `L`, in `bank`.
type Counters<L> = Family<L, Count, NewCount>;

fn family<L: Clone + std::hash::Hash + Eq>(bank: &Arc<Bank>) -> Counters<L> {
    Family::new_with_constructor(NewCount(bank.clone()))
}

fn counter(registry: &mut Registry, bank: &Arc<Bank>, name: &str, help: &str) -> Count {
    let c = Count::new(bank);
    registry.register(name, help, c.clone());
    c
}

fn histogram(registry: &mut Registry, bank: &Arc<Bank>, name: &str, help: &str) -> Durations {
    let h = Durations::new(bank, &BUCKETS);
    registry.register_with_unit(name, help, Unit::Seconds, h.clone());
    h
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix(PREFIX);
        let bank = Bank::new(BANK_SLOTS);
        let logins = family::<Labels<2>>(&bank);
        r.register(
            "logins",
            "Login attempts by dialect and outcome",
            logins.clone(),
        );
        let logins = Dialect::ALL
            .iter()
            .map(|d| {
                Outcome::ALL
                    .iter()
                    .map(|o| {
                        logins
                            .get_or_create(&[("dialect", d.as_str()), ("outcome", o.as_str())])
                            .clone()
                    })
                    .collect()
            })
            .collect();
        let kinds = family::<Labels<1>>(&bank);
        r.register(
            "token_logins",
            "Successful logins by the kind of security token presented (never by its name)",
            kinds.clone(),
        );
        let token_logins =
            ["default", "named"].map(|k| kinds.get_or_create(&[("kind", k)]).clone());
        let login_duration = histogram(&mut r, &bank, "login_duration", "Time to verify a login");
        let argon2_verifications = counter(
            &mut r,
            &bank,
            "argon2_verifications",
            "Password verifications run (argon2id)",
        );
        let argon2_rejections = counter(
            &mut r,
            &bank,
            "argon2_rejections",
            "Logins refused because password verification was saturated",
        );
        let failures_undelayed = counter(
            &mut r,
            &bank,
            "failure_delay_overflow",
            "Failed logins answered without the failure delay because max_delayed_failures were waiting",
        );
        let cache_hits = counter(
            &mut r,
            &bank,
            "credential_cache_hits",
            "Logins answered from the verified-credential cache",
        );
        let cache_misses = counter(
            &mut r,
            &bank,
            "credential_cache_misses",
            "Logins verified in full",
        );
        let lockouts = counter(
            &mut r,
            &bank,
            "lockouts",
            "Accounts locked after repeated failed logins",
        );
        let sent = family::<Labels<1>>(&bank);
        let failed = family::<Labels<1>>(&bank);
        r.register(
            "emails_sent",
            "Emails accepted by the SMTP server",
            sent.clone(),
        );
        r.register(
            "emails_failed",
            "Emails that could not be delivered",
            failed.clone(),
        );
        let emails = MAIL_KINDS.map(|k| {
            (
                sent.get_or_create(&[("kind", k)]).clone(),
                failed.get_or_create(&[("kind", k)]).clone(),
            )
        });
        let upstream = family::<Labels<1>>(&bank);
        r.register(
            "upstream_requests",
            "Forwarded requests by upstream status class",
            upstream.clone(),
        );
        let upstream = UPSTREAM_LABELS
            .iter()
            .map(|l| upstream.get_or_create(&[("status", *l)]).clone())
            .collect();
        let upstream_duration = histogram(
            &mut r,
            &bank,
            "upstream_duration",
            "Time to the upstream's response headers",
        );
        let tls_handshake_failures = counter(
            &mut r,
            &bank,
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
        );
        let rotations = family::<Labels<1>>(&bank);
        r.register(
            "token_rotations",
            "Security tokens rotated (the new token emailed and in force), by reason",
            rotations.clone(),
        );
        let token_rotations = ROTATION_REASONS
            .iter()
            .map(|reason| {
                rotations
                    .get_or_create(&[("reason", rotation_label(*reason))])
                    .clone()
            })
            .collect();
        let certificate_expiry = Gauge::default();
        r.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the served TLS certificate expires (its notAfter, Unix time)",
            certificate_expiry.clone(),
        );
        let acme = family::<Labels<1>>(&bank);
        r.register(
            "acme_orders",
            "ACME certificate orders ([tls] acme), by outcome: issued or failed",
            acme.clone(),
        );
        let acme_orders =
            ["issued", "failed"].map(|outcome| acme.get_or_create(&[("outcome", outcome)]).clone());
        let build_info = Family::<Labels<1>, Gauge>::default();
        build_info
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        r.register(
            "build_info",
            "Always 1; the running tokengate's version is its label",
            build_info,
        );
        let audit_records = counter(
            &mut r,
            &bank,
            "audit_records",
            "Records this process appended to the audit trail",
        );
        Self {
            registry: r,
            token_rotations,
            certificate_expiry,
            acme_orders,
            logins,
            token_logins,
            login_duration,
            argon2_verifications,
            argon2_rejections,
            failures_undelayed,
            cache_hits,
            cache_misses,
            lockouts,
            emails,
            upstream,
            upstream_duration,
            tls_handshake_failures,
            audit_records,
        }
    }

    pub fn login(&self, dialect: Dialect, outcome: Outcome, took: Duration) {
        self.login_decided(dialect, outcome);
        self.login_duration.observe(took);
    }

    /// A login decided without the password pipeline (a refresh token, client credentials, a
    /// client's policy): counted, but not in the login-latency histogram, which measures the
    /// verification of a password and token.
    pub fn login_decided(&self, dialect: Dialect, outcome: Outcome) {
        let d = Dialect::ALL.iter().position(|x| *x == dialect).unwrap_or(0);
        let o = Outcome::ALL.iter().position(|x| *x == outcome).unwrap_or(0);
        self.logins[d][o].inc();
    }

    /// A successful login with a token of `kind` ("default" or "named").
    pub fn token_login(&self, kind: &str) {
        match kind {
            "default" => self.token_logins[0].inc(),
            "named" => self.token_logins[1].inc(),
            _ => {}
        }
    }

    pub fn email(&self, kind: MailKind, ok: bool) {
        let (sent, failed) = &self.emails[kind as usize];
        if ok { sent } else { failed }.inc();
    }

    /// `status`: the upstream's status code, or None with `timeout` for failures.
    pub fn upstream(&self, status: Option<u16>, timeout: bool, took: Duration) {
        let i = match status {
            Some(s) => ((s / 100).clamp(1, 5) - 1) as usize,
            None if timeout => 6,
            None => 5,
        };
        self.upstream[i].inc();
        self.upstream_duration.observe(took);
    }

    pub fn argon2_verification(&self) {
        self.argon2_verifications.inc();
    }

    pub fn argon2_rejected(&self) {
        self.argon2_rejections.inc();
    }

    pub fn failure_undelayed(&self) {
        self.failures_undelayed.inc();
    }

    pub fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    pub fn cache_hits(&self) -> u64 {
        self.cache_hits.get()
    }

    pub fn cache_miss(&self) {
        self.cache_misses.inc();
    }

    pub fn lockout(&self) {
        self.lockouts.inc();
    }

    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.inc();
    }

    /// A rotation committed: the new token was accepted by the mail server and is in force.
    pub fn token_rotated(&self, reason: TokenReason) {
        let i = ROTATION_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.token_rotations[i].inc();
    }

    /// The served certificate's notAfter (Unix seconds), at start and at each reload.
    pub fn certificate_expires(&self, not_after: u64) {
        self.certificate_expiry
            .set(i64::try_from(not_after).unwrap_or(i64::MAX));
    }

    /// An ACME order ended: issued (a new certificate is served) or failed.
    pub fn acme_order(&self, issued: bool) {
        self.acme_orders[usize::from(!issued)].inc();
    }

    /// The whole exposition: the counters and histograms, then the gauges read just now.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail; an encoding error would be a bug in a label.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &g.registry());
        let _ = encode_registry(&mut out, &process_registry());
        let _ = encode_eof(&mut out);
        out
    }
}

/// The standard process metrics (the names Prometheus's own clients use, without tokengate's
/// prefix, so the usual dashboards work), read now. A value that cannot be read is left out.
fn process_registry() -> Registry {
    let mut r = Registry::default();
    let Some(p) = process::read() else {
        return r;
    };
    let cpu = Counter::<f64, std::sync::atomic::AtomicU64>::default();
    cpu.inc_by(p.cpu_seconds);
    r.register_with_unit(
        "process_cpu",
        "User and system CPU time spent",
        Unit::Seconds,
        cpu,
    );
    let gauge = |r: &mut Registry, name: &str, help: &str, v: Option<u64>, unit: Option<Unit>| {
        let Some(v) = v else { return };
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        match unit {
            Some(u) => r.register_with_unit(name, help, u, g),
            None => r.register(name, help, g),
        }
    };
    gauge(
        &mut r,
        "process_resident_memory",
        "Resident memory size",
        p.resident_bytes,
        Some(Unit::Bytes),
    );
    gauge(
        &mut r,
        "process_open_fds",
        "Open file descriptors",
        p.open_fds,
        None,
    );
    gauge(
        &mut r,
        "process_max_fds",
        "The limit of open file descriptors",
        p.max_fds,
        None,
    );
    r
}

/// This process's resource use, from `/proc/self` (proc(5)).
mod process {
    pub struct Process {
        pub cpu_seconds: f64,
        pub resident_bytes: Option<u64>,
        pub open_fds: Option<u64>,
        pub max_fds: Option<u64>,
    }

    #[cfg(target_os = "linux")]
    pub fn read() -> Option<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let statm = std::fs::read_to_string("/proc/self/statm").ok();
        let limits = std::fs::read_to_string("/proc/self/limits").ok();
        Some(Process {
            cpu_seconds: cpu_ticks(&stat)? as f64 / ticks,
            resident_bytes: statm
                .as_deref()
                .and_then(resident_pages)
                .map(|pages| pages.saturating_mul(rustix::param::page_size() as u64)),
            // The directory's own descriptor, open while it is read, is not counted.
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| (d.count() as u64).saturating_sub(1)),
            max_fds: limits.as_deref().and_then(max_open_files),
        })
    }

    #[cfg(not(target_os = "linux"))]
    pub fn read() -> Option<Process> {
        None
    }

    /// utime + stime: fields 14 and 15 of `/proc/self/stat`, counted after the command name
    /// (field 2, in parentheses, which may itself hold spaces and parentheses).
    pub fn cpu_ticks(stat: &str) -> Option<u64> {
        let (_, rest) = stat.rsplit_once(')')?;
        let mut fields = rest.split_whitespace().skip(11);
        let utime: u64 = fields.next()?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        Some(utime + stime)
    }

    /// The second field of `/proc/self/statm`: resident pages.
    pub fn resident_pages(statm: &str) -> Option<u64> {
        statm.split_whitespace().nth(1)?.parse().ok()
    }

    /// The soft limit on the "Max open files" line of `/proc/self/limits`.
    pub fn max_open_files(limits: &str) -> Option<u64> {
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line["Max open files".len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
}

/// Values owned elsewhere, read at scrape time.
pub struct Gauges {
    pub argon2_queue_depth: u64,
    pub active_sessions: u64,
    pub limiter_keys_ip: u64,
    pub limiter_keys_user: u64,
    pub history_dropped: u64,
    pub compliance_queue: u64,
}

impl Gauges {
    fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix(PREFIX);
        let gauge = |r: &mut Registry, name: &str, help: &str, v: u64| {
            let g = Gauge::<i64>::default();
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
            r.register(name, help, g);
        };
        gauge(
            &mut r,
            "argon2_queue_depth",
            "Logins waiting for or running a password verification",
            self.argon2_queue_depth,
        );
        gauge(
            &mut r,
            "active_sessions",
            "Live API sessions",
            self.active_sessions,
        );
        let keys = Family::<Labels<1>, Gauge>::default();
        keys.get_or_create(&[("limiter", "ip")])
            .set(i64::try_from(self.limiter_keys_ip).unwrap_or(i64::MAX));
        keys.get_or_create(&[("limiter", "user")])
            .set(i64::try_from(self.limiter_keys_user).unwrap_or(i64::MAX));
        r.register("limiter_keys", "Keys held by the login rate limiters", keys);
        gauge(
            &mut r,
            "compliance_queue",
            "Compliance copies waiting for a retry",
            self.compliance_queue,
        );
        // A count its owner keeps: exposed as a counter, as it only grows.
        let dropped: Counter = Counter::default();
        dropped.inc_by(self.history_dropped);
        r.register(
            "history_dropped",
            "Login history rows dropped because the queue was full",
            dropped,
        );
        r
    }
}

#[cfg(test)]
mod tests;
