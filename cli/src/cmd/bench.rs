//! bench: signatures per second and latency percentiles on one key, like `openssl speed`
//! for hardware keys.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::executor::block_on;
use futures::stream::FuturesUnordered;
use hardkey_api::{PrivateKey, encoding};
use hdrhistogram::Histogram;
use serde_json::json;

use super::{Ctx, default_scheme};
use crate::args::BenchArgs;
use crate::error::{CliError, CliResult, failed};
use crate::target::{OpenOptions, Store, Target};

/// What a run measured.
struct Report {
    signatures: u64,
    errors: u64,
    /// Failures by kind ("DeviceUnavailable", "Timeout"...), with the last of each.
    failures: BTreeMap<String, (u64, String)>,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    last_error: Option<hardkey_api::Error>,
}

/// The first pause after a failed operation whose error says "later" (device down, busy,
/// out of slots); it doubles with each such failure, up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(1);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// `hardkey bench`.
pub(crate) fn bench(a: &BenchArgs, ctx: &Ctx) -> CliResult {
    let target = Target::parse(&a.key.uri, &ctx.config)?;
    let uri = target.key_uri()?;
    let concurrency = usize::try_from(a.concurrency).unwrap_or(1);
    let options = OpenOptions {
        sessions: concurrency.min(64),
        op_timeout: Some(Duration::from_secs(60)),
        lazy_tpm_keys: false,
    };
    let store = Store::open(&target, &ctx.config, &a.key.secrets, options)?;
    let key = store.key(&uri)?;
    let info = key.info().clone();
    let scheme = a.scheme.unwrap_or_else(|| default_scheme(info.algorithm));
    // One signature first, checked in software: a benchmark of wrong answers is worthless.
    let message = b"hardkey bench";
    let first = block_on(key.sign(scheme, message))?;
    hardkey_api::verify::verify_signature(info.public_key.der(), scheme, message, &first)
        .map_err(|e| failed(format!("the key's signature does not verify: {e}")))?;
    // What each job sends: the digest, or for EdDSA (no pre-hash) the message itself.
    let digest = match scheme.hash() {
        Some(hash) => encoding::digest(hash, message),
        None => message.to_vec(),
    };

    let bar = ctx.out.interactive().then(|| {
        let bar =
            indicatif::ProgressBar::new(a.duration.as_millis().try_into().unwrap_or(u64::MAX));
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} [{bar:30}] {elapsed}/{duration} {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    });
    let report = run(&key, scheme, &digest, concurrency, a.duration, bar.as_ref())?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if report.signatures == 0 {
        return Err(match report.last_error {
            Some(e) => CliError::from(e),
            None => failed("no signature completed"),
        });
    }
    let failures = report
        .failures
        .iter()
        .map(|(kind, (n, last))| format!("{n} {kind} (last: {last})"))
        .collect::<Vec<_>>();
    let rate = report.signatures as f64 / report.elapsed.as_secs_f64();
    let ms = |q: f64| report.latency_us.value_at_quantile(q) as f64 / 1000.0;
    let max = report.latency_us.max() as f64 / 1000.0;
    ctx.out.emit(
        json!({
            "key": info.uri.as_ref().map(ToString::to_string),
            "device": store.keys().dyn_name(),
            "algorithm": info.algorithm.name(),
            "scheme": scheme.name(),
            "concurrency": concurrency,
            "seconds": report.elapsed.as_secs_f64(),
            "signatures": report.signatures,
            "errors": report.errors,
            "failures": report.failures.iter().map(|(kind, (n, last))| {
                (kind.clone(), json!({ "count": n, "last": last }))
            }).collect::<serde_json::Map<_, _>>(),
            "signatures_per_second": rate,
            "latency_ms": { "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": max },
        }),
        || {
            format!(
                "{} on {}\n{} signatures in {:.2} s with {concurrency} in flight: {rate:.1} sign/s\n\
                 latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}{}",
                scheme,
                store.keys().dyn_name(),
                report.signatures,
                report.elapsed.as_secs_f64(),
                ms(0.5),
                ms(0.9),
                ms(0.99),
                max,
                match report.errors {
                    0 => String::new(),
                    n => format!("\n{n} failed: {}", failures.join("; ")),
                }
            )
        },
    );
    if report.errors > 0 {
        // The figures above are printed, but a run with failures is not a clean result.
        return Err(failed(format!(
            "{} of {} signatures failed: {}",
            report.errors,
            report.errors + report.signatures,
            failures.join("; ")
        )));
    }
    Ok(())
}

fn run(
    key: &hardkey_api::SharedKey,
    scheme: hardkey_api::SignatureScheme,
    digest: &[u8],
    concurrency: usize,
    duration: Duration,
    bar: Option<&indicatif::ProgressBar>,
) -> CliResult<Report> {
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .map_err(|e| failed(format!("latency histogram: {e}")))?;
    let launch = || {
        let started = Instant::now();
        let signing = match scheme.hash() {
            Some(_) => key.dyn_sign_digest(scheme, digest),
            None => key.dyn_sign_message(scheme, digest),
        };
        async move { (signing.await, started.elapsed()) }
    };
    let start = Instant::now();
    let end = start + duration;
    let (mut signatures, mut errors, mut last_error) = (0u64, 0u64, None);
    let mut failures: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut backoff = Duration::ZERO;
    let mut last_draw = start;
    block_on(async {
        let mut in_flight: FuturesUnordered<_> = (0..concurrency).map(|_| launch()).collect();
        while let Some((result, took)) = in_flight.next().await {
            match result {
                Ok(_) => {
                    signatures += 1;
                    backoff = Duration::ZERO;
                    let _ =
                        latency_us.record(took.as_micros().try_into().unwrap_or(u64::MAX).max(1));
                }
                Err(e) => {
                    errors += 1;
                    let entry = failures
                        .entry(format!("{:?}", e.kind()))
                        .or_insert((0, String::new()));
                    entry.0 += 1;
                    entry.1 = crate::output::printable(&e.to_string()).into_owned();
                    if e.is_retryable() {
                        // The device is down or full: wait for it instead of spinning on
                        // errors (the pool reconnects meanwhile).
                        backoff = (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                        std::thread::sleep(
                            backoff.min(end.saturating_duration_since(Instant::now())),
                        );
                    }
                    last_error = Some(e);
                }
            }
            let now = Instant::now();
            if now < end {
                in_flight.push(launch());
            }
            if let Some(bar) = bar {
                if now.duration_since(last_draw) > Duration::from_millis(100) {
                    last_draw = now;
                    bar.set_position(
                        now.duration_since(start)
                            .as_millis()
                            .try_into()
                            .unwrap_or(0),
                    );
                    let rate = signatures as f64 / now.duration_since(start).as_secs_f64();
                    bar.set_message(format!("{signatures} signatures, {rate:.1}/s"));
                }
            }
        }
    });
    Ok(Report {
        signatures,
        errors,
        failures,
        elapsed: start.elapsed(),
        latency_us,
        last_error,
    })
}
