//! The backend conformance suite: one set of checks that every [`KeyStore`] runs against
//! itself, so the software, PKCS#11 and TPM backends are held to the same contract.
//!
//! Signatures are verified with the `rsa`, `p256`, `p384` and `ed25519-dalek` crates
//! (Ed448 with `openssl pkeyutl -verify -rawin`), independently of the backend under test. Each check runs under a plain `block_on`, which also proves that the
//! backend's futures need no particular async runtime.
//!
//! Every check is listed once, in [`checks`]; a backend's integration test (a `harness =
//! false` binary, so it can start its device before any thread) runs them all:
//!
//! ```ignore
//! fn main() -> std::process::ExitCode {
//!     let suite = || Suite::new(MyStore::open_test_device(), missing_key_uri());
//!     let trials = hardkey_api::testkit::checks(suite, &[("p256", KeyAlgorithm::EcP256)])
//!         .into_iter()
//!         .map(|c| libtest_mimic::Trial::test(c.name, move || Ok((c.run)())))
//!         .collect();
//!     libtest_mimic::run(&libtest_mimic::Arguments::from_args(), trials).exit_code()
//! }
//! ```
//!
//! The test kit reports failures by panicking, as `assert!` does.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test kit reports failures by panicking, like assert!"
)]

pub mod harness;
pub mod soak;

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::join_all;
use rand::rngs::OsRng;
use rsa::pkcs8::{DecodePublicKey, EncodePrivateKey};
use zeroize::Zeroizing;

use crate::sync::lock;
use crate::{
    DecryptScheme, ErrorKind, GenerateRequest, ImportRequest, KeyAlgorithm, KeyFamily, KeyId,
    KeyInfo, KeyStore, KeyUri, PrivateKey, SignatureScheme, encoding,
};

/// Runs a future to completion on the current thread, with no async runtime.
pub fn block_on<F: Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

pub use crate::verify::{VerifyError, verify_signature};

/// Verifies like [`verify_signature`], and Ed448 (which has no software verifier in hardkey)
/// with `openssl pkeyutl -verify -rawin`. Panics with the reason when it does not verify.
pub fn verify_independently(spki_der: &[u8], scheme: SignatureScheme, message: &[u8], sig: &[u8]) {
    if scheme != SignatureScheme::Ed448 {
        return verify_signature(spki_der, scheme, message, sig)
            .unwrap_or_else(|e| panic!("{scheme}: {e}"));
    }
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.der");
    let msg = dir.path().join("msg");
    let sigfile = dir.path().join("sig");
    std::fs::write(&key, spki_der).unwrap();
    std::fs::write(&msg, message).unwrap();
    std::fs::write(&sigfile, sig).unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-rawin", "-inkey",
        ])
        .arg(&key)
        .arg("-in")
        .arg(&msg)
        .arg("-sigfile")
        .arg(&sigfile)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl pkeyutl -verify -rawin refused the Ed448 signature: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh PKCS#8 DER private key of `alg`, made by the `rsa`/`p256`/`p384` crates, with its
/// DER SubjectPublicKeyInfo: input for import tests.
pub fn make_pkcs8(alg: KeyAlgorithm) -> (Zeroizing<Vec<u8>>, Vec<u8>) {
    use rsa::pkcs8::EncodePublicKey;
    match alg {
        KeyAlgorithm::EcP256 => {
            let k = p256::SecretKey::random(&mut OsRng);
            let der = k.to_pkcs8_der().unwrap().to_bytes().to_vec();
            let spki = k.public_key().to_public_key_der().unwrap().into_vec();
            (Zeroizing::new(der), spki)
        }
        KeyAlgorithm::EcP384 => {
            let k = p384::SecretKey::random(&mut OsRng);
            let der = k.to_pkcs8_der().unwrap().to_bytes().to_vec();
            let spki = k.public_key().to_public_key_der().unwrap().into_vec();
            (Zeroizing::new(der), spki)
        }
        KeyAlgorithm::Ed25519 => {
            use ed25519_dalek::pkcs8::EncodePublicKey as _;
            let k = ed25519_dalek::SigningKey::generate(&mut OsRng);
            let der = k.to_pkcs8_der().unwrap().to_bytes().to_vec();
            let spki = k.verifying_key().to_public_key_der().unwrap().into_vec();
            (Zeroizing::new(der), spki)
        }
        KeyAlgorithm::Ed448 => {
            // No Ed448 crate in the tree: OpenSSL makes the key.
            let dir = tempfile::tempdir().unwrap();
            let key = dir.path().join("ed448.der");
            let ok = std::process::Command::new("openssl")
                .args(["genpkey", "-algorithm", "ed448", "-outform", "DER", "-out"])
                .arg(&key)
                .status()
                .unwrap()
                .success();
            assert!(ok, "openssl genpkey -algorithm ed448 failed");
            let der = Zeroizing::new(std::fs::read(&key).unwrap());
            let out = std::process::Command::new("openssl")
                .args([
                    "pkey", "-inform", "DER", "-pubout", "-outform", "DER", "-in",
                ])
                .arg(&key)
                .output()
                .unwrap();
            assert!(out.status.success(), "openssl pkey -pubout failed");
            // OpenSSL writes PKCS#8 v1 (no public key), and hardkey cannot derive an Ed448
            // public key: carry it in the v2 publicKey field (RFC 5958), as a token import
            // needs it.
            let spki = out.stdout;
            let public = crate::PublicKey::from_spki_der(&spki).unwrap();
            let mut info = rsa::pkcs8::PrivateKeyInfo::try_from(der.as_slice()).unwrap();
            info.public_key = Some(public.key_bits());
            let v2 = Zeroizing::new(rsa::pkcs8::der::Encode::to_der(&info).unwrap());
            (v2, spki)
        }
        rsa_alg => {
            let k = rsa::RsaPrivateKey::new(&mut OsRng, rsa_alg.bits()).unwrap();
            let der = k.to_pkcs8_der().unwrap().to_bytes().to_vec();
            let spki = k.to_public_key().to_public_key_der().unwrap().into_vec();
            (Zeroizing::new(der), spki)
        }
    }
}

static LABELS: AtomicU64 = AtomicU64::new(0);

/// The conformance suite bound to one store.
pub struct Suite<S: KeyStore> {
    store: S,
    /// Keys this suite created and has not deleted yet: deleted when the suite is dropped, so
    /// a failing check does not leave keys (TPM persistent handles, token objects) behind.
    created: Mutex<Vec<KeyId>>,
    missing: KeyUri,
    import: bool,
    import_refused: bool,
    concurrency: usize,
    label_prefix: String,
    raw_rsa_for_decrypt: bool,
}

impl<S: KeyStore> Suite<S> {
    /// A suite for `store`; `missing` is a URI that names no key on it.
    pub fn new(store: S, missing: KeyUri) -> Self {
        Self {
            store,
            created: Mutex::new(Vec::new()),
            missing,
            import: true,
            import_refused: false,
            concurrency: 1000,
            label_prefix: format!("hk-conf-{}", std::process::id()),
            raw_rsa_for_decrypt: false,
        }
    }

    /// Makes the decryption check's key with raw RSA allowed
    /// ([`GenerateRequest::raw_rsa`]), for devices that decode OAEP on the host because they
    /// lack OAEP with SHA-256 (SoftHSM 2.6).
    pub fn raw_rsa_for_decrypt(mut self, allow: bool) -> Self {
        self.raw_rsa_for_decrypt = allow;
        self
    }

    /// Skips the import checks (for devices that cannot import private keys).
    pub fn without_import(mut self) -> Self {
        self.import = false;
        self
    }

    /// Expects imports to be refused with `Unsupported` (for devices whose store says they
    /// cannot import private keys, such as tpm2-pkcs11): the import check then asserts that
    /// clean refusal, and that nothing was left behind, instead of a round trip.
    pub fn import_refused(mut self) -> Self {
        self.import_refused = true;
        self
    }

    /// Sets how many signatures the concurrency check keeps in flight (default 1000).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// The store under test.
    pub fn store(&self) -> &S {
        &self.store
    }

    fn label(&self, what: &str) -> String {
        let n = LABELS.fetch_add(1, Ordering::Relaxed);
        format!("{}-{what}-{n}", self.label_prefix)
    }

    async fn generate(&self, alg: KeyAlgorithm, what: &str) -> S::Key {
        self.generate_with(GenerateRequest::new(alg), what).await
    }

    async fn generate_with(&self, request: GenerateRequest, what: &str) -> S::Key {
        let alg = request.algorithm;
        let label = self.label(what);
        let key = self
            .store
            .generate(request.label(label.clone()))
            .await
            .unwrap_or_else(|e| panic!("generating a {alg} key on {}: {e}", self.store.name()));
        let info = key.info();
        assert_eq!(
            info.algorithm, alg,
            "generated key reports the wrong algorithm"
        );
        assert_eq!(
            info.public_key.algorithm(),
            alg,
            "public key has the wrong algorithm"
        );
        assert_eq!(
            info.label.as_deref(),
            Some(label.as_str()),
            "label not kept"
        );
        assert!(!info.id.as_bytes().is_empty(), "key id is empty");
        lock(&self.created).push(info.id.clone());
        key
    }

    async fn cleanup(&self, info: &KeyInfo) {
        lock(&self.created).retain(|id| *id != info.id);
        self.store
            .delete(&info.id)
            .await
            .unwrap_or_else(|e| panic!("deleting test key {}: {e}", info.display_name()));
    }

    /// Generates a key, checks its description, signs with every scheme of its algorithm
    /// through `sign` and `sign_digest`, and verifies each signature independently.
    pub async fn sign_and_verify(&self, alg: KeyAlgorithm) {
        let key = self.generate(alg, "sign").await;
        let info = key.info().clone();
        // A device may offer fewer schemes than the algorithm allows (a TPM whose PSS salt
        // differs, say), never none and never others.
        assert!(
            !info.signature_schemes.is_empty(),
            "a {alg} key offers no scheme"
        );
        for scheme in &info.signature_schemes {
            assert!(
                alg.signature_schemes().contains(scheme),
                "{alg} key offers {scheme}"
            );
        }
        for &scheme in alg.signature_schemes() {
            if !info.supports(scheme) {
                let err = key.sign(scheme, b"x").await.unwrap_err();
                assert_eq!(
                    err.kind(),
                    ErrorKind::Unsupported,
                    "{scheme} not offered: {err}"
                );
            }
        }
        for scheme in info.signature_schemes.clone() {
            let message = format!("hardkey conformance: {scheme}").into_bytes();
            let sig = key
                .sign(scheme, &message)
                .await
                .unwrap_or_else(|e| panic!("{scheme} sign failed: {e}"));
            verify_independently(info.public_key.der(), scheme, &message, &sig);

            let Some(hash) = scheme.hash() else {
                // EdDSA: the device sees the message itself; a digest is refused as such,
                // whatever its length, before it reaches the device.
                for digest in [vec![0u8; 32], vec![0u8; 64], Vec::new()] {
                    let err = key.sign_digest(scheme, &digest).await.unwrap_err();
                    assert_eq!(
                        err.kind(),
                        ErrorKind::InvalidInput,
                        "{scheme} digest: {err}"
                    );
                }
                let sig = key
                    .sign_message(scheme, &message)
                    .await
                    .unwrap_or_else(|e| panic!("{scheme} sign_message failed: {e}"));
                verify_independently(info.public_key.der(), scheme, &message, &sig);
                // The empty message and a long one (TLS 1.3 CertificateVerify is ~130 bytes,
                // a CSR a few hundred; this is more than one device buffer of some tokens).
                // (openssl 3.0's pkeyutl cannot read an empty message: the empty one is left
                // out for Ed448, which only openssl verifies.)
                let empty = (scheme != SignatureScheme::Ed448).then(Vec::new);
                for m in empty.into_iter().chain([vec![0xa5; 70_000]]) {
                    let sig = key.sign(scheme, &m).await.unwrap();
                    verify_independently(info.public_key.der(), scheme, &m, &sig);
                }
                continue;
            };
            let err = key.sign_message(scheme, &message).await.unwrap_err();
            assert_eq!(
                err.kind(),
                ErrorKind::InvalidInput,
                "{scheme} message: {err}"
            );
            let digest = encoding::digest(hash, &message);
            let sig = key
                .sign_digest(scheme, &digest)
                .await
                .unwrap_or_else(|e| panic!("{scheme} sign_digest failed: {e}"));
            verify_independently(info.public_key.der(), scheme, &message, &sig);

            let short = &digest[..digest.len() - 1];
            let err = key.sign_digest(scheme, short).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "short digest: {err}");
        }
        self.cleanup(&info).await;
    }

    /// Asks a key for every scheme its algorithm cannot do and expects `Unsupported`.
    pub async fn unsupported_schemes(&self, alg: KeyAlgorithm) {
        let key = self.generate(alg, "unsupported").await;
        for scheme in SignatureScheme::ALL {
            if alg.signature_schemes().contains(&scheme) {
                continue;
            }
            let err = key.sign(scheme, b"x").await.unwrap_err();
            assert_eq!(
                err.kind(),
                ErrorKind::Unsupported,
                "{alg} with {scheme}: {err}"
            );
        }
        if alg.family() != KeyFamily::Rsa {
            let err = key
                .decrypt(DecryptScheme::RsaOaepSha256, &[0; 32])
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unsupported, "EC decrypt: {err}");
        }
        self.cleanup(key.info()).await;
    }

    /// RSA only: OAEP-SHA-256 decryption of a ciphertext made by the `rsa` crate; legacy
    /// PKCS#1 v1.5 refused by default; wrong ciphertext length refused.
    pub async fn decrypt_round_trip(&self, alg: KeyAlgorithm) {
        if alg.family() != KeyFamily::Rsa {
            return;
        }
        let request = GenerateRequest::new(alg).raw_rsa(self.raw_rsa_for_decrypt);
        let key = self.generate_with(request, "decrypt").await;
        let public = rsa::RsaPublicKey::from_public_key_der(key.info().public_key.der()).unwrap();
        let secret = b"pre-master secret, 48 bytes long, for the test!!";
        let ct = public
            .encrypt(&mut OsRng, rsa::Oaep::new::<sha2::Sha256>(), secret)
            .unwrap();
        let plain = key
            .decrypt(DecryptScheme::RsaOaepSha256, &ct)
            .await
            .unwrap_or_else(|e| panic!("OAEP decrypt failed: {e}"));
        assert_eq!(plain.as_slice(), secret.as_slice(), "OAEP round trip");

        let legacy = public
            .encrypt(&mut OsRng, rsa::Pkcs1v15Encrypt, secret)
            .unwrap();
        let err = key
            .decrypt(DecryptScheme::RsaPkcs1v15Legacy, &legacy)
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::Unsupported,
            "legacy decrypt must be opt-in: {err}"
        );

        let err = key
            .decrypt(DecryptScheme::RsaOaepSha256, &ct[1..])
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::InvalidInput,
            "short ciphertext: {err}"
        );
        self.cleanup(key.info()).await;
    }

    /// Keeps `concurrency` signatures in flight at once; every one must verify.
    pub async fn concurrent_signs(&self, alg: KeyAlgorithm) {
        let key = self.generate(alg, "concurrent").await;
        let scheme = key.info().signature_schemes[0];
        let messages: Vec<Vec<u8>> = (0..self.concurrency)
            .map(|i| format!("message {i}").into_bytes())
            .collect();
        let futures = messages.iter().map(|m| key.sign(scheme, m));
        let sigs = join_all(futures).await;
        for (i, (m, sig)) in messages.iter().zip(sigs).enumerate() {
            let sig = sig.unwrap_or_else(|e| panic!("concurrent sign {i} failed: {e}"));
            verify_independently(key.info().public_key.der(), scheme, m, &sig);
        }
        self.cleanup(key.info()).await;
    }

    /// Starts 500 signatures, drops their futures mid-flight, then checks that later
    /// operations all succeed (no leaked slot, session or handle; no stuck worker).
    pub async fn dropped_futures(&self, alg: KeyAlgorithm) {
        let key = self.generate(alg, "dropped").await;
        let scheme = key.info().signature_schemes[0];
        for i in 0..500u32 {
            let mut fut = Box::pin(key.sign(scheme, &i.to_be_bytes()));
            // Poll once so the job is queued (or running), then drop it.
            let _ = futures::poll!(fut.as_mut());
            drop(fut);
        }
        let later = (0..100u32).map(|i| key.sign(scheme, &i.to_le_bytes()));
        for (i, sig) in join_all(later).await.into_iter().enumerate() {
            let sig = sig.unwrap_or_else(|e| panic!("sign after drops {i} failed: {e}"));
            verify_independently(
                key.info().public_key.der(),
                scheme,
                &(i as u32).to_le_bytes(),
                &sig,
            );
        }
        if let Some(stats) = key.pool_stats() {
            // Each future was dropped right after queuing its job, long before a worker could
            // wake for it; the queue is FIFO, so by now every dropped job has been dequeued and
            // the pool must have skipped most of them rather than run them.
            assert!(
                stats.cancelled > 0,
                "none of 500 dropped jobs was skipped: {stats}"
            );
        }
        self.cleanup(key.info()).await;
    }

    /// Opens a generated key again by id and (if it has one) by URI; both give the same key.
    pub async fn reopen(&self, alg: KeyAlgorithm) {
        let key = self.generate(alg, "reopen").await;
        let info = key.info().clone();
        let mut reopened = vec![self.store.open_id(&info.id).await.unwrap()];
        if let Some(uri) = &info.uri {
            reopened.push(
                self.store
                    .open(uri)
                    .await
                    .unwrap_or_else(|e| panic!("reopening {uri}: {e}")),
            );
        }
        for again in reopened {
            assert_eq!(again.info().id, info.id);
            assert_eq!(again.info().public_key, info.public_key);
            let scheme = key.info().signature_schemes[0];
            let sig = again.sign(scheme, b"reopened").await.unwrap();
            verify_independently(info.public_key.der(), scheme, b"reopened", &sig);
        }
        self.cleanup(&info).await;
    }

    /// Imports a PKCS#8 key made elsewhere; its public key and signatures must match.
    pub async fn import_pkcs8(&self, alg: KeyAlgorithm) {
        if !self.import {
            return;
        }
        let (pkcs8, spki) = make_pkcs8(alg);
        if self.import_refused {
            let before = self.store.list().await.unwrap().len();
            let err = self
                .store
                .import(ImportRequest::new(pkcs8).label(self.label("import")))
                .await
                .err()
                .unwrap_or_else(|| panic!("{} imported a {alg} key", self.store.name()));
            assert_eq!(err.kind(), ErrorKind::Unsupported, "refused import: {err}");
            let after = self.store.list().await.unwrap().len();
            assert_eq!(before, after, "a refused import left a key behind");
            return;
        }
        let key = self
            .store
            .import(ImportRequest::new(pkcs8).label(self.label("import")))
            .await
            .unwrap_or_else(|e| panic!("importing a {alg} key: {e}"));
        lock(&self.created).push(key.info().id.clone());
        assert_eq!(
            key.info().public_key.der(),
            spki.as_slice(),
            "imported public key"
        );
        let scheme = key.info().signature_schemes[0];
        let sig = key.sign(scheme, b"imported").await.unwrap();
        verify_independently(&spki, scheme, b"imported", &sig);
        self.cleanup(key.info()).await;
    }

    /// Generates two keys, lists, deletes one, lists again; deleted keys cannot be opened.
    pub async fn list_and_delete(&self) {
        let alg = self.store.algorithms()[0];
        let a = self.generate(alg, "list-a").await.info().clone();
        let b = self.generate(alg, "list-b").await.info().clone();
        let listed = self.store.list().await.unwrap();
        for info in [&a, &b] {
            let found = listed
                .iter()
                .find(|i| i.id == info.id)
                .unwrap_or_else(|| panic!("list() lacks key {}", info.display_name()));
            assert_eq!(found.label, info.label);
            assert_eq!(found.algorithm, info.algorithm);
            assert_eq!(found.public_key, info.public_key);
        }
        lock(&self.created).retain(|id| *id != a.id);
        self.store.delete(&a.id).await.unwrap();
        let listed = self.store.list().await.unwrap();
        assert!(
            listed.iter().all(|i| i.id != a.id),
            "deleted key still listed"
        );
        assert!(
            listed.iter().any(|i| i.id == b.id),
            "delete removed the wrong key"
        );
        let err = self.store.delete(&a.id).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "second delete: {err}");
        let err = self.store.open_id(&a.id).await.err().unwrap();
        assert_eq!(err.kind(), ErrorKind::NotFound, "open deleted id: {err}");
        if let Some(uri) = &a.uri {
            let err = self.store.open(uri).await.err().unwrap();
            assert_eq!(err.kind(), ErrorKind::NotFound, "open deleted {uri}: {err}");
        }
        self.cleanup(&b).await;
    }

    /// A URI or id that names no key fails with `NotFound`.
    pub async fn unknown_key(&self) {
        let err = self.store.open(&self.missing).await.err().unwrap();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{}: {err}", self.missing);
        let err = self
            .store
            .open_id(&KeyId::new(*b"no such key id!!"))
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::NotFound, "unknown id: {err}");
    }

    /// Generating an algorithm the store does not list fails with `Unsupported`.
    pub async fn unsupported_algorithms(&self) {
        for alg in KeyAlgorithm::ALL {
            if self.store.algorithms().contains(&alg) {
                continue;
            }
            let err = self
                .store
                .generate(GenerateRequest::new(alg))
                .await
                .err()
                .unwrap();
            assert_eq!(
                err.kind(),
                ErrorKind::Unsupported,
                "generating {alg}: {err}"
            );
        }
    }
}

type CheckFuture<'a> = std::pin::Pin<Box<dyn Future<Output = ()> + 'a>>;

/// One named conformance check, run by a backend's `harness = false` test binary (which can
/// set up its device before any thread starts).
pub struct Check {
    /// `algorithm::check` or `store::check` (e.g. `p256::reopen_by_id_and_uri`).
    pub name: String,
    /// Runs the check; panics on failure.
    pub run: Box<dyn FnOnce() + Send>,
}

/// Every conformance check for `algorithms` (each paired with a module-style name), each run
/// on a fresh suite from `suite`.
pub fn checks<S, F>(suite: F, algorithms: &[(&str, KeyAlgorithm)]) -> Vec<Check>
where
    S: KeyStore,
    F: Fn() -> Suite<S> + Send + Sync + 'static,
{
    type Job<S> = fn(&Suite<S>, KeyAlgorithm) -> CheckFuture<'_>;
    type StoreJob<S> = fn(&Suite<S>) -> CheckFuture<'_>;
    let per_algorithm: [(&str, Job<S>); 7] = [
        ("sign_and_verify_every_scheme", |s, a| {
            Box::pin(s.sign_and_verify(a))
        }),
        ("unsupported_schemes_are_refused", |s, a| {
            Box::pin(s.unsupported_schemes(a))
        }),
        ("decrypt_round_trip", |s, a| {
            Box::pin(s.decrypt_round_trip(a))
        }),
        ("concurrent_signs_all_verify", |s, a| {
            Box::pin(s.concurrent_signs(a))
        }),
        ("dropped_futures_leave_the_device_usable", |s, a| {
            Box::pin(s.dropped_futures(a))
        }),
        ("reopen_by_id_and_uri", |s, a| Box::pin(s.reopen(a))),
        ("import_pkcs8", |s, a| Box::pin(s.import_pkcs8(a))),
    ];
    let store_level: [(&str, StoreJob<S>); 3] = [
        ("list_and_delete", |s| Box::pin(s.list_and_delete())),
        ("unknown_key_is_not_found", |s| Box::pin(s.unknown_key())),
        ("unsupported_algorithms_are_refused", |s| {
            Box::pin(s.unsupported_algorithms())
        }),
    ];
    let suite = std::sync::Arc::new(suite);
    let mut out = Vec::new();
    for &(module, alg) in algorithms {
        for (name, job) in per_algorithm {
            let suite = std::sync::Arc::clone(&suite);
            out.push(Check {
                name: format!("{module}::{name}"),
                run: Box::new(move || {
                    let s = suite();
                    block_on(job(&s, alg));
                }),
            });
        }
    }
    for (name, job) in store_level {
        let suite = std::sync::Arc::clone(&suite);
        out.push(Check {
            name: format!("store::{name}"),
            run: Box::new(move || {
                let s = suite();
                block_on(job(&s));
            }),
        });
    }
    out
}

impl<S: KeyStore> Drop for Suite<S> {
    fn drop(&mut self) {
        // Runs after a check returned or panicked, outside its executor.
        for id in std::mem::take(&mut *lock(&self.created)) {
            let _ = block_on(self.store.delete(&id));
        }
    }
}
