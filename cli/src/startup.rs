//! What `hardkey` does first, while it is still one thread.
//!
//! - The TPM software stack logs every error it sees to stderr (`ERROR:tcti:...`) before
//!   hardkey explains it in one line. Its level comes only from the `TSS2_LOG` environment
//!   variable, which the library reads the first time it logs; when `TSS2_LOG` is unset,
//!   hardkey sets it to `all+none` for itself (set `TSS2_LOG` yourself, e.g.
//!   `TSS2_LOG=all+error`, to see the TSS's messages). Earlier versions executed themselves
//!   again with the variable set, which handed the whole environment, secrets included, to a
//!   new program image; hardkey now starts no process at all.
//! - Core dumps and ptrace attach are turned off (`PR_SET_DUMPABLE` 0 and `RLIMIT_CORE` 0, as
//!   neverbleed does for its key process): a hardkey process holds PINs and auth values, and
//!   `hardkey serve` holds them for as long as it runs.
//!
//! This module holds the crate's only unsafe code: one call to `std::env::set_var`.
#![allow(
    unsafe_code,
    reason = "setting TSS2_LOG in-process: the TSS reads no other configuration"
)]

/// Sets `TSS2_LOG=all+none` unless the user set `TSS2_LOG`. Call first thing in `main`.
pub(crate) fn quiet_tss() {
    if std::env::var_os("TSS2_LOG").is_some() {
        return;
    }
    // SAFETY: `set_var` is unsound only while another thread may read or write the
    // environment. This runs first in `main`, before hardkey starts any thread (the Rust
    // runtime starts none before `main`), and no library has been called yet.
    unsafe { std::env::set_var("TSS2_LOG", "all+none") };
}

/// Makes the process non-dumpable and its core size 0. Failures are ignored: both are
/// defences in depth, and a kernel that refuses them leaves hardkey no less usable.
pub(crate) fn no_dumps() {
    use nix::sys::resource::{Resource, setrlimit};
    let _ = nix::sys::prctl::set_dumpable(false);
    let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
}
