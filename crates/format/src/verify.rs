//! Checking a recording against its manifest, without any key.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::files::{changed, open_regular, read_regular};
use crate::manifest::{FORMAT, MANIFEST_FILE, MAX_MANIFEST_BYTES, chain};
use crate::{
    FormatError, HEADER_LEN, Header, Kind, Manifest, ObjectEntry, ObjectId, WRAPPED_KEY_LEN,
    WrappedKey,
};

/// A recording whose files all match its manifest.
#[derive(Debug)]
pub struct Verified {
    /// The manifest.
    pub manifest: Manifest,
    /// What each init segment's header says it is (stream, sequence, kind), in manifest order.
    /// Headers are readable without a key; they are authenticated only when the object opens.
    pub init_ids: Vec<ObjectId>,
    /// What each fragment's header says it is, in manifest order.
    pub fragment_ids: Vec<ObjectId>,
}

/// Reads `dir/manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, FormatError> {
    read_manifest_bytes(dir).map(|(_, m)| m)
}

/// Reads `dir/manifest.json`: its bytes exactly (what a signature covers) and the manifest.
pub fn read_manifest_bytes(dir: &Path) -> Result<(Vec<u8>, Manifest), FormatError> {
    let path = dir.join(MANIFEST_FILE);
    let text = read_regular(&path, MAX_MANIFEST_BYTES).map_err(|e| FormatError::BadManifest {
        path: path.clone(),
        message: if e.kind() == std::io::ErrorKind::NotFound {
            "missing: the recording is still open, or is not a recording directory (a crashed one is sealed as interrupted when neoflixd starts)".into()
        } else {
            e.to_string()
        },
    })?;
    let m = parse_manifest(&text).map_err(|message| FormatError::BadManifest { path, message })?;
    Ok((text, m))
}

/// Parses manifest bytes (read from a file or received in an upload) and checks its format tag.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, String> {
    let m: Manifest =
        serde_json::from_slice(bytes).map_err(|e| format!("not a valid manifest: {e}"))?;
    if m.format != FORMAT {
        return Err(format!(
            "format '{}' is not {FORMAT}",
            m.format.escape_debug()
        ));
    }
    if let Some(first) = &m.renamed_from
        && !crate::protocol::valid_recording_id(first)
    {
        return Err(format!(
            "renamed_from '{}' is not a recording id",
            first.escape_debug()
        ));
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

/// Reads and hashes every file: only regular files ([`open_regular`]), streamed through the
/// hash in 64 KiB pieces so memory does not grow with the file.
pub struct ReadAndHash;

impl Digests for ReadAndHash {
    fn size_and_sha256(&self, path: &Path) -> std::io::Result<(u64, String)> {
        let (f, len) = open_regular(path)?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut read = 0u64;
        let mut f = f.take(len.saturating_add(1));
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            read = read.saturating_add(n as u64);
        }
        if read != len {
            return Err(changed());
        }
        Ok((len, hex::encode(hash.finalize())))
    }
}

/// Where verification finds a recording's objects: a directory ([`InDir`]), or another place
/// that holds them (an object store). Names are the manifest's, checked safe before they are
/// asked for.
pub trait Objects {
    /// The object's size, without reading it: `NotFound` if it is absent, an error if it is not
    /// a plain object (a link, a FIFO, a device).
    fn size(&self, name: &str) -> std::io::Result<u64>;
    /// Its size and lowercase hex SHA-256: asked only once its size is the manifest's.
    fn size_and_sha256(&self, name: &str) -> std::io::Result<(u64, String)>;
    /// Its first [`HEADER_LEN`] bytes.
    fn header(&self, name: &str) -> std::io::Result<[u8; HEADER_LEN]>;
    /// A small object whole (a key record); one over `max` bytes is an error.
    fn read_small(&self, name: &str, max: u64) -> std::io::Result<Vec<u8>>;
    /// Where the manifest is, for messages.
    fn manifest_path(&self) -> PathBuf;
}

/// The objects of a recording directory, their digests from `digests`.
pub struct InDir<'a, D> {
    /// The directory.
    pub dir: &'a Path,
    /// How sizes and digests are learnt.
    pub digests: &'a D,
}

impl<D: Digests> Objects for InDir<'_, D> {
    fn size(&self, name: &str) -> std::io::Result<u64> {
        open_regular(&self.dir.join(name)).map(|(_, len)| len)
    }

    fn size_and_sha256(&self, name: &str) -> std::io::Result<(u64, String)> {
        self.digests.size_and_sha256(&self.dir.join(name))
    }

    fn header(&self, name: &str) -> std::io::Result<[u8; HEADER_LEN]> {
        let mut raw = [0u8; HEADER_LEN];
        open_regular(&self.dir.join(name)).and_then(|(mut f, _)| f.read_exact(&mut raw))?;
        Ok(raw)
    }

    fn read_small(&self, name: &str, max: u64) -> std::io::Result<Vec<u8>> {
        read_regular(&self.dir.join(name), max)
    }

    fn manifest_path(&self) -> PathBuf {
        self.dir.join(MANIFEST_FILE)
    }
}

/// Reads the header of a sealed object and its key record, and checks what can be checked
/// without a key: the header parses, announces exactly the object's size, is of the kind its
/// list says, and the key record was written for this very header.
fn read_header(objects: &impl Objects, kind: Kind, e: &ObjectEntry) -> Result<Header, String> {
    let raw = objects
        .header(&e.file)
        .map_err(|err| format!("{}: cannot read its header: {err}", e.file.escape_debug()))?;
    let header = crate::parse_header(&raw).map_err(|err| err.to_string())?;
    let announced = header.sealed_len().map_err(|err| err.to_string())?;
    if announced != e.size {
        return Err(format!(
            "its header announces {announced} sealed bytes, the manifest and the file {}: damaged or crafted",
            e.size
        ));
    }
    if header.id.kind != kind {
        return Err(format!(
            "its header says it is {}",
            match header.id.kind {
                Kind::Init => "an init segment",
                Kind::Fragment => "a fragment",
            }
        ));
    }
    let key_file = e.key_file.escape_debug();
    let record = objects
        .read_small(&e.key_file, WRAPPED_KEY_LEN as u64)
        .map_err(|err| format!("{key_file}: {err}"))?;
    let wrapped = WrappedKey::from_bytes(&record).map_err(|err| format!("{key_file}: {err}"))?;
    if wrapped.object_header() != header.raw {
        return Err(format!(
            "{key_file}: the key record was written for another object (its header differs)"
        ));
    }
    Ok(header)
}

fn check(objects: &impl Objects, kind: &str, e: &ObjectEntry) -> Result<ObjectId, FormatError> {
    let err = |problem: String| FormatError::Object {
        object: describe(kind, e),
        file: e.file.escape_debug().to_string(),
        problem,
    };
    for (raw_name, size, sha) in [
        (&e.file, e.size, &e.sha256),
        (&e.key_file, WRAPPED_KEY_LEN as u64, &e.key_sha256),
    ] {
        let name = raw_name.escape_debug();
        // File names come from the manifest: refuse anything that could leave the directory,
        // or play tricks on the terminal that prints them.
        if raw_name.is_empty()
            || raw_name.contains('/')
            || raw_name.starts_with('.')
            || raw_name.chars().any(char::is_control)
        {
            return Err(err(format!("manifest names an unsafe file '{name}'")));
        }
        // Type and size first: nothing is read from a file that is not what the manifest says.
        let (len, digest) = match objects.size(raw_name).and_then(|len| {
            if len == size {
                objects.size_and_sha256(raw_name)
            } else {
                Ok((len, String::new()))
            }
        }) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(err(format!("{name} is missing")));
            }
            Err(e) => return Err(err(format!("{name}: {e}"))),
        };
        if len != size {
            return Err(err(format!(
                "{name}: size {len} differs from the expected {size}: truncated or replaced"
            )));
        }
        if digest != *sha {
            return Err(err(format!(
                "{name}: SHA-256 differs from the manifest: altered or swapped"
            )));
        }
    }
    let expect = if kind == "init segment" {
        Kind::Init
    } else {
        Kind::Fragment
    };
    read_header(objects, expect, e).map(|h| h.id).map_err(err)
}

/// Checks every object's presence, size, SHA-256 and header, the hash chain, and that no
/// fragment is missing from the middle of a capture stream. Needs no key: anyone (IT, a
/// reviewer before export) can tell a recording is whole.
pub fn verify(dir: &Path) -> Result<Verified, FormatError> {
    let v = verify_manifest(dir, read_manifest(dir)?)?;
    check_contiguous(&v)?;
    Ok(v)
}

/// Checks that the sequence numbers within each capture stream have no gap. Within one stream
/// the box numbers fragments consecutively and a recording claims every one of them, so a jump
/// means fragments are missing: removed and hidden (the chain recomputed), or lost to a storage
/// failure on the box. Between streams (a camera restart) numbers may jump: the fragment being
/// sealed when a pipeline stops is dropped.
///
/// [`verify_manifest_with`] leaves this out: the ingest server stores what a box has, gap or
/// not, rather than leave the rest of a recording on the box for ever; verify and export name it.
pub fn check_contiguous(v: &Verified) -> Result<(), FormatError> {
    match gaps(v).into_iter().next() {
        Some(gap) => Err(gap),
        None => Ok(()),
    }
}

/// Every gap [`check_contiguous`] would name ([`FormatError::Gap`]), in order: for an export
/// that writes what is there, hole and all, once someone decided a gap is a loss on the box.
pub fn gaps(v: &Verified) -> Vec<FormatError> {
    v.fragment_ids
        .windows(2)
        .zip(v.manifest.fragments.get(1..).unwrap_or_default())
        .filter(|(pair, _)| {
            pair[0].stream == pair[1].stream && pair[0].seq.checked_add(1) != Some(pair[1].seq)
        })
        .map(|(pair, e)| FormatError::Gap {
            object: describe("fragment", e),
            file: e.file.escape_debug().to_string(),
            stream: hex::encode(&pair[1].stream[..4]),
            before: pair[0].seq,
            after: pair[1].seq,
        })
        .collect()
}

/// Checks the files in `dir` against a manifest that is not (yet) stored there: the ingest
/// server checks an uploaded manifest before it makes the recording complete.
pub fn verify_manifest(dir: &Path, m: Manifest) -> Result<Verified, FormatError> {
    verify_manifest_with(dir, m, &ReadAndHash)
}

/// [`verify_manifest`] with digests from elsewhere.
pub fn verify_manifest_with(
    dir: &Path,
    m: Manifest,
    digests: &impl Digests,
) -> Result<Verified, FormatError> {
    verify_manifest_in(&InDir { dir, digests }, m)
}

/// [`verify_manifest`] with the objects wherever they are held.
pub fn verify_manifest_in(objects: &impl Objects, m: Manifest) -> Result<Verified, FormatError> {
    if m.format != FORMAT {
        return Err(FormatError::BadManifest {
            path: objects.manifest_path(),
            message: format!("format '{}' is not {FORMAT}", m.format.escape_debug()),
        });
    }
    let expected = chain(&m.recording_id, &m.init_segments, &m.fragments);
    if expected != m.chain {
        return Err(FormatError::Chain {
            expected,
            found: m.chain.clone(),
        });
    }
    let mut init_ids = Vec::with_capacity(m.init_segments.len());
    for (i, e) in m.init_segments.iter().enumerate() {
        if e.index != i as u64 {
            return Err(FormatError::Object {
                object: describe("init segment", e),
                file: e.file.escape_debug().to_string(),
                problem: format!("listed at position {i}"),
            });
        }
        let id = check(objects, "init segment", e)?;
        if let Some(j) = init_ids
            .iter()
            .position(|o: &ObjectId| o.stream == id.stream)
        {
            return Err(FormatError::Object {
                object: describe("init segment", e),
                file: e.file.escape_debug().to_string(),
                problem: format!("repeats the capture stream of init segment {j}"),
            });
        }
        init_ids.push(id);
    }
    let mut previous: Option<(usize, ObjectId)> = None;
    let mut fragment_ids = Vec::with_capacity(m.fragments.len());
    for (i, e) in m.fragments.iter().enumerate() {
        if e.index != i as u64 {
            return Err(FormatError::Object {
                object: describe("fragment", e),
                file: e.file.escape_debug().to_string(),
                problem: format!("listed at position {i}"),
            });
        }
        let problem = |problem: String| FormatError::Object {
            object: describe("fragment", e),
            file: e.file.escape_debug().to_string(),
            problem,
        };
        let init = match e.init.and_then(|i| usize::try_from(i).ok()) {
            Some(init) if init < m.init_segments.len() => init,
            _ => {
                return Err(problem(
                    "refers to no init segment of this recording".into(),
                ));
            }
        };
        let id = check(objects, "fragment", e)?;
        if id.stream != init_ids[init].stream {
            return Err(problem(format!(
                "belongs to another capture stream than its init segment {init}"
            )));
        }
        // The box numbers fragments from one counter and claims them in that order, one
        // capture stream after another: anything else is an edited list.
        if let Some((prev_init, prev)) = previous {
            if id.seq <= prev.seq {
                return Err(problem(format!(
                    "out of order: sequence {} after {}",
                    id.seq, prev.seq
                )));
            }
            if init < prev_init {
                return Err(problem(format!(
                    "goes back to init segment {init} after init segment {prev_init}"
                )));
            }
        }
        previous = Some((init, id));
        fragment_ids.push(id);
    }
    Ok(Verified {
        manifest: m,
        init_ids,
        fragment_ids,
    })
}
