//! Finding the salt length of the TPM's own RSA-PSS: TLS 1.3 needs salt = hash length, and
//! many TPMs use the largest salt instead. Verification is the `rsa` crate's.

use hardkey_api::HashAlgorithm;
use rsa::traits::PublicKeyParts as _;
use rsa::{BigUint, Pss, RsaPublicKey};
use tss_esapi::structures::Public;

/// The largest modulus considered (the largest RSA key TPMs make is 4096 bits).
const MAX_MODULUS_BITS: usize = 16_384;

/// The salt length of an RSA-PSS `signature` (left-padded to the modulus length) of `digest`
/// by the key with this public area; `None` if it is not a valid PSS signature. The salt
/// lengths TPMs use are tried first: the hash length, then the largest (`emLen - hLen - 2`).
pub(crate) fn salt_len(
    public: &Public,
    hash: HashAlgorithm,
    digest: &[u8],
    signature: &[u8],
) -> Option<usize> {
    let key = rsa_public_key(public)?;
    // rsa 0.9 reduces the signature mod n without checking it is below n (RFC 8017 8.1.2).
    if BigUint::from_bytes_be(signature) >= *key.n() {
        return None;
    }
    let h_len = hash.output_len();
    // emLen = ceil((modBits - 1) / 8).
    let em_len = (key.n().bits() - 1).div_ceil(8);
    let max = em_len.checked_sub(h_len + 2)?;
    let others = (0..=max).filter(|len| *len != h_len && *len != max);
    [h_len, max].into_iter().chain(others).find(|len| {
        pss(hash, *len).is_some_and(|scheme| key.verify(scheme, digest, signature).is_ok())
    })
}

/// The public key of an RSA public area (exponent 0 means 65537).
fn rsa_public_key(public: &Public) -> Option<RsaPublicKey> {
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
    RsaPublicKey::new_with_max_size(n, BigUint::from(e), MAX_MODULUS_BITS).ok()
}

/// PSS verification with MGF1 over `hash` and this salt length.
fn pss(hash: HashAlgorithm, salt_len: usize) -> Option<Pss> {
    Some(match hash {
        HashAlgorithm::Sha256 => Pss::new_with_salt::<sha2::Sha256>(salt_len),
        HashAlgorithm::Sha384 => Pss::new_with_salt::<sha2::Sha384>(salt_len),
        HashAlgorithm::Sha512 => Pss::new_with_salt::<sha2::Sha512>(salt_len),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::RsaPrivateKey;
    use tss_esapi::structures::PublicKeyRsa;

    /// The public area `template` makes for RSA-2048, with `key`'s modulus.
    fn public_area(key: &RsaPrivateKey) -> Public {
        let template = crate::keys::template(
            hardkey_api::KeyAlgorithm::Rsa2048,
            hardkey_api::KeyUsages::SIGN,
        )
        .unwrap()
        .unwrap();
        let Public::Rsa {
            object_attributes,
            name_hashing_algorithm,
            auth_policy,
            parameters,
            ..
        } = template
        else {
            unreachable!("an RSA template");
        };
        Public::Rsa {
            object_attributes,
            name_hashing_algorithm,
            auth_policy,
            parameters,
            unique: PublicKeyRsa::try_from(key.n().to_bytes_be()).unwrap(),
        }
    }

    #[test]
    fn recovers_the_salt_length() {
        let mut rng = rand::rngs::OsRng;
        let key = RsaPrivateKey::new(&mut rng, 2048).unwrap();
        let public = public_area(&key);
        for hash in [
            HashAlgorithm::Sha256,
            HashAlgorithm::Sha384,
            HashAlgorithm::Sha512,
        ] {
            let h_len = hash.output_len();
            let digest = hardkey_api::encoding::digest(hash, b"probe");
            // Hash length (TLS 1.3), the largest (many TPMs), none, and one in between.
            for salt in [h_len, 256 - h_len - 2, 0, 20] {
                let sig = key
                    .sign_with_rng(&mut rng, pss(hash, salt).unwrap(), &digest)
                    .unwrap();
                assert_eq!(
                    salt_len(&public, hash, &digest, &sig),
                    Some(salt),
                    "{hash:?}"
                );
                let mut bad = sig.clone();
                bad[100] ^= 1;
                assert_eq!(salt_len(&public, hash, &digest, &bad), None);
                let other = hardkey_api::encoding::digest(hash, b"other");
                assert_eq!(salt_len(&public, hash, &other, &sig), None);
            }
        }
        // A signature at or above the modulus is not one.
        let n = key.n().to_bytes_be();
        let digest = hardkey_api::encoding::digest(HashAlgorithm::Sha256, b"probe");
        assert_eq!(salt_len(&public, HashAlgorithm::Sha256, &digest, &n), None);
    }
}
