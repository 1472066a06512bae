//! Software keys for hardkey.
#![forbid(unsafe_code)]
