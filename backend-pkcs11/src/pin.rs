//! PINs: a [`SecretSource`] turned into a cryptoki `AuthPin` at the call.

use cryptoki::types::AuthPin;
use hardkey_api::Result;
pub use hardkey_api::secret::{PIN_ENV, SecretSource as PinSource};
use secrecy::SecretString;

/// Reads the PIN of `source` for `device`.
pub(crate) fn load(source: &PinSource, device: &str) -> Result<Option<AuthPin>> {
    Ok(source
        .load(device)?
        .map(|pin| AuthPin::from(SecretString::from(pin.as_str()))))
}
