//! A TPM key file's certificate chain beside it (`KEY.tss2.pem` -> `KEY.chain.pem`), against
//! swtpm: `hardkey cert import` writes it (after checking the leaf holds the key's public
//! key), export and list read it, `hardkey serve --key tpm2:file=KEY` serves it (checked with
//! `openssl s_client -showcerts`), and a persistent key, which has no file beside it, is
//! refused with what to do.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "trials outside #[test] fns fail by panicking"
)]

mod common;

use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;

use common::serve::{Serve, selfsign_localhost};
use common::{Hardkey, tool};
use swtpm_tests::{Swtpm, run, trial};

fn chain_beside_a_key_file(tpm: &Swtpm) {
    let hk = Hardkey::new().env("HARDKEY_TCTI", &tpm.tcti());
    hk.ok(&["keygen", "tpm2:", "--alg", "p256", "--out", "web.tss2.pem"]);
    hk.ok(&[
        "keygen",
        "tpm2:",
        "--alg",
        "p256",
        "--out",
        "other.tss2.pem",
    ]);
    let key = "tpm2:file=web.tss2.pem";
    let cert = selfsign_localhost(&hk, key, "web.crt", &[]);
    let other = selfsign_localhost(&hk, "tpm2:file=other.tss2.pem", "other.crt", &[]);
    let pem = std::fs::read_to_string(hk.path(&cert)).unwrap();
    hk.fails(
        &["cert", "import", key, "--from", &other],
        2,
        &["does not match the key"],
    );
    assert!(!hk.path("web.chain.pem").exists());
    hk.ok(&["cert", "import", key, "--from", &cert]);
    assert_eq!(
        std::fs::read_to_string(hk.path("web.chain.pem")).unwrap(),
        pem
    );
    hk.fails(
        &["cert", "import", key, "--from", &cert],
        2,
        &["web.chain.pem", "--force"],
    );
    assert_eq!(hk.ok(&["cert", "export", key]), pem);
    let listed = hk.json(&["cert", "list", key]);
    assert_eq!(
        listed["certificates"][0]["subject"], "CN=localhost",
        "{listed}"
    );
    for stack in ["boring", "rustls"] {
        let server = Serve::start_with(&hk, &["--key", key], stack);
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &server.addr().to_string()])
            .args(["-showcerts", "-CAfile", &cert, "-verify_return_error"])
            .current_dir(hk.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        let begin = stdout.find("-----BEGIN CERTIFICATE-----").unwrap();
        let end = stdout.find("-----END CERTIFICATE-----").unwrap() + 26;
        assert_eq!(&stdout[begin..end], pem, "{stack}");
        server.stop();
    }
    hk.ok(&["cert", "delete", key, "--yes"]);
    assert!(!hk.path("web.chain.pem").exists());
    assert!(hk.path("web.tss2.pem").exists(), "the key file stays");
    // A persistent key has nowhere to keep a chain.
    let made = hk.json(&[
        "keygen",
        "tpm2:",
        "--alg",
        "p256",
        "--persist",
        "0x81000061",
    ]);
    let handle = made["uri"].as_str().unwrap().to_owned();
    hk.fails(
        &["cert", "import", &handle, "--from", &cert],
        2,
        &["persistent TPM key", "--cert FILE"],
    );
    hk.ok(&["delete", &handle, "--yes"]);
    let left = tool(
        "tpm2_getcap",
        &["handles-transient", &format!("--tcti={}", tpm.tcti())],
        std::path::Path::new("/"),
    );
    assert!(left.trim().is_empty(), "transient objects left: {left}");
}

fn main() -> ExitCode {
    run(|tpm: Arc<Swtpm>| {
        vec![trial("chain_beside_a_key_file", move || {
            chain_beside_a_key_file(&tpm)
        })]
    })
}
