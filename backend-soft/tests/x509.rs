//! Certificate signing requests and self-signed certificates made through software keys,
//! checked by `openssl` and the RustCrypto verifiers (hardkey_x509::testkit), plus the
//! refusals of bad input and the `Send + 'static` futures the CLI and servers rely on.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

use std::sync::Arc;

use futures::executor::block_on;
use hardkey_api::{
    ErrorKind, GenerateRequest, KeyAlgorithm, KeyStore, PrivateKey, SharedKey, SignatureScheme,
};
use hardkey_soft::{SoftKey, SoftStore};
use hardkey_x509::testkit::check_with_openssl;
use hardkey_x509::{
    self as x509, CertOptions, CsrOptions, Subject, SubjectAltNames, X509Signer, build_csr,
    self_signed,
};

fn generate(store: &SoftStore, alg: KeyAlgorithm) -> SoftKey {
    block_on(store.generate(GenerateRequest::new(alg))).unwrap()
}

fn subject() -> Subject {
    "CN=web.example,O=Example,C=DE".parse().unwrap()
}

#[test]
fn p256_default_scheme_is_ecdsa_sha256_and_openssl_verifies() {
    let store = SoftStore::in_memory().unwrap();
    let key = generate(&store, KeyAlgorithm::EcP256);
    let dir = tempfile::tempdir().unwrap();
    let checked = check_with_openssl(&key, None, dir.path());
    assert_eq!(checked.csr.scheme(), SignatureScheme::EcdsaP256Sha256);
}

/// Ed25519: the request and certificate carry `id-Ed25519` without parameters (RFC 8410),
/// the TBS bytes are signed whole, and openssl verifies both.
#[test]
fn ed25519_default_scheme_is_ed25519_and_openssl_verifies() {
    let store = SoftStore::in_memory().unwrap();
    let key = generate(&store, KeyAlgorithm::Ed25519);
    let dir = tempfile::tempdir().unwrap();
    let checked = check_with_openssl(&key, None, dir.path());
    assert_eq!(checked.csr.scheme(), SignatureScheme::Ed25519);
    let signer = X509Signer::new(&key).unwrap();
    let id = signer.algorithm_identifier().unwrap();
    assert_eq!(id.oid.to_string(), "1.3.101.112");
    assert!(id.parameters.is_none());
    // An Ed25519 key refuses the other schemes, naming what it offers.
    let err = X509Signer::with_scheme(&key, SignatureScheme::EcdsaP256Sha256).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
}

#[test]
fn p384_default_scheme_is_ecdsa_sha384_and_openssl_verifies() {
    let store = SoftStore::in_memory().unwrap();
    let key = generate(&store, KeyAlgorithm::EcP384);
    let dir = tempfile::tempdir().unwrap();
    let checked = check_with_openssl(&key, None, dir.path());
    assert_eq!(checked.leaf.scheme(), SignatureScheme::EcdsaP384Sha384);
}

#[test]
fn rsa_pkcs1_default_and_pss_verify_with_openssl() {
    let store = SoftStore::in_memory().unwrap();
    let key = generate(&store, KeyAlgorithm::Rsa2048);
    let dir = tempfile::tempdir().unwrap();
    let checked = check_with_openssl(&key, None, dir.path());
    assert_eq!(checked.ca.scheme(), SignatureScheme::RsaPkcs1Sha256);
    for scheme in [
        SignatureScheme::RsaPssSha256,
        SignatureScheme::RsaPkcs1Sha384,
    ] {
        let dir = tempfile::tempdir().unwrap();
        check_with_openssl(&key, Some(scheme), dir.path());
    }
}

#[test]
fn rsa_pss_algorithm_identifier_has_the_rfc4055_parameters() {
    use hardkey_x509::x509_cert::der::{Decode, Encode};
    let store = SoftStore::in_memory().unwrap();
    let key = generate(&store, KeyAlgorithm::Rsa2048);
    let options = CsrOptions::new(subject()).scheme(Some(SignatureScheme::RsaPssSha256));
    let csr = block_on(build_csr(&key, &options)).unwrap();
    let algorithm = &csr.as_x509().algorithm;
    assert_eq!(algorithm.oid.to_string(), "1.2.840.113549.1.1.10");
    // Decoded by the rsa crate's own RSASSA-PSS-params type.
    let params = algorithm.parameters.as_ref().unwrap().to_der().unwrap();
    let params = rsa::pkcs1::RsaPssParams::from_der(&params).unwrap();
    assert_eq!(params.hash.oid.to_string(), "2.16.840.1.101.3.4.2.1");
    assert_eq!(params.mask_gen.oid.to_string(), "1.2.840.113549.1.1.8");
    assert_eq!(
        params.mask_gen.parameters.unwrap().oid.to_string(),
        "2.16.840.1.101.3.4.2.1"
    );
    assert_eq!(params.salt_len, 32);
    assert_eq!(params.trailer_field, rsa::pkcs1::TrailerField::BC);
}

#[test]
fn unsupported_schemes_are_refused_with_the_keys_error() {
    let store = SoftStore::in_memory().unwrap();
    let ec = generate(&store, KeyAlgorithm::EcP256);
    for scheme in [
        SignatureScheme::RsaPssSha256,
        SignatureScheme::EcdsaP384Sha384,
    ] {
        let options = CsrOptions::new(subject()).scheme(Some(scheme));
        let err = block_on(build_csr(&ec, &options)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(scheme.name()) && msg.contains("ecdsa-p256-sha256"),
            "{msg}"
        );
        let options = CertOptions::new(subject()).scheme(Some(scheme));
        let err = block_on(self_signed(&ec, &options)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        assert!(X509Signer::with_scheme(&ec, scheme).is_err());
    }
}

#[test]
fn zero_days_and_bad_names_are_refused_before_signing() {
    let store = SoftStore::in_memory().unwrap();
    let key = generate(&store, KeyAlgorithm::EcP256);
    let options = CertOptions::new(subject()).days(0);
    let err = block_on(self_signed(&key, &options)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(
        err.to_string(),
        "invalid certificate validity: it must be at least 1 day"
    );

    let err = "CN=web.example,Organization=Example"
        .parse::<Subject>()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.to_string()
            .starts_with("unknown subject attribute type 'Organization': expected CN, O, OU"),
        "{err}"
    );
    let err = "CN=web.example,O".parse::<Subject>().unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid subject attribute 'O': expected TYPE=value"),
        "{err}"
    );

    let err = SubjectAltNames::parse(["dns:web.example", "ip:10.0.0.256"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.to_string()
            .starts_with("invalid IP address 'ip:10.0.0.256': expected ip: followed by"),
        "{err}"
    );
    let err = "dns:web.example,web2.example"
        .parse::<SubjectAltNames>()
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid subject alternative name 'web2.example': expected"),
        "{err}"
    );
}

#[test]
fn futures_are_send_and_static_under_tokio_and_block_on() {
    use hardkey_x509::x509_cert::der::Decode;
    fn assert_send_static<T: Send + 'static>(_: &T) {}

    let store = SoftStore::in_memory().unwrap();
    let key: SharedKey = Arc::new(generate(&store, KeyAlgorithm::EcP256));
    let csr_options = CsrOptions::new(subject()).sans("dns:web.example".parse().unwrap());
    let cert_options = CertOptions::new(subject()).days(7);

    // Built, then the key and options are gone before the futures run.
    let csr = build_csr(&key, &csr_options);
    let cert = self_signed(&key, &cert_options);
    assert_send_static(&csr);
    assert_send_static(&cert);
    drop(csr_options);
    drop(cert_options);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let (csr, cert) = runtime.block_on(async move {
        let csr = tokio::spawn(csr);
        let cert = tokio::spawn(cert);
        (csr.await.unwrap().unwrap(), cert.await.unwrap().unwrap())
    });
    assert!(
        csr.to_pem()
            .starts_with("-----BEGIN CERTIFICATE REQUEST-----\n")
    );
    assert!(cert.to_pem().starts_with("-----BEGIN CERTIFICATE-----\n"));

    // A current-thread runtime and a plain block_on work too.
    let local = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    local
        .block_on(build_csr(&key, &CsrOptions::new(subject())))
        .unwrap();
    let cert = block_on(self_signed(&key, &CertOptions::new(subject()))).unwrap();
    assert_eq!(
        x509::x509_cert::Certificate::from_der(cert.as_der())
            .map(|c| c.tbs_certificate.subject.to_string())
            .unwrap(),
        "CN=web.example,O=Example,C=DE"
    );
    assert_eq!(
        cert.as_x509().tbs_certificate.subject_public_key_info,
        x509::x509_cert::spki::SubjectPublicKeyInfoOwned::try_from(key.info().public_key.der())
            .unwrap()
    );
}

#[test]
fn csr_without_sans_has_no_attributes() {
    let store = SoftStore::in_memory().unwrap();
    let key = generate(&store, KeyAlgorithm::EcP256);
    let csr = block_on(build_csr(&key, &CsrOptions::new(subject()))).unwrap();
    assert!(csr.as_x509().info.attributes.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("req.pem");
    std::fs::write(&path, csr.to_pem()).unwrap();
    let text = hardkey_x509::testkit::openssl_ok(&[
        "req",
        "-in",
        path.to_str().unwrap(),
        "-verify",
        "-noout",
        "-text",
    ]);
    assert!(text.contains("verify OK"), "{text}");
    assert!(text.contains("Attributes:\n            (none)"), "{text}");
    assert!(!text.contains("Subject Alternative Name"), "{text}");
}
