//! A number for each thread, for state kept in stripes so that threads write to cache lines
//! of their own: a line that two cores both write moves between them at every write, which on
//! the forwarding path costs as much as real work. Used by the metrics
//! (`metrics::striped`) and the upstream pool's idle lists (`proxy::pool`).

use std::sync::atomic::{AtomicUsize, Ordering};

/// This thread's number: 0, 1, 2 … in the order threads first ask; a caller takes it modulo
/// its number of stripes (two threads may then share one, which costs speed, not
/// correctness).
pub fn of_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    MINE.with(|n| *n)
}
