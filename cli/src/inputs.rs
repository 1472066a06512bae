//! Every file this run reads (data, secret files, the configuration, the file behind stdin),
//! so that an output is never written over one of them: `sign --out pin --pin-file pin` would
//! otherwise replace the PIN file with a signature.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// A file read: how it was named, and its device and inode.
struct Read {
    shown: PathBuf,
    dev: u64,
    ino: u64,
}

fn read() -> MutexGuard<'static, Vec<Read>> {
    static READ: Mutex<Vec<Read>> = Mutex::new(Vec::new());
    READ.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records `path` (nothing when it does not exist, or is `-`).
pub(crate) fn note(path: &Path) {
    if path == Path::new("-") {
        return note_stdin();
    }
    if let Ok(meta) = std::fs::metadata(path) {
        read().push(Read {
            shown: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        });
    }
}

/// Records the file stdin reads from, when it is one (`hardkey sign --in - < msg`).
pub(crate) fn note_stdin() {
    use std::os::fd::AsFd;
    let Ok(fd) = std::io::stdin().as_fd().try_clone_to_owned() else {
        return;
    };
    if let Ok(meta) = std::fs::File::from(fd).metadata() {
        if meta.is_file() {
            read().push(Read {
                shown: PathBuf::from("(stdin)"),
                dev: meta.dev(),
                ino: meta.ino(),
            });
        }
    }
}

/// The name of a file read that is the same file as `meta` describes.
pub(crate) fn same_as(meta: &std::fs::Metadata) -> Option<PathBuf> {
    read()
        .iter()
        .find(|r| r.dev == meta.dev() && r.ino == meta.ino())
        .map(|r| r.shown.clone())
}
