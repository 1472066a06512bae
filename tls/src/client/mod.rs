//! TLS clients whose client certificate's key stays in a TPM or an HSM (mutual TLS), on both
//! stacks, verifying the server against the CAs of a CA file.
//!
//! - [`rustls_client_config`] (feature `rustls`): a rustls client configuration whose
//!   [`ResolvesClientCert`](::rustls::client::ResolvesClientCert) offers the device key, and
//!   [`RustlsConnector`], which runs the handshake step that signs (the client's
//!   CertificateVerify) on tokio's blocking pool, so the event loop keeps serving.
//! - [`boring_connector`] (feature `boring`): a BoringSSL connector with the async private-key
//!   method ([`KeyMethod`](crate::boring::KeyMethod)): a handshake waiting for the device
//!   holds no thread. Connect with [`boring_connect`].
//! - [`Connector`]: either, chosen by [`Stack`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use hardkey_api::{GenerateRequest, KeyAlgorithm, KeyStore, SharedKey};
//! use hardkey_tls::client::{ClientIdentity, Connector};
//! use hardkey_tls::{CertChain, Stack, TrustAnchors};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = hardkey_soft::SoftStore::in_memory()?; // or a PKCS#11 token, a TPM
//! # let key = store.generate(GenerateRequest::new(KeyAlgorithm::EcP256)).await?;
//! let key: SharedKey = Arc::new(key);
//! let identity = ClientIdentity::new(key, CertChain::from_pem_file("client.pem")?)?;
//! let roots = TrustAnchors::from_pem_file("ca.pem")?;
//! let connector = Connector::new(Stack::Boring, Some(&identity), &roots)?;
//! let tcp = tokio::net::TcpStream::connect("127.0.0.1:8443").await?;
//! let mut tls = connector.connect("localhost", tcp).await?;
//! tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
//! let mut response = Vec::new();
//! tls.read_to_end(&mut response).await?;
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "boring")]
pub mod boring;
#[cfg(feature = "rustls")]
pub mod rustls;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hardkey_api::{PrivateKey, SharedKey};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::cert::{CertChain, key_name};
use crate::error::{Error, Result};
use crate::server::Stack;
use crate::trust::TrustAnchors;

#[cfg(feature = "boring")]
pub use self::boring::{connect as boring_connect, connector as boring_connector};
#[cfg(feature = "rustls")]
pub use self::rustls::{
    ClientCertResolver, Connector as RustlsConnector, TlsStream as RustlsStream,
    client_config as rustls_client_config,
};

/// A client certificate chain and the key of its first certificate: what a client presents
/// when a server asks for a certificate.
#[derive(Clone)]
pub struct ClientIdentity {
    key: SharedKey,
    chain: CertChain,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("key", &key_name(self.key.info()))
            .field("chain", &self.chain)
            .finish()
    }
}

impl ClientIdentity {
    /// The identity `chain` (the client's certificate first, then its issuers) with `key`.
    /// Fails if the certificate does not hold the key's public key
    /// ([`Error::KeyMismatch`]) or if the key cannot sign ([`Error::KeyCannotSign`]).
    pub fn new(key: SharedKey, chain: CertChain) -> Result<Self> {
        chain.check_key(key.info())?;
        if key.info().signature_schemes.is_empty() {
            return Err(Error::KeyCannotSign {
                key: key_name(key.info()),
            });
        }
        Ok(Self { key, chain })
    }

    /// The key.
    pub fn key(&self) -> &SharedKey {
        &self.key
    }

    /// The certificate chain.
    pub fn chain(&self) -> &CertChain {
        &self.chain
    }
}

/// A TLS client connector of either stack, presenting an optional [`ClientIdentity`] and
/// verifying servers against [`TrustAnchors`] (chain and server name), speaking ALPN
/// `http/1.1`.
#[derive(Clone)]
#[non_exhaustive]
pub enum Connector {
    /// BoringSSL, the key behind the async private-key method.
    #[cfg(feature = "boring")]
    Boring(::boring::ssl::SslConnector),
    /// rustls, the signing step on a blocking thread.
    #[cfg(feature = "rustls")]
    Rustls(RustlsConnector),
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Connector").field(&self.stack()).finish()
    }
}

impl Connector {
    /// A connector on `stack`: [`boring_connector`] or [`rustls_client_config`].
    pub fn new(
        stack: Stack,
        identity: Option<&ClientIdentity>,
        roots: &TrustAnchors,
    ) -> Result<Self> {
        match stack {
            #[cfg(feature = "boring")]
            Stack::Boring => Ok(Self::Boring(boring::connector(identity, roots)?)),
            #[cfg(feature = "rustls")]
            Stack::Rustls => Ok(Self::Rustls(RustlsConnector::new(rustls::client_config(
                identity, roots,
            )?))),
            #[allow(unreachable_patterns, reason = "reached when a stack's feature is off")]
            other => {
                let _ = (identity, roots);
                Err(Error::StackNotBuilt {
                    stack: other,
                    feature: other.feature(),
                })
            }
        }
    }

    /// The stack.
    pub fn stack(&self) -> Stack {
        match self {
            #[cfg(feature = "boring")]
            Self::Boring(_) => Stack::Boring,
            #[cfg(feature = "rustls")]
            Self::Rustls(_) => Stack::Rustls,
        }
    }

    /// Runs a client handshake on `io` with `server_name` (sent as SNI and checked against
    /// the server's certificate; an IP address is checked against its IP SANs). Must be
    /// called within a tokio runtime. The error says what failed: the server's certificate
    /// did not verify, the server refused the client certificate, the key failed.
    pub async fn connect<IO>(&self, server_name: &str, io: IO) -> io::Result<ClientStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match self {
            #[cfg(feature = "boring")]
            Self::Boring(connector) => Ok(ClientStream::Boring(
                boring::connect(connector, server_name, io).await?,
            )),
            #[cfg(feature = "rustls")]
            Self::Rustls(connector) => Ok(ClientStream::Rustls(Box::new(
                connector.connect(server_name, io).await?,
            ))),
        }
    }
}

/// A client connection of either stack, after its handshake.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientStream<IO> {
    /// BoringSSL.
    #[cfg(feature = "boring")]
    Boring(tokio_boring::SslStream<IO>),
    /// rustls (boxed: its connection state is large).
    #[cfg(feature = "rustls")]
    Rustls(Box<RustlsStream<IO>>),
}

impl<IO> ClientStream<IO> {
    /// The negotiated protocol version (`TLSv1.3`, `TLSv1.2`).
    pub fn protocol_version(&self) -> &'static str {
        match self {
            #[cfg(feature = "boring")]
            Self::Boring(s) => s.ssl().version_str(),
            #[cfg(feature = "rustls")]
            Self::Rustls(s) => s.protocol_version(),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            #[cfg(feature = "boring")]
            Self::Boring(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "rustls")]
            Self::Rustls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClientStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            #[cfg(feature = "boring")]
            Self::Boring(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "rustls")]
            Self::Rustls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            #[cfg(feature = "boring")]
            Self::Boring(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "rustls")]
            Self::Rustls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            #[cfg(feature = "boring")]
            Self::Boring(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "rustls")]
            Self::Rustls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
