//! request: one HTTPS GET with a device key as the TLS client certificate's key, as
//! `curl --cert` makes it, on either TLS stack; the body goes to stdout or `--out`.

use std::path::{Path, PathBuf};

use hardkey_tls::client::{ClientIdentity, Connector};
use hardkey_tls::{CertChain, Stack, TrustAnchors};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::{Ctx, OutputFile};
use crate::args::RequestArgs;
use crate::cmd::serve::tls_error;
use crate::error::{CliResult, failed, usage};
use crate::target::{OpenOptions, Store, Target};

/// Where distributions keep the system's CA bundle, for a request without `--cacert`.
const SYSTEM_CA_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The longest response head read.
const MAX_HEAD: usize = 64 * 1024;
/// The largest body read (it is held in memory, then written at once).
const MAX_BODY: usize = 256 * 1024 * 1024;

/// An `https://` URL, split.
#[derive(Debug, PartialEq, Eq)]
struct Url {
    /// The host as the server's certificate must name it (no brackets around IPv6).
    host: String,
    port: u16,
    /// The request target: path and query.
    target: String,
    /// `host[:port]` as the Host header says it.
    authority: String,
}

impl Url {
    fn parse(text: &str) -> CliResult<Self> {
        let bad = |why: &str| {
            usage(format!(
                "bad URL '{}': {why}; expected https://HOST[:PORT][/PATH]",
                crate::output::printable(text)
            ))
        };
        let rest = match text.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => rest,
            Some((scheme, _)) => {
                return Err(bad(&format!(
                    "the scheme is '{}', and hardkey request speaks https only",
                    crate::output::printable(scheme)
                )));
            }
            None => return Err(bad("no scheme")),
        };
        let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
        let (authority, target) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        let target = if target.starts_with('?') {
            format!("/{target}")
        } else {
            target
        };
        if authority.contains('@') {
            return Err(bad("user names and passwords in the URL are not supported"));
        }
        if target.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("spaces and control characters must be percent-encoded"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => return Err(bad("unexpected text after ']'")),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'))
        {
            return Err(bad("the host has characters a host name cannot have"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?,
            None => 443,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            target,
            authority: authority.to_owned(),
        })
    }
}

/// What the server answered.
struct Response {
    status: u16,
    reason: String,
    body: Vec<u8>,
    protocol: &'static str,
    /// The body ended with the connection, without a TLS close_notify: it may be cut short.
    unclean_end: bool,
}

/// `hardkey request`.
pub(crate) fn request(a: &RequestArgs, ctx: &Ctx) -> CliResult {
    let url = Url::parse(&a.url)?;
    let stack: Stack = a.stack.parse().map_err(tls_error)?;
    let target = a
        .key
        .as_deref()
        .map(|key| Target::parse(key, &ctx.config))
        .transpose()?;
    let uri = target.as_ref().map(Target::key_uri).transpose()?;
    let cacert = match &a.cacert {
        Some(path) => path.clone(),
        None => system_ca_bundle()?,
    };
    // Checked before anything is read or any device touched.
    let inputs: Vec<&Path> = [
        a.cert.as_deref(),
        Some(cacert.as_path()),
        target.as_ref().and_then(Target::key_file),
    ]
    .into_iter()
    .flatten()
    .collect();
    let out = OutputFile::prepare(&a.out, "the response body", &inputs)?;
    let roots = TrustAnchors::from_pem_file(&cacert).map_err(tls_error)?;
    let chain = a
        .cert
        .as_ref()
        .map(|path| CertChain::from_pem_file(path).map_err(tls_error))
        .transpose()?;
    // The store stays open until the request is done (dropping it closes the device).
    let (_store, identity) = match (target, uri, chain) {
        (Some(target), Some(uri), Some(chain)) => {
            let store = Store::open(&target, &ctx.config, &a.secrets, OpenOptions::default())?;
            let key = store.key(&uri)?;
            let identity = ClientIdentity::new(key, chain).map_err(tls_error)?;
            (Some(store), Some(identity))
        }
        _ => (None, None),
    };
    let connector = Connector::new(stack, identity.as_ref(), &roots).map_err(tls_error)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| failed(format!("cannot start the I/O runtime: {e}")))?;
    let fetched = runtime.block_on(async {
        tokio::time::timeout(a.max_time, fetch(&connector, &url, identity.is_some())).await
    });
    let response = match fetched {
        Ok(result) => result?,
        Err(_) => {
            return Err(failed(format!(
                "https://{}: no complete response within {} (--max-time)",
                url.authority,
                humantime::format_duration(a.max_time)
            )));
        }
    };
    if response.status >= 400 {
        return Err(failed(format!(
            "https://{}{}: the server answered {} {}",
            url.authority,
            url.target,
            response.status,
            crate::output::printable(&response.reason)
        )));
    }
    if response.unclean_end {
        crate::output::note(
            "hardkey request: warning: the server closed the connection without a TLS \
             close_notify; the body may be cut short",
        );
    }
    out.commit(&response.body)?;
    if ctx.out.json {
        ctx.out.emit(
            json!({
                "status": response.status,
                "protocol": response.protocol,
                "stack": stack.name(),
                "client_certificate": identity.is_some(),
                "bytes": response.body.len(),
                "out": a.out,
            }),
            String::new,
        );
    }
    Ok(())
}

/// The first system CA bundle that exists.
fn system_ca_bundle() -> CliResult<PathBuf> {
    SYSTEM_CA_BUNDLES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            usage(format!(
                "no --cacert given and no system CA bundle found (looked for {}): give the \
                 CA file to verify the server with --cacert FILE",
                SYSTEM_CA_BUNDLES.join(", ")
            ))
        })
}

/// Connects, shakes hands, sends the GET and reads the response.
async fn fetch(connector: &Connector, url: &Url, has_identity: bool) -> CliResult<Response> {
    let place = format!("https://{}", url.authority);
    let tcp = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| failed(format!("{place}: cannot connect: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let mut tls = connector.connect(&url.host, tcp).await.map_err(|e| {
        failed(format!(
            "{place}: TLS handshake failed ({}): {e}{}",
            connector.stack(),
            alert_hint(&e, has_identity)
        ))
    })?;
    let protocol = tls.protocol_version();
    let head = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: hardkey/{}\r\nAccept: */*\r\nConnection: \
         close\r\n\r\n",
        url.target,
        url.authority,
        env!("CARGO_PKG_VERSION")
    );
    let sent = async {
        tls.write_all(head.as_bytes()).await?;
        tls.flush().await
    };
    sent.await.map_err(|e| {
        failed(format!(
            "{place}: cannot send the request: {e}{}",
            alert_hint(&e, has_identity)
        ))
    })?;
    let mut reader = Reader {
        stream: tls,
        buf: Vec::new(),
        place: place.clone(),
        has_identity,
    };
    let mut response = reader.read_response().await?;
    response.protocol = protocol;
    Ok(response)
}

/// What to do about a TLS alert the server sent about the client certificate (in TLS 1.3
/// it arrives after the client's handshake is done, with the first read).
fn alert_hint(error: &dyn std::fmt::Display, has_identity: bool) -> &'static str {
    let text = error.to_string().to_ascii_lowercase();
    let about_cert = text.contains("certificate_required")
        || text.contains("certificaterequired")
        || text.contains("bad_certificate")
        || text.contains("badcertificate")
        || text.contains("unknown_ca")
        || text.contains("unknownca");
    match (about_cert, has_identity) {
        (false, _) => "",
        (true, false) => " (the server requires a client certificate: give --key and --cert)",
        (true, true) => {
            " (the server refused the client certificate: is it issued by a CA the server \
             trusts, valid now, and for client authentication?)"
        }
    }
}

/// The response as it arrives.
struct Reader<S> {
    stream: S,
    buf: Vec<u8>,
    place: String,
    has_identity: bool,
}

impl<S: AsyncRead + Unpin> Reader<S> {
    /// Reads more into the buffer; `Ok(0)` at a clean end. An end without close_notify is
    /// `Err` of kind `UnexpectedEof`.
    async fn more(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf
            .extend_from_slice(chunk.get(..n).unwrap_or_default());
        Ok(n)
    }

    fn broken(&self, what: &str, e: &dyn std::fmt::Display) -> crate::error::CliError {
        failed(format!(
            "{}: {what}: {e}{}",
            self.place,
            alert_hint(e, self.has_identity)
        ))
    }

    fn cut(&self, what: &str) -> crate::error::CliError {
        failed(format!(
            "{}: the server closed the connection {what}",
            self.place
        ))
    }

    async fn read_response(&mut self) -> CliResult<Response> {
        let (status, reason, length, chunked, head_len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let mut length = None;
                    let mut chunked = false;
                    for h in parsed.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            let value = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .ok_or_else(|| {
                                    self.broken("bad response", &"unreadable Content-Length")
                                })?;
                            length = Some(value);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = String::from_utf8_lossy(h.value)
                                .to_ascii_lowercase()
                                .contains("chunked");
                        }
                    }
                    break (
                        parsed.code.unwrap_or(0),
                        parsed.reason.unwrap_or("").to_owned(),
                        length,
                        chunked,
                        len,
                    );
                }
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() > MAX_HEAD {
                        return Err(
                            self.broken("bad response", &"the response head exceeds 64 KiB")
                        );
                    }
                    match self.more().await {
                        Ok(0) => return Err(self.cut("before its response head")),
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                            return Err(self.cut("before its response head"));
                        }
                        Err(e) => return Err(self.broken("cannot read the response", &e)),
                    }
                }
                Err(e) => return Err(self.broken("not an HTTP/1.x response", &e)),
            }
        };
        self.buf.drain(..head_len);
        let mut unclean_end = false;
        let body = if chunked {
            self.read_chunked().await?
        } else if let Some(length) = length {
            if length > MAX_BODY {
                return Err(self.broken("body too large", &format!("{length} bytes")));
            }
            while self.buf.len() < length {
                match self.more().await {
                    Ok(0) => return Err(self.cut("before the whole body arrived")),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        return Err(self.cut("before the whole body arrived"));
                    }
                    Err(e) => return Err(self.broken("cannot read the body", &e)),
                }
            }
            self.buf.truncate(length);
            std::mem::take(&mut self.buf)
        } else {
            // Delimited by the end of the connection.
            loop {
                if self.buf.len() > MAX_BODY {
                    return Err(self.broken("body too large", &"over 256 MiB"));
                }
                match self.more().await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        unclean_end = true;
                        break;
                    }
                    Err(e) => return Err(self.broken("cannot read the body", &e)),
                }
            }
            std::mem::take(&mut self.buf)
        };
        Ok(Response {
            status,
            reason,
            body,
            protocol: "?",
            unclean_end,
        })
    }

    /// A `Transfer-Encoding: chunked` body (trailers ignored).
    async fn read_chunked(&mut self) -> CliResult<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            match httparse::parse_chunk_size(&self.buf) {
                Ok(httparse::Status::Complete((start, size))) => {
                    let size = usize::try_from(size)
                        .ok()
                        .filter(|s| body.len().saturating_add(*s) <= MAX_BODY)
                        .ok_or_else(|| self.broken("body too large", &"over 256 MiB"))?;
                    if size == 0 {
                        return Ok(body);
                    }
                    // The chunk and its CRLF.
                    while self.buf.len() < start + size + 2 {
                        self.more_of_body().await?;
                    }
                    body.extend_from_slice(self.buf.get(start..start + size).unwrap_or_default());
                    self.buf.drain(..start + size + 2);
                }
                Ok(httparse::Status::Partial) => self.more_of_body().await?,
                Err(e) => return Err(self.broken("bad chunked body", &e)),
            }
        }
    }

    async fn more_of_body(&mut self) -> CliResult<()> {
        match self.more().await {
            Ok(0) => Err(self.cut("before the whole body arrived")),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(self.cut("before the whole body arrived"))
            }
            Err(e) => Err(self.broken("cannot read the body", &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_https_urls() {
        let u = Url::parse("https://localhost:8443/a/b?c=d#frag").unwrap();
        assert_eq!(u.host, "localhost");
        assert_eq!(u.port, 8443);
        assert_eq!(u.target, "/a/b?c=d");
        assert_eq!(u.authority, "localhost:8443");
        let u = Url::parse("https://[::1]:9/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        let u = Url::parse("HTTPS://example.com?x").unwrap();
        assert_eq!((u.port, u.target.as_str()), (443, "/?x"));
        for bad in [
            "http://example.com/",
            "example.com",
            "https://user:pw@example.com/",
            "https://example.com:0/",
            "https://example.com:99999/",
            "https://:443/",
            "https://exa mple.com/",
            "https://example.com/a b",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_length_chunked_and_close_delimited_bodies() {
        let run = |raw: &'static [u8]| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut reader = Reader {
                    stream: raw,
                    buf: Vec::new(),
                    place: "test".into(),
                    has_identity: false,
                };
                reader.read_response().await
            })
        };
        let r = run(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        let r = run(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;x=y\r\n!\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!(r.body, b"hello!");
        let r = run(b"HTTP/1.0 404 Not Found\r\n\r\ngone").unwrap();
        assert_eq!(
            (r.status, r.reason.as_str(), r.body.as_slice()),
            (404, "Not Found", &b"gone"[..])
        );
        assert!(run(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
        assert!(run(b"HTTP/1.1 200 OK\r\nContent-Le").is_err());
        assert!(run(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }
}
