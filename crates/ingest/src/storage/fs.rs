//! The filesystem backend: the tree `<root>/<device>/<recording>/`.
//!
//! An object is streamed into a temporary file, fsynced, then hard-linked to its name (which
//! never replaces an existing object) and the directory fsynced; a crash at any point leaves the
//! object either absent or whole. A recording is complete exactly when `manifest.json` exists,
//! and that file is written last, write-temp-fsync-rename.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{
    DELETING_DIR, Finished, Held, MAX_RECEIPT_BYTES, RECEIPT_FILE, Shredded, StorageError, Stored,
    WITHDRAWN_DIR, bad_name, manifest_for, object_name, valid_object_name, valid_recording_id,
};
use crate::custody::Custody;
use neoflix_format::MANIFEST_FILE;
use neoflix_format::custody::{MAX_SIGNATURE_BYTES, SIGNATURE_FILE};
use sha2::{Digest, Sha256};

/// Recording locks: a recording maps to one of these by hash, so the lock table is bounded and
/// two unrelated recordings rarely wait for each other.
const LOCK_STRIPES: usize = 64;

/// Temporary files of uploads in progress in this process.
type Live = Arc<Mutex<HashSet<PathBuf>>>;

/// The storage tree.
pub struct FsStorage {
    root: PathBuf,
    max_object: u64,
    /// Held while a recording's manifest is checked and stored, and while an object is linked
    /// into it: so exactly one manifest is stored, and no object lands in a complete recording.
    locks: Vec<Mutex<()>>,
    /// Temporary files of uploads still receiving: completion's sweep leaves them alone.
    /// (One server process per storage tree; what an earlier process left is nobody's.)
    live: Live,
}

/// An object being received.
pub struct FsUpload {
    dir: PathBuf,
    name: String,
    tmp: PathBuf,
    file: fs::File,
    hasher: Sha256,
    size: u64,
    max: u64,
    live: Live,
}

impl FsUpload {
    /// Appends a chunk of the body.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        self.size += chunk.len() as u64;
        if self.size > self.max {
            return Err(StorageError::TooLarge(self.max));
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk)?;
        Ok(())
    }

    /// Bytes received so far.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for FsUpload {
    fn drop(&mut self) {
        // Committed uploads have been linked into place; the temporary name goes either way,
        // and only then stops being live, so no sweep ever sees it unregistered.
        let _ = fs::remove_file(&self.tmp);
        lock(&self.live).remove(&self.tmp);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The data under these locks stays consistent whatever a panicking holder did.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn sha256_file(path: &Path) -> Result<[u8; 32], StorageError> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(h.finalize().into())
}

fn random_suffix() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

impl FsStorage {
    /// Opens (creating) the root.
    pub fn open(root: &Path, max_object: u64) -> anyhow::Result<FsStorage> {
        use anyhow::Context;
        fs::create_dir_all(root)
            .with_context(|| format!("storage.dir {}: cannot create", root.display()))?;
        Ok(FsStorage::for_reading(root, max_object))
    }

    /// The storage at `root` as it is, created or not: for the admin's commands that only look,
    /// which must not create the tree (as root, with root's ownership) before the server does.
    pub fn for_reading(root: &Path, max_object: u64) -> FsStorage {
        FsStorage {
            root: root.to_owned(),
            max_object,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            live: Arc::default(),
        }
    }

    /// The tree's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Largest accepted object.
    pub fn max_object(&self) -> u64 {
        self.max_object
    }

    fn recording_lock(&self, dir: &Path) -> std::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        dir.hash(&mut h);
        lock(&self.locks[(h.finish() % LOCK_STRIPES as u64) as usize])
    }

    fn device_dir(&self, device: &str) -> PathBuf {
        self.root.join(device)
    }

    fn recording_dir(&self, device: &str, id: &str) -> Result<PathBuf, StorageError> {
        if !valid_recording_id(id) {
            return Err(bad_name("recording id", id));
        }
        Ok(self.device_dir(device).join(id))
    }

    /// Starts receiving object `name` of recording `id`.
    pub fn begin(&self, device: &str, id: &str, name: &str) -> Result<FsUpload, StorageError> {
        object_name(name)?;
        let dir = self.recording_dir(device, id)?;
        self.refuse_withdrawn(device, id)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let tmp = dir.join(format!(".{name}.{}.tmp", random_suffix()));
        // Live before it exists: a sweep that lists the file finds it registered.
        lock(&self.live).insert(tmp.clone());
        let file = match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(f) => f,
            Err(e) => {
                lock(&self.live).remove(&tmp);
                return Err(e.into());
            }
        };
        Ok(FsUpload {
            live: self.live.clone(),
            dir,
            name: name.into(),
            tmp,
            file,
            hasher: Sha256::new(),
            size: 0,
            max: self.max_object,
        })
    }

    /// Finishes an upload: checks the digest, fsyncs, links it into place without overwriting.
    pub fn commit(&self, mut up: FsUpload, expected: &[u8; 32]) -> Result<Stored, StorageError> {
        let got: [u8; 32] = std::mem::take(&mut up.hasher).finalize().into();
        if &got != expected {
            return Err(StorageError::Digest(hex::encode(got)));
        }
        // The digest travels with the inode, so the manifest check need not read the object again
        // (a 90-minute recording is gigabytes). Where the filesystem has no user xattrs the
        // check reads and hashes instead.
        neoflix_format::files::record_digest(&up.file, &got, up.size);
        up.file.sync_all()?;
        let target = up.dir.join(&up.name);
        let _recording = self.recording_lock(&up.dir);
        if up.dir.join(MANIFEST_FILE).exists() {
            return Err(StorageError::Conflict("the recording is complete".into()));
        }
        match fs::hard_link(&up.tmp, &target) {
            Ok(()) => {
                // A withdrawal by another process (the admin's command) may have listed the
                // directory before this link: whichever of the two sees the other removes it.
                if let Some((device, id)) = self.device_and_id(&up.dir)
                    && let Err(e) = self.refuse_withdrawn(&device, &id)
                {
                    let _ = fs::remove_file(&target);
                    return Err(e);
                }
                sync_dir(&up.dir)?;
                Ok(Stored::Created)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if &sha256_file(&target)? == expected {
                    Ok(Stored::Same)
                } else {
                    Err(StorageError::Conflict(format!(
                        "{} exists with different content",
                        up.name
                    )))
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The device and recording of a recording directory under the root.
    fn device_and_id(&self, dir: &Path) -> Option<(String, String)> {
        let rel = dir.strip_prefix(&self.root).ok()?;
        let mut parts = rel.iter().map(|p| p.to_string_lossy().into_owned());
        match (parts.next(), parts.next(), parts.next()) {
            (Some(device), Some(id), None) => Some((device, id)),
            _ => None,
        }
    }

    fn notice_path(&self, device: &str, id: &str) -> PathBuf {
        self.device_dir(device)
            .join(WITHDRAWN_DIR)
            .join(format!("{id}.json"))
    }

    /// The signed withdrawal notice of a recording, if it was withdrawn.
    pub fn withdrawn(&self, device: &str, id: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.recording_dir(device, id)?;
        match read_small_object(&self.notice_path(device, id)) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn refuse_withdrawn(&self, device: &str, id: &str) -> Result<(), StorageError> {
        match self.withdrawn(device, id)? {
            Some(notice) => Err(StorageError::Withdrawn(notice)),
            None => Ok(()),
        }
    }

    /// Withdraws a recording: keeps the signed `notice` (so that the box that recorded it,
    /// asking later, deletes its copy, and nothing of it is taken again), then deletes what is
    /// stored of it ([`FsStorage::shred`]). The notice is written first, so that a crash part-way
    /// is finished at the next start ([`FsStorage::finish_deletions`]). A recording the server
    /// holds nothing of yet can be withdrawn too: it is refused when it arrives.
    pub fn withdraw(
        &self,
        device: &str,
        id: &str,
        notice: &[u8],
    ) -> Result<Shredded, StorageError> {
        let dir = self.recording_dir(device, id)?;
        self.marker_dir(device, WITHDRAWN_DIR)?;
        if self.withdrawn(device, id)?.is_none() {
            write_whole(&self.notice_path(device, id), notice, Place::Replace)?;
        }
        self.shred(&dir)
    }

    /// A device's directory of notices or markers, created and made durable (with the device
    /// directory itself): a marker whose directory a crash lost would let the key records go
    /// without a trace of why.
    fn marker_dir(&self, device: &str, name: &str) -> Result<PathBuf, StorageError> {
        let dev = self.device_dir(device);
        let dir = dev.join(name);
        if !dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
            sync_dir(&dev)?;
            sync_dir(&self.root)?;
        }
        Ok(dir)
    }

    /// Deletes a recording (retention): a marker first, so that a crash part-way is finished
    /// at the next start, then [`FsStorage::shred`], then the marker.
    pub fn delete(&self, device: &str, id: &str) -> Result<Shredded, StorageError> {
        let dir = self.recording_dir(device, id)?;
        let markers = self.marker_dir(device, DELETING_DIR)?;
        let marker = markers.join(id);
        write_whole(&marker, b"", Place::Replace)?;
        let done = self.shred(&dir)?;
        remove_if_there(&marker)?;
        sync_dir(&markers)?;
        Ok(done)
    }

    /// Deletes a recording directory so that what is left at any moment opens nothing: every
    /// key record first, made durable (without the wrapped data keys the sealed objects are
    /// noise to everyone, the department included), then everything else, then the directory.
    /// A directory already gone is no error.
    pub fn shred(&self, dir: &Path) -> Result<Shredded, StorageError> {
        let mut done = Shredded::default();
        // An upload linking a file in while this runs makes the directory non-empty again; a
        // few rounds take what it linked (it also removes it itself, seeing the notice).
        for _ in 0..5 {
            let names: Vec<std::ffi::OsString> = match fs::read_dir(dir) {
                Ok(l) => l.filter_map(|e| e.ok()).map(|e| e.file_name()).collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
                Err(e) => return Err(e.into()),
            };
            let is_key = |n: &std::ffi::OsString| {
                let n = n.to_string_lossy();
                n.ends_with(".key") || n.contains(".key.")
            };
            for n in names.iter().filter(|n| is_key(n)) {
                done.key_records += usize::from(remove_if_there(&dir.join(n))?);
            }
            sync_dir(dir)?;
            for n in names.iter().filter(|n| !is_key(n)) {
                done.other_files += usize::from(remove_if_there(&dir.join(n))?);
            }
            match fs::remove_dir(dir) {
                Ok(()) => {
                    if let Some(parent) = dir.parent() {
                        sync_dir(parent)?;
                    }
                    return Ok(done);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StorageError::Conflict(format!(
            "{}: files keep appearing while it is deleted",
            dir.display()
        )))
    }

    /// Finishes the deletions a crash interrupted: every recording directory that has a
    /// withdrawal notice or a deletion marker is shredded (and the marker removed). Returns
    /// every recording so marked, withdrawn or deleted (for the index to forget), with what was
    /// finished of it now, or why that failed: one failure stops neither the others nor the
    /// server.
    pub fn finish_deletions(&self) -> Result<Vec<Finished>, StorageError> {
        let mut all = Vec::new();
        let devices = match fs::read_dir(&self.root) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(all),
            Err(e) => return Err(e.into()),
        };
        for d in devices.filter_map(|e| e.ok()) {
            let device = d.file_name().to_string_lossy().into_owned();
            for (marks, suffix) in [(WITHDRAWN_DIR, ".json"), (DELETING_DIR, "")] {
                let Ok(list) = fs::read_dir(d.path().join(marks)) else {
                    continue;
                };
                for n in list.filter_map(|e| e.ok()) {
                    let name = n.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') && name.ends_with(".tmp") {
                        remove_stale_temp(&n.path());
                        continue;
                    }
                    let Some(id) = name.strip_suffix(suffix) else {
                        continue;
                    };
                    if !valid_recording_id(id) {
                        continue;
                    }
                    let dir = d.path().join(id);
                    let outcome = if fs::symlink_metadata(&dir).is_ok() {
                        self.shred(&dir).map(Some)
                    } else {
                        Ok(None)
                    };
                    let outcome = match (outcome, marks == DELETING_DIR) {
                        (Ok(s), true) => remove_if_there(&n.path()).map(|_| s),
                        (o, _) => o,
                    };
                    all.push(Finished {
                        device: device.clone(),
                        id: id.to_string(),
                        outcome,
                    });
                }
            }
        }
        Ok(all)
    }

    /// The manifest a complete recording was accepted with; `None` while it is not complete.
    pub fn manifest(&self, device: &str, id: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let dir = self.recording_dir(device, id)?;
        read_if_there(
            &dir.join(MANIFEST_FILE),
            neoflix_format::manifest::MAX_MANIFEST_BYTES,
        )
    }

    /// The receipt of a complete recording, if one was written.
    pub fn receipt(&self, device: &str, id: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let dir = self.recording_dir(device, id)?;
        read_if_there(&dir.join(RECEIPT_FILE), MAX_RECEIPT_BYTES)
    }

    /// Object `name` of a recording, read whole; one larger than `max` bytes is an error.
    pub fn read_object(
        &self,
        device: &str,
        id: &str,
        name: &str,
        max: u64,
    ) -> Result<Vec<u8>, StorageError> {
        let dir = self.recording_dir(device, id)?;
        object_name(name)?;
        match neoflix_format::files::read_regular(&dir.join(name), max) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StorageError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    /// The rooms that hold something of a recording called `id`, whether or not it was
    /// withdrawn (its deletion may be unfinished): one look per room, not a listing of their
    /// recordings.
    pub fn rooms_holding(&self, id: &str) -> Result<Vec<String>, StorageError> {
        if !valid_recording_id(id) {
            return Ok(Vec::new());
        }
        let mut rooms: Vec<String> = self
            .rooms()?
            .into_iter()
            .filter(|room| {
                fs::symlink_metadata(self.device_dir(room).join(id)).is_ok_and(|m| m.is_dir())
            })
            .collect();
        rooms.sort();
        Ok(rooms)
    }

    /// The rooms' directories.
    fn rooms(&self) -> Result<Vec<String>, StorageError> {
        let devices = match fs::read_dir(&self.root) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        Ok(devices
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|d| !d.starts_with('.'))
            .collect())
    }

    /// Every recording stored, sorted; not those withdrawn or being deleted, whose deletion a
    /// start finishes.
    pub fn recordings(&self) -> Result<Vec<Held>, StorageError> {
        let mut all = Vec::new();
        for device in self.rooms()? {
            let dir = self.device_dir(&device);
            let Ok(recs) = fs::read_dir(&dir) else {
                continue;
            };
            for rec in recs.filter_map(|e| e.ok()) {
                let Ok(id) = rec.file_name().into_string() else {
                    continue;
                };
                if !valid_recording_id(&id)
                    || !rec.file_type().is_ok_and(|t| t.is_dir())
                    || self.notice_path(&device, &id).exists()
                    || dir.join(DELETING_DIR).join(&id).exists()
                {
                    continue;
                }
                let complete = rec.path().join(MANIFEST_FILE).is_file();
                all.push(Held {
                    device: device.clone(),
                    id,
                    complete,
                });
            }
        }
        all.sort_by(|a, b| (&a.device, &a.id).cmp(&(&b.device, &b.id)));
        Ok(all)
    }

    /// What the server holds of a recording: (object names, complete).
    pub fn status(&self, device: &str, id: &str) -> Result<(Vec<String>, bool), StorageError> {
        let dir = self.recording_dir(device, id)?;
        self.refuse_withdrawn(device, id)?;
        let list = match fs::read_dir(&dir) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::NotFound);
            }
            Err(e) => return Err(e.into()),
        };
        let mut names: Vec<String> = list
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| valid_object_name(n))
            .collect();
        names.sort();
        Ok((names, dir.join(MANIFEST_FILE).exists()))
    }

    /// The device's recordings: (id, complete).
    pub fn list(&self, device: &str) -> Result<Vec<(String, bool)>, StorageError> {
        let dir = self.device_dir(device);
        let list = match fs::read_dir(&dir) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut v: Vec<(String, bool)> = list
            .filter_map(|e| e.ok())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().to_string(),
                    e.path().join(MANIFEST_FILE).exists(),
                )
            })
            .filter(|(n, _)| valid_recording_id(n))
            .filter(|(n, _)| !self.notice_path(device, n).exists())
            .collect();
        v.sort();
        Ok(v)
    }

    /// Checks an uploaded manifest against the stored objects and, if everything matches, makes
    /// the recording complete. Returns the receipt (JSON) and whether it is new.
    ///
    /// Exactly one manifest is ever stored for a recording, and only the request that stored it
    /// gets a new receipt: the recording's lock is held throughout, and `manifest.json` is
    /// created exclusively (a hard link, which never replaces a file), so a second manifest is
    /// a conflict even where the lock is not shared.
    pub fn complete(
        &self,
        device: &str,
        id: &str,
        manifest_bytes: &[u8],
        custody: &Custody,
    ) -> Result<(Vec<u8>, Stored), StorageError> {
        let dir = self.recording_dir(device, id)?;
        self.refuse_withdrawn(device, id)?;
        let _recording = self.recording_lock(&dir);
        let final_manifest = dir.join(MANIFEST_FILE);
        if let Some(done) = self.already_complete(&dir, device, id, manifest_bytes, custody)? {
            return Ok(done);
        }
        let m = manifest_for(manifest_bytes, device, id)?;
        if !dir.exists() {
            return Err(StorageError::NotFound);
        }
        // Custody before anything is read on the manifest's word: who signed, and that it is
        // the device uploading it.
        let sig = match read_small_object(&dir.join(SIGNATURE_FILE)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::Manifest(format!(
                    "the recording is not signed: upload {SIGNATURE_FILE} (the box's signature over this manifest) first; a box without a signing identity cannot deliver to this server"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let signer = custody
            .check(device, manifest_bytes, &m, &sig)
            .map_err(|e| StorageError::Manifest(format!("signature: {e}")))?;
        let v = neoflix_format::verify_manifest_with(&dir, m, &RecordedDigests)
            .map_err(|e| StorageError::Manifest(e.to_string()))?;
        let m = v.manifest;
        let listed: HashSet<&str> = m
            .init_segments
            .iter()
            .chain(&m.fragments)
            .flat_map(|e| [e.file.as_str(), e.key_file.as_str()])
            .chain([SIGNATURE_FILE])
            .collect();
        // Objects a box uploaded and then dropped in its crash recovery are not the recording's,
        // and temporary files of uploads cut off by a crash of this server are nobody's. A
        // temporary file of an upload still running here is left alone: it ends in a conflict.
        let live = lock(&self.live).clone();
        for entry in fs::read_dir(&dir)?.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().to_string();
            let stray_object = valid_object_name(&name) && !listed.contains(name.as_str());
            let stale_temp =
                name.starts_with('.') && name.ends_with(".tmp") && !live.contains(&entry.path());
            if stray_object || stale_temp {
                log::warn!(device = crate::esc(device).as_str(), recording = crate::esc(id).as_str(), file = crate::esc(&name).as_str(); "removing a file the manifest does not list");
                fs::remove_file(entry.path())?;
            }
        }
        // This makes the recording complete, and only if no manifest is there yet.
        if !write_whole(&final_manifest, manifest_bytes, Place::Exclusive)? {
            return match self.already_complete(&dir, device, id, manifest_bytes, custody)? {
                Some(done) => Ok(done),
                None => Err(StorageError::Conflict(
                    "the recording is complete with another manifest".into(),
                )),
            };
        }
        // A crash before the receipt is written leaves a complete recording without one: the
        // box's next PUT of the same manifest gets it rebuilt.
        let receipt = custody
            .receipt(device, manifest_bytes, &m, &signer)
            .map_err(|e| {
                StorageError::Io(std::io::Error::other(format!("signing the receipt: {e}")))
            })?;
        write_whole(&dir.join(RECEIPT_FILE), &receipt, Place::Replace)?;
        Ok((receipt, Stored::Created))
    }

    /// For a complete recording: the stored receipt if `manifest_bytes` is its manifest (rebuilt
    /// if a crash lost it), a conflict if not. `None` if the recording is not complete.
    fn already_complete(
        &self,
        dir: &Path,
        device: &str,
        id: &str,
        manifest_bytes: &[u8],
        custody: &Custody,
    ) -> Result<Option<(Vec<u8>, Stored)>, StorageError> {
        let existing = match fs::read(dir.join(MANIFEST_FILE)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if existing != manifest_bytes {
            return Err(StorageError::Conflict(
                "the recording is complete with another manifest".into(),
            ));
        }
        let path = dir.join(RECEIPT_FILE);
        match fs::read(&path) {
            Ok(r) => Ok(Some((r, Stored::Same))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let m = neoflix_format::verify::parse_manifest(manifest_bytes)
                    .map_err(|e| StorageError::Manifest(format!("stored manifest: {e}")))?;
                debug_assert_eq!(m.recording_id, id);
                let sig = read_small_object(&dir.join(SIGNATURE_FILE))?;
                let sign_err = |e: neoflix_format::SignatureError| {
                    StorageError::Io(std::io::Error::other(format!(
                        "rebuilding the receipt: {e}"
                    )))
                };
                let signer = custody.signer_of(manifest_bytes, &sig).map_err(sign_err)?;
                let r = custody
                    .receipt(device, manifest_bytes, &m, &signer)
                    .map_err(sign_err)?;
                write_whole(&path, &r, Place::Replace)?;
                Ok(Some((r, Stored::Same)))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Reads a small file the server wrote itself (a stored signature).
/// Removes a file; `false` when it was already gone.
fn remove_if_there(path: &Path) -> Result<bool, StorageError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Reads a file the server wrote itself, whole; `None` if it is not there.
fn read_if_there(path: &Path, max: u64) -> Result<Option<Vec<u8>>, StorageError> {
    match neoflix_format::files::read_regular(path, max) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn read_small_object(path: &Path) -> std::io::Result<Vec<u8>> {
    neoflix_format::files::read_regular(path, MAX_SIGNATURE_BYTES)
}

/// How a file written whole takes its place.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Replace whatever is there (rename).
    Replace,
    /// Only if nothing is there (hard link): a concurrent writer can never be overwritten.
    Exclusive,
}

/// Writes `path` whole: a temporary file of its own, fsync, then into place and fsync of the
/// directory. `false` when `Place::Exclusive` found the name taken: nothing changed.
/// A temporary file a crash left between its creation and its rename: removed once a minute
/// old, so that one another process (an admin command) is writing right now is left alone.
fn remove_stale_temp(path: &Path) {
    let stale = fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age >= std::time::Duration::from_secs(60));
    if stale && let Err(e) = fs::remove_file(path) {
        log::warn!(path = path.display().to_string().as_str(), error = e.to_string().as_str(); "cannot remove a temporary file a crash left");
    }
}

fn write_whole(path: &Path, bytes: &[u8], place: Place) -> Result<bool, StorageError> {
    let dir = path.parent().expect("inside a recording dir");
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        random_suffix()
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        match place {
            Place::Replace => fs::rename(&tmp, path)?,
            Place::Exclusive => match fs::hard_link(&tmp, path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
                Err(e) => return Err(e.into()),
            },
        }
        sync_dir(dir)?;
        Ok(true)
    })();
    // After a rename there is nothing left to remove; after a link or a failure there is.
    let _ = fs::remove_file(&tmp);
    result
}

/// Digests recorded at upload, falling back to reading the file.
struct RecordedDigests;

impl neoflix_format::Digests for RecordedDigests {
    fn size_and_sha256(&self, path: &Path) -> std::io::Result<(u64, String)> {
        let (file, size) = neoflix_format::files::open_regular(path)?;
        if let Some(sha) = neoflix_format::files::recorded_digest(&file, size) {
            return Ok((size, hex::encode(sha)));
        }
        neoflix_format::ReadAndHash.size_and_sha256(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_strict() {
        for ok in [
            "init-000.nfx",
            "init-001.key",
            "frag-000123.nfx",
            "frag-999999.key",
        ] {
            assert!(valid_object_name(ok), "{ok}");
        }
        for bad in [
            "../frag-000001.nfx",
            "frag-1.nfx",
            "frag-000001.txt",
            "frag-000001",
            "manifest.json",
            "init-0000.nfx",
            "frag-00000a.nfx",
            ".frag-000001.nfx",
        ] {
            assert!(!valid_object_name(bad), "{bad}");
        }
        assert!(valid_recording_id("room-1-20261126T004857Z"));
        for bad in ["..", ".", "a/b", "", "a b", "%2e%2e", &"x".repeat(129)] {
            assert!(!valid_recording_id(bad), "{bad}");
        }
    }

    #[test]
    fn put_is_idempotent_and_never_overwrites() {
        let d = tempfile::tempdir().unwrap();
        let s = FsStorage::open(d.path(), 1000).unwrap();
        let put = |body: &[u8]| {
            let mut up = s.begin("dev", "rec", "frag-000000.nfx").unwrap();
            up.write(body).unwrap();
            let sha: [u8; 32] = Sha256::digest(body).into();
            s.commit(up, &sha)
        };
        assert_eq!(put(b"one").unwrap(), Stored::Created);
        assert_eq!(put(b"one").unwrap(), Stored::Same);
        assert!(matches!(put(b"two"), Err(StorageError::Conflict(_))));
        assert_eq!(
            fs::read(d.path().join("dev/rec/frag-000000.nfx")).unwrap(),
            b"one"
        );
        let mut up = s.begin("dev", "rec", "frag-000001.nfx").unwrap();
        up.write(b"abc").unwrap();
        assert!(matches!(
            s.commit(up, &[0; 32]),
            Err(StorageError::Digest(_))
        ));
        let mut up = s.begin("dev", "rec", "frag-000002.nfx").unwrap();
        assert!(matches!(
            up.write(&[0; 1001]),
            Err(StorageError::TooLarge(1000))
        ));
        drop(up);
        let (names, complete) = s.status("dev", "rec").unwrap();
        assert_eq!(names, vec!["frag-000000.nfx".to_string()]);
        assert!(!complete);
        // An upload cut off by a crash leaves a temporary file: never listed as an object.
        let crashed = s.begin("dev", "rec", "frag-000004.nfx").unwrap();
        std::mem::forget(crashed);
        assert_eq!(s.status("dev", "rec").unwrap().0.len(), 1);
        assert!(matches!(
            s.status("dev", "other"),
            Err(StorageError::NotFound)
        ));
    }

    #[test]
    fn what_the_review_page_and_the_index_read_goes_through_the_store() {
        let d = tempfile::tempdir().unwrap();
        // Looking creates nothing.
        let absent = FsStorage::for_reading(&d.path().join("absent"), 1000);
        assert_eq!(absent.recordings().unwrap(), vec![]);
        assert!(!d.path().join("absent").exists());

        let s = FsStorage::open(d.path(), 1000).unwrap();
        for (dev, rec) in [("room-2", "r1"), ("room-1", "r1"), ("room-1", "r2")] {
            let mut up = s.begin(dev, rec, "frag-000000.nfx").unwrap();
            up.write(b"sealed").unwrap();
            s.commit(up, &Sha256::digest(b"sealed").into()).unwrap();
        }
        fs::write(d.path().join("room-1/r2/manifest.json"), b"{}").unwrap();
        fs::write(d.path().join("stray"), b"x").unwrap();
        fs::create_dir_all(d.path().join("room-1/not an id")).unwrap();
        s.withdraw("room-3", "r9", b"{}").unwrap();
        // Withdrawn or being deleted, with the deletion unfinished (a crash, a failing disk):
        // not a recording to index, but a room the admin's lookup still finds.
        fs::create_dir_all(d.path().join("room-3/r9")).unwrap();
        fs::create_dir_all(d.path().join("room-3/r8")).unwrap();
        fs::create_dir_all(d.path().join("room-3/.deleting")).unwrap();
        fs::write(d.path().join("room-3/.deleting/r8"), b"").unwrap();
        let held = |device: &str, id: &str, complete| Held {
            device: device.into(),
            id: id.into(),
            complete,
        };
        assert_eq!(
            s.recordings().unwrap(),
            vec![
                held("room-1", "r1", false),
                held("room-1", "r2", true),
                held("room-2", "r1", false)
            ]
        );
        assert_eq!(s.rooms_holding("r1").unwrap(), ["room-1", "room-2"]);
        assert_eq!(s.rooms_holding("r9").unwrap(), ["room-3"]);
        assert_eq!(s.rooms_holding("..").unwrap(), Vec::<String>::new());
        assert_eq!(
            s.manifest("room-1", "r2").unwrap().as_deref(),
            Some(&b"{}"[..])
        );
        assert_eq!(s.manifest("room-1", "r1").unwrap(), None);
        assert_eq!(s.receipt("room-1", "r2").unwrap(), None);
        assert_eq!(
            s.read_object("room-1", "r1", "frag-000000.nfx", 6).unwrap(),
            b"sealed"
        );
        assert!(s.read_object("room-1", "r1", "frag-000000.nfx", 5).is_err());
        assert!(matches!(
            s.read_object("room-1", "r1", "frag-000001.nfx", 6),
            Err(StorageError::NotFound)
        ));
        for bad in ["../r2/manifest.json", "manifest.json", "receipt.json"] {
            assert!(matches!(
                s.read_object("room-1", "r2", bad, 100),
                Err(StorageError::BadName(_))
            ));
        }
        assert!(matches!(
            s.manifest("room-1", ".."),
            Err(StorageError::BadName(_))
        ));
    }
}

#[cfg(test)]
mod race_tests {
    use super::*;
    use crate::custody::testing::TestPki;
    use std::sync::{Arc, Barrier};
    use std::time::{Duration, SystemTime};

    /// A finished recording of `n` small fragments written by the real store code, uploaded into
    /// `s` as device `dev`; returns (recording id, its manifest's bytes).
    fn uploaded_recording(
        tmp: &Path,
        s: &FsStorage,
        n: u64,
        signer: &neoflix_format::SigningIdentity,
    ) -> (String, Vec<u8>) {
        let dept = neoflix_open::DepartmentSecretKey::generate().unwrap();
        let (mut ring, _) =
            neoflix_store::Ring::open(&tmp.join("ring"), Duration::from_secs(1), 1 << 30).unwrap();
        let recs = tmp.join("recordings");
        let mut w = neoflix_store::RecordingWriter::create(
            &recs,
            "rec",
            "dev",
            "control",
            &dept.public_key(),
            SystemTime::now(),
        )
        .unwrap();
        let stream = [1u8; 16];
        let id = |seq, kind| neoflix_seal::ObjectId { stream, seq, kind };
        let (k, sealed) = neoflix_seal::seal(&id(0, neoflix_seal::Kind::Init), b"init").unwrap();
        ring.begin_stream(stream, &sealed, k).unwrap();
        for seq in 0..n {
            let (k, sealed) =
                neoflix_seal::seal(&id(seq, neoflix_seal::Kind::Fragment), &[seq as u8; 3000])
                    .unwrap();
            ring.push(
                seq,
                &sealed,
                k,
                Duration::from_secs(1),
                SystemTime::now(),
                std::time::Instant::now(),
            )
            .unwrap();
            let init = ring.init(&stream).unwrap();
            w.claim(ring.get(seq).unwrap(), &init, false).unwrap();
            ring.keep(seq);
        }
        w.finalize("control", SystemTime::now(), Some(signer))
            .unwrap();
        let dir = fs::read_dir(&recs).unwrap().next().unwrap().unwrap().path();
        let rec = dir.file_name().unwrap().to_string_lossy().to_string();
        for f in fs::read_dir(&dir).unwrap() {
            let f = f.unwrap();
            let name = f.file_name().to_string_lossy().to_string();
            if valid_object_name(&name) {
                let bytes = fs::read(f.path()).unwrap();
                let mut up = s.begin("dev", &rec, &name).unwrap();
                up.write(&bytes).unwrap();
                s.commit(up, &Sha256::digest(&bytes).into()).unwrap();
            }
        }
        (rec, fs::read(dir.join("manifest.json")).unwrap())
    }

    /// What [`FsStorage::complete`] answered.
    type Completed = Result<(Vec<u8>, Stored), StorageError>;

    #[test]
    fn a_withdrawn_recording_is_deleted_refused_from_then_on_and_a_crash_part_way_finished() {
        let d = tempfile::tempdir().unwrap();
        let s = FsStorage::open(&d.path().join("srv"), 1 << 20).unwrap();
        let pki = TestPki::new();
        let signer = pki.device("dev");
        let (rec, manifest) = uploaded_recording(d.path(), &s, 3, &signer);
        s.complete("dev", &rec, &manifest, &pki.custody).unwrap();
        let dir = d.path().join("srv/dev").join(&rec);
        let count = |suffix: &str| {
            fs::read_dir(&dir)
                .map(|l| {
                    l.filter(|e| {
                        e.as_ref()
                            .unwrap()
                            .file_name()
                            .to_string_lossy()
                            .ends_with(suffix)
                    })
                    .count()
                })
                .unwrap_or(0)
        };
        let keys = count(".key");
        assert_eq!(keys, 4, "an init segment and three fragments");
        let others = fs::read_dir(&dir).unwrap().count() - keys;

        let shredded = s.withdraw("dev", &rec, b"{\"notice\":1}").unwrap();
        assert_eq!(shredded.key_records, keys);
        assert_eq!(shredded.other_files, others);
        assert!(!dir.exists());
        assert_eq!(
            s.withdrawn("dev", &rec).unwrap().as_deref(),
            Some(&b"{\"notice\":1}"[..])
        );
        let gone = |r: Result<(), StorageError>| match r {
            Err(StorageError::Withdrawn(n)) => assert_eq!(n, b"{\"notice\":1}"),
            other => panic!("{other:?}"),
        };
        gone(s.status("dev", &rec).map(|_| ()));
        gone(s.begin("dev", &rec, "frag-000000.nfx").map(|_| ()));
        gone(s.complete("dev", &rec, &manifest, &pki.custody).map(|_| ()));
        assert!(s.list("dev").unwrap().is_empty());
        assert_eq!(s.withdrawn("dev", "other").unwrap(), None);

        // A crash after the key records went and before the rest: the next start finishes it,
        // and a withdrawal without a directory (nothing had arrived) is nothing to finish.
        let s = FsStorage::open(&d.path().join("srv2"), 1 << 20).unwrap();
        let (rec2, _) = uploaded_recording(&d.path().join("second"), &s, 2, &signer);
        let dir2 = d.path().join("srv2/dev").join(&rec2);
        fs::create_dir_all(d.path().join("srv2/dev").join(WITHDRAWN_DIR)).unwrap();
        write_whole(&s.notice_path("dev", &rec2), b"{}", Place::Replace).unwrap();
        for f in fs::read_dir(&dir2).unwrap() {
            let p = f.unwrap().path();
            if p.to_string_lossy().ends_with(".key") {
                fs::remove_file(p).unwrap();
            }
        }
        write_whole(
            &s.notice_path("dev", "never-arrived"),
            b"{}",
            Place::Replace,
        )
        .unwrap();
        let finished = s.finish_deletions().unwrap();
        let done: Vec<(&str, Option<Shredded>)> = finished
            .iter()
            .map(|f| (f.id.as_str(), *f.outcome.as_ref().unwrap()))
            .collect();
        assert_eq!(done.len(), 2, "{finished:?}");
        let shredded = done.iter().find(|(id, _)| *id == rec2).unwrap().1.unwrap();
        assert_eq!(shredded.key_records, 0);
        assert!(shredded.other_files >= 3);
        assert!(done.contains(&("never-arrived", None)));
        assert!(!dir2.exists());
        assert!(
            s.finish_deletions()
                .unwrap()
                .iter()
                .all(|f| matches!(f.outcome, Ok(None)))
        );

        // Temporary files a crash left in the marker directories go once they are stale; a
        // fresh one (another process writing it now) stays.
        let marks = d.path().join("srv2/dev").join(WITHDRAWN_DIR);
        let (stale, fresh) = (
            marks.join(".x.json.ab12.tmp"),
            marks.join(".y.json.cd34.tmp"),
        );
        fs::write(&stale, b"{").unwrap();
        fs::write(&fresh, b"{").unwrap();
        fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
            .unwrap();
        s.finish_deletions().unwrap();
        assert!(!stale.exists());
        assert!(fresh.exists());
    }

    #[test]
    fn racing_manifests_store_one_and_give_exactly_it_a_receipt() {
        for trial in 0..3 {
            let d = tempfile::tempdir().unwrap();
            let s = Arc::new(FsStorage::open(&d.path().join("srv"), 1 << 20).unwrap());
            let pki = Arc::new(TestPki::new());
            let (rec, manifest) = uploaded_recording(d.path(), &s, 4, &pki.device("dev"));
            // Twenty manifests at once: the signed one ten times, and ten others (the same JSON
            // with trailing spaces, which the signature does not cover).
            let n = 20;
            let barrier = Arc::new(Barrier::new(n));
            let results: Vec<(Vec<u8>, Completed)> = (0..n)
                .map(|i| {
                    let (s, rec, barrier) = (s.clone(), rec.clone(), barrier.clone());
                    let pki = pki.clone();
                    let mut m = manifest.clone();
                    m.extend(std::iter::repeat_n(b' ', i % 2));
                    std::thread::spawn(move || {
                        barrier.wait();
                        let r = s.complete("dev", &rec, &m, &pki.custody);
                        (m, r)
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect();
            let winners: Vec<_> = results
                .iter()
                .filter(|(_, r)| matches!(r, Ok((_, Stored::Created))))
                .collect();
            let outcomes: Vec<String> = results
                .iter()
                .map(|(_, r)| match r {
                    Ok((_, st)) => format!("{st:?}"),
                    Err(e) => e.to_string(),
                })
                .collect();
            assert_eq!(winners.len(), 1, "trial {trial}: {outcomes:#?}");
            let (won, receipt) = (&winners[0].0, &winners[0].1.as_ref().unwrap().0);
            assert_eq!(won, &manifest, "trial {trial}: an unsigned manifest won");
            for (m, r) in &results {
                if m == &manifest {
                    assert!(
                        matches!(r, Ok((got, _)) if got == receipt),
                        "trial {trial}: {outcomes:#?}"
                    );
                } else {
                    assert!(
                        matches!(
                            r,
                            Err(StorageError::Conflict(_) | StorageError::Manifest(_))
                        ),
                        "trial {trial}: {outcomes:#?}"
                    );
                }
            }
            let dir = d.path().join("srv/dev").join(&rec);
            assert_eq!(&fs::read(dir.join("manifest.json")).unwrap(), won);
            assert_eq!(&fs::read(dir.join("receipt.json")).unwrap(), receipt);
            let (_, r) = neoflix_format::SignedReceipt::from_json(receipt).unwrap();
            assert_eq!(r.manifest_sha256, neoflix_format::sha256_hex(won));
            assert_eq!(r.signed_by, "dev");
        }
    }

    #[test]
    fn only_a_manifest_signed_by_the_uploading_device_gets_a_receipt() {
        let d = tempfile::tempdir().unwrap();
        let s = FsStorage::open(&d.path().join("srv"), 1 << 20).unwrap();
        let pki = TestPki::new();
        // Signed by room-2's genuine certificate, uploaded by (and naming) "dev".
        let (rec, manifest) = uploaded_recording(d.path(), &s, 2, &pki.device("room-2"));
        let err = s
            .complete("dev", &rec, &manifest, &pki.custody)
            .unwrap_err();
        assert!(err.to_string().contains("signed by room-2"), "{err}");
        // One byte of the manifest changed (the stop reason).
        let edited = String::from_utf8(manifest.clone())
            .unwrap()
            .replace("\"control\"", "\"c0ntrol\"");
        let err = s
            .complete("dev", &rec, edited.as_bytes(), &pki.custody)
            .unwrap_err();
        assert!(
            err.to_string().contains("changed after it was signed"),
            "{err}"
        );
        // No signature at all.
        fs::remove_file(d.path().join("srv/dev").join(&rec).join(SIGNATURE_FILE)).unwrap();
        let err = s
            .complete("dev", &rec, &manifest, &pki.custody)
            .unwrap_err();
        assert!(err.to_string().contains("not signed"), "{err}");
        assert!(
            !d.path()
                .join("srv/dev")
                .join(&rec)
                .join(MANIFEST_FILE)
                .exists()
        );
    }

    #[test]
    fn completion_never_sweeps_a_live_upload() {
        let d = tempfile::tempdir().unwrap();
        let s = FsStorage::open(&d.path().join("srv"), 1 << 20).unwrap();
        let pki = TestPki::new();
        let (rec, manifest) = uploaded_recording(d.path(), &s, 2, &pki.device("dev"));
        // An upload still receiving its body while the manifest lands.
        let mut live = s.begin("dev", &rec, "frag-000050.nfx").unwrap();
        live.write(b"half").unwrap();
        let live_tmp = live.tmp.clone();
        // And what a crash of an earlier server process left: nobody's.
        let dir = d.path().join("srv/dev").join(&rec);
        let stale = dir.join(".frag-000051.nfx.0123456789abcdef.tmp");
        fs::write(&stale, b"crashed").unwrap();
        assert_eq!(
            s.complete("dev", &rec, &manifest, &pki.custody).unwrap().1,
            Stored::Created
        );
        assert!(
            live_tmp.exists(),
            "a live upload's temporary file was swept"
        );
        assert!(!stale.exists(), "a stale temporary file survived");
        // The live upload then ends with a clear refusal, not an I/O error.
        live.write(b" and the rest").unwrap();
        let sha: [u8; 32] = Sha256::digest(b"half and the rest").into();
        assert!(matches!(
            s.commit(live, &sha),
            Err(StorageError::Conflict(_))
        ));
        assert!(!dir.join("frag-000050.nfx").exists());
        assert!(!live_tmp.exists());
    }
}
