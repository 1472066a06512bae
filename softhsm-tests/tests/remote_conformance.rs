//! The conformance suite through `p11-kit server` + `p11-kit-client.so`: the token's module runs
//! in another process, as a remote HSM or an isolated key process would.
#![allow(clippy::expect_used, reason = "test code")]

use hardkey_api::KeyAlgorithm::{EcP256, EcP384, Rsa2048, Rsa3072};
use hardkey_api::testkit::{Suite, checks};
use hardkey_api::{KeyUri, uri::Pkcs11Uri};
use hardkey_pkcs11::{PinSource, Pkcs11Config, Pkcs11Store};
use libtest_mimic::{Arguments, Trial};
use softhsm_tests::{P11KitServer, SoftHsm};

fn main() -> std::process::ExitCode {
    let args = Arguments::from_args();
    let hsm = SoftHsm::start();
    let server = P11KitServer::start(&hsm);
    let config = Pkcs11Config::new(
        Pkcs11Uri::new().with_token(hsm.label()),
        PinSource::Value(hsm.user_pin().clone()),
    )
    .module(server.client_module())
    .sessions(2);
    let missing = KeyUri::Pkcs11(
        Pkcs11Uri::new()
            .with_token(hsm.label())
            .with_object("no-such-key"),
    );
    let suite = move || {
        let store = Pkcs11Store::open(config.clone()).expect("open the token through p11-kit");
        Suite::new(store, missing.clone())
    };
    let algorithms = [
        ("p256", EcP256),
        ("p384", EcP384),
        ("rsa2048", Rsa2048),
        ("rsa3072", Rsa3072),
    ];
    let trials = checks(suite, &algorithms)
        .into_iter()
        .map(|check| {
            let run = check.run;
            Trial::test(check.name, move || {
                run();
                Ok(())
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    drop(server);
    drop(hsm);
    conclusion.exit_code()
}
