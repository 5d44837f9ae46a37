//! Prometheus metrics (text exposition format 0.0.4), names prefixed `tokengate_`. Counters are
//! process-wide atomics, so recording costs one relaxed add on the hot path; gauges are read
//! from their owners at scrape time. No label ever carries a username, password, token or
//! session id: labels are fixed, small sets (dialect, outcome, kind, status class).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::auth::Dialect;
use crate::history::Outcome;

const DIALECTS: [Dialect; 4] = [
    Dialect::Soap,
    Dialect::OAuth,
    Dialect::Basic,
    Dialect::Console,
];
/// Histogram bucket upper bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A fixed-bucket latency histogram.
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len()],
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| s <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Which email a send was.
#[derive(Clone, Copy)]
pub enum MailKind {
    User,
    Compliance,
}

pub struct Metrics {
    logins: [[AtomicU64; Outcome::ALL.len()]; DIALECTS.len()],
    pub login_duration: Histogram,
    pub argon2_rejections: AtomicU64,
    pub failures_undelayed: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub lockouts: AtomicU64,
    emails_sent: [AtomicU64; 2],
    emails_failed: [AtomicU64; 2],
    /// 1xx..5xx, transport error, timeout.
    upstream: [AtomicU64; 7],
    pub upstream_duration: Histogram,
    pub tls_handshake_failures: AtomicU64,
}

pub static METRICS: Metrics = Metrics {
    logins: [const { [const { AtomicU64::new(0) }; Outcome::ALL.len()] }; DIALECTS.len()],
    login_duration: Histogram::new(),
    argon2_rejections: AtomicU64::new(0),
    failures_undelayed: AtomicU64::new(0),
    cache_hits: AtomicU64::new(0),
    cache_misses: AtomicU64::new(0),
    lockouts: AtomicU64::new(0),
    emails_sent: [const { AtomicU64::new(0) }; 2],
    emails_failed: [const { AtomicU64::new(0) }; 2],
    upstream: [const { AtomicU64::new(0) }; 7],
    upstream_duration: Histogram::new(),
    tls_handshake_failures: AtomicU64::new(0),
};

const UPSTREAM_LABELS: [&str; 7] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error", "timeout"];

impl Metrics {
    pub fn login(&self, dialect: Dialect, outcome: Outcome, took: Duration) {
        let d = DIALECTS.iter().position(|x| *x == dialect).unwrap_or(0);
        let o = Outcome::ALL.iter().position(|x| *x == outcome).unwrap_or(0);
        self.logins[d][o].fetch_add(1, Ordering::Relaxed);
        self.login_duration.observe(took);
    }

    pub fn email(&self, kind: MailKind, ok: bool) {
        let k = kind as usize;
        let c = if ok {
            &self.emails_sent[k]
        } else {
            &self.emails_failed[k]
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// `status`: the upstream's status code, or None with `timeout` for failures.
    pub fn upstream(&self, status: Option<u16>, timeout: bool, took: Duration) {
        let i = match status {
            Some(s) => ((s / 100).clamp(1, 5) - 1) as usize,
            None if timeout => 6,
            None => 5,
        };
        self.upstream[i].fetch_add(1, Ordering::Relaxed);
        self.upstream_duration.observe(took);
    }

    pub fn login_count(&self, dialect: Dialect, outcome: Outcome) -> u64 {
        let d = DIALECTS.iter().position(|x| *x == dialect).unwrap_or(0);
        let o = Outcome::ALL.iter().position(|x| *x == outcome).unwrap_or(0);
        self.logins[d][o].load(Ordering::Relaxed)
    }
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
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

/// The whole exposition.
pub fn render(g: &Gauges) -> String {
    let m = &METRICS;
    let mut out = String::with_capacity(8 * 1024);
    let _ = writeln!(
        out,
        "# HELP tokengate_logins_total Login attempts by dialect and outcome.\n# TYPE tokengate_logins_total counter"
    );
    for (d, dialect) in DIALECTS.iter().enumerate() {
        for (o, outcome) in Outcome::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "tokengate_logins_total{{dialect=\"{}\",outcome=\"{}\"}} {}",
                dialect.as_str(),
                outcome.as_str(),
                m.logins[d][o].load(Ordering::Relaxed)
            );
        }
    }
    m.login_duration.render(
        &mut out,
        "tokengate_login_duration_seconds",
        "Time to verify a login.",
    );
    gauge(
        &mut out,
        "tokengate_argon2_queue_depth",
        "Logins waiting for or running a password verification.",
        g.argon2_queue_depth,
    );
    counter(
        &mut out,
        "tokengate_argon2_rejections_total",
        "Logins refused because password verification was saturated.",
        m.argon2_rejections.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "tokengate_failure_delay_overflow_total",
        "Failed logins answered without the failure delay because max_delayed_failures were waiting.",
        m.failures_undelayed.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "tokengate_credential_cache_hits_total",
        "Logins answered from the verified-credential cache.",
        m.cache_hits.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "tokengate_credential_cache_misses_total",
        "Logins verified in full.",
        m.cache_misses.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "tokengate_active_sessions",
        "Live API sessions.",
        g.active_sessions,
    );
    let _ = writeln!(
        out,
        "# HELP tokengate_limiter_keys Keys held by the login rate limiters.\n# TYPE tokengate_limiter_keys gauge\ntokengate_limiter_keys{{limiter=\"ip\"}} {}\ntokengate_limiter_keys{{limiter=\"user\"}} {}",
        g.limiter_keys_ip, g.limiter_keys_user
    );
    counter(
        &mut out,
        "tokengate_lockouts_total",
        "Accounts locked after repeated failed logins.",
        m.lockouts.load(Ordering::Relaxed),
    );
    for (name, help, arr) in [
        (
            "tokengate_emails_sent_total",
            "Emails accepted by the SMTP server.",
            &m.emails_sent,
        ),
        (
            "tokengate_emails_failed_total",
            "Emails that could not be delivered.",
            &m.emails_failed,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (i, kind) in ["user", "compliance"].iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}{{kind=\"{kind}\"}} {}",
                arr[i].load(Ordering::Relaxed)
            );
        }
    }
    gauge(
        &mut out,
        "tokengate_compliance_queue",
        "Compliance copies waiting for a retry.",
        g.compliance_queue,
    );
    let _ = writeln!(
        out,
        "# HELP tokengate_upstream_requests_total Forwarded requests by upstream status class.\n# TYPE tokengate_upstream_requests_total counter"
    );
    for (i, l) in UPSTREAM_LABELS.iter().enumerate() {
        let _ = writeln!(
            out,
            "tokengate_upstream_requests_total{{status=\"{l}\"}} {}",
            m.upstream[i].load(Ordering::Relaxed)
        );
    }
    m.upstream_duration.render(
        &mut out,
        "tokengate_upstream_duration_seconds",
        "Time to the upstream's response headers.",
    );
    counter(
        &mut out,
        "tokengate_tls_handshake_failures_total",
        "TLS handshakes that failed or timed out.",
        m.tls_handshake_failures.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "tokengate_history_dropped_total",
        "Login history rows dropped because the queue was full.",
        g.history_dropped,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_the_exposition_names_every_metric() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.0005\"} 1"));
        assert!(out.contains("x_bucket{le=\"0.005\"} 2"));
        assert!(out.contains("x_bucket{le=\"+Inf\"} 2"));
        assert!(out.contains("x_count 2"));
        let text = render(&Gauges {
            argon2_queue_depth: 0,
            active_sessions: 3,
            limiter_keys_ip: 1,
            limiter_keys_user: 2,
            history_dropped: 0,
            compliance_queue: 0,
        });
        for name in [
            "tokengate_logins_total{dialect=\"soap\",outcome=\"success\"}",
            "tokengate_active_sessions 3",
            "tokengate_limiter_keys{limiter=\"user\"} 2",
            "tokengate_emails_sent_total{kind=\"compliance\"}",
            "tokengate_upstream_requests_total{status=\"5xx\"}",
            "tokengate_tls_handshake_failures_total",
        ] {
            assert!(text.contains(name), "{name}");
        }
    }
}
