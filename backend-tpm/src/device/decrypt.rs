//! Decryption on the TPM (`TPM2_RSA_Decrypt`).

use hardkey_api::{DecryptScheme, HashAlgorithm, InvalidInput, Operation, Result};
use tss_esapi::structures::{Data, HashScheme, PublicKeyRsa, RsaDecryptionScheme};
use zeroize::Zeroizing;

use super::TpmDevice;
use crate::error::{is_rejected_ciphertext, mapper, rc_of};
use crate::keys::{KeyMaterial, tpm_hash};

impl TpmDevice {
    /// Decrypts on the TPM; the response travels encrypted in the salted session.
    pub(super) fn decrypt_on_tpm(
        &mut self,
        key: &KeyMaterial,
        scheme: DecryptScheme,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let name = self.tpm.name.clone();
        let input = PublicKeyRsa::try_from(ciphertext.to_vec()).map_err(mapper(
            &name,
            Operation::Decrypt,
            "TPM2_RSA_Decrypt",
        ))?;
        let tpm_scheme = match scheme {
            DecryptScheme::RsaOaepSha256 => {
                RsaDecryptionScheme::Oaep(HashScheme::new(tpm_hash(HashAlgorithm::Sha256)))
            }
            DecryptScheme::RsaPkcs1v15Legacy => RsaDecryptionScheme::RsaEs,
            other => {
                return Err(hardkey_api::Unsupported::DecryptScheme {
                    scheme: other,
                    key: key.algorithm,
                }
                .into());
            }
        };
        let out = self.on_key(
            key,
            Operation::Decrypt,
            "TPM2_RSA_Decrypt",
            true,
            |c, h| match c.rsa_decrypt(h, input.clone(), tpm_scheme, Data::default()) {
                Ok(plain) => Ok(Some(plain)),
                Err(e) if rc_of(&e).is_some_and(is_rejected_ciphertext) => Ok(None),
                Err(e) => Err(e),
            },
        )?;
        // A bad ciphertext is the caller's input, not a lost device: one error, whatever the
        // padding check found (no oracle), and no reconnection.
        let out = out.ok_or(InvalidInput::Malformed {
            what: "RSA ciphertext",
            reason: "decryption error",
        })?;
        Ok(Zeroizing::new(out.value().to_vec()))
    }
}
