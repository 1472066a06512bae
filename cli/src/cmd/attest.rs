//! tpm ak create, attest, attest --verify.

use std::path::{Path, PathBuf};

use hardkey_api::KeyAlgorithm;
use hardkey_api::uri::{Tpm2Key, Tpm2Uri};
use hardkey_tpm::{AttestError, DEFAULT_AK_HANDLE, Evidence, Expected, TpmAdmin, Verified};
use serde_json::json;

use super::sign::read_public_key;
use super::{Ctx, OutputFile, read_input};
use crate::args::{AkActivateArgs, AkCreateArgs, AttestArgs};
use crate::error::{CliError, CliResult, Message, failed, usage};
use crate::secrets;
use crate::target::{Target, tcti};

/// `hardkey tpm ak create`.
pub(crate) fn ak_create(a: &AkCreateArgs, ctx: &Ctx) -> CliResult {
    if !matches!(a.alg, KeyAlgorithm::EcP256 | KeyAlgorithm::Rsa2048) {
        return Err(usage(format!(
            "--alg {}: an attestation key is p256 or rsa2048 (the algorithms of the TCG EK \
             templates)",
            a.alg
        )));
    }
    let home = match (&a.out, &a.persist) {
        (Some(path), _) => Tpm2Key::File(path.clone()),
        (None, Some(text)) => Tpm2Key::Handle(super::keys::parse_handle(text)?),
        (None, None) => Tpm2Key::Handle(DEFAULT_AK_HANDLE),
    };
    let inputs: Vec<&Path> = a.out.iter().map(PathBuf::as_path).collect();
    let pub_out = a
        .pub_out
        .as_deref()
        .map(|p| OutputFile::prepare(p, "the AK public key", &inputs))
        .transpose()?;
    let endorsement = secrets::optional(
        secrets::ENDORSEMENT_AUTH,
        a.endorsement_auth_file.as_deref(),
    )?;
    let owner = secrets::optional(secrets::OWNER_AUTH, a.owner_auth_file.as_deref())?;
    let mut admin = TpmAdmin::connect(&tcti(a.tpm.tcti.as_deref(), &ctx.config), &owner)?
        .with_srk_name(ctx.config.tpm.srk_name()?);
    let ak = admin.create_ak(a.alg, &home, &endorsement)?;
    drop(admin);
    let pem = ak.public_key.to_pem();
    if let Some(out) = pub_out {
        out.commit(pem.as_bytes())?;
    }
    let uri = Tpm2Uri::new(ak.location.clone()).to_string();
    ctx.out.emit(
        json!({
            "ak": uri,
            "algorithm": a.alg.to_string(),
            "name": hex::encode(&ak.name),
            "fingerprint": ak.public_key.fingerprint(),
            "public_key_pem": pem,
        }),
        || {
            format!(
                "attestation key {uri} ({}, under the TCG endorsement key)\nname: {}\n\
                 public key: {}",
                a.alg,
                hex::encode(&ak.name),
                ak.public_key.fingerprint()
            )
        },
    );
    Ok(())
}

/// `hardkey tpm ak activate`.
pub(crate) fn ak_activate(a: &AkActivateArgs, ctx: &Ctx) -> CliResult {
    let (ak, ak_tcti) = ak_location(&a.ak, ctx)?;
    let to_stdout = a.out == Path::new("-");
    if !to_stdout && a.out.exists() {
        return Err(usage(format!(
            "{} exists: the recovered secret goes to a new file only; remove it or choose \
             another -o",
            a.out.display()
        )));
    }
    let credential = read_input(&a.credential, "the credential")?;
    let endorsement = secrets::optional(
        secrets::ENDORSEMENT_AUTH,
        a.endorsement_auth_file.as_deref(),
    )?;
    let explicit = a.tpm.tcti.as_deref().or(ak_tcti.as_deref());
    let mut admin = TpmAdmin::connect(
        &tcti(explicit, &ctx.config),
        &hardkey_api::SecretSource::None,
    )?;
    let secret = admin.activate_credential(&ak, a.ek_alg, &endorsement, &credential)?;
    drop(admin);
    if to_stdout {
        OutputFile::prepare(&a.out, "the recovered secret", &[])?.commit(&secret)?;
    } else {
        hardkey_api::fs::write_new_file(
            &a.out,
            &secret,
            "the recovered secret",
            hardkey_api::Operation::Decrypt,
        )?;
        ctx.out.emit(
            json!({ "activated": true, "out": a.out, "bytes": secret.len() }),
            || {
                format!(
                    "credential activated: the AK is in the TPM of the EK it was made to; {} \
                     bytes of secret written to {}",
                    secret.len(),
                    a.out.display()
                )
            },
        );
    }
    Ok(())
}

/// `hardkey attest`: make evidence, or check it with `--verify`.
pub(crate) fn attest(a: &AttestArgs, ctx: &Ctx) -> CliResult {
    match &a.verify {
        Some(evidence) => verify(a, evidence, ctx),
        None => certify(a, ctx),
    }
}

/// The nonce from `--nonce HEX` or `--nonce-file`.
fn nonce(a: &AttestArgs) -> CliResult<Option<Vec<u8>>> {
    let bytes = match (&a.nonce, &a.nonce_file) {
        (Some(text), _) => hex::decode(text.trim()).map_err(|e| {
            usage(format!(
                "--nonce: not hex ({e}); give the nonce as hex digits, or its raw bytes with \
                 --nonce-file"
            ))
        })?,
        (None, Some(path)) => read_input(path, "the nonce")?.to_vec(),
        (None, None) => return Ok(None),
    };
    if bytes.len() > hardkey_tpm::MAX_NONCE_SIZE {
        return Err(usage(format!(
            "the nonce is {} bytes; a TPM attestation holds at most {} (use 32 random bytes or a \
             SHA-256 digest)",
            bytes.len(),
            hardkey_tpm::MAX_NONCE_SIZE
        )));
    }
    Ok(Some(bytes))
}

/// `--ak`: a `tpm2:` URI, a bare persistent handle or a bare path.
fn ak_location(text: &str, ctx: &Ctx) -> CliResult<(Tpm2Key, Option<String>)> {
    if text.starts_with("tpm2:") {
        return match Target::parse(text, &ctx.config)? {
            Target::Tpm {
                key: Some(key),
                tcti,
            } => Ok((key, tcti)),
            _ => Err(usage(format!(
                "--ak {text}: name the AK with tpm2:handle=0x81... or tpm2:file=PATH"
            ))),
        };
    }
    if text.starts_with("0x") || text.starts_with("0X") {
        return Ok((Tpm2Key::Handle(super::keys::parse_handle(text)?), None));
    }
    Ok((Tpm2Key::File(PathBuf::from(text)), None))
}

fn certify(a: &AttestArgs, ctx: &Ctx) -> CliResult {
    let (Some(key_text), Some(ak_text), Some(out)) = (&a.key, &a.ak, &a.out) else {
        return Err(usage(
            "hardkey attest KEY --ak AK -o EVIDENCE makes evidence; hardkey attest --verify \
             EVIDENCE --key-pub PUB checks it",
        ));
    };
    let target = Target::parse(key_text, &ctx.config)?;
    let Target::Tpm {
        key: Some(key),
        tcti: key_tcti,
    } = &target
    else {
        return Err(usage(format!(
            "{key_text}: attestation is of TPM keys: tpm2:handle=0x81... or tpm2:file=PATH"
        )));
    };
    let (ak, ak_tcti) = ak_location(ak_text, ctx)?;
    let mut inputs: Vec<&Path> = Vec::new();
    if let Tpm2Key::File(p) = key {
        inputs.push(p);
    }
    if let Tpm2Key::File(p) = &ak {
        inputs.push(p);
    }
    let nonce = nonce(a)?;
    let key_auth = secrets::optional(secrets::KEY_AUTH, a.secrets.key_auth_file.as_deref())?;
    let endorsement = secrets::optional(
        secrets::ENDORSEMENT_AUTH,
        a.endorsement_auth_file.as_deref(),
    )?;
    let owner = crate::target::owner_auth(&a.secrets)?;
    let output = OutputFile::prepare(out, "the evidence", &inputs)?;
    let explicit = a
        .tcti
        .as_deref()
        .or(key_tcti.as_deref())
        .or(ak_tcti.as_deref());
    let mut admin = TpmAdmin::connect(&tcti(explicit, &ctx.config), &owner)?
        .with_srk_name(ctx.config.tpm.srk_name()?);
    let evidence = admin.certify(
        key,
        &key_auth,
        &ak,
        &endorsement,
        nonce.as_deref().unwrap_or_default(),
    )?;
    drop(admin);
    let key_public = evidence
        .key_public_key()
        .map_err(|e| failed(format!("the TPM's attestation does not verify: {e}")))?;
    // The TPM's own answer is checked before it is written: evidence hardkey writes verifies,
    // except for a key that can leave the TPM, whose evidence says so (and fails --verify).
    let expected = Expected {
        key: &key_public,
        ak: None,
        nonce: nonce.as_deref(),
    };
    let (key_name, extra_data) = match evidence.verify(&expected) {
        Ok(v) => (v.key_name, v.extra_data),
        Err(AttestError::MissingAttributes { missing, .. }) => {
            crate::output::note(&format!(
                "hardkey: warning: the key lacks {}: it was not made in this TPM or can leave                  it, and hardkey attest --verify refuses this evidence",
                missing.join(", ")
            ));
            (evidence.key_name.clone(), nonce.clone().unwrap_or_default())
        }
        Err(e) => {
            return Err(failed(format!(
                "the TPM's attestation does not verify: {e}"
            )));
        }
    };
    output.commit(evidence.to_json().as_bytes())?;
    ctx.out.emit(
        json!({
            "out": out,
            "key": target_uri(key),
            "key_name": hex::encode(&key_name),
            "key_fingerprint": key_public.fingerprint(),
            "ak_fingerprint": evidence.ak_public_key.fingerprint(),
            "nonce": hex::encode(&extra_data),
            "ek_certificate": evidence.ek_certificate.is_some(),
        }),
        || {
            format!(
                "wrote TPM2_Certify evidence for {} (name {}) to {}{}",
                target_uri(key),
                hex::encode(&key_name),
                out.display(),
                if evidence.ek_certificate.is_some() {
                    ", with the TPM's EK certificate"
                } else {
                    " (the TPM has no EK certificate in NV)"
                }
            )
        },
    );
    Ok(())
}

fn target_uri(key: &Tpm2Key) -> String {
    Tpm2Uri::new(key.clone()).to_string()
}

fn verify(a: &AttestArgs, path: &Path, ctx: &Ctx) -> CliResult {
    let Some(key_pub) = &a.key_pub else {
        return Err(usage(
            "--verify needs --key-pub FILE: the public key the evidence must name",
        ));
    };
    let nonce = nonce(a)?;
    let bytes = read_input(path, "the evidence")?;
    if bytes.len() > hardkey_tpm::MAX_EVIDENCE_SIZE {
        return Err(usage(format!(
            "{} is over {} bytes: it is not hardkey attest evidence",
            path.display(),
            hardkey_tpm::MAX_EVIDENCE_SIZE
        )));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        usage(format!(
            "{} is not a text file: hardkey attest writes JSON evidence",
            path.display()
        ))
    })?;
    let evidence = Evidence::from_json(text, &path.display().to_string())?;
    let key = read_public_key(key_pub)?;
    let ak = a.ak_pub.as_deref().map(read_public_key).transpose()?;
    match evidence.verify(&Expected {
        key: &key,
        ak: ak.as_ref(),
        nonce: nonce.as_deref(),
    }) {
        Ok(verified) => {
            report(&evidence, &verified, ctx);
            Ok(())
        }
        // With --json the error document is the one printed (its message names the check).
        Err(e) => Err(refused(e)),
    }
}

fn refused(e: AttestError) -> CliError {
    let message = Message(format!("attestation verification failed: {e}"));
    if e.is_malformed() {
        CliError::usage(message)
    } else {
        CliError::failed(message)
    }
}

/// The subject and issuer of an EK certificate, for the report.
fn ek_certificate_names(der: &[u8]) -> Option<(String, String)> {
    use der::Decode as _;
    let cert = hardkey_x509::x509_cert::Certificate::from_der(der).ok()?;
    Some((
        cert.tbs_certificate.subject.to_string(),
        cert.tbs_certificate.issuer.to_string(),
    ))
}

fn report(evidence: &Evidence, v: &Verified, ctx: &Ctx) {
    let ek = evidence.ek_certificate.as_deref().map(|der| {
        let names = ek_certificate_names(der);
        json!({
            "subject": names.as_ref().map(|n| n.0.clone()),
            "issuer": names.as_ref().map(|n| n.1.clone()),
            "checked": false,
        })
    });
    ctx.out.emit(
        json!({
            "verified": true,
            "key_name": hex::encode(&v.key_name),
            "key_qualified_name": hex::encode(&v.key_qualified_name),
            "key_attributes": v.key_attributes,
            "ak_fingerprint": v.ak_public_key.fingerprint(),
            "ak_attributes": v.ak_attributes,
            "ak_pinned": v.ak_pinned,
            "qualified_signer": hex::encode(&v.qualified_signer),
            "extra_data": hex::encode(&v.extra_data),
            "nonce_checked": v.nonce_checked,
            "clock": v.clock,
            "reset_count": v.reset_count,
            "restart_count": v.restart_count,
            "safe": v.safe,
            "firmware_version": format!("{:#018x}", v.firmware_version),
            "ek_certificate": ek,
        }),
        || {
            let mut lines = vec![
                "Verified OK: the key was made in a TPM and cannot leave it (TPM2_Certify)"
                    .to_owned(),
                format!("key name: {}", hex::encode(&v.key_name)),
                format!("key attributes: {}", v.key_attributes.join("|")),
                format!(
                    "AK: {}{}",
                    v.ak_public_key.fingerprint(),
                    if v.ak_pinned {
                        " (the one given with --ak-pub)"
                    } else {
                        " (NOT pinned: give --ak-pub to check it is the AK you trust)"
                    }
                ),
                if v.nonce_checked {
                    format!("nonce: {} (checked)", hex::encode(&v.extra_data))
                } else {
                    format!(
                        "extraData: {} (NOT checked: give --nonce to rule out a replay)",
                        if v.extra_data.is_empty() {
                            "empty".to_owned()
                        } else {
                            hex::encode(&v.extra_data)
                        }
                    )
                },
                format!(
                    "TPM clock {} ms, resets {}, restarts {}, safe {}",
                    v.clock, v.reset_count, v.restart_count, v.safe
                ),
            ];
            lines.push(match evidence.ek_certificate.as_deref() {
                Some(der) => match ek_certificate_names(der) {
                    Some((subject, issuer)) => format!(
                        "EK certificate: subject '{subject}', issuer '{issuer}' (not checked \
                         here: chain it to the TPM manufacturer's CA; the AK's binding to the \
                         EK is not proven by this evidence)"
                    ),
                    None => "EK certificate: present but not parsable X.509".to_owned(),
                },
                None => "EK certificate: none in the evidence".to_owned(),
            });
            lines.join("\n")
        },
    );
    if !v.ak_pinned && !ctx.out.json {
        crate::output::note(
            "hardkey: note: without --ak-pub the evidence's own AK was used: it proves only that \
             some TPM's restricted key signed it",
        );
    }
}
