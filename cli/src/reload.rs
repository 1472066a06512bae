//! `hardkey serve` reloads its certificates and keys without a restart: on SIGHUP, and when a
//! file it was configured with changes.
//!
//! A reload reads the whole configuration again (`--key`/`--cert`, the `--identities` file,
//! the `--cert-dir` listing) and then, entry by entry:
//!
//! - an entry whose key URI, chain and key file are as before keeps its opened key;
//! - a changed or new entry is opened (on the device's store already open, or a newly opened
//!   one for a device not seen yet), its chain checked against its key, and the key tested
//!   with a signature, as at startup;
//! - an entry that fails (a file that does not parse, half-written or not; a certificate for
//!   another key; an unreachable device) keeps serving what it served before and the reason is
//!   logged at `warn`; a new entry that fails is left out. The next change retries it.
//!
//! Entries are matched by their chain file's path. The new set then replaces the old one in
//! the server ([`hardkey_tls::Reloader`]): new connections get it, connections in progress
//! finish on the old one. What changed is logged at `info` (target `hardkey::reload`, shown by
//! default), with each leaf's serial number.
//!
//! Files are watched by polling their metadata (device, inode, size, modification and change
//! times, following symbolic links) every `--watch-interval`: unlike inotify watches, this
//! follows a file replaced by rename (what editors, `mv` and certbot do), a symbolic link
//! switched to another target (Kubernetes' `..data` secret volumes), and network file systems.
//! A change is taken once the files have stayed the same for one more interval, so a file
//! being written is read once it is complete, in the usual case; a file caught mid-write fails
//! to parse, keeps the old entry, and is read again at its next change.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use hardkey_api::PrivateKey;
use hardkey_tls::{CertChain, ServerHandle};

use crate::args::ServeArgs;
use crate::config::Config;
use crate::error::CliResult;
use crate::identities::{self, Loaded, Plan, Planned, Served};
use crate::target::{OpenOptions, Target};

/// The log target of reload messages.
pub(crate) const LOG_TARGET: &str = "hardkey::reload";

/// How often a retired store's last connections are looked for.
const RETIRED_CHECK: Duration = Duration::from_millis(500);

/// What wakes the watcher.
enum Event {
    /// SIGHUP: reload now, reopening every key.
    Hangup,
    /// The server stops.
    Stop,
}

/// The thread that reloads the server; [`Watcher::stop`] ends it.
pub(crate) struct Watcher<'scope> {
    events: Sender<Event>,
    thread: ScopedJoinHandle<'scope, Served>,
}

impl<'scope> Watcher<'scope> {
    /// Starts watching: SIGHUP reloads from now on, and so does a change of a configured
    /// file, polled every `interval` (`None`: not polled).
    pub(crate) fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        server: &'env ServerHandle,
        served: Served,
        setup: Setup<'env>,
        interval: Option<Duration>,
    ) -> CliResult<Self> {
        let (events, wake) = std::sync::mpsc::channel();
        let hangup = events.clone();
        crate::signals::reload_on_hangup(move || hangup.send(Event::Hangup).is_ok())?;
        let thread = scope.spawn(move || {
            let mut state = State {
                server,
                setup,
                watched: Vec::new(),
                key_stamps: HashMap::new(),
                served,
            };
            state.watched = state.watch_list(None);
            for loaded in &state.served.loaded {
                if let Some(file) = state.key_file(&loaded.planned.key) {
                    let now = stamp(&file);
                    state.key_stamps.insert(file, now);
                }
            }
            state.run(&wake, interval);
            state.served
        });
        Ok(Self { events, thread })
    }

    /// Stops watching; returns what is being served (its stores still open).
    pub(crate) fn stop(self) -> Served {
        crate::signals::no_reload_on_hangup();
        let _ = self.events.send(Event::Stop);
        match self.thread.join() {
            Ok(served) => served,
            // The thread's panic carries on here (a bug: the thread has no panicking path).
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// What a reload reads the configuration with.
pub(crate) struct Setup<'env> {
    pub(crate) args: &'env ServeArgs,
    pub(crate) config: &'env Config,
    pub(crate) options: OpenOptions,
}

/// A file's identity and version, as far as its metadata tells (`None`: missing).
type Stamp = Option<(u64, u64, u64, i64, i64, i64, i64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ))
}

struct State<'env> {
    server: &'env ServerHandle,
    setup: Setup<'env>,
    /// The files whose change triggers a reload.
    watched: Vec<PathBuf>,
    /// The stamps of key files when their keys were opened.
    key_stamps: HashMap<PathBuf, Stamp>,
    served: Served,
}

impl State<'_> {
    fn run(&mut self, wake: &Receiver<Event>, interval: Option<Duration>) {
        let mut seen = self.stamps();
        let mut pending: Option<Vec<Stamp>> = None;
        // Without polling, wake only for events, and to close retired stores.
        let tick = interval.unwrap_or(Duration::from_secs(3600));
        let mut next_poll = Instant::now() + tick;
        loop {
            self.served.devices.close_retired();
            let mut wait = next_poll.saturating_duration_since(Instant::now());
            if self.served.devices.has_retired() {
                wait = wait.min(RETIRED_CHECK);
            }
            match wake.recv_timeout(wait) {
                Ok(Event::Hangup) => {
                    log::info!(target: LOG_TARGET, "SIGHUP: reloading");
                    pending = None;
                    seen = self.reload_stamped(true);
                }
                Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) if Instant::now() >= next_poll => {
                    next_poll = Instant::now() + tick;
                    if interval.is_none() {
                        continue;
                    }
                    let now = self.stamps();
                    if now == seen {
                        pending = None;
                    } else if pending.as_ref() == Some(&now) {
                        // Unchanged for one interval: taken.
                        pending = None;
                        seen = self.reload_stamped(false);
                    } else {
                        pending = Some(now);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Reloads; returns the watched files' stamps from before the files were read (so a
    /// write during the reload is a change at the next poll), or from after, for a watch
    /// list the reload changed (a new entry, a new directory).
    fn reload_stamped(&mut self, reopen: bool) -> Vec<Stamp> {
        let list = self.watched.clone();
        let before = self.stamps();
        self.reload(reopen);
        if self.watched == list {
            before
        } else {
            self.stamps()
        }
    }

    fn stamps(&self) -> Vec<Stamp> {
        self.watched.iter().map(|p| stamp(p)).collect()
    }

    /// The files to watch: the identities file, the certificate directory, every entry's
    /// chain file and key file (of `plan`, else of what is served).
    fn watch_list(&self, plan: Option<&Plan>) -> Vec<PathBuf> {
        let a = self.setup.args;
        let mut files: Vec<PathBuf> = Vec::new();
        files.extend(a.identities.iter().cloned());
        files.extend(a.cert_dir.iter().cloned());
        files.extend(
            match plan {
                Some(plan) => plan.skipped.iter(),
                None => self.served.skipped.iter(),
            }
            .cloned(),
        );
        let entries: Vec<&Planned> = match plan {
            Some(plan) => plan.entries.iter().collect(),
            None => self.served.loaded.iter().map(|l| &l.planned).collect(),
        };
        for entry in entries {
            files.extend(entry.chain_file(self.setup.config));
            files.extend(self.key_file(&entry.key));
        }
        files.sort();
        files.dedup();
        files
    }

    /// The file of a file-based key (`file:`, `tpm2:file=`).
    fn key_file(&self, key: &str) -> Option<PathBuf> {
        Target::parse(key, self.setup.config)
            .ok()?
            .key_file()
            .map(Path::to_path_buf)
    }

    /// Reads the configuration again and serves what it names, entry by entry as the
    /// [module documentation](self) says. `reopen`: open every key again, changed or not.
    fn reload(&mut self, reopen: bool) {
        let plan = match identities::plan(self.setup.args) {
            Ok(plan) => plan,
            Err(e) => {
                log::warn!(
                    target: LOG_TARGET,
                    "not reloaded, still serving the previous certificates: {e}"
                );
                return;
            }
        };
        self.watched = self.watch_list(Some(&plan));

        // The entries served now, by chain file (the nth entry of a file matches the nth).
        let current = self.served.loaded.clone();
        let mut old: HashMap<(PathBuf, usize), &Loaded> = HashMap::new();
        let mut count: HashMap<PathBuf, usize> = HashMap::new();
        for loaded in &current {
            let n = count.entry(loaded.planned.slot()).or_default();
            old.insert((loaded.planned.slot(), *n), loaded);
            *n += 1;
        }
        let mut count: HashMap<PathBuf, usize> = HashMap::new();
        let mut next: Vec<Loaded> = Vec::with_capacity(plan.entries.len());
        let mut default = None;
        let mut changes: Vec<String> = Vec::new();
        let mut kept_old: Vec<(PathBuf, usize)> = Vec::new();
        for (index, entry) in plan.entries.iter().enumerate() {
            let n = count.entry(entry.slot()).or_default();
            let slot = (entry.slot(), *n);
            *n += 1;
            let previous = old.get(&slot).copied();
            let file = entry.shown_cert();
            match self.load(entry, previous, reopen) {
                Ok((loaded, changed)) => {
                    if changed {
                        changes.push(match previous {
                            Some(p) => format!(
                                "{file}: serial {} (was {}) on key {}",
                                serial(loaded.identity.chain()),
                                serial(p.identity.chain()),
                                entry.key_shown()
                            ),
                            None => format!(
                                "{file}: added, serial {} on key {}",
                                serial(loaded.identity.chain()),
                                entry.key_shown()
                            ),
                        });
                    }
                    kept_old.push(slot);
                    if plan.default == Some(index) {
                        default = Some(next.len());
                    }
                    next.push(loaded);
                }
                Err(e) => match previous {
                    Some(p) => {
                        log::warn!(
                            target: LOG_TARGET,
                            "{file}: {e}; still serving its previous certificate (serial {})",
                            serial(p.identity.chain())
                        );
                        kept_old.push(slot);
                        if plan.default == Some(index) {
                            default = Some(next.len());
                        }
                        let mut kept = p.clone();
                        kept.planned.default = entry.default;
                        next.push(kept);
                    }
                    None => log::warn!(
                        target: LOG_TARGET,
                        "{file}: {e}; this new entry is not served"
                    ),
                },
            }
        }
        for (slot, loaded) in &old {
            if !kept_old.contains(slot) {
                changes.push(format!(
                    "{}: removed (serial {})",
                    slot.0.display(),
                    serial(loaded.identity.chain())
                ));
            }
        }
        if plan.default.is_some() && default.is_none() {
            log::warn!(
                target: LOG_TARGET,
                "the entry marked default = true is not served: the first one is the default"
            );
        }
        if next.is_empty() {
            log::warn!(
                target: LOG_TARGET,
                "not reloaded: no entry could be served; still serving the previous certificates"
            );
            return;
        }
        let same_set = changes.is_empty()
            && next.iter().map(|l| &l.planned.cert).eq(self
                .served
                .loaded
                .iter()
                .map(|l| &l.planned.cert))
            && default == self.default_of_served()
            && plan.policy.unwrap_or_default() == self.served.identities.unknown_name_policy()
            && next.len() == self.served.loaded.len();
        if same_set && !reopen {
            log::debug!(target: LOG_TARGET, "files touched, nothing changed");
            return;
        }
        let identities = match identities::assemble(&next, default, plan.policy) {
            Ok(set) => set,
            Err(e) => {
                log::warn!(target: LOG_TARGET, "not reloaded: {e}");
                return;
            }
        };
        match self.server.reload(identities.clone()) {
            Ok(()) => {
                if changes.is_empty() {
                    log::info!(
                        target: LOG_TARGET,
                        "reloaded {} certificate chain(s), none changed",
                        next.len()
                    );
                } else {
                    log::info!(
                        target: LOG_TARGET,
                        "reloaded {} certificate chain(s): {}",
                        next.len(),
                        changes.join("; ")
                    );
                }
                let retired = self.served.devices.retire_unused(&next, self.setup.config);
                if !retired.is_empty() {
                    log::info!(
                        target: LOG_TARGET,
                        "no entry uses {} any more: closed once its connections end",
                        retired.join(", ")
                    );
                }
                self.served.skipped = plan.skipped.clone();
                let mut warnings = plan.warnings;
                warnings.extend(identities::findings(&identities, &next));
                for warning in &warnings {
                    log::warn!(target: LOG_TARGET, "{warning}");
                }
                self.served.identities = identities;
                self.served.loaded = next;
                self.served.warnings = warnings;
            }
            Err(e) => log::warn!(
                target: LOG_TARGET,
                "not reloaded, still serving the previous certificates: {}",
                crate::cmd::serve::tls_error(e)
            ),
        }
    }

    /// The index of the served entry that is the default because its entry says so.
    fn default_of_served(&self) -> Option<usize> {
        self.served.loaded.iter().position(|l| l.planned.default)
    }

    /// The entry, opened: `previous` itself if nothing changed (and not `reopen`); else
    /// opened, checked against its chain and tested with a signature. Whether it changed.
    fn load(
        &mut self,
        entry: &Planned,
        previous: Option<&Loaded>,
        reopen: bool,
    ) -> CliResult<(Loaded, bool)> {
        let setup = &self.setup;
        let chain =
            self.served
                .devices
                .chain(entry, setup.config, &setup.args.secrets, setup.options)?;
        if let Some(p) = previous.filter(|p| !reopen && p.planned.key == entry.key) {
            // A key file replaced since the key was opened: open it again.
            let same_key_file = self
                .key_file(&entry.key)
                .is_none_or(|file| self.key_stamps.get(&file) == Some(&stamp(&file)));
            if same_key_file && p.identity.chain().certs() == chain.certs() {
                let mut kept = p.clone();
                kept.planned = entry.clone();
                return Ok((kept, false));
            }
        }
        if let Some(file) = self.key_file(&entry.key) {
            let now = stamp(&file);
            self.key_stamps.insert(file, now);
        }
        let setup = &self.setup;
        let loaded = identities::load(
            entry,
            &mut self.served.devices,
            setup.config,
            &setup.args.secrets,
            setup.options,
        )?;
        // As the server checks a new set: a test signature, and the acceptor built.
        self.server
            .check(&hardkey_tls::Identities::new(loaded.identity.clone()))
            .map_err(crate::cmd::serve::tls_error)?;
        let changed = previous.is_none_or(|p| {
            p.identity.chain().certs() != loaded.identity.chain().certs()
                || p.planned.key != entry.key
                || p.identity.key().info().public_key != loaded.identity.key().info().public_key
        });
        Ok((loaded, changed))
    }
}

impl Planned {
    /// The key as messages show it: its URI without secrets.
    pub(crate) fn key_shown(&self) -> String {
        hardkey_api::uri::redact(&self.key)
    }
}

/// The serial number of the chain's leaf, in hex as `openssl x509 -serial` prints it.
pub(crate) fn serial(chain: &CertChain) -> String {
    use der::Decode;
    let Some(leaf) = chain.certs().first() else {
        return "?".to_owned();
    };
    match x509_cert::Certificate::from_der(leaf) {
        Ok(cert) => {
            let bytes = cert.tbs_certificate.serial_number.as_bytes();
            let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
            match hex::encode_upper(&bytes[start..]) {
                s if s.is_empty() => "00".to_owned(),
                s => s,
            }
        }
        Err(_) => "?".to_owned(),
    }
}
