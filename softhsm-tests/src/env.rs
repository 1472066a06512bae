//! The one place this workspace's tests change the process environment.

use std::path::Path;

/// Points SoftHSM at `conf`. SoftHSM reads `SOFTHSM2_CONF` only from the environment, when the
/// module is initialized, so a fixture with its own configuration has to set it.
///
/// # Panics
///
/// If the process already has other threads: changing the environment is only sound while
/// nothing can read it concurrently. Call it first thing in a `harness = false` test's `main`.
pub(crate) fn set_softhsm_conf(conf: &Path) {
    set_before_threads("SOFTHSM2_CONF", conf.as_os_str());
}

/// Sets an environment variable the PKCS#11 modules under test read at `C_Initialize`
/// (`SOFTHSM2_CONF`, `P11_KIT_SERVER_ADDRESS`).
///
/// # Panics
///
/// If the process already has other threads (see [`set_softhsm_conf`]).
pub(crate) fn set_before_threads(name: &str, value: &std::ffi::OsStr) {
    let threads = std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
    assert_eq!(
        threads, 1,
        "{name} must be set before any other thread starts (found {threads} threads)"
    );
    #[allow(unsafe_code)]
    // SAFETY: `set_var` is unsound only if another thread reads or writes the environment at
    // the same time; we just checked that this process has a single thread, and this function
    // is called from `main` before the test harness spawns any.
    unsafe {
        std::env::set_var(name, value);
    }
}
