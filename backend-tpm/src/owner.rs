//! Ownership: the state of the hierarchy auths and of dictionary-attack protection
//! ([`TpmStatus`]), taking ownership, changing a hierarchy's auth, and `TPM2_Clear`.
//!
//! Hierarchy commands are authorized with an HMAC session (the current auth keys the HMAC
//! and never crosses the bus). A new auth value travels as `TPM2_HierarchyChangeAuth`'s
//! first parameter, encrypted: the session is salted with a fresh ECC P-256 primary key of
//! the null hierarchy (created from the SRK template, used to salt, flushed at once), so the
//! salt works whatever the owner auth, before an SRK exists and after a clear. This defeats
//! a passive observer of the bus; like any salt key not certified by the endorsement key, it
//! does not defeat an active man in the middle who substitutes the key.

use std::fmt;

use hardkey_api::{Error, InvalidInput, Operation, Result};
use tss_esapi::Context;
use tss_esapi::constants::{CapabilityType, PropertyTag, SessionType};
use tss_esapi::handles::{AuthHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::CapabilityData;
use zeroize::Zeroizing;

use crate::connect::{Encryption, auth_value, flushing, retrying};
use crate::error::mapper;

const OP: Operation = Operation::Admin;

/// A hierarchy whose auth value hardkey manages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Hierarchy {
    /// The owner (storage) hierarchy: the SRK, persistent keys.
    Owner,
    /// The endorsement hierarchy: the EK and attestation.
    Endorsement,
    /// The lockout hierarchy: dictionary-attack reset and parameters, `TPM2_Clear`.
    Lockout,
}

impl Hierarchy {
    fn handle(self) -> AuthHandle {
        match self {
            Self::Owner => AuthHandle::Owner,
            Self::Endorsement => AuthHandle::Endorsement,
            Self::Lockout => AuthHandle::Lockout,
        }
    }

    fn object(self) -> ObjectHandle {
        match self {
            Self::Owner => ObjectHandle::Owner,
            Self::Endorsement => ObjectHandle::Endorsement,
            Self::Lockout => ObjectHandle::Lockout,
        }
    }

    /// The name used in messages (`owner`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Endorsement => "endorsement",
            Self::Lockout => "lockout",
        }
    }
}

impl fmt::Display for Hierarchy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Ownership and dictionary-attack state of a TPM (`TPM2_GetCapability` of the TPM
/// properties).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TpmStatus {
    /// `TPM_PT_MANUFACTURER` as text (`IBM`, `INTC`, `STM `...), trimmed.
    pub manufacturer: String,
    /// `TPM_PT_VENDOR_STRING_1..4` as text, trimmed.
    pub vendor: String,
    /// `ownerAuthSet` of `TPM_PT_PERMANENT`.
    pub owner_auth_set: bool,
    /// `endorsementAuthSet`.
    pub endorsement_auth_set: bool,
    /// `lockoutAuthSet`.
    pub lockout_auth_set: bool,
    /// `disableClear`: `TPM2_Clear` is refused until the platform re-enables it.
    pub clear_disabled: bool,
    /// `inLockout`: dictionary-attack protected objects are refused.
    pub in_lockout: bool,
    /// `TPM_PT_LOCKOUT_COUNTER`: authorization failures counted now.
    pub lockout_counter: u32,
    /// `TPM_PT_MAX_AUTH_FAIL`: failures that put the TPM in lockout.
    pub max_tries: u32,
    /// `TPM_PT_LOCKOUT_INTERVAL`: seconds after which one failure is forgotten.
    pub recovery_time_s: u32,
    /// `TPM_PT_LOCKOUT_RECOVERY`: seconds to wait after a failed lockout authorization.
    pub lockout_recovery_s: u32,
}

impl TpmStatus {
    /// Whether any hierarchy auth is set.
    pub fn owned(&self) -> bool {
        self.owner_auth_set || self.endorsement_auth_set || self.lockout_auth_set
    }
}

impl fmt::Display for TpmStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |b: bool| if b { "set" } else { "empty" };
        writeln!(
            f,
            "TPM:               {} ({})",
            self.manufacturer, self.vendor
        )?;
        writeln!(f, "owner auth:        {}", set(self.owner_auth_set))?;
        writeln!(f, "endorsement auth:  {}", set(self.endorsement_auth_set))?;
        writeln!(f, "lockout auth:      {}", set(self.lockout_auth_set))?;
        writeln!(
            f,
            "TPM2_Clear:        {}",
            if self.clear_disabled {
                "disabled (TPM2_ClearControl)"
            } else {
                "allowed with the lockout auth"
            }
        )?;
        writeln!(
            f,
            "dictionary attack: {} of {} failed authorizations counted; one is forgotten \
             every {} s; after a failed lockout auth, wait {} s",
            self.lockout_counter, self.max_tries, self.recovery_time_s, self.lockout_recovery_s
        )?;
        if self.in_lockout {
            writeln!(
                f,
                "IN LOCKOUT:        keys with an auth value are refused; wait, or reset it \
                 with the lockout auth (hardkey tpm lockout reset)"
            )?;
        }
        Ok(())
    }
}

/// `TPM_PT_PERMANENT` bits (TPM 2.0 Part 2, TPMA_PERMANENT).
mod permanent {
    pub(super) const OWNER_AUTH_SET: u32 = 1 << 0;
    pub(super) const ENDORSEMENT_AUTH_SET: u32 = 1 << 1;
    pub(super) const LOCKOUT_AUTH_SET: u32 = 1 << 2;
    pub(super) const DISABLE_CLEAR: u32 = 1 << 8;
    pub(super) const IN_LOCKOUT: u32 = 1 << 9;
}

/// Reads `count` TPM properties from `first` (not tss-esapi's `get_tpm_property`, which
/// caches values that change, like the lockout counter).
fn properties(
    ctx: &mut Context,
    device: &str,
    first: PropertyTag,
    count: u32,
) -> Result<Vec<(PropertyTag, u32)>> {
    let (data, _) = retrying(|| {
        ctx.execute_without_session(|c| {
            c.get_capability(CapabilityType::TpmProperties, first.into(), count)
        })
    })
    .map_err(mapper(device, OP, "TPM2_GetCapability"))?;
    match data {
        CapabilityData::TpmProperties(list) => Ok(list
            .into_iter()
            .map(|p| (p.property(), p.value()))
            .collect()),
        _ => Err(Error::backend(
            device,
            OP,
            "TPM2_GetCapability returned other data than the TPM properties asked for",
        )),
    }
}

/// A 4-character property as text.
fn text(values: &[u32]) -> String {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
    String::from_utf8_lossy(&bytes)
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .to_owned()
}

pub(crate) fn status(ctx: &mut Context, device: &str) -> Result<TpmStatus> {
    let fixed = properties(ctx, device, PropertyTag::Manufacturer, 5)?;
    let variable = properties(ctx, device, PropertyTag::Permanent, 0x12)?;
    let get = |list: &[(PropertyTag, u32)], tag| {
        list.iter()
            .find_map(|&(t, v)| (t == tag).then_some(v))
            .unwrap_or(0)
    };
    let vendor = [
        PropertyTag::VendorString1,
        PropertyTag::VendorString2,
        PropertyTag::VendorString3,
        PropertyTag::VendorString4,
    ]
    .map(|t| get(&fixed, t));
    let permanent = get(&variable, PropertyTag::Permanent);
    Ok(TpmStatus {
        manufacturer: text(&[get(&fixed, PropertyTag::Manufacturer)]),
        vendor: text(&vendor),
        owner_auth_set: permanent & permanent::OWNER_AUTH_SET != 0,
        endorsement_auth_set: permanent & permanent::ENDORSEMENT_AUTH_SET != 0,
        lockout_auth_set: permanent & permanent::LOCKOUT_AUTH_SET != 0,
        clear_disabled: permanent & permanent::DISABLE_CLEAR != 0,
        in_lockout: permanent & permanent::IN_LOCKOUT != 0,
        lockout_counter: get(&variable, PropertyTag::LockoutCounter),
        max_tries: get(&variable, PropertyTag::MaxAuthFail),
        recovery_time_s: get(&variable, PropertyTag::LockoutInterval),
        lockout_recovery_s: get(&variable, PropertyTag::LockoutRecovery),
    })
}

/// Sets the auths of a TPM whose hierarchy auths are all empty, in the order owner,
/// endorsement, lockout (lockout last: if an earlier one fails, the TPM can still be
/// cleared with the empty lockout auth). `None` leaves that hierarchy's auth empty.
///
/// A take-ownership interrupted between its commands (the process killed) leaves the first
/// hierarchies with their new auths and the rest empty. Run again with the same auths, it
/// resumes: each hierarchy already set must hold the auth given (checked by changing it to
/// itself; owner and endorsement authorizations are not dictionary-attack protected, so a
/// wrong one costs nothing), then the rest are set. A TPM whose lockout auth is set, or
/// with any other pattern of set auths, is owned: refused, pointing to change-auth.
pub(crate) fn take_ownership(
    ctx: &mut Context,
    device: &str,
    auths: [(Hierarchy, Option<&Zeroizing<String>>); 3],
) -> Result<()> {
    let status = status(ctx, device)?;
    let is_set = |h: Hierarchy| match h {
        Hierarchy::Owner => status.owner_auth_set,
        Hierarchy::Endorsement => status.endorsement_auth_set,
        Hierarchy::Lockout => status.lockout_auth_set,
    };
    let to_set: Vec<(Hierarchy, &Zeroizing<String>)> = auths
        .iter()
        .filter_map(|&(h, auth)| auth.map(|a| (h, a)))
        .collect();
    let done = to_set.iter().take_while(|(h, _)| is_set(*h)).count();
    let set_count = [Hierarchy::Owner, Hierarchy::Endorsement, Hierarchy::Lockout]
        .into_iter()
        .filter(|h| is_set(*h))
        .count();
    let resumable = !status.lockout_auth_set && done < to_set.len() && set_count == done;
    if status.owned() && !resumable {
        return Err(already_owned(&status, device, ""));
    }
    if to_set.is_empty() {
        return Err(InvalidInput::Config {
            what: "ownership",
            reason: "no auth value given: give at least the owner auth",
        }
        .into());
    }
    for &(hierarchy, auth) in &to_set[..done] {
        change_auth(ctx, device, hierarchy, Some(auth), Some(auth)).map_err(|e| {
            if e.kind() == hardkey_api::ErrorKind::AuthFailed {
                already_owned(&status, device, " (with other values than the ones given)")
            } else {
                e
            }
        })?;
    }
    for &(hierarchy, auth) in &to_set[done..] {
        change_auth(ctx, device, hierarchy, None, Some(auth))?;
    }
    Ok(())
}

/// The refusal to take ownership of an owned TPM, naming the auths set.
fn already_owned(status: &TpmStatus, device: &str, detail: &str) -> Error {
    let set: Vec<&str> = [
        (status.owner_auth_set, "owner"),
        (status.endorsement_auth_set, "endorsement"),
        (status.lockout_auth_set, "lockout"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    InvalidInput::AlreadyExists {
        what: format!("the {} auth on {device}{detail}", set.join("/")),
        remedy: "the TPM is already owned; use change-auth (hardkey tpm change-auth) to \
                 change an auth, or clear the TPM with the lockout auth first",
    }
    .into()
}

/// `TPM2_HierarchyChangeAuth` from `current` to `new` (`None`: empty).
pub(crate) fn change_auth(
    ctx: &mut Context,
    device: &str,
    hierarchy: Hierarchy,
    current: Option<&Zeroizing<String>>,
    new: Option<&Zeroizing<String>>,
) -> Result<()> {
    let target = format!("the {hierarchy} hierarchy of {device}");
    let new = auth_value(new.map(|a| a.as_bytes()))?;
    with_hierarchy(ctx, device, hierarchy, current, true, |ctx, session| {
        retrying(|| {
            ctx.execute_with_session(Some(session), |c| {
                c.hierarchy_change_auth(hierarchy.handle(), new.clone())
            })
        })
        .map_err(mapper(&target, OP, "TPM2_HierarchyChangeAuth"))
    })
}

/// `TPM2_Clear` through the lockout hierarchy: every hierarchy auth empty again, the owner
/// and endorsement seeds new (keys made under them, the SRK included, are gone).
pub(crate) fn clear(
    ctx: &mut Context,
    device: &str,
    lockout_auth: Option<&Zeroizing<String>>,
) -> Result<()> {
    if status(ctx, device)?.clear_disabled {
        return Err(Error::backend(
            device,
            OP,
            "TPM2_Clear is disabled on this TPM (disableClear, set by TPM2_ClearControl): \
             re-enable it with the platform auth (firmware setup, or tpm2_clearcontrol -C p c)",
        ));
    }
    let target = format!("the lockout hierarchy of {device}");
    with_hierarchy(
        ctx,
        device,
        Hierarchy::Lockout,
        lockout_auth,
        false,
        |ctx, session| {
            retrying(|| ctx.execute_with_session(Some(session), |c| c.clear(AuthHandle::Lockout)))
                .map_err(mapper(&target, OP, "TPM2_Clear"))
        },
    )
}

/// Runs `f` with `hierarchy`'s auth set in ESAPI and a salted HMAC session (with the
/// decrypt attribute when `encrypt_parameter`), then flushes the session and sets ESAPI's
/// copy of the auth back to empty, on every path.
fn with_hierarchy<T>(
    ctx: &mut Context,
    device: &str,
    hierarchy: Hierarchy,
    auth: Option<&Zeroizing<String>>,
    encrypt_parameter: bool,
    f: impl FnOnce(&mut Context, AuthSession) -> Result<T>,
) -> Result<T> {
    let auth = auth_value(auth.map(|a| a.as_bytes()))?;
    ctx.tr_set_auth(hierarchy.object(), auth)
        .map_err(mapper(device, OP, "Esys_TR_SetAuth"))?;
    let result = salted_session(ctx, device, encrypt_parameter).and_then(|session| {
        let handle = SessionHandle::from(session).into();
        flushing(ctx, handle, device, OP, "TPM2_FlushContext", |ctx| {
            f(ctx, session)
        })
    });
    // ESAPI keeps the last auth set (after HierarchyChangeAuth, the new one): forget it.
    let _ = ctx.tr_set_auth(hierarchy.object(), Default::default());
    result
}

/// An HMAC session salted with an ephemeral null-hierarchy primary key, `continueSession`
/// set, and the decrypt attribute when `decrypt`.
fn salted_session(ctx: &mut Context, device: &str, decrypt: bool) -> Result<AuthSession> {
    crate::connect::salted_session(
        ctx,
        device,
        OP,
        SessionType::Hmac,
        Encryption {
            decrypt,
            encrypt: false,
        },
    )
}

/// The transient objects loaded in the TPM now (all clients').
pub(crate) fn transient_handles(ctx: &mut Context, device: &str) -> Result<Vec<u32>> {
    crate::connect::list_handles(ctx, device, OP, crate::connect::TRANSIENT)
}

/// The sessions loaded or saved in the TPM now (all clients').
pub(crate) fn session_handles(ctx: &mut Context, device: &str) -> Result<Vec<u32>> {
    let mut out = crate::connect::list_handles(ctx, device, OP, crate::connect::LOADED_SESSIONS)?;
    out.extend(crate::connect::list_handles(
        ctx,
        device,
        OP,
        crate::connect::SAVED_SESSIONS,
    )?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_text_is_trimmed() {
        assert_eq!(text(&[u32::from_be_bytes(*b"IBM\0")]), "IBM");
        assert_eq!(
            text(&[
                u32::from_be_bytes(*b"SW  "),
                u32::from_be_bytes(*b" TPM"),
                0,
                0
            ]),
            "SW   TPM"
        );
    }

    #[test]
    fn status_reads_for_people() {
        let status = TpmStatus {
            manufacturer: "IBM".into(),
            vendor: "SW   TPM".into(),
            owner_auth_set: true,
            endorsement_auth_set: false,
            lockout_auth_set: true,
            clear_disabled: false,
            in_lockout: true,
            lockout_counter: 3,
            max_tries: 3,
            recovery_time_s: 600,
            lockout_recovery_s: 7,
        };
        let text = status.to_string();
        assert!(text.contains("owner auth:        set"), "{text}");
        assert!(text.contains("endorsement auth:  empty"), "{text}");
        assert!(text.contains("3 of 3 failed"), "{text}");
        assert!(text.contains("IN LOCKOUT"), "{text}");
        assert!(status.owned());
    }
}
