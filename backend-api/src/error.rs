//! hardkey's error type: one `#[non_exhaustive]` enum whose variants keep what failed and why.
//!
//! Callers classify with [`Error::kind`], [`Error::is_retryable`], [`Error::is_auth`] and
//! [`Error::is_device_lost`]; the [`DevicePool`](crate::DevicePool) uses the last one to decide
//! when a worker must rebuild its device state. Every message says what to do next.

use std::fmt;
use std::time::Duration;

use crate::algorithm::{DecryptScheme, KeyAlgorithm, SignatureScheme};
use crate::uri::UriError;

/// A boxed cause from a backend (a PKCS#11 return value, a TPM response code, an I/O error...).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used throughout hardkey.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the caller asked the device to do, named in errors and statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// A signature.
    Sign,
    /// A decryption.
    Decrypt,
    /// Key generation.
    Generate,
    /// Key import.
    Import,
    /// Key deletion.
    Delete,
    /// Key listing.
    List,
    /// Opening (finding) a key.
    Open,
    /// Connecting to or opening a session on the device.
    Connect,
    /// Any other administrative command.
    Admin,
}

impl Operation {
    /// A short lowercase name (`sign`, `decrypt`, `generate`...): the `op` label of the pool's
    /// metrics and the `op` field of its tracing spans.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Sign => "sign",
            Self::Decrypt => "decrypt",
            Self::Generate => "generate",
            Self::Import => "import",
            Self::Delete => "delete",
            Self::List => "list",
            Self::Open => "open",
            Self::Connect => "connect",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sign => "sign",
            Self::Decrypt => "decrypt",
            Self::Generate => "key generation",
            Self::Import => "key import",
            Self::Delete => "key deletion",
            Self::List => "key listing",
            Self::Open => "key lookup",
            Self::Connect => "connect",
            Self::Admin => "administration",
        })
    }
}

/// The broad class of an [`Error`], for callers that branch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No key (or token, or device) matched.
    NotFound,
    /// The key or device cannot do what was asked.
    Unsupported,
    /// Wrong PIN, password or auth value.
    AuthFailed,
    /// The PIN or the device's dictionary-attack protection is locked.
    PinLocked,
    /// The device is unreachable or lost its session; retrying later may succeed.
    DeviceUnavailable,
    /// The operation queue is full.
    Busy,
    /// The device ran out of slots, sessions or descriptors shared with other clients;
    /// retrying later may succeed.
    Exhausted,
    /// The operation did not complete before its deadline.
    Timeout,
    /// The operation was cancelled.
    Cancelled,
    /// The caller's input is malformed.
    InvalidInput,
    /// The key pool has been shut down.
    ShutDown,
    /// The backend failed in a way not covered above.
    Backend,
}

impl ErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: [ErrorKind; 12] = [
        Self::NotFound,
        Self::Unsupported,
        Self::AuthFailed,
        Self::PinLocked,
        Self::DeviceUnavailable,
        Self::Busy,
        Self::Exhausted,
        Self::Timeout,
        Self::Cancelled,
        Self::InvalidInput,
        Self::ShutDown,
        Self::Backend,
    ];

    /// A short snake_case name (`device_unavailable`, `timeout`...): the `kind` label of the
    /// pool's failure counter.
    pub const fn name(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::Unsupported => "unsupported",
            Self::AuthFailed => "auth_failed",
            Self::PinLocked => "pin_locked",
            Self::DeviceUnavailable => "device_unavailable",
            Self::Busy => "busy",
            Self::Exhausted => "exhausted",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
            Self::InvalidInput => "invalid_input",
            Self::ShutDown => "shut_down",
            Self::Backend => "backend",
        }
    }

    /// The position of this kind in [`ErrorKind::ALL`].
    pub(crate) const fn index(self) -> usize {
        self as usize
    }

    /// Whether the same request may succeed if retried later (device back, queue drained).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::DeviceUnavailable | Self::Busy | Self::Exhausted | Self::Timeout
        )
    }
}

/// hardkey's error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No key matched a URI, label or id.
    #[error("no key matches {selector}: {hint}")]
    NotFound {
        /// The URI, label or id that matched nothing.
        selector: String,
        /// What to check (list the keys, the token name, the handle...).
        hint: &'static str,
    },

    /// The key or device cannot do this.
    #[error(transparent)]
    Unsupported(#[from] Unsupported),

    /// The PIN, password or auth value was rejected.
    #[error("authentication failed for {target}: check the PIN or auth value ({source})")]
    AuthFailed {
        /// Token, key or hierarchy the secret was for.
        target: String,
        /// The device's answer.
        #[source]
        source: BoxError,
    },

    /// The PIN is locked or the device is in dictionary-attack lockout.
    #[error("{target} is locked: {remedy}")]
    PinLocked {
        /// Token, key or hierarchy that is locked.
        target: String,
        /// How to unlock it (e.g. "reset the user PIN with the SO PIN").
        remedy: &'static str,
        /// The device's answer, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// The device is unreachable, or its session or connection was lost. Retriable: the pool
    /// rebuilds its device state in the background.
    #[error("{device} is unavailable: {source}")]
    DeviceUnavailable {
        /// The device (pool) name.
        device: String,
        /// Why it is unavailable.
        #[source]
        source: BoxError,
    },

    /// The device ran out of something it shares with other clients: TPM object or session
    /// slots, PKCS#11 sessions, memory, the process's file descriptors. Retriable: the same
    /// request may succeed once others free theirs; `remedy` says what frees them.
    #[error("{device} is out of {resource}: {remedy} ({source})")]
    Exhausted {
        /// The device (pool) name.
        device: String,
        /// What ran out ("transient object slots", "file descriptors").
        resource: &'static str,
        /// What frees it.
        remedy: String,
        /// The device's answer.
        #[source]
        source: BoxError,
    },

    /// The device's queue is full and the caller asked to fail fast.
    #[error(
        "{device} is busy: all {capacity} queue slots are taken; retry later, \
         or give the pool more workers or a longer queue"
    )]
    Busy {
        /// The device (pool) name.
        device: String,
        /// The queue capacity.
        capacity: usize,
    },

    /// The operation missed its deadline (queue wait included).
    #[error("{op} on {device} timed out after {after:?}: the device is slow or overloaded")]
    Timeout {
        /// The device (pool) name.
        device: String,
        /// What timed out.
        op: Operation,
        /// The deadline that passed.
        after: Duration,
    },

    /// The operation was not started: less of its deadline was left than the fastest recent
    /// operation of its kind took on the device, so it would have timed out anyway.
    #[error(
        "{op} on {device} not started: {left:?} of its deadline was left, and the fastest \
         recent {op} there took {takes:?} (the device is overloaded, or the deadline too short)"
    )]
    NoTimeLeft {
        /// The device (pool) name.
        device: String,
        /// What was not started.
        op: Operation,
        /// What was left of the deadline when a worker took the job.
        left: Duration,
        /// The fastest recent operation of this kind on that worker.
        takes: Duration,
    },

    /// The device or its owner cancelled the operation.
    #[error("{op} on {device} was cancelled: {source}")]
    Cancelled {
        /// The device (pool) name.
        device: String,
        /// What was cancelled.
        op: Operation,
        /// Why.
        #[source]
        source: BoxError,
    },

    /// The caller's input is malformed.
    #[error(transparent)]
    InvalidInput(#[from] InvalidInput),

    /// A key URI is malformed.
    #[error(transparent)]
    Uri(#[from] UriError),

    /// The pool serving this key was shut down.
    #[error("{device} is shut down: {op} was not run; open the key again from a live store")]
    ShutDown {
        /// The device (pool) name.
        device: String,
        /// The operation that was refused or dropped from the queue.
        op: Operation,
    },

    /// The backend failed.
    #[error("{op} failed on {device}: {source}")]
    Backend {
        /// The device (pool) name.
        device: String,
        /// What failed.
        op: Operation,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// The broad class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::Unsupported(_) => ErrorKind::Unsupported,
            Self::AuthFailed { .. } => ErrorKind::AuthFailed,
            Self::PinLocked { .. } => ErrorKind::PinLocked,
            Self::DeviceUnavailable { .. } => ErrorKind::DeviceUnavailable,
            Self::Busy { .. } => ErrorKind::Busy,
            Self::Exhausted { .. } => ErrorKind::Exhausted,
            Self::Timeout { .. } | Self::NoTimeLeft { .. } => ErrorKind::Timeout,
            Self::Cancelled { .. } => ErrorKind::Cancelled,
            Self::InvalidInput(_) | Self::Uri(_) => ErrorKind::InvalidInput,
            Self::ShutDown { .. } => ErrorKind::ShutDown,
            Self::Backend { .. } => ErrorKind::Backend,
        }
    }

    /// Whether the same request may succeed if retried later (device back, queue drained).
    ///
    /// For operations that change the device (generate, import, delete), a timeout or a lost
    /// device does not tell whether the device acted before failing: list the keys before
    /// retrying. Sign and decrypt are safe to retry.
    pub fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }

    /// Whether the error is about credentials (wrong or locked PIN / auth value).
    /// Such errors are never retried automatically: a retry could lock the token.
    pub fn is_auth(&self) -> bool {
        matches!(self.kind(), ErrorKind::AuthFailed | ErrorKind::PinLocked)
    }

    /// Whether the device state (session, context, connection) that produced this error must be
    /// thrown away and rebuilt before the next operation.
    pub fn is_device_lost(&self) -> bool {
        matches!(self.kind(), ErrorKind::DeviceUnavailable)
    }

    /// A device-unavailable error with a cause.
    pub fn device_unavailable(device: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::DeviceUnavailable {
            device: device.into(),
            source: source.into(),
        }
    }

    /// A backend error with a cause.
    pub fn backend(device: impl Into<String>, op: Operation, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            device: device.into(),
            op,
            source: source.into(),
        }
    }

    /// A not-found error for a selector (URI, label, id).
    pub fn not_found(selector: impl fmt::Display, hint: &'static str) -> Self {
        Self::NotFound {
            selector: selector.to_string(),
            hint,
        }
    }
}

/// Something a key or device cannot do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Unsupported {
    /// The key's algorithm cannot produce this signature scheme.
    #[error(
        "a {key} key cannot sign with {scheme}; use one of: {}",
        list(key.signature_schemes())
    )]
    SignatureScheme {
        /// The requested scheme.
        scheme: SignatureScheme,
        /// The key's algorithm.
        key: KeyAlgorithm,
    },

    /// The device refuses a scheme the key's algorithm would allow (e.g. a TPM whose PSS salt
    /// length differs and whose key forbids raw RSA).
    #[error("{device} cannot sign with {scheme} using this key: {reason}")]
    SchemeOnDevice {
        /// The requested scheme.
        scheme: SignatureScheme,
        /// The device.
        device: String,
        /// Why, and what to do instead.
        reason: &'static str,
    },

    /// The key cannot decrypt with this scheme.
    #[error("a {key} key cannot decrypt with {scheme}; {}", decrypt_hint(*key))]
    DecryptScheme {
        /// The requested scheme.
        scheme: DecryptScheme,
        /// The key's algorithm.
        key: KeyAlgorithm,
    },

    /// Legacy PKCS#1 v1.5 decryption was asked for without the explicit opt-in.
    #[error(
        "RSA PKCS#1 v1.5 decryption is disabled: it is a padding oracle kept only for legacy \
         TLS 1.2 RSA key exchange; use rsa-oaep-sha256, or open the key from a store configured \
         with KeyPolicy::allow_legacy_rsa_pkcs1v15_decrypt if you really need it"
    )]
    LegacyDecryptDisabled,

    /// The device cannot decrypt with this scheme using this key (a token without the
    /// mechanism, and a key that forbids the raw RSA host-side decoding would need).
    #[error("{device} cannot decrypt with {scheme} using this key: {reason}")]
    DecryptOnDevice {
        /// The requested scheme.
        scheme: DecryptScheme,
        /// The device.
        device: String,
        /// Why, and what to do instead.
        reason: &'static str,
    },

    /// Legacy PKCS#1 v1.5 decryption of a software key: the `rsa` crate's private-key
    /// operation is not constant time (RUSTSEC-2023-0071, the Marvin attack), which makes it
    /// a padding oracle over the network.
    #[error(
        "RSA PKCS#1 v1.5 decryption is refused for software keys: the RSA implementation they \
         use is not constant time (RUSTSEC-2023-0071, Marvin attack); keep a key that must \
         serve TLS 1.2 RSA key exchange on a token or TPM, or offer only ECDHE cipher suites"
    )]
    LegacyDecryptInSoftware,

    /// The device cannot make keys of this algorithm.
    #[error("{device} does not support {algorithm} keys")]
    Algorithm {
        /// The requested algorithm.
        algorithm: KeyAlgorithm,
        /// The device.
        device: String,
    },

    /// The key's usage flags do not allow this operation.
    #[error("key {key} is not allowed to {op} (its usage flags forbid it)")]
    Usage {
        /// The key (label or id).
        key: String,
        /// The refused operation.
        op: Operation,
    },

    /// The store cannot open this kind of URI.
    #[error("{store} cannot open '{uri}': it serves {serves} URIs")]
    UriScheme {
        /// The URI given.
        uri: String,
        /// The store that refused it.
        store: &'static str,
        /// The URI scheme it does serve.
        serves: &'static str,
    },

    /// The store did not create this key's file and will not destroy it.
    #[error(
        "key {key} was opened from {location}, a file hardkey did not create; \
         remove the file yourself if you mean to destroy the key"
    )]
    NotOwned {
        /// The key.
        key: String,
        /// Where it came from.
        location: String,
    },

    /// The key's device or policy does not offer a scheme its algorithm allows.
    #[error("key {key} does not offer {scheme}; it offers: {offered}")]
    SchemeNotOffered {
        /// The requested scheme.
        scheme: SignatureScheme,
        /// The key (label or id).
        key: String,
        /// The schemes it does offer.
        offered: String,
    },

    /// The store or device does not implement this operation.
    #[error("{device} does not support {op}")]
    Operation {
        /// The operation.
        op: Operation,
        /// The device.
        device: String,
    },
}

fn list(schemes: &[SignatureScheme]) -> String {
    schemes
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn decrypt_hint(key: KeyAlgorithm) -> &'static str {
    match key.family() {
        crate::algorithm::KeyFamily::Rsa => "use rsa-oaep-sha256",
        crate::algorithm::KeyFamily::Ec => "EC keys sign only; use an RSA key to decrypt",
        crate::algorithm::KeyFamily::EdDsa => "EdDSA keys sign only; use an RSA key to decrypt",
    }
}

fn hash_name(scheme: &SignatureScheme) -> &'static str {
    scheme.hash().map_or("message", |h| h.name())
}

/// Malformed input from the caller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidInput {
    /// A digest of the wrong length for the scheme's hash.
    #[error(
        "{scheme} needs a {expected}-byte {} digest, got {got} bytes",
        hash_name(scheme)
    )]
    DigestLength {
        /// The scheme the digest was for.
        scheme: SignatureScheme,
        /// The hash length the scheme needs.
        expected: usize,
        /// The length given.
        got: usize,
    },

    /// A digest given to a scheme that signs the whole message (EdDSA has no pre-hash: the
    /// device must see the message itself).
    #[error(
        "{scheme} signs the whole message, not a digest (EdDSA has no pre-hash): pass the \
         message itself (PrivateKey::sign; `hardkey sign` without --digest)"
    )]
    DigestForMessageScheme {
        /// The scheme.
        scheme: SignatureScheme,
    },

    /// A message given to the message path of a scheme that signs a digest.
    #[error("{scheme} signs a digest: hash the message first (PrivateKey::sign does)")]
    MessageForDigestScheme {
        /// The scheme.
        scheme: SignatureScheme,
    },

    /// A ciphertext whose length is not the key's modulus length.
    #[error("ciphertext is {got} bytes but this RSA key needs exactly {expected}")]
    CiphertextLength {
        /// The modulus length in bytes.
        expected: usize,
        /// The length given.
        got: usize,
    },

    /// A name (algorithm, scheme...) that hardkey does not know.
    #[error("unknown {what} '{given}': expected {expected}")]
    UnknownName {
        /// What kind of name.
        what: &'static str,
        /// The name given.
        given: String,
        /// The accepted names.
        expected: &'static str,
    },

    /// A private or public key encoding that could not be read.
    #[error("cannot read {what}: {source}")]
    KeyEncoding {
        /// What was being read (e.g. "PKCS#8 private key in key.pem").
        what: String,
        /// The decoder's error.
        #[source]
        source: BoxError,
    },

    /// A signature or other encoded value that is malformed.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was malformed.
        what: &'static str,
        /// What was wrong with it.
        reason: &'static str,
    },

    /// Something that must be new already exists.
    #[error("{what} already exists: {remedy}")]
    AlreadyExists {
        /// What exists (e.g. "key 'web' in this store").
        what: String,
        /// What to do.
        remedy: &'static str,
    },

    /// A configuration value out of range.
    #[error("invalid {what}: {reason}")]
    Config {
        /// The setting.
        what: &'static str,
        /// Why it is invalid.
        reason: &'static str,
    },

    /// A value the caller typed that does not have the expected form (a certificate subject,
    /// a subject alternative name...), quoted back with the form it should have.
    #[error("invalid {what} '{given}': expected {expected}")]
    Value {
        /// What kind of value.
        what: &'static str,
        /// The value given (the offending part of it, when the input is a list).
        given: String,
        /// The accepted form, with an example.
        expected: &'static str,
    },

    /// A structure that could not be DER-encoded (e.g. a field longer than DER allows).
    #[error("cannot encode {what}: {source}")]
    Encoding {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's error.
        #[source]
        source: BoxError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_listed_at_its_index_with_a_distinct_name() {
        for (i, kind) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i, "{kind:?}");
            assert_eq!(
                ErrorKind::ALL
                    .iter()
                    .filter(|k| k.name() == kind.name())
                    .count(),
                1
            );
        }
    }

    #[test]
    fn classification() {
        let lost = Error::device_unavailable("softhsm", "session closed");
        assert!(lost.is_device_lost() && lost.is_retryable() && !lost.is_auth());
        let locked = Error::PinLocked {
            target: "token 'web'".into(),
            remedy: "unlock it with the SO PIN (hardkey token init-pin)",
            source: None,
        };
        assert!(locked.is_auth() && !locked.is_retryable());
        assert_eq!(locked.kind(), ErrorKind::PinLocked);
        let busy = Error::Busy {
            device: "tpm".into(),
            capacity: 8,
        };
        assert!(busy.is_retryable() && !busy.is_device_lost());
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = Error::from(Unsupported::SignatureScheme {
            scheme: SignatureScheme::RsaPssSha256,
            key: KeyAlgorithm::EcP256,
        });
        assert_eq!(
            e.to_string(),
            "a p256 key cannot sign with rsa-pss-sha256; use one of: ecdsa-p256-sha256"
        );
        let e = Error::from(Unsupported::DecryptScheme {
            scheme: DecryptScheme::RsaOaepSha256,
            key: KeyAlgorithm::EcP384,
        });
        assert!(e.to_string().contains("use an RSA key"), "{e}");
    }
}
