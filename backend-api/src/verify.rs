//! Software signature verification with the `rsa`, `p256`, `p384` and `ed25519-dalek` crates:
//! independent of every backend, for `hardkey verify` and the conformance suite. Ed448 has no
//! software verifier here (no maintained RustCrypto-generation crate): its signatures are
//! checked with `openssl pkeyutl -verify -rawin` in the tests, and refused here with a
//! message saying so.

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
    /// An EdDSA signature whose length is not `R || S` of the curve.
    #[error("EdDSA signature is {got} bytes, expected {expected}")]
    EdDsaLength {
        /// The signature's length.
        got: usize,
        /// Twice the key length.
        expected: usize,
    },
    /// A scheme hardkey signs with but cannot verify in software.
    #[error("hardkey has no software verifier for it: {hint}")]
    NoSoftwareVerifier {
        /// What to use instead.
        hint: &'static str,
    },
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
    let hash = match (scheme.kind(), scheme.hash()) {
        (SignatureKind::EdDsa, _) => return verify_eddsa(spki_der, scheme, message, signature),
        (_, Some(hash)) => hash,
        (_, None) => return Err(VerifyReason::UnknownScheme),
    };
    let digest = encoding::digest(hash, message);
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
            let result = match (scheme.kind(), hash) {
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
        SignatureKind::EdDsa => Err(VerifyReason::UnknownScheme),
    }
}

/// Pure EdDSA over the whole message. Ed25519 by `ed25519-dalek`'s `verify_strict` (rejects
/// small-order keys and non-canonical `S`, as RFC 8032 section 5.1.7 asks).
fn verify_eddsa(
    spki_der: &[u8],
    scheme: SignatureScheme,
    message: &[u8],
    signature: &[u8],
) -> Result<(), VerifyReason> {
    match scheme {
        SignatureScheme::Ed25519 => {
            use ed25519_dalek::pkcs8::DecodePublicKey as _;
            let key =
                ed25519_dalek::VerifyingKey::from_public_key_der(spki_der).map_err(|source| {
                    VerifyReason::WrongKey {
                        expected: "an Ed25519",
                        source,
                    }
                })?;
            let sig = ed25519_dalek::Signature::from_slice(signature).map_err(|_| {
                VerifyReason::EdDsaLength {
                    got: signature.len(),
                    expected: ed25519_dalek::SIGNATURE_LENGTH,
                }
            })?;
            key.verify_strict(message, &sig).map_err(mismatch)
        }
        SignatureScheme::Ed448 => Err(VerifyReason::NoSoftwareVerifier {
            hint: "verify Ed448 signatures with `openssl pkeyutl -verify -pubin -inkey KEY.pem \
                   -rawin -in MESSAGE -sigfile SIG`",
        }),
        _ => Err(VerifyReason::UnknownScheme),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8032 section 7.1, TEST 2 (one-byte message 0x72): a fixed vector, then every
    /// single-bit change of signature or message is refused.
    #[test]
    fn ed25519_rfc8032_vector() {
        let public =
            hex::decode("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
                .unwrap();
        let sig = hex::decode(
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da\
             085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        )
        .unwrap();
        let pk =
            crate::PublicKey::from_edwards_point(crate::KeyAlgorithm::Ed25519, &public).unwrap();
        let scheme = SignatureScheme::Ed25519;
        verify_signature(pk.der(), scheme, &[0x72], &sig).unwrap();
        assert!(verify_signature(pk.der(), scheme, &[0x73], &sig).is_err());
        for i in 0..sig.len() * 8 {
            let mut bad = sig.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(
                verify_signature(pk.der(), scheme, &[0x72], &bad).is_err(),
                "bit {i}"
            );
        }
        assert!(verify_signature(pk.der(), scheme, &[0x72], &sig[..63]).is_err());
        // An Ed448 claim on an Ed25519 key, and Ed448 at all: refused, with the way out.
        let err = verify_signature(pk.der(), SignatureScheme::Ed448, &[0x72], &sig)
            .unwrap_err()
            .to_string();
        assert!(err.contains("openssl pkeyutl"), "{err}");
    }
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
