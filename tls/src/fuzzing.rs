//! The server's HTTP request-head parser, exposed for the fuzz targets in `fuzz/` (feature
//! `fuzzing`). Not a stable API: nothing outside `fuzz/` should use it.

use crate::http;

/// What a request head asked for, as the server reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestHead {
    /// A `HEAD` request: the response goes without its body.
    pub head_only: bool,
    /// A `GET` or `HEAD` request (anything else is answered 405).
    pub allowed: bool,
    /// The connection stays open after the response.
    pub keep_alive: bool,
    /// The length of the request body (read and discarded), from `Content-Length`.
    pub body_len: usize,
}

/// The largest request body the server reads (a longer `Content-Length` is refused).
pub const MAX_BODY: usize = http::MAX_BODY;

/// Where the request head in `buf` ends: the offset of its `\r\n\r\n`, once it has arrived.
pub fn find_head_end(buf: &[u8]) -> Option<usize> {
    http::find_head_end(buf)
}

/// Why the server refuses a request head: the reason it gives for closing the connection.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct BadHead(http::HttpError);

/// Parses a request head (the bytes before its `\r\n\r\n`) as the server does.
pub fn parse_head(head: &[u8]) -> Result<RequestHead, BadHead> {
    http::parse_head(head)
        .map(|r| RequestHead {
            head_only: r.head_only,
            allowed: r.allowed,
            keep_alive: r.keep_alive,
            body_len: r.body_len,
        })
        .map_err(BadHead)
}
