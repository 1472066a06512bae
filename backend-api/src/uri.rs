//! Key URIs (placeholder interface; the full RFC 7512 parser lands in the next commit).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A key URI.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyUri {
    /// `file:` a PEM PKCS#8 software key.
    File(FileUri),
}

/// `file:` URI.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileUri {
    /// Path of the PEM file.
    pub path: PathBuf,
}

impl FileUri {
    /// A `file:` URI for a path.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

/// A malformed URI.
#[derive(Debug, thiserror::Error)]
#[error("invalid key URI at byte {position}: {expected}")]
pub struct UriError {
    /// Byte offset.
    pub position: usize,
    /// What was expected.
    pub expected: &'static str,
}

impl FromStr for KeyUri {
    type Err = UriError;
    fn from_str(s: &str) -> Result<Self, UriError> {
        match s.strip_prefix("file:") {
            Some(p) => Ok(Self::File(FileUri::new(p))),
            None => Err(UriError {
                position: 0,
                expected: "file:",
            }),
        }
    }
}

impl fmt::Display for KeyUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(u) => write!(f, "file:{}", u.path.display()),
        }
    }
}
