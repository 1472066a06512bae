//! `hardkey cert import|export|list|delete`: certificate chains kept beside their keys (see
//! [`crate::chains`] for where).

use der::Decode;
use futures::executor::block_on;
use hardkey_api::PrivateKey;
use hardkey_pkcs11::TokenCertificate;
use hardkey_tls::CertChain;
use serde_json::{Value, json};

use super::{Ctx, OutputFile, confirm};
use crate::args::{CertCommand, CertDeleteArgs, CertExportArgs, CertImportArgs, Format, StoreArgs};
use crate::chains::{self, is_cert_uri};
use crate::cmd::serve::tls_error;
use crate::error::{CliResult, failed, usage};
use crate::output::table;
use crate::target::{OpenOptions, Store, Target};

/// Runs a `cert` subcommand.
pub(crate) fn run(c: &CertCommand, ctx: &Ctx) -> CliResult {
    match c {
        CertCommand::Import(a) => import(a, ctx),
        CertCommand::Export(a) => export(a, ctx),
        CertCommand::List(a) => list(a, ctx),
        CertCommand::Delete(a) => delete(a, ctx),
    }
}

/// A chain as PEM text, leaf first.
pub(crate) fn chain_pem(chain: &CertChain) -> CliResult<String> {
    let mut out = String::new();
    for cert in chain.certs() {
        let block = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, cert)
            .map_err(|e| failed(format!("cannot write a certificate as PEM: {e}")))?;
        out.push_str(&block);
    }
    Ok(out)
}

/// A token URI must name a key or certificate for import, export and delete.
fn named(target: &Target) -> CliResult {
    if let Target::Pkcs11(uri) = target {
        if uri.object().is_none() && uri.id().is_none() {
            return Err(usage(format!(
                "'{uri}' names a token, not a key: add object=LABEL or id=%XX (hardkey cert \
                 list {uri} shows the certificates)"
            )));
        }
    }
    Ok(())
}

/// `hardkey cert import`.
fn import(a: &CertImportArgs, ctx: &Ctx) -> CliResult {
    let target = Target::parse(&a.key.uri, &ctx.config)?;
    if let Target::Pkcs11(uri) = &target {
        if is_cert_uri(uri) {
            return Err(usage(format!(
                "'{uri}' names a certificate (type=cert): name the key the chain goes beside \
                 (type=private, or no type)"
            )));
        }
    }
    let uri = target.key_uri()?;
    let chain = chains::read_chain_file(&a.from)?;
    let beside = match &target {
        Target::Pkcs11(_) => None,
        _ => {
            let file = chains::beside_file(&target)?;
            if file.exists() && !a.force {
                return Err(usage(format!(
                    "a certificate chain is stored beside the key already ({}): pass --force \
                     to replace it",
                    file.display()
                )));
            }
            Some(file)
        }
    };
    let store = Store::open(&target, &ctx.config, &a.key.secrets, OpenOptions::default())?;
    let key = store.key(&uri)?;
    chain.check_key(key.info()).map_err(tls_error)?;
    let certs = chain.certs().len();
    let (place, note) = match (&store, beside) {
        (Store::Pkcs11(p11), _) => {
            let id = chains::key_id(key.info()).ok_or_else(|| {
                usage(format!(
                    "the key {} has no CKA_ID, and a certificate is found beside its key by \
                     CKA_ID: give the key one (pkcs11-tool --set-id) or re-create it with \
                     hardkey keygen",
                    key.info().display_name()
                ))
            })?;
            let label = key.info().label.clone().unwrap_or_default();
            let ders = chain.certs().iter().map(|c| c.to_vec()).collect();
            let stored = block_on(p11.store_chain(id.clone(), label, ders, a.force))?;
            let note = match (stored.shared_issuers, stored.replaced) {
                (0, false) => String::new(),
                (n, replaced) => format!(
                    " ({}{}{})",
                    if n > 0 {
                        format!("{n} issuer(s) already on the token, shared")
                    } else {
                        String::new()
                    },
                    if n > 0 && replaced { "; " } else { "" },
                    if replaced {
                        "the previous chain replaced"
                    } else {
                        ""
                    }
                ),
            };
            (
                format!(
                    "{} (certificate id {})",
                    store.keys().dyn_name(),
                    hex::encode(&id)
                ),
                note,
            )
        }
        (_, Some(file)) => {
            let mut inputs: Vec<&std::path::Path> = vec![a.from.as_path()];
            inputs.extend(target.key_file());
            OutputFile::prepare(&file, "certificate chain", &inputs)?
                .commit(chain_pem(&chain)?.as_bytes())?;
            (file.display().to_string(), String::new())
        }
        (_, None) => return Err(usage("this key has no place for a certificate chain")),
    };
    ctx.out.emit(
        json!({
            "key": key.info().uri.as_ref().map(ToString::to_string),
            "stored": place,
            "certificates": certs,
            "subject": chain.subject(),
        }),
        || {
            format!(
                "stored the chain of '{}' ({certs} certificate(s)) beside key {} on {place}{note}",
                crate::output::printable(chain.subject()),
                key.info().display_name()
            )
        },
    );
    Ok(())
}

/// The chain beside the key `target` names (or the `type=cert` URI's), opening the token
/// when it is on one.
fn chain_of(
    target: &Target,
    ctx: &Ctx,
    secrets: &crate::args::DeviceSecrets,
) -> CliResult<CertChain> {
    match target {
        Target::Pkcs11(uri) => {
            named(target)?;
            let store = Store::open(target, &ctx.config, secrets, OpenOptions::default())?;
            chains::read_token_chain(&store, uri)
        }
        Target::Tpm { key: None, .. } => Err(usage(
            "'tpm2:' names the TPM, not a key: give the key file (tpm2:file=PATH)",
        )),
        _ => {
            let file = chains::beside_file(target)?;
            if !file.exists() {
                return Err(failed(format!(
                    "no certificate chain beside the key: {} does not exist (hardkey cert \
                     import stores one)",
                    file.display()
                )));
            }
            CertChain::from_pem_file(&file).map_err(tls_error)
        }
    }
}

/// `hardkey cert export`.
fn export(a: &CertExportArgs, ctx: &Ctx) -> CliResult {
    let target = Target::parse(&a.key.uri, &ctx.config)?;
    let inputs: Vec<&std::path::Path> = target.key_file().into_iter().collect();
    let out = match &a.out {
        Some(path) => {
            chains::refuse_existing(path, "certificate chain", a.force)?;
            Some(OutputFile::prepare(path, "certificate chain", &inputs)?)
        }
        None => None,
    };
    let chain = chain_of(&target, ctx, &a.key.secrets)?;
    let pem = chain_pem(&chain)?;
    let bytes = match a.format {
        Format::Pem => pem.clone().into_bytes(),
        Format::Der => chain
            .certs()
            .first()
            .map(|c| c.to_vec())
            .unwrap_or_default(),
    };
    match (&a.out, out) {
        (Some(path), Some(out)) => {
            out.commit(&bytes)?;
            ctx.out.emit(
                json!({ "out": path, "certificates": chain.certs().len(), "subject": chain.subject() }),
                || {
                    format!(
                        "the chain of '{}' ({} certificate(s)) written to {}",
                        crate::output::printable(chain.subject()),
                        chain.certs().len(),
                        crate::output::shown(path)
                    )
                },
            );
        }
        _ if ctx.out.json => ctx.out.emit(
            json!({ "certificates": chain.certs().len(), "subject": chain.subject(), "pem": pem }),
            String::new,
        ),
        _ => OutputFile::prepare(std::path::Path::new("-"), "certificate chain", &[])?
            .commit(&bytes)?,
    }
    Ok(())
}

/// What `cert list` shows of a certificate.
struct Row {
    subject: String,
    issuer: String,
    serial: String,
    not_after: String,
    id: String,
    label: String,
    category: String,
    has_key: Option<bool>,
}

fn row(der_bytes: &[u8], token: Option<&TokenCertificate>) -> Row {
    let (subject, issuer, serial, not_after) = match x509_cert::Certificate::from_der(der_bytes) {
        Ok(c) => {
            let tbs = c.tbs_certificate;
            (
                tbs.subject.to_string(),
                tbs.issuer.to_string(),
                hex::encode(tbs.serial_number.as_bytes()),
                humantime::format_rfc3339_seconds(tbs.validity.not_after.to_system_time())
                    .to_string(),
            )
        }
        Err(e) => (
            format!("(unreadable: {e})"),
            String::new(),
            String::new(),
            String::new(),
        ),
    };
    Row {
        subject,
        issuer,
        serial,
        not_after,
        id: token.map(|t| hex::encode(&t.id)).unwrap_or_default(),
        label: token.map(|t| t.label.clone()).unwrap_or_default(),
        category: token
            .and_then(|t| t.category)
            .map(|c| c.name().to_owned())
            .unwrap_or_default(),
        has_key: token.map(|t| t.has_key),
    }
}

/// `hardkey cert list`.
fn list(a: &StoreArgs, ctx: &Ctx) -> CliResult {
    let target = Target::parse(&a.uri, &ctx.config)?;
    let (place, rows) = match &target {
        Target::Pkcs11(_) => {
            let store = Store::open(&target, &ctx.config, &a.secrets, OpenOptions::default())?;
            let Store::Pkcs11(p11) = &store else {
                return Err(usage("not a PKCS#11 token"));
            };
            let certs = block_on(p11.certificates())?;
            let rows: Vec<Row> = certs.iter().map(|c| row(&c.der, Some(c))).collect();
            (store.keys().dyn_name().to_owned(), rows)
        }
        _ => {
            let chain = chain_of(&target, ctx, &a.secrets)?;
            let rows = chain.certs().iter().map(|c| row(c, None)).collect();
            (chain.origin().to_owned(), rows)
        }
    };
    let json_rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "subject": r.subject,
                "issuer": r.issuer,
                "serial": r.serial,
                "not_after": r.not_after,
                "id": r.id,
                "label": r.label,
                "category": r.category,
                "has_key": r.has_key,
            })
        })
        .collect();
    ctx.out
        .emit(json!({ "store": place, "certificates": json_rows }), || {
            if rows.is_empty() {
                return format!("no certificates on {place}");
            }
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    let dash = |s: &str| {
                        if s.is_empty() {
                            "-".to_owned()
                        } else {
                            s.to_owned()
                        }
                    };
                    vec![
                        dash(&r.subject),
                        dash(&r.issuer),
                        dash(&r.serial),
                        dash(&r.not_after),
                        dash(&r.id),
                        dash(&r.label),
                        match r.has_key {
                            Some(true) => "yes".to_owned(),
                            Some(false) => "no".to_owned(),
                            None => "-".to_owned(),
                        },
                    ]
                })
                .collect();
            table(
                &[
                    "SUBJECT",
                    "ISSUER",
                    "SERIAL",
                    "NOT AFTER",
                    "ID",
                    "LABEL",
                    "KEY",
                ],
                &cells,
            )
        });
    Ok(())
}

/// `hardkey cert delete`.
fn delete(a: &CertDeleteArgs, ctx: &Ctx) -> CliResult {
    let target = Target::parse(&a.key.uri, &ctx.config)?;
    named(&target)?;
    match &target {
        Target::Pkcs11(uri) => {
            let store = Store::open(&target, &ctx.config, &a.key.secrets, OpenOptions::default())?;
            let Store::Pkcs11(p11) = &store else {
                return Err(usage("not a PKCS#11 token"));
            };
            let selector = chains::selector(&store, uri)?;
            let chain = chains::read_token_chain(&store, uri)?;
            confirm(
                &format!(
                    "Delete the certificate '{}' (with {selector}) and its unshared issuers from \
                     {}?",
                    crate::output::printable(chain.subject()),
                    store.keys().dyn_name()
                ),
                a.yes,
            )?;
            let gone = block_on(p11.delete_chain(selector))?;
            ctx.out.emit(
                json!({ "deleted": gone, "subject": chain.subject() }),
                || {
                    format!(
                        "deleted {gone} certificate object(s) from {}: '{}' and the issuers \
                         nothing else needs",
                        store.keys().dyn_name(),
                        crate::output::printable(chain.subject())
                    )
                },
            );
        }
        _ => {
            let file = chains::beside_file(&target)?;
            if !file.exists() {
                return Err(failed(format!(
                    "no certificate chain beside the key: {} does not exist",
                    file.display()
                )));
            }
            confirm(
                &format!("Delete the certificate chain {}?", file.display()),
                a.yes,
            )?;
            std::fs::remove_file(&file).map_err(|e| crate::error::io("delete", &file, e))?;
            ctx.out.emit(json!({ "deleted": file }), || {
                format!("deleted {}", file.display())
            });
        }
    }
    Ok(())
}
