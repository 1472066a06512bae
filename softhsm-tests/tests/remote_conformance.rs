//! The conformance suite through `p11-kit server` + `p11-kit-client.so`: the token's module runs
//! in another process, as a remote HSM or an isolated key process would.

use hardkey_api::testkit::harness::{Arguments, run_on};
use hardkey_api::uri::Pkcs11Uri;
use hardkey_pkcs11::{PinSource, Pkcs11Config};
use softhsm_tests::{P11KitServer, SoftHsm, conformance_trials};

/// The token and the `p11-kit server` exporting it (stopped first: fields drop in order).
struct Env {
    server: P11KitServer,
    hsm: SoftHsm,
}

fn main() -> std::process::ExitCode {
    let start = || {
        let hsm = SoftHsm::start();
        let server = P11KitServer::start(&hsm);
        Env { server, hsm }
    };
    run_on(&Arguments::from_args(), start, |env| {
        let config = Pkcs11Config::new(
            Pkcs11Uri::new().with_token(env.hsm.label()),
            PinSource::Value(env.hsm.user_pin().clone()),
        )
        .module(env.server.client_module())
        .sessions(2);
        conformance_trials(config, env.hsm.label())
    })
}
