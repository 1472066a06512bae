//! What a [`Server`](crate::Server) records through the `metrics` facade, per listener (label
//! `listener`, the bound address, and `stack`): handshakes, failed handshakes by reason class,
//! accepted connections, the lateness of a periodic timer on the server's event loop (its
//! stalls), and each served certificate's expiry time. See README.md for the table.
//!
//! The handles are registered when the server binds: install a recorder before that. With none
//! installed every handle is a no-op.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use der::Decode;
use metrics::{Counter, Histogram, SharedString};

use crate::identity::Identities;
use crate::server::Stack;

/// How often the stall ticker wakes up: its lateness is the event loop's stall.
pub(crate) const STALL_TICK: Duration = Duration::from_millis(10);

/// Why a handshake failed, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailureReason {
    /// The handshake deadline passed (a silent or slow client, a slow device).
    Timeout,
    /// The private key failed to sign (the client got an internal_error alert).
    Key,
    /// The peer closed or reset the connection during the handshake.
    Closed,
    /// Anything the TLS library refused: no common protocol, cipher or scheme, an unknown
    /// server name, a malformed or non-TLS message, an alert from the client.
    Protocol,
}

impl FailureReason {
    const ALL: [FailureReason; 4] = [Self::Timeout, Self::Key, Self::Closed, Self::Protocol];

    fn name(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Key => "key",
            Self::Closed => "closed",
            Self::Protocol => "protocol",
        }
    }

    /// The class of a failed handshake's error.
    pub(crate) fn of(error: &io::Error) -> Self {
        if error
            .get_ref()
            .is_some_and(|inner| inner.is::<KeySignFailed>())
        {
            return Self::Key;
        }
        match error.kind() {
            io::ErrorKind::TimedOut => Self::Timeout,
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Self::Closed,
            _ => Self::Protocol,
        }
    }
}

/// A handshake error caused by the private key failing to sign (both stacks wrap theirs in
/// it, so that the failure is counted as [`FailureReason::Key`]).
#[derive(Debug)]
pub(crate) struct KeySignFailed(pub(crate) String);

impl std::fmt::Display for KeySignFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeySignFailed {}

/// The metrics' help texts and units.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("hardkey_tls_connections_total", "TCP connections accepted");
    describe_counter!(
        "hardkey_tls_handshakes_total",
        "TLS handshakes that succeeded"
    );
    describe_counter!(
        "hardkey_tls_handshake_failures_total",
        "TLS handshakes that failed, by reason: timeout, key (the private key failed to \
         sign), closed (the peer closed or reset), protocol (refused by the TLS library)"
    );
    describe_histogram!(
        "hardkey_tls_event_loop_stall_seconds",
        Unit::Seconds,
        "Lateness of a 10 ms timer on the server's event loop (about 1 ms is the timer's \
         own granularity)"
    );
    describe_gauge!(
        "hardkey_tls_certificate_expiry_timestamp_seconds",
        Unit::Seconds,
        "notAfter of each served certificate, in unix seconds"
    );
}

/// A listener's cached metric handles.
pub(crate) struct ListenerMetrics {
    pub(crate) connections: Counter,
    pub(crate) handshakes: Counter,
    failures: [Counter; FailureReason::ALL.len()],
    stall: Histogram,
}

impl ListenerMetrics {
    /// Registers the listener's metrics and sets the expiry gauge of each served certificate.
    pub(crate) fn new(listener: SocketAddr, stack: Stack, identities: &Identities) -> Self {
        describe();
        let listener = SharedString::from(listener.to_string());
        let stack = stack.name();
        let l = || listener.clone();
        let failures = FailureReason::ALL.map(|reason| {
            metrics::counter!(
                "hardkey_tls_handshake_failures_total",
                "listener" => l(), "stack" => stack, "reason" => reason.name()
            )
        });
        set_expiry(&listener, identities);
        Self {
            connections: metrics::counter!(
                "hardkey_tls_connections_total", "listener" => l(), "stack" => stack
            ),
            handshakes: metrics::counter!(
                "hardkey_tls_handshakes_total", "listener" => l(), "stack" => stack
            ),
            failures,
            stall: metrics::histogram!(
                "hardkey_tls_event_loop_stall_seconds", "listener" => l(), "stack" => stack
            ),
        }
    }

    /// Counts a failed handshake.
    pub(crate) fn handshake_failed(&self, reason: FailureReason) {
        let index = FailureReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(FailureReason::ALL.len() - 1);
        if let Some(counter) = self.failures.get(index) {
            counter.increment(1);
        }
    }

    /// Starts the stall ticker on the current runtime: every [`STALL_TICK`] it records how
    /// late its timer fired (0 on an idle loop, the length of the stall on one blocked by a
    /// task). Stopped when the returned guard is dropped.
    pub(crate) fn start_stall_ticker(&self) -> AbortOnDrop {
        let stall = self.stall.clone();
        AbortOnDrop(tokio::spawn(async move {
            let mut next = tokio::time::Instant::now() + STALL_TICK;
            loop {
                tokio::time::sleep_until(next).await;
                let now = tokio::time::Instant::now();
                // Timers fire on a millisecond wheel: lateness under a tick's granularity is
                // the timer's, not a stall.
                stall.record(now.saturating_duration_since(next).as_secs_f64());
                next = now + STALL_TICK;
            }
        }))
    }
}

/// Sets the expiry gauge of each certificate `identities` serve.
fn set_expiry(listener: &SharedString, identities: &Identities) {
    for identity in identities.iter() {
        if let Some((name, serial, expiry)) = leaf_expiry(identity.chain()) {
            metrics::gauge!(
                "hardkey_tls_certificate_expiry_timestamp_seconds",
                "listener" => listener.clone(), "name" => name, "serial" => serial
            )
            .set(expiry);
        }
    }
}

/// After a reload from `old` to `new`: the expiry gauges of the certificates served now, and
/// NaN for those no longer served (the `metrics` facade cannot remove a series; NaN drops out
/// of every comparison, so an expiry alert no longer fires for a replaced certificate).
pub(crate) fn certificates_reloaded(listener: SocketAddr, old: &Identities, new: &Identities) {
    let listener = SharedString::from(listener.to_string());
    let served: std::collections::HashSet<(String, String)> = new
        .iter()
        .filter_map(|i| leaf_expiry(i.chain()).map(|(name, serial, _)| (name, serial)))
        .collect();
    for identity in old.iter() {
        if let Some((name, serial, _)) = leaf_expiry(identity.chain()) {
            if !served.contains(&(name.clone(), serial.clone())) {
                metrics::gauge!(
                    "hardkey_tls_certificate_expiry_timestamp_seconds",
                    "listener" => listener.clone(), "name" => name, "serial" => serial
                )
                .set(f64::NAN);
            }
        }
    }
    set_expiry(&listener, new);
}

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The leaf's first DNS name (else its subject), serial number (hex) and notAfter (unix
/// seconds).
fn leaf_expiry(chain: &crate::CertChain) -> Option<(String, String, f64)> {
    let leaf = x509_cert::Certificate::from_der(chain.certs().first()?).ok()?;
    let tbs = leaf.tbs_certificate;
    let name = chain
        .dns_names()
        .first()
        .cloned()
        .unwrap_or_else(|| chain.subject().to_owned());
    let serial = hex_of(tbs.serial_number.as_bytes());
    let expiry = tbs.validity.not_after.to_unix_duration().as_secs_f64();
    Some((name, serial, expiry))
}

fn hex_of(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
