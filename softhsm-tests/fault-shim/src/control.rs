//! The shim's control file and call log.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// What the test asked for.
#[derive(Clone, Debug, Default)]
pub(crate) struct Control {
    pub(crate) generation: u64,
    pub(crate) final_try: bool,
    pub(crate) locked: bool,
    pub(crate) so_final_try: bool,
    pub(crate) so_locked: bool,
    pub(crate) login_rv: Option<u64>,
    pub(crate) sign_rv: Option<u64>,
    pub(crate) sign_times: u64,
    pub(crate) sign_delay: Duration,
    pub(crate) reject_allowed_mechanisms: bool,
    /// Percent of `C_Sign` and `C_Decrypt` calls hit by a random fault (a device error, a lost
    /// session or a slow call).
    pub(crate) storm_percent: u64,
    pub(crate) storm_seed: u64,
}

/// A fault the storm picked for one call.
pub(crate) enum StormFault {
    /// Fail the call with this return code.
    Fail(u64),
    /// Forward the call after this delay.
    Slow(Duration),
}

const CKR_DEVICE_ERROR: u64 = 0x30;
const CKR_SESSION_HANDLE_INVALID: u64 = 0xb3;

struct State {
    generation: u64,
    sign_failures_left: u64,
    /// xorshift64 state of the storm, re-seeded with each generation.
    rng: u64,
}

static STATE: Mutex<State> = Mutex::new(State {
    generation: u64::MAX,
    sign_failures_left: 0,
    rng: 0,
});

impl State {
    fn rearm(&mut self, c: &Control) {
        if self.generation != c.generation {
            self.generation = c.generation;
            self.sign_failures_left = c.sign_times;
            self.rng = c.storm_seed.max(1) ^ (u64::from(std::process::id()) << 32);
        }
    }

    fn next(&mut self) -> u64 {
        let mut x = self.rng.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

fn dir() -> Option<&'static PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| std::env::var_os("HARDKEY_SHIM_DIR").map(PathBuf::from))
        .as_ref()
}

/// Reads the control file (no file: no faults).
pub(crate) fn read() -> Control {
    let mut c = Control::default();
    let Some(text) = dir().and_then(|d| std::fs::read_to_string(d.join("control")).ok()) else {
        return c;
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let number = value.trim().parse::<u64>().ok();
        match key.trim() {
            "generation" => c.generation = number.unwrap_or(0),
            "token_flags" => {
                for flag in value.split('|').map(str::trim) {
                    match flag {
                        "final_try" => c.final_try = true,
                        "locked" => c.locked = true,
                        "so_final_try" => c.so_final_try = true,
                        "so_locked" => c.so_locked = true,
                        _ => {}
                    }
                }
            }
            "login_rv" => c.login_rv = number,
            "sign_rv" => c.sign_rv = number,
            "sign_times" => c.sign_times = number.unwrap_or(0),
            "sign_delay_ms" => c.sign_delay = Duration::from_millis(number.unwrap_or(0)),
            "reject_allowed_mechanisms" => c.reject_allowed_mechanisms = number == Some(1),
            "storm_percent" => c.storm_percent = number.unwrap_or(0).min(100),
            "storm_seed" => c.storm_seed = number.unwrap_or(0),
            _ => {}
        }
    }
    c
}

/// Whether this `C_Sign` should fail, counting down the armed failures.
pub(crate) fn take_sign_failure(c: &Control) -> Option<u64> {
    let rv = c.sign_rv?;
    let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
    state.rearm(c);
    if state.sign_failures_left == 0 {
        return None;
    }
    state.sign_failures_left -= 1;
    Some(rv)
}

/// Whether the storm hits this call, and how: a third each of device errors, lost sessions
/// and calls slowed by 20 to 100 ms.
pub(crate) fn storm(c: &Control) -> Option<StormFault> {
    if c.storm_percent == 0 {
        return None;
    }
    let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
    state.rearm(c);
    if state.next() % 100 >= c.storm_percent {
        return None;
    }
    Some(match state.next() % 3 {
        0 => StormFault::Fail(CKR_DEVICE_ERROR),
        1 => StormFault::Fail(CKR_SESSION_HANDLE_INVALID),
        _ => StormFault::Slow(Duration::from_millis(20 + state.next() % 81)),
    })
}

/// Appends a call name to `calls.log`.
pub(crate) fn log(call: &str) {
    if let Some(d) = dir() {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("calls.log"))
        {
            let _ = writeln!(f, "{call}");
        }
    }
}
