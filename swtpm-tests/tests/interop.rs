//! Interop with independent tools on swtpm: key files made by hardkey sign through `openssl`
//! with the tpm2-openssl provider; keys made by tpm2-openssl (TSS2 PEM) and by tpm2-tools
//! (persistent handles) sign through hardkey; every signature is verified by `openssl`.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test bodies in harness = false trials"
)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use hardkey_api::testkit::block_on;
use hardkey_api::{GenerateRequest, KeyAlgorithm, KeyStore, KeyUri, PrivateKey, SignatureScheme};
use hardkey_api::{Tpm2Key, Tpm2Uri};
use swtpm_tests::{Swtpm, open_store, run, trial};

/// Runs a tool, failing the test with its output if it fails.
fn tool(tpm: &Swtpm, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("TPM2OPENSSL_TCTI", tpm.tcti())
        .env("TPM2TOOLS_TCTI", tpm.tcti())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Flushes what a tool left loaded (tools that exit without flushing leave objects in a TPM
/// without resource manager).
fn flush_transients(tpm: &Swtpm) {
    tool(tpm, "tpm2_flushcontext", &["--transient-object"]);
}

/// `openssl dgst -verify`: the independent verifier.
fn openssl_verify(dir: &Path, public_pem: &Path, data: &Path, sig: &[u8], extra: &[&str]) {
    let sig_path = dir.join("check.sig");
    std::fs::write(&sig_path, sig).unwrap();
    let mut args = vec!["dgst", "-sha256", "-verify"];
    let public = public_pem.to_str().unwrap();
    let sig_arg = sig_path.to_str().unwrap();
    args.extend([public, "-signature", sig_arg]);
    args.extend(extra);
    args.push(data.to_str().unwrap());
    let out = Command::new("openssl").args(&args).output().unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Verified OK"),
        "openssl dgst -verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A key file hardkey made signs through `openssl -provider tpm2`, and openssl verifies the
/// signature with the public key hardkey reports.
fn hardkey_file_signs_in_tpm2_openssl(persistent_srk: bool) {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    if persistent_srk {
        // The TCG SRK at 0x81000001, as tpm2-tools provisions it: key files then name it as
        // their parent.
        let srk = dir.path().join("srk.ctx");
        let srk = srk.to_str().unwrap();
        tool(
            &tpm,
            "tpm2_createprimary",
            &[
                "-C",
                "o",
                "-G",
                "ecc256:aes128cfb",
                "-a",
                "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt",
                "-c",
                srk,
                "-Q",
            ],
        );
        tool(
            &tpm,
            "tpm2_evictcontrol",
            &["-C", "o", "-c", srk, "0x81000001", "-Q"],
        );
        flush_transients(&tpm);
    }
    let store = open_store(tpm.config(dir.path()));
    let data = dir.path().join("data");
    std::fs::write(&data, b"signed by tpm2-openssl with a hardkey key file").unwrap();
    for (alg, label, extra) in [
        (KeyAlgorithm::EcP256, "ec", &[][..]),
        (KeyAlgorithm::Rsa2048, "rsa", &[][..]),
        (
            KeyAlgorithm::Rsa2048,
            "rsapss",
            &[
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:32",
            ][..],
        ),
    ] {
        let key = block_on(store.generate(GenerateRequest::new(alg).label(label))).unwrap();
        let file = key.key_ref().file().unwrap().to_path_buf();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("-----BEGIN TSS2 PRIVATE KEY-----"),
            "{text}"
        );
        let parsed = hardkey_tpm::KeyFile::from_pem(&text, "generated").unwrap();
        let parent = if persistent_srk {
            hardkey_tpm::SRK_HANDLE
        } else {
            hardkey_tpm::OWNER_PARENT
        };
        assert_eq!(parsed.parent, parent, "parent recorded in the key file");
        assert!(parsed.empty_auth);
        let public = dir.path().join(format!("{label}.pub.pem"));
        std::fs::write(&public, key.info().public_key.to_pem()).unwrap();
        // The tool flushes every transient object when done (no resource manager): hand the
        // TPM over with nothing of ours loaded.
        block_on(store.flush_loaded()).unwrap();
        let sig = dir.path().join(format!("{label}.sig"));
        let mut args = vec![
            "dgst",
            "-provider",
            "tpm2",
            "-provider",
            "default",
            "-propquery",
            "?provider=tpm2",
            "-sha256",
            "-sign",
            file.to_str().unwrap(),
            "-out",
            sig.to_str().unwrap(),
        ];
        args.extend(extra);
        args.push(data.to_str().unwrap());
        tool(&tpm, "openssl", &args);
        flush_transients(&tpm);
        openssl_verify(
            dir.path(),
            &public,
            &data,
            &std::fs::read(&sig).unwrap(),
            extra,
        );
        // tpm2-openssl also derives the same public key from the file.
        let theirs = tool(
            &tpm,
            "openssl",
            &[
                "pkey",
                "-provider",
                "tpm2",
                "-provider",
                "default",
                "-propquery",
                "?provider=tpm2",
                "-in",
                file.to_str().unwrap(),
                "-pubout",
            ],
        );
        flush_transients(&tpm);
        assert_eq!(
            theirs,
            key.info().public_key.to_pem(),
            "public key of {label}"
        );
    }
    swtpm_tests::close_store(store);
}

/// A key tpm2-openssl generated (`openssl genpkey -provider tpm2`) opens in hardkey with the
/// same public key, and its hardkey signatures verify with openssl.
fn tpm2_openssl_key_signs_in_hardkey(tpm: &Swtpm) {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("theirs.tss2.pem");
    tool(
        tpm,
        "openssl",
        &[
            "genpkey",
            "-provider",
            "tpm2",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "group:P-256",
            "-out",
            key_file.to_str().unwrap(),
        ],
    );
    let public = dir.path().join("theirs.pub.pem");
    let pem = tool(
        tpm,
        "openssl",
        &[
            "pkey",
            "-provider",
            "tpm2",
            "-provider",
            "default",
            "-propquery",
            "?provider=tpm2",
            "-in",
            key_file.to_str().unwrap(),
            "-pubout",
        ],
    );
    std::fs::write(&public, &pem).unwrap();
    // The store flushes what tpm2-openssl left loaded (no resource manager here).
    let store = open_store(tpm.config(dir.path()));
    let uri = KeyUri::Tpm2(Tpm2Uri::new(Tpm2Key::File(key_file)));
    let key = block_on(store.open(&uri)).unwrap();
    assert_eq!(key.info().public_key.to_pem(), pem);
    let data = dir.path().join("data");
    std::fs::write(&data, b"signed by hardkey with a tpm2-openssl key").unwrap();
    let sig = block_on(key.sign(
        SignatureScheme::EcdsaP256Sha256,
        &std::fs::read(&data).unwrap(),
    ))
    .unwrap();
    openssl_verify(dir.path(), &public, &data, &sig, &[]);
    drop(key);
    swtpm_tests::close_store(store);
}

/// Keys tpm2-tools made and evicted to persistent handles (ECC P-256 and RSA-2048 under the
/// tools' default primary) open in hardkey; their signatures verify with openssl against the
/// public key `tpm2_readpublic` exports.
fn tpm2_tools_persistent_key_signs_in_hardkey(tpm: &Swtpm) {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    flush_transients(tpm);
    tool(
        tpm,
        "tpm2_createprimary",
        &["-C", "o", "-c", &p("prim.ctx"), "-Q"],
    );
    flush_transients(tpm);
    let data = dir.path().join("data");
    std::fs::write(&data, b"signed by hardkey with a tpm2-tools key").unwrap();
    for (alg, handle, schemes) in [
        (
            "ecc256",
            "0x81000010",
            vec![(SignatureScheme::EcdsaP256Sha256, vec![])],
        ),
        (
            "rsa2048",
            "0x81000011",
            vec![
                (SignatureScheme::RsaPkcs1Sha256, vec![]),
                (
                    SignatureScheme::RsaPssSha256,
                    vec![
                        "-sigopt",
                        "rsa_padding_mode:pss",
                        "-sigopt",
                        "rsa_pss_saltlen:32",
                    ],
                ),
            ],
        ),
    ] {
        tool(
            tpm,
            "tpm2_create",
            &[
                "-C",
                &p("prim.ctx"),
                "-G",
                alg,
                "-u",
                &p("k.pub"),
                "-r",
                &p("k.priv"),
                "-Q",
            ],
        );
        flush_transients(tpm);
        tool(
            tpm,
            "tpm2_load",
            &[
                "-C",
                &p("prim.ctx"),
                "-u",
                &p("k.pub"),
                "-r",
                &p("k.priv"),
                "-c",
                &p("k.ctx"),
                "-Q",
            ],
        );
        tool(
            tpm,
            "tpm2_evictcontrol",
            &["-C", "o", "-c", &p("k.ctx"), handle, "-Q"],
        );
        flush_transients(tpm);
        let public = dir.path().join(format!("{alg}.pub.pem"));
        tool(
            tpm,
            "tpm2_readpublic",
            &[
                "-c",
                handle,
                "-f",
                "pem",
                "-o",
                public.to_str().unwrap(),
                "-Q",
            ],
        );
        let store = open_store(swtpm_tests_config(tpm, dir.path()));
        let uri: KeyUri = format!("tpm2:handle={handle}").parse().unwrap();
        let key = block_on(store.open(&uri)).unwrap();
        assert_eq!(
            key.info().public_key.to_pem(),
            std::fs::read_to_string(&public).unwrap(),
            "public key of {handle}"
        );
        for (scheme, extra) in schemes {
            let sig = block_on(key.sign(scheme, &std::fs::read(&data).unwrap())).unwrap();
            openssl_verify(dir.path(), &public, &data, &sig, &extra);
        }
        drop(key);
        store.pool().shutdown(std::time::Duration::from_secs(5));
    }
}

fn swtpm_tests_config(tpm: &Swtpm, dir: &Path) -> hardkey_tpm::TpmConfig {
    tpm.config(dir)
}

fn main() -> std::process::ExitCode {
    run(|tpm: Arc<Swtpm>| {
        let (a, b) = (Arc::clone(&tpm), Arc::clone(&tpm));
        vec![
            trial("hardkey_key_file_signs_in_tpm2_openssl", || {
                hardkey_file_signs_in_tpm2_openssl(false)
            }),
            trial(
                "hardkey_key_file_under_persistent_srk_signs_in_tpm2_openssl",
                || hardkey_file_signs_in_tpm2_openssl(true),
            ),
            trial("tpm2_openssl_key_signs_in_hardkey", move || {
                tpm2_openssl_key_signs_in_hardkey(&a)
            }),
            trial("tpm2_tools_persistent_keys_sign_in_hardkey", move || {
                tpm2_tools_persistent_key_signs_in_hardkey(&b)
            }),
        ]
    })
}
