//! Recovery: rebuilding a lost device state, backoff, and failing fast while no worker is healthy.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::job::{Attempt, Job};
use super::queue::Shared;
use super::worker::Worker;
use crate::error::{Error, Operation, Result};
use crate::sync::lock;

impl<D: 'static> Shared<D> {
    /// Builds worker `index`'s device state. A panicking factory becomes an error: unwinding
    /// would end the worker thread while it still counts as healthy (and, mid-job, in flight),
    /// so the pool would accept jobs that nobody serves until their deadline.
    pub(super) fn build(&self, index: usize) -> Result<D> {
        catch_unwind(AssertUnwindSafe(|| (self.factory)(index))).unwrap_or_else(|_panic| {
            Err(Error::backend(
                self.name(),
                Operation::Connect,
                "the device factory panicked",
            ))
        })
    }

    fn set_last_failure(&self, e: Error) {
        *lock(&self.last_failure) = Some(Arc::new(e));
    }

    /// The error for jobs no worker can serve: the last device failure, keeping its kind when
    /// it is an authentication problem (so that callers do not retry a wrong PIN).
    pub(super) fn unavailable(&self) -> Error {
        let device = self.name().to_owned();
        let Some(last) = lock(&self.last_failure).clone() else {
            return Error::DeviceUnavailable {
                device,
                source: "no worker has a live device session".into(),
            };
        };
        match &*last {
            Error::AuthFailed { target, .. } => Error::AuthFailed {
                target: target.clone(),
                source: Box::new(SharedCause(last.clone())),
            },
            Error::PinLocked { target, remedy, .. } => Error::PinLocked {
                target: target.clone(),
                remedy,
                source: Some(Box::new(SharedCause(last.clone()))),
            },
            _ => Error::DeviceUnavailable {
                device,
                source: Box::new(SharedCause(last)),
            },
        }
    }

    /// A worker built its state: forget the last failure and release workers waiting on an
    /// authentication failure (the credentials work again).
    pub(super) fn built(&self) {
        let was_auth = lock(&self.last_failure).take().is_some_and(|e| e.is_auth());
        if was_auth {
            let _guard = lock(&self.queue);
            self.wake_recovering.notify_all();
        }
    }

    fn auth_blocked(&self) -> bool {
        lock(&self.last_failure)
            .as_ref()
            .is_some_and(|e| e.is_auth())
    }
}

impl<D: 'static> Worker<D> {
    /// Runs the job; on device loss rebuilds the state at once and retries an idempotent job
    /// once. Returns whether the caller got a success.
    pub(super) fn run_with_recovery(&mut self, job: &mut dyn Job<D>) -> Option<bool> {
        let Some(device) = self.state.as_mut() else {
            job.fail(self.shared.unavailable());
            return None;
        };
        let lost = match job.attempt(device, self.shared.name()) {
            Attempt::Replied { ok } => return Some(ok),
            Attempt::Panicked => {
                self.lose_state();
                self.reconnect_now();
                return None;
            }
            Attempt::DeviceLost(e) => e,
        };
        self.lose_state();
        if !self.reconnect_now() || !job.options().idempotent || job.caller_gone() {
            job.fail(lost);
            return None;
        }
        self.shared.counters.retried.fetch_add(1, Relaxed);
        self.shared.metrics.retries.increment(1);
        let device = self.state.as_mut()?;
        match job.attempt(device, self.shared.name()) {
            Attempt::Replied { ok } => Some(ok),
            Attempt::Panicked => {
                self.lose_state();
                None
            }
            Attempt::DeviceLost(again) => {
                self.lose_state();
                job.fail(again);
                None
            }
        }
    }

    fn lose_state(&mut self) {
        // Closing a broken session may itself fail loudly; never let that kill the worker.
        let lost = self.state.take();
        let _ = catch_unwind(AssertUnwindSafe(move || drop(lost)));
        self.shared.counters.device_lost.fetch_add(1, Relaxed);
        self.shared.metrics.lost.increment(1);
    }

    /// One immediate attempt to rebuild the device state (none while an authentication
    /// failure stands: that waits for [`DevicePool::reconnect`](super::DevicePool::reconnect)).
    fn reconnect_now(&mut self) -> bool {
        if self.shared.auth_blocked() {
            return false;
        }
        match self.shared.build(self.index) {
            Ok(state) => {
                self.state = Some(state);
                self.shared.counters.recoveries.fetch_add(1, Relaxed);
                self.shared.metrics.recoveries.increment(1);
                self.shared.built();
                true
            }
            Err(e) => {
                self.shared.set_last_failure(e);
                false
            }
        }
    }

    /// Rebuilds the device state with capped exponential backoff until it works (true) or the
    /// pool closes (false). While no worker is healthy, queued jobs fail fast.
    pub(super) fn recover(&mut self) -> bool {
        let shared = Arc::clone(&self.shared);
        shared.healthy.fetch_sub(1, Relaxed);
        shared.metrics.healthy.decrement(1.0);
        let mut delay = shared.config.backoff_initial;
        loop {
            if shared.healthy.load(Relaxed) == 0 {
                shared.fail_queued(|_| shared.unavailable());
            }
            let mut q = lock(&shared.queue);
            if q.closed {
                return false;
            }
            if shared.auth_blocked() {
                // Retrying a wrong PIN could lock the token: wait until DevicePool::reconnect
                // is called or another worker got in, and let one worker try per reconnect.
                let asked = shared.reconnects.load(Relaxed);
                while !q.closed && shared.reconnects.load(Relaxed) == asked && shared.auth_blocked()
                {
                    q = shared
                        .wake_recovering
                        .wait(q)
                        .unwrap_or_else(|p| p.into_inner());
                }
                let bump = shared.reconnects.load(Relaxed);
                if !q.closed
                    && shared.auth_blocked()
                    && shared.reconnect_claimed.fetch_max(bump, Relaxed) >= bump
                {
                    continue; // another worker makes this attempt
                }
            } else {
                q = shared
                    .wake_recovering
                    .wait_timeout(q, delay)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            if q.closed {
                return false;
            }
            drop(q);
            match shared.build(self.index) {
                Ok(state) => {
                    self.state = Some(state);
                    shared.counters.recoveries.fetch_add(1, Relaxed);
                    shared.metrics.recoveries.increment(1);
                    shared.healthy.fetch_add(1, Relaxed);
                    shared.metrics.healthy.increment(1.0);
                    shared.built();
                    return true;
                }
                Err(e) => {
                    shared.set_last_failure(e);
                    delay = delay.saturating_mul(2).min(shared.config.backoff_max);
                }
            }
        }
    }
}

/// An `Arc<Error>` usable as the cause of several errors (the last device failure).
#[derive(Debug)]
struct SharedCause(Arc<Error>);

impl SharedCause {
    /// The part worth repeating: for the wrapper variants, their cause (so that messages do not
    /// say "device X is unavailable: device X is unavailable: ...").
    fn inner(&self) -> &(dyn std::error::Error + 'static) {
        match &*self.0 {
            Error::DeviceUnavailable { source, .. } | Error::AuthFailed { source, .. } => {
                source.as_ref()
            }
            Error::PinLocked {
                source: Some(source),
                ..
            } => source.as_ref(),
            other => other,
        }
    }
}

impl fmt::Display for SharedCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.inner(), f)
    }
}

impl std::error::Error for SharedCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner().source()
    }
}
