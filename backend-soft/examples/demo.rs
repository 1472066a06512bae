//! `make demo`: a tour of hardkey's async key API on software keys.
//!
//! 1. generate a P-256 key, save it as a PEM file, sign, and verify the signature twice,
//!    independently: with the `p256` crate and with the `openssl` command;
//! 2. run 100 concurrent signatures on a one-thread event loop through a key whose every
//!    operation takes 200 ms (a `Delayed` key, like a remote HSM): they finish in about one
//!    delay, not 100, and the event loop keeps ticking meanwhile;
//! 3. the same with the delay spent serially inside one worker, as on a TPM.
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "demo"
)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use hardkey_api::{
    Delayed, FileUri, GenerateRequest, KeyAlgorithm, KeyStore, KeyUri, Latency, PrivateKey,
    SharedKey, SignatureScheme,
};
use hardkey_soft::SoftStore;
use p256::ecdsa::signature::Verifier;
use p256::pkcs8::DecodePublicKey;

const SCHEME: SignatureScheme = SignatureScheme::EcdsaP256Sha256;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from("target/demo");
    std::fs::create_dir_all(&dir)?;
    let key_path = dir.join("demo-p256.pem");
    let _ = std::fs::remove_file(&key_path);

    // Starting a store starts its worker threads (for a token: logs in), which blocks: do it
    // before the event loop, not on it.
    let store = SoftStore::in_memory()?;
    // One thread runs every future below: the event loop a TLS server would have.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        println!("== 1. generate, sign, verify");
        let request = GenerateRequest::new(KeyAlgorithm::EcP256)
            .label("demo")
            .location(KeyUri::File(FileUri::new(&key_path)));
        let key = store.generate(request).await?;
        let info = key.info();
        println!(
            "key      {} ({}), id {}",
            info.display_name(),
            info.algorithm,
            info.id
        );
        println!(
            "uri      {}",
            info.uri
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        println!(
            "schemes  {:?}",
            info.signature_schemes
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
        );
        print!("{}", info.public_key.to_pem());

        let message = b"hello from hardkey";
        let sig = key.sign(SCHEME, message).await?;
        let vk = p256::ecdsa::VerifyingKey::from_public_key_der(info.public_key.der())?;
        vk.verify(message, &p256::ecdsa::Signature::from_der(&sig)?)?;
        println!(
            "signature ({} bytes, DER) verified with the p256 crate: ok",
            sig.len()
        );
        openssl_verify(&dir, &info.public_key.to_pem(), message, &sig)?;

        println!();
        println!(
            "== 2. 100 concurrent signatures, each delayed 200 ms (remote HSM), on one thread"
        );
        let delay = Duration::from_millis(200);
        let slow: SharedKey = Arc::new(Delayed::concurrent(key.clone(), Latency::Fixed(delay)));
        let (wall, max_gap) = batch(&slow, 100).await;
        println!(
            "100 signatures in {wall:.2?} ({:.1} delays); longest event-loop stall {max_gap:.2?}",
            wall.as_secs_f64() / delay.as_secs_f64()
        );

        println!();
        println!(
            "== 3. the same delay spent serially in one worker (a TPM runs one command at a time)"
        );
        let tpm_like: SharedKey = Arc::new(Delayed::serial(
            key.clone(),
            Latency::Fixed(Duration::from_millis(50)),
        )?);
        let (wall, max_gap) = batch(&tpm_like, 10).await;
        println!(
            "10 signatures at 50 ms each in {wall:.2?}: the device is the bottleneck, \
             yet the event loop's longest stall was {max_gap:.2?}"
        );

        println!();
        println!("pool: {}", store.pool().stats());
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}

/// Signs `n` messages concurrently while a ticker task measures the event loop's longest stall.
async fn batch(key: &SharedKey, n: usize) -> (Duration, Duration) {
    let max_gap_us = Arc::new(AtomicU64::new(0));
    let ticker = {
        let max_gap_us = Arc::clone(&max_gap_us);
        tokio::spawn(async move {
            let mut last = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                let gap = last.elapsed().as_micros() as u64;
                max_gap_us.fetch_max(gap, Ordering::Relaxed);
                last = Instant::now();
            }
        })
    };
    let start = Instant::now();
    let messages: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("request {i}").into_bytes())
        .collect();
    let results = join_all(messages.iter().map(|m| key.sign(SCHEME, m))).await;
    let wall = start.elapsed();
    ticker.abort();
    for (m, sig) in messages.iter().zip(results) {
        hardkey_api_verify(key, m, &sig.expect("signature"));
    }
    (
        wall,
        Duration::from_micros(max_gap_us.load(Ordering::Relaxed)),
    )
}

fn hardkey_api_verify(key: &SharedKey, message: &[u8], sig: &[u8]) {
    let vk = p256::ecdsa::VerifyingKey::from_public_key_der(key.info().public_key.der()).unwrap();
    vk.verify(message, &p256::ecdsa::Signature::from_der(sig).unwrap())
        .expect("every signature of the batch verifies");
}

/// Verifies with the openssl command line, an implementation independent of ours.
fn openssl_verify(
    dir: &std::path::Path,
    pem: &str,
    message: &[u8],
    sig: &[u8],
) -> Result<(), Box<dyn std::error::Error>> {
    let (pub_path, msg_path, sig_path) = (
        dir.join("demo-pub.pem"),
        dir.join("demo-msg.txt"),
        dir.join("demo-msg.sig"),
    );
    std::fs::write(&pub_path, pem).unwrap();
    std::fs::write(&msg_path, message).unwrap();
    std::fs::write(&sig_path, sig).unwrap();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(&pub_path)
        .arg("-signature")
        .arg(&sig_path)
        .arg(&msg_path)
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let verdict = String::from_utf8_lossy(&o.stdout);
            println!("openssl dgst -sha256 -verify: {}", verdict.trim());
            Ok(())
        }
        Ok(o) => Err(format!(
            "openssl rejected the signature: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
        .into()),
        Err(e) => {
            println!("openssl not available ({e}); skipped the openssl check");
            Ok(())
        }
    }
}
