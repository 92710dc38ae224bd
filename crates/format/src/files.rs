//! Reading files of a recording directory that someone else may have written: only regular
//! files, never through a link, never waiting on a FIFO, never more than announced. And the
//! SHA-256 a file's writer recorded with it, so that its readers need not hash it again.

use std::fs;
use std::io::{self, Read, Write as _};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Opens `path` for reading only if it is a regular file in its own right: a symbolic link is
/// refused (`O_NOFOLLOW`: a recording is its directory, and a link could lead to `/dev/zero`),
/// and a FIFO or device is refused without waiting on it (`O_NONBLOCK`), judged by `fstat` of
/// the descriptor opened, so nothing can be swapped in between. Returns the file and its size.
pub fn open_regular(path: &Path) -> io::Result<(fs::File, u64)> {
    let not_regular = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what}, not a regular file (only regular files are read)"),
        )
    };
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                not_regular("a symbolic link")
            } else {
                e
            }
        })?;
    let meta = f.metadata()?;
    let t = meta.file_type();
    if !t.is_file() {
        return Err(not_regular(if t.is_fifo() {
            "a FIFO"
        } else if t.is_dir() {
            "a directory"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else if t.is_socket() {
            "a socket"
        } else {
            "something else"
        }));
    }
    Ok((f, meta.len()))
}

/// Reads a whole regular file ([`open_regular`]) of at most `max` bytes. The size is checked
/// before anything is allocated, and the buffer is never larger than the file said it was.
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let (f, len) = open_regular(path)?;
    read_whole(&f, len, max)
}

/// Reads `f`, opened by [`open_regular`] with size `len`, whole: refused beyond `max` before
/// anything is allocated, and an error if it is not `len` bytes now.
pub fn read_whole(mut f: &fs::File, len: u64, max: u64) -> io::Result<Vec<u8>> {
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes, more than the {max} expected"),
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).map_err(io::Error::other)?);
    // One byte more than announced tells a file that grew since fstat.
    (&mut f)
        .take(len.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 != len {
        return Err(changed());
    }
    Ok(bytes)
}

/// The error of a file that is not the size it was when it was opened.
pub fn changed() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "changed size while being read")
}

/// The extended attribute holding the SHA-256 of a file's bytes as written by its writer, as
/// `size:hex`: whoever sends or checks the file later need not read and hash it again (a
/// Raspberry Pi 4 has no SHA instructions; a 90-minute recording is gigabytes).
const DIGEST_XATTR: &[u8] = b"user.neoflix.sha256\0";

/// Records `sha256` and `size` of what was just written to `file`; best effort (a filesystem
/// without user extended attributes leaves readers to hash). Only for a file this process
/// created and wrote whole: an attribute left on a file rewritten in place would lie.
pub fn record_digest(file: &fs::File, sha256: &[u8; 32], size: u64) {
    let _ = set_record(file, format!("{size}:{}", hex::encode(sha256)).as_bytes());
}

/// Sets the digest attribute of `file` to `value`, as it is.
fn set_record(file: &fs::File, value: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid fd, a NUL-terminated name and a buffer of the given length.
    let r = unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            DIGEST_XATTR.as_ptr().cast(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    match r {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// The SHA-256 recorded by [`record_digest`] on `file`, if there is one and the size it was
/// recorded for is `size` (a file cut short or grown since is hashed by its reader).
pub fn recorded_digest(file: &fs::File, size: u64) -> Option<[u8; 32]> {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 96];
    // SAFETY: a valid fd, a NUL-terminated name and a buffer of the given length.
    let n = unsafe {
        libc::fgetxattr(
            file.as_raw_fd(),
            DIGEST_XATTR.as_ptr().cast(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let text = std::str::from_utf8(buf.get(..usize::try_from(n).ok()?)?).ok()?;
    let (recorded_size, hex_sha) = text.split_once(':')?;
    if recorded_size.parse::<u64>().ok()? != size {
        return None;
    }
    let mut sha = [0u8; 32];
    hex::decode_to_slice(hex_sha, &mut sha).ok()?;
    Some(sha)
}

/// Creates `path` afresh (whatever was there is removed first, so no attribute of an older
/// file survives), writes `bytes`, and records their SHA-256, which it returns. Not synced:
/// the caller syncs what must survive a power cut.
pub fn write_with_digest(path: &Path, bytes: &[u8], mode: u32) -> io::Result<[u8; 32]> {
    use sha2::Digest;
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    let sha = sha2::Sha256::digest(bytes).into();
    record_digest(&f, &sha, bytes.len() as u64);
    Ok(sha)
}

/// [`read_regular`], and the SHA-256 recorded by the file's writer, if it is there for this
/// size.
pub fn read_regular_recorded(path: &Path, max: u64) -> io::Result<(Vec<u8>, Option<[u8; 32]>)> {
    let (f, len) = open_regular(path)?;
    let bytes = read_whole(&f, len, max)?;
    Ok((bytes, recorded_digest(&f, len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    /// What a reader sends: the bytes, and their recorded digest where there is one for their
    /// size, else their hash.
    fn read_regular_with_digest(path: &Path, max: u64) -> io::Result<(Vec<u8>, [u8; 32])> {
        let (bytes, recorded) = read_regular_recorded(path, max)?;
        let sha = recorded.unwrap_or_else(|| sha2::Sha256::digest(&bytes).into());
        Ok((bytes, sha))
    }

    #[test]
    fn a_recorded_digest_is_used_only_for_the_size_it_was_recorded_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("frag-000000.nfx");
        write_with_digest(&path, b"sealed bytes", 0o600).unwrap();
        let (f, len) = open_regular(&path).unwrap();
        let Some(sha) = recorded_digest(&f, len) else {
            // This filesystem keeps no user attributes: readers hash, as below.
            let (bytes, sha) = read_regular_with_digest(&path, 100).unwrap();
            assert_eq!(sha, <[u8; 32]>::from(sha2::Sha256::digest(&bytes)));
            return;
        };
        assert_eq!(sha, <[u8; 32]>::from(sha2::Sha256::digest(b"sealed bytes")));
        assert_eq!(recorded_digest(&f, len + 1), None);

        // Grown since: the reader hashes what is there, never trusting the old record.
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"!")
            .unwrap();
        let (bytes, sha) = read_regular_with_digest(&path, 100).unwrap();
        assert_eq!(bytes, b"sealed bytes!");
        assert_eq!(
            sha,
            <[u8; 32]>::from(sha2::Sha256::digest(b"sealed bytes!"))
        );

        // Written again through this module: the old record does not survive.
        write_with_digest(&path, b"other bytes!!", 0o600).unwrap();
        let (_, sha) = read_regular_with_digest(&path, 100).unwrap();
        assert_eq!(
            sha,
            <[u8; 32]>::from(sha2::Sha256::digest(b"other bytes!!"))
        );

        // A record that is not `size:hex` is ignored.
        let f = fs::File::open(&path).unwrap();
        set_record(&f, b"13:not-hex").unwrap();
        assert_eq!(recorded_digest(&f, 13), None);
    }
}
