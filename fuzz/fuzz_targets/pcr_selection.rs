//! PCR selections: the text form (`sha256:0,7`, `sha1:0+sha256:0-7`) and the marshalled
//! `TPML_PCR_SELECTION` never panic when parsed; a parsed selection is canonical (its text
//! parses back to it, it marshalls and unmarshalls to itself with nothing left over), and
//! unmarshalling returns exactly the bytes after the structure.
#![no_main]

use hardkey_tpm::PcrSelection;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match text.parse::<PcrSelection>() {
            Ok(selection) => canonical(&selection),
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    match PcrSelection::unmarshall(data) {
        Ok((selection, rest)) => {
            canonical(&selection);
            let used = data.len() - rest.len();
            assert_eq!(&data[used..], rest);
            // The structure is at most 4 + 16 * (2 + 1 + 4) bytes.
            assert!(used <= 4 + 16 * 7);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});

fn canonical(selection: &PcrSelection) {
    let text = selection.to_string();
    let back: PcrSelection = text
        .parse()
        .unwrap_or_else(|e| panic!("{selection:?} prints as {text:?}, which does not parse: {e}"));
    assert_eq!(&back, selection, "{text:?}");
    let bytes = selection.marshall();
    let (back, rest) = PcrSelection::unmarshall(&bytes).unwrap_or_else(|e| {
        panic!("{text:?} marshalls to {bytes:02x?}, which does not parse: {e}")
    });
    assert_eq!(&back, selection, "{text:?}");
    assert!(rest.is_empty());
    let mut slots = 0;
    for bank in selection.banks() {
        let pcrs = selection.pcrs(bank);
        assert!(!pcrs.is_empty(), "{text:?}: an empty bank");
        assert!(pcrs.windows(2).all(|w| w[0] < w[1]) && pcrs.iter().all(|&i| i < 24));
        slots += pcrs.len();
    }
    assert!(slots > 0, "{text:?} selects nothing");
}
