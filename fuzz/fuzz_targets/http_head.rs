//! The HTTP/1.1 request head of the test server (`hardkey-tls` feature `fuzzing`): finding
//! the end of the head returns the first `\r\n\r\n`, and parsing any head returns a request or
//! a reason, never panics; an accepted request never announces a body over the limit, and a
//! `HEAD` request is always an allowed one.
#![no_main]

use hardkey_tls::fuzzing::{MAX_BODY, find_head_end, parse_head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let head = match find_head_end(data) {
        Some(end) => {
            assert_eq!(&data[end..end + 4], b"\r\n\r\n");
            assert!(!data[..end + 3].windows(4).any(|w| w == b"\r\n\r\n"));
            &data[..end]
        }
        None => {
            assert!(!data.windows(4).any(|w| w == b"\r\n\r\n"));
            data
        }
    };
    match parse_head(head) {
        Ok(request) => {
            assert!(request.body_len <= MAX_BODY);
            assert!(!request.head_only || request.allowed);
            assert!(std::str::from_utf8(head).is_ok());
        }
        Err(reason) => assert!(!reason.to_string().is_empty()),
    }
});
