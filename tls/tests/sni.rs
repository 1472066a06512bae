//! Several certificate chains on one listener, on both stacks: each server name gets its own
//! chain (exact names, case-insensitively, and one-label wildcards), one name may have an RSA
//! and an ECDSA chain chosen by the client's signature schemes, and a name no chain covers
//! gets the default chain or a failed handshake, as configured. Checked with the rustls
//! client (which verifies the name against the chain it gets) and `openssl s_client`.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "test code"
)]
#![cfg(all(feature = "boring", feature = "rustls"))]

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::{Ca, Version, connect, get};
use futures::executor::block_on;
use hardkey_api::{GenerateRequest, KeyAlgorithm, KeyStore, PrivateKey, SharedKey};
use hardkey_soft::SoftStore;
use hardkey_tls::{
    CertChain, Identities, Identity, Server, ServerConfig, ServerHandle, Stack, UnknownName,
};
use rustls::SignatureScheme as S;

const ANY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

const ECDSA: &[S] = &[S::ECDSA_NISTP256_SHA256, S::ECDSA_NISTP384_SHA384];
const RSA: &[S] = &[S::RSA_PSS_SHA256, S::RSA_PKCS1_SHA256];
const BOTH: &[S] = &[
    S::ECDSA_NISTP256_SHA256,
    S::ECDSA_NISTP384_SHA384,
    S::RSA_PSS_SHA256,
    S::RSA_PKCS1_SHA256,
];

fn soft_key(alg: KeyAlgorithm, label: &str) -> SharedKey {
    let store = SoftStore::in_memory().unwrap();
    Arc::new(block_on(store.generate(GenerateRequest::new(alg).label(label))).unwrap())
}

/// An identity for a new key of `alg`, its leaf named `cn` and valid for `names`.
fn identity(ca: &Ca, alg: KeyAlgorithm, cn: &str, names: &[&str]) -> Identity {
    let key = soft_key(alg, cn);
    let chain = CertChain::from_pem(ca.issue_for(&key.info().public_key, cn, names, false));
    Identity::new(key, chain.unwrap())
}

fn start(identities: Identities, stack: Stack) -> ServerHandle {
    Server::start(
        ServerConfig::for_identities(identities)
            .stack(stack)
            .listen(ANY),
    )
    .unwrap()
}

/// The leaf the rustls client got for `name` (its DER), after verifying it against the CA
/// and `name` and fetching the page; or the handshake error.
fn rustls_leaf(
    server: &ServerHandle,
    ca: &Ca,
    name: &str,
    version: Version,
    offer: &[S],
) -> std::io::Result<Vec<u8>> {
    let (config, _) = common::client_config(&ca.ca_der(), version, offer);
    let mut stream = connect(server.local_addr(), name, config)?;
    let leaf = stream.conn.peer_certificates().unwrap()[0].to_vec();
    let page = get(&mut stream, true)?;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    Ok(leaf)
}

/// `openssl s_client` with SNI `name` (`None`: no SNI), checking the chain against the CA and
/// `name`; returns its output (stdout and stderr) and whether the handshake succeeded and the
/// chain verified for `name`.
fn openssl(server: &ServerHandle, ca: &Ca, name: Option<&str>, sigalgs: &str) -> (String, bool) {
    let mut cmd = Command::new("openssl");
    cmd.arg("s_client")
        .arg("-connect")
        .arg(server.local_addr().to_string())
        .arg("-CAfile")
        .arg(ca.ca_file())
        .args(["-no_ticket", "-sigalgs", sigalgs]);
    match name {
        Some(name) => cmd.args(["-servername", name, "-verify_hostname", name]),
        None => cmd.arg("-noservername"),
    };
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs (make test installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // With no certificate (a refused handshake) s_client still says "0 (ok)": nothing failed
    // verification; so a certificate must have come too.
    let ok = out.status.success()
        && served_cn(&text).is_some()
        && text.contains("Verify return code: 0 (ok)");
    (text, ok)
}

/// The subject CN of the server's certificate in `openssl s_client` output.
fn served_cn(text: &str) -> Option<String> {
    let subject = text.lines().find(|l| l.starts_with("subject="))?;
    Some(
        subject
            .rsplit("CN")
            .next()?
            .trim_start_matches([' ', '='])
            .trim()
            .to_owned(),
    )
}

fn leaf(identity: &Identity) -> Vec<u8> {
    identity.chain().certs()[0].to_vec()
}

#[test]
fn each_server_name_gets_its_chain() {
    let ca = Ca::new();
    let a = identity(
        &ca,
        KeyAlgorithm::EcP256,
        "a",
        &["a.example", "*.wild.example"],
    );
    let b = identity(&ca, KeyAlgorithm::EcP384, "b", &["b.example"]);
    let c = identity(
        &ca,
        KeyAlgorithm::Rsa2048,
        "c",
        &["c.example", "x.wild.example"],
    );
    let set = Identities::new(a.clone()).with(b.clone()).with(c.clone());
    for stack in Stack::ALL {
        let server = start(set.clone(), stack);
        for version in [Version::Tls13, Version::Tls12] {
            for (name, expected) in [
                ("a.example", &a),
                ("b.example", &b),
                ("c.example", &c),
                ("any.wild.example", &a),
                // An exact name wins over the wildcard that also covers it.
                ("x.wild.example", &c),
            ] {
                let got = rustls_leaf(&server, &ca, name, version, BOTH)
                    .unwrap_or_else(|e| panic!("{stack} {version:?} {name}: {e}"));
                assert_eq!(got, leaf(expected), "{stack} {version:?} {name}");
            }
        }
        for (name, cn) in [
            ("a.example", "a"),
            ("B.Example", "b"),
            ("c.example.", "c"),
            ("deep.any.wild.example", "a"),
            ("wild.example", "a"),
            ("unknown.example", "a"),
        ] {
            let (text, _) = openssl(
                &server,
                &ca,
                Some(name),
                "ECDSA+SHA256:ECDSA+SHA384:RSA-PSS+SHA256",
            );
            assert_eq!(
                served_cn(&text).as_deref(),
                Some(cn),
                "{stack} {name}:\n{text}"
            );
        }
        // The names no chain covers got the default chain, which openssl then refuses for
        // that name; the covered ones verify.
        assert!(openssl(&server, &ca, Some("b.example"), "ECDSA+SHA384").1);
        assert!(!openssl(&server, &ca, Some("wild.example"), "ECDSA+SHA256").1);
        let (text, _) = openssl(&server, &ca, None, "ECDSA+SHA256");
        assert_eq!(
            served_cn(&text).as_deref(),
            Some("a"),
            "{stack} no SNI:\n{text}"
        );
        server.shutdown().unwrap();
    }
}

#[test]
fn one_name_with_rsa_and_ecdsa_chains_serves_what_the_client_takes() {
    let ca = Ca::new();
    let ec = identity(&ca, KeyAlgorithm::EcP256, "both-ec", &["both.example"]);
    let rsa = identity(&ca, KeyAlgorithm::Rsa2048, "both-rsa", &["both.example"]);
    // ECDSA first: preferred for clients that take both.
    let set = Identities::new(ec.clone()).with(rsa.clone());
    for stack in Stack::ALL {
        let server = start(set.clone(), stack);
        for version in [Version::Tls13, Version::Tls12] {
            for (offer, expected) in [(RSA, &rsa), (ECDSA, &ec), (BOTH, &ec)] {
                let got = rustls_leaf(&server, &ca, "both.example", version, offer)
                    .unwrap_or_else(|e| panic!("{stack} {version:?} {offer:?}: {e}"));
                assert_eq!(
                    got,
                    leaf(expected),
                    "{stack} {version:?} offering {offer:?}"
                );
            }
        }
        for (sigalgs, cn) in [
            ("RSA-PSS+SHA256:RSA+SHA256", "both-rsa"),
            ("ECDSA+SHA256", "both-ec"),
            ("ECDSA+SHA256:RSA-PSS+SHA256", "both-ec"),
        ] {
            let (text, ok) = openssl(&server, &ca, Some("both.example"), sigalgs);
            assert!(ok, "{stack} {sigalgs}:\n{text}");
            assert_eq!(
                served_cn(&text).as_deref(),
                Some(cn),
                "{stack} {sigalgs}:\n{text}"
            );
        }
        server.shutdown().unwrap();
    }
}

#[test]
fn unknown_names_are_refused_when_configured() {
    let ca = Ca::new();
    let a = identity(&ca, KeyAlgorithm::EcP256, "a", &["a.example"]);
    let b = identity(&ca, KeyAlgorithm::EcP256, "b", &["b.example"]);
    let set = Identities::new(a.clone())
        .with(b.clone())
        .unknown_names(UnknownName::Refuse);
    for stack in Stack::ALL {
        let server = start(set.clone(), stack);
        assert_eq!(
            rustls_leaf(&server, &ca, "b.example", Version::Tls13, BOTH).unwrap(),
            leaf(&b)
        );
        for version in [Version::Tls13, Version::Tls12] {
            let err = rustls_leaf(&server, &ca, "other.example", version, BOTH).unwrap_err();
            println!("{stack} {version:?}: {err}");
            // A refusal the client is told about (BoringSSL: handshake_failure, rustls:
            // access_denied), not a dropped connection.
            assert!(
                err.to_string().contains("received fatal alert"),
                "{stack}: {err}"
            );
        }
        let (text, ok) = openssl(&server, &ca, Some("other.example"), "ECDSA+SHA256");
        assert!(!ok && served_cn(&text).is_none(), "{stack}:\n{text}");
        let (text, ok) = openssl(&server, &ca, None, "ECDSA+SHA256");
        assert!(!ok && served_cn(&text).is_none(), "{stack} no SNI:\n{text}");
        assert!(
            server.stats().handshake_failures >= 4,
            "{:?}",
            server.stats()
        );
        server.shutdown().unwrap();
    }
}

#[test]
fn the_default_can_be_any_identity() {
    let ca = Ca::new();
    let a = identity(&ca, KeyAlgorithm::EcP256, "a", &["a.example"]);
    let b = identity(&ca, KeyAlgorithm::EcP256, "b", &["b.example"]);
    let set = Identities::new(a).with(b).default_to(1).unwrap();
    assert!(
        Identities::new(identity(&ca, KeyAlgorithm::EcP256, "x", &[]))
            .default_to(1)
            .is_err()
    );
    for stack in Stack::ALL {
        let server = start(set.clone(), stack);
        let (text, _) = openssl(&server, &ca, Some("nowhere.example"), "ECDSA+SHA256");
        assert_eq!(served_cn(&text).as_deref(), Some("b"), "{stack}:\n{text}");
        server.shutdown().unwrap();
    }
}

#[test]
fn every_identity_is_checked_at_startup() {
    let ca = Ca::new();
    let good = identity(&ca, KeyAlgorithm::EcP256, "good", &["good.example"]);
    let other = soft_key(KeyAlgorithm::EcP256, "other");
    let wrong = Identity::new(
        soft_key(KeyAlgorithm::EcP256, "wrong"),
        CertChain::from_pem(ca.issue_for(&other.info().public_key, "bad", &["bad.example"], false))
            .unwrap(),
    );
    for stack in Stack::ALL {
        let set = Identities::new(good.clone()).with(wrong.clone());
        let err =
            Server::start(ServerConfig::for_identities(set).stack(stack).listen(ANY)).unwrap_err();
        assert!(
            matches!(err, hardkey_tls::Error::KeyMismatch(_)),
            "{stack}: {err}"
        );
        assert!(err.to_string().contains("CN=bad"), "{err}");
    }
}
