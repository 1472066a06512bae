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
use hardkey_api::{KeyStore, KeyUri, SharedKey};
use hardkey_soft::SoftStore;
use hardkey_tls::{CertChain, Server, ServerConfig, Stack};

mod demo;

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
        _ => demo::key_and_chain(&store)?,
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
