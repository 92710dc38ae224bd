//! Checking a recording against its manifest, without any key.

use std::fs;
use std::path::Path;

use crate::manifest::{FORMAT, chain};
use crate::{Manifest, ObjectEntry, StoreError};

/// A recording whose files all match its manifest.
#[derive(Debug)]
pub struct Verified {
    /// The manifest.
    pub manifest: Manifest,
}

/// Reads `dir/manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, StoreError> {
    let path = dir.join("manifest.json");
    let text = fs::read(&path).map_err(|e| StoreError::BadManifest {
        path: path.clone(),
        message: if e.kind() == std::io::ErrorKind::NotFound {
            "missing: the recording is still open, or is not a recording directory (a crashed one is sealed as interrupted when neoflixd starts)".into()
        } else {
            e.to_string()
        },
    })?;
    let m: Manifest = serde_json::from_slice(&text).map_err(|e| StoreError::BadManifest {
        path: path.clone(),
        message: format!("not a valid manifest: {e}"),
    })?;
    if m.format != FORMAT {
        return Err(StoreError::BadManifest {
            path,
            message: format!("format '{}' is not {FORMAT}", m.format),
        });
    }
    Ok(m)
}

fn describe(kind: &str, e: &ObjectEntry) -> String {
    format!("{kind} {}", e.index)
}

/// How verification learns a file's size and SHA-256: by reading it, or from a digest recorded
/// when the file was received (the ingest server records it while streaming the upload).
pub trait Digests {
    /// Size and lowercase hex SHA-256 of `path`.
    fn size_and_sha256(&self, path: &Path) -> std::io::Result<(u64, String)>;
}

/// Reads and hashes every file.
pub struct ReadAndHash;

impl Digests for ReadAndHash {
    fn size_and_sha256(&self, path: &Path) -> std::io::Result<(u64, String)> {
        let bytes = fs::read(path)?;
        Ok((bytes.len() as u64, neoflix_seal::sha256_hex(&bytes)))
    }
}

fn check(
    dir: &Path,
    kind: &str,
    e: &ObjectEntry,
    digests: &impl Digests,
) -> Result<(), StoreError> {
    let err = |problem: String| StoreError::Object {
        object: describe(kind, e),
        file: e.file.clone(),
        problem,
    };
    for (name, size, sha) in [
        (&e.file, Some(e.size), &e.sha256),
        (&e.key_file, None, &e.key_sha256),
    ] {
        // File names come from the manifest: refuse anything that could leave the directory.
        if name.contains('/') || name.starts_with('.') {
            return Err(err(format!("manifest names an unsafe file '{name}'")));
        }
        let (len, digest) = match digests.size_and_sha256(&dir.join(name)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(err(format!("{name} is missing")));
            }
            Err(e) => return Err(err(format!("{name}: {e}"))),
        };
        if let Some(size) = size
            && len != size
        {
            return Err(err(format!(
                "size {} differs from the manifest's {size}: truncated or replaced",
                len
            )));
        }
        if digest != *sha {
            return Err(err(format!(
                "{name}: SHA-256 differs from the manifest: altered or swapped"
            )));
        }
    }
    Ok(())
}

/// Checks every object's presence, size and SHA-256 and the hash chain. Needs no key: anyone
/// (the ingest server, IT) can tell a recording is whole.
pub fn verify(dir: &Path) -> Result<Verified, StoreError> {
    verify_manifest(dir, read_manifest(dir)?)
}

/// Checks the files in `dir` against a manifest that is not (yet) stored there: the ingest
/// server checks an uploaded manifest before it makes the recording complete.
pub fn verify_manifest(dir: &Path, m: Manifest) -> Result<Verified, StoreError> {
    verify_manifest_with(dir, m, &ReadAndHash)
}

/// [`verify_manifest`] with digests from elsewhere.
pub fn verify_manifest_with(
    dir: &Path,
    m: Manifest,
    digests: &impl Digests,
) -> Result<Verified, StoreError> {
    if m.format != FORMAT {
        return Err(StoreError::BadManifest {
            path: dir.join("manifest.json"),
            message: format!("format '{}' is not {FORMAT}", m.format),
        });
    }
    let expected = chain(&m.recording_id, &m.init_segments, &m.fragments);
    if expected != m.chain {
        return Err(StoreError::Chain {
            expected,
            found: m.chain.clone(),
        });
    }
    for (i, e) in m.init_segments.iter().enumerate() {
        if e.index != i as u64 {
            return Err(StoreError::Object {
                object: describe("init segment", e),
                file: e.file.clone(),
                problem: format!("listed at position {i}"),
            });
        }
        check(dir, "init segment", e, digests)?;
    }
    for (i, e) in m.fragments.iter().enumerate() {
        if e.index != i as u64 {
            return Err(StoreError::Object {
                object: describe("fragment", e),
                file: e.file.clone(),
                problem: format!("listed at position {i}"),
            });
        }
        match e.init {
            Some(init) if (init as usize) < m.init_segments.len() => {}
            _ => {
                return Err(StoreError::Object {
                    object: describe("fragment", e),
                    file: e.file.clone(),
                    problem: "refers to no init segment of this recording".into(),
                });
            }
        }
        check(dir, "fragment", e, digests)?;
    }
    Ok(Verified { manifest: m })
}
