//! The error of issuing a certificate from a request: what was wrong with the request, the CA
//! certificate or the options, or the CA key's own error.

use hardkey_api::BoxError;

/// Why a certificate could not be issued ([`issue`](super::issue), [`CertRequest::parse`],
/// [`CaCertificate::parse`]).
///
/// [`CertRequest::parse`]: super::CertRequest::parse
/// [`CaCertificate::parse`]: super::CaCertificate::parse
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// The request is not a DER or PEM PKCS#10 `CertificationRequest`.
    #[error(
        "cannot read the certificate signing request ({what}): {source}; give a PKCS#10 request \
         in PEM (-----BEGIN CERTIFICATE REQUEST-----) or DER, as openssl req -new or hardkey csr \
         write"
    )]
    RequestEncoding {
        /// Which part could not be read.
        what: &'static str,
        /// The decoder's error.
        #[source]
        source: der::Error,
    },

    /// The request's PEM armour could not be read, or holds something else.
    #[error(
        "cannot read the certificate signing request: {reason}; give a PKCS#10 request in PEM \
         (-----BEGIN CERTIFICATE REQUEST-----) or DER"
    )]
    RequestPem {
        /// What was wrong.
        reason: String,
    },

    /// The request is signed with an algorithm hardkey does not verify.
    #[error(
        "the certificate signing request is signed with {algorithm}, which hardkey does not \
         verify: ask for a request signed with RSA PKCS#1 v1.5 or RSA-PSS (SHA-256/384/512), \
         or ECDSA P-256 with SHA-256 or P-384 with SHA-384"
    )]
    RequestAlgorithm {
        /// The signature algorithm (its OID, and for RSA-PSS its parameters), as found.
        algorithm: String,
    },

    /// The request's public key is not one hardkey knows.
    #[error("the certificate signing request's public key is not usable: {0}")]
    RequestKey(#[source] hardkey_api::Error),

    /// The request's self-signature does not verify with its own public key: it was altered,
    /// or was not made by the holder of the key it names.
    #[error(
        "the certificate signing request's {algorithm} signature is invalid ({source}): the \
         request was altered or not signed by the key it names; refusing to issue, ask the \
         requester for a new request"
    )]
    RequestSignature {
        /// How the request claims to be signed.
        algorithm: String,
        /// The verifier's reason.
        #[source]
        source: BoxError,
    },

    /// The CA certificate could not be read.
    #[error(
        "cannot read the CA certificate: {source}; give the CA's own certificate in PEM \
         (-----BEGIN CERTIFICATE-----, the first one in the file is used) or DER"
    )]
    CaCertificateEncoding {
        /// The decoder's error.
        #[source]
        source: der::Error,
    },

    /// The file holds no certificate.
    #[error(
        "the CA certificate file holds no certificate: give the CA's own certificate (PEM or DER)"
    )]
    NoCaCertificate,

    /// The CA certificate's public key is not the CA key's.
    #[error(
        "the CA certificate '{subject}' is not the CA key's: its public key is sha256:{cert_key}, \
         the key's is sha256:{ca_key}; give the certificate of this key (--ca-cert) or the key \
         of this certificate (--ca-key)"
    )]
    CaKeyMismatch {
        /// The CA certificate's subject.
        subject: String,
        /// SHA-256 of the certificate's SubjectPublicKeyInfo.
        cert_key: String,
        /// SHA-256 of the key's SubjectPublicKeyInfo.
        ca_key: String,
    },

    /// The CA certificate may not issue certificates.
    #[error(
        "the certificate '{subject}' is not a CA certificate: {reason}; verifiers (openssl, \
         browsers, rustls) reject what it signs. Use a CA certificate (hardkey selfsign --ca, \
         or one issued with --profile ca), or pass --allow-non-ca-issuer to issue anyway"
    )]
    NotACa {
        /// The CA certificate's subject.
        subject: String,
        /// What it lacks.
        reason: &'static str,
    },

    /// A CA certificate whose path length constraint forbids the CA certificate asked for.
    #[error(
        "the CA certificate '{subject}' has a path length constraint (pathlen:{limit}): {remedy}"
    )]
    PathLength {
        /// The CA certificate's subject.
        subject: String,
        /// Its constraint.
        limit: u8,
        /// What to do.
        remedy: String,
    },

    /// The CA certificate is outside its validity period now.
    #[error(
        "the CA certificate '{subject}' is not valid now (valid from {not_before} to \
         {not_after}): renew the CA certificate, or check the system clock"
    )]
    CaNotValid {
        /// The CA certificate's subject.
        subject: String,
        /// Its notBefore.
        not_before: String,
        /// Its notAfter.
        not_after: String,
    },

    /// The requested validity ends after the CA certificate's.
    #[error(
        "the certificate would be valid until {requested}, after the CA certificate '{subject}' \
         expires ({not_after}); hardkey refuses rather than shortening it: {remedy}"
    )]
    ValidityBeyondCa {
        /// The CA certificate's subject.
        subject: String,
        /// The end of the requested validity.
        requested: String,
        /// The CA certificate's notAfter.
        not_after: String,
        /// What to do (the most days that end before the CA certificate does).
        remedy: String,
    },

    /// The options, or building the certificate from them, failed (a validity of 0 days, a
    /// serial number or a name that cannot be encoded...).
    #[error("{0}")]
    Options(#[source] hardkey_api::Error),

    /// The CA key cannot sign, or signing failed on its device.
    #[error("{0}")]
    Signing(#[source] hardkey_api::Error),
}

impl IssueError {
    /// Whether the caller can fix this by changing the request, the CA certificate or the
    /// options (everything but a signing failure of the device: wrong PIN, device gone...).
    pub fn is_input(&self) -> bool {
        match self {
            Self::Signing(e) => matches!(
                e.kind(),
                hardkey_api::ErrorKind::InvalidInput | hardkey_api::ErrorKind::Unsupported
            ),
            _ => true,
        }
    }
}
