//! The BoringSSL client: a connector presenting a hardkey key's certificate through the async
//! private-key method ([`KeyMethod`]), so a handshake waiting for the device holds no thread,
//! and verifying the server against a CA file.

use ::boring::error::ErrorStack;
use ::boring::ssl::{SslConnector, SslMethod, SslSignatureAlgorithm, SslVerifyMode};
use ::boring::x509::X509;
use ::boring::x509::store::X509StoreBuilder;
use hardkey_api::PrivateKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_boring::SslStream;

use super::ClientIdentity;
use crate::boring::{KeyMethod, signing_prefs};
use crate::error::{Error, Result};
use crate::server::Stack;
use crate::trust::TrustAnchors;

/// The server signatures the client verifies, preferred first (BoringSSL's defaults).
/// `set_sigalgs_list` sets the signing and the verifying lists alike; the signing list is
/// the key's, and this puts the verifying one back.
const VERIFY_PREFS: [SslSignatureAlgorithm; 8] = [
    SslSignatureAlgorithm::ECDSA_SECP256R1_SHA256,
    SslSignatureAlgorithm::RSA_PSS_RSAE_SHA256,
    SslSignatureAlgorithm::RSA_PKCS1_SHA256,
    SslSignatureAlgorithm::ECDSA_SECP384R1_SHA384,
    SslSignatureAlgorithm::RSA_PSS_RSAE_SHA384,
    SslSignatureAlgorithm::RSA_PKCS1_SHA384,
    SslSignatureAlgorithm::RSA_PSS_RSAE_SHA512,
    SslSignatureAlgorithm::RSA_PKCS1_SHA512,
];

fn setup(what: &'static str) -> impl Fn(ErrorStack) -> Error {
    move |e| Error::TlsSetup {
        stack: Stack::Boring,
        what,
        source: Box::new(e),
    }
}

/// A BoringSSL connector: TLS 1.2 and 1.3, the server's chain verified against `roots` only
/// (not the system's CAs) and its name checked by [`connect`], ALPN `http/1.1`; with
/// `identity`, its chain is the client certificate and its key signs the CertificateVerify
/// through [`KeyMethod`], with signing preferences limited to the key's schemes.
pub fn connector(identity: Option<&ClientIdentity>, roots: &TrustAnchors) -> Result<SslConnector> {
    let mut builder = SslConnector::builder(SslMethod::tls()).map_err(setup("client context"))?;
    let mut store = X509StoreBuilder::new().map_err(setup("CA store"))?;
    for der in roots.certs() {
        let cert = X509::from_der(der).map_err(setup("CA certificate"))?;
        store.add_cert(cert).map_err(setup("CA store"))?;
    }
    // Replaces the default paths SslConnector::builder loaded, for verification.
    builder
        .set_verify_cert_store(store.build())
        .map_err(setup("CA store"))?;
    builder.set_verify(SslVerifyMode::PEER);
    builder
        .set_alpn_protos(b"\x08http/1.1")
        .map_err(setup("ALPN"))?;
    if let Some(identity) = identity {
        let key = identity.key();
        let mut certs = identity.chain().certs().iter();
        if let Some(leaf) = certs.next() {
            let leaf = X509::from_der(leaf).map_err(setup("client certificate"))?;
            builder
                .set_certificate(&leaf)
                .map_err(setup("client certificate"))?;
        }
        for issuer in certs {
            let issuer = X509::from_der(issuer).map_err(setup("issuer certificate"))?;
            builder
                .add_extra_chain_cert(issuer)
                .map_err(setup("issuer certificate"))?;
        }
        builder
            .set_sigalgs_list(&signing_prefs(key.info()))
            .map_err(setup("signature algorithms"))?;
        builder
            .set_verify_algorithm_prefs(&VERIFY_PREFS)
            .map_err(setup("signature algorithms"))?;
        builder.set_async_private_key_method(KeyMethod::new(std::sync::Arc::clone(key)));
    }
    Ok(builder.build())
}

/// Runs a client handshake on `stream` with `tokio_boring`, sending `server_name` as SNI and
/// checking the server's certificate against it. The error says why the handshake failed
/// (BoringSSL's reason, and the certificate verification result when the server's chain
/// did not verify).
pub async fn connect<S>(
    connector: &SslConnector,
    server_name: &str,
    stream: S,
) -> std::io::Result<SslStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = connector.configure().map_err(std::io::Error::other)?;
    match tokio_boring::connect(config, server_name, stream).await {
        Ok(stream) => Ok(stream),
        Err(e) => {
            let verify = e.ssl().and_then(|ssl| ssl.verify_result().err());
            Err(std::io::Error::other(match verify {
                Some(failure) => format!(
                    "{e} (the server's certificate did not verify: {})",
                    failure.error_string()
                ),
                None => e.to_string(),
            }))
        }
    }
}
