//! An axum application served on a hardware key, over HTTP/2 or HTTP/1.1, with either stack.
//!
//! ```sh
//! cargo run -p hardkey-tls --example axum -- [boring|rustls] [KEY-URI CHAIN.pem]
//! curl --cacert target/serve-example-ca.pem https://localhost:8443/
//! ```
//!
//! `KEY-URI` is a PKCS#11 key (`pkcs11:token=web;object=tls?module-path=...&pin-source=...`,
//! SoftHSM2 for instance) or a `file:` key; without one it serves a demo key in memory with a
//! certificate from a throwaway CA, whose certificate it writes to
//! `target/serve-example-ca.pem`.
#![allow(clippy::print_stdout, reason = "example")]

use std::sync::Arc;

use axum::routing::get;
use axum::{Extension, Router};
use futures::executor::block_on;
use hardkey_api::{KeyStore, KeyUri, SharedKey};
use hardkey_pkcs11::{Pkcs11Config, Pkcs11Store};
use hardkey_soft::SoftStore;
use hardkey_tls::{CertChain, Server, ServerConfig, Stack, TlsInfo};

mod demo;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let stack: Stack = args.first().map_or(Ok(Stack::default()), |s| s.parse())?;
    let soft = SoftStore::in_memory()?;
    // Opening a token logs in (blocking): before the runtime starts.
    let (key, chain): (SharedKey, CertChain) = match args.get(1..3) {
        Some([uri, chain]) => {
            let uri: KeyUri = uri.parse()?;
            let key: SharedKey = match &uri {
                KeyUri::Pkcs11(p11) => {
                    let store = Pkcs11Store::open(Pkcs11Config::from_uri(p11)?)?;
                    Arc::new(block_on(store.open(&uri))?)
                }
                _ => Arc::new(block_on(soft.open(&uri))?),
            };
            (key, CertChain::from_pem_file(chain)?)
        }
        _ => demo::key_and_chain(&soft)?,
    };

    let app = Router::new().route("/", get(hello));
    tokio::runtime::Runtime::new()?.block_on(async {
        let config = ServerConfig::new(key, chain)
            .stack(stack)
            .listen("127.0.0.1:8443".parse()?);
        let server = Server::bind(config).await?;
        println!("serving on https://localhost:8443/ ({stack}); Ctrl-C stops");
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        server.serve_with(app, ctrl_c).await;
        Ok(())
    })
}

/// The handler: each request carries its connection's TLS parameters.
async fn hello(Extension(tls): Extension<TlsInfo>) -> String {
    format!(
        "hello over {} ({}, {}) from a key that never leaves its device\n",
        tls.protocol(),
        tls.cipher(),
        tls.alpn().map_or("no ALPN".into(), String::from_utf8_lossy),
    )
}
