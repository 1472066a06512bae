//! `pkcs11:` URIs (RFC 7512).

use std::fmt;
use std::num::NonZeroUsize;
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use super::UriParseOptions;
use super::error::{UriComponent, UriError, UriErrorReason, error};
use super::lex::{
    expect_scheme, is_vendor, padded_eq, parse_digits, pk11_pchar, pk11_qchar, split_attributes,
};
use super::write::AttrWriter;

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

    pub(super) fn parse(s: &str) -> Option<Self> {
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
/// match anything. See the [module documentation](crate::uri) for the syntax, the canonical form and
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
pub(super) const PK11_QUERY_NAMES: [&str; 5] = [
    "pin-source",
    "pin-value",
    "module-name",
    "module-path",
    "max-sessions",
];

/// Standard path attribute names (for misplacement checks).
pub(super) const PK11_PATH_NAMES: [&str; 13] = [
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

pub(super) const PCHAR_EXPECTED: &str = "letters, digits and -._~:[]@!$'()*+,=& unencoded in a pkcs11 path \
                              value (RFC 7512 pk11-pchar), anything else as %XX";
pub(super) const QCHAR_EXPECTED: &str = "letters, digits and -._~:[]@!$'()*+,=/?| unencoded in a pkcs11 \
                              query value (RFC 7512 pk11-qchar), anything else as %XX";

impl Pkcs11Uri {
    /// The scheme name.
    pub(super) const SCHEME: &'static str = "pkcs11";

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

    pub(super) fn write_uri(&self, w: &mut impl fmt::Write, with_pin: bool) -> fmt::Result {
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
    pub(super) fn path_text_mut(&mut self, name: &str) -> Option<&mut Option<String>> {
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
    pub(super) fn parse_rest(
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
