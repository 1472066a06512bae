//! A mixed-operation soak: many keys on many devices, every operation each key serves, a
//! bounded number in flight, and every result checked by a software verifier.
//!
//! The same runner drives the soak (no errors allowed), the fault storm (typed, retryable
//! errors allowed, never a wrong result) and the cancellation run (futures dropped at random
//! points, then the pools' counters must add up).
//!
//! ```ignore
//! let keys = vec![SoakKey::new("softhsm p256", key).reopen_with(store)];
//! let report = block_on(Soak::new(keys).operations(2_000).in_flight(256).run());
//! report.assert_clean();
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::{Either, select};
use rand::rngs::{OsRng, StdRng};
use rand::{Rng, SeedableRng};
use rsa::pkcs8::DecodePublicKey;

use crate::verify::verify_signature;
use crate::{
    DecryptScheme, DynKeyStore, ErrorKind, KeyInfo, PoolStats, PrivateKey, SharedKey,
    SignatureScheme,
};

/// The size of a reliability run: `override_var` when set to a number, else `long` when
/// `HARDKEY_SOAK` is set (and not `0`: `make soak`), else `short` (`make test`).
pub fn size(short: usize, long: usize, override_var: &str) -> usize {
    if let Some(n) = std::env::var(override_var)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    if std::env::var_os("HARDKEY_SOAK").is_some_and(|v| v != "0") {
        long
    } else {
        short
    }
}

/// One key under test, and how to reach its device again.
#[derive(Clone)]
pub struct SoakKey {
    name: String,
    key: SharedKey,
    store: Option<Arc<dyn DynKeyStore>>,
    pool: Option<String>,
}

impl SoakKey {
    /// A key, named for the report (e.g. "swtpm rsa2048").
    pub fn new(name: impl Into<String>, key: SharedKey) -> Self {
        Self {
            name: name.into(),
            key,
            store: None,
            pool: None,
        }
    }

    /// Names the pool serving this key, for the report: keys with the same name share one
    /// pool. Without it, the pool's own device name is used, which two stores on one token
    /// label (through two modules) share.
    pub fn pool(mut self, name: impl Into<String>) -> Self {
        self.pool = Some(name.into());
        self
    }

    fn pool_name(&self, stats: &PoolStats) -> String {
        self.pool.clone().unwrap_or_else(|| stats.name.clone())
    }

    /// Also reopens the key by id through `store` (a device lookup whose public key and
    /// description must match the key's).
    pub fn reopen_with(mut self, store: Arc<dyn DynKeyStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The key.
    pub fn key(&self) -> &SharedKey {
        &self.key
    }

    fn operations(&self) -> Vec<Op> {
        let info = self.key.info();
        let mut ops: Vec<Op> = info
            .signature_schemes
            .iter()
            .map(|&s| Op::Sign(s))
            .collect();
        ops.extend(
            info.decrypt_schemes
                .iter()
                .filter(|s| **s == DecryptScheme::RsaOaepSha256)
                .map(|&s| Op::Decrypt(s)),
        );
        if self.store.is_some() {
            ops.push(Op::Reopen);
        }
        ops
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Sign(SignatureScheme),
    Decrypt(DecryptScheme),
    Reopen,
}

impl Op {
    fn name(self) -> String {
        match self {
            Op::Sign(s) => format!("sign {s}"),
            Op::Decrypt(s) => format!("decrypt {s}"),
            Op::Reopen => "public key and info".into(),
        }
    }
}

/// What one operation came to.
enum Outcome {
    Ok,
    Failed(ErrorKind, String),
    Wrong(String),
    Dropped,
}

/// A soak run: its keys, size and mix.
pub struct Soak {
    keys: Vec<SoakKey>,
    operations: usize,
    in_flight: usize,
    seed: u64,
    drop_percent: u32,
    drop_within: Duration,
}

impl Soak {
    /// 2,000 operations, 256 in flight, a random seed, nothing dropped.
    pub fn new(keys: Vec<SoakKey>) -> Self {
        Self {
            keys,
            operations: 2_000,
            in_flight: 256,
            seed: OsRng.r#gen(),
            drop_percent: 0,
            drop_within: Duration::ZERO,
        }
    }

    /// Sets the number of operations.
    pub fn operations(mut self, n: usize) -> Self {
        self.operations = n;
        self
    }

    /// Sets how many operations are in flight at once.
    pub fn in_flight(mut self, n: usize) -> Self {
        self.in_flight = n.max(1);
        self
    }

    /// Sets the seed of the operation mix (print it to reproduce a run).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Drops `percent` of the futures at a random moment within `within` of their first poll:
    /// queued, on the device or already answered.
    pub fn drop_futures(mut self, percent: u32, within: Duration) -> Self {
        self.drop_percent = percent.min(100);
        self.drop_within = within;
        self
    }

    /// Runs every operation to its end (or its drop) and reports.
    pub async fn run(self) -> SoakReport {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut plan = Vec::with_capacity(self.operations);
        let menus: Vec<Vec<Op>> = self.keys.iter().map(SoakKey::operations).collect();
        for i in 0..self.operations {
            let k = rng.gen_range(0..self.keys.len());
            let op = menus[k][rng.gen_range(0..menus[k].len())];
            // A tenth of the dropped futures are dropped before their first poll (never
            // submitted); the rest at a uniform moment within `drop_within`.
            let drop_after = (rng.gen_range(0..100) < self.drop_percent).then(|| {
                if rng.gen_range(0..10) == 0 {
                    Duration::ZERO
                } else {
                    self.drop_within.mul_f64(rng.r#gen::<f64>())
                }
            });
            plan.push((i, k, op, drop_after, rng.r#gen::<u64>()));
        }
        let before: Vec<Option<PoolStats>> = self.keys.iter().map(|k| k.key.pool_stats()).collect();
        let started = Instant::now();
        let keys = &self.keys;
        let outcomes: Vec<(usize, Op, Outcome, bool)> = futures::stream::iter(plan)
            .map(|(i, k, op, drop_after, salt)| async move {
                let submitted = std::cell::Cell::new(false);
                let run = async {
                    // The key's futures are lazy: the first poll submits the job.
                    submitted.set(true);
                    run_op(&keys[k], op, i, salt).await
                };
                let outcome = match drop_after {
                    None => run.await,
                    // The timer is polled first: a future whose answer arrived but was not
                    // read yet is dropped too, and one whose time is zero is never polled.
                    Some(after) => {
                        match select(Box::pin(crate::timer::sleep(after)), Box::pin(run)).await {
                            Either::Left(((), _)) => Outcome::Dropped,
                            Either::Right((outcome, _)) => outcome,
                        }
                    }
                };
                (k, op, outcome, submitted.get())
            })
            .buffer_unordered(self.in_flight)
            .collect()
            .await;
        let elapsed = started.elapsed();

        let mut report = SoakReport {
            seed: self.seed,
            submitted: self.operations as u64,
            elapsed,
            ..SoakReport::default()
        };
        let mut jobs_per_key = vec![0u64; self.keys.len()];
        for (k, op, outcome, submitted) in outcomes {
            let key = &self.keys[k].name;
            // Reopening may be answered without the pool (a software store's lookup).
            if submitted && !matches!(op, Op::Reopen) {
                jobs_per_key[k] += 1;
            }
            if !submitted {
                report.never_polled += 1;
            }
            *report.by_operation.entry(op.name()).or_default() += 1;
            match outcome {
                Outcome::Ok => report.ok += 1,
                Outcome::Dropped => report.dropped += 1,
                Outcome::Failed(kind, message) => {
                    *report.failed.entry(kind).or_default() += 1;
                    if report.first_errors.len() < 5 {
                        report
                            .first_errors
                            .push(format!("{key}, {}: {message}", op.name()));
                    }
                }
                Outcome::Wrong(why) => report.wrong.push(format!("{key}, {}: {why}", op.name())),
            }
        }
        report.answered = report.ok
            + report.dropped
            + report.failed.values().sum::<u64>()
            + report.wrong.len() as u64;

        // Each operation is one job on its key's pool; keys may share a pool (one store).
        let mut pools: HashMap<String, PoolDelta> = HashMap::new();
        for (k, key) in self.keys.iter().enumerate() {
            let (Some(before), Some(after)) = (&before[k], key.key.pool_stats()) else {
                continue;
            };
            let name = key.pool_name(&after);
            let delta = pools.entry(name.clone()).or_insert_with(|| PoolDelta {
                name,
                jobs: 0,
                before: before.clone(),
                after: after.clone(),
            });
            delta.jobs += jobs_per_key[k];
        }
        report.pools = pools.into_values().collect();
        report.pools.sort_by(|a, b| a.name.cmp(&b.name));
        report
    }
}

async fn run_op(key: &SoakKey, op: Op, i: usize, salt: u64) -> Outcome {
    let info = key.key.info();
    match op {
        Op::Sign(scheme) => {
            let message = format!("soak {i} {salt:x}").into_bytes();
            match key.key.sign(scheme, &message).await {
                Ok(sig) => match verify_signature(info.public_key.der(), scheme, &message, &sig) {
                    Ok(()) => Outcome::Ok,
                    Err(e) => Outcome::Wrong(e.to_string()),
                },
                Err(e) => Outcome::Failed(e.kind(), e.to_string()),
            }
        }
        Op::Decrypt(scheme) => {
            let Ok(public) = rsa::RsaPublicKey::from_public_key_der(info.public_key.der()) else {
                return Outcome::Wrong("an RSA decryption key whose public key is not RSA".into());
            };
            let secret = salt.to_be_bytes().repeat(4);
            let Ok(ct) = public.encrypt(&mut OsRng, rsa::Oaep::new::<sha2::Sha256>(), &secret)
            else {
                return Outcome::Wrong("encrypting to the key's public key failed".into());
            };
            match key.key.decrypt(scheme, &ct).await {
                Ok(plain) if plain.as_slice() == secret.as_slice() => Outcome::Ok,
                Ok(_) => Outcome::Wrong("decrypted to another plaintext".into()),
                Err(e) => Outcome::Failed(e.kind(), e.to_string()),
            }
        }
        Op::Reopen => {
            let Some(store) = &key.store else {
                return Outcome::Wrong("no store to reopen the key with".into());
            };
            match store.dyn_open_id(&info.id).await {
                Ok(again) => same_key(info, again.info()),
                Err(e) => Outcome::Failed(e.kind(), e.to_string()),
            }
        }
    }
}

fn same_key(want: &KeyInfo, got: &KeyInfo) -> Outcome {
    if got.public_key != want.public_key {
        return Outcome::Wrong("reopened key has another public key".into());
    }
    if got.id != want.id || got.algorithm != want.algorithm {
        return Outcome::Wrong(format!(
            "reopened key differs: {} ({}) instead of {} ({})",
            got.display_name(),
            got.algorithm,
            want.display_name(),
            want.algorithm
        ));
    }
    if got.signature_schemes != want.signature_schemes {
        return Outcome::Wrong("reopened key offers other signature schemes".into());
    }
    Outcome::Ok
}

/// One pool's counters over a run, and the number of signing and decryption jobs the run
/// sent it.
#[derive(Clone, Debug)]
pub struct PoolDelta {
    /// The pool's name ([`SoakKey::pool`], or its device name).
    pub name: String,
    /// Signing and decryption jobs the run sent to this pool.
    pub jobs: u64,
    /// Its stats before the run.
    pub before: PoolStats,
    /// Its stats after the run.
    pub after: PoolStats,
}

impl PoolDelta {
    /// Jobs the pool finished over the run: completed, failed or skipped as cancelled.
    pub fn finished(&self) -> u64 {
        let (a, b) = (&self.after, &self.before);
        (a.completed - b.completed) + (a.failed - b.failed) + (a.cancelled - b.cancelled)
    }

    /// Checks that every job the run sent is accounted for once, and nothing is left queued
    /// or running (a job dropped while running is still finished by its worker, so call this
    /// once the pool is idle). Only for runs without reopening: a store may answer a lookup
    /// with or without its pool.
    pub fn assert_adds_up(&self) {
        let timed_out = self.after.timed_out - self.before.timed_out;
        let busy = self.after.rejected_busy - self.before.rejected_busy;
        assert_eq!(
            (timed_out, busy),
            (0, 0),
            "{}: jobs timed out or were refused: {}",
            self.name,
            self.after
        );
        assert_eq!(
            (self.after.queued, self.after.in_flight),
            (0, 0),
            "{}: jobs left in the pool: {}",
            self.name,
            self.after
        );
        assert_eq!(
            self.finished(),
            self.jobs,
            "{}: {} jobs sent, but the pool counts {} finished (completed + failed + \
             cancelled): {}",
            self.name,
            self.jobs,
            self.finished(),
            self.after
        );
    }
}

/// What a soak run saw.
#[derive(Debug, Default)]
pub struct SoakReport {
    /// The seed of the operation mix.
    pub seed: u64,
    /// Operations started.
    pub submitted: u64,
    /// Operations that came back (ok, failed, wrong or dropped): `submitted` if none was lost.
    pub answered: u64,
    /// Operations whose result verified.
    pub ok: u64,
    /// Operations that failed, by error kind.
    pub failed: BTreeMap<ErrorKind, u64>,
    /// The first few failures, with their messages.
    pub first_errors: Vec<String>,
    /// Operations whose result was wrong (a signature that does not verify, another
    /// plaintext, another key), with the reason.
    pub wrong: Vec<String>,
    /// Futures dropped on purpose.
    pub dropped: u64,
    /// Of those, futures dropped before their first poll (so never submitted).
    pub never_polled: u64,
    /// Operations per kind of operation.
    pub by_operation: BTreeMap<String, u64>,
    /// The pools' counters over the run.
    pub pools: Vec<PoolDelta>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl SoakReport {
    /// Operations that failed, all kinds together.
    pub fn failures(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Reads the pools' counters again (after waiting for them to be idle: a dropped future's
    /// job may still be running when the run ends).
    pub fn refresh_pools(&mut self, keys: &[SoakKey]) {
        for pool in &mut self.pools {
            let now = keys.iter().find_map(|k| {
                let stats = k.key.pool_stats()?;
                (k.pool_name(&stats) == pool.name).then_some(stats)
            });
            if let Some(now) = now {
                pool.after = now;
            }
        }
    }

    /// Checks that nothing was lost and nothing was wrong.
    pub fn assert_nothing_lost_or_wrong(&self) {
        assert_eq!(
            self.answered, self.submitted,
            "operations lost (seed {}): {self}",
            self.seed
        );
        assert!(
            self.wrong.is_empty(),
            "wrong results (seed {}): {:?}",
            self.seed,
            self.wrong
        );
    }

    /// Checks that every operation succeeded and verified.
    pub fn assert_clean(&self) {
        self.assert_nothing_lost_or_wrong();
        assert_eq!(
            self.failures(),
            0,
            "operations failed (seed {}): {self}; first: {:?}",
            self.seed,
            self.first_errors
        );
    }

    /// Checks that every failure is one of `allowed` (what a device fault may honestly give:
    /// the device unavailable, a device error, a timeout), never a misleading kind such as a
    /// missing key or a wrong PIN.
    pub fn assert_failures_only(&self, allowed: &[ErrorKind]) {
        let other: Vec<_> = self
            .failed
            .keys()
            .filter(|k| !allowed.contains(k))
            .collect();
        assert!(
            other.is_empty(),
            "failures of kinds {other:?} (seed {}): {self}; first: {:?}",
            self.seed,
            self.first_errors
        );
    }
}

impl std::fmt::Display for SoakReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = self.submitted as f64 / self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "{} operations in {:.2} s ({rate:.0}/s): {} ok, {} failed {:?}, {} wrong, {} dropped, \
             {} lost",
            self.submitted,
            self.elapsed.as_secs_f64(),
            self.ok,
            self.failures(),
            self.failed,
            self.wrong.len(),
            self.dropped,
            self.submitted - self.answered.min(self.submitted),
        )
    }
}
