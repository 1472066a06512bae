//! Coalesced wake-ups: waking callers in batches while fast jobs queue.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

use super::worker::Worker;
use crate::sync::lock;

/// Most callers a worker lets wait for their wake-up (see [`Worker::wake`]).
const WAKE_BATCH: usize = 32;
/// Wake-ups are batched only after operations at most this long.
const WAKE_BATCH_MAX_SERVICE: Duration = Duration::from_micros(250);
/// No caller waits longer than this for its wake-up once its result is ready.
const WAKE_BATCH_MAX_DELAY: Duration = Duration::from_millis(4);

/// Callers whose results are delivered but who have not been woken yet. Shared with the
/// timer thread, which flushes a batch [`WAKE_BATCH_MAX_DELAY`] after it started whatever the
/// worker is doing then (a slow next job, a reconnect, a hung device).
#[derive(Default)]
pub(super) struct Deferred {
    wakers: Mutex<Vec<Waker>>,
    /// A timer-thread flush is pending. One at a time per worker: it may flush a younger batch
    /// early (harmless), and the timer thread wakes at most every [`WAKE_BATCH_MAX_DELAY`].
    armed: std::sync::atomic::AtomicBool,
}

impl Deferred {
    pub(super) fn flush(&self) {
        let wakers = std::mem::take(&mut *lock(&self.wakers));
        for waker in wakers {
            waker.wake();
        }
    }
}

impl std::task::Wake for Deferred {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.armed.store(false, Relaxed);
        self.flush();
    }
}

impl<D: 'static> Worker<D> {
    /// Wakes the caller of a finished job now, or later with others.
    ///
    /// Waking a thread costs several microseconds (more on virtual machines), as much as a
    /// fast device operation. While more jobs wait than there are workers (saturation, when
    /// queueing already delays every caller) and the device is fast, a worker wakes its callers
    /// in batches of up to [`WAKE_BATCH`], none later than [`WAKE_BATCH_MAX_DELAY`] after its
    /// result was ready: throughput is not spent on wake-ups. Otherwise (light load, slow
    /// device) callers are woken at once. Batched wake-ups are always flushed before the
    /// worker waits for work, recovers or exits.
    pub(super) fn wake(&mut self, waker: Waker, service: Duration) {
        let busy = self.shared.queued() > self.shared.config.workers;
        if !busy || service > WAKE_BATCH_MAX_SERVICE {
            self.deferred.flush();
            waker.wake();
            return;
        }
        let mut wakers = lock(&self.deferred.wakers);
        let first = wakers.is_empty();
        wakers.push(waker);
        let full = wakers.len() >= WAKE_BATCH;
        drop(wakers);
        if full {
            self.deferred.flush();
        } else if first && !self.deferred.armed.swap(true, Relaxed) {
            // The batch's deadline: the timer thread flushes it then, if nothing did before.
            let flusher = Waker::from(Arc::clone(&self.deferred));
            crate::timer::wake_at(Instant::now() + WAKE_BATCH_MAX_DELAY, flusher);
        }
    }
}
