//! Where the CLI's secrets come from: `--NAME-file FILE` (`-` for stdin), an environment
//! variable, or a no-echo prompt on a terminal. Never argv. Values are held as
//! `SecretString` (zeroized on drop) and handed to the libraries as a [`SecretSource`].

use std::io::{BufRead, IsTerminal};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use hardkey_api::SecretSource;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::error::{CliResult, failed, usage};

/// One kind of secret the CLI asks for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Secret {
    /// How messages and prompts name it (`user PIN`).
    pub(crate) name: &'static str,
    /// The option that names a file holding it (`--pin-file`).
    pub(crate) flag: &'static str,
    /// The environment variable holding it (`HARDKEY_PIN`).
    pub(crate) env: &'static str,
}

/// The PKCS#11 user PIN.
pub(crate) const USER_PIN: Secret = Secret {
    name: "user PIN",
    flag: "--pin-file",
    env: "HARDKEY_PIN",
};
/// The PKCS#11 Security Officer PIN.
pub(crate) const SO_PIN: Secret = Secret {
    name: "SO PIN",
    flag: "--so-pin-file",
    env: "HARDKEY_SO_PIN",
};
/// A new PIN (init-pin, change-pin, token init).
pub(crate) const NEW_PIN: Secret = Secret {
    name: "new PIN",
    flag: "--new-pin-file",
    env: "HARDKEY_NEW_PIN",
};
/// The auth value of a TPM key.
pub(crate) const KEY_AUTH: Secret = Secret {
    name: "TPM key auth value",
    flag: "--key-auth-file",
    env: "HARDKEY_KEY_AUTH",
};
/// The TPM owner hierarchy auth.
pub(crate) const OWNER_AUTH: Secret = Secret {
    name: "TPM owner auth",
    flag: "--owner-auth-file",
    env: "HARDKEY_OWNER_AUTH",
};
/// The TPM endorsement hierarchy auth.
pub(crate) const ENDORSEMENT_AUTH: Secret = Secret {
    name: "TPM endorsement auth",
    flag: "--endorsement-auth-file",
    env: "HARDKEY_ENDORSEMENT_AUTH",
};
/// The TPM lockout hierarchy auth.
pub(crate) const LOCKOUT_AUTH: Secret = Secret {
    name: "TPM lockout auth",
    flag: "--lockout-auth-file",
    env: "HARDKEY_LOCKOUT_AUTH",
};
/// A new TPM hierarchy auth (change-auth).
pub(crate) const NEW_AUTH: Secret = Secret {
    name: "new auth value",
    flag: "--new-auth-file",
    env: "HARDKEY_NEW_AUTH",
};
/// The password of sealed data.
pub(crate) const SEAL_AUTH: Secret = Secret {
    name: "sealing password",
    flag: "--auth-file",
    env: "HARDKEY_SEAL_AUTH",
};

/// What to do when no file and no environment variable gives the secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Missing {
    /// The secret is empty (TPM auth values that are usually unset).
    Empty,
    /// Ask on the terminal; without a terminal, a usage error naming the options.
    Prompt,
    /// Ask twice on the terminal (a new secret); without a terminal, a usage error.
    PromptNew,
}

static STDIN_TAKEN: AtomicBool = AtomicBool::new(false);

/// Resolves `secret` from `file` (`-`: first line of stdin), else its environment variable,
/// else `fallback` (a key URI's own `pin-source`), else as `missing` says.
pub(crate) fn resolve(
    secret: Secret,
    file: Option<&Path>,
    missing: Missing,
    fallback: Option<SecretSource>,
) -> CliResult<SecretSource> {
    if let Some(path) = file {
        crate::inputs::note(path);
        if path == Path::new("-") {
            return read_stdin(secret).map(SecretSource::Value);
        }
        // Read now, so a missing file is reported before the device is touched.
        return match SecretSource::File(path.to_owned()).load(secret.name) {
            Ok(Some(value)) => Ok(SecretSource::Value(SecretString::from(value.as_str()))),
            Ok(None) => Ok(SecretSource::None),
            // The path is not shown: it may be the secret itself, typed where its file
            // belongs.
            Err(e) => Err(usage(format!(
                "cannot read the {} from the file given with {} (it takes the path of a file \
                 holding the secret): {e}",
                secret.name, secret.flag
            ))),
        };
    }
    if std::env::var_os(secret.env).is_some() {
        return Ok(SecretSource::Env(secret.env.to_owned()));
    }
    if let Some(source) = fallback {
        return Ok(source);
    }
    match missing {
        Missing::Empty => Ok(SecretSource::None),
        Missing::Prompt => prompt(secret, false).map(SecretSource::Value),
        Missing::PromptNew => prompt(secret, true).map(SecretSource::Value),
    }
}

/// A secret that is empty unless a file or its environment variable gives it (TPM auth
/// values, which are usually unset).
pub(crate) fn optional(secret: Secret, file: Option<&Path>) -> CliResult<SecretSource> {
    resolve(secret, file, Missing::Empty, None)
}

/// The secret's value now (for APIs that take a `SecretString`).
pub(crate) fn value(secret: Secret, source: &SecretSource) -> CliResult<SecretString> {
    match source.load(secret.name)? {
        Some(v) => Ok(SecretString::from(v.as_str())),
        None => Err(usage(format!(
            "the {} is empty: give it with {} FILE or {}",
            secret.name, secret.flag, secret.env
        ))),
    }
}

fn read_stdin(secret: Secret) -> CliResult<SecretString> {
    if STDIN_TAKEN.swap(true, Ordering::SeqCst) {
        return Err(usage(format!(
            "only one input can come from stdin; give the {} with {} FILE instead",
            secret.name, secret.flag
        )));
    }
    let mut line = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| failed(format!("cannot read the {} from stdin: {e}", secret.name)))?;
    let value = line.trim_end_matches(['\r', '\n']);
    if value.is_empty() {
        return Err(usage(format!(
            "the {} read from stdin is empty",
            secret.name
        )));
    }
    Ok(SecretString::from(value))
}

/// Whether reading stdin for data would clash with a secret already read from it.
pub(crate) fn claim_stdin(what: &str) -> CliResult<()> {
    if STDIN_TAKEN.swap(true, Ordering::SeqCst) {
        return Err(usage(format!(
            "only one input can come from stdin, and a secret already did: read {what} from a file"
        )));
    }
    Ok(())
}

fn prompt(secret: Secret, confirm: bool) -> CliResult<SecretString> {
    if !std::io::stdin().is_terminal() {
        return Err(usage(format!(
            "no {}: give {} FILE (- for stdin) or set {}, or run on a terminal to be asked",
            secret.name, secret.flag, secret.env
        )));
    }
    let ask = |text: String| {
        rpassword::prompt_password(text)
            .map(|s| SecretString::from(Zeroizing::new(s).as_str()))
            .map_err(|e| {
                failed(format!(
                    "cannot read the {} from the terminal: {e}",
                    secret.name
                ))
            })
    };
    let first = ask(format!("{}: ", capitalized(secret.name)))?;
    if first.expose_secret().is_empty() {
        return Err(usage(format!("the {} is empty", secret.name)));
    }
    if confirm {
        let again = ask(format!("{} again: ", capitalized(secret.name)))?;
        if again.expose_secret() != first.expose_secret() {
            return Err(usage(format!("the two {}s differ", secret.name)));
        }
    }
    Ok(first)
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_before_the_device_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = resolve(USER_PIN, Some(&missing), Missing::Prompt, None).unwrap_err();
        assert!(e.to_string().contains("--pin-file"), "{e}");
        let path = dir.path().join("pin");
        std::fs::write(&path, "1234\n").unwrap();
        let source = resolve(USER_PIN, Some(&path), Missing::Prompt, None).unwrap();
        assert_eq!(value(USER_PIN, &source).unwrap().expose_secret(), "1234");
    }

    #[test]
    fn empty_is_allowed_only_where_asked() {
        // The variable names are not set in the test environment.
        let s = Secret {
            env: "HARDKEY_TEST_UNSET_VARIABLE",
            ..OWNER_AUTH
        };
        assert!(matches!(
            resolve(s, None, Missing::Empty, None).unwrap(),
            SecretSource::None
        ));
    }

    #[test]
    fn capitalizes_prompts() {
        assert_eq!(capitalized("user PIN"), "User PIN");
    }
}
