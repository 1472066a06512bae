//! What a pool records through the `metrics` facade and `tracing`, with handles cached per pool.
//!
//! Metrics (see the table in README.md), labelled by `device` (the pool's name: "token 'web'",
//! "TPM at swtpm:port=2321", "soft"; never a PIN or a module path), and per operation by `op`
//! and `scheme`:
//!
//! - histograms of the time at the device and of the total time (queue wait included) of
//!   every job a worker ran;
//! - counters of operations that succeeded, and of failures by [`ErrorKind`], counted where
//!   the caller gets its answer (so a deadline that passed in the queue, a full queue, a shut
//!   down pool count too);
//! - gauges of queued jobs, jobs in flight, workers and healthy workers; counters of lost
//!   device states, recoveries, retries and cancelled jobs.
//!
//! The handles are registered with the recorder installed when the pool starts (the pool-wide
//! ones) or when an (operation, scheme) pair is first used: install a recorder before opening
//! stores. With none installed, every handle is a no-op and recording costs a branch.
//!
//! Each job also gets one `key_operation` span (level DEBUG, target `hardkey_api::pool`) with
//! the fields `device`, `op`, `scheme`, `queue_seconds`, `device_seconds` and, when it fails,
//! `error` (the error kind); the worker enters it while the job runs, so a backend's own
//! events nest in it.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, SharedString};
use tokio::sync::OwnedSemaphorePermit;

use crate::error::{ErrorKind, Operation};
use crate::sync::lock;

/// Time at the device of one job (a worker running it, a retry after recovery included).
pub(crate) const SERVICE_SECONDS: &str = "hardkey_device_service_seconds";
/// Submission to reply of one job that ran, queue wait included.
pub(crate) const LATENCY_SECONDS: &str = "hardkey_device_latency_seconds";
/// Jobs whose caller got a success.
pub(crate) const OPERATIONS_TOTAL: &str = "hardkey_device_operations_total";
/// Jobs whose caller got an error, by error kind.
pub(crate) const FAILURES_TOTAL: &str = "hardkey_device_failures_total";

/// The `scheme` label of a job that names none.
const NO_SCHEME: &str = "none";

/// The metrics' help texts and units (the recorder keeps the last: a pool's start repeats
/// them, so a recorder installed after an earlier pool still gets them).
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        SERVICE_SECONDS,
        Unit::Seconds,
        "Time at the device of the jobs a worker ran (a retry after recovery included)"
    );
    describe_histogram!(
        LATENCY_SECONDS,
        Unit::Seconds,
        "Submission to reply of the jobs a worker ran, queue wait included"
    );
    describe_counter!(OPERATIONS_TOTAL, "Jobs whose caller got a success");
    describe_counter!(
        FAILURES_TOTAL,
        "Jobs whose caller got an error (run or not: busy, timed out, shut down), by error kind"
    );
    describe_gauge!("hardkey_device_queued", "Jobs waiting in the queue");
    describe_gauge!("hardkey_device_in_flight", "Jobs running on the device");
    describe_gauge!("hardkey_device_workers", "Worker threads");
    describe_gauge!(
        "hardkey_device_healthy_workers",
        "Workers with a live device state (session, context)"
    );
    describe_counter!(
        "hardkey_device_lost_total",
        "Times a worker lost its device state"
    );
    describe_counter!(
        "hardkey_device_recoveries_total",
        "Times a worker rebuilt its device state after losing it"
    );
    describe_counter!(
        "hardkey_device_retries_total",
        "Jobs retried after their worker rebuilt its device state"
    );
    describe_counter!(
        "hardkey_device_cancelled_total",
        "Jobs skipped because their caller gave up before they started"
    );
}

/// A pool's cached metric handles.
pub(super) struct PoolMetrics {
    device: Arc<str>,
    pub(super) queued: Gauge,
    pub(super) in_flight: Gauge,
    pub(super) workers: Gauge,
    pub(super) healthy: Gauge,
    pub(super) lost: Counter,
    pub(super) recoveries: Counter,
    pub(super) retries: Counter,
    pub(super) cancelled: Counter,
    /// One entry per (operation, scheme) pair used so far: a handful per pool.
    by_op: Mutex<Vec<Arc<OpMetrics>>>,
}

impl PoolMetrics {
    pub(super) fn new(device: &str) -> Self {
        describe();
        let device: Arc<str> = Arc::from(device);
        let label = || SharedString::from(Arc::clone(&device));
        Self {
            queued: metrics::gauge!("hardkey_device_queued", "device" => label()),
            in_flight: metrics::gauge!("hardkey_device_in_flight", "device" => label()),
            workers: metrics::gauge!("hardkey_device_workers", "device" => label()),
            healthy: metrics::gauge!("hardkey_device_healthy_workers", "device" => label()),
            lost: metrics::counter!("hardkey_device_lost_total", "device" => label()),
            recoveries: metrics::counter!("hardkey_device_recoveries_total", "device" => label()),
            retries: metrics::counter!("hardkey_device_retries_total", "device" => label()),
            cancelled: metrics::counter!("hardkey_device_cancelled_total", "device" => label()),
            by_op: Mutex::new(Vec::new()),
            device,
        }
    }

    /// The handles of `op` with `scheme`, registered on first use.
    pub(super) fn op(&self, op: Operation, scheme: Option<&'static str>) -> Arc<OpMetrics> {
        let scheme = scheme.unwrap_or(NO_SCHEME);
        let mut by_op = lock(&self.by_op);
        if let Some(m) = by_op.iter().find(|m| m.op == op && m.scheme == scheme) {
            return Arc::clone(m);
        }
        let m = Arc::new(OpMetrics::new(&self.device, op, scheme));
        by_op.push(Arc::clone(&m));
        m
    }

    /// A queue slot that counts in the `queued` gauge until it is released.
    pub(super) fn slot(&self, permit: OwnedSemaphorePermit) -> Slot {
        self.queued.increment(1.0);
        Slot {
            _permit: permit,
            queued: self.queued.clone(),
        }
    }
}

/// The handles of one (device, operation, scheme).
pub(super) struct OpMetrics {
    device: Arc<str>,
    op: Operation,
    scheme: &'static str,
    pub(super) service: Histogram,
    pub(super) latency: Histogram,
    pub(super) ok: Counter,
    failures: [OnceLock<Counter>; ErrorKind::ALL.len()],
}

impl OpMetrics {
    fn new(device: &Arc<str>, op: Operation, scheme: &'static str) -> Self {
        let label = || SharedString::from(Arc::clone(device));
        let (op_name, scheme_name) = (op.name(), scheme);
        let service = metrics::histogram!(
            SERVICE_SECONDS, "device" => label(), "op" => op_name, "scheme" => scheme_name
        );
        let latency = metrics::histogram!(
            LATENCY_SECONDS, "device" => label(), "op" => op_name, "scheme" => scheme_name
        );
        let ok = metrics::counter!(
            OPERATIONS_TOTAL, "device" => label(), "op" => op_name, "scheme" => scheme_name
        );
        Self {
            device: Arc::clone(device),
            op,
            scheme,
            service,
            latency,
            ok,
            failures: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// Counts a failure of `kind` (its counter registered on the first one).
    pub(super) fn failed(&self, kind: ErrorKind) {
        self.failures[kind.index()]
            .get_or_init(|| {
                metrics::counter!(
                    FAILURES_TOTAL,
                    "device" => SharedString::from(Arc::clone(&self.device)),
                    "op" => self.op.name(),
                    "scheme" => self.scheme,
                    "kind" => kind.name(),
                )
            })
            .increment(1);
    }

    /// The job's span.
    pub(super) fn span(&self) -> tracing::Span {
        tracing::debug_span!(
            target: "hardkey_api::pool",
            "key_operation",
            device = &*self.device,
            op = self.op.name(),
            scheme = self.scheme,
            queue_seconds = tracing::field::Empty,
            device_seconds = tracing::field::Empty,
            error = tracing::field::Empty,
        )
    }
}

/// What a job carries to be observed: its metric handles and its span.
pub(super) struct Observed {
    pub(super) metrics: Arc<OpMetrics>,
    pub(super) span: tracing::Span,
}

impl Observed {
    /// Records a job that ran: `queued` from submission to start, `at_device` from start to
    /// reply.
    pub(super) fn ran(&self, queued: Duration, at_device: Duration) {
        self.metrics.service.record(at_device.as_secs_f64());
        self.metrics
            .latency
            .record((queued + at_device).as_secs_f64());
        self.span.record("device_seconds", at_device.as_secs_f64());
    }
}

/// A taken queue slot: frees the slot and leaves the `queued` gauge when dropped, on every
/// path (served, expired, failed at shutdown, caller gone).
pub(super) struct Slot {
    _permit: OwnedSemaphorePermit,
    queued: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.queued.decrement(1.0);
    }
}
