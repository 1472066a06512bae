//! One module per group of commands.

pub(crate) mod attest;
pub(crate) mod bench;
pub(crate) mod ca;
pub(crate) mod cert;
pub(crate) mod certs;
pub(crate) mod crypt;
pub(crate) mod keys;
pub(crate) mod meta;
pub(crate) mod request;
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
    alg.default_signature_scheme()
}

/// Reads an input file, or stdin for `-`. Held zeroized: inputs may be secrets.
pub(crate) fn read_input(path: &Path, what: &str) -> CliResult<Zeroizing<Vec<u8>>> {
    let mut data = Zeroizing::new(Vec::new());
    crate::inputs::note(path);
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

/// Writes `data` to `--out PATH` without destroying what is there ([`OutputFile`]).
pub(crate) fn write_output(
    path: &Path,
    data: &[u8],
    what: &str,
    inputs: &[&Path],
) -> CliResult<()> {
    OutputFile::prepare(path, what, inputs)?.commit(data)
}

/// An output named by `--out PATH`, checked and opened before the command does its work (so
/// a bad path is reported before any device is touched), written when the result is there.
/// It never destroys what is at its path:
/// - `-` writes to stdout;
/// - a FIFO or a device (`/dev/null`, a terminal) is written in place, never replaced;
/// - a path that is the same file as one of the inputs (same device and inode: the file
///   itself, a hard link or a symbolic link to it) is refused, since writing would destroy
///   the input;
/// - a regular file (or one reached through a symbolic link, which is kept) is replaced
///   atomically: a temporary file in the same directory, written and synced, renamed over it,
///   with the old file's permissions. A failure never leaves a partial file, and the
///   temporary file is removed on error, on SIGINT and on SIGTERM.
pub(crate) struct OutputFile {
    what: String,
    shown: std::path::PathBuf,
    sink: Sink,
}

enum Sink {
    Stdout,
    Stderr,
    InPlace(std::fs::File),
    Replace {
        temp: tempfile::NamedTempFile,
        target: std::path::PathBuf,
        _guard: crate::signals::TempGuard,
    },
}

impl OutputFile {
    /// Checks `path` against `inputs` and opens it (a temporary file for regular files).
    pub(crate) fn prepare(path: &Path, what: &str, inputs: &[&Path]) -> CliResult<Self> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};

        let fail = |e| io(&format!("write {what} to"), path, e);
        let made = |sink| {
            Ok(Self {
                what: what.to_owned(),
                shown: path.to_path_buf(),
                sink,
            })
        };
        // The process's own standard streams by name: written through the open descriptor
        // (a path would reopen the file behind it, or rename over it, and `>> log` would
        // lose the log).
        match path.to_str() {
            Some("-" | "/dev/stdout" | "/dev/fd/1" | "/proc/self/fd/1") => {
                // Scripts that asked for one JSON document on stdout get exactly that.
                if crate::output::json_on_stdout() {
                    return Err(usage(format!(
                        "--json prints its report on stdout, so {what} cannot go there too: \
                         write it to a file with --out FILE, or drop --json"
                    )));
                }
                return made(Sink::Stdout);
            }
            Some("/dev/stderr" | "/dev/fd/2" | "/proc/self/fd/2") => return made(Sink::Stderr),
            Some(p) if p.starts_with("/dev/fd/") || p.starts_with("/proc/self/fd/") => {
                return Err(usage(format!(
                    "cannot write {what} to {p}: write to - (stdout) and redirect it instead"
                )));
            }
            _ => {}
        }
        let existing = match std::fs::metadata(path) {
            Ok(meta) => Some(meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::fs::symlink_metadata(path).is_ok() {
                    return Err(usage(format!(
                        "cannot write {what} to {}: it is a symbolic link to a missing file; \
                         remove the link or give the target's path",
                        path.display()
                    )));
                }
                None
            }
            Err(e) => return Err(fail(e)),
        };
        if let Some(meta) = &existing {
            if let Some(input) = crate::inputs::same_as(meta) {
                return Err(same_file(path, &input));
            }
            for input in inputs.iter().filter(|p| **p != Path::new("-")) {
                if let Ok(input_meta) = std::fs::metadata(input) {
                    if input_meta.dev() == meta.dev() && input_meta.ino() == meta.ino() {
                        return Err(same_file(path, input));
                    }
                }
            }
            let kind = meta.file_type();
            if kind.is_dir() || kind.is_socket() {
                return Err(usage(format!(
                    "cannot write {what} to {}: it is a {}",
                    path.display(),
                    if kind.is_dir() { "directory" } else { "socket" }
                )));
            }
            if kind.is_fifo() || kind.is_char_device() || kind.is_block_device() {
                // Written in place: replacing a FIFO or a device with a regular file would
                // destroy it.
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(fail)?;
                return made(Sink::InPlace(file));
            }
        }
        // A symbolic link stays a link: the file it points to is replaced.
        let target = match &existing {
            Some(_) => std::fs::canonicalize(path).map_err(fail)?,
            None => path.to_path_buf(),
        };
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(usage(format!(
                "cannot write {what} to {}: directory {} does not exist",
                path.display(),
                dir.display()
            )));
        }
        let temp = tempfile::Builder::new()
            .prefix(".hardkey-")
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(|e| io(&format!("write {what} to"), &dir, e))?;
        let guard = crate::signals::TempGuard::register(temp.path())?;
        if let Some(meta) = &existing {
            // Keep the replaced file's permissions and owner (a fresh temporary file is 0600
            // and ours; only root may give it to another user). Other hard links to the old
            // file keep the old content: an atomic replace cannot update them.
            let _ = temp.as_file().set_permissions(meta.permissions());
            let _ = std::os::unix::fs::fchown(temp.as_file(), Some(meta.uid()), Some(meta.gid()));
        }
        made(Sink::Replace {
            temp,
            target,
            _guard: guard,
        })
    }

    /// Writes `data` and puts it in place.
    pub(crate) fn commit(self, data: &[u8]) -> CliResult<()> {
        let what = &self.what;
        let fail = |e| io(&format!("write {what} to"), &self.shown, e);
        match self.sink {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(data)
                    .and_then(|()| out.flush())
                    .map_err(|e| failed(format!("cannot write {what} to stdout: {e}")))
            }
            Sink::Stderr => {
                let mut out = std::io::stderr().lock();
                out.write_all(data)
                    .and_then(|()| out.flush())
                    .map_err(|e| failed(format!("cannot write {what} to stderr: {e}")))
            }
            Sink::InPlace(mut file) => file
                .write_all(data)
                .and_then(|()| file.flush())
                .map_err(fail),
            Sink::Replace {
                mut temp,
                target,
                _guard,
            } => {
                // Files read since `prepare` (secret files, stdin) are checked again.
                if let Ok(meta) = std::fs::metadata(&target) {
                    if let Some(input) = crate::inputs::same_as(&meta) {
                        return Err(same_file(&self.shown, &input));
                    }
                }
                temp.write_all(data)
                    .and_then(|()| temp.as_file().sync_all())
                    .map_err(fail)?;
                temp.persist(&target).map_err(|e| fail(e.error))?;
                Ok(())
            }
        }
    }
}

fn same_file(out: &Path, input: &Path) -> crate::error::CliError {
    usage(format!(
        "--out {} is the same file as the input {}: writing it would destroy the input; \
         choose another --out",
        out.display(),
        input.display()
    ))
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
