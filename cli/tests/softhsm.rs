//! The `hardkey` command against a SoftHSM2 token: token administration, key provisioning,
//! signatures checked by openssl, import, delete, bench, `hardkey serve` on token keys (TLS 1.3
//! and TLS 1.2 handshakes on both stacks checked by curl, `openssl s_client` and rustls), and
//! bad input (wrong PIN, unknown key, duplicate label) with its exit codes and no half-made
//! keys.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "trials outside #[test] fns fail by panicking"
)]

mod common;

use std::process::ExitCode;
use std::sync::Arc;

use common::serve::{KeyType, Serve, Stopped, check_reload, check_serve, selfsign_localhost};
use common::{Hardkey, check_certificates, openssl_verify, run_ok, tool};
use secrecy::ExposeSecret;
use softhsm_tests::{SoftHsm, run_serial, trial};

/// A scratch directory with the token's user and SO PINs in files.
fn hardkey(hsm: &SoftHsm) -> Hardkey {
    let hk = Hardkey::new();
    hk.file("pin", hsm.user_pin().expose_secret());
    hk.file("so-pin", hsm.so_pin().expose_secret());
    hk.file("wrong-pin", "99999999");
    hk
}

fn key_uri(hsm: &SoftHsm, label: &str) -> String {
    format!("pkcs11:token={};object={label}", hsm.label())
}

/// The private keys on the token, as pkcs11-tool lists them.
fn private_keys(hsm: &SoftHsm) -> usize {
    let out = run_ok(
        hsm.pkcs11_tool()
            .args(["--list-objects", "--type", "privkey", "--login", "--pin"])
            .arg(hsm.user_pin().expose_secret()),
    );
    String::from_utf8_lossy(&out.stdout)
        .matches("Private Key Object")
        .count()
}

fn provision_sign_and_verify_with_openssl(hsm: &SoftHsm) {
    let hk = hardkey(hsm);
    let msg = hk.file("msg", b"signed by a token");
    for (alg, label, schemes) in [
        ("p256", "cli-p256", &["ecdsa-p256-sha256"][..]),
        ("p384", "cli-p384", &["ecdsa-p384-sha384"][..]),
        (
            "rsa2048",
            "cli-rsa",
            &["rsa-pkcs1-sha256", "rsa-pss-sha256"][..],
        ),
        ("ed25519", "cli-ed25519", &["ed25519"][..]),
        ("ed448", "cli-ed448", &["ed448"][..]),
    ] {
        let uri = key_uri(hsm, label);
        let made = hk.json(&["keygen", &uri, "--alg", alg, "--pin-file", "pin"]);
        assert_eq!(made["label"], label);
        assert_eq!(made["algorithm"], alg);
        hk.ok(&["pubkey", &uri, "--out", "pub.pem", "--pin-file", "pin"]);
        for scheme in schemes {
            hk.ok(&[
                "sign",
                &uri,
                "--scheme",
                scheme,
                "--in",
                &msg,
                "--out",
                "sig",
                "--pin-file",
                "pin",
            ]);
            openssl_verify(hk.dir.path(), scheme, "pub.pem", "msg", "sig");
            check_certificates(&hk, &uri, scheme, &["--pin-file", "pin"]);
        }
        // pkcs11-tool reads the same public key off the token (its EC export fails under
        // OpenSSL 3 with "cannot create EVP_PKEY", so RSA only).
        if !alg.starts_with("rsa") {
            continue;
        }
        let id = made["id"].as_str().unwrap();
        let der = hk.path("pub.der");
        run_ok(
            hsm.pkcs11_tool()
                .args(["--read-object", "--type", "pubkey", "--id", id, "-o"])
                .arg(&der),
        );
        let theirs = tool(
            "openssl",
            &["pkey", "-pubin", "-inform", "DER", "-in", "pub.der"],
            hk.dir.path(),
        );
        assert_eq!(theirs, std::fs::read_to_string(hk.path("pub.pem")).unwrap());
    }
    // The PIN can come from stdin or the environment too.
    let mut cmd = hk.command(&["info", &key_uri(hsm, "cli-p256"), "--pin-file", "-"]);
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(
        child.stdin.take().unwrap(),
        "{}",
        hsm.user_pin().expose_secret()
    )
    .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    let env = Hardkey::new().env("HARDKEY_PIN", hsm.user_pin().expose_secret());
    let listed = env.json(&["list", &format!("pkcs11:token={}", hsm.label())]);
    let labels: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["label"].as_str())
        .collect();
    for label in ["cli-p256", "cli-p384", "cli-rsa"] {
        assert!(labels.contains(&label), "{labels:?}");
    }
}

/// Ed25519 on the token beyond sign/csr/selfsign: `hardkey verify`, a digest refused (EdDSA
/// signs the message itself), an OpenSSL-made key imported, and a token key that OpenSSL's
/// pkcs11-tool made (CKA_EC_PARAMS as the PrintableString "edwards25519") read back.
fn ed25519_verify_digest_import_and_foreign_keys(hsm: &SoftHsm) {
    let hk = hardkey(hsm);
    let msg = hk.file("msg", b"signed by an Ed25519 token key");
    let uri = key_uri(hsm, "cli-ed-more");
    hk.ok(&["keygen", &uri, "--alg", "ed25519", "--pin-file", "pin"]);
    hk.ok(&["pubkey", &uri, "--out", "pub.pem", "--pin-file", "pin"]);
    hk.ok(&[
        "sign",
        &uri,
        "--in",
        &msg,
        "--out",
        "sig",
        "--pin-file",
        "pin",
    ]);
    assert_eq!(std::fs::read(hk.path("sig")).unwrap().len(), 64);
    let verified = hk.json(&[
        "verify", "--pubkey", "pub.pem", "--in", &msg, "--sig", "sig",
    ]);
    assert_eq!(verified["scheme"], "ed25519");
    openssl_verify(hk.dir.path(), "ed25519", "pub.pem", "msg", "sig");
    // A changed message does not verify.
    let other = hk.file("other", b"signed by an Ed25519 token key!");
    let out = hk.run(&[
        "verify", "--pubkey", "pub.pem", "--in", &other, "--sig", "sig",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // --digest: refused, saying why, before the token is asked.
    let digest = hk.file("digest", [7u8; 64]);
    let out = hk.run(&[
        "sign",
        &uri,
        "--digest",
        "--in",
        &digest,
        "--out",
        "dsig",
        "--pin-file",
        "pin",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("whole message") && err.contains("--digest"),
        "{err}"
    );
    assert!(!hk.path("dsig").exists());

    // An OpenSSL key, imported: its public key is OpenSSL's, and openssl verifies.
    tool(
        "openssl",
        &["genpkey", "-algorithm", "ed25519", "-out", "ossl.pem"],
        hk.dir.path(),
    );
    tool(
        "openssl",
        &["pkey", "-in", "ossl.pem", "-pubout", "-out", "ossl.pub"],
        hk.dir.path(),
    );
    let imported = key_uri(hsm, "cli-ed-imported");
    hk.ok(&[
        "import",
        &imported,
        "--from",
        "ossl.pem",
        "--pin-file",
        "pin",
    ]);
    hk.ok(&[
        "pubkey",
        &imported,
        "--out",
        "imported.pub",
        "--pin-file",
        "pin",
    ]);
    assert_eq!(
        std::fs::read_to_string(hk.path("imported.pub")).unwrap(),
        std::fs::read_to_string(hk.path("ossl.pub")).unwrap()
    );
    hk.ok(&[
        "sign",
        &imported,
        "--in",
        &msg,
        "--out",
        "isig",
        "--pin-file",
        "pin",
    ]);
    openssl_verify(hk.dir.path(), "ed25519", "ossl.pub", "msg", "isig");

    // pkcs11-tool's key: EC_PARAMS PrintableString, EC_POINT an OCTET STRING.
    run_ok(
        hsm.pkcs11_tool()
            .args(["--keypairgen", "--key-type", "EC:edwards25519"])
            .args(["--label", "cli-ed-foreign", "--id", "ed25519f"]),
    );
    let foreign = key_uri(hsm, "cli-ed-foreign");
    let info = hk.json(&["info", &foreign, "--pin-file", "pin"]);
    assert_eq!(info["algorithm"], "ed25519", "{info}");
    hk.ok(&[
        "pubkey",
        &foreign,
        "--out",
        "foreign.pub",
        "--pin-file",
        "pin",
    ]);
    hk.ok(&[
        "sign",
        &foreign,
        "--in",
        &msg,
        "--out",
        "fsig",
        "--pin-file",
        "pin",
    ]);
    openssl_verify(hk.dir.path(), "ed25519", "foreign.pub", "msg", "fsig");
}

fn bad_input_is_refused_cleanly(hsm: &SoftHsm) {
    let hk = hardkey(hsm);
    let uri = key_uri(hsm, "cli-bad");
    hk.ok(&["keygen", &uri, "--pin-file", "pin"]);
    let keys = private_keys(hsm);
    hk.file("msg", b"m");
    // Wrong PIN: exit 1, names the token and the PIN, no output file.
    hk.fails(
        &[
            "sign",
            &uri,
            "--in",
            "msg",
            "--out",
            "sig",
            "--pin-file",
            "wrong-pin",
        ],
        1,
        &["authentication failed", hsm.label(), "PIN"],
    );
    assert!(!hk.path("sig").exists());
    // Unknown key, unknown token.
    hk.fails(
        &["info", &key_uri(hsm, "no-such-key"), "--pin-file", "pin"],
        1,
        &["no key matches", "hardkey list"],
    );
    hk.fails(
        &[
            "info",
            "pkcs11:token=no-such-token;object=x",
            "--pin-file",
            "pin",
        ],
        1,
        &["tokens present", hsm.label()],
    );
    // A second key with the same label, an unsupported algorithm for PKCS#11 generation of
    // a TPM-only location: refused before anything is made.
    hk.fails(
        &["keygen", &uri, "--pin-file", "pin"],
        2,
        &["already exists"],
    );
    hk.fails(
        &[
            "keygen",
            &uri,
            "--persist",
            "0x81000010",
            "--pin-file",
            "pin",
        ],
        2,
        &["for TPM keys"],
    );
    // No PIN and no terminal.
    hk.fails(
        &["info", &uri],
        2,
        &["no user PIN", "--pin-file", "HARDKEY_PIN"],
    );
    // delete without --yes and without a terminal: refused, the key stays.
    hk.fails(&["delete", &uri, "--pin-file", "pin"], 2, &["--yes"]);
    assert_eq!(private_keys(hsm), keys, "no key made or lost by bad input");
    hk.ok(&["delete", &uri, "--yes", "--pin-file", "pin"]);
    assert_eq!(private_keys(hsm), keys - 1);
    hk.fails(&["info", &uri, "--pin-file", "pin"], 1, &["no key matches"]);
}

fn import_a_pkcs8_key(hsm: &SoftHsm) {
    let hk = hardkey(hsm);
    tool(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ec.pem",
        ],
        hk.dir.path(),
    );
    tool(
        "openssl",
        &["pkey", "-in", "ec.pem", "-pubout", "-out", "ec.pub"],
        hk.dir.path(),
    );
    let uri = key_uri(hsm, "cli-imported");
    let made = hk.json(&["import", &uri, "--from", "ec.pem", "--pin-file", "pin"]);
    assert_eq!(made["label"], "cli-imported");
    hk.file("msg", b"imported");
    hk.ok(&[
        "sign",
        &uri,
        "--in",
        "msg",
        "--out",
        "sig",
        "--pin-file",
        "pin",
    ]);
    openssl_verify(hk.dir.path(), "ecdsa-p256-sha256", "ec.pub", "msg", "sig");
    // A traditional-format key gets the conversion command.
    tool(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "rsa.pem",
        ],
        hk.dir.path(),
    );
    tool(
        "openssl",
        &[
            "rsa",
            "-in",
            "rsa.pem",
            "-traditional",
            "-out",
            "rsa-trad.pem",
        ],
        hk.dir.path(),
    );
    hk.fails(
        &[
            "import",
            &key_uri(hsm, "x"),
            "--from",
            "rsa-trad.pem",
            "--pin-file",
            "pin",
        ],
        2,
        &["RSA PRIVATE KEY", "openssl pkcs8 -topk8"],
    );
}

fn token_init_init_pin_and_change_pin(hsm: &SoftHsm) {
    let hk = hardkey(hsm);
    let slots = hk.json(&["token", "list", "--slots"]);
    let free = slots["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["token"]["initialized"] == false)
        .expect("SoftHSM offers a free slot");
    let slot = free["slot_id"].as_u64().unwrap().to_string();
    hk.file("new-so", "new-so-pin");
    hk.file("user1", "user-pin-1");
    hk.file("user2", "user-pin-2");
    let label = format!("cli-{}", std::process::id());
    let token = hk.json(&[
        "token",
        "init",
        "--slot",
        &slot,
        "--label",
        &label,
        "--so-pin-file",
        "new-so",
    ]);
    assert_eq!(token["label"].as_str(), Some(label.as_str()));
    assert_eq!(token["user_pin_initialized"], false);
    let t = format!("pkcs11:token={label}");
    hk.ok(&[
        "token",
        "init-pin",
        &t,
        "--so-pin-file",
        "new-so",
        "--new-pin-file",
        "user1",
    ]);
    let info = hk.json(&["token", "info", &t]);
    assert_eq!(info["token"]["user_pin_initialized"], true);
    hk.ok(&["keygen", &format!("{t};object=k"), "--pin-file", "user1"]);
    hk.fails(
        &[
            "token",
            "change-pin",
            &t,
            "--pin-file",
            "user2",
            "--new-pin-file",
            "user1",
        ],
        1,
        &["user PIN", &label],
    );
    hk.ok(&[
        "token",
        "change-pin",
        &t,
        "--pin-file",
        "user1",
        "--new-pin-file",
        "user2",
    ]);
    hk.fails(
        &["list", &t, "--pin-file", "user1"],
        1,
        &["authentication failed"],
    );
    let listed = hk.json(&["list", &t, "--pin-file", "user2"]);
    assert_eq!(
        listed["keys"].as_array().unwrap().len(),
        1,
        "the key survived"
    );
    hk.file("so2", "so-pin-2");
    hk.ok(&[
        "token",
        "change-pin",
        &t,
        "--so",
        "--so-pin-file",
        "new-so",
        "--new-pin-file",
        "so2",
    ]);
    // Initializing an initialized token is refused without --reinitialize.
    let slot_now = info["token"]["slot_id"].as_u64().unwrap().to_string();
    hk.fails(
        &[
            "token",
            "init",
            "--slot",
            &slot_now,
            "--label",
            "again",
            "--so-pin-file",
            "so2",
        ],
        2,
        &["--reinitialize"],
    );
    // Independent view: pkcs11-tool lists the token with its label.
    let out = hsm
        .pkcs11_tool()
        .arg("--list-token-slots")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&label));
}

fn bench_reports_rates(hsm: &SoftHsm) {
    let hk = hardkey(hsm);
    let uri = key_uri(hsm, "cli-bench");
    hk.ok(&["keygen", &uri, "--pin-file", "pin"]);
    let report = hk.json(&[
        "bench",
        &uri,
        "--duration",
        "500ms",
        "--concurrency",
        "2",
        "--pin-file",
        "pin",
    ]);
    assert!(report["signatures"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["signatures_per_second"].as_f64().unwrap() > 0.0);
    hk.ok(&["delete", &uri, "--yes", "--pin-file", "pin"]);
}

/// `hardkey serve` on a P-256 and an RSA-2048 key of the token (the PIN in HARDKEY_PIN), each
/// with a certificate `hardkey selfsign` made: every handshake of [`check_serve`] on both
/// stacks; then the keys are deleted.
fn serve_token_keys_over_tls(hsm: &SoftHsm) {
    let hk = Hardkey::new().env("HARDKEY_PIN", hsm.user_pin().expose_secret());
    let keys = private_keys(hsm);
    for key_type in [KeyType::P256, KeyType::Rsa2048] {
        let alg = key_type.alg();
        let label = format!("cli-serve-{alg}");
        let uri = key_uri(hsm, &label);
        let made = hk.json(&["keygen", &uri, "--alg", alg]);
        assert_eq!(made["label"], label.as_str(), "{made}");
        assert_eq!(made["algorithm"], alg, "{made}");
        let cert = selfsign_localhost(&hk, &uri, &format!("{alg}.crt"), &[]);
        let on = format!("on key '{label}' (token '{}')", hsm.label());
        check_serve(&hk, &uri, &cert, key_type, &on);
        if key_type == KeyType::P256 {
            // The URI's max-sessions wins over serve's default of 4 (issue 13, item 0).
            for (query, sessions) in [("", 4), ("?max-sessions=16", 16)] {
                let server = Serve::start(&hk, &format!("{uri}{query}"), &cert, "boring");
                let Stopped { log, .. } = server.stop();
                let expected = format!("{on}, {sessions} device operation(s) at once");
                assert!(
                    log.contains(&expected),
                    "{query}: expected '{expected}' in:\n{log}"
                );
            }
        }
        hk.ok(&["delete", &uri, "--yes"]);
    }
    assert_eq!(private_keys(hsm), keys, "the served keys are deleted");
}

/// Reload without restart on token keys ([`check_reload`]): a P-256 key with three
/// certificates, an RSA key that takes over the entry, and a token that does not exist.
fn serve_reloads_token_keys(hsm: &SoftHsm) {
    let hk = Hardkey::new().env("HARDKEY_PIN", hsm.user_pin().expose_secret());
    let (a, b) = (key_uri(hsm, "cli-reload-a"), key_uri(hsm, "cli-reload-b"));
    hk.json(&["keygen", &a, "--alg", "p256"]);
    hk.json(&["keygen", &b, "--alg", "rsa2048"]);
    check_reload(&hk, &a, &b, "pkcs11:token=no-such-token;object=x", &[]);
    hk.ok(&["delete", &a, "--yes"]);
    hk.ok(&["delete", &b, "--yes"]);
}

type Test = (&'static str, fn(&SoftHsm));

/// Security finding 8: labels are shown escaped (a label holding terminal escape sequences
/// cannot drive the terminal), and no label length makes a listing panic.
fn hostile_labels_are_shown_safely(hsm: &SoftHsm) {
    let hk = hardkey(hsm);
    let token = format!("pkcs11:token={}", hsm.label());
    let hostile = "evil\x1b[2J\x1b]0;pwned\x07\u{202e}";
    let long = "L".repeat(65_536);
    for label in [hostile, long.as_str()] {
        hk.ok(&["keygen", &token, "--label", label, "--pin-file", "pin"]);
    }
    let listing = hk.run(&["list", &token, "--pin-file", "pin"]);
    let stdout = String::from_utf8_lossy(&listing.stdout);
    let stderr = String::from_utf8_lossy(&listing.stderr);
    assert!(listing.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for out in [&stdout, &stderr] {
        assert!(
            !out.contains('\x1b') && !out.contains('\x07') && !out.contains('\u{202e}'),
            "raw control characters printed:\n{out:?}"
        );
    }
    assert!(stdout.contains("evil\\x1b[2J"), "{stdout}");
    assert!(stdout.contains(&long), "the long label is shown whole");
    // info, and the key's text after keygen, are escaped too; JSON carries the label exactly.
    let uri = format!(
        "pkcs11:token={};object=evil%1B%5B2J%1B%5D0%3Bpwned%07%E2%80%AE",
        hsm.label()
    );
    let info = hk.ok(&["info", &uri, "--pin-file", "pin"]);
    assert!(
        !info.contains('\x1b') && info.contains("evil\\x1b"),
        "{info}"
    );
    let json = hk.json(&["list", &token, "--pin-file", "pin"]);
    let labels: Vec<&str> = json["keys"]
        .as_array()
        .or(json.as_array())
        .unwrap()
        .iter()
        .filter_map(|k| k["label"].as_str())
        .collect();
    assert!(
        labels.contains(&hostile) && labels.contains(&long.as_str()),
        "{labels:?}"
    );
    for label in [hostile, long.as_str()] {
        let id = hk.json(&[
            "info",
            &format!("{token};object={}", pct(label)),
            "--pin-file",
            "pin",
        ])["uri"]
            .as_str()
            .unwrap()
            .to_owned();
        hk.ok(&["delete", &id, "--yes", "--pin-file", "pin"]);
    }
}

/// Percent-encodes every byte outside the unreserved set (for a label in a URI).
fn pct(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn main() -> ExitCode {
    run_serial(|hsm: Arc<SoftHsm>| {
        let tests: [Test; 9] = [
            (
                "hostile_labels_are_shown_safely",
                hostile_labels_are_shown_safely,
            ),
            (
                "ed25519_verify_digest_import_and_foreign_keys",
                ed25519_verify_digest_import_and_foreign_keys,
            ),
            (
                "provision_sign_and_verify_with_openssl",
                provision_sign_and_verify_with_openssl,
            ),
            ("bad_input_is_refused_cleanly", bad_input_is_refused_cleanly),
            ("import_a_pkcs8_key", import_a_pkcs8_key),
            (
                "token_init_init_pin_and_change_pin",
                token_init_init_pin_and_change_pin,
            ),
            ("bench_reports_rates", bench_reports_rates),
            ("serve_token_keys_over_tls", serve_token_keys_over_tls),
            ("serve_reloads_token_keys", serve_reloads_token_keys),
        ];
        tests
            .into_iter()
            .map(|(name, test)| {
                let hsm = Arc::clone(&hsm);
                trial(name, move || test(&hsm))
            })
            .collect()
    })
}
