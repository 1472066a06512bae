//! Client certificates on the server side (mutual TLS): a server that requires every client
//! to present a certificate issued by one of its client CAs, on both stacks, and a clear,
//! typed error ([`ClientCertRejected`]) when a client presents none or a bad one.

use std::fmt;

use crate::trust::TrustAnchors;
#[cfg(any(feature = "boring", feature = "rustls"))]
use crate::{error::Error, error::Result, server::Stack};

/// Why a server refused a client's certificate; the source of the `io::Error` that
/// [`boring::accept`](crate::boring::accept) and [`rustls::Acceptor::accept`](crate::rustls::Acceptor::accept)
/// return for it (find it with `error.get_ref()` and `downcast_ref`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientCertRejected {
    /// The server requires a client certificate and the client sent none.
    Missing,
    /// The client's certificate did not verify against the server's client CAs.
    Invalid {
        /// The TLS library's reason (unknown issuer, expired, wrong key usage...).
        reason: String,
    },
}

impl fmt::Display for ClientCertRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str(
                "client certificate required, and the client sent none: give the client a \
                 certificate issued by one of the server's client CAs",
            ),
            Self::Invalid { reason } => write!(
                f,
                "client certificate rejected: {reason}. It must chain to one of the server's \
                 client CAs, be valid now and allow client authentication"
            ),
        }
    }
}

impl std::error::Error for ClientCertRejected {}

impl ClientCertRejected {
    fn into_io(self) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::PermissionDenied, self)
    }
}

/// Whether a handshake error is a refused client certificate.
pub(crate) fn is_rejection(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<ClientCertRejected>())
}

/// The page's line naming the verified client certificate's subject (`client: CN=...`), or
/// nothing when the client sent no certificate.
pub(crate) fn client_line(leaf: Option<&[u8]>) -> String {
    leaf.map(|der| format!("client: {}\n", crate::trust::subject_of(der)))
        .unwrap_or_default()
}

/// rustls: a client-certificate verifier that requires a certificate chaining to `anchors`
/// (rustls-webpki: signatures, validity, the clientAuth extended key usage), and names them
/// in the CertificateRequest.
#[cfg(feature = "rustls")]
pub(crate) fn rustls_verifier(
    anchors: &TrustAnchors,
    provider: std::sync::Arc<::rustls::crypto::CryptoProvider>,
) -> Result<std::sync::Arc<dyn ::rustls::server::danger::ClientCertVerifier>> {
    let setup = |what: &'static str| {
        move |e: ::rustls::Error| Error::TlsSetup {
            stack: Stack::Rustls,
            what,
            source: Box::new(e),
        }
    };
    let mut roots = ::rustls::RootCertStore::empty();
    for cert in anchors.certs() {
        roots.add(cert.clone()).map_err(setup("client CA"))?;
    }
    ::rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider,
    )
    .build()
    .map_err(|e| Error::TlsSetup {
        stack: Stack::Rustls,
        what: "client certificate verifier",
        source: Box::new(e),
    })
}

/// rustls: the handshake error `error`, as a [`ClientCertRejected`] when it is one.
#[cfg(feature = "rustls")]
pub(crate) fn rustls_rejection(error: std::io::Error) -> std::io::Error {
    let rejected = match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<::rustls::Error>())
    {
        Some(::rustls::Error::NoCertificatesPresented) => Some(ClientCertRejected::Missing),
        Some(e @ ::rustls::Error::InvalidCertificate(_)) => Some(ClientCertRejected::Invalid {
            reason: e.to_string(),
        }),
        _ => None,
    };
    rejected.map_or(error, ClientCertRejected::into_io)
}

/// BoringSSL: makes `builder` require a client certificate that chains to `anchors`
/// (`SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT`, the CAs as the verification store
/// and as the CertificateRequest's certificate authorities).
#[cfg(feature = "boring")]
pub(crate) fn boring_require_client_certs(
    builder: &mut ::boring::ssl::SslContextBuilder,
    anchors: &TrustAnchors,
) -> Result<()> {
    use ::boring::ssl::SslVerifyMode;
    use ::boring::x509::X509;
    use ::boring::x509::store::X509StoreBuilder;

    let setup = |what: &'static str| {
        move |e: ::boring::error::ErrorStack| Error::TlsSetup {
            stack: Stack::Boring,
            what,
            source: Box::new(e),
        }
    };
    let mut store = X509StoreBuilder::new().map_err(setup("client CA store"))?;
    let mut names = ::boring::stack::Stack::new().map_err(setup("client CA names"))?;
    for der in anchors.certs() {
        let cert = X509::from_der(der).map_err(setup("client CA"))?;
        let name = cert
            .subject_name()
            .to_der()
            .and_then(|der| ::boring::x509::X509Name::from_der(&der))
            .map_err(setup("client CA names"))?;
        names.push(name).map_err(setup("client CA names"))?;
        store.add_cert(cert).map_err(setup("client CA store"))?;
    }
    builder
        .set_verify_cert_store(store.build())
        .map_err(setup("client CA store"))?;
    builder.set_client_ca_list(names);
    builder.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    Ok(())
}

/// BoringSSL: the [`ClientCertRejected`] a failed server handshake on `ssl` amounts to, if
/// any; `message` is the handshake error's text (BoringSSL's error queue).
#[cfg(feature = "boring")]
pub(crate) fn boring_rejection(
    ssl: &::boring::ssl::SslRef,
    message: &str,
) -> Option<std::io::Error> {
    let rejected = if message.contains("PEER_DID_NOT_RETURN_A_CERTIFICATE") {
        ClientCertRejected::Missing
    } else if message.contains("CERTIFICATE_VERIFY_FAILED") {
        ClientCertRejected::Invalid {
            reason: match ssl.verify_result() {
                Err(e) => e.error_string().to_owned(),
                Ok(()) => "certificate verify failed".to_owned(),
            },
        }
    } else {
        return None;
    };
    Some(rejected.into_io())
}
