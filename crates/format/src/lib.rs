//! The formats that the room box, the department server and the CLI share — and nothing that
//! can seal or open a recording.
//!
//! A recording is a directory of sealed objects (init segments and fragments), one key record
//! per object, a manifest that lists every object with its SHA-256 under a hash chain, and the
//! room box's signature over the manifest. This crate knows the layout of each, checks a
//! directory against its manifest ([`verify()`]), and signs and checks signatures
//! ([`custody`]); it holds no department key and depends on no HPKE or AES-GCM crate, so the ingest
//! server can depend on it without being able to open what it stores. Sealing lives in
//! `neoflix-seal` (the room box), opening in `neoflix-open` (review and export only).
//!
//! ```
//! use neoflix_format::{Header, Kind, ObjectId, parse_header};
//! let id = ObjectId { stream: [7; 16], seq: 3, kind: Kind::Fragment };
//! let header = Header::new(&id, 1000, [0; 7]);
//! assert_eq!(parse_header(&header.raw).unwrap().id, id);
//! ```
//!
//! Layout: [`object`] the sealed-object header, [`key_record`] the wrapped-key record,
//! [`manifest`] the manifest and its hash chain, [`files`] careful reads of a recording's files,
//! [`mod@verify`] key-less checks of a recording directory, [`custody`] device and server
//! signatures, [`receipt`] the server's signed receipt, [`reviewer`] the reviewer file and sign-in check
//! (`docs/review.md`), [`review_api`] the review page's sign-in and download messages, [`protocol`] the upload protocol's
//! names and messages. The formats are specified in `docs/sealed-format.md` and
//! `docs/upload-protocol.md`. The default feature `native` brings the modules that read files
//! and check certificates (custody, files, verify, receipt, protocol); the browser's build
//! (`neoflix-web`, wasm32) goes without it.
#![deny(missing_docs)]

#[cfg(feature = "native")]
pub mod custody;
mod error;
#[cfg(feature = "native")]
pub mod files;
pub mod key_record;
pub mod manifest;
pub mod object;
#[cfg(feature = "native")]
pub mod protocol;
#[cfg(feature = "native")]
pub mod receipt;
pub mod review_api;
pub mod reviewer;
#[cfg(feature = "native")]
pub mod verify;

#[cfg(feature = "native")]
pub use custody::{Signature, Signer, SigningIdentity, TrustAnchors};
pub use error::FormatError;
#[cfg(feature = "native")]
pub use error::SignatureError;
pub use key_record::{WRAPPED_KEY_LEN, WrappedKey};
pub use manifest::{ClockStep, MANIFEST_FILE, Manifest, Marker, ObjectEntry, Status};
pub use object::{
    CHUNK_SIZE, HEADER_LEN, Header, Kind, MAX_PLAINTEXT_LEN, ObjectId, chunk_count, parse_header,
};
#[cfg(feature = "native")]
pub use receipt::{Receipt, SignedReceipt, SignedWithdrawal, Withdrawal};
#[cfg(feature = "native")]
pub use verify::{
    Digests, InDir, Objects, ReadAndHash, Verified, check_contiguous, gaps, read_manifest, verify,
    verify_manifest, verify_manifest_in, verify_manifest_with,
};

/// The short id of a department public key (first 16 hex digits of the SHA-256 of its 32 bytes),
/// written into manifests so that a reviewer knows which department key opens them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyId(pub String);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// SHA-256 of `bytes` as lowercase hex, the form used in manifests and on the wire.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Formats a time as RFC 3339 UTC with milliseconds, the form of every time in a manifest.
pub fn utc(t: std::time::SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}

/// Parses a time written by [`utc`] (any RFC 3339 time is accepted).
pub fn parse_utc(s: &str) -> Option<std::time::SystemTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(std::time::SystemTime::from)
}
