//! `hardkey serve --metrics` on a SoftHSM key (through the fault shim, which fails chosen
//! signatures), on both stacks: after known traffic (curl handshakes, signatures that fail,
//! a lost session the pool recovers from, a client that speaks plain HTTP), the Prometheus
//! text the endpoint serves is parsed by Python's `prometheus_client` parser (the reference
//! implementation's, independent of the exporter) and every counter must match the work done.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "trials outside #[test] fns fail by panicking"
)]

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::Hardkey;
use common::serve::{Serve, free_addr, selfsign_localhost};
use hardkey_api::testkit::harness::run_on;
use libtest_mimic::{Arguments, Trial};
use secrecy::ExposeSecret;
use softhsm_tests::{FaultShim, SoftHsm};

/// Turns Prometheus text (stdin) into JSON samples `[name, labels, value]`, with the parser of
/// the `prometheus_client` package (NaN as null); argv[1], an openssl notAfter date, is
/// converted to unix seconds and printed first.
const PARSE: &str = r#"
import json, ssl, sys
from prometheus_client.parser import text_string_to_metric_families
samples = [[s.name, s.labels, None if s.value != s.value else s.value]
           for family in text_string_to_metric_families(sys.stdin.read())
           for s in family.samples]
print(json.dumps({"not_after": ssl.cert_time_to_seconds(sys.argv[1]), "samples": samples}))
"#;

/// A Python 3 that has `prometheus_client` (`python3` on PATH, else the system's, where
/// Debian's python3-prometheus-client installs it).
fn python() -> &'static str {
    for python in ["python3", "/usr/bin/python3"] {
        let has = Command::new(python)
            .args(["-c", "import prometheus_client.parser"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if has {
            return python;
        }
    }
    panic!(
        "this test parses the metrics with Python's prometheus_client: install it with \
         `apt-get install python3-prometheus-client` (make deps does) or \
         `python3 -m pip install prometheus_client`"
    );
}

/// The scraped samples, and the certificate's notAfter in unix seconds.
struct Scrape {
    samples: Vec<(String, HashMap<String, String>, f64)>,
    not_after: f64,
}

impl Scrape {
    /// The one sample named `name` whose labels include `labels` (panics on none or several).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self.matching(name, labels).collect();
        match found.as_slice() {
            [one] => *one,
            _ => panic!("{name} {labels:?}: {found:?} in\n{:#?}", self.samples),
        }
    }

    /// The sum of the samples named `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).sum()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = f64> + 'a {
        self.samples
            .iter()
            .filter(move |(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
            })
            .map(|(_, _, v)| *v)
    }

    /// A histogram's buckets must climb to its count, and `+Inf` must be the count.
    fn check_histogram(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let count = self.get(&format!("{name}_count"), labels);
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|(n, l, _)| {
                *n == format!("{name}_bucket")
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
            })
            .map(|(_, l, v)| (l["le"].parse::<f64>().unwrap(), *v))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.len() > 10, "{name} {labels:?}: {buckets:?}");
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name} {labels:?}: buckets not cumulative: {buckets:?}"
        );
        let inf = buckets.last().unwrap();
        assert!(inf.0.is_infinite(), "{name}: {buckets:?}");
        assert_eq!(inf.1, count, "{name} {labels:?}: +Inf bucket vs count");
        let first = buckets[0].0;
        assert!((first - 0.001).abs() < 1e-9, "{name}: first bucket {first}");
        count
    }
}

fn scrape(hk: &Hardkey, metrics: std::net::SocketAddr, cert: &str) -> Scrape {
    let text = common::tool(
        "curl",
        &["--silent", "--fail", &format!("http://{metrics}/metrics")],
        hk.dir.path(),
    );
    let not_after = common::tool(
        "openssl",
        &["x509", "-in", cert, "-noout", "-enddate"],
        hk.dir.path(),
    );
    let not_after = not_after.trim().trim_start_matches("notAfter=").to_owned();
    let mut child = Command::new(python())
        .args(["-c", PARSE, &not_after])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let samples = parsed["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let labels = s[1]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            (
                s[0].as_str().unwrap().to_owned(),
                labels,
                s[2].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    Scrape {
        samples,
        not_after: parsed["not_after"].as_f64().unwrap(),
    }
}

/// curl over TLS 1.3 to the server; whether it got the page.
fn curl_ok(hk: &Hardkey, addr: std::net::SocketAddr, cert: &str) -> bool {
    Command::new("curl")
        .args(["--silent", "--fail", "--max-time", "20", "--cacert", cert])
        .args(["--resolve", &format!("localhost:{}:127.0.0.1", addr.port())])
        .arg(format!("https://localhost:{}/", addr.port()))
        .current_dir(hk.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run curl")
        .success()
}

/// A client that speaks plain HTTP to the TLS port: a failed handshake of class `protocol`.
fn plain_http(addr: std::net::SocketAddr) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest);
}

struct Env {
    hsm: SoftHsm,
    shim: FaultShim,
}

fn counters_match_the_work_done(env: &Env) {
    let Env { hsm, shim } = env;
    let shim_dir = hsm.dir().join("shim");
    let hk = Hardkey::new()
        .env("HARDKEY_PIN", hsm.user_pin().expose_secret())
        .env("HARDKEY_SHIM_DIR", shim_dir.to_str().unwrap())
        .env("HARDKEY_SHIM_MODULE", hsm.module().to_str().unwrap());
    shim.set("");
    let uri = format!(
        "pkcs11:token={};object=metrics?module-path={}",
        hsm.label(),
        shim.module().display()
    );
    hk.ok(&["keygen", &uri, "--alg", "p256"]);
    let cert = selfsign_localhost(&hk, &uri, "metrics.crt", &[]);
    let serial = common::tool(
        "openssl",
        &["x509", "-in", &cert, "-noout", "-serial"],
        hk.dir.path(),
    )
    .trim()
    .trim_start_matches("serial=")
    .to_ascii_lowercase();
    let device = format!("token '{}'", hsm.label());
    const OK: usize = 5;
    for stack in ["boring", "rustls"] {
        shim.set("");
        let metrics = free_addr();
        let metrics_text = metrics.to_string();
        let serve = Serve::start_with(
            &hk,
            &["--key", &uri, "--cert", &cert, "--metrics", &metrics_text],
            stack,
        );
        let addr = serve.addr();
        for _ in 0..OK {
            assert!(curl_ok(&hk, addr, &cert), "{stack}: curl failed");
        }
        // Two signatures fail (CKR_FUNCTION_FAILED): two handshakes fail on the key.
        shim.set("sign_rv=6\nsign_times=2");
        for _ in 0..2 {
            assert!(!curl_ok(&hk, addr, &cert), "{stack}: a failing key served");
        }
        // The session is lost once (CKR_DEVICE_REMOVED): the pool rebuilds it and retries.
        shim.set("sign_rv=50\nsign_times=1");
        assert!(curl_ok(&hk, addr, &cert), "{stack}: no recovery");
        shim.set("");
        plain_http(addr);

        let m = scrape(&hk, metrics, &cert);
        let listener = addr.to_string();
        let l = [("listener", listener.as_str()), ("stack", stack)];
        let handshakes = (OK + 1) as f64;
        assert_eq!(m.get("hardkey_tls_handshakes_total", &l), handshakes);
        let reason = |r| {
            m.get(
                "hardkey_tls_handshake_failures_total",
                &[l[0], l[1], ("reason", r)],
            )
        };
        assert_eq!(reason("key"), 2.0, "{stack}");
        assert_eq!(reason("protocol"), 1.0, "{stack}");
        assert_eq!(reason("timeout"), 0.0, "{stack}");
        assert_eq!(reason("closed"), 0.0, "{stack}");
        // Every TCP connection: the handshakes, the plain-HTTP client, the readiness probe.
        assert_eq!(
            m.get("hardkey_tls_connections_total", &l),
            handshakes + 2.0 + 1.0 + 1.0
        );
        let expiry = m.get(
            "hardkey_tls_certificate_expiry_timestamp_seconds",
            &[
                ("listener", &listener),
                ("name", "localhost"),
                ("serial", &serial),
            ],
        );
        assert_eq!(expiry, m.not_after, "{stack}");
        let ticks = m.check_histogram("hardkey_tls_event_loop_stall_seconds", &l);
        assert!(ticks > 0.0, "{stack}: the stall ticker never ran");

        // The device: one signature per handshake and the startup probe; the failed ones
        // ran too, the recovered one counts once.
        let sign = [
            ("device", device.as_str()),
            ("op", "sign"),
            ("scheme", "ecdsa-p256-sha256"),
        ];
        let signed = handshakes + 1.0;
        assert_eq!(m.get("hardkey_device_operations_total", &sign), signed);
        let failures = |kind| {
            m.get(
                "hardkey_device_failures_total",
                &[sign[0], sign[1], sign[2], ("kind", kind)],
            )
        };
        assert_eq!(failures("backend"), 2.0, "{stack}");
        assert_eq!(
            m.sum("hardkey_device_failures_total", &[("device", &device)]),
            2.0,
            "{stack}"
        );
        for histogram in [
            "hardkey_device_service_seconds",
            "hardkey_device_latency_seconds",
        ] {
            assert_eq!(
                m.check_histogram(histogram, &sign),
                signed + 2.0,
                "{stack}: {histogram}"
            );
        }
        let d = [("device", device.as_str())];
        assert_eq!(m.get("hardkey_device_lost_total", &d), 1.0);
        assert_eq!(m.get("hardkey_device_recoveries_total", &d), 1.0);
        assert_eq!(m.get("hardkey_device_retries_total", &d), 1.0);
        assert_eq!(m.get("hardkey_device_queued", &d), 0.0);
        assert_eq!(m.get("hardkey_device_in_flight", &d), 0.0);
        let workers = m.get("hardkey_device_workers", &d);
        assert_eq!(workers, 4.0, "serve's default sessions");
        assert_eq!(m.get("hardkey_device_healthy_workers", &d), workers);
        // No secret in any label: the PIN is nowhere in the text.
        assert!(
            m.samples.iter().all(|(_, labels, _)| labels
                .values()
                .all(|v| !v.contains(hsm.user_pin().expose_secret()))),
            "{stack}"
        );

        let stopped = serve.stop();
        assert_eq!(stopped.stats["handshakes"], OK + 1, "{stack}");
        assert_eq!(stopped.stats["handshake_failures"], 3, "{stack}");
    }

    // An address in use is refused before anything is served.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let listen = free_addr().to_string();
    hk.fails(
        &[
            "serve",
            "--key",
            &uri,
            "--cert",
            &cert,
            "--listen",
            &listen,
            "--metrics",
            &taken,
        ],
        2,
        &["cannot serve metrics on", &taken, "--metrics"],
    );
    hk.ok(&["delete", &uri, "--yes"]);
}

/// After a reload to a new certificate, the expiry gauge of the new one is its notAfter, and
/// the replaced one's reads NaN (the facade cannot remove a series): an expiry alert stops
/// firing for a certificate no longer served.
fn expiry_gauges_follow_a_reload() {
    let hk = Hardkey::new();
    hk.ok(&["keygen", "file:k.pem"]);
    let old = selfsign_localhost(&hk, "file:k.pem", "old.crt", &[]);
    std::fs::copy(hk.path(&old), hk.path("live.crt")).unwrap();
    let serial = |cert: &str| {
        common::tool(
            "openssl",
            &["x509", "-in", cert, "-noout", "-serial"],
            hk.dir.path(),
        )
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase()
    };
    for stack in ["boring", "rustls"] {
        let new = selfsign_localhost(&hk, "file:k.pem", &format!("new-{stack}.crt"), &[]);
        std::fs::copy(hk.path(&old), hk.path("live.crt")).unwrap();
        let metrics = free_addr();
        let metrics_text = metrics.to_string();
        let serve = Serve::start_with(
            &hk,
            &[
                "--key",
                "file:k.pem",
                "--cert",
                "live.crt",
                "--watch-interval",
                "0s",
                "--metrics",
                &metrics_text,
            ],
            stack,
        );
        let listener = serve.addr().to_string();
        let gauge = |m: &Scrape, serial: &str| {
            m.get(
                "hardkey_tls_certificate_expiry_timestamp_seconds",
                &[
                    ("listener", &listener),
                    ("name", "localhost"),
                    ("serial", serial),
                ],
            )
        };
        let before = scrape(&hk, metrics, &old);
        assert_eq!(gauge(&before, &serial(&old)), before.not_after, "{stack}");
        std::fs::copy(hk.path(&new), hk.path("live.crt")).unwrap();
        serve.hangup();
        serve.wait_for_log(&["reloaded 1 certificate chain"], 1);
        let after = scrape(&hk, metrics, &new);
        assert_eq!(gauge(&after, &serial(&new)), after.not_after, "{stack}");
        assert!(
            gauge(&after, &serial(&old)).is_nan(),
            "{stack}: the replaced one"
        );
        serve.stop();
    }
}

fn main() -> ExitCode {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1); // one shim control file
    let start = || {
        let hsm = SoftHsm::start();
        let shim = FaultShim::start(&hsm);
        Env { hsm, shim }
    };
    run_on(&args, start, |env: &Arc<Env>| {
        let env = Arc::clone(env);
        vec![
            Trial::test("counters_match_the_work_done", move || {
                counters_match_the_work_done(&env);
                Ok(())
            }),
            Trial::test("expiry_gauges_follow_a_reload", || {
                expiry_gauges_follow_a_reload();
                Ok(())
            }),
        ]
    })
}
