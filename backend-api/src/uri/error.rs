//! Errors: [`UriError`], what was found and what was expected.

use std::fmt;

use percent_encoding::percent_encode_byte;

use super::redact::{Escaped, holds_pin_value, pin_value_start, redact, redact_cut};

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
    /// `pin-value` without [`UriParseOptions::allow_pin_value`](super::UriParseOptions::allow_pin_value).
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
    /// A `tpm2:` handle outside [`Tpm2Uri::PERSISTENT_HANDLES`](super::Tpm2Uri::PERSISTENT_HANDLES).
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

pub(super) fn error(
    input: &str,
    position: usize,
    reason: UriErrorReason,
    expected: &'static str,
) -> UriError {
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
