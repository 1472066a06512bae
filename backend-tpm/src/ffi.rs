//! What tss-esapi does not wrap, done by hand.
//!
//! **Close-on-exec for the TCTI's descriptors.** The TSS opens its TPM device node, its
//! mssim sockets and the socket tpm2-abrmd passes without `O_CLOEXEC`/`SOCK_CLOEXEC`, so a
//! child process started later would inherit the connection to the TPM and keep it open (a
//! TPM that serves one connection at a time then waits for that child to exit).
//! [`close_on_exec_since`] marks every descriptor opened while a context was being set up.
//! (The swtpm TCTI opens a new socket for each command and closes it after the response; a
//! child started during a command still inherits that one, which nothing outside the TSS can
//! prevent: processes that start children while they use swtpm should reach it through
//! tpm2-abrmd.)
//!
//! **Dictionary-attack administration** (`TPM2_DictionaryAttackLockReset`,
//! `TPM2_DictionaryAttackParameters`) through the ESAPI C library directly.
//!
//! tss-esapi 7 wraps neither command and does not expose its `ESYS_CONTEXT`, so this module
//! opens its own: TCTI loader, ESAPI context, a primary key made for the purpose in the null
//! hierarchy (the salt key, as everywhere in hardkey), an HMAC session salted with it and
//! authorizing the lockout hierarchy (its auth value keys the HMAC and never crosses the bus;
//! the salt keeps a recording of the bus from testing guesses of it offline), the command,
//! then everything released in reverse order by guards, on every path. The lockout auth is
//! copied into a `TPM2B_AUTH` that is zeroized on drop, and ESAPI's own copy is overwritten
//! with an empty value before the context is finalized.
//!
//! The crate's only unsafe code lives here; every block says why it is sound.
#![allow(
    unsafe_code,
    reason = "FFI to tss2-esys for two TPM commands tss-esapi 7 does not wrap, and fcntl on \
              descriptors the TSS opened"
)]

use std::os::fd::{BorrowedFd, RawFd};

use std::ffi::CString;
use std::ptr::{null, null_mut};

use hardkey_api::{Error, InvalidInput, Operation, Result};
use tss_esapi::constants::response_code::Tss2ResponseCode;
use tss_esapi::constants::tss::{
    TPM2_ALG_NULL, TPM2_ALG_SHA256, TPM2_SE_HMAC, TPMA_SESSION_CONTINUESESSION,
};
use tss_esapi_sys::{
    ESYS_CONTEXT, ESYS_TR, ESYS_TR_NONE, ESYS_TR_PASSWORD, ESYS_TR_RH_LOCKOUT, ESYS_TR_RH_NULL,
    Esys_CreatePrimary, Esys_DictionaryAttackLockReset, Esys_DictionaryAttackParameters,
    Esys_Finalize, Esys_FlushContext, Esys_Initialize, Esys_StartAuthSession, Esys_TR_SetAuth,
    Esys_TRSess_SetAttributes, TPM2B_AUTH, TPM2B_DATA, TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE,
    TPML_PCR_SELECTION, TPMT_SYM_DEF, TPMU_SYM_KEY_BITS, TPMU_SYM_MODE, TSS2_RC, TSS2_TCTI_CONTEXT,
    Tss2_TctiLdr_Finalize, Tss2_TctiLdr_Initialize,
};
use zeroize::{Zeroize, Zeroizing};

use crate::connect::{auth_value, retrying};
use crate::error::{TpmError, mapper};

const OP: Operation = Operation::Admin;

/// The descriptors open in this process now (`/proc/self/fd`), sorted.
pub(crate) fn open_descriptors() -> Vec<RawFd> {
    let mut fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    fds
}

/// Whether descriptor `fd` is close-on-exec, from `/proc/self/fdinfo` (`None`: closed).
pub(crate) fn is_close_on_exec(fd: RawFd) -> Option<bool> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())?;
    // O_CLOEXEC, as fdinfo shows it (octal 02000000 on Linux).
    Some(flags & 0o2_000_000 != 0)
}

/// Marks close-on-exec every descriptor opened since `before` (a listing by
/// [`open_descriptors`]) that is not. Run right after the TSS set up a TCTI; a descriptor
/// another thread opened meanwhile gets the flag too, which only stops it leaking into a
/// child as well.
pub(crate) fn close_on_exec_since(before: &[RawFd]) {
    for fd in open_descriptors() {
        if before.binary_search(&fd).is_ok() || is_close_on_exec(fd) != Some(false) {
            continue;
        }
        // SAFETY: `fd` was listed as open a moment ago; the borrow lasts for this one fcntl
        // call. Should another thread close it meanwhile, fcntl fails with EBADF (ignored),
        // or sets the flag on whatever reused the number: harmless either way, nothing is
        // read or written through the descriptor.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = nix::fcntl::fcntl(
            borrowed,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
}

/// A dictionary-attack command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DaCommand {
    /// `TPM2_DictionaryAttackLockReset`: failed tries back to 0, lockout ended.
    LockReset,
    /// `TPM2_DictionaryAttackParameters`.
    Parameters {
        /// `newMaxTries`.
        max_tries: u32,
        /// `newRecoveryTime`, seconds (0 disables dictionary-attack protection).
        recovery_time_s: u32,
        /// `lockoutRecovery`, seconds.
        lockout_recovery_s: u32,
    },
}

impl DaCommand {
    fn name(self) -> &'static str {
        match self {
            Self::LockReset => "TPM2_DictionaryAttackLockReset",
            Self::Parameters { .. } => "TPM2_DictionaryAttackParameters",
        }
    }
}

/// Runs `command` on the TPM at `tcti`, authorized by the lockout hierarchy. Opens its own
/// connection: the caller must not hold another one to a TPM that serves one at a time
/// (swtpm, `/dev/tpm0`).
pub(crate) fn run(
    tcti: &str,
    device: &str,
    lockout_auth: Option<&Zeroizing<String>>,
    command: DaCommand,
) -> Result<()> {
    let conf = CString::new(tcti).map_err(|_| InvalidInput::Config {
        what: "TCTI",
        reason: "contains a NUL byte",
    })?;
    let auth = AuthValue::new(lockout_auth)?;
    let mut esys = Esys::open(&conf).map_err(|error| {
        Error::device_unavailable(
            device,
            TpmError::new("Esys_Initialize (opening the TCTI)", error),
        )
    })?;
    esys.set_lockout_auth(&auth)
        .map_err(mapper(device, OP, "Esys_TR_SetAuth"))?;
    let template = crate::connect::srk_template()
        .and_then(TPM2B_PUBLIC::try_from)
        .map_err(mapper(device, OP, "salt key template"))?;
    let salt_key = retrying(|| esys.salt_key(&template)).map_err(mapper(
        device,
        OP,
        "TPM2_CreatePrimary (null hierarchy salt key)",
    ))?;
    let session =
        esys.hmac_session(&salt_key)
            .map_err(mapper(device, OP, "TPM2_StartAuthSession"))?;
    // The session lives on without its salt key.
    drop(salt_key);
    retrying(|| session.send(command))
        .map_err(mapper(device, OP, command.name()))
        .map_err(|e| match e {
            // The lockout the error reports is the lockout hierarchy's own: the command that
            // resets lockouts is the one that failed, so say what ends this one.
            Error::PinLocked { target, source, .. } => Error::PinLocked {
                target,
                remedy: crate::error::LOCKOUT_AUTH_LOCKED,
                source,
            },
            other => other,
        })
}

/// A TSS2 return code as tss-esapi's error.
fn check(rc: TSS2_RC) -> tss_esapi::Result<()> {
    match rc {
        0 => Ok(()),
        rc => Err(tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(rc))),
    }
}

/// An auth value in the C structure, zeroized on drop.
struct AuthValue(TPM2B_AUTH);

impl AuthValue {
    fn empty() -> Self {
        Self(TPM2B_AUTH {
            size: 0,
            buffer: [0; 64],
        })
    }

    fn new(secret: Option<&Zeroizing<String>>) -> Result<Self> {
        // Checks the length; its buffer is zeroized on drop.
        let auth = auth_value(secret.map(|s| s.as_bytes()))?;
        let bytes = auth.value();
        let mut out = Self::empty();
        out.0.buffer[..bytes.len()].copy_from_slice(bytes);
        out.0.size = bytes.len() as u16;
        Ok(out)
    }
}

impl Drop for AuthValue {
    fn drop(&mut self) {
        self.0.buffer.zeroize();
        self.0.size = 0;
    }
}

/// A TCTI and the ESAPI context on it, finalized (context first) on drop.
struct Esys {
    tcti: *mut TSS2_TCTI_CONTEXT,
    ctx: *mut ESYS_CONTEXT,
    auth_set: bool,
}

impl Esys {
    fn open(conf: &CString) -> tss_esapi::Result<Self> {
        let before = open_descriptors();
        let mut esys = Self {
            tcti: null_mut(),
            ctx: null_mut(),
            auth_set: false,
        };
        // SAFETY: `conf` is a NUL-terminated string that outlives the call; `esys.tcti` is a
        // valid out-pointer. On success the loader allocates a TCTI context that `esys`
        // owns from here and releases in `Drop`; on failure it stays null.
        check(unsafe { Tss2_TctiLdr_Initialize(conf.as_ptr(), &mut esys.tcti) })?;
        // SAFETY: `esys.tcti` is the live TCTI context just initialized (it outlives the
        // ESAPI context: `Drop` finalizes the context first); `esys.ctx` is a valid
        // out-pointer; a null ABI version skips the version check. On failure `ctx` stays
        // null and `Drop` releases only the TCTI.
        check(unsafe { Esys_Initialize(&mut esys.ctx, esys.tcti, null_mut()) })?;
        close_on_exec_since(&before);
        Ok(esys)
    }

    /// Sets the auth value ESAPI uses for the lockout hierarchy.
    fn set_lockout_auth(&mut self, auth: &AuthValue) -> tss_esapi::Result<()> {
        self.auth_set = true;
        // SAFETY: `self.ctx` is a live ESAPI context (`open` succeeded); `auth.0` is a valid
        // TPM2B_AUTH that ESAPI copies during the call.
        check(unsafe { Esys_TR_SetAuth(self.ctx, ESYS_TR_RH_LOCKOUT, &auth.0) })
    }

    /// A primary key in the null hierarchy (no auth needed) from `template`, flushed when
    /// the guard drops.
    fn salt_key(&self, template: &TPM2B_PUBLIC) -> tss_esapi::Result<Object<'_>> {
        let sensitive = TPM2B_SENSITIVE_CREATE::default();
        let outside = TPM2B_DATA::default();
        let pcrs = TPML_PCR_SELECTION::default();
        let mut handle: ESYS_TR = ESYS_TR_NONE;
        // SAFETY: `self.ctx` is a live ESAPI context; every input points to a valid,
        // initialized structure that outlives the call (an empty sensitive area, outside info
        // and PCR selection: all-zero is their empty value); `handle` is a valid out-pointer;
        // the optional outputs are null, which ESAPI accepts as "not wanted". The null
        // hierarchy's auth is always empty, so the password session carries nothing.
        check(unsafe {
            Esys_CreatePrimary(
                self.ctx,
                ESYS_TR_RH_NULL,
                ESYS_TR_PASSWORD,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                &sensitive,
                template,
                &outside,
                &pcrs,
                &mut handle,
                null_mut(),
                null_mut(),
                null_mut(),
                null_mut(),
            )
        })?;
        Ok(Object { esys: self, handle })
    }

    /// An HMAC session salted with `salt_key`, without parameter encryption (the DA commands
    /// have no secret parameters), flushed when the guard drops.
    fn hmac_session(&self, salt_key: &Object<'_>) -> tss_esapi::Result<Session<'_>> {
        let symmetric = TPMT_SYM_DEF {
            algorithm: TPM2_ALG_NULL,
            keyBits: TPMU_SYM_KEY_BITS { sym: 0 },
            mode: TPMU_SYM_MODE { sym: TPM2_ALG_NULL },
        };
        let mut handle: ESYS_TR = ESYS_TR_NONE;
        // SAFETY: `self.ctx` is a live ESAPI context; `salt_key.handle` is a loaded object of
        // it (the guard is borrowed, so not yet flushed); `symmetric` and `handle` are valid
        // for the call; a null nonceCaller makes ESAPI generate the nonce; ESYS_TR_NONE for
        // the bind entity and sessions is what ESAPI expects for "none".
        check(unsafe {
            Esys_StartAuthSession(
                self.ctx,
                salt_key.handle,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                null(),
                TPM2_SE_HMAC,
                &symmetric,
                TPM2_ALG_SHA256,
                &mut handle,
            )
        })?;
        // From here the guard flushes the session on every path.
        let session = Session { esys: self, handle };
        // SAFETY: `self.ctx` is live and `handle` is the session it just started.
        check(unsafe {
            Esys_TRSess_SetAttributes(
                self.ctx,
                handle,
                TPMA_SESSION_CONTINUESESSION,
                TPMA_SESSION_CONTINUESESSION,
            )
        })?;
        Ok(session)
    }
}

impl Drop for Esys {
    fn drop(&mut self) {
        if !self.ctx.is_null() {
            if self.auth_set {
                let empty = AuthValue::empty();
                // SAFETY: `self.ctx` is live until finalized below; `empty.0` is valid for
                // the call. Overwrites ESAPI's copy of the lockout auth before it is freed.
                let _ = unsafe { Esys_TR_SetAuth(self.ctx, ESYS_TR_RH_LOCKOUT, &empty.0) };
            }
            // SAFETY: `self.ctx` was initialized by Esys_Initialize and is finalized once
            // (Esys_Finalize sets it to null); no session guard borrowing `self` is alive.
            unsafe { Esys_Finalize(&mut self.ctx) };
        }
        if !self.tcti.is_null() {
            // SAFETY: `self.tcti` came from Tss2_TctiLdr_Initialize, is finalized once
            // (the call sets it to null), and the ESAPI context using it is already gone.
            unsafe { Tss2_TctiLdr_Finalize(&mut self.tcti) };
        }
    }
}

/// A loaded object, flushed on drop. Borrows the context so it cannot outlive it.
struct Object<'a> {
    esys: &'a Esys,
    handle: ESYS_TR,
}

impl Drop for Object<'_> {
    fn drop(&mut self) {
        // SAFETY: the context is live (borrowed) and `self.handle` is an object it loaded,
        // flushed once, here.
        let _ = unsafe { Esys_FlushContext(self.esys.ctx, self.handle) };
    }
}

/// An HMAC session, flushed on drop. Borrows the context so it cannot outlive it.
struct Session<'a> {
    esys: &'a Esys,
    handle: ESYS_TR,
}

impl Session<'_> {
    /// Sends `command`, authorized by the lockout hierarchy through this session.
    fn send(&self, command: DaCommand) -> tss_esapi::Result<()> {
        let ctx = self.esys.ctx;
        match command {
            // SAFETY: `ctx` is live (borrowed through `self.esys`); `self.handle` is a live
            // session of it; ESYS_TR_RH_LOCKOUT is ESAPI's permanent lockout handle.
            DaCommand::LockReset => check(unsafe {
                Esys_DictionaryAttackLockReset(
                    ctx,
                    ESYS_TR_RH_LOCKOUT,
                    self.handle,
                    ESYS_TR_NONE,
                    ESYS_TR_NONE,
                )
            }),
            DaCommand::Parameters {
                max_tries,
                recovery_time_s,
                lockout_recovery_s,
            } => check(
                // SAFETY: as above; the parameters are plain integers.
                unsafe {
                    Esys_DictionaryAttackParameters(
                        ctx,
                        ESYS_TR_RH_LOCKOUT,
                        self.handle,
                        ESYS_TR_NONE,
                        ESYS_TR_NONE,
                        max_tries,
                        recovery_time_s,
                        lockout_recovery_s,
                    )
                },
            ),
        }
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        // SAFETY: the context is live (borrowed) and `self.handle` is a session it started
        // with continueSession set, so it is still loaded; flushed once, here. A failure
        // leaves a session slot used until the TCTI closes, which frees it on a resource
        // manager and on swtpm.
        let _ = unsafe { Esys_FlushContext(self.esys.ctx, self.handle) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_values_are_copied_and_length_checked() {
        let secret = Zeroizing::new("lockout-secret".to_owned());
        let auth = AuthValue::new(Some(&secret)).unwrap();
        assert_eq!(usize::from(auth.0.size), secret.len());
        assert_eq!(&auth.0.buffer[..secret.len()], secret.as_bytes());
        assert_eq!(AuthValue::new(None).unwrap().0.size, 0);
        let long = Zeroizing::new("x".repeat(65));
        assert!(AuthValue::new(Some(&long)).is_err());
    }

    #[test]
    fn unreachable_tcti_is_device_unavailable() {
        // Port 1 on localhost: nothing listens (the TCTI fails to connect).
        let err = run(
            "swtpm:host=127.0.0.1,port=1",
            "TPM at nowhere",
            None,
            DaCommand::LockReset,
        )
        .unwrap_err();
        assert!(err.is_device_lost(), "{err}");
        let err = run("swtpm\0", "t", None, DaCommand::LockReset).unwrap_err();
        assert_eq!(err.kind(), hardkey_api::ErrorKind::InvalidInput);
    }
}
