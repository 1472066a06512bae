//! Certificate chains as the TLS server reads them (`CertChain::from_pem`, and DER): parsing
//! never panics (the subject is printed in RFC 4514 form, the leaf's key re-encoded); a chain
//! read from PEM reads the same from its DER certificates; and checking it against a key that
//! is not its own gives a `KeyMismatch` error whose message can be printed.
#![no_main]

use hardkey_api::{KeyId, KeyInfo, KeyPolicy, KeyUsages, PublicKey};
use hardkey_fuzz::P256_SPKI;
use hardkey_tls::{CertChain, Error};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match CertChain::from_pem(data) {
        Ok(chain) => {
            check(&chain);
            let again = CertChain::from_der(chain.certs().iter().map(|c| c.to_vec()))
                .expect("the DER of a parsed chain parses");
            assert_eq!(again.subject(), chain.subject());
            assert_eq!(again.leaf_public_key_der(), chain.leaf_public_key_der());
            assert_eq!(again.certs(), chain.certs());
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match CertChain::from_der([data.to_vec()]) {
        Ok(chain) => check(&chain),
        Err(e) => {
            let _ = e.to_string();
        }
    }
});

fn check(chain: &CertChain) {
    assert!(!chain.certs().is_empty());
    let _ = format!("{chain:?} {}", chain.origin());
    let _ = PublicKey::from_spki_der(chain.leaf_public_key_der());
    let key = PublicKey::from_spki_der(P256_SPKI).expect("the fixed key parses");
    let info = KeyInfo::new(
        KeyId::new(vec![1, 2, 3]),
        key,
        KeyUsages::SIGN,
        KeyPolicy::default(),
    );
    match chain.check_key(&info) {
        Ok(()) => assert_eq!(chain.leaf_public_key_der(), P256_SPKI),
        Err(e @ Error::KeyMismatch(_)) => {
            let _ = e.to_string();
        }
        Err(e) => panic!("check_key failed otherwise: {e}"),
    }
}
