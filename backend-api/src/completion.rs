//! A one-shot completion slot whose sender can deliver a value without waking the receiver at
//! once: the pool's workers coalesce wake-ups under load (see `pool/wake.rs`), since on many
//! machines waking a thread costs more than a fast device operation.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::sync::lock;

enum State<T> {
    /// No value yet; the receiver's waker, if it has been polled.
    Waiting(Option<Waker>),
    /// The value, not yet taken.
    Ready(T),
    /// Taken by the receiver, or the receiver is gone.
    Done,
}

struct Shared<T> {
    state: Mutex<State<T>>,
}

/// The sending half, held by a queued job.
pub(crate) struct Sender<T> {
    shared: Option<Arc<Shared<T>>>,
}

/// The receiving half: a future of the value. `None` if the sender was dropped without
/// sending.
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::Waiting(None)),
    });
    (
        Sender {
            shared: Some(Arc::clone(&shared)),
        },
        Receiver { shared },
    )
}

impl<T> Sender<T> {
    /// Whether the receiver is gone (its future was dropped).
    pub(crate) fn is_closed(&self) -> bool {
        match &self.shared {
            // The receiver holds the other reference.
            Some(shared) => Arc::strong_count(shared) < 2,
            None => true,
        }
    }

    /// Stores the value and returns the waker to wake, which the caller may wake later.
    pub(crate) fn send(mut self, value: T) -> Option<Waker> {
        let shared = self.shared.take()?;
        let mut state = lock(&shared.state);
        match std::mem::replace(&mut *state, State::Ready(value)) {
            State::Waiting(waker) => waker,
            State::Ready(_) | State::Done => {
                *state = State::Done;
                None
            }
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        // Dropped without sending: the receiver must learn, or it would wait forever.
        if let Some(shared) = self.shared.take() {
            let mut state = lock(&shared.state);
            if let State::Waiting(waker) = std::mem::replace(&mut *state, State::Done) {
                drop(state);
                if let Some(w) = waker {
                    w.wake();
                }
            }
        }
    }
}

impl<T> Future for Receiver<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = lock(&self.shared.state);
        match std::mem::replace(&mut *state, State::Done) {
            State::Ready(value) => Poll::Ready(Some(value)),
            State::Done => Poll::Ready(None),
            State::Waiting(waker) => {
                let waker = match waker {
                    Some(w) if w.will_wake(cx.waker()) => w,
                    _ => cx.waker().clone(),
                };
                *state = State::Waiting(Some(waker));
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_and_reports_closed_receivers() {
        let (tx, rx) = channel::<u32>();
        assert!(!tx.is_closed());
        let waker = tx.send(7);
        assert!(waker.is_none(), "never polled: nothing to wake");
        assert_eq!(futures::executor::block_on(rx), Some(7));

        let (tx, rx) = channel::<u32>();
        drop(rx);
        assert!(tx.is_closed());

        let (tx, rx) = channel::<u32>();
        drop(tx);
        assert_eq!(futures::executor::block_on(rx), None);
    }

    #[test]
    fn the_returned_waker_completes_a_pending_receiver() {
        let (tx, rx) = channel::<u32>();
        let shared = Arc::clone(&rx.shared);
        let handle = std::thread::spawn(move || futures::executor::block_on(rx));
        // Until the receiver has been polled and is pending, there is no waker to return.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !matches!(*lock(&shared.state), State::Waiting(Some(_))) {
            assert!(
                std::time::Instant::now() < deadline,
                "the receiver was never polled"
            );
            std::thread::yield_now();
        }
        drop(shared);
        let waker = tx.send(9).expect("a pending receiver left its waker");
        waker.wake();
        assert_eq!(handle.join().unwrap(), Some(9));
    }
}
