//! The canary (security finding 9): one unique string is every secret at once (user and SO
//! PIN, TPM owner, endorsement, lockout and key auth, sealing password), and every command
//! runs with it, failing ones included, under full logging (`RUST_LOG=trace`,
//! `TSS2_LOG=all+trace`) and under `strace`. The canary (as text, or as hex as the TSS dumps
//! buffers) must appear nowhere in any stdout or stderr, in no file hardkey writes except the
//! secret files themselves and the sealed output, and hardkey must start no process that could
//! inherit it (one `execve` per run: hardkey itself).
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "trials outside #[test] fns fail by panicking; they print what they measured"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use common::Hardkey;
use hardkey_api::testkit::harness::trial;
use softhsm_tests::SoftHsm;
use swtpm_tests::Swtpm;

/// Where the canary may be: the files that hold the secrets, and sealed data.
const SECRET_FILES: [&str; 5] = [
    "canary",
    "canary-new",
    "canary-so-new",
    "wrong-pin",
    "s.sealed",
];

struct Canary {
    hk: Hardkey,
    canary: String,
    new: String,
    strace_dir: PathBuf,
    runs: usize,
    commands: Vec<String>,
}

impl Canary {
    fn forms(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for text in [&self.canary, &self.new] {
            out.push(text.as_bytes().to_vec());
            out.push(hex::encode(text.as_bytes()).into_bytes());
            out.push(hex::encode(text.as_bytes()).to_uppercase().into_bytes());
        }
        // The stem alone catches a secret cut short or split.
        out.push(b"cnry7Qz".to_vec());
        out
    }

    fn leaks(&self, data: &[u8]) -> bool {
        self.forms()
            .iter()
            .any(|f| data.windows(f.len()).any(|w| w == f.as_slice()))
    }

    /// Runs `hardkey ARGS` under strace with the canary in the environment as every secret
    /// variable, full logging on; checks its output and that it started no process.
    fn run(&mut self, args: &[&str], expect_ok: bool) -> Output {
        self.run_without(args, expect_ok, &[])
    }

    /// [`Canary::run`] with the secret variables in `unset` left out (so a URI's own
    /// `pin-source` is used).
    fn run_without(&mut self, args: &[&str], expect_ok: bool, unset: &[&str]) -> Output {
        let inner = self.hk.command(args);
        let log = self.strace_dir.join(format!("run-{}.strace", self.runs));
        self.runs += 1;
        let mut cmd = under_strace(&inner, &log);
        for name in [
            "HARDKEY_PIN",
            "HARDKEY_SO_PIN",
            "HARDKEY_KEY_AUTH",
            "HARDKEY_OWNER_AUTH",
            "HARDKEY_ENDORSEMENT_AUTH",
            "HARDKEY_LOCKOUT_AUTH",
            "HARDKEY_SEAL_AUTH",
        ] {
            if !unset.contains(&name) {
                cmd.env(name, &self.canary);
            }
        }
        cmd.env("RUST_LOG", "trace")
            .env("TSS2_LOG", "all+trace")
            .current_dir(self.hk.dir.path())
            .stdin(Stdio::null());
        let out = cmd.output().expect("run strace (make test installs it)");
        self.check_run(args, &out, &log, expect_ok);
        out
    }

    fn check_run(&mut self, args: &[&str], out: &Output, log: &Path, expect_ok: bool) {
        let shown = format!("hardkey {}", args.join(" "));
        assert_eq!(
            out.status.success(),
            expect_ok,
            "{shown}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !self.leaks(&out.stdout),
            "{shown}: the canary is in stdout:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            !self.leaks(&out.stderr),
            "{shown}: the canary is in stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let trace = std::fs::read_to_string(log).expect("strace log");
        let execs = trace.lines().filter(|l| l.contains("execve(")).count();
        let forks = trace
            .lines()
            .filter(|l| l.contains("fork(") || l.contains("clone(") && !l.contains("CLONE_THREAD"))
            .count();
        assert_eq!(execs, 1, "{shown}: hardkey started a process:\n{trace}");
        assert_eq!(forks, 0, "{shown}: hardkey forked:\n{trace}");
        self.commands.push(shown);
    }

    /// Every file in the scratch directory but the secret ones is free of the canary.
    fn check_files(&self) {
        let mut stack = vec![self.hk.dir.path().to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if path.is_dir() {
                    if path != self.strace_dir {
                        stack.push(path);
                    }
                    continue;
                }
                if SECRET_FILES.contains(&name.as_str()) || name.starts_with("unsealed") {
                    continue;
                }
                let data = std::fs::read(&path).unwrap_or_default();
                assert!(!self.leaks(&data), "the canary is in {}", path.display());
            }
        }
    }
}

/// `inner` (a `hardkey` command) run under `strace -f`, which logs every exec and fork to
/// `log`; the environment and its removals are carried over.
fn under_strace(inner: &Command, log: &Path) -> Command {
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-e", "trace=execve,execveat,fork,vfork", "-o"])
        .arg(log)
        .arg(inner.get_program())
        .args(inner.get_args());
    for (name, value) in inner.get_envs() {
        match value {
            Some(v) => cmd.env(name, v),
            None => cmd.env_remove(name),
        };
    }
    cmd
}

fn token_commands(c: &mut Canary, hsm: &SoftHsm) {
    let module = hsm.module().display().to_string();
    let uri = format!("pkcs11:token=canary-token?module-path={module}");
    let key = format!("pkcs11:token=canary-token;object=k?module-path={module}");
    let rsa = format!("pkcs11:token=canary-token;object=r?module-path={module}");
    let free = c.run(
        &["--json", "token", "list", "--slots", "--module", &module],
        true,
    );
    let slots: serde_json::Value = serde_json::from_slice(&free.stdout).unwrap();
    let slot = slots["slots"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["token"]["initialized"] == false))
        .and_then(|s| s["slot_id"].as_u64())
        .unwrap_or_else(|| panic!("no free slot in {slots}"));
    let slot = slot.to_string();
    // The SO PIN and user PIN are the canary (from the environment); new ones from files.
    c.run(
        &[
            "token",
            "init",
            "--module",
            &module,
            "--slot",
            &slot,
            "--label",
            "canary-token",
        ],
        true,
    );
    c.run(
        &["token", "init-pin", &uri, "--new-pin-file", "canary"],
        true,
    );
    c.run(&["token", "info", &uri], true);
    c.run(&["keygen", &key, "--alg", "p256"], true);
    c.run(
        &["keygen", &rsa, "--alg", "rsa2048", "--allow-raw-rsa"],
        true,
    );
    c.run(&["list", &uri], true);
    c.run(&["info", &key], true);
    c.run(&["sign", &key, "--in", "msg", "--out", "sig"], true);
    c.run(&["pubkey", &key, "--out", "k.pub"], true);
    c.run(
        &["verify", "--pubkey", "k.pub", "--in", "msg", "--sig", "sig"],
        true,
    );
    c.run(
        &["csr", &key, "--subject", "CN=canary", "--out", "k.csr"],
        true,
    );
    c.run(
        &["selfsign", &key, "--subject", "CN=canary", "--out", "k.crt"],
        true,
    );
    c.run(
        &["import", &uri, "--from", "soft.pem", "--label", "imported"],
        true,
    );
    // Failing: a wrong PIN (the canary with a suffix), a PIN in the URI, a PIN typed where
    // its file belongs, a mistyped pin-value, a pin-source that is the PIN.
    let wrong = c.hk.file("wrong-pin", format!("{}-wrong", c.canary));
    c.run(&["list", &uri, "--pin-file", &wrong], false);
    c.run(&["list", &format!("{uri}&pin-value={}", c.canary)], false);
    c.run(&["list", &uri, "--pin-file", &c.canary.clone()], false);
    c.run(&["list", &format!("{uri}&pin-value ={}", c.canary)], false);
    c.run_without(
        &["list", &format!("{uri}&pin-source={}", c.canary)],
        false,
        &["HARDKEY_PIN"],
    );
    c.run_without(
        &["list", &format!("{uri}&pin-source=file:{}", c.canary)],
        false,
        &["HARDKEY_PIN"],
    );
    c.run_without(
        &["list", &format!("{uri}&pin-source=env:{}", c.canary)],
        false,
        &["HARDKEY_PIN"],
    );
    // Typed into the path, a fragment, a number, or given as an argument.
    for bad in [
        format!("pkcs11:token=canary-token;pin={};object=k", c.canary),
        format!("pkcs11:token=canary-token;object=k;pin-source={}", c.canary),
        format!("pkcs11:token=canary-token;slot-id={};object=k", c.canary),
        format!("pkcs11:token=canary-token;object=k#{}", c.canary),
        format!("tpm2:handle=0x81000001;auth={}", c.canary),
    ] {
        c.run(&["sign", &bad, "--in", "msg", "--out", "sig"], false);
    }
    let canary = c.canary.clone();
    c.run(
        &["sign", &key, "--in", "msg", "--out", "sig", &canary],
        false,
    );
    c.run(
        &[
            "sign",
            &rsa,
            "--in",
            "msg",
            "--out",
            "sig",
            "--scheme",
            "ecdsa-p256-sha256",
        ],
        false,
    );
    // PIN changes: user, then SO (old from the environment, new from a file).
    c.run(
        &["token", "change-pin", &uri, "--new-pin-file", "canary-new"],
        true,
    );
    c.run(
        &[
            "token",
            "change-pin",
            &uri,
            "--so",
            "--new-pin-file",
            "canary-so-new",
        ],
        true,
    );
    c.run(&["delete", &key, "--yes", "--pin-file", "canary-new"], true);
}

fn tpm_commands(c: &mut Canary, tpm: &Swtpm) {
    let tcti = tpm.tcti();
    let with = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        v.push("--tpm".into());
        v.push(tcti.clone());
        v
    };
    let run = |c: &mut Canary, args: Vec<String>, ok: bool| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        c.run(&args, ok);
    };
    run(c, with(&["tpm", "status"]), true);
    // Every hierarchy auth is the canary (from the environment).
    run(c, with(&["tpm", "take-ownership"]), true);
    let key = format!("tpm2:handle=0x81000020?tcti={tcti}");
    let file = format!("tpm2:file=k.tss2.pem?tcti={tcti}");
    c.run(&["keygen", &key, "--alg", "p256"], true);
    c.run(&["keygen", &file, "--alg", "rsa2048"], true);
    c.run(&["list", &format!("tpm2:?tcti={tcti}")], true);
    c.run(&["sign", &key, "--in", "msg", "--out", "tsig"], true);
    c.run(&["sign", &file, "--in", "msg", "--out", "tsig2"], true);
    c.run(&["pubkey", &file, "--out", "t.pub"], true);
    c.run(
        &["csr", &file, "--subject", "CN=canary", "--out", "t.csr"],
        true,
    );
    // A wrong key auth fails (and is one dictionary-attack try; the lockout reset below
    // clears it).
    c.run(
        &[
            "sign",
            &key,
            "--in",
            "msg",
            "--out",
            "tsig3",
            "--key-auth-file",
            "canary-new",
        ],
        false,
    );
    run(c, with(&["seal", "--in", "msg", "--out", "s.sealed"]), true);
    run(
        c,
        with(&["unseal", "--in", "s.sealed", "--out", "unsealed"]),
        true,
    );
    run(
        c,
        with(&[
            "unseal",
            "--in",
            "s.sealed",
            "--out",
            "unsealed2",
            "--auth-file",
            "canary-new",
        ]),
        false,
    );
    run(c, with(&["tpm", "lockout", "reset"]), true);
    run(
        c,
        with(&[
            "tpm",
            "lockout",
            "set",
            "--max-tries",
            "1000",
            "--recovery-time",
            "1s",
            "--lockout-recovery",
            "1s",
        ]),
        true,
    );
    run(
        c,
        with(&[
            "tpm",
            "change-auth",
            "--hierarchy",
            "endorsement",
            "--new-auth-file",
            "canary-new",
        ]),
        true,
    );
    c.run(&["delete", &key, "--yes"], true);
    run(c, with(&["tpm", "clear", "--yes"]), true);
}

/// `hardkey serve` holding the PIN: a request served with full logging, the process not
/// dumpable while it runs, nothing of the canary in what it prints, no child started.
fn serve(c: &mut Canary, hsm: &SoftHsm) {
    let module = hsm.module().display().to_string();
    let key = format!("pkcs11:token=canary-token;object=srv?module-path={module}");
    c.run(
        &["keygen", &key, "--alg", "p256", "--pin-file", "canary-new"],
        true,
    );
    let cert =
        common::serve::selfsign_localhost(&c.hk, &key, "srv.crt", &["--pin-file", "canary-new"]);
    let addr = common::serve::free_addr();
    let log = c.strace_dir.join("serve.strace");
    let inner = c.hk.command(&[
        "--json",
        "serve",
        "--key",
        &key,
        "--cert",
        &cert,
        "--listen",
        &addr.to_string(),
        "--pin-file",
        "canary-new",
    ]);
    let mut cmd = under_strace(&inner, &log);
    cmd.env("RUST_LOG", "trace")
        .env("HARDKEY_KEY_AUTH", &c.canary)
        .current_dir(c.hk.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("start hardkey serve under strace");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "hardkey serve did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The server process is hardkey, below strace: it is not dumpable.
    let pid = hardkey_pid_under(child.id());
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("Name:\thardkey"), "{status}");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap()
        .to_owned();
    assert!(
        core.split_whitespace().nth(4) == Some("0"),
        "core dumps on: {core}"
    );
    let page = common::serve::curl_tls13(c.hk.dir.path(), addr, &cert);
    assert!(page.contains("hardkey"), "{page}");
    Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    c.check_run(&["serve"], &out, &log, true);
}

/// The first child of `strace` (the traced hardkey).
fn hardkey_pid_under(strace: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let children = std::fs::read_to_string(format!("/proc/{strace}/task/{strace}/children"))
            .unwrap_or_default();
        if let Some(pid) = children.split_whitespace().next() {
            return pid.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "strace started no child");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A process's uid and whether it is dumpable: the kernel makes a non-dumpable process's
/// `/proc/PID/` entries belong to root, whatever the process's uid (so this tells only for a
/// process that does not run as root).
fn uid_and_dumpable(pid: u32) -> (u32, bool) {
    use std::os::unix::fs::MetadataExt;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    let owner = std::fs::metadata(format!("/proc/{pid}/environ"))
        .unwrap()
        .uid();
    (uid, owner == uid)
}

/// `hardkey serve` run as an unprivileged user (uid 65534, when the test runs as root; else
/// as the test's own user) on a software key: its /proc entries belong to root, so it is not
/// dumpable, and ptrace attach by its own user is refused.
fn serve_is_not_dumpable() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let hk = Hardkey::new();
    std::fs::set_permissions(hk.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    hk.ok(&["keygen", "file:soft.pem", "--alg", "p256"]);
    let cert = common::serve::selfsign_localhost(&hk, "file:soft.pem", "soft.crt", &[]);
    let root = nix_uid() == 0;
    if root {
        for f in ["soft.pem", "soft.crt"] {
            std::os::unix::fs::chown(hk.path(f), Some(65534), Some(65534)).unwrap();
        }
    }
    let addr = common::serve::free_addr();
    let mut cmd = hk.command(&[
        "serve",
        "--key",
        "file:soft.pem",
        "--cert",
        &cert,
        "--listen",
        &addr.to_string(),
    ]);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    if root {
        cmd.uid(65534).gid(65534);
    }
    let mut child = cmd.spawn().expect("start hardkey serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "hardkey serve exited early"
        );
        assert!(Instant::now() < deadline, "hardkey serve did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (uid, dumpable) = uid_and_dumpable(child.id());
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_ne!(uid, 0, "the check needs a non-root server");
    assert!(!dumpable, "hardkey serve (uid {uid}) is dumpable");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(core.split_whitespace().nth(4), Some("0"), "{core}");
}

fn nix_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn main() -> ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let hsm = SoftHsm::start();
    let canary = trial("the_canary_appears_nowhere", move || {
        let tpm = Swtpm::start();
        let hk = Hardkey::new();
        let canary = format!("cnry7Qz-{}-{:x}", std::process::id(), rand_suffix());
        let new = format!("{canary}-new");
        hk.file("canary", &canary);
        hk.file("canary-new", &new);
        hk.file("canary-so-new", format!("{canary}-so"));
        hk.file("msg", "data to sign");
        let strace_dir = hk.dir.path().join("strace");
        std::fs::create_dir(&strace_dir).unwrap();
        let mut c = Canary {
            hk,
            canary,
            new,
            strace_dir,
            runs: 0,
            commands: Vec::new(),
        };
        c.run(&["keygen", "file:soft.pem", "--alg", "p256"], true);
        token_commands(&mut c, &hsm);
        tpm_commands(&mut c, &tpm);
        serve(&mut c, &hsm);
        c.check_files();
        println!(
            "{} commands ran; the canary was never seen",
            c.commands.len()
        );
    });
    let dumps = trial("serve_is_not_dumpable", serve_is_not_dumpable);
    libtest_mimic::run(&args, vec![canary, dumps]).exit_code()
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
