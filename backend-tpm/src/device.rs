//! [`TpmDevice`]: the worker-owned TPM connection, with the keys it keeps loaded.
//!
//! A TPM holds about three transient objects. Hot keys stay loaded in an LRU that leaves one
//! slot free (the TPM needs one to use a persistent key or to load under a parent); a key
//! pushed out is flushed, and its saved context is kept in memory so that bringing it back
//! is a `TPM2_ContextLoad` instead of a `TPM2_Load` under the SRK. Saved contexts are a cache
//! only: they die at TPM reset, and then the key is loaded again from its key file or used
//! from its persistent handle. `TPM_RC_OBJECT_MEMORY` (another client holds slots) is
//! recovered by flushing our least recently used key and sending the command again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use hardkey_api::{
    Backend, DecryptScheme, Error, HashAlgorithm, Operation, Result, SignatureKind,
    SignatureScheme, encoding,
};
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::handles::{KeyHandle, ObjectHandle};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Data, Digest, EccParameter, HashScheme, HashcheckTicket, PublicKeyRsa, RsaDecryptionScheme,
    Signature,
};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::utils::TpmsContext;
use zeroize::Zeroizing;

use crate::connect::{Tpm, auth_value, retrying};
use crate::error::{self, mapper, rc_of};
use crate::keys::{KeyMaterial, Location, TpmKeyRef, tpm_hash, tpm_scheme};
use crate::store::Settings;

/// Saved contexts kept at most (about 1-2 KiB each).
const SAVED_CONTEXTS: usize = 1024;

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

fn null_ticket() -> tss_esapi::Result<HashcheckTicket> {
    HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    })
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

    /// The ESAPI object of a persistent handle, made once (ESAPI hands out one object per
    /// TPM handle, so it is cached and closed only by [`TpmDevice::forget`]).
    pub(crate) fn persistent_tr(&mut self, handle: u32, op: Operation) -> Result<ObjectHandle> {
        if let Some(tr) = self.persistent.get(&handle) {
            return Ok(*tr);
        }
        let name = self.tpm.name.clone();
        let tpm_handle = tss_esapi::handles::TpmHandle::try_from(handle).map_err(mapper(
            &name,
            op,
            "Esys_TR_FromTPMPublic",
        ))?;
        // Reading a persistent object's public area takes a free slot in the TPM.
        let tr = self
            .with_object_memory(|tpm| {
                retrying(|| {
                    tpm.ctx
                        .execute_without_session(|c| c.tr_from_tpm_public(tpm_handle))
                })
                .map_err(LoadError::Tpm)
            })
            .map_err(|e| e.into_error(&name, op, "Esys_TR_FromTPMPublic"))?;
        self.persistent.insert(handle, tr);
        Ok(tr)
    }

    /// Flushes loaded keys until `free` more objects fit.
    pub(crate) fn make_room(&mut self, free: usize) -> Result<()> {
        while !self.loaded.is_empty() && self.loaded.len() + free > self.capacity {
            self.evict_one()?;
        }
        Ok(())
    }

    /// Flushes the least recently used key (its saved context stays cached).
    fn evict_one(&mut self) -> Result<bool> {
        if self.loaded.is_empty() {
            return Ok(false);
        }
        let (_, handle) = self.loaded.remove(0);
        let name = self.tpm.name.clone();
        self.tpm.ctx.flush_context(handle.into()).map_err(mapper(
            &name,
            Operation::Sign,
            "TPM2_FlushContext",
        ))?;
        Ok(true)
    }

    /// Forgets a key (by TPM name): flushes it if loaded, drops its saved context and its
    /// persistent handle's ESAPI object.
    pub(crate) fn forget(&mut self, name: &[u8], persistent: Option<u32>) {
        if let Some(i) = self.loaded.iter().position(|(n, _)| n == name) {
            let (_, handle) = self.loaded.remove(i);
            let _ = self.tpm.ctx.flush_context(handle.into());
        }
        self.saved.remove(name);
        if let Some(mut tr) = persistent.and_then(|h| self.persistent.remove(&h)) {
            let _ = self.tpm.ctx.tr_close(&mut tr);
        }
    }

    /// Removes a persistent handle's ESAPI object from the cache without closing it.
    pub(crate) fn take_persistent(&mut self, handle: u32) -> Option<ObjectHandle> {
        self.persistent.remove(&handle)
    }

    /// Flushes every key this worker loaded (the no-leak guarantee at shutdown).
    pub(crate) fn flush_all(&mut self) {
        while let Ok(true) = self.evict_one() {}
    }

    /// The handle of `key`, loading it if needed.
    fn handle_for(&mut self, key: &KeyMaterial, op: Operation) -> Result<KeyHandle> {
        let name = self.tpm.name.clone();
        match &key.location {
            Location::Persistent(h) => {
                let tr = match self.persistent_tr(*h, op) {
                    Ok(tr) => tr,
                    Err(e) if e.kind() == hardkey_api::ErrorKind::Backend => {
                        if self.tpm.persistent_handles()?.contains(h) {
                            return Err(e);
                        }
                        return Err(Error::not_found(
                            format_args!("persistent handle {h:#010x} on {name}"),
                            "the key was evicted; list the TPM's keys (hardkey list)",
                        ));
                    }
                    Err(e) => return Err(e),
                };
                let actual =
                    self.tpm
                        .ctx
                        .tr_get_name(tr)
                        .map_err(mapper(&name, op, "Esys_TR_GetName"))?;
                if actual.value() != key.name.as_slice() {
                    self.forget(&[], Some(*h));
                    return Err(Error::not_found(
                        format_args!("persistent handle {h:#010x} on {name}"),
                        "the handle now holds a different key; open it again",
                    ));
                }
                Ok(tr.into())
            }
            Location::Blob {
                parent, private, ..
            } => {
                if let Some(i) = self.loaded.iter().position(|(n, _)| *n == key.name) {
                    let entry = self.loaded.remove(i);
                    let handle = entry.1;
                    self.loaded.push(entry);
                    return Ok(handle);
                }
                self.make_room(1)?;
                if let Some(saved) = self.saved.get(&key.name).cloned() {
                    match self.with_object_memory(|tpm| {
                        retrying(|| tpm.ctx.context_load(saved.clone())).map_err(LoadError::Tpm)
                    }) {
                        Ok(handle) => {
                            let handle = KeyHandle::from(handle);
                            self.loaded.push((key.name.clone(), handle));
                            return Ok(handle);
                        }
                        Err(LoadError::Tpm(e))
                            if rc_of(&e).is_some_and(error::is_stale_context) =>
                        {
                            // TPM reset since it was saved: load from the blob below.
                            self.saved.remove(&key.name);
                        }
                        Err(e) => return Err(e.into_error(&name, op, "TPM2_ContextLoad")),
                    }
                }
                // The parent needs a slot while the key is loaded under it.
                self.make_room(2)?;
                let public = key.public.clone();
                let private = private.clone();
                let parent = *parent;
                let handle = self
                    .with_object_memory(|tpm| {
                        tpm.with_parent(parent, op, |tpm, srk| {
                            retrying(|| {
                                tpm.ctx
                                    .execute_with_session(Some(AuthSession::Password), |c| {
                                        c.load(srk, private.clone(), public.clone())
                                    })
                            })
                            .map_err(|e| error::map_key_load(&tpm.name.clone(), op, e))
                        })
                        .map_err(LoadError::Hardkey)
                    })
                    .map_err(|e| e.into_error(&name, op, "TPM2_Load"))?;
                if let Ok(saved) = self.tpm.ctx.context_save(handle.into()) {
                    if self.saved.len() >= SAVED_CONTEXTS {
                        self.saved.clear();
                    }
                    self.saved.insert(key.name.clone(), saved);
                }
                self.loaded.push((key.name.clone(), handle));
                Ok(handle)
            }
        }
    }

    /// Runs `f`; on `TPM_RC_OBJECT_MEMORY` flushes one of our keys and runs it again.
    fn with_object_memory<T>(
        &mut self,
        mut f: impl FnMut(&mut Tpm) -> std::result::Result<T, LoadError>,
    ) -> std::result::Result<T, LoadError> {
        loop {
            match f(&mut self.tpm) {
                Err(LoadError::Tpm(e)) if rc_of(&e).is_some_and(error::is_object_memory) => {
                    match self.yield_slot() {
                        Ok(true) => continue,
                        _ => return Err(LoadError::Tpm(e)),
                    }
                }
                other => return other,
            }
        }
    }

    /// After `TPM_RC_OBJECT_MEMORY`: another client (or a leftover) holds slots, so keep
    /// fewer ourselves and flush one of ours. `false` if none was loaded.
    fn yield_slot(&mut self) -> Result<bool> {
        self.capacity = self.capacity.saturating_sub(1).max(1);
        self.evict_one()
    }

    /// Runs a command on a loaded key with its auth value set: a password session for keys
    /// without auth, the salted HMAC session when the auth value must not cross the bus or
    /// `secret_output` (the response carries a secret).
    fn on_key<T>(
        &mut self,
        key: &KeyMaterial,
        op: Operation,
        command: &'static str,
        secret_output: bool,
        mut f: impl FnMut(&mut tss_esapi::Context, KeyHandle) -> tss_esapi::Result<T>,
    ) -> Result<T> {
        let name = self.tpm.name.clone();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let handle = self.handle_for(key, op)?;
            let auth = auth_value(key.auth.as_ref().map(|a| a.as_bytes()))?;
            let has_auth = key.auth.is_some();
            self.tpm
                .ctx
                .tr_set_auth(handle.into(), auth)
                .map_err(mapper(&name, op, "Esys_TR_SetAuth"))?;
            let session = if has_auth || secret_output {
                self.tpm.hmac_session()?
            } else {
                AuthSession::Password
            };
            let result = retrying(|| {
                self.tpm
                    .ctx
                    .execute_with_session(Some(session), |c| f(c, handle))
            });
            match result {
                Ok(v) => return Ok(v),
                Err(e) if attempts < 3 && rc_of(&e).is_some_and(error::is_object_memory) => {
                    self.yield_slot()?;
                }
                Err(e) if attempts < 3 && rc_of(&e).is_some_and(error::is_unloaded_handle) => {
                    // Someone flushed our object (a tool on a TPM without resource manager):
                    // forget it and load it again.
                    let persistent = match key.location {
                        Location::Persistent(h) => Some(h),
                        Location::Blob { .. } => None,
                    };
                    if let Some(i) = self.loaded.iter().position(|(n, _)| *n == key.name) {
                        self.loaded.remove(i);
                    }
                    if let Some(mut tr) = persistent.and_then(|h| self.take_persistent(h)) {
                        let _ = self.tpm.ctx.tr_close(&mut tr);
                    }
                }
                Err(e) => return Err(error::map(&name, op, command, e)),
            }
        }
    }

    /// Signs with the TPM's own scheme.
    fn sign_on_tpm(
        &mut self,
        key: &KeyMaterial,
        scheme: SignatureScheme,
        digest: &[u8],
    ) -> Result<Signature> {
        let name = self.tpm.name.clone();
        let digest = Digest::try_from(digest.to_vec()).map_err(mapper(
            &name,
            Operation::Sign,
            "TPM2_Sign (digest)",
        ))?;
        let ticket = null_ticket().map_err(mapper(&name, Operation::Sign, "TPM2_Sign"))?;
        let tpm_scheme = tpm_scheme(scheme).ok_or(hardkey_api::Unsupported::SignatureScheme {
            scheme,
            key: key.algorithm,
        })?;
        self.on_key(key, Operation::Sign, "TPM2_Sign", false, |c, h| {
            c.sign(h, digest.clone(), tpm_scheme, ticket.clone())
        })
    }

    /// RSA-PSS by host-side EMSA-PSS encoding (salt = hash length) and a raw RSA private
    /// operation (`TPM2_RSA_Decrypt` with the NULL scheme).
    fn sign_pss_on_host(
        &mut self,
        key: &KeyMaterial,
        hash: HashAlgorithm,
        digest: &[u8],
    ) -> Result<Vec<u8>> {
        let bits = key.algorithm.bits();
        let em = encoding::emsa_pss_encode_random(hash, digest, bits)?;
        let k = bits.div_ceil(8);
        let mut padded = vec![0u8; k - em.len()];
        padded.extend_from_slice(&em);
        let name = self.tpm.name.clone();
        let input = PublicKeyRsa::try_from(padded).map_err(mapper(
            &name,
            Operation::Sign,
            "TPM2_RSA_Decrypt",
        ))?;
        let out = self.on_key(key, Operation::Sign, "TPM2_RSA_Decrypt", false, |c, h| {
            c.rsa_decrypt(h, input.clone(), RsaDecryptionScheme::Null, Data::default())
        })?;
        Ok(left_pad(out.value(), k))
    }

    /// Finds out (once per TPM) which salt length the TPM's own RSA-PSS uses, by signing a
    /// probe digest with `key` and recovering the encoded message with the public key.
    pub(crate) fn probe_pss(&mut self, key: &KeyMaterial) -> Result<u8> {
        let known = self.shared.pss_salt.load(Ordering::Relaxed);
        if known != PSS_UNKNOWN {
            return Ok(known);
        }
        let hash = HashAlgorithm::Sha256;
        let digest = encoding::digest(hash, b"hardkey PSS salt probe");
        let scheme = SignatureScheme::RsaPssSha256;
        let signature = self.sign_on_tpm(key, scheme, &digest)?;
        let sig = rsa_bytes(&signature, key.algorithm.bits().div_ceil(8))
            .ok_or_else(|| Error::backend(self.name(), Operation::Sign, "PSS probe: not RSA"))?;
        let salt = crate::pss::salt_len(&key.public, hash, &digest, &sig);
        let found = if salt == Some(hash.output_len()) {
            PSS_HASH_LEN
        } else {
            PSS_OTHER
        };
        self.shared.pss_salt.store(found, Ordering::Relaxed);
        Ok(found)
    }

    /// Decrypts on the TPM; the response travels encrypted in the salted session.
    fn decrypt_on_tpm(
        &mut self,
        key: &KeyMaterial,
        scheme: DecryptScheme,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let name = self.tpm.name.clone();
        let input = PublicKeyRsa::try_from(ciphertext.to_vec()).map_err(mapper(
            &name,
            Operation::Decrypt,
            "TPM2_RSA_Decrypt",
        ))?;
        let tpm_scheme = match scheme {
            DecryptScheme::RsaOaepSha256 => {
                RsaDecryptionScheme::Oaep(HashScheme::new(tpm_hash(HashAlgorithm::Sha256)))
            }
            DecryptScheme::RsaPkcs1v15Legacy => RsaDecryptionScheme::RsaEs,
            other => {
                return Err(hardkey_api::Unsupported::DecryptScheme {
                    scheme: other,
                    key: key.algorithm,
                }
                .into());
            }
        };
        let out = self.on_key(key, Operation::Decrypt, "TPM2_RSA_Decrypt", true, |c, h| {
            c.rsa_decrypt(h, input.clone(), tpm_scheme, Data::default())
        })?;
        Ok(Zeroizing::new(out.value().to_vec()))
    }
}

impl Drop for TpmDevice {
    fn drop(&mut self) {
        self.flush_all();
    }
}

/// An error while loading: the TPM's (to inspect) or already mapped.
pub(crate) enum LoadError {
    Tpm(tss_esapi::Error),
    Hardkey(Error),
}

impl From<tss_esapi::Error> for LoadError {
    fn from(e: tss_esapi::Error) -> Self {
        Self::Tpm(e)
    }
}

impl LoadError {
    fn into_error(self, device: &str, op: Operation, command: &'static str) -> Error {
        match self {
            Self::Tpm(e) => error::map(device, op, command, e),
            Self::Hardkey(e) => e,
        }
    }
}

fn left_pad(bytes: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len.saturating_sub(bytes.len())];
    out.extend_from_slice(bytes);
    out
}

/// The bytes of an RSA signature, left-padded to the modulus length.
fn rsa_bytes(signature: &Signature, k: usize) -> Option<Vec<u8>> {
    match signature {
        Signature::RsaSsa(s) | Signature::RsaPss(s) => Some(left_pad(s.signature().value(), k)),
        _ => None,
    }
}

/// An ECDSA signature as DER.
fn ecdsa_der(r: &EccParameter, s: &EccParameter, field: usize) -> Result<Vec<u8>> {
    let mut raw = left_pad(r.value(), field);
    raw.extend_from_slice(&left_pad(s.value(), field));
    encoding::ecdsa_raw_to_der(&raw)
}

impl Backend for TpmDevice {
    type KeyRef = TpmKeyRef;

    fn sign_digest(
        &mut self,
        key: &TpmKeyRef,
        scheme: SignatureScheme,
        digest: &[u8],
    ) -> Result<Vec<u8>> {
        let key = &*key.0;
        if scheme.kind() == SignatureKind::RsaPss {
            if key.host_pss {
                return self.sign_pss_on_host(key, scheme.hash(), digest);
            }
            if self.shared.pss_salt.load(Ordering::Relaxed) == PSS_OTHER {
                return Err(crate::keys::pss_refused(self.name(), scheme));
            }
        }
        let signature = self.sign_on_tpm(key, scheme, digest)?;
        let name = self.tpm.name.clone();
        match (&signature, scheme.kind()) {
            (Signature::EcDsa(sig), SignatureKind::Ecdsa) => ecdsa_der(
                sig.signature_r(),
                sig.signature_s(),
                key.algorithm.bits().div_ceil(8),
            ),
            (Signature::RsaSsa(_), SignatureKind::RsaPkcs1v15)
            | (Signature::RsaPss(_), SignatureKind::RsaPss) => {
                rsa_bytes(&signature, key.algorithm.bits().div_ceil(8)).ok_or_else(|| {
                    Error::backend(&name, Operation::Sign, "unexpected signature type")
                })
            }
            _ => Err(Error::backend(
                &name,
                Operation::Sign,
                format!(
                    "TPM2_Sign returned a {:?} signature for {scheme}",
                    signature.algorithm()
                ),
            )),
        }
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

// Used by the store's jobs.
impl TpmDevice {
    /// Loads (or finds) a key to check it is usable here, and settles its PSS path.
    pub(crate) fn check_key(&mut self, key: &KeyMaterial) -> Result<()> {
        self.handle_for(key, Operation::Open).map(|_| ())
    }
}
