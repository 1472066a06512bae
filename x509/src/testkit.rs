//! X.509 checks of a backend's keys by independent verifiers (features `testkit` and `x509`).
//!
//! [`check_with_openssl`] has one key sign a certificate signing request, a self-signed leaf, a
//! self-signed CA, and (through x509-cert's own builders and [`build_async`]) a leaf certificate
//! for another key and a request, both issued by that CA. The `openssl` command verifies every
//! signature, rejects each one with a flipped bit (so the check is known to look at the
//! signature), and reads back the subject, the alternative names, the extensions and the public
//! key; the `rsa`/`p256`/`p384` crates verify the signatures too, and x509-cert decodes and
//! re-encodes every structure unchanged.
//!
//! Backends run it against their own keys, since devices sign differently (a TPM's ECDSA
//! `r || s` becomes DER on the host, PKCS#11 PSS salts...):
//!
//! ```ignore
//! let key = block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP256)))?;
//! hardkey_x509::testkit::check_with_openssl(&key, None, tempdir.path());
//! ```
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test kit reports failures by panicking, like assert!"
)]

use std::path::Path;
use std::process::{Command, Output};

use der::{Decode, Encode};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::builder::{CertificateBuilder, Profile, RequestBuilder};
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, SubjectKeyIdentifier};
use x509_cert::request::CertReq;

use crate::{
    CertOptions, Certificate, Csr, CsrOptions, Subject, SubjectAltNames, X509Signature, X509Signer,
    build_async, build_csr, random_serial, self_signed, validity,
};
use hardkey_api::testkit::{block_on, make_pkcs8, verify_signature};
use hardkey_api::{KeyAlgorithm, KeyFamily, PrivateKey, SignatureKind, SignatureScheme};

/// The subject every check uses (an escaped comma included).
pub const SUBJECT: &str = "CN=web.example,O=Example\\, Inc.,C=DE";
/// How `openssl -text` prints [`SUBJECT`].
pub const SUBJECT_TEXT: &str = "C = DE, O = \"Example, Inc.\", CN = web.example";
/// The subject alternative names every check uses: each type, IPv4 and IPv6.
pub const SANS: &str = "dns:web.example,dns:*.web.example,ip:10.0.0.1,ip:::1,\
    email:admin@web.example,uri:https://web.example/";
/// How `openssl -text` prints [`SANS`].
pub const SANS_TEXT: &str = "DNS:web.example, DNS:*.web.example, IP Address:10.0.0.1, \
    IP Address:0:0:0:0:0:0:0:1, email:admin@web.example, URI:https://web.example/";

/// One X.509 trial of a backend: a key of `algorithm` signs everything [`check_with_openssl`]
/// makes, once with each of `schemes` (`None`: the default scheme).
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// The trial's name.
    pub name: &'static str,
    /// The key's algorithm.
    pub algorithm: KeyAlgorithm,
    /// The schemes it signs with.
    pub schemes: &'static [Option<SignatureScheme>],
}

/// The trials every device backend runs on its own keys: both curves and RSA with PKCS#1 v1.5
/// and PSS (devices sign PSS through their own mechanisms).
pub const CASES: &[Case] = &[
    Case {
        name: "p256_csr_and_certificates",
        algorithm: KeyAlgorithm::EcP256,
        schemes: &[None],
    },
    Case {
        name: "p384_csr_and_certificates",
        algorithm: KeyAlgorithm::EcP384,
        schemes: &[None],
    },
    Case {
        name: "rsa2048_pkcs1_and_pss_csr_and_certificates",
        algorithm: KeyAlgorithm::Rsa2048,
        schemes: &[None, Some(SignatureScheme::RsaPssSha256)],
    },
];

/// The EdDSA trials, for backends that have EdDSA (SoftHSM: both curves).
pub const EDDSA_CASES: &[Case] = &[
    Case {
        name: "ed25519_csr_and_certificates",
        algorithm: KeyAlgorithm::Ed25519,
        schemes: &[None],
    },
    Case {
        name: "ed448_csr_and_certificates",
        algorithm: KeyAlgorithm::Ed448,
        schemes: &[None],
    },
];

/// What one run of [`check_with_openssl`] made, for further assertions.
#[derive(Debug)]
pub struct Checked {
    /// The signing request.
    pub csr: Csr,
    /// The self-signed leaf certificate.
    pub leaf: Certificate,
    /// The self-signed CA certificate.
    pub ca: Certificate,
    /// A leaf certificate for a fresh P-256 key, issued by `ca` through x509-cert's builder.
    pub issued: x509_cert::Certificate,
}

/// Runs `openssl` with `args`; the output, whether it succeeded or not.
pub fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl command is needed (apt-get install openssl; make test installs it)")
}

/// Runs `openssl` with `args` and returns its stdout and stderr; panics if it fails.
pub fn openssl_ok(args: &[&str]) -> String {
    hardkey_api::testkit::harness::run_ok_text(Command::new("openssl").args(args))
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

/// Whitespace collapsed to single spaces, so multi-line `-text` output can be searched.
fn flat(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The DER with the last byte (the end of the signature) changed.
fn tampered(der: &[u8]) -> Vec<u8> {
    let mut bad = der.to_vec();
    if let Some(last) = bad.last_mut() {
        *last ^= 0x01;
    }
    bad
}

fn write_pem(dir: &Path, name: &str, label: &str, der: &[u8]) -> String {
    let path = dir.join(name);
    let pem = der::pem::encode_string(label, der::pem::LineEnding::LF, der).unwrap();
    std::fs::write(&path, pem).unwrap();
    path_str(&path).to_owned()
}

/// What `openssl -text` prints about the signature algorithm of `scheme` (flattened text;
/// openssl 3.0 prints a certificate request's PSS parameters after "Signature Value:").
fn openssl_algorithm_text(scheme: SignatureScheme) -> Vec<String> {
    let hash = scheme.hash().map_or("none", |h| h.name());
    match scheme.kind() {
        SignatureKind::EdDsa => vec![format!(
            "Signature Algorithm: {}",
            scheme.name().to_uppercase()
        )],
        SignatureKind::Ecdsa => vec![format!(
            "Signature Algorithm: ecdsa-with-{}",
            hash.to_uppercase()
        )],
        SignatureKind::RsaPkcs1v15 => vec![format!("Signature Algorithm: {hash}WithRSAEncryption")],
        SignatureKind::RsaPss => vec![
            "Signature Algorithm: rsassaPss".to_owned(),
            format!("Hash Algorithm: {hash} Mask Algorithm: mgf1 with {hash}"),
            format!(
                "Salt Length: 0x{:02X}",
                scheme.pss_salt_len().unwrap_or_default()
            ),
            "Trailer Field: 0x01 (default)".to_owned(),
        ],
        kind => panic!("no openssl text for {kind:?} signatures"),
    }
}

/// The signature checked by the `rsa`/`p256`/`p384` crates.
fn verify_in_process(key_spki: &[u8], scheme: SignatureScheme, tbs: &[u8], signature: &[u8]) {
    if scheme == SignatureScheme::Ed448 {
        // No Ed448 software verifier: openssl checks it (pkeyutl -verify -rawin).
        return hardkey_api::testkit::verify_independently(key_spki, scheme, tbs, signature);
    }
    if let Err(e) = verify_signature(key_spki, scheme, tbs, signature) {
        panic!("the RustCrypto verifier rejects the X.509 signature: {e}");
    }
}

/// Signs a CSR, a self-signed leaf, a self-signed CA and a CA-issued leaf and request with
/// `key` (with `scheme`, or the key's default) and checks them all with `openssl` and the
/// RustCrypto verifiers, writing files into `dir`. Panics with the tool's output on failure.
pub fn check_with_openssl<K: PrivateKey>(
    key: &K,
    scheme: Option<SignatureScheme>,
    dir: &Path,
) -> Checked {
    let info = key.info();
    let public_pem = info.public_key.to_pem();
    let spki = info.public_key.der();
    let subject: Subject = SUBJECT.parse().unwrap();
    let sans: SubjectAltNames = SANS.parse().unwrap();

    // The signing request.
    let options = CsrOptions::new(subject.clone())
        .sans(sans.clone())
        .scheme(scheme);
    let csr = block_on(build_csr(key, &options)).unwrap();
    let used = csr.scheme();
    if let Some(asked) = scheme {
        assert_eq!(used, asked);
    }
    let alg_text = openssl_algorithm_text(used);
    let csr_path = dir.join("req.pem");
    std::fs::write(&csr_path, csr.to_pem()).unwrap();
    let csr_file = path_str(&csr_path);
    let verified = openssl_ok(&["req", "-in", csr_file, "-verify", "-noout"]);
    assert!(verified.contains("verify OK"), "{verified}");
    let text = flat(&openssl_ok(&["req", "-in", csr_file, "-noout", "-text"]));
    let mut needles = vec![
        format!("Subject: {SUBJECT_TEXT}"),
        format!("Requested Extensions: X509v3 Subject Alternative Name: {SANS_TEXT}"),
    ];
    needles.extend(alg_text.iter().cloned());
    for needle in needles {
        assert!(text.contains(&needle), "CSR text lacks {needle:?}:\n{text}");
    }
    assert_eq!(
        openssl_ok(&["req", "-in", csr_file, "-noout", "-pubkey"]),
        public_pem
    );
    let bad = write_pem(
        dir,
        "req-bad.pem",
        "CERTIFICATE REQUEST",
        &tampered(csr.as_der()),
    );
    // openssl 3.0's `req -verify` exits with 0 on a bad signature: read what it says.
    let out = openssl(&["req", "-in", &bad, "-verify", "-noout"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("verify failure") && !said.contains("verify OK"),
        "openssl accepts a request with a flipped signature bit: {said}"
    );
    let decoded = CertReq::from_der(csr.as_der()).unwrap();
    assert_eq!(&decoded, csr.as_x509());
    assert_eq!(decoded.to_der().unwrap(), csr.as_der());
    verify_in_process(
        spki,
        used,
        &decoded.info.to_der().unwrap(),
        decoded.signature.raw_bytes(),
    );

    // Self-signed leaf and CA.
    let days = 30;
    let mut certificates = Vec::new();
    for ca in [false, true] {
        let options = CertOptions::new(subject.clone())
            .sans(sans.clone())
            .days(days)
            .ca(ca)
            .scheme(scheme);
        let cert = block_on(self_signed(key, &options)).unwrap();
        assert_eq!(cert.scheme(), used);
        let name = if ca { "ca.pem" } else { "leaf.pem" };
        let path = dir.join(name);
        std::fs::write(&path, cert.to_pem()).unwrap();
        let file = path_str(&path);
        // -check_ss_sig: verify the signature of the self-signed trust anchor too (openssl
        // skips it otherwise).
        let verified = openssl_ok(&["verify", "-check_ss_sig", "-CAfile", file, file]);
        assert!(verified.contains(": OK"), "{verified}");
        let text = flat(&openssl_ok(&["x509", "-in", file, "-noout", "-text"]));
        let usage = match (ca, info.algorithm.family()) {
            (true, _) => "Certificate Sign, CRL Sign",
            (false, KeyFamily::Rsa) => "Digital Signature, Key Encipherment",
            (false, KeyFamily::Ec | KeyFamily::EdDsa) => "Digital Signature",
            (false, family) => panic!("no expected key usage for {family:?} keys"),
        };
        let mut needles = vec![
            "Version: 3 (0x2)".to_owned(),
            format!("Issuer: {SUBJECT_TEXT}"),
            format!("Subject: {SUBJECT_TEXT}"),
            "X509v3 Subject Key Identifier:".to_owned(),
            "X509v3 Authority Key Identifier:".to_owned(),
            format!(
                "X509v3 Basic Constraints: critical CA:{}",
                if ca { "TRUE" } else { "FALSE" }
            ),
            format!("X509v3 Key Usage: critical {usage}"),
            // Not critical: the subject is not empty.
            format!("X509v3 Subject Alternative Name: {SANS_TEXT}"),
        ];
        needles.extend(alg_text.iter().cloned());
        if !ca {
            needles.push(
                "X509v3 Extended Key Usage: TLS Web Server Authentication, TLS Web Client \
                 Authentication"
                    .to_owned(),
            );
        } else {
            assert!(!text.contains("Extended Key Usage"), "{text}");
        }
        for needle in needles {
            assert!(
                text.contains(&needle),
                "{name} text lacks {needle:?}:\n{text}"
            );
        }
        assert_eq!(
            openssl_ok(&["x509", "-in", file, "-noout", "-pubkey"]),
            public_pem
        );
        let bad = write_pem(
            dir,
            &format!("bad-{name}"),
            "CERTIFICATE",
            &tampered(cert.as_der()),
        );
        let out = openssl(&["verify", "-check_ss_sig", "-CAfile", &bad, &bad]);
        assert!(
            !out.status.success(),
            "openssl accepts {name} with a flipped signature bit"
        );

        let decoded = x509_cert::Certificate::from_der(cert.as_der()).unwrap();
        assert_eq!(&decoded, cert.as_x509());
        assert_eq!(decoded.to_der().unwrap(), cert.as_der());
        let tbs = &decoded.tbs_certificate;
        let lifetime =
            tbs.validity.not_after.to_unix_duration() - tbs.validity.not_before.to_unix_duration();
        assert_eq!(
            lifetime.as_secs(),
            u64::from(days) * 86_400 + crate::BACKDATE.as_secs()
        );
        assert!(tbs.serial_number.as_bytes().len() <= 20);
        let (_, ski) = tbs.get::<SubjectKeyIdentifier>().unwrap().unwrap();
        let (_, aki) = tbs.get::<AuthorityKeyIdentifier>().unwrap().unwrap();
        assert_eq!(aki.key_identifier.as_ref(), Some(&ski.0));
        verify_in_process(
            spki,
            used,
            &tbs.to_der().unwrap(),
            decoded.signature.raw_bytes(),
        );
        certificates.push(cert);
    }
    let ca = certificates.pop().unwrap();
    let leaf = certificates.pop().unwrap();

    // x509-cert's builders, finished asynchronously through the adapter: the CA issues a
    // certificate and a request for another key.
    let signer = X509Signer::with_optional_scheme(key, scheme).unwrap();
    let (_, other_spki) = make_pkcs8(KeyAlgorithm::EcP256);
    let issued_subject: Subject = "CN=issued.web.example".parse().unwrap();
    let builder = CertificateBuilder::new(
        Profile::Leaf {
            issuer: subject.as_name().clone(),
            enable_key_agreement: false,
            enable_key_encipherment: false,
        },
        random_serial().unwrap(),
        validity(1).unwrap(),
        issued_subject.as_name().clone(),
        SubjectPublicKeyInfoOwned::from_der(&other_spki).unwrap(),
        &signer,
    )
    .unwrap();
    let issued = block_on(build_async(builder)).unwrap();
    let issued_file = write_pem(dir, "issued.pem", "CERTIFICATE", &issued.to_der().unwrap());
    let ca_file = path_str(&dir.join("ca.pem")).to_owned();
    let verified = openssl_ok(&["verify", "-CAfile", &ca_file, &issued_file]);
    assert!(verified.contains(": OK"), "{verified}");
    // The leaf's verification above needs the CA's key identifier to match.
    verify_in_process(
        spki,
        used,
        &issued.tbs_certificate.to_der().unwrap(),
        issued.signature.raw_bytes(),
    );

    let mut request = RequestBuilder::new(issued_subject.into_name(), &signer).unwrap();
    request.add_extension(&sans.to_extension_value()).unwrap();
    let request = block_on(build_async(request)).unwrap();
    let request_file = write_pem(
        dir,
        "builder-req.pem",
        "CERTIFICATE REQUEST",
        &request.to_der().unwrap(),
    );
    let verified = openssl_ok(&["req", "-in", &request_file, "-verify", "-noout"]);
    assert!(verified.contains("verify OK"), "{verified}");

    // The adapter as a RustCrypto AsyncSigner.
    let message = b"signed through async_signature::AsyncSigner";
    let signature: X509Signature = block_on(crate::async_signature::AsyncSigner::sign_async(
        &signer, message,
    ))
    .unwrap();
    verify_in_process(spki, used, message, signature.as_bytes());

    Checked {
        csr,
        leaf,
        ca,
        issued,
    }
}
