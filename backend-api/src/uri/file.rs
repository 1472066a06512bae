//! `file:` URIs (RFC 8089).

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::error::{UriError, UriErrorReason, error};
use super::lex::{Attr, expect_scheme};
use super::write::{Encoded, file_char_in, file_char_out};

/// `file:` URI.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileUri {
    /// Path of the PEM file. Must not be empty.
    pub path: PathBuf,
}

pub(super) const FILE_EXPECTED: &str =
    "a path without a query or fragment: write '?' as %3F, '#' as %23, control characters as %XX";

impl FileUri {
    /// The scheme name.
    pub(super) const SCHEME: &'static str = "file";

    /// A `file:` URI for a path.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub(super) fn parse_rest(input: &str, rest: &str, offset: usize) -> Result<Self, UriError> {
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
pub(super) fn path_to_bytes(path: &Path) -> Cow<'_, [u8]> {
    use std::os::unix::ffi::OsStrExt;
    Cow::Borrowed(path.as_os_str().as_bytes())
}

#[cfg(not(unix))]
pub(super) fn path_to_bytes(path: &Path) -> Cow<'_, [u8]> {
    match path.to_string_lossy() {
        Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
        Cow::Owned(s) => Cow::Owned(s.into_bytes()),
    }
}

/// A path from percent-decoded bytes: any bytes on Unix, UTF-8 elsewhere.
#[cfg(unix)]
pub(super) fn bytes_to_path(bytes: Vec<u8>) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    Some(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

#[cfg(not(unix))]
pub(super) fn bytes_to_path(bytes: Vec<u8>) -> Option<PathBuf> {
    String::from_utf8(bytes).ok().map(PathBuf::from)
}
