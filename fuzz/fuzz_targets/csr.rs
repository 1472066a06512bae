//! Certificate signing requests from outside, as `hardkey ca sign` reads them
//! (`CertRequest::parse`: PEM or DER, then the self-signature verified in software): parsing
//! never panics and every error can be printed; a request that verifies reads the same again
//! from its DER, its names and key can be shown, and one bit flipped in its signature makes
//! it fail.
#![no_main]

use hardkey_x509::{CertRequest, IssueError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match CertRequest::parse(data) {
        Ok(request) => {
            let _ = format!(
                "{request:?} {} {} {}",
                request.subject(),
                request.signature_algorithm(),
                request
                    .requested_sans()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            );
            let again = CertRequest::from_der(request.as_der()).expect("its own DER parses");
            assert_eq!(again, request);
            // The signature BIT STRING ends the request: its last byte is signed data.
            let mut altered = request.as_der().to_vec();
            if let Some(last) = altered.last_mut() {
                *last ^= 0x01;
            }
            assert!(
                CertRequest::from_der(&altered).is_err(),
                "a request with an altered signature verified"
            );
        }
        Err(e) => {
            let _ = e.to_string();
            let _: &IssueError = &e;
        }
    }
});
