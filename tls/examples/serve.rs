//! A TLS server on a hardkey key, in a few lines.
//!
//! ```sh
//! cargo run -p hardkey-tls --example serve -- [boring|rustls] [DELAY_MS] [file:key.pem chain.pem]
//! curl --cacert target/serve-example-ca.pem https://localhost:8443/
//! ```
//!
//! Without a key and chain it serves a demo key with a certificate from a throwaway CA, whose
//! certificate it writes to `target/serve-example-ca.pem`. `DELAY_MS` adds that much latency
//! to every key operation.
//!
//! Keys on a PKCS#11 token or a TPM are opened the same way through their stores
//! (`Pkcs11Store`, `TpmStore`); `hardkey serve` does that for any key URI.
#![allow(clippy::print_stdout, reason = "example")]

use std::sync::Arc;
use std::time::Duration;

use futures::executor::block_on;
use hardkey_api::{GenerateRequest, KeyAlgorithm, KeyStore, KeyUri, PrivateKey, SharedKey};
use hardkey_soft::SoftStore;
use hardkey_tls::{CertChain, Server, ServerConfig, Stack};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let stack: Stack = args.first().map_or(Ok(Stack::default()), |s| s.parse())?;
    let latency = match args.get(1).map(|ms| ms.parse::<u64>()).transpose()? {
        Some(0) | None => None,
        Some(ms) => Some(Duration::from_millis(ms)),
    };
    let store = SoftStore::in_memory()?;
    let (key, chain): (SharedKey, CertChain) = match args.get(2..4) {
        Some([uri, chain]) => (
            Arc::new(block_on(store.open(&uri.parse::<KeyUri>()?))?),
            CertChain::from_pem_file(chain)?,
        ),
        _ => demo_key_and_chain(&store)?,
    };

    // The server: check the certificate against the key, probe the key, listen, serve.
    let server = Server::start(
        ServerConfig::new(key, chain)
            .stack(stack)
            .listen("127.0.0.1:8443".parse()?)
            .simulate_latency(latency),
    )?;
    println!(
        "serving on https://localhost:{} ({stack}); Ctrl-C stops",
        server.local_addr().port()
    );
    server.wait()?;
    Ok(())
}

/// A P-256 key in memory and a certificate for it from a throwaway CA (whose certificate is
/// written to `target/serve-example-ca.pem` for curl). With a real device, the key is in the
/// TPM or HSM and the certificate comes from your CA, for a CSR made with the key.
fn demo_key_and_chain(
    store: &SoftStore,
) -> Result<(SharedKey, CertChain), Box<dyn std::error::Error>> {
    use der::Decode;
    let key = block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP256).label("demo")))?;
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "hardkey example CA");
    let ca = ca.self_signed(&ca_key)?;
    std::fs::create_dir_all("target")?;
    std::fs::write("target/serve-example-ca.pem", ca.pem())?;

    struct Subject(Vec<u8>);
    impl rcgen::PublicKeyData for Subject {
        fn der_bytes(&self) -> &[u8] {
            &self.0
        }
        fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
            &rcgen::PKCS_ECDSA_P256_SHA256
        }
    }
    let spki = spki::SubjectPublicKeyInfoRef::from_der(key.info().public_key.der())?;
    let subject = Subject(spki.subject_public_key.raw_bytes().to_vec());
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?
        .signed_by(&subject, &ca, &ca_key)?;
    let chain = CertChain::from_pem(format!("{}{}", leaf.pem(), ca.pem()))?;
    Ok((Arc::new(key), chain))
}
