//! serve: a minimal HTTPS server on a key, to try a provisioned key with curl or
//! `openssl s_client`, and to see how a TLS stack behaves with a slow device.

use std::time::Duration;

use hardkey_api::PrivateKey;
use hardkey_tls::{Server, ServerConfig};
use serde_json::json;

use super::Ctx;
use crate::args::ServeArgs;
use crate::error::{CliError, CliResult};
use crate::target::OpenOptions;

/// A TLS error: what the user gave (certificate, stack) is a usage error; the rest failed.
pub(crate) fn tls_error(e: hardkey_tls::Error) -> CliError {
    use hardkey_tls::Error as E;
    match e {
        E::ReadCertificate { .. }
        | E::NoCertificate { .. }
        | E::NoTrustAnchor { .. }
        | E::BadCertificate { .. }
        | E::KeyMismatch(_)
        | E::KeyCannotSign { .. }
        | E::NoSuchIdentity { .. }
        | E::UnknownStack { .. }
        | E::StackNotBuilt { .. }
        | E::Bind { .. } => CliError::usage(e),
        other => CliError::failed(other),
    }
}

/// `hardkey serve`.
pub(crate) fn serve(a: &ServeArgs, ctx: &Ctx) -> CliResult {
    // First: a SIGTERM while the store opens (a slow device) still stops the server cleanly.
    let (stop, stopped) = std::sync::mpsc::channel();
    crate::signals::stop_on_signal(stop)?;
    let stack = a.stack.parse().map_err(tls_error)?;
    // Before the stores open: their pools register their metrics when they start.
    if let Some(addr) = a.metrics {
        install_metrics(addr)?;
    }
    let options = OpenOptions {
        sessions: 4,
        op_timeout: Some(Duration::from_secs(30)),
        // Thousands of key files open in seconds; each loads when it first signs (the
        // startup probes load a few per TPM).
        lazy_tpm_keys: true,
    };
    // The CA file before any device is opened: a typo fails at once.
    let client_ca = a
        .client_ca
        .as_ref()
        .map(|path| hardkey_tls::TrustAnchors::from_pem_file(path).map_err(tls_error))
        .transpose()?;
    let served = crate::identities::open(a, &ctx.config, &a.secrets, options)?;
    let config = ServerConfig::for_identities(served.identities.clone())
        .stack(stack)
        .listen(a.listen)
        .threads(a.threads)
        .max_connections(a.max_connections)
        .request_timeout(a.request_timeout)
        .write_timeout(a.request_timeout)
        .simulate_latency(a.simulate_latency)
        .client_ca(client_ca.clone());
    if log::set_logger(&LOGGER).is_ok() {
        // Reload messages are shown from `info` on; the rest from the level asked for.
        let level = log_level();
        let _ = LEVEL.set(level);
        log::set_max_level(level.max(log::LevelFilter::Info));
    }
    for warning in &served.warnings {
        crate::output::note(&format!("hardkey serve: warning: {warning}"));
    }
    // Composed before the socket opens, so that it is on stderr before the first handshake,
    // and short: with thousands of chains, the first few and a count.
    let what = banner(&served);
    let handle = Server::start(config).map_err(tls_error)?;
    crate::output::note(&format!(
        "serving https://{} with {} on {what}, {} event-loop thread(s){}{}; Ctrl-C stops",
        handle.local_addr(),
        handle.stack(),
        a.threads.max(1),
        a.simulate_latency
            .map(|d| format!(
                ", every key operation delayed {}",
                humantime::format_duration(d)
            ))
            .unwrap_or_default(),
        client_ca
            .as_ref()
            .map(|ca| format!(
                ", requiring client certificates issued by {} (from {})",
                ca.subjects().join("; "),
                ca.origin()
            ))
            .unwrap_or_default(),
    ));
    // SIGHUP and changed files reload, on a thread that ends before the server does.
    let watch = (!a.watch_interval.is_zero()).then_some(a.watch_interval);
    let setup = crate::reload::Setup {
        args: a,
        config: &ctx.config,
        options,
    };
    let served = std::thread::scope(|scope| {
        let watcher = crate::reload::Watcher::start(scope, &handle, served, setup, watch)?;
        let _ = stopped.recv();
        CliResult::Ok(watcher.stop())
    })?;
    let stats = handle.stats();
    handle.shutdown().map_err(tls_error)?;
    drop(served);
    ctx.out.emit(
        json!({
            "connections": stats.connections,
            "handshakes": stats.handshakes,
            "handshake_failures": stats.handshake_failures,
            "client_cert_rejections": stats.client_cert_rejections,
            "closed_silent": stats.closed_silent,
            "requests": stats.requests,
            "refused": stats.refused,
            "accept_errors": stats.accept_errors,
        }),
        || {
            format!(
                "stopped: {}; handshakes: {} succeeded, {} failed{}; {}; {} closed before \
                 sending anything, {} refused over the connection cap",
                count(stats.connections, "connection"),
                stats.handshakes,
                stats.handshake_failures,
                match stats.client_cert_rejections {
                    0 => String::new(),
                    n => format!(" ({n} for a missing or invalid client certificate)"),
                },
                count(stats.requests, "request"),
                stats.closed_silent,
                stats.refused
            )
        },
    );
    Ok(())
}

/// The startup line's "key ..." or "N certificate chains ...": what is served, on which keys.
fn banner(served: &crate::identities::Served) -> String {
    let keys: Vec<String> = served
        .loaded
        .iter()
        .take(BANNER_CHAINS.max(1))
        .map(|loaded| {
            let (key, store) = (loaded.identity.key(), &loaded.store);
            let at_once = key
                .pool_stats()
                .map(|s| format!(", {} device operation(s) at once", s.workers))
                .unwrap_or_default();
            format!("{} ({store}){at_once}", key.info().display_name())
        })
        .collect();
    let total = served.loaded.len();
    match keys.as_slice() {
        [one] if total == 1 => format!("key {one}"),
        many => {
            let shown: Vec<String> = served
                .identities
                .iter()
                .zip(many)
                .take(BANNER_CHAINS)
                .map(|(identity, key)| {
                    let names = identity.chain().dns_names();
                    format!(
                        "[{}{}] on key {key}",
                        match names {
                            [] => "no DNS name".to_owned(),
                            names => names.iter().take(4).cloned().collect::<Vec<_>>().join(" "),
                        },
                        match names.len() {
                            0..=4 => String::new(),
                            n => format!(" and {} more", n - 4),
                        }
                    )
                })
                .collect();
            format!(
                "{total} certificate chains, selected by server name: {}{}",
                shown.join("; "),
                match total.saturating_sub(BANNER_CHAINS) {
                    0 => String::new(),
                    n => format!("; and {n} more"),
                }
            )
        }
    }
}

/// How many chains the startup line names.
const BANNER_CHAINS: usize = 8;

/// Histogram buckets (seconds) of the Prometheus exporter: 1 ms to 10 s, for device operations
/// (a software key's sub-millisecond signature falls in the first) and event-loop stalls.
const METRIC_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the Prometheus exporter (metrics-exporter-prometheus) as the global recorder, with
/// its HTTP listener on `addr` (on a thread of its own, not on the server's event loop).
fn install_metrics(addr: std::net::SocketAddr) -> CliResult {
    use metrics_exporter_prometheus::{BuildError, PrometheusBuilder};
    let builder = PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&METRIC_BUCKETS)
        .map_err(CliError::failed)?;
    builder.install().map_err(|e| match e {
        BuildError::FailedToCreateHTTPListener(reason) => crate::error::usage(format!(
            "cannot serve metrics on {addr}: {reason}; choose a free address for --metrics"
        )),
        other => CliError::failed(other),
    })?;
    crate::output::note(&format!(
        "serving Prometheus metrics on http://{addr}/metrics"
    ));
    Ok(())
}

/// "1 request", "2 requests".
fn count(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// The log level: `warn`, or the most verbose level `RUST_LOG` names (`debug`,
/// `hardkey_tls=trace`...). hardkey logs no secret at any level.
fn log_level() -> log::LevelFilter {
    std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| {
            spec.split(',')
                .filter_map(|part| {
                    part.rsplit('=')
                        .next()?
                        .trim()
                        .parse::<log::LevelFilter>()
                        .ok()
                })
                .max()
        })
        .unwrap_or(log::LevelFilter::Warn)
}

/// Prints the server's per-connection warnings (failed handshakes, key errors) on stderr,
/// and more with `RUST_LOG`.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        let level = LEVEL.get().copied().unwrap_or(log::LevelFilter::Warn);
        // The device libraries' own logs (tss-esapi, cryptoki: a mechanism the token lacks,
        // a capability it does not report) are what hardkey already turned into its messages;
        // they are shown only when RUST_LOG asks.
        let ours = metadata.target().starts_with("hardkey");
        let asked = std::env::var_os("RUST_LOG").is_some();
        (metadata.level() <= level && (ours || asked))
            || (metadata.target() == crate::reload::LOG_TARGET
                && metadata.level() <= log::Level::Info)
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            crate::output::note(&format!(
                "hardkey serve: {}: {}",
                record.level().as_str().to_ascii_lowercase(),
                record.args()
            ));
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

/// The level asked for (`RUST_LOG`), beside the reload messages' `info`.
static LEVEL: std::sync::OnceLock<log::LevelFilter> = std::sync::OnceLock::new();
