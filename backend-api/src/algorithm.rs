//! Key algorithms, signature schemes and decryption schemes, with their TLS and X.509 names.
//!
//! Every mapping here is an exhaustive `match`: adding a scheme fails to compile until each
//! table (TLS code point, X.509 AlgorithmIdentifier, hash, key compatibility) knows it.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, InvalidInput};

/// A hash function used by a signature scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum HashAlgorithm {
    /// SHA-256 (32-byte output).
    Sha256,
    /// SHA-384 (48-byte output).
    Sha384,
    /// SHA-512 (64-byte output).
    Sha512,
}

impl HashAlgorithm {
    /// Length of the digest in bytes.
    pub const fn output_len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    /// The short name (`sha256`, `sha384`, `sha512`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    /// The dotted OID of the hash function (NIST, 2.16.840.1.101.3.4.2.x).
    pub const fn oid(self) -> &'static str {
        match self {
            Self::Sha256 => "2.16.840.1.101.3.4.2.1",
            Self::Sha384 => "2.16.840.1.101.3.4.2.2",
            Self::Sha512 => "2.16.840.1.101.3.4.2.3",
        }
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The family of a key: what kind of mathematics the device performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyFamily {
    /// RSA keys.
    Rsa,
    /// Elliptic-curve keys over a NIST prime curve.
    Ec,
    /// Edwards-curve keys (Ed25519, Ed448): EdDSA signs the whole message, with no pre-hash.
    EdDsa,
}

/// A private key's algorithm and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// RSA with a 2048-bit modulus.
    Rsa2048,
    /// RSA with a 3072-bit modulus.
    Rsa3072,
    /// RSA with a 4096-bit modulus.
    Rsa4096,
    /// ECDSA on NIST P-256 (secp256r1).
    EcP256,
    /// ECDSA on NIST P-384 (secp384r1).
    EcP384,
    /// EdDSA on edwards25519 (RFC 8032 Ed25519).
    Ed25519,
    /// EdDSA on edwards448 (RFC 8032 Ed448).
    Ed448,
}

impl KeyAlgorithm {
    /// Every algorithm hardkey knows, smallest first within each family.
    pub const ALL: [KeyAlgorithm; 7] = [
        Self::EcP256,
        Self::EcP384,
        Self::Ed25519,
        Self::Ed448,
        Self::Rsa2048,
        Self::Rsa3072,
        Self::Rsa4096,
    ];

    /// The algorithm's family.
    pub const fn family(self) -> KeyFamily {
        match self {
            Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096 => KeyFamily::Rsa,
            Self::EcP256 | Self::EcP384 => KeyFamily::Ec,
            Self::Ed25519 | Self::Ed448 => KeyFamily::EdDsa,
        }
    }

    /// Modulus size for RSA, field size for EC, in bits; for EdDSA the size of the encoded
    /// public key in bits (256 for Ed25519, 456 for Ed448: what PKCS#11 tokens report as the
    /// key size of `CKM_EDDSA`).
    pub const fn bits(self) -> usize {
        match self {
            Self::Rsa2048 => 2048,
            Self::Rsa3072 => 3072,
            Self::Rsa4096 => 4096,
            Self::EcP256 => 256,
            Self::EcP384 => 384,
            Self::Ed25519 => 256,
            Self::Ed448 => 456,
        }
    }

    /// The RSA algorithm with this modulus size, if hardkey supports it.
    pub const fn rsa_with_bits(bits: usize) -> Option<Self> {
        match bits {
            2048 => Some(Self::Rsa2048),
            3072 => Some(Self::Rsa3072),
            4096 => Some(Self::Rsa4096),
            _ => None,
        }
    }

    /// The command-line name (`p256`, `p384`, `ed25519`, `ed448`, `rsa2048`, `rsa3072`,
    /// `rsa4096`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ed25519 => "ed25519",
            Self::Ed448 => "ed448",
            Self::Rsa2048 => "rsa2048",
            Self::Rsa3072 => "rsa3072",
            Self::Rsa4096 => "rsa4096",
            Self::EcP256 => "p256",
            Self::EcP384 => "p384",
        }
    }

    /// The dotted OID of the named curve, for EC keys.
    pub const fn curve_oid(self) -> Option<&'static str> {
        match self {
            Self::EcP256 => Some("1.2.840.10045.3.1.7"),
            Self::EcP384 => Some("1.3.132.0.34"),
            Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096 | Self::Ed25519 | Self::Ed448 => None,
        }
    }

    /// The dotted OID of an Edwards-curve key (RFC 8410: `id-Ed25519`, `id-Ed448`), which is
    /// both its SubjectPublicKeyInfo algorithm and its signature algorithm, without parameters.
    pub const fn edwards_oid(self) -> Option<&'static str> {
        match self {
            Self::Ed25519 => Some("1.3.101.112"),
            Self::Ed448 => Some("1.3.101.113"),
            Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096 | Self::EcP256 | Self::EcP384 => None,
        }
    }

    /// The length of an Edwards-curve public key and of half a signature, in bytes (32 for
    /// Ed25519, 57 for Ed448; RFC 8032).
    pub const fn edwards_key_len(self) -> Option<usize> {
        match self {
            Self::Ed25519 => Some(32),
            Self::Ed448 => Some(57),
            Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096 | Self::EcP256 | Self::EcP384 => None,
        }
    }

    /// The signature schemes a key of this algorithm can produce, preferred first.
    pub const fn signature_schemes(self) -> &'static [SignatureScheme] {
        use SignatureScheme::*;
        match self {
            Self::EcP256 => &[EcdsaP256Sha256],
            Self::EcP384 => &[EcdsaP384Sha384],
            Self::Ed25519 => &[SignatureScheme::Ed25519],
            Self::Ed448 => &[SignatureScheme::Ed448],
            Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096 => &[
                RsaPssSha256,
                RsaPssSha384,
                RsaPssSha512,
                RsaPkcs1Sha256,
                RsaPkcs1Sha384,
                RsaPkcs1Sha512,
            ],
        }
    }

    /// The scheme to sign with when the caller names none: ECDSA with SHA-256 for P-256, ECDSA
    /// with SHA-384 for P-384, the key's own EdDSA for Ed25519 and Ed448, and RSA PKCS#1 v1.5 with SHA-256 for RSA (what `openssl dgst
    /// -sha256 -sign` and `openssl req` use, and what every verifier accepts).
    pub const fn default_signature_scheme(self) -> SignatureScheme {
        match self {
            Self::EcP256 => SignatureScheme::EcdsaP256Sha256,
            Self::EcP384 => SignatureScheme::EcdsaP384Sha384,
            Self::Ed25519 => SignatureScheme::Ed25519,
            Self::Ed448 => SignatureScheme::Ed448,
            Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096 => SignatureScheme::RsaPkcs1Sha256,
        }
    }

    /// The decryption schemes a key of this algorithm can serve by default (the legacy
    /// PKCS#1 v1.5 scheme is never included: it needs [`KeyPolicy::allow_legacy_rsa_pkcs1v15_decrypt`]).
    ///
    /// [`KeyPolicy::allow_legacy_rsa_pkcs1v15_decrypt`]: crate::KeyPolicy::allow_legacy_rsa_pkcs1v15_decrypt
    pub const fn decrypt_schemes(self) -> &'static [DecryptScheme] {
        match self.family() {
            KeyFamily::Rsa => &[DecryptScheme::RsaOaepSha256],
            KeyFamily::Ec | KeyFamily::EdDsa => &[],
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let lower = s.trim().to_ascii_lowercase().replace(['-', '_'], "");
        let alg = match lower.as_str() {
            "p256" | "ecp256" | "secp256r1" | "prime256v1" | "nistp256" => Self::EcP256,
            "p384" | "ecp384" | "secp384r1" | "nistp384" => Self::EcP384,
            "ed25519" | "edwards25519" => Self::Ed25519,
            "ed448" | "edwards448" => Self::Ed448,
            "rsa2048" | "rsa" => Self::Rsa2048,
            "rsa3072" => Self::Rsa3072,
            "rsa4096" => Self::Rsa4096,
            _ => {
                return Err(Error::InvalidInput(InvalidInput::UnknownName {
                    what: "key algorithm",
                    given: s.to_owned(),
                    expected: "p256, p384, ed25519, ed448, rsa2048, rsa3072 or rsa4096",
                }));
            }
        };
        Ok(alg)
    }
}

/// How a signature scheme pads or encodes before the private-key operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SignatureKind {
    /// RSASSA-PKCS1-v1_5 (RFC 8017 section 8.2).
    RsaPkcs1v15,
    /// RSASSA-PSS with MGF1 of the same hash and salt length equal to the hash length.
    RsaPss,
    /// ECDSA (FIPS 186-5); signatures are returned DER-encoded.
    Ecdsa,
    /// Pure EdDSA (RFC 8032): the device signs the whole message (no pre-hash); signatures
    /// are the raw `R || S` (64 bytes for Ed25519, 114 for Ed448).
    EdDsa,
}

/// A signature scheme: key type, padding and hash, as TLS 1.3 and X.509 name them.
///
/// RSA-PSS always means salt length = hash length and MGF1 with the same hash, which is what
/// TLS 1.3 (`rsa_pss_rsae_*`) and the common X.509 profiles require.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum SignatureScheme {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (`rsa_pkcs1_sha256`).
    RsaPkcs1Sha256,
    /// RSASSA-PKCS1-v1_5 with SHA-384 (`rsa_pkcs1_sha384`).
    RsaPkcs1Sha384,
    /// RSASSA-PKCS1-v1_5 with SHA-512 (`rsa_pkcs1_sha512`).
    RsaPkcs1Sha512,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256, 32-byte salt (`rsa_pss_rsae_sha256`).
    RsaPssSha256,
    /// RSASSA-PSS with SHA-384, MGF1-SHA-384, 48-byte salt (`rsa_pss_rsae_sha384`).
    RsaPssSha384,
    /// RSASSA-PSS with SHA-512, MGF1-SHA-512, 64-byte salt (`rsa_pss_rsae_sha512`).
    RsaPssSha512,
    /// ECDSA on P-256 with SHA-256 (`ecdsa_secp256r1_sha256`).
    EcdsaP256Sha256,
    /// ECDSA on P-384 with SHA-384 (`ecdsa_secp384r1_sha384`).
    EcdsaP384Sha384,
    /// Pure Ed25519 (`ed25519`, RFC 8032 section 5.1): signs the message itself.
    Ed25519,
    /// Pure Ed448 (`ed448`, RFC 8032 section 5.2, empty context): signs the message itself.
    Ed448,
}

impl SignatureScheme {
    /// Every scheme hardkey knows.
    pub const ALL: [SignatureScheme; 10] = [
        Self::RsaPkcs1Sha256,
        Self::RsaPkcs1Sha384,
        Self::RsaPkcs1Sha512,
        Self::RsaPssSha256,
        Self::RsaPssSha384,
        Self::RsaPssSha512,
        Self::EcdsaP256Sha256,
        Self::EcdsaP384Sha384,
        Self::Ed25519,
        Self::Ed448,
    ];

    /// The hash the caller digests the message with before the device signs the digest, or
    /// `None` for EdDSA, whose device must see the whole message
    /// ([`PrivateKey::sign`](crate::PrivateKey::sign) sends it whole).
    pub const fn hash(self) -> Option<HashAlgorithm> {
        match self {
            Self::RsaPkcs1Sha256 | Self::RsaPssSha256 | Self::EcdsaP256Sha256 => {
                Some(HashAlgorithm::Sha256)
            }
            Self::RsaPkcs1Sha384 | Self::RsaPssSha384 | Self::EcdsaP384Sha384 => {
                Some(HashAlgorithm::Sha384)
            }
            Self::RsaPkcs1Sha512 | Self::RsaPssSha512 => Some(HashAlgorithm::Sha512),
            Self::Ed25519 | Self::Ed448 => None,
        }
    }

    /// The padding / signature kind.
    pub const fn kind(self) -> SignatureKind {
        match self {
            Self::RsaPkcs1Sha256 | Self::RsaPkcs1Sha384 | Self::RsaPkcs1Sha512 => {
                SignatureKind::RsaPkcs1v15
            }
            Self::RsaPssSha256 | Self::RsaPssSha384 | Self::RsaPssSha512 => SignatureKind::RsaPss,
            Self::EcdsaP256Sha256 | Self::EcdsaP384Sha384 => SignatureKind::Ecdsa,
            Self::Ed25519 | Self::Ed448 => SignatureKind::EdDsa,
        }
    }

    /// The curve of the keys an ECDSA scheme signs with (TLS 1.3 ties each ECDSA scheme to one
    /// curve), or `None` for RSA schemes.
    pub const fn ecdsa_curve(self) -> Option<KeyAlgorithm> {
        match self {
            Self::EcdsaP256Sha256 => Some(KeyAlgorithm::EcP256),
            Self::EcdsaP384Sha384 => Some(KeyAlgorithm::EcP384),
            Self::RsaPkcs1Sha256
            | Self::RsaPkcs1Sha384
            | Self::RsaPkcs1Sha512
            | Self::RsaPssSha256
            | Self::RsaPssSha384
            | Self::RsaPssSha512
            | Self::Ed25519
            | Self::Ed448 => None,
        }
    }

    /// The Edwards-curve key an EdDSA scheme signs with, or `None` for RSA and ECDSA.
    pub const fn eddsa_key(self) -> Option<KeyAlgorithm> {
        match self {
            Self::Ed25519 => Some(KeyAlgorithm::Ed25519),
            Self::Ed448 => Some(KeyAlgorithm::Ed448),
            Self::RsaPkcs1Sha256
            | Self::RsaPkcs1Sha384
            | Self::RsaPkcs1Sha512
            | Self::RsaPssSha256
            | Self::RsaPssSha384
            | Self::RsaPssSha512
            | Self::EcdsaP256Sha256
            | Self::EcdsaP384Sha384 => None,
        }
    }

    /// PSS salt length in bytes (= hash length), or `None` for non-PSS schemes.
    pub const fn pss_salt_len(self) -> Option<usize> {
        match (self.kind(), self.hash()) {
            (SignatureKind::RsaPss, Some(hash)) => Some(hash.output_len()),
            _ => None,
        }
    }

    /// The TLS `SignatureScheme` code point (RFC 8446 section 4.2.3).
    pub const fn tls_code_point(self) -> u16 {
        match self {
            Self::RsaPkcs1Sha256 => 0x0401,
            Self::RsaPkcs1Sha384 => 0x0501,
            Self::RsaPkcs1Sha512 => 0x0601,
            Self::EcdsaP256Sha256 => 0x0403,
            Self::EcdsaP384Sha384 => 0x0503,
            Self::RsaPssSha256 => 0x0804,
            Self::RsaPssSha384 => 0x0805,
            Self::RsaPssSha512 => 0x0806,
            Self::Ed25519 => 0x0807,
            Self::Ed448 => 0x0808,
        }
    }

    /// The scheme for a TLS code point, if hardkey supports it.
    pub fn from_tls_code_point(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.tls_code_point() == code)
    }

    /// The TLS name (`rsa_pss_rsae_sha256`, `ecdsa_secp256r1_sha256`, ...).
    pub const fn tls_name(self) -> &'static str {
        match self {
            Self::RsaPkcs1Sha256 => "rsa_pkcs1_sha256",
            Self::RsaPkcs1Sha384 => "rsa_pkcs1_sha384",
            Self::RsaPkcs1Sha512 => "rsa_pkcs1_sha512",
            Self::EcdsaP256Sha256 => "ecdsa_secp256r1_sha256",
            Self::EcdsaP384Sha384 => "ecdsa_secp384r1_sha384",
            Self::RsaPssSha256 => "rsa_pss_rsae_sha256",
            Self::RsaPssSha384 => "rsa_pss_rsae_sha384",
            Self::RsaPssSha512 => "rsa_pss_rsae_sha512",
            Self::Ed25519 => "ed25519",
            Self::Ed448 => "ed448",
        }
    }

    /// hardkey's command-line name (`rsa-pkcs1-sha256`, `rsa-pss-sha256`, `ecdsa-p256-sha256`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Self::RsaPkcs1Sha256 => "rsa-pkcs1-sha256",
            Self::RsaPkcs1Sha384 => "rsa-pkcs1-sha384",
            Self::RsaPkcs1Sha512 => "rsa-pkcs1-sha512",
            Self::RsaPssSha256 => "rsa-pss-sha256",
            Self::RsaPssSha384 => "rsa-pss-sha384",
            Self::RsaPssSha512 => "rsa-pss-sha512",
            Self::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            Self::EcdsaP384Sha384 => "ecdsa-p384-sha384",
            Self::Ed25519 => "ed25519",
            Self::Ed448 => "ed448",
        }
    }

    /// The complete DER encoding of the X.509 `AlgorithmIdentifier` for signatures made with
    /// this scheme (the `signatureAlgorithm` of a certificate or CSR).
    ///
    /// RSA PKCS#1 v1.5 carries an explicit NULL parameter (RFC 4055); ECDSA carries none
    /// (RFC 5758), nor does EdDSA (RFC 8410); RSA-PSS carries `RSASSA-PSS-params` with the hash, MGF1 of the same hash and
    /// the salt length, in the form OpenSSL and rustls-webpki use.
    pub const fn algorithm_identifier_der(self) -> &'static [u8] {
        match self {
            Self::RsaPkcs1Sha256 => &alg_id::RSA_PKCS1_SHA256,
            Self::RsaPkcs1Sha384 => &alg_id::RSA_PKCS1_SHA384,
            Self::RsaPkcs1Sha512 => &alg_id::RSA_PKCS1_SHA512,
            Self::RsaPssSha256 => &alg_id::RSA_PSS_SHA256,
            Self::RsaPssSha384 => &alg_id::RSA_PSS_SHA384,
            Self::RsaPssSha512 => &alg_id::RSA_PSS_SHA512,
            Self::EcdsaP256Sha256 => &alg_id::ECDSA_SHA256,
            Self::EcdsaP384Sha384 => &alg_id::ECDSA_SHA384,
            Self::Ed25519 => &alg_id::ED25519,
            Self::Ed448 => &alg_id::ED448,
        }
    }

    /// The dotted OID of the signature algorithm (without parameters).
    pub const fn signature_oid(self) -> &'static str {
        match self {
            Self::RsaPkcs1Sha256 => "1.2.840.113549.1.1.11",
            Self::RsaPkcs1Sha384 => "1.2.840.113549.1.1.12",
            Self::RsaPkcs1Sha512 => "1.2.840.113549.1.1.13",
            Self::RsaPssSha256 | Self::RsaPssSha384 | Self::RsaPssSha512 => "1.2.840.113549.1.1.10",
            Self::EcdsaP256Sha256 => "1.2.840.10045.4.3.2",
            Self::EcdsaP384Sha384 => "1.2.840.10045.4.3.3",
            Self::Ed25519 => "1.3.101.112",
            Self::Ed448 => "1.3.101.113",
        }
    }

    /// Whether a key of `alg` can make signatures of this scheme.
    pub fn is_compatible_with(self, alg: KeyAlgorithm) -> bool {
        alg.signature_schemes().contains(&self)
    }
}

impl fmt::Display for SignatureScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SignatureScheme {
    type Err = Error;

    /// Accepts hardkey's names (`rsa-pss-sha256`) and the TLS names (`rsa_pss_rsae_sha256`).
    fn from_str(s: &str) -> Result<Self, Error> {
        let t = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|scheme| scheme.name() == t || scheme.tls_name() == t)
            .ok_or_else(|| {
                Error::InvalidInput(InvalidInput::UnknownName {
                    what: "signature scheme",
                    given: s.to_owned(),
                    expected: "rsa-pkcs1-sha256|384|512, rsa-pss-sha256|384|512, \
                               ecdsa-p256-sha256, ecdsa-p384-sha384, ed25519 or ed448",
                })
            })
    }
}

/// An RSA decryption scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DecryptScheme {
    /// RSAES-OAEP with SHA-256, MGF1-SHA-256 and an empty label.
    RsaOaepSha256,
    /// RSAES-PKCS1-v1_5: **legacy**, for TLS 1.2 RSA key exchange only.
    ///
    /// PKCS#1 v1.5 decryption is a padding oracle (Bleichenbacher 1998, ROBOT 2017) whenever
    /// its failures are observable. Keys refuse it unless they were opened with
    /// [`KeyPolicy::allow_legacy_rsa_pkcs1v15_decrypt`](crate::KeyPolicy::allow_legacy_rsa_pkcs1v15_decrypt).
    RsaPkcs1v15Legacy,
}

impl DecryptScheme {
    /// Every decryption scheme hardkey knows.
    pub const ALL: [DecryptScheme; 2] = [Self::RsaOaepSha256, Self::RsaPkcs1v15Legacy];

    /// hardkey's name (`rsa-oaep-sha256`, `rsa-pkcs1v15-legacy`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::RsaOaepSha256 => "rsa-oaep-sha256",
            Self::RsaPkcs1v15Legacy => "rsa-pkcs1v15-legacy",
        }
    }

    /// Whether a key of `alg` can decrypt with this scheme (policy aside).
    pub const fn is_compatible_with(self, alg: KeyAlgorithm) -> bool {
        matches!(alg.family(), KeyFamily::Rsa)
    }
}

impl fmt::Display for DecryptScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DecryptScheme {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let t = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|d| d.name() == t)
            .ok_or_else(|| {
                Error::InvalidInput(InvalidInput::UnknownName {
                    what: "decryption scheme",
                    given: s.to_owned(),
                    expected: "rsa-oaep-sha256 or rsa-pkcs1v15-legacy",
                })
            })
    }
}

/// DER `AlgorithmIdentifier` constants (complete SEQUENCEs).
mod alg_id {
    pub(super) const RSA_PKCS1_SHA256: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00,
    ];
    pub(super) const RSA_PKCS1_SHA384: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c, 0x05, 0x00,
    ];
    pub(super) const RSA_PKCS1_SHA512: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d, 0x05, 0x00,
    ];
    pub(super) const ECDSA_SHA256: [u8; 12] = [
        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
    ];
    pub(super) const ECDSA_SHA384: [u8; 12] = [
        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
    ];
    /// id-Ed25519 (1.3.101.112), parameters absent (RFC 8410 section 3).
    pub(super) const ED25519: [u8; 7] = [0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];
    /// id-Ed448 (1.3.101.113), parameters absent (RFC 8410 section 3).
    pub(super) const ED448: [u8; 7] = [0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x71];

    /// id-RSASSA-PSS { hash [0], mgf1(hash) [1], saltLength [2] }, `h` = last byte of the
    /// NIST hash OID (1 = SHA-256, 2 = SHA-384, 3 = SHA-512), `salt` = hash length.
    const fn pss(h: u8, salt: u8) -> [u8; 67] {
        [
            0x30, 0x41, // AlgorithmIdentifier
            0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a, // id-RSASSA-PSS
            0x30, 0x34, // RSASSA-PSS-params
            0xa0, 0x0f, // [0] hashAlgorithm
            0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, h, 0x05, 0x00,
            0xa1, 0x1c, // [1] maskGenAlgorithm
            0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01,
            0x08, // mgf1
            0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, h, 0x05, 0x00,
            0xa2, 0x03, 0x02, 0x01, salt, // [2] saltLength
        ]
    }
    pub(super) const RSA_PSS_SHA256: [u8; 67] = pss(0x01, 32);
    pub(super) const RSA_PSS_SHA384: [u8; 67] = pss(0x02, 48);
    pub(super) const RSA_PSS_SHA512: [u8; 67] = pss(0x03, 64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Decode;
    use der::asn1::{AnyRef, ObjectIdentifier};
    use spki::AlgorithmIdentifierRef;

    #[test]
    fn tls_code_points_round_trip_and_match_rfc8446() {
        let expected = [
            (SignatureScheme::RsaPkcs1Sha256, 0x0401),
            (SignatureScheme::RsaPkcs1Sha384, 0x0501),
            (SignatureScheme::RsaPkcs1Sha512, 0x0601),
            (SignatureScheme::EcdsaP256Sha256, 0x0403),
            (SignatureScheme::EcdsaP384Sha384, 0x0503),
            (SignatureScheme::RsaPssSha256, 0x0804),
            (SignatureScheme::RsaPssSha384, 0x0805),
            (SignatureScheme::RsaPssSha512, 0x0806),
            (SignatureScheme::Ed25519, 0x0807),
            (SignatureScheme::Ed448, 0x0808),
        ];
        for (scheme, code) in expected {
            assert_eq!(scheme.tls_code_point(), code, "{scheme}");
            assert_eq!(SignatureScheme::from_tls_code_point(code), Some(scheme));
        }
        // rsa_pss_pss_sha256 (0x0809) is not supported.
        assert_eq!(SignatureScheme::from_tls_code_point(0x0809), None);
    }

    #[test]
    fn algorithm_identifiers_decode_to_the_right_oids() {
        for scheme in SignatureScheme::ALL {
            let der = scheme.algorithm_identifier_der();
            let id = AlgorithmIdentifierRef::from_der(der).expect("valid DER");
            assert_eq!(id.oid.to_string(), scheme.signature_oid(), "{scheme}");
            match scheme.kind() {
                SignatureKind::RsaPkcs1v15 => {
                    assert_eq!(id.parameters, Some(AnyRef::NULL), "{scheme}")
                }
                SignatureKind::Ecdsa | SignatureKind::EdDsa => {
                    assert!(id.parameters.is_none(), "{scheme}")
                }
                SignatureKind::RsaPss => {
                    // Decoded by the rsa crate's own RSASSA-PSS-params type, independently.
                    let params: rsa::pkcs1::RsaPssParams<'_> = id
                        .parameters
                        .expect("PSS params")
                        .decode_as()
                        .expect("PSS params");
                    let hash = scheme.hash().expect("PSS has a hash");
                    assert_eq!(params.hash.oid.to_string(), hash.oid());
                    assert_eq!(
                        params.mask_gen.oid,
                        ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.8")
                    );
                    let mgf_hash = params.mask_gen.parameters.expect("mgf hash");
                    assert_eq!(mgf_hash.oid.to_string(), hash.oid());
                    assert_eq!(Some(usize::from(params.salt_len)), scheme.pss_salt_len());
                }
            }
        }
    }

    #[test]
    fn names_parse_back() {
        for scheme in SignatureScheme::ALL {
            assert_eq!(scheme.name().parse::<SignatureScheme>().ok(), Some(scheme));
            assert_eq!(
                scheme.tls_name().parse::<SignatureScheme>().ok(),
                Some(scheme)
            );
        }
        for alg in KeyAlgorithm::ALL {
            assert_eq!(alg.name().parse::<KeyAlgorithm>().ok(), Some(alg));
        }
        for d in DecryptScheme::ALL {
            assert_eq!(d.name().parse::<DecryptScheme>().ok(), Some(d));
        }
        let err = "x25519".parse::<KeyAlgorithm>().unwrap_err().to_string();
        assert!(err.contains("x25519") && err.contains("ed25519"), "{err}");
    }

    #[test]
    fn compatibility_tables() {
        assert!(SignatureScheme::EcdsaP256Sha256.is_compatible_with(KeyAlgorithm::EcP256));
        assert!(!SignatureScheme::EcdsaP384Sha384.is_compatible_with(KeyAlgorithm::EcP256));
        assert!(SignatureScheme::RsaPssSha512.is_compatible_with(KeyAlgorithm::Rsa2048));
        assert!(!SignatureScheme::RsaPssSha256.is_compatible_with(KeyAlgorithm::EcP384));
        assert!(SignatureScheme::Ed25519.is_compatible_with(KeyAlgorithm::Ed25519));
        assert!(!SignatureScheme::Ed448.is_compatible_with(KeyAlgorithm::Ed25519));
        assert!(!SignatureScheme::Ed25519.is_compatible_with(KeyAlgorithm::EcP256));
        assert!(!DecryptScheme::RsaOaepSha256.is_compatible_with(KeyAlgorithm::Ed25519));
        assert_eq!(SignatureScheme::Ed25519.hash(), None);
        for alg in KeyAlgorithm::ALL {
            assert_eq!(
                alg.family() == KeyFamily::EdDsa,
                alg.edwards_oid().is_some(),
                "{alg}"
            );
            for s in alg.signature_schemes() {
                assert_eq!(s.eddsa_key().is_some(), s.hash().is_none(), "{s}");
            }
        }
        assert!(DecryptScheme::RsaOaepSha256.is_compatible_with(KeyAlgorithm::Rsa3072));
        assert!(!DecryptScheme::RsaOaepSha256.is_compatible_with(KeyAlgorithm::EcP256));
        assert!(
            !KeyAlgorithm::Rsa2048
                .decrypt_schemes()
                .contains(&DecryptScheme::RsaPkcs1v15Legacy)
        );
    }
}
