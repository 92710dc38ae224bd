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
    /// The manifest cannot be read: not JSON, or not a Neoflix manifest.
    #[error("manifest {}: {message}", path.display())]
    BadManifest {
        /// The manifest path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A recording object does not match its manifest: missing, truncated, altered, reordered.
    #[error("{object} ({file}): {problem}")]
    Object {
        /// `fragment 7` or `init segment 0`.
        object: String,
        /// Its file name.
        file: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The hash chain over the manifest's objects does not match: the manifest's object list was
    /// edited (an entry removed, reordered or replaced).
    #[error(
        "the manifest's hash chain does not match its object list: the list was edited (expected {expected}, manifest says {found})"
    )]
    Chain {
        /// Chain value recomputed from the list.
        expected: String,
        /// Chain value stored in the manifest.
        found: String,
    },
    /// Fragments are missing from the middle of a capture stream: the sequence numbers in the
    /// objects' headers jump. Typically fragments removed from the recording with the manifest's
    /// list renumbered and its chain recomputed to hide it; on a box whose storage failed while
    /// it recorded, fragments lost there.
    #[error(
        "{object} ({file}) is number {after} of capture stream {stream}, the fragment before it number {before}: {} (removed, with the manifest rewritten to hide it, or lost on the box while it recorded)",
        missing(.before, .after)
    )]
    Gap {
        /// The fragment after the gap: `fragment 7`.
        object: String,
        /// Its file name.
        file: String,
        /// The capture stream (first 8 hex digits of its id).
        stream: String,
        /// Sequence number of the fragment before the gap.
        before: u64,
        /// Sequence number of the fragment after the gap.
        after: u64,
    },
    /// A fragment was claimed that the ring no longer holds.
    #[error("fragment {seq} is not in the ring (evicted or never sealed)")]
    NotInRing {
        /// The fragment's sequence number.
        seq: u64,
    },
}

/// `fragment 12 missing between 11 and 13`, or a range when more than one is missing.
fn missing(before: &u64, after: &u64) -> String {
    let (first, last) = (before.saturating_add(1), after.saturating_sub(1));
    if first == last {
        format!("fragment {first} missing between {before} and {after}")
    } else {
        format!("fragments {first} to {last} missing between {before} and {after}")
    }
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
