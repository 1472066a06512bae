//! `hardkey serve` in tests: started on a key and polled until it listens, checked by curl,
//! `openssl s_client` and a rustls client (each trusting only the key's self-signed
//! certificate, checking the host name and the server's handshake signature), stopped with
//! Ctrl-C (SIGINT) and its counters read from its JSON output.
#![allow(
    dead_code,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "shared by several test binaries; test helpers fail by panicking"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hardkey_tls::testing::recording_client_config;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ProtocolVersion, SignatureScheme, SupportedProtocolVersion};

use super::Hardkey;

/// How long a client waits on the server before the test fails (a TPM signs in well under a
/// second; this only turns a hang into a failure).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The key types served in the tests, and what each handshake must be signed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyType {
    P256,
    Rsa2048,
}

/// A TLS 1.2 signature algorithm to ask for: its `openssl -sigalgs` name, the "Signature
/// type" `s_client -brief` then reports, and its rustls scheme.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sigalg {
    pub(crate) openssl: &'static str,
    pub(crate) reported: &'static str,
    pub(crate) rustls: SignatureScheme,
}

impl KeyType {
    /// The `hardkey keygen --alg` name.
    pub(crate) fn alg(self) -> &'static str {
        match self {
            Self::P256 => "p256",
            Self::Rsa2048 => "rsa2048",
        }
    }

    /// TLS 1.2 (ECDHE): every signature algorithm the key must serve, one handshake each.
    /// The first is the one the rustls client asks for.
    pub(crate) fn tls12_sigalgs(self) -> &'static [Sigalg] {
        match self {
            Self::P256 => &[Sigalg {
                openssl: "ECDSA+SHA256",
                reported: "ECDSA",
                rustls: SignatureScheme::ECDSA_NISTP256_SHA256,
            }],
            Self::Rsa2048 => &[
                Sigalg {
                    openssl: "RSA+SHA256",
                    reported: "RSA",
                    rustls: SignatureScheme::RSA_PKCS1_SHA256,
                },
                Sigalg {
                    openssl: "rsa_pss_rsae_sha256",
                    reported: "RSA-PSS",
                    rustls: SignatureScheme::RSA_PSS_SHA256,
                },
            ],
        }
    }

    /// TLS 1.3 with every scheme offered: what `s_client` reports, and the schemes the
    /// server may choose (TLS 1.3 has no PKCS#1 handshake signatures: RSA means RSA-PSS; a
    /// P-256 key signs with SHA-256 only).
    pub(crate) fn tls13(self) -> (&'static str, &'static [SignatureScheme]) {
        match self {
            Self::P256 => ("ECDSA", &[SignatureScheme::ECDSA_NISTP256_SHA256]),
            Self::Rsa2048 => (
                "RSA-PSS",
                &[
                    SignatureScheme::RSA_PSS_SHA256,
                    SignatureScheme::RSA_PSS_SHA384,
                    SignatureScheme::RSA_PSS_SHA512,
                ],
            ),
        }
    }
}

/// A free TCP port on 127.0.0.1.
pub(crate) fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address")
}

/// `hardkey selfsign` for `key` (subject CN=localhost, SANs `localhost` and 127.0.0.1, the
/// names the clients check) into `out`, with `extra` options; returns `out`.
pub(crate) fn selfsign_localhost(hk: &Hardkey, key: &str, out: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "selfsign",
        key,
        "--subject",
        "CN=localhost",
        "--san",
        "dns:localhost,ip:127.0.0.1",
        "--days",
        "2",
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    hk.ok(&args);
    out.to_owned()
}

/// A running `hardkey --json serve`; killed on drop if a check failed before [`Serve::stop`]
/// (so a failed trial does not leave it holding the device).
pub(crate) struct Serve {
    child: Option<Child>,
    addr: SocketAddr,
    stack: String,
    log: Arc<Log>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// What `hardkey serve` wrote on stderr so far, read as it comes.
#[derive(Default)]
struct Log {
    text: Mutex<String>,
    grown: Condvar,
}

impl Serve {
    /// Starts `hardkey --json serve` with the scratch directory's environment (PIN, TCTI) and
    /// waits until it accepts connections.
    pub(crate) fn start(hk: &Hardkey, key: &str, cert: &str, stack: &str) -> Self {
        Self::start_with(hk, &["--key", key, "--cert", cert], stack)
    }

    /// [`Serve::start`] with `what` naming what to serve (`--identities FILE`,
    /// `--cert-dir DIR`...).
    pub(crate) fn start_with(hk: &Hardkey, what: &[&str], stack: &str) -> Self {
        let addr = free_addr();
        let addr_text = addr.to_string();
        let mut args = vec!["--json", "serve"];
        args.extend_from_slice(what);
        args.extend_from_slice(&["--listen", &addr_text, "--stack", stack]);
        let mut child = hk
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hardkey serve");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let out = child.wait_with_output().expect("output");
                panic!(
                    "hardkey serve exited with {status}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "hardkey serve did not listen on {addr} in 30 s: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = Arc::new(Log::default());
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(stderr);
            let mut line = String::new();
            while std::io::BufRead::read_line(&mut lines, &mut line).is_ok_and(|n| n > 0) {
                sink.text.lock().unwrap().push_str(&line);
                sink.grown.notify_all();
                line.clear();
            }
        });
        Self {
            child: Some(child),
            addr,
            stack: stack.to_owned(),
            log,
            reader: Some(reader),
        }
    }

    /// Its stderr so far.
    pub(crate) fn log(&self) -> String {
        self.log.text.lock().unwrap().clone()
    }

    /// Waits until the `n`th line containing every one of `needles` appears on its stderr
    /// (counted from the start); returns that line. Fails the test after 30 s.
    pub(crate) fn wait_for_log(&self, needles: &[&str], n: usize) -> String {
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        let mut text = self.log.text.lock().unwrap();
        loop {
            let found: Vec<&str> = text
                .lines()
                .filter(|l| needles.iter().all(|needle| l.contains(needle)))
                .collect();
            if let Some(line) = found.get(n.saturating_sub(1)) {
                return (*line).to_owned();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "hardkey serve did not log {needles:?} (#{n}) in {CLIENT_TIMEOUT:?}:\n{text}"
            );
            text = self.log.grown.wait_timeout(text, left).unwrap().0;
        }
    }

    /// SIGHUP: the server reloads its certificates and keys.
    pub(crate) fn hangup(&self) {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP {pid}: {status}");
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("serve is running").id()
    }

    pub(crate) fn stack(&self) -> &str {
        &self.stack
    }

    /// Ctrl-C (SIGINT through kill(1)): the server must stop with exit 0 and print its
    /// counters.
    pub(crate) fn stop(self) -> Stopped {
        self.signal("INT")
    }

    /// SIGTERM (a service manager stopping it): the same clean stop as Ctrl-C.
    pub(crate) fn terminate(self) -> Stopped {
        self.signal("TERM")
    }

    fn signal(mut self, signal: &str) -> Stopped {
        let child = self.child.take().expect("serve is running");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -INT {}: {status}", child.id());
        let out = child.wait_with_output().expect("wait for hardkey serve");
        if let Some(reader) = self.reader.take() {
            reader.join().expect("stderr reader");
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let log = self.log();
        assert!(
            out.status.success(),
            "hardkey serve ({}) exited with {} on SIG{signal}:\n{log}\n{stdout}",
            self.stack,
            out.status
        );
        let stats = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("serve's counters are not JSON ({e}):\n{stdout}"));
        Stopped { stats, log }
    }
}

/// What a stopped `hardkey serve` printed.
#[derive(Debug)]
pub(crate) struct Stopped {
    /// Its counters: `connections`, `handshakes`, `handshake_failures`, `closed_silent`,
    /// `requests`.
    pub(crate) stats: serde_json::Value,
    /// Its stderr: the "serving https://ADDR with STACK on key NAME (STORE)" line, then one
    /// warning per failed handshake.
    pub(crate) log: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The page `hardkey serve` answers with names the stack and the negotiated protocol.
pub(crate) fn check_page(page: &str, stack: &str, protocol: &str, context: &str) {
    assert!(page.contains("hardkey test server"), "{context}: {page}");
    assert!(
        page.lines().any(|l| l == format!("stack: {stack}")),
        "{context}: {page}"
    );
    assert!(
        page.lines().any(|l| l == format!("protocol: {protocol}")),
        "{context}: {page}"
    );
}

/// Whether `text` has the line `line` (exactly: "Signature type: RSA" is not "RSA-PSS").
fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l.trim_end() == line)
}

/// curl, TLS 1.3 only, verifying the certificate and the host name `localhost` against
/// `cert` (in `dir`); checks that curl reports TLS 1.3 and a verified certificate; returns
/// the page.
pub(crate) fn curl_tls13(dir: &Path, addr: SocketAddr, cert: &str) -> String {
    let url = format!("https://localhost:{}/", addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", addr.port());
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--verbose", "--fail"])
        .args(["--tlsv1.3", "--tls-max", "1.3", "--cacert", cert])
        .args(["--resolve", &resolve, "--max-time", "30", &url])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "curl failed ({}):\n{log}", out.status);
    assert!(
        log.contains("SSL connection using TLSv1.3 / "),
        "curl did not use TLS 1.3:\n{log}"
    );
    assert!(log.contains("SSL certificate verify ok."), "{log}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What `openssl s_client -brief` reported (stderr) and the response it read (stdout).
pub(crate) struct SClient {
    pub(crate) summary: String,
    pub(crate) response: String,
}

/// `openssl s_client` with `version` (`-tls1_2`, `-tls1_3`), offering only `sigalgs` if
/// given, verifying the chain against `cert` (in `dir`) and the host name `localhost`
/// (`-verify_return_error`: a bad certificate fails the handshake); sends one GET and reads
/// until the server closes. Checks the protocol and that verification succeeded.
pub(crate) fn s_client(
    dir: &Path,
    addr: SocketAddr,
    cert: &str,
    version: &str,
    sigalgs: Option<&str>,
) -> SClient {
    let connect = addr.to_string();
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &connect, version])
        .args(["-servername", "localhost", "-verify_hostname", "localhost"])
        .args([
            "-CAfile",
            cert,
            "-verify_return_error",
            "-brief",
            "-ign_eof",
        ]);
    if let Some(sigalgs) = sigalgs {
        cmd.args(["-sigalgs", sigalgs]);
    }
    let mut child = cmd
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("send the request");
    let out = child.wait_with_output().expect("openssl s_client output");
    let summary = String::from_utf8_lossy(&out.stderr).into_owned();
    let response = String::from_utf8_lossy(&out.stdout).into_owned();
    let context = format!("s_client {version} -sigalgs {sigalgs:?}");
    assert!(
        out.status.success(),
        "{context} failed ({}):\n{summary}",
        out.status
    );
    let protocol = match version {
        "-tls1_2" => "TLSv1.2",
        "-tls1_3" => "TLSv1.3",
        other => panic!("no protocol name for {other}"),
    };
    assert!(
        has_line(&summary, &format!("Protocol version: {protocol}")),
        "{context}:\n{summary}"
    );
    assert!(
        has_line(&summary, "Verification: OK"),
        "{context}:\n{summary}"
    );
    assert!(
        response.starts_with("HTTP/1.1 200 OK\r\n"),
        "{context}:\n{response}"
    );
    SClient { summary, response }
}

/// What the rustls client saw.
#[derive(Debug)]
pub(crate) struct RustlsFetch {
    pub(crate) response: String,
    pub(crate) version: Option<ProtocolVersion>,
    pub(crate) verified: Option<SignatureScheme>,
}

/// One rustls connection over a blocking `TcpStream` (`rustls::Stream`): only `version`,
/// the certificate in `cert_file` as the only trust anchor, `server_name` checked against
/// it, only `offer` offered if given (else every scheme rustls verifies); sends
/// `GET / HTTP/1.1` and reads the response (head and `Content-Length` body).
pub(crate) fn rustls_get(
    addr: SocketAddr,
    cert_file: &Path,
    server_name: &str,
    version: &'static SupportedProtocolVersion,
    offer: Option<&[SignatureScheme]>,
) -> RustlsFetch {
    let cert = CertificateDer::from_pem_file(cert_file)
        .unwrap_or_else(|e| panic!("{}: {e}", cert_file.display()));
    let (config, verifier) = recording_client_config(cert, version, offer)
        .unwrap_or_else(|e| panic!("rustls client for {}: {e}", cert_file.display()));
    let name = ServerName::try_from(server_name.to_owned()).expect("server name");
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), name).expect("rustls client connection");
    let mut tcp = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    tcp.set_read_timeout(Some(CLIENT_TIMEOUT)).expect("timeout");
    let context = format!("rustls {version:?} to {server_name}");
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    tls.write_all(
        format!("GET / HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap_or_else(|e| panic!("{context}: handshake or request: {e}"));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte)
            .unwrap_or_else(|e| panic!("{context}: response head: {e}"));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{context}: no Content-Length in {head}"));
    let mut body = vec![0u8; len];
    tls.read_exact(&mut body)
        .unwrap_or_else(|e| panic!("{context}: response body: {e}"));
    let verified = verifier.verified();
    RustlsFetch {
        response: format!("{head}{}", String::from_utf8_lossy(&body)),
        version: conn.protocol_version(),
        verified,
    }
}

/// Serves `key` with its self-signed certificate `cert` (in `hk`'s directory) on each stack
/// (boring, rustls) and checks every handshake the key must serve, each client verifying the
/// certificate and the handshake signature:
/// - curl, TLS 1.3;
/// - `openssl s_client -tls1_3`, every scheme offered: the expected signature type (RSA-PSS
///   for an RSA key);
/// - `openssl s_client -tls1_2` once per signature algorithm of the key type (ECDSA; RSA
///   PKCS#1 and RSA-PSS), with ECDHE;
/// - rustls, TLS 1.3 to `localhost` and TLS 1.2 to `127.0.0.1` (the IP SAN) asking for the
///   key type's first TLS 1.2 algorithm;
///
/// then stops the server with SIGINT (exit 0) and checks its counters (one handshake and one
/// request per client, no failure; the readiness probe counted as closed silently) and that it said it served the
/// key on `on` (e.g. "on key 'web' (token 'hk-test')").
pub(crate) fn check_serve(hk: &Hardkey, key: &str, cert: &str, key_type: KeyType, on: &str) {
    let dir = hk.dir.path();
    let alg = key_type.alg();
    let (tls13_reported, tls13_schemes) = key_type.tls13();
    for stack in ["boring", "rustls"] {
        let server = Serve::start(hk, key, cert, stack);
        let addr = server.addr();
        let context = format!("{stack}/{alg} ({key})");
        let mut clients = 0u64;

        let page = curl_tls13(dir, addr, cert);
        check_page(&page, stack, "TLSv1.3", &format!("{context} curl"));
        assert!(page.contains(&format!("({alg})")), "{context}: {page}");
        clients += 1;

        let tls13 = s_client(dir, addr, cert, "-tls1_3", None);
        let summary = &tls13.summary;
        assert!(
            has_line(summary, &format!("Signature type: {tls13_reported}")),
            "{context} s_client -tls1_3:\n{summary}"
        );
        check_page(&tls13.response, stack, "TLSv1.3", &context);
        clients += 1;

        for sigalg in key_type.tls12_sigalgs() {
            let tls12 = s_client(dir, addr, cert, "-tls1_2", Some(sigalg.openssl));
            let summary = &tls12.summary;
            let context = format!("{context} s_client -tls1_2 -sigalgs {}", sigalg.openssl);
            assert!(
                has_line(summary, &format!("Signature type: {}", sigalg.reported)),
                "{context}:\n{summary}"
            );
            assert!(
                has_line(summary, "Hash used: SHA256"),
                "{context}:\n{summary}"
            );
            assert!(
                summary
                    .lines()
                    .any(|l| l.starts_with("Ciphersuite: ECDHE-")),
                "{context}: not ECDHE:\n{summary}"
            );
            check_page(&tls12.response, stack, "TLSv1.2", &context);
            clients += 1;
        }

        let cert_path = dir.join(cert);
        let fetched = rustls_get(addr, &cert_path, "localhost", &rustls::version::TLS13, None);
        assert_eq!(
            fetched.version,
            Some(ProtocolVersion::TLSv1_3),
            "{context}: {fetched:?}"
        );
        assert!(
            fetched
                .verified
                .is_some_and(|scheme| tls13_schemes.contains(&scheme)),
            "{context}: rustls verified {:?}, expected one of {tls13_schemes:?}",
            fetched.verified
        );
        assert!(
            fetched.response.starts_with("HTTP/1.1 200 OK\r\n"),
            "{context}: {}",
            fetched.response
        );
        check_page(&fetched.response, stack, "TLSv1.3", &context);
        clients += 1;

        let tls12 = key_type.tls12_sigalgs()[0];
        let fetched = rustls_get(
            addr,
            &cert_path,
            "127.0.0.1",
            &rustls::version::TLS12,
            Some(&[tls12.rustls]),
        );
        assert_eq!(
            fetched.version,
            Some(ProtocolVersion::TLSv1_2),
            "{context}: {fetched:?}"
        );
        assert_eq!(fetched.verified, Some(tls12.rustls), "{context}");
        check_page(&fetched.response, stack, "TLSv1.2", &context);
        clients += 1;

        let Stopped { stats, log } = server.stop();
        let serving = format!("serving https://{addr} with {stack} {on}");
        assert!(
            log.lines().any(|l| l.starts_with(&serving)),
            "{context}: expected '{serving}', got:\n{log}"
        );
        assert_eq!(stats["handshakes"], clients, "{context}: {stats}");
        assert_eq!(stats["requests"], clients, "{context}: {stats}");
        // The readiness probe connects and closes without sending anything: not a failed
        // handshake, and not warned about.
        assert_eq!(stats["handshake_failures"], 0, "{context}: {stats}");
        assert_eq!(stats["closed_silent"], 1, "{context}: {stats}");
        assert_eq!(stats["connections"], clients + 1, "{context}: {stats}");
        assert!(!log.contains("handshake failed"), "{context}: {log}");
    }
}

/// The serial of a certificate file, as `openssl x509 -serial` prints it (hex).
pub(crate) fn serial_of(dir: &Path, cert: &str) -> String {
    let text = super::tool("openssl", &["x509", "-in", cert, "-noout", "-serial"], dir);
    text.trim()
        .strip_prefix("serial=")
        .unwrap_or_else(|| panic!("openssl x509 -serial: {text}"))
        .to_owned()
}

/// A rustls client trusting every certificate in `trust` (PEM), TLS 1.3 and 1.2, no
/// resumption: every connection is a full handshake.
pub(crate) fn trusting(trust: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(trust).expect("trust file") {
        roots
            .add(cert.expect("trusted certificate"))
            .expect("trust anchor");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// One connection of `config` to `localhost` at `addr`: the leaf certificate the server
/// sent (verified) and the page's status line.
pub(crate) fn leaf_and_status(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> Result<(Vec<u8>, String), String> {
    let name = ServerName::try_from("localhost").expect("server name");
    let mut conn = rustls::ClientConnection::new(Arc::clone(config), name)
        .map_err(|e| format!("client: {e}"))?;
    let mut tcp = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("handshake or request: {e}"))?;
    let mut response = Vec::new();
    match tls.read_to_end(&mut response) {
        Ok(_) => {}
        // The server closes without close_notify after `Connection: close`: what was read
        // counts.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(format!("response: {e}")),
    }
    let status = String::from_utf8_lossy(&response)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or("no certificate")?;
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("status {status:?}"));
    }
    Ok((leaf, status))
}

/// The DER of the first certificate in a PEM file.
pub(crate) fn leaf_der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_vec()
}

/// When a connection ended, and the leaf certificate it got.
pub(crate) type Seen = (Instant, Vec<u8>);

/// Clients connecting over and over while a test changes the server's certificates: a
/// rustls client recording the leaf of each connection, and curl (which verifies against
/// the same trust file). Every failure is kept.
pub(crate) struct ClientLoop {
    stop: Arc<std::sync::atomic::AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ClientLoop {
    /// Starts both clients against `addr`, trusting `trust` (a file in `dir`).
    pub(crate) fn start(dir: &Path, addr: SocketAddr, trust: &str) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let config = trusting(&dir.join(trust));
        let rustls = {
            let (stop, seen, failures) = (stop.clone(), seen.clone(), failures.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    match leaf_and_status(addr, &config) {
                        Ok((leaf, _)) => seen.lock().unwrap().push((Instant::now(), leaf)),
                        Err(e) => failures.lock().unwrap().push(format!("rustls: {e}")),
                    }
                }
            })
        };
        let curl = {
            let (stop, failures) = (stop.clone(), failures.clone());
            let dir = dir.to_owned();
            let trust = trust.to_owned();
            std::thread::spawn(move || {
                let url = format!("https://localhost:{}/", addr.port());
                let resolve = format!("localhost:{}:127.0.0.1", addr.port());
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let out = Command::new("curl")
                        .args(["--silent", "--show-error", "--fail", "--cacert", &trust])
                        .args(["--resolve", &resolve, "--max-time", "30", &url])
                        .current_dir(&dir)
                        .stdin(Stdio::null())
                        .output()
                        .expect("run curl");
                    if !out.status.success() {
                        failures.lock().unwrap().push(format!(
                            "curl ({}): {}",
                            out.status,
                            String::from_utf8_lossy(&out.stderr)
                        ));
                    }
                }
            })
        };
        Self {
            stop,
            seen,
            failures,
            threads: vec![rustls, curl],
        }
    }

    /// When the rustls client first got `leaf` after `since`, waiting up to 30 s.
    pub(crate) fn first_seen(&self, leaf: &[u8], since: Instant) -> Instant {
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        loop {
            if let Some((at, _)) = self
                .seen
                .lock()
                .unwrap()
                .iter()
                .find(|(at, l)| *at >= since && l == leaf)
            {
                return *at;
            }
            assert!(Instant::now() < deadline, "the new certificate never came");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops both clients; returns the leaves the rustls client got, in order, and every
    /// failure.
    pub(crate) fn stop(self) -> (Vec<Seen>, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for thread in self.threads {
            thread.join().expect("client thread");
        }
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        (seen, failures)
    }
}

/// Writes `contents` to `name` in `dir` as deployment tools do: a temporary file, renamed
/// over the old one.
pub(crate) fn replace(dir: &Path, name: &str, contents: &[u8]) {
    let temp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temp, contents).expect("write the new file");
    std::fs::rename(&temp, dir.join(name)).expect("rename it into place");
}

/// Reload without restart, on each stack, with keys `a` and `b` (URIs; `a` gets two
/// certificates, `b` one) and `unreachable`, a key URI on a device that cannot be opened;
/// `serve` adds options (a PIN file):
///
/// - a certificate renamed over the served one during a loop of rustls and curl
///   connections: no connection fails, and new connections get the new certificate within
///   2 s; the log names the old and new serials;
/// - a half-written file, a file that is no certificate, a certificate for another key, and
///   an entry moved to an unreachable device each keep the old certificate serving, and the
///   log says why; the half-written file, once complete, is served;
/// - the entry's key and certificate changed together (the identities file and the chain);
/// - with polling off, nothing changes until SIGHUP, which reloads (and does not stop the
///   server).
pub(crate) fn check_reload(hk: &Hardkey, a: &str, b: &str, unreachable: &str, serve: &[&str]) {
    let dir = hk.dir.path();
    let selfsign = |key: &str, out: &str| selfsign_localhost(hk, key, out, serve);
    let (a1, a2, a3, b1) = (
        selfsign(a, "a1.crt"),
        selfsign(a, "a2.crt"),
        selfsign(a, "a3.crt"),
        selfsign(b, "b1.crt"),
    );
    let read = |name: &str| std::fs::read(dir.join(name)).expect("certificate file");
    let mut trust = Vec::new();
    for cert in [&a1, &a2, &a3, &b1] {
        trust.extend(read(cert));
    }
    hk.file("trust.pem", trust);
    let serial = |cert: &str| serial_of(dir, cert);
    let leaf = |cert: &str| leaf_der(&dir.join(cert));
    let config = trusting(&dir.join("trust.pem"));
    let fetch = |server: &Serve| {
        leaf_and_status(server.addr(), &config)
            .unwrap_or_else(|e| panic!("{}: {e}", server.stack()))
            .0
    };
    let identities = |key: &str| {
        hk.file(
            "identities.toml",
            format!("[[identity]]\nkey = \"{key}\"\ncert = \"live.crt\"\n"),
        );
    };
    for stack in ["boring", "rustls"] {
        std::fs::copy(dir.join(&a1), dir.join("live.crt")).unwrap();
        identities(a);
        let mut what = vec!["--identities", "identities.toml"];
        what.extend_from_slice(serve);
        let server = Serve::start_with(hk, &what, stack);
        assert_eq!(fetch(&server), leaf(&a1), "{stack}");

        // A swap during a loop of connections.
        let clients = ClientLoop::start(dir, server.addr(), "trust.pem");
        clients.first_seen(&leaf(&a1), Instant::now());
        let swapped = Instant::now();
        replace(dir, "live.crt", &read(&a2));
        let at = clients.first_seen(&leaf(&a2), swapped);
        let took = at.duration_since(swapped);
        // Keep connecting a little on the new certificate.
        let settle = Instant::now();
        while clients
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t > settle)
            .count()
            < 5
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let (seen, failures) = clients.stop();
        assert!(
            failures.is_empty(),
            "{stack}: failed connections: {failures:#?}"
        );
        assert!(
            took < Duration::from_secs(2),
            "{stack}: the new certificate came after {took:?}"
        );
        assert!(
            seen.iter()
                .filter(|(t, _)| *t > at)
                .all(|(_, l)| *l == leaf(&a2)),
            "{stack}: the old certificate came back after the new one"
        );
        let line = server.wait_for_log(&["reloaded", &serial(&a2)], 1);
        assert!(
            line.contains(&format!("(was {})", serial(&a1))),
            "{stack}: {line}"
        );
        assert!(line.contains("live.crt"), "{stack}: {line}");

        // A file caught half-written keeps the old certificate; complete, it is served.
        let whole = read(&a3);
        std::fs::write(dir.join("live.crt"), &whole[..whole.len() / 2]).unwrap();
        let kept = format!(
            "still serving its previous certificate (serial {})",
            serial(&a2)
        );
        let line = server.wait_for_log(&["live.crt", &kept], 1);
        assert!(line.contains("warn"), "{stack}: {line}");
        assert_eq!(
            fetch(&server),
            leaf(&a2),
            "{stack}: after a half-written file"
        );
        std::fs::write(dir.join("live.crt"), &whole).unwrap();
        server.wait_for_log(&["reloaded", &serial(&a3)], 1);
        assert_eq!(
            fetch(&server),
            leaf(&a3),
            "{stack}: after the file was complete"
        );

        // Not a certificate.
        replace(
            dir,
            "live.crt",
            b"-----BEGIN CERTIFICATE-----\nnot base64\n",
        );
        let kept = format!(
            "still serving its previous certificate (serial {})",
            serial(&a3)
        );
        let line = server.wait_for_log(&["live.crt", &kept], 1);
        assert!(
            line.contains("not a valid X.509 certificate"),
            "{stack}: {line}"
        );
        // A certificate for another key.
        replace(dir, "live.crt", &read(&b1));
        let line = server.wait_for_log(&["live.crt", &kept, "does not match"], 1);
        assert!(line.contains("warn"), "{stack}: {line}");
        assert_eq!(fetch(&server), leaf(&a3), "{stack}: after bad files");

        // The key changes with its certificate: served.
        identities(b);
        let line = server.wait_for_log(&["reloaded", &serial(&b1)], 1);
        assert!(
            line.contains(&format!("(was {})", serial(&a3))),
            "{stack}: {line}"
        );
        assert_eq!(fetch(&server), leaf(&b1), "{stack}: the new key");

        // A device that cannot be opened.
        identities(unreachable);
        let kept = format!(
            "still serving its previous certificate (serial {})",
            serial(&b1)
        );
        server.wait_for_log(&["live.crt", &kept], 1);
        assert_eq!(
            fetch(&server),
            leaf(&b1),
            "{stack}: after an unreachable device"
        );

        let Stopped { stats, log } = server.stop();
        assert_eq!(stats["handshake_failures"], 0, "{stack}: {stats}\n{log}");
        // Every line is hardkey's: the device libraries' own logs (a mechanism the token
        // lacks...) stay out unless RUST_LOG asks for them.
        for line in log.lines() {
            assert!(
                line.starts_with("hardkey serve: ") || line.starts_with("serving "),
                "{stack}: a line not from hardkey: {line}\n{log}"
            );
        }

        // SIGHUP, with polling off.
        std::fs::copy(dir.join(&a1), dir.join("live.crt")).unwrap();
        let mut what = vec!["--key", a, "--cert", "live.crt", "--watch-interval", "0s"];
        what.extend_from_slice(serve);
        let server = Serve::start_with(hk, &what, stack);
        replace(dir, "live.crt", &read(&a2));
        assert_eq!(
            fetch(&server),
            leaf(&a1),
            "{stack}: reloaded without SIGHUP"
        );
        server.hangup();
        server.wait_for_log(&["reloaded", &serial(&a2)], 1);
        assert_eq!(fetch(&server), leaf(&a2), "{stack}: after SIGHUP");
        // A second SIGHUP with nothing changed reloads again, and still serves.
        server.hangup();
        server.wait_for_log(&["SIGHUP: reloading"], 2);
        server.wait_for_log(&["reloaded 1 certificate chain(s), none changed"], 1);
        assert_eq!(fetch(&server), leaf(&a2), "{stack}: after a second SIGHUP");
        let Stopped { stats, log } = server.stop();
        assert_eq!(stats["handshakes"], 3, "{stack}: {stats}\n{log}");
    }
}
