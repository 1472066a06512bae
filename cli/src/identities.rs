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
//! cert = "web-ec.pem"          # relative to this file's directory
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

use hardkey_api::{PrivateKey, SharedKey};
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
#[derive(Debug)]
struct Planned {
    key: String,
    /// A chain file or a `pkcs11:` URI; `None`: the chain beside the key.
    cert: Option<PathBuf>,
    default: bool,
}

/// The identities and the stores their keys live in (kept open while serving).
pub(crate) struct Served {
    /// What the server offers.
    pub(crate) identities: Identities,
    /// The open stores, one per device: held while serving; dropping them closes the devices
    /// (TPM objects flushed, PKCS#11 sessions closed).
    #[expect(dead_code, reason = "held, not read")]
    pub(crate) stores: Vec<Store>,
    /// Each identity's key, for the banner: its name and its store's name.
    pub(crate) keys: Vec<(SharedKey, String)>,
}

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

/// Reads what `a` names, opens every device once and every key, and checks each chain
/// against its key.
pub(crate) fn open(
    a: &ServeArgs,
    config: &Config,
    secrets: &DeviceSecrets,
    options: OpenOptions,
) -> CliResult<Served> {
    let mut planned = Vec::new();
    let mut policy = None;
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
        planned.extend(read_dir(dir)?);
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
                .map(|&i| shown_cert(&planned[i]))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }

    // Open each device once: keys on one token, or one TPM, share its store.
    let mut stores: Vec<Store> = Vec::new();
    let mut store_of: HashMap<String, usize> = HashMap::new();
    let mut built: Vec<Identity> = Vec::new();
    let mut keys = Vec::new();
    for entry in &planned {
        // A chain file is read before any device is opened: a bad file fails fast.
        let file_chain = match entry.cert.as_deref().filter(|c| !is_uri(c)) {
            Some(file) => {
                Some(CertChain::from_pem_file(file).map_err(crate::cmd::serve::tls_error)?)
            }
            None => None,
        };
        let target = Target::parse(&entry.key, config)?;
        let uri = target.key_uri()?;
        let mut open_store = |target: &Target, stores: &mut Vec<Store>| -> CliResult<usize> {
            let device = device_of(target);
            Ok(match store_of.get(&device) {
                Some(&i) => i,
                None => {
                    stores.push(Store::open(target, config, secrets, options)?);
                    store_of.insert(device, stores.len() - 1);
                    stores.len() - 1
                }
            })
        };
        let index = open_store(&target, &mut stores)?;
        let chain = match (file_chain, entry.cert.as_deref()) {
            (Some(chain), _) => chain,
            (None, Some(text)) => {
                let text = text.to_string_lossy();
                let Target::Pkcs11(cert_uri) = Target::parse(&text, config)? else {
                    return Err(usage(format!(
                        "cert '{}': a certificate URI is a pkcs11:...;type=cert URI (a TPM \
                         key's chain is a file)",
                        hardkey_api::uri::redact(&text)
                    )));
                };
                let on_key_token = matches!(&stores[index], Store::Pkcs11(p)
                    if crate::chains::serves_token(p, &cert_uri));
                let at = if on_key_token {
                    index
                } else {
                    open_store(&Target::Pkcs11(cert_uri.clone()), &mut stores)?
                };
                crate::chains::read_token_chain(&stores[at], &cert_uri)?
            }
            (None, None) => crate::chains::read_beside(&stores[index], &target)?,
        };
        let store = &stores[index];
        let key = store.key(&uri)?;
        chain
            .check_key(key.info())
            .map_err(crate::cmd::serve::tls_error)?;
        keys.push((Arc::clone(&key), store.keys().dyn_name().to_owned()));
        built.push(Identity::new(key, chain));
    }
    let mut iter = built.into_iter();
    let Some(first) = iter.next() else {
        return Err(usage("nothing to serve"));
    };
    let mut identities = iter.fold(Identities::new(first), Identities::with);
    if let Some(&i) = defaults.first() {
        identities = identities
            .default_to(i)
            .map_err(crate::cmd::serve::tls_error)?;
    }
    if let Some(policy) = policy {
        identities = identities.unknown_names(policy);
    }
    Ok(Served {
        identities,
        stores,
        keys,
    })
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

/// The entries of an `--identities` file; `cert` paths are relative to its directory.
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
            key: e.key,
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

/// The chain files of a `--cert-dir`, in name order.
fn read_dir(dir: &Path) -> CliResult<Vec<Planned>> {
    let shown = dir.display().to_string();
    let listing = std::fs::read_dir(dir).map_err(|e| {
        usage(format!(
            "cannot read the certificate directory {shown}: {e}"
        ))
    })?;
    let mut files: Vec<PathBuf> = listing
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("pem") | Some("crt")
                )
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(usage(format!(
            "{shown} holds no chain file (*.pem, *.crt) to serve"
        )));
    }
    let mut out = Vec::with_capacity(files.len());
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?;
        let key = key_line(&text).ok_or_else(|| {
            usage(format!(
                "{} names no key: add a line 'hardkey-key: URI' before its first -----BEGIN line",
                file.display()
            ))
        })?;
        out.push(Planned {
            key: key.to_owned(),
            cert: Some(file),
            default: false,
        });
    }
    Ok(out)
}

/// Whether a `cert` names a certificate on a token rather than a file.
fn is_uri(cert: &Path) -> bool {
    cert.to_string_lossy().starts_with("pkcs11:")
}

/// An entry's chain, for messages.
fn shown_cert(p: &Planned) -> String {
    match &p.cert {
        Some(c) if is_uri(c) => hardkey_api::uri::redact(&c.to_string_lossy()),
        Some(c) => c.display().to_string(),
        None => format!("the chain beside {}", hardkey_api::uri::redact(&p.key)),
    }
}

/// The URI of the `hardkey-key:` line in the text before the first PEM block.
pub(crate) fn key_line(text: &str) -> Option<&str> {
    text.lines()
        .take_while(|line| !line.starts_with("-----BEGIN"))
        .find_map(|line| line.trim().strip_prefix("hardkey-key:"))
        .map(str::trim)
        .filter(|uri| !uri.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_line_comes_before_the_first_block() {
        let pem = "hardkey-key: pkcs11:token=web;object=tls\n-----BEGIN CERTIFICATE-----\n";
        assert_eq!(key_line(pem), Some("pkcs11:token=web;object=tls"));
        let late = "-----BEGIN CERTIFICATE-----\nhardkey-key: pkcs11:object=x\n";
        assert_eq!(key_line(late), None);
        assert_eq!(key_line("hardkey-key:   \n"), None);
        assert_eq!(
            key_line("# comment\n  hardkey-key: file:k.pem  \n"),
            Some("file:k.pem")
        );
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
