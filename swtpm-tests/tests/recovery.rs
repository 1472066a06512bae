//! Recovery on swtpm: the TPM restarts (a TPM reset: transient objects and saved contexts
//! gone) under load, or goes away for a while; operations in flight fail with a retryable
//! error within a bounded time, the worker reconnects and reloads keys from their key files
//! and persistent handles, and later operations succeed without reopening anything.
//!
//! `restart_under_load` kills swtpm with SIGKILL and restarts it 4 times (20 with
//! `HARDKEY_SOAK=1`, `make soak`; `HARDKEY_RESTARTS=N` to choose) while several signers keep
//! signatures in flight on a key file and a persistent key, both with an auth value. Every
//! signature is checked in software; the time from each restart to the first signature of
//! each key is printed; the dictionary-attack counter is read around every restart, to show
//! what swtpm adds (it counts an unclean shutdown as one failure) and that hardkey adds none.
//! `restart_between_commands` restarts swtpm while no command is in flight, which the
//! worker cannot see as a lost connection: its stale SRK context and session must not make
//! the keys fail for good.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "test bodies in harness = false trials; the figures are printed for BENCHMARKS.md"
)]

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use hardkey_api::testkit::{block_on, verify_signature};
use hardkey_api::{
    GenerateRequest, KeyAlgorithm, KeyStore, KeyUri, PrivateKey, SecretSource, SignatureScheme,
    Tpm2Key, Tpm2Uri,
};
use hardkey_tpm::{TpmAdmin, TpmKey, TpmStatus};
use secrecy::SecretString;
use swtpm_tests::{Swtpm, close_store, open_store, run, trial};

const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// The auth value of both keys: every signature authorizes a DA-protected object.
const KEY_AUTH: &str = "restart-key-auth";

/// The bound asserted on the time from a restart to a key's first signature. The target is
/// 2 s; the shared 2-core machines get headroom, and the figures are printed.
const FIRST_SUCCESS_BOUND: Duration = Duration::from_secs(5);

/// Signer threads per key, and signatures each keeps in flight.
const SIGNERS_PER_KEY: usize = 2;
const IN_FLIGHT: usize = 8;

/// Restarts: `HARDKEY_RESTARTS`, else 20 with `HARDKEY_SOAK=1`, else 4.
fn restarts() -> usize {
    hardkey_api::testkit::soak::size(4, 20, "HARDKEY_RESTARTS")
}

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
    let auth = SecretSource::Value(SecretString::from(KEY_AUTH));
    let store = open_store(tpm.config(dir).op_timeout(Some(OP_TIMEOUT)).key_auth(auth));
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

/// `tpm2_getcap` on the emulator; no TPM command of this process may be in flight (a child
/// started during one inherits the swtpm TCTI's socket, see `swtpm_tests::close_store`).
fn getcap(tpm: &Swtpm, what: &str) -> String {
    let out = Command::new("tpm2_getcap")
        .arg(what)
        .arg(format!("--tcti={}", tpm.tcti()))
        .stdin(Stdio::null())
        .output()
        .expect("run tpm2_getcap");
    assert!(
        out.status.success(),
        "tpm2_getcap {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("tpm2_getcap prints text")
}

/// `TPM2_PT_LOCKOUT_COUNTER` as tpm2_getcap reports it.
fn getcap_lockout_counter(tpm: &Swtpm) -> u32 {
    let text = getcap(tpm, "properties-variable");
    let value = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("TPM2_PT_LOCKOUT_COUNTER:"))
        .unwrap_or_else(|| panic!("no TPM2_PT_LOCKOUT_COUNTER in:\n{text}"))
        .trim();
    u32::from_str_radix(value.trim_start_matches("0x"), 16).expect("hex counter")
}

/// The DA state read in this process (`TPM2_GetCapability` through `TpmAdmin`: no child
/// process, so it may run while the store's worker talks to the TPM). Retried while the
/// TPM is still coming back.
fn status(tpm: &Swtpm) -> TpmStatus {
    let mut last = None;
    for _ in 0..50 {
        match TpmAdmin::connect(&tpm.tcti(), &SecretSource::None).and_then(|mut a| a.status()) {
            Ok(s) => return s,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("TPM status unreadable: {last:?}")
}

/// Every handle loaded or saved on the emulator (objects and sessions).
fn all_handles(tpm: &Swtpm) -> Vec<String> {
    [
        "handles-transient",
        "handles-loaded-session",
        "handles-saved-session",
    ]
    .iter()
    .flat_map(|what| {
        getcap(tpm, what)
            .lines()
            .map(|l| l.trim_start_matches("- ").trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
    })
    .collect()
}

/// A signature that came back valid: which key, when it was asked for, when it came back.
#[derive(Clone, Copy)]
struct Success {
    key: usize,
    submitted: Instant,
    completed: Instant,
}

/// The last failure a signer saw, for the message when a key does not come back.
static LAST_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// What one signer thread saw.
#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    invalid: Vec<String>,
}

/// A thread keeping `IN_FLIGHT` signatures in flight on `key` until `stop`; valid ones are
/// appended to `log`, invalid ones (a bug) kept in the tally.
fn signer(
    key_index: usize,
    key: TpmKey,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Success>>>,
    thread: usize,
) -> std::thread::JoinHandle<Tally> {
    std::thread::spawn(move || {
        let scheme = SignatureScheme::EcdsaP256Sha256;
        let mut tally = Tally::default();
        let mut round = 0u64;
        while !stop.load(Ordering::Relaxed) {
            round += 1;
            let batch = (0..IN_FLIGHT).map(|i| {
                let key = key.clone();
                async move {
                    let msg = format!("key {key_index} thread {thread} round {round} #{i}");
                    let submitted = Instant::now();
                    let result = key.sign(scheme, msg.as_bytes()).await;
                    (msg, result, submitted, Instant::now())
                }
            });
            let mut any_failed = false;
            for (msg, result, submitted, completed) in block_on(join_all(batch)) {
                match result {
                    Ok(sig) => {
                        match verify_signature(
                            key.info().public_key.der(),
                            scheme,
                            msg.as_bytes(),
                            &sig,
                        ) {
                            Ok(()) => {
                                tally.ok += 1;
                                log.lock().unwrap().push(Success {
                                    key: key_index,
                                    submitted,
                                    completed,
                                });
                            }
                            Err(e) => tally.invalid.push(format!("{msg}: {e}")),
                        }
                    }
                    Err(e) => {
                        let took = completed - submitted;
                        assert!(e.is_retryable(), "not retryable: {e}");
                        assert!(took <= OP_TIMEOUT + Duration::from_secs(2), "{took:?}");
                        tally.failed += 1;
                        any_failed = true;
                        *LAST_ERROR.lock().unwrap() = Some(format!("{e} (after {took:?})"));
                    }
                }
            }
            if any_failed {
                // The TPM is down: fail fast is the pool's job, not spinning ours.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        tally
    })
}

/// The first valid signature of `key` asked for after `killed` (so served by the restarted
/// TPM), waiting at most `limit`.
fn first_success(
    log: &Mutex<Vec<Success>>,
    key: usize,
    killed: Instant,
    limit: Duration,
) -> Option<Success> {
    let deadline = Instant::now() + limit;
    loop {
        let found = log
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.key == key && s.submitted >= killed)
            .min_by_key(|s| s.completed)
            .copied();
        if found.is_some() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// swtpm is killed with SIGKILL and restarted `restarts()` times while signer threads keep
/// signatures in flight on a key file and a persistent key.
fn restart_under_load() {
    let n = restarts();
    let mut tpm = Swtpm::start();
    // Failures are kept (not forgotten after the fixture's 1 s) for the whole run, so the
    // counter shows every one swtpm and hardkey add.
    let out = Command::new("tpm2_dictionarylockout")
        .args([
            "--setup-parameters",
            "--max-tries=1000",
            "--recovery-time=86400",
        ])
        .arg("--lockout-recovery-time=1")
        .arg(format!("--tcti={}", tpm.tcti()))
        .stdin(Stdio::null())
        .output()
        .expect("run tpm2_dictionarylockout");
    assert!(out.status.success(), "{out:?}");
    let counter_before = getcap_lockout_counter(&tpm);
    let dir = tempfile::tempdir().unwrap();
    let (store, file_key, persistent_key) = keys(&tpm, dir.path());
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let key_list = [file_key.clone(), persistent_key.clone()];
    let load: Vec<_> = (0..SIGNERS_PER_KEY * key_list.len())
        .map(|t| {
            let k = t % key_list.len();
            signer(
                k,
                key_list[k].clone(),
                Arc::clone(&stop),
                Arc::clone(&log),
                t,
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    println!(
        "swtpm SIGKILLed and restarted {n} times; {} signers x {IN_FLIGHT} in flight on a key \
         file and a persistent key (P-256, with an auth value)",
        SIGNERS_PER_KEY * key_list.len()
    );
    let mut worst = Duration::ZERO;
    let mut firsts = Vec::new();
    let (mut swtpm_added, mut hardkey_added) = (0u32, 0u32);
    let mut counter = status(&tpm).lockout_counter;
    for i in 0..n {
        let steady = status(&tpm).lockout_counter;
        // Between restarts only hardkey talks to the TPM: any failure counted is its own.
        hardkey_added += steady - counter;
        let killed = Instant::now();
        tpm.restart();
        let up = Instant::now();
        let mut line = format!(
            "restart {:2}: swtpm back after {:6.1} ms; first signature",
            i + 1,
            ms(up - killed)
        );
        for (k, what) in ["key file", "persistent"].iter().enumerate() {
            let first =
                first_success(&log, k, killed, Duration::from_secs(15)).unwrap_or_else(|| {
                    panic!(
                        "restart {}: no {what} signature in 15 s; last error: {:?}; {}",
                        i + 1,
                        LAST_ERROR.lock().unwrap(),
                        store.pool().stats()
                    )
                });
            let after = first.completed.saturating_duration_since(up);
            worst = worst.max(after);
            firsts.push(after);
            line.push_str(&format!(" {what} +{:6.1} ms", ms(after)));
        }
        counter = status(&tpm).lockout_counter;
        // The restart itself: swtpm counts its unclean shutdown (at most 1); more would be
        // failed authorizations of hardkey's while it recovered.
        let at_restart = counter - steady;
        swtpm_added += at_restart.min(1);
        hardkey_added += at_restart.saturating_sub(1);
        println!("{line}; DA counter {steady} -> {counter}");
        // Steady load before the next kill (DA-protected keys used on the new instance).
        std::thread::sleep(Duration::from_millis(300));
    }
    let steady = status(&tpm).lockout_counter;
    hardkey_added += steady - counter;
    stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::default();
    for handle in load {
        let t = handle.join().unwrap();
        tally.ok += t.ok;
        tally.failed += t.failed;
        tally.invalid.extend(t.invalid);
    }
    // Keys come back from their key file and persistent handle: no reopen needed.
    sign_eventually(&file_key, Duration::from_secs(15));
    sign_eventually(&persistent_key, Duration::from_secs(15));
    let stats = store.pool().stats();
    block_on(store.delete(&persistent_key.info().id)).unwrap();
    drop((file_key, persistent_key, key_list));
    close_store(store);

    firsts.sort();
    let median = firsts[firsts.len() / 2];
    let counter_after = getcap_lockout_counter(&tpm);
    let final_status = status(&tpm);
    println!(
        "signatures: {} valid, {} invalid, {} failed (retryable) during the restarts",
        tally.ok,
        tally.invalid.len(),
        tally.failed
    );
    println!(
        "restart to first signature: median {:.1} ms, worst {:.1} ms (target 2 s, asserted {} s)",
        ms(median),
        ms(worst),
        FIRST_SUCCESS_BOUND.as_secs()
    );
    println!(
        "DA counter (tpm2_getcap): {counter_before} before, {counter_after} after {n} unclean \
         restarts: swtpm added {swtpm_added}, hardkey added {hardkey_added}; in lockout: {}",
        final_status.in_lockout
    );
    println!("pool: {stats}, {} recoveries", stats.recoveries);

    assert!(
        tally.invalid.is_empty(),
        "invalid signatures: {:?}",
        tally.invalid
    );
    assert!(
        worst <= FIRST_SUCCESS_BOUND,
        "a key took {worst:?} to sign after a restart"
    );
    assert!(
        stats.recoveries >= n as u64,
        "{n} restarts, {} recoveries: {stats}",
        stats.recoveries
    );
    assert!(tally.ok >= 10 * n as u64, "{stats}");
    assert_eq!(
        hardkey_added, 0,
        "failed authorizations counted beyond swtpm's restarts"
    );
    assert!(
        counter_after - counter_before <= n as u32,
        "{n} restarts added {} to the DA counter",
        counter_after - counter_before
    );
    assert!(!final_status.in_lockout, "{final_status}");
    let left = all_handles(&tpm);
    assert!(left.is_empty(), "handles left in the TPM: {left:?}");
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
    drop((file_key, persistent_key));
    close_store(store);
    let left = all_handles(&tpm);
    assert!(left.is_empty(), "handles left in the TPM: {left:?}");
}

/// swtpm restarts while no command is in flight (the swtpm TCTI connects for each command,
/// so the worker sees no broken connection): the saved SRK context, the HMAC session and the
/// loaded keys of the old instance are gone. The next signatures must still succeed (the
/// worker rebuilds its state), with the same keys, not fail for good.
fn restart_between_commands() {
    let mut tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let (store, file_key, persistent_key) = keys(&tpm, dir.path());
    for round in 0..3 {
        for key in [&file_key, &persistent_key] {
            let scheme = SignatureScheme::EcdsaP256Sha256;
            let msg = format!("between commands {round}");
            let sig = block_on(key.sign(scheme, msg.as_bytes())).unwrap_or_else(|e| {
                panic!("round {round}: the first signature after an idle restart failed: {e}")
            });
            verify_signature(key.info().public_key.der(), scheme, msg.as_bytes(), &sig).unwrap();
        }
        tpm.restart();
    }
    sign_eventually(&file_key, Duration::from_secs(15));
    block_on(store.delete(&persistent_key.info().id)).unwrap();
    drop((file_key, persistent_key));
    close_store(store);
    let left = all_handles(&tpm);
    assert!(left.is_empty(), "handles left in the TPM: {left:?}");
}

fn main() -> std::process::ExitCode {
    // Each trial runs its own emulator (it restarts it).
    run(|_| {
        vec![
            trial("restart_under_load", restart_under_load),
            trial("tpm_down_then_back", tpm_down_then_back),
            trial("restart_between_commands", restart_between_commands),
        ]
    })
}
