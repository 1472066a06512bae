//! The `hardkey` command against swtpm: ownership taken and cleared, keys provisioned as
//! persistent handles and TSS2 files and checked with tpm2-tools and openssl, `hardkey serve`
//! on both (TLS 1.3 and TLS 1.2 handshakes on both stacks checked by curl, `openssl s_client`
//! and rustls), sealing with a password and a PCR policy, dictionary-attack settings, and bad
//! input; after each trial no transient object is left in the TPM.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "trials outside #[test] fns fail by panicking"
)]

mod common;

use std::process::ExitCode;
use std::sync::Arc;

use common::serve::{KeyType, Serve, check_reload, check_serve, curl_tls13, selfsign_localhost};
use common::{Hardkey, TAKE_OWNERSHIP, check_certificates, openssl_verify, tool};
use swtpm_tests::{Swtpm, run, trial};

fn hardkey(tpm: &Swtpm) -> Hardkey {
    Hardkey::new().env("HARDKEY_TCTI", &tpm.tcti())
}

fn getcap(tpm: &Swtpm, what: &str) -> String {
    tool(
        "tpm2_getcap",
        &[what, &format!("--tcti={}", tpm.tcti())],
        std::path::Path::new("/"),
    )
}

fn assert_no_transients(tpm: &Swtpm) {
    let left = getcap(tpm, "handles-transient");
    assert!(left.trim().is_empty(), "transient objects left: {left}");
}

fn take_ownership_then_clear(tpm: &Swtpm) {
    let hk = hardkey(tpm);
    let status = hk.json(&["tpm", "status"]);
    assert_eq!(status["owner_auth_set"], false, "{status}");
    hk.fails(&["tpm", "take-ownership"], 2, &["--owner-auth-file"]);
    hk.file("owner", "owner-secret");
    hk.file("lockout", "lockout-secret");
    hk.file("endorsement", "endorsement-secret");
    let owned = hk.json(&TAKE_OWNERSHIP);
    for auth in ["owner_auth_set", "endorsement_auth_set", "lockout_auth_set"] {
        assert_eq!(owned[auth], true, "{auth}: {owned}");
    }
    // tpm2-tools agrees.
    let permanent = getcap(tpm, "properties-variable");
    assert!(
        permanent.contains("ownerAuthSet:              1"),
        "{permanent}"
    );
    // Taking it again is refused, pointing to change-auth.
    hk.fails(
        &["tpm", "take-ownership", "--owner-auth-file", "owner"],
        2,
        &["change-auth"],
    );
    // A key needs the owner auth now to be made persistent.
    let made = hk.json(&[
        "keygen",
        "tpm2:",
        "--persist",
        "0x81000030",
        "--owner-auth-file",
        "owner",
    ]);
    assert_eq!(made["uri"], "tpm2:handle=0x81000030");
    hk.file("owner2", "owner-secret-2");
    hk.ok(&[
        "tpm",
        "change-auth",
        "--hierarchy",
        "owner",
        "--current-auth-file",
        "owner",
        "--new-auth-file",
        "owner2",
    ]);
    // Clear: refused without --yes off a terminal; then every auth is empty, the key gone.
    hk.fails(
        &["tpm", "clear", "--lockout-auth-file", "lockout"],
        2,
        &["--yes"],
    );
    let cleared = hk.json(&["tpm", "clear", "--yes", "--lockout-auth-file", "lockout"]);
    for auth in ["owner_auth_set", "endorsement_auth_set", "lockout_auth_set"] {
        assert_eq!(cleared[auth], false, "{auth}: {cleared}");
    }
    assert!(!getcap(tpm, "handles-persistent").contains("0x81000030"));
    assert_no_transients(tpm);
}

/// TPM 2.0 has no EdDSA: `keygen --alg ed25519|ed448` on a TPM is refused with exit code 2,
/// saying so and where such keys can live, and leaves no object behind.
fn eddsa_is_refused_on_a_tpm(tpm: &Swtpm) {
    let hk = hardkey(tpm);
    let before = getcap(tpm, "handles-persistent");
    for alg in ["ed25519", "ed448"] {
        let out = hk.run(&["keygen", "tpm2:", "--alg", alg]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{alg}: {err}");
        assert!(
            err.contains(&format!("does not support {alg} keys"))
                && err.contains("TPM 2.0 has no EdDSA")
                && err.contains("CKM_EDDSA"),
            "{alg}: {err}"
        );
    }
    assert_eq!(getcap(tpm, "handles-persistent"), before);
    assert_no_transients(tpm);
}

fn keys_sign_for_openssl_and_tpm2_tools(tpm: &Swtpm) {
    let hk = hardkey(tpm);
    let msg = hk.file("msg", b"signed in a TPM");
    // A persistent P-256 key, checked against tpm2_readpublic.
    let made = hk.json(&[
        "keygen",
        "tpm2:",
        "--alg",
        "p256",
        "--persist",
        "0x81000040",
    ]);
    let uri = made["uri"].as_str().unwrap().to_owned();
    hk.ok(&["pubkey", &uri, "--out", "p256.pub"]);
    tool(
        "tpm2_readpublic",
        &[
            "-c",
            "0x81000040",
            "-f",
            "pem",
            "-o",
            "readpublic.pem",
            &format!("--tcti={}", tpm.tcti()),
        ],
        hk.dir.path(),
    );
    assert_eq!(
        std::fs::read_to_string(hk.path("readpublic.pem")).unwrap(),
        std::fs::read_to_string(hk.path("p256.pub")).unwrap()
    );
    hk.ok(&["sign", &uri, "--in", &msg, "--out", "sig"]);
    openssl_verify(hk.dir.path(), "ecdsa-p256-sha256", "p256.pub", "msg", "sig");
    check_certificates(&hk, &uri, "ecdsa-p256-sha256", &[]);
    // An RSA key in a TSS2 file, both padding schemes.
    hk.ok(&[
        "keygen",
        "tpm2:",
        "--alg",
        "rsa2048",
        "--out",
        "web.tss2.pem",
    ]);
    let head = std::fs::read_to_string(hk.path("web.tss2.pem")).unwrap();
    assert!(
        head.starts_with("-----BEGIN TSS2 PRIVATE KEY-----"),
        "{head}"
    );
    hk.ok(&["pubkey", "tpm2:file=web.tss2.pem", "--out", "rsa.pub"]);
    for scheme in ["rsa-pkcs1-sha256", "rsa-pss-sha256"] {
        hk.ok(&[
            "sign",
            "tpm2:file=web.tss2.pem",
            "--scheme",
            scheme,
            "--in",
            &msg,
            "--out",
            "sig",
        ]);
        openssl_verify(hk.dir.path(), scheme, "rsa.pub", "msg", "sig");
        check_certificates(&hk, "tpm2:file=web.tss2.pem", scheme, &[]);
    }
    let listed = hk.json(&["list", "tpm2:"]);
    assert!(
        listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["uri"] == "tpm2:handle=0x81000040")
    );
    // Bad input: an algorithm swtpm refuses, a taken handle, an existing file; nothing is
    // made by any of them.
    let persistent = getcap(tpm, "handles-persistent");
    let out = hk.run(&[
        "keygen",
        "tpm2:",
        "--alg",
        "rsa4096",
        "--out",
        "big.tss2.pem",
    ]);
    if !out.status.success() {
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("rsa4096"));
        assert!(!hk.path("big.tss2.pem").exists());
    }
    hk.fails(
        &["keygen", "tpm2:", "--persist", "0x81000040"],
        2,
        &["0x81000040"],
    );
    hk.fails(
        &["keygen", "tpm2:", "--out", "web.tss2.pem"],
        2,
        &["already exists"],
    );
    assert_eq!(getcap(tpm, "handles-persistent"), persistent);
    hk.fails(&["info", "tpm2:handle=0x81000099"], 1, &["0x81000099"]);
    hk.ok(&["delete", &uri, "--yes"]);
    assert!(!getcap(tpm, "handles-persistent").contains("0x81000040"));
    let bench = hk.json(&["bench", "tpm2:file=web.tss2.pem", "--duration", "500ms"]);
    assert!(bench["signatures"].as_u64().unwrap() > 0, "{bench}");
    assert_no_transients(tpm);
}

/// `hardkey serve` on a persistent P-256 key and an RSA-2048 key in a TSS2 file, each with a
/// certificate `hardkey selfsign` made: every handshake of [`check_serve`] on both stacks.
/// The server holds the TPM's one connection while it runs; the clients (this process, curl,
/// openssl) hold none.
fn serve_tpm_keys_over_tls(tpm: &Swtpm) {
    let hk = hardkey(tpm);
    let made = hk.json(&[
        "keygen",
        "tpm2:",
        "--alg",
        "p256",
        "--persist",
        "0x81000050",
    ]);
    let p256 = made["uri"].as_str().unwrap().to_owned();
    assert_eq!(p256, "tpm2:handle=0x81000050");
    hk.ok(&[
        "keygen",
        "tpm2:",
        "--alg",
        "rsa2048",
        "--out",
        "serve-rsa.tss2.pem",
    ]);
    let rsa = "tpm2:file=serve-rsa.tss2.pem";
    for (key_type, uri) in [(KeyType::P256, p256.as_str()), (KeyType::Rsa2048, rsa)] {
        let alg = key_type.alg();
        let cert = selfsign_localhost(&hk, uri, &format!("{alg}.crt"), &[]);
        // A persistent key has no label (a key file is labelled by its name): the server
        // then names it by id.
        let info = hk.json(&["info", uri]);
        let name = match info["label"].as_str() {
            Some(label) => format!("'{label}'"),
            None => format!("id {}", info["id"].as_str().unwrap()),
        };
        let on = format!("on key {name} (TPM at {})", tpm.tcti());
        check_serve(&hk, uri, &cert, key_type, &on);
        assert_no_transients(tpm);
    }
    hk.ok(&["delete", &p256, "--yes"]);
    assert!(!getcap(tpm, "handles-persistent").contains("0x81000050"));
    assert_no_transients(tpm);
}

/// Reload without restart on TPM keys ([`check_reload`]): a P-256 key file with three
/// certificates, a persistent RSA key that takes over the entry, and a key on a TPM that does
/// not answer; nothing is left loaded in the TPM after each server.
fn serve_reloads_tpm_keys(tpm: &Swtpm) {
    let hk = hardkey(tpm);
    hk.ok(&[
        "keygen",
        "tpm2:",
        "--alg",
        "p256",
        "--out",
        "reload-a.tss2.pem",
    ]);
    let b = hk.json(&[
        "keygen",
        "tpm2:",
        "--alg",
        "rsa2048",
        "--persist",
        "0x81000051",
    ])["uri"]
        .as_str()
        .unwrap()
        .to_owned();
    // Port 1 on loopback: nothing listens there.
    let dead = "tpm2:file=reload-a.tss2.pem?tcti=swtpm:host=127.0.0.1,port=1";
    check_reload(&hk, "tpm2:file=reload-a.tss2.pem", &b, dead, &[]);
    assert_no_transients(tpm);
    hk.ok(&["delete", &b, "--yes"]);
    assert_no_transients(tpm);

    // An entry moved off the TPM: the TPM store no entry uses is closed (its loaded keys
    // flushed) once no connection holds a key opened from it, including keys of earlier
    // reloads (SIGHUP opens every key again); moved back before that, the same store serves.
    let tpm_cert = selfsign_localhost(&hk, "tpm2:file=reload-a.tss2.pem", "moved-a.crt", &[]);
    hk.ok(&["keygen", "file:moved-soft.pem"]);
    let soft_cert = selfsign_localhost(&hk, "file:moved-soft.pem", "moved-soft.crt", &[]);
    let entry =
        |key: &str, cert: &str| format!("[[identity]]\nkey = \"{key}\"\ncert = \"{cert}\"\n");
    let on_tpm = entry("tpm2:file=reload-a.tss2.pem", &tpm_cert);
    let on_file = entry("file:moved-soft.pem", &soft_cert);
    for stack in ["boring", "rustls"] {
        hk.file("moved.toml", &on_tpm);
        let serve = Serve::start_with(
            &hk,
            &["--identities", "moved.toml", "--watch-interval", "0s"],
            stack,
        );
        let reloaded = |n: usize| {
            serve.hangup();
            serve.wait_for_log(&["reloaded"], n);
        };
        // Signed by the key of the first generation.
        let mut held = KeptAlive::open(&hk, serve.addr(), &tpm_cert);
        reloaded(1);
        hk.file("moved.toml", &on_file);
        reloaded(2);
        std::thread::sleep(std::time::Duration::from_millis(1500));
        assert!(
            !serve.log().contains("closed TPM"),
            "{stack}: the TPM store closed under a connection holding its key:\n{}",
            serve.log()
        );
        held.get();
        curl_tls13(hk.dir.path(), serve.addr(), &soft_cert);
        // Back to the TPM while the retired store is still held: it serves again.
        hk.file("moved.toml", &on_tpm);
        reloaded(3);
        curl_tls13(hk.dir.path(), serve.addr(), &tpm_cert);
        hk.file("moved.toml", &on_file);
        reloaded(4);
        drop(held);
        serve.wait_for_log(&["closed TPM", "no entry uses it"], 1);
        assert_no_transients(tpm);
        curl_tls13(hk.dir.path(), serve.addr(), &soft_cert);
        let log = serve.stop().log;
        assert!(!log.contains("out of transient"), "{stack}: {log}");
    }
    assert_no_transients(tpm);
}

/// A keep-alive rustls connection to `localhost` at `addr`, trusting `cert`: holds what the
/// server serves it with (its key) for as long as it is open.
struct KeptAlive(rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>);

impl KeptAlive {
    fn open(hk: &Hardkey, addr: std::net::SocketAddr, cert: &str) -> Self {
        let config = common::serve::trusting(&hk.path(cert));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(config, name).unwrap();
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let mut kept = Self(rustls::StreamOwned::new(conn, tcp));
        kept.get();
        kept
    }

    /// One keep-alive request and its whole response.
    fn get(&mut self) {
        use std::io::{Read, Write};
        self.0
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            self.0.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_owned())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Content-Length in {head}"));
        let mut body = vec![0u8; len];
        self.0.read_exact(&mut body).unwrap();
    }
}

fn seal_and_unseal(tpm: &Swtpm) {
    let hk = hardkey(tpm);
    hk.file("secret", b"database password 42");
    hk.file("pw", "seal-password");
    hk.file("wrong", "not-the-password");
    hk.ok(&[
        "seal",
        "--in",
        "secret",
        "--out",
        "secret.sealed",
        "--auth-file",
        "pw",
    ]);
    hk.ok(&[
        "unseal",
        "--in",
        "secret.sealed",
        "--out",
        "out",
        "--auth-file",
        "pw",
    ]);
    assert_eq!(
        std::fs::read(hk.path("out")).unwrap(),
        b"database password 42"
    );
    let stdout = hk.ok(&[
        "unseal",
        "--in",
        "secret.sealed",
        "--out",
        "-",
        "--auth-file",
        "pw",
    ]);
    assert_eq!(stdout, "database password 42");
    hk.fails(
        &[
            "unseal",
            "--in",
            "secret.sealed",
            "--out",
            "out2",
            "--auth-file",
            "wrong",
        ],
        1,
        &["authentication failed"],
    );
    assert!(!hk.path("out2").exists());
    hk.fails(
        &["unseal", "--in", "secret.sealed", "--out", "out2"],
        2,
        &["no sealing password", "--auth-file"],
    );
    // Existing outputs are never overwritten.
    hk.fails(
        &[
            "unseal",
            "--in",
            "secret.sealed",
            "--out",
            "out",
            "--auth-file",
            "pw",
        ],
        2,
        &["already exists"],
    );
    hk.fails(
        &["seal", "--in", "secret", "--out", "secret.sealed"],
        2,
        &["already exists"],
    );
    // Neither a password nor a PCR policy: refused unless asked for, saying what it means.
    hk.fails(
        &["seal", "--in", "secret", "--out", "open.sealed"],
        2,
        &[
            "anyone who can reach this TPM",
            "--no-policy",
            "--pcrs",
            "--auth-file",
        ],
    );
    assert!(!hk.path("open.sealed").exists());
    hk.fails(
        &[
            "seal",
            "--in",
            "secret",
            "--out",
            "open.sealed",
            "--no-policy",
            "--auth-file",
            "pw",
        ],
        2,
        &["--no-policy contradicts"],
    );
    hk.ok(&[
        "seal",
        "--in",
        "secret",
        "--out",
        "open.sealed",
        "--no-policy",
    ]);
    hk.ok(&["unseal", "--in", "open.sealed", "--out", "open.out"]);
    assert_eq!(
        std::fs::read(hk.path("open.out")).unwrap(),
        b"database password 42"
    );
    // Too much data, a bad PCR selection.
    hk.file("big", vec![b'x'; 129]);
    hk.fails(
        &["seal", "--in", "big", "--out", "big.sealed", "--no-policy"],
        2,
        &["128 bytes"],
    );
    assert!(!hk.path("big.sealed").exists());
    hk.fails(
        &[
            "seal",
            "--in",
            "secret",
            "--out",
            "p.sealed",
            "--pcrs",
            "sha256:99",
        ],
        2,
        &["99"],
    );
    // PCR policy: unseals until the PCR changes.
    hk.ok(&[
        "seal",
        "--in",
        "secret",
        "--out",
        "pcr.sealed",
        "--pcrs",
        "sha256:16",
    ]);
    hk.ok(&["unseal", "--in", "pcr.sealed", "--out", "pcr.out"]);
    tool(
        "tpm2_pcrextend",
        &[
            &format!("16:sha256={}", "ab".repeat(32)),
            &format!("--tcti={}", tpm.tcti()),
        ],
        hk.dir.path(),
    );
    hk.fails(
        &["unseal", "--in", "pcr.sealed", "--out", "pcr.out2"],
        1,
        &["PCR"],
    );
    assert!(!hk.path("pcr.out2").exists());
    tool(
        "tpm2_pcrreset",
        &["16", &format!("--tcti={}", tpm.tcti())],
        hk.dir.path(),
    );
    assert_no_transients(tpm);
}

fn lockout_parameters(tpm: &Swtpm) {
    let hk = hardkey(tpm);
    hk.ok(&[
        "tpm",
        "lockout",
        "set",
        "--max-tries",
        "500",
        "--recovery-time",
        "2s",
        "--lockout-recovery",
        "3s",
    ]);
    let status = hk.json(&["tpm", "status"]);
    assert_eq!(status["max_tries"], 500, "{status}");
    assert_eq!(status["recovery_time_s"], 2, "{status}");
    assert_eq!(status["lockout_recovery_s"], 3, "{status}");
    hk.ok(&["tpm", "lockout", "reset"]);
    assert_eq!(hk.json(&["tpm", "status"])["lockout_counter"], 0);
    tpm.relax_dictionary_attack();
}

type Test = (&'static str, fn(&Swtpm));

fn main() -> ExitCode {
    run(|tpm: Arc<Swtpm>| {
        let tests: [Test; 7] = [
            ("take_ownership_then_clear", take_ownership_then_clear),
            ("eddsa_is_refused_on_a_tpm", eddsa_is_refused_on_a_tpm),
            (
                "keys_sign_for_openssl_and_tpm2_tools",
                keys_sign_for_openssl_and_tpm2_tools,
            ),
            ("serve_tpm_keys_over_tls", serve_tpm_keys_over_tls),
            ("serve_reloads_tpm_keys", serve_reloads_tpm_keys),
            ("seal_and_unseal", seal_and_unseal),
            ("lockout_parameters", lockout_parameters),
        ];
        tests
            .into_iter()
            .map(|(name, test)| {
                let tpm = Arc::clone(&tpm);
                trial(name, move || test(&tpm))
            })
            .collect()
    })
}
