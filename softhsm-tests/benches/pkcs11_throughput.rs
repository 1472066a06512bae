//! Signatures per second through hardkey against a raw `cryptoki` loop on the same token and
//! key (token objects), at 1 and 2 sessions, ECDSA P-256 and RSA-2048, one run: on SoftHSM,
//! then on tpm2-pkcs11 (swtpm behind tpm2-abrmd).
//!
//! `cargo bench -p softhsm-tests --bench pkcs11_throughput` (or `make bench`); give `softhsm`
//! or `tpm2-pkcs11` after `--` for one table only. The raw loop is
//! the ceiling: N threads, each with its own logged-in session, calling `C_Sign` back to back.
//! hardkey runs the same `C_Sign` on N pool workers, fed by one caller thread that keeps
//! 64 x N signatures in flight. Each configuration runs for `SECONDS` per round, rounds
//! interleaved, median reported.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "benchmark"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use futures::StreamExt;
use futures::executor::block_on;
use futures::stream::FuturesUnordered;
use hardkey_api::{GenerateRequest, KeyAlgorithm, KeyStore, PrivateKey, SignatureScheme, encoding};
use secrecy::SecretString;
use softhsm_tests::{SoftHsm, Tpm2Pkcs11};

const SECONDS: f64 = 1.5;
const ROUNDS: usize = 5;

/// The token both loops use.
struct Token<'a> {
    module: &'a std::path::Path,
    label: &'a str,
    pin: &'a SecretString,
}

fn raw_loop(
    hsm: &Token<'_>,
    id: &[u8],
    mechanism: fn() -> Mechanism<'static>,
    data: &[u8],
    sessions: usize,
) -> f64 {
    let ctx = Pkcs11::new(hsm.module).unwrap();
    let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = ctx
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == hsm.label)
        .unwrap();
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..sessions {
            scope.spawn(|| {
                let session = ctx.open_rw_session(slot).unwrap();
                match session.login(UserType::User, Some(hsm.pin)) {
                    Ok(())
                    | Err(cryptoki::error::Error::Pkcs11(
                        cryptoki::error::RvError::UserAlreadyLoggedIn,
                        _,
                    )) => {}
                    Err(e) => panic!("login: {e}"),
                }
                let key = session
                    .find_objects(&[
                        Attribute::Class(ObjectClass::PRIVATE_KEY),
                        Attribute::Id(id.to_vec()),
                    ])
                    .unwrap()[0];
                let mechanism = mechanism();
                while !stop.load(Ordering::Relaxed) {
                    std::hint::black_box(session.sign(&mechanism, key, data).unwrap());
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(Duration::from_secs_f64(SECONDS));
        stop.store(true, Ordering::Relaxed);
    });
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn hardkey_loop(
    key: &impl PrivateKey,
    scheme: SignatureScheme,
    digest: &[u8],
    in_flight: usize,
) -> (f64, Vec<Duration>) {
    let deadline = Instant::now() + Duration::from_secs_f64(SECONDS);
    let start = Instant::now();
    let mut latencies = Vec::new();
    block_on(async {
        let mut pending = FuturesUnordered::new();
        let submit = |pending: &mut FuturesUnordered<_>| {
            let t = Instant::now();
            let fut = key.sign_digest(scheme, digest);
            pending.push(async move { (fut.await, t.elapsed()) });
        };
        for _ in 0..in_flight {
            submit(&mut pending);
        }
        while let Some((sig, latency)) = pending.next().await {
            std::hint::black_box(sig.unwrap());
            latencies.push(latency);
            if Instant::now() < deadline {
                submit(&mut pending);
            }
        }
    });
    (
        latencies.len() as f64 / start.elapsed().as_secs_f64(),
        latencies,
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * q) as usize]
}

fn main() {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    // Both fixtures start before any thread (they set the modules' environment).
    let hsm = wanted("softhsm").then(SoftHsm::start);
    let tpm2 = wanted("tpm2-pkcs11").then(Tpm2Pkcs11::start);
    if let Some(hsm) = &hsm {
        let token = Token {
            module: hsm.module(),
            label: hsm.label(),
            pin: hsm.user_pin(),
        };
        table("SoftHSM2 token objects", &token, |n| hsm.store(n));
    }
    if let Some(t) = &tpm2 {
        let token = Token {
            module: t.module(),
            label: t.label(),
            pin: t.user_pin(),
        };
        table(
            "tpm2-pkcs11 1.9 token objects (swtpm behind tpm2-abrmd)",
            &token,
            |n| t.store(n),
        );
    }
}

fn table(title: &str, token: &Token<'_>, open: impl Fn(usize) -> hardkey_pkcs11::Pkcs11Store) {
    println!("{title}, {SECONDS} s per measurement, median of {ROUNDS} interleaved rounds\n");
    println!(
        "{:<26} {:>8} {:>12} {:>12} {:>7} {:>10} {:>10}",
        "key", "sessions", "raw ops/s", "hardkey ops/s", "ratio", "p50", "p99"
    );
    for (alg, scheme) in [
        (KeyAlgorithm::EcP256, SignatureScheme::EcdsaP256Sha256),
        (KeyAlgorithm::Rsa2048, SignatureScheme::RsaPkcs1Sha256),
    ] {
        let hash = scheme.hash().expect("ECDSA and RSA have a hash");
        let digest = encoding::digest(hash, b"hardkey pkcs11 benchmark");
        let (mechanism, data): (fn() -> Mechanism<'static>, _) = match alg {
            KeyAlgorithm::EcP256 => (|| Mechanism::Ecdsa, digest.clone()),
            _ => (
                || Mechanism::RsaPkcs,
                encoding::digest_info(hash, &digest).unwrap(),
            ),
        };
        for sessions in [1, 2] {
            let store = Arc::new(open(sessions));
            let key = block_on(
                store.generate(GenerateRequest::new(alg).label(format!("bench-{alg}-{sessions}"))),
            )
            .unwrap();
            let id = key.info().id.as_bytes().to_vec();
            let (mut raw, mut ours, mut lat) = (vec![], vec![], vec![]);
            for _ in 0..ROUNDS {
                raw.push(raw_loop(token, &id, mechanism, &data, sessions));
                let (rate, l) = hardkey_loop(&key, scheme, &digest, 64 * sessions);
                ours.push(rate);
                lat.extend(l);
            }
            let (raw, ours) = (median(raw), median(ours));
            println!(
                "{:<26} {:>8} {:>12.0} {:>12.0} {:>6.1}% {:>10.2?} {:>10.2?}",
                format!("{alg} {scheme}"),
                sessions,
                raw,
                ours,
                100.0 * ours / raw,
                percentile(&mut lat, 0.50),
                percentile(&mut lat, 0.99)
            );
            block_on(store.delete(&key.info().id)).unwrap();
        }
    }
    println!();
}
