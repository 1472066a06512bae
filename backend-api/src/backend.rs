//! The synchronous interface device crates implement, and [`PooledKey`], which turns it into
//! an async [`PrivateKey`] through a [`DevicePool`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::algorithm::{DecryptScheme, SignatureScheme};
use crate::error::{Operation, Result, Unsupported};
use crate::key::{KeyInfo, PrivateKey};
use crate::pool::{DevicePool, JobOptions, PoolStats};

/// Per-worker device state: a PKCS#11 session, a TPM context, or nothing for software keys.
///
/// Methods take `&mut self` and block; they run only on the worker thread that built the state.
/// Inputs are already validated ([`KeyInfo::check_sign`] / [`KeyInfo::check_decrypt`]): the
/// digest has the scheme's length, the scheme is one the key serves. Return
/// [`Error::DeviceUnavailable`](crate::Error::DeviceUnavailable) when the session or connection
/// is gone so that the pool rebuilds the state.
pub trait Backend: 'static {
    /// How this device finds a key (CKA_ID and label, a persistent handle, key material).
    /// Cloned into every job, so keep it cheap (an `Arc` for anything large).
    type KeyRef: Clone + Send + Sync + 'static;

    /// Signs `digest` with `scheme`. ECDSA signatures are returned DER-encoded.
    fn sign_digest(
        &mut self,
        key: &Self::KeyRef,
        scheme: SignatureScheme,
        digest: &[u8],
    ) -> Result<Vec<u8>>;

    /// Signs a whole `message` with a scheme that has no pre-hash (EdDSA: the device hashes
    /// as part of signing). Inputs are validated by [`KeyInfo::check_sign_message`]. The
    /// default refuses: a device without EdDSA never gets such a key.
    fn sign_message(
        &mut self,
        key: &Self::KeyRef,
        scheme: SignatureScheme,
        message: &[u8],
    ) -> Result<Vec<u8>> {
        let _ = (key, message);
        Err(Unsupported::Operation {
            op: Operation::Sign,
            device: format!("this device (no {scheme} signing)"),
        }
        .into())
    }

    /// Decrypts an RSA ciphertext of exactly the modulus length.
    fn decrypt(
        &mut self,
        key: &Self::KeyRef,
        scheme: DecryptScheme,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>>;
}

/// A key served by a [`Backend`] on a [`DevicePool`]: the usual way a device crate implements
/// [`PrivateKey`]. Validation happens on the caller's side, so a bad request never reaches the
/// device queue.
pub struct PooledKey<B: Backend> {
    info: Arc<KeyInfo>,
    key: B::KeyRef,
    pool: DevicePool<B>,
}

impl<B: Backend> PooledKey<B> {
    /// A key described by `info`, found on the device by `key`, served by `pool`.
    pub fn new(info: KeyInfo, key: B::KeyRef, pool: DevicePool<B>) -> Self {
        Self {
            info: Arc::new(info),
            key,
            pool,
        }
    }

    /// How the device finds the key.
    pub fn key_ref(&self) -> &B::KeyRef {
        &self.key
    }

    /// The pool serving the key.
    pub fn pool(&self) -> &DevicePool<B> {
        &self.pool
    }
}

impl<B: Backend> Clone for PooledKey<B> {
    fn clone(&self) -> Self {
        Self {
            info: Arc::clone(&self.info),
            key: self.key.clone(),
            pool: self.pool.clone(),
        }
    }
}

impl<B: Backend> fmt::Debug for PooledKey<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledKey")
            .field("info", &self.info)
            .field("pool", &self.pool)
            .finish()
    }
}

impl<B: Backend> PrivateKey for PooledKey<B> {
    fn info(&self) -> &KeyInfo {
        &self.info
    }

    fn pool_stats(&self) -> Option<PoolStats> {
        Some(self.pool.stats())
    }

    fn sign_digest(
        &self,
        scheme: SignatureScheme,
        digest: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>>> + Send + 'static + use<B> {
        let checked = self.info.check_sign(scheme, digest);
        let key = self.key.clone();
        let digest = digest.to_vec();
        let job = self.pool.run(
            JobOptions::idempotent(Operation::Sign).with_scheme(scheme.name()),
            move |device: &mut B| device.sign_digest(&key, scheme, &digest),
        );
        async move {
            checked?;
            job.await
        }
    }

    fn sign_message(
        &self,
        scheme: SignatureScheme,
        message: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>>> + Send + 'static + use<B> {
        let checked = self.info.check_sign_message(scheme, message);
        let key = self.key.clone();
        let message = message.to_vec();
        let job = self.pool.run(
            JobOptions::idempotent(Operation::Sign).with_scheme(scheme.name()),
            move |device: &mut B| device.sign_message(&key, scheme, &message),
        );
        async move {
            checked?;
            job.await
        }
    }

    fn decrypt(
        &self,
        scheme: DecryptScheme,
        ciphertext: &[u8],
    ) -> impl Future<Output = Result<Zeroizing<Vec<u8>>>> + Send + 'static + use<B> {
        let checked = self.info.check_decrypt(scheme, ciphertext);
        let key = self.key.clone();
        let ciphertext = ciphertext.to_vec();
        let job = self.pool.run(
            JobOptions::idempotent(Operation::Decrypt).with_scheme(scheme.name()),
            move |device: &mut B| device.decrypt(&key, scheme, &ciphertext),
        );
        async move {
            checked?;
            job.await
        }
    }
}
