#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod algorithm;
mod backend;
mod completion;
mod delayed;
pub mod encoding;
mod error;
pub mod fs;
mod key;
pub mod oid;
mod pool;
pub mod secret;
mod store;
mod sync;
#[cfg(feature = "testkit")]
pub mod testkit;
mod timer;
pub mod uri;
#[cfg(feature = "verify")]
pub mod verify;

// Public interface.
pub use algorithm::{
    DecryptScheme, HashAlgorithm, KeyAlgorithm, KeyFamily, SignatureKind, SignatureScheme,
};
pub use backend::{Backend, PooledKey};
pub use delayed::{Delayed, Latency};
pub use error::{BoxError, Error, ErrorKind, InvalidInput, Operation, Result, Unsupported};
pub use key::{
    BoxFuture, DeviceRestrictions, DynPrivateKey, KeyId, KeyInfo, KeyPolicy, KeyUsages, PrivateKey,
    PublicKey, SharedKey,
};
pub use pool::{
    Backpressure, DevicePool, JobOptions, JobTimeout, LatencySummary, PoolConfig, PoolStats,
    ShutdownReport,
};
pub use secret::SecretSource;
pub use store::{DynKeyStore, GenerateRequest, ImportRequest, KeyStore};
pub use uri::{
    FileUri, KeyUri, LibraryVersion, ObjectType, Pkcs11Uri, TokenAttrs, Tpm2Key, Tpm2Uri, UriError,
    UriErrorReason, UriParseOptions,
};
