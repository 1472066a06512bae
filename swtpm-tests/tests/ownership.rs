//! Ownership and dictionary attack on swtpm through `TpmAdmin`: status of a fresh TPM,
//! take-ownership, change-auth and clear; lockout by wrong key auth values, reset, and the
//! DA parameters we set as `tpm2_getcap` (the independent tool) reports them. Each trial
//! leaves the TPM with empty auths and relaxed DA parameters.
#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers and trials outside #[test] fns"
)]

use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::executor::block_on;
use hardkey_api::{
    ErrorKind, GenerateRequest, KeyAlgorithm, KeyStore, KeyUri, PrivateKey, SecretSource,
    SignatureScheme,
};
use hardkey_tpm::{Hierarchy, SealOptions, TpmAdmin, TpmConfig, TpmStatus, TpmStore};
use secrecy::SecretString;
use swtpm_tests::{Swtpm, run, trial};

fn connect(tpm: &Swtpm) -> TpmAdmin {
    TpmAdmin::connect(&tpm.tcti(), &SecretSource::None).expect("connect TpmAdmin to swtpm")
}

fn secret(p: &str) -> SecretSource {
    SecretSource::Value(SecretString::from(p))
}

fn status(tpm: &Swtpm) -> TpmStatus {
    connect(tpm).status().expect("status")
}

fn assert_no_transients(admin: &mut TpmAdmin) {
    let left = admin.transient_handles().expect("TPM2_GetCapability");
    assert!(left.is_empty(), "transient objects left loaded: {left:x?}");
}

/// `tpm2_getcap properties-variable` (no admin may be connected: swtpm serves one client).
fn getcap_variable(tpm: &Swtpm) -> String {
    let out = Command::new("tpm2_getcap")
        .arg("properties-variable")
        .arg(format!("--tcti={}", tpm.tcti()))
        .stderr(Stdio::inherit())
        .output()
        .expect("run tpm2_getcap");
    assert!(out.status.success(), "tpm2_getcap failed: {}", out.status);
    String::from_utf8(out.stdout).expect("tpm2_getcap prints text")
}

/// A value of `tpm2_getcap` output: `NAME: 0x3E8` or `  name:   1`.
fn getcap_value(text: &str, name: &str) -> u32 {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.split(':').next() == Some(name))
        .unwrap_or_else(|| panic!("{name} missing from tpm2_getcap output:\n{text}"));
    let value = line.split(':').nth(1).unwrap_or_default().trim();
    match value.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => value.parse(),
    }
    .unwrap_or_else(|e| panic!("{line}: {e}"))
}

fn fresh_status(tpm: &Swtpm) {
    let status = status(tpm);
    assert!(!status.owned(), "{status}");
    assert!(!status.in_lockout && !status.clear_disabled, "{status}");
    assert_eq!(status.lockout_counter, 0, "{status}");
    // The fixture's relaxed parameters.
    assert_eq!(
        (
            status.max_tries,
            status.recovery_time_s,
            status.lockout_recovery_s
        ),
        (1000, 1, 1),
        "{status}"
    );
    assert!(!status.manufacturer.is_empty(), "{status}");
    let text = status.to_string();
    assert!(text.contains("owner auth:        empty"), "{text}");
    assert!(!text.contains("IN LOCKOUT"), "{text}");
}

fn ownership(tpm: &Swtpm) {
    let mut admin = connect(tpm);
    admin
        .take_ownership(&secret("owner-1"), &secret("endorse-1"), &secret("lock-1"))
        .expect("take ownership");
    let owned = admin.status().expect("status");
    assert!(
        owned.owner_auth_set && owned.endorsement_auth_set && owned.lockout_auth_set,
        "{owned}"
    );
    let err = admin
        .take_ownership(&secret("x"), &SecretSource::None, &SecretSource::None)
        .expect_err("took ownership of an owned TPM");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("change-auth"), "{err}");

    admin
        .change_auth(Hierarchy::Owner, &secret("owner-1"), &secret("owner-2"))
        .expect("change the owner auth");
    let err = admin
        .change_auth(Hierarchy::Owner, &secret("owner-1"), &secret("owner-3"))
        .expect_err("the old owner auth still works");
    assert_eq!(err.kind(), ErrorKind::AuthFailed, "{err}");
    assert!(err.to_string().contains("owner hierarchy"), "{err}");
    admin
        .change_auth(Hierarchy::Owner, &secret("owner-2"), &secret("owner-3"))
        .expect("the new owner auth works");
    assert_no_transients(&mut admin);
    drop(admin);

    // The owner auth is really "owner-3": creating the SRK (sealing) needs it.
    let mut with_owner = TpmAdmin::connect(&tpm.tcti(), &secret("owner-3")).expect("connect");
    with_owner
        .seal(b"x", &SealOptions::new().auth(secret("pw")))
        .expect("seal with the SRK created under the new owner auth");
    assert_no_transients(&mut with_owner);
    drop(with_owner);
    let err = connect(tpm)
        .seal(b"x", &SealOptions::new())
        .expect_err("created the SRK without the owner auth");
    assert_eq!(err.kind(), ErrorKind::AuthFailed, "{err}");

    // The independent tool agrees.
    let caps = getcap_variable(tpm);
    for flag in ["ownerAuthSet", "endorsementAuthSet", "lockoutAuthSet"] {
        assert_eq!(getcap_value(&caps, flag), 1, "{flag}");
    }

    let mut admin = connect(tpm);
    admin.clear(&secret("lock-1")).expect("TPM2_Clear");
    let cleared = admin.status().expect("status");
    assert!(!cleared.owned(), "{cleared}");
    assert_no_transients(&mut admin);
    drop(admin);
    let caps = getcap_variable(tpm);
    for flag in ["ownerAuthSet", "endorsementAuthSet", "lockoutAuthSet"] {
        assert_eq!(getcap_value(&caps, flag), 0, "{flag}");
    }
}

/// A store on the emulator with key files in `dir` and `key_auth` as the keys' auth value.
fn store(tpm: &Swtpm, dir: &std::path::Path, key_auth: &str) -> TpmStore {
    TpmStore::open(
        TpmConfig::new(tpm.tcti())
            .key_dir(dir)
            .key_auth(secret(key_auth)),
    )
    .expect("open the TPM store")
}

/// Signs `times` times with the key at `uri` through a store whose key auth is `key_auth`;
/// the store is shut down (its connection closed) before this returns.
fn sign_with(
    tpm: &Swtpm,
    dir: &std::path::Path,
    uri: &KeyUri,
    key_auth: &str,
    times: usize,
) -> Vec<Result<(), ErrorKind>> {
    let store = store(tpm, dir, key_auth);
    let key = block_on(store.open(uri)).expect("open the key");
    let results = (0..times)
        .map(|_| {
            block_on(key.sign(SignatureScheme::EcdsaP256Sha256, b"hello"))
                .map(drop)
                .map_err(|e| e.kind())
        })
        .collect();
    drop(key);
    store.pool().shutdown(Duration::from_secs(5));
    results
}

fn dictionary_attack(tpm: &Swtpm) {
    let dir = tempfile::tempdir().expect("temp dir");
    let uri = {
        let store = store(tpm, dir.path(), "right");
        let key = block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP256).label("da")))
            .expect("generate a key with an auth value");
        let uri = key.info().uri.clone().expect("the key has a URI");
        drop(key);
        store.pool().shutdown(Duration::from_secs(5));
        uri
    };

    let mut admin = connect(tpm);
    admin
        .set_lockout_parameters(&SecretSource::None, 3, 600, 7)
        .expect("TPM2_DictionaryAttackParameters");
    let set = admin.status().expect("status");
    assert_eq!(
        (
            set.max_tries,
            set.recovery_time_s,
            set.lockout_recovery_s,
            set.lockout_counter
        ),
        (3, 600, 7, 0),
        "{set}"
    );
    drop(admin);
    let caps = getcap_variable(tpm);
    assert_eq!(getcap_value(&caps, "TPM2_PT_MAX_AUTH_FAIL"), 3);
    assert_eq!(getcap_value(&caps, "TPM2_PT_LOCKOUT_INTERVAL"), 600);
    assert_eq!(getcap_value(&caps, "TPM2_PT_LOCKOUT_RECOVERY"), 7);

    // A wrong key auth: refused, and counted.
    assert_eq!(
        sign_with(tpm, dir.path(), &uri, "wrong", 1),
        [Err(ErrorKind::AuthFailed)]
    );
    let counted = status(tpm);
    assert_eq!(counted.lockout_counter, 1, "{counted}");
    assert!(!counted.in_lockout, "{counted}");

    // Two more reach max tries; then even the lockout refuses.
    assert_eq!(
        sign_with(tpm, dir.path(), &uri, "wrong", 3),
        [
            Err(ErrorKind::AuthFailed),
            Err(ErrorKind::AuthFailed),
            Err(ErrorKind::PinLocked)
        ]
    );
    let locked = status(tpm);
    assert!(locked.in_lockout, "{locked}");
    assert_eq!(locked.lockout_counter, 3, "{locked}");
    assert!(locked.to_string().contains("IN LOCKOUT"), "{locked}");
    assert_eq!(
        sign_with(tpm, dir.path(), &uri, "right", 1),
        [Err(ErrorKind::PinLocked)],
        "the right auth during lockout"
    );

    let mut admin = connect(tpm);
    admin
        .reset_lockout(&SecretSource::None)
        .expect("TPM2_DictionaryAttackLockReset");
    let reset = admin.status().expect("status after reconnecting");
    assert_eq!(reset.lockout_counter, 0, "{reset}");
    assert!(!reset.in_lockout, "{reset}");
    assert_no_transients(&mut admin);
    drop(admin);
    assert_eq!(
        getcap_value(&getcap_variable(tpm), "TPM2_PT_LOCKOUT_COUNTER"),
        0
    );
    assert_eq!(
        sign_with(tpm, dir.path(), &uri, "right", 1),
        [Ok(())],
        "the right auth signs again"
    );

    // With a lockout auth, through our HMAC session.
    let mut admin = connect(tpm);
    admin
        .take_ownership(&SecretSource::None, &SecretSource::None, &secret("lock"))
        .expect("set the lockout auth");
    admin
        .set_lockout_parameters(&secret("lock"), 5, 300, 9)
        .expect("DA parameters with the lockout auth");
    admin
        .reset_lockout(&secret("lock"))
        .expect("reset with the lockout auth");
    let with_auth = admin.status().expect("status");
    assert_eq!((with_auth.max_tries, with_auth.recovery_time_s), (5, 300));
    admin.clear(&secret("lock")).expect("clear");
    drop(admin);

    tpm.relax_dictionary_attack();
    let relaxed = status(tpm);
    assert_eq!(
        (relaxed.max_tries, relaxed.lockout_counter),
        (1000, 0),
        "{relaxed}"
    );
}

fn main() -> ExitCode {
    run(|tpm: Arc<Swtpm>| {
        let each = |name: &str, test: fn(&Swtpm)| {
            let tpm = Arc::clone(&tpm);
            trial(name, move || test(&tpm))
        };
        vec![
            each("fresh_tpm_status", fresh_status),
            each("take_ownership_change_auth_and_clear", ownership),
            each("dictionary_attack_lockout_and_reset", dictionary_attack),
        ]
    })
}
