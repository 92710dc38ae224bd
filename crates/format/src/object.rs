//! The sealed object's layout: a fixed 56-byte header followed by AES-256-GCM STREAM chunks.
//!
//! Only the layout lives here (what a header says, how long an object must be); sealing is in
//! `neoflix-seal`, opening in `neoflix-open`. Anyone can read a header: it is authenticated only
//! when the object opens.

use crate::FormatError;

/// Magic bytes at the start of every sealed object.
pub const MAGIC: &[u8; 4] = b"NFXS";
/// The one format version this crate writes and reads.
pub const VERSION: u8 = 1;
/// Length of the header, which is also the associated data of every chunk.
pub const HEADER_LEN: usize = 56;
/// Plaintext bytes per STREAM chunk; each chunk adds a 16-byte tag.
pub const CHUNK_SIZE: u32 = 64 * 1024;
/// The most plaintext one object may hold: 1 GiB, far above a 10-second fragment at any bitrate
/// a room box encodes. A header announcing more is refused before anything is sized from it.
pub const MAX_PLAINTEXT_LEN: u64 = 1 << 30;
/// Length of the AES-GCM tag each chunk carries.
pub const TAG_LEN: u64 = 16;
/// Length of the random STREAM nonce prefix stored in the header.
pub const NONCE_PREFIX_LEN: usize = 7;

/// What a sealed object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// An fMP4 init segment (`ftyp` + `moov`).
    Init,
    /// An fMP4 media fragment (`moof` + `mdat`).
    Fragment,
}

impl Kind {
    /// The byte that stands for this kind in a header.
    pub fn byte(self) -> u8 {
        match self {
            Kind::Init => 1,
            Kind::Fragment => 2,
        }
    }
}

/// The identity of a sealed object, bound into every chunk and into its wrapped key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectId {
    /// Random id of the capture stream (one per pipeline run) the object came from.
    pub stream: [u8; 16],
    /// Position of the object within its stream.
    pub seq: u64,
    /// Init segment or fragment.
    pub kind: Kind,
}

/// A parsed sealed-object header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Which object this is.
    pub id: ObjectId,
    /// Plaintext length in bytes.
    pub plaintext_len: u64,
    /// The raw header bytes, used as associated data.
    pub raw: [u8; HEADER_LEN],
}

impl Header {
    /// Total sealed length implied by the header; an error when the announced plaintext length
    /// is beyond [`MAX_PLAINTEXT_LEN`] (the header's fields are outside data: the sum must not wrap).
    pub fn sealed_len(&self) -> Result<u64, FormatError> {
        let oversized = FormatError::Oversized {
            plaintext_len: self.plaintext_len,
            max: MAX_PLAINTEXT_LEN,
        };
        if self.plaintext_len > MAX_PLAINTEXT_LEN {
            return Err(oversized);
        }
        chunk_count(self.plaintext_len)
            .checked_mul(TAG_LEN)
            .and_then(|tags| tags.checked_add(self.plaintext_len))
            .and_then(|n| n.checked_add(HEADER_LEN as u64))
            .ok_or(oversized)
    }

    /// The STREAM nonce prefix the object was sealed with.
    pub fn nonce_prefix(&self) -> [u8; NONCE_PREFIX_LEN] {
        let mut p = [0; NONCE_PREFIX_LEN];
        p.copy_from_slice(&self.raw[44..44 + NONCE_PREFIX_LEN]);
        p
    }
}

/// How many STREAM chunks an object of `plaintext_len` bytes has.
pub fn chunk_count(plaintext_len: u64) -> u64 {
    // An empty object still has one (last) chunk, so that it carries a tag.
    plaintext_len.div_ceil(u64::from(CHUNK_SIZE)).max(1)
}

/// Parses and checks the header of a sealed object without any key.
pub fn parse_header(sealed: &[u8]) -> Result<Header, FormatError> {
    if sealed.len() < HEADER_LEN {
        return Err(FormatError::BadHeader("shorter than the 56-byte header"));
    }
    if &sealed[0..4] != MAGIC {
        return Err(FormatError::BadHeader("wrong magic (expected NFXS)"));
    }
    if sealed[4] != VERSION {
        return Err(FormatError::UnsupportedVersion(sealed[4]));
    }
    let kind = match sealed[5] {
        1 => Kind::Init,
        2 => Kind::Fragment,
        _ => return Err(FormatError::BadHeader("unknown object kind")),
    };
    let chunk = u32::from_be_bytes(sealed[40..44].try_into().expect("4 bytes"));
    if chunk != CHUNK_SIZE {
        return Err(FormatError::BadHeader("unsupported chunk size"));
    }
    let mut raw = [0u8; HEADER_LEN];
    raw.copy_from_slice(&sealed[..HEADER_LEN]);
    let mut stream = [0u8; 16];
    stream.copy_from_slice(&raw[8..24]);
    let header = Header {
        id: ObjectId {
            stream,
            seq: u64::from_be_bytes(raw[24..32].try_into().expect("8 bytes")),
            kind,
        },
        plaintext_len: u64::from_be_bytes(raw[32..40].try_into().expect("8 bytes")),
        raw,
    };
    // A header whose sizes cannot be computed is refused here, so no caller ever sees one.
    header.sealed_len()?;
    Ok(header)
}

impl Header {
    /// The header of a new object: `id`, `plaintext_len` bytes, sealed with STREAM nonce `prefix`.
    pub fn new(id: &ObjectId, plaintext_len: u64, prefix: [u8; NONCE_PREFIX_LEN]) -> Self {
        let mut raw = [0u8; HEADER_LEN];
        raw[0..4].copy_from_slice(MAGIC);
        raw[4] = VERSION;
        raw[5] = id.kind.byte();
        raw[8..24].copy_from_slice(&id.stream);
        raw[24..32].copy_from_slice(&id.seq.to_be_bytes());
        raw[32..40].copy_from_slice(&plaintext_len.to_be_bytes());
        raw[40..44].copy_from_slice(&CHUNK_SIZE.to_be_bytes());
        raw[44..44 + NONCE_PREFIX_LEN].copy_from_slice(&prefix);
        Self {
            id: *id,
            plaintext_len,
            raw,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_header_parses_back() {
        let id = ObjectId {
            stream: [3; 16],
            seq: 9,
            kind: Kind::Fragment,
        };
        let h = Header::new(&id, 70_000, [5; NONCE_PREFIX_LEN]);
        let mut bytes = h.raw.to_vec();
        bytes.resize(h.sealed_len().unwrap() as usize, 0);
        let back = parse_header(&bytes).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.nonce_prefix(), [5; NONCE_PREFIX_LEN]);
        assert_eq!(chunk_count(0), 1);
        assert_eq!(h.sealed_len().unwrap(), 56 + 70_000 + 2 * 16);
    }

    #[test]
    fn a_length_that_wraps_the_sealed_size_is_refused() {
        let id = ObjectId {
            stream: [3; 16],
            seq: 1,
            kind: Kind::Init,
        };
        let h = Header::new(&id, u64::MAX - 10, [0; NONCE_PREFIX_LEN]);
        assert!(matches!(
            parse_header(&h.raw),
            Err(FormatError::Oversized { .. })
        ));
    }

    #[test]
    fn garbage_headers_are_named() {
        assert!(
            parse_header(b"short")
                .unwrap_err()
                .to_string()
                .contains("56-byte")
        );
        let mut bad = Header::new(
            &ObjectId {
                stream: [0; 16],
                seq: 0,
                kind: Kind::Init,
            },
            1,
            [0; NONCE_PREFIX_LEN],
        )
        .raw;
        bad[4] = 9;
        assert!(matches!(
            parse_header(&bad),
            Err(FormatError::UnsupportedVersion(9))
        ));
        bad[4] = VERSION;
        bad[5] = 7;
        assert!(parse_header(&bad).unwrap_err().to_string().contains("kind"));
    }
}
