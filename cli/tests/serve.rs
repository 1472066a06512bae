//! `hardkey serve` end to end on software keys: curl and `openssl s_client` (independent
//! clients) complete TLS 1.3 and TLS 1.2 handshakes against both stacks and verify the
//! certificate hardkey made; Ctrl-C stops the server cleanly; a certificate for another key
//! is refused at startup.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Hardkey, tool};

#[allow(clippy::expect_used, reason = "test helper")]
fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address")
}

/// Starts `hardkey serve` and waits until it accepts connections.
#[allow(clippy::expect_used, clippy::panic, reason = "test helper")]
fn serve(hk: &Hardkey, key: &str, cert: &str, stack: &str) -> (Child, SocketAddr) {
    let addr = free_addr();
    let addr_text = addr.to_string();
    let mut child = hk
        .command(&[
            "serve", "--key", key, "--cert", cert, "--listen", &addr_text, "--stack", stack,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hardkey serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let out = child.wait_with_output().expect("output");
            panic!(
                "hardkey serve exited with {status}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(Instant::now() < deadline, "hardkey serve did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, addr)
}

/// Ctrl-C (SIGINT through kill(1)): the server stops with exit 0 and reports its counters.
#[allow(clippy::expect_used, reason = "test helper")]
fn interrupt(child: Child) -> String {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait for hardkey serve");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn curl_and_openssl_handshake_with_both_stacks() {
    let hk = Hardkey::new();
    for (alg, tls12_sigalg) in [("p256", "ECDSA+SHA256"), ("rsa2048", "RSA+SHA256")] {
        let key = format!("file:{alg}.pem");
        hk.ok(&["keygen", &key, "--alg", alg]);
        let cert = format!("{alg}.crt");
        hk.ok(&[
            "selfsign",
            &key,
            "--subject",
            "CN=localhost",
            "--san",
            "dns:localhost,ip:127.0.0.1",
            "--days",
            "2",
            "--out",
            &cert,
        ]);
        for stack in ["boring", "rustls"] {
            let (child, addr) = serve(&hk, &key, &cert, stack);
            let url = format!("https://localhost:{}/", addr.port());
            let resolve = format!("localhost:{}:127.0.0.1", addr.port());
            // TLS 1.3, certificate and hostname verified by curl against our certificate.
            let page = tool(
                "curl",
                &[
                    "-sS",
                    "--fail",
                    "--tlsv1.3",
                    "--cacert",
                    &cert,
                    "--resolve",
                    &resolve,
                    &url,
                ],
                hk.dir.path(),
            );
            assert!(page.contains("hardkey"), "{stack}/{alg}: {page}");
            // TLS 1.2 with ECDHE and this key's signature algorithm, checked by s_client.
            let connect = addr.to_string();
            let out = Command::new("openssl")
                .args([
                    "s_client",
                    "-connect",
                    &connect,
                    "-tls1_2",
                    "-sigalgs",
                    tls12_sigalg,
                    "-CAfile",
                    &cert,
                    "-verify_return_error",
                    "-verify_ip",
                    "127.0.0.1",
                    "-brief",
                ])
                .current_dir(hk.dir.path())
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{stack}/{alg} s_client: {text}");
            assert!(text.contains("Protocol version: TLSv1.2"), "{text}");
            assert!(text.contains("Verification: OK"), "{text}");
            assert!(text.contains("ECDHE"), "{text}");
            let stats = interrupt(child);
            assert!(
                stats.contains("stopped:") && stats.contains("handshakes"),
                "{stats}"
            );
        }
    }
}

#[test]
fn a_certificate_for_another_key_is_refused() {
    let hk = Hardkey::new();
    hk.ok(&["keygen", "file:a.pem"]);
    hk.ok(&["keygen", "file:b.pem"]);
    hk.ok(&[
        "selfsign",
        "file:b.pem",
        "--subject",
        "CN=b",
        "--out",
        "b.crt",
    ]);
    let addr = free_addr().to_string();
    hk.fails(
        &[
            "serve",
            "--key",
            "file:a.pem",
            "--cert",
            "b.crt",
            "--listen",
            &addr,
        ],
        2,
        &["b.crt"],
    );
    hk.fails(
        &[
            "serve",
            "--key",
            "file:a.pem",
            "--cert",
            "missing.crt",
            "--listen",
            &addr,
        ],
        2,
        &["missing.crt"],
    );
    hk.fails(
        &[
            "serve",
            "--key",
            "file:b.pem",
            "--cert",
            "b.crt",
            "--stack",
            "openssl",
        ],
        2,
        &["openssl", "boring or rustls"],
    );
}
