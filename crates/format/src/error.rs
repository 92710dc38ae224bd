use std::path::PathBuf;

use thiserror::Error;

/// What is wrong with a sealed object, a key record, a manifest or a recording directory, as
/// far as it can be told without any key.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The bytes do not start with a sealed-object header: typically a file that is not a Neoflix
    /// fragment at all, or one cut short before its header ended.
    #[error("not a sealed object: {0}")]
    BadHeader(&'static str),
    /// The object was sealed by a newer format version than this program reads.
    #[error("sealed format version {0} is not supported (this program reads version 1)")]
    UnsupportedVersion(u8),
    /// The header announces more plaintext than an object may hold
    /// ([`crate::object::MAX_PLAINTEXT_LEN`]): a damaged or crafted file. Refused before anything
    /// is sized from the announced length.
    #[error(
        "the header announces {plaintext_len} bytes of plaintext, more than the {max} an object may hold: the file is damaged or crafted"
    )]
    Oversized {
        /// Plaintext length the header announces.
        plaintext_len: u64,
        /// The largest this program accepts.
        max: u64,
    },
    /// The wrapped key record is malformed.
    #[error("malformed wrapped key record: {0}")]
    BadWrappedKey(&'static str),
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

/// Why a signature (a room box's over a manifest, or the server's over a receipt) does not
/// prove what it should.
#[cfg(feature = "native")]
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The recording carries no signature: recorded by a box without a signing identity, or the
    /// signature was removed.
    #[error(
        "the recording is not signed (no {}): nothing proves which box recorded it or that its manifest is unchanged",
        crate::custody::SIGNATURE_FILE
    )]
    Unsigned,
    /// The signature file cannot be read or parsed.
    #[error("the signature cannot be read: {0}")]
    Malformed(String),
    /// The signature is over other bytes than the document it came with: the manifest (or
    /// receipt) was changed after it was signed, or the signature belongs to another one.
    #[error(
        "the {what} was changed after it was signed (its SHA-256 is not the one signed): a label, a time or an object entry was edited, or the signature belongs to another {what}"
    )]
    DocumentChanged {
        /// `manifest` or `receipt`.
        what: &'static str,
    },
    /// The signature value does not verify with the certificate it carries: forged or damaged.
    #[error(
        "the signature does not verify with the certificate it carries ({signer}): forged or damaged"
    )]
    BadSignature {
        /// Who the certificate names.
        signer: String,
    },
    /// The signing key or certificate is unusable (unsupported key type, unreadable PEM).
    #[error("signing identity: {0}")]
    Identity(String),
    /// The certificate does not chain to the trusted CA, was revoked, or was not valid when the
    /// document was signed: a certificate made by someone else than the department.
    #[error("the signer {signer} is not trusted: {reason}")]
    Untrusted {
        /// Who the certificate names.
        signer: String,
        /// What the certificate check said.
        reason: String,
    },
    /// The signer is trusted but is not who the document says it is from: another room box's
    /// certificate signed this room's manifest, or a box uploaded another box's recording.
    #[error("signed by {signer}, but the {what} is from {expected}")]
    WrongSigner {
        /// Who signed.
        signer: String,
        /// Who it should have been.
        expected: String,
        /// `manifest` or `receipt`.
        what: &'static str,
    },
}
