//! `DevicePool` through its public API: the guarantees its module docs state (backpressure,
//! deadlines, cancellation, recovery, shutdown, stats), on a fake device that can disconnect.
//!
//! Every test synchronizes with channels; where a background state change must be observed,
//! it polls `stats()` or a counter with a bounded loop that fails the test when it runs out.
//! Sleeps stand only for device work or for a deadline to pass (a clock fact a sleep
//! guarantees), never for "by now the pool did X". A check that something did *not* happen
//! first waits for what would have made it happen (a device with the same backoff being
//! retried: `RetryClock`), so a slow machine cannot pass it vacuously.

// clippy.toml allows these inside `#[test]` fns only; the shared helpers below are test code
// too, where a failed expectation must fail the test.
#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] fns"
)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::executor::block_on;
use hardkey_api::{
    Backpressure, DevicePool, Error, ErrorKind, JobOptions, JobTimeout, Operation, PoolConfig,
    PoolStats, Result,
};

/// Upper bound for anything the tests wait for; generous for a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(10);

/// Device state built per worker: which worker, and which build of the device.
#[derive(Debug)]
struct TestDevice {
    id: usize,
    generation: usize,
}

/// A factory that counts builds and can be switched "down" (the device disconnected).
#[derive(Clone, Default)]
struct Device {
    builds: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

impl Device {
    fn factory(&self) -> impl Fn(usize) -> Result<TestDevice> + Send + Sync + 'static {
        let builds = Arc::clone(&self.builds);
        let down = Arc::clone(&self.down);
        move |id| {
            if down.load(SeqCst) {
                return Err(lost());
            }
            let generation = builds.fetch_add(1, SeqCst) + 1;
            Ok(TestDevice { id, generation })
        }
    }

    fn builds(&self) -> usize {
        self.builds.load(SeqCst)
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, SeqCst);
    }
}

fn lost() -> Error {
    Error::device_unavailable("test", "session closed")
}

fn start_pool(config: PoolConfig) -> (DevicePool<TestDevice>, Device) {
    let device = Device::default();
    let pool = DevicePool::new(config, device.factory()).expect("pool starts");
    (pool, device)
}

fn sign() -> JobOptions {
    JobOptions::new(Operation::Sign)
}

type Job<T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'static>>;

/// Submits a job that reports that it started and then blocks its worker until released.
/// Returns once the job is running.
struct Hold {
    release: Sender<()>,
    job: Job<usize>,
}

fn hold(pool: &DevicePool<TestDevice>) -> Hold {
    let (started_tx, started_rx) = channel();
    let (release, release_rx) = channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let mut job: Job<usize> = Box::pin(pool.run(
        sign().with_timeout(JobTimeout::Never),
        move |d: &mut TestDevice| {
            started_tx.send(()).expect("test waits");
            // A dropped sender releases too, so a failing test cannot wedge a worker.
            let _ = lock(&release_rx).recv_timeout(PATIENCE);
            Ok(d.id)
        },
    ));
    assert!(job.as_mut().now_or_never().is_none());
    started_rx
        .recv_timeout(PATIENCE)
        .expect("held job starts on a worker");
    Hold { release, job }
}

impl Hold {
    fn release(self) -> Job<usize> {
        self.release.send(()).expect("held job still waiting");
        self.job
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("not poisoned")
}

/// Polls a future once (with a no-op waker) so that it is enqueued; it must still be pending.
fn enqueue<T>(job: &mut Job<T>) {
    assert!(
        job.as_mut().now_or_never().is_none(),
        "job should still be pending"
    );
}

/// Waits (bounded) until the pool's stats satisfy `ok`.
fn wait_for(pool: &DevicePool<TestDevice>, what: &str, ok: impl Fn(&PoolStats) -> bool) {
    let start = Instant::now();
    loop {
        let stats = pool.stats();
        if ok(&stats) {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "timed out waiting for {what}: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs `f` on its own thread and fails the test if it does not return within `PATIENCE`.
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(PATIENCE)
        .unwrap_or_else(|_| panic!("{what} did not return within {PATIENCE:?}"))
}

fn assert_send_static<T: Send + 'static>(_: &T) {}

fn counting_job(
    counter: &Arc<AtomicUsize>,
) -> impl FnMut(&mut TestDevice) -> Result<usize> + Send + use<> {
    let counter = Arc::clone(counter);
    move |d| {
        counter.fetch_add(1, SeqCst);
        Ok(d.id)
    }
}

// 1.
#[test]
fn futures_are_send_static_and_runtime_agnostic() {
    let (pool, _device) = start_pool(PoolConfig::new("agnostic").workers(2));
    let job = |x: u32| move |_: &mut TestDevice| Ok(x * 2);

    let fut = pool.run(sign(), job(1));
    assert_send_static(&fut);
    assert_eq!(block_on(fut).unwrap(), 2);

    let current = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert_eq!(current.block_on(pool.run(sign(), job(2))).unwrap(), 4);

    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    // Spawning proves `Send + 'static` at run time too: the task may move between threads.
    let task = multi.spawn(pool.run(sign(), job(3)));
    assert_eq!(multi.block_on(task).unwrap().unwrap(), 6);
}

// 2.
#[test]
fn lazy_and_dropped_futures_never_run() {
    let (pool, _device) = start_pool(PoolConfig::new("cancel").op_timeout(None));
    let ran = Arc::new(AtomicUsize::new(0));

    // Created, never polled: nothing is submitted.
    let never_polled = pool.run(sign(), counting_job(&ran));
    block_on(pool.run(sign(), |_| Ok(()))).unwrap();
    drop(never_polled);
    wait_for(&pool, "one completion", |s| s.completed == 1);
    assert_eq!(ran.load(SeqCst), 0);

    let held = hold(&pool);
    let mut queued: Vec<Job<usize>> = (0..50)
        .map(|_| Box::pin(pool.run(sign(), counting_job(&ran))) as Job<usize>)
        .collect();
    queued.iter_mut().for_each(enqueue);
    assert_eq!(pool.stats().queued, 50);
    drop(queued);
    assert_eq!(block_on(held.release()).unwrap(), 0);

    // Jobs run in order on the single worker, so once this one ran, the 50 were dequeued.
    assert_eq!(block_on(pool.run(sign(), |d| Ok(d.generation))).unwrap(), 1);
    assert_eq!(ran.load(SeqCst), 0, "a cancelled job ran");
    wait_for(&pool, "completions", |s| s.completed == 3);
    let stats = pool.stats();
    assert_eq!(stats.cancelled, 50, "{stats:?}");
    assert_eq!((stats.queued, stats.failed, stats.timed_out), (0, 0, 0));
}

// 3.
#[test]
fn full_queue_makes_callers_wait_in_fifo_order() {
    let (pool, _device) = start_pool(PoolConfig::new("wait").queue_capacity(2).op_timeout(None));
    let order = Arc::new(Mutex::new(Vec::new()));
    let held = hold(&pool);

    let mut jobs: Vec<Job<usize>> = (1..=6_usize)
        .map(|i| {
            let order = Arc::clone(&order);
            Box::pin(pool.run(sign(), move |_: &mut TestDevice| {
                lock(&order).push(i);
                Ok(i)
            })) as Job<usize>
        })
        .collect();
    // Two take the queue slots; the other four wait for a slot, in submission order.
    jobs.iter_mut().for_each(enqueue);
    assert_eq!(pool.stats().queued, 2);
    for job in &mut jobs {
        assert!(job.as_mut().now_or_never().is_none());
    }
    assert!(lock(&order).is_empty());

    assert_eq!(block_on(held.release()).unwrap(), 0);
    let results = block_on(futures::future::join_all(jobs));
    let results: Vec<usize> = results.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(results, [1, 2, 3, 4, 5, 6]);
    assert_eq!(*lock(&order), [1, 2, 3, 4, 5, 6], "not FIFO");
    wait_for(&pool, "completions", |s| s.completed == 7);
    assert_eq!(pool.stats().rejected_busy, 0);
}

// 4.
#[test]
fn full_queue_fails_fast_with_busy() {
    let config = PoolConfig::new("failfast")
        .queue_capacity(2)
        .backpressure(Backpressure::FailFast)
        .op_timeout(None);
    let (pool, _device) = start_pool(config);
    let ran = Arc::new(AtomicUsize::new(0));
    let held = hold(&pool);

    let mut queued: Vec<Job<usize>> = (0..2)
        .map(|_| Box::pin(pool.run(sign(), counting_job(&ran))) as Job<usize>)
        .collect();
    queued.iter_mut().for_each(enqueue);

    let start = Instant::now();
    let err = block_on(pool.run(sign(), counting_job(&ran))).unwrap_err();
    assert!(start.elapsed() < PATIENCE / 2);
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    assert!(err.is_retryable() && !err.is_device_lost());
    assert!(matches!(err, Error::Busy { capacity: 2, .. }), "{err:?}");
    assert_eq!(pool.stats().rejected_busy, 1);

    block_on(held.release()).unwrap();
    for job in queued {
        block_on(job).unwrap();
    }
    assert_eq!(ran.load(SeqCst), 2, "the busy job must not run");
    // A slot is free again.
    block_on(pool.run(sign(), |_| Ok(()))).unwrap();
    assert_eq!(pool.stats().rejected_busy, 1);
}

// 5.
#[test]
fn expired_jobs_time_out_and_never_run() {
    let timeout = Duration::from_millis(100);
    let (pool, _device) = start_pool(PoolConfig::new("deadline").op_timeout(Some(timeout)));
    let ran = Arc::new(AtomicUsize::new(0));
    let held = hold(&pool);

    let start = Instant::now();
    let err = block_on(pool.run(sign(), counting_job(&ran))).unwrap_err();
    assert!(start.elapsed() >= timeout);
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.is_retryable());
    assert!(
        matches!(err, Error::Timeout { after, op: Operation::Sign, .. } if after == timeout),
        "{err:?}"
    );
    assert_eq!(pool.stats().timed_out, 1);

    block_on(held.release()).unwrap();
    // FIFO on one worker: once this ran, the expired job was dequeued (and skipped).
    block_on(pool.run(sign(), |_| Ok(()))).unwrap();
    assert_eq!(ran.load(SeqCst), 0, "an expired job ran");
}

// 5b.
#[test]
fn per_job_timeouts_override_the_pool_default() {
    // A default deadline that would fire: `Never` and a long `After` outlive it.
    let (pool, _device) =
        start_pool(PoolConfig::new("override").op_timeout(Some(Duration::from_millis(50))));
    let held = hold(&pool);
    let mut never: Job<u8> = Box::pin(pool.run(sign().with_timeout(JobTimeout::Never), |_| Ok(1)));
    let long = JobTimeout::After(PATIENCE);
    let mut after: Job<u8> = Box::pin(pool.run(sign().with_timeout(long), |_| Ok(2)));
    enqueue(&mut never);
    enqueue(&mut after);
    // Past the pool default (a shorter wait only makes this check weaker).
    std::thread::sleep(Duration::from_millis(200));
    block_on(held.release()).unwrap();
    assert_eq!(block_on(never).unwrap(), 1);
    assert_eq!(block_on(after).unwrap(), 2);
    assert_eq!(pool.stats().timed_out, 0);

    // A short `After` on a pool without a default deadline.
    let (pool, _device) = start_pool(PoolConfig::new("after").op_timeout(None));
    let ran = Arc::new(AtomicUsize::new(0));
    let held = hold(&pool);
    let short = Duration::from_millis(30);
    let options = sign().with_timeout(JobTimeout::After(short));
    let err = block_on(pool.run(options, counting_job(&ran))).unwrap_err();
    assert!(
        matches!(err, Error::Timeout { after, .. } if after == short),
        "{err:?}"
    );
    block_on(held.release()).unwrap();
    block_on(pool.run(sign(), |_| Ok(()))).unwrap();
    assert_eq!(ran.load(SeqCst), 0);
}

/// A job that reports the device lost on its first run and the device generation afterwards.
fn lost_once(
    runs: &Arc<AtomicUsize>,
) -> impl FnMut(&mut TestDevice) -> Result<usize> + Send + use<> {
    let runs = Arc::clone(runs);
    move |d| match runs.fetch_add(1, SeqCst) {
        0 => Err(lost()),
        _ => Ok(d.generation),
    }
}

// 6.
#[test]
fn lost_device_is_rebuilt_and_idempotent_jobs_retried() {
    let (pool, device) = start_pool(PoolConfig::new("recover").workers(1));
    assert_eq!(device.builds(), 1);

    let runs = Arc::new(AtomicUsize::new(0));
    let idempotent = JobOptions::idempotent(Operation::Sign);
    // Transparent: ran twice, the second time on a rebuilt device.
    assert_eq!(block_on(pool.run(idempotent, lost_once(&runs))).unwrap(), 2);
    assert_eq!(runs.load(SeqCst), 2);
    assert_eq!(device.builds(), 2);

    let runs = Arc::new(AtomicUsize::new(0));
    let err = block_on(pool.run(sign(), lost_once(&runs))).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeviceUnavailable, "{err}");
    assert!(err.is_retryable() && err.is_device_lost());
    assert_eq!(runs.load(SeqCst), 1, "a non-idempotent job was retried");
    // The device was rebuilt anyway: the next job sees generation 3.
    assert_eq!(block_on(pool.run(sign(), |d| Ok(d.generation))).unwrap(), 3);

    wait_for(&pool, "counters", |s| s.completed + s.failed == 3);
    let s = pool.stats();
    assert_eq!(
        (
            s.device_lost,
            s.recoveries,
            s.retried,
            s.completed,
            s.failed
        ),
        (2, 2, 1, 2, 1),
        "{s:?}"
    );
    assert_eq!(s.healthy_workers, 1);
}

// 7.
#[test]
fn device_down_fails_fast_then_comes_back() {
    let workers = 2;
    let config = PoolConfig::new("down")
        .workers(workers)
        .backoff(Duration::from_millis(5), Duration::from_millis(50))
        .op_timeout(Some(PATIENCE));
    let (pool, device) = start_pool(config);
    device.set_down(true);

    // One device-lost job per worker: a rendezvous makes sure both workers take one.
    let (a, b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let rendezvous = Arc::new(std::sync::Barrier::new(workers));
    let lose = |runs: &Arc<AtomicUsize>| {
        let runs = Arc::clone(runs);
        let rendezvous = Arc::clone(&rendezvous);
        move |_: &mut TestDevice| -> Result<()> {
            runs.fetch_add(1, SeqCst);
            rendezvous.wait();
            Err(lost())
        }
    };
    let idempotent = JobOptions::idempotent(Operation::Sign);
    let start = Instant::now();
    let results = block_on(futures::future::join(
        pool.run(idempotent, lose(&a)),
        pool.run(idempotent, lose(&b)),
    ));
    for r in [results.0, results.1] {
        let err = r.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DeviceUnavailable, "{err}");
    }
    assert!(start.elapsed() < PATIENCE / 2, "{:?}", start.elapsed());
    // Not retried: the device could not be rebuilt.
    assert_eq!((a.load(SeqCst), b.load(SeqCst)), (1, 1));

    wait_for(&pool, "all workers unhealthy", |s| s.healthy_workers == 0);
    let ran = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let err = block_on(pool.run(sign(), counting_job(&ran))).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeviceUnavailable, "{err}");
    assert!(err.is_retryable());
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert!(err.to_string().contains("down"), "names the device: {err}");
    assert_eq!(ran.load(SeqCst), 0);

    let builds = device.builds();
    device.set_down(false);
    wait_for(&pool, "all workers healthy again", |s| {
        s.healthy_workers == workers
    });
    assert_eq!(device.builds(), builds + workers);
    let generations = block_on(pool.run(sign(), |d| Ok(d.generation))).unwrap();
    assert!(generations > 2, "runs on a rebuilt device");
    let s = pool.stats();
    assert_eq!((s.device_lost, s.recoveries), (2, 2), "{s:?}");
}

// 8.
#[test]
fn factory_failure_at_startup_is_returned() {
    let result = bounded("DevicePool::new", || {
        DevicePool::<TestDevice>::new(PoolConfig::new("auth").workers(3), |id| {
            if id == 1 {
                Err(Error::AuthFailed {
                    target: "token 'web'".into(),
                    source: "CKR_PIN_INCORRECT".into(),
                })
            } else {
                Ok(TestDevice { id, generation: 1 })
            }
        })
    });
    let err = result.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuthFailed, "{err}");
    assert!(err.is_auth() && !err.is_retryable());

    let result = bounded("DevicePool::new", || {
        DevicePool::<TestDevice>::new(PoolConfig::new("lost"), |_| Err(lost()))
    });
    assert_eq!(result.unwrap_err().kind(), ErrorKind::DeviceUnavailable);
}

// 9.
#[test]
fn shutdown_with_short_grace_fails_the_queue_and_detaches_a_stuck_worker() {
    let (pool, _device) = start_pool(PoolConfig::new("stuck").op_timeout(None));
    let ran = Arc::new(AtomicUsize::new(0));
    let held = hold(&pool);
    let mut queued: Vec<Job<usize>> = (0..3)
        .map(|_| Box::pin(pool.run(sign(), counting_job(&ran))) as Job<usize>)
        .collect();
    queued.iter_mut().for_each(enqueue);

    let grace = Duration::from_millis(50);
    let shutdown = pool.clone();
    let start = Instant::now();
    let report = bounded("shutdown", move || shutdown.shutdown(grace));
    assert!(start.elapsed() >= grace);
    assert_eq!(report.failed_queued, 3, "{report:?}");
    assert_eq!(report.detached_workers, 1, "{report:?}");
    for job in queued {
        let err = block_on(job).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ShutDown, "{err}");
        assert!(!err.is_retryable());
    }
    let err = block_on(pool.run(sign(), counting_job(&ran))).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ShutDown, "{err}");

    // The detached worker finishes its call; nothing queued runs after it.
    block_on(held.release()).unwrap();
    assert_eq!(ran.load(SeqCst), 0);
    // Idempotent.
    let again = pool.shutdown(Duration::ZERO);
    assert_eq!((again.failed_queued, again.detached_workers), (0, 0));
}

// 9b.
#[test]
fn shutdown_with_long_grace_serves_the_queue_and_joins_workers() {
    // Repeated: the join/detach decision must not race with workers that are just exiting.
    for round in 0..20 {
        let (pool, device) = start_pool(PoolConfig::new("drain").workers(2).op_timeout(None));
        let held = [hold(&pool), hold(&pool)];
        let mut queued: Vec<Job<usize>> = (0..4_usize)
            .map(|i| Box::pin(pool.run(sign(), move |_| Ok(i))) as Job<usize>)
            .collect();
        queued.iter_mut().for_each(enqueue);
        let held = held.map(Hold::release);

        let report = bounded("shutdown", move || pool.shutdown(PATIENCE));
        assert_eq!(report.failed_queued, 0, "round {round}: {report:?}");
        assert_eq!(report.detached_workers, 0, "round {round}: {report:?}");
        for job in held {
            block_on(job).unwrap();
        }
        for (i, job) in queued.into_iter().enumerate() {
            assert_eq!(block_on(job).unwrap(), i);
        }
        assert_eq!(device.builds(), 2);
    }
}

// 9c.
#[test]
fn dropping_the_last_handle_still_serves_queued_jobs() {
    let (pool, _device) = start_pool(PoolConfig::new("dropped").op_timeout(None));
    let held = hold(&pool);
    let mut queued: Vec<Job<usize>> = (0..3_usize)
        .map(|i| Box::pin(pool.run(sign(), move |_| Ok(i))) as Job<usize>)
        .collect();
    queued.iter_mut().for_each(enqueue);
    // Created but not yet polled when the last handle went: the future holds the pool, so it
    // is still served.
    let late = pool.run(sign(), |_| Ok(99));
    drop(pool);

    let held = held.release();
    block_on(held).unwrap();
    for (i, job) in queued.into_iter().enumerate() {
        assert_eq!(block_on(job).unwrap(), i);
    }
    assert_eq!(block_on(late).unwrap(), 99);
}

// 10.
#[test]
fn panicking_job_fails_its_caller_and_the_worker_survives() {
    let (pool, device) = start_pool(PoolConfig::new("panic"));
    let err = block_on(pool.run(sign(), |_: &mut TestDevice| -> Result<()> {
        panic!("backend bug (expected by this test)")
    }))
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    // The state the panic may have left inconsistent was rebuilt.
    for _ in 0..3 {
        assert_eq!(block_on(pool.run(sign(), |d| Ok(d.generation))).unwrap(), 2);
    }
    assert_eq!(device.builds(), 2);
    wait_for(&pool, "counters", |s| s.completed == 3 && s.failed == 1);
    assert_eq!(pool.stats().healthy_workers, 1);
}

// 11.
#[test]
fn stats_count_jobs_and_report_latency() {
    let (pool, _device) = start_pool(PoolConfig::new("stats").workers(1).op_timeout(None));
    let n = 20;
    for i in 0..n {
        let job = move |_: &mut TestDevice| {
            std::thread::sleep(Duration::from_micros(200));
            Ok(i)
        };
        assert_eq!(block_on(pool.run(sign(), job)).unwrap(), i);
    }
    for _ in 0..2 {
        let fail = |_: &mut TestDevice| -> Result<()> {
            Err(Error::backend(
                "stats",
                Operation::Sign,
                "CKR_FUNCTION_FAILED",
            ))
        };
        let err = block_on(pool.run(sign(), fail)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Backend);
    }
    wait_for(&pool, "counters", |s| s.completed + s.failed == n + 2);
    let s = pool.stats();
    assert_eq!((s.completed, s.failed), (n, 2), "{s:?}");
    assert_eq!((s.cancelled, s.timed_out, s.rejected_busy), (0, 0, 0));
    assert_eq!((s.device_lost, s.recoveries, s.retried), (0, 0, 0));
    for l in [s.latency, s.service_time] {
        assert_eq!(l.count, n + 2);
        assert!(l.p50 > Duration::ZERO, "{l:?}");
        assert!(l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.max, "{l:?}");
    }
    assert!(s.latency.max >= Duration::from_micros(200));
    assert!(s.service_time.max <= s.latency.max);
    assert!(
        s.to_string().starts_with("stats: 1/1 workers healthy"),
        "{s}"
    );

    let held = hold(&pool);
    let mut queued: Vec<Job<u8>> = (0..2)
        .map(|_| Box::pin(pool.run(sign(), |_| Ok(0_u8))) as Job<u8>)
        .collect();
    queued.iter_mut().for_each(enqueue);
    let s = pool.stats();
    assert_eq!((s.in_flight, s.queued), (1, 2), "{s:?}");
    block_on(held.release()).unwrap();
    for job in queued {
        block_on(job).unwrap();
    }
    wait_for(&pool, "idle pool", |s| s.completed == n + 3);
    let s = pool.stats();
    assert_eq!((s.in_flight, s.queued), (0, 0), "{s:?}");
}

// 12.
#[test]
fn many_concurrent_jobs_on_two_workers() {
    let (pool, _device) = start_pool(PoolConfig::new("many").workers(2).queue_capacity(64));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    // The first two jobs meet each other, so each worker serves at least one of them.
    let ((a_tx, a_rx), (b_tx, b_rx)) = (channel::<()>(), channel::<()>());
    let meet = |tx: Sender<()>, rx: Receiver<()>| {
        let rx = Mutex::new(rx);
        move |d: &mut TestDevice| {
            tx.send(()).expect("other side alive");
            lock(&rx).recv_timeout(PATIENCE).expect("the other worker");
            Ok((usize::MAX, d.id))
        }
    };
    let first = pool.run(sign(), meet(a_tx, b_rx));
    let second = pool.run(sign(), meet(b_tx, a_rx));
    let jobs = (0..2000).map(|i| {
        let run = pool.run(sign(), move |d: &mut TestDevice| Ok((i, d.id)));
        async move { run.await.map(|(echo, id)| (i, echo, id)) }
    });
    let results = runtime.block_on(async {
        let (a, b, rest) =
            futures::future::join3(first, second, futures::future::join_all(jobs)).await;
        (a.unwrap(), b.unwrap(), rest)
    });
    assert_ne!(
        results.0.1, results.1.1,
        "both workers served the meeting jobs"
    );
    let mut served = [0_usize; 2];
    for r in results.2 {
        let (i, echo, id) = r.unwrap();
        assert_eq!(i, echo);
        served[id] += 1;
    }
    assert_eq!(served[0] + served[1], 2000);
    wait_for(&pool, "counters", |s| s.completed == 2002);
}

// 13.
#[test]
fn invalid_config_is_rejected() {
    let configs = [
        PoolConfig::new("zero-workers").workers(0),
        PoolConfig::new("zero-queue").queue_capacity(0),
        PoolConfig::new("too-many").workers(100_000),
        PoolConfig::new("zero-backoff").backoff(Duration::ZERO, Duration::from_secs(1)),
        PoolConfig::new("inverted").backoff(Duration::from_secs(2), Duration::from_secs(1)),
    ];
    for config in configs {
        let name = config.name.clone();
        let built = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&built);
        let result = DevicePool::new(config, move |id| {
            counter.fetch_add(1, SeqCst);
            Ok(TestDevice { id, generation: 1 })
        });
        let err = result.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{name}: {err}");
        assert_eq!(built.load(SeqCst), 0, "{name}: no worker started");
    }
}

// 10b.
#[test]
fn panicking_factory_during_recovery_does_not_kill_the_worker() {
    let builds = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&builds);
    let config = PoolConfig::new("factory-panic")
        .backoff(Duration::from_millis(5), Duration::from_millis(50))
        .op_timeout(Some(PATIENCE));
    let pool = DevicePool::new(config, move |id| {
        let generation = counter.fetch_add(1, SeqCst) + 1;
        // The reconnection after the first loss hits a backend bug.
        assert_ne!(generation, 2, "factory bug (expected by this test)");
        Ok(TestDevice { id, generation })
    })
    .unwrap();
    let err =
        block_on(pool.run(sign(), |_: &mut TestDevice| -> Result<()> { Err(lost()) })).unwrap_err();
    assert!(err.is_retryable(), "{err}");
    // The worker keeps trying (with backoff), recovers and serves again.
    wait_for(&pool, "recovery", |s| {
        s.recoveries == 1 && s.healthy_workers == 1
    });
    let generation = block_on(pool.run(sign(), |d| Ok(d.generation)));
    assert_eq!(generation.unwrap(), 3);
    wait_for(&pool, "idle pool", |s| s.in_flight == 0 && s.completed == 1);
    let report = bounded("shutdown", move || pool.shutdown(PATIENCE));
    assert_eq!(report.detached_workers, 0, "{report:?}");
}

/// A factory whose credentials can be made wrong, or whose device can go away: counts every
/// attempt.
#[derive(Clone, Default)]
struct Token {
    attempts: Arc<AtomicUsize>,
    wrong_pin: Arc<AtomicBool>,
    down: Arc<AtomicBool>,
}

impl Token {
    fn factory(&self) -> impl Fn(usize) -> Result<TestDevice> + Send + Sync + 'static {
        let attempts = Arc::clone(&self.attempts);
        let wrong_pin = Arc::clone(&self.wrong_pin);
        let down = Arc::clone(&self.down);
        move |id| {
            let generation = attempts.fetch_add(1, SeqCst) + 1;
            if wrong_pin.load(SeqCst) {
                return Err(Error::AuthFailed {
                    target: "token 'test'".into(),
                    source: "CKR_PIN_INCORRECT".into(),
                });
            }
            if down.load(SeqCst) {
                return Err(lost());
            }
            Ok(TestDevice { id, generation })
        }
    }

    fn attempts(&self) -> usize {
        self.attempts.load(SeqCst)
    }

    /// Waits (bounded) until the factory has been tried `n` times in all.
    fn wait_for_attempts(&self, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.attempts() < n {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} attempts, {} made",
                self.attempts()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The measure of a "nothing happened" window: a pool whose device is down (not refusing the
/// PIN), so its worker retries with the backoff it was given. A wait for `n` of its retries
/// is a window in which a worker with that backoff that did retry would have retried about
/// `n` times too, however slow the machine.
struct RetryClock {
    token: Token,
    _pool: DevicePool<TestDevice>,
}

impl RetryClock {
    fn start(config: PoolConfig) -> Self {
        let token = Token::default();
        let pool = DevicePool::new(config.workers(1), token.factory()).expect("pool starts");
        token.down.store(true, SeqCst);
        let err = block_on(pool.run(sign(), |_: &mut TestDevice| -> Result<()> { Err(lost()) }))
            .expect_err("the device is lost");
        assert!(err.is_retryable(), "{err}");
        Self { token, _pool: pool }
    }

    /// Waits (bounded) for `n` more retries of the down device.
    fn wait_retries(&self, n: usize) {
        self.token.wait_for_attempts(self.token.attempts() + n);
    }
}

#[test]
fn a_wrong_pin_is_tried_once_at_startup_not_once_per_worker() {
    let token = Token::default();
    token.wrong_pin.store(true, SeqCst);
    let err = DevicePool::new(PoolConfig::new("pin").workers(4), token.factory()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuthFailed);
    assert_eq!(
        token.attempts(),
        1,
        "each failed login counts against the PIN"
    );
}

#[test]
fn auth_failures_are_never_retried_until_reconnect() {
    let token = Token::default();
    let backoff =
        |name| PoolConfig::new(name).backoff(Duration::from_millis(2), Duration::from_millis(5));
    let pool = DevicePool::new(backoff("pin").workers(3), token.factory()).unwrap();
    assert_eq!(token.attempts(), 3);

    // The PIN changes under us and every session drops.
    token.wrong_pin.store(true, SeqCst);
    for _ in 0..3 {
        let err = block_on(pool.run(sign(), |_: &mut TestDevice| -> Result<()> { Err(lost()) }))
            .unwrap_err();
        assert!(err.is_device_lost() || err.is_auth(), "{err}");
    }
    wait_for(&pool, "all workers unhealthy", |s| s.healthy_workers == 0);
    let after_loss = token.attempts();
    // A device that is down and not refusing the PIN, with the same backoff, is retried 20
    // times meanwhile: a worker retrying the wrong PIN would have tried about as often.
    let clock = RetryClock::start(backoff("clock"));
    clock.wait_retries(20);
    assert_eq!(
        token.attempts(),
        after_loss,
        "a wrong PIN was retried automatically"
    );
    // Callers are told it is the PIN, not a retriable outage.
    let err = block_on(pool.run(sign(), |d: &mut TestDevice| Ok(d.id))).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuthFailed, "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("CKR_PIN_INCORRECT"), "{err}");

    // reconnect() with the PIN still wrong: exactly one more attempt, not one per worker.
    pool.reconnect();
    token.wait_for_attempts(after_loss + 1);
    // The other two workers were woken too; in 20 more retries of the clock none followed.
    clock.wait_retries(20);
    assert_eq!(token.attempts(), after_loss + 1);

    // Fixed: one reconnect brings every worker back.
    token.wrong_pin.store(false, SeqCst);
    pool.reconnect();
    wait_for(&pool, "all workers back", |s| s.healthy_workers == 3);
    assert!(block_on(pool.run(sign(), |d: &mut TestDevice| Ok(d.id))).is_ok());
}

#[test]
fn huge_durations_do_not_overflow() {
    let (pool, _device) = start_pool(PoolConfig::new("huge").op_timeout(Some(Duration::MAX)));
    assert_eq!(block_on(pool.run(sign(), |_| Ok(1))).unwrap(), 1);
    let job = sign().with_timeout(JobTimeout::After(Duration::MAX));
    assert_eq!(block_on(pool.run(job, |_| Ok(2))).unwrap(), 2);
    let report = pool.shutdown(Duration::MAX);
    assert_eq!(report.detached_workers, 0);
}

/// Coalesced wake-ups are bounded in time: fast jobs queued ahead of a slow one reach their
/// callers long before the slow job ends, however the worker batches its wake-ups.
#[test]
fn batched_wake_ups_do_not_wait_for_the_next_job() {
    let (pool, _device) = start_pool(PoolConfig::new("wake").op_timeout(None));
    let held = hold(&pool);
    let mut fast: Vec<Job<usize>> = (0..10_usize)
        .map(|i| Box::pin(pool.run(sign(), move |_| Ok(i))) as Job<usize>)
        .collect();
    fast.iter_mut().for_each(enqueue);
    let mut slow: Job<usize> = Box::pin(pool.run(
        sign().with_timeout(JobTimeout::Never),
        |_: &mut TestDevice| {
            std::thread::sleep(Duration::from_millis(1500));
            Ok(99)
        },
    ));
    enqueue(&mut slow);
    // One more behind the slow job keeps the queue deeper than the worker count, so the
    // worker keeps batching when it starts the slow job.
    let mut after: Job<usize> = Box::pin(pool.run(sign(), |_| Ok(100)));
    enqueue(&mut after);
    let waiter = std::thread::spawn(move || {
        let start = Instant::now();
        let results = block_on(futures::future::join_all(fast));
        (start.elapsed(), results)
    });
    let released = Instant::now();
    block_on(held.release()).unwrap();
    let (_, results) = waiter.join().unwrap();
    let woken_after = released.elapsed();
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), i);
    }
    assert!(
        woken_after < Duration::from_millis(1000),
        "fast jobs' callers waited {woken_after:?} behind the slow job"
    );
    assert_eq!(block_on(slow).unwrap(), 99);
    assert_eq!(block_on(after).unwrap(), 100);
}

/// Offers `offered` jobs at one per `every`, each taking `service` on a device with two
/// workers, and returns each caller's latency and result (T7 of issue 12).
fn offer_load(
    config: PoolConfig,
    offered: usize,
    every: Duration,
    service: Duration,
) -> Vec<(Duration, Result<usize>)> {
    let (pool, _device) = start_pool(config);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut tasks = Vec::with_capacity(offered);
        let mut next = tokio::time::Instant::now();
        for i in 0..offered {
            tokio::time::sleep_until(next).await;
            next += every;
            let job = pool.run(sign(), move |_: &mut TestDevice| {
                std::thread::sleep(service);
                Ok(i)
            });
            tasks.push(tokio::spawn(async move {
                let start = Instant::now();
                let result = job.await;
                (start.elapsed(), result)
            }));
        }
        let mut out = Vec::with_capacity(offered);
        for task in tasks {
            out.push(task.await.expect("caller task"));
        }
        out
    })
}

/// 5× overload (a job every 2 ms on two workers that each take 20 ms per job: 1,000 jobs/s
/// offered, 100/s served) with `FailFast`: the excess is refused with Busy at once, in the
/// caller's first poll, never after a wait; what was accepted succeeds.
#[test]
fn overload_fails_fast_with_busy_at_once() {
    let config = PoolConfig::new("overload-failfast")
        .workers(2)
        .queue_capacity(8)
        .backpressure(Backpressure::FailFast)
        .op_timeout(None);
    let results = offer_load(
        config,
        300,
        Duration::from_millis(2),
        Duration::from_millis(20),
    );
    let busy: Vec<Duration> = results
        .iter()
        .filter(|(_, r)| r.as_ref().is_err_and(|e| e.kind() == ErrorKind::Busy))
        .map(|(d, _)| *d)
        .collect();
    let ok = results.iter().filter(|(_, r)| r.is_ok()).count();
    let slowest = busy.iter().max().copied().unwrap_or_default();
    println!(
        "5x overload, FailFast: {ok} served, {} busy, slowest Busy answer {slowest:?}",
        busy.len()
    );
    assert_eq!(ok + busy.len(), results.len(), "other errors: {results:?}");
    assert!(
        busy.len() > results.len() / 2,
        "a 5x overload refused only {} of {}",
        busy.len(),
        results.len()
    );
    assert!(
        slowest < Duration::from_millis(5),
        "a Busy answer took {slowest:?}"
    );
}

/// The same overload with `Wait` and a 150 ms deadline: every caller has its answer (a
/// result or a Timeout) by its deadline plus scheduling slack, never later; and the device's
/// time goes to answers someone reads (a FIFO pool that started jobs too close to their
/// deadlines served 18 of the 60 it had time for).
#[test]
fn overload_with_wait_keeps_every_deadline() {
    let deadline = Duration::from_millis(150);
    let config = PoolConfig::new("overload-wait")
        .workers(2)
        .queue_capacity(1024)
        .backpressure(Backpressure::Wait)
        .op_timeout(Some(deadline));
    let results = offer_load(
        config,
        300,
        Duration::from_millis(2),
        Duration::from_millis(20),
    );
    let ok = results.iter().filter(|(_, r)| r.is_ok()).count();
    let timed_out = results
        .iter()
        .filter(|(_, r)| r.as_ref().is_err_and(|e| e.kind() == ErrorKind::Timeout))
        .count();
    let latest = results.iter().map(|(d, _)| *d).max().unwrap_or_default();
    println!(
        "5x overload, Wait, {deadline:?} deadline: {ok} served, {timed_out} timed out, \
         slowest answer {latest:?}"
    );
    assert_eq!(ok + timed_out, results.len(), "other errors: {results:?}");
    assert!(
        timed_out > 0 && ok > 0,
        "{ok} served, {timed_out} timed out"
    );
    // 600 ms of offered load on two workers at 20 ms a job: time for about 60 answers.
    assert!(
        ok >= 32,
        "only {ok} callers served in time: the device worked for callers who had given up"
    );
    // The slack covers a loaded 2-core machine's scheduling, not a missed deadline: a pool
    // that let callers wait for the device would answer after seconds.
    assert!(
        latest < deadline + Duration::from_millis(100),
        "an answer came {latest:?} after submission, deadline {deadline:?}"
    );
}

/// Found by an attacker's review: slow and fast jobs of one kind on one device (RSA-4096 and
/// P-256 signatures). A fast job with ample time for itself must run, however many slow
/// ones came before it; only a job with less time left than the fastest recent one took, and
/// with others waiting behind it, is refused, and then with an error that says so.
#[test]
fn fast_jobs_are_not_refused_for_slow_ones() {
    let (pool, _device) = start_pool(PoolConfig::new("mixed").op_timeout(None));
    let job = |ms: u64, deadline: Option<u64>| {
        let options = sign().with_timeout(deadline.map_or(JobTimeout::Never, |d| {
            JobTimeout::After(Duration::from_millis(d))
        }));
        pool.run(options, move |_: &mut TestDevice| {
            std::thread::sleep(Duration::from_millis(ms));
            Ok(ms)
        })
    };
    for _ in 0..8 {
        block_on(job(60, None)).unwrap();
    }
    // One slow to seven fast, one at a time: every fast job has 40 ms for its 2 ms.
    for round in 0..3 {
        block_on(job(60, None)).unwrap();
        for i in 0..7 {
            let r = block_on(job(2, Some(40)));
            assert!(r.is_ok(), "round {round}, fast job {i}: {r:?}");
        }
    }
    // Now fast jobs are known to take 2 ms: a 1 ms deadline behind a queue is refused at
    // once, named as such.
    let held = hold(&pool);
    let ran = Arc::new(AtomicUsize::new(0));
    let doomed_options = sign().with_timeout(JobTimeout::After(Duration::from_millis(1)));
    let mut doomed: Job<usize> = Box::pin(pool.run(doomed_options, counting_job(&ran)));
    enqueue(&mut doomed);
    let mut behind: Job<u64> = Box::pin(job(2, None));
    enqueue(&mut behind);
    // Past the doomed job's deadline: a clock fact, which a sleep guarantees.
    std::thread::sleep(Duration::from_millis(5));
    block_on(held.release()).unwrap();
    let err = block_on(doomed).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        matches!(err, Error::Timeout { .. } | Error::NoTimeLeft { .. }),
        "{err:?}"
    );
    assert_eq!(block_on(behind).unwrap(), 2);
    // FIFO on one worker: `behind` ran, so the doomed job was dequeued, and it was not run
    // (its caller's own timeout would not show a job that ran anyway).
    assert_eq!(ran.load(SeqCst), 0, "the doomed job ran");
}
