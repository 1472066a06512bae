//! Interrupted provisioning: `hardkey` killed with SIGKILL at random moments of a TPM key
//! file keygen, a persistent keygen, a PKCS#11 keygen (SoftHSM), a seal and a
//! take-ownership. After each kill nothing is orphaned, and a rerun succeeds:
//!
//! - TPM: no transient object and no loaded or saved session is left (the TPM sits behind
//!   tpm2-abrmd, which flushes what a dead client loaded; the handles are read from the
//!   emulator itself, past the resource manager). On a TPM without a resource manager a
//!   killed process's objects stay loaded whatever it does: `hardkey tpm flush` frees them.
//! - Persistent handles: none new, except the requested one holding a complete key (listed by
//!   `hardkey list`, its signatures verified by openssl).
//! - Files: the output is absent or complete (a key that signs, data that unseals), and no
//!   other file (a temporary one) appears in the directory.
//! - Token: every private key has its public key and the reverse, every public key has its
//!   EC point, and hardkey can describe every private key, except for what SoftHSM's
//!   non-atomic C_GenerateKeyPair leaves of the key being made (half a pair, an object
//!   without its key or attributes): allowed right after a kill, gone after the rerun.
//!   SoftHSM's unreadable object files (and a token.object a kill emptied, which destroys
//!   the token) are out of any client's reach: counted and printed, not failed.
//! - Ownership: the auths set are a leading part of owner, endorsement, lockout, each holding
//!   its new value (checked with tpm2_changeauth), never something else.
//!
//! Then the same command runs again without a kill: it succeeds, or, when the killed run had
//! finished its work, refuses cleanly (hardkey never overwrites), and succeeds once the
//! result is removed.
//!
//! 5 kills per operation; 50 with `HARDKEY_SOAK=1` (`make soak`), or `HARDKEY_KILLS=N`. The
//! kill delays come from a seeded generator: the seed is printed, `HARDKEY_SEED` replays it.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "trials outside #[test] fns fail by panicking; the figures are printed"
)]

mod common;

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use common::{Hardkey, TAKE_OWNERSHIP, openssl_verify, run_ok, tool};
use hardkey_api::testkit::harness::{Arguments, NamedTest, run_on, trials_on};
use secrecy::ExposeSecret;
use softhsm_tests::SoftHsm;
use swtpm_tests::{Abrmd, Swtpm};

/// Kills per operation: `HARDKEY_KILLS`, else 50 with `HARDKEY_SOAK=1`, else 5.
fn kills() -> usize {
    hardkey_api::testkit::soak::size(5, 50, "HARDKEY_KILLS")
}

/// The seed of the kill delays, fixed for the run: `HARDKEY_SEED`, else the clock.
fn seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        std::env::var("HARDKEY_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
    })
}

/// SplitMix64: enough to spread kill delays reproducibly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A duration uniform in [0, max].
    fn below(&mut self, max: Duration) -> Duration {
        let micros = max.as_micros() as u64;
        Duration::from_micros(self.next() % (micros + 1))
    }
}

/// Each trial's own generator, from the run's seed and the trial's name.
fn rng_for(name: &str) -> Rng {
    let mut h = seed();
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    Rng(h)
}

/// What a killed (or finished) run left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Left {
    /// Nothing: as before the command.
    Nothing,
    /// Part of a multi-step operation, each step whole (take-ownership: some auths set).
    Partial,
    /// The complete result.
    Complete,
}

/// A callback of an [`Op`].
type Hook<'a> = &'a dyn Fn();

/// One operation to interrupt.
struct Op<'a> {
    name: &'static str,
    hk: &'a Hardkey,
    args: Vec<String>,
    /// What a rerun says when the result is already there (exit 2).
    refused_with: &'static str,
    /// Checks what is there now (asserting nothing is orphaned); says what it is.
    check: &'a dyn Fn() -> Left,
    /// Removes the complete result (back to the state before the command).
    reset: &'a dyn Fn(),
    /// Called before each kill, and after it (before `check`): for a device that a kill
    /// can break by itself (SoftHSM's file store), to notice and undo that.
    around_kill: Option<(Hook<'a>, Hook<'a>)>,
}

impl Op<'_> {
    fn args(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }

    /// Runs the command to the end; returns how long it took.
    fn run_ok(&self) -> Duration {
        let started = Instant::now();
        self.hk.ok(&self.args());
        started.elapsed()
    }

    /// The rerun after a kill: must succeed, or (when the result is there) refuse cleanly
    /// and succeed once it is removed. Leaves the complete result, checked.
    fn rerun(&self, left: Left) -> Duration {
        if left == Left::Complete {
            self.hk.fails(&self.args(), 2, &[self.refused_with]);
            (self.reset)();
            assert_eq!((self.check)(), Left::Nothing, "{}: reset", self.name);
        }
        let took = self.run_ok();
        assert_eq!(
            (self.check)(),
            Left::Complete,
            "{}: after the rerun",
            self.name
        );
        took
    }

    /// Measures the typical duration, then kills the command `n` times at a random moment
    /// of it, checking what each kill left and rerunning it.
    fn interrupt(&self, n: usize, rng: &mut Rng) {
        assert_eq!(
            (self.check)(),
            Left::Nothing,
            "{}: initial state",
            self.name
        );
        let mut runs: Vec<Duration> = (0..3)
            .map(|_| {
                let took = self.run_ok();
                assert_eq!((self.check)(), Left::Complete, "{}", self.name);
                (self.reset)();
                took
            })
            .collect();
        runs.sort();
        let typical = runs[1];
        let (mut killed, mut finished) = (0, 0);
        let mut outcomes = [0usize; 3];
        let mut reruns = Vec::new();
        for i in 0..n {
            let delay = rng.below(typical);
            if let Some((before, _)) = self.around_kill {
                before();
            }
            let mut child = self
                .hk
                .command(&self.args())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start hardkey");
            std::thread::sleep(delay);
            let _ = child.kill();
            let status = child.wait().expect("wait for hardkey");
            match status.signal() {
                Some(9) => killed += 1,
                _ => {
                    assert!(status.success(), "{}: run {i} failed: {status}", self.name);
                    finished += 1;
                }
            }
            if let Some((_, after)) = self.around_kill {
                after();
            }
            let left = (self.check)();
            if status.success() {
                assert_eq!(left, Left::Complete, "{}: run {i} finished", self.name);
            }
            outcomes[left as usize] += 1;
            reruns.push(self.rerun(left));
            (self.reset)();
        }
        reruns.sort();
        println!(
            "{}: typical {:.0} ms; {n} kills after 0-{:.0} ms: {killed} killed, {finished} had \
             finished; left nothing {}, partial {}, complete {}; reruns ok, median {:.0} ms",
            self.name,
            typical.as_secs_f64() * 1e3,
            typical.as_secs_f64() * 1e3,
            outcomes[0],
            outcomes[1],
            outcomes[2],
            reruns[reruns.len() / 2].as_secs_f64() * 1e3
        );
    }
}

/// swtpm behind tpm2-abrmd, and a scratch directory whose commands reach it.
struct Tpm {
    swtpm: Swtpm,
    abrmd: Abrmd,
}

impl Tpm {
    fn start() -> Self {
        let swtpm = Swtpm::start();
        let abrmd = Abrmd::start(&swtpm);
        Self { swtpm, abrmd }
    }

    fn hardkey(&self) -> Hardkey {
        Hardkey::new()
            .env("HARDKEY_TCTI", &self.abrmd.tcti())
            .env("DBUS_SESSION_BUS_ADDRESS", self.abrmd.bus_address())
    }

    /// `tpm2_getcap` on the emulator itself (every client's handles, past abrmd).
    fn getcap(&self, what: &str) -> String {
        tool(
            "tpm2_getcap",
            &[what, &format!("--tcti={}", self.swtpm.tcti())],
            Path::new("/"),
        )
    }

    fn handles(&self, what: &str) -> Vec<String> {
        self.getcap(what)
            .lines()
            .map(|l| l.trim_start_matches("- ").trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Waits (at most 5 s) until no transient object or session is left: abrmd flushes a
    /// dead client's handles once it notices the connection closed.
    fn assert_nothing_loaded(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut left = self.handles("handles-transient");
            left.extend(self.handles("handles-loaded-session"));
            left.extend(self.handles("handles-saved-session"));
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: handles left in the TPM: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn persistent(&self) -> BTreeSet<String> {
        self.handles("handles-persistent").into_iter().collect()
    }

    /// A `TPMA_PERMANENT` flag from `tpm2_getcap properties-variable`.
    fn permanent(&self, flag: &str) -> bool {
        let text = self.getcap("properties-variable");
        let value = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{flag}:")))
            .unwrap_or_else(|| panic!("no {flag} in:\n{text}"));
        value.trim() == "1"
    }
}

/// The files in the scratch directory other than those there at the start.
fn new_files(hk: &Hardkey, before: &[String]) -> Vec<String> {
    hk.files()
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect()
}

/// Signs with `uri` and checks the signature with openssl against the key's public key.
fn signs(hk: &Hardkey, uri: &str, extra: &[&str]) {
    let msg = hk.file("check-msg", "signed after an interrupted provisioning");
    let mut args = vec!["pubkey", uri, "--out", "check.pub"];
    args.extend_from_slice(extra);
    hk.ok(&args);
    let mut args = vec!["sign", uri, "--in", &msg, "--out", "check.sig"];
    args.extend_from_slice(extra);
    hk.ok(&args);
    let (public, sig) = (hk.path("check.pub"), hk.path("check.sig"));
    openssl_verify(
        hk.dir.path(),
        "ecdsa-p256-sha256",
        &public.display().to_string(),
        &msg,
        &sig.display().to_string(),
    );
    for f in ["check-msg", "check.pub", "check.sig"] {
        std::fs::remove_file(hk.path(f)).expect("remove check file");
    }
}

fn tpm_key_file() {
    let tpm = Tpm::start();
    let hk = tpm.hardkey();
    let baseline = hk.files();
    let persistent = tpm.persistent();
    let key = format!("tpm2:file={}", hk.path("k.pem").display());
    let check = || {
        tpm.assert_nothing_loaded("keygen to a key file");
        assert_eq!(tpm.persistent(), persistent, "a persistent handle appeared");
        match new_files(&hk, &baseline).as_slice() {
            [] => Left::Nothing,
            [one] if one == "k.pem" => {
                signs(&hk, &key, &[]);
                tpm.assert_nothing_loaded("signing with the key file");
                Left::Complete
            }
            other => panic!("files left: {other:?}"),
        }
    };
    let reset = || std::fs::remove_file(hk.path("k.pem")).expect("remove k.pem");
    Op {
        name: "keygen tpm2:file=k.pem",
        hk: &hk,
        args: vec!["keygen".into(), "tpm2:file=k.pem".into()],
        refused_with: "already exists",
        check: &check,
        reset: &reset,
        around_kill: None,
    }
    .interrupt(kills(), &mut rng_for("tpm_key_file"));
}

fn tpm_persistent_key() {
    let tpm = Tpm::start();
    let hk = tpm.hardkey();
    let baseline = hk.files();
    let before = tpm.persistent();
    let handle = "0x81000100";
    let uri = format!("tpm2:handle={handle}");
    let check = || {
        tpm.assert_nothing_loaded("keygen --persist");
        assert_eq!(new_files(&hk, &baseline), Vec::<String>::new());
        let now = tpm.persistent();
        let added: Vec<&String> = now.difference(&before).collect();
        assert!(before.is_subset(&now), "persistent handles went: {now:?}");
        match added.as_slice() {
            [] => Left::Nothing,
            [h] if h.as_str() == handle => {
                // Complete: hardkey lists it as its key, and it signs.
                let listed = hk.json(&["list", "tpm2:"]);
                assert!(
                    listed["keys"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k["uri"].as_str().is_some_and(|u| u.contains(handle))),
                    "{listed}"
                );
                signs(&hk, &uri, &[]);
                tpm.assert_nothing_loaded("signing with the persistent key");
                Left::Complete
            }
            other => panic!("persistent handles appeared: {other:?}"),
        }
    };
    let reset = || {
        hk.ok(&["delete", &uri, "--yes"]);
    };
    Op {
        name: "keygen tpm2: --persist 0x81000100",
        hk: &hk,
        args: vec![
            "keygen".into(),
            "tpm2:".into(),
            "--persist".into(),
            handle.into(),
        ],
        refused_with: handle,
        check: &check,
        reset: &reset,
        around_kill: None,
    }
    .interrupt(kills(), &mut rng_for("tpm_persistent_key"));
}

fn tpm_seal() {
    let tpm = Tpm::start();
    let hk = tpm.hardkey();
    hk.file("secret", "sealed while being killed");
    hk.file("sealpw", "seal-password");
    let baseline = hk.files();
    let persistent = tpm.persistent();
    let check = || {
        tpm.assert_nothing_loaded("seal");
        assert_eq!(tpm.persistent(), persistent, "a persistent handle appeared");
        match new_files(&hk, &baseline).as_slice() {
            [] => Left::Nothing,
            [one] if one == "sealed" => {
                let out = hk.ok(&[
                    "unseal",
                    "--in",
                    "sealed",
                    "--out",
                    "-",
                    "--auth-file",
                    "sealpw",
                ]);
                assert_eq!(out, "sealed while being killed");
                tpm.assert_nothing_loaded("unseal");
                Left::Complete
            }
            other => panic!("files left: {other:?}"),
        }
    };
    let reset = || std::fs::remove_file(hk.path("sealed")).expect("remove sealed");
    Op {
        name: "seal --auth-file",
        hk: &hk,
        args: ["seal", "--in", "secret", "--out", "sealed"]
            .into_iter()
            .chain(["--auth-file", "sealpw"])
            .map(String::from)
            .collect(),
        refused_with: "already exists",
        check: &check,
        reset: &reset,
        around_kill: None,
    }
    .interrupt(kills(), &mut rng_for("tpm_seal"));
}

/// The auths as take-ownership sets them, in its order.
const OWNERSHIP: [(&str, &str, &str); 3] = [
    ("ownerAuthSet", "owner", "owner-auth-value"),
    (
        "endorsementAuthSet",
        "endorsement",
        "endorsement-auth-value",
    ),
    ("lockoutAuthSet", "lockout", "lockout-auth-value"),
];

/// Which auths are set: asserts they are a leading part of owner, endorsement, lockout and
/// that owner and endorsement hold their new value (tpm2_changeauth to the same value;
/// not DA-protected, so a wrong one would cost nothing).
fn ownership_state(tpm: &Tpm, hk: &Hardkey) -> Left {
    let set: Vec<bool> = OWNERSHIP.iter().map(|(f, _, _)| tpm.permanent(f)).collect();
    let count = set.iter().take_while(|s| **s).count();
    assert!(
        set[count..].iter().all(|s| !s),
        "auths set out of order: {set:?}"
    );
    for (_, hierarchy, _) in &OWNERSHIP[..count.min(2)] {
        let file = format!("file:{}", hk.path(hierarchy).display());
        tool(
            "tpm2_changeauth",
            &[
                "-c",
                hierarchy,
                "-p",
                &file,
                &file,
                &format!("--tcti={}", tpm.swtpm.tcti()),
            ],
            Path::new("/"),
        );
    }
    match count {
        0 => Left::Nothing,
        3 => Left::Complete,
        _ => Left::Partial,
    }
}

fn tpm_take_ownership() {
    let tpm = Tpm::start();
    let hk = tpm.hardkey();
    for (_, file, value) in OWNERSHIP {
        hk.file(file, value);
    }
    let baseline = hk.files();
    let check = || {
        tpm.assert_nothing_loaded("take-ownership");
        assert_eq!(new_files(&hk, &baseline), Vec::<String>::new());
        let state = ownership_state(&tpm, &hk);
        assert!(!tpm.permanent("inLockout"), "the TPM is in lockout");
        state
    };
    // Clearing needs the lockout auth once it is set (the test clears only complete states).
    let reset = || {
        hk.ok(&["tpm", "clear", "--yes", "--lockout-auth-file", "lockout"]);
    };
    Op {
        name: "tpm take-ownership",
        hk: &hk,
        args: TAKE_OWNERSHIP.map(String::from).to_vec(),
        refused_with: "change-auth",
        check: &check,
        reset: &reset,
        around_kill: None,
    }
    .interrupt(kills(), &mut rng_for("tpm_take_ownership"));
}

/// A take-ownership killed after its first command: the owner auth set, the others empty.
/// Running it again with the same auths finishes it; with another owner auth it is refused
/// and changes nothing (and counts no dictionary-attack failure).
fn take_ownership_resumes_after_a_kill() {
    let tpm = Tpm::start();
    let hk = tpm.hardkey();
    for (_, file, value) in OWNERSHIP {
        hk.file(file, value);
    }
    hk.file("other-owner", "someone else's owner auth");
    let owner = format!("file:{}", hk.path("owner").display());
    let set_owner_only = || {
        tool(
            "tpm2_changeauth",
            &[
                "-c",
                "owner",
                &owner,
                &format!("--tcti={}", tpm.swtpm.tcti()),
            ],
            Path::new("/"),
        );
        assert_eq!(ownership_state(&tpm, &hk), Left::Partial);
    };
    set_owner_only();
    let owned = hk.json(&TAKE_OWNERSHIP);
    for auth in ["owner_auth_set", "endorsement_auth_set", "lockout_auth_set"] {
        assert_eq!(owned[auth], true, "{auth}: {owned}");
    }
    assert_eq!(owned["lockout_counter"], 0, "{owned}");
    assert_eq!(ownership_state(&tpm, &hk), Left::Complete);
    hk.ok(&["tpm", "clear", "--yes", "--lockout-auth-file", "lockout"]);

    set_owner_only();
    hk.fails(
        &[
            "tpm",
            "take-ownership",
            "--owner-auth-file",
            "other-owner",
            "--lockout-auth-file",
            "lockout",
        ],
        2,
        &["other values", "change-auth"],
    );
    assert_eq!(ownership_state(&tpm, &hk), Left::Partial);
    assert_eq!(hk.json(&["tpm", "status"])["lockout_counter"], 0);
    // The lockout auth is still empty: clearing needs none.
    hk.ok(&["tpm", "clear", "--yes"]);
    assert_eq!(ownership_state(&tpm, &hk), Left::Nothing);
    tpm.assert_nothing_loaded("take-ownership");
}

/// The token's objects as pkcs11-tool lists them: (class, ID, label, has EC_POINT).
fn token_objects(hsm: &SoftHsm) -> Vec<(String, String, String, bool)> {
    let out = run_ok(hsm.pkcs11_tool().arg("--list-objects"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut objects: Vec<(String, String, String, bool)> = Vec::new();
    for line in text.lines() {
        if line.starts_with("warning:") || line.starts_with("Using slot") {
            continue;
        }
        if !line.starts_with(' ') {
            let class = line.split(';').next().unwrap_or_default().to_owned();
            objects.push((class, String::new(), String::new(), false));
        } else if let Some(last) = objects.last_mut() {
            let l = line.trim();
            if let Some(id) = l.strip_prefix("ID:") {
                last.1 = id.trim().to_owned();
            } else if let Some(label) = l.strip_prefix("label:") {
                last.2 = label.trim().replace("<empty>", "");
            } else if l.starts_with("EC_POINT:") {
                last.3 = true;
            }
        }
    }
    objects
}

/// The object files in the token's directory: (name, size).
fn object_files(hsm: &SoftHsm) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    for token in std::fs::read_dir(hsm.dir().join("tokens")).expect("token directory") {
        let token = token.expect("entry").path();
        if !token.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&token).expect("token files") {
            let f = f.expect("entry");
            let name = f.file_name().to_string_lossy().into_owned();
            if name.ends_with(".object") && name != "token.object" {
                found.push((name, f.metadata().map_or(0, |m| m.len())));
            }
        }
    }
    found
}

/// The token's directory (the one token of the fixture).
fn token_dir(hsm: &SoftHsm) -> std::path::PathBuf {
    std::fs::read_dir(hsm.dir().join("tokens"))
        .expect("token directory")
        .map(|e| e.expect("entry").path())
        .find(|p| p.is_dir())
        .expect("a token")
}

/// What the token holds after a kill, checked: `Left::Partial` for what SoftHSM's
/// non-atomic C_GenerateKeyPair may leave of the key being made (which the rerun removes).
fn token_state(hsm: &SoftHsm, hk: &Hardkey, label: &str, debris: &std::cell::Cell<usize>) -> Left {
    let objects = token_objects(hsm);
    // SoftHSM's file store creates an object's file, then writes it in place: a kill in
    // between leaves an empty or truncated file, which SoftHSM skips (no object, invisible
    // through PKCS#11, so out of any client's reach). Counted, not failed.
    let files = object_files(hsm);
    assert!(
        files.len() >= objects.len(),
        "objects without files: {files:?}, listed {objects:?}"
    );
    debris.set(files.len() - objects.len());
    // SoftHSM makes a key pair in steps (the public key object, its attributes, then the
    // private key's): a kill inside C_GenerateKeyPair can leave, of the key being made, a
    // public key without its private key or its EC point, a private key hardkey cannot
    // describe, or an object with no attributes yet. Only that.
    // An object file holding nothing but its header parses as an object without even a
    // class (pkcs11-tool shows a data object): SoftHSM's debris too, counted.
    let (unreadable, objects): (Vec<_>, Vec<_>) = objects
        .into_iter()
        .partition(|o| o.0.starts_with("Data object") && o.1.is_empty() && o.2.is_empty());
    debris.set(debris.get() + unreadable.len());
    let mut leftovers = Vec::new();
    let private: Vec<_> = objects
        .iter()
        .filter(|o| o.0.starts_with("Private Key"))
        .collect();
    for o in &objects {
        let blank = o.1.is_empty() && o.2.is_empty();
        let is_public = o.0.starts_with("Public Key");
        assert!(is_public || o.0.starts_with("Private Key"), "{o:?}");
        let paired = private.iter().any(|p| p.1 == o.1 && p.2 == o.2);
        let whole = !is_public || (o.3 && paired);
        if blank || (o.2 == label && !whole) {
            leftovers.push(o.clone());
        } else if is_public {
            assert!(
                whole,
                "public key without its private key or EC point: {o:?}"
            );
        } else {
            let publics = objects
                .iter()
                .filter(|q| q.0.starts_with("Public Key") && q.1 == o.1 && q.2 == o.2)
                .count();
            assert_eq!(
                publics, 1,
                "private key {o:?} without its public key: {objects:?}"
            );
        }
    }
    assert!(leftovers.len() <= 2, "leftovers: {leftovers:?}");
    let listed = hk.json(&[
        "list",
        &format!("pkcs11:token={}", hsm.label()),
        "--pin-file",
        "pin",
    ]);
    let labels: Vec<&str> = listed["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["label"].as_str())
        .collect();
    let complete = labels.iter().filter(|l| **l == label).count();
    let others = private
        .iter()
        .filter(|p| !p.2.is_empty() && p.2 != label)
        .count();
    assert_eq!(
        labels.len() - complete,
        others,
        "hardkey cannot describe a key: {listed}"
    );
    let made = private.iter().filter(|p| p.2 == label).count();
    assert!(
        made <= 1 && complete <= made,
        "{made} keys labelled {label}: {objects:?}"
    );
    match (complete, made > complete || !leftovers.is_empty()) {
        (0, false) => Left::Nothing,
        (0, true) => Left::Partial,
        (1, false) => {
            signs(
                hk,
                &format!("pkcs11:token={};object={label}", hsm.label()),
                &["--pin-file", "pin"],
            );
            Left::Complete
        }
        _ => panic!("a key labelled {label} and leftovers {leftovers:?}: {objects:?}"),
    }
}

/// A copy of the token's files, taken before each kill: SoftHSM rewrites its token.object in
/// place (truncate, then write) while a client uses the token, and a process killed in
/// between leaves it empty, which destroys the token (its PIN-wrapped key is in that file)
/// whatever the application does. The test puts the
/// copy back when that happens, counts it, and goes on.
struct TokenBackup {
    dir: std::path::PathBuf,
    files: std::cell::RefCell<Vec<(std::path::PathBuf, Vec<u8>)>>,
    restored: std::cell::Cell<usize>,
}

impl TokenBackup {
    fn take(&self) {
        let files = std::fs::read_dir(&self.dir)
            .expect("token directory")
            .map(|e| {
                let path = e.expect("entry").path();
                let bytes = std::fs::read(&path).expect("token file");
                (path, bytes)
            })
            .collect();
        *self.files.borrow_mut() = files;
    }

    fn restore_if_lost(&self) {
        let token = self.dir.join("token.object");
        if std::fs::metadata(&token).map_or(0, |m| m.len()) > 0 {
            return;
        }
        for e in std::fs::read_dir(&self.dir).expect("token directory") {
            std::fs::remove_file(e.expect("entry").path()).expect("remove token file");
        }
        for (path, bytes) in self.files.borrow().iter() {
            std::fs::write(path, bytes).expect("restore token file");
        }
        self.restored.set(self.restored.get() + 1);
    }
}

fn pkcs11_key(hsm: &SoftHsm) {
    let hk = Hardkey::new();
    hk.file("pin", hsm.user_pin().expose_secret());
    let baseline = hk.files();
    let label = "interrupted";
    let uri = format!("pkcs11:token={};object={label}", hsm.label());
    let debris = std::cell::Cell::new(0);
    let check = || {
        assert_eq!(new_files(&hk, &baseline), Vec::<String>::new());
        token_state(hsm, &hk, label, &debris)
    };
    let reset = || {
        hk.ok(&["delete", &uri, "--yes", "--pin-file", "pin"]);
    };
    let backup = TokenBackup {
        dir: token_dir(hsm),
        files: Default::default(),
        restored: Default::default(),
    };
    let (take, restore) = (|| backup.take(), || backup.restore_if_lost());
    Op {
        name: "keygen pkcs11: (SoftHSM)",
        hk: &hk,
        args: vec![
            "keygen".into(),
            uri.clone(),
            "--pin-file".into(),
            "pin".into(),
        ],
        refused_with: "already exists",
        check: &check,
        reset: &reset,
        around_kill: Some((&take, &restore)),
    }
    .interrupt(kills(), &mut rng_for("pkcs11_key"));
    println!(
        "keygen pkcs11: SoftHSM left {} unreadable (empty or truncated) object file(s) in its \
         token directory, and lost its token (token.object emptied by a kill) {} time(s)",
        debris.get(),
        backup.restored.get()
    );
}

/// What a keygen killed inside `C_GenerateKeyPair` leaves on SoftHSM when the kill falls
/// between the two objects: the generated public key, no private key. The rerun of that
/// keygen removes it and leaves exactly one pair with the label.
fn pkcs11_rerun_removes_an_orphan_public_key(hsm: &SoftHsm) {
    let hk = Hardkey::new();
    hk.file("pin", hsm.user_pin().expose_secret());
    let run = |args: &[&str]| {
        run_ok(hsm.pkcs11_tool().args(args));
    };
    let labelled = |label: &str| -> Vec<(String, String)> {
        token_objects(hsm)
            .iter()
            .filter(|o| o.2 == label)
            .map(|o| (o.0.clone(), o.1.clone()))
            .collect()
    };
    let uri = |label: &str| format!("pkcs11:token={};object={label}", hsm.label());

    // What a keygen killed between the public and the private key leaves: hardkey's public
    // key (its CKA_ID) without its private half. The rerun removes it.
    let label = "orphaned";
    hk.ok(&["keygen", &uri(label), "--pin-file", "pin"]);
    let made = labelled(label);
    assert_eq!(made.len(), 2, "{made:?}");
    let id = made[0].1.clone();
    run(&["--delete-object", "--type", "privkey", "--id", &id]);
    assert_eq!(
        labelled(label),
        [("Public Key Object".to_owned(), id.clone())]
    );
    hk.ok(&["keygen", &uri(label), "--pin-file", "pin"]);
    let after = labelled(label);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        after.iter().all(|o| o.1 != id),
        "the orphan is still there: {after:?}"
    );
    assert_eq!(after[0].1, after[1].1, "{after:?}");
    signs(&hk, &uri(label), &["--pin-file", "pin"]);
    hk.ok(&["delete", &uri(label), "--yes", "--pin-file", "pin"]);
    assert!(labelled(label).is_empty());

    // Found by an attacker's review: public keys of other tools are not hardkey's to remove.
    // A public key kept on purpose (its private key deleted), and a pair whose private half
    // carries another CKA_ID, both made by pkcs11-tool under the label being generated.
    let keygen = |label: &str, id: &str| {
        run(&[
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            label,
            "--id",
            id,
        ]);
    };
    keygen("kept", "77");
    run(&["--delete-object", "--type", "privkey", "--id", "77"]);
    keygen("renumbered", "01");
    run(&["--type", "privkey", "--id", "01", "--set-id", "02"]);
    for (label, public_id) in [("kept", "77"), ("renumbered", "01")] {
        let before = labelled(label);
        // The same label: what a user reusing it gets.
        let out = hk.run(&["keygen", &uri(label), "--pin-file", "pin"]);
        let after = labelled(label);
        assert!(
            after.contains(&("Public Key Object".to_owned(), public_id.to_owned())),
            "keygen of '{label}' ({}) destroyed another tool's public key: {before:?} -> {after:?}",
            out.status
        );
    }
    // Leave the token as found: pkcs11-tool's objects, then hardkey's keys.
    for (class, id) in [("pubkey", "77"), ("pubkey", "01"), ("privkey", "02")] {
        run(&["--delete-object", "--type", class, "--id", id]);
    }
    for label in ["kept", "renumbered"] {
        hk.ok(&["delete", &uri(label), "--yes", "--pin-file", "pin"]);
        assert!(labelled(label).is_empty(), "{:?}", labelled(label));
    }
}

fn main() -> ExitCode {
    let mut args = Arguments::from_args();
    // One at a time: the kill delays are measured against an otherwise idle machine.
    args.test_threads = Some(1);
    let tests: [NamedTest<SoftHsm>; 7] = [
        ("tpm_key_file", |_| tpm_key_file()),
        ("tpm_persistent_key", |_| tpm_persistent_key()),
        ("tpm_seal", |_| tpm_seal()),
        ("tpm_take_ownership", |_| tpm_take_ownership()),
        ("take_ownership_resumes_after_a_kill", |_| {
            take_ownership_resumes_after_a_kill();
        }),
        (
            "pkcs11_rerun_removes_an_orphan_public_key",
            pkcs11_rerun_removes_an_orphan_public_key,
        ),
        ("pkcs11_key", pkcs11_key),
    ];
    // SoftHsm::start sets SOFTHSM2_CONF for the process (and the hardkey children) before any
    // thread.
    run_on(&args, SoftHsm::start, |hsm| {
        println!(
            "interrupted provisioning: seed {} (HARDKEY_SEED replays it), {} kills per operation",
            seed(),
            kills()
        );
        trials_on(hsm, &tests)
    })
}
