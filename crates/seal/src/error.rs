use thiserror::Error;

/// What can go wrong while sealing or wrapping.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SealError {
    /// The bytes given as a sealed object are not one (see [`neoflix_format::FormatError`]).
    #[error(transparent)]
    Format(#[from] neoflix_format::FormatError),
    /// HPKE refused to wrap the key (not expected with a valid public key).
    #[error("wrapping the data key failed")]
    Wrap,
    /// A department key file is malformed.
    #[error("malformed department key: {0}")]
    BadKey(String),
    /// The operating system could not supply random bytes.
    #[error("no randomness available from the operating system: {0}")]
    Random(String),
    /// The plaintext is larger than an object may hold.
    #[error("encryption failed: object too large")]
    TooLarge,
}
