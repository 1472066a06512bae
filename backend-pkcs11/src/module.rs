//! PKCS#11 modules: loaded and `C_Initialize`d once per process, never finalized while in use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use hardkey_api::{Error, InvalidInput, Result};

use crate::error::{Pkcs11Error, is_rv};
use crate::init_args::{LibraryParameters, initialize_with};

/// Where SoftHSM's module usually lives (Debian, Ubuntu, Fedora, source installs).
pub const SOFTHSM_PATHS: [&str; 5] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/lib/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// A loaded, initialized module.
pub(crate) struct Module {
    pub(crate) ctx: Pkcs11,
    pub(crate) path: PathBuf,
    /// The library parameters `C_Initialize` was given (NSS softokn's configuration), kept
    /// alive with the module and given again when it is re-initialized.
    params: Option<LibraryParameters>,
    /// Which implementation this is, where hardkey must work around what it does.
    pub(crate) implementation: Implementation,
    /// Read-held by every sequence of calls into the module, write-held while it is
    /// re-initialized: `C_Finalize` never runs under a call in flight.
    calls: RwLock<()>,
    /// Bumped by each re-initialization. Sessions (and their handle numbers, which the module
    /// may reuse) from an older generation are gone.
    generation: AtomicU64,
    /// Serializes the calls that create or destroy token objects (see [`Module::writes`]).
    writes: Mutex<()>,
    /// Bumped when keys are deleted through any store of this process on this module: every
    /// worker of every store drops its cached object handles, which may now name nothing or,
    /// on a token that reuses handle numbers, another key.
    pub(crate) key_epoch: AtomicU64,
}

/// PKCS#11 implementations whose differences hardkey handles, told apart by the library
/// manufacturer `C_GetInfo` reports. Everything else is [`Implementation::Other`] and gets
/// the standard behaviour (the differences hardkey learns by the token's answers, such as a
/// refused CKA_ALLOWED_MECHANISMS, need no name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Implementation {
    /// tpm2-pkcs11 ("tpm2-software.github.io"): every key it makes is both a signing and a
    /// decryption key (its TPM object has both attributes) and a template that says
    /// otherwise fails with CKR_GENERAL_ERROR; `C_CreateObject` makes only public keys and
    /// data objects (private keys come in through `tpm2_ptool import`); it pads RSA
    /// signatures (PKCS#1 v1.5 and PSS) on the host and asks the TPM for raw RSA, so an RSA
    /// key signs only if CKM_RSA_X_509 is among its CKA_ALLOWED_MECHANISMS (else
    /// CKR_MECHANISM_INVALID); a `C_Login` right after the previous sessions closed can fail
    /// once with CKR_GENERAL_ERROR (its TSS context out of sequence) and succeed when repeated;
    /// it reads its store's objects at `C_Initialize` only, so keys other processes make
    /// later are found after a re-initialization.
    Tpm2Pkcs11,
    /// Any other module.
    Other,
}

impl Implementation {
    fn of(ctx: &Pkcs11) -> Self {
        match ctx.get_library_info() {
            Ok(info) if info.manufacturer_id().trim_end() == "tpm2-software.github.io" => {
                Self::Tpm2Pkcs11
            }
            _ => Self::Other,
        }
    }

    /// Whether the module decides a new key's sign/decrypt usage flags itself (and refuses a
    /// template that sets one of them false).
    pub(crate) fn fixes_usage_flags(self) -> bool {
        self == Self::Tpm2Pkcs11
    }

    /// Whether RSA signing needs raw RSA (`CKM_RSA_X_509`) allowed on the key.
    pub(crate) fn signs_rsa_with_raw_rsa(self) -> bool {
        self == Self::Tpm2Pkcs11
    }

    /// Whether a `C_Login` that failed with CKR_GENERAL_ERROR is worth one more try (never a
    /// PIN the token refused: that answer is CKR_PIN_INCORRECT).
    pub(crate) fn retries_login_after_general_error(self) -> bool {
        self == Self::Tpm2Pkcs11
    }

    /// Whether the module reads its token's objects only at `C_Initialize`, so that objects
    /// other processes made since stay invisible until it is re-initialized.
    pub(crate) fn reads_objects_at_initialize(self) -> bool {
        self == Self::Tpm2Pkcs11
    }

    /// Whether `C_CreateObject` can make a private key.
    pub(crate) fn imports_private_keys(self) -> bool {
        self != Self::Tpm2Pkcs11
    }
}

/// A session with the module generation it belongs to. Closed on drop only if that generation
/// is current: after a re-initialization its handle number may belong to a new session.
pub(crate) struct TrackedSession {
    /// Always `Some` until dropped (closing consumes it).
    session: Option<Session>,
    module: Arc<Module>,
    generation: u64,
}

impl std::ops::Deref for TrackedSession {
    type Target = Session;
    fn deref(&self) -> &Session {
        match &self.session {
            Some(session) => session,
            None => closed_session(),
        }
    }
}

#[allow(clippy::panic, reason = "the session is only taken by drop")]
fn closed_session() -> &'static Session {
    panic!("PKCS#11 session used after it was closed")
}

impl TrackedSession {
    /// Whether the module was re-initialized since this session was opened.
    pub(crate) fn is_stale(&self) -> bool {
        self.module.generation() != self.generation
    }
}

impl Drop for TrackedSession {
    fn drop(&mut self) {
        // Never block here: a re-initialization pending or under way (try_read fails) ends
        // every session anyway.
        let Some(session) = self.session.take() else {
            return;
        };
        if let Ok(_calls) = self.module.calls.try_read() {
            if !self.is_stale() {
                let _ = session.close();
            }
        }
    }
}

impl Module {
    /// Holds off re-initialization while calls are made.
    pub(crate) fn calls(&self) -> RwLockReadGuard<'_, ()> {
        self.calls.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Held while token objects are created or destroyed: one such sequence at a time per
    /// module. SoftHSM 2's file object store fails concurrent creations at random with
    /// CKR_GENERAL_ERROR or CKR_TEMPLATE_INCONSISTENT (SoftHSMv2 issue #573, seen here as a
    /// flaky key generation under parallel tests). Keys are created rarely, so every module
    /// pays this small cost rather than SoftHSM users a random failure.
    pub(crate) fn writes(&self) -> MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current generation.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Opens a read-write session on `slot`. The caller holds [`Module::calls`].
    pub(crate) fn open_session(
        self: &Arc<Self>,
        slot: Slot,
    ) -> cryptoki::error::Result<TrackedSession> {
        let session = self.ctx.open_rw_session_no_drop(slot)?;
        Ok(TrackedSession {
            session: Some(session),
            module: Arc::clone(self),
            generation: self.generation(),
        })
    }

    /// Re-initializes the module (`C_Finalize`, `C_Initialize`): how a client module whose
    /// server went away (p11-kit remoting) reconnects. Waits for calls in flight to end. Does
    /// nothing if another caller already re-initialized since `seen` (the generation the
    /// caller saw fail). Returns whether the module is initialized afterwards.
    pub(crate) fn reinitialize(&self, seen: u64) -> bool {
        let _exclusive = self.calls.write().unwrap_or_else(|p| p.into_inner());
        if self.generation() != seen {
            return true;
        }
        let _ = self.ctx.clone().finalize();
        let ok = initialize(&self.ctx, self.params.as_ref()).is_ok();
        self.generation.fetch_add(1, Ordering::AcqRel);
        ok
    }
}

/// The default module: SoftHSM from its usual paths.
pub fn default_module_path() -> Result<PathBuf> {
    SOFTHSM_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            InvalidInput::Config {
                what: "PKCS#11 module",
                reason: "none given and SoftHSM was not found in the usual places; pass \
                         module-path=/path/to/module.so in the URI (apt install softhsm2 for \
                         SoftHSM)",
            }
            .into()
        })
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Arc<Module>>> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = OnceLock::new();
    MODULES.get_or_init(Mutex::default)
}

/// Loads and initializes the module at `path` (or the default), once per process, with the
/// library parameters `params` in `C_Initialize`'s reserved pointer when given (see
/// [`Pkcs11Config::module_init`](crate::Pkcs11Config::module_init)). Modules stay loaded for
/// the life of the process; `C_Finalize` is called only to re-initialize a module whose
/// connection was lost, under [`Module::reinitialize`]'s exclusive lock. A module already
/// loaded with other parameters is refused: one process can initialize a module only once.
pub(crate) fn load(path: Option<&Path>, params: Option<&str>) -> Result<Arc<Module>> {
    let params = params.map(LibraryParameters::new).transpose()?;
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => default_module_path()?,
    };
    let canonical = path.canonicalize().map_err(|e| {
        Error::device_unavailable(
            path.display().to_string(),
            format!("cannot open PKCS#11 module {}: {e}", path.display()),
        )
    })?;
    let mut modules = registry().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = modules.get(&canonical) {
        if params.is_some() && m.params != params {
            return Err(InvalidInput::Config {
                what: "PKCS#11 module parameters (module-init)",
                reason: "this process already initialized the module with other parameters, \
                         and a module is initialized once per process: open every token of \
                         this module with the same module-init (an NSS database directory per \
                         process)",
            }
            .into());
        }
        return Ok(Arc::clone(m));
    }
    let device = canonical.display().to_string();
    let ctx = Pkcs11::new(&canonical)
        .map_err(|error| Error::device_unavailable(&device, Pkcs11Error::new(error)))?;
    initialize(&ctx, params.as_ref()).map_err(|error| {
        let refused_params =
            params.is_some() && is_rv(&error, RvError::ArgumentsBad, Some(Function::Initialize));
        if refused_params {
            return Error::from(InvalidInput::Config {
                what: "PKCS#11 module parameters (module-init)",
                reason: "the module refused them (CKR_ARGUMENTS_BAD): most modules take none; \
                         remove module-init, or check the module's documentation for its \
                         parameter string",
            });
        }
        Error::device_unavailable(&device, Pkcs11Error::new(error))
    })?;
    let implementation = Implementation::of(&ctx);
    let module = Arc::new(Module {
        ctx,
        path: canonical.clone(),
        params,
        implementation,
        calls: RwLock::new(()),
        generation: AtomicU64::new(0),
        writes: Mutex::new(()),
        key_epoch: AtomicU64::new(0),
    });
    modules.insert(canonical, Arc::clone(&module));
    Ok(module)
}

/// `C_Initialize` with OS locking (and `params` in the reserved pointer, if any); "already
/// initialized" (by another library in this process) is fine.
pub(crate) fn initialize(
    ctx: &Pkcs11,
    params: Option<&LibraryParameters>,
) -> cryptoki::error::Result<()> {
    let flags = CInitializeFlags::OS_LOCKING_OK;
    let result = match params {
        Some(params) => initialize_with(ctx, flags, params),
        None => ctx.initialize(CInitializeArgs::new(flags)),
    };
    match result {
        Err(e)
            if is_rv(
                &e,
                RvError::CryptokiAlreadyInitialized,
                Some(Function::Initialize),
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}
