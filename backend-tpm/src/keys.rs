//! TPM keys: creation templates, how a key is found ([`TpmKeyRef`]) and how a public area is
//! described in hardkey's terms.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hardkey_api::{
    Error, HashAlgorithm, InvalidInput, KeyAlgorithm, KeyFamily, KeyId, KeyInfo, KeyPolicy, KeyUri,
    KeyUsages, PublicKey, Result, SignatureKind, SignatureScheme, Tpm2Key, Tpm2Uri, Unsupported,
};
use sha2::Digest as _;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::structures::{
    EccPoint, EccScheme, HashScheme, KeyDerivationFunctionScheme, Private, Public, PublicBuilder,
    PublicEccParametersBuilder, PublicKeyRsa, PublicRsaParametersBuilder, RsaExponent, RsaScheme,
    SymmetricDefinitionObject,
};
use tss_esapi::traits::Marshall;
use zeroize::Zeroizing;

/// Where a key lives.
#[derive(Clone)]
pub(crate) enum Location {
    /// A persistent handle (made with EvictControl, by hardkey or tpm2-tools).
    Persistent(u32),
    /// A key file: the private blob, loaded under `parent` when needed.
    Blob {
        path: PathBuf,
        parent: u32,
        private: Private,
    },
}

/// Everything needed to use a key; shared by every job on it.
pub(crate) struct KeyMaterial {
    pub(crate) location: Location,
    pub(crate) public: Public,
    /// The TPM name (nameAlg || H(public area)): the key's id and cache key.
    pub(crate) name: Vec<u8>,
    pub(crate) auth: Option<Zeroizing<String>>,
    pub(crate) algorithm: KeyAlgorithm,
    /// Sign PSS by host encoding plus a raw RSA operation (the TPM's own PSS salt differs
    /// from the hash length, or the configuration forces it).
    pub(crate) host_pss: bool,
}

/// How the TPM worker finds a key: a persistent handle or a key file's blobs, with its
/// auth value. Cheap to clone.
#[derive(Clone)]
pub struct TpmKeyRef(pub(crate) Arc<KeyMaterial>);

impl fmt::Debug for TpmKeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("TpmKeyRef");
        match &self.0.location {
            Location::Persistent(h) => d.field("handle", &format_args!("{h:#010x}")),
            Location::Blob { path, parent, .. } => d
                .field("file", &path.display())
                .field("parent", &format_args!("{parent:#010x}")),
        };
        d.field("name", &hex::encode(&self.0.name))
            .field("auth", &self.0.auth.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl TpmKeyRef {
    /// The persistent handle, for keys kept in one.
    pub fn handle(&self) -> Option<u32> {
        match self.0.location {
            Location::Persistent(h) => Some(h),
            Location::Blob { .. } => None,
        }
    }

    /// The key file, for keys kept in one.
    pub fn file(&self) -> Option<&Path> {
        match &self.0.location {
            Location::Blob { path, .. } => Some(path),
            Location::Persistent(_) => None,
        }
    }

    /// The TPM name of the key (its id).
    pub fn name(&self) -> &[u8] {
        &self.0.name
    }
}

/// The TPM name of a public area: nameAlg (big-endian u16) || H_nameAlg(TPMT_PUBLIC).
pub(crate) fn tpm_name(public: &Public) -> Result<Vec<u8>> {
    let marshalled = public.marshall().map_err(|e| {
        Error::from(InvalidInput::KeyEncoding {
            what: "TPM public area".into(),
            source: e.into(),
        })
    })?;
    let (id, digest): (u16, Vec<u8>) = match public.name_hashing_algorithm() {
        HashingAlgorithm::Sha256 => (0x000b, sha2::Sha256::digest(&marshalled).to_vec()),
        HashingAlgorithm::Sha384 => (0x000c, sha2::Sha384::digest(&marshalled).to_vec()),
        HashingAlgorithm::Sha512 => (0x000d, sha2::Sha512::digest(&marshalled).to_vec()),
        other => {
            return Err(InvalidInput::KeyEncoding {
                what: "TPM public area".into(),
                source: format!("name algorithm {other:?} is not supported; use SHA-256").into(),
            }
            .into());
        }
    };
    let mut name = id.to_be_bytes().to_vec();
    name.extend_from_slice(&digest);
    Ok(name)
}

/// The creation template for a new key: unrestricted, scheme NULL (the scheme is chosen per
/// signature), fixedTPM/fixedParent, sensitive data made by the TPM, user auth by value.
/// RSA keys that may decrypt get the decrypt attribute too (which also allows raw RSA, used
/// for host-encoded PSS).
pub(crate) fn template(
    algorithm: KeyAlgorithm,
    usages: KeyUsages,
) -> Option<tss_esapi::Result<Public>> {
    let decrypt = usages.decrypt && algorithm.family() == KeyFamily::Rsa;
    let attributes = match ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_sign_encrypt(usages.sign)
        .with_decrypt(decrypt)
        .build()
    {
        Ok(a) => a,
        Err(e) => return Some(Err(e)),
    };
    let builder = PublicBuilder::new()
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes);
    let rsa = |bits| {
        PublicRsaParametersBuilder::new()
            .with_scheme(RsaScheme::Null)
            .with_key_bits(bits)
            .with_exponent(RsaExponent::default())
            .with_symmetric(SymmetricDefinitionObject::Null)
            .with_is_signing_key(usages.sign)
            .with_is_decryption_key(decrypt)
            .with_restricted(false)
            .build()
    };
    let ecc = |curve| {
        PublicEccParametersBuilder::new()
            .with_ecc_scheme(EccScheme::Null)
            .with_curve(curve)
            .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
            .with_symmetric(SymmetricDefinitionObject::Null)
            // tss-esapi's builder refuses a NULL scheme on a signing key, which the TPM
            // allows (the scheme is then given with each TPM2_Sign). Its flags only steer
            // that check; the object attributes above make the key a signing key.
            .with_is_signing_key(false)
            .with_is_decryption_key(false)
            .with_restricted(false)
            .build()
    };
    let rsa_key = |bits| -> tss_esapi::Result<Public> {
        builder
            .clone()
            .with_public_algorithm(PublicAlgorithm::Rsa)
            .with_rsa_parameters(rsa(bits)?)
            .with_rsa_unique_identifier(PublicKeyRsa::default())
            .build()
    };
    let ecc_key = |curve| -> tss_esapi::Result<Public> {
        builder
            .clone()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_ecc_parameters(ecc(curve)?)
            .with_ecc_unique_identifier(EccPoint::default())
            .build()
    };
    match algorithm {
        KeyAlgorithm::Rsa2048 => Some(rsa_key(RsaKeyBits::Rsa2048)),
        KeyAlgorithm::Rsa3072 => Some(rsa_key(RsaKeyBits::Rsa3072)),
        KeyAlgorithm::Rsa4096 => Some(rsa_key(RsaKeyBits::Rsa4096)),
        KeyAlgorithm::EcP256 => Some(ecc_key(EccCurve::NistP256)),
        KeyAlgorithm::EcP384 => Some(ecc_key(EccCurve::NistP384)),
        _ => None,
    }
}

/// A key's algorithm, public key, usages and the one scheme it is fixed to (if any), read
/// from its public area. Restricted keys (storage keys, attestation keys) are not keys
/// hardkey can serve: `None`.
pub(crate) struct Described {
    pub(crate) algorithm: KeyAlgorithm,
    pub(crate) public_key: PublicKey,
    pub(crate) usages: KeyUsages,
    /// The hash a key's own scheme fixes (a key made with `-G rsa:rsassa-sha256`, say), and
    /// the kind of signature it allows.
    pub(crate) fixed_scheme: Option<(SignatureKind, HashAlgorithm)>,
    /// Raw RSA (TPM2_RSA_Decrypt with the NULL scheme) is allowed: an RSA decrypt key whose
    /// scheme is NULL.
    pub(crate) raw_rsa: bool,
}

fn usages(sign: bool, decrypt: bool) -> KeyUsages {
    let mut u = KeyUsages::SIGN;
    u.sign = sign;
    u.decrypt = decrypt;
    u
}

fn hash_of(h: HashingAlgorithm) -> Option<HashAlgorithm> {
    match h {
        HashingAlgorithm::Sha256 => Some(HashAlgorithm::Sha256),
        HashingAlgorithm::Sha384 => Some(HashAlgorithm::Sha384),
        HashingAlgorithm::Sha512 => Some(HashAlgorithm::Sha512),
        _ => None,
    }
}

/// The TPM hash for one of ours.
pub(crate) fn tpm_hash(h: HashAlgorithm) -> HashingAlgorithm {
    match h {
        HashAlgorithm::Sha384 => HashingAlgorithm::Sha384,
        HashAlgorithm::Sha512 => HashingAlgorithm::Sha512,
        // SHA-256, and any hash added to hardkey later until mapped here (its digest length
        // check then fails before the TPM sees it).
        _ => HashingAlgorithm::Sha256,
    }
}

/// Describes a public area; `Ok(None)` for objects that are not usable keys (restricted,
/// sealed data, symmetric).
pub(crate) fn describe(public: &Public) -> Result<Option<Described>> {
    if public.object_attributes().restricted() {
        return Ok(None);
    }
    describe_any(public)
}

/// The public key of any RSA or ECC public area, restricted keys (storage keys, attestation
/// keys) included; `Ok(None)` for other objects.
pub(crate) fn public_key_of(public: &Public) -> Result<Option<PublicKey>> {
    Ok(describe_any(public)?.map(|d| d.public_key))
}

/// [`describe`] without the restricted check.
fn describe_any(public: &Public) -> Result<Option<Described>> {
    let attrs = public.object_attributes();
    let bad = |reason: String| -> Error {
        InvalidInput::KeyEncoding {
            what: "TPM public area".into(),
            source: reason.into(),
        }
        .into()
    };
    match public {
        Public::Rsa {
            parameters, unique, ..
        } => {
            let bits = u16::from(parameters.key_bits());
            let Some(algorithm) = KeyAlgorithm::rsa_with_bits(usize::from(bits)) else {
                return Err(bad(format!(
                    "RSA-{bits} keys are not supported (2048, 3072, 4096)"
                )));
            };
            let exponent = match parameters.exponent().value() {
                0 => 65_537,
                e => e,
            };
            let e_bytes = exponent.to_be_bytes();
            let first = e_bytes.iter().position(|b| *b != 0).unwrap_or(3);
            let public_key = PublicKey::from_rsa_components(unique.value(), &e_bytes[first..])?;
            let fixed_scheme = match parameters.rsa_scheme() {
                RsaScheme::RsaSsa(h) => {
                    hash_of(h.hashing_algorithm()).map(|h| (SignatureKind::RsaPkcs1v15, h))
                }
                RsaScheme::RsaPss(h) => {
                    hash_of(h.hashing_algorithm()).map(|h| (SignatureKind::RsaPss, h))
                }
                _ => None,
            };
            let null_scheme = matches!(parameters.rsa_scheme(), RsaScheme::Null);
            Ok(Some(Described {
                algorithm,
                public_key,
                usages: usages(attrs.sign_encrypt(), attrs.decrypt()),
                fixed_scheme,
                raw_rsa: attrs.decrypt() && null_scheme,
            }))
        }
        Public::Ecc {
            parameters, unique, ..
        } => {
            let algorithm = match parameters.ecc_curve() {
                EccCurve::NistP256 => KeyAlgorithm::EcP256,
                EccCurve::NistP384 => KeyAlgorithm::EcP384,
                other => return Err(bad(format!("curve {other:?} is not supported"))),
            };
            let field = algorithm.bits().div_ceil(8);
            let mut point = vec![0x04];
            for coord in [unique.x().value(), unique.y().value()] {
                if coord.len() > field {
                    return Err(bad("EC point coordinate longer than the field".into()));
                }
                point.resize(point.len() + field - coord.len(), 0);
                point.extend_from_slice(coord);
            }
            let public_key = PublicKey::from_ec_point(algorithm, &point)?;
            let fixed_scheme = match parameters.ecc_scheme() {
                EccScheme::EcDsa(h) => {
                    hash_of(h.hashing_algorithm()).map(|h| (SignatureKind::Ecdsa, h))
                }
                _ => None,
            };
            Ok(Some(Described {
                algorithm,
                public_key,
                usages: usages(attrs.sign_encrypt(), false),
                fixed_scheme,
                raw_rsa: false,
            }))
        }
        _ => Ok(None),
    }
}

/// The TPM scheme for one of ours.
pub(crate) fn tpm_scheme(
    scheme: SignatureScheme,
) -> Option<tss_esapi::structures::SignatureScheme> {
    use tss_esapi::structures::SignatureScheme as S;
    // EdDSA (no pre-hash) has no TPM 2.0 scheme.
    let hash_scheme = HashScheme::new(tpm_hash(scheme.hash()?));
    match scheme.kind() {
        SignatureKind::RsaPkcs1v15 => Some(S::RsaSsa { hash_scheme }),
        SignatureKind::RsaPss => Some(S::RsaPss { hash_scheme }),
        SignatureKind::Ecdsa => Some(S::EcDsa { hash_scheme }),
        _ => None,
    }
}

/// Builds the [`KeyInfo`] of a described key.
pub(crate) fn key_info(
    described: &Described,
    name: &[u8],
    label: Option<String>,
    uri: Option<KeyUri>,
    policy: KeyPolicy,
    pss_available: bool,
) -> KeyInfo {
    let mut info = KeyInfo::new(
        KeyId::new(name.to_vec()),
        described.public_key.clone(),
        described.usages,
        policy,
    )
    .with_label(label)
    .with_uri(uri);
    info.signature_schemes.retain(|s| {
        let fixed_ok = described
            .fixed_scheme
            .is_none_or(|(kind, hash)| s.kind() == kind && s.hash() == Some(hash));
        let pss_ok = s.kind() != SignatureKind::RsaPss || pss_available;
        fixed_ok && pss_ok
    });
    info
}

/// The URI of a key.
pub(crate) fn key_uri(key: Tpm2Key, tcti: Option<&str>) -> KeyUri {
    let uri = Tpm2Uri::new(key);
    KeyUri::Tpm2(match tcti {
        Some(t) => uri.with_tcti(t),
        None => uri,
    })
}

/// The label of a key file: its name without `.tss2.pem` / `.pem`.
pub(crate) fn file_label(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let stem = name
        .strip_suffix(".tss2.pem")
        .or_else(|| name.strip_suffix(".pem"))
        .unwrap_or(name);
    Some(stem.to_owned())
}

/// Checks a label used as a key file name.
pub(crate) fn check_label(label: &str) -> Result<()> {
    let ok = !label.is_empty()
        && label.len() <= 128
        && !label.starts_with('.')
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '+'));
    if ok {
        Ok(())
    } else {
        Err(InvalidInput::Config {
            what: "key label",
            reason: "a TPM key's label names its key file: use 1-128 letters, digits and \
                     -_.@+, not starting with a dot",
        }
        .into())
    }
}

/// An `Unsupported` error for a scheme a key cannot do on this TPM.
pub(crate) fn pss_refused(device: &str, scheme: SignatureScheme) -> Error {
    Unsupported::SchemeOnDevice {
        scheme,
        device: device.to_owned(),
        reason: "this TPM signs RSA-PSS with a salt other than the hash length (TLS 1.3 needs \
                 hash length), and the key does not allow raw RSA (decrypt attribute with a \
                 NULL scheme) for host-side PSS encoding",
    }
    .into()
}
