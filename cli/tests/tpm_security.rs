//! Security findings 2-4 against swtpm, through the `hardkey` command, each on a TPM of its
//! own:
//! - nothing secret crosses the TPM bus in the clear, and every session that can carry an
//!   auth value is salted (a recording proxy sits between hardkey and swtpm);
//! - a persistent SRK that is not the one hardkey's template makes is refused, unless its
//!   name is pinned in the configuration;
//! - a key file with an auth value, used without one, is refused before the TPM is touched
//!   (the dictionary-attack counter does not move);
//! - a persistent key is used without the owner auth; where the owner auth is needed, the
//!   error says so.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "trials outside #[test] fns fail by panicking; they print what they measured"
)]

mod common;

use std::path::Path;
use std::process::ExitCode;

use common::{Hardkey, TAKE_OWNERSHIP, openssl_verify, tool};
use hardkey_api::testkit::harness::{NamedTest, trial};
use swtpm_tests::{RecordingProxy, Swtpm};

fn hardkey(tcti: &str) -> Hardkey {
    Hardkey::new().env("HARDKEY_TCTI", tcti)
}

fn tpm2(tpm: &Swtpm, program: &str, args: &[&str], dir: &Path) -> String {
    let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    all.push(format!("--tcti={}", tpm.tcti()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    tool(program, &all, dir)
}

/// `TPM2_PT_LOCKOUT_COUNTER` from `tpm2_getcap properties-variable`.
fn lockout_counter(tpm: &Swtpm) -> u32 {
    let text = tpm2(tpm, "tpm2_getcap", &["properties-variable"], Path::new("/"));
    text.lines()
        .find_map(|l| l.trim().strip_prefix("TPM2_PT_LOCKOUT_COUNTER:"))
        .and_then(|v| u32::from_str_radix(v.trim().trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| panic!("no TPM2_PT_LOCKOUT_COUNTER in:\n{text}"))
}

fn assert_no_transients(tpm: &Swtpm) {
    let left = tpm2(tpm, "tpm2_getcap", &["handles-transient"], Path::new("/"));
    assert!(left.trim().is_empty(), "transient objects left: {left}");
}

/// Finding 2: the auths (owner, endorsement, lockout, a key's, a new one), a sealing
/// password and the sealed secret never appear in the clear on the bus, and every HMAC or
/// policy session hardkey starts is salted.
fn nothing_secret_crosses_the_bus(tpm: &Swtpm) {
    let proxy = RecordingProxy::start(tpm);
    let hk = hardkey(&proxy.tcti());
    let secrets: [(&str, &str); 7] = [
        ("owner", "owner-auth-c4n4ry-01"),
        ("endorsement", "endorsement-auth-c4n4ry-02"),
        ("lockout", "lockout-auth-c4n4ry-03"),
        ("keyauth", "key-auth-c4n4ry-04"),
        ("sealpw", "seal-password-c4n4ry-05"),
        ("newowner", "new-owner-auth-c4n4ry-06"),
        ("secret", "sealed-secret-c4n4ry-07"),
    ];
    for (file, value) in secrets {
        hk.file(file, value);
    }
    hk.file("msg", "signed through a recorded bus");
    hk.ok(&TAKE_OWNERSHIP);
    // A persistent key and a key file, both with an auth value, made (under the SRK, which
    // the owner auth creates) and used.
    hk.ok(&[
        "keygen",
        "tpm2:",
        "--persist",
        "0x81000050",
        "--owner-auth-file",
        "owner",
        "--key-auth-file",
        "keyauth",
    ]);
    hk.ok(&[
        "keygen",
        "tpm2:file=k.tss2.pem",
        "--alg",
        "rsa2048",
        "--owner-auth-file",
        "owner",
        "--key-auth-file",
        "keyauth",
    ]);
    for uri in ["tpm2:handle=0x81000050", "tpm2:file=k.tss2.pem"] {
        hk.ok(&[
            "sign",
            uri,
            "--in",
            "msg",
            "--out",
            "sig",
            "--key-auth-file",
            "keyauth",
            "--owner-auth-file",
            "owner",
        ]);
    }
    hk.ok(&[
        "seal",
        "--in",
        "secret",
        "--out",
        "s.sealed",
        "--auth-file",
        "sealpw",
        "--owner-auth-file",
        "owner",
    ]);
    let unsealed = hk.ok(&[
        "unseal",
        "--in",
        "s.sealed",
        "--out",
        "-",
        "--auth-file",
        "sealpw",
        "--owner-auth-file",
        "owner",
    ]);
    assert_eq!(unsealed, "sealed-secret-c4n4ry-07");
    hk.ok(&["tpm", "lockout", "reset", "--lockout-auth-file", "lockout"]);
    hk.ok(&[
        "tpm",
        "lockout",
        "set",
        "--max-tries",
        "1000",
        "--recovery-time",
        "1s",
        "--lockout-recovery",
        "1s",
        "--lockout-auth-file",
        "lockout",
    ]);
    hk.ok(&[
        "tpm",
        "change-auth",
        "--hierarchy",
        "owner",
        "--current-auth-file",
        "owner",
        "--new-auth-file",
        "newowner",
    ]);
    hk.ok(&["tpm", "clear", "--yes", "--lockout-auth-file", "lockout"]);

    let commands = proxy.commands();
    assert!(
        commands.len() > 50,
        "the proxy saw {} commands",
        commands.len()
    );
    for (name, value) in secrets {
        assert!(
            !proxy.saw(value.as_bytes()),
            "the {name} ({value}) crossed the bus in the clear"
        );
    }
    let starts = proxy.session_starts();
    assert!(!starts.is_empty(), "no session was started");
    for start in &starts {
        // Trial sessions (computing a policy digest) authorize nothing.
        if start.session_type == 3 {
            continue;
        }
        assert!(
            start.salt_key != swtpm_tests::RH_NULL && start.encrypted_salt_len > 0,
            "an unsalted session was started: {start:?} (of {starts:?})"
        );
    }
    println!(
        "{} commands, {} sessions (all salted) recorded; no secret seen",
        commands.len(),
        starts.len()
    );
    drop(proxy);
    assert_no_transients(tpm);
}

/// Finding 2: a primary someone persisted at 0x81000001 is not trusted as the SRK.
fn an_untrusted_srk_is_refused(tpm: &Swtpm) {
    let hk = hardkey(&tpm.tcti());
    let dir = hk.dir.path();
    tpm2(
        tpm,
        "tpm2_createprimary",
        &["-C", "o", "-c", "p.ctx", "-Q"],
        dir,
    );
    tpm2(
        tpm,
        "tpm2_evictcontrol",
        &["-C", "o", "-c", "p.ctx", "0x81000001", "-Q"],
        dir,
    );
    tpm2(tpm, "tpm2_flushcontext", &["-t"], dir);
    let err = hk.fails(
        &["keygen", "tpm2:file=k.tss2.pem"],
        1,
        &[
            "0x81000001",
            "not the storage root key",
            "tpm2_evictcontrol",
            "srk-name",
        ],
    );
    assert!(!hk.path("k.tss2.pem").exists(), "a key was made under it");
    // Sealing under it is refused too.
    hk.file("secret", "x");
    hk.file("pw", "pw");
    hk.fails(
        &[
            "seal",
            "--in",
            "secret",
            "--out",
            "s.sealed",
            "--auth-file",
            "pw",
        ],
        1,
        &["not the storage root key"],
    );
    // The user decides to trust it: the name from the error, pinned.
    let name = err
        .split("srk-name = \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no name in: {err}"))
        .to_owned();
    let config = hk.file("config.toml", format!("[tpm]\nsrk-name = \"{name}\"\n"));
    hk.ok(&["--config", &config, "keygen", "tpm2:file=k.tss2.pem"]);
    hk.file("msg", "m");
    hk.ok(&[
        "--config",
        &config,
        "sign",
        "tpm2:file=k.tss2.pem",
        "--in",
        "msg",
        "--out",
        "sig",
    ]);
    // A pinned name that does not match is refused, saying the SRK was replaced.
    let wrong = hk.file(
        "wrong.toml",
        format!("[tpm]\nsrk-name = \"000b{}\"\n", "00".repeat(32)),
    );
    hk.fails(
        &[
            "--config",
            &wrong,
            "sign",
            "tpm2:file=k.tss2.pem",
            "--in",
            "msg",
            "--out",
            "sig2",
        ],
        1,
        &["not the pinned"],
    );
    tpm2(
        tpm,
        "tpm2_evictcontrol",
        &["-C", "o", "-c", "0x81000001", "-Q"],
        dir,
    );
    assert_no_transients(tpm);
}

/// Finding 3: a key file that says it has an auth value, used without one, costs no
/// dictionary-attack try.
fn a_key_auth_is_not_guessed(tpm: &Swtpm) {
    let hk = hardkey(&tpm.tcti());
    hk.file("keyauth", "the-key-auth");
    hk.file("msg", "m");
    hk.ok(&[
        "keygen",
        "tpm2:file=k.tss2.pem",
        "--key-auth-file",
        "keyauth",
    ]);
    let before = lockout_counter(tpm);
    hk.fails(
        &[
            "sign",
            "tpm2:file=k.tss2.pem",
            "--in",
            "msg",
            "--out",
            "sig",
        ],
        1,
        &[
            "emptyAuth",
            "--key-auth-file",
            "dictionary-attack counter is unchanged",
        ],
    );
    assert_eq!(
        lockout_counter(tpm),
        before,
        "the failed sign spent a DA try"
    );
    // With it, it signs.
    hk.ok(&[
        "sign",
        "tpm2:file=k.tss2.pem",
        "--in",
        "msg",
        "--out",
        "sig",
        "--key-auth-file",
        "keyauth",
    ]);
    assert_eq!(lockout_counter(tpm), before);
    assert_no_transients(tpm);
}

/// Finding 4: once the owner has an auth value, a persistent key still signs and shows its
/// public key without it (as with tpm2_sign); a key file under the owner hierarchy needs
/// it, and the error names where it comes from.
fn persistent_keys_need_no_owner_auth(tpm: &Swtpm) {
    let hk = hardkey(&tpm.tcti());
    hk.file("owner", "owner-secret");
    hk.file("lockout", "lockout-secret");
    hk.file("msg", "signed without the owner auth");
    hk.ok(&[
        "tpm",
        "take-ownership",
        "--owner-auth-file",
        "owner",
        "--lockout-auth-file",
        "lockout",
    ]);
    hk.ok(&[
        "keygen",
        "tpm2:",
        "--persist",
        "0x81000010",
        "--owner-auth-file",
        "owner",
    ]);
    hk.ok(&[
        "keygen",
        "tpm2:file=k.tss2.pem",
        "--owner-auth-file",
        "owner",
    ]);
    // No owner auth from here on.
    hk.ok(&["pubkey", "tpm2:handle=0x81000010", "--out", "k.pub"]);
    hk.ok(&[
        "sign",
        "tpm2:handle=0x81000010",
        "--in",
        "msg",
        "--out",
        "sig",
    ]);
    openssl_verify(hk.dir.path(), "ecdsa", "k.pub", "msg", "sig");
    hk.ok(&["info", "tpm2:handle=0x81000010"]);
    hk.fails(
        &[
            "sign",
            "tpm2:file=k.tss2.pem",
            "--in",
            "msg",
            "--out",
            "sig2",
        ],
        1,
        &["owner hierarchy", "--owner-auth-file", "HARDKEY_OWNER_AUTH"],
    );
    hk.ok(&["tpm", "clear", "--yes", "--lockout-auth-file", "lockout"]);
    tpm.relax_dictionary_attack();
    assert_no_transients(tpm);
}

fn main() -> ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let tests: [NamedTest<Swtpm>; 4] = [
        (
            "nothing_secret_crosses_the_bus",
            nothing_secret_crosses_the_bus,
        ),
        ("an_untrusted_srk_is_refused", an_untrusted_srk_is_refused),
        ("a_key_auth_is_not_guessed", a_key_auth_is_not_guessed),
        (
            "persistent_keys_need_no_owner_auth",
            persistent_keys_need_no_owner_auth,
        ),
    ];
    // Each trial on a TPM of its own: they change ownership and the SRK handle.
    let trials = tests
        .into_iter()
        .map(|(name, test)| {
            trial(name, move || {
                let tpm = Swtpm::start();
                test(&tpm);
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}
