//! Closing the pool: draining, failing what is left, joining or detaching workers.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::after;
use super::job::Job;
use super::queue::Shared;
use crate::error::{Error, Operation};
use crate::sync::lock;

/// What [`DevicePool::shutdown`](super::DevicePool::shutdown) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Queued jobs failed with [`Error::ShutDown`] because the grace period ran out.
    pub failed_queued: u64,
    /// Workers still inside a device call when the grace period ended, detached.
    pub detached_workers: usize,
}

impl<D: 'static> Shared<D> {
    pub(super) fn fail_all(
        &self,
        jobs: VecDeque<Box<dyn Job<D>>>,
        err: impl Fn(Operation) -> Error,
    ) -> u64 {
        let mut n = 0;
        for mut job in jobs {
            job.release_slot();
            if !job.caller_gone() {
                job.fail(err(job.options().op));
                n += 1;
            }
        }
        self.counters.failed_unserved.fetch_add(n, Relaxed);
        n
    }

    pub(super) fn fail_queued(&self, err: impl Fn(Operation) -> Error) -> u64 {
        let jobs = std::mem::take(&mut lock(&self.queue).jobs);
        self.fail_all(jobs, err)
    }

    /// Marks the pool closed: new jobs are refused, queued ones are served until `drain_until`.
    pub(super) fn close(&self, drain_until: Instant) {
        let mut q = lock(&self.queue);
        if !q.closed {
            q.closed = true;
            q.drain_until = Some(drain_until);
        }
        drop(q);
        self.slots.close();
        self.work.notify_all();
        self.wake_recovering.notify_all();
        if self.healthy.load(Relaxed) == 0 {
            // No worker will serve the queue (all are reconnecting, or gone).
            self.fail_queued(|op| self.shut_down(op));
        }
    }

    pub(super) fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let deadline = after(Instant::now(), grace);
        self.close(deadline);
        let total = self.config.workers;
        let mut exited = lock(&self.exited);
        while *exited < lock(&self.threads).len().min(total) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            exited = match self.exited_cv.wait_timeout(exited, deadline - now) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        }
        let exited_workers = *exited;
        drop(exited);
        // Anything still queued (workers stuck in the device, or the grace period over).
        let failed_queued = self.fail_queued(|op| self.shut_down(op));
        // A worker counts itself in `exited` just before its thread ends, so its handle may not
        // be `is_finished()` yet: count the workers that did not report their exit as detached
        // (not the unfinished handles), and join every handle once all have reported.
        let handles = std::mem::take(&mut *lock(&self.threads));
        let detached_workers = handles.len().saturating_sub(exited_workers);
        for handle in handles {
            if detached_workers == 0 || handle.is_finished() {
                let _ = handle.join();
            }
        }
        ShutdownReport {
            failed_queued,
            detached_workers,
        }
    }

    pub(super) fn shut_down(&self, op: Operation) -> Error {
        Error::ShutDown {
            device: self.name().to_owned(),
            op,
        }
    }
}
