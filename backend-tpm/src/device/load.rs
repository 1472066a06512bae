//! The keys a worker keeps loaded: the LRU of transient handles, saved contexts, the ESAPI
//! objects of persistent keys, and running a command on a loaded key.

use tss_esapi::handles::{KeyHandle, ObjectHandle};
use tss_esapi::interface_types::session_handles::AuthSession;

use hardkey_api::{Error, Operation, Result};

use super::TpmDevice;
use crate::connect::{Tpm, auth_value, retrying};
use crate::error::{self, mapper, rc_of};
use crate::keys::{KeyMaterial, Location};

/// Saved contexts kept at most (about 1-2 KiB each).
const SAVED_CONTEXTS: usize = 1024;

impl TpmDevice {
    /// The ESAPI object of a persistent handle, made once (ESAPI hands out one object per
    /// TPM handle, so it is cached and closed only by [`TpmDevice::forget`]).
    pub(super) fn persistent_tr(&mut self, handle: u32, op: Operation) -> Result<ObjectHandle> {
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
    pub(super) fn make_room(&mut self, free: usize) -> Result<()> {
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
        self.unload(0)?;
        Ok(true)
    }

    /// Takes the `i`th key out of the LRU and flushes it: the one place a key kept loaded
    /// across jobs leaves the TPM (what one job loads for itself is flushed by
    /// [`flushing`](crate::connect::flushing)).
    fn unload(&mut self, i: usize) -> Result<()> {
        let (_, handle) = self.loaded.remove(i);
        let name = self.tpm.name.clone();
        self.tpm.ctx.flush_context(handle.into()).map_err(mapper(
            &name,
            Operation::Sign,
            "TPM2_FlushContext",
        ))
    }

    /// Forgets a key (by TPM name): flushes it if loaded, drops its saved context and its
    /// persistent handle's ESAPI object.
    pub(super) fn forget(&mut self, name: &[u8], persistent: Option<u32>) {
        if let Some(i) = self.loaded.iter().position(|(n, _)| n == name) {
            let _ = self.unload(i);
        }
        self.saved.remove(name);
        if let Some(mut tr) = persistent.and_then(|h| self.persistent.remove(&h)) {
            let _ = self.tpm.ctx.tr_close(&mut tr);
        }
    }

    /// Removes a persistent handle's ESAPI object from the cache without closing it.
    pub(super) fn take_persistent(&mut self, handle: u32) -> Option<ObjectHandle> {
        self.persistent.remove(&handle)
    }

    /// Flushes every key this worker loaded (the no-leak guarantee at shutdown).
    pub(crate) fn flush_all(&mut self) {
        // Every key, whatever one flush says: `unload` takes each out of the LRU first.
        while !self.loaded.is_empty() {
            let _ = self.unload(0);
        }
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
    pub(super) fn on_key<T>(
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

    /// Loads (or finds) a key to check it is usable here, and settles its PSS path.
    pub(super) fn check_key(&mut self, key: &KeyMaterial) -> Result<()> {
        self.handle_for(key, Operation::Open).map(|_| ())
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
