//! hardkey keys on PKCS#11 tokens and HSMs (SoftHSM2, p11-kit remoting, hardware), through
//! the `cryptoki` crate.
//!
//! A [`Pkcs11Store`] serves one token with a pool of sessions: one session per worker, never
//! shared between threads or opened per operation; the user logs in once per token. Keys are
//! found by label and CKA_ID (RFC 7512 URIs); their object handles are cached per session and
//! refreshed when the token says they went stale. Signing takes a host-computed digest:
//! `CKM_ECDSA` (DER output), `CKM_RSA_PKCS` over a host-built DigestInfo, `CKM_RSA_PKCS_PSS`
//! with salt = hash length; decryption uses `CKM_RSA_PKCS_OAEP` (SHA-256), and `CKM_RSA_PKCS`
//! only behind the legacy opt-in. Certificate chains live on the token beside their keys
//! (same CKA_ID; issuers found by subject): [`Pkcs11Store::store_chain`],
//! [`Pkcs11Store::read_chain`].
//!
//! Rules kept: `C_Initialize` once per process per module, no `C_Finalize` while anything may
//! be in flight; a session whose operation failed is replaced, never reused; a wrong PIN is
//! never retried automatically, and a token on its final PIN try or locked gets no login
//! attempt at all; tokens are never initialized unless asked.
//!
//! Unsafe code is denied except in `init_args`, the one commented call that gives a module
//! its library parameters (NSS softokn's database), which cryptoki offers only as unsafe.
#![deny(unsafe_code)]

mod admin;
mod certs;
mod error;
mod init_args;
mod keys;
mod mechanism;
mod module;
mod pin;
mod session;
mod store;
mod token;

// Public interface.
pub use admin::{PinRole, SlotSummary, TokenAdmin, TokenDetails};
pub use certs::{CertCategory, CertSelector, MAX_CHAIN, StoredChain, TokenCertificate};
pub use error::Pkcs11Error;
pub use keys::Pkcs11KeyRef;
pub use module::{SOFTHSM_PATHS, default_module_path};
pub use pin::{PIN_ENV, PinSource};
pub use session::Pkcs11Device;
pub use store::{DEFAULT_SESSIONS, Pkcs11Config, Pkcs11Key, Pkcs11Store};
pub use token::TokenSummary;
