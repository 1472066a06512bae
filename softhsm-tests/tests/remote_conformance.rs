//! The conformance suite through `p11-kit server` + `p11-kit-client.so`: the token's module runs
//! in another process, as a remote HSM or an isolated key process would.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test code"
)]

use futures::executor::block_on;
use hardkey_api::testkit::harness::{Arguments, NamedTest, run_on, trials_on};
use hardkey_api::testkit::make_pkcs8;
use hardkey_api::uri::Pkcs11Uri;
use hardkey_api::{ErrorKind, GenerateRequest, ImportRequest, KeyAlgorithm, KeyStore};
use hardkey_pkcs11::{PinSource, Pkcs11Config, Pkcs11Store};
use softhsm_tests::{P11KitServer, SoftHsm, conformance_trials};

/// The token and the `p11-kit server` exporting it (stopped first: fields drop in order).
struct Env {
    server: P11KitServer,
    hsm: SoftHsm,
}

impl Env {
    fn config(&self) -> Pkcs11Config {
        Pkcs11Config::new(
            Pkcs11Uri::new().with_token(self.hsm.label()),
            PinSource::Value(self.hsm.user_pin().clone()),
        )
        .module(self.server.client_module())
        .sessions(2)
    }
}

/// p11-kit 0.24's RPC carries neither CKM_EC_EDWARDS_KEY_PAIR_GEN nor CKM_EDDSA (the client
/// lists neither, and `C_SignInit` with CKM_EDDSA answers CKR_MECHANISM_INVALID), though the
/// SoftHSM behind it has both. Ed25519 and Ed448 are refused before the token is asked, for
/// generate and for import: an imported key would sit on the token and never sign.
fn eddsa_is_refused_as_the_remoting_lacks_it(env: &Env) {
    let store = Pkcs11Store::open(env.config()).unwrap();
    let before = block_on(store.list()).unwrap().len();
    for alg in [KeyAlgorithm::Ed25519, KeyAlgorithm::Ed448] {
        assert!(!store.algorithms().contains(&alg), "{alg}");
        let generated = block_on(store.generate(GenerateRequest::new(alg).label("ed")));
        let (pkcs8, _) = make_pkcs8(alg);
        let imported = block_on(store.import(ImportRequest::new(pkcs8).label("ed-import")));
        for (what, result) in [("generate", generated.err()), ("import", imported.err())] {
            let err = result.unwrap_or_else(|| panic!("{what} made a {alg} key"));
            assert_eq!(err.kind(), ErrorKind::Unsupported, "{what}: {err}");
            let text = err.to_string();
            assert!(
                text.contains(&format!("does not support {alg} keys")) && text.contains("p256"),
                "{what}: {text}"
            );
        }
    }
    assert_eq!(
        block_on(store.list()).unwrap().len(),
        before,
        "a refused key was left on the token"
    );
}

fn main() -> std::process::ExitCode {
    let start = || {
        let hsm = SoftHsm::start();
        let server = P11KitServer::start(&hsm);
        Env { server, hsm }
    };
    run_on(&Arguments::from_args(), start, |env| {
        let mut trials = conformance_trials(env.config(), env.hsm.label());
        let tests: [NamedTest<Env>; 1] = [(
            "remote::eddsa_is_refused_as_the_remoting_lacks_it",
            eddsa_is_refused_as_the_remoting_lacks_it,
        )];
        trials.extend(trials_on(env, &tests));
        trials
    })
}
