//! T1 soak and T6 cancellation (issue 12) over every kind of device at once: software keys,
//! SoftHSM in this process, SoftHSM behind `p11-kit server` in another process, and swtpm.
//!
//! - **Soak:** mixed operations (every signature scheme each key offers, RSA-OAEP decryption,
//!   reopening the key for its public key and description), 256 in flight, every result
//!   checked by a software verifier: none lost, none wrong, none failed.
//! - **Cancellation:** the same mix with 60% of the futures dropped at a random moment (queued,
//!   on the device or answered); then every pool's counters add up, no device state was lost
//!   for it, every key still signs, and the TPM holds no object or session once the store is
//!   closed.
//!
//! `make test` runs 2,000 operations each; `HARDKEY_SOAK=1` (`make soak`) runs 20,000.
//! `HARDKEY_SOAK_SEED` replays a run's operation mix.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::panic,
    reason = "test code"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use hardkey_api::testkit::harness::{Arguments, NamedTest, run_on, trials_on};
use hardkey_api::testkit::soak::{Soak, SoakKey, SoakReport};
use hardkey_api::uri::Pkcs11Uri;
use hardkey_api::{
    DynKeyStore, GenerateRequest, KeyAlgorithm, KeyStore, PrivateKey, SecretSource, SharedKey,
};
use hardkey_pkcs11::{PinSource, Pkcs11Config, Pkcs11Store};
use hardkey_soft::SoftStore;
use hardkey_tpm::{TpmAdmin, TpmStore};
use softhsm_tests::{P11KitServer, SoftHsm};
use swtpm_tests::Swtpm;

struct Env {
    hsm: SoftHsm,
    server: P11KitServer,
    tpm: Swtpm,
}

/// The stores of one run, kept so the TPM store can be closed and checked afterwards.
struct Devices {
    keys: Vec<SoakKey>,
    /// (device, key name, key).
    signers: Vec<(String, String, SharedKey)>,
    tpm: Arc<TpmStore>,
    pkcs11: Vec<Arc<Pkcs11Store>>,
    _tpm_dir: tempfile::TempDir,
}

fn operations() -> usize {
    hardkey_api::testkit::soak::size(2_000, 20_000, "HARDKEY_SOAK_OPERATIONS")
}

fn seed() -> Option<u64> {
    std::env::var("HARDKEY_SOAK_SEED")
        .ok()
        .map(|s| s.parse().expect("HARDKEY_SOAK_SEED is a number"))
}

fn generate<S: KeyStore>(
    store: &Arc<S>,
    device: &str,
    algorithms: &[KeyAlgorithm],
    raw_rsa: bool,
    out: &mut Devices,
) {
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    for &alg in algorithms {
        // Keys kept as files need a label: it names the file.
        let label = format!("soak-{}-{alg}-{run}", device.replace(' ', "-"));
        let request = GenerateRequest::new(alg).raw_rsa(raw_rsa).label(label);
        let key = block_on(store.generate(request))
            .unwrap_or_else(|e| panic!("generating {alg} on {device}: {e}"));
        let key: SharedKey = Arc::new(key);
        let name = format!("{device} {alg}");
        let dyn_store: Arc<dyn DynKeyStore> = Arc::clone(store) as Arc<dyn DynKeyStore>;
        out.keys.push(
            SoakKey::new(name.clone(), Arc::clone(&key))
                .reopen_with(dyn_store)
                .pool(device),
        );
        out.signers.push((device.to_owned(), name, key));
    }
}

/// Keys on the four devices. Keys are generated one device at a time before the run (the
/// run itself only reads the tokens, which two SoftHSM processes share).
fn devices(env: &Env) -> Devices {
    use KeyAlgorithm::{EcP256, EcP384, Rsa2048};
    let tpm_dir = tempfile::tempdir().unwrap();
    let tpm = Arc::new(TpmStore::open(env.tpm.config(tpm_dir.path())).unwrap());
    let mut d = Devices {
        keys: Vec::new(),
        signers: Vec::new(),
        tpm: Arc::clone(&tpm),
        pkcs11: Vec::new(),
        _tpm_dir: tpm_dir,
    };
    let soft = Arc::new(SoftStore::in_memory().unwrap());
    generate(&soft, "soft", &[EcP256, EcP384, Rsa2048], false, &mut d);
    // SoftHSM 2.6 has no RSA-OAEP with SHA-256: hardkey pads on the host, over raw RSA.
    let local = Arc::new(env.hsm.store(4));
    generate(&local, "softhsm", &[EcP256, EcP384, Rsa2048], true, &mut d);
    let remote = Pkcs11Config::new(
        Pkcs11Uri::new().with_token(env.hsm.label()),
        PinSource::Value(env.hsm.user_pin().clone()),
    )
    .module(env.server.client_module())
    .sessions(4);
    let remote = Arc::new(Pkcs11Store::open(remote).unwrap());
    generate(&remote, "p11-kit", &[EcP256, Rsa2048], true, &mut d);
    generate(&tpm, "swtpm", &[EcP256, Rsa2048], false, &mut d);
    d.pkcs11 = vec![local, remote];
    d
}

/// After a run: no device state was lost, every key signs, and once the TPM store is closed
/// the TPM holds no transient object and no session.
fn check_devices_after(env: &Env, d: Devices, report: &SoakReport) {
    for pool in &report.pools {
        let lost = pool.after.device_lost - pool.before.device_lost;
        assert_eq!(lost, 0, "{}: device state lost during the run", pool.name);
    }
    for (_, name, key) in &d.signers {
        let scheme = key.info().signature_schemes[0];
        let sig = block_on(key.sign(scheme, b"after the run"))
            .unwrap_or_else(|e| panic!("{name} after the run: {e}"));
        hardkey_api::verify::verify_signature(
            key.info().public_key.der(),
            scheme,
            b"after the run",
            &sig,
        )
        .unwrap_or_else(|e| panic!("{name} after the run: {e}"));
    }
    let Devices {
        keys,
        signers,
        tpm,
        pkcs11,
        ..
    } = d;
    drop((keys, signers));
    // Wait for the PKCS#11 workers too: one still closing its session in SoftHSM when the
    // process exits races OpenSSL's exit handlers.
    for store in pkcs11 {
        let report = store.pool().shutdown(Duration::from_secs(10));
        assert_eq!(report.detached_workers, 0, "{report:?}");
    }
    let tpm = Arc::into_inner(tpm).expect("every TPM key dropped");
    swtpm_tests::close_store(tpm);
    let mut admin = TpmAdmin::connect(&env.tpm.tcti(), &SecretSource::None).unwrap();
    let objects = admin.transient_handles().unwrap();
    let sessions = admin.session_handles().unwrap();
    assert!(
        objects.is_empty() && sessions.is_empty(),
        "left on the TPM: objects {objects:x?}, sessions {sessions:x?}"
    );
}

fn wait_idle(mut report: SoakReport, keys: &[SoakKey]) -> SoakReport {
    // A dropped future's job may still be on a worker: wait until every pool is idle, then
    // read the counters again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let busy = keys
            .iter()
            .filter_map(|k| k.key().pool_stats())
            .any(|s| s.queued + s.in_flight > 0);
        if !busy {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pools still busy 30 s after the run"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    report.refresh_pools(keys);
    report
}

fn soak(env: &Env) {
    let d = devices(env);
    let mut soak = Soak::new(d.keys.clone())
        .operations(operations())
        .in_flight(256);
    if let Some(seed) = seed() {
        soak = soak.seed(seed);
    }
    let report = block_on(soak.run());
    println!("soak: {report}");
    for (op, n) in &report.by_operation {
        println!("  {op}: {n}");
    }
    report.assert_clean();
    let report = wait_idle(report, &d.keys);
    check_devices_after(env, d, &report);
}

fn cancellation(env: &Env) {
    let d = devices(env);
    // Signing and decryption only: each is exactly one job on its key's pool.
    let keys = d
        .signers
        .iter()
        .map(|(device, name, key)| SoakKey::new(name.clone(), Arc::clone(key)).pool(device))
        .collect();
    let mut soak = Soak::new(keys)
        .operations(operations())
        .in_flight(256)
        .drop_futures(60, Duration::from_millis(30));
    if let Some(seed) = seed() {
        soak = soak.seed(seed);
    }
    let report = block_on(soak.run());
    println!("cancellation: {report}");
    report.assert_clean();
    assert!(
        report.dropped > report.submitted / 5,
        "too few futures dropped: {report}"
    );
    println!(
        "  {} dropped, {} of them before their first poll",
        report.dropped, report.never_polled
    );
    let report = wait_idle(report, &d.keys);
    for pool in &report.pools {
        println!(
            "  {}: {} jobs, {} completed, {} failed, {} skipped as cancelled",
            pool.name,
            pool.jobs,
            pool.after.completed - pool.before.completed,
            pool.after.failed - pool.before.failed,
            pool.after.cancelled - pool.before.cancelled
        );
        pool.assert_adds_up();
    }
    check_devices_after(env, d, &report);
}

fn main() -> std::process::ExitCode {
    let mut args = Arguments::from_args();
    // One swtpm: its TCTI sockets are not close-on-exec, and the trials each open a store.
    args.test_threads = Some(1);
    let tests: [NamedTest<Env>; 2] = [
        ("soak_mixed_operations_on_every_device", soak),
        (
            "cancellation_dropped_futures_leave_pools_consistent",
            cancellation,
        ),
    ];
    let start = || {
        let hsm = SoftHsm::start();
        let server = P11KitServer::start(&hsm);
        let tpm = Swtpm::start();
        Env { hsm, server, tpm }
    };
    run_on(&args, start, |env| trials_on(env, &tests))
}
