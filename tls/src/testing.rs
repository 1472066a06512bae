//! Test support shared by this crate's tests and the `hardkey serve` tests of the CLI (feature
//! `testing`): a rustls client that checks what a server signed with. Not a stable API.
//!
//! [`RecordingVerifier`] verifies like rustls-webpki (chain, server name, handshake
//! signature) and remembers the scheme of the handshake signature it verified, so a test can
//! assert what the server's key signed with, independently of hardkey.
#![allow(
    clippy::expect_used,
    reason = "test support: a lock poisoned by a failed test fails the next check too"
)]

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedProtocolVersion};

/// A rustls verifier: rustls-webpki's (chain, host name, handshake signature) with its offer
/// narrowed to `offer` if given, remembering the scheme of the signature it verified.
#[derive(Debug)]
pub struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    offer: Option<Vec<SignatureScheme>>,
    verified: Mutex<Option<SignatureScheme>>,
}

impl RecordingVerifier {
    /// Verifies against the one trust anchor `ca` with `provider`'s algorithms, offering only
    /// `offer` if given (else every scheme the provider verifies).
    pub fn new(
        ca: CertificateDer<'static>,
        provider: Arc<CryptoProvider>,
        offer: Option<&[SignatureScheme]>,
    ) -> Result<Self, rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(ca)?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        Ok(Self {
            inner,
            offer: offer.map(<[SignatureScheme]>::to_vec),
            verified: Mutex::new(None),
        })
    }

    /// The scheme of the last handshake signature verified, if any.
    pub fn verified(&self) -> Option<SignatureScheme> {
        *self.verified.lock().expect("verifier lock")
    }

    fn record(&self, scheme: SignatureScheme) {
        *self.verified.lock().expect("verifier lock") = Some(scheme);
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let valid = self.inner.verify_tls12_signature(message, cert, dss)?;
        self.record(dss.scheme);
        Ok(valid)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let valid = self.inner.verify_tls13_signature(message, cert, dss)?;
        self.record(dss.scheme);
        Ok(valid)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        match &self.offer {
            Some(offer) => offer.clone(),
            None => self.inner.supported_verify_schemes(),
        }
    }
}

/// A rustls client configuration (ring provider) trusting only `ca`, speaking only `version`,
/// offering only `offer` if given, with no session resumption (every handshake is a full
/// one); and its verifier, to ask which scheme the server signed with.
pub fn recording_client_config(
    ca: CertificateDer<'static>,
    version: &'static SupportedProtocolVersion,
    offer: Option<&[SignatureScheme]>,
) -> Result<(rustls::ClientConfig, Arc<RecordingVerifier>), rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(RecordingVerifier::new(ca, Arc::clone(&provider), offer)?);
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::clone(&verifier) as Arc<dyn ServerCertVerifier>)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok((config, verifier))
}
