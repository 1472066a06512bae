//! Key policy: legacy RSA PKCS#1 v1.5 decryption is refused for software keys (the `rsa`
//! crate is not constant time, RUSTSEC-2023-0071), with or without the opt-in.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

use futures::executor::block_on;
use hardkey_api::{
    DecryptScheme, ErrorKind, GenerateRequest, KeyAlgorithm, KeyPolicy, KeyStore, PrivateKey,
};
use hardkey_soft::{SoftConfig, SoftStore};
use rsa::pkcs8::DecodePublicKey;

fn legacy_ciphertext(spki: &[u8], secret: &[u8]) -> Vec<u8> {
    let public = rsa::RsaPublicKey::from_public_key_der(spki).unwrap();
    public
        .encrypt(&mut rand_core::OsRng, rsa::Pkcs1v15Encrypt, secret)
        .unwrap()
}

#[test]
fn legacy_pkcs1v15_decrypt_is_refused_for_software_keys() {
    let secret = [0x03u8; 48]; // a TLS 1.2 pre-master secret is 48 bytes
    let policy = KeyPolicy::default().with_legacy_rsa_pkcs1v15_decrypt(true);
    let err = SoftStore::new(SoftConfig::default().workers(1).policy(policy)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("RUSTSEC-2023-0071"), "{err}");

    let strict = SoftStore::new(SoftConfig::default().workers(1)).unwrap();
    let key = block_on(strict.generate(GenerateRequest::new(KeyAlgorithm::Rsa2048))).unwrap();
    assert!(
        !key.info()
            .decrypt_schemes
            .contains(&DecryptScheme::RsaPkcs1v15Legacy)
    );
    let ct = legacy_ciphertext(key.info().public_key.der(), &secret);
    let err = block_on(key.decrypt(DecryptScheme::RsaPkcs1v15Legacy, &ct)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("legacy"), "{err}");
}
