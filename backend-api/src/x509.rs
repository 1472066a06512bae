//! X.509 certificate signing requests and self-signed certificates, signed through any
//! hardkey key (feature `x509`).
//!
//! - [`Subject`] parses an RFC 4514 name (`CN=web.example,O=Example,C=DE`) and
//!   [`SubjectAltNames`] a `dns:…,ip:…,email:…,uri:…` list, with errors that quote the part
//!   that is wrong.
//! - [`validity`] / [`random_serial`] are the validity period and serial number used.
//!
//! Built on RustCrypto's [`x509_cert`] 0.2 (re-exported), the der 0.7 / spki 0.7 generation.

mod name;
mod validity;

pub use x509_cert;

pub use name::{Subject, SubjectAltNames};
pub use validity::{BACKDATE, random_serial, validity, validity_at};
