//! X.509 certificate signing requests and certificates, signed through any hardkey key.
//!
//! - [`build_csr`] and [`self_signed`] are the whole job for `hardkey csr` and
//!   `hardkey selfsign`: options in ([`CsrOptions`], [`CertOptions`]), a signed [`Csr`] or
//!   [`Certificate`] out, with `to_pem()` / `to_der()`. Their futures are `Send + 'static`.
//! - [`Subject`] parses an RFC 4514 name (`CN=web.example,O=Example,C=DE`) and
//!   [`SubjectAltNames`] a `dns:…,ip:…,email:…,uri:…` list, with errors that quote the part
//!   that is wrong.
//! - [`X509Signer`] is the RustCrypto adapter (`Keypair`, `DynSignatureAlgorithmIdentifier`,
//!   `AsyncSigner`) that signs through a [`PrivateKey`](hardkey_api::PrivateKey); with
//!   [`build_async`] it finishes x509-cert's own builders, e.g. to issue certificates for other
//!   keys from a hardkey CA key.
//! - [`CertRequest::parse`] reads a PKCS#10 request from outside and verifies its
//!   self-signature in software; [`issue`] signs a certificate for it with a CA key whose
//!   certificate ([`CaCertificate`]) is the issuer, as a leaf or an intermediate CA
//!   ([`Profile`], [`IssueOptions`]); its failures are [`IssueError`]s.
//! - [`validity`] / [`random_serial`] are the validity period and serial number used.
//! - `testkit` (feature) checks a backend's keys by openssl and the RustCrypto verifiers.
//!
//! Built on RustCrypto's [`x509_cert`] 0.2 (re-exported), the der 0.7 / spki 0.7 generation.
//! x509-cert 0.2 has no async builder, so the TBS structure is encoded here, its signature
//! awaited from the key, and the result assembled, exactly as its synchronous `Builder::build`
//! does.
//!
//! # Example
//!
//! The signature scheme defaults to ECDSA-SHA256 (P-256), ECDSA-SHA384 (P-384) or RSA PKCS#1
//! v1.5 SHA-256:
//!
//! ```rust
//! use hardkey_api::{PrivateKey, Result};
//!
//! /// A PEM certificate signing request for `key`.
//! async fn csr_pem(key: &impl PrivateKey) -> Result<String> {
//!     use hardkey_x509::{self as x509, CsrOptions};
//!
//!     let options = CsrOptions::new("CN=web.example,O=Example,C=DE".parse()?)
//!         .sans("dns:web.example,ip:10.0.0.1".parse()?);
//!     Ok(x509::build_csr(key, &options).await?.to_pem())
//! }
//! ```

#![forbid(unsafe_code)]

mod build;
mod error;
mod issue;
mod name;
mod request;
mod signer;
#[cfg(feature = "testkit")]
pub mod testkit;
mod validity;

pub use async_signature;
pub use x509_cert;

pub use build::{CertOptions, Certificate, Csr, CsrOptions, build_async, build_csr, self_signed};
pub use error::IssueError;
pub use issue::{CaCertificate, IssueOptions, Profile, issue, issue_at};
pub use name::{Subject, SubjectAltNames};
pub use request::CertRequest;
pub use signer::{X509Signature, X509Signer, default_scheme};
pub use validity::{BACKDATE, random_serial, validity, validity_at};
