//! A minimal HTTP/1.1 responder: every `GET` or `HEAD` gets the same small page, connections
//! stay open between requests (keep-alive) until the client closes, asks to close, idles too
//! long, or the server shuts down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

/// Longest request head accepted (request line and headers).
const MAX_HEAD: usize = 16 * 1024;
/// Largest request body read (and discarded).
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// The deadlines of one connection's HTTP exchange.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Between requests (no byte of the next one yet): closed quietly when it expires.
    pub(crate) idle: Duration,
    /// For a whole request (head and body) from its first byte.
    pub(crate) request: Duration,
    /// For writing one response.
    pub(crate) write: Duration,
}

/// Why a connection's HTTP exchange ended, when it did not end cleanly.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("{0}")]
    TimedOut(&'static str),
}

/// What one request asked for.
pub(crate) struct Request {
    pub(crate) head_only: bool,
    pub(crate) allowed: bool,
    pub(crate) keep_alive: bool,
    pub(crate) body_len: usize,
}

pub(crate) fn parse_head(head: &[u8]) -> Result<Request, HttpError> {
    let text = std::str::from_utf8(head).map_err(|_| HttpError::Malformed("not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(_target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed("bad request line"));
    };
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(HttpError::Malformed("unsupported HTTP version")),
    };
    let mut keep_alive = http11;
    let mut close = false;
    let mut body_len = 0;
    let mut content_length: Option<&str> = None;
    for line in lines.filter(|l| !l.is_empty()) {
        // RFC 9112: a bare CR or LF, a folded line (obs-fold), whitespace before the colon or
        // a name that is not a token, and control characters in a value are refused, never
        // guessed at: a proxy in front that reads them otherwise would frame the requests
        // differently (request smuggling).
        if line.contains(['\r', '\n']) {
            return Err(HttpError::Malformed("bare CR or LF in the request head"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpError::Malformed("header without ':'"));
        };
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(HttpError::Malformed(
                "bad header name (whitespace before ':', a folded line or not a token)",
            ));
        }
        if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(HttpError::Malformed("control character in a header value"));
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("connection") {
            let tokens = || value.split(',').map(|t| t.trim_matches([' ', '\t']));
            // "close" wins over "keep-alive", wherever it stands.
            if tokens().any(|t| t.eq_ignore_ascii_case("close")) {
                close = true;
            } else if tokens().any(|t| t.eq_ignore_ascii_case("keep-alive")) {
                keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            // RFC 9112 6.3: digits only (Rust's parser would take "+5"), and several
            // Content-Length headers that differ are refused: a proxy in front that took the
            // other one would frame the next request differently (request smuggling).
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HttpError::Malformed("bad Content-Length"));
            }
            if content_length.is_some_and(|seen| seen != value) {
                return Err(HttpError::Malformed("conflicting Content-Length headers"));
            }
            content_length = Some(value);
            body_len = value
                .parse()
                .map_err(|_| HttpError::Malformed("bad Content-Length"))?;
            if body_len > MAX_BODY {
                return Err(HttpError::Malformed("request body too large"));
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::Malformed(
                "chunked request bodies are not supported",
            ));
        }
    }
    Ok(Request {
        head_only: method == "HEAD",
        allowed: method == "GET" || method == "HEAD",
        keep_alive: keep_alive && !close,
        body_len,
    })
}

/// RFC 9110 `tchar`: what a header name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Answers a request that cannot be served with `400 Bad Request` and `Connection: close`
/// (best effort, within the write deadline), so the client learns why it is closed.
async fn reject<S: AsyncWrite + Unpin>(
    stream: &mut S,
    limits: Limits,
    why: HttpError,
) -> HttpError {
    const BAD: &[u8] =
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let write = async {
        stream.write_all(BAD).await?;
        stream.flush().await
    };
    let _ = tokio::time::timeout(limits.write, write).await;
    why
}

/// Serves requests on `stream` until it ends. `page` is the body of every response; each
/// request is counted in `answered` before its response is sent. Returns the number of
/// requests answered.
pub(crate) async fn serve<S>(
    stream: &mut S,
    page: &[u8],
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    counter: &AtomicU64,
) -> Result<u64, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut answered = 0u64;
    loop {
        // The request's deadline runs from its first byte (a pipelined one may be buffered).
        let mut deadline = (!buf.is_empty()).then(|| Instant::now() + limits.request);
        // Read a complete request head (pipelined requests may already be buffered).
        let head_end = loop {
            if let Some(end) = find_head_end(&buf) {
                break end;
            }
            if buf.len() > MAX_HEAD {
                return Err(reject(
                    stream,
                    limits,
                    HttpError::Malformed("request head too large"),
                )
                .await);
            }
            let mut chunk = [0u8; 4096];
            let wait = match deadline {
                Some(at) => at.saturating_duration_since(Instant::now()),
                None => limits.idle,
            };
            let read = tokio::select! {
                r = tokio::time::timeout(wait, stream.read(&mut chunk)) => r,
                _ = shutdown.wait_for(|stop| *stop), if buf.is_empty() => return Ok(answered),
            };
            if deadline.is_none() && matches!(read, Ok(Ok(n)) if n > 0) {
                deadline = Some(Instant::now() + limits.request);
            }
            match read {
                // Idle too long: close quietly between requests.
                Err(_) if buf.is_empty() => return Ok(answered),
                Err(_) => {
                    return Err(HttpError::TimedOut(
                        "the request head did not arrive within the request timeout",
                    ));
                }
                Ok(Ok(0)) if buf.is_empty() => return Ok(answered),
                Ok(Ok(0)) => return Err(HttpError::Malformed("connection closed mid-request")),
                Ok(Ok(n)) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Ok(Err(e)) => return Err(e.into()),
            }
        };
        if head_end > MAX_HEAD {
            return Err(reject(
                stream,
                limits,
                HttpError::Malformed("request head too large"),
            )
            .await);
        }
        let request = match parse_head(buf.get(..head_end).unwrap_or_default()) {
            Ok(request) => request,
            Err(e) => return Err(reject(stream, limits, e).await),
        };
        buf.drain(..head_end + 4);
        // Discard the body.
        let deadline = deadline.unwrap_or_else(|| Instant::now() + limits.request);
        while buf.len() < request.body_len {
            let mut chunk = [0u8; 4096];
            let wait = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(wait, stream.read(&mut chunk)).await {
                Err(_) => {
                    return Err(HttpError::TimedOut(
                        "the request body did not arrive within the request timeout",
                    ));
                }
                Ok(Ok(0)) => return Err(HttpError::Malformed("request body cut short")),
                Ok(Ok(n)) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Ok(Err(e)) => return Err(e.into()),
            }
        }
        buf.drain(..request.body_len);

        let keep_alive = request.keep_alive && !*shutdown.borrow();
        let (status, body): (&str, &[u8]) = if request.allowed {
            ("200 OK", page)
        } else {
            ("405 Method Not Allowed", b"only GET and HEAD are served\n")
        };
        let mut response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: {}\r\nCache-Control: no-store\r\n",
            body.len(),
            if keep_alive { "keep-alive" } else { "close" },
        );
        if !request.allowed {
            response.push_str("Allow: GET, HEAD\r\n");
        }
        response.push_str("\r\n");
        let mut response = response.into_bytes();
        if !request.head_only {
            response.extend_from_slice(body);
        }
        answered += 1;
        counter.fetch_add(1, Ordering::Relaxed);
        let write = async {
            stream.write_all(&response).await?;
            stream.flush().await
        };
        match tokio::time::timeout(limits.write, write).await {
            Ok(done) => done?,
            Err(_) => {
                return Err(HttpError::TimedOut(
                    "the client did not read the response within the write timeout",
                ));
            }
        }
        if !keep_alive {
            // Best effort: send close_notify.
            let _ = stream.shutdown().await;
            return Ok(answered);
        }
    }
}

pub(crate) fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by an attacker's review: header lines a lenient proxy reads differently are
    /// refused, not guessed at; only SP and HTAB are trimmed; "close" wins.
    #[test]
    fn ambiguous_header_lines_are_refused() {
        let head = |lines: &str| format!("POST / HTTP/1.1\r\nHost: x\r\n{lines}");
        for bad in [
            "Content-Length : 27",
            "\nContent-Length: 27",
            "Content-Length: 27\nX: y",
            "Transfer-Encoding : chunked",
            " Transfer-Encoding: chunked",
            "X: a\r\n\tfolded",
            ": empty name",
            "X: nul\0byte",
            "Content-Length: 3\u{a0}",
            "Content-Length: 3\x0b",
        ] {
            assert!(
                matches!(
                    parse_head(head(bad).as_bytes()),
                    Err(HttpError::Malformed(_))
                ),
                "{bad:?} accepted"
            );
        }
        let ok = parse_head(head("Content-Length: \t3 ").as_bytes()).map(|r| r.body_len);
        assert_eq!(ok.ok(), Some(3));
        let closing = parse_head(head("Connection: close, keep-alive").as_bytes());
        assert!(closing.is_ok_and(|r| !r.keep_alive));
    }

    /// Found reading the code while fuzzing `parse_head`: a signed or conflicting
    /// Content-Length frames the next request differently from a proxy that reads it
    /// strictly; both are refused.
    #[test]
    fn content_length_is_digits_and_unambiguous() {
        let head = |cl: &str| format!("POST / HTTP/1.1\r\nHost: x\r\n{cl}\r\n");
        for bad in [
            "Content-Length: +5\r\n",
            "Content-Length: -1\r\n",
            "Content-Length: 5 5\r\n",
            "Content-Length: \r\n",
            "Content-Length: 5\r\nContent-Length: 6\r\n",
        ] {
            assert!(
                matches!(
                    parse_head(head(bad).as_bytes()),
                    Err(HttpError::Malformed(_))
                ),
                "{bad:?} accepted"
            );
        }
        let same = head("Content-Length: 5\r\ncontent-length: 5\r\n");
        assert_eq!(
            parse_head(same.as_bytes()).map(|r| r.body_len).ok(),
            Some(5)
        );
        let plain = head("Content-Length: 007\r\n");
        assert_eq!(
            parse_head(plain.as_bytes()).map(|r| r.body_len).ok(),
            Some(7)
        );
    }

    fn limits(secs: u64) -> Limits {
        Limits {
            idle: Duration::from_secs(secs),
            request: Duration::from_secs(secs),
            write: Duration::from_secs(secs),
        }
    }

    /// A client that trickles its request head in, a byte at a time, is closed when the
    /// request timeout expires, though each byte came well within the idle timeout.
    #[tokio::test(start_paused = true)]
    async fn slow_request_head_meets_its_deadline() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let (_tx, rx) = watch::channel(false);
        let limits = Limits {
            idle: Duration::from_secs(30),
            request: Duration::from_secs(10),
            write: Duration::from_secs(10),
        };
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let r = serve(&mut server, b"x", limits, rx, &AtomicU64::new(0)).await;
            (r, started.elapsed())
        });
        let trickle = tokio::spawn(async move {
            for byte in b"GET / HTTP/1.1\r\nHost: slow.example\r\n".iter().cycle() {
                if client.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        let (r, took) = task.await.unwrap();
        assert!(matches!(r, Err(HttpError::TimedOut(_))), "{r:?}");
        assert!(took <= Duration::from_secs(11), "{took:?}");
        trickle.abort();
    }

    /// A client that never reads its response is closed when the write timeout expires.
    #[tokio::test(start_paused = true)]
    async fn client_that_does_not_read_meets_the_write_deadline() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let (_tx, rx) = watch::channel(false);
        let big = vec![b'x'; 64 * 1024];
        let task = tokio::spawn(async move {
            serve(&mut server, &big, limits(10), rx, &AtomicU64::new(0)).await
        });
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let r = task.await.unwrap();
        assert!(matches!(r, Err(HttpError::TimedOut(_))), "{r:?}");
    }

    #[tokio::test]
    async fn keep_alive_pipelining_and_close() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let (_tx, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            serve(&mut server, b"hello\n", limits(5), rx, &AtomicU64::new(0)).await
        });
        client
            .write_all(
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\nHEAD / HTTP/1.1\r\nHost: x\r\n\r\n\
                  POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
                  GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            )
            .await
            .unwrap();
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        assert_eq!(task.await.unwrap().unwrap(), 4);
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
        assert_eq!(out.matches("hello\n").count(), 2, "{out}");
        assert!(out.contains("405 Method Not Allowed"), "{out}");
        assert!(out.ends_with("Connection: close\r\nCache-Control: no-store\r\n\r\nhello\n"));
    }

    #[tokio::test]
    async fn http10_closes_and_garbage_is_refused() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let (_tx, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            serve(&mut server, b"x", limits(5), rx, &AtomicU64::new(0)).await
        });
        client.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        assert_eq!(task.await.unwrap().unwrap(), 1);
        assert!(out.contains("Connection: close"), "{out}");

        for bad in [
            &b"NONSENSE\r\n\r\n"[..],
            b"GET / HTTP/2\r\n\r\n",
            b"\xff\r\n\r\n",
        ] {
            let (mut client, mut server) = tokio::io::duplex(4096);
            let (_tx, rx) = watch::channel(false);
            client.write_all(bad).await.unwrap();
            let r = serve(&mut server, b"x", limits(5), rx, &AtomicU64::new(0)).await;
            assert!(matches!(r, Err(HttpError::Malformed(_))), "{r:?}");
        }
    }

    #[tokio::test]
    async fn shutdown_ends_an_idle_connection() {
        let (_client, mut server) = tokio::io::duplex(4096);
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            serve(&mut server, b"x", limits(60), rx, &AtomicU64::new(0)).await
        });
        tx.send(true).unwrap();
        assert_eq!(task.await.unwrap().unwrap(), 0);
    }
}
