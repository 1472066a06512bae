//! Writing URIs: percent-encoding and the attribute writer.

use std::fmt::{self, Write as _};

use percent_encoding::percent_encode_byte;

/// What a `file:` path may hold unencoded on input: anything but `%`, `?`, `#` and controls.
pub(super) fn file_char_in(b: u8) -> bool {
    !b.is_ascii() || ((b.is_ascii_graphic() || b == b' ') && !matches!(b, b'%' | b'?' | b'#'))
}

/// What a `file:` path is printed with unencoded.
pub(super) fn file_char_out(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'%' | b'?' | b'#' | b';')
}

/// Bytes with everything `keep` rejects as upper-case `%XX`. `keep` only accepts ASCII.
pub(super) struct Encoded<'a>(pub(super) &'a [u8], pub(super) fn(u8) -> bool);

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
pub(super) struct AttrWriter<'w, W> {
    pub(super) w: &'w mut W,
    pub(super) lead: Option<char>,
    pub(super) sep: char,
    pub(super) first: bool,
}

impl<'w, W: fmt::Write> AttrWriter<'w, W> {
    pub(super) fn new(w: &'w mut W, lead: Option<char>, sep: char) -> Self {
        Self {
            w,
            lead,
            sep,
            first: true,
        }
    }

    pub(super) fn display(&mut self, name: &str, value: impl fmt::Display) -> fmt::Result {
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

    pub(super) fn bytes(&mut self, name: &str, value: &[u8], keep: fn(u8) -> bool) -> fmt::Result {
        self.display(name, Encoded(value, keep))
    }

    pub(super) fn text(
        &mut self,
        name: &str,
        value: Option<&str>,
        keep: fn(u8) -> bool,
    ) -> fmt::Result {
        match value {
            Some(v) => self.bytes(name, v.as_bytes(), keep),
            None => Ok(()),
        }
    }
}
