//! Pool and job configuration: workers, queue bound, backpressure, deadlines.

use std::time::Duration;

use tokio::sync::Semaphore;

use crate::error::{InvalidInput, Operation, Result};

/// What a caller does when the queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Backpressure {
    /// Wait (asynchronously) for a free slot, up to the job's deadline.
    #[default]
    Wait,
    /// Fail at once with [`Error::Busy`](crate::Error::Busy).
    FailFast,
}

/// Configuration of a [`DevicePool`](super::DevicePool).
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

    pub(super) fn validate(&self) -> Result<()> {
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
    /// The scheme the job uses (`rsa-pss-sha256`...), if any: the `scheme` label of the pool's
    /// metrics and the `scheme` field of its tracing span (`none` when unset).
    pub scheme: Option<&'static str>,
}

impl JobOptions {
    /// A non-idempotent job with the pool's default deadline.
    pub const fn new(op: Operation) -> Self {
        Self {
            op,
            idempotent: false,
            timeout: JobTimeout::PoolDefault,
            scheme: None,
        }
    }

    /// An idempotent job (retried once after device recovery).
    pub const fn idempotent(op: Operation) -> Self {
        Self {
            op,
            idempotent: true,
            timeout: JobTimeout::PoolDefault,
            scheme: None,
        }
    }

    /// Sets the deadline.
    pub const fn with_timeout(mut self, timeout: JobTimeout) -> Self {
        self.timeout = timeout;
        self
    }

    /// Names the scheme the job uses ([`SignatureScheme::name`](crate::SignatureScheme::name),
    /// [`DecryptScheme::name`](crate::DecryptScheme::name)) in metrics and traces.
    pub const fn with_scheme(mut self, scheme: &'static str) -> Self {
        self.scheme = Some(scheme);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(config: PoolConfig) -> String {
        match config.validate() {
            Ok(()) => panic!("{config:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn out_of_range_settings_are_refused_with_what_to_fix() {
        assert!(PoolConfig::new("dev").validate().is_ok());
        assert!(refused(PoolConfig::new("dev").workers(0)).contains("between 1 and 1024"));
        assert!(refused(PoolConfig::new("dev").workers(1025)).contains("pool workers"));
        assert!(refused(PoolConfig::new("dev").queue_capacity(0)).contains("queue capacity"));
        let zero = Duration::ZERO;
        assert!(refused(PoolConfig::new("dev").backoff(zero, zero)).contains("non-zero"));
        let second = Duration::from_secs(1);
        let inverted = PoolConfig::new("dev").backoff(second, second / 2);
        assert!(refused(inverted).contains("not above the maximum"));
    }
}
