//! Sealing of video at rest: the one crate that knows the Neoflix sealed format.
//!
//! Every init segment and every fragment is encrypted on its own, in memory, under a fresh random
//! 256-bit [`DataKey`] with AES-256-GCM in the STREAM construction (64 KiB chunks, a last-chunk
//! flag in the nonce), so that truncation, reordering and tampering are all detected. The data key
//! never leaves RAM on the room box: when a recording claims a fragment, the key is wrapped to the
//! department's X25519 public key with HPKE (RFC 9180, DHKEM-X25519-HKDF-SHA256, HKDF-SHA256,
//! AES-256-GCM) and only that [`WrappedKey`] is written down. The byte layout and the threat each
//! field defends against are specified in `docs/sealed-format.md`.
//!
//! The crate does no I/O beyond what its callers hand it, so the daemon, the ingest server and the
//! CLI share exactly one implementation.
//!
//! ```
//! use neoflix_seal::{DepartmentSecretKey, ObjectId, Kind, seal, open};
//! let dept = DepartmentSecretKey::generate().unwrap();
//! let id = ObjectId { stream: [7; 16], seq: 3, kind: Kind::Fragment };
//! let (key, sealed) = seal(&id, b"moof...mdat...").unwrap();
//! let wrapped = key.wrap(&dept.public_key(), &sealed).unwrap();
//! // ... later, at the department, with the secret key:
//! let key = wrapped.unwrap_for(&dept, &sealed).unwrap();
//! let (header, plain) = open(&key, &sealed).unwrap();
//! assert_eq!(header.id, id);
//! assert_eq!(plain, b"moof...mdat...");
//! ```
//!
//! Layout: [`keys`] holds the department key pair and its file format, [`object`] the sealed
//! object format, [`wrap`] the HPKE key wrapping.
#![deny(missing_docs)]

mod error;
pub mod keys;
pub mod object;
pub mod wrap;

pub use error::SealError;
pub use keys::{DepartmentPublicKey, DepartmentSecretKey, KeyId};
pub use object::{
    CHUNK_SIZE, HEADER_LEN, Header, Kind, MAX_PLAINTEXT_LEN, ObjectId, open, parse_header, seal,
};
pub use wrap::{DataKey, WRAPPED_KEY_LEN, WrappedKey};

/// SHA-256 of `bytes` as lowercase hex, the form used in manifests and on the wire.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
