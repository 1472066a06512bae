//! The hardkey-api conformance suite against tpm2-pkcs11 (a second, independent PKCS#11
//! implementation) on a swtpm behind tpm2-abrmd; and its lack of EdDSA, refused clearly.
//!
//! One check at a time (unless `--test-threads` says otherwise), as the swtpm suites run: with
//! two stores of one process working on the same tpm2-pkcs11 1.9 token at once, a key one of
//! them generates can come back described as the other's key, which is then not found (see the
//! README's notes on tpm2-pkcs11; `-- --test-threads=2` shows it).
#![allow(clippy::unwrap_used, reason = "test code")]

use hardkey_api::testkit::harness::{Arguments, run_on, trial};
use hardkey_api::{ErrorKind, GenerateRequest, KeyAlgorithm, KeyStore};
use softhsm_tests::{Tpm2Pkcs11, conformance_trials_with};

/// tpm2-pkcs11 1.9 lists neither CKM_EC_EDWARDS_KEY_PAIR_GEN nor CKM_EDDSA: Ed25519 and
/// Ed448 are not among the store's algorithms, and generating one is refused before the
/// token is asked, naming the token and what it can make.
fn eddsa_is_refused(t: &Tpm2Pkcs11) {
    let store = t.store(1);
    let before = futures::executor::block_on(store.list()).unwrap().len();
    for alg in [KeyAlgorithm::Ed25519, KeyAlgorithm::Ed448] {
        assert!(!store.algorithms().contains(&alg), "{alg}");
        let err =
            futures::executor::block_on(store.generate(GenerateRequest::new(alg).label("ed")))
                .err()
                .unwrap();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("does not support {alg} keys"))
                && text.contains(t.label())
                && text.contains("p256"),
            "{text}"
        );
    }
    assert_eq!(
        futures::executor::block_on(store.list()).unwrap().len(),
        before
    );
}

fn main() -> std::process::ExitCode {
    let mut args = Arguments::from_args();
    args.test_threads = args.test_threads.or(Some(1));
    run_on(&args, Tpm2Pkcs11::start, |t| {
        let mut trials = conformance_trials_with(t.config().sessions(2), t.label(), 100);
        let t = std::sync::Arc::clone(t);
        trials.push(trial("tpm2_pkcs11::eddsa_is_refused", move || {
            eddsa_is_refused(&t)
        }));
        trials
    })
}
