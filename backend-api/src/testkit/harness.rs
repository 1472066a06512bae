//! The pieces every `harness = false` test binary of the workspace builds its `main` from,
//! under libtest-mimic: a fixture started before any thread and dropped after the run,
//! trials made of plain functions that fail by panicking, and the conformance [`checks`] as
//! trials.
//!
//! ```ignore
//! use hardkey_api::testkit::harness::{Arguments, NamedTest, run_on, trials_on};
//!
//! fn main() -> std::process::ExitCode {
//!     let tests: [NamedTest<Device>; 1] = [("signs", signs)];
//!     run_on(&Arguments::from_args(), Device::start, |device| trials_on(device, &tests))
//! }
//! ```

use std::process::{Command, ExitCode, Output};
use std::sync::Arc;

pub use libtest_mimic::{Arguments, Trial};

use super::{Suite, checks};
use crate::{KeyAlgorithm, KeyStore};

/// The algorithms the device backends' conformance runs cover, with their module-style names.
pub const CONFORMANCE_ALGORITHMS: [(&str, KeyAlgorithm); 4] = [
    ("p256", KeyAlgorithm::EcP256),
    ("p384", KeyAlgorithm::EcP384),
    ("rsa2048", KeyAlgorithm::Rsa2048),
    ("rsa3072", KeyAlgorithm::Rsa3072),
];

/// The EdDSA algorithm the conformance runs of backends that have it add to
/// [`CONFORMANCE_ALGORITHMS`] (software keys, SoftHSM).
pub const EDDSA_CONFORMANCE_ALGORITHMS: [(&str, KeyAlgorithm); 1] =
    [("ed25519", KeyAlgorithm::Ed25519)];

/// A trial from a closure that panics on failure.
pub fn trial(name: impl Into<String>, test: impl FnOnce() + Send + 'static) -> Trial {
    Trial::test(name, move || {
        test();
        Ok(())
    })
}

/// A test of a `harness = false` binary: its name and the function run on the environment.
pub type NamedTest<E> = (&'static str, fn(&E));

/// One trial per `(name, test)`, each run on the shared environment `env` (the fixtures a
/// `harness = false` binary's `main` started).
pub fn trials_on<E: Send + Sync + 'static>(env: &Arc<E>, tests: &[NamedTest<E>]) -> Vec<Trial> {
    tests
        .iter()
        .map(|&(name, test)| {
            let env = Arc::clone(env);
            trial(name, move || test(&env))
        })
        .collect()
}

/// Every conformance check for `algorithms` as a trial, each on a fresh suite from `suite`
/// (see [`checks`]).
pub fn conformance_trials<S, F>(suite: F, algorithms: &[(&str, KeyAlgorithm)]) -> Vec<Trial>
where
    S: KeyStore,
    F: Fn() -> Suite<S> + Send + Sync + 'static,
{
    checks(suite, algorithms)
        .into_iter()
        .map(|check| trial(check.name, check.run))
        .collect()
}

/// The whole `main` of a `harness = false` binary with one fixture: starts it with `start`
/// (before the harness starts any thread, for fixtures that set the environment), runs the
/// trials `make` builds on it under `args`, then drops the fixture (stopping what it started)
/// before returning the exit code.
pub fn run_on<E>(
    args: &Arguments,
    start: impl FnOnce() -> E,
    make: impl FnOnce(&Arc<E>) -> Vec<Trial>,
) -> ExitCode {
    let fixture = Arc::new(start());
    let trials = make(&fixture);
    let conclusion = libtest_mimic::run(args, trials);
    drop(fixture);
    conclusion.exit_code()
}

/// Runs `cmd` (an independent tool such as `openssl` or `pkcs11-tool`, or a prepared `hardkey`
/// command), expects success, and returns its output; on failure the panic shows the command,
/// its status, stdout and stderr. `make test` installs the tools the tests use.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (make test installs it): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd` like [`run_ok`] and returns its stdout and stderr as text.
pub fn run_ok_text(cmd: &mut Command) -> String {
    let out = run_ok(cmd);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
