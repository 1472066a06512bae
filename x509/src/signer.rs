//! The RustCrypto adapter: any [`PrivateKey`] as an async X.509 signer.

use std::future::Future;

use der::Decode;
use der::asn1::BitString;
use spki::{AlgorithmIdentifierOwned, DynSignatureAlgorithmIdentifier, SignatureBitStringEncoding};

use hardkey_api::encoding;
use hardkey_api::{InvalidInput, Result};
use hardkey_api::{KeyAlgorithm, SignatureScheme};
use hardkey_api::{KeyInfo, PrivateKey, PublicKey};

/// The scheme certificates and requests are signed with when the caller names none:
/// [`KeyAlgorithm::default_signature_scheme`] (ECDSA with the curve's hash, RSA PKCS#1 v1.5
/// with SHA-256).
pub const fn default_scheme(algorithm: KeyAlgorithm) -> SignatureScheme {
    algorithm.default_signature_scheme()
}

/// A [`PrivateKey`] signing X.509 structures (TBSCertificate, CertificationRequestInfo...) with
/// one fixed [`SignatureScheme`]: the RustCrypto face of a hardkey key.
///
/// It implements what x509-cert's builders ask of a signer, so it plugs into
/// [`x509_cert::builder::CertificateBuilder`] and [`RequestBuilder`] (finish those with
/// [`build_async`](super::build_async), since the key signs asynchronously):
///
/// - [`signature::Keypair`], whose verifying key is the key's [`PublicKey`] (which implements
///   [`spki::EncodePublicKey`]);
/// - [`spki::DynSignatureAlgorithmIdentifier`]: the scheme's `AlgorithmIdentifier`, with
///   `RSASSA-PSS-params` (hash, MGF1 over the same hash, salt = hash length, trailer 1) for
///   RSA-PSS;
/// - [`async_signature::AsyncSigner`]`<`[`X509Signature`]`>`.
///
/// The inherent [`X509Signer::sign`] is the same operation with a `Send + 'static` future,
/// for callers that spawn it.
///
/// [`RequestBuilder`]: x509_cert::builder::RequestBuilder
#[derive(Debug)]
pub struct X509Signer<'k, K> {
    key: &'k K,
    scheme: SignatureScheme,
}

impl<K> Clone for X509Signer<'_, K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K> Copy for X509Signer<'_, K> {}

impl<'k, K: PrivateKey> X509Signer<'k, K> {
    /// A signer using the key's [`default_scheme`], or the scheme the key itself prefers when
    /// its device does not offer the default (e.g. an RSA key restricted to PSS).
    ///
    /// Fails with [`Unsupported`](hardkey_api::Unsupported) if the key may not sign at all.
    pub fn new(key: &'k K) -> Result<Self> {
        let info = key.info();
        let preferred = default_scheme(info.algorithm);
        let scheme = if info.supports(preferred) {
            preferred
        } else {
            info.signature_schemes.first().copied().unwrap_or(preferred)
        };
        Self::with_scheme(key, scheme)
    }

    /// A signer using `scheme`, which the key must offer: otherwise the key's own
    /// [`Unsupported`](hardkey_api::Unsupported) error (wrong algorithm, scheme not offered by the
    /// device, or a key that may not sign) names the schemes it does offer.
    pub fn with_scheme(key: &'k K, scheme: SignatureScheme) -> Result<Self> {
        check_scheme(key.info(), scheme)?;
        Ok(Self { key, scheme })
    }

    /// [`X509Signer::with_scheme`] if `scheme` is given, else [`X509Signer::new`].
    pub fn with_optional_scheme(key: &'k K, scheme: Option<SignatureScheme>) -> Result<Self> {
        match scheme {
            Some(scheme) => Self::with_scheme(key, scheme),
            None => Self::new(key),
        }
    }

    /// The key.
    pub fn key(&self) -> &'k K {
        self.key
    }

    /// The scheme every signature is made with.
    pub fn scheme(&self) -> SignatureScheme {
        self.scheme
    }

    /// The key's public key.
    pub fn public_key(&self) -> &'k PublicKey {
        &self.key.info().public_key
    }

    /// The `AlgorithmIdentifier` of the signatures (the `signatureAlgorithm` field).
    pub fn algorithm_identifier(&self) -> Result<AlgorithmIdentifierOwned> {
        AlgorithmIdentifierOwned::from_der(self.scheme.algorithm_identifier_der()).map_err(|e| {
            InvalidInput::Encoding {
                what: "signature AlgorithmIdentifier",
                source: Box::new(e),
            }
            .into()
        })
    }

    /// Signs `message` (the DER of a TBS structure) through the key: hashed here and signed on
    /// the key's device, or for EdDSA sent whole to the device. The signature is checked for the form X.509 carries (a DER
    /// `Ecdsa-Sig-Value`, or an RSA signature as long as the modulus) before it is returned.
    pub fn sign(
        &self,
        message: &[u8],
    ) -> impl Future<Output = Result<X509Signature>> + Send + 'static + use<K> {
        let scheme = self.scheme;
        let algorithm = self.key.info().algorithm;
        let signing = self.key.sign(scheme, message);
        async move {
            let signature = signing.await?;
            encoding::check_signature_form(scheme, algorithm, &signature)?;
            Ok(X509Signature(signature))
        }
    }
}

/// Refuses a scheme the key does not serve, with the key's own error (a zero digest of the
/// right length, or for EdDSA an empty message, makes [`KeyInfo::check_sign`] /
/// [`KeyInfo::check_sign_message`] check the scheme and usage only).
fn check_scheme(info: &KeyInfo, scheme: SignatureScheme) -> Result<()> {
    match scheme.hash() {
        Some(hash) => info.check_sign(scheme, &vec![0; hash.output_len()]),
        None => info.check_sign_message(scheme, &[]),
    }
}

/// A signature as an X.509 structure carries it in its `signature` BIT STRING: a DER
/// `Ecdsa-Sig-Value` for ECDSA, the raw `k`-byte signature for RSA, `R || S` for EdDSA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct X509Signature(Vec<u8>);

impl X509Signature {
    /// The signature bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The `signature` BIT STRING.
    pub fn to_bit_string(&self) -> Result<BitString> {
        BitString::from_bytes(&self.0).map_err(|e| {
            InvalidInput::Encoding {
                what: "signature BIT STRING",
                source: Box::new(e),
            }
            .into()
        })
    }
}

impl From<X509Signature> for Vec<u8> {
    fn from(signature: X509Signature) -> Self {
        signature.0
    }
}

impl TryFrom<&[u8]> for X509Signature {
    type Error = signature::Error;

    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        Ok(Self(bytes.to_vec()))
    }
}

impl signature::SignatureEncoding for X509Signature {
    type Repr = Vec<u8>;
}

impl SignatureBitStringEncoding for X509Signature {
    fn to_bitstring(&self) -> der::Result<BitString> {
        BitString::from_bytes(&self.0)
    }
}

impl<K: PrivateKey> signature::Keypair for X509Signer<'_, K> {
    type VerifyingKey = PublicKey;

    fn verifying_key(&self) -> PublicKey {
        self.public_key().clone()
    }
}

impl<K: PrivateKey> DynSignatureAlgorithmIdentifier for X509Signer<'_, K> {
    fn signature_algorithm_identifier(&self) -> spki::Result<AlgorithmIdentifierOwned> {
        Ok(AlgorithmIdentifierOwned::from_der(
            self.scheme.algorithm_identifier_der(),
        )?)
    }
}

impl<K: PrivateKey> async_signature::AsyncSigner<X509Signature> for X509Signer<'_, K> {
    /// [`X509Signer::sign`]; a hardkey [`Error`](hardkey_api::Error) is kept as the source of the
    /// [`signature::Error`].
    async fn sign_async(&self, message: &[u8]) -> Result<X509Signature, signature::Error> {
        self.sign(message)
            .await
            .map_err(signature::Error::from_source)
    }
}
