//! `hardkey serve` end to end on software keys (P-256, RSA-2048), on both stacks: curl,
//! `openssl s_client` and a rustls client (each verifying the certificate hardkey made and
//! the server's handshake signature) complete TLS 1.3 handshakes and TLS 1.2 (ECDHE) ones
//! with ECDSA, RSA PKCS#1 and RSA-PSS signatures; Ctrl-C stops the server cleanly with its
//! counters; a certificate for another key is refused at startup. The same checks run on
//! SoftHSM keys in `softhsm.rs` and on swtpm keys in `swtpm.rs`.

mod common;

use common::Hardkey;
use common::serve::{KeyType, check_serve, free_addr, selfsign_localhost};

#[test]
fn curl_openssl_and_rustls_handshake_with_both_stacks() {
    let hk = Hardkey::new();
    for key_type in [KeyType::P256, KeyType::Rsa2048] {
        let alg = key_type.alg();
        let key = format!("file:{alg}.pem");
        hk.ok(&["keygen", &key, "--alg", alg]);
        let cert = selfsign_localhost(&hk, &key, &format!("{alg}.crt"), &[]);
        check_serve(
            &hk,
            &key,
            &cert,
            key_type,
            &format!("on key '{alg}' (software keys)"),
        );
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
