//! HTTP/1.1 and HTTP/2 over the server's TLS connections, by hyper: the protocol is the one ALPN
//! chose (`h2`, else HTTP/1.1), the service is the application's (a tower service, such as an
//! axum `Router`) or the built-in test page, and this module adds what hyper leaves to its
//! caller: the keep-alive idle timeout, the request-head deadline (slowloris), the write-stall
//! timeout, graceful shutdown, the request count, and each request's [`TlsInfo`].

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, Sleep};

use crate::server::Stack;

/// Largest request body the test page reads (and discards); a longer one gets 413.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// An error of a request's body or of a service, as hyper takes it.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the TLS handshake of a request's connection established, in every request's
/// extensions (`req.extensions().get::<TlsInfo>()`; axum: `Extension<TlsInfo>`). Cheap to
/// clone (one reference count).
#[derive(Clone, Debug)]
pub struct TlsInfo(Arc<TlsInfoInner>);

#[derive(Debug)]
struct TlsInfoInner {
    stack: Stack,
    protocol: &'static str,
    cipher: String,
    server_name: Option<String>,
    alpn: Option<Vec<u8>>,
    peer_addr: SocketAddr,
    /// The client's certificate (DER), verified, when the server requires one.
    client_certificate: Option<Vec<u8>>,
    /// The start of the test page of the identities the connection was accepted with.
    page_head: Arc<str>,
}

impl TlsInfo {
    #[allow(
        clippy::too_many_arguments,
        reason = "one constructor, called by the two stacks with what each handshake gave"
    )]
    pub(crate) fn new(
        stack: Stack,
        protocol: &'static str,
        cipher: String,
        server_name: Option<String>,
        alpn: Option<Vec<u8>>,
        peer_addr: SocketAddr,
        client_certificate: Option<Vec<u8>>,
        page_head: Arc<str>,
    ) -> Self {
        Self(Arc::new(TlsInfoInner {
            stack,
            protocol,
            cipher,
            server_name,
            alpn,
            peer_addr,
            client_certificate,
            page_head,
        }))
    }

    /// The client's certificate (DER), verified against the server's client CAs, when the
    /// server requires client certificates ([`ServerConfig::client_ca`](crate::ServerConfig)).
    pub fn client_certificate(&self) -> Option<&[u8]> {
        self.0.client_certificate.as_deref()
    }

    /// The TLS library that terminated the connection.
    pub fn stack(&self) -> Stack {
        self.0.stack
    }

    /// The TLS version: `TLSv1.3` or `TLSv1.2`.
    pub fn protocol(&self) -> &str {
        self.0.protocol
    }

    /// The cipher suite's IANA name (`TLS_AES_128_GCM_SHA256`, `TLS_ECDHE_ECDSA_WITH_...`),
    /// or `?` if the stack did not name it.
    pub fn cipher(&self) -> &str {
        &self.0.cipher
    }

    /// The server name the client asked for (SNI), if it sent one.
    pub fn server_name(&self) -> Option<&str> {
        self.0.server_name.as_deref()
    }

    /// The application protocol ALPN chose (`h2`, `http/1.1`), if the client offered any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.0.alpn.as_deref()
    }

    /// The client's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.0.peer_addr
    }

    /// Whether the connection speaks HTTP/2 (ALPN `h2`); otherwise HTTP/1.1.
    pub(crate) fn is_h2(&self) -> bool {
        self.alpn() == Some(b"h2")
    }
}

/// The deadlines and limits of one connection's HTTP exchange.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// With no request in progress: closed (gracefully) when it expires.
    pub(crate) idle: Duration,
    /// HTTP/1.1: for a request head from its first byte; the test page also reads its body
    /// within it.
    pub(crate) request: Duration,
    /// Longest a write may wait for the client to take bytes.
    pub(crate) write: Duration,
    /// Largest request head (HTTP/1.1: request line and headers; HTTP/2: the header list).
    pub(crate) max_header_size: usize,
    /// HTTP/2 streams open at once.
    pub(crate) max_concurrent_streams: u32,
}

/// Why a connection's HTTP exchange ended, when it did not end cleanly.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("{}", chain(.0))]
    Http(#[from] hyper::Error),
    #[error("{0}")]
    TimedOut(&'static str),
}

/// An error and its sources, `: `-separated (hyper's messages name the step, the sources why).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A connection's requests in progress and when it last had none: the idle and request-head
/// deadlines.
struct Activity {
    state: Mutex<ActivityState>,
    changed: Notify,
}

struct ActivityState {
    in_flight: usize,
    /// When the last request finished (or the connection started).
    idle_since: Instant,
    /// When the first byte after that arrived.
    first_byte: Option<Instant>,
}

/// What a connection's watchdog waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Deadline {
    Idle(Instant),
    Request(Instant),
}

impl Deadline {
    fn at(self) -> Instant {
        match self {
            Self::Idle(at) | Self::Request(at) => at,
        }
    }
}

impl Activity {
    fn new() -> Self {
        Self {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                idle_since: Instant::now(),
                first_byte: None,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes arrived: with no request in progress, the next request's head has begun.
    fn read(&self) {
        let mut state = self.lock();
        if state.in_flight == 0 && state.first_byte.is_none() {
            state.first_byte = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    /// A request reached the service; it is in progress until the guard drops (with the
    /// response body, once sent).
    fn start(self: &Arc<Self>) -> InFlight {
        let mut state = self.lock();
        state.in_flight += 1;
        state.first_byte = None;
        drop(state);
        self.changed.notify_one();
        InFlight(Arc::clone(self))
    }

    /// The deadline now: none while requests are in progress; on HTTP/1.1 the request-head
    /// deadline once a byte of the next request arrived; else the idle deadline. (HTTP/2
    /// clients send frames between requests, WINDOW_UPDATE, PING, SETTINGS: only the idle
    /// deadline applies there, and bounds a client trickling a header block.)
    fn deadline(&self, http2: bool, limits: &Limits) -> Option<Deadline> {
        let state = self.lock();
        if state.in_flight > 0 {
            return None;
        }
        Some(match state.first_byte {
            Some(first) if !http2 => Deadline::Request(first + limits.request),
            _ => Deadline::Idle(state.idle_since + limits.idle),
        })
    }
}

/// A request in progress (see [`Activity::start`]).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
            state.first_byte = None;
        }
        drop(state);
        self.0.changed.notify_one();
    }
}

/// The TLS stream as hyper sees it: reads feed the connection's [`Activity`]; a write (or
/// flush, or shutdown) that waits longer than the write timeout for the client to take bytes
/// fails with `TimedOut`, which ends the connection.
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
    write_timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> Watched<T> {
    fn check<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.write_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read the response within the write timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, poll)
    }
}

/// A response body that keeps its request counted as in progress until it is sent (or
/// dropped).
pub(crate) struct CountedBody<B> {
    inner: Pin<Box<B>>,
    _in_flight: InFlight,
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.inner.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The hyper service of one connection: puts the connection's [`TlsInfo`] into each request,
/// counts it, and calls the application's tower service (a clone per request, after
/// `poll_ready`).
struct Dispatch<S> {
    inner: S,
    info: TlsInfo,
    activity: Arc<Activity>,
    on_request: Arc<dyn Fn() + Send + Sync>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> hyper::service::Service<Request<Incoming>> for Dispatch<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
{
    type Response = Response<CountedBody<B>>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, BoxError>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.start();
        (self.on_request)();
        request.extensions_mut().insert(self.info.clone());
        let mut service = self.inner.clone();
        Box::pin(async move {
            futures::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            let response = service.call(request).await.map_err(Into::into)?;
            Ok(response.map(|body| CountedBody {
                inner: Box::pin(body),
                _in_flight: in_flight,
            }))
        })
    }
}

/// One connection's hyper state machine, of the protocol ALPN chose.
enum Connection<IO, S>
where
    S: hyper::service::HttpService<Incoming>,
{
    Http1(Pin<Box<hyper::server::conn::http1::UpgradeableConnection<TokioIo<IO>, S>>>),
    Http2(Pin<Box<hyper::server::conn::http2::Connection<TokioIo<IO>, S, TokioExecutor>>>),
}

/// Serves HTTP on a handshaken TLS stream until the client closes, the connection idles too
/// long, a request head or a write misses its deadline, or the server drains (`draining`
/// turns true: the connection finishes the requests in progress, then closes; HTTP/2 sends
/// GOAWAY). The protocol is the one ALPN chose: `h2`, else HTTP/1.1 (RFC 9113 3.2: HTTP/2 over
/// TLS is negotiated, never assumed). Each request is counted with `on_request` when it
/// reaches the service.
pub(crate) async fn serve_connection<IO, S, B>(
    io: IO,
    service: S,
    info: TlsInfo,
    limits: Limits,
    mut draining: watch::Receiver<bool>,
    on_request: Arc<dyn Fn() + Send + Sync>,
) -> Result<(), HttpError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let http2 = info.is_h2();
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: io,
        activity: Arc::clone(&activity),
        write_timeout: limits.write,
        stalled: None,
    });
    let service = Dispatch {
        inner: service,
        info,
        activity: Arc::clone(&activity),
        on_request,
    };
    let mut connection = if http2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
        Connection::Http2(Box::pin(builder.serve_connection(io, service)))
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // The request-head deadline runs from the head's first byte, below; hyper's
            // own runs from the end of the previous response, which would cut the idle time.
            .header_read_timeout(None)
            .max_header_size(limits.max_header_size)
            // Requests already received are answered when the client half-closes.
            .half_close(true)
            // `Content-Length`, as clients that match header names exactly expect.
            .title_case_headers(true);
        Connection::Http1(Box::pin(
            builder.serve_connection(io, service).with_upgrades(),
        ))
    };
    let mut closing = false;
    let mut close_by: Option<Instant> = None;
    loop {
        let deadline = if closing {
            close_by.map(Deadline::Idle)
        } else {
            activity.deadline(http2, &limits)
        };
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.at()).await,
                None => std::future::pending().await,
            }
        };
        let done = async {
            match &mut connection {
                Connection::Http1(c) => c.as_mut().await,
                Connection::Http2(c) => c.as_mut().await,
            }
        };
        let event = tokio::select! {
            done = done => return done.map_err(HttpError::from),
            _ = draining.wait_for(|stop| *stop), if !closing => Event::Drain,
            () = sleep => Event::Deadline,
            () = activity.changed.notified() => Event::Changed,
        };
        match event {
            Event::Changed => {}
            Event::Drain => {
                // Until the server's shutdown grace runs out: the server ends it then.
                shutdown(&mut connection);
                closing = true;
            }
            Event::Deadline if closing => {
                return Err(HttpError::TimedOut(
                    "an idle connection did not close within the write timeout",
                ));
            }
            Event::Deadline => match activity.deadline(http2, &limits) {
                Some(Deadline::Request(at)) if at <= Instant::now() => {
                    return Err(HttpError::TimedOut(
                        "the request head did not arrive within the request timeout",
                    ));
                }
                Some(Deadline::Idle(at)) if at <= Instant::now() => {
                    // Quietly: HTTP/1.1 closes, HTTP/2 sends GOAWAY and closes once the
                    // client acknowledges (or the write timeout runs out).
                    shutdown(&mut connection);
                    closing = true;
                    close_by = Some(Instant::now() + limits.write);
                }
                // A request started meanwhile, or the deadline moved.
                _ => {}
            },
        }
    }
}

enum Event {
    Drain,
    Deadline,
    Changed,
}

fn shutdown<IO, S, B>(connection: &mut Connection<IO, S>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B> + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    match connection {
        Connection::Http1(c) => c.as_mut().graceful_shutdown(),
        Connection::Http2(c) => c.as_mut().graceful_shutdown(),
    }
}

/// The built-in test page: `GET` and `HEAD` get `page_head`, then the request's TLS
/// parameters and HTTP version; other methods get 405. A request body is read (within the
/// request timeout, at most [`MAX_BODY`] bytes) and discarded.
#[derive(Clone)]
pub(crate) struct TestPage {
    body_timeout: Duration,
}

impl TestPage {
    /// The page, reading request bodies within `body_timeout`. Its head comes with each
    /// connection's [`TlsInfo`] (a reload may change it).
    pub(crate) fn new(body_timeout: Duration) -> Self {
        Self { body_timeout }
    }

    async fn respond(self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let http1 = parts.version < Version::HTTP_2;
        let read = tokio::time::timeout(self.body_timeout, Limited::new(body, MAX_BODY).collect());
        let refused = match read.await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Some((
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is over 64 KiB\n",
            )),
            Ok(Err(_)) => Some((StatusCode::BAD_REQUEST, "the request body was cut short\n")),
            Err(_) => Some((
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive within the request timeout\n",
            )),
        };
        if let Some((status, why)) = refused {
            let mut response = text(status, why.to_owned());
            if http1 {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return response;
        }
        if parts.method != Method::GET && parts.method != Method::HEAD {
            let mut response = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET and HEAD are served\n".to_owned(),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let mut page = String::new();
        if let Some(info) = parts.extensions.get::<TlsInfo>() {
            page.push_str(&info.0.page_head);
            page.push_str(&format!(
                "protocol: {}\ncipher: {}\n{}",
                info.protocol(),
                info.cipher(),
                crate::mtls::client_line(info.client_certificate())
            ));
        }
        page.push_str(&format!("http: {:?}\n", parts.version));
        // hyper sends a HEAD response's headers only, with the Content-Length of the page.
        text(StatusCode::OK, page)
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

impl tower_service::Service<Request<Incoming>> for TestPage {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let page = self.clone();
        Box::pin(async move { Ok(page.respond(request).await) })
    }
}
