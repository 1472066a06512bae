//! The server's HTTP serving, driven over an in-memory pipe, for the fuzz targets in `fuzz/`
//! (feature `fuzzing`). Not a stable API: nothing outside `fuzz/` should use it.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http::{self, Limits, TestPage, TlsInfo};
use crate::server::Stack;

/// The largest request body the test page reads (a longer one gets 413).
pub const MAX_BODY: usize = http::MAX_BODY;

/// What [`serve_bytes`] saw.
#[derive(Debug)]
#[non_exhaustive]
pub struct Served {
    /// What the server wrote back.
    pub output: Vec<u8>,
    /// Requests that reached the test page.
    pub requests: u64,
    /// Why the connection ended, if not cleanly.
    pub error: Option<String>,
}

/// Serves `input` as the plaintext a client sent on one connection (HTTP/2 when `http2`, as
/// if ALPN chose `h2`; else HTTP/1.1), with the server's default limits, the test page as the
/// service and the client half-closing after `input`; returns what the server wrote. Runs on
/// a paused clock, so deadlines expire at once when nothing else can happen. Panics only if
/// the connection never ends (a hang).
pub fn serve_bytes(input: &[u8], http2: bool) -> Served {
    thread_local! {
        static RUNTIME: Option<tokio::runtime::Runtime> = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .ok();
    }
    RUNTIME.with(|runtime| {
        let Some(runtime) = runtime else {
            return Served {
                output: Vec::new(),
                requests: 0,
                error: Some("no tokio runtime".to_owned()),
            };
        };
        runtime.block_on(drive(input, http2))
    })
}

async fn drive(input: &[u8], http2: bool) -> Served {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let limits = Limits {
        idle: Duration::from_secs(30),
        request: Duration::from_secs(10),
        write: Duration::from_secs(10),
        max_header_size: 16 * 1024,
        max_concurrent_streams: 100,
    };
    let info = TlsInfo::new(
        Stack::Rustls,
        "TLSv1.3",
        "TLS_AES_128_GCM_SHA256".to_owned(),
        Some("localhost".to_owned()),
        Some(if http2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }),
        std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
        None,
        Arc::from("fuzz\n"),
    );
    let requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = Arc::clone(&requests);
    let (_draining, draining) = tokio::sync::watch::channel(false);
    let page = TestPage::new(limits.request);
    let serve = http::serve_connection(
        server,
        page,
        info,
        limits,
        draining,
        Arc::new(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }),
    );
    let talk = async {
        let mut output = Vec::new();
        let (mut read, mut write) = tokio::io::split(&mut client);
        let send = async {
            let _ = write.write_all(input).await;
            let _ = write.shutdown().await;
        };
        let receive = read.read_to_end(&mut output);
        let ((), _) = tokio::join!(send, receive);
        output
    };
    // Every deadline of the connection is at most 30 s of (paused) time away.
    let all = tokio::time::timeout(Duration::from_secs(3600), async {
        tokio::join!(serve, talk)
    });
    #[allow(clippy::panic, reason = "a hang is what the fuzz target looks for")]
    let Ok((served, output)) = all.await else {
        panic!("the connection did not end within an hour of paused time");
    };
    Served {
        output,
        requests: requests.load(std::sync::atomic::Ordering::Relaxed),
        error: served.err().map(|e| e.to_string()),
    }
}
