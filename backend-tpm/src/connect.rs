//! The connection to one TPM: the ESAPI context, the storage root key and the salted HMAC
//! session, owned by one thread.
//!
//! A TPM executes one command at a time, so hardkey drives it from a single worker thread
//! that owns this state; the pool's bounded queue in front of it gives backpressure.

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
    Auth, CapabilityData, EccPoint, EccScheme, KeyDerivationFunctionScheme, Public, PublicBuilder,
    PublicEccParametersBuilder, SymmetricDefinition, SymmetricDefinitionObject,
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

/// The storage root key: the standard ECC P-256 primary of the owner hierarchy, used from its
/// persistent handle when present, else created and kept as a saved context (it needs a
/// transient slot only while a key is loaded under it or a session is salted with it).
pub(crate) enum Srk {
    Persistent { tr: ObjectHandle },
    Transient { saved: TpmsContext },
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
/// `TESTING` or `NV_RATE` (a few times, with a short pause).
pub(crate) fn retrying<T>(
    mut command: impl FnMut() -> tss_esapi::Result<T>,
) -> tss_esapi::Result<T> {
    let mut attempt = 0u32;
    loop {
        match command() {
            Err(e) if attempt < 8 && rc_of(&e).is_some_and(error::is_transient) => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(5 << attempt.min(6)));
            }
            other => return other,
        }
    }
}

/// One connection to a TPM.
pub(crate) struct Tpm {
    pub(crate) ctx: Context,
    /// "TPM at <tcti>", for messages.
    pub(crate) name: String,
    /// Set by [`Tpm::connect`] before it returns.
    srk: Option<Srk>,
    hmac: Option<AuthSession>,
}

impl std::fmt::Debug for Tpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tpm").field("name", &self.name).finish()
    }
}

/// Opens an ESAPI context on `tcti`.
pub(crate) fn open_context(tcti: &str, name: &str) -> Result<Context> {
    let conf = TctiNameConf::from_str(tcti).map_err(|_| InvalidInput::Config {
        what: "TCTI",
        reason: "not a TCTI string; use device:/dev/tpmrm0, swtpm:host=HOST,port=PORT, \
                 mssim:host=HOST,port=PORT or tabrmd",
    })?;
    Context::new(conf).map_err(|e| {
        // Whatever the layer, failing to open the context means the TPM is not reachable.
        Error::device_unavailable(
            name,
            crate::error::TpmError {
                command: "Esys_Initialize (opening the TCTI)",
                error: e,
            },
        )
    })
}

impl Tpm {
    /// Connects: opens the context, flushes objects a dead process left on a TPM without a
    /// resource manager (when `flush_leftovers`), and finds or creates the SRK.
    pub(crate) fn connect(
        tcti: &str,
        owner_auth: Option<&Zeroizing<String>>,
        flush_leftovers: bool,
    ) -> Result<Self> {
        let name = format!("TPM at {tcti}");
        let ctx = open_context(tcti, &name)?;
        let mut tpm = Self {
            ctx,
            srk: None,
            hmac: None,
            name,
        };
        if flush_leftovers {
            tpm.flush_transients()?;
        }
        tpm.srk = Some(tpm.find_or_create_srk(owner_auth)?);
        Ok(tpm)
    }

    /// Flushes every transient object loaded in the TPM: on a TPM without a resource
    /// manager, objects of a process that died stay loaded and fill the ~3 slots.
    pub(crate) fn flush_transients(&mut self) -> Result<usize> {
        let handles = self.transient_handles()?;
        for &h in &handles {
            let name = self.name.clone();
            let tr = self.tr_from_public(h, Operation::Connect)?;
            self.ctx.flush_context(tr).map_err(mapper(
                &name,
                Operation::Connect,
                "TPM2_FlushContext",
            ))?;
        }
        Ok(handles.len())
    }

    /// The transient objects loaded in the TPM now (`TPM2_GetCapability(HANDLES)`).
    pub(crate) fn transient_handles(&mut self) -> Result<Vec<u32>> {
        self.handles(0x8000_0000, 0x80FF_FFFF)
    }

    /// The persistent objects of the TPM.
    pub(crate) fn persistent_handles(&mut self) -> Result<Vec<u32>> {
        self.handles(0x8100_0000, 0x81FF_FFFF)
    }

    fn handles(&mut self, first: u32, last: u32) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        let mut next = first;
        loop {
            let (data, more) = retrying(|| {
                self.ctx.execute_without_session(|c| {
                    c.get_capability(CapabilityType::Handles, next, 64)
                })
            })
            .map_err(mapper(&self.name, Operation::List, "TPM2_GetCapability"))?;
            let CapabilityData::Handles(list) = data else {
                break;
            };
            let mut last_seen = None;
            for h in list.into_inner() {
                let raw = u32::from(h);
                last_seen = Some(raw);
                if (first..=last).contains(&raw) {
                    out.push(raw);
                }
            }
            match last_seen {
                Some(raw) if more && raw < last => next = raw + 1,
                _ => break,
            }
        }
        Ok(out)
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

    fn find_or_create_srk(&mut self, owner_auth: Option<&Zeroizing<String>>) -> Result<Srk> {
        if self.persistent_handles()?.contains(&SRK_HANDLE) {
            let tr = self.tr_from_public(SRK_HANDLE, Operation::Connect)?;
            return Ok(Srk::Persistent { tr });
        }
        let handle = self.create_srk(owner_auth)?;
        let name = self.name.clone();
        let saved = self.ctx.context_save(handle.into()).map_err(mapper(
            &name,
            Operation::Connect,
            "TPM2_ContextSave",
        ));
        let flushed = self.ctx.flush_context(handle.into()).map_err(mapper(
            &name,
            Operation::Connect,
            "TPM2_FlushContext",
        ));
        let saved = saved?;
        flushed?;
        Ok(Srk::Transient { saved })
    }

    /// `TPM2_CreatePrimary` of the SRK template under the owner hierarchy.
    fn create_srk(&mut self, owner_auth: Option<&Zeroizing<String>>) -> Result<KeyHandle> {
        let name = self.name.clone();
        let template = srk_template().map_err(mapper(&name, Operation::Connect, "SRK template"))?;
        self.set_hierarchy_auth(ObjectHandle::Owner, owner_auth, Operation::Connect)?;
        let session = self.owner_session(owner_auth)?;
        let created = retrying(|| {
            self.ctx.execute_with_session(Some(session), |c| {
                c.create_primary(Hierarchy::Owner, template.clone(), None, None, None, None)
            })
        });
        self.end_session(session);
        Ok(created
            .map_err(mapper(
                &name,
                Operation::Connect,
                "TPM2_CreatePrimary (SRK)",
            ))?
            .key_handle)
    }

    /// The session authorizing a hierarchy: a password session when its auth is empty, else
    /// an unsalted HMAC session (the auth value never crosses the bus).
    pub(crate) fn owner_session(
        &mut self,
        auth: Option<&Zeroizing<String>>,
    ) -> Result<AuthSession> {
        if auth.is_none() {
            return Ok(AuthSession::Password);
        }
        start_session(
            &mut self.ctx,
            &self.name,
            Operation::Admin,
            None,
            SessionType::Hmac,
            Encryption::default(),
        )
    }

    /// Flushes a session from [`Tpm::owner_session`] (nothing for the password session).
    pub(crate) fn end_session(&mut self, session: AuthSession) {
        if session != AuthSession::Password {
            let handle = tss_esapi::handles::SessionHandle::from(session);
            // A flush failure here leaves a session slot used until the context drops; the
            // command's own result matters more.
            let _ = self.ctx.flush_context(handle.into());
        }
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

    /// The parent handle recorded in key files made under our SRK.
    pub(crate) fn parent_number(&self) -> u32 {
        match self.srk {
            Some(Srk::Persistent { .. }) => SRK_HANDLE,
            _ => OWNER_PARENT,
        }
    }

    /// Runs `f` with the SRK loaded (for a transient SRK: loaded from its saved context and
    /// flushed afterwards on every path).
    pub(crate) fn with_srk<T>(
        &mut self,
        op: Operation,
        f: impl FnOnce(&mut Self, KeyHandle) -> Result<T>,
    ) -> Result<T> {
        match &self.srk {
            None => Err(Error::backend(&self.name, op, "the SRK is not set up")),
            Some(Srk::Persistent { tr }) => {
                let tr = *tr;
                f(self, tr.into())
            }
            Some(Srk::Transient { saved }) => {
                let saved = saved.clone();
                let name = self.name.clone();
                let handle = retrying(|| self.ctx.context_load(saved.clone())).map_err(mapper(
                    &name,
                    op,
                    "TPM2_ContextLoad (SRK)",
                ))?;
                let result = f(self, handle.into());
                let flushed = self.ctx.flush_context(handle).map_err(mapper(
                    &name,
                    op,
                    "TPM2_FlushContext (SRK)",
                ));
                let value = result?;
                flushed?;
                Ok(value)
            }
        }
    }

    /// The HMAC session salted with the SRK, with parameter encryption both ways, for
    /// commands that carry secrets. Started once and kept (`continueSession`).
    pub(crate) fn hmac_session(&mut self) -> Result<AuthSession> {
        if let Some(s) = self.hmac {
            return Ok(s);
        }
        let session = self.with_srk(Operation::Connect, |tpm, srk| {
            start_session(
                &mut tpm.ctx,
                &tpm.name,
                Operation::Connect,
                Some(srk),
                SessionType::Hmac,
                Encryption {
                    decrypt: true,
                    encrypt: true,
                },
            )
        })?;
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

/// Runs `f`, then flushes `handle` (a transient object or a session hardkey started) whatever
/// `f` returned: the one way admin code (sealing, ownership) ends what it loads or starts.
/// `f`'s error wins over a flush error.
pub(crate) fn flushing<T>(
    ctx: &mut Context,
    handle: ObjectHandle,
    device: &str,
    op: Operation,
    f: impl FnOnce(&mut Context) -> Result<T>,
) -> Result<T> {
    let result = f(ctx);
    let flushed = ctx
        .flush_context(handle)
        .map_err(mapper(device, op, "TPM2_FlushContext"));
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
    if let Err(e) = ctx.tr_sess_set_attributes(session, attributes, mask) {
        let _ = ctx.flush_context(tss_esapi::handles::SessionHandle::from(session).into());
        return Err(mapper(device, op, "Esys_TRSess_SetAttributes")(e));
    }
    Ok(session)
}
