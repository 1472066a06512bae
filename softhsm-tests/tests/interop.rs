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
    let id = hex::encode(key.info().id.as_bytes());

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
        // The key allows only the mechanisms hardkey uses (CKM_RSA_PKCS over a DigestInfo,
        // not the token's own SHA256-RSA-PKCS): build the DigestInfo of an openssl digest.
        let digest = dir.path().join("digest");
        let mut dgst = Command::new("openssl");
        dgst.args(["dgst", "-sha256", "-binary", "-out", p(&digest), p(&msg)]);
        ok(dgst);
        const SHA256_DIGEST_INFO: [u8; 19] = [
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ];
        let info = dir.path().join("digest-info");
        std::fs::write(
            &info,
            [&SHA256_DIGEST_INFO[..], &std::fs::read(&digest).unwrap()].concat(),
        )
        .unwrap();
        sign.args(["--sign", "-m", "RSA-PKCS", "-i", p(&info)]);
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

/// Keys opened together (`open_many`, as `hardkey serve` opens a token's keys) sign on every
/// session worker without a search of the token: each worker checks the handle the key was
/// found at. With a search per key and worker, 10,000 keys on SoftHSM (which visits every
/// object in each search) served a few handshakes a second, and clients timed out.
fn opened_keys_sign_without_searching(hsm: &SoftHsm) {
    let maker = hsm.store(1);
    let mut uris = Vec::new();
    let mut made = Vec::new();
    for i in 0..24 {
        let key = block_on(
            maker.generate(GenerateRequest::new(KeyAlgorithm::EcP256).label(format!("many-{i}"))),
        )
        .unwrap();
        let Some(KeyUri::Pkcs11(uri)) = key.info().uri.clone() else {
            panic!("a token key has a pkcs11: URI");
        };
        uris.push(uri);
        made.push(key);
    }
    let store = hsm.store(4);
    let keys: Vec<_> = block_on(store.open_many(uris))
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    // Every key, several times at once: the four workers each get most keys.
    let signatures = keys.iter().flat_map(|key| {
        (0..4).map(move |n| {
            let message = format!("key {} signature {n}", key.info().display_name());
            let sig = key.sign(SignatureScheme::EcdsaP256Sha256, message.as_bytes());
            async move { (key, message, sig.await) }
        })
    });
    for (key, message, sig) in block_on(futures::future::join_all(signatures)) {
        verify_signature(
            key.info().public_key.der(),
            SignatureScheme::EcdsaP256Sha256,
            message.as_bytes(),
            &sig.unwrap(),
        )
        .expect("signed with its key");
    }
    assert_eq!(
        store.key_searches(),
        0,
        "the workers searched the token for keys open_many had found"
    );
    for key in made {
        block_on(maker.delete(&key.info().id)).unwrap();
    }
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
    // With raw RSA allowed, the token does the RSA and the padding is removed on the host.
    let request = GenerateRequest::new(KeyAlgorithm::Rsa2048)
        .label("legacy-raw")
        .raw_rsa(true);
    let key = block_on(store.generate(request)).unwrap();
    let public = rsa::RsaPublicKey::from_public_key_der(key.info().public_key.der()).unwrap();
    for len in [0, 1, 48, 245] {
        let secret = vec![0x5au8; len];
        let ct = public
            .encrypt(&mut rand_core::OsRng, rsa::Pkcs1v15Encrypt, &secret)
            .unwrap();
        let plain = block_on(key.decrypt(DecryptScheme::RsaPkcs1v15Legacy, &ct)).unwrap();
        assert_eq!(plain.as_slice(), secret.as_slice());
    }
    block_on(store.delete(&key.info().id)).unwrap();
}

/// `p11-probe`: one raw PKCS#11 call on the key labelled `label`, from another process, as
/// anyone holding the user PIN could make it. `Ok(output)` or `Err(return code)`.
fn probe(
    hsm: &SoftHsm,
    label: &str,
    op: &str,
    mechanism: &str,
    input: &Path,
) -> Result<Vec<u8>, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_p11-probe"))
        .args([p(hsm.module()), hsm.label(), label, op, mechanism, p(input)])
        .env(
            "P11_PROBE_PIN",
            secrecy::ExposeSecret::expose_secret(hsm.user_pin()),
        )
        .output()
        .expect("run p11-probe");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match out.status.code() {
        Some(0) => Ok((0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()),
        Some(1) => Err(text),
        _ => panic!("p11-probe failed: {}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// pkcs11-tool's description of the private key labelled `label`: its `Usage:` and
/// `Allowed mechanisms:` lines.
fn tool_view(listing: &str, label: &str) -> (String, String) {
    // One object per unindented header line and the indented lines under it.
    let mut objects: Vec<Vec<&str>> = Vec::new();
    for line in listing.lines() {
        match objects.last_mut() {
            Some(object) if line.starts_with(' ') => object.push(line),
            _ => objects.push(vec![line]),
        }
    }
    let block = objects
        .iter()
        .find(|o| {
            o[0].starts_with("Private Key Object")
                && o.iter().any(|l| l.trim() == format!("label:      {label}"))
        })
        .map(|o| o.join("\n"))
        .unwrap_or_else(|| panic!("no private key {label} in:\n{listing}"));
    let field = |name: &str| {
        block
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    (field("Usage:"), field("Allowed mechanisms:"))
}

/// Security finding 1: keys hardkey makes can do exactly what their usage says, whoever holds
/// the PIN, as pkcs11-tool and a raw PKCS#11 client see them.
fn keys_are_least_privilege_on_the_token(hsm: &SoftHsm) {
    use hardkey_api::{DecryptScheme, KeyUsages};
    use rsa::pkcs8::DecodePublicKey;
    let dir = tempfile::tempdir().unwrap();
    let store = hsm.store(1);
    let make = |alg, label: &str, usages, raw| {
        let request = GenerateRequest::new(alg)
            .label(label)
            .usages(usages)
            .raw_rsa(raw);
        block_on(store.generate(request)).unwrap()
    };
    let sign_only = make(KeyAlgorithm::Rsa2048, "lp-rsa-sign", KeyUsages::SIGN, false);
    let ec = make(KeyAlgorithm::EcP256, "lp-ec", KeyUsages::SIGN, false);
    let both = make(
        KeyAlgorithm::Rsa2048,
        "lp-rsa-both",
        KeyUsages::SIGN_DECRYPT,
        false,
    );
    let raw = make(
        KeyAlgorithm::Rsa2048,
        "lp-rsa-raw",
        KeyUsages::SIGN_DECRYPT,
        true,
    );

    // pkcs11-tool sees every usage set as asked, and the mechanisms restricted.
    let listing = objects(hsm);
    for (label, usage, mechanisms) in [
        ("lp-rsa-sign", "sign", "RSA-PKCS,RSA-PKCS-PSS"),
        ("lp-ec", "sign", "ECDSA"),
        (
            "lp-rsa-both",
            "decrypt, sign",
            "RSA-PKCS,RSA-PKCS-OAEP,RSA-PKCS-PSS",
        ),
        (
            "lp-rsa-raw",
            "decrypt, sign",
            "RSA-PKCS,RSA-X-509,RSA-PKCS-OAEP,RSA-PKCS-PSS",
        ),
    ] {
        assert_eq!(
            tool_view(&listing, label),
            (usage.to_owned(), mechanisms.to_owned()),
            "{label}"
        );
    }
    // hardkey reports the same, from the token.
    let device = sign_only.info().device.clone().unwrap();
    assert_eq!(device.operations, ["sign"]);
    assert_eq!(
        device.mechanisms.unwrap(),
        ["CKM_RSA_PKCS", "CKM_RSA_PKCS_PSS"]
    );
    assert_eq!(ec.info().device.clone().unwrap().operations, ["sign"]);

    // A PKCS#1 v1.5 ciphertext to the sign-only key, and a raw block as big as the modulus.
    let secret = b"the plaintext an attacker wants";
    let rsa_public = |key: &hardkey_pkcs11::Pkcs11Key| {
        rsa::RsaPublicKey::from_public_key_der(key.info().public_key.der()).unwrap()
    };
    let ct = rsa_public(&sign_only)
        .encrypt(&mut rand_core::OsRng, rsa::Pkcs1v15Encrypt, secret)
        .unwrap();
    let ct_file = dir.path().join("ct");
    std::fs::write(&ct_file, &ct).unwrap();
    // The decryption oracle of the finding: raw RSA "signing" of a ciphertext.
    let err = probe(hsm, "lp-rsa-sign", "sign", "rsa-x509", &ct_file).unwrap_err();
    assert!(err.starts_with("MechanismInvalid"), "{err}");
    let err = probe(hsm, "lp-rsa-sign", "decrypt", "rsa-pkcs", &ct_file).unwrap_err();
    assert!(err.starts_with("KeyFunctionNotPermitted"), "{err}");
    // The key's attributes cannot be widened with the PIN (CKA_MODIFIABLE false).
    let err = probe(hsm, "lp-rsa-sign", "widen", "rsa-pkcs", &ct_file).unwrap_err();
    assert!(
        err.starts_with("ActionProhibited") || err.starts_with("AttributeReadOnly"),
        "{err}"
    );
    let err = probe(hsm, "lp-rsa-sign", "decrypt", "rsa-pkcs", &ct_file).unwrap_err();
    assert!(err.starts_with("KeyFunctionNotPermitted"), "{err}");
    // pkcs11-tool agrees on raw RSA.
    let mut tool = hsm.pkcs11_tool();
    tool.args([
        "--sign",
        "-m",
        "RSA-X-509",
        // By CKA_ID: pkcs11-tool picks the first private key when given only a label.
        "--id",
        &hex::encode(sign_only.info().id.as_bytes()),
        "-i",
        p(&ct_file),
    ])
    .args(["-o", p(&dir.path().join("sig"))]);
    let out = tool.output().unwrap();
    assert!(
        !out.status.success(),
        "pkcs11-tool signed with raw RSA: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CKR_MECHANISM_INVALID"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The EC key neither decrypts nor derives.
    let err = probe(hsm, "lp-ec", "decrypt", "rsa-pkcs", &ct_file).unwrap_err();
    assert!(err.starts_with("KeyFunctionNotPermitted"), "{err}");
    let peer = dir.path().join("peer.der");
    let key_pem = dir.path().join("peer.pem");
    ok({
        let mut c = Command::new("openssl");
        c.args([
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-out",
            p(&key_pem),
        ]);
        c
    });
    ok({
        let mut c = Command::new("openssl");
        c.args([
            "ec",
            "-in",
            p(&key_pem),
            "-pubout",
            "-outform",
            "DER",
            "-out",
            p(&peer),
        ]);
        c
    });
    let mut derive = hsm.pkcs11_tool();
    derive.args([
        "--derive",
        "-m",
        "ECDH1-DERIVE",
        "--id",
        &hex::encode(ec.info().id.as_bytes()),
        "--input-file",
        p(&peer),
    ]);
    let out = derive.output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CKR_KEY_FUNCTION_NOT_PERMITTED"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The sign+decrypt key still does OAEP: an openssl ciphertext (OAEP with SHA-1, the hash
    // SoftHSM 2.6 has), decrypted by the raw client; raw RSA stays refused.
    let both_pub = dir.path().join("both.pub");
    std::fs::write(&both_pub, both.info().public_key.to_pem()).unwrap();
    let plain = dir.path().join("plain");
    std::fs::write(&plain, secret).unwrap();
    let oaep = dir.path().join("oaep");
    ok({
        let mut c = Command::new("openssl");
        c.args([
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-inkey",
            p(&both_pub),
            "-in",
            p(&plain),
        ])
        .args(["-pkeyopt", "rsa_padding_mode:oaep", "-out", p(&oaep)]);
        c
    });
    assert_eq!(
        probe(hsm, "lp-rsa-both", "decrypt", "oaep-sha1", &oaep).unwrap(),
        secret
    );
    let err = probe(hsm, "lp-rsa-both", "sign", "rsa-x509", &oaep).unwrap_err();
    assert!(err.starts_with("MechanismInvalid"), "{err}");
    // hardkey's OAEP-SHA-256 needs raw RSA on this token, and says how to get it.
    let ct256 = rsa_public(&both)
        .encrypt(
            &mut rand_core::OsRng,
            rsa::Oaep::new::<sha2::Sha256>(),
            secret,
        )
        .unwrap();
    let err = block_on(both.decrypt(DecryptScheme::RsaOaepSha256, &ct256)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("--allow-raw-rsa"), "{err}");
    // The opt-in key: raw RSA works (that is what was asked for), and so does OAEP-SHA-256.
    let ct256 = rsa_public(&raw)
        .encrypt(
            &mut rand_core::OsRng,
            rsa::Oaep::new::<sha2::Sha256>(),
            secret,
        )
        .unwrap();
    let plain = block_on(raw.decrypt(DecryptScheme::RsaOaepSha256, &ct256)).unwrap();
    assert_eq!(plain.as_slice(), secret);
    let raw_ct = dir.path().join("raw-ct");
    std::fs::write(&raw_ct, &ct256).unwrap();
    assert!(probe(hsm, "lp-rsa-raw", "sign", "rsa-x509", &raw_ct).is_ok());

    for key in [sign_only, ec, both, raw] {
        block_on(store.delete(&key.info().id)).unwrap();
    }
}

fn main() -> std::process::ExitCode {
    // Serial: the bad-input trial compares the whole token before and after.
    run_serial(|hsm: Arc<SoftHsm>| {
        let h = || Arc::clone(&hsm);
        let (a, b, c, d, e, f, g, l, m) = (h(), h(), h(), h(), h(), h(), h(), h(), h());
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
            trial("opened_keys_sign_without_searching", move || {
                opened_keys_sign_without_searching(&m)
            }),
            trial("legacy_decrypt_needs_the_opt_in", move || {
                legacy_decrypt_needs_the_opt_in(&g)
            }),
            trial("keys_are_least_privilege_on_the_token", move || {
                keys_are_least_privilege_on_the_token(&l)
            }),
        ]
    })
}
