//! Export: from a sealed recording to an MP4 that ffmpeg and a browser play.
//!
//! [`export`] first checks the recording without the key: its custody (the room box's
//! signature over the manifest, by the device the manifest names, under the department CA —
//! [`Signatures`] says what is required), then [`neoflix_format::verify()`] (every file's size,
//! SHA-256 and header, the hash chain, no fragment missing from the middle of a capture
//! stream); then, with the department secret key, unwraps each data key, authenticates every
//! chunk, checks that each object is the one its place in the manifest says (kind, stream, the
//! sequence number verification read, now authenticated), and indexes every fragment's samples
//! with [`neoflix_mp4::Progressive`]. Only then, in a second pass that opens and checks each
//! fragment again (so that no more than one fragment is held in memory), it writes a progressive
//! MP4 (`moov` first, starting at zero, its full duration in the header: what browsers, VLC,
//! QuickTime and the Windows player need to show the length and seek), with the recording's
//! markers as chapters, and beside it the same chapters as WebVTT (`OUT.chapters.vtt`).
//! Anything wrong is an [`ExportError`] naming the object; nothing is written unless everything
//! checks, and the output appears atomically.
//!
//! A recording that spans a camera restart has one init segment per capture stream; each stream
//! becomes its own file (`OUT.mp4`, `OUT-part2.mp4`, ...), since one MP4 track cannot change
//! codec configuration midway.
#![deny(missing_docs)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use neoflix_format::custody::{self, Custody};
use neoflix_format::files::read_regular;
use neoflix_format::{
    FormatError, Kind, Manifest, ObjectEntry, SignatureError, TrustAnchors, WRAPPED_KEY_LEN,
    WrappedKey,
};
use neoflix_mp4::{Chapter, Layout, Progressive};
use neoflix_open::DepartmentSecretKey;
use thiserror::Error;

/// Why an export failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The recording does not match its manifest (see the wrapped error for the object).
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The recording's signature does not prove who recorded it or that its manifest is
    /// unchanged (or it has none, and unsigned recordings were not allowed).
    #[error(transparent)]
    Custody(#[from] SignatureError),
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
    /// The time range asked for holds no video of the recording.
    #[error(
        "no video between {from_secs} s and {to_secs} s: the recording is {duration_secs} s long"
    )]
    EmptyRange {
        /// Start of the range, seconds from the first frame.
        from_secs: f64,
        /// End of the range.
        to_secs: f64,
        /// The manifest's duration.
        duration_secs: f64,
    },
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
    /// Who signed it, or that nobody did (only with [`Signatures::AllowUnsigned`]).
    pub custody: Custody,
    /// The MP4 files written, in order (one per capture stream).
    pub files: Vec<PathBuf>,
    /// The WebVTT chapter files written beside them (`OUT.chapters.vtt`), for the parts that
    /// have markers.
    pub chapter_files: Vec<PathBuf>,
    /// The gaps written as holes ([`FormatError::Gap`]); empty unless [`Gaps::Allow`].
    pub gaps: Vec<FormatError>,
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

/// What export requires of a recording's signature. A signature that is there but does not
/// hold (an edited manifest, a replaced object, another box's certificate) is refused always.
#[derive(Clone, Copy)]
pub enum Signatures<'a> {
    /// Signed by the device the manifest names, with a certificate of this CA.
    Require(&'a TrustAnchors),
    /// An unsigned recording is exported too (its custody is not proven: say so to the user);
    /// a signed one is checked against the CA if one is given, else only for integrity.
    AllowUnsigned(Option<&'a TrustAnchors>),
}

/// How to export.
#[derive(Clone, Copy)]
pub struct Options<'a> {
    /// What is required of the signature.
    pub signatures: Signatures<'a>,
    /// What to do with fragments missing from the middle of a capture stream.
    pub gaps: Gaps,
    /// Only this part of the recording, `(from, to)` in seconds from its first frame: from the
    /// keyframe at or before `from` to the last frame that starts before `to`. `None`: all.
    pub range: Option<(f64, f64)>,
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
) -> Result<(neoflix_format::Header, Vec<u8>), ExportError> {
    // Regular files only, no larger than verification found them: the buffer is sized by that.
    let sealed =
        read_regular(&dir.join(&e.file), e.size).map_err(|err| object_error(kind, e, err))?;
    let record = read_regular(&dir.join(&e.key_file), WRAPPED_KEY_LEN as u64)
        .map_err(|err| object_error(kind, e, format!("{}: {err}", e.key_file.escape_debug())))?;
    // Checked again on the bytes about to be opened: the files may have changed since
    // verification hashed them, and only these digests are covered by the box's signature.
    for (what, bytes, expected) in [
        (&e.file, &sealed, &e.sha256),
        (&e.key_file, &record, &e.key_sha256),
    ] {
        if neoflix_format::sha256_hex(bytes) != *expected {
            return Err(object_error(
                kind,
                e,
                format!(
                    "{}: SHA-256 differs from the manifest: changed since it was verified",
                    what.escape_debug()
                ),
            ));
        }
    }
    let wrapped = WrappedKey::from_bytes(&record).map_err(|err| object_error(kind, e, err))?;
    let data_key =
        neoflix_open::unwrap(&wrapped, key, &sealed).map_err(|err| object_error(kind, e, err))?;
    let (header, plain) =
        neoflix_open::open(&data_key, &sealed).map_err(|err| object_error(kind, e, err))?;
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

/// The WebVTT chapter file beside the MP4 `part`: `OUT.chapters.vtt` beside `OUT.mp4`.
fn chapters_path(part: &Path) -> PathBuf {
    let stem = part
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    part.with_file_name(format!("{stem}.chapters.vtt"))
}

/// Exports `dir` to `out`. `progress(done, total)` is called after each fragment opened: every
/// fragment is opened twice, once to check and index it, once to write it.
pub fn export(
    dir: &Path,
    key: &DepartmentSecretKey,
    out: &Path,
    options: Options<'_>,
    progress: impl FnMut(usize, usize),
) -> Result<Exported, ExportError> {
    assemble(dir, key, Some(out), options, progress)
}

/// Checks everything [`export`] checks (custody, every tag, every object's identity and order)
/// without writing anything.
pub fn check(
    dir: &Path,
    key: &DepartmentSecretKey,
    options: Options<'_>,
) -> Result<Exported, ExportError> {
    assemble(dir, key, None, options, |_, _| {})
}

/// Checks the custody of the recording in `dir` as `signatures` requires: what `neoflix verify`
/// and export both do before anything else.
pub fn check_custody(
    dir: &Path,
    manifest_bytes: &[u8],
    manifest: &Manifest,
    signatures: Signatures<'_>,
) -> Result<Custody, SignatureError> {
    let trust = match signatures {
        Signatures::Require(t) => Some(t),
        Signatures::AllowUnsigned(t) => t,
    };
    let custody = custody::check_recording(dir, manifest_bytes, manifest, trust)?;
    if custody == Custody::Unsigned && matches!(signatures, Signatures::Require(_)) {
        return Err(SignatureError::Unsigned);
    }
    Ok(custody)
}

fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Write {
        path: path.to_owned(),
        source,
    }
}

/// One capture stream: its init segment, its fragments, and the index of their samples.
struct Part {
    /// Index of the init segment it decodes with.
    init: u64,
    /// Indexes (into the manifest's fragments) of its fragments, in order.
    fragments: Vec<usize>,
    /// The samples of its fragments, indexed as they were checked.
    writer: Progressive,
}

/// A file being written: its temporary path and where it goes once everything checked.
struct Pending {
    tmp: PathBuf,
    path: PathBuf,
}

/// Creates `path`'s temporary sibling, readable by its owner only. A stale one of a killed
/// export is removed, never reused with its mode, and the file is renamed over the output later,
/// so an existing file's wider mode does not carry over either.
fn create_private(path: &Path) -> Result<(fs::File, Pending), ExportError> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.partial"));
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(write_error(&tmp)(e));
        }
        _ => {}
    }
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write_error(&tmp))?;
    Ok((
        f,
        Pending {
            tmp,
            path: path.to_owned(),
        },
    ))
}

/// A marker as a chapter title: its label (opened with the department key when sealed), or
/// its number and who set it when it has none, or says why it does not open.
fn chapter_title(
    n: usize,
    m: &neoflix_format::Marker,
    recording_id: &str,
    key: &DepartmentSecretKey,
) -> String {
    let label = match &m.sealed_label {
        Some(s) => match neoflix_open::open_label(key, recording_id, &m.utc, s) {
            Ok(l) => l,
            Err(_) => return format!("Marker {} (its label does not open)", n + 1),
        },
        None => m.label.clone(),
    };
    if label.trim().is_empty() {
        format!("Marker {} ({})", n + 1, m.by)
    } else {
        label
    }
}

fn assemble(
    dir: &Path,
    key: &DepartmentSecretKey,
    out: Option<&Path>,
    options: Options<'_>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Exported, ExportError> {
    // Custody first: the manifest is trusted for nothing until its signature holds.
    let (manifest_bytes, manifest) = neoflix_format::verify::read_manifest_bytes(dir)?;
    let custody = check_custody(dir, &manifest_bytes, &manifest, options.signatures)?;
    let verified = neoflix_format::verify_manifest(dir, manifest)?;
    let gaps = match options.gaps {
        Gaps::Refuse => {
            neoflix_format::check_contiguous(&verified)?;
            Vec::new()
        }
        Gaps::Allow => neoflix_format::gaps(&verified),
    };
    let manifest = &verified.manifest;
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
    let chapters: Vec<Chapter> = manifest
        .markers
        .iter()
        .enumerate()
        .map(|(n, m)| {
            Chapter::new(
                m.offset_secs,
                &chapter_title(n, m, manifest.label_recording_id(), key),
            )
        })
        .collect();

    // Pass 1: open and check every fragment, index its samples per capture stream.
    let total = manifest.fragments.len() * if out.is_some() { 2 } else { 1 };
    let mut parts: Vec<Part> = Vec::new();
    // Where the current stream starts, in seconds from the first frame: the fragments before it.
    let mut elapsed_ms = 0u64;
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
        let plain = open_fragment(dir, key, &verified, done)?;
        if plain.0.id.stream != init_header.id.stream {
            return Err(object_error(
                "fragment",
                e,
                "belongs to another capture stream than its init segment",
            ));
        }
        if parts.last().map(|p| p.init) != Some(init_index) {
            let init_entry = &manifest.init_segments[init_index as usize];
            let mut writer = Progressive::new(init_plain)
                .map_err(|err| object_error("init segment", init_entry, err))?;
            let start = elapsed_ms as f64 / 1000.0;
            let shifted: Vec<Chapter> = chapters
                .iter()
                .map(|c| Chapter {
                    start_secs: c.start_secs - start,
                    title: c.title.clone(),
                })
                .collect();
            writer.chapters(&shifted);
            if let Some((from, to)) = options.range {
                writer.range(from - start, to - start);
            }
            parts.push(Part {
                init: init_index,
                fragments: Vec::new(),
                writer,
            });
        }
        let part = parts.last_mut().expect("pushed above");
        part.writer
            .push_fragment(&plain.1)
            .map_err(|err| object_error("fragment", e, err))?;
        part.fragments.push(done);
        elapsed_ms = elapsed_ms.saturating_add(e.duration_ms.unwrap_or(0));
        progress(done + 1, total);
    }

    // The cut and the headers of each file; a part outside the range is not written.
    let mut layouts: Vec<(Vec<usize>, Layout)> = Vec::new();
    for part in parts {
        let init_entry = &manifest.init_segments[part.init as usize];
        match part.writer.finish() {
            Ok(layout) => layouts.push((part.fragments, layout)),
            Err(neoflix_mp4::Mp4Error::Empty { .. }) if options.range.is_some() => {}
            Err(err) => return Err(object_error("init segment", init_entry, err)),
        }
    }
    if let (Some((from_secs, to_secs)), true) = (options.range, layouts.is_empty()) {
        return Err(ExportError::EmptyRange {
            from_secs,
            to_secs,
            duration_secs: manifest.duration_secs,
        });
    }

    let mut files = Vec::new();
    let mut chapter_files = Vec::new();
    if let Some(out) = out {
        // Pass 2: each file written to a temporary one, renamed only when all are complete.
        let mut pending: Vec<Pending> = Vec::new();
        let mut done = manifest.fragments.len();
        let written = (|| {
            for (n, (fragments, layout)) in layouts.iter().enumerate() {
                let path = part_path(out, n);
                let (mut f, p) = create_private(&path)?;
                let tmp = p.tmp.clone();
                pending.push(p);
                f.write_all(layout.head()).map_err(write_error(&tmp))?;
                for (i, &index) in fragments.iter().enumerate() {
                    let (_, plain) = open_fragment(dir, key, &verified, index)?;
                    let e = &manifest.fragments[index];
                    for piece in layout
                        .media(i, &plain)
                        .map_err(|err| object_error("fragment", e, err))?
                    {
                        f.write_all(piece).map_err(write_error(&tmp))?;
                    }
                    done += 1;
                    progress(done, total);
                }
                f.sync_all().map_err(write_error(&tmp))?;
                if !layout.chapters().is_empty() {
                    let vtt =
                        neoflix_mp4::webvtt_chapters(layout.chapters(), layout.duration_secs());
                    let (mut f, p) = create_private(&chapters_path(&path))?;
                    let tmp = p.tmp.clone();
                    pending.push(p);
                    f.write_all(vtt.as_bytes()).map_err(write_error(&tmp))?;
                    f.sync_all().map_err(write_error(&tmp))?;
                }
            }
            Ok(())
        })();
        if let Err(e) = written {
            for p in &pending {
                let _ = fs::remove_file(&p.tmp);
            }
            return Err(e);
        }
        for p in pending {
            fs::rename(&p.tmp, &p.path).map_err(write_error(&p.path))?;
            if p.path.extension().is_some_and(|x| x == "vtt") {
                chapter_files.push(p.path);
            } else {
                files.push(p.path);
            }
        }
    }
    Ok(Exported {
        manifest: verified.manifest,
        custody,
        files,
        chapter_files,
        gaps,
    })
}

/// Opens fragment `index` of the manifest and checks that its authenticated header is the one
/// verification read (order and contiguity were checked on those).
fn open_fragment(
    dir: &Path,
    key: &DepartmentSecretKey,
    verified: &neoflix_format::Verified,
    index: usize,
) -> Result<(neoflix_format::Header, Vec<u8>), ExportError> {
    let e = &verified.manifest.fragments[index];
    let (header, plain) = open_object(dir, "fragment", e, key, Kind::Fragment)?;
    if verified.fragment_ids.get(index) != Some(&header.id) {
        return Err(object_error("fragment", e, CHANGED));
    }
    Ok((header, plain))
}

#[cfg(test)]
mod tests {
    use super::*;
    use neoflix_format::{ObjectId, SigningIdentity};
    use neoflix_pki::{Ca, Role};
    use neoflix_seal::seal;
    use neoflix_store::{RecordingWriter, Ring};
    use std::time::{Duration, SystemTime};

    /// Unsigned recordings, for the checks below the signature.
    const UNSIGNED: Options<'static> = Options {
        signatures: Signatures::AllowUnsigned(None),
        gaps: Gaps::Refuse,
        range: None,
    };

    /// A real isofmp4mux stream (see crates/mp4/testdata/README.md): 1 s, 1 s and 0.4 s.
    const INIT: &[u8] = include_bytes!("../../mp4/testdata/init.mp4");
    const FRAGMENTS: [&[u8]; 3] = [
        include_bytes!("../../mp4/testdata/frag0.m4s"),
        include_bytes!("../../mp4/testdata/frag1.m4s"),
        include_bytes!("../../mp4/testdata/frag2.m4s"),
    ];
    const DURATIONS_MS: [u64; 3] = [1000, 1000, 400];

    /// The top-level boxes of a file: (type, payload).
    fn top_level(file: &[u8]) -> Vec<([u8; 4], &[u8])> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos + 8 <= file.len() {
            let size = u32::from_be_bytes(file[pos..pos + 4].try_into().unwrap()) as usize;
            assert!(
                size >= 8 && pos + size <= file.len(),
                "a box of size {size}"
            );
            out.push((
                file[pos + 4..pos + 8].try_into().unwrap(),
                &file[pos + 8..pos + size],
            ));
            pos += size;
        }
        assert_eq!(pos, file.len());
        out
    }

    /// A progressive MP4's kinds of top-level boxes and its duration in ms (from `mvhd`).
    fn progressive(path: &Path) -> (Vec<[u8; 4]>, u64) {
        let bytes = fs::read(path).unwrap();
        let boxes = top_level(&bytes);
        let moov = boxes.iter().find(|b| &b.0 == b"moov").unwrap().1;
        let mvhd = top_level(moov)[0];
        assert_eq!(&mvhd.0, b"mvhd");
        let ms = u32::from_be_bytes(mvhd.1[16..20].try_into().unwrap());
        (boxes.iter().map(|b| b.0).collect(), u64::from(ms))
    }

    /// Sets the recording's markers: (seconds from the first frame, label).
    fn set_markers(rec: &Path, markers: &[(f64, &str)]) {
        let mut m = neoflix_format::verify(rec).unwrap().manifest;
        m.markers = markers
            .iter()
            .map(|&(offset_secs, label)| neoflix_format::Marker {
                utc: "2026-11-28T12:00:00Z".into(),
                offset_secs,
                label: label.into(),
                sealed_label: None,
                by: "pedal".into(),
            })
            .collect();
        fs::write(rec.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    }

    /// A recording spanning two capture streams (a camera restart), three fragments each.
    fn two_stream_recording(root: &Path, dept: &DepartmentSecretKey) -> PathBuf {
        recording_signed_by(root, dept, None)
    }

    fn recording_signed_by(
        root: &Path,
        dept: &DepartmentSecretKey,
        signer: Option<&SigningIdentity>,
    ) -> PathBuf {
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
                INIT,
            )
            .unwrap();
            ring.begin_stream(stream, &s, k).unwrap();
            for i in 0..3 {
                let (k, s) = seal(
                    &ObjectId {
                        stream,
                        seq,
                        kind: Kind::Fragment,
                    },
                    FRAGMENTS[i],
                )
                .unwrap();
                let duration = Duration::from_millis(DURATIONS_MS[i]);
                ring.push(
                    seq,
                    &s,
                    k,
                    duration,
                    SystemTime::now(),
                    std::time::Instant::now(),
                )
                .unwrap();
                let init = ring.init(&stream).unwrap();
                w.claim(ring.get(seq).unwrap(), &init, false).unwrap();
                ring.keep(seq);
                seq += 1;
            }
        }
        w.finalize("control", SystemTime::now(), signer).unwrap();
        root.join("rec/r")
    }

    #[test]
    fn a_camera_restart_gives_one_file_per_stream_each_starting_at_zero() {
        let t = tempfile::tempdir().unwrap();
        let dept = DepartmentSecretKey::generate().unwrap();
        let rec = two_stream_recording(t.path(), &dept);
        let out = t.path().join("out.mp4");
        let mut calls = Vec::new();
        let e = export(&rec, &dept, &out, UNSIGNED, |d, n| calls.push((d, n))).unwrap();
        assert_eq!(e.files, vec![out.clone(), t.path().join("out-part2.mp4")]);
        // Every fragment opened twice: to check it, then to write it.
        assert_eq!(calls.last(), Some(&(12, 12)));
        for file in &e.files {
            let (boxes, ms) = progressive(file);
            assert_eq!(boxes, [*b"ftyp", *b"moov", *b"mdat"], "moov first");
            assert_eq!(ms, 2400, "each stream from 0 to its end");
        }
        assert!(e.chapter_files.is_empty(), "no markers, no chapters");
        assert!(check(&rec, &dept, UNSIGNED).is_ok());
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
        let e = export(&rec, &dept, &out, UNSIGNED, |_, _| {}).unwrap();
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
        let mut m = neoflix_format::verify(&rec).unwrap().manifest;
        m.fragments.remove(1);
        for (i, e) in m.fragments.iter_mut().enumerate() {
            e.index = i as u64;
        }
        m.chain = neoflix_format::manifest::chain(&m.recording_id, &m.init_segments, &m.fragments);
        fs::write(rec.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        let out = t.path().join("out.mp4");
        let err = export(&rec, &dept, &out, UNSIGNED, |_, _| {}).unwrap_err();
        assert!(
            err.to_string()
                .contains("fragment 1 missing between 0 and 2"),
            "{err}"
        );
        assert!(!out.exists());
        let e = export(
            &rec,
            &dept,
            &out,
            Options {
                gaps: Gaps::Allow,
                ..UNSIGNED
            },
            |_, _| {},
        )
        .unwrap();
        assert_eq!(e.gaps.len(), 1);
        assert!(matches!(
            e.gaps[0],
            FormatError::Gap {
                before: 0,
                after: 2,
                ..
            }
        ));
        // The hole stays a hole: the fragment after it keeps its distance from the first.
        assert_eq!(progressive(&e.files[0]).1, 2400);
    }

    #[test]
    fn markers_become_chapters_of_the_part_they_fall_in_with_a_webvtt_file_beside_it() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let dept = DepartmentSecretKey::generate().unwrap();
        let rec = two_stream_recording(t.path(), &dept);
        // The second stream starts 2.4 s in (the durations of the first one's fragments).
        set_markers(&rec, &[(0.5, "cord --> clamped"), (1.5, ""), (3.0, "late")]);
        let out = t.path().join("out.mp4");
        let e = export(&rec, &dept, &out, UNSIGNED, |_, _| {}).unwrap();
        assert_eq!(
            e.chapter_files,
            [
                t.path().join("out.chapters.vtt"),
                t.path().join("out-part2.chapters.vtt")
            ]
        );
        let first = fs::read_to_string(&e.chapter_files[0]).unwrap();
        assert_eq!(
            first,
            "WEBVTT\n\n1\n00:00:00.000 --> 00:00:00.500\nStart\n\n\
             2\n00:00:00.500 --> 00:00:01.500\ncord --&gt; clamped\n\n\
             3\n00:00:01.500 --> 00:00:02.400\nMarker 2 (pedal)\n"
        );
        let second = fs::read_to_string(&e.chapter_files[1]).unwrap();
        assert!(
            second.contains("00:00:00.600 --> 00:00:02.400\nlate\n"),
            "{second}"
        );
        assert!(!second.contains("clamped"));
        for f in e.files.iter().chain(&e.chapter_files) {
            let mode = fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
        let bytes = fs::read(&e.files[0]).unwrap();
        let moov = top_level(&bytes)[1].1;
        let traks = top_level(moov).iter().filter(|b| &b.0 == b"trak").count();
        assert_eq!(traks, 2, "video and the chapter text track");
    }

    #[test]
    fn a_time_range_writes_only_the_parts_it_covers_from_a_keyframe() {
        let t = tempfile::tempdir().unwrap();
        let dept = DepartmentSecretKey::generate().unwrap();
        let rec = two_stream_recording(t.path(), &dept);
        let out = t.path().join("out.mp4");
        let range = |from, to| Options {
            range: Some((from, to)),
            ..UNSIGNED
        };
        // Within the first stream: from its keyframe at 1 s to the last frame before 1.9 s.
        let e = export(&rec, &dept, &out, range(1.2, 1.9), |_, _| {}).unwrap();
        assert_eq!(e.files, std::slice::from_ref(&out));
        assert_eq!(progressive(&out).1, 900);
        // Within the second (which starts at 2.4 s): only it, named as the first file.
        let e = export(&rec, &dept, &out, range(2.5, 3.0), |_, _| {}).unwrap();
        assert_eq!(e.files, std::slice::from_ref(&out));
        assert_eq!(progressive(&out).1, 600);
        // Across both.
        let e = export(&rec, &dept, &out, range(2.0, 3.0), |_, _| {}).unwrap();
        assert_eq!(e.files.len(), 2);
        // Past the end: nothing.
        fs::remove_file(&out).unwrap();
        let err = export(&rec, &dept, &out, range(10.0, 20.0), |_, _| {}).unwrap_err();
        assert!(matches!(err, ExportError::EmptyRange { .. }), "{err}");
        assert!(!out.exists());
    }

    #[test]
    fn the_wrong_department_key_is_named_and_nothing_is_written() {
        let t = tempfile::tempdir().unwrap();
        let dept = DepartmentSecretKey::generate().unwrap();
        let rec = two_stream_recording(t.path(), &dept);
        let other = DepartmentSecretKey::generate().unwrap();
        let out = t.path().join("out.mp4");
        let err = export(&rec, &other, &out, UNSIGNED, |_, _| {}).unwrap_err();
        assert!(matches!(err, ExportError::WrongKey { .. }), "{err}");
        assert!(!out.exists());
    }

    #[test]
    fn a_damaged_fragment_leaves_no_partial_file_behind() {
        let t = tempfile::tempdir().unwrap();
        let dept = DepartmentSecretKey::generate().unwrap();
        let rec = two_stream_recording(t.path(), &dept);
        // Damage the last fragment: by then the first part was complete, the second one open.
        let m = neoflix_format::verify(&rec).unwrap().manifest;
        let last = m.fragments.last().unwrap();
        let p = rec.join(&last.file);
        let mut b = fs::read(&p).unwrap();
        b[70] ^= 1;
        fs::write(&p, &b).unwrap();
        // Rewrite the manifest to match, so that only the chunk tags can tell.
        let mut m = m;
        m.fragments[5].sha256 = neoflix_format::sha256_hex(&b);
        m.chain = neoflix_format::manifest::chain(&m.recording_id, &m.init_segments, &m.fragments);
        fs::write(rec.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        let err = export(&rec, &dept, &t.path().join("o.mp4"), UNSIGNED, |_, _| {}).unwrap_err();
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

    struct Pki {
        _dir: tempfile::TempDir,
        ca: Ca,
        trust: TrustAnchors,
    }

    fn pki() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(&dir.path().join("ca"), "Test CA").unwrap();
        let trust =
            TrustAnchors::from_pem(&fs::read(dir.path().join("ca/ca.crt")).unwrap(), None).unwrap();
        Pki {
            _dir: dir,
            ca,
            trust,
        }
    }

    fn identity(ca: &Ca, name: &str) -> SigningIdentity {
        let (crt, key) = ca.issue(name, Role::Device, None).unwrap();
        SigningIdentity::from_pem(&fs::read(crt).unwrap(), &fs::read(key).unwrap()).unwrap()
    }

    fn require(p: &Pki) -> Options<'_> {
        Options {
            signatures: Signatures::Require(&p.trust),
            gaps: Gaps::Refuse,
            range: None,
        }
    }

    #[test]
    fn a_signed_recording_exports_and_names_its_signer() {
        let t = tempfile::tempdir().unwrap();
        let p = pki();
        let dept = DepartmentSecretKey::generate().unwrap();
        let rec = recording_signed_by(t.path(), &dept, Some(&identity(&p.ca, "room")));
        let e = export(&rec, &dept, &t.path().join("o.mp4"), require(&p), |_, _| {}).unwrap();
        match e.custody {
            Custody::Signed(s) => {
                assert_eq!(s.name, "room");
                assert!(s.chain_checked);
            }
            Custody::Unsigned => panic!("signed recording reported unsigned"),
        }
    }

    #[test]
    fn an_unsigned_or_stripped_recording_is_refused_unless_allowed() {
        let t = tempfile::tempdir().unwrap();
        let p = pki();
        let dept = DepartmentSecretKey::generate().unwrap();
        let rec = recording_signed_by(t.path(), &dept, Some(&identity(&p.ca, "room")));
        fs::remove_file(rec.join("manifest.sig")).unwrap();
        let out = t.path().join("o.mp4");
        let err = export(&rec, &dept, &out, require(&p), |_, _| {}).unwrap_err();
        assert!(
            matches!(err, ExportError::Custody(SignatureError::Unsigned)),
            "{err}"
        );
        assert!(!out.exists());
        let allow = Options {
            signatures: Signatures::AllowUnsigned(Some(&p.trust)),
            gaps: Gaps::Refuse,
            range: None,
        };
        let e = export(&rec, &dept, &out, allow, |_, _| {}).unwrap();
        assert_eq!(e.custody, Custody::Unsigned);
    }

    #[test]
    fn an_edited_manifest_or_a_replaced_object_is_refused_even_when_allowing_unsigned() {
        let t = tempfile::tempdir().unwrap();
        let p = pki();
        let dept = DepartmentSecretKey::generate().unwrap();
        let rec = recording_signed_by(t.path(), &dept, Some(&identity(&p.ca, "room")));
        let original = fs::read(rec.join("manifest.json")).unwrap();
        let allow = Options {
            signatures: Signatures::AllowUnsigned(None),
            gaps: Gaps::Refuse,
            range: None,
        };
        // One byte of the stop reason.
        let edited = String::from_utf8(original.clone()).unwrap().replace(
            "\"stop_reason\": \"control\"",
            "\"stop_reason\": \"contrOl\"",
        );
        assert_ne!(edited.as_bytes(), &original[..]);
        fs::write(rec.join("manifest.json"), &edited).unwrap();
        let err = export(&rec, &dept, &t.path().join("o.mp4"), allow, |_, _| {}).unwrap_err();
        assert!(
            err.to_string().contains("changed after it was signed"),
            "{err}"
        );

        // A fragment replaced by one sealed correctly to the department key, the manifest's
        // digest and chain rewritten to match: the signature no longer covers the manifest.
        let mut m: Manifest = serde_json::from_slice(&original).unwrap();
        let id = ObjectId {
            stream: [1; 16],
            seq: 1,
            kind: Kind::Fragment,
        };
        let (k, forged) = seal(&id, FRAGMENTS[1]).unwrap();
        fs::write(rec.join(&m.fragments[1].file), &forged).unwrap();
        fs::write(
            rec.join(&m.fragments[1].key_file),
            k.wrap(&dept.public_key(), &forged).unwrap().as_bytes(),
        )
        .unwrap();
        m.fragments[1].sha256 = neoflix_format::sha256_hex(&forged);
        m.fragments[1].size = forged.len() as u64;
        m.fragments[1].key_sha256 =
            neoflix_format::sha256_hex(&fs::read(rec.join(&m.fragments[1].key_file)).unwrap());
        m.chain = neoflix_format::manifest::chain(&m.recording_id, &m.init_segments, &m.fragments);
        fs::write(
            rec.join("manifest.json"),
            serde_json::to_vec_pretty(&m).unwrap(),
        )
        .unwrap();
        // Without the signature the forgery is whole: only custody tells.
        assert!(neoflix_format::verify(&rec).is_ok());
        let err = export(&rec, &dept, &t.path().join("o.mp4"), require(&p), |_, _| {}).unwrap_err();
        assert!(matches!(err, ExportError::Custody(_)), "{err}");
    }

    #[test]
    fn another_rooms_or_another_cas_signature_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let p = pki();
        let rogue = pki();
        let dept = DepartmentSecretKey::generate().unwrap();
        // The recording says "room"; room-2's genuine certificate signed it.
        let rec = recording_signed_by(t.path(), &dept, Some(&identity(&p.ca, "room-2")));
        let err = export(&rec, &dept, &t.path().join("o.mp4"), require(&p), |_, _| {}).unwrap_err();
        assert!(err.to_string().contains("signed by room-2"), "{err}");
        // A certificate for "room" made by someone else's CA.
        let t2 = tempfile::tempdir().unwrap();
        let rec = recording_signed_by(t2.path(), &dept, Some(&identity(&rogue.ca, "room")));
        let err = export(&rec, &dept, &t.path().join("o.mp4"), require(&p), |_, _| {}).unwrap_err();
        assert!(err.to_string().contains("not trusted"), "{err}");
    }

    /// The bytes opened are the bytes the manifest (and so the signature) vouches for: an
    /// object swapped after verification read the directory (a network share, a backup being
    /// restored) for one sealed anew under the same id is refused, not exported as signed.
    #[test]
    fn an_object_swapped_after_verification_is_refused_when_opened() {
        let t = tempfile::tempdir().unwrap();
        let dept = DepartmentSecretKey::generate().unwrap();
        let rec = two_stream_recording(t.path(), &dept);
        let m = neoflix_format::verify(&rec).unwrap().manifest;
        let e = &m.fragments[1];
        let genuine = fs::read(rec.join(&e.file)).unwrap();
        let id = neoflix_format::parse_header(&genuine).unwrap().id;
        // Same id, same length: only the digest tells.
        let (k, forged) = seal(&id, FRAGMENTS[1]).unwrap();
        assert_eq!(forged.len(), genuine.len());
        fs::write(rec.join(&e.file), &forged).unwrap();
        fs::write(
            rec.join(&e.key_file),
            k.wrap(&dept.public_key(), &forged).unwrap().as_bytes(),
        )
        .unwrap();
        let err = open_object(&rec, "fragment", e, &dept, Kind::Fragment).unwrap_err();
        assert!(err.to_string().contains("SHA-256"), "{err}");
    }
}
