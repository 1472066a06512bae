//! An NSS softokn token for one test binary: a database made by `certutil -N` in a temporary
//! directory, opened by loading `libsoftokn3.so` directly with its init string in
//! `C_Initialize`'s reserved pointer ([`Pkcs11Config::module_init`]).
//!
//! (Through p11-kit it would need a user configuration, which p11-kit ignores when run as
//! root; and p11-kit's own module list is not involved at all this way.)

use std::path::{Path, PathBuf};
use std::process::Command;

use hardkey_api::testkit::harness::run_ok;
use hardkey_api::uri::Pkcs11Uri;
use hardkey_pkcs11::{PinSource, Pkcs11Config, Pkcs11Store};
use secrecy::{ExposeSecret, SecretString};

/// Where distributions install NSS's software token (Debian: package `libnss3`).
pub const SOFTOKN_PATHS: [&str; 5] = [
    "/usr/lib/x86_64-linux-gnu/libsoftokn3.so",
    "/usr/lib/aarch64-linux-gnu/libsoftokn3.so",
    "/usr/lib64/libsoftokn3.so",
    "/usr/lib/x86_64-linux-gnu/nss/libsoftokn3.so",
    "/usr/lib/libsoftokn3.so",
];

/// The label of softokn's key and certificate token (slot 2; slot 1 holds no objects).
pub const NSS_TOKEN_LABEL: &str = "NSS Certificate DB";

/// A failure to set up the fixture, with what to do.
fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    #[allow(
        clippy::panic,
        reason = "a fixture that cannot start fails the test run"
    )]
    {
        panic!(
            "NSS fixture: {what}: {e} (are libnss3 and libnss3-tools installed? make test \
             installs them)"
        )
    }
}

/// An NSS database with a password (the token's user PIN), removed on drop.
pub struct Nss {
    dir: tempfile::TempDir,
    module: PathBuf,
    user_pin: SecretString,
}

impl std::fmt::Debug for Nss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nss")
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Nss {
    /// Creates the database with `certutil -N`, its password given in a file (removed right
    /// after), never on the command line.
    pub fn start() -> Self {
        let module = SOFTOKN_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| fail("module", "libsoftokn3.so not found"));
        let dir = tempfile::Builder::new()
            .prefix("hardkey-nss-")
            .tempdir()
            .unwrap_or_else(|e| fail("database directory", e));
        let nss = Self {
            dir,
            module,
            user_pin: SecretString::from("nss-user-1234"),
        };
        let db = nss.dir.path().join("db");
        std::fs::create_dir(&db).unwrap_or_else(|e| fail("database directory", e));
        let password = nss.dir.path().join("password");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&password)
                .unwrap_or_else(|e| fail("password file", e));
            writeln!(file, "{}", nss.user_pin.expose_secret())
                .unwrap_or_else(|e| fail("password file", e));
        }
        run_ok(
            Command::new("certutil")
                .args(["-N", "-d"])
                .arg(format!("sql:{}", db.display()))
                .arg("-f")
                .arg(&password),
        );
        std::fs::remove_file(&password).unwrap_or_else(|e| fail("password file", e));
        nss
    }

    /// The database directory.
    pub fn db_dir(&self) -> PathBuf {
        self.dir.path().join("db")
    }

    /// softokn's init string for this database (read-write).
    pub fn init_string(&self) -> String {
        format!(
            "configdir='sql:{}' certPrefix='' keyPrefix='' secmod='secmod.db'",
            self.db_dir().display()
        )
    }

    /// The module.
    pub fn module(&self) -> &Path {
        &self.module
    }

    /// The token label.
    pub fn label(&self) -> &str {
        NSS_TOKEN_LABEL
    }

    /// The user PIN (the database password).
    pub fn user_pin(&self) -> &SecretString {
        &self.user_pin
    }

    /// A store configuration for the token, with the user PIN and the init string.
    pub fn config(&self) -> Pkcs11Config {
        let token = Pkcs11Uri::new()
            .with_token(NSS_TOKEN_LABEL)
            .with_module_path(self.module.display().to_string());
        Pkcs11Config::new(token, PinSource::Value(self.user_pin.clone()))
            .module(&self.module)
            .module_init(self.init_string())
    }

    /// Opens a store on the token with `sessions` sessions.
    pub fn store(&self, sessions: usize) -> Pkcs11Store {
        Pkcs11Store::open(self.config().sessions(sessions))
            .unwrap_or_else(|e| fail("opening the token", e))
    }
}
