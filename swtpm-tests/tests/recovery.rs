//! Recovery on swtpm: the TPM restarts (a TPM reset: transient objects and saved contexts
//! gone) under load, or goes away for a while; operations in flight fail with a retryable
//! error within a bounded time, the worker reconnects and reloads keys from their key files
//! and persistent handles, and later operations succeed without reopening anything.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test bodies in harness = false trials"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use hardkey_api::testkit::{block_on, verify_signature};
use hardkey_api::{
    GenerateRequest, KeyAlgorithm, KeyStore, KeyUri, PrivateKey, SignatureScheme, Tpm2Key, Tpm2Uri,
};
use hardkey_tpm::TpmKey;
use swtpm_tests::{Swtpm, open_store, run, trial};

const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// Signs until it succeeds (the worker may still be reconnecting), at most `limit`.
fn sign_eventually(key: &TpmKey, limit: Duration) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    let scheme = key.info().signature_schemes[0];
    loop {
        match block_on(key.sign(scheme, b"after recovery")) {
            Ok(sig) => {
                verify_signature(key.info().public_key.der(), scheme, b"after recovery", &sig)
                    .unwrap();
                return sig;
            }
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("no recovery within {limit:?}: {e}"),
        }
    }
}

fn keys(tpm: &Swtpm, dir: &std::path::Path) -> (hardkey_tpm::TpmStore, TpmKey, TpmKey) {
    let store = open_store(tpm.config(dir).op_timeout(Some(OP_TIMEOUT)));
    let file_key =
        block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP256).label("file-key")))
            .unwrap();
    let handle = Tpm2Uri::new(Tpm2Key::Handle(0x8100_0042)).with_tcti(tpm.tcti());
    let persistent_key = block_on(
        store.generate(GenerateRequest::new(KeyAlgorithm::EcP256).location(KeyUri::Tpm2(handle))),
    )
    .unwrap();
    (store, file_key, persistent_key)
}

/// swtpm restarts while 2 threads keep 50 signatures in flight each.
fn restart_under_load() {
    let mut tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let (store, file_key, persistent_key) = keys(&tpm, dir.path());
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = [file_key.clone(), persistent_key.clone()]
        .into_iter()
        .map(|key| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let scheme = SignatureScheme::EcdsaP256Sha256;
                let (mut ok, mut failed) = (0u32, 0u32);
                while !stop.load(Ordering::Relaxed) {
                    let batch = (0..50).map(|i| {
                        let key = key.clone();
                        async move {
                            let started = Instant::now();
                            let msg = format!("load {i}");
                            let result = key.sign(scheme, msg.as_bytes()).await;
                            (msg, result, started.elapsed())
                        }
                    });
                    for (msg, result, took) in block_on(join_all(batch)) {
                        match result {
                            Ok(sig) => {
                                verify_signature(
                                    key.info().public_key.der(),
                                    scheme,
                                    msg.as_bytes(),
                                    &sig,
                                )
                                .unwrap();
                                ok += 1;
                            }
                            Err(e) => {
                                assert!(e.is_retryable(), "not retryable: {e}");
                                assert!(took <= OP_TIMEOUT + Duration::from_secs(2), "{took:?}");
                                failed += 1;
                            }
                        }
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    tpm.restart();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let mut total_ok = 0;
    for handle in load {
        let (ok, failed) = handle.join().unwrap();
        assert!(ok > 0, "no signature succeeded ({failed} failed)");
        total_ok += ok;
    }
    // Keys come back from their key file and persistent handle: no reopen needed.
    sign_eventually(&file_key, Duration::from_secs(15));
    sign_eventually(&persistent_key, Duration::from_secs(15));
    let stats = store.pool().stats();
    assert!(
        stats.recoveries >= 1,
        "the worker never reconnected: {stats}"
    );
    assert!(total_ok > 100, "{stats}");
    block_on(store.delete(&persistent_key.info().id)).unwrap();
}

/// swtpm goes away for a while: operations fail with a retryable error within the deadline;
/// once it is back they succeed.
fn tpm_down_then_back() {
    let mut tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let (store, file_key, persistent_key) = keys(&tpm, dir.path());
    sign_eventually(&file_key, Duration::from_secs(1));
    tpm.kill();
    let started = Instant::now();
    let err = block_on(file_key.sign(SignatureScheme::EcdsaP256Sha256, b"down")).unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        started.elapsed() <= OP_TIMEOUT + Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    tpm.restart();
    sign_eventually(&file_key, Duration::from_secs(15));
    sign_eventually(&persistent_key, Duration::from_secs(15));
    block_on(store.delete(&persistent_key.info().id)).unwrap();
}

fn main() -> std::process::ExitCode {
    // Each trial runs its own emulator (it restarts it).
    run(|_| {
        vec![
            trial("restart_under_load", restart_under_load),
            trial("tpm_down_then_back", tpm_down_then_back),
        ]
    })
}
