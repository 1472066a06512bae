//! `hardkey serve` end to end on software keys (P-256, RSA-2048), on both stacks: curl,
//! `openssl s_client` and a rustls client (each verifying the certificate hardkey made and
//! the server's handshake signature) complete TLS 1.3 handshakes and TLS 1.2 (ECDHE) ones
//! with ECDSA, RSA PKCS#1 and RSA-PSS signatures; Ctrl-C stops the server cleanly with its
//! counters; a certificate for another key is refused at startup. The same checks run on
//! SoftHSM keys in `softhsm.rs` and on swtpm keys in `swtpm.rs`.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

mod common;

use common::Hardkey;
use common::serve::{KeyType, Serve, check_reload, check_serve, free_addr, selfsign_localhost};

#[test]
fn curl_openssl_and_rustls_handshake_with_both_stacks() {
    let hk = Hardkey::new();
    for key_type in [KeyType::P256, KeyType::Rsa2048] {
        let alg = key_type.alg();
        let key = format!("file:{alg}.pem");
        hk.ok(&["keygen", &key, "--alg", alg]);
        let cert = selfsign_localhost(&hk, &key, &format!("{alg}.crt"), &[]);
        check_serve(
            &hk,
            &key,
            &cert,
            key_type,
            &format!("on key '{alg}' (software keys)"),
        );
    }
}

#[test]
fn a_certificate_for_another_key_is_refused() {
    let hk = Hardkey::new();
    hk.ok(&["keygen", "file:a.pem"]);
    hk.ok(&["keygen", "file:b.pem"]);
    hk.ok(&[
        "selfsign",
        "file:b.pem",
        "--subject",
        "CN=b",
        "--out",
        "b.crt",
    ]);
    let addr = free_addr().to_string();
    hk.fails(
        &[
            "serve",
            "--key",
            "file:a.pem",
            "--cert",
            "b.crt",
            "--listen",
            &addr,
        ],
        2,
        &["b.crt"],
    );
    hk.fails(
        &[
            "serve",
            "--key",
            "file:a.pem",
            "--cert",
            "missing.crt",
            "--listen",
            &addr,
        ],
        2,
        &["missing.crt"],
    );
    hk.fails(
        &[
            "serve",
            "--key",
            "file:b.pem",
            "--cert",
            "b.crt",
            "--stack",
            "openssl",
        ],
        2,
        &["openssl", "boring or rustls"],
    );
}

/// The CN of the certificate `openssl s_client` got for server name `name` (`None`: no SNI),
/// and whether it verified against `ca` for that name.
fn served(
    hk: &Hardkey,
    addr: std::net::SocketAddr,
    ca: &str,
    name: Option<&str>,
) -> (Option<String>, bool) {
    let mut cmd = std::process::Command::new("openssl");
    cmd.current_dir(hk.path("")).args([
        "s_client",
        "-connect",
        &addr.to_string(),
        "-CAfile",
        ca,
        "-no_ticket",
    ]);
    match name {
        Some(name) => cmd.args(["-servername", name, "-verify_hostname", name]),
        None => cmd.arg("-noservername"),
    };
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let cn = text
        .lines()
        .find(|l| l.starts_with("subject="))
        .and_then(|l| l.rsplit("CN").next())
        .map(|cn| cn.trim_start_matches([' ', '=']).trim().to_owned());
    // With no certificate (a refused handshake) s_client still says "0 (ok)": nothing failed
    // verification.
    let verified = cn.is_some() && text.contains("Verify return code: 0 (ok)");
    (cn, verified)
}

#[test]
fn several_chains_from_an_identities_file_and_a_cert_dir() {
    let hk = Hardkey::new();
    hk.ok(&["keygen", "file:a.pem", "--alg", "p256"]);
    hk.ok(&["keygen", "file:b.pem", "--alg", "rsa2048"]);
    for (key, name) in [("a", "a.example"), ("b", "b.example")] {
        hk.ok(&[
            "selfsign",
            &format!("file:{key}.pem"),
            "--subject",
            &format!("CN={key}"),
            "--san",
            &format!("dns:{name}"),
            "--out",
            &format!("{key}.crt"),
        ]);
    }
    // One trust file holding both self-signed certificates.
    let both = format!(
        "{}{}",
        std::fs::read_to_string(hk.path("a.crt")).unwrap(),
        std::fs::read_to_string(hk.path("b.crt")).unwrap()
    );
    hk.file("trust.pem", both);
    let a_key = hk.path("a.pem").display().to_string();
    let b_key = hk.path("b.pem").display().to_string();
    std::fs::create_dir(hk.path("conf")).unwrap();
    hk.file(
        "conf/identities.toml",
        format!(
            "unknown-names = \"refuse\"\n\n[[identity]]\nkey = \"file:{a_key}\"\ncert = \
             \"../a.crt\"\n\n[[identity]]\nkey = \"file:{b_key}\"\ncert = \"{}\"\n",
            hk.path("b.crt").display()
        ),
    );
    std::fs::create_dir(hk.path("certs")).unwrap();
    for (key, path) in [("a", &a_key), ("b", &b_key)] {
        let chain = std::fs::read_to_string(hk.path(&format!("{key}.crt"))).unwrap();
        hk.file(
            &format!("certs/{key}.pem"),
            format!("hardkey-key: file:{path}\n{chain}"),
        );
    }
    for stack in ["boring", "rustls"] {
        let serve = Serve::start_with(&hk, &["--identities", "conf/identities.toml"], stack);
        assert_eq!(
            served(&hk, serve.addr(), "trust.pem", Some("a.example")),
            (Some("a".into()), true)
        );
        assert_eq!(
            served(&hk, serve.addr(), "trust.pem", Some("b.example")),
            (Some("b".into()), true)
        );
        assert_eq!(
            served(&hk, serve.addr(), "trust.pem", Some("c.example")),
            (None, false)
        );
        assert_eq!(served(&hk, serve.addr(), "trust.pem", None), (None, false));
        let stopped = serve.stop();
        assert!(
            stopped
                .log
                .contains("2 certificate chains, selected by server name: [a.example] on key 'a'"),
            "{}",
            stopped.log
        );
        assert_eq!(
            stopped.stats["handshakes"], 2,
            "{stack}: {:?}",
            stopped.stats
        );

        // The same from a directory; unknown names get the default (the first file, a).
        let serve = Serve::start_with(&hk, &["--cert-dir", "certs"], stack);
        assert_eq!(
            served(&hk, serve.addr(), "trust.pem", Some("b.example")),
            (Some("b".into()), true)
        );
        assert_eq!(
            served(&hk, serve.addr(), "trust.pem", Some("c.example")).0,
            Some("a".into())
        );
        assert_eq!(
            served(&hk, serve.addr(), "trust.pem", None).0,
            Some("a".into())
        );
        serve.stop();
    }
}

/// The startup line names the first 8 chains and counts the rest: with 10,000 keys it was a
/// line of about 1 MB, which a pipe nobody drained yet (64 KiB) held the server on.
#[test]
fn the_startup_line_names_a_few_chains_of_many() {
    let hk = Hardkey::new();
    std::fs::create_dir(hk.path("certs")).unwrap();
    for i in 0..11 {
        let key = format!("file:k{i:02}.pem");
        hk.ok(&["keygen", &key, "--alg", "p256"]);
        hk.ok(&[
            "selfsign",
            &key,
            "--subject",
            &format!("CN=k{i:02}"),
            "--san",
            &format!("dns:k{i:02}.example"),
            "--out",
            &format!("k{i:02}.crt"),
        ]);
        let chain = std::fs::read_to_string(hk.path(&format!("k{i:02}.crt"))).unwrap();
        let path = hk.path(&format!("k{i:02}.pem"));
        hk.file(
            &format!("certs/k{i:02}.pem"),
            format!("hardkey-key: file:{}\n{chain}", path.display()),
        );
    }
    let serve = Serve::start_with(&hk, &["--cert-dir", "certs"], "boring");
    let stopped = serve.stop();
    let line = stopped
        .log
        .lines()
        .find(|l| l.contains("serving https://"))
        .unwrap_or_else(|| panic!("no startup line: {}", stopped.log));
    assert!(
        line.contains("11 certificate chains, selected by server name: [k00.example] on key"),
        "{line}"
    );
    assert!(line.contains("[k07.example]"), "{line}");
    assert!(!line.contains("k08.example"), "{line}");
    assert!(
        line.contains("; and 3 more, 1 event-loop thread(s)"),
        "{line}"
    );
}

#[test]
fn bad_identities_are_refused_with_what_to_fix() {
    let hk = Hardkey::new();
    hk.ok(&["keygen", "file:a.pem"]);
    selfsign_localhost(&hk, "file:a.pem", "a.crt", &[]);
    let addr = free_addr().to_string();
    let serve = |what: &[&str], needles: &[&str]| {
        let mut args = vec!["serve", "--listen", &addr];
        args.extend_from_slice(what);
        hk.fails(&args, 2, needles);
    };
    serve(&[], &["nothing to serve", "--identities"]);
    // A key alone serves the chain stored beside it (hardkey cert import): none here.
    serve(
        &["--key", "file:a.pem"],
        &["a.chain.pem does not exist", "hardkey cert import"],
    );
    serve(&["--cert", "a.crt"], &["--cert needs --key"]);
    serve(&["--identities", "missing.toml"], &["missing.toml"]);
    hk.file("bad.toml", "[[identity]]\nkey = \"file:a.pem\"\n");
    serve(
        &["--identities", "bad.toml"],
        &["a.chain.pem does not exist", "--cert FILE"],
    );
    hk.file(
        "typo.toml",
        "[[identity]]\nkey = \"file:a.pem\"\ncert = \"a.crt\"\ncertt = 1\n",
    );
    serve(&["--identities", "typo.toml"], &["typo.toml", "certt"]);
    hk.file("empty.toml", "unknown-names = \"refuse\"\n");
    serve(&["--identities", "empty.toml"], &["no [[identity]]"]);
    hk.file(
        "policy.toml",
        "unknown-names = \"reject\"\n[[identity]]\nkey = \"file:a.pem\"\ncert = \"a.crt\"\n",
    );
    serve(&["--identities", "policy.toml"], &["\"reject\"", "refuse"]);
    hk.file(
        "two.toml",
        "[[identity]]\nkey = \"file:a.pem\"\ncert = \"a.crt\"\ndefault = true\n\
         [[identity]]\nkey = \"file:a.pem\"\ncert = \"a.crt\"\ndefault = true\n",
    );
    serve(
        &["--identities", "two.toml"],
        &["default = true", "on one entry only"],
    );
    // A parse error names the line, and never quotes it (it could hold a PIN).
    hk.file(
        "pin.toml",
        "[[identity]]\nkey = \"pkcs11:token=x;object=y?pin-value=SECRET123\n",
    );
    let err = hk.fails(
        &["serve", "--listen", &addr, "--identities", "pin.toml"],
        2,
        &["pin.toml", "line 2"],
    );
    assert!(!err.contains("SECRET123"), "{err}");
    std::fs::create_dir(hk.path("nokey")).unwrap();
    std::fs::copy(hk.path("a.crt"), hk.path("nokey/a.pem")).unwrap();
    serve(
        &["--cert-dir", "nokey"],
        &["names no key", "hardkey-key: URI"],
    );
    std::fs::create_dir(hk.path("empty")).unwrap();
    serve(&["--cert-dir", "empty"], &["no chain file"]);
}

#[test]
fn paths_are_relative_to_the_file_naming_them_and_doubtful_entries_are_warned_of() {
    let hk = Hardkey::new();
    std::fs::create_dir(hk.path("keys")).unwrap();
    hk.ok(&["keygen", "file:keys/a.pem"]);
    hk.ok(&[
        "selfsign",
        "file:keys/a.pem",
        "--subject",
        "CN=a",
        "--san",
        "dns:a.example",
        "--out",
        "keys/a.crt",
    ]);
    // The key path, like the chain path, is relative to the TOML file's directory (it used
    // to be relative to the working directory): and the entry given twice is warned of.
    std::fs::create_dir(hk.path("conf")).unwrap();
    let entry = "[[identity]]\nkey = \"file:../keys/a.pem\"\ncert = \"../keys/a.crt\"\n";
    hk.file("conf/rel.toml", format!("{entry}{entry}"));
    let serve = Serve::start_with(&hk, &["--identities", "conf/rel.toml"], "rustls");
    assert_eq!(
        served(&hk, serve.addr(), "keys/a.crt", Some("a.example")),
        (Some("a".into()), true)
    );
    let stopped = serve.stop();
    assert!(
        stopped.log.contains("warning: ") && stopped.log.contains("is listed twice"),
        "{}",
        stopped.log
    );

    // In a directory: the key line's relative path is relative to the directory; a dangling
    // link, a FIFO and a directory with chain-file names are skipped with a warning.
    std::fs::create_dir(hk.path("certs")).unwrap();
    let chain = std::fs::read_to_string(hk.path("keys/a.crt")).unwrap();
    hk.file(
        "certs/a.pem",
        format!("hardkey-key: file:../keys/a.pem\n{chain}"),
    );
    std::fs::create_dir(hk.path("elsewhere")).unwrap();
    std::os::unix::fs::symlink(hk.path("elsewhere/b.pem"), hk.path("certs/dangling.pem")).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(hk.path("certs/fifo.pem"))
        .status()
        .unwrap();
    assert!(fifo.success());
    std::fs::create_dir(hk.path("certs/dir.crt")).unwrap();
    let serve = Serve::start_with(&hk, &["--cert-dir", "certs"], "boring");
    assert_eq!(
        served(&hk, serve.addr(), "keys/a.crt", Some("a.example")),
        (Some("a".into()), true)
    );
    // The link gains a target: the poll sees it and serves it.
    hk.file(
        "elsewhere/b.pem",
        format!(
            "hardkey-key: file:{}\n{chain}",
            hk.path("keys/a.pem").display()
        ),
    );
    serve.wait_for_log(&["dangling.pem: added"], 1);
    let log = serve.stop().log;
    for needle in [
        "dangling.pem: skipped, a symbolic link",
        "fifo.pem: skipped, not a regular file (a FIFO",
        "dir.crt: skipped, not a regular file (a directory)",
    ] {
        assert!(log.contains(needle), "no '{needle}' in:\n{log}");
    }
    // The banner comes before any warning-free line of the server: one line, not one per
    // chain.
    assert_eq!(log.matches("serving https://").count(), 1, "{log}");

    // A chain file naming two different keys is refused.
    std::fs::create_dir(hk.path("two")).unwrap();
    hk.ok(&["keygen", "file:keys/b.pem"]);
    hk.file(
        "two/a.pem",
        format!("hardkey-key: file:../keys/a.pem\nhardkey-key: file:../keys/b.pem\n{chain}"),
    );
    let addr = free_addr().to_string();
    hk.fails(
        &["serve", "--listen", &addr, "--cert-dir", "two"],
        2,
        &["two/a.pem", "names 2 keys", "keep one"],
    );

    // A FIFO named as a chain or a key file is refused at once (reading one would wait for a
    // writer for ever, startup and SIGTERM with it).
    let mkfifo = std::process::Command::new("mkfifo")
        .arg(hk.path("conf/pipe"))
        .status()
        .unwrap();
    assert!(mkfifo.success());
    hk.file(
        "conf/fifo-cert.toml",
        "[[identity]]\nkey = \"file:../keys/a.pem\"\ncert = \"pipe\"\n",
    );
    hk.fails(
        &[
            "serve",
            "--listen",
            &addr,
            "--identities",
            "conf/fifo-cert.toml",
        ],
        2,
        &["certificate chain", "conf/pipe", "not a regular file"],
    );
    hk.file(
        "conf/fifo-key.toml",
        "[[identity]]\nkey = \"file:pipe\"\ncert = \"../keys/a.crt\"\n",
    );
    hk.fails(
        &[
            "serve",
            "--listen",
            &addr,
            "--identities",
            "conf/fifo-key.toml",
        ],
        2,
        &["key file", "conf/pipe", "not a regular file"],
    );
}

#[test]
fn certificates_reload_without_restart() {
    let hk = Hardkey::new();
    hk.ok(&["keygen", "file:a.pem", "--alg", "p256"]);
    hk.ok(&["keygen", "file:b.pem", "--alg", "rsa2048"]);
    // A key file that is not there: the entry cannot be opened.
    check_reload(&hk, "file:a.pem", "file:b.pem", "file:missing.pem", &[]);
}
