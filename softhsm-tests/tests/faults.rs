//! Device failures SoftHSM cannot produce, injected by `pkcs11-fault-shim`: a PIN on its final
//! try or locked gets no login attempt at all; a wrong PIN is tried once, never again; a lost
//! session is rebuilt and the sign retried once; a failed operation's session is replaced; a
//! slow device misses deadlines with a timeout, not a hang.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "test code"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use futures::future::join_all;
use hardkey_api::testkit::harness::{Arguments, NamedTest, run_on, trials_on};
use hardkey_api::testkit::soak::{Soak, SoakKey};
use hardkey_api::testkit::verify_signature;
use hardkey_api::uri::Pkcs11Uri;
use hardkey_api::{
    DynKeyStore, ErrorKind, GenerateRequest, KeyAlgorithm, KeyStore, PrivateKey, SharedKey,
    SignatureScheme,
};
use hardkey_pkcs11::{PinSource, Pkcs11Config, Pkcs11Key, Pkcs11Store};
use softhsm_tests::{FaultShim, SoftHsm};

const SCHEME: SignatureScheme = SignatureScheme::EcdsaP256Sha256;
const CKR_FUNCTION_FAILED: u64 = 0x06;
const CKR_DEVICE_ERROR: u64 = 0x30;
const CKR_PIN_INCORRECT: u64 = 0xa0;
const CKR_SESSION_HANDLE_INVALID: u64 = 0xb3;

struct Env {
    hsm: SoftHsm,
    shim: FaultShim,
}

impl Env {
    fn config(&self, sessions: usize) -> Pkcs11Config {
        Pkcs11Config::new(
            Pkcs11Uri::new().with_token(self.hsm.label()),
            PinSource::Value(self.hsm.user_pin().clone()),
        )
        .module(self.shim.module())
        .sessions(sessions)
    }

    fn store_and_key(&self, sessions: usize) -> (Pkcs11Store, Pkcs11Key) {
        self.shim.set("");
        let store = Pkcs11Store::open(self.config(sessions)).unwrap();
        let key = block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP256))).unwrap();
        (store, key)
    }
}

fn final_try_gets_no_login(env: &Env) {
    env.shim.set("token_flags=final_try");
    let before = env.shim.calls("C_Login");
    let err = Pkcs11Store::open(env.config(4)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PinLocked, "{err}");
    assert!(err.to_string().contains("one PIN attempt is left"), "{err}");
    assert_eq!(
        env.shim.calls("C_Login"),
        before,
        "a login was attempted on the final try"
    );
}

fn locked_pin_gets_no_login(env: &Env) {
    env.shim.set("token_flags=locked");
    let before = env.shim.calls("C_Login");
    let err = Pkcs11Store::open(env.config(4)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PinLocked, "{err}");
    assert!(
        err.to_string().contains("SO PIN"),
        "says how to unlock: {err}"
    );
    assert_eq!(env.shim.calls("C_Login"), before);
}

fn so_pin_on_final_try_gets_no_token_init(env: &Env) {
    let admin = hardkey_pkcs11::TokenAdmin::new(Some(env.shim.module())).unwrap();
    let slot = admin
        .tokens()
        .unwrap()
        .into_iter()
        .find(|t| t.label == env.hsm.label())
        .expect("the fixture's token")
        .slot_id;
    for (flags, says) in [
        ("so_final_try", "one attempt is left"),
        ("so_locked", "locked"),
    ] {
        env.shim.set(&format!("token_flags={flags}"));
        let before = env.shim.calls("C_InitToken");
        // Re-initializing would destroy the keys; with a wrong SO PIN it would also spend the
        // SO PIN's last try. It must not be attempted at all.
        let err = admin
            .init_token(
                slot,
                env.hsm.label(),
                &secrecy::SecretString::from("wrong-so"),
                true,
            )
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PinLocked, "{err}");
        assert!(err.to_string().contains(says), "{err}");
        assert_eq!(
            env.shim.calls("C_InitToken"),
            before,
            "C_InitToken was called"
        );
    }
    env.shim.set("");
}

/// The PKCS#11 calls one legacy decryption makes, from the shim's log: every call between the
/// log's length before and after, with the return codes dropped (`strip_rv`) or kept.
fn decrypt_calls(env: &Env, key: &Pkcs11Key, ct: &[u8], strip_rv: bool) -> (bool, Vec<String>) {
    use hardkey_api::DecryptScheme;
    let before = env.shim.log().len();
    let ok = block_on(key.decrypt(DecryptScheme::RsaPkcs1v15Legacy, ct)).is_ok();
    let calls = env.shim.log()[before..]
        .iter()
        .map(|l| match (strip_rv, l.split_once(" rv=")) {
            (true, Some((call, _))) => call.to_owned(),
            _ => l.clone(),
        })
        .collect();
    (ok, calls)
}

/// Security finding 7: a bad PKCS#1 v1.5 ciphertext costs the token the same calls as a good
/// one (no session replaced after the failure), on both paths: raw RSA with the padding
/// checked on the host (identical calls and return codes), and the token's own CKM_RSA_PKCS.
fn legacy_decrypt_fails_with_the_same_calls(env: &Env) {
    use hardkey_api::{KeyPolicy, KeyUsages};
    use rsa::pkcs8::DecodePublicKey;
    use rsa::traits::PublicKeyParts;
    env.shim.set("");
    let policy = KeyPolicy::default().with_legacy_rsa_pkcs1v15_decrypt(true);
    let store = Pkcs11Store::open(env.config(1).policy(policy)).unwrap();
    for raw in [true, false] {
        let request = GenerateRequest::new(KeyAlgorithm::Rsa2048)
            .usages(KeyUsages::SIGN_DECRYPT)
            .raw_rsa(raw);
        let key = block_on(store.generate(request)).unwrap();
        let public = rsa::RsaPublicKey::from_public_key_der(key.info().public_key.der()).unwrap();
        let good = public
            .encrypt(&mut rand_core::OsRng, rsa::Pkcs1v15Encrypt, &[0x03; 48])
            .unwrap();
        // A valid RSA input whose plaintext is not PKCS#1 v1.5: 00 01 ... instead of 00 02.
        let mut block = vec![0x5au8; public.size()];
        block[0] = 0x00;
        block[1] = 0x01;
        let bad = rsa::BigUint::from_bytes_be(&block)
            .modpow(public.e(), public.n())
            .to_bytes_be();
        let bad = [vec![0u8; public.size() - bad.len()], bad].concat();
        // Once first, so the handle lookup is cached for both.
        decrypt_calls(env, &key, &good, !raw);
        let (good_ok, good_calls) = decrypt_calls(env, &key, &good, !raw);
        let (bad_ok, bad_calls) = decrypt_calls(env, &key, &bad, !raw);
        assert!(good_ok && !bad_ok, "raw={raw}");
        assert!(
            good_calls.iter().any(|c| c.starts_with("C_Decrypt")),
            "raw={raw}: no decryption logged: {good_calls:?}"
        );
        assert_eq!(good_calls, bad_calls, "raw={raw}");
        if raw {
            // The token did only RSA: CKM_RSA_X_509 (0x3), answered CKR_OK both times.
            assert!(
                good_calls.iter().any(|c| c.contains("mechanism=Some(3)")),
                "{good_calls:?}"
            );
        }
        // And the key still works: the session was not left in a broken state.
        let (again, _) = decrypt_calls(env, &key, &good, false);
        assert!(again);
        block_on(store.delete(&key.info().id)).unwrap();
    }
    let report = store.pool().shutdown(Duration::from_secs(5));
    assert_eq!(report.detached_workers, 0, "{report:?}");
}

/// A token that does not know CKA_ALLOWED_MECHANISMS: the key is made without it, once the
/// token said so, and its description notes what that means.
fn token_without_allowed_mechanisms_is_noted(env: &Env) {
    use hardkey_api::KeyUsages;
    env.shim.set("reject_allowed_mechanisms=1");
    let store = Pkcs11Store::open(env.config(1)).unwrap();
    let before = env.shim.log().len();
    let first = block_on(
        store.generate(GenerateRequest::new(KeyAlgorithm::Rsa2048).usages(KeyUsages::SIGN)),
    )
    .unwrap();
    let second = block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP256))).unwrap();
    let refusals = env.shim.log()[before..]
        .iter()
        .filter(|l| l.contains("refused CKA_ALLOWED_MECHANISMS"))
        .count();
    assert_eq!(
        refusals, 1,
        "the token is asked once, then the store remembers"
    );
    for key in [&first, &second] {
        let device = key.info().device.clone().unwrap();
        assert_eq!(device.mechanisms, None);
        assert!(
            device
                .note
                .as_deref()
                .is_some_and(|n| n.contains("does not support CKA_ALLOWED_MECHANISMS")),
            "{device:?}"
        );
        assert_eq!(
            device.operations,
            ["sign"],
            "the usage attributes are still set"
        );
    }
    for key in [first, second] {
        block_on(store.delete(&key.info().id)).unwrap();
    }
    env.shim.set("");
    let report = store.pool().shutdown(Duration::from_secs(5));
    assert_eq!(report.detached_workers, 0, "{report:?}");
}

fn wrong_pin_is_tried_once(env: &Env) {
    env.shim.set(&format!("login_rv={CKR_PIN_INCORRECT}"));
    let before = env.shim.calls("C_Login");
    let err = Pkcs11Store::open(env.config(4)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuthFailed, "{err}");
    // Once no worker thread is left, none can still log in behind the caller's back.
    wait_until_no_pool_workers();
    assert_eq!(
        env.shim.calls("C_Login") - before,
        1,
        "4 sessions, but one login attempt"
    );
}

/// Waits (bounded, failing the test) until this process has no pool worker thread (the pool
/// names them `hk<index>:<device>`). The trials run one at a time, and a store that failed to
/// open or was dropped has no work left, so its workers end.
fn wait_until_no_pool_workers() {
    let is_worker = |name: &str| {
        name.strip_prefix("hk").is_some_and(|rest| {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            digits > 0 && rest.as_bytes().get(digits) == Some(&b':')
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let workers: Vec<String> = std::fs::read_dir("/proc/self/task")
            .expect("/proc/self/task")
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim_end().to_owned())
            .filter(|name| is_worker(name))
            .collect();
        if workers.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pool workers still running after 10 s: {workers:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wrong_pin_during_recovery_is_tried_once(env: &Env) {
    let (store, key) = env.store_and_key(4);
    // Every session is lost and the PIN stops working (changed by another application).
    let before = env.shim.calls("C_Login");
    env.shim.set(&format!(
        "sign_rv={CKR_SESSION_HANDLE_INVALID}\nsign_times=1000\nlogin_rv={CKR_PIN_INCORRECT}"
    ));
    let results = block_on(join_all((0..16u8).map(|i| key.sign(SCHEME, &[i]))));
    assert!(results.iter().all(Result::is_err));
    // The workers rebuild their sessions after a backoff; the first that needs a login makes
    // the one attempt, and from then on callers are told it is the PIN (until then, that the
    // device is unavailable). Waiting for that answer, not for a while, proves the attempt.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let err = block_on(key.sign(SCHEME, b"refused")).unwrap_err();
        if err.is_auth() {
            break;
        }
        assert!(err.is_retryable(), "{err}");
        assert!(Instant::now() < deadline, "the PIN was never tried: {err}");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        env.shim.calls("C_Login") - before,
        1,
        "4 workers recovering, one login attempt"
    );
    let err = block_on(key.sign(SCHEME, b"still refused")).unwrap_err();
    assert!(err.is_auth(), "{err}");
    assert_eq!(env.shim.calls("C_Login") - before, 1);

    // The PIN works again and the operator says so: the same store serves again.
    env.shim.set("");
    store.reconnect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = block_on(key.sign(SCHEME, b"back")) {
        assert!(Instant::now() < deadline, "not back after reconnect: {e}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn lost_session_is_rebuilt_and_sign_retried(env: &Env) {
    let (store, key) = env.store_and_key(1);
    let sessions = env.shim.calls("C_OpenSession");
    env.shim.set(&format!(
        "sign_rv={CKR_SESSION_HANDLE_INVALID}\nsign_times=1"
    ));
    let sig = block_on(key.sign(SCHEME, b"after a lost session")).expect("retried transparently");
    verify_signature(
        key.info().public_key.der(),
        SCHEME,
        b"after a lost session",
        &sig,
    )
    .unwrap();
    let stats = store.pool().stats();
    assert!(stats.retried >= 1 && stats.recoveries >= 1, "{stats}");
    assert!(
        env.shim.calls("C_OpenSession") > sessions,
        "the session was reopened"
    );
}

fn device_error_twice_fails_the_caller_then_recovers(env: &Env) {
    let (_store, key) = env.store_and_key(1);
    env.shim
        .set(&format!("sign_rv={CKR_DEVICE_ERROR}\nsign_times=2"));
    let err = block_on(key.sign(SCHEME, b"x")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeviceUnavailable, "{err}");
    assert!(err.is_retryable());
    // The worker rebuilds its session after a short backoff; meanwhile callers get the same
    // fast, retriable error. Within a bounded time, signing works again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = block_on(key.sign(SCHEME, b"y")) {
        assert_eq!(e.kind(), ErrorKind::DeviceUnavailable, "{e}");
        assert!(Instant::now() < deadline, "not back within 5 s: {e}");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        block_on(key.sign(SCHEME, b"z")).is_ok(),
        "the device is back"
    );
}

fn failed_operation_replaces_the_session(env: &Env) {
    let (_store, key) = env.store_and_key(1);
    let sessions = env.shim.calls("C_OpenSession");
    env.shim
        .set(&format!("sign_rv={CKR_FUNCTION_FAILED}\nsign_times=1"));
    let err = block_on(key.sign(SCHEME, b"x")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    assert!(err.to_string().contains("CKR_FUNCTION_FAILED"), "{err}");
    assert_eq!(
        env.shim.calls("C_OpenSession"),
        sessions + 1,
        "the session was replaced"
    );
    assert!(block_on(key.sign(SCHEME, b"y")).is_ok());
}

fn slow_device_times_out_without_hanging(env: &Env) {
    env.shim.set("");
    let store =
        Pkcs11Store::open(env.config(2).op_timeout(Some(Duration::from_millis(300)))).unwrap();
    let key = block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP256))).unwrap();
    env.shim.set("sign_delay_ms=100");
    // 2 sessions, 100 ms each: 8 signatures need 400 ms, so the last ones miss 300 ms.
    let start = Instant::now();
    let results = block_on(join_all((0..8u8).map(|i| key.sign(SCHEME, &[i]))));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let timed_out = results
        .iter()
        .filter(|r| r.as_ref().is_err_and(|e| e.kind() == ErrorKind::Timeout))
        .count();
    assert!(
        ok >= 2 && timed_out >= 1 && ok + timed_out == 8,
        "{ok} ok, {timed_out} timed out"
    );
    env.shim.set("");
    // The timed-out signatures are still running in the module: wait for the workers, so the
    // process never exits (unloading SoftHSM) under a thread inside C_Sign.
    drop(key);
    let report = store.pool().shutdown(Duration::from_secs(5));
    assert_eq!(report.detached_workers, 0, "{report:?}");
}

/// T2 (issue 12): the soak's mixed operations through a storm of random faults on 10% of
/// signatures and decryptions (device errors, lost sessions, slow calls). Callers see only
/// the errors a device fault honestly gives, never a wrong result, a lost operation, a missing
/// key or a wrong PIN; within 2 s of the storm ending every key signs again.
fn fault_storm_gives_typed_errors_then_recovers(env: &Env) {
    env.shim.set("");
    let store = Arc::new(Pkcs11Store::open(env.config(4)).unwrap());
    let mut keys = Vec::new();
    for alg in [
        KeyAlgorithm::EcP256,
        KeyAlgorithm::EcP384,
        KeyAlgorithm::Rsa2048,
    ] {
        // SoftHSM 2.6 has no RSA-OAEP with SHA-256: hardkey pads on the host, over raw RSA.
        let key = block_on(store.generate(GenerateRequest::new(alg).raw_rsa(true))).unwrap();
        keys.push(Arc::new(key) as SharedKey);
    }
    let soak_keys = keys
        .iter()
        .map(|k| {
            SoakKey::new(k.info().algorithm.to_string(), Arc::clone(k))
                .reopen_with(Arc::clone(&store) as Arc<dyn DynKeyStore>)
        })
        .collect();
    let operations = hardkey_api::testkit::soak::size(2_000, 20_000, "HARDKEY_SOAK_OPERATIONS");
    let seed: u64 = std::env::var("HARDKEY_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand_core::RngCore::next_u64(&mut rand_core::OsRng));
    env.shim
        .set(&format!("storm_percent=10\nstorm_seed={seed}"));
    let report = block_on(
        Soak::new(soak_keys)
            .operations(operations)
            .in_flight(256)
            .seed(seed)
            .run(),
    );
    env.shim.set("");
    let ended = Instant::now();
    println!("fault storm: {report}");
    report.assert_nothing_lost_or_wrong();
    report.assert_failures_only(&[
        ErrorKind::DeviceUnavailable,
        ErrorKind::Backend,
        ErrorKind::Timeout,
        ErrorKind::Exhausted,
    ]);
    let stats = store.pool().stats();
    println!(
        "  pool: {stats}; {} device states lost, {} rebuilt, {} retried",
        stats.device_lost, stats.recoveries, stats.retried
    );
    assert!(stats.device_lost > 0, "the storm hit nothing: {stats}");

    // Recovery: every key signs, and every worker is healthy again.
    let mut first = None;
    for key in &keys {
        let scheme = key.info().signature_schemes[0];
        loop {
            match block_on(key.sign(scheme, b"after the storm")) {
                Ok(sig) => {
                    verify_signature(
                        key.info().public_key.der(),
                        scheme,
                        b"after the storm",
                        &sig,
                    )
                    .unwrap();
                    first.get_or_insert_with(|| ended.elapsed());
                    break;
                }
                Err(e) => {
                    assert!(e.is_retryable(), "after the storm: {e}");
                    assert!(
                        ended.elapsed() < Duration::from_secs(10),
                        "not back after 10 s: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    while store.pool().stats().healthy_workers < 4 {
        assert!(
            ended.elapsed() < Duration::from_secs(10),
            "workers not healthy after 10 s: {}",
            store.pool().stats()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let healthy = ended.elapsed();
    println!(
        "  after the storm: first signature in {:?}, every key signs and every worker is healthy in {healthy:?}",
        first.unwrap_or_default()
    );
    // The pool's backoff tops out at 2 s; the bound leaves room for a loaded 2-core machine.
    assert!(
        healthy < Duration::from_secs(4),
        "recovery took {healthy:?}"
    );
}

fn main() -> std::process::ExitCode {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1); // one control file: faults apply to whoever calls
    let tests: [NamedTest<Env>; 12] = [
        (
            "fault_storm_gives_typed_errors_then_recovers",
            fault_storm_gives_typed_errors_then_recovers,
        ),
        (
            "legacy_decrypt_fails_with_the_same_calls",
            legacy_decrypt_fails_with_the_same_calls,
        ),
        (
            "token_without_allowed_mechanisms_is_noted",
            token_without_allowed_mechanisms_is_noted,
        ),
        (
            "so_pin_on_final_try_gets_no_token_init",
            so_pin_on_final_try_gets_no_token_init,
        ),
        (
            "wrong_pin_during_recovery_is_tried_once",
            wrong_pin_during_recovery_is_tried_once,
        ),
        ("final_try_gets_no_login", final_try_gets_no_login),
        ("locked_pin_gets_no_login", locked_pin_gets_no_login),
        ("wrong_pin_is_tried_once", wrong_pin_is_tried_once),
        (
            "lost_session_is_rebuilt_and_sign_retried",
            lost_session_is_rebuilt_and_sign_retried,
        ),
        (
            "device_error_twice_fails_the_caller_then_recovers",
            device_error_twice_fails_the_caller_then_recovers,
        ),
        (
            "failed_operation_replaces_the_session",
            failed_operation_replaces_the_session,
        ),
        (
            "slow_device_times_out_without_hanging",
            slow_device_times_out_without_hanging,
        ),
    ];
    let start = || {
        let hsm = SoftHsm::start();
        let shim = FaultShim::start(&hsm);
        Env { hsm, shim }
    };
    run_on(&args, start, |env| trials_on(env, &tests))
}
