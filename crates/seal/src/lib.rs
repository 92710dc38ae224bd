//! The sealing side of the Neoflix format: what a room box needs, and nothing that opens.
//!
//! Every init segment and every fragment is encrypted on its own, in memory, under a fresh random
//! 256-bit [`DataKey`] with AES-256-GCM in the STREAM construction (64 KiB chunks, a last-chunk
//! flag in the nonce), so that truncation, reordering and tampering are all detected. The data key
//! never leaves RAM on the room box: when a recording claims a fragment, the key is wrapped to the
//! department's X25519 public key with HPKE (RFC 9180, DHKEM-X25519-HKDF-SHA256, HKDF-SHA256,
//! AES-256-GCM) and only that [`WrappedKey`] is written down. The byte layout (in
//! `neoflix-format`) and the threat each field defends against are specified in
//! `docs/sealed-format.md`.
//!
//! This crate holds only the department's *public* key: it cannot unwrap a key record or open
//! an object. That is `neoflix-open`'s job, which the room box and the ingest server do not link.
//!
//! ```
//! use neoflix_seal::{DepartmentPublicKey, Kind, ObjectId, seal};
//! # let pk_text = "neoflix-department-public-key-v1 2fe57da347cd62431528daac5fbb290730fff684afc4cfc2ed90995f58cb3b74\n";
//! let department = DepartmentPublicKey::from_file_text(pk_text).unwrap();
//! let id = ObjectId { stream: [7; 16], seq: 3, kind: Kind::Fragment };
//! let (key, sealed) = seal(&id, b"moof...mdat...").unwrap();
//! let record = key.wrap(&department, &sealed).unwrap(); // what a recording stores
//! assert_eq!(record.object_header(), &sealed[..neoflix_seal::HEADER_LEN]);
//! ```
//!
//! Layout: [`keys`] the department public key and its file format, [`object`] sealing an
//! object, [`wrap`] data keys and their HPKE wrapping, [`label`] marker labels.
#![deny(missing_docs)]

mod error;
pub mod keys;
pub mod label;
pub mod object;
pub mod wrap;

pub use error::SealError;
pub use keys::DepartmentPublicKey;
pub use label::seal_label;
pub use neoflix_format::{
    CHUNK_SIZE, HEADER_LEN, Header, KeyId, Kind, MAX_PLAINTEXT_LEN, ObjectId, WRAPPED_KEY_LEN,
    WrappedKey, parse_header, sha256_hex,
};
pub use object::seal;
pub use wrap::DataKey;
