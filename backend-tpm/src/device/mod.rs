//! [`TpmDevice`]: the worker-owned TPM connection, with the keys it keeps loaded.
//!
//! A TPM holds about three transient objects. Hot keys stay loaded in an LRU that leaves one
//! slot free (the TPM needs one to use a persistent key or to load under a parent); a key
//! pushed out is flushed, and its saved context is kept in memory so that bringing it back
//! is a `TPM2_ContextLoad` instead of a `TPM2_Load` under the SRK. Saved contexts are a cache
//! only: they die at TPM reset, and then the key is loaded again from its key file or used
//! from its persistent handle. `TPM_RC_OBJECT_MEMORY` (another client holds slots) is
//! recovered by flushing our least recently used key and sending the command again.
//!
//! - `load`: the keys kept loaded, their saved contexts and persistent handles, and running
//!   a command on a loaded key.
//! - `open`: opening and listing keys (persistent handles, key files).
//! - `manage`: generating, persisting and deleting keys.
//! - `sign` and `decrypt`: the private-key operations.

mod decrypt;
mod load;
mod manage;
mod open;
mod sign;

pub(crate) use sign::{ecdsa_der, rsa_bytes};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU8;

use hardkey_api::{Backend, DecryptScheme, Result, SignatureScheme};
use tss_esapi::handles::{KeyHandle, ObjectHandle};
use tss_esapi::utils::TpmsContext;
use zeroize::Zeroizing;

use crate::connect::Tpm;
use crate::keys::TpmKeyRef;
use crate::store::Settings;

/// What this TPM's own RSA-PSS does with the salt.
pub(crate) const PSS_UNKNOWN: u8 = 0;
pub(crate) const PSS_HASH_LEN: u8 = 1;
pub(crate) const PSS_OTHER: u8 = 2;

/// State shared by the store and its worker.
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    /// One of the `PSS_*` values: found once per TPM by signing a probe.
    pub(crate) pss_salt: AtomicU8,
    /// The key algorithms the TPM accepts (`TPM2_TestParms`), probed at the first connect.
    pub(crate) algorithms: std::sync::OnceLock<Vec<hardkey_api::KeyAlgorithm>>,
}

/// The TPM as one pool worker sees it: the connection and the keys it keeps loaded.
pub struct TpmDevice {
    pub(crate) tpm: Tpm,
    pub(crate) shared: Arc<Shared>,
    /// Loaded keys by TPM name, least recently used first.
    loaded: Vec<(Vec<u8>, KeyHandle)>,
    /// Saved contexts of keys loaded before, by TPM name.
    saved: HashMap<Vec<u8>, TpmsContext>,
    /// ESAPI objects of persistent keys, by handle.
    persistent: HashMap<u32, ObjectHandle>,
    /// How many keys may stay loaded.
    capacity: usize,
}

impl std::fmt::Debug for TpmDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmDevice")
            .field("tpm", &self.tpm.name)
            .field("loaded", &self.loaded.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl TpmDevice {
    /// Connects (worker start or recovery). The first connect flushes leftovers (when
    /// configured) and probes the algorithms the TPM accepts.
    pub(crate) fn connect(shared: Arc<Shared>) -> Result<Self> {
        let first = shared.algorithms.get().is_none();
        let settings = &shared.settings;
        let owner_auth = settings.owner_auth.load(&settings.name)?;
        let mut tpm = Tpm::connect(
            &settings.tcti,
            owner_auth,
            settings.srk_name.clone(),
            first && settings.flush_leftovers,
        )?;
        let slots = tpm.transient_slots();
        // One slot stays free: the TPM needs it to use a persistent key, to load a key under
        // the SRK, and for a transient SRK itself.
        let capacity = settings
            .max_loaded
            .unwrap_or(usize::MAX)
            .min(slots.saturating_sub(1))
            .max(1);
        let mut device = Self {
            tpm,
            shared,
            loaded: Vec::new(),
            saved: HashMap::new(),
            persistent: HashMap::new(),
            capacity,
        };
        if first {
            let algorithms = device.supported_algorithms();
            let _ = device.shared.algorithms.set(algorithms);
        }
        Ok(device)
    }

    /// The device name for messages.
    pub(crate) fn name(&self) -> &str {
        &self.tpm.name
    }

    fn settings(&self) -> &Settings {
        &self.shared.settings
    }
}

impl Drop for TpmDevice {
    fn drop(&mut self) {
        self.flush_all();
    }
}

impl Backend for TpmDevice {
    type KeyRef = TpmKeyRef;

    fn sign_digest(
        &mut self,
        key: &TpmKeyRef,
        scheme: SignatureScheme,
        digest: &[u8],
    ) -> Result<Vec<u8>> {
        self.sign(&key.0, scheme, digest)
    }

    fn decrypt(
        &mut self,
        key: &TpmKeyRef,
        scheme: DecryptScheme,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        self.decrypt_on_tpm(&key.0, scheme, ciphertext)
    }
}
