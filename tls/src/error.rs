//! hardkey-tls's error type: what failed while setting up or starting a server, and why.
//!
//! Errors of a single connection (a failed handshake, a client that went away) never stop a
//! server: they are logged (the `log` crate, target `hardkey_tls`) and counted in
//! [`ServerStats`](crate::ServerStats).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hardkey_api::{BoxError, KeyAlgorithm, SignatureScheme};

use crate::server::Stack;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failure to configure or start a TLS server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The certificate chain file could not be read.
    #[error("cannot read the certificate chain {}: {source}", path.display())]
    ReadCertificate {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The input holds no certificate.
    #[error(
        "no certificate in {origin}: expected PEM blocks '-----BEGIN CERTIFICATE-----', \
         the server's certificate first, then its issuers"
    )]
    NoCertificate {
        /// Where the chain came from (a file name, or "the PEM input").
        origin: String,
    },

    /// The CA file holds no certificate.
    #[error(
        "no CA certificate in {origin}: expected PEM blocks '-----BEGIN CERTIFICATE-----' of \
         the certificate authorities to trust"
    )]
    NoTrustAnchor {
        /// Where the certificates came from (a file name, or "the PEM input").
        origin: String,
    },

    /// A certificate could not be decoded.
    #[error("certificate #{index} in {origin} is not a valid X.509 certificate: {source}")]
    BadCertificate {
        /// Where the chain came from.
        origin: String,
        /// Position in the chain, 1 = the server's certificate.
        index: usize,
        /// The PEM or DER error.
        #[source]
        source: BoxError,
    },

    /// The certificate's public key is not the key's public key.
    #[error(transparent)]
    KeyMismatch(Box<KeyMismatch>),

    /// The key offers no signature scheme (its usages exclude signing).
    #[error(
        "key {key} cannot sign (its usages do not include signing): a TLS server key must sign"
    )]
    KeyCannotSign {
        /// The key's name.
        key: String,
    },

    /// [`Identities::default_to`](crate::Identities::default_to) named an identity that is not
    /// there.
    #[error("no identity {index} to make the default: the set holds {count} (counted from 0)")]
    NoSuchIdentity {
        /// The index asked for.
        index: usize,
        /// How many identities there are.
        count: usize,
    },

    /// The key failed the test signature made before it is served (at startup, and on each
    /// reload).
    #[error(
        "key {key} failed its test signature ({scheme}): {source}. It is not served (at \
         startup the server does not start; on a reload the previous set stays): check that \
         the device is reachable and the key usable (or disable the probe)"
    )]
    KeyProbe {
        /// The key's name.
        key: String,
        /// The scheme of the test signature.
        scheme: SignatureScheme,
        /// The device's error.
        #[source]
        source: Box<hardkey_api::Error>,
    },

    /// The key did not answer its test signature (at startup, on a reload) in time.
    #[error(
        "key {key} did not complete its test signature within {timeout:?}: is the device \
         reachable? It is not served"
    )]
    KeyProbeTimeout {
        /// The key's name.
        key: String,
        /// How long the server waited.
        timeout: Duration,
    },

    /// A TLS stack name that is neither `boring` nor `rustls`.
    #[error("unknown TLS stack '{given}': expected boring or rustls")]
    UnknownStack {
        /// The name given.
        given: String,
    },

    /// The requested TLS stack is not compiled in.
    #[error("the {stack} TLS stack is not in this build: enable hardkey-tls's '{feature}' feature")]
    StackNotBuilt {
        /// The stack asked for.
        stack: Stack,
        /// The cargo feature that builds it.
        feature: &'static str,
    },

    /// The TLS library refused part of the configuration.
    #[error("cannot set up the {stack} TLS context ({what}): {source}")]
    TlsSetup {
        /// The stack.
        stack: Stack,
        /// The step that failed.
        what: &'static str,
        /// The library's error.
        #[source]
        source: BoxError,
    },

    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The server's runtime or thread could not be started.
    #[error("cannot start the server's runtime: {source}")]
    Runtime {
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The server has stopped: there is nothing to reload.
    #[error("the server has stopped: start it again to serve new certificates")]
    ServerStopped,

    /// The server's thread ended without reporting (it panicked).
    #[error("the server thread stopped unexpectedly")]
    ServerThread,
}

/// The details of [`Error::KeyMismatch`]: both keys, named so the operator can tell which
/// certificate or key to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[error(
    "the certificate does not match the key: the certificate for {subject} (from {origin}) \
     holds public key {cert_key} sha256:{cert_fingerprint}, while key {key} is \
     {key_algorithm} sha256:{key_fingerprint}. Use the certificate issued for this key (a CSR \
     made with this key, signed by your CA), or the key the certificate was issued for"
)]
pub struct KeyMismatch {
    /// The certificate's subject name.
    pub subject: String,
    /// Where the chain came from.
    pub origin: String,
    /// The certificate's key type (`p256`, `rsa2048`, or why hardkey does not know it).
    pub cert_key: String,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo, hex.
    pub cert_fingerprint: String,
    /// The key's name (label or id, and URI if any).
    pub key: String,
    /// The key's algorithm.
    pub key_algorithm: KeyAlgorithm,
    /// SHA-256 of the key's SubjectPublicKeyInfo, hex.
    pub key_fingerprint: String,
}
