//! PKCS#11 modules: loaded and `C_Initialize`d once per process, never finalized while in use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

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
    /// Sessions open on this module by every store: the module is re-initialized only when
    /// none is (never `C_Finalize` under a call in flight).
    sessions: Mutex<usize>,
}

/// A session counted on its module; closing it (drop) uncounts it.
pub(crate) struct TrackedSession {
    session: Option<Session>,
    module: Arc<Module>,
}

impl std::ops::Deref for TrackedSession {
    type Target = Session;
    fn deref(&self) -> &Session {
        // Present from construction until drop.
        self.session
            .as_ref()
            .unwrap_or_else(|| unreachable_session())
    }
}

#[allow(clippy::panic, reason = "the session is only taken in drop")]
fn unreachable_session() -> &'static Session {
    panic!("session used after close")
}

impl Drop for TrackedSession {
    fn drop(&mut self) {
        // Close first, then uncount: a re-initialization must not overtake the close.
        drop(self.session.take());
        let mut n = self
            .module
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
    }
}

impl Module {
    /// Opens a read-write session on `slot`, counted.
    pub(crate) fn open_session(
        self: &Arc<Self>,
        slot: Slot,
    ) -> cryptoki::error::Result<TrackedSession> {
        let mut n = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let session = self.ctx.open_rw_session(slot)?;
        *n += 1;
        Ok(TrackedSession {
            session: Some(session),
            module: Arc::clone(self),
        })
    }

    /// Re-initializes the module (`C_Finalize`, `C_Initialize`) if no session is open on it:
    /// how a client module whose server went away (p11-kit remoting) reconnects. Returns
    /// whether it did.
    pub(crate) fn reinitialize_if_idle(&self) -> bool {
        let n = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if *n > 0 {
            return false;
        }
        let _ = self.ctx.clone().finalize();
        let ok = initialize(&self.ctx).is_ok();
        drop(n);
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
/// loaded for the life of the process: `C_Finalize` is never called, so nothing in flight can
/// be pulled from under a session.
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
        .map_err(|error| Error::device_unavailable(&device, Pkcs11Error { error }))?;
    initialize(&ctx).map_err(|error| Error::device_unavailable(&device, Pkcs11Error { error }))?;
    let module = Arc::new(Module {
        ctx,
        path: canonical.clone(),
        sessions: Mutex::new(0),
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
