//! A connection's heap slot for its request futures, kept from one request to the next.
//!
//! hyper keeps the future a service returns in a box of its own per connection, and moves each
//! request's future into it. The request's future is a few KiB (its largest branch, see
//! `routes`), and every wrapper between `routes::handle` and hyper's box would copy it once
//! more, so it is boxed where it is made and hyper moves only the box. A box per request was
//! an allocation and a free of a few KiB each time; [`Reuse`] keeps the last finished request's
//! box for the next one instead. It holds at most one spare: an HTTP/2 connection's concurrent
//! streams take fresh boxes, and a box handed back while a spare is kept is freed.
//!
//! What a connection keeps between requests is then one empty box of the request future's
//! size, beside the larger read and write buffers hyper and rustls already keep.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

/// One connection's spare box for futures of type `F`.
pub struct Reuse<F> {
    spare: Mutex<Option<Pin<Box<Option<F>>>>>,
}

impl<F: Future> Reuse<F> {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            spare: Mutex::new(None),
        })
    }

    /// `future`, in the spare box if there is one, in a new one otherwise. The box comes back
    /// when the future finishes or is dropped.
    pub fn hold(self: &Arc<Self>, future: F) -> Held<F> {
        let spare = self
            .spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let slot = match spare {
            Some(mut slot) => {
                slot.as_mut().set(Some(future));
                slot
            }
            None => Box::pin(Some(future)),
        };
        Held {
            slot: Some(slot),
            home: self.clone(),
        }
    }

    fn give_back(&self, mut slot: Pin<Box<Option<F>>>) {
        // Dropped here, before the lock, whatever the future still held.
        slot.as_mut().set(None);
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        if spare.is_none() {
            *spare = Some(slot);
        }
    }
}

/// A future in a box that goes back to its connection's [`Reuse`] when it is done.
pub struct Held<F: Future> {
    /// `None` once the box has gone back.
    slot: Option<Pin<Box<Option<F>>>>,
    home: Arc<Reuse<F>>,
}

impl<F: Future> Future for Held<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // `Held` is `Unpin` (a box and an `Arc`); the future inside stays where the box put it.
        let this = self.get_mut();
        let slot = this.slot.as_mut().expect("polled after it finished");
        let future = slot
            .as_mut()
            .as_pin_mut()
            .expect("a held future is in its box");
        let out = std::task::ready!(future.poll(cx));
        if let Some(slot) = this.slot.take() {
            this.home.give_back(slot);
        }
        Poll::Ready(out)
    }
}

impl<F: Future> Drop for Held<F> {
    fn drop(&mut self) {
        // A request dropped before it finished (its client went away): its box is reused too.
        if let Some(slot) = self.slot.take() {
            self.home.give_back(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A future that counts its drops and finishes on its second poll with its number.
    struct Counted {
        n: usize,
        polls: usize,
        drops: Arc<AtomicUsize>,
    }

    impl Future for Counted {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.polls < 2 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(self.n)
        }
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn address(reuse: &Reuse<Counted>) -> Option<*const Option<Counted>> {
        let spare = reuse.spare.lock().unwrap();
        spare.as_ref().map(|b| &**b as *const Option<Counted>)
    }

    #[tokio::test]
    async fn a_finished_or_dropped_future_leaves_its_box_for_the_next_and_is_dropped_itself() {
        let drops = Arc::new(AtomicUsize::new(0));
        let counted = |n| Counted {
            n,
            polls: 0,
            drops: drops.clone(),
        };
        let reuse = Reuse::new();
        assert_eq!(address(&reuse), None);

        // Finished: its output comes out, the future is dropped and the box kept.
        assert_eq!(reuse.hold(counted(1)).await, 1);
        assert_eq!(drops.load(Ordering::Relaxed), 1);
        let first = address(&reuse).expect("the box is kept");

        // The next request gets the same box, and leaves it again.
        let held = reuse.hold(counted(2));
        assert_eq!(address(&reuse), None, "the spare is in use");
        assert_eq!(held.await, 2);
        assert_eq!(address(&reuse), Some(first));

        // Two at once (HTTP/2): the second gets a box of its own; one box is kept after.
        let a = reuse.hold(counted(3));
        let b = reuse.hold(counted(4));
        assert_eq!((a.await, b.await), (3, 4));
        assert!(address(&reuse).is_some());

        // Dropped before it finished (its client went away): dropped at once, box kept.
        let before = drops.load(Ordering::Relaxed);
        let mut dropped = Box::pin(reuse.hold(counted(5)));
        assert!(futures_poll_once(dropped.as_mut()).is_pending());
        drop(dropped);
        assert_eq!(drops.load(Ordering::Relaxed), before + 1);
        assert!(address(&reuse).is_some());
        assert_eq!(
            drops.load(Ordering::Relaxed),
            5,
            "every future dropped exactly once"
        );
    }

    fn futures_poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        f.poll(&mut cx)
    }
}
