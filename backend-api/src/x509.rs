//! X.509 certificate signing requests and self-signed certificates, signed through any
//! hardkey key (feature `x509`).
//!
//! - [`build_csr`] and [`self_signed`] are the whole job for `hardkey csr` and
//!   `hardkey selfsign`: options in ([`CsrOptions`], [`CertOptions`]), a signed [`Csr`] or
//!   [`Certificate`] out, with `to_pem()` / `to_der()`. Their futures are `Send + 'static`.
//! - [`Subject`] parses an RFC 4514 name (`CN=web.example,O=Example,C=DE`) and
//!   [`SubjectAltNames`] a `dns:…,ip:…,email:…,uri:…` list, with errors that quote the part
//!   that is wrong.
//! - [`X509Signer`] is the RustCrypto adapter (`Keypair`, `DynSignatureAlgorithmIdentifier`,
//!   `AsyncSigner`) that signs through a [`PrivateKey`](crate::PrivateKey); with
//!   [`build_async`] it finishes x509-cert's own builders, e.g. to issue certificates for other
//!   keys from a hardkey CA key.
//! - [`validity`] / [`random_serial`] are the validity period and serial number used.
//!
//! Built on RustCrypto's [`x509_cert`] 0.2 (re-exported), the der 0.7 / spki 0.7 generation.
//! x509-cert 0.2 has no async builder, so the TBS structure is encoded here, its signature
//! awaited from the key, and the result assembled, exactly as its synchronous `Builder::build`
//! does.

mod build;
mod name;
mod signer;
mod validity;

pub use async_signature;
pub use x509_cert;

pub use build::{CertOptions, Certificate, Csr, CsrOptions, build_async, build_csr, self_signed};
pub use name::{Subject, SubjectAltNames};
pub use signer::{X509Signature, X509Signer, default_scheme};
pub use validity::{BACKDATE, random_serial, validity, validity_at};
