//! Signature encodings done on the host, so that devices only ever see a digest or a padded
//! block.
//!
//! - [`digest`] / [`check_digest_len`]: message to digest, and the length check every backend
//!   does before talking to a device.
//! - [`digest_info`]: the DER `DigestInfo` that PKCS#11 `CKM_RSA_PKCS` and TPM2 RSASSA expect
//!   around a digest (RFC 8017 section 9.2, note 1).
//! - [`emsa_pss_encode_random`]: the EMSA-PSS block (RFC 8017 section 9.1, MGF1 over the same
//!   hash) for devices that only do raw RSA. Written here because `rsa` 0.9 keeps its EMSA-PSS
//!   encoding, MGF1 and constant-time OAEP decoding private; PSS *verification* is `rsa`'s.
//! - [`oaep_decode`] / [`pkcs1v15_decrypt_decode`]: the padding of a raw RSA decryption, for
//!   tokens that decrypt with raw RSA only.
//! - [`ecdsa_raw_to_der`] / [`ecdsa_der_to_raw`] / [`ecdsa_field_len`]: the fixed-width `r || s`
//!   that TPMs and PKCS#11 return, and the DER `Ecdsa-Sig-Value` that TLS and X.509 carry, by
//!   the `p256` / `p384` signature types (strict DER, `0 < r, s < n`).
//! - [`check_signature_form`]: a device's answer has the form its scheme gives it.
//!
//! Every function here is total: malformed input gives an [`Error`], never a panic.

use rand::RngCore;
use sha2::Digest;
use zeroize::Zeroizing;

use crate::algorithm::{HashAlgorithm, KeyAlgorithm, SignatureKind, SignatureScheme};
use crate::error::{Error, InvalidInput, Operation, Result};

/// Hash `message` with `hash`.
pub fn digest(hash: HashAlgorithm, message: &[u8]) -> Vec<u8> {
    match hash {
        HashAlgorithm::Sha256 => sha2::Sha256::digest(message).to_vec(),
        HashAlgorithm::Sha384 => sha2::Sha384::digest(message).to_vec(),
        HashAlgorithm::Sha512 => sha2::Sha512::digest(message).to_vec(),
    }
}

/// The SHA-256 of a DER SubjectPublicKeyInfo, lowercase hex: how `openssl pkey -pubin
/// -outform der | sha256sum` names a public key (for keys hardkey cannot parse too, such as
/// a certificate's).
pub fn spki_fingerprint(spki_der: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(spki_der))
}

/// Check that `digest` has the length `scheme`'s hash produces. A scheme without a pre-hash
/// (EdDSA) takes no digest at all: [`InvalidInput::DigestForMessageScheme`].
pub fn check_digest_len(scheme: SignatureScheme, digest: &[u8]) -> Result<()> {
    let Some(hash) = scheme.hash() else {
        return Err(InvalidInput::DigestForMessageScheme { scheme }.into());
    };
    let expected = hash.output_len();
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

// ---------------------------------------------------------------------------------------------
// PKCS#1 v1.5 (RFC 8017 section 9.2)
// ---------------------------------------------------------------------------------------------

/// `DigestInfo` prefixes from RFC 8017 section 9.2, note 1: `SEQUENCE { SEQUENCE { OID, NULL },
/// OCTET STRING (hLen) }` up to and including the OCTET STRING's length byte.
mod digest_info_der {
    pub(super) const SHA256: [u8; 19] = [
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    pub(super) const SHA384: [u8; 19] = [
        0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02,
        0x05, 0x00, 0x04, 0x30,
    ];
    pub(super) const SHA512: [u8; 19] = [
        0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03,
        0x05, 0x00, 0x04, 0x40,
    ];
}

/// The DER `DigestInfo` prefix for `hash` (RFC 8017 section 9.2, note 1, with the explicit NULL
/// parameters): the bytes that go in front of the digest itself.
const fn digest_info_prefix(hash: HashAlgorithm) -> &'static [u8] {
    match hash {
        HashAlgorithm::Sha256 => &digest_info_der::SHA256,
        HashAlgorithm::Sha384 => &digest_info_der::SHA384,
        HashAlgorithm::Sha512 => &digest_info_der::SHA512,
    }
}

/// The DER `DigestInfo` for `digest`: the `DigestInfo` prefix of `hash`, then `digest`.
///
/// This is the input PKCS#11 `CKM_RSA_PKCS` signs (the token adds the `0x00 0x01 0xff..`
/// padding itself). Fails with [`InvalidInput::DigestLength`] (naming the `rsa-pkcs1` scheme
/// of `hash`) if `digest` is not `hash.output_len()` bytes long.
pub fn digest_info(hash: HashAlgorithm, digest: &[u8]) -> Result<Vec<u8>> {
    check_digest_len(pkcs1_scheme(hash), digest)?;
    let prefix = digest_info_prefix(hash);
    let mut out = Vec::with_capacity(prefix.len() + digest.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(digest);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// PSS (RFC 8017 section 9.1) and MGF1 (appendix B.2.1)
// ---------------------------------------------------------------------------------------------

/// Largest RSA modulus the PSS and OAEP functions accept, in bits. Far above any device's limit; it only
/// keeps a nonsensical `mod_bits` from turning into a huge allocation.
const MAX_MODULUS_BITS: usize = 16_384;

/// `out ^= MGF1(seed, out.len())`. The caller keeps `out.len() <= 2^32 * hLen`; longer outputs
/// would repeat the counter, which every caller here rules out by bounding the modulus size.
fn mgf1_xor(hash: HashAlgorithm, seed: &[u8], out: &mut [u8]) {
    let h_len = hash.output_len();
    for (counter, chunk) in (0..=u32::MAX).zip(out.chunks_mut(h_len)) {
        let block = digest_parts(hash, &[seed, &counter.to_be_bytes()]);
        for (o, m) in chunk.iter_mut().zip(block.iter()) {
            *o ^= m;
        }
    }
}

/// Hash the concatenation of `parts`.
fn digest_parts(hash: HashAlgorithm, parts: &[&[u8]]) -> Vec<u8> {
    fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
        let mut d = D::new();
        for p in parts {
            d.update(p);
        }
        d.finalize().to_vec()
    }
    match hash {
        HashAlgorithm::Sha256 => run::<sha2::Sha256>(parts),
        HashAlgorithm::Sha384 => run::<sha2::Sha384>(parts),
        HashAlgorithm::Sha512 => run::<sha2::Sha512>(parts),
    }
}

/// `H = Hash(0x00 * 8 || mHash || salt)` (RFC 8017 9.1.1 steps 5-6, 9.1.2 steps 12-13).
fn pss_h(hash: HashAlgorithm, m_hash: &[u8], salt: &[u8]) -> Vec<u8> {
    digest_parts(hash, &[&[0u8; 8], m_hash, salt])
}

/// `(emBits, emLen)` for a modulus of `mod_bits` bits: `emBits = modBits - 1`,
/// `emLen = ceil(emBits / 8)`. `None` if `mod_bits` is 0, 1 or above [`MAX_MODULUS_BITS`].
fn pss_em_size(mod_bits: usize) -> Option<(usize, usize)> {
    if !(2..=MAX_MODULUS_BITS).contains(&mod_bits) {
        return None;
    }
    let em_bits = mod_bits - 1;
    Some((em_bits, em_bits.div_ceil(8)))
}

/// Mask keeping only the low `em_bits - 8 * (emLen - 1)` bits of the leftmost EM octet, i.e.
/// clearing its leftmost `8 * emLen - emBits` bits.
fn pss_top_mask(em_bits: usize, em_len: usize) -> u8 {
    // 8 * emLen - emBits is in 0..=7 because emLen = ceil(emBits / 8).
    let unused = (8 * em_len - em_bits) as u32;
    0xffu8.checked_shr(unused).unwrap_or(0)
}

/// EMSA-PSS-ENCODE (RFC 8017 section 9.1.1) of `digest` with the given `salt`, MGF1 over
/// `hash`, for an RSA modulus of `mod_bits` bits.
///
/// The output is the encoded message `EM` of `emLen = ceil((mod_bits - 1) / 8)` bytes, with the
/// leftmost `8 * emLen - (mod_bits - 1)` bits cleared. For the usual key sizes (a multiple of 8
/// bits) `emLen` equals the modulus length `k`; when `mod_bits % 8 == 1`, `emLen = k - 1`.
///
/// This is deterministic (known-answer tests use it); signing uses [`emsa_pss_encode_random`]. Fails with [`InvalidInput::DigestLength`] (naming the `rsa-pss`
/// scheme of `hash`) if `digest` has the wrong length, and with [`InvalidInput::Malformed`] if
/// `mod_bits` is outside `2..=16384` or the modulus is too small for the digest and salt
/// (`emLen < hLen + sLen + 2`, the RFC's "encoding error").
fn emsa_pss_encode(
    hash: HashAlgorithm,
    digest: &[u8],
    salt: &[u8],
    mod_bits: usize,
) -> Result<Vec<u8>> {
    check_digest_len(pss_scheme(hash), digest)?;
    let h_len = hash.output_len();
    let (em_bits, em_len) = pss_em_size(mod_bits).ok_or_else(|| {
        malformed(
            "RSA modulus size for EMSA-PSS",
            "must be between 2 and 16384 bits",
        )
    })?;
    // Step 3. `salt.len() <= em_len` below keeps the sum from overflowing.
    if salt.len() > em_len || em_len < h_len + salt.len() + 2 {
        return Err(malformed(
            "RSA modulus size for EMSA-PSS",
            "encoding error: the modulus is too small for this hash and salt length",
        ));
    }
    // Steps 4-6.
    let h = pss_h(hash, digest, salt);
    // Steps 7-8: DB = PS (zeros) || 0x01 || salt, emLen - hLen - 1 bytes.
    let db_len = em_len - h_len - 1;
    let mut em = Vec::with_capacity(em_len);
    em.resize(db_len - salt.len() - 1, 0x00);
    em.push(0x01);
    em.extend_from_slice(salt);
    // Steps 9-10: maskedDB = DB xor MGF1(H, emLen - hLen - 1).
    mgf1_xor(hash, &h, &mut em);
    // Step 11.
    if let Some(first) = em.first_mut() {
        *first &= pss_top_mask(em_bits, em_len);
    }
    // Step 12: EM = maskedDB || H || 0xbc.
    em.extend_from_slice(&h);
    em.push(0xbc);
    Ok(em)
}

/// [`emsa_pss_encode`], left-padded to exactly `k = ceil(mod_bits / 8)` bytes: the input for a
/// raw RSA private-key operation on a `mod_bits`-bit modulus.
fn emsa_pss_encode_for_modulus(
    hash: HashAlgorithm,
    digest: &[u8],
    salt: &[u8],
    mod_bits: usize,
) -> Result<Vec<u8>> {
    let em = emsa_pss_encode(hash, digest, salt, mod_bits)?;
    let k = mod_bits.div_ceil(8);
    // k - emLen is 0 or 1.
    let mut out = vec![0u8; k.saturating_sub(em.len())];
    out.extend_from_slice(&em);
    Ok(out)
}

/// EMSA-PSS-ENCODE with a fresh random salt of `hash.output_len()` bytes from the operating
/// system (the salt length TLS 1.3 and [`SignatureScheme::pss_salt_len`] require).
///
/// Returns the encoded message left-padded to exactly `k = ceil(mod_bits / 8)` bytes: the input
/// for a raw RSA private-key operation on a `mod_bits`-bit modulus. Fails with
/// [`InvalidInput::DigestLength`] (naming the `rsa-pss` scheme of `hash`) if `digest` has the
/// wrong length, with [`InvalidInput::Malformed`] if `mod_bits` is outside `2..=16384` or too
/// small for the hash, or with a backend error if the OS random generator fails.
pub fn emsa_pss_encode_random(
    hash: HashAlgorithm,
    digest: &[u8],
    mod_bits: usize,
) -> Result<Vec<u8>> {
    let mut salt = vec![0u8; hash.output_len()];
    rand::rngs::OsRng
        .try_fill_bytes(&mut salt)
        .map_err(|e| Error::backend("host random generator", Operation::Sign, e))?;
    emsa_pss_encode_for_modulus(hash, digest, &salt, mod_bits)
}

// ---------------------------------------------------------------------------------------------
// ECDSA signature formats
// ---------------------------------------------------------------------------------------------

/// The byte length of each of `r` and `s` for an EC key (`32` for P-256, `48` for P-384), or
/// `None` for RSA keys.
pub const fn ecdsa_field_len(alg: KeyAlgorithm) -> Option<usize> {
    match alg {
        KeyAlgorithm::EcP256 => Some(32),
        KeyAlgorithm::EcP384 => Some(48),
        KeyAlgorithm::Rsa2048
        | KeyAlgorithm::Rsa3072
        | KeyAlgorithm::Rsa4096
        | KeyAlgorithm::Ed25519
        | KeyAlgorithm::Ed448 => None,
    }
}

/// Checks that `signature` has the form `scheme` gives it for a key of `algorithm`: a DER
/// `Ecdsa-Sig-Value` of the curve's field size for ECDSA, the modulus length for RSA, `R || S`
/// of twice the key length for EdDSA (64 bytes for Ed25519, 114 for Ed448). Catches a
/// device answer in the wrong encoding before it goes into a certificate or a handshake.
pub fn check_signature_form(
    scheme: SignatureScheme,
    algorithm: KeyAlgorithm,
    signature: &[u8],
) -> Result<()> {
    match scheme.kind() {
        SignatureKind::Ecdsa => {
            if ecdsa_field_len(algorithm).is_none() {
                return Err(malformed(
                    "signature from the key",
                    "an ECDSA signature from a key that is not an EC key",
                ));
            }
            ecdsa_der_to_raw(algorithm, signature).map(drop)
        }
        SignatureKind::EdDsa => {
            if scheme.eddsa_key() != Some(algorithm) {
                return Err(malformed(
                    "signature from the key",
                    "an EdDSA signature from a key of another algorithm",
                ));
            }
            match algorithm.edwards_key_len() {
                Some(len) if signature.len() == 2 * len => Ok(()),
                _ => Err(malformed(
                    "signature from the key",
                    "an EdDSA signature whose length is not twice the key length (R || S)",
                )),
            }
        }
        SignatureKind::RsaPkcs1v15 | SignatureKind::RsaPss => {
            if signature.len() == algorithm.bits().div_ceil(8) {
                Ok(())
            } else {
                Err(InvalidInput::Malformed {
                    what: "signature from the key",
                    reason: "an RSA signature whose length is not the modulus length",
                }
                .into())
            }
        }
    }
}

/// Converts a raw ECDSA signature `r || s` (two big-endian halves of the curve's field size, as
/// TPMs and PKCS#11 `CKM_ECDSA` return it) made by a key of `algorithm` to the DER
/// `Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` that TLS and X.509 carry (RFC 5480 /
/// RFC 3279), with minimal INTEGERs.
///
/// Fails if `algorithm` is not an EC algorithm, if `raw` is not exactly twice the field size
/// ([`ecdsa_field_len`]), or if `r` or `s` is not in `1..n` (the curve order): such a signature
/// can never verify, so a device returning one is broken.
pub fn ecdsa_raw_to_der(algorithm: KeyAlgorithm, raw: &[u8]) -> Result<Vec<u8>> {
    const WHAT: &str = "raw ECDSA signature (r || s)";
    let der = match algorithm {
        KeyAlgorithm::EcP256 => {
            p256::ecdsa::Signature::from_slice(raw).map(|sig| sig.to_der().as_bytes().to_vec())
        }
        KeyAlgorithm::EcP384 => {
            p384::ecdsa::Signature::from_slice(raw).map(|sig| sig.to_der().as_bytes().to_vec())
        }
        _ => return Err(malformed(WHAT, NOT_EC)),
    };
    der.map_err(|_| malformed(WHAT, BAD_RAW))
}

/// Converts a DER `Ecdsa-Sig-Value` for a key of `algorithm` to raw `r || s`, each left-padded
/// to the curve's field size ([`ecdsa_field_len`]); the form TLS libraries hand in and TPMs take
/// for verification.
///
/// The parse is strict DER (exactly one SEQUENCE of two minimal non-negative INTEGERs, definite
/// minimal lengths, nothing after it), and `r` and `s` must be in `1..n`, the curve order.
pub fn ecdsa_der_to_raw(algorithm: KeyAlgorithm, der: &[u8]) -> Result<Vec<u8>> {
    const WHAT: &str = "DER ECDSA signature";
    let raw = match algorithm {
        KeyAlgorithm::EcP256 => {
            p256::ecdsa::Signature::from_der(der).map(|sig| sig.to_bytes().to_vec())
        }
        KeyAlgorithm::EcP384 => {
            p384::ecdsa::Signature::from_der(der).map(|sig| sig.to_bytes().to_vec())
        }
        _ => return Err(malformed(WHAT, NOT_EC)),
    };
    raw.map_err(|_| malformed(WHAT, BAD_DER))
}

const NOT_EC: &str = "the key is not an EC key";
const BAD_RAW: &str = "not r || s of the curve's field size with 0 < r, s < the curve order";
const BAD_DER: &str = "not a strict DER SEQUENCE of two INTEGERs r, s with 0 < r, s < the curve \
                       order";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn malformed(what: &'static str, reason: &'static str) -> Error {
    InvalidInput::Malformed { what, reason }.into()
}

/// The PKCS#1 v1.5 scheme over `hash`, named in digest-length errors.
const fn pkcs1_scheme(hash: HashAlgorithm) -> SignatureScheme {
    match hash {
        HashAlgorithm::Sha256 => SignatureScheme::RsaPkcs1Sha256,
        HashAlgorithm::Sha384 => SignatureScheme::RsaPkcs1Sha384,
        HashAlgorithm::Sha512 => SignatureScheme::RsaPkcs1Sha512,
    }
}

/// The PSS scheme over `hash`, named in digest-length errors.
const fn pss_scheme(hash: HashAlgorithm) -> SignatureScheme {
    match hash {
        HashAlgorithm::Sha256 => SignatureScheme::RsaPssSha256,
        HashAlgorithm::Sha384 => SignatureScheme::RsaPssSha384,
        HashAlgorithm::Sha512 => SignatureScheme::RsaPssSha512,
    }
}

/// EME-OAEP decoding (RFC 8017 section 7.1.2, step 3) of a `k`-byte block `em` produced by a
/// raw RSA private-key operation, with `hash` for the label hash and MGF1, and an empty label.
///
/// For tokens that decrypt with raw RSA but reject OAEP parameters (SoftHSM 2.6 does OAEP only
/// with SHA-1). The checks run in constant time and every failure is the same error, so the
/// caller learns nothing about which check failed (Manger's attack).
pub fn oaep_decode(hash: HashAlgorithm, em: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

    let h_len = hash.output_len();
    let k = em.len();
    let failed = || {
        Error::from(InvalidInput::Malformed {
            what: "RSA-OAEP ciphertext",
            reason: "decryption error",
        })
    };
    // The length is public (the modulus size): refusing sizes no modulus has leaks nothing.
    if k < 2 * h_len + 2 || k > MAX_MODULUS_BITS / 8 {
        return Err(failed());
    }
    let (y, rest) = em.split_at(1);
    let (masked_seed, masked_db) = rest.split_at(h_len);
    // seed = maskedSeed xor MGF1(maskedDB, hLen); DB = maskedDB xor MGF1(seed, k - hLen - 1).
    let mut seed = Zeroizing::new(masked_seed.to_vec());
    mgf1_xor(hash, masked_db, &mut seed);
    let mut db = Zeroizing::new(masked_db.to_vec());
    mgf1_xor(hash, &seed, &mut db);
    let label_hash = digest(hash, b"");

    let mut good = y[0].ct_eq(&0) & db[..h_len].ct_eq(&label_hash[..]);
    // Find the 0x01 that ends the zero padding, looking at every byte whatever is found.
    let mut looking = Choice::from(1);
    let mut index = 0u32;
    let mut stray = Choice::from(0);
    for (i, byte) in db[h_len..].iter().enumerate() {
        let is_one = byte.ct_eq(&1);
        let is_zero = byte.ct_eq(&0);
        let position = u32::try_from(i).unwrap_or(u32::MAX);
        index.conditional_assign(&position, looking & is_one);
        looking &= !is_one;
        stray |= looking & !is_zero;
    }
    good &= !looking & !stray;
    if !bool::from(good) {
        return Err(failed());
    }
    let start = h_len + index as usize + 1;
    Ok(Zeroizing::new(db[start..].to_vec()))
}

/// EME-PKCS1-v1_5 decoding (RFC 8017 section 7.2.2, step 3) of a `k`-byte block `em` produced
/// by a raw RSA private-key operation: `00 02 PS 00 M` with at least 8 non-zero padding bytes.
///
/// **Legacy** (TLS 1.2 RSA key exchange): for tokens that do the raw RSA, so that a bad
/// ciphertext costs the device exactly what a good one does. The checks run in constant time
/// and every failure is the same error; the caller must still not reveal which ciphertexts
/// failed (TLS stacks continue with a random premaster secret, RFC 5246 7.4.7.1).
pub fn pkcs1v15_decrypt_decode(em: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    use subtle::{Choice, ConditionallySelectable, ConstantTimeEq, ConstantTimeGreater};

    let failed = || {
        Error::from(InvalidInput::Malformed {
            what: "RSA PKCS#1 v1.5 ciphertext",
            reason: "decryption error",
        })
    };
    if em.len() < 11 {
        return Err(failed());
    }
    let mut good = em[0].ct_eq(&0) & em[1].ct_eq(&2);
    // Find the 0x00 that ends the padding, looking at every byte whatever is found.
    let mut looking = Choice::from(1);
    let mut index = 0u32;
    for (i, byte) in em[2..].iter().enumerate() {
        let is_zero = byte.ct_eq(&0);
        let position = u32::try_from(i).unwrap_or(u32::MAX);
        index.conditional_assign(&position, looking & is_zero);
        looking &= !is_zero;
    }
    good &= !looking & index.ct_gt(&7);
    if !bool::from(good) {
        return Err(failed());
    }
    Ok(Zeroizing::new(em[2 + index as usize + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    //! Fixed vectors and cross-checks against independent implementations: the `rsa`, `p256`
    //! and `p384` crates at test time, and OpenSSL 3.0 (`openssl pkeyutl`) and Python's
    //! `hashlib` when the recorded vectors were made.

    use std::sync::LazyLock;

    use rand::rngs::StdRng;
    use rand::{Rng, RngCore, SeedableRng};
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::traits::{PrivateKeyParts, PublicKeyParts};
    use rsa::{BigUint, Pkcs1v15Sign, Pss, RsaPrivateKey, RsaPublicKey};
    use sha2::{Sha256, Sha384, Sha512};

    use super::*;

    const HASHES: [HashAlgorithm; 3] = [
        HashAlgorithm::Sha256,
        HashAlgorithm::Sha384,
        HashAlgorithm::Sha512,
    ];

    // Fixed test keys, made with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:N`.
    // 2048 bits: emBits = 2047, emLen = k = 256, one top bit cleared.
    // 2047 bits: emBits = 2046, emLen = k = 256, two top bits cleared.
    // 1537 bits: emBits = 1536, emLen = 192 = k - 1, nothing cleared, EM left-padded to k.
    /// An RSA-2048 key shared with backend-tpm's PSS tests, which check OpenSSL's signatures
    /// made with it.
    const KEY_2048_PEM: &str = include_str!("../testdata/rsa2048-pss-vectors.pem");
    const KEY_2047_PEM: &str = r"-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAF2NVEv3gXcdOtIC
OsC7cceL6bruvXhZAoMvC/7I1JnAziqaISD5r9nt242ROuRZOE67jLUmrVL9td8g
X4PzH4pOqN5sqeMvGi2IoKOnJjhEBBlJRbacAtTjiWWw8A9hksZUR7FbqAp7Z/61
Zhs1PiJBUPjGuPg1v3D2YP98Nw/zVdEiuo0O5tEWEMoogO8bn+7KESn+VgVMAeMG
naFlT0KJmUcTyrfeN0nzPaGvsWPdGPUspCc7XGryKhS24cu/OGzVim3YxyzIZ36R
7eWgZLemAUkbWmYEr0/82908frdkex8EI5cHnACoqgJPYbzLMWa3XrNBuuGEU4++
D+fiXLECAwEAAQKCAQA9eJs2W4jHcv5udiaS89f8jbPkL/FxvdMHzgcswFvqN6WA
msw/9bEWGtQUPqSa3QFBwrzfX22uRaWW2pfIhR1pbOxLUs2CyTWDS+55+mADwrWK
w/m51uOJbYWfu1bSVIP0K/b71EUjthkMZbeVEzQjoBWLklCCUBbeLBZqaf1oTdaO
JvflqjSwBbB25lDsPkwrBMob1ipzecV4bh8LyNe+OXwuaWwxkQEjmIEa5lg4U9ZV
k8LJA/yMbx1cZwLb+p9qJbEUFIWwtRU3NIiHrckA6g6g608qdaunKor81+zo0rMs
1dk5zxJeSZmi7k0G7cXKSXoPH6aHrHThqeirXcFtAoGBAO6aCsAphyoPEYgGuKun
V5FnbvyNLq8o2MgVwgUFd/DbgPRSFhHt2VlSNTgqwkq2csuzaJ0vO22g9ydknm54
ClqM8wyxS5bPYKTo/amhnrCtrUxizx3ORPrKrpgtEt6luITB5X+FtqLh3gLxPv2W
mA5lw/SlIy/Yc1eSjgy4zhITAoGAZF+oYF+nU2c1f5xkkZ6WiP7H23k64cs6DJo8
BVuEJiQEVP0K7XKzb+6pKC3+f1+8BtOezIJWCh7eNZJ1ZUL+LOTXkDVT+MeiR+yI
8YTeRjeGpyAtMUsJ1HaGnTJFQhDUc8cONYta2i/9c4Eip2CaOhAq+mKGZoPEQ39/
k0urzqsCgYEAm93NQBLg1Tzauv2JDblXnwjum9SutoX8d1ifUiBsZc8+wlwNRtEV
tx/Y3EQygBQHkcI1iNkd/VO1oOo+BPQt71E8RQJc2rvF6nS5oGKQA+Kw3sF9g38H
2L0mqQpo1UF09GSlw1RaJrVeDpYCDC6gTmd0RxDJl6vSTVbTrMPc+jkCgYA+SQ3X
IARZQQZ1tbrCkkKfqFqk2smrK81N3Le6K1wJvvfhNVT+m9q1bsgRYtk2eVXYdqFo
DskNZrJFVCj9OWE4wpjxp+X/zwHo1+Ly3JyBvhsUwmbI2+OxsAtAqN1JbeAoKDGt
EFjEZFtGva+fZdbOiRHiZhk4rDOyHwAvixmGGQKBgQCdsONsUWyKvGpzMzudBznu
xM16KC7t6wbqyaZGG/HCG6rjkFw+urZu9LMmT1TM0TqV36iybahPukX9AACwrByf
6uMpAahzwaiBBq33IDXyyOgTLTIOpvAODOuLyKtxzR1Y0IswQtRvfRhnwMEgAaaC
kr+wcW2ln4e78l0Q7d3uCw==
-----END PRIVATE KEY-----";
    const KEY_1537_PEM: &str = r"-----BEGIN PRIVATE KEY-----
MIIDlwIBADANBgkqhkiG9w0BAQEFAASCA4EwggN9AgEAAoHBAbEQ93jmdpZyv941
+b2txG5A3U1k4VX7n8ebUxtIfXVIf2Bv8hcZLuV9b33X7lxUh8AazMh/C1t1p/bs
EjtBn8DANpIv0JU/0PcIRp/oq8AUBzsq7tIbdPJYdT1a/8ooG4ApnSbUrZ7QYrmA
It60bfRgXEXQssPaQTScCmX5QEEcUckUCp5zBYrCn3SHivl3Jw1sRQYZkZSlcnSg
5XhMCKoK1Dd4y5ylEjrwywtb7lSeYdDFIkq8u1TEHAujT/VvMwIDAQABAoHBAIiW
L1dEaNaeroEpSPFYIwIbFzFXxfJWgFh2VsneHSOmj/YcmKBMYwwiec2ZEyavynj+
euQpna1k+Grang1ubzJd7VhCGGlaTU/8njnFKpZUOsugiN5fpozg9Wk6kD50Uwf6
93yHOvUbPPE5vKpDuzjFS41LPP9TaPXlOTOp4wQFnVqYonIANQeHIRXrf163uWns
DJTRA7WXePqCi5haR10tmYG3HU4CndnUZoAw3hOW431Tdmcr6RGNpIyoYgIlwQJh
Ad9/TGl14Pmy6ZZalRYE+cz9hI8Q6rOCmi9ptS2qt270UfgWRY9ITqfIs1hDUS8H
hXCGpAB+3An0gFZ0gkot4U95eY5++XNJCOyMFFnMal386mUBpNqiPkrQ+OKpCIk1
gwJhAOc1+fOCU4O49IMMadekQ5LCLdt5O3xo45E4Y1P2K7X8FuZLNpkUSNxV/EwQ
1hzh61uvB3xIijYPwk/E68bT3xTA4TIL4/tvwVGJPt9xXekkzzqIkKbXe2kiAFRW
to9gkQJhAKiokiwWNogeEmO8gOw529Pq6JGaFbQGoE1FFWF2xwbUEXD+BIGdoW0K
/2pwY0Hzl1A5S76Q4Lzvr6S5XorREItv4v3oU73lVqo9q3ramB9vMtNMfLwajWar
kp/HbSU2GQJgR24mjXOLB5vhdockP+nQsotpDXATz6i7/YZ1MWBROsTp8jX0ZTCe
Hew2qO1eqMenJckaP+xNPsx5lJla2i9ksQ2xxPtlcK2jBOSo1vE4OSoVF5lPTywt
RVqqzWOIvRzxAmBfJv3IMYGRyuvVCQlOohkLoFL956blWzPVRQG+lS0Djrsp/EcJ
9xqVRca7b5Q5kA4K+TGzzNxypQpQQdBcqmMvMURNEsoHUTixQV8oaXB9BNhsIrII
caaI/nSxcxIi8hQ=
-----END PRIVATE KEY-----";

    static KEY_2048: LazyLock<RsaPrivateKey> = LazyLock::new(|| load(KEY_2048_PEM, 2048));
    static KEY_2047: LazyLock<RsaPrivateKey> = LazyLock::new(|| load(KEY_2047_PEM, 2047));
    static KEY_1537: LazyLock<RsaPrivateKey> = LazyLock::new(|| load(KEY_1537_PEM, 1537));

    fn load(pem: &str, bits: usize) -> RsaPrivateKey {
        let key = RsaPrivateKey::from_pkcs8_pem(pem).expect("test key parses");
        assert_eq!(key.n().bits(), bits);
        key
    }

    fn keys() -> [&'static RsaPrivateKey; 3] {
        [&KEY_2048, &KEY_2047, &KEY_1537]
    }

    fn mod_bits(key: &RsaPublicKey) -> usize {
        key.n().bits()
    }

    fn left_pad(v: Vec<u8>, k: usize) -> Vec<u8> {
        assert!(v.len() <= k);
        let mut out = vec![0u8; k - v.len()];
        out.extend_from_slice(&v);
        out
    }

    /// `s^e mod n`, as `k` bytes.
    fn raw_public(key: &RsaPublicKey, sig: &[u8]) -> Vec<u8> {
        let m = BigUint::from_bytes_be(sig).modpow(key.e(), key.n());
        left_pad(m.to_bytes_be(), key.size())
    }

    /// The textbook RSA private-key operation `em^d mod n`, as `k` bytes (the `rsa` crate's
    /// own raw operation sits behind its `hazmat` feature; this one is independent anyway).
    fn raw_private(key: &RsaPrivateKey, em: &[u8]) -> Vec<u8> {
        let m = BigUint::from_bytes_be(em);
        assert!(&m < key.n());
        left_pad(m.modpow(key.d(), key.n()).to_bytes_be(), key.size())
    }

    fn rsa_pss(hash: HashAlgorithm, salt_len: usize) -> Pss {
        match hash {
            HashAlgorithm::Sha256 => Pss::new_with_salt::<Sha256>(salt_len),
            HashAlgorithm::Sha384 => Pss::new_with_salt::<Sha384>(salt_len),
            HashAlgorithm::Sha512 => Pss::new_with_salt::<Sha512>(salt_len),
        }
    }

    fn rsa_pkcs1(hash: HashAlgorithm) -> Pkcs1v15Sign {
        match hash {
            HashAlgorithm::Sha256 => Pkcs1v15Sign::new::<Sha256>(),
            HashAlgorithm::Sha384 => Pkcs1v15Sign::new::<Sha384>(),
            HashAlgorithm::Sha512 => Pkcs1v15Sign::new::<Sha512>(),
        }
    }

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).expect("valid hex in test vector")
    }

    fn is_malformed(e: &Error) -> bool {
        matches!(e, Error::InvalidInput(InvalidInput::Malformed { .. }))
    }

    // -----------------------------------------------------------------------------------------
    // Digests and DigestInfo
    // -----------------------------------------------------------------------------------------

    #[test]
    fn digest_known_answers_fips_180_4() {
        // FIPS 180-4 examples (NIST CSRC "Example Values"), message "abc".
        assert_eq!(
            hex::encode(digest(HashAlgorithm::Sha256, b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex::encode(digest(HashAlgorithm::Sha384, b"abc")),
            "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed\
             8086072ba1e7cc2358baeca134c825a7"
        );
        assert_eq!(
            hex::encode(digest(HashAlgorithm::Sha512, b"abc")),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
             2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
        for hash in HASHES {
            assert_eq!(digest(hash, b"").len(), hash.output_len());
        }
    }

    #[test]
    fn check_digest_len_names_the_scheme() {
        for scheme in SignatureScheme::ALL {
            let Some(hash) = scheme.hash() else {
                // EdDSA takes the message, never a digest, whatever its length.
                for len in [0, 32, 64] {
                    let err = check_digest_len(scheme, &vec![0; len]).unwrap_err();
                    assert!(matches!(
                        err,
                        Error::InvalidInput(InvalidInput::DigestForMessageScheme { scheme: s })
                            if s == scheme
                    ));
                }
                continue;
            };
            let len = hash.output_len();
            assert!(check_digest_len(scheme, &vec![0; len]).is_ok());
            let err = check_digest_len(scheme, &vec![0; len + 1]).unwrap_err();
            assert!(matches!(
                err,
                Error::InvalidInput(InvalidInput::DigestLength { scheme: s, expected, got })
                    if s == scheme && expected == len && got == len + 1
            ));
        }
    }

    #[test]
    fn digest_info_prefixes_are_rfc_8017_bytes() {
        // RFC 8017 section 9.2, note 1, written out independently of the constants above.
        let expected = [
            (
                HashAlgorithm::Sha256,
                "3031300d060960864801650304020105000420",
            ),
            (
                HashAlgorithm::Sha384,
                "3041300d060960864801650304020205000430",
            ),
            (
                HashAlgorithm::Sha512,
                "3051300d060960864801650304020305000440",
            ),
        ];
        for (hash, prefix) in expected {
            assert_eq!(hex::encode(digest_info_prefix(hash)), prefix, "{hash}");
            let d = digest(hash, b"abc");
            let info = digest_info(hash, &d).unwrap();
            assert_eq!(hex::encode(&info), format!("{prefix}{}", hex::encode(&d)));
            // The outer SEQUENCE length covers everything after its 2-byte header.
            assert_eq!(usize::from(info[1]), info.len() - 2);
        }
    }

    #[test]
    fn digest_info_checks_the_digest_length() {
        for hash in HASHES {
            for len in [0, hash.output_len() - 1, hash.output_len() + 1, 1000] {
                let err = digest_info(hash, &vec![0xab; len]).unwrap_err();
                assert!(matches!(
                    err,
                    Error::InvalidInput(InvalidInput::DigestLength { got, .. }) if got == len
                ));
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // DigestInfo against the rsa crate's PKCS#1 v1.5 signatures
    // -----------------------------------------------------------------------------------------

    #[test]
    fn digest_info_is_what_rsa_crate_signatures_carry() {
        for key in keys() {
            let public = key.to_public_key();
            for hash in HASHES {
                let d = digest(hash, b"hardkey EMSA-PKCS1-v1_5 test");
                // The rsa crate's signature, opened with the public key, ends in our DigestInfo
                // after the 0x00 separator.
                let sig = key.sign(rsa_pkcs1(hash), &d).unwrap();
                let em = raw_public(&public, &sig);
                let t = digest_info(hash, &d).unwrap();
                assert_eq!(
                    em[em.len() - t.len()..],
                    t,
                    "{hash}, {} bits",
                    mod_bits(&public)
                );
                assert_eq!(em[em.len() - t.len() - 1], 0);
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // MGF1 and EMSA-PSS (encoding only: verification is the rsa crate's)
    // -----------------------------------------------------------------------------------------

    fn mgf1(hash: HashAlgorithm, seed: &[u8], len: usize) -> Vec<u8> {
        let mut mask = vec![0; len];
        mgf1_xor(hash, seed, &mut mask);
        mask
    }

    #[test]
    fn mgf1_known_answers() {
        // Made with Python's hashlib: Hash(seed || I2OSP(counter, 4)) concatenated, 80 bytes.
        let seed = b"hardkey mgf1 seed";
        let expected = [
            (
                HashAlgorithm::Sha256,
                "5c87a0382385749c68cab3826b0565c6d8335e8cd15ec781216d7e67fea7bae1\
                 85f10da0e334e05594d19acdc3e4a6aaed0714be806ab175adb0638a2a9833aa\
                 7bfe4cc93d5173676004571bad9defd0",
            ),
            (
                HashAlgorithm::Sha384,
                "b1e5ef0a62f7c8f8fc49031332bd944db98b2aa6a8f53eee9450c8affcecf6d9\
                 564a296728aaa040013233e29cd0774cbbdb4a8e295a1a1b4e662b643df01101\
                 da7fcea6fd68059a6154e6a917f5a51c",
            ),
            (
                HashAlgorithm::Sha512,
                "d0eea71534bc0083b773c5f25a6d14e2da345d03ab402730a132900da47fad65\
                 7261f43ba93015822a64afd035b3d49442c87af4cecb8443d718cb09ebe07c12\
                 0033b2d40d18423b2c4db1739820b6e5",
            ),
        ];
        for (hash, mask) in expected {
            assert_eq!(hex::encode(mgf1(hash, seed, 80)), mask, "{hash}");
            // Shorter masks are prefixes.
            for len in [0, 1, hash.output_len(), 79] {
                assert_eq!(mgf1(hash, seed, len), unhex(mask)[..len]);
            }
        }
    }

    #[test]
    fn pss_encoding_signs_for_rsa_crate() {
        for key in keys() {
            let public = key.to_public_key();
            let bits = mod_bits(&public);
            let k = public.size();
            for hash in HASHES {
                let h_len = hash.output_len();
                let d = digest(hash, b"hardkey EMSA-PSS test");
                let salt: Vec<u8> = (0..h_len as u8).collect();

                let em = emsa_pss_encode(hash, &d, &salt, bits).unwrap();
                let em_bits = bits - 1;
                assert_eq!(em.len(), em_bits.div_ceil(8));
                assert_eq!(em.last(), Some(&0xbc));
                // The leftmost 8 * emLen - emBits bits are zero.
                let unused = 8 * em.len() - em_bits;
                assert_eq!(u16::from(em[0]) >> (8 - unused), 0);

                let block = emsa_pss_encode_for_modulus(hash, &d, &salt, bits).unwrap();
                assert_eq!(block, left_pad(em.clone(), k));

                let sig = raw_private(key, &block);
                public
                    .verify(rsa_pss(hash, h_len), &d, &sig)
                    .unwrap_or_else(|e| panic!("{hash}, {bits} bits: {e}"));
                // The rsa crate with another digest or another salt length refuses it.
                let other = digest(hash, b"another message");
                assert!(public.verify(rsa_pss(hash, h_len), &other, &sig).is_err());
                assert!(public.verify(rsa_pss(hash, h_len + 1), &d, &sig).is_err());
            }
        }
    }

    #[test]
    fn pss_salt_limits() {
        for key in keys() {
            let bits = mod_bits(&key.to_public_key());
            let em_len = (bits - 1).div_ceil(8);
            for hash in HASHES {
                let d = digest(hash, b"salt limits");
                let max_salt = em_len - hash.output_len() - 2;
                assert!(emsa_pss_encode(hash, &d, &vec![0; max_salt + 1], bits).is_err());
                let em = emsa_pss_encode(hash, &d, &vec![0; max_salt], bits).unwrap();
                let sig = raw_private(key, &left_pad(em, key.size()));
                key.to_public_key()
                    .verify(rsa_pss(hash, max_salt), &d, &sig)
                    .unwrap();
            }
        }
    }

    /// `SHA-256("hardkey EMSA-PSS fixed vector")`.
    const FIXED_DIGEST: &str = "a69448332c1ed222821d78d7bf8751ec9cf4966ab9511289a4b2a452b843d874";

    #[test]
    fn pss_fixed_vector() {
        let d = unhex(FIXED_DIGEST);
        let hash = HashAlgorithm::Sha256;
        assert_eq!(d, digest(hash, b"hardkey EMSA-PSS fixed vector"));
        // Our encoding with salt 00 01 .. 1f, signed with the raw private operation. OpenSSL
        // (`pkeyutl -verify` with rsa_pss_saltlen:32 and with rsa_pss_saltlen:auto) accepted
        // this signature when the vector was recorded; RSA is deterministic, so it must not
        // change.
        let salt: Vec<u8> = (0..32).collect();
        let ours = raw_private(&KEY_2048, &emsa_pss_encode(hash, &d, &salt, 2048).unwrap());
        let expected = unhex(
            "5519c3149c8f972f934c1f9005510dbd0c2a2751bf4fb16594135b729254ef2b\
             429389a30bb8b50cb81ff8bff2b7b0c887d7d44387a3ce77ef8ca0f1c85739ae\
             1ddb1738c5e474a012022b3b18c0dbaa552d71d2d0aac11472ff7cc02f735601\
             0f8929035194073bb597528e1615caf3ed317412342519614775c29f968dedf6\
             659e75d19ae24c338798b7eff9aaf3b79cb68c04ea9bc90b62c21780129d8087\
             2b38b21cae574703e679c383267d327d1f5101a0e8c6ef7b093e3df96eb543f9\
             cd6cc391e29bb6db38089733ff0db4ccdf6b7e8e45ebbc75e29e18a3c9c73e03\
             a1286f3f17342950c5f695088372fcd3be0e9d49d1d5fad8300c613a746c788c",
        );
        assert_eq!(hex::encode(&ours), hex::encode(expected));
    }

    #[test]
    fn pss_random_salt() {
        for key in keys() {
            let public = key.to_public_key();
            let bits = mod_bits(&public);
            for hash in HASHES {
                let d = digest(hash, b"random salt");
                let a = emsa_pss_encode_random(hash, &d, bits).unwrap();
                let b = emsa_pss_encode_random(hash, &d, bits).unwrap();
                assert_ne!(a, b, "two encodings with fresh salts differ");
                for em in [a, b] {
                    // k bytes, ready for the raw private-key operation, also for 1537 bits.
                    assert_eq!(em.len(), public.size());
                    let sig = raw_private(key, &em);
                    public
                        .verify(rsa_pss(hash, hash.output_len()), &d, &sig)
                        .unwrap_or_else(|e| panic!("{hash}, {bits} bits: {e}"));
                }
                assert!(emsa_pss_encode_random(hash, &d[1..], bits).is_err());
            }
        }
    }

    #[test]
    fn pss_encode_rejects_bad_parameters() {
        let hash = HashAlgorithm::Sha256;
        let d = [7u8; 32];
        let salt = [9u8; 32];
        // emLen = hLen + sLen + 2 = 66 is the smallest that works: emBits 521..=528.
        assert_eq!(emsa_pss_encode(hash, &d, &salt, 522).unwrap().len(), 66);
        assert_eq!(emsa_pss_encode(hash, &d, &salt, 529).unwrap().len(), 66);
        for bits in [0, 1, 2, 9, 521, MAX_MODULUS_BITS + 1, usize::MAX] {
            let err = emsa_pss_encode(hash, &d, &salt, bits).unwrap_err();
            assert!(is_malformed(&err), "{bits}: {err}");
            assert!(emsa_pss_encode_random(hash, &d, bits).is_err());
        }
        assert!(emsa_pss_encode(hash, &d, &vec![0; 10_000], 2048).is_err());
        assert!(matches!(
            emsa_pss_encode(hash, &d[..31], &salt, 2048).unwrap_err(),
            Error::InvalidInput(InvalidInput::DigestLength {
                scheme: SignatureScheme::RsaPssSha256,
                ..
            })
        ));
    }

    // -----------------------------------------------------------------------------------------
    // ECDSA formats
    // -----------------------------------------------------------------------------------------

    /// The group orders n, big-endian (SEC 2 / FIPS 186-4 D.1.2).
    const P256_N: &str = "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";
    const P384_N: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf\
                          581a0db248b0a77aecec196accc52973";

    const CURVES: [(KeyAlgorithm, &str); 2] = [
        (KeyAlgorithm::EcP256, P256_N),
        (KeyAlgorithm::EcP384, P384_N),
    ];

    /// Whether a big-endian field-size value is a valid r or s: 0 < v < n. Equal-length
    /// big-endian byte strings compare like the numbers they are.
    fn in_range(v: &[u8], n: &[u8]) -> bool {
        v.iter().any(|&b| b != 0) && v < n
    }

    #[test]
    fn signature_form_is_checked_against_the_scheme_and_key() {
        let p256 = KeyAlgorithm::EcP256;
        let mut raw = vec![0x11u8; 64];
        raw[0] = 0x80;
        let der = ecdsa_raw_to_der(p256, &raw).unwrap();
        assert!(check_signature_form(SignatureScheme::EcdsaP256Sha256, p256, &der).is_ok());
        // Raw r || s where DER is due, DER for the other curve, ECDSA from an RSA key.
        assert!(check_signature_form(SignatureScheme::EcdsaP256Sha256, p256, &raw).is_err());
        let p384_der = ecdsa_raw_to_der(KeyAlgorithm::EcP384, &[0x22; 96]).unwrap();
        assert!(check_signature_form(SignatureScheme::EcdsaP256Sha256, p256, &p384_der).is_err());
        let rsa = KeyAlgorithm::Rsa2048;
        let err = check_signature_form(SignatureScheme::EcdsaP256Sha256, rsa, &der).unwrap_err();
        assert!(err.to_string().contains("not an EC key"), "{err}");
        // RSA: exactly the modulus length.
        for scheme in [
            SignatureScheme::RsaPssSha256,
            SignatureScheme::RsaPkcs1Sha384,
        ] {
            assert!(check_signature_form(scheme, rsa, &[1; 256]).is_ok());
            for len in [0, 255, 257, 512] {
                assert!(
                    check_signature_form(scheme, rsa, &vec![1; len]).is_err(),
                    "{len}"
                );
            }
            assert!(check_signature_form(scheme, KeyAlgorithm::Rsa3072, &[1; 384]).is_ok());
        }
    }

    #[test]
    fn ecdsa_field_lengths() {
        assert_eq!(ecdsa_field_len(KeyAlgorithm::EcP256), Some(32));
        assert_eq!(ecdsa_field_len(KeyAlgorithm::EcP384), Some(48));
        for alg in KeyAlgorithm::ALL {
            match alg.family() {
                crate::KeyFamily::Ec => assert_eq!(ecdsa_field_len(alg), Some(alg.bits() / 8)),
                _ => assert_eq!(ecdsa_field_len(alg), None),
            }
        }
    }

    #[test]
    fn ecdsa_der_fixed_vectors() {
        let p256 = KeyAlgorithm::EcP256;
        // r has its high bit set (needs a 0x00), s has three leading zero bytes (stripped).
        // The DER was checked with `openssl asn1parse`.
        let r = "8000000000000000000000000000000000000000000000000000000000000001";
        let s = "0000007f00000000000000000000000000000000000000000000000000000002";
        let der = "3042\
                   0221008000000000000000000000000000000000000000000000000000000000000001\
                   021d7f00000000000000000000000000000000000000000000000000000002";
        let raw = unhex(&format!("{r}{s}"));
        assert_eq!(hex::encode(ecdsa_raw_to_der(p256, &raw).unwrap()), der);
        assert_eq!(ecdsa_der_to_raw(p256, &unhex(der)).unwrap(), raw);
        // Stripping and padding at once: s = 00 00 00 ff .. 02 becomes 00 ff .. 02.
        let s_ff = "000000ff00000000000000000000000000000000000000000000000000000002";
        let der_ff = ecdsa_raw_to_der(p256, &unhex(&format!("{r}{s_ff}"))).unwrap();
        assert_eq!(hex::encode(&der_ff[..2]), "3043");
        assert_eq!(hex::encode(&der_ff[37..]), format!("021e00{}", &s_ff[6..]));
        // The same values on P-384 are padded to its 48-byte field.
        let wide = ecdsa_der_to_raw(KeyAlgorithm::EcP384, &unhex(der)).unwrap();
        assert_eq!(
            hex::encode(&wide),
            format!("{}{r}{}{s}", "00".repeat(16), "00".repeat(16))
        );

        // Smallest values: r = 1, s = 0x7f.
        let mut raw = vec![0u8; 64];
        raw[31] = 1;
        raw[63] = 0x7f;
        assert_eq!(
            hex::encode(ecdsa_raw_to_der(p256, &raw).unwrap()),
            "300602010102017f"
        );
        assert_eq!(
            ecdsa_der_to_raw(p256, &unhex("300602010102017f")).unwrap(),
            raw
        );
        // s = 0x80 needs a sign byte.
        raw[63] = 0x80;
        assert_eq!(
            hex::encode(ecdsa_raw_to_der(p256, &raw).unwrap()),
            "300702010102020080"
        );
    }

    #[test]
    fn ecdsa_r_and_s_must_be_below_the_curve_order() {
        for (curve, n) in CURVES {
            let n = unhex(n);
            let field = n.len();
            let mut n_minus_1 = n.clone();
            *n_minus_1.last_mut().unwrap() -= 1;
            let one = left_pad(vec![1], field);
            for (r, s, ok) in [
                (&n_minus_1, &n_minus_1, true),
                (&one, &one, true),
                (&n, &one, false),
                (&one, &n, false),
                (&vec![0xff; field], &one, false),
                (&vec![0; field], &one, false),
                (&one, &vec![0; field], false),
            ] {
                let raw = [r.as_slice(), s.as_slice()].concat();
                let der = ecdsa_raw_to_der(curve, &raw);
                assert_eq!(
                    der.is_ok(),
                    ok,
                    "{curve} r={} s={}",
                    hex::encode(r),
                    hex::encode(s)
                );
                if let Ok(der) = der {
                    assert_eq!(ecdsa_der_to_raw(curve, &der).unwrap(), raw);
                }
            }
            // DER of an out-of-range value (r = n) is refused too.
            let mut der = vec![0x30, 0, 0x02];
            der.push(u8::try_from(field + 1).unwrap());
            der.push(0);
            der.extend_from_slice(&n);
            der.extend_from_slice(&[0x02, 0x01, 0x01]);
            der[1] = u8::try_from(der.len() - 2).unwrap();
            let err = ecdsa_der_to_raw(curve, &der).unwrap_err();
            assert!(is_malformed(&err), "{err}");
            assert!(err.to_string().contains("curve order"), "{err}");
        }
    }

    #[test]
    fn ecdsa_raw_to_der_rejects_bad_input() {
        let p256 = KeyAlgorithm::EcP256;
        let ok = vec![0x11u8; 64];
        assert!(ecdsa_raw_to_der(p256, &ok).is_ok());
        for bad in [
            vec![],
            vec![1u8],
            vec![1u8; 63],
            vec![1u8; 65],
            vec![1u8; 96],
            vec![1u8; 1000],
        ] {
            let err = ecdsa_raw_to_der(p256, &bad).unwrap_err();
            assert!(is_malformed(&err), "{err}");
        }
        assert!(ecdsa_raw_to_der(KeyAlgorithm::EcP384, &ok).is_err());
        for rsa in [KeyAlgorithm::Rsa2048, KeyAlgorithm::Rsa4096] {
            let err = ecdsa_raw_to_der(rsa, &ok).unwrap_err();
            assert!(err.to_string().contains("not an EC key"), "{err}");
            assert!(ecdsa_der_to_raw(rsa, &unhex("3006020101020102")).is_err());
        }
    }

    #[test]
    fn ecdsa_der_to_raw_is_strict() {
        let good = "3006020101020102";
        let mut raw = vec![0u8; 64];
        raw[31] = 1;
        raw[63] = 2;
        assert_eq!(
            ecdsa_der_to_raw(KeyAlgorithm::EcP256, &unhex(good)).unwrap(),
            raw
        );
        let cases = [
            ("", "empty input"),
            ("30", "truncated: no length"),
            ("3006020101", "truncated contents"),
            ("300602010102010200", "trailing bytes after the SEQUENCE"),
            ("3106020101020102", "SET instead of SEQUENCE"),
            ("0406020101020102", "OCTET STRING instead of SEQUENCE"),
            ("3006030101020102", "BIT STRING instead of INTEGER"),
            ("300702020001020102", "non-minimal INTEGER r"),
            ("300702010102020002", "non-minimal INTEGER s"),
            ("3006020181020102", "negative r"),
            ("30060201010201ff", "negative s"),
            ("3006020100020102", "zero r"),
            ("3006020101020100", "zero s"),
            ("30050200020102", "empty INTEGER"),
            ("3003020101", "missing s"),
            ("3009020101020102020103", "three INTEGERs"),
            ("3080020101020102 0000", "indefinite length"),
            (
                "308106020101020102",
                "long-form length where short form would do",
            ),
            ("30820006020101020102", "two-byte length for a small value"),
            ("3007028101 01020102", "long-form INTEGER length below 128"),
            ("308400000006020101020102", "four-byte length"),
            ("3007020101020102", "SEQUENCE length longer than contents"),
            ("3005020101020102", "SEQUENCE length shorter than contents"),
        ];
        for (curve, _) in CURVES {
            for (der, why) in cases {
                let bytes = unhex(&der.replace(' ', ""));
                let err = ecdsa_der_to_raw(curve, &bytes).unwrap_err();
                assert!(is_malformed(&err), "{curve}, {why}: {err}");
            }
        }
        // A P-384 signature's integers are longer than P-256's field.
        let wide = ecdsa_raw_to_der(KeyAlgorithm::EcP384, &[0x7fu8; 96]).unwrap();
        assert!(ecdsa_der_to_raw(KeyAlgorithm::EcP256, &wide).is_err());
        // A 0x00 sign byte does not count towards the field length.
        let raw = [[0x80u8].as_slice(), &[0x01; 31], &[0x7f; 32]].concat();
        let p256_der = ecdsa_raw_to_der(KeyAlgorithm::EcP256, &raw).unwrap();
        assert_eq!(p256_der[3], 0x21, "r carries a sign byte");
        assert_eq!(
            ecdsa_der_to_raw(KeyAlgorithm::EcP256, &p256_der).unwrap(),
            raw
        );
    }

    #[test]
    fn ecdsa_round_trip_random_values() {
        let mut rng = StdRng::seed_from_u64(0xecd5_a000);
        for (curve, n) in CURVES {
            let n = unhex(n);
            let field = n.len();
            for _ in 0..1000 {
                let mut raw = vec![0u8; 2 * field];
                rng.fill_bytes(&mut raw);
                // Exercise leading zeros, set high bits and values at or above n.
                for half in raw.chunks_mut(field) {
                    match rng.gen_range(0..5) {
                        0 => {
                            let zeros = rng.gen_range(0..=field);
                            half[..zeros].fill(0);
                        }
                        1 => half.copy_from_slice(&n),
                        2 => half[..field / 2].fill(0xff),
                        _ => {}
                    }
                }
                let valid = raw.chunks(field).all(|half| in_range(half, &n));
                let der = ecdsa_raw_to_der(curve, &raw);
                assert_eq!(der.is_ok(), valid, "{curve} {}", hex::encode(&raw));
                if let Ok(der) = der {
                    assert_eq!(ecdsa_der_to_raw(curve, &der).unwrap(), raw);
                }
            }
        }
    }

    #[test]
    fn ecdsa_matches_p256_and_p384_signers() {
        use p256::ecdsa::signature::hazmat::PrehashSigner;

        let mut rng = StdRng::seed_from_u64(0x9256_9384);
        for i in 0..64 {
            let msg = format!("message {i}");

            let key = p256::ecdsa::SigningKey::random(&mut rng);
            let d = digest(HashAlgorithm::Sha256, msg.as_bytes());
            let sig: p256::ecdsa::Signature = key.sign_prehash(&d).unwrap();
            let raw = sig.to_bytes();
            let der = ecdsa_raw_to_der(KeyAlgorithm::EcP256, &raw).unwrap();
            assert_eq!(der, sig.to_der().as_bytes());
            assert_eq!(
                ecdsa_der_to_raw(KeyAlgorithm::EcP256, &der).unwrap(),
                &raw[..]
            );

            let key = p384::ecdsa::SigningKey::random(&mut rng);
            let d = digest(HashAlgorithm::Sha384, msg.as_bytes());
            let sig: p384::ecdsa::Signature = key.sign_prehash(&d).unwrap();
            let raw = sig.to_bytes();
            let der = ecdsa_raw_to_der(KeyAlgorithm::EcP384, &raw).unwrap();
            assert_eq!(der, sig.to_der().as_bytes());
            assert_eq!(
                ecdsa_der_to_raw(KeyAlgorithm::EcP384, &der).unwrap(),
                &raw[..]
            );
        }
    }

    #[test]
    fn ecdsa_der_to_raw_survives_mutations() {
        let mut rng = StdRng::seed_from_u64(0xf022);
        let mut seeds = vec![(KeyAlgorithm::EcP256, unhex("3006020101020102"))];
        for (curve, _) in CURVES {
            let field = ecdsa_field_len(curve).unwrap();
            let mut raw = vec![0x40u8; 2 * field];
            rng.fill_bytes(&mut raw[1..field]);
            raw[0] = 0x80;
            seeds.push((curve, ecdsa_raw_to_der(curve, &raw).unwrap()));
        }
        for (curve, der) in &seeds {
            let mut inputs = Vec::new();
            for len in 0..der.len() {
                inputs.push(der[..len].to_vec());
            }
            for i in 0..der.len() {
                for v in 0..=255u8 {
                    let mut m = der.clone();
                    m[i] = v;
                    inputs.push(m);
                }
                let mut removed = der.clone();
                removed.remove(i);
                inputs.push(removed);
                let mut inserted = der.clone();
                inserted.insert(i, rng.r#gen());
                inputs.push(inserted);
            }
            for input in inputs {
                // Strict DER means anything accepted is the canonical encoding of its value.
                if let Ok(raw) = ecdsa_der_to_raw(*curve, &input) {
                    assert_eq!(raw.len(), 2 * ecdsa_field_len(*curve).unwrap());
                    assert_eq!(ecdsa_raw_to_der(*curve, &raw).unwrap(), input);
                }
            }
        }
    }

    #[test]
    fn oaep_decode_matches_the_rsa_crate() {
        use rsa::traits::PublicKeyParts;
        let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap();
        let public = key.to_public_key();
        for message in [&b""[..], b"x", &[0xAB; 48], &[0x01; 190]] {
            let ct = public
                .encrypt(
                    &mut rand_core::OsRng,
                    rsa::Oaep::new::<sha2::Sha256>(),
                    message,
                )
                .unwrap();
            // Raw RSA private operation, as CKM_RSA_X_509 gives it: EM left-padded to k bytes.
            let m = rsa::BigUint::from_bytes_be(&ct)
                .modpow(key.d(), key.n())
                .to_bytes_be();
            let mut em = vec![0u8; key.size() - m.len()];
            em.extend_from_slice(&m);
            let plain = oaep_decode(HashAlgorithm::Sha256, &em).unwrap();
            assert_eq!(plain.as_slice(), message);
            // Any flipped byte fails, with one and the same error.
            for i in [0, 1, 40, 200, em.len() - 1] {
                let mut bad = em.clone();
                bad[i] ^= 0x40;
                let err = oaep_decode(HashAlgorithm::Sha256, &bad).unwrap_err();
                assert_eq!(
                    err.to_string(),
                    "malformed RSA-OAEP ciphertext: decryption error"
                );
            }
        }
        assert!(oaep_decode(HashAlgorithm::Sha256, &[0; 10]).is_err());
    }

    #[test]
    fn pkcs1v15_decrypt_decode_takes_good_blocks_and_refuses_the_rest() {
        let block = |ps: &[u8], m: &[u8]| {
            let mut em = vec![0x00, 0x02];
            em.extend_from_slice(ps);
            em.push(0x00);
            em.extend_from_slice(m);
            em
        };
        let m = [0x03, 0x03, 0xaa, 0x00, 0x01];
        let em = block(&[0x11; 8], &m);
        assert_eq!(pkcs1v15_decrypt_decode(&em).unwrap().as_slice(), m);
        let mut long = block(&[0x5a; 200], &[0x42; 48]);
        assert_eq!(
            pkcs1v15_decrypt_decode(&long).unwrap().as_slice(),
            [0x42; 48]
        );
        // An empty message is valid.
        assert!(
            pkcs1v15_decrypt_decode(&block(&[1; 9], &[]))
                .unwrap()
                .is_empty()
        );
        let refused = [
            block(&[0x11; 7], &m),                  // padding shorter than 8 bytes
            [&[0x01, 0x02][..], &em[2..]].concat(), // first byte not 0
            [&[0x00, 0x01][..], &em[2..]].concat(), // block type 1, not 2
            vec![
                0x00, 0x02, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11,
            ], // no 00
            vec![0x00, 0x02, 0x00],                 // too short
        ];
        for bad in refused {
            let err = pkcs1v15_decrypt_decode(&bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                pkcs1v15_decrypt_decode(&[]).unwrap_err().to_string()
            );
        }
        long[1] = 0x03;
        assert!(pkcs1v15_decrypt_decode(&long).is_err());
    }

    #[test]
    fn pkcs1v15_decrypt_decode_inverts_the_rsa_crate() {
        use rsa::traits::PublicKeyParts;
        let mut rng = StdRng::seed_from_u64(7);
        let key = RsaPrivateKey::from_pkcs8_pem(KEY_2048_PEM).unwrap();
        let public = RsaPublicKey::from(&key);
        for len in [0usize, 1, 48, 245] {
            let m: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
            let ct = public.encrypt(&mut rng, rsa::Pkcs1v15Encrypt, &m).unwrap();
            // Raw RSA: c^d mod n, left-padded to k bytes.
            let raw = BigUint::from_bytes_be(&ct)
                .modpow(key.d(), key.n())
                .to_bytes_be();
            let mut em = vec![0u8; public.size() - raw.len()];
            em.extend_from_slice(&raw);
            assert_eq!(
                pkcs1v15_decrypt_decode(&em).unwrap().as_slice(),
                m.as_slice()
            );
        }
    }
}
