//! The object-store backend's pieces, ahead of the backend itself (not wired into the server
//! yet): where a recording's objects are kept in an S3 bucket, and how a manifest is checked
//! against them without reading them whole.
//!
//! Keys, under the configured prefix:
//! - `{device}/{id}/{name}.{sha256}`: an object, addressed by its content. The box announces
//!   the digest before the body and the PUT is signed with it, so two replicas writing one name
//!   at once write the same bytes or different keys: nothing is ever overwritten, on a store
//!   that ignores `If-None-Match` too.
//! - `{device}/{id}/manifest.json` and `receipt.json`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use neoflix_format::{HEADER_LEN, Manifest};
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

/// A recording's objects in the store, as one listing found them, each name resolved to the
/// key whose digest the manifest names (or, where none has it, to another: the check then
/// names it altered). Read through [`neoflix_format::Objects`] from a blocking thread: the
/// headers and key records are fetched with the runtime this was listed on.
pub struct HeldObjects {
    bucket: Arc<Bucket>,
    rt: tokio::runtime::Handle,
    recording: String,
    /// Name → (key, size, hex digest).
    objects: HashMap<String, (String, u64, String)>,
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
            return Err(S3Error::Settings(format!(
                "{}/{}: not a device and recording id",
                crate::esc(device),
                crate::esc(id)
            )));
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
        let mut objects: HashMap<String, (String, u64, String)> = HashMap::new();
        for o in bucket.list_all(&recording, 1000, MAX_OBJECTS).await? {
            let Some((name, sha)) = o.key.strip_prefix(&recording).and_then(parse_object_key)
            else {
                continue;
            };
            let Some(&want) = wanted.get(name) else {
                continue;
            };
            let better = objects.get(name).is_none_or(|(_, _, had)| had != want);
            if better {
                objects.insert(name.to_string(), (o.key.clone(), o.size, sha.to_string()));
            }
        }
        Ok(HeldObjects {
            bucket,
            rt: tokio::runtime::Handle::current(),
            recording,
            objects,
        })
    }

    fn find(&self, name: &str) -> std::io::Result<&(String, u64, String)> {
        self.objects
            .get(name)
            .ok_or_else(|| std::io::ErrorKind::NotFound.into())
    }
}

fn io(e: S3Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl neoflix_format::Objects for HeldObjects {
    fn size(&self, name: &str) -> std::io::Result<u64> {
        self.find(name).map(|o| o.1)
    }

    /// The digest in the key: the one the PUT was signed with, which the store checked (and
    /// the server too, deleting the key when its own hash differed).
    fn size_and_sha256(&self, name: &str) -> std::io::Result<(u64, String)> {
        self.find(name).map(|o| (o.1, o.2.clone()))
    }

    fn header(&self, name: &str) -> std::io::Result<[u8; HEADER_LEN]> {
        let key = &self.find(name)?.0;
        let bytes = self
            .rt
            .block_on(self.bucket.get_range(key, 0, HEADER_LEN as u32))
            .map_err(io)?
            .ok_or(std::io::ErrorKind::NotFound)?;
        bytes
            .try_into()
            .map_err(|_| std::io::ErrorKind::UnexpectedEof.into())
    }

    fn read_small(&self, name: &str, max: u64) -> std::io::Result<Vec<u8>> {
        let (key, size, _) = self.find(name)?;
        if *size > max {
            return Err(std::io::Error::other(format!(
                "{size} bytes, more than {max}"
            )));
        }
        let cap = usize::try_from(max).unwrap_or(usize::MAX);
        self.rt
            .block_on(self.bucket.get_small(key, cap))
            .map_err(io)?
            .ok_or_else(|| std::io::ErrorKind::NotFound.into())
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
