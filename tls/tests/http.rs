//! The HTTP layer (hyper), on both stacks: curl gets HTTP/2 and HTTP/1.1 as it asks (ALPN)
//! and reuses its connection, `openssl s_client -alpn h2` negotiates h2; an idle client, a
//! slowloris client and a client that stops reading are closed by their timeouts; requests a
//! lenient proxy would frame differently (a signed or conflicting Content-Length, ...) are
//! refused with 400 and the request behind them never answered, a head over the limit gets
//! 431; shutdown lets requests in
//! progress finish (HTTP/1.1 and HTTP/2) and closes idle connections at once; an axum Router
//! served with `Server::serve_with` sees each request's TLS parameters.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "test code"
)]
#![cfg(all(feature = "boring", feature = "rustls"))]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::{Extension, Router};
use common::{Ca, Client, Version, connect};
use futures::executor::block_on;
use hardkey_api::{GenerateRequest, KeyAlgorithm, KeyStore, PrivateKey, SharedKey};
use hardkey_soft::SoftStore;
use hardkey_tls::{CertChain, Server, ServerConfig, ServerHandle, ServerStats, Stack, TlsInfo};
use rustls::SignatureScheme as S;

const ANY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

fn config(ca: &Ca, stack: Stack) -> ServerConfig {
    let store = SoftStore::in_memory().unwrap();
    let key: SharedKey = Arc::new(
        block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP256).label("http"))).unwrap(),
    );
    let chain = CertChain::from_pem(ca.issue(&key.info().public_key, "localhost")).unwrap();
    ServerConfig::new(key, chain).stack(stack).listen(ANY)
}

fn start(config: ServerConfig) -> ServerHandle {
    Server::start(config).unwrap()
}

/// curl for `urls` (one connection when it can reuse it), verifying against the CA, with the
/// extra `args`; prints `%{http_version}` after each body.
fn curl(ca: &Ca, addr: SocketAddr, args: &[&str], paths: &[&str]) -> Output {
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--verbose", "--fail"])
        .arg("--cacert")
        .arg(ca.ca_file())
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", addr.port()))
        .args(["--max-time", "20", "-w", "version=%{http_version}\n"])
        .args(args);
    for path in paths {
        cmd.arg(format!("https://localhost:{}{path}", addr.port()));
    }
    cmd.stdin(Stdio::null())
        .output()
        .expect("curl runs (make test installs it)")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A rustls client offering ALPN `alpn` (none if empty), connected and handshaken.
fn client(ca: &Ca, addr: SocketAddr, alpn: &[&[u8]]) -> Client {
    let (config, _) = hardkey_tls::testing::recording_client_config(
        ca.ca_der(),
        Version::Tls13.rustls(),
        Some(&[S::ECDSA_NISTP256_SHA256]),
    )
    .unwrap();
    let mut config = config;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    connect(addr, "localhost", Arc::new(config)).unwrap()
}

/// Reads until the server closes (or the 20 s read timeout); returns what came and when the
/// connection ended.
fn read_to_close(stream: &mut Client) -> (Vec<u8>, Instant) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return (out, Instant::now()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn curl_gets_http2_and_http11_by_alpn_and_reuses_the_connection() {
    let ca = Ca::new();
    for stack in Stack::ALL {
        let server = start(config(&ca, stack));
        let addr = server.local_addr();
        for (flag, version, page) in [
            ("--http2", "2", "http: HTTP/2.0"),
            ("--http1.1", "1.1", "http: HTTP/1.1"),
        ] {
            let out = curl(&ca, addr, &[flag], &["/", "/"]);
            let (stdout, log) = text(&out);
            assert!(out.status.success(), "{stack} {flag}: {log}");
            assert_eq!(
                count(&stdout, &format!("version={version}\n")),
                2,
                "{stack} {flag}: {stdout}"
            );
            assert_eq!(count(&stdout, page), 2, "{stack} {flag}: {stdout}");
            assert!(stdout.contains("stack: "), "{stdout}");
            // The second request went over the first connection.
            assert!(
                log.contains("Re-using existing connection"),
                "{stack} {flag}: {log}"
            );
            println!("{stack} {flag}: {}", stdout.lines().last().unwrap_or(""));
        }
        let stats = server.stats();
        assert_eq!(
            (stats.connections, stats.handshakes, stats.requests),
            (2, 2, 4),
            "{stack}: {stats:?}"
        );
        // HEAD: the page's headers, no body; other methods: 405 naming what is allowed.
        let out = curl(&ca, addr, &["--http1.1", "--head"], &["/"]);
        let (stdout, log) = text(&out);
        assert!(out.status.success(), "{log}");
        assert!(stdout.starts_with("HTTP/1.1 200 OK\r\n"), "{stdout}");
        assert!(stdout.contains("Content-Length: "), "{stdout}");
        assert!(!stdout.contains("hardkey test server"), "{stdout}");
        let out = curl(&ca, addr, &["--http2", "-X", "DELETE"], &["/"]);
        let (_, log) = text(&out);
        assert!(!out.status.success(), "{log}");
        assert!(log.contains("< HTTP/2 405"), "{log}");
        assert!(log.contains("< allow: GET, HEAD"), "{log}");
        server.shutdown().unwrap();
    }
}

#[test]
fn openssl_negotiates_h2_and_http11() {
    let ca = Ca::new();
    for stack in Stack::ALL {
        let server = start(config(&ca, stack));
        for (alpn, expect) in [
            (Some("h2"), "ALPN protocol: h2"),
            (Some("http/1.1"), "ALPN protocol: http/1.1"),
            (Some("h2,http/1.1"), "ALPN protocol: h2"),
            (None, "No ALPN negotiated"),
        ] {
            let mut cmd = Command::new("openssl");
            cmd.args(["s_client", "-connect", &server.local_addr().to_string()])
                .args(["-servername", "localhost", "-verify_return_error"])
                .arg("-CAfile")
                .arg(ca.ca_file());
            if let Some(alpn) = alpn {
                cmd.args(["-alpn", alpn]);
            }
            let h2 = alpn.is_some_and(|a| a.starts_with("h2"));
            if !h2 {
                cmd.arg("-ign_eof");
            }
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("openssl runs");
            let request: &[u8] = if h2 {
                // The preface and an empty SETTINGS frame: the server answers with its own.
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0"
            } else {
                b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            };
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(request).unwrap();
            if h2 {
                std::thread::sleep(Duration::from_millis(500));
            }
            drop(stdin);
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains(expect), "{stack} {alpn:?}: {stdout}");
            assert!(
                stdout.contains("Verify return code: 0 (ok)"),
                "{stack}: {stdout}"
            );
            if !h2 {
                assert!(
                    stdout.contains("HTTP/1.1 200 OK"),
                    "{stack} {alpn:?}: {stdout}"
                );
                assert!(stdout.contains("http: HTTP/1.1"), "{stack}: {stdout}");
            }
        }
        server.shutdown().unwrap();
    }
}

#[test]
fn idle_and_slowloris_clients_are_closed_by_their_timeouts() {
    let ca = Ca::new();
    let idle = Duration::from_millis(1500);
    let request = Duration::from_millis(500);
    let write = Duration::from_millis(500);
    for stack in Stack::ALL {
        let server = start(
            config(&ca, stack)
                .idle_timeout(idle)
                .request_timeout(request)
                .write_timeout(write)
                .max_concurrent_streams(7),
        );
        let addr = server.local_addr();

        // Idle after a request, on HTTP/1.1: closed at the idle timeout, not the request one.
        let mut c = client(&ca, addr, &[b"http/1.1"]);
        c.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        c.flush().unwrap();
        let t = Instant::now();
        let (got, closed) = read_to_close(&mut c);
        let waited = closed - t;
        assert!(
            String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200 OK"),
            "{stack}"
        );
        assert!(
            waited >= idle && waited < idle * 2,
            "{stack}: idle HTTP/1.1 closed after {waited:?}"
        );

        // Slowloris: a byte every 100 ms, each well within the idle timeout; the head's
        // deadline closes it.
        let mut c = client(&ca, addr, &[b"http/1.1"]);
        let t = Instant::now();
        let mut closed_after = None;
        for byte in b"GET / HTTP/1.1\r\nHost: slow.example\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if c.write_all(&[*byte]).and_then(|()| c.flush()).is_err() {
                closed_after = Some(t.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            if t.elapsed() > idle * 3 {
                break;
            }
        }
        let closed_after = closed_after.expect("the slowloris client was never closed");
        assert!(
            closed_after >= request && closed_after < idle,
            "{stack}: slowloris closed after {closed_after:?}"
        );

        // HTTP/2: a client that sends the preface and then nothing gets GOAWAY at the idle
        // timeout; this one does not acknowledge the server's PING, so the connection closes
        // a write timeout later.
        let mut c = client(&ca, addr, &[b"h2"]);
        assert_eq!(c.conn.alpn_protocol(), Some(&b"h2"[..]));
        let t = Instant::now();
        c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .unwrap();
        c.flush().unwrap();
        let (frames, closed) = read_to_close(&mut c);
        let waited = closed - t;
        assert!(
            waited >= idle + write && waited < (idle + write) * 2,
            "{stack}: idle HTTP/2 closed after {waited:?}"
        );
        assert!(
            frame(&frames, 7).is_some(),
            "{stack}: no GOAWAY in {frames:?}"
        );
        // The server's SETTINGS announce the stream limit (SETTINGS_MAX_CONCURRENT_STREAMS).
        let settings = frame(&frames, 4).expect("the server's SETTINGS");
        assert!(
            settings.chunks_exact(6).any(|s| s == [0, 3, 0, 0, 0, 7]),
            "{stack}: {settings:?}"
        );

        // The request timeout closed the slowloris client without a request answered.
        let stats = server.stats();
        assert_eq!(stats.requests, 1, "{stack}: {stats:?}");
        server.shutdown().unwrap();
    }
}

/// The payload of the first HTTP/2 frame of type `kind` among a server's frames.
fn frame(mut frames: &[u8], kind: u8) -> Option<&[u8]> {
    while frames.len() >= 9 {
        let len =
            usize::from(frames[0]) << 16 | usize::from(frames[1]) << 8 | usize::from(frames[2]);
        if frames[3] == kind {
            return frames.get(9..9 + len);
        }
        frames = frames.get(9 + len..).unwrap_or_default();
    }
    None
}

#[test]
fn ambiguous_request_framing_is_refused() {
    let ca = Ca::new();
    let server = start(config(&ca, Stack::Rustls));
    let addr = server.local_addr();
    // Each head, then a request a proxy that framed it otherwise would see as the next one.
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for bad in [
        "Content-Length: +5",
        "Content-Length: -1",
        "Content-Length: 5 5",
        "Content-Length: 5\r\nContent-Length: 6",
        "Content-Length: 5, 6",
        "Content-Length : 5",
        " Content-Length: 5",
        "X: a\r\n\tfolded",
        "X: nul\0byte",
        "Transfer-Encoding: gzip",
        "Transfer-Encoding: chunked, gzip",
    ] {
        let mut c = client(&ca, addr, &[b"http/1.1"]);
        write!(
            c,
            "POST / HTTP/1.1\r\nHost: localhost\r\n{bad}\r\n\r\nhello{smuggled}"
        )
        .unwrap();
        c.flush().unwrap();
        let (got, _) = read_to_close(&mut c);
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{bad:?}: {got}"
        );
        assert_eq!(
            count(&got, "HTTP/1.1 "),
            1,
            "{bad:?}: answered twice: {got}"
        );
    }
    // Transfer-Encoding and Content-Length together: read as chunked, answered, and the
    // connection closed (RFC 9112 6.1), so what follows is never taken for a request.
    // HTTP/1.0 has no Transfer-Encoding: 400.
    for (head, status) in [
        (
            "POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 5",
            "HTTP/1.1 405 Method Not Allowed\r\n",
        ),
        (
            "POST / HTTP/1.0\r\nHost: localhost\r\nTransfer-Encoding: chunked",
            "HTTP/1.1 400 Bad Request\r\n",
        ),
    ] {
        let mut c = client(&ca, addr, &[b"http/1.1"]);
        write!(c, "{head}\r\n\r\n0\r\n\r\n{smuggled}").unwrap();
        c.flush().unwrap();
        let (got, _) = read_to_close(&mut c);
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with(status), "{head:?}: {got}");
        assert_eq!(count(&got, "HTTP/1."), 1, "{head:?}: answered twice: {got}");
    }
    // A head over the limit (16 KiB by default) gets 431.
    let mut c = client(&ca, addr, &[b"http/1.1"]);
    write!(
        c,
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(17 * 1024)
    )
    .unwrap();
    c.flush().unwrap();
    let (got, _) = read_to_close(&mut c);
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{got}"
    );
    // The unambiguous forms are served, and the request after the body is answered too.
    for good in [
        "Content-Length: 5",
        "Content-Length: 5\r\ncontent-length: 5",
        "Content-Length: 005",
    ] {
        let mut c = client(&ca, addr, &[b"http/1.1"]);
        write!(
            c,
            "POST / HTTP/1.1\r\nHost: localhost\r\n{good}\r\n\r\nhello{smuggled}"
        )
        .unwrap();
        c.flush().unwrap();
        // Answers both: 405 for the POST, 200 for the GET; then the idle timeout would close.
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while count(&String::from_utf8_lossy(&got), "HTTP/1.1 ") < 2
            || !String::from_utf8_lossy(&got).ends_with("http: HTTP/1.1\n")
        {
            let n = c.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "{good:?}: closed early: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{good:?}: {got}"
        );
        assert!(got.contains("HTTP/1.1 200 OK\r\n"), "{good:?}: {got}");
    }
    server.shutdown().unwrap();
}

/// An axum application on a runtime of the test's, served with `Server::serve_with`.
struct App {
    server: Arc<Server>,
    runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl App {
    fn start(config: ServerConfig) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = Arc::new(runtime.block_on(Server::bind(config)).unwrap());
        let app = Router::new()
            .route("/", get(|| async { "hello from axum\n" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(800)).await;
                    "slow done\n"
                }),
            )
            .route("/big", get(|| async { vec![b'x'; 32 << 20] }))
            .route(
                "/tls",
                get(|Extension(tls): Extension<TlsInfo>| async move {
                    format!(
                        "stack={} protocol={} cipher={} sni={:?} alpn={:?}\n",
                        tls.stack(),
                        tls.protocol(),
                        tls.cipher(),
                        tls.server_name(),
                        tls.alpn().map(String::from_utf8_lossy),
                    )
                }),
            );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = Arc::clone(&server);
        let task = runtime.spawn(async move {
            serving
                .serve_with(app, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            server,
            runtime,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    fn stats(&self) -> ServerStats {
        self.server.stats()
    }

    /// Stops serving; returns how long the drain took.
    fn shutdown(&mut self) -> Duration {
        let t = Instant::now();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            self.runtime.block_on(task).unwrap();
        }
        t.elapsed()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[test]
fn an_axum_app_sees_the_tls_parameters() {
    let ca = Ca::new();
    for stack in Stack::ALL {
        let app = App::start(config(&ca, stack));
        for (flag, alpn) in [("--http2", "h2"), ("--http1.1", "http/1.1")] {
            let out = curl(&ca, app.addr(), &[flag, "--tlsv1.3"], &["/tls", "/"]);
            let (stdout, log) = text(&out);
            assert!(out.status.success(), "{log}");
            let expect = format!("stack={stack} protocol=TLSv1.3 cipher=TLS_AES_");
            assert!(stdout.contains(&expect), "{stack} {flag}: {stdout}");
            assert!(
                stdout.contains(&format!("sni=Some(\"localhost\") alpn=Some(\"{alpn}\")")),
                "{stack} {flag}: {stdout}"
            );
            assert!(stdout.contains("hello from axum\n"), "{stdout}");
            println!("{stack} {flag}: {}", stdout.lines().next().unwrap_or(""));
        }
        assert_eq!(app.stats().requests, 4, "{stack}");
    }
}

#[test]
fn shutdown_finishes_requests_in_progress_and_closes_idle_connections() {
    let ca = Ca::new();
    for stack in Stack::ALL {
        let mut app = App::start(config(&ca, stack).shutdown_grace(Duration::from_secs(10)));
        let addr = app.addr();
        // An idle keep-alive connection, and a request in progress on each protocol.
        let mut idle = client(&ca, addr, &[b"http/1.1"]);
        idle.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut first = [0u8; 12];
        idle.read_exact(&mut first).unwrap();
        let slow1 = {
            let mut c = client(&ca, addr, &[b"http/1.1"]);
            std::thread::spawn(move || {
                c.write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    .unwrap();
                c.flush().unwrap();
                String::from_utf8_lossy(&read_to_close(&mut c).0).into_owned()
            })
        };
        let ca_file = ca.ca_file();
        let slow2 = std::thread::spawn(move || {
            Command::new("curl")
                .args(["--silent", "--show-error", "--fail", "--http2"])
                .arg("--cacert")
                .arg(ca_file)
                .arg("--resolve")
                .arg(format!("localhost:{}:127.0.0.1", addr.port()))
                .args(["-w", "version=%{http_version}\n"])
                .arg(format!("https://localhost:{}/slow", addr.port()))
                .output()
                .unwrap()
        });
        // Both requests reached the app (and the first one was answered).
        let t = Instant::now();
        while app.stats().requests < 3 {
            assert!(t.elapsed() < Duration::from_secs(5), "{:?}", app.stats());
            std::thread::sleep(Duration::from_millis(10));
        }
        let drained = app.shutdown();
        let h1 = slow1.join().unwrap();
        assert!(h1.starts_with("HTTP/1.1 200 OK\r\n"), "{stack}: {h1}");
        assert!(h1.contains("Connection: close\r\n"), "{stack}: {h1}");
        assert!(h1.ends_with("slow done\n"), "{stack}: {h1}");
        let h2 = slow2.join().unwrap();
        let (stdout, log) = text(&h2);
        assert!(h2.status.success(), "{stack}: {log}");
        assert_eq!(stdout, "slow done\nversion=2\n", "{stack}");
        // The idle connection was closed at once, not after the grace.
        let (_, _) = read_to_close(&mut idle);
        assert!(
            drained < Duration::from_secs(3),
            "{stack}: drained in {drained:?}"
        );
        assert_eq!(app.stats().active, 0, "{stack}");
        println!("{stack}: drained in {drained:?}");
    }
}

#[test]
fn a_client_that_stops_reading_is_closed_at_the_write_timeout() {
    let ca = Ca::new();
    let write = Duration::from_millis(500);
    for stack in Stack::ALL {
        let app = App::start(config(&ca, stack).write_timeout(write));
        let mut c = client(&ca, app.addr(), &[b"http/1.1"]);
        c.write_all(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        c.flush().unwrap();
        // 32 MiB do not fit the socket buffers: the server's writes stall.
        let t = Instant::now();
        while app.stats().active > 0 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{stack}: still open after {:?}",
                t.elapsed()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let (got, _) = read_to_close(&mut c);
        assert!(got.len() < 32 << 20, "{stack}: the whole body arrived");
        println!(
            "{stack}: closed after {:?}, {} bytes sent",
            t.elapsed(),
            got.len()
        );
    }
}
