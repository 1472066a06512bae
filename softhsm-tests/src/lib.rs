//! Test support for hardkey's PKCS#11 backend: a SoftHSM2 token for one test binary, and the
//! two other implementations the suites also run on, tpm2-pkcs11 ([`Tpm2Pkcs11`]) and NSS
//! softokn ([`Nss`]).
//!
//! [`SoftHsm::start`] makes a temporary directory with its own `softhsm2.conf` (file object
//! store), points the process at it, and initializes a token with test PINs through PKCS#11
//! itself (no PIN on any command line). Dropping the fixture removes the directory.

mod env;
mod nss;
mod tpm2_pkcs11;

pub use nss::{NSS_TOKEN_LABEL, Nss, SOFTOKN_PATHS};
pub use tpm2_pkcs11::{TPM2_PKCS11_PATHS, Tpm2Pkcs11};

/// The workspace README's examples, compiled as doctests (this crate sees every backend).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::UserType;
use hardkey_api::testkit::harness::{self, Arguments, run_on};
// The harness pieces these suites (and the CLI's) were written with; they live in the test kit.
pub use hardkey_api::testkit::harness::{NamedTest, trial, trials_on};
use hardkey_api::uri::Pkcs11Uri;
use hardkey_pkcs11::{PinSource, Pkcs11Config, Pkcs11Store, default_module_path};
use secrecy::{ExposeSecret, SecretString};

/// A SoftHSM2 token in a temporary directory, removed on drop.
pub struct SoftHsm {
    dir: tempfile::TempDir,
    module: PathBuf,
    label: String,
    user_pin: SecretString,
    so_pin: SecretString,
}

impl std::fmt::Debug for SoftHsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftHsm")
            .field("dir", &self.dir.path())
            .field("label", &self.label)
            .finish()
    }
}

/// A failure to set up the fixture, with what to do.
fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    #[allow(
        clippy::panic,
        reason = "a fixture that cannot start fails the test run"
    )]
    {
        panic!("SoftHSM fixture: {what}: {e} (is softhsm2 installed? make test installs it)")
    }
}

impl SoftHsm {
    /// Creates the token. Call it first in `main`, before any thread starts (it sets
    /// `SOFTHSM2_CONF` for the process).
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hardkey-softhsm-")
            .tempdir()
            .unwrap_or_else(|e| fail("temporary directory", e));
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap_or_else(|e| fail("token directory", e));
        let conf = dir.path().join("softhsm2.conf");
        let text = format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n\
             slots.removable = false\n",
            tokens.display()
        );
        std::fs::write(&conf, text).unwrap_or_else(|e| fail("softhsm2.conf", e));
        env::set_softhsm_conf(&conf);

        let module = default_module_path().unwrap_or_else(|e| fail("SoftHSM module", e));
        let hsm = Self {
            dir,
            module,
            label: format!("hk-test-{}", std::process::id()),
            user_pin: SecretString::from("user-1234"),
            so_pin: SecretString::from("so-5678"),
        };
        hsm.init_token();
        hsm
    }

    /// Initializes the token in the first free slot and sets the user PIN, through PKCS#11.
    fn init_token(&self) {
        let ctx = Pkcs11::new(&self.module).unwrap_or_else(|e| fail("loading the module", e));
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => {}
            Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::CryptokiAlreadyInitialized,
                _,
            )) => {}
            Err(e) => fail("C_Initialize", e),
        }
        let slots = ctx
            .get_all_slots()
            .unwrap_or_else(|e| fail("C_GetSlotList", e));
        let free = slots
            .into_iter()
            .find(|s| ctx.get_token_info(*s).is_ok_and(|t| !t.token_initialized()))
            .unwrap_or_else(|| fail("free slot", "none"));
        ctx.init_token(free, &self.so_pin, &self.label)
            .unwrap_or_else(|e| fail("C_InitToken", e));
        // SoftHSM gives an initialized token a new slot id: find it by label.
        let slot = ctx
            .get_slots_with_initialized_token()
            .unwrap_or_else(|e| fail("C_GetSlotList", e))
            .into_iter()
            .find(|s| {
                ctx.get_token_info(*s)
                    .is_ok_and(|t| t.label().trim_end() == self.label)
            })
            .unwrap_or_else(|| fail("initialized token", "not found"));
        let session = ctx
            .open_rw_session(slot)
            .unwrap_or_else(|e| fail("C_OpenSession", e));
        session
            .login(UserType::So, Some(&self.so_pin))
            .unwrap_or_else(|e| fail("SO login", e));
        session
            .init_pin(&self.user_pin)
            .unwrap_or_else(|e| fail("C_InitPIN", e));
        session.logout().unwrap_or_else(|e| fail("C_Logout", e));
    }

    /// The SoftHSM module.
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

    /// The SO PIN.
    pub fn so_pin(&self) -> &SecretString {
        &self.so_pin
    }

    /// The fixture's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
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

    /// `pkcs11-tool` on this token, logged in: the PIN travels in an environment variable
    /// (`--pin env:...`), never on the command line.
    pub fn pkcs11_tool(&self) -> Command {
        let mut cmd = Command::new("pkcs11-tool");
        cmd.env("HARDKEY_TEST_PIN", self.user_pin.expose_secret())
            .arg("--module")
            .arg(&self.module)
            .args([
                "--token-label",
                &self.label,
                "--login",
                "--pin",
                "env:HARDKEY_TEST_PIN",
            ]);
        cmd
    }
}

/// Sets an environment variable a library under test reads only from the environment (e.g.
/// `DBUS_SESSION_BUS_ADDRESS` for the tpm2-abrmd TCTI on a private bus).
///
/// # Panics
///
/// If the process already has other threads: call it from a `harness = false` test's `main`
/// before the harness (or anything else) starts one.
pub fn set_env_before_threads(name: &str, value: &std::ffi::OsStr) {
    env::set_before_threads(name, value);
}

/// Runs the trials `make` builds with the started fixture under libtest-mimic, then drops
/// the fixture. The whole `main` of a SoftHSM test binary.
pub fn run(make: impl FnOnce(Arc<SoftHsm>) -> Vec<libtest_mimic::Trial>) -> ExitCode {
    run_on(&Arguments::from_args(), SoftHsm::start, |hsm| {
        make(Arc::clone(hsm))
    })
}

/// As [`run`], one trial at a time: for suites that compare the token's whole contents before
/// and after.
pub fn run_serial(make: impl FnOnce(Arc<SoftHsm>) -> Vec<libtest_mimic::Trial>) -> ExitCode {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    run_on(&args, SoftHsm::start, |hsm| make(Arc::clone(hsm)))
}

/// Where distributions install the p11-kit client module (a PKCS#11 module whose calls run in
/// a `p11-kit server` process).
pub const P11_KIT_CLIENT_PATHS: [&str; 4] = [
    "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so",
    "/usr/lib/aarch64-linux-gnu/pkcs11/p11-kit-client.so",
    "/usr/lib64/pkcs11/p11-kit-client.so",
    "/usr/lib/pkcs11/p11-kit-client.so",
];

/// A `p11-kit server` exporting the fixture's token on a unix socket, killed on drop. Models a
/// remote HSM or an isolated key process.
#[derive(Debug)]
pub struct P11KitServer {
    child: Option<std::process::Child>,
    socket: PathBuf,
    softhsm_conf: PathBuf,
    module: PathBuf,
    token: String,
}

impl P11KitServer {
    /// Starts the server for `hsm`'s token and points this process's p11-kit client at it.
    /// Call it in `main` right after [`SoftHsm::start`], before any thread starts.
    pub fn start(hsm: &SoftHsm) -> Self {
        let mut server = Self {
            child: None,
            socket: hsm.dir().join("p11-kit.sock"),
            softhsm_conf: hsm.dir().join("softhsm2.conf"),
            module: hsm.module().to_path_buf(),
            token: hsm.label().to_owned(),
        };
        let address = format!("unix:path={}", server.socket.display());
        env::set_before_threads("P11_KIT_SERVER_ADDRESS", address.as_ref());
        server.restart();
        server
    }

    /// The client module to load.
    pub fn client_module(&self) -> &Path {
        P11_KIT_CLIENT_PATHS
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .unwrap_or_else(|| {
                fail(
                    "p11-kit-client.so",
                    "not found (apt install p11-kit-modules)",
                )
            })
    }

    /// Kills the server and the processes it forked for each client connection (as a crash of
    /// the remote side would), and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The server runs in its own process group: kill the group.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// (Re)starts the server on the same socket and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let child =
            std::os::unix::process::CommandExt::process_group(&mut Command::new("p11-kit"), 0)
                .args(["server", "-f", "--provider"])
                .arg(&self.module)
                .arg("-n")
                .arg(&self.socket)
                .arg(format!("pkcs11:token={}", self.token))
                .env("SOFTHSM2_CONF", &self.softhsm_conf)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| fail("starting p11-kit server", e));
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if std::time::Instant::now() > deadline {
                fail("p11-kit server", "did not listen within 10 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for P11KitServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The fault-injecting PKCS#11 module (`pkcs11-fault-shim`) in front of the fixture's SoftHSM:
/// forced return codes, PIN states and latency on demand, and a log of logins and sessions.
#[derive(Debug)]
pub struct FaultShim {
    dir: PathBuf,
    module: PathBuf,
    generation: std::sync::atomic::AtomicU64,
}

impl FaultShim {
    /// Points the shim at the fixture's SoftHSM. Call it in `main` right after
    /// [`SoftHsm::start`], before any thread starts.
    pub fn start(hsm: &SoftHsm) -> Self {
        let dir = hsm.dir().join("shim");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail("shim directory", e));
        env::set_before_threads("HARDKEY_SHIM_DIR", dir.as_os_str());
        env::set_before_threads("HARDKEY_SHIM_MODULE", hsm.module().as_os_str());
        Self {
            dir,
            module: shim_library(),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The shim module to load instead of SoftHSM.
    pub fn module(&self) -> &Path {
        &self.module
    }

    /// Replaces the injected faults (`key=value` lines, see the shim's docs); re-arms counters.
    pub fn set(&self, control: &str) {
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let text = format!("generation={generation}\n{control}\n");
        let tmp = self.dir.join("control.tmp");
        std::fs::write(&tmp, text).unwrap_or_else(|e| fail("shim control", e));
        std::fs::rename(&tmp, self.dir.join("control")).unwrap_or_else(|e| fail("shim control", e));
    }

    /// Every call the shim logged so far, oldest first (`C_Login`, `C_Decrypt rv=0x0`...).
    pub fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("calls.log"))
            .map(|log| log.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// How many times `call` (e.g. "C_Login") reached the shim so far.
    pub fn calls(&self, call: &str) -> usize {
        std::fs::read_to_string(self.dir.join("calls.log"))
            .map(|log| log.lines().filter(|l| *l == call).count())
            .unwrap_or(0)
    }
}

/// The built shim library, next to the test binaries; built on demand when a test runs alone.
fn shim_library() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| fail("test binary path", e));
    // target/<profile>/deps/<test binary> -> target/<profile>/libpkcs11_fault_shim.so
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| fail("target directory", "not found"));
    let library = profile_dir.join("libpkcs11_fault_shim.so");
    if !library.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "pkcs11-fault-shim"]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build
            .status()
            .unwrap_or_else(|e| fail("building pkcs11-fault-shim", e));
        if !status.success() || !library.exists() {
            fail(
                "pkcs11-fault-shim",
                "not built: run cargo build -p pkcs11-fault-shim",
            );
        }
    }
    library
}

/// The hardkey-api conformance suite as trials, each on a fresh store opened with `config`
/// (P-256, P-384, RSA-2048, RSA-3072), with 1000 signatures in flight in the concurrency check.
pub fn conformance_trials(config: Pkcs11Config, token_label: &str) -> Vec<libtest_mimic::Trial> {
    conformance_trials_with(config, token_label, 1000)
}

/// [`conformance_trials`] with `concurrency` signatures in flight in the concurrency check:
/// fewer for tokens much slower than SoftHSM (a TPM, NSS's RSA), so that the check stays
/// within the pool's deadline and `make test`'s time. The store's algorithms (which the
/// unsupported-algorithm check refuses) are what the token's mechanisms say.
pub fn conformance_trials_with(
    config: Pkcs11Config,
    token_label: &str,
    concurrency: usize,
) -> Vec<libtest_mimic::Trial> {
    conformance_trials_for(
        config,
        token_label,
        concurrency,
        &harness::CONFORMANCE_ALGORITHMS,
    )
}

/// [`conformance_trials_with`] for the given algorithms (SoftHSM adds Ed25519 and Ed448).
pub fn conformance_trials_for(
    config: Pkcs11Config,
    token_label: &str,
    concurrency: usize,
    algorithms: &[(&str, hardkey_api::KeyAlgorithm)],
) -> Vec<libtest_mimic::Trial> {
    let missing = hardkey_api::KeyUri::Pkcs11(
        Pkcs11Uri::new()
            .with_token(token_label)
            .with_object("no-such-key"),
    );
    let suite = move || {
        let store =
            Pkcs11Store::open(config.clone()).unwrap_or_else(|e| fail("opening the token", e));
        // SoftHSM 2.6 has no RSA-OAEP with SHA-256: hardkey decodes OAEP on the host, which
        // needs a key that allows raw RSA.
        let imports = store.imports_private_keys();
        let suite = hardkey_api::testkit::Suite::new(store, missing.clone())
            .raw_rsa_for_decrypt(true)
            .concurrency(concurrency);
        // tpm2-pkcs11 cannot import: its refusal must be a clean Unsupported.
        if imports {
            suite
        } else {
            suite.import_refused()
        }
    };
    harness::conformance_trials(suite, algorithms)
}
