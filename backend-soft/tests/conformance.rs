//! The hardkey-api conformance suite, run against software keys.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

use hardkey_api::testkit::Suite;
use hardkey_api::{FileUri, KeyUri};
use hardkey_soft::{SoftConfig, SoftStore};

fn suite() -> Suite<SoftStore> {
    let store = SoftStore::new(SoftConfig::default().workers(2)).expect("software key store");
    let missing = KeyUri::File(FileUri::new("/nonexistent/hardkey-missing-key.pem"));
    Suite::new(store, missing)
}

hardkey_api::conformance_tests!(
    suite;
    p256 => EcP256,
    p384 => EcP384,
    rsa2048 => Rsa2048,
    rsa3072 => Rsa3072,
);
