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
use hardkey_api::{
    GenerateRequest, KeyAlgorithm, KeyStore, PrivateKey, SharedKey, SignatureScheme,
};
use hardkey_soft::SoftStore;
use hardkey_tls::{
    CertChain, Identities, Identity, Offer, Server, ServerConfig, ServerHandle, Stack, UnknownName,
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
    let chain = stream.conn.peer_certificates().unwrap();
    // The whole chain: the leaf, then the CA's certificate (set per handshake on BoringSSL).
    assert_eq!(
        chain.len(),
        2,
        "{name}: the server sent {} certificates",
        chain.len()
    );
    assert_eq!(chain[1], ca.ca_der(), "{name}: the issuer");
    let leaf = chain[0].to_vec();
    let page = get(&mut stream, true)?;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    Ok(leaf)
}

/// `openssl s_client` with SNI `name` (`None`: no SNI), checking the chain against the CA and
/// `name`; returns its output (stdout and stderr) and whether the handshake succeeded and the
/// chain verified for `name`.
fn openssl(server: &ServerHandle, ca: &Ca, name: Option<&str>, sigalgs: &str) -> (String, bool) {
    openssl_with(server, ca, name, &["-sigalgs", sigalgs])
}

/// [`openssl`] with other `s_client` options.
fn openssl_with(
    server: &ServerHandle,
    ca: &Ca,
    name: Option<&str>,
    options: &[&str],
) -> (String, bool) {
    let mut cmd = Command::new("openssl");
    cmd.arg("s_client")
        .arg("-connect")
        .arg(server.local_addr().to_string())
        .arg("-CAfile")
        .arg(ca.ca_file())
        .arg("-no_ticket")
        .args(options);
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
            // A refusal the client is told about, with the alert RFC 6066 names for it, on
            // both stacks (rustls spells it "Unrecognised").
            assert!(
                err.to_string()
                    .contains("received fatal alert: UnrecognisedName"),
                "{stack}: {err}"
            );
        }
        for version in ["-tls1_3", "-tls1_2"] {
            let (text, ok) = openssl_with(&server, &ca, Some("other.example"), &[version]);
            assert!(!ok && served_cn(&text).is_none(), "{stack}:\n{text}");
            assert!(
                text.contains("unrecognized name") && text.contains("alert number 112"),
                "{stack} {version}:\n{text}"
            );
        }
        let (text, ok) = openssl(&server, &ca, None, "ECDSA+SHA256");
        assert!(!ok && served_cn(&text).is_none(), "{stack} no SNI:\n{text}");
        assert!(
            text.contains("handshake failure") && text.contains("alert number 40"),
            "{stack} no SNI:\n{text}"
        );
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

/// A TLS 1.2 client's cipher suites and supported groups restrict which chain can serve it:
/// an ECDHE_RSA-only client gets the RSA chain even when the ECDSA chain is listed first and
/// it accepts ECDSA signatures; a client whose only group is P-384 gets the P-384 chain, not
/// the P-256 one listed first (RFC 8422 5.1). A TLS 1.3 client is not restricted by them.
#[test]
fn tls12_clients_get_a_chain_their_suites_and_groups_allow() {
    let ca = Ca::new();
    let p256 = identity(&ca, KeyAlgorithm::EcP256, "c-p256", &["c.example"]);
    let p384 = identity(&ca, KeyAlgorithm::EcP384, "c-p384", &["c.example"]);
    let rsa = identity(&ca, KeyAlgorithm::Rsa2048, "c-rsa", &["c.example"]);
    let set = Identities::new(p256).with(p384).with(rsa);
    let any_sigalgs = "ECDSA+SHA256:ECDSA+SHA384:RSA-PSS+SHA256:RSA+SHA256";
    for stack in Stack::ALL {
        let server = start(set.clone(), stack);
        for (options, cn) in [
            (
                &[
                    "-tls1_2",
                    "-cipher",
                    "ECDHE-RSA-AES128-GCM-SHA256",
                    "-sigalgs",
                    any_sigalgs,
                ][..],
                "c-rsa",
            ),
            (
                &["-tls1_2", "-groups", "P-384", "-sigalgs", any_sigalgs][..],
                "c-p384",
            ),
            (
                &["-tls1_2", "-groups", "P-256:P-384", "-sigalgs", any_sigalgs][..],
                "c-p256",
            ),
            // TLS 1.3: the group is only the key exchange's; the first chain serves.
            (
                &["-tls1_3", "-groups", "P-384", "-sigalgs", any_sigalgs][..],
                "c-p256",
            ),
        ] {
            let (text, ok) = openssl_with(&server, &ca, Some("c.example"), options);
            assert!(ok, "{stack} {options:?}:\n{text}");
            assert_eq!(
                served_cn(&text).as_deref(),
                Some(cn),
                "{stack} {options:?}:\n{text}"
            );
        }
        server.shutdown().unwrap();
    }
}

/// A server name that is an IP address literal (not allowed in SNI, RFC 6066 3) matches no
/// certificate, even one with that text as a DNS name: the default identity serves it. The
/// clients at hand (openssl, rustls) send no SNI for an address, so this asks the selection
/// both stacks call directly; BoringSSL passes such a name on to it as it came.
#[test]
fn an_address_as_server_name_matches_no_dns_name() {
    let ca = Ca::new();
    let a = identity(&ca, KeyAlgorithm::EcP256, "ip-default", &["a.example"]);
    let odd = identity(
        &ca,
        KeyAlgorithm::EcP256,
        "ip-odd",
        &["127.0.0.1", "*.0.0.1"],
    );
    let set = Identities::new(a).with(odd);
    let offer = Offer::new(vec![SignatureScheme::EcdsaP256Sha256]);
    for name in ["127.0.0.1", "10.0.0.1", "::1"] {
        assert_eq!(set.select(Some(name), &offer), Some(0), "{name}");
    }
    assert_eq!(set.select(Some("x.0.0.1"), &offer), Some(1));
    let refusing = set.unknown_names(UnknownName::Refuse);
    assert!(refusing.refuses_name(Some("127.0.0.1")));
    assert_eq!(refusing.select(Some("127.0.0.1"), &offer), None);
}

#[test]
fn findings_name_what_no_handshake_can_reach() {
    use hardkey_tls::Finding;
    let ca = Ca::new();
    let ec = identity(&ca, KeyAlgorithm::EcP256, "ec", &["a.example", "*.example"]);
    let rsa = identity(&ca, KeyAlgorithm::Rsa2048, "rsa", &["a.example"]);
    // A second P-256 chain for a.example only: the first one always wins.
    let shadowed = identity(&ca, KeyAlgorithm::EcP256, "shadowed", &["a.example"]);
    // One name shared, one its own: reachable.
    let partly = identity(
        &ca,
        KeyAlgorithm::EcP256,
        "partly",
        &["a.example", "b.test"],
    );
    let odd = identity(
        &ca,
        KeyAlgorithm::EcP256,
        "odd",
        &["*", "*.*.example", "a.*.example", "w*.example", "ok.test"],
    );
    let key = soft_key(KeyAlgorithm::EcP256, "nameless");
    let nameless = Identity::new(
        key.clone(),
        CertChain::from_pem(ca.issue_for(&key.info().public_key, "nameless", &[], true)).unwrap(),
    );
    let set = Identities::new(ec.clone())
        .with(rsa)
        .with(shadowed)
        .with(partly)
        .with(odd)
        .with(nameless)
        .with(ec);
    let found = set.findings();
    let unmatchable: Vec<&str> = found
        .iter()
        .filter_map(|f| match f {
            Finding::UnmatchableName { identity: 4, name } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        unmatchable,
        ["*", "*.*.example", "a.*.example", "w*.example"],
        "{found:?}"
    );
    assert!(
        found.contains(&Finding::Shadowed { identity: 2, by: 0 }),
        "{found:?}"
    );
    assert!(
        found.contains(&Finding::NoName { identity: 5 }),
        "{found:?}"
    );
    assert!(
        found.contains(&Finding::Duplicate { identity: 6, of: 0 }),
        "{found:?}"
    );
    // The RSA chain (another kind of key) and the one with a name of its own are reachable.
    assert!(
        !found.iter().any(|f| matches!(f.identity(), 1 | 3)),
        "{found:?}"
    );
    assert_eq!(found.len(), 7, "{found:?}");
    // The default is never unreachable: with the nameless one as default, only the rest stay;
    // unless unknown names are refused, which serves no default.
    let set = set.default_to(5).unwrap();
    assert!(!set.findings().contains(&Finding::NoName { identity: 5 }));
    let set = set.unknown_names(UnknownName::Refuse);
    assert!(set.findings().contains(&Finding::NoName { identity: 5 }));
    // RSA keys of two sizes for one name: the second is never chosen (the size plays no part
    // in selection).
    let rsa2048 = identity(&ca, KeyAlgorithm::Rsa2048, "r2", &["r.example"]);
    let rsa3072 = identity(&ca, KeyAlgorithm::Rsa3072, "r3", &["r.example"]);
    let p384 = identity(&ca, KeyAlgorithm::EcP384, "p384", &["r.example"]);
    let p256 = identity(&ca, KeyAlgorithm::EcP256, "p256", &["r.example"]);
    let set = Identities::new(rsa2048).with(rsa3072).with(p384).with(p256);
    assert_eq!(set.findings(), [Finding::Shadowed { identity: 1, by: 0 }]);
    for f in &found {
        assert!(
            f.to_string()
                .starts_with(&format!("identity {}", f.identity())),
            "{f}"
        );
    }
}
