//! A remote PKCS#11 module that goes away: killing the `p11-kit server` mid-load makes
//! in-flight and new operations fail with the retriable device-unavailable error within a
//! bounded time (no hang); restarting it lets later operations succeed without restarting the
//! caller.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "test code"
)]

use std::time::{Duration, Instant};

use futures::executor::block_on;
use futures::future::join_all;
use hardkey_api::testkit::harness::{Arguments, NamedTest, run_on, trials_on};
use hardkey_api::testkit::verify_signature;
use hardkey_api::uri::Pkcs11Uri;
use hardkey_api::{
    ErrorKind, GenerateRequest, KeyAlgorithm, KeyStore, PrivateKey, SignatureScheme,
};
use hardkey_pkcs11::{PinSource, Pkcs11Config, Pkcs11Store};
use softhsm_tests::{P11KitServer, SoftHsm};

const SCHEME: SignatureScheme = SignatureScheme::EcdsaP256Sha256;
/// How long a failure may take to surface: well under the pool's 30 s default deadline, so a
/// hang cannot pass as a timeout.
const BOUND: Duration = Duration::from_secs(10);

fn kill_and_restart(hsm: &SoftHsm, server: &mut P11KitServer) {
    let config = Pkcs11Config::new(
        Pkcs11Uri::new().with_token(hsm.label()),
        PinSource::Value(hsm.user_pin().clone()),
    )
    .module(server.client_module())
    .sessions(4);
    let store = Pkcs11Store::open(config.clone()).expect("open through p11-kit");
    // A second store on the same module stays idle through the outage: its dead sessions
    // must not stop the module from reconnecting, and it must recover too.
    let idle = Pkcs11Store::open(config.sessions(2)).expect("second store");
    let key = block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP256).label("remote")))
        .unwrap();
    let spki = key.info().public_key.der().to_vec();

    // Load: two threads keep 32 signatures in flight each until the server dies under them.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loaders: Vec<_> = (0..2)
        .map(|_| {
            let (key, stop) = (key.clone(), std::sync::Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut results = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let batch = (0..32u32).map(|i| key.sign(SCHEME, &i.to_be_bytes()));
                    results.extend(block_on(join_all(batch)));
                }
                results
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    server.kill();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let results: Vec<_> = loaders
        .into_iter()
        .flat_map(|l| l.join().unwrap())
        .collect();
    let settled = killed.elapsed();
    assert!(
        settled < BOUND,
        "in-flight operations took {settled:?} to settle after the kill"
    );
    let (ok, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    assert!(
        !ok.is_empty() && !failed.is_empty(),
        "{} ok, {} failed",
        ok.len(),
        failed.len()
    );
    for err in failed.iter().map(|r| r.as_ref().unwrap_err()) {
        assert_eq!(err.kind(), ErrorKind::DeviceUnavailable, "{err}");
        assert!(err.is_retryable());
    }
    println!(
        "{} signed, {} failed cleanly; settled {settled:?} after the kill",
        ok.len(),
        failed.len()
    );

    // New operations while it is down: a prompt, retriable error.
    let start = Instant::now();
    let err = block_on(key.sign(SCHEME, b"while down")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeviceUnavailable, "{err}");
    assert!(start.elapsed() < BOUND, "took {:?}", start.elapsed());

    // Back up: the same stores serve again, without restarting the caller. While every worker
    // is down the pool fails jobs fast, so the first signatures may still fail until a worker's
    // backoff timer fires; within a bound, signing works.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut failures = 0;
    while let Err(e) = block_on(key.sign(SCHEME, b"after restart")) {
        assert!(
            e.is_retryable() && Instant::now() < deadline,
            "no recovery: {e}"
        );
        failures += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("recovered after {failures} fast failures");
    // No worker is left on a dead session: every signature now succeeds at the first try.
    for i in 0..20u8 {
        let sig = block_on(key.sign(SCHEME, &[i])).expect("every worker recovered");
        verify_signature(&spki, SCHEME, &[i], &sig).unwrap();
    }
    // The idle store's sessions died too; its first signature rebuilds one transparently.
    let idle_key = block_on(idle.open_id(&key.info().id)).expect("the idle store recovers");
    let sig = block_on(idle_key.sign(SCHEME, b"idle store")).expect("idle store signs");
    verify_signature(&spki, SCHEME, b"idle store", &sig).unwrap();
    let stats = store.pool().stats();
    assert!(stats.recoveries > 0, "{stats}");
    println!("recovered: {stats}");
}

/// The token and the `p11-kit server` exporting it (stopped first: fields drop in order).
struct Env {
    server: std::sync::Mutex<P11KitServer>,
    hsm: SoftHsm,
}

fn main() -> std::process::ExitCode {
    let start = || {
        let hsm = SoftHsm::start();
        let server = std::sync::Mutex::new(P11KitServer::start(&hsm));
        Env { server, hsm }
    };
    let tests: [NamedTest<Env>; 1] = [("kill_and_restart_the_remote_module", |env| {
        kill_and_restart(&env.hsm, &mut env.server.lock().unwrap());
    })];
    run_on(&Arguments::from_args(), start, |env| trials_on(env, &tests))
}
