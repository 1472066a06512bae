//! The hardkey-api conformance suite, run against software keys: every check of
//! `hardkey_api::testkit::checks`, the one list every backend runs.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

use hardkey_api::testkit::Suite;
use hardkey_api::testkit::harness::{
    Arguments, CONFORMANCE_ALGORITHMS, EDDSA_CONFORMANCE_ALGORITHMS, conformance_trials,
};
use hardkey_api::{FileUri, KeyUri};
use hardkey_soft::{SoftConfig, SoftStore};

fn suite() -> Suite<SoftStore> {
    let store = SoftStore::new(SoftConfig::default().workers(2)).expect("software key store");
    let missing = KeyUri::File(FileUri::new("/nonexistent/hardkey-missing-key.pem"));
    Suite::new(store, missing)
}

fn main() -> std::process::ExitCode {
    let algorithms = [
        &CONFORMANCE_ALGORITHMS[..],
        &EDDSA_CONFORMANCE_ALGORITHMS[..],
    ]
    .concat();
    let trials = conformance_trials(suite, &algorithms);
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}
