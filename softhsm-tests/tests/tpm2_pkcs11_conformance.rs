//! The hardkey-api conformance suite against tpm2-pkcs11 (a second, independent PKCS#11
//! implementation) on a swtpm behind tpm2-abrmd.
//!
//! One check at a time (unless `--test-threads` says otherwise), as the swtpm suites run: with
//! two stores of one process working on the same tpm2-pkcs11 1.9 token at once, a key one of
//! them generates can come back described as the other's key, which is then not found (see the
//! README's notes on tpm2-pkcs11; `-- --test-threads=2` shows it).

use hardkey_api::testkit::harness::{Arguments, run_on};
use softhsm_tests::{Tpm2Pkcs11, conformance_trials_with};

fn main() -> std::process::ExitCode {
    let mut args = Arguments::from_args();
    args.test_threads = args.test_threads.or(Some(1));
    run_on(&args, Tpm2Pkcs11::start, |t| {
        conformance_trials_with(t.config().sessions(2), t.label(), 100)
    })
}
