//! The hardkey-api conformance suite against NSS softokn (a third PKCS#11 implementation),
//! loaded with its init string; and what softokn does differently: it refuses
//! CKA_ALLOWED_MECHANISMS (with CKR_GENERAL_ERROR), which the keys' descriptions say, and
//! its module is initialized once per process, so a second init string is refused clearly.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test code"
)]

use futures::executor::block_on;
use hardkey_api::testkit::harness::{Arguments, NamedTest, run_on, trial};
use hardkey_api::testkit::verify_signature;
use hardkey_api::{
    ErrorKind, GenerateRequest, KeyAlgorithm, KeyStore, PrivateKey, SignatureScheme,
};
use hardkey_pkcs11::Pkcs11Store;
use softhsm_tests::{Nss, conformance_trials_with};

/// RSA-4096, beyond the shared suite's algorithms: softokn makes and signs with it.
fn rsa4096_keys_sign(nss: &Nss) {
    let store = nss.store(1);
    assert!(store.algorithms().contains(&KeyAlgorithm::Rsa4096));
    let key =
        block_on(store.generate(GenerateRequest::new(KeyAlgorithm::Rsa4096).label("big"))).unwrap();
    let scheme = SignatureScheme::RsaPssSha512;
    let sig = block_on(key.sign(scheme, b"nss rsa-4096")).unwrap();
    verify_signature(key.info().public_key.der(), scheme, b"nss rsa-4096", &sig).unwrap();
    block_on(store.delete(&key.info().id)).unwrap();
}

/// softokn keeps no CKA_ALLOWED_MECHANISMS: the keys are made without it, and say so.
fn keys_say_the_token_keeps_no_mechanism_restriction(nss: &Nss) {
    let store = nss.store(1);
    let key =
        block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP256).label("note"))).unwrap();
    let device = key.info().device.clone().unwrap();
    assert_eq!(device.mechanisms, None);
    let note = device.note.unwrap_or_default();
    assert!(note.contains("CKA_ALLOWED_MECHANISMS"), "{note}");
    assert_eq!(device.operations, ["sign"], "least privilege still holds");
    block_on(store.delete(&key.info().id)).unwrap();
}

/// NSS 3.87's softokn (Debian 12) lists neither CKM_EC_EDWARDS_KEY_PAIR_GEN nor CKM_EDDSA
/// (EdDSA came to softokn later): Ed25519 and Ed448 are refused before the token is asked,
/// naming the token and what it can make.
fn eddsa_is_refused_as_softokn_lacks_it(nss: &Nss) {
    let store = nss.store(1);
    for alg in [KeyAlgorithm::Ed25519, KeyAlgorithm::Ed448] {
        assert!(!store.algorithms().contains(&alg), "{alg}");
        let err = block_on(store.generate(GenerateRequest::new(alg).label("ed")))
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("does not support {alg} keys")) && text.contains("p256"),
            "{text}"
        );
    }
}

/// The module is initialized once per process: another init string is refused, saying why.
fn a_second_init_string_is_refused(nss: &Nss) {
    let _first = nss.store(1);
    let other = nss.config().module_init("configdir='sql:/nonexistent'");
    let err = Pkcs11Store::open(other).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("module-init"), "{err}");
}

/// One key opened by two stores of one process: after one store deletes it and makes a new
/// key (which softokn may give the deleted key's object handle), the other store never signs
/// with the new key in the old one's name: it finds the key gone.
fn a_key_deleted_by_another_store_is_not_confused_with_a_new_one(nss: &Nss) {
    let (a, b) = (nss.store(1), nss.store(1));
    let message = b"which key signs this?";
    let scheme = SignatureScheme::EcdsaP256Sha256;
    for round in 0..4 {
        let old = block_on(
            a.generate(GenerateRequest::new(KeyAlgorithm::EcP256).label(format!("shared-{round}"))),
        )
        .unwrap();
        let uri = old.info().uri.clone().unwrap();
        let seen = block_on(b.open(&uri)).unwrap();
        // B signs: its worker caches the key's object handle.
        block_on(seen.sign(scheme, message)).unwrap();
        block_on(a.delete(&old.info().id)).unwrap();
        let new = block_on(
            a.generate(GenerateRequest::new(KeyAlgorithm::EcP256).label(format!("next-{round}"))),
        )
        .unwrap();
        match block_on(seen.sign(scheme, message)) {
            Ok(sig) => {
                let by_new =
                    verify_signature(new.info().public_key.der(), scheme, message, &sig).is_ok();
                panic!(
                    "round {round}: a deleted key signed (by the new key: {by_new}): B used a \
                     cached object handle the token gave to another key"
                );
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::NotFound, "round {round}: {e}"),
        }
        block_on(a.delete(&new.info().id)).unwrap();
    }
}

fn main() -> std::process::ExitCode {
    run_on(&Arguments::from_args(), Nss::start, |nss| {
        let mut trials = conformance_trials_with(nss.config().sessions(2), nss.label(), 100);
        let tests: [NamedTest<Nss>; 5] = [
            (
                "nss::a_key_deleted_by_another_store_is_not_confused_with_a_new_one",
                a_key_deleted_by_another_store_is_not_confused_with_a_new_one,
            ),
            (
                "nss::eddsa_is_refused_as_softokn_lacks_it",
                eddsa_is_refused_as_softokn_lacks_it,
            ),
            ("nss::rsa4096_keys_sign", rsa4096_keys_sign),
            (
                "nss::keys_say_the_token_keeps_no_mechanism_restriction",
                keys_say_the_token_keeps_no_mechanism_restriction,
            ),
            (
                "nss::a_second_init_string_is_refused",
                a_second_init_string_is_refused,
            ),
        ];
        for (name, test) in tests {
            let nss = std::sync::Arc::clone(nss);
            trials.push(trial(name, move || test(&nss)));
        }
        trials
    })
}
