//! seal and unseal.

use std::path::Path;

use hardkey_api::Operation;
use hardkey_tpm::{PcrSelection, SealOptions, SealedData, TpmAdmin};
use serde_json::json;

use super::{Ctx, read_input, write_output};
use crate::args::{SealArgs, UnsealArgs};
use crate::error::{CliResult, usage};
use crate::secrets::{self, Missing};
use crate::target::{owner_auth, tcti};

/// `hardkey seal`.
pub(crate) fn seal(a: &SealArgs, ctx: &Ctx) -> CliResult {
    let pcrs = a
        .pcrs
        .as_deref()
        .map(|text| {
            text.parse::<PcrSelection>()
                .map_err(|e| usage(format!("--pcrs {text}: {e}")))
        })
        .transpose()?;
    if a.out.exists() {
        return Err(usage(format!(
            "{} already exists: hardkey never overwrites sealed data; remove it or choose \
             another --out",
            a.out.display()
        )));
    }
    let auth = secrets::optional(secrets::SEAL_AUTH, a.auth_file.as_deref())?;
    let has_password = auth.load(secrets::SEAL_AUTH.name)?.is_some();
    match (has_password || pcrs.is_some(), a.no_policy) {
        (false, false) => {
            return Err(usage(
                "seal needs a password (--auth-file FILE or HARDKEY_SEAL_AUTH), a PCR policy \
                 (--pcrs sha256:0,7), or both; without either, anyone who can reach this TPM \
                 can unseal the data. Pass --no-policy if that is what you want",
            ));
        }
        (true, true) => {
            return Err(usage(
                "--no-policy contradicts the password or --pcrs given: drop one or the other",
            ));
        }
        _ => {}
    }
    if let Some(pcrs) = &pcrs {
        let resettable: Vec<u8> = pcrs
            .banks()
            .flat_map(|bank| pcrs.pcrs(bank))
            .filter(|i| *i == 16 || *i == 23)
            .collect();
        let only_resettable = pcrs
            .banks()
            .flat_map(|bank| pcrs.pcrs(bank))
            .all(|i| i == 16 || i == 23);
        if !resettable.is_empty() && only_resettable && !has_password {
            crate::output::note(
                "hardkey: note: PCRs 16 and 23 can be reset by any program that reaches the TPM \
                 (TPM2_PCR_Reset), so a policy on them alone protects nothing; add a password \
                 or a PCR that only boot extends",
            );
        }
    }
    let data = read_input(&a.input, "the data to seal")?;
    let owner = owner_auth(&a.secrets)?;
    let mut admin = TpmAdmin::connect(&tcti(a.tpm.tcti.as_deref(), &ctx.config), &owner)?
        .with_srk_name(ctx.config.tpm.srk_name()?);
    let mut options = SealOptions::new().auth(auth);
    if let Some(pcrs) = pcrs.clone() {
        options = options.pcrs(pcrs);
    }
    let sealed = admin.seal(&data, &options)?;
    sealed.write(&a.out)?;
    let pcrs_text = pcrs.as_ref().map(ToString::to_string);
    ctx.out.emit(
        json!({
            "out": a.out,
            "bytes": data.len(),
            "pcrs": pcrs_text,
            "password": sealed.needs_auth(),
        }),
        || {
            format!(
                "sealed {} bytes to {} in {}{}{}",
                data.len(),
                admin.name(),
                crate::output::shown(&a.out),
                pcrs_text
                    .as_deref()
                    .map(|p| format!(", bound to PCRs {p}"))
                    .unwrap_or_default(),
                if sealed.needs_auth() {
                    ", with a password"
                } else {
                    ""
                }
            )
        },
    );
    Ok(())
}

/// `hardkey unseal`.
pub(crate) fn unseal(a: &UnsealArgs, ctx: &Ctx) -> CliResult {
    let sealed = SealedData::read(&a.input)?;
    let to_stdout = a.out == Path::new("-");
    if !to_stdout && a.out.exists() {
        return Err(usage(format!(
            "{} already exists: hardkey never overwrites an unsealed secret; remove it or choose \
             another --out (- for stdout)",
            a.out.display()
        )));
    }
    let missing = if sealed.needs_auth() {
        Missing::Prompt
    } else {
        Missing::Empty
    };
    let auth = secrets::resolve(secrets::SEAL_AUTH, a.auth_file.as_deref(), missing, None)?;
    let owner = owner_auth(&a.secrets)?;
    let mut admin = TpmAdmin::connect(&tcti(a.tpm.tcti.as_deref(), &ctx.config), &owner)?
        .with_srk_name(ctx.config.tpm.srk_name()?);
    let secret = admin.unseal(&sealed, &auth)?;
    if to_stdout {
        return write_output(&a.out, &secret, "the unsealed secret", &[]);
    }
    hardkey_api::fs::write_new_file(&a.out, &secret, "unsealed secret", Operation::Admin)?;
    ctx.out
        .emit(json!({ "out": a.out, "bytes": secret.len() }), || {
            format!(
                "unsealed {} bytes into {} (mode 0600)",
                secret.len(),
                crate::output::shown(&a.out)
            )
        });
    Ok(())
}
