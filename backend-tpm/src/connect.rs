//! The connection to one TPM: the ESAPI context, the storage root key and the salted HMAC
//! session, owned by one thread.
//!
//! A TPM executes one command at a time, so hardkey drives it from a single worker thread
//! that owns this state; the pool's bounded queue in front of it gives backpressure.
//!
//! **Trust.** Nothing found in the TPM is trusted for what it claims to be:
//! - The storage root key is looked at only when a key must be loaded or created under it
//!   (a persistent key needs none, so using one needs no owner auth). A persistent SRK at
//!   0x81000001 is used only if its name equals the name of the primary key hardkey's SRK
//!   template derives from the owner seed (made to compare, which needs the owner auth when
//!   the owner hierarchy has one), or a name pinned in the configuration. Anything else
//!   there (a key someone persisted, whose private part they may know) is refused.
//! - Every session hardkey starts is salted with a primary key it has just made in the null
//!   hierarchy ([`salted_session`]), so the HMACs of auth values cannot be guessed offline
//!   from a recording of the bus, and parameter encryption hides new auth values and
//!   secrets. An active attacker on the bus who substitutes that key is not stopped: that
//!   needs a salt key certified by the endorsement key.

use std::str::FromStr;
use std::time::Duration;

use hardkey_api::{Error, InvalidInput, Operation, Result};
use tss_esapi::Context;
use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::{CapabilityType, PropertyTag, SessionType};
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Auth, CapabilityData, EccPoint, EccScheme, KeyDerivationFunctionScheme, Private, Public,
    PublicBuilder, PublicEccParametersBuilder, SensitiveData, SymmetricDefinition,
    SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::utils::TpmsContext;
use zeroize::Zeroizing;

use crate::error::{self, mapper, rc_of};

/// The TCTI used when neither the key URI nor the configuration names one: the kernel's
/// resource manager.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// Environment variable naming the TCTI when the configuration does not
/// (`swtpm:host=127.0.0.1,port=2321`, say). `TPM2TOOLS_TCTI` is honoured after it.
pub const TCTI_ENV: &str = "HARDKEY_TCTI";

/// The persistent handle of the storage root key (TCG provisioning guidance).
pub const SRK_HANDLE: u32 = 0x8100_0001;

/// `TPM2_RH_OWNER`: the parent recorded in a key file whose parent is the owner-hierarchy
/// primary key built from the standard template.
pub const OWNER_PARENT: u32 = 0x4000_0001;

/// The TCTI from `HARDKEY_TCTI`, else `TPM2TOOLS_TCTI`, else [`DEFAULT_TCTI`].
pub fn default_tcti() -> String {
    [TCTI_ENV, "TPM2TOOLS_TCTI"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| DEFAULT_TCTI.to_owned())
}

/// Whether a resource manager sits between us and the TPM (then objects of a process that
/// died are flushed for us, and we must not flush other clients' objects).
pub(crate) fn has_resource_manager(tcti: &str) -> bool {
    tcti.starts_with("tabrmd") || tcti.starts_with("device:/dev/tpmrm") || tcti == "device"
}

/// What this connection learned of the parents keys are loaded and created under, each
/// looked at the first time it is needed.
#[derive(Default)]
struct Parents {
    /// The primary key the SRK template derives from the owner seed: its name and saved
    /// context (it needs a transient slot only while a key is loaded or created under it).
    primary: Option<(Vec<u8>, TpmsContext)>,
    /// The persistent SRK at 0x81000001, once checked: `None` when the handle is empty, else
    /// its ESAPI object, verified.
    persistent: Option<Option<ObjectHandle>>,
}

/// The template tpm2-openssl and tpm2-tss-engine use for the owner primary
/// (`TPM2B_PUBLIC_PRIMARY_ECC_TEMPLATE`): ECC P-256, AES-128-CFB, restricted decrypt, noDA,
/// empty unique. Keys whose file names parent 0x40000001 were made under this key.
pub fn srk_template() -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new()
                .with_symmetric(SymmetricDefinitionObject::AES_128_CFB)
                .with_ecc_scheme(EccScheme::Null)
                .with_curve(EccCurve::NistP256)
                .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                .with_is_signing_key(false)
                .with_is_decryption_key(true)
                .with_restricted(true)
                .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// Runs a TPM command, sending it again while the TPM answers `TPM_RC_RETRY`, `YIELDED`,
/// `TESTING` or `NV_RATE` (a few times, with a short pause), and while it is out of object
/// or session slots (for about 2 s, with jittered backoff: on a TPM shared by several
/// processes, another one usually frees its slots within milliseconds).
pub(crate) fn retrying<T>(
    mut command: impl FnMut() -> tss_esapi::Result<T>,
) -> tss_esapi::Result<T> {
    use rand::Rng as _;
    let mut attempt = 0u32;
    let mut waited_for_slots = Duration::ZERO;
    loop {
        match command() {
            Err(e) if attempt < 8 && rc_of(&e).is_some_and(error::is_transient) => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(5 << attempt.min(6)));
            }
            Err(e)
                if waited_for_slots < SLOT_WAIT && rc_of(&e).is_some_and(error::is_exhausted) =>
            {
                let ceiling = (waited_for_slots.as_millis() as u64).clamp(10, 400);
                let pause = Duration::from_millis(rand::thread_rng().gen_range(5..=ceiling));
                std::thread::sleep(pause);
                waited_for_slots += pause;
            }
            other => return other,
        }
    }
}

/// How long a command waits, in all, for object or session slots other processes hold.
const SLOT_WAIT: Duration = Duration::from_secs(2);

/// One connection to a TPM.
pub(crate) struct Tpm {
    pub(crate) ctx: Context,
    /// "TPM at <tcti>", for messages.
    pub(crate) name: String,
    /// The owner hierarchy's auth value, to create the template primary.
    owner_auth: Option<Zeroizing<String>>,
    /// A name the configuration pins for the persistent SRK.
    pinned_srk: Option<Vec<u8>>,
    parents: Parents,
    hmac: Option<AuthSession>,
}

impl std::fmt::Debug for Tpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tpm").field("name", &self.name).finish()
    }
}

/// Why `tcti` does not parse, naming the part at fault: a port out of range, else the
/// whole string with the accepted forms.
fn tcti_error(tcti: &str) -> InvalidInput {
    let bad_port = tcti
        .split_once(':')
        .map(|(_, conf)| conf)
        .unwrap_or_default()
        .split(',')
        .filter_map(|part| part.trim().strip_prefix("port="))
        .find(|port| port.parse::<u16>().map_or(true, |p| p == 0));
    match bad_port {
        Some(port) => InvalidInput::Value {
            what: "TCTI port",
            given: port.chars().take(32).collect(),
            expected: "a TCP port from 1 to 65535 (swtpm:host=127.0.0.1,port=2321)",
        },
        None => InvalidInput::Value {
            what: "TCTI",
            given: tcti.chars().take(128).collect(),
            expected: "device:/dev/tpmrm0, swtpm:host=HOST,port=PORT, mssim:host=HOST,port=PORT \
                       or tabrmd[:bus_type=session]",
        },
    }
}

/// Opens an ESAPI context on `tcti`.
pub(crate) fn open_context(tcti: &str, name: &str) -> Result<Context> {
    let conf = TctiNameConf::from_str(tcti).map_err(|_| tcti_error(tcti))?;
    let before = crate::ffi::open_descriptors();
    let ctx = Context::new(conf);
    crate::ffi::close_on_exec_since(&before);
    ctx.map_err(|e| {
        // Whatever the layer, failing to open the context means the TPM is not reachable.
        Error::device_unavailable(
            name,
            crate::error::TpmError::new("Esys_Initialize (opening the TCTI)", e),
        )
    })
}

/// A range of TPM handles (`TPM2_GetCapability(HANDLES)` lists one range at a time).
#[derive(Clone, Copy, Debug)]
pub(crate) struct HandleRange {
    /// The handle the listing starts at (the capability's property).
    pub(crate) first: u32,
    pub(crate) last: u32,
    /// The handles accepted: saved sessions are listed from 0x03000000 but reported with
    /// their session handles (0x02000000 up).
    pub(crate) accept: (u32, u32),
}

/// Transient objects (`TPM_HT_TRANSIENT`).
pub(crate) const TRANSIENT: HandleRange = HandleRange {
    first: 0x8000_0000,
    last: 0x80FF_FFFF,
    accept: (0x8000_0000, 0x80FF_FFFF),
};
/// Persistent objects (`TPM_HT_PERSISTENT`).
pub(crate) const PERSISTENT: HandleRange = HandleRange {
    first: 0x8100_0000,
    last: 0x81FF_FFFF,
    accept: (0x8100_0000, 0x81FF_FFFF),
};
/// Sessions loaded in the TPM (`TPM_HT_LOADED_SESSION`: HMAC and policy sessions).
pub(crate) const LOADED_SESSIONS: HandleRange = HandleRange {
    first: 0x0200_0000,
    last: 0x02FF_FFFF,
    accept: (0x0200_0000, 0x02FF_FFFF),
};
/// Sessions saved out of the TPM but still active (`TPM_HT_SAVED_SESSION`): they hold a
/// session slot until flushed.
pub(crate) const SAVED_SESSIONS: HandleRange = HandleRange {
    first: 0x0300_0000,
    last: 0x03FF_FFFF,
    accept: (0x0200_0000, 0x03FF_FFFF),
};

/// The handles of `range` in the TPM now, every client's.
pub(crate) fn list_handles(
    ctx: &mut Context,
    device: &str,
    op: Operation,
    range: HandleRange,
) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    let mut next = range.first;
    loop {
        let (data, more) = retrying(|| {
            ctx.execute_without_session(|c| c.get_capability(CapabilityType::Handles, next, 64))
        })
        .map_err(mapper(device, op, "TPM2_GetCapability"))?;
        let CapabilityData::Handles(list) = data else {
            return Ok(out);
        };
        let mut last_seen = None;
        for h in list.into_inner() {
            let raw = u32::from(h);
            last_seen = Some(raw);
            if (range.accept.0..=range.accept.1).contains(&raw) {
                out.push(raw);
            }
        }
        match last_seen {
            // Go on from the last handle only while it is in the listed range (a saved
            // session's handle is not: going on from it would list loaded sessions).
            Some(raw) if more && (next..range.last).contains(&raw) => next = raw + 1,
            _ => return Ok(out),
        }
    }
}

/// What [`TpmAdmin::flush`](crate::TpmAdmin::flush) flushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flush {
    /// Transient objects (keys, primaries, sequences).
    pub objects: bool,
    /// Loaded and saved sessions.
    pub sessions: bool,
}

impl Flush {
    /// Objects and sessions.
    pub const ALL: Self = Self {
        objects: true,
        sessions: true,
    };
}

/// Flushes every transient object and/or session in the TPM, whoever made it: on a TPM
/// without a resource manager, what a killed process had loaded stays until flushed. Only on
/// request (`hardkey tpm flush`, `[tpm] flush-leftovers`): other processes' objects go too.
/// Returns the handles flushed; a handle that vanished meanwhile (its owner flushed it) is
/// skipped.
pub(crate) fn flush_all(ctx: &mut Context, device: &str, what: Flush) -> Result<Vec<u32>> {
    let op = Operation::Admin;
    let mut ranges = Vec::new();
    if what.objects {
        ranges.push(TRANSIENT);
    }
    if what.sessions {
        ranges.extend([LOADED_SESSIONS, SAVED_SESSIONS]);
    }
    let mut flushed = Vec::new();
    for range in ranges {
        for handle in list_handles(ctx, device, op, range)? {
            let tpm_handle =
                TpmHandle::try_from(handle).map_err(mapper(device, op, "Esys_TR_FromTPMPublic"))?;
            let object = match retrying(|| {
                ctx.execute_without_session(|c| c.tr_from_tpm_public(tpm_handle))
            }) {
                Ok(object) => object,
                // Flushed by its owner since the listing.
                Err(e) if rc_of(&e).is_some_and(error::is_unloaded_handle) => continue,
                Err(e) => return Err(error::map(device, op, "Esys_TR_FromTPMPublic", e)),
            };
            let mut object = object;
            match retrying(|| ctx.flush_context(object)) {
                Ok(()) => flushed.push(handle),
                Err(e) if rc_of(&e).is_some_and(error::is_unloaded_handle) => {
                    let _ = ctx.tr_close(&mut object);
                }
                Err(e) => return Err(error::map(device, op, "TPM2_FlushContext", e)),
            }
        }
    }
    Ok(flushed)
}

impl Tpm {
    /// Connects: opens the context, and flushes every transient object and session in the
    /// TPM when `flush_leftovers` (asked for in the configuration: on a TPM no other process
    /// uses, objects of a process that died stay loaded). The SRK is looked at only when
    /// needed.
    pub(crate) fn connect(
        tcti: &str,
        owner_auth: Option<Zeroizing<String>>,
        pinned_srk: Option<Vec<u8>>,
        flush_leftovers: bool,
    ) -> Result<Self> {
        let name = format!("TPM at {tcti}");
        let ctx = open_context(tcti, &name)?;
        let mut tpm = Self {
            ctx,
            owner_auth,
            pinned_srk,
            parents: Parents::default(),
            hmac: None,
            name,
        };
        if flush_leftovers {
            flush_all(&mut tpm.ctx, &tpm.name, Flush::ALL)?;
        }
        Ok(tpm)
    }

    /// The transient objects loaded in the TPM now (`TPM2_GetCapability(HANDLES)`).
    pub(crate) fn transient_handles(&mut self) -> Result<Vec<u32>> {
        list_handles(&mut self.ctx, &self.name, Operation::List, TRANSIENT)
    }

    /// The persistent objects of the TPM.
    pub(crate) fn persistent_handles(&mut self) -> Result<Vec<u32>> {
        list_handles(&mut self.ctx, &self.name, Operation::List, PERSISTENT)
    }

    /// An ESAPI object for a handle already in the TPM (reads its public area).
    pub(crate) fn tr_from_public(&mut self, handle: u32, op: Operation) -> Result<ObjectHandle> {
        let tpm_handle =
            TpmHandle::try_from(handle).map_err(mapper(&self.name, op, "Esys_TR_FromTPMPublic"))?;
        retrying(|| {
            self.ctx
                .execute_without_session(|c| c.tr_from_tpm_public(tpm_handle))
        })
        .map_err(mapper(&self.name, op, "Esys_TR_FromTPMPublic"))
    }

    /// The name and saved context of the primary key hardkey's SRK template makes in the
    /// owner hierarchy, created once per connection. Needs the owner auth when the owner
    /// hierarchy has one; the session carrying it is salted.
    fn template_primary(&mut self, op: Operation) -> Result<(Vec<u8>, TpmsContext)> {
        if let Some(primary) = &self.parents.primary {
            return Ok(primary.clone());
        }
        let name = self.name.clone();
        let template = srk_template().map_err(mapper(&name, op, "SRK template"))?;
        self.set_owner_auth(op)?;
        let session = self.owner_session()?;
        let created = retrying(|| {
            self.ctx.execute_with_session(Some(session), |c| {
                c.create_primary(Hierarchy::Owner, template.clone(), None, None, None, None)
            })
        });
        let _ = self.ctx.tr_set_auth(ObjectHandle::Owner, Auth::default());
        let handle = created
            .map_err(|e| owner_auth_error(&name, op, "TPM2_CreatePrimary (SRK)", e))?
            .key_handle;
        let made = flushing(
            &mut self.ctx,
            handle.into(),
            &name,
            op,
            "TPM2_FlushContext",
            |ctx| {
                let primary_name =
                    ctx.tr_get_name(handle.into())
                        .map_err(mapper(&name, op, "Esys_TR_GetName"))?;
                let saved = ctx.context_save(handle.into()).map_err(mapper(
                    &name,
                    op,
                    "TPM2_ContextSave",
                ))?;
                Ok((primary_name.value().to_vec(), saved))
            },
        )?;
        self.parents.primary = Some(made.clone());
        Ok(made)
    }

    /// The persistent SRK at 0x81000001, verified, or `None` when the handle is empty. Its
    /// name must be the template primary's (made to compare: this needs the owner auth when
    /// the owner hierarchy has one) or the pinned name; otherwise it is refused.
    fn persistent_srk(&mut self, op: Operation) -> Result<Option<ObjectHandle>> {
        if let Some(known) = self.parents.persistent {
            return Ok(known);
        }
        if !self.persistent_handles()?.contains(&SRK_HANDLE) {
            self.parents.persistent = Some(None);
            return Ok(None);
        }
        let mut tr = self.tr_from_public(SRK_HANDLE, op)?;
        let name = self.name.clone();
        let found = self
            .ctx
            .tr_get_name(tr)
            .map_err(mapper(&name, op, "Esys_TR_GetName"))?
            .value()
            .to_vec();
        let verdict = match self.pinned_srk.clone() {
            Some(pinned) if pinned == found => Ok(()),
            Some(pinned) => Err(Error::from(
                crate::error::TpmTrustError::PinnedSrkMismatch {
                    device: name.clone(),
                    found: hex::encode(&found),
                    pinned: hex::encode(pinned),
                },
            )),
            None => match self.template_primary(op) {
                Ok((expected, _)) if expected == found => Ok(()),
                Ok((expected, _)) => Err(Error::from(crate::error::TpmTrustError::UntrustedSrk {
                    device: name.clone(),
                    found: hex::encode(&found),
                    expected: hex::encode(expected),
                })),
                Err(e) if e.kind() == hardkey_api::ErrorKind::AuthFailed => Err(Error::from(
                    crate::error::TpmTrustError::SrkNeedsOwnerAuth {
                        device: name.clone(),
                        found: hex::encode(&found),
                        source: Box::new(e),
                    },
                )),
                Err(e) => Err(e),
            },
        };
        if let Err(e) = verdict {
            let _ = self.ctx.tr_close(&mut tr);
            return Err(e);
        }
        self.parents.persistent = Some(Some(tr));
        Ok(Some(tr))
    }

    /// The session authorizing the owner hierarchy: a password session when its auth is
    /// empty (nothing secret crosses the bus), else the salted HMAC session.
    pub(crate) fn owner_session(&mut self) -> Result<AuthSession> {
        if self.owner_auth.is_none() {
            return Ok(AuthSession::Password);
        }
        self.hmac_session()
    }

    /// Sets ESAPI's owner auth to the configured one (for owner-authorized commands).
    pub(crate) fn set_owner_auth(&mut self, op: Operation) -> Result<()> {
        let owner_auth = self.owner_auth.clone();
        self.set_hierarchy_auth(ObjectHandle::Owner, owner_auth.as_ref(), op)
    }

    /// Sets the auth value ESAPI uses for a hierarchy handle.
    pub(crate) fn set_hierarchy_auth(
        &mut self,
        hierarchy: ObjectHandle,
        auth: Option<&Zeroizing<String>>,
        op: Operation,
    ) -> Result<()> {
        let auth = auth_value(auth.map(|a| a.as_bytes()))?;
        self.ctx
            .tr_set_auth(hierarchy, auth)
            .map_err(mapper(&self.name, op, "Esys_TR_SetAuth"))
    }

    /// The parent a new key or sealed object goes under, as key files record it: the
    /// persistent SRK when there is one (verified), else the template primary.
    pub(crate) fn new_object_parent(&mut self, op: Operation) -> Result<u32> {
        Ok(match self.persistent_srk(op)? {
            Some(_) => SRK_HANDLE,
            None => OWNER_PARENT,
        })
    }

    /// Runs `f` with the parent a key file names loaded: the persistent SRK (verified) for
    /// 0x81000001, the template primary for 0x40000001 (loaded from its saved context and
    /// flushed afterwards on every path).
    pub(crate) fn with_parent<T>(
        &mut self,
        parent: u32,
        op: Operation,
        f: impl FnOnce(&mut Self, KeyHandle) -> Result<T>,
    ) -> Result<T> {
        match parent {
            SRK_HANDLE => match self.persistent_srk(op)? {
                Some(tr) => f(self, tr.into()),
                None => Err(Error::not_found(
                    format!("the storage root key at 0x81000001 on {}", self.name),
                    "the key was made under a persistent SRK that is gone (the TPM was \
                     cleared or the SRK evicted): the key cannot be loaded any more",
                )),
            },
            OWNER_PARENT => {
                let (_, saved) = self.template_primary(op)?;
                let name = self.name.clone();
                let handle = retrying(|| self.ctx.context_load(saved.clone())).map_err(|e| {
                    // Our own saved context of the SRK is refused only when the TPM was
                    // reset since (swtpm restarted between two commands, which the swtpm
                    // TCTI does not notice): the connection's state is stale, rebuild it.
                    if rc_of(&e).is_some_and(error::is_stale_context) {
                        Error::device_unavailable(
                            &name,
                            error::TpmError::new("TPM2_ContextLoad (SRK)", e),
                        )
                    } else {
                        error::map(&name, op, "TPM2_ContextLoad (SRK)", e)
                    }
                })?;
                flushing(self, handle, &name, op, "TPM2_FlushContext (SRK)", |tpm| {
                    f(tpm, handle.into())
                })
            }
            other => Err(Error::from(InvalidInput::Malformed {
                what: "TPM key file",
                reason: if other >> 24 == 0x81 {
                    "its parent is a persistent key other than the SRK at 0x81000001, which \
                     hardkey does not load keys under"
                } else {
                    "its parent is neither the owner hierarchy (0x40000001) nor the SRK at \
                     0x81000001"
                },
            })),
        }
    }

    /// Creates an object from `template` with the auth value `auth` (and `sensitive` data,
    /// for sealing) under the parent new objects go under ([`Tpm::new_object_parent`]), in
    /// `session`: the salted HMAC session whenever the auth value or the data must travel
    /// encrypted (decrypt attribute). `command` names `TPM2_Create` in errors. Returns the
    /// parent as key files record it, the public area and the private blob.
    pub(crate) fn create_under_srk(
        &mut self,
        op: Operation,
        command: &'static str,
        session: AuthSession,
        template: &Public,
        auth: &Auth,
        sensitive: Option<&SensitiveData>,
    ) -> Result<(u32, Public, Private)> {
        let parent = self.new_object_parent(op)?;
        let created = self.with_parent(parent, op, |tpm, srk| {
            retrying(|| {
                tpm.ctx.execute_with_session(Some(session), |c| {
                    c.create(
                        srk,
                        template.clone(),
                        Some(auth.clone()),
                        sensitive.cloned(),
                        None,
                        None,
                    )
                })
            })
            .map_err(mapper(&tpm.name, op, command))
        })?;
        Ok((parent, created.out_public, created.out_private))
    }

    /// The HMAC session for commands that carry secrets: salted ([`salted_session`]), with
    /// parameter encryption both ways. Started once and kept (`continueSession`).
    pub(crate) fn hmac_session(&mut self) -> Result<AuthSession> {
        if let Some(s) = self.hmac {
            return Ok(s);
        }
        let session = salted_session(
            &mut self.ctx,
            &self.name,
            Operation::Connect,
            SessionType::Hmac,
            Encryption {
                decrypt: true,
                encrypt: true,
            },
        )?;
        self.hmac = Some(session);
        Ok(session)
    }

    /// The TPM's guaranteed number of loaded transient objects (`TPM_PT_HR_TRANSIENT_MIN`).
    pub(crate) fn transient_slots(&mut self) -> usize {
        self.ctx
            .get_tpm_property(PropertyTag::HrTransientMin)
            .ok()
            .flatten()
            .map_or(3, |n| n as usize)
            .max(2)
    }
}

/// A TPM auth value from secret text (at most 64 bytes here; the TPM's limit is its name
/// hash size).
pub(crate) fn auth_value(secret: Option<&[u8]>) -> Result<Auth> {
    match secret {
        None => Ok(Auth::default()),
        Some(bytes) => Auth::try_from(bytes.to_vec()).map_err(|_| {
            Error::from(InvalidInput::Config {
                what: "auth value",
                reason: "too long for the TPM: use at most 32 bytes (the SHA-256 size)",
            })
        }),
    }
}

/// A persistent handle as tss-esapi wants it.
pub(crate) fn persistent(handle: u32) -> Result<PersistentTpmHandle> {
    PersistentTpmHandle::new(handle).map_err(|_| {
        Error::from(InvalidInput::Config {
            what: "persistent handle",
            reason: "not in the persistent range 0x81000000..=0x81FFFFFF",
        })
    })
}

/// What a [`flushing`] scope runs on: the ESAPI context itself, or the connection around it
/// (when `f` needs the connection's other state).
pub(crate) trait HasContext {
    /// The ESAPI context.
    fn context(&mut self) -> &mut Context;
}

impl HasContext for Context {
    fn context(&mut self) -> &mut Context {
        self
    }
}

impl HasContext for Tpm {
    fn context(&mut self) -> &mut Context {
        &mut self.ctx
    }
}

/// Runs `f`, then flushes `handle` (a transient object or a session hardkey loaded or
/// started) whatever `f` returned: the one way hardkey ends what it loads or starts for one
/// job (keys kept loaded across jobs are the worker's LRU, flushed by eviction and at
/// shutdown). `command` names the flush in errors; `f`'s error wins over a flush error.
pub(crate) fn flushing<H: HasContext, T>(
    holder: &mut H,
    handle: ObjectHandle,
    device: &str,
    op: Operation,
    command: &'static str,
    f: impl FnOnce(&mut H) -> Result<T>,
) -> Result<T> {
    let result = f(holder);
    let flushed = holder
        .context()
        .flush_context(handle)
        .map_err(mapper(device, op, command));
    let value = result?;
    flushed?;
    Ok(value)
}

/// Parameter encryption a session does: `decrypt` protects the command's first parameter,
/// `encrypt` the response's.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Encryption {
    pub(crate) decrypt: bool,
    pub(crate) encrypt: bool,
}

/// Starts a session of `kind` (AES-128-CFB, SHA-256), salted with `salt_key` if given, with
/// `continueSession` and the given parameter encryption. The one way hardkey starts sessions;
/// on an error after the start the session is flushed.
pub(crate) fn start_session(
    ctx: &mut Context,
    device: &str,
    op: Operation,
    salt_key: Option<KeyHandle>,
    kind: SessionType,
    encryption: Encryption,
) -> Result<AuthSession> {
    let session = retrying(|| {
        ctx.start_auth_session(
            salt_key,
            None,
            None,
            kind,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
    })
    .map_err(mapper(device, op, "TPM2_StartAuthSession"))?
    .ok_or_else(|| Error::backend(device, op, "TPM2_StartAuthSession returned no session"))?;
    let (attributes, mask) = SessionAttributesBuilder::new()
        .with_continue_session(true)
        .with_decrypt(encryption.decrypt)
        .with_encrypt(encryption.encrypt)
        .build();
    match ctx.tr_sess_set_attributes(session, attributes, mask) {
        Ok(()) => Ok(session),
        // Not handed out: flushed, and the error returned.
        Err(e) => {
            let handle = tss_esapi::handles::SessionHandle::from(session).into();
            flushing(ctx, handle, device, op, "TPM2_FlushContext", |_| {
                Err(mapper(device, op, "Esys_TRSess_SetAttributes")(e))
            })
        }
    }
}

/// Starts a session of `kind` salted with a primary key made for the purpose in the null
/// hierarchy (from the SRK template; no auth needed, whatever the owner auth) and flushed
/// before this returns. The one way hardkey salts sessions: the key is hardkey's own, made
/// just now, never something found in the TPM.
pub(crate) fn salted_session(
    ctx: &mut Context,
    device: &str,
    op: Operation,
    kind: SessionType,
    encryption: Encryption,
) -> Result<AuthSession> {
    let template = srk_template().map_err(mapper(device, op, "salt key template"))?;
    let salt_key = retrying(|| {
        ctx.execute_with_session(Some(AuthSession::Password), |c| {
            c.create_primary(Hierarchy::Null, template.clone(), None, None, None, None)
        })
    })
    .map_err(mapper(
        device,
        op,
        "TPM2_CreatePrimary (null hierarchy salt key)",
    ))?
    .key_handle;
    flushing(
        ctx,
        salt_key.into(),
        device,
        op,
        "TPM2_FlushContext",
        |ctx| start_session(ctx, device, op, Some(salt_key), kind, encryption),
    )
}

/// An error of an owner-authorized command: a refused auth names the owner hierarchy and
/// where its auth value comes from.
pub(crate) fn owner_auth_error(
    device: &str,
    op: Operation,
    command: &'static str,
    e: tss_esapi::Error,
) -> Error {
    match crate::error::map(device, op, command, e) {
        Error::AuthFailed { source, .. } => Error::AuthFailed {
            target: format!(
                "the owner hierarchy of {device} (give its auth value with --owner-auth-file \
                 or HARDKEY_OWNER_AUTH; library: TpmConfig::owner_auth)"
            ),
            source,
        },
        other => other,
    }
}
