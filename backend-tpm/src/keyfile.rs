//! The `TSS2 PRIVATE KEY` PEM format of tpm2-openssl, tpm2-tss-engine and
//! openssl_tpm2_engine (draft-bottomley-tpm2-keys): a key's public and private TPM blobs and
//! its parent, so the same file loads in hardkey and in `openssl -provider tpm2`.
//!
//! ```text
//! TPMKey ::= SEQUENCE {
//!     type        OBJECT IDENTIFIER,          -- 2.23.133.10.1.3 loadable key, .5 sealed data
//!     emptyAuth   [0] EXPLICIT BOOLEAN OPTIONAL,
//!     policy      [1] EXPLICIT SEQUENCE OF TPMPolicy OPTIONAL,
//!     secret      [2] EXPLICIT OCTET STRING OPTIONAL,
//!     authPolicy  [3] EXPLICIT SEQUENCE OF TPMAuthPolicy OPTIONAL,
//!     description [4] EXPLICIT UTF8String OPTIONAL,
//!     rsaParent   [5] EXPLICIT BOOLEAN OPTIONAL,
//!     parent      INTEGER,                     -- 0x40000001 (owner primary) or persistent
//!     pubkey      OCTET STRING,                -- TPM2B_PUBLIC
//!     privkey     OCTET STRING }               -- TPM2B_PRIVATE
//! ```
//!
//! hardkey writes only the fields tpm2-openssl 1.x reads (type, emptyAuth, parent, pubkey,
//! privkey), plus, for sealed data only, the `policy` the object's authPolicy was made from:
//!
//! ```text
//! TPMPolicy ::= SEQUENCE {
//!     commandCode   [0] EXPLICIT INTEGER,       -- TPM_CC_PolicyPCR, TPM_CC_PolicyAuthValue
//!     commandPolicy [1] EXPLICIT OCTET STRING } -- the command's parameters, marshalled
//! ```
//!
//! It rejects files carrying any other field, and keys (as opposed to sealed data) with a
//! policy.

use der::asn1::{Any, ObjectIdentifier, OctetString};
use der::{Decode, Encode, Sequence, Tagged};
use hardkey_api::{Error, InvalidInput, Result};
use tss_esapi::structures::{Private, Public};
use tss_esapi::traits::{Marshall, UnMarshall};

use crate::pcr::PcrSelection;

/// The PEM label.
pub const PEM_LABEL: &str = "TSS2 PRIVATE KEY";

/// `id-loadablekey`.
const LOADABLE_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.10.1.3");
/// `id-importablekey` (a key wrapped for a TPM, to be imported: not supported).
const IMPORTABLE_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.10.1.4");
/// `id-sealedkey`: sealed data.
const SEALED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.10.1.5");

/// What a key file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFileKind {
    /// A signing/decryption key.
    Key,
    /// A sealed data object.
    Sealed,
}

/// `TPM_CC_PolicyPCR`.
const CC_POLICY_PCR: u32 = 0x0000_017F;
/// `TPM_CC_PolicyAuthValue`.
const CC_POLICY_AUTH_VALUE: u32 = 0x0000_016B;

/// One command of the policy a sealed object's authPolicy was computed from, replayed in a
/// policy session to unseal it (draft-bottomley-tpm2-keys `TPMPolicy`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyStep {
    /// `TPM2_PolicyPCR`: the PCRs must hold the values whose digest is `pcr_digest`
    /// (SHA-256 of the selected PCR values, in selection order). Stored as the marshalled
    /// `TPM2B_DIGEST pcrDigest` followed by the `TPML_PCR_SELECTION pcrs`.
    Pcr {
        /// The digest of the PCR values at sealing time.
        pcr_digest: Vec<u8>,
        /// The PCRs.
        pcrs: PcrSelection,
    },
    /// `TPM2_PolicyAuthValue`: the object's auth value is proven with an HMAC (never sent).
    AuthValue,
}

impl PolicyStep {
    /// The command code and marshalled parameters.
    fn encode(&self) -> Result<(u32, Vec<u8>)> {
        match self {
            Self::Pcr { pcr_digest, pcrs } => {
                let mut out = with_size(pcr_digest)?;
                out.extend_from_slice(&pcrs.marshall());
                Ok((CC_POLICY_PCR, out))
            }
            Self::AuthValue => Ok((CC_POLICY_AUTH_VALUE, Vec::new())),
        }
    }

    fn decode(code: u32, params: &[u8], origin: &str) -> Result<Self> {
        match code {
            CC_POLICY_PCR => {
                let (size, rest) = params
                    .split_first_chunk::<2>()
                    .ok_or_else(|| bad(origin, "TPM2_PolicyPCR policy is cut short"))?;
                let size = usize::from(u16::from_be_bytes(*size));
                if size > 64 || rest.len() < size {
                    return Err(bad(
                        origin,
                        "TPM2_PolicyPCR digest is cut short or too long",
                    ));
                }
                let (digest, rest) = rest.split_at(size);
                let (pcrs, rest) = PcrSelection::unmarshall(rest)?;
                if !rest.is_empty() {
                    return Err(bad(origin, "TPM2_PolicyPCR policy has trailing bytes"));
                }
                Ok(Self::Pcr {
                    pcr_digest: digest.to_vec(),
                    pcrs,
                })
            }
            CC_POLICY_AUTH_VALUE if params.is_empty() => Ok(Self::AuthValue),
            _ => Err(bad(
                origin,
                format_args!(
                    "uses policy command {code:#x}; hardkey supports sealed data with \
                     TPM2_PolicyPCR and TPM2_PolicyAuthValue policies"
                ),
            )),
        }
    }
}

/// A TPM object's blobs, as stored in a key file.
#[derive(Clone, Debug)]
pub struct KeyFile {
    /// Key or sealed data.
    pub kind: KeyFileKind,
    /// Whether the object's auth value is empty.
    pub empty_auth: bool,
    /// The parent: `0x40000001` for the owner-hierarchy primary made from the standard
    /// template, or a persistent handle.
    pub parent: u32,
    /// The public area.
    pub public: Public,
    /// The private blob (encrypted by the parent).
    pub private: Private,
    /// The policy the object's authPolicy was made from, in order; empty for objects
    /// authorized by their auth value alone. Only sealed data may have one.
    pub policy: Vec<PolicyStep>,
}

#[derive(Sequence)]
struct TpmPolicyAsn1 {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT")]
    command_code: u32,
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT")]
    command_policy: OctetString,
}

#[derive(Sequence)]
struct TpmKeyAsn1 {
    key_type: ObjectIdentifier,
    /// A BOOLEAN, read leniently: tpm2-openssl writes TRUE as 0x01 (BER), not DER's 0xFF.
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    empty_auth: Option<Any>,
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", optional = "true")]
    policy: Option<Vec<TpmPolicyAsn1>>,
    #[asn1(context_specific = "2", tag_mode = "EXPLICIT", optional = "true")]
    secret: Option<Any>,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
    auth_policy: Option<Any>,
    #[asn1(context_specific = "4", tag_mode = "EXPLICIT", optional = "true")]
    description: Option<Any>,
    #[asn1(context_specific = "5", tag_mode = "EXPLICIT", optional = "true")]
    rsa_parent: Option<bool>,
    parent: u32,
    pubkey: OctetString,
    privkey: OctetString,
}

fn bad(what: &str, reason: impl std::fmt::Display) -> Error {
    bad_because(what, reason.to_string().into())
}

/// [`bad`] with the DER codec's error kept as the typed source.
fn bad_der(what: &str, e: der::Error) -> Error {
    bad_because(what, Box::new(e))
}

fn bad_because(what: &str, source: hardkey_api::BoxError) -> Error {
    InvalidInput::KeyEncoding {
        what: format!("TSS2 key file {what}"),
        source,
    }
    .into()
}

impl KeyFile {
    /// Parses a PEM file's text.
    pub fn from_pem(text: &str, origin: &str) -> Result<Self> {
        let (label, der) = der::pem::decode_vec(text.as_bytes()).map_err(|e| {
            bad(
                origin,
                format_args!("is not PEM ({e}); expected -----BEGIN {PEM_LABEL}-----"),
            )
        })?;
        if label != PEM_LABEL {
            return Err(bad(
                origin,
                format_args!(
                    "holds a '{label}' PEM block, not '{PEM_LABEL}' (a TPM key from \
                     tpm2-openssl, tpm2-tss-engine or hardkey)"
                ),
            ));
        }
        Self::from_der(&der, origin)
    }

    /// Parses the DER structure.
    pub fn from_der(der: &[u8], origin: &str) -> Result<Self> {
        let asn1 = TpmKeyAsn1::from_der(der).map_err(|e| bad_der(origin, e))?;
        let kind = match asn1.key_type {
            t if t == LOADABLE_KEY => KeyFileKind::Key,
            t if t == SEALED_DATA => KeyFileKind::Sealed,
            t if t == IMPORTABLE_KEY => {
                return Err(bad(
                    origin,
                    "is an importable (wrapped) key: load it with tpm2_import first",
                ));
            }
            t => return Err(bad(origin, format_args!("has unknown key type {t}"))),
        };
        if (kind == KeyFileKind::Key && asn1.policy.is_some()) || asn1.auth_policy.is_some() {
            return Err(bad(
                origin,
                "uses a policy session; hardkey supports keys with an auth value or none",
            ));
        }
        let policy = asn1
            .policy
            .unwrap_or_default()
            .iter()
            .map(|p| PolicyStep::decode(p.command_code, p.command_policy.as_bytes(), origin))
            .collect::<Result<Vec<_>>>()?;
        if asn1.secret.is_some() || asn1.rsa_parent == Some(true) {
            return Err(bad(
                origin,
                "needs a duplication secret or an RSA parent; hardkey supports keys under \
                 the standard ECC storage root key",
            ));
        }
        let public = Public::unmarshall(tpm2b(asn1.pubkey.as_bytes(), origin, "public area")?)
            .map_err(|e| bad(origin, format_args!("public area: {e}")))?;
        let private =
            Private::try_from(tpm2b(asn1.privkey.as_bytes(), origin, "private blob")?.to_vec())
                .map_err(|e| bad(origin, format_args!("private blob: {e}")))?;
        Ok(Self {
            kind,
            empty_auth: match &asn1.empty_auth {
                None => false,
                Some(any) if any.tag() == der::Tag::Boolean => any.value().iter().any(|b| *b != 0),
                Some(_) => return Err(bad(origin, "emptyAuth is not a BOOLEAN")),
            },
            parent: asn1.parent,
            public,
            private,
            policy,
        })
    }

    /// The DER structure.
    pub fn to_der(&self) -> Result<Vec<u8>> {
        let encode = |e: der::Error| bad_der("encoding", e);
        if self.kind == KeyFileKind::Key && !self.policy.is_empty() {
            return Err(bad(
                "encoding",
                "a loadable key with a policy (hardkey writes policies for sealed data only)",
            ));
        }
        let policy = self
            .policy
            .iter()
            .map(|step| {
                let (command_code, params) = step.encode()?;
                Ok(TpmPolicyAsn1 {
                    command_code,
                    command_policy: OctetString::new(params).map_err(encode)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let public = self
            .public
            .marshall()
            .map_err(|e| bad("encoding", format_args!("public area: {e}")))?;
        let asn1 = TpmKeyAsn1 {
            key_type: match self.kind {
                KeyFileKind::Key => LOADABLE_KEY,
                KeyFileKind::Sealed => SEALED_DATA,
            },
            empty_auth: match self.empty_auth {
                true => Some(Any::encode_from(&true).map_err(encode)?),
                false => None,
            },
            policy: (!policy.is_empty()).then_some(policy),
            secret: None,
            auth_policy: None,
            description: None,
            rsa_parent: None,
            parent: self.parent,
            pubkey: OctetString::new(with_size(&public)?).map_err(encode)?,
            privkey: OctetString::new(with_size(self.private.value())?).map_err(encode)?,
        };
        asn1.to_der().map_err(encode)
    }

    /// The PEM text.
    pub fn to_pem(&self) -> Result<String> {
        let der = self.to_der()?;
        der::pem::encode_string(PEM_LABEL, der::pem::LineEnding::LF, &der)
            .map_err(|e| bad("encoding", e))
    }
}

/// The body of a TPM2B (a big-endian u16 size, then that many bytes). Not tss-esapi's
/// `PublicBuffer::unmarshall`, which ignores bytes after the size it reads: a key file with
/// trailing bytes is refused here. (`Private` has no marshalling in tss-esapi 7.)
fn tpm2b<'a>(bytes: &'a [u8], origin: &str, what: &str) -> Result<&'a [u8]> {
    match bytes {
        [hi, lo, rest @ ..] if usize::from(u16::from_be_bytes([*hi, *lo])) == rest.len() => {
            Ok(rest)
        }
        _ => Err(bad(
            origin,
            format_args!("{what}: the TPM2B size does not match its length"),
        )),
    }
}

/// `bytes` as a TPM2B.
fn with_size(bytes: &[u8]) -> Result<Vec<u8>> {
    let size = u16::try_from(bytes.len()).map_err(|_| bad("encoding", "blob over 64 KiB"))?;
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_other_pem_and_garbage() {
        let err = KeyFile::from_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "k.pem",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("'PRIVATE KEY' PEM block"), "{err}");
        assert!(KeyFile::from_pem("not pem", "k.pem").is_err());
        assert!(KeyFile::from_der(&[0x30, 0x00], "k.der").is_err());
    }

    fn sealed(policy: Vec<PolicyStep>) -> KeyFile {
        use tss_esapi::attributes::ObjectAttributesBuilder;
        use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
        use tss_esapi::structures::{
            Digest, KeyedHashScheme, PublicBuilder, PublicKeyedHashParameters,
        };
        let public = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::KeyedHash)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(
                ObjectAttributesBuilder::new()
                    .with_fixed_tpm(true)
                    .with_fixed_parent(true)
                    .build()
                    .unwrap(),
            )
            .with_auth_policy(Digest::try_from(vec![7u8; 32]).unwrap())
            .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
            .with_keyed_hash_unique_identifier(Digest::default())
            .build()
            .unwrap();
        KeyFile {
            kind: KeyFileKind::Sealed,
            empty_auth: false,
            parent: 0x8100_0001,
            public,
            private: Private::try_from(vec![1u8, 2, 3]).unwrap(),
            policy,
        }
    }

    #[test]
    fn sealed_data_policies_round_trip_in_the_draft_encoding() {
        let pcrs: PcrSelection = "sha256:0,7".parse().unwrap();
        let steps = vec![
            PolicyStep::Pcr {
                pcr_digest: vec![0xaa; 32],
                pcrs,
            },
            PolicyStep::AuthValue,
        ];
        let file = sealed(steps.clone());
        let der = file.to_der().unwrap();
        // policy [1] { SEQUENCE OF { SEQUENCE { [0] { INTEGER 0x017F },
        //   [1] { OCTET STRING (00 20 || 32 x aa || 00000001 000b 03 810000) } }, ... } }
        let mut pcr_policy = vec![0x30, 0x36, 0xa0, 0x04, 0x02, 0x02, 0x01, 0x7f];
        pcr_policy.extend_from_slice(&[0xa1, 0x2e, 0x04, 0x2c, 0x00, 0x20]);
        pcr_policy.extend_from_slice(&[0xaa; 32]);
        pcr_policy.extend_from_slice(&[0, 0, 0, 1, 0x00, 0x0b, 3, 0x81, 0, 0]);
        let auth_value_policy = [
            0x30, 0x0a, 0xa0, 0x04, 0x02, 0x02, 0x01, 0x6b, 0xa1, 0x02, 0x04, 0x00,
        ];
        let mut expected = vec![0xa1, 0x46, 0x30, 0x44];
        expected.extend_from_slice(&pcr_policy);
        expected.extend_from_slice(&auth_value_policy);
        assert!(
            der.windows(expected.len()).any(|w| w == expected),
            "policy field not found in {}",
            hex::encode(&der)
        );
        let back = KeyFile::from_pem(&file.to_pem().unwrap(), "s.pem").unwrap();
        assert_eq!(back.kind, KeyFileKind::Sealed);
        assert_eq!(back.policy, steps);
        assert!(!back.empty_auth);
        // Without a policy, no policy field at all (what tpm2-openssl reads).
        let plain = sealed(Vec::new()).to_der().unwrap();
        assert_eq!(KeyFile::from_der(&plain, "p").unwrap().policy, []);
        assert!(plain.len() < der.len() - 70);
    }

    #[test]
    fn keys_with_policies_are_refused() {
        let mut key = sealed(vec![PolicyStep::AuthValue]);
        key.kind = KeyFileKind::Key;
        let err = key.to_der().unwrap_err().to_string();
        assert!(err.contains("sealed data only"), "{err}");
        // A loadable key someone else wrote with a policy.
        let mut der = sealed(vec![PolicyStep::AuthValue]).to_der().unwrap();
        let sealed_oid = SEALED_DATA.to_der().unwrap();
        let loadable_oid = LOADABLE_KEY.to_der().unwrap();
        let at = der
            .windows(sealed_oid.len())
            .position(|w| w == sealed_oid)
            .unwrap();
        der[at..at + loadable_oid.len()].copy_from_slice(&loadable_oid);
        let err = KeyFile::from_der(&der, "k.pem").unwrap_err().to_string();
        assert!(err.contains("uses a policy session"), "{err}");
    }

    #[test]
    fn unknown_policy_commands_are_refused() {
        let err = PolicyStep::decode(0x0000_0171, &[], "s.pem")
            .unwrap_err()
            .to_string();
        assert!(err.contains("0x171"), "{err}");
        assert!(PolicyStep::decode(CC_POLICY_AUTH_VALUE, &[1], "s").is_err());
        assert!(PolicyStep::decode(CC_POLICY_PCR, &[0, 32, 1], "s").is_err());
        let mut trailing = vec![0, 1, 9];
        trailing.extend_from_slice(&"sha256:1".parse::<PcrSelection>().unwrap().marshall());
        assert!(PolicyStep::decode(CC_POLICY_PCR, &trailing, "s").is_ok());
        trailing.push(0);
        assert!(PolicyStep::decode(CC_POLICY_PCR, &trailing, "s").is_err());
    }

    #[test]
    fn tpm2b_sizes_are_checked() {
        assert_eq!(tpm2b(&[0, 2, 7, 8], "f", "x").unwrap(), &[7, 8]);
        assert!(tpm2b(&[0, 3, 7, 8], "f", "x").is_err());
        assert!(tpm2b(&[0], "f", "x").is_err());
        assert_eq!(with_size(&[1, 2, 3]).unwrap(), vec![0, 3, 1, 2, 3]);
    }
}
