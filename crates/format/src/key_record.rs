//! The key record: a data key wrapped to the department with HPKE, bound to one object's header.
//!
//! ```text
//! "NFXK" | version 1 | 3 zero bytes | object header (56) | HPKE encapsulated key (32) | wrapped data key + tag (48)
//! ```
//! Only the layout lives here; wrapping is in `neoflix-seal`, unwrapping in `neoflix-open`.

use crate::{FormatError, HEADER_LEN};

/// Magic bytes at the start of every key record.
pub const KEY_RECORD_MAGIC: &[u8; 4] = b"NFXK";
/// Length of an HPKE X25519 encapsulated key.
pub const ENCAPPED_LEN: usize = 32;
/// Length of a key record: 144 bytes.
pub const WRAPPED_KEY_LEN: usize = 8 + HEADER_LEN + ENCAPPED_LEN + 32 + 16;

/// A parsed key record (its bytes, checked for length, magic and version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey(Vec<u8>);

impl WrappedKey {
    /// Assembles a record from the object header it was made for, the HPKE encapsulated key and
    /// the wrapped data key (with its tag).
    pub fn from_parts(
        header: &[u8; HEADER_LEN],
        encapped: &[u8; ENCAPPED_LEN],
        wrapped: &[u8; 48],
    ) -> Self {
        let mut out = Vec::with_capacity(WRAPPED_KEY_LEN);
        out.extend_from_slice(KEY_RECORD_MAGIC);
        out.extend_from_slice(&[1, 0, 0, 0]);
        out.extend_from_slice(header);
        out.extend_from_slice(encapped);
        out.extend_from_slice(wrapped);
        Self(out)
    }

    /// The record's bytes, as written to `*.key`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Parses a record read from a file or received over the network.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() != WRAPPED_KEY_LEN {
            return Err(FormatError::BadWrappedKey(
                "wrong length (expected 144 bytes)",
            ));
        }
        if &bytes[0..4] != KEY_RECORD_MAGIC || bytes[4] != 1 {
            return Err(FormatError::BadWrappedKey("wrong magic or version"));
        }
        if bytes[5..8] != [0, 0, 0] {
            return Err(FormatError::BadWrappedKey("reserved bytes are not zero"));
        }
        Ok(Self(bytes.to_vec()))
    }

    /// The header of the object this record was made for (also the HPKE associated data).
    pub fn object_header(&self) -> &[u8] {
        &self.0[8..8 + HEADER_LEN]
    }

    /// The HPKE encapsulated key.
    pub fn encapped(&self) -> &[u8] {
        &self.0[8 + HEADER_LEN..8 + HEADER_LEN + ENCAPPED_LEN]
    }

    /// The wrapped data key and its tag.
    pub fn wrapped(&self) -> &[u8] {
        &self.0[8 + HEADER_LEN + ENCAPPED_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_ones_are_named() {
        let w = WrappedKey::from_parts(&[1; HEADER_LEN], &[2; ENCAPPED_LEN], &[3; 48]);
        assert_eq!(w.as_bytes().len(), WRAPPED_KEY_LEN);
        let back = WrappedKey::from_bytes(w.as_bytes()).unwrap();
        assert_eq!(back.object_header(), &[1; HEADER_LEN]);
        assert_eq!(back.encapped(), &[2; ENCAPPED_LEN]);
        assert_eq!(back.wrapped(), &[3; 48]);
        assert!(WrappedKey::from_bytes(&w.as_bytes()[1..]).is_err());
        let mut bad = w.as_bytes().to_vec();
        bad[6] = 1;
        assert!(
            WrappedKey::from_bytes(&bad)
                .unwrap_err()
                .to_string()
                .contains("reserved")
        );
    }
}
