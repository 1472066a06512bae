//! Worker threads: each owns its device state and serves the queue.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::deadline::Typical;
use super::job::Job;
use super::queue::Shared;
use super::stats::nanos;
use super::wake::Deferred;
use crate::error::{Error, Operation, Result};
use crate::sync::lock;

impl<D: 'static> Shared<D> {
    pub(super) fn spawn_worker(
        self: &Arc<Self>,
        index: usize,
        ready: std::sync::mpsc::Sender<Result<()>>,
    ) -> Result<()> {
        let shared = Arc::clone(self);
        // Linux keeps 15 bytes of a thread name: index first so that it survives.
        let handle = std::thread::Builder::new()
            .name(format!("hk{index}:{}", self.config.name))
            .spawn(move || Worker::start(shared, index, ready))
            .map_err(|e| Error::backend(self.name(), Operation::Connect, e))?;
        lock(&self.threads).push(handle);
        Ok(())
    }
}

/// One worker thread and the device state it owns.
pub(super) struct Worker<D: 'static> {
    pub(super) shared: Arc<Shared<D>>,
    /// Callers whose results are delivered but who have not been woken yet.
    pub(super) deferred: Arc<Deferred>,
    pub(super) index: usize,
    pub(super) state: Option<D>,
    /// How long each kind of operation typically takes on this worker (see [`Typical`]).
    pub(super) typical: Typical,
}

impl<D: 'static> Worker<D> {
    pub(super) fn start(
        shared: Arc<Shared<D>>,
        index: usize,
        ready: std::sync::mpsc::Sender<Result<()>>,
    ) {
        shared.metrics.workers.increment(1.0);
        let mut worker = Worker {
            shared,
            deferred: Arc::default(),
            index,
            state: None,
            typical: Typical::default(),
        };
        match worker.shared.build(index) {
            Ok(state) => {
                worker.state = Some(state);
                worker.shared.healthy.fetch_add(1, Relaxed);
                worker.shared.metrics.healthy.increment(1.0);
                worker.shared.built();
                let _ = ready.send(Ok(()));
                drop(ready);
                worker.serve_until_closed();
            }
            Err(e) => {
                let _ = ready.send(Err(e));
            }
        }
        // Drop the device state (close the session) before reporting the exit.
        let shared = Arc::clone(&worker.shared);
        if worker.state.take().is_some() {
            shared.healthy.fetch_sub(1, Relaxed);
            shared.metrics.healthy.decrement(1.0);
        }
        shared.metrics.workers.decrement(1.0);
        drop(worker);
        let mut exited = lock(&shared.exited);
        *exited += 1;
        let last_out = *exited >= lock(&shared.threads).len();
        drop(exited);
        if last_out {
            shared.fail_queued(|op| shared.shut_down(op));
        }
        shared.exited_cv.notify_all();
    }

    fn serve_until_closed(&mut self) {
        let shared = Arc::clone(&self.shared);
        loop {
            let deferred = Arc::clone(&self.deferred);
            let Some(job) = shared.next_job(&mut || deferred.flush()) else {
                break;
            };
            self.serve(job);
            if self.state.is_none() {
                self.deferred.flush();
                if !self.recover() {
                    break;
                }
            }
        }
        self.deferred.flush();
    }

    pub(super) fn serve(&mut self, mut job: Box<dyn Job<D>>) {
        let shared = Arc::clone(&self.shared);
        let c = &shared.counters;
        job.release_slot();
        let started = Instant::now();
        if job.caller_gone() {
            // A caller whose deadline passed gave up with a Timeout it already counted.
            if job.deadline().is_none_or(|d| started < d) {
                c.cancelled.fetch_add(1, Relaxed);
                shared.metrics.cancelled.increment(1);
            }
            return;
        }
        let op = job.options().op;
        if job.deadline().is_some_and(|d| started >= d) {
            c.timed_out.fetch_add(1, Relaxed);
            job.expire(shared.name());
            return;
        }
        // Refusing helps only callers waiting behind this job: with none, a job that may
        // still make its deadline is run.
        let others_wait = shared.queued() > 0;
        if let Some((left, takes)) = others_wait
            .then(|| self.typical.too_late(op, started, job.deadline()))
            .flatten()
        {
            c.timed_out.fetch_add(1, Relaxed);
            job.fail(Error::NoTimeLeft {
                device: shared.name().to_owned(),
                op,
                left,
                takes,
            });
            return;
        }
        let queued = started.saturating_duration_since(job.submitted());
        let span = job.observed().span.clone();
        span.record("queue_seconds", queued.as_secs_f64());
        c.in_flight.fetch_add(1, Relaxed);
        shared.metrics.in_flight.increment(1.0);
        let ok = span.in_scope(|| self.run_with_recovery(job.as_mut()));
        c.in_flight.fetch_sub(1, Relaxed);
        shared.metrics.in_flight.decrement(1.0);
        if ok == Some(true) {
            self.typical.record(op, started.elapsed());
        }
        match ok {
            Some(true) => c.completed.fetch_add(1, Relaxed),
            Some(false) | None => c.failed.fetch_add(1, Relaxed),
        };
        let done = Instant::now();
        let mut h = lock(&shared.histograms[self.index]);
        let _ = h.latency.record(nanos(done - job.submitted()));
        let _ = h.service.record(nanos(done - started));
        drop(h);
        job.observed().ran(queued, done - started);
        if let Some(waker) = job.take_waker() {
            self.wake(waker, done - started);
        }
    }
}

impl<D: 'static> Drop for Worker<D> {
    fn drop(&mut self) {
        // Whatever path ends the worker, no caller is left unwoken.
        self.deferred.flush();
    }
}
