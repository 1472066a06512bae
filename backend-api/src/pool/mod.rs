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
//! - **Metrics and traces**: the same, per device, operation and scheme, through the `metrics`
//!   facade (histograms of device and total time, failures by [`ErrorKind`](crate::ErrorKind),
//!   queue and worker gauges), and one `tracing` span per job; see README.md for the list.
//!   Install a recorder before opening stores: a pool registers its handles when it starts.
//! - **Coalesced wake-ups under load**: waking a caller's thread costs as much as a fast
//!   device operation (a cross-CPU interrupt, dearer still in a virtual machine). When more
//!   jobs wait than there are workers and operations are fast (≤ 250 µs), a worker wakes its
//!   callers in batches (up to 32, none more than 4 ms after its result was ready). At light
//!   load, or for slow devices, every caller is woken at once.
//!
//! A TPM executes one command at a time: give TPM pools one worker. PKCS#11 tokens can serve
//! several sessions in parallel; one worker per session.

mod config;
mod deadline;
mod job;
mod metrics;
mod queue;
mod recovery;
mod shutdown;
mod stats;
mod wake;
mod worker;

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use self::queue::{Queue, Shared};
use self::stats::{Counters, Histograms};
use crate::error::{Error, Operation, Result};
use crate::sync::lock;

pub use self::config::{Backpressure, JobOptions, JobTimeout, PoolConfig};
pub use self::shutdown::ShutdownReport;
pub use self::stats::{LatencySummary, PoolStats};

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
            metrics: metrics::PoolMetrics::new(&config.name),
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
