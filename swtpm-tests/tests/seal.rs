//! Sealing on swtpm through `TpmAdmin`: password and PCR policies, refusal after a PCR is
//! extended by tpm2-tools (the independent tool), the 128-byte limit, and sealed-data files.
//! After each trial no transient object is left loaded.
#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers and trials outside #[test] fns"
)]

use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;

use hardkey_api::{Error, ErrorKind, SecretSource};
use hardkey_tpm::{
    KeyFile, MAX_SEAL_SIZE, PcrSelection, PolicyStep, SealError, SealOptions, SealedData, TpmAdmin,
};
use secrecy::SecretString;
use swtpm_tests::{Swtpm, run, trial};

fn connect(tpm: &Swtpm) -> TpmAdmin {
    TpmAdmin::connect(&tpm.tcti(), &SecretSource::None).expect("connect TpmAdmin to swtpm")
}

fn password(p: &str) -> SecretSource {
    SecretSource::Value(SecretString::from(p))
}

fn pcrs(text: &str) -> PcrSelection {
    text.parse().expect("PCR selection")
}

/// `TPM2_GetCapability(HANDLES)` through the admin's own connection: nothing loaded.
fn assert_no_transients(admin: &mut TpmAdmin) {
    let left = admin.transient_handles().expect("TPM2_GetCapability");
    assert!(left.is_empty(), "transient objects left loaded: {left:x?}");
}

/// Extends a SHA-256 PCR with tpm2-tools (swtpm serves one connection: no admin may be open).
fn pcr_extend(tpm: &Swtpm, pcr: u8) {
    let status = Command::new("tpm2_pcrextend")
        .arg(format!("{pcr}:sha256={}", "ab".repeat(32)))
        .arg(format!("--tcti={}", tpm.tcti()))
        .stdout(Stdio::null())
        .status()
        .expect("run tpm2_pcrextend");
    assert!(status.success(), "tpm2_pcrextend failed: {status}");
}

fn assert_pcr_changed(err: &Error, selection: &str) {
    let text = err.to_string();
    assert!(
        text.contains("PCR values changed since sealing"),
        "unclear error: {text}"
    );
    let source = std::error::Error::source(err).expect("a cause");
    match source.downcast_ref::<SealError>() {
        Some(SealError::PcrChanged { pcrs, .. }) => assert_eq!(pcrs, selection),
        other => panic!("expected SealError::PcrChanged, got {other:?} ({text})"),
    }
}

fn password_round_trip(tpm: &Swtpm) {
    let mut admin = connect(tpm);
    let secret = b"disk key 0123456789";
    let sealed = admin
        .seal(secret, &SealOptions::new().auth(password("open sesame")))
        .expect("seal with a password");
    assert!(sealed.needs_auth() && sealed.pcrs().is_none());
    let out = admin
        .unseal(&sealed, &password("open sesame"))
        .expect("unseal with the password");
    assert_eq!(out.as_slice(), secret);
    let err = admin
        .unseal(&sealed, &password("wrong"))
        .expect_err("a wrong password unseals");
    assert_eq!(err.kind(), ErrorKind::AuthFailed, "{err}");
    let err = admin
        .unseal(&sealed, &SecretSource::None)
        .expect_err("no password unseals");
    assert_eq!(err.kind(), ErrorKind::AuthFailed, "{err}");
    assert_no_transients(&mut admin);
}

fn pcr_policy_refuses_after_extend(tpm: &Swtpm) {
    let selection = "sha256:16";
    let mut admin = connect(tpm);
    let sealed = admin
        .seal(
            b"bound to PCR 16",
            &SealOptions::new().pcrs(pcrs(selection)),
        )
        .expect("seal to PCR 16");
    assert!(!sealed.needs_auth());
    assert_eq!(sealed.pcrs(), Some(&pcrs(selection)));
    for _ in 0..2 {
        let out = admin
            .unseal(&sealed, &SecretSource::None)
            .expect("unseal while PCR 16 is unchanged");
        assert_eq!(out.as_slice(), b"bound to PCR 16");
    }
    assert_no_transients(&mut admin);
    drop(admin);

    pcr_extend(tpm, 16);
    let mut admin = connect(tpm);
    let err = admin
        .unseal(&sealed, &SecretSource::None)
        .expect_err("unsealed after PCR 16 changed");
    assert_pcr_changed(&err, selection);
    assert_no_transients(&mut admin);
}

fn pcr_and_password(tpm: &Swtpm) {
    let selection = "sha256:0,7,16";
    let mut admin = connect(tpm);
    let options = SealOptions::new()
        .auth(password("pin"))
        .pcrs(pcrs(selection));
    let sealed = admin
        .seal(b"both", &options)
        .expect("seal to PCRs and a password");
    assert_eq!(
        sealed.key_file().policy.last(),
        Some(&PolicyStep::AuthValue),
        "the policy proves the password"
    );
    let out = admin
        .unseal(&sealed, &password("pin"))
        .expect("unseal with PCRs unchanged and the password");
    assert_eq!(out.as_slice(), b"both");
    let err = admin
        .unseal(&sealed, &password("nip"))
        .expect_err("unsealed with a wrong password");
    assert_eq!(err.kind(), ErrorKind::AuthFailed, "{err}");
    assert_no_transients(&mut admin);
    drop(admin);

    pcr_extend(tpm, 7);
    let mut admin = connect(tpm);
    let err = admin
        .unseal(&sealed, &password("pin"))
        .expect_err("unsealed after PCR 7 changed");
    assert_pcr_changed(&err, selection);
    assert_no_transients(&mut admin);
}

fn size_limit(tpm: &Swtpm) {
    let mut admin = connect(tpm);
    let too_long = [0x5a; MAX_SEAL_SIZE + 1];
    let err = admin
        .seal(&too_long, &SealOptions::new().auth(password("pw")))
        .expect_err("sealed 129 bytes");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("128 bytes"), "{err}");
    let err = admin
        .seal(b"", &SealOptions::new())
        .expect_err("sealed nothing");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let full = [0xa5; MAX_SEAL_SIZE];
    let sealed = admin
        .seal(&full, &SealOptions::new().auth(password("pw")))
        .expect("seal 128 bytes");
    let out = admin.unseal(&sealed, &password("pw")).expect("unseal");
    assert_eq!(out.as_slice(), full);
    assert_no_transients(&mut admin);
}

fn file_round_trip(tpm: &Swtpm) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("secret.tss2.pem");
    let selection = "sha256:0,7";
    let mut admin = connect(tpm);
    let sealed = admin
        .seal(
            b"api token",
            &SealOptions::new()
                .auth(password("pw"))
                .pcrs(pcrs(selection)),
        )
        .expect("seal");
    sealed.write(&path).expect("write sealed data");
    let text = std::fs::read_to_string(&path).expect("read back");
    assert!(
        text.starts_with("-----BEGIN TSS2 PRIVATE KEY-----"),
        "{text}"
    );
    let err = sealed.write(&path).expect_err("overwrote a sealed file");
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");

    let read = SealedData::read(&path).expect("read sealed data");
    assert!(read.needs_auth());
    assert_eq!(read.pcrs(), Some(&pcrs(selection)));
    let file = KeyFile::from_pem(&text, "secret.tss2.pem").expect("parse as a key file");
    assert!(matches!(file.policy.first(), Some(PolicyStep::Pcr { .. })));
    let out = admin
        .unseal(&read, &password("pw"))
        .expect("unseal from the file");
    assert_eq!(out.as_slice(), b"api token");
    assert_no_transients(&mut admin);
}

fn main() -> ExitCode {
    run(|tpm: Arc<Swtpm>| {
        let each = |name: &str, test: fn(&Swtpm)| {
            let tpm = Arc::clone(&tpm);
            trial(name, move || test(&tpm))
        };
        vec![
            each(
                "password_round_trip_and_wrong_password",
                password_round_trip,
            ),
            each(
                "pcr_policy_refuses_after_extend",
                pcr_policy_refuses_after_extend,
            ),
            each("pcr_policy_and_password", pcr_and_password),
            each("size_limit", size_limit),
            each("file_round_trip", file_round_trip),
        ]
    })
}
