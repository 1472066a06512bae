//! Decryption on the TPM (`TPM2_RSA_Decrypt`).

use hardkey_api::{DecryptScheme, HashAlgorithm, Operation, Result};
use tss_esapi::structures::{Data, HashScheme, PublicKeyRsa, RsaDecryptionScheme};
use zeroize::Zeroizing;

use super::TpmDevice;
use crate::error::mapper;
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
        let out = self.on_key(key, Operation::Decrypt, "TPM2_RSA_Decrypt", true, |c, h| {
            c.rsa_decrypt(h, input.clone(), tpm_scheme, Data::default())
        })?;
        Ok(Zeroizing::new(out.value().to_vec()))
    }
}
