//! [`DevicePool`]: dedicated worker threads that own device state, behind one async boundary.
//!
//! A PKCS#11 session is `Send` but not `Sync`, a TPM's ESAPI context takes `&mut self`, and a
//! device operation blocks for milliseconds. So each device gets N named worker threads; each
//! worker builds its own state with a factory (a session, a context) and keeps it. Callers
//! submit closures over `&mut D` and await a completion future that is `Send + 'static` and
//! needs no particular async runtime.
//!
//! What the pool guarantees:
//!
//! - **Backpressure**: the queue is bounded. Callers await a free slot, or get
//!   [`Error::Busy`] at once if the pool was configured with [`Backpressure::FailFast`].
//! - **Deadlines**: every job has a deadline (queue wait included), after which the caller gets
//!   [`Error::Timeout`]; a job found expired when dequeued is never run, and one with less
//!   time left than the fastest recent job of its kind took there fails at once with
//!   [`Error::NoTimeLeft`] (under overload, the device's time goes to answers someone will
//!   still read).
//! - **Cancellation**: a job whose caller dropped its future before the job started is skipped.
//! - **Recovery**: a job that fails with a device-lost error ([`Error::is_device_lost`]) makes
//!   its worker drop its state and build a new one at once; an idempotent job (sign, decrypt)
//!   is then retried once. If the device stays away, the worker retries with exponential
//!   backoff (capped); while no worker is healthy, queued and new jobs fail fast with a
//!   retriable [`Error::DeviceUnavailable`] instead of waiting for their deadline.
//! - **Shutdown**: [`DevicePool::shutdown`] serves the queue for a grace period, fails what is
//!   left with [`Error::ShutDown`], and joins the workers; a worker stuck inside the device
//!   past the grace period is detached, never waited for forever.
//! - **Stats**: queue depth, in-flight jobs, counters and latency percentiles
//!   ([`DevicePool::stats`]).
//! - **Coalesced wake-ups under load**: waking a caller's thread costs as much as a fast
//!   device operation (a cross-CPU interrupt, dearer still in a virtual machine). When more
//!   jobs wait than there are workers and operations are fast (≤ 250 µs), a worker wakes its
//!   callers in batches (up to 32, none more than 4 ms after its result was ready). At light
//!   load, or for slow devices, every caller is woken at once.
//!
//! A TPM executes one command at a time: give TPM pools one worker. PKCS#11 tokens can serve
//! several sessions in parallel; one worker per session.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::completion;
use crate::error::{Error, InvalidInput, Operation, Result};
use crate::sync::lock;
use crate::timer::sleep_until;

/// What a caller does when the queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Backpressure {
    /// Wait (asynchronously) for a free slot, up to the job's deadline.
    #[default]
    Wait,
    /// Fail at once with [`Error::Busy`].
    FailFast,
}

/// Configuration of a [`DevicePool`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Device name used in errors, stats and worker thread names.
    pub name: String,
    /// Number of worker threads, each with its own device state.
    pub workers: usize,
    /// Maximum number of jobs waiting in the queue (not counting running ones).
    pub queue_capacity: usize,
    /// What callers do when the queue is full.
    pub backpressure: Backpressure,
    /// Default deadline of a job, queue wait included; `None` waits forever.
    pub op_timeout: Option<Duration>,
    /// First delay between attempts to rebuild a lost device state.
    pub backoff_initial: Duration,
    /// Largest delay between attempts to rebuild a lost device state.
    pub backoff_max: Duration,
}

impl PoolConfig {
    /// One worker, 256 queue slots, waiting backpressure, 30 s deadline, backoff 10 ms to 2 s.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            workers: 1,
            queue_capacity: 256,
            backpressure: Backpressure::Wait,
            op_timeout: Some(Duration::from_secs(30)),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_secs(2),
        }
    }

    /// Sets the number of workers.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Sets the queue capacity.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n;
        self
    }

    /// Sets the backpressure behaviour.
    pub fn backpressure(mut self, b: Backpressure) -> Self {
        self.backpressure = b;
        self
    }

    /// Sets the default job deadline.
    pub fn op_timeout(mut self, t: Option<Duration>) -> Self {
        self.op_timeout = t;
        self
    }

    /// Sets the reconnect backoff bounds.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }

    fn validate(&self) -> Result<()> {
        let bad = |what, reason| Err(InvalidInput::Config { what, reason }.into());
        if self.workers == 0 || self.workers > 1024 {
            return bad("pool workers", "must be between 1 and 1024");
        }
        if self.queue_capacity == 0 || self.queue_capacity > Semaphore::MAX_PERMITS {
            return bad("pool queue capacity", "must be between 1 and 2^61");
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            return bad(
                "pool backoff",
                "initial delay must be non-zero and not above the maximum",
            );
        }
        Ok(())
    }
}

/// The deadline of one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum JobTimeout {
    /// The pool's [`PoolConfig::op_timeout`].
    #[default]
    PoolDefault,
    /// No deadline (e.g. RSA-4096 generation on a slow TPM).
    Never,
    /// This deadline, queue wait included.
    After(Duration),
}

/// How the pool treats one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobOptions {
    /// What the job does (for errors and stats).
    pub op: Operation,
    /// Whether running the job twice is harmless (sign, decrypt, read): it is then retried
    /// once after its worker rebuilt a lost device state.
    pub idempotent: bool,
    /// The job's deadline.
    pub timeout: JobTimeout,
}

impl JobOptions {
    /// A non-idempotent job with the pool's default deadline.
    pub const fn new(op: Operation) -> Self {
        Self {
            op,
            idempotent: false,
            timeout: JobTimeout::PoolDefault,
        }
    }

    /// An idempotent job (retried once after device recovery).
    pub const fn idempotent(op: Operation) -> Self {
        Self {
            op,
            idempotent: true,
            timeout: JobTimeout::PoolDefault,
        }
    }

    /// Sets the deadline.
    pub const fn with_timeout(mut self, timeout: JobTimeout) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Latency percentiles over every job a pool has finished.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean: Duration,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Maximum.
    pub max: Duration,
}

impl LatencySummary {
    fn of(h: &Histogram<u64>) -> Self {
        let ns = Duration::from_nanos;
        Self {
            count: h.len(),
            mean: ns(h.mean() as u64),
            p50: ns(h.value_at_quantile(0.50)),
            p90: ns(h.value_at_quantile(0.90)),
            p99: ns(h.value_at_quantile(0.99)),
            max: ns(h.max()),
        }
    }
}

/// A snapshot of a pool's state and counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Device name.
    pub name: String,
    /// Worker threads.
    pub workers: usize,
    /// Workers with a live device state.
    pub healthy_workers: usize,
    /// Jobs waiting in the queue.
    pub queued: usize,
    /// Jobs running on the device now.
    pub in_flight: usize,
    /// Jobs that succeeded.
    pub completed: u64,
    /// Jobs that ran and failed (after any retry).
    pub failed: u64,
    /// Jobs skipped because their caller dropped its future before they started (callers that
    /// timed out are counted in `timed_out` only).
    pub cancelled: u64,
    /// Jobs that missed their deadline (queued or running; a job still running when its caller
    /// timed out is also counted as completed or failed when the device returns).
    pub timed_out: u64,
    /// Submissions refused with [`Error::Busy`].
    pub rejected_busy: u64,
    /// Times a worker lost its device state.
    pub device_lost: u64,
    /// Times a worker rebuilt its device state after losing it.
    pub recoveries: u64,
    /// Jobs retried after recovery.
    pub retried: u64,
    /// Queued jobs failed because the pool shut down or no worker could serve them.
    pub failed_unserved: u64,
    /// Submission-to-reply latency of finished jobs.
    pub latency: LatencySummary,
    /// Time on the device (excluding queue wait) of finished jobs.
    pub service_time: LatencySummary,
}

impl fmt::Display for PoolStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}/{} workers healthy, {} queued, {} in flight, {} ok, {} failed, {} cancelled, \
             {} timed out, {} busy; latency p50 {:?} p99 {:?} max {:?}",
            self.name,
            self.healthy_workers,
            self.workers,
            self.queued,
            self.in_flight,
            self.completed,
            self.failed,
            self.cancelled,
            self.timed_out,
            self.rejected_busy,
            self.latency.p50,
            self.latency.p99,
            self.latency.max
        )
    }
}

/// What [`DevicePool::shutdown`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Queued jobs failed with [`Error::ShutDown`] because the grace period ran out.
    pub failed_queued: u64,
    /// Workers still inside a device call when the grace period ended, detached.
    pub detached_workers: usize,
}

type Factory<D> = dyn Fn(usize) -> Result<D> + Send + Sync + 'static;

/// A pool of worker threads owning device state `D`. Cloning is cheap and shares the pool;
/// when the last clone is dropped the pool shuts down in the background (queued jobs are still
/// served for a short grace period). Call [`DevicePool::shutdown`] to wait for it.
pub struct DevicePool<D: 'static> {
    handle: Arc<Handle<D>>,
}

impl<D: 'static> Clone for DevicePool<D> {
    fn clone(&self) -> Self {
        Self {
            handle: Arc::clone(&self.handle),
        }
    }
}

impl<D: 'static> fmt::Debug for DevicePool<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevicePool")
            .field("name", &self.handle.shared.config.name)
            .field("workers", &self.handle.shared.config.workers)
            .finish()
    }
}

/// Owned by the `DevicePool` clones only: dropping the last one starts shutdown.
struct Handle<D: 'static> {
    shared: Arc<Shared<D>>,
}

impl<D: 'static> Drop for Handle<D> {
    fn drop(&mut self) {
        self.shared.close(Instant::now() + DROP_GRACE);
    }
}

const DROP_GRACE: Duration = Duration::from_secs(5);
const STARTUP_FAILURE_GRACE: Duration = Duration::from_secs(10);
/// Stands for "no deadline" where an `Instant` is needed and `now + duration` overflows.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}

struct Shared<D: 'static> {
    config: PoolConfig,
    factory: Box<Factory<D>>,
    slots: Arc<Semaphore>,
    queue: Mutex<Queue<D>>,
    /// Signalled when a job is queued or the pool closes; idle workers wait on it.
    work: Condvar,
    /// Signalled when the pool closes; recovering workers sleep on it between attempts.
    wake_recovering: Condvar,
    healthy: AtomicUsize,
    /// Bumped by [`DevicePool::reconnect`]: workers blocked on an auth failure try again.
    reconnects: AtomicU64,
    /// The last `reconnects` value a worker claimed to make its one attempt for.
    reconnect_claimed: AtomicU64,
    last_failure: Mutex<Option<Arc<Error>>>,
    counters: Counters,
    histograms: Vec<Mutex<Histograms>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    exited: Mutex<usize>,
    exited_cv: Condvar,
}

struct Queue<D: 'static> {
    jobs: VecDeque<Box<dyn Job<D>>>,
    idle_workers: usize,
    closed: bool,
    drain_until: Option<Instant>,
}

#[derive(Default)]
struct Counters {
    in_flight: AtomicUsize,
    completed: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    timed_out: AtomicU64,
    rejected_busy: AtomicU64,
    device_lost: AtomicU64,
    recoveries: AtomicU64,
    retried: AtomicU64,
    failed_unserved: AtomicU64,
}

struct Histograms {
    latency: Histogram<u64>,
    service: Histogram<u64>,
}

impl Histograms {
    fn new() -> Result<Self> {
        // 1 ns .. 1 hour, 2 significant digits (1 % resolution): about 11 KiB each.
        let make = || {
            Histogram::new_with_bounds(1, 3_600_000_000_000, 2).map_err(|_| InvalidInput::Config {
                what: "latency histogram",
                reason: "bounds rejected",
            })
        };
        Ok(Self {
            latency: make()?,
            service: make()?,
        })
    }
}

impl<D: 'static> DevicePool<D> {
    /// Starts the workers. Each calls `factory(worker_index)` on its own thread to build its
    /// device state; this returns once every worker has done so, or with the first error (the
    /// started workers are then shut down). Blocks while the factories run: call it from a
    /// blocking context.
    pub fn new<F>(config: PoolConfig, factory: F) -> Result<Self>
    where
        F: Fn(usize) -> Result<D> + Send + Sync + 'static,
    {
        config.validate()?;
        let histograms = (0..config.workers)
            .map(|_| Histograms::new().map(Mutex::new))
            .collect::<Result<Vec<_>>>()?;
        let shared = Arc::new(Shared {
            slots: Arc::new(Semaphore::new(config.queue_capacity)),
            queue: Mutex::new(Queue {
                jobs: VecDeque::with_capacity(config.queue_capacity.min(4096)),
                idle_workers: 0,
                closed: false,
                drain_until: None,
            }),
            work: Condvar::new(),
            wake_recovering: Condvar::new(),
            healthy: AtomicUsize::new(0),
            reconnects: AtomicU64::new(0),
            reconnect_claimed: AtomicU64::new(0),
            last_failure: Mutex::new(None),
            counters: Counters::default(),
            histograms,
            threads: Mutex::new(Vec::with_capacity(config.workers)),
            exited: Mutex::new(0),
            exited_cv: Condvar::new(),
            factory: Box::new(factory),
            config,
        });
        let pool = Self {
            handle: Arc::new(Handle {
                shared: Arc::clone(&shared),
            }),
        };

        // Worker 0 builds its state (logs in) first: if the credentials are wrong, the device
        // sees one failed attempt, not one per worker (a token may lock after three).
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let mut first_error = None;
        for batch in [0..1, 1..shared.config.workers] {
            let mut started = 0;
            for index in batch {
                match shared.spawn_worker(index, ready_tx.clone()) {
                    Ok(()) => started += 1,
                    Err(e) => {
                        first_error.get_or_insert(e);
                        break;
                    }
                }
            }
            // Wait for every started worker, so none is left building state behind our back.
            for _ in 0..started {
                let result = ready_rx.recv().unwrap_or_else(|_| {
                    Err(Error::backend(
                        &shared.config.name,
                        Operation::Connect,
                        "a worker thread ended while building its device state",
                    ))
                });
                if let Err(e) = result {
                    first_error.get_or_insert(e);
                }
            }
            if first_error.is_some() {
                break;
            }
        }
        if let Some(e) = first_error {
            // Every started worker has reported: the healthy ones are idle and exit at once.
            pool.shutdown(STARTUP_FAILURE_GRACE);
            return Err(e);
        }
        Ok(pool)
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.handle.shared.config.name
    }

    /// The pool's configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.handle.shared.config
    }

    /// Runs `job` on a worker's device state and completes with its result.
    ///
    /// The future is lazy, `Send + 'static` and runtime-agnostic. Dropping it before the job
    /// starts means the job is skipped; dropping it later discards the result. `job` is
    /// `FnMut` because an idempotent job may run a second time after device recovery.
    pub fn run<T, F>(
        &self,
        options: JobOptions,
        job: F,
    ) -> impl Future<Output = Result<T>> + Send + 'static + use<D, T, F>
    where
        T: Send + 'static,
        F: FnMut(&mut D) -> Result<T> + Send + 'static,
    {
        // The future holds a pool handle: a key dropped while its operation is pending does
        // not shut the pool down under it.
        let pool = self.clone();
        async move { Arc::clone(&pool.handle.shared).submit(options, job).await }
    }

    /// A snapshot of the pool's state, counters and latency percentiles.
    pub fn stats(&self) -> PoolStats {
        self.handle.shared.stats()
    }

    /// Stops accepting jobs, serves the queue for up to `grace`, fails what is left with
    /// [`Error::ShutDown`], and joins the workers. Workers still inside a device call after
    /// `grace` are detached (their results are discarded). Idempotent. Blocks the calling
    /// thread for up to `grace`: from async code, call it on a blocking thread.
    pub fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.handle.shared.shutdown(grace)
    }

    /// Lets workers try to rebuild their device state again after an authentication failure.
    ///
    /// A factory that fails with an auth error ([`Error::is_auth`]) is never retried on its
    /// own: retrying a wrong PIN would lock the token. Until this is called (after fixing the
    /// PIN source, say), jobs fail with that auth error.
    pub fn reconnect(&self) {
        let shared = &self.handle.shared;
        shared.reconnects.fetch_add(1, Relaxed);
        let _guard = lock(&shared.queue);
        shared.wake_recovering.notify_all();
    }
}

impl<D: 'static> Shared<D> {
    fn name(&self) -> &str {
        &self.config.name
    }

    async fn submit<T, F>(self: Arc<Self>, options: JobOptions, job: F) -> Result<T>
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
            permit: Some(permit),
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
    fn queued(&self) -> usize {
        self.config
            .queue_capacity
            .saturating_sub(self.slots.available_permits())
    }

    /// The next job for a healthy worker; `None` when the pool is closed and drained.
    /// `before_wait` runs before the worker blocks for lack of work.
    fn next_job(&self, before_wait: &mut dyn FnMut()) -> Option<Box<dyn Job<D>>> {
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

    fn fail_all(&self, jobs: VecDeque<Box<dyn Job<D>>>, err: impl Fn(Operation) -> Error) -> u64 {
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

    fn fail_queued(&self, err: impl Fn(Operation) -> Error) -> u64 {
        let jobs = std::mem::take(&mut lock(&self.queue).jobs);
        self.fail_all(jobs, err)
    }

    /// Marks the pool closed: new jobs are refused, queued ones are served until `drain_until`.
    fn close(&self, drain_until: Instant) {
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

    fn spawn_worker(
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

    fn shutdown(&self, grace: Duration) -> ShutdownReport {
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

    /// Builds worker `index`'s device state. A panicking factory becomes an error: unwinding
    /// would end the worker thread while it still counts as healthy (and, mid-job, in flight),
    /// so the pool would accept jobs that nobody serves until their deadline.
    fn build(&self, index: usize) -> Result<D> {
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
    fn unavailable(&self) -> Error {
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
    fn built(&self) {
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

    fn shut_down(&self, op: Operation) -> Error {
        Error::ShutDown {
            device: self.name().to_owned(),
            op,
        }
    }

    fn timed_out(&self, op: Operation, after: Option<Duration>) -> Error {
        self.counters.timed_out.fetch_add(1, Relaxed);
        Error::Timeout {
            device: self.name().to_owned(),
            op,
            after: after.unwrap_or_default(),
        }
    }

    fn stats(&self) -> PoolStats {
        let c = &self.counters;
        let mut latency = Histograms::new().ok();
        if let Some(all) = latency.as_mut() {
            for h in &self.histograms {
                let h = lock(h);
                let _ = all.latency.add(&h.latency);
                let _ = all.service.add(&h.service);
            }
        }
        PoolStats {
            name: self.name().to_owned(),
            workers: self.config.workers,
            healthy_workers: self.healthy.load(Relaxed),
            queued: self.queued(),
            in_flight: c.in_flight.load(Relaxed),
            completed: c.completed.load(Relaxed),
            failed: c.failed.load(Relaxed),
            cancelled: c.cancelled.load(Relaxed),
            timed_out: c.timed_out.load(Relaxed),
            rejected_busy: c.rejected_busy.load(Relaxed),
            device_lost: c.device_lost.load(Relaxed),
            recoveries: c.recoveries.load(Relaxed),
            retried: c.retried.load(Relaxed),
            failed_unserved: c.failed_unserved.load(Relaxed),
            latency: latency
                .as_ref()
                .map(|h| LatencySummary::of(&h.latency))
                .unwrap_or_default(),
            service_time: latency
                .as_ref()
                .map(|h| LatencySummary::of(&h.service))
                .unwrap_or_default(),
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

/// How one attempt at a job ended.
enum Attempt {
    /// The caller has its reply.
    Replied { ok: bool },
    /// The device was lost; the caller has no reply yet.
    DeviceLost(Error),
    /// The job panicked; the caller has an error. The device state may be inconsistent.
    Panicked,
}

/// A type-erased queued job.
trait Job<D>: Send {
    fn options(&self) -> &JobOptions;
    fn deadline(&self) -> Option<Instant>;
    fn submitted(&self) -> Instant;
    fn release_slot(&mut self);
    fn caller_gone(&self) -> bool;
    fn attempt(&mut self, device: &mut D, device_name: &str) -> Attempt;
    /// The waker of a caller that got its reply from `attempt` and has not been woken yet.
    fn take_waker(&mut self) -> Option<Waker>;
    fn fail(&mut self, err: Error);
    fn expire(&mut self, device: &str);
}

struct TypedJob<D, T, F> {
    job: F,
    reply: Option<completion::Sender<Result<T>>>,
    /// Set when a reply was delivered without waking its caller yet.
    waker: Option<Waker>,
    permit: Option<OwnedSemaphorePermit>,
    options: JobOptions,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    submitted: Instant,
    _device: PhantomData<fn(&mut D)>,
}

impl<D, T, F> Job<D> for TypedJob<D, T, F>
where
    T: Send + 'static,
    F: FnMut(&mut D) -> Result<T> + Send + 'static,
{
    fn options(&self) -> &JobOptions {
        &self.options
    }
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
    fn submitted(&self) -> Instant {
        self.submitted
    }
    fn release_slot(&mut self) {
        self.permit = None;
    }
    fn caller_gone(&self) -> bool {
        self.reply.as_ref().is_none_or(|r| r.is_closed())
    }
    fn attempt(&mut self, device: &mut D, device_name: &str) -> Attempt {
        match catch_unwind(AssertUnwindSafe(|| (self.job)(device))) {
            Ok(Err(e)) if e.is_device_lost() => Attempt::DeviceLost(e),
            Ok(result) => {
                let ok = result.is_ok();
                if let Some(reply) = self.reply.take() {
                    self.waker = reply.send(result);
                }
                Attempt::Replied { ok }
            }
            Err(_panic) => {
                self.fail(Error::backend(
                    device_name,
                    self.options.op,
                    "the backend panicked; its device state is being rebuilt",
                ));
                Attempt::Panicked
            }
        }
    }
    fn take_waker(&mut self) -> Option<Waker> {
        self.waker.take()
    }
    fn fail(&mut self, err: Error) {
        // Errors are rare: their callers are woken at once.
        if let Some(waker) = self.reply.take().and_then(|reply| reply.send(Err(err))) {
            waker.wake();
        }
    }
    fn expire(&mut self, device: &str) {
        self.fail(Error::Timeout {
            device: device.to_owned(),
            op: self.options.op,
            after: self.timeout.unwrap_or_default(),
        });
    }
}

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
struct Deferred {
    wakers: Mutex<Vec<Waker>>,
    /// A timer-thread flush is pending. One at a time per worker: it may flush a younger batch
    /// early (harmless), and the timer thread wakes at most every [`WAKE_BATCH_MAX_DELAY`].
    armed: std::sync::atomic::AtomicBool,
}

impl Deferred {
    fn flush(&self) {
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

/// One worker thread and the device state it owns.
struct Worker<D: 'static> {
    shared: Arc<Shared<D>>,
    /// Callers whose results are delivered but who have not been woken yet.
    deferred: Arc<Deferred>,
    index: usize,
    state: Option<D>,
    /// How long each kind of operation typically takes on this worker (see [`Typical`]).
    typical: Typical,
}

/// A worker's estimate of how long each kind of operation takes at least: the fastest of its
/// last [`TYPICAL_SAMPLES`] successful jobs of that kind.
///
/// Under overload, a FIFO queue hands the worker jobs close to their deadlines; starting one
/// that cannot finish in time wastes the device on an answer nobody will read, and the next
/// caller misses its deadline too (goodput collapses). So a job with less time left than the
/// fastest recent job of its kind took is refused at once ([`Error::NoTimeLeft`]), not
/// started, when other jobs wait behind it. The fastest, not the median: one device serves slow and fast operations of one
/// kind (RSA-4096 and P-256 signatures), and a fast one must never be refused for the slow
/// ones' sake. With fewer than [`TYPICAL_MIN_SAMPLES`] samples nothing is refused, and every
/// [`TYPICAL_PROBE_EVERY`]th job that would be refused runs anyway, so a device that became
/// faster after a slow spell is noticed.
#[derive(Default)]
struct Typical {
    by_op: Vec<(Operation, OpTimes)>,
}

#[derive(Default)]
struct OpTimes {
    samples: std::collections::VecDeque<Duration>,
    refused_since_probe: u32,
}

const TYPICAL_SAMPLES: usize = 15;
const TYPICAL_MIN_SAMPLES: usize = 5;
const TYPICAL_PROBE_EVERY: u32 = 8;

impl Typical {
    fn times(&mut self, op: Operation) -> &mut OpTimes {
        let i = match self.by_op.iter().position(|(o, _)| *o == op) {
            Some(i) => i,
            None => {
                self.by_op.push((op, OpTimes::default()));
                self.by_op.len() - 1
            }
        };
        &mut self.by_op[i].1
    }

    fn record(&mut self, op: Operation, took: Duration) {
        let t = self.times(op);
        if t.samples.len() == TYPICAL_SAMPLES {
            t.samples.pop_front();
        }
        t.samples.push_back(took);
    }

    /// If a job of `op` starting at `now` cannot finish before `deadline`: how much time it
    /// has left, and the least its kind took recently.
    fn too_late(
        &mut self,
        op: Operation,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Option<(Duration, Duration)> {
        let deadline = deadline?;
        let t = self.times(op);
        if t.samples.len() < TYPICAL_MIN_SAMPLES {
            return None;
        }
        let fastest = t.samples.iter().min().copied()?;
        let left = deadline.saturating_duration_since(now);
        if left >= fastest {
            return None;
        }
        t.refused_since_probe += 1;
        if t.refused_since_probe >= TYPICAL_PROBE_EVERY {
            t.refused_since_probe = 0;
            return None;
        }
        Some((left, fastest))
    }
}

impl<D: 'static> Worker<D> {
    fn start(shared: Arc<Shared<D>>, index: usize, ready: std::sync::mpsc::Sender<Result<()>>) {
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
        }
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

    /// Wakes the caller of a finished job now, or later with others.
    ///
    /// Waking a thread costs several microseconds (more on virtual machines), as much as a
    /// fast device operation. While more jobs wait than there are workers (saturation, when
    /// queueing already delays every caller) and the device is fast, a worker wakes its callers
    /// in batches of up to [`WAKE_BATCH`], none later than [`WAKE_BATCH_MAX_DELAY`] after its
    /// result was ready: throughput is not spent on wake-ups. Otherwise (light load, slow
    /// device) callers are woken at once. Batched wake-ups are always flushed before the
    /// worker waits for work, recovers or exits.
    fn wake(&mut self, waker: Waker, service: Duration) {
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

    fn serve(&mut self, mut job: Box<dyn Job<D>>) {
        let shared = Arc::clone(&self.shared);
        let c = &shared.counters;
        job.release_slot();
        let started = Instant::now();
        if job.caller_gone() {
            // A caller whose deadline passed gave up with a Timeout it already counted.
            if job.deadline().is_none_or(|d| started < d) {
                c.cancelled.fetch_add(1, Relaxed);
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
        c.in_flight.fetch_add(1, Relaxed);
        let ok = self.run_with_recovery(job.as_mut());
        c.in_flight.fetch_sub(1, Relaxed);
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
        if let Some(waker) = job.take_waker() {
            self.wake(waker, done - started);
        }
    }

    /// Runs the job; on device loss rebuilds the state at once and retries an idempotent job
    /// once. Returns whether the caller got a success.
    fn run_with_recovery(&mut self, job: &mut dyn Job<D>) -> Option<bool> {
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
    }

    /// One immediate attempt to rebuild the device state (none while an authentication
    /// failure stands: that waits for [`DevicePool::reconnect`]).
    fn reconnect_now(&mut self) -> bool {
        if self.shared.auth_blocked() {
            return false;
        }
        match self.shared.build(self.index) {
            Ok(state) => {
                self.state = Some(state);
                self.shared.counters.recoveries.fetch_add(1, Relaxed);
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
    fn recover(&mut self) -> bool {
        let shared = Arc::clone(&self.shared);
        shared.healthy.fetch_sub(1, Relaxed);
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
                    shared.healthy.fetch_add(1, Relaxed);
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

impl<D: 'static> Drop for Worker<D> {
    fn drop(&mut self) {
        // Whatever path ends the worker, no caller is left unwoken.
        self.deferred.flush();
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}
