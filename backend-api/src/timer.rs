//! A runtime-agnostic timer: one lazily started `hardkey-timer` thread wakes sleeping futures.
//!
//! hardkey's futures must work under any executor (tokio multi-thread or current-thread, a plain
//! `block_on`), so they cannot use a runtime's timer. Deadlines are mostly "now + the same
//! duration", so a new entry is almost never earlier than the thread's next wake-up and
//! registering it costs a lock and a heap push, no thread wake-up.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::sync::lock;

struct Entry {
    fired: AtomicBool,
    /// Set when the `Sleep` is dropped before firing: the heap entry is dead weight.
    cancelled: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

/// Dead entries in the heap; when they are the majority the heap is compacted, so completed
/// operations' deadlines do not pile up until they expire.
static CANCELLED: AtomicUsize = AtomicUsize::new(0);
const COMPACT_MIN: usize = 1024;

struct Timed {
    at: Instant,
    seq: u64,
    entry: Arc<Entry>,
}

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Default)]
struct Heap {
    entries: BinaryHeap<Reverse<Timed>>,
    seq: u64,
}

struct TimerThread {
    heap: Mutex<Heap>,
    changed: Condvar,
}

fn timer() -> &'static TimerThread {
    static TIMER: OnceLock<&'static TimerThread> = OnceLock::new();
    TIMER.get_or_init(|| {
        let t: &'static TimerThread = Box::leak(Box::new(TimerThread {
            heap: Mutex::new(Heap::default()),
            changed: Condvar::new(),
        }));
        // If the thread cannot be spawned, sleeping futures still complete when polled after
        // their deadline (each poll checks the clock); they are just not woken. Spawning fails
        // only when the process is out of threads, which the pool would report first.
        let _ = std::thread::Builder::new()
            .name("hardkey-timer".into())
            .spawn(move || t.run());
        t
    })
}

impl TimerThread {
    fn run(&self) {
        let mut heap = lock(&self.heap);
        loop {
            let now = Instant::now();
            while let Some(Reverse(first)) = heap.entries.peek() {
                if first.at > now {
                    break;
                }
                if let Some(Reverse(due)) = heap.entries.pop() {
                    if due.entry.cancelled.load(Ordering::Relaxed) {
                        CANCELLED.fetch_sub(1, Ordering::Relaxed);
                        continue;
                    }
                    due.entry.fired.store(true, Ordering::Release);
                    if let Some(w) = lock(&due.entry.waker).take() {
                        w.wake();
                    }
                }
            }
            heap = match heap.entries.peek() {
                Some(Reverse(next)) => {
                    let wait = next.at.saturating_duration_since(now);
                    match self.changed.wait_timeout(heap, wait) {
                        Ok((guard, _)) => guard,
                        Err(poisoned) => poisoned.into_inner().0,
                    }
                }
                None => match self.changed.wait(heap) {
                    Ok(guard) => guard,
                    Err(poisoned) => poisoned.into_inner(),
                },
            };
        }
    }

    fn register(&self, at: Instant, entry: Arc<Entry>) {
        let mut heap = lock(&self.heap);
        let len = heap.entries.len();
        if len >= COMPACT_MIN && CANCELLED.load(Ordering::Relaxed) * 2 > len {
            heap.entries
                .retain(|Reverse(t)| !t.entry.cancelled.load(Ordering::Relaxed));
            CANCELLED.fetch_sub(len - heap.entries.len(), Ordering::Relaxed);
        }
        let earliest = heap.entries.peek().map(|Reverse(t)| t.at);
        heap.seq += 1;
        let seq = heap.seq;
        heap.entries.push(Reverse(Timed { at, seq, entry }));
        drop(heap);
        if earliest.is_none_or(|e| at < e) {
            self.changed.notify_one();
        }
    }
}

/// Wakes `waker` at `at`, from the timer thread, whatever its owner is doing then.
pub(crate) fn wake_at(at: Instant, waker: Waker) {
    let entry = Arc::new(Entry {
        fired: AtomicBool::new(false),
        cancelled: AtomicBool::new(false),
        waker: Mutex::new(Some(waker)),
    });
    timer().register(at, entry);
}

/// A future that completes at a given instant, on any executor.
pub(crate) struct Sleep {
    at: Instant,
    entry: Option<Arc<Entry>>,
}

/// Sleeps for `duration` without occupying a thread (a duration too large for the clock sleeps
/// for a century).
pub(crate) fn sleep(duration: Duration) -> Sleep {
    let now = Instant::now();
    let century = Duration::from_secs(100 * 365 * 24 * 3600);
    sleep_until(
        now.checked_add(duration)
            .or_else(|| now.checked_add(century))
            .unwrap_or(now),
    )
}

/// Sleeps until `at` without occupying a thread.
pub(crate) fn sleep_until(at: Instant) -> Sleep {
    Sleep { at, entry: None }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(entry) = &self.entry {
            if entry.fired.load(Ordering::Acquire) || Instant::now() >= self.at {
                return Poll::Ready(());
            }
            let mut slot = lock(&entry.waker);
            match &mut *slot {
                Some(w) if w.will_wake(cx.waker()) => {}
                other => *other = Some(cx.waker().clone()),
            }
            drop(slot);
            // The timer may have fired between the check and storing the waker.
            if entry.fired.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            return Poll::Pending;
        }
        if Instant::now() >= self.at {
            return Poll::Ready(());
        }
        let entry = Arc::new(Entry {
            fired: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
            waker: Mutex::new(Some(cx.waker().clone())),
        });
        timer().register(self.at, entry.clone());
        self.entry = Some(entry);
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        // Release the waker now and mark the heap entry dead; it is dropped when its time
        // comes or when the heap is compacted.
        if let Some(entry) = &self.entry {
            lock(&entry.waker).take();
            if !entry.fired.load(Ordering::Acquire)
                && !entry.cancelled.swap(true, Ordering::Relaxed)
            {
                CANCELLED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    #[test]
    fn a_sleep_completes_under_block_on() {
        let start = Instant::now();
        futures::executor::block_on(sleep(Duration::from_millis(30)));
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(30), "{waited:?}");
    }

    #[test]
    fn many_concurrent_sleeps_share_one_thread() {
        let start = Instant::now();
        let sleeps = (0..200).map(|i| sleep(Duration::from_millis(20 + (i % 7))));
        futures::executor::block_on(futures::future::join_all(sleeps));
        // 200 concurrent 20-26 ms sleeps take about one sleep, not 200.
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert!(start.elapsed() >= Duration::from_millis(26));
    }

    #[test]
    fn huge_durations_do_not_overflow() {
        let mut cx = Context::from_waker(Waker::noop());
        assert!(
            Pin::new(&mut sleep(Duration::MAX))
                .poll(&mut cx)
                .is_pending()
        );
    }

    #[test]
    fn cancelled_sleeps_do_not_pile_up() {
        let mut cx = Context::from_waker(Waker::noop());
        // Register many far-future sleeps and drop them, as completed operations do.
        for _ in 0..20 {
            let sleeps: Vec<Sleep> = (0..COMPACT_MIN)
                .map(|_| {
                    let mut s = sleep(Duration::from_secs(3600));
                    assert!(Pin::new(&mut s).poll(&mut cx).is_pending());
                    s
                })
                .collect();
            drop(sleeps);
        }
        let len = lock(&timer().heap).entries.len();
        assert!(len < 4 * COMPACT_MIN, "heap kept {len} dead entries");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn works_on_a_current_thread_runtime() {
        let start = Instant::now();
        sleep(Duration::from_millis(15)).await;
        assert!(start.elapsed() >= Duration::from_millis(15));
    }
}
