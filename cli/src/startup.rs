//! What `hardkey` does first, while it is still one thread.
//!
//! - The TPM software stack logs every error it sees to stderr (`ERROR:tcti:...`) before
//!   hardkey explains it in one line. Its level comes only from the `TSS2_LOG` environment
//!   variable, which the library reads the first time it logs; when `TSS2_LOG` is unset,
//!   hardkey sets it to `all+none` for itself (set `TSS2_LOG` yourself, e.g.
//!   `TSS2_LOG=all+error`, to see the TSS's messages). Levels above `info` are lowered to
//!   `info`: the TSS's debug output dumps the HMAC keys of sessions, which end with the auth
//!   value in the clear, and the session keys that decrypt parameter encryption. Earlier
//!   versions executed themselves again with the variable set, which handed the whole
//!   environment, secrets included, to a new program image; hardkey now starts no process.
//! - Core dumps and ptrace attach are turned off (`PR_SET_DUMPABLE` 0 and `RLIMIT_CORE` 0, as
//!   neverbleed does for its key process): a hardkey process holds PINs and auth values, and
//!   `hardkey serve` holds them for as long as it runs.
//!
//! This module holds the crate's only unsafe code: one call to `std::env::set_var`.
#![allow(
    unsafe_code,
    reason = "setting TSS2_LOG in-process: the TSS reads no other configuration"
)]

/// Sets `TSS2_LOG=all+none` unless the user set `TSS2_LOG`, and lowers any level above
/// `info` the user set ([`safe_tss_log`]). Call first thing in `main`; returns a note for
/// the user when a level was lowered.
pub(crate) fn quiet_tss() -> Option<&'static str> {
    let (value, note) = match std::env::var("TSS2_LOG") {
        Err(_) => ("all+none".to_owned(), None),
        Ok(asked) => match safe_tss_log(&asked) {
            Some(lowered) => (
                lowered,
                Some(
                    "hardkey: note: TSS2_LOG levels above info were lowered to info: the \
                     TSS's debug and trace output contains auth values and session keys",
                ),
            ),
            None => return None,
        },
    };
    // SAFETY: `set_var` is unsound only while another thread may read or write the
    // environment. This runs first in `main`, before hardkey starts any thread (the Rust
    // runtime starts none before `main`), and no library has been called yet.
    unsafe { std::env::set_var("TSS2_LOG", value) };
    note
}

/// `TSS2_LOG` (`module+level` pairs separated by commas) with every `debug` or `trace`
/// level lowered to `info`; `None` when nothing needed lowering.
fn safe_tss_log(value: &str) -> Option<String> {
    let mut lowered = false;
    let out: Vec<String> = value
        .split(',')
        .map(|pair| match pair.split_once('+') {
            Some((module, level))
                if level.eq_ignore_ascii_case("debug") || level.eq_ignore_ascii_case("trace") =>
            {
                lowered = true;
                format!("{module}+info")
            }
            _ => pair.to_owned(),
        })
        .collect();
    lowered.then(|| out.join(","))
}

/// Makes the process non-dumpable and its core size 0. Failures are ignored: both are
/// defences in depth, and a kernel that refuses them leaves hardkey no less usable.
pub(crate) fn no_dumps() {
    use nix::sys::resource::{Resource, setrlimit};
    let _ = nix::sys::prctl::set_dumpable(false);
    let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tss_debug_and_trace_are_lowered() {
        assert_eq!(safe_tss_log("all+trace").as_deref(), Some("all+info"));
        assert_eq!(
            safe_tss_log("all+error,esys+DEBUG,tcti+warning").as_deref(),
            Some("all+error,esys+info,tcti+warning")
        );
        assert_eq!(safe_tss_log("all+none"), None);
        assert_eq!(safe_tss_log("all+error,tcti+info"), None);
    }
}
