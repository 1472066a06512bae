//! Real TLS 1.3 and TLS 1.2 (ECDHE) handshakes against the test server, for both stacks, on
//! software, SoftHSM2 and swtpm keys (P-256, P-384, RSA-2048 with PSS and with PKCS#1 v1.5).
//!
//! Each key's certificate is issued by a software CA for the device key's public key. Two
//! clients independent of hardkey check every handshake: a rustls client verifying the chain
//! against the CA and the server name with rustls-webpki, restricted to the signature schemes
//! under test and recording the one it verified; and `openssl s_client`, whose
//! "Peer signature type" and "Peer signing digest" lines name what the server signed with.
//! `curl` checks keep-alive (two requests over one connection).
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "test code"
)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use common::{Ca, Version, curl_twice, openssl_s_client, rust_client_fetch};
use futures::executor::block_on;
use hardkey_api::testkit::harness::{Arguments, trial};
use hardkey_api::{DynKeyStore, GenerateRequest, KeyAlgorithm, PrivateKey, SharedKey};
use hardkey_tls::{CertChain, Server, ServerConfig, Stack};
use rustls::SignatureScheme as S;

/// One handshake to check: the version, what the client offers, what the server must sign
/// with, and the same for `openssl s_client` (its `-sigalgs` value and the signature type and
/// digest it then reports).
struct Case {
    version: Version,
    offer: &'static [S],
    expect: S,
    openssl_sigalgs: &'static str,
    openssl_type: &'static str,
    openssl_digest: &'static str,
}

const P256_CASES: &[Case] = &[
    Case {
        version: Version::Tls13,
        offer: &[
            S::RSA_PSS_SHA256,
            S::ECDSA_NISTP384_SHA384,
            S::ECDSA_NISTP256_SHA256,
        ],
        expect: S::ECDSA_NISTP256_SHA256,
        openssl_sigalgs: "ecdsa_secp256r1_sha256",
        openssl_type: "ECDSA",
        openssl_digest: "SHA256",
    },
    Case {
        version: Version::Tls12,
        offer: &[S::RSA_PKCS1_SHA256, S::ECDSA_NISTP256_SHA256],
        expect: S::ECDSA_NISTP256_SHA256,
        openssl_sigalgs: "ecdsa_secp256r1_sha256",
        openssl_type: "ECDSA",
        openssl_digest: "SHA256",
    },
];

const P384_CASES: &[Case] = &[
    // TLS 1.3 ties the curve to the hash: a P-384 key signs ecdsa_secp384r1_sha384 only.
    Case {
        version: Version::Tls13,
        offer: &[
            S::ECDSA_NISTP256_SHA256,
            S::RSA_PSS_SHA384,
            S::ECDSA_NISTP384_SHA384,
        ],
        expect: S::ECDSA_NISTP384_SHA384,
        openssl_sigalgs: "ecdsa_secp384r1_sha384",
        openssl_type: "ECDSA",
        openssl_digest: "SHA384",
    },
    Case {
        version: Version::Tls12,
        offer: &[S::ECDSA_NISTP256_SHA256, S::ECDSA_NISTP384_SHA384],
        expect: S::ECDSA_NISTP384_SHA384,
        openssl_sigalgs: "ECDSA+SHA384",
        openssl_type: "ECDSA",
        openssl_digest: "SHA384",
    },
];

/// Ed25519 (TLS 1.3): the device signs the whole CertificateVerify content (no pre-hash), so
/// openssl reports no signing digest.
const ED25519_CASES: &[Case] = &[Case {
    version: Version::Tls13,
    offer: &[S::ECDSA_NISTP256_SHA256, S::RSA_PSS_SHA256, S::ED25519],
    expect: S::ED25519,
    openssl_sigalgs: "ed25519",
    openssl_type: "ed25519",
    openssl_digest: "",
}];

const RSA_CASES: &[Case] = &[
    // TLS 1.3 signs with PSS only; the key prefers SHA-256 among what is offered.
    Case {
        version: Version::Tls13,
        offer: &[
            S::ECDSA_NISTP256_SHA256,
            S::RSA_PSS_SHA384,
            S::RSA_PSS_SHA256,
        ],
        expect: S::RSA_PSS_SHA256,
        openssl_sigalgs: "rsa_pss_rsae_sha256",
        openssl_type: "RSA-PSS",
        openssl_digest: "SHA256",
    },
    Case {
        version: Version::Tls12,
        offer: &[S::RSA_PSS_SHA256],
        expect: S::RSA_PSS_SHA256,
        openssl_sigalgs: "rsa_pss_rsae_sha256",
        openssl_type: "RSA-PSS",
        openssl_digest: "SHA256",
    },
    Case {
        version: Version::Tls12,
        offer: &[S::RSA_PKCS1_SHA256],
        expect: S::RSA_PKCS1_SHA256,
        openssl_sigalgs: "rsa_pkcs1_sha256",
        openssl_type: "RSA",
        openssl_digest: "SHA256",
    },
];

/// Keys made once per device and algorithm, with their certificate chain files.
type Keys = Mutex<HashMap<(&'static str, KeyAlgorithm), (SharedKey, PathBuf)>>;

struct Fixture {
    ca: Ca,
    tpm_store: Arc<hardkey_tpm::TpmStore>,
    stores: HashMap<&'static str, Arc<dyn DynKeyStore>>,
    keys: Keys,
}

impl Fixture {
    fn key(&self, device: &'static str, alg: KeyAlgorithm) -> (SharedKey, PathBuf) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.entry((device, alg))
            .or_insert_with(|| {
                let label = format!("tls-{device}-{alg}");
                let key = block_on(
                    self.stores[device].dyn_generate(GenerateRequest::new(alg).label(&label)),
                )
                .unwrap();
                let chain = self.ca.issue_file(&key.info().public_key, &label);
                (key, chain)
            })
            .clone()
    }
}

fn start(key: SharedKey, chain: &PathBuf, stack: Stack) -> hardkey_tls::ServerHandle {
    Server::start(
        ServerConfig::new(key, CertChain::from_pem_file(chain).unwrap())
            .stack(stack)
            .listen("127.0.0.1:0".parse().unwrap()),
    )
    .unwrap()
}

fn check_rust_client(fx: &Fixture, addr: SocketAddr, stack: Stack, case: &Case) {
    let (response, version, scheme) =
        rust_client_fetch(addr, &fx.ca.ca_der(), case.version, case.offer).unwrap_or_else(|e| {
            panic!(
                "{:?} handshake: {e} {}",
                case.version,
                fx.tpm_store.pool().stats()
            )
        });
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("hardkey test server"), "{response}");
    assert!(response.contains(&format!("stack: {stack}")), "{response}");
    let protocol = format!("protocol: {}", case.version.openssl_name());
    assert!(response.contains(&protocol), "{response}");
    assert_eq!(version, Some(case.version.protocol()));
    assert_eq!(scheme, Some(case.expect), "{:?}", case.version);
}

fn check_openssl(fx: &Fixture, addr: SocketAddr, case: &Case) {
    let out = openssl_s_client(addr, &fx.ca.ca_file(), case.version, case.openssl_sigalgs);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "openssl s_client failed:\n{all}\n{}",
        fx.tpm_store.pool().stats()
    );
    assert!(
        all.contains("Verify return code: 0 (ok)"),
        "chain not verified:\n{all}"
    );
    assert!(
        all.contains(&format!("Peer signature type: {}", case.openssl_type)),
        "expected a {} signature:\n{all}",
        case.openssl_type
    );
    if case.openssl_digest.is_empty() {
        assert!(
            !all.contains("Peer signing digest"),
            "a digest for EdDSA:\n{all}"
        );
    } else {
        assert!(
            all.contains(&format!("Peer signing digest: {}", case.openssl_digest)),
            "expected a {} digest:\n{all}",
            case.openssl_digest
        );
    }
    assert!(
        all.contains(&format!("Protocol  : {}", case.version.openssl_name()))
            || all.contains(&format!("New, {}", case.version.openssl_name())),
        "expected {}:\n{all}",
        case.version.openssl_name()
    );
    assert!(stdout.contains("hardkey test server"), "no page:\n{all}");
}

fn handshakes(fx: &Fixture, device: &'static str, alg: KeyAlgorithm, stack: Stack) {
    let (key, chain) = fx.key(device, alg);
    let server = start(key, &chain, stack);
    let addr = server.local_addr();
    let cases = match alg {
        KeyAlgorithm::EcP256 => P256_CASES,
        KeyAlgorithm::EcP384 => P384_CASES,
        KeyAlgorithm::Ed25519 => ED25519_CASES,
        _ => RSA_CASES,
    };
    for case in cases {
        check_rust_client(fx, addr, stack, case);
        println!(
            "{device}/{alg}/{stack}: rustls client {:?} {:?} ok",
            case.version, case.expect
        );
        check_openssl(fx, addr, case);
        println!(
            "{device}/{alg}/{stack}: openssl {:?} {} ok",
            case.version, case.openssl_sigalgs
        );
    }
    let stats = server.stats();
    assert_eq!(stats.handshake_failures, 0, "{stats:?}");
    assert_eq!(stats.handshakes, 2 * cases.len() as u64, "{stats:?}");
    server.shutdown().unwrap();
}

fn curl_keep_alive(fx: &Fixture, stack: Stack) {
    let (key, chain) = fx.key("soft", KeyAlgorithm::EcP256);
    let server = start(key, &chain, stack);
    for (tls_max, name) in [("1.3", "TLSv1.3"), ("1.2", "TLSv1.2")] {
        let out = curl_twice(server.local_addr(), &fx.ca.ca_file(), tls_max);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "curl failed:\n{stderr}");
        assert_eq!(stdout.matches("hardkey test server").count(), 2, "{stdout}");
        assert!(
            stderr.contains(&format!("SSL connection using {name}")),
            "{stderr}"
        );
        assert!(stderr.contains("Re-using existing connection"), "{stderr}");
        assert!(stderr.contains("SSL certificate verify ok"), "{stderr}");
    }
    // A TCP health check (connect, close) is not a failed handshake.
    drop(std::net::TcpStream::connect(server.local_addr()).unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while server.stats().closed_silent == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let stats = server.stats();
    assert_eq!((stats.handshakes, stats.requests), (2, 4), "{stats:?}");
    assert_eq!(
        (stats.closed_silent, stats.handshake_failures),
        (1, 0),
        "{stats:?}"
    );
    server.shutdown().unwrap();
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    // SoftHSM first: it sets its configuration variable while the process has one thread.
    let hsm = softhsm_tests::SoftHsm::start();
    // The TPM through tpm2-abrmd, so trials run in parallel: the swtpm TCTI opens a socket
    // per TPM command without close-on-exec, and an `openssl` or `curl` that a parallel trial
    // starts while a command is in flight would inherit it; swtpm (one connection at a time)
    // then waits for that tool to exit, which waits for its handshake, which waits for the
    // TPM. The tabrmd TCTI's one connection is made close-on-exec by hardkey when it opens.
    let tpm = swtpm_tests::Swtpm::start();
    let abrmd = swtpm_tests::Abrmd::start(&tpm);
    softhsm_tests::set_env_before_threads("DBUS_SESSION_BUS_ADDRESS", abrmd.bus_address().as_ref());
    common::capture_logs();
    let tpm_keys = tempfile::Builder::new()
        .prefix("hardkey-tls-tpm-")
        .tempdir()
        .unwrap();
    let soft = hardkey_soft::SoftStore::in_memory().unwrap();
    let softhsm = hsm.store(2);
    let swtpm = Arc::new(swtpm_tests::open_store(
        hardkey_tpm::TpmConfig::new(abrmd.tcti()).key_dir(tpm_keys.path()),
    ));
    let stores: HashMap<&'static str, Arc<dyn DynKeyStore>> = HashMap::from([
        ("soft", Arc::new(soft) as Arc<dyn DynKeyStore>),
        ("softhsm", Arc::new(softhsm) as Arc<dyn DynKeyStore>),
        ("swtpm", Arc::clone(&swtpm) as Arc<dyn DynKeyStore>),
    ]);
    let fx = Arc::new(Fixture {
        ca: Ca::new(),
        tpm_store: swtpm,
        stores,
        keys: Mutex::default(),
    });

    // Every key is made before any handshake: a TPM generating an RSA key is busy for
    // seconds, and a signature queued behind it would only measure that.
    for device in ["soft", "softhsm", "swtpm"] {
        for alg in [
            KeyAlgorithm::EcP256,
            KeyAlgorithm::EcP384,
            KeyAlgorithm::Rsa2048,
        ] {
            fx.key(device, alg);
        }
    }
    // Ed25519 where the device has it (TPM 2.0 has no EdDSA).
    for device in ["soft", "softhsm"] {
        fx.key(device, KeyAlgorithm::Ed25519);
    }

    let mut trials = Vec::new();
    for device in ["soft", "softhsm", "swtpm"] {
        for (alg_name, alg) in [
            ("p256", KeyAlgorithm::EcP256),
            ("p384", KeyAlgorithm::EcP384),
            ("rsa2048", KeyAlgorithm::Rsa2048),
        ] {
            for stack in Stack::ALL.into_iter().filter(|s| s.is_available()) {
                let fx = Arc::clone(&fx);
                trials.push(trial(format!("{device}::{alg_name}::{stack}"), move || {
                    handshakes(&fx, device, alg, stack)
                }));
            }
        }
    }
    for device in ["soft", "softhsm"] {
        for stack in Stack::ALL.into_iter().filter(|s| s.is_available()) {
            let fx = Arc::clone(&fx);
            trials.push(trial(format!("{device}::ed25519::{stack}"), move || {
                handshakes(&fx, device, KeyAlgorithm::Ed25519, stack)
            }));
        }
    }
    for stack in Stack::ALL.into_iter().filter(|s| s.is_available()) {
        let fx = Arc::clone(&fx);
        trials.push(trial(format!("curl_keep_alive::{stack}"), move || {
            curl_keep_alive(&fx, stack)
        }));
    }

    let conclusion = libtest_mimic::run(&args, trials);
    // Keys and stores go before the emulators, so no worker is inside a device at exit.
    match Arc::try_unwrap(fx) {
        Ok(fx) => drop(fx),
        Err(_) => eprintln!("fixture still shared at exit"),
    }
    drop(abrmd);
    drop(tpm);
    drop(hsm);
    conclusion.exit_code()
}
