//! Sealed video on the room box's storage: the pre-roll ring, recordings, their manifests, and
//! recovery after a crash.
//!
//! - [`Ring`] keeps the newest sealed fragments, bounded by seconds and bytes, with each data key
//!   in RAM only. Evicting a fragment deletes its file and zeroizes its key, so what was never
//!   recorded is noise forever, even to the department.
//! - [`RecordingWriter`] claims fragments out of the ring into a recording directory: it wraps each
//!   data key to the department (HPKE), writes the key record write-temp-fsync-rename, then moves
//!   the sealed file in (a rename; a copy, fsync and delete across filesystems, never a decrypt).
//!   Stopping writes the [`Manifest`] with every object's SHA-256 and a hash chain over them.
//! - [`recover()`] seals recordings left open by a crash or power cut as `interrupted`.
//! - The manifest is signed with the box's [`SigningIdentity`] when it has one.
//!
//! The formats (manifest, signature, names) and the key-less check of a recording live in
//! `neoflix-format`, shared with the department side, which never links this crate.
//!
//! The on-disk format is specified in `docs/sealed-format.md`.
//!
//! Layout: [`fsutil`] durable writes, [`ring`] the pre-roll, [`recording`] writing and
//! recovering recordings.
#![deny(missing_docs)]

mod error;
pub mod fsutil;
pub mod recording;
pub mod ring;

pub use error::StoreError;
pub use neoflix_format::{Manifest, Marker, ObjectEntry, SigningIdentity, Status, utc};
pub use recording::{RecordingWriter, readdress, recover, rename, sign_unsigned};
pub use ring::{Ring, RingEntry, StreamInit};
