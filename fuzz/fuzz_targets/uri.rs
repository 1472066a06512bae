//! Key URIs (`pkcs11:`, `tpm2:`, `file:`): parsing never panics; what parses prints back to a
//! URI that parses to the same value (`parse(display(x)) == x`, the module's stated round trip,
//! with `to_string_with_pin` when a `pin-value` was accepted); the scheme-specific parsers
//! agree with `KeyUri`; and no error, `Display` or `Debug` text shows a `pin-value`'s value.
#![no_main]

use hardkey_api::uri::{FileUri, KeyUri, Pkcs11Uri, Tpm2Uri, UriParseOptions, redact};
use libfuzzer_sys::fuzz_target;
use secrecy::ExposeSecret;

/// Put where a PIN goes, then looked for in every text the parser produces.
const CANARY: &str = "hk0canary9pin";

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let allow_pin = UriParseOptions::new().allow_pin_value(true);
    for opts in [UriParseOptions::new(), allow_pin] {
        match KeyUri::parse_with(s, &opts) {
            Ok(uri) => round_trip(s, &uri, &opts),
            Err(e) => {
                assert!(e.position <= s.len(), "{s:?}: position {}", e.position);
                let _ = e.to_string();
            }
        }
    }
    let _ = redact(s);
    pin_never_shown(s);
});

fn round_trip(s: &str, uri: &KeyUri, opts: &UriParseOptions) {
    let printed = uri.to_string();
    let again: KeyUri = printed
        .parse()
        .unwrap_or_else(|e| panic!("{s:?} parsed, its display {printed:?} does not: {e}"));
    // The canonical form is a fixed point.
    assert_eq!(again.to_string(), printed, "{s:?}");
    match uri {
        KeyUri::Pkcs11(p) => {
            let with_pin = p.to_string_with_pin();
            let back = Pkcs11Uri::parse_with(
                with_pin.expose_secret(),
                &UriParseOptions::new().allow_pin_value(true),
            )
            .unwrap_or_else(|e| panic!("{s:?}: to_string_with_pin does not parse: {e}"));
            assert_eq!(&back, p, "{s:?}");
            if p.pin_value().is_none() {
                assert_eq!(again, *uri, "{s:?} -> {printed:?}");
            }
            assert_eq!(Pkcs11Uri::parse_with(s, opts).as_ref(), Ok(p), "{s:?}");
        }
        KeyUri::Tpm2(t) => {
            assert_eq!(again, *uri, "{s:?} -> {printed:?}");
            assert_eq!(s.parse::<Tpm2Uri>().as_ref(), Ok(t), "{s:?}");
        }
        KeyUri::File(f) => {
            assert_eq!(again, *uri, "{s:?} -> {printed:?}");
            assert_eq!(s.parse::<FileUri>().as_ref(), Ok(f), "{s:?}");
        }
        _ => {}
    }
}

/// Inserts the canary after the first `pin-value=` (as if it were the PIN the user typed)
/// and checks that no text made from the result shows it.
fn pin_never_shown(s: &str) {
    const KEY: &str = "pin-value=";
    let Some(at) = s.to_ascii_lowercase().find(KEY).map(|i| i + KEY.len()) else {
        return;
    };
    let input = format!("{}{CANARY}{}", &s[..at], &s[at..]);
    // Only the inserted copy may spell the canary, even once percent-decoded.
    let decoded = percent_decode_lossy(&input).to_ascii_lowercase();
    if decoded.matches(CANARY).count() != 1 || s.to_ascii_lowercase().contains(CANARY) {
        return;
    }
    let shown = |text: String, what: &str| {
        assert!(
            !text.to_ascii_lowercase().contains(CANARY),
            "{what} shows the pin-value of {input:?}: {text}"
        );
    };
    shown(redact(&input), "redact");
    for opts in [
        UriParseOptions::new(),
        UriParseOptions::new().allow_pin_value(true),
    ] {
        match KeyUri::parse_with(&input, &opts) {
            Err(e) => {
                shown(e.to_string(), "the error");
                shown(format!("{e:?}"), "the error's Debug");
            }
            Ok(KeyUri::Pkcs11(p))
                if p.pin_value()
                    .is_some_and(|pin| pin.expose_secret().contains(CANARY)) =>
            {
                shown(p.to_string(), "Display");
                shown(format!("{p:?}"), "Debug");
            }
            Ok(_) => {}
        }
    }
}

fn percent_decode_lossy(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).and_then(|b| hex(*b)),
            bytes.get(i + 2).and_then(|b| hex(*b)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
