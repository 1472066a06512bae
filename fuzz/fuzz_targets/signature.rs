//! Signatures to verify: for each scheme (the first byte picks it), an arbitrary signature
//! against the fixed key and message returns an error, and succeeds only when it is the one
//! valid fixed signature (anything else would be a forgery or a malleable encoding); it is
//! refused by the keys of the other algorithms. Also the hand-written encodings a signature
//! goes through: DER <-> raw `r || s` ECDSA (strict DER, so each direction undoes the
//! other), EMSA-PSS decoding of arbitrary blocks (`false`, never a panic), EMSA-PSS encoding
//! with an arbitrary salt (decodes to that salt length), and OAEP / PKCS#1 v1.5 decryption
//! decoding of arbitrary blocks.
#![no_main]

use hardkey_api::verify::verify_signature;
use hardkey_api::{HashAlgorithm, SignatureScheme, encoding};
use hardkey_fuzz::{MESSAGE, P256_SPKI, P384_SPKI, RSA2048_SPKI, fixture};
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
    for other in [RSA2048_SPKI, P256_SPKI, P384_SPKI] {
        if other != key {
            assert!(verify_signature(other, scheme, MESSAGE, signature).is_err());
        }
    }
    // The same signature over another message never verifies.
    assert!(verify_signature(key, scheme, b"another message", signature).is_err());

    ecdsa_formats(signature);
    pss(scheme.hash(), pick, signature);
    let _ = encoding::oaep_decode(scheme.hash(), signature);
    let _ = encoding::pkcs1v15_decrypt_decode(signature);
});

/// Strict DER has one encoding per value, so DER -> raw -> DER gives the input back, and
/// raw -> DER -> raw too.
fn ecdsa_formats(signature: &[u8]) {
    for field_len in [32, 48, 66] {
        if let Ok(raw) = encoding::ecdsa_der_to_raw(signature, field_len) {
            assert_eq!(raw.len(), 2 * field_len);
            let der = encoding::ecdsa_raw_to_der(&raw).expect("a decoded signature re-encodes");
            assert_eq!(der, signature, "DER -> raw -> DER changed the signature");
        }
    }
    if let Ok(der) = encoding::ecdsa_raw_to_der(signature) {
        let raw = encoding::ecdsa_der_to_raw(&der, signature.len() / 2)
            .expect("an encoded signature decodes");
        assert_eq!(raw, signature, "raw -> DER -> raw changed the signature");
    }
}

fn pss(hash: HashAlgorithm, pick: u8, block: &[u8]) {
    let digest = encoding::digest(hash, MESSAGE);
    // Moduli of the block's own size, and one bit more or less than a byte multiple.
    let bits = block.len() * 8;
    for mod_bits in [bits, bits + 1, bits.saturating_sub(7), 2048] {
        if let Some(salt) = encoding::pss_salt_len_of(hash, &digest, block, mod_bits) {
            assert!(encoding::emsa_pss_verify(
                hash,
                &digest,
                block,
                mod_bits,
                Some(salt)
            ));
        }
        let _ = encoding::emsa_pss_verify(hash, &digest, block, mod_bits, None);
    }
    // Encoding with an arbitrary salt (the block's head) decodes to that salt length.
    let salt = &block[..block.len().min(80)];
    let mod_bits = 2 + usize::from(pick) * 67;
    if let Ok(em) = encoding::emsa_pss_encode(hash, &digest, salt, mod_bits) {
        assert_eq!(
            encoding::pss_salt_len_of(hash, &digest, &em, mod_bits),
            Some(salt.len()),
            "mod_bits {mod_bits}"
        );
        let k = encoding::emsa_pss_encode_for_modulus(hash, &digest, salt, mod_bits)
            .expect("encodes like emsa_pss_encode");
        assert_eq!(k.len(), mod_bits.div_ceil(8));
        assert!(encoding::emsa_pss_verify(
            hash,
            &digest,
            &k,
            mod_bits,
            Some(salt.len())
        ));
    }
}
