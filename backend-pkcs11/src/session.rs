//! [`Pkcs11Device`]: one worker's session on the token, logged in, with its key-handle cache.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use cryptoki::context::Function;
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use hardkey_api::uri::Pkcs11Uri;
use hardkey_api::{
    Backend, DecryptScheme, Error, HashAlgorithm, KeyPolicy, Operation, Result, SignatureScheme,
    Unsupported, encoding,
};
use zeroize::Zeroizing;

use crate::error::{is_rv, map, mapper};
use crate::keys::{
    ALLOWED_REFUSED, ALLOWED_SUPPORTED, ALLOWED_UNKNOWN, Pkcs11KeyRef, RestrictionRefusal, UriBase,
    refuses_allowed_mechanisms,
};
use crate::mechanism::{decrypt_mechanism, sign_input, sign_output};
use crate::module::{Module, TrackedSession};
use crate::pin::PinSource;

/// The token a store serves, shared by its workers.
pub(crate) struct Target {
    pub(crate) module: Arc<Module>,
    /// The token's slot id; may change when a module is re-initialized.
    pub(crate) slot: AtomicU64,
    /// The URI attributes that select the token, to find it again.
    pub(crate) token_uri: Pkcs11Uri,
    /// "token 'web'": the device name in errors and stats.
    pub(crate) name: String,
    pub(crate) pin: PinSource,
    pub(crate) policy: KeyPolicy,
    pub(crate) uri_base: UriBase,
    /// Whether the token takes `CKM_RSA_PKCS_OAEP` with SHA-256 (learned on first use).
    pub(crate) oaep_sha256: AtomicU8,
    /// Whether the token takes CKA_ALLOWED_MECHANISMS in templates (learned on first use;
    /// `keys::ALLOWED_*`).
    pub(crate) allowed_mechanisms: AtomicU8,
    /// Held across the PIN-state check and `C_Login`, so workers log in one at a time.
    pub(crate) login_lock: std::sync::Mutex<()>,
    /// The handle each key had where it was found (opened, described, searched for), shared
    /// by the workers: a worker using a key for the first time checks that handle's class,
    /// CKA_ID and CKA_LABEL (one `C_GetAttributeValue`) instead of searching the token. With
    /// thousands of keys a search per key and worker is what made handshakes slow: SoftHSM
    /// visits every object of the token in each `C_FindObjects`, so a server asked for
    /// random names queued its handshakes behind searches for seconds.
    pub(crate) handle_hints: std::sync::Mutex<HashMap<Pkcs11KeyRef, ObjectHandle>>,
    /// How many times a worker searched the token for a key it had no handle for.
    pub(crate) key_searches: AtomicU64,
    /// Set when `C_Login` refused the PIN: no worker tries it again until
    /// [`Pkcs11Store::reconnect`](crate::Pkcs11Store::reconnect) clears it.
    pub(crate) login_refused: std::sync::atomic::AtomicBool,
    /// Set when a lookup found nothing where a key should be: the next connect
    /// re-initializes the module, in case its view of the token went stale.
    pub(crate) refresh_requested: std::sync::atomic::AtomicBool,
    /// Set when a lookup met the process out of descriptors: the module's view of the token
    /// may be stale until it is re-initialized.
    pub(crate) ran_out_of_descriptors: std::sync::atomic::AtomicBool,
    /// When a lookup that found nothing last had the module re-initialized to see objects
    /// other processes made (tpm2-pkcs11); at most one such refresh per
    /// [`VIEW_REFRESH_INTERVAL`].
    pub(crate) view_refreshed: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How often a lookup that found nothing may re-initialize a module that reads its objects
/// only at `C_Initialize` (tpm2-pkcs11).
const VIEW_REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

impl Target {
    /// The error for a lookup that matched no key: out of descriptors when the process is
    /// (the module could not read its token). Once descriptors are back, the first lookup
    /// that finds nothing on a token that shows no object at all is a retryable loss of the
    /// device, so the pool re-initializes the module and looks again: SoftHSM marks its token
    /// invalid for good after failing to read its directory, and finds nothing until
    /// re-initialized. Otherwise `not_found`.
    pub(crate) fn missing_key(&self, session: &Session, not_found: Error) -> Error {
        if self.module.implementation.reads_objects_at_initialize() && self.may_refresh_view() {
            // tpm2-pkcs11 reads its store's objects at C_Initialize: a key another process
            // (pkcs11-tool, tpm2_ptool) made since is invisible until the module is
            // re-initialized. The pool does that and looks once more.
            self.refresh_requested.store(true, Ordering::Relaxed);
            return Error::device_unavailable(
                &self.name,
                format!(
                    "{not_found} (tpm2-pkcs11 sees objects other processes made only after \
                     re-initializing: it is re-initialized and the lookup made again)"
                ),
            );
        }
        if hardkey_api::fs::descriptors_short() {
            self.ran_out_of_descriptors.store(true, Ordering::Relaxed);
            return hardkey_api::fs::descriptors_exhausted(&self.name, not_found);
        }
        // Only after the process ran out of descriptors: a token that is simply empty is not
        // re-initialized (that would disturb every other user of the module).
        if !self.ran_out_of_descriptors.swap(false, Ordering::Relaxed) {
            return not_found;
        }
        if session.find_objects(&[]).is_ok_and(|all| !all.is_empty()) {
            // The token shows its other objects: this key is really not there.
            return not_found;
        }
        self.refresh_requested.store(true, Ordering::Relaxed);
        Error::device_unavailable(
            &self.name,
            format!(
                "{not_found} (the module is re-initialized and the lookup made again, in case \
                 its view of the token went stale)"
            ),
        )
    }
}

impl Target {
    /// Whether a re-initialization to refresh the module's view is due (and if so, counts
    /// this one).
    fn may_refresh_view(&self) -> bool {
        let mut last = self
            .view_refreshed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < VIEW_REFRESH_INTERVAL) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// `Target::oaep_sha256` values.
pub(crate) const OAEP_UNKNOWN: u8 = 0;
const OAEP_NATIVE: u8 = 1;
const OAEP_HOST_DECODE: u8 = 2;

/// The token refused the mechanism's parameters (not the key or the data).
fn rejects_parameters(e: &cryptoki::error::Error) -> bool {
    [
        RvError::ArgumentsBad,
        RvError::MechanismParamInvalid,
        RvError::MechanismInvalid,
    ]
    .into_iter()
    .any(|rv| is_rv(e, rv, None))
}

/// One pool worker's device state: a read-write session on the token, logged in as the user,
/// and the object handles of the keys it has used.
///
/// Sessions are never shared between threads, never opened per operation, and a session whose
/// operation failed is replaced (it might still hold an active operation).
pub struct Pkcs11Device {
    target: Arc<Target>,
    session: TrackedSession,
    handles: HashMap<Pkcs11KeyRef, ObjectHandle>,
    /// The module's `key_epoch` these handles were found at.
    handles_epoch: u64,
}

impl std::fmt::Debug for Pkcs11Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Device")
            .field("token", &self.target.name)
            .field("cached_handles", &self.handles.len())
            .finish()
    }
}

impl Pkcs11Device {
    /// Opens a session on the target's token and logs in. If the module's connection is gone
    /// (a remote module whose server restarted), re-initializes the module (once, whichever
    /// worker gets there first) and finds the token again; if only the token's slot changed,
    /// finds the token again.
    pub(crate) fn connect(target: Arc<Target>) -> Result<Self> {
        if target.refresh_requested.swap(false, Ordering::Relaxed) {
            // A lookup found nothing where a key was: start the module afresh.
            target.module.reinitialize(target.module.generation());
            target.find_token_again()?;
        }
        let seen = target.module.generation();
        let failure = match Self::open_and_login(&target) {
            Ok(device) => return Ok(device),
            Err(Failure::Other(e)) => return Err(e),
            Err(failure) => failure,
        };
        // Perhaps only the token's slot moved.
        if matches!(failure, Failure::Slot(_)) && target.find_token_again().is_ok() {
            if let Ok(device) = Self::open_and_login(&target) {
                return Ok(device);
            }
        }
        // The module's connection is gone, or it came back without the token (a client
        // re-initialized while its server was down): re-initialize it, once for all workers.
        target.module.reinitialize(seen);
        target.find_token_again()?;
        Self::open_and_login(&target).map_err(Failure::into_error)
    }

    fn open_and_login(target: &Arc<Target>) -> std::result::Result<Self, Failure> {
        let _calls = target.module.calls();
        let slot = target.slot().map_err(Failure::Other)?;
        let session = target.module.open_session(slot).map_err(|e| {
            let rv = crate::error::rv_of(&e);
            let err = map(&target.name, Operation::Connect, e);
            match rv {
                Some(
                    RvError::DeviceError
                    | RvError::CryptokiNotInitialized
                    | RvError::GeneralError
                    | RvError::DeviceRemoved,
                ) => Failure::Module(err),
                Some(RvError::SlotIdInvalid | RvError::TokenNotPresent) => Failure::Slot(err),
                _ => Failure::Other(err),
            }
        })?;
        login(target, &session).map_err(Failure::Other)?;
        Ok(Self {
            handles_epoch: target.module.key_epoch.load(Ordering::Relaxed),
            target: Arc::clone(target),
            session,
            handles: HashMap::new(),
        })
    }

    /// Runs `f` with re-initialization held off, if this worker's session is still current.
    pub(crate) fn guarded<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let module = Arc::clone(&self.target.module);
        let _calls = module.calls();
        if self.session.is_stale() {
            return Err(Error::device_unavailable(
                &self.target.name,
                "the PKCS#11 module was re-initialized after losing its connection",
            ));
        }
        f(self)
    }

    /// The session, for store jobs.
    pub(crate) fn session(&self) -> &Session {
        &self.session
    }

    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// Tells every worker (of every store on this module) that keys were deleted: their cached handles may now name nothing,
    /// or (on tokens that reuse handles) another key.
    pub(crate) fn keys_deleted(&mut self) {
        self.target.module.key_epoch.fetch_add(1, Ordering::Relaxed);
        self.target.clear_hints();
        self.handles.clear();
    }

    /// Replaces the session: the new one is opened before the old one closes, so the token's
    /// login (which lasts while any session is open) is kept.
    fn replace_session(&mut self) -> Result<()> {
        let fresh = open_session(&self.target)?;
        login(&self.target, &fresh)?;
        // (The caller holds the module's call guard.)
        self.session = fresh;
        self.handles.clear();
        Ok(())
    }

    fn handle(&mut self, key: &Pkcs11KeyRef, op: Operation) -> Result<ObjectHandle> {
        let epoch = self.target.module.key_epoch.load(Ordering::Relaxed);
        if epoch != self.handles_epoch {
            self.handles.clear();
            self.handles_epoch = epoch;
        }
        if let Some(h) = self.handles.get(key) {
            return Ok(*h);
        }
        if let Some(h) = self.hinted(key) {
            self.handles.insert(key.clone(), h);
            return Ok(h);
        }
        self.target.key_searches.fetch_add(1, Ordering::Relaxed);
        let found = self
            .session
            .find_objects(&key.template(ObjectClass::PRIVATE_KEY))
            .map_err(mapper(&self.target.name, op))?;
        match found.as_slice() {
            [h] => {
                self.handles.insert(key.clone(), *h);
                self.target.hint(key, *h);
                Ok(*h)
            }
            [] => Err(self.target.missing_key(
                &self.session,
                Error::not_found(
                    format!("{key:?} on {}", self.target.name),
                    "the key is no longer on the token (deleted?); list the keys (hardkey list)",
                ),
            )),
            _ => Err(Error::not_found(
                format!(
                    "a single key: {key:?} matches {} keys on {}",
                    found.len(),
                    self.target.name
                ),
                "give both id= and object= in the URI",
            )),
        }
    }

    /// The handle another worker found `key` at, if in this session it names a private key
    /// with the key's CKA_ID and CKA_LABEL: what a search for the key would find. A handle
    /// this session does not know, or one that now names another object (the key deleted,
    /// the module re-initialized), gives `None`, and the caller searches.
    fn hinted(&self, key: &Pkcs11KeyRef) -> Option<ObjectHandle> {
        let handle = *self
            .target
            .handle_hints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)?;
        let attrs = self
            .session
            .get_attributes(
                handle,
                &[
                    AttributeType::Class,
                    AttributeType::Id,
                    AttributeType::Label,
                ],
            )
            .ok()?;
        let (mut class, mut id, mut label) = (false, key.id.is_none(), key.label.is_none());
        for attr in attrs {
            match attr {
                Attribute::Class(c) => class = c == ObjectClass::PRIVATE_KEY,
                Attribute::Id(v) => id = key.id.as_deref().is_none_or(|want| want == v),
                Attribute::Label(v) => {
                    label = key.label.as_deref().is_none_or(|want| want.as_bytes() == v);
                }
                _ => {}
            }
        }
        (class && id && label).then_some(handle)
    }

    /// Runs a private-key operation: refreshes a stale handle once; replaces the session after
    /// any other failure.
    fn with_key<T>(
        &mut self,
        op: Operation,
        key: &Pkcs11KeyRef,
        f: impl Fn(&Session, ObjectHandle) -> cryptoki::error::Result<T>,
    ) -> Result<T> {
        self.guarded(|dev| dev.with_key_guarded(op, key, true, f))
    }

    /// [`Pkcs11Device::with_key`] for decryption: the session is kept after a failure.
    /// `C_Decrypt` ends its operation whatever it returns (PKCS#11 5.2), so nothing is left
    /// active; and replacing the session only after failures would make a bad ciphertext
    /// cost more token calls than a good one (a Bleichenbacher timing signal), whatever code
    /// the token answers bad padding with (SoftHSM: CKR_GENERAL_ERROR).
    fn with_key_kept<T>(
        &mut self,
        op: Operation,
        key: &Pkcs11KeyRef,
        f: impl Fn(&Session, ObjectHandle) -> cryptoki::error::Result<T>,
    ) -> Result<T> {
        self.guarded(|dev| dev.with_key_guarded(op, key, false, f))
    }

    fn with_key_guarded<T>(
        &mut self,
        op: Operation,
        key: &Pkcs11KeyRef,
        replace_on_failure: bool,
        f: impl Fn(&Session, ObjectHandle) -> cryptoki::error::Result<T>,
    ) -> Result<T> {
        let handle = self.handle(key, op)?;
        let result = match f(&self.session, handle) {
            Err(e)
                if is_rv(&e, RvError::ObjectHandleInvalid, None)
                    || is_rv(&e, RvError::KeyHandleInvalid, None) =>
            {
                self.handles.remove(key);
                self.target.forget_hint(key);
                let handle = self.handle(key, op)?;
                f(&self.session, handle)
            }
            other => other,
        };
        result.map_err(|e| {
            let err = map(&self.target.name, op, e);
            if replace_on_failure && !err.is_device_lost() {
                // The session may still hold the failed operation: never reuse it. If a new
                // one cannot be had, report the device as lost so the pool drops this state.
                if let Err(cause) = self.replace_session() {
                    return Error::DeviceUnavailable {
                        device: self.target.name.clone(),
                        source: Box::new(cause),
                    };
                }
            }
            err
        })
    }
}

/// Why a session could not be opened.
enum Failure {
    /// The module's connection is gone: re-initialize it.
    Module(Error),
    /// The token's slot is gone: find the token again.
    Slot(Error),
    Other(Error),
}

impl Failure {
    fn into_error(self) -> Error {
        match self {
            Self::Module(e) | Self::Slot(e) | Self::Other(e) => e,
        }
    }
}

impl Target {
    /// Describes a key of this token ([`keys::describe`](crate::keys::describe)).
    pub(crate) fn describe(
        &self,
        session: &Session,
        handle: ObjectHandle,
    ) -> Result<(hardkey_api::KeyInfo, Pkcs11KeyRef)> {
        self.describe_with(session, handle, None)
    }

    /// [`describe`](Self::describe), finding its public-key object in `publics` (read once
    /// for many keys) when given.
    pub(crate) fn describe_with(
        &self,
        session: &Session,
        handle: ObjectHandle,
        publics: Option<&crate::keys::ObjectIndex>,
    ) -> Result<(hardkey_api::KeyInfo, Pkcs11KeyRef)> {
        let refused = self.allowed_mechanisms.load(Ordering::Relaxed) == ALLOWED_REFUSED;
        let described = crate::keys::describe(
            session,
            &self.name,
            handle,
            &self.uri_base,
            self.policy,
            refused,
            self.module.implementation.fixes_usage_flags(),
            publics,
        )?;
        self.hint(&described.1, handle);
        Ok(described)
    }

    /// Records where `key` was found, for the other workers ([`Target::handle_hints`]).
    pub(crate) fn hint(&self, key: &Pkcs11KeyRef, handle: ObjectHandle) {
        self.handle_hints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), handle);
    }

    /// Forgets the handle recorded for `key` (the token refused it).
    fn forget_hint(&self, key: &Pkcs11KeyRef) {
        self.handle_hints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Forgets every recorded handle (keys were deleted: a handle may name another object).
    pub(crate) fn clear_hints(&self) {
        self.handle_hints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Makes key objects with `make(restrict)`, restricted by CKA_ALLOWED_MECHANISMS unless
    /// the token refused that attribute before. A token that refuses it (an attribute it does
    /// not know; or CKR_GENERAL_ERROR twice, as NSS softokn answers) is tried once more
    /// without it, and the store remembers: its keys then say so in their description
    /// (`hardkey info`).
    pub(crate) fn with_restriction<T>(
        &self,
        op: Operation,
        mut make: impl FnMut(bool) -> Result<cryptoki::error::Result<T>>,
    ) -> Result<T> {
        let state = self.allowed_mechanisms.load(Ordering::Relaxed);
        if state == ALLOWED_REFUSED {
            return make(false)?.map_err(mapper(&self.name, op));
        }
        match make(true)? {
            Ok(made) => {
                self.allowed_mechanisms
                    .store(ALLOWED_SUPPORTED, Ordering::Relaxed);
                Ok(made)
            }
            Err(e) if state == ALLOWED_UNKNOWN => {
                match refuses_allowed_mechanisms(&e) {
                    RestrictionRefusal::No => return Err(map(&self.name, op, e)),
                    RestrictionRefusal::Clear => {}
                    RestrictionRefusal::Maybe => match make(true)? {
                        // A passing fault: the token takes the attributes after all.
                        Ok(made) => {
                            self.allowed_mechanisms
                                .store(ALLOWED_SUPPORTED, Ordering::Relaxed);
                            return Ok(made);
                        }
                        Err(again)
                            if refuses_allowed_mechanisms(&again) == RestrictionRefusal::Maybe => {}
                        Err(again) => return Err(map(&self.name, op, again)),
                    },
                }
                // Made without the restriction only if that works: otherwise the token's
                // first answer is the error.
                let made = make(false)?.map_err(|_| map(&self.name, op, e))?;
                self.allowed_mechanisms
                    .store(ALLOWED_REFUSED, Ordering::Relaxed);
                Ok(made)
            }
            Err(e) => Err(map(&self.name, op, e)),
        }
    }

    /// Finds the token again (its slot id may have changed).
    fn find_token_again(&self) -> Result<()> {
        let _calls = self.module.calls();
        let (slot, _) = crate::token::find(&self.module, &self.token_uri)?;
        self.slot.store(slot.id(), Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn slot(&self) -> Result<Slot> {
        Slot::try_from(self.slot.load(Ordering::Relaxed))
            .map_err(mapper(&self.name, Operation::Connect))
    }
}

fn open_session(target: &Target) -> Result<TrackedSession> {
    target
        .module
        .open_session(target.slot()?)
        .map_err(mapper(&target.name, Operation::Connect))
}

/// Logs the user in, once per token: `CKR_USER_ALREADY_LOGGED_IN` (another worker did) is
/// success. Never tries a PIN the token reports locked or on its final try: a wrong PIN then
/// would lock the token, and hardkey never guesses.
fn login(target: &Target, session: &Session) -> Result<()> {
    // Another session of this application already logged the user in: nothing to do, and no
    // PIN to read.
    if session.get_session_info().is_ok_and(|i| {
        matches!(
            i.session_state(),
            SessionState::RwUser | SessionState::RoUser
        )
    }) {
        return Ok(());
    }
    let _one_at_a_time = target.login_lock.lock().unwrap_or_else(|p| p.into_inner());
    if target.login_refused.load(Ordering::Relaxed) {
        return Err(Error::AuthFailed {
            target: target.name.clone(),
            source: "the token refused this PIN before; hardkey will not try it again: fix the \
                     PIN source, then call Pkcs11Store::reconnect"
                .into(),
        });
    }
    let info = target
        .module
        .ctx
        .get_token_info(target.slot()?)
        .map_err(mapper(&target.name, Operation::Connect))?;
    if info.user_pin_locked() {
        return Err(Error::PinLocked {
            target: target.name.clone(),
            remedy: "the user PIN is locked: unlock it with the SO PIN (hardkey token init-pin)",
            source: None,
        });
    }
    if info.user_pin_final_try() {
        return Err(Error::PinLocked {
            target: target.name.clone(),
            remedy: "one PIN attempt is left, so hardkey will not try: check the PIN source, \
                     then log in once by hand or reset the PIN with the SO PIN",
            source: None,
        });
    }
    if !info.login_required() {
        return Ok(());
    }
    let pin = crate::pin::load(&target.pin, &target.name)?;
    let mut result = session.login(UserType::User, pin.as_ref());
    // tpm2-pkcs11: while another store's last sessions close (and log the token out), its
    // TSS context can be out of sequence for a moment; not a PIN refusal (that is
    // CKR_PIN_INCORRECT). Tried again a few times, briefly.
    for pause_ms in [20, 60, 180] {
        match &result {
            Err(e)
                if target
                    .module
                    .implementation
                    .retries_login_after_general_error()
                    && is_rv(e, RvError::GeneralError, Some(Function::Login)) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(pause_ms));
                result = session.login(UserType::User, pin.as_ref());
            }
            _ => break,
        }
    }
    match result {
        Ok(()) => Ok(()),
        Err(e) if is_rv(&e, RvError::UserAlreadyLoggedIn, Some(Function::Login)) => Ok(()),
        Err(e) => {
            let err = map(&target.name, Operation::Connect, e);
            if err.is_auth() {
                target.login_refused.store(true, Ordering::Relaxed);
            }
            Err(err)
        }
    }
}

impl Backend for Pkcs11Device {
    type KeyRef = Pkcs11KeyRef;

    fn sign_digest(
        &mut self,
        key: &Pkcs11KeyRef,
        scheme: SignatureScheme,
        digest: &[u8],
    ) -> Result<Vec<u8>> {
        let (mechanism, data) = sign_input(scheme, digest)?;
        let raw = self.with_key(Operation::Sign, key, |session, handle| {
            session.sign(&mechanism, handle, &data)
        })?;
        sign_output(scheme, raw)
    }

    fn sign_message(
        &mut self,
        key: &Pkcs11KeyRef,
        scheme: SignatureScheme,
        message: &[u8],
    ) -> Result<Vec<u8>> {
        let mechanism = crate::mechanism::sign_message_mechanism(scheme)?;
        // CKM_EDDSA's output is already R || S, the form TLS and X.509 carry.
        self.with_key(Operation::Sign, key, |session, handle| {
            session.sign(&mechanism, handle, message)
        })
    }

    fn decrypt(
        &mut self,
        key: &Pkcs11KeyRef,
        scheme: DecryptScheme,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let op = Operation::Decrypt;
        if scheme == DecryptScheme::RsaPkcs1v15Legacy {
            // The padding oracle of TLS 1.2 RSA key exchange: a bad ciphertext must cost the
            // token exactly what a good one does. With raw RSA allowed, the token does only
            // the RSA operation and the padding is checked on the host in constant time;
            // otherwise the token's own CKM_RSA_PKCS runs, and its failure is handled like
            // its success (no session replaced, nothing logged).
            if key.raw_rsa == Some(true) {
                let em = self.raw_decrypt(key, ciphertext)?;
                return encoding::pkcs1v15_decrypt_decode(&em);
            }
            let mechanism = decrypt_mechanism(scheme);
            return self
                .with_key_kept(op, key, |session, handle| {
                    session.decrypt(&mechanism, handle, ciphertext)
                })
                .map(Zeroizing::new);
        }
        if self.target.oaep_sha256.load(Ordering::Relaxed) != OAEP_HOST_DECODE {
            let mechanism = decrypt_mechanism(scheme);
            let native = self.with_key_kept(op, key, |session, handle| {
                match session.decrypt(&mechanism, handle, ciphertext) {
                    Ok(plain) => Ok(Some(plain)),
                    Err(e) if rejects_parameters(&e) => Ok(None),
                    Err(e) => Err(e),
                }
            })?;
            if let Some(plain) = native {
                self.target
                    .oaep_sha256
                    .store(OAEP_NATIVE, Ordering::Relaxed);
                return Ok(Zeroizing::new(plain));
            }
            // E.g. SoftHSM 2.6, which does OAEP only with SHA-1.
            self.target
                .oaep_sha256
                .store(OAEP_HOST_DECODE, Ordering::Relaxed);
        }
        let device = self.target.name.clone();
        let no_raw = || {
            Error::from(Unsupported::DecryptOnDevice {
                scheme,
                device: device.clone(),
                reason: "this token does OAEP only with other hashes, and decoding OAEP on the \
                         host needs raw RSA (CKM_RSA_X_509), which this key does not allow; \
                         generate the key with raw RSA allowed (hardkey keygen --allow-raw-rsa)",
            })
        };
        if key.raw_rsa == Some(false) {
            return Err(no_raw());
        }
        // Raw RSA on the token, OAEP decoding (constant time) on the host: the private key
        // never leaves the token. (A key whose restrictions the token does not report is
        // tried: the token refuses the mechanism if it is not allowed.)
        let em = match self.raw_decrypt(key, ciphertext) {
            Err(e) if key.raw_rsa.is_none() && e.kind() == hardkey_api::ErrorKind::Unsupported => {
                return Err(no_raw());
            }
            other => other?,
        };
        encoding::oaep_decode(HashAlgorithm::Sha256, &em)
    }
}

impl Pkcs11Device {
    /// `C_Decrypt` with `CKM_RSA_X_509`: the `k`-byte block, left-padded with zeros.
    fn raw_decrypt(&mut self, key: &Pkcs11KeyRef, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let raw = Zeroizing::new(self.with_key_kept(
            Operation::Decrypt,
            key,
            |session, handle| session.decrypt(&Mechanism::RsaX509, handle, ciphertext),
        )?);
        let mut em = Zeroizing::new(vec![0u8; ciphertext.len().saturating_sub(raw.len())]);
        em.extend_from_slice(&raw);
        Ok(em)
    }
}
