//! The pool's metrics (`metrics` facade), read back through metrics-util's DebuggingRecorder
//! (installed once for this binary; each test uses its own device name): time at the device
//! and total time per scheme of software keys, and failures by kind, device losses, retries,
//! busy and timed-out jobs, queue and worker gauges on a pool whose device fails on demand.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] fns"
)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::executor::block_on;
use hardkey_api::{
    Backpressure, DevicePool, Error, ErrorKind, GenerateRequest, JobOptions, JobTimeout,
    KeyAlgorithm, KeyStore, Operation, PoolConfig, PrivateKey, SignatureScheme,
};
use hardkey_soft::{SoftConfig, SoftStore};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// Everything recorded so far, accumulated over snapshots (a snapshot resets counters and
/// gauges to zero and drains histograms, so the sums are the real values).
#[derive(Default)]
struct Seen {
    values: HashMap<MetricId, f64>,
    samples: HashMap<MetricId, Vec<f64>>,
}

/// A metric's name and its sorted labels.
type MetricId = (String, Vec<(String, String)>);

fn recorded() -> std::sync::MutexGuard<'static, Seen> {
    static RECORDER: OnceLock<(Snapshotter, Mutex<Seen>)> = OnceLock::new();
    let (snapshotter, seen) = RECORDER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in this binary");
        (snapshotter, Mutex::default())
    });
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let mut labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        labels.sort();
        let id = (key.name().to_owned(), labels);
        match value {
            DebugValue::Counter(n) => *seen.values.entry(id).or_default() += n as f64,
            DebugValue::Gauge(g) => *seen.values.entry(id).or_default() += g.into_inner(),
            DebugValue::Histogram(h) => seen
                .samples
                .entry(id)
                .or_default()
                .extend(h.into_iter().map(|v| v.into_inner())),
        }
    }
    seen
}

fn id(name: &str, labels: &[(&str, &str)]) -> MetricId {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    (name.to_owned(), labels)
}

/// A counter's or gauge's value (0 if never recorded).
fn value(name: &str, labels: &[(&str, &str)]) -> f64 {
    recorded()
        .values
        .get(&id(name, labels))
        .copied()
        .unwrap_or(0.0)
}

/// A histogram's samples (none if never recorded).
fn samples(name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    recorded()
        .samples
        .get(&id(name, labels))
        .cloned()
        .unwrap_or_default()
}

#[test]
fn soft_key_operations_are_timed_per_device_and_scheme() {
    // The recorder first: a pool registers its handles when it starts.
    drop(recorded());
    let device = "metrics-soft";
    let store =
        SoftStore::new(SoftConfig::default().pool(PoolConfig::new(device).workers(2))).unwrap();
    let p256 = block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP256))).unwrap();
    let p384 = block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP384))).unwrap();
    for (key, scheme, n) in [
        (&p256, SignatureScheme::EcdsaP256Sha256, 5),
        (&p384, SignatureScheme::EcdsaP384Sha384, 3),
    ] {
        for _ in 0..n {
            block_on(key.sign(scheme, b"counted")).unwrap();
        }
        let labels = [
            ("device", device),
            ("op", "sign"),
            ("scheme", scheme.name()),
        ];
        assert_eq!(
            value("hardkey_device_operations_total", &labels),
            f64::from(n),
            "{scheme}"
        );
        let service = samples("hardkey_device_service_seconds", &labels);
        let latency = samples("hardkey_device_latency_seconds", &labels);
        assert_eq!(service.len(), n as usize, "{scheme}: {service:?}");
        assert_eq!(latency.len(), n as usize, "{scheme}: {latency:?}");
        // The total time holds the time at the device, and neither is empty or absurd.
        assert!(
            latency.iter().sum::<f64>() >= service.iter().sum::<f64>(),
            "{scheme}: latency {latency:?} < service {service:?}"
        );
        assert!(service.iter().all(|s| *s > 0.0 && *s < 10.0), "{service:?}");
    }
    // Key generation is an operation without a scheme.
    let generated = [("device", device), ("op", "generate"), ("scheme", "none")];
    assert_eq!(value("hardkey_device_operations_total", &generated), 2.0);
    // Nothing waits, nothing runs, both workers are up; nothing failed.
    let pool = [("device", device)];
    assert_eq!(value("hardkey_device_queued", &pool), 0.0);
    assert_eq!(value("hardkey_device_in_flight", &pool), 0.0);
    assert_eq!(value("hardkey_device_workers", &pool), 2.0);
    assert_eq!(value("hardkey_device_healthy_workers", &pool), 2.0);
    let failures: f64 = recorded()
        .values
        .iter()
        .filter(|((name, labels), _)| {
            name == "hardkey_device_failures_total"
                && labels.contains(&("device".into(), device.into()))
        })
        .map(|(_, v)| v)
        .sum();
    assert_eq!(failures, 0.0);
    // A store dropped: its workers leave the gauges.
    drop((p256, p384));
    store.pool().shutdown(Duration::from_secs(5));
    assert_eq!(value("hardkey_device_workers", &pool), 0.0);
    assert_eq!(value("hardkey_device_healthy_workers", &pool), 0.0);
}

/// A device state; `fail_once` makes the next job lose it (the pool rebuilds it).
struct Fake;

fn run(
    pool: &DevicePool<Fake>,
    options: JobOptions,
    job: impl FnMut(&mut Fake) -> hardkey_api::Result<()> + Send + 'static,
) -> hardkey_api::Result<()> {
    block_on(pool.run(options, job))
}

#[test]
fn failures_are_counted_by_kind_with_queue_and_worker_gauges() {
    drop(recorded());
    let device = "metrics-fake";
    let pool = DevicePool::new(
        PoolConfig::new(device)
            .queue_capacity(1)
            .backpressure(Backpressure::FailFast)
            .backoff(Duration::from_millis(1), Duration::from_millis(10)),
        |_| Ok(Fake),
    )
    .unwrap();
    let sign = |scheme| JobOptions::idempotent(Operation::Sign).with_scheme(scheme);

    for _ in 0..3 {
        run(&pool, sign("s1"), |_| Ok(())).unwrap();
    }
    let failed = run(&pool, sign("s1"), |_| {
        Err(Error::backend("metrics-fake", Operation::Sign, "refused"))
    });
    assert_eq!(failed.unwrap_err().kind(), ErrorKind::Backend);

    // The device is lost once: the worker rebuilds it and retries the job, which succeeds.
    let lose = Arc::new(AtomicBool::new(true));
    run(&pool, sign("s2"), move |_| {
        if lose.swap(false, SeqCst) {
            Err(Error::device_unavailable("metrics-fake", "session closed"))
        } else {
            Ok(())
        }
    })
    .unwrap();

    // A job holds the only worker; one waits in the only queue slot until its deadline
    // passes; a third finds the queue full.
    let (started_tx, started_rx) = channel();
    let (release_tx, release_rx) = channel::<()>();
    let held = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            run(
                &pool,
                sign("hold").with_timeout(JobTimeout::Never),
                move |_| {
                    started_tx.send(()).unwrap();
                    let _ = release_rx.recv_timeout(Duration::from_secs(10));
                    Ok(())
                },
            )
        })
    };
    started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let late = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            run(
                &pool,
                sign("late").with_timeout(JobTimeout::After(Duration::from_millis(100))),
                |_| Ok(()),
            )
        })
    };
    let labels = [("device", device)];
    let deadline = Instant::now() + Duration::from_secs(10);
    while value("hardkey_device_queued", &labels) < 1.0 {
        assert!(Instant::now() < deadline, "the second job never queued");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(value("hardkey_device_in_flight", &labels), 1.0);
    let busy = run(&pool, sign("late"), |_| Ok(()));
    assert_eq!(busy.unwrap_err().kind(), ErrorKind::Busy);
    assert_eq!(late.join().unwrap().unwrap_err().kind(), ErrorKind::Timeout);
    release_tx.send(()).unwrap();
    held.join().unwrap().unwrap();
    // The expired job is dropped from the queue when the worker gets to it, never run.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.stats().queued > 0 {
        assert!(Instant::now() < deadline, "the expired job stayed queued");
        std::thread::sleep(Duration::from_millis(5));
    }

    let op = |scheme| [("device", device), ("op", "sign"), ("scheme", scheme)];
    let failures = |scheme, kind| {
        let [d, o, s] = op(scheme);
        value("hardkey_device_failures_total", &[d, o, s, ("kind", kind)])
    };
    assert_eq!(value("hardkey_device_operations_total", &op("s1")), 3.0);
    assert_eq!(failures("s1", "backend"), 1.0);
    assert_eq!(value("hardkey_device_operations_total", &op("s2")), 1.0);
    assert_eq!(value("hardkey_device_operations_total", &op("hold")), 1.0);
    assert_eq!(value("hardkey_device_operations_total", &op("late")), 0.0);
    assert_eq!(failures("late", "timeout"), 1.0);
    assert_eq!(failures("late", "busy"), 1.0);
    // One sample per job that ran (the retried one once); none for jobs that never ran.
    for (scheme, ran) in [("s1", 4), ("s2", 1), ("hold", 1), ("late", 0)] {
        for histogram in [
            "hardkey_device_service_seconds",
            "hardkey_device_latency_seconds",
        ] {
            assert_eq!(
                samples(histogram, &op(scheme)).len(),
                ran,
                "{histogram} {scheme}"
            );
        }
    }
    // The held job waited at the device, not in the queue.
    assert!(samples("hardkey_device_service_seconds", &op("hold"))[0] >= 0.09);
    assert_eq!(value("hardkey_device_lost_total", &labels), 1.0);
    assert_eq!(value("hardkey_device_recoveries_total", &labels), 1.0);
    assert_eq!(value("hardkey_device_retries_total", &labels), 1.0);
    assert_eq!(value("hardkey_device_queued", &labels), 0.0);
    assert_eq!(value("hardkey_device_in_flight", &labels), 0.0);
    assert_eq!(value("hardkey_device_workers", &labels), 1.0);
    assert_eq!(value("hardkey_device_healthy_workers", &labels), 1.0);
    pool.shutdown(Duration::from_secs(5));
}

/// A subscriber that keeps every span's fields (as text), for the span test.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<SpanSeen>>>);

/// A span's name and fields.
type SpanSeen = (String, HashMap<String, String>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl tracing::Subscriber for Spans {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut fields = HashMap::new();
        span.record(&mut Fields(&mut fields));
        let mut spans = self.0.lock().unwrap();
        spans.push((span.metadata().name().to_owned(), fields));
        tracing::span::Id::from_u64(spans.len() as u64)
    }
    fn record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut spans = self.0.lock().unwrap();
        let index = usize::try_from(id.into_u64()).unwrap() - 1;
        values.record(&mut Fields(&mut spans[index].1));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn each_key_operation_has_a_span_with_its_times_and_no_secret() {
    let spans = Spans::default();
    let store = SoftStore::new(SoftConfig::default().pool(PoolConfig::new("traced"))).unwrap();
    let key = block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP256))).unwrap();
    tracing::subscriber::with_default(spans.clone(), || {
        block_on(key.sign(SignatureScheme::EcdsaP256Sha256, b"traced")).unwrap();
        // A scheme the key cannot serve fails before the queue: no operation, no span.
        assert!(block_on(key.sign(SignatureScheme::RsaPssSha256, b"x")).is_err());
    });
    let spans = spans.0.lock().unwrap().clone();
    assert_eq!(spans.len(), 1, "{spans:?}");
    let (name, fields) = &spans[0];
    assert_eq!(name, "key_operation");
    assert_eq!(fields["device"], "traced");
    assert_eq!(fields["op"], "sign");
    assert_eq!(fields["scheme"], "ecdsa-p256-sha256");
    for time in ["queue_seconds", "device_seconds"] {
        let seconds: f64 = fields[time].parse().unwrap();
        assert!((0.0..10.0).contains(&seconds), "{time}: {seconds}");
    }
    assert!(!fields.contains_key("error"), "{fields:?}");
}
