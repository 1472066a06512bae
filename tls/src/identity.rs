//! Several certificates on one listener: each handshake gets the certificate chain and key
//! that match the name the client asks for (SNI) and the signature schemes it offers.
//!
//! An [`Identity`] is a chain and the key that holds its leaf's public key. [`Identities`] is
//! an ordered set of them, selected per handshake by [`Identities::select`]:
//!
//! 1. The names come from each leaf certificate's subject alternative names (`dNSName`
//!    entries; RFC 6125 retired the common name, and so do browsers). A name matches exactly
//!    (case-insensitively, a trailing dot ignored), or through a wildcard entry `*.example.com`,
//!    which covers one label: `www.example.com`, not `example.com` nor `a.b.example.com`.
//!    Exact names win over wildcards.
//!    A server name that is an IP address literal (which RFC 6066 does not allow in SNI, but
//!    some clients send) counts as no name.
//! 2. Among the identities for that name, the first (in the order they were added) that can
//!    serve what the client offers ([`Offer`]) is chosen: its key signs with one of the
//!    client's signature schemes and, for a client that cannot negotiate TLS 1.3, the client
//!    offers a TLS 1.2 cipher suite for the key's type (ECDHE_ECDSA for an EC key, ECDHE_RSA
//!    or RSA for an RSA key) and lists the key's curve in its supported groups (RFC 8422
//!    5.1). List an ECDSA identity before an RSA one to prefer ECDSA for clients that take
//!    both. If none can, the first is chosen and the handshake fails as it would with that
//!    certificate alone.
//! 3. A client that sends no server name, or one that no identity covers, gets the default
//!    identity (the first added, unless [`Identities::default_to`] says otherwise), or a
//!    failed handshake with [`UnknownName::Refuse`] (an `unrecognized_name` alert for a name
//!    no identity covers, `handshake_failure` for a client that sent none).
//!
//! Keys may live on different devices: each identity holds its own [`SharedKey`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use hardkey_api::{KeyAlgorithm, KeyFamily, PrivateKey, SharedKey, SignatureScheme};

use crate::cert::{CertChain, key_name};
use crate::error::{Error, Result};

/// A certificate chain and the key that serves it.
#[derive(Clone)]
pub struct Identity {
    key: SharedKey,
    chain: CertChain,
}

impl Identity {
    /// `chain`, served with `key` (checked when a server starts with it:
    /// [`Identities::check`]).
    pub fn new(key: SharedKey, chain: CertChain) -> Self {
        Self { key, chain }
    }

    /// The key.
    pub fn key(&self) -> &SharedKey {
        &self.key
    }

    /// The certificate chain.
    pub fn chain(&self) -> &CertChain {
        &self.chain
    }

    /// Whether the key can make one of the `offered` signatures (any, if `offered` is empty:
    /// a TLS 1.2 client that sends no `signature_algorithms`).
    pub fn can_sign_any(&self, offered: &[SignatureScheme]) -> bool {
        offered.is_empty() || self.key.info().choose_scheme(offered).is_some()
    }

    /// Whether this identity can serve a client offering `offer`: its key signs with one of
    /// the offered schemes and, for a TLS 1.2 client, the client offers a cipher suite and (for
    /// an EC key) a group the key can be used with.
    pub fn can_serve(&self, offer: &Offer) -> bool {
        if !self.can_sign_any(&offer.schemes) {
            return false;
        }
        let Some(tls12) = &offer.tls12 else {
            return true;
        };
        let algorithm = self.key.info().algorithm;
        let suites = match algorithm.family() {
            KeyFamily::Rsa => tls12.rsa_suites,
            // RFC 8422: EdDSA certificates use the ECDHE_ECDSA suites in TLS 1.2.
            KeyFamily::Ec | KeyFamily::EdDsa => tls12.ecdsa_suites,
            _ => true,
        };
        let group = match (&tls12.groups, tls_group_of(algorithm)) {
            (Some(groups), Some(group)) => groups.contains(&group),
            _ => true,
        };
        suites && group
    }

    /// The same chain on the same key (the key's URI names it).
    fn same_as(&self, other: &Identity) -> bool {
        self.chain.certs() == other.chain.certs() && self.key.info().uri == other.key.info().uri
    }

    /// Whether every client `other` can serve, this identity can serve too: the same kind of
    /// key (for EC the same curve, which TLS 1.2 groups select; any RSA size), signing with at
    /// least `other`'s schemes.
    fn serves_all_of(&self, other: &Identity) -> bool {
        let (mine, theirs) = (self.key.info(), other.key.info());
        let same_kind = match (mine.algorithm.family(), theirs.algorithm.family()) {
            (KeyFamily::Rsa, KeyFamily::Rsa) => true,
            _ => mine.algorithm == theirs.algorithm,
        };
        same_kind
            && theirs
                .signature_schemes
                .iter()
                .all(|s| mine.signature_schemes.contains(s))
    }

    /// The same identity with another key (e.g. one with simulated latency).
    pub(crate) fn with_key(&self, key: SharedKey) -> Self {
        Self {
            key,
            chain: self.chain.clone(),
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("key", &key_name(self.key.info()))
            .field("chain", &self.chain)
            .finish()
    }
}

/// What a client's hello offers that decides which identity can serve it: its signature
/// schemes and, for a client that cannot negotiate TLS 1.3, which kinds of key its TLS 1.2
/// cipher suites and supported groups allow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Offer {
    schemes: Vec<SignatureScheme>,
    /// `None`: the client offers TLS 1.3, where the cipher suite does not name the key type
    /// and the signature scheme names the curve.
    tls12: Option<Tls12Offer>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Tls12Offer {
    /// An ECDHE_ECDSA suite is offered (or no suite hardkey classifies: not restricted).
    ecdsa_suites: bool,
    /// An ECDHE_RSA or RSA key-exchange suite is offered (likewise).
    rsa_suites: bool,
    /// The `supported_groups` code points, if the client sent the extension.
    groups: Option<Vec<u16>>,
}

impl Offer {
    /// A client offering `schemes` (those hardkey knows among its `signature_algorithms`)
    /// and able to negotiate TLS 1.3.
    pub fn new(schemes: Vec<SignatureScheme>) -> Self {
        Self {
            schemes,
            tls12: None,
        }
    }

    /// What a ClientHello offers: `schemes` as for [`new`](Self::new), the raw
    /// `cipher_suites` code points, and the `supported_groups` code points if the client sent
    /// that extension. A client that offers a TLS 1.3 cipher suite can negotiate TLS 1.3;
    /// for one that cannot, the suites and groups restrict which keys can serve it.
    pub fn from_hello(
        schemes: Vec<SignatureScheme>,
        cipher_suites: &[u16],
        groups: Option<&[u16]>,
    ) -> Self {
        if cipher_suites.iter().any(|&s| TLS13_SUITES.contains(&s)) {
            return Self::new(schemes);
        }
        let ecdsa = cipher_suites.iter().any(|s| ECDSA_SUITES.contains(s));
        let rsa = cipher_suites.iter().any(|s| RSA_SUITES.contains(s));
        // A client whose suites hardkey does not know is not restricted: the stack decides.
        let known = ecdsa || rsa;
        Self {
            schemes,
            tls12: Some(Tls12Offer {
                ecdsa_suites: ecdsa || !known,
                rsa_suites: rsa || !known,
                groups: groups.map(<[u16]>::to_vec),
            }),
        }
    }

    /// The signature schemes offered.
    pub fn schemes(&self) -> &[SignatureScheme] {
        &self.schemes
    }
}

/// The TLS 1.3 cipher suites (RFC 8446 B.4).
const TLS13_SUITES: [u16; 5] = [0x1301, 0x1302, 0x1303, 0x1304, 0x1305];
/// TLS 1.2 suites that need an ECDSA certificate (RFC 8422, RFC 5289, RFC 7905, RFC 7251).
const ECDSA_SUITES: [u16; 11] = [
    0xc009, 0xc00a, 0xc023, 0xc024, 0xc02b, 0xc02c, 0xcca9, 0xc0ac, 0xc0ad, 0xc0ae, 0xc0af,
];
/// TLS 1.2 suites that need an RSA certificate: ECDHE_RSA, DHE_RSA and RSA key exchange.
const RSA_SUITES: [u16; 25] = [
    0xc013, 0xc014, 0xc027, 0xc028, 0xc02f, 0xc030, 0xcca8, 0x0033, 0x0039, 0x0067, 0x006b, 0x009e,
    0x009f, 0xccaa, 0x000a, 0x002f, 0x0035, 0x003c, 0x003d, 0x009c, 0x009d, 0xc09c, 0xc09d, 0xc0a0,
    0xc0a1,
];

/// The TLS `supported_groups` code point of an EC key's curve (RFC 8422 5.1.1).
fn tls_group_of(algorithm: KeyAlgorithm) -> Option<u16> {
    match algorithm {
        KeyAlgorithm::EcP256 => Some(23),
        KeyAlgorithm::EcP384 => Some(24),
        _ => None,
    }
}

/// What a handshake gets when the client sends no server name, or one no identity covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnknownName {
    /// The default identity (what nginx's default server does). The default.
    #[default]
    ServeDefault,
    /// No certificate: the handshake fails (the client gets a handshake failure alert).
    Refuse,
}

/// The identities of one listener, selected per handshake (see the [module documentation]).
///
/// [module documentation]: crate::identity
///
/// Cheap to clone: the identities and the name maps are shared (copied only by a clone that
/// is then changed), so the server, its TLS stack and the reloader hold one copy of a set of
/// thousands.
#[derive(Clone)]
pub struct Identities {
    list: Arc<Vec<Identity>>,
    default: usize,
    unknown: UnknownName,
    /// Lower-case DNS name → indices into `list`, in order.
    exact: Arc<HashMap<String, Vec<usize>>>,
    /// The part after `*.` of wildcard names → indices into `list`, in order.
    wildcard: Arc<HashMap<String, Vec<usize>>>,
}

impl Identities {
    /// A set holding `first`, its default identity.
    pub fn new(first: Identity) -> Self {
        let mut set = Self {
            list: Arc::default(),
            default: 0,
            unknown: UnknownName::default(),
            exact: Arc::default(),
            wildcard: Arc::default(),
        };
        set.push(first);
        set
    }

    /// Adds `identity` after those already there.
    pub fn push(&mut self, identity: Identity) {
        let index = self.list.len();
        for name in identity.chain.dns_names() {
            let name = normalize(name);
            let (map, key) = match name.strip_prefix("*.") {
                Some(rest) => (&mut self.wildcard, rest.to_owned()),
                None => (&mut self.exact, name),
            };
            let entry = Arc::make_mut(map).entry(key).or_default();
            if !entry.contains(&index) {
                entry.push(index);
            }
        }
        Arc::make_mut(&mut self.list).push(identity);
    }

    /// [`push`](Self::push), chained.
    pub fn with(mut self, identity: Identity) -> Self {
        self.push(identity);
        self
    }

    /// Makes the `index`th identity (in the order added) the default. Fails if there is none.
    pub fn default_to(mut self, index: usize) -> Result<Self> {
        if index >= self.list.len() {
            return Err(Error::NoSuchIdentity {
                index,
                count: self.list.len(),
            });
        }
        self.default = index;
        Ok(self)
    }

    /// Sets what a client that names no covered name gets.
    pub fn unknown_names(mut self, policy: UnknownName) -> Self {
        self.unknown = policy;
        self
    }

    /// The identities, in the order added.
    pub fn iter(&self) -> impl Iterator<Item = &Identity> {
        self.list.iter()
    }

    /// How many there are (at least one).
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Always false: a set holds at least one identity.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The identity at `index` (in the order added).
    pub fn get(&self, index: usize) -> Option<&Identity> {
        self.list.get(index)
    }

    /// The default identity's index.
    pub fn default_index(&self) -> usize {
        self.default
    }

    /// The default identity.
    pub fn default_identity(&self) -> &Identity {
        &self.list[self.default]
    }

    /// The policy for names no identity covers.
    pub fn unknown_name_policy(&self) -> UnknownName {
        self.unknown
    }

    /// The index of the identity a handshake for `server_name` (`None`: the client sent
    /// none) offering `offer` gets, or `None` to refuse it.
    pub fn select(&self, server_name: Option<&str>, offer: &Offer) -> Option<usize> {
        match self.candidates(server_name) {
            Some(found) => found
                .iter()
                .copied()
                .find(|&i| self.list[i].can_serve(offer))
                .or_else(|| found.first().copied()),
            None => match self.unknown {
                UnknownName::ServeDefault => Some(self.default),
                UnknownName::Refuse => None,
            },
        }
    }

    /// Whether a handshake naming `server_name` is refused because no identity covers the
    /// name (with [`UnknownName::Refuse`]): the case for an `unrecognized_name` alert.
    pub fn refuses_name(&self, server_name: Option<&str>) -> bool {
        self.unknown == UnknownName::Refuse && self.candidates(server_name).is_none()
    }

    /// The identities covering `server_name`: exact names first, else wildcards.
    fn candidates(&self, server_name: Option<&str>) -> Option<&Vec<usize>> {
        let name = normalize(server_name?);
        // RFC 6066 3: a server name is a DNS host name, never an address literal.
        if name.parse::<std::net::IpAddr>().is_ok() {
            return None;
        }
        self.exact.get(&name).or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent)
        })
    }

    /// Checks every identity: its chain's leaf holds its key's public key
    /// ([`Error::KeyMismatch`]) and the key can sign ([`Error::KeyCannotSign`]).
    pub fn check(&self) -> Result<()> {
        for identity in self.list.iter() {
            let info = identity.key.info();
            identity.chain.check_key(info)?;
            if info.signature_schemes.is_empty() {
                return Err(Error::KeyCannotSign {
                    key: key_name(info),
                });
            }
        }
        Ok(())
    }

    /// What in this set is accepted but is probably not what was meant: names that can never
    /// match, identities no handshake can get. A server starts with them; an operator should
    /// hear of them (`hardkey serve` prints each as a warning).
    pub fn findings(&self) -> Vec<Finding> {
        let mut out = Vec::new();
        for (index, identity) in self.list.iter().enumerate() {
            for name in identity.chain.dns_names() {
                if !name_can_match(&normalize(name)) {
                    out.push(Finding::UnmatchableName {
                        identity: index,
                        name: name.clone(),
                    });
                }
            }
            // The default is served to every name no identity covers: never unreachable.
            let reachable_as_default =
                index == self.default && self.unknown == UnknownName::ServeDefault;
            if reachable_as_default {
                continue;
            }
            if let Some(of) = (0..index).find(|&i| self.list[i].same_as(identity)) {
                out.push(Finding::Duplicate {
                    identity: index,
                    of,
                });
                continue;
            }
            let names = identity.chain.dns_names();
            if names.is_empty() {
                out.push(Finding::NoName { identity: index });
                continue;
            }
            // Shadowed when, for each of its names, an identity listed before it for the same
            // name serves every client it could serve.
            let mut by = Vec::new();
            for name in names {
                let name = normalize(name);
                let list = match name.strip_prefix("*.") {
                    Some(rest) => self.wildcard.get(rest),
                    None => self.exact.get(&name),
                };
                let earlier = list
                    .into_iter()
                    .flatten()
                    .copied()
                    .take_while(|&i| i != index);
                match earlier
                    .into_iter()
                    .find(|&i| self.list[i].serves_all_of(identity))
                {
                    Some(i) => by.push(i),
                    None => {
                        by.clear();
                        break;
                    }
                }
            }
            if let Some(&first) = by.first() {
                out.push(Finding::Shadowed {
                    identity: index,
                    by: first,
                });
            }
        }
        out
    }

    /// The same set with each key replaced by `f(key)`.
    pub(crate) fn map_keys(&self, f: impl Fn(&SharedKey) -> SharedKey) -> Self {
        let mut out = self.clone();
        out.list = Arc::new(self.list.iter().map(|i| i.with_key(f(&i.key))).collect());
        out
    }
}

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identities")
            .field("list", &self.list)
            .field("default", &self.default)
            .field("unknown", &self.unknown)
            .finish()
    }
}

/// Something [`Identities::findings`] noticed. Identities are named by their index, in the
/// order added.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Finding {
    /// A DNS name in the identity's leaf that no server name can match as written: a `*`
    /// anywhere but as the whole left-most label (`*`, `*.*.example.com`,
    /// `a.*.example.com`, `w*.example.com`), compared literally; or an IP address written as
    /// a DNS name (a server name that is an address matches nothing).
    UnmatchableName {
        /// The identity.
        identity: usize,
        /// The name, as the certificate gives it.
        name: String,
    },
    /// The same chain on the same key as an identity listed before it.
    Duplicate {
        /// The identity listed again.
        identity: usize,
        /// The earlier one.
        of: usize,
    },
    /// The leaf has no DNS name, and the identity is not the default or the default is not
    /// served ([`UnknownName::Refuse`]): no handshake gets it.
    NoName {
        /// The identity.
        identity: usize,
    },
    /// For each of its names, an identity listed before it with the same kind of key serves
    /// every client it could serve: no handshake gets it.
    Shadowed {
        /// The identity never chosen.
        identity: usize,
        /// The first identity chosen instead.
        by: usize,
    },
}

impl Finding {
    /// The identity the finding is about.
    pub fn identity(&self) -> usize {
        match self {
            Self::UnmatchableName { identity, .. }
            | Self::Duplicate { identity, .. }
            | Self::NoName { identity }
            | Self::Shadowed { identity, .. } => *identity,
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnmatchableName { identity, name } => write!(
                f,
                "identity {identity}: the name {name:?} matches no server name: a wildcard \
                 is a whole left-most label (*.example.com)"
            ),
            Self::Duplicate { identity, of } => write!(
                f,
                "identity {identity} is identity {of} again (the same chain and key)"
            ),
            Self::NoName { identity } => write!(
                f,
                "identity {identity} is never served: its certificate has no DNS name and it \
                 is not the default"
            ),
            Self::Shadowed { identity, by } => write!(
                f,
                "identity {identity} is never served: identity {by} comes first for its names \
                 with the same kind of key"
            ),
        }
    }
}

/// Whether a (normalized) DNS name from a certificate can match some server name: a `*`
/// only as the whole left-most label, followed by a parent name; not an IP address (a
/// server name that is one matches nothing).
fn name_can_match(name: &str) -> bool {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return false;
    }
    match name.strip_prefix("*.") {
        Some(parent) => !parent.contains('*') && !parent.is_empty(),
        None => !name.contains('*') && !name.is_empty(),
    }
}

/// A DNS name as names are compared: ASCII lower case, without a trailing dot.
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::name_can_match;

    #[test]
    fn names_that_can_never_match_are_told() {
        for ok in [
            "a.example",
            "*.example",
            "*.a.example",
            "xn--bcher-kva.example",
        ] {
            assert!(name_can_match(ok), "{ok}");
        }
        // rcgen and most tools write an address as an IP SAN; some write it as a DNS name.
        for never in [
            "*",
            "*.",
            "*.*.example",
            "a.*.example",
            "w*.example",
            "10.0.0.2",
            "::1",
        ] {
            assert!(!name_can_match(never), "{never}");
        }
    }
}
