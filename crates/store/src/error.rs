use std::path::PathBuf;

use thiserror::Error;

/// What can go wrong with sealed video on storage.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file operation failed: typically a full disk, a missing directory or wrong permissions.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Sealing or wrapping failed.
    #[error("sealing failed for {what}: {source}")]
    Seal {
        /// Which object.
        what: String,
        /// The cause.
        source: neoflix_seal::SealError,
    },
    /// The manifest could not be signed: typically a device key that does not match its
    /// certificate, or a key type the box cannot sign with.
    #[error("recording {recording}: signing the manifest failed: {source}")]
    Sign {
        /// The recording.
        recording: String,
        /// The cause.
        source: neoflix_format::SignatureError,
    },
    /// A recording directory's manifest was not signed: it is not a manifest, or not this
    /// box's (the box vouches only for its own recordings).
    #[error("recording {recording}: not signed: {why}")]
    NotOurs {
        /// The recording directory's name.
        recording: String,
        /// Why.
        why: String,
    },
    /// A fragment was claimed that the ring no longer holds.
    #[error("fragment {seq} is not in the ring (evicted or never sealed)")]
    NotInRing {
        /// The fragment's sequence number.
        seq: u64,
    },
}

impl StoreError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| StoreError::Io { op, path, source }
    }
}
