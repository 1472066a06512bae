//! `hardkey tpm ak create` and `hardkey attest` against swtpm, cross-checked with tpm2-tools
//! and openssl: the AK's public key is what `tpm2_readpublic` reads; `tpm2_print` decodes
//! hardkey's attestation; openssl verifies the AK's signature over it; evidence made by
//! `tpm2_certify` with tpm2-tools' own EK and AK verifies with `hardkey attest --verify`; an
//! EK certificate put in NV 0x01c0000a goes into the evidence; another key, a tampered byte,
//! another nonce, another AK and a duplicable key each fail naming the check; a credential
//! made by `tpm2_makecredential` to the EK for the AK's name is activated, one for another name
//! refused. After each trial no transient object or session is left in the TPM.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "trials outside #[test] fns fail by panicking"
)]

mod common;

use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::Arc;

use common::{Hardkey, TAKE_OWNERSHIP, tool};
use swtpm_tests::{Swtpm, run, trial};

fn hardkey(tpm: &Swtpm) -> Hardkey {
    Hardkey::new().env("HARDKEY_TCTI", &tpm.tcti())
}

/// A tpm2-tools command on the test's TPM.
fn tpm2(tpm: &Swtpm, hk: &Hardkey, program: &str, args: &[&str]) -> String {
    let tcti = format!("--tcti={}", tpm.tcti());
    let mut all = args.to_vec();
    all.push(&tcti);
    tool(program, &all, hk.dir.path())
}

/// tpm2-tools leave what they load in a TPM without a resource manager: flush it (these
/// objects are the test's own, on its own emulator).
fn flush_tools(tpm: &Swtpm, hk: &Hardkey) {
    tpm2(tpm, hk, "tpm2_flushcontext", &["-t"]);
}

/// No transient object, and no session (loaded or saved), is left in the TPM.
fn assert_no_transients(tpm: &Swtpm) {
    for what in [
        "handles-transient",
        "handles-loaded-session",
        "handles-saved-session",
    ] {
        let left = tool(
            "tpm2_getcap",
            &[what, &format!("--tcti={}", tpm.tcti())],
            Path::new("/"),
        );
        assert!(left.trim().is_empty(), "{what} left: {left}");
    }
}

fn evidence(hk: &Hardkey, name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(hk.path(name)).unwrap()).unwrap()
}

fn b64(value: &serde_json::Value) -> Vec<u8> {
    use base64ct::{Base64, Encoding as _};
    Base64::decode_vec(value.as_str().unwrap()).unwrap()
}

fn to_b64(bytes: &[u8]) -> String {
    use base64ct::{Base64, Encoding as _};
    Base64::encode_string(bytes)
}

/// Writes `value` as an evidence file.
fn write_evidence(hk: &Hardkey, name: &str, value: &serde_json::Value) -> String {
    hk.file(name, serde_json::to_string_pretty(value).unwrap())
}

fn persistent_ak_and_file_key(tpm: &Swtpm) {
    let hk = hardkey(tpm);
    let made = hk.json(&["tpm", "ak", "create", "--pub-out", "ak.pem"]);
    assert_eq!(made["ak"], "tpm2:handle=0x81010002", "{made}");
    // tpm2-tools read the same public key at the handle.
    tpm2(
        tpm,
        &hk,
        "tpm2_readpublic",
        &["-c", "0x81010002", "-f", "pem", "-o", "ak-readpublic.pem"],
    );
    assert_eq!(
        std::fs::read_to_string(hk.path("ak-readpublic.pem")).unwrap(),
        std::fs::read_to_string(hk.path("ak.pem")).unwrap()
    );
    // The handle is taken now; an EC P-384 AK has no TCG EK template.
    hk.fails(&["tpm", "ak", "create"], 2, &["taken"]);
    hk.fails(
        &[
            "tpm",
            "ak",
            "create",
            "--alg",
            "p384",
            "--out",
            "x.tss2.pem",
        ],
        2,
        &["p256 or rsa2048"],
    );

    hk.ok(&["keygen", "tpm2:", "--alg", "p256", "--out", "key.tss2.pem"]);
    hk.ok(&["pubkey", "tpm2:file=key.tss2.pem", "--out", "key.pem"]);
    let nonce = "00112233445566778899aabbccddeeff";
    let made = hk.json(&[
        "attest",
        "tpm2:file=key.tss2.pem",
        "--ak",
        "0x81010002",
        "--nonce",
        nonce,
        "-o",
        "ev.json",
    ]);
    assert_eq!(made["nonce"], nonce, "{made}");
    let ev = evidence(&hk, "ev.json");
    assert_eq!(ev["format"], "hardkey-tpm2-certify-v1");
    assert!(ev.get("ek_certificate").is_none(), "{ev}");
    std::fs::write(hk.path("attest.bin"), b64(&ev["attest"])).unwrap();
    std::fs::write(hk.path("sig.der"), b64(&ev["signature"]["value"])).unwrap();

    // tpm2_print decodes the attestation: magic, type, extraData; tpm2-tools 5.4 stops at
    // the TPMS_CERTIFY_INFO ("unsupported type 0x8017"), later versions print the name.
    let printed = Command::new("tpm2_print")
        .args(["-t", "TPMS_ATTEST", "attest.bin"])
        .current_dir(hk.dir.path())
        .output()
        .expect("tpm2_print");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&printed.stdout),
        String::from_utf8_lossy(&printed.stderr)
    );
    assert!(printed.contains("magic: ff544347"), "{printed}");
    assert!(printed.contains("type: 8017"), "{printed}");
    assert!(
        printed.contains(&format!("extraData: {nonce}")),
        "{printed}"
    );
    let key_name = ev["key"]["name"].as_str().unwrap();
    assert!(
        printed.contains(key_name) || printed.contains("unsupported type 0x8017"),
        "{printed}"
    );
    // openssl verifies the AK's signature over the attestation bytes.
    let verified = tool(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-verify",
            "ak.pem",
            "-signature",
            "sig.der",
            "attest.bin",
        ],
        hk.dir.path(),
    );
    assert!(verified.contains("Verified OK"), "{verified}");

    // hardkey verifies it, pinned to the AK and the nonce.
    let ok = hk.json(&[
        "attest",
        "--verify",
        "ev.json",
        "--key-pub",
        "key.pem",
        "--ak-pub",
        "ak.pem",
        "--nonce",
        nonce,
    ]);
    assert_eq!(ok["verified"], true, "{ok}");
    assert_eq!(ok["ak_pinned"], true, "{ok}");
    assert_eq!(ok["key_name"], key_name, "{ok}");
    let attrs: Vec<&str> = ok["key_attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for a in ["fixedTPM", "fixedParent", "sensitiveDataOrigin", "sign"] {
        assert!(attrs.contains(&a), "{ok}");
    }

    // Each wrong expectation fails naming its check.
    hk.ok(&[
        "keygen",
        "tpm2:",
        "--alg",
        "p256",
        "--out",
        "other.tss2.pem",
    ]);
    hk.ok(&["pubkey", "tpm2:file=other.tss2.pem", "--out", "other.pem"]);
    fn verify<'a>(evidence: &'a str, key: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["attest", "--verify", evidence, "--key-pub", key];
        args.extend_from_slice(extra);
        args
    }
    hk.fails(
        &verify("ev.json", "other.pem", &["--ak-pub", "ak.pem"]),
        1,
        &["key check failed"],
    );
    hk.fails(
        &verify("ev.json", "key.pem", &["--nonce", "0bad"]),
        1,
        &["nonce check failed", "0bad"],
    );
    hk.fails(
        &verify("ev.json", "key.pem", &["--ak-pub", "other.pem"]),
        1,
        &["AK check failed"],
    );
    let mut tampered = ev.clone();
    let mut bytes = b64(&ev["attest"]);
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    tampered["attest"] = to_b64(&bytes).into();
    write_evidence(&hk, "tampered.json", &tampered);
    hk.fails(
        &verify("tampered.json", "key.pem", &[]),
        1,
        &["signature check failed"],
    );
    // Evidence that is not JSON evidence is a usage error.
    hk.file("junk.json", "{}");
    hk.fails(&verify("junk.json", "key.pem", &[]), 2, &["junk.json"]);
    // A key file that is not an AK is refused as one, and nothing is written.
    hk.fails(
        &[
            "attest",
            "tpm2:file=key.tss2.pem",
            "--ak",
            "other.tss2.pem",
            "-o",
            "x.json",
        ],
        2,
        &["names parent 0x40000001"],
    );
    assert!(!hk.path("x.json").exists());
    assert_no_transients(tpm);
    tpm2(
        tpm,
        &hk,
        "tpm2_evictcontrol",
        &["-C", "o", "-c", "0x81010002"],
    );
}

fn ak_file_with_endorsement_auth(tpm: &Swtpm) {
    let hk = hardkey(tpm);
    hk.file("owner", "owner-secret");
    hk.file("endorsement", "endorsement-secret");
    hk.file("lockout", "lockout-secret");
    hk.ok(&TAKE_OWNERSHIP);
    // Without the endorsement auth the EK cannot be made: the error names the hierarchy.
    hk.fails(
        &[
            "tpm",
            "ak",
            "create",
            "--alg",
            "rsa2048",
            "--out",
            "ak.tss2.pem",
        ],
        1,
        &["endorsement hierarchy", "--endorsement-auth-file"],
    );
    assert!(!hk.path("ak.tss2.pem").exists());
    let made = hk.json(&[
        "tpm",
        "ak",
        "create",
        "--alg",
        "rsa2048",
        "--out",
        "ak.tss2.pem",
        "--pub-out",
        "ak.pem",
        "--endorsement-auth-file",
        "endorsement",
    ]);
    assert!(
        made["ak"].as_str().unwrap().ends_with("ak.tss2.pem"),
        "{made}"
    );
    let pem = std::fs::read_to_string(hk.path("ak.tss2.pem")).unwrap();
    assert!(pem.starts_with("-----BEGIN TSS2 PRIVATE KEY-----"), "{pem}");
    // An existing file is never overwritten.
    hk.fails(
        &[
            "tpm",
            "ak",
            "create",
            "--out",
            "ak.tss2.pem",
            "--endorsement-auth-file",
            "endorsement",
        ],
        2,
        &["exists"],
    );
    hk.ok(&[
        "keygen",
        "tpm2:",
        "--alg",
        "rsa2048",
        "--out",
        "key.tss2.pem",
        "--owner-auth-file",
        "owner",
    ]);
    hk.ok(&[
        "pubkey",
        "tpm2:file=key.tss2.pem",
        "--out",
        "key.pem",
        "--owner-auth-file",
        "owner",
    ]);
    hk.file("nonce.bin", [7u8; 32]);
    hk.ok(&[
        "attest",
        "tpm2:file=key.tss2.pem",
        "--ak",
        "tpm2:file=ak.tss2.pem",
        "--nonce-file",
        "nonce.bin",
        "--owner-auth-file",
        "owner",
        "--endorsement-auth-file",
        "endorsement",
        "-o",
        "ev.json",
    ]);
    let ev = evidence(&hk, "ev.json");
    assert_eq!(ev["signature"]["scheme"], "rsa-pkcs1-sha256", "{ev}");
    std::fs::write(hk.path("attest.bin"), b64(&ev["attest"])).unwrap();
    std::fs::write(hk.path("sig.bin"), b64(&ev["signature"]["value"])).unwrap();
    let verified = tool(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-verify",
            "ak.pem",
            "-signature",
            "sig.bin",
            "attest.bin",
        ],
        hk.dir.path(),
    );
    assert!(verified.contains("Verified OK"), "{verified}");
    let ok = hk.ok(&[
        "attest",
        "--verify",
        "ev.json",
        "--key-pub",
        "key.pem",
        "--ak-pub",
        "ak.pem",
        "--nonce-file",
        "nonce.bin",
    ]);
    assert!(ok.starts_with("Verified OK"), "{ok}");
    hk.fails(
        &[
            "attest",
            "--verify",
            "ev.json",
            "--key-pub",
            "key.pem",
            "--nonce",
            "07",
        ],
        1,
        &["nonce check failed"],
    );
    assert_no_transients(tpm);
    hk.ok(&["tpm", "clear", "--yes", "--lockout-auth-file", "lockout"]);
}

fn tpm2_tools_evidence_verifies(tpm: &Swtpm) {
    let hk = hardkey(tpm);
    hk.ok(&[
        "keygen",
        "tpm2:",
        "--alg",
        "rsa2048",
        "--persist",
        "0x81000050",
    ]);
    hk.ok(&["pubkey", "tpm2:handle=0x81000050", "--out", "key.pem"]);
    // tpm2-tools' own EK and AK, and their TPM2_Certify of hardkey's key.
    tpm2(
        tpm,
        &hk,
        "tpm2_createek",
        &["-c", "ek.ctx", "-G", "ecc", "-u", "ek.pub"],
    );
    flush_tools(tpm, &hk);
    tpm2(
        tpm,
        &hk,
        "tpm2_createak",
        &[
            "-C", "ek.ctx", "-c", "ak.ctx", "-G", "ecc", "-g", "sha256", "-s", "ecdsa", "-u",
            "ak.pub",
        ],
    );
    flush_tools(tpm, &hk);
    tpm2(
        tpm,
        &hk,
        "tpm2_readpublic",
        &["-c", "ak.ctx", "-f", "pem", "-o", "ak.pem"],
    );
    flush_tools(tpm, &hk);
    tpm2(
        tpm,
        &hk,
        "tpm2_readpublic",
        &["-c", "0x81000050", "-o", "key.pub", "-n", "key.name"],
    );
    tpm2(
        tpm,
        &hk,
        "tpm2_certify",
        &[
            "-c",
            "0x81000050",
            "-C",
            "ak.ctx",
            "-g",
            "sha256",
            "-o",
            "attest.bin",
            "-s",
            "sig.der",
            "-f",
            "plain",
        ],
    );
    flush_tools(tpm, &hk);
    let read = |name: &str| std::fs::read(hk.path(name)).unwrap();
    let key_name = hex::encode(read("key.name"));
    let ev = serde_json::json!({
        "format": "hardkey-tpm2-certify-v1",
        "attest": to_b64(&read("attest.bin")),
        "signature": { "scheme": "ecdsa-p256-sha256", "value": to_b64(&read("sig.der")) },
        "ak": {
            "public": to_b64(&read("ak.pub")),
            "public_key_pem": std::fs::read_to_string(hk.path("ak.pem")).unwrap(),
        },
        "key": { "name": key_name, "public": to_b64(&read("key.pub")) },
    });
    write_evidence(&hk, "tools.json", &ev);
    let ok = hk.json(&[
        "attest",
        "--verify",
        "tools.json",
        "--key-pub",
        "key.pem",
        "--ak-pub",
        "ak.pem",
    ]);
    assert_eq!(ok["verified"], true, "{ok}");
    // The name hardkey checked is the one tpm2_readpublic gives.
    assert_eq!(ok["key_name"], key_name.as_str(), "{ok}");
    // tpm2_certify's default qualifying data.
    assert_eq!(ok["extra_data"], "00ff55aa", "{ok}");
    // Another public area (the EK's) in place of the key's does not have the certified name.
    let mut swapped = ev.clone();
    swapped["key"]["public"] = to_b64(&read("ek.pub")).into();
    write_evidence(&hk, "swapped.json", &swapped);
    hk.fails(
        &["attest", "--verify", "swapped.json", "--key-pub", "key.pem"],
        1,
        &["name check failed"],
    );
    assert_no_transients(tpm);
    tpm2(
        tpm,
        &hk,
        "tpm2_evictcontrol",
        &["-C", "o", "-c", "0x81000050"],
    );
}

fn duplicable_key_and_ek_certificate(tpm: &Swtpm) {
    let hk = hardkey(tpm);
    hk.ok(&[
        "tpm",
        "ak",
        "create",
        "--persist",
        "0x81010004",
        "--pub-out",
        "ak.pem",
    ]);
    // An EK certificate from a stand-in manufacturer CA in the P-256 EK certificate index,
    // as a TPM vendor (or swtpm_setup --create-ek-cert) puts it there.
    tpm2(
        tpm,
        &hk,
        "tpm2_createek",
        &["-c", "ek.ctx", "-G", "ecc", "-u", "ek.pem", "-f", "pem"],
    );
    flush_tools(tpm, &hk);
    let dir = hk.dir.path();
    tool(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-subj",
            "/CN=Test TPM Manufacturer CA",
            "-days",
            "2",
            "-out",
            "ca.pem",
        ],
        dir,
    );
    tool(
        "openssl",
        &[
            "x509",
            "-new",
            "-force_pubkey",
            "ek.pem",
            "-subj",
            "/CN=test EK",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-days",
            "2",
            "-outform",
            "DER",
            "-out",
            "ek.der",
        ],
        dir,
    );
    let ek_der = std::fs::read(hk.path("ek.der")).unwrap();
    let size = ek_der.len().to_string();
    tpm2(
        tpm,
        &hk,
        "tpm2_nvdefine",
        &[
            "0x01c0000a",
            "-C",
            "p",
            "-s",
            &size,
            "-a",
            "ppwrite|ppread|ownerread|authread|no_da|platformcreate",
        ],
    );
    tpm2(
        tpm,
        &hk,
        "tpm2_nvwrite",
        &["0x01c0000a", "-C", "p", "-i", "ek.der"],
    );

    // A duplicable key (neither fixedTPM nor fixedParent), made by tpm2-tools.
    tpm2(
        tpm,
        &hk,
        "tpm2_createprimary",
        &["-C", "o", "-c", "prim.ctx"],
    );
    tpm2(
        tpm,
        &hk,
        "tpm2_create",
        &[
            "-C",
            "prim.ctx",
            "-G",
            "ecc",
            "-a",
            "sign|sensitivedataorigin|userwithauth",
            "-u",
            "dup.pub",
            "-r",
            "dup.priv",
        ],
    );
    flush_tools(tpm, &hk);
    tpm2(
        tpm,
        &hk,
        "tpm2_load",
        &[
            "-C", "prim.ctx", "-u", "dup.pub", "-r", "dup.priv", "-c", "dup.ctx",
        ],
    );
    tpm2(
        tpm,
        &hk,
        "tpm2_evictcontrol",
        &["-C", "o", "-c", "dup.ctx", "0x81000060"],
    );
    flush_tools(tpm, &hk);
    tpm2(
        tpm,
        &hk,
        "tpm2_readpublic",
        &["-c", "0x81000060", "-f", "pem", "-o", "dup.pem"],
    );
    // Evidence is written, with a warning, and refused by --verify naming the attributes.
    let out = hk.run(&[
        "attest",
        "tpm2:handle=0x81000060",
        "--ak",
        "tpm2:handle=0x81010004",
        "-o",
        "dup.json",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lacks fixedTPM, fixedParent"),
        "{out:?}"
    );
    hk.fails(
        &["attest", "--verify", "dup.json", "--key-pub", "dup.pem"],
        1,
        &["attribute check failed", "lacks fixedTPM, fixedParent"],
    );
    let ev = evidence(&hk, "dup.json");
    assert_eq!(b64(&ev["ek_certificate"]), ek_der, "{ev}");

    // Evidence of a good key carries the EK certificate, which chains to the stand-in CA.
    hk.ok(&["keygen", "tpm2:", "--out", "key.tss2.pem"]);
    hk.ok(&["pubkey", "tpm2:file=key.tss2.pem", "--out", "key.pem"]);
    hk.ok(&[
        "attest",
        "tpm2:file=key.tss2.pem",
        "--ak",
        "0x81010004",
        "-o",
        "ev.json",
    ]);
    let ok = hk.ok(&[
        "attest",
        "--verify",
        "ev.json",
        "--key-pub",
        "key.pem",
        "--ak-pub",
        "ak.pem",
    ]);
    assert!(ok.contains("subject 'CN=test EK'"), "{ok}");
    let ev = evidence(&hk, "ev.json");
    std::fs::write(hk.path("ek-from-evidence.der"), b64(&ev["ek_certificate"])).unwrap();
    tool(
        "openssl",
        &[
            "x509",
            "-inform",
            "DER",
            "-in",
            "ek-from-evidence.der",
            "-out",
            "ek-from-evidence.pem",
        ],
        dir,
    );
    let chain = tool(
        "openssl",
        &["verify", "-CAfile", "ca.pem", "ek-from-evidence.pem"],
        dir,
    );
    assert!(chain.contains(": OK"), "{chain}");
    assert_no_transients(tpm);
    tpm2(tpm, &hk, "tpm2_nvundefine", &["0x01c0000a", "-C", "p"]);
    for h in ["0x81000060", "0x81010004"] {
        tpm2(tpm, &hk, "tpm2_evictcontrol", &["-C", "o", "-c", h]);
    }
}

fn credential_activation_binds_ak_to_ek(tpm: &Swtpm) {
    let hk = hardkey(tpm);
    let persistent = hk.json(&["tpm", "ak", "create", "--persist", "0x81010005"]);
    let in_file = hk.json(&["tpm", "ak", "create", "--out", "ak.tss2.pem"]);
    // The verifier's side, in software: a credential to the EK (read with tpm2-tools) for
    // each AK's name.
    tpm2(
        tpm,
        &hk,
        "tpm2_createek",
        &["-c", "ek.ctx", "-G", "ecc", "-u", "ek.pub"],
    );
    flush_tools(tpm, &hk);
    hk.file("secret.bin", [0x5a; 32]);
    for (ak, out) in [(&persistent, "cred-persistent"), (&in_file, "cred-file")] {
        let name = ak["name"].as_str().unwrap();
        tool(
            "tpm2_makecredential",
            &[
                "-T",
                "none",
                "-u",
                "ek.pub",
                "-s",
                "secret.bin",
                "-n",
                name,
                "-o",
                out,
            ],
            hk.dir.path(),
        );
    }
    hk.ok(&[
        "tpm",
        "ak",
        "activate",
        "--ak",
        "0x81010005",
        "--credential",
        "cred-persistent",
        "-o",
        "got-persistent",
    ]);
    hk.ok(&[
        "tpm",
        "ak",
        "activate",
        "--ak",
        "ak.tss2.pem",
        "--credential",
        "cred-file",
        "-o",
        "got-file",
    ]);
    for got in ["got-persistent", "got-file"] {
        assert_eq!(std::fs::read(hk.path(got)).unwrap(), [0x5a; 32], "{got}");
    }
    // A credential made for another AK's name is refused, and nothing is written; an existing
    // output is never replaced; a file that is not a credential is bad input.
    hk.fails(
        &[
            "tpm",
            "ak",
            "activate",
            "--ak",
            "ak.tss2.pem",
            "--credential",
            "cred-persistent",
            "-o",
            "never",
        ],
        2,
        &["not made to this TPM's EK", "for this AK's name"],
    );
    assert!(!hk.path("never").exists());
    hk.fails(
        &[
            "tpm",
            "ak",
            "activate",
            "--ak",
            "0x81010005",
            "--credential",
            "cred-persistent",
            "-o",
            "got-file",
        ],
        2,
        &["exists"],
    );
    hk.fails(
        &[
            "tpm",
            "ak",
            "activate",
            "--ak",
            "0x81010005",
            "--credential",
            "secret.bin",
            "-o",
            "x",
        ],
        2,
        &["credential file"],
    );
    assert_no_transients(tpm);
    tpm2(
        tpm,
        &hk,
        "tpm2_evictcontrol",
        &["-C", "o", "-c", "0x81010005"],
    );
}

type Test = (&'static str, fn(&Swtpm));

fn main() -> ExitCode {
    run(|tpm: Arc<Swtpm>| {
        let tests: [Test; 5] = [
            ("persistent_ak_and_file_key", persistent_ak_and_file_key),
            (
                "ak_file_with_endorsement_auth",
                ak_file_with_endorsement_auth,
            ),
            ("tpm2_tools_evidence_verifies", tpm2_tools_evidence_verifies),
            (
                "duplicable_key_and_ek_certificate",
                duplicable_key_and_ek_certificate,
            ),
            (
                "credential_activation_binds_ak_to_ek",
                credential_activation_binds_ak_to_ek,
            ),
        ];
        tests
            .into_iter()
            .map(|(name, test)| {
                let tpm = Arc::clone(&tpm);
                trial(name, move || test(&tpm))
            })
            .collect()
    })
}
