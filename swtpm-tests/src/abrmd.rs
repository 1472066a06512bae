//! A TPM resource manager in front of a [`Swtpm`]: tpm2-abrmd on a private D-Bus session bus.
//!
//! [`Abrmd::start`] starts `dbus-daemon --session` (its own bus, so nothing on the machine's
//! buses is touched) and `tpm2-abrmd --session` on it, talking to the emulator through the
//! swtpm TCTI, and waits until the broker answers. Clients reach it with the TCTI
//! [`Abrmd::tcti`] and the bus address [`Abrmd::bus_address`] in `DBUS_SESSION_BUS_ADDRESS`
//! (give it to child processes with [`Abrmd::env`]). Dropping the fixture kills both.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Swtpm, fail};

/// tpm2-abrmd and its bus, killed and reaped on drop.
#[derive(Debug)]
pub struct Abrmd {
    broker: Child,
    bus: Child,
    address: String,
}

impl Abrmd {
    /// Starts a private bus and the resource manager on `tpm`; waits (at most 10 s) until a
    /// client can connect.
    pub fn start(tpm: &Swtpm) -> Self {
        Self::start_with_max_transients(tpm, None)
    }

    /// [`Abrmd::start`] with room for `max_transients` loaded transient objects per client
    /// (tpm2-abrmd takes 1 to 100; its default is 27): for clients that keep every key they used loaded, such
    /// as tpm2-pkcs11, through a suite that makes many keys.
    pub fn start_with_max_transients(tpm: &Swtpm, max_transients: Option<u32>) -> Self {
        let mut bus = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1", "--nopidfile"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| fail("starting dbus-daemon (package dbus)", e));
        let mut address = String::new();
        if let Some(out) = bus.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut address);
        }
        let address = address.trim().to_owned();
        if address.is_empty() {
            let _ = bus.kill();
            let _ = bus.wait();
            fail("dbus-daemon", "printed no bus address");
        }
        let mut broker = Command::new("tpm2-abrmd");
        if let Some(n) = max_transients {
            broker.arg(format!("--max-transients={n}"));
        }
        let broker = broker
            .args(["--session", "--allow-root"])
            .arg(format!("--tcti={}", tpm.tcti()))
            .env("DBUS_SESSION_BUS_ADDRESS", &address)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| fail("starting tpm2-abrmd (package tpm2-abrmd)", e));
        let abrmd = Self {
            broker,
            bus,
            address,
        };
        abrmd.wait_ready(Duration::from_secs(10));
        abrmd
    }

    /// Polls with `tpm2_getcap` until the broker answers.
    fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        while Instant::now() < deadline {
            let out = Command::new("tpm2_getcap")
                .arg(format!("--tcti={}", self.tcti()))
                .arg("properties-fixed")
                .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| fail("running tpm2_getcap", e));
            if out.status.success() {
                return;
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(Duration::from_millis(50));
        }
        fail("tpm2-abrmd did not answer", last)
    }

    /// The TCTI of the resource manager on the session bus.
    pub fn tcti(&self) -> String {
        "tabrmd:bus_type=session".to_owned()
    }

    /// The private bus's address.
    pub fn bus_address(&self) -> &str {
        &self.address
    }

    /// The environment a client process needs: `DBUS_SESSION_BUS_ADDRESS`.
    pub fn env(&self) -> [(&'static str, &str); 1] {
        [("DBUS_SESSION_BUS_ADDRESS", self.address.as_str())]
    }
}

impl Drop for Abrmd {
    fn drop(&mut self) {
        for child in [&mut self.broker, &mut self.bus] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
