//! Private files (keys, sealed data, PINs): read into zeroized memory, written atomically with
//! mode 0600 and never over an existing file. And the process's file-descriptor headroom,
//! which device libraries that open files per operation depend on.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, InvalidInput, Operation, Result};
use zeroize::Zeroizing;

/// Makes temporary file names unique within the process (concurrent writes of one path).
static TEMP_FILES: AtomicU64 = AtomicU64::new(0);

/// Reads a PEM key file (text). A missing file is `NotFound`; other I/O errors name the path.
pub fn read_key_file(path: &Path, device: &str) -> Result<Zeroizing<String>> {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes).map(Zeroizing::new).map_err(|e| {
            // Zeroize the bytes that were not UTF-8 too.
            drop(Zeroizing::new(e.into_bytes()));
            Error::from(InvalidInput::Malformed {
                what: "private key file",
                reason: "it is not a PEM text file",
            })
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::not_found(
            format!("file:{}", path.display()),
            "check the path of the key file",
        )),
        Err(e) => Err(Error::backend(
            device,
            Operation::Open,
            PathError::new("cannot read", path, e),
        )),
    }
}

/// Writes `contents` to `path`, which must not exist. The file is made unnamed (`O_TMPFILE`,
/// mode 0600) in the target's directory, written and synced, then linked at `path` (which
/// fails, leaving nothing behind, if `path` appeared meanwhile): no reader ever sees a partial
/// key, and a process killed at any point (even by SIGKILL) leaves no file behind. Where
/// `O_TMPFILE` is not available, a named temporary file is written, hard-linked and removed.
pub fn write_new_file(path: &Path, contents: &[u8], device: &str, op: Operation) -> Result<()> {
    let fail = |what, e| Error::backend(device, op, PathError::new(what, path, e));
    if path.exists() {
        return Err(fail(
            "refusing to overwrite",
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                "file exists; choose another path or delete it first",
            ),
        ));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match write_unnamed(&dir, path, contents) {
        Ok(true) => {
            if let Ok(d) = fs::File::open(&dir) {
                let _ = d.sync_all();
            }
            return Ok(());
        }
        Ok(false) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(fail("refusing to overwrite", e));
        }
        Err(e) => return Err(fail("cannot write", e)),
    }
    let n = TEMP_FILES.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}-{n}.tmp", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    // Only a temporary file this call created is ever removed.
    let mut file = options.open(&tmp).map_err(|e| fail("cannot write", e))?;
    let linked = file
        .write_all(contents)
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::hard_link(&tmp, path));
    drop(file);
    let _ = fs::remove_file(&tmp);
    linked.map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => fail("refusing to overwrite", e),
        _ => fail("cannot write", e),
    })?;
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The `O_TMPFILE` path of [`write_new_file`]: `Ok(false)` when the file system or kernel
/// cannot make unnamed files (the caller then falls back to a named temporary file).
fn write_unnamed(dir: &Path, path: &Path, contents: &[u8]) -> io::Result<bool> {
    use nix::errno::Errno;
    use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, open};
    use nix::sys::stat::Mode;
    use nix::unistd::linkat;
    use std::os::fd::AsRawFd;

    let flags = OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
    let fd = match open(dir, flags, Mode::S_IRUSR | Mode::S_IWUSR) {
        Ok(fd) => fd,
        Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let mut file = fs::File::from(fd);
    file.write_all(contents)?;
    file.sync_all()?;
    // Linking an unnamed file by its /proc path needs no privilege (AT_EMPTY_PATH would).
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    match linkat(
        AT_FDCWD,
        proc_path.as_str(),
        AT_FDCWD,
        path,
        AtFlags::AT_SYMLINK_FOLLOW,
    ) {
        Ok(()) => Ok(true),
        // No /proc: fall back.
        Err(Errno::ENOENT) if !Path::new("/proc/self/fd").exists() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// An I/O error with the path it concerns: the cause kept in [`Error::Backend`].
#[derive(Debug)]
pub struct PathError {
    what: &'static str,
    path: PathBuf,
    source: io::Error,
}

impl PathError {
    /// `what` failed on `path` (`"cannot read"`, `"cannot remove"`...) with `source`; it prints
    /// as `what path: source`.
    pub fn new(what: &'static str, path: &Path, source: io::Error) -> Self {
        Self {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.what, self.path.display(), self.source)
    }
}

impl std::error::Error for PathError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// File descriptors this process may still open before `RLIMIT_NOFILE` (`None`: unknown).
/// 0 when even listing its descriptors fails for want of one.
pub fn descriptors_left() -> Option<u64> {
    let (soft, _) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok()?;
    match std::fs::read_dir("/proc/self/fd") {
        // The listing's own descriptor is counted: it is closed again once counted.
        Ok(dir) => Some(soft.saturating_sub(dir.count() as u64)),
        Err(e) if e.raw_os_error() == Some(nix::libc::EMFILE) => Some(0),
        Err(_) => None,
    }
}

/// Whether this process is (nearly) out of file descriptors: fewer than 16 left. A device
/// library that opens files or sockets per operation (SoftHSM reads its token directory on
/// every lookup) then fails in ways that look like something else.
pub fn descriptors_short() -> bool {
    descriptors_left().is_some_and(|left| left < 16)
}

/// The error for an operation that failed because the process is out of descriptors.
pub fn descriptors_exhausted(device: &str, cause: impl Into<crate::error::BoxError>) -> Error {
    Error::Exhausted {
        device: device.to_owned(),
        resource: "file descriptors",
        remedy: format!(
            "this process has {} of its RLIMIT_NOFILE descriptors left, so the device cannot \
             open its files or sockets; close connections (a server: lower its connection \
             cap) or raise the limit (ulimit -n), then retry",
            descriptors_left().map_or_else(|| "almost none".to_owned(), |n| n.to_string())
        ),
        source: cause.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_0600_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        write_new_file(&path, b"one", "test", Operation::Generate).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let err = write_new_file(&path, b"two", "test", Operation::Generate)
            .unwrap_err()
            .to_string();
        assert!(err.contains("refusing to overwrite"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"one");
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn unwritable_directory_leaves_nothing() {
        let err = write_new_file(
            Path::new("/nonexistent-dir/k.pem"),
            b"x",
            "test",
            Operation::Import,
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir/k.pem"), "{err}");
    }

    #[test]
    fn concurrent_writers_of_one_path_leave_exactly_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("race.pem");
        let results: Vec<_> = std::thread::scope(|s| {
            let writers: Vec<_> = (0..8u8)
                .map(|i| {
                    let path = &path;
                    s.spawn(move || write_new_file(path, &[i; 64], "test", Operation::Generate))
                })
                .collect();
            writers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        let winner = results.iter().position(Result::is_ok).unwrap() as u8;
        assert_eq!(fs::read(&path).unwrap(), vec![winner; 64]);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temporary files left"
        );
    }

    #[test]
    fn missing_file_is_not_found() {
        let err = read_key_file(Path::new("/nonexistent/key.pem"), "test").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::NotFound);
    }
}
