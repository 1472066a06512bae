//! Certificate chains: read from PEM, checked once, and matched against the key that serves them.

use std::fmt;
use std::path::Path;

use der::{Decode, Encode, Reader};
use hardkey_api::{KeyInfo, PublicKey};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::error::{Error, KeyMismatch, Result};

/// A server's certificate chain: its own certificate first, then the issuers a client needs.
///
/// Every certificate is decoded when the chain is made, so a malformed file fails at startup
/// with its position, and the server's certificate's public key is kept for the key check
/// ([`CertChain::check_key`]).
///
/// Cheap to clone: the chain is shared, not copied (a server with thousands of chains keeps
/// one copy of each however many sets hold it).
#[derive(Clone)]
pub struct CertChain {
    inner: std::sync::Arc<Chain>,
}

struct Chain {
    certs: Vec<CertificateDer<'static>>,
    origin: String,
    subject: String,
    leaf_spki: Vec<u8>,
    dns_names: Vec<String>,
}

impl CertChain {
    /// Reads a PEM file of `CERTIFICATE` blocks, the server's certificate first. Other PEM
    /// blocks (a private key, parameters) are ignored.
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Self> {
        let (text, origin) = read_certificate_file(path.as_ref())?;
        Self::parse_pem(&text, origin)
    }

    /// Parses PEM text of `CERTIFICATE` blocks, the server's certificate first.
    pub fn from_pem(pem: impl AsRef<[u8]>) -> Result<Self> {
        Self::parse_pem(pem.as_ref(), "the PEM input".to_owned())
    }

    /// A chain from DER certificates, the server's certificate first.
    pub fn from_der(certs: impl IntoIterator<Item = Vec<u8>>) -> Result<Self> {
        let certs = certs.into_iter().map(CertificateDer::from).collect();
        Self::new(certs, "the DER input".to_owned())
    }

    /// A chain from DER certificates, the server's certificate first, read from `origin`
    /// (named in errors: "certificate id 01ab on token 'web'").
    pub fn from_der_list(
        certs: impl IntoIterator<Item = Vec<u8>>,
        origin: impl Into<String>,
    ) -> Result<Self> {
        let certs = certs.into_iter().map(CertificateDer::from).collect();
        Self::new(certs, origin.into())
    }

    /// Reads a chain that is PEM (`CERTIFICATE` blocks) or DER (one certificate, or several
    /// concatenated), the server's certificate first, naming `origin` in errors.
    pub fn from_pem_or_der(data: &[u8], origin: impl Into<String>) -> Result<Self> {
        let origin = origin.into();
        if data.windows(11).any(|w| w == b"-----BEGIN ") {
            return Self::parse_pem(data, origin);
        }
        let mut certs = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let index = certs.len() + 1;
            let bad = |e: der::Error| Error::BadCertificate {
                origin: origin.clone(),
                index,
                source: Box::new(e),
            };
            let mut reader = der::SliceReader::new(rest).map_err(bad)?;
            x509_cert::Certificate::decode(&mut reader).map_err(bad)?;
            let len = usize::try_from(reader.position()).map_err(bad)?;
            let (one, after) = rest.split_at(len.min(rest.len()));
            certs.push(CertificateDer::from(one.to_vec()));
            rest = after;
        }
        Self::new(certs, origin)
    }

    fn parse_pem(pem: &[u8], origin: String) -> Result<Self> {
        let certs = pem_certificates(pem, &origin)?;
        Self::new(certs, origin)
    }

    fn new(certs: Vec<CertificateDer<'static>>, origin: String) -> Result<Self> {
        let mut leaf = None;
        for (i, cert) in certs.iter().enumerate() {
            let bad = |e: der::Error| Error::BadCertificate {
                origin: origin.clone(),
                index: i + 1,
                source: Box::new(e),
            };
            let parsed = x509_cert::Certificate::from_der(cert).map_err(bad)?;
            if leaf.is_none() {
                let tbs = parsed.tbs_certificate;
                let spki = tbs.subject_public_key_info.to_der().map_err(bad)?;
                let names = dns_names(&tbs).map_err(bad)?;
                leaf = Some((tbs.subject.to_string(), spki, names));
            }
        }
        let Some((subject, leaf_spki, dns_names)) = leaf else {
            return Err(Error::NoCertificate { origin });
        };
        Ok(Self {
            inner: std::sync::Arc::new(Chain {
                certs,
                origin,
                subject,
                leaf_spki,
                dns_names,
            }),
        })
    }

    /// The certificates, the server's first.
    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.inner.certs
    }

    /// The server's certificate's subject name (RFC 4514 form).
    pub fn subject(&self) -> &str {
        &self.inner.subject
    }

    /// The server's certificate's SubjectPublicKeyInfo (DER).
    pub fn leaf_public_key_der(&self) -> &[u8] {
        &self.inner.leaf_spki
    }

    /// The DNS names of the server's certificate's subject alternative names, as written
    /// (`www.example.com`, `*.example.com`): the names it is served for by
    /// [`Identities`](crate::Identities).
    pub fn dns_names(&self) -> &[String] {
        &self.inner.dns_names
    }

    /// Where the chain came from (the file name, or "the PEM input").
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }

    /// Checks that the server's certificate holds `key`'s public key; the error names both
    /// keys (algorithm and SHA-256 fingerprint of the SubjectPublicKeyInfo).
    pub fn check_key(&self, key: &KeyInfo) -> Result<()> {
        if self.inner.leaf_spki == key.public_key.der() {
            return Ok(());
        }
        let cert_key = match PublicKey::from_spki_der(&self.inner.leaf_spki) {
            Ok(pk) => pk.algorithm().to_string(),
            Err(e) => format!("unsupported ({e})"),
        };
        Err(Error::KeyMismatch(Box::new(KeyMismatch {
            subject: self.inner.subject.clone(),
            origin: self.inner.origin.clone(),
            cert_key,
            cert_fingerprint: hardkey_api::encoding::spki_fingerprint(&self.inner.leaf_spki),
            key: key_name(key),
            key_algorithm: key.algorithm,
            key_fingerprint: key.public_key.fingerprint(),
        })))
    }
}

/// The `dNSName` entries of a certificate's subject alternative names.
fn dns_names(tbs: &x509_cert::TbsCertificate) -> der::Result<Vec<String>> {
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;

    let Some((_, san)) = tbs.get::<SubjectAltName>()? else {
        return Ok(Vec::new());
    };
    Ok(san
        .0
        .iter()
        .filter_map(|name| match name {
            GeneralName::DnsName(dns) => Some(dns.as_str().to_owned()),
            _ => None,
        })
        .collect())
}

impl fmt::Debug for CertChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertChain")
            .field("subject", &self.inner.subject)
            .field("dns_names", &self.inner.dns_names)
            .field("len", &self.inner.certs.len())
            .field("origin", &self.inner.origin)
            .finish()
    }
}

/// A key's name for messages: label or id, and its URI when it has one.
pub(crate) fn key_name(key: &KeyInfo) -> String {
    match &key.uri {
        Some(uri) => format!("{} ({uri})", key.display_name()),
        None => key.display_name(),
    }
}

/// A certificate file's bytes, and its path as messages name it.
pub(crate) fn read_certificate_file(path: &Path) -> Result<(Vec<u8>, String)> {
    let text = std::fs::read(path).map_err(|source| Error::ReadCertificate {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((text, path.display().to_string()))
}

/// The `CERTIFICATE` blocks of PEM text read from `origin` (other blocks are skipped).
pub(crate) fn pem_certificates(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_slice_iter(pem)
        .enumerate()
        .map(|(i, cert)| {
            cert.map_err(|e| Error::BadCertificate {
                origin: origin.to_owned(),
                index: i + 1,
                source: Box::new(e),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;

    fn cert(name: &str) -> rcgen::CertifiedKey {
        rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap()
    }

    #[test]
    fn pem_and_concatenated_der_read_the_same_chain() {
        let (a, b) = (cert("a.example"), cert("b.example"));
        let pem = format!("{}{}", a.cert.pem(), b.cert.pem());
        let der = [a.cert.der().to_vec(), b.cert.der().to_vec()].concat();
        let from_pem = CertChain::from_pem_or_der(pem.as_bytes(), "p").unwrap();
        let from_der = CertChain::from_pem_or_der(&der, "d").unwrap();
        assert_eq!(from_pem.certs(), from_der.certs());
        assert_eq!(from_der.certs().len(), 2);
        assert_eq!(from_der.dns_names(), ["a.example"]);
        let list = CertChain::from_der_list([a.cert.der().to_vec()], "token 'web'").unwrap();
        assert_eq!(list.origin(), "token 'web'");
    }

    #[test]
    fn garbage_and_truncated_der_are_refused_with_the_position() {
        let a = cert("a.example");
        let mut der = a.cert.der().to_vec();
        der.extend_from_slice(&a.cert.der()[..20]);
        let e = CertChain::from_pem_or_der(&der, "chain.der").unwrap_err();
        assert!(e.to_string().contains("certificate #2 in chain.der"), "{e}");
        let e = CertChain::from_pem_or_der(b"not a certificate", "junk").unwrap_err();
        assert!(e.to_string().contains("#1 in junk"), "{e}");
        assert!(CertChain::from_pem_or_der(b"", "empty").is_err());
    }
}
