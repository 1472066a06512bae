//! The swtpm fixture: emulators start on free ports, answer TPM commands through tss-esapi,
//! run side by side, and are gone (process and state) after drop.
#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] fns"
)]

use std::str::FromStr;

use swtpm_tests::Swtpm;
use tss_esapi::Context;
use tss_esapi::constants::CapabilityType;
use tss_esapi::structures::CapabilityData;
use tss_esapi::tcti_ldr::TctiNameConf;

fn context(tpm: &Swtpm) -> Context {
    let tcti = TctiNameConf::from_str(&tpm.tcti()).expect("valid TCTI");
    Context::new(tcti).expect("connect to swtpm")
}

/// Transient handles loaded in the TPM.
fn transient_handles(ctx: &mut Context) -> usize {
    let (data, _) = ctx
        .get_capability(CapabilityType::Handles, 0x8000_0000, 64)
        .expect("TPM2_GetCapability");
    match data {
        CapabilityData::Handles(handles) => handles.len(),
        other => panic!("unexpected capability data {other:?}"),
    }
}

#[test]
fn emulator_answers_and_starts_empty() {
    let tpm = Swtpm::start();
    let mut ctx = context(&tpm);
    let random = ctx.get_random(16).expect("TPM2_GetRandom");
    assert_eq!(random.len(), 16);
    assert_eq!(transient_handles(&mut ctx), 0);
}

#[test]
fn emulators_run_side_by_side_and_are_reaped_on_drop() {
    let (a, b) = (Swtpm::start(), Swtpm::start());
    assert_ne!(a.port(), b.port());
    for tpm in [&a, &b] {
        assert_eq!(context(tpm).get_random(8).expect("TPM2_GetRandom").len(), 8);
    }
    let (pid, state) = (a.pid(), a.state_dir().to_path_buf());
    assert!(state.exists());
    drop(a);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "swtpm {pid} still running after drop"
    );
    assert!(!state.exists(), "state directory left behind");
    assert_eq!(
        context(&b)
            .get_random(8)
            .expect("the other one still runs")
            .len(),
        8
    );
}
