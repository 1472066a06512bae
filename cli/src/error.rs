//! The CLI's error: what failed, whether it is a usage error (exit 2) or an operation that
//! failed (exit 1), printed as its message chain, never as a `Debug` dump.

use std::fmt;

/// Exit status: the operation failed (device, authentication, not found, I/O).
pub(crate) const EXIT_FAILED: u8 = 1;
/// Exit status: the command line or its input is wrong (bad URI, algorithm, subject, file).
pub(crate) const EXIT_USAGE: u8 = 2;

/// Boxed cause.
pub(crate) type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A command's failure.
#[derive(Debug)]
pub(crate) struct CliError {
    usage: bool,
    /// Whether to print the causes under the message (hardkey's errors already say theirs).
    chain: bool,
    cause: Cause,
    /// The library's classification, when the failure came from hardkey's libraries.
    kind: Option<hardkey_api::ErrorKind>,
}

/// The CLI's result.
pub(crate) type CliResult<T = ()> = Result<T, CliError>;

impl CliError {
    /// A usage error (exit 2): the user must change the command line or its input.
    pub(crate) fn usage(cause: impl Into<Cause>) -> Self {
        Self {
            usage: true,
            chain: true,
            cause: cause.into(),
            kind: None,
        }
    }

    /// An operation that failed (exit 1).
    pub(crate) fn failed(cause: impl Into<Cause>) -> Self {
        Self {
            usage: false,
            chain: true,
            cause: cause.into(),
            kind: None,
        }
    }

    /// The process exit status for this error.
    pub(crate) fn exit_code(&self) -> u8 {
        if self.usage { EXIT_USAGE } else { EXIT_FAILED }
    }

    /// The error as the JSON document `--json` prints on stdout: the message, the exit
    /// status, and the library's error kind (`not_found`, `device_unavailable`...) with
    /// whether retrying may help, when the failure came from hardkey's libraries.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        // A usage error is by definition input the user must fix.
        let kind = self
            .kind
            .or_else(|| {
                self.cause
                    .downcast_ref::<hardkey_api::Error>()
                    .map(hardkey_api::Error::kind)
            })
            .or(self.usage.then_some(hardkey_api::ErrorKind::InvalidInput))
            // Not a library error (a file that cannot be written, say): the operation failed.
            .unwrap_or(hardkey_api::ErrorKind::Backend);
        let retryable = kind.is_retryable();
        serde_json::json!({
            "error": {
                "message": self.to_string(),
                "usage": self.usage,
                "exit_code": self.exit_code(),
                "kind": snake_case(&format!("{kind:?}")),
                "retryable": retryable,
            }
        })
    }

    /// Whether this is a usage error.
    #[cfg(test)]
    pub(crate) fn is_usage(&self) -> bool {
        self.usage
    }
}

/// Errors from hardkey's libraries: input the user can fix is a usage error, the rest an
/// operation failure.
impl From<hardkey_api::Error> for CliError {
    fn from(e: hardkey_api::Error) -> Self {
        use hardkey_api::ErrorKind;
        let usage = matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::Unsupported);
        if e.kind() == ErrorKind::DeviceUnavailable {
            // The library's pool would reconnect; this process is about to exit.
            return Self {
                usage,
                chain: false,
                cause: Box::new(Message(format!(
                    "{e}; check that the device is running and reachable, then run the \
                     command again"
                ))),
                kind: Some(e.kind()),
            };
        }
        let kind = Some(e.kind());
        Self {
            usage,
            chain: false,
            cause: Box::new(e),
            kind,
        }
    }
}

impl From<hardkey_api::UriError> for CliError {
    fn from(e: hardkey_api::UriError) -> Self {
        Self::usage(e)
    }
}

impl fmt::Display for CliError {
    /// The message, then every cause the message does not already contain.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.cause.to_string();
        let mut source = self.cause.source().filter(|_| self.chain);
        while let Some(cause) = source {
            let part = cause.to_string();
            if !part.is_empty() && !text.contains(&part) {
                text.push_str(": ");
                text.push_str(&part);
            }
            source = cause.source();
        }
        f.write_str(&text)
    }
}

/// `DeviceUnavailable` -> `device_unavailable`.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A plain message as an error cause.
#[derive(Debug)]
pub(crate) struct Message(pub(crate) String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

/// A usage error with a message.
pub(crate) fn usage(message: impl Into<String>) -> CliError {
    CliError::usage(Message(message.into()))
}

/// An operation failure with a message.
pub(crate) fn failed(message: impl Into<String>) -> CliError {
    CliError::failed(Message(message.into()))
}

/// An I/O failure on `path`: a missing or unreadable input is a usage error, so is an output
/// path whose directory does not exist; other I/O errors are failures.
pub(crate) fn io(what: &str, path: &std::path::Path, e: std::io::Error) -> CliError {
    let message = Message(format!("cannot {what} {}: {e}", path.display()));
    match e.kind() {
        std::io::ErrorKind::NotFound
        | std::io::ErrorKind::PermissionDenied
        | std::io::ErrorKind::AlreadyExists
        | std::io::ErrorKind::IsADirectory
        | std::io::ErrorKind::InvalidData => CliError::usage(message),
        _ => CliError::failed(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(Message);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("outer")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn chain_is_printed_once() {
        let e = CliError::failed(Outer(Message("inner".into())));
        assert_eq!(e.to_string(), "outer: inner");
        assert_eq!(e.exit_code(), EXIT_FAILED);
    }

    #[test]
    fn library_input_errors_are_usage_errors() {
        let e: CliError = "p257"
            .parse::<hardkey_api::KeyAlgorithm>()
            .unwrap_err()
            .into();
        assert!(e.is_usage());
        assert!(e.to_string().contains("p256, p384"), "{e}");
    }
}
