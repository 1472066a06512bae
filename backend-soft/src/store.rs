//! [`SoftStore`]: the [`KeyStore`] of software keys.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use hardkey_api::{
    DevicePool, Error, FileUri, GenerateRequest, ImportRequest, InvalidInput, JobOptions,
    JobTimeout, KeyAlgorithm, KeyId, KeyInfo, KeyPolicy, KeyStore, KeyUri, KeyUsages, Operation,
    PoolConfig, PooledKey, Result, Unsupported,
};

use crate::DEVICE as NAME;
use crate::device::{SoftDevice, SoftKeyRef};
use crate::material::KeyMaterial;
use hardkey_api::fs::{read_key_file, write_new_file};

/// A software key, served by the store's pool.
pub type SoftKey = PooledKey<SoftDevice>;

/// How a [`SoftStore`] runs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SoftConfig {
    /// The worker pool: by default named "soft", one worker per CPU (at most 8), 1024 queue
    /// slots, 30 s deadline.
    pub pool: PoolConfig,
    /// Policy applied to every key the store opens.
    pub policy: KeyPolicy,
}

impl Default for SoftConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        Self {
            pool: PoolConfig::new("soft").workers(cpus).queue_capacity(1024),
            policy: KeyPolicy::default(),
        }
    }
}

impl SoftConfig {
    /// Sets the number of workers signing in parallel.
    pub fn workers(mut self, n: usize) -> Self {
        self.pool = self.pool.workers(n);
        self
    }

    /// Replaces the pool configuration.
    pub fn pool(mut self, pool: PoolConfig) -> Self {
        self.pool = pool;
        self
    }

    /// Sets the key policy.
    pub fn policy(mut self, policy: KeyPolicy) -> Self {
        self.policy = policy;
        self
    }
}

#[derive(Clone)]
struct Entry {
    info: KeyInfo,
    material: SoftKeyRef,
    /// The store wrote the key's file (generate or import with a location), so `delete` may
    /// remove it. Files the store only opened are the user's.
    owns_file: bool,
}

type Keys = Arc<Mutex<BTreeMap<KeyId, Entry>>>;

fn lock(keys: &Keys) -> MutexGuard<'_, BTreeMap<KeyId, Entry>> {
    keys.lock().unwrap_or_else(|p| p.into_inner())
}

/// Software keys in memory, optionally loaded from or saved to PEM files (`file:` URIs).
///
/// Keys generated without a location live only in memory (their [`KeyInfo::uri`] is `None`).
/// Every private-key operation, generation and file access runs on the store's
/// [`DevicePool`], exactly as for hardware keys.
pub struct SoftStore {
    pool: DevicePool<SoftDevice>,
    keys: Keys,
    policy: KeyPolicy,
}

impl std::fmt::Debug for SoftStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftStore")
            .field("pool", &self.pool)
            .field("keys", &lock(&self.keys).len())
            .finish()
    }
}

impl SoftStore {
    /// Starts a store with its worker pool.
    pub fn new(config: SoftConfig) -> Result<Self> {
        if config.policy.allow_legacy_rsa_pkcs1v15_decrypt {
            // The `rsa` crate's private-key operation is not constant time
            // (RUSTSEC-2023-0071): with PKCS#1 v1.5 decryption that is a padding oracle.
            return Err(Unsupported::LegacyDecryptInSoftware.into());
        }
        Ok(Self {
            pool: DevicePool::new(config.pool, |_| Ok(SoftDevice))?,
            keys: Arc::default(),
            policy: config.policy,
        })
    }

    /// A store with the default configuration.
    pub fn in_memory() -> Result<Self> {
        Self::new(SoftConfig::default())
    }

    /// The pool serving this store's keys (for stats and shutdown).
    pub fn pool(&self) -> &DevicePool<SoftDevice> {
        &self.pool
    }

    fn key(&self, entry: Entry) -> SoftKey {
        PooledKey::new(entry.info, entry.material, self.pool.clone())
    }

    /// Runs `job` on the pool and turns its entry into a key.
    fn run_entry<F>(
        &self,
        options: JobOptions,
        job: F,
    ) -> impl Future<Output = Result<SoftKey>> + Send + 'static + use<F>
    where
        F: FnMut(&mut SoftDevice) -> Result<Entry> + Send + 'static,
    {
        let pool = self.pool.clone();
        let run = self.pool.run(options, job);
        async move {
            let entry = run.await?;
            Ok(PooledKey::new(entry.info, entry.material, pool))
        }
    }
}

/// Where a new key comes from, for [`register`].
enum Origin {
    /// Opened from a file the user owns.
    Opened(Box<KeyUri>),
    /// Generated or imported; written to this file if any.
    Created(Option<PathBuf>, Operation),
}

/// Registers key material. Opening a key already registered returns it; creating one that is
/// already registered (importing the same key twice) is refused before anything is written.
fn register(
    keys: &Keys,
    material: KeyMaterial,
    label: Option<String>,
    origin: Origin,
    usages: KeyUsages,
    policy: KeyPolicy,
) -> Result<Entry> {
    let public_key = material.public_key()?;
    let id = KeyId::from_public_key(&public_key);
    if let Some(existing) = lock(keys).get(&id) {
        return match origin {
            Origin::Opened(_) => Ok(existing.clone()),
            Origin::Created(..) => Err(InvalidInput::AlreadyExists {
                what: format!(
                    "key {} (id {id}) in this store",
                    existing.info.display_name()
                ),
                remedy: "use the key already there, or delete it first",
            }
            .into()),
        };
    }
    let (uri, owns_file) = match origin {
        Origin::Opened(uri) => (Some(*uri), false),
        Origin::Created(path, op) => {
            if let Some(path) = &path {
                write_new_file(path, material.to_pkcs8_pem()?.as_bytes(), NAME, op)?;
            }
            (path.map(|p| KeyUri::File(FileUri::new(p))), true)
        }
    };
    let info = KeyInfo::new(id.clone(), public_key, usages, policy)
        .with_label(label)
        .with_uri(uri);
    let entry = Entry {
        info,
        material: SoftKeyRef(Arc::new(material)),
        owns_file,
    };
    // A concurrent registration of the same key may have won meanwhile: keep the first.
    Ok(lock(keys).entry(id).or_insert(entry).clone())
}

fn label_or_file_stem(label: Option<&String>, path: Option<&Path>) -> Option<String> {
    label.cloned().or_else(|| path.and_then(label_of))
}

/// The path a `file:` URI names; other URIs are not for this store.
fn file_path(uri: &KeyUri) -> Result<PathBuf> {
    match uri {
        KeyUri::File(f) => Ok(f.path.clone()),
        other => Err(Unsupported::UriScheme {
            uri: other.to_string(),
            store: NAME,
            serves: "file:",
        }
        .into()),
    }
}

fn optional_file_path(location: Option<&KeyUri>) -> Result<Option<PathBuf>> {
    location.map(file_path).transpose()
}

fn label_of(path: &Path) -> Option<String> {
    path.file_stem().map(|s| s.to_string_lossy().into_owned())
}

fn ready<T: Send + 'static>(value: Result<T>) -> impl Future<Output = Result<T>> + Send + 'static {
    std::future::ready(value)
}

impl KeyStore for SoftStore {
    type Key = SoftKey;

    fn name(&self) -> &str {
        NAME
    }

    fn algorithms(&self) -> &[KeyAlgorithm] {
        // Every algorithm but Ed448, which has no implementation in the tree.
        const SOFT: [KeyAlgorithm; 6] = [
            KeyAlgorithm::EcP256,
            KeyAlgorithm::EcP384,
            KeyAlgorithm::Ed25519,
            KeyAlgorithm::Rsa2048,
            KeyAlgorithm::Rsa3072,
            KeyAlgorithm::Rsa4096,
        ];
        &SOFT
    }

    fn open(&self, uri: &KeyUri) -> impl Future<Output = Result<SoftKey>> + Send + 'static + use<> {
        let run = file_path(uri).map(|path| {
            let keys = Arc::clone(&self.keys);
            let policy = self.policy;
            let uri = uri.clone();
            self.run_entry(JobOptions::idempotent(Operation::Open), move |_| {
                let pem = read_key_file(&path, NAME)?;
                let what = format!("private key in {}", path.display());
                let material = KeyMaterial::from_pem(&pem, &what)?;
                let usages = KeyUsages::default_for(material.algorithm());
                let label = label_of(&path);
                register(
                    &keys,
                    material,
                    label,
                    Origin::Opened(Box::new(uri.clone())),
                    usages,
                    policy,
                )
            })
        });
        async move { run?.await }
    }

    fn open_id(
        &self,
        id: &KeyId,
    ) -> impl Future<Output = Result<SoftKey>> + Send + 'static + use<> {
        let found = lock(&self.keys).get(id).cloned();
        ready(match found {
            Some(entry) => Ok(self.key(entry)),
            None => Err(Error::not_found(
                format!("id {id}"),
                "list the keys of this store; in-memory keys do not survive a restart",
            )),
        })
    }

    fn list(&self) -> impl Future<Output = Result<Vec<KeyInfo>>> + Send + 'static + use<> {
        ready(Ok(lock(&self.keys)
            .values()
            .map(|e| e.info.clone())
            .collect()))
    }

    fn generate(
        &self,
        request: GenerateRequest,
    ) -> impl Future<Output = Result<SoftKey>> + Send + 'static + use<> {
        let run = optional_file_path(request.location.as_ref()).map(|path| {
            let keys = Arc::clone(&self.keys);
            let policy = self.policy;
            let options = JobOptions::new(Operation::Generate).with_timeout(JobTimeout::Never);
            self.run_entry(options, move |_| {
                let material = KeyMaterial::generate(request.algorithm)?;
                let label = label_or_file_stem(request.label.as_ref(), path.as_deref());
                let origin = Origin::Created(path.clone(), Operation::Generate);
                register(&keys, material, label, origin, request.usages, policy)
            })
        });
        async move { run?.await }
    }

    fn import(
        &self,
        request: ImportRequest,
    ) -> impl Future<Output = Result<SoftKey>> + Send + 'static + use<> {
        let run = optional_file_path(request.location.as_ref()).map(|path| {
            let keys = Arc::clone(&self.keys);
            let policy = self.policy;
            self.run_entry(JobOptions::new(Operation::Import), move |_| {
                let material =
                    KeyMaterial::from_pkcs8_der(&request.pkcs8_der, "imported PKCS#8 key")?;
                let usages = request
                    .usages
                    .unwrap_or_else(|| KeyUsages::default_for(material.algorithm()));
                let label = label_or_file_stem(request.label.as_ref(), path.as_deref());
                let origin = Origin::Created(path.clone(), Operation::Import);
                register(&keys, material, label, origin, usages, policy)
            })
        });
        async move { run?.await }
    }

    fn delete(&self, id: &KeyId) -> impl Future<Output = Result<()>> + Send + 'static + use<> {
        let keys = Arc::clone(&self.keys);
        let id = id.clone();
        self.pool.run(JobOptions::new(Operation::Delete), move |_| {
            let mut map = lock(&keys);
            let entry = match map.get(&id) {
                None => {
                    return Err(Error::not_found(
                        format!("id {id}"),
                        "list the keys of this store",
                    ));
                }
                Some(e) if !e.owns_file && e.info.uri.is_some() => {
                    return Err(Unsupported::NotOwned {
                        key: e.info.display_name(),
                        location: e
                            .info
                            .uri
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_default(),
                    }
                    .into());
                }
                Some(_) => map.remove(&id),
            };
            drop(map);
            let Some(entry) = entry else {
                return Err(Error::not_found(
                    format!("id {id}"),
                    "list the keys of this store",
                ));
            };
            if let Some(KeyUri::File(f)) = &entry.info.uri {
                match std::fs::remove_file(&f.path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        // Keep the store consistent with the file that is still there.
                        lock(&keys).insert(id.clone(), entry.clone());
                        return Err(Error::backend(NAME, Operation::Delete, e));
                    }
                }
            }
            Ok(())
        })
    }
}
