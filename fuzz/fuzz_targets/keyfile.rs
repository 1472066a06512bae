//! `TSS2 PRIVATE KEY` files (keys and sealed data), as PEM text and as DER: decoding never
//! panics, and a decoded file re-encodes (`to_der`) to DER that decodes to the same file, whose
//! encoding is then a fixed point. `SealedData::from_pem` accepts exactly the sealed files.
#![no_main]

use hardkey_tpm::{KeyFile, KeyFileKind, SealedData};
use libfuzzer_sys::fuzz_target;
use tss_esapi::traits::Marshall;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = KeyFile::from_der(data, "fuzz.der") {
        round_trip(&file);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match KeyFile::from_pem(text, "fuzz.pem") {
        Ok(file) => {
            round_trip(&file);
            let pem = file.to_pem().expect("a decoded key file encodes as PEM");
            let back = KeyFile::from_pem(&pem, "again.pem").expect("to_pem output decodes");
            assert_same(&file, &back);
            let sealed = SealedData::from_pem(text, "fuzz.pem");
            assert_eq!(sealed.is_ok(), file.kind == KeyFileKind::Sealed);
            if let Ok(sealed) = sealed {
                let _ = (sealed.pcrs(), sealed.needs_auth());
                assert_eq!(sealed.to_pem().ok(), Some(pem));
            }
        }
        Err(e) => {
            let _ = e.to_string();
            assert!(SealedData::from_pem(text, "fuzz.pem").is_err());
        }
    }
});

fn round_trip(file: &KeyFile) {
    let der = file.to_der().expect("a decoded key file encodes");
    let back = KeyFile::from_der(&der, "again.der").expect("to_der output decodes");
    assert_same(file, &back);
    assert_eq!(
        back.to_der().ok(),
        Some(der),
        "the encoding is not a fixed point"
    );
}

fn assert_same(a: &KeyFile, b: &KeyFile) {
    assert_eq!(a.kind, b.kind);
    assert_eq!(a.empty_auth, b.empty_auth);
    assert_eq!(a.parent, b.parent);
    assert_eq!(a.public, b.public);
    assert_eq!(a.public.marshall().ok(), b.public.marshall().ok());
    assert_eq!(a.private.value(), b.private.value());
    assert_eq!(a.policy, b.policy);
}
