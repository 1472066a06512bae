//! Software signature verification with the `rsa`, `p256` and `p384` crates: independent of
//! every backend, for `hardkey verify` and the conformance suite.

use p256::ecdsa::signature::Verifier;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;

use crate::{HashAlgorithm, SignatureKind, SignatureScheme, encoding};

/// A signature that did not verify, and why.
#[derive(Debug)]
pub struct VerifyError {
    /// The scheme the signature claimed.
    pub scheme: SignatureScheme,
    /// What was wrong.
    pub reason: String,
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} signature rejected: {}", self.scheme, self.reason)
    }
}

impl std::error::Error for VerifyError {}

/// Verifies `signature` over `message` with the public key `spki_der`, using the `rsa`,
/// `p256` and `p384` crates. For RSA-PSS it also checks that the salt length equals the hash
/// length (what TLS 1.3 requires).
pub fn verify_signature(
    spki_der: &[u8],
    scheme: SignatureScheme,
    message: &[u8],
    signature: &[u8],
) -> Result<(), VerifyError> {
    verify_inner(spki_der, scheme, message, signature)
        .map_err(|reason| VerifyError { scheme, reason })
}

fn verify_inner(
    spki_der: &[u8],
    scheme: SignatureScheme,
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    let digest = encoding::digest(scheme.hash(), message);
    match scheme.kind() {
        SignatureKind::RsaPkcs1v15 | SignatureKind::RsaPss => {
            let key = rsa::RsaPublicKey::from_public_key_der(spki_der)
                .map_err(|e| format!("not an RSA public key: {e}"))?;
            if signature.len() != key.size() {
                return Err(format!(
                    "RSA signature is {} bytes, modulus is {}",
                    signature.len(),
                    key.size()
                ));
            }
            let result = match (scheme.kind(), scheme.hash()) {
                (SignatureKind::RsaPkcs1v15, HashAlgorithm::Sha256) => {
                    key.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &digest, signature)
                }
                (SignatureKind::RsaPkcs1v15, HashAlgorithm::Sha384) => {
                    key.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha384>(), &digest, signature)
                }
                (SignatureKind::RsaPkcs1v15, _) => {
                    key.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha512>(), &digest, signature)
                }
                (_, HashAlgorithm::Sha256) => key.verify(
                    rsa::Pss::new_with_salt::<sha2::Sha256>(32),
                    &digest,
                    signature,
                ),
                (_, HashAlgorithm::Sha384) => key.verify(
                    rsa::Pss::new_with_salt::<sha2::Sha384>(48),
                    &digest,
                    signature,
                ),
                (_, _) => key.verify(
                    rsa::Pss::new_with_salt::<sha2::Sha512>(64),
                    &digest,
                    signature,
                ),
            };
            result.map_err(|e| format!("{scheme} signature does not verify: {e}"))?;
            if scheme.kind() == SignatureKind::RsaPss {
                // Recover EM = s^e mod n and read the salt length it was made with.
                let s = rsa::BigUint::from_bytes_be(signature);
                let raw = s.modpow(key.e(), key.n()).to_bytes_be();
                // to_bytes_be drops leading zero bytes: restore the k-byte block.
                let mut em = vec![0u8; key.size().saturating_sub(raw.len())];
                em.extend_from_slice(&raw);
                let mod_bits = key.n().bits();
                let salt = encoding::pss_salt_len_of(scheme.hash(), &digest, &em, mod_bits);
                if salt != scheme.pss_salt_len() {
                    return Err(format!(
                        "{scheme} signature uses salt length {salt:?}, TLS 1.3 needs {:?}",
                        scheme.pss_salt_len()
                    ));
                }
            }
            Ok(())
        }
        SignatureKind::Ecdsa => match scheme {
            SignatureScheme::EcdsaP256Sha256 => {
                let key = p256::ecdsa::VerifyingKey::from_public_key_der(spki_der)
                    .map_err(|e| format!("not a P-256 public key: {e}"))?;
                let sig = p256::ecdsa::Signature::from_der(signature)
                    .map_err(|e| format!("not a DER ECDSA signature: {e}"))?;
                key.verify(message, &sig)
                    .map_err(|e| format!("{scheme} signature does not verify: {e}"))
            }
            SignatureScheme::EcdsaP384Sha384 => {
                let key = p384::ecdsa::VerifyingKey::from_public_key_der(spki_der)
                    .map_err(|e| format!("not a P-384 public key: {e}"))?;
                let sig = p384::ecdsa::Signature::from_der(signature)
                    .map_err(|e| format!("not a DER ECDSA signature: {e}"))?;
                key.verify(message, &sig)
                    .map_err(|e| format!("{scheme} signature does not verify: {e}"))
            }
            other => Err(format!("unknown ECDSA scheme {other}")),
        },
    }
}
