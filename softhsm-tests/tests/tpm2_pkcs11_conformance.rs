//! The hardkey-api conformance suite against tpm2-pkcs11 (a second, independent PKCS#11
//! implementation) on a swtpm behind tpm2-abrmd.
//!
//! One check at a time, as the swtpm suites run: two stores of one process generating keys on
//! the same tpm2-pkcs11 token at once were seen to describe each other's new keys (tpm2-pkcs11
//! 1.9; see the README's notes on tpm2-pkcs11).

use hardkey_api::testkit::harness::{Arguments, run_on};
use softhsm_tests::{Tpm2Pkcs11, conformance_trials_with};

fn main() -> std::process::ExitCode {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    run_on(&args, Tpm2Pkcs11::start, |t| {
        conformance_trials_with(t.config().sessions(2), t.label(), 100)
    })
}
