//! The software "device": signs and decrypts on a pool worker thread.

use std::sync::Arc;

use hardkey_api::{
    Backend, DecryptScheme, Error, HashAlgorithm, Operation, Result, SignatureKind,
    SignatureScheme, Unsupported,
};
use p256::ecdsa::signature::hazmat::PrehashSigner;
use rand_core::OsRng;
use rsa::{Oaep, Pkcs1v15Sign, Pss};
use sha2::{Sha256, Sha384, Sha512};
use zeroize::Zeroizing;

use crate::DEVICE;
use crate::material::KeyMaterial;

/// Per-worker state of the software backend. Software keys need none: the key material travels
/// with each job as an `Arc`, so any worker can serve any key.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct SoftDevice;

/// What identifies a software key on the device: its material.
#[derive(Clone)]
pub struct SoftKeyRef(pub(crate) Arc<KeyMaterial>);

impl std::fmt::Debug for SoftKeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SoftKeyRef([redacted])")
    }
}

fn failed(op: Operation, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::backend(DEVICE, op, e)
}

fn mismatch(scheme: SignatureScheme, key: &KeyMaterial) -> Error {
    Unsupported::SignatureScheme {
        scheme,
        key: key.algorithm(),
    }
    .into()
}

impl Backend for SoftDevice {
    type KeyRef = SoftKeyRef;

    fn sign_digest(
        &mut self,
        key: &SoftKeyRef,
        scheme: SignatureScheme,
        digest: &[u8],
    ) -> Result<Vec<u8>> {
        let sign_err = |e| failed(Operation::Sign, e);
        match (&*key.0, scheme.kind()) {
            (KeyMaterial::Rsa(k), SignatureKind::RsaPkcs1v15) => {
                let padding = match scheme.hash() {
                    Some(HashAlgorithm::Sha256) => Pkcs1v15Sign::new::<Sha256>(),
                    Some(HashAlgorithm::Sha384) => Pkcs1v15Sign::new::<Sha384>(),
                    Some(HashAlgorithm::Sha512) => Pkcs1v15Sign::new::<Sha512>(),
                    _ => return Err(mismatch(scheme, &key.0)),
                };
                k.sign(padding, digest).map_err(sign_err)
            }
            (KeyMaterial::Rsa(k), SignatureKind::RsaPss) => {
                let padding = match scheme.hash() {
                    Some(HashAlgorithm::Sha256) => Pss::new_with_salt::<Sha256>(32),
                    Some(HashAlgorithm::Sha384) => Pss::new_with_salt::<Sha384>(48),
                    Some(HashAlgorithm::Sha512) => Pss::new_with_salt::<Sha512>(64),
                    _ => return Err(mismatch(scheme, &key.0)),
                };
                k.sign_with_rng(&mut OsRng, padding, digest)
                    .map_err(sign_err)
            }
            (KeyMaterial::P256(k), SignatureKind::Ecdsa)
                if scheme == SignatureScheme::EcdsaP256Sha256 =>
            {
                let sig: p256::ecdsa::Signature = k
                    .sign_prehash(digest)
                    .map_err(|e| failed(Operation::Sign, e))?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
            (KeyMaterial::P384(k), SignatureKind::Ecdsa)
                if scheme == SignatureScheme::EcdsaP384Sha384 =>
            {
                let sig: p384::ecdsa::Signature = k
                    .sign_prehash(digest)
                    .map_err(|e| failed(Operation::Sign, e))?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
            (material, _) => Err(mismatch(scheme, material)),
        }
    }

    fn sign_message(
        &mut self,
        key: &SoftKeyRef,
        scheme: SignatureScheme,
        message: &[u8],
    ) -> Result<Vec<u8>> {
        match &*key.0 {
            KeyMaterial::Ed25519(k) if scheme == SignatureScheme::Ed25519 => {
                use ed25519_dalek::Signer as _;
                Ok(k.sign(message).to_bytes().to_vec())
            }
            material => Err(mismatch(scheme, material)),
        }
    }

    fn decrypt(
        &mut self,
        key: &SoftKeyRef,
        scheme: DecryptScheme,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let KeyMaterial::Rsa(k) = &*key.0 else {
            return Err(Unsupported::DecryptScheme {
                scheme,
                key: key.0.algorithm(),
            }
            .into());
        };
        let plain = match scheme {
            DecryptScheme::RsaOaepSha256 => k.decrypt(Oaep::new::<Sha256>(), ciphertext),
            // Refused: the `rsa` crate is not constant time (RUSTSEC-2023-0071), and PKCS#1
            // v1.5 decryption would be a padding oracle. SoftStore::new refuses the policy
            // too; this is the device's own refusal.
            DecryptScheme::RsaPkcs1v15Legacy => {
                return Err(Unsupported::LegacyDecryptInSoftware.into());
            }
            _ => {
                return Err(Unsupported::Operation {
                    op: Operation::Decrypt,
                    device: DEVICE.into(),
                }
                .into());
            }
        };
        plain
            .map(Zeroizing::new)
            .map_err(|e| failed(Operation::Decrypt, e))
    }
}
