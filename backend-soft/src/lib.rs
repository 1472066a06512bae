//! Software keys for hardkey: RSA (2048/3072/4096), ECDSA P-256 and P-384 held in memory
//! (optionally loaded from and saved to PEM files), served through the same
//! [`DevicePool`](hardkey_api::DevicePool) as hardware keys. The reference backend: it passes
//! the `hardkey-api` conformance suite and serves as the baseline in benchmarks.
//!
//! Keys are zeroized when dropped (the `rsa`, `p256` and `p384` key types do it). Note that the
//! `rsa` crate's private-key operations are not constant-time (RUSTSEC-2023-0071, the Marvin
//! attack): do not expose software RSA decryption to untrusted timing measurements.
#![forbid(unsafe_code)]

/// The device name used in errors and stats.
const DEVICE: &str = "software keys";

mod device;
mod material;
mod store;

// Public interface.
pub use device::{SoftDevice, SoftKeyRef};
pub use store::{SoftConfig, SoftKey, SoftStore};
