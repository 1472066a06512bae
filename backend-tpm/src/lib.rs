//! hardkey keys on TPM 2.0 (swtpm, `/dev/tpmrm0`, tabrmd), through the `tss-esapi` crate.
//!
//! A [`TpmStore`] serves one TPM from one worker thread that owns the ESAPI context: a TPM
//! executes one command at a time, and the pool's bounded queue in front of the worker gives
//! backpressure. Keys live in persistent handles or in `TSS2 PRIVATE KEY` files (the format
//! of tpm2-openssl), under the standard storage root key (ECC P-256, persistent at
//! 0x81000001 when provisioned, else created from the template tpm2-openssl uses).
//!
//! Signing hashes on the host and calls `TPM2_Sign` with a null ticket: RSA PKCS#1 v1.5,
//! RSA-PSS (salt = hash length, host-encoded when the TPM's own PSS differs), ECDSA (DER
//! output). Decryption is RSA-OAEP (SHA-256) with the result encrypted on the bus by a salted
//! HMAC session.
//!
//! Rules kept: a TPM holds about three transient objects, so hot keys stay loaded in an LRU
//! that leaves a slot free, and every object hardkey loads is flushed on every path;
//! `TPM_RC_OBJECT_MEMORY` is recovered by flushing; after a TCTI or unmarshalling error the
//! context is rebuilt; a wrong auth value is never retried automatically (the
//! dictionary-attack counter is real).
//!
//! [`TpmAdmin`] is the direct, blocking connection for administration: ownership and
//! dictionary-attack status and settings, sealing up to 128 bytes to a password and/or
//! PCR values, attestation keys and `TPM2_Certify` evidence. [`Evidence::verify`] checks
//! that evidence in software, without a TPM.
#![deny(unsafe_code)]

mod admin;
mod ak;
mod attest;
mod connect;
mod device;
mod error;
mod ffi;
mod keyfile;
mod keys;
mod owner;
mod pcr;
mod pss;
mod seal;
mod store;

// Public interface.
pub use admin::TpmAdmin;
pub use ak::{AkInfo, DEFAULT_AK_HANDLE, EK_CERT_P256, EK_CERT_RSA2048, EK_PARENT};
pub use attest::{
    AttestError, EVIDENCE_FORMAT, Evidence, Expected, MAX_EVIDENCE_SIZE, MAX_NONCE_SIZE, Verified,
};
pub use connect::{
    DEFAULT_TCTI, Flush, OWNER_PARENT, SRK_HANDLE, TCTI_ENV, default_tcti, srk_template,
};
pub use device::TpmDevice;
pub use error::{ForeignKeyFile, SealError, TpmError};
pub use keyfile::{KeyFile, KeyFileKind, PEM_LABEL, PolicyStep};
pub use keys::TpmKeyRef;
pub use owner::{Hierarchy, TpmStatus};
pub use pcr::{PCR_COUNT, PcrBank, PcrSelection};
pub use seal::{MAX_SEAL_SIZE, SealOptions, SealedData};
pub use store::{KeyHome, PssMode, TpmConfig, TpmKey, TpmStore};
