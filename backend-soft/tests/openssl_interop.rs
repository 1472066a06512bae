//! Interoperability with the `openssl` command line, an implementation independent of ours:
//! keys openssl generates are used by hardkey, hardkey's signatures verify with
//! `openssl dgst`, and key files hardkey writes are read by `openssl pkey`.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test code"
)]

use std::path::Path;
use std::process::Command;

use futures::executor::block_on;
use hardkey_api::{
    ErrorKind, FileUri, GenerateRequest, KeyAlgorithm, KeyStore, KeyUri, PrivateKey, SignatureKind,
    SignatureScheme,
};
use hardkey_soft::SoftStore;

fn openssl(args: &[&str]) -> std::process::Output {
    hardkey_api::testkit::harness::run_ok(Command::new("openssl").args(args))
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn genpkey(dir: &Path, alg: KeyAlgorithm) -> std::path::PathBuf {
    let path = dir.join(format!("{alg}.pem"));
    let opts: &[&str] = match alg {
        KeyAlgorithm::EcP256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        KeyAlgorithm::EcP384 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        KeyAlgorithm::Ed25519 => &["-algorithm", "ed25519"],
        _ => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    };
    let mut args = vec!["genpkey"];
    args.extend_from_slice(opts);
    args.extend_from_slice(&["-out", p(&path)]);
    openssl(&args);
    path
}

/// `openssl dgst` arguments that verify `scheme`.
fn dgst_args(scheme: SignatureScheme) -> Vec<&'static str> {
    let hash = scheme.hash().expect("dgst schemes have a hash");
    let mut args = vec!["dgst", format!("-{hash}").leak()];
    if scheme.kind() == SignatureKind::RsaPss {
        args.extend_from_slice(&[
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:digest",
        ]);
    }
    args
}

#[test]
fn hardkey_signs_with_openssl_keys_and_openssl_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let store = SoftStore::in_memory().unwrap();
    for alg in [
        KeyAlgorithm::EcP256,
        KeyAlgorithm::EcP384,
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::Rsa2048,
    ] {
        let key_path = genpkey(dir.path(), alg);
        let key = block_on(store.open(&KeyUri::File(FileUri::new(&key_path)))).unwrap();
        assert_eq!(key.info().algorithm, alg);

        // Our public key equals the one openssl derives from the private key.
        let pub_path = dir.path().join(format!("{alg}.pub.pem"));
        openssl(&["pkey", "-in", p(&key_path), "-pubout", "-out", p(&pub_path)]);
        assert_eq!(
            std::fs::read_to_string(&pub_path).unwrap(),
            key.info().public_key.to_pem()
        );

        let msg_path = dir.path().join("message");
        std::fs::write(&msg_path, b"signed by hardkey, checked by openssl").unwrap();
        for &scheme in alg.signature_schemes() {
            let sig = block_on(key.sign(scheme, &std::fs::read(&msg_path).unwrap())).unwrap();
            let sig_path = dir.path().join(format!("{scheme}.sig"));
            std::fs::write(&sig_path, &sig).unwrap();
            let out = if scheme.kind() == SignatureKind::EdDsa {
                // EdDSA signs the message itself: pkeyutl -rawin, not dgst.
                openssl(&[
                    "pkeyutl",
                    "-verify",
                    "-pubin",
                    "-inkey",
                    p(&pub_path),
                    "-rawin",
                    "-in",
                    p(&msg_path),
                    "-sigfile",
                    p(&sig_path),
                ])
            } else {
                let mut args = dgst_args(scheme);
                args.extend_from_slice(&[
                    "-verify",
                    p(&pub_path),
                    "-signature",
                    p(&sig_path),
                    p(&msg_path),
                ]);
                openssl(&args)
            };
            let expected = match scheme.kind() {
                SignatureKind::EdDsa => "Signature Verified Successfully",
                _ => "Verified OK",
            };
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                expected,
                "{scheme}"
            );
        }
    }
}

#[test]
fn openssl_reads_the_key_files_hardkey_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = SoftStore::in_memory().unwrap();
    for alg in [
        KeyAlgorithm::EcP256,
        KeyAlgorithm::EcP384,
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::Rsa2048,
    ] {
        let path = dir.path().join(format!("hk-{alg}.pem"));
        let request = GenerateRequest::new(alg).location(KeyUri::File(FileUri::new(&path)));
        let key = block_on(store.generate(request)).unwrap();
        let out = openssl(&["pkey", "-in", p(&path), "-pubout"]);
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            key.info().public_key.to_pem()
        );
        // openssl signs with the file; the signature verifies against hardkey's public key.
        let msg = dir.path().join("m");
        std::fs::write(&msg, b"signed by openssl with a hardkey key file").unwrap();
        let scheme = alg.signature_schemes()[0];
        let sig = dir.path().join("m.sig");
        if scheme.kind() == SignatureKind::EdDsa {
            openssl(&[
                "pkeyutl",
                "-sign",
                "-inkey",
                p(&path),
                "-rawin",
                "-in",
                p(&msg),
                "-out",
                p(&sig),
            ]);
        } else {
            let mut args = dgst_args(scheme);
            args.extend_from_slice(&["-sign", p(&path), "-out", p(&sig), p(&msg)]);
            openssl(&args);
        }
        hardkey_api::testkit::verify_signature(
            key.info().public_key.der(),
            scheme,
            &std::fs::read(&msg).unwrap(),
            &std::fs::read(&sig).unwrap(),
        )
        .unwrap();
    }
}

#[test]
fn legacy_pem_formats_load_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = SoftStore::in_memory().unwrap();
    let sec1 = dir.path().join("sec1.pem");
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        p(&sec1),
    ]);
    let pkcs1 = dir.path().join("pkcs1.pem");
    // Without -noout, openssl writes an EC PARAMETERS block before the key.
    let with_params = dir.path().join("params.pem");
    openssl(&[
        "ecparam",
        "-name",
        "secp384r1",
        "-genkey",
        "-out",
        p(&with_params),
    ]);
    openssl(&["genrsa", "-traditional", "-out", p(&pkcs1), "2048"]);
    for (path, alg) in [
        (sec1, KeyAlgorithm::EcP256),
        (with_params, KeyAlgorithm::EcP384),
        (pkcs1, KeyAlgorithm::Rsa2048),
    ] {
        let key = block_on(store.open(&KeyUri::File(FileUri::new(&path)))).unwrap();
        assert_eq!(key.info().algorithm, alg, "{}", path.display());
    }
}

#[test]
fn bad_key_files_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = SoftStore::in_memory().unwrap();
    let open = |path: &Path| {
        block_on(store.open(&KeyUri::File(FileUri::new(path))))
            .err()
            .unwrap()
    };

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a key").unwrap();
    let err = open(&garbage);
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("garbage.pem"), "{err}");

    let encrypted = dir.path().join("enc.pem");
    let plain = genpkey(dir.path(), KeyAlgorithm::EcP256);
    openssl(&[
        "pkcs8",
        "-topk8",
        "-in",
        p(&plain),
        "-out",
        p(&encrypted),
        "-passout",
        "pass:secret",
    ]);
    let err = open(&encrypted).to_string();
    assert!(
        err.contains("encrypted") && err.contains("openssl pkcs8"),
        "{err}"
    );

    let small = dir.path().join("rsa1024.pem");
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:1024",
        "-out",
        p(&small),
    ]);
    let err = open(&small).to_string();
    assert!(err.contains("2048, 3072 or 4096"), "{err}");

    // Ed25519 loads (hardkey_signs_with_openssl_keys...); Ed448 has no software
    // implementation and says where it can live instead.
    let ed = dir.path().join("ed448.pem");
    openssl(&["genpkey", "-algorithm", "ED448", "-out", p(&ed)]);
    let err = open(&ed);
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("CKM_EDDSA"), "{err}");

    assert_eq!(
        open(&dir.path().join("missing.pem")).kind(),
        ErrorKind::NotFound
    );

    // A key generated into an existing file is refused and the file left untouched.
    let before = std::fs::read(&plain).unwrap();
    let request =
        GenerateRequest::new(KeyAlgorithm::EcP256).location(KeyUri::File(FileUri::new(&plain)));
    let err = block_on(store.generate(request)).err().unwrap().to_string();
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read(&plain).unwrap(), before);
    // Nothing half-made: the failed generation registered no key.
    assert!(block_on(store.list()).unwrap().is_empty());
}

#[test]
fn delete_removes_only_files_the_store_created() {
    let dir = tempfile::tempdir().unwrap();
    let store = SoftStore::in_memory().unwrap();

    // A key file the user made: hardkey uses it but will not destroy it.
    let theirs = genpkey(dir.path(), KeyAlgorithm::EcP256);
    let key = block_on(store.open(&KeyUri::File(FileUri::new(&theirs)))).unwrap();
    let err = block_on(store.delete(&key.info().id)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(
        err.to_string().contains("remove the file yourself"),
        "{err}"
    );
    assert!(theirs.exists());

    // A key file hardkey generated: delete removes it.
    let ours = dir.path().join("ours.pem");
    let request =
        GenerateRequest::new(KeyAlgorithm::EcP256).location(KeyUri::File(FileUri::new(&ours)));
    let key = block_on(store.generate(request)).unwrap();
    assert!(ours.exists());
    block_on(store.delete(&key.info().id)).unwrap();
    assert!(!ours.exists());
}

#[test]
fn importing_a_key_twice_writes_nothing_the_second_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = SoftStore::in_memory().unwrap();
    let (pkcs8, _) = hardkey_api::testkit::make_pkcs8(KeyAlgorithm::EcP256);
    let first = dir.path().join("first.pem");
    let request =
        hardkey_api::ImportRequest::new(pkcs8.clone()).location(KeyUri::File(FileUri::new(&first)));
    block_on(store.import(request)).unwrap();
    let second = dir.path().join("second.pem");
    let request =
        hardkey_api::ImportRequest::new(pkcs8).location(KeyUri::File(FileUri::new(&second)));
    let err = block_on(store.import(request)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("already exists"), "{err}");
    assert!(!second.exists(), "a second private-key file was written");
}
