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
//!   [`SecretString`], [`Display`](fmt::Display) *omits* it (so logging a URI never prints the
//!   PIN) and only [`Pkcs11Uri::to_string_with_pin`] prints it, into another [`SecretString`].
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

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::num::NonZeroUsize;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use percent_encoding::percent_encode_byte;
use secrecy::{ExposeSecret, SecretString};
use zeroize::{Zeroize, Zeroizing};

// ------------------------------------------------------------------------------------------------
// KeyUri
// ------------------------------------------------------------------------------------------------

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

// ------------------------------------------------------------------------------------------------
// pkcs11:
// ------------------------------------------------------------------------------------------------

/// The PKCS#11 object class named by the `type` attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectType {
    /// `cert`: `CKO_CERTIFICATE`.
    Cert,
    /// `data`: `CKO_DATA`.
    Data,
    /// `private`: `CKO_PRIVATE_KEY`.
    Private,
    /// `public`: `CKO_PUBLIC_KEY`.
    Public,
    /// `secret-key`: `CKO_SECRET_KEY`.
    SecretKey,
}

impl ObjectType {
    /// The name used in URIs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cert => "cert",
            Self::Data => "data",
            Self::Private => "private",
            Self::Public => "public",
            Self::SecretKey => "secret-key",
        }
    }

    /// The type named `name` (case-insensitive), if any.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Cert,
            Self::Data,
            Self::Private,
            Self::Public,
            Self::SecretKey,
        ]
        .into_iter()
        .find(|t| t.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for ObjectType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A PKCS#11 library version (`CK_VERSION`), as in the `library-version` attribute.
///
/// `library-version=3` means 3.0; it prints as `3` when the minor number is 0, else as `M.N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LibraryVersion {
    /// `CK_VERSION.major`.
    pub major: u8,
    /// `CK_VERSION.minor`.
    pub minor: u8,
}

impl LibraryVersion {
    /// A version `major.minor`.
    pub const fn new(major: u8, minor: u8) -> Self {
        Self { major, minor }
    }

    fn parse(s: &str) -> Option<Self> {
        let (major, minor) = match s.split_once('.') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let major = parse_digits(major)?;
        let minor = match minor {
            Some(m) => parse_digits(m)?,
            None => 0,
        };
        Some(Self { major, minor })
    }
}

impl fmt::Display for LibraryVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.minor == 0 {
            write!(f, "{}", self.major)
        } else {
            write!(f, "{}.{}", self.major, self.minor)
        }
    }
}

/// The string fields of a token (`CK_TOKEN_INFO`) that [`Pkcs11Uri::matches_token`] compares.
///
/// PKCS#11 pads them with spaces; pass them padded or trimmed, trailing spaces are ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenAttrs<'a> {
    /// `CK_TOKEN_INFO.label` (URI attribute `token`).
    pub label: &'a str,
    /// `CK_TOKEN_INFO.manufacturerID` (URI attribute `manufacturer`).
    pub manufacturer: &'a str,
    /// `CK_TOKEN_INFO.serialNumber` (URI attribute `serial`).
    pub serial: &'a str,
    /// `CK_TOKEN_INFO.model` (URI attribute `model`).
    pub model: &'a str,
}

/// A `pkcs11:` URI (RFC 7512).
///
/// Build one with [`Pkcs11Uri::new`] and the `with_*` methods, or parse one. Absent attributes
/// match anything. See the [module documentation](self) for the syntax, the canonical form and
/// the handling of `pin-value`.
///
/// `Debug` shows a `pin-value` as `[redacted]`; `Display` leaves it out entirely.
#[derive(Clone, Default)]
pub struct Pkcs11Uri {
    token: Option<String>,
    manufacturer: Option<String>,
    serial: Option<String>,
    model: Option<String>,
    library_manufacturer: Option<String>,
    library_description: Option<String>,
    library_version: Option<LibraryVersion>,
    slot_manufacturer: Option<String>,
    slot_description: Option<String>,
    slot_id: Option<u64>,
    object: Option<String>,
    object_type: Option<ObjectType>,
    id: Option<Vec<u8>>,
    vendor_path: Vec<(String, String)>,
    unrecognized_path: Vec<(String, String)>,
    pin_source: Option<String>,
    pin_value: Option<SecretString>,
    module_name: Option<String>,
    module_path: Option<String>,
    max_sessions: Option<NonZeroUsize>,
    vendor_query: Vec<(String, String)>,
    unrecognized_query: Vec<(String, String)>,
}

/// Getter and builder-style setter for a text attribute.
macro_rules! text_attributes {
    ($($field:ident, $with:ident, $attr:literal, $what:literal;)*) => {
        $(
            #[doc = concat!("The `", $attr, "` attribute (", $what, "), percent-decoded.")]
            pub fn $field(&self) -> Option<&str> {
                self.$field.as_deref()
            }

            #[doc = concat!("Set the `", $attr, "` attribute (", $what, ").")]
            #[must_use]
            pub fn $with(mut self, value: impl Into<String>) -> Self {
                self.$field = Some(value.into());
                self
            }
        )*
    };
}

/// Standard query attribute names (for misplacement and duplicate checks).
const PK11_QUERY_NAMES: [&str; 5] = [
    "pin-source",
    "pin-value",
    "module-name",
    "module-path",
    "max-sessions",
];

/// Standard path attribute names (for misplacement checks).
const PK11_PATH_NAMES: [&str; 13] = [
    "token",
    "manufacturer",
    "serial",
    "model",
    "library-manufacturer",
    "library-description",
    "library-version",
    "slot-manufacturer",
    "slot-description",
    "slot-id",
    "object",
    "type",
    "id",
];

const PCHAR_EXPECTED: &str = "letters, digits and -._~:[]@!$'()*+,=& unencoded in a pkcs11 path \
                              value (RFC 7512 pk11-pchar), anything else as %XX";
const QCHAR_EXPECTED: &str = "letters, digits and -._~:[]@!$'()*+,=/?| unencoded in a pkcs11 \
                              query value (RFC 7512 pk11-qchar), anything else as %XX";

impl Pkcs11Uri {
    /// The scheme name.
    const SCHEME: &'static str = "pkcs11";

    /// An empty URI (`pkcs11:`), which matches every object.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parse a `pkcs11:` URI with explicit options. [`FromStr`] uses the defaults, which refuse
    /// `pin-value`.
    pub fn parse_with(s: &str, opts: &UriParseOptions) -> Result<Self, UriError> {
        let rest = expect_scheme(s, Self::SCHEME)?;
        Self::parse_rest(s, rest, Self::SCHEME.len() + 1, opts)
    }

    text_attributes! {
        token, with_token, "token", "the token label, `CK_TOKEN_INFO.label`";
        manufacturer, with_manufacturer, "manufacturer",
            "the token manufacturer, `CK_TOKEN_INFO.manufacturerID`";
        serial, with_serial, "serial", "the token serial number, `CK_TOKEN_INFO.serialNumber`";
        model, with_model, "model", "the token model, `CK_TOKEN_INFO.model`";
        library_manufacturer, with_library_manufacturer, "library-manufacturer",
            "`CK_INFO.manufacturerID`";
        library_description, with_library_description, "library-description",
            "`CK_INFO.libraryDescription`";
        slot_manufacturer, with_slot_manufacturer, "slot-manufacturer",
            "`CK_SLOT_INFO.manufacturerID`";
        slot_description, with_slot_description, "slot-description",
            "`CK_SLOT_INFO.slotDescription`";
        object, with_object, "object", "the object label, `CKA_LABEL`";
        module_name, with_module_name, "module-name",
            "the PKCS#11 module's name, e.g. `softhsm2`";
        module_path, with_module_path, "module-path", "the PKCS#11 module's file path";
    }

    /// The `library-version` attribute (`CK_INFO.libraryVersion`).
    pub fn library_version(&self) -> Option<LibraryVersion> {
        self.library_version
    }

    /// Set the `library-version` attribute.
    #[must_use]
    pub fn with_library_version(mut self, version: LibraryVersion) -> Self {
        self.library_version = Some(version);
        self
    }

    /// The `slot-id` attribute (`CK_SLOT_ID`).
    pub fn slot_id(&self) -> Option<u64> {
        self.slot_id
    }

    /// Set the `slot-id` attribute.
    #[must_use]
    pub fn with_slot_id(mut self, slot_id: u64) -> Self {
        self.slot_id = Some(slot_id);
        self
    }

    /// The `type` attribute (`CKA_CLASS`).
    pub fn object_type(&self) -> Option<ObjectType> {
        self.object_type
    }

    /// Set the `type` attribute.
    #[must_use]
    pub fn with_object_type(mut self, ty: ObjectType) -> Self {
        self.object_type = Some(ty);
        self
    }

    /// The `id` attribute (`CKA_ID`), a byte string.
    pub fn id(&self) -> Option<&[u8]> {
        self.id.as_deref()
    }

    /// Set the `id` attribute.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<Vec<u8>>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The `pin-source` attribute (where to read the PIN, e.g. `file:/etc/token.pin`),
    /// percent-decoded.
    pub fn pin_source(&self) -> Option<&str> {
        self.pin_source.as_deref()
    }

    /// Set the `pin-source` attribute, removing any `pin-value` (RFC 7512 section 2.4: the two
    /// must not both be given).
    #[must_use]
    pub fn with_pin_source(mut self, source: impl Into<String>) -> Self {
        self.pin_value = None;
        self.pin_source = Some(source.into());
        self
    }

    /// The `pin-value` attribute, if the URI was parsed with
    /// [`UriParseOptions::allow_pin_value`] or built with [`Pkcs11Uri::with_pin_value`].
    pub fn pin_value(&self) -> Option<&SecretString> {
        self.pin_value.as_ref()
    }

    /// Set the `pin-value` attribute, removing any `pin-source`. [`Display`](fmt::Display) will
    /// not print it; [`Pkcs11Uri::to_string_with_pin`] will.
    #[must_use]
    pub fn with_pin_value(mut self, pin: SecretString) -> Self {
        self.pin_source = None;
        self.pin_value = Some(pin);
        self
    }

    /// hardkey's own (non-RFC 7512) query attribute `max-sessions`: how many sessions the device
    /// pool opens on the token.
    pub fn max_sessions(&self) -> Option<NonZeroUsize> {
        self.max_sessions
    }

    /// Set `max-sessions`.
    #[must_use]
    pub fn with_max_sessions(mut self, sessions: NonZeroUsize) -> Self {
        self.max_sessions = Some(sessions);
        self
    }

    /// Vendor path attributes (`x-...`) as `(name, value)`, the value still percent-encoded,
    /// both exactly as written.
    pub fn vendor_path_attributes(&self) -> &[(String, String)] {
        &self.vendor_path
    }

    /// Vendor query attributes (`x-...`) as `(name, value)`, the value still percent-encoded,
    /// both exactly as written. A name may appear more than once (RFC 7512 section 2.3).
    pub fn vendor_query_attributes(&self) -> &[(String, String)] {
        &self.vendor_query
    }

    /// Path attributes this parser does not know, as `(name, value)` exactly as written.
    pub fn unrecognized_path_attributes(&self) -> &[(String, String)] {
        &self.unrecognized_path
    }

    /// Query attributes this parser does not know, as `(name, value)` exactly as written.
    pub fn unrecognized_query_attributes(&self) -> &[(String, String)] {
        &self.unrecognized_query
    }

    /// Whether the URI holds an attribute this parser does not know (not counting vendor `x-`
    /// attributes). Such a URI matches nothing: the attribute may be a constraint hardkey cannot
    /// check, so every `matches_*` method returns `false` (as p11-kit does).
    pub fn has_unrecognized(&self) -> bool {
        !self.unrecognized_path.is_empty() || !self.unrecognized_query.is_empty()
    }

    /// Whether a token with these attributes matches the URI's `token`, `manufacturer`, `serial`
    /// and `model`. Trailing spaces (PKCS#11 padding) are ignored on both sides.
    pub fn matches_token(&self, t: &TokenAttrs<'_>) -> bool {
        !self.has_unrecognized()
            && padded_eq(self.token.as_deref(), t.label)
            && padded_eq(self.manufacturer.as_deref(), t.manufacturer)
            && padded_eq(self.serial.as_deref(), t.serial)
            && padded_eq(self.model.as_deref(), t.model)
    }

    /// Whether a slot matches the URI's `slot-id`, `slot-description` and `slot-manufacturer`.
    /// Trailing spaces (PKCS#11 padding) are ignored.
    pub fn matches_slot(&self, slot_id: u64, description: &str, manufacturer: &str) -> bool {
        !self.has_unrecognized()
            && self.slot_id.is_none_or(|s| s == slot_id)
            && padded_eq(self.slot_description.as_deref(), description)
            && padded_eq(self.slot_manufacturer.as_deref(), manufacturer)
    }

    /// Whether a PKCS#11 module (`CK_INFO`) matches the URI's `library-manufacturer`,
    /// `library-description` and `library-version`. Trailing spaces are ignored.
    pub fn matches_library(
        &self,
        manufacturer: &str,
        description: &str,
        version: LibraryVersion,
    ) -> bool {
        !self.has_unrecognized()
            && padded_eq(self.library_manufacturer.as_deref(), manufacturer)
            && padded_eq(self.library_description.as_deref(), description)
            && self.library_version.is_none_or(|v| v == version)
    }

    /// Whether an object matches the URI's `object` (`CKA_LABEL`, compared exactly), `id`
    /// (`CKA_ID`, compared byte for byte) and `type` (`CKA_CLASS`). An object without a label or
    /// id does not match a URI that names one.
    pub fn matches_object(&self, label: Option<&str>, id: Option<&[u8]>, ty: ObjectType) -> bool {
        !self.has_unrecognized()
            && self.object.as_deref().is_none_or(|o| label == Some(o))
            && self.id.as_deref().is_none_or(|i| id == Some(i))
            && self.object_type.is_none_or(|t| t == ty)
    }

    /// The URI including its `pin-value`, as a secret. [`Display`](fmt::Display) leaves the
    /// `pin-value` out; this is the one way to print it, e.g. to hand the URI to another
    /// program. Parse the result back with [`UriParseOptions::allow_pin_value`].
    pub fn to_string_with_pin(&self) -> SecretString {
        let pin_len = self
            .pin_value
            .as_ref()
            .map_or(0, |p| p.expose_secret().len());
        // Reserve enough up front that the buffer holding the PIN never reallocates (which would
        // leave an unzeroized copy behind); it is zeroized when dropped.
        let capacity = self.to_string().len() + "&pin-value=".len() + 3 * pin_len;
        let mut out = Zeroizing::new(String::with_capacity(capacity));
        // Writing to a String cannot fail.
        let _ = self.write_uri(&mut *out, true);
        SecretString::from(out.as_str())
    }

    fn write_uri(&self, w: &mut impl fmt::Write, with_pin: bool) -> fmt::Result {
        w.write_str("pkcs11:")?;
        let mut path = AttrWriter::new(w, None, ';');
        path.text("token", self.token.as_deref(), pk11_pchar)?;
        path.text("manufacturer", self.manufacturer.as_deref(), pk11_pchar)?;
        path.text("serial", self.serial.as_deref(), pk11_pchar)?;
        path.text("model", self.model.as_deref(), pk11_pchar)?;
        path.text(
            "library-manufacturer",
            self.library_manufacturer.as_deref(),
            pk11_pchar,
        )?;
        path.text(
            "library-description",
            self.library_description.as_deref(),
            pk11_pchar,
        )?;
        if let Some(v) = self.library_version {
            path.display("library-version", v)?;
        }
        path.text(
            "slot-manufacturer",
            self.slot_manufacturer.as_deref(),
            pk11_pchar,
        )?;
        path.text(
            "slot-description",
            self.slot_description.as_deref(),
            pk11_pchar,
        )?;
        if let Some(v) = self.slot_id {
            path.display("slot-id", v)?;
        }
        path.text("object", self.object.as_deref(), pk11_pchar)?;
        if let Some(t) = self.object_type {
            path.display("type", t)?;
        }
        if let Some(id) = &self.id {
            path.bytes("id", id, |_| false)?;
        }
        for (name, raw) in self.vendor_path.iter().chain(&self.unrecognized_path) {
            path.display(name, raw)?;
        }

        let mut query = AttrWriter::new(path.w, Some('?'), '&');
        query.text("pin-source", self.pin_source.as_deref(), pk11_qchar)?;
        if with_pin {
            if let Some(pin) = &self.pin_value {
                query.text("pin-value", Some(pin.expose_secret()), pk11_qchar)?;
            }
        }
        query.text("module-name", self.module_name.as_deref(), pk11_qchar)?;
        query.text("module-path", self.module_path.as_deref(), pk11_qchar)?;
        if let Some(n) = self.max_sessions {
            query.display("max-sessions", n)?;
        }
        for (name, raw) in self.vendor_query.iter().chain(&self.unrecognized_query) {
            query.display(name, raw)?;
        }
        Ok(())
    }

    /// The text attribute a path attribute name stands for, if it is one.
    fn path_text_mut(&mut self, name: &str) -> Option<&mut Option<String>> {
        Some(match name {
            "token" => &mut self.token,
            "manufacturer" => &mut self.manufacturer,
            "serial" => &mut self.serial,
            "model" => &mut self.model,
            "library-manufacturer" => &mut self.library_manufacturer,
            "library-description" => &mut self.library_description,
            "slot-manufacturer" => &mut self.slot_manufacturer,
            "slot-description" => &mut self.slot_description,
            "object" => &mut self.object,
            _ => return None,
        })
    }

    /// Parse what follows `pkcs11:` (`rest`, at byte `offset` of `input`).
    fn parse_rest(
        input: &str,
        rest: &str,
        offset: usize,
        opts: &UriParseOptions,
    ) -> Result<Self, UriError> {
        let mut uri = Self::new();
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };

        let mut seen: Vec<String> = Vec::new();
        for attr in split_attributes(input, path, offset, ';')? {
            let name = attr.name.to_ascii_lowercase();
            if seen.contains(&name) {
                return Err(attr.duplicate(input, &name));
            }
            if let Some(slot) = uri.path_text_mut(&name) {
                *slot = Some(attr.text(input, pk11_pchar, PCHAR_EXPECTED)?);
            } else {
                match name.as_str() {
                    "library-version" => {
                        let text = attr.text(input, pk11_pchar, PCHAR_EXPECTED)?;
                        uri.library_version =
                            Some(LibraryVersion::parse(&text).ok_or_else(|| {
                                attr.invalid(input, &text, "M or M.N, each a number from 0 to 255")
                            })?);
                    }
                    "slot-id" => {
                        let text = attr.text(input, pk11_pchar, PCHAR_EXPECTED)?;
                        uri.slot_id = Some(parse_digits(&text).ok_or_else(|| {
                            attr.invalid(input, &text, "a decimal slot number (CK_SLOT_ID)")
                        })?);
                    }
                    "type" => {
                        let text = attr.text(input, pk11_pchar, PCHAR_EXPECTED)?;
                        uri.object_type = Some(ObjectType::from_name(&text).ok_or_else(|| {
                            attr.invalid(
                                input,
                                &text,
                                "one of cert, data, private, public, secret-key",
                            )
                        })?);
                    }
                    "id" => uri.id = Some(attr.decode(input, pk11_pchar, PCHAR_EXPECTED, false)?),
                    _ if PK11_QUERY_NAMES.contains(&name.as_str()) => {
                        return Err(attr.misplaced(input, &name, UriComponent::Query));
                    }
                    _ => {
                        // Check the value's syntax, keep it as written.
                        attr.decode(input, pk11_pchar, PCHAR_EXPECTED, false)?;
                        let kept = (attr.name.to_owned(), attr.value.to_owned());
                        if is_vendor(&name) {
                            uri.vendor_path.push(kept);
                        } else {
                            uri.unrecognized_path.push(kept);
                        }
                    }
                }
            }
            seen.push(name);
        }

        let Some(query) = query else {
            return Ok(uri);
        };
        let query_offset = offset + path.len() + 1;
        seen.clear();
        for attr in split_attributes(input, query, query_offset, '&')? {
            let name = attr.name.to_ascii_lowercase();
            let standard = PK11_QUERY_NAMES.contains(&name.as_str());
            if standard && seen.contains(&name) {
                return Err(attr.duplicate(input, &name));
            }
            match name.as_str() {
                "pin-source" => {
                    if uri.pin_value.is_some() {
                        return Err(attr.conflict(input, "pin-value", "pin-source"));
                    }
                    uri.pin_source = Some(attr.text(input, pk11_qchar, QCHAR_EXPECTED)?);
                }
                "pin-value" => {
                    if !opts.allow_pin_value {
                        return Err(error(
                            input,
                            attr.name_pos,
                            UriErrorReason::PinValueRefused,
                            "no pin-value attribute",
                        ));
                    }
                    if uri.pin_source.is_some() {
                        return Err(attr.conflict(input, "pin-source", "pin-value"));
                    }
                    let pin =
                        Zeroizing::new(attr.decode(input, pk11_qchar, QCHAR_EXPECTED, true)?);
                    let pin = std::str::from_utf8(&pin).map_err(|_| attr.not_utf8(input))?;
                    uri.pin_value = Some(SecretString::from(pin));
                }
                "module-name" => {
                    uri.module_name = Some(attr.text(input, pk11_qchar, QCHAR_EXPECTED)?);
                }
                "module-path" => {
                    uri.module_path = Some(attr.text(input, pk11_qchar, QCHAR_EXPECTED)?);
                }
                "max-sessions" => {
                    let text = attr.text(input, pk11_qchar, QCHAR_EXPECTED)?;
                    let n = parse_digits::<usize>(&text).and_then(NonZeroUsize::new);
                    uri.max_sessions = Some(n.ok_or_else(|| {
                        attr.invalid(input, &text, "a positive decimal number of sessions")
                    })?);
                }
                _ if PK11_PATH_NAMES.contains(&name.as_str()) => {
                    return Err(attr.misplaced(input, &name, UriComponent::Path));
                }
                _ => {
                    attr.decode(input, pk11_qchar, QCHAR_EXPECTED, false)?;
                    let kept = (attr.name.to_owned(), attr.value.to_owned());
                    if is_vendor(&name) {
                        uri.vendor_query.push(kept);
                    } else {
                        uri.unrecognized_query.push(kept);
                    }
                }
            }
            if standard {
                seen.push(name);
            }
        }
        Ok(uri)
    }
}

impl FromStr for Pkcs11Uri {
    type Err = UriError;
    fn from_str(s: &str) -> Result<Self, UriError> {
        Self::parse_with(s, &UriParseOptions::default())
    }
}

/// Prints the URI in canonical form, *without* any `pin-value` (see
/// [`Pkcs11Uri::to_string_with_pin`]).
impl fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_uri(f, false)
    }
}

impl fmt::Debug for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Uri")
            .field("token", &self.token)
            .field("manufacturer", &self.manufacturer)
            .field("serial", &self.serial)
            .field("model", &self.model)
            .field("library_manufacturer", &self.library_manufacturer)
            .field("library_description", &self.library_description)
            .field("library_version", &self.library_version)
            .field("slot_manufacturer", &self.slot_manufacturer)
            .field("slot_description", &self.slot_description)
            .field("slot_id", &self.slot_id)
            .field("object", &self.object)
            .field("object_type", &self.object_type)
            .field("id", &self.id.as_deref().map(hex::encode))
            .field("vendor_path", &self.vendor_path)
            .field("unrecognized_path", &self.unrecognized_path)
            .field("pin_source", &self.pin_source)
            .field("pin_value", &self.pin_value.as_ref().map(|_| "[redacted]"))
            .field("module_name", &self.module_name)
            .field("module_path", &self.module_path)
            .field("max_sessions", &self.max_sessions)
            .field("vendor_query", &self.vendor_query)
            .field("unrecognized_query", &self.unrecognized_query)
            .finish()
    }
}

impl PartialEq for Pkcs11Uri {
    fn eq(&self, other: &Self) -> bool {
        let pins_eq = match (&self.pin_value, &other.pin_value) {
            (None, None) => true,
            (Some(a), Some(b)) => a.expose_secret() == b.expose_secret(),
            _ => false,
        };
        pins_eq
            && self.token == other.token
            && self.manufacturer == other.manufacturer
            && self.serial == other.serial
            && self.model == other.model
            && self.library_manufacturer == other.library_manufacturer
            && self.library_description == other.library_description
            && self.library_version == other.library_version
            && self.slot_manufacturer == other.slot_manufacturer
            && self.slot_description == other.slot_description
            && self.slot_id == other.slot_id
            && self.object == other.object
            && self.object_type == other.object_type
            && self.id == other.id
            && self.vendor_path == other.vendor_path
            && self.unrecognized_path == other.unrecognized_path
            && self.pin_source == other.pin_source
            && self.module_name == other.module_name
            && self.module_path == other.module_path
            && self.max_sessions == other.max_sessions
            && self.vendor_query == other.vendor_query
            && self.unrecognized_query == other.unrecognized_query
    }
}

impl Eq for Pkcs11Uri {}

// ------------------------------------------------------------------------------------------------
// tpm2:
// ------------------------------------------------------------------------------------------------

/// The key a [`Tpm2Uri`] names.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Tpm2Key {
    /// A persistent handle (`handle=0x81000010`). The parser only yields handles in
    /// [`Tpm2Uri::PERSISTENT_HANDLES`]; a URI built with another one prints but does not parse.
    Handle(u32),
    /// A `TSS2 PRIVATE KEY` PEM file (`file=/path/key.tss2.pem`). Must not be empty.
    File(PathBuf),
}

/// A `tpm2:` URI: hardkey's scheme for TPM 2.0 keys, e.g.
/// `tpm2:handle=0x81000010?tcti=swtpm:host=127.0.0.1,port=2321` or `tpm2:file=/etc/key.tss2.pem`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tpm2Uri {
    /// The key.
    pub key: Tpm2Key,
    /// The TCTI configuration string (`tcti=`), e.g. `device:/dev/tpmrm0` or
    /// `swtpm:host=127.0.0.1,port=2321`; `None` for the default. Must not be empty.
    pub tcti: Option<String>,
}

const TPM2_ACCEPTED: &str =
    "handle=<persistent handle> or file=<path> before '?', tcti=<TCTI string> after it";
const TPM2_PATH_EXPECTED: &str = "letters, digits and -._~:[]@!$'()*+,=&/ unencoded in a tpm2 \
                                  path value, anything else as %XX";

impl Tpm2Uri {
    /// The scheme name.
    const SCHEME: &'static str = "tpm2";

    /// The TPM 2.0 persistent handle range.
    pub const PERSISTENT_HANDLES: RangeInclusive<u32> = 0x8100_0000..=0x81FF_FFFF;

    /// A URI for `key`, with the default TCTI.
    pub fn new(key: Tpm2Key) -> Self {
        Self { key, tcti: None }
    }

    /// Set the TCTI configuration string.
    #[must_use]
    pub fn with_tcti(mut self, tcti: impl Into<String>) -> Self {
        self.tcti = Some(tcti.into());
        self
    }

    fn parse_rest(input: &str, rest: &str, offset: usize) -> Result<Self, UriError> {
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut key: Option<(Tpm2Key, &'static str)> = None;
        let mut seen: Vec<String> = Vec::new();
        for attr in split_attributes(input, path, offset, ';')? {
            let name = attr.name.to_ascii_lowercase();
            if seen.contains(&name) {
                return Err(attr.duplicate(input, &name));
            }
            let (new_key, this) = match name.as_str() {
                "handle" => {
                    let text = attr.text(input, tpm2_pchar, TPM2_PATH_EXPECTED)?;
                    (
                        Tpm2Key::Handle(parse_handle(input, &attr, &text)?),
                        "handle",
                    )
                }
                "file" => {
                    let bytes = attr.decode(input, tpm2_pchar, TPM2_PATH_EXPECTED, false)?;
                    if bytes.is_empty() {
                        return Err(attr.invalid(
                            input,
                            "",
                            "a path to a TSS2 PRIVATE KEY PEM file",
                        ));
                    }
                    let path = bytes_to_path(bytes).ok_or_else(|| attr.not_utf8(input))?;
                    (Tpm2Key::File(path), "file")
                }
                "tcti" => return Err(attr.misplaced(input, &name, UriComponent::Query)),
                _ => return Err(attr.unknown(input, &name)),
            };
            if let Some((_, first)) = key {
                return Err(attr.conflict(input, first, this));
            }
            key = Some((new_key, this));
            seen.push(name);
        }
        let mut tcti = None;
        let query_offset = offset + path.len() + 1;
        for attr in split_attributes(input, query.unwrap_or_default(), query_offset, '&')? {
            let name = attr.name.to_ascii_lowercase();
            match name.as_str() {
                "tcti" if tcti.is_some() => return Err(attr.duplicate(input, &name)),
                "tcti" => {
                    let value = attr.text(input, pk11_qchar, QCHAR_EXPECTED)?;
                    if value.is_empty() {
                        return Err(attr.invalid(
                            input,
                            "",
                            "a TCTI string such as device:/dev/tpmrm0 (or no tcti attribute)",
                        ));
                    }
                    tcti = Some(value);
                }
                "handle" | "file" => {
                    return Err(attr.misplaced(input, &name, UriComponent::Path));
                }
                _ => return Err(attr.unknown(input, &name)),
            }
        }
        match key {
            Some((key, _)) => Ok(Self { key, tcti }),
            None => Err(error(
                input,
                input.len(),
                UriErrorReason::MissingKey,
                "handle=0x81...... (a persistent handle) or file=<path to a TSS2 PRIVATE KEY \
                 PEM file>",
            )),
        }
    }
}

fn parse_handle(input: &str, attr: &Attr<'_>, text: &str) -> Result<u32, UriError> {
    let (digits, radix) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (text, 10),
    };
    let bad = || {
        error(
            input,
            attr.value_pos,
            UriErrorReason::BadHandle {
                value: text.to_owned(),
            },
            "a persistent handle in hex (0x81000010) or decimal",
        )
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(bad());
    }
    let value = u64::from_str_radix(digits, radix).map_err(|_| bad())?;
    match u32::try_from(value) {
        Ok(h) if Tpm2Uri::PERSISTENT_HANDLES.contains(&h) => Ok(h),
        _ => Err(error(
            input,
            attr.value_pos,
            UriErrorReason::HandleOutOfRange { handle: value },
            "a handle in the persistent range 0x81000000..=0x81FFFFFF",
        )),
    }
}

impl FromStr for Tpm2Uri {
    type Err = UriError;
    fn from_str(s: &str) -> Result<Self, UriError> {
        let rest = expect_scheme(s, Self::SCHEME)?;
        Self::parse_rest(s, rest, Self::SCHEME.len() + 1)
    }
}

impl fmt::Display for Tpm2Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tpm2:")?;
        let mut path = AttrWriter::new(f, None, ';');
        match &self.key {
            Tpm2Key::Handle(h) => path.display("handle", format_args!("{h:#010x}"))?,
            Tpm2Key::File(p) => path.bytes("file", &path_to_bytes(p), tpm2_pchar)?,
        }
        let mut query = AttrWriter::new(path.w, Some('?'), '&');
        query.text("tcti", self.tcti.as_deref(), pk11_qchar)
    }
}

// ------------------------------------------------------------------------------------------------
// file:
// ------------------------------------------------------------------------------------------------

/// `file:` URI.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileUri {
    /// Path of the PEM file. Must not be empty.
    pub path: PathBuf,
}

const FILE_EXPECTED: &str =
    "a path without a query or fragment: write '?' as %3F, '#' as %23, control characters as %XX";

impl FileUri {
    /// The scheme name.
    const SCHEME: &'static str = "file";

    /// A `file:` URI for a path.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    fn parse_rest(input: &str, rest: &str, offset: usize) -> Result<Self, UriError> {
        let (path, path_pos) = match rest.strip_prefix("//") {
            Some(after) => {
                let (host, path) = match after.find('/') {
                    Some(i) => after.split_at(i),
                    None => (after, ""),
                };
                if !host.is_empty() && !host.eq_ignore_ascii_case("localhost") {
                    return Err(error(
                        input,
                        offset + 2,
                        UriErrorReason::RemoteFileHost {
                            host: host.to_owned(),
                        },
                        "a local path: file:/path, file:///path or file://localhost/path",
                    ));
                }
                (path, offset + 2 + host.len())
            }
            None => (rest, offset),
        };
        if path.is_empty() {
            return Err(error(
                input,
                path_pos,
                UriErrorReason::EmptyPath,
                "the path of a PEM file",
            ));
        }
        let attr = Attr {
            name: "path",
            name_pos: path_pos,
            value: path,
            value_pos: path_pos,
        };
        let bytes = attr.decode(input, file_char_in, FILE_EXPECTED, false)?;
        let path = bytes_to_path(bytes).ok_or_else(|| attr.not_utf8(input))?;
        Ok(Self { path })
    }
}

impl FromStr for FileUri {
    type Err = UriError;
    fn from_str(s: &str) -> Result<Self, UriError> {
        let rest = expect_scheme(s, Self::SCHEME)?;
        Self::parse_rest(s, rest, Self::SCHEME.len() + 1)
    }
}

impl fmt::Display for FileUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = path_to_bytes(&self.path);
        f.write_str("file:")?;
        if bytes.starts_with(b"//") {
            // An empty authority, so that the path's own "//" is not read as one.
            f.write_str("//")?;
        }
        fmt::Display::fmt(&Encoded(&bytes, file_char_out), f)
    }
}

#[cfg(unix)]
fn path_to_bytes(path: &Path) -> Cow<'_, [u8]> {
    use std::os::unix::ffi::OsStrExt;
    Cow::Borrowed(path.as_os_str().as_bytes())
}

#[cfg(not(unix))]
fn path_to_bytes(path: &Path) -> Cow<'_, [u8]> {
    match path.to_string_lossy() {
        Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
        Cow::Owned(s) => Cow::Owned(s.into_bytes()),
    }
}

/// A path from percent-decoded bytes: any bytes on Unix, UTF-8 elsewhere.
#[cfg(unix)]
fn bytes_to_path(bytes: Vec<u8>) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    Some(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

#[cfg(not(unix))]
fn bytes_to_path(bytes: Vec<u8>) -> Option<PathBuf> {
    String::from_utf8(bytes).ok().map(PathBuf::from)
}

// ------------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------------

/// A malformed key URI: where (byte offset), what was found ([`UriErrorReason`]) and what was
/// expected.
///
/// The input is echoed in the message with the value of any `pin-value` attribute replaced by
/// `[redacted]`; `position` is an offset in the original input.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UriError {
    /// Byte offset in the input where the problem is.
    pub position: usize,
    /// What was expected there.
    pub expected: &'static str,
    /// What was wrong.
    pub reason: UriErrorReason,
    /// The input, with `pin-value` values redacted.
    pub input: String,
}

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only the part before the problem is quoted: from there on the input did not
        // parse, and may be anything (a PIN typed in the wrong place).
        let shown = match self.input.get(..self.position) {
            Some(before) if self.position < self.input.len() => {
                format!("{}[...]", redact_cut(before, true))
            }
            _ => redact(&self.input),
        };
        write!(
            f,
            "invalid key URI '{}' at byte {}: {} (expected {})",
            Escaped(&shown),
            self.position,
            self.reason,
            self.expected
        )
    }
}

impl std::error::Error for UriError {}

/// The URI component an attribute belongs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UriComponent {
    /// The path: after the scheme, attributes separated by `;`.
    Path,
    /// The query: after `?`, attributes separated by `&`.
    Query,
}

impl fmt::Display for UriComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Path => "path (before '?', separated by ';')",
            Self::Query => "query (after '?', separated by '&')",
        })
    }
}

/// What was wrong with a key URI.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UriErrorReason {
    /// The input does not start with a scheme (`pkcs11:`, `tpm2:`, `file:`).
    MissingScheme,
    /// A scheme hardkey does not serve.
    UnknownScheme {
        /// The scheme given.
        scheme: String,
    },
    /// A URI of another scheme where one particular scheme was expected.
    WrongScheme {
        /// The scheme given.
        scheme: String,
        /// The scheme expected.
        wanted: &'static str,
    },
    /// An attribute without a name (`=value`, or an empty `;;` / `&&` segment).
    EmptyAttributeName,
    /// An attribute name with characters other than letters, digits, `-` and `_`.
    BadAttributeName {
        /// The name given.
        name: String,
    },
    /// An attribute without `=`.
    MissingEquals {
        /// The attribute given.
        name: String,
    },
    /// A `%` not followed by two hex digits.
    BadPercentEncoding {
        /// The offending text, from the `%`.
        fragment: String,
    },
    /// A character the grammar does not allow unencoded here.
    UnexpectedCharacter {
        /// The character.
        ch: char,
        /// The attribute whose value holds it.
        attr: String,
    },
    /// A secret attribute's value is malformed; it is not shown.
    MalformedSecret {
        /// The attribute (`pin-value`).
        attr: &'static str,
    },
    /// A text attribute that is not UTF-8 once percent-decoded.
    NotUtf8 {
        /// The attribute.
        attr: String,
    },
    /// An attribute that may appear once appears again.
    DuplicateAttribute {
        /// The attribute.
        name: String,
    },
    /// A known attribute in the wrong component (e.g. `pin-source` in the path).
    MisplacedAttribute {
        /// The attribute.
        name: String,
        /// Where it belongs.
        belongs_in: UriComponent,
    },
    /// An attribute the (strict) `tpm2:` scheme does not define.
    UnknownAttribute {
        /// The attribute.
        name: String,
    },
    /// A value that does not fit its attribute (`type`, `slot-id`, `library-version`...).
    InvalidValue {
        /// The attribute.
        attr: String,
        /// The value, percent-decoded.
        value: String,
    },
    /// `pin-value` without [`UriParseOptions::allow_pin_value`].
    PinValueRefused,
    /// Two attributes that exclude each other.
    ConflictingAttributes {
        /// The one given first.
        first: &'static str,
        /// The one given second.
        second: &'static str,
    },
    /// A `tpm2:` URI with neither `handle` nor `file`.
    MissingKey,
    /// A `tpm2:` handle that is not a number.
    BadHandle {
        /// The value given.
        value: String,
    },
    /// A `tpm2:` handle outside [`Tpm2Uri::PERSISTENT_HANDLES`].
    HandleOutOfRange {
        /// The handle given.
        handle: u64,
    },
    /// A `file:` URI naming a remote host.
    RemoteFileHost {
        /// The host given.
        host: String,
    },
    /// A `file:` URI without a path.
    EmptyPath,
    /// A malformed part in or after a `pin-value`, not described because it could hold the PIN.
    Redacted,
}

impl fmt::Display for UriErrorReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingScheme => f.write_str("no URI scheme"),
            Self::UnknownScheme { scheme } => write!(f, "unknown scheme \"{}\"", Escaped(scheme)),
            Self::WrongScheme { scheme, wanted } => write!(
                f,
                "a {}: URI where a {wanted}: URI is needed",
                Escaped(scheme)
            ),
            Self::EmptyAttributeName => f.write_str("empty attribute name"),
            Self::BadAttributeName { name } => {
                write!(f, "bad attribute name \"{}\"", Escaped(name))
            }
            Self::MissingEquals { name } if name.is_empty() => f.write_str(
                "an attribute has no '=' (not shown, in case it is a secret typed in the wrong \
                 place)",
            ),
            Self::MissingEquals { name } => {
                write!(f, "attribute \"{}\" has no '='", Escaped(name))
            }
            Self::BadPercentEncoding { .. } => f.write_str("bad percent-encoding (not shown)"),
            Self::UnexpectedCharacter { ch, attr } => {
                write!(
                    f,
                    "'{}' may not appear unencoded in the value of {}; write it as ",
                    ch.escape_debug(),
                    Escaped(attr)
                )?;
                let mut buf = [0; 4];
                for &b in ch.encode_utf8(&mut buf).as_bytes() {
                    f.write_str(percent_encode_byte(b))?;
                }
                Ok(())
            }
            Self::MalformedSecret { attr } => {
                write!(f, "the value of {attr} is malformed (not shown)")
            }
            Self::NotUtf8 { attr } => write!(
                f,
                "the value of {} is not UTF-8 once percent-decoded",
                Escaped(attr)
            ),
            Self::DuplicateAttribute { name } => {
                write!(f, "attribute \"{}\" appears more than once", Escaped(name))
            }
            Self::MisplacedAttribute { name, belongs_in } => {
                write!(
                    f,
                    "attribute \"{}\" belongs in the {belongs_in}",
                    Escaped(name)
                )
            }
            Self::UnknownAttribute { name } => {
                write!(f, "unknown attribute \"{}\"", Escaped(name))
            }
            // The value is not shown: it may be a secret typed in the wrong attribute.
            Self::InvalidValue { attr, .. } => {
                write!(f, "invalid {} value (not shown)", Escaped(attr))
            }
            Self::PinValueRefused => f.write_str(
                "pin-value puts the PIN in the URI, where it ends up in shell history, process \
                 lists and logs; use pin-source=file:... or the HARDKEY_PIN environment variable, \
                 or opt in with UriParseOptions::new().allow_pin_value(true)",
            ),
            Self::ConflictingAttributes { first, second } => {
                write!(f, "\"{second}\" cannot be given together with \"{first}\"")
            }
            Self::MissingKey => f.write_str("no key given"),
            Self::BadHandle { .. } => f.write_str("bad handle (not shown)"),
            Self::HandleOutOfRange { handle } => {
                write!(f, "handle {handle:#x} is not a persistent handle")
            }
            Self::RemoteFileHost { host } => {
                write!(f, "file: URI names the remote host \"{}\"", Escaped(host))
            }
            Self::EmptyPath => f.write_str("empty path"),
            Self::Redacted => f.write_str(
                "malformed attribute in or after pin-value (details withheld: they could hold \
                 the PIN)",
            ),
        }
    }
}

fn error(input: &str, position: usize, reason: UriErrorReason, expected: &'static str) -> UriError {
    // An error inside or after a PIN value could quote part of the PIN (a PIN holding ';' or
    // '&' splits into bogus "attributes"): keep only where it is. So could one before it whose
    // reason quotes text running past `pin-value=` (a `file:` host, a value holding it).
    let reason = match pin_value_start(input) {
        Some(start)
            if (position >= start || reason.quoted().is_some_and(holds_pin_value))
                && !matches!(
                    reason,
                    UriErrorReason::PinValueRefused | UriErrorReason::MalformedSecret { .. }
                ) =>
        {
            UriErrorReason::Redacted
        }
        _ => reason,
    };
    UriError {
        position,
        expected,
        reason,
        input: redact(input),
    }
}

/// Byte offset of the first `pin-value=` value in `input` (case-insensitive).
fn pin_value_start(input: &str) -> Option<usize> {
    const KEY: &str = "pin-value=";
    input
        .to_ascii_lowercase()
        .find(KEY)
        .map(|found| found + KEY.len())
}

/// Whether `text` holds a `pin-value=` (case-insensitive): a quoted piece of input that
/// starts before a PIN value and reaches into it holds the whole key, the PIN's only marker.
fn holds_pin_value(text: &str) -> bool {
    pin_value_start(text).is_some()
}

impl UriErrorReason {
    /// The piece of the input this reason quotes, if any (in its message or its `Debug`).
    fn quoted(&self) -> Option<&str> {
        match self {
            Self::UnknownScheme { scheme } | Self::WrongScheme { scheme, .. } => Some(scheme),
            Self::BadAttributeName { name }
            | Self::MissingEquals { name }
            | Self::DuplicateAttribute { name }
            | Self::MisplacedAttribute { name, .. }
            | Self::UnknownAttribute { name } => Some(name),
            Self::BadPercentEncoding { fragment } => Some(fragment),
            Self::UnexpectedCharacter { attr, .. } | Self::NotUtf8 { attr } => Some(attr),
            Self::InvalidValue { value, .. } | Self::BadHandle { value } => Some(value),
            Self::RemoteFileHost { host } => Some(host),
            Self::MissingScheme
            | Self::EmptyAttributeName
            | Self::MalformedSecret { .. }
            | Self::PinValueRefused
            | Self::ConflictingAttributes { .. }
            | Self::MissingKey
            | Self::HandleOutOfRange { .. }
            | Self::EmptyPath
            | Self::Redacted => None,
        }
    }
}

/// Query attributes whose values are never secret, and so are shown in errors.
const PUBLIC_QUERY: [&str; 4] = ["module-path", "module-name", "max-sessions", "tcti"];

/// Path attributes (of `pkcs11:` and `tpm2:` URIs) whose values are never secret: RFC 7512's
/// token and object attributes, and `tpm2:`'s `handle` and `file`.
fn public_path(name: &str) -> bool {
    PK11_PATH_NAMES.contains(&name) || name == "handle" || name == "file"
}

/// Keeps the `sep`-separated `name=value` segments of `part` whose names `public` accepts; the
/// first other segment is shown as `name=[redacted]` and ends the text (a secret may contain
/// the separators). Returns whether everything was kept.
fn keep_public(
    out: &mut String,
    part: &str,
    sep: char,
    public: impl Fn(&str) -> bool,
    cut_name: bool,
) -> bool {
    let last = part.split(sep).count().saturating_sub(1);
    for (i, segment) in part.split(sep).enumerate() {
        if i > 0 {
            out.push(sep);
        }
        match segment.split_once('=') {
            Some((name, _)) if public(&name.to_ascii_lowercase()) => {
                out.push_str(segment);
            }
            Some((name, _)) => {
                out.push_str(name);
                out.push_str("=[redacted]");
                return false;
            }
            None if segment.is_empty() => {}
            // Where an error cut the input, the piece before the cut is the start of an
            // attribute name, not a value.
            None if cut_name && i == last && is_name_start(segment) => out.push_str(segment),
            None => {
                out.push_str("[redacted]");
                return false;
            }
        }
    }
    true
}

fn is_name_start(text: &str) -> bool {
    text.len() <= 32
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_%".contains(&b))
}

/// `input` as it may be shown in an error: nothing that may be a secret is kept.
/// - Everything after `pin-value=` goes: the PIN may contain '&', ';' or '#' (malformed, but it
///   is still the PIN), so no separator can be trusted to end it.
/// - Of `pkcs11:` and `tpm2:` URIs, only the values of attributes known to be public are kept
///   (the RFC 7512 token and object attributes, `handle`, `file` in the path; `module-path`,
///   `module-name`, `max-sessions`, `tcti` in the query); the value of any other attribute,
///   and everything after it, goes. A `pin-source` may be a PIN typed where its path belongs,
///   and a mistyped name (`pin-value =1234`, `pin=1234`) may carry a PIN.
/// - A fragment (`#...`) goes.
pub fn redact(input: &str) -> String {
    redact_cut(input, false)
}

/// [`redact`] of an input cut where an error was found (`cut_name`: the text may end in the
/// start of an attribute name, which is kept).
fn redact_cut(input: &str, cut_name: bool) -> String {
    // ASCII lower-casing keeps byte offsets, so the offset is a char boundary of `input`.
    let text = match pin_value_start(input) {
        Some(start) => format!("{}[redacted]", input.get(..start).unwrap_or_default()),
        None => input.to_owned(),
    };
    let (text, fragment) = match text.split_once('#') {
        Some((before, _)) => (before.to_owned(), true),
        None => (text, false),
    };
    let lower = text.to_ascii_lowercase();
    let Some(scheme_end) = ["pkcs11:", "tpm2:"]
        .iter()
        .find(|s| lower.starts_with(*s))
        .map(|s| s.len())
    else {
        return if fragment {
            format!("{text}#[redacted]")
        } else {
            text
        };
    };
    let (scheme, rest) = text.split_at(scheme_end);
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let mut out = scheme.to_owned();
    let complete = keep_public(
        &mut out,
        path,
        ';',
        public_path,
        cut_name && query.is_none(),
    ) && query.is_none_or(|q| {
        out.push('?');
        keep_public(&mut out, q, '&', |n| PUBLIC_QUERY.contains(&n), cut_name)
    });
    if complete && fragment {
        out.push_str("#[redacted]");
    }
    out
}

/// Shows untrusted text with control characters escaped, so that an error message cannot
/// rewrite a terminal or forge log lines.
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------------
// Shared syntax
// ------------------------------------------------------------------------------------------------

/// Split `scheme:rest`; the scheme must be RFC 3986 `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
/// Returns the scheme as written, the rest and the rest's byte offset.
fn split_scheme(s: &str) -> Result<(&str, &str, usize), UriError> {
    let scheme_ok = |scheme: &str| {
        let mut chars = scheme.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    };
    match s.split_once(':') {
        Some((scheme, rest)) if scheme_ok(scheme) => Ok((scheme, rest, scheme.len() + 1)),
        _ => Err(error(
            s,
            0,
            UriErrorReason::MissingScheme,
            "a URI starting with pkcs11:, tpm2: or file: (for a file, write file:key.pem)",
        )),
    }
}

/// The part after `scheme:`, or an error naming the scheme found.
fn expect_scheme<'a>(s: &'a str, wanted: &'static str) -> Result<&'a str, UriError> {
    let (scheme, rest, _) = split_scheme(s)?;
    if scheme.eq_ignore_ascii_case(wanted) {
        Ok(rest)
    } else {
        Err(error(
            s,
            0,
            UriErrorReason::WrongScheme {
                scheme: scheme.to_owned(),
                wanted,
            },
            match wanted {
                "pkcs11" => "a pkcs11: URI",
                "tpm2" => "a tpm2: URI",
                _ => "a file: URI",
            },
        ))
    }
}

/// One `name=value` attribute, with byte offsets into the whole input.
#[derive(Clone, Copy)]
struct Attr<'a> {
    name: &'a str,
    name_pos: usize,
    value: &'a str,
    value_pos: usize,
}

/// Split a component at `sep` into attributes. An empty component has none.
fn split_attributes<'a>(
    input: &str,
    component: &'a str,
    offset: usize,
    sep: char,
) -> Result<Vec<Attr<'a>>, UriError> {
    let mut attrs = Vec::new();
    if component.is_empty() {
        return Ok(attrs);
    }
    let mut pos = offset;
    for piece in component.split(sep) {
        let Some((name, value)) = piece.split_once('=') else {
            return Err(if piece.is_empty() {
                error(
                    input,
                    pos,
                    UriErrorReason::EmptyAttributeName,
                    "name=value (no empty attribute, no trailing separator)",
                )
            } else {
                // Only a known attribute name is quoted: anything else may be a secret typed
                // in the wrong place (`pin-value:1234`, a bare PIN), found by an attacker's
                // review.
                let known = PK11_PATH_NAMES
                    .iter()
                    .chain(PK11_QUERY_NAMES.iter())
                    .chain(["file", "handle", "tcti"].iter())
                    .any(|n| n.eq_ignore_ascii_case(piece));
                error(
                    input,
                    pos + piece.len(),
                    UriErrorReason::MissingEquals {
                        name: if known {
                            piece.to_owned()
                        } else {
                            String::new()
                        },
                    },
                    "name=value",
                )
            });
        };
        check_name(input, name, pos)?;
        attrs.push(Attr {
            name,
            name_pos: pos,
            value,
            value_pos: pos + name.len() + 1,
        });
        pos += piece.len() + 1;
    }
    Ok(attrs)
}

/// Attribute names are letters, digits, `-` and `_` (RFC 7512 `pk11-v-attr-nm-char`).
fn check_name(input: &str, name: &str, pos: usize) -> Result<(), UriError> {
    if name.is_empty() {
        return Err(error(
            input,
            pos,
            UriErrorReason::EmptyAttributeName,
            "an attribute name before '='",
        ));
    }
    for (i, c) in name.char_indices() {
        if c == '%' && !is_pct_triple(name.as_bytes(), i) {
            return Err(bad_percent(input, name, i, pos));
        }
        if !(c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(error(
                input,
                pos + i,
                UriErrorReason::BadAttributeName {
                    name: name.to_owned(),
                },
                "an attribute name of letters, digits, '-' and '_'",
            ));
        }
    }
    Ok(())
}

fn is_pct_triple(bytes: &[u8], i: usize) -> bool {
    hex_val(bytes.get(i + 1)).is_some() && hex_val(bytes.get(i + 2)).is_some()
}

fn hex_val(b: Option<&u8>) -> Option<u8> {
    b.and_then(|&b| (b as char).to_digit(16))
        .and_then(|d| u8::try_from(d).ok())
}

/// The error for a `%` at byte `i` of `text` (which starts at byte `base` of `input`).
fn bad_percent(input: &str, text: &str, i: usize, base: usize) -> UriError {
    let fragment = text
        .get(i..)
        .map(|s| s.chars().take(3).collect())
        .unwrap_or_default();
    error(
        input,
        base + i,
        UriErrorReason::BadPercentEncoding { fragment },
        "two hex digits after '%'",
    )
}

impl Attr<'_> {
    /// Check the value against the grammar (`keep`: the bytes allowed unencoded) and
    /// percent-decode it. For a `secret` value, errors do not show any of it.
    fn decode(
        &self,
        input: &str,
        keep: fn(u8) -> bool,
        expected: &'static str,
        secret: bool,
    ) -> Result<Vec<u8>, UriError> {
        let bytes = self.value.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        // `i` only ever moves over ASCII bytes, so it stays on a char boundary.
        while let Some(&b) = bytes.get(i) {
            let err = if b == b'%' {
                match (hex_val(bytes.get(i + 1)), hex_val(bytes.get(i + 2))) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi << 4) | lo);
                        i += 3;
                        continue;
                    }
                    _ if secret => None,
                    _ => Some(bad_percent(input, self.value, i, self.value_pos)),
                }
            } else if keep(b) {
                out.push(b);
                i += 1;
                continue;
            } else if secret {
                None
            } else {
                let ch = self
                    .value
                    .get(i..)
                    .and_then(|s| s.chars().next())
                    .unwrap_or(char::REPLACEMENT_CHARACTER);
                Some(error(
                    input,
                    self.value_pos + i,
                    UriErrorReason::UnexpectedCharacter {
                        ch,
                        attr: self.name.to_owned(),
                    },
                    expected,
                ))
            };
            out.zeroize();
            return Err(err.unwrap_or_else(|| {
                error(
                    input,
                    self.value_pos,
                    UriErrorReason::MalformedSecret { attr: "pin-value" },
                    "a percent-encoded PIN",
                )
            }));
        }
        Ok(out)
    }

    /// [`Attr::decode`], then UTF-8.
    fn text(
        &self,
        input: &str,
        keep: fn(u8) -> bool,
        expected: &'static str,
    ) -> Result<String, UriError> {
        String::from_utf8(self.decode(input, keep, expected, false)?)
            .map_err(|_| self.not_utf8(input))
    }

    fn not_utf8(&self, input: &str) -> UriError {
        error(
            input,
            self.value_pos,
            UriErrorReason::NotUtf8 {
                attr: self.name.to_owned(),
            },
            "UTF-8 text (only id may hold arbitrary bytes)",
        )
    }

    fn invalid(&self, input: &str, value: &str, expected: &'static str) -> UriError {
        error(
            input,
            self.value_pos,
            UriErrorReason::InvalidValue {
                attr: self.name.to_ascii_lowercase(),
                value: value.to_owned(),
            },
            expected,
        )
    }

    fn duplicate(&self, input: &str, name: &str) -> UriError {
        error(
            input,
            self.name_pos,
            UriErrorReason::DuplicateAttribute {
                name: name.to_owned(),
            },
            "each attribute at most once (RFC 7512 section 2.3)",
        )
    }

    fn misplaced(&self, input: &str, name: &str, belongs_in: UriComponent) -> UriError {
        error(
            input,
            self.name_pos,
            UriErrorReason::MisplacedAttribute {
                name: name.to_owned(),
                belongs_in,
            },
            match belongs_in {
                UriComponent::Path => "this attribute before the '?'",
                UriComponent::Query => "this attribute after a '?'",
            },
        )
    }

    fn conflict(&self, input: &str, first: &'static str, second: &'static str) -> UriError {
        error(
            input,
            self.name_pos,
            UriErrorReason::ConflictingAttributes { first, second },
            "only one of the two",
        )
    }

    fn unknown(&self, input: &str, name: &str) -> UriError {
        error(
            input,
            self.name_pos,
            UriErrorReason::UnknownAttribute {
                name: name.to_owned(),
            },
            TPM2_ACCEPTED,
        )
    }
}

fn is_vendor(lower_name: &str) -> bool {
    lower_name.len() > 2 && lower_name.starts_with("x-")
}

/// `1*DIGIT`, no sign, no overflow.
fn parse_digits<T: FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `uri` (if given) equals `device`, ignoring trailing spaces (PKCS#11 pads with them).
fn padded_eq(uri: Option<&str>, device: &str) -> bool {
    uri.is_none_or(|u| u.trim_end_matches(' ') == device.trim_end_matches(' '))
}

/// RFC 3986 `unreserved`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 7512 `pk11-res-avail`.
fn is_res_avail(b: u8) -> bool {
    matches!(
        b,
        b':' | b'[' | b']' | b'@' | b'!' | b'$' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'='
    )
}

/// RFC 7512 `pk11-pchar`, less `pct-encoded`.
fn pk11_pchar(b: u8) -> bool {
    is_unreserved(b) || is_res_avail(b) || b == b'&'
}

/// RFC 7512 `pk11-qchar`, less `pct-encoded`.
fn pk11_qchar(b: u8) -> bool {
    is_unreserved(b) || is_res_avail(b) || matches!(b, b'/' | b'?' | b'|')
}

/// `tpm2:` path values: `pk11-pchar` and `/`.
fn tpm2_pchar(b: u8) -> bool {
    pk11_pchar(b) || b == b'/'
}

/// What a `file:` path may hold unencoded on input: anything but `%`, `?`, `#` and controls.
fn file_char_in(b: u8) -> bool {
    !b.is_ascii() || ((b.is_ascii_graphic() || b == b' ') && !matches!(b, b'%' | b'?' | b'#'))
}

/// What a `file:` path is printed with unencoded.
fn file_char_out(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'%' | b'?' | b'#' | b';')
}

/// Bytes with everything `keep` rejects as upper-case `%XX`. `keep` only accepts ASCII.
struct Encoded<'a>(&'a [u8], fn(u8) -> bool);

impl fmt::Display for Encoded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            if b.is_ascii() && (self.1)(b) {
                f.write_char(char::from(b))?;
            } else {
                f.write_str(percent_encode_byte(b))?;
            }
        }
        Ok(())
    }
}

/// Writes `name=value` attributes: `lead` before the first (if any), `sep` between them.
struct AttrWriter<'w, W> {
    w: &'w mut W,
    lead: Option<char>,
    sep: char,
    first: bool,
}

impl<'w, W: fmt::Write> AttrWriter<'w, W> {
    fn new(w: &'w mut W, lead: Option<char>, sep: char) -> Self {
        Self {
            w,
            lead,
            sep,
            first: true,
        }
    }

    fn display(&mut self, name: &str, value: impl fmt::Display) -> fmt::Result {
        let sep = if self.first {
            self.lead
        } else {
            Some(self.sep)
        };
        self.first = false;
        if let Some(c) = sep {
            self.w.write_char(c)?;
        }
        write!(self.w, "{name}={value}")
    }

    fn bytes(&mut self, name: &str, value: &[u8], keep: fn(u8) -> bool) -> fmt::Result {
        self.display(name, Encoded(value, keep))
    }

    fn text(&mut self, name: &str, value: Option<&str>, keep: fn(u8) -> bool) -> fmt::Result {
        match value {
            Some(v) => self.bytes(name, v.as_bytes(), keep),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p11(s: &str) -> Pkcs11Uri {
        match s.parse::<KeyUri>() {
            Ok(KeyUri::Pkcs11(p)) => p,
            other => panic!("{s}: {other:?}"),
        }
    }

    fn err(s: &str) -> UriError {
        match s.parse::<KeyUri>() {
            Err(e) => e,
            Ok(u) => panic!("{s} parsed as {u:?}"),
        }
    }

    /// Display -> parse gives the same value; returns the displayed form.
    fn roundtrip(u: &KeyUri) -> String {
        let shown = u.to_string();
        let opts = UriParseOptions::new().allow_pin_value(true);
        let back = KeyUri::parse_with(&shown, &opts).unwrap_or_else(|e| panic!("{shown}: {e}"));
        assert_eq!(&back, u, "{shown}");
        shown
    }

    /// Parses, checks the value round-trips, and that canonical input prints back unchanged.
    fn canonical(s: &str) -> Pkcs11Uri {
        let u = KeyUri::from(p11(s));
        assert_eq!(roundtrip(&u), s);
        let KeyUri::Pkcs11(p) = u else { unreachable!() };
        p
    }

    // RFC 7512 section 6, in order.

    #[test]
    fn rfc7512_empty() {
        let u = canonical("pkcs11:");
        assert_eq!(u, Pkcs11Uri::new());
        assert!(u.matches_object(None, None, ObjectType::Cert));
    }

    #[test]
    fn rfc7512_public_key() {
        let u = canonical("pkcs11:object=my-pubkey;type=public");
        assert_eq!(u.object(), Some("my-pubkey"));
        assert_eq!(u.object_type(), Some(ObjectType::Public));
    }

    #[test]
    fn rfc7512_pin_source() {
        let u = canonical("pkcs11:object=my-key;type=private?pin-source=file:/etc/token");
        assert_eq!(u.object(), Some("my-key"));
        assert_eq!(u.object_type(), Some(ObjectType::Private));
        assert_eq!(u.pin_source(), Some("file:/etc/token"));
    }

    #[test]
    fn rfc7512_full_token_and_id() {
        let s = "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;\
                 manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;type=cert;\
                 id=%69%95%3E%5C%F4%BD%EC%91;serial=?pin-source=file:/etc/token_pin";
        let u = p11(s);
        assert_eq!(u.token(), Some("The Software PKCS#11 Softtoken"));
        assert_eq!(u.manufacturer(), Some("Snake Oil, Inc."));
        assert_eq!(u.model(), Some("1.0"));
        assert_eq!(u.object(), Some("my-certificate"));
        assert_eq!(u.object_type(), Some(ObjectType::Cert));
        assert_eq!(
            u.id(),
            Some(&[0x69, 0x95, 0x3e, 0x5c, 0xf4, 0xbd, 0xec, 0x91][..])
        );
        assert_eq!(u.serial(), Some(""));
        assert_eq!(u.pin_source(), Some("file:/etc/token_pin"));
        // Canonical order puts serial after manufacturer.
        assert_eq!(
            roundtrip(&u.into()),
            "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;\
             manufacturer=Snake%20Oil,%20Inc.;serial=;model=1.0;object=my-certificate;type=cert;\
             id=%69%95%3E%5C%F4%BD%EC%91?pin-source=file:/etc/token_pin"
        );

        // The variant from the brief, with a 20-byte id and no query.
        let u = p11("pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;\
             manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;type=cert;\
             id=%69%95%3E%5C%F4%BE%B5%5F%2C%A1%C8%49%B6%BB%67%D6%B6%4C%4F%E7;serial=");
        assert_eq!(
            u.id().map(hex::encode).as_deref(),
            Some("69953e5cf4beb55f2ca1c849b6bb67d6b64c4fe7")
        );
        roundtrip(&u.into());
    }

    #[test]
    fn rfc7512_module_name_and_path() {
        let u = canonical("pkcs11:object=my-sign-key;type=private?module-name=mypkcs11");
        assert_eq!(u.module_name(), Some("mypkcs11"));
        let u =
            canonical("pkcs11:object=my-sign-key;type=private?module-path=/mnt/libmypkcs11.so.1");
        assert_eq!(u.module_path(), Some("/mnt/libmypkcs11.so.1"));
    }

    #[test]
    fn rfc7512_pin_value_refused_by_default_accepted_on_opt_in() {
        let s = "pkcs11:token=Software%20PKCS%2311%20softtoken;\
                 manufacturer=Snake%20Oil,%20Inc.?pin-value=the-pin";
        let e = err(s);
        assert_eq!(e.reason, UriErrorReason::PinValueRefused);
        assert_eq!(e.position, s.find("pin-value").unwrap());
        let msg = e.to_string();
        assert!(!msg.contains("the-pin"), "{msg}");
        assert!(msg.contains("Inc.?[...]"), "{msg}");
        assert!(msg.contains("HARDKEY_PIN"), "{msg}");
        assert!(msg.contains("allow_pin_value"), "{msg}");
        assert!(format!("{e:?}").find("the-pin").is_none());
        assert!(s.parse::<Pkcs11Uri>().is_err());

        let opts = UriParseOptions::new().allow_pin_value(true);
        let KeyUri::Pkcs11(u) = KeyUri::parse_with(s, &opts).unwrap() else {
            panic!()
        };
        assert_eq!(u.token(), Some("Software PKCS#11 softtoken"));
        assert_eq!(u.manufacturer(), Some("Snake Oil, Inc."));
        assert_eq!(u.pin_value().map(|p| p.expose_secret()), Some("the-pin"));
        // Display, Debug never show the PIN.
        assert_eq!(
            u.to_string(),
            "pkcs11:token=Software%20PKCS%2311%20softtoken;manufacturer=Snake%20Oil,%20Inc."
        );
        let dbg = format!("{u:?}");
        assert!(
            !dbg.contains("the-pin") && dbg.contains("[redacted]"),
            "{dbg}"
        );
        // to_string_with_pin does, and round-trips.
        let with_pin = u.to_string_with_pin();
        assert_eq!(with_pin.expose_secret(), s);
        assert_eq!(
            Pkcs11Uri::parse_with(with_pin.expose_secret(), &opts).unwrap(),
            u
        );
        // The PIN is part of equality.
        let other = u.clone().with_pin_value(SecretString::from("other"));
        assert_ne!(other, u);
    }

    #[test]
    fn rfc7512_slot_and_library() {
        let u = canonical("pkcs11:slot-description=Sun%20Metaslot");
        assert_eq!(u.slot_description(), Some("Sun Metaslot"));
        let u = canonical(
            "pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;\
             library-description=Soft%20Token%20Library;library-version=1.23",
        );
        assert_eq!(u.library_manufacturer(), Some("Snake Oil, Inc."));
        assert_eq!(u.library_description(), Some("Soft Token Library"));
        assert_eq!(u.library_version(), Some(LibraryVersion::new(1, 23)));
        assert!(u.matches_library(
            "Snake Oil, Inc.   ",
            "Soft Token Library",
            LibraryVersion::new(1, 23)
        ));
        assert!(!u.matches_library(
            "Snake Oil, Inc.",
            "Soft Token Library",
            LibraryVersion::new(1, 2)
        ));
    }

    #[test]
    fn rfc7512_token_with_percent_and_mixed_case_id() {
        let s = "pkcs11:token=My%20token%25%20created%20by%20Joe;library-version=3;\
                 id=%01%02%03%Ba%dd%Ca%fe%04%05%06";
        let u = p11(s);
        assert_eq!(u.token(), Some("My token% created by Joe"));
        assert_eq!(u.library_version(), Some(LibraryVersion::new(3, 0)));
        assert_eq!(
            u.id(),
            Some(&[1, 2, 3, 0xba, 0xdd, 0xca, 0xfe, 4, 5, 6][..])
        );
        // Upper-case hex on output.
        assert_eq!(
            roundtrip(&u.into()),
            "pkcs11:token=My%20token%25%20created%20by%20Joe;library-version=3;\
             id=%01%02%03%BA%DD%CA%FE%04%05%06"
        );
    }

    #[test]
    fn rfc7512_escaped_separator_and_non_ascii() {
        let u = canonical(
            "pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;object=my-certificate;type=cert",
        );
        assert_eq!(u.token(), Some("A name with a substring %;"));
        let u = canonical(
            "pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;\
             object=my-certificate;type=cert",
        );
        assert_eq!(u.token(), Some("Name with a small A with acute: \u{e1}"));
        let u = canonical("pkcs11:token=my-token;object=my-certificate;type=cert;id=%E2%82%AC");
        assert_eq!(u.id(), Some("\u{20ac}".as_bytes()));
    }

    #[test]
    fn rfc7512_unknown_attributes_kept_and_match_nothing() {
        let s = "pkcs11:token=my-token;object=my-certificate;type=cert;vendor-aaa=value-a\
                 ?pin-source=file:/etc/token_pin&vendor-bbb=value-b";
        let u = canonical(s);
        assert!(u.has_unrecognized());
        assert_eq!(
            u.unrecognized_path_attributes(),
            &[("vendor-aaa".to_owned(), "value-a".to_owned())]
        );
        assert_eq!(
            u.unrecognized_query_attributes(),
            &[("vendor-bbb".to_owned(), "value-b".to_owned())]
        );
        assert_eq!(u.pin_source(), Some("file:/etc/token_pin"));
        let token = TokenAttrs {
            label: "my-token",
            ..TokenAttrs::default()
        };
        assert!(!u.matches_token(&token));
        assert!(!u.matches_slot(0, "", ""));
        assert!(!u.matches_object(Some("my-certificate"), None, ObjectType::Cert));
        // Without the unknown attributes the same URI matches.
        let known = p11("pkcs11:token=my-token;object=my-certificate;type=cert");
        assert!(known.matches_token(&token));
        assert!(known.matches_object(Some("my-certificate"), None, ObjectType::Cert));
    }

    #[test]
    fn vendor_attributes_verbatim_and_not_unrecognized() {
        let s = "pkcs11:object=k;x-Vendor_a=A%20b?x-q=1&x-q=2&module-name=m";
        let u = p11(s);
        assert!(!u.has_unrecognized());
        assert_eq!(
            u.vendor_path_attributes(),
            &[("x-Vendor_a".to_owned(), "A%20b".to_owned())]
        );
        assert_eq!(u.vendor_query_attributes().len(), 2);
        assert_eq!(
            roundtrip(&u.into()),
            "pkcs11:object=k;x-Vendor_a=A%20b?module-name=m&x-q=1&x-q=2"
        );
        // Vendor path attributes may not repeat.
        let e = err("pkcs11:x-a=1;X-A=2");
        assert!(
            matches!(e.reason, UriErrorReason::DuplicateAttribute { ref name } if name == "x-a")
        );
    }

    #[test]
    fn scheme_and_names_case_insensitive() {
        let u = p11("PKCS11:TOKEN=web;Type=PRIVATE");
        assert_eq!(u.token(), Some("web"));
        assert_eq!(u.object_type(), Some(ObjectType::Private));
        assert_eq!(u.to_string(), "pkcs11:token=web;type=private");
        assert!(matches!(
            "TPM2:handle=0x81000001".parse(),
            Ok(KeyUri::Tpm2(_))
        ));
        assert!(matches!("File:k.pem".parse(), Ok(KeyUri::File(_))));
    }

    #[test]
    fn max_sessions() {
        let u = canonical("pkcs11:token=web?module-name=softhsm2&max-sessions=8");
        assert_eq!(u.max_sessions(), NonZeroUsize::new(8));
        for bad in ["0", "-1", "+1", "", "1x", "99999999999999999999999"] {
            let e = err(&format!("pkcs11:?max-sessions={bad}"));
            assert!(
                matches!(e.reason, UriErrorReason::InvalidValue { ref attr, .. } if attr == "max-sessions"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn builder() {
        let u = Pkcs11Uri::new()
            .with_token("web")
            .with_object("tls key")
            .with_object_type(ObjectType::Private)
            .with_id([0xab, 0x01])
            .with_slot_id(3)
            .with_module_path("/usr/lib/softhsm/libsofthsm2.so")
            .with_pin_source("file:/run/pin")
            .with_max_sessions(NonZeroUsize::MIN);
        assert_eq!(
            roundtrip(&u.clone().into()),
            "pkcs11:token=web;slot-id=3;object=tls%20key;type=private;id=%AB%01\
             ?pin-source=file:/run/pin&module-path=/usr/lib/softhsm/libsofthsm2.so&max-sessions=1"
        );
        // pin-value and pin-source exclude each other.
        let v = u.with_pin_value(SecretString::from("1234"));
        assert_eq!(v.pin_source(), None);
        assert!(!v.to_string().contains("1234"));
        let v = v.with_pin_source("file:/x");
        assert!(v.pin_value().is_none());
    }

    // Invalid input.

    fn assert_err(s: &str, position: usize, check: impl Fn(&UriErrorReason) -> bool) -> UriError {
        let e = err(s);
        assert!(check(&e.reason), "{s}: unexpected reason {:?}", e.reason);
        assert_eq!(e.position, position, "{s}: {e}");
        let msg = e.to_string();
        assert!(msg.contains(&format!("at byte {position}:")), "{msg}");
        assert!(msg.contains(&format!("(expected {})", e.expected)), "{msg}");
        e
    }

    #[test]
    fn error_message_format() {
        let e = err("pkcs11:tok%en=web");
        assert_eq!(
            e.to_string(),
            "invalid key URI 'pkcs11:tok[...]' at byte 10: bad percent-encoding (not shown) \
             (expected two hex digits after '%')"
        );
        assert_eq!(
            e.reason,
            UriErrorReason::BadPercentEncoding {
                fragment: "%en".into()
            }
        );
        // Errors convert into the crate's error.
        let e: crate::Error = e.into();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
    }

    #[test]
    fn bad_percent_encoding() {
        use UriErrorReason::BadPercentEncoding as B;
        assert_err(
            "pkcs11:token=a%2",
            14,
            |r| matches!(r, B { fragment } if fragment == "%2"),
        );
        assert_err(
            "pkcs11:token=a%",
            14,
            |r| matches!(r, B { fragment } if fragment == "%"),
        );
        assert_err("pkcs11:token=%zz", 13, |r| matches!(r, B { .. }));
        // A multi-byte character right after '%' must not panic.
        assert_err(
            "pkcs11:token=%\u{e9}\u{e9}",
            13,
            |r| matches!(r, B { fragment } if fragment == "%\u{e9}\u{e9}"),
        );
        assert_err("file:/tmp/100%.pem", 13, |r| matches!(r, B { .. }));
        assert_err("tpm2:file=/a%g0", 12, |r| matches!(r, B { .. }));
    }

    #[test]
    fn unexpected_characters() {
        let e = assert_err(
            "pkcs11:token=my token",
            15,
            |r| matches!(r, UriErrorReason::UnexpectedCharacter { ch: ' ', attr } if attr == "token"),
        );
        assert!(e.to_string().contains("write it as %20"), "{e}");
        assert_err("pkcs11:object=a/b", 15, |r| {
            matches!(r, UriErrorReason::UnexpectedCharacter { ch: '/', .. })
        });
        assert_err("pkcs11:object=a#frag", 15, |r| {
            matches!(r, UriErrorReason::UnexpectedCharacter { ch: '#', .. })
        });
        assert_err("pkcs11:?module-name=a;b", 21, |r| {
            matches!(r, UriErrorReason::UnexpectedCharacter { ch: ';', .. })
        });
        let e = assert_err("pkcs11:token=caf\u{e9}", 16, |r| {
            matches!(r, UriErrorReason::UnexpectedCharacter { ch: '\u{e9}', .. })
        });
        assert!(e.to_string().contains("%C3%A9"), "{e}");
        assert_err("file:/a?b", 7, |r| {
            matches!(r, UriErrorReason::UnexpectedCharacter { ch: '?', .. })
        });
        // Control characters are escaped in the message.
        let e = err("pkcs11:token=a\nb");
        assert!(!e.to_string().contains('\n'), "{e}");
    }

    #[test]
    fn attribute_syntax_errors() {
        assert_err("pkcs11:token=a;;object=b", 15, |r| {
            *r == UriErrorReason::EmptyAttributeName
        });
        assert_err("pkcs11:token=a;", 15, |r| {
            *r == UriErrorReason::EmptyAttributeName
        });
        assert_err("pkcs11:=a", 7, |r| *r == UriErrorReason::EmptyAttributeName);
        assert_err(
            "pkcs11:token",
            12,
            |r| matches!(r, UriErrorReason::MissingEquals { name } if name == "token"),
        );
        assert_err(
            "pkcs11:to ken=a",
            9,
            |r| matches!(r, UriErrorReason::BadAttributeName { name } if name == "to ken"),
        );
        assert_err("pkcs11:tok%41n=a", 10, |r| {
            matches!(r, UriErrorReason::BadAttributeName { .. })
        });
    }

    #[test]
    fn duplicate_and_misplaced_attributes() {
        assert_err(
            "pkcs11:token=a;object=b;token=c",
            24,
            |r| matches!(r, UriErrorReason::DuplicateAttribute { name } if name == "token"),
        );
        assert_err("pkcs11:token=a;TOKEN=a", 15, |r| {
            matches!(r, UriErrorReason::DuplicateAttribute { .. })
        });
        assert_err(
            "pkcs11:?module-name=a&module-name=b",
            22,
            |r| matches!(r, UriErrorReason::DuplicateAttribute { name } if name == "module-name"),
        );
        assert_err(
            "pkcs11:pin-source=file:/x",
            7,
            |r| matches!(r, UriErrorReason::MisplacedAttribute { name, belongs_in: UriComponent::Query } if name == "pin-source"),
        );
        assert_err("pkcs11:?token=a", 8, |r| {
            matches!(
                r,
                UriErrorReason::MisplacedAttribute {
                    belongs_in: UriComponent::Path,
                    ..
                }
            )
        });
        // A misplaced pin-value is not echoed either.
        let e = err("pkcs11:pin-value=secret1");
        assert!(!e.to_string().contains("secret1"), "{e}");
    }

    #[test]
    fn bad_typed_values() {
        let is_invalid = |attr: &'static str| move |r: &UriErrorReason| matches!(r, UriErrorReason::InvalidValue { attr: a, .. } if a == attr);
        let e = assert_err("pkcs11:type=key", 12, is_invalid("type"));
        assert!(e.to_string().contains("secret-key"), "{e}");
        assert_err("pkcs11:type=", 12, is_invalid("type"));
        assert_err("pkcs11:slot-id=abc", 15, is_invalid("slot-id"));
        assert_err("pkcs11:slot-id=", 15, is_invalid("slot-id"));
        assert_err("pkcs11:slot-id=-1", 15, is_invalid("slot-id"));
        assert_err(
            "pkcs11:slot-id=18446744073709551616",
            15,
            is_invalid("slot-id"),
        );
        assert_eq!(
            p11("pkcs11:slot-id=18446744073709551615").slot_id(),
            Some(u64::MAX)
        );
        for v in ["", "1.", ".1", "1.2.3", "256", "1.256", "v1", "1,2", "+1"] {
            let s = format!("pkcs11:library-version={v}");
            assert_err(&s, 23, is_invalid("library-version"));
        }
    }

    #[test]
    fn not_utf8() {
        assert_err(
            "pkcs11:token=%FF",
            13,
            |r| matches!(r, UriErrorReason::NotUtf8 { attr } if attr == "token"),
        );
        assert_err("pkcs11:?module-path=%C3", 20, |r| {
            matches!(r, UriErrorReason::NotUtf8 { .. })
        });
        // id holds bytes.
        assert_eq!(p11("pkcs11:id=%FF").id(), Some(&[0xff][..]));
    }

    #[test]
    fn pin_value_errors_do_not_leak() {
        let opts = UriParseOptions::new().allow_pin_value(true);
        for s in [
            "pkcs11:?pin-value=hun%zzter2",
            "pkcs11:?pin-value=hun ter2",
            "pkcs11:?pin-value=hunter2&bogus name=1",
            "pkcs11:?PIN-VALUE=hunter2&type=x",
            "pkcs11:?pin-value=%FFhunter2",
        ] {
            let e = Pkcs11Uri::parse_with(s, &opts).unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("hun"), "{shown}");
            assert!(!shown.contains("ter2"), "{shown}");
        }
        let e = Pkcs11Uri::parse_with("pkcs11:?pin-value=a%zz", &opts).unwrap_err();
        assert_eq!(
            e.reason,
            UriErrorReason::MalformedSecret { attr: "pin-value" }
        );
        assert_err("pkcs11:?pin-source=file:/p&pin-value=1", 27, |r| {
            *r == UriErrorReason::PinValueRefused
        });
        let e = Pkcs11Uri::parse_with("pkcs11:?pin-source=file:/p&pin-value=1", &opts).unwrap_err();
        assert!(matches!(
            e.reason,
            UriErrorReason::ConflictingAttributes { .. }
        ));
    }

    /// Found by an attacker's review: a piece without '=' may be a PIN typed in the wrong
    /// place; only a known attribute name is quoted.
    #[test]
    fn unknown_pieces_without_equals_are_not_quoted() {
        for s in [
            "pkcs11:token=L;object=web?pin-value:SECRET99",
            "pkcs11:token=L;pin-value:SECRET99",
            "pkcs11:token=L;object=web?pin-valueSECRET99",
            "pkcs11:token=L;object=web?pin-value%3DSECRET99",
            "pkcs11:token=L;SECRET99",
        ] {
            let e = s.parse::<KeyUri>().unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("SECRET99"), "{s}: {shown}");
            assert!(shown.contains("no '='"), "{s}: {shown}");
        }
        let e = "pkcs11:token".parse::<KeyUri>().unwrap_err();
        assert!(e.to_string().contains("\"token\" has no '='"), "{e}");
    }

    /// Found by the `uri` fuzz target: a reason quoted input text (a `file:` host, an invalid
    /// value) that runs past a `pin-value=` although the error's position is before it.
    #[test]
    fn reasons_quoting_text_past_a_pin_value_are_redacted() {
        for s in [
            "file://pkcs11:token=web?pin-value=S3CRET/key.pem",
            "pkcs11:type=xpin-value=S3CRET",
            "pkcs11:slot-id=pin-value=S3CRET",
            "tpm2:handle=0xpin-value=S3CRET",
        ] {
            let opts = UriParseOptions::new().allow_pin_value(true);
            for e in [
                s.parse::<KeyUri>().unwrap_err(),
                KeyUri::parse_with(s, &opts).unwrap_err(),
            ] {
                assert_eq!(e.reason, UriErrorReason::Redacted, "{s}");
                let shown = format!("{e} {e:?}");
                assert!(!shown.contains("S3CRET"), "{shown}");
            }
        }
    }

    #[test]
    fn scheme_errors() {
        let e = assert_err("key.pem", 0, |r| *r == UriErrorReason::MissingScheme);
        assert!(e.to_string().contains("file:key.pem"), "{e}");
        assert_err("", 0, |r| *r == UriErrorReason::MissingScheme);
        assert_err("/etc/key:1.pem", 0, |r| *r == UriErrorReason::MissingScheme);
        let e = assert_err(
            "http://example.com/key",
            0,
            |r| matches!(r, UriErrorReason::UnknownScheme { scheme } if scheme == "http"),
        );
        let msg = e.to_string();
        assert!(
            msg.contains("\"http\"")
                && msg.contains("pkcs11:")
                && msg.contains("tpm2:")
                && msg.contains("file:"),
            "{msg}"
        );
        let e = "tpm2:handle=0x81000000".parse::<Pkcs11Uri>().unwrap_err();
        assert!(matches!(
            e.reason,
            UriErrorReason::WrongScheme {
                wanted: "pkcs11",
                ..
            }
        ));
    }

    // tpm2:

    #[test]
    fn tpm2_handle() {
        for (s, h) in [
            ("tpm2:handle=0x81000010", 0x8100_0010),
            ("tpm2:handle=0X81ffffff", 0x81ff_ffff),
            ("tpm2:handle=2164260864", 0x8100_0000),
        ] {
            let u: KeyUri = s.parse().unwrap();
            assert_eq!(u, KeyUri::Tpm2(Tpm2Uri::new(Tpm2Key::Handle(h))));
            roundtrip(&u);
        }
        let u: KeyUri = "tpm2:handle=0x81000010?tcti=swtpm:host=127.0.0.1,port=2321"
            .parse()
            .unwrap();
        assert_eq!(
            u,
            KeyUri::Tpm2(
                Tpm2Uri::new(Tpm2Key::Handle(0x8100_0010))
                    .with_tcti("swtpm:host=127.0.0.1,port=2321")
            )
        );
        assert_eq!(
            roundtrip(&u),
            "tpm2:handle=0x81000010?tcti=swtpm:host=127.0.0.1,port=2321"
        );
        assert_eq!(
            Tpm2Uri::new(Tpm2Key::Handle(0x8100_0001)).to_string(),
            "tpm2:handle=0x81000001"
        );
    }

    #[test]
    fn tpm2_file() {
        let u: Tpm2Uri = "tpm2:file=/etc/hardkey/web%20key.tss2.pem?tcti=device:/dev/tpmrm0"
            .parse()
            .unwrap();
        assert_eq!(u.key, Tpm2Key::File("/etc/hardkey/web key.tss2.pem".into()));
        assert_eq!(u.tcti.as_deref(), Some("device:/dev/tpmrm0"));
        assert_eq!(
            roundtrip(&u.into()),
            "tpm2:file=/etc/hardkey/web%20key.tss2.pem?tcti=device:/dev/tpmrm0"
        );
        // Characters that are separators elsewhere survive.
        let u = Tpm2Uri::new(Tpm2Key::File("/k;?&=%#.pem".into())).with_tcti("a&b;c#d");
        let shown = roundtrip(&u.into());
        assert_eq!(shown, "tpm2:file=/k%3B%3F&=%25%23.pem?tcti=a%26b%3Bc%23d");
    }

    #[test]
    fn tpm2_errors() {
        assert_err("tpm2:handle=0x81000010;file=/k.pem", 23, |r| {
            *r == UriErrorReason::ConflictingAttributes {
                first: "handle",
                second: "file",
            }
        });
        assert_err("tpm2:", 5, |r| *r == UriErrorReason::MissingKey);
        assert_err("tpm2:?tcti=device", 17, |r| {
            *r == UriErrorReason::MissingKey
        });
        let e = assert_err("tpm2:handle=0x80000001", 12, |r| {
            *r == UriErrorReason::HandleOutOfRange {
                handle: 0x8000_0001,
            }
        });
        assert!(e.to_string().contains("0x81000000..=0x81FFFFFF"), "{e}");
        assert_err("tpm2:handle=0x100000000", 12, |r| {
            matches!(r, UriErrorReason::HandleOutOfRange { .. })
        });
        for bad in [
            "",
            "0x",
            "0xg1",
            "-1",
            "81000010h",
            "0x+1",
            "99999999999999999999999",
        ] {
            assert_err(&format!("tpm2:handle={bad}"), 12, |r| {
                matches!(r, UriErrorReason::BadHandle { .. })
            });
        }
        let e = assert_err(
            "tpm2:handle=0x81000010;auth=x",
            23,
            |r| matches!(r, UriErrorReason::UnknownAttribute { name } if name == "auth"),
        );
        assert!(e.to_string().contains("tcti="), "{e}");
        assert_err("tpm2:handle=0x81000010?x-foo=1", 23, |r| {
            matches!(r, UriErrorReason::UnknownAttribute { .. })
        });
        assert_err("tpm2:handle=0x81000010;handle=0x81000011", 23, |r| {
            matches!(r, UriErrorReason::DuplicateAttribute { .. })
        });
        assert_err("tpm2:handle=0x81000010?tcti=a&tcti=b", 30, |r| {
            matches!(r, UriErrorReason::DuplicateAttribute { .. })
        });
        assert_err(
            "tpm2:handle=0x81000010?tcti=",
            28,
            |r| matches!(r, UriErrorReason::InvalidValue { attr, .. } if attr == "tcti"),
        );
        assert_err(
            "tpm2:file=",
            10,
            |r| matches!(r, UriErrorReason::InvalidValue { attr, .. } if attr == "file"),
        );
        assert_err("tpm2:tcti=x", 5, |r| {
            matches!(r, UriErrorReason::MisplacedAttribute { .. })
        });
        assert_err("tpm2:?handle=0x81000000", 6, |r| {
            matches!(r, UriErrorReason::MisplacedAttribute { .. })
        });
    }

    // file:

    #[test]
    fn file_forms() {
        for (s, path) in [
            ("file:key.pem", "key.pem"),
            ("file:/abs/path.pem", "/abs/path.pem"),
            ("file:///abs/path.pem", "/abs/path.pem"),
            ("file://localhost/abs/path.pem", "/abs/path.pem"),
            ("file:/a%20b/c%3Fd.pem", "/a b/c?d.pem"),
            ("file:/a b;c.pem", "/a b;c.pem"),
            ("file:/caf\u{e9}.pem", "/caf\u{e9}.pem"),
        ] {
            let u: KeyUri = s.parse().unwrap();
            assert_eq!(u, KeyUri::File(FileUri::new(path)), "{s}");
            roundtrip(&u);
        }
        assert_eq!(
            FileUri::new("/a b;c?d#e%f/caf\u{e9}.pem").to_string(),
            "file:/a%20b%3Bc%3Fd%23e%25f/caf%C3%A9.pem"
        );
        assert_eq!(FileUri::new("rel/key.pem").to_string(), "file:rel/key.pem");
        // A path starting with "//" gets an empty authority so it is not read as a host.
        let u = KeyUri::File(FileUri::new("//srv/key.pem"));
        assert_eq!(roundtrip(&u), "file:////srv/key.pem");
    }

    #[test]
    fn file_errors() {
        assert_err(
            "file://remotehost/x",
            7,
            |r| matches!(r, UriErrorReason::RemoteFileHost { host } if host == "remotehost"),
        );
        assert_err("file:", 5, |r| *r == UriErrorReason::EmptyPath);
        assert_err("file://", 7, |r| *r == UriErrorReason::EmptyPath);
        assert_err("file://localhost", 16, |r| *r == UriErrorReason::EmptyPath);
        assert_err("file:/k.pem#frag", 11, |r| {
            matches!(r, UriErrorReason::UnexpectedCharacter { ch: '#', .. })
        });
    }

    #[cfg(unix)]
    #[test]
    fn file_non_utf8_path_round_trips() {
        let u: KeyUri = "file:/tmp/%FF.pem".parse().unwrap();
        let KeyUri::File(f) = &u else { panic!() };
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(f.path.as_os_str().as_bytes(), b"/tmp/\xff.pem");
        assert_eq!(roundtrip(&u), "file:/tmp/%FF.pem");
    }

    // Matching.

    #[test]
    fn matching_padded_token_fields() {
        let u =
            p11("pkcs11:token=web;manufacturer=SoftHSM%20project;serial=1234;model=SoftHSM%20v2");
        let t = TokenAttrs {
            label: "web                             ",
            manufacturer: "SoftHSM project                 ",
            serial: "1234            ",
            model: "SoftHSM v2      ",
        };
        assert!(u.matches_token(&t));
        assert!(!u.matches_token(&TokenAttrs { label: "web2", ..t }));
        assert!(!u.matches_token(&TokenAttrs { label: " web", ..t }));
        assert!(!u.matches_token(&TokenAttrs {
            serial: "12345",
            ..t
        }));
        // No attributes: matches any token.
        assert!(Pkcs11Uri::new().matches_token(&t));
        // The empty serial of RFC 7512's example matches only an empty (all-space) serial.
        let empty_serial = p11("pkcs11:serial=");
        assert!(empty_serial.matches_token(&TokenAttrs {
            serial: "                ",
            ..t
        }));
        assert!(!empty_serial.matches_token(&t));
    }

    #[test]
    fn matching_slot() {
        let u = p11("pkcs11:slot-description=Sun%20Metaslot;slot-id=7");
        assert!(u.matches_slot(7, "Sun Metaslot      ", "any"));
        assert!(!u.matches_slot(8, "Sun Metaslot", "any"));
        assert!(!u.matches_slot(7, "Other", "any"));
        assert!(p11("pkcs11:slot-manufacturer=Snake").matches_slot(1, "", "Snake   "));
    }

    #[test]
    fn matching_objects_by_id_label_type() {
        let u = p11("pkcs11:object=tls;type=private;id=%01%02");
        assert!(u.matches_object(Some("tls"), Some(&[1, 2]), ObjectType::Private));
        assert!(!u.matches_object(Some("tls"), Some(&[1, 2, 3]), ObjectType::Private));
        assert!(!u.matches_object(Some("tls"), Some(&[1]), ObjectType::Private));
        assert!(!u.matches_object(Some("tls"), None, ObjectType::Private));
        assert!(!u.matches_object(Some("tls"), Some(&[1, 2]), ObjectType::Public));
        assert!(!u.matches_object(None, Some(&[1, 2]), ObjectType::Private));
        // Labels are not padded: compared exactly.
        assert!(!u.matches_object(Some("tls "), Some(&[1, 2]), ObjectType::Private));
        let by_id = p11("pkcs11:id=%01%02");
        assert!(by_id.matches_object(None, Some(&[1, 2]), ObjectType::Cert));
        assert!(by_id.matches_object(Some("x"), Some(&[1, 2]), ObjectType::Public));
        // An empty id matches only an empty CKA_ID.
        let empty = p11("pkcs11:id=");
        assert!(empty.matches_object(None, Some(&[]), ObjectType::Cert));
        assert!(!empty.matches_object(None, Some(&[0]), ObjectType::Cert));
    }

    // Property-style round trip over tricky values.

    const TRICKY: [&str; 14] = [
        "",
        " ",
        "a b",
        ";",
        "?",
        "&",
        "=",
        "%",
        "%41",
        "/",
        "a;b?c&d=e%f/g#h",
        "caf\u{e9} \u{20ac} \u{1f511}",
        "[]@!$'()*+,|~",
        "\t\n\u{7f}\"<>\\^`{}",
    ];

    #[test]
    fn round_trip_generated_pkcs11() {
        for (i, a) in TRICKY.iter().enumerate() {
            let b = TRICKY[(i + 5) % TRICKY.len()];
            let base = Pkcs11Uri::new()
                .with_token(*a)
                .with_manufacturer(b)
                .with_serial(*a)
                .with_model(b)
                .with_library_manufacturer(*a)
                .with_library_description(b)
                .with_library_version(LibraryVersion::new(u8::try_from(i).unwrap(), 255))
                .with_slot_manufacturer(*a)
                .with_slot_description(b)
                .with_slot_id(u64::MAX - i as u64)
                .with_object(*a)
                .with_object_type(ObjectType::SecretKey)
                .with_id(a.as_bytes())
                .with_module_name(*a)
                .with_module_path(b)
                .with_max_sessions(NonZeroUsize::new(i + 1).unwrap());
            let shown = roundtrip(&base.clone().into());
            assert!(shown.is_ascii(), "{shown}");
            assert!(!shown.contains(' ') && !shown.contains('#'), "{shown}");
            roundtrip(&base.clone().with_pin_source(b).into());

            // Display drops a pin-value; to_string_with_pin keeps it.
            let with_pin = base.clone().with_pin_value(SecretString::from(*a));
            assert_eq!(with_pin.to_string(), shown);
            let text = with_pin.to_string_with_pin();
            let opts = UriParseOptions::new().allow_pin_value(true);
            let back = Pkcs11Uri::parse_with(text.expose_secret(), &opts).unwrap();
            assert_eq!(back, with_pin, "{}", text.expose_secret());

            // Single attributes, each alone.
            for one in [
                Pkcs11Uri::new().with_token(*a),
                Pkcs11Uri::new().with_object(*a),
                Pkcs11Uri::new().with_id(a.as_bytes()),
                Pkcs11Uri::new().with_module_path(*a),
            ] {
                roundtrip(&one.into());
            }
        }
    }

    #[test]
    fn round_trip_generated_tpm2_and_file() {
        for a in TRICKY.iter().filter(|a| !a.is_empty()) {
            let path = format!("/k/{a}.pem");
            roundtrip(
                &Tpm2Uri::new(Tpm2Key::File(path.clone().into()))
                    .with_tcti(*a)
                    .into(),
            );
            roundtrip(&FileUri::new(&path).into());
            roundtrip(&FileUri::new(*a).into());
        }
    }

    #[test]
    fn parser_never_panics_on_mangled_input() {
        let seeds = [
            "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;id=%01%AB?pin-source=file:/p",
            "tpm2:handle=0x81000010?tcti=swtpm:host=127.0.0.1,port=2321",
            "file:///caf\u{e9}/k%20y.pem",
            "pkcs11:x-a=%C3%A9;type=cert?pin-value=\u{20ac}&max-sessions=2",
        ];
        let opts = UriParseOptions::new().allow_pin_value(true);
        for seed in seeds {
            let chars: Vec<char> = seed.chars().collect();
            // Every prefix, and every one-character deletion or replacement.
            for i in 0..=chars.len() {
                let prefix: String = chars.iter().take(i).collect();
                let _ = KeyUri::parse_with(&prefix, &opts);
                for repl in ['%', '\u{e9}', ';', '?', '&', '=', ':', '/', '\0'] {
                    let mut m = chars.clone();
                    if i < m.len() {
                        m[i] = repl;
                    }
                    let s: String = m.iter().collect();
                    if let Ok(u) = KeyUri::parse_with(&s, &opts) {
                        // Whatever parses must round-trip (the PIN via to_string_with_pin).
                        let text = match &u {
                            KeyUri::Pkcs11(p) => p.to_string_with_pin().expose_secret().to_owned(),
                            other => other.to_string(),
                        };
                        assert_eq!(
                            KeyUri::parse_with(&text, &opts).as_ref(),
                            Ok(&u),
                            "{s} -> {text}"
                        );
                    } else if let Err(e) = KeyUri::parse_with(&s, &opts) {
                        assert!(e.position <= s.len(), "{s}: {e}");
                    }
                }
            }
        }
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact("pkcs11:?pin-value=1234"),
            "pkcs11:?pin-value=[redacted]"
        );
        assert_eq!(
            redact("pkcs11:?PIN-Value=12&module-name=x&pin-value=\u{e9}"),
            "pkcs11:?PIN-Value=[redacted]"
        );
        // A PIN holding separators leaks no fragment, in the input or the reason.
        for uri in [
            "pkcs11:?pin-value=ab;cd",
            "pkcs11:?pin-value=ab&cd",
            "pkcs11:?pin-value=ab#cd",
        ] {
            let opts = UriParseOptions::new().allow_pin_value(true);
            if let Err(e) = KeyUri::parse_with(uri, &opts) {
                let msg = e.to_string();
                assert!(!msg.contains("Q7xZ") && !msg.contains("K9wP"), "{msg}");
            }
            let msg = uri.parse::<KeyUri>().unwrap_err().to_string();
            assert!(!msg.contains("Q7xZ") && !msg.contains("K9wP"), "{msg}");
        }
        assert_eq!(redact("pkcs11:token=a"), "pkcs11:token=a");
        // In the path too, and fragments go.
        for (uri, shown) in [
            (
                "pkcs11:token=a;pin=S3CRET;object=k",
                "pkcs11:token=a;pin=[redacted]",
            ),
            (
                "pkcs11:token=a;object=k;pin-source=S3CRET",
                "pkcs11:token=a;object=k;pin-source=[redacted]",
            ),
            (
                "pkcs11:token=a;object=k#S3CRET",
                "pkcs11:token=a;object=k#[redacted]",
            ),
            (
                "tpm2:handle=0x81000001;auth=S3CRET",
                "tpm2:handle=0x81000001;auth=[redacted]",
            ),
            (
                "pkcs11:token=a?tcti=x&pin-source=env:S3CRET",
                "pkcs11:token=a?tcti=x&pin-source=[redacted]",
            ),
        ] {
            assert_eq!(redact(uri), shown);
        }
        for bad in [
            "pkcs11:token=a;slot-id=S3CRET",
            "pkcs11:token=a?max-sessions=S3CRET",
            "tpm2:handle=S3CRET",
            "pkcs11:token=a;id=%ZS3CRET",
        ] {
            let msg = bad.parse::<KeyUri>().unwrap_err().to_string();
            assert!(!msg.contains("S3CRET"), "{msg}");
        }
        // Only public query values stay; a mistyped or unknown attribute may carry a PIN.
        assert_eq!(
            redact("pkcs11:token=a?module-path=/usr/lib/x.so&max-sessions=4"),
            "pkcs11:token=a?module-path=/usr/lib/x.so&max-sessions=4"
        );
        for (uri, shown) in [
            (
                "pkcs11:token=a?pin-value =1234",
                "pkcs11:token=a?pin-value =[redacted]",
            ),
            (
                "pkcs11:token=a?pin-valu=1234&x=1",
                "pkcs11:token=a?pin-valu=[redacted]",
            ),
            (
                "pkcs11:token=a?pin-source=1234",
                "pkcs11:token=a?pin-source=[redacted]",
            ),
            ("pkcs11:token=a?1234", "pkcs11:token=a?[redacted]"),
            (
                "pkcs11:token=a?module-path=/m.so&pin-valeu=12&34",
                "pkcs11:token=a?module-path=/m.so&pin-valeu=[redacted]",
            ),
        ] {
            assert_eq!(redact(uri), shown);
            assert!(!redact(uri).contains("12"), "{uri}");
        }
    }
}
