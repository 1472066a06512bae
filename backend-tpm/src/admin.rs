//! [`TpmAdmin`]: a direct, synchronous connection for administration (the CLI's `tpm`
//! commands): status, ownership, dictionary-attack settings, sealing.

use std::fmt;

use hardkey_api::secret::SecretSource;
use hardkey_api::{Operation, Result};
use tss_esapi::Context;
use zeroize::Zeroizing;

use crate::ak::{self, AkInfo};
use crate::attest::Evidence;
use crate::connect::{Flush, Tpm, open_context};
use crate::ffi::{self, DaCommand};
use crate::owner::{self, Hierarchy, TpmStatus};
use crate::seal::{self, SealOptions, SealedData};

/// The connection, opened on demand: a bare ESAPI context for hierarchy and capability
/// commands, upgraded to a full [`Tpm`] (with the SRK) for sealing.
enum Conn {
    Closed,
    Bare(Context),
    Full(Box<Tpm>),
}

/// A direct connection to one TPM for administration, outside any key store.
///
/// Every method **blocks** the calling thread for the TPM round trips (milliseconds on a
/// TPM, more for the primary keys sealing may create): call it from a CLI, before an event
/// loop starts, or on a blocking thread. It never flushes objects other processes left
/// loaded.
///
/// On a TPM that serves one connection at a time (swtpm, `/dev/tpm0` without the resource
/// manager), nothing else can talk to the TPM while a `TpmAdmin` is connected: drop it first
/// (or close a [`TpmStore`](crate::TpmStore) on the same TPM before connecting). The
/// dictionary-attack commands open their own connection and close this one first; the next
/// call reconnects.
pub struct TpmAdmin {
    tcti: String,
    name: String,
    /// The owner auth, needed to create the SRK when it is not persistent; kept current by
    /// [`TpmAdmin::take_ownership`], [`TpmAdmin::change_auth`] and [`TpmAdmin::clear`].
    owner_auth: Option<Zeroizing<String>>,
    /// The pinned name of the persistent SRK ([`TpmConfig::srk_name`](crate::TpmConfig)).
    srk_name: Option<Vec<u8>>,
    conn: Conn,
}

impl fmt::Debug for TpmAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmAdmin")
            .field("tpm", &self.name)
            .field(
                "owner_auth",
                &self.owner_auth.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

impl TpmAdmin {
    /// Connects to the TPM at `tcti` (`device:/dev/tpmrm0`, `swtpm:host=H,port=P`...), with
    /// the owner auth from `owner_auth` ([`SecretSource::None`] when it is empty). Blocks.
    pub fn connect(tcti: &str, owner_auth: &SecretSource) -> Result<Self> {
        let name = format!("TPM at {tcti}");
        let owner_auth = owner_auth.load(&name)?;
        let ctx = open_context(tcti, &name)?;
        Ok(Self {
            tcti: tcti.to_owned(),
            name,
            owner_auth,
            srk_name: None,
            conn: Conn::Bare(ctx),
        })
    }

    /// Pins the persistent SRK's name for sealing and unsealing, as
    /// [`TpmConfig::srk_name`](crate::TpmConfig::srk_name) does for a store.
    pub fn with_srk_name(mut self, name: Option<Vec<u8>>) -> Self {
        self.srk_name = name;
        self
    }

    /// `TPM at <tcti>`, as errors name it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Ownership and dictionary-attack state. Blocks.
    pub fn status(&mut self) -> Result<TpmStatus> {
        self.with_context(owner::status)
    }

    /// Sets the owner, endorsement and lockout auths of a TPM whose auths are all empty
    /// (refused, pointing to [`TpmAdmin::change_auth`], when any is set, except to finish a
    /// take-ownership with the same auths that was interrupted before the lockout auth). A
    /// [`SecretSource::None`] leaves that auth empty. The new values travel encrypted
    /// (`TPM2_HierarchyChangeAuth` under a salted HMAC session). Blocks.
    pub fn take_ownership(
        &mut self,
        owner: &SecretSource,
        endorsement: &SecretSource,
        lockout: &SecretSource,
    ) -> Result<()> {
        let owner = owner.load(&self.name)?;
        let endorsement = endorsement.load(&self.name)?;
        let lockout = lockout.load(&self.name)?;
        self.with_context(|ctx, name| {
            owner::take_ownership(
                ctx,
                name,
                [
                    (Hierarchy::Owner, owner.as_ref()),
                    (Hierarchy::Endorsement, endorsement.as_ref()),
                    (Hierarchy::Lockout, lockout.as_ref()),
                ],
            )
        })?;
        if owner.is_some() {
            self.owner_auth = owner;
        }
        Ok(())
    }

    /// Changes a hierarchy's auth from `current` to `new` ([`SecretSource::None`]: empty),
    /// the new value encrypted on the bus. Blocks.
    pub fn change_auth(
        &mut self,
        hierarchy: Hierarchy,
        current: &SecretSource,
        new: &SecretSource,
    ) -> Result<()> {
        let current = current.load(&self.name)?;
        let new = new.load(&self.name)?;
        self.with_context(|ctx, name| {
            owner::change_auth(ctx, name, hierarchy, current.as_ref(), new.as_ref())
        })?;
        if hierarchy == Hierarchy::Owner {
            self.owner_auth = new;
        }
        Ok(())
    }

    /// `TPM2_Clear` with the lockout auth: all hierarchy auths empty, the owner and
    /// endorsement seeds replaced, so every key and sealed object made under them (the SRK
    /// too) is gone for good. Blocks.
    pub fn clear(&mut self, lockout_auth: &SecretSource) -> Result<()> {
        let lockout = lockout_auth.load(&self.name)?;
        self.with_context(|ctx, name| owner::clear(ctx, name, lockout.as_ref()))?;
        self.owner_auth = None;
        // The SRK and the sessions salted with it are gone: reconnect on the next call.
        self.conn = Conn::Closed;
        Ok(())
    }

    /// `TPM2_DictionaryAttackLockReset` with the lockout auth: the failure counter back to 0
    /// and the lockout ended. Closes this connection and uses its own (the next call
    /// reconnects). Blocks.
    pub fn reset_lockout(&mut self, lockout_auth: &SecretSource) -> Result<()> {
        self.dictionary_attack(lockout_auth, DaCommand::LockReset)
    }

    /// `TPM2_DictionaryAttackParameters` with the lockout auth: lockout after `max_tries`
    /// failures, one failure forgotten every `recovery_time_s` seconds (0 turns
    /// dictionary-attack protection off), and `lockout_recovery_s` seconds to wait after a
    /// failed lockout authorization. Closes this connection and uses its own. Blocks.
    pub fn set_lockout_parameters(
        &mut self,
        lockout_auth: &SecretSource,
        max_tries: u32,
        recovery_time_s: u32,
        lockout_recovery_s: u32,
    ) -> Result<()> {
        self.dictionary_attack(
            lockout_auth,
            DaCommand::Parameters {
                max_tries,
                recovery_time_s,
                lockout_recovery_s,
            },
        )
    }

    /// Seals up to [`MAX_SEAL_SIZE`](crate::MAX_SEAL_SIZE) bytes under the storage root key,
    /// with the password and PCR policy of `options`. Blocks.
    pub fn seal(&mut self, data: &[u8], options: &SealOptions) -> Result<SealedData> {
        self.with_tpm(|tpm| seal::seal(tpm, data, options))
    }

    /// Unseals data sealed on this TPM, with its password when it has one. Fails with a
    /// [`SealError::PcrChanged`](crate::SealError::PcrChanged) cause when the PCRs changed
    /// since sealing, and [`ErrorKind::AuthFailed`](hardkey_api::ErrorKind::AuthFailed) on a
    /// wrong password (which counts against dictionary-attack protection). Blocks.
    pub fn unseal(
        &mut self,
        sealed: &SealedData,
        auth: &SecretSource,
    ) -> Result<Zeroizing<Vec<u8>>> {
        self.with_tpm(|tpm| seal::unseal(tpm, sealed, auth))
    }

    /// Makes an attestation key (a restricted signing key, `algorithm` p256 or rsa2048)
    /// under the endorsement key made from the TCG EK template, and keeps it at the
    /// persistent handle or in the new key file `home` names (an existing handle or file is
    /// refused). The endorsement hierarchy's auth authorizes the EK and its policy; making
    /// the AK persistent takes the owner auth given at [`TpmAdmin::connect`]. Blocks.
    pub fn create_ak(
        &mut self,
        algorithm: hardkey_api::KeyAlgorithm,
        home: &hardkey_api::Tpm2Key,
        endorsement_auth: &SecretSource,
    ) -> Result<AkInfo> {
        let endorsement = endorsement_auth.load(&self.name)?;
        self.with_tpm(|tpm| ak::create_ak(tpm, algorithm, home, endorsement.as_ref()))
    }

    /// `TPM2_Certify` of `key` (a persistent handle or a key file, its auth value from
    /// `key_auth`) by the attestation key `ak` (made by [`TpmAdmin::create_ak`], or any
    /// restricted signing key at a persistent handle), with `nonce` (at most 64 bytes) as
    /// qualifying data. The evidence also carries the TPM's EK certificate when its NV index
    /// holds one. Check it with [`Evidence::verify`]. Blocks.
    pub fn certify(
        &mut self,
        key: &hardkey_api::Tpm2Key,
        key_auth: &SecretSource,
        ak: &hardkey_api::Tpm2Key,
        endorsement_auth: &SecretSource,
        nonce: &[u8],
    ) -> Result<Evidence> {
        let key_auth = key_auth.load(&self.name)?;
        let endorsement = endorsement_auth.load(&self.name)?;
        self.with_tpm(|tpm| {
            ak::certify(tpm, key, key_auth.as_ref(), ak, endorsement.as_ref(), nonce)
        })
    }

    /// `TPM2_ActivateCredential`: the secret of `credential` (a file of
    /// `tpm2_makecredential`, made to this TPM's EK of `ek_algorithm` for the name of `ak`).
    /// The TPM releases it only when the AK and that EK are in this TPM, which is how a
    /// verifier binds an AK to a certified EK. Blocks.
    pub fn activate_credential(
        &mut self,
        ak: &hardkey_api::Tpm2Key,
        ek_algorithm: hardkey_api::KeyAlgorithm,
        endorsement_auth: &SecretSource,
        credential: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let credential = ak::Credential::parse(credential)?;
        let endorsement = endorsement_auth.load(&self.name)?;
        self.with_tpm(|tpm| {
            ak::activate_credential(tpm, ak, ek_algorithm, endorsement.as_ref(), &credential)
        })
    }

    /// The transient objects loaded in the TPM now (all clients'), for leak checks. Blocks.
    pub fn transient_handles(&mut self) -> Result<Vec<u32>> {
        self.with_context(owner::transient_handles)
    }

    /// The sessions loaded in or saved out of the TPM now (all clients'). Blocks.
    pub fn session_handles(&mut self) -> Result<Vec<u32>> {
        self.with_context(owner::session_handles)
    }

    /// Flushes every transient object and/or session in the TPM, **whoever made it**
    /// (`tpm2_flushcontext -t -l -s`): on a TPM without a resource manager, what a killed
    /// process left loaded holds a slot until flushed. Other processes using the TPM now lose
    /// theirs too. Behind a resource manager this sees (and flushes) only this connection's,
    /// so it does nothing: the resource manager flushes what a dead client left. Returns the
    /// handles flushed. Blocks.
    pub fn flush(&mut self, what: Flush) -> Result<Vec<u32>> {
        self.with_context(|ctx, name| crate::connect::flush_all(ctx, name, what))
    }

    /// Whether this TPM is reached through a resource manager (`tpm2-abrmd`, the kernel's
    /// `/dev/tpmrm0`), which gives each client its own view of objects and sessions.
    pub fn has_resource_manager(&self) -> bool {
        crate::connect::has_resource_manager(&self.tcti)
    }

    fn dictionary_attack(&mut self, lockout_auth: &SecretSource, command: DaCommand) -> Result<()> {
        let lockout = lockout_auth.load(&self.name)?;
        // A TPM may serve one connection at a time: close ours first.
        self.conn = Conn::Closed;
        ffi::run(&self.tcti, &self.name, lockout.as_ref(), command)
    }

    /// Runs `f` on the open context (reopening a bare one if closed); a lost connection is
    /// closed so the next call reconnects.
    fn with_context<T>(&mut self, f: impl FnOnce(&mut Context, &str) -> Result<T>) -> Result<T> {
        if matches!(self.conn, Conn::Closed) {
            self.conn = Conn::Bare(open_context(&self.tcti, &self.name)?);
        }
        let result = match &mut self.conn {
            Conn::Bare(ctx) => f(ctx, &self.name),
            Conn::Full(tpm) => f(&mut tpm.ctx, &self.name),
            Conn::Closed => Err(closed(&self.name)),
        };
        self.after(result)
    }

    /// Runs `f` on a full connection (with the SRK), upgrading a bare one.
    fn with_tpm<T>(&mut self, f: impl FnOnce(&mut Tpm) -> Result<T>) -> Result<T> {
        if !matches!(self.conn, Conn::Full(_)) {
            // Close the bare connection before opening the full one.
            self.conn = Conn::Closed;
            let tpm = Tpm::connect(
                &self.tcti,
                self.owner_auth.clone(),
                self.srk_name.clone(),
                false,
            )?;
            self.conn = Conn::Full(Box::new(tpm));
        }
        let result = match &mut self.conn {
            Conn::Full(tpm) => f(tpm),
            _ => Err(closed(&self.name)),
        };
        self.after(result)
    }

    fn after<T>(&mut self, result: Result<T>) -> Result<T> {
        if result.as_ref().is_err_and(|e| e.is_device_lost()) {
            self.conn = Conn::Closed;
        }
        result
    }
}

/// For the match arm of a connection just opened, which cannot be closed.
fn closed(name: &str) -> hardkey_api::Error {
    hardkey_api::Error::backend(name, Operation::Connect, "the connection is closed")
}
