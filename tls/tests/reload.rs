//! Reload without restart, on both stacks: a handshake in progress when the server's
//! identities are swapped completes with the old chain, new connections get the new one, and
//! a set that fails its checks (a certificate for another key, a key that cannot sign) is
//! refused with the reason while the server goes on serving the set it had. Checked with the
//! rustls client, which verifies the chain it gets against the CA.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test code"
)]
#![cfg(all(feature = "boring", feature = "rustls"))]

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use common::{Ca, Version, capture_logs, connect, get, logged};
use futures::executor::block_on;
use hardkey_api::{
    DecryptScheme, GenerateRequest, KeyAlgorithm, KeyInfo, KeyStore, PrivateKey, SharedKey,
    SignatureScheme,
};
use hardkey_soft::SoftStore;
use hardkey_tls::{CertChain, Error, Identities, Identity, Server, ServerConfig, Stack};
use rustls::SignatureScheme as S;
use zeroize::Zeroizing;

const ANY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);
const WAIT: Duration = Duration::from_secs(20);

fn soft_key(label: &str) -> SharedKey {
    let store = SoftStore::in_memory().unwrap();
    let request = GenerateRequest::new(KeyAlgorithm::EcP256).label(label);
    Arc::new(block_on(store.generate(request)).unwrap())
}

fn identity(ca: &Ca, key: SharedKey, cn: &str) -> Identity {
    let chain = CertChain::from_pem(ca.issue(&key.info().public_key, cn)).unwrap();
    Identity::new(key, chain)
}

/// A key whose signatures wait at a gate: each says it started, then waits for a permit
/// (so a test can hold a handshake in the middle of its signature); or fails, when `fail`.
struct Gated {
    inner: SharedKey,
    started: mpsc::Sender<()>,
    permits: Arc<tokio::sync::Semaphore>,
    fail: Arc<AtomicBool>,
}

impl PrivateKey for Gated {
    fn info(&self) -> &KeyInfo {
        self.inner.info()
    }

    fn sign_digest(
        &self,
        scheme: SignatureScheme,
        digest: &[u8],
    ) -> impl Future<Output = hardkey_api::Result<Vec<u8>>> + Send + 'static + use<> {
        let _ = self.started.send(());
        let op = self.inner.sign_digest(scheme, digest);
        let permits = Arc::clone(&self.permits);
        let fail = self.fail.load(Ordering::SeqCst);
        async move {
            permits.acquire().await.unwrap().forget();
            if fail {
                return Err(hardkey_api::Error::device_unavailable(
                    "test device",
                    "the device stopped answering",
                ));
            }
            op.await
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

/// The leaf the rustls client got (verified against the CA for `localhost`), and the page.
fn fetch(addr: SocketAddr, ca: &Ca) -> std::io::Result<(Vec<u8>, String)> {
    let (config, _) =
        common::client_config(&ca.ca_der(), Version::Tls13, &[S::ECDSA_NISTP256_SHA256]);
    let mut stream = connect(addr, "localhost", config)?;
    let leaf = stream.conn.peer_certificates().unwrap()[0].to_vec();
    let page = get(&mut stream, true)?;
    Ok((leaf, page))
}

fn leaf(identity: &Identity) -> Vec<u8> {
    identity.chain().certs()[0].to_vec()
}

#[test]
fn a_handshake_in_progress_finishes_on_the_old_chain_and_new_ones_get_the_new() {
    capture_logs();
    let ca = Ca::new();
    for stack in Stack::ALL {
        let (started, starts) = mpsc::channel();
        // One permit: the startup test signature passes the gate, the first handshake waits.
        let permits = Arc::new(tokio::sync::Semaphore::new(1));
        let old_key: SharedKey = Arc::new(Gated {
            inner: soft_key("old-key"),
            started,
            permits: Arc::clone(&permits),
            fail: Arc::default(),
        });
        let old = identity(&ca, old_key, "old");
        let new = identity(&ca, soft_key("new-key"), "new");
        let server = Server::start(
            ServerConfig::for_identities(Identities::new(old.clone()))
                .stack(stack)
                .listen(ANY)
                // A slow key: the reloaded set gets the same added latency.
                .simulate_latency(Some(Duration::from_millis(100))),
        )
        .unwrap();
        let addr = server.local_addr();
        starts.recv_timeout(WAIT).expect("startup test signature");

        let ca_der = ca.ca_der();
        let in_progress = std::thread::spawn(move || {
            let (config, _) =
                common::client_config(&ca_der, Version::Tls13, &[S::ECDSA_NISTP256_SHA256]);
            let mut stream = connect(addr, "localhost", config)?;
            let leaf = stream.conn.peer_certificates().unwrap()[0].to_vec();
            get(&mut stream, true).map(|page| (leaf, page))
        });
        // The handshake is now at its signature, on the old key.
        starts
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("{stack}: the handshake did not reach the key: {e}"));

        server
            .reload(Identities::new(new.clone()))
            .unwrap_or_else(|e| panic!("{stack}: reload: {e}"));
        assert_eq!(server.reloader().identities().len(), 1);
        let (got, page) = fetch(addr, &ca).unwrap_or_else(|e| panic!("{stack}: {e}"));
        assert_eq!(
            got,
            leaf(&new),
            "{stack}: a new connection after the reload"
        );
        assert!(page.contains("key: 'new-key'"), "{stack}: {page}");
        assert!(page.contains("simulated key latency"), "{stack}: {page}");

        permits.add_permits(1);
        let (got, page) = in_progress
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{stack}: the handshake in progress failed: {e}"));
        assert_eq!(got, leaf(&old), "{stack}: the handshake in progress");
        assert!(page.contains("key: 'old-key'"), "{stack}: {page}");

        let stats = server.stats();
        assert_eq!(stats.handshakes, 2, "{stack}: {stats:?}");
        assert_eq!(stats.handshake_failures, 0, "{stack}: {stats:?}");
        assert!(!logged("reloaded: new connections get the new set of 1").is_empty());
        server.shutdown().unwrap();
    }
}

#[test]
fn a_bad_set_is_refused_and_the_old_one_keeps_serving() {
    capture_logs();
    let ca = Ca::new();
    for stack in Stack::ALL {
        let old = identity(&ca, soft_key("kept"), "kept");
        let server = Server::start(
            ServerConfig::for_identities(Identities::new(old.clone()))
                .stack(stack)
                .listen(ANY)
                .handshake_timeout(Duration::from_secs(5)),
        )
        .unwrap();
        let addr = server.local_addr();

        // A certificate issued for another key.
        let other = soft_key("other");
        let mismatched = Identity::new(soft_key("mine"), identity(&ca, other, "x").chain().clone());
        let err = server.reload(Identities::new(mismatched)).unwrap_err();
        assert!(matches!(err, Error::KeyMismatch(_)), "{stack}: {err}");
        assert!(server.check(&Identities::new(old.clone())).is_ok());

        // A key whose device fails the test signature.
        let (started, _starts) = mpsc::channel();
        let dead: SharedKey = Arc::new(Gated {
            inner: soft_key("dead"),
            started,
            permits: Arc::new(tokio::sync::Semaphore::new(16)),
            fail: Arc::new(AtomicBool::new(true)),
        });
        let err = server
            .reload(Identities::new(identity(&ca, dead, "dead")))
            .unwrap_err();
        assert!(matches!(err, Error::KeyProbe { .. }), "{stack}: {err}");
        assert!(
            err.to_string().contains("stopped answering"),
            "{stack}: {err}"
        );
        assert!(
            logged("reload refused, still serving the previous certificates")
                .iter()
                .any(|l| l.contains("stopped answering")),
            "{stack}"
        );

        let (got, _) = fetch(addr, &ca).unwrap_or_else(|e| panic!("{stack}: {e}"));
        assert_eq!(got, leaf(&old), "{stack}: still the old chain");
        assert_eq!(
            server
                .reloader()
                .identities()
                .default_identity()
                .chain()
                .subject(),
            old.chain().subject()
        );

        server.shutdown().unwrap();
    }
}
