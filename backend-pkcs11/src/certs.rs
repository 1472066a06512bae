//! Certificate chains on the token, beside their keys.
//!
//! How a chain is laid out, and found again:
//! - the **leaf** is a `CKO_CERTIFICATE` / `CKC_X_509` object with the **same CKA_ID as its
//!   private key**, labelled like the key, `CKA_CERTIFICATE_CATEGORY` = token user (1);
//! - each **issuer** in the chain (intermediates, and a root if the chain file had one) is a
//!   further certificate object, `CKA_CERTIFICATE_CATEGORY` = authority (2), CKA_ID = its
//!   subject key identifier (when it has one), labelled with its subject. One issuer shared by
//!   several leaves is stored once;
//! - reading a chain starts at the leaf (by CKA_ID and/or CKA_LABEL) and follows issuers by
//!   **CKA_SUBJECT = the child's issuer name** (PKCS#11 requires CKA_SUBJECT on X.509
//!   certificate objects; pkcs11-tool sets it too). Among several certificates with that
//!   subject, the one whose subject key identifier matches the child's authority key
//!   identifier is taken (a renewed CA). The walk stops at a self-issued certificate, at an
//!   issuer not on the token, or after [`MAX_CHAIN`] certificates.
//!
//! Every certificate object is a token object (CKA_TOKEN), public (CKA_PRIVATE false: a
//! certificate is no secret, and other applications find it without the PIN), never marked
//! CKA_TRUSTED (that needs the SO, and hardkey does not decide trust). Objects are created
//! and destroyed under the module's write lock, and a failed import destroys what it made.

use cryptoki::object::{Attribute, AttributeType, CertificateType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use der::{Decode, Encode};
use hardkey_api::{Error, InvalidInput, JobOptions, Operation, Result};
use std::future::Future;

use crate::error::mapper;
use crate::session::Pkcs11Device;
use crate::store::{Pkcs11Store, guard};

/// The most certificates a chain read from the token holds.
pub const MAX_CHAIN: usize = 8;

/// `CKA_CERTIFICATE_CATEGORY` (PKCS#11 2.40, 4.6.2), which cryptoki 0.12 has no typed
/// attribute for: passed as the raw attribute type with a native-endian `CK_ULONG` value.
const CKA_CERTIFICATE_CATEGORY: cryptoki::types::Ulong = cryptoki::types::Ulong::new(0x87);

/// What a certificate is to the token (`CKA_CERTIFICATE_CATEGORY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertCategory {
    /// Unspecified (0), the default.
    Unspecified,
    /// The certificate of a private key on this token (1).
    TokenUser,
    /// A certification authority's certificate (2).
    Authority,
    /// Another party's certificate (3).
    OtherEntity,
}

impl CertCategory {
    fn value(self) -> u64 {
        match self {
            Self::Unspecified => 0,
            Self::TokenUser => 1,
            Self::Authority => 2,
            Self::OtherEntity => 3,
        }
    }

    /// The name `hardkey cert list` shows.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::TokenUser => "token-user",
            Self::Authority => "authority",
            Self::OtherEntity => "other-entity",
        }
    }
}

/// An X.509 certificate object on a token.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenCertificate {
    /// The certificate (CKA_VALUE, DER).
    pub der: Vec<u8>,
    /// CKA_ID (empty if it has none): a leaf's is its private key's.
    pub id: Vec<u8>,
    /// CKA_LABEL (empty if it has none).
    pub label: String,
    /// CKA_CERTIFICATE_CATEGORY (unspecified for a token that does not know the attribute).
    pub category: Option<CertCategory>,
    /// Whether a private key with the same (non-empty) CKA_ID is on the token.
    pub has_key: bool,
}

/// Which leaf certificate to find: by CKA_ID and/or CKA_LABEL (at least one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertSelector {
    /// CKA_ID.
    pub id: Option<Vec<u8>>,
    /// CKA_LABEL.
    pub label: Option<String>,
}

impl CertSelector {
    /// The certificate with this CKA_ID (its key's).
    pub fn id(id: impl Into<Vec<u8>>) -> Self {
        Self {
            id: Some(id.into()),
            label: None,
        }
    }

    /// The certificate a `pkcs11:` URI's `id=` and `object=` name (its `type` is not looked
    /// at: a key URI finds the certificate beside the key).
    pub fn from_uri(uri: &hardkey_api::uri::Pkcs11Uri) -> Self {
        Self {
            id: uri.id().map(<[u8]>::to_vec),
            label: uri.object().map(str::to_owned),
        }
    }

    fn template(&self) -> Vec<Attribute> {
        let mut t = x509_template();
        if let Some(id) = &self.id {
            t.push(Attribute::Id(id.clone()));
        }
        if let Some(label) = &self.label {
            t.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        t
    }
}

impl std::fmt::Display for CertSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.id, &self.label) {
            (Some(id), Some(label)) => write!(f, "id {} label '{label}'", hex::encode(id)),
            (Some(id), None) => write!(f, "id {}", hex::encode(id)),
            (None, Some(label)) => write!(f, "label '{label}'"),
            (None, None) => f.write_str("any certificate"),
        }
    }
}

/// What hardkey reads of a certificate's DER.
struct Parsed {
    subject: Vec<u8>,
    issuer: Vec<u8>,
    serial: Vec<u8>,
    spki: Vec<u8>,
    subject_text: String,
    ski: Option<Vec<u8>>,
    aki: Option<Vec<u8>>,
}

fn bad_cert(index: usize, e: der::Error) -> Error {
    InvalidInput::KeyEncoding {
        what: format!("certificate {index} of the chain (DER X.509)"),
        source: Box::new(e),
    }
    .into()
}

fn parse(der_bytes: &[u8], index: usize) -> Result<Parsed> {
    use x509_cert::ext::pkix::{AuthorityKeyIdentifier, SubjectKeyIdentifier};
    let cert = x509_cert::Certificate::from_der(der_bytes).map_err(|e| bad_cert(index, e))?;
    let tbs = &cert.tbs_certificate;
    let enc = |r: der::Result<Vec<u8>>| r.map_err(|e| bad_cert(index, e));
    let ski = tbs
        .get::<SubjectKeyIdentifier>()
        .ok()
        .flatten()
        .map(|(_, s)| s.0.as_bytes().to_vec());
    let aki = tbs
        .get::<AuthorityKeyIdentifier>()
        .ok()
        .flatten()
        .and_then(|(_, a)| a.key_identifier.map(|k| k.as_bytes().to_vec()));
    Ok(Parsed {
        subject: enc(tbs.subject.to_der())?,
        issuer: enc(tbs.issuer.to_der())?,
        serial: enc(tbs.serial_number.to_der())?,
        spki: enc(tbs.subject_public_key_info.to_der())?,
        subject_text: tbs.subject.to_string(),
        ski,
        aki,
    })
}

fn x509_template() -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::CERTIFICATE),
        Attribute::CertificateType(CertificateType::X_509),
    ]
}

fn category_attribute(category: CertCategory) -> Attribute {
    Attribute::VendorDefined((
        AttributeType::VendorDefined(CKA_CERTIFICATE_CATEGORY.into()),
        category.value().to_ne_bytes().to_vec(),
    ))
}

/// The creation template of a certificate object.
fn object_template(
    der_bytes: &[u8],
    parsed: &Parsed,
    id: &[u8],
    label: &str,
    category: Option<CertCategory>,
) -> Vec<Attribute> {
    let mut t = x509_template();
    t.extend([
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Subject(parsed.subject.clone()),
        Attribute::Issuer(parsed.issuer.clone()),
        Attribute::SerialNumber(parsed.serial.clone()),
        Attribute::Value(der_bytes.to_vec()),
    ]);
    if !id.is_empty() {
        t.push(Attribute::Id(id.to_vec()));
    }
    if !label.is_empty() {
        t.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    if let Some(c) = category {
        t.push(category_attribute(c));
    }
    t
}

/// Creates a certificate object, without CKA_CERTIFICATE_CATEGORY if the token refuses it
/// (an attribute before PKCS#11 2.20).
fn create(
    session: &Session,
    device: &str,
    der_bytes: &[u8],
    parsed: &Parsed,
    id: &[u8],
    label: &str,
    category: CertCategory,
) -> Result<ObjectHandle> {
    let map = mapper(device, Operation::Import);
    match session.create_object(&object_template(
        der_bytes,
        parsed,
        id,
        label,
        Some(category),
    )) {
        Ok(h) => Ok(h),
        Err(e) if crate::error::is_rv(&e, cryptoki::error::RvError::AttributeTypeInvalid, None) => {
            session
                .create_object(&object_template(der_bytes, parsed, id, label, None))
                .map_err(map)
        }
        Err(e) => Err(map(e)),
    }
}

/// CKA_VALUE of a certificate object.
fn value(session: &Session, device: &str, h: ObjectHandle) -> Result<Vec<u8>> {
    let attrs = session
        .get_attributes(h, &[AttributeType::Value])
        .map_err(mapper(device, Operation::Open))?;
    attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::Value(v) => Some(v),
            _ => None,
        })
        .ok_or_else(|| {
            InvalidInput::Malformed {
                what: "certificate object on the token",
                reason: "it has no CKA_VALUE",
            }
            .into()
        })
}

/// The category of each certificate object that has one. Found by searching, one
/// `C_FindObjects` per category: cryptoki 0.12 cannot read back an attribute it has no type
/// for (its `get_attributes` fails on the unknown type).
fn categories(session: &Session) -> std::collections::HashMap<u64, CertCategory> {
    let mut out = std::collections::HashMap::new();
    for c in [
        CertCategory::TokenUser,
        CertCategory::Authority,
        CertCategory::OtherEntity,
    ] {
        let mut t = x509_template();
        t.push(category_attribute(c));
        for h in session.find_objects(&t).unwrap_or_default() {
            out.insert(h.handle(), c);
        }
    }
    out
}

fn describe(session: &Session, device: &str, h: ObjectHandle) -> Result<TokenCertificate> {
    let map = mapper(device, Operation::List);
    let wanted = [
        AttributeType::Value,
        AttributeType::Id,
        AttributeType::Label,
    ];
    let mut cert = TokenCertificate {
        der: Vec::new(),
        id: Vec::new(),
        label: String::new(),
        category: None,
        has_key: false,
    };
    for a in session.get_attributes(h, &wanted).map_err(&map)? {
        match a {
            Attribute::Value(v) => cert.der = v,
            Attribute::Id(v) => cert.id = v,
            Attribute::Label(v) => cert.label = String::from_utf8_lossy(&v).into_owned(),
            _ => {}
        }
    }
    if !cert.id.is_empty() {
        cert.has_key = !session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Id(cert.id.clone()),
            ])
            .map_err(&map)?
            .is_empty();
    }
    Ok(cert)
}

/// The one leaf `selector` names.
fn find_leaf(session: &Session, device: &str, selector: &CertSelector) -> Result<ObjectHandle> {
    if selector.id.is_none() && selector.label.is_none() {
        return Err(InvalidInput::Config {
            what: "certificate selector",
            reason: "name the certificate by id= or object= (its key's)",
        }
        .into());
    }
    let found = session
        .find_objects(&selector.template())
        .map_err(mapper(device, Operation::Open))?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(Error::NotFound {
            selector: format!("certificate with {selector} on {device}"),
            hint: "import the key's certificate chain (hardkey cert import), or list the \
                   token's certificates (hardkey cert list)",
        }),
        several => Err(Error::NotFound {
            selector: format!(
                "a single certificate: {selector} matches {} on {device}",
                several.len()
            ),
            hint: "delete the stale ones (hardkey cert delete, pkcs11-tool --delete-object) \
                   or add id= to the URI",
        }),
    }
}

/// The chain from `leaf`: its DER and handles, leaf first.
fn walk(
    session: &Session,
    device: &str,
    leaf: ObjectHandle,
) -> Result<Vec<(ObjectHandle, Vec<u8>)>> {
    let mut chain = vec![(leaf, value(session, device, leaf)?)];
    while chain.len() < MAX_CHAIN {
        let Some((_, child_der)) = chain.last() else {
            break;
        };
        let child = parse(child_der, chain.len())?;
        if child.issuer == child.subject {
            break;
        }
        let mut template = x509_template();
        template.push(Attribute::Subject(child.issuer.clone()));
        let candidates = session
            .find_objects(&template)
            .map_err(mapper(device, Operation::Open))?;
        let mut fallback = None;
        let mut chosen = None;
        for h in candidates {
            if chain.iter().any(|(seen, _)| *seen == h) {
                continue;
            }
            let der_bytes = value(session, device, h)?;
            let Ok(parsed) = parse(&der_bytes, chain.len() + 1) else {
                continue;
            };
            if parsed.subject != child.issuer {
                continue;
            }
            match (&child.aki, &parsed.ski) {
                (Some(aki), Some(ski)) if aki == ski => {
                    chosen = Some((h, der_bytes));
                    break;
                }
                (Some(_), Some(_)) => {}
                _ => {
                    fallback.get_or_insert((h, der_bytes));
                }
            }
        }
        match chosen.or(fallback) {
            Some(next) => chain.push(next),
            None => break,
        }
    }
    Ok(chain)
}

/// The handles of the certificates that no other certificate on the token names as issuer
/// and that are no key's certificate: the issuers of `chain` that can go with its leaf.
fn unused_issuers(
    session: &Session,
    device: &str,
    chain: &[(ObjectHandle, Vec<u8>)],
    leaving: &[ObjectHandle],
) -> Result<Vec<ObjectHandle>> {
    let map = mapper(device, Operation::Delete);
    let all = session.find_objects(&x509_template()).map_err(&map)?;
    // Issuer names of every certificate that stays (parsed from CKA_VALUE: attributes other
    // tools wrote may be missing).
    let mut staying = Vec::new();
    for h in &all {
        if leaving.contains(h) || chain.iter().any(|(c, _)| c == h) {
            continue;
        }
        if let Ok(p) = value(session, device, *h).and_then(|v| parse(&v, 0)) {
            staying.push(p.issuer);
        }
    }
    // Leaf to root: an issuer that stays keeps its own issuer too.
    let mut out = Vec::new();
    for (i, (h, der_bytes)) in chain.iter().enumerate().skip(1) {
        let Ok(p) = parse(der_bytes, i + 1) else {
            continue;
        };
        if staying.contains(&p.subject) || describe(session, device, *h)?.has_key {
            staying.push(p.issuer);
            continue;
        }
        out.push(*h);
    }
    Ok(out)
}

/// How [`Pkcs11Store::store_chain`] went.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredChain {
    /// The certificates of the chain, leaf first.
    pub certificates: usize,
    /// Issuers that were on the token already and are shared.
    pub shared_issuers: usize,
    /// Whether an older certificate of the key was replaced.
    pub replaced: bool,
}

impl Pkcs11Store {
    /// Every X.509 certificate object on the token.
    pub fn certificates(
        &self,
    ) -> impl Future<Output = Result<Vec<TokenCertificate>>> + Send + 'static + use<> {
        self.pool().run(
            JobOptions::idempotent(Operation::List),
            guard(|dev: &mut Pkcs11Device| {
                let t = dev.target();
                let handles = dev
                    .session()
                    .find_objects(&x509_template())
                    .map_err(mapper(&t.name, Operation::List))?;
                let categories = categories(dev.session());
                handles
                    .into_iter()
                    .map(|h| {
                        let mut cert = describe(dev.session(), &t.name, h)?;
                        cert.category = categories
                            .get(&h.handle())
                            .copied()
                            .or(Some(CertCategory::Unspecified));
                        Ok(cert)
                    })
                    .collect()
            }),
        )
    }

    /// The chain of the certificate `selector` names (its key's CKA_ID, or label), leaf first,
    /// with its issuers found on the token by subject (see the module documentation).
    pub fn read_chain(
        &self,
        selector: CertSelector,
    ) -> impl Future<Output = Result<Vec<Vec<u8>>>> + Send + 'static + use<> {
        self.pool().run(
            JobOptions::idempotent(Operation::Open),
            guard(move |dev: &mut Pkcs11Device| {
                let name = &dev.target().name;
                let leaf = find_leaf(dev.session(), name, &selector)?;
                Ok(walk(dev.session(), name, leaf)?
                    .into_iter()
                    .map(|(_, d)| d)
                    .collect())
            }),
        )
    }

    /// Stores `chain` (DER, leaf first) beside the private key whose CKA_ID is `key_id`: the
    /// leaf gets that CKA_ID and `label`, each issuer becomes a certificate object unless the
    /// same certificate is on the token already.
    ///
    /// Refused: no private key with that CKA_ID; a leaf that does not hold that key's public
    /// key; a certificate already beside the key, unless `replace` (then the old leaf, and
    /// issuers only it used, are destroyed once the new ones exist). A failure destroys what
    /// this call created.
    pub fn store_chain(
        &self,
        key_id: Vec<u8>,
        label: String,
        chain: Vec<Vec<u8>>,
        replace: bool,
    ) -> impl Future<Output = Result<StoredChain>> + Send + 'static + use<> {
        self.pool().run(
            JobOptions::new(Operation::Import),
            guard(move |dev: &mut Pkcs11Device| store_chain(dev, &key_id, &label, &chain, replace)),
        )
    }

    /// Destroys the certificate `selector` names and the issuers of its chain that no other
    /// certificate on the token needs (none is another key's certificate, none issued a
    /// certificate that stays). Returns how many objects went.
    pub fn delete_chain(
        &self,
        selector: CertSelector,
    ) -> impl Future<Output = Result<usize>> + Send + 'static + use<> {
        self.pool().run(
            JobOptions::new(Operation::Delete),
            guard(move |dev: &mut Pkcs11Device| {
                let t = dev.target();
                let name = &t.name;
                let _writes = t.module.writes();
                let session = dev.session();
                let leaf = find_leaf(session, name, &selector)?;
                let chain = walk(session, name, leaf)?;
                let issuers = unused_issuers(session, name, &chain, &[leaf])?;
                let map = mapper(name, Operation::Delete);
                session.destroy_object(leaf).map_err(&map)?;
                for h in &issuers {
                    session.destroy_object(*h).map_err(&map)?;
                }
                Ok(1 + issuers.len())
            }),
        )
    }
}

fn store_chain(
    dev: &mut Pkcs11Device,
    key_id: &[u8],
    label: &str,
    chain: &[Vec<u8>],
    replace: bool,
) -> Result<StoredChain> {
    let t = dev.target();
    let name = t.name.as_str();
    let session = dev.session();
    let map = mapper(name, Operation::Import);
    if chain.is_empty() {
        return Err(InvalidInput::Malformed {
            what: "certificate chain",
            reason: "it holds no certificate",
        }
        .into());
    }
    let parsed: Vec<Parsed> = chain
        .iter()
        .enumerate()
        .map(|(i, d)| parse(d, i + 1))
        .collect::<Result<_>>()?;
    let leaf = &parsed[0];
    let _writes = t.module.writes();
    let keys = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(key_id.to_vec()),
        ])
        .map_err(&map)?;
    let [key] = keys.as_slice() else {
        return Err(if keys.is_empty() {
            Error::NotFound {
                selector: format!("private key with id {} on {name}", hex::encode(key_id)),
                hint: "a certificate is stored beside its key: generate or import the key \
                       first (hardkey keygen, hardkey import)",
            }
        } else {
            Error::NotFound {
                selector: format!(
                    "a single private key: id {} matches {} keys on {name}",
                    hex::encode(key_id),
                    keys.len()
                ),
                hint: "give the key a CKA_ID of its own",
            }
        });
    };
    let (info, _) = t.describe(session, *key)?;
    if info.public_key.der() != leaf.spki.as_slice() {
        return Err(InvalidInput::Value {
            what: "certificate chain",
            given: format!(
                "leaf '{}' holds key {}, the key with id {} is {}",
                leaf.subject_text,
                hardkey_api::encoding::spki_fingerprint(&leaf.spki),
                hex::encode(key_id),
                info.public_key.fingerprint()
            ),
            expected: "a chain whose first certificate holds the key's public key (is the \
                       chain in order, leaf first? is it the right key?)",
        }
        .into());
    }
    let old = session
        .find_objects(&CertSelector::id(key_id).template())
        .map_err(&map)?;
    if !old.is_empty() && !replace {
        let subject = old
            .first()
            .and_then(|h| value(session, name, *h).ok())
            .and_then(|v| parse(&v, 1).ok())
            .map(|p| format!(" ('{}')", p.subject_text))
            .unwrap_or_default();
        return Err(InvalidInput::AlreadyExists {
            what: format!(
                "a certificate{subject} beside the key with id {} on {name}",
                hex::encode(key_id)
            ),
            remedy: "pass --force to replace it, or delete it first (hardkey cert delete)",
        }
        .into());
    }
    // What the old leaf's chain may leave unused, found before anything changes.
    let mut old_chains = Vec::new();
    for h in &old {
        old_chains.push(walk(session, name, *h)?);
    }
    let mut created: Vec<ObjectHandle> = Vec::new();
    let undo = |created: &[ObjectHandle]| {
        for h in created.iter().rev() {
            let _ = session.destroy_object(*h);
        }
    };
    let mut shared = 0;
    let result = (|| -> Result<()> {
        created.push(create(
            session,
            name,
            &chain[0],
            leaf,
            key_id,
            label,
            CertCategory::TokenUser,
        )?);
        for (der_bytes, p) in chain.iter().zip(&parsed).skip(1) {
            let mut same = x509_template();
            same.push(Attribute::Subject(p.subject.clone()));
            let present = session
                .find_objects(&same)
                .map_err(&map)?
                .into_iter()
                .any(|h| value(session, name, h).is_ok_and(|v| &v == der_bytes));
            if present {
                shared += 1;
                continue;
            }
            let id = p.ski.clone().unwrap_or_default();
            created.push(create(
                session,
                name,
                der_bytes,
                p,
                &id,
                &p.subject_text,
                CertCategory::Authority,
            )?);
        }
        Ok(())
    })();
    if let Err(e) = result {
        undo(&created);
        return Err(e);
    }
    // The new chain is in place: the old leaves go, with issuers nothing else uses.
    for (h, old_chain) in old.iter().zip(&old_chains) {
        let issuers = unused_issuers(session, name, old_chain, &[*h])?;
        session
            .destroy_object(*h)
            .map_err(mapper(name, Operation::Delete))?;
        for i in issuers {
            let _ = session.destroy_object(i);
        }
    }
    Ok(StoredChain {
        certificates: chain.len(),
        shared_issuers: shared,
        replaced: !old.is_empty(),
    })
}
