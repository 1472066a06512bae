//! hardkey and independent tools on one tpm2-pkcs11 token (swtpm behind tpm2-abrmd): keys
//! made by `pkcs11-tool` are used by hardkey and its signatures (RSA-PSS included, which the
//! module does not list) verify with `openssl` against the public key `pkcs11-tool` exports;
//! keys hardkey generates are used by `pkcs11-tool`; `openssl` encrypts to a hardkey key that
//! decrypts on the token. And what tpm2-pkcs11 cannot do is refused cleanly: RSA-4096 keys,
//! private-key import; and what it does differently is said in the key's description.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test code"
)]

use std::path::Path;
use std::process::{Command, Output};

use futures::executor::block_on;
use hardkey_api::testkit::harness::{Arguments, NamedTest, run_on, trials_on};
use hardkey_api::testkit::{make_pkcs8, verify_signature};
use hardkey_api::uri::Pkcs11Uri;
use hardkey_api::{
    DecryptScheme, ErrorKind, GenerateRequest, ImportRequest, KeyAlgorithm, KeyStore, KeyUri,
    PrivateKey, SignatureKind, SignatureScheme,
};
use softhsm_tests::Tpm2Pkcs11;

fn ok(mut cmd: Command) -> Output {
    hardkey_api::testkit::harness::run_ok(&mut cmd)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `openssl dgst` verifying `scheme` (PSS with salt = digest length).
fn openssl_verify(scheme: SignatureScheme, pub_pem: &Path, msg: &Path, sig: &Path) {
    let mut cmd = Command::new("openssl");
    let hash = scheme.hash().expect("openssl dgst schemes have a hash");
    cmd.args(["dgst", &format!("-{hash}")]);
    if scheme.kind() == SignatureKind::RsaPss {
        cmd.args(["-sigopt", "rsa_padding_mode:pss"]);
        cmd.args(["-sigopt", "rsa_pss_saltlen:digest"]);
    }
    cmd.args(["-verify", p(pub_pem), "-signature", p(sig), p(msg)]);
    let out = ok(cmd);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Verified OK",
        "{scheme}"
    );
}

/// The public key of `id` as `pkcs11-tool` exports it, converted to PEM by openssl.
fn tool_public_pem(t: &Tpm2Pkcs11, id: &str, dir: &Path) -> std::path::PathBuf {
    let der = dir.join("pub.der");
    let mut read = t.pkcs11_tool();
    read.args([
        "--read-object",
        "--type",
        "pubkey",
        "--id",
        id,
        "-o",
        p(&der),
    ]);
    ok(read);
    let pem = dir.join("pub.pem");
    let mut conv = Command::new("openssl");
    conv.args([
        "pkey",
        "-pubin",
        "-inform",
        "DER",
        "-in",
        p(&der),
        "-out",
        p(&pem),
    ]);
    ok(conv);
    pem
}

fn tool_key_is_used_by_hardkey(t: &Tpm2Pkcs11, key_type: &str, id: &str, label: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut keygen = t.pkcs11_tool();
    keygen.args([
        "--keypairgen",
        "--key-type",
        key_type,
        "--id",
        id,
        "--label",
        label,
    ]);
    ok(keygen);
    let pem = tool_public_pem(t, id, dir.path());

    let store = t.store(1);
    let uri = KeyUri::Pkcs11(Pkcs11Uri::new().with_token(t.label()).with_object(label));
    let key = block_on(store.open(&uri)).expect("hardkey opens the pkcs11-tool key");
    assert_eq!(
        key.info().public_key.to_pem(),
        std::fs::read_to_string(&pem).unwrap()
    );
    let msg = dir.path().join("msg");
    std::fs::write(
        &msg,
        b"signed by hardkey on a tpm2-pkcs11 key made by pkcs11-tool",
    )
    .unwrap();
    let schemes = key.info().signature_schemes.clone();
    if key_type.starts_with("rsa") {
        // tpm2-pkcs11 lists no CKM_RSA_PKCS_PSS, yet signs with it: hardkey offers PSS.
        assert!(
            schemes.contains(&SignatureScheme::RsaPssSha256),
            "{schemes:?}"
        );
    }
    for scheme in schemes {
        let sig = block_on(key.sign(scheme, &std::fs::read(&msg).unwrap()))
            .unwrap_or_else(|e| panic!("{scheme}: {e}"));
        let sig_path = dir.path().join("sig");
        std::fs::write(&sig_path, sig).unwrap();
        openssl_verify(scheme, &pem, &msg, &sig_path);
    }
    block_on(store.delete(&key.info().id)).unwrap();
}

fn pkcs11_tool_ec_key_used_by_hardkey(t: &Tpm2Pkcs11) {
    tool_key_is_used_by_hardkey(t, "EC:prime256v1", "b1", "tool-ec");
}

fn pkcs11_tool_rsa_key_used_by_hardkey(t: &Tpm2Pkcs11) {
    tool_key_is_used_by_hardkey(t, "rsa:2048", "b2", "tool-rsa");
}

fn hardkey_key_is_used_by_the_tool(t: &Tpm2Pkcs11, alg: KeyAlgorithm) {
    let dir = tempfile::tempdir().unwrap();
    let store = t.store(1);
    let label = format!("hk-made-{alg}");
    let key = block_on(store.generate(GenerateRequest::new(alg).label(label.clone()))).unwrap();
    let id = hex::encode(key.info().id.as_bytes());

    let mut list = t.pkcs11_tool();
    list.args(["--list-objects", "--type", "privkey"]);
    let listed = String::from_utf8(ok(list).stdout).unwrap();
    assert!(listed.contains(&label) && listed.contains(&id), "{listed}");
    assert!(listed.contains("never extractable"), "{listed}");

    let msg = dir.path().join("msg");
    std::fs::write(&msg, b"signed by pkcs11-tool with a key hardkey made").unwrap();
    let sig = dir.path().join("sig");
    let ec = alg.family() == hardkey_api::KeyFamily::Ec;
    // The key allows only the mechanisms hardkey uses, and the module enforces that: its own
    // hashing mechanism is refused.
    let hashing = if ec {
        "ECDSA-SHA256"
    } else {
        "SHA256-RSA-PKCS"
    };
    let refused = t
        .pkcs11_tool()
        .args(["--sign", "-m", hashing, "--id", &id, "-i", p(&msg)])
        .args(["-o", p(&sig)])
        .output()
        .unwrap();
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("CKR_MECHANISM_INVALID"),
        "{hashing} with a key allowed only hardkey's mechanisms: {refused:?}"
    );
    let (mechanism, scheme, input) = if ec {
        let digest = {
            use sha2::Digest;
            sha2::Sha256::digest(std::fs::read(&msg).unwrap()).to_vec()
        };
        ("ECDSA", SignatureScheme::EcdsaP256Sha256, digest)
    } else {
        let info = sha2_digest_info(&std::fs::read(&msg).unwrap());
        ("RSA-PKCS", SignatureScheme::RsaPkcs1Sha256, info)
    };
    let input_path = dir.path().join("input");
    std::fs::write(&input_path, input).unwrap();
    let mut sign = t.pkcs11_tool();
    sign.args(["--sign", "-m", mechanism, "--id", &id, "-o", p(&sig)])
        .args(["-i", p(&input_path)]);
    if ec {
        sign.args(["--signature-format", "openssl"]);
    }
    ok(sign);
    verify_signature(
        key.info().public_key.der(),
        scheme,
        &std::fs::read(&msg).unwrap(),
        &std::fs::read(&sig).unwrap(),
    )
    .unwrap();
    // What tpm2-pkcs11 does differently is said in the description `hardkey info` shows.
    let note = key.info().device.as_ref().and_then(|d| d.note.clone());
    assert!(
        note.as_deref().is_some_and(|n| n.contains("tpm2-pkcs11")),
        "{note:?}"
    );
    block_on(store.delete(&key.info().id)).unwrap();
}

fn sha2_digest_info(msg: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    const SHA256_DIGEST_INFO: [u8; 19] = [
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    [&SHA256_DIGEST_INFO[..], &sha2::Sha256::digest(msg)[..]].concat()
}

fn hardkey_ec_key_used_by_pkcs11_tool(t: &Tpm2Pkcs11) {
    hardkey_key_is_used_by_the_tool(t, KeyAlgorithm::EcP256);
}

fn hardkey_rsa_key_used_by_pkcs11_tool(t: &Tpm2Pkcs11) {
    hardkey_key_is_used_by_the_tool(t, KeyAlgorithm::Rsa2048);
}

/// `openssl pkeyutl -encrypt` (OAEP, SHA-256) to a hardkey key; the token decrypts.
fn openssl_encrypts_hardkey_decrypts(t: &Tpm2Pkcs11) {
    let dir = tempfile::tempdir().unwrap();
    let store = t.store(1);
    let request = GenerateRequest::new(KeyAlgorithm::Rsa2048).label("hk-oaep");
    let key = block_on(store.generate(request)).unwrap();
    let pem = dir.path().join("pub.pem");
    std::fs::write(&pem, key.info().public_key.to_pem()).unwrap();
    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"a secret for the TPM").unwrap();
    let ct = dir.path().join("ct");
    let mut enc = Command::new("openssl");
    enc.args(["pkeyutl", "-encrypt", "-pubin", "-inkey", p(&pem)])
        .args([
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha256",
        ])
        .args([
            "-pkeyopt",
            "rsa_mgf1_md:sha256",
            "-in",
            p(&plain),
            "-out",
            p(&ct),
        ]);
    ok(enc);
    let out =
        block_on(key.decrypt(DecryptScheme::RsaOaepSha256, &std::fs::read(&ct).unwrap())).unwrap();
    assert_eq!(out.as_slice(), b"a secret for the TPM");
    block_on(store.delete(&key.info().id)).unwrap();
}

fn objects(t: &Tpm2Pkcs11) -> String {
    let mut list = t.pkcs11_tool();
    list.arg("--list-objects");
    String::from_utf8(ok(list).stdout).unwrap()
}

/// RSA-4096 (beyond the module's 3072 bits) and private-key import get `Unsupported` errors
/// that say why, and leave the token as it was.
fn what_it_cannot_do_is_refused_cleanly(t: &Tpm2Pkcs11) {
    let store = t.store(1);
    assert!(!store.algorithms().contains(&KeyAlgorithm::Rsa4096));
    assert!(store.algorithms().contains(&KeyAlgorithm::Rsa3072));
    let before = objects(t);
    let err = block_on(store.generate(GenerateRequest::new(KeyAlgorithm::Rsa4096)))
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("rsa4096") && text.contains("rsa3072"),
        "{text}"
    );
    let (pkcs8, _) = make_pkcs8(KeyAlgorithm::EcP256);
    let err = block_on(store.import(ImportRequest::new(pkcs8)))
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("tpm2_ptool import"), "{err}");
    assert_eq!(objects(t), before);
}

fn main() -> std::process::ExitCode {
    let tests: [NamedTest<Tpm2Pkcs11>; 6] = [
        (
            "pkcs11_tool_ec_key_used_by_hardkey",
            pkcs11_tool_ec_key_used_by_hardkey,
        ),
        (
            "pkcs11_tool_rsa_key_used_by_hardkey",
            pkcs11_tool_rsa_key_used_by_hardkey,
        ),
        (
            "hardkey_ec_key_used_by_pkcs11_tool",
            hardkey_ec_key_used_by_pkcs11_tool,
        ),
        (
            "hardkey_rsa_key_used_by_pkcs11_tool",
            hardkey_rsa_key_used_by_pkcs11_tool,
        ),
        (
            "openssl_encrypts_hardkey_decrypts",
            openssl_encrypts_hardkey_decrypts,
        ),
        (
            "what_it_cannot_do_is_refused_cleanly",
            what_it_cannot_do_is_refused_cleanly,
        ),
    ];
    // Serial: one trial compares the whole token before and after.
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    run_on(&args, Tpm2Pkcs11::start, |t| trials_on(t, &tests))
}
