//! Checking a recording against its manifest, without any key.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use neoflix_seal::{HEADER_LEN, Header, Kind, ObjectId, WRAPPED_KEY_LEN, WrappedKey};

use crate::manifest::{FORMAT, chain};
use crate::{Manifest, ObjectEntry, StoreError};

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

/// The largest manifest read: 64 MiB, several times that of a 24-hour recording of 1-second
/// fragments.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// Opens `path` for reading only if it is a regular file in its own right: a symbolic link is
/// refused (`O_NOFOLLOW`: a recording is its directory, and a link could lead to `/dev/zero`),
/// and a FIFO or device is refused without waiting on it (`O_NONBLOCK`), judged by `fstat` of
/// the descriptor opened, so nothing can be swapped in between. Returns the file and its size.
pub fn open_regular(path: &Path) -> io::Result<(fs::File, u64)> {
    let not_regular = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what}, not a regular file (only regular files are read)"),
        )
    };
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                not_regular("a symbolic link")
            } else {
                e
            }
        })?;
    let meta = f.metadata()?;
    let t = meta.file_type();
    if !t.is_file() {
        return Err(not_regular(if t.is_fifo() {
            "a FIFO"
        } else if t.is_dir() {
            "a directory"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else if t.is_socket() {
            "a socket"
        } else {
            "something else"
        }));
    }
    Ok((f, meta.len()))
}

/// Reads a whole regular file ([`open_regular`]) of at most `max` bytes. The size is checked
/// before anything is allocated, and the buffer is never larger than the file said it was.
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let (f, len) = open_regular(path)?;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes, more than the {max} expected"),
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).map_err(io::Error::other)?);
    // One byte more than announced tells a file that grew since fstat.
    f.take(len.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 != len {
        return Err(changed());
    }
    Ok(bytes)
}

fn changed() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "changed size while being read")
}

/// Reads `dir/manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, StoreError> {
    let path = dir.join("manifest.json");
    let text = read_regular(&path, MAX_MANIFEST_BYTES).map_err(|e| StoreError::BadManifest {
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
            message: format!("format '{}' is not {FORMAT}", m.format.escape_debug()),
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

/// Reads the header of a sealed object and its key record, and checks what can be checked
/// without a key: the header parses, announces exactly the object's size, is of the kind its
/// list says, and the key record was written for this very header.
fn read_header(dir: &Path, kind: Kind, e: &ObjectEntry) -> Result<Header, String> {
    let mut raw = [0u8; HEADER_LEN];
    open_regular(&dir.join(&e.file))
        .and_then(|(mut f, _)| f.read_exact(&mut raw))
        .map_err(|err| format!("{}: cannot read its header: {err}", e.file.escape_debug()))?;
    let header = neoflix_seal::parse_header(&raw).map_err(|err| err.to_string())?;
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
    let record = read_regular(&dir.join(&e.key_file), WRAPPED_KEY_LEN as u64)
        .map_err(|err| format!("{key_file}: {err}"))?;
    let wrapped = WrappedKey::from_bytes(&record).map_err(|err| format!("{key_file}: {err}"))?;
    if wrapped.object_header() != header.raw {
        return Err(format!(
            "{key_file}: the key record was written for another object (its header differs)"
        ));
    }
    Ok(header)
}

fn check(
    dir: &Path,
    kind: &str,
    e: &ObjectEntry,
    digests: &impl Digests,
) -> Result<ObjectId, StoreError> {
    let err = |problem: String| StoreError::Object {
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
        let path = dir.join(raw_name);
        // Type and size first: nothing is read from a file that is not what the manifest says.
        let (len, digest) = match open_regular(&path).and_then(|(_, len)| {
            if len == size {
                digests.size_and_sha256(&path)
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
    read_header(dir, expect, e).map(|h| h.id).map_err(err)
}

/// Checks every object's presence, size, SHA-256 and header, the hash chain, and that no
/// fragment is missing from the middle of a capture stream. Needs no key: anyone (IT, a
/// reviewer before export) can tell a recording is whole.
pub fn verify(dir: &Path) -> Result<Verified, StoreError> {
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
pub fn check_contiguous(v: &Verified) -> Result<(), StoreError> {
    match gaps(v).into_iter().next() {
        Some(gap) => Err(gap),
        None => Ok(()),
    }
}

/// Every gap [`check_contiguous`] would name ([`StoreError::Gap`]), in order: for an export
/// that writes what is there, hole and all, once someone decided a gap is a loss on the box.
pub fn gaps(v: &Verified) -> Vec<StoreError> {
    v.fragment_ids
        .windows(2)
        .zip(v.manifest.fragments.get(1..).unwrap_or_default())
        .filter(|(pair, _)| {
            pair[0].stream == pair[1].stream && pair[0].seq.checked_add(1) != Some(pair[1].seq)
        })
        .map(|(pair, e)| StoreError::Gap {
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
            message: format!("format '{}' is not {FORMAT}", m.format.escape_debug()),
        });
    }
    let expected = chain(&m.recording_id, &m.init_segments, &m.fragments);
    if expected != m.chain {
        return Err(StoreError::Chain {
            expected,
            found: m.chain.clone(),
        });
    }
    let mut init_ids = Vec::with_capacity(m.init_segments.len());
    for (i, e) in m.init_segments.iter().enumerate() {
        if e.index != i as u64 {
            return Err(StoreError::Object {
                object: describe("init segment", e),
                file: e.file.escape_debug().to_string(),
                problem: format!("listed at position {i}"),
            });
        }
        let id = check(dir, "init segment", e, digests)?;
        if let Some(j) = init_ids
            .iter()
            .position(|o: &ObjectId| o.stream == id.stream)
        {
            return Err(StoreError::Object {
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
            return Err(StoreError::Object {
                object: describe("fragment", e),
                file: e.file.escape_debug().to_string(),
                problem: format!("listed at position {i}"),
            });
        }
        let problem = |problem: String| StoreError::Object {
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
        let id = check(dir, "fragment", e, digests)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RecordingWriter, Ring};
    use neoflix_seal::{DepartmentSecretKey, seal};
    use std::time::{Duration, SystemTime};

    /// A finalized recording of `streams`, each `(stream id, fragment sequence numbers)`.
    fn recording(root: &Path, streams: &[([u8; 16], Vec<u64>)]) -> std::path::PathBuf {
        let dept = DepartmentSecretKey::generate().unwrap();
        let (mut ring, _) =
            Ring::open(&root.join("ring"), Duration::from_secs(1000), 1 << 30).unwrap();
        let mut w = RecordingWriter::create(
            &root.join("rec"),
            "r",
            "room",
            "control",
            &dept.public_key(),
            SystemTime::now(),
        )
        .unwrap();
        for (stream, seqs) in streams {
            let id = |seq, kind| ObjectId {
                stream: *stream,
                seq,
                kind,
            };
            let (k, s) = seal(&id(0, Kind::Init), b"ftyp").unwrap();
            ring.begin_stream(*stream, &s, k).unwrap();
            for &seq in seqs {
                let (k, s) = seal(&id(seq, Kind::Fragment), &[seq as u8; 100]).unwrap();
                ring.push(seq, &s, k, Duration::from_secs(1), SystemTime::now())
                    .unwrap();
                let entry = ring.take(seq).unwrap();
                let init = ring.init(stream).unwrap();
                w.claim(&entry, &init, false).unwrap();
            }
        }
        w.finalize("control", SystemTime::now()).unwrap();
        root.join("rec/r")
    }

    /// Replaces fragment `i`'s sealed file and rewrites the manifest, chain included, to match:
    /// what someone who knows the format can do without any key.
    fn forge_fragment(dir: &Path, i: usize, bytes: &[u8]) {
        let mut m = read_manifest(dir).unwrap();
        fs::write(dir.join(&m.fragments[i].file), bytes).unwrap();
        m.fragments[i].size = bytes.len() as u64;
        m.fragments[i].sha256 = neoflix_seal::sha256_hex(bytes);
        m.chain = chain(&m.recording_id, &m.init_segments, &m.fragments);
        fs::write(dir.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    }

    /// Issue 8, item 4: the header announcing 0xfff000fff00100b8 bytes of plaintext in a
    /// 272-byte object is refused by name without any key (it used to verify as OK).
    #[test]
    fn a_header_whose_length_wraps_is_named_without_a_key() {
        let t = tempfile::tempdir().unwrap();
        let dir = recording(t.path(), &[([1; 16], (0..4).collect())]);
        let mut crafted = fs::read(dir.join("frag-000002.nfx")).unwrap()[..HEADER_LEN].to_vec();
        crafted[32..40].copy_from_slice(&0xfff0_00ff_f001_00b8u64.to_be_bytes());
        crafted.resize(272, 0);
        forge_fragment(&dir, 2, &crafted);
        let err = verify(&dir).unwrap_err().to_string();
        assert!(
            err.contains("fragment 2 (frag-000002.nfx)") && err.contains("plaintext"),
            "{err}"
        );
    }

    #[test]
    fn headers_that_disagree_with_the_manifest_are_named() {
        let t = tempfile::tempdir().unwrap();
        let dir = recording(t.path(), &[([1; 16], (0..4).collect())]);
        let v = verify(&dir).unwrap();
        assert_eq!(
            v.fragment_ids.iter().map(|id| id.seq).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(v.init_ids[0].kind, Kind::Init);
        let genuine = fs::read(dir.join("frag-000001.nfx")).unwrap();

        // A header announcing one byte less than the file holds.
        let mut shorter = genuine.clone();
        shorter[39] -= 1;
        forge_fragment(&dir, 1, &shorter);
        let err = verify(&dir).unwrap_err().to_string();
        assert!(err.contains("announces"), "{err}");

        // An init segment listed as a fragment.
        let init = fs::read(dir.join("init-000.nfx")).unwrap();
        forge_fragment(&dir, 1, &init);
        let err = verify(&dir).unwrap_err().to_string();
        assert!(err.contains("says it is an init segment"), "{err}");

        // Another fragment's (valid) object under this one's key record.
        forge_fragment(&dir, 1, &fs::read(dir.join("frag-000003.nfx")).unwrap());
        let err = verify(&dir).unwrap_err().to_string();
        assert!(
            err.contains("fragment 1 (frag-000001.nfx)") && err.contains("another object"),
            "{err}"
        );

        // Back to the genuine bytes: whole again.
        forge_fragment(&dir, 1, &genuine);
        verify(&dir).unwrap();
    }
    /// Removes the manifest's fragments at `positions`, with their files, renumbers the list and
    /// recomputes the chain: a deletion hidden by someone who knows the format.
    fn hide_fragments(dir: &Path, positions: &[usize]) {
        let mut m = read_manifest(dir).unwrap();
        for &p in positions.iter().rev() {
            let gone = m.fragments.remove(p);
            fs::remove_file(dir.join(&gone.file)).unwrap();
            fs::remove_file(dir.join(&gone.key_file)).unwrap();
        }
        for (i, e) in m.fragments.iter_mut().enumerate() {
            e.index = i as u64;
        }
        m.chain = chain(&m.recording_id, &m.init_segments, &m.fragments);
        fs::write(dir.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    }

    /// Issue 8, item 5: a fragment removed from the middle, the list renumbered and the chain
    /// recomputed, verified as whole.
    #[test]
    fn a_fragment_removed_from_the_middle_is_named_by_its_sequence_number() {
        let t = tempfile::tempdir().unwrap();
        let dir = recording(t.path(), &[([1; 16], (10..16).collect())]);
        hide_fragments(&dir, &[2]);
        let err = verify(&dir).unwrap_err().to_string();
        assert!(
            err.contains("fragment 12 missing between 11 and 13"),
            "{err}"
        );
        assert!(err.contains("fragment 2 (frag-000003.nfx)"), "{err}");

        let t = tempfile::tempdir().unwrap();
        let dir = recording(t.path(), &[([1; 16], (10..17).collect())]);
        hide_fragments(&dir, &[1, 2, 3, 5]);
        let err = verify(&dir).unwrap_err().to_string();
        assert!(
            err.contains("fragments 11 to 13 missing between 10 and 14"),
            "{err}"
        );
        // Every gap, for an export that writes what is there.
        let mut v = verify_manifest(&dir, read_manifest(&dir).unwrap()).unwrap();
        let all: Vec<String> = gaps(&v).iter().map(|g| g.to_string()).collect();
        assert_eq!(all.len(), 2, "{all:?}");
        assert!(
            all[1].contains("fragment 15 missing between 14 and 16"),
            "{all:?}"
        );
        v.manifest.fragments.clear();
        v.fragment_ids.clear();
        assert!(gaps(&v).is_empty());
    }

    #[test]
    fn sequence_numbers_may_jump_between_capture_streams_but_not_go_back() {
        // A camera restart: the new stream's first fragment may follow a gap (a fragment that
        // was being sealed when the old pipeline stopped is dropped), never come before.
        let t = tempfile::tempdir().unwrap();
        let dir = recording(
            t.path(),
            &[([1; 16], (0..3).collect()), ([2; 16], (4..7).collect())],
        );
        let v = verify(&dir).unwrap();
        assert_eq!(v.fragment_ids[3].seq, 4);

        let t = tempfile::tempdir().unwrap();
        let dir = recording(
            t.path(),
            &[([1; 16], (5..8).collect()), ([2; 16], (0..3).collect())],
        );
        let err = verify(&dir).unwrap_err().to_string();
        assert!(
            err.contains("fragment 3 (frag-000003.nfx)") && err.contains("sequence 0 after 7"),
            "{err}"
        );
    }

    #[test]
    fn fragments_reordered_or_under_another_streams_init_segment_are_named() {
        let t = tempfile::tempdir().unwrap();
        let dir = recording(t.path(), &[([1; 16], (0..4).collect())]);
        let mut m = read_manifest(&dir).unwrap();
        m.fragments.swap(1, 2);
        for (i, e) in m.fragments.iter_mut().enumerate() {
            e.index = i as u64;
        }
        m.chain = chain(&m.recording_id, &m.init_segments, &m.fragments);
        fs::write(dir.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        let err = verify(&dir).unwrap_err().to_string();
        assert!(
            err.contains("fragment 2 (frag-000001.nfx)") && err.contains("sequence 1 after 2"),
            "{err}"
        );

        let t = tempfile::tempdir().unwrap();
        let dir = recording(
            t.path(),
            &[([1; 16], (0..2).collect()), ([2; 16], (2..4).collect())],
        );
        let mut m = read_manifest(&dir).unwrap();
        m.fragments[3].init = Some(0);
        m.chain = chain(&m.recording_id, &m.init_segments, &m.fragments);
        fs::write(dir.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        let err = verify(&dir).unwrap_err().to_string();
        assert!(
            err.contains("fragment 3 (frag-000003.nfx)") && err.contains("another capture stream"),
            "{err}"
        );
    }
    /// Issue 8, item 6: objects, key records and the manifest are read only from regular files
    /// of the recording directory itself: no symlink (to /dev/zero, or anywhere), no FIFO (which
    /// made verify wait for ever), each refused by name and without reading it.
    #[test]
    fn only_regular_files_are_read() {
        let t = tempfile::tempdir().unwrap();
        let dir = recording(t.path(), &[([1; 16], (0..3).collect())]);
        let fifo = |p: &Path| {
            fs::remove_file(p).unwrap();
            let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
            // SAFETY: a NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        };
        let link = |p: &Path, to: &Path| {
            fs::remove_file(p).unwrap();
            std::os::unix::fs::symlink(to, p).unwrap();
        };
        // Verify runs on its own thread: a regression would hang, and must fail instead.
        let verify_capped = |dir: &Path| {
            let dir = dir.to_owned();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || tx.send(verify(&dir).map(|_| ())));
            rx.recv_timeout(Duration::from_secs(30))
                .expect("verify hung")
                .unwrap_err()
                .to_string()
        };
        let elsewhere = t.path().join("copy.nfx");
        fs::copy(dir.join("frag-000001.nfx"), &elsewhere).unwrap();
        for (file, damage) in [
            ("frag-000001.nfx", &|p: &Path| link(p, &elsewhere) as ()),
            ("frag-000001.nfx", &|p: &Path| {
                link(p, Path::new("/dev/zero"))
            }),
            ("frag-000001.nfx", &fifo),
            ("frag-000001.key", &fifo),
            ("manifest.json", &fifo),
            ("manifest.json", &|p: &Path| link(p, Path::new("/dev/zero"))),
        ] as [(&str, &dyn Fn(&Path)); 6]
        {
            let copy = t.path().join("damaged");
            let _ = fs::remove_dir_all(&copy);
            fs::create_dir(&copy).unwrap();
            for e in fs::read_dir(&dir).unwrap() {
                let e = e.unwrap();
                fs::copy(e.path(), copy.join(e.file_name())).unwrap();
            }
            damage(&copy.join(file));
            let err = verify_capped(&copy);
            assert!(
                err.contains(file) && err.contains("not a regular file"),
                "{file}: {err}"
            );
        }
    }

    #[test]
    fn a_key_record_of_the_wrong_size_is_refused_before_it_is_hashed() {
        let t = tempfile::tempdir().unwrap();
        let dir = recording(t.path(), &[([1; 16], (0..3).collect())]);
        fs::write(dir.join("frag-000002.key"), vec![0u8; 10 << 20]).unwrap();
        let err = verify(&dir).unwrap_err().to_string();
        assert!(
            err.contains("fragment 2 (frag-000002.nfx): frag-000002.key: size 10485760 differs from the expected 144"),
            "{err}"
        );
    }
}
