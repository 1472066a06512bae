//! Reload without restart: a running server's certificate chains and keys are swapped while it
//! serves.
//!
//! A [`Reloader`] (from [`Server::reloader`](crate::Server::reloader) or
//! [`ServerHandle::reloader`](crate::ServerHandle::reloader)) checks a new [`Identities`] set
//! as [`Server::bind`](crate::Server::bind) checks the first one (each chain's leaf holds its
//! key's public key, each key signs, each distinct key makes a test signature unless
//! `probe_key` is off, the stack builds its acceptor from it), and only then swaps it in:
//!
//! - The server reads its current acceptor once per accepted connection. Handshakes of
//!   connections accepted after the swap use the new set; connections accepted before it
//!   (handshakes in progress, keep-alive connections) hold the old acceptor, and with it the
//!   old chains and keys, until they close.
//! - A set that fails a check is not taken: the server goes on serving the old one, and the
//!   error says why (it is also logged at `warn`, target `hardkey_tls`).
//! - Reloads run one at a time, in the order they were asked for.
//!
//! The acceptor is built on tokio's blocking pool, so a reload of many identities does not
//! stall the event loop.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use hardkey_api::{Delayed, Latency, PrivateKey, SharedKey};

use crate::error::{Error, Result};
use crate::identity::Identities;
use crate::server::{Stack, Tls, probe};

/// What a server checks and builds a set of identities with (from its
/// [`ServerConfig`](crate::ServerConfig)).
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) stack: Stack,
    pub(crate) simulate_latency: Option<Duration>,
    pub(crate) probe_key: bool,
    pub(crate) probe_timeout: Duration,
    /// The CAs client certificates must be issued by, if the server requires them.
    pub(crate) client_ca: Option<crate::TrustAnchors>,
    /// The listening address, once bound: labels the certificate expiry metrics.
    pub(crate) listener: Option<std::net::SocketAddr>,
}

/// One set of identities, ready to serve: what a connection holds from accept to close.
pub(crate) struct Serving {
    /// The acceptor, built from the identities (with simulated latency, if any).
    pub(crate) tls: Tls,
    /// The start of the test page: names the default identity's key.
    pub(crate) page_head: Arc<str>,
    /// The identities as given.
    identities: Identities,
}

/// Checks `identities` and builds what serves them, as [`Server::bind`](crate::Server::bind)
/// documents (everything but the socket).
pub(crate) async fn prepare(settings: &Settings, identities: Identities) -> Result<Serving> {
    check(settings, &identities).await?;
    // The page names the key by label or id only: its URI (module path, TCTI, token) is for
    // the operator's logs, not for every client.
    let info = identities.default_identity().key().info();
    let page_head = format!(
        "hardkey test server\nkey: {} ({})\nstack: {}{}\n{}",
        info.display_name(),
        info.algorithm,
        settings.stack,
        match settings.simulate_latency {
            Some(d) => format!(" (simulated key latency {d:?})"),
            None => String::new(),
        },
        match identities.len() {
            1 => String::new(),
            n => format!("identities: {n} (the key above is the default's)\n"),
        }
    );
    let served = match settings.simulate_latency {
        Some(delay) => identities.map_keys(|key| {
            Arc::new(Delayed::concurrent(Arc::clone(key), Latency::Fixed(delay))) as SharedKey
        }),
        None => identities.clone(),
    };
    // Building a context per identity is CPU work that grows with the set: off the event loop.
    let stack = settings.stack;
    let client_ca = settings.client_ca.clone();
    let tls = tokio::task::spawn_blocking(move || Tls::new(stack, &served, client_ca.as_ref()))
        .await
        .map_err(|_| Error::ServerThread)??;
    Ok(Serving {
        tls,
        page_head: page_head.into(),
        identities,
    })
}

/// The checks of [`prepare`] that need no acceptor: chains against keys, the stack, the probe.
async fn check(settings: &Settings, identities: &Identities) -> Result<()> {
    identities.check()?;
    if !settings.stack.is_available() {
        return Err(Error::StackNotBuilt {
            stack: settings.stack,
            feature: settings.stack.feature(),
        });
    }
    if settings.probe_key {
        // Each key once, even when it serves several chains, and at most PROBES_PER_DEVICE
        // keys of one device: what is asked is whether the device answers and signs, and a
        // server of ten thousand keys must not make ten thousand signatures (or, on a TPM,
        // load ten thousand keys) before it listens. Keys not probed sign first in a
        // handshake, whose failure is logged and answered with an internal_error alert.
        let mut probed: std::collections::HashSet<usize> = std::collections::HashSet::new();
        let mut per_device: std::collections::HashMap<String, usize> =
            std::collections::HashMap::new();
        for identity in identities.iter() {
            let seen = Arc::as_ptr(identity.key()).cast::<()>().addr();
            let device = device_of(identity.key().info());
            let count = per_device.entry(device).or_default();
            if *count < PROBES_PER_DEVICE && probed.insert(seen) {
                *count += 1;
                probe(identity.key(), settings.probe_timeout).await?;
            }
        }
    }
    Ok(())
}

/// The most keys of one device a server tests with a signature before it serves them.
pub(crate) const PROBES_PER_DEVICE: usize = 8;

/// What groups keys by device for the startup probes: the token (module and token), the TPM
/// (TCTI), software keys; a key without a URI is its own device.
fn device_of(info: &hardkey_api::KeyInfo) -> String {
    use hardkey_api::KeyUri;
    match &info.uri {
        Some(KeyUri::Pkcs11(p)) => format!(
            "pkcs11 {:?}",
            (
                p.module_path(),
                p.module_name(),
                p.token(),
                p.serial(),
                p.slot_id()
            )
        ),
        Some(KeyUri::Tpm2(t)) => format!("tpm2 {:?}", t.tcti),
        Some(KeyUri::File(_)) => "file".to_owned(),
        Some(other) => format!("{other}"),
        None => format!("key {}", info.id),
    }
}

/// The current set of a server and what replaces it.
struct Slot {
    settings: Settings,
    current: RwLock<Arc<Serving>>,
    /// Held through a whole reload, so reloads apply one at a time, in order.
    order: tokio::sync::Mutex<()>,
}

/// Swaps the certificate chains and keys of a running server (see the [module
/// documentation]). Cheap to clone; every clone reloads the same server.
///
/// [module documentation]: crate::reload
#[derive(Clone)]
pub struct Reloader {
    slot: Arc<Slot>,
}

impl Reloader {
    pub(crate) fn new(settings: Settings, serving: Serving) -> Self {
        Self {
            slot: Arc::new(Slot {
                settings,
                current: RwLock::new(Arc::new(serving)),
                order: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// What the next connection gets.
    pub(crate) fn current(&self) -> Arc<Serving> {
        Arc::clone(
            &self
                .slot
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// The identities the server offers new connections now.
    pub fn identities(&self) -> Identities {
        self.current().identities.clone()
    }

    /// Checks `identities` as a reload would (chains against keys, a test signature with
    /// each distinct key unless the server's `probe_key` is off, the acceptor built), without
    /// serving them. Runs within a tokio runtime with timers (the server's, or another).
    pub async fn check(&self, identities: &Identities) -> Result<()> {
        prepare(&self.slot.settings, identities.clone())
            .await
            .map(drop)
    }

    /// Checks `identities` and, if every check passes, serves them to every connection
    /// accepted from now on; connections already accepted finish on the set they started
    /// with. If a check fails, the server keeps serving the current set and the error says
    /// why. Runs within a tokio runtime with timers (the server's, or another).
    pub async fn reload(&self, identities: Identities) -> Result<()> {
        let _order = self.slot.order.lock().await;
        let count = identities.len();
        match prepare(&self.slot.settings, identities).await {
            Ok(serving) => {
                let old = std::mem::replace(
                    &mut *self
                        .slot
                        .current
                        .write()
                        .unwrap_or_else(PoisonError::into_inner),
                    Arc::new(serving),
                );
                if let Some(listener) = self.slot.settings.listener {
                    crate::metrics::certificates_reloaded(
                        listener,
                        &old.identities,
                        &self.current().identities,
                    );
                }
                log::info!(
                    target: "hardkey_tls",
                    "reloaded: new connections get the new set of {count} certificate chain(s)"
                );
                Ok(())
            }
            Err(e) => {
                log::warn!(
                    target: "hardkey_tls",
                    "reload refused, still serving the previous certificates: {e}"
                );
                Err(e)
            }
        }
    }
}

impl fmt::Debug for Reloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloader")
            .field("stack", &self.slot.settings.stack)
            .field("identities", &self.current().identities)
            .finish()
    }
}
