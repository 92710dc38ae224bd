//! Bounded reading: box iteration and big-endian fields, every length checked.
//!
//! There is no recursive descent anywhere in the crate: each caller spells out the path it
//! walks (`moov` → `trak` → `mdia` ...), so nesting depth is bounded by the code, not the data.

use crate::Mp4Error;
use crate::error::fourcc;

/// One box: its type, where it starts (relative to the data iterated) and its payload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawBox<'a> {
    /// The four-character type.
    pub kind: [u8; 4],
    /// Offset of the box header within the data iterated.
    pub start: usize,
    /// Offset of the payload within the data iterated.
    pub body_start: usize,
    /// The payload.
    pub body: &'a [u8],
}

impl RawBox<'_> {
    /// Offset just past the box, within the data iterated.
    pub fn end(&self) -> usize {
        self.body_start + self.body.len()
    }
}

/// Iterates over the boxes in `data`; after the first error it yields nothing more.
pub(crate) fn boxes<'a>(
    data: &'a [u8],
    path: &'static str,
) -> impl Iterator<Item = Result<RawBox<'a>, Mp4Error>> + 'a {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let left = data.len().checked_sub(pos).filter(|&l| l > 0)?;
        let fail = |e| Some(Err(e));
        if left < 8 {
            pos = data.len();
            return fail(Mp4Error::HeaderCut { path, offset: pos });
        }
        let start = pos;
        let size32 = u64::from(be_u32(&data[start..start + 4]));
        let mut kind = [0u8; 4];
        kind.copy_from_slice(&data[start + 4..start + 8]);
        let (size, header) = match size32 {
            // Size 0: the box runs to the end of its container.
            0 => (left as u64, 8usize),
            1 => {
                if left < 16 {
                    pos = data.len();
                    return fail(Mp4Error::HeaderCut {
                        path,
                        offset: start,
                    });
                }
                (be_u64(&data[start + 8..start + 16]), 16)
            }
            s => (s, 8),
        };
        // The size is outside data: it must fit what is left before it moves the cursor.
        let Some(len) = usize::try_from(size)
            .ok()
            .filter(|&s| s >= header && s <= left)
        else {
            pos = data.len();
            return fail(Mp4Error::BoxSize {
                path,
                kind: fourcc(&kind),
                offset: start,
                size,
            });
        };
        pos = start + len;
        Some(Ok(RawBox {
            kind,
            start,
            body_start: start + header,
            body: &data[start + header..start + len],
        }))
    })
}

/// The first box of type `kind` in `data`, if any; a malformed box before it is an error.
pub(crate) fn find<'a>(
    data: &'a [u8],
    kind: &[u8; 4],
    path: &'static str,
) -> Result<Option<RawBox<'a>>, Mp4Error> {
    for b in boxes(data, path) {
        let b = b?;
        if &b.kind == kind {
            return Ok(Some(b));
        }
    }
    Ok(None)
}

/// Like [`find`], but the box must be there; `missing` names it in the error.
pub(crate) fn require<'a>(
    data: &'a [u8],
    kind: &[u8; 4],
    path: &'static str,
    missing: &'static str,
) -> Result<RawBox<'a>, Mp4Error> {
    find(data, kind, path)?.ok_or(Mp4Error::Missing { path: missing })
}

pub(crate) fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

pub(crate) fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// A cursor over a box's payload whose reads fail, naming the box, instead of panicking.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8], path: &'static str) -> Self {
        Reader { data, pos: 0, path }
    }

    pub fn cut(&self) -> Mp4Error {
        Mp4Error::Field {
            path: self.path,
            problem: "box cut short",
        }
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Mp4Error> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| self.cut())?;
        let b = &self.data[self.pos..end];
        self.pos = end;
        Ok(b)
    }

    pub fn skip(&mut self, n: usize) -> Result<(), Mp4Error> {
        self.bytes(n).map(|_| ())
    }

    pub fn u8(&mut self) -> Result<u8, Mp4Error> {
        Ok(self.bytes(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, Mp4Error> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, Mp4Error> {
        Ok(be_u32(self.bytes(4)?))
    }

    pub fn u64(&mut self) -> Result<u64, Mp4Error> {
        Ok(be_u64(self.bytes(8)?))
    }

    /// A full box's version and flags.
    pub fn version_flags(&mut self) -> Result<(u8, u32), Mp4Error> {
        let v = self.u32()?;
        Ok(((v >> 24) as u8, v & 0x00ff_ffff))
    }

    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let r = &self.data[self.pos..];
        self.pos = self.data.len();
        r
    }
}
