//! Keeping secrets out of error messages: the input as an error quotes it.

use std::fmt::{self, Write as _};

use super::error::UriErrorReason;
use super::pkcs11::PK11_PATH_NAMES;

/// Byte offset of the first `pin-value=` value in `input` (case-insensitive).
pub(super) fn pin_value_start(input: &str) -> Option<usize> {
    const KEY: &str = "pin-value=";
    input
        .to_ascii_lowercase()
        .find(KEY)
        .map(|found| found + KEY.len())
}

/// Whether `text` holds a `pin-value=` (case-insensitive): a quoted piece of input that
/// starts before a PIN value and reaches into it holds the whole key, the PIN's only marker.
pub(super) fn holds_pin_value(text: &str) -> bool {
    pin_value_start(text).is_some()
}

impl UriErrorReason {
    /// The piece of the input this reason quotes, if any (in its message or its `Debug`).
    pub(super) fn quoted(&self) -> Option<&str> {
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
pub(super) const PUBLIC_QUERY: [&str; 4] = ["module-path", "module-name", "max-sessions", "tcti"];

/// Path attributes (of `pkcs11:` and `tpm2:` URIs) whose values are never secret: RFC 7512's
/// token and object attributes, and `tpm2:`'s `handle` and `file`.
pub(super) fn public_path(name: &str) -> bool {
    PK11_PATH_NAMES.contains(&name) || name == "handle" || name == "file"
}

/// Keeps the `sep`-separated `name=value` segments of `part` whose names `public` accepts; the
/// first other segment is shown as `name=[redacted]` and ends the text (a secret may contain
/// the separators). Returns whether everything was kept.
pub(super) fn keep_public(
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

pub(super) fn is_name_start(text: &str) -> bool {
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
pub(super) fn redact_cut(input: &str, cut_name: bool) -> String {
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
pub(super) struct Escaped<'a>(pub(super) &'a str);

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
