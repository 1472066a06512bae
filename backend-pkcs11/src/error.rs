//! PKCS#11 return values mapped to hardkey error kinds, with what to do about each.

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};
use hardkey_api::{Error, Operation};

/// A cryptoki error with the PKCS#11 function that returned it: the cause kept inside
/// [`hardkey_api::Error`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Pkcs11Error {
    error: CkError,
}

impl Pkcs11Error {
    pub(crate) fn new(error: CkError) -> Self {
        Self { error }
    }

    /// What failed, as cryptoki reported it.
    pub fn cryptoki(&self) -> &CkError {
        &self.error
    }

    /// The PKCS#11 return value (`CKR_...`), if the module returned one (not for a module that
    /// failed to load).
    pub fn rv(&self) -> Option<RvError> {
        rv_of(&self.error)
    }

    /// The PKCS#11 function that failed, if the module returned an error.
    pub fn function(&self) -> Option<Function> {
        match &self.error {
            CkError::Pkcs11(_, function) => Some(*function),
            _ => None,
        }
    }
}

impl std::fmt::Display for Pkcs11Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.error {
            CkError::Pkcs11(rv, function) => write!(f, "{function:?} returned {}", rv_name(*rv)),
            other => write!(f, "{other}"),
        }
    }
}

impl std::error::Error for Pkcs11Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// The `CKR_` name of a return value, as PKCS#11 documentation spells it.
pub(crate) fn rv_name(rv: RvError) -> String {
    // cryptoki's Debug names are CamelCase (`PinIncorrect`); print them as CKR_PIN_INCORRECT.
    let camel = format!("{rv:?}");
    let mut out = String::from("CKR_");
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The return value of a cryptoki error, if it came from the module.
pub(crate) fn rv_of(e: &CkError) -> Option<RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

/// Whether this error means the session, token or module connection is gone (the worker must
/// rebuild its session; an idempotent operation is retried once).
pub(crate) fn is_lost(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::DeviceRemoved
            | RvError::TokenNotPresent
            | RvError::DeviceError
            | RvError::CryptokiNotInitialized
            | RvError::UserNotLoggedIn
            | RvError::SlotIdInvalid
    )
}

/// Maps a cryptoki error from `function` on `device` to a hardkey error.
pub(crate) fn map(device: &str, op: Operation, error: CkError) -> Error {
    let Some(rv) = rv_of(&error) else {
        return match error {
            CkError::LibraryLoading(_) | CkError::MissingSymbol(_) => {
                Error::device_unavailable(device, Pkcs11Error::new(error))
            }
            _ => Error::backend(device, op, Pkcs11Error::new(error)),
        };
    };
    let cause = Pkcs11Error::new(error);
    match rv {
        RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange => Error::AuthFailed {
            target: device.to_owned(),
            source: Box::new(cause),
        },
        RvError::PinLocked => Error::PinLocked {
            target: device.to_owned(),
            remedy: "unlock it with the SO PIN (hardkey token init-pin) before logging in again",
            source: Some(Box::new(cause)),
        },
        RvError::PinExpired => Error::PinLocked {
            target: device.to_owned(),
            remedy: "the PIN has expired: set a new one (hardkey token change-pin)",
            source: Some(Box::new(cause)),
        },
        RvError::FunctionCanceled => Error::Cancelled {
            device: device.to_owned(),
            op,
            source: Box::new(cause),
        },
        RvError::HostMemory | RvError::DeviceMemory | RvError::SessionCount => Error::Exhausted {
            device: device.to_owned(),
            resource: match rv {
                RvError::SessionCount => "sessions",
                RvError::DeviceMemory => "device memory",
                _ => "memory",
            },
            remedy: "other applications (or this one's other pools) hold what the token can \
                     give; retry when they finish, or open the store with fewer sessions"
                .to_owned(),
            source: Box::new(cause),
        },
        // A module that cannot open its files says so only as a general or device error.
        RvError::GeneralError | RvError::DeviceError | RvError::FunctionFailed
            if hardkey_api::fs::descriptors_short() =>
        {
            hardkey_api::fs::descriptors_exhausted(device, cause)
        }
        rv if is_lost(rv) => Error::device_unavailable(device, cause),
        _ => Error::backend(device, op, cause),
    }
}

/// A mapper for `map_err` in one place.
pub(crate) fn mapper(device: &str, op: Operation) -> impl Fn(CkError) -> Error + '_ {
    move |e| map(device, op, e)
}

/// Whether `e` is the given return value from `function` (or any function when `None`).
pub(crate) fn is_rv(e: &CkError, rv: RvError, function: Option<Function>) -> bool {
    match e {
        CkError::Pkcs11(r, f) => {
            *r == rv
                && function
                    .is_none_or(|want| std::mem::discriminant(f) == std::mem::discriminant(&want))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_values_print_as_ckr_names() {
        assert_eq!(rv_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(
            rv_name(RvError::SessionHandleInvalid),
            "CKR_SESSION_HANDLE_INVALID"
        );
    }

    #[test]
    fn kinds() {
        use hardkey_api::ErrorKind;
        let kind = |rv| map("t", Operation::Sign, CkError::Pkcs11(rv, Function::Sign)).kind();
        assert_eq!(kind(RvError::PinIncorrect), ErrorKind::AuthFailed);
        assert_eq!(kind(RvError::PinLocked), ErrorKind::PinLocked);
        assert_eq!(
            kind(RvError::SessionHandleInvalid),
            ErrorKind::DeviceUnavailable
        );
        assert_eq!(kind(RvError::DeviceRemoved), ErrorKind::DeviceUnavailable);
        assert_eq!(kind(RvError::KeyFunctionNotPermitted), ErrorKind::Backend);
        let msg = map(
            "token 'web'",
            Operation::Sign,
            CkError::Pkcs11(RvError::PinLocked, Function::Login),
        )
        .to_string();
        assert!(
            msg.contains("token 'web'") && msg.contains("SO PIN"),
            "{msg}"
        );
    }
}
