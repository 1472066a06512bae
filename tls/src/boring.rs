//! The BoringSSL adapter: an [`AsyncPrivateKeyMethod`] over any hardkey key.
//!
//! BoringSSL asks the private-key method to sign (or decrypt) and accepts "not yet" for an
//! answer: the method returns a future, the handshake returns `WouldBlock`, and tokio-boring
//! resumes it when the future's waker fires. Here that future is the hardkey device future,
//! which completes on the device's worker threads. So a handshake waiting for a TPM or an
//! HSM costs no thread at all: one event-loop thread keeps serving every other connection,
//! and 100 handshakes on a 200 ms key take about 200 ms together.
//!
//! BoringSSL hands over the whole message to sign (not a digest) and wants ECDSA signatures in
//! DER; hardkey's `sign` takes the message and returns DER, so nothing is converted here.
//! The signing algorithm preferences of the context are set to exactly the key's schemes
//! ([`signing_prefs`]), so BoringSSL negotiates only what the key can do.

use ::boring::error::ErrorStack;
use ::boring::ex_data::Index;
use ::boring::ssl::Ssl;
use ::boring::ssl::{
    AlpnError, AsyncPrivateKeyMethod, AsyncPrivateKeyMethodError, BoxPrivateKeyMethodFinish,
    BoxPrivateKeyMethodFuture, ClientHello, ExtensionType, NameType, SelectCertError, SniError,
    SslAcceptor, SslAcceptorBuilder, SslAlert, SslMethod, SslRef, SslSignatureAlgorithm,
    select_next_proto,
};
use ::boring::x509::X509;
use hardkey_api::{DecryptScheme, KeyInfo, PrivateKey, SharedKey, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_boring::SslStream;

use crate::cert::{CertChain, key_name};
use crate::error::{Error, Result};
use crate::identity::{Identities, Offer};
use crate::server::Stack;
use crate::trust::TrustAnchors;

/// The hardkey scheme for a BoringSSL signature algorithm, if hardkey has it.
///
/// In TLS 1.2 BoringSSL may name an ECDSA algorithm whose curve differs from the key's (the
/// curve part is ignored there); the key then refuses it, but [`signing_prefs`] keeps BoringSSL
/// from choosing one in the first place.
pub fn scheme_for(alg: SslSignatureAlgorithm) -> Option<SignatureScheme> {
    use SignatureScheme::*;
    Some(match alg {
        SslSignatureAlgorithm::RSA_PKCS1_SHA256 => RsaPkcs1Sha256,
        SslSignatureAlgorithm::RSA_PKCS1_SHA384 => RsaPkcs1Sha384,
        SslSignatureAlgorithm::RSA_PKCS1_SHA512 => RsaPkcs1Sha512,
        SslSignatureAlgorithm::RSA_PSS_RSAE_SHA256 => RsaPssSha256,
        SslSignatureAlgorithm::RSA_PSS_RSAE_SHA384 => RsaPssSha384,
        SslSignatureAlgorithm::RSA_PSS_RSAE_SHA512 => RsaPssSha512,
        SslSignatureAlgorithm::ECDSA_SECP256R1_SHA256 => EcdsaP256Sha256,
        SslSignatureAlgorithm::ECDSA_SECP384R1_SHA384 => EcdsaP384Sha384,
        SslSignatureAlgorithm::ED25519 => Ed25519,
        // BoringSSL has no Ed448.
        _ => return None,
    })
}

/// The BoringSSL signature algorithm of a hardkey scheme (its TLS code point).
pub fn algorithm_for(scheme: SignatureScheme) -> SslSignatureAlgorithm {
    SslSignatureAlgorithm::from(scheme.tls_code_point())
}

/// The key's schemes, preferred first, as a BoringSSL signature-algorithm list
/// (`rsa_pss_rsae_sha256:...`, `ed25519`) for [`SslContextBuilder::set_sigalgs_list`]; only
/// those BoringSSL knows (no Ed448: an Ed448 key gets an empty list, which BoringSSL refuses
/// when the context is built).
///
/// [`SslContextBuilder::set_sigalgs_list`]: ::boring::ssl::SslContextBuilder::set_sigalgs_list
pub fn signing_prefs(key: &KeyInfo) -> String {
    key.signature_schemes
        .iter()
        .filter(|s| scheme_for(algorithm_for(**s)).is_some())
        .map(|s| s.tls_name())
        .collect::<Vec<_>>()
        .join(":")
}

/// BoringSSL's private-key method backed by a hardkey key: `sign` and `decrypt` return the
/// device's futures, so handshakes wait without blocking a thread.
///
/// Install it with [`SslContextBuilder::set_async_private_key_method`] together with the
/// key's [`signing_prefs`] (or use [`acceptor_builder`], which does both), and drive the
/// handshakes with `tokio_boring` (which sets the task waker BoringSSL's async callbacks need).
///
/// [`SslContextBuilder::set_async_private_key_method`]: ::boring::ssl::SslContextBuilder::set_async_private_key_method
pub struct KeyMethod {
    key: SharedKey,
    name: String,
}

impl KeyMethod {
    /// A method signing with `key`.
    pub fn new(key: SharedKey) -> Self {
        let name = key_name(key.info());
        Self { key, name }
    }

    /// The key.
    pub fn key(&self) -> &SharedKey {
        &self.key
    }
}

impl std::fmt::Debug for KeyMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMethod")
            .field("key", &self.name)
            .finish()
    }
}

/// The mark [`KeyMethod`] leaves on a connection whose key operation failed.
struct KeyFailed;

fn key_failed_index() -> Option<Index<Ssl, KeyFailed>> {
    static INDEX: std::sync::OnceLock<Option<Index<Ssl, KeyFailed>>> = std::sync::OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().ok())
}

fn mark_key_failed(ssl: &mut SslRef) {
    if let Some(index) = key_failed_index() {
        ssl.set_ex_data(index, KeyFailed);
    }
}

fn key_failed(ssl: &SslRef) -> bool {
    key_failed_index().is_some_and(|index| ssl.ex_data(index).is_some())
}

/// Runs a server handshake on `stream` with `tokio_boring`; if it fails because the key
/// failed to sign, the client first gets a fatal `internal_error` alert instead of a dropped
/// connection (BoringSSL sends none itself for a failed private-key method, and the `boring`
/// crate does not wrap `SSL_send_fatal_alert`; the server's flight was not sent yet, so the
/// alert goes unencrypted, as the client expects before a ServerHello). The error names what
/// failed.
pub async fn accept<S>(acceptor: &SslAcceptor, stream: S) -> std::io::Result<SslStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio_boring::accept(acceptor, stream).await {
        Ok(stream) => Ok(stream),
        Err(e) => {
            let message = e.to_string();
            if let Some(rejected) = e
                .ssl()
                .and_then(|ssl| crate::mtls::boring_rejection(ssl, &message))
            {
                return Err(rejected);
            }
            // The I/O error's kind (a peer that closed) tells the failure's class.
            let kind = e
                .as_io_error()
                .map_or(std::io::ErrorKind::Other, std::io::Error::kind);
            let failed = e.ssl().is_some_and(key_failed);
            if let (true, Some(mut io)) = (failed, e.into_source_stream()) {
                crate::alert::send(&mut io, crate::alert::Alert::InternalError).await;
                return Err(std::io::Error::other(crate::metrics::KeySignFailed(
                    format!("{message} (the key failed to sign: internal_error alert sent)"),
                )));
            }
            Err(std::io::Error::new(kind, message))
        }
    }
}

/// Copies `bytes` into BoringSSL's output buffer.
fn finish_with(bytes: Vec<u8>) -> BoxPrivateKeyMethodFinish {
    Box::new(move |_ssl: &mut SslRef, out: &mut [u8]| {
        let dst = out
            .get_mut(..bytes.len())
            .ok_or(AsyncPrivateKeyMethodError)?;
        dst.copy_from_slice(&bytes);
        Ok(bytes.len())
    })
}

impl AsyncPrivateKeyMethod for KeyMethod {
    fn sign(
        &self,
        _ssl: &mut SslRef,
        input: &[u8],
        signature_algorithm: SslSignatureAlgorithm,
        _output: &mut [u8],
    ) -> std::result::Result<BoxPrivateKeyMethodFuture, AsyncPrivateKeyMethodError> {
        let Some(scheme) = scheme_for(signature_algorithm).filter(|s| self.key.info().supports(*s))
        else {
            log::warn!(
                target: "hardkey_tls",
                "BoringSSL asked key {} for a {signature_algorithm} signature, which it does not \
                 offer: handshake refused",
                self.name
            );
            return Err(AsyncPrivateKeyMethodError);
        };
        // Hashes the message here (cheap), or for Ed25519 hands it whole to the device, then
        // waits for the device without a thread.
        let signature = self.key.sign(scheme, input);
        let name = self.name.clone();
        Ok(Box::pin(async move {
            match signature.await {
                Ok(sig) => Ok(finish_with(sig)),
                Err(e) => {
                    log::warn!(target: "hardkey_tls", "key {name}: {scheme} signature failed: {e}");
                    // Fail in the finishing step, which can mark the connection, so that
                    // [`accept`] sends the client an internal_error alert.
                    Ok(Box::new(|ssl: &mut SslRef, _: &mut [u8]| {
                        mark_key_failed(ssl);
                        Err(AsyncPrivateKeyMethodError)
                    }) as BoxPrivateKeyMethodFinish)
                }
            }
        }))
    }

    /// TLS 1.2 RSA key exchange (only reached when the context enables `RSA` cipher suites;
    /// [`acceptor_builder`] offers ECDHE only). BoringSSL wants the raw RSA result and checks
    /// the PKCS#1 v1.5 padding itself in constant time; the device removes the padding, so the
    /// plaintext is padded again here with fresh random bytes. Any device failure yields a
    /// random premaster secret in a well-formed block (the implicit rejection of RFC 5246
    /// 7.4.7.1), so the handshake then fails at `Finished` exactly as for a wrong ciphertext,
    /// and the failure is logged at debug level only: no padding oracle is exposed to the
    /// client. (Software keys refuse this scheme altogether: see
    /// [`Unsupported::LegacyDecryptInSoftware`](hardkey_api::Unsupported::LegacyDecryptInSoftware).)
    fn decrypt(
        &self,
        _ssl: &mut SslRef,
        input: &[u8],
        _output: &mut [u8],
    ) -> std::result::Result<BoxPrivateKeyMethodFuture, AsyncPrivateKeyMethodError> {
        let info = self.key.info();
        if !info
            .decrypt_schemes
            .contains(&DecryptScheme::RsaPkcs1v15Legacy)
        {
            log::warn!(
                target: "hardkey_tls",
                "a client chose TLS 1.2 RSA key exchange, but key {} does not allow PKCS#1 v1.5 \
                 decryption: open it with KeyPolicy::allow_legacy_rsa_pkcs1v15_decrypt, or offer \
                 only ECDHE cipher suites",
                self.name
            );
            return Err(AsyncPrivateKeyMethodError);
        }
        let k = info.algorithm.bits() / 8;
        let plaintext = self.key.decrypt(DecryptScheme::RsaPkcs1v15Legacy, input);
        let name = self.name.clone();
        Ok(Box::pin(async move {
            let block = match plaintext.await {
                Ok(m) => pkcs1_type2_block(&m, k),
                Err(e) => {
                    // Debug only: a client can send bad ciphertexts at will, and a line per
                    // failure would both flood the log and time the padding check.
                    log::debug!(
                        target: "hardkey_tls",
                        "key {name}: RSA key-exchange decryption failed: {e}"
                    );
                    None
                }
            };
            let block = match block {
                Some(b) => b,
                None => {
                    pkcs1_type2_block(&random_bytes(48)?, k).ok_or(AsyncPrivateKeyMethodError)?
                }
            };
            Ok(finish_with(block))
        }))
    }
}

fn random_bytes(n: usize) -> std::result::Result<Vec<u8>, AsyncPrivateKeyMethodError> {
    let mut buf = vec![0u8; n];
    ::boring::rand::rand_bytes(&mut buf).map_err(|_| AsyncPrivateKeyMethodError)?;
    Ok(buf)
}

/// `00 02 PS 00 M` in `k` bytes, PS random and non-zero (RFC 8017 section 7.2.1).
fn pkcs1_type2_block(m: &[u8], k: usize) -> Option<Vec<u8>> {
    let ps_len = k.checked_sub(m.len() + 3).filter(|n| *n >= 8)?;
    let mut ps = random_bytes(ps_len).ok()?;
    for byte in &mut ps {
        while *byte == 0 {
            *byte = random_bytes(1).ok()?.first().copied().unwrap_or(0);
        }
    }
    let mut block = Vec::with_capacity(k);
    block.extend_from_slice(&[0x00, 0x02]);
    block.extend_from_slice(&ps);
    block.push(0x00);
    block.extend_from_slice(m);
    Some(block)
}

fn setup(what: &'static str) -> impl Fn(ErrorStack) -> Error {
    move |e| Error::TlsSetup {
        stack: Stack::Boring,
        what,
        source: Box::new(e),
    }
}

/// A BoringSSL acceptor builder serving `chain` with `key`: Mozilla's intermediate profile
/// (TLS 1.2 with ECDHE suites, TLS 1.3), the [`KeyMethod`], signing preferences limited to the
/// key's schemes, and ALPN `h2` and `http/1.1` (the server's preference first; a client
/// offering neither gets no ALPN). Checks that the chain's certificate holds the key's public
/// key. Adjust it further (groups, cipher suites, session tickets, `set_alpn_select_callback`
/// for an HTTP/1.1-only server) before `build()`.
pub fn acceptor_builder(key: SharedKey, chain: &CertChain) -> Result<SslAcceptorBuilder> {
    chain.check_key(key.info())?;
    if key.info().signature_schemes.is_empty() {
        return Err(Error::KeyCannotSign {
            key: key_name(key.info()),
        });
    }
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())
        .map_err(setup("Mozilla intermediate profile"))?;
    let mut certs = chain.certs().iter();
    if let Some(leaf) = certs.next() {
        let leaf = X509::from_der(leaf).map_err(setup("server certificate"))?;
        builder
            .set_certificate(&leaf)
            .map_err(setup("server certificate"))?;
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
    builder.set_alpn_select_callback(|_, client| {
        select_next_proto(crate::ALPN_WIRE, client).ok_or(AlpnError::NOACK)
    });
    builder.set_async_private_key_method(KeyMethod::new(key));
    Ok(builder)
}

/// A BoringSSL acceptor builder serving several identities, chosen per handshake by the
/// client's server name and signature schemes ([`Identities::select`]).
///
/// Identities whose keys sign with the same schemes share one context (the Mozilla profile,
/// those signing preferences, ALPN, and a private-key method that signs with the key the
/// handshake was given): usually one or two contexts for thousands of identities, where a
/// context each cost about 10 KiB per identity. The returned builder is the default
/// identity's, with a certificate-selection callback that, before any other ClientHello
/// processing, moves each handshake to its identity's shared context (`SSL_set_SSL_CTX`, the
/// SNI mechanism BoringSSL documents) and sets that identity's certificate (from its DER,
/// parsed by BoringSSL only as far as the public key) and issuers on the connection. What
/// you set on the returned builder governs the handshake as a whole (options, session cache
/// and tickets, protocol versions); the certificate, key and signing preferences come from
/// the identity chosen. Checks every identity ([`Identities::check`]).
pub fn acceptor_builder_for(identities: &Identities) -> Result<SslAcceptorBuilder> {
    acceptor_builder_with_client_auth(identities, None)
}

/// [`acceptor_builder_for`], requiring every client to present a certificate that chains to
/// `client_ca` when given (mutual TLS: `SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT`
/// on every context, the CAs named in the CertificateRequest). A client without one, or with
/// one that does not verify, fails [`accept`] with a
/// [`ClientCertRejected`](crate::ClientCertRejected) error.
pub fn acceptor_builder_with_client_auth(
    identities: &Identities,
    client_ca: Option<&TrustAnchors>,
) -> Result<SslAcceptorBuilder> {
    identities.check()?;
    // Every context gets the client CAs: the verification store and mode are read from the
    // context the handshake ends on (the shared one, after `SSL_set_SSL_CTX`).
    let with_client_auth = |mut builder: SslAcceptorBuilder| -> Result<SslAcceptorBuilder> {
        if let Some(ca) = client_ca {
            crate::mtls::boring_require_client_certs(&mut builder, ca)?;
        }
        Ok(builder)
    };
    let selected_key = selected_key_index().ok_or_else(|| Error::TlsSetup {
        stack: Stack::Boring,
        what: "per-connection key slot",
        source: Box::new(ErrorStack::get()),
    })?;
    // One context per distinct list of signing preferences; each identity's context index.
    let mut contexts: Vec<::boring::ssl::SslContext> = Vec::new();
    let mut by_prefs: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    let mut context_of: Vec<u32> = Vec::with_capacity(identities.len());
    // Each distinct issuer certificate, parsed once (identities usually share their CA's).
    let mut issuers: std::collections::HashMap<Vec<u8>, X509> = std::collections::HashMap::new();
    for identity in identities.iter() {
        let prefs = signing_prefs(identity.key().info());
        let index = match by_prefs.get(&prefs) {
            Some(&index) => index,
            None => {
                let builder = with_client_auth(shared_context_builder(&prefs)?)?;
                let index = u32::try_from(contexts.len()).map_err(|_| Error::TlsSetup {
                    stack: Stack::Boring,
                    what: "signing contexts",
                    source: Box::new(ErrorStack::get()),
                })?;
                contexts.push(builder.build().into_context());
                by_prefs.insert(prefs, index);
                index
            }
        };
        context_of.push(index);
        for der in identity.chain().certs().iter().skip(1) {
            if !issuers.contains_key(der.as_ref()) {
                let issuer = X509::from_der(der).map_err(setup("issuer certificate"))?;
                issuers.insert(der.to_vec(), issuer);
            }
        }
    }
    let default_identity = identities.default_identity();
    let mut builder = with_client_auth(acceptor_builder(
        std::sync::Arc::clone(default_identity.key()),
        default_identity.chain(),
    )?)?;
    // One copy of the set for both callbacks.
    let identities = std::sync::Arc::new(identities.clone());
    // A name no identity covers, with UnknownName::Refuse, gets an unrecognized_name alert
    // (RFC 6066 3) from the servername callback, which BoringSSL runs after this one (on the
    // original context, whichever context the selection switched to).
    let sni = std::sync::Arc::clone(&identities);
    builder.set_servername_callback(move |ssl, alert| {
        let name = ssl.servername(NameType::HOST_NAME);
        if name.is_some() && sni.refuses_name(name) {
            log::info!(
                target: "hardkey_tls",
                "no certificate for server name {name:?}: handshake refused (unrecognized_name)"
            );
            *alert = SslAlert::UNRECOGNIZED_NAME;
            return Err(SniError::ALERT_FATAL);
        }
        Ok(())
    });
    builder.set_select_certificate_callback(move |mut hello| {
        let offer = offer_of(&hello);
        let name = hello.servername(NameType::HOST_NAME).map(str::to_owned);
        match identities.select(name.as_deref(), &offer) {
            Some(index) => {
                let identity = identities.get(index).ok_or(SelectCertError::ERROR)?;
                let ctx = context_of
                    .get(index)
                    .and_then(|&c| contexts.get(c as usize))
                    .ok_or(SelectCertError::ERROR)?;
                let ssl = hello.ssl_mut();
                ssl.set_ssl_context(ctx)
                    .map_err(|_| SelectCertError::ERROR)?;
                let mut certs = identity.chain().certs().iter();
                let leaf = certs.next().ok_or(SelectCertError::ERROR)?;
                ssl.set_certificate_der_unchecked(leaf)
                    .map_err(|_| SelectCertError::ERROR)?;
                for der in certs {
                    let issuer = issuers.get(der.as_ref()).ok_or(SelectCertError::ERROR)?;
                    ssl.add_chain_cert(issuer)
                        .map_err(|_| SelectCertError::ERROR)?;
                }
                ssl.set_ex_data(
                    selected_key,
                    SelectedKey(std::sync::Arc::clone(identity.key())),
                );
                Ok(())
            }
            // Refused in the servername callback, with the alert that says why.
            None if name.is_some() => Ok(()),
            None => {
                log::info!(
                    target: "hardkey_tls",
                    "client sent no server name: handshake refused"
                );
                Err(SelectCertError::ERROR)
            }
        }
    });
    Ok(builder)
}

/// A context shared by the identities whose keys sign with `prefs`: the Mozilla profile,
/// those signing preferences, ALPN, and [`SelectedKeyMethod`]; no certificate (each
/// handshake gets its identity's).
fn shared_context_builder(prefs: &str) -> Result<SslAcceptorBuilder> {
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())
        .map_err(setup("Mozilla intermediate profile"))?;
    builder
        .set_sigalgs_list(prefs)
        .map_err(setup("signature algorithms"))?;
    builder.set_alpn_select_callback(|_, client| {
        select_next_proto(crate::ALPN_WIRE, client).ok_or(AlpnError::NOACK)
    });
    builder.set_async_private_key_method(SelectedKeyMethod);
    Ok(builder)
}

/// The key of the identity a handshake was given, kept on its connection.
struct SelectedKey(SharedKey);

fn selected_key_index() -> Option<Index<Ssl, SelectedKey>> {
    static INDEX: std::sync::OnceLock<Option<Index<Ssl, SelectedKey>>> = std::sync::OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().ok())
}

/// The private-key method of the shared contexts: [`KeyMethod`] with the key the
/// certificate selection put on the connection.
struct SelectedKeyMethod;

impl SelectedKeyMethod {
    fn method(ssl: &SslRef) -> std::result::Result<KeyMethod, AsyncPrivateKeyMethodError> {
        let key = selected_key_index()
            .and_then(|index| ssl.ex_data(index))
            .ok_or(AsyncPrivateKeyMethodError)?;
        Ok(KeyMethod::new(std::sync::Arc::clone(&key.0)))
    }
}

impl AsyncPrivateKeyMethod for SelectedKeyMethod {
    fn sign(
        &self,
        ssl: &mut SslRef,
        input: &[u8],
        signature_algorithm: SslSignatureAlgorithm,
        output: &mut [u8],
    ) -> std::result::Result<BoxPrivateKeyMethodFuture, AsyncPrivateKeyMethodError> {
        Self::method(ssl)?.sign(ssl, input, signature_algorithm, output)
    }

    fn decrypt(
        &self,
        ssl: &mut SslRef,
        input: &[u8],
        output: &mut [u8],
    ) -> std::result::Result<BoxPrivateKeyMethodFuture, AsyncPrivateKeyMethodError> {
        Self::method(ssl)?.decrypt(ssl, input, output)
    }
}

/// What a ClientHello offers: the signature schemes hardkey knows among its
/// `signature_algorithms` (RFC 8446 4.2.3: a two-byte length, then two bytes per scheme;
/// none if the client sent none), its cipher suites and its `supported_groups` (the same
/// layout).
fn offer_of(hello: &ClientHello<'_>) -> Offer {
    fn u16s(bytes: &[u8]) -> impl Iterator<Item = u16> + '_ {
        bytes
            .chunks_exact(2)
            .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
    }
    let schemes = hello
        .get_extension(ExtensionType::SIGNATURE_ALGORITHMS)
        .map(|ext| {
            u16s(ext.get(2..).unwrap_or_default())
                .filter_map(SignatureScheme::from_tls_code_point)
                .collect()
        })
        .unwrap_or_default();
    let suites: Vec<u16> = u16s(hello.ciphers()).collect();
    let groups: Option<Vec<u16>> = hello
        .get_extension(ExtensionType::SUPPORTED_GROUPS)
        .map(|ext| u16s(ext.get(2..).unwrap_or_default()).collect());
    Offer::from_hello(schemes, &suites, groups.as_deref())
}

/// [`acceptor_builder`], built: what [`Server`](crate::Server) uses for [`Stack::Boring`].
/// Accept connections with `tokio_boring::accept(&acceptor, stream)`.
pub fn acceptor(key: SharedKey, chain: &CertChain) -> Result<SslAcceptor> {
    Ok(acceptor_builder(key, chain)?.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_round_trips_through_boring() {
        for scheme in SignatureScheme::ALL {
            let alg = algorithm_for(scheme);
            if scheme == SignatureScheme::Ed448 {
                // BoringSSL has no Ed448: never offered, never mapped.
                assert_eq!(scheme_for(alg), None);
                continue;
            }
            assert_eq!(scheme_for(alg), Some(scheme), "{scheme}");
            assert_eq!(
                SslSignatureAlgorithm::from(scheme.tls_code_point()),
                alg,
                "{scheme}"
            );
        }
        assert_eq!(
            scheme_for(SslSignatureAlgorithm::ED25519),
            Some(SignatureScheme::Ed25519)
        );
        assert_eq!(scheme_for(SslSignatureAlgorithm::RSA_PKCS1_SHA1), None);
    }

    #[test]
    fn type2_block_is_well_formed() {
        let block = pkcs1_type2_block(&[7u8; 48], 256).unwrap();
        assert_eq!(block.len(), 256);
        assert_eq!(&block[..2], &[0, 2]);
        let zero = block[2..].iter().position(|b| *b == 0).unwrap() + 2;
        assert_eq!(zero, 256 - 49);
        assert_eq!(&block[zero + 1..], &[7u8; 48]);
        assert!(pkcs1_type2_block(&[0u8; 250], 256).is_none());
    }
}
