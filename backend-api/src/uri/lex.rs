//! The shared syntax: scheme, attributes, percent-decoding, character classes.

use std::str::FromStr;

use zeroize::Zeroize;

use super::error::{UriComponent, UriError, UriErrorReason, error};
use super::pkcs11::{PK11_PATH_NAMES, PK11_QUERY_NAMES};
use super::tpm2::TPM2_ACCEPTED;

/// Split `scheme:rest`; the scheme must be RFC 3986 `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
/// Returns the scheme as written, the rest and the rest's byte offset.
pub(super) fn split_scheme(s: &str) -> Result<(&str, &str, usize), UriError> {
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
pub(super) fn expect_scheme<'a>(s: &'a str, wanted: &'static str) -> Result<&'a str, UriError> {
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
pub(super) struct Attr<'a> {
    pub(super) name: &'a str,
    pub(super) name_pos: usize,
    pub(super) value: &'a str,
    pub(super) value_pos: usize,
}

/// Split a component at `sep` into attributes. An empty component has none.
pub(super) fn split_attributes<'a>(
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
pub(super) fn check_name(input: &str, name: &str, pos: usize) -> Result<(), UriError> {
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

pub(super) fn is_pct_triple(bytes: &[u8], i: usize) -> bool {
    hex_val(bytes.get(i + 1)).is_some() && hex_val(bytes.get(i + 2)).is_some()
}

pub(super) fn hex_val(b: Option<&u8>) -> Option<u8> {
    b.and_then(|&b| (b as char).to_digit(16))
        .and_then(|d| u8::try_from(d).ok())
}

/// The error for a `%` at byte `i` of `text` (which starts at byte `base` of `input`).
pub(super) fn bad_percent(input: &str, text: &str, i: usize, base: usize) -> UriError {
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
    pub(super) fn decode(
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
    pub(super) fn text(
        &self,
        input: &str,
        keep: fn(u8) -> bool,
        expected: &'static str,
    ) -> Result<String, UriError> {
        String::from_utf8(self.decode(input, keep, expected, false)?)
            .map_err(|_| self.not_utf8(input))
    }

    pub(super) fn not_utf8(&self, input: &str) -> UriError {
        error(
            input,
            self.value_pos,
            UriErrorReason::NotUtf8 {
                attr: self.name.to_owned(),
            },
            "UTF-8 text (only id may hold arbitrary bytes)",
        )
    }

    pub(super) fn invalid(&self, input: &str, value: &str, expected: &'static str) -> UriError {
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

    pub(super) fn duplicate(&self, input: &str, name: &str) -> UriError {
        error(
            input,
            self.name_pos,
            UriErrorReason::DuplicateAttribute {
                name: name.to_owned(),
            },
            "each attribute at most once (RFC 7512 section 2.3)",
        )
    }

    pub(super) fn misplaced(&self, input: &str, name: &str, belongs_in: UriComponent) -> UriError {
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

    pub(super) fn conflict(
        &self,
        input: &str,
        first: &'static str,
        second: &'static str,
    ) -> UriError {
        error(
            input,
            self.name_pos,
            UriErrorReason::ConflictingAttributes { first, second },
            "only one of the two",
        )
    }

    pub(super) fn unknown(&self, input: &str, name: &str) -> UriError {
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

pub(super) fn is_vendor(lower_name: &str) -> bool {
    lower_name.len() > 2 && lower_name.starts_with("x-")
}

/// `1*DIGIT`, no sign, no overflow.
pub(super) fn parse_digits<T: FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `uri` (if given) equals `device`, ignoring trailing spaces (PKCS#11 pads with them).
pub(super) fn padded_eq(uri: Option<&str>, device: &str) -> bool {
    uri.is_none_or(|u| u.trim_end_matches(' ') == device.trim_end_matches(' '))
}

/// RFC 3986 `unreserved`.
pub(super) fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 7512 `pk11-res-avail`.
pub(super) fn is_res_avail(b: u8) -> bool {
    matches!(
        b,
        b':' | b'[' | b']' | b'@' | b'!' | b'$' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'='
    )
}

/// RFC 7512 `pk11-pchar`, less `pct-encoded`.
pub(super) fn pk11_pchar(b: u8) -> bool {
    is_unreserved(b) || is_res_avail(b) || b == b'&'
}

/// RFC 7512 `pk11-qchar`, less `pct-encoded`.
pub(super) fn pk11_qchar(b: u8) -> bool {
    is_unreserved(b) || is_res_avail(b) || matches!(b, b'/' | b'?' | b'|')
}

/// `tpm2:` path values: `pk11-pchar` and `/`.
pub(super) fn tpm2_pchar(b: u8) -> bool {
    pk11_pchar(b) || b == b'/'
}
