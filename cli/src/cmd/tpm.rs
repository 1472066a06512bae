//! tpm status, take-ownership, change-auth, clear, lockout reset|set.

use std::io::IsTerminal;

use hardkey_api::SecretSource;
use hardkey_tpm::{Hierarchy, TpmAdmin, TpmStatus};
use serde_json::json;

use super::{Ctx, confirm};
use crate::args::{
    AkCommand, ChangeAuthArgs, ClearArgs, FlushArgs, HierarchyArg, LockoutCommand,
    TakeOwnershipArgs, TpmArgs, TpmCommand,
};
use crate::error::{CliResult, usage};
use crate::secrets::{self, Missing, Secret};
use crate::target::tcti;

/// `hardkey tpm ...`.
pub(crate) fn run(command: &TpmCommand, ctx: &Ctx) -> CliResult {
    match command {
        TpmCommand::Status(a) => status(a, ctx),
        TpmCommand::TakeOwnership(a) => take_ownership(a, ctx),
        TpmCommand::ChangeAuth(a) => change_auth(a, ctx),
        TpmCommand::Clear(a) => clear(a, ctx),
        TpmCommand::Flush(a) => flush(a, ctx),
        TpmCommand::Ak(AkCommand::Create(a)) => super::attest::ak_create(a, ctx),
        TpmCommand::Ak(AkCommand::Activate(a)) => super::attest::ak_activate(a, ctx),
        TpmCommand::Lockout(LockoutCommand::Reset(a)) => {
            let lockout = lockout_auth(a.lockout_auth_file.as_deref())?;
            let mut admin = connect(&a.tpm, ctx, &SecretSource::None)?;
            admin.reset_lockout(&lockout)?;
            ctx.out.emit(json!({ "lockout_reset": true }), || {
                format!("dictionary-attack lockout of {} reset", admin.name())
            });
            Ok(())
        }
        TpmCommand::Lockout(LockoutCommand::Set(a)) => {
            let lockout = lockout_auth(a.auth.lockout_auth_file.as_deref())?;
            let secs = |d: std::time::Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
            let (recovery, lockout_recovery) = (secs(a.recovery_time), secs(a.lockout_recovery));
            let mut admin = connect(&a.auth.tpm, ctx, &SecretSource::None)?;
            admin.set_lockout_parameters(&lockout, a.max_tries, recovery, lockout_recovery)?;
            ctx.out.emit(
                json!({ "max_tries": a.max_tries, "recovery_time_s": recovery, "lockout_recovery_s": lockout_recovery }),
                || {
                    format!(
                        "{}: lockout after {} failures, one forgotten every {recovery} s, \
                         {lockout_recovery} s after a failed lockout auth",
                        admin.name(),
                        a.max_tries
                    )
                },
            );
            Ok(())
        }
    }
}

/// `hardkey tpm flush`: what killed processes left on a TPM without a resource manager.
fn flush(a: &FlushArgs, ctx: &Ctx) -> CliResult {
    let mut admin = connect(&a.tpm, ctx, &SecretSource::None)?;
    let what = hardkey_tpm::Flush {
        objects: !a.sessions,
        sessions: !a.objects,
    };
    if admin.has_resource_manager() {
        // Each client sees only its own handles: there is nothing here to flush, and the
        // resource manager already flushed what dead clients left.
        ctx.out
            .emit(json!({ "flushed": [], "resource_manager": true }), || {
                format!(
                    "{} is behind a resource manager, which flushes what a client leaves when it \
                 exits: nothing to flush",
                    admin.name()
                )
            });
        return Ok(());
    }
    let mut present = Vec::new();
    if what.objects {
        present.extend(admin.transient_handles()?);
    }
    if what.sessions {
        present.extend(admin.session_handles()?);
    }
    if present.is_empty() {
        ctx.out.emit(json!({ "flushed": [] }), || {
            format!("{}: no transient object or session is loaded", admin.name())
        });
        return Ok(());
    }
    confirm(
        &format!(
            "{} holds {} handle(s) ({}); flushing them also breaks any process using the TPM \
             now.",
            admin.name(),
            present.len(),
            handle_list(&present)
        ),
        a.yes,
    )?;
    let flushed = admin.flush(what)?;
    ctx.out.emit(
        json!({ "flushed": flushed.iter().map(|h| format!("{h:#010x}")).collect::<Vec<_>>() }),
        || {
            format!(
                "{}: flushed {} handle(s){}",
                admin.name(),
                flushed.len(),
                if flushed.is_empty() {
                    String::new()
                } else {
                    format!(": {}", handle_list(&flushed))
                }
            )
        },
    );
    Ok(())
}

/// "0x80000000, 0x02000001".
fn handle_list(handles: &[u32]) -> String {
    handles
        .iter()
        .map(|h| format!("{h:#010x}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn connect(tpm: &TpmArgs, ctx: &Ctx, owner: &SecretSource) -> CliResult<TpmAdmin> {
    Ok(TpmAdmin::connect(
        &tcti(tpm.tcti.as_deref(), &ctx.config),
        owner,
    )?)
}

fn lockout_auth(file: Option<&std::path::Path>) -> CliResult<SecretSource> {
    secrets::optional(secrets::LOCKOUT_AUTH, file)
}

/// The status as JSON.
fn status_json(s: &TpmStatus) -> serde_json::Value {
    json!({
        "manufacturer": s.manufacturer,
        "vendor": s.vendor,
        "owner_auth_set": s.owner_auth_set,
        "endorsement_auth_set": s.endorsement_auth_set,
        "lockout_auth_set": s.lockout_auth_set,
        "clear_disabled": s.clear_disabled,
        "in_lockout": s.in_lockout,
        "lockout_counter": s.lockout_counter,
        "max_tries": s.max_tries,
        "recovery_time_s": s.recovery_time_s,
        "lockout_recovery_s": s.lockout_recovery_s,
    })
}

fn status(a: &TpmArgs, ctx: &Ctx) -> CliResult {
    let mut admin = connect(a, ctx, &SecretSource::None)?;
    let s = admin.status()?;
    ctx.out.emit(status_json(&s), || s.to_string());
    Ok(())
}

fn take_ownership(a: &TakeOwnershipArgs, ctx: &Ctx) -> CliResult {
    let given = |file: &Option<std::path::PathBuf>, s: Secret| {
        file.is_some() || std::env::var_os(s.env).is_some()
    };
    let any = given(&a.owner_auth_file, secrets::OWNER_AUTH)
        || given(&a.endorsement_auth_file, secrets::ENDORSEMENT_AUTH)
        || given(&a.lockout_auth_file, secrets::LOCKOUT_AUTH);
    // On a terminal with nothing given, ask for the owner and lockout auths.
    let missing = if !any && std::io::stdin().is_terminal() {
        Missing::PromptNew
    } else if !any {
        return Err(usage(
            "no new auth given: pass --owner-auth-file, --endorsement-auth-file and/or \
             --lockout-auth-file (- for stdin), or set HARDKEY_OWNER_AUTH, \
             HARDKEY_ENDORSEMENT_AUTH, HARDKEY_LOCKOUT_AUTH",
        ));
    } else {
        Missing::Empty
    };
    let owner = secrets::resolve(
        secrets::OWNER_AUTH,
        a.owner_auth_file.as_deref(),
        missing,
        None,
    )?;
    let endorsement = secrets::optional(
        secrets::ENDORSEMENT_AUTH,
        a.endorsement_auth_file.as_deref(),
    )?;
    let lockout = secrets::resolve(
        secrets::LOCKOUT_AUTH,
        a.lockout_auth_file.as_deref(),
        missing,
        None,
    )?;
    let mut admin = connect(&a.tpm, ctx, &SecretSource::None)?;
    admin.take_ownership(&owner, &endorsement, &lockout)?;
    let s = admin.status()?;
    ctx.out.emit(status_json(&s), || {
        format!("took ownership of {}\n{s}", admin.name())
    });
    Ok(())
}

fn change_auth(a: &ChangeAuthArgs, ctx: &Ctx) -> CliResult {
    let (hierarchy, current_secret) = match a.hierarchy {
        HierarchyArg::Owner => (Hierarchy::Owner, secrets::OWNER_AUTH),
        HierarchyArg::Endorsement => (Hierarchy::Endorsement, secrets::ENDORSEMENT_AUTH),
        HierarchyArg::Lockout => (Hierarchy::Lockout, secrets::LOCKOUT_AUTH),
    };
    let current = secrets::optional(current_secret, a.current_auth_file.as_deref())?;
    let new = secrets::resolve(
        secrets::NEW_AUTH,
        a.new_auth_file.as_deref(),
        Missing::PromptNew,
        None,
    )?;
    let mut admin = connect(&a.tpm, ctx, &SecretSource::None)?;
    admin.change_auth(hierarchy, &current, &new)?;
    ctx.out.emit(json!({ "changed": hierarchy.name() }), || {
        format!("{hierarchy} auth of {} changed", admin.name())
    });
    Ok(())
}

fn clear(a: &ClearArgs, ctx: &Ctx) -> CliResult {
    let lockout = lockout_auth(a.lockout_auth_file.as_deref())?;
    let tcti = tcti(a.tpm.tcti.as_deref(), &ctx.config);
    confirm(
        &format!(
            "Clear the TPM at {tcti}? Every key and sealed object under its owner and \
             endorsement hierarchies is lost for good."
        ),
        a.yes,
    )?;
    let mut admin = TpmAdmin::connect(&tcti, &SecretSource::None)?;
    admin.clear(&lockout)?;
    let s = admin.status()?;
    ctx.out
        .emit(status_json(&s), || format!("cleared {}\n{s}", admin.name()));
    Ok(())
}
