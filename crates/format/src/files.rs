//! Reading files of a recording directory that someone else may have written: only regular
//! files, never through a link, never waiting on a FIFO, never more than announced.

use std::fs;
use std::io::{self, Read};
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
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes, more than the {max} expected"),
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).map_err(io::Error::other)?);
    // One byte more than announced tells a file that grew since fstat.
    f.take(len.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 != len {
        return Err(changed());
    }
    Ok(bytes)
}

pub(crate) fn changed() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "changed size while being read")
}
