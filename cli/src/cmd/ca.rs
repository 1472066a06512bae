//! ca sign: certificates issued from PKCS#10 requests with a device key (hardkey-x509's
//! `issue`), and the never-overwriting outputs that decrypt and encrypt share.

use std::path::{Path, PathBuf};

use futures::executor::block_on;
use hardkey_api::Operation;
use hardkey_x509::x509_cert::serial_number::SerialNumber;
use hardkey_x509::{
    self as x509, CaCertificate, CertRequest, IssueError, IssueOptions, Profile, SubjectAltNames,
};
use serde_json::json;

use super::{Ctx, OutputFile, read_input};
use crate::args::{CaCommand, CaSignArgs, ProfileArg};
use crate::error::{CliError, CliResult, usage};
use crate::target::{OpenOptions, Store, Target};

/// `hardkey ca ...`.
pub(crate) fn run(c: &CaCommand, ctx: &Ctx) -> CliResult {
    match c {
        CaCommand::Sign(a) => sign(a, ctx),
    }
}

/// An issuing failure: the request, the CA certificate or the options are the user's to
/// fix (exit 2); a failure of the CA key is reported as the key's own error.
fn issue_error(e: IssueError) -> CliError {
    match e {
        IssueError::Signing(e) => CliError::from(e),
        e if e.is_input() => CliError::usage(e),
        e => CliError::failed(e),
    }
}

/// `--serial`: hex, with optional `0x` and colons; positive and non-zero by construction
/// (an unsigned integer), at most 20 bytes encoded.
fn parse_serial(text: &str) -> CliResult<SerialNumber> {
    let bad = |why: &str| {
        usage(format!(
            "--serial {text}: {why}; give a hex number such as 01:a2:ff or 0x1a2f, at most 20 \
             bytes (159 bits)"
        ))
    };
    let digits: String = text
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let digits = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    let bytes = hex::decode(&digits).map_err(|_| bad("not hex"))?;
    let significant: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    if significant.is_empty() {
        return Err(bad("the serial number must not be zero"));
    }
    SerialNumber::new(&significant).map_err(|_| bad("too long"))
}

/// The output path, checked before the device is touched: `None` for stdout (`-` or no
/// option; with `binary`, refused under `--json`, whose report alone goes there). A path
/// where anything exists (a file, a link, a FIFO) is refused: these outputs never replace
/// what is there.
pub(crate) fn new_output(
    out: Option<&Path>,
    what: &str,
    binary: bool,
) -> CliResult<Option<PathBuf>> {
    let Some(path) = out.filter(|p| *p != Path::new("-")) else {
        if binary {
            OutputFile::prepare(Path::new("-"), what, &[])?;
        }
        return Ok(None);
    };
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(usage(format!(
            "{} already exists: hardkey never overwrites {what}; remove it or choose another \
             --out",
            crate::output::shown(path)
        )));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(usage(format!(
            "cannot write {what} to {}: directory {} does not exist",
            crate::output::shown(path),
            crate::output::shown(dir)
        )));
    }
    Ok(Some(path.to_path_buf()))
}

/// Writes a new file at `path` (which must still not exist) with `mode`: made whole in an
/// unnamed file, then linked in place, so no partial file is ever seen or left.
pub(crate) fn write_new(path: &Path, data: &[u8], what: &str, mode: u32) -> CliResult<()> {
    use std::os::unix::fs::PermissionsExt;
    hardkey_api::fs::write_new_file(path, data, what, Operation::Admin)?;
    if mode != 0o600 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| crate::error::io("set the permissions of", path, e))?;
    }
    Ok(())
}

/// `hardkey ca sign`.
fn sign(a: &CaSignArgs, ctx: &Ctx) -> CliResult {
    // Everything that can be checked without the device, first.
    let sans = if a.san.is_empty() {
        None
    } else {
        Some(SubjectAltNames::parse(&a.san).map_err(|e| usage(format!("--san: {e}")))?)
    };
    let profile = match (a.profile, a.path_len) {
        (ProfileArg::Leaf, Some(_)) => {
            return Err(usage(
                "--path-len constrains CA certificates: give --profile ca, or drop --path-len",
            ));
        }
        (ProfileArg::Leaf, None) => Profile::Leaf,
        (ProfileArg::Ca, path_len) => Profile::Ca {
            path_len: Some(path_len.unwrap_or(0)),
        },
    };
    let serial = a.serial.as_deref().map(parse_serial).transpose()?;
    let target = Target::parse(&a.ca_key, &ctx.config)?;
    let uri = target.key_uri()?;
    let out = new_output(a.out.as_deref(), "a certificate", false)?;
    let ca_cert = read_input(&a.ca_cert, "the CA certificate")?;
    let ca = CaCertificate::parse(&ca_cert).map_err(|e| {
        usage(format!(
            "--ca-cert {}: {e}",
            crate::output::shown(&a.ca_cert)
        ))
    })?;
    let csr = read_input(&a.csr, "the certificate signing request")?;
    let request = CertRequest::parse(&csr)
        .map_err(|e| usage(format!("--csr {}: {e}", crate::output::shown(&a.csr))))?;
    let options = IssueOptions::new()
        .days(a.days)
        .profile(profile)
        .sans(sans)
        .serial(serial)
        .scheme(a.scheme)
        .require_ca(!a.allow_non_ca_issuer);

    let store = Store::open(&target, &ctx.config, &a.secrets, OpenOptions::default())?;
    let key = store.key(&uri)?;
    let cert = block_on(x509::issue(&key, &ca, &request, &options)).map_err(issue_error)?;
    drop(store);

    let pem = cert.to_pem();
    let tbs = &cert.as_x509().tbs_certificate;
    let issued_sans = options
        .sans
        .clone()
        .or_else(|| request.requested_sans().cloned())
        .unwrap_or_default();
    let serial_hex = hex::encode(tbs.serial_number.as_bytes());
    let report = json!({
        "out": out,
        "subject": tbs.subject.to_string(),
        "issuer": tbs.issuer.to_string(),
        "serial": serial_hex,
        "not_before": tbs.validity.not_before.to_string(),
        "not_after": tbs.validity.not_after.to_string(),
        "sans": issued_sans.to_string(),
        "profile": match profile { Profile::Leaf => "leaf", _ => "ca" },
        "scheme": cert.scheme().name(),
        "request_signature": request.signature_algorithm(),
    });
    if issued_sans.is_empty() && profile == Profile::Leaf {
        crate::output::note(
            "hardkey: note: the certificate has no subjectAltName: TLS clients match server \
             names only against it (give --san dns:NAME)",
        );
    }
    match out {
        Some(path) => {
            write_new(&path, pem.as_bytes(), "certificate", 0o644)?;
            ctx.out.emit(report, || {
                format!(
                    "issued {} for '{}' (serial {serial_hex}, until {}) signed by '{}' with \
                     {}, written to {}",
                    if profile == Profile::Leaf {
                        "a leaf certificate"
                    } else {
                        "a CA certificate"
                    },
                    tbs.subject,
                    tbs.validity.not_after,
                    tbs.issuer,
                    cert.scheme(),
                    crate::output::shown(&path)
                )
            });
        }
        None if ctx.out.json => {
            let mut report = report;
            report["pem"] = json!(pem);
            ctx.out.emit(report, String::new);
        }
        None => crate::output::write_stdout(&pem),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_hex_positive_and_short() {
        let s = parse_serial("01:a2:ff").unwrap();
        assert_eq!(s.as_bytes(), [0x01, 0xa2, 0xff]);
        assert_eq!(parse_serial("0x1a2f").unwrap().as_bytes(), [0x1a, 0x2f]);
        assert_eq!(parse_serial("fff").unwrap().as_bytes(), [0x0f, 0xff]);
        for bad in ["0", "00:00", "xyz", "", &"ff".repeat(20)] {
            let e = parse_serial(bad).unwrap_err();
            assert!(
                e.is_usage() && e.to_string().contains("--serial"),
                "{bad}: {e}"
            );
        }
        assert!(parse_serial(&"7f".repeat(20)).is_ok());
    }
}
