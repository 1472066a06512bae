//! The bounded queue callers submit to, and the state workers share.

use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::config::{Backpressure, JobOptions, JobTimeout, PoolConfig};
use super::job::{Job, TypedJob};
use super::metrics::{Observed, PoolMetrics};
use super::stats::{Counters, Histograms};
use super::{Factory, after};
use crate::completion;
use crate::error::{Error, Operation, Result};
use crate::sync::lock;
use crate::timer::sleep_until;

pub(super) struct Shared<D: 'static> {
    pub(super) config: PoolConfig,
    pub(super) factory: Box<Factory<D>>,
    pub(super) slots: Arc<Semaphore>,
    pub(super) queue: Mutex<Queue<D>>,
    /// Signalled when a job is queued or the pool closes; idle workers wait on it.
    pub(super) work: Condvar,
    /// Signalled when the pool closes; recovering workers sleep on it between attempts.
    pub(super) wake_recovering: Condvar,
    pub(super) healthy: AtomicUsize,
    /// Bumped by [`DevicePool::reconnect`](super::DevicePool::reconnect): workers blocked on an auth failure try again.
    pub(super) reconnects: AtomicU64,
    /// The last `reconnects` value a worker claimed to make its one attempt for.
    pub(super) reconnect_claimed: AtomicU64,
    pub(super) last_failure: Mutex<Option<Arc<Error>>>,
    pub(super) counters: Counters,
    pub(super) metrics: PoolMetrics,
    pub(super) histograms: Vec<Mutex<Histograms>>,
    pub(super) threads: Mutex<Vec<JoinHandle<()>>>,
    pub(super) exited: Mutex<usize>,
    pub(super) exited_cv: Condvar,
}

pub(super) struct Queue<D: 'static> {
    pub(super) jobs: VecDeque<Box<dyn Job<D>>>,
    pub(super) idle_workers: usize,
    pub(super) closed: bool,
    pub(super) drain_until: Option<Instant>,
}

impl<D: 'static> Shared<D> {
    pub(super) fn name(&self) -> &str {
        &self.config.name
    }

    /// Runs `job`; counts its outcome as the caller gets it (success, or failure by kind).
    pub(super) async fn submit<T, F>(self: Arc<Self>, options: JobOptions, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut D) -> Result<T> + Send + 'static,
    {
        let metrics = self.metrics.op(options.op, options.scheme);
        let span = metrics.span();
        let observed = Observed {
            metrics: Arc::clone(&metrics),
            span: span.clone(),
        };
        let result = self.queue_and_wait(options, job, observed).await;
        match &result {
            Ok(_) => metrics.ok.increment(1),
            Err(e) => {
                metrics.failed(e.kind());
                span.record("error", e.kind().name());
            }
        }
        result
    }

    async fn queue_and_wait<T, F>(
        self: Arc<Self>,
        options: JobOptions,
        job: F,
        observed: Observed,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut D) -> Result<T> + Send + 'static,
    {
        let op = options.op;
        let timeout = match options.timeout {
            JobTimeout::PoolDefault => self.config.op_timeout,
            JobTimeout::Never => None,
            JobTimeout::After(t) => Some(t),
        };
        let submitted = Instant::now();
        let deadline = timeout.map(|t| after(submitted, t));
        self.check_accepting(op)?;

        let permit = match self.config.backpressure {
            Backpressure::FailFast => match Arc::clone(&self.slots).try_acquire_owned() {
                Ok(p) => p,
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    self.counters.rejected_busy.fetch_add(1, Relaxed);
                    return Err(Error::Busy {
                        device: self.name().to_owned(),
                        capacity: self.config.queue_capacity,
                    });
                }
                Err(tokio::sync::TryAcquireError::Closed) => return Err(self.shut_down(op)),
            },
            Backpressure::Wait => {
                match with_deadline(Arc::clone(&self.slots).acquire_owned(), deadline).await {
                    Some(Ok(p)) => p,
                    Some(Err(_closed)) => return Err(self.shut_down(op)),
                    None => return Err(self.timed_out(op, timeout)),
                }
            }
        };

        let (tx, rx) = completion::channel();
        let job = Box::new(TypedJob {
            job,
            reply: Some(tx),
            waker: None,
            permit: Some(self.metrics.slot(permit)),
            observed,
            options,
            deadline,
            timeout,
            submitted,
            _device: PhantomData,
        });
        self.enqueue(job)?;
        match with_deadline(rx, deadline).await {
            Some(Some(result)) => result,
            Some(None) => Err(Error::backend(
                self.name(),
                op,
                "the worker ended without replying (it panicked or was detached)",
            )),
            None => Err(self.timed_out(op, timeout)),
        }
    }

    fn check_accepting(&self, op: Operation) -> Result<()> {
        if self.slots.is_closed() {
            return Err(self.shut_down(op));
        }
        if self.healthy.load(Relaxed) == 0 {
            return Err(self.unavailable());
        }
        Ok(())
    }

    fn enqueue(&self, job: Box<dyn Job<D>>) -> Result<()> {
        let mut q = lock(&self.queue);
        if q.closed {
            return Err(self.shut_down(job.options().op));
        }
        q.jobs.push_back(job);
        let wake = q.idle_workers > 0;
        drop(q);
        if wake {
            self.work.notify_one();
        }
        Ok(())
    }

    /// Jobs waiting in the queue (not counting running ones).
    pub(super) fn queued(&self) -> usize {
        self.config
            .queue_capacity
            .saturating_sub(self.slots.available_permits())
    }

    /// The next job for a healthy worker; `None` when the pool is closed and drained.
    /// `before_wait` runs before the worker blocks for lack of work.
    pub(super) fn next_job(&self, before_wait: &mut dyn FnMut()) -> Option<Box<dyn Job<D>>> {
        let mut q = lock(&self.queue);
        loop {
            if q.closed && q.drain_until.is_none_or(|t| Instant::now() >= t) {
                let left = std::mem::take(&mut q.jobs);
                drop(q);
                self.fail_all(left, |op| self.shut_down(op));
                return None;
            }
            if let Some(job) = q.jobs.pop_front() {
                return Some(job);
            }
            if q.closed {
                return None;
            }
            drop(q);
            before_wait();
            q = lock(&self.queue);
            if !q.jobs.is_empty() || q.closed {
                continue;
            }
            q.idle_workers += 1;
            q = self.work.wait(q).unwrap_or_else(|p| p.into_inner());
            q.idle_workers -= 1;
        }
    }

    pub(super) fn timed_out(&self, op: Operation, after: Option<Duration>) -> Error {
        self.counters.timed_out.fetch_add(1, Relaxed);
        Error::Timeout {
            device: self.name().to_owned(),
            op,
            after: after.unwrap_or_default(),
        }
    }
}

/// Awaits `fut` until `deadline`; `None` if the deadline passed first.
async fn with_deadline<F: Future>(fut: F, deadline: Option<Instant>) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let Some(deadline) = deadline else {
        return Some(fut.await);
    };
    let mut timer = sleep_until(deadline);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        match Pin::new(&mut timer).poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}
