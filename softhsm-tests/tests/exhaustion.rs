//! A process out of file descriptors: SoftHSM opens its token files for every lookup and
//! operation, and with none left it finds no object at all. hardkey must call that what it
//! is (out of descriptors, retryable), never "the key was deleted", and sign again as soon as
//! descriptors are free. Its own binary: it lowers the process's RLIMIT_NOFILE.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

use std::process::ExitCode;

use futures::executor::block_on;
use hardkey_api::testkit::verify_signature;
use hardkey_api::{
    ErrorKind, GenerateRequest, KeyAlgorithm, KeyStore, PrivateKey, SignatureScheme,
};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use softhsm_tests::SoftHsm;

const SCHEME: SignatureScheme = SignatureScheme::EcdsaP256Sha256;

fn main() -> ExitCode {
    let hsm = SoftHsm::start();
    let store = hsm.store(1);
    let key = block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP256))).unwrap();
    let uri = key.info().uri.clone().unwrap();
    let sig = block_on(key.sign(SCHEME, b"before")).unwrap();
    verify_signature(key.info().public_key.der(), SCHEME, b"before", &sig).unwrap();

    // Take every descriptor left under a low limit, as a flood of connections would.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let open_now = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    setrlimit(Resource::RLIMIT_NOFILE, open_now + 32, hard).unwrap();
    let mut hoard = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hoard.push(f);
    }
    // A fresh lookup of the key (a store opening it, as a new handshake's key does).
    let err = match block_on(store.open(&uri)) {
        Ok(fresh) => block_on(fresh.sign(SCHEME, b"starved")).err(),
        Err(e) => Some(e),
    };
    let signed_starved = block_on(key.sign(SCHEME, b"starved"));
    drop(hoard);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();

    let mut failed = false;
    for (what, e) in [("open", err), ("sign", signed_starved.err())] {
        let Some(e) = e else { continue };
        let text = e.to_string();
        if e.kind() == ErrorKind::NotFound || text.contains("was deleted") {
            eprintln!("FAIL: {what} out of descriptors said the key is gone: {text}");
            failed = true;
        } else if !e.is_retryable() {
            eprintln!(
                "FAIL: {what} out of descriptors is not retryable ({:?}): {text}",
                e.kind()
            );
            failed = true;
        } else {
            eprintln!("{what} out of descriptors: {text}");
        }
    }
    // Descriptors back: the same key object and a fresh lookup both sign at once.
    let fresh = block_on(store.open(&uri)).unwrap();
    for k in [&key, &fresh] {
        let sig = block_on(k.sign(SCHEME, b"after")).unwrap();
        verify_signature(k.info().public_key.der(), SCHEME, b"after", &sig).unwrap();
    }
    if failed {
        return ExitCode::FAILURE;
    }
    eprintln!("test out_of_descriptors_is_not_a_deleted_key ... ok");
    ExitCode::SUCCESS
}
