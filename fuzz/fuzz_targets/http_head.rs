//! The test server's HTTP serving (`hardkey-tls` feature `fuzzing`): the fuzz input is what a
//! client sent on one connection, served by hyper with the server's limits and the test page,
//! over HTTP/2 when it starts with the HTTP/2 connection preface (as if ALPN chose `h2`), else
//! HTTP/1.1. Whatever the input, the connection ends (no hang) without a panic; an HTTP/1.x
//! answer is a status line, and no more requests are answered than request lines were sent
//! (a request smuggled inside another's head or body would be one more); an HTTP/2 answer
//! starts with the server's SETTINGS frame.
#![no_main]

use hardkey_tls::fuzzing::serve_bytes;
use libfuzzer_sys::fuzz_target;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn count(haystack: &[u8], needle: &[u8]) -> u64 {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count() as u64
}

fuzz_target!(|data: &[u8]| {
    let http2 = data.starts_with(PREFACE);
    let served = serve_bytes(data, http2);
    let out = &served.output;
    if http2 {
        // A frame header: 3 bytes of length, the type (4: SETTINGS), flags, stream 0.
        if !out.is_empty() {
            assert!(
                out.len() >= 9 && out[3] == 4,
                "{:?}",
                &out[..out.len().min(9)]
            );
        }
    } else {
        // HTTP/1.1, or HTTP/1.0 to an HTTP/1.0 request.
        assert!(
            out.is_empty() || out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "),
            "{:?}",
            String::from_utf8_lossy(out)
        );
        assert!(served.requests <= count(data, b"HTTP/1."), "{served:?}");
        assert!(count(out, b" 200 OK\r\n") <= served.requests, "{served:?}");
    }
});
