//! TPM key handling on swtpm: no transient-slot leaks under many keys, persistent handles,
//! the RSA-PSS path, and bad input.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test bodies in harness = false trials"
)]

use std::sync::Arc;

use futures::future::join_all;
use hardkey_api::testkit::{block_on, verify_signature};
use hardkey_api::{
    ErrorKind, GenerateRequest, KeyAlgorithm, KeyStore, KeyUri, PrivateKey, SignatureScheme,
    Tpm2Key, Tpm2Uri,
};
use hardkey_tpm::{KeyHome, TpmConfig};
use swtpm_tests::{Swtpm, open_store, run, trial};

fn key_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hardkey-tpm-keys-")
        .tempdir()
        .expect("temp dir")
}

/// 20 keys signing round-robin for 1,000 operations through 2 key slots: afterwards the TPM's
/// loaded transient handles are what they were before, and never more than its slots.
fn no_leaks_with_20_keys(tpm: &Swtpm) {
    let dir = key_dir();
    let store = open_store(tpm.config(dir.path()));
    let before = block_on(store.transient_handles()).unwrap();
    let keys: Vec<_> = (0..20)
        .map(|i| {
            block_on(
                store.generate(GenerateRequest::new(KeyAlgorithm::EcP256).label(format!("k{i}"))),
            )
            .unwrap()
        })
        .collect();
    let scheme = SignatureScheme::EcdsaP256Sha256;
    for round in 0..10 {
        let ops = (0..100).map(|i| {
            let key = keys[i % keys.len()].clone();
            async move {
                let msg = format!("round {round} op {i}");
                let sig = key.sign(scheme, msg.as_bytes()).await.unwrap();
                (key.info().public_key.der().to_vec(), msg, sig)
            }
        });
        for (spki, msg, sig) in block_on(join_all(ops)) {
            verify_signature(&spki, scheme, msg.as_bytes(), &sig).unwrap();
        }
        let during = block_on(store.transient_handles()).unwrap();
        assert!(
            during.len() <= 3,
            "more objects loaded than the TPM's slots: {during:x?}"
        );
    }
    let stats = keys[0].pool_stats().unwrap();
    // 1 + 10 handle listings, 20 generates, 1000 signatures.
    assert_eq!(stats.completed, 1 + 10 + 20 + 1000, "{stats}");
    block_on(store.flush_loaded()).unwrap();
    let after = block_on(store.transient_handles()).unwrap();
    assert_eq!(after, before, "transient handles leaked");
    drop(keys);
    store.pool().shutdown(std::time::Duration::from_secs(5));
    assert_eq!(
        raw_transient_count(tpm),
        0,
        "objects left after the store closed"
    );
}

/// Handles of a kind (`handles-transient`, `handles-persistent`) seen by an independent tool.
fn getcap_handles(tpm: &Swtpm, kind: &str) -> Vec<u32> {
    let out = std::process::Command::new("tpm2_getcap")
        .arg(kind)
        .arg(format!("--tcti={}", tpm.tcti()))
        .output()
        .expect("tpm2_getcap");
    assert!(out.status.success(), "tpm2_getcap failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- 0x"))
        .filter_map(|h| u32::from_str_radix(h, 16).ok())
        .collect()
}

fn raw_transient_count(tpm: &Swtpm) -> usize {
    getcap_handles(tpm, "handles-transient").len()
}

/// Keys kept in persistent handles: generated at the next free handle or a given one, listed,
/// opened by URI, deleted (evicted), after which the handle is free (checked with tpm2_getcap).
fn persistent_keys(tpm: &Swtpm) {
    let mut config = TpmConfig::new(tpm.tcti());
    config.home = KeyHome::Persistent;
    let store = open_store(config);
    let a = block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP384))).unwrap();
    let wanted = Tpm2Uri::new(Tpm2Key::Handle(0x8100_0123)).with_tcti(tpm.tcti());
    let b = block_on(
        store.generate(GenerateRequest::new(KeyAlgorithm::Rsa2048).location(KeyUri::Tpm2(wanted))),
    )
    .unwrap();
    assert_eq!(b.key_ref().handle(), Some(0x8100_0123));
    let a_handle = a.key_ref().handle().expect("persistent");
    assert!(persistent_handles(tpm).contains(&a_handle));
    assert!(persistent_handles(tpm).contains(&0x8100_0123));
    let listed = block_on(store.list()).unwrap();
    for key in [&a, &b] {
        let found = listed
            .iter()
            .find(|i| i.id == key.info().id)
            .expect("listed");
        assert_eq!(found.public_key, key.info().public_key);
    }
    let uri = b.info().uri.clone().unwrap();
    assert_eq!(
        uri.to_string(),
        format!("tpm2:handle=0x81000123?tcti={}", tpm.tcti())
    );
    let reopened = block_on(store.open(&uri)).unwrap();
    let scheme = SignatureScheme::RsaPssSha256;
    let sig = block_on(reopened.sign(scheme, b"persistent")).unwrap();
    verify_signature(b.info().public_key.der(), scheme, b"persistent", &sig).unwrap();
    // A handle that is taken is refused, not overwritten.
    let taken = Tpm2Uri::new(Tpm2Key::Handle(0x8100_0123));
    let err = block_on(
        store.generate(GenerateRequest::new(KeyAlgorithm::EcP256).location(KeyUri::Tpm2(taken))),
    )
    .err()
    .unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    for key in [&a, &b] {
        block_on(store.delete(&key.info().id)).unwrap();
    }
    assert!(!persistent_handles(tpm).contains(&0x8100_0123));
    assert!(!persistent_handles(tpm).contains(&a_handle));
    let err = block_on(store.open(&uri)).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    // The key handle object is gone, so signing with the stale key fails cleanly.
    let err = block_on(b.sign(scheme, b"gone")).unwrap_err();
    assert_ne!(err.kind(), ErrorKind::DeviceUnavailable, "{err}");
}

fn persistent_handles(tpm: &Swtpm) -> Vec<u32> {
    getcap_handles(tpm, "handles-persistent")
}

/// Bad input: a missing key file, a file that is not a TPM key, a key file from another TPM,
/// an empty persistent handle, a label that cannot name a file.
fn bad_input(tpm: &Swtpm) {
    let dir = key_dir();
    let store = open_store(tpm.config(dir.path()));
    let file_uri = |p: std::path::PathBuf| KeyUri::Tpm2(Tpm2Uri::new(Tpm2Key::File(p)));

    let err = block_on(store.open(&file_uri(dir.path().join("missing.pem"))))
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");

    let not_tpm = dir.path().join("soft.pem");
    std::fs::write(
        &not_tpm,
        "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = block_on(store.open(&file_uri(not_tpm))).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("TSS2 PRIVATE KEY"), "{err}");

    // A key made on another TPM: its blob does not load under this SRK.
    let other = Swtpm::start();
    let other_dir = key_dir();
    let other_store = open_store(other.config(other_dir.path()));
    let foreign =
        block_on(other_store.generate(GenerateRequest::new(KeyAlgorithm::EcP256).label("foreign")))
            .unwrap();
    let path = foreign.key_ref().file().unwrap().to_path_buf();
    drop(foreign);
    drop(other_store);
    let err = block_on(store.open(&file_uri(path))).err().unwrap();
    assert!(
        matches!(err.kind(), ErrorKind::Backend | ErrorKind::InvalidInput),
        "{err}"
    );
    assert!(err.to_string().contains("TPM2_Load"), "{err}");

    let empty = KeyUri::Tpm2(Tpm2Uri::new(Tpm2Key::Handle(0x8100_7777)));
    let err = block_on(store.open(&empty)).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");

    let err = block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP256).label("../x")))
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "files left"
    );
    // Nothing was left loaded by the failures.
    block_on(store.flush_loaded()).unwrap();
    assert!(block_on(store.transient_handles()).unwrap().is_empty());
}

/// Another client holds a slot (a TPM without resource manager): when the TPM answers
/// `TPM_RC_OBJECT_MEMORY`, hardkey flushes one of its own keys and sends the command again;
/// the caller never sees the error.
fn object_memory_is_recovered(tpm: &Swtpm) {
    use std::str::FromStr;
    let dir = key_dir();
    let config = tpm.config(dir.path());
    let store = open_store(config);
    let make = |alg, location: Option<KeyUri>| {
        let mut request = GenerateRequest::new(alg);
        if let Some(l) = location {
            request = request.location(l);
        } else {
            request = request.label(format!("om-{}", rand_label()));
        }
        block_on(store.generate(request)).unwrap()
    };
    let a = make(KeyAlgorithm::EcP256, None);
    let b = make(KeyAlgorithm::EcP256, None);
    let p = make(
        KeyAlgorithm::EcP256,
        Some(KeyUri::Tpm2(Tpm2Uri::new(Tpm2Key::Handle(0x8100_0077)))),
    );
    let scheme = SignatureScheme::EcdsaP256Sha256;
    // Another client takes one of the 3 slots and keeps it.
    let mut other =
        tss_esapi::Context::new(tss_esapi::tcti_ldr::TctiNameConf::from_str(&tpm.tcti()).unwrap())
            .unwrap();
    let foreign = other
        .execute_with_session(
            Some(tss_esapi::interface_types::session_handles::AuthSession::Password),
            |c| {
                c.create_primary(
                    tss_esapi::interface_types::resource_handles::Hierarchy::Owner,
                    tss_esapi::utils::create_unrestricted_signing_ecc_public(
                        tss_esapi::structures::EccScheme::EcDsa(
                            tss_esapi::structures::HashScheme::new(
                                tss_esapi::interface_types::algorithm::HashingAlgorithm::Sha256,
                            ),
                        ),
                        tss_esapi::interface_types::ecc::EccCurve::NistP256,
                    )
                    .unwrap(),
                    None,
                    None,
                    None,
                    None,
                )
            },
        )
        .unwrap()
        .key_handle;
    // a and b fill hardkey's two slots (a comes back from its saved context): the TPM is full.
    for key in [&a, &b, &a] {
        let sig = block_on(key.sign(scheme, b"fill")).unwrap();
        verify_signature(key.info().public_key.der(), scheme, b"fill", &sig).unwrap();
    }
    assert_eq!(block_on(store.transient_handles()).unwrap().len(), 3);
    // Using the persistent key needs a free slot: TPM_RC_OBJECT_MEMORY, recovered.
    for _ in 0..3 {
        let sig = block_on(p.sign(scheme, b"persistent")).unwrap();
        verify_signature(p.info().public_key.der(), scheme, b"persistent", &sig).unwrap();
        let sig = block_on(a.sign(scheme, b"again")).unwrap();
        verify_signature(a.info().public_key.der(), scheme, b"again", &sig).unwrap();
    }
    other.flush_context(foreign.into()).unwrap();
    drop(other);
    block_on(store.delete(&p.info().id)).unwrap();
    block_on(store.flush_loaded()).unwrap();
    assert!(block_on(store.transient_handles()).unwrap().is_empty());
}

fn rand_label() -> String {
    format!(
        "{:08x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

fn main() -> std::process::ExitCode {
    run(|tpm: Arc<Swtpm>| {
        let t = [
            Arc::clone(&tpm),
            Arc::clone(&tpm),
            Arc::clone(&tpm),
            Arc::clone(&tpm),
        ];
        let [a, b, c, d] = t;
        vec![
            trial("no_leaks_with_20_keys_round_robin", move || {
                no_leaks_with_20_keys(&a)
            }),
            trial("persistent_keys", move || persistent_keys(&b)),
            trial("bad_input", move || bad_input(&c)),
            trial("object_memory_is_recovered", move || {
                object_memory_is_recovered(&d)
            }),
        ]
    })
}
