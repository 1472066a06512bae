//! Deadline-aware start: refusing a job that cannot finish in time.

use std::time::{Duration, Instant};

use crate::error::Operation;

/// A worker's estimate of how long each kind of operation takes at least: the fastest of its
/// last [`TYPICAL_SAMPLES`] successful jobs of that kind.
///
/// Under overload, a FIFO queue hands the worker jobs close to their deadlines; starting one
/// that cannot finish in time wastes the device on an answer nobody will read, and the next
/// caller misses its deadline too (goodput collapses). So a job with less time left than the
/// fastest recent job of its kind took is refused at once ([`Error::NoTimeLeft`](crate::Error::NoTimeLeft)), not
/// started, when other jobs wait behind it. The fastest, not the median: one device serves slow and fast operations of one
/// kind (RSA-4096 and P-256 signatures), and a fast one must never be refused for the slow
/// ones' sake. With fewer than [`TYPICAL_MIN_SAMPLES`] samples nothing is refused, and every
/// [`TYPICAL_PROBE_EVERY`]th job that would be refused runs anyway, so a device that became
/// faster after a slow spell is noticed.
#[derive(Default)]
pub(super) struct Typical {
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

    pub(super) fn record(&mut self, op: Operation, took: Duration) {
        let t = self.times(op);
        if t.samples.len() == TYPICAL_SAMPLES {
            t.samples.pop_front();
        }
        t.samples.push_back(took);
    }

    /// If a job of `op` starting at `now` cannot finish before `deadline`: how much time it
    /// has left, and the least its kind took recently.
    pub(super) fn too_late(
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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn with_samples(op: Operation, samples: &[u64]) -> Typical {
        let mut typical = Typical::default();
        for &ms in samples {
            typical.record(op, MS * u32::try_from(ms).unwrap_or(u32::MAX));
        }
        typical
    }

    #[test]
    fn nothing_is_refused_before_enough_samples_or_without_a_deadline() {
        let now = Instant::now();
        let mut typical = with_samples(Operation::Sign, &[10; TYPICAL_MIN_SAMPLES - 1]);
        assert_eq!(typical.too_late(Operation::Sign, now, Some(now + MS)), None);
        typical.record(Operation::Sign, MS * 10);
        assert_eq!(typical.too_late(Operation::Sign, now, None), None);
        assert_eq!(
            typical.too_late(Operation::Sign, now, Some(now + MS)),
            Some((MS, MS * 10))
        );
    }

    #[test]
    fn the_fastest_recent_job_decides_not_the_median() {
        let now = Instant::now();
        // Four slow RSA-4096 signatures and one fast P-256 on the same device.
        let mut typical = with_samples(Operation::Sign, &[100, 100, 100, 100, 2]);
        assert_eq!(
            typical.too_late(Operation::Sign, now, Some(now + MS * 5)),
            None
        );
        assert_eq!(
            typical.too_late(Operation::Sign, now, Some(now + MS)),
            Some((MS, MS * 2))
        );
    }

    #[test]
    fn kinds_of_operation_are_timed_apart() {
        let now = Instant::now();
        let mut typical = with_samples(Operation::Decrypt, &[50; TYPICAL_SAMPLES]);
        assert_eq!(typical.too_late(Operation::Sign, now, Some(now + MS)), None);
        assert!(
            typical
                .too_late(Operation::Decrypt, now, Some(now + MS))
                .is_some()
        );
    }

    #[test]
    fn every_eighth_refusal_runs_as_a_probe() {
        let now = Instant::now();
        let mut typical = with_samples(Operation::Sign, &[10; TYPICAL_SAMPLES]);
        let deadline = Some(now + MS);
        let outcomes: Vec<bool> = (0..2 * TYPICAL_PROBE_EVERY)
            .map(|_| typical.too_late(Operation::Sign, now, deadline).is_some())
            .collect();
        let probe = usize::try_from(TYPICAL_PROBE_EVERY).unwrap_or(usize::MAX) - 1;
        for (i, refused) in outcomes.iter().enumerate() {
            assert_eq!(*refused, i % (probe + 1) != probe, "call {i}: {outcomes:?}");
        }
    }

    #[test]
    fn old_samples_age_out_of_the_window() {
        let now = Instant::now();
        let mut typical = with_samples(Operation::Sign, &[1; TYPICAL_SAMPLES]);
        let deadline = Some(now + MS * 5);
        assert_eq!(typical.too_late(Operation::Sign, now, deadline), None);
        // The device slowed down: once the last fast sample is out of the window, a job with
        // 5 ms left is refused.
        for _ in 0..TYPICAL_SAMPLES - 1 {
            typical.record(Operation::Sign, MS * 20);
        }
        assert_eq!(typical.too_late(Operation::Sign, now, deadline), None);
        typical.record(Operation::Sign, MS * 20);
        assert_eq!(
            typical.too_late(Operation::Sign, now, deadline),
            Some((MS * 5, MS * 20))
        );
    }
}
