//! Bad input and failing devices, on software keys and swtpm: a certificate that does not
//! match the key, unreadable or malformed chains, an unknown stack, a TPM unreachable at
//! startup are refused at startup with clear errors; a device that dies mid-handshake fails
//! that handshake only, while the server keeps serving other connections. Also: concurrent
//! handshakes on a slow key do not wait for each other on either stack, and BoringSSL's
//! decrypt path serves TLS 1.2 RSA key exchange when a key allows it; a client that never
//! speaks is closed at the handshake deadline, and a connect-and-close probe is not counted
//! as a failed handshake.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "test code"
)]
#![cfg(all(feature = "boring", feature = "rustls"))]

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Ca, Version, capture_logs, connect, get, logged};
use futures::executor::block_on;
use hardkey_api::{
    DecryptScheme, Delayed, ErrorKind, GenerateRequest, KeyAlgorithm, KeyInfo, KeyStore, Latency,
    PrivateKey, SharedKey, SignatureScheme,
};
use hardkey_soft::SoftStore;
use hardkey_tls::{CertChain, Error, Server, ServerConfig, ServerHandle, Stack};
use rustls::SignatureScheme as S;
use zeroize::Zeroizing;

const ANY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

fn soft_key(alg: KeyAlgorithm, label: &str) -> SharedKey {
    let store = SoftStore::in_memory().unwrap();
    Arc::new(block_on(store.generate(GenerateRequest::new(alg).label(label))).unwrap())
}

fn chain_for(ca: &Ca, key: &SharedKey, name: &str) -> CertChain {
    CertChain::from_pem(ca.issue(&key.info().public_key, name)).unwrap()
}

fn start(config: ServerConfig) -> ServerHandle {
    Server::start(config.listen(ANY)).unwrap()
}

#[test]
fn mismatched_certificate_is_refused_at_startup() {
    let ca = Ca::new();
    let key = soft_key(KeyAlgorithm::EcP256, "served");
    let other = soft_key(KeyAlgorithm::EcP256, "other");
    let rsa = soft_key(KeyAlgorithm::Rsa2048, "rsa");
    for stack in Stack::ALL {
        for (cert_key, cert_alg) in [(&other, "p256"), (&rsa, "rsa2048")] {
            let chain = chain_for(&ca, cert_key, "mismatch.example");
            let config = ServerConfig::new(Arc::clone(&key), chain).stack(stack);
            let err = Server::start(config.listen(ANY)).unwrap_err();
            assert!(matches!(err, Error::KeyMismatch(_)), "{err:?}");
            let msg = err.to_string();
            println!("{stack}: {msg}");
            assert!(msg.contains("does not match"), "{msg}");
            assert!(msg.contains("CN=mismatch.example"), "{msg}");
            assert!(
                msg.contains(&format!("holds public key {cert_alg} sha256:")),
                "{msg}"
            );
            assert!(msg.contains("key 'served' is p256 sha256:"), "{msg}");
        }
    }
    // The adapters check too, for callers that build their own servers.
    let chain = chain_for(&ca, &other, "mismatch.example");
    let err = hardkey_tls::rustls::server_config(Arc::clone(&key), &chain).unwrap_err();
    assert!(matches!(err, Error::KeyMismatch(_)), "{err:?}");
    let err = hardkey_tls::boring::acceptor(Arc::clone(&key), &chain)
        .err()
        .expect("a mismatched key is refused");
    assert!(matches!(err, Error::KeyMismatch(_)), "{err:?}");
}

#[test]
fn unreadable_and_malformed_chains_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let err = CertChain::from_pem_file(&missing).unwrap_err();
    assert!(matches!(err, Error::ReadCertificate { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.pem"), "{err}");
    println!("{err}");

    let key_only = dir.path().join("key-only.pem");
    std::fs::write(
        &key_only,
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = CertChain::from_pem_file(&key_only).unwrap_err();
    assert!(matches!(err, Error::NoCertificate { .. }), "{err:?}");
    assert!(err.to_string().contains("key-only.pem"), "{err}");
    println!("{err}");
    assert!(matches!(
        CertChain::from_pem("").unwrap_err(),
        Error::NoCertificate { .. }
    ));
    assert!(matches!(
        CertChain::from_der(Vec::<Vec<u8>>::new()).unwrap_err(),
        Error::NoCertificate { .. }
    ));

    // A well-formed PEM block around bytes that are no certificate, second in the chain.
    let ca = Ca::new();
    let good = ca.issue(&soft_key(KeyAlgorithm::EcP256, "k").info().public_key, "ok");
    let junk = "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n";
    let err = CertChain::from_pem(format!("{good}{junk}")).unwrap_err();
    assert!(
        matches!(err, Error::BadCertificate { index: 3, .. }),
        "{err:?}"
    );
    println!("{err}");
    let err = CertChain::from_pem("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n")
        .unwrap_err();
    assert!(
        matches!(err, Error::BadCertificate { index: 1, .. }),
        "{err:?}"
    );
    let err = CertChain::from_der([vec![0x30, 0x03, 0x02, 0x01, 0x01]]).unwrap_err();
    assert!(
        matches!(err, Error::BadCertificate { index: 1, .. }),
        "{err:?}"
    );
}

#[test]
fn stack_names() {
    assert_eq!("boring".parse::<Stack>().unwrap(), Stack::Boring);
    assert_eq!("BoringSSL".parse::<Stack>().unwrap(), Stack::Boring);
    assert_eq!(" rustls ".parse::<Stack>().unwrap(), Stack::Rustls);
    let err = "openssl".parse::<Stack>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown TLS stack 'openssl': expected boring or rustls"
    );
    for stack in Stack::ALL {
        assert_eq!(stack.to_string().parse::<Stack>().unwrap(), stack);
        assert!(stack.is_available());
    }
}

/// A key whose device can die: each operation first takes `delay` (a `Delayed` key), then
/// fails if the device died meanwhile, as a TPM or HSM that went away mid-operation would.
struct Dying {
    inner: SharedKey,
    dead: Arc<AtomicBool>,
}

impl PrivateKey for Dying {
    fn info(&self) -> &KeyInfo {
        self.inner.info()
    }

    fn sign_digest(
        &self,
        scheme: SignatureScheme,
        digest: &[u8],
    ) -> impl Future<Output = hardkey_api::Result<Vec<u8>>> + Send + 'static + use<> {
        let op = self.inner.sign_digest(scheme, digest);
        let dead = Arc::clone(&self.dead);
        async move {
            let result = op.await;
            if dead.load(Ordering::SeqCst) {
                return Err(hardkey_api::Error::device_unavailable(
                    "test device",
                    "the device stopped answering",
                ));
            }
            result
        }
    }

    fn decrypt(
        &self,
        scheme: DecryptScheme,
        ciphertext: &[u8],
    ) -> impl Future<Output = hardkey_api::Result<Zeroizing<Vec<u8>>>> + Send + 'static + use<>
    {
        self.inner.decrypt(scheme, ciphertext)
    }
}

#[test]
fn a_device_dying_mid_handshake_fails_that_handshake_only() {
    capture_logs();
    let ca = Ca::new();
    let delay = Duration::from_millis(400);
    for stack in Stack::ALL {
        let label = format!("dying-{stack}");
        let soft = soft_key(KeyAlgorithm::EcP256, &label);
        let dead = Arc::new(AtomicBool::new(false));
        let key: SharedKey = Arc::new(Dying {
            inner: Arc::new(Delayed::concurrent(soft, Latency::Fixed(delay))),
            dead: Arc::clone(&dead),
        });
        let chain = chain_for(&ca, &key, "localhost");
        let server = start(ServerConfig::new(key, chain).stack(stack));
        let addr = server.local_addr();
        let client =
            || common::client_config(&ca.ca_der(), Version::Tls13, &[S::ECDSA_NISTP256_SHA256]).0;

        // A: a keep-alive connection made while the device works.
        let mut a = connect(addr, "localhost", client()).unwrap();
        assert!(get(&mut a, false).unwrap().contains("200 OK"));

        // B: the device dies while B's signature is in flight.
        dead.store(true, Ordering::SeqCst);
        let b = std::thread::spawn({
            let config = client();
            move || connect(addr, "localhost", config)
        });
        // Meanwhile the server answers A at once: the loop is not waiting for the device.
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        assert!(get(&mut a, false).unwrap().contains("200 OK"));
        let served_in = t.elapsed();
        assert!(served_in < delay / 2, "{stack}: A waited {served_in:?}");
        let err = b.join().unwrap().expect_err("B's handshake must fail");
        println!("{stack}: client B: {err}");
        // The client is told: a fatal internal_error alert, not a dropped connection.
        assert!(
            err.to_string()
                .contains("received fatal alert: InternalError"),
            "{stack}: {err}"
        );
        // So is openssl, on TLS 1.3 and TLS 1.2 (each waits one delay for the dead device).
        for version in [Version::Tls13, Version::Tls12] {
            let out = common::openssl_s_client(addr, &ca.ca_file(), version, "ECDSA+SHA256");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                text.contains("alert internal error"),
                "{stack} {version:?}: openssl saw no internal_error alert:\n{text}"
            );
        }

        // The device is back: new handshakes work, A still works.
        dead.store(false, Ordering::SeqCst);
        let mut c = connect(addr, "localhost", client()).unwrap();
        assert!(get(&mut c, true).unwrap().contains("200 OK"));
        assert!(get(&mut a, true).unwrap().contains("200 OK"));

        let stats = server.stats();
        assert_eq!(
            (stats.handshakes, stats.handshake_failures),
            (2, 3),
            "{stack}: {stats:?}"
        );
        let lines = logged(&format!("'{label}'"));
        assert!(
            lines
                .iter()
                .any(|l| l.contains("signature failed") && l.contains("stopped answering")),
            "{stack}: {lines:?}"
        );
        println!("{stack}: server log: {lines:?}");
        server.shutdown().unwrap();
    }
}

#[test]
fn concurrent_handshakes_on_a_slow_key_overlap() {
    // The experiment in small: 20 handshakes on a 500 ms key, one server thread. Waiting in
    // turn would take 10 s; overlapping, about one delay.
    let ca = Ca::new();
    let delay = Duration::from_millis(500);
    let key = soft_key(KeyAlgorithm::EcP256, "slow");
    for stack in Stack::ALL {
        let server = start(
            ServerConfig::new(Arc::clone(&key), chain_for(&ca, &key, "localhost"))
                .stack(stack)
                .simulate_latency(Some(delay)),
        );
        let addr = server.local_addr();
        let config =
            common::client_config(&ca.ca_der(), Version::Tls13, &[S::ECDSA_NISTP256_SHA256]).0;
        let t = Instant::now();
        let clients: Vec<_> = (0..20)
            .map(|_| {
                let config = Arc::clone(&config);
                std::thread::spawn(move || {
                    let mut s = connect(addr, "localhost", config).unwrap();
                    get(&mut s, true).unwrap()
                })
            })
            .collect();
        for c in clients {
            assert!(c.join().unwrap().contains("simulated key latency 500ms"));
        }
        let wall = t.elapsed();
        println!("{stack}: 20 handshakes on a 500 ms key in {wall:?}");
        assert!(wall < delay * 3, "{stack}: {wall:?}");
        server.shutdown().unwrap();
    }
}

#[test]
fn unreachable_tpm_is_refused_at_startup() {
    // No TPM at all where the configuration points: opening the store says so.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = nowhere.local_addr().unwrap().port();
    drop(nowhere);
    let err = hardkey_tpm::TpmStore::open(hardkey_tpm::TpmConfig::new(format!(
        "swtpm:host=127.0.0.1,port={port}"
    )))
    .unwrap_err();
    println!("store: {err}");
    assert_eq!(err.kind(), ErrorKind::DeviceUnavailable, "{err}");

    // A key opened while the TPM was up, the TPM gone before the server starts: the startup
    // test signature fails, naming the key, and no port is left open.
    let ca = Ca::new();
    let mut tpm = swtpm_tests::Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let store = swtpm_tests::open_store(tpm.config(dir.path()));
    let key: SharedKey = Arc::new(
        block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP256).label("gone"))).unwrap(),
    );
    let chain = chain_for(&ca, &key, "localhost");
    tpm.kill();
    for stack in Stack::ALL {
        let config = ServerConfig::new(Arc::clone(&key), chain.clone())
            .stack(stack)
            .handshake_timeout(Duration::from_secs(20));
        let t = Instant::now();
        let err = Server::start(config.listen(ANY)).unwrap_err();
        println!("{stack} after {:?}: {err}", t.elapsed());
        assert!(
            matches!(err, Error::KeyProbe { .. } | Error::KeyProbeTimeout { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("'gone'"), "{err}");
        assert!(err.to_string().contains("test signature"), "{err}");
    }
}

#[test]
fn negotiation_follows_what_the_key_can_do() {
    let ca = Ca::new();
    let rsa = soft_key(KeyAlgorithm::Rsa2048, "negotiate-rsa");
    let ec = soft_key(KeyAlgorithm::EcP256, "negotiate-ec");
    for stack in Stack::ALL {
        // The key's preference among what the client offers: PKCS#1 SHA-384 comes before
        // SHA-512 in the key's list, and ECDSA is not the key's at all.
        let server = start(
            ServerConfig::new(Arc::clone(&rsa), chain_for(&ca, &rsa, "localhost")).stack(stack),
        );
        let offer = [
            S::ECDSA_NISTP256_SHA256,
            S::RSA_PKCS1_SHA512,
            S::RSA_PKCS1_SHA384,
        ];
        let (response, _, scheme) =
            common::rust_client_fetch(server.local_addr(), &ca.ca_der(), Version::Tls12, &offer)
                .unwrap();
        assert!(response.contains("200 OK"), "{response}");
        assert_eq!(scheme, Some(S::RSA_PKCS1_SHA384), "{stack}");
        server.shutdown().unwrap();

        // Nothing the key can do is offered: the handshake fails, the server goes on.
        let server = start(
            ServerConfig::new(Arc::clone(&ec), chain_for(&ca, &ec, "localhost")).stack(stack),
        );
        for version in [Version::Tls12, Version::Tls13] {
            let err = common::rust_client_fetch(
                server.local_addr(),
                &ca.ca_der(),
                version,
                &[S::RSA_PSS_SHA256, S::ECDSA_NISTP384_SHA384],
            )
            .expect_err("no common signature scheme");
            println!("{stack} {version:?}: {err}");
        }
        let (response, _, scheme) = common::rust_client_fetch(
            server.local_addr(),
            &ca.ca_der(),
            Version::Tls13,
            &[S::ECDSA_NISTP256_SHA256],
        )
        .unwrap();
        assert!(response.contains("200 OK"), "{response}");
        assert_eq!(scheme, Some(S::ECDSA_NISTP256_SHA256));
        let stats = server.stats();
        assert_eq!(
            (stats.handshakes, stats.handshake_failures),
            (1, 2),
            "{stack}: {stats:?}"
        );
        server.shutdown().unwrap();
    }
}

#[test]
fn a_silent_client_times_out_and_a_probe_is_not_a_failure() {
    use std::io::Read;
    let ca = Ca::new();
    for stack in Stack::ALL {
        let key = soft_key(KeyAlgorithm::EcP256, &format!("silent-{stack}"));
        let chain = chain_for(&ca, &key, "localhost");
        let timeout = Duration::from_millis(300);
        let server = start(
            ServerConfig::new(key, chain)
                .stack(stack)
                .handshake_timeout(timeout),
        );
        let addr = server.local_addr();
        // A probe: connect and close.
        drop(std::net::TcpStream::connect(addr).unwrap());
        // A client that connects and never speaks: the server closes it at the deadline,
        // which the wait for its first byte counts against.
        let mut silent = std::net::TcpStream::connect(addr).unwrap();
        silent
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 1];
        let n = silent.read(&mut buf).unwrap_or(0);
        let waited = t.elapsed();
        assert_eq!(
            n, 0,
            "{stack}: the server sent something to a silent client"
        );
        assert!(
            waited >= timeout && waited < timeout * 4,
            "{stack}: closed after {waited:?}, deadline {timeout:?}"
        );
        // A real handshake still works.
        let config =
            common::client_config(&ca.ca_der(), Version::Tls13, &[S::ECDSA_NISTP256_SHA256]).0;
        let mut c = connect(addr, "localhost", config).unwrap();
        assert!(get(&mut c, true).unwrap().contains("200 OK"));
        let stats = server.stats();
        assert_eq!(
            (
                stats.closed_silent,
                stats.handshake_failures,
                stats.handshakes
            ),
            (1, 1, 1),
            "{stack}: {stats:?}"
        );
        server.shutdown().unwrap();
    }
}
