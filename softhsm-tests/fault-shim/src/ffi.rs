//! The module's C interface: `C_GetFunctionList` hands out the real module's function list
//! with a few entries replaced.
#![allow(
    unsafe_code,
    reason = "a PKCS#11 module is an FFI boundary; every block is commented"
)]

use std::sync::OnceLock;

use cryptoki_sys::{
    CK_ATTRIBUTE_PTR, CK_FLAGS, CK_FUNCTION_LIST, CK_FUNCTION_LIST_PTR_PTR, CK_MECHANISM_PTR,
    CK_NOTIFY, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE_PTR, CK_RV, CK_SESSION_HANDLE,
    CK_SESSION_HANDLE_PTR, CK_SLOT_ID, CK_TOKEN_INFO_PTR, CK_ULONG, CK_ULONG_PTR, CK_USER_TYPE,
    CK_UTF8CHAR_PTR, CK_VOID_PTR, CKA_ALLOWED_MECHANISMS, CKF_SO_PIN_FINAL_TRY, CKF_SO_PIN_LOCKED,
    CKF_USER_PIN_FINAL_TRY, CKF_USER_PIN_LOCKED, CKR_ARGUMENTS_BAD, CKR_ATTRIBUTE_TYPE_INVALID,
    CKR_GENERAL_ERROR, CKR_OK,
};

use crate::control;

const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The real module and our copy of its function list.
struct Shim {
    _library: libloading::Library,
    real: CK_FUNCTION_LIST,
    ours: CK_FUNCTION_LIST,
}

// SAFETY: the function lists are tables of function pointers and a version, never mutated
// after construction; PKCS#11 modules initialized with OS locking are callable from any thread.
unsafe impl Send for Shim {}
// SAFETY: as above: shared read-only data.
unsafe impl Sync for Shim {}

static SHIM: OnceLock<Option<Shim>> = OnceLock::new();

fn shim() -> Option<&'static Shim> {
    SHIM.get_or_init(load).as_ref()
}

fn load() -> Option<Shim> {
    let path = std::env::var_os("HARDKEY_SHIM_MODULE").unwrap_or_else(|| DEFAULT_MODULE.into());
    // SAFETY: loading a PKCS#11 module runs its initializers; the module is the one the test
    // named (SoftHSM), which has no unsound global constructors.
    let library = unsafe { libloading::Library::new(path) }.ok()?;
    // SAFETY: `C_GetFunctionList` has this signature in every PKCS#11 module.
    let get: libloading::Symbol<'_, unsafe extern "C" fn(CK_FUNCTION_LIST_PTR_PTR) -> CK_RV> =
        unsafe { library.get(b"C_GetFunctionList\0") }.ok()?;
    let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    // SAFETY: `list` is a valid out-pointer; the module fills it with a pointer to its static
    // function list.
    if unsafe { get(&mut list) } != CKR_OK || list.is_null() {
        return None;
    }
    // SAFETY: non-null, points to the module's function list, which lives as long as the
    // library (kept in the Shim).
    let real = unsafe { *list };
    let mut ours = real;
    ours.C_GetFunctionList = Some(C_GetFunctionList);
    ours.C_GetTokenInfo = Some(get_token_info);
    ours.C_Login = Some(login);
    ours.C_OpenSession = Some(open_session);
    ours.C_Sign = Some(sign);
    ours.C_InitToken = Some(init_token);
    ours.C_CloseSession = Some(close_session);
    ours.C_DecryptInit = Some(decrypt_init);
    ours.C_Decrypt = Some(decrypt);
    ours.C_GenerateKeyPair = Some(generate_key_pair);
    ours.C_CreateObject = Some(create_object);
    Some(Shim {
        _library: library,
        real,
        ours,
    })
}

/// The module's entry point.
///
/// # Safety
///
/// `list` must be a valid pointer to write a function-list pointer to (PKCS#11 contract).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetFunctionList(list: CK_FUNCTION_LIST_PTR_PTR) -> CK_RV {
    let Some(shim) = shim() else {
        return CKR_GENERAL_ERROR;
    };
    if list.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    // SAFETY: `list` is non-null and the caller's out-pointer; `ours` is 'static (in SHIM).
    unsafe { *list = std::ptr::from_ref(&shim.ours).cast_mut() };
    CKR_OK
}

unsafe extern "C" fn get_token_info(slot: CK_SLOT_ID, info: CK_TOKEN_INFO_PTR) -> CK_RV {
    let Some(real) = shim().and_then(|s| s.real.C_GetTokenInfo) else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: forwarding the caller's arguments unchanged to the real module.
    let rv = unsafe { real(slot, info) };
    if rv == CKR_OK && !info.is_null() {
        let c = control::read();
        let mut add: CK_FLAGS = 0;
        if c.final_try {
            add |= CKF_USER_PIN_FINAL_TRY;
        }
        if c.locked {
            add |= CKF_USER_PIN_LOCKED;
        }
        if c.so_final_try {
            add |= CKF_SO_PIN_FINAL_TRY;
        }
        if c.so_locked {
            add |= CKF_SO_PIN_LOCKED;
        }
        // SAFETY: `info` is non-null and was just filled by the real module.
        unsafe { (*info).flags |= add };
    }
    rv
}

unsafe extern "C" fn login(
    session: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: CK_UTF8CHAR_PTR,
    len: CK_ULONG,
) -> CK_RV {
    control::log("C_Login");
    if let Some(rv) = control::read().login_rv {
        return rv;
    }
    let Some(real) = shim().and_then(|s| s.real.C_Login) else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: forwarding the caller's arguments unchanged to the real module.
    unsafe { real(session, user, pin, len) }
}

unsafe extern "C" fn open_session(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    application: CK_VOID_PTR,
    notify: CK_NOTIFY,
    session: CK_SESSION_HANDLE_PTR,
) -> CK_RV {
    control::log("C_OpenSession");
    let Some(real) = shim().and_then(|s| s.real.C_OpenSession) else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: forwarding the caller's arguments unchanged to the real module.
    unsafe { real(slot, flags, application, notify, session) }
}

unsafe extern "C" fn sign(
    session: CK_SESSION_HANDLE,
    data: CK_UTF8CHAR_PTR,
    len: CK_ULONG,
    signature: CK_UTF8CHAR_PTR,
    signature_len: CK_ULONG_PTR,
) -> CK_RV {
    let c = control::read();
    if !c.sign_delay.is_zero() && !signature.is_null() {
        std::thread::sleep(c.sign_delay);
    }
    if let Some(rv) = control::take_sign_failure(&c) {
        return rv;
    }
    if !signature.is_null() {
        match control::storm(&c) {
            Some(control::StormFault::Fail(rv)) => return rv,
            Some(control::StormFault::Slow(d)) => std::thread::sleep(d),
            None => {}
        }
    }
    let Some(real) = shim().and_then(|s| s.real.C_Sign) else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: forwarding the caller's arguments unchanged to the real module.
    unsafe { real(session, data, len, signature, signature_len) }
}

unsafe extern "C" fn init_token(
    slot: CK_SLOT_ID,
    pin: CK_UTF8CHAR_PTR,
    len: CK_ULONG,
    label: CK_UTF8CHAR_PTR,
) -> CK_RV {
    control::log("C_InitToken");
    let Some(real) = shim().and_then(|s| s.real.C_InitToken) else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: forwarding the caller's arguments unchanged to the real module.
    unsafe { real(slot, pin, len, label) }
}

unsafe extern "C" fn close_session(session: CK_SESSION_HANDLE) -> CK_RV {
    control::log("C_CloseSession");
    let Some(real) = shim().and_then(|s| s.real.C_CloseSession) else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: forwarding the caller's arguments unchanged to the real module.
    unsafe { real(session) }
}

unsafe extern "C" fn decrypt_init(
    session: CK_SESSION_HANDLE,
    mechanism: CK_MECHANISM_PTR,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    let Some(real) = shim().and_then(|s| s.real.C_DecryptInit) else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: `mechanism` is the caller's mechanism pointer, read only when non-null;
    // forwarding the arguments unchanged to the real module.
    let kind = if mechanism.is_null() {
        None
    } else {
        Some(unsafe { (*mechanism).mechanism })
    };
    // SAFETY: as above.
    let rv = unsafe { real(session, mechanism, key) };
    control::log(&format!("C_DecryptInit mechanism={kind:?} rv={rv:#x}"));
    rv
}

unsafe extern "C" fn decrypt(
    session: CK_SESSION_HANDLE,
    data: CK_UTF8CHAR_PTR,
    len: CK_ULONG,
    out: CK_UTF8CHAR_PTR,
    out_len: CK_ULONG_PTR,
) -> CK_RV {
    if !out.is_null() {
        match control::storm(&control::read()) {
            Some(control::StormFault::Fail(rv)) => return rv,
            Some(control::StormFault::Slow(d)) => std::thread::sleep(d),
            None => {}
        }
    }
    let Some(real) = shim().and_then(|s| s.real.C_Decrypt) else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: forwarding the caller's arguments unchanged to the real module.
    let rv = unsafe { real(session, data, len, out, out_len) };
    let query = if out.is_null() { " (length query)" } else { "" };
    control::log(&format!("C_Decrypt{query} rv={rv:#x}"));
    rv
}

/// Whether `template` (of `count` attributes) holds CKA_ALLOWED_MECHANISMS.
///
/// # Safety
///
/// `template` must point to `count` attributes, or be null.
unsafe fn restricts_mechanisms(template: CK_ATTRIBUTE_PTR, count: CK_ULONG) -> bool {
    if template.is_null() {
        return false;
    }
    let Ok(count) = usize::try_from(count) else {
        return false;
    };
    // SAFETY: the caller's template of `count` attributes (PKCS#11 contract), non-null.
    let attributes = unsafe { std::slice::from_raw_parts(template, count) };
    attributes.iter().any(|a| a.type_ == CKA_ALLOWED_MECHANISMS)
}

#[allow(clippy::too_many_arguments, reason = "the PKCS#11 signature")]
unsafe extern "C" fn generate_key_pair(
    session: CK_SESSION_HANDLE,
    mechanism: CK_MECHANISM_PTR,
    public: CK_ATTRIBUTE_PTR,
    public_count: CK_ULONG,
    private: CK_ATTRIBUTE_PTR,
    private_count: CK_ULONG,
    public_handle: CK_OBJECT_HANDLE_PTR,
    private_handle: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    // SAFETY: the caller's templates with their counts.
    let restricted = unsafe {
        restricts_mechanisms(public, public_count) || restricts_mechanisms(private, private_count)
    };
    if restricted && control::read().reject_allowed_mechanisms {
        control::log("C_GenerateKeyPair refused CKA_ALLOWED_MECHANISMS");
        return CKR_ATTRIBUTE_TYPE_INVALID;
    }
    let Some(real) = shim().and_then(|s| s.real.C_GenerateKeyPair) else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: forwarding the caller's arguments unchanged to the real module.
    unsafe {
        real(
            session,
            mechanism,
            public,
            public_count,
            private,
            private_count,
            public_handle,
            private_handle,
        )
    }
}

unsafe extern "C" fn create_object(
    session: CK_SESSION_HANDLE,
    template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
    handle: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    // SAFETY: the caller's template with its count.
    if unsafe { restricts_mechanisms(template, count) } && control::read().reject_allowed_mechanisms
    {
        control::log("C_CreateObject refused CKA_ALLOWED_MECHANISMS");
        return CKR_ATTRIBUTE_TYPE_INVALID;
    }
    let Some(real) = shim().and_then(|s| s.real.C_CreateObject) else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: forwarding the caller's arguments unchanged to the real module.
    unsafe { real(session, template, count, handle) }
}
