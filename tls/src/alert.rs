//! A fatal `internal_error` alert for a handshake whose private-key operation failed, so the
//! client learns the server gave up (RFC 8446 6.2: "internal_error ... unrelated to the peer")
//! instead of seeing the connection dropped.
//!
//! Neither stack sends one by itself: BoringSSL fails the handshake without an alert when the
//! private-key method fails (`ssl_private_key_failure` becomes `ssl_hs_error`; its
//! `SSL_send_fatal_alert` is not wrapped by the `boring` crate), and rustls 0.23 returns a
//! signer's error without queueing an alert (it has no API to send one). In both, the signature
//! is made while the server's first flight is still being built, before anything of it was
//! written: the client is still waiting for a ServerHello (or for the ServerHello after a
//! HelloRetryRequest), no key has been agreed, and an unencrypted alert record is the message
//! it expects. So the adapters discard the unsent flight and write that record themselves.

use tokio::io::{AsyncWrite, AsyncWriteExt};

/// The TLS record of a fatal `internal_error` alert, unencrypted: content type alert (21),
/// legacy record version 3.3, length 2, level fatal (2), description internal_error (80).
pub(crate) const INTERNAL_ERROR: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x50];

/// Writes [`INTERNAL_ERROR`] to `io` and shuts its write side down; errors are ignored (the
/// handshake has failed either way, and the client may be gone).
pub(crate) async fn send_internal_error<S: AsyncWrite + Unpin>(io: &mut S) {
    let send = async {
        io.write_all(&INTERNAL_ERROR).await?;
        io.flush().await?;
        io.shutdown().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), send).await;
}
