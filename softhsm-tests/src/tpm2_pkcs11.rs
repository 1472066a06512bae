//! A tpm2-pkcs11 token for one test binary: the module's store in a temporary directory, its
//! TPM a swtpm behind tpm2-abrmd on a private bus (so `pkcs11-tool` in a child process reaches
//! the same TPM while this process holds its connection), the token and PINs set up with
//! `pkcs11-tool` alone.
//!
//! The module is loaded directly by path: the p11-kit module file the package installs
//! (`/usr/share/p11-kit/modules/tpm2_pkcs11.module`) plays no part, and the other suites,
//! which load their modules by path too (`p11-kit server --provider`), never see it.

use std::path::{Path, PathBuf};
use std::process::Command;

use hardkey_api::testkit::harness::run_ok;
use hardkey_api::uri::Pkcs11Uri;
use hardkey_pkcs11::{PinSource, Pkcs11Config, Pkcs11Store};
use secrecy::{ExposeSecret, SecretString};
use swtpm_tests::{Abrmd, Swtpm};

use crate::env;

/// Where distributions install the tpm2-pkcs11 module (Debian: package `libtpm2-pkcs11-1`).
pub const TPM2_PKCS11_PATHS: [&str; 4] = [
    "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so",
    "/usr/lib/aarch64-linux-gnu/pkcs11/libtpm2_pkcs11.so",
    "/usr/lib64/pkcs11/libtpm2_pkcs11.so",
    "/usr/lib/pkcs11/libtpm2_pkcs11.so",
];

/// Loaded transient objects tpm2-abrmd allows the test process (its default is 27, its
/// maximum 100).
const MAX_TRANSIENTS: u32 = 100;

/// The variables the user PIN and SO PIN travel in to `pkcs11-tool` (`--pin env:...`).
const PIN_VAR: &str = "HARDKEY_TEST_PIN";
const SO_PIN_VAR: &str = "HARDKEY_TEST_SO_PIN";

/// A failure to set up the fixture, with what to do.
fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    #[allow(
        clippy::panic,
        reason = "a fixture that cannot start fails the test run"
    )]
    {
        panic!(
            "tpm2-pkcs11 fixture: {what}: {e} (is libtpm2-pkcs11-1 installed? make test \
             installs it)"
        )
    }
}

/// A tpm2-pkcs11 token on a swtpm. Fields drop in order: the broker before the TPM, the store
/// last.
pub struct Tpm2Pkcs11 {
    abrmd: Abrmd,
    swtpm: Swtpm,
    store: tempfile::TempDir,
    module: PathBuf,
    label: String,
    user_pin: SecretString,
    so_pin: SecretString,
}

impl std::fmt::Debug for Tpm2Pkcs11 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tpm2Pkcs11")
            .field("store", &self.store.path())
            .field("tpm_port", &self.swtpm.port())
            .field("label", &self.label)
            .finish()
    }
}

impl Tpm2Pkcs11 {
    /// Starts the TPM and its broker, points the module at them and at a fresh store
    /// (`TPM2_PKCS11_STORE`, `TPM2_PKCS11_TCTI` and the bus address, which it reads only from
    /// the environment), and initializes a token. Call it first in `main`, before any thread
    /// starts.
    pub fn start() -> Self {
        let module = TPM2_PKCS11_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| fail("module", "libtpm2_pkcs11.so not found"));
        let swtpm = Swtpm::start();
        // tpm2-pkcs11 keeps the keys it used loaded until logout: room for a suite's keys.
        let abrmd = Abrmd::start_with_max_transients(&swtpm, Some(MAX_TRANSIENTS));
        let store = tempfile::Builder::new()
            .prefix("hardkey-tpm2-pkcs11-")
            .tempdir()
            .unwrap_or_else(|e| fail("store directory", e));
        env::set_before_threads("TPM2_PKCS11_STORE", store.path().as_os_str());
        env::set_before_threads("TPM2_PKCS11_TCTI", abrmd.tcti().as_ref());
        env::set_before_threads("DBUS_SESSION_BUS_ADDRESS", abrmd.bus_address().as_ref());
        // The module's own log (errors it also returns as codes) stays quiet.
        env::set_before_threads("TPM2_PKCS11_LOG_LEVEL", "0".as_ref());
        let token = Self {
            abrmd,
            swtpm,
            store,
            module,
            label: format!("hk-tpm2-{}", std::process::id()),
            user_pin: SecretString::from("user-1234"),
            so_pin: SecretString::from("so-5678"),
        };
        token.init_token();
        token
    }

    /// `pkcs11-tool --init-token` then `--init-pin`, PINs in the environment.
    fn init_token(&self) {
        run_ok(
            self.tool()
                .args(["--init-token", "--label", &self.label])
                .args(["--so-pin", &format!("env:{SO_PIN_VAR}")]),
        );
        run_ok(
            self.tool()
                .args([
                    "--token-label",
                    &self.label,
                    "--login",
                    "--login-type",
                    "so",
                ])
                .args(["--so-pin", &format!("env:{SO_PIN_VAR}")])
                .args(["--init-pin", "--pin", &format!("env:{PIN_VAR}")]),
        );
    }

    /// `pkcs11-tool` on this module, not logged in, with the fixture's environment and both
    /// PINs in environment variables.
    fn tool(&self) -> Command {
        let mut cmd = Command::new("pkcs11-tool");
        cmd.env("TPM2_PKCS11_STORE", self.store.path())
            .env("TPM2_PKCS11_TCTI", self.abrmd.tcti())
            .env("TPM2_PKCS11_LOG_LEVEL", "0")
            .envs(self.abrmd.env())
            .env(PIN_VAR, self.user_pin.expose_secret())
            .env(SO_PIN_VAR, self.so_pin.expose_secret())
            .arg("--module")
            .arg(&self.module);
        cmd
    }

    /// `pkcs11-tool` on this token, logged in: the PIN travels in an environment variable
    /// (`--pin env:...`), never on the command line.
    pub fn pkcs11_tool(&self) -> Command {
        let mut cmd = self.tool();
        cmd.args(["--token-label", &self.label, "--login"])
            .args(["--pin", &format!("env:{PIN_VAR}")]);
        cmd
    }

    /// The module.
    pub fn module(&self) -> &Path {
        &self.module
    }

    /// The token label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The user PIN.
    pub fn user_pin(&self) -> &SecretString {
        &self.user_pin
    }

    /// The TPM under the token.
    pub fn swtpm(&self) -> &Swtpm {
        &self.swtpm
    }

    /// The environment a child process needs to reach the token (store, TCTI, bus).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TPM2_PKCS11_STORE", self.store.path().display().to_string()),
            ("TPM2_PKCS11_TCTI", self.abrmd.tcti()),
            ("TPM2_PKCS11_LOG_LEVEL", "0".to_owned()),
            (
                "DBUS_SESSION_BUS_ADDRESS",
                self.abrmd.bus_address().to_owned(),
            ),
        ]
    }

    /// A URI naming the token and the module.
    pub fn token_uri(&self) -> Pkcs11Uri {
        Pkcs11Uri::new()
            .with_token(self.label.clone())
            .with_module_path(self.module.display().to_string())
    }

    /// A store configuration for the token, with the user PIN.
    pub fn config(&self) -> Pkcs11Config {
        Pkcs11Config::new(self.token_uri(), PinSource::Value(self.user_pin.clone()))
            .module(&self.module)
    }

    /// Opens a store on the token with `sessions` sessions.
    pub fn store(&self, sessions: usize) -> Pkcs11Store {
        Pkcs11Store::open(self.config().sessions(sessions))
            .unwrap_or_else(|e| fail("opening the token", e))
    }
}
