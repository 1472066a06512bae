//! Attestation keys and TPM2_Certify on the TPM: the endorsement key (EK) made from the TCG
//! template, an attestation key (AK) under it, and certifying a key with the AK into
//! [`Evidence`].
//!
//! The EK is a primary key of the endorsement hierarchy made from the template of the TCG EK
//! Credential Profile (low range: RSA-2048 or ECC P-256, policy A), so it is the key an EK
//! certificate in NV 0x01c00002 / 0x01c0000a certifies, and the one `tpm2_createek` makes.
//! Its children are authorized by that policy: `TPM2_PolicySecret` with the endorsement
//! hierarchy's auth, in a policy session started for the one command.
//!
//! The AK is a restricted signing key (fixedTPM, fixedParent, sensitiveDataOrigin,
//! userWithAuth, restricted, sign; ECDSA P-256 or RSASSA-2048 with SHA-256, empty auth),
//! the attributes `tpm2_createak` gives. It is kept at a persistent handle, or in a
//! `TSS2 PRIVATE KEY` file whose parent is [`EK_PARENT`].
//!
//! `TPM2_ActivateCredential` ([`activate_credential`]) recovers a verifier's secret made to the
//! EK for the AK's name (`tpm2_makecredential`), binding the AK to the EK.
//!
//! Everything loaded for a command (EK, AK, the certified key, the SRK, policy sessions) is
//! flushed before the command returns, on every path; ESAPI objects of persistent handles
//! are closed, never flushed.

use std::path::Path;

use hardkey_api::{
    Error, InvalidInput, KeyAlgorithm, Operation, PublicKey, Result, SignatureScheme, Tpm2Key,
};
use tss_esapi::abstraction::{AsymmetricAlgorithmSelection, DefaultKey, ek, nv};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::TpmHandle;
use tss_esapi::handles::{AuthHandle, KeyHandle, NvIndexTpmHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::{Hierarchy, NvAuth, Provision};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Data, EccPoint, EccScheme, HashScheme, KeyDerivationFunctionScheme, Private, Public,
    PublicBuilder, PublicEccParametersBuilder, PublicKeyRsa, PublicRsaParametersBuilder,
    RsaExponent, RsaScheme, Signature, SymmetricDefinitionObject,
};
use tss_esapi::traits::Marshall;
use zeroize::Zeroizing;

use crate::attest::{Evidence, MAX_NONCE_SIZE, tpm2b};
use crate::connect::{
    Encryption, HandleRange, Tpm, flushing, list_handles, persistent, retrying, start_session,
};
use crate::error::{self, mapper};
use crate::keyfile::{KeyFile, KeyFileKind};
use crate::keys::public_key_of;

/// `TPM_RH_ENDORSEMENT`: the parent recorded in hardkey's AK files. It stands for the EK
/// made from the TCG EK template (not the storage template a hierarchy parent means in other
/// TSS2 key files), so only hardkey loads them.
pub const EK_PARENT: u32 = 0x4000_000B;

/// The persistent handle `hardkey tpm ak create` uses by default (where tpm2-tools' examples
/// and the TCG provisioning guidance's first AK go).
pub const DEFAULT_AK_HANDLE: u32 = 0x8101_0002;

/// The NV index of the RSA-2048 EK certificate (TCG EK Credential Profile, low range).
pub const EK_CERT_RSA2048: u32 = 0x01c0_0002;
/// The NV index of the ECC P-256 EK certificate.
pub const EK_CERT_P256: u32 = 0x01c0_000a;

/// NV indices (`TPM_HT_NV_INDEX`).
const NV_INDICES: HandleRange = HandleRange {
    first: 0x0100_0000,
    last: 0x01FF_FFFF,
    accept: (0x0100_0000, 0x01FF_FFFF),
};

/// An attestation key hardkey made.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AkInfo {
    /// Where it is kept: a persistent handle, or a key file.
    pub location: Tpm2Key,
    /// Its TPM name (nameAlg || H(TPMT_PUBLIC)).
    pub name: Vec<u8>,
    /// Its public key, for verifiers (`hardkey attest --verify --ak-pub`).
    pub public_key: PublicKey,
    /// Its `TPM2B_PUBLIC` (what `tpm2_createak -u` writes).
    pub public: Vec<u8>,
}

/// The EK template (and the AK's algorithm) for `algorithm`.
fn selection(algorithm: KeyAlgorithm) -> Result<AsymmetricAlgorithmSelection> {
    match algorithm {
        KeyAlgorithm::EcP256 => Ok(AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256)),
        KeyAlgorithm::Rsa2048 => Ok(AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048)),
        _ => Err(InvalidInput::Config {
            what: "attestation key algorithm",
            reason: "use p256 or rsa2048 (the algorithms of the TCG EK templates every TPM has)",
        }
        .into()),
    }
}

/// The AK template: restricted signing, SHA-256, the scheme fixed (a restricted signing key
/// must have one).
pub(crate) fn ak_template(algorithm: KeyAlgorithm) -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_restricted(true)
        .with_sign_encrypt(true)
        .build()?;
    let builder = PublicBuilder::new()
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes);
    let sha256 = HashScheme::new(HashingAlgorithm::Sha256);
    match algorithm {
        KeyAlgorithm::Rsa2048 => builder
            .with_public_algorithm(PublicAlgorithm::Rsa)
            .with_rsa_parameters(
                PublicRsaParametersBuilder::new()
                    .with_scheme(RsaScheme::RsaSsa(sha256))
                    .with_key_bits(RsaKeyBits::Rsa2048)
                    .with_exponent(RsaExponent::default())
                    .with_symmetric(SymmetricDefinitionObject::Null)
                    .with_is_signing_key(true)
                    .with_is_decryption_key(false)
                    .with_restricted(true)
                    .build()?,
            )
            .with_rsa_unique_identifier(PublicKeyRsa::default())
            .build(),
        _ => builder
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_ecc_parameters(
                PublicEccParametersBuilder::new()
                    .with_symmetric(SymmetricDefinitionObject::Null)
                    .with_ecc_scheme(EccScheme::EcDsa(sha256))
                    .with_curve(EccCurve::NistP256)
                    .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                    .with_is_signing_key(true)
                    .with_is_decryption_key(false)
                    .with_restricted(true)
                    .build()?,
            )
            .with_ecc_unique_identifier(EccPoint::default())
            .build(),
    }
}

/// An error of an endorsement-authorized command: a refused auth names the endorsement
/// hierarchy and where its auth value comes from.
fn endorsement_auth_error(
    device: &str,
    op: Operation,
    command: &'static str,
    e: tss_esapi::Error,
) -> Error {
    match error::map(device, op, command, e) {
        Error::AuthFailed { source, .. } => Error::AuthFailed {
            target: format!(
                "the endorsement hierarchy of {device} (give its auth value with \
                 --endorsement-auth-file or HARDKEY_ENDORSEMENT_AUTH)"
            ),
            source,
        },
        other => other,
    }
}

/// The session authorizing the endorsement hierarchy (its auth set in ESAPI): a password
/// session when the auth is empty, else the salted HMAC session.
fn endorsement_session(
    tpm: &mut Tpm,
    auth: Option<&Zeroizing<String>>,
    op: Operation,
) -> Result<AuthSession> {
    tpm.set_hierarchy_auth(ObjectHandle::Endorsement, auth, op)?;
    match auth {
        None => Ok(AuthSession::Password),
        Some(_) => tpm.hmac_session(),
    }
}

/// Runs `f` with the EK of `algorithm` made (TCG template) and flushed afterwards.
fn with_ek<T>(
    tpm: &mut Tpm,
    algorithm: KeyAlgorithm,
    session: AuthSession,
    op: Operation,
    f: impl FnOnce(&mut Tpm, KeyHandle) -> Result<T>,
) -> Result<T> {
    let name = tpm.name.clone();
    let template = ek::create_ek_public_from_default_template_2(selection(algorithm)?, DefaultKey)
        .map_err(mapper(&name, op, "EK template"))?;
    let ek = retrying(|| {
        tpm.ctx.execute_with_session(Some(session), |c| {
            c.create_primary(
                Hierarchy::Endorsement,
                template.clone(),
                None,
                None,
                None,
                None,
            )
        })
    })
    .map_err(|e| endorsement_auth_error(&name, op, "TPM2_CreatePrimary (EK)", e))?
    .key_handle;
    flushing(tpm, ek.into(), &name, op, "TPM2_FlushContext (EK)", |tpm| {
        f(tpm, ek)
    })
}

/// Runs `f` with a policy session satisfying the EK's policy A (`TPM2_PolicySecret` on the
/// endorsement hierarchy, authorized by `session`), flushed afterwards.
fn with_ek_policy<T>(
    tpm: &mut Tpm,
    session: AuthSession,
    op: Operation,
    f: impl FnOnce(&mut Tpm, AuthSession) -> Result<T>,
) -> Result<T> {
    let name = tpm.name.clone();
    let policy = start_session(
        &mut tpm.ctx,
        &name,
        op,
        None,
        SessionType::Policy,
        Encryption::default(),
    )?;
    let handle: ObjectHandle = SessionHandle::from(policy).into();
    flushing(
        tpm,
        handle,
        &name,
        op,
        "TPM2_FlushContext (policy session)",
        |tpm| {
            let policy_session =
                PolicySession::try_from(policy).map_err(mapper(&name, op, "policy session"))?;
            retrying(|| {
                tpm.ctx.execute_with_session(Some(session), |c| {
                    c.policy_secret(
                        policy_session,
                        AuthHandle::Endorsement,
                        Default::default(),
                        Default::default(),
                        Default::default(),
                        None,
                    )
                })
            })
            .map_err(|e| endorsement_auth_error(&name, op, "TPM2_PolicySecret (endorsement)", e))?;
            f(tpm, policy)
        },
    )
}

/// Loads an AK's blobs under the EK (in `with_ek`), returning the transient handle (the
/// caller flushes it).
fn load_under_ek(
    tpm: &mut Tpm,
    ek: KeyHandle,
    session: AuthSession,
    public: &Public,
    private: &Private,
    op: Operation,
) -> Result<KeyHandle> {
    with_ek_policy(tpm, session, op, |tpm, policy| {
        let name = tpm.name.clone();
        retrying(|| {
            tpm.ctx.execute_with_session(Some(policy), |c| {
                c.load(ek, private.clone(), public.clone())
            })
        })
        .map_err(|e| error::map_key_load(&name, op, e))
    })
}

/// Makes an AK under the EK of `algorithm` and keeps it at a persistent handle (the owner
/// auth of `tpm` authorizes `TPM2_EvictControl`) or in a new key file.
pub(crate) fn create_ak(
    tpm: &mut Tpm,
    algorithm: KeyAlgorithm,
    home: &Tpm2Key,
    endorsement: Option<&Zeroizing<String>>,
) -> Result<AkInfo> {
    let op = Operation::Generate;
    let name = tpm.name.clone();
    // Refuse an occupied place before touching the TPM's keys.
    match home {
        Tpm2Key::Handle(h) => {
            persistent(*h)?;
            if tpm.persistent_handles()?.contains(h) {
                return Err(InvalidInput::Config {
                    what: "AK handle",
                    reason: "the persistent handle is taken: choose another with --persist, or \
                             evict what is there first (hardkey delete tpm2:handle=... or \
                             tpm2_evictcontrol)",
                }
                .into());
            }
        }
        Tpm2Key::File(path) => refuse_existing(path)?,
        _ => {
            return Err(InvalidInput::Config {
                what: "AK location",
                reason: "give a persistent handle or a key file",
            }
            .into());
        }
    }
    let template = ak_template(algorithm).map_err(mapper(&name, op, "AK template"))?;
    // The HMAC session (its salt key takes a slot) before the EK takes one.
    let session = endorsement_session(tpm, endorsement, op)?;
    let owner_session = match home {
        Tpm2Key::Handle(_) => {
            tpm.set_owner_auth(op)?;
            Some(tpm.owner_session()?)
        }
        _ => None,
    };
    let made = with_ek(tpm, algorithm, session, op, |tpm, ek| {
        let created = with_ek_policy(tpm, session, op, |tpm, policy| {
            retrying(|| {
                tpm.ctx.execute_with_session(Some(policy), |c| {
                    c.create(ek, template.clone(), None, None, None, None)
                })
            })
            .map_err(mapper(&tpm.name.clone(), op, "TPM2_Create (AK)"))
        })?;
        let (public, private) = (created.out_public, created.out_private);
        if let (Tpm2Key::Handle(h), Some(owner)) = (home, owner_session) {
            let target = persistent(*h)?;
            let loaded = load_under_ek(tpm, ek, session, &public, &private, op)?;
            let n = tpm.name.clone();
            flushing(
                tpm,
                loaded.into(),
                &n,
                op,
                "TPM2_FlushContext (AK)",
                |tpm| {
                    let mut tr = retrying(|| {
                        tpm.ctx.execute_with_session(Some(owner), |c| {
                            c.evict_control(
                                Provision::Owner,
                                loaded.into(),
                                Persistent::Persistent(target),
                            )
                        })
                    })
                    .map_err(|e| {
                        crate::connect::owner_auth_error(&n, op, "TPM2_EvictControl", e)
                    })?;
                    let _ = tpm.ctx.tr_close(&mut tr);
                    Ok(())
                },
            )?;
        }
        Ok((public, private))
    });
    reset_auths(tpm);
    let (public, private) = made?;
    if let Tpm2Key::File(path) = home {
        let file = KeyFile {
            kind: KeyFileKind::Key,
            empty_auth: true,
            parent: EK_PARENT,
            public: public.clone(),
            private,
            policy: Vec::new(),
        };
        hardkey_api::fs::write_new_file(path, file.to_pem()?.as_bytes(), &name, op)?;
    }
    let public_key = public_key_of(&public)?.ok_or_else(|| {
        Error::backend(
            &name,
            op,
            "the TPM made an AK that is not an RSA or ECC key",
        )
    })?;
    Ok(AkInfo {
        location: home.clone(),
        name: crate::keys::tpm_name(&public)?,
        public_key,
        public: marshal_2b(&public, &name, op)?,
    })
}

fn refuse_existing(path: &Path) -> Result<()> {
    if path.exists() {
        return Err(InvalidInput::Config {
            what: "AK file",
            reason: "the file exists: hardkey never overwrites a key file; remove it or \
                     choose another --out",
        }
        .into());
    }
    Ok(())
}

/// Empties the hierarchy auths ESAPI holds (they are set only for the command).
fn reset_auths(tpm: &mut Tpm) {
    for h in [ObjectHandle::Endorsement, ObjectHandle::Owner] {
        let _ = tpm.ctx.tr_set_auth(h, Default::default());
    }
}

/// A `TPM2B_PUBLIC`.
fn marshal_2b(public: &Public, device: &str, op: Operation) -> Result<Vec<u8>> {
    let area = public
        .marshall()
        .map_err(mapper(device, op, "marshalling TPMT_PUBLIC"))?;
    tpm2b(&area)
}

/// What certify needs of a key file.
fn read_key_file(path: &Path, device: &str, what: &str) -> Result<KeyFile> {
    let text = hardkey_api::fs::read_key_file(path, device)?;
    let file = KeyFile::from_pem(&text, &path.display().to_string())?;
    if file.kind != KeyFileKind::Key {
        return Err(InvalidInput::KeyEncoding {
            what: format!("{what} {}", path.display()),
            source: "holds sealed data, not a key".into(),
        }
        .into());
    }
    Ok(file)
}

/// Runs `f` with the key to certify loaded: an ESAPI object for a persistent handle (closed
/// afterwards), or a key file's blobs loaded under its parent (flushed afterwards).
fn with_key<T>(
    tpm: &mut Tpm,
    key: &Tpm2Key,
    op: Operation,
    f: impl FnOnce(&mut Tpm, ObjectHandle) -> Result<T>,
) -> Result<T> {
    let name = tpm.name.clone();
    match key {
        Tpm2Key::Handle(h) => with_persistent(tpm, *h, op, "the key to attest", f),
        Tpm2Key::File(path) => {
            let file = read_key_file(path, &name, "the key to attest")?;
            if file.parent == EK_PARENT {
                return Err(InvalidInput::KeyEncoding {
                    what: format!("the key to attest {}", path.display()),
                    source: "is an attestation key file (hardkey tpm ak create), not a key \
                             to attest"
                        .into(),
                }
                .into());
            }
            let loaded = tpm.with_parent(file.parent, op, |tpm, parent| {
                retrying(|| {
                    tpm.ctx
                        .execute_with_session(Some(AuthSession::Password), |c| {
                            c.load(parent, file.private.clone(), file.public.clone())
                        })
                })
                .map_err(|e| error::map_key_load(&name, op, e))
            })?;
            flushing(tpm, loaded.into(), &name, op, "TPM2_FlushContext", |tpm| {
                f(tpm, loaded.into())
            })
        }
        _ => Err(InvalidInput::Config {
            what: "key to attest",
            reason: "give a TPM key: tpm2:handle=0x81... or tpm2:file=PATH",
        }
        .into()),
    }
}

/// Runs `f` with the ESAPI object of a persistent handle, closed afterwards (never flushed:
/// the object is not ours to unload).
fn with_persistent<T>(
    tpm: &mut Tpm,
    handle: u32,
    op: Operation,
    what: &str,
    f: impl FnOnce(&mut Tpm, ObjectHandle) -> Result<T>,
) -> Result<T> {
    persistent(handle)?;
    if !tpm.persistent_handles()?.contains(&handle) {
        return Err(Error::not_found(
            format_args!("{what} at persistent handle {handle:#010x} on {}", tpm.name),
            "list the TPM's persistent handles (tpm2_getcap handles-persistent); make an AK \
             with hardkey tpm ak create",
        ));
    }
    let mut tr = tpm.tr_from_public(handle, op)?;
    let result = f(tpm, tr);
    let _ = tpm.ctx.tr_close(&mut tr);
    result
}

/// Runs `f` with the AK loaded: a persistent handle's ESAPI object, or an AK file loaded under
/// the EK (made for the purpose, flushed right after the load), flushed afterwards.
fn with_ak<T>(
    tpm: &mut Tpm,
    ak: &Tpm2Key,
    session: AuthSession,
    op: Operation,
    f: impl FnOnce(&mut Tpm, KeyHandle) -> Result<T>,
) -> Result<T> {
    let name = tpm.name.clone();
    match ak {
        Tpm2Key::Handle(h) => with_persistent(tpm, *h, op, "the attestation key", |tpm, tr| {
            f(tpm, tr.into())
        }),
        Tpm2Key::File(path) => {
            let file = read_key_file(path, &name, "the attestation key")?;
            if file.parent != EK_PARENT {
                return Err(InvalidInput::KeyEncoding {
                    what: format!("the attestation key {}", path.display()),
                    source: format!(
                        "names parent {:#010x}; an AK file made by hardkey tpm ak create names \
                         the EK ({EK_PARENT:#010x})",
                        file.parent
                    )
                    .into(),
                }
                .into());
            }
            let algorithm = match file.public {
                Public::Rsa { .. } => KeyAlgorithm::Rsa2048,
                _ => KeyAlgorithm::EcP256,
            };
            let loaded = with_ek(tpm, algorithm, session, op, |tpm, ek| {
                load_under_ek(tpm, ek, session, &file.public, &file.private, op)
            })?;
            flushing(
                tpm,
                loaded.into(),
                &name,
                op,
                "TPM2_FlushContext (AK)",
                |tpm| f(tpm, loaded),
            )
        }
        _ => Err(InvalidInput::Config {
            what: "attestation key",
            reason: "give tpm2:handle=0x81... or tpm2:file=PATH (hardkey tpm ak create)",
        }
        .into()),
    }
}

/// The scheme of a signature the AK made.
fn scheme_of(signature: &Signature, ak: KeyAlgorithm) -> Option<SignatureScheme> {
    let hash = match signature {
        Signature::EcDsa(s) => s.hashing_algorithm(),
        Signature::RsaSsa(s) => s.hashing_algorithm(),
        _ => return None,
    };
    Some(match (signature, ak, hash) {
        (Signature::EcDsa(_), KeyAlgorithm::EcP256, HashingAlgorithm::Sha256) => {
            SignatureScheme::EcdsaP256Sha256
        }
        (Signature::EcDsa(_), KeyAlgorithm::EcP384, HashingAlgorithm::Sha384) => {
            SignatureScheme::EcdsaP384Sha384
        }
        (Signature::RsaSsa(_), _, HashingAlgorithm::Sha256) => SignatureScheme::RsaPkcs1Sha256,
        (Signature::RsaSsa(_), _, HashingAlgorithm::Sha384) => SignatureScheme::RsaPkcs1Sha384,
        (Signature::RsaSsa(_), _, HashingAlgorithm::Sha512) => SignatureScheme::RsaPkcs1Sha512,
        _ => return None,
    })
}

/// TPM2_Certify of `key` (its auth value `key_auth`) by the AK `ak`, with `nonce` as
/// qualifyingData; the evidence also carries the TPM's EK certificate if it has one.
pub(crate) fn certify(
    tpm: &mut Tpm,
    key: &Tpm2Key,
    key_auth: Option<&Zeroizing<String>>,
    ak: &Tpm2Key,
    endorsement: Option<&Zeroizing<String>>,
    nonce: &[u8],
) -> Result<Evidence> {
    let op = Operation::Sign;
    let name = tpm.name.clone();
    if nonce.len() > MAX_NONCE_SIZE {
        return Err(InvalidInput::Config {
            what: "nonce",
            reason: "longer than 64 bytes, the most a TPMS_ATTEST's extraData holds; use a \
                     32-byte random value or a SHA-256 digest",
        }
        .into());
    }
    let qualifying = Data::try_from(nonce.to_vec()).map_err(mapper(&name, op, "nonce"))?;
    // Sessions first: the HMAC session's salt key needs a slot of its own.
    let session = endorsement_session(tpm, endorsement, op)?;
    let key_session = match key_auth {
        Some(_) => tpm.hmac_session()?,
        None => AuthSession::Password,
    };
    let key_auth_value = crate::connect::auth_value(key_auth.map(|a| a.as_bytes()))?;
    let result = with_key(tpm, key, op, |tpm, key_handle| {
        tpm.ctx
            .tr_set_auth(key_handle, key_auth_value.clone())
            .map_err(mapper(&name, op, "Esys_TR_SetAuth"))?;
        let (key_public, _, _) = retrying(|| {
            tpm.ctx
                .execute_without_session(|c| c.read_public(key_handle.into()))
        })
        .map_err(mapper(&name, op, "TPM2_ReadPublic (key)"))?;
        with_ak(tpm, ak, session, op, |tpm, ak_handle| {
            let (ak_public, _, _) = retrying(|| {
                tpm.ctx
                    .execute_without_session(|c| c.read_public(ak_handle))
            })
            .map_err(mapper(&name, op, "TPM2_ReadPublic (AK)"))?;
            let attrs = ak_public.object_attributes();
            if !(attrs.restricted() && attrs.sign_encrypt()) {
                return Err(InvalidInput::Config {
                    what: "attestation key",
                    reason: "the AK given is not a restricted signing key; make one with \
                             hardkey tpm ak create",
                }
                .into());
            }
            let (attest, signature) = retrying(|| {
                tpm.ctx.execute_with_sessions(
                    (Some(key_session), Some(AuthSession::Password), None),
                    |c| {
                        c.certify(
                            key_handle,
                            ak_handle,
                            qualifying.clone(),
                            tss_esapi::structures::SignatureScheme::Null,
                        )
                    },
                )
            })
            .map_err(mapper(&name, op, "TPM2_Certify"))?;
            Ok((key_public, ak_public, attest, signature))
        })
    });
    reset_auths(tpm);
    let (key_public, ak_public, attest, signature) = result?;
    let ak_key = public_key_of(&ak_public)?
        .ok_or_else(|| Error::backend(&name, op, "the AK is not an RSA or ECC key"))?;
    let scheme = scheme_of(&signature, ak_key.algorithm()).ok_or_else(|| {
        Error::from(InvalidInput::Config {
            what: "attestation key",
            reason: "the AK signs with a scheme other than ECDSA or RSASSA (PKCS#1 v1.5) with \
                     a SHA-2 hash; make an AK with hardkey tpm ak create",
        })
    })?;
    let signature_bytes = match &signature {
        Signature::EcDsa(s) => {
            crate::device::ecdsa_der(s.signature_r(), s.signature_s(), ak_key.algorithm())?
        }
        other => {
            let k = ak_key.algorithm().bits().div_ceil(8);
            crate::device::rsa_bytes(other, k)
                .ok_or_else(|| Error::backend(&name, op, "TPM2_Certify returned no signature"))?
        }
    };
    let ek_certificate = ek_certificate(tpm, ak_key.algorithm(), op)?;
    Ok(Evidence {
        attest: attest
            .marshall()
            .map_err(mapper(&name, op, "marshalling TPMS_ATTEST"))?,
        signature: signature_bytes,
        scheme,
        ak_public: marshal_2b(&ak_public, &name, op)?,
        ak_public_key: ak_key,
        ek_certificate,
        key_name: crate::keys::tpm_name(&key_public)?,
        key_public: marshal_2b(&key_public, &name, op)?,
    })
}

/// A credential made to this TPM's EK for an AK's name (`TPM2_MakeCredential`, e.g.
/// `tpm2_makecredential -T none`), as tpm2-tools write it: magic 0xBADCC0DE, version 1, then
/// the `TPM2B_ID_OBJECT` and the `TPM2B_ENCRYPTED_SECRET`.
pub(crate) struct Credential {
    blob: Vec<u8>,
    secret: Vec<u8>,
}

impl Credential {
    /// Parses the tpm2-tools credential file format.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self> {
        let bad = |reason: &'static str| -> Error {
            InvalidInput::Malformed {
                what: "credential file",
                reason,
            }
            .into()
        };
        let (magic, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("too short for the tpm2_makecredential header"))?;
        let (version, mut rest) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("too short for the tpm2_makecredential header"))?;
        if u32::from_be_bytes(*magic) != 0xBADC_C0DE || u32::from_be_bytes(*version) != 1 {
            return Err(bad(
                "not a credential file of tpm2_makecredential (magic 0xBADCC0DE, version 1)",
            ));
        }
        let mut part = || -> Result<Vec<u8>> {
            let (size, tail) = rest
                .split_first_chunk::<2>()
                .ok_or_else(|| bad("a TPM2B is cut short"))?;
            let size = usize::from(u16::from_be_bytes(*size));
            if tail.len() < size {
                return Err(bad("a TPM2B is cut short"));
            }
            let (this, tail) = tail.split_at(size);
            rest = tail;
            Ok(this.to_vec())
        };
        let (blob, secret) = (part()?, part()?);
        if !rest.is_empty() {
            return Err(bad("has bytes after the encrypted secret"));
        }
        Ok(Self { blob, secret })
    }
}

/// `TPM2_ActivateCredential`: recovers the secret of a credential made to the EK of
/// `ek_algorithm` for the AK's name. The TPM releases it only if the AK is loaded in the same
/// TPM as that EK and has that name: a verifier that made the credential with the EK public
/// key of a certified EK learns, when the secret comes back, that the AK is in that TPM.
pub(crate) fn activate_credential(
    tpm: &mut Tpm,
    ak: &Tpm2Key,
    ek_algorithm: KeyAlgorithm,
    endorsement: Option<&Zeroizing<String>>,
    credential: &Credential,
) -> Result<Zeroizing<Vec<u8>>> {
    use tss_esapi::structures::{EncryptedSecret, IdObject};
    let op = Operation::Decrypt;
    let name = tpm.name.clone();
    let blob = IdObject::try_from(credential.blob.clone()).map_err(mapper(
        &name,
        op,
        "credential blob",
    ))?;
    let secret = EncryptedSecret::try_from(credential.secret.clone()).map_err(mapper(
        &name,
        op,
        "credential secret",
    ))?;
    let session = endorsement_session(tpm, endorsement, op)?;
    let activate = |tpm: &mut Tpm, ek: KeyHandle, ak: KeyHandle| -> Result<Zeroizing<Vec<u8>>> {
        with_ek_policy(tpm, session, op, |tpm, policy| {
            let n = tpm.name.clone();
            let digest = retrying(|| {
                tpm.ctx
                    .execute_with_sessions((Some(AuthSession::Password), Some(policy), None), |c| {
                        c.activate_credential(ak, ek, blob.clone(), secret.clone())
                    })
            })
            .map_err(|e| match error::rc_of(&e) {
                Some(rc) if error::is_integrity(rc) || error::is_value(rc) => {
                    Error::from(InvalidInput::Config {
                        what: "credential",
                        reason: "the TPM refused it: it was not made to this TPM's EK (of \
                                 this algorithm) for this AK's name",
                    })
                }
                _ => error::map(&n, op, "TPM2_ActivateCredential", e),
            })?;
            Ok(Zeroizing::new(digest.value().to_vec()))
        })
    };
    let result = with_ek(tpm, ek_algorithm, session, op, |tpm, ek| match ak {
        Tpm2Key::Handle(h) => with_persistent(tpm, *h, op, "the attestation key", |tpm, tr| {
            activate(tpm, ek, tr.into())
        }),
        Tpm2Key::File(path) => {
            let file = read_key_file(path, &name, "the attestation key")?;
            if file.parent != EK_PARENT {
                return Err(InvalidInput::KeyEncoding {
                    what: format!("the attestation key {}", path.display()),
                    source: "is not an AK file made by hardkey tpm ak create".into(),
                }
                .into());
            }
            let loaded = load_under_ek(tpm, ek, session, &file.public, &file.private, op)?;
            flushing(
                tpm,
                loaded.into(),
                &name,
                op,
                "TPM2_FlushContext (AK)",
                |tpm| activate(tpm, ek, loaded),
            )
        }
        _ => Err(InvalidInput::Config {
            what: "attestation key",
            reason: "give tpm2:handle=0x81... or tpm2:file=PATH",
        }
        .into()),
    });
    reset_auths(tpm);
    result
}

/// The TPM's EK certificate (DER) from its NV index, the one of the AK's algorithm first.
fn ek_certificate(
    tpm: &mut Tpm,
    algorithm: KeyAlgorithm,
    op: Operation,
) -> Result<Option<Vec<u8>>> {
    let name = tpm.name.clone();
    let indices = match algorithm {
        KeyAlgorithm::Rsa2048 => [EK_CERT_RSA2048, EK_CERT_P256],
        _ => [EK_CERT_P256, EK_CERT_RSA2048],
    };
    let present = list_handles(&mut tpm.ctx, &name, op, NV_INDICES)?;
    let Some(index) = indices.into_iter().find(|i| present.contains(i)) else {
        return Ok(None);
    };
    let nv_handle = NvIndexTpmHandle::new(index).map_err(mapper(&name, op, "NV index"))?;
    let mut tr = retrying(|| {
        tpm.ctx
            .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(nv_handle)))
    })
    .map_err(mapper(&name, op, "Esys_TR_FromTPMPublic (EK certificate)"))?;
    let read = retrying(|| {
        tpm.ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                nv::read_full(c, NvAuth::NvIndex(tr.into()), nv_handle)
            })
    })
    .map_err(mapper(&name, op, "TPM2_NV_Read (EK certificate)"));
    let _ = tpm.ctx.tr_close(&mut tr);
    // Some TPMs pad the index after the DER certificate: keep the certificate's own length.
    let mut der = read?;
    if let Some(len) = der_length(&der) {
        der.truncate(len);
    }
    Ok(Some(der))
}

/// The length of the DER element at the start of `bytes` (a SEQUENCE), if it fits.
fn der_length(bytes: &[u8]) -> Option<usize> {
    let (&tag, rest) = bytes.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, 2 + n)
    };
    let total = header.checked_add(len)?;
    (total <= bytes.len()).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ak_templates_are_restricted_signing_keys() {
        for alg in [KeyAlgorithm::EcP256, KeyAlgorithm::Rsa2048] {
            let t = ak_template(alg).unwrap();
            let names = crate::attest::attribute_names(&t);
            assert_eq!(
                names,
                [
                    "fixedTPM",
                    "fixedParent",
                    "sensitiveDataOrigin",
                    "userWithAuth",
                    "restricted",
                    "sign"
                ],
                "{alg:?}"
            );
        }
        assert!(selection(KeyAlgorithm::EcP384).is_err());
    }

    #[test]
    fn credential_files_are_parsed_strictly() {
        let mut file = vec![0xba, 0xdc, 0xc0, 0xde, 0, 0, 0, 1];
        file.extend_from_slice(&[0, 2, 0xaa, 0xbb, 0, 1, 0xcc]);
        let c = Credential::parse(&file).unwrap();
        assert_eq!(
            (c.blob.as_slice(), c.secret.as_slice()),
            (&[0xaa, 0xbb][..], &[0xcc][..])
        );
        let mut trailing = file.clone();
        trailing.push(0);
        let short = &file[..file.len() - 1];
        let mut other = file.clone();
        other[7] = 2;
        for bad in [&trailing[..], short, &other[..], &[][..]] {
            let e = Credential::parse(bad).err().unwrap();
            assert_eq!(e.kind(), hardkey_api::ErrorKind::InvalidInput, "{e}");
        }
    }

    #[test]
    fn der_length_reads_the_certificate_length() {
        assert_eq!(der_length(&[0x30, 0x03, 1, 2, 3, 0xff, 0xff]), Some(5));
        assert_eq!(der_length(&[0x30, 0x82, 0x00, 0x01, 9, 0]), Some(5));
        assert_eq!(der_length(&[0x30, 0x05, 1]), None);
        assert_eq!(der_length(&[0x04, 0x01, 1]), None);
        assert_eq!(der_length(&[]), None);
    }
}
