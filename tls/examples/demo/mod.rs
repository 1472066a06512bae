//! The examples' demo key: a P-256 key in memory with a certificate from a throwaway CA.

use std::sync::Arc;

use futures::executor::block_on;
use hardkey_api::{GenerateRequest, KeyAlgorithm, KeyStore, PrivateKey, SharedKey};
use hardkey_soft::SoftStore;
use hardkey_tls::CertChain;

/// A P-256 key in memory and a certificate for it from a throwaway CA (whose certificate is
/// written to `target/serve-example-ca.pem` for curl). With a real device, the key is in the
/// TPM or HSM and the certificate comes from your CA, for a CSR made with the key.
pub(crate) fn key_and_chain(
    store: &SoftStore,
) -> Result<(SharedKey, CertChain), Box<dyn std::error::Error>> {
    use der::Decode;
    let key = block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP256).label("demo")))?;
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "hardkey example CA");
    let ca = ca.self_signed(&ca_key)?;
    std::fs::create_dir_all("target")?;
    std::fs::write("target/serve-example-ca.pem", ca.pem())?;

    struct Subject(Vec<u8>);
    impl rcgen::PublicKeyData for Subject {
        fn der_bytes(&self) -> &[u8] {
            &self.0
        }
        fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
            &rcgen::PKCS_ECDSA_P256_SHA256
        }
    }
    let spki = spki::SubjectPublicKeyInfoRef::from_der(key.info().public_key.der())?;
    let subject = Subject(spki.subject_public_key.raw_bytes().to_vec());
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?
        .signed_by(&subject, &ca, &ca_key)?;
    let chain = CertChain::from_pem(format!("{}{}", leaf.pem(), ca.pem()))?;
    Ok((Arc::new(key), chain))
}
