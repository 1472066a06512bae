//! Client certificates (mutual TLS) end to end, on both stacks:
//! - `hardkey serve --client-ca` checked by curl (`--cert/--key`) and `openssl s_client
//!   -cert -key` with software client keys: a certificate from the CA is accepted and the
//!   page names its subject; no certificate, and one from another CA, are refused, counted
//!   and logged with the reason;
//! - `hardkey request` with its key on SoftHSM and on swtpm against `openssl s_server -Verify 1
//!   -verify_return_error`, whose page must show the client certificate verified; without a
//!   certificate the request fails with exit 1 and says what to give.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "trials outside #[test] fns fail by panicking"
)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;

use common::Hardkey;
use common::serve::{Serve, free_addr};
use hardkey_api::testkit::harness::{Arguments, trial};
use secrecy::ExposeSecret;

/// A test PKI made with openssl in `hk`'s directory: `ca.pem` (the CA clients and servers
/// trust), `other-ca.pem` (one nobody trusts), a server certificate `server.pem` for
/// localhost with its key `server.key`, software client keys `client.key` (issued by the CA
/// as `client.pem`, CN=soft-client) and `stranger.key` (issued by the other CA as
/// `stranger.pem`).
fn pki(hk: &Hardkey) {
    hk.file(
        "ext.cnf",
        "[server]\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n\
         [client]\nextendedKeyUsage=clientAuth\n",
    );
    let dir = hk.path("");
    let openssl = |args: &[&str]| common::tool("openssl", args, &dir);
    for (name, cn) in [("ca", "mtls test CA"), ("other-ca", "other CA")] {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-subj",
            &format!("/CN={cn}"),
            "-days",
            "2",
        ]);
    }
    for (name, cn, ca, ext) in [
        ("server", "localhost", "ca", "server"),
        ("client", "soft-client", "ca", "client"),
        ("stranger", "stranger", "other-ca", "client"),
    ] {
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ]);
        issue(hk, &format!("{name}.csr"), ca, ext, &format!("{name}.pem"));
    }
}

/// Signs the request `csr` with CA `ca` (extensions of section `ext` of ext.cnf) into `out`.
fn issue(hk: &Hardkey, csr: &str, ca: &str, ext: &str, out: &str) {
    common::tool(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            out,
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-extensions",
            ext,
        ],
        &hk.path(""),
    );
}

/// curl to the server with the client certificate `cert`/`key` if given; its output.
fn curl(hk: &Hardkey, addr: SocketAddr, cert: Option<(&str, &str)>) -> std::process::Output {
    let url = format!("https://localhost:{}/", addr.port());
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--fail", "--cacert", "ca.pem"])
        .args(["--resolve", &format!("localhost:{}:127.0.0.1", addr.port())])
        .args(["--max-time", "30"]);
    if let Some((cert, key)) = cert {
        cmd.args(["--cert", cert, "--key", key]);
    }
    cmd.arg(&url)
        .current_dir(hk.path(""))
        .stdin(Stdio::null())
        .output()
        .expect("run curl")
}

/// `openssl s_client` with the client certificate `cert`/`key` if given, verifying the
/// server; sends a GET and reads until the server closes. Returns its output and stdout.
fn s_client(hk: &Hardkey, addr: SocketAddr, cert: Option<(&str, &str)>) -> (bool, String) {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string()])
        .args(["-servername", "localhost", "-verify_hostname", "localhost"])
        .args(["-CAfile", "ca.pem", "-verify_return_error", "-ign_eof"]);
    if let Some((cert, key)) = cert {
        cmd.args(["-cert", cert, "-key", key]);
    }
    let mut child = cmd
        .current_dir(hk.path(""))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (stdout.contains("HTTP/1.1 200 OK"), stdout)
}

fn serve_requires_client_certificates(stack: &str) {
    let hk = Hardkey::new();
    pki(&hk);
    let serve = Serve::start_with(
        &hk,
        &[
            "--key",
            "file:server.key",
            "--cert",
            "server.pem",
            "--client-ca",
            "ca.pem",
        ],
        stack,
    );
    let addr = serve.addr();

    let good = curl(&hk, addr, Some(("client.pem", "client.key")));
    let page = String::from_utf8_lossy(&good.stdout);
    assert!(
        good.status.success(),
        "{stack}: curl with a client certificate: {good:?}"
    );
    assert!(
        page.lines().any(|l| l == "client: CN=soft-client"),
        "{stack}: {page}"
    );
    let none = curl(&hk, addr, None);
    assert!(
        !none.status.success(),
        "{stack}: curl without a certificate got through"
    );
    let stranger = curl(&hk, addr, Some(("stranger.pem", "stranger.key")));
    assert!(
        !stranger.status.success(),
        "{stack}: curl with another CA's certificate"
    );

    let (ok, page) = s_client(&hk, addr, Some(("client.pem", "client.key")));
    assert!(ok, "{stack}: s_client with a client certificate:\n{page}");
    assert!(
        page.lines().any(|l| l == "client: CN=soft-client"),
        "{stack}: {page}"
    );
    let (ok, page) = s_client(&hk, addr, None);
    assert!(
        !ok,
        "{stack}: s_client without a certificate got a page:\n{page}"
    );
    let (ok, page) = s_client(&hk, addr, Some(("stranger.pem", "stranger.key")));
    assert!(
        !ok,
        "{stack}: s_client with another CA's certificate got a page:\n{page}"
    );

    let stopped = serve.stop();
    let log = &stopped.log;
    assert!(
        log.contains("requiring client certificates issued by CN=mtls test CA (from ca.pem)"),
        "{stack}: {log}"
    );
    assert_eq!(stopped.stats["handshakes"], 2, "{stack}: {}", stopped.stats);
    assert_eq!(
        stopped.stats["client_cert_rejections"], 4,
        "{stack}: {}",
        stopped.stats
    );
    assert_eq!(
        log.matches("client certificate required, and the client sent none")
            .count(),
        2,
        "{stack}: {log}"
    );
    assert_eq!(
        log.matches("client certificate rejected: ").count(),
        2,
        "{stack}: {log}"
    );
}

/// `openssl s_server -www` requiring a client certificate from ca.pem (`-Verify 1
/// -verify_return_error`: one that does not verify fails the handshake); killed on drop.
struct SServer {
    child: Child,
    addr: SocketAddr,
}

impl SServer {
    fn start(hk: &Hardkey) -> Self {
        let addr = free_addr();
        let mut child = Command::new("openssl")
            .args(["s_server", "-accept", &addr.port().to_string()])
            .args([
                "-cert",
                "server.pem",
                "-key",
                "server.key",
                "-CAfile",
                "ca.pem",
            ])
            .args(["-Verify", "1", "-verify_return_error", "-www"])
            .current_dir(hk.path(""))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run openssl s_server");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // It prints ACCEPT once it listens.
        assert!(
            lines.any(|l| l.is_ok_and(|l| l.contains("ACCEPT"))),
            "openssl s_server did not start"
        );
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, addr }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}/", self.addr.port())
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `hardkey request` with the device key `uri` as client identity (a certificate issued by
/// the CA for a CSR `hardkey csr` made with the key) against `openssl s_server`, on both
/// stacks: s_server's page must show the certificate verified and its subject.
fn request_with_device_key(hk: &Hardkey, uri: &str, cn: &str) {
    pki(hk);
    hk.ok(&[
        "csr",
        uri,
        "--subject",
        &format!("CN={cn}"),
        "--out",
        "device.csr",
    ]);
    issue(hk, "device.csr", "ca", "client", "device.pem");
    let server = SServer::start(hk);
    for stack in ["boring", "rustls"] {
        let page = hk.ok(&[
            "request",
            &server.url(),
            "--key",
            uri,
            "--cert",
            "device.pem",
            "--cacert",
            "ca.pem",
            "--stack",
            stack,
        ]);
        assert!(
            page.contains("Verify return code: 0 (ok)"),
            "{stack}: {page}"
        );
        assert!(page.contains("Client certificate"), "{stack}: {page}");
        assert!(
            page.contains(&format!("Subject: CN={cn}")),
            "{stack}: {page}"
        );
        // Into a file, with --json reporting on stdout.
        let report = hk.json(&[
            "request",
            &server.url(),
            "--key",
            uri,
            "--cert",
            "device.pem",
            "--cacert",
            "ca.pem",
            "--stack",
            stack,
            "-o",
            "page.html",
        ]);
        assert_eq!(report["status"], 200, "{report}");
        assert_eq!(report["client_certificate"], true, "{report}");
        let written = std::fs::read_to_string(hk.path("page.html")).unwrap();
        assert!(written.contains(&format!("Subject: CN={cn}")), "{written}");
        // Without a certificate the server refuses; the error says what to give.
        hk.fails(
            &[
                "request",
                &server.url(),
                "--cacert",
                "ca.pem",
                "--stack",
                stack,
            ],
            1,
            &["give --key and --cert"],
        );
        // A server the CA file does not vouch for.
        hk.fails(
            &[
                "request",
                &server.url(),
                "--key",
                uri,
                "--cert",
                "device.pem",
                "--cacert",
                "other-ca.pem",
                "--stack",
                stack,
            ],
            1,
            &["TLS handshake failed"],
        );
    }
    // A certificate for another key is refused before connecting.
    hk.fails(
        &[
            "request",
            &server.url(),
            "--key",
            uri,
            "--cert",
            "client.pem",
            "--cacert",
            "ca.pem",
        ],
        2,
        &["does not match the key"],
    );
}

fn main() -> ExitCode {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    // SoftHSM first: it sets its configuration variable while the process has one thread.
    let hsm = Arc::new(softhsm_tests::SoftHsm::start());
    let tpm = Arc::new(swtpm_tests::Swtpm::start());
    let mut trials = Vec::new();
    for stack in ["boring", "rustls"] {
        trials.push(trial(
            format!("serve_requires_client_certificates::{stack}"),
            move || {
                serve_requires_client_certificates(stack);
            },
        ));
    }
    for alg in ["p256", "rsa2048"] {
        let hsm = Arc::clone(&hsm);
        trials.push(trial(format!("request::softhsm::{alg}"), move || {
            let hk = Hardkey::new().env("HARDKEY_PIN", hsm.user_pin().expose_secret());
            let uri = format!("pkcs11:token={};object=mtls-{alg}", hsm.label());
            hk.ok(&["keygen", &uri, "--alg", alg]);
            request_with_device_key(&hk, &uri, &format!("softhsm-{alg}"));
            hk.ok(&["delete", &uri, "--yes"]);
        }));
        let tpm = Arc::clone(&tpm);
        trials.push(trial(format!("request::swtpm::{alg}"), move || {
            let hk = Hardkey::new().env("HARDKEY_TCTI", &tpm.tcti());
            hk.ok(&["keygen", "tpm2:", "--alg", alg, "--out", "client.tss2.pem"]);
            request_with_device_key(&hk, "tpm2:file=client.tss2.pem", &format!("swtpm-{alg}"));
            let left = common::tool(
                "tpm2_getcap",
                &["handles-transient", &format!("--tcti={}", tpm.tcti())],
                std::path::Path::new("/"),
            );
            assert!(left.trim().is_empty(), "transient objects left: {left}");
        }));
    }
    let conclusion = libtest_mimic::run(&args, trials);
    drop(tpm);
    drop(hsm);
    conclusion.exit_code()
}
