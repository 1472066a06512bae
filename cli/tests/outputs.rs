//! `--out` never destroys what is at its path (security finding 5): a FIFO and a character
//! device are written in place, an output that is the input (or the key file) is refused,
//! a symbolic link stays a link, an interrupted write leaves no temporary file; regular files
//! are still replaced atomically. Also: secrets typed where a path belongs are not echoed.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

mod common;

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Hardkey, openssl_verify, run_ok};

/// A scratch directory with a P-256 software key and a message.
fn with_key() -> Hardkey {
    let hk = Hardkey::new();
    hk.ok(&["keygen", "file:k.pem", "--alg", "p256"]);
    hk.ok(&["pubkey", "file:k.pem", "--out", "k.pub"]);
    hk.file("msg", "hello\n");
    hk
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(status.success());
}

#[test]
fn a_fifo_is_written_in_place() {
    let hk = with_key();
    let fifo = hk.path("sig.fifo");
    mkfifo(&fifo);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut data = Vec::new();
            std::fs::File::open(&fifo)
                .expect("open the FIFO")
                .read_to_end(&mut data)
                .expect("read the FIFO");
            data
        })
    };
    hk.ok(&["sign", "file:k.pem", "--in", "msg", "--out", "sig.fifo"]);
    let signature = reader.join().unwrap();
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo(),
        "the FIFO was replaced by a regular file"
    );
    std::fs::write(hk.path("sig.der"), &signature).unwrap();
    openssl_verify(hk.dir.path(), "ecdsa", "k.pub", "msg", "sig.der");
}

#[test]
fn a_character_device_is_written_in_place() {
    let hk = with_key();
    // A symbolic link in the scratch directory to /dev/null: the device must stay a device,
    // the link a link (as root, a rename over /dev/null itself would replace it).
    std::os::unix::fs::symlink("/dev/null", hk.path("null")).unwrap();
    for command in [
        vec!["sign", "file:k.pem", "--in", "msg", "--out", "null"],
        vec!["pubkey", "file:k.pem", "--out", "null"],
        vec!["csr", "file:k.pem", "--subject", "CN=a", "--out", "null"],
        vec![
            "selfsign",
            "file:k.pem",
            "--subject",
            "CN=a",
            "--out",
            "null",
        ],
    ] {
        hk.ok(&command);
        assert!(
            std::fs::symlink_metadata(hk.path("null"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let dev = std::fs::metadata("/dev/null").unwrap();
        assert!(dev.file_type().is_char_device(), "/dev/null was replaced");
        assert_eq!(dev.rdev(), 0x103, "/dev/null is no longer (1, 3)");
    }
    assert!(
        !hk.files().iter().any(|f| f.starts_with(".hardkey-")),
        "{:?}",
        hk.files()
    );
}

#[test]
fn an_output_that_is_an_input_is_refused() {
    let hk = with_key();
    let key_before = std::fs::read(hk.path("k.pem")).unwrap();
    hk.fails(
        &["sign", "file:k.pem", "--in", "msg", "--out", "msg"],
        2,
        &["same file as the input", "msg"],
    );
    assert_eq!(std::fs::read(hk.path("msg")).unwrap(), b"hello\n");
    // The same file under another name: a hard link, and a symbolic link.
    std::fs::hard_link(hk.path("msg"), hk.path("msg-link")).unwrap();
    std::os::unix::fs::symlink(hk.path("msg"), hk.path("msg-sym")).unwrap();
    for out in ["msg-link", "msg-sym"] {
        hk.fails(
            &["sign", "file:k.pem", "--in", "msg", "--out", out],
            2,
            &["same file as the input"],
        );
    }
    // The key file is an input too: writing over it would destroy the key.
    for command in [
        vec!["sign", "file:k.pem", "--in", "msg", "--out", "k.pem"],
        vec!["pubkey", "file:k.pem", "--out", "k.pem"],
        vec!["csr", "file:k.pem", "--subject", "CN=a", "--out", "k.pem"],
        vec![
            "selfsign",
            "file:k.pem",
            "--subject",
            "CN=a",
            "--out",
            "k.pem",
        ],
    ] {
        hk.fails(&command, 2, &["same file as the input", "k.pem"]);
    }
    assert_eq!(std::fs::read(hk.path("k.pem")).unwrap(), key_before);
    assert_eq!(std::fs::read(hk.path("msg")).unwrap(), b"hello\n");
}

#[test]
fn regular_files_are_replaced_atomically_and_links_kept() {
    let hk = with_key();
    // An existing output is replaced whole, keeping its permissions.
    hk.file("sig.der", "old");
    std::fs::set_permissions(hk.path("sig.der"), std::fs::Permissions::from_mode(0o640)).unwrap();
    hk.ok(&["sign", "file:k.pem", "--in", "msg", "--out", "sig.der"]);
    openssl_verify(hk.dir.path(), "ecdsa", "k.pub", "msg", "sig.der");
    let mode = std::fs::metadata(hk.path("sig.der"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o640);
    // Through a symbolic link: the target is replaced, the link stays.
    std::fs::create_dir(hk.path("real")).unwrap();
    hk.file("real/sig.der", "old");
    std::os::unix::fs::symlink(hk.path("real/sig.der"), hk.path("sig-link")).unwrap();
    hk.ok(&["sign", "file:k.pem", "--in", "msg", "--out", "sig-link"]);
    assert!(
        std::fs::symlink_metadata(hk.path("sig-link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    openssl_verify(hk.dir.path(), "ecdsa", "k.pub", "msg", "real/sig.der");
    // A dangling link is refused rather than replaced.
    std::os::unix::fs::symlink(hk.path("nowhere/x"), hk.path("dangling")).unwrap();
    hk.fails(
        &["sign", "file:k.pem", "--in", "msg", "--out", "dangling"],
        2,
        &["symbolic link to a missing file"],
    );
    assert!(
        !hk.files().iter().any(|f| f.starts_with(".hardkey-")),
        "{:?}",
        hk.files()
    );
}

#[test]
fn an_interrupted_write_leaves_no_temporary_file() {
    for signal in ["INT", "TERM"] {
        let hk = with_key();
        // `--out` is opened (a temporary file next to it) before the input is read; the
        // input is a FIFO held open without data, so hardkey waits with the temporary file
        // in place, and is interrupted there.
        let input = hk.path("in.fifo");
        mkfifo(&input);
        let mut child = hk
            .command(&["sign", "file:k.pem", "--in", "in.fifo", "--out", "sig.der"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hardkey");
        // Hold the FIFO open without writing: hardkey waits in read().
        let writer = std::fs::OpenOptions::new()
            .write(true)
            .open(&input)
            .expect("open the FIFO");
        let start = Instant::now();
        while !hk.files().iter().any(|f| f.starts_with(".hardkey-")) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no temporary file appeared: {:?}",
                hk.files()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let start = Instant::now();
        let exit = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "hardkey did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        drop(writer);
        assert!(!exit.success(), "SIG{signal}: {exit}");
        assert!(
            !hk.files()
                .iter()
                .any(|f| f.starts_with(".hardkey-") || f == "sig.der"),
            "SIG{signal}: {:?}",
            hk.files()
        );
    }
}

#[test]
fn every_file_read_is_an_input() {
    let hk = with_key();
    // The configuration file.
    let config = hk.file("cfg.toml", "[aliases]\nk = \"file:k.pem\"\n");
    hk.fails(
        &[
            "--config", &config, "sign", "k", "--in", "msg", "--out", "cfg.toml",
        ],
        2,
        &["same file as the input"],
    );
    assert!(
        std::fs::read_to_string(hk.path("cfg.toml"))
            .unwrap()
            .contains("[aliases]")
    );
    // The file behind stdin.
    let out = hk
        .command(&["sign", "file:k.pem", "--in", "-", "--out", "msg"])
        .stdin(std::fs::File::open(hk.path("msg")).unwrap())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(hk.path("msg")).unwrap(), b"hello\n");
}

#[test]
fn dev_stdout_writes_through_the_open_descriptor() {
    let hk = with_key();
    std::fs::write(hk.path("log.txt"), "line1\nline2\n").unwrap();
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(hk.path("log.txt"))
        .unwrap();
    run_ok(
        hk.command(&["sign", "file:k.pem", "--in", "msg", "--out", "/dev/stdout"])
            .stdout(log),
    );
    let text = std::fs::read(hk.path("log.txt")).unwrap();
    assert!(text.starts_with(b"line1\nline2\n"), "the log was replaced");
    assert!(text.len() > 20, "the signature was appended");
    hk.fails(
        &["sign", "file:k.pem", "--in", "msg", "--out", "/dev/fd/7"],
        2,
        &["write to - (stdout)"],
    );
}

#[test]
fn a_file_name_cannot_forge_a_line() {
    let hk = with_key();
    // `fails` checks the error is exactly one line.
    hk.fails(
        &[
            "sign",
            "file:k.pem",
            "--in",
            "x\nVerified OK (forged)",
            "--out",
            "o",
        ],
        2,
        &["x\\x0aVerified OK"],
    );
    let name = "sig\nforged";
    let out = hk.ok(&["sign", "file:k.pem", "--in", "msg", "--out", name]);
    assert_eq!(out.lines().count(), 1, "{out}");
}
