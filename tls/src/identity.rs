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
//! 2. Among the identities for that name, the first (in the order they were added) whose key
//!    can sign with one of the schemes the client offers is chosen: list an ECDSA identity
//!    before an RSA one to prefer ECDSA for clients that take both. If none can, the first is
//!    chosen and the handshake fails as it would with that certificate alone.
//! 3. A client that sends no server name, or one that no identity covers, gets the default
//!    identity (the first added, unless [`Identities::default_to`] says otherwise), or a
//!    failed handshake with [`UnknownName::Refuse`].
//!
//! Keys may live on different devices: each identity holds its own [`SharedKey`].

use std::collections::HashMap;
use std::fmt;

use hardkey_api::{PrivateKey, SharedKey, SignatureScheme};

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
#[derive(Clone)]
pub struct Identities {
    list: Vec<Identity>,
    default: usize,
    unknown: UnknownName,
    /// Lower-case DNS name → indices into `list`, in order.
    exact: HashMap<String, Vec<usize>>,
    /// The part after `*.` of wildcard names → indices into `list`, in order.
    wildcard: HashMap<String, Vec<usize>>,
}

impl Identities {
    /// A set holding `first`, its default identity.
    pub fn new(first: Identity) -> Self {
        let mut set = Self {
            list: Vec::new(),
            default: 0,
            unknown: UnknownName::default(),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
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
            let entry = map.entry(key).or_default();
            if !entry.contains(&index) {
                entry.push(index);
            }
        }
        self.list.push(identity);
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
    /// none) offering `offered` gets, or `None` to refuse it.
    pub fn select(&self, server_name: Option<&str>, offered: &[SignatureScheme]) -> Option<usize> {
        let candidates = server_name.map(normalize).and_then(|name| {
            self.exact.get(&name).or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
        });
        match candidates {
            Some(found) => found
                .iter()
                .copied()
                .find(|&i| self.list[i].can_sign_any(offered))
                .or_else(|| found.first().copied()),
            None => match self.unknown {
                UnknownName::ServeDefault => Some(self.default),
                UnknownName::Refuse => None,
            },
        }
    }

    /// Checks every identity: its chain's leaf holds its key's public key
    /// ([`Error::KeyMismatch`]) and the key can sign ([`Error::KeyCannotSign`]).
    pub fn check(&self) -> Result<()> {
        for identity in &self.list {
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

    /// The same set with each key replaced by `f(key)`.
    pub(crate) fn map_keys(&self, f: impl Fn(&SharedKey) -> SharedKey) -> Self {
        let mut out = self.clone();
        out.list = self.list.iter().map(|i| i.with_key(f(&i.key))).collect();
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

/// A DNS name as names are compared: ASCII lower case, without a trailing dot.
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}
