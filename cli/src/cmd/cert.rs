//! csr and selfsign: X.509 built with x509-cert and signed through the key, asynchronously.

use futures::executor::block_on;
use hardkey_x509::{self as x509, CertOptions, CsrOptions, Subject, SubjectAltNames};
use serde_json::json;

use super::{Ctx, OutputFile};
use crate::args::{CsrArgs, NameArgs, SelfsignArgs};
use crate::error::{CliResult, usage};
use crate::target::{OpenOptions, Store, Target};

/// The subject and alternative names, parsed before any device is touched.
fn names(a: &NameArgs) -> CliResult<(Subject, SubjectAltNames)> {
    let subject = a
        .subject
        .parse::<Subject>()
        .map_err(|e| usage(format!("--subject: {e}")))?;
    let sans = SubjectAltNames::parse(&a.san).map_err(|e| usage(format!("--san: {e}")))?;
    Ok((subject, sans))
}

/// `--out`, checked and opened before the device is touched.
fn prepare_out(a: &NameArgs, target: &Target, what: &str) -> CliResult<Option<OutputFile>> {
    let inputs: Vec<&std::path::Path> = target.key_file().into_iter().collect();
    a.out
        .as_deref()
        .map(|path| OutputFile::prepare(path, what, &inputs))
        .transpose()
}

/// Writes PEM to `--out`, or stdout.
fn emit_pem(
    a: &NameArgs,
    out: Option<OutputFile>,
    ctx: &Ctx,
    what: &str,
    pem: &str,
    scheme: &str,
) -> CliResult {
    match (&a.out, out) {
        (Some(path), Some(out)) => {
            out.commit(pem.as_bytes())?;
            ctx.out
                .emit(json!({ "out": path, "scheme": scheme, "pem": pem }), || {
                    format!(
                        "{what} signed with {scheme} written to {}",
                        crate::output::shown(path)
                    )
                });
        }
        _ if ctx.out.json => ctx
            .out
            .emit(json!({ "scheme": scheme, "pem": pem }), String::new),
        _ => crate::output::write_stdout(pem),
    }
    Ok(())
}

/// `hardkey csr`.
pub(crate) fn csr(a: &CsrArgs, ctx: &Ctx) -> CliResult {
    let a = &a.name;
    let (subject, sans) = names(a)?;
    let target = Target::parse(&a.key.uri, &ctx.config)?;
    let uri = target.key_uri()?;
    let out = prepare_out(a, &target, "certificate signing request")?;
    let store = Store::open(&target, &ctx.config, &a.key.secrets, OpenOptions::default())?;
    let key = store.key(&uri)?;
    let options = CsrOptions::new(subject).sans(sans).scheme(a.scheme);
    let request = block_on(x509::build_csr(&key, &options))?;
    emit_pem(
        a,
        out,
        ctx,
        "certificate signing request",
        &request.to_pem(),
        request.scheme().name(),
    )
}

/// `hardkey selfsign`.
pub(crate) fn selfsign(a: &SelfsignArgs, ctx: &Ctx) -> CliResult {
    let (subject, sans) = names(&a.name)?;
    let target = Target::parse(&a.name.key.uri, &ctx.config)?;
    let uri = target.key_uri()?;
    let out = prepare_out(&a.name, &target, "self-signed certificate")?;
    let store = Store::open(
        &target,
        &ctx.config,
        &a.name.key.secrets,
        OpenOptions::default(),
    )?;
    let key = store.key(&uri)?;
    let options = CertOptions::new(subject)
        .sans(sans)
        .days(a.days)
        .ca(a.ca)
        .scheme(a.name.scheme);
    let cert = block_on(x509::self_signed(&key, &options))?;
    emit_pem(
        &a.name,
        out,
        ctx,
        "self-signed certificate",
        &cert.to_pem(),
        cert.scheme().name(),
    )
}
