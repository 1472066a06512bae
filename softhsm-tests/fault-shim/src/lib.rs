//! A PKCS#11 module for tests: it forwards every call to a real module (SoftHSM by default) and
//! injects faults SoftHSM cannot produce on its own: a user PIN on its final try or locked,
//! forced return codes from `C_Login` and `C_Sign`, added latency. It records the calls that
//! matter (logins, sessions, token initialization, decryption with its return code) so tests
//! can count them and compare call sequences.
//!
//! Configured through two environment variables, read when first loaded:
//! - `HARDKEY_SHIM_MODULE`: the real module (default: SoftHSM's usual path);
//! - `HARDKEY_SHIM_DIR`: a directory holding `control` (read on every intercepted call) and
//!   `calls.log` (appended to).
//!
//! `control` holds `key=value` lines: `generation=N` (bump it to re-arm counters),
//! `token_flags=final_try|locked|so_final_try|so_locked|none`, `login_rv=N` (return code for
//! every `C_Login`),
//! `sign_rv=N` with `sign_times=K` (the next K `C_Sign` calls fail with N),
//! `sign_delay_ms=N`, `reject_allowed_mechanisms=1` (templates holding CKA_ALLOWED_MECHANISMS
//! are refused with CKR_ATTRIBUTE_TYPE_INVALID, as by a token that does not know it),
//! `storm_percent=N` with `storm_seed=S` (N% of `C_Sign` and `C_Decrypt` calls, chosen by a
//! generator seeded with S, fail with CKR_DEVICE_ERROR or CKR_SESSION_HANDLE_INVALID or are
//! slowed by 20 to 100 ms, a third each).

mod control;
mod ffi;

pub use ffi::C_GetFunctionList;
