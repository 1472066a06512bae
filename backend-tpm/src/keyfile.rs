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
//! privkey): it rejects files carrying any other.

use der::asn1::{Any, ObjectIdentifier, OctetString};
use der::{Decode, Encode, Sequence, Tagged};
use hardkey_api::{Error, InvalidInput, Result};
use tss_esapi::structures::{Private, Public};
use tss_esapi::traits::{Marshall, UnMarshall};

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
}

#[derive(Sequence)]
struct TpmKeyAsn1 {
    key_type: ObjectIdentifier,
    /// A BOOLEAN, read leniently: tpm2-openssl writes TRUE as 0x01 (BER), not DER's 0xFF.
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    empty_auth: Option<Any>,
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", optional = "true")]
    policy: Option<Any>,
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
    InvalidInput::KeyEncoding {
        what: format!("TSS2 key file {what}"),
        source: reason.to_string().into(),
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
        let asn1 = TpmKeyAsn1::from_der(der).map_err(|e| bad(origin, e))?;
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
        if asn1.policy.is_some() || asn1.auth_policy.is_some() {
            return Err(bad(
                origin,
                "uses a policy session; hardkey supports keys with an auth value or none",
            ));
        }
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
        })
    }

    /// The DER structure.
    pub fn to_der(&self) -> Result<Vec<u8>> {
        let encode = |e: der::Error| bad("encoding", e);
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
            policy: None,
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

/// The body of a TPM2B (a big-endian u16 size, then that many bytes).
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

    #[test]
    fn tpm2b_sizes_are_checked() {
        assert_eq!(tpm2b(&[0, 2, 7, 8], "f", "x").unwrap(), &[7, 8]);
        assert!(tpm2b(&[0, 3, 7, 8], "f", "x").is_err());
        assert!(tpm2b(&[0], "f", "x").is_err());
        assert_eq!(with_size(&[1, 2, 3]).unwrap(), vec![0, 3, 1, 2, 3]);
    }
}
