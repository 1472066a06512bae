//! Key administration: open by URI, list, generate, import, delete.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::algorithm::KeyAlgorithm;
use crate::error::Result;
use crate::key::{BoxFuture, KeyId, KeyInfo, KeyUsages, PrivateKey, SharedKey};
use crate::uri::KeyUri;

/// A request to generate a key on the device.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GenerateRequest {
    /// The algorithm.
    pub algorithm: KeyAlgorithm,
    /// A label (CKA_LABEL, file name...).
    pub label: Option<String>,
    /// What the key may do; defaults to [`KeyUsages::default_for`] the algorithm.
    pub usages: KeyUsages,
    /// Where to keep the key when the store has a choice (a `file:` path for software keys,
    /// a persistent handle or TSS2 key file for a TPM); `None` lets the store decide.
    pub location: Option<KeyUri>,
    /// Also let the device do raw RSA (no padding) with an RSA key, where the device
    /// restricts mechanisms per key (PKCS#11 `CKA_ALLOWED_MECHANISMS`). Off by default: raw RSA
    /// signing is decryption, so it would make a signing-only key a decryption oracle for
    /// anyone holding the PIN. Turn it on only for a token that lacks a mechanism hardkey
    /// needs (SoftHSM 2.6 has no RSA-OAEP with SHA-256), so hardkey pads on the host.
    pub raw_rsa: bool,
}

impl GenerateRequest {
    /// A request for a key of `algorithm` with the default usages.
    pub fn new(algorithm: KeyAlgorithm) -> Self {
        Self {
            algorithm,
            label: None,
            usages: KeyUsages::default_for(algorithm),
            location: None,
            raw_rsa: false,
        }
    }

    /// Allows raw RSA on the key (see [`GenerateRequest::raw_rsa`]).
    pub fn raw_rsa(mut self, allow: bool) -> Self {
        self.raw_rsa = allow;
        self
    }

    /// Sets the label.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Sets the usages.
    pub fn usages(mut self, usages: KeyUsages) -> Self {
        self.usages = usages;
        self
    }

    /// Sets where the key is kept.
    pub fn location(mut self, location: KeyUri) -> Self {
        self.location = Some(location);
        self
    }
}

/// A request to import a private key.
#[non_exhaustive]
pub struct ImportRequest {
    /// The private key as DER PKCS#8 (`PrivateKeyInfo`), zeroized on drop.
    pub pkcs8_der: Zeroizing<Vec<u8>>,
    /// A label.
    pub label: Option<String>,
    /// What the key may do; `None` for the algorithm's defaults.
    pub usages: Option<KeyUsages>,
    /// Where to keep the key, as for [`GenerateRequest::location`].
    pub location: Option<KeyUri>,
    /// Allow raw RSA on the device key, as for [`GenerateRequest::raw_rsa`].
    pub raw_rsa: bool,
}

impl ImportRequest {
    /// A request to import `pkcs8_der`.
    pub fn new(pkcs8_der: Zeroizing<Vec<u8>>) -> Self {
        Self {
            pkcs8_der,
            label: None,
            usages: None,
            location: None,
            raw_rsa: false,
        }
    }

    /// Sets the usages.
    pub fn usages(mut self, usages: KeyUsages) -> Self {
        self.usages = Some(usages);
        self
    }

    /// Allows raw RSA on the key (see [`GenerateRequest::raw_rsa`]).
    pub fn raw_rsa(mut self, allow: bool) -> Self {
        self.raw_rsa = allow;
        self
    }

    /// Sets the label.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Sets where the key is kept.
    pub fn location(mut self, location: KeyUri) -> Self {
        self.location = Some(location);
        self
    }
}

impl fmt::Debug for ImportRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportRequest")
            .field("pkcs8_der", &"[redacted]")
            .field("label", &self.label)
            .field("usages", &self.usages)
            .field("location", &self.location)
            .field("raw_rsa", &self.raw_rsa)
            .finish()
    }
}

/// Administration of the keys on one device (token, TPM, software store).
///
/// Like [`PrivateKey`], methods return lazy `Send + 'static` futures that run on the device's
/// workers. [`DynKeyStore`] is the dyn-compatible form.
pub trait KeyStore: Send + Sync + 'static {
    /// The keys this store opens.
    type Key: PrivateKey;

    /// The device name (for messages).
    fn name(&self) -> &str;

    /// The key algorithms this device can generate.
    fn algorithms(&self) -> &[KeyAlgorithm];

    /// Opens the key a URI names. A URI that matches no key fails with
    /// [`Error::NotFound`](crate::Error::NotFound); one that matches several fails too,
    /// naming them.
    fn open(
        &self,
        uri: &KeyUri,
    ) -> impl Future<Output = Result<Self::Key>> + Send + 'static + use<Self>;

    /// Opens a key by its id.
    fn open_id(
        &self,
        id: &KeyId,
    ) -> impl Future<Output = Result<Self::Key>> + Send + 'static + use<Self>;

    /// Lists the keys.
    fn list(&self) -> impl Future<Output = Result<Vec<KeyInfo>>> + Send + 'static + use<Self>;

    /// Generates a key on the device.
    fn generate(
        &self,
        request: GenerateRequest,
    ) -> impl Future<Output = Result<Self::Key>> + Send + 'static + use<Self>;

    /// Imports a PKCS#8 private key.
    fn import(
        &self,
        request: ImportRequest,
    ) -> impl Future<Output = Result<Self::Key>> + Send + 'static + use<Self>;

    /// Deletes a key (and its public half and any file or persistent handle holding it).
    fn delete(&self, id: &KeyId) -> impl Future<Output = Result<()>> + Send + 'static + use<Self>;
}

/// The dyn-compatible form of [`KeyStore`]; implemented for every `KeyStore`. The `dyn_`
/// names keep the two traits from clashing when both are in scope.
pub trait DynKeyStore: Send + Sync + 'static {
    /// See [`KeyStore::name`].
    fn dyn_name(&self) -> &str;
    /// See [`KeyStore::algorithms`].
    fn dyn_algorithms(&self) -> &[KeyAlgorithm];
    /// See [`KeyStore::open`].
    fn dyn_open(&self, uri: &KeyUri) -> BoxFuture<Result<SharedKey>>;
    /// See [`KeyStore::open_id`].
    fn dyn_open_id(&self, id: &KeyId) -> BoxFuture<Result<SharedKey>>;
    /// See [`KeyStore::list`].
    fn dyn_list(&self) -> BoxFuture<Result<Vec<KeyInfo>>>;
    /// See [`KeyStore::generate`].
    fn dyn_generate(&self, request: GenerateRequest) -> BoxFuture<Result<SharedKey>>;
    /// See [`KeyStore::import`].
    fn dyn_import(&self, request: ImportRequest) -> BoxFuture<Result<SharedKey>>;
    /// See [`KeyStore::delete`].
    fn dyn_delete(&self, id: &KeyId) -> BoxFuture<Result<()>>;
}

fn shared<K: PrivateKey>(
    fut: impl Future<Output = Result<K>> + Send + 'static,
) -> BoxFuture<Result<SharedKey>> {
    Box::pin(async move { Ok(Arc::new(fut.await?) as SharedKey) })
}

impl<S: KeyStore> DynKeyStore for S {
    fn dyn_name(&self) -> &str {
        self.name()
    }
    fn dyn_algorithms(&self) -> &[KeyAlgorithm] {
        self.algorithms()
    }
    fn dyn_open(&self, uri: &KeyUri) -> BoxFuture<Result<SharedKey>> {
        shared(self.open(uri))
    }
    fn dyn_open_id(&self, id: &KeyId) -> BoxFuture<Result<SharedKey>> {
        shared(self.open_id(id))
    }
    fn dyn_list(&self) -> BoxFuture<Result<Vec<KeyInfo>>> {
        Box::pin(self.list())
    }
    fn dyn_generate(&self, request: GenerateRequest) -> BoxFuture<Result<SharedKey>> {
        shared(self.generate(request))
    }
    fn dyn_import(&self, request: ImportRequest) -> BoxFuture<Result<SharedKey>> {
        shared(self.import(request))
    }
    fn dyn_delete(&self, id: &KeyId) -> BoxFuture<Result<()>> {
        Box::pin(self.delete(id))
    }
}
