//! `make bench-scale` (issue 13 item 8): `hardkey serve` with 10,000 keys and certificates,
//! on one SoftHSM token and as TSS2 key files on swtpm.
//!
//! For each device it measures, against `hardkey serve --cert-dir` (one chain file per key,
//! each naming its key):
//!
//! - the time from starting the process to its listening socket accepting a connection
//!   (everything is opened and checked before the socket opens), next to the time
//!   `pkcs11-tool --list-objects` takes to list the same token's private keys, in the same
//!   run (the target: at most 2× that, and at most 10 s);
//! - hardkey's own resident memory per key: the server's resident set with all N keys
//!   minus the same with one key, minus what the PKCS#11 module holds for the N objects
//!   (measured by this binary re-run as a process that only loads the module, logs in and
//!   reads the same objects' attributes, N objects minus 1), minus the chains' bytes, over
//!   N − 1 (the target: at most 4 KiB);
//! - handshake latency p50/p99 for random names, 100 concurrent rustls clients.
//!
//! `HARDKEY_SCALE_KEYS` (default 10000), `HARDKEY_SCALE_HANDSHAKES` (default 4000) and
//! `HARDKEY_SCALE_DEVICES` (`softhsm,swtpm`) set the sizes. The machine is shared and
//! noisy: the figures are indicative, the ratio is the comparison.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs,
    reason = "benchmark code"
)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use hardkey_api::{GenerateRequest, KeyAlgorithm, KeyStore, PrivateKey, PublicKey};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use secrecy::ExposeSecret;

/// The env var that makes this binary the module-share process.
const SHARE_MODE: &str = "HARDKEY_SCALE_MODULE_SHARE";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::var_os(SHARE_MODE).is_some() {
        module_share();
        return;
    }
    // `cargo bench` passes `--bench`; nothing else is taken.
    let keys = env_usize("HARDKEY_SCALE_KEYS", 10_000).max(2);
    let handshakes = env_usize("HARDKEY_SCALE_HANDSHAKES", 4_000);
    let devices = std::env::var("HARDKEY_SCALE_DEVICES").unwrap_or("softhsm,swtpm".into());
    // SoftHSM is configured through the environment: before any thread starts.
    let hsm = devices
        .contains("softhsm")
        .then(softhsm_tests::SoftHsm::start);
    let _ = rustls::crypto::ring::default_provider().install_default();
    println!(
        "scale: {keys} keys, {handshakes} handshakes from 100 concurrent clients, stack {}",
        stack()
    );
    let mut rows = Vec::new();
    if let Some(hsm) = &hsm {
        rows.push(softhsm(hsm, keys, handshakes));
    }
    if devices.contains("swtpm") {
        rows.push(swtpm(keys, handshakes));
    }
    println!();
    println!(
        "| device | keys | ready | baseline list | ratio | own RSS/key | p50 | p99 | handshakes/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        println!("{row}");
    }
}

/// One device's figures.
struct Row {
    device: &'static str,
    keys: usize,
    ready: Duration,
    baseline: Option<Duration>,
    own_per_key: f64,
    p50: Duration,
    p99: Duration,
    rate: f64,
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (baseline, ratio) = match self.baseline {
            Some(b) => (
                format!("{:.2} s", b.as_secs_f64()),
                format!("{:.2}", self.ready.as_secs_f64() / b.as_secs_f64()),
            ),
            None => ("-".into(), "-".into()),
        };
        write!(
            f,
            "| {} | {} | {:.2} s | {baseline} | {ratio} | {:.0} B | {:.1} ms | {:.1} ms | {:.0} |",
            self.device,
            self.keys,
            self.ready.as_secs_f64(),
            self.own_per_key,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.rate
        )
    }
}

/// A CA that issues one leaf per key.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "hardkey scale CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    /// A leaf for `public_key` named `name`: its DER.
    fn issue(&self, public_key: &PublicKey, name: &str) -> Vec<u8> {
        let spki =
            <spki::SubjectPublicKeyInfoRef<'_> as der::Decode>::from_der(public_key.der()).unwrap();
        let device = DeviceKey(spki.subject_public_key.raw_bytes().to_vec());
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params
            .signed_by(&device, &self.cert, &self.key)
            .unwrap()
            .der()
            .to_vec()
    }
}

/// A P-256 public key for rcgen.
struct DeviceKey(Vec<u8>);

impl rcgen::PublicKeyData for DeviceKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

fn pem(der: &[u8]) -> String {
    der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, der).unwrap()
}

/// The host name of key `i`.
fn name_of(i: usize) -> String {
    format!("k{i:05}.scale.test")
}

/// Writes one chain file per key into `dir` (named so that name order is key order) and
/// returns the leaves' total DER size.
fn write_cert_dir(dir: &Path, leaves: &[(String, Vec<u8>)]) -> usize {
    std::fs::create_dir_all(dir).unwrap();
    let mut bytes = 0;
    for (i, (uri, der)) in leaves.iter().enumerate() {
        let mut f = std::fs::File::create(dir.join(format!("{i:05}.pem"))).unwrap();
        writeln!(f, "hardkey-key: {uri}").unwrap();
        f.write_all(pem(der).as_bytes()).unwrap();
        bytes += der.len();
    }
    bytes
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A running `hardkey serve` and the file its stderr goes to, killed on drop.
///
/// Its stderr goes to a file, never to a pipe nobody reads: a server logging a warning per
/// failed handshake fills a pipe's 64 KiB and then blocks in its logger (the stall the first
/// 10,000-key rustls run saw was this).
struct Serve(Child, SocketAddr, PathBuf);

impl Serve {
    /// The server's stderr so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.2).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `hardkey serve` with `args` and waits until it listens: the time that took.
fn serve(args: &[&str], env: &[(&str, &str)]) -> (Serve, Duration) {
    let addr = free_addr();
    let addr_text = addr.to_string();
    let log = std::env::temp_dir().join(format!("hardkey-scale-serve-{}.log", addr.port()));
    // `HARDKEY_SCALE_WRAP` ("heaptrack", "valgrind --tool=massif"): a profiler to run the
    // server under (its figures are then the profiler's too).
    let wrap = std::env::var("HARDKEY_SCALE_WRAP").unwrap_or_default();
    let mut wrap = wrap.split_whitespace();
    let mut cmd = match wrap.next() {
        Some(tool) => {
            let mut cmd = Command::new(tool);
            cmd.args(wrap).arg(env!("CARGO_BIN_EXE_hardkey"));
            cmd
        }
        None => Command::new(env!("CARGO_BIN_EXE_hardkey")),
    };
    cmd.arg("serve")
        .args(args)
        .args(["--listen", &addr_text, "--stack", &stack()])
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("start hardkey serve");
    let deadline = started + Duration::from_secs(600);
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "hardkey serve exited with {status}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "hardkey serve did not listen");
        std::thread::sleep(Duration::from_millis(5));
    }
    let ready = started.elapsed();
    (Serve(child, addr, log), ready)
}

/// The TLS stack served (`HARDKEY_SCALE_STACK`, default boring).
fn stack() -> String {
    std::env::var("HARDKEY_SCALE_STACK").unwrap_or_else(|_| "boring".to_owned())
}

/// A process's resident set (VmRSS), in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// `handshakes` TLS handshakes (rustls, TLS 1.3) from 100 threads, each to a random one of
/// `names`, verified against the CA: their latencies, sorted, and the wall time.
fn handshake_latencies(
    addr: SocketAddr,
    ca: &Ca,
    names: &[String],
    handshakes: usize,
) -> (Vec<Duration>, Duration) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.cert.der().to_vec()))
        .unwrap();
    let config = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let names = Arc::new(names.to_vec());
    let clients = 100;
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let config = Arc::clone(&config);
            let names = Arc::clone(&names);
            let count = handshakes / clients + usize::from(c < handshakes % clients);
            std::thread::spawn(move || {
                let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ (c as u64 + 1);
                let mut out = Vec::with_capacity(count);
                for _ in 0..count {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let name = &names[(seed % names.len() as u64) as usize];
                    let t = Instant::now();
                    let server_name = ServerName::try_from(name.clone()).unwrap();
                    let mut conn =
                        rustls::ClientConnection::new(Arc::clone(&config), server_name).unwrap();
                    let mut tcp = match TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT) {
                        Ok(tcp) => tcp,
                        Err(e) => {
                            out.push(Err(("connect", format!("{name}: {e}"))));
                            continue;
                        }
                    };
                    tcp.set_nodelay(true).unwrap();
                    tcp.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
                    tcp.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
                    let mut failed = None;
                    while conn.is_handshaking() && failed.is_none() {
                        failed = conn.complete_io(&mut tcp).err();
                    }
                    match failed {
                        None => out.push(Ok(t.elapsed())),
                        Some(e) => out.push(Err((failure_kind(&e), format!("{name}: {e}")))),
                    }
                }
                out
            })
        })
        .collect();
    let results: Vec<Result<Duration, (&str, String)>> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let wall = started.elapsed();
    let mut kinds: std::collections::BTreeMap<&str, (usize, &str)> = Default::default();
    for (kind, text) in results.iter().filter_map(|r| r.as_ref().err()) {
        kinds.entry(kind).or_insert((0, text)).0 += 1;
    }
    let failed: usize = kinds.values().map(|(n, _)| n).sum();
    if failed > 0 {
        println!("{failed} of {} handshakes failed:", results.len());
        for (kind, (n, first)) in &kinds {
            println!("  {n} {kind} (first: {first})");
        }
    }
    let mut all: Vec<Duration> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    all.sort();
    (all, wall)
}

/// How long a bench client waits to connect, and for each read or write of a handshake.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed handshake's kind, for counting.
fn failure_kind(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::*;
    match e.kind() {
        WouldBlock | TimedOut => "client timeout (no bytes for 30 s)",
        UnexpectedEof => "closed by the server (EOF)",
        ConnectionReset | ConnectionAborted | BrokenPipe => "reset by the server",
        InvalidData => "TLS error (alert or bad message)",
        _ => "other I/O error",
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// The handshake part of a row, and the memory figures, for a server of N keys.
#[allow(clippy::too_many_arguments, reason = "one place that assembles a row")]
fn measure(
    device: &'static str,
    args_all: &[&str],
    args_one: &[&str],
    env: &[(&str, &str)],
    ca: &Ca,
    names: &[String],
    chain_bytes: (usize, usize),
    module_share: (u64, u64),
    baseline: Option<Duration>,
    handshakes: usize,
) -> Row {
    let keys = names.len();
    let (one, _) = serve(args_one, env);
    let rss_one = rss(one.0.id());
    drop(one);
    let (all, ready) = serve(args_all, env);
    let rss_all = rss(all.0.id());
    println!(
        "{device}: ready in {:.2} s; resident {:.1} MiB with {keys} keys, {:.1} MiB with 1",
        ready.as_secs_f64(),
        rss_all as f64 / 1048576.0,
        rss_one as f64 / 1048576.0
    );
    let (latencies, wall) = handshake_latencies(all.1, ca, names, handshakes);
    let log = all.log();
    let lines: Vec<&str> = log.lines().collect();
    if !lines.is_empty() {
        println!(
            "{device}: the server logged {} lines; the first:",
            lines.len()
        );
        for line in lines.iter().take(5) {
            let cut = line.char_indices().nth(400).map_or(line.len(), |(i, _)| i);
            println!("  {}", &line[..cut]);
        }
    }
    drop(all);
    let module = module_share.1 as f64 - module_share.0 as f64;
    let chains = chain_bytes.1 as f64 - chain_bytes.0 as f64;
    let own = (rss_all as f64 - rss_one as f64 - module - chains) / (keys - 1) as f64;
    println!(
        "{device}: module share {:.1} MiB (N objects minus 1), chains {:.1} MiB: own {:.0} B per key",
        module / 1048576.0,
        chains / 1048576.0,
        own
    );
    Row {
        device,
        keys,
        ready,
        baseline,
        own_per_key: own,
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        rate: latencies.len() as f64 / wall.as_secs_f64(),
    }
}

fn softhsm(hsm: &softhsm_tests::SoftHsm, keys: usize, handshakes: usize) -> Row {
    let work = tempfile::Builder::new()
        .prefix("hardkey-scale-")
        .tempdir()
        .unwrap();
    let pin = work.path().join("pin");
    std::fs::write(&pin, hsm.user_pin().expose_secret()).unwrap();
    let ca = Ca::new();
    // Keys: generated with cryptoki directly (the setup, not measured against anything).
    let t = Instant::now();
    let mut leaves = Vec::with_capacity(keys);
    let mut names = Vec::with_capacity(keys);
    for (i, public_key) in generate_p256(hsm, keys).into_iter().enumerate() {
        let name = name_of(i);
        let uri = format!(
            "pkcs11:token={};object=k{i:05}?module-path={}",
            hsm.label(),
            hsm.module().display()
        );
        leaves.push((uri, ca.issue(&public_key, &name)));
        names.push(name);
    }
    println!(
        "softhsm: {keys} P-256 keys and certificates made in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let dir_all = work.path().join("all");
    let dir_one = work.path().join("one");
    let bytes_all = write_cert_dir(&dir_all, &leaves);
    let bytes_one = write_cert_dir(&dir_one, &leaves[..1]);

    // The baseline: pkcs11-tool listing the token's private keys.
    let t = Instant::now();
    let out = hsm
        .pkcs11_tool()
        .args(["--list-objects", "--type", "privkey"])
        .output()
        .unwrap();
    let baseline = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&out.stdout)
        .matches("Private Key Object")
        .count();
    assert_eq!(listed, keys, "pkcs11-tool lists every key");
    println!(
        "softhsm: pkcs11-tool lists {listed} private keys in {:.2} s",
        baseline.as_secs_f64()
    );
    let share = (share_process(hsm, 1), share_process(hsm, keys));
    let pin_text = pin.display().to_string();
    let all = dir_all.display().to_string();
    let one = dir_one.display().to_string();
    let softhsm_conf = std::env::var("SOFTHSM2_CONF").unwrap();
    let env = [("SOFTHSM2_CONF", softhsm_conf.as_str())];
    measure(
        "SoftHSM",
        &["--cert-dir", &all, "--pin-file", &pin_text],
        &["--cert-dir", &one, "--pin-file", &pin_text],
        &env,
        &ca,
        &names,
        (bytes_one, bytes_all),
        share,
        Some(baseline),
        handshakes,
    )
}

/// `count` P-256 key pairs on the token, labelled `k00000`..., with the attributes hardkey
/// gives its own (sign only, sensitive, not extractable): their public keys.
fn generate_p256(hsm: &softhsm_tests::SoftHsm, count: usize) -> Vec<PublicKey> {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, AttributeType};
    use cryptoki::session::UserType;
    let ctx = Pkcs11::new(hsm.module()).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == hsm.label())
        .unwrap();
    let session = ctx.open_rw_session(slot).unwrap();
    session.login(UserType::User, Some(hsm.user_pin())).unwrap();
    // DER of the P-256 curve OID.
    let params = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let label = format!("k{i:05}").into_bytes();
        let id = (i as u32).to_be_bytes().to_vec();
        let public = [
            Attribute::Token(true),
            Attribute::Verify(true),
            Attribute::EcParams(params.clone()),
            Attribute::Label(label.clone()),
            Attribute::Id(id.clone()),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Label(label),
            Attribute::Id(id),
        ];
        let (pub_handle, _) = session
            .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
            .unwrap();
        let point = session
            .get_attributes(pub_handle, &[AttributeType::EcPoint])
            .unwrap();
        let Some(Attribute::EcPoint(raw)) = point.into_iter().next() else {
            panic!("no CKA_EC_POINT");
        };
        let point = <der::asn1::OctetString as der::Decode>::from_der(&raw).unwrap();
        out.push(PublicKey::from_ec_point(KeyAlgorithm::EcP256, point.as_bytes()).unwrap());
        if (i + 1) % 2000 == 0 {
            println!("softhsm: {} keys", i + 1);
        }
    }
    drop(session);
    let _ = ctx.finalize();
    out
}

/// Runs this binary as the module-share process for the first `objects` keys: its resident
/// set after reading them, in bytes.
fn share_process(hsm: &softhsm_tests::SoftHsm, objects: usize) -> u64 {
    let out = Command::new(std::env::current_exe().unwrap())
        .env(SHARE_MODE, objects.to_string())
        .env("HARDKEY_SCALE_MODULE", hsm.module())
        .env("HARDKEY_SCALE_TOKEN", hsm.label())
        .env("HARDKEY_SCALE_PIN", hsm.user_pin().expose_secret())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The module-share process: loads the module, logs in, lists N private and N public keys
/// (as hardkey does) and reads the attributes hardkey reads; prints its resident set.
fn module_share() {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::object::{Attribute, AttributeType, ObjectClass};
    use cryptoki::session::UserType;
    let objects: usize = std::env::var(SHARE_MODE).unwrap().parse().unwrap();
    let module = std::env::var("HARDKEY_SCALE_MODULE").unwrap();
    let token = std::env::var("HARDKEY_SCALE_TOKEN").unwrap();
    let pin = secrecy::SecretString::from(std::env::var("HARDKEY_SCALE_PIN").unwrap());
    let ctx = Pkcs11::new(module).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == token)
        .unwrap();
    let session = ctx.open_ro_session(slot).unwrap();
    session.login(UserType::User, Some(&pin)).unwrap();
    // As hardkey opens a token's keys: one search per class, then each object's attributes
    // (a search per key would make this quadratic in SoftHSM).
    let mut kept = Vec::new();
    for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
        let found = session.find_objects(&[Attribute::Class(class)]).unwrap();
        for object in found.into_iter().take(objects) {
            kept.push(
                session
                    .get_attributes(
                        object,
                        &[
                            AttributeType::Id,
                            AttributeType::Label,
                            AttributeType::KeyType,
                            AttributeType::EcParams,
                            AttributeType::EcPoint,
                        ],
                    )
                    .unwrap(),
            );
        }
    }
    let held: usize = kept.iter().map(Vec::len).sum();
    std::hint::black_box(held);
    // What the module holds, with our copies of the attributes dropped.
    drop(kept);
    println!("{}", rss(std::process::id()));
}

fn swtpm(keys: usize, handshakes: usize) -> Row {
    let tpm = swtpm_tests::Swtpm::start();
    let work = tempfile::Builder::new()
        .prefix("hardkey-scale-tpm-")
        .tempdir()
        .unwrap();
    let key_dir = work.path().join("keys");
    std::fs::create_dir(&key_dir).unwrap();
    let ca = Ca::new();
    let store = swtpm_tests::open_store(tpm.config(&key_dir));
    let t = Instant::now();
    let mut leaves = Vec::with_capacity(keys);
    let mut names = Vec::with_capacity(keys);
    for i in 0..keys {
        let key = block_on(
            store.generate(GenerateRequest::new(KeyAlgorithm::EcP256).label(format!("k{i:05}"))),
        )
        .unwrap();
        let name = name_of(i);
        let file: PathBuf = key_dir.join(format!("k{i:05}.tss2.pem"));
        let uri = format!("tpm2:file={}?tcti={}", file.display(), tpm.tcti());
        leaves.push((uri, ca.issue(&key.info().public_key, &name)));
        names.push(name);
        if (i + 1) % 1000 == 0 {
            println!(
                "swtpm: {} keys in {:.0} s",
                i + 1,
                t.elapsed().as_secs_f64()
            );
        }
    }
    swtpm_tests::close_store(store);
    println!(
        "swtpm: {keys} P-256 key files and certificates made in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let dir_all = work.path().join("all");
    let dir_one = work.path().join("one");
    let bytes_all = write_cert_dir(&dir_all, &leaves);
    let bytes_one = write_cert_dir(&dir_one, &leaves[..1]);
    let all = dir_all.display().to_string();
    let one = dir_one.display().to_string();
    let env = [("TSS2_LOG", "all+none")];
    measure(
        "swtpm (key files)",
        &["--cert-dir", &all],
        &["--cert-dir", &one],
        &env,
        &ca,
        &names,
        (bytes_one, bytes_all),
        (0, 0),
        None,
        handshakes,
    )
}
