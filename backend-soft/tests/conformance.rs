//! The hardkey-api conformance suite, run against software keys: every check of
//! `hardkey_api::testkit::checks`, the one list every backend runs.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

use hardkey_api::testkit::Suite;
use hardkey_api::{FileUri, KeyAlgorithm, KeyUri};
use hardkey_soft::{SoftConfig, SoftStore};
use libtest_mimic::{Arguments, Trial};

fn suite() -> Suite<SoftStore> {
    let store = SoftStore::new(SoftConfig::default().workers(2)).expect("software key store");
    let missing = KeyUri::File(FileUri::new("/nonexistent/hardkey-missing-key.pem"));
    Suite::new(store, missing)
}

fn main() -> std::process::ExitCode {
    let algorithms = [
        ("p256", KeyAlgorithm::EcP256),
        ("p384", KeyAlgorithm::EcP384),
        ("rsa2048", KeyAlgorithm::Rsa2048),
        ("rsa3072", KeyAlgorithm::Rsa3072),
    ];
    let trials = hardkey_api::testkit::checks(suite, &algorithms)
        .into_iter()
        .map(|check| {
            let run = check.run;
            Trial::test(check.name, move || {
                run();
                Ok(())
            })
        })
        .collect();
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}
