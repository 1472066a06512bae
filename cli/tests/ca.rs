//! `hardkey ca sign`, `hardkey decrypt` and `hardkey encrypt` with keys on SoftHSM2 and swtpm,
//! checked by openssl: chains of a root, an intermediate and leaves verify with `openssl
//! verify`, from requests made by `openssl req` and by `hardkey csr`; altered requests, a CA
//! certificate of another key and an existing output are refused; ciphertexts of `openssl
//! pkeyutl` decrypt on the devices and `hardkey encrypt` ciphertexts decrypt in openssl.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "trials outside #[test] fns fail by panicking"
)]

mod common;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use common::{Hardkey, tool};
use secrecy::ExposeSecret;
use softhsm_tests::{SoftHsm, run_serial, trial};
use swtpm_tests::Swtpm;

/// openssl's options for RSA-OAEP with SHA-256 and MGF1-SHA-256.
const OAEP_SHA256: [&str; 6] = [
    "-pkeyopt",
    "rsa_padding_mode:oaep",
    "-pkeyopt",
    "rsa_oaep_md:sha256",
    "-pkeyopt",
    "rsa_mgf1_md:sha256",
];

fn token(hsm: &SoftHsm) -> Hardkey {
    Hardkey::new().env("HARDKEY_PIN", hsm.user_pin().expose_secret())
}

fn tpm(tpm: &Swtpm) -> Hardkey {
    Hardkey::new().env("HARDKEY_TCTI", &tpm.tcti())
}

fn assert_no_transients(tpm: &Swtpm) {
    let left = tool(
        "tpm2_getcap",
        &["handles-transient", &format!("--tcti={}", tpm.tcti())],
        Path::new("/"),
    );
    assert!(left.trim().is_empty(), "transient objects left: {left}");
}

/// `openssl verify` of `leaf` against `root`, with `untrusted` intermediates.
fn openssl_verifies(hk: &Hardkey, root: &str, untrusted: Option<&str>, leaf: &str) {
    let mut args = vec!["verify", "-CAfile", root];
    if let Some(inter) = untrusted {
        args.extend(["-untrusted", inter]);
    }
    args.push(leaf);
    let out = tool("openssl", &args, hk.dir.path());
    assert!(out.contains(&format!("{leaf}: OK")), "{out}");
}

fn openssl_text(hk: &Hardkey, cert: &str) -> String {
    tool(
        "openssl",
        &["x509", "-in", cert, "-noout", "-text"],
        hk.dir.path(),
    )
}

/// A request made by `openssl req -new` with a fresh software key of `newkey`
/// (`rsa:2048`, `ec:p256.params`...).
fn openssl_csr(hk: &Hardkey, newkey: &str, name: &str, out: &str) {
    tool(
        "openssl",
        &[
            "req",
            "-new",
            "-newkey",
            newkey,
            "-nodes",
            "-keyout",
            &format!("{out}.key"),
            "-subj",
            &format!("/CN={name}/O=hardkey test"),
            "-addext",
            &format!("subjectAltName=DNS:{name},IP:127.0.0.1"),
            "-out",
            out,
        ],
        hk.dir.path(),
    );
}

/// The CA profile, the leaf profile and the refusals, with the root CA key at `root_uri`
/// and the intermediate CA key at `inter_uri` (keys already made).
fn issue_chains(hk: &Hardkey, root_uri: &str, inter_uri: &str) {
    hk.ok(&[
        "selfsign",
        root_uri,
        "--subject",
        "CN=hardkey test root,O=hardkey test",
        "--ca",
        "--days",
        "30",
        "--out",
        "root.pem",
    ]);
    tool(
        "openssl",
        &["ecparam", "-name", "prime256v1", "-out", "p256.params"],
        hk.dir.path(),
    );
    // Leaves from openssl requests (RSA and EC keys) and one made by hardkey csr.
    openssl_csr(hk, "rsa:2048", "rsa.example", "rsa.csr");
    openssl_csr(hk, "ec:p256.params", "ec.example", "ec.csr");
    hk.ok(&["keygen", "file:web.key", "--alg", "p384"]);
    hk.ok(&[
        "csr",
        "file:web.key",
        "--subject",
        "CN=web.example",
        "--san",
        "dns:web.example",
        "--out",
        "web.csr",
    ]);
    for (csr, name) in [
        ("rsa.csr", "rsa.example"),
        ("ec.csr", "ec.example"),
        ("web.csr", "web.example"),
    ] {
        let leaf = format!("{csr}.pem");
        let report = hk.json(&[
            "ca",
            "sign",
            "--ca-key",
            root_uri,
            "--ca-cert",
            "root.pem",
            "--csr",
            csr,
            "--days",
            "7",
            "-o",
            &leaf,
        ]);
        assert_eq!(report["profile"], "leaf", "{report}");
        openssl_verifies(hk, "root.pem", None, &leaf);
        let text = openssl_text(hk, &leaf);
        assert!(text.contains(&format!("DNS:{name}")), "{text}");
        assert!(text.contains("CA:FALSE"), "{text}");
        assert!(
            text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
            "{text}"
        );
        assert!(
            text.contains("Issuer: O = hardkey test, CN = hardkey test root"),
            "{text}"
        );
        assert_eq!(
            text.contains("Key Encipherment"),
            csr == "rsa.csr",
            "{text}"
        );
        // The leaf holds the request's key.
        let theirs = tool(
            "openssl",
            &["req", "-in", csr, "-noout", "-pubkey"],
            hk.dir.path(),
        );
        let ours = tool(
            "openssl",
            &["x509", "-in", &leaf, "-noout", "-pubkey"],
            hk.dir.path(),
        );
        assert_eq!(theirs, ours);
    }
    // Given names replace the request's.
    hk.ok(&[
        "ca",
        "sign",
        "--ca-key",
        root_uri,
        "--ca-cert",
        "root.pem",
        "--csr",
        "rsa.csr",
        "--days",
        "7",
        "--san",
        "dns:other.example",
        "--serial",
        "0a:0b",
        "-o",
        "given.pem",
    ]);
    let text = openssl_text(hk, "given.pem");
    assert!(
        text.contains("DNS:other.example") && !text.contains("DNS:rsa.example"),
        "{text}"
    );
    assert!(text.contains("Serial Number: 2571 (0xa0b)"), "{text}");

    // An intermediate CA (path length 0) on the second device key, and a leaf under it.
    hk.ok(&[
        "csr",
        inter_uri,
        "--subject",
        "CN=hardkey test intermediate",
        "--out",
        "inter.csr",
    ]);
    hk.ok(&[
        "ca",
        "sign",
        "--ca-key",
        root_uri,
        "--ca-cert",
        "root.pem",
        "--csr",
        "inter.csr",
        "--profile",
        "ca",
        "--days",
        "20",
        "-o",
        "inter.pem",
    ]);
    let text = openssl_text(hk, "inter.pem");
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
    hk.ok(&[
        "ca",
        "sign",
        "--ca-key",
        inter_uri,
        "--ca-cert",
        "inter.pem",
        "--csr",
        "ec.csr",
        "--days",
        "7",
        "-o",
        "under-inter.pem",
    ]);
    openssl_verifies(hk, "root.pem", Some("inter.pem"), "under-inter.pem");
    // Without the intermediate, openssl does not accept it: the chain is what was checked.
    let alone = hk.dir.path().join("root.pem");
    let out = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&alone)
        .arg(hk.path("under-inter.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    // pathlen:0 forbids a CA below the intermediate.
    hk.fails(
        &[
            "ca",
            "sign",
            "--ca-key",
            inter_uri,
            "--ca-cert",
            "inter.pem",
            "--csr",
            "web.csr",
            "--profile",
            "ca",
            "--days",
            "7",
            "-o",
            "no.pem",
        ],
        2,
        &["pathlen", "--profile leaf"],
    );

    // Refusals: none of them leaves a file.
    let before = hk.files();
    // A request altered after it was signed (one bit of its subject).
    let der = hk.path("ec.der");
    tool(
        "openssl",
        &["req", "-in", "ec.csr", "-outform", "DER", "-out", "ec.der"],
        hk.dir.path(),
    );
    let mut bytes = std::fs::read(&der).unwrap();
    let at = bytes
        .windows(b"ec.example".len())
        .position(|w| w == b"ec.example")
        .unwrap();
    bytes[at] ^= 0x01;
    hk.file("altered.der", &bytes);
    let before_altered = hk.files();
    hk.fails(
        &[
            "ca",
            "sign",
            "--ca-key",
            root_uri,
            "--ca-cert",
            "root.pem",
            "--csr",
            "altered.der",
            "--days",
            "7",
            "-o",
            "no.pem",
        ],
        2,
        &["altered.der", "signature is invalid", "refusing to issue"],
    );
    // The CA certificate of another key.
    hk.fails(
        &[
            "ca",
            "sign",
            "--ca-key",
            inter_uri,
            "--ca-cert",
            "root.pem",
            "--csr",
            "ec.csr",
            "--days",
            "7",
            "-o",
            "no.pem",
        ],
        2,
        &["is not the CA key's", "--ca-cert"],
    );
    // A leaf certificate as the CA.
    hk.fails(
        &[
            "ca",
            "sign",
            "--ca-key",
            "file:web.key",
            "--ca-cert",
            "ec.csr.pem",
            "--csr",
            "ec.csr",
            "--days",
            "7",
            "-o",
            "no.pem",
        ],
        2,
        &["is not the CA key's"],
    );
    // Longer than the CA certificate.
    hk.fails(
        &[
            "ca",
            "sign",
            "--ca-key",
            root_uri,
            "--ca-cert",
            "root.pem",
            "--csr",
            "ec.csr",
            "-o",
            "no.pem",
        ],
        2,
        &["--days 29 or less"],
    );
    // An output that exists is never replaced.
    let kept = std::fs::read(hk.path("given.pem")).unwrap();
    hk.fails(
        &[
            "ca",
            "sign",
            "--ca-key",
            root_uri,
            "--ca-cert",
            "root.pem",
            "--csr",
            "ec.csr",
            "--days",
            "7",
            "-o",
            "given.pem",
        ],
        2,
        &["already exists", "never overwrites"],
    );
    assert_eq!(std::fs::read(hk.path("given.pem")).unwrap(), kept);
    assert_eq!(hk.files(), before_altered);
    assert!(before.len() + 2 == before_altered.len(), "{before:?}");
}

fn ca_on_softhsm(hsm: &SoftHsm) {
    for (alg, inter_alg) in [("rsa2048", "p384"), ("p256", "rsa2048")] {
        let hk = token(hsm);
        let root = format!("pkcs11:token={};object=ca-root-{alg}", hsm.label());
        let inter = format!("pkcs11:token={};object=ca-inter-{alg}", hsm.label());
        hk.ok(&["keygen", &root, "--alg", alg]);
        hk.ok(&["keygen", &inter, "--alg", inter_alg]);
        issue_chains(&hk, &root, &inter);
        for uri in [&root, &inter] {
            hk.ok(&["delete", uri, "--yes"]);
        }
    }
}

fn ca_on_swtpm(tpm_fixture: &Swtpm) {
    let hk = tpm(tpm_fixture);
    hk.ok(&["keygen", "tpm2:", "--alg", "p256", "--out", "root.tss2.pem"]);
    hk.ok(&[
        "keygen",
        "tpm2:",
        "--alg",
        "rsa2048",
        "--out",
        "inter.tss2.pem",
    ]);
    issue_chains(&hk, "tpm2:file=root.tss2.pem", "tpm2:file=inter.tss2.pem");
    assert_no_transients(tpm_fixture);
}

/// openssl's SHA-256 OAEP ciphertexts decrypt with `uri`; SHA-1 ones fail with one message;
/// hardkey encrypt to the key decrypts again.
fn decrypt_openssl_ciphertexts(hk: &Hardkey, uri: &str) {
    hk.ok(&["pubkey", uri, "--out", "rsa.pub"]);
    hk.file("secret", b"a 32-byte symmetric key, say....");
    let mut args = vec![
        "pkeyutl", "-encrypt", "-pubin", "-inkey", "rsa.pub", "-in", "secret", "-out", "ct",
    ];
    args.extend(OAEP_SHA256);
    tool("openssl", &args, hk.dir.path());
    hk.ok(&["decrypt", "--key", uri, "ct", "-o", "plain"]);
    assert_eq!(
        std::fs::read(hk.path("plain")).unwrap(),
        b"a 32-byte symmetric key, say...."
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(hk.path("plain"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // To stdout, as openssl pkeyutl does.
    assert_eq!(
        hk.ok(&["decrypt", "--key", uri, "ct"]),
        "a 32-byte symmetric key, say...."
    );
    // An existing output is kept.
    hk.fails(
        &["decrypt", "--key", uri, "ct", "-o", "plain"],
        2,
        &["already exists"],
    );
    // openssl's default OAEP (SHA-1), and an altered ciphertext: one message, no detail.
    tool(
        "openssl",
        &[
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-inkey",
            "rsa.pub",
            "-in",
            "secret",
            "-out",
            "ct-sha1",
            "-pkeyopt",
            "rsa_padding_mode:oaep",
        ],
        hk.dir.path(),
    );
    let mut altered = std::fs::read(hk.path("ct")).unwrap();
    altered[17] ^= 0x80;
    hk.file("ct-altered", &altered);
    let mut messages = Vec::new();
    for ct in ["ct-sha1", "ct-altered"] {
        messages.push(hk.fails(
            &["decrypt", "--key", uri, ct, "-o", "no"],
            1,
            &["decryption failed", "rsa_oaep_md:sha256"],
        ));
    }
    assert_eq!(messages[0], messages[1]);
    hk.fails(
        &[
            "decrypt",
            "--key",
            uri,
            "ct",
            "--scheme",
            "oaep-sha1",
            "-o",
            "no",
        ],
        2,
        &["SHA-1", "--scheme oaep-sha256"],
    );
    hk.fails(
        &["decrypt", "--key", uri, "secret", "-o", "no"],
        2,
        &["ciphertext is 32 bytes"],
    );
    // hardkey encrypt to the device key, decrypted on the device.
    hk.ok(&["encrypt", "--key", uri, "secret", "-o", "ct2"]);
    hk.ok(&["decrypt", "--key", uri, "ct2", "-o", "plain2"]);
    assert_eq!(
        std::fs::read(hk.path("plain2")).unwrap(),
        b"a 32-byte symmetric key, say...."
    );
    assert!(!hk.files().contains(&"no".to_owned()));
}

/// hardkey encrypt to a software key's public key (and certificate) decrypts in openssl; too
/// long a plaintext and an EC key are refused.
fn encrypt_for_openssl(hk: &Hardkey) {
    hk.ok(&["keygen", "file:soft.key", "--alg", "rsa2048"]);
    hk.ok(&["pubkey", "file:soft.key", "--out", "soft.pub"]);
    hk.file("m", b"for openssl");
    hk.ok(&["encrypt", "--pubkey", "soft.pub", "m", "-o", "m.ct"]);
    let mut args = vec![
        "pkeyutl", "-decrypt", "-inkey", "soft.key", "-in", "m.ct", "-out", "m.out",
    ];
    args.extend(OAEP_SHA256);
    tool("openssl", &args, hk.dir.path());
    assert_eq!(std::fs::read(hk.path("m.out")).unwrap(), b"for openssl");
    hk.file("long", vec![7u8; 191]);
    hk.fails(
        &["encrypt", "--pubkey", "soft.pub", "long", "-o", "no"],
        2,
        &["191 bytes", "at most 190"],
    );
    hk.file("fits", vec![7u8; 190]);
    hk.ok(&["encrypt", "--pubkey", "soft.pub", "fits", "-o", "fits.ct"]);
    hk.ok(&["keygen", "file:ec.key", "--alg", "p256"]);
    hk.fails(
        &["encrypt", "--key", "file:ec.key", "m", "-o", "no"],
        2,
        &["needs an RSA key", "p256"],
    );
    hk.fails(
        &["decrypt", "--key", "file:ec.key", "m", "-o", "no"],
        2,
        &["decrypt needs an RSA key"],
    );
}

fn decrypt_on_softhsm(hsm: &SoftHsm) {
    let hk = token(hsm);
    // SoftHSM 2.6 does OAEP only with SHA-1: a key without raw RSA is refused, saying so.
    let plain = format!("pkcs11:token={};object=oaep-no-raw", hsm.label());
    hk.ok(&["keygen", &plain, "--alg", "rsa2048"]);
    hk.ok(&["pubkey", &plain, "--out", "no-raw.pub"]);
    hk.file("s", b"s");
    hk.ok(&["encrypt", "--pubkey", "no-raw.pub", "s", "-o", "s.ct"]);
    hk.fails(
        &["decrypt", "--key", &plain, "s.ct", "-o", "no"],
        2,
        &["--allow-raw-rsa"],
    );
    let uri = format!("pkcs11:token={};object=oaep", hsm.label());
    hk.ok(&["keygen", &uri, "--alg", "rsa2048", "--allow-raw-rsa"]);
    decrypt_openssl_ciphertexts(&hk, &uri);
    // A sign-only key may not decrypt.
    let sign_only = format!("pkcs11:token={};object=oaep-sign-only", hsm.label());
    hk.ok(&["keygen", &sign_only, "--alg", "rsa2048", "--sign-only"]);
    hk.fails(
        &["decrypt", "--key", &sign_only, "s.ct", "-o", "no"],
        2,
        &[],
    );
    for u in [&plain, &uri, &sign_only] {
        hk.ok(&["delete", u, "--yes"]);
    }
    encrypt_for_openssl(&hk);
}

fn decrypt_on_swtpm(tpm_fixture: &Swtpm) {
    let hk = tpm(tpm_fixture);
    hk.ok(&[
        "keygen",
        "tpm2:",
        "--alg",
        "rsa2048",
        "--out",
        "rsa.tss2.pem",
    ]);
    decrypt_openssl_ciphertexts(&hk, "tpm2:file=rsa.tss2.pem");
    assert_no_transients(tpm_fixture);
}

fn main() -> ExitCode {
    run_serial(|hsm: Arc<SoftHsm>| {
        let swtpm = Arc::new(Swtpm::start());
        let on_tpm = |name: &'static str, test: fn(&Swtpm)| {
            let swtpm = Arc::clone(&swtpm);
            trial(name, move || test(&swtpm))
        };
        let on_hsm = |name: &'static str, test: fn(&SoftHsm)| {
            let hsm = Arc::clone(&hsm);
            trial(name, move || test(&hsm))
        };
        vec![
            on_hsm("ca_on_softhsm", ca_on_softhsm),
            on_tpm("ca_on_swtpm", ca_on_swtpm),
            on_hsm("decrypt_on_softhsm", decrypt_on_softhsm),
            on_tpm("decrypt_on_swtpm", decrypt_on_swtpm),
        ]
    })
}
