//! Signatures per second on one swtpm: hardkey against a raw `tss-esapi` loop, one run.
//!
//! `cargo bench -p swtpm-tests --bench tpm_throughput` (or `make bench`).
//!
//! - **raw**: one tss-esapi context, the key loaded once, `TPM2_Sign` back to back (password
//!   session, null ticket, digest computed once): the ceiling.
//! - **hardkey, 1 key**: the same key file through a `TpmStore`, 1,000 requests kept queued.
//! - **hardkey, 10 keys**: 10 keys round-robin, 1,000 queued; the TPM holds 2 of them at a
//!   time, so most signatures first swap a key in (`TPM2_ContextLoad` of a saved context).
//! - **one-shot**: one signature at a time on a persistent key: hardkey `sign` awaited alone,
//!   hardkey from a cold start (store open + key open + sign), and one `tpm2_sign` process.
//!
//! Each configuration runs `SECONDS` per round, rounds interleaved, median reported.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "benchmark"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::executor::block_on;
use futures::stream::FuturesUnordered;
use hardkey_api::{
    GenerateRequest, KeyAlgorithm, KeyStore, KeyUri, PrivateKey, SignatureScheme, Tpm2Key, Tpm2Uri,
    encoding,
};
use hardkey_tpm::{TpmKey, TpmStore};
use swtpm_tests::{Swtpm, raw_sign_loop};

const SECONDS: f64 = 2.0;
const ROUNDS: usize = 4;
const QUEUED: usize = 1000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// The raw loop: returns signatures/s and per-signature p50/p99.
fn raw_loop(tpm: &Swtpm, key_file: &Path, scheme: SignatureScheme) -> (f64, Duration, Duration) {
    let r = raw_sign_loop(tpm, key_file, scheme, Duration::from_secs_f64(SECONDS));
    (r.per_second, r.p50, r.p99)
}

/// hardkey with `QUEUED` requests in flight over `keys` round-robin: signatures/s and the
/// device-call (service time) p50/p99 from the pool's statistics.
fn hardkey_loop(
    tpm: &Swtpm,
    dir: &Path,
    files: &[&Path],
    scheme: SignatureScheme,
) -> (f64, Duration, Duration) {
    let store = TpmStore::open(tpm.config(dir)).unwrap();
    let keys: Vec<TpmKey> = files
        .iter()
        .map(|f| {
            block_on(store.open(&KeyUri::Tpm2(Tpm2Uri::new(Tpm2Key::File(f.to_path_buf())))))
                .unwrap()
        })
        .collect();
    let digest = encoding::digest(scheme.hash().expect("TPM schemes have a hash"), b"bench");
    for key in &keys {
        block_on(key.sign_digest(scheme, &digest)).unwrap();
    }
    let mut next = 0usize;
    let mut issue = |in_flight: &mut FuturesUnordered<_>| {
        let key = &keys[next % keys.len()];
        next += 1;
        in_flight.push(key.sign_digest(scheme, &digest));
    };
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..QUEUED {
        issue(&mut in_flight);
    }
    let mut done = 0u64;
    let start = Instant::now();
    block_on(async {
        while let Some(r) = in_flight.next().await {
            r.unwrap();
            done += 1;
            if start.elapsed().as_secs_f64() < SECONDS {
                issue(&mut in_flight);
            } else if in_flight.is_empty() {
                break;
            }
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    let stats = store.pool().stats();
    drop(keys);
    store.pool().shutdown(Duration::from_secs(5));
    (
        done as f64 / elapsed,
        stats.service_time.p50,
        stats.service_time.p99,
    )
}

fn one_shot(tpm: &Swtpm, dir: &Path, alg: KeyAlgorithm, scheme: SignatureScheme, handle: u32) {
    let uri = KeyUri::Tpm2(Tpm2Uri::new(Tpm2Key::Handle(handle)).with_tcti(tpm.tcti()));
    let data = dir.join("one-shot.data");
    std::fs::write(&data, b"one shot").unwrap();
    let n = 30;
    // hardkey, warm: store and key open, one signature awaited at a time.
    let store = TpmStore::open(tpm.config(dir)).unwrap();
    let key = block_on(store.open(&uri)).unwrap();
    let mut warm = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        block_on(key.sign(scheme, b"one shot")).unwrap();
        warm.push(t.elapsed());
    }
    drop(key);
    store.pool().shutdown(Duration::from_secs(5));
    // hardkey, cold: what a short-lived process does (connect, find SRK, open key, sign).
    let mut cold = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let store = TpmStore::open(tpm.config(dir)).unwrap();
        let key = block_on(store.open(&uri)).unwrap();
        block_on(key.sign(scheme, b"one shot")).unwrap();
        cold.push(t.elapsed());
        drop(key);
        store.pool().shutdown(Duration::from_secs(5));
    }
    // tpm2_sign: one process per signature on the same persistent key.
    let mut tools = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let out = std::process::Command::new("tpm2_sign")
            .args(["-c", &format!("{handle:#x}"), "-g", "sha256", "-o"])
            .arg(dir.join("one-shot.sig"))
            .arg(&data)
            .arg(format!("--tcti={}", tpm.tcti()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tools.push(t.elapsed());
    }
    let med = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (warm, cold, tools) = (med(warm), med(cold), med(tools));
    println!(
        "  one-shot {alg}: hardkey warm {} | hardkey cold (open+sign) {} | tpm2_sign {}  \
         (tpm2_sign / hardkey cold = {:.2}x)",
        ms(warm),
        ms(cold),
        ms(tools),
        tools.as_secs_f64() / cold.as_secs_f64()
    );
}

fn main() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let store = TpmStore::open(tpm.config(dir.path())).unwrap();
    println!(
        "swtpm throughput, {SECONDS} s x {ROUNDS} rounds, median; hardkey keeps {QUEUED} \
         requests queued; p50/p99 are per-signature device time"
    );
    for (alg, scheme, handle) in [
        (
            KeyAlgorithm::EcP256,
            SignatureScheme::EcdsaP256Sha256,
            0x8100_0050u32,
        ),
        (
            KeyAlgorithm::Rsa2048,
            SignatureScheme::RsaPkcs1Sha256,
            0x8100_0051u32,
        ),
    ] {
        let files: Vec<_> = (0..10)
            .map(|i| {
                let key =
                    block_on(store.generate(GenerateRequest::new(alg).label(format!("{alg}-{i}"))))
                        .unwrap();
                key.key_ref().file().unwrap().to_path_buf()
            })
            .collect();
        block_on(store.flush_loaded()).unwrap();
        let one: Vec<&Path> = vec![files[0].as_path()];
        let ten: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
        let (mut raw, mut hk1, mut hk10) = (Vec::new(), Vec::new(), Vec::new());
        let mut last = None;
        for round in 0..ROUNDS {
            // Alternate which runs first: the emulator and the host's TCP state (the swtpm
            // TCTI connects once per command) drift within a run.
            let (r, h1) = if round % 2 == 0 {
                let r = raw_loop(&tpm, &files[0], scheme);
                (r, hardkey_loop(&tpm, dir.path(), &one, scheme))
            } else {
                let h1 = hardkey_loop(&tpm, dir.path(), &one, scheme);
                (raw_loop(&tpm, &files[0], scheme), h1)
            };
            let h10 = hardkey_loop(&tpm, dir.path(), &ten, scheme);
            println!(
                "    round {round}: raw {:.0}/s, hardkey 1 key {:.0}/s, 10 keys {:.0}/s",
                r.0, h1.0, h10.0
            );
            raw.push(r.0);
            hk1.push(h1.0);
            hk10.push(h10.0);
            last = Some((r, h1, h10));
        }
        let (raw_rate, hk1_rate, hk10_rate) = (median(raw), median(hk1), median(hk10));
        let (r, h1, h10) = last.unwrap();
        println!(
            "  {alg}: raw tss-esapi {raw_rate:.0}/s (p50 {} p99 {}) | hardkey 1 key {hk1_rate:.0}/s \
             (p50 {} p99 {}) = {:.1}% of raw | hardkey 10 keys {hk10_rate:.0}/s (p50 {} p99 {}) \
             = {:.1}% of 1 key",
            ms(r.1),
            ms(r.2),
            ms(h1.1),
            ms(h1.2),
            100.0 * hk1_rate / raw_rate,
            ms(h10.1),
            ms(h10.2),
            100.0 * hk10_rate / hk1_rate,
        );
        let persistent = KeyUri::Tpm2(Tpm2Uri::new(Tpm2Key::Handle(handle)));
        let key = block_on(store.generate(GenerateRequest::new(alg).location(persistent))).unwrap();
        block_on(store.flush_loaded()).unwrap();
        one_shot(&tpm, dir.path(), alg, scheme, handle);
        block_on(store.delete(&key.info().id)).unwrap();
    }
}
