//! The crate's one unsafe call: `C_Initialize` with library parameters in the reserved pointer
//! of `CK_C_INITIALIZE_ARGS`, which cryptoki 0.12 offers only as an unsafe constructor.
//!
//! NSS softokn reads its configuration there (its own headers name the field
//! `LibraryParameters`: a NUL-terminated string such as `configdir='sql:/path' certPrefix=''
//! keyPrefix='' secmod='secmod.db'`); modules that follow the standard expect it NULL and
//! refuse anything else with `CKR_ARGUMENTS_BAD`.
#![allow(
    unsafe_code,
    reason = "the one FFI exception of this crate, see the module docs"
)]

use std::ffi::{CStr, CString, c_void};
use std::ptr::NonNull;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use hardkey_api::{InvalidInput, Result};

/// Library parameters for a module's `C_Initialize`, kept for as long as the module is loaded
/// (a module may keep the pointer, and a re-initialization passes them again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LibraryParameters(CString);

impl LibraryParameters {
    /// The parameters as a C string; one with a NUL byte inside is refused.
    pub(crate) fn new(text: &str) -> Result<Self> {
        CString::new(text).map(Self).map_err(|_| {
            InvalidInput::Config {
                what: "PKCS#11 module parameters (module-init)",
                reason: "they contain a NUL byte; give the module's parameter string as text",
            }
            .into()
        })
    }

    fn as_c_str(&self) -> &CStr {
        &self.0
    }
}

/// `C_Initialize(flags)` with `params` in the reserved pointer.
pub(crate) fn initialize_with(
    ctx: &Pkcs11,
    flags: CInitializeFlags,
    params: &LibraryParameters,
) -> cryptoki::error::Result<()> {
    let text: &CStr = params.as_c_str();
    let pointer = NonNull::from(text).cast::<c_void>();
    // SAFETY: `new_with_reserved` asks for a pointer that is valid and points to what the
    // module's `C_Initialize` expects in `pReserved`. NSS softokn reads a NUL-terminated C
    // string there, which `text` is (a `CStr`: NUL-terminated, no interior NUL). The pointer
    // is borrowed from `params`, which the caller keeps for the life of the loaded module
    // (`Module::params`), so it stays valid during this call and after it, should the module
    // keep it. Nothing writes through it: softokn treats the string as read-only.
    let args = unsafe { CInitializeArgs::new_with_reserved(flags, pointer) };
    ctx.initialize(args)
}
