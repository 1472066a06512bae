//! [`TpmStore`]: the keys of one TPM, served by one worker that owns the connection.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::time::Duration;

use hardkey_api::secret::SecretSource;
use hardkey_api::{
    DevicePool, Error, GenerateRequest, ImportRequest, JobOptions, JobTimeout, KeyAlgorithm,
    KeyFamily, KeyId, KeyInfo, KeyPolicy, KeyStore, KeyUri, Operation, PoolConfig, PooledKey,
    Result, Tpm2Uri, Unsupported,
};

use crate::connect;
use crate::device::{PSS_UNKNOWN, Shared, TpmDevice};
use crate::keys::TpmKeyRef;

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
    /// Load a key file into the TPM when it is opened, to check at once that it belongs to
    /// this TPM and parent (on by default). Off, opening only reads the file and the key is
    /// first loaded when it signs: what a server of thousands of key files wants, which
    /// keeps a few loaded at a time ([`TpmConfig::max_loaded`]).
    pub load_on_open: bool,
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
            load_on_open: true,
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

    /// Whether opening a key file loads it ([`TpmConfig::load_on_open`]).
    pub fn load_on_open(mut self, load: bool) -> Self {
        self.load_on_open = load;
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
    pub(crate) load_on_open: bool,
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
            load_on_open: config.load_on_open,
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
                let device = match request.algorithm.family() {
                    // TPM 2.0 (Part 2, TPM_ALG_ID) defines no EdDSA at all.
                    KeyFamily::EdDsa => format!(
                        "{name} (TPM 2.0 has no EdDSA; make {} keys on a PKCS#11 token \
                         with CKM_EDDSA, such as SoftHSM, or use p256 on the TPM)",
                        request.algorithm
                    ),
                    _ => name,
                };
                return Err(Error::from(Unsupported::Algorithm {
                    algorithm: request.algorithm,
                    device,
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
