//! Client certificates (mutual TLS) in the library, on both stacks, with software keys (the
//! CLI's `mtls` suite runs the same clients with SoftHSM and swtpm keys against
//! `openssl s_server`, and `hardkey serve` against curl and `openssl s_client`):
//! - a server with `ServerConfig::client_ca` accepts an independent rustls client presenting
//!   a certificate from the CA (the page names its subject), refuses one presenting none or
//!   one from another CA, and counts and logs the refusals;
//! - hardkey's own client ([`Connector`]) on both stacks presents a hardkey key;
//! - the rustls connector signs off the event loop: with a 400 ms key, a ticker on the same
//!   single-threaded runtime keeps ticking through the handshake, while
//!   `tokio_rustls::TlsConnector` with the same configuration stalls it for the device's
//!   whole round trip (the hazard the connector exists for).
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test code"
)]
#![cfg(all(feature = "boring", feature = "rustls"))]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::Ca;
use futures::executor::block_on;
use hardkey_api::{
    Delayed, GenerateRequest, KeyAlgorithm, KeyStore, Latency, PrivateKey, PublicKey, SharedKey,
};
use hardkey_soft::SoftStore;
use hardkey_tls::client::{ClientIdentity, Connector};
use hardkey_tls::{CertChain, Server, ServerConfig, ServerHandle, Stack, TrustAnchors};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const ANY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

fn soft_key(label: &str) -> SharedKey {
    let store = SoftStore::in_memory().unwrap();
    Arc::new(
        block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP256).label(label))).unwrap(),
    )
}

/// A server on `stack` requiring client certificates from `ca`.
fn server(ca: &Ca, stack: Stack) -> ServerHandle {
    let key = soft_key("mtls-server");
    let chain = CertChain::from_pem(ca.issue(&key.info().public_key, "localhost")).unwrap();
    let client_ca = TrustAnchors::from_pem_file(ca.ca_file()).unwrap();
    Server::start(
        ServerConfig::new(key, chain)
            .stack(stack)
            .listen(ANY)
            .client_ca(Some(client_ca)),
    )
    .unwrap()
}

/// A software client key (rcgen) and its certificate chain from `ca`.
fn soft_client(ca: &Ca, cn: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let public = PublicKey::from_spki_der(&key.public_key_der()).unwrap();
    let chain = ca.issue_client(&public, cn);
    let certs = CertificateDer::pem_slice_iter(chain.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    (
        certs,
        PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
    )
}

/// GET / over `tls`; the response, or the error.
async fn get<S: AsyncRead + AsyncWrite + Unpin>(mut tls: S) -> std::io::Result<String> {
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    tls.flush().await?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    // Until the page is complete (the server keeps the connection for its grace period).
    while !String::from_utf8_lossy(&response).contains("stack: ") || !response.ends_with(b"\n") {
        let n = tls.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// An independent rustls client (rustls's own signer, with_client_auth_cert) against a
/// hardkey server, with and without a client certificate and with one from another CA.
#[test]
fn the_server_requires_client_certificates_from_its_ca() {
    common::capture_logs();
    let ca = Ca::new();
    let other = Ca::new();
    for stack in Stack::ALL {
        let server = server(&ca, stack);
        let addr = server.local_addr();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.ca_der()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(hardkey_tls::rustls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let fetch = |config: rustls::ClientConfig| {
            runtime.block_on(async {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                let name = ServerName::try_from("localhost").unwrap();
                get(connector.connect(name, tcp).await?).await
            })
        };
        let (certs, key) = soft_client(&ca, "rustls-client");
        let page = fetch(builder.clone().with_client_auth_cert(certs, key).unwrap()).unwrap();
        assert!(
            page.contains("\nclient: CN=rustls-client\n"),
            "{stack}: {page}"
        );
        // TLS 1.3: the client's handshake ends before the server checks its certificate;
        // the refusal arrives as an alert with the first read.
        let refused = fetch(builder.clone().with_no_client_auth());
        assert!(
            refused.is_err(),
            "{stack}: no certificate was accepted: {refused:?}"
        );
        let (certs, key) = soft_client(&other, "stranger");
        let refused = fetch(builder.clone().with_client_auth_cert(certs, key).unwrap());
        assert!(
            refused.is_err(),
            "{stack}: another CA's certificate was accepted: {refused:?}"
        );
        // The server counts a refusal once its accept returns, which is after it sent the
        // client the alert: wait until the refused connections have ended there.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while server.stats().active > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let stats = server.stats();
        assert_eq!(
            (stats.handshakes, stats.client_cert_rejections),
            (1, 2),
            "{stack}: {stats:?}"
        );
        assert_eq!(stats.handshake_failures, 2, "{stack}: {stats:?}");
        server.shutdown().unwrap();
    }
    assert!(
        !common::logged("client certificate required, and the client sent none").is_empty(),
        "{:?}",
        common::logged("")
    );
    assert!(!common::logged("client certificate rejected: ").is_empty());
}

/// hardkey's client on each stack, against a hardkey server on each stack.
#[test]
fn hardkeys_client_presents_a_hardkey_key_on_both_stacks() {
    let ca = Ca::new();
    let roots = TrustAnchors::from_pem_file(ca.ca_file()).unwrap();
    let key = soft_key("mtls-client");
    let chain = CertChain::from_pem(ca.issue_client(&key.info().public_key, "hardkey-client"));
    let identity = ClientIdentity::new(key, chain.unwrap()).unwrap();
    // A certificate for another key is refused when the identity is made.
    let other = soft_key("other");
    let wrong = CertChain::from_pem(ca.issue_client(&other.info().public_key, "x")).unwrap();
    assert!(ClientIdentity::new(Arc::clone(identity.key()), wrong).is_err());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for server_stack in Stack::ALL {
        let server = server(&ca, server_stack);
        let addr = server.local_addr();
        for stack in Stack::ALL {
            let connector = Connector::new(stack, Some(&identity), &roots).unwrap();
            let page = runtime
                .block_on(async {
                    let tcp = tokio::net::TcpStream::connect(addr).await?;
                    get(connector.connect("localhost", tcp).await?).await
                })
                .unwrap_or_else(|e| panic!("{stack} client, {server_stack} server: {e}"));
            assert!(
                page.contains("\nclient: CN=hardkey-client\n"),
                "{stack} client, {server_stack} server: {page}"
            );
        }
        assert_eq!(server.stats().handshakes, 2);
        server.shutdown().unwrap();
    }
}

/// The longest pause of a 10 ms ticker on the current (single-threaded) runtime while
/// `work` runs, and `work`'s result.
async fn longest_stall<T>(work: impl std::future::Future<Output = T>) -> (Duration, T) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let longest = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&longest);
    let ticker = tokio::spawn(async move {
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = tokio::time::Instant::now();
            let gap = u64::try_from((now - last).as_micros()).unwrap_or(u64::MAX);
            seen.fetch_max(gap, Ordering::Relaxed);
            last = now;
        }
    });
    // The ticker runs once before the work starts.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let result = work.await;
    ticker.abort();
    (
        Duration::from_micros(longest.load(Ordering::Relaxed)),
        result,
    )
}

/// The rustls connector's signing step runs on the blocking pool; tokio-rustls's would run
/// on the event loop. The key takes 400 ms; the ticker must not stall 200 ms with the
/// connector, and does stall at least 300 ms with tokio-rustls (so this test can fail).
#[test]
fn the_rustls_client_signs_off_the_event_loop() {
    let ca = Ca::new();
    let server = server(&ca, Stack::Boring);
    let addr = server.local_addr();
    let key = soft_key("slow-client");
    let chain = CertChain::from_pem(ca.issue_client(&key.info().public_key, "slow-client"));
    let slow: SharedKey = Arc::new(Delayed::concurrent(
        key,
        Latency::Fixed(Duration::from_millis(400)),
    ));
    let identity = ClientIdentity::new(slow, chain.unwrap()).unwrap();
    let roots = TrustAnchors::from_pem_file(ca.ca_file()).unwrap();
    let config = hardkey_tls::client::rustls_client_config(Some(&identity), &roots).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let connector = hardkey_tls::client::RustlsConnector::new(Arc::clone(&config));
    let (stall, page) = runtime.block_on(longest_stall(async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        get(connector.connect("localhost", tcp).await?).await
    }));
    let page = page.unwrap();
    assert!(page.contains("\nclient: CN=slow-client\n"), "{page}");
    assert!(
        stall < Duration::from_millis(200),
        "the event loop stalled {stall:?}"
    );

    let blocking = tokio_rustls::TlsConnector::from(config);
    let (stall, page) = runtime.block_on(longest_stall(async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        get(blocking.connect(name, tcp).await?).await
    }));
    assert!(page.unwrap().contains("\nclient: CN=slow-client\n"));
    assert!(
        stall >= Duration::from_millis(300),
        "tokio-rustls signing on the event loop stalled it only {stall:?}"
    );
    server.shutdown().unwrap();
}
