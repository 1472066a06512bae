//! The optional configuration file, `$XDG_CONFIG_HOME/hardkey/config.toml` (or `--config`):
//! defaults for the PKCS#11 module, the default token, the TPM's TCTI and key directory, and
//! named aliases for key URIs.
//!
//! ```toml
//! [pkcs11]
//! module = "/usr/lib/softhsm/libsofthsm2.so"
//! token = "web"                 # for pkcs11: URIs that name no token
//! # Library parameters for `module`'s C_Initialize, for modules configured that way (NSS
//! # softokn: module = "/usr/lib/x86_64-linux-gnu/libsoftokn3.so", token "NSS Certificate DB").
//! # module-init = "configdir='sql:/etc/pki/nssdb' certPrefix='' keyPrefix='' secmod='secmod.db'"
//!
//! [tpm]
//! tcti = "swtpm:host=127.0.0.1,port=2321"
//! key-dir = "/var/lib/hardkey"  # where `tpm2:` keys go as TSS2 PEM files
//! # Trust this persistent SRK at 0x81000001 (its TPM name, hex) without checking it against
//! # the SRK template, which needs the owner auth when the owner hierarchy has one.
//! # srk-name = "000b..."
//! # Flush every transient object and session when a key store opens: only on a TPM without
//! # a resource manager that no other process uses (else run `hardkey tpm flush` by hand).
//! # flush-leftovers = true
//!
//! [aliases]
//! web = "pkcs11:token=web;object=tls"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{CliResult, io, usage};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// PKCS#11 defaults.
    #[serde(default)]
    pub(crate) pkcs11: Pkcs11Defaults,
    /// TPM defaults.
    #[serde(default)]
    pub(crate) tpm: TpmDefaults,
    /// Alias name to key URI.
    #[serde(default)]
    pub(crate) aliases: BTreeMap<String, String>,
    /// Where it was read from.
    #[serde(skip)]
    pub(crate) path: Option<PathBuf>,
}

/// `[pkcs11]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct Pkcs11Defaults {
    /// The module for URIs without `module-path`.
    pub(crate) module: Option<PathBuf>,
    /// The token label for URIs that name no token.
    pub(crate) token: Option<String>,
    /// Library parameters given to `module`'s `C_Initialize` (NSS softokn's database);
    /// `hardkey_pkcs11::Pkcs11Config::module_init`.
    pub(crate) module_init: Option<String>,
}

/// `[tpm]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct TpmDefaults {
    /// The TCTI for URIs without `tcti=`.
    pub(crate) tcti: Option<String>,
    /// Where new TPM keys are written as TSS2 PEM files (else persistent handles).
    pub(crate) key_dir: Option<PathBuf>,
    /// The pinned name of the persistent SRK, hex (`hardkey_tpm::TpmConfig::srk_name`).
    pub(crate) srk_name: Option<String>,
    /// Flush every transient object and session when a key store opens
    /// (`hardkey_tpm::TpmConfig::flush_leftovers`): only for a TPM no other process uses.
    #[serde(default)]
    pub(crate) flush_leftovers: bool,
}

impl TpmDefaults {
    /// The pinned SRK name as bytes; a usage error naming the setting when it is not hex.
    pub(crate) fn srk_name(&self) -> CliResult<Option<Vec<u8>>> {
        self.srk_name
            .as_deref()
            .map(|text| {
                hex::decode(text.trim()).map_err(|e| {
                    usage(format!(
                        "[tpm] srk-name in the configuration is not a hex TPM name ({e}): \
                         copy it from the error that showed it, or from tpm2_readpublic -c \
                         0x81000001 (its name: line)"
                    ))
                })
            })
            .transpose()
    }
}

impl Config {
    /// The default location: `$XDG_CONFIG_HOME/hardkey/config.toml`, else
    /// `~/.config/hardkey/config.toml`.
    pub(crate) fn default_path() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        Some(base.join("hardkey").join("config.toml"))
    }

    /// Reads `explicit` (which must exist), else the default file if it exists.
    pub(crate) fn load(explicit: Option<&Path>) -> CliResult<Self> {
        let path = match explicit {
            Some(p) => p.to_owned(),
            None => match Self::default_path() {
                Some(p) if p.exists() => p,
                _ => return Ok(Self::default()),
            },
        };
        let text = std::fs::read_to_string(&path).map_err(|e| io("read", &path, e))?;
        crate::inputs::note(&path);
        let mut config: Self = toml::from_str(&text).map_err(|e| {
            usage(format!(
                "configuration file {}: {}",
                path.display(),
                e.message()
            ))
        })?;
        config.path = Some(path);
        Ok(config)
    }

    /// A key URI as typed, with an alias replaced by its URI.
    pub(crate) fn expand<'a>(&'a self, arg: &'a str) -> CliResult<&'a str> {
        if arg.contains(':') {
            return Ok(arg);
        }
        self.aliases.get(arg).map(String::as_str).ok_or_else(|| {
            let known = if self.aliases.is_empty() {
                String::from("no aliases are defined")
            } else {
                format!(
                    "aliases: {}",
                    self.aliases.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            };
            usage(format!(
                "'{arg}' is not a key URI (pkcs11:..., tpm2:..., file:...) nor an alias ({known}{})",
                self.path
                    .as_ref()
                    .map(|p| format!(" in {}", p.display()))
                    .unwrap_or_default()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example_and_expands_aliases() {
        let text = r#"
            [pkcs11]
            module = "/usr/lib/softhsm/libsofthsm2.so"
            token = "web"
            [tpm]
            tcti = "swtpm:host=127.0.0.1,port=2321"
            key-dir = "/var/lib/hardkey"
            [aliases]
            web = "pkcs11:token=web;object=tls"
        "#;
        let config: Config = toml::from_str(text).unwrap();
        assert_eq!(
            config.tpm.key_dir.as_deref(),
            Some(Path::new("/var/lib/hardkey"))
        );
        assert_eq!(config.expand("web").unwrap(), "pkcs11:token=web;object=tls");
        assert_eq!(
            config.expand("tpm2:handle=0x81000010").unwrap(),
            "tpm2:handle=0x81000010"
        );
        let e = config.expand("nope").unwrap_err();
        assert!(e.to_string().contains("aliases: web"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[tpm]\ntcit = \"x\"\n").unwrap();
        let e = Config::load(Some(&path)).unwrap_err();
        assert!(e.to_string().contains("tcit"), "{e}");
        let e = Config::load(Some(&dir.path().join("missing.toml"))).unwrap_err();
        assert!(e.to_string().contains("missing.toml"), "{e}");
    }
}
