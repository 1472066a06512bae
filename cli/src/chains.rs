//! Where a key's certificate chain is kept beside the key, and how it is found again:
//!
//! - a **PKCS#11 key**: certificate objects on its token, the leaf with the key's CKA_ID,
//!   issuers found by subject (`hardkey_pkcs11::Pkcs11Store::store_chain`). A
//!   `pkcs11:...;type=cert` URI names a leaf by `id=` and/or `object=`;
//! - a **key file** (`tpm2:file=KEY`, `file:KEY`): the PEM file [`chain_file`] names in the
//!   same directory, `web.tss2.pem` -> `web.chain.pem`;
//! - a **persistent TPM key** (`tpm2:handle=`) has no place for one: give its chain as a
//!   file (hardkey does not store chains in TPM NV indices).

use std::path::{Path, PathBuf};

use futures::executor::block_on;
use hardkey_api::PrivateKey;
use hardkey_api::uri::{KeyUri, ObjectType, Pkcs11Uri, TokenAttrs};
use hardkey_pkcs11::{CertSelector, Pkcs11Store};
use hardkey_tls::CertChain;

use crate::error::{CliResult, io, usage};
use crate::target::{Store, Target};

/// The chain file beside a key file: the key file's name without `.pem` and then `.tss2`,
/// plus `.chain.pem` (`web.tss2.pem`, `web.tss2` -> `web.chain.pem`; `key.pem` ->
/// `key.chain.pem`).
pub(crate) fn chain_file(key_file: &Path) -> PathBuf {
    let name = key_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".pem").unwrap_or(&name);
    let stem = stem.strip_suffix(".tss2").unwrap_or(stem);
    key_file.with_file_name(format!("{stem}.chain.pem"))
}

/// Whether a URI names a certificate (`type=cert`) rather than a key.
pub(crate) fn is_cert_uri(uri: &Pkcs11Uri) -> bool {
    uri.object_type() == Some(ObjectType::Cert)
}

/// Whether `store` serves the token `uri` names (a URI naming no token is taken as the
/// store's).
pub(crate) fn serves_token(store: &Pkcs11Store, uri: &Pkcs11Uri) -> bool {
    let t = store.token();
    uri.matches_token(&TokenAttrs {
        label: &t.label,
        manufacturer: &t.manufacturer,
        serial: &t.serial,
        model: &t.model,
    })
}

/// Which certificate on the token a URI means: by `id=` when it has one (the link between a
/// key and its certificate); else, for a key URI, the id of the key it names (found on the
/// token); else by `object=` (the label).
pub(crate) fn selector(store: &Store, uri: &Pkcs11Uri) -> CliResult<CertSelector> {
    if let Some(id) = uri.id() {
        return Ok(CertSelector::id(id));
    }
    if !is_cert_uri(uri) {
        let key = store.key(&KeyUri::Pkcs11(uri.clone()))?;
        if let Some(id) = key_id(key.info()) {
            return Ok(CertSelector::id(id));
        }
    }
    Ok(CertSelector::from_uri(uri))
}

/// The CKA_ID of a token key, from its URI.
pub(crate) fn key_id(info: &hardkey_api::KeyInfo) -> Option<Vec<u8>> {
    match &info.uri {
        Some(KeyUri::Pkcs11(p)) => p.id().map(<[u8]>::to_vec),
        _ => None,
    }
}

/// The chain a `pkcs11:` URI names (a cert URI, or a key URI: the chain beside the key),
/// read from `store`, which serves its token.
pub(crate) fn read_token_chain(store: &Store, uri: &Pkcs11Uri) -> CliResult<CertChain> {
    let Store::Pkcs11(p11) = store else {
        return Err(usage(format!(
            "'{uri}' names a certificate on a PKCS#11 token, but its store is not one"
        )));
    };
    let selector = selector(store, uri)?;
    let ders = block_on(p11.read_chain(selector.clone()))?;
    let origin = format!("certificate with {selector} on {}", store.keys().dyn_name());
    CertChain::from_der_list(ders, origin).map_err(crate::cmd::serve::tls_error)
}

/// The chain stored beside the key `target` names, opened in `store`.
pub(crate) fn read_beside(store: &Store, target: &Target) -> CliResult<CertChain> {
    match target {
        Target::Pkcs11(uri) => read_token_chain(store, uri),
        _ => {
            let file = beside_file(target)?;
            if !file.exists() {
                return Err(usage(format!(
                    "no certificate chain beside the key: {} does not exist; import one \
                     (hardkey cert import KEY --from CHAIN) or give the chain with --cert FILE",
                    file.display()
                )));
            }
            CertChain::from_pem_file(&file).map_err(crate::cmd::serve::tls_error)
        }
    }
}

/// The chain file beside a key file; a usage error for keys without one.
pub(crate) fn beside_file(target: &Target) -> CliResult<PathBuf> {
    match target.key_file() {
        Some(key) => Ok(chain_file(key)),
        None => Err(usage(
            "a persistent TPM key (tpm2:handle=) has no file beside it to keep a certificate \
             chain in (hardkey does not store chains in TPM NV indices): keep the chain in a \
             file and give it with --cert FILE, or use a TSS2 key file (tpm2:file=)",
        )),
    }
}

/// Reads a chain file (PEM or DER), a usage error naming the file if it is not one.
pub(crate) fn read_chain_file(path: &Path) -> CliResult<CertChain> {
    let data = crate::cmd::read_input(path, "certificate chain")?;
    CertChain::from_pem_or_der(&data, path.display().to_string()).map_err(|e| {
        usage(format!(
            "{e}; expected X.509 certificates, PEM (-----BEGIN CERTIFICATE-----) or DER, the \
             key's certificate first"
        ))
    })
}

/// Refuses to replace an existing regular file without `force`.
pub(crate) fn refuse_existing(path: &Path, what: &str, force: bool) -> CliResult {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() && !force => Err(usage(format!(
            "{} already exists: pass --force to replace it with the {what}",
            path.display()
        ))),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(&format!("write {what} to"), path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_files_sit_beside_their_key_files() {
        let cases = [
            ("/k/web.tss2.pem", "/k/web.chain.pem"),
            ("web.tss2", "web.chain.pem"),
            ("key.pem", "key.chain.pem"),
            ("api", "api.chain.pem"),
            ("a.chain.pem", "a.chain.chain.pem"),
        ];
        for (key, chain) in cases {
            assert_eq!(chain_file(Path::new(key)), Path::new(chain), "{key}");
        }
    }
}
