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

    /// An RSA-2048 key and two RSA-PSS signatures OpenSSL made with it, over
    /// SHA-256("hardkey EMSA-PSS fixed vector"): `openssl pkeyutl -sign -pkeyopt
    /// rsa_padding_mode:pss -pkeyopt digest:sha256` with `rsa_pss_saltlen:32`, then with
    /// `rsa_pss_saltlen:max` (256 - 32 - 2 = 222, what many TPMs do). Independent of the
    /// `rsa` crate that verifies them here.
    const KEY_2048_PEM: &str = include_str!("../../backend-api/testdata/rsa2048-pss-vectors.pem");

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).unwrap()
    }

    #[test]
    fn recovers_the_salt_of_openssl_signatures() {
        use rsa::pkcs8::DecodePrivateKey;
        let key = RsaPrivateKey::from_pkcs8_pem(KEY_2048_PEM).unwrap();
        let public = public_area(&key);
        let hash = HashAlgorithm::Sha256;
        let d = hardkey_api::encoding::digest(hash, b"hardkey EMSA-PSS fixed vector");
        let sig = unhex(
            "9ea06698d46d14940c8617be3c3682614fcd00de1f1cd811a52207e6c7e13504\
             d7f9a45e3c8977c4cc23da1508a157ee6f211c8e232eced563dbfbe0588859ea\
             427c8e492b906d28932db1e5b7de3e5d3b94e0e8093bab7836dca488bce8528d\
             95c04575e5de2b1b784cbee27f586abcd9976c4dccd042ba9943553ae9417364\
             d2978b21bf8ddf994365ad275f18e75a88d7a1868a500b0d4916589bed6c0cff\
             c7d7a43c2c717078e2701f7f4fb75cd8aba00de682f017a5706c396440fb0834\
             f5cd5ac8f9c8d5d7c628cc63268bdeeee0ef95b632cf16abc00afab0891cddb6\
             f48fd8d212a73f28360efaa61dec69da15ea46a330867d4b107a452d1d9c4ec9",
        );
        let sig_max = unhex(
            "748132eb5f1bc2ad76077606dc63f5926d7393e27e0bb845a4aae5c35ca186d8\
             df013c6414f6e01c473752a254c8500ffa6396cc297c0407cc18717f1e7ceac1\
             2578861e9a863671f9a455845f88ec614cbe80dcd3b368599cad6981cc8edb6f\
             da9bc8011e66110440677338d8ffc657312bfb525fca674aa7a508711cc7054a\
             e6517f1bd982e6c5691f338fca8d6644f9035fd61c3125a3b2aea6e778a62328\
             e4be662b38b96483865cbc4a23aeacb586f829369b721fbaf85438ccf98cf628\
             e597d485847ac2e64b97945a9f2190f08e25b455465573c45002ff3a4e26c7d3\
             7f649170cde52f19c7a451deadc427f284247c02fa3619776c085f7d1c0100a3",
        );
        assert_eq!(salt_len(&public, hash, &d, &sig), Some(32));
        assert_eq!(salt_len(&public, hash, &d, &sig_max), Some(222));
    }
}
