//! A TLS client whose client certificate's key is a hardkey key (mutual TLS), in a few lines.
//!
//! ```sh
//! cargo run -p hardkey-tls --example client -- boring|rustls HOST:PORT SERVER_NAME ca.pem \
//!     file:client.key client.pem
//! ```
//!
//! Connects to `HOST:PORT`, verifies the server's chain against `ca.pem` and its name against
//! `SERVER_NAME`, presents `client.pem` with its key, sends `GET /` and prints the response.
//! Keys on a PKCS#11 token or a TPM are opened the same way through their stores
//! (`Pkcs11Store`, `TpmStore`); `hardkey request` does that for any key URI.
#![allow(clippy::print_stdout, reason = "example")]

use std::sync::Arc;

use hardkey_api::{KeyStore, KeyUri, SharedKey};
use hardkey_soft::SoftStore;
use hardkey_tls::client::{ClientIdentity, Connector};
use hardkey_tls::{CertChain, Stack, TrustAnchors};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [stack, addr, name, ca, key, cert] = args.as_slice() else {
        return Err(
            "usage: client boring|rustls HOST:PORT SERVER_NAME CA.pem KEY_URI CERT.pem".into(),
        );
    };
    let stack: Stack = stack.parse()?;
    let store = SoftStore::in_memory()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // The identity: the certificate must hold the key's public key.
        let key: SharedKey = Arc::new(store.open(&key.parse::<KeyUri>()?).await?);
        let identity = ClientIdentity::new(key, CertChain::from_pem_file(cert)?)?;
        let connector = Connector::new(stack, Some(&identity), &TrustAnchors::from_pem_file(ca)?)?;

        // Connect, shake hands (the key signs the CertificateVerify), GET /.
        let tcp = tokio::net::TcpStream::connect(addr.as_str()).await?;
        let mut tls = connector.connect(name, tcp).await?;
        let request = format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
        tls.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        // A server closing without close_notify ends the response too.
        if let Err(e) = tls.read_to_end(&mut response).await {
            if e.kind() != std::io::ErrorKind::UnexpectedEof {
                return Err(e.into());
            }
        }
        println!("{}", String::from_utf8_lossy(&response));
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
