//! Keys as callers see them: [`KeyInfo`] (cached, no device I/O) and the async [`PrivateKey`]
//! trait with its dyn-compatible companion [`DynPrivateKey`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use der::asn1::{AnyRef, BitStringRef, UintRef};
use der::{Decode, Encode, Sequence};
use spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};
use zeroize::Zeroizing;

use crate::algorithm::{DecryptScheme, KeyAlgorithm, KeyFamily, SignatureScheme};
use crate::encoding;
use crate::error::{Error, InvalidInput, Operation, Result, Unsupported};
use crate::oid::{EC_PUBLIC_KEY, ED448, ED25519, RSA_ENCRYPTION, SECP256R1, SECP384R1};
use crate::pool::PoolStats;
use crate::uri::KeyUri;

/// A boxed, `Send`, `'static` future: what the dyn-compatible traits return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A key shared behind a trait object, e.g. by a TLS server holding keys of several backends.
pub type SharedKey = Arc<dyn DynPrivateKey>;

/// A key's stable identifier: CKA_ID on PKCS#11, the persistent handle or a digest of the
/// public key on a TPM, a digest of the public key for software keys. Displayed as hex.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(Vec<u8>);

impl KeyId {
    /// An id from raw bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The first 16 bytes of SHA-256 over a SubjectPublicKeyInfo: a stable id for keys whose
    /// device has no id of its own.
    pub fn from_public_key(public_key: &PublicKey) -> Self {
        let digest = encoding::digest(crate::HashAlgorithm::Sha256, public_key.der());
        Self(digest[..16].to_vec())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Parses the hex form printed by `Display`.
    pub fn from_hex(s: &str) -> Result<Self> {
        hex::decode(s.trim()).map(Self).map_err(|_| {
            InvalidInput::Malformed {
                what: "key id",
                reason: "expected an even number of hex digits",
            }
            .into()
        })
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// What a key may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct KeyUsages {
    /// The key may sign.
    pub sign: bool,
    /// The key may decrypt.
    pub decrypt: bool,
}

impl KeyUsages {
    /// Signing only.
    pub const SIGN: Self = Self {
        sign: true,
        decrypt: false,
    };
    /// Signing and decryption (the default for RSA keys serving TLS 1.2 RSA key exchange).
    pub const SIGN_DECRYPT: Self = Self {
        sign: true,
        decrypt: true,
    };

    /// The usual usages for a new key of `alg`: sign for EC and EdDSA, sign and decrypt for
    /// RSA.
    pub const fn default_for(alg: KeyAlgorithm) -> Self {
        match alg.family() {
            KeyFamily::Rsa => Self::SIGN_DECRYPT,
            KeyFamily::Ec | KeyFamily::EdDsa => Self::SIGN,
        }
    }
}

impl fmt::Display for KeyUsages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.sign, self.decrypt) {
            (true, true) => f.write_str("sign, decrypt"),
            (true, false) => f.write_str("sign"),
            (false, true) => f.write_str("decrypt"),
            (false, false) => f.write_str("none"),
        }
    }
}

/// Choices a caller makes when opening a key, beyond what the device allows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyPolicy {
    /// Allow RSA PKCS#1 v1.5 decryption ([`DecryptScheme::RsaPkcs1v15Legacy`]). Off by default:
    /// it is a padding oracle, needed only for legacy TLS 1.2 RSA key exchange.
    pub allow_legacy_rsa_pkcs1v15_decrypt: bool,
}

impl KeyPolicy {
    /// The default policy with legacy PKCS#1 v1.5 decryption allowed or not.
    pub const fn with_legacy_rsa_pkcs1v15_decrypt(mut self, allow: bool) -> Self {
        self.allow_legacy_rsa_pkcs1v15_decrypt = allow;
        self
    }
}

/// A public key as a DER SubjectPublicKeyInfo, with the algorithm it was found to be.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    der: Arc<[u8]>,
    algorithm: KeyAlgorithm,
}

#[derive(Sequence)]
struct RsaPublicKeyDer<'a> {
    modulus: UintRef<'a>,
    public_exponent: UintRef<'a>,
}

impl PublicKey {
    /// Parses a DER SubjectPublicKeyInfo and determines its [`KeyAlgorithm`].
    pub fn from_spki_der(der: &[u8]) -> Result<Self> {
        let bad = |source: der::Error| {
            Error::from(InvalidInput::KeyEncoding {
                what: "SubjectPublicKeyInfo".into(),
                source: Box::new(source),
            })
        };
        let spki = SubjectPublicKeyInfoRef::from_der(der).map_err(bad)?;
        let key_bits = spki.subject_public_key.raw_bytes();
        let algorithm = if spki.algorithm.oid == RSA_ENCRYPTION {
            let rsa = RsaPublicKeyDer::from_der(key_bits).map_err(bad)?;
            let n = rsa.modulus.as_bytes();
            let bits = match n.first() {
                Some(&top) => n.len() * 8 - top.leading_zeros() as usize,
                None => 0,
            };
            KeyAlgorithm::rsa_with_bits(bits).ok_or(InvalidInput::Malformed {
                what: "RSA public key",
                reason: "modulus size is not 2048, 3072 or 4096 bits",
            })?
        } else if spki.algorithm.oid == EC_PUBLIC_KEY {
            let curve = spki.algorithm.parameters_oid().map_err(|e| {
                Error::from(InvalidInput::KeyEncoding {
                    what: "EC public key parameters".into(),
                    source: Box::new(e),
                })
            })?;
            match curve {
                c if c == SECP256R1 => KeyAlgorithm::EcP256,
                c if c == SECP384R1 => KeyAlgorithm::EcP384,
                _ => {
                    return Err(InvalidInput::Malformed {
                        what: "EC public key",
                        reason: "curve is neither P-256 nor P-384",
                    }
                    .into());
                }
            }
        } else if spki.algorithm.oid == ED25519 || spki.algorithm.oid == ED448 {
            let alg = if spki.algorithm.oid == ED25519 {
                KeyAlgorithm::Ed25519
            } else {
                KeyAlgorithm::Ed448
            };
            // RFC 8410 section 3: the parameters MUST be absent.
            if spki.algorithm.parameters.is_some() {
                return Err(InvalidInput::Malformed {
                    what: "EdDSA public key",
                    reason: "the algorithm identifier has parameters (RFC 8410: absent)",
                }
                .into());
            }
            if Some(key_bits.len()) != alg.edwards_key_len() {
                return Err(InvalidInput::Malformed {
                    what: "EdDSA public key",
                    reason: "not 32 bytes (Ed25519) or 57 bytes (Ed448)",
                }
                .into());
            }
            alg
        } else {
            return Err(InvalidInput::Malformed {
                what: "public key",
                reason: "algorithm is neither rsaEncryption, id-ecPublicKey, id-Ed25519 nor \
                         id-Ed448",
            }
            .into());
        };
        Ok(Self {
            der: der.into(),
            algorithm,
        })
    }

    /// An RSA public key from its modulus and public exponent (big-endian unsigned integers,
    /// as PKCS#11 `CKA_MODULUS` / `CKA_PUBLIC_EXPONENT` and a TPM's `TPM2B_PUBLIC` hold them).
    pub fn from_rsa_components(modulus: &[u8], public_exponent: &[u8]) -> Result<Self> {
        let encode = |source: der::Error| {
            Error::from(InvalidInput::KeyEncoding {
                what: "RSA public key components".into(),
                source: Box::new(source),
            })
        };
        let key = RsaPublicKeyDer {
            modulus: UintRef::new(modulus).map_err(encode)?,
            public_exponent: UintRef::new(public_exponent).map_err(encode)?,
        }
        .to_der()
        .map_err(encode)?;
        let spki = SubjectPublicKeyInfoRef {
            algorithm: AlgorithmIdentifierRef {
                oid: RSA_ENCRYPTION,
                parameters: Some(AnyRef::NULL),
            },
            subject_public_key: BitStringRef::from_bytes(&key).map_err(encode)?,
        };
        Self::from_spki_der(&spki.to_der().map_err(encode)?)
    }

    /// An EC public key from its uncompressed SEC1 point `04 || X || Y` (the content of
    /// PKCS#11 `CKA_EC_POINT` once its DER OCTET STRING wrapper is removed, or a TPM's x and y
    /// coordinates after a 0x04 byte).
    pub fn from_ec_point(algorithm: KeyAlgorithm, point: &[u8]) -> Result<Self> {
        let (curve, field) = match algorithm {
            KeyAlgorithm::EcP256 => (SECP256R1, 32),
            KeyAlgorithm::EcP384 => (SECP384R1, 48),
            _ => {
                return Err(InvalidInput::Malformed {
                    what: "EC public key",
                    reason: "the algorithm is not an EC curve",
                }
                .into());
            }
        };
        if point.len() != 1 + 2 * field || point.first() != Some(&0x04) {
            return Err(InvalidInput::Malformed {
                what: "EC public key",
                reason: "expected an uncompressed point: 0x04 followed by X and Y",
            }
            .into());
        }
        let encode = |source: der::Error| {
            Error::from(InvalidInput::KeyEncoding {
                what: "EC public key point".into(),
                source: Box::new(source),
            })
        };
        let spki = SubjectPublicKeyInfoRef {
            algorithm: AlgorithmIdentifierRef {
                oid: EC_PUBLIC_KEY,
                parameters: Some(AnyRef::from(&curve)),
            },
            subject_public_key: BitStringRef::from_bytes(point).map_err(encode)?,
        };
        Self::from_spki_der(&spki.to_der().map_err(encode)?)
    }

    /// An Edwards-curve public key from its RFC 8032 encoding (32 bytes for Ed25519, 57 for
    /// Ed448: PKCS#11 `CKA_EC_POINT` once any DER OCTET STRING wrapper is removed).
    pub fn from_edwards_point(algorithm: KeyAlgorithm, point: &[u8]) -> Result<Self> {
        let oid = match algorithm {
            KeyAlgorithm::Ed25519 => ED25519,
            KeyAlgorithm::Ed448 => ED448,
            _ => {
                return Err(InvalidInput::Malformed {
                    what: "EdDSA public key",
                    reason: "the algorithm is not Ed25519 or Ed448",
                }
                .into());
            }
        };
        let encode = |source: der::Error| {
            Error::from(InvalidInput::KeyEncoding {
                what: "EdDSA public key".into(),
                source: Box::new(source),
            })
        };
        let spki = SubjectPublicKeyInfoRef {
            algorithm: AlgorithmIdentifierRef {
                oid,
                parameters: None,
            },
            subject_public_key: BitStringRef::from_bytes(point).map_err(encode)?,
        };
        Self::from_spki_der(&spki.to_der().map_err(encode)?)
    }

    /// The raw key bits of the SubjectPublicKeyInfo: the RFC 8032 encoding for EdDSA keys, the
    /// SEC1 point for EC keys, the DER `RSAPublicKey` for RSA.
    pub fn key_bits(&self) -> &[u8] {
        // `from_spki_der` parsed this DER already; the fallback is never taken.
        SubjectPublicKeyInfoRef::from_der(&self.der)
            .ok()
            .and_then(|spki| spki.subject_public_key.as_bytes())
            .unwrap_or_default()
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The algorithm of the key.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The SHA-256 of the DER SubjectPublicKeyInfo, hex ([`encoding::spki_fingerprint`]).
    pub fn fingerprint(&self) -> String {
        encoding::spki_fingerprint(&self.der)
    }

    /// The PEM form (`-----BEGIN PUBLIC KEY-----`), as `openssl pkey -pubout` prints it.
    pub fn to_pem(&self) -> String {
        // Encoding a byte slice into a String cannot fail except on length overflow.
        der::pem::encode_string("PUBLIC KEY", der::pem::LineEnding::LF, &self.der)
            .unwrap_or_default()
    }
}

impl spki::EncodePublicKey for PublicKey {
    /// The SubjectPublicKeyInfo DER, as [`PublicKey::der`] holds it (what RustCrypto's
    /// builders, e.g. x509-cert's, ask of a verifying key).
    fn to_public_key_der(&self) -> spki::Result<der::Document> {
        Ok(der::Document::try_from(self.der())?)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("algorithm", &self.algorithm)
            .field("spki_len", &self.der.len())
            .finish()
    }
}

/// What the device itself enforces on a key, as the device reports it (PKCS#11 attributes,
/// TPM object attributes): the last line of defence when the PIN or auth value is known.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceRestrictions {
    /// Operations the device lets the private key do, in the device's words (`sign`,
    /// `decrypt`, `unwrap`, `derive`, `sign-recover`).
    pub operations: Vec<String>,
    /// Mechanisms the device allows with the key, in the device's names (`CKM_ECDSA`);
    /// `None` when the device does not restrict them per key.
    pub mechanisms: Option<Vec<String>>,
    /// Something the user should know (the device ignores a restriction, say).
    pub note: Option<String>,
}

impl DeviceRestrictions {
    /// Restrictions with these operations, no mechanism list and no note.
    pub fn new(operations: Vec<String>) -> Self {
        Self {
            operations,
            mechanisms: None,
            note: None,
        }
    }

    /// Sets the mechanism list.
    pub fn with_mechanisms(mut self, mechanisms: Option<Vec<String>>) -> Self {
        self.mechanisms = mechanisms;
        self
    }

    /// Sets the note.
    pub fn with_note(mut self, note: Option<String>) -> Self {
        self.note = note;
        self
    }
}

/// Everything about a key that is known without asking the device: reading it does no I/O.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyInfo {
    /// Stable identifier.
    pub id: KeyId,
    /// Human label (CKA_LABEL, file name...), if any.
    pub label: Option<String>,
    /// A URI that opens this key again, if it has one (in-memory keys do not).
    pub uri: Option<KeyUri>,
    /// The key's algorithm.
    pub algorithm: KeyAlgorithm,
    /// What the key may do.
    pub usages: KeyUsages,
    /// The public key.
    pub public_key: PublicKey,
    /// Signature schemes this key serves, preferred first (empty if it may not sign).
    pub signature_schemes: Vec<SignatureScheme>,
    /// Decryption schemes this key serves (empty if it may not decrypt).
    pub decrypt_schemes: Vec<DecryptScheme>,
    /// What the device enforces on the key, when the backend can tell.
    pub device: Option<DeviceRestrictions>,
}

impl KeyInfo {
    /// Describes a key from its public key, usages and the opener's policy; the schemes are
    /// everything the algorithm allows that the usages and policy permit.
    pub fn new(id: KeyId, public_key: PublicKey, usages: KeyUsages, policy: KeyPolicy) -> Self {
        let algorithm = public_key.algorithm();
        let signature_schemes = if usages.sign {
            algorithm.signature_schemes().to_vec()
        } else {
            Vec::new()
        };
        let mut decrypt_schemes = if usages.decrypt {
            algorithm.decrypt_schemes().to_vec()
        } else {
            Vec::new()
        };
        if usages.decrypt
            && policy.allow_legacy_rsa_pkcs1v15_decrypt
            && DecryptScheme::RsaPkcs1v15Legacy.is_compatible_with(algorithm)
        {
            decrypt_schemes.push(DecryptScheme::RsaPkcs1v15Legacy);
        }
        Self {
            id,
            label: None,
            uri: None,
            algorithm,
            usages,
            public_key,
            signature_schemes,
            decrypt_schemes,
            device: None,
        }
    }

    /// Sets what the device enforces on the key.
    pub fn with_device(mut self, device: Option<DeviceRestrictions>) -> Self {
        self.device = device;
        self
    }

    /// Sets the label.
    pub fn with_label(mut self, label: Option<String>) -> Self {
        self.label = label;
        self
    }

    /// Sets the URI.
    pub fn with_uri(mut self, uri: Option<KeyUri>) -> Self {
        self.uri = uri;
        self
    }

    /// Restricts the signature schemes (a device that cannot do some of them).
    pub fn retain_signature_schemes(mut self, keep: impl Fn(SignatureScheme) -> bool) -> Self {
        self.signature_schemes.retain(|s| keep(*s));
        self
    }

    /// Whether the key serves `scheme`.
    pub fn supports(&self, scheme: SignatureScheme) -> bool {
        self.signature_schemes.contains(&scheme)
    }

    /// The key's most preferred scheme among those a peer offers (TLS negotiation).
    pub fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<SignatureScheme> {
        self.signature_schemes
            .iter()
            .copied()
            .find(|s| offered.contains(s))
    }

    /// A name for messages: the label, else the id.
    pub fn display_name(&self) -> String {
        match &self.label {
            Some(label) => format!("'{label}'"),
            None => format!("id {}", self.id),
        }
    }

    /// Checks that this key may sign `digest` with `scheme` (scheme served, digest length).
    /// An EdDSA scheme takes no digest ([`InvalidInput::DigestForMessageScheme`]).
    pub fn check_sign(&self, scheme: SignatureScheme, digest: &[u8]) -> Result<()> {
        self.check_scheme(scheme)?;
        encoding::check_digest_len(scheme, digest)
    }

    /// Checks that this key may sign a whole `message` with `scheme` (usage, scheme served,
    /// and a scheme without a pre-hash: EdDSA); the message path of
    /// [`PrivateKey::sign_message`].
    pub fn check_sign_message(&self, scheme: SignatureScheme, _message: &[u8]) -> Result<()> {
        if scheme.hash().is_some() {
            return Err(InvalidInput::MessageForDigestScheme { scheme }.into());
        }
        self.check_scheme(scheme)
    }

    fn check_scheme(&self, scheme: SignatureScheme) -> Result<()> {
        if !self.usages.sign {
            return Err(Unsupported::Usage {
                key: self.display_name(),
                op: Operation::Sign,
            }
            .into());
        }
        if !self.supports(scheme) {
            return Err(if scheme.is_compatible_with(self.algorithm) {
                Unsupported::SchemeNotOffered {
                    scheme,
                    key: self.display_name(),
                    offered: self
                        .signature_schemes
                        .iter()
                        .map(|s| s.name())
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            } else {
                Unsupported::SignatureScheme {
                    scheme,
                    key: self.algorithm,
                }
            }
            .into());
        }
        Ok(())
    }

    /// Checks that this key may decrypt `ciphertext` with `scheme` (scheme, policy, length).
    pub fn check_decrypt(&self, scheme: DecryptScheme, ciphertext: &[u8]) -> Result<()> {
        if !scheme.is_compatible_with(self.algorithm) {
            return Err(Unsupported::DecryptScheme {
                scheme,
                key: self.algorithm,
            }
            .into());
        }
        if !self.usages.decrypt {
            return Err(Unsupported::Usage {
                key: self.display_name(),
                op: Operation::Decrypt,
            }
            .into());
        }
        if !self.decrypt_schemes.contains(&scheme) {
            return Err(match scheme {
                DecryptScheme::RsaPkcs1v15Legacy => Unsupported::LegacyDecryptDisabled,
                DecryptScheme::RsaOaepSha256 => Unsupported::DecryptScheme {
                    scheme,
                    key: self.algorithm,
                },
            }
            .into());
        }
        let k = self.algorithm.bits() / 8;
        if ciphertext.len() != k {
            return Err(InvalidInput::CiphertextLength {
                expected: k,
                got: ciphertext.len(),
            }
            .into());
        }
        Ok(())
    }
}

/// A private key whose operations complete asynchronously, typically on a device worker.
///
/// The futures own their input and are `Send + 'static`; they do not depend on any async
/// runtime (they work under tokio's multi-thread and current-thread runtimes and under a plain
/// `block_on`). They are lazy: nothing is queued until first polled, and a future dropped
/// before its job starts on the device is skipped, never run.
///
/// ECDSA signatures are DER-encoded (`Ecdsa-Sig-Value`, the TLS and X.509 form); RSA
/// signatures are the raw `k`-byte signature; EdDSA signatures are the raw `R || S`.
///
/// For `Arc<dyn ...>` use, every `PrivateKey` is also a [`DynPrivateKey`]; [`SharedKey`]
/// (`Arc<dyn DynPrivateKey>`) is a `PrivateKey` again.
pub trait PrivateKey: Send + Sync + 'static {
    /// The key's cached description: no device I/O.
    fn info(&self) -> &KeyInfo;

    /// Statistics of the device pool serving this key, if it has one.
    fn pool_stats(&self) -> Option<PoolStats> {
        None
    }

    /// Signs a digest computed by the caller with `scheme`'s hash.
    fn sign_digest(
        &self,
        scheme: SignatureScheme,
        digest: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>>> + Send + 'static + use<Self>;

    /// Signs a whole message with a scheme that has no pre-hash (EdDSA): the device sees the
    /// message itself. The default refuses ([`Unsupported::Operation`]); keys whose device can
    /// do EdDSA override it.
    fn sign_message(
        &self,
        scheme: SignatureScheme,
        message: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>>> + Send + 'static + use<Self> {
        let refused = self
            .info()
            .check_sign_message(scheme, message)
            .and_then(|()| {
                Err(Unsupported::Operation {
                    op: Operation::Sign,
                    device: format!("the device of key {}", self.info().display_name()),
                }
                .into())
            });
        std::future::ready(refused)
    }

    /// Signs `message` with `scheme`. For a scheme with a pre-hash, hashes `message` on the
    /// calling thread (hashing is cheap next to a device round trip, and avoids copying the
    /// message), then signs the digest; for EdDSA, hands the whole message to
    /// [`PrivateKey::sign_message`].
    fn sign(
        &self,
        scheme: SignatureScheme,
        message: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>>> + Send + 'static + use<Self> {
        use futures::future::Either;
        match scheme.hash() {
            Some(hash) => Either::Left(self.sign_digest(scheme, &encoding::digest(hash, message))),
            None => Either::Right(self.sign_message(scheme, message)),
        }
    }

    /// Decrypts an RSA ciphertext. The plaintext is zeroized when dropped.
    fn decrypt(
        &self,
        scheme: DecryptScheme,
        ciphertext: &[u8],
    ) -> impl Future<Output = Result<Zeroizing<Vec<u8>>>> + Send + 'static + use<Self>;
}

/// The dyn-compatible form of [`PrivateKey`], with boxed futures. Implemented for every
/// `PrivateKey`. Hold keys as [`SharedKey`] (`Arc<dyn DynPrivateKey>`) and call the
/// [`PrivateKey`] methods on it; the `dyn_` names keep the two traits from clashing when both
/// are in scope.
pub trait DynPrivateKey: Send + Sync + 'static {
    /// See [`PrivateKey::info`].
    fn dyn_info(&self) -> &KeyInfo;
    /// See [`PrivateKey::pool_stats`].
    fn dyn_pool_stats(&self) -> Option<PoolStats>;
    /// See [`PrivateKey::sign_digest`].
    fn dyn_sign_digest(&self, scheme: SignatureScheme, digest: &[u8])
    -> BoxFuture<Result<Vec<u8>>>;
    /// See [`PrivateKey::sign_message`].
    fn dyn_sign_message(
        &self,
        scheme: SignatureScheme,
        message: &[u8],
    ) -> BoxFuture<Result<Vec<u8>>>;
    /// See [`PrivateKey::sign`].
    fn dyn_sign(&self, scheme: SignatureScheme, message: &[u8]) -> BoxFuture<Result<Vec<u8>>>;
    /// See [`PrivateKey::decrypt`].
    fn dyn_decrypt(
        &self,
        scheme: DecryptScheme,
        ciphertext: &[u8],
    ) -> BoxFuture<Result<Zeroizing<Vec<u8>>>>;
}

impl<K: PrivateKey> DynPrivateKey for K {
    fn dyn_info(&self) -> &KeyInfo {
        self.info()
    }
    fn dyn_pool_stats(&self) -> Option<PoolStats> {
        self.pool_stats()
    }
    fn dyn_sign_digest(
        &self,
        scheme: SignatureScheme,
        digest: &[u8],
    ) -> BoxFuture<Result<Vec<u8>>> {
        Box::pin(self.sign_digest(scheme, digest))
    }
    fn dyn_sign_message(
        &self,
        scheme: SignatureScheme,
        message: &[u8],
    ) -> BoxFuture<Result<Vec<u8>>> {
        Box::pin(self.sign_message(scheme, message))
    }
    fn dyn_sign(&self, scheme: SignatureScheme, message: &[u8]) -> BoxFuture<Result<Vec<u8>>> {
        Box::pin(self.sign(scheme, message))
    }
    fn dyn_decrypt(
        &self,
        scheme: DecryptScheme,
        ciphertext: &[u8],
    ) -> BoxFuture<Result<Zeroizing<Vec<u8>>>> {
        Box::pin(self.decrypt(scheme, ciphertext))
    }
}

impl PrivateKey for SharedKey {
    fn info(&self) -> &KeyInfo {
        (**self).dyn_info()
    }
    fn pool_stats(&self) -> Option<PoolStats> {
        (**self).dyn_pool_stats()
    }
    fn sign_digest(
        &self,
        scheme: SignatureScheme,
        digest: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>>> + Send + 'static + use<> {
        (**self).dyn_sign_digest(scheme, digest)
    }
    fn sign_message(
        &self,
        scheme: SignatureScheme,
        message: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>>> + Send + 'static + use<> {
        (**self).dyn_sign_message(scheme, message)
    }
    fn sign(
        &self,
        scheme: SignatureScheme,
        message: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>>> + Send + 'static + use<> {
        (**self).dyn_sign(scheme, message)
    }
    fn decrypt(
        &self,
        scheme: DecryptScheme,
        ciphertext: &[u8],
    ) -> impl Future<Output = Result<Zeroizing<Vec<u8>>>> + Send + 'static + use<> {
        (**self).dyn_decrypt(scheme, ciphertext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;
    use rsa::pkcs8::EncodePublicKey;

    fn spki(alg: KeyAlgorithm) -> Vec<u8> {
        match alg {
            KeyAlgorithm::EcP256 => p256::SecretKey::random(&mut OsRng)
                .public_key()
                .to_public_key_der()
                .unwrap()
                .into_vec(),
            KeyAlgorithm::EcP384 => p384::SecretKey::random(&mut OsRng)
                .public_key()
                .to_public_key_der()
                .unwrap()
                .into_vec(),
            _ => rsa::RsaPrivateKey::new(&mut OsRng, alg.bits())
                .unwrap()
                .to_public_key()
                .to_public_key_der()
                .unwrap()
                .into_vec(),
        }
    }

    #[test]
    fn spki_algorithm_is_detected() {
        for alg in [
            KeyAlgorithm::EcP256,
            KeyAlgorithm::EcP384,
            KeyAlgorithm::Rsa2048,
        ] {
            let der = spki(alg);
            let pk = PublicKey::from_spki_der(&der).unwrap();
            assert_eq!(pk.algorithm(), alg);
            assert_eq!(pk.der(), der.as_slice());
            let pem = pk.to_pem();
            assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
        }
    }

    #[test]
    fn components_build_the_same_spki_as_the_rsa_and_p256_crates() {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        use rsa::traits::PublicKeyParts;
        let rsa_key = rsa::RsaPrivateKey::new(&mut OsRng, 2048)
            .unwrap()
            .to_public_key();
        let built =
            PublicKey::from_rsa_components(&rsa_key.n().to_bytes_be(), &rsa_key.e().to_bytes_be())
                .unwrap();
        assert_eq!(built.der(), rsa_key.to_public_key_der().unwrap().as_bytes());
        assert_eq!(built.algorithm(), KeyAlgorithm::Rsa2048);

        let ec = p256::SecretKey::random(&mut OsRng).public_key();
        let point = ec.to_encoded_point(false);
        let built = PublicKey::from_ec_point(KeyAlgorithm::EcP256, point.as_bytes()).unwrap();
        assert_eq!(built.der(), ec.to_public_key_der().unwrap().as_bytes());
        // Wrong curve, compressed point, garbage: refused, no panic.
        assert!(PublicKey::from_ec_point(KeyAlgorithm::EcP384, point.as_bytes()).is_err());
        let compressed = ec.to_encoded_point(true);
        assert!(PublicKey::from_ec_point(KeyAlgorithm::EcP256, compressed.as_bytes()).is_err());
        assert!(PublicKey::from_rsa_components(&[], &[1, 0, 1]).is_err());
    }

    #[test]
    fn edwards_spki_matches_rfc8410_and_openssl() {
        // `openssl genpkey -algorithm ed25519 | openssl pkey -pubout -outform DER | xxd -p`:
        // SEQUENCE { SEQUENCE { OID 1.3.101.112 } BIT STRING (32 bytes) }.
        let point = [0x11u8; 32];
        let pk = PublicKey::from_edwards_point(KeyAlgorithm::Ed25519, &point).unwrap();
        assert_eq!(
            hex::encode(pk.der()),
            format!("302a300506032b6570032100{}", hex::encode(point))
        );
        assert_eq!(pk.algorithm(), KeyAlgorithm::Ed25519);
        assert_eq!(pk.key_bits(), point);
        let ed448 = PublicKey::from_edwards_point(KeyAlgorithm::Ed448, &[7; 57]).unwrap();
        assert_eq!(
            &ed448.der()[..12],
            &hex::decode("3043300506032b6571033a00").unwrap()[..]
        );
        assert_eq!(ed448.algorithm(), KeyAlgorithm::Ed448);
        // Wrong length for the curve, wrong algorithm, parameters present: refused.
        assert!(PublicKey::from_edwards_point(KeyAlgorithm::Ed25519, &[7; 57]).is_err());
        assert!(PublicKey::from_edwards_point(KeyAlgorithm::Ed448, &point).is_err());
        assert!(PublicKey::from_edwards_point(KeyAlgorithm::EcP256, &point).is_err());
        let with_null = hex::decode(format!(
            "302c300706032b65700500032100{}",
            hex::encode(point)
        ))
        .unwrap();
        let err = PublicKey::from_spki_der(&with_null).unwrap_err();
        assert!(err.to_string().contains("RFC 8410"), "{err}");
        // The ed25519-dalek crate's own SPKI is read back as the same key.
        use ed25519_dalek::pkcs8::EncodePublicKey as _;
        let dalek = ed25519_dalek::SigningKey::generate(&mut OsRng).verifying_key();
        let der = dalek.to_public_key_der().unwrap();
        let pk = PublicKey::from_spki_der(der.as_bytes()).unwrap();
        assert_eq!(pk.key_bits(), dalek.as_bytes());
        for cut in 0..der.as_bytes().len() {
            assert!(PublicKey::from_spki_der(&der.as_bytes()[..cut]).is_err());
        }
    }

    #[test]
    fn bad_spki_is_rejected_without_panic() {
        let der = spki(KeyAlgorithm::EcP256);
        for cut in 0..der.len() {
            assert!(PublicKey::from_spki_der(&der[..cut]).is_err());
        }
        let small_rsa = rsa::RsaPrivateKey::new(&mut OsRng, 1024)
            .unwrap()
            .to_public_key()
            .to_public_key_der()
            .unwrap();
        let err = PublicKey::from_spki_der(small_rsa.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("2048, 3072 or 4096"), "{err}");
    }

    fn info(alg: KeyAlgorithm, policy: KeyPolicy) -> KeyInfo {
        let pk = PublicKey::from_spki_der(&spki(alg)).unwrap();
        KeyInfo::new(
            KeyId::from_public_key(&pk),
            pk,
            KeyUsages::default_for(alg),
            policy,
        )
    }

    #[test]
    fn schemes_follow_algorithm_usages_and_policy() {
        let ec = info(KeyAlgorithm::EcP256, KeyPolicy::default());
        assert_eq!(ec.signature_schemes, [SignatureScheme::EcdsaP256Sha256]);
        assert!(ec.decrypt_schemes.is_empty());
        let rsa = info(KeyAlgorithm::Rsa2048, KeyPolicy::default());
        assert_eq!(rsa.decrypt_schemes, [DecryptScheme::RsaOaepSha256]);
        let legacy = info(
            KeyAlgorithm::Rsa2048,
            KeyPolicy::default().with_legacy_rsa_pkcs1v15_decrypt(true),
        );
        assert!(
            legacy
                .decrypt_schemes
                .contains(&DecryptScheme::RsaPkcs1v15Legacy)
        );
        // TLS negotiation: the key's preference among what the peer offers.
        let offered = [
            SignatureScheme::RsaPkcs1Sha256,
            SignatureScheme::RsaPssSha384,
        ];
        assert_eq!(
            rsa.choose_scheme(&offered),
            Some(SignatureScheme::RsaPssSha384)
        );
        assert_eq!(ec.choose_scheme(&offered), None);
    }

    #[test]
    fn checks_refuse_with_the_right_kinds() {
        use crate::ErrorKind;
        let rsa = info(KeyAlgorithm::Rsa2048, KeyPolicy::default());
        let d32 = [0u8; 32];
        assert!(rsa.check_sign(SignatureScheme::RsaPssSha256, &d32).is_ok());
        let kind = |r: Result<()>| r.unwrap_err().kind();
        assert_eq!(
            kind(rsa.check_sign(SignatureScheme::RsaPssSha384, &d32)),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            kind(rsa.check_sign(SignatureScheme::EcdsaP256Sha256, &d32)),
            ErrorKind::Unsupported
        );
        let restricted = rsa
            .clone()
            .retain_signature_schemes(|s| s != SignatureScheme::RsaPssSha256);
        let err = restricted
            .check_sign(SignatureScheme::RsaPssSha256, &d32)
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Unsupported(Unsupported::SchemeNotOffered { .. })
            ),
            "{err}"
        );
        let ct = [0u8; 256];
        assert!(rsa.check_decrypt(DecryptScheme::RsaOaepSha256, &ct).is_ok());
        assert_eq!(
            kind(rsa.check_decrypt(DecryptScheme::RsaOaepSha256, &ct[1..])),
            ErrorKind::InvalidInput
        );
        let err = rsa
            .check_decrypt(DecryptScheme::RsaPkcs1v15Legacy, &ct)
            .unwrap_err();
        assert!(
            matches!(err, Error::Unsupported(Unsupported::LegacyDecryptDisabled)),
            "{err}"
        );
        let sign_only = KeyInfo::new(
            rsa.id.clone(),
            rsa.public_key.clone(),
            KeyUsages::SIGN,
            KeyPolicy::default(),
        );
        assert_eq!(
            kind(sign_only.check_decrypt(DecryptScheme::RsaOaepSha256, &ct)),
            ErrorKind::Unsupported
        );
    }

    #[test]
    fn key_id_hex_round_trip() {
        let id = KeyId::new(vec![0x01, 0xab, 0xff]);
        assert_eq!(id.to_string(), "01abff");
        assert_eq!(KeyId::from_hex("01ABff").unwrap(), id);
        assert!(KeyId::from_hex("abc").is_err());
    }
}

#[cfg(test)]
mod dyn_tests {
    // Both traits in scope at once must not make `info()` ambiguous.
    #[allow(unused_imports)]
    use super::{DynPrivateKey, PrivateKey, SharedKey};

    #[allow(dead_code)]
    fn both_traits_in_scope(key: &SharedKey) -> &super::KeyInfo {
        key.info()
    }
}
