//! hardkey's async key-operation API.
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod algorithm;
pub mod encoding;
mod error;
pub mod uri;

// Public interface.
pub use algorithm::{
    DecryptScheme, HashAlgorithm, KeyAlgorithm, KeyFamily, SignatureKind, SignatureScheme,
};
pub use error::{BoxError, Error, ErrorKind, InvalidInput, Operation, Result, Unsupported};
pub use uri::{
    FileUri, KeyUri, ObjectType, Pkcs11Uri, Tpm2Key, Tpm2Uri, UriError, UriErrorReason,
    UriParseOptions,
};
