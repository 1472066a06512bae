//! Helpers of the TLS tests: a software CA issuing certificates for device keys' public keys,
//! a rustls client that verifies the chain against that CA and records the signature scheme
//! it verified, `openssl s_client` and `curl` runs, and a log capture.
#![allow(
    dead_code,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers, not every binary uses each"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use der::Decode;
use hardkey_api::{KeyFamily, PublicKey};
use hardkey_tls::testing::{RecordingVerifier, recording_client_config};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ProtocolVersion, SignatureScheme};

/// A test CA: a software P-256 key and a self-signed certificate, written to a temp dir.
pub(crate) struct Ca {
    key: KeyPair,
    cert: rcgen::Certificate,
    dir: tempfile::TempDir,
}

/// A device key's public key as rcgen sees a subject key.
struct DeviceKey {
    bits: Vec<u8>,
    alg: &'static rcgen::SignatureAlgorithm,
}

impl rcgen::PublicKeyData for DeviceKey {
    fn der_bytes(&self) -> &[u8] {
        &self.bits
    }
    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        self.alg
    }
}

impl Ca {
    pub(crate) fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "hardkey test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("hardkey-tls-ca-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        Self { key, cert, dir }
    }

    /// The CA certificate file (for openssl and curl).
    pub(crate) fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub(crate) fn ca_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// Issues a server certificate for `public_key` (names `localhost` and `127.0.0.1`) and
    /// returns the chain PEM: the server's certificate, then the CA's.
    pub(crate) fn issue(&self, public_key: &PublicKey, cn: &str) -> String {
        self.issue_for(public_key, cn, &["localhost"], true)
    }

    /// Issues a server certificate for `public_key` with the DNS names `names` (and
    /// `127.0.0.1` when `ip`), and returns the chain PEM: the server's certificate, then the
    /// CA's.
    pub(crate) fn issue_for(
        &self,
        public_key: &PublicKey,
        cn: &str,
        names: &[&str],
        ip: bool,
    ) -> String {
        let spki = spki::SubjectPublicKeyInfoRef::from_der(public_key.der()).unwrap();
        let alg = match public_key.algorithm().family() {
            KeyFamily::Rsa => &rcgen::PKCS_RSA_SHA256,
            _ => match public_key.algorithm() {
                hardkey_api::KeyAlgorithm::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
                hardkey_api::KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
                _ => &rcgen::PKCS_ECDSA_P256_SHA256,
            },
        };
        let device = DeviceKey {
            bits: spki.subject_public_key.raw_bytes().to_vec(),
            alg,
        };
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        if ip {
            params
                .subject_alt_names
                .push(SanType::IpAddress([127, 0, 0, 1].into()));
        }
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&device, &self.cert, &self.key).unwrap();
        format!("{}{}", leaf.pem(), self.cert.pem())
    }

    /// Issues a client certificate (extended key usage clientAuth) for `public_key`, subject
    /// CN=`cn`, and returns the chain PEM: the client's certificate, then the CA's.
    pub(crate) fn issue_client(&self, public_key: &PublicKey, cn: &str) -> String {
        let spki = spki::SubjectPublicKeyInfoRef::from_der(public_key.der()).unwrap();
        let alg = match public_key.algorithm().family() {
            KeyFamily::Rsa => &rcgen::PKCS_RSA_SHA256,
            _ => &rcgen::PKCS_ECDSA_P256_SHA256,
        };
        let device = DeviceKey {
            bits: spki.subject_public_key.raw_bytes().to_vec(),
            alg,
        };
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&device, &self.cert, &self.key).unwrap();
        format!("{}{}", leaf.pem(), self.cert.pem())
    }

    /// [`Ca::issue`], written to a file in the CA's directory.
    pub(crate) fn issue_file(&self, public_key: &PublicKey, name: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.pem"));
        std::fs::write(&path, self.issue(public_key, name)).unwrap();
        path
    }
}

/// A TLS version to test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    Tls13,
    Tls12,
}

impl Version {
    pub(crate) fn rustls(self) -> &'static rustls::SupportedProtocolVersion {
        match self {
            Self::Tls13 => &rustls::version::TLS13,
            Self::Tls12 => &rustls::version::TLS12,
        }
    }
    pub(crate) fn protocol(self) -> ProtocolVersion {
        match self {
            Self::Tls13 => ProtocolVersion::TLSv1_3,
            Self::Tls12 => ProtocolVersion::TLSv1_2,
        }
    }
    pub(crate) fn openssl_flag(self) -> &'static str {
        match self {
            Self::Tls13 => "-tls1_3",
            Self::Tls12 => "-tls1_2",
        }
    }
    pub(crate) fn openssl_name(self) -> &'static str {
        match self {
            Self::Tls13 => "TLSv1.3",
            Self::Tls12 => "TLSv1.2",
        }
    }
}

/// A rustls client configuration trusting only `ca`, speaking only `version`, offering only
/// `offer`, with no session resumption (every handshake is a full one), speaking HTTP/1.1.
pub(crate) fn client_config(
    ca: &CertificateDer<'static>,
    version: Version,
    offer: &[SignatureScheme],
) -> (Arc<rustls::ClientConfig>, Arc<RecordingVerifier>) {
    let (mut config, verifier) =
        recording_client_config(ca.clone(), version.rustls(), Some(offer)).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (Arc::new(config), verifier)
}

/// A connected, handshaken rustls client stream.
pub(crate) type Client = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connects to `addr` as `server_name` and completes the handshake.
pub(crate) fn connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<Client> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    let name = ServerName::try_from(server_name.to_owned()).map_err(std::io::Error::other)?;
    let conn = rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// Sends one GET and reads the response (head and `Content-Length` body).
pub(crate) fn get(stream: &mut Client, close: bool) -> std::io::Result<String> {
    let connection = if close { "close" } else { "keep-alive" };
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: {connection}\r\n\r\n"
    )?;
    stream.flush()?;
    let mut response = Vec::new();
    let mut byte = [0u8; 1];
    while !response.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte)?;
        response.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&response).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no Content-Length in {head}")))?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok(format!("{head}{}", String::from_utf8_lossy(&body)))
}

/// One full handshake and one request with the rustls client; returns the response, the
/// negotiated version and the signature scheme the client verified.
pub(crate) fn rust_client_fetch(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    version: Version,
    offer: &[SignatureScheme],
) -> std::io::Result<(String, Option<ProtocolVersion>, Option<SignatureScheme>)> {
    let (config, verifier) = client_config(ca, version, offer);
    let mut stream = connect(addr, "localhost", config)?;
    let negotiated = stream.conn.protocol_version();
    let response = get(&mut stream, true)?;
    Ok((response, negotiated, verifier.verified()))
}

/// Runs `openssl s_client` against `addr`: verifies the chain against `ca_file` and the
/// hostname, offers only `sigalg`, sends one GET and reads until the server closes.
pub(crate) fn openssl_s_client(
    addr: SocketAddr,
    ca_file: &Path,
    version: Version,
    sigalg: &str,
) -> Output {
    let mut child = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(["-servername", "localhost", "-verify_hostname", "localhost"])
        .arg("-CAfile")
        .arg(ca_file)
        .args(["-verify_return_error", "-ign_eof", "-no_ticket"])
        .arg(version.openssl_flag())
        .args(["-sigalgs", sigalg])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl runs (make test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `curl` fetching the page twice over one connection (keep-alive), verifying against `ca_file`.
pub(crate) fn curl_twice(addr: SocketAddr, ca_file: &Path, tls_max: &str) -> Output {
    let url = format!("https://localhost:{}/", addr.port());
    Command::new("curl")
        .args(["--silent", "--show-error", "--verbose", "--fail"])
        .arg("--cacert")
        .arg(ca_file)
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", addr.port()))
        .args(["--tlsv1.2", "--tls-max", tls_max])
        .args(["--max-time", "20"])
        .arg(&url)
        .arg(&url)
        .output()
        .expect("curl runs (make test installs it)")
}

/// Messages logged by hardkey-tls, captured for assertions.
static LOGGED: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target().starts_with("hardkey_tls")
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = format!("{} {}", record.level(), record.args());
            if std::env::var_os("HARDKEY_TEST_LOG").is_some() {
                eprintln!("{line}");
            }
            LOGGED.lock().unwrap().push(line);
        }
    }
    fn flush(&self) {}
}

/// Installs the log capture (once per process).
pub(crate) fn capture_logs() {
    static CAPTURE: Capture = Capture;
    if log::set_logger(&CAPTURE).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// The captured messages containing `needle`.
pub(crate) fn logged(needle: &str) -> Vec<String> {
    LOGGED
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}
