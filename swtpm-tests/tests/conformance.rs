//! The hardkey-api conformance suite on swtpm, keys as TSS2 key files: once with the TPM's
//! own RSA-PSS, once with host-side PSS encoding forced (the path for TPMs whose PSS salt is
//! not the hash length).

use hardkey_tpm::PssMode;
use swtpm_tests::{conformance_trials, run};

fn main() -> std::process::ExitCode {
    run(|tpm| {
        let mut trials = conformance_trials(&tpm, |c| c);
        for t in conformance_trials(&tpm, |c| c.pss(PssMode::HostEncode)) {
            if t.name().starts_with("rsa") {
                trials.push(t.with_kind("host-pss"));
            }
        }
        trials
    })
}
