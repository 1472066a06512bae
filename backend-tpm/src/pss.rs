//! Finding the salt length of the TPM's own RSA-PSS: TLS 1.3 needs salt = hash length, and
//! many TPMs use the largest salt instead.

use hardkey_api::{HashAlgorithm, encoding};
use rsa::BigUint;
use tss_esapi::structures::Public;

/// The salt length of an RSA-PSS `signature` of `digest` by the key with this public area,
/// recovered with the public key; `None` if the signature is not a valid PSS encoding.
pub(crate) fn salt_len(
    public: &Public,
    hash: HashAlgorithm,
    digest: &[u8],
    signature: &[u8],
) -> Option<usize> {
    let Public::Rsa {
        parameters, unique, ..
    } = public
    else {
        return None;
    };
    let e = match parameters.exponent().value() {
        0 => 65_537,
        e => e,
    };
    let n = BigUint::from_bytes_be(unique.value());
    let s = BigUint::from_bytes_be(signature);
    if s >= n {
        return None;
    }
    let m = s.modpow(&BigUint::from(e), &n);
    let mod_bits = n.bits();
    let k = mod_bits.div_ceil(8);
    let bytes = m.to_bytes_be();
    let mut em = vec![0u8; k.checked_sub(bytes.len())?];
    em.extend_from_slice(&bytes);
    encoding::pss_salt_len_of(hash, digest, &em, mod_bits)
}
