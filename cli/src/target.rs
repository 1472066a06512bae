//! From the URI a user typed to an open store and key: aliases, configuration defaults,
//! secrets, and a clean shutdown so no TPM object outlives the command.

use std::path::PathBuf;
use std::time::Duration;

use futures::executor::block_on;
use hardkey_api::uri::{FileUri, KeyUri, Pkcs11Uri, Tpm2Key, Tpm2Uri};
use hardkey_api::{DynKeyStore, KeyInfo, SecretSource, SharedKey};
use hardkey_pkcs11::{Pkcs11Config, Pkcs11Store};
use hardkey_soft::SoftStore;
use hardkey_tpm::{TpmConfig, TpmStore};

use crate::args::DeviceSecrets;
use crate::config::Config;
use crate::error::{CliResult, usage};
use crate::secrets::{self, Missing};

/// What a command line names: a key or, where the command allows it, a whole store.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    /// A PKCS#11 token, and the key when the URI names one.
    Pkcs11(Box<Pkcs11Uri>),
    /// A TPM (`tpm2:` or `tpm2:?tcti=...`), and a key when the URI names one.
    Tpm {
        /// The TCTI the URI names.
        tcti: Option<String>,
        /// The key.
        key: Option<Tpm2Key>,
    },
    /// A private key PEM file (software key).
    File(FileUri),
}

impl Target {
    /// Parses `arg` (a URI or an alias from the configuration).
    pub(crate) fn parse(arg: &str, config: &Config) -> CliResult<Self> {
        let text = config.expand(arg)?;
        // `tpm2:` and `tpm2:?tcti=...` name the TPM itself (list, keygen).
        if let Some(rest) = text.strip_prefix("tpm2:") {
            if rest.is_empty() || rest.starts_with('?') {
                let probe = format!("tpm2:handle=0x81000001{rest}");
                return match probe.parse::<Tpm2Uri>() {
                    Ok(uri) => Ok(Self::Tpm {
                        tcti: uri.tcti,
                        key: None,
                    }),
                    Err(e) => Err(usage_uri(text.parse::<Tpm2Uri>().err().unwrap_or(e))),
                };
            }
        }
        match text.parse::<KeyUri>() {
            Ok(KeyUri::Pkcs11(uri)) => {
                // RFC 7512 makes a URI with an unknown attribute match nothing; on a command
                // line that is a typo.
                let unknown: Vec<&str> = uri
                    .unrecognized_path_attributes()
                    .iter()
                    .chain(uri.unrecognized_query_attributes())
                    .map(|(name, _)| name.as_str())
                    .collect();
                if !unknown.is_empty() {
                    return Err(usage(format!(
                        "unknown attribute {} in '{}': a pkcs11: URI names keys with \
                         token=, serial=, slot-id=, object=, id= and type=, and takes \
                         module-path=, pin-source= and max-sessions= after '?'",
                        unknown.join(", "),
                        hardkey_api::uri::redact(text)
                    )));
                }
                Ok(Self::Pkcs11(Box::new(uri)))
            }
            Ok(KeyUri::Tpm2(uri)) => Ok(Self::Tpm {
                tcti: uri.tcti,
                key: Some(uri.key),
            }),
            Ok(KeyUri::File(uri)) => Ok(Self::File(uri)),
            Ok(other) => Err(usage(format!("unsupported key URI '{other}'"))),
            Err(e) => Err(usage_uri(e)),
        }
    }

    /// The file holding the key, for key files (`file:`, `tpm2:file=`): an output must never
    /// replace it.
    pub(crate) fn key_file(&self) -> Option<&std::path::Path> {
        match self {
            Self::File(uri) => Some(&uri.path),
            Self::Tpm {
                key: Some(Tpm2Key::File(path)),
                ..
            } => Some(path),
            _ => None,
        }
    }

    /// The key URI, for opening a key; a usage error when only a store is named.
    pub(crate) fn key_uri(&self) -> CliResult<KeyUri> {
        match self {
            Self::Pkcs11(uri) => {
                if uri.object().is_none() && uri.id().is_none() {
                    return Err(usage(format!(
                        "'{uri}' names a token, not a key: add object=LABEL or id=%XX \
                         (hardkey list {uri} shows them)"
                    )));
                }
                Ok(KeyUri::Pkcs11((**uri).clone()))
            }
            Self::Tpm { tcti, key } => match key {
                Some(key) => {
                    let mut uri = Tpm2Uri::new(key.clone());
                    uri.tcti = tcti.clone();
                    Ok(KeyUri::Tpm2(uri))
                }
                None => Err(usage(
                    "'tpm2:' names the TPM, not a key: use tpm2:handle=0x81...... or \
                     tpm2:file=PATH (hardkey list tpm2: shows them)",
                )),
            },
            Self::File(uri) => Ok(KeyUri::File(uri.clone())),
        }
    }
}

fn usage_uri(e: hardkey_api::UriError) -> crate::error::CliError {
    // The library's message names the API that opts in; the command line has no such opt-in.
    if matches!(e.reason, hardkey_api::uri::UriErrorReason::PinValueRefused) {
        return usage(
            "pin-value in a key URI is refused: a PIN there ends up in shell history, process \
             lists and logs; give the PIN with pin-source=file:PATH in the URI, the HARDKEY_PIN \
             environment variable, --pin-file or the prompt",
        );
    }
    crate::error::CliError::usage(e)
}

/// How a command wants the store opened.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OpenOptions {
    /// Operations in flight at once (PKCS#11 sessions) when the key URI sets no
    /// `max-sessions`: the URI's value always wins.
    pub(crate) sessions: usize,
    /// Per-operation deadline.
    pub(crate) op_timeout: Option<Duration>,
    /// Open TPM key files without loading them (they load when they first sign).
    pub(crate) lazy_tpm_keys: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            sessions: 1,
            op_timeout: Some(Duration::from_secs(60)),
            lazy_tpm_keys: false,
        }
    }
}

/// An open store; dropping it shuts its device pool down and waits for the workers, so TPM
/// objects are flushed and PKCS#11 sessions closed before the process exits.
pub(crate) enum Store {
    /// PKCS#11.
    Pkcs11(Pkcs11Store),
    /// TPM.
    Tpm(TpmStore),
    /// Software keys in files.
    Soft(SoftStore),
}

impl Store {
    /// Opens the store `target` lives in. Blocks (connects, logs in).
    pub(crate) fn open(
        target: &Target,
        config: &Config,
        secrets: &DeviceSecrets,
        options: OpenOptions,
    ) -> CliResult<Self> {
        match target {
            Target::Pkcs11(uri) => {
                let mut uri = (**uri).clone();
                let names_token = uri.token().is_some()
                    || uri.serial().is_some()
                    || uri.model().is_some()
                    || uri.manufacturer().is_some()
                    || uri.slot_id().is_some();
                if !names_token {
                    if let Some(token) = &config.pkcs11.token {
                        uri = uri.with_token(token.clone());
                    }
                }
                let mut cfg = Pkcs11Config::from_uri(&uri)?;
                let from_uri = (uri.pin_value().is_some() || uri.pin_source().is_some())
                    .then(|| cfg.pin.clone());
                cfg.pin = secrets::resolve(
                    secrets::USER_PIN,
                    secrets.pin_file.as_deref(),
                    Missing::Prompt,
                    from_uri,
                )?;
                if let SecretSource::File(path) = &cfg.pin {
                    crate::inputs::note(path);
                }
                if cfg.module.is_none() {
                    cfg.module = config.pkcs11.module.clone();
                }
                // The parameters belong to the configured module (given by the URI or not).
                if let Some(init) = &config.pkcs11.module_init {
                    if cfg.module.is_some() && cfg.module == config.pkcs11.module {
                        cfg = cfg.module_init(init.clone());
                    }
                }
                // The URI's max-sessions wins: the operator sized it for the token (a network
                // HSM with 200 ms per call wants many more than a smart card allows).
                let sessions = uri.max_sessions().map_or(options.sessions, |n| n.get());
                let cfg = cfg.sessions(sessions).op_timeout(options.op_timeout);
                Ok(Self::Pkcs11(Pkcs11Store::open(cfg)?))
            }
            Target::Tpm { tcti, .. } => {
                let mut cfg = tpm_config(tcti.as_deref(), config)?;
                if let Some(dir) = &config.tpm.key_dir {
                    cfg = cfg.key_dir(dir.clone());
                }
                let cfg = cfg
                    .owner_auth(owner_auth(secrets)?)
                    .key_auth(secrets::optional(
                        secrets::KEY_AUTH,
                        secrets.key_auth_file.as_deref(),
                    )?)
                    .op_timeout(options.op_timeout)
                    .load_on_open(!options.lazy_tpm_keys);
                Ok(Self::Tpm(TpmStore::open(cfg)?))
            }
            Target::File(_) => Ok(Self::Soft(SoftStore::in_memory()?)),
        }
    }

    /// The store as the common interface.
    pub(crate) fn keys(&self) -> &dyn DynKeyStore {
        match self {
            Self::Pkcs11(s) => s,
            Self::Tpm(s) => s,
            Self::Soft(s) => s,
        }
    }

    /// Opens the key `uri` names ([`Target::key_uri`]).
    pub(crate) fn key(&self, uri: &KeyUri) -> CliResult<SharedKey> {
        Ok(block_on(self.keys().dyn_open(uri))?)
    }

    /// Every key in the store.
    pub(crate) fn list(&self) -> CliResult<Vec<KeyInfo>> {
        Ok(block_on(self.keys().dyn_list())?)
    }

    fn shutdown(&self) {
        let grace = Duration::from_secs(10);
        match self {
            Self::Pkcs11(s) => {
                s.pool().shutdown(grace);
            }
            Self::Tpm(s) => {
                s.pool().shutdown(grace);
            }
            Self::Soft(s) => {
                s.pool().shutdown(grace);
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The TPM a URI's TCTI, else the configuration, else the default (`HARDKEY_TCTI`,
/// `TPM2TOOLS_TCTI`, `device:/dev/tpmrm0`) names, with the configuration's pinned SRK name.
pub(crate) fn tpm_config(tcti: Option<&str>, config: &Config) -> CliResult<TpmConfig> {
    let base = match tcti.or(config.tpm.tcti.as_deref()) {
        Some(t) => TpmConfig::new(t),
        None => TpmConfig::default_tpm(),
    };
    let mut base = base.srk_name(config.tpm.srk_name()?);
    base.flush_leftovers = config.tpm.flush_leftovers;
    Ok(base)
}

/// The TCTI string for admin commands (`--tpm`, else configuration, else default).
pub(crate) fn tcti(explicit: Option<&str>, config: &Config) -> String {
    match explicit.or(config.tpm.tcti.as_deref()) {
        Some(t) => t.to_owned(),
        None => TpmConfig::default_tpm().tcti,
    }
}

/// The owner auth for commands that need it (creating the SRK, persisting keys, sealing).
pub(crate) fn owner_auth(secrets: &DeviceSecrets) -> CliResult<SecretSource> {
    secrets::optional(secrets::OWNER_AUTH, secrets.owner_auth_file.as_deref())
}

/// The module path for token administration (`--module`, else configuration, else SoftHSM).
pub(crate) fn module(explicit: Option<&PathBuf>, config: &Config) -> Option<PathBuf> {
    explicit.cloned().or_else(|| config.pkcs11.module.clone())
}
