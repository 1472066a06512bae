//! Generating keys under the SRK (kept as key files or made persistent) and deleting them.

use hardkey_api::{
    Error, InvalidInput, KeyAlgorithm, KeyId, KeyInfo, KeyUsages, Operation, Result, Tpm2Key,
    Unsupported,
};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::resource_handles::Provision;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Private, Public};

use super::TpmDevice;
use crate::connect::{self, auth_value, flushing, retrying};
use crate::error::mapper;
use crate::keyfile::{KeyFile, KeyFileKind};
use crate::keys::{
    self, KeyMaterial, Location, TpmKeyRef, describe, file_label, key_uri, tpm_name,
};
use crate::store::KeyHome;

impl TpmDevice {
    /// The session for an owner-authorized command, with the owner auth set.
    fn owner_session(&mut self, op: Operation) -> Result<AuthSession> {
        self.tpm.set_owner_auth(op)?;
        self.tpm.owner_session()
    }

    /// Creates a key under the SRK and stores it where asked.
    pub(crate) fn generate_key(
        &mut self,
        algorithm: KeyAlgorithm,
        usages: KeyUsages,
        label: Option<String>,
        location: Option<Tpm2Key>,
    ) -> Result<(KeyInfo, TpmKeyRef)> {
        let name = self.name().to_owned();
        let op = Operation::Generate;
        let location = match location {
            Some(l) => l,
            None => match &self.settings().home {
                KeyHome::Directory(dir) => {
                    let label = label.clone().ok_or(InvalidInput::Config {
                        what: "key label",
                        reason: "keys kept as files need a label (it names the file)",
                    })?;
                    keys::check_label(&label)?;
                    Tpm2Key::File(dir.join(format!("{label}.tss2.pem")))
                }
                KeyHome::Persistent => Tpm2Key::Handle(self.free_handle()?),
            },
        };
        if let Tpm2Key::File(path) = &location {
            if path.exists() {
                return Err(InvalidInput::AlreadyExists {
                    what: format!("key file {}", path.display()),
                    remedy: "choose another label or path, or delete the old key first",
                }
                .into());
            }
        }
        if let Tpm2Key::Handle(h) = &location {
            if self.tpm.persistent_handles()?.contains(h) {
                return Err(InvalidInput::AlreadyExists {
                    what: format!("persistent handle {h:#010x}"),
                    remedy: "choose a free handle (hardkey list shows the used ones) or omit it",
                }
                .into());
            }
        }
        let auth = {
            let s = self.settings();
            s.key_auth.load(&s.name)?
        };
        let template = keys::template(algorithm, usages)
            .ok_or_else(|| Unsupported::Algorithm {
                algorithm,
                device: name.clone(),
            })?
            .map_err(mapper(&name, op, "key template"))?;
        let auth_value = auth_value(auth.as_ref().map(|a| a.as_bytes()))?;
        // The new key's auth value travels encrypted (salted session, decrypt attribute).
        let session = if auth.is_some() {
            self.tpm.hmac_session()?
        } else {
            AuthSession::Password
        };
        // The SRK needs a slot while the key is created under it.
        self.make_room(1)?;
        let (parent, public, private) =
            self.tpm
                .create_under_srk(op, "TPM2_Create", session, &template, &auth_value, None)?;
        let tpm_name_value = tpm_name(&public)?;
        let Some(described) = describe(&public)? else {
            return Err(Error::backend(&name, op, "the TPM made a restricted key"));
        };
        let (location, label) = match location {
            Tpm2Key::File(path) => {
                let file = KeyFile {
                    kind: KeyFileKind::Key,
                    empty_auth: auth.is_none(),
                    parent,
                    public: public.clone(),
                    private: private.clone(),
                    policy: Vec::new(),
                };
                let pem = file.to_pem()?;
                hardkey_api::fs::write_new_file(&path, pem.as_bytes(), &name, op)?;
                let path = std::path::absolute(&path).unwrap_or(path);
                let label = label.or_else(|| file_label(&path));
                (
                    Location::Blob {
                        path,
                        parent,
                        private,
                    },
                    label,
                )
            }
            Tpm2Key::Handle(h) => {
                self.persist(&public, &private, parent, h)?;
                (Location::Persistent(h), None)
            }
            other => {
                return Err(Error::backend(
                    &name,
                    op,
                    format!("unsupported location {other:?}"),
                ));
            }
        };
        let uri = key_uri(
            match &location {
                Location::Persistent(h) => Tpm2Key::Handle(*h),
                Location::Blob { path, .. } => Tpm2Key::File(path.clone()),
            },
            self.settings().uri_tcti.as_deref(),
        );
        let material = KeyMaterial {
            location,
            public,
            name: tpm_name_value,
            auth,
            algorithm: described.algorithm,
            host_pss: false,
        };
        self.finish(material, &described, label, uri)
    }

    /// Loads a new key and makes it persistent at `handle` (`TPM2_EvictControl`).
    fn persist(
        &mut self,
        public: &Public,
        private: &Private,
        parent: u32,
        handle: u32,
    ) -> Result<()> {
        let op = Operation::Generate;
        let persistent = connect::persistent(handle)?;
        let session = self.owner_session(op)?;
        // The SRK and the new key are loaded together.
        self.make_room(2)?;
        let (public, private) = (public.clone(), private.clone());
        self.tpm.with_parent(parent, op, |tpm, srk| {
            let n = tpm.name.clone();
            let loaded = retrying(|| {
                tpm.ctx
                    .execute_with_session(Some(AuthSession::Password), |c| {
                        c.load(srk, private.clone(), public.clone())
                    })
            })
            .map_err(mapper(&n, op, "TPM2_Load"))?;
            flushing(tpm, loaded.into(), &n, op, "TPM2_FlushContext", |tpm| {
                retrying(|| {
                    tpm.ctx.execute_with_session(Some(session), |c| {
                        c.evict_control(
                            Provision::Owner,
                            loaded.into(),
                            Persistent::Persistent(persistent),
                        )
                    })
                })
                .map_err(|e| connect::owner_auth_error(&n, op, "TPM2_EvictControl", e))
                .map(drop)
            })
        })
    }

    /// The first free persistent handle from 0x81000002.
    fn free_handle(&mut self) -> Result<u32> {
        let used = self.tpm.persistent_handles()?;
        (0x8100_0002..=0x8100_FFFFu32)
            .find(|h| !used.contains(h))
            .ok_or_else(|| {
                Error::backend(
                    self.name(),
                    Operation::Generate,
                    "no free persistent handle in 0x81000002..=0x8100FFFF",
                )
            })
    }

    /// Deletes a key: evicts its persistent handle or removes its key file.
    pub(crate) fn delete_key(&mut self, id: &KeyId) -> Result<()> {
        let uri = self.find_id(id)?;
        let op = Operation::Delete;
        let name = self.name().to_owned();
        match &uri.key {
            Tpm2Key::Handle(h) => {
                let persistent = connect::persistent(*h)?;
                let session = self.owner_session(op)?;
                let tr = self.persistent_tr(*h, op)?;
                // EvictControl retires the ESAPI object itself: drop it from the cache only.
                self.take_persistent(*h);
                self.forget(id.as_bytes(), None);
                retrying(|| {
                    self.tpm.ctx.execute_with_session(Some(session), |c| {
                        c.evict_control(Provision::Owner, tr, Persistent::Persistent(persistent))
                    })
                })
                .map_err(mapper(&name, op, "TPM2_EvictControl"))?;
                Ok(())
            }
            Tpm2Key::File(p) => {
                self.forget(id.as_bytes(), None);
                std::fs::remove_file(p).map_err(|source| {
                    let cause = hardkey_api::fs::PathError::new("cannot remove", p, source);
                    Error::backend(&name, op, cause)
                })
            }
            other => Err(Error::backend(
                &name,
                op,
                format!("unsupported key reference {other:?}"),
            )),
        }
    }
}
