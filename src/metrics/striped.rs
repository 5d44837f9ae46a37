//! Counters kept per thread and summed when scraped.
//!
//! A counter that every worker thread adds to moves its cache line from core to core on each
//! add, and a prometheus-client histogram also takes a lock per observation; on the forwarded
//! call's path (an upstream counter and histogram per call, a login counter, histogram and
//! cache counter per Basic call) that cost showed in the CPU per request (BENCHMARKS.md).
//! Here each thread adds to a stripe of its own ([`STRIPES`], handed out round robin as
//! threads first count), every stripe on cache lines of its own, and a scrape sums the
//! stripes. The exposition is still prometheus-client's: [`Count`] and [`Durations`]
//! implement its `EncodeMetric`, and a scrape reads the same text as before.
//!
//! Reads are not a snapshot: a scrape that races an observation may see its bucket without
//! its sum. Each counter is exact once the adds have landed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::family::MetricConstructor;
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Stripes per bank: more than the worker threads of most machines; threads beyond share.
const STRIPES: usize = 16;
/// Counters per [`Line`]: 128 bytes, the two cache lines that adjacent-line prefetching
/// moves together.
const PER_LINE: usize = 16;

#[repr(align(128))]
struct Line([AtomicU64; PER_LINE]);

/// Room for a fixed number of counters, in every stripe.
pub struct Bank {
    lines: Box<[Line]>,
    /// Lines per stripe.
    per_stripe: usize,
    /// The next slot not yet taken.
    next: AtomicUsize,
}

impl Bank {
    /// A bank for up to `capacity` counters (rounded up to a whole line).
    pub fn new(capacity: usize) -> Arc<Self> {
        let per_stripe = capacity.div_ceil(PER_LINE);
        let lines = (0..STRIPES * per_stripe)
            .map(|_| Line(std::array::from_fn(|_| AtomicU64::new(0))))
            .collect();
        Arc::new(Self {
            lines,
            per_stripe,
            next: AtomicUsize::new(0),
        })
    }

    /// `n` consecutive slots, for good.
    fn take(&self, n: usize) -> usize {
        let first = self.next.fetch_add(n, Ordering::Relaxed);
        // A fixed set of metrics is made at start: a test that makes them finds this.
        assert!(
            first + n <= self.per_stripe * PER_LINE,
            "the metrics bank is full: raise its capacity"
        );
        first
    }

    fn cell(&self, stripe: usize, slot: usize) -> &AtomicU64 {
        &self.lines[stripe * self.per_stripe + slot / PER_LINE].0[slot % PER_LINE]
    }

    fn add(&self, slot: usize, v: u64) {
        self.cell(stripe(), slot).fetch_add(v, Ordering::Relaxed);
    }

    fn total(&self, slot: usize) -> u64 {
        (0..STRIPES)
            .map(|s| self.cell(s, slot).load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// This thread's stripe.
fn stripe() -> usize {
    crate::stripe::of_thread() % STRIPES
}

/// A counter (an OpenMetrics counter, `_total`).
#[derive(Clone)]
pub struct Count {
    bank: Arc<Bank>,
    slot: usize,
}

impl Count {
    pub fn new(bank: &Arc<Bank>) -> Self {
        Self {
            bank: bank.clone(),
            slot: bank.take(1),
        }
    }

    pub fn inc(&self) {
        self.bank.add(self.slot, 1);
    }

    pub fn get(&self) -> u64 {
        self.bank.total(self.slot)
    }
}

/// A counter of no registry's (a one-off command that records without exposing).
impl Default for Count {
    fn default() -> Self {
        Self::new(&Bank::new(1))
    }
}

impl std::fmt::Debug for Count {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Count").field(&self.get()).finish()
    }
}

impl TypedMetric for Count {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Count {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Makes the counters of a labelled family in one bank.
#[derive(Clone)]
pub struct NewCount(pub Arc<Bank>);

impl MetricConstructor<Count> for NewCount {
    fn new_metric(&self) -> Count {
        Count::new(&self.0)
    }
}

/// A histogram of durations, in seconds: one counter per bucket (`bounds`, then +Inf) and
/// their sum in microseconds (a sum in nanoseconds would wrap after 584 years of observed
/// time, which a busy server with long calls reaches in months).
#[derive(Clone)]
pub struct Durations {
    bank: Arc<Bank>,
    first: usize,
    bounds: &'static [f64],
}

impl Durations {
    pub fn new(bank: &Arc<Bank>, bounds: &'static [f64]) -> Self {
        Self {
            bank: bank.clone(),
            first: bank.take(bounds.len() + 2),
            bounds,
        }
    }

    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        // The first bucket whose upper bound holds it (OpenMetrics buckets are `le`).
        let bucket = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.bank.add(self.first + bucket, 1);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.bank.add(self.sum_slot(), micros);
    }

    fn sum_slot(&self) -> usize {
        self.first + self.bounds.len() + 1
    }
}

impl std::fmt::Debug for Durations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durations").finish_non_exhaustive()
    }
}

impl TypedMetric for Durations {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Durations {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // Per bucket, not cumulative: the encoder adds them up.
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .enumerate()
            .map(|(i, upper)| (upper, self.bank.total(self.first + i)))
            .collect();
        let count = buckets
            .iter()
            .map(|(_, n)| n)
            .fold(0u64, |a, n| a.wrapping_add(*n));
        let sum = self.bank.total(self.sum_slot()) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_from_many_threads_are_all_counted() {
        let bank = Bank::new(4);
        let c = Count::new(&bank);
        let other = Count::new(&bank);
        std::thread::scope(|s| {
            for _ in 0..(STRIPES + 3) {
                s.spawn(|| (0..1000).for_each(|_| c.inc()));
            }
        });
        assert_eq!(c.get(), (STRIPES as u64 + 3) * 1000);
        assert_eq!(other.get(), 0);
    }

    #[test]
    #[should_panic(expected = "the metrics bank is full")]
    fn a_full_bank_says_so() {
        let bank = Bank::new(PER_LINE);
        let _ = Durations::new(&bank, &[1.0; PER_LINE]);
    }
}
