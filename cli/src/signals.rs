//! SIGINT, SIGTERM and SIGHUP: one handler thread for the whole process (signal-hook's
//! iterator), started the first time something needs it.
//!
//! - While an output is being written, its temporary file is registered here, and the
//!   handler removes it before the process exits (status 130), so an interrupted `--out`
//!   leaves nothing behind. (A SIGKILL cannot be caught; the temporary file then stays, named
//!   `.hardkey-*.tmp` next to the output.)
//! - A long-running command (`hardkey serve`) registers a stop channel instead: the signal
//!   then asks it to stop cleanly. It may also register a reload action, which SIGHUP then
//!   runs instead of stopping (the convention of daemons: nginx, sshd).

use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Mutex, MutexGuard, OnceLock};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::error::{CliResult, failed};

/// Exit status after an interrupt (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: i32 = 130;

/// What SIGHUP runs instead of stopping; false if it could not (its receiver is gone).
type Reload = Box<dyn Fn() -> bool + Send>;

#[derive(Default)]
struct State {
    temps: Vec<PathBuf>,
    stop: Option<Sender<()>>,
    reload: Option<Reload>,
}

fn state() -> MutexGuard<'static, State> {
    static STATE: Mutex<State> = Mutex::new(State {
        temps: Vec::new(),
        stop: None,
        reload: None,
    });
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

fn install() -> CliResult<()> {
    // The outcome of the one installation, for every caller (io::Error is not Clone).
    static INSTALLED: OnceLock<Result<(), std::sync::Arc<std::io::Error>>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
            std::thread::Builder::new()
                .name("hardkey-signals".into())
                .spawn(move || {
                    for signal in signals.forever() {
                        on_signal(signal);
                    }
                })?;
            Ok(())
        })
        .clone()
        .map_err(|e| failed(format!("cannot handle SIGINT/SIGTERM/SIGHUP: {e}")))
}

fn on_signal(signal: i32) {
    let mut s = state();
    if signal == SIGHUP {
        if let Some(reload) = &s.reload {
            if reload() {
                return;
            }
        }
    }
    if let Some(stop) = &s.stop {
        if stop.send(()).is_ok() {
            return;
        }
    }
    for path in s.temps.drain(..) {
        let _ = std::fs::remove_file(path);
    }
    drop(s);
    std::process::exit(EXIT_INTERRUPTED);
}

/// A temporary file that the signal handler removes if the process is interrupted before the
/// guard is dropped (by then the file was renamed into place, or removed).
pub(crate) struct TempGuard(PathBuf);

impl TempGuard {
    /// Registers `path`.
    pub(crate) fn register(path: &Path) -> CliResult<Self> {
        install()?;
        state().temps.push(path.to_path_buf());
        Ok(Self(path.to_path_buf()))
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        state().temps.retain(|p| p != &self.0);
    }
}

/// Sends on `stop` at the next SIGINT, SIGTERM or SIGHUP (unless a reload action takes
/// SIGHUP), instead of exiting.
pub(crate) fn stop_on_signal(stop: Sender<()>) -> CliResult<()> {
    install()?;
    state().stop = Some(stop);
    Ok(())
}

/// Runs `reload` at each SIGHUP instead of stopping, while it returns true.
pub(crate) fn reload_on_hangup(reload: impl Fn() -> bool + Send + 'static) -> CliResult<()> {
    install()?;
    state().reload = Some(Box::new(reload));
    Ok(())
}

/// SIGHUP stops again.
pub(crate) fn no_reload_on_hangup() {
    state().reload = None;
}
