//! Export: from a sealed recording to an MP4 that ffmpeg and a browser play.
//!
//! [`export`] first checks the recording without the key ([`neoflix_store::verify()`]: every file's
//! size and SHA-256, the hash chain), then, with the department secret key, unwraps each data key,
//! authenticates every chunk, checks that each object is the one its place in the manifest says
//! (kind, stream, increasing sequence), and writes the init segment followed by the fragments,
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
use std::path::{Path, PathBuf};

use neoflix_seal::{DepartmentSecretKey, Kind, WrappedKey};
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
}

fn object_error(kind: &str, e: &ObjectEntry, problem: impl ToString) -> ExportError {
    ExportError::Object {
        object: format!("{kind} {}", e.index),
        file: e.file.clone(),
        problem: problem.to_string(),
    }
}

/// Opens one object: reads it and its key record, unwraps, authenticates, checks its kind.
fn open_object(
    dir: &Path,
    kind: &str,
    e: &ObjectEntry,
    key: &DepartmentSecretKey,
    expect: Kind,
) -> Result<(neoflix_seal::Header, Vec<u8>), ExportError> {
    let sealed = fs::read(dir.join(&e.file)).map_err(|err| object_error(kind, e, err))?;
    let record = fs::read(dir.join(&e.key_file))
        .map_err(|err| object_error(kind, e, format!("{}: {err}", e.key_file)))?;
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
    assemble(dir, key, Some(out), progress)
}

/// Checks everything [`export`] checks (every tag, every object's identity and order) without
/// writing anything.
pub fn check(dir: &Path, key: &DepartmentSecretKey) -> Result<Manifest, ExportError> {
    assemble(dir, key, None, |_, _| {}).map(|e| e.manifest)
}

fn assemble(
    dir: &Path,
    key: &DepartmentSecretKey,
    out: Option<&Path>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Exported, ExportError> {
    let manifest = neoflix_store::verify(dir)?.manifest;
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
    for e in &manifest.init_segments {
        inits.push(open_object(dir, "init segment", e, key, Kind::Init)?);
    }

    // Decrypt everything into part files next to the output; rename only when all of it checked.
    let total = manifest.fragments.len();
    let mut parts: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut writer: Option<(u64, Option<fs::File>, u64)> = None; // (init index, file, tfdt base)
    let mut last_seq: Option<(u64, u64)> = None; // (init index, seq)
    let result = (|| {
        for (done, e) in manifest.fragments.iter().enumerate() {
            let init_index = e.init.unwrap_or(0);
            let (init_header, init_plain) = &inits[init_index as usize];
            let (header, mut plain) = open_object(dir, "fragment", e, key, Kind::Fragment)?;
            if header.id.stream != init_header.id.stream {
                return Err(object_error(
                    "fragment",
                    e,
                    "belongs to another capture stream than its init segment",
                ));
            }
            if let Some((i, seq)) = last_seq
                && i == init_index
                && header.id.seq <= seq
            {
                return Err(object_error(
                    "fragment",
                    e,
                    format!("out of order: sequence {} after {seq}", header.id.seq),
                ));
            }
            last_seq = Some((init_index, header.id.seq));
            if writer.as_ref().map(|w| w.0) != Some(init_index) {
                if let Some((_, Some(f), _)) = writer.take() {
                    let tmp = &parts.last().expect("a writer has a part").0;
                    f.sync_all().map_err(|source| ExportError::Write {
                        path: tmp.clone(),
                        source,
                    })?;
                }
                let base = mp4::first_decode_time(&plain)
                    .map_err(|err| object_error("fragment", e, err))?;
                let file = match out {
                    None => None,
                    Some(out) => {
                        let final_path = part_path(out, parts.len());
                        let tmp = final_path.with_file_name(format!(
                            ".{}.partial",
                            final_path.file_name().unwrap_or_default().to_string_lossy()
                        ));
                        let mut f =
                            fs::File::create(&tmp).map_err(|source| ExportError::Write {
                                path: tmp.clone(),
                                source,
                            })?;
                        f.write_all(init_plain)
                            .map_err(|source| ExportError::Write {
                                path: tmp.clone(),
                                source,
                            })?;
                        parts.push((tmp, final_path));
                        Some(f)
                    }
                };
                writer = Some((init_index, file, base));
            }
            let (_, f, base) = writer.as_mut().expect("set above");
            mp4::rebase_decode_time(&mut plain, *base)
                .map_err(|err| object_error("fragment", e, err))?;
            if let Some(f) = f {
                let tmp = &parts.last().expect("pushed above").0;
                f.write_all(&plain).map_err(|source| ExportError::Write {
                    path: tmp.clone(),
                    source,
                })?;
            }
            progress(done + 1, total);
        }
        if let Some((_, Some(f), _)) = writer.take() {
            let tmp = &parts.last().expect("a writer has a part").0;
            f.sync_all().map_err(|source| ExportError::Write {
                path: tmp.clone(),
                source,
            })?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        for (tmp, _) in &parts {
            let _ = fs::remove_file(tmp);
        }
        return Err(e);
    }
    let mut files = Vec::new();
    for (tmp, path) in parts {
        fs::rename(&tmp, &path).map_err(|source| ExportError::Write {
            path: path.clone(),
            source,
        })?;
        files.push(path);
    }
    Ok(Exported { manifest, files })
}
