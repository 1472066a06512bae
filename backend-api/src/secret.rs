//! Where a secret (a PKCS#11 PIN, a TPM auth value) comes from: a file (`pin-source=file:...`),
//! an environment variable, or the caller. Secrets are held zeroized and never on a command line.

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, InvalidInput, Operation, Result};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// The environment variable hardkey reads a user PIN from when no other source is given.
pub const PIN_ENV: &str = "HARDKEY_PIN";

/// A source of a secret (PIN, auth value).
#[derive(Clone)]
#[non_exhaustive]
pub enum SecretSource {
    /// The first line of a file (RFC 7512 `pin-source=file:/path`).
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// A secret the caller already holds.
    Value(SecretString),
    /// No secret: a token with a protected authentication path (PIN pad), a TPM object with
    /// an empty auth value.
    None,
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "SecretSource::File({})", p.display()),
            Self::Env(v) => write!(f, "SecretSource::Env({v})"),
            Self::Value(_) => f.write_str("SecretSource::Value([redacted])"),
            Self::None => f.write_str("SecretSource::None"),
        }
    }
}

impl SecretSource {
    /// Parses an RFC 7512 `pin-source` value: `file:/path`, a plain path, or hardkey's
    /// `env:NAME`.
    pub fn parse(value: &str) -> Result<Self> {
        if let Some(name) = value.strip_prefix("env:") {
            return Ok(Self::Env(name.to_owned()));
        }
        let path = value
            .strip_prefix("file://")
            .or_else(|| value.strip_prefix("file:"));
        match path.unwrap_or(value) {
            "" => Err(InvalidInput::Config {
                what: "pin-source",
                reason: "empty; use file:/path/to/pin or env:VARIABLE",
            }
            .into()),
            p if p.starts_with('|') => Err(InvalidInput::Config {
                what: "pin-source",
                reason: "running a program for the PIN is not supported; use a file or env:VARIABLE",
            }
            .into()),
            p => Ok(Self::File(PathBuf::from(p))),
        }
    }

    /// Reads the secret; `None` for [`SecretSource::None`]. Only the first line of a file
    /// counts (its newline is not part of the secret); an empty secret is refused. Errors
    /// name `device` and the source, never the secret.
    pub fn load(&self, device: &str) -> Result<Option<Zeroizing<String>>> {
        let missing = |what: String| Error::AuthFailed {
            target: device.to_owned(),
            source: format!("no secret: {what}").into(),
        };
        let text: Zeroizing<String> = match self {
            Self::None => return Ok(None),
            Self::Value(pin) => Zeroizing::new(pin.expose_secret().to_owned()),
            Self::Env(name) => Zeroizing::new(
                std::env::var(name)
                    // The name is not shown: `pin-source=env:...` may hold a PIN by mistake.
                    .map_err(|_| {
                        missing("the environment variable it names is not set".to_owned())
                    })?,
            ),
            Self::File(path) => {
                // The path is never shown: it may be the secret itself, written where the
                // path of its file belongs (`pin-source=1234`, `--pin-file 1234`).
                let bytes =
                    Zeroizing::new(std::fs::read(path).map_err(|e| {
                        Error::backend(device, Operation::Connect, SecretFileError(e))
                    })?);
                Zeroizing::new(
                    std::str::from_utf8(&bytes)
                        .map_err(|_| {
                            missing(format!("secret file {} is not text", path.display()))
                        })?
                        .to_owned(),
                )
            }
        };
        let secret = text.lines().next().unwrap_or_default();
        if secret.is_empty() {
            return Err(missing(format!("{self:?} is empty")));
        }
        Ok(Some(Zeroizing::new(secret.to_owned())))
    }
}

/// A secret file that cannot be read; its path is left out on purpose.
#[derive(Debug)]
struct SecretFileError(std::io::Error);

impl fmt::Display for SecretFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot read the secret file (its path is not shown, in case it is the secret \
             itself typed in the wrong place): {}",
            self.0
        )
    }
}

impl std::error::Error for SecretFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc7512_pin_sources() {
        assert!(
            matches!(SecretSource::parse("file:/etc/token").unwrap(), SecretSource::File(p) if p == std::path::Path::new("/etc/token"))
        );
        assert!(matches!(
            SecretSource::parse("/run/pin").unwrap(),
            SecretSource::File(_)
        ));
        assert!(
            matches!(SecretSource::parse("env:MY_PIN").unwrap(), SecretSource::Env(v) if v == "MY_PIN")
        );
        assert!(SecretSource::parse("|/usr/bin/askpin").is_err());
        assert!(SecretSource::parse("").is_err());
    }

    #[test]
    fn reads_the_first_line_and_never_shows_the_pin() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pin");
        std::fs::write(&file, "1234\n").unwrap();
        let pin = SecretSource::File(file).load("t").unwrap().unwrap();
        assert_eq!(pin.as_str(), "1234");
        let value = SecretSource::Value(SecretString::from("secret-pin"));
        assert!(!format!("{value:?}").contains("secret-pin"));
    }
}
