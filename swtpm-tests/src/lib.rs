//! Test support for hardkey's TPM backend: a swtpm TPM 2.0 emulator per fixture.
//!
//! [`Swtpm::start`] runs `swtpm socket --tpm2` in a temporary state directory on a free pair
//! of TCP ports (command port, control port), waits until it accepts connections, and gives
//! the TCTI to reach it. Dropping the fixture kills and reaps the process and removes the
//! state. swtpm serves one connection at a time, like a real TPM behind one resource manager.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hardkey_api::testkit::harness;
// The harness piece these suites (and the CLI's) were written with; it lives in the test kit.
pub use hardkey_api::testkit::harness::trial;
use hardkey_tpm::{TpmConfig, TpmStore};

mod abrmd;
mod proxy;
mod raw;

pub use abrmd::Abrmd;

pub use proxy::{Command as TpmCommand, Exchange, RH_NULL, RecordingProxy, SessionStart};
pub use raw::{RawRate, raw_sign_loop};

/// A running swtpm, killed and reaped on drop.
#[derive(Debug)]
pub struct Swtpm {
    child: Child,
    port: u16,
    state: tempfile::TempDir,
}

/// A failure to start the fixture, with what to do.
fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    #[allow(
        clippy::panic,
        reason = "a fixture that cannot start fails the test run"
    )]
    {
        panic!("swtpm fixture: {what}: {e} (is swtpm installed? make test installs it)")
    }
}

/// Closes every inherited descriptor above stderr, then runs the command given after it.
/// The swtpm TCTI opens a socket for each command without close-on-exec: started while a
/// store of this process has a command in flight (a restart under load), swtpm would inherit
/// that client socket, never see the client close it, and serve no other connection again.
/// (`pre_exec` would need unsafe code, which this crate forbids.)
const CLOSE_INHERITED: &str = r#"for fd in /proc/$$/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done 2>/dev/null; exec "$@""#;

fn spawn(port: u16, state: &Path, log: std::fs::File) -> Child {
    Command::new("bash")
        .args(["-c", CLOSE_INHERITED, "bash", "swtpm", "socket", "--tpm2"])
        .arg("--server")
        .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
        .arg("--tpmstate")
        .arg(format!("dir={}", state.display()))
        .args(["--flags", "not-need-init,startup-clear"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| fail("starting swtpm", e))
}

/// A free port `p` with `p + 1` free too (swtpm's command and control ports).
/// Two listeners on adjacent ports, bound at once: nothing can take the ports between
/// choosing and binding them (for a listener of ours; swtpm binds its own, see
/// [`free_port_pair`]).
pub(crate) fn bind_port_pair() -> (TcpListener, TcpListener) {
    for _ in 0..100 {
        let Ok(first) = TcpListener::bind(("127.0.0.1", 0)) else {
            continue;
        };
        let Ok(port) = first.local_addr().map(|a| a.port()) else {
            continue;
        };
        if port < u16::MAX {
            if let Ok(second) = TcpListener::bind(("127.0.0.1", port + 1)) {
                return (first, second);
            }
        }
    }
    fail("free ports", "no free pair of adjacent ports found")
}

pub(crate) fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let Ok(first) = TcpListener::bind(("127.0.0.1", 0)) else {
            continue;
        };
        let Ok(port) = first.local_addr().map(|a| a.port()) else {
            continue;
        };
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    fail("free ports", "no free pair of adjacent ports found")
}

impl Swtpm {
    /// Starts an emulator and waits until it is ready (at most 10 s).
    pub fn start() -> Self {
        // Another process may take the ports between probing and binding: then try again.
        for _ in 0..5 {
            let state = tempfile::Builder::new()
                .prefix("hardkey-swtpm-")
                .tempdir()
                .unwrap_or_else(|e| fail("state directory", e));
            let port = free_port_pair();
            let log = std::fs::File::create(state.path().join("swtpm.log"))
                .unwrap_or_else(|e| fail("log file", e));
            let child = spawn(port, state.path(), log);
            let mut swtpm = Self { child, port, state };
            if swtpm.wait_ready(Duration::from_secs(10)) {
                swtpm.relax_dictionary_attack();
                return swtpm;
            }
            // Dropping it kills the process and removes its state.
        }
        fail("starting swtpm", "it did not listen after 5 attempts")
    }

    /// Polls the command port until it accepts a connection, or the process exits.
    fn wait_ready(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Relaxes the dictionary-attack parameters (1000 tries, 1 s recovery) with
    /// `tpm2_dictionarylockout`, so that an unclean restart or a test's deliberate wrong auth
    /// does not lock the TPM for the tests after it. The lockout test sets its own.
    pub fn relax_dictionary_attack(&self) {
        // Retried: on a loaded machine the first command to a fresh emulator can fail.
        let mut last = String::new();
        for attempt in 0..5u64 {
            let out = Command::new("tpm2_dictionarylockout")
                .args([
                    "--setup-parameters",
                    "--max-tries=1000",
                    "--recovery-time=1",
                ])
                .arg("--lockout-recovery-time=1")
                .arg(format!("--tcti={}", self.tcti()))
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| fail("running tpm2_dictionarylockout", e));
            if out.status.success() {
                return;
            }
            last = format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr));
            std::thread::sleep(Duration::from_millis(100 << attempt));
        }
        fail("relaxing dictionary-attack parameters", last);
    }

    /// Kills the emulator and starts it again on the same ports and state: a TPM reset
    /// (transient objects and saved contexts gone, persistent keys kept).
    pub fn restart(&mut self) {
        self.stop();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.state.path().join("swtpm.log"))
            .unwrap_or_else(|e| fail("log file", e));
        // The old process's ports may linger briefly.
        for _ in 0..50 {
            self.child = spawn(
                self.port,
                self.state.path(),
                log.try_clone().unwrap_or_else(|e| fail("log file", e)),
            );
            if self.wait_ready(Duration::from_secs(10)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        fail("restarting swtpm", "it did not listen again")
    }

    /// Kills the emulator (a TPM that went away); [`Swtpm::restart`] brings it back.
    pub fn kill(&mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The TCTI configuration string (`swtpm:host=127.0.0.1,port=P`).
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The command port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The emulator's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a `harness = false` test binary: one emulator for the whole binary, the trials made
/// by `make`, one at a time (swtpm serves one connection at a time, and a store opening on a
/// TPM without resource manager flushes the objects left loaded), then the emulator stops.
pub fn run(make: impl FnOnce(Arc<Swtpm>) -> Vec<libtest_mimic::Trial>) -> ExitCode {
    let mut args = harness::Arguments::from_args();
    args.test_threads = Some(1);
    harness::run_on(&args, Swtpm::start, |tpm| make(Arc::clone(tpm)))
}

impl Swtpm {
    /// A store configuration for this emulator, keys as files in `key_dir`.
    pub fn config(&self, key_dir: &Path) -> TpmConfig {
        TpmConfig::new(self.tcti()).key_dir(key_dir)
    }
}

/// Closes a store and waits for its worker to finish: dropping a store only asks the worker
/// to stop, and a child process started while the worker still has a TPM command in flight
/// would inherit its TCTI socket (the TSS opens it without close-on-exec) and hold swtpm's
/// only connection.
pub fn close_store(store: TpmStore) {
    let report = store.pool().shutdown(Duration::from_secs(10));
    if report.detached_workers != 0 {
        fail("closing the TPM store", format!("{report:?}"));
    }
}

/// Opens a store, failing the test with the reason.
pub fn open_store(config: TpmConfig) -> TpmStore {
    TpmStore::open(config).unwrap_or_else(|e| fail("opening the TPM store", e))
}

/// The conformance suite's checks for P-256, P-384, RSA-2048 and RSA-3072 on `tpm`, with
/// keys kept as files in a directory that lives as long as the trials.
pub fn conformance_trials(
    tpm: &Arc<Swtpm>,
    configure: fn(TpmConfig) -> TpmConfig,
) -> Vec<libtest_mimic::Trial> {
    let dir = Arc::new(
        tempfile::Builder::new()
            .prefix("hardkey-tpm-keys-")
            .tempdir()
            .unwrap_or_else(|e| fail("key directory", e)),
    );
    let tpm = Arc::clone(tpm);
    let suite = move || {
        let config = configure(tpm.config(dir.path()));
        let missing = hardkey_api::KeyUri::Tpm2(
            hardkey_api::Tpm2Uri::new(hardkey_api::Tpm2Key::File(
                dir.path().join("no-such-key.tss2.pem"),
            ))
            .with_tcti(tpm.tcti()),
        );
        // swtpm signs a few thousand times a second: 200 signatures in flight is plenty.
        hardkey_api::testkit::Suite::new(open_store(config), missing)
            .without_import()
            .concurrency(200)
    };
    harness::conformance_trials(suite, &harness::CONFORMANCE_ALGORITHMS)
}
