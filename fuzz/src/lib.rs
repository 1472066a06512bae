//! What the fuzz targets share: fixed keys, a fixed message and a valid signature of it for
//! every scheme (made once with `openssl genpkey` / `openssl dgst -sign`; the private keys were
//! not kept). The targets themselves are in `fuzz_targets/`, one file each.

use hardkey_api::SignatureScheme;

/// The message every fixed signature signs.
pub const MESSAGE: &[u8] = include_bytes!("../fixtures/message");

/// The RSA-2048 public key (DER SubjectPublicKeyInfo).
pub const RSA2048_SPKI: &[u8] = include_bytes!("../fixtures/rsa2048.spki.der");
/// The P-256 public key (DER SubjectPublicKeyInfo).
pub const P256_SPKI: &[u8] = include_bytes!("../fixtures/p256.spki.der");
/// The P-384 public key (DER SubjectPublicKeyInfo).
pub const P384_SPKI: &[u8] = include_bytes!("../fixtures/p384.spki.der");

/// The Ed25519 public key (DER SubjectPublicKeyInfo).
pub const ED25519_SPKI: &[u8] = include_bytes!("../fixtures/ed25519.spki.der");
/// The Ed448 public key (DER SubjectPublicKeyInfo; hardkey has no software Ed448 verifier, so
/// its signature never verifies here: the targets check the refusal).
pub const ED448_SPKI: &[u8] = include_bytes!("../fixtures/ed448.spki.der");

/// The fixed key of `scheme`'s algorithm, and its valid signature of [`MESSAGE`].
pub fn fixture(scheme: SignatureScheme) -> (&'static [u8], &'static [u8]) {
    match scheme {
        SignatureScheme::RsaPkcs1Sha256 => {
            (RSA2048_SPKI, include_bytes!("../fixtures/sig-pkcs1-sha256"))
        }
        SignatureScheme::RsaPkcs1Sha384 => {
            (RSA2048_SPKI, include_bytes!("../fixtures/sig-pkcs1-sha384"))
        }
        SignatureScheme::RsaPkcs1Sha512 => {
            (RSA2048_SPKI, include_bytes!("../fixtures/sig-pkcs1-sha512"))
        }
        SignatureScheme::RsaPssSha256 => {
            (RSA2048_SPKI, include_bytes!("../fixtures/sig-pss-sha256"))
        }
        SignatureScheme::RsaPssSha384 => {
            (RSA2048_SPKI, include_bytes!("../fixtures/sig-pss-sha384"))
        }
        SignatureScheme::RsaPssSha512 => {
            (RSA2048_SPKI, include_bytes!("../fixtures/sig-pss-sha512"))
        }
        SignatureScheme::EcdsaP256Sha256 => {
            (P256_SPKI, include_bytes!("../fixtures/sig-ecdsa-p256"))
        }
        SignatureScheme::EcdsaP384Sha384 => {
            (P384_SPKI, include_bytes!("../fixtures/sig-ecdsa-p384"))
        }
        SignatureScheme::Ed25519 => (ED25519_SPKI, include_bytes!("../fixtures/sig-ed25519")),
        SignatureScheme::Ed448 => (ED448_SPKI, include_bytes!("../fixtures/sig-ed448")),
        _ => (&[], &[]),
    }
}
