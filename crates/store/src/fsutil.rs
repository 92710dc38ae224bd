//! Durable file operations: what is written is on the disk before it counts.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::StoreError;

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename,
/// fsync of the directory. A crash leaves either the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    write_atomic_recorded(path, bytes, mode, None)
}

/// [`write_atomic`], with `sha256` (that of `bytes`) recorded with the file
/// ([`neoflix_format::files::record_digest`]).
fn write_atomic_recorded(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    sha256: Option<&[u8; 32]>,
) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    // A temporary file left by a crash goes first: written again in place, it would keep a
    // digest recorded for other bytes.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(StoreError::io("remove", &tmp)(e));
        }
        _ => {}
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(StoreError::io("create", &tmp))?;
    f.write_all(bytes).map_err(StoreError::io("write", &tmp))?;
    if let Some(sha) = sha256 {
        neoflix_format::files::record_digest(&f, sha, bytes.len() as u64);
    }
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
            // The copy carries the digest recorded with the ring's file (a ring on tmpfs, the
            // recordings on disk, is the usual layout), so the upload need not hash it. (tmpfs
            // keeps user attributes from Linux 6.6; before, there is none to carry.)
            let (bytes, sha) = neoflix_format::files::read_regular_recorded(from, u64::MAX)
                .map_err(StoreError::io("read", from))?;
            write_atomic_recorded(to, &bytes, 0o600, sha.as_ref())
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

#[cfg(test)]
mod tests {
    use super::*;
    use neoflix_format::files::{read_regular_recorded, write_with_digest};

    #[test]
    fn a_fragment_linked_or_copied_into_a_recording_keeps_its_recorded_digest() {
        // The ring on tmpfs and the recording on disk, as a box has them, where this machine
        // has both; else one filesystem, and a link.
        let ring = tempfile::Builder::new()
            .tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        let rec = tempfile::tempdir().unwrap();
        let from = ring.path().join("frag-0000000001.nfx");
        let sha = write_with_digest(&from, b"sealed fragment", 0o600).unwrap();
        let to = rec.path().join("frag-000000.nfx");
        // A copy cut short by a crash, with a record of its own, is not written again in place.
        let leftover = rec.path().join(".frag-000000.nfx.tmp");
        write_with_digest(&leftover, b"other fragment!", 0o600).unwrap();
        link_or_copy(&from, &to).unwrap();
        let (bytes, recorded) = read_regular_recorded(&to, 1 << 20).unwrap();
        assert_eq!(bytes, b"sealed fragment");
        // Where both filesystems keep user attributes, the recording's file has the record.
        let keeps = |dir: &Path| {
            let probe = dir.join("probe");
            write_with_digest(&probe, b"probe", 0o600).unwrap();
            let kept = read_regular_recorded(&probe, 16).unwrap().1.is_some();
            fs::remove_file(&probe).unwrap();
            kept
        };
        match keeps(ring.path()) && keeps(rec.path()) {
            true => assert_eq!(recorded, Some(sha)),
            false => assert_eq!(recorded, None),
        }
        use std::os::unix::fs::MetadataExt;
        let linked = fs::metadata(&from).unwrap().ino() == fs::metadata(&to).unwrap().ino();
        assert!(linked || !leftover.exists());
    }
}
