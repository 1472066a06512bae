//! Sealing: up to 128 bytes (a disk key, an API token) kept in a TPM object only this TPM
//! can unseal, protected by a password, a PCR policy, or both.
//!
//! The sealed object is a KeyedHash object (no sign or decrypt attribute) created under the
//! storage root key, saved as a `TSS2 PRIVATE KEY` file of type sealed data
//! (2.23.133.10.1.5), with the policy it was made with in the file's `policy` field.
//!
//! * Password only: `userWithAuth` is set and the password is the object's auth value,
//!   proven at unseal time with an HMAC session (it never crosses the bus).
//! * PCRs: the authPolicy is `TPM2_PolicyPCR` over the PCR values at sealing time, computed
//!   with a trial session; `userWithAuth` is clear, so only a policy session that passes it
//!   unseals. With a password too, the policy adds `TPM2_PolicyAuthValue` (not
//!   `PolicyPassword`: the password is proven by the session HMAC, never sent in clear).
//!
//! The data travels encrypted both ways: into `TPM2_Create` under the SRK-salted HMAC session
//! (decrypt attribute), out of `TPM2_Unseal` under a session salted with the SRK that has the
//! encrypt attribute (the policy session itself, or an HMAC session for password-only data).

use std::collections::BTreeMap;
use std::path::Path;

use hardkey_api::secret::SecretSource;
use hardkey_api::{Error, InvalidInput, Operation, Result};
use sha2::Digest as _;
use tss_esapi::Context;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{KeyHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Digest, KeyedHashScheme, Public, PublicBuilder, PublicKeyedHashParameters, SensitiveData,
};
use zeroize::Zeroizing;

use crate::connect::{Encryption, Tpm, auth_value, flushing, retrying, start_session};
use crate::error::{self, SealError, TpmError, mapper, rc_of};
use crate::keyfile::{KeyFile, KeyFileKind, PolicyStep};
use crate::pcr::{PcrBank, PcrSelection};

/// The most data a TPM seals (`MAX_SYM_DATA` of the reference implementation).
pub const MAX_SEAL_SIZE: usize = 128;

/// The operation named in errors.
const OP: Operation = Operation::Admin;

/// How to protect sealed data.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SealOptions {
    /// The password (the object's auth value); [`SecretSource::None`] for none.
    pub auth: SecretSource,
    /// The PCRs whose current values the data is bound to; `None` for no PCR policy.
    pub pcrs: Option<PcrSelection>,
}

impl Default for SealOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl SealOptions {
    /// No password and no PCR policy: anyone with the file and this TPM can unseal. Add at
    /// least one of them.
    pub fn new() -> Self {
        Self {
            auth: SecretSource::None,
            pcrs: None,
        }
    }

    /// Protects the data with a password.
    pub fn auth(mut self, source: SecretSource) -> Self {
        self.auth = source;
        self
    }

    /// Binds the data to the current values of these PCRs.
    pub fn pcrs(mut self, pcrs: PcrSelection) -> Self {
        self.pcrs = Some(pcrs);
        self
    }
}

/// Sealed data: the TPM object's blobs and the policy it was made with. Not secret by
/// itself (the private blob is encrypted by the storage root key), but only useful on the
/// TPM that sealed it.
#[derive(Clone, Debug)]
pub struct SealedData {
    file: KeyFile,
}

impl SealedData {
    /// Wraps a key file holding sealed data (refuses one holding a key).
    pub fn from_key_file(file: KeyFile) -> Result<Self> {
        if file.kind != KeyFileKind::Sealed {
            return Err(InvalidInput::Malformed {
                what: "sealed data file",
                reason: "it holds a TPM key, not sealed data; use it as a key (a tpm2: URI)",
            }
            .into());
        }
        Ok(Self { file })
    }

    /// The key file.
    pub fn key_file(&self) -> &KeyFile {
        &self.file
    }

    /// The PCRs the data is bound to, if any.
    pub fn pcrs(&self) -> Option<&PcrSelection> {
        self.file.policy.iter().find_map(|step| match step {
            PolicyStep::Pcr { pcrs, .. } => Some(pcrs),
            _ => None,
        })
    }

    /// Whether unsealing needs a password.
    pub fn needs_auth(&self) -> bool {
        !self.file.empty_auth
    }

    /// The `TSS2 PRIVATE KEY` PEM text.
    pub fn to_pem(&self) -> Result<String> {
        self.file.to_pem()
    }

    /// Parses `TSS2 PRIVATE KEY` PEM text; `origin` names it in errors.
    pub fn from_pem(text: &str, origin: &str) -> Result<Self> {
        Self::from_key_file(KeyFile::from_pem(text, origin)?)
    }

    /// Writes the PEM to a new file (mode 0600; an existing file is never replaced).
    pub fn write(&self, path: &Path) -> Result<()> {
        let pem = self.to_pem()?;
        hardkey_api::fs::write_new_file(path, pem.as_bytes(), "sealed data", OP)
    }

    /// Reads a file written by [`SealedData::write`] (or by tpm2-tss-engine tools).
    pub fn read(path: &Path) -> Result<Self> {
        let text = hardkey_api::fs::read_key_file(path, "sealed data")?;
        Self::from_pem(&text, &path.display().to_string())
    }
}

/// Seals `data` under the SRK.
pub(crate) fn seal(tpm: &mut Tpm, data: &[u8], options: &SealOptions) -> Result<SealedData> {
    if data.len() > MAX_SEAL_SIZE {
        return Err(InvalidInput::Config {
            what: "data to seal",
            reason: "longer than 128 bytes, the most a TPM seals; seal a random key of at most \
                     128 bytes instead and encrypt the data with it",
        }
        .into());
    }
    if data.is_empty() {
        return Err(InvalidInput::Config {
            what: "data to seal",
            reason: "empty: there is nothing to seal",
        }
        .into());
    }
    let name = tpm.name.clone();
    let auth = options.auth.load(&name)?;
    let mut policy = Vec::new();
    if let Some(pcrs) = &options.pcrs {
        let pcr_digest = pcr_digest(&mut tpm.ctx, &name, pcrs)?;
        policy.push(PolicyStep::Pcr {
            pcr_digest,
            pcrs: pcrs.clone(),
        });
        if auth.is_some() {
            policy.push(PolicyStep::AuthValue);
        }
    }
    let auth_policy = if policy.is_empty() {
        None
    } else {
        Some(trial_policy(&mut tpm.ctx, &name, &policy)?)
    };
    let template = sealed_template(auth_policy).map_err(mapper(&name, OP, "sealed template"))?;
    let auth_value = auth_value(auth.as_ref().map(|a| a.as_bytes()))?;
    let sensitive =
        SensitiveData::try_from(data.to_vec()).map_err(mapper(&name, OP, "sealed data"))?;
    // The data and the auth value travel encrypted (salted session, decrypt attribute).
    let session = tpm.hmac_session()?;
    let (parent, public, private) = tpm.create_under_srk(
        OP,
        "TPM2_Create (sealed data)",
        session,
        &template,
        &auth_value,
        Some(&sensitive),
    )?;
    Ok(SealedData {
        file: KeyFile {
            kind: KeyFileKind::Sealed,
            empty_auth: auth.is_none(),
            parent,
            public,
            private,
            policy,
        },
    })
}

/// Unseals: loads the object under the SRK (flushed on every path), satisfies its policy in
/// a salted policy session (or proves its password in a salted HMAC session) whose encrypt
/// attribute protects the data on its way out.
pub(crate) fn unseal(
    tpm: &mut Tpm,
    sealed: &SealedData,
    auth: &SecretSource,
) -> Result<Zeroizing<Vec<u8>>> {
    let name = tpm.name.clone();
    let file = &sealed.file;
    // An object with an empty auth value: a password given anyway is not used.
    let auth = if file.empty_auth {
        None
    } else {
        Some(auth.load(&name)?.ok_or_else(|| Error::AuthFailed {
            target: format!("sealed data on {name}"),
            source: "the data was sealed with a password and none was given".into(),
        })?)
    };
    let auth = auth_value(auth.as_ref().map(|a| a.as_bytes()))?;
    tpm.with_parent(file.parent, OP, |tpm, srk| {
        let loaded = retrying(|| {
            tpm.ctx
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.load(srk, file.private.clone(), file.public.clone())
                })
        })
        .map_err(|e| load_error(&name, e))?;
        flushing(
            &mut tpm.ctx,
            loaded.into(),
            &name,
            OP,
            "TPM2_FlushContext",
            |ctx| {
                ctx.tr_set_auth(loaded.into(), auth).map_err(mapper(
                    &name,
                    OP,
                    "Esys_TR_SetAuth",
                ))?;
                let kind = if file.policy.is_empty() {
                    SessionType::Hmac
                } else {
                    SessionType::Policy
                };
                let session = salted_session(ctx, &name, srk, kind)?;
                let handle = SessionHandle::from(session).into();
                flushing(ctx, handle, &name, OP, "TPM2_FlushContext", |ctx| {
                    if let Ok(policy_session) = PolicySession::try_from(session) {
                        run_policy(ctx, &name, policy_session, &file.policy)?;
                    }
                    let data = retrying(|| {
                        ctx.execute_with_session(Some(session), |c| c.unseal(loaded.into()))
                    })
                    .map_err(|e| unseal_error(&name, sealed, e))?;
                    Ok(Zeroizing::new(data.value().to_vec()))
                })
            },
        )
    })
}

/// A session salted with the SRK, encrypting the response (`continueSession`: it is flushed
/// by the caller).
fn salted_session(
    ctx: &mut Context,
    name: &str,
    srk: KeyHandle,
    kind: SessionType,
) -> Result<AuthSession> {
    start_session(
        ctx,
        name,
        OP,
        Some(srk),
        kind,
        Encryption {
            decrypt: false,
            encrypt: true,
        },
    )
}

/// The template of a sealed data object: KeyedHash with the NULL scheme and neither sign
/// nor decrypt, fixedTPM/fixedParent, data given by the caller (sensitiveDataOrigin clear),
/// dictionary-attack protected. With a policy, `userWithAuth` is clear: the policy
/// (which includes `PolicyAuthValue` when there is a password) is the only way in.
fn sealed_template(auth_policy: Option<Digest>) -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_user_with_auth(auth_policy.is_none())
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(auth_policy.unwrap_or_default())
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
}

/// The digest `TPM2_PolicyPCR` compares: SHA-256 (the policy session's hash) of the
/// selected PCR values, concatenated in selection order.
fn pcr_digest(ctx: &mut Context, name: &str, pcrs: &PcrSelection) -> Result<Vec<u8>> {
    let mut remaining = pcrs.to_tss().map_err(mapper(name, OP, "PCR selection"))?;
    let mut values = BTreeMap::<(PcrBank, u8), Vec<u8>>::new();
    while !remaining.is_empty() {
        let (_, read, digests) =
            retrying(|| ctx.execute_without_session(|c| c.pcr_read(remaining.clone())))
                .map_err(mapper(name, OP, "TPM2_PCR_Read"))?;
        if digests.value().is_empty() {
            break;
        }
        let mut digests = digests.value().iter();
        for selection in read.get_selections() {
            let Some(bank) = pcrs
                .banks()
                .find(|b| b.hashing_algorithm() == selection.hashing_algorithm())
            else {
                continue;
            };
            for slot in selection.selected() {
                let index = u32::from(slot).trailing_zeros() as u8;
                if let Some(value) = digests.next() {
                    values.insert((bank, index), value.value().to_vec());
                }
            }
        }
        remaining
            .subtract(&read)
            .map_err(mapper(name, OP, "TPM2_PCR_Read"))?;
    }
    let mut hash = sha2::Sha256::new();
    for slot in pcrs.slots() {
        let value = values.get(&slot).ok_or_else(|| {
            Error::from(InvalidInput::Config {
                what: "PCR selection",
                reason: "the TPM did not return every selected PCR: is that PCR bank active? \
                         (tpm2_getcap pcrs lists the active banks)",
            })
        })?;
        hash.update(value);
    }
    Ok(hash.finalize().to_vec())
}

/// The authPolicy of `steps`, from a trial session.
fn trial_policy(ctx: &mut Context, name: &str, steps: &[PolicyStep]) -> Result<Digest> {
    let session = start_session(
        ctx,
        name,
        OP,
        None,
        SessionType::Trial,
        Encryption::default(),
    )?;
    flushing(
        ctx,
        SessionHandle::from(session).into(),
        name,
        OP,
        "TPM2_FlushContext",
        |ctx| {
            let policy_session = PolicySession::try_from(session).map_err(mapper(
                name,
                OP,
                "TPM2_StartAuthSession (trial)",
            ))?;
            run_policy(ctx, name, policy_session, steps)?;
            retrying(|| ctx.execute_without_session(|c| c.policy_get_digest(policy_session)))
                .map_err(mapper(name, OP, "TPM2_PolicyGetDigest"))
        },
    )
}

/// Sends the policy commands of `steps` to a policy (or trial) session.
fn run_policy(
    ctx: &mut Context,
    name: &str,
    session: PolicySession,
    steps: &[PolicyStep],
) -> Result<()> {
    for step in steps {
        match step {
            PolicyStep::Pcr { pcr_digest, pcrs } => {
                let command = "TPM2_PolicyPCR";
                let digest =
                    Digest::try_from(pcr_digest.clone()).map_err(mapper(name, OP, command))?;
                let list = pcrs.to_tss().map_err(mapper(name, OP, command))?;
                retrying(|| {
                    ctx.execute_without_session(|c| {
                        c.policy_pcr(session, digest.clone(), list.clone())
                    })
                })
                .map_err(|e| match rc_of(&e) {
                    // The current PCR digest differs from the one sealed with.
                    Some(rc) if error::is_value(rc) => pcr_changed(name, pcrs, command, e),
                    _ => error::map(name, OP, command, e),
                })?;
            }
            PolicyStep::AuthValue => {
                retrying(|| ctx.execute_without_session(|c| c.policy_auth_value(session)))
                    .map_err(mapper(name, OP, "TPM2_PolicyAuthValue"))?;
            }
        }
    }
    Ok(())
}

fn pcr_changed(
    name: &str,
    pcrs: &PcrSelection,
    command: &'static str,
    error: tss_esapi::Error,
) -> Error {
    Error::backend(
        name,
        OP,
        SealError::PcrChanged {
            pcrs: pcrs.to_string(),
            cause: TpmError::new(command, error),
        },
    )
}

fn unseal_error(name: &str, sealed: &SealedData, e: tss_esapi::Error) -> Error {
    let command = "TPM2_Unseal";
    match (rc_of(&e), sealed.pcrs()) {
        (Some(rc), Some(pcrs)) if error::is_policy_failure(rc) => {
            pcr_changed(name, pcrs, command, e)
        }
        _ => error::map(name, OP, command, e),
    }
}

fn load_error(name: &str, e: tss_esapi::Error) -> Error {
    let command = "TPM2_Load (sealed data)";
    match rc_of(&e) {
        Some(rc) if error::is_integrity(rc) => Error::backend(
            name,
            OP,
            SealError::OtherParent {
                cause: TpmError::new(command, e),
            },
        ),
        _ => error::map(name, OP, command, e),
    }
}
