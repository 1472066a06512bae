//! Certificates and signing requests signed by PKCS#11 keys on SoftHSM, checked by `openssl`
//! and the RustCrypto verifiers (hardkey_x509::testkit): the token returns ECDSA as
//! `r || s` and signs RSA-PSS through its own mechanism, so the X.509 path is checked on the
//! device itself.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test code"
)]

use std::sync::Arc;

use futures::executor::block_on;
use hardkey_api::{GenerateRequest, KeyAlgorithm, KeyStore, PrivateKey, SignatureScheme};
use hardkey_x509::testkit::{CASES, EDDSA_CASES, check_with_openssl};
use softhsm_tests::{SoftHsm, run, trial};

/// One token key of `algorithm` signs everything `check_with_openssl` makes, with each of
/// `schemes` (`None`: the default); the key is deleted afterwards and the store's workers are
/// waited for, so none is still inside the module when the test binary exits.
fn certificates(hsm: &SoftHsm, algorithm: KeyAlgorithm, schemes: &[Option<SignatureScheme>]) {
    let store = hsm.store(2);
    let request = GenerateRequest::new(algorithm).label(format!("hk-x509-{algorithm}"));
    let key = block_on(store.generate(request)).unwrap();
    for &scheme in schemes {
        let dir = tempfile::tempdir().unwrap();
        check_with_openssl(&key, scheme, dir.path());
    }
    block_on(store.delete(&key.info().id)).unwrap();
    drop(key);
    let report = store.pool().shutdown(std::time::Duration::from_secs(5));
    assert_eq!(report.detached_workers, 0, "{report:?}");
}

fn main() -> std::process::ExitCode {
    run(|hsm: Arc<SoftHsm>| {
        CASES
            .iter()
            .chain(EDDSA_CASES)
            .map(|case| {
                let hsm = Arc::clone(&hsm);
                trial(case.name, move || {
                    certificates(&hsm, case.algorithm, case.schemes)
                })
            })
            .collect()
    })
}
