//! PKCS#10 certificate signing requests from outside: parsed, and their self-signature
//! verified in software before anything is issued from them.

use std::fmt;

use der::asn1::{AnyRef, BitStringRef, ObjectIdentifier};
use der::{Decode, Encode, Sequence};
use spki::AlgorithmIdentifierRef;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::name::Name;
use x509_cert::request::{CertReq, ExtensionReq};

use super::error::IssueError;
use super::name::SubjectAltNames;
use hardkey_api::verify::VerifyReason;
use hardkey_api::{
    BoxError, HashAlgorithm, KeyAlgorithm, KeyFamily, PublicKey, SignatureKind, SignatureScheme,
};

/// `id-RSASSA-PSS` (RFC 4055).
const RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
/// `id-mgf1` (RFC 4055).
const MGF1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.8");
/// PKCS#9 `extensionRequest`.
const EXTENSION_REQUEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.14");
/// `id-ce-subjectAltName`.
const SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");

/// The request as signed: the `CertificationRequestInfo` kept as the bytes received, so the
/// signature is checked over exactly what the requester signed, not a re-encoding.
#[derive(Sequence)]
struct SignedRequest<'a> {
    info: AnyRef<'a>,
    algorithm: AlgorithmIdentifierRef<'a>,
    signature: BitStringRef<'a>,
}

/// A PKCS#10 certificate signing request whose self-signature verified: proof that whoever
/// made it holds the private key of [`CertRequest::public_key`].
#[derive(Clone, PartialEq, Eq)]
pub struct CertRequest {
    request: CertReq,
    der: Vec<u8>,
    public_key: PublicKey,
    signature: RequestSignature,
    sans: Option<SubjectAltNames>,
}

impl CertRequest {
    /// Parses a request in PEM (`-----BEGIN CERTIFICATE REQUEST-----`, or the older `NEW
    /// CERTIFICATE REQUEST`) or DER, and verifies its signature with its own public key.
    ///
    /// Refused: anything that is not a request; a signature algorithm other than RSA PKCS#1
    /// v1.5 or RSA-PSS with SHA-256/384/512 (any salt length) or ECDSA P-256/SHA-256,
    /// P-384/SHA-384; a public key hardkey does not know; a signature that does not verify
    /// ([`IssueError::RequestSignature`]); an `extensionRequest` that cannot be read.
    pub fn parse(bytes: &[u8]) -> Result<Self, IssueError> {
        let text = bytes.trim_ascii_start();
        if text.starts_with(b"-----BEGIN") {
            let (label, der) = der::pem::decode_vec(text).map_err(|e| IssueError::RequestPem {
                reason: format!("bad PEM: {e}"),
            })?;
            if label != "CERTIFICATE REQUEST" && label != "NEW CERTIFICATE REQUEST" {
                return Err(IssueError::RequestPem {
                    reason: format!(
                        "the PEM is a '{}', not a CERTIFICATE REQUEST",
                        label.escape_debug()
                    ),
                });
            }
            Self::from_der(&der)
        } else {
            Self::from_der(bytes)
        }
    }

    /// [`CertRequest::parse`] of a DER request.
    pub fn from_der(der: &[u8]) -> Result<Self, IssueError> {
        let encoding = |what| move |source| IssueError::RequestEncoding { what, source };
        let signed = SignedRequest::from_der(der).map_err(encoding("CertificationRequest"))?;
        let request = CertReq::from_der(der).map_err(encoding("CertificationRequest"))?;
        let spki = request
            .info
            .public_key
            .to_der()
            .map_err(encoding("SubjectPublicKeyInfo"))?;
        let public_key = PublicKey::from_spki_der(&spki).map_err(IssueError::RequestKey)?;
        let how = request_signature(&signed.algorithm, &public_key)?;
        let info = signed
            .info
            .to_der()
            .map_err(encoding("CertificationRequestInfo"))?;
        let signature = signed
            .signature
            .as_bytes()
            .ok_or(IssueError::RequestEncoding {
                what: "signature",
                source: der::Tag::BitString.value_error(),
            })?;
        verify(&spki, how, &public_key, &info, signature).map_err(|source| {
            IssueError::RequestSignature {
                algorithm: how.to_string(),
                source,
            }
        })?;
        let sans = requested_sans(&request)?;
        Ok(Self {
            request,
            der: der.to_vec(),
            public_key,
            signature: how,
            sans,
        })
    }

    /// The subject the request asks for.
    pub fn subject(&self) -> &Name {
        &self.request.info.subject
    }

    /// The public key the certificate is for.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// How the request is signed, for people: `rsa-pss-sha256 (salt 222)`,
    /// `ecdsa-with-SHA256`, `rsa-pkcs1-sha256`.
    pub fn signature_algorithm(&self) -> String {
        self.signature.to_string()
    }

    /// The subject alternative names of the request's `extensionRequest`, if it has any.
    pub fn requested_sans(&self) -> Option<&SubjectAltNames> {
        self.sans.as_ref()
    }

    /// The request as x509-cert's type.
    pub fn as_x509(&self) -> &CertReq {
        &self.request
    }

    /// The DER encoding, as received.
    pub fn as_der(&self) -> &[u8] {
        &self.der
    }
}

impl fmt::Debug for CertRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertRequest")
            .field("subject", &self.request.info.subject.to_string())
            .field("public_key", &self.public_key)
            .field("signature", &self.signature)
            .finish()
    }
}

/// How a request is signed, as far as verifying it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RequestSignature {
    /// RSA PKCS#1 v1.5 or RSA-PSS; for PSS the salt length its parameters give.
    Rsa {
        scheme: SignatureScheme,
        salt: Option<usize>,
    },
    /// ECDSA with any of the SHA-2 hashes on either curve: `openssl req` signs with SHA-256
    /// whatever the curve, so a P-384 request is often `ecdsa-with-SHA256`.
    Ecdsa { hash: HashAlgorithm },
    /// Pure EdDSA (RFC 8410: `id-Ed25519` / `id-Ed448`, no parameters).
    EdDsa { scheme: SignatureScheme },
}

impl fmt::Display for RequestSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rsa {
                scheme,
                salt: Some(salt),
            } => write!(f, "{scheme} (salt {salt})"),
            Self::Rsa { scheme, salt: None } => write!(f, "{scheme}"),
            Self::Ecdsa { hash } => write!(f, "ecdsa-with-{}", hash.name().to_uppercase()),
            Self::EdDsa { scheme } => write!(f, "{scheme}"),
        }
    }
}

const fn sha2(n: usize) -> Option<HashAlgorithm> {
    match n {
        0 => Some(HashAlgorithm::Sha256),
        1 => Some(HashAlgorithm::Sha384),
        2 => Some(HashAlgorithm::Sha512),
        _ => None,
    }
}

fn hash_by_oid(oid: &ObjectIdentifier) -> Option<HashAlgorithm> {
    let oid = oid.to_string();
    (0..3).filter_map(sha2).find(|h| h.oid() == oid)
}

/// `ecdsa-with-SHA256/384/512` (RFC 5758).
fn ecdsa_hash(oid: &ObjectIdentifier) -> Option<HashAlgorithm> {
    match oid.to_string().as_str() {
        "1.2.840.10045.4.3.2" => Some(HashAlgorithm::Sha256),
        "1.2.840.10045.4.3.3" => Some(HashAlgorithm::Sha384),
        "1.2.840.10045.4.3.4" => Some(HashAlgorithm::Sha512),
        _ => None,
    }
}

/// How a request's `signatureAlgorithm` signs with its key.
fn request_signature(
    algorithm: &AlgorithmIdentifierRef<'_>,
    key: &PublicKey,
) -> Result<RequestSignature, IssueError> {
    let unsupported = |detail: &str| IssueError::RequestAlgorithm {
        algorithm: format!("{}{detail}", algorithm.oid),
    };
    let on_key = || format!(" on a {} key", key.algorithm());
    if algorithm.oid == RSASSA_PSS {
        // rsa's decoder of RSASSA-PSS-params (RFC 4055).
        let params = algorithm
            .parameters
            .ok_or_else(|| unsupported(" without parameters (SHA-1)"))?;
        let params = params
            .decode_as::<rsa::pkcs1::RsaPssParams<'_>>()
            .map_err(|_| unsupported(" with unreadable parameters"))?;
        let hash = hash_by_oid(&params.hash.oid)
            .ok_or_else(|| unsupported(&format!(" with hash {}", params.hash.oid)))?;
        // RFC 4055: the hash's parameters are NULL or absent, here and inside MGF1.
        let null_or_absent = |p: Option<AnyRef<'_>>| p.is_none_or(|p| p.is_null());
        if !null_or_absent(params.hash.parameters) {
            return Err(unsupported(" with unexpected hash parameters"));
        }
        let mgf_hash = params.mask_gen.parameters;
        if params.mask_gen.oid != MGF1
            || mgf_hash.map(|h| h.oid) != Some(params.hash.oid)
            || !mgf_hash.is_some_and(|h| null_or_absent(h.parameters))
        {
            return Err(unsupported(
                " with a mask generation other than MGF1 of its hash",
            ));
        }
        if params.trailer_field != rsa::pkcs1::TrailerField::BC {
            return Err(unsupported(" with a trailer field other than 1"));
        }
        let scheme = SignatureScheme::ALL
            .into_iter()
            .find(|s| s.kind() == SignatureKind::RsaPss && s.hash() == Some(hash))
            .filter(|s| s.is_compatible_with(key.algorithm()))
            .ok_or_else(|| unsupported(&on_key()))?;
        return Ok(RequestSignature::Rsa {
            scheme,
            salt: Some(usize::from(params.salt_len)),
        });
    }
    if let Some(hash) = ecdsa_hash(&algorithm.oid) {
        // RFC 5758: no parameters.
        if algorithm.parameters.is_some() {
            return Err(unsupported(" with unexpected parameters"));
        }
        if key.algorithm().family() != KeyFamily::Ec {
            return Err(unsupported(&on_key()));
        }
        return Ok(RequestSignature::Ecdsa { hash });
    }
    let oid = algorithm.oid.to_string();
    if let Some(scheme) = SignatureScheme::ALL
        .into_iter()
        .find(|s| s.kind() == SignatureKind::EdDsa && s.signature_oid() == oid)
    {
        // RFC 8410 section 3: the parameters MUST be absent.
        if algorithm.parameters.is_some() {
            return Err(unsupported(" with parameters (RFC 8410: absent)"));
        }
        if !scheme.is_compatible_with(key.algorithm()) {
            return Err(unsupported(&on_key()));
        }
        return Ok(RequestSignature::EdDsa { scheme });
    }
    let scheme = SignatureScheme::ALL
        .into_iter()
        .filter(|s| s.kind() == SignatureKind::RsaPkcs1v15 && s.signature_oid() == oid)
        .find(|s| s.is_compatible_with(key.algorithm()))
        .ok_or_else(|| unsupported(&on_key()))?;
    // RSA PKCS#1 v1.5 takes NULL or absent parameters (RFC 4055).
    if algorithm.parameters.is_some_and(|p| !p.is_null()) {
        return Err(unsupported(" with unexpected parameters"));
    }
    Ok(RequestSignature::Rsa { scheme, salt: None })
}

/// Verifies with hardkey's software verifier where the signature is one of its schemes;
/// RSA-PSS with another salt length (OpenSSL signs requests with the longest) and ECDSA with
/// another curve-hash pairing with the `rsa`, `p256` and `p384` crates directly.
fn verify(
    spki: &[u8],
    how: RequestSignature,
    key: &PublicKey,
    message: &[u8],
    signature: &[u8],
) -> Result<(), BoxError> {
    match how {
        RequestSignature::Rsa {
            scheme,
            salt: Some(salt),
        } if Some(salt) != scheme.pss_salt_len() => {
            Ok(verify_pss(spki, scheme, salt, message, signature)?)
        }
        // The verifier's error names the scheme again; its reason is what is new.
        RequestSignature::Rsa { scheme, .. } | RequestSignature::EdDsa { scheme } => {
            hardkey_api::verify::verify_signature(spki, scheme, message, signature)
                .map_err(|e| e.reason.into())
        }
        RequestSignature::Ecdsa { hash } => Ok(verify_ecdsa(spki, key, hash, message, signature)?),
    }
}

fn verify_ecdsa(
    spki: &[u8],
    key: &PublicKey,
    hash: HashAlgorithm,
    message: &[u8],
    signature: &[u8],
) -> Result<(), VerifyReason> {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    use p256::pkcs8::DecodePublicKey;

    let digest = hardkey_api::encoding::digest(hash, message);
    let wrong_key = |expected| move |source| VerifyReason::WrongKey { expected, source };
    let mismatch = |e: p256::ecdsa::Error| VerifyReason::Mismatch(Box::new(e));
    match key.algorithm() {
        KeyAlgorithm::EcP256 => {
            let key = p256::ecdsa::VerifyingKey::from_public_key_der(spki)
                .map_err(wrong_key("a P-256"))?;
            let sig = p256::ecdsa::Signature::from_der(signature).map_err(VerifyReason::NotDer)?;
            key.verify_prehash(&digest, &sig).map_err(mismatch)
        }
        KeyAlgorithm::EcP384 => {
            let key = p384::ecdsa::VerifyingKey::from_public_key_der(spki)
                .map_err(wrong_key("a P-384"))?;
            let sig = p384::ecdsa::Signature::from_der(signature).map_err(VerifyReason::NotDer)?;
            key.verify_prehash(&digest, &sig).map_err(mismatch)
        }
        _ => Err(VerifyReason::UnknownScheme),
    }
}

fn verify_pss(
    spki: &[u8],
    scheme: SignatureScheme,
    salt: usize,
    message: &[u8],
    signature: &[u8],
) -> Result<(), VerifyReason> {
    use rsa::pkcs8::DecodePublicKey;
    use rsa::traits::PublicKeyParts;

    let key =
        rsa::RsaPublicKey::from_public_key_der(spki).map_err(|source| VerifyReason::WrongKey {
            expected: "an RSA",
            source,
        })?;
    if signature.len() != key.size() {
        return Err(VerifyReason::RsaLength {
            got: signature.len(),
            modulus: key.size(),
        });
    }
    let Some(hash) = scheme.hash() else {
        return Err(VerifyReason::UnknownScheme);
    };
    let digest = hardkey_api::encoding::digest(hash, message);
    let result = match hash {
        HashAlgorithm::Sha256 => key.verify(
            rsa::Pss::new_with_salt::<sha2::Sha256>(salt),
            &digest,
            signature,
        ),
        HashAlgorithm::Sha384 => key.verify(
            rsa::Pss::new_with_salt::<sha2::Sha384>(salt),
            &digest,
            signature,
        ),
        HashAlgorithm::Sha512 => key.verify(
            rsa::Pss::new_with_salt::<sha2::Sha512>(salt),
            &digest,
            signature,
        ),
        _ => return Err(VerifyReason::UnknownScheme),
    };
    result.map_err(|e| VerifyReason::Mismatch(Box::new(e)))
}

/// The `subjectAltName` of the request's `extensionRequest` attribute, if any. Other
/// requested extensions are ignored: the CA decides usages and constraints.
fn requested_sans(request: &CertReq) -> Result<Option<SubjectAltNames>, IssueError> {
    let encoding = |source| IssueError::RequestEncoding {
        what: "extensionRequest attribute",
        source,
    };
    for attribute in request.info.attributes.iter() {
        if attribute.oid != EXTENSION_REQUEST {
            continue;
        }
        for value in attribute.values.iter() {
            let extensions: ExtensionReq = value.decode_as().map_err(encoding)?;
            for extension in extensions.0 {
                if extension.extn_id == SUBJECT_ALT_NAME {
                    let names = SubjectAltName::from_der(extension.extn_value.as_bytes()).map_err(
                        |source| IssueError::RequestEncoding {
                            what: "requested subjectAltName",
                            source,
                        },
                    )?;
                    return Ok(Some(SubjectAltNames::from_names(names.0)));
                }
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

    use super::*;

    const PSS_MAX_SALT: &[u8] = include_bytes!("../testdata/openssl-rsa-pss-max-salt.csr");
    const P384_SHA256: &[u8] = include_bytes!("../testdata/openssl-p384.csr");

    #[test]
    fn openssl_requests_verify() {
        // `openssl req -new -sigopt rsa_padding_mode:pss`: RSA-PSS with the longest salt.
        let pss = CertRequest::parse(PSS_MAX_SALT).unwrap();
        assert_eq!(pss.signature_algorithm(), "rsa-pss-sha256 (salt 222)");
        // RFC 4514 order: the last RDN first (`-subj /CN=pss.example/O=hardkey test`).
        assert_eq!(pss.subject().to_string(), "O=hardkey test,CN=pss.example");
        assert_eq!(
            pss.requested_sans().unwrap().to_string(),
            "dns:pss.example,ip:10.1.2.3"
        );
        // `openssl req -new` on a P-384 key signs with SHA-256.
        let ec = CertRequest::parse(P384_SHA256).unwrap();
        assert_eq!(ec.signature_algorithm(), "ecdsa-with-SHA256");
        assert_eq!(ec.public_key().algorithm(), KeyAlgorithm::EcP384);
        assert_eq!(
            ec.requested_sans().unwrap().to_string(),
            "dns:ec.example,email:ops@example.com"
        );
        // DER reads the same.
        let der = CertRequest::from_der(ec.as_der()).unwrap();
        assert_eq!(der, ec);
    }

    /// Every single-bit change of the signed part or the signature is refused (or the
    /// request no longer parses): nothing is issued from a request its key did not sign.
    #[test]
    fn altered_requests_are_refused() {
        for pem in [PSS_MAX_SALT, P384_SHA256] {
            let der = CertRequest::parse(pem).unwrap().as_der().to_vec();
            let mut refused_by_signature = 0;
            for i in 4..der.len() {
                let mut bad = der.clone();
                bad[i] ^= 0x01;
                match CertRequest::from_der(&bad) {
                    Ok(_) => panic!("byte {i} altered, still accepted"),
                    Err(IssueError::RequestSignature { .. }) => refused_by_signature += 1,
                    Err(_) => {}
                }
            }
            assert!(
                refused_by_signature > der.len() / 2,
                "{refused_by_signature}"
            );
        }
        let mut der = CertRequest::parse(P384_SHA256).unwrap().as_der().to_vec();
        let last = der.len() - 3;
        der[last] ^= 0x40;
        let e = CertRequest::from_der(&der).unwrap_err().to_string();
        assert!(
            e.contains("ecdsa-with-SHA256 signature is invalid") && e.contains("refusing"),
            "{e}"
        );
    }

    #[test]
    fn other_inputs_are_refused_with_what_they_are() {
        let e =
            CertRequest::parse(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("'CERTIFICATE', not a CERTIFICATE REQUEST"),
            "{e}"
        );
        let e = CertRequest::parse(b"hello").unwrap_err().to_string();
        assert!(e.contains("PKCS#10"), "{e}");
        let e = CertRequest::parse(b"").unwrap_err().to_string();
        assert!(e.contains("PKCS#10"), "{e}");
    }
}
