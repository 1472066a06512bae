//! A small CA: certificates issued from verified PKCS#10 requests, signed by a hardkey key
//! whose certificate is the issuer.

use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime};

use der::oid::AssociatedOid;
use der::referenced::OwnedToRef;
use der::{Decode, Encode};
use x509_cert::Certificate as X509Certificate;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectKeyIdentifier,
};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};
use x509_cert::{TbsCertificate, Version};

use super::build::{CLIENT_AUTH, Certificate, SERVER_AUTH, push};
use super::error::IssueError;
use super::name::SubjectAltNames;
use super::request::CertRequest;
use super::signer::X509Signer;
use super::validity::{random_serial, validity_at};
use hardkey_api::{InvalidInput, KeyFamily, PrivateKey, PublicKey, SignatureScheme};

const DAY: u64 = 24 * 60 * 60;

/// The certificate of a CA key: the issuer of what [`issue`] signs. Its subject becomes the
/// issuer name, its subject key identifier the authority key identifier, its validity the
/// limit of what it issues.
#[derive(Clone, PartialEq, Eq)]
pub struct CaCertificate {
    certificate: X509Certificate,
    der: Vec<u8>,
    key_identifier: Option<Vec<u8>>,
    basic_constraints: Option<BasicConstraints>,
    key_usage: Option<KeyUsage>,
}

impl CaCertificate {
    /// Reads a certificate in PEM (the first `CERTIFICATE` of the file: a chain file whose
    /// first certificate is the CA's own works) or DER.
    pub fn parse(bytes: &[u8]) -> Result<Self, IssueError> {
        let text = bytes.trim_ascii_start();
        if text.starts_with(b"-----BEGIN") {
            let chain = X509Certificate::load_pem_chain(text)
                .map_err(|source| IssueError::CaCertificateEncoding { source })?;
            let first = chain
                .into_iter()
                .next()
                .ok_or(IssueError::NoCaCertificate)?;
            let der = first
                .to_der()
                .map_err(|source| IssueError::CaCertificateEncoding { source })?;
            Self::from_der(&der)
        } else {
            Self::from_der(bytes)
        }
    }

    /// [`CaCertificate::parse`] of a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, IssueError> {
        let bad = |source| IssueError::CaCertificateEncoding { source };
        let certificate = X509Certificate::from_der(der).map_err(bad)?;
        let mut key_identifier = None;
        let mut basic_constraints = None;
        let mut key_usage = None;
        for extension in certificate.tbs_certificate.extensions.iter().flatten() {
            let value = extension.extn_value.as_bytes();
            if extension.extn_id == SubjectKeyIdentifier::OID {
                key_identifier = Some(
                    SubjectKeyIdentifier::from_der(value)
                        .map_err(bad)?
                        .0
                        .as_bytes()
                        .to_vec(),
                );
            } else if extension.extn_id == BasicConstraints::OID {
                basic_constraints = Some(BasicConstraints::from_der(value).map_err(bad)?);
            } else if extension.extn_id == KeyUsage::OID {
                key_usage = Some(KeyUsage::from_der(value).map_err(bad)?);
            }
        }
        Ok(Self {
            certificate,
            der: der.to_vec(),
            key_identifier,
            basic_constraints,
            key_usage,
        })
    }

    /// The subject: the issuer of what this CA signs.
    pub fn subject(&self) -> &Name {
        &self.certificate.tbs_certificate.subject
    }

    /// The certificate as x509-cert's type.
    pub fn as_x509(&self) -> &X509Certificate {
        &self.certificate
    }

    /// The DER encoding.
    pub fn as_der(&self) -> &[u8] {
        &self.der
    }

    /// Checks that `key` is this certificate's public key.
    pub fn check_key(&self, key: &PublicKey) -> Result<(), IssueError> {
        let spki = self
            .certificate
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|source| IssueError::CaCertificateEncoding { source })?;
        if spki == key.der() {
            return Ok(());
        }
        Err(IssueError::CaKeyMismatch {
            subject: self.subject_text(),
            cert_key: hex::encode(hardkey_api::encoding::digest(
                hardkey_api::HashAlgorithm::Sha256,
                &spki,
            )),
            ca_key: key.fingerprint(),
        })
    }

    /// Checks that the certificate may issue certificates: basicConstraints `cA` true, and
    /// keyCertSign among its key usages when it has a keyUsage extension (RFC 5280 section
    /// 4.2.1.3, 4.2.1.9).
    pub fn check_is_ca(&self) -> Result<(), IssueError> {
        let not_a_ca = |reason| IssueError::NotACa {
            subject: self.subject_text(),
            reason,
        };
        match &self.basic_constraints {
            None => return Err(not_a_ca("it has no basicConstraints extension")),
            Some(b) if !b.ca => return Err(not_a_ca("its basicConstraints say CA:FALSE")),
            Some(_) => {}
        }
        match &self.key_usage {
            Some(usage) if !usage.key_cert_sign() => {
                Err(not_a_ca("its keyUsage does not include keyCertSign"))
            }
            _ => Ok(()),
        }
    }

    fn subject_text(&self) -> String {
        self.subject().to_string()
    }

    fn path_len(&self) -> Option<u8> {
        self.basic_constraints
            .as_ref()
            .and_then(|b| b.path_len_constraint)
    }
}

impl fmt::Debug for CaCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tbs = &self.certificate.tbs_certificate;
        f.debug_struct("CaCertificate")
            .field("subject", &tbs.subject.to_string())
            .field("not_after", &tbs.validity.not_after.to_string())
            .field("basic_constraints", &self.basic_constraints)
            .finish()
    }
}

/// What kind of certificate [`issue`] makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Profile {
    /// A TLS leaf: `CA:FALSE`; digitalSignature (and keyEncipherment for RSA keys);
    /// serverAuth and clientAuth.
    Leaf,
    /// An intermediate CA: `CA:TRUE` with the path length constraint (`None`: none);
    /// keyCertSign and cRLSign.
    Ca {
        /// How many CA certificates may follow it in a path (0: it issues only leaves).
        path_len: Option<u8>,
    },
}

/// How [`issue`] makes the certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct IssueOptions {
    /// Validity in days from now (at least 1). It must end before the CA certificate does:
    /// a longer one is refused ([`IssueError::ValidityBeyondCa`]), never shortened.
    pub days: u32,
    /// Leaf or CA.
    pub profile: Profile,
    /// The subject alternative names; `None` copies those the request asks for.
    pub sans: Option<SubjectAltNames>,
    /// The serial number; `None` for a [`random_serial`](super::random_serial).
    pub serial: Option<SerialNumber>,
    /// The scheme the CA key signs with; `None` for its [`default_scheme`](super::default_scheme).
    pub scheme: Option<SignatureScheme>,
    /// Refuse a CA certificate that is not marked as a CA ([`CaCertificate::check_is_ca`]).
    pub require_ca: bool,
}

impl IssueOptions {
    /// A leaf valid for 365 days, with the request's names, a random serial, the CA key's
    /// default scheme, from a certificate that must be a CA.
    pub fn new() -> Self {
        Self {
            days: 365,
            profile: Profile::Leaf,
            sans: None,
            serial: None,
            scheme: None,
            require_ca: true,
        }
    }

    /// Sets the validity in days.
    pub fn days(mut self, days: u32) -> Self {
        self.days = days;
        self
    }

    /// Sets the profile.
    pub fn profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self
    }

    /// Sets the subject alternative names (`None`: the request's).
    pub fn sans(mut self, sans: Option<SubjectAltNames>) -> Self {
        self.sans = sans;
        self
    }

    /// Sets the serial number (`None`: random).
    pub fn serial(mut self, serial: Option<SerialNumber>) -> Self {
        self.serial = serial;
        self
    }

    /// Sets the signature scheme (`None`: the CA key's default).
    pub fn scheme(mut self, scheme: Option<SignatureScheme>) -> Self {
        self.scheme = scheme;
        self
    }

    /// Whether the CA certificate must be marked as a CA.
    pub fn require_ca(mut self, require: bool) -> Self {
        self.require_ca = require;
        self
    }
}

impl Default for IssueOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// Issues a certificate for `request`'s public key and subject, signed by `ca_key`, whose
/// certificate is `ca`. [`issue_at`] with the current time.
pub fn issue<K: PrivateKey>(
    ca_key: &K,
    ca: &CaCertificate,
    request: &CertRequest,
    options: &IssueOptions,
) -> impl Future<Output = Result<Certificate, IssueError>> + Send + 'static + use<K> {
    issue_at(SystemTime::now(), ca_key, ca, request, options)
}

/// Issues a certificate as if at `now`.
///
/// Checked first, before the key signs: `ca` holds `ca_key`'s public key; `ca` is a CA
/// certificate (unless `options.require_ca` is off) valid at `now`, whose path length
/// constraint allows a CA below it for [`Profile::Ca`]; the validity ends no later than
/// `ca`'s. The request was verified when it was parsed ([`CertRequest::parse`]).
///
/// The certificate: version 3; `options.serial` or a random serial; issuer = `ca`'s subject;
/// subject and public key = the request's; validity from [`BACKDATE`](super::BACKDATE)
/// before `now` (not before `ca`'s) for `options.days`; extensions:
///
/// | extension | [`Profile::Leaf`] | [`Profile::Ca`] |
/// |---|---|---|
/// | subjectKeyIdentifier | SHA-1 of the public key (RFC 5280 method 1) | same |
/// | authorityKeyIdentifier | keyid = `ca`'s subject key identifier (or SHA-1 of its key) | same |
/// | basicConstraints (critical) | `CA:FALSE` | `CA:TRUE`, `pathlen` as given |
/// | keyUsage (critical) | digitalSignature, + keyEncipherment for RSA keys | keyCertSign, cRLSign |
/// | extendedKeyUsage | serverAuth, clientAuth | — |
/// | subjectAltName | `options.sans`, else the request's; critical if the subject is empty | same |
///
/// The request's other extensions are not copied: the CA decides usages and constraints.
pub fn issue_at<K: PrivateKey>(
    now: SystemTime,
    ca_key: &K,
    ca: &CaCertificate,
    request: &CertRequest,
    options: &IssueOptions,
) -> impl Future<Output = Result<Certificate, IssueError>> + Send + 'static + use<K> {
    let job = prepare(now, ca_key, ca, request, options);
    async move {
        let (tbs_certificate, signature_algorithm, scheme, signing) = job?;
        let signature = signing
            .await
            .and_then(|s| s.to_bit_string())
            .map_err(IssueError::Signing)?;
        let certificate = X509Certificate {
            tbs_certificate,
            signature_algorithm,
            signature,
        };
        Certificate::from_x509(certificate, scheme).map_err(IssueError::Options)
    }
}

type Prepared<F> = (
    TbsCertificate,
    spki::AlgorithmIdentifierOwned,
    SignatureScheme,
    F,
);

fn prepare<K: PrivateKey>(
    now: SystemTime,
    ca_key: &K,
    ca: &CaCertificate,
    request: &CertRequest,
    options: &IssueOptions,
) -> Result<
    Prepared<
        impl Future<Output = hardkey_api::Result<super::X509Signature>> + Send + 'static + use<K>,
    >,
    IssueError,
> {
    ca.check_key(&ca_key.info().public_key)?;
    if options.require_ca {
        ca.check_is_ca()?;
    }
    if let Profile::Ca { path_len } = options.profile {
        check_path_len(ca, path_len)?;
    }
    let validity = validity_within(now, ca, options.days)?;
    let signer =
        X509Signer::with_optional_scheme(ca_key, options.scheme).map_err(IssueError::Signing)?;
    let algorithm = signer.algorithm_identifier().map_err(IssueError::Options)?;
    let subject = request.subject().clone();
    let spki = request.as_x509().info.public_key.clone();
    let sans = match &options.sans {
        Some(given) => given.clone(),
        None => request.requested_sans().cloned().unwrap_or_default(),
    };
    if subject.is_empty() && sans.is_empty() {
        return Err(IssueError::Options(
            InvalidInput::Config {
                what: "certificate",
                reason: "the request has an empty subject and no subject alternative names; \
                         give the names with --san",
            }
            .into(),
        ));
    }
    let extensions =
        extensions(ca, request, &subject, &sans, options.profile).map_err(IssueError::Options)?;
    let serial_number = match &options.serial {
        Some(serial) => serial.clone(),
        None => random_serial().map_err(IssueError::Options)?,
    };
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number,
        signature: algorithm.clone(),
        issuer: ca.subject().clone(),
        validity,
        subject,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    let tbs_der = tbs
        .to_der()
        .map_err(|e| IssueError::Options(super::build::encoding("TBSCertificate")(e)))?;
    let scheme = signer.scheme();
    let signing = signer.sign(&tbs_der);
    Ok((tbs, algorithm, scheme, signing))
}

fn check_path_len(ca: &CaCertificate, requested: Option<u8>) -> Result<(), IssueError> {
    let Some(limit) = ca.path_len() else {
        return Ok(());
    };
    let remedy = match (limit, requested) {
        (0, _) => "it may issue only leaves: issue a leaf (--profile leaf), or sign the new CA \
                   with a CA higher up"
            .to_owned(),
        (_, Some(p)) if p < limit => return Ok(()),
        _ => format!(
            "the new CA's path length must be at most {}: give --path-len {} or less",
            limit - 1,
            limit - 1
        ),
    };
    Err(IssueError::PathLength {
        subject: ca.subject_text(),
        limit,
        remedy,
    })
}

/// The validity of `days` from `now`, checked against the CA certificate's.
fn validity_within(now: SystemTime, ca: &CaCertificate, days: u32) -> Result<Validity, IssueError> {
    let mut validity = validity_at(now, days).map_err(IssueError::Options)?;
    let ca_validity = &ca.certificate.tbs_certificate.validity;
    let since_epoch = |t: &Time| t.to_unix_duration();
    let now_unix = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    if now_unix < since_epoch(&ca_validity.not_before)
        || now_unix > since_epoch(&ca_validity.not_after)
    {
        return Err(IssueError::CaNotValid {
            subject: ca.subject_text(),
            not_before: ca_validity.not_before.to_string(),
            not_after: ca_validity.not_after.to_string(),
        });
    }
    if since_epoch(&validity.not_after) > since_epoch(&ca_validity.not_after) {
        let left = (since_epoch(&ca_validity.not_after) - now_unix).as_secs() / DAY;
        return Err(IssueError::ValidityBeyondCa {
            subject: ca.subject_text(),
            requested: validity.not_after.to_string(),
            not_after: ca_validity.not_after.to_string(),
            remedy: if left == 0 {
                "the CA certificate expires within a day: renew it".to_owned()
            } else {
                format!("give --days {left} or less, or renew the CA certificate")
            },
        });
    }
    // Backdated, but never to before the CA certificate existed.
    if since_epoch(&validity.not_before) < since_epoch(&ca_validity.not_before) {
        validity.not_before = ca_validity.not_before;
    }
    Ok(validity)
}

fn extensions(
    ca: &CaCertificate,
    request: &CertRequest,
    subject: &Name,
    sans: &SubjectAltNames,
    profile: Profile,
) -> hardkey_api::Result<Vec<Extension>> {
    let encoding = super::build::encoding;
    let ski = SubjectKeyIdentifier::try_from(request.as_x509().info.public_key.owned_to_ref())
        .map_err(encoding("subjectKeyIdentifier"))?;
    let authority_key = match &ca.key_identifier {
        Some(id) => {
            der::asn1::OctetString::new(id.clone()).map_err(encoding("authorityKeyIdentifier"))?
        }
        None => {
            let spki = &ca.certificate.tbs_certificate.subject_public_key_info;
            SubjectKeyIdentifier::try_from(spki.owned_to_ref())
                .map_err(encoding("authorityKeyIdentifier"))?
                .0
        }
    };
    let aki = AuthorityKeyIdentifier {
        key_identifier: Some(authority_key),
        authority_cert_issuer: None,
        authority_cert_serial_number: None,
    };
    let (basic, usage) = match profile {
        Profile::Leaf => {
            let usage = match request.public_key().algorithm().family() {
                KeyFamily::Rsa => {
                    KeyUsage(KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment)
                }
                // EC keys, and any family added later, only sign.
                _ => KeyUsage(KeyUsages::DigitalSignature.into()),
            };
            let basic = BasicConstraints {
                ca: false,
                path_len_constraint: None,
            };
            (basic, usage)
        }
        Profile::Ca { path_len } => (
            BasicConstraints {
                ca: true,
                path_len_constraint: path_len,
            },
            KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign),
        ),
    };
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
    if profile == Profile::Leaf {
        let eku = ExtendedKeyUsage(vec![SERVER_AUTH, CLIENT_AUTH]);
        push(&mut extensions, subject, &eku, false, "extendedKeyUsage")?;
    }
    if !sans.is_empty() {
        // RFC 5280 section 4.2.1.6: critical when the subject is empty.
        let san = sans.to_extension_value();
        push(
            &mut extensions,
            subject,
            &san,
            subject.is_empty(),
            "subjectAltName",
        )?;
    }
    Ok(extensions)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        reason = "tests"
    )]

    use super::*;
    use crate::{CertOptions, CsrOptions, build_csr, self_signed};
    use futures::executor::block_on;
    use hardkey_api::{GenerateRequest, KeyAlgorithm, KeyStore};
    use hardkey_soft::SoftStore;

    type Key = <SoftStore as KeyStore>::Key;

    fn key(store: &SoftStore, alg: KeyAlgorithm) -> Key {
        block_on(store.generate(GenerateRequest::new(alg))).unwrap()
    }

    fn ca(store: &SoftStore, alg: KeyAlgorithm, days: u32) -> (Key, CaCertificate) {
        let k = key(store, alg);
        let options = CertOptions::new("CN=Test Root,O=hardkey".parse().unwrap())
            .ca(true)
            .days(days);
        let cert = block_on(self_signed(&k, &options)).unwrap();
        (k, CaCertificate::from_der(cert.as_der()).unwrap())
    }

    fn request(k: &Key, sans: &str) -> CertRequest {
        let mut options = CsrOptions::new("CN=leaf.example".parse().unwrap());
        if !sans.is_empty() {
            options = options.sans(sans.parse().unwrap());
        }
        let csr = block_on(build_csr(k, &options)).unwrap();
        CertRequest::parse(csr.to_pem().as_bytes()).unwrap()
    }

    fn extension<T: der::DecodeOwned + AssociatedOid>(cert: &Certificate) -> Option<(bool, T)> {
        let tbs = &cert.as_x509().tbs_certificate;
        tbs.extensions.iter().flatten().find_map(|e| {
            (e.extn_id == T::OID)
                .then(|| (e.critical, T::from_der(e.extn_value.as_bytes()).unwrap()))
        })
    }

    /// The issued certificate's signature verifies with the CA's public key.
    fn signed_by(cert: &Certificate, ca_key: &Key) {
        let tbs = cert.as_x509().tbs_certificate.to_der().unwrap();
        hardkey_api::verify::verify_signature(
            ca_key.info().public_key.der(),
            cert.scheme(),
            &tbs,
            cert.as_x509().signature.raw_bytes(),
        )
        .unwrap();
    }

    #[test]
    fn a_leaf_from_a_request_carries_the_profile_and_the_requested_names() {
        let store = SoftStore::in_memory().unwrap();
        for (ca_alg, leaf_alg) in [
            (KeyAlgorithm::EcP256, KeyAlgorithm::Rsa2048),
            (KeyAlgorithm::Rsa2048, KeyAlgorithm::EcP384),
        ] {
            let (ca_key, ca_cert) = ca(&store, ca_alg, 30);
            let leaf = key(&store, leaf_alg);
            let req = request(&leaf, "dns:leaf.example,ip:10.0.0.1");
            let cert =
                block_on(issue(&ca_key, &ca_cert, &req, &IssueOptions::new().days(7))).unwrap();
            signed_by(&cert, &ca_key);
            let tbs = &cert.as_x509().tbs_certificate;
            assert_eq!(tbs.issuer, *ca_cert.subject());
            assert_eq!(tbs.subject.to_string(), "CN=leaf.example");
            assert_eq!(
                tbs.subject_public_key_info.to_der().unwrap(),
                leaf.info().public_key.der()
            );
            let serial = tbs.serial_number.as_bytes();
            assert!(serial.len() >= 16 && serial.len() <= 20 && serial[0] & 0x80 == 0);
            let (critical, basic) = extension::<BasicConstraints>(&cert).unwrap();
            assert!(critical && !basic.ca);
            let (critical, usage) = extension::<KeyUsage>(&cert).unwrap();
            assert!(critical && usage.digital_signature() && !usage.key_cert_sign());
            assert_eq!(usage.key_encipherment(), leaf_alg == KeyAlgorithm::Rsa2048);
            let (_, eku) = extension::<ExtendedKeyUsage>(&cert).unwrap();
            assert_eq!(eku.0, vec![SERVER_AUTH, CLIENT_AUTH]);
            let (_, aki) = extension::<AuthorityKeyIdentifier>(&cert).unwrap();
            assert_eq!(
                aki.key_identifier.unwrap().as_bytes(),
                ca_cert.key_identifier.as_deref().unwrap()
            );
            let (critical, san) = extension::<x509_cert::ext::pkix::SubjectAltName>(&cert).unwrap();
            assert!(!critical);
            assert_eq!(
                SubjectAltNames::from_names(san.0).to_string(),
                "dns:leaf.example,ip:10.0.0.1"
            );
            let days = tbs.validity.not_after.to_unix_duration()
                - tbs.validity.not_before.to_unix_duration();
            assert_eq!(days.as_secs(), 7 * DAY + 300);
        }
    }

    #[test]
    fn given_names_replace_the_requested_ones() {
        let store = SoftStore::in_memory().unwrap();
        let (ca_key, ca_cert) = ca(&store, KeyAlgorithm::EcP256, 30);
        let req = request(&key(&store, KeyAlgorithm::EcP256), "dns:asked.example");
        let options = IssueOptions::new().sans(Some("dns:given.example".parse().unwrap()));
        let cert = block_on(issue(&ca_key, &ca_cert, &req, &options.days(7))).unwrap();
        let (_, san) = extension::<x509_cert::ext::pkix::SubjectAltName>(&cert).unwrap();
        assert_eq!(
            SubjectAltNames::from_names(san.0).to_string(),
            "dns:given.example"
        );
        // A request without names gives a certificate without the extension.
        let bare = request(&key(&store, KeyAlgorithm::EcP256), "");
        let cert = block_on(issue(
            &ca_key,
            &ca_cert,
            &bare,
            &IssueOptions::new().days(7),
        ))
        .unwrap();
        assert!(extension::<x509_cert::ext::pkix::SubjectAltName>(&cert).is_none());
    }

    #[test]
    fn an_intermediate_gets_the_ca_profile_and_path_lengths_are_kept() {
        let store = SoftStore::in_memory().unwrap();
        let (root_key, root) = ca(&store, KeyAlgorithm::EcP384, 30);
        let inter_key = key(&store, KeyAlgorithm::EcP256);
        let options = IssueOptions::new()
            .days(7)
            .profile(Profile::Ca { path_len: Some(0) });
        let cert = block_on(issue(&root_key, &root, &request(&inter_key, ""), &options)).unwrap();
        signed_by(&cert, &root_key);
        let (_, basic) = extension::<BasicConstraints>(&cert).unwrap();
        assert!(basic.ca && basic.path_len_constraint == Some(0));
        let (_, usage) = extension::<KeyUsage>(&cert).unwrap();
        assert!(usage.key_cert_sign() && usage.crl_sign() && !usage.digital_signature());
        assert!(extension::<ExtendedKeyUsage>(&cert).is_none());
        // Under a pathlen:0 CA: leaves yes, CAs no.
        let inter = CaCertificate::from_der(cert.as_der()).unwrap();
        let leaf_req = request(&key(&store, KeyAlgorithm::EcP256), "dns:a.example");
        block_on(issue(
            &inter_key,
            &inter,
            &leaf_req,
            &IssueOptions::new().days(1),
        ))
        .unwrap();
        let e = block_on(issue(&inter_key, &inter, &leaf_req, &options)).unwrap_err();
        assert!(matches!(e, IssueError::PathLength { .. }), "{e}");
        assert!(e.to_string().contains("--profile leaf"), "{e}");
    }

    #[test]
    fn a_wrong_ca_key_or_a_non_ca_certificate_is_refused() {
        let store = SoftStore::in_memory().unwrap();
        let (_, ca_cert) = ca(&store, KeyAlgorithm::EcP256, 30);
        let other = key(&store, KeyAlgorithm::EcP256);
        let req = request(&key(&store, KeyAlgorithm::EcP256), "dns:a.example");
        let e = block_on(issue(&other, &ca_cert, &req, &IssueOptions::new().days(1))).unwrap_err();
        assert!(matches!(e, IssueError::CaKeyMismatch { .. }), "{e}");
        assert!(e.is_input());
        // A leaf certificate is no CA, unless the caller says so.
        let leaf_key = key(&store, KeyAlgorithm::EcP256);
        let leaf = block_on(self_signed(
            &leaf_key,
            &CertOptions::new("CN=not a ca".parse().unwrap()),
        ))
        .unwrap();
        let leaf = CaCertificate::parse(leaf.to_pem().as_bytes()).unwrap();
        let e = block_on(issue(&leaf_key, &leaf, &req, &IssueOptions::new().days(1))).unwrap_err();
        assert!(matches!(e, IssueError::NotACa { .. }), "{e}");
        assert!(e.to_string().contains("CA:FALSE"), "{e}");
        let forced = IssueOptions::new().days(1).require_ca(false);
        block_on(issue(&leaf_key, &leaf, &req, &forced)).unwrap();
    }

    #[test]
    fn validity_beyond_the_ca_is_refused_not_shortened() {
        let store = SoftStore::in_memory().unwrap();
        let (ca_key, ca_cert) = ca(&store, KeyAlgorithm::EcP256, 10);
        let req = request(&key(&store, KeyAlgorithm::EcP256), "dns:a.example");
        let e = block_on(issue(
            &ca_key,
            &ca_cert,
            &req,
            &IssueOptions::new().days(11),
        ))
        .unwrap_err();
        assert!(matches!(e, IssueError::ValidityBeyondCa { .. }), "{e}");
        assert!(e.to_string().contains("--days 9 or less"), "{e}");
        let cert = block_on(issue(&ca_key, &ca_cert, &req, &IssueOptions::new().days(9))).unwrap();
        // Backdated, but not to before the CA certificate.
        let ca_from = ca_cert.as_x509().tbs_certificate.validity.not_before;
        assert_eq!(cert.as_x509().tbs_certificate.validity.not_before, ca_from);
        // An expired CA certificate issues nothing.
        let later = SystemTime::now() + Duration::from_secs(11 * DAY);
        let e = block_on(issue_at(
            later,
            &ca_key,
            &ca_cert,
            &req,
            &IssueOptions::new().days(1),
        ))
        .unwrap_err();
        assert!(matches!(e, IssueError::CaNotValid { .. }), "{e}");
        let e = block_on(issue(&ca_key, &ca_cert, &req, &IssueOptions::new().days(0))).unwrap_err();
        assert!(e.to_string().contains("at least 1 day"), "{e}");
    }

    #[test]
    fn a_given_serial_is_used() {
        let store = SoftStore::in_memory().unwrap();
        let (ca_key, ca_cert) = ca(&store, KeyAlgorithm::EcP256, 10);
        let req = request(&key(&store, KeyAlgorithm::EcP256), "dns:a.example");
        let serial = SerialNumber::new(&[0x01, 0x02, 0x03]).unwrap();
        let options = IssueOptions::new().days(1).serial(Some(serial.clone()));
        let cert = block_on(issue(&ca_key, &ca_cert, &req, &options)).unwrap();
        assert_eq!(cert.as_x509().tbs_certificate.serial_number, serial);
    }
}
