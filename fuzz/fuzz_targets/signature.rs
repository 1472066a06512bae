//! Signatures to verify: for each scheme (the first byte picks it), an arbitrary signature
//! against the fixed key and message returns an error, and succeeds only when it is the one
//! valid fixed signature (anything else would be a forgery or a malleable encoding); it is
//! refused by the keys of the other algorithms. Also the encodings a signature goes through:
//! DER <-> raw `r || s` ECDSA on each curve (strict DER, so each direction undoes the other),
//! the form check every device answer passes, and OAEP / PKCS#1 v1.5 decryption decoding of
//! arbitrary blocks.
#![no_main]

use hardkey_api::verify::verify_signature;
use hardkey_api::{KeyAlgorithm, SignatureScheme, encoding};
use hardkey_fuzz::{
    ED448_SPKI, ED25519_SPKI, MESSAGE, P256_SPKI, P384_SPKI, RSA2048_SPKI, fixture,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, signature)) = data.split_first() else {
        return;
    };
    let scheme = SignatureScheme::ALL[usize::from(pick) % SignatureScheme::ALL.len()];
    let (key, valid) = fixture(scheme);
    match verify_signature(key, scheme, MESSAGE, signature) {
        Ok(()) => assert_eq!(signature, valid, "{scheme}: a second signature verified"),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    for other in [RSA2048_SPKI, P256_SPKI, P384_SPKI, ED25519_SPKI, ED448_SPKI] {
        if other != key {
            assert!(verify_signature(other, scheme, MESSAGE, signature).is_err());
        }
    }
    // The same signature over another message never verifies.
    assert!(verify_signature(key, scheme, b"another message", signature).is_err());

    ecdsa_formats(signature);
    for algorithm in KeyAlgorithm::ALL {
        let _ = encoding::check_signature_form(scheme, algorithm, signature);
    }
    if let Some(hash) = scheme.hash() {
        let _ = encoding::oaep_decode(hash, signature);
    }
    let _ = encoding::pkcs1v15_decrypt_decode(signature);
});

/// Strict DER has one encoding per value, so DER -> raw -> DER gives the input back, and
/// raw -> DER -> raw too.
fn ecdsa_formats(signature: &[u8]) {
    for curve in [KeyAlgorithm::EcP256, KeyAlgorithm::EcP384] {
        if let Ok(raw) = encoding::ecdsa_der_to_raw(curve, signature) {
            assert_eq!(
                Some(raw.len()),
                encoding::ecdsa_field_len(curve).map(|f| 2 * f)
            );
            let der =
                encoding::ecdsa_raw_to_der(curve, &raw).expect("a decoded signature re-encodes");
            assert_eq!(der, signature, "DER -> raw -> DER changed the signature");
        }
        if let Ok(der) = encoding::ecdsa_raw_to_der(curve, signature) {
            let raw =
                encoding::ecdsa_der_to_raw(curve, &der).expect("an encoded signature decodes");
            assert_eq!(raw, signature, "raw -> DER -> raw changed the signature");
        }
    }
}
