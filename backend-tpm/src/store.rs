//! [`TpmStore`]: the keys of one TPM, served by one worker that owns the connection.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::time::Duration;

use hardkey_api::secret::SecretSource;
use hardkey_api::{
    DevicePool, Error, GenerateRequest, ImportRequest, InvalidInput, JobOptions, JobTimeout,
    KeyAlgorithm, KeyFamily, KeyId, KeyInfo, KeyPolicy, KeyStore, KeyUri, KeyUsages, Operation,
    PoolConfig, PooledKey, Result, SignatureKind, Tpm2Key, Tpm2Uri, Unsupported,
};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::resource_handles::Provision;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::Public;

use crate::connect::{self, SRK_HANDLE, auth_value, retrying};
use crate::device::{PSS_HASH_LEN, PSS_OTHER, PSS_UNKNOWN, Shared, TpmDevice};
use crate::error::mapper;
use crate::keyfile::{KeyFile, KeyFileKind};
use crate::keys::{
    self, Described, KeyMaterial, Location, TpmKeyRef, describe, file_label, key_info, key_uri,
    tpm_name,
};

/// A key on a TPM.
pub type TpmKey = PooledKey<TpmDevice>;

/// How RSA-PSS signatures are made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PssMode {
    /// The TPM's own RSA-PSS when it uses salt = hash length (checked once per TPM with a
    /// probe signature), else host-side encoding on keys that allow raw RSA.
    #[default]
    Auto,
    /// Always host-side EMSA-PSS encoding plus raw RSA (`TPM2_RSA_Decrypt`, NULL scheme);
    /// keys without the decrypt attribute then offer no PSS scheme.
    HostEncode,
}

/// Where [`TpmStore::generate`](KeyStore::generate) keeps new keys when the request names no
/// location.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyHome {
    /// `TSS2 PRIVATE KEY` files in this directory, named `<label>.tss2.pem`; `list` shows
    /// them next to the TPM's persistent keys.
    Directory(PathBuf),
    /// The next free persistent handle from 0x81000002 (needs the owner auth).
    Persistent,
}

/// How to reach a TPM and where its keys live.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TpmConfig {
    /// The TCTI (`device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`, `tabrmd`...).
    pub tcti: String,
    /// Whether `tcti` was given explicitly (then key URIs carry it).
    pub tcti_in_uris: bool,
    /// Where new keys go.
    pub home: KeyHome,
    /// The owner hierarchy's auth (to create the SRK or make keys persistent).
    pub owner_auth: SecretSource,
    /// The auth value of keys this store generates, and of keys whose file says they have
    /// one.
    pub key_auth: SecretSource,
    /// RSA-PSS path.
    pub pss: PssMode,
    /// Flush every transient object and session in the TPM when the store opens, whoever
    /// made them (off by default). Only for a TPM without a resource manager that no other
    /// process uses: there, what a killed process left loaded holds slots until flushed.
    /// Never needed behind a resource manager, which flushes a dead client's handles.
    pub flush_leftovers: bool,
    /// At most this many keys stay loaded (the TPM's slots minus one is the ceiling).
    pub max_loaded: Option<usize>,
    /// Deadline of each operation, queue wait included.
    pub op_timeout: Option<Duration>,
    /// Queued operations beyond which callers wait.
    pub queue_capacity: usize,
    /// Policy applied to every key.
    pub policy: KeyPolicy,
    /// The name (TPM2B_NAME bytes: hash algorithm and digest) pinned for the persistent SRK
    /// at 0x81000001. Without it, the SRK found there is used only if it is the key hardkey's
    /// SRK template makes (verifying that needs the owner auth when the owner hierarchy has
    /// one); with it, only if its name is this one.
    pub srk_name: Option<Vec<u8>>,
}

impl TpmConfig {
    /// A TPM reached through `tcti`, keys in persistent handles.
    pub fn new(tcti: impl Into<String>) -> Self {
        Self {
            tcti: tcti.into(),
            tcti_in_uris: true,
            home: KeyHome::Persistent,
            owner_auth: SecretSource::None,
            key_auth: SecretSource::None,
            pss: PssMode::Auto,
            flush_leftovers: false,
            max_loaded: None,
            op_timeout: Some(Duration::from_secs(30)),
            queue_capacity: 1024,
            policy: KeyPolicy::default(),
            srk_name: None,
        }
    }

    /// Pins the persistent SRK's name ([`TpmConfig::srk_name`]).
    pub fn srk_name(mut self, name: Option<Vec<u8>>) -> Self {
        self.srk_name = name;
        self
    }

    /// The default TPM ([`connect::default_tcti`]).
    pub fn default_tpm() -> Self {
        let mut config = Self::new(connect::default_tcti());
        config.tcti_in_uris = false;
        config
    }

    /// The TPM a key URI names (its `tcti=`, else the default).
    pub fn from_uri(uri: &Tpm2Uri) -> Self {
        match &uri.tcti {
            Some(t) => Self::new(t.clone()),
            None => Self::default_tpm(),
        }
    }

    /// Keeps new keys as files in `dir`.
    pub fn key_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.home = KeyHome::Directory(dir.into());
        self
    }

    /// Sets the owner auth source.
    pub fn owner_auth(mut self, source: SecretSource) -> Self {
        self.owner_auth = source;
        self
    }

    /// Sets the key auth source.
    pub fn key_auth(mut self, source: SecretSource) -> Self {
        self.key_auth = source;
        self
    }

    /// Sets the RSA-PSS path.
    pub fn pss(mut self, mode: PssMode) -> Self {
        self.pss = mode;
        self
    }

    /// Sets the key policy.
    pub fn policy(mut self, policy: KeyPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets the operation deadline.
    pub fn op_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// Caps the number of keys kept loaded.
    pub fn max_loaded(mut self, n: usize) -> Self {
        self.max_loaded = Some(n);
        self
    }
}

/// What the worker needs from the configuration.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) name: String,
    pub(crate) tcti: String,
    pub(crate) uri_tcti: Option<String>,
    pub(crate) home: KeyHome,
    pub(crate) owner_auth: SecretSource,
    pub(crate) key_auth: SecretSource,
    pub(crate) pss: PssMode,
    pub(crate) flush_leftovers: bool,
    pub(crate) max_loaded: Option<usize>,
    pub(crate) policy: KeyPolicy,
    pub(crate) srk_name: Option<Vec<u8>>,
}

/// The keys of one TPM. Opening it connects (a TPM executes one command at a time, so one
/// worker thread owns the connection; the pool's bounded queue gives backpressure). It never
/// flushes what other processes loaded (unless [`TpmConfig::flush_leftovers`] asks it to).
pub struct TpmStore {
    pool: DevicePool<TpmDevice>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TpmStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmStore")
            .field("tpm", &self.shared.settings.name)
            .finish()
    }
}

impl TpmStore {
    /// Connects. Blocks: call it before the event loop or on a blocking thread.
    pub fn open(config: TpmConfig) -> Result<Self> {
        let name = format!("TPM at {}", config.tcti);
        let settings = Settings {
            flush_leftovers: config.flush_leftovers,
            uri_tcti: config.tcti_in_uris.then(|| config.tcti.clone()),
            name: name.clone(),
            tcti: config.tcti,
            home: config.home,
            owner_auth: config.owner_auth,
            key_auth: config.key_auth,
            pss: config.pss,
            max_loaded: config.max_loaded,
            policy: config.policy,
            srk_name: config.srk_name,
        };
        let shared = Arc::new(Shared {
            settings,
            pss_salt: AtomicU8::new(PSS_UNKNOWN),
            algorithms: std::sync::OnceLock::new(),
        });
        let pool_config = PoolConfig::new(name)
            .workers(1)
            .queue_capacity(config.queue_capacity)
            .op_timeout(config.op_timeout);
        let for_worker = Arc::clone(&shared);
        // Returns once the worker connected, which probed the algorithms.
        let pool = DevicePool::new(pool_config, move |_| {
            TpmDevice::connect(Arc::clone(&for_worker))
        })?;
        Ok(Self { pool, shared })
    }

    /// The worker pool (stats, shutdown).
    pub fn pool(&self) -> &DevicePool<TpmDevice> {
        &self.pool
    }

    /// The transient objects loaded in the TPM now (all clients'), for leak checks.
    pub fn transient_handles(&self) -> impl Future<Output = Result<Vec<u32>>> + Send + 'static {
        self.pool.run(
            JobOptions::idempotent(Operation::List),
            |dev: &mut TpmDevice| dev.tpm.transient_handles(),
        )
    }

    /// Flushes every key this store keeps loaded (they load again when used).
    pub fn flush_loaded(&self) -> impl Future<Output = Result<()>> + Send + 'static {
        self.pool.run(
            JobOptions::idempotent(Operation::Admin),
            |dev: &mut TpmDevice| {
                dev.flush_all();
                Ok(())
            },
        )
    }

    fn run_key<F>(
        &self,
        options: JobOptions,
        job: F,
    ) -> impl Future<Output = Result<TpmKey>> + Send + 'static + use<F>
    where
        F: FnMut(&mut TpmDevice) -> Result<(KeyInfo, TpmKeyRef)> + Send + 'static,
    {
        let pool = self.pool.clone();
        let run = self.pool.run(options, job);
        async move {
            let (info, key) = run.await?;
            Ok(PooledKey::new(info, key, pool))
        }
    }
}

// ------------------------------------------------------------------------------------------
// Jobs, run on the worker.
// ------------------------------------------------------------------------------------------

impl TpmDevice {
    /// The algorithms this TPM can generate (`TPM2_TestParms`).
    pub(crate) fn supported_algorithms(&mut self) -> Vec<KeyAlgorithm> {
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

    fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    /// The auth value for a key: `None` when it has none.
    fn key_auth(&self, empty_auth: bool) -> Result<Option<zeroize::Zeroizing<String>>> {
        if empty_auth {
            return Ok(None);
        }
        let s = self.settings();
        s.key_auth.load(&s.name)
    }

    /// A key's material and info, with the RSA-PSS path settled (a probe signature the first
    /// time a PSS-capable key is opened on this TPM in auto mode).
    fn finish(
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
        // Loading checks the blob belongs to this TPM and parent.
        self.check_key(&material)?;
        let uri = key_uri(
            Tpm2Key::File(path.clone()),
            self.settings().uri_tcti.as_deref(),
        );
        self.finish(material, &described, file_label(&path), uri)
    }

    fn open_uri(&mut self, uri: &Tpm2Uri) -> Result<(KeyInfo, TpmKeyRef)> {
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
    fn list_keys(&mut self) -> Result<Vec<KeyInfo>> {
        let mut infos = Vec::new();
        let policy = self.settings().policy;
        let pss_known = self
            .shared
            .pss_salt
            .load(std::sync::atomic::Ordering::Relaxed);
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
    fn find_id(&mut self, id: &KeyId) -> Result<Tpm2Uri> {
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

    /// The session for an owner-authorized command, with the owner auth set.
    fn owner_session(&mut self, op: Operation) -> Result<AuthSession> {
        self.tpm.set_owner_auth(op)?;
        self.tpm.owner_session()
    }

    /// Creates a key under the SRK and stores it where asked.
    fn generate_key(
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
        let parent = self.tpm.new_object_parent(op)?;
        let created = self.tpm.with_parent(parent, op, |tpm, srk| {
            let n = tpm.name.clone();
            retrying(|| {
                tpm.ctx.execute_with_session(Some(session), |c| {
                    c.create(
                        srk,
                        template.clone(),
                        Some(auth_value.clone()),
                        None,
                        None,
                        None,
                    )
                })
            })
            .map_err(mapper(&n, op, "TPM2_Create"))
        })?;
        let public = created.out_public;
        let private = created.out_private;
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
        private: &tss_esapi::structures::Private,
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
            let evicted = retrying(|| {
                tpm.ctx.execute_with_session(Some(session), |c| {
                    c.evict_control(
                        Provision::Owner,
                        loaded.into(),
                        Persistent::Persistent(persistent),
                    )
                })
            })
            .map_err(|e| connect::owner_auth_error(&n, op, "TPM2_EvictControl", e));
            let flushed =
                tpm.ctx
                    .flush_context(loaded.into())
                    .map_err(mapper(&n, op, "TPM2_FlushContext"));
            evicted?;
            flushed
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
    fn delete_key(&mut self, id: &KeyId) -> Result<()> {
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
                std::fs::remove_file(p).map_err(|e| {
                    Error::backend(&name, op, format!("cannot remove {}: {e}", p.display()))
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

fn wrong_scheme(uri: &KeyUri) -> Error {
    Unsupported::UriScheme {
        uri: uri.to_string(),
        store: "the TPM backend",
        serves: "tpm2:",
    }
    .into()
}

impl KeyStore for TpmStore {
    type Key = TpmKey;

    fn name(&self) -> &str {
        &self.shared.settings.name
    }

    fn algorithms(&self) -> &[KeyAlgorithm] {
        self.shared.algorithms.get().map_or(&[], Vec::as_slice)
    }

    fn open(&self, uri: &KeyUri) -> impl Future<Output = Result<TpmKey>> + Send + 'static + use<> {
        let checked = match uri {
            KeyUri::Tpm2(u) => match (&u.tcti, &self.shared.settings.uri_tcti) {
                (Some(theirs), Some(ours)) if theirs != ours => Err(Error::not_found(
                    u,
                    "the URI names a different TPM (tcti) than this store serves",
                )),
                _ => Ok(u.clone()),
            },
            other => Err(wrong_scheme(other)),
        };
        let run = checked.map(|u| {
            self.run_key(JobOptions::idempotent(Operation::Open), move |dev| {
                dev.open_uri(&u)
            })
        });
        async move { run?.await }
    }

    fn open_id(&self, id: &KeyId) -> impl Future<Output = Result<TpmKey>> + Send + 'static + use<> {
        let id = id.clone();
        self.run_key(JobOptions::idempotent(Operation::Open), move |dev| {
            let uri = dev.find_id(&id)?;
            dev.open_uri(&uri)
        })
    }

    fn list(&self) -> impl Future<Output = Result<Vec<KeyInfo>>> + Send + 'static + use<> {
        self.pool.run(
            JobOptions::idempotent(Operation::List),
            |dev: &mut TpmDevice| dev.list_keys(),
        )
    }

    fn generate(
        &self,
        request: GenerateRequest,
    ) -> impl Future<Output = Result<TpmKey>> + Send + 'static + use<> {
        let supported = self.algorithms().contains(&request.algorithm);
        let location = match &request.location {
            None => Ok(None),
            Some(KeyUri::Tpm2(u)) => Ok(Some(u.key.clone())),
            Some(other) => Err(wrong_scheme(other)),
        };
        let name = self.shared.settings.name.clone();
        let options = JobOptions::new(Operation::Generate).with_timeout(JobTimeout::Never);
        let run = location.and_then(|location| {
            if !supported {
                return Err(Error::from(Unsupported::Algorithm {
                    algorithm: request.algorithm,
                    device: name,
                }));
            }
            Ok(self.run_key(options, move |dev| {
                dev.generate_key(
                    request.algorithm,
                    request.usages,
                    request.label.clone(),
                    location.clone(),
                )
            }))
        });
        async move { run?.await }
    }

    fn import(
        &self,
        _request: ImportRequest,
    ) -> impl Future<Output = Result<TpmKey>> + Send + 'static + use<> {
        // hardkey makes TPM keys inside the TPM: an imported key would have existed outside.
        let err = Error::from(Unsupported::Operation {
            op: Operation::Import,
            device: self.shared.settings.name.clone(),
        });
        async move { Err(err) }
    }

    fn delete(&self, id: &KeyId) -> impl Future<Output = Result<()>> + Send + 'static + use<> {
        let id = id.clone();
        self.pool.run(
            JobOptions::new(Operation::Delete),
            move |dev: &mut TpmDevice| dev.delete_key(&id),
        )
    }
}
