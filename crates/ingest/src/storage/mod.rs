//! Where recordings are kept: a filesystem tree ([`fs`], the embedded default) or an
//! S3-compatible object store ([`s3`], which several replicas share). [`Storage`] is the one
//! the server uses, whichever it is; its methods block (disk or network), so the server calls
//! them on blocking threads.
//!
//! Both keep the same promises: an object is stored whole under its name or not at all, and
//! never replaced by other content; a recording is complete exactly when its manifest is
//! stored, and that is done once (on an object store, under the database's lock: [`s3`] says
//! what that does not fence); a receipt is issued only after the manifest is stored; a
//! deletion removes every key record before anything else.

pub mod fs;
pub mod s3;

use std::path::Path;
use std::sync::Arc;

use thiserror::Error;

use crate::custody::Custody;
pub use fs::{FsStorage, FsUpload};
pub use s3::{S3Storage, S3Upload};

/// The signed receipt of a complete recording, beside its manifest.
pub const RECEIPT_FILE: &str = "receipt.json";

/// The directory, in a device's directory, of the signed notices of its withdrawn recordings
/// (`<id>.json`). Its name is no recording id, so nothing lists it as one.
pub const WITHDRAWN_DIR: &str = ".withdrawn";

/// The directory, in a device's directory, of the markers of deletions under way
/// (`<id>`): a crash part-way leaves one, and the next start finishes the deletion.
pub const DELETING_DIR: &str = ".deleting";

/// A recording withdrawn or being deleted, as [`Storage::finish_deletions`] found it.
#[derive(Debug)]
pub struct Finished {
    /// The box.
    pub device: String,
    /// The recording.
    pub id: String,
    /// What was deleted of it now (`None`: nothing was left), or why that failed.
    pub outcome: Result<Option<Shredded>, StorageError>,
}

/// What a deletion removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shredded {
    /// Key records (`*.key`): removed first, and made durable before anything else goes.
    pub key_records: usize,
    /// Every other file: sealed objects, manifest, signature, receipt, temporary files.
    pub other_files: usize,
}

/// Why a storage operation was refused.
#[derive(Debug, Error)]
pub enum StorageError {
    /// A recording id or object name that is not allowed (traversal, odd characters, length).
    #[error("bad name: {0}")]
    BadName(String),
    /// A different object (or manifest) already exists under that name.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The body is larger than allowed.
    #[error("body larger than {0} bytes")]
    TooLarge(u64),
    /// The body's SHA-256 is not the announced one.
    #[error("content digest mismatch: the body's SHA-256 is {0}")]
    Digest(String),
    /// The disk is full.
    #[error("storage full")]
    NoSpace,
    /// The recording does not exist.
    #[error("no such recording")]
    NotFound,
    /// The manifest does not match the stored objects.
    #[error("manifest refused: {0}")]
    Manifest(String),
    /// The recording was withdrawn: the server's signed notice, which the box that recorded it
    /// checks before it deletes its copy.
    #[error("the recording was withdrawn by the department")]
    Withdrawn(Vec<u8>),
    /// Another I/O error.
    #[error("storage I/O: {0}")]
    Io(std::io::Error),
    /// The object store needs the body's length before it (`Content-Length`).
    #[error(
        "no Content-Length: this server streams objects to an object store, which needs the length first"
    )]
    LengthRequired,
    /// The object store failed, or cannot be used yet: trying again later may succeed.
    #[error("object store: {0}")]
    Store(String),
}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
            StorageError::NoSpace
        } else {
            StorageError::Io(e)
        }
    }
}

pub use neoflix_format::protocol::valid_recording_id;

/// Whether `name` is an object name: `init-NNN.nfx|key`, `frag-NNNNNN.nfx|key` or
/// `manifest.sig`.
pub fn valid_object_name(name: &str) -> bool {
    neoflix_format::protocol::ObjectName::parse(name).is_some()
}

/// `what '<name>'` refused as a name, cut to 64 characters for the message.
pub(crate) fn bad_name(what: &str, name: &str) -> StorageError {
    StorageError::BadName(format!(
        "{what} '{}'",
        name.chars().take(64).collect::<String>()
    ))
}

/// `name` if it is an object name ([`valid_object_name`]).
pub(crate) fn object_name(name: &str) -> Result<&str, StorageError> {
    if valid_object_name(name) {
        Ok(name)
    } else {
        Err(bad_name("object name", name))
    }
}

/// An uploaded manifest, read and checked to be recording `id`'s of `device` (the device the
/// certificate names), before anything is read on its word.
pub(crate) fn manifest_for(
    manifest_bytes: &[u8],
    device: &str,
    id: &str,
) -> Result<neoflix_format::Manifest, StorageError> {
    let m =
        neoflix_format::verify::parse_manifest(manifest_bytes).map_err(StorageError::Manifest)?;
    if m.recording_id != id {
        return Err(StorageError::Manifest(format!(
            "manifest is for recording '{}', not '{id}'",
            m.recording_id
        )));
    }
    if m.device_id != device {
        return Err(StorageError::Manifest(format!(
            "manifest names device '{}', the certificate '{device}'",
            m.device_id
        )));
    }
    Ok(m)
}

/// A recording the storage holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The room that recorded it.
    pub device: String,
    /// Its id.
    pub id: String,
    /// Whether its manifest is stored.
    pub complete: bool,
}

/// Receipts are a few hundred bytes; a larger file is not one the server wrote.
pub(crate) const MAX_RECEIPT_BYTES: u64 = 1 << 20;

/// Outcome of a PUT.
#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    /// Newly stored.
    Created,
    /// The identical object was already there.
    Same,
}

/// A lock that every replica sharing the storage honours (the database's): held while a
/// recording's manifest is stored, so that exactly one is, whichever replica the box reaches.
pub trait Exclusive: Send + Sync {
    /// Runs `f` while holding the lock `name`; an error when the lock cannot be had (the
    /// database unreachable), and then `f` has not run.
    fn exclusively(&self, name: &str, f: &mut dyn FnMut()) -> Result<(), String>;
}

/// The storage the server uses.
pub enum Storage {
    /// A filesystem tree, on one server.
    Fs(FsStorage),
    /// An S3-compatible bucket, which several replicas may share.
    S3(S3Storage),
}

/// An object being received.
pub enum Upload {
    /// Into a temporary file.
    Fs(FsUpload),
    /// Streaming to the object store.
    S3(S3Upload),
}

impl Upload {
    /// Appends a chunk of the body (blocks).
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        match self {
            Upload::Fs(u) => u.write(chunk),
            Upload::S3(u) => u.write(chunk),
        }
    }

    /// Bytes received so far.
    pub fn size(&self) -> u64 {
        match self {
            Upload::Fs(u) => u.size(),
            Upload::S3(u) => u.size(),
        }
    }
}

impl Storage {
    /// A filesystem tree at `root`, created if need be.
    pub fn open(root: &Path, max_object: u64) -> anyhow::Result<Storage> {
        FsStorage::open(root, max_object).map(Storage::Fs)
    }

    /// The filesystem tree at `root` as it is, created or not: for the admin's commands that
    /// only look, which must not create the tree (as root, with root's ownership) before the
    /// server does.
    pub fn for_reading(root: &Path, max_object: u64) -> Storage {
        Storage::Fs(FsStorage::for_reading(root, max_object))
    }

    /// The storage the configuration names; `create` makes a filesystem tree that is not
    /// there yet (the server does; the admin's commands that only look do not).
    pub fn configured(cfg: &crate::config::StorageConfig, create: bool) -> anyhow::Result<Storage> {
        match &cfg.backend {
            crate::config::StorageBackend::Fs { dir } if create => {
                Storage::open(dir, cfg.max_object_bytes)
            }
            crate::config::StorageBackend::Fs { dir } => {
                Ok(Storage::for_reading(dir, cfg.max_object_bytes))
            }
            crate::config::StorageBackend::S3(s) => {
                S3Storage::configured(s, cfg.max_object_bytes).map(Storage::S3)
            }
        }
    }

    /// Where it is, for messages: `storage.dir /var/lib/...` or the bucket.
    pub fn place(&self) -> String {
        match self {
            Storage::Fs(s) => format!("storage.dir {}", s.root().display()),
            Storage::S3(s) => s.place().to_string(),
        }
    }

    /// How many of the server's receive batches one upload holds in memory at most: one on
    /// the filesystem; on an object store also the chunk held back and those on their way.
    pub fn batches_per_upload(&self) -> u64 {
        match self {
            Storage::Fs(_) => 1,
            Storage::S3(_) => s3::BATCHES_PER_UPLOAD,
        }
    }

    /// Largest accepted object.
    pub fn max_object(&self) -> u64 {
        match self {
            Storage::Fs(s) => s.max_object(),
            Storage::S3(s) => s.max_object(),
        }
    }

    /// The slowest a box may send its body (`limits.min_bytes_per_sec`, after `grace`): what
    /// an object store's PUT, relaying it, must wait for.
    pub fn pace_uploads(&self, min_bytes_per_sec: u64, grace: std::time::Duration) {
        if let Storage::S3(s) = self {
            s.pace_uploads(min_bytes_per_sec, grace);
        }
    }

    /// Hands the storage the lock every replica honours ([`Exclusive`]). The filesystem tree
    /// has one server and its own locks; the object store, shared, needs it before it
    /// completes a recording.
    pub fn share_lock(&self, lock: Arc<dyn Exclusive>) {
        if let Storage::S3(s) = self {
            s.share_lock(lock);
        }
    }

    /// Starts receiving object `name` of recording `id`, whose SHA-256 is to be `expected`
    /// and whose length is `len` when the request said (the object store needs it).
    pub fn begin(
        &self,
        device: &str,
        id: &str,
        name: &str,
        expected: &[u8; 32],
        len: Option<u64>,
    ) -> Result<Upload, StorageError> {
        match self {
            Storage::Fs(s) => s.begin(device, id, name).map(Upload::Fs),
            Storage::S3(s) => s.begin(device, id, name, expected, len).map(Upload::S3),
        }
    }

    /// Finishes an upload: checks the digest and stores the object under its name, never over
    /// other content.
    pub fn commit(&self, up: Upload, expected: &[u8; 32]) -> Result<Stored, StorageError> {
        match (self, up) {
            (Storage::Fs(s), Upload::Fs(u)) => s.commit(u, expected),
            (Storage::S3(s), Upload::S3(u)) => s.commit(u, expected),
            _ => Err(StorageError::Io(std::io::Error::other(
                "an upload committed to storage it did not begin in",
            ))),
        }
    }

    /// The signed withdrawal notice of a recording, if it was withdrawn.
    pub fn withdrawn(&self, device: &str, id: &str) -> Result<Option<Vec<u8>>, StorageError> {
        match self {
            Storage::Fs(s) => s.withdrawn(device, id),
            Storage::S3(s) => s.withdrawn(device, id),
        }
    }

    /// Withdraws a recording: keeps the signed `notice` (so that the box that recorded it,
    /// asking later, deletes its copy, and nothing of it is taken again), then deletes what
    /// is stored of it, key records first. The notice is stored first, so that a crash
    /// part-way is finished at the next start ([`Storage::finish_deletions`]).
    pub fn withdraw(
        &self,
        device: &str,
        id: &str,
        notice: &[u8],
    ) -> Result<Shredded, StorageError> {
        match self {
            Storage::Fs(s) => s.withdraw(device, id, notice),
            Storage::S3(s) => s.withdraw(device, id, notice),
        }
    }

    /// Deletes a recording (retention): a marker first, so that a crash part-way is finished
    /// at the next start, then everything, key records first, then the marker.
    pub fn delete(&self, device: &str, id: &str) -> Result<Shredded, StorageError> {
        match self {
            Storage::Fs(s) => s.delete(device, id),
            Storage::S3(s) => s.delete(device, id),
        }
    }

    /// Finishes the deletions a crash interrupted (see [`FsStorage::finish_deletions`]).
    pub fn finish_deletions(&self) -> Result<Vec<Finished>, StorageError> {
        match self {
            Storage::Fs(s) => s.finish_deletions(),
            Storage::S3(s) => s.finish_deletions(),
        }
    }

    /// The manifest a complete recording was accepted with; `None` while it is not complete.
    pub fn manifest(&self, device: &str, id: &str) -> Result<Option<Vec<u8>>, StorageError> {
        match self {
            Storage::Fs(s) => s.manifest(device, id),
            Storage::S3(s) => s.manifest(device, id),
        }
    }

    /// The receipt of a complete recording, if one was written.
    pub fn receipt(&self, device: &str, id: &str) -> Result<Option<Vec<u8>>, StorageError> {
        match self {
            Storage::Fs(s) => s.receipt(device, id),
            Storage::S3(s) => s.receipt(device, id),
        }
    }

    /// Object `name` of a recording, whose SHA-256 the manifest gives as `sha256` (hex), read
    /// whole; one larger than `max` bytes is an error.
    pub fn read_object(
        &self,
        device: &str,
        id: &str,
        name: &str,
        sha256: &str,
        max: u64,
    ) -> Result<Vec<u8>, StorageError> {
        match self {
            Storage::Fs(s) => s.read_object(device, id, name, max),
            Storage::S3(s) => s.read_object(device, id, name, sha256, max),
        }
    }

    /// The rooms that hold something of a recording called `id`, whether or not it was
    /// withdrawn (its deletion may be unfinished).
    pub fn rooms_holding(&self, id: &str) -> Result<Vec<String>, StorageError> {
        match self {
            Storage::Fs(s) => s.rooms_holding(id),
            Storage::S3(s) => s.rooms_holding(id),
        }
    }

    /// Every recording stored, sorted; not those withdrawn or being deleted.
    pub fn recordings(&self) -> Result<Vec<Held>, StorageError> {
        match self {
            Storage::Fs(s) => s.recordings(),
            Storage::S3(s) => s.recordings(),
        }
    }

    /// What the server holds of a recording: (object names, complete).
    pub fn status(&self, device: &str, id: &str) -> Result<(Vec<String>, bool), StorageError> {
        match self {
            Storage::Fs(s) => s.status(device, id),
            Storage::S3(s) => s.status(device, id),
        }
    }

    /// The device's recordings: (id, complete).
    pub fn list(&self, device: &str) -> Result<Vec<(String, bool)>, StorageError> {
        match self {
            Storage::Fs(s) => s.list(device),
            Storage::S3(s) => s.list(device),
        }
    }

    /// Checks an uploaded manifest against the stored objects and, if everything matches,
    /// makes the recording complete. Returns the receipt (JSON) and whether it is new.
    pub fn complete(
        &self,
        device: &str,
        id: &str,
        manifest_bytes: &[u8],
        custody: &Custody,
    ) -> Result<(Vec<u8>, Stored), StorageError> {
        match self {
            Storage::Fs(s) => s.complete(device, id, manifest_bytes, custody),
            Storage::S3(s) => s.complete(device, id, manifest_bytes, custody),
        }
    }
}
