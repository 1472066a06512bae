//! [`Pkcs11Store`]: the keys of one PKCS#11 token, served by a pool of sessions.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64};
use std::time::Duration;

use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use hardkey_api::uri::{Pkcs11Uri, TokenAttrs};
use hardkey_api::{
    DevicePool, Error, GenerateRequest, ImportRequest, JobOptions, JobTimeout, KeyAlgorithm, KeyId,
    KeyInfo, KeyPolicy, KeyStore, KeyUri, Operation, PoolConfig, PooledKey, Result, Unsupported,
};

use crate::error::mapper;
use crate::keys::{
    ALLOWED_UNKNOWN, ObjectIndex, Pkcs11KeyRef, UriBase, can_name_private, find_private,
    generate_templates, import_templates, leave_usages_to_token, new_id, remove_interrupted, wipe,
};
use crate::module;
use crate::pin::{PIN_ENV, PinSource};
use crate::session::{OAEP_UNKNOWN, Pkcs11Device, Target};
use crate::token::{self, TokenSummary};

/// A key on a PKCS#11 token.
pub type Pkcs11Key = PooledKey<Pkcs11Device>;

/// How to reach a token.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Pkcs11Config {
    /// The module; `None` looks for SoftHSM in the usual places.
    pub module: Option<PathBuf>,
    /// Which token: the token attributes of this URI (token, serial, manufacturer, model,
    /// slot-id) must match exactly one initialized token.
    pub token: Pkcs11Uri,
    /// Where the user PIN comes from.
    pub pin: PinSource,
    /// Sessions (pool workers) to open: how many operations run on the token at once.
    pub sessions: usize,
    /// Deadline of each operation, queue wait included.
    pub op_timeout: Option<Duration>,
    /// Policy applied to every key.
    pub policy: KeyPolicy,
    /// Library parameters for the module's `C_Initialize` (see [`Pkcs11Config::module_init`]).
    pub module_init: Option<String>,
}

/// Default number of sessions per token (`max-sessions` in a URI overrides it).
pub const DEFAULT_SESSIONS: usize = 4;

impl Pkcs11Config {
    /// A token selected by `token`, with the PIN from `pin`.
    pub fn new(token: Pkcs11Uri, pin: PinSource) -> Self {
        Self {
            module: None,
            token,
            pin,
            sessions: DEFAULT_SESSIONS,
            op_timeout: Some(Duration::from_secs(30)),
            policy: KeyPolicy::default(),
            module_init: None,
        }
    }

    /// Everything a key URI says: token attributes, `module-path`, `pin-source` (or an allowed
    /// `pin-value`; else the `HARDKEY_PIN` environment variable) and `max-sessions`.
    pub fn from_uri(uri: &Pkcs11Uri) -> Result<Self> {
        let pin = match (uri.pin_value(), uri.pin_source()) {
            (Some(value), _) => PinSource::Value(value.clone()),
            (None, Some(source)) => PinSource::parse(source)?,
            (None, None) => PinSource::Env(PIN_ENV.to_owned()),
        };
        let mut config = Self::new(uri.clone(), pin);
        config.module = uri.module_path().map(PathBuf::from);
        if let Some(n) = uri.max_sessions() {
            config.sessions = n.get();
        }
        Ok(config)
    }

    /// Sets the module path.
    pub fn module(mut self, path: impl Into<PathBuf>) -> Self {
        self.module = Some(path.into());
        self
    }

    /// Sets the library parameters given to the module's `C_Initialize` in the reserved
    /// pointer of its arguments, for modules configured that way: NSS softokn takes its
    /// database there (`configdir='sql:/etc/pki/nssdb' certPrefix='' keyPrefix=''
    /// secmod='secmod.db'`). Standard modules take none and refuse any (an error says so). A
    /// module is initialized once per process, so every store of one module must give the
    /// same parameters (or none, to use the module as first initialized).
    pub fn module_init(mut self, params: impl Into<String>) -> Self {
        self.module_init = Some(params.into());
        self
    }

    /// Sets the number of sessions.
    pub fn sessions(mut self, n: usize) -> Self {
        self.sessions = n;
        self
    }

    /// Sets the key policy.
    pub fn policy(mut self, policy: KeyPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets the deadline of each operation.
    pub fn op_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.op_timeout = timeout;
        self
    }
}

/// The keys of one token. Opening it loads and initializes the module (once per process),
/// finds the token, opens `sessions` sessions and logs in once.
pub struct Pkcs11Store {
    pool: DevicePool<Pkcs11Device>,
    target: Arc<Target>,
    token: TokenSummary,
    /// What the token's key-pair generation mechanisms cover.
    algorithms: Vec<KeyAlgorithm>,
}

impl std::fmt::Debug for Pkcs11Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Store")
            .field("token", &self.token)
            .field("pool", &self.pool)
            .finish()
    }
}

impl Pkcs11Store {
    /// Connects to the token. Blocks (module load, login): call it before the event loop or
    /// on a blocking thread.
    pub fn open(config: Pkcs11Config) -> Result<Self> {
        let module = module::load(config.module.as_deref(), config.module_init.as_deref())?;
        let (slot, token, algorithms) = {
            let _calls = module.calls();
            let (slot, token) = token::find(&module, &config.token)?;
            let algorithms = token::key_algorithms(&module, slot);
            (slot, token, algorithms)
        };
        let name = format!("token '{}'", token.label);
        let target = Arc::new(Target {
            slot: AtomicU64::new(slot.id()),
            // Found again by serial too, so that a re-initialized token that merely has the
            // same label is never taken for this one.
            token_uri: config.token.clone().with_serial(token.serial.clone()),
            name: name.clone(),
            pin: config.pin.clone(),
            policy: config.policy,
            uri_base: UriBase {
                token: token.label.clone(),
                module_path: config
                    .module
                    .as_ref()
                    .map(|_| module.path.display().to_string()),
                pin_source: config.token.pin_source().map(str::to_owned),
            },
            module,
            oaep_sha256: AtomicU8::new(OAEP_UNKNOWN),
            allowed_mechanisms: AtomicU8::new(ALLOWED_UNKNOWN),
            login_lock: std::sync::Mutex::new(()),
            handle_hints: std::sync::Mutex::new(std::collections::HashMap::new()),
            key_searches: AtomicU64::new(0),
            login_refused: std::sync::atomic::AtomicBool::new(false),
            refresh_requested: std::sync::atomic::AtomicBool::new(false),
            ran_out_of_descriptors: std::sync::atomic::AtomicBool::new(false),
            view_refreshed: std::sync::Mutex::new(None),
        });
        let pool_config = PoolConfig::new(name)
            .workers(config.sessions)
            .queue_capacity(1024)
            .op_timeout(config.op_timeout);
        let for_workers = Arc::clone(&target);
        let pool = DevicePool::new(pool_config, move |_| {
            Pkcs11Device::connect(Arc::clone(&for_workers))
        })?;
        Ok(Self {
            pool,
            target,
            token,
            algorithms,
        })
    }

    /// The token this store serves.
    pub fn token(&self) -> &TokenSummary {
        &self.token
    }

    /// Whether the token's module can import private keys (`C_CreateObject` of a private
    /// key): tpm2-pkcs11 cannot, and [`KeyStore::import`] then fails with an `Unsupported`
    /// error saying what to do instead.
    pub fn imports_private_keys(&self) -> bool {
        self.target.module.implementation.imports_private_keys()
    }

    /// The session pool (stats, shutdown).
    pub fn pool(&self) -> &DevicePool<Pkcs11Device> {
        &self.pool
    }

    /// How many times a session worker has searched the token for a key it was about to use
    /// (`C_FindObjects`). A worker searches only for a key no worker has found yet, or whose
    /// handle the token stopped taking: keys opened by this store are used through the
    /// handle they were found at, checked by their attributes. (SoftHSM visits every object
    /// of the token in each search: with thousands of keys, searches are what is slow.)
    pub fn key_searches(&self) -> u64 {
        self.target
            .key_searches
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// After a refused PIN, lets the workers log in again: call it once the PIN source is
    /// fixed. Until then hardkey makes no login attempt at all (a token may lock after three).
    pub fn reconnect(&self) {
        self.target
            .login_refused
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.pool.reconnect();
    }

    /// Opens the keys `uris` name, each as [`KeyStore::open`] would, with one search of the
    /// token for all of them: for a server with thousands of keys, where a search per key
    /// makes opening them quadratic in the number of objects (SoftHSM visits every object
    /// of the token in each search). One result per URI, in order; the outer error is the
    /// token's (a lost session, a refused login), which fails them all.
    pub fn open_many(
        &self,
        uris: Vec<Pkcs11Uri>,
    ) -> impl Future<Output = Result<Vec<Result<Pkcs11Key>>>> + Send + 'static + use<> {
        // URIs of another token fail on their own; the rest are looked up in one job.
        let mut refused: Vec<Option<Error>> = Vec::with_capacity(uris.len());
        let mut checked: Vec<Option<Pkcs11Uri>> = Vec::with_capacity(uris.len());
        for p in uris {
            if self.names_this_token(&p) {
                refused.push(None);
                checked.push(Some(p));
            } else {
                refused.push(Some(Error::not_found(
                    &p,
                    "the URI names a different token than this store serves",
                )));
                checked.push(None);
            }
        }
        let pool = self.pool.clone();
        // One job: the whole set is read while one session is held, which keeps it
        // consistent, and costs one queue round trip instead of one per key.
        let run = self.pool.run(
            JobOptions::idempotent(Operation::Open),
            guard(move |dev: &mut Pkcs11Device| {
                let t = dev.target();
                let privates = ObjectIndex::read(dev.session(), &t.name, ObjectClass::PRIVATE_KEY)?;
                let publics = ObjectIndex::read(dev.session(), &t.name, ObjectClass::PUBLIC_KEY)?;
                let mut out = Vec::with_capacity(checked.len());
                for uri in &checked {
                    out.push(match uri {
                        None => None,
                        Some(p) => {
                            let handles = if can_name_private(p) {
                                privates.find(p.id(), p.object())
                            } else {
                                Vec::new()
                            };
                            match one_key_with(dev, &handles, p, Some(&publics)) {
                                Err(e) if e.is_device_lost() => return Err(e),
                                other => Some(other),
                            }
                        }
                    });
                }
                Ok(out)
            }),
        );
        async move {
            let described = run.await?;
            Ok(described
                .into_iter()
                .zip(refused)
                .map(|(described, refused)| match (described, refused) {
                    (Some(d), _) => d.map(|(info, key)| PooledKey::new(info, key, pool.clone())),
                    (None, Some(e)) => Err(e),
                    // Not reached: a URI is either refused or looked up.
                    (None, None) => Err(Error::backend(
                        "PKCS#11",
                        Operation::Open,
                        "a key of the batch was not looked up",
                    )),
                })
                .collect())
        }
    }

    /// Runs a job that yields one key description and turns it into a key.
    fn run_key<F>(
        &self,
        options: JobOptions,
        job: F,
    ) -> impl Future<Output = Result<Pkcs11Key>> + Send + 'static + use<F>
    where
        F: FnMut(&mut Pkcs11Device) -> Result<(KeyInfo, Pkcs11KeyRef)> + Send + 'static,
    {
        let pool = self.pool.clone();
        let run = self.pool.run(options, guard(job));
        async move {
            let (info, key) = run.await?;
            Ok(PooledKey::new(info, key, pool))
        }
    }

    fn names_this_token(&self, uri: &Pkcs11Uri) -> bool {
        let t = &self.token;
        uri.matches_token(&TokenAttrs {
            label: &t.label,
            manufacturer: &t.manufacturer,
            serial: &t.serial,
            model: &t.model,
        })
    }
}

fn one_key(
    dev: &Pkcs11Device,
    handles: &[ObjectHandle],
    selector: &dyn std::fmt::Display,
) -> Result<(KeyInfo, Pkcs11KeyRef)> {
    one_key_with(dev, handles, selector, None)
}

/// [`one_key`], finding public-key objects in `publics` when given.
fn one_key_with(
    dev: &Pkcs11Device,
    handles: &[ObjectHandle],
    selector: &dyn std::fmt::Display,
    publics: Option<&ObjectIndex>,
) -> Result<(KeyInfo, Pkcs11KeyRef)> {
    let t = dev.target();
    match handles {
        [h] => t.describe_with(dev.session(), *h, publics),
        [] => Err(t.missing_key(
            dev.session(),
            Error::NotFound {
                selector: format!("{selector} on {}", t.name),
                hint: "list the token's keys (hardkey list) and check object= and id=",
            },
        )),
        several => {
            let names: Vec<String> = several
                .iter()
                .filter_map(|h| t.describe(dev.session(), *h).ok())
                .map(|(info, _)| info.uri.map(|u| u.to_string()).unwrap_or_default())
                .collect();
            Err(Error::NotFound {
                selector: format!(
                    "a single key: {selector} matches {} keys ({})",
                    several.len(),
                    names.join(", ")
                ),
                hint: "add id= or object= to the URI to choose one",
            })
        }
    }
}

/// The new key's description; if it cannot be read, the objects just made are destroyed, so a
/// failed generate or import leaves nothing behind.
fn described_or_destroyed(
    dev: &Pkcs11Device,
    objects: [ObjectHandle; 2],
    private: ObjectHandle,
) -> Result<(KeyInfo, Pkcs11KeyRef)> {
    let t = dev.target();
    t.describe(dev.session(), private).inspect_err(|_| {
        for handle in objects {
            let _ = dev.session().destroy_object(handle);
        }
    })
}

/// A store job that runs with the module's re-initialization held off, on a current session.
pub(crate) fn guard<T>(
    mut job: impl FnMut(&mut Pkcs11Device) -> Result<T> + Send + 'static,
) -> impl FnMut(&mut Pkcs11Device) -> Result<T> + Send + 'static {
    move |dev: &mut Pkcs11Device| dev.guarded(|dev| job(dev))
}

fn id_template(class: ObjectClass, id: &[u8]) -> Vec<Attribute> {
    vec![Attribute::Class(class), Attribute::Id(id.to_vec())]
}

impl KeyStore for Pkcs11Store {
    type Key = Pkcs11Key;

    fn name(&self) -> &str {
        &self.target.name
    }

    /// The algorithms the token's key-pair generation mechanisms cover, by their
    /// `CKM_*_KEY_PAIR_GEN` key sizes (tpm2-pkcs11 1.9: RSA up to 3072 bits); every algorithm
    /// when the token does not say.
    fn algorithms(&self) -> &[KeyAlgorithm] {
        &self.algorithms
    }

    fn open(
        &self,
        uri: &KeyUri,
    ) -> impl Future<Output = Result<Pkcs11Key>> + Send + 'static + use<> {
        let checked = match uri {
            KeyUri::Pkcs11(p) if self.names_this_token(p) => Ok(p.clone()),
            KeyUri::Pkcs11(p) => Err(Error::not_found(
                p,
                "the URI names a different token than this store serves",
            )),
            other => Err(Unsupported::UriScheme {
                uri: other.to_string(),
                store: "the PKCS#11 backend",
                serves: "pkcs11:",
            }
            .into()),
        };
        let run = checked.map(|p| {
            self.run_key(JobOptions::idempotent(Operation::Open), move |dev| {
                let handles = find_private(dev.session(), &dev.target().name, &p)?;
                one_key(dev, &handles, &p)
            })
        });
        async move { run?.await }
    }

    fn open_id(
        &self,
        id: &KeyId,
    ) -> impl Future<Output = Result<Pkcs11Key>> + Send + 'static + use<> {
        let id = id.clone();
        self.run_key(JobOptions::idempotent(Operation::Open), move |dev| {
            let handles = dev
                .session()
                .find_objects(&id_template(ObjectClass::PRIVATE_KEY, id.as_bytes()))
                .map_err(mapper(&dev.target().name, Operation::Open))?;
            one_key(dev, &handles, &format!("id {id}"))
        })
    }

    fn list(&self) -> impl Future<Output = Result<Vec<KeyInfo>>> + Send + 'static + use<> {
        self.pool.run(
            JobOptions::idempotent(Operation::List),
            guard(|dev: &mut Pkcs11Device| {
                let t = dev.target();
                let handles = dev
                    .session()
                    .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
                    .map_err(mapper(&t.name, Operation::List))?;
                // Keys of algorithms hardkey does not serve (Ed25519, RSA-1024...) are left
                // out; a lost session fails the listing rather than shortening it.
                let mut infos = Vec::with_capacity(handles.len());
                for h in &handles {
                    match t.describe(dev.session(), *h) {
                        Ok((info, _)) => infos.push(info),
                        Err(e) if e.is_device_lost() => return Err(e),
                        Err(_) => {}
                    }
                }
                Ok(infos)
            }),
        )
    }

    fn generate(
        &self,
        request: GenerateRequest,
    ) -> impl Future<Output = Result<Pkcs11Key>> + Send + 'static + use<> {
        let label = match (&request.label, &request.location) {
            (Some(l), _) => Ok(l.clone()),
            (None, Some(KeyUri::Pkcs11(p))) if p.object().is_some() => {
                Ok(p.object().unwrap_or_default().to_owned())
            }
            (None, None) => Ok(String::new()),
            (None, Some(other)) => Err(Error::from(Unsupported::UriScheme {
                uri: other.to_string(),
                store: "the PKCS#11 backend",
                serves: "pkcs11:",
            })),
        };
        let label = label.and_then(|label| {
            if self.algorithms.contains(&request.algorithm) {
                Ok(label)
            } else {
                Err(algorithm_refused(
                    &self.target.name,
                    &self.algorithms,
                    request.algorithm,
                    "",
                ))
            }
        });
        let options = JobOptions::new(Operation::Generate).with_timeout(JobTimeout::Never);
        let run = label.map(|label| {
            self.run_key(options, move |dev| {
                let t = dev.target();
                let id = new_id();
                let label = if label.is_empty() {
                    format!("hardkey-{}", hex_prefix(&id))
                } else {
                    label.clone()
                };
                let _writes = t.module.writes();
                // What a keygen of this label killed midway left goes first.
                remove_interrupted(dev.session(), &label);
                let (public, private) = t.with_restriction(Operation::Generate, |restrict| {
                    // tpm2-pkcs11 signs RSA through raw RSA on the TPM.
                    let raw_rsa = request.raw_rsa
                        || t.module.implementation.signs_rsa_with_raw_rsa()
                            && request.algorithm.family() == hardkey_api::KeyFamily::Rsa;
                    let (mechanism, mut public, mut private) = generate_templates(
                        request.algorithm,
                        &id,
                        &label,
                        request.usages,
                        raw_rsa,
                        restrict,
                    )?;
                    if t.module.implementation.fixes_usage_flags() {
                        leave_usages_to_token(&mut public);
                        leave_usages_to_token(&mut private);
                    }
                    Ok(dev
                        .session()
                        .generate_key_pair(&mechanism, &public, &private))
                })?;
                described_or_destroyed(dev, [public, private], private)
            })
        });
        async move { run?.await }
    }

    fn import(
        &self,
        request: ImportRequest,
    ) -> impl Future<Output = Result<Pkcs11Key>> + Send + 'static + use<> {
        let checked = if self.imports_private_keys() {
            Ok(())
        } else {
            Err(Error::from(Unsupported::Operation {
                op: Operation::Import,
                device: format!(
                    "{} (tpm2-pkcs11: C_CreateObject makes only public keys and data objects; \
                     generate the key on the token, or import it with tpm2_ptool import)",
                    self.target.name
                ),
            }))
        };
        // A key of a family the token cannot make (p11-kit 0.24's remoting, NSS 3.87 and
        // tpm2-pkcs11 carry no CKM_EDDSA) would be stored and then never sign: refused before
        // the token is asked, as generate refuses it.
        let algorithms = self.algorithms.clone();
        let device = self.target.name.clone();
        let run = checked.map(|()| {
            self.run_key(JobOptions::new(Operation::Import), move |dev| {
                let t = dev.target();
                let id = new_id();
                let label = request
                    .label
                    .clone()
                    .unwrap_or_else(|| format!("hardkey-{}", hex_prefix(&id)));
                let _writes = t.module.writes();
                let (public_handle, private_handle) =
                    t.with_restriction(Operation::Import, |restrict| {
                        let (algorithm, public, mut private) = import_templates(
                            &request.pkcs8_der,
                            &id,
                            &label,
                            request.usages,
                            request.raw_rsa,
                            restrict,
                        )?;
                        if !algorithms.iter().any(|a| a.family() == algorithm.family()) {
                            wipe(&mut private);
                            return Err(algorithm_refused(
                                &device,
                                &algorithms,
                                algorithm,
                                "; a key it cannot sign with is not imported",
                            ));
                        }
                        let created =
                            dev.session()
                                .create_object(&public)
                                .and_then(|public_handle| {
                                    dev.session()
                                        .create_object(&private)
                                        .map(|private_handle| (public_handle, private_handle))
                                        .inspect_err(|_| {
                                            // Never leave half a key behind.
                                            let _ = dev.session().destroy_object(public_handle);
                                        })
                                });
                        // The secret values are wiped whatever happened.
                        wipe(&mut private);
                        Ok(created)
                    })?;
                described_or_destroyed(dev, [public_handle, private_handle], private_handle)
            })
        });
        async move { run?.await }
    }

    fn delete(&self, id: &KeyId) -> impl Future<Output = Result<()>> + Send + 'static + use<> {
        let id = id.clone();
        self.pool.run(
            JobOptions::new(Operation::Delete),
            guard(move |dev: &mut Pkcs11Device| {
                let name = dev.target().name.clone();
                let map = mapper(&name, Operation::Delete);
                let private = dev
                    .session()
                    .find_objects(&id_template(ObjectClass::PRIVATE_KEY, id.as_bytes()))
                    .map_err(&map)?;
                if private.is_empty() {
                    return Err(Error::not_found(
                        format!("id {id} on {name}"),
                        "list the token's keys (hardkey list)",
                    ));
                }
                let public = dev
                    .session()
                    .find_objects(&id_template(ObjectClass::PUBLIC_KEY, id.as_bytes()))
                    .map_err(&map)?;
                let module = Arc::clone(&dev.target().module);
                let writes = module.writes();
                for handle in private.iter().chain(public.iter()) {
                    dev.session().destroy_object(*handle).map_err(&map)?;
                }
                drop(writes);
                dev.keys_deleted();
                Ok(())
            }),
        )
    }
}

/// The refusal of an `algorithm` the token `device` makes no keys of, naming those it makes
/// (`algorithms`), and `why` after them.
fn algorithm_refused(
    device: &str,
    algorithms: &[KeyAlgorithm],
    algorithm: KeyAlgorithm,
    why: &str,
) -> Error {
    Error::from(Unsupported::Algorithm {
        algorithm,
        device: format!(
            "{device} (its key-pair mechanisms cover only: {}{why})",
            list(algorithms)
        ),
    })
}

fn list(algorithms: &[KeyAlgorithm]) -> String {
    let names: Vec<String> = algorithms.iter().map(ToString::to_string).collect();
    names.join(", ")
}

fn hex_prefix(id: &[u8]) -> String {
    hex::encode(id.get(..4).unwrap_or(id))
}
