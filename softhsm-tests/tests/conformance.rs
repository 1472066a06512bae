//! The hardkey-api conformance suite against a SoftHSM2 token (token objects, two sessions),
//! with SoftHSM's Edwards curves (CKM_EDDSA) next to the shared algorithms.

use hardkey_api::KeyAlgorithm;
use hardkey_api::testkit::harness::{CONFORMANCE_ALGORITHMS, EDDSA_CONFORMANCE_ALGORITHMS};
use softhsm_tests::{conformance_trials_for, run};

fn main() -> std::process::ExitCode {
    let algorithms = [
        &CONFORMANCE_ALGORITHMS[..],
        &EDDSA_CONFORMANCE_ALGORITHMS[..],
        &[("ed448", KeyAlgorithm::Ed448)],
    ]
    .concat();
    run(|hsm| conformance_trials_for(hsm.config().sessions(2), hsm.label(), 1000, &algorithms))
}
