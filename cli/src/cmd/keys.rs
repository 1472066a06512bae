//! keygen, list, info, delete, import, pubkey.

use futures::executor::block_on;
use hardkey_api::uri::{KeyUri, Tpm2Key, Tpm2Uri};
use hardkey_api::{GenerateRequest, ImportRequest, KeyAlgorithm, KeyFamily, KeyUsages, PrivateKey};
use serde_json::json;
use zeroize::Zeroizing;

use super::{Ctx, OutputFile, confirm, read_input, with_spinner, write_output};
use crate::args::{DeleteArgs, Format, ImportArgs, KeyArgs, KeygenArgs, PubkeyArgs, StoreArgs};
use crate::error::{CliResult, usage};
use crate::output::{key_json, key_text, table};
use crate::target::{OpenOptions, Store, Target};

/// `hardkey keygen`.
pub(crate) fn keygen(a: &KeygenArgs, ctx: &Ctx) -> CliResult {
    let target = Target::parse(&a.uri, &ctx.config)?;
    let location = location(&target, a)?;
    let new_file = match &location {
        Some(KeyUri::File(f)) => Some(&f.path),
        Some(KeyUri::Tpm2(Tpm2Uri {
            key: Tpm2Key::File(path),
            ..
        })) => Some(path),
        _ => None,
    };
    if let Some(path) = new_file.filter(|p| p.exists()) {
        return Err(usage(format!(
            "{} already exists: hardkey never overwrites a key file; delete it or choose \
             another path",
            path.display()
        )));
    }
    check_label_conflict(&target, a.label.as_deref())?;
    let store = Store::open(&target, &ctx.config, &a.secrets, OpenOptions::default())?;
    let mut request = GenerateRequest::new(a.alg);
    if let Some(label) = &a.label {
        request = request.label(label.clone());
    }
    if a.sign_only {
        request = request.usages(KeyUsages::SIGN);
    }
    request = request.raw_rsa(raw_rsa_allowed(&target, Some(a.alg), a.allow_raw_rsa)?);
    if let Some(location) = location {
        request = request.location(location);
    }
    if let Target::Pkcs11(uri) = &target {
        // Labels name keys in URIs: a second key with the same label would make them ambiguous.
        if let Some(label) = a.label.as_deref().or(uri.object()) {
            if store
                .list()?
                .iter()
                .any(|k| k.label.as_deref() == Some(label))
            {
                return Err(usage(format!(
                    "a key labelled '{label}' already exists on this token: delete it first \
                     (hardkey delete) or choose another label"
                )));
            }
        }
    }
    let key = with_spinner(
        ctx.out,
        format!("generating a {} key on {}", a.alg, store.keys().dyn_name()),
        || block_on(store.keys().dyn_generate(request)),
    )?;
    let info = key.info();
    ctx.out.emit(key_json(info), || {
        format!(
            "generated {} key on {}\n{}",
            info.algorithm,
            store.keys().dyn_name(),
            key_text(info)
        )
    });
    Ok(())
}

/// Where a new key goes: the URI's own location, or `--persist`/`--out` for TPM keys.
fn location(target: &Target, a: &KeygenArgs) -> CliResult<Option<KeyUri>> {
    let flag_key = match (&a.persist, &a.out) {
        (Some(handle), _) => Some(Tpm2Key::Handle(parse_handle(handle)?)),
        (None, Some(path)) => Some(Tpm2Key::File(path.clone())),
        (None, None) => None,
    };
    match target {
        Target::Tpm { tcti, key } => {
            let key = match (key.clone(), flag_key) {
                (Some(_), Some(_)) => {
                    return Err(usage(
                        "the URI already names where the key goes: drop --persist/--out, or \
                         use the URI tpm2:",
                    ));
                }
                (Some(k), None) | (None, Some(k)) => k,
                (None, None) => return Ok(None),
            };
            let mut uri = Tpm2Uri::new(key);
            uri.tcti = tcti.clone();
            Ok(Some(KeyUri::Tpm2(uri)))
        }
        _ if flag_key.is_some() => Err(usage(
            "--persist and --out are for TPM keys (tpm2:); a PKCS#11 key lives in its token and \
             a software key at its file: URI",
        )),
        Target::Pkcs11(uri) => Ok(Some(KeyUri::Pkcs11((**uri).clone()))),
        Target::File(uri) => Ok(Some(KeyUri::File(uri.clone()))),
    }
}

pub(crate) fn parse_handle(text: &str) -> CliResult<u32> {
    let uri = format!("tpm2:handle={text}");
    match uri.parse::<Tpm2Uri>() {
        Ok(Tpm2Uri {
            key: Tpm2Key::Handle(h),
            ..
        }) => Ok(h),
        _ => Err(usage(format!(
            "--persist {text}: expected a persistent handle such as 0x81000010 \
             (0x81000000..=0x81FFFFFF)"
        ))),
    }
}

/// `hardkey list`.
pub(crate) fn list(a: &StoreArgs, ctx: &Ctx) -> CliResult {
    let target = Target::parse(&a.uri, &ctx.config)?;
    if let Target::File(_) = target {
        return Err(usage(
            "a file: URI names one key, not a store: use hardkey info to show it",
        ));
    }
    let store = Store::open(&target, &ctx.config, &a.secrets, OpenOptions::default())?;
    let keys = store.list()?;
    ctx.out.emit(
        json!({ "store": store.keys().dyn_name(), "keys": keys.iter().map(key_json).collect::<Vec<_>>() }),
        || {
            if keys.is_empty() {
                return format!("no keys on {}", store.keys().dyn_name());
            }
            let rows: Vec<Vec<String>> = keys
                .iter()
                .map(|k| {
                    vec![
                        k.algorithm.to_string(),
                        k.label.clone().unwrap_or_else(|| "-".into()),
                        k.usages.to_string(),
                        k.uri
                            .as_ref()
                            .map_or_else(|| format!("id {}", k.id), ToString::to_string),
                    ]
                })
                .collect();
            table(&["ALG", "LABEL", "USAGE", "URI"], &rows)
        },
    );
    Ok(())
}

/// `hardkey info`.
pub(crate) fn info(a: &KeyArgs, ctx: &Ctx) -> CliResult {
    let target = Target::parse(&a.uri, &ctx.config)?;
    let uri = target.key_uri()?;
    let store = Store::open(&target, &ctx.config, &a.secrets, OpenOptions::default())?;
    let key = store.key(&uri)?;
    let info = key.info();
    ctx.out.emit(key_json(info), || key_text(info));
    Ok(())
}

/// `hardkey delete`.
pub(crate) fn delete(a: &DeleteArgs, ctx: &Ctx) -> CliResult {
    let target = Target::parse(&a.key.uri, &ctx.config)?;
    let uri = target.key_uri()?;
    let store = Store::open(&target, &ctx.config, &a.key.secrets, OpenOptions::default())?;
    let key = store.key(&uri)?;
    let info = key.info().clone();
    drop(key);
    confirm(
        &format!(
            "Delete the {} key {} from {}? This cannot be undone.",
            info.algorithm,
            info.display_name(),
            store.keys().dyn_name()
        ),
        a.yes,
    )?;
    block_on(store.keys().dyn_delete(&info.id))?;
    ctx.out.emit(json!({ "deleted": key_json(&info) }), || {
        format!(
            "deleted the {} key {} from {}",
            info.algorithm,
            info.display_name(),
            store.keys().dyn_name()
        )
    });
    Ok(())
}

/// `hardkey import`.
pub(crate) fn import(a: &ImportArgs, ctx: &Ctx) -> CliResult {
    let target = Target::parse(&a.uri, &ctx.config)?;
    let der = pkcs8_der(&read_input(&a.from, "the private key")?, &a.from)?;
    let store = Store::open(&target, &ctx.config, &a.secrets, OpenOptions::default())?;
    let mut request = ImportRequest::new(der);
    if a.sign_only {
        request = request.usages(KeyUsages::SIGN);
    }
    if a.allow_raw_rsa {
        // (An EC key to import ignores it: its algorithm is known once it is read.)
        request = request.raw_rsa(raw_rsa_allowed(&target, None, true)?);
    }
    check_label_conflict(&target, a.label.as_deref())?;
    let label = match &target {
        Target::Pkcs11(uri) => a.label.clone().or_else(|| uri.object().map(str::to_owned)),
        _ => a.label.clone(),
    };
    if let Some(label) = label {
        request = request.label(label);
    }
    if let Target::File(uri) = &target {
        request = request.location(KeyUri::File(uri.clone()));
    }
    let key = block_on(store.keys().dyn_import(request))?;
    let info = key.info();
    ctx.out.emit(key_json(info), || {
        format!(
            "imported {} key into {}\n{}",
            info.algorithm,
            store.keys().dyn_name(),
            key_text(info)
        )
    });
    Ok(())
}

/// `--allow-raw-rsa` makes sense only for RSA keys on PKCS#11 tokens (the one kind of device
/// that restricts mechanisms per key); elsewhere it is a usage error rather than a no-op.
fn raw_rsa_allowed(target: &Target, alg: Option<KeyAlgorithm>, asked: bool) -> CliResult<bool> {
    if !asked {
        return Ok(false);
    }
    if !matches!(target, Target::Pkcs11(_)) {
        return Err(usage(
            "--allow-raw-rsa applies to PKCS#11 token keys only: a TPM or software key's raw \
             RSA follows from its usages",
        ));
    }
    if alg.is_some_and(|a| a.family() != KeyFamily::Rsa) {
        return Err(usage("--allow-raw-rsa applies to RSA keys only"));
    }
    Ok(true)
}

/// The PKCS#8 DER in a PEM or DER file; other formats get the conversion command.
fn pkcs8_der(bytes: &[u8], path: &std::path::Path) -> CliResult<Zeroizing<Vec<u8>>> {
    let convert = format!(
        "convert it with: openssl pkcs8 -topk8 -nocrypt -in {} -out key.pk8.pem",
        path.display()
    );
    if !bytes.starts_with(b"-----BEGIN") {
        return Ok(Zeroizing::new(bytes.to_vec()));
    }
    let (label, der) = der::pem::decode_vec(bytes).map_err(|e| {
        usage(format!(
            "{} is not a PEM private key ({e}); {convert}",
            path.display()
        ))
    })?;
    let der = Zeroizing::new(der);
    match label {
        "PRIVATE KEY" => Ok(der),
        "ENCRYPTED PRIVATE KEY" => Err(usage(format!(
            "{} is encrypted; hardkey imports unencrypted PKCS#8 (decrypt it into a temporary \
             file with openssl pkcs8 -in {} -out key.pk8.pem, import, then shred it)",
            path.display(),
            path.display()
        ))),
        other => Err(usage(format!(
            "{} holds a '{other}' PEM, not PKCS#8 'PRIVATE KEY'; {convert}",
            path.display()
        ))),
    }
}

/// `hardkey pubkey`.
pub(crate) fn pubkey(a: &PubkeyArgs, ctx: &Ctx) -> CliResult {
    let target = Target::parse(&a.key.uri, &ctx.config)?;
    let uri = target.key_uri()?;
    let inputs: Vec<&std::path::Path> = target.key_file().into_iter().collect();
    let out = a
        .out
        .as_deref()
        .map(|path| OutputFile::prepare(path, "the public key", &inputs))
        .transpose()?;
    let store = Store::open(&target, &ctx.config, &a.key.secrets, OpenOptions::default())?;
    let key = store.key(&uri)?;
    let public = &key.info().public_key;
    let bytes = match a.format {
        Format::Pem => public.to_pem().into_bytes(),
        Format::Der => public.der().to_vec(),
    };
    match (&a.out, out) {
        (Some(path), Some(out)) => {
            out.commit(&bytes)?;
            ctx.out.emit(
                json!({ "out": path, "public_key_sha256": crate::output::fingerprint(key.info()) }),
                || format!("public key written to {}", crate::output::shown(path)),
            );
        }
        _ if ctx.out.json => ctx.out.emit(
            json!({ "public_key_pem": public.to_pem(), "public_key_sha256": crate::output::fingerprint(key.info()) }),
            String::new,
        ),
        _ => write_output(std::path::Path::new("-"), &bytes, "the public key", &[])?,
    }
    Ok(())
}

/// A URI's `object=` and `--label` name the new key twice: refused when they differ (the key
/// would silently get one of the two names).
fn check_label_conflict(target: &Target, label: Option<&str>) -> CliResult<()> {
    if let (Target::Pkcs11(uri), Some(label)) = (target, label) {
        if let Some(object) = uri.object().filter(|object| *object != label) {
            return Err(usage(format!(
                "the URI names the key '{}' (object=) and --label names it '{}': give one of \
                 the two",
                crate::output::printable(object),
                crate::output::printable(label)
            )));
        }
    }
    Ok(())
}
