//! [`Delayed`]: a key wrapper that adds device latency, to reproduce slow-device experiments.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use rand::Rng;
use zeroize::Zeroizing;

use crate::algorithm::{DecryptScheme, SignatureScheme};
use crate::error::{Operation, Result};
use crate::key::{KeyInfo, PrivateKey};
use crate::pool::{DevicePool, JobOptions, JobTimeout, PoolConfig, PoolStats};
use crate::timer::sleep;

/// How long each operation is delayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Latency {
    /// Always this long.
    Fixed(Duration),
    /// Uniformly random between `min` and `max` (inclusive), like a network round trip.
    Uniform {
        /// Shortest delay.
        min: Duration,
        /// Longest delay.
        max: Duration,
    },
}

impl Latency {
    fn sample(self) -> Duration {
        match self {
            Self::Fixed(d) => d,
            Self::Uniform { min, max } if max > min => rand::thread_rng().gen_range(min..=max),
            Self::Uniform { min, .. } => min,
        }
    }
}

/// Wraps a key and delays each of its operations.
///
/// - [`Delayed::concurrent`] models a remote HSM or a network hop: the delay is a timer, so it
///   occupies neither the caller's thread nor a device worker, and 100 concurrent operations
///   with 200 ms latency finish in about 200 ms.
/// - [`Delayed::serial`] models a TPM, which executes one command at a time: the delay is spent
///   sleeping inside a single worker thread, so 100 operations take 100 delays.
///
/// The key's own operation runs after the delay. Requests the key would refuse (wrong scheme,
/// bad digest length) fail at once, without the delay.
pub struct Delayed<K> {
    inner: K,
    latency: Latency,
    serial: Option<DevicePool<()>>,
}

impl<K: PrivateKey> Delayed<K> {
    /// Delays each operation by `latency` on a timer (concurrent operations overlap).
    pub fn concurrent(inner: K, latency: Latency) -> Self {
        Self {
            inner,
            latency,
            serial: None,
        }
    }

    /// Delays each operation by `latency` inside one worker thread (operations queue up one
    /// behind another, as on a TPM).
    pub fn serial(inner: K, latency: Latency) -> Result<Self> {
        let config = PoolConfig::new("delayed-serial")
            .workers(1)
            .queue_capacity(1 << 16)
            .op_timeout(None);
        Ok(Self {
            inner,
            latency,
            serial: Some(DevicePool::new(config, |_| Ok(()))?),
        })
    }

    /// The wrapped key.
    pub fn inner(&self) -> &K {
        &self.inner
    }

    fn wait(&self, op: Operation) -> impl Future<Output = Result<()>> + Send + 'static + use<K> {
        let delay = self.latency.sample();
        let serial = self.serial.as_ref().map(|pool| {
            let options = JobOptions::new(op).with_timeout(JobTimeout::Never);
            pool.run(options, move |_: &mut ()| {
                std::thread::sleep(delay);
                Ok(())
            })
        });
        async move {
            match serial {
                Some(job) => job.await,
                None => {
                    sleep(delay).await;
                    Ok(())
                }
            }
        }
    }
}

impl<K> fmt::Debug for Delayed<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delayed")
            .field("latency", &self.latency)
            .field("serial", &self.serial.is_some())
            .finish()
    }
}

impl<K: PrivateKey> PrivateKey for Delayed<K> {
    fn info(&self) -> &KeyInfo {
        self.inner.info()
    }

    fn pool_stats(&self) -> Option<PoolStats> {
        self.inner.pool_stats()
    }

    fn sign_digest(
        &self,
        scheme: SignatureScheme,
        digest: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>>> + Send + 'static + use<K> {
        let checked = self.inner.info().check_sign(scheme, digest);
        let wait = checked.is_ok().then(|| self.wait(Operation::Sign));
        let op = self.inner.sign_digest(scheme, digest);
        async move {
            checked?;
            if let Some(wait) = wait {
                wait.await?;
            }
            op.await
        }
    }

    fn sign_message(
        &self,
        scheme: SignatureScheme,
        message: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>>> + Send + 'static + use<K> {
        let checked = self.inner.info().check_sign_message(scheme, message);
        let wait = checked.is_ok().then(|| self.wait(Operation::Sign));
        let op = self.inner.sign_message(scheme, message);
        async move {
            checked?;
            if let Some(wait) = wait {
                wait.await?;
            }
            op.await
        }
    }

    fn decrypt(
        &self,
        scheme: DecryptScheme,
        ciphertext: &[u8],
    ) -> impl Future<Output = Result<Zeroizing<Vec<u8>>>> + Send + 'static + use<K> {
        let checked = self.inner.info().check_decrypt(scheme, ciphertext);
        let wait = checked.is_ok().then(|| self.wait(Operation::Decrypt));
        let op = self.inner.decrypt(scheme, ciphertext);
        async move {
            checked?;
            if let Some(wait) = wait {
                wait.await?;
            }
            op.await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_latency_stays_within_its_bounds() {
        let (min, max) = (Duration::from_millis(20), Duration::from_millis(60));
        let latency = Latency::Uniform { min, max };
        let samples: Vec<Duration> = (0..2000).map(|_| latency.sample()).collect();
        assert!(samples.iter().all(|d| (min..=max).contains(d)));
        // Spread over the range, not stuck at one end.
        assert!(samples.iter().any(|d| *d < Duration::from_millis(30)));
        assert!(samples.iter().any(|d| *d > Duration::from_millis(50)));
        let inverted = Latency::Uniform { min: max, max: min };
        assert_eq!(inverted.sample(), max);
        assert_eq!(Latency::Fixed(min).sample(), min);
    }
}
