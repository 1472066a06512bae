//! Counters, latency histograms and the [`PoolStats`] snapshot.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use hdrhistogram::Histogram;

use super::queue::Shared;
use crate::error::{InvalidInput, Result};
use crate::sync::lock;

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
    pub(super) fn of(h: &Histogram<u64>) -> Self {
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
    /// Submissions refused with [`Error::Busy`](crate::Error::Busy).
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

#[derive(Default)]
pub(super) struct Counters {
    pub(super) in_flight: AtomicUsize,
    pub(super) completed: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) cancelled: AtomicU64,
    pub(super) timed_out: AtomicU64,
    pub(super) rejected_busy: AtomicU64,
    pub(super) device_lost: AtomicU64,
    pub(super) recoveries: AtomicU64,
    pub(super) retried: AtomicU64,
    pub(super) failed_unserved: AtomicU64,
}

pub(super) struct Histograms {
    pub(super) latency: Histogram<u64>,
    pub(super) service: Histogram<u64>,
}

impl Histograms {
    pub(super) fn new() -> Result<Self> {
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

impl<D: 'static> Shared<D> {
    pub(super) fn stats(&self) -> PoolStats {
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

pub(super) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}
