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
    /// Read-held by every sequence of calls into the module, write-held while it is
    /// re-initialized: `C_Finalize` never runs under a call in flight.
    calls: RwLock<()>,
    /// Bumped by each re-initialization. Sessions (and their handle numbers, which the module
    /// may reuse) from an older generation are gone.
    generation: AtomicU64,
    /// Serializes the calls that create or destroy token objects (see [`Module::writes`]).
    writes: Mutex<()>,
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
        let ok = initialize(&self.ctx).is_ok();
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

/// Loads and initializes the module at `path` (or the default), once per process. Modules stay
/// loaded for the life of the process; `C_Finalize` is called only to re-initialize a module
/// whose connection was lost, under [`Module::reinitialize`]'s exclusive lock.
pub(crate) fn load(path: Option<&Path>) -> Result<Arc<Module>> {
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
        return Ok(Arc::clone(m));
    }
    let device = canonical.display().to_string();
    let ctx = Pkcs11::new(&canonical)
        .map_err(|error| Error::device_unavailable(&device, Pkcs11Error::new(error)))?;
    initialize(&ctx)
        .map_err(|error| Error::device_unavailable(&device, Pkcs11Error::new(error)))?;
    let module = Arc::new(Module {
        ctx,
        path: canonical.clone(),
        calls: RwLock::new(()),
        generation: AtomicU64::new(0),
        writes: Mutex::new(()),
    });
    modules.insert(canonical, Arc::clone(&module));
    Ok(module)
}

/// `C_Initialize` with OS locking; "already initialized" (by another library in this process)
/// is fine.
pub(crate) fn initialize(ctx: &Pkcs11) -> cryptoki::error::Result<()> {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
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
