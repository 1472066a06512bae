//! sign and verify.

use std::path::Path;

use futures::executor::block_on;
use hardkey_api::{PrivateKey, PublicKey};
use serde_json::json;

use super::{Ctx, OutputFile, default_scheme, read_input};
use crate::args::{SignArgs, VerifyArgs};
use crate::error::{CliError, CliResult, Message, usage};
use crate::target::{OpenOptions, Store, Target};

/// `hardkey sign`.
pub(crate) fn sign(a: &SignArgs, ctx: &Ctx) -> CliResult {
    let target = Target::parse(&a.key.uri, &ctx.config)?;
    let uri = target.key_uri()?;
    let inputs: Vec<&Path> = [Some(a.input.as_path()), target.key_file()]
        .into_iter()
        .flatten()
        .collect();
    let out = OutputFile::prepare(&a.out, "the signature", &inputs)?;
    let input = read_input(&a.input, "the data to sign")?;
    let store = Store::open(&target, &ctx.config, &a.key.secrets, OpenOptions::default())?;
    let key = store.key(&uri)?;
    let scheme = a
        .scheme
        .unwrap_or_else(|| default_scheme(key.info().algorithm));
    let signature = if a.digest {
        block_on(key.sign_digest(scheme, &input))?
    } else {
        block_on(key.sign(scheme, &input))?
    };
    out.commit(&signature)?;
    ctx.out.emit(
        json!({ "scheme": scheme.name(), "out": a.out, "signature": hex::encode(&signature) }),
        || {
            format!(
                "{scheme} signature ({} bytes) written to {}",
                signature.len(),
                crate::output::shown(&a.out)
            )
        },
    );
    Ok(())
}

/// `hardkey verify`: in software, with the `rsa`/`p256`/`p384` crates.
pub(crate) fn verify(a: &VerifyArgs, ctx: &Ctx) -> CliResult {
    let public = read_public_key(&a.pubkey)?;
    let scheme = a
        .scheme
        .unwrap_or_else(|| default_scheme(public.algorithm()));
    let message = read_input(&a.input, "the signed data")?;
    let signature = read_input(&a.sig, "the signature")?;
    match hardkey_api::verify::verify_signature(public.der(), scheme, &message, &signature) {
        Ok(()) => {
            ctx.out
                .emit(json!({ "verified": true, "scheme": scheme.name() }), || {
                    format!("Verified OK ({scheme})")
                });
            Ok(())
        }
        Err(e) => {
            if ctx.out.json {
                ctx.out.emit(
                    json!({ "verified": false, "scheme": scheme.name(), "reason": e.to_string() }),
                    String::new,
                );
            }
            Err(CliError::failed(Message(format!(
                "verification failure: {e}"
            ))))
        }
    }
}

/// A public key from a PEM (`PUBLIC KEY`, or a `CERTIFICATE`'s) or DER SubjectPublicKeyInfo.
pub(crate) fn read_public_key(path: &Path) -> CliResult<PublicKey> {
    let bytes = read_input(path, "the public key")?;
    let der = if bytes.starts_with(b"-----BEGIN") {
        let (label, der) = der::pem::decode_vec(&bytes)
            .map_err(|e| usage(format!("{} is not a PEM file: {e}", path.display())))?;
        match label {
            "PUBLIC KEY" => der,
            "CERTIFICATE" => {
                use der::{Decode, Encode};
                let cert = hardkey_x509::x509_cert::Certificate::from_der(&der).map_err(|e| {
                    usage(format!(
                        "{} is not an X.509 certificate: {e}",
                        path.display()
                    ))
                })?;
                cert.tbs_certificate
                    .subject_public_key_info
                    .to_der()
                    .map_err(|e| usage(format!("{}: {e}", path.display())))?
            }
            other => {
                return Err(usage(format!(
                    "{} holds a '{other}' PEM; expected a PUBLIC KEY (hardkey pubkey writes one) \
                     or a CERTIFICATE",
                    path.display()
                )));
            }
        }
    } else {
        bytes.to_vec()
    };
    PublicKey::from_spki_der(&der).map_err(|e| {
        usage(format!(
            "{} is not a public key hardkey knows: {e}",
            path.display()
        ))
    })
}
