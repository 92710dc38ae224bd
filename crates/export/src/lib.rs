//! Export: from a sealed recording to an MP4 that ffmpeg and a browser play.
//!
//! [`export`] first checks the recording without the key ([`neoflix_store::verify()`]: every file's
//! size, SHA-256 and header, the hash chain, no fragment missing from the middle of a capture
//! stream), then, with the department secret key, unwraps each data key, authenticates every
//! chunk, checks that each object is the one its place in the manifest says (kind, stream, the
//! sequence number verification read, now authenticated), and writes the init segment followed by the fragments,
//! their decode times rebased to start at zero. Anything wrong is an [`ExportError`] naming the
//! object; nothing is written unless everything checks, and the output appears atomically.
//!
//! A recording that spans a camera restart has one init segment per capture stream; each stream
//! becomes its own file (`OUT.mp4`, `OUT-part2.mp4`, ...), since one fMP4 file cannot change
//! codec configuration midway.
//!
//! Layout: [`mp4`] the box walking needed to rebase fragment times.
#![deny(missing_docs)]

pub mod mp4;

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use neoflix_seal::{DepartmentSecretKey, Kind, WRAPPED_KEY_LEN, WrappedKey};
use neoflix_store::{Manifest, ObjectEntry, StoreError};
use thiserror::Error;

/// Why an export failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The recording does not match its manifest (see the wrapped error for the object).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The recording was sealed to another department key.
    #[error(
        "the recording was sealed to department key {recording}, but the given key is {given}: use that department's department.key"
    )]
    WrongKey {
        /// Key id in the manifest.
        recording: String,
        /// Key id of the given key.
        given: String,
    },
    /// An object failed to unwrap, authenticate or parse.
    #[error("{object} ({file}): {problem}")]
    Object {
        /// `fragment 7` or `init segment 0`.
        object: String,
        /// Its file.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// The recording holds no video.
    #[error("the recording holds no fragments: nothing to export")]
    Empty,
    /// Writing the output failed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The output path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What an export wrote.
#[derive(Debug)]
pub struct Exported {
    /// The manifest of the recording.
    pub manifest: Manifest,
    /// The files written, in order (one per capture stream).
    pub files: Vec<PathBuf>,
    /// The gaps written as holes ([`StoreError::Gap`]); empty unless [`Gaps::Allow`].
    pub gaps: Vec<StoreError>,
}

/// What export does with fragments missing from the middle of a capture stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gaps {
    /// Refuse the recording, naming the first gap: someone may have removed video.
    Refuse,
    /// Write what is there, each gap a hole in the video, and report every gap in
    /// [`Exported::gaps`]: for a recording whose box lost fragments while its storage failed,
    /// once someone has looked at the gaps and decided so.
    Allow,
}

fn object_error(kind: &str, e: &ObjectEntry, problem: impl ToString) -> ExportError {
    ExportError::Object {
        object: format!("{kind} {}", e.index),
        file: e.file.escape_debug().to_string(),
        problem: problem.to_string(),
    }
}

/// An object whose authenticated header is not the one verification read from the same file.
const CHANGED: &str =
    "changed while the recording was being read (its header differs from the one verified)";

/// Opens one object: reads it and its key record, unwraps, authenticates, checks its kind.
fn open_object(
    dir: &Path,
    kind: &str,
    e: &ObjectEntry,
    key: &DepartmentSecretKey,
    expect: Kind,
) -> Result<(neoflix_seal::Header, Vec<u8>), ExportError> {
    // Regular files only, no larger than verification found them: the buffer is sized by that.
    let sealed = neoflix_store::verify::read_regular(&dir.join(&e.file), e.size)
        .map_err(|err| object_error(kind, e, err))?;
    let record =
        neoflix_store::verify::read_regular(&dir.join(&e.key_file), WRAPPED_KEY_LEN as u64)
            .map_err(|err| {
                object_error(kind, e, format!("{}: {err}", e.key_file.escape_debug()))
            })?;
    let wrapped = WrappedKey::from_bytes(&record).map_err(|err| object_error(kind, e, err))?;
    let data_key = wrapped
        .unwrap_for(key, &sealed)
        .map_err(|err| object_error(kind, e, err))?;
    let (header, plain) =
        neoflix_seal::open(&data_key, &sealed).map_err(|err| object_error(kind, e, err))?;
    if header.id.kind != expect {
        return Err(object_error(kind, e, "holds the wrong kind of object"));
    }
    Ok((header, plain))
}

/// Output path of part `n` (0-based).
fn part_path(out: &Path, n: usize) -> PathBuf {
    if n == 0 {
        return out.to_owned();
    }
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let ext = out
        .extension()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "mp4".into());
    out.with_file_name(format!("{stem}-part{}.{ext}", n + 1))
}

/// Exports `dir` to `out`. `progress(done, total)` is called after each fragment.
pub fn export(
    dir: &Path,
    key: &DepartmentSecretKey,
    out: &Path,
    progress: impl FnMut(usize, usize),
) -> Result<Exported, ExportError> {
    assemble(dir, key, Some(out), Gaps::Refuse, progress)
}

/// [`export`], with a choice about gaps in the sequence numbers.
pub fn export_with(
    dir: &Path,
    key: &DepartmentSecretKey,
    out: &Path,
    gaps: Gaps,
    progress: impl FnMut(usize, usize),
) -> Result<Exported, ExportError> {
    assemble(dir, key, Some(out), gaps, progress)
}

/// Checks everything [`export`] checks (every tag, every object's identity and order) without
/// writing anything.
pub fn check(dir: &Path, key: &DepartmentSecretKey) -> Result<Manifest, ExportError> {
    assemble(dir, key, None, Gaps::Refuse, |_, _| {}).map(|e| e.manifest)
}

fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Write {
        path: path.to_owned(),
        source,
    }
}

/// One output file being written: everything of one capture stream.
struct Part {
    /// Index of the init segment it decodes with.
    init: u64,
    /// Decode time of its first fragment, subtracted from all of them.
    base: u64,
    /// The open temporary file, its path and the final path (`None` when only checking).
    file: Option<(fs::File, PathBuf, PathBuf)>,
}

impl Part {
    fn open(
        out: Option<&Path>,
        n: usize,
        init: u64,
        base: u64,
        init_plain: &[u8],
    ) -> Result<Part, ExportError> {
        let file = match out {
            None => None,
            Some(out) => {
                let path = part_path(out, n);
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                let tmp = path.with_file_name(format!(".{name}.partial"));
                // Plaintext video: readable by its owner only. A fresh file (a stale one of a
                // killed export is removed, never reused with its mode) renamed over the
                // output, so an existing file's wider mode does not carry over either.
                match fs::remove_file(&tmp) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(write_error(&tmp)(e));
                    }
                    _ => {}
                }
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(write_error(&tmp))?;
                f.write_all(init_plain).map_err(write_error(&tmp))?;
                Some((f, tmp, path))
            }
        };
        Ok(Part { init, base, file })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), ExportError> {
        match &mut self.file {
            Some((f, tmp, _)) => f.write_all(bytes).map_err(write_error(tmp)),
            None => Ok(()),
        }
    }

    /// Flushes the part; returns (temporary, final) paths to rename once everything checked.
    fn close(self) -> Result<Option<(PathBuf, PathBuf)>, ExportError> {
        match self.file {
            Some((f, tmp, path)) => {
                f.sync_all().map_err(write_error(&tmp))?;
                Ok(Some((tmp, path)))
            }
            None => Ok(None),
        }
    }
}

fn assemble(
    dir: &Path,
    key: &DepartmentSecretKey,
    out: Option<&Path>,
    gaps: Gaps,
    mut progress: impl FnMut(usize, usize),
) -> Result<Exported, ExportError> {
    let (verified, gaps) = match gaps {
        Gaps::Refuse => (neoflix_store::verify(dir)?, Vec::new()),
        Gaps::Allow => {
            let v = neoflix_store::verify_manifest(dir, neoflix_store::read_manifest(dir)?)?;
            let gaps = neoflix_store::gaps(&v);
            (v, gaps)
        }
    };
    let manifest = verified.manifest;
    let given = key.public_key().key_id().0;
    if manifest.recipient_key_id != given {
        return Err(ExportError::WrongKey {
            recording: manifest.recipient_key_id.clone(),
            given,
        });
    }
    if manifest.fragments.is_empty() {
        return Err(ExportError::Empty);
    }
    let mut inits = Vec::with_capacity(manifest.init_segments.len());
    for (e, id) in manifest.init_segments.iter().zip(&verified.init_ids) {
        let (header, plain) = open_object(dir, "init segment", e, key, Kind::Init)?;
        if header.id != *id {
            return Err(object_error("init segment", e, CHANGED));
        }
        inits.push((header, plain));
    }

    // Parts are written to temporary files and renamed only when everything checked.
    let total = manifest.fragments.len();
    let mut done_parts: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut current: Option<Part> = None;
    let result = (|| {
        for (done, e) in manifest.fragments.iter().enumerate() {
            // verify() checked every fragment names an init segment of this recording.
            let Some((init_index, (init_header, init_plain))) = e
                .init
                .and_then(|i| Some((i, inits.get(usize::try_from(i).ok()?)?)))
            else {
                return Err(object_error(
                    "fragment",
                    e,
                    "refers to no init segment of this recording",
                ));
            };
            let (header, mut plain) = open_object(dir, "fragment", e, key, Kind::Fragment)?;
            // verify() checked the order and contiguity of the sequence numbers it read from the
            // headers; now that the header is authenticated, it must be the one verify() read.
            if verified.fragment_ids.get(done) != Some(&header.id) {
                return Err(object_error("fragment", e, CHANGED));
            }
            if header.id.stream != init_header.id.stream {
                return Err(object_error(
                    "fragment",
                    e,
                    "belongs to another capture stream than its init segment",
                ));
            }
            if current.as_ref().map(|p| p.init) != Some(init_index) {
                if let Some(part) = current.take() {
                    done_parts.extend(part.close()?);
                }
                let base = mp4::first_decode_time(&plain)
                    .map_err(|err| object_error("fragment", e, err))?;
                let n = done_parts.len();
                current = Some(Part::open(out, n, init_index, base, init_plain)?);
            }
            let part = current.as_mut().expect("opened above");
            mp4::rebase_decode_time(&mut plain, part.base)
                .map_err(|err| object_error("fragment", e, err))?;
            part.write(&plain)?;
            progress(done + 1, total);
        }
        if let Some(part) = current.take() {
            done_parts.extend(part.close()?);
        }
        Ok(())
    })();
    if let Err(e) = result {
        for (tmp, _) in &done_parts {
            let _ = fs::remove_file(tmp);
        }
        if let Some(Part {
            file: Some((_, tmp, _)),
            ..
        }) = current
        {
            let _ = fs::remove_file(tmp);
        }
        return Err(e);
    }
    let mut files = Vec::new();
    for (tmp, path) in done_parts {
        fs::rename(&tmp, &path).map_err(write_error(&path))?;
        files.push(path);
    }
    Ok(Exported {
        manifest,
        files,
        gaps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use neoflix_seal::{ObjectId, seal};
    use neoflix_store::{RecordingWriter, Ring};
    use std::time::{Duration, SystemTime};

    use crate::mp4::tests::bx;

    /// A minimal fragment whose `tfdt` is `t`.
    fn fragment(t: u64) -> Vec<u8> {
        let mut tfdt = vec![1, 0, 0, 0];
        tfdt.extend_from_slice(&t.to_be_bytes());
        let traf = bx(b"traf", &bx(b"tfdt", &tfdt));
        [bx(b"moof", &traf), bx(b"mdat", &t.to_be_bytes())].concat()
    }

    /// A recording spanning two capture streams (a camera restart), three fragments each.
    fn two_stream_recording(root: &Path, dept: &DepartmentSecretKey) -> PathBuf {
        let (mut ring, _) =
            Ring::open(&root.join("ring"), Duration::from_secs(100), 1 << 30).unwrap();
        let mut w = RecordingWriter::create(
            &root.join("rec"),
            "r",
            "room",
            "control",
            &dept.public_key(),
            SystemTime::now(),
        )
        .unwrap();
        let mut seq = 0;
        for stream in [[1u8; 16], [2u8; 16]] {
            let (k, s) = seal(
                &ObjectId {
                    stream,
                    seq: 0,
                    kind: Kind::Init,
                },
                &bx(b"ftyp", &stream),
            )
            .unwrap();
            ring.begin_stream(stream, &s, k).unwrap();
            for i in 0..3u64 {
                let (k, s) = seal(
                    &ObjectId {
                        stream,
                        seq,
                        kind: Kind::Fragment,
                    },
                    &fragment(9000 * (100 + i)),
                )
                .unwrap();
                ring.push(seq, &s, k, Duration::from_secs(1), SystemTime::now())
                    .unwrap();
                let entry = ring.take(seq).unwrap();
                let init = ring.init(&stream).unwrap();
                w.claim(&entry, &init, false).unwrap();
                seq += 1;
            }
        }
        w.finalize("control", SystemTime::now()).unwrap();
        root.join("rec/r")
    }

    #[test]
    fn a_camera_restart_gives_one_file_per_stream_each_starting_at_zero() {
        let t = tempfile::tempdir().unwrap();
        let dept = DepartmentSecretKey::generate().unwrap();
        let rec = two_stream_recording(t.path(), &dept);
        let out = t.path().join("out.mp4");
        let mut calls = Vec::new();
        let e = export(&rec, &dept, &out, |d, n| calls.push((d, n))).unwrap();
        assert_eq!(e.files, vec![out.clone(), t.path().join("out-part2.mp4")]);
        assert_eq!(calls.last(), Some(&(6, 6)));
        for (file, stream) in e.files.iter().zip([[1u8; 16], [2u8; 16]]) {
            let bytes = fs::read(file).unwrap();
            let init = bx(b"ftyp", &stream);
            assert!(bytes.starts_with(&init));
            let frags = &bytes[init.len()..];
            let one = fragment(0).len();
            let times: Vec<u64> = frags
                .chunks(one)
                .map(|f| mp4::first_decode_time(f).unwrap())
                .collect();
            assert_eq!(times, vec![0, 9000, 18000]);
        }
        assert!(check(&rec, &dept).is_ok());
    }

    /// Issue 8, item 6: an export is plaintext video; it was created with the umask's mode
    /// (usually world-readable), and an existing file kept its own.
    #[test]
    fn exports_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let dept = DepartmentSecretKey::generate().unwrap();
        let rec = two_stream_recording(t.path(), &dept);
        let out = t.path().join("out.mp4");
        fs::write(&out, b"older").unwrap();
        fs::set_permissions(&out, fs::Permissions::from_mode(0o644)).unwrap();
        // A stale temporary file of an export that was killed, readable by all.
        let stale = t.path().join(".out-part2.mp4.partial");
        fs::write(&stale, b"stale").unwrap();
        fs::set_permissions(&stale, fs::Permissions::from_mode(0o666)).unwrap();
        let e = export(&rec, &dept, &out, |_, _| {}).unwrap();
        for f in &e.files {
            let mode = fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} has mode {mode:o}", f.display());
        }
        assert_eq!(e.files.len(), 2);
    }

    #[test]
    fn a_gap_is_refused_unless_allowed_and_then_written_as_a_hole() {
        let t = tempfile::tempdir().unwrap();
        let dept = DepartmentSecretKey::generate().unwrap();
        let rec = two_stream_recording(t.path(), &dept);
        // The second of the first stream's three fragments removed and hidden.
        let mut m = neoflix_store::verify(&rec).unwrap().manifest;
        m.fragments.remove(1);
        for (i, e) in m.fragments.iter_mut().enumerate() {
            e.index = i as u64;
        }
        m.chain = neoflix_store::manifest::chain(&m.recording_id, &m.init_segments, &m.fragments);
        fs::write(rec.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        let out = t.path().join("out.mp4");
        let err = export(&rec, &dept, &out, |_, _| {}).unwrap_err();
        assert!(
            err.to_string()
                .contains("fragment 1 missing between 0 and 2"),
            "{err}"
        );
        assert!(!out.exists());
        let e = export_with(&rec, &dept, &out, Gaps::Allow, |_, _| {}).unwrap();
        assert_eq!(e.gaps.len(), 1);
        assert!(matches!(
            e.gaps[0],
            StoreError::Gap {
                before: 0,
                after: 2,
                ..
            }
        ));
        // The hole stays a hole: the fragment after it keeps its distance from the first.
        let bytes = fs::read(&e.files[0]).unwrap();
        let frags = &bytes[bx(b"ftyp", &[1u8; 16]).len()..];
        let times: Vec<u64> = frags
            .chunks(fragment(0).len())
            .map(|f| mp4::first_decode_time(f).unwrap())
            .collect();
        assert_eq!(times, vec![0, 18000]);
    }

    #[test]
    fn the_wrong_department_key_is_named_and_nothing_is_written() {
        let t = tempfile::tempdir().unwrap();
        let dept = DepartmentSecretKey::generate().unwrap();
        let rec = two_stream_recording(t.path(), &dept);
        let other = DepartmentSecretKey::generate().unwrap();
        let out = t.path().join("out.mp4");
        let err = export(&rec, &other, &out, |_, _| {}).unwrap_err();
        assert!(matches!(err, ExportError::WrongKey { .. }), "{err}");
        assert!(!out.exists());
    }

    #[test]
    fn a_damaged_fragment_leaves_no_partial_file_behind() {
        let t = tempfile::tempdir().unwrap();
        let dept = DepartmentSecretKey::generate().unwrap();
        let rec = two_stream_recording(t.path(), &dept);
        // Damage the last fragment: by then the first part was complete, the second one open.
        let m = neoflix_store::verify(&rec).unwrap().manifest;
        let last = m.fragments.last().unwrap();
        let p = rec.join(&last.file);
        let mut b = fs::read(&p).unwrap();
        b[70] ^= 1;
        fs::write(&p, &b).unwrap();
        // Rewrite the manifest to match, so that only the chunk tags can tell.
        let mut m = m;
        m.fragments[5].sha256 = neoflix_seal::sha256_hex(&b);
        m.chain = neoflix_store::manifest::chain(&m.recording_id, &m.init_segments, &m.fragments);
        fs::write(rec.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        let err = export(&rec, &dept, &t.path().join("o.mp4"), |_, _| {}).unwrap_err();
        assert!(
            err.to_string().contains("fragment 5 (frag-000005.nfx)"),
            "{err}"
        );
        assert!(err.to_string().contains("authentication failed"), "{err}");
        let left: Vec<_> = fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            left.iter().all(|n| !n.to_string_lossy().contains("mp4")),
            "{left:?}"
        );
    }
}
