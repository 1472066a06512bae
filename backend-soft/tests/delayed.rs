//! `Delayed`: concurrent delays overlap on one thread; serial delays queue up; requests the
//! key refuses are not delayed.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use hardkey_api::testkit::verify_signature;
use hardkey_api::{
    Delayed, ErrorKind, GenerateRequest, KeyAlgorithm, KeyStore, Latency, PrivateKey, SharedKey,
    SignatureScheme,
};
use hardkey_soft::{SoftKey, SoftStore};

const SCHEME: SignatureScheme = SignatureScheme::EcdsaP256Sha256;

fn key() -> SoftKey {
    let store = SoftStore::in_memory().unwrap();
    futures::executor::block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP256))).unwrap()
}

#[test]
fn concurrent_delays_overlap_on_a_single_thread() {
    let delay = Duration::from_millis(100);
    let key: SharedKey = Arc::new(Delayed::concurrent(key(), Latency::Fixed(delay)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let messages: Vec<Vec<u8>> = (0..100).map(|i| vec![i as u8; 10]).collect();
    let start = Instant::now();
    let sigs = rt.block_on(join_all(messages.iter().map(|m| key.sign(SCHEME, m))));
    let wall = start.elapsed();
    for (m, sig) in messages.iter().zip(sigs) {
        verify_signature(key.info().public_key.der(), SCHEME, m, &sig.unwrap()).unwrap();
    }
    // Serially this would take 100 delays (10 s); overlapping, about one. The bound is loose
    // because the machine is shared: it only has to tell "one delay" from "a hundred".
    assert!(wall >= delay, "finished before the delay: {wall:?}");
    assert!(wall < delay * 30, "delays did not overlap: {wall:?}");
}

#[test]
fn serial_delays_queue_up_one_at_a_time() {
    let delay = Duration::from_millis(40);
    let key = Delayed::serial(key(), Latency::Fixed(delay)).unwrap();
    let start = Instant::now();
    let sigs = futures::executor::block_on(join_all((0..5u8).map(|i| key.sign(SCHEME, &[i]))));
    assert!(sigs.iter().all(Result::is_ok));
    assert!(
        start.elapsed() >= delay * 5,
        "serial mode overlapped: {:?}",
        start.elapsed()
    );
}

#[test]
fn refused_requests_are_not_delayed() {
    let key = Delayed::concurrent(key(), Latency::Fixed(Duration::from_secs(3600)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A delayed refusal would take an hour; the bound makes it fail instead of hang.
    let bound = Duration::from_secs(30);
    rt.block_on(async {
        let err = tokio::time::timeout(bound, key.sign(SignatureScheme::RsaPssSha256, b"x"))
            .await
            .expect("refusal was delayed");
        assert_eq!(err.unwrap_err().kind(), ErrorKind::Unsupported);
        let err = tokio::time::timeout(bound, key.sign_digest(SCHEME, &[0; 31]))
            .await
            .expect("refusal was delayed");
        assert_eq!(err.unwrap_err().kind(), ErrorKind::InvalidInput);
    });
}
