//! The object-store backend's pieces, ahead of the backend itself (not wired into the server
//! yet): where a recording's objects are kept in an S3 bucket, and how a manifest is checked
//! against them without reading them whole.
//!
//! Keys, under the configured prefix:
//! - `{device}/{id}/{name}.{sha256}`: an object, addressed by the digest its PUT was signed
//!   with. Two replicas writing one name at once write the same key with the same bytes, or
//!   different keys: no object is replaced by other content, on a store that ignores
//!   `If-None-Match` too.
//! - `{device}/{id}/manifest.json` and `receipt.json`.
//!
//! What this trusts: that the bytes under a key are the ones its digest names. A store that
//! checks the signed payload digest (`x-amz-content-sha256`: Garage, MinIO, AWS; tested on
//! Garage) guarantees it; one that does not must not hold recordings, and the backend is to
//! refuse to start on it (a probe PUT whose body is not the one announced must be refused).
//! Key records, being small, are hashed again when read.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use neoflix_format::{FormatError, HEADER_LEN, Manifest, Verified};
use neoflix_s3::{Bucket, S3Error};

use crate::storage::{valid_object_name, valid_recording_id};

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
/// lists resolved by [`choose`]. Verify through [`HeldObjects::verify`], which runs the check
/// on a blocking thread: its header and key-record reads wait on the runtime.
pub struct HeldObjects {
    /// Where the objects are.
    bucket: Arc<Bucket>,
    /// The runtime the reads run on.
    rt: tokio::runtime::Handle,
    /// `{prefix}{device}/{id}/`.
    recording: String,
    /// Name → the object chosen for it.
    objects: HashMap<String, Found>,
    /// A read failed for a reason that may pass (the store unreachable, busy, failing): the
    /// check's verdict is then the store's trouble, not the recording's.
    store_failed: AtomicBool,
}

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
        let mut listed: HashMap<String, Vec<Found>> = HashMap::new();
        for o in bucket.list_all(&recording, 1000, MAX_OBJECTS).await? {
            let Some((name, sha)) = o.key.strip_prefix(&recording).and_then(parse_object_key)
            else {
                continue;
            };
            if wanted.contains_key(name) {
                listed.entry(name.to_string()).or_default().push(Found {
                    key: o.key.clone(),
                    size: o.size,
                    sha256: sha.to_string(),
                });
            }
        }
        let objects = listed
            .into_iter()
            .filter_map(|(name, found)| {
                let want = wanted.get(name.as_str()).copied().unwrap_or_default();
                choose(found, want).map(|f| (name, f))
            })
            .collect();
        Ok(HeldObjects {
            bucket,
            rt: tokio::runtime::Handle::current(),
            recording,
            objects,
            store_failed: AtomicBool::new(false),
        })
    }

    /// Checks `m` against these objects on a blocking thread. `Err(Ok(_))`: the recording is
    /// wrong; `Err(Err(_))`: the store failed during the check, and trying again may succeed.
    pub async fn verify(self, m: Manifest) -> Result<Verified, Result<FormatError, String>> {
        tokio::task::spawn_blocking(move || match neoflix_format::verify_manifest_in(&self, m) {
            Err(e) if self.store_failed.load(Ordering::Relaxed) => Err(Err(e.to_string())),
            r => r.map_err(Ok),
        })
        .await
        .map_err(|e| Err(e.to_string()))?
    }

    fn find(&self, name: &str) -> std::io::Result<&Found> {
        self.objects
            .get(name)
            .ok_or_else(|| std::io::ErrorKind::NotFound.into())
    }

    fn io(&self, e: S3Error) -> std::io::Error {
        if e.is_transient() {
            self.store_failed.store(true, Ordering::Relaxed);
        }
        std::io::Error::other(e.to_string())
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
        let bytes = self
            .rt
            .block_on(self.bucket.get_range(key, 0, HEADER_LEN as u32))
            .map_err(|e| self.io(e))?
            .ok_or(std::io::ErrorKind::NotFound)?;
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
        let bytes = self
            .rt
            .block_on(self.bucket.get_small(&o.key, cap))
            .map_err(|e| self.io(e))?
            .ok_or(std::io::ErrorKind::NotFound)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
