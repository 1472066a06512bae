//! Key objects on the token: finding them, describing them, and the templates that create them.

use std::collections::HashMap;
use std::sync::Arc;

use cryptoki::error::RvError;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::types::Ulong;
use der::{Decode, Encode};
use hardkey_api::oid::{SECP256R1, SECP384R1};
use hardkey_api::uri::{ObjectType, Pkcs11Uri};
use hardkey_api::{
    DeviceRestrictions, Error, InvalidInput, KeyAlgorithm, KeyFamily, KeyId, KeyInfo, KeyPolicy,
    KeyUri, KeyUsages, Operation, PublicKey, Result, Unsupported,
};
use rand::RngCore;
use zeroize::Zeroize;

use crate::error::mapper;

/// How a worker finds a key on the token: its CKA_ID and/or CKA_LABEL, and what the token
/// lets it do beyond its schemes. Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pkcs11KeyRef {
    /// CKA_ID.
    pub id: Option<Arc<[u8]>>,
    /// CKA_LABEL.
    pub label: Option<Arc<str>>,
    /// Whether the token lets this key do raw RSA (`CKM_RSA_X_509` among its
    /// CKA_ALLOWED_MECHANISMS, or no mechanism restriction at all), which host-side padding
    /// needs; `None` when the token does not say.
    pub raw_rsa: Option<bool>,
}

impl Pkcs11KeyRef {
    /// The search template for the private key.
    pub(crate) fn template(&self, class: ObjectClass) -> Vec<Attribute> {
        let mut t = vec![Attribute::Class(class)];
        if let Some(id) = &self.id {
            t.push(Attribute::Id(id.to_vec()));
        }
        if let Some(label) = &self.label {
            t.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        t
    }
}

/// The token's objects of one class by CKA_ID and CKA_LABEL, read with one search. Opening
/// many keys looks them up here: SoftHSM's `C_FindObjects` visits every object of the token
/// (and checks each object's file), so one search per key would make opening N keys cost N²
/// object visits.
#[derive(Debug, Default)]
pub(crate) struct ObjectIndex {
    handles: Vec<ObjectHandle>,
    by_id: HashMap<Vec<u8>, Vec<usize>>,
    by_label: HashMap<String, Vec<usize>>,
}

impl ObjectIndex {
    /// Reads every object of `class` and its CKA_ID and CKA_LABEL.
    pub(crate) fn read(session: &Session, device: &str, class: ObjectClass) -> Result<Self> {
        let map = mapper(device, Operation::Open);
        let handles = session
            .find_objects(&[Attribute::Class(class)])
            .map_err(&map)?;
        let mut index = Self::default();
        for (i, &h) in handles.iter().enumerate() {
            for attr in session
                .get_attributes(h, &[AttributeType::Id, AttributeType::Label])
                .map_err(&map)?
            {
                match attr {
                    Attribute::Id(v) => index.by_id.entry(v).or_default().push(i),
                    Attribute::Label(v) => index
                        .by_label
                        .entry(String::from_utf8_lossy(&v).into_owned())
                        .or_default()
                        .push(i),
                    _ => {}
                }
            }
        }
        index.handles = handles;
        Ok(index)
    }

    /// The objects whose CKA_ID is `id` and CKA_LABEL is `label` (each when given), as a
    /// search template of them would find.
    pub(crate) fn find(&self, id: Option<&[u8]>, label: Option<&str>) -> Vec<ObjectHandle> {
        let by_id = id.map(|id| self.by_id.get(id).map_or(&[][..], Vec::as_slice));
        let by_label = label.map(|l| self.by_label.get(l).map_or(&[][..], Vec::as_slice));
        let picked: Vec<usize> = match (by_id, by_label) {
            (Some(a), Some(b)) => a.iter().copied().filter(|i| b.contains(i)).collect(),
            (Some(a), None) | (None, Some(a)) => a.to_vec(),
            (None, None) => (0..self.handles.len()).collect(),
        };
        picked.into_iter().map(|i| self.handles[i]).collect()
    }
}

/// What the store knows about where its keys live, to build their URIs.
#[derive(Clone, Debug)]
pub(crate) struct UriBase {
    pub(crate) token: String,
    pub(crate) module_path: Option<String>,
    pub(crate) pin_source: Option<String>,
}

impl UriBase {
    fn uri(&self, label: Option<&str>, id: Option<&[u8]>) -> KeyUri {
        let mut uri = Pkcs11Uri::new()
            .with_token(self.token.clone())
            .with_object_type(ObjectType::Private);
        if let Some(label) = label {
            uri = uri.with_object(label);
        }
        if let Some(id) = id {
            uri = uri.with_id(id.to_vec());
        }
        if let Some(path) = &self.module_path {
            uri = uri.with_module_path(path.clone());
        }
        if let Some(source) = &self.pin_source {
            uri = uri.with_pin_source(source.clone());
        }
        KeyUri::Pkcs11(uri)
    }
}

/// Whether a key URI can name a private key at all: not when it has attributes hardkey does
/// not understand (as in p11-kit, they match nothing) or a `type` other than `private`.
pub(crate) fn can_name_private(uri: &Pkcs11Uri) -> bool {
    !uri.has_unrecognized() && uri.object_type().is_none_or(|t| t == ObjectType::Private)
}

/// Private-key handles matching a URI's `object` / `id` (and `type`, which must allow private
/// keys).
pub(crate) fn find_private(
    session: &Session,
    device: &str,
    uri: &Pkcs11Uri,
) -> Result<Vec<ObjectHandle>> {
    if !can_name_private(uri) {
        return Ok(Vec::new());
    }
    let key = Pkcs11KeyRef {
        id: uri.id().map(Arc::from),
        label: uri.object().map(Arc::from),
        raw_rsa: None,
    };
    session
        .find_objects(&key.template(ObjectClass::PRIVATE_KEY))
        .map_err(mapper(device, Operation::Open))
}

/// Decodes CKA_EC_POINT: a DER OCTET STRING holding the point (PKCS#11), or the bare point
/// (some tokens).
fn ec_point(raw: &[u8], field: usize) -> Option<Vec<u8>> {
    if raw.len() == 1 + 2 * field && raw.first() == Some(&0x04) {
        return Some(raw.to_vec());
    }
    der::asn1::OctetStringRef::from_der(raw)
        .ok()
        .map(|o| o.as_bytes().to_vec())
}

/// Decodes an Edwards key's CKA_EC_POINT: the bare 32/57-byte key (PKCS#11 3.0 wants a DER
/// OCTET STRING, some tokens write the key alone), or a DER OCTET STRING holding it
/// (SoftHSM 2.6).
pub(crate) fn edwards_point(raw: &[u8], alg: KeyAlgorithm) -> Option<Vec<u8>> {
    let len = alg.edwards_key_len()?;
    if let Ok(o) = der::asn1::OctetStringRef::from_der(raw) {
        if o.as_bytes().len() == len {
            return Some(o.as_bytes().to_vec());
        }
    }
    (raw.len() == len).then(|| raw.to_vec())
}

/// The Edwards curve of a CKA_EC_PARAMS: the curve OID (RFC 8410, what hardkey writes) or the
/// PrintableString curve name `edwards25519` / `edwards448` (PKCS#11 3.0, what OpenSC's
/// pkcs11-tool writes).
pub(crate) fn edwards_curve(params: &[u8]) -> Option<KeyAlgorithm> {
    if let Ok(oid) = der::asn1::ObjectIdentifier::from_der(params) {
        return match oid {
            o if o == hardkey_api::oid::ED25519 => Some(KeyAlgorithm::Ed25519),
            o if o == hardkey_api::oid::ED448 => Some(KeyAlgorithm::Ed448),
            _ => None,
        };
    }
    match der::asn1::PrintableStringRef::from_der(params)
        .ok()?
        .as_str()
    {
        "edwards25519" => Some(KeyAlgorithm::Ed25519),
        "edwards448" => Some(KeyAlgorithm::Ed448),
        _ => None,
    }
}

/// What the token said about CKA_ALLOWED_MECHANISMS, learned once per store.
pub(crate) const ALLOWED_UNKNOWN: u8 = 0;
/// The token takes CKA_ALLOWED_MECHANISMS in templates.
pub(crate) const ALLOWED_SUPPORTED: u8 = 1;
/// The token refused CKA_ALLOWED_MECHANISMS in a template: keys are made without it.
pub(crate) const ALLOWED_REFUSED: u8 = 2;

/// The note `hardkey info` shows for keys of a token that refuses CKA_ALLOWED_MECHANISMS.
pub(crate) const NO_ALLOWED_MECHANISMS: &str = "this token does not support \
    CKA_ALLOWED_MECHANISMS: the key's usage attributes are all it enforces, so any mechanism of \
    those usages works with the PIN (raw RSA included, for an RSA key)";

/// Describes a private key: algorithm, public key (from the key or its public object), usages,
/// and what the token enforces (usage attributes, allowed mechanisms).
#[allow(
    clippy::too_many_arguments,
    reason = "the token's facts a description depends on, passed by its one caller (Target)"
)]
pub(crate) fn describe(
    session: &Session,
    device: &str,
    handle: ObjectHandle,
    base: &UriBase,
    policy: KeyPolicy,
    allowed_refused: bool,
    usages_fixed: bool,
    publics: Option<&ObjectIndex>,
) -> Result<(KeyInfo, Pkcs11KeyRef)> {
    let map = mapper(device, Operation::Open);
    let wanted = [
        AttributeType::KeyType,
        AttributeType::Id,
        AttributeType::Label,
        AttributeType::Sign,
        AttributeType::Decrypt,
        AttributeType::Unwrap,
        AttributeType::Derive,
        AttributeType::SignRecover,
        AttributeType::Modulus,
        AttributeType::PublicExponent,
        AttributeType::EcParams,
    ];
    let (mut key_type, mut id, mut label) = (None, None, None);
    let (mut sign, mut decrypt) = (false, false);
    let mut operations = Vec::new();
    let mut allowed: Option<Vec<MechanismType>> = None;
    let (mut modulus, mut exponent, mut ec_params) = (None, None, None);
    for attr in session.get_attributes(handle, &wanted).map_err(&map)? {
        match attr {
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::Id(v) if !v.is_empty() => id = Some(v),
            // Object labels are not blank-padded (token labels are): kept as they are, so a
            // label ending in a space still finds the key's public half.
            Attribute::Label(v) if !v.is_empty() => {
                label = Some(String::from_utf8_lossy(&v).into_owned());
            }
            Attribute::Sign(b) => sign = b,
            Attribute::Decrypt(b) => decrypt = b,
            Attribute::Unwrap(true) => operations.push("unwrap"),
            Attribute::Derive(true) => operations.push("derive"),
            Attribute::SignRecover(true) => operations.push("sign-recover"),
            Attribute::Modulus(v) => modulus = Some(v),
            Attribute::PublicExponent(v) => exponent = Some(v),
            Attribute::EcParams(v) => ec_params = Some(v),
            _ => {}
        }
    }
    // Asked on its own: some tokens and p11-kit's remoting (0.24) fail the whole
    // C_GetAttributeValue on this array attribute rather than mark it unavailable.
    let allowed_known = match session.get_attributes(handle, &[AttributeType::AllowedMechanisms]) {
        Ok(attrs) => {
            for attr in attrs {
                // An empty list means no restriction (PKCS#11 3.0, 4.6).
                if let Attribute::AllowedMechanisms(m) = attr {
                    if !m.is_empty() {
                        allowed = Some(m);
                    }
                }
            }
            true
        }
        // p11-kit answers CKR_DEVICE_ERROR here with the session intact; a session that is
        // really gone fails the next call.
        Err(e)
            if crate::error::rv_of(&e)
                .is_some_and(|rv| crate::error::is_lost(rv) && rv != RvError::DeviceError) =>
        {
            return Err(map(e));
        }
        Err(_) => false,
    };
    if decrypt {
        operations.insert(0, "decrypt");
    }
    if sign {
        operations.insert(0, "sign");
    }
    let raw_rsa = match (key_type == Some(KeyType::RSA), allowed_known, &allowed) {
        (false, ..) => Some(false),
        (true, false, _) => None,
        (true, true, allowed) => Some(
            allowed
                .as_ref()
                .is_none_or(|m| m.contains(&MechanismType::RSA_X_509)),
        ),
    };
    let key_ref = Pkcs11KeyRef {
        id: id.as_deref().map(Arc::from),
        label: label.as_deref().map(Arc::from),
        raw_rsa,
    };
    let unsupported = || {
        Error::from(InvalidInput::Malformed {
            what: "token key",
            reason: "not an RSA 2048/3072/4096, EC P-256/P-384 or Ed25519/Ed448 private key",
        })
    };
    let public_key = match key_type {
        Some(KeyType::RSA) => match (modulus, exponent) {
            (Some(n), Some(e)) => PublicKey::from_rsa_components(&n, &e)?,
            _ => public_object_key(session, device, &key_ref, None, publics)?,
        },
        Some(KeyType::EC) => {
            let params = ec_params.ok_or_else(unsupported)?;
            let curve =
                der::asn1::ObjectIdentifier::from_der(&params).map_err(|_| unsupported())?;
            let alg = if curve == SECP256R1 {
                KeyAlgorithm::EcP256
            } else if curve == SECP384R1 {
                KeyAlgorithm::EcP384
            } else {
                return Err(unsupported());
            };
            public_object_key(session, device, &key_ref, Some(alg), publics)?
        }
        Some(KeyType::EC_EDWARDS) => {
            let params = ec_params.ok_or_else(unsupported)?;
            let alg = edwards_curve(&params).ok_or_else(unsupported)?;
            public_object_key(session, device, &key_ref, Some(alg), publics)?
        }
        _ => return Err(unsupported()),
    };
    let key_id = match &id {
        Some(id) => KeyId::new(id.clone()),
        None => KeyId::from_public_key(&public_key),
    };
    let mut usages = KeyUsages::default_for(public_key.algorithm());
    usages.sign = sign;
    usages.decrypt = decrypt && public_key.algorithm().family() == KeyFamily::Rsa;
    let note = match (&allowed, allowed_refused) {
        _ if usages_fixed => Some(USAGES_FIXED_BY_TOKEN.to_owned()),
        _ if !allowed_known => Some(
            "the token (or the remoting between us, such as p11-kit 0.24) does not report \
             CKA_ALLOWED_MECHANISMS: what it enforces beyond the usage attributes is unknown"
                .to_owned(),
        ),
        (None, true) => Some(NO_ALLOWED_MECHANISMS.to_owned()),
        (None, false) => Some(
            "no CKA_ALLOWED_MECHANISMS on this key (made by another tool, or by hardkey before \
             0.2): the token allows every mechanism of its usages; re-create it with hardkey \
             keygen to restrict them"
                .to_owned(),
        ),
        _ => None,
    };
    let restrictions = DeviceRestrictions::new(operations.into_iter().map(str::to_owned).collect())
        .with_mechanisms(allowed.map(|m| m.iter().map(ToString::to_string).collect()))
        .with_note(note);
    let uri = base.uri(label.as_deref(), id.as_deref());
    let info = KeyInfo::new(key_id, public_key, usages, policy)
        .with_label(label)
        .with_uri(Some(uri))
        .with_device(Some(restrictions));
    Ok((info, key_ref))
}

/// The public key from the public-key object with the same CKA_ID / label (found in
/// `publics` when given, else by a search).
fn public_object_key(
    session: &Session,
    device: &str,
    key: &Pkcs11KeyRef,
    ec: Option<KeyAlgorithm>,
    publics: Option<&ObjectIndex>,
) -> Result<PublicKey> {
    let map = mapper(device, Operation::Open);
    let missing = || {
        Error::from(InvalidInput::Malformed {
            what: "token key",
            reason: "its public key cannot be read: no public-key object with the same CKA_ID",
        })
    };
    let found = match publics {
        Some(index) => index.find(key.id.as_deref(), key.label.as_deref()),
        None => session
            .find_objects(&key.template(ObjectClass::PUBLIC_KEY))
            .map_err(&map)?,
    };
    let handle = *found.first().ok_or_else(missing)?;
    let attrs = session
        .get_attributes(
            handle,
            &[
                AttributeType::EcPoint,
                AttributeType::Modulus,
                AttributeType::PublicExponent,
            ],
        )
        .map_err(&map)?;
    let find = |want: AttributeType| {
        attrs.iter().find_map(|a| match (a, want) {
            (Attribute::EcPoint(v), AttributeType::EcPoint) => Some(v.clone()),
            (Attribute::Modulus(v), AttributeType::Modulus) => Some(v.clone()),
            (Attribute::PublicExponent(v), AttributeType::PublicExponent) => Some(v.clone()),
            _ => None,
        })
    };
    match ec {
        Some(alg) if alg.family() == KeyFamily::EdDsa => {
            let raw = find(AttributeType::EcPoint).ok_or_else(missing)?;
            let point = edwards_point(&raw, alg).ok_or_else(missing)?;
            PublicKey::from_edwards_point(alg, &point)
        }
        Some(alg) => {
            let field = if alg == KeyAlgorithm::EcP256 { 32 } else { 48 };
            let raw = find(AttributeType::EcPoint).ok_or_else(missing)?;
            let point = ec_point(&raw, field).ok_or_else(missing)?;
            PublicKey::from_ec_point(alg, &point)
        }
        None => match (
            find(AttributeType::Modulus),
            find(AttributeType::PublicExponent),
        ) {
            (Some(n), Some(e)) => PublicKey::from_rsa_components(&n, &e),
            _ => Err(missing()),
        },
    }
}

/// A fresh random 16-byte CKA_ID.
/// The length of the CKA_ID hardkey gives the keys it generates (random bytes).
const HARDKEY_ID_LEN: usize = 16;

pub(crate) fn new_id() -> Vec<u8> {
    let mut id = vec![0u8; HARDKEY_ID_LEN];
    rand::thread_rng().fill_bytes(&mut id);
    id
}

fn curve_params(alg: KeyAlgorithm) -> Result<Vec<u8>> {
    let oid = match alg {
        KeyAlgorithm::EcP256 => SECP256R1,
        // Edwards curves by OID (RFC 8410), which SoftHSM 2.6 takes; descriptions accept the
        // PrintableString form too.
        KeyAlgorithm::Ed25519 => hardkey_api::oid::ED25519,
        KeyAlgorithm::Ed448 => hardkey_api::oid::ED448,
        _ => SECP384R1,
    };
    oid.to_der().map_err(|e| {
        InvalidInput::KeyEncoding {
            what: "curve parameters".into(),
            source: Box::new(e),
        }
        .into()
    })
}

/// The mechanisms hardkey uses with a key, and so the key's CKA_ALLOWED_MECHANISMS:
/// - EC signing: `CKM_ECDSA` (the digest is computed on the host);
/// - EdDSA signing: `CKM_EDDSA` (over the whole message);
/// - RSA signing: `CKM_RSA_PKCS` (over a host-built DigestInfo) and `CKM_RSA_PKCS_PSS`;
/// - RSA decryption: `CKM_RSA_PKCS_OAEP`, and `CKM_RSA_PKCS` for the legacy TLS 1.2 key
///   exchange (which hardkey itself allows only behind [`KeyPolicy`]'s opt-in);
/// - `CKM_RSA_X_509` (raw RSA) only when asked for: raw RSA signing is decryption.
pub(crate) fn allowed_mechanisms(
    alg: KeyAlgorithm,
    usages: KeyUsages,
    raw_rsa: bool,
) -> Vec<MechanismType> {
    let mut out = Vec::new();
    match alg.family() {
        KeyFamily::Rsa => {
            if usages.sign || usages.decrypt {
                out.push(MechanismType::RSA_PKCS);
            }
            if usages.sign {
                out.push(MechanismType::RSA_PKCS_PSS);
            }
            if usages.decrypt {
                out.push(MechanismType::RSA_PKCS_OAEP);
            }
            if raw_rsa && (usages.sign || usages.decrypt) {
                out.push(MechanismType::RSA_X_509);
            }
        }
        KeyFamily::EdDsa => {
            if usages.sign {
                out.push(MechanismType::EDDSA);
            }
        }
        _ => {
            if usages.sign {
                out.push(MechanismType::ECDSA);
            }
        }
    }
    out
}

/// Every usage attribute of both halves, set explicitly (a token's defaults are not least
/// privilege: SoftHSM makes private keys decrypt and unwrap unless told otherwise), both
/// halves read-only, plus CKA_ALLOWED_MECHANISMS and CKA_COPYABLE false when `restrict` (the
/// token takes them).
fn usage_attributes(
    alg: KeyAlgorithm,
    usages: KeyUsages,
    raw_rsa: bool,
    restrict: bool,
) -> (Vec<Attribute>, Vec<Attribute>) {
    let decrypt = usages.decrypt && alg.family() == KeyFamily::Rsa;
    let mut private = vec![
        Attribute::Sign(usages.sign),
        Attribute::Decrypt(decrypt),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::SignRecover(false),
    ];
    let mut public = vec![
        Attribute::Verify(usages.sign),
        Attribute::Encrypt(decrypt),
        Attribute::Wrap(false),
        Attribute::Derive(false),
        Attribute::VerifyRecover(false),
    ];
    // Read-only: with the PIN alone, a sign-only key could otherwise be given CKA_DECRYPT
    // back (C_SetAttributeValue), or copied into an object with wider usages.
    for template in [&mut private, &mut public] {
        template.push(Attribute::Modifiable(false));
    }
    if restrict {
        let mechanisms = allowed_mechanisms(alg, usages, raw_rsa);
        private.push(Attribute::AllowedMechanisms(mechanisms.clone()));
        public.push(Attribute::AllowedMechanisms(mechanisms));
        // CKA_COPYABLE is PKCS#11 2.40, like CKA_ALLOWED_MECHANISMS: a token without one
        // likely lacks the other, and both are dropped together.
        private.push(Attribute::Copyable(false));
        public.push(Attribute::Copyable(false));
    }
    (public, private)
}

/// How a token answered a template with CKA_ALLOWED_MECHANISMS and CKA_COPYABLE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RestrictionRefusal {
    /// Not a refusal of those attributes.
    No,
    /// An attribute it does not know (CKR_ATTRIBUTE_TYPE_INVALID, CKR_TEMPLATE_INCONSISTENT):
    /// the key is made again without them.
    Clear,
    /// CKR_GENERAL_ERROR: NSS softokn 3.87 answers this for either attribute on a token object
    /// (its database has no column for them), but any token may answer it for a passing
    /// fault. The template is tried once more as it was before the attributes are dropped.
    Maybe,
}

/// For a module that decides a key's sign and decrypt usages itself (tpm2-pkcs11): drops the
/// CKA_SIGN, CKA_VERIFY, CKA_DECRYPT and CKA_ENCRYPT attributes a template sets false, which
/// such a module refuses. The key then has both usages; its CKA_ALLOWED_MECHANISMS (kept)
/// limit the mechanisms. The other usage attributes stay false.
pub(crate) fn leave_usages_to_token(template: &mut Vec<Attribute>) {
    template.retain(|a| {
        !matches!(
            a,
            Attribute::Sign(false)
                | Attribute::Verify(false)
                | Attribute::Decrypt(false)
                | Attribute::Encrypt(false)
        )
    });
}

/// The note `hardkey info` shows for keys of a module that decides usages itself.
pub(crate) const USAGES_FIXED_BY_TOKEN: &str = "this token (tpm2-pkcs11) makes every key both a \
    signing and a decryption key, whatever was asked, and signs with an RSA key only through \
    raw RSA (CKM_RSA_X_509): its CKA_ALLOWED_MECHANISMS are all that limit what the PIN lets \
    this key do, and for an RSA key they include raw RSA, so any application with the PIN can \
    decrypt with it";

/// Whether the token refused a template for its CKA_ALLOWED_MECHANISMS or CKA_COPYABLE.
pub(crate) fn refuses_allowed_mechanisms(e: &cryptoki::error::Error) -> RestrictionRefusal {
    use cryptoki::error::RvError;
    if [RvError::AttributeTypeInvalid, RvError::TemplateInconsistent]
        .into_iter()
        .any(|rv| crate::error::is_rv(e, rv, None))
    {
        RestrictionRefusal::Clear
    } else if crate::error::is_rv(e, RvError::GeneralError, None) {
        RestrictionRefusal::Maybe
    } else {
        RestrictionRefusal::No
    }
}

/// Destroys what an interrupted hardkey key generation left on the token: a process killed
/// inside `C_GenerateKeyPair` can leave (SoftHSM makes the public key object, sets its
/// attributes, then does the same for the private key) EC or RSA key objects, labelled
/// `label` or not labelled at all, whose key was never written (no CKA_EC_POINT,
/// CKA_EC_PARAMS or CKA_MODULUS: nothing to lose), and a public key with no private half.
///
/// Such a public key goes only if everything says hardkey made it for this label and its
/// private key never came: labelled `label`, generated on the token (CKA_LOCAL), a CKA_ID of
/// hardkey's shape (16 random bytes), no private key with that CKA_ID, and no private key
/// labelled `label` at all. A public key another tool made (its own CKA_ID), one whose
/// private half carries another CKA_ID, or one kept on purpose under a label nobody
/// generates again is left alone. Called before generating a key with that label, so that
/// the rerun of a killed keygen leaves no orphan behind. Returns how many objects went.
pub(crate) fn remove_interrupted(session: &Session, label: &str) -> usize {
    let find = |class| {
        session
            .find_objects(&[Attribute::Class(class)])
            .unwrap_or_default()
    };
    let mut doomed: Vec<ObjectHandle> = Vec::new();
    // Private keys first: one whose key was never written goes, and then its public key is
    // an orphan too.
    let mut private_ids = Vec::new();
    let mut private_labelled = false;
    for h in find(ObjectClass::PRIVATE_KEY) {
        let Some(o) = Leftover::read(session, h, label) else {
            continue;
        };
        if o.incomplete && (o.own_label || o.blank) {
            doomed.push(h);
        } else {
            private_labelled |= o.own_label;
            private_ids.push(o.id);
        }
    }
    for h in find(ObjectClass::PUBLIC_KEY) {
        let Some(o) = Leftover::read(session, h, label) else {
            continue;
        };
        // A public key generated on the token (CKA_LOCAL) whose private key never came: not
        // one imported to verify with.
        let orphan = o.own_label
            && o.generated
            && o.id.len() == HARDKEY_ID_LEN
            && !private_labelled
            && !private_ids.contains(&o.id);
        if (o.incomplete && (o.own_label || o.blank)) || orphan {
            doomed.push(h);
        }
    }
    doomed
        .into_iter()
        .filter(|h| session.destroy_object(*h).is_ok())
        .count()
}

/// What [`remove_interrupted`] reads of a key object.
struct Leftover {
    id: Vec<u8>,
    /// Labelled with the label of the key being generated.
    own_label: bool,
    /// Neither CKA_ID nor CKA_LABEL.
    blank: bool,
    /// CKA_LOCAL: generated on the token.
    generated: bool,
    /// An EC or RSA key whose key was never written (the kinds hardkey makes).
    incomplete: bool,
}

impl Leftover {
    fn read(session: &Session, h: ObjectHandle, label: &str) -> Option<Self> {
        let attrs = session
            .get_attributes(
                h,
                &[
                    AttributeType::Class,
                    AttributeType::KeyType,
                    AttributeType::Id,
                    AttributeType::Label,
                    AttributeType::EcParams,
                    AttributeType::EcPoint,
                    AttributeType::Modulus,
                    AttributeType::Local,
                ],
            )
            .ok()?;
        let (mut public, mut generated, mut key_type, mut id) = (false, false, None, Vec::new());
        let (mut own_label, mut unlabelled) = (false, true);
        let (mut ec_params, mut ec_point, mut modulus) = (Vec::new(), Vec::new(), Vec::new());
        for a in attrs {
            match a {
                Attribute::Class(c) => public = c == ObjectClass::PUBLIC_KEY,
                Attribute::KeyType(t) => key_type = Some(t),
                Attribute::Id(v) => id = v,
                Attribute::Label(l) => {
                    own_label = l == label.as_bytes();
                    unlabelled = l.is_empty();
                }
                Attribute::EcParams(v) => ec_params = v,
                Attribute::EcPoint(v) => ec_point = v,
                Attribute::Modulus(v) => modulus = v,
                Attribute::Local(l) => generated = l,
                _ => {}
            }
        }
        let incomplete = match key_type {
            Some(KeyType::EC | KeyType::EC_EDWARDS) if public => ec_point.is_empty(),
            Some(KeyType::EC | KeyType::EC_EDWARDS) => ec_params.is_empty(),
            Some(KeyType::RSA) => modulus.is_empty(),
            _ => false,
        };
        Some(Self {
            blank: unlabelled && id.is_empty(),
            id,
            own_label,
            generated,
            incomplete,
        })
    }
}

/// Key-pair generation templates: token objects; the private key sensitive, not extractable;
/// every usage attribute explicit and, when `restrict`, the allowed mechanisms.
pub(crate) fn generate_templates(
    alg: KeyAlgorithm,
    id: &[u8],
    label: &str,
    usages: KeyUsages,
    raw_rsa: bool,
    restrict: bool,
) -> Result<(Mechanism<'static>, Vec<Attribute>, Vec<Attribute>)> {
    let common = |private: bool| {
        vec![
            Attribute::Token(true),
            Attribute::Private(private),
            Attribute::Id(id.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ]
    };
    let (public_usages, private_usages) = usage_attributes(alg, usages, raw_rsa, restrict);
    let mut public = common(false);
    let mut private = common(true);
    private.extend([Attribute::Sensitive(true), Attribute::Extractable(false)]);
    private.extend(private_usages);
    public.extend(public_usages);
    let mechanism = match alg.family() {
        KeyFamily::Rsa => {
            public.extend([
                Attribute::ModulusBits(Ulong::new(alg.bits() as _)),
                Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
            ]);
            Mechanism::RsaPkcsKeyPairGen
        }
        KeyFamily::EdDsa => {
            public.push(Attribute::EcParams(curve_params(alg)?));
            Mechanism::EccEdwardsKeyPairGen
        }
        _ => {
            public.push(Attribute::EcParams(curve_params(alg)?));
            Mechanism::EccKeyPairGen
        }
    };
    Ok((mechanism, public, private))
}

/// Object templates that import a PKCS#8 private key (and its public key). Secret values are
/// zeroized by [`wipe`] once the objects exist.
pub(crate) fn import_templates(
    pkcs8_der: &[u8],
    id: &[u8],
    label: &str,
    usages: Option<KeyUsages>,
    raw_rsa: bool,
    restrict: bool,
) -> Result<(KeyAlgorithm, Vec<Attribute>, Vec<Attribute>)> {
    use pkcs8::DecodePrivateKey;
    use rsa::traits::{PrivateKeyParts, PublicKeyParts};

    let bad = |e: &dyn std::fmt::Display| {
        Error::from(InvalidInput::KeyEncoding {
            what: "PKCS#8 private key to import".into(),
            source: e.to_string().into(),
        })
    };
    let info = pkcs8::PrivateKeyInfo::from_der(pkcs8_der).map_err(|e| bad(&e))?;
    let base = |class, key_type| {
        vec![
            Attribute::Class(class),
            Attribute::KeyType(key_type),
            Attribute::Token(true),
            Attribute::Id(id.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ]
    };
    if info.algorithm.oid == hardkey_api::oid::RSA_ENCRYPTION {
        let key = rsa::RsaPrivateKey::from_pkcs8_der(pkcs8_der).map_err(|e| bad(&e))?;
        let alg = KeyAlgorithm::rsa_with_bits(key.n().bits()).ok_or_else(|| {
            Error::from(InvalidInput::Malformed {
                what: "RSA key to import",
                reason: "modulus size is not 2048, 3072 or 4096 bits",
            })
        })?;
        let usages = usages.unwrap_or(KeyUsages::default_for(alg));
        let primes = key.primes();
        let (Some(p), Some(q), Some(dp), Some(dq), Some(qinv)) = (
            primes.first(),
            primes.get(1),
            key.dp(),
            key.dq(),
            key.qinv(),
        ) else {
            return Err(bad(&"RSA key without CRT parameters"));
        };
        let (n, e) = (key.n().to_bytes_be(), key.e().to_bytes_be());
        let (public_usages, private_usages) = usage_attributes(alg, usages, raw_rsa, restrict);
        let mut private = base(ObjectClass::PRIVATE_KEY, KeyType::RSA);
        private.extend(private_usages);
        private.extend([
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Modulus(n.clone()),
            Attribute::PublicExponent(e.clone()),
            Attribute::PrivateExponent(key.d().to_bytes_be()),
            Attribute::Prime1(p.to_bytes_be()),
            Attribute::Prime2(q.to_bytes_be()),
            Attribute::Exponent1(dp.to_bytes_be()),
            Attribute::Exponent2(dq.to_bytes_be()),
            Attribute::Coefficient(qinv.to_bytes_be().1),
        ]);
        let mut public = base(ObjectClass::PUBLIC_KEY, KeyType::RSA);
        public.extend(public_usages);
        public.extend([Attribute::Modulus(n), Attribute::PublicExponent(e)]);
        return Ok((alg, public, private));
    }
    if info.algorithm.oid == hardkey_api::oid::ED25519
        || info.algorithm.oid == hardkey_api::oid::ED448
    {
        // RFC 8410: the private key is an OCTET STRING holding the 32/57-byte secret; the
        // public key is derived from it on the token, or given in the PKCS#8 v2 field.
        let alg = if info.algorithm.oid == hardkey_api::oid::ED25519 {
            KeyAlgorithm::Ed25519
        } else {
            KeyAlgorithm::Ed448
        };
        let len = alg.edwards_key_len().unwrap_or_default();
        let secret = der::asn1::OctetStringRef::from_der(info.private_key)
            .map_err(|e| bad(&e))?
            .as_bytes()
            .to_vec();
        if secret.len() != len {
            return Err(bad(&"Edwards private key of the wrong length"));
        }
        let point = match (alg, info.public_key) {
            (KeyAlgorithm::Ed25519, _) => {
                let bytes = zeroize::Zeroizing::new(
                    <[u8; 32]>::try_from(secret.as_slice())
                        .map_err(|_| bad(&"Ed25519 private key of the wrong length"))?,
                );
                ed25519_dalek::SigningKey::from_bytes(&bytes)
                    .verifying_key()
                    .to_bytes()
                    .to_vec()
            }
            (_, Some(public)) if public.len() == len => public.to_vec(),
            _ => {
                return Err(bad(
                    &"an Ed448 PKCS#8 key without its public key (hardkey cannot derive it)",
                ));
            }
        };
        let usages = usages.unwrap_or(KeyUsages::default_for(alg));
        let params = curve_params(alg)?;
        let (public_usages, private_usages) = usage_attributes(alg, usages, raw_rsa, restrict);
        let mut private = base(ObjectClass::PRIVATE_KEY, KeyType::EC_EDWARDS);
        private.extend(private_usages);
        private.extend([
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::EcParams(params.clone()),
            Attribute::Value(secret),
        ]);
        let point_der = der::asn1::OctetStringRef::new(&point)
            .and_then(|o| o.to_der())
            .map_err(|e| bad(&e))?;
        let mut public = base(ObjectClass::PUBLIC_KEY, KeyType::EC_EDWARDS);
        public.extend(public_usages);
        public.extend([Attribute::EcParams(params), Attribute::EcPoint(point_der)]);
        return Ok((alg, public, private));
    }
    let curve = info.algorithm.parameters_oid().map_err(|e| bad(&e))?;
    let (alg, secret, point) = if curve == SECP256R1 {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let k = p256::SecretKey::from_pkcs8_der(pkcs8_der).map_err(|e| bad(&e))?;
        let point = k.public_key().to_encoded_point(false).as_bytes().to_vec();
        (KeyAlgorithm::EcP256, k.to_bytes().to_vec(), point)
    } else if curve == SECP384R1 {
        use p384::elliptic_curve::sec1::ToEncodedPoint;
        let k = p384::SecretKey::from_pkcs8_der(pkcs8_der).map_err(|e| bad(&e))?;
        let point = k.public_key().to_encoded_point(false).as_bytes().to_vec();
        (KeyAlgorithm::EcP384, k.to_bytes().to_vec(), point)
    } else {
        return Err(Unsupported::Algorithm {
            algorithm: KeyAlgorithm::EcP256,
            device: "this PKCS#11 backend (only P-256 and P-384 curves)".into(),
        }
        .into());
    };
    let usages = usages.unwrap_or(KeyUsages::default_for(alg));
    let params = curve_params(alg)?;
    let (public_usages, private_usages) = usage_attributes(alg, usages, raw_rsa, restrict);
    let mut private = base(ObjectClass::PRIVATE_KEY, KeyType::EC);
    private.extend(private_usages);
    private.extend([
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::EcParams(params.clone()),
        Attribute::Value(secret),
    ]);
    let point_der = der::asn1::OctetStringRef::new(&point)
        .and_then(|o| o.to_der())
        .map_err(|e| bad(&e))?;
    let mut public = base(ObjectClass::PUBLIC_KEY, KeyType::EC);
    public.extend(public_usages);
    public.extend([Attribute::EcParams(params), Attribute::EcPoint(point_der)]);
    Ok((alg, public, private))
}

/// Zeroizes the secret values in a template.
pub(crate) fn wipe(template: &mut [Attribute]) {
    for attr in template {
        match attr {
            Attribute::PrivateExponent(v)
            | Attribute::Prime1(v)
            | Attribute::Prime2(v)
            | Attribute::Exponent1(v)
            | Attribute::Exponent2(v)
            | Attribute::Coefficient(v)
            | Attribute::Value(v) => v.zeroize(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag(t: &[Attribute], want: AttributeType) -> Option<bool> {
        t.iter().find_map(|a| match (a, want) {
            (Attribute::Sign(b), AttributeType::Sign)
            | (Attribute::Decrypt(b), AttributeType::Decrypt)
            | (Attribute::Unwrap(b), AttributeType::Unwrap)
            | (Attribute::Derive(b), AttributeType::Derive)
            | (Attribute::SignRecover(b), AttributeType::SignRecover)
            | (Attribute::Verify(b), AttributeType::Verify)
            | (Attribute::Encrypt(b), AttributeType::Encrypt)
            | (Attribute::Wrap(b), AttributeType::Wrap)
            | (Attribute::VerifyRecover(b), AttributeType::VerifyRecover) => Some(*b),
            _ => None,
        })
    }

    fn mechanisms(t: &[Attribute]) -> Option<Vec<MechanismType>> {
        t.iter().find_map(|a| match a {
            Attribute::AllowedMechanisms(m) => Some(m.clone()),
            _ => None,
        })
    }

    #[test]
    fn every_usage_attribute_is_explicit() {
        use AttributeType as A;
        for (alg, usages) in [
            (KeyAlgorithm::EcP256, KeyUsages::SIGN),
            (KeyAlgorithm::Rsa2048, KeyUsages::SIGN),
            (KeyAlgorithm::Rsa2048, KeyUsages::SIGN_DECRYPT),
        ] {
            let (_, public, private) =
                generate_templates(alg, b"id", "k", usages, false, true).unwrap();
            let rsa_decrypt = usages.decrypt && alg.family() == KeyFamily::Rsa;
            assert_eq!(flag(&private, A::Sign), Some(usages.sign));
            assert_eq!(flag(&private, A::Decrypt), Some(rsa_decrypt));
            for off in [A::Unwrap, A::Derive, A::SignRecover] {
                assert_eq!(flag(&private, off), Some(false), "{off:?} on {alg}");
            }
            assert_eq!(flag(&public, A::Verify), Some(usages.sign));
            assert_eq!(flag(&public, A::Encrypt), Some(rsa_decrypt));
            for off in [A::Wrap, A::VerifyRecover] {
                assert_eq!(flag(&public, off), Some(false), "{off:?} on {alg}");
            }
            let allowed = mechanisms(&private).unwrap();
            assert!(!allowed.contains(&MechanismType::RSA_X_509), "{allowed:?}");
            for t in [&private, &public] {
                assert!(t.iter().any(|a| matches!(a, Attribute::Modifiable(false))));
                assert!(t.iter().any(|a| matches!(a, Attribute::Copyable(false))));
            }
        }
    }

    #[test]
    fn allowed_mechanisms_are_exactly_those_used() {
        use MechanismType as M;
        let sign = KeyUsages::SIGN;
        assert_eq!(
            allowed_mechanisms(KeyAlgorithm::EcP384, sign, true),
            [M::ECDSA]
        );
        assert_eq!(
            allowed_mechanisms(KeyAlgorithm::Rsa3072, sign, false),
            [M::RSA_PKCS, M::RSA_PKCS_PSS]
        );
        assert_eq!(
            allowed_mechanisms(KeyAlgorithm::Rsa2048, KeyUsages::SIGN_DECRYPT, false),
            [M::RSA_PKCS, M::RSA_PKCS_PSS, M::RSA_PKCS_OAEP]
        );
        assert_eq!(
            allowed_mechanisms(KeyAlgorithm::Rsa2048, sign, true),
            [M::RSA_PKCS, M::RSA_PKCS_PSS, M::RSA_X_509]
        );
        let (_, public, private) =
            generate_templates(KeyAlgorithm::Rsa2048, b"id", "k", sign, false, false).unwrap();
        assert_eq!(
            mechanisms(&private),
            None,
            "not restricted when the token refuses it"
        );
        assert_eq!(mechanisms(&public), None);
    }

    #[test]
    fn import_templates_set_the_same_attributes() {
        use pkcs8::EncodePrivateKey;
        let secret = p256::SecretKey::random(&mut rand::thread_rng());
        let pkcs8 = secret.to_pkcs8_der().unwrap();
        let pkcs8 = pkcs8.as_bytes();
        let (_, public, mut private) =
            import_templates(pkcs8, b"id", "k", None, false, true).unwrap();
        assert_eq!(flag(&private, AttributeType::Decrypt), Some(false));
        assert_eq!(flag(&private, AttributeType::Derive), Some(false));
        assert_eq!(flag(&public, AttributeType::Wrap), Some(false));
        assert_eq!(mechanisms(&private).unwrap(), [MechanismType::ECDSA]);
        wipe(&mut private);
    }

    #[test]
    fn tpm2_pkcs11_templates_leave_sign_and_decrypt_to_the_token() {
        let mut sign_only = KeyUsages::default_for(KeyAlgorithm::Rsa2048);
        sign_only.sign = true;
        sign_only.decrypt = false;
        let (_, mut public, mut private) =
            generate_templates(KeyAlgorithm::Rsa2048, b"id", "k", sign_only, true, true).unwrap();
        leave_usages_to_token(&mut public);
        leave_usages_to_token(&mut private);
        // The false sign/decrypt flags go (tpm2-pkcs11 refuses them); true ones, the other
        // usage flags and the mechanism restriction stay.
        assert_eq!(flag(&private, AttributeType::Decrypt), None);
        assert_eq!(flag(&public, AttributeType::Encrypt), None);
        assert_eq!(flag(&private, AttributeType::Sign), Some(true));
        assert_eq!(flag(&public, AttributeType::Verify), Some(true));
        assert_eq!(flag(&private, AttributeType::Unwrap), Some(false));
        assert_eq!(flag(&private, AttributeType::Derive), Some(false));
        let allowed = mechanisms(&private).unwrap();
        assert!(allowed.contains(&MechanismType::RSA_X_509), "{allowed:?}");
        assert!(
            !allowed.contains(&MechanismType::RSA_PKCS_OAEP),
            "{allowed:?}"
        );
    }

    #[test]
    fn general_error_is_only_maybe_a_refused_restriction() {
        use cryptoki::context::Function;
        use cryptoki::error::Error as CkError;
        let rv = |rv| CkError::Pkcs11(rv, Function::GenerateKeyPair);
        assert_eq!(
            refuses_allowed_mechanisms(&rv(RvError::AttributeTypeInvalid)),
            RestrictionRefusal::Clear
        );
        assert_eq!(
            refuses_allowed_mechanisms(&rv(RvError::GeneralError)),
            RestrictionRefusal::Maybe
        );
        assert_eq!(
            refuses_allowed_mechanisms(&rv(RvError::PinIncorrect)),
            RestrictionRefusal::No
        );
    }
}
