//! Trust anchors read from a CA file: what a client verifies a server's chain against, and
//! what a server verifies client certificates against (mutual TLS).

use std::fmt;
use std::path::Path;

use der::Decode;
use rustls_pki_types::CertificateDer;

use crate::error::{Error, Result};

/// The CA certificates a peer's chain must lead to, read from a PEM file of `CERTIFICATE`
/// blocks (as `curl --cacert` and `openssl -CAfile` take them).
///
/// Every certificate is decoded when the set is made, so a malformed file fails at startup
/// with its position.
#[derive(Clone)]
pub struct TrustAnchors {
    certs: Vec<CertificateDer<'static>>,
    subjects: Vec<String>,
    origin: String,
}

impl TrustAnchors {
    /// Reads a PEM file of `CERTIFICATE` blocks; other PEM blocks are ignored.
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Self> {
        let (text, origin) = crate::cert::read_certificate_file(path.as_ref())?;
        Self::parse(&text, origin)
    }

    /// Parses PEM text of `CERTIFICATE` blocks.
    pub fn from_pem(pem: impl AsRef<[u8]>) -> Result<Self> {
        Self::parse(pem.as_ref(), "the PEM input".to_owned())
    }

    /// Trust anchors from DER certificates.
    pub fn from_der(certs: impl IntoIterator<Item = Vec<u8>>) -> Result<Self> {
        let certs = certs.into_iter().map(CertificateDer::from).collect();
        Self::new(certs, "the DER input".to_owned())
    }

    fn parse(pem: &[u8], origin: String) -> Result<Self> {
        let certs = crate::cert::pem_certificates(pem, &origin)?;
        Self::new(certs, origin)
    }

    fn new(certs: Vec<CertificateDer<'static>>, origin: String) -> Result<Self> {
        let mut subjects = Vec::with_capacity(certs.len());
        for (i, cert) in certs.iter().enumerate() {
            let parsed =
                x509_cert::Certificate::from_der(cert).map_err(|e| Error::BadCertificate {
                    origin: origin.clone(),
                    index: i + 1,
                    source: Box::new(e),
                })?;
            subjects.push(parsed.tbs_certificate.subject.to_string());
        }
        if certs.is_empty() {
            return Err(Error::NoTrustAnchor { origin });
        }
        Ok(Self {
            certs,
            subjects,
            origin,
        })
    }

    /// The CA certificates (DER).
    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    /// The CA certificates' subject names (RFC 4514 form), in order.
    pub fn subjects(&self) -> &[String] {
        &self.subjects
    }

    /// Where the certificates came from (the file name, or "the PEM input").
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

impl fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustAnchors")
            .field("subjects", &self.subjects)
            .field("origin", &self.origin)
            .finish()
    }
}

/// The subject name (RFC 4514 form) of a DER certificate, or why it has none.
pub(crate) fn subject_of(der: &[u8]) -> String {
    match x509_cert::Certificate::from_der(der) {
        Ok(cert) => cert.tbs_certificate.subject.to_string(),
        Err(e) => format!("(undecodable certificate: {e})"),
    }
}
