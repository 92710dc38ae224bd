//! Durable file operations: what is written is on the disk before it counts.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::StoreError;

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename,
/// fsync of the directory. A crash leaves either the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(StoreError::io("create", &tmp))?;
    f.write_all(bytes).map_err(StoreError::io("write", &tmp))?;
    f.sync_all().map_err(StoreError::io("fsync", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(StoreError::io("rename into place", path))?;
    sync_dir(dir)
}

/// Fsyncs a directory so that renames and creations in it survive a power cut.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("fsync directory", dir))
}

/// Gives `to` the contents of `from`, which stays: a hard link where both are on one file
/// system, else a copy written atomically. Either way the bytes are on stable storage when it
/// returns (the ring writes without syncing; a recording's fragment must survive a power cut).
pub fn link_or_copy(from: &Path, to: &Path) -> Result<(), StoreError> {
    match fs::hard_link(from, to) {
        Ok(()) => fs::File::open(to)
            .and_then(|f| f.sync_all())
            .map_err(StoreError::io("sync", to)),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let bytes = fs::read(from).map_err(StoreError::io("read", from))?;
            write_atomic(to, &bytes, 0o600)
        }
        Err(e) => Err(StoreError::Io {
            op: "link",
            path: from.to_owned(),
            source: e,
        }),
    }
}

/// Creates a directory (and parents) readable only by the daemon's user.
pub fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(StoreError::io("create directory", dir))
}
