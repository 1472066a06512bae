//! TPM2_Certify evidence: its file format and its verification in software (no TPM needed).
//!
//! See [`Evidence`] for the file format and [`Evidence::verify`] for the checks.

use std::fmt;

use base64ct::{Base64, Encoding as _};
use hardkey_api::verify::{VerifyError, verify_signature};
use hardkey_api::{Error, InvalidInput, PublicKey, Result, SignatureScheme};
use serde::{Deserialize, Serialize};
use tss_esapi::structures::{Attest, AttestInfo, Public};
use tss_esapi::traits::{Marshall, UnMarshall};

use crate::keys::{public_key_of, tpm_name};

/// The `format` of evidence files this version writes and reads.
pub const EVIDENCE_FORMAT: &str = "hardkey-tpm2-certify-v1";

/// The largest evidence file read (an RSA AK, an RSA key and a 2 KiB EK certificate take
/// under 6 KiB).
pub const MAX_EVIDENCE_SIZE: usize = 64 * 1024;

/// The most `extraData` (the verifier's nonce) a `TPMS_ATTEST` holds: `TPM2B_DATA` is at
/// most the size of a `TPMT_HA` (a SHA-512 digest and its algorithm).
pub const MAX_NONCE_SIZE: usize = 64;

/// `TPM_GENERATED_VALUE`: the magic a TPM puts in front of every structure it signs.
const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_CERTIFY`.
const TPM_ST_ATTEST_CERTIFY: u16 = 0x8017;

/// TPM2_Certify evidence: what `hardkey attest` writes: the `TPMS_ATTEST` a TPM signed with an
/// attestation key (AK), the signature, the AK's public area and public key, the TPM's EK
/// certificate when it has one, and the attested key's name and public area. Its file is one
/// JSON object ([`Evidence::to_json`], [`Evidence::from_json`]):
///
/// ```text
/// {
///   "format": "hardkey-tpm2-certify-v1",
///   "attest": BASE64,                      -- TPMS_ATTEST, the bytes the AK signed
///   "signature": {
///     "scheme": "ecdsa-p256-sha256",       -- or "rsa-pkcs1-sha256"
///     "value": BASE64                      -- DER ECDSA-Sig-Value / PKCS#1 v1.5 signature
///   },
///   "ak": {
///     "public": BASE64,                    -- TPM2B_PUBLIC of the AK
///     "public_key_pem": "-----BEGIN PUBLIC KEY-----..."   -- its SubjectPublicKeyInfo
///   },
///   "ek_certificate": BASE64,              -- DER X.509 from NV 0x01c0000a/0x01c00002; optional
///   "key": {
///     "name": HEX,                         -- TPM name: nameAlg || H(TPMT_PUBLIC)
///     "public": BASE64                     -- TPM2B_PUBLIC of the attested key
///   }
/// }
/// ```
///
/// Base64 is the standard alphabet with padding; the signature value is exactly what
/// `openssl dgst -verify` and `tpm2_certify -f plain` use. Unknown fields are refused.
///
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Evidence {
    /// The marshalled `TPMS_ATTEST` the AK signed.
    pub attest: Vec<u8>,
    /// The signature over `attest`: a DER ECDSA signature or a PKCS#1 v1.5 signature.
    pub signature: Vec<u8>,
    /// The signature's scheme (the AK's).
    pub scheme: SignatureScheme,
    /// The AK's `TPM2B_PUBLIC`.
    pub ak_public: Vec<u8>,
    /// The AK's public key.
    pub ak_public_key: PublicKey,
    /// The TPM's EK certificate (DER), when its NV index holds one.
    pub ek_certificate: Option<Vec<u8>>,
    /// The attested key's TPM name.
    pub key_name: Vec<u8>,
    /// The attested key's `TPM2B_PUBLIC`.
    pub key_public: Vec<u8>,
}

/// What the verifier expects of the evidence.
#[derive(Clone, Copy, Debug)]
pub struct Expected<'a> {
    /// The public key the evidence must name (the key a CSR or a certificate carries).
    pub key: &'a PublicKey,
    /// The AK the verifier trusts; without it the evidence's own AK is used, which proves
    /// only that some restricted signing key signed it.
    pub ak: Option<&'a PublicKey>,
    /// The nonce the verifier gave (`extraData`); without it any `extraData` is accepted.
    pub nonce: Option<&'a [u8]>,
}

/// What verified evidence says.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verified {
    /// The attested key's TPM name.
    pub key_name: Vec<u8>,
    /// Its qualified name (it depends on the key's parents).
    pub key_qualified_name: Vec<u8>,
    /// All of the attested key's object attributes (`fixedTPM`, `sign`...).
    pub key_attributes: Vec<&'static str>,
    /// The AK's object attributes.
    pub ak_attributes: Vec<&'static str>,
    /// The AK's public key.
    pub ak_public_key: PublicKey,
    /// Whether the AK was the one the verifier gave ([`Expected::ak`]).
    pub ak_pinned: bool,
    /// The qualified name of the AK as the TPM reported it.
    pub qualified_signer: Vec<u8>,
    /// The `extraData` (the nonce), empty when none was given.
    pub extra_data: Vec<u8>,
    /// Whether `extraData` was checked against a nonce ([`Expected::nonce`]).
    pub nonce_checked: bool,
    /// The TPM's clock (ms) when it signed.
    pub clock: u64,
    /// TPM resets since the last clear.
    pub reset_count: u32,
    /// TPM restarts since the last reset.
    pub restart_count: u32,
    /// Whether the clock has not gone back since it was last set.
    pub safe: bool,
    /// The TPM's firmware version (vendor-defined).
    pub firmware_version: u64,
    /// Whether the evidence carries an EK certificate (not checked here: chain it to the
    /// manufacturer's CA yourself).
    pub has_ek_certificate: bool,
}

/// Why evidence does not verify: the check that failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum AttestError {
    /// A part of the evidence does not parse.
    Malformed {
        /// Which part (`attest`, `ak.public`...).
        part: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The evidence's AK public area and its PEM are different keys.
    AkInconsistent {
        /// The fingerprint of the key in the public area.
        public_area: String,
        /// The fingerprint of the PEM key.
        pem: String,
    },
    /// The AK is not a restricted signing key: it may sign any data, so a signature of it
    /// over a TPMS_ATTEST proves nothing.
    AkNotRestricted {
        /// The AK's attributes.
        attributes: Vec<&'static str>,
    },
    /// The AK is not the one the verifier trusts.
    WrongAk {
        /// The fingerprint of the trusted AK.
        expected: String,
        /// The fingerprint of the evidence's AK.
        found: String,
    },
    /// The signature does not verify with the AK.
    Signature(VerifyError),
    /// The scheme cannot be the AK's.
    SchemeMismatch {
        /// The evidence's scheme.
        scheme: SignatureScheme,
        /// The AK's algorithm.
        ak: hardkey_api::KeyAlgorithm,
    },
    /// The signed data is not a structure the TPM made (magic is not TPM_GENERATED_VALUE).
    NotTpmGenerated {
        /// The magic found.
        magic: u32,
    },
    /// The attestation is not of TPM2_Certify.
    NotCertify {
        /// The structure tag found.
        tag: u16,
    },
    /// The certified name is not the name of the attested key's public area.
    NameMismatch {
        /// Which name disagrees (the evidence's `key.name` field, or the public area's).
        what: &'static str,
        /// The name the TPM certified (hex).
        certified: String,
        /// The other name (hex).
        other: String,
    },
    /// The attested key is not the key the verifier expects.
    WrongKey {
        /// The fingerprint of the expected key.
        expected: String,
        /// The fingerprint of the attested key.
        found: String,
    },
    /// The attested key lacks attributes that make it a TPM-generated, non-exportable key.
    MissingAttributes {
        /// The attributes missing.
        missing: Vec<&'static str>,
        /// The attributes it has.
        present: Vec<&'static str>,
    },
    /// The extraData is not the verifier's nonce (a replay, or another request's evidence).
    NonceMismatch {
        /// The nonce expected (hex).
        expected: String,
        /// The extraData found (hex).
        found: String,
    },
}

impl AttestError {
    /// Whether the evidence itself does not parse (bad input), as opposed to a check that
    /// failed on well-formed evidence.
    pub fn is_malformed(&self) -> bool {
        matches!(self, Self::Malformed { .. })
    }

    /// The name of the check that failed (`signature`, `nonce`...).
    pub fn check(&self) -> &'static str {
        match self {
            Self::Malformed { .. } => "format",
            Self::AkInconsistent { .. } => "ak-consistent",
            Self::AkNotRestricted { .. } => "ak-restricted",
            Self::WrongAk { .. } => "ak",
            Self::Signature(_) | Self::SchemeMismatch { .. } => "signature",
            Self::NotTpmGenerated { .. } => "magic",
            Self::NotCertify { .. } => "type",
            Self::NameMismatch { .. } => "name",
            Self::WrongKey { .. } => "key",
            Self::MissingAttributes { .. } => "attributes",
            Self::NonceMismatch { .. } => "nonce",
        }
    }
}

impl fmt::Display for AttestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed { part, reason } => {
                write!(f, "the evidence's {part} is malformed: {reason}")
            }
            Self::AkInconsistent { public_area, pem } => write!(
                f,
                "AK check failed: the evidence's AK public area ({public_area}) and its PEM \
                 ({pem}) are different keys; the evidence was altered"
            ),
            Self::AkNotRestricted { attributes } => write!(
                f,
                "AK check failed: the AK is not a restricted signing key (attributes: {}), so \
                 it could have signed data made outside the TPM; attest with an AK made by \
                 hardkey tpm ak create or tpm2_createak",
                attributes.join("|")
            ),
            Self::WrongAk { expected, found } => write!(
                f,
                "AK check failed: the evidence is signed by AK {found}, not the trusted AK \
                 {expected} given with --ak-pub"
            ),
            Self::Signature(e) => write!(
                f,
                "signature check failed: the AK's signature over the attestation does not \
                 verify ({e}); the attestation or the signature was altered"
            ),
            Self::SchemeMismatch { scheme, ak } => write!(
                f,
                "signature check failed: the evidence says {scheme}, which a {ak} AK cannot make"
            ),
            Self::NotTpmGenerated { magic } => write!(
                f,
                "magic check failed: the attestation starts with {magic:#010x}, not \
                 TPM_GENERATED_VALUE (0xff544347): the TPM did not make it"
            ),
            Self::NotCertify { tag } => write!(
                f,
                "type check failed: the attestation's type is {tag:#06x}, not \
                 TPM_ST_ATTEST_CERTIFY (0x8017): it is not the result of TPM2_Certify"
            ),
            Self::NameMismatch {
                what,
                certified,
                other,
            } => write!(
                f,
                "name check failed: the TPM certified the key named {certified}, but {what} \
                 is {other}"
            ),
            Self::WrongKey { expected, found } => write!(
                f,
                "key check failed: the attested key is {found}, not the expected public key \
                 {expected} given with --key-pub"
            ),
            Self::MissingAttributes { missing, present } => write!(
                f,
                "attribute check failed: the attested key lacks {} (it has {}); only a key \
                 with fixedTPM, fixedParent and sensitiveDataOrigin was made in the TPM and \
                 cannot leave it",
                missing.join(", "),
                present.join("|")
            ),
            Self::NonceMismatch { expected, found } => write!(
                f,
                "nonce check failed: the attestation's extraData is {}, not the nonce {expected}: \
                 the evidence was made for another request (or replayed)",
                if found.is_empty() { "empty" } else { found }
            ),
        }
    }
}

impl std::error::Error for AttestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Signature(e) => Some(e),
            _ => None,
        }
    }
}

/// The JSON form.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvidenceJson {
    format: String,
    attest: String,
    signature: SignatureJson,
    ak: AkJson,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ek_certificate: Option<String>,
    key: KeyJson,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureJson {
    scheme: String,
    value: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AkJson {
    public: String,
    public_key_pem: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyJson {
    name: String,
    public: String,
}

/// An evidence file that does not parse.
fn bad_file(origin: &str, source: impl Into<hardkey_api::BoxError>) -> Error {
    InvalidInput::KeyEncoding {
        what: format!("attestation evidence {origin}"),
        source: source.into(),
    }
    .into()
}

impl Evidence {
    /// The JSON text of the file (ends with a newline).
    pub fn to_json(&self) -> String {
        let json = EvidenceJson {
            format: EVIDENCE_FORMAT.to_owned(),
            attest: Base64::encode_string(&self.attest),
            signature: SignatureJson {
                scheme: self.scheme.name().to_owned(),
                value: Base64::encode_string(&self.signature),
            },
            ak: AkJson {
                public: Base64::encode_string(&self.ak_public),
                public_key_pem: self.ak_public_key.to_pem(),
            },
            ek_certificate: self.ek_certificate.as_deref().map(Base64::encode_string),
            key: KeyJson {
                name: hex::encode(&self.key_name),
                public: Base64::encode_string(&self.key_public),
            },
        };
        let mut text = serde_json::to_string_pretty(&json).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Parses an evidence file's text; `origin` (the file name) is used in errors. Only the
    /// file's form is checked here: [`Evidence::verify`] checks what it says.
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        if text.len() > MAX_EVIDENCE_SIZE {
            return Err(bad_file(
                origin,
                format!("is over {MAX_EVIDENCE_SIZE} bytes; it is not hardkey attest evidence"),
            ));
        }
        let json: EvidenceJson = serde_json::from_str(text).map_err(|e| {
            bad_file(
                origin,
                format!("is not the JSON hardkey attest writes ({e})"),
            )
        })?;
        if json.format != EVIDENCE_FORMAT {
            return Err(bad_file(
                origin,
                format!(
                    "has format {:?}; this hardkey reads {EVIDENCE_FORMAT:?}",
                    json.format.chars().take(64).collect::<String>()
                ),
            ));
        }
        let b64 = |field: &str, value: &str| {
            Base64::decode_vec(value)
                .map_err(|e| bad_file(origin, format!("field {field} is not base64 ({e})")))
        };
        let scheme: SignatureScheme = json
            .signature
            .scheme
            .parse()
            .map_err(|e: Error| bad_file(origin, format!("field signature.scheme: {e}")))?;
        let ak_public_key = {
            let (label, der) =
                der::pem::decode_vec(json.ak.public_key_pem.as_bytes()).map_err(|e| {
                    bad_file(origin, format!("field ak.public_key_pem is not PEM ({e})"))
                })?;
            if label != "PUBLIC KEY" {
                return Err(bad_file(
                    origin,
                    "field ak.public_key_pem is not a PUBLIC KEY PEM block",
                ));
            }
            PublicKey::from_spki_der(&der)
                .map_err(|e| bad_file(origin, format!("field ak.public_key_pem: {e}")))?
        };
        Ok(Self {
            attest: b64("attest", &json.attest)?,
            signature: b64("signature.value", &json.signature.value)?,
            scheme,
            ak_public: b64("ak.public", &json.ak.public)?,
            ak_public_key,
            ek_certificate: json
                .ek_certificate
                .as_deref()
                .map(|c| b64("ek_certificate", c))
                .transpose()?,
            key_name: hex::decode(&json.key.name)
                .map_err(|e| bad_file(origin, format!("field key.name is not hex ({e})")))?,
            key_public: b64("key.public", &json.key.public)?,
        })
    }

    /// The attested key's public key, as the evidence's `key.public` says (not verified: the
    /// verifier must bring the key it expects to [`Evidence::verify`]).
    pub fn key_public_key(&self) -> std::result::Result<PublicKey, AttestError> {
        area_key(&public_area(&self.key_public, "key.public")?, "key.public")
    }

    /// Checks the evidence against what the verifier expects.
    ///
    /// It checks, in this order, and fails naming the first check that does not
    /// hold ([`AttestError`]): the `TPMS_ATTEST`'s magic is `TPM_GENERATED_VALUE` and its type
    /// `TPM_ST_ATTEST_CERTIFY`, and every part parses strictly; the evidence's AK public area and
    /// PEM are the same key, that key is a restricted signing key (only then can nothing but the
    /// TPM have made a `TPMS_ATTEST` it signed) and, if given, the AK the verifier trusts; the
    /// signature over the `TPMS_ATTEST`; the certified name is the name computed from the attested
    /// key's public area (and the file's `key.name`); that public area's key is the one the
    /// verifier expects; its attributes include fixedTPM, fixedParent and sensitiveDataOrigin; the
    /// `extraData` is the verifier's nonce.
    pub fn verify(&self, expected: &Expected<'_>) -> std::result::Result<Verified, AttestError> {
        // Every part parses (strictly) before any check: the magic and type of the
        // attestation, then its structure and the public areas.
        let attest = parse_attest(&self.attest)?;
        let key_area = public_area(&self.key_public, "key.public")?;
        // The AK: its public area and PEM agree, it is a restricted signing key, and it is
        // the trusted one if the verifier has one.
        let ak_area = public_area(&self.ak_public, "ak.public")?;
        let ak_key = area_key(&ak_area, "ak.public")?;
        if ak_key != self.ak_public_key {
            return Err(AttestError::AkInconsistent {
                public_area: ak_key.fingerprint(),
                pem: self.ak_public_key.fingerprint(),
            });
        }
        let ak_attributes = attribute_names(&ak_area);
        let ak_attrs = ak_area.object_attributes();
        if !(ak_attrs.restricted() && ak_attrs.sign_encrypt() && !ak_attrs.decrypt()) {
            return Err(AttestError::AkNotRestricted {
                attributes: ak_attributes,
            });
        }
        if let Some(trusted) = expected.ak {
            if *trusted != ak_key {
                return Err(AttestError::WrongAk {
                    expected: trusted.fingerprint(),
                    found: ak_key.fingerprint(),
                });
            }
        }
        // The signature over the exact bytes.
        if !self.scheme.is_compatible_with(ak_key.algorithm()) {
            return Err(AttestError::SchemeMismatch {
                scheme: self.scheme,
                ak: ak_key.algorithm(),
            });
        }
        verify_signature(ak_key.der(), self.scheme, &self.attest, &self.signature)
            .map_err(AttestError::Signature)?;
        // What the TPM signed.
        let AttestInfo::Certify { info } = attest.attested() else {
            // parse_attest checked the tag.
            return Err(AttestError::NotCertify { tag: 0 });
        };
        let certified = info.name().value().to_vec();
        let computed = tpm_name(&key_area).map_err(|e| AttestError::Malformed {
            part: "key.public",
            reason: e.to_string(),
        })?;
        if certified != computed {
            return Err(AttestError::NameMismatch {
                what: "the name of the key's public area in the evidence",
                certified: hex::encode(&certified),
                other: hex::encode(&computed),
            });
        }
        if self.key_name != certified {
            return Err(AttestError::NameMismatch {
                what: "the evidence's key.name field",
                certified: hex::encode(&certified),
                other: hex::encode(&self.key_name),
            });
        }
        let key = area_key(&key_area, "key.public")?;
        if key != *expected.key {
            return Err(AttestError::WrongKey {
                expected: expected.key.fingerprint(),
                found: key.fingerprint(),
            });
        }
        let key_attributes = attribute_names(&key_area);
        let attrs = key_area.object_attributes();
        let missing: Vec<&'static str> = [
            (attrs.fixed_tpm(), "fixedTPM"),
            (attrs.fixed_parent(), "fixedParent"),
            (attrs.sensitive_data_origin(), "sensitiveDataOrigin"),
        ]
        .into_iter()
        .filter_map(|(has, name)| (!has).then_some(name))
        .collect();
        if !missing.is_empty() {
            return Err(AttestError::MissingAttributes {
                missing,
                present: key_attributes,
            });
        }
        let extra_data = attest.extra_data().value().to_vec();
        if let Some(nonce) = expected.nonce {
            if nonce != extra_data.as_slice() {
                return Err(AttestError::NonceMismatch {
                    expected: hex::encode(nonce),
                    found: hex::encode(&extra_data),
                });
            }
        }
        let clock = attest.clock_info();
        Ok(Verified {
            key_name: certified,
            key_qualified_name: info.qualified_name().value().to_vec(),
            key_attributes,
            ak_attributes,
            ak_public_key: ak_key,
            ak_pinned: expected.ak.is_some(),
            qualified_signer: attest.qualified_signer().value().to_vec(),
            extra_data,
            nonce_checked: expected.nonce.is_some(),
            clock: clock.clock(),
            reset_count: clock.reset_count(),
            restart_count: clock.restart_count(),
            safe: clock.safe(),
            firmware_version: attest.firmware_version(),
            has_ek_certificate: self.ek_certificate.is_some(),
        })
    }
}

/// Parses a `TPMS_ATTEST` strictly: magic and type first (to name what is wrong), then the
/// structure, which must marshal back to exactly the bytes given (tss-esapi's unmarshalling
/// ignores trailing bytes).
fn parse_attest(bytes: &[u8]) -> std::result::Result<Attest, AttestError> {
    let malformed = |reason: String| AttestError::Malformed {
        part: "attest",
        reason,
    };
    let (magic, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or_else(|| malformed("shorter than a TPMS_ATTEST header".into()))?;
    let magic = u32::from_be_bytes(*magic);
    if magic != TPM_GENERATED_VALUE {
        return Err(AttestError::NotTpmGenerated { magic });
    }
    let (tag, _) = rest
        .split_first_chunk::<2>()
        .ok_or_else(|| malformed("shorter than a TPMS_ATTEST header".into()))?;
    let tag = u16::from_be_bytes(*tag);
    if tag != TPM_ST_ATTEST_CERTIFY {
        return Err(AttestError::NotCertify { tag });
    }
    let attest =
        Attest::unmarshall(bytes).map_err(|e| malformed(format!("not a TPMS_ATTEST ({e})")))?;
    let again = attest
        .marshall()
        .map_err(|e| malformed(format!("not a TPMS_ATTEST ({e})")))?;
    if again != bytes {
        return Err(malformed(
            "has bytes after the TPMS_ATTEST structure, or is not in its canonical form".into(),
        ));
    }
    Ok(attest)
}

/// A `TPM2B_PUBLIC`'s public area, strictly (the size must cover exactly the rest, and the
/// area must marshal back to the same bytes).
fn public_area(bytes: &[u8], part: &'static str) -> std::result::Result<Public, AttestError> {
    let malformed = |reason: String| AttestError::Malformed { part, reason };
    let body = match bytes {
        [hi, lo, rest @ ..] if usize::from(u16::from_be_bytes([*hi, *lo])) == rest.len() => rest,
        _ => {
            return Err(malformed(
                "not a TPM2B_PUBLIC: its size does not match its length".into(),
            ));
        }
    };
    let public =
        Public::unmarshall(body).map_err(|e| malformed(format!("not a TPMT_PUBLIC ({e})")))?;
    let again = public
        .marshall()
        .map_err(|e| malformed(format!("not a TPMT_PUBLIC ({e})")))?;
    if again != body {
        return Err(malformed(
            "has bytes after the TPMT_PUBLIC structure, or is not in its canonical form".into(),
        ));
    }
    Ok(public)
}

/// The public key of a public area (RSA or ECC P-256/P-384).
fn area_key(public: &Public, part: &'static str) -> std::result::Result<PublicKey, AttestError> {
    match public_key_of(public) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(AttestError::Malformed {
            part,
            reason: "not an RSA or ECC key".into(),
        }),
        Err(e) => Err(AttestError::Malformed {
            part,
            reason: e.to_string(),
        }),
    }
}

/// The names of a public area's object attributes, as the TPM specification spells them.
pub(crate) fn attribute_names(public: &Public) -> Vec<&'static str> {
    let a = public.object_attributes();
    [
        (a.fixed_tpm(), "fixedTPM"),
        (a.st_clear(), "stClear"),
        (a.fixed_parent(), "fixedParent"),
        (a.sensitive_data_origin(), "sensitiveDataOrigin"),
        (a.user_with_auth(), "userWithAuth"),
        (a.admin_with_policy(), "adminWithPolicy"),
        (a.no_da(), "noDA"),
        (a.encrypted_duplication(), "encryptedDuplication"),
        (a.restricted(), "restricted"),
        (a.decrypt(), "decrypt"),
        (a.sign_encrypt(), "sign"),
        (a.x509_sign(), "x509sign"),
    ]
    .into_iter()
    .filter_map(|(set, name)| set.then_some(name))
    .collect()
}

/// `bytes` as a TPM2B.
pub(crate) fn tpm2b(bytes: &[u8]) -> Result<Vec<u8>> {
    let size = u16::try_from(bytes.len()).map_err(|_| InvalidInput::Malformed {
        what: "TPM2B",
        reason: "over 64 KiB",
    })?;
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hardkey_api::KeyAlgorithm;
    use p256::ecdsa::signature::Signer as _;
    use p256::ecdsa::{Signature as EcdsaSignature, SigningKey};
    use tss_esapi::attributes::{ObjectAttributes, ObjectAttributesBuilder};
    use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
    use tss_esapi::interface_types::ecc::EccCurve;
    use tss_esapi::structures::{
        EccParameter, EccPoint, EccScheme, HashScheme, KeyDerivationFunctionScheme, PublicBuilder,
        PublicEccParametersBuilder, SymmetricDefinitionObject,
    };

    fn signing_key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32].into()).unwrap()
    }

    fn attributes(fixed_tpm: bool, restricted: bool) -> ObjectAttributes {
        ObjectAttributesBuilder::new()
            .with_fixed_tpm(fixed_tpm)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_user_with_auth(true)
            .with_restricted(restricted)
            .with_sign_encrypt(true)
            .build()
            .unwrap()
    }

    /// A P-256 signing key's public area with `sk`'s public key.
    fn area(sk: &SigningKey, attrs: ObjectAttributes) -> Public {
        let point = sk.verifying_key().to_encoded_point(false);
        let scheme = if attrs.restricted() {
            EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256))
        } else {
            EccScheme::Null
        };
        PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attrs)
            .with_ecc_parameters(
                PublicEccParametersBuilder::new()
                    .with_symmetric(SymmetricDefinitionObject::Null)
                    .with_ecc_scheme(scheme)
                    .with_curve(EccCurve::NistP256)
                    .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                    .with_is_signing_key(attrs.restricted())
                    .with_is_decryption_key(false)
                    .with_restricted(attrs.restricted())
                    .build()
                    .unwrap(),
            )
            .with_ecc_unique_identifier(EccPoint::new(
                EccParameter::try_from(point.x().unwrap().to_vec()).unwrap(),
                EccParameter::try_from(point.y().unwrap().to_vec()).unwrap(),
            ))
            .build()
            .unwrap()
    }

    fn spki(sk: &SigningKey) -> PublicKey {
        let point = sk.verifying_key().to_encoded_point(false);
        PublicKey::from_ec_point(KeyAlgorithm::EcP256, point.as_bytes()).unwrap()
    }

    fn push_2b(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(bytes);
    }

    /// A TPMS_ATTEST as a TPM marshals it.
    fn attest_bytes(magic: u32, tag: u16, nonce: &[u8], name: &[u8]) -> Vec<u8> {
        let mut out = magic.to_be_bytes().to_vec();
        out.extend_from_slice(&tag.to_be_bytes());
        push_2b(&mut out, &[0x00, 0x0b].repeat(17)); // qualifiedSigner
        push_2b(&mut out, nonce);
        out.extend_from_slice(&1234u64.to_be_bytes()); // clock
        out.extend_from_slice(&5u32.to_be_bytes()); // resetCount
        out.extend_from_slice(&6u32.to_be_bytes()); // restartCount
        out.push(1); // safe
        out.extend_from_slice(&0x2016_0511_0014_0000u64.to_be_bytes());
        push_2b(&mut out, name);
        push_2b(&mut out, &[0x40, 0x00, 0x00, 0x07]); // qualifiedName (a handle-sized name)
        out
    }

    struct Case {
        ak: SigningKey,
        key: SigningKey,
        ak_area: Public,
        key_area: Public,
        magic: u32,
        tag: u16,
        nonce: Vec<u8>,
    }

    impl Case {
        fn new() -> Self {
            let (ak, key) = (signing_key(1), signing_key(2));
            Self {
                ak_area: area(&ak, attributes(true, true)),
                key_area: area(&key, attributes(true, false)),
                ak,
                key,
                magic: TPM_GENERATED_VALUE,
                tag: TPM_ST_ATTEST_CERTIFY,
                nonce: b"nonce-0123".to_vec(),
            }
        }

        fn evidence(&self) -> Evidence {
            let name = tpm_name(&self.key_area).unwrap();
            let attest = attest_bytes(self.magic, self.tag, &self.nonce, &name);
            let sig: EcdsaSignature = self.ak.sign(&attest);
            Evidence {
                attest,
                signature: sig.to_der().as_bytes().to_vec(),
                scheme: SignatureScheme::EcdsaP256Sha256,
                ak_public: tpm2b(&self.ak_area.marshall().unwrap()).unwrap(),
                ak_public_key: spki(&self.ak),
                ek_certificate: None,
                key_name: name,
                key_public: tpm2b(&self.key_area.marshall().unwrap()).unwrap(),
            }
        }

        fn verify(&self, evidence: &Evidence) -> std::result::Result<Verified, AttestError> {
            let key = spki(&self.key);
            let ak = spki(&self.ak);
            evidence.verify(&Expected {
                key: &key,
                ak: Some(&ak),
                nonce: Some(b"nonce-0123"),
            })
        }
    }

    fn check_fails(case: &Case, evidence: &Evidence, check: &str, needle: &str) {
        let e = case.verify(evidence).unwrap_err();
        assert_eq!(e.check(), check, "{e}");
        assert!(e.to_string().contains(needle), "{e}");
    }

    #[test]
    fn good_evidence_verifies_and_round_trips_through_json() {
        let case = Case::new();
        let evidence = case.evidence();
        let verified = case.verify(&evidence).unwrap();
        assert_eq!(verified.extra_data, b"nonce-0123");
        assert!(verified.ak_pinned && verified.nonce_checked);
        assert_eq!(verified.key_name, tpm_name(&case.key_area).unwrap());
        assert_eq!(
            verified.key_attributes,
            [
                "fixedTPM",
                "fixedParent",
                "sensitiveDataOrigin",
                "userWithAuth",
                "sign"
            ]
        );
        assert_eq!((verified.clock, verified.reset_count), (1234, 5));
        let text = evidence.to_json();
        assert!(text.contains(EVIDENCE_FORMAT), "{text}");
        assert_eq!(Evidence::from_json(&text, "e.json").unwrap(), evidence);
        // Without a trusted AK or a nonce the same evidence verifies, and says so.
        let key = spki(&case.key);
        let loose = evidence
            .verify(&Expected {
                key: &key,
                ak: None,
                nonce: None,
            })
            .unwrap();
        assert!(!loose.ak_pinned && !loose.nonce_checked);
    }

    #[test]
    fn a_tampered_attestation_fails_the_signature_check() {
        let case = Case::new();
        let mut evidence = case.evidence();
        // A byte of extraData.
        evidence.attest[6 + 2 + 34 + 2] ^= 1;
        check_fails(&case, &evidence, "signature", "signature check failed");
        let mut evidence = case.evidence();
        let last = evidence.signature.len() - 1;
        evidence.signature[last] ^= 1;
        check_fails(&case, &evidence, "signature", "does not verify");
    }

    #[test]
    fn another_key_or_nonce_or_ak_is_named() {
        let case = Case::new();
        let evidence = case.evidence();
        let other = spki(&signing_key(3));
        let ak = spki(&case.ak);
        let e = evidence
            .verify(&Expected {
                key: &other,
                ak: Some(&ak),
                nonce: None,
            })
            .unwrap_err();
        assert_eq!(e.check(), "key", "{e}");
        assert!(e.to_string().contains(&other.fingerprint()), "{e}");
        let key = spki(&case.key);
        let e = evidence
            .verify(&Expected {
                key: &key,
                ak: Some(&ak),
                nonce: Some(b"another"),
            })
            .unwrap_err();
        assert_eq!(e.check(), "nonce", "{e}");
        assert!(e.to_string().contains(&hex::encode("another")), "{e}");
        let e = evidence
            .verify(&Expected {
                key: &key,
                ak: Some(&other),
                nonce: None,
            })
            .unwrap_err();
        assert_eq!(e.check(), "ak", "{e}");
    }

    #[test]
    fn a_key_without_fixed_tpm_fails_the_attribute_check() {
        let mut case = Case::new();
        case.key_area = area(&case.key, attributes(false, false));
        let evidence = case.evidence();
        check_fails(&case, &evidence, "attributes", "lacks fixedTPM");
    }

    #[test]
    fn the_certified_name_must_be_the_public_areas() {
        let case = Case::new();
        let mut evidence = case.evidence();
        // Another key's public area in place of the certified one.
        let other = area(&signing_key(4), attributes(true, false));
        evidence.key_public = tpm2b(&other.marshall().unwrap()).unwrap();
        check_fails(&case, &evidence, "name", "name check failed");
        let mut evidence = case.evidence();
        evidence.key_name[5] ^= 1;
        check_fails(&case, &evidence, "name", "key.name field");
    }

    #[test]
    fn only_a_restricted_ak_counts() {
        let mut case = Case::new();
        case.ak_area = area(&case.ak, attributes(true, false));
        let evidence = case.evidence();
        check_fails(
            &case,
            &evidence,
            "ak-restricted",
            "not a restricted signing key",
        );
        let case = Case::new();
        let mut evidence = case.evidence();
        evidence.ak_public_key = spki(&signing_key(5));
        check_fails(&case, &evidence, "ak-consistent", "different keys");
    }

    #[test]
    fn magic_and_type_are_checked() {
        let mut case = Case::new();
        case.magic = 0x1234_5678;
        check_fails(&case, &case.evidence(), "magic", "TPM_GENERATED_VALUE");
        let mut case = Case::new();
        case.tag = 0x8018; // TPM_ST_ATTEST_QUOTE
        check_fails(&case, &case.evidence(), "type", "TPM_ST_ATTEST_CERTIFY");
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let case = Case::new();
        let mut evidence = case.evidence();
        evidence.attest.push(0);
        let sig: EcdsaSignature = case.ak.sign(&evidence.attest);
        evidence.signature = sig.to_der().as_bytes().to_vec();
        let e = case.verify(&evidence).unwrap_err();
        assert!(e.is_malformed(), "{e}");
        let mut evidence = case.evidence();
        evidence.key_public.push(0);
        assert!(case.verify(&evidence).unwrap_err().is_malformed());
    }

    #[test]
    fn bad_files_are_refused_naming_the_field() {
        let case = Case::new();
        let good = case.evidence().to_json();
        let cases = [
            (good.replacen("{", "{\"extra\": 1,", 1), "unknown field"),
            (
                good.replace(EVIDENCE_FORMAT, "something-else"),
                "something-else",
            ),
            (
                good.replacen("\"attest\": \"", "\"attest\": \"!", 1),
                "attest",
            ),
            (good.replace("ecdsa-p256-sha256", "md5"), "signature.scheme"),
            ("[]".to_owned(), "JSON"),
            ("x".repeat(MAX_EVIDENCE_SIZE + 1), "bytes"),
        ];
        for (text, needle) in cases {
            let e = Evidence::from_json(&text, "e.json").unwrap_err();
            assert!(e.to_string().contains(needle), "{needle}: {e}");
            assert_eq!(e.kind(), hardkey_api::ErrorKind::InvalidInput);
        }
    }
}
