//! Test support for hardkey's TPM backend: a swtpm TPM 2.0 emulator per fixture.
//!
//! [`Swtpm::start`] runs `swtpm socket --tpm2` in a temporary state directory on a free pair
//! of TCP ports (command port, control port), waits until it accepts connections, and gives
//! the TCTI to reach it. Dropping the fixture kills and reaps the process and removes the
//! state. swtpm serves one connection at a time, like a real TPM behind one resource manager.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// A free port `p` with `p + 1` free too (swtpm's command and control ports).
fn free_port_pair() -> u16 {
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
            let child = Command::new("swtpm")
                .args(["socket", "--tpm2"])
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .arg("--tpmstate")
                .arg(format!("dir={}", state.path().display()))
                .args(["--flags", "not-need-init,startup-clear"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| fail("starting swtpm", e));
            let mut swtpm = Self { child, port, state };
            if swtpm.wait_ready(Duration::from_secs(10)) {
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
