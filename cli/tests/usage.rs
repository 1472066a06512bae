//! The `hardkey` command without a device: software keys in files, usage errors and their
//! exit codes, JSON output, completions and man pages.

mod common;

use common::{Hardkey, check_certificates, openssl_verify, tool};

#[test]
fn help_version_and_usage_errors_have_the_documented_exit_codes() {
    let hk = Hardkey::new();
    let help = hk.ok(&["--help"]);
    assert!(help.contains("Exit status: 0 success; 1"), "{help}");
    assert!(hk.ok(&["--version"]).starts_with("hardkey "));
    // clap's own usage errors: exit 2.
    assert_eq!(hk.run(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(hk.run(&["keygen"]).status.code(), Some(2));
    let out = hk.run(&["keygen", "file:k.pem", "--alg", "x25519"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("p256, p384, ed25519, ed448, rsa2048"));
}

#[test]
fn malformed_uris_and_unknown_aliases_are_usage_errors() {
    let hk = Hardkey::new();
    hk.fails(
        &["info", "pkcs11x:token=a"],
        2,
        &["unknown scheme", "pkcs11:"],
    );
    hk.fails(
        &["info", "pkcs11:token=a;objekt=b"],
        2,
        &["unknown attribute objekt"],
    );
    hk.fails(&["info", "tpm2:handle=0x1234"], 2, &["persistent range"]);
    // The command line has no opt-in for a PIN in the URI: the error says what it takes
    // instead, and names no library function.
    let err = hk.fails(
        &["info", "pkcs11:token=a;object=b?pin-value=1234"],
        2,
        &["pin-value", "pin-source=file:", "HARDKEY_PIN", "--pin-file"],
    );
    assert!(
        !err.contains("UriParseOptions") && !err.contains("1234"),
        "{err}"
    );
    hk.fails(&["info", "web"], 2, &["not a key URI", "no aliases"]);
    hk.fails(&["info", "tpm2:"], 2, &["names the TPM, not a key"]);
    hk.fails(&["list", "file:k.pem"], 2, &["names one key"]);
    hk.fails(
        &["csr", "file:k.pem", "--subject", "CN=a,X"],
        2,
        &["--subject", "'X'"],
    );
    hk.fails(
        &[
            "selfsign",
            "file:k.pem",
            "--subject",
            "CN=a",
            "--san",
            "foo:bar",
        ],
        2,
        &["--san", "foo"],
    );
    let config = hk.file("config.toml", "[aliases]\nweb = \"file:web.pem\"\n");
    hk.fails(
        &["--config", &config, "info", "api"],
        2,
        &["aliases: web", "config.toml"],
    );
    // An unreachable TPM: one line, no TSS log noise, exit 1.
    hk.fails(
        &["tpm", "status", "--tpm", "swtpm:host=127.0.0.1,port=1"],
        1,
        &["TPM at swtpm:host=127.0.0.1,port=1 is unavailable"],
    );
    let bad = hk.file("bad.toml", "[tpm]\ntcit = 1\n");
    hk.fails(&["--config", &bad, "info", "web"], 2, &["tcit"]);
}

#[test]
fn software_keys_sign_for_openssl_and_verify() {
    let hk = Hardkey::new();
    for (alg, schemes) in [
        ("p256", &["ecdsa-p256-sha256"][..]),
        ("p384", &["ecdsa-p384-sha384"][..]),
        (
            "rsa2048",
            &["rsa-pkcs1-sha256", "rsa-pss-sha256", "rsa-pss-sha384"][..],
        ),
    ] {
        let key = format!("file:{alg}.pem");
        let info = hk.json(&["keygen", &key, "--alg", alg]);
        assert_eq!(info["algorithm"], alg);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(hk.path(&format!("{alg}.pem")))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "private key file mode");
        }
        let msg = hk.file("msg", b"the message");
        hk.ok(&["pubkey", &key, "--out", "pub.pem"]);
        // The public key is the one openssl derives from the private key file.
        let derived = tool(
            "openssl",
            &["pkey", "-in", &format!("{alg}.pem"), "-pubout"],
            hk.dir.path(),
        );
        assert_eq!(
            derived,
            std::fs::read_to_string(hk.path("pub.pem")).unwrap()
        );
        for scheme in schemes {
            hk.ok(&[
                "sign", &key, "--scheme", scheme, "--in", &msg, "--out", "sig",
            ]);
            openssl_verify(hk.dir.path(), scheme, "pub.pem", "msg", "sig");
            let ok = hk.ok(&[
                "verify", "--pubkey", "pub.pem", "--scheme", scheme, "--in", "msg", "--sig", "sig",
            ]);
            assert!(ok.contains("Verified OK"), "{ok}");
            check_certificates(&hk, &key, scheme, &[]);
        }
        // verify also takes the certificate as the public key.
        hk.ok(&[
            "verify",
            "--pubkey",
            "self.crt",
            "--scheme",
            schemes[schemes.len() - 1],
            "--in",
            "msg",
            "--sig",
            "sig",
        ]);
        // A signature over other data fails with exit 1.
        hk.file("other", b"another message");
        hk.fails(
            &[
                "verify", "--pubkey", "pub.pem", "--scheme", schemes[0], "--in", "other", "--sig",
                "sig",
            ],
            1,
            &["verification failure"],
        );
    }
}

#[test]
fn bad_input_leaves_nothing_behind() {
    let hk = Hardkey::new();
    hk.ok(&["keygen", "file:k.pem"]);
    let before = std::fs::read(hk.path("k.pem")).unwrap();
    // An existing key file is never overwritten.
    hk.fails(&["keygen", "file:k.pem", "--alg", "p384"], 2, &["k.pem"]);
    assert_eq!(std::fs::read(hk.path("k.pem")).unwrap(), before);
    // Missing input, unwritable output, a directory as output.
    hk.fails(
        &["sign", "file:k.pem", "--in", "missing", "--out", "sig"],
        2,
        &["missing", "No such file"],
    );
    hk.file("msg", b"m");
    hk.fails(
        &[
            "sign",
            "file:k.pem",
            "--in",
            "msg",
            "--out",
            "no/such/dir/sig",
        ],
        2,
        &["no/such/dir", "does not exist"],
    );
    std::fs::create_dir(hk.path("d")).unwrap();
    hk.fails(
        &["sign", "file:k.pem", "--in", "msg", "--out", "d"],
        2,
        &["is a directory"],
    );
    // A read-only directory: the error names it, and no temporary file is left there.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(hk.path("d"), std::fs::Permissions::from_mode(0o500)).unwrap();
        let out = hk.run(&["sign", "file:k.pem", "--in", "msg", "--out", "d/sig"]);
        // root ignores directory permissions; everyone else gets exit 2.
        if !out.status.success() {
            assert_eq!(out.status.code(), Some(2));
        }
        std::fs::set_permissions(hk.path("d"), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    // A missing key file, an unknown scheme for the key.
    hk.fails(&["info", "file:nope.pem"], 1, &["nope.pem"]);
    hk.fails(
        &[
            "sign",
            "file:k.pem",
            "--scheme",
            "rsa-pss-sha256",
            "--in",
            "msg",
            "--out",
            "sig2",
        ],
        2,
        &["rsa-pss-sha256"],
    );
    let left: Vec<String> = hk
        .files()
        .into_iter()
        .filter(|f| f.starts_with(".hardkey-") || f == "sig" || f == "sig2")
        .collect();
    assert!(left.is_empty(), "partial outputs left: {left:?}");
}

#[test]
fn json_output_parses_and_aliases_resolve() {
    let hk = Hardkey::new();
    let config = hk.file("config.toml", "[aliases]\nweb = \"file:web.pem\"\n");
    let made = hk.json(&["--config", &config, "keygen", "web", "--alg", "p256"]);
    let info = hk.json(&["--config", &config, "info", "web"]);
    assert_eq!(made["public_key_sha256"], info["public_key_sha256"]);
    assert_eq!(info["signature_schemes"][0], "ecdsa-p256-sha256");
    hk.file("msg", b"m");
    let signed = hk.json(&[
        "--config", &config, "sign", "web", "--in", "msg", "--out", "sig",
    ]);
    assert_eq!(signed["scheme"], "ecdsa-p256-sha256");
    let bench = hk.json(&[
        "--config",
        &config,
        "bench",
        "web",
        "--duration",
        "300ms",
        "--concurrency",
        "2",
    ]);
    assert!(bench["signatures"].as_u64().unwrap() > 0, "{bench}");
    assert!(
        bench["latency_ms"]["p99"].as_f64().unwrap() > 0.0,
        "{bench}"
    );
}

#[test]
fn completions_and_man_pages_are_generated() {
    let hk = Hardkey::new();
    let bash = hk.ok(&["completions", "bash"]);
    assert!(
        bash.contains("_hardkey") && bash.contains("keygen"),
        "{bash}"
    );
    hk.ok(&["completions", "zsh"]);
    hk.ok(&["man", "--out-dir", "man"]);
    let page = std::fs::read_to_string(hk.path("man/hardkey-keygen.1")).unwrap();
    assert!(page.contains(".TH") && page.contains("persist"), "{page}");
    assert!(hk.path("man/hardkey-tpm-lockout-set.1").exists());
}

#[test]
fn conflicting_names_and_zero_counts_are_refused() {
    let hk = Hardkey::new();
    // object= and --label both name the new key: refused before any device is touched.
    hk.fails(
        &["keygen", "pkcs11:token=t;object=foo", "--label", "bar"],
        2,
        &["object=", "--label", "'foo'", "'bar'"],
    );
    // A count of 0 is refused, not quietly raised to 1.
    let out = hk.run(&[
        "serve",
        "--key",
        "file:k.pem",
        "--cert",
        "c.pem",
        "--threads",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at least 1"),
        "{out:?}"
    );
}

#[test]
fn json_errors_are_json_documents_too() {
    let hk = Hardkey::new();
    // A key that is not there (software key file): an operation failure, NotFound.
    let out = hk.run(&["--json", "info", "file:missing.pem"]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {out:?}"));
    let error = &doc["error"];
    assert_eq!(error["exit_code"], 1, "{doc}");
    assert_eq!(error["usage"], false, "{doc}");
    assert!(error["kind"].is_string(), "{doc}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("missing.pem")),
        "{doc}"
    );
    // The human line still goes to stderr.
    assert!(String::from_utf8_lossy(&out.stderr).contains("hardkey: error:"));
    // A malformed URI: a usage error, kind invalid_input.
    let out = hk.run(&["--json", "info", "pkcs11:token=a;module-path=/x.so"]);
    assert_eq!(out.status.code(), Some(2));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["error"]["kind"], "invalid_input", "{doc}");
    assert_eq!(doc["error"]["usage"], true, "{doc}");
    // Without --json, nothing on stdout.
    assert!(hk.run(&["info", "file:missing.pem"]).stdout.is_empty());
    // Found by an attacker's review: stdout holds one JSON document and nothing else, so an
    // output to stdout is refused, and the argument parser's errors are JSON too.
    hk.ok(&["keygen", "file:j.pem", "--alg", "p256"]);
    hk.file("m", b"m");
    for args in [
        &["--json", "sign", "file:j.pem", "--in", "m", "--out", "-"][..],
        &["--json", "--bogus"][..],
        &["--json", "info"][..],
    ] {
        let out = hk.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: stdout is not one JSON document ({e}): {out:?}"));
        assert_eq!(doc["error"]["kind"], "invalid_input", "{args:?}: {doc}");
    }
}

#[test]
fn a_bad_tcti_port_is_named() {
    let hk = Hardkey::new();
    hk.fails(
        &["tpm", "status", "--tpm", "swtpm:host=127.0.0.1,port=99999"],
        2,
        &["TCTI port", "'99999'", "65535"],
    );
}

#[test]
fn an_unreachable_remote_module_is_named_as_such() {
    let hk = Hardkey::new().env("HARDKEY_PIN", "1234").env(
        "P11_KIT_SERVER_ADDRESS",
        "unix:path=/nonexistent/hardkey-p11-kit.sock",
    );
    let line = hk.fails(
        &[
            "list",
            "pkcs11:token=web?module-path=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so",
        ],
        1,
        &["no slot at all", "server is unreachable"],
    );
    assert!(!line.contains("hardkey token init"), "{line}");
}
