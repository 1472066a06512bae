//! The rustls adapter: a [`rustls::sign::SigningKey`] over any hardkey key, and an
//! [`Acceptor`] that keeps the signing step off the event loop.
//!
//! rustls signs synchronously: [`Signer::sign`](rustls::sign::Signer::sign) must return the
//! signature. [`SigningKey`]'s signer therefore *waits* for the device future, blocking its
//! thread. Called on an event loop, as `tokio_rustls::TlsAcceptor` would call it, that stalls
//! every other connection on the thread for the whole device round trip: 100 handshakes on a
//! 200 ms key would take 20 s. [`Acceptor`] avoids this: it reads the ClientHello on the event
//! loop, runs the one handshake step that signs (`Accepted::into_connection`) on tokio's
//! blocking pool, and finishes the handshake on the event loop again.
//!
//! The cost, beside the BoringSSL path (which waits on the device future without any thread):
//! **one blocked thread per handshake in progress**, taken from tokio's blocking pool (512
//! threads by default; handshakes beyond that queue), plus a thread hand-off per handshake.
//! With a fast key that is a few microseconds; with a slow device it is a parked thread per
//! concurrent handshake, its stack, and the wake-up when the device answers.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use hardkey_api::{KeyAlgorithm, KeyFamily, PrivateKey, SharedKey, SignatureScheme};
use rustls::crypto::CryptoProvider;
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use rustls::{SignatureAlgorithm, SignatureScheme as TlsScheme};
use rustls_pki_types::SubjectPublicKeyInfoDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;

use crate::alert;
use crate::cert::{CertChain, key_name};
use crate::error::{Error, Result};
use crate::identity::{Identities, Identity, Offer};
use crate::server::Stack;
use crate::trust::TrustAnchors;

/// The hardkey scheme for a rustls signature scheme, if hardkey has it.
pub fn scheme_for(scheme: TlsScheme) -> Option<SignatureScheme> {
    SignatureScheme::from_tls_code_point(u16::from(scheme))
}

/// The rustls signature scheme of a hardkey scheme (its TLS code point).
pub fn tls_scheme_for(scheme: SignatureScheme) -> TlsScheme {
    TlsScheme::from(scheme.tls_code_point())
}

/// A rustls signing key backed by a hardkey key.
///
/// `choose_scheme` picks the key's most preferred scheme among those the peer offers (no
/// device I/O); `public_key` gives rustls the key's SubjectPublicKeyInfo, so
/// [`CertifiedKey::keys_match`] can check the certificate. Its signer blocks the calling thread
/// until the device answers: serve it through [`Acceptor`], not directly on an event loop
/// (see the module documentation).
pub struct SigningKey {
    key: SharedKey,
    name: Arc<str>,
}

impl SigningKey {
    /// A signing key over `key`; fails if the key cannot sign.
    pub fn new(key: SharedKey) -> Result<Self> {
        let name = key_name(key.info());
        if key.info().signature_schemes.is_empty() {
            return Err(Error::KeyCannotSign { key: name });
        }
        Ok(Self {
            key,
            name: name.into(),
        })
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key", &self.name)
            .finish()
    }
}

impl rustls::sign::SigningKey for SigningKey {
    fn choose_scheme(&self, offered: &[TlsScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        let offered: Vec<SignatureScheme> = offered.iter().filter_map(|s| scheme_for(*s)).collect();
        let scheme = self.key.info().choose_scheme(&offered)?;
        Some(Box::new(Signer {
            key: Arc::clone(&self.key),
            name: Arc::clone(&self.name),
            scheme,
        }))
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(
            self.key.info().public_key.der(),
        ))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        match self.key.info().algorithm.family() {
            KeyFamily::Rsa => SignatureAlgorithm::RSA,
            KeyFamily::Ec => SignatureAlgorithm::ECDSA,
            KeyFamily::EdDsa if self.key.info().algorithm == KeyAlgorithm::Ed448 => {
                SignatureAlgorithm::ED448
            }
            KeyFamily::EdDsa => SignatureAlgorithm::ED25519,
            _ => SignatureAlgorithm::Unknown(0),
        }
    }
}

/// One signature with a chosen scheme: waits for the device on the calling thread.
pub struct Signer {
    key: SharedKey,
    name: Arc<str>,
    scheme: SignatureScheme,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key", &self.name)
            .field("scheme", &self.scheme)
            .finish()
    }
}

impl rustls::sign::Signer for Signer {
    fn sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, rustls::Error> {
        // Blocks this thread until the device answers: see the module documentation.
        futures::executor::block_on(self.key.sign(self.scheme, message)).map_err(|e| {
            REFUSED.with(|refused| refused.set(Some(alert::Alert::InternalError)));
            log::warn!(
                target: "hardkey_tls",
                "key {}: {} signature failed: {e}",
                self.name,
                self.scheme
            );
            rustls::Error::General(format!(
                "key {}: {} signature failed: {e}",
                self.name, self.scheme
            ))
        })
    }

    fn scheme(&self) -> TlsScheme {
        tls_scheme_for(self.scheme)
    }
}

/// The crypto provider of this crate's configurations: rustls's `ring` provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls server configuration serving `chain` with `key`: TLS 1.3 and 1.2, the `ring`
/// provider's cipher suites and groups, ALPN `h2` and `http/1.1` (the server's preference
/// first; set `alpn_protocols` for an HTTP/1.1-only server), no client authentication. Checks
/// that the chain's certificate holds the key's public key. Serve it with [`Acceptor`].
pub fn server_config(key: SharedKey, chain: &CertChain) -> Result<Arc<rustls::ServerConfig>> {
    server_config_for(&Identities::new(Identity::new(key, chain.clone())))
}

/// [`server_config`] with another crypto provider (e.g. one restricted to a key-exchange
/// group).
pub fn server_config_with_provider(
    key: SharedKey,
    chain: &CertChain,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<rustls::ServerConfig>> {
    let identities = Identities::new(Identity::new(key, chain.clone()));
    server_config_for_with_provider(&identities, provider)
}

/// A rustls server configuration serving several identities, chosen per handshake by the
/// client's server name and signature schemes ([`Identities::select`]); otherwise as
/// [`server_config`]. Checks every identity ([`Identities::check`]).
pub fn server_config_for(identities: &Identities) -> Result<Arc<rustls::ServerConfig>> {
    server_config_for_with_provider(identities, provider())
}

/// [`server_config_for`] with another crypto provider.
pub fn server_config_for_with_provider(
    identities: &Identities,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<rustls::ServerConfig>> {
    build_server_config(
        identities,
        provider,
        rustls::server::WebPkiClientVerifier::no_client_auth(),
    )
}

/// [`server_config_for`], requiring every client to present a certificate that chains to
/// `client_ca` (mutual TLS, verified by rustls-webpki's `WebPkiClientVerifier`, the CAs
/// named in the CertificateRequest). A client without one, or with one that does not verify,
/// fails [`Acceptor::accept`] with a [`ClientCertRejected`](crate::ClientCertRejected) error.
pub fn server_config_with_client_auth(
    identities: &Identities,
    client_ca: &TrustAnchors,
) -> Result<Arc<rustls::ServerConfig>> {
    let provider = provider();
    let verifier = crate::mtls::rustls_verifier(client_ca, Arc::clone(&provider))?;
    build_server_config(identities, provider, verifier)
}

fn build_server_config(
    identities: &Identities,
    provider: Arc<CryptoProvider>,
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
) -> Result<Arc<rustls::ServerConfig>> {
    identities.check()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::TlsSetup {
            stack: Stack::Rustls,
            what: "protocol versions",
            source: Box::new(e),
        })?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Resolver {
            identities: identities.clone(),
        }));
    config.alpn_protocols = crate::ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Picks the certified key of the identity [`Identities::select`] names.
///
/// The certified key is made per handshake (the chain's DER copied, the key's `Arc`
/// cloned), small next to the signature the handshake waits for; one kept per identity held
/// a second copy of every chain for the server's lifetime.
struct Resolver {
    identities: Identities,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("identities", &self.identities)
            .finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let schemes: Vec<SignatureScheme> = hello
            .signature_schemes()
            .iter()
            .filter_map(|s| scheme_for(*s))
            .collect();
        let suites: Vec<u16> = hello
            .cipher_suites()
            .iter()
            .map(|s| u16::from(*s))
            .collect();
        let groups: Option<Vec<u16>> = hello
            .named_groups()
            .map(|groups| groups.iter().map(|g| u16::from(*g)).collect());
        let offer = Offer::from_hello(schemes, &suites, groups.as_deref());
        let name = hello.server_name();
        match self.identities.select(name, &offer) {
            Some(index) => {
                let identity = self.identities.get(index)?;
                // Checked when the configuration was built (Identities::check).
                let signer = SigningKey::new(Arc::clone(identity.key())).ok()?;
                Some(Arc::new(CertifiedKey::new(
                    identity.chain().certs().to_vec(),
                    Arc::new(signer),
                )))
            }
            None => {
                // A name no identity covers gets unrecognized_name (RFC 6066 3) in place of
                // the access_denied rustls would send (see [`Acceptor::accept`]).
                let alert = if name.is_some() {
                    alert::Alert::UnrecognizedName
                } else {
                    alert::Alert::HandshakeFailure
                };
                REFUSED.with(|refused| refused.set(Some(alert)));
                log::info!(
                    target: "hardkey_tls",
                    "no certificate for server name {name:?}: handshake refused"
                );
                None
            }
        }
    }
}

/// Accepts TLS connections with a configuration whose key may be slow, without blocking the
/// event loop: the handshake step that signs runs on tokio's blocking pool (one blocked thread
/// per handshake in progress; see the module documentation).
#[derive(Clone, Debug)]
pub struct Acceptor {
    config: Arc<rustls::ServerConfig>,
}

impl Acceptor {
    /// An acceptor for `config` (e.g. from [`server_config`]).
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        Self { config }
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<rustls::ServerConfig> {
        &self.config
    }

    /// Runs a server handshake on `io`. Must be called within a tokio runtime (it uses
    /// `spawn_blocking`). If the key fails to sign, the client gets a fatal `internal_error`
    /// alert instead of a dropped connection (rustls sends none for a signer's error), and a
    /// name no identity covers gets `unrecognized_name` rather than rustls's `access_denied`
    /// (see [`AlertOnKeyFailure`]).
    pub async fn accept<IO>(&self, io: IO) -> io::Result<TlsStream<AlertOnKeyFailure<IO>>>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = AlertOnKeyFailure::new(io);
        let replace = Arc::clone(&io.replace);
        // Reading the ClientHello needs no key.
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
        let config = Arc::clone(&self.config);
        // Processing it signs (CertificateVerify in TLS 1.3, ServerKeyExchange in TLS 1.2):
        // on a blocking thread, which waits for the device.
        let accept = tokio::task::spawn_blocking(move || {
            REFUSED.with(|f| f.set(None));
            let accept = start.into_stream(config);
            if let Some(alert) = REFUSED.with(|f| f.take()) {
                replace.store(alert.code(), Ordering::SeqCst);
            }
            accept
        })
        .await
        .map_err(|e| io::Error::other(format!("handshake thread failed: {e}")))?;
        // Writing the server's flight and reading the client's Finished: on the event loop.
        match accept.into_fallible().await {
            Ok(stream) => Ok(stream),
            Err((error, mut io)) => {
                let Some(alert) = alert::Alert::from_code(io.replace.load(Ordering::SeqCst)) else {
                    return Err(crate::mtls::rustls_rejection(error));
                };
                // rustls had queued nothing to write (TLS 1.2 keeps its flight until it is
                // complete): the alert is still to be sent.
                if io.alert_sent == 0 {
                    alert::send(&mut io.inner, alert).await;
                }
                Err(match alert {
                    alert::Alert::InternalError => {
                        io::Error::other(crate::metrics::KeySignFailed(error.to_string()))
                    }
                    refused => io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "no certificate for the server name the client asked for: refused \
                             ({} alert sent)",
                            refused.name()
                        ),
                    ),
                })
            }
        }
    }
}

thread_local! {
    /// The alert the client should get in place of what rustls sends: set by [`Signer::sign`]
    /// when the key fails and by the resolver when it refuses a name, on the thread that runs
    /// the handshake step.
    static REFUSED: std::cell::Cell<Option<alert::Alert>> = const { std::cell::Cell::new(None) };
}

/// The connection of an [`Acceptor`] handshake: `IO` itself, except when the key failed to
/// sign or the server name is refused. When the key fails, rustls fails the handshake without
/// an alert, and what it had queued (the ServerHello of a flight it could not finish) would
/// reach the client before the connection drops; a refused name would get `access_denied`.
/// Instead, this sends the client only an unencrypted fatal alert (`internal_error` or
/// `unrecognized_name`): no key has been agreed yet, so that is the alert record the client
/// expects.
#[derive(Debug)]
pub struct AlertOnKeyFailure<IO> {
    inner: IO,
    /// The [`alert::Alert::code`] to send in place of rustls's output; 0: none.
    replace: Arc<AtomicU8>,
    /// How much of the alert record has been written.
    alert_sent: usize,
}

impl<IO> AlertOnKeyFailure<IO> {
    fn new(inner: IO) -> Self {
        Self {
            inner,
            replace: Arc::new(AtomicU8::new(0)),
            alert_sent: 0,
        }
    }

    /// The connection.
    pub fn get_ref(&self) -> &IO {
        &self.inner
    }

    /// The connection.
    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.inner
    }

    /// The connection.
    pub fn into_inner(self) -> IO {
        self.inner
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for AlertOnKeyFailure<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AlertOnKeyFailure<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let Some(alert) = alert::Alert::from_code(self.replace.load(Ordering::SeqCst)) else {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        };
        let this = &mut *self;
        let record = alert.record();
        while let Some(rest) = record.get(this.alert_sent..).filter(|r| !r.is_empty()) {
            match Pin::new(&mut this.inner).poll_write(cx, rest) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => this.alert_sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // The unfinished flight rustls queued is dropped, as if written.
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_round_trips_through_rustls() {
        for scheme in SignatureScheme::ALL {
            let tls = tls_scheme_for(scheme);
            assert_eq!(scheme_for(tls), Some(scheme), "{scheme}");
            assert_eq!(u16::from(tls), scheme.tls_code_point(), "{scheme}");
        }
        assert_eq!(
            scheme_for(TlsScheme::ED25519),
            Some(SignatureScheme::Ed25519)
        );
        assert_eq!(scheme_for(TlsScheme::ED448), Some(SignatureScheme::Ed448));
        assert_eq!(scheme_for(TlsScheme::RSA_PKCS1_SHA1), None);
    }
}
