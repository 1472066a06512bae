//! Signature encodings (placeholder interface; the full module lands in the next commit).

use sha2::Digest;

use crate::algorithm::{HashAlgorithm, SignatureScheme};
use crate::error::{InvalidInput, Result};

/// Hash `message` with `hash`.
pub fn digest(hash: HashAlgorithm, message: &[u8]) -> Vec<u8> {
    match hash {
        HashAlgorithm::Sha256 => sha2::Sha256::digest(message).to_vec(),
        HashAlgorithm::Sha384 => sha2::Sha384::digest(message).to_vec(),
        HashAlgorithm::Sha512 => sha2::Sha512::digest(message).to_vec(),
    }
}

/// Check that `digest` has the length `scheme`'s hash produces.
pub fn check_digest_len(scheme: SignatureScheme, digest: &[u8]) -> Result<()> {
    let expected = scheme.hash().output_len();
    if digest.len() == expected {
        Ok(())
    } else {
        Err(InvalidInput::DigestLength {
            scheme,
            expected,
            got: digest.len(),
        }
        .into())
    }
}
