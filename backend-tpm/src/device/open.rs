//! Opening and listing keys: persistent handles and `TSS2 PRIVATE KEY` files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hardkey_api::{
    Error, InvalidInput, KeyAlgorithm, KeyFamily, KeyId, KeyInfo, KeyUri, KeyUsages, Operation,
    Result, SignatureKind, Tpm2Key, Tpm2Uri, Unsupported,
};
use tss_esapi::structures::Public;
use zeroize::Zeroizing;

use super::{PSS_HASH_LEN, PSS_OTHER, TpmDevice};
use crate::connect::{SRK_HANDLE, retrying};
use crate::error::mapper;
use crate::keyfile::{KeyFile, KeyFileKind};
use crate::keys::{
    self, Described, KeyMaterial, Location, TpmKeyRef, describe, file_label, key_info, key_uri,
    tpm_name,
};
use crate::store::{KeyHome, PssMode};

impl TpmDevice {
    /// The algorithms this TPM can generate (`TPM2_TestParms`).
    pub(super) fn supported_algorithms(&mut self) -> Vec<KeyAlgorithm> {
        KeyAlgorithm::ALL
            .into_iter()
            .filter(|alg| {
                keys::template(*alg, KeyUsages::SIGN).is_some_and(|public| {
                    let Ok(public) = public else {
                        return false;
                    };
                    let params = match &public {
                        Public::Rsa { parameters, .. } => {
                            tss_esapi::structures::PublicParameters::Rsa(*parameters)
                        }
                        Public::Ecc { parameters, .. } => {
                            tss_esapi::structures::PublicParameters::Ecc(*parameters)
                        }
                        _ => return false,
                    };
                    self.tpm
                        .ctx
                        .execute_without_session(|c| c.test_parms(params))
                        .is_ok()
                })
            })
            .collect()
    }

    /// The auth value for a key: `None` when it has none.
    fn key_auth(&self, empty_auth: bool) -> Result<Option<Zeroizing<String>>> {
        if empty_auth {
            return Ok(None);
        }
        let s = self.settings();
        s.key_auth.load(&s.name)
    }

    /// A key's material and info, with the RSA-PSS path settled (a probe signature the first
    /// time a PSS-capable key is opened on this TPM in auto mode).
    pub(super) fn finish(
        &mut self,
        mut material: KeyMaterial,
        described: &Described,
        label: Option<String>,
        uri: KeyUri,
    ) -> Result<(KeyInfo, TpmKeyRef)> {
        let can_pss = described.usages.sign
            && described.algorithm.family() == KeyFamily::Rsa
            && described
                .fixed_scheme
                .is_none_or(|(kind, _)| kind == SignatureKind::RsaPss);
        let (host_pss, pss_available) = if !can_pss {
            (false, false)
        } else {
            match self.settings().pss {
                PssMode::HostEncode => (described.raw_rsa, described.raw_rsa),
                PssMode::Auto if described.fixed_scheme.is_some() => (false, true),
                PssMode::Auto => match self.probe_pss(&material)? {
                    PSS_HASH_LEN => (false, true),
                    _ => (described.raw_rsa, described.raw_rsa),
                },
            }
        };
        material.host_pss = host_pss;
        let info = key_info(
            described,
            &material.name,
            label,
            Some(uri),
            self.settings().policy,
            pss_available,
        );
        Ok((info, TpmKeyRef(Arc::new(material))))
    }

    /// Opens the key in a persistent handle.
    fn open_handle(&mut self, handle: u32, op: Operation) -> Result<(KeyInfo, TpmKeyRef)> {
        let (public, name) = self.read_persistent(handle, op)?.ok_or_else(|| {
            Error::not_found(
                format_args!("persistent handle {handle:#010x} on {}", self.name()),
                "list the TPM's keys (hardkey list); the handle is empty",
            )
        })?;
        let Some(described) = describe(&public)? else {
            return Err(Unsupported::Usage {
                key: format!("{handle:#010x}"),
                op: Operation::Sign,
            }
            .into());
        };
        let material = KeyMaterial {
            location: Location::Persistent(handle),
            auth: self.key_auth(false)?,
            public,
            name,
            algorithm: described.algorithm,
            host_pss: false,
        };
        let uri = key_uri(Tpm2Key::Handle(handle), self.settings().uri_tcti.as_deref());
        self.finish(material, &described, None, uri)
    }

    /// The public area and name of a persistent object, `None` if the handle is empty.
    fn read_persistent(&mut self, handle: u32, op: Operation) -> Result<Option<(Public, Vec<u8>)>> {
        if !self.tpm.persistent_handles()?.contains(&handle) {
            return Ok(None);
        }
        let name = self.name().to_owned();
        let tr = self.persistent_tr(handle, op)?;
        let (public, tpm_name_value, _) = retrying(|| {
            self.tpm
                .ctx
                .execute_without_session(|c| c.read_public(tr.into()))
        })
        .map_err(mapper(&name, op, "TPM2_ReadPublic"))?;
        Ok(Some((public, tpm_name_value.value().to_vec())))
    }

    /// Opens a key file.
    fn open_file(&mut self, path: &Path) -> Result<(KeyInfo, TpmKeyRef)> {
        let text = hardkey_api::fs::read_key_file(path, self.name())?;
        let file = KeyFile::from_pem(&text, &path.display().to_string())?;
        if file.kind != KeyFileKind::Key {
            return Err(InvalidInput::Malformed {
                what: "TPM key file",
                reason: "it holds sealed data, not a key; use hardkey unseal",
            }
            .into());
        }
        let Some(described) = describe(&file.public)? else {
            return Err(InvalidInput::Malformed {
                what: "TPM key file",
                reason: "it holds a restricted key (storage or attestation), not a signing key",
            }
            .into());
        };
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let auth = self.key_auth(file.empty_auth)?;
        if !file.empty_auth && auth.is_none() {
            // Trying the key with an empty auth value would fail and count against the
            // TPM's dictionary-attack protection: refuse before the TPM is touched.
            return Err(Error::AuthFailed {
                target: format!("key {}", path.display()),
                source: "the key file says the key has an auth value (emptyAuth is false) and \
                         none was given: give it with --key-auth-file or HARDKEY_KEY_AUTH \
                         (library: TpmConfig::key_auth); nothing was sent to the TPM, so the \
                         dictionary-attack counter is unchanged"
                    .into(),
            });
        }
        let material = KeyMaterial {
            name: tpm_name(&file.public)?,
            auth,
            algorithm: described.algorithm,
            host_pss: false,
            location: Location::Blob {
                path: path.clone(),
                parent: file.parent,
                private: file.private,
            },
            public: file.public,
        };
        // Loading checks the blob belongs to this TPM and parent (else its first signature
        // does).
        if self.settings().load_on_open {
            self.check_key(&material)?;
        }
        let uri = key_uri(
            Tpm2Key::File(path.clone()),
            self.settings().uri_tcti.as_deref(),
        );
        self.finish(material, &described, file_label(&path), uri)
    }

    pub(crate) fn open_uri(&mut self, uri: &Tpm2Uri) -> Result<(KeyInfo, TpmKeyRef)> {
        match &uri.key {
            Tpm2Key::Handle(h) => self.open_handle(*h, Operation::Open),
            Tpm2Key::File(p) => self.open_file(p),
            other => Err(Error::backend(
                self.name(),
                Operation::Open,
                format!("unsupported key reference {other:?}"),
            )),
        }
    }

    /// Every key: persistent keys, then key files in the key directory.
    pub(crate) fn list_keys(&mut self) -> Result<Vec<KeyInfo>> {
        let mut infos = Vec::new();
        let policy = self.settings().policy;
        let pss_known = self.shared.pss_salt.load(Ordering::Relaxed);
        for handle in self.tpm.persistent_handles()? {
            if handle == SRK_HANDLE {
                continue;
            }
            let Some((public, name)) = self.read_persistent(handle, Operation::List)? else {
                continue;
            };
            if let Ok(Some(d)) = describe(&public) {
                let uri = key_uri(Tpm2Key::Handle(handle), self.settings().uri_tcti.as_deref());
                infos.push(key_info(
                    &d,
                    &name,
                    None,
                    Some(uri),
                    policy,
                    pss_known != PSS_OTHER || d.raw_rsa,
                ));
            }
        }
        if let KeyHome::Directory(dir) = &self.settings().home {
            for (path, file) in key_files(dir) {
                let Ok(Some(d)) = describe(&file.public) else {
                    continue;
                };
                let Ok(name) = tpm_name(&file.public) else {
                    continue;
                };
                let uri = key_uri(
                    Tpm2Key::File(path.clone()),
                    self.settings().uri_tcti.as_deref(),
                );
                infos.push(key_info(
                    &d,
                    &name,
                    file_label(&path),
                    Some(uri),
                    policy,
                    pss_known != PSS_OTHER || d.raw_rsa,
                ));
            }
        }
        Ok(infos)
    }

    /// The URI of the key with this id.
    pub(crate) fn find_id(&mut self, id: &KeyId) -> Result<Tpm2Uri> {
        for info in self.list_keys()? {
            if info.id == *id {
                if let Some(KeyUri::Tpm2(uri)) = info.uri {
                    return Ok(uri);
                }
            }
        }
        Err(Error::not_found(
            format_args!("id {id} on {}", self.name()),
            "list the TPM's keys (hardkey list)",
        ))
    }
}

/// Key files in a directory (unreadable or foreign files skipped).
fn key_files(dir: &Path) -> Vec<(PathBuf, KeyFile)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, KeyFile)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pem"))
        .filter_map(|p| {
            let text = std::fs::read_to_string(&p).ok()?;
            let file = KeyFile::from_pem(&text, "").ok()?;
            (file.kind == KeyFileKind::Key).then(|| {
                let p = std::path::absolute(&p).unwrap_or(p);
                (p, file)
            })
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
