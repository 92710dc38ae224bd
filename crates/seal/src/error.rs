use thiserror::Error;

/// Everything that can go wrong while sealing, opening, wrapping or unwrapping.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SealError {
    /// The bytes do not start with a sealed-object header: typically a file that is not a Neoflix
    /// fragment at all, or one cut short before its header ended.
    #[error("not a sealed object: {0}")]
    BadHeader(&'static str),
    /// The object was sealed by a newer format version than this program reads.
    #[error("sealed format version {0} is not supported (this program reads version 1)")]
    UnsupportedVersion(u8),
    /// A chunk failed authentication: the ciphertext was changed, truncated, reordered, or the key
    /// belongs to another object.
    #[error(
        "authentication failed at chunk {chunk}: the sealed bytes were altered, cut short or belong to another key"
    )]
    Tampered {
        /// Zero-based index of the chunk that failed.
        chunk: u64,
    },
    /// The object's length does not match what its header announces: truncated or extended.
    #[error("length mismatch: header announces {expected} sealed bytes, found {found}")]
    Length {
        /// Length implied by the header.
        expected: u64,
        /// Length actually present.
        found: u64,
    },
    /// The header announces more plaintext than an object may hold ([`crate::object::MAX_PLAINTEXT_LEN`]):
    /// a damaged or crafted file. Refused before anything is sized from the announced length.
    #[error(
        "the header announces {plaintext_len} bytes of plaintext, more than the {max} an object may hold: the file is damaged or crafted"
    )]
    Oversized {
        /// Plaintext length the header announces.
        plaintext_len: u64,
        /// The largest this program accepts.
        max: u64,
    },
    /// The wrapped key failed to open: wrong department key, or a key record that belongs to a
    /// different object, or one that was altered.
    #[error(
        "the wrapped data key does not open with this department key for this object (wrong key, or key record of another fragment)"
    )]
    Unwrap,
    /// The wrapped key record is malformed.
    #[error("malformed wrapped key record: {0}")]
    BadWrappedKey(&'static str),
    /// A department key file is malformed.
    #[error("malformed department key: {0}")]
    BadKey(String),
    /// The operating system could not supply random bytes.
    #[error("no randomness available from the operating system: {0}")]
    Random(String),
    /// Encryption failed (only on absurd sizes: more than 2^32 chunks).
    #[error("encryption failed: object too large")]
    TooLarge,
}
