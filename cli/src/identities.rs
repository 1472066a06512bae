//! The certificate chains and keys `hardkey serve` offers: one `--key`/`--cert` pair, a TOML
//! file of entries (`--identities`), and/or a directory of chain files that name their key
//! (`--cert-dir`). Each device is opened once and shared by the keys on it.
//!
//! ```toml
//! # What a client naming no covered server name gets: "default" (the default identity,
//! # the first unless an entry says `default = true`) or "refuse" (a failed handshake).
//! unknown-names = "default"
//!
//! [[identity]]
//! key = "pkcs11:token=web;object=web-ec"
//! cert = "web-ec.pem"          # relative paths (cert, key files) are to this file's directory
//!
//! [[identity]]
//! key = "pkcs11:token=web;object=web-rsa"
//! cert = "web-rsa.pem"
//!
//! [[identity]]
//! key = "tpm2:file=/etc/hardkey/keys/api.tss2.pem"
//! cert = "/etc/hardkey/api.pem"
//! default = true
//! ```
//!
//! An entry without `cert` serves the chain stored beside its key (`hardkey cert import`:
//! on the token, or the key file's `KEY.chain.pem`); `cert = "pkcs11:...;type=cert"` reads
//! a chain from a token.
//!
//! A chain file in `--cert-dir` (`*.pem`, `*.crt`, read in name order) names its key on a line
//! `hardkey-key: URI` before its first `-----BEGIN` line (RFC 7468 allows text there).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::executor::block_on;

use hardkey_api::{KeyUri, PrivateKey, SharedKey};
use hardkey_tls::{CertChain, Identities, Identity, UnknownName};
use serde::Deserialize;

use crate::args::{DeviceSecrets, ServeArgs};
use crate::config::Config;
use crate::error::{CliError, CliResult, usage};
use crate::target::{OpenOptions, Store, Target};

/// The `--identities` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct IdentitiesFile {
    /// `default` or `refuse`.
    unknown_names: Option<String>,
    /// The entries, in order.
    #[serde(default)]
    identity: Vec<Entry>,
}

/// One `[[identity]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    key: String,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    default: bool,
}

/// One identity to open: where its key is and its chain file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Planned {
    /// The key URI (or alias) as written.
    pub(crate) key: String,
    /// A chain file or a `pkcs11:...;type=cert` URI; `None`: the chain beside the key.
    pub(crate) cert: Option<PathBuf>,
    /// Whether the entry says `default = true`.
    pub(crate) default: bool,
}

/// What the configuration names, read but not opened.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The entries, in order.
    pub(crate) entries: Vec<Planned>,
    /// The entry that says `default = true`, if one does.
    pub(crate) default: Option<usize>,
    /// What clients naming no covered name get, if the file or the command line says.
    pub(crate) policy: Option<UnknownName>,
    /// What was accepted but looks wrong (a file skipped in `--cert-dir`...), for warnings.
    pub(crate) warnings: Vec<String>,
    /// The `--cert-dir` names skipped as not regular files: watched, so that a link that
    /// gains a target is read.
    pub(crate) skipped: Vec<PathBuf>,
}

/// One opened identity and where it came from.
#[derive(Clone)]
pub(crate) struct Loaded {
    /// The entry it was opened from.
    pub(crate) planned: Planned,
    /// Its chain and key.
    pub(crate) identity: Identity,
    /// The name of the key's store, for messages.
    pub(crate) store: String,
}

/// The identities and the stores their keys live in (kept open while serving).
pub(crate) struct Served {
    /// What the server offers.
    pub(crate) identities: Identities,
    /// The open stores, one per device.
    pub(crate) devices: Devices,
    /// Each identity as opened, in the order of `identities`.
    pub(crate) loaded: Vec<Loaded>,
    /// What was accepted but looks wrong, for warnings: the plan's and
    /// [`findings`](fn@findings).
    pub(crate) warnings: Vec<String>,
    /// [`Plan::skipped`], watched for changes.
    pub(crate) skipped: Vec<PathBuf>,
}

/// The open stores, one per device: held while serving; dropping them closes the devices
/// (TPM objects flushed, PKCS#11 sessions closed). A reload opens a device it has not seen,
/// and retires one no entry uses any more: it is closed, on a thread of its own, once no key
/// ever opened from it is held any more (by connections that started before the reloads,
/// [`Devices::close_retired`]); a retired device named again is taken back as it is.
#[derive(Default)]
pub(crate) struct Devices {
    stores: Vec<Option<Opened>>,
    store_of: HashMap<String, usize>,
    /// Stores no entry uses, waiting for the connections that hold their keys.
    retired: Vec<Opened>,
    /// The threads closing retired stores (a stuck device must not hold up reloads).
    closing: Vec<std::thread::JoinHandle<()>>,
    /// Keys opened ahead by [`Devices::prefetch`], by the text entries name them with.
    opened: HashMap<String, SharedKey>,
}

/// An open store and every key handed out from it.
struct Opened {
    store: Store,
    /// What tells its device apart ([`device_of`]).
    device: String,
    /// The keys opened from it, as long as anything holds them.
    keys: Vec<std::sync::Weak<dyn hardkey_api::DynPrivateKey>>,
    /// The length of `keys` at which the dead ones are next dropped from it.
    prune_at: usize,
}

impl Opened {
    fn in_use(&self) -> bool {
        self.keys.iter().any(|k| k.strong_count() > 0)
    }

    fn handed_out(&mut self, key: &SharedKey) {
        self.keys.push(Arc::downgrade(key));
        if self.keys.len() >= self.prune_at {
            self.keys.retain(|k| k.strong_count() > 0);
            self.prune_at = 2 * self.keys.len() + 64;
        }
    }
}

impl Drop for Devices {
    fn drop(&mut self) {
        // The retired stores close now, with the others; then the closes under way end.
        self.retired.clear();
        for thread in self.closing.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Devices {
    /// The index of `target`'s device's store: open, taken back from the retired ones, or
    /// opened now.
    fn store_index(
        &mut self,
        target: &Target,
        config: &Config,
        secrets: &DeviceSecrets,
        options: OpenOptions,
    ) -> CliResult<usize> {
        let device = device_of(target);
        if let Some(&i) = self.store_of.get(&device) {
            return Ok(i);
        }
        let opened = match self.retired.iter().position(|o| o.device == device) {
            Some(i) => self.retired.swap_remove(i),
            None => Opened {
                store: Store::open(target, config, secrets, options)?,
                device: device.clone(),
                keys: Vec::new(),
                prune_at: 64,
            },
        };
        self.stores.push(Some(opened));
        self.store_of.insert(device, self.stores.len() - 1);
        Ok(self.stores.len() - 1)
    }

    /// The store of `target`'s device, opened now if it is not open yet.
    fn store(
        &mut self,
        target: &Target,
        config: &Config,
        secrets: &DeviceSecrets,
        options: OpenOptions,
    ) -> CliResult<&Store> {
        let index = self.store_index(target, config, secrets, options)?;
        match &self.stores[index] {
            Some(opened) => Ok(&opened.store),
            None => Err(CliError::failed(
                "internal error: a retired store is still named (please report)",
            )),
        }
    }

    /// After a reload to `now`: the stores none of `now`'s keys live on are retired, to be
    /// closed when nothing holds a key opened from them. Returns their names.
    pub(crate) fn retire_unused(&mut self, now: &[Loaded], config: &Config) -> Vec<String> {
        let used: std::collections::HashSet<String> = now
            .iter()
            .filter_map(|l| {
                Target::parse(&l.planned.key, config)
                    .ok()
                    .map(|t| device_of(&t))
            })
            .collect();
        let unused: Vec<String> = self
            .store_of
            .keys()
            .filter(|d| !used.contains(*d))
            .cloned()
            .collect();
        let mut names = Vec::new();
        for device in unused {
            let Some(index) = self.store_of.remove(&device) else {
                continue;
            };
            if let Some(opened) = self.stores.get_mut(index).and_then(Option::take) {
                names.push(opened.store.keys().dyn_name().to_owned());
                self.retired.push(opened);
            }
        }
        names
    }

    /// Starts closing the retired stores none of whose keys is held any more, each on a
    /// thread of its own that logs when it is done.
    pub(crate) fn close_retired(&mut self) {
        self.closing.retain(|t| !t.is_finished());
        let (idle, kept): (Vec<Opened>, Vec<Opened>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|o| !o.in_use());
        self.retired = kept;
        for opened in idle {
            let name = opened.store.keys().dyn_name().to_owned();
            let shown = name.clone();
            let closer = std::thread::Builder::new()
                .name("hardkey-close".into())
                .spawn(move || {
                    drop(opened);
                    log::info!(
                        target: crate::reload::LOG_TARGET,
                        "closed {shown}: no entry uses it"
                    );
                });
            match closer {
                Ok(thread) => self.closing.push(thread),
                // No thread to spare: closed here (the store moved into the failed closure is
                // dropped with it).
                Err(e) => log::warn!(
                    target: crate::reload::LOG_TARGET,
                    "closed {name} on the reload thread ({e})"
                ),
            }
        }
    }

    /// Whether a retired store waits for its last connections.
    pub(crate) fn has_retired(&self) -> bool {
        !self.retired.is_empty()
    }

    /// The key `key` names, from its device's store (opened now if it is not open yet), and
    /// that store's name.
    pub(crate) fn key(
        &mut self,
        key: &str,
        config: &Config,
        secrets: &DeviceSecrets,
        options: OpenOptions,
    ) -> CliResult<(SharedKey, String)> {
        let target = Target::parse(key, config)?;
        let uri = target.key_uri()?;
        if let Some(file) = target.key_file() {
            regular_file(file, "key file")?;
        }
        let ready = self.opened.get(key).cloned();
        let index = self.store_index(&target, config, secrets, options)?;
        let Some(opened) = self.stores[index].as_mut() else {
            return Err(CliError::failed(
                "internal error: a retired store is still named (please report)",
            ));
        };
        let key = match ready {
            Some(key) => key,
            None => opened.store.key(&uri)?,
        };
        opened.handed_out(&key);
        Ok((key, opened.store.keys().dyn_name().to_owned()))
    }

    /// Opens the keys of `entries` that share a PKCS#11 token with one search of the token
    /// each (`Pkcs11Store::open_many`), for [`Devices::key`] to hand out: with thousands of
    /// keys, a search per key would take minutes. A key that fails here is left for
    /// [`Devices::key`] to open again and report.
    fn prefetch(
        &mut self,
        entries: &[Planned],
        config: &Config,
        secrets: &DeviceSecrets,
        options: OpenOptions,
    ) -> CliResult<()> {
        let mut groups: HashMap<String, (Target, Vec<(String, hardkey_api::uri::Pkcs11Uri)>)> =
            HashMap::new();
        for entry in entries {
            let Ok(target) = Target::parse(&entry.key, config) else {
                continue;
            };
            let Ok(KeyUri::Pkcs11(uri)) = target.key_uri() else {
                continue;
            };
            groups
                .entry(device_of(&target))
                .or_insert_with(|| (target.clone(), Vec::new()))
                .1
                .push((entry.key.clone(), uri));
        }
        for (target, keys) in groups.into_values() {
            if keys.len() < PREFETCH_FROM {
                continue;
            }
            let Store::Pkcs11(store) = self.store(&target, config, secrets, options)? else {
                continue;
            };
            let (texts, uris): (Vec<String>, Vec<_>) = keys.into_iter().unzip();
            let opened = block_on(store.open_many(uris))?;
            for (text, key) in texts.into_iter().zip(opened) {
                if let Ok(key) = key {
                    self.opened.insert(text, Arc::new(key) as SharedKey);
                }
            }
        }
        Ok(())
    }

    /// The chain `entry` serves: its chain file, the `pkcs11:...;type=cert` URI it names
    /// (read from the key's token when it is the same, else from that token, opened now), or
    /// the chain stored beside its key.
    pub(crate) fn chain(
        &mut self,
        entry: &Planned,
        config: &Config,
        secrets: &DeviceSecrets,
        options: OpenOptions,
    ) -> CliResult<CertChain> {
        if let Some(file) = entry.cert.as_deref().filter(|c| !is_uri(c)) {
            regular_file(file, "certificate chain")?;
            return CertChain::from_pem_file(file).map_err(crate::cmd::serve::tls_error);
        }
        let target = Target::parse(&entry.key, config)?;
        match entry.cert.as_deref() {
            Some(text) => {
                let text = text.to_string_lossy();
                let Target::Pkcs11(cert_uri) = Target::parse(&text, config)? else {
                    return Err(usage(format!(
                        "cert '{}': a certificate URI is a pkcs11:...;type=cert URI (a TPM \
                         key's chain is a file)",
                        hardkey_api::uri::redact(&text)
                    )));
                };
                let on_key_token = matches!(
                    self.store(&target, config, secrets, options)?,
                    Store::Pkcs11(p) if crate::chains::serves_token(p, &cert_uri)
                );
                let store = if on_key_token {
                    self.store(&target, config, secrets, options)?
                } else {
                    self.store(&Target::Pkcs11(cert_uri.clone()), config, secrets, options)?
                };
                crate::chains::read_token_chain(store, &cert_uri)
            }
            None => {
                let store = self.store(&target, config, secrets, options)?;
                crate::chains::read_beside(store, &target)
            }
        }
    }
}

/// At most this many skipped `--cert-dir` names are watched (a directory of thousands of
/// FIFOs must not make each poll thousands of calls).
const MAX_WATCHED_SKIPS: usize = 256;

/// The number of keys on one token from which they are opened with one search.
const PREFETCH_FROM: usize = 8;

/// The `unknown-names` value.
fn unknown_policy(text: &str, origin: &str) -> CliResult<UnknownName> {
    match text {
        "default" => Ok(UnknownName::ServeDefault),
        "refuse" => Ok(UnknownName::Refuse),
        other => Err(usage(format!(
            "{origin}: unknown-names = \"{other}\": use \"default\" (serve the default \
             identity) or \"refuse\" (fail the handshake)"
        ))),
    }
}

/// Reads what `a` names (the `--identities` file, the `--cert-dir` listing), without opening
/// anything.
pub(crate) fn plan(a: &ServeArgs) -> CliResult<Plan> {
    let mut planned = Vec::new();
    let mut policy = None;
    let mut warnings = Vec::new();
    let mut skipped = Vec::new();
    match (&a.key, &a.cert) {
        (Some(key), cert) => planned.push(Planned {
            key: key.clone(),
            cert: cert.clone(),
            default: false,
        }),
        (None, Some(_)) => return Err(usage("--cert needs --key: the chain's key URI")),
        (None, None) => {}
    }
    if let Some(file) = &a.identities {
        let (entries, unknown) = read_file(file)?;
        planned.extend(entries);
        policy = unknown;
    }
    if let Some(dir) = &a.cert_dir {
        planned.extend(read_dir(dir, &mut warnings, &mut skipped)?);
    }
    if planned.is_empty() {
        return Err(usage(
            "nothing to serve: give --key URI --cert FILE, --identities FILE or --cert-dir DIR",
        ));
    }
    if let Some(text) = &a.unknown_names {
        policy = Some(unknown_policy(text, "--unknown-names")?);
    }
    let defaults: Vec<usize> = (0..planned.len()).filter(|&i| planned[i].default).collect();
    if defaults.len() > 1 {
        return Err(usage(format!(
            "{} identities say default = true ({}): keep it on one entry only",
            defaults.len(),
            defaults
                .iter()
                .map(|&i| planned[i].shown_cert())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(Plan {
        entries: planned,
        default: defaults.first().copied(),
        policy,
        warnings,
        skipped,
    })
}

/// Opens the entry's key (its device's store first, if not open yet), reads its chain and
/// checks that the chain's leaf holds the key's public key.
pub(crate) fn load(
    entry: &Planned,
    devices: &mut Devices,
    config: &Config,
    secrets: &DeviceSecrets,
    options: OpenOptions,
) -> CliResult<Loaded> {
    // A chain file is read before any device is opened: a bad file fails fast.
    let chain = devices.chain(entry, config, secrets, options)?;
    let (key, store) = devices.key(&entry.key, config, secrets, options)?;
    chain
        .check_key(key.info())
        .map_err(crate::cmd::serve::tls_error)?;
    Ok(Loaded {
        planned: entry.clone(),
        identity: Identity::new(key, chain),
        store,
    })
}

/// The set of `loaded`, with the plan's default (`default`: its index in `loaded`) and policy.
pub(crate) fn assemble(
    loaded: &[Loaded],
    default: Option<usize>,
    policy: Option<UnknownName>,
) -> CliResult<Identities> {
    let mut iter = loaded.iter().map(|l| l.identity.clone());
    let Some(first) = iter.next() else {
        return Err(usage("nothing to serve"));
    };
    let mut identities = iter.fold(Identities::new(first), Identities::with);
    if let Some(i) = default {
        identities = identities
            .default_to(i)
            .map_err(crate::cmd::serve::tls_error)?;
    }
    if let Some(policy) = policy {
        identities = identities.unknown_names(policy);
    }
    Ok(identities)
}

/// Reads what `a` names, opens every device once and every key, and checks each chain
/// against its key.
pub(crate) fn open(
    a: &ServeArgs,
    config: &Config,
    secrets: &DeviceSecrets,
    options: OpenOptions,
) -> CliResult<Served> {
    let plan = plan(a)?;
    // Open each device once: keys on one token, or one TPM, share its store.
    let mut devices = Devices::default();
    devices.prefetch(&plan.entries, config, secrets, options)?;
    let mut loaded = Vec::with_capacity(plan.entries.len());
    for entry in &plan.entries {
        loaded.push(load(entry, &mut devices, config, secrets, options)?);
    }
    // A reload opens keys afresh.
    devices.opened.clear();
    let identities = assemble(&loaded, plan.default, plan.policy)?;
    let mut warnings = plan.warnings;
    warnings.extend(findings(&identities, &loaded));
    Ok(Served {
        identities,
        devices,
        loaded,
        warnings,
        skipped: plan.skipped,
    })
}

/// [`Identities::findings`], naming each identity by its chain file and key.
pub(crate) fn findings(identities: &Identities, loaded: &[Loaded]) -> Vec<String> {
    use hardkey_tls::Finding;
    let shown = |i: usize| {
        loaded
            .get(i)
            .map(|l| format!("{} (key {})", l.planned.shown_cert(), l.planned.key_shown()))
            .unwrap_or_else(|| format!("identity {i}"))
    };
    identities
        .findings()
        .into_iter()
        .map(|finding| match &finding {
            Finding::UnmatchableName { identity, name } => format!(
                "{}: the name {name:?} matches no server name (a wildcard is a whole \
                 left-most label, as in *.example.com); it is compared as written",
                shown(*identity)
            ),
            Finding::Duplicate { identity, .. } => format!(
                "{} is listed twice: the second entry changes nothing",
                shown(*identity)
            ),
            Finding::NoName { identity } if *identity == identities.default_index() => format!(
                "{} is never served: its certificate has no DNS name, and with unknown-names = \
                 \"refuse\" the default is not served either (add a subjectAltName, or serve \
                 the default)",
                shown(*identity)
            ),
            Finding::NoName { identity } => format!(
                "{} is never served: its certificate has no DNS name and it is not the \
                 default (add default = true, or a subjectAltName)",
                shown(*identity)
            ),
            Finding::Shadowed { identity, by } => format!(
                "{} is never served: {} comes first for each of its names with the same kind \
                 of key; remove one, or give them different names",
                shown(*identity),
                shown(*by)
            ),
            _ => format!("{}: {finding}", shown(finding.identity())),
        })
        .collect()
}

/// Refuses a path that is not a regular file (a FIFO would block the reader until someone
/// writes to it; a device never ends): checked before a chain or key file is opened.
fn regular_file(path: &Path, what: &str) -> CliResult<()> {
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => Err(usage(format!(
            "the {what} {} is not a regular file ({}): give a file",
            path.display(),
            if meta.is_dir() {
                "a directory"
            } else {
                "a FIFO, socket or device"
            }
        ))),
        // A missing file is reported by whoever reads it, with what to do.
        _ => Ok(()),
    }
}

/// What makes two keys share a store: the token (module, token attributes, PIN source,
/// sessions) or the TPM (TCTI); every key file shares one software store.
fn device_of(target: &Target) -> String {
    match target {
        Target::Pkcs11(uri) => format!(
            "pkcs11 {:?}",
            (
                uri.module_path(),
                uri.module_name(),
                uri.token(),
                uri.serial(),
                uri.manufacturer(),
                uri.model(),
                uri.slot_id(),
                uri.pin_source(),
                uri.max_sessions(),
            )
        ),
        Target::Tpm { tcti, .. } => format!("tpm {tcti:?}"),
        Target::File(_) => "soft".to_owned(),
    }
}

/// The entries of an `--identities` file; `cert` paths and key file paths are relative to its
/// directory.
fn read_file(path: &Path) -> CliResult<(Vec<Planned>, Option<UnknownName>)> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        usage(format!(
            "cannot read the identities file {origin}: {e}; --identities takes a TOML file \
             of [[identity]] entries (key = URI, cert = FILE)"
        ))
    })?;
    // The message and the line only: toml's own rendering quotes the source line, which may
    // hold a secret (a pin-value in a key URI).
    let file: IdentitiesFile = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|span| {
            text.get(..span.start)
                .unwrap_or_default()
                .lines()
                .count()
                .max(1)
        });
        let at = line.map(|l| format!(" at line {l}")).unwrap_or_default();
        usage(format!(
            "bad identities file {origin}{at}: {}",
            e.message().trim_end()
        ))
    })?;
    if file.identity.is_empty() {
        return Err(usage(format!(
            "{origin} has no [[identity]] entry: add one per certificate chain, with key = \
             \"URI\" and cert = \"FILE\""
        )));
    }
    let policy = file
        .unknown_names
        .as_deref()
        .map(|t| unknown_policy(t, &origin))
        .transpose()?;
    let base = path.parent().unwrap_or(Path::new("."));
    let entries = file
        .identity
        .into_iter()
        .map(|e| Planned {
            key: anchored(&e.key, base),
            cert: e.cert.map(|c| {
                if c.is_absolute() || is_uri(&c) {
                    c
                } else {
                    base.join(c)
                }
            }),
            default: e.default,
        })
        .collect();
    Ok((entries, policy))
}

/// The chain files of a `--cert-dir`, in name order. A `*.pem` or `*.crt` name that is not a
/// regular file (a dangling link, a FIFO, a directory) is skipped with a warning.
fn read_dir(
    dir: &Path,
    warnings: &mut Vec<String>,
    skipped: &mut Vec<PathBuf>,
) -> CliResult<Vec<Planned>> {
    let shown = dir.display().to_string();
    let listing = std::fs::read_dir(dir).map_err(|e| {
        usage(format!(
            "cannot read the certificate directory {shown}: {e}"
        ))
    })?;
    let mut named: Vec<PathBuf> = listing
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("pem") | Some("crt")
            )
        })
        .collect();
    named.sort();
    let mut files = Vec::with_capacity(named.len());
    for path in named {
        // Following links: what is read is what the link points at.
        let meta = std::fs::metadata(&path);
        if !matches!(&meta, Ok(m) if m.is_file()) && skipped.len() < MAX_WATCHED_SKIPS {
            skipped.push(path.clone());
        }
        match meta {
            Ok(meta) if meta.is_file() => files.push(path),
            Ok(meta) => warnings.push(format!(
                "{}: skipped, not a regular file ({})",
                path.display(),
                if meta.is_dir() {
                    "a directory"
                } else {
                    "a FIFO, socket or device"
                }
            )),
            Err(e) if path.is_symlink() => warnings.push(format!(
                "{}: skipped, a symbolic link to nothing readable ({e})",
                path.display()
            )),
            Err(e) => warnings.push(format!("{}: skipped: {e}", path.display())),
        }
    }
    if files.is_empty() {
        return Err(usage(format!(
            "{shown} holds no chain file (*.pem, *.crt) to serve"
        )));
    }
    let mut out = Vec::with_capacity(files.len());
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?;
        let key = match key_lines(&text).as_slice() {
            [] => {
                return Err(usage(format!(
                    "{} names no key: add a line 'hardkey-key: URI' before its first \
                     -----BEGIN line",
                    file.display()
                )));
            }
            [one] => *one,
            [first, rest @ ..] => {
                if rest.iter().any(|uri| uri != first) {
                    return Err(usage(format!(
                        "{} names {} keys on 'hardkey-key:' lines: keep one (a chain file \
                         serves one key)",
                        file.display(),
                        rest.len() + 1
                    )));
                }
                first
            }
        };
        out.push(Planned {
            key: anchored(key, dir),
            cert: Some(file),
            default: false,
        });
    }
    Ok(out)
}

/// The URIs of every `hardkey-key:` line before the first PEM block.
fn key_lines(text: &str) -> Vec<&str> {
    text.lines()
        .take_while(|line| !line.starts_with("-----BEGIN"))
        .filter_map(|line| line.trim().strip_prefix("hardkey-key:"))
        .map(str::trim)
        .filter(|uri| !uri.is_empty())
        .collect()
}

/// `key` with a relative key file path (`tpm2:file=...`, `file:...`) made relative to `base`,
/// the directory of the file that names it, as chain paths are. Anything else (a token key,
/// an alias, an absolute path, a URI that does not parse: its error comes when it is opened)
/// is returned as written.
fn anchored(key: &str, base: &Path) -> String {
    let rebased =
        |path: &Path| (path.is_relative() && !base.as_os_str().is_empty()).then(|| base.join(path));
    match key.parse::<KeyUri>() {
        Ok(KeyUri::Tpm2(mut uri)) => match &uri.key {
            hardkey_api::uri::Tpm2Key::File(path) => match rebased(path) {
                Some(path) => {
                    uri.key = hardkey_api::uri::Tpm2Key::File(path);
                    uri.to_string()
                }
                None => key.to_owned(),
            },
            _ => key.to_owned(),
        },
        Ok(KeyUri::File(uri)) => match rebased(&uri.path) {
            Some(path) => hardkey_api::uri::FileUri::new(path).to_string(),
            None => key.to_owned(),
        },
        _ => key.to_owned(),
    }
}

/// Whether a `cert` names a certificate on a token rather than a file.
fn is_uri(cert: &Path) -> bool {
    cert.to_string_lossy().starts_with("pkcs11:")
}

impl Planned {
    /// The entry's chain, for messages.
    pub(crate) fn shown_cert(&self) -> String {
        match &self.cert {
            Some(c) if is_uri(c) => hardkey_api::uri::redact(&c.to_string_lossy()),
            Some(c) => c.display().to_string(),
            None => format!("the chain beside {}", hardkey_api::uri::redact(&self.key)),
        }
    }

    /// What tells two entries apart across a reload: the chain file, the certificate URI,
    /// or (for a chain beside its key) the key.
    pub(crate) fn slot(&self) -> PathBuf {
        match &self.cert {
            Some(c) => c.clone(),
            None => PathBuf::from(format!("beside:{}", self.key)),
        }
    }

    /// The chain's file, to watch for changes: the chain file, or the file beside a key file;
    /// none for a chain on a token.
    pub(crate) fn chain_file(&self, config: &Config) -> Option<PathBuf> {
        match &self.cert {
            Some(c) if is_uri(c) => None,
            Some(c) => Some(c.clone()),
            None => Target::parse(&self.key, config)
                .ok()?
                .key_file()
                .map(crate::chains::chain_file),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_line_comes_before_the_first_block() {
        let pem = "hardkey-key: pkcs11:token=web;object=tls\n-----BEGIN CERTIFICATE-----\n";
        assert_eq!(key_lines(pem), ["pkcs11:token=web;object=tls"]);
        let late = "-----BEGIN CERTIFICATE-----\nhardkey-key: pkcs11:object=x\n";
        assert!(key_lines(late).is_empty());
        assert!(key_lines("hardkey-key:   \n").is_empty());
        assert_eq!(
            key_lines("# comment\n  hardkey-key: file:k.pem  \nhardkey-key: file:j.pem\n"),
            ["file:k.pem", "file:j.pem"]
        );
    }

    #[test]
    fn relative_key_files_are_anchored_to_the_naming_file() {
        let base = Path::new("/etc/hk");
        assert_eq!(anchored("file:k.pem", base), "file:/etc/hk/k.pem");
        assert_eq!(
            anchored("tpm2:file=keys/k.tss2?tcti=swtpm:port=1", base),
            "tpm2:file=/etc/hk/keys/k.tss2?tcti=swtpm:port=1"
        );
        for unchanged in [
            "file:/abs/k.pem",
            "tpm2:file=/abs/k.tss2",
            "tpm2:handle=0x81000001",
            "pkcs11:token=a;object=b",
            "alias",
        ] {
            assert_eq!(anchored(unchanged, base), unchanged);
        }
        assert_eq!(anchored("file:k.pem", Path::new("")), "file:k.pem");
    }

    #[test]
    fn unknown_names_policy_is_checked() {
        assert_eq!(
            unknown_policy("refuse", "f").ok(),
            Some(UnknownName::Refuse)
        );
        assert_eq!(
            unknown_policy("default", "f").ok(),
            Some(UnknownName::ServeDefault)
        );
        assert!(unknown_policy("reject", "f").is_err());
    }
}
