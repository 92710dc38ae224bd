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
//! - [`verify()`] checks a recording's files against its manifest without any key.
//!
//! The on-disk format is specified in `docs/sealed-format.md`.
//!
//! Layout: [`fsutil`] durable writes, [`ring`] the pre-roll, [`manifest`] the manifest and its
//! chain, [`recording`] writing and recovering recordings, [`mod@verify`] key-less checks.
#![deny(missing_docs)]

mod error;
pub mod fsutil;
pub mod manifest;
pub mod recording;
pub mod ring;
pub mod verify;

pub use error::StoreError;
pub use manifest::{Manifest, Marker, ObjectEntry, Status};
pub use recording::{RecordingWriter, recover};
pub use ring::{Ring, RingEntry, StreamInit};
pub use verify::{
    Digests, ReadAndHash, Verified, check_contiguous, gaps, read_manifest, verify, verify_manifest,
    verify_manifest_with,
};

/// Formats a time as RFC 3339 UTC with milliseconds.
pub fn utc(t: std::time::SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}
