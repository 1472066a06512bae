//! The `hardkey` command on the other PKCS#11 implementations: NSS softokn, reached through
//! the configuration file's `[pkcs11] module` and `module-init` (its database's init string),
//! and tpm2-pkcs11 on swtpm. Keys made and used by `hardkey`, signatures checked by openssl;
//! what tpm2-pkcs11 cannot do (RSA-4096, import) is refused as a usage error that says why.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "trials outside #[test] fns fail by panicking"
)]

mod common;

use common::{Hardkey, openssl_verify, tool};
use hardkey_api::testkit::harness::{Arguments, NamedTest, run_on, trials_on};
use secrecy::ExposeSecret;
use softhsm_tests::{Nss, Tpm2Pkcs11};

/// Both implementations (tpm2-pkcs11 first: it sets its environment before any thread).
struct Peers {
    tpm2: Tpm2Pkcs11,
    nss: Nss,
}

/// `hardkey` with a configuration naming NSS softokn, its init string and its token.
fn nss_hardkey(nss: &Nss) -> (Hardkey, String) {
    let hk = Hardkey::new();
    let config = format!(
        "[pkcs11]\nmodule = {:?}\nmodule-init = {:?}\ntoken = {:?}\n",
        nss.module().display().to_string(),
        nss.init_string(),
        nss.label()
    );
    let config = hk.file("config.toml", config);
    hk.file("pin", nss.user_pin().expose_secret());
    (hk, config)
}

fn nss_keys_from_the_config_file(peers: &Peers) {
    let (hk, config) = nss_hardkey(&peers.nss);
    let msg = hk.file("msg", b"signed by hardkey on NSS softokn");
    for (alg, label, scheme) in [
        ("p256", "cli-nss-ec", "ecdsa-p256-sha256"),
        ("rsa2048", "cli-nss-rsa", "rsa-pss-sha256"),
    ] {
        // The URI names neither the module nor the token: the configuration does.
        let uri = format!("pkcs11:object={label}");
        let base = ["--config", config.as_str(), "--pin-file", "pin"];
        let made = hk.json(&[&["keygen", &uri, "--alg", alg][..], &base].concat());
        assert_eq!(made["algorithm"], alg);
        hk.ok(&[&["pubkey", &uri, "--out", "pub.pem"][..], &base].concat());
        hk.ok(&[
            &[
                "sign", &uri, "--scheme", scheme, "--in", &msg, "--out", "sig",
            ][..],
            &base,
        ]
        .concat());
        openssl_verify(hk.dir.path(), scheme, "pub.pem", "msg", "sig");
        let info = hk.ok(&[&["info", &uri][..], &base].concat());
        assert!(info.contains("CKA_ALLOWED_MECHANISMS"), "{info}");
        hk.ok(&[&["delete", &uri, "--yes"][..], &base].concat());
    }
}

/// `hardkey` on the tpm2-pkcs11 token (the fixture's environment reaches the child).
fn tpm2_hardkey(t: &Tpm2Pkcs11) -> (Hardkey, String) {
    let hk = Hardkey::new();
    hk.file("pin", t.user_pin().expose_secret());
    let uri = |label: &str| {
        format!(
            "pkcs11:token={};object={label}?module-path={}",
            t.label(),
            t.module().display()
        )
    };
    (hk, uri("LABEL"))
}

fn tpm2_pkcs11_keys_and_refusals(peers: &Peers) {
    let t = &peers.tpm2;
    let (hk, template) = tpm2_hardkey(t);
    let uri = template.replace("LABEL", "cli-tpm2-rsa");
    let pin = ["--pin-file", "pin"];
    hk.ok(&[&["keygen", &uri, "--alg", "rsa2048"][..], &pin].concat());
    hk.ok(&[&["pubkey", &uri, "--out", "pub.pem"][..], &pin].concat());
    let msg = hk.file("msg", b"signed by hardkey on tpm2-pkcs11");
    // PSS, which tpm2-pkcs11 does not list among its mechanisms.
    for scheme in ["rsa-pss-sha256", "rsa-pkcs1-sha256"] {
        hk.ok(&[
            &[
                "sign", &uri, "--scheme", scheme, "--in", &msg, "--out", "sig",
            ][..],
            &pin,
        ]
        .concat());
        openssl_verify(hk.dir.path(), scheme, "pub.pem", "msg", "sig");
    }
    let info = hk.ok(&[&["info", &uri][..], &pin].concat());
    assert!(info.contains("tpm2-pkcs11"), "{info}");

    let big = template.replace("LABEL", "cli-tpm2-big");
    hk.fails(
        &[&["keygen", &big, "--alg", "rsa4096"][..], &pin].concat(),
        2,
        &["rsa4096", "rsa3072"],
    );
    tool(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "soft.pem",
        ],
        hk.dir.path(),
    );
    let imported = template.replace("LABEL", "cli-tpm2-import");
    hk.fails(
        &[&["import", &imported, "--from", "soft.pem"][..], &pin].concat(),
        2,
        &["tpm2_ptool import"],
    );
    hk.ok(&[&["delete", &uri, "--yes"][..], &pin].concat());
}

fn main() -> std::process::ExitCode {
    let tests: [NamedTest<Peers>; 2] = [
        (
            "nss_keys_from_the_config_file",
            nss_keys_from_the_config_file,
        ),
        (
            "tpm2_pkcs11_keys_and_refusals",
            tpm2_pkcs11_keys_and_refusals,
        ),
    ];
    let start = || {
        let tpm2 = Tpm2Pkcs11::start();
        let nss = Nss::start();
        Peers { tpm2, nss }
    };
    run_on(&Arguments::from_args(), start, |p| trials_on(p, &tests))
}
