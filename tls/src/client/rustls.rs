//! The rustls client: a [`ResolvesClientCert`] offering a hardkey key's certificate, and a
//! [`Connector`] that keeps the signing step off the event loop.
//!
//! rustls signs inside `ClientConnection::process_new_packets`, synchronously, when it
//! processes the server's last handshake flight (the client's CertificateVerify).
//! `tokio_rustls::TlsConnector` would call it on the event loop, stalling every other task on
//! the thread for the device's round trip. [`Connector`] drives the handshake itself: reading
//! and writing on the event loop, and processing the server's records on tokio's blocking
//! pool when the configuration has a client certificate (one blocked thread per handshake in
//! progress, as for the server side's [`Acceptor`](crate::rustls::Acceptor)). After the
//! handshake nothing signs (rustls has no post-handshake authentication), and the
//! connection is an ordinary [`TlsStream`].

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hardkey_api::PrivateKey;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ClientConnection, SignatureScheme as TlsScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::ClientIdentity;
use crate::cert::key_name;
use crate::error::{Error, Result};
use crate::rustls::SigningKey;
use crate::server::Stack;
use crate::trust::TrustAnchors;

/// Offers one [`ClientIdentity`] whenever a server asks for a client certificate and the key
/// can make one of the signature schemes the server accepts.
pub struct ClientCertResolver {
    certified: Arc<CertifiedKey>,
    name: String,
}

impl ClientCertResolver {
    /// A resolver offering `identity`, its key behind [`SigningKey`] (whose signer waits for
    /// the device: drive handshakes with [`Connector`]).
    pub fn new(identity: &ClientIdentity) -> Result<Self> {
        let signer = SigningKey::new(Arc::clone(identity.key()))?;
        Ok(Self {
            certified: Arc::new(CertifiedKey::new(
                identity.chain().certs().to_vec(),
                Arc::new(signer),
            )),
            name: key_name(identity.key().info()),
        })
    }
}

impl std::fmt::Debug for ClientCertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertResolver")
            .field("key", &self.name)
            .finish()
    }
}

impl ResolvesClientCert for ClientCertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[TlsScheme],
    ) -> Option<Arc<CertifiedKey>> {
        if self.certified.key.choose_scheme(sigschemes).is_some() {
            return Some(Arc::clone(&self.certified));
        }
        log::warn!(
            target: "hardkey_tls",
            "the server asked for a client certificate signed with one of {sigschemes:?}; key \
             {} makes none of them: continuing without a client certificate",
            self.name
        );
        None
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A rustls client configuration: TLS 1.3 and 1.2, the `ring` provider, the server's chain
/// and name verified by rustls-webpki against `roots` only, ALPN `http/1.1`; with `identity`,
/// a [`ClientCertResolver`] offering it. Connect with [`Connector`] (not
/// `tokio_rustls::TlsConnector`, which would sign on the event loop).
pub fn client_config(
    identity: Option<&ClientIdentity>,
    roots: &TrustAnchors,
) -> Result<Arc<ClientConfig>> {
    let setup = |what: &'static str| {
        move |e: rustls::Error| Error::TlsSetup {
            stack: Stack::Rustls,
            what,
            source: Box::new(e),
        }
    };
    let mut store = rustls::RootCertStore::empty();
    for cert in roots.certs() {
        store.add(cert.clone()).map_err(setup("CA certificate"))?;
    }
    let builder = ClientConfig::builder_with_provider(crate::rustls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(setup("protocol versions"))?
        .with_root_certificates(store);
    let mut config = match identity {
        Some(identity) => {
            builder.with_client_cert_resolver(Arc::new(ClientCertResolver::new(identity)?))
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Runs client handshakes with a configuration whose client key may be slow, without
/// blocking the event loop (see the module documentation).
#[derive(Clone, Debug)]
pub struct Connector {
    config: Arc<ClientConfig>,
    /// Whether a handshake may sign: processing the server's records then goes to the
    /// blocking pool.
    signs: bool,
}

impl Connector {
    /// A connector for `config` (e.g. from [`client_config`]).
    pub fn new(config: Arc<ClientConfig>) -> Self {
        let signs = config.client_auth_cert_resolver.has_certs();
        Self { config, signs }
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// Runs a client handshake on `io` with `server_name` (SNI, and the name the server's
    /// certificate must hold). Must be called within a tokio runtime (it uses
    /// `spawn_blocking`).
    pub async fn connect<IO>(&self, server_name: &str, mut io: IO) -> io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let name = ServerName::try_from(server_name.to_owned()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("'{server_name}' is not a server name or IP address: {e}"),
            )
        })?;
        let mut conn =
            ClientConnection::new(Arc::clone(&self.config), name).map_err(io::Error::other)?;
        let mut buf = vec![0u8; 4096];
        loop {
            write_all_tls(&mut conn, &mut io).await?;
            if !conn.is_handshaking() {
                break;
            }
            let n = io.read(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection during the TLS handshake",
                ));
            }
            let mut data = buf.get(..n).unwrap_or_default();
            while !data.is_empty() {
                conn.read_tls(&mut data)?;
                let processed;
                (conn, processed) = self.process(conn).await?;
                if let Err(e) = processed {
                    // The alert rustls queued for the server, then the error.
                    let _ = write_all_tls(&mut conn, &mut io).await;
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            }
        }
        Ok(TlsStream {
            io,
            conn,
            shut: false,
        })
    }

    /// Processes the records read, on a blocking thread when that may sign.
    async fn process(
        &self,
        mut conn: ClientConnection,
    ) -> io::Result<(ClientConnection, std::result::Result<(), rustls::Error>)> {
        if !self.signs {
            let result = conn.process_new_packets().map(|_| ());
            return Ok((conn, result));
        }
        tokio::task::spawn_blocking(move || {
            let result = conn.process_new_packets().map(|_| ());
            (conn, result)
        })
        .await
        .map_err(|e| io::Error::other(format!("handshake thread failed: {e}")))
    }
}

/// Writes every TLS record `conn` has queued to `io`.
async fn write_all_tls<IO: AsyncWrite + Unpin>(
    conn: &mut ClientConnection,
    io: &mut IO,
) -> io::Result<()> {
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out)?;
    }
    if !out.is_empty() {
        io.write_all(&out).await?;
        io.flush().await?;
    }
    Ok(())
}

/// A rustls client connection after its handshake ([`Connector::connect`]).
#[derive(Debug)]
pub struct TlsStream<IO> {
    io: IO,
    conn: ClientConnection,
    shut: bool,
}

impl<IO> TlsStream<IO> {
    /// The connection and its TLS state.
    pub fn get_ref(&self) -> (&IO, &ClientConnection) {
        (&self.io, &self.conn)
    }

    /// The negotiated protocol version (`TLSv1.3`, `TLSv1.2`).
    pub fn protocol_version(&self) -> &'static str {
        match self.conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "?",
        }
    }
}

/// `IO` as blocking `Read`/`Write` for rustls: `Pending` becomes `WouldBlock`.
struct SyncIo<'a, 'b, IO> {
    io: &'a mut IO,
    cx: &'a mut Context<'b>,
}

impl<IO: AsyncRead + Unpin> Read for SyncIo<'_, '_, IO> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<IO: AsyncWrite + Unpin> Write for SyncIo<'_, '_, IO> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(Ok(0)) if !buf.is_empty() => Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match Pin::new(&mut *self.io).poll_flush(self.cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsStream<IO> {
    /// Writes queued TLS records; `Pending` if the connection cannot take them all now.
    fn poll_write_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut SyncIo {
                io: &mut self.io,
                cx,
            }) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            // Ok(0) is the server's close_notify; UnexpectedEof a close without one.
            match this.conn.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            // Alerts or key updates rustls answers with go out first (best effort: a
            // connection that cannot take them now gets them with the next write).
            if let Poll::Ready(Err(e)) = this.poll_write_tls(cx) {
                return Poll::Ready(Err(e));
            }
            match this.conn.read_tls(&mut SyncIo {
                io: &mut this.io,
                cx,
            }) {
                Ok(_) => {
                    if let Err(e) = this.conn.process_new_packets() {
                        let _ = this.poll_write_tls(cx);
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let n = this.conn.writer().write(buf)?;
            let flushed = this.poll_write_tls(cx)?;
            if n > 0 || buf.is_empty() {
                return Poll::Ready(Ok(n));
            }
            // rustls's send buffer was full: it takes more once the records went out.
            if flushed.is_pending() {
                return Poll::Pending;
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.conn.writer().flush()?;
        match this.poll_write_tls(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.shut {
            this.conn.send_close_notify();
            this.shut = true;
        }
        match this.poll_write_tls(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_shutdown(cx),
            other => other,
        }
    }
}
