//! TLS servers whose private key stays in a TPM or an HSM, without ever blocking an event loop
//! on a private-key operation.
//!
//! - [`boring`] (feature `boring`): BoringSSL's async private-key method over any hardkey key.
//!   A handshake waiting for the device holds no thread: one event-loop thread finishes 100
//!   handshakes on a 200 ms key in about 200 ms.
//! - [`rustls`](mod@rustls) (feature `rustls`): a `rustls::sign::SigningKey` over any hardkey key,
//!   and an acceptor that runs the signing step on a blocking thread (one blocked thread per
//!   handshake in progress), so the event loop keeps serving.
//! - [`Server`]: an HTTPS server on either stack, HTTP/2 and HTTP/1.1 by hyper (chosen by
//!   ALPN), with timeouts and limits: [`Server::serve_with`] serves your application (a tower
//!   service such as an axum `Router`, each request carrying its [`TlsInfo`]),
//!   [`Server::serve`] and [`Server::start`] a small test page for checking a provisioned
//!   key with curl or `openssl s_client`, optionally with simulated device latency.
//!
//! ```no_run
//! use std::sync::Arc;
//! use hardkey_api::{GenerateRequest, KeyAlgorithm, KeyStore, SharedKey};
//! use hardkey_tls::{CertChain, Server, ServerConfig, Stack};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = hardkey_soft::SoftStore::in_memory()?; // or a PKCS#11 token, a TPM
//! # let key = futures::executor::block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP256)))?;
//! let key: SharedKey = Arc::new(key);
//! let chain = CertChain::from_pem_file("chain.pem")?; // issued for the key's public key
//! let server = Server::start(
//!     ServerConfig::new(key, chain)
//!         .stack(Stack::Boring)
//!         .listen("127.0.0.1:8443".parse()?),
//! )?;
//! println!("serving on https://{}", server.local_addr());
//! server.wait()?;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

#[cfg(not(any(feature = "boring", feature = "rustls")))]
compile_error!("hardkey-tls needs a TLS stack: enable its `boring` or `rustls` feature (or both)");

mod alert;
#[cfg(feature = "boring")]
pub mod boring;
mod cert;
pub mod client;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod http;
pub mod identity;
mod metrics;
mod mtls;
pub mod reload;
#[cfg(feature = "rustls")]
pub mod rustls;
mod server;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing;
mod trust;

// Public interface.
pub use cert::CertChain;
pub use error::{Error, KeyMismatch, Result};
pub use http::TlsInfo;
pub use identity::{Finding, Identities, Identity, Offer, UnknownName};
pub use mtls::ClientCertRejected;
pub use reload::Reloader;
pub use server::{Server, ServerConfig, ServerHandle, ServerStats, ShutdownTrigger, Stack};
pub use trust::TrustAnchors;

/// The application protocols both stacks' acceptors offer, the server's preference first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// [`ALPN`] in the TLS wire format (each name after its length), for BoringSSL.
#[cfg(feature = "boring")]
const ALPN_WIRE: &[u8] = b"\x02h2\x08http/1.1";
