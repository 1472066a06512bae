//! Public keys as `hardkey verify` reads them (PEM `PUBLIC KEY`, or DER SubjectPublicKeyInfo):
//! parsing never panics; a parsed key keeps its DER and its PEM form parses back to the same
//! key; and verifying the fixed signatures with any such key (for every scheme) returns an
//! error or succeeds only for the fixed key that made the signature, never panics.
#![no_main]

use hardkey_api::verify::verify_signature;
use hardkey_api::{PublicKey, SignatureScheme};
use hardkey_fuzz::{MESSAGE, fixture};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let der = if data.starts_with(b"-----BEGIN") {
        match der::pem::decode_vec(data) {
            Ok(("PUBLIC KEY", der)) => der,
            _ => return,
        }
    } else {
        data.to_vec()
    };
    match PublicKey::from_spki_der(&der) {
        Ok(key) => {
            assert_eq!(key.der(), &der[..]);
            let pem = key.to_pem();
            let (label, back) = der::pem::decode_vec(pem.as_bytes()).expect("to_pem decodes");
            assert_eq!(label, "PUBLIC KEY");
            assert_eq!(PublicKey::from_spki_der(&back).ok(), Some(key.clone()));
            let _ = format!("{key:?} {}", key.algorithm());
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    for scheme in SignatureScheme::ALL {
        let (fixed_key, signature) = fixture(scheme);
        match verify_signature(&der, scheme, MESSAGE, signature) {
            Ok(()) => assert_eq!(&der[..], fixed_key, "{scheme}: another key verified"),
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
