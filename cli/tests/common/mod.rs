//! Running the `hardkey` binary in tests: a clean environment (no HARDKEY_* variables from
//! the caller), a scratch directory, and assertions on exit codes and one-line errors;
//! signatures and certificates checked by openssl; `hardkey serve` and its TLS clients in
//! [`serve`].
#![allow(
    dead_code,
    clippy::expect_used,
    clippy::panic,
    reason = "shared by several test binaries; test helpers fail by panicking"
)]

pub(crate) mod serve;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// `hardkey tpm take-ownership` setting all three hierarchy auths, from the files `owner`,
/// `endorsement` and `lockout` in the scratch directory.
pub(crate) const TAKE_OWNERSHIP: [&str; 8] = [
    "tpm",
    "take-ownership",
    "--owner-auth-file",
    "owner",
    "--endorsement-auth-file",
    "endorsement",
    "--lockout-auth-file",
    "lockout",
];

/// The `hardkey` binary with a scratch directory as its working directory.
pub(crate) struct Hardkey {
    pub(crate) dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Hardkey {
    pub(crate) fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("hardkey-cli-")
                .tempdir()
                .expect("temporary directory"),
            env: Vec::new(),
        }
    }

    /// Sets an environment variable for every run.
    pub(crate) fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// A path in the scratch directory.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file in the scratch directory; returns its path as a string.
    pub(crate) fn file(&self, name: &str, contents: impl AsRef<[u8]>) -> String {
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write test file");
        path.display().to_string()
    }

    /// The command, ready to run (stdin closed: not a terminal).
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("hardkey"));
        for (name, _) in std::env::vars() {
            if name.starts_with("HARDKEY_") {
                cmd.env_remove(name);
            }
        }
        // As users run it: hardkey itself silences the TPM stack's stderr logging.
        cmd.env_remove("TSS2_LOG");
        cmd.env("XDG_CONFIG_HOME", self.dir.path().join("no-config"));
        for (name, value) in &self.env {
            cmd.env(name, value);
        }
        cmd.args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    /// Runs and returns the output, whatever the exit status.
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run hardkey")
    }

    /// Runs, expects success, returns stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "hardkey {args:?} failed with {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("stdout is text")
    }

    /// Runs with `--json`, expects success, parses stdout.
    pub(crate) fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let text = self.ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
    }

    /// Runs, expects exit status `code` and a one-line `hardkey: error:` message containing
    /// every one of `needles`; returns that line.
    pub(crate) fn fails(&self, args: &[&str], code: i32, needles: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "hardkey {args:?}: expected exit {code}, stderr:\n{stderr}"
        );
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected a one-line error, got:\n{stderr}");
        assert!(lines[0].starts_with("hardkey: error: "), "{stderr}");
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "error does not mention '{needle}':\n{stderr}"
            );
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
        lines[0].to_owned()
    }

    /// The names of the files in the scratch directory (for no-partial-output checks).
    pub(crate) fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .expect("read scratch directory")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }
}

#[allow(unused_imports, reason = "not every test binary runs tools")]
pub(crate) use hardkey_api::testkit::harness::run_ok;

/// Runs an independent tool in `dir`, expects success, returns stdout + stderr.
pub(crate) fn tool(program: &str, args: &[&str], dir: &Path) -> String {
    hardkey_api::testkit::harness::run_ok_text(Command::new(program).args(args).current_dir(dir))
}

/// `openssl dgst` verification of `sig` over `msg` with the public key PEM `pubkey`; RSA-PSS
/// is checked with salt length = hash length.
pub(crate) fn openssl_verify(dir: &Path, scheme: &str, pubkey: &str, msg: &str, sig: &str) {
    if scheme.starts_with("ed") {
        // EdDSA signs the message itself: pkeyutl -rawin, not dgst.
        let args = [
            "pkeyutl", "-verify", "-pubin", "-inkey", pubkey, "-rawin", "-in", msg, "-sigfile", sig,
        ];
        let text = tool("openssl", &args, dir);
        assert!(text.contains("Signature Verified Successfully"), "{text}");
        return;
    }
    let hash = if scheme.contains("384") {
        "-sha384"
    } else if scheme.contains("512") {
        "-sha512"
    } else {
        "-sha256"
    };
    let mut args = vec!["dgst", hash, "-verify", pubkey, "-signature", sig];
    if scheme.contains("pss") {
        args.extend([
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:-1",
        ]);
    }
    args.push(msg);
    let text = tool("openssl", &args, dir);
    assert!(text.contains("Verified OK"), "{text}");
}

/// `hardkey csr` and `hardkey selfsign` for `uri` (with `extra` options such as a PIN file),
/// checked by openssl: the request's signature verifies, the certificate's self-signature
/// verifies, both carry the subject and SANs, and the certificate's public key is the key's.
pub(crate) fn check_certificates(hk: &Hardkey, uri: &str, scheme: &str, extra: &[&str]) {
    let with = |args: &[&str]| -> Vec<String> {
        args.iter().chain(extra).map(|s| (*s).to_owned()).collect()
    };
    let run = |args: Vec<String>| hk.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    run(with(&[
        "csr",
        uri,
        "--subject",
        "CN=web.example,O=hardkey test",
        "--san",
        "dns:web.example,ip:127.0.0.1",
        "--scheme",
        scheme,
        "--out",
        "req.csr",
    ]));
    let req = tool(
        "openssl",
        &["req", "-in", "req.csr", "-noout", "-verify", "-text"],
        hk.dir.path(),
    );
    assert!(
        req.contains("verify OK") && !req.contains("verify failure"),
        "{req}"
    );
    assert!(req.contains("CN = web.example"), "{req}");
    assert!(
        req.contains("DNS:web.example, IP Address:127.0.0.1"),
        "{req}"
    );
    run(with(&[
        "selfsign",
        uri,
        "--subject",
        "CN=web.example",
        "--san",
        "dns:web.example",
        "--days",
        "7",
        "--scheme",
        scheme,
        "--out",
        "self.crt",
    ]));
    let verified = tool(
        "openssl",
        &[
            "verify",
            "-check_ss_sig",
            "-partial_chain",
            "-trusted",
            "self.crt",
            "self.crt",
        ],
        hk.dir.path(),
    );
    assert!(verified.contains("self.crt: OK"), "{verified}");
    let text = tool(
        "openssl",
        &["x509", "-in", "self.crt", "-noout", "-text"],
        hk.dir.path(),
    );
    assert!(text.contains("DNS:web.example"), "{text}");
    let cert_key = tool(
        "openssl",
        &["x509", "-in", "self.crt", "-noout", "-pubkey"],
        hk.dir.path(),
    );
    run(with(&["pubkey", uri, "--out", "cert-check.pub"]));
    assert_eq!(
        cert_key,
        std::fs::read_to_string(hk.path("cert-check.pub")).expect("public key file")
    );
}
