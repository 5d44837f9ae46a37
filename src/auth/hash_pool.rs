//! Admission control for argon2 ([`HashPool`]): a bounded number of verifications on the
//! blocking pool, a bounded queue before them, and a bounded wait in it; a caller that finds
//! the queue full, or waits too long, is answered busy rather than held.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::AuthError;
use crate::metrics::Metrics;

/// Admission control for argon2: at most `permits` verifications run at once on the blocking
/// pool, at most `queue` wait, and none waits longer than `queue_timeout`.
pub struct HashPool {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    /// Permits plus queue places: the most callers admitted at once.
    admitted: usize,
    queue_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl HashPool {
    pub fn new(
        permits: usize,
        queue: usize,
        queue_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(permits)),
            waiting: AtomicUsize::new(0),
            admitted: permits + queue,
            queue_timeout,
            metrics,
        }
    }

    /// Number of callers waiting for or holding a permit.
    pub fn depth(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.admitted {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.metrics.argon2_rejected();
            return Err(AuthError::Busy);
        }
        // Given back when this future ends, also when it is dropped mid-wait (the client went
        // away): hyper drops a request's future when its connection closes.
        let _place = Place(&self.waiting);
        let acquired =
            tokio::time::timeout(self.queue_timeout, self.permits.clone().acquire_owned()).await;
        let result = match acquired {
            Ok(Ok(permit)) => {
                self.metrics.argon2_verification();
                tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    work()
                })
                .await
                .map_err(|_| AuthError::Busy)
            }
            _ => Err(AuthError::Busy),
        };
        if matches!(result, Err(AuthError::Busy)) {
            self.metrics.argon2_rejected();
        }
        result
    }
}

/// A counted place, given back on drop.
struct Place<'a>(&'a AtomicUsize);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
