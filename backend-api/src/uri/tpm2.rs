//! `tpm2:` URIs, hardkey's own scheme.

use std::fmt;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;

use super::error::{UriComponent, UriError, UriErrorReason, error};
use super::file::{bytes_to_path, path_to_bytes};
use super::lex::{Attr, expect_scheme, pk11_qchar, split_attributes, tpm2_pchar};
use super::pkcs11::QCHAR_EXPECTED;
use super::write::AttrWriter;

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

pub(super) const TPM2_ACCEPTED: &str =
    "handle=<persistent handle> or file=<path> before '?', tcti=<TCTI string> after it";
pub(super) const TPM2_PATH_EXPECTED: &str = "letters, digits and -._~:[]@!$'()*+,=&/ unencoded in a tpm2 \
                                  path value, anything else as %XX";

impl Tpm2Uri {
    /// The scheme name.
    pub(super) const SCHEME: &'static str = "tpm2";

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

    pub(super) fn parse_rest(input: &str, rest: &str, offset: usize) -> Result<Self, UriError> {
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

pub(super) fn parse_handle(input: &str, attr: &Attr<'_>, text: &str) -> Result<u32, UriError> {
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
