//! An HTTPS server on a hardkey key: an application's tower service (an axum `Router`, say)
//! or a small test page (for operators testing a provisioned key with curl or
//! `openssl s_client`, for the tests, and for the handshake benchmark), over HTTP/2 or
//! HTTP/1.1 by hyper.
//!
//! [`Server::bind`] checks everything that can be checked before serving (the certificate
//! holds the key's public key, the key signs, the device answers a test signature) and opens
//! the listening socket; [`Server::serve_with`] (or [`Server::serve`], the test page) accepts
//! connections until a shutdown future completes. [`Server::start`] does both on a runtime of
//! its own, on its own thread. Errors of one connection are logged (target `hardkey_tls`) and
//! counted, never fatal.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hardkey_api::{PrivateKey, SharedKey};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cert::{CertChain, key_name};
use crate::error::{Error, Result};
use crate::http::{self, TlsInfo};
use crate::identity::{Identities, Identity};
use crate::metrics::{FailureReason, ListenerMetrics};
use crate::reload::{Reloader, Serving, Settings};
use crate::trust::TrustAnchors;
use hyper::body::Incoming;
use hyper::{Request, Response};

/// The TLS library that terminates connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stack {
    /// BoringSSL (feature `boring`): the async private-key method; a handshake waiting for
    /// the device holds no thread.
    Boring,
    /// rustls (feature `rustls`): the signing step runs on a blocking thread that waits for
    /// the device (one thread per handshake in progress).
    Rustls,
}

impl Stack {
    /// Both stacks.
    pub const ALL: [Stack; 2] = [Self::Boring, Self::Rustls];

    /// The name (`boring`, `rustls`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Boring => "boring",
            Self::Rustls => "rustls",
        }
    }

    /// The cargo feature that builds this stack.
    pub const fn feature(self) -> &'static str {
        self.name()
    }

    /// Whether this build includes the stack.
    pub const fn is_available(self) -> bool {
        match self {
            Self::Boring => cfg!(feature = "boring"),
            Self::Rustls => cfg!(feature = "rustls"),
        }
    }
}

impl Default for Stack {
    /// BoringSSL when built, else rustls.
    fn default() -> Self {
        if cfg!(feature = "boring") {
            Self::Boring
        } else {
            Self::Rustls
        }
    }
}

impl fmt::Display for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Stack {
    type Err = Error;

    /// `boring` (or `boringssl`) and `rustls`, in any case.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "boring" | "boringssl" => Ok(Self::Boring),
            "rustls" => Ok(Self::Rustls),
            _ => Err(Error::UnknownStack {
                given: s.to_owned(),
            }),
        }
    }
}

/// What a [`Server`] serves and how.
///
/// The server offers no session resumption (no tickets, no session cache): every handshake
/// makes a signature with the key, which is what testing a key, or measuring a device under
/// TLS, needs.
#[derive(Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The certificate chains and their keys (any backends), chosen per handshake by server
    /// name and signature schemes; each chain's first certificate must hold its key's public
    /// key.
    pub identities: Identities,
    /// The TLS library. Default: [`Stack::default`].
    pub stack: Stack,
    /// The address to listen on. Default: `127.0.0.1:8443`.
    pub listen: SocketAddr,
    /// Event-loop threads for [`Server::start`]: 1 (the default) runs a current-thread
    /// runtime, more a multi-thread runtime with that many workers. [`Server::bind`] runs
    /// on the caller's runtime and ignores it.
    pub threads: usize,
    /// Adds this delay to every private-key operation (a
    /// [`Delayed::concurrent`](hardkey_api::Delayed::concurrent) key), to see how the stack
    /// behaves with a slow device. Default: none.
    pub simulate_latency: Option<Duration>,
    /// The listen backlog. Default 1024: a burst of connects beyond the backlog loses SYNs,
    /// which clients retransmit only after a second.
    pub backlog: u32,
    /// Longest a TLS handshake may take, and the startup test signature. Default 10 s.
    pub handshake_timeout: Duration,
    /// Longest a connection may stay open with no request in progress (HTTP/1.1 keep-alive
    /// between requests; HTTP/2 with no stream in progress, whatever frames the client sends
    /// meanwhile); it is then closed gracefully (HTTP/2: GOAWAY, and closed once the client
    /// acknowledges it, or a `write_timeout` later). Default 30 s.
    pub idle_timeout: Duration,
    /// HTTP/1.1: longest a request head may take to arrive once its first byte came, however
    /// slowly it trickles in (a slowloris client is closed when it expires; on HTTP/2 the
    /// idle timeout bounds an unfinished header block). The test page also reads the request
    /// body within it; an application served with [`Server::serve_with`] paces its own
    /// bodies. Default 10 s.
    pub request_timeout: Duration,
    /// Longest a write may wait for the client to take bytes: a client that stops reading
    /// its response is closed. Default 10 s.
    pub write_timeout: Duration,
    /// Largest request head: HTTP/1.1's request line and headers (a larger one gets 431),
    /// HTTP/2's header list (`SETTINGS_MAX_HEADER_LIST_SIZE`). Default 16 KiB.
    pub max_header_size: usize,
    /// HTTP/2 streams (requests) one connection may have open at once
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`). Default 100.
    pub max_concurrent_streams: u32,
    /// Most connections open at once; a connection over the cap is closed as soon as it is
    /// accepted, not queued. The server also keeps 64 file descriptors (or a quarter of a
    /// small `RLIMIT_NOFILE`) free for the key's device, whatever this says. Default 4096.
    pub max_connections: usize,
    /// Make a test signature at startup, so an unreachable device fails [`Server::bind`]
    /// rather than the first handshake: with each key, up to 8 keys per device (token, TPM),
    /// so that thousands of keys start in seconds. Default: on.
    pub probe_key: bool,
    /// How long shutdown waits for open connections to finish their request. Default 5 s.
    pub shutdown_grace: Duration,
    /// Require every client to present a certificate that chains to one of these CAs
    /// (mutual TLS); the page then names the client certificate's subject. Default: none
    /// (no client certificates asked for).
    pub client_ca: Option<TrustAnchors>,
}

impl ServerConfig {
    /// Serves `chain` with `key`, with the defaults above.
    pub fn new(key: SharedKey, chain: CertChain) -> Self {
        Self::for_identities(Identities::new(Identity::new(key, chain)))
    }

    /// Serves several certificate chains, each with its key, chosen per handshake by the
    /// client's server name and signature schemes ([`Identities::select`]); the defaults above.
    pub fn for_identities(identities: Identities) -> Self {
        Self {
            identities,
            stack: Stack::default(),
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8443),
            threads: 1,
            simulate_latency: None,
            backlog: 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_header_size: 16 * 1024,
            max_concurrent_streams: 100,
            max_connections: 4096,
            probe_key: true,
            shutdown_grace: Duration::from_secs(5),
            client_ca: None,
        }
    }

    /// Sets the TLS stack.
    pub fn stack(mut self, stack: Stack) -> Self {
        self.stack = stack;
        self
    }

    /// Sets the listening address (port 0 picks a free port; see [`Server::local_addr`]).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Sets the number of event-loop threads of [`Server::start`].
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// Adds `latency` to every private-key operation (`None`: no added latency).
    pub fn simulate_latency(mut self, latency: Option<Duration>) -> Self {
        self.simulate_latency = latency;
        self
    }

    /// Sets the listen backlog.
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog;
        self
    }

    /// Sets the handshake (and startup probe) timeout. It runs from the TCP accept: a client
    /// that sends nothing is closed when it expires (counted as a failed handshake), one that
    /// closes without sending anything is counted in [`ServerStats::closed_silent`].
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets the keep-alive idle timeout.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets the deadline of one request once its first byte arrived.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets how long a write may wait for the client to take bytes.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// Sets the largest request head.
    pub fn max_header_size(mut self, bytes: usize) -> Self {
        self.max_header_size = bytes;
        self
    }

    /// Sets the HTTP/2 streams one connection may have open at once.
    pub fn max_concurrent_streams(mut self, streams: u32) -> Self {
        self.max_concurrent_streams = streams;
        self
    }

    /// Caps the connections open at once.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// Turns the startup test signature on or off.
    pub fn probe_key(mut self, probe: bool) -> Self {
        self.probe_key = probe;
        self
    }

    /// Sets how long shutdown waits for open connections.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Requires client certificates issued by `ca` (`None`: none asked for).
    pub fn client_ca(mut self, ca: Option<TrustAnchors>) -> Self {
        self.client_ca = ca;
        self
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("identities", &self.identities)
            .field("stack", &self.stack)
            .field("listen", &self.listen)
            .field("threads", &self.threads)
            .field("simulate_latency", &self.simulate_latency)
            .field("backlog", &self.backlog)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("max_header_size", &self.max_header_size)
            .field("max_concurrent_streams", &self.max_concurrent_streams)
            .field("max_connections", &self.max_connections)
            .field("probe_key", &self.probe_key)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("client_ca", &self.client_ca)
            .finish()
    }
}

/// Counters of a server since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// TCP connections accepted.
    pub connections: u64,
    /// TLS handshakes completed (succeeded).
    pub handshakes: u64,
    /// TLS handshakes that failed or timed out.
    pub handshake_failures: u64,
    /// Of those, handshakes refused because the client sent no certificate or one that did
    /// not verify against [`ServerConfig::client_ca`].
    pub client_cert_rejections: u64,
    /// Connections closed by the peer before it sent anything (health checks, port probes):
    /// not handshake failures.
    pub closed_silent: u64,
    /// HTTP requests that reached the service (HTTP/1.1 and HTTP/2), counted before their
    /// response is sent.
    pub requests: u64,
    /// Connections open now.
    pub active: u64,
    /// Connections closed at accept because `max_connections` were open.
    pub refused: u64,
    /// Times `accept` failed (out of file descriptors, say); the loop backed off each time.
    pub accept_errors: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    handshakes: AtomicU64,
    handshake_failures: AtomicU64,
    client_cert_rejections: AtomicU64,
    closed_silent: AtomicU64,
    requests: AtomicU64,
    active: AtomicU64,
    refused: AtomicU64,
    accept_errors: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ServerStats {
        ServerStats {
            connections: self.connections.load(Ordering::Relaxed),
            handshakes: self.handshakes.load(Ordering::Relaxed),
            handshake_failures: self.handshake_failures.load(Ordering::Relaxed),
            client_cert_rejections: self.client_cert_rejections.load(Ordering::Relaxed),
            closed_silent: self.closed_silent.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            accept_errors: self.accept_errors.load(Ordering::Relaxed),
        }
    }
}

/// The TLS acceptor of the configured stack.
pub(crate) enum Tls {
    #[cfg(feature = "boring")]
    Boring(::boring::ssl::SslAcceptor),
    #[cfg(feature = "rustls")]
    Rustls(crate::rustls::Acceptor),
}

impl Tls {
    /// The stack's acceptor, without session resumption: a resumed handshake does not sign,
    /// and this server exists to exercise the key (and to measure handshakes that use it).
    pub(crate) fn new(
        stack: Stack,
        identities: &Identities,
        client_ca: Option<&TrustAnchors>,
    ) -> Result<Self> {
        match stack {
            #[cfg(feature = "boring")]
            Stack::Boring => {
                use ::boring::ssl::{SslOptions, SslSessionCacheMode};
                let mut builder =
                    crate::boring::acceptor_builder_with_client_auth(identities, client_ca)?;
                builder.set_options(SslOptions::NO_TICKET);
                builder.set_session_cache_mode(SslSessionCacheMode::OFF);
                Ok(Self::Boring(builder.build()))
            }
            #[cfg(feature = "rustls")]
            Stack::Rustls => {
                let config = match client_ca {
                    Some(ca) => crate::rustls::server_config_with_client_auth(identities, ca)?,
                    None => crate::rustls::server_config_for(identities)?,
                };
                let mut config = (*config).clone();
                config.session_storage = Arc::new(::rustls::server::NoServerSessionStorage {});
                config.send_tls13_tickets = 0;
                Ok(Self::Rustls(crate::rustls::Acceptor::new(Arc::new(config))))
            }
            #[allow(unreachable_patterns, reason = "reached when a stack's feature is off")]
            other => {
                let _ = (identities, client_ca);
                Err(Error::StackNotBuilt {
                    stack: other,
                    feature: other.feature(),
                })
            }
        }
    }
}

/// One test signature with `key`, within `timeout`.
pub(crate) async fn probe(key: &SharedKey, timeout: Duration) -> Result<()> {
    let info = key.info();
    let Some(&scheme) = info.signature_schemes.first() else {
        return Err(Error::KeyCannotSign {
            key: key_name(info),
        });
    };
    let test = key.sign(scheme, b"hardkey-tls startup test signature");
    match tokio::time::timeout(timeout, test).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(Error::KeyProbe {
            key: key_name(info),
            scheme,
            source: Box::new(source),
        }),
        Err(_) => Err(Error::KeyProbeTimeout {
            key: key_name(info),
            timeout,
        }),
    }
}

/// State shared by the accept loop and the connections.
struct Shared {
    counters: Arc<Counters>,
    page: http::TestPage,
    metrics: ListenerMetrics,
    handshake_timeout: Duration,
    limits: http::Limits,
    max_connections: usize,
    shutdown_grace: Duration,
    draining: watch::Sender<bool>,
}

/// A bound TLS server, ready to [`serve`](Server::serve).
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    stack: Stack,
    tls: Reloader,
    shared: Arc<Shared>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("stack", &self.stack)
            .finish()
    }
}

impl Server {
    /// Checks the configuration and opens the listening socket, on the caller's tokio runtime
    /// (which must have I/O and timers enabled).
    ///
    /// In order: the chain's first certificate must hold the key's public key
    /// ([`Error::KeyMismatch`]), the key must sign ([`Error::KeyCannotSign`]), the stack must
    /// be built ([`Error::StackNotBuilt`]), the key must complete a test signature within
    /// `handshake_timeout` unless `probe_key` is off ([`Error::KeyProbe`],
    /// [`Error::KeyProbeTimeout`]), and the address must be free ([`Error::Bind`]).
    pub async fn bind(config: ServerConfig) -> Result<Self> {
        let mut settings = Settings {
            stack: config.stack,
            simulate_latency: config.simulate_latency,
            probe_key: config.probe_key,
            probe_timeout: config.handshake_timeout,
            client_ca: config.client_ca.clone(),
            listener: None,
        };
        let identities = config.identities.clone();
        let serving = crate::reload::prepare(&settings, config.identities).await?;
        let listener = listen(config.listen, config.backlog)?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        settings.listener = Some(local_addr);
        let (draining, _) = watch::channel(false);
        Ok(Self {
            listener,
            local_addr,
            stack: config.stack,
            tls: Reloader::new(settings, serving),
            shared: Arc::new(Shared {
                counters: Arc::default(),
                page: http::TestPage::new(config.request_timeout),
                metrics: ListenerMetrics::new(local_addr, config.stack, &identities),
                handshake_timeout: config.handshake_timeout,
                limits: http::Limits {
                    idle: config.idle_timeout,
                    request: config.request_timeout,
                    write: config.write_timeout,
                    max_header_size: config.max_header_size,
                    max_concurrent_streams: config.max_concurrent_streams,
                },
                max_connections: connection_cap(config.max_connections),
                shutdown_grace: config.shutdown_grace,
                draining,
            }),
        })
    }

    /// The address the server listens on (with the actual port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The TLS stack.
    pub fn stack(&self) -> Stack {
        self.stack
    }

    /// The counters so far.
    pub fn stats(&self) -> ServerStats {
        self.shared.counters.snapshot()
    }

    /// Swaps the server's certificate chains and keys while it serves (see
    /// [`Reloader`]).
    pub fn reloader(&self) -> Reloader {
        self.tls.clone()
    }

    /// Serves the test page (the key, the stack, the connection's TLS parameters) until
    /// `shutdown` completes: [`serve_with`](Server::serve_with) the built-in page.
    pub async fn serve(&self, shutdown: impl Future<Output = ()>) {
        self.serve_with(self.shared.page.clone(), shutdown).await;
    }

    /// Accepts connections and serves `service` on them, over HTTP/2 or HTTP/1.1 as ALPN
    /// chose, until `shutdown` completes; then stops accepting, lets open connections finish
    /// the requests in progress for up to `shutdown_grace` (HTTP/1.1 connections close after
    /// their current response, HTTP/2 ones get GOAWAY), and closes the rest. Failed
    /// connections are logged and counted; nothing here ends the loop but `shutdown`.
    ///
    /// `service` is any tower service of hyper requests, such as an axum `Router`; it is
    /// cloned per request, and each request carries its connection's [`TlsInfo`] in its
    /// extensions.
    pub async fn serve_with<S, B>(&self, service: S, shutdown: impl Future<Output = ()>)
    where
        S: tower_service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<http::BoxError>,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<http::BoxError>,
    {
        let mut connections = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        let mut backoff = ACCEPT_BACKOFF_MIN;
        let counters = &self.shared.counters;
        let _stall_ticker = self.shared.metrics.start_stall_ticker();
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        // Read once, before the connection is counted: it keeps this set
                        // (chains, keys) to the end, whatever a reload swaps in meanwhile.
                        let serving = self.tls.current();
                        backoff = ACCEPT_BACKOFF_MIN;
                        counters.connections.fetch_add(1, Ordering::Relaxed);
                        self.shared.metrics.connections.increment(1);
                        if connections.len() >= self.shared.max_connections {
                            // Over the cap: closed now (the client sees the connection
                            // reset or closed), never queued behind the others.
                            counters.refused.fetch_add(1, Ordering::Relaxed);
                            drop(tcp);
                            log::debug!(
                                target: "hardkey_tls",
                                "{peer}: refused, {} connections open",
                                connections.len()
                            );
                            continue;
                        }
                        connections.spawn(connection(
                            serving,
                            Arc::clone(&self.shared),
                            tcp,
                            peer,
                            service.clone(),
                        ));
                    }
                    Err(e) => {
                        // Out of file descriptors (EMFILE, ENFILE) or memory: retrying at
                        // once would spin. Back off, doubling up to a second; closing
                        // connections frees descriptors meanwhile.
                        counters.accept_errors.fetch_add(1, Ordering::Relaxed);
                        log::warn!(
                            target: "hardkey_tls",
                            "accept failed: {e}; retrying in {backoff:?}"
                        );
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            Some(_) = connections.join_next(), if !connections.is_empty() => {}
                        }
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    }
                },
                Some(done) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(e) = done {
                        log::error!(target: "hardkey_tls", "a connection task failed: {e}");
                    }
                }
            }
        }
        self.shared.draining.send_replace(true);
        let drain = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(self.shared.shutdown_grace, drain)
            .await
            .is_err()
        {
            log::info!(
                target: "hardkey_tls",
                "closing {} connections still open after {:?}",
                connections.len(),
                self.shared.shutdown_grace
            );
            connections.shutdown().await;
        }
    }

    /// Starts a server on a runtime of its own (`config.threads` event-loop threads) on a new
    /// thread. Returns once the server listens, or with the error that stopped it.
    pub fn start(config: ServerConfig) -> Result<ServerHandle> {
        let threads = config.threads.max(1);
        let mut builder = if threads == 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(threads);
            b
        };
        let runtime = builder
            .enable_io()
            .enable_time()
            .thread_name("hardkey-tls")
            .build()
            .map_err(|source| Error::Runtime { source })?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, mut stopped) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("hardkey-tls-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let server = match Server::bind(config).await {
                        Ok(server) => server,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let counters = Arc::clone(&server.shared.counters);
                    let runtime = tokio::runtime::Handle::current();
                    let _ = ready_tx.send(Ok((
                        server.local_addr(),
                        server.stack(),
                        counters,
                        runtime,
                        server.reloader(),
                    )));
                    server
                        .serve(async move {
                            let _ = stopped.wait_for(|stop| *stop).await;
                        })
                        .await;
                });
                // Blocking threads still waiting for a device are not waited for.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|source| Error::Runtime { source })?;
        match ready_rx.recv() {
            Ok(Ok((local_addr, stack, counters, runtime, reloader))) => Ok(ServerHandle {
                local_addr,
                stack,
                counters,
                runtime,
                reloader,
                stop: ShutdownTrigger(Arc::new(stop)),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(Error::ServerThread)
            }
        }
    }
}

/// The first pause after a failed `accept`.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// The longest pause after failed `accept`s.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The connection cap: `configured`, lowered so that open connections never take the file
/// descriptors the key's device needs (a PKCS#11 module opens files and sockets per session
/// or operation; a token out of descriptors fails its operations in misleading ways).
fn connection_cap(configured: usize) -> usize {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(u64::MAX, |(soft, _)| soft);
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    // Each connection holds one descriptor; keep 64 (a quarter of small limits) for the rest.
    let reserve = (limit / 4).min(64);
    configured.min(limit.saturating_sub(reserve)).max(1)
}

/// Opens a listening socket with `backlog`.
fn listen(addr: SocketAddr, backlog: u32) -> Result<TcpListener> {
    let bind = |source| Error::Bind { addr, source };
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(bind)?;
    socket.set_reuseaddr(true).map_err(bind)?;
    socket.bind(addr).map_err(bind)?;
    socket.listen(backlog).map_err(bind)
}

/// Decrements the open-connection count when a connection ends, however it ends.
struct Active(Arc<Counters>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection<S, B>(
    serving: Arc<Serving>,
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    service: S,
) where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<http::BoxError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<http::BoxError>,
{
    shared.counters.active.fetch_add(1, Ordering::Relaxed);
    let _active = Active(Arc::clone(&shared.counters));
    let _ = tcp.set_nodelay(true);
    let deadline = shared.handshake_timeout;
    // A peer that closes before sending a byte (a TCP health check, a port probe) did not
    // attempt a handshake: counted apart, logged at debug level, not warned about.
    // The wait for the first byte counts against the handshake's deadline.
    let started = tokio::time::Instant::now();
    let mut first = [0u8; 1];
    match tokio::time::timeout(deadline, tcp.peek(&mut first)).await {
        Ok(Ok(0)) => {
            shared
                .counters
                .closed_silent
                .fetch_add(1, Ordering::Relaxed);
            log::debug!(target: "hardkey_tls", "{peer}: closed before sending anything");
            return;
        }
        Err(_) => {
            handshake_failed(
                &shared,
                peer,
                FailureReason::Timeout,
                &format!("timed out after {deadline:?}"),
            );
            return;
        }
        // Data, or an error the handshake will meet and report.
        Ok(_) => {}
    }
    let remaining = deadline.saturating_sub(started.elapsed());
    let page_head = Arc::clone(&serving.page_head);
    match &serving.tls {
        #[cfg(feature = "boring")]
        Tls::Boring(acceptor) => {
            match tokio::time::timeout(remaining, crate::boring::accept(acceptor, tcp)).await {
                Ok(Ok(stream)) => {
                    let ssl = stream.ssl();
                    let client = ssl.peer_certificate().and_then(|c| c.to_der().ok());
                    let info = TlsInfo::new(
                        Stack::Boring,
                        ssl.version_str(),
                        ssl.current_cipher()
                            .and_then(|c| c.standard_name())
                            .unwrap_or("?")
                            .to_owned(),
                        ssl.servername(::boring::ssl::NameType::HOST_NAME)
                            .map(str::to_owned),
                        ssl.selected_alpn_protocol().map(<[u8]>::to_vec),
                        peer,
                        client,
                        page_head,
                    );
                    after_handshake(&shared, stream, info, service).await;
                }
                Ok(Err(e)) => client_handshake_failed(&shared, peer, &e),
                Err(_) => handshake_failed(
                    &shared,
                    peer,
                    FailureReason::Timeout,
                    &format!("timed out after {deadline:?}"),
                ),
            }
        }
        #[cfg(feature = "rustls")]
        Tls::Rustls(acceptor) => {
            match tokio::time::timeout(remaining, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let (_, conn) = stream.get_ref();
                    let client = conn
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| c.to_vec());
                    let info = TlsInfo::new(
                        Stack::Rustls,
                        match conn.protocol_version() {
                            Some(::rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                            Some(::rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                            _ => "?",
                        },
                        // rustls names the TLS 1.3 suites TLS13_*; IANA (and BoringSSL) TLS_*.
                        conn.negotiated_cipher_suite()
                            .and_then(|s| s.suite().as_str())
                            .map_or_else(|| "?".to_owned(), |n| n.replacen("TLS13_", "TLS_", 1)),
                        conn.server_name().map(str::to_owned),
                        conn.alpn_protocol().map(<[u8]>::to_vec),
                        peer,
                        client,
                        page_head,
                    );
                    after_handshake(&shared, stream, info, service).await;
                }
                Ok(Err(e)) => client_handshake_failed(&shared, peer, &e),
                Err(_) => handshake_failed(
                    &shared,
                    peer,
                    FailureReason::Timeout,
                    &format!("timed out after {deadline:?}"),
                ),
            }
        }
    }
}

/// [`handshake_failed`], counting a refused client certificate apart too.
fn client_handshake_failed(shared: &Shared, peer: SocketAddr, error: &std::io::Error) {
    if crate::mtls::is_rejection(error) {
        shared
            .counters
            .client_cert_rejections
            .fetch_add(1, Ordering::Relaxed);
    }
    handshake_failed(shared, peer, FailureReason::of(error), error);
}

fn handshake_failed(
    shared: &Shared,
    peer: SocketAddr,
    reason: FailureReason,
    error: &dyn fmt::Display,
) {
    shared
        .counters
        .handshake_failures
        .fetch_add(1, Ordering::Relaxed);
    shared.metrics.handshake_failed(reason);
    log::warn!(target: "hardkey_tls", "{peer}: TLS handshake failed: {error}");
}

async fn after_handshake<IO, S, B>(shared: &Shared, stream: IO, info: TlsInfo, service: S)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<http::BoxError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<http::BoxError>,
{
    shared.counters.handshakes.fetch_add(1, Ordering::Relaxed);
    shared.metrics.handshakes.increment(1);
    let peer = info.peer_addr();
    let counters = Arc::clone(&shared.counters);
    let result = http::serve_connection(
        stream,
        service,
        info,
        shared.limits,
        shared.draining.subscribe(),
        Arc::new(move || {
            counters.requests.fetch_add(1, Ordering::Relaxed);
        }),
    )
    .await;
    if let Err(e) = result {
        log::info!(target: "hardkey_tls", "{peer}: connection ended: {e}");
    }
}

/// Stops a server started with [`Server::start`]; cheap to clone, usable from any thread.
#[derive(Clone, Debug)]
pub struct ShutdownTrigger(Arc<watch::Sender<bool>>);

impl ShutdownTrigger {
    /// Asks the server to stop (idempotent).
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

/// A server running on its own thread ([`Server::start`]). Dropping the handle shuts the
/// server down and waits for its thread.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    stack: Stack,
    counters: Arc<Counters>,
    runtime: tokio::runtime::Handle,
    reloader: Reloader,
    stop: ShutdownTrigger,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.snapshot().fmt(f)
    }
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The TLS stack.
    pub fn stack(&self) -> Stack {
        self.stack
    }

    /// The counters so far.
    pub fn stats(&self) -> ServerStats {
        self.counters.snapshot()
    }

    /// The server's runtime: tasks spawned on it share the server's event loop (a metrics
    /// exporter, or the benchmark's stall ticker).
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// Swaps the server's certificate chains and keys while it serves, from async code (see
    /// [`Reloader`]).
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Checks `identities` and, if every check passes, serves them to the connections
    /// accepted from now on ([`Reloader::reload`]); otherwise keeps the current set and says
    /// why. Blocks until the reload is done: call it from a thread that is not the server's
    /// event loop (in async code, `reloader().reload(..).await`).
    pub fn reload(&self, identities: Identities) -> Result<()> {
        let reloader = self.reloader.clone();
        self.on_runtime(async move { reloader.reload(identities).await })
    }

    /// Checks `identities` as [`reload`](Self::reload) would, without serving them
    /// ([`Reloader::check`]). Blocks, as `reload` does.
    pub fn check(&self, identities: &Identities) -> Result<()> {
        let reloader = self.reloader.clone();
        let identities = identities.clone();
        self.on_runtime(async move { reloader.check(&identities).await })
    }

    /// Runs `work` on the server's runtime and waits for its result.
    fn on_runtime(&self, work: impl Future<Output = Result<()>> + Send + 'static) -> Result<()> {
        let (done, result) = std::sync::mpsc::channel();
        self.runtime.spawn(async move {
            let _ = done.send(work.await);
        });
        // A stopped server's runtime drops the task, and with it the sender.
        result.recv().map_err(|_| Error::ServerStopped)?
    }

    /// A trigger that stops the server from elsewhere (a signal handler, another thread).
    pub fn shutdown_trigger(&self) -> ShutdownTrigger {
        self.stop.clone()
    }

    /// Stops the server and waits until its thread has ended.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop.shutdown();
        self.join()
    }

    /// Waits until the server is stopped through a [`ShutdownTrigger`].
    pub fn wait(mut self) -> Result<()> {
        self.join()
    }

    fn join(&mut self) -> Result<()> {
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| Error::ServerThread),
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop.shutdown();
        let _ = self.join();
    }
}
