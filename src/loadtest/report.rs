//! What a load run measured: HDR histograms of latency (overall, and per second for the chart),
//! status and error counts, and their rendering as text and JSON. The SVG chart is drawn in
//! `chart` and re-exported here, where callers have always found it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

pub use super::chart::svg_chart;

/// One worker's (or a merged group's) measurements.
pub struct Recorder {
    overall: Histogram<u64>,
    per_second: Vec<Histogram<u64>>,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
}

/// Distinct error messages kept per recorder (the rest are counted as "other").
const MAX_ERROR_KINDS: usize = 32;

impl Recorder {
    pub fn new(seconds: usize) -> Self {
        Self {
            overall: Histogram::new(3).expect("valid precision"),
            per_second: (0..seconds)
                .map(|_| Histogram::new(2).expect("valid precision"))
                .collect(),
            statuses: BTreeMap::new(),
            errors: BTreeMap::new(),
        }
    }

    pub fn record(&mut self, second: usize, latency: Duration, status: u16) {
        let us = (latency.as_micros() as u64).max(1);
        let _ = self.overall.record(us);
        if let Some(h) = self.per_second.get_mut(second) {
            let _ = h.record(us);
        }
        *self.statuses.entry(status).or_default() += 1;
    }

    pub fn error(&mut self, kind: &str) {
        let key = if self.errors.len() < MAX_ERROR_KINDS || self.errors.contains_key(kind) {
            kind.to_owned()
        } else {
            "other".to_owned()
        };
        *self.errors.entry(key).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.overall.add(&other.overall);
        for (a, b) in self.per_second.iter_mut().zip(&other.per_second) {
            let _ = a.add(b);
        }
        for (k, v) in &other.statuses {
            *self.statuses.entry(*k).or_default() += v;
        }
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }

    pub fn summary(&self, elapsed: Duration) -> Summary {
        let h = &self.overall;
        let secs = elapsed.as_secs_f64().max(0.001);
        let q = |p: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(p)
            }
        };
        Summary {
            requests: h.len(),
            duration_s: secs,
            rps: h.len() as f64 / secs,
            statuses: self
                .statuses
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            errors: self.errors.clone(),
            latency_us: Latency {
                p50: q(0.50),
                p90: q(0.90),
                p99: q(0.99),
                p999: q(0.999),
                max: if h.is_empty() { 0 } else { h.max() },
            },
            per_second: self
                .per_second
                .iter()
                .enumerate()
                .filter(|(i, _)| (*i as f64) < secs)
                .map(|(i, s)| Second {
                    t: i as u64,
                    requests: s.len(),
                    p50_us: if s.is_empty() {
                        0
                    } else {
                        s.value_at_quantile(0.5)
                    },
                    p99_us: if s.is_empty() {
                        0
                    } else {
                        s.value_at_quantile(0.99)
                    },
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub t: u64,
    pub requests: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub requests: u64,
    pub duration_s: f64,
    pub rps: f64,
    pub statuses: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub latency_us: Latency,
    pub per_second: Vec<Second>,
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

impl Summary {
    pub fn text(&self, name: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{name}: {} requests in {:.1} s = {:.0} requests/s",
            self.requests, self.duration_s, self.rps
        );
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(
            out,
            "  status   {}",
            if statuses.is_empty() {
                "-".into()
            } else {
                statuses.join(", ")
            }
        );
        let errors: Vec<String> = self
            .errors
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(
            out,
            "  errors   {}",
            if errors.is_empty() {
                "none".into()
            } else {
                errors.join(", ")
            }
        );
        let l = &self.latency_us;
        let _ = writeln!(
            out,
            "  latency  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_report_percentiles_statuses_and_errors() {
        let mut a = Recorder::new(3);
        for i in 1..=1000u64 {
            a.record((i % 3) as usize, Duration::from_micros(i), 200);
        }
        a.record(0, Duration::from_micros(5), 401);
        a.error("timeout");
        let mut b = Recorder::new(3);
        b.merge(&a);
        let s = b.summary(Duration::from_secs(2));
        assert_eq!(s.requests, 1001);
        assert_eq!(s.statuses["200"], 1000);
        assert_eq!(s.statuses["401"], 1);
        assert_eq!(s.errors["timeout"], 1);
        assert!(
            (495..=505).contains(&s.latency_us.p50),
            "{}",
            s.latency_us.p50
        );
        assert!(s.latency_us.max >= 1000);
        assert_eq!(s.per_second.len(), 2);
        let svg = svg_chart("t", &[("basic".into(), s.clone())]);
        assert!(svg.starts_with("<svg") && svg.contains("polyline"));
        assert!(s.text("basic").contains("p99.9"));
    }
}
