//! Where a PIN comes from: a file (`pin-source=file:...`), an environment variable, or the
//! caller. PINs are held as secrets and never on a command line.

use std::fmt;
use std::path::PathBuf;

use cryptoki::types::AuthPin;
use hardkey_api::{Error, InvalidInput, Operation, Result};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// The environment variable hardkey reads a user PIN from when no other source is given.
pub const PIN_ENV: &str = "HARDKEY_PIN";

/// A source of a PIN.
#[derive(Clone)]
#[non_exhaustive]
pub enum PinSource {
    /// The first line of a file (RFC 7512 `pin-source=file:/path`).
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// A PIN the caller already holds.
    Value(SecretString),
    /// No PIN: for tokens with a protected authentication path (PIN pad).
    None,
}

impl fmt::Debug for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "PinSource::File({})", p.display()),
            Self::Env(v) => write!(f, "PinSource::Env({v})"),
            Self::Value(_) => f.write_str("PinSource::Value([redacted])"),
            Self::None => f.write_str("PinSource::None"),
        }
    }
}

impl PinSource {
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

    /// Reads the PIN. A file's trailing newline is not part of the PIN.
    pub(crate) fn load(&self, device: &str) -> Result<Option<AuthPin>> {
        let missing = |what: String| Error::AuthFailed {
            target: device.to_owned(),
            source: format!("no PIN: {what}").into(),
        };
        let text: Zeroizing<String> = match self {
            Self::None => return Ok(None),
            Self::Value(pin) => Zeroizing::new(pin.expose_secret().to_owned()),
            Self::Env(name) => Zeroizing::new(
                std::env::var(name)
                    .map_err(|_| missing(format!("environment variable {name} is not set")))?,
            ),
            Self::File(path) => {
                let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
                    Error::backend(
                        device,
                        Operation::Connect,
                        format!("cannot read PIN file {}: {e}", path.display()),
                    )
                })?);
                Zeroizing::new(
                    std::str::from_utf8(&bytes)
                        .map_err(|_| missing(format!("PIN file {} is not text", path.display())))?
                        .to_owned(),
                )
            }
        };
        let pin = text.lines().next().unwrap_or_default();
        if pin.is_empty() {
            return Err(missing(format!("{self:?} is empty")));
        }
        Ok(Some(AuthPin::new(pin.into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc7512_pin_sources() {
        assert!(
            matches!(PinSource::parse("file:/etc/token").unwrap(), PinSource::File(p) if p == std::path::Path::new("/etc/token"))
        );
        assert!(matches!(
            PinSource::parse("/run/pin").unwrap(),
            PinSource::File(_)
        ));
        assert!(
            matches!(PinSource::parse("env:MY_PIN").unwrap(), PinSource::Env(v) if v == "MY_PIN")
        );
        assert!(PinSource::parse("|/usr/bin/askpin").is_err());
        assert!(PinSource::parse("").is_err());
    }

    #[test]
    fn reads_the_first_line_and_never_shows_the_pin() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pin");
        std::fs::write(&file, "1234\n").unwrap();
        let pin = PinSource::File(file).load("t").unwrap().unwrap();
        assert_eq!(pin.expose_secret(), "1234");
        let value = PinSource::Value(SecretString::from("secret-pin"));
        assert!(!format!("{value:?}").contains("secret-pin"));
    }
}
