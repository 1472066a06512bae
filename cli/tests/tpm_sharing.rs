//! Many processes on one TPM. Behind tpm2-abrmd: 16 `hardkey sign` processes at once plus a
//! running `hardkey serve`, every signature verified by openssl, processes killed with
//! SIGKILL mid-operation leaving nothing behind, and `serve` stopped by SIGTERM with its
//! summary. On a raw swtpm (no resource manager): hardkey leaves other clients' objects and
//! sessions alone, says what to do when the TPM is out of sessions, and `hardkey tpm flush`
//! frees what dead processes left. Each trial has its own emulator.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "trials outside #[test] fns fail by panicking"
)]

mod common;

use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant};

use common::serve::{Serve, selfsign_localhost};
use common::{Hardkey, openssl_verify, tool};
use hardkey_api::testkit::harness::{Arguments, trial};
use swtpm_tests::{Abrmd, Swtpm};

/// `tpm2_getcap` on the emulator itself (the swtpm TCTI, past any resource manager).
fn raw_handles(tpm: &Swtpm, what: &str) -> Vec<String> {
    tool(
        "tpm2_getcap",
        &[what, &format!("--tcti={}", tpm.tcti())],
        std::path::Path::new("/"),
    )
    .lines()
    .map(|l| l.trim_start_matches("- ").trim().to_owned())
    .filter(|l| !l.is_empty())
    .collect()
}

/// Everything loaded or saved in the TPM now, every client's.
fn all_handles(tpm: &Swtpm) -> Vec<String> {
    let mut all = raw_handles(tpm, "handles-transient");
    all.extend(raw_handles(tpm, "handles-loaded-session"));
    all.extend(raw_handles(tpm, "handles-saved-session"));
    all
}

/// Polls until the TPM holds no handle (a resource manager flushes a dead client's handles
/// when it notices the connection closed).
fn wait_until_empty(tpm: &Swtpm, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = all_handles(tpm);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "handles left in the TPM: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `n` `hardkey sign` processes at once, alternating between `keys`; each signature is
/// checked with openssl against the key's public key.
fn parallel_signs(hk: &Hardkey, keys: &[(&str, &str)], n: usize, round: &str) {
    let msg = hk.file(&format!("msg-{round}"), format!("round {round}"));
    let children: Vec<(Child, String, &str)> = (0..n)
        .map(|i| {
            let (uri, _) = keys[i % keys.len()];
            let sig = format!("sig-{round}-{i}");
            let child = hk
                .command(&["sign", uri, "--in", &msg, "--out", &sig])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start hardkey sign");
            (child, sig, keys[i % keys.len()].1)
        })
        .collect();
    let mut failures = Vec::new();
    for (child, sig, public) in children {
        let out = child.wait_with_output().expect("wait for hardkey sign");
        if out.status.success() {
            openssl_verify(
                hk.dir.path(),
                "ecdsa-p256-sha256",
                public,
                &msg,
                &hk.path(&sig).display().to_string(),
            );
        } else {
            failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {n} parallel signs failed (round {round}):\n{}",
        failures.len(),
        failures.join("")
    );
}

/// The sockets and TPM device nodes of process `pid` that lack `O_CLOEXEC` (descriptors it
/// inherited from the test harness, such as cargo's jobserver pipe, are not its own doing).
fn descriptors_without_cloexec(pid: u32) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("list descriptors") {
        let entry = entry.expect("descriptor");
        let fd: u32 = entry
            .file_name()
            .to_string_lossy()
            .parse()
            .expect("fd number");
        if fd <= 2 {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else {
            continue;
        };
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            .expect("fdinfo flags");
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        let text = target.display().to_string();
        let tpm_side = text.starts_with("socket:") || text.starts_with("/dev/tpm");
        if tpm_side && flags & 0o2_000_000 == 0 {
            found.push(format!("{fd} -> {text}"));
        }
    }
    found
}

/// Signs killed with SIGKILL at random moments of their run.
fn killed_signs(hk: &Hardkey, uri: &str, n: usize) {
    let msg = hk.file("msg-killed", "killed");
    for i in 0..n {
        let mut child = hk
            .command(&["sign", uri, "--in", &msg, "--out", &format!("killed-{i}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start hardkey sign");
        // 0 to ~60 ms: before, during and after its TPM commands.
        std::thread::sleep(Duration::from_millis((i as u64 * 7) % 61));
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn resource_manager_shares_the_tpm() {
    let tpm = Swtpm::start();
    let abrmd = Abrmd::start(&tpm);
    let hk = Hardkey::new()
        .env("HARDKEY_TCTI", &abrmd.tcti())
        .env("DBUS_SESSION_BUS_ADDRESS", abrmd.bus_address());
    hk.ok(&["keygen", "tpm2:file=a.pem"]);
    hk.ok(&["keygen", "tpm2:", "--persist", "0x81000020"]);
    let file_key = format!("tpm2:file={}", hk.path("a.pem").display());
    let persistent = "tpm2:handle=0x81000020";
    hk.ok(&["pubkey", &file_key, "--out", "a.pub"]);
    hk.ok(&["pubkey", persistent, "--out", "p.pub"]);
    let (a_pub, p_pub) = (
        hk.path("a.pub").display().to_string(),
        hk.path("p.pub").display().to_string(),
    );
    let keys = [
        (file_key.as_str(), a_pub.as_str()),
        (persistent, p_pub.as_str()),
    ];

    // A server holds its connection (and a loaded key) the whole time.
    let cert = selfsign_localhost(&hk, &file_key, "a.crt", &[]);
    let serve = Serve::start(&hk, &file_key, &cert, "boring");
    let addr = serve.addr();
    let curl = std::thread::spawn(move || {
        let mut ok = 0;
        for _ in 0..12 {
            let out = std::process::Command::new("curl")
                .args([
                    "-sk",
                    "--max-time",
                    "20",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                ])
                .arg(format!("https://localhost:{}/", addr.port()))
                .arg("--resolve")
                .arg(format!("localhost:{}:127.0.0.1", addr.port()))
                .output()
                .expect("run curl");
            assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "curl: {out:?}");
            ok += 1;
        }
        ok
    });
    // Every descriptor of the server is close-on-exec, the TCTI's too: a child it started
    // would not hold the connection to the TPM.
    let inherited = descriptors_without_cloexec(serve.pid());
    assert!(inherited.is_empty(), "inherited by children: {inherited:?}");
    parallel_signs(&hk, &keys, 16, "1");
    killed_signs(&hk, &file_key, 12);
    parallel_signs(&hk, &keys, 16, "2");
    assert_eq!(curl.join().expect("curl loop"), 12);

    // SIGTERM: drained, summary printed, exit 0.
    let stopped = serve.terminate();
    assert_eq!(stopped.stats["handshakes"], 12, "{}", stopped.stats);
    assert_eq!(stopped.stats["handshake_failures"], 0, "{}", stopped.stats);
    // The resource manager flushed what every client left, the killed ones too.
    wait_until_empty(&tpm, Duration::from_secs(5));
}

fn raw_tpm_leaves_other_clients_alone() {
    let tpm = Swtpm::start();
    let hk = Hardkey::new().env("HARDKEY_TCTI", &tpm.tcti());
    // Another client's primary key, left loaded as tpm2-tools leave it on a raw TPM.
    tool(
        "tpm2_createprimary",
        &[
            "-C",
            "o",
            "-c",
            "other.ctx",
            &format!("--tcti={}", tpm.tcti()),
        ],
        hk.dir.path(),
    );
    let theirs = raw_handles(&tpm, "handles-transient");
    assert_eq!(theirs.len(), 1, "{theirs:?}");
    hk.ok(&["keygen", "tpm2:file=k.pem"]);
    let key = format!("tpm2:file={}", hk.path("k.pem").display());
    let msg = hk.file("msg", "hello");
    hk.ok(&["sign", &key, "--in", &msg, "--out", "sig"]);
    hk.ok(&["info", &key]);
    hk.ok(&["tpm", "status"]);
    assert_eq!(
        raw_handles(&tpm, "handles-transient"),
        theirs,
        "hardkey flushed it"
    );

    // Flushing everything is for the operator to ask for, knowingly.
    hk.fails(&["tpm", "flush"], 2, &["--yes", &theirs[0]]);
    let flushed = hk.json(&["tpm", "flush", "--yes"]);
    assert_eq!(flushed["flushed"], serde_json::json!(theirs), "{flushed}");
    assert!(all_handles(&tpm).is_empty());
    assert!(
        hk.ok(&["tpm", "flush"])
            .contains("no transient object or session")
    );
}

fn leaked_sessions_are_named_and_flushed() {
    let tpm = Swtpm::start();
    let hk = Hardkey::new().env("HARDKEY_TCTI", &tpm.tcti());
    hk.file("secret", "s3cret");
    // Sessions of processes that died: each holds a session handle until flushed.
    let mut leaked = 0;
    for i in 0..80 {
        let out = std::process::Command::new("tpm2_startauthsession")
            .args(["--hmac-session", "-S"])
            .arg(hk.path(&format!("s{i}.ctx")))
            .arg(format!("--tcti={}", tpm.tcti()))
            .stdin(Stdio::null())
            .output()
            .expect("run tpm2_startauthsession");
        if !out.status.success() {
            break;
        }
        leaked += 1;
    }
    assert!(leaked >= 3, "only {leaked} sessions could be started");
    let line = hk.fails(
        &["seal", "--in", "secret", "--out", "sealed", "--no-policy"],
        1,
        &["session", "hardkey tpm flush", "resource manager"],
    );
    assert!(!line.contains("reconnecting"), "{line}");
    let flushed = hk.json(&["tpm", "flush", "--sessions", "--yes"]);
    assert_eq!(
        flushed["flushed"].as_array().map(Vec::len),
        Some(leaked),
        "{flushed}"
    );
    hk.ok(&["seal", "--in", "secret", "--out", "sealed", "--no-policy"]);
    assert!(all_handles(&tpm).is_empty(), "{:?}", all_handles(&tpm));
}

fn key_file_of_another_tpm_is_named() {
    let (a, b) = (Swtpm::start(), Swtpm::start());
    let hk = Hardkey::new().env("HARDKEY_TCTI", &a.tcti());
    hk.ok(&["keygen", "tpm2:file=k.pem"]);
    let key = format!("tpm2:file={}", hk.path("k.pem").display());
    let msg = hk.file("msg", "hello");
    let on_b = Hardkey::new().env("HARDKEY_TCTI", &b.tcti());
    on_b.fails(
        &["sign", &key, "--in", &msg, "--out", "sig"],
        1,
        &["does not belong to this TPM", "another TPM", "cleared"],
    );
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let trials = vec![
        trial(
            "resource_manager_shares_the_tpm",
            resource_manager_shares_the_tpm,
        ),
        trial(
            "raw_tpm_leaves_other_clients_alone",
            raw_tpm_leaves_other_clients_alone,
        ),
        trial(
            "key_file_of_another_tpm_is_named",
            key_file_of_another_tpm_is_named,
        ),
        trial(
            "leaked_sessions_are_named_and_flushed",
            leaked_sessions_are_named_and_flushed,
        ),
    ];
    libtest_mimic::run(&args, trials).exit_code()
}
