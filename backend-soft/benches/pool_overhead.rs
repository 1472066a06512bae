//! DevicePool overhead: ECDSA P-256 signatures through the pool (1 and 2 workers) against the
//! same software signer called directly, measured in one run; and the cost of recording the
//! pool's metrics (a no-op job and a pipelined signature on pools registered with a Prometheus
//! recorder, against the same without one).
//!
//! `cargo bench -p hardkey-soft --bench pool_overhead` (or `make bench`). Each configuration is
//! measured in several interleaved rounds and the median is reported, because the machines
//! this runs on are shared and noisy; compare the ratios, not the absolute times.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "benchmark"
)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::executor::block_on;
use futures::stream::FuturesUnordered;
use hardkey_api::{
    Backend, DevicePool, GenerateRequest, JobOptions, KeyAlgorithm, KeyStore, Operation,
    PoolConfig, PrivateKey, SignatureScheme, encoding,
};
use hardkey_soft::{SoftConfig, SoftDevice, SoftKey, SoftStore};

const SCHEME: SignatureScheme = SignatureScheme::EcdsaP256Sha256;
const ROUNDS: usize = 7;
const IN_FLIGHT: usize = 64;

fn store(workers: usize) -> (SoftStore, SoftKey) {
    let store = SoftStore::new(SoftConfig::default().workers(workers)).unwrap();
    let key = block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP256))).unwrap();
    (store, key)
}

/// The baseline: the software signer the pool workers call, called on this thread.
fn direct(key: &SoftKey, digest: &[u8], ops: usize) -> Duration {
    let mut device = SoftDevice::default();
    let start = Instant::now();
    for _ in 0..ops {
        let sig = device.sign_digest(key.key_ref(), SCHEME, digest).unwrap();
        std::hint::black_box(sig);
    }
    start.elapsed()
}

/// One operation at a time through the pool: submit, wait, repeat (latency view).
fn pool_sequential(key: &SoftKey, digest: &[u8], ops: usize) -> Duration {
    let start = Instant::now();
    block_on(async {
        for _ in 0..ops {
            std::hint::black_box(key.sign_digest(SCHEME, digest).await.unwrap());
        }
    });
    start.elapsed()
}

/// `IN_FLIGHT` operations kept in flight through the pool (throughput view).
fn pool_pipelined(key: &SoftKey, digest: &[u8], ops: usize) -> Duration {
    let start = Instant::now();
    block_on(async {
        let mut pending = FuturesUnordered::new();
        let mut submitted = 0;
        while submitted < ops.min(IN_FLIGHT) {
            pending.push(key.sign_digest(SCHEME, digest));
            submitted += 1;
        }
        while let Some(sig) = pending.next().await {
            std::hint::black_box(sig.unwrap());
            if submitted < ops {
                pending.push(key.sign_digest(SCHEME, digest));
                submitted += 1;
            }
        }
    });
    start.elapsed()
}

/// `IN_FLIGHT` no-op jobs kept in flight through a 1-worker pool: the pool's own cost per job
/// (queue, hand-off to the worker, completion and wake-up of the caller), with no device work.
fn pool_noop(pool: &DevicePool<()>, ops: usize) -> Duration {
    let start = Instant::now();
    block_on(async {
        let mut pending = FuturesUnordered::new();
        let job = || pool.run(JobOptions::new(Operation::Sign), |_: &mut ()| Ok(()));
        let mut submitted = 0;
        while submitted < ops.min(IN_FLIGHT) {
            pending.push(job());
            submitted += 1;
        }
        while let Some(r) = pending.next().await {
            r.unwrap();
            if submitted < ops {
                pending.push(job());
                submitted += 1;
            }
        }
    });
    start.elapsed()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn per_op_us(d: Duration, ops: usize) -> f64 {
    d.as_secs_f64() * 1e6 / ops as f64
}

fn main() {
    let digest = encoding::digest(
        SCHEME.hash().expect("ECDSA has a hash"),
        b"hardkey pool overhead benchmark",
    );
    let (_s1, key1) = store(1);
    let (_s2, key2) = store(2);

    // Calibrate so that one measurement takes about 150 ms.
    let probe = per_op_us(direct(&key1, &digest, 200), 200);
    let ops = ((150_000.0 / probe) as usize).clamp(500, 20_000);
    println!("ECDSA P-256 sign, {ops} ops per measurement, median of {ROUNDS} interleaved rounds");

    let noop_pool =
        DevicePool::new(PoolConfig::new("noop").queue_capacity(1024), |_| Ok(())).unwrap();
    // The same pools with their metrics registered with a Prometheus recorder (local to this
    // thread while they register: pool creation and the first job of each kind; the handles
    // then record from any thread). Without it, the handles above are no-ops.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.01, 0.1, 1.0, 10.0])
        .unwrap()
        .build_recorder();
    let (noop_rec, _s1_rec, key1_rec) = metrics::with_local_recorder(&recorder, || {
        let pool =
            DevicePool::new(PoolConfig::new("noop-rec").queue_capacity(1024), |_| Ok(())).unwrap();
        pool_noop(&pool, 1);
        let (store, key) = store(1);
        pool_pipelined(&key, &digest, 1);
        (pool, store, key)
    });
    let (mut d, mut seq1, mut pipe1, mut pipe2, mut noop) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut noop_r, mut pipe1_r) = (vec![], vec![]);
    for _ in 0..ROUNDS {
        noop.push(per_op_us(pool_noop(&noop_pool, 20_000), 20_000));
        noop_r.push(per_op_us(pool_noop(&noop_rec, 20_000), 20_000));
        pipe1_r.push(per_op_us(pool_pipelined(&key1_rec, &digest, ops), ops));
        d.push(per_op_us(direct(&key1, &digest, ops), ops));
        seq1.push(per_op_us(pool_sequential(&key1, &digest, ops), ops));
        pipe1.push(per_op_us(pool_pipelined(&key1, &digest, ops), ops));
        pipe2.push(per_op_us(pool_pipelined(&key2, &digest, ops), ops));
    }
    let (d, seq1, pipe1, pipe2) = (median(d), median(seq1), median(pipe1), median(pipe2));
    let noop = median(noop);
    let (noop_r, pipe1_r) = (median(noop_r), median(pipe1_r));
    let row = |name: &str, us: f64| {
        println!(
            "{name:<44} {us:>8.2} us/op {:>9.0} ops/s  {:>5.2}x direct",
            1e6 / us,
            d / us
        );
    };
    println!();
    row("direct call, 1 thread (baseline)", d);
    row("pool, 1 worker, 1 in flight", seq1);
    row(&format!("pool, 1 worker, {IN_FLIGHT} in flight"), pipe1);
    row(&format!("pool, 2 workers, {IN_FLIGHT} in flight"), pipe2);
    println!();
    println!(
        "added per operation, 1 worker, pipelined: {:>6.2} us   (target < 10 us)",
        pipe1 - d
    );
    println!(
        "pool cost of a no-op job, 1 worker, pipelined: {noop:>5.2} us ({:.0} jobs/s)",
        1e6 / noop
    );
    println!(
        "added per operation, 1 worker, 1 in flight: {:>5.2} us   (thread hand-off both ways)",
        seq1 - d
    );
    println!(
        "throughput, 2 workers vs 1 worker:        {:>5.2}x      (target >= 1.7x)",
        pipe1 / pipe2
    );
    println!(
        "metrics recorded (Prometheus recorder): no-op job {noop_r:>5.2} us ({:.2}x without), \
         P-256 sign pipelined {pipe1_r:>6.2} us ({:.3}x without)",
        noop_r / noop,
        pipe1_r / pipe1
    );
    let recorded = recorder.handle().render();
    let count = recorded
        .lines()
        .find(|l| l.starts_with("hardkey_device_service_seconds_count{device=\"noop-rec\""))
        .unwrap_or("no sample recorded");
    println!("recorded: {count}");
    let s1 = key1.pool().stats();
    println!(
        "time inside the sign job on the worker (service time, 1 worker): mean {:.2} us, p50 {:.2} us",
        s1.service_time.mean.as_secs_f64() * 1e6,
        s1.service_time.p50.as_secs_f64() * 1e6
    );
    let stats = key2.pool().stats();
    println!(
        "pool stats (2 workers): {} ok, {} failed, latency p50 {:?} p99 {:?}",
        stats.completed, stats.failed, stats.latency.p50, stats.latency.p99
    );
}
