//! The hardkey-api conformance suite against a SoftHSM2 token (token objects, two sessions).

use softhsm_tests::{conformance_trials, run};

fn main() -> std::process::ExitCode {
    run(|hsm| conformance_trials(hsm.config().sessions(2), hsm.label()))
}
