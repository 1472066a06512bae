//! The conformance suite through `p11-kit server` + `p11-kit-client.so`: the token's module runs
//! in another process, as a remote HSM or an isolated key process would.

use hardkey_api::uri::Pkcs11Uri;
use hardkey_pkcs11::{PinSource, Pkcs11Config};
use softhsm_tests::{P11KitServer, SoftHsm, conformance_trials};

fn main() -> std::process::ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let hsm = SoftHsm::start();
    let server = P11KitServer::start(&hsm);
    let config = Pkcs11Config::new(
        Pkcs11Uri::new().with_token(hsm.label()),
        PinSource::Value(hsm.user_pin().clone()),
    )
    .module(server.client_module())
    .sessions(2);
    let conclusion = libtest_mimic::run(&args, conformance_trials(config, hsm.label()));
    drop(server);
    drop(hsm);
    conclusion.exit_code()
}
