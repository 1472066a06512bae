//! Certificates and signing requests signed by TPM keys on swtpm, checked by `openssl` and the
//! RustCrypto verifiers (hardkey_x509::testkit): the TPM returns ECDSA as `r || s` and may
//! sign RSA-PSS differently, so the X.509 path is checked on the device itself.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test bodies in harness = false trials"
)]

use std::sync::Arc;

use hardkey_api::testkit::block_on;
use hardkey_api::{GenerateRequest, KeyAlgorithm, KeyStore, SignatureScheme};
use hardkey_x509::testkit::{CASES, check_with_openssl};
use swtpm_tests::{Swtpm, open_store, run, trial};

/// One TPM key of `algorithm` signs everything `check_with_openssl` makes, with each of
/// `schemes` (`None`: the default); afterwards no transient object is left loaded.
fn certificates(tpm: &Swtpm, algorithm: KeyAlgorithm, schemes: &[Option<SignatureScheme>]) {
    let keys = tempfile::Builder::new()
        .prefix("hardkey-tpm-keys-")
        .tempdir()
        .unwrap();
    let store = open_store(tpm.config(keys.path()));
    let before = block_on(store.transient_handles()).unwrap();
    let request = GenerateRequest::new(algorithm).label(format!("x509-{algorithm}"));
    let key = block_on(store.generate(request)).unwrap();
    for &scheme in schemes {
        let dir = tempfile::tempdir().unwrap();
        check_with_openssl(&key, scheme, dir.path());
    }
    drop(key);
    block_on(store.flush_loaded()).unwrap();
    assert_eq!(
        block_on(store.transient_handles()).unwrap(),
        before,
        "transient handles leaked"
    );
    let report = store.pool().shutdown(std::time::Duration::from_secs(5));
    assert_eq!(report.detached_workers, 0, "{report:?}");
}

fn main() -> std::process::ExitCode {
    run(|tpm: Arc<Swtpm>| {
        CASES
            .iter()
            .map(|case| {
                let tpm = Arc::clone(&tpm);
                trial(case.name, move || {
                    certificates(&tpm, case.algorithm, case.schemes)
                })
            })
            .collect()
    })
}
