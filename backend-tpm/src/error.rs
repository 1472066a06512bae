//! TPM and TSS response codes mapped to hardkey error kinds, with what to do about each.
//!
//! A TSS2 return code carries its layer in bits 16..24: 0 for the TPM itself, then the
//! software stack's layers (ESAPI, SAPI, marshalling, TCTI, resource manager). Anything from
//! below the TPM means the ESAPI context can no longer be trusted (after a TCTI or
//! unmarshalling error every later call fails with a bad-sequence error), so it maps to
//! [`Error::DeviceUnavailable`] and the pool rebuilds the context.

use bitfield::BitRange;
use hardkey_api::{Error, Operation};
use tss_esapi::constants::response_code::Tss2ResponseCode;

/// A tss-esapi error with the TPM command that returned it: the cause kept inside
/// [`hardkey_api::Error`] (downcast the source to inspect it).
#[derive(Debug)]
#[non_exhaustive]
pub struct TpmError {
    command: &'static str,
    error: tss_esapi::Error,
}

impl TpmError {
    pub(crate) fn new(command: &'static str, error: tss_esapi::Error) -> Self {
        Self { command, error }
    }

    /// The TPM command (`TPM2_Sign`, `TPM2_Load`, ...).
    pub fn command(&self) -> &'static str {
        self.command
    }

    /// What tss-esapi returned.
    pub fn tss_error(&self) -> &tss_esapi::Error {
        &self.error
    }
}

impl std::fmt::Display for TpmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match rc_of(&self.error) {
            Some(rc) => write!(f, "{} returned {} ({rc:#x})", self.command, rc_name(rc)),
            None => write!(f, "{}: {}", self.command, self.error),
        }
    }
}

impl std::error::Error for TpmError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Why hardkey will not use what it found in the TPM as a parent: the cause kept inside
/// [`hardkey_api::Error::Backend`] (downcast the source to inspect it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TpmTrustError {
    /// The persistent SRK is not the key hardkey's SRK template makes from the owner seed.
    #[error(
        "the object at persistent handle 0x81000001 on {device} is not the storage root key \
         hardkey's template derives from the owner seed (its name is {found}, the template's \
         {expected}): someone else put it there, and keys made or sealed under it could be \
         unwrapped by whoever made it. Remove it (tpm2_evictcontrol -C o -c 0x81000001) to let \
         hardkey use the standard SRK, or, if you trust it, pin its name in hardkey's \
         configuration ([tpm] srk-name = \"{found}\")"
    )]
    UntrustedSrk {
        /// The TPM.
        device: String,
        /// The name of the object found there (hex).
        found: String,
        /// The name of the template primary (hex).
        expected: String,
    },
    /// The persistent SRK's name differs from the one pinned in the configuration.
    #[error(
        "the object at persistent handle 0x81000001 on {device} has name {found}, not the \
         pinned {pinned}: the SRK was replaced (the TPM cleared and re-provisioned, or \
         someone swapped it). Check what is there before you pin the new name"
    )]
    PinnedSrkMismatch {
        /// The TPM.
        device: String,
        /// The name found (hex).
        found: String,
        /// The pinned name (hex).
        pinned: String,
    },
    /// Verifying the persistent SRK needs the owner auth, which was not given or was wrong.
    #[error(
        "the storage root key at 0x81000001 on {device} (name {found}) cannot be verified \
         without the owner auth: give it (--owner-auth-file or HARDKEY_OWNER_AUTH), or pin the \
         SRK's name once you trust it ([tpm] srk-name = \"{found}\" in hardkey's \
         configuration)"
    )]
    SrkNeedsOwnerAuth {
        /// The TPM.
        device: String,
        /// The name found (hex).
        found: String,
        /// Why making the template primary failed.
        #[source]
        source: Box<Error>,
    },
}

impl From<TpmTrustError> for Error {
    fn from(e: TpmTrustError) -> Self {
        let device = match &e {
            TpmTrustError::UntrustedSrk { device, .. }
            | TpmTrustError::PinnedSrkMismatch { device, .. }
            | TpmTrustError::SrkNeedsOwnerAuth { device, .. } => device.clone(),
        };
        Error::backend(device, Operation::Open, e)
    }
}

/// Why sealed data would not unseal, when the TPM's answer alone would not say: the cause kept
/// inside [`hardkey_api::Error::Backend`] (downcast the source to inspect it).
#[derive(Debug)]
#[non_exhaustive]
pub enum SealError {
    /// The PCR policy failed: the selected PCRs no longer hold the values they had when the
    /// data was sealed.
    PcrChanged {
        /// The PCR selection of the policy (`sha256:0,7`).
        pcrs: String,
        /// The TPM's answer (`TPM2_PolicyPCR` returned `TPM_RC_VALUE`, or `TPM2_Unseal`
        /// `TPM_RC_POLICY_FAIL` / `TPM_RC_PCR_CHANGED`).
        cause: TpmError,
    },
    /// The sealed object does not load under this TPM's storage root key: it was sealed on
    /// another TPM, or before this TPM was cleared.
    OtherParent {
        /// The TPM's answer to `TPM2_Load`.
        cause: TpmError,
    },
}

impl std::fmt::Display for SealError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PcrChanged { pcrs, cause } => write!(
                f,
                "the PCR values changed since sealing ({pcrs}; {cause}): the data unseals only \
                 while those PCRs hold the values they had when it was sealed; boot the same \
                 software again, or seal the data anew in the current state"
            ),
            Self::OtherParent { cause } => write!(
                f,
                "the sealed data does not belong to this TPM's storage root key ({cause}): it \
                 was sealed on another TPM or before this TPM was cleared, and cannot be \
                 unsealed here"
            ),
        }
    }
}

impl std::error::Error for SealError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::PcrChanged { cause, .. } | Self::OtherParent { cause } => Some(cause),
        }
    }
}

/// A key file whose private part this TPM's parent key cannot unwrap (`TPM_RC_INTEGRITY` on
/// `TPM2_Load`): the cause kept inside [`hardkey_api::Error::Backend`].
#[derive(Debug)]
#[non_exhaustive]
pub struct ForeignKeyFile {
    cause: TpmError,
}

impl ForeignKeyFile {
    /// The TPM's answer to `TPM2_Load`.
    pub fn cause(&self) -> &TpmError {
        &self.cause
    }
}

impl std::fmt::Display for ForeignKeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the key file does not belong to this TPM ({}): it was made on another TPM, or on \
             this one before it was cleared (a clear replaces the owner seed its parent key \
             comes from), and cannot be loaded here; make a new key on this TPM",
            self.cause
        )
    }
}

impl std::error::Error for ForeignKeyFile {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.cause)
    }
}

/// Maps an error of `TPM2_Load` on a key file: `TPM_RC_INTEGRITY` says the file is another
/// TPM's; the rest as [`map`] does.
pub(crate) fn map_key_load(device: &str, op: Operation, error: tss_esapi::Error) -> Error {
    match rc_of(&error) {
        Some(rc) if is_integrity(rc) => Error::backend(
            device,
            op,
            ForeignKeyFile {
                cause: TpmError::new("TPM2_Load", error),
            },
        ),
        _ => map(device, op, "TPM2_Load", error),
    }
}

/// `TPM_RC_VALUE` (format one, any parameter): on `TPM2_PolicyPCR` with a PCR digest, the
/// current PCR values do not match it.
pub(crate) fn is_value(rc: u32) -> bool {
    format_one(rc) == Some(0x04)
}

/// `TPM_RC_POLICY_FAIL` or `TPM_RC_PCR_CHANGED`: a policy session's digest does not match,
/// or the PCRs changed while the session ran.
pub(crate) fn is_policy_failure(rc: u32) -> bool {
    format_one(rc) == Some(0x1d) || format_zero(rc) == Some(0x128)
}

/// `TPM_RC_INTEGRITY` (format one): a blob was not made by this parent.
pub(crate) fn is_integrity(rc: u32) -> bool {
    format_one(rc) == Some(0x1f)
}

/// The raw TSS2 return code of an error from the stack (not tss-esapi's own wrapper errors).
pub(crate) fn rc_of(e: &tss_esapi::Error) -> Option<u32> {
    match e {
        tss_esapi::Error::Tss2Error(code) => match code {
            Tss2ResponseCode::Success => Some(0),
            Tss2ResponseCode::FormatZero(rc) => Some(rc.bit_range(31, 0)),
            Tss2ResponseCode::FormatOne(rc) => Some(rc.bit_range(31, 0)),
        },
        tss_esapi::Error::WrapperError(_) => None,
    }
}

/// The layer of a TSS2 return code (bits 16..24).
const fn layer(rc: u32) -> u32 {
    (rc >> 16) & 0xff
}

/// TPM-layer response codes hardkey treats specially (TPM 2.0 Part 2, 6.6.3).
pub(crate) mod rc {
    /// `TPM_RC_INITIALIZE`: the TPM was reset and not started (power cycle without startup).
    pub(crate) const INITIALIZE: u32 = 0x100;
    /// `TPM_RC_FAILURE`: the TPM is in failure mode.
    pub(crate) const FAILURE: u32 = 0x101;
    /// `TPM_RC_OBJECT_MEMORY`: no transient object slot free.
    pub(crate) const OBJECT_MEMORY: u32 = 0x902;
    /// `TPM_RC_SESSION_MEMORY`: no session slot free.
    pub(crate) const SESSION_MEMORY: u32 = 0x903;
    /// `TPM_RC_OBJECT_HANDLES`: no object handle free.
    pub(crate) const OBJECT_HANDLES: u32 = 0x904;
    /// `TPM_RC_SESSION_HANDLES`: no session handle free (too many active sessions, saved
    /// ones included).
    pub(crate) const SESSION_HANDLES: u32 = 0x905;
    /// `TPM_RC_YIELDED`: the TPM suspended the command; send it again.
    pub(crate) const YIELDED: u32 = 0x908;
    /// `TPM_RC_TESTING`: the TPM is self-testing; send it again.
    pub(crate) const TESTING: u32 = 0x90A;
    /// `TPM_RC_NV_RATE`: NV writes are rate limited; send it again later.
    pub(crate) const NV_RATE: u32 = 0x920;
    /// `TPM_RC_LOCKOUT`: dictionary-attack lockout.
    pub(crate) const LOCKOUT: u32 = 0x921;
    /// `TPM_RC_RETRY`: the TPM was busy; send it again.
    pub(crate) const RETRY: u32 = 0x922;
    /// `TPM_RC_NV_UNAVAILABLE`.
    pub(crate) const NV_UNAVAILABLE: u32 = 0x923;
}

/// The format-one error number (bits 0..6) when `rc` is a TPM-layer format-one code.
fn format_one(rc: u32) -> Option<u32> {
    (layer(rc) == 0 && rc & 0x80 != 0).then_some(rc & 0x3f)
}

/// The format-zero code (without handle/parameter numbers) of a TPM-layer code.
fn format_zero(rc: u32) -> Option<u32> {
    (layer(rc) == 0 && rc & 0x80 == 0).then_some(rc & 0xfff)
}

/// `TPM2_RSA_Decrypt` refusing the ciphertext itself: `TPM_RC_VALUE` (bad padding, as the
/// specification has it), or `TPM_RC_FAILURE`, which libtpms (swtpm) returns when its
/// OpenSSL decryption fails, without entering failure mode. A TPM truly in failure mode is
/// then reported as a bad ciphertext once; the next command finds it out.
pub(crate) fn is_rejected_ciphertext(rc: u32) -> bool {
    matches!(format_one(rc), Some(0x04)) || format_zero(rc) == Some(rc::FAILURE)
}

/// `TPM_RC_AUTH_FAIL` or `TPM_RC_BAD_AUTH`: a wrong auth value (counts against DA).
pub(crate) fn is_auth_failure(rc: u32) -> bool {
    matches!(format_one(rc), Some(0x0e | 0x22))
}

/// `TPM_RC_INTEGRITY`/`TPM_RC_HANDLE`/... on `TPM2_ContextLoad`: the saved context died
/// (TPM reset or restart).
pub(crate) fn is_stale_context(rc: u32) -> bool {
    matches!(format_one(rc), Some(0x1f | 0x0b | 0x04 | 0x15))
        || matches!(format_zero(rc), Some(0x150 | 0x14e))
}

/// `TPM_RC_REFERENCE_H0` or `TPM_RC_HANDLE` on the first handle: the object we think is
/// loaded is not (flushed behind our back).
pub(crate) fn is_unloaded_handle(rc: u32) -> bool {
    format_zero(rc) == Some(0x910) || rc & 0xfff == 0x18b
}

/// Whether the command should simply be sent again (the TPM said so).
pub(crate) fn is_transient(rc: u32) -> bool {
    matches!(
        format_zero(rc),
        Some(rc::YIELDED | rc::TESTING | rc::RETRY | rc::NV_RATE)
    )
}

/// `TPM_RC_OBJECT_MEMORY`: recovered by flushing a loaded object, never surfaced.
pub(crate) fn is_object_memory(rc: u32) -> bool {
    format_zero(rc) == Some(rc::OBJECT_MEMORY)
}

/// Out of object or session slots or handles, for now.
pub(crate) fn is_exhausted(rc: u32) -> bool {
    exhausted(rc).is_some()
}

/// `TPM_RC_REFERENCE_S0..S6`: an authorization session we started is not loaded any more
/// (the TPM was reset since, or someone flushed it).
pub(crate) fn is_unloaded_session(rc: u32) -> bool {
    matches!(format_zero(rc), Some(0x918..=0x91e))
}

/// Whether the ESAPI context is unusable after this code: anything below the TPM (TCTI,
/// marshalling, ESAPI sequence), a TPM that needs a restart, or a session of ours that the
/// TPM no longer has (it was reset behind the connection's back).
pub(crate) fn is_context_lost(rc: u32) -> bool {
    match layer(rc) {
        0 => {
            matches!(format_zero(rc), Some(rc::INITIALIZE | rc::FAILURE)) || is_unloaded_session(rc)
        }
        // ESAPI (7), SAPI (8), MU (9), TCTI (10), resource manager (11, 12: its TPM side).
        7..=12 => !is_esys_input_error(rc),
        _ => false,
    }
}

/// ESAPI codes that mean "the caller passed something wrong" rather than "the stack broke".
fn is_esys_input_error(rc: u32) -> bool {
    // TSS2_BASE_RC_: NOT_IMPLEMENTED 2, BAD_REFERENCE 5, BAD_VALUE 11, NO_DECRYPT_PARAM 14,
    // NO_ENCRYPT_PARAM 15, BAD_SIZE 16, BAD_TR 24, MULTIPLE_DECRYPT/ENCRYPT_SESSIONS 25/26.
    layer(rc) == 7 && matches!(rc & 0xffff, 2 | 5 | 11 | 14 | 15 | 16 | 24 | 25 | 26)
}

/// A readable name for common codes.
pub(crate) fn rc_name(rc: u32) -> &'static str {
    if let Some(n) = format_one(rc) {
        return match n {
            0x01 => "TPM_RC_ASYMMETRIC",
            0x02 => "TPM_RC_ATTRIBUTES",
            0x03 => "TPM_RC_HASH",
            0x04 => "TPM_RC_VALUE",
            0x05 => "TPM_RC_HIERARCHY",
            0x07 => "TPM_RC_KEY_SIZE",
            0x0a => "TPM_RC_TYPE",
            0x0b => "TPM_RC_HANDLE",
            0x0e => "TPM_RC_AUTH_FAIL",
            0x12 => "TPM_RC_SCHEME",
            0x15 => "TPM_RC_SIZE",
            0x1d => "TPM_RC_POLICY_FAIL",
            0x1f => "TPM_RC_INTEGRITY",
            0x22 => "TPM_RC_BAD_AUTH",
            0x26 => "TPM_RC_CURVE",
            _ => "a TPM format-one error",
        };
    }
    if let Some(code) = format_zero(rc) {
        return match code {
            rc::INITIALIZE => "TPM_RC_INITIALIZE",
            rc::FAILURE => "TPM_RC_FAILURE",
            0x126 => "TPM_RC_POLICY",
            0x127 => "TPM_RC_PCR",
            0x128 => "TPM_RC_PCR_CHANGED",
            0x14b => "TPM_RC_NV_SPACE",
            0x14c => "TPM_RC_NV_DEFINED",
            0x143 => "TPM_RC_COMMAND_CODE",
            rc::OBJECT_MEMORY => "TPM_RC_OBJECT_MEMORY",
            rc::SESSION_MEMORY => "TPM_RC_SESSION_MEMORY",
            rc::OBJECT_HANDLES => "TPM_RC_OBJECT_HANDLES",
            rc::SESSION_HANDLES => "TPM_RC_SESSION_HANDLES",
            rc::YIELDED => "TPM_RC_YIELDED",
            rc::TESTING => "TPM_RC_TESTING",
            rc::NV_RATE => "TPM_RC_NV_RATE",
            rc::LOCKOUT => "TPM_RC_LOCKOUT",
            rc::RETRY => "TPM_RC_RETRY",
            rc::NV_UNAVAILABLE => "TPM_RC_NV_UNAVAILABLE",
            _ => "a TPM error",
        };
    }
    match layer(rc) {
        7 => "an ESAPI error",
        8 => "a SAPI error",
        9 => "a marshalling error",
        10 => "a TCTI (connection) error",
        11 | 12 => "a resource manager error",
        _ => "a TSS error",
    }
}

/// Maps an error of `command` during `op` on `device` to a hardkey error.
pub(crate) fn map(
    device: &str,
    op: Operation,
    command: &'static str,
    error: tss_esapi::Error,
) -> Error {
    let cause = TpmError::new(command, error);
    let Some(rc) = rc_of(&cause.error) else {
        return Error::backend(device, op, cause);
    };
    if is_auth_failure(rc) {
        return Error::AuthFailed {
            target: device.to_owned(),
            source: cause.into(),
        };
    }
    if format_zero(rc) == Some(rc::LOCKOUT) {
        return Error::PinLocked {
            target: device.to_owned(),
            remedy: "the TPM is in dictionary-attack lockout; wait for the recovery time \
                     (hardkey tpm status) or reset it with the lockout auth \
                     (hardkey tpm lockout reset)",
            source: Some(cause.into()),
        };
    }
    if let Some(resource) = exhausted(rc) {
        let shared = device
            .strip_prefix("TPM at ")
            .is_some_and(crate::connect::has_resource_manager);
        return Error::Exhausted {
            device: device.to_owned(),
            resource,
            remedy: exhausted_remedy(shared),
            source: cause.into(),
        };
    }
    if is_context_lost(rc) {
        return Error::device_unavailable(device, cause);
    }
    Error::backend(device, op, cause)
}

/// What ran out, for `TPM_RC_OBJECT_MEMORY`, `SESSION_MEMORY`, `OBJECT_HANDLES` and
/// `SESSION_HANDLES`.
fn exhausted(rc: u32) -> Option<&'static str> {
    match format_zero(rc) {
        Some(rc::OBJECT_MEMORY) => Some("transient object slots"),
        Some(rc::SESSION_MEMORY) => Some("session slots"),
        Some(rc::OBJECT_HANDLES) => Some("object handles"),
        Some(rc::SESSION_HANDLES) => Some("session handles"),
        _ => None,
    }
}

/// What frees TPM slots: behind a resource manager, other clients finishing; on a raw TPM,
/// flushing what killed processes left.
fn exhausted_remedy(resource_manager: bool) -> String {
    if resource_manager {
        "other clients of the resource manager hold them; retry when they finish".to_owned()
    } else {
        "other processes hold them, and this TPM has no resource manager: processes using it \
         at once compete for its few slots, and whatever a killed process had loaded stays \
         there until `hardkey tpm flush` frees it (every client's: stop other TPM users \
         first). A resource manager (the kernel's device:/dev/tpmrm0, or tpm2-abrmd with \
         tcti=tabrmd) shares the TPM between processes and frees a dead client's handles"
            .to_owned()
    }
}

/// The remedy of a lockout met by a command authorized with the lockout auth itself.
pub(crate) const LOCKOUT_AUTH_LOCKED: &str = "a wrong lockout auth locks the lockout \
    hierarchy itself for its lockout recovery time (hardkey tpm status shows it; only time, \
    or a TPM restart on some TPMs, ends it), and after that only the right lockout auth resets \
    the dictionary-attack lockout; without it, wait: each failure is forgotten after the \
    recovery time";

/// A closure for `map_err`: `ctx.sign(..).map_err(mapper(&name, Operation::Sign, "TPM2_Sign"))`.
pub(crate) fn mapper<'a>(
    device: &'a str,
    op: Operation,
    command: &'static str,
) -> impl FnOnce(tss_esapi::Error) -> Error + 'a {
    move |e| map(device, op, command, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_codes() {
        // TPM_RC_AUTH_FAIL on session 1 (0x98e), TPM_RC_BAD_AUTH on session 1 (0x9a2).
        assert!(is_auth_failure(0x98e));
        assert!(is_auth_failure(0x9a2));
        assert!(!is_auth_failure(0x902));
        assert!(is_object_memory(0x902));
        assert!(is_transient(0x922) && is_transient(0x908) && is_transient(0x90a));
        assert!(!is_transient(0x921));
        // TCTI IO error, ESAPI bad sequence: the context is gone.
        assert!(is_context_lost(0x000a_000a));
        assert!(is_context_lost(0x0007_0007));
        assert!(is_context_lost(0x100));
        // TPM_RC_REFERENCE_S0/S6: our session is gone (a TPM reset); REFERENCE_H0 (an
        // object flushed behind our back) is reloaded instead.
        assert!(is_context_lost(0x918) && is_context_lost(0x91e));
        assert!(!is_context_lost(0x910));
        // A bad value passed to ESAPI is the caller's, not the connection's.
        assert!(!is_context_lost(0x0007_000b));
        assert!(!is_context_lost(0x1df));
        assert_eq!(rc_name(0x9a2), "TPM_RC_BAD_AUTH");
        assert_eq!(rc_name(0x921), "TPM_RC_LOCKOUT");
        assert_eq!(rc_name(0x000a_000a), "a TCTI (connection) error");
        // TPM_RC_VALUE on parameter 1 (PolicyPCR's pcrDigest), TPM_RC_POLICY_FAIL on
        // session 1, TPM_RC_PCR_CHANGED, TPM_RC_INTEGRITY on parameter 1.
        assert!(is_value(0x1c4) && !is_value(0x1c5));
        assert!(is_policy_failure(0x99d) && is_policy_failure(0x128));
        assert!(!is_policy_failure(0x98e));
        assert!(is_integrity(0x19f));
    }

    #[test]
    fn out_of_slots_names_the_remedy() {
        let e = |rc| {
            tss_esapi::Error::Tss2Error(
                tss_esapi::constants::response_code::Tss2ResponseCode::from(rc),
            )
        };
        let raw = map(
            "TPM at swtpm:port=1",
            Operation::Sign,
            "TPM2_Load",
            e(0x903),
        );
        assert_eq!(raw.kind(), hardkey_api::ErrorKind::Exhausted, "{raw}");
        assert!(raw.is_retryable());
        let text = raw.to_string();
        assert!(
            text.contains("session slots") && text.contains("hardkey tpm flush"),
            "{text}"
        );
        let rm = map(
            "TPM at tabrmd:bus_type=session",
            Operation::Sign,
            "TPM2_Load",
            e(0x902),
        );
        let text = rm.to_string();
        assert!(text.contains("transient object slots"), "{text}");
        assert!(!text.contains("hardkey tpm flush"), "{text}");
    }
}
