//! The object-store backend: recordings in a bucket of an S3-compatible store (StorageGRID,
//! ECS, MinIO, Ceph RGW, Garage), which any number of replicas share. Nothing of a recording
//! touches this server's disk: an upload streams from the box's connection into the store's
//! PUT, a chunk or two at a time.
//!
//! Keys, under the configured prefix:
//! - `{device}/{id}/{name}.{sha256}`: an object, addressed by the digest its PUT was signed
//!   with. Two replicas writing one name at once write the same key with the same bytes, or
//!   different keys: no object is replaced by other content, on a store that ignores
//!   `If-None-Match` too. A key this server did not choose (a retry with other bytes) lies
//!   beside the recording, not in it; completion removes it, deletion takes it with the rest.
//! - `{device}/{id}/manifest.json` and `receipt.json`: stored, in that order, under a lock
//!   every replica honours (the database's, [`super::Exclusive`]), so exactly one manifest is;
//!   not fenced: a replica whose database session drops (and the lock with it) while its
//!   manifest PUT is still on its way.
//! - `{device}/.withdrawn/{id}.json`: the signed withdrawal notice, stored before anything of
//!   the recording is deleted. `{device}/.deleting/{id}`: the marker of a deletion under way.
//!
//! What this trusts: that the bytes under a key are the ones its digest names. A store that
//! checks the signed payload digest (`x-amz-content-sha256`: Garage, MinIO, AWS; tested on
//! Garage) guarantees it; one that does not must not hold recordings, so the server checks at
//! start ([`S3Storage::probe`]) that the store refuses a body that is not the one announced,
//! and takes no upload until it has. The server also hashes what it relays and holds the last
//! chunk back until the hash is right, so a body that is not the announced one never
//! completes a PUT. Key records, being small, are hashed again when read.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use neoflix_format::custody::{MAX_SIGNATURE_BYTES, SIGNATURE_FILE};
use neoflix_format::{FormatError, HEADER_LEN, MANIFEST_FILE, Manifest, Verified};
use neoflix_s3::{BodySender, Bucket, Listed, S3Error};
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;

use super::{
    DELETING_DIR, Exclusive, Finished, Held, MAX_RECEIPT_BYTES, RECEIPT_FILE, Shredded,
    StorageError, Stored, WITHDRAWN_DIR, bad_name, manifest_for, object_name, valid_object_name,
    valid_recording_id,
};
use crate::custody::Custody;

/// The most objects one recording may hold in the store, strays included: a day-long
/// recording of 1-s fragments is some 175 000 (two per fragment), so this bounds a listing
/// without refusing one.
pub const MAX_OBJECTS: usize = 400_000;

/// `{prefix}{device}/{id}/`: where a recording's keys start.
pub fn recording_prefix(prefix: &str, device: &str, id: &str) -> String {
    format!("{prefix}{device}/{id}/")
}

/// The key of object `name` whose SHA-256 is `sha256`.
pub fn object_key(prefix: &str, device: &str, id: &str, name: &str, sha256: &[u8; 32]) -> String {
    format!(
        "{}{name}.{}",
        recording_prefix(prefix, device, id),
        hex::encode(sha256)
    )
}

/// An object's name and lowercase hex digest from its key with the recording's prefix taken
/// off; `None` for anything else (the manifest, the receipt, a key this server did not write).
pub fn parse_object_key(rest: &str) -> Option<(&str, &str)> {
    let (name, sha) = rest.rsplit_once('.')?;
    let hex_digest = sha.len() == 64
        && sha
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (hex_digest && valid_object_name(name)).then_some((name, sha))
}

/// One stored object as a listing found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its key.
    pub key: String,
    /// Its size.
    pub size: u64,
    /// The lowercase hex digest its key carries.
    pub sha256: String,
}

/// Of the objects listed under one name, the one whose digest the manifest names; where none
/// has it, the first listed, which the check then names altered or truncated.
pub fn choose(listed: Vec<Found>, wanted: &str) -> Option<Found> {
    let mut first = None;
    for f in listed {
        if f.sha256 == wanted {
            return Some(f);
        }
        first.get_or_insert(f);
    }
    first
}

/// A recording's objects in the store, as one listing found them, each name the manifest
/// lists resolved by [`choose`]. The check's header and key-record reads wait on the runtime,
/// so it runs on a blocking thread ([`HeldObjects::verify`], or `verify_manifest_in` from one).
pub struct HeldObjects {
    /// Where the objects are.
    bucket: Arc<Bucket>,
    /// The runtime the reads run on.
    rt: Handle,
    /// `{prefix}{device}/{id}/`.
    recording: String,
    /// Name → the object chosen for it.
    objects: HashMap<String, Found>,
    /// Headers of sealed objects and whole key records, read ahead at once
    /// ([`HeldObjects::prefetch`]): one read after another is two round trips per fragment.
    read_ahead: HashMap<String, Vec<u8>>,
    /// A read failed for a reason that may pass (the store unreachable, busy, failing, or an
    /// object listed and gone when read): the check's verdict is then the store's trouble, not
    /// the recording's.
    store_failed: AtomicBool,
}

/// Why an object listed for a recording could not be read, and what to do if it lasts.
const VANISHED: &str = "listed, but gone when read (deleted since, or the store's listing lags its deletions; if this persists, the bucket's index needs repair)";

/// Reads at once while a manifest is checked or a recording deleted.
const AT_ONCE: usize = 16;

/// The largest object read ahead whole: key records are 144 bytes.
const READ_AHEAD_WHOLE: u64 = 4096;

impl HeldObjects {
    /// Lists `device`/`id` once and resolves every name `m` lists.
    pub async fn list(
        bucket: Arc<Bucket>,
        prefix: &str,
        device: &str,
        id: &str,
        m: &Manifest,
    ) -> Result<HeldObjects, S3Error> {
        if !valid_recording_id(id) || !valid_recording_id(device) {
            return Err(S3Error::BadKey {
                key: format!("{}/{}", crate::esc(device), crate::esc(id)),
                why: "not a device and recording id",
            });
        }
        let recording = recording_prefix(prefix, device, id);
        let listed = bucket.list_all(&recording, 1000, MAX_OBJECTS).await?;
        Ok(HeldObjects::from_listing(
            bucket,
            Handle::current(),
            recording,
            &listed,
            m,
        ))
    }

    /// Resolves every name `m` lists among `listed`, the objects under `recording`.
    pub fn from_listing(
        bucket: Arc<Bucket>,
        rt: Handle,
        recording: String,
        listed: &[Listed],
        m: &Manifest,
    ) -> HeldObjects {
        let wanted: HashMap<&str, &str> = m
            .init_segments
            .iter()
            .chain(&m.fragments)
            .flat_map(|e| {
                [
                    (e.file.as_str(), e.sha256.as_str()),
                    (e.key_file.as_str(), e.key_sha256.as_str()),
                ]
            })
            .collect();
        let mut found: HashMap<String, Vec<Found>> = HashMap::new();
        for o in listed {
            let Some((name, sha)) = o.key.strip_prefix(&recording).and_then(parse_object_key)
            else {
                continue;
            };
            if wanted.contains_key(name) {
                found.entry(name.to_string()).or_default().push(Found {
                    key: o.key.clone(),
                    size: o.size,
                    sha256: sha.to_string(),
                });
            }
        }
        let objects = found
            .into_iter()
            .filter_map(|(name, found)| {
                let want = wanted.get(name.as_str()).copied().unwrap_or_default();
                choose(found, want).map(|f| (name, f))
            })
            .collect();
        HeldObjects {
            bucket,
            rt,
            recording,
            objects,
            read_ahead: HashMap::new(),
            store_failed: AtomicBool::new(false),
        }
    }

    /// Reads every sealed object's header and every small object whole, 16 at a
    /// time. A read that fails is left to the check, which reads it again and says why.
    pub async fn prefetch(&mut self) {
        let mut todo: Vec<(String, String, u64)> = self
            .objects
            .iter()
            .map(|(name, f)| (name.clone(), f.key.clone(), f.size))
            .collect();
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.len() < AT_ONCE
                && let Some((name, key, size)) = todo.pop()
            {
                let bucket = self.bucket.clone();
                running.spawn(async move {
                    let read = if size <= READ_AHEAD_WHOLE {
                        bucket.get_small(&key, READ_AHEAD_WHOLE as usize).await
                    } else {
                        bucket.get_range(&key, 0, HEADER_LEN as u32).await
                    };
                    (name, read)
                });
            }
            match running.join_next().await {
                Some(Ok((name, Ok(Some(bytes))))) => {
                    self.read_ahead.insert(name, bytes);
                }
                Some(_) => {}
                None => return,
            }
        }
    }

    /// Checks `m` against these objects on a blocking thread. `Err(Ok(_))`: the recording is
    /// wrong; `Err(Err(_))`: the store failed during the check, and trying again may succeed.
    pub async fn verify(self, m: Manifest) -> Result<Verified, Result<FormatError, String>> {
        tokio::task::spawn_blocking(move || self.verify_here(m))
            .await
            .map_err(|e| Err(e.to_string()))?
    }

    /// [`HeldObjects::verify`] on this thread, which must be one that may block.
    pub fn verify_here(&self, m: Manifest) -> Result<Verified, Result<FormatError, String>> {
        match neoflix_format::verify_manifest_in(self, m) {
            Err(e) if self.store_failed.load(Ordering::Relaxed) => Err(Err(e.to_string())),
            r => r.map_err(Ok),
        }
    }

    /// The keys chosen for the manifest's names.
    fn chosen(&self) -> impl Iterator<Item = &str> {
        self.objects.values().map(|f| f.key.as_str())
    }

    fn find(&self, name: &str) -> std::io::Result<&Found> {
        self.objects
            .get(name)
            .ok_or_else(|| std::io::ErrorKind::NotFound.into())
    }

    fn io(&self, e: S3Error) -> std::io::Error {
        // Whatever the store answered, the read failed: that says nothing about the recording
        // (a clock skew, a key that lost its rights, an object deleted meanwhile).
        self.store_failed.store(true, Ordering::Relaxed);
        std::io::Error::other(e.to_string())
    }

    fn vanished(&self) -> std::io::Error {
        // Listed, and gone when read: deleted since, or a listing that was behind the store's
        // deletions (Garage's is, for a moment, under load). Only a fresh listing says whether
        // the recording lacks it, so the check is the store's trouble and is made again.
        self.store_failed.store(true, Ordering::Relaxed);
        std::io::Error::new(std::io::ErrorKind::NotFound, VANISHED)
    }
}

impl neoflix_format::Objects for HeldObjects {
    fn size(&self, name: &str) -> std::io::Result<u64> {
        self.find(name).map(|o| o.size)
    }

    /// The digest in the key: the one its PUT was signed with (see the module's trust note).
    fn size_and_sha256(&self, name: &str) -> std::io::Result<(u64, String)> {
        self.find(name).map(|o| (o.size, o.sha256.clone()))
    }

    fn header(&self, name: &str) -> std::io::Result<[u8; HEADER_LEN]> {
        let key = &self.find(name)?.key;
        if let Some(ahead) = self.read_ahead.get(name)
            && let Some(head) = ahead.get(..HEADER_LEN)
        {
            return head
                .try_into()
                .map_err(|_| std::io::ErrorKind::UnexpectedEof.into());
        }
        let bytes = self
            .rt
            .block_on(self.bucket.get_range(key, 0, HEADER_LEN as u32))
            .map_err(|e| self.io(e))?
            .ok_or_else(|| self.vanished())?;
        bytes
            .try_into()
            .map_err(|_| std::io::ErrorKind::UnexpectedEof.into())
    }

    fn read_small(&self, name: &str, max: u64) -> std::io::Result<Vec<u8>> {
        let o = self.find(name)?;
        if o.size > max {
            return Err(std::io::Error::other(format!(
                "{} bytes, more than {max}",
                o.size
            )));
        }
        let cap = usize::try_from(max).unwrap_or(usize::MAX);
        let bytes = match self.read_ahead.get(name) {
            Some(b) if b.len() as u64 == o.size => b.clone(),
            _ => self
                .rt
                .block_on(self.bucket.get_small(&o.key, cap))
                .map_err(|e| self.io(e))?
                .ok_or_else(|| self.vanished())?,
        };
        // Small enough to hash again: what is read is what the key says.
        if neoflix_format::sha256_hex(&bytes) != o.sha256 {
            return Err(std::io::Error::other(
                "its content is not the one its key names: the store did not check the upload's digest",
            ));
        }
        Ok(bytes)
    }

    fn manifest_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "{}{}",
            self.recording,
            neoflix_format::MANIFEST_FILE
        ))
    }
}

/// Rooms one bucket's listing may name: a bound on a listing, not a size a group reaches.
const MAX_ROOMS: usize = 100_000;

/// Recordings one room's listing may name.
const MAX_RECORDINGS: usize = 1_000_000;

/// Chunks of an upload on their way to the store, besides the one held back: with the
/// server's 256 KiB batches, about a megabyte per upload.
const IN_FLIGHT: usize = 2;

/// Batches one upload holds: the one being received, the one held back, those in the
/// channel, and the one the HTTP client is writing.
pub const BATCHES_PER_UPLOAD: u64 = IN_FLIGHT as u64 + 3;

/// Signatures of one recording tried against its manifest: a box uploads one, a box that
/// signed again after a crash a second.
const MAX_SIGNATURES: usize = 8;

/// Whether `rest`, a key with its recording's prefix taken off, is a key record's
/// (`init-000.key.{sha}`, `frag-000001.key.{sha}`).
fn is_key_record(rest: &str) -> bool {
    parse_object_key(rest).is_some_and(|(name, _)| name.ends_with(".key"))
}

/// The keys right under `rec` (nothing deeper: with `prefix = ""` beside another server's
/// `"unit-b/"`, `unit-b/room-1/` is not a recording of this server's, and what is under it
/// is never touched), each with the rest of its key.
fn children<'a>(rec: &str, listed: &'a [Listed]) -> impl Iterator<Item = (&'a Listed, &'a str)> {
    let rec = rec.to_string();
    listed.iter().filter_map(move |o| {
        let rest = o.key.strip_prefix(rec.as_str())?;
        (!rest.is_empty() && !rest.contains('/')).then_some((o, rest))
    })
}

/// The first of `candidates` (key, digest its key names) that `get` reads and `check`
/// accepts, with its key. When none is accepted: the store's trouble if every one listed was
/// gone when read (a fresh listing decides), else the recording's (unsigned, or why the last
/// one read was refused).
fn first_signed<'a, T>(
    candidates: Vec<(&'a str, &'a str)>,
    get: impl Fn(&str) -> Result<Option<Vec<u8>>, StorageError>,
    check: impl Fn(&[u8]) -> Result<T, neoflix_format::SignatureError>,
) -> Result<(T, String), StorageError> {
    let mut why = None;
    let mut vanished = false;
    for (key, sha) in candidates {
        let Some(sig) = get(key)? else {
            vanished = true;
            continue;
        };
        if neoflix_format::sha256_hex(&sig) != sha {
            why = Some("the stored signature is not the one its key names".to_string());
            continue;
        }
        match check(&sig) {
            Ok(t) => return Ok((t, key.to_string())),
            Err(e) => why = Some(e.to_string()),
        }
    }
    if vanished && why.is_none() {
        // Only a listing that was behind says it is signed: a fresh one tells.
        return Err(StorageError::Store(format!("{SIGNATURE_FILE}: {VANISHED}")));
    }
    Err(StorageError::Manifest(match why {
        Some(why) => format!("signature: {why}"),
        None => format!(
            "the recording is not signed: upload {SIGNATURE_FILE} (the box's signature over this manifest) first; a box without a signing identity cannot deliver to this server"
        ),
    }))
}

fn store_error(e: S3Error) -> StorageError {
    match e {
        S3Error::BadKey { key, why } => StorageError::BadName(format!("{key}: {why}")),
        e => StorageError::Store(e.to_string()),
    }
}

/// What the start-up probe found of the store and the key: what the server cannot work with
/// (every such thing, to be named at once), the first busy or unreachable answer, and the
/// probe's object where it could not be deleted. (Pure: the probe does the requests.)
#[derive(Debug, Default)]
struct Findings {
    wrong: Vec<String>,
    transient: Option<S3Error>,
    left: Vec<String>,
}

impl Findings {
    /// A request of the probe's that failed: `what` it asked, the `permission` an S3 policy
    /// grants that by, and `why` the server needs it.
    fn failed(&mut self, e: S3Error, what: &str, permission: &str, why: &str) {
        match e {
            e if e.is_transient() => {
                self.transient.get_or_insert(e);
            }
            S3Error::Refused {
                status: 401 | 403,
                ref code,
                ..
            } => self.wrong.push(format!(
                "the key {}may not {what} ({permission}), which the server needs since {why}: grant it ({e})",
                if code == "AccessDenied" { "" } else { "probably " }
            )),
            e => self.wrong.push(format!(
                "the store failed to {what} ({e}), which the server needs since {why}"
            )),
        }
    }

    /// A PUT of the probe's object refused or failed.
    fn not_written(&mut self, e: S3Error) {
        self.failed(
            e,
            "write an object",
            "s3:PutObject",
            "boxes upload recordings into it",
        );
    }

    /// The DELETE of the probe's object at `key`.
    fn deleted(&mut self, key: &str, deleted: Result<(), S3Error>) {
        if let Err(e) = deleted {
            self.left.push(key.to_string());
            self.failed(
                e,
                "delete an object",
                "s3:DeleteObject",
                "withdrawals and retention must delete",
            );
        }
    }

    /// The probe's reading back (of `body`), listing and deletion of its object at `key`.
    fn round_trip(
        &mut self,
        key: &str,
        body: &[u8],
        read: Result<Option<Vec<u8>>, S3Error>,
        listed: Result<(), S3Error>,
        deleted: Result<(), S3Error>,
    ) {
        match read {
            Ok(Some(got)) if got == body => {}
            // (The read's one unreadable answer is a body longer than the one written.)
            Ok(Some(_)) | Err(S3Error::Answer { .. }) => self.wrong.push(
                "the object the probe wrote was read back with other bytes: the server cannot keep recordings on a store that changes them".into(),
            ),
            // A store whose reads can miss what it has acknowledged would make a completion
            // judge a recording on what is not there yet.
            Ok(None) => self.wrong.push(
                "the object the probe had just written was not found when read back: the store is not read-after-write consistent (on StorageGRID, set the bucket's consistency to strong-global, or strong-site with one site)".into(),
            ),
            Err(e) => self.failed(
                e,
                "read an object back",
                "s3:GetObject",
                "completions, reviews and exports read recordings",
            ),
        }
        if let Err(e) = listed {
            self.failed(
                e,
                "list the bucket",
                "s3:ListBucket",
                "completions and deletions list a recording's objects",
            );
        }
        self.deleted(key, deleted);
    }

    /// `Ok(Err)` naming everything the server cannot work with; else `Err` to ask again
    /// later when the store was busy or out of reach; else `Ok(Ok)`. An object left behind
    /// alone is no reason to refuse the store (it is logged).
    fn verdict(self, place: &str) -> Result<Result<(), String>, StorageError> {
        let keys: Vec<String> = self.left.iter().map(|k| format!("{k:?}")).collect();
        let (objects, them) = match keys.len() {
            1 => ("object", "it"),
            _ => ("objects", "them"),
        };
        if !self.wrong.is_empty() {
            let by_hand = match keys.is_empty() {
                true => String::new(),
                false => format!(
                    "; the probe's {objects} {} may be left in the bucket: delete {them} by hand",
                    keys.join(", ")
                ),
            };
            return Ok(Err(format!("{place}: {}{by_hand}", self.wrong.join("; "))));
        }
        let asked_again = match keys.is_empty() {
            true => String::new(),
            false => format!(
                "; the probe's {objects} {} may be left in the bucket: the server deletes {them} before it writes anything more when it asks the store again, else delete {them} by hand",
                keys.join(", ")
            ),
        };
        match self.transient {
            Some(e) => Err(StorageError::Store(format!("{e}{asked_again}"))),
            None => Ok(Ok(())),
        }
    }
}

/// How many objects of failed probes are remembered to be deleted later.
const MAX_LEFT_PROBES: usize = 16;

/// The recordings of a bucket.
pub struct S3Storage {
    bucket: Arc<Bucket>,
    /// Empty, or ending in `/`.
    prefix: String,
    max_object: u64,
    /// The runtime the store's requests run on: the server's, or one of this storage's own
    /// for the admin's commands, which have none.
    rt: Handle,
    own_runtime: Option<tokio::runtime::Runtime>,
    /// Held while a recording's manifest is stored by this process; the database's lock
    /// ([`Exclusive`]) keeps other replicas out.
    locks: Vec<Mutex<()>>,
    exclusive: OnceLock<Arc<dyn Exclusive>>,
    /// The store passed [`S3Storage::probe`]: until then no upload is taken.
    checked: AtomicBool,
    /// Objects of earlier probes that could not be deleted (at most [`MAX_LEFT_PROBES`]).
    left_probes: Mutex<Vec<String>>,
    /// The slowest a box may send (`limits.min_bytes_per_sec`, after `rate_grace_secs`): an
    /// upload's PUT, which relays it, waits as long as the box may take.
    pace: AtomicU64,
    grace_secs: AtomicU64,
    place: String,
}

impl Drop for S3Storage {
    fn drop(&mut self) {
        // A runtime of its own is dropped where dropping may block (the admin's commands).
        if let Some(rt) = self.own_runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// An object streaming to the store.
pub struct S3Upload {
    device: String,
    id: String,
    key: String,
    /// The PUT's body; `None` when the object is already stored (the body is taken and
    /// checked, and nothing is sent).
    sender: Option<BodySender>,
    put: Option<tokio::task::JoinHandle<Result<neoflix_s3::Put, S3Error>>>,
    /// The last chunk, sent only once the whole body's digest is the announced one.
    held: Option<Bytes>,
    hasher: Sha256,
    size: u64,
    len: u64,
    max: u64,
    rt: Handle,
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        // Not committed: the PUT is given up before the last chunk, so the store keeps
        // nothing of it.
        if let Some(put) = self.put.take() {
            put.abort();
        }
    }
}

impl S3Upload {
    /// Appends a chunk of the body; blocks while the store is behind.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        if chunk.is_empty() {
            // Held back, an empty chunk would let the last real one go unchecked.
            return Ok(());
        }
        let size = self
            .size
            .checked_add(chunk.len() as u64)
            .ok_or(StorageError::TooLarge(self.max))?;
        if size > self.max {
            return Err(StorageError::TooLarge(self.max));
        }
        if size > self.len {
            return Err(StorageError::Io(std::io::Error::other(
                "the body is longer than its Content-Length",
            )));
        }
        self.size = size;
        self.hasher.update(chunk);
        if self.sender.is_some()
            && let Some(before) = self.held.replace(Bytes::copy_from_slice(chunk))
        {
            self.send(before)?;
        }
        Ok(())
    }

    /// Bytes received so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn send(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        let Some(tx) = &self.sender else {
            return Ok(());
        };
        if tx.blocking_send(chunk).is_ok() {
            return Ok(());
        }
        // The request ended early: the store refused it, or it failed. Its own words say why.
        self.sender = None;
        Err(match self.put.take().map(|p| self.rt.block_on(p)) {
            Some(Ok(Err(e))) => store_error(e),
            _ => StorageError::Store("the upload to the object store ended early".into()),
        })
    }

    /// Ends the upload: the last chunk only if the body is the announced one, then the
    /// store's answer.
    fn finish(mut self, expected: &[u8; 32]) -> Result<Stored, StorageError> {
        let got: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        if &got != expected || self.size != self.len {
            if let Some(tx) = self.sender.take() {
                tx.abort("the body is not the one announced");
            }
            // Drop aborts the PUT as well.
            return Err(if &got != expected {
                StorageError::Digest(hex::encode(got))
            } else {
                StorageError::Io(std::io::Error::other(
                    "the body is shorter than its Content-Length",
                ))
            });
        }
        if let Some(last) = self.held.take() {
            self.send(last)?;
        }
        self.sender = None;
        let Some(put) = self.put.take() else {
            return Ok(Stored::Same);
        };
        match self.rt.block_on(put) {
            Ok(Ok(_)) => Ok(Stored::Created),
            Ok(Err(e)) => Err(store_error(e)),
            Err(e) => Err(StorageError::Store(format!("the upload task failed: {e}"))),
        }
    }
}

impl S3Storage {
    /// The bucket `[storage]` names, with its credentials and CA read now. Made inside the
    /// server's runtime, it uses it; made outside one (the admin's commands), a small one of
    /// its own.
    pub fn configured(cfg: &crate::config::S3Config, max_object: u64) -> anyhow::Result<S3Storage> {
        use anyhow::Context;
        let access_key_id = match &cfg.access_key_id {
            Some(id) => id.clone(),
            None => std::env::var("AWS_ACCESS_KEY_ID").context(
                "storage.access_key_id is not set, nor AWS_ACCESS_KEY_ID: give the object store's access key",
            )?,
        };
        let secret = match &cfg.secret_access_key_file {
            Some(file) => {
                let text = neoflix_format::files::read_regular(file, 4096).with_context(|| {
                    format!("storage.secret_access_key_file {}", file.display())
                })?;
                let text = String::from_utf8(text).map_err(|_| {
                    anyhow::anyhow!(
                        "storage.secret_access_key_file {}: not UTF-8 text",
                        file.display()
                    )
                })?;
                // An editor's final newline is not the secret's.
                text.trim_end_matches(['\r', '\n']).to_string()
            }
            None => std::env::var("AWS_SECRET_ACCESS_KEY").context(
                "storage.secret_access_key_file is not set, nor AWS_SECRET_ACCESS_KEY: give the access key's secret",
            )?,
        };
        let tls = match &cfg.ca {
            Some(ca) => Some(
                neoflix_pki::client_tls(ca, None)
                    .with_context(|| format!("storage.ca {}", ca.display()))?,
            ),
            None => None,
        };
        let bucket = Bucket::new(
            &neoflix_s3::Settings {
                endpoint: cfg.endpoint.clone(),
                bucket: cfg.bucket.clone(),
                region: cfg.region.clone(),
                path_style: cfg.path_style,
            },
            neoflix_s3::Credentials {
                access_key_id,
                secret_access_key: secret.into(),
            },
            tls,
        )?;
        let (rt, own_runtime) = match Handle::try_current() {
            Ok(h) => (h, None),
            Err(_) => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("neoflix-s3")
                    .enable_all()
                    .build()
                    .context("starting the object store's client")?;
                (rt.handle().clone(), Some(rt))
            }
        };
        Ok(S3Storage {
            bucket: Arc::new(bucket),
            prefix: cfg.prefix.clone(),
            max_object,
            rt,
            own_runtime,
            locks: (0..64).map(|_| Mutex::new(())).collect(),
            exclusive: OnceLock::new(),
            checked: AtomicBool::new(false),
            left_probes: Mutex::new(Vec::new()),
            pace: AtomicU64::new(4096),
            grace_secs: AtomicU64::new(10),
            place: crate::config::StorageBackend::S3(Box::new(cfg.clone())).describe(),
        })
    }

    /// The bucket, for messages.
    pub fn place(&self) -> &str {
        &self.place
    }

    /// Largest accepted object.
    pub fn max_object(&self) -> u64 {
        self.max_object
    }

    /// See [`super::Storage::pace_uploads`].
    pub fn pace_uploads(&self, min_bytes_per_sec: u64, grace: std::time::Duration) {
        self.pace.store(min_bytes_per_sec.max(1), Ordering::Relaxed);
        self.grace_secs.store(grace.as_secs(), Ordering::Relaxed);
    }

    /// See [`super::Storage::share_lock`].
    pub fn share_lock(&self, lock: Arc<dyn Exclusive>) {
        let _ = self.exclusive.set(lock);
    }

    /// Checks the bucket is there and usable with the key (HEAD on the bucket).
    pub fn check(&self) -> Result<(), StorageError> {
        self.rt.block_on(self.bucket.check()).map_err(store_error)
    }

    /// Checks that the store refuses a body that is not the one its request was signed for
    /// (what makes a key's digest the truth about its content), that its bucket keeps no old
    /// versions, and that the key may write, read back, list and delete. `Ok` once all of
    /// that held (uploads are taken from then on); `Ok(Err)` naming what to change where no
    /// retry mends it; a transient error when the store could not be asked (also a bucket
    /// that is not there or refuses the key at all: a clock not yet set at boot is refused so
    /// too).
    pub fn probe(&self) -> Result<Result<(), String>, StorageError> {
        // The bucket and the key first: a 400 from a store that cannot be used at all is no
        // proof of anything.
        self.check()?;
        // A store whose DELETEs keep failing would otherwise gather a probe object each time
        // it is asked again.
        let mut found = Findings::default();
        let left = self.delete_left_probes();
        if !left.is_empty() {
            for (key, e) in left {
                found.deleted(&key, Err(e));
            }
            return found.verdict(&self.place);
        }
        // A deletion must delete: a versioned bucket keeps every key record it "deleted". No
        // object is written to one, nor to one whose versioning could not be read.
        match self.rt.block_on(self.bucket.versioning()) {
            Ok(neoflix_s3::Versioning::Never) => {}
            Ok(v) => {
                return Ok(Err(format!(
                    "{}: the bucket's versioning is {v:?}: a withdrawal or retention deletion would leave every key record and sealed object behind as an old version; use a bucket that never had versioning (nor Object Lock)",
                    self.place
                )));
            }
            // A key kept to the least it needs may lack this one: no retry gives it.
            Err(e) => found.failed(
                e,
                "read the bucket's versioning",
                "s3:GetBucketVersioning",
                "it checks that deletions delete",
            ),
        }
        if found.transient.is_some() || !found.wrong.is_empty() {
            return found.verdict(&self.place);
        }
        let mut suffix = [0u8; 8];
        let _ = getrandom::fill(&mut suffix);
        let key = format!("{}.probe/{}", self.prefix, hex::encode(suffix));
        // Asked after as an upload asks after its key before the PUT: a store that then keeps
        // answering "not there" to reads of it (StorageGRID's read-after-new-write) may show
        // it below.
        let _ = self.rt.block_on(self.bucket.head(&key));
        let body = b"neoflix: a body that is not the one announced";
        let announced: [u8; 32] = Sha256::digest(b"the one announced").into();
        let put = self.rt.block_on(self.bucket.put(
            &key,
            body.to_vec().into(),
            body.len() as u64,
            &announced,
            false,
        ));
        match put {
            // What AWS, MinIO and Ceph (XAmzContentSHA256Mismatch, BadDigest) and Garage
            // (InvalidDigest) answer a payload that is not the signed one; any other refusal
            // proves nothing about the check.
            Err(S3Error::Refused {
                status: 400, code, ..
            }) if matches!(
                code.as_str(),
                "XAmzContentSHA256Mismatch" | "BadDigest" | "InvalidDigest"
            ) => {}
            Err(e @ S3Error::Refused { status: 400, .. }) => {
                found.wrong.push(format!(
                    "a body that is not the one announced was refused, but not for its digest ({e}); the server cannot tell whether the store checks x-amz-content-sha256"
                ));
                return found.verdict(&self.place);
            }
            Err(e) => return self.probe_not_written(&key, e, found),
            Ok(_) => {
                found.wrong.push("it kept a body that was not the one its request was signed for: it does not check x-amz-content-sha256, so a damaged upload could be stored as a good one; recordings cannot be kept there".into());
                let deleted = self.delete_probe(&key);
                found.deleted(&key, deleted);
                return found.verdict(&self.place);
            }
        }
        // And the same body announced rightly is taken: the refusal was the digest's.
        let right: [u8; 32] = Sha256::digest(body).into();
        if let Err(e) = self.rt.block_on(self.bucket.put(
            &key,
            body.to_vec().into(),
            body.len() as u64,
            &right,
            false,
        )) {
            return self.probe_not_written(&key, e, found);
        }
        // Then every other thing the server does with the key, so that a key short of a
        // permission stops the server here, naming it, rather than failing a completion, a
        // review or a withdrawal later. The probe's object goes whatever the verdict.
        let read = self
            .rt
            .block_on(self.bucket.get_small(&key, body.len() + 1));
        // Only whether the key may list: what the page holds is not looked at, since a
        // listing may lag the PUT.
        let listed = self
            .rt
            .block_on(self.bucket.list(&key, None, None, 1))
            .map(|_| ());
        let deleted = self.delete_probe(&key);
        found.round_trip(&key, body, read, listed, deleted);
        let verdict = found.verdict(&self.place);
        if matches!(verdict, Ok(Ok(()))) {
            self.checked.store(true, Ordering::Relaxed);
        }
        verdict
    }

    /// The verdict on a probe whose PUT of `key` failed with `e`.
    fn probe_not_written(
        &self,
        key: &str,
        e: S3Error,
        mut found: Findings,
    ) -> Result<Result<(), String>, StorageError> {
        // A PUT cut off on its way, or answered with something unreadable, may have stored the
        // object all the same; a refused one stored nothing.
        let maybe_stored = e.is_transient() || matches!(e, S3Error::Answer { .. });
        found.not_written(e);
        if maybe_stored {
            let deleted = self.delete_probe(key);
            found.deleted(key, deleted);
        }
        found.verdict(&self.place)
    }

    /// Deletes the probe's object at `key`; one that could not be is logged, and tried again
    /// at the next probe of this process (which writes nothing new until it is gone).
    fn delete_probe(&self, key: &str) -> Result<(), S3Error> {
        let r = self.rt.block_on(self.bucket.delete(key));
        if let Err(e) = &r {
            log::warn!(storage = crate::esc(&self.place).as_str(), key = crate::esc(key).as_str(), error = crate::esc(&e.to_string()).as_str(); "the probe's object may be left in the bucket: deleted before anything more is written if the store is asked again, else to be deleted by hand");
            let mut left = self.left_probes.lock().unwrap_or_else(|e| e.into_inner());
            if left.len() < MAX_LEFT_PROBES {
                left.push(key.to_string());
            }
        }
        r
    }

    /// Deletes what earlier probes could not; what still cannot be is kept, and returned
    /// with why.
    fn delete_left_probes(&self) -> Vec<(String, S3Error)> {
        let left = std::mem::take(&mut *self.left_probes.lock().unwrap_or_else(|e| e.into_inner()));
        let mut still = Vec::new();
        for key in left {
            if let Err(e) = self.rt.block_on(self.bucket.delete(&key)) {
                log::warn!(storage = crate::esc(&self.place).as_str(), key = crate::esc(&key).as_str(), error = crate::esc(&e.to_string()).as_str(); "an earlier probe's object still cannot be deleted");
                self.left_probes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(key.clone());
                still.push((key, e));
            }
        }
        still
    }

    fn rec(&self, device: &str, id: &str) -> Result<String, StorageError> {
        if !valid_recording_id(device) {
            return Err(bad_name("device", device));
        }
        if !valid_recording_id(id) {
            return Err(bad_name("recording id", id));
        }
        Ok(recording_prefix(&self.prefix, device, id))
    }

    fn notice_key(&self, device: &str, id: &str) -> String {
        format!("{}{device}/{WITHDRAWN_DIR}/{id}.json", self.prefix)
    }

    fn marker_key(&self, device: &str, id: &str) -> String {
        format!("{}{device}/{DELETING_DIR}/{id}", self.prefix)
    }

    fn get_small(&self, key: &str, max: u64) -> Result<Option<Vec<u8>>, StorageError> {
        let cap = usize::try_from(max).unwrap_or(usize::MAX);
        self.rt
            .block_on(self.bucket.get_small(key, cap))
            .map_err(store_error)
    }

    fn put_small(&self, key: &str, bytes: &[u8]) -> Result<(), StorageError> {
        let sha: [u8; 32] = Sha256::digest(bytes).into();
        self.rt
            .block_on(
                self.bucket
                    .put(key, bytes.to_vec().into(), bytes.len() as u64, &sha, false),
            )
            .map(|_| ())
            .map_err(store_error)
    }

    fn list_all(&self, prefix: &str) -> Result<Vec<Listed>, StorageError> {
        self.rt
            .block_on(self.bucket.list_all(prefix, 1000, MAX_OBJECTS))
            .map_err(store_error)
    }

    /// The keys of the recording at `rec`: those right under it ([`children`]).
    fn recording_keys(&self, rec: &str) -> Result<Vec<Listed>, StorageError> {
        let listed = self.list_all(rec)?;
        Ok(children(rec, &listed).map(|(o, _)| o.clone()).collect())
    }

    /// The "directories" right under `prefix`, without it or the trailing `/`.
    fn names_under(&self, prefix: &str, max: usize) -> Result<Vec<String>, StorageError> {
        let stuck = || StorageError::Store(format!("the listing of {prefix} does not go forward"));
        self.rt.block_on(async {
            let mut names: Vec<String> = Vec::new();
            let mut next: Option<String> = None;
            // Every page but the last moves on by an object or a name, each in key order (a
            // page lists its objects and its names apart, so the two are not compared): a
            // store that goes round in circles (or answers empty pages) is given up.
            let (mut last_object, mut last_name) = (String::new(), String::new());
            // Pages that bring nothing new, in a row: some stores repeat a name at a page's
            // edge, or answer an empty page while they skip what they hide (MinIO has).
            let mut idle = 0u32;
            loop {
                let page = self
                    .bucket
                    .list(prefix, Some("/"), next.as_deref(), 1000)
                    .await
                    .map_err(store_error)?;
                let mut moved = false;
                for o in &page.objects {
                    if o.key < last_object {
                        return Err(stuck());
                    }
                    if o.key > last_object {
                        last_object.clone_from(&o.key);
                        moved = true;
                    }
                }
                for p in page.prefixes {
                    if p < last_name {
                        return Err(stuck());
                    }
                    if p == last_name {
                        continue;
                    }
                    last_name.clone_from(&p);
                    moved = true;
                    if let Some(name) = p.strip_prefix(prefix).and_then(|n| n.strip_suffix('/')) {
                        if names.len() == max {
                            return Err(StorageError::Store(format!(
                                "more than {max} names under {prefix}"
                            )));
                        }
                        names.push(name.to_string());
                    }
                }
                idle = if moved { 0 } else { idle + 1 };
                match page.next {
                    Some(n) if idle <= 3 && next.as_deref() != Some(n.as_str()) => next = Some(n),
                    Some(_) => return Err(stuck()),
                    None => return Ok(names),
                }
            }
        })
    }

    /// The rooms the bucket holds recordings (or notices) of.
    fn rooms(&self) -> Result<Vec<String>, StorageError> {
        Ok(self
            .names_under(&self.prefix, MAX_ROOMS)?
            .into_iter()
            .filter(|r| valid_recording_id(r))
            .collect())
    }

    /// The ids under `{device}/{dir}/` (notices or markers), with `suffix` taken off.
    fn marked(&self, device: &str, dir: &str, suffix: &str) -> Result<Vec<String>, StorageError> {
        let under = format!("{}{device}/{dir}/", self.prefix);
        Ok(self
            .list_all(&under)?
            .into_iter()
            .filter_map(|o| {
                o.key
                    .strip_prefix(&under)
                    .and_then(|n| n.strip_suffix(suffix))
                    .filter(|id| valid_recording_id(id))
                    .map(str::to_string)
            })
            .collect())
    }

    /// Whether each of `ids` of `device` has its manifest stored, [`AT_ONCE`] at a time.
    fn completeness(
        &self,
        device: &str,
        ids: Vec<String>,
    ) -> Result<Vec<(String, bool)>, StorageError> {
        let manifests: Vec<(String, String)> = ids
            .into_iter()
            .map(|id| {
                let key = format!(
                    "{}{MANIFEST_FILE}",
                    recording_prefix(&self.prefix, device, &id)
                );
                (id, key)
            })
            .collect();
        self.rt.block_on(async {
            let mut out = Vec::with_capacity(manifests.len());
            let mut todo = manifests.into_iter();
            let mut running = tokio::task::JoinSet::new();
            loop {
                while running.len() < AT_ONCE
                    && let Some((id, key)) = todo.next()
                {
                    let bucket = self.bucket.clone();
                    running.spawn(async move { (id, bucket.head(&key).await) });
                }
                match running.join_next().await {
                    Some(Ok((id, Ok(h)))) => out.push((id, h.is_some())),
                    Some(Ok((_, Err(e)))) => return Err(store_error(e)),
                    Some(Err(e)) => return Err(StorageError::Store(e.to_string())),
                    None => return Ok(out),
                }
            }
        })
    }

    /// Deletes `keys`, [`AT_ONCE`] at a time.
    fn delete_keys(&self, keys: Vec<String>) -> Result<(), StorageError> {
        self.rt.block_on(async {
            let mut todo = keys.into_iter();
            let mut running = tokio::task::JoinSet::new();
            loop {
                while running.len() < AT_ONCE
                    && let Some(key) = todo.next()
                {
                    let bucket = self.bucket.clone();
                    running.spawn(async move { bucket.delete(&key).await });
                }
                match running.join_next().await {
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(e))) => return Err(store_error(e)),
                    Some(Err(e)) => return Err(StorageError::Store(e.to_string())),
                    None => return Ok(()),
                }
            }
        })
    }

    /// Starts receiving object `name` of recording `id`, to be `len` bytes whose SHA-256 is
    /// `expected`: refused if the recording is withdrawn or complete; the PUT starts now.
    pub fn begin(
        &self,
        device: &str,
        id: &str,
        name: &str,
        expected: &[u8; 32],
        len: Option<u64>,
    ) -> Result<S3Upload, StorageError> {
        object_name(name)?;
        let rec = self.rec(device, id)?;
        let len = len.ok_or(StorageError::LengthRequired)?;
        if len > self.max_object {
            return Err(StorageError::TooLarge(self.max_object));
        }
        if !self.checked.load(Ordering::Relaxed) {
            return Err(StorageError::Store(
                "not checked yet (the server checks at start that the store refuses a damaged body); try again shortly".into(),
            ));
        }
        let key = object_key(&self.prefix, device, id, name, expected);
        let notice = self.notice_key(device, id);
        let manifest = format!("{rec}{MANIFEST_FILE}");
        let (notice, manifest, there) = self.rt.block_on(async {
            tokio::join!(
                self.bucket.get_small(&notice, MAX_SIGNATURE_BYTES as usize),
                self.bucket.head(&manifest),
                self.bucket.head(&key)
            )
        });
        if let Some(n) = notice.map_err(store_error)? {
            return Err(StorageError::Withdrawn(n));
        }
        if manifest.map_err(store_error)?.is_some() {
            return Err(StorageError::Conflict("the recording is complete".into()));
        }
        // Content-addressed: an object of this name and digest already there is this body.
        let already = there.map_err(store_error)?.is_some_and(|h| h.size == len);
        let (sender, put) = if already {
            (None, None)
        } else {
            let (tx, body) = neoflix_s3::channel(IN_FLIGHT);
            let (bucket, key, sha) = (self.bucket.clone(), key.clone(), *expected);
            let pace = self.pace.load(Ordering::Relaxed);
            let grace = std::time::Duration::from_secs(self.grace_secs.load(Ordering::Relaxed));
            let put = self.rt.spawn(async move {
                bucket
                    .put_paced(&key, body, len, &sha, false, pace, grace)
                    .await
            });
            (Some(tx), Some(put))
        };
        Ok(S3Upload {
            device: device.to_string(),
            id: id.to_string(),
            key,
            sender,
            put,
            held: None,
            hasher: Sha256::new(),
            size: 0,
            len,
            max: self.max_object,
            rt: self.rt.clone(),
        })
    }

    /// Finishes an upload: the last chunk goes only if the digest is right; then, as on the
    /// filesystem, a withdrawal that raced it takes the object away again.
    pub fn commit(&self, up: S3Upload, expected: &[u8; 32]) -> Result<Stored, StorageError> {
        let (device, id, key) = (up.device.clone(), up.id.clone(), up.key.clone());
        let stored = up.finish(expected)?;
        if let Some(notice) = self.withdrawn(&device, &id)? {
            self.delete_keys(vec![key])?;
            return Err(StorageError::Withdrawn(notice));
        }
        Ok(stored)
    }

    /// The signed withdrawal notice of a recording, if it was withdrawn.
    pub fn withdrawn(&self, device: &str, id: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.rec(device, id)?;
        self.get_small(&self.notice_key(device, id), MAX_SIGNATURE_BYTES)
    }

    /// See [`super::Storage::withdraw`].
    pub fn withdraw(
        &self,
        device: &str,
        id: &str,
        notice: &[u8],
    ) -> Result<Shredded, StorageError> {
        self.rec(device, id)?;
        if self.withdrawn(device, id)?.is_none() {
            self.put_small(&self.notice_key(device, id), notice)?;
        }
        self.shred(device, id)
    }

    /// See [`super::Storage::delete`].
    pub fn delete(&self, device: &str, id: &str) -> Result<Shredded, StorageError> {
        self.rec(device, id)?;
        let marker = self.marker_key(device, id);
        self.put_small(&marker, b"")?;
        let done = self.shred(device, id)?;
        self.delete_keys(vec![marker])?;
        Ok(done)
    }

    /// Deletes every key of a recording: key records first (each acknowledged by the store
    /// before anything else goes), then the rest; again while keys keep appearing (an upload
    /// racing the deletion also removes its own object, seeing the notice).
    fn shred(&self, device: &str, id: &str) -> Result<Shredded, StorageError> {
        let rec = self.rec(device, id)?;
        let mut done = Shredded::default();
        for round in 0..5u32 {
            if round > 0 {
                // A listing may still show keys deleted a moment ago (Garage under load was
                // seen to): deleting again is harmless, and a pause lets it catch up.
                std::thread::sleep(std::time::Duration::from_millis(200 * u64::from(round)));
            }
            let listed = self.recording_keys(&rec)?;
            if listed.is_empty() {
                return Ok(done);
            }
            let (keys, other): (Vec<Listed>, Vec<Listed>) = listed
                .into_iter()
                .partition(|o| is_key_record(&o.key[rec.len()..]));
            done.key_records += keys.len();
            done.other_files += other.len();
            self.delete_keys(keys.into_iter().map(|o| o.key).collect())?;
            self.delete_keys(other.into_iter().map(|o| o.key).collect())?;
        }
        Err(StorageError::Conflict(format!(
            "{rec}: keys keep appearing while it is deleted"
        )))
    }

    /// See [`super::Storage::finish_deletions`].
    pub fn finish_deletions(&self) -> Result<Vec<Finished>, StorageError> {
        let mut all = Vec::new();
        for device in self.rooms()? {
            for (dir, suffix) in [(WITHDRAWN_DIR, ".json"), (DELETING_DIR, "")] {
                for id in self.marked(&device, dir, suffix)? {
                    let outcome = self
                        .shred(&device, &id)
                        .map(|s| (s != Shredded::default()).then_some(s));
                    let outcome = match (outcome, dir == DELETING_DIR) {
                        (Ok(s), true) => self
                            .delete_keys(vec![self.marker_key(&device, &id)])
                            .map(|()| s),
                        (o, _) => o,
                    };
                    all.push(Finished {
                        device: device.clone(),
                        id,
                        outcome,
                    });
                }
            }
        }
        Ok(all)
    }

    /// The manifest a complete recording was accepted with; `None` while it is not complete.
    pub fn manifest(&self, device: &str, id: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let rec = self.rec(device, id)?;
        self.get_small(
            &format!("{rec}{MANIFEST_FILE}"),
            neoflix_format::manifest::MAX_MANIFEST_BYTES,
        )
    }

    /// The receipt of a complete recording, if one was written.
    pub fn receipt(&self, device: &str, id: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let rec = self.rec(device, id)?;
        self.get_small(&format!("{rec}{RECEIPT_FILE}"), MAX_RECEIPT_BYTES)
    }

    /// Object `name` whose SHA-256 is `sha256` (hex, from the manifest), read whole.
    pub fn read_object(
        &self,
        device: &str,
        id: &str,
        name: &str,
        sha256: &str,
        max: u64,
    ) -> Result<Vec<u8>, StorageError> {
        let rec = self.rec(device, id)?;
        object_name(name)?;
        let digest: [u8; 32] = hex::decode(sha256)
            .ok()
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| bad_name("digest", sha256))?;
        let key = format!("{rec}{name}.{}", hex::encode(digest));
        let bytes = self.get_small(&key, max)?.ok_or(StorageError::NotFound)?;
        // What is served is what the key names, whatever the store did since.
        if <[u8; 32]>::from(Sha256::digest(&bytes)) != digest {
            return Err(StorageError::Store(format!(
                "{key}: its content is not the one its key names"
            )));
        }
        Ok(bytes)
    }

    /// See [`super::Storage::rooms_holding`].
    pub fn rooms_holding(&self, id: &str) -> Result<Vec<String>, StorageError> {
        if !valid_recording_id(id) {
            return Ok(Vec::new());
        }
        let mut holding = Vec::new();
        for room in self.rooms()? {
            let rec = recording_prefix(&self.prefix, &room, id);
            let page = self
                .rt
                .block_on(self.bucket.list(&rec, Some("/"), None, 1000))
                .map_err(store_error)?;
            if !page.objects.is_empty() {
                holding.push(room);
            }
        }
        holding.sort();
        Ok(holding)
    }

    /// See [`super::Storage::recordings`].
    pub fn recordings(&self) -> Result<Vec<Held>, StorageError> {
        let mut all = Vec::new();
        for device in self.rooms()? {
            for (id, complete) in self.list(&device)? {
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
        let rec = self.rec(device, id)?;
        if let Some(notice) = self.withdrawn(device, id)? {
            return Err(StorageError::Withdrawn(notice));
        }
        let listed = self.recording_keys(&rec)?;
        if listed.is_empty() {
            return Err(StorageError::NotFound);
        }
        let complete = listed
            .iter()
            .any(|o| o.key.strip_prefix(&rec) == Some(MANIFEST_FILE));
        let mut names: Vec<String> = listed
            .iter()
            .filter_map(|o| o.key.strip_prefix(&rec).and_then(parse_object_key))
            .map(|(name, _)| name.to_string())
            .collect();
        names.sort();
        names.dedup();
        Ok((names, complete))
    }

    /// The device's recordings, (id, complete): not those withdrawn or being deleted.
    pub fn list(&self, device: &str) -> Result<Vec<(String, bool)>, StorageError> {
        if !valid_recording_id(device) {
            return Err(bad_name("device", device));
        }
        let gone: HashSet<String> = self
            .marked(device, WITHDRAWN_DIR, ".json")?
            .into_iter()
            .chain(self.marked(device, DELETING_DIR, "")?)
            .collect();
        let ids: Vec<String> = self
            .names_under(&format!("{}{device}/", self.prefix), MAX_RECORDINGS)?
            .into_iter()
            .filter(|id| valid_recording_id(id) && !gone.contains(id))
            .collect();
        let mut v = self.completeness(device, ids)?;
        v.sort();
        Ok(v)
    }

    /// See [`super::Storage::complete`]. The check runs without a lock (it changes nothing
    /// but strays); the manifest and receipt are stored under the lock every replica honours.
    pub fn complete(
        &self,
        device: &str,
        id: &str,
        manifest_bytes: &[u8],
        custody: &Custody,
    ) -> Result<(Vec<u8>, Stored), StorageError> {
        let rec = self.rec(device, id)?;
        if let Some(notice) = self.withdrawn(device, id)? {
            // A completion that raced the withdrawal may have left its manifest.
            return Err(self.gone(device, id, notice));
        }
        match self.already_complete(&rec, device, manifest_bytes, custody, false)? {
            Some(done) => return Ok(done),
            // Stored, its receipt lost to a crash: rebuilt under the lock, on the signature
            // that was checked when the manifest was stored (a certificate expired or revoked
            // since does not take the receipt away).
            None if self.manifest(device, id)?.is_some() => {
                return self
                    .under_lock(&rec, || {
                        self.already_complete(&rec, device, manifest_bytes, custody, true)
                    })?
                    .ok_or_else(|| StorageError::Store("a manifest appeared and vanished".into()));
            }
            None => {}
        }
        let m = manifest_for(manifest_bytes, device, id)?;
        let listed = self.recording_keys(&rec)?;
        if listed.is_empty() {
            return Err(StorageError::NotFound);
        }
        // Custody before anything is read on the manifest's word.
        let (signer, sig_key) = self.signature(&rec, &listed, |sig| {
            custody.check(device, manifest_bytes, &m, sig)
        })?;
        let mut held = HeldObjects::from_listing(
            self.bucket.clone(),
            self.rt.clone(),
            rec.clone(),
            &listed,
            &m,
        );
        self.rt.block_on(held.prefetch());
        let v = held.verify_here(m).map_err(|e| match e {
            Ok(wrong) => StorageError::Manifest(wrong.to_string()),
            Err(store) => StorageError::Store(store),
        })?;
        let m = v.manifest;
        let done = self.under_lock(&rec, || {
            self.store_manifest(&rec, device, manifest_bytes, &m, &signer, custody)
        })?;
        // A withdrawal that listed the recording before the manifest was stored missed it:
        // whichever of the two sees the other deletes what is left, as with an object. The
        // manifest is stored by now, so a failure to look is logged, not answered: the box's
        // next question is answered 410 and the deletion finished then.
        match self.withdrawn(device, id) {
            Ok(Some(notice)) => return Err(self.gone(device, id, notice)),
            Ok(None) => {}
            Err(e) => {
                log::warn!(device = crate::esc(device).as_str(), recording = crate::esc(id).as_str(), error = crate::esc(&e.to_string()).as_str(); "cannot look for a withdrawal after storing the manifest");
            }
        }
        if done.1 == Stored::Created {
            // Only now that this manifest is the recording's: objects a box uploaded and then
            // dropped in its crash recovery, and other bytes under a listed name, are not the
            // recording's. A failure leaves them beside it, for its deletion to take.
            let keep: HashSet<&str> = held.chosen().chain([sig_key.as_str()]).collect();
            let (mut stray_keys, mut stray_other) = (Vec::new(), Vec::new());
            for (o, rest) in children(&rec, &listed) {
                if parse_object_key(rest).is_some() && !keep.contains(o.key.as_str()) {
                    if is_key_record(rest) {
                        stray_keys.push(o.key.clone());
                    } else {
                        stray_other.push(o.key.clone());
                    }
                }
            }
            for k in stray_keys.iter().chain(&stray_other) {
                log::warn!(device = crate::esc(device).as_str(), recording = crate::esc(id).as_str(), key = crate::esc(k).as_str(); "removing an object the manifest does not list");
            }
            if let Err(e) = self
                .delete_keys(stray_keys)
                .and_then(|()| self.delete_keys(stray_other))
            {
                log::warn!(device = crate::esc(device).as_str(), recording = crate::esc(id).as_str(), error = crate::esc(&e.to_string()).as_str(); "objects the manifest does not list are left beside it");
            }
        }
        Ok(done)
    }

    /// Runs `f` under this process's lock of the recording and the lock every replica
    /// honours ([`Exclusive`], where one was given).
    fn under_lock<T>(
        &self,
        rec: &str,
        f: impl FnOnce() -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let _local = self.locks[stripe(rec)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(lock) = self.exclusive.get() else {
            return f();
        };
        let mut f = Some(f);
        let mut outcome = None;
        lock.exclusively(&format!("complete {rec}"), &mut || {
            outcome = f.take().map(|f| f());
        })
        .map_err(|why| {
            StorageError::Store(format!(
                "the lock that keeps replicas from storing two manifests: {why}"
            ))
        })?;
        outcome.unwrap_or_else(|| Err(StorageError::Store("the lock ran nothing".into())))
    }

    /// The answer to a request about a withdrawn recording: what is left of it deleted first
    /// (best effort: a failure is logged, and the next start finishes it), then `Withdrawn`,
    /// whatever the deletion did (a conflict would tell the box to store its copy again under
    /// another id).
    fn gone(&self, device: &str, id: &str, notice: Vec<u8>) -> StorageError {
        if let Err(e) = self.shred(device, id) {
            log::warn!(device = crate::esc(device).as_str(), recording = crate::esc(id).as_str(), error = crate::esc(&e.to_string()).as_str(); "a withdrawn recording's remains cannot be deleted now: the next start does it");
        }
        StorageError::Withdrawn(notice)
    }

    /// Under the lock: the manifest unless one is stored, then the receipt.
    fn store_manifest(
        &self,
        rec: &str,
        device: &str,
        manifest_bytes: &[u8],
        m: &Manifest,
        signer: &neoflix_format::Signer,
        custody: &Custody,
    ) -> Result<(Vec<u8>, Stored), StorageError> {
        if let Some(done) = self.already_complete(rec, device, manifest_bytes, custody, true)? {
            return Ok(done);
        }
        // Asked to be written once as well, where the store honours it.
        let key = format!("{rec}{MANIFEST_FILE}");
        let sha: [u8; 32] = Sha256::digest(manifest_bytes).into();
        let put_once = |once| {
            self.rt.block_on(self.bucket.put(
                &key,
                manifest_bytes.to_vec().into(),
                manifest_bytes.len() as u64,
                &sha,
                once,
            ))
        };
        let put = match put_once(true) {
            // A store that does not implement the condition: the lock alone keeps it once.
            Err(S3Error::Refused { status: 501, .. }) => put_once(false),
            Err(S3Error::Refused { code, .. }) if code == "NotImplemented" => put_once(false),
            r => r,
        }
        .map_err(store_error)?;
        if put == neoflix_s3::Put::AlreadyThere {
            return self
                .already_complete(rec, device, manifest_bytes, custody, true)?
                .ok_or_else(|| StorageError::Store("a manifest appeared and vanished".into()));
        }
        // A crash before the receipt is stored leaves a complete recording without one: the
        // box's next PUT of the same manifest gets it rebuilt.
        let receipt = custody
            .receipt(device, manifest_bytes, m, signer)
            .map_err(|e| StorageError::Store(format!("signing the receipt: {e}")))?;
        self.put_small(&format!("{rec}{RECEIPT_FILE}"), &receipt)?;
        Ok((receipt, Stored::Created))
    }

    /// The signature object `check` accepts, with its key: of those listed (a box that
    /// signed again after a crash uploaded a second), at most [`MAX_SIGNATURES`] are tried.
    fn signature<T>(
        &self,
        rec: &str,
        listed: &[Listed],
        check: impl Fn(&[u8]) -> Result<T, neoflix_format::SignatureError>,
    ) -> Result<(T, String), StorageError> {
        let candidates: Vec<(&str, &str)> = listed
            .iter()
            .filter_map(|o| {
                let (name, sha) = o.key.strip_prefix(rec).and_then(parse_object_key)?;
                (name == SIGNATURE_FILE).then_some((o.key.as_str(), sha))
            })
            .take(MAX_SIGNATURES)
            .collect();
        first_signed(
            candidates,
            |key| self.get_small(key, MAX_SIGNATURE_BYTES),
            check,
        )
    }

    /// For a complete recording: the stored receipt if `manifest_bytes` is its manifest
    /// (rebuilt if a crash lost it, when `rebuild`: only under the lock, where no other
    /// replica is between storing the manifest and its receipt), a conflict if not. `None` if
    /// it is not complete, or its receipt is missing and not to be rebuilt here.
    fn already_complete(
        &self,
        rec: &str,
        device: &str,
        manifest_bytes: &[u8],
        custody: &Custody,
        rebuild: bool,
    ) -> Result<Option<(Vec<u8>, Stored)>, StorageError> {
        let Some(existing) = self.get_small(
            &format!("{rec}{MANIFEST_FILE}"),
            neoflix_format::manifest::MAX_MANIFEST_BYTES,
        )?
        else {
            return Ok(None);
        };
        if existing != manifest_bytes {
            return Err(StorageError::Conflict(
                "the recording is complete with another manifest".into(),
            ));
        }
        let receipt_key = format!("{rec}{RECEIPT_FILE}");
        if let Some(r) = self.get_small(&receipt_key, MAX_RECEIPT_BYTES)? {
            return Ok(Some((r, Stored::Same)));
        }
        if !rebuild {
            return Ok(None);
        }
        let m = neoflix_format::verify::parse_manifest(manifest_bytes)
            .map_err(|e| StorageError::Manifest(format!("stored manifest: {e}")))?;
        let listed = self.recording_keys(rec)?;
        let (signer, _) =
            self.signature(rec, &listed, |sig| custody.signer_of(manifest_bytes, sig))?;
        let r = custody
            .receipt(device, manifest_bytes, &m, &signer)
            .map_err(|e| StorageError::Store(format!("rebuilding the receipt: {e}")))?;
        self.put_small(&receipt_key, &r)?;
        Ok(Some((r, Stored::Same)))
    }
}

/// A recording's lock stripe.
fn stripe(rec: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    rec.hash(&mut h);
    (h.finish() % 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(op: &'static str, status: u16, code: &str) -> S3Error {
        S3Error::Refused {
            op,
            key: ".probe/x".into(),
            status,
            code: code.into(),
            message: "no".into(),
        }
    }

    fn denied(op: &'static str) -> S3Error {
        refused(op, 403, "AccessDenied")
    }

    /// The probe's reading back, listing and deletion: a key short of a permission, a store
    /// that fails otherwise, changes bytes or does not find what it just took stops the
    /// server, naming every such thing at once and what the store said; a busy store is asked
    /// again; all well passes.
    #[test]
    fn the_probe_names_each_permission_the_key_lacks() {
        let body = b"probe body";
        let verdict = |read, listed, deleted| {
            let mut found = Findings::default();
            found.round_trip(".probe/x", body, read, listed, deleted);
            found.verdict("bucket b")
        };
        let ok_read = || Ok(Some(body.to_vec()));
        assert_eq!(verdict(ok_read(), Ok(()), Ok(())).unwrap(), Ok(()));
        let answer = || S3Error::Answer {
            op: "GET",
            key: ".probe/x".into(),
            why: "longer than 11 bytes".into(),
        };
        for (read, listed, deleted, says) in [
            (
                Err(denied("GET")),
                Ok(()),
                Ok(()),
                "the key may not read an object back (s3:GetObject)",
            ),
            (
                ok_read(),
                Err(denied("LIST")),
                Ok(()),
                "the key may not list the bucket (s3:ListBucket)",
            ),
            (
                ok_read(),
                Ok(()),
                Err(denied("DELETE")),
                "the key may not delete an object (s3:DeleteObject)",
            ),
            (
                ok_read(),
                Err(refused("LIST", 401, "(no code)")),
                Ok(()),
                "the key probably may not list the bucket",
            ),
            (
                ok_read(),
                Err(refused("LIST", 403, "KMS.AccessDenied")),
                Ok(()),
                "KMS.AccessDenied",
            ),
            (
                ok_read(),
                Err(refused("LIST", 400, "InvalidArgument")),
                Ok(()),
                "the store failed to list the bucket",
            ),
            (
                Err(refused("GET", 404, "NoSuchBucket")),
                Ok(()),
                Ok(()),
                "the store failed to read an object back",
            ),
            (
                Ok(Some(b"other".to_vec())),
                Ok(()),
                Ok(()),
                "read back with other bytes",
            ),
            (Err(answer()), Ok(()), Ok(()), "read back with other bytes"),
            (Ok(None), Ok(()), Ok(()), "not read-after-write consistent"),
        ] {
            let why = verdict(read, listed, deleted).unwrap().unwrap_err();
            assert!(why.starts_with("bucket b: ") && why.contains(says), "{why}");
        }
        let mut found = Findings::default();
        found.not_written(denied("PUT"));
        let why = found.verdict("b").unwrap().unwrap_err();
        assert!(
            why.contains("the key may not write an object (s3:PutObject)"),
            "{why}"
        );
        // Every problem at once, what the store said, and the object left to be removed.
        let why = verdict(Err(denied("GET")), Ok(()), Err(denied("DELETE")))
            .unwrap()
            .unwrap_err();
        for says in [
            "(s3:GetObject)",
            "(s3:DeleteObject)",
            "answered 403 AccessDenied",
            "\".probe/x\" may be left in the bucket",
        ] {
            assert!(why.contains(says), "{says}: {why}");
        }
        // A busy store is no verdict, unless something else already is one; an object it
        // may have kept is named either way.
        for busy in [503, 500, 429] {
            assert!(matches!(
                verdict(ok_read(), Err(refused("LIST", busy, "SlowDown")), Ok(())),
                Err(StorageError::Store(_))
            ));
            let mut found = Findings::default();
            found.not_written(refused("PUT", busy, "SlowDown"));
            assert!(matches!(found.verdict("b"), Err(StorageError::Store(_))));
            match verdict(ok_read(), Ok(()), Err(refused("DELETE", busy, "SlowDown"))) {
                Err(StorageError::Store(why)) => assert!(why.contains("may be left"), "{why}"),
                other => panic!("{other:?}"),
            }
            let why = verdict(
                Err(denied("GET")),
                Ok(()),
                Err(refused("DELETE", busy, "SlowDown")),
            )
            .unwrap()
            .unwrap_err();
            assert!(
                why.contains("(s3:GetObject)") && why.contains("may be left"),
                "{why}"
            );
        }
    }

    #[test]
    fn the_object_the_manifest_names_is_chosen_whatever_the_listing_order() {
        let f = |sha: &str| Found {
            key: format!("k.{sha}"),
            size: 1,
            sha256: sha.into(),
        };
        for listed in [vec![f("aa"), f("bb")], vec![f("bb"), f("aa")]] {
            assert_eq!(choose(listed.clone(), "bb"), Some(f("bb")));
            assert_eq!(choose(listed.clone(), "cc"), Some(listed[0].clone()));
        }
        assert_eq!(choose(Vec::new(), "aa"), None);
    }

    #[test]
    fn object_keys_carry_the_name_and_digest_and_nothing_else_parses_as_one() {
        let sha = [0xab; 32];
        let key = object_key("unit-a/", "room-1", "rec-1", "frag-000001.nfx", &sha);
        assert_eq!(
            key,
            format!("unit-a/room-1/rec-1/frag-000001.nfx.{}", "ab".repeat(32))
        );
        let rest = key
            .strip_prefix(&recording_prefix("unit-a/", "room-1", "rec-1"))
            .unwrap();
        assert_eq!(
            parse_object_key(rest),
            Some(("frag-000001.nfx", "ab".repeat(32).as_str()))
        );
        for other in [
            "manifest.json".to_string(),
            "receipt.json".to_string(),
            format!("frag-000001.nfx.{}", "AB".repeat(32)),
            format!("frag-000001.nfx.{}", "ab".repeat(31)),
            format!("../frag-000001.nfx.{}", "ab".repeat(32)),
            format!("frag-1.nfx.{}", "ab".repeat(32)),
        ] {
            assert_eq!(parse_object_key(&other), None, "{other}");
        }
    }

    #[test]
    fn a_signature_listed_and_gone_when_read_is_the_stores_trouble_not_the_recordings() {
        let sig = b"signed".to_vec();
        let sha = neoflix_format::sha256_hex(&sig);
        let accept = |s: &[u8]| Ok::<_, neoflix_format::SignatureError>(s.len());
        let held = |key: &str| Ok((key == "b").then(|| b"signed".to_vec()));
        // One gone, another read and accepted: that one.
        let got = first_signed(vec![("a", &sha), ("b", &sha)], held, accept).unwrap();
        assert_eq!(got, (6, "b".to_string()));
        // Every one gone: the store is asked again, the recording is not called unsigned.
        let none = |_: &str| Ok(None);
        assert!(matches!(
            first_signed(vec![("a", &sha)], none, accept),
            Err(StorageError::Store(e)) if e.contains("gone when read")
        ));
        // Nothing listed: unsigned.
        assert!(matches!(
            first_signed(Vec::new(), none, accept),
            Err(StorageError::Manifest(e)) if e.contains("not signed")
        ));
        // One gone, another read and refused: the refusal is the verdict.
        let refuse = |_: &[u8]| Err::<usize, _>(neoflix_format::SignatureError::Unsigned);
        assert!(matches!(
            first_signed(vec![("a", &sha), ("b", &sha)], held, refuse),
            Err(StorageError::Manifest(e)) if e.starts_with("signature: ")
        ));
    }
}
