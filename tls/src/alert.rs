//! Fatal alerts the adapters send themselves, where the stack would send none or a misleading
//! one:
//!
//! - `internal_error` for a handshake whose private-key operation failed, so the client learns
//!   the server gave up (RFC 8446 6.2: "internal_error ... unrelated to the peer") instead of
//!   seeing the connection dropped. Neither stack sends one by itself: BoringSSL fails the
//!   handshake without an alert when the private-key method fails (`ssl_private_key_failure`
//!   becomes `ssl_hs_error`; its `SSL_send_fatal_alert` is not wrapped by the `boring` crate),
//!   and rustls 0.23 returns a signer's error without queueing an alert (it has no API to send
//!   one).
//! - `unrecognized_name` for a server name no identity covers (RFC 6066 3), on rustls, which
//!   sends `access_denied` when its certificate resolver finds nothing. (BoringSSL sends it
//!   from the servername callback.)
//!
//! In each case the alert goes out while the server's first flight is still being built,
//! before anything of it was written: the client is still waiting for a ServerHello (or for
//! the ServerHello after a HelloRetryRequest), no key has been agreed, and an unencrypted
//! alert record is the message it expects. So the adapters discard the unsent flight and
//! write that record themselves.

use tokio::io::{AsyncWrite, AsyncWriteExt};

/// A fatal alert hardkey sends itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alert {
    /// `handshake_failure` (40): no certificate for a client that sent no server name.
    HandshakeFailure,
    /// `internal_error` (80): the key failed.
    InternalError,
    /// `unrecognized_name` (112): no certificate for the server name the client sent.
    UnrecognizedName,
}

impl Alert {
    /// The TLS record of the fatal alert, unencrypted: content type alert (21), legacy record
    /// version 3.3, length 2, level fatal (2), then the description.
    pub(crate) const fn record(self) -> [u8; 7] {
        let description = match self {
            Self::HandshakeFailure => 40,
            Self::InternalError => 80,
            Self::UnrecognizedName => 112,
        };
        [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description]
    }

    /// The alert's name, as RFC 8446 spells it.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::HandshakeFailure => "handshake_failure",
            Self::InternalError => "internal_error",
            Self::UnrecognizedName => "unrecognized_name",
        }
    }

    /// A compact code for an atomic (0 is "none").
    pub(crate) const fn code(self) -> u8 {
        self.record()[6]
    }

    /// The alert of [`code`](Self::code), if any.
    pub(crate) const fn from_code(code: u8) -> Option<Self> {
        match code {
            40 => Some(Self::HandshakeFailure),
            80 => Some(Self::InternalError),
            112 => Some(Self::UnrecognizedName),
            _ => None,
        }
    }
}

/// Writes `alert`'s record to `io` and shuts its write side down; errors are ignored (the
/// handshake has failed either way, and the client may be gone).
pub(crate) async fn send<S: AsyncWrite + Unpin>(io: &mut S, alert: Alert) {
    let send = async {
        io.write_all(&alert.record()).await?;
        io.flush().await?;
        io.shutdown().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), send).await;
}
