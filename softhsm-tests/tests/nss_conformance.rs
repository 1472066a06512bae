//! The hardkey-api conformance suite against NSS softokn (a third PKCS#11 implementation),
//! loaded with its init string.

use hardkey_api::testkit::harness::{Arguments, run_on};
use softhsm_tests::{Nss, conformance_trials_with};

fn main() -> std::process::ExitCode {
    run_on(&Arguments::from_args(), Nss::start, |nss| {
        conformance_trials_with(nss.config().sessions(2), nss.label(), 100)
    })
}
