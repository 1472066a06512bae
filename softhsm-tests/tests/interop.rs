//! hardkey and independent tools on one SoftHSM token: keys made by `pkcs11-tool` are used by
//! hardkey and its signatures verify with `openssl` against the public key `pkcs11-tool`
//! exports; keys hardkey generates are listed and used by `pkcs11-tool`. And bad input: each
//! mistake gets its error kind and a message, and changes nothing on the token.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test code"
)]

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use futures::executor::block_on;
use hardkey_api::testkit::verify_signature;
use hardkey_api::uri::Pkcs11Uri;
use hardkey_api::{
    ErrorKind, GenerateRequest, KeyAlgorithm, KeyStore, KeyUri, PrivateKey, SignatureKind,
    SignatureScheme,
};
use hardkey_pkcs11::{PinSource, Pkcs11Config, Pkcs11Store};
use secrecy::SecretString;
use softhsm_tests::{SoftHsm, run_serial, trial};

fn ok(mut cmd: Command) -> Output {
    let out = cmd
        .output()
        .expect("the tool runs (make test installs opensc and openssl)");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `openssl dgst` verifying `scheme` (PSS with salt = digest length).
fn openssl_verify(scheme: SignatureScheme, pub_pem: &Path, msg: &Path, sig: &Path) {
    let mut cmd = Command::new("openssl");
    cmd.args(["dgst", &format!("-{}", scheme.hash())]);
    if scheme.kind() == SignatureKind::RsaPss {
        cmd.args([
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:digest",
        ]);
    }
    cmd.args(["-verify", p(pub_pem), "-signature", p(sig), p(msg)]);
    let out = ok(cmd);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Verified OK",
        "{scheme}"
    );
}

/// A key pair generated on the token by `pkcs11-tool`, as another application would.
fn tool_keygen(hsm: &SoftHsm, key_type: &str, id: &str, label: &str) {
    let mut keygen = hsm.pkcs11_tool();
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
}

fn tool_key_is_used_by_hardkey(hsm: &SoftHsm, key_type: &str, id: &str, label: &str) {
    let dir = tempfile::tempdir().unwrap();
    tool_keygen(hsm, key_type, id, label);
    // The public key as pkcs11-tool exports it, converted by openssl.
    let der = dir.path().join("pub.der");
    let mut read = hsm.pkcs11_tool();
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
    let pem = dir.path().join("pub.pem");
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

    let store = hsm.store(1);
    let uri = KeyUri::Pkcs11(Pkcs11Uri::new().with_token(hsm.label()).with_object(label));
    let key = block_on(store.open(&uri)).expect("hardkey opens the pkcs11-tool key");
    assert_eq!(
        key.info().public_key.to_pem(),
        std::fs::read_to_string(&pem).unwrap()
    );
    let msg = dir.path().join("msg");
    std::fs::write(
        &msg,
        b"signed by hardkey on a SoftHSM key made by pkcs11-tool",
    )
    .unwrap();
    for &scheme in &key.info().signature_schemes {
        let sig = block_on(key.sign(scheme, &std::fs::read(&msg).unwrap())).unwrap();
        let sig_path = dir.path().join("sig");
        std::fs::write(&sig_path, sig).unwrap();
        openssl_verify(scheme, &pem, &msg, &sig_path);
    }
}

fn hardkey_key_is_used_by_the_tool(hsm: &SoftHsm, alg: KeyAlgorithm) {
    let dir = tempfile::tempdir().unwrap();
    let store = hsm.store(1);
    let label = format!("hk-made-{alg}");
    let key = block_on(store.generate(GenerateRequest::new(alg).label(label.clone()))).unwrap();
    let id = hex(key.info().id.as_bytes());

    let mut list = hsm.pkcs11_tool();
    list.args(["--list-objects", "--type", "privkey"]);
    let listed = String::from_utf8(ok(list).stdout).unwrap();
    assert!(listed.contains(&label) && listed.contains(&id), "{listed}");
    assert!(
        listed.contains("never extractable"),
        "key must be non-extractable: {listed}"
    );

    let msg = dir.path().join("msg");
    std::fs::write(&msg, b"signed by pkcs11-tool with a key hardkey made").unwrap();
    let sig = dir.path().join("sig");
    let mut sign = hsm.pkcs11_tool();
    let scheme = if alg.family() == hardkey_api::KeyFamily::Ec {
        // SoftHSM has no CKM_ECDSA_SHA256: sign a digest made by openssl.
        let digest = dir.path().join("digest");
        let mut dgst = Command::new("openssl");
        dgst.args(["dgst", "-sha256", "-binary", "-out", p(&digest), p(&msg)]);
        ok(dgst);
        sign.args([
            "--sign",
            "-m",
            "ECDSA",
            "--signature-format",
            "openssl",
            "-i",
            p(&digest),
        ]);
        SignatureScheme::EcdsaP256Sha256
    } else {
        sign.args(["--sign", "-m", "SHA256-RSA-PKCS", "-i", p(&msg)]);
        SignatureScheme::RsaPkcs1Sha256
    };
    sign.args(["--id", &id, "-o", p(&sig)]);
    ok(sign);
    verify_signature(
        key.info().public_key.der(),
        scheme,
        &std::fs::read(&msg).unwrap(),
        &std::fs::read(&sig).unwrap(),
    )
    .unwrap();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn objects(hsm: &SoftHsm) -> String {
    let mut list = hsm.pkcs11_tool();
    list.arg("--list-objects");
    String::from_utf8(ok(list).stdout).unwrap()
}

fn bad_input_changes_nothing(hsm: &SoftHsm) {
    let before = objects(hsm);

    // Wrong PIN: an auth error naming the token; the right PIN still works afterwards.
    let wrong = Pkcs11Config::new(
        hsm.token_uri(),
        PinSource::Value(SecretString::from("nope")),
    )
    .module(hsm.module())
    .sessions(2);
    let err = Pkcs11Store::open(wrong).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuthFailed, "{err}");
    assert!(
        err.to_string().contains(hsm.label()) && err.to_string().contains("CKR_PIN_INCORRECT"),
        "{err}"
    );

    // Unknown token: not found, listing the tokens that are there.
    let other = Pkcs11Config::new(
        Pkcs11Uri::new().with_token("no-such-token"),
        PinSource::Value(hsm.user_pin().clone()),
    )
    .module(hsm.module());
    let err = Pkcs11Store::open(other).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        err.to_string().contains(hsm.label()),
        "lists the tokens present: {err}"
    );

    let store = hsm.store(1);
    // Unknown key.
    let uri = KeyUri::Pkcs11(
        Pkcs11Uri::new()
            .with_token(hsm.label())
            .with_object("missing"),
    );
    let err = block_on(store.open(&uri)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    // A URI attribute we do not know matches nothing (RFC 7512, as p11-kit).
    let vendor: KeyUri = format!("pkcs11:token={};object=x;color=blue", hsm.label())
        .parse()
        .unwrap();
    assert_eq!(
        block_on(store.open(&vendor)).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // Garbage URI.
    let err = "pkcs11:token=%zz".parse::<KeyUri>().unwrap_err();
    assert!(err.to_string().contains("at byte"), "{err}");
    // A scheme the key cannot do.
    let key =
        block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP256).label("hk-bad-input")))
            .unwrap();
    let err = block_on(key.sign(SignatureScheme::RsaPssSha256, b"x")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    block_on(store.delete(&key.info().id)).unwrap();

    assert_eq!(objects(hsm), before, "bad input changed the token");
}

fn stale_handles_are_refreshed(hsm: &SoftHsm) {
    let dir = tempfile::tempdir().unwrap();
    let store = hsm.store(1);
    tool_keygen(hsm, "EC:prime256v1", "c1", "rotated");
    let uri = KeyUri::Pkcs11(
        Pkcs11Uri::new()
            .with_token(hsm.label())
            .with_object("rotated"),
    );
    let key = block_on(store.open(&uri)).unwrap();
    block_on(key.sign(SignatureScheme::EcdsaP256Sha256, b"cached")).unwrap();

    // Another application replaces the key: same CKA_ID and label, new object and handle.
    for ty in ["privkey", "pubkey"] {
        let mut delete = hsm.pkcs11_tool();
        delete.args(["--delete-object", "--type", ty, "--id", "c1"]);
        ok(delete);
    }
    tool_keygen(hsm, "EC:prime256v1", "c1", "rotated");
    let der = dir.path().join("new.der");
    let mut read = hsm.pkcs11_tool();
    read.args([
        "--read-object",
        "--type",
        "pubkey",
        "--id",
        "c1",
        "-o",
        p(&der),
    ]);
    ok(read);

    // The worker's cached handle is stale (CKR_OBJECT_HANDLE_INVALID): it finds the key again.
    let sig = block_on(key.sign(SignatureScheme::EcdsaP256Sha256, b"refreshed")).unwrap();
    let fresh = block_on(store.open(&uri)).unwrap();
    assert_eq!(
        fresh.info().public_key.der(),
        std::fs::read(&der).unwrap().as_slice()
    );
    verify_signature(
        fresh.info().public_key.der(),
        SignatureScheme::EcdsaP256Sha256,
        b"refreshed",
        &sig,
    )
    .expect("signed with the new key");
    block_on(store.delete(&fresh.info().id)).unwrap();
}

fn legacy_decrypt_needs_the_opt_in(hsm: &SoftHsm) {
    use hardkey_api::{DecryptScheme, KeyPolicy};
    use rsa::pkcs8::DecodePublicKey;
    let secret = [0x03u8; 48];
    let policy = KeyPolicy::default().with_legacy_rsa_pkcs1v15_decrypt(true);
    let store = Pkcs11Store::open(hsm.config().sessions(1).policy(policy)).unwrap();
    let key = block_on(store.generate(GenerateRequest::new(KeyAlgorithm::Rsa2048).label("legacy")))
        .unwrap();
    let public = rsa::RsaPublicKey::from_public_key_der(key.info().public_key.der()).unwrap();
    let ct = public
        .encrypt(&mut rand_core::OsRng, rsa::Pkcs1v15Encrypt, &secret)
        .unwrap();
    let plain = block_on(key.decrypt(DecryptScheme::RsaPkcs1v15Legacy, &ct)).unwrap();
    assert_eq!(plain.as_slice(), secret.as_slice());
    block_on(store.delete(&key.info().id)).unwrap();
}

fn main() -> std::process::ExitCode {
    // Serial: the bad-input trial compares the whole token before and after.
    run_serial(|hsm: Arc<SoftHsm>| {
        let h = || Arc::clone(&hsm);
        let (a, b, c, d, e, f, g) = (h(), h(), h(), h(), h(), h(), h());
        vec![
            trial("pkcs11_tool_ec_key_used_by_hardkey", move || {
                tool_key_is_used_by_hardkey(&a, "EC:prime256v1", "a1", "tool-ec")
            }),
            trial("pkcs11_tool_rsa_key_used_by_hardkey", move || {
                tool_key_is_used_by_hardkey(&b, "rsa:2048", "a2", "tool-rsa")
            }),
            trial("hardkey_ec_key_used_by_pkcs11_tool", move || {
                hardkey_key_is_used_by_the_tool(&c, KeyAlgorithm::EcP256)
            }),
            trial("hardkey_rsa_key_used_by_pkcs11_tool", move || {
                hardkey_key_is_used_by_the_tool(&d, KeyAlgorithm::Rsa2048)
            }),
            trial(
                "bad_input_gets_clear_errors_and_changes_nothing",
                move || bad_input_changes_nothing(&e),
            ),
            trial("stale_handles_are_refreshed", move || {
                stale_handles_are_refreshed(&f)
            }),
            trial("legacy_decrypt_needs_the_opt_in", move || {
                legacy_decrypt_needs_the_opt_in(&g)
            }),
        ]
    })
}
