//! A queued job: type-erased, with its reply channel and the outcome of one attempt.

use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::task::Waker;
use std::time::{Duration, Instant};

use super::config::JobOptions;
use super::metrics::{Observed, Slot};
use crate::completion;
use crate::error::{Error, Result};

/// How one attempt at a job ended.
pub(super) enum Attempt {
    /// The caller has its reply.
    Replied { ok: bool },
    /// The device was lost; the caller has no reply yet.
    DeviceLost(Error),
    /// The job panicked; the caller has an error. The device state may be inconsistent.
    Panicked,
}

/// A type-erased queued job.
pub(super) trait Job<D>: Send {
    fn options(&self) -> &JobOptions;
    fn deadline(&self) -> Option<Instant>;
    fn submitted(&self) -> Instant;
    /// Its metric handles and span.
    fn observed(&self) -> &Observed;
    fn release_slot(&mut self);
    fn caller_gone(&self) -> bool;
    fn attempt(&mut self, device: &mut D, device_name: &str) -> Attempt;
    /// The waker of a caller that got its reply from `attempt` and has not been woken yet.
    fn take_waker(&mut self) -> Option<Waker>;
    fn fail(&mut self, err: Error);
    fn expire(&mut self, device: &str);
}

pub(super) struct TypedJob<D, T, F> {
    pub(super) job: F,
    pub(super) reply: Option<completion::Sender<Result<T>>>,
    /// Set when a reply was delivered without waking its caller yet.
    pub(super) waker: Option<Waker>,
    pub(super) permit: Option<Slot>,
    pub(super) observed: Observed,
    pub(super) options: JobOptions,
    pub(super) deadline: Option<Instant>,
    pub(super) timeout: Option<Duration>,
    pub(super) submitted: Instant,
    pub(super) _device: PhantomData<fn(&mut D)>,
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
    fn observed(&self) -> &Observed {
        &self.observed
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
