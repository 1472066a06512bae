//! One module per group of commands.

pub(crate) mod bench;
pub(crate) mod cert;
pub(crate) mod keys;
pub(crate) mod meta;
pub(crate) mod seal;
pub(crate) mod serve;
pub(crate) mod sign;
pub(crate) mod token;
pub(crate) mod tpm;

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::Path;

use hardkey_api::{KeyAlgorithm, SignatureScheme};
use zeroize::Zeroizing;

use crate::config::Config;
use crate::error::{CliResult, failed, io, usage};
use crate::output::Output;
use crate::secrets;

/// What every command gets.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// The configuration file's contents.
    pub(crate) config: Config,
    /// Where results go.
    pub(crate) out: Output,
}

/// The scheme to sign with when none is given: the curve's ECDSA, or RSA PKCS#1 v1.5 with
/// SHA-256 (what `openssl dgst -sha256 -sign` makes).
pub(crate) fn default_scheme(alg: KeyAlgorithm) -> SignatureScheme {
    match alg {
        KeyAlgorithm::EcP256 => SignatureScheme::EcdsaP256Sha256,
        KeyAlgorithm::EcP384 => SignatureScheme::EcdsaP384Sha384,
        _ => SignatureScheme::RsaPkcs1Sha256,
    }
}

/// Reads an input file, or stdin for `-`. Held zeroized: inputs may be secrets.
pub(crate) fn read_input(path: &Path, what: &str) -> CliResult<Zeroizing<Vec<u8>>> {
    let mut data = Zeroizing::new(Vec::new());
    if path == Path::new("-") {
        secrets::claim_stdin(what)?;
        std::io::stdin()
            .lock()
            .read_to_end(&mut data)
            .map_err(|e| failed(format!("cannot read {what} from stdin: {e}")))?;
    } else {
        *data = std::fs::read(path).map_err(|e| io(&format!("read {what} from"), path, e))?;
    }
    Ok(data)
}

/// Writes `data` to `path` atomically (a temporary file in the same directory, renamed over
/// the target), so a failure never leaves a partial file; `-` writes to stdout.
pub(crate) fn write_output(path: &Path, data: &[u8], what: &str) -> CliResult<()> {
    if path == Path::new("-") {
        let mut out = std::io::stdout().lock();
        return out
            .write_all(data)
            .and_then(|()| out.flush())
            .map_err(|e| failed(format!("cannot write {what} to stdout: {e}")));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(usage(format!(
            "cannot write {what} to {}: directory {} does not exist",
            path.display(),
            dir.display()
        )));
    }
    if path.is_dir() {
        return Err(usage(format!(
            "cannot write {what} to {}: it is a directory",
            path.display()
        )));
    }
    let mut file = tempfile::Builder::new()
        .prefix(".hardkey-")
        .tempfile_in(dir)
        .map_err(|e| io(&format!("write {what} to"), dir, e))?;
    file.write_all(data)
        .and_then(|()| file.as_file().sync_all())
        .map_err(|e| io(&format!("write {what} to"), path, e))?;
    file.persist(path)
        .map_err(|e| io(&format!("write {what} to"), path, e.error))?;
    Ok(())
}

/// Asks `question` on the terminal unless `yes`; without a terminal, a usage error telling
/// to pass `--yes`.
pub(crate) fn confirm(question: &str, yes: bool) -> CliResult<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(usage(format!(
            "{question} Refusing without confirmation: pass --yes"
        )));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| failed(format!("cannot read the answer: {e}")))?;
    match answer.trim() {
        "y" | "Y" | "yes" | "YES" => Ok(()),
        _ => Err(failed("cancelled")),
    }
}

/// A spinner on stderr while `work` runs, when stderr is a terminal.
pub(crate) fn with_spinner<T>(out: Output, message: String, work: impl FnOnce() -> T) -> T {
    if !out.interactive() {
        return work();
    }
    let bar = indicatif::ProgressBar::new_spinner().with_message(message);
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    let result = work();
    bar.finish_and_clear();
    result
}
