//! The seed talk's experiment, and handshake throughput on real devices.
//!
//! `make bench-tls` (`cargo bench -p hardkey-tls --bench tls_handshakes`).
//!
//! **The experiment.** One server thread (a current-thread tokio runtime); a P-256 key whose
//! every operation is delayed (`Delayed::concurrent`, 200 ms by default); batches of 100
//! concurrent full TLS 1.3 handshakes from a client runtime on other threads (the client offers
//! only X25519, so every stack uses the same key exchange; no resumption). Done right a batch
//! takes about one delay; done wrong the handshakes stack up. Three servers:
//!
//! - **boring**: `hardkey_tls::Server::start` (one thread) on BoringSSL, the async private-key
//!   method: exactly what `hardkey serve --stack boring` runs;
//! - **rustls**: the same on rustls, the signing step on a blocking thread;
//! - **blocking**: the naive way: the same rustls configuration served by a plain
//!   `tokio_rustls::TlsAcceptor`, so the signer blocks the event-loop thread for each
//!   device round trip. It has a deadline (`HARDKEY_BENCH_BASELINE_TIMEOUT_MS`, 5 s): what
//!   completed by then shows the stacking.
//!
//! A ticker task on the server thread sleeps 1 ms in a loop; its lateness during a batch is the
//! event-loop stall (p99 and max reported).
//!
//! **Throughput.** No injected delay, 16 clients doing full handshakes (and one request) back
//! to back for `HARDKEY_BENCH_SECONDS` against one server thread: handshakes/s for an
//! in-memory key, a SoftHSM2 key and a swtpm key, on each stack; the swtpm figures next to the
//! swtpm's raw signature rate (a tss-esapi loop, no TLS, no hardkey). The emulator stands for a
//! chip with its own processor, but here it shares 2 vCPUs with the TLS client and server: the
//! benchmark raises its scheduling priority (nice -10, when run as root) for both the raw loop
//! and the servers; `HARDKEY_BENCH_SWTPM_NICE=0` measures without.
//!
//! **Sessions.** A PKCS#11 token that spends 200 ms in every `C_Sign`, like a network HSM
//! (the fault shim's delay in front of SoftHSM): 50 concurrent handshakes on one server with
//! S = 4, 16 and 64 sessions (the key URI's `max-sessions`) take about ceil(50/S) delays,
//! the bound being ceil(50/S) + 1.
//!
//! Environment: `HARDKEY_BENCH_DELAY_MS` (200), `HARDKEY_BENCH_HANDSHAKES` (100),
//! `HARDKEY_BENCH_ROUNDS` (3), `HARDKEY_BENCH_BASELINE_TIMEOUT_MS` (5000),
//! `HARDKEY_BENCH_SECONDS` (2), `HARDKEY_BENCH_SWTPM_NICE` (-10); `HARDKEY_BENCH_PARTS` (`experiment`, `throughput`, `sessions`; all by
//! default) and `HARDKEY_BENCH_ONLY` (`boring`, `rustls`, `blocking`) select what runs.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "benchmark"
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::Ca;
use futures::executor::block_on;
use hardkey_api::{
    DecryptScheme, Delayed, DynKeyStore, GenerateRequest, KeyAlgorithm, KeyInfo, KeyStore, Latency,
    PrivateKey, SharedKey, SignatureScheme,
};
use hardkey_tls::{CertChain, Server, ServerConfig, Stack};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn env_i64(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The client: TLS 1.3 only, X25519 only (the servers offer it too: like for like), trusts the
/// test CA, no resumption.
fn client_config(ca: &Ca) -> Arc<rustls::ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups = vec![rustls::crypto::ring::kx_group::X25519];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.ca_der()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// One full handshake and one request; `handshake_done` gets the instant the handshake
/// completed (even if the request then times out).
async fn fetch(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    handshake_done: &OnceLock<Instant>,
) -> std::io::Result<()> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    let _ = handshake_done.set(Instant::now());
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    match tls.read_to_end(&mut response).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e),
    }
    if !response.starts_with(b"HTTP/1.1 200 OK") {
        return Err(std::io::Error::other("no 200 response"));
    }
    Ok(())
}

/// A batch's outcome.
struct Batch {
    wall: Duration,
    latencies: Vec<Duration>,
    failed: usize,
    timed_out: bool,
    stalls: Vec<Duration>,
}

/// The server thread's ticker: lateness of 1 ms sleeps while `measuring` is set. A gap still
/// open when measuring stops (the ticker never got the thread back) counts too.
#[derive(Clone)]
struct Ticker {
    measuring: Arc<AtomicBool>,
    stalls: Arc<Mutex<Vec<Duration>>>,
    last_tick: Arc<Mutex<Instant>>,
}

impl Ticker {
    const PERIOD: Duration = Duration::from_millis(1);

    fn new() -> Self {
        Self {
            measuring: Arc::default(),
            stalls: Arc::default(),
            last_tick: Arc::new(Mutex::new(Instant::now())),
        }
    }

    fn spawn(&self, runtime: &tokio::runtime::Handle) {
        let me = self.clone();
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(Self::PERIOD).await;
                let now = Instant::now();
                let last = std::mem::replace(&mut *me.last_tick.lock().unwrap(), now);
                if me.measuring.load(Ordering::Relaxed) {
                    let late = (now - last).saturating_sub(Self::PERIOD);
                    me.stalls.lock().unwrap().push(late);
                }
            }
        });
    }

    fn start(&self) {
        self.stalls.lock().unwrap().clear();
        self.measuring.store(true, Ordering::Relaxed);
    }

    fn stop(&self) -> Vec<Duration> {
        self.measuring.store(false, Ordering::Relaxed);
        let open = self.last_tick.lock().unwrap().elapsed();
        let mut stalls = std::mem::take(&mut *self.stalls.lock().unwrap());
        if open > Self::PERIOD * 2 {
            stalls.push(open - Self::PERIOD);
        }
        stalls.sort();
        stalls
    }
}

/// Runs `n` concurrent handshakes, each given up at `deadline` after the batch started.
fn batch(
    client: &tokio::runtime::Runtime,
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    n: usize,
    deadline: Duration,
    ticker: &Ticker,
) -> Batch {
    ticker.start();
    let start = Instant::now();
    let results: Vec<(Option<std::io::Result<()>>, Option<Instant>)> = client.block_on(async {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let config = Arc::clone(config);
                tokio::spawn(async move {
                    let handshake = OnceLock::new();
                    let outcome = tokio::time::timeout_at(
                        (start + deadline).into(),
                        fetch(addr, config, &handshake),
                    )
                    .await
                    .ok();
                    (outcome, handshake.get().copied())
                })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        results
    });
    let stalls = ticker.stop();
    let mut latencies = Vec::new();
    let mut failed = 0;
    for (outcome, handshake) in results {
        if let Some(done) = handshake {
            latencies.push(done - start);
        }
        if let Some(Err(e)) = outcome {
            failed += 1;
            if failed == 1 {
                println!("    failed: {e}");
            }
        }
    }
    latencies.sort();
    let timed_out = latencies.len() < n && failed == 0;
    let wall = if timed_out {
        deadline
    } else {
        latencies.last().copied().unwrap_or_default()
    };
    Batch {
        wall,
        latencies,
        failed,
        timed_out,
        stalls,
    }
}

/// A key that fails fast once `stop` is set: lets the blocking baseline's server drain the
/// handshakes its client gave up on without serving each one a full delay.
struct Cancellable {
    inner: SharedKey,
    stop: Arc<AtomicBool>,
}

impl PrivateKey for Cancellable {
    fn info(&self) -> &KeyInfo {
        self.inner.info()
    }

    fn sign_digest(
        &self,
        scheme: SignatureScheme,
        digest: &[u8],
    ) -> impl Future<Output = hardkey_api::Result<Vec<u8>>> + Send + 'static + use<> {
        let stopped = self.stop.load(Ordering::Relaxed);
        let op = (!stopped).then(|| self.inner.sign_digest(scheme, digest));
        async move {
            match op {
                Some(op) => op.await,
                None => Err(hardkey_api::Error::device_unavailable(
                    "benchmark",
                    "the client gave up",
                )),
            }
        }
    }

    fn decrypt(
        &self,
        scheme: DecryptScheme,
        ciphertext: &[u8],
    ) -> impl Future<Output = hardkey_api::Result<Zeroizing<Vec<u8>>>> + Send + 'static + use<>
    {
        self.inner.decrypt(scheme, ciphertext)
    }
}

/// What the experiment's server thread runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Contender {
    Stack(Stack),
    Blocking,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Self::Stack(s) => s.name(),
            Self::Blocking => "blocking",
        }
    }
}

/// The experiment's server with a ticker on its event loop; stopped on drop.
struct ExperimentServer {
    addr: SocketAddr,
    ticker: Ticker,
    running: Running,
}

enum Running {
    /// `hardkey_tls::Server::start` with one thread, what `hardkey serve` runs; it stops when
    /// the handle drops.
    Server { _handle: hardkey_tls::ServerHandle },
    /// The naive server on a current-thread runtime of its own.
    Blocking {
        stop: Arc<tokio::sync::Notify>,
        cancel: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
}

impl ExperimentServer {
    fn start(contender: Contender, key: SharedKey, chain: CertChain, delay: Duration) -> Self {
        let ticker = Ticker::new();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        match contender {
            Contender::Stack(stack) => {
                let server = Server::start(
                    ServerConfig::new(key, chain)
                        .stack(stack)
                        .threads(1)
                        .listen(any)
                        .simulate_latency(Some(delay))
                        .shutdown_grace(Duration::from_secs(1)),
                )
                .unwrap();
                ticker.spawn(server.runtime());
                Self {
                    addr: server.local_addr(),
                    ticker,
                    running: Running::Server { _handle: server },
                }
            }
            Contender::Blocking => {
                let stop = Arc::new(tokio::sync::Notify::new());
                let cancel = Arc::new(AtomicBool::new(false));
                let (tx, rx) = std::sync::mpsc::channel();
                let thread = std::thread::spawn({
                    let (ticker, stop) = (ticker.clone(), Arc::clone(&stop));
                    let key: SharedKey = Arc::new(Cancellable {
                        inner: Arc::new(Delayed::concurrent(key, Latency::Fixed(delay))),
                        stop: Arc::clone(&cancel),
                    });
                    move || blocking_server(key, &chain, any, &ticker, &stop, &tx)
                });
                let addr = rx.recv().unwrap();
                Self {
                    addr,
                    ticker,
                    running: Running::Blocking {
                        stop,
                        cancel,
                        thread: Some(thread),
                    },
                }
            }
        }
    }
}

/// The naive server: the same rustls configuration (without resumption, as the test server
/// has it) behind a plain `tokio_rustls::TlsAcceptor`, so the signer blocks the event-loop
/// thread for every device round trip.
fn blocking_server(
    key: SharedKey,
    chain: &CertChain,
    addr: SocketAddr,
    ticker: &Ticker,
    stop: &tokio::sync::Notify,
    ready: &std::sync::mpsc::Sender<SocketAddr>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        ticker.spawn(&tokio::runtime::Handle::current());
        let mut config = (*hardkey_tls::rustls::server_config(key, chain).unwrap()).clone();
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(addr).unwrap();
        let listener = socket.listen(1024).unwrap();
        ready.send(listener.local_addr().unwrap()).unwrap();
        let accept = async {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // The signer blocks this very thread for a full delay.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 1024];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\
                              Connection: close\r\n\r\nok\n",
                        )
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        };
        tokio::select! {
            () = accept => {}
            () = stop.notified() => {}
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
}

impl Drop for ExperimentServer {
    fn drop(&mut self) {
        if let Running::Blocking {
            stop,
            cancel,
            thread,
        } = &mut self.running
        {
            cancel.store(true, Ordering::Relaxed);
            stop.notify_one();
            if let Some(t) = thread.take() {
                t.join().unwrap();
            }
        }
    }
}

fn experiment(ca: &Ca, client: &tokio::runtime::Runtime) {
    let delay = Duration::from_millis(env("HARDKEY_BENCH_DELAY_MS", 200));
    let n = env("HARDKEY_BENCH_HANDSHAKES", 100) as usize;
    let rounds = env("HARDKEY_BENCH_ROUNDS", 3).max(1) as usize;
    let baseline_timeout = Duration::from_millis(env("HARDKEY_BENCH_BASELINE_TIMEOUT_MS", 5000));
    let store = hardkey_soft::SoftStore::in_memory().unwrap();
    let key: SharedKey =
        Arc::new(block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP256))).unwrap());
    let chain = CertChain::from_pem(ca.issue(&key.info().public_key, "bench")).unwrap();
    let config = client_config(ca);
    println!(
        "== The experiment: {n} concurrent full TLS 1.3 handshakes (X25519, ECDSA P-256), one \
         server thread, every key operation delayed {}",
        ms(delay)
    );
    println!(
        "{:<9} {:>5} {:>11} {:>10} {:>10} {:>10} {:>11} {:>11}",
        "stack", "round", "batch wall", "wall/delay", "hs p50", "hs p99", "stall p99", "stall max"
    );
    let mut summary = Vec::new();
    for contender in [
        Contender::Stack(Stack::Boring),
        Contender::Stack(Stack::Rustls),
        Contender::Blocking,
    ]
    .into_iter()
    .filter(|c| std::env::var("HARDKEY_BENCH_ONLY").map_or(true, |o| o.contains(c.name())))
    {
        let server = ExperimentServer::start(contender, Arc::clone(&key), chain.clone(), delay);
        let (rounds, deadline) = match contender {
            // The baseline's one round is cut at its deadline.
            Contender::Blocking => (1, baseline_timeout),
            Contender::Stack(_) => {
                // Warm up: connections, and rustls's blocking threads for a full batch.
                let warm = batch(client, server.addr, &config, n, delay * 20, &server.ticker);
                assert_eq!(warm.failed, 0, "warm-up failed");
                (rounds, delay * 20)
            }
        };
        let mut ratios = Vec::new();
        let mut stall_p99s = Vec::new();
        for round in 0..rounds {
            let b = batch(client, server.addr, &config, n, deadline, &server.ticker);
            let ratio = b.wall.as_secs_f64() / delay.as_secs_f64();
            let stall_p99 = percentile(&b.stalls, 0.99);
            let stall_max = b.stalls.last().copied().unwrap_or_default();
            println!(
                "{:<9} {:>5} {:>11} {:>10} {:>10} {:>10} {:>11} {:>11}{}",
                contender.name(),
                round + 1,
                ms(b.wall),
                format!("{}{ratio:.2}", if b.timed_out { ">" } else { "" }),
                ms(percentile(&b.latencies, 0.5)),
                ms(percentile(&b.latencies, 0.99)),
                ms(stall_p99),
                ms(stall_max),
                if b.failed > 0 {
                    format!("  ({} failed)", b.failed)
                } else {
                    String::new()
                }
            );
            if b.timed_out {
                let done = b.latencies.len();
                let last = b.latencies.last().copied().unwrap_or_default();
                println!(
                    "          timed out after {}: {done}/{n} handshakes done; the last at {} = \
                     {:.1} delays for {done} handshakes ({:.2} delays each): they stack up, \
                     {n} would take about {:.0} delays ({:.1} s)",
                    ms(deadline),
                    ms(last),
                    last.as_secs_f64() / delay.as_secs_f64(),
                    last.as_secs_f64() / delay.as_secs_f64() / done.max(1) as f64,
                    n as f64 * last.as_secs_f64() / delay.as_secs_f64() / done.max(1) as f64,
                    n as f64 * last.as_secs_f64() / done.max(1) as f64,
                );
            }
            ratios.push(ratio);
            stall_p99s.push(stall_p99.as_secs_f64() * 1e3);
        }
        summary.push((contender, median(ratios), median(stall_p99s)));
        drop(server);
    }
    println!("-- medians");
    for (contender, ratio, stall) in summary {
        let target = match contender {
            Contender::Stack(Stack::Boring) => Some(1.2),
            Contender::Stack(_) => Some(1.35),
            Contender::Blocking => None,
        };
        match target {
            Some(t) => println!(
                "{:<9} wall/delay {ratio:.2} (target <= {t:.2}: {}), stall p99 {stall:.1} ms \
                 (target < 5 ms: {})",
                contender.name(),
                if ratio <= t { "met" } else { "NOT met" },
                if stall < 5.0 { "met" } else { "NOT met" },
            ),
            None => println!(
                "{:<9} wall/delay >{ratio:.2} at its deadline, stall p99 {stall:.1} ms: the \
                 event loop is blocked for every signature",
                contender.name()
            ),
        }
    }
}

/// Full handshakes (and one request) per second from 16 clients for `duration`.
fn rate(
    client: &tokio::runtime::Runtime,
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    duration: Duration,
) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    client.block_on(async {
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (config, done, failed) =
                    (Arc::clone(config), Arc::clone(&done), Arc::clone(&failed));
                tokio::spawn(async move {
                    while start.elapsed() < duration {
                        match fetch(addr, Arc::clone(&config), &OnceLock::new()).await {
                            Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        println!("    {failed} handshakes failed");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Gives the swtpm emulator a scheduling priority (`HARDKEY_BENCH_SWTPM_NICE`, -10 by default;
/// 0 leaves it alone), so that it behaves more like what it stands for: a TPM is a chip with its
/// own processor, while the emulator would otherwise share this host's CPUs with the TLS
/// clients and server it is measured against. The raw signature loop runs under the same
/// priority. Returns the condition, for the report.
fn chip_like(tpm: &swtpm_tests::Swtpm) -> String {
    let nice = env_i64("HARDKEY_BENCH_SWTPM_NICE", -10);
    if nice == 0 {
        return "swtpm at the default priority (sharing the CPUs with client and server)".into();
    }
    // setpriority(2) on Linux applies to one thread: renice each of the emulator's.
    let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", tpm.pid()))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let ok = !tasks.is_empty()
        && tasks.iter().all(|tid| {
            std::process::Command::new("renice")
                .args(["-n", &nice.to_string(), "-p", tid])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    if ok {
        format!(
            "swtpm at nice {nice}, like a TPM chip that does not share the host's CPUs \
             (HARDKEY_BENCH_SWTPM_NICE=0 to measure without)"
        )
    } else {
        format!(
            "swtpm at the default priority: renice to {nice} failed (needs root); it shares \
             the CPUs with client and server"
        )
    }
}

fn throughput(ca: &Ca, client: &tokio::runtime::Runtime, hsm: &softhsm_tests::SoftHsm) {
    let seconds = Duration::from_secs(env("HARDKEY_BENCH_SECONDS", 2).max(1));
    let rounds = env("HARDKEY_BENCH_ROUNDS", 3).max(1) as usize;
    let config = client_config(ca);
    let tpm = swtpm_tests::Swtpm::start();
    let emulator = chip_like(&tpm);
    let tpm_dir = tempfile::tempdir().unwrap();
    let tpm_store = hardkey_tpm::TpmStore::open(tpm.config(tpm_dir.path())).unwrap();
    let soft: Arc<dyn DynKeyStore> = Arc::new(hardkey_soft::SoftStore::in_memory().unwrap());
    let softhsm_store = Arc::new(hsm.store(2));
    let softhsm: Arc<dyn DynKeyStore> = Arc::clone(&softhsm_store) as Arc<dyn DynKeyStore>;
    let gen_key = |store: &Arc<dyn DynKeyStore>, alg: KeyAlgorithm| -> SharedKey {
        block_on(store.dyn_generate(GenerateRequest::new(alg))).unwrap()
    };
    let gen_tpm = |alg: KeyAlgorithm| {
        let request = GenerateRequest::new(alg).label(format!("bench-{alg}"));
        let key = block_on(tpm_store.generate(request)).unwrap();
        let file = key.key_ref().file().unwrap().to_path_buf();
        (Arc::new(key) as SharedKey, file)
    };
    let (tpm_p256, tpm_p256_file) = gen_tpm(KeyAlgorithm::EcP256);
    let (tpm_rsa, tpm_rsa_file) = gen_tpm(KeyAlgorithm::Rsa2048);
    let keys: Vec<(&str, SharedKey)> = vec![
        ("in-memory p256", gen_key(&soft, KeyAlgorithm::EcP256)),
        ("softhsm p256", gen_key(&softhsm, KeyAlgorithm::EcP256)),
        ("swtpm p256", tpm_p256),
        ("in-memory rsa2048", gen_key(&soft, KeyAlgorithm::Rsa2048)),
        ("swtpm rsa2048", tpm_rsa),
    ];

    // One server per stack and key, all started first; then each round measures every one of
    // them, and the swtpm's raw signature rate, in turn: host noise drifts over a run, so
    // the ratios are taken within a round and their median reported.
    let servers: Vec<(Stack, &str, hardkey_tls::ServerHandle)> = Stack::ALL
        .into_iter()
        .flat_map(|stack| keys.iter().map(move |(name, key)| (stack, *name, key)))
        .map(|(stack, name, key)| {
            let chain = CertChain::from_pem(ca.issue(&key.info().public_key, name)).unwrap();
            let server = Server::start(
                ServerConfig::new(Arc::clone(key), chain)
                    .stack(stack)
                    .listen("127.0.0.1:0".parse().unwrap()),
            )
            .unwrap();
            rate(
                client,
                server.local_addr(),
                &config,
                Duration::from_millis(300),
            );
            (stack, name, server)
        })
        .collect();
    println!(
        "\n== Throughput, no injected delay: full TLS 1.3 handshakes (+ 1 request) per second, 16 \
         clients, one server thread, {} s per measurement, {rounds} interleaved rounds; {emulator}",
        seconds.as_secs()
    );
    let mut rates: std::collections::HashMap<(Option<Stack>, &str), Vec<f64>> =
        std::collections::HashMap::new();
    for _ in 0..rounds {
        // The swtpm's own ceiling: raw TPM2_Sign back to back, no TLS, no hardkey. The store
        // lets go of its loaded keys first (the TPM holds only a few objects).
        block_on(tpm_store.flush_loaded()).unwrap();
        for (name, file, scheme) in [
            (
                "swtpm p256",
                &tpm_p256_file,
                SignatureScheme::EcdsaP256Sha256,
            ),
            (
                "swtpm rsa2048",
                &tpm_rsa_file,
                SignatureScheme::RsaPkcs1Sha256,
            ),
        ] {
            let raw = swtpm_tests::raw_sign_loop(&tpm, file, scheme, seconds).per_second;
            rates.entry((None, name)).or_default().push(raw);
        }
        for (stack, name, server) in &servers {
            let r = rate(client, server.local_addr(), &config, seconds);
            rates.entry((Some(*stack), name)).or_default().push(r);
        }
    }
    let show = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for name in ["swtpm p256", "swtpm rsa2048"] {
        let v = &rates[&(None, name)];
        println!(
            "raw     {name:<18} {:>7.0}/s   rounds {}   (TPM2_Sign loop, no TLS)",
            median(v.clone()),
            show(v)
        );
    }
    for (stack, name, _) in &servers {
        let v = &rates[&(Some(*stack), *name)];
        println!(
            "{:<7} {name:<18} {:>7.0}/s   rounds {}",
            stack.name(),
            median(v.clone()),
            show(v)
        );
    }
    println!("-- ratios (per round, then the median)");
    let ratio = |a: (Option<Stack>, &str), b: (Option<Stack>, &str)| {
        let per_round: Vec<f64> = rates[&a]
            .iter()
            .zip(&rates[&b])
            .map(|(x, y)| x / y)
            .collect();
        (median(per_round.clone()), per_round)
    };
    let verdict = |r: f64, target: f64| if r >= target { "met" } else { "NOT met" };
    for stack in Stack::ALL {
        let s = Some(stack);
        let (hsm, hsm_rounds) = ratio((s, "softhsm p256"), (s, "in-memory p256"));
        let (p256, p256_rounds) = ratio((s, "swtpm p256"), (None, "swtpm p256"));
        let (rsa, rsa_rounds) = ratio((s, "swtpm rsa2048"), (None, "swtpm rsa2048"));
        let pct = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{:.0}%", 100.0 * x))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "{:<7} softhsm / in-memory p256        {:>4.0}%  (target >= 80%: {}; rounds {})",
            stack.name(),
            100.0 * hsm,
            verdict(hsm, 0.8),
            pct(&hsm_rounds)
        );
        println!(
            "{:<7} swtpm p256 / raw TPM2_Sign      {:>4.0}%  (target >= 90%: {}; rounds {})",
            stack.name(),
            100.0 * p256,
            verdict(p256, 0.9),
            pct(&p256_rounds)
        );
        println!(
            "{:<7} swtpm rsa2048 / raw TPM2_Sign   {:>4.0}%  (target >= 90%: {}; rounds {})",
            stack.name(),
            100.0 * rsa,
            verdict(rsa, 0.9),
            pct(&rsa_rounds)
        );
    }
    drop(servers);
    drop(keys);
    tpm_store.pool().shutdown(Duration::from_secs(5));
    // No SoftHSM worker may be inside the module when the process exits.
    softhsm_store.pool().shutdown(Duration::from_secs(5));
}

/// 50 concurrent handshakes on a token whose every `C_Sign` takes `delay`, with 4, 16 and 64
/// sessions: wall time in delays next to the bound ceil(50/S) + 1.
fn sessions(
    ca: &Ca,
    client: &tokio::runtime::Runtime,
    hsm: &softhsm_tests::SoftHsm,
    shim: &softhsm_tests::FaultShim,
) {
    let delay = Duration::from_millis(env("HARDKEY_BENCH_DELAY_MS", 200));
    let n = 50usize;
    let config = client_config(ca);
    println!(
        "\n== Sessions: {n} concurrent TLS 1.3 handshakes (BoringSSL, one server thread) on a \
         PKCS#11 P-256 key whose every C_Sign takes {}",
        ms(delay)
    );
    println!(
        "{:>8} {:>11} {:>11} {:>16}",
        "sessions", "batch wall", "wall/delay", "bound ceil(n/S)+1"
    );
    for sessions in [4usize, 16, 64] {
        shim.set("");
        let store = hardkey_pkcs11::Pkcs11Store::open(
            hsm.config().module(shim.module()).sessions(sessions),
        )
        .unwrap();
        let key: SharedKey =
            Arc::new(block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP256))).unwrap());
        let chain = CertChain::from_pem(ca.issue(&key.info().public_key, "sessions")).unwrap();
        let server = Server::start(
            ServerConfig::new(Arc::clone(&key), chain)
                .stack(Stack::Boring)
                .listen("127.0.0.1:0".parse().unwrap()),
        )
        .unwrap();
        let addr = server.local_addr();
        // Warm up without the delay: connections and every session's first use.
        shim.set("");
        rate(client, addr, &config, Duration::from_millis(200));
        shim.set(&format!("sign_delay_ms={}", delay.as_millis()));
        let start = Instant::now();
        let failed = client.block_on(async {
            let tasks: Vec<_> = (0..n)
                .map(|_| {
                    let config = Arc::clone(&config);
                    tokio::spawn(async move { fetch(addr, config, &OnceLock::new()).await })
                })
                .collect();
            let mut failed = 0;
            for t in tasks {
                if !matches!(t.await, Ok(Ok(()))) {
                    failed += 1;
                }
            }
            failed
        });
        let wall = start.elapsed();
        shim.set("");
        let bound = n.div_ceil(sessions) + 1;
        println!(
            "{sessions:>8} {:>11} {:>11.2} {bound:>16}{}",
            ms(wall),
            wall.as_secs_f64() / delay.as_secs_f64(),
            if failed > 0 {
                format!("  ({failed} failed)")
            } else {
                String::new()
            }
        );
        server.shutdown().unwrap();
        drop(key);
        let _ = store.pool().shutdown(Duration::from_secs(10));
    }
}

fn main() {
    // SoftHSM first: it is configured through the environment while the process has one thread.
    let hsm = softhsm_tests::SoftHsm::start();
    let shim = softhsm_tests::FaultShim::start(&hsm);
    let ca = Ca::new();
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let parts = std::env::var("HARDKEY_BENCH_PARTS").unwrap_or_default();
    if parts.is_empty() || parts.contains("experiment") {
        experiment(&ca, &client);
    }
    if parts.is_empty() || parts.contains("throughput") {
        throughput(&ca, &client, &hsm);
    }
    if parts.is_empty() || parts.contains("sessions") {
        sessions(&ca, &client, &hsm, &shim);
    }
}
