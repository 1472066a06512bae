//! Key URIs: `pkcs11:` (RFC 7512), `tpm2:` (hardkey's own scheme) and `file:` (RFC 8089).
//!
//! [`KeyUri`] parses with [`FromStr`] and prints with [`Display`](fmt::Display); the two
//! round-trip: `parse(display(x)) == x` for every value that parsing can produce, except that
//! Display leaves out a `pin-value` (use [`Pkcs11Uri::to_string_with_pin`]), and
//! `display(parse(s)) == s` when `s` is in canonical form (attributes in the canonical order, only the characters the grammar requires
//! percent-encoded, upper-case hex). The scheme is matched case-insensitively.
//!
//! ```
//! use hardkey_api::uri::{KeyUri, Pkcs11Uri, ObjectType};
//!
//! let uri: KeyUri = "pkcs11:token=web;object=tls;type=private?module-name=softhsm2".parse()?;
//! let KeyUri::Pkcs11(p) = &uri else { unreachable!() };
//! assert_eq!(p.token(), Some("web"));
//! assert_eq!(p.object_type(), Some(ObjectType::Private));
//!
//! // The CLI builds URIs the same way.
//! let built = Pkcs11Uri::new().with_token("web").with_object("tls").with_object_type(ObjectType::Private);
//! assert_eq!(built.to_string(), "pkcs11:token=web;object=tls;type=private");
//! # Ok::<(), hardkey_api::UriError>(())
//! ```
//!
//! # `pkcs11:`
//!
//! The grammar is RFC 7512's, read strictly: path attributes are separated by `;`, query
//! attributes (after `?`) by `&`; values may hold unencoded only the characters of `pk11-pchar`
//! (path) or `pk11-qchar` (query), everything else must be written `%XX`. A character outside the
//! grammar (a space, `#`, `/` in the path, a non-ASCII letter...) is an error that says how to
//! encode it, rather than a guess. Attribute names and `type` values are matched
//! case-insensitively (RFC 5234 string literals) and printed in lower case.
//!
//! * Every path attribute, and every standard query attribute, may appear at most once
//!   (RFC 7512 section 2.3). Vendor query attributes (`x-...`) may repeat.
//! * `id` is a byte string; every other text attribute must decode to UTF-8. On output `id` is
//!   always fully `%XX`-encoded with upper-case hex, as in RFC 7512's own examples (`%01%AB`).
//! * Vendor attributes (`x-...`) and attributes this parser does not know are kept verbatim
//!   (still percent-encoded, as written) and printed back as written. As in p11-kit, an
//!   unrecognized non-vendor attribute makes the URI match nothing: it may be a constraint we
//!   cannot check ([`Pkcs11Uri::has_unrecognized`]).
//! * hardkey also accepts its own query attribute `max-sessions=N`: how many sessions the device
//!   pool opens. It is not part of RFC 7512, so other PKCS#11 URI consumers (p11-kit, OpenSSL's
//!   pkcs11-provider) will treat a URI that carries it as unrecognized.
//! * `pin-value` is refused unless [`UriParseOptions::allow_pin_value`] is set: a PIN in a URI
//!   ends up in shell history, process lists and logs. Use `pin-source=file:...` or the
//!   `HARDKEY_PIN` environment variable. When it is accepted it is kept as a
//!   [`SecretString`](secrecy::SecretString), [`Display`](fmt::Display) *omits* it (so logging a URI never prints the
//!   PIN) and only [`Pkcs11Uri::to_string_with_pin`] prints it, into another [`SecretString`](secrecy::SecretString).
//!
//! # `tpm2:`
//!
//! `tpm2:handle=0x81000010` (a persistent handle, hex with `0x` or decimal, in
//! [`Tpm2Uri::PERSISTENT_HANDLES`]) or `tpm2:file=/path/key.tss2.pem` (a `TSS2 PRIVATE KEY` PEM
//! file), with an optional query `?tcti=swtpm:host=127.0.0.1,port=2321` (the value runs to the next
//! `&`). The syntax is that of `pkcs11:`, except that `/` may appear unencoded in path values. This
//! is hardkey's own scheme, so it is strict: exactly one of `handle` and `file`, and any other
//! attribute is an error.
//!
//! # `file:`
//!
//! `file:key.pem` (relative), `file:/abs/key.pem` and `file:///abs/key.pem` (RFC 8089, empty
//! authority; `file://localhost/...` is accepted too, any other host is an error). The path is
//! percent-decoded; a literal `?` or `#` is an error (write `%3F`, `%23`). On output only space,
//! `%`, `?`, `#`, `;`, control characters and non-ASCII bytes are encoded. Windows drive-letter
//! forms (`file:///C:/...`) are not special-cased.
//!
//! # Errors
//!
//! A [`UriError`] names the byte offset in the input, what was found and what was expected, e.g.
//! `invalid key URI 'pkcs11:tok%en=web' at byte 10: bad percent-encoding "%en" (expected two hex
//! digits after '%')`. The value of a `pin-value` attribute is never copied into an error.

mod error;
mod file;
mod lex;
mod pkcs11;
mod redact;
#[cfg(test)]
mod tests;
mod tpm2;
mod write;

use std::fmt;
use std::str::FromStr;

use self::error::error;
use self::lex::split_scheme;

pub use error::{UriComponent, UriError, UriErrorReason};
pub use file::FileUri;
pub use pkcs11::{LibraryVersion, ObjectType, Pkcs11Uri, TokenAttrs};
pub use redact::redact;
pub use tpm2::{Tpm2Key, Tpm2Uri};

/// A key URI: where a private key lives.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per key at configuration time; plain variants keep matching simple"
)]
pub enum KeyUri {
    /// `pkcs11:` an object on a PKCS#11 token (RFC 7512).
    Pkcs11(Pkcs11Uri),
    /// `tpm2:` a TPM 2.0 key: a persistent handle or a TSS2 key file.
    Tpm2(Tpm2Uri),
    /// `file:` a PEM PKCS#8 software key.
    File(FileUri),
}

impl KeyUri {
    /// Parse with explicit options (e.g. to accept `pkcs11:` URIs carrying a `pin-value`).
    /// [`FromStr`] uses [`UriParseOptions::default()`].
    pub fn parse_with(s: &str, opts: &UriParseOptions) -> Result<Self, UriError> {
        let (scheme, rest, offset) = split_scheme(s)?;
        if scheme.eq_ignore_ascii_case(Pkcs11Uri::SCHEME) {
            Pkcs11Uri::parse_rest(s, rest, offset, opts).map(Self::Pkcs11)
        } else if scheme.eq_ignore_ascii_case(Tpm2Uri::SCHEME) {
            Tpm2Uri::parse_rest(s, rest, offset).map(Self::Tpm2)
        } else if scheme.eq_ignore_ascii_case(FileUri::SCHEME) {
            FileUri::parse_rest(s, rest, offset).map(Self::File)
        } else {
            Err(error(
                s,
                0,
                UriErrorReason::UnknownScheme {
                    scheme: scheme.to_owned(),
                },
                "one of pkcs11:, tpm2:, file:",
            ))
        }
    }

    /// The URI's scheme, without the colon: `"pkcs11"`, `"tpm2"` or `"file"`.
    pub fn scheme(&self) -> &'static str {
        match self {
            Self::Pkcs11(_) => Pkcs11Uri::SCHEME,
            Self::Tpm2(_) => Tpm2Uri::SCHEME,
            Self::File(_) => FileUri::SCHEME,
        }
    }
}

impl FromStr for KeyUri {
    type Err = UriError;
    fn from_str(s: &str) -> Result<Self, UriError> {
        Self::parse_with(s, &UriParseOptions::default())
    }
}

impl fmt::Display for KeyUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pkcs11(u) => u.fmt(f),
            Self::Tpm2(u) => u.fmt(f),
            Self::File(u) => u.fmt(f),
        }
    }
}

impl From<Pkcs11Uri> for KeyUri {
    fn from(u: Pkcs11Uri) -> Self {
        Self::Pkcs11(u)
    }
}

impl From<Tpm2Uri> for KeyUri {
    fn from(u: Tpm2Uri) -> Self {
        Self::Tpm2(u)
    }
}

impl From<FileUri> for KeyUri {
    fn from(u: FileUri) -> Self {
        Self::File(u)
    }
}

/// Options for [`KeyUri::parse_with`] and [`Pkcs11Uri::parse_with`].
///
/// ```
/// use hardkey_api::uri::{KeyUri, UriParseOptions};
/// let opts = UriParseOptions::new().allow_pin_value(true);
/// let uri = KeyUri::parse_with("pkcs11:token=web?pin-value=1234", &opts)?;
/// assert_eq!(uri.to_string(), "pkcs11:token=web"); // Display never prints the PIN
/// # Ok::<(), hardkey_api::UriError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UriParseOptions {
    /// Accept the `pin-value` query attribute of `pkcs11:` URIs. Off by default: a PIN in a URI
    /// ends up in shell history, process lists and logs.
    pub allow_pin_value: bool,
}

impl UriParseOptions {
    /// The default options: `pin-value` refused.
    pub const fn new() -> Self {
        Self {
            allow_pin_value: false,
        }
    }

    /// Accept (or refuse) `pin-value`.
    #[must_use]
    pub const fn allow_pin_value(mut self, allow: bool) -> Self {
        self.allow_pin_value = allow;
        self
    }
}
