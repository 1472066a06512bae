//! Signature and decryption schemes as PKCS#11 mechanisms: what the token is given and how its
//! output is normalized. Exhaustive matches, one place.

use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::types::Ulong;
use hardkey_api::{
    DecryptScheme, HashAlgorithm, InvalidInput, Result, SignatureKind, SignatureScheme, encoding,
};

/// The mechanism for a scheme that signs the whole message: `CKM_EDDSA`, pure (no pre-hash,
/// no context), whose curve is the key's. Ed25519 takes no parameters; Ed448 takes
/// `CK_EDDSA_PARAMS` with phFlag false and an empty context (PKCS#11 3.0, 2.3.14).
pub(crate) fn sign_message_mechanism(scheme: SignatureScheme) -> Result<Mechanism<'static>> {
    match scheme {
        SignatureScheme::Ed25519 => Ok(Mechanism::Eddsa(EddsaParams::new(
            EddsaSignatureScheme::Pure,
        ))),
        SignatureScheme::Ed448 => Ok(Mechanism::Eddsa(EddsaParams::new(
            EddsaSignatureScheme::Ed448(&[]),
        ))),
        _ => Err(InvalidInput::MessageForDigestScheme { scheme }.into()),
    }
}

fn hash_mechanism(hash: HashAlgorithm) -> (MechanismType, PkcsMgfType) {
    match hash {
        HashAlgorithm::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
        HashAlgorithm::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
        _ => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
    }
}

/// The mechanism and the data to give `C_Sign` for a host-computed `digest`:
/// - ECDSA: `CKM_ECDSA` over the digest;
/// - RSA PKCS#1 v1.5: `CKM_RSA_PKCS` over the DigestInfo built here;
/// - RSA-PSS: `CKM_RSA_PKCS_PSS` over the digest, salt = hash length, MGF1 of the same hash.
pub(crate) fn sign_input(
    scheme: SignatureScheme,
    digest: &[u8],
) -> Result<(Mechanism<'static>, Vec<u8>)> {
    let Some(hash) = scheme.hash() else {
        // EdDSA signs the message itself ([`sign_message_mechanism`]).
        return Err(InvalidInput::DigestForMessageScheme { scheme }.into());
    };
    Ok(match scheme.kind() {
        SignatureKind::Ecdsa => (Mechanism::Ecdsa, digest.to_vec()),
        SignatureKind::RsaPkcs1v15 => (Mechanism::RsaPkcs, encoding::digest_info(hash, digest)?),
        _ => {
            let (hash_alg, mgf) = hash_mechanism(hash);
            let params = PkcsPssParams {
                hash_alg,
                mgf,
                s_len: Ulong::new(hash.output_len() as _),
            };
            (Mechanism::RsaPkcsPss(params), digest.to_vec())
        }
    })
}

/// `C_Sign`'s output in hardkey's form: ECDSA `r || s` becomes DER; RSA stays raw.
pub(crate) fn sign_output(scheme: SignatureScheme, raw: Vec<u8>) -> Result<Vec<u8>> {
    match scheme.ecdsa_curve() {
        Some(curve) => encoding::ecdsa_raw_to_der(curve, &raw),
        None => Ok(raw),
    }
}

/// The decryption mechanism.
pub(crate) fn decrypt_mechanism(scheme: DecryptScheme) -> Mechanism<'static> {
    match scheme {
        DecryptScheme::RsaPkcs1v15Legacy => Mechanism::RsaPkcs,
        _ => Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
            MechanismType::SHA256,
            PkcsMgfType::MGF1_SHA256,
            PkcsOaepSource::empty(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_has_a_mechanism() {
        for scheme in SignatureScheme::ALL {
            let Some(hash) = scheme.hash() else {
                assert!(
                    sign_input(scheme, &[0; 32]).is_err(),
                    "{scheme} takes no digest"
                );
                let mechanism = sign_message_mechanism(scheme).unwrap();
                assert_eq!(mechanism.mechanism_type(), MechanismType::EDDSA);
                continue;
            };
            assert!(
                sign_message_mechanism(scheme).is_err(),
                "{scheme} takes a digest"
            );
            let digest = vec![7u8; hash.output_len()];
            let (mechanism, data) = sign_input(scheme, &digest).unwrap();
            match scheme.kind() {
                SignatureKind::RsaPkcs1v15 => {
                    assert_eq!(mechanism.mechanism_type(), MechanismType::RSA_PKCS);
                    assert_eq!(data, encoding::digest_info(hash, &digest).unwrap());
                }
                SignatureKind::RsaPss => {
                    assert_eq!(mechanism.mechanism_type(), MechanismType::RSA_PKCS_PSS);
                    assert_eq!(data, digest);
                }
                _ => {
                    assert_eq!(mechanism.mechanism_type(), MechanismType::ECDSA);
                    assert_eq!(data, digest);
                }
            }
        }
    }
}
