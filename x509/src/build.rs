//! Certificate signing requests and self-signed certificates, signed through a hardkey key.
//!
//! Each is built the way x509-cert's builders do it (encode the TBS structure, sign its DER,
//! assemble), with the signature awaited from the key in between.

use std::fmt;
use std::future::Future;

use der::asn1::{ObjectIdentifier, SetOfVec};
use der::referenced::OwnedToRef;
use der::{Decode, Encode};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::builder::Builder;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectKeyIdentifier,
};
use x509_cert::ext::{AsExtension, Extension};
use x509_cert::request::{CertReq, CertReqInfo, ExtensionReq};
use x509_cert::{Certificate as X509Certificate, TbsCertificate, Version};

use super::name::{Subject, SubjectAltNames};
use super::signer::X509Signer;
use super::validity::{random_serial, validity};
use hardkey_api::PrivateKey;
use hardkey_api::{Error, InvalidInput, Result};
use hardkey_api::{KeyFamily, SignatureScheme};

/// `id-kp-serverAuth` (RFC 5280 section 4.2.1.12).
pub(crate) const SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");
/// `id-kp-clientAuth`.
pub(crate) const CLIENT_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");

pub(crate) fn encoding(what: &'static str) -> impl FnOnce(der::Error) -> Error {
    move |e| {
        InvalidInput::Encoding {
            what,
            source: Box::new(e),
        }
        .into()
    }
}

/// What a certificate signing request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CsrOptions {
    /// The subject.
    pub subject: Subject,
    /// Subject alternative names, requested in an `extensionRequest` attribute (none if empty).
    pub sans: SubjectAltNames,
    /// The signature scheme; `None` for the key's [`default_scheme`](super::default_scheme).
    pub scheme: Option<SignatureScheme>,
}

impl CsrOptions {
    /// A request for `subject`, without alternative names, with the default scheme.
    pub fn new(subject: Subject) -> Self {
        Self {
            subject,
            sans: SubjectAltNames::new(),
            scheme: None,
        }
    }

    /// Sets the subject alternative names.
    pub fn sans(mut self, sans: SubjectAltNames) -> Self {
        self.sans = sans;
        self
    }

    /// Sets the signature scheme (`None`: the key's default).
    pub fn scheme(mut self, scheme: Option<SignatureScheme>) -> Self {
        self.scheme = scheme;
        self
    }
}

/// What a self-signed certificate says.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertOptions {
    /// The subject, which is also the issuer.
    pub subject: Subject,
    /// Subject alternative names (no extension if empty).
    pub sans: SubjectAltNames,
    /// Validity in days from now (see [`validity`](super::validity)); at least 1.
    pub days: u32,
    /// A CA certificate (`CA:TRUE`, keyCertSign and cRLSign) rather than a TLS leaf.
    pub ca: bool,
    /// The signature scheme; `None` for the key's [`default_scheme`](super::default_scheme).
    pub scheme: Option<SignatureScheme>,
}

impl CertOptions {
    /// The validity of a certificate when none is given: 365 days.
    pub const DEFAULT_DAYS: u32 = 365;

    /// A leaf certificate for `subject`, valid [`CertOptions::DEFAULT_DAYS`], without
    /// alternative names, with the default scheme.
    pub fn new(subject: Subject) -> Self {
        Self {
            subject,
            sans: SubjectAltNames::new(),
            days: Self::DEFAULT_DAYS,
            ca: false,
            scheme: None,
        }
    }

    /// Sets the subject alternative names.
    pub fn sans(mut self, sans: SubjectAltNames) -> Self {
        self.sans = sans;
        self
    }

    /// Sets the validity in days.
    pub fn days(mut self, days: u32) -> Self {
        self.days = days;
        self
    }

    /// Makes a CA certificate (`true`) or a leaf (`false`).
    pub fn ca(mut self, ca: bool) -> Self {
        self.ca = ca;
        self
    }

    /// Sets the signature scheme (`None`: the key's default).
    pub fn scheme(mut self, scheme: Option<SignatureScheme>) -> Self {
        self.scheme = scheme;
        self
    }
}

/// A signed PKCS#10 certificate signing request.
#[derive(Clone, PartialEq, Eq)]
pub struct Csr {
    request: CertReq,
    der: Vec<u8>,
    scheme: SignatureScheme,
}

impl Csr {
    /// The DER encoding.
    pub fn as_der(&self) -> &[u8] {
        &self.der
    }

    /// The DER encoding, copied.
    pub fn to_der(&self) -> Vec<u8> {
        self.der.clone()
    }

    /// The PEM encoding (`-----BEGIN CERTIFICATE REQUEST-----`), as `openssl req` writes it.
    pub fn to_pem(&self) -> String {
        pem("CERTIFICATE REQUEST", &self.der)
    }

    /// The request as x509-cert's type.
    pub fn as_x509(&self) -> &CertReq {
        &self.request
    }

    /// The scheme it was signed with.
    pub fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

impl fmt::Debug for Csr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Csr")
            .field("subject", &self.request.info.subject.to_string())
            .field("scheme", &self.scheme)
            .field("der_len", &self.der.len())
            .finish()
    }
}

/// A signed X.509 certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    certificate: X509Certificate,
    der: Vec<u8>,
    scheme: SignatureScheme,
}

impl Certificate {
    /// A signed certificate from its parts, encoded.
    pub(crate) fn from_x509(certificate: X509Certificate, scheme: SignatureScheme) -> Result<Self> {
        let der = certificate.to_der().map_err(encoding("certificate"))?;
        Ok(Self {
            certificate,
            der,
            scheme,
        })
    }

    /// The DER encoding.
    pub fn as_der(&self) -> &[u8] {
        &self.der
    }

    /// The DER encoding, copied.
    pub fn to_der(&self) -> Vec<u8> {
        self.der.clone()
    }

    /// The PEM encoding (`-----BEGIN CERTIFICATE-----`).
    pub fn to_pem(&self) -> String {
        pem("CERTIFICATE", &self.der)
    }

    /// The certificate as x509-cert's type (serial number, validity, extensions...).
    pub fn as_x509(&self) -> &X509Certificate {
        &self.certificate
    }

    /// The scheme it was signed with.
    pub fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tbs = &self.certificate.tbs_certificate;
        f.debug_struct("Certificate")
            .field("subject", &tbs.subject.to_string())
            .field("serial", &tbs.serial_number.to_string())
            .field("not_after", &tbs.validity.not_after.to_string())
            .field("scheme", &self.scheme)
            .finish()
    }
}

fn pem(label: &'static str, der: &[u8]) -> String {
    // Encoding bytes into a String cannot fail except on length overflow.
    der::pem::encode_string(label, der::pem::LineEnding::LF, der).unwrap_or_default()
}

fn subject_public_key_info<K: PrivateKey>(key: &K) -> Result<SubjectPublicKeyInfoOwned> {
    SubjectPublicKeyInfoOwned::from_der(key.info().public_key.der())
        .map_err(encoding("SubjectPublicKeyInfo"))
}

/// Builds a PKCS#10 certificate signing request for `key` and signs it through the key.
///
/// The request carries the subject, the key's public key and, when `options.sans` is not
/// empty, an `extensionRequest` attribute with the `subjectAltName` extension; nothing else
/// (the CA decides key usages and constraints). It is signed with `options.scheme`, or the
/// key's [`default_scheme`](super::default_scheme).
///
/// The future owns what it needs (it is `Send + 'static`, like the key's own futures) and
/// fails with the key's [`Unsupported`](hardkey_api::Unsupported) error when it cannot sign with the
/// scheme, or with the key's error when signing fails.
pub fn build_csr<K: PrivateKey>(
    key: &K,
    options: &CsrOptions,
) -> impl Future<Output = Result<Csr>> + Send + 'static + use<K> {
    let job = X509Signer::with_optional_scheme(key, options.scheme).and_then(|signer| {
        let subject = options.subject.as_name();
        let mut attributes = SetOfVec::new();
        if !options.sans.is_empty() {
            let san = options
                .sans
                .to_extension_value()
                .to_extension(subject, &[])
                .map_err(encoding("subjectAltName extension"))?;
            let request = ExtensionReq(vec![san])
                .try_into()
                .map_err(encoding("extensionRequest attribute"))?;
            attributes
                .insert(request)
                .map_err(encoding("extensionRequest attribute"))?;
        }
        let info = CertReqInfo {
            version: x509_cert::request::Version::V1,
            subject: subject.clone(),
            public_key: subject_public_key_info(key)?,
            attributes,
        };
        let tbs = info
            .to_der()
            .map_err(encoding("CertificationRequestInfo"))?;
        let algorithm = signer.algorithm_identifier()?;
        Ok((info, algorithm, signer.scheme(), signer.sign(&tbs)))
    });
    async move {
        let (info, algorithm, scheme, signing) = job?;
        let signature = signing.await?.to_bit_string()?;
        let request = CertReq {
            info,
            algorithm,
            signature,
        };
        let der = request
            .to_der()
            .map_err(encoding("certificate signing request"))?;
        Ok(Csr {
            request,
            der,
            scheme,
        })
    }
}

/// Builds an X.509 v3 certificate for `key`, issued by itself, and signs it through the key.
///
/// Issuer and subject are `options.subject`; the serial number is [`random_serial`]; the
/// validity is [`validity`]`(options.days)` (backdated by [`BACKDATE`](super::BACKDATE)). The
/// extensions are OpenSSL's usual ones:
///
/// | extension | leaf (`ca: false`) | CA (`ca: true`) |
/// |---|---|---|
/// | subjectKeyIdentifier | SHA-1 of the public key (RFC 5280 method 1) | same |
/// | authorityKeyIdentifier | keyid = the subject key identifier | same |
/// | basicConstraints (critical) | `CA:FALSE` | `CA:TRUE` |
/// | keyUsage (critical) | digitalSignature, + keyEncipherment for RSA keys | keyCertSign, cRLSign |
/// | extendedKeyUsage (not critical) | serverAuth, clientAuth | — |
/// | subjectAltName | `options.sans`, if any | same |
///
/// Errors and the future's properties are as for [`build_csr`]; `options.days` of 0 is refused.
///
/// [`validity`]: super::validity()
/// [`random_serial`]: super::random_serial
pub fn self_signed<K: PrivateKey>(
    key: &K,
    options: &CertOptions,
) -> impl Future<Output = Result<Certificate>> + Send + 'static + use<K> {
    let job = X509Signer::with_optional_scheme(key, options.scheme).and_then(|signer| {
        let subject = options.subject.as_name().clone();
        let spki = subject_public_key_info(key)?;
        let extensions = self_signed_extensions(key, &spki, options)?;
        let algorithm = signer.algorithm_identifier()?;
        let tbs = TbsCertificate {
            version: Version::V3,
            serial_number: random_serial()?,
            signature: algorithm.clone(),
            issuer: subject.clone(),
            validity: validity(options.days)?,
            subject,
            subject_public_key_info: spki,
            issuer_unique_id: None,
            subject_unique_id: None,
            extensions: Some(extensions),
        };
        let tbs_der = tbs.to_der().map_err(encoding("TBSCertificate"))?;
        Ok((tbs, algorithm, signer.scheme(), signer.sign(&tbs_der)))
    });
    async move {
        let (tbs_certificate, signature_algorithm, scheme, signing) = job?;
        let signature = signing.await?.to_bit_string()?;
        let certificate = X509Certificate {
            tbs_certificate,
            signature_algorithm,
            signature,
        };
        let der = certificate.to_der().map_err(encoding("certificate"))?;
        Ok(Certificate {
            certificate,
            der,
            scheme,
        })
    }
}

fn self_signed_extensions<K: PrivateKey>(
    key: &K,
    spki: &SubjectPublicKeyInfoOwned,
    options: &CertOptions,
) -> Result<Vec<Extension>> {
    let subject = options.subject.as_name();
    let ski = SubjectKeyIdentifier::try_from(spki.owned_to_ref())
        .map_err(encoding("subjectKeyIdentifier"))?;
    let aki = AuthorityKeyIdentifier {
        key_identifier: Some(ski.0.clone()),
        authority_cert_issuer: None,
        authority_cert_serial_number: None,
    };
    let basic = BasicConstraints {
        ca: options.ca,
        path_len_constraint: None,
    };
    let usage = if options.ca {
        KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign)
    } else {
        match key.info().algorithm.family() {
            KeyFamily::Rsa => KeyUsage(KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment),
            // EC keys, and any family added later, only sign.
            _ => KeyUsage(KeyUsages::DigitalSignature.into()),
        }
    };

    // Criticality as RFC 5280 and the CA/Browser Forum ask, whatever x509-cert's defaults:
    // basicConstraints and keyUsage critical, extendedKeyUsage not (OpenSSL's choice too),
    // subjectAltName not (the subject is never empty).
    let mut extensions = Vec::new();
    push(
        &mut extensions,
        subject,
        &ski,
        false,
        "subjectKeyIdentifier",
    )?;
    push(
        &mut extensions,
        subject,
        &aki,
        false,
        "authorityKeyIdentifier",
    )?;
    push(&mut extensions, subject, &basic, true, "basicConstraints")?;
    push(&mut extensions, subject, &usage, true, "keyUsage")?;
    if !options.ca {
        let eku = ExtendedKeyUsage(vec![SERVER_AUTH, CLIENT_AUTH]);
        push(&mut extensions, subject, &eku, false, "extendedKeyUsage")?;
    }
    if !options.sans.is_empty() {
        let san = options.sans.to_extension_value();
        push(&mut extensions, subject, &san, false, "subjectAltName")?;
    }
    Ok(extensions)
}

pub(crate) fn push(
    extensions: &mut Vec<Extension>,
    subject: &x509_cert::name::Name,
    extension: &impl AsExtension,
    critical: bool,
    what: &'static str,
) -> Result<()> {
    let encoded = extension
        .to_extension(subject, extensions)
        .map_err(encoding(what))?;
    extensions.push(Extension {
        critical,
        ..encoded
    });
    Ok(())
}

/// Finishes one of x509-cert's builders ([`CertificateBuilder`], [`RequestBuilder`]) whose
/// signer is an [`X509Signer`]: encodes the TBS structure, awaits the key's signature and
/// assembles the result — what `Builder::build` does with a synchronous signer, and what
/// x509-cert 0.3 calls `AsyncBuilder::build_async`.
///
/// Use it for what [`self_signed`] does not cover, e.g. a hardkey CA key issuing a leaf
/// certificate for another public key with `Profile::Leaf`.
///
/// [`CertificateBuilder`]: x509_cert::builder::CertificateBuilder
/// [`RequestBuilder`]: x509_cert::builder::RequestBuilder
pub fn build_async<'k, K, B>(
    mut builder: B,
) -> impl Future<Output = Result<B::Output>> + Send + use<'k, K, B>
where
    K: PrivateKey,
    B: Builder<Signer = X509Signer<'k, K>> + Send,
{
    let signing = builder
        .finalize()
        .map_err(encoding("to-be-signed structure"))
        .map(|tbs| builder.signer().sign(&tbs));
    async move {
        let signature = signing?.await?.to_bit_string()?;
        builder.assemble(signature).map_err(|e| {
            InvalidInput::Encoding {
                what: "signed structure",
                source: Box::new(e),
            }
            .into()
        })
    }
}
