//! Certificate chains on a SoftHSM2 token (`hardkey cert import|export|list|delete`, `hardkey
//! serve` with the chain read from the token), checked with independent tools: pkcs11-tool
//! sees what hardkey stored (bytes equal), hardkey serves what pkcs11-tool wrote, and
//! `openssl s_client -showcerts` receives the stored chain byte for byte. Bad input (garbage,
//! a certificate for another key, a missing key, a second import) is refused with exit codes
//! and leaves no certificate object behind.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "trials outside #[test] fns fail by panicking"
)]

mod common;

use std::net::SocketAddr;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;

use common::serve::{Serve, selfsign_localhost};
use common::{Hardkey, run_ok, tool};
use secrecy::ExposeSecret;
use softhsm_tests::{SoftHsm, run_serial, trial};

fn hardkey(hsm: &SoftHsm) -> Hardkey {
    let hk = Hardkey::new().env("HARDKEY_PIN", hsm.user_pin().expose_secret());
    hk.file("pin", hsm.user_pin().expose_secret());
    hk
}

fn key_uri(hsm: &SoftHsm, label: &str) -> String {
    format!("pkcs11:token={};object={label}", hsm.label())
}

/// The certificate objects pkcs11-tool lists on the token (no login: they are public).
fn token_certs(hsm: &SoftHsm) -> String {
    let out = run_ok(hsm.pkcs11_tool().args(["--list-objects", "--type", "cert"]));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cert_count(hsm: &SoftHsm) -> usize {
    token_certs(hsm).matches("Certificate Object").count()
}

/// A root CA and an intermediate CA (software keys, openssl), and a leaf for the token key
/// `uri` issued by the intermediate from a `hardkey csr`: writes `root.pem` and `chain.pem`
/// (leaf then intermediate, as openssl prints them) and returns the chain text.
fn issue_chain(hk: &Hardkey, uri: &str) -> String {
    let dir = hk.dir.path();
    let ext = hk.file(
        "ext.cnf",
        "[ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n\
         [leaf]\nbasicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n\
         subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    );
    tool(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "root.key",
            "-out",
            "root.pem",
            "-subj",
            "/CN=hardkey test root",
            "-days",
            "2",
        ],
        dir,
    );
    tool(
        "openssl",
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "inter.key",
            "-out",
            "inter.csr",
            "-subj",
            "/CN=hardkey test intermediate",
        ],
        dir,
    );
    tool(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            "inter.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-extensions",
            "ca",
            "-out",
            "inter.pem",
        ],
        dir,
    );
    hk.ok(&[
        "csr",
        uri,
        "--subject",
        "CN=localhost",
        "--san",
        "dns:localhost",
        "--out",
        "leaf.csr",
    ]);
    tool(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "inter.pem",
            "-CAkey",
            "inter.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-extensions",
            "leaf",
            "-out",
            "leaf.pem",
        ],
        dir,
    );
    let chain = format!(
        "{}{}",
        std::fs::read_to_string(hk.path("leaf.pem")).unwrap(),
        std::fs::read_to_string(hk.path("inter.pem")).unwrap()
    );
    std::fs::write(hk.path("chain.pem"), &chain).unwrap();
    chain
}

/// The PEM blocks of `text`, each as one string.
fn pem_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line == "-----BEGIN CERTIFICATE-----" {
            current = Some(String::new());
        }
        if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
        }
        if line == "-----END CERTIFICATE-----" {
            out.extend(current.take());
        }
    }
    out
}

/// The chain `openssl s_client -showcerts` receives from `addr`, verified against `ca`.
fn served_chain(dir: &std::path::Path, addr: SocketAddr, ca: &str) -> Vec<String> {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .args([
            "-showcerts",
            "-CAfile",
            ca,
            "-verify_return_error",
            "-verify_hostname",
        ])
        .arg("localhost")
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("Verify return code: 0 (ok)"),
        "s_client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pem_blocks(&stdout)
}

fn import_export_serve_and_delete(hsm: &SoftHsm) {
    let hk = hardkey(hsm);
    let uri = key_uri(hsm, "tc-web");
    let made = hk.json(&["keygen", &uri]);
    let id = made["id"].as_str().unwrap().to_owned();
    let chain = issue_chain(&hk, &uri);
    let before = cert_count(hsm);
    hk.ok(&["cert", "import", &uri, "--from", "chain.pem"]);
    // pkcs11-tool sees the leaf (with the key's id and label) and the intermediate.
    let listing = token_certs(hsm);
    assert_eq!(cert_count(hsm), before + 2, "{listing}");
    assert!(listing.contains(&format!("ID:         {id}")), "{listing}");
    assert!(listing.contains("label:      tc-web"), "{listing}");
    let leaf_der = hk.path("leaf.der");
    run_ok(
        hsm.pkcs11_tool()
            .args(["--read-object", "--type", "cert", "--id", &id, "-o"])
            .arg(&leaf_der),
    );
    tool(
        "openssl",
        &[
            "x509", "-in", "leaf.pem", "-outform", "DER", "-out", "want.der",
        ],
        hk.dir.path(),
    );
    assert_eq!(
        std::fs::read(&leaf_der).unwrap(),
        std::fs::read(hk.path("want.der")).unwrap(),
        "pkcs11-tool read back other bytes than were imported"
    );
    // Exported as imported; an existing --out is kept unless --force.
    assert_eq!(hk.ok(&["cert", "export", &uri]), chain);
    let cert_uri = format!("pkcs11:token={};id={};type=cert", hsm.label(), pct_hex(&id));
    assert_eq!(hk.ok(&["cert", "export", &cert_uri]), chain);
    hk.ok(&["cert", "export", &uri, "-o", "out.pem"]);
    hk.fails(
        &["cert", "export", &uri, "-o", "out.pem"],
        2,
        &["out.pem already exists", "--force"],
    );
    hk.ok(&["cert", "export", &uri, "-o", "out.pem", "--force"]);
    assert_eq!(std::fs::read_to_string(hk.path("out.pem")).unwrap(), chain);
    // Listed with subject, issuer, serial, expiry, id and whether the key is there.
    let listed = hk.json(&["cert", "list", &format!("pkcs11:token={}", hsm.label())]);
    let certs = listed["certificates"].as_array().unwrap();
    let leaf = certs
        .iter()
        .find(|c| c["id"] == id.as_str())
        .unwrap_or_else(|| panic!("no certificate with id {id}: {listed}"));
    assert_eq!(leaf["subject"], "CN=localhost");
    assert_eq!(leaf["issuer"], "CN=hardkey test intermediate");
    assert_eq!(leaf["has_key"], true);
    assert_eq!(leaf["category"], "token-user");
    assert!(leaf["not_after"].as_str().unwrap().ends_with('Z'), "{leaf}");
    assert!(!leaf["serial"].as_str().unwrap().is_empty());
    let inter = certs
        .iter()
        .find(|c| c["subject"] == "CN=hardkey test intermediate")
        .unwrap();
    assert_eq!(inter["has_key"], false);
    assert_eq!(inter["category"], "authority");
    let text = hk.ok(&["cert", "list", &format!("pkcs11:token={}", hsm.label())]);
    assert!(
        text.contains("SUBJECT") && text.contains("CN=localhost"),
        "{text}"
    );

    // Served from the token: the key URI alone, and --cert with a type=cert URI, on both
    // stacks; openssl receives the stored chain byte for byte.
    let want = pem_blocks(&chain);
    for what in [
        vec!["--key", uri.as_str()],
        vec!["--key", uri.as_str(), "--cert", cert_uri.as_str()],
    ] {
        for stack in ["boring", "rustls"] {
            let server = Serve::start_with(&hk, &what, stack);
            let got = served_chain(hk.dir.path(), server.addr(), "root.pem");
            assert_eq!(got, want, "{stack} {what:?}");
            server.stop();
        }
    }
    // An identities entry without cert: the chain beside its key.
    hk.file(
        "ids.toml",
        format!(
            "[[identity]]\nkey = \"{uri}\"\n[[identity]]\nkey = \"{uri}\"\ncert = \"{cert_uri}\"\n"
        ),
    );
    let server = Serve::start_with(&hk, &["--identities", "ids.toml"], "boring");
    assert_eq!(served_chain(hk.dir.path(), server.addr(), "root.pem"), want);
    server.stop();

    // A second import is refused, --force replaces (the intermediate is shared, not doubled).
    hk.fails(
        &["cert", "import", &uri, "--from", "chain.pem"],
        2,
        &["already exists", "--force"],
    );
    assert_eq!(cert_count(hsm), before + 2);
    hk.ok(&["cert", "import", &uri, "--from", "chain.pem", "--force"]);
    assert_eq!(cert_count(hsm), before + 2, "{}", token_certs(hsm));
    assert_eq!(hk.ok(&["cert", "export", &uri]), chain);

    // Delete takes the leaf and the intermediate nothing else needs; the key stays.
    hk.ok(&["cert", "delete", &uri, "--yes"]);
    assert_eq!(cert_count(hsm), before, "{}", token_certs(hsm));
    hk.ok(&["info", &uri]);
    hk.fails(
        &["cert", "export", &uri],
        1,
        &["certificate", "hardkey cert import"],
    );
    hk.fails(
        &["serve", "--key", &uri],
        1,
        &["certificate", "hardkey cert import"],
    );
}

/// `%AB%CD` for the hex id `abcd`.
fn pct_hex(hex: &str) -> String {
    hex.as_bytes()
        .chunks(2)
        .map(|c| format!("%{}", std::str::from_utf8(c).unwrap()))
        .collect()
}

fn bad_input_leaves_no_certificate(hsm: &SoftHsm) {
    let hk = hardkey(hsm);
    let uri = key_uri(hsm, "tc-bad");
    hk.ok(&["keygen", &uri]);
    hk.ok(&["keygen", &key_uri(hsm, "tc-other")]);
    let before = cert_count(hsm);
    hk.file("garbage.pem", b"this is not a certificate\n");
    hk.fails(
        &["cert", "import", &uri, "--from", "garbage.pem"],
        2,
        &["garbage.pem", "expected X.509 certificates"],
    );
    hk.file(
        "bad.pem",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    hk.fails(
        &["cert", "import", &uri, "--from", "bad.pem"],
        2,
        &["bad.pem", "not a valid X.509 certificate"],
    );
    hk.fails(
        &["cert", "import", &uri, "--from", "missing.pem"],
        2,
        &["missing.pem"],
    );
    // A certificate for another key.
    selfsign_localhost(&hk, &key_uri(hsm, "tc-other"), "other.crt", &[]);
    hk.fails(
        &["cert", "import", &uri, "--from", "other.crt"],
        2,
        &["does not match the key", "tc-bad"],
    );
    // No such key.
    hk.fails(
        &[
            "cert",
            "import",
            &key_uri(hsm, "tc-nope"),
            "--from",
            "other.crt",
        ],
        1,
        &["tc-nope"],
    );
    assert_eq!(cert_count(hsm), before, "{}", token_certs(hsm));
    // No chain beside the key: export, delete and serve say so.
    hk.fails(
        &["cert", "export", &uri],
        1,
        &["certificate", "hardkey cert import"],
    );
    hk.fails(&["cert", "delete", &uri, "--yes"], 1, &["certificate"]);
    hk.fails(
        &["cert", "export", &format!("pkcs11:token={}", hsm.label())],
        2,
        &["names a token"],
    );
}

fn a_certificate_written_by_pkcs11_tool_is_served(hsm: &SoftHsm) {
    let hk = hardkey(hsm);
    let uri = key_uri(hsm, "tc-tool");
    let id = hk.json(&["keygen", &uri])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cert = selfsign_localhost(&hk, &uri, "self.crt", &[]);
    tool(
        "openssl",
        &["x509", "-in", &cert, "-outform", "DER", "-out", "self.der"],
        hk.dir.path(),
    );
    run_ok(
        hsm.pkcs11_tool()
            .args(["--write-object", "self.der", "--type", "cert", "--id", &id])
            .current_dir(hk.dir.path()),
    );
    let pem = std::fs::read_to_string(hk.path("self.crt")).unwrap();
    assert_eq!(hk.ok(&["cert", "export", &uri]), pem);
    hk.ok(&["cert", "export", &uri, "--format", "der", "-o", "back.der"]);
    assert_eq!(
        std::fs::read(hk.path("back.der")).unwrap(),
        std::fs::read(hk.path("self.der")).unwrap()
    );
    let listed = hk.json(&["cert", "list", &format!("pkcs11:token={}", hsm.label())]);
    assert!(
        listed["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == id.as_str() && c["has_key"] == true),
        "{listed}"
    );
    for stack in ["boring", "rustls"] {
        let server = Serve::start_with(&hk, &["--key", &uri], stack);
        assert_eq!(
            served_chain(hk.dir.path(), server.addr(), "self.crt"),
            vec![pem.clone()],
            "{stack}"
        );
        server.stop();
    }
    hk.ok(&["cert", "delete", &uri, "--yes"]);
    assert!(!token_certs(hsm).contains(&id), "{}", token_certs(hsm));
}

type Test = (&'static str, fn(&SoftHsm));

fn main() -> ExitCode {
    run_serial(|hsm: Arc<SoftHsm>| {
        let tests: [Test; 3] = [
            (
                "import_export_serve_and_delete",
                import_export_serve_and_delete,
            ),
            (
                "bad_input_leaves_no_certificate",
                bad_input_leaves_no_certificate,
            ),
            (
                "a_certificate_written_by_pkcs11_tool_is_served",
                a_certificate_written_by_pkcs11_tool_is_served,
            ),
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
