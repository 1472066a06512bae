//! Software signature verification with the `rsa`, `p256` and `p384` crates: independent of
//! every backend, for `hardkey verify` and the conformance suite.

use p256::ecdsa::signature::Verifier;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;

use crate::{HashAlgorithm, SignatureKind, SignatureScheme, encoding};

/// A signature that did not verify, and why.
#[derive(Debug, thiserror::Error)]
#[error("{scheme} signature rejected: {reason}")]
#[non_exhaustive]
pub struct VerifyError {
    /// The scheme the signature claimed.
    pub scheme: SignatureScheme,
    /// What was wrong.
    #[source]
    pub reason: VerifyReason,
}

/// Why a signature did not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyReason {
    /// The public key is not one the scheme uses (or not a valid SPKI at all).
    #[error("not {expected} public key: {source}")]
    WrongKey {
        /// What the scheme needs ("an RSA", "a P-256").
        expected: &'static str,
        /// Why the key was not read as one.
        source: spki::Error,
    },
    /// An RSA signature whose length is not the modulus's.
    #[error("RSA signature is {got} bytes, modulus is {modulus}")]
    RsaLength {
        /// The signature's length.
        got: usize,
        /// The modulus's length in bytes.
        modulus: usize,
    },
    /// An ECDSA signature that is not a DER `Ecdsa-Sig-Value`.
    #[error("not a DER ECDSA signature: {0}")]
    NotDer(p256::ecdsa::Error),
    /// A well-formed signature that does not match the key and message (for RSA-PSS also
    /// one made with a salt length other than the hash's, as TLS 1.3 requires).
    #[error("does not verify: {0}")]
    Mismatch(Box<dyn std::error::Error + Send + Sync>),
    /// A scheme this verifier does not know.
    #[error("no software verifier for this scheme")]
    UnknownScheme,
}

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

fn mismatch(e: impl std::error::Error + Send + Sync + 'static) -> VerifyReason {
    VerifyReason::Mismatch(Box::new(e))
}

fn verify_inner(
    spki_der: &[u8],
    scheme: SignatureScheme,
    message: &[u8],
    signature: &[u8],
) -> Result<(), VerifyReason> {
    let digest = encoding::digest(scheme.hash(), message);
    match scheme.kind() {
        SignatureKind::RsaPkcs1v15 | SignatureKind::RsaPss => {
            let key = rsa::RsaPublicKey::from_public_key_der(spki_der).map_err(|source| {
                VerifyReason::WrongKey {
                    expected: "an RSA",
                    source,
                }
            })?;
            if signature.len() != key.size() {
                return Err(VerifyReason::RsaLength {
                    got: signature.len(),
                    modulus: key.size(),
                });
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
            // `Pss::new_with_salt` checks the salt length too (TLS 1.3: the hash length).
            result.map_err(mismatch)?;
            Ok(())
        }
        SignatureKind::Ecdsa => {
            match scheme {
                SignatureScheme::EcdsaP256Sha256 => {
                    let key = p256::ecdsa::VerifyingKey::from_public_key_der(spki_der).map_err(
                        |source| VerifyReason::WrongKey {
                            expected: "a P-256",
                            source,
                        },
                    )?;
                    let sig = p256::ecdsa::Signature::from_der(signature)
                        .map_err(VerifyReason::NotDer)?;
                    key.verify(message, &sig).map_err(mismatch)
                }
                SignatureScheme::EcdsaP384Sha384 => {
                    let key = p384::ecdsa::VerifyingKey::from_public_key_der(spki_der).map_err(
                        |source| VerifyReason::WrongKey {
                            expected: "a P-384",
                            source,
                        },
                    )?;
                    let sig = p384::ecdsa::Signature::from_der(signature)
                        .map_err(VerifyReason::NotDer)?;
                    key.verify(message, &sig).map_err(mismatch)
                }
                _ => Err(VerifyReason::UnknownScheme),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs8::EncodePublicKey;
    use rsa::signature::{RandomizedSigner, SignatureEncoding};

    /// TLS 1.3 wants RSA-PSS with a salt as long as the hash: a signature made with another
    /// salt length is refused, whatever checks it.
    #[test]
    fn pss_with_another_salt_length_is_refused() {
        let mut rng = rand::rngs::OsRng;
        let private = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
        let spki = private.to_public_key().to_public_key_der().unwrap();
        let message = b"salted";
        for (salt, ok) in [(32, true), (20, false), (0, false), (64, false)] {
            let signer =
                rsa::pss::SigningKey::<sha2::Sha256>::new_with_salt_len(private.clone(), salt);
            let sig = signer.sign_with_rng(&mut rng, message).to_vec();
            let result = verify_signature(
                spki.as_bytes(),
                SignatureScheme::RsaPssSha256,
                message,
                &sig,
            );
            assert_eq!(result.is_ok(), ok, "salt {salt}: {result:?}");
        }
    }
}
