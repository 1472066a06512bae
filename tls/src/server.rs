//! A minimal HTTPS server on a hardkey key: for operators testing a provisioned key with curl
//! or `openssl s_client`, for the tests, and for the handshake benchmark.
//!
//! [`Server::bind`] checks everything that can be checked before serving (the certificate
//! holds the key's public key, the key signs, the device answers a test signature) and opens
//! the listening socket; [`Server::serve`] accepts connections until a shutdown future
//! completes. [`Server::start`] does both on a runtime of its own, on its own thread. Errors of
//! one connection are logged (target `hardkey_tls`) and counted, never fatal.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hardkey_api::{Delayed, Latency, PrivateKey, SharedKey};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cert::{CertChain, key_name};
use crate::error::{Error, Result};
use crate::http;
use crate::identity::{Identities, Identity};
use crate::metrics::{FailureReason, ListenerMetrics};

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
    /// Adds this delay to every private-key operation (a [`Delayed::concurrent`] key), to
    /// see how the stack behaves with a slow device. Default: none.
    pub simulate_latency: Option<Duration>,
    /// The listen backlog. Default 1024: a burst of connects beyond the backlog loses SYNs,
    /// which clients retransmit only after a second.
    pub backlog: u32,
    /// Longest a TLS handshake may take, and the startup test signature. Default 10 s.
    pub handshake_timeout: Duration,
    /// Longest a keep-alive connection may idle between requests. Default 30 s.
    pub idle_timeout: Duration,
    /// Longest a request may take to arrive once its first byte came: the whole head and
    /// body, however slowly they trickle in (a slowloris client is closed when it expires).
    /// Default 10 s.
    pub request_timeout: Duration,
    /// Longest writing one response may take (a client that stops reading is closed).
    /// Default 10 s.
    pub write_timeout: Duration,
    /// Most connections open at once; a connection over the cap is closed as soon as it is
    /// accepted, not queued. The server also keeps 64 file descriptors (or a quarter of a
    /// small `RLIMIT_NOFILE`) free for the key's device, whatever this says. Default 4096.
    pub max_connections: usize,
    /// Make one test signature at startup, so an unreachable device fails [`Server::bind`]
    /// rather than the first handshake. Default: on.
    pub probe_key: bool,
    /// How long shutdown waits for open connections to finish their request. Default 5 s.
    pub shutdown_grace: Duration,
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
            max_connections: 4096,
            probe_key: true,
            shutdown_grace: Duration::from_secs(5),
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

    /// Sets the deadline of writing one response.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
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
            .field("max_connections", &self.max_connections)
            .field("probe_key", &self.probe_key)
            .field("shutdown_grace", &self.shutdown_grace)
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
    /// Connections closed by the peer before it sent anything (health checks, port probes):
    /// not handshake failures.
    pub closed_silent: u64,
    /// HTTP requests answered.
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
            closed_silent: self.closed_silent.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            accept_errors: self.accept_errors.load(Ordering::Relaxed),
        }
    }
}

/// The TLS acceptor of the configured stack.
enum Tls {
    #[cfg(feature = "boring")]
    Boring(::boring::ssl::SslAcceptor),
    #[cfg(feature = "rustls")]
    Rustls(crate::rustls::Acceptor),
}

impl Tls {
    /// The stack's acceptor, without session resumption: a resumed handshake does not sign,
    /// and this server exists to exercise the key (and to measure handshakes that use it).
    fn new(stack: Stack, identities: &Identities) -> Result<Self> {
        match stack {
            #[cfg(feature = "boring")]
            Stack::Boring => {
                use ::boring::ssl::{SslOptions, SslSessionCacheMode};
                let mut builder = crate::boring::acceptor_builder_for(identities)?;
                builder.set_options(SslOptions::NO_TICKET);
                builder.set_session_cache_mode(SslSessionCacheMode::OFF);
                Ok(Self::Boring(builder.build()))
            }
            #[cfg(feature = "rustls")]
            Stack::Rustls => {
                let mut config = (*crate::rustls::server_config_for(identities)?).clone();
                config.session_storage = Arc::new(::rustls::server::NoServerSessionStorage {});
                config.send_tls13_tickets = 0;
                Ok(Self::Rustls(crate::rustls::Acceptor::new(Arc::new(config))))
            }
            #[allow(unreachable_patterns, reason = "reached when a stack's feature is off")]
            other => {
                let _ = identities;
                Err(Error::StackNotBuilt {
                    stack: other,
                    feature: other.feature(),
                })
            }
        }
    }
}

/// One test signature with `key`, within `timeout`.
async fn probe(key: &SharedKey, timeout: Duration) -> Result<()> {
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
    metrics: ListenerMetrics,
    page_head: String,
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
    tls: Arc<Tls>,
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
        config.identities.check()?;
        if !config.stack.is_available() {
            return Err(Error::StackNotBuilt {
                stack: config.stack,
                feature: config.stack.feature(),
            });
        }
        if config.probe_key {
            // Each key once, even when it serves several chains.
            let mut probed: Vec<*const ()> = Vec::new();
            for identity in config.identities.iter() {
                let seen = Arc::as_ptr(identity.key()).cast::<()>();
                if !probed.contains(&seen) {
                    probed.push(seen);
                    probe(identity.key(), config.handshake_timeout).await?;
                }
            }
        }
        // The page names the key by label or id only: its URI (module path, TCTI, token)
        // is for the operator's logs, not for every client.
        let info = config.identities.default_identity().key().info();
        let page_head = format!(
            "hardkey test server\nkey: {} ({})\nstack: {}{}\n{}",
            info.display_name(),
            info.algorithm,
            config.stack,
            match config.simulate_latency {
                Some(d) => format!(" (simulated key latency {d:?})"),
                None => String::new(),
            },
            match config.identities.len() {
                1 => String::new(),
                n => format!("identities: {n} (the key above is the default's)\n"),
            }
        );
        let identities = match config.simulate_latency {
            Some(delay) => config.identities.map_keys(|key| {
                Arc::new(Delayed::concurrent(Arc::clone(key), Latency::Fixed(delay))) as SharedKey
            }),
            None => config.identities,
        };
        let tls = Tls::new(config.stack, &identities)?;
        let listener = listen(config.listen, config.backlog)?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let (draining, _) = watch::channel(false);
        Ok(Self {
            listener,
            local_addr,
            stack: config.stack,
            tls: Arc::new(tls),
            shared: Arc::new(Shared {
                counters: Arc::default(),
                metrics: ListenerMetrics::new(local_addr, config.stack, &identities),
                page_head,
                handshake_timeout: config.handshake_timeout,
                limits: http::Limits {
                    idle: config.idle_timeout,
                    request: config.request_timeout,
                    write: config.write_timeout,
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

    /// Accepts and serves connections until `shutdown` completes; then stops accepting, lets
    /// open connections finish their current request for up to `shutdown_grace`, and closes
    /// the rest. Failed connections are logged and counted; nothing here ends the loop but
    /// `shutdown`.
    pub async fn serve(&self, shutdown: impl Future<Output = ()>) {
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
                            Arc::clone(&self.tls),
                            Arc::clone(&self.shared),
                            tcp,
                            peer,
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
                    let _ =
                        ready_tx.send(Ok((server.local_addr(), server.stack(), counters, runtime)));
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
            Ok(Ok((local_addr, stack, counters, runtime))) => Ok(ServerHandle {
                local_addr,
                stack,
                counters,
                runtime,
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

async fn connection(tls: Arc<Tls>, shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
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
    match &*tls {
        #[cfg(feature = "boring")]
        Tls::Boring(acceptor) => {
            match tokio::time::timeout(remaining, crate::boring::accept(acceptor, tcp)).await {
                Ok(Ok(mut stream)) => {
                    let ssl = stream.ssl();
                    let details = format!(
                        "protocol: {}\ncipher: {}\n",
                        ssl.version_str(),
                        ssl.current_cipher()
                            .and_then(|c| c.standard_name())
                            .unwrap_or("?")
                    );
                    after_handshake(&shared, &mut stream, peer, &details).await;
                }
                Ok(Err(e)) => handshake_failed(&shared, peer, FailureReason::of(&e), &e),
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
                Ok(Ok(mut stream)) => {
                    let (_, conn) = stream.get_ref();
                    let details = format!(
                        "protocol: {}\ncipher: {}\n",
                        match conn.protocol_version() {
                            Some(::rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                            Some(::rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                            _ => "?",
                        },
                        // rustls names the TLS 1.3 suites TLS13_*; IANA (and BoringSSL) TLS_*.
                        conn.negotiated_cipher_suite()
                            .and_then(|s| s.suite().as_str())
                            .map_or_else(|| "?".to_owned(), |n| n.replacen("TLS13_", "TLS_", 1))
                    );
                    after_handshake(&shared, &mut stream, peer, &details).await;
                }
                Ok(Err(e)) => handshake_failed(&shared, peer, FailureReason::of(&e), &e),
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

async fn after_handshake<S>(shared: &Shared, stream: &mut S, peer: SocketAddr, details: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    shared.counters.handshakes.fetch_add(1, Ordering::Relaxed);
    shared.metrics.handshakes.increment(1);
    let page = format!("{}{details}", shared.page_head);
    let result = http::serve(
        stream,
        page.as_bytes(),
        shared.limits,
        shared.draining.subscribe(),
        &shared.counters.requests,
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
