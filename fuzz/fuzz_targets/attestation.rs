//! Attestation evidence as `hardkey attest --verify` reads it: `Evidence::from_json` and
//! `Evidence::verify` never panic, whatever the file says; a parsed file re-encodes
//! (`to_json`) to text that parses to the same evidence. Inputs that are not JSON are taken
//! as the raw parts (TPMS_ATTEST, signature, the key's and the AK's TPM2B_PUBLIC, each behind
//! a 2-byte length) and wrapped into a file, so the TPM structure parsers see arbitrary bytes
//! without the fuzzer having to find base64.
#![no_main]

use base64ct::{Base64, Encoding as _};
use hardkey_api::PublicKey;
use hardkey_fuzz::P256_SPKI;
use hardkey_tpm::{Evidence, Expected};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = match std::str::from_utf8(data) {
        Ok(text) if text.trim_start().starts_with('{') => text.to_owned(),
        _ => wrap(data),
    };
    let evidence = match Evidence::from_json(&text, "fuzz.json") {
        Ok(e) => e,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let again =
        Evidence::from_json(&evidence.to_json(), "again.json").expect("to_json output parses");
    assert_eq!(again, evidence, "the JSON form does not round-trip");
    let key = PublicKey::from_spki_der(P256_SPKI).expect("fixture key");
    for ak in [None, Some(&evidence.ak_public_key)] {
        for nonce in [None, Some(&b"nonce"[..])] {
            match evidence.verify(&Expected {
                key: &key,
                ak,
                nonce,
            }) {
                Ok(v) => {
                    // Only what the checks allow gets through.
                    assert!(v.key_attributes.contains(&"fixedTPM"));
                    if let Some(nonce) = nonce {
                        assert_eq!(v.extra_data, nonce);
                    }
                }
                Err(e) => {
                    let _ = (e.to_string(), e.check(), e.is_malformed());
                }
            }
        }
    }
    let _ = evidence.key_public_key();
});

/// Raw parts (each a 2-byte big-endian length, then the bytes) as an evidence file whose AK
/// PEM is the fixture P-256 key.
fn wrap(mut data: &[u8]) -> String {
    let mut part = || {
        let Some((len, rest)) = data.split_first_chunk::<2>() else {
            return std::mem::take(&mut data).to_vec();
        };
        let len = usize::from(u16::from_be_bytes(*len)).min(rest.len());
        let (this, rest) = rest.split_at(len);
        data = rest;
        this.to_vec()
    };
    let (attest, signature, key_public, ak_public) = (part(), part(), part(), part());
    let pem = PublicKey::from_spki_der(P256_SPKI)
        .expect("fixture key")
        .to_pem()
        .replace('\n', "\\n");
    format!(
        r#"{{"format":"hardkey-tpm2-certify-v1","attest":"{}","signature":{{"scheme":"ecdsa-p256-sha256","value":"{}"}},"ak":{{"public":"{}","public_key_pem":"{pem}"}},"key":{{"name":"{}","public":"{}"}}}}"#,
        Base64::encode_string(&attest),
        Base64::encode_string(&signature),
        Base64::encode_string(&ak_public),
        hex::encode(
            attest
                .get(attest.len().saturating_sub(34)..)
                .unwrap_or_default()
        ),
        Base64::encode_string(&key_public),
    )
}
