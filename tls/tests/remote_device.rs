//! A real device going away, under the test server: a SoftHSM token served through
//! `p11-kit server` (a remote HSM stand-in) is killed before the server starts (a clear error
//! at startup, no port left open) and during a handshake (that handshake fails, established
//! connections keep being served, and once the device is back new handshakes succeed without
//! restarting the server). And TLS 1.2 RSA key exchange through the token's decryption, on
//! both of its paths (the token's own PKCS#1 v1.5, and raw RSA with the padding checked on the
//! host); software keys refuse it (RUSTSEC-2023-0071).
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "test code"
)]

mod common;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Ca, Version, capture_logs, connect, get, logged};
use futures::executor::block_on;
use hardkey_api::testkit::harness::{Arguments, trial};
use hardkey_api::uri::Pkcs11Uri;
use hardkey_api::{GenerateRequest, KeyAlgorithm, KeyStore, PrivateKey, SharedKey};
use hardkey_pkcs11::{PinSource, Pkcs11Config, Pkcs11Store};
use hardkey_tls::{CertChain, Error, Server, ServerConfig, Stack};
use rustls::SignatureScheme as S;
use softhsm_tests::{P11KitServer, SoftHsm};

const ANY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

struct Fixture {
    ca: Ca,
    store: Pkcs11Store,
    p11kit: Mutex<P11KitServer>,
    /// The token directly, with legacy PKCS#1 v1.5 decryption allowed.
    legacy: Pkcs11Store,
}

impl Fixture {
    fn key(&self, label: &str) -> (SharedKey, CertChain) {
        let key: SharedKey = Arc::new(
            block_on(
                self.store
                    .generate(GenerateRequest::new(KeyAlgorithm::EcP256).label(label)),
            )
            .unwrap(),
        );
        let chain = CertChain::from_pem(self.ca.issue(&key.info().public_key, label)).unwrap();
        (key, chain)
    }

    /// Restarts the remote module and waits until `key` signs again.
    fn restore(&self, key: &SharedKey) {
        self.p11kit.lock().unwrap().restart();
        let deadline = Instant::now() + Duration::from_secs(15);
        while let Err(e) = block_on(key.sign(hardkey_api::SignatureScheme::EcdsaP256Sha256, b"up"))
        {
            assert!(
                Instant::now() < deadline,
                "the token did not come back: {e}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn unreachable_at_startup(fx: &Fixture) {
    let (key, chain) = fx.key("tls-remote-startup");
    fx.p11kit.lock().unwrap().kill();
    for stack in Stack::ALL.into_iter().filter(|s| s.is_available()) {
        let config = ServerConfig::new(Arc::clone(&key), chain.clone())
            .stack(stack)
            .listen(ANY);
        let t = Instant::now();
        let err = Server::start(config).unwrap_err();
        println!("{stack} after {:?}: {err}", t.elapsed());
        assert!(
            matches!(err, Error::KeyProbe { .. } | Error::KeyProbeTimeout { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("'tls-remote-startup'"), "{msg}");
        assert!(msg.contains("test signature"), "{msg}");
    }
    fx.restore(&key);
}

fn dies_mid_handshake(fx: &Fixture, stack: Stack) {
    let label = format!("tls-remote-{stack}");
    let (key, chain) = fx.key(&label);
    // Every key operation first waits 600 ms, so the device can die while one is in flight.
    let delay = Duration::from_millis(600);
    let server = Server::start(
        ServerConfig::new(Arc::clone(&key), chain)
            .stack(stack)
            .simulate_latency(Some(delay))
            .listen(ANY),
    )
    .unwrap();
    let addr = server.local_addr();
    let client =
        || common::client_config(&fx.ca.ca_der(), Version::Tls13, &[S::ECDSA_NISTP256_SHA256]).0;

    let mut a = connect(addr, "localhost", client()).unwrap();
    assert!(get(&mut a, false).unwrap().contains("200 OK"));

    let b = std::thread::spawn({
        let config = client();
        move || connect(addr, "localhost", config)
    });
    std::thread::sleep(Duration::from_millis(200));
    fx.p11kit.lock().unwrap().kill();
    // The server keeps answering the established connection meanwhile.
    let t = Instant::now();
    assert!(get(&mut a, false).unwrap().contains("200 OK"));
    assert!(t.elapsed() < delay / 2, "A waited {:?}", t.elapsed());
    let t = Instant::now();
    let err = b.join().unwrap().expect_err("B's handshake must fail");
    println!(
        "{stack}: client B failed {:?} after the kill: {err}",
        t.elapsed()
    );

    // Back up: the same server, same key, serves new handshakes.
    fx.restore(&key);
    let mut c = connect(addr, "localhost", client()).unwrap();
    assert!(get(&mut c, true).unwrap().contains("200 OK"));
    assert!(get(&mut a, true).unwrap().contains("200 OK"));

    let stats = server.stats();
    assert_eq!(stats.handshakes, 2, "{stats:?}");
    assert_eq!(stats.handshake_failures, 1, "{stats:?}");
    let lines = logged(&format!("'{label}'"));
    assert!(
        lines.iter().any(|l| l.contains("signature failed")),
        "{lines:?}"
    );
    println!("{stack}: server log: {lines:?}");
    server.shutdown().unwrap();
}

/// TLS 1.2 RSA key exchange (BoringSSL's decrypt callback) on token keys: one whose token
/// does PKCS#1 v1.5 itself, one that allows raw RSA (padding checked on the host), and one
/// opened without the legacy opt-in, which is refused with a log line saying why.
fn tls12_rsa_key_exchange_decrypts_on_the_token(fx: &Fixture) {
    let ca = &fx.ca;
    let legacy = |label: &str, raw: bool| -> SharedKey {
        let request = GenerateRequest::new(KeyAlgorithm::Rsa2048)
            .label(label)
            .raw_rsa(raw);
        Arc::new(block_on(fx.legacy.generate(request)).unwrap())
    };
    let token_padding = legacy("legacy-kx", false);
    let host_padding = legacy("legacy-kx-raw", true);
    let refused: SharedKey = Arc::new(
        block_on(
            fx.store
                .generate(GenerateRequest::new(KeyAlgorithm::Rsa2048).label("no-legacy-kx")),
        )
        .unwrap(),
    );
    for (key, works) in [
        (token_padding, true),
        (host_padding, true),
        (refused, false),
    ] {
        let chain = CertChain::from_pem(ca.issue(&key.info().public_key, "localhost")).unwrap();
        let mut builder = hardkey_tls::boring::acceptor_builder(Arc::clone(&key), &chain).unwrap();
        builder.set_cipher_list("AES128-GCM-SHA256").unwrap();
        let acceptor = builder.build();
        let listener = std::net::TcpListener::bind(ANY).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                listener.set_nonblocking(true).unwrap();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let (tcp, _) = listener.accept().await.unwrap();
                match tokio_boring::accept(&acceptor, tcp).await {
                    Ok(mut tls) => {
                        let mut buf = [0u8; 1024];
                        let _ = tls.read(&mut buf).await;
                        tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\n")
                            .await
                            .unwrap();
                        let _ = tls.shutdown().await;
                        true
                    }
                    Err(_) => false,
                }
            })
        });
        let out = std::process::Command::new("openssl")
            .args(["s_client", "-connect", &addr.to_string(), "-tls1_2"])
            .args([
                "-cipher",
                "AES128-GCM-SHA256",
                "-verify_return_error",
                "-ign_eof",
            ])
            .arg("-CAfile")
            .arg(ca.ca_file())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(b"GET / HTTP/1.1\r\n\r\n")?;
                child.wait_with_output()
            })
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(server.join().unwrap(), works, "{all}");
        if works {
            assert!(out.status.success(), "{all}");
            assert!(all.contains("Cipher    : AES128-GCM-SHA256"), "{all}");
            assert!(all.contains("Verify return code: 0 (ok)"), "{all}");
            assert!(all.contains("hello"), "{all}");
        } else {
            let lines = logged("'no-legacy-kx'");
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains("allow_legacy_rsa_pkcs1v15_decrypt")),
                "{lines:?}"
            );
        }
    }
}

fn main() -> ExitCode {
    let mut args = Arguments::from_args();
    // One remote module for the whole binary, killed and restarted by the trials: in turn.
    args.test_threads = Some(1);
    let hsm = SoftHsm::start();
    let p11kit = P11KitServer::start(&hsm);
    capture_logs();
    let config = Pkcs11Config::new(
        Pkcs11Uri::new().with_token(hsm.label()),
        PinSource::Value(hsm.user_pin().clone()),
    )
    .module(p11kit.client_module())
    .sessions(2);
    let store = Pkcs11Store::open(config).expect("open the token through p11-kit");
    let policy = hardkey_api::KeyPolicy::default().with_legacy_rsa_pkcs1v15_decrypt(true);
    let legacy = Pkcs11Store::open(hsm.config().sessions(1).policy(policy))
        .expect("open the token directly");
    let fx = Arc::new(Fixture {
        ca: Ca::new(),
        store,
        p11kit: Mutex::new(p11kit),
        legacy,
    });
    let mut trials = vec![trial("unreachable_hsm_is_refused_at_startup", {
        let fx = Arc::clone(&fx);
        move || unreachable_at_startup(&fx)
    })];
    if Stack::Boring.is_available() {
        let fx = Arc::clone(&fx);
        trials.push(trial(
            "tls12_rsa_key_exchange_decrypts_on_the_token",
            move || tls12_rsa_key_exchange_decrypts_on_the_token(&fx),
        ));
    }
    for stack in Stack::ALL.into_iter().filter(|s| s.is_available()) {
        let fx = Arc::clone(&fx);
        trials.push(trial(
            format!("hsm_dies_mid_handshake::{stack}"),
            move || dies_mid_handshake(&fx, stack),
        ));
    }
    let conclusion = libtest_mimic::run(&args, trials);
    if let Ok(fx) = Arc::try_unwrap(fx) {
        fx.store.pool().shutdown(Duration::from_secs(5));
        fx.legacy.pool().shutdown(Duration::from_secs(5));
        drop(fx);
    }
    drop(hsm);
    conclusion.exit_code()
}
