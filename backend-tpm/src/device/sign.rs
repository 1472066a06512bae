//! Signing: the TPM's own schemes (`TPM2_Sign`), host-encoded RSA-PSS, and the probe that
//! finds the salt length of the TPM's own RSA-PSS.

use std::sync::atomic::Ordering;

use hardkey_api::{
    Error, HashAlgorithm, Operation, Result, SignatureKind, SignatureScheme, encoding,
};
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::structures::{
    Data, Digest, EccParameter, HashcheckTicket, PublicKeyRsa, RsaDecryptionScheme, Signature,
};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;

use super::{PSS_HASH_LEN, PSS_OTHER, PSS_UNKNOWN, TpmDevice};
use crate::error::mapper;
use crate::keys::{KeyMaterial, tpm_scheme};

fn null_ticket() -> tss_esapi::Result<HashcheckTicket> {
    HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    })
}

impl TpmDevice {
    /// Signs `digest`: the TPM's own scheme, or host-encoded RSA-PSS on keys that need it.
    pub(super) fn sign(
        &mut self,
        key: &KeyMaterial,
        scheme: SignatureScheme,
        digest: &[u8],
    ) -> Result<Vec<u8>> {
        if scheme.kind() == SignatureKind::RsaPss {
            if let (true, Some(hash)) = (key.host_pss, scheme.hash()) {
                return self.sign_pss_on_host(key, hash, digest);
            }
            if self.shared.pss_salt.load(Ordering::Relaxed) == PSS_OTHER {
                return Err(crate::keys::pss_refused(self.name(), scheme));
            }
        }
        let signature = self.sign_on_tpm(key, scheme, digest)?;
        let name = self.tpm.name.clone();
        match (&signature, scheme.kind()) {
            (Signature::EcDsa(sig), SignatureKind::Ecdsa) => {
                ecdsa_der(sig.signature_r(), sig.signature_s(), key.algorithm)
            }
            (Signature::RsaSsa(_), SignatureKind::RsaPkcs1v15)
            | (Signature::RsaPss(_), SignatureKind::RsaPss) => {
                rsa_bytes(&signature, key.algorithm.bits().div_ceil(8)).ok_or_else(|| {
                    Error::backend(&name, Operation::Sign, "unexpected signature type")
                })
            }
            _ => Err(Error::backend(
                &name,
                Operation::Sign,
                format!(
                    "TPM2_Sign returned a {:?} signature for {scheme}",
                    signature.algorithm()
                ),
            )),
        }
    }

    /// Signs with the TPM's own scheme.
    fn sign_on_tpm(
        &mut self,
        key: &KeyMaterial,
        scheme: SignatureScheme,
        digest: &[u8],
    ) -> Result<Signature> {
        let name = self.tpm.name.clone();
        let digest = Digest::try_from(digest.to_vec()).map_err(mapper(
            &name,
            Operation::Sign,
            "TPM2_Sign (digest)",
        ))?;
        let ticket = null_ticket().map_err(mapper(&name, Operation::Sign, "TPM2_Sign"))?;
        let tpm_scheme = tpm_scheme(scheme).ok_or(hardkey_api::Unsupported::SignatureScheme {
            scheme,
            key: key.algorithm,
        })?;
        self.on_key(key, Operation::Sign, "TPM2_Sign", false, |c, h| {
            c.sign(h, digest.clone(), tpm_scheme, ticket.clone())
        })
    }

    /// RSA-PSS by host-side EMSA-PSS encoding (salt = hash length) and a raw RSA private
    /// operation (`TPM2_RSA_Decrypt` with the NULL scheme).
    fn sign_pss_on_host(
        &mut self,
        key: &KeyMaterial,
        hash: HashAlgorithm,
        digest: &[u8],
    ) -> Result<Vec<u8>> {
        let bits = key.algorithm.bits();
        // The k-byte block a raw RSA operation takes.
        let block = encoding::emsa_pss_encode_random(hash, digest, bits)?;
        let name = self.tpm.name.clone();
        let input = PublicKeyRsa::try_from(block).map_err(mapper(
            &name,
            Operation::Sign,
            "TPM2_RSA_Decrypt",
        ))?;
        let out = self.on_key(key, Operation::Sign, "TPM2_RSA_Decrypt", false, |c, h| {
            c.rsa_decrypt(h, input.clone(), RsaDecryptionScheme::Null, Data::default())
        })?;
        Ok(left_pad(out.value(), bits.div_ceil(8)))
    }

    /// Finds out (once per TPM) which salt length the TPM's own RSA-PSS uses, by signing a
    /// probe digest with `key` and recovering the encoded message with the public key.
    pub(super) fn probe_pss(&mut self, key: &KeyMaterial) -> Result<u8> {
        let known = self.shared.pss_salt.load(Ordering::Relaxed);
        if known != PSS_UNKNOWN {
            return Ok(known);
        }
        let hash = HashAlgorithm::Sha256;
        let digest = encoding::digest(hash, b"hardkey PSS salt probe");
        let scheme = SignatureScheme::RsaPssSha256;
        let signature = self.sign_on_tpm(key, scheme, &digest)?;
        let sig = rsa_bytes(&signature, key.algorithm.bits().div_ceil(8))
            .ok_or_else(|| Error::backend(self.name(), Operation::Sign, "PSS probe: not RSA"))?;
        let salt = crate::pss::salt_len(&key.public, hash, &digest, &sig);
        let found = if salt == Some(hash.output_len()) {
            PSS_HASH_LEN
        } else {
            PSS_OTHER
        };
        self.shared.pss_salt.store(found, Ordering::Relaxed);
        Ok(found)
    }
}

fn left_pad(bytes: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len.saturating_sub(bytes.len())];
    out.extend_from_slice(bytes);
    out
}

/// The bytes of an RSA signature, left-padded to the modulus length.
pub(crate) fn rsa_bytes(signature: &Signature, k: usize) -> Option<Vec<u8>> {
    match signature {
        Signature::RsaSsa(s) | Signature::RsaPss(s) => Some(left_pad(s.signature().value(), k)),
        _ => None,
    }
}

/// An ECDSA signature as DER.
pub(crate) fn ecdsa_der(
    r: &EccParameter,
    s: &EccParameter,
    algorithm: hardkey_api::KeyAlgorithm,
) -> Result<Vec<u8>> {
    let field = algorithm.bits().div_ceil(8);
    // A TPM may send a value with leading zero bytes: the number counts, not its width.
    let significant = |v: &[u8]| -> Vec<u8> {
        let start = v.iter().position(|&b| b != 0).unwrap_or(v.len());
        v.get(start..).unwrap_or_default().to_vec()
    };
    let mut raw = left_pad(&significant(r.value()), field);
    raw.extend_from_slice(&left_pad(&significant(s.value()), field));
    encoding::ecdsa_raw_to_der(algorithm, &raw)
}
