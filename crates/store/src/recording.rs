//! Writing a recording directory, and sealing the ones a crash left open.
//!
//! ```text
//! <recordings>/<recording-id>/
//!     journal.jsonl        append-only events, fsynced line by line
//!     init-000.nfx/.key    sealed init segment(s) and their wrapped keys
//!     frag-000000.nfx/.key sealed fragments and their wrapped keys
//!     manifest.json        written on stop (or by recovery), write-temp-fsync-rename
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use neoflix_seal::{DataKey, DepartmentPublicKey};
use serde::{Deserialize, Serialize};

use crate::{
    Manifest, Marker, ObjectEntry, RingEntry, Status, StoreError, StreamInit, fsutil, utc,
};
use neoflix_format::ClockStep;
use neoflix_format::custody::{Purpose, SIGNATURE_FILE};
use neoflix_format::manifest::{self, FORMAT};
use neoflix_format::{MANIFEST_FILE, SigningIdentity};

/// One line of `journal.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Journal {
    Start {
        recording_id: String,
        device_id: String,
        trigger: String,
        utc: String,
        recipient_key_id: String,
    },
    Fragment {
        index: u64,
        init: u64,
        duration_ms: u64,
        captured_utc: String,
        preroll: bool,
    },
    Marker(Marker),
    ClockStep(ClockStep),
    StopRequested {
        utc: String,
        reason: String,
    },
}

/// An open recording being written.
pub struct RecordingWriter {
    dir: PathBuf,
    id: String,
    device_id: String,
    recipient: DepartmentPublicKey,
    journal: File,
    trigger: String,
    trigger_utc: SystemTime,
    first_frame: Option<SystemTime>,
    inits: Vec<ObjectEntry>,
    /// Stream id of each init segment, by index.
    init_streams: Vec<[u8; 16]>,
    fragments: Vec<ObjectEntry>,
    markers: Vec<Marker>,
    clock_steps: Vec<ClockStep>,
    /// Each claimed fragment's first moment on this machine's monotonic clock and where it
    /// begins in the recording's video: what a marker's offset is measured on, so that a
    /// step of the wall clock does not move it.
    timeline: Vec<(Instant, Duration)>,
    /// The last claimed fragment's first moment, on both clocks: a fragment whose wall time
    /// moved on by a second or more than its monotonic time did is a step of the clock.
    clock_ref: Option<(Instant, SystemTime)>,
    video: Duration,
    preroll: Duration,
}

/// A wall clock that moved this much more (or less) than the monotonic one between two
/// fragments was stepped; less is the sealing's own jitter, or a slew.
const CLOCK_STEP: Duration = Duration::from_secs(1);
/// Steps noted in one recording at most: a clock that jumps at every fragment (a failing
/// real-time clock) would otherwise grow the manifest without bound.
const MAX_CLOCK_STEPS: usize = 100;

fn key_name(file: &str) -> String {
    file.replace(".nfx", ".key")
}

impl RecordingWriter {
    /// Creates the recording directory and its journal.
    pub fn create(
        root: &Path,
        id: &str,
        device_id: &str,
        trigger: &str,
        recipient: &DepartmentPublicKey,
        now: SystemTime,
    ) -> Result<Self, StoreError> {
        fsutil::create_private_dir(root)?;
        let dir = root.join(id);
        fsutil::create_private_dir(&dir)?;
        fsutil::sync_dir(root)?;
        let jpath = dir.join("journal.jsonl");
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&jpath)
            .map_err(StoreError::io("create", &jpath))?;
        let mut w = RecordingWriter {
            dir,
            id: id.into(),
            device_id: device_id.into(),
            recipient: recipient.clone(),
            journal,
            trigger: trigger.into(),
            trigger_utc: now,
            first_frame: None,
            inits: Vec::new(),
            init_streams: Vec::new(),
            fragments: Vec::new(),
            markers: Vec::new(),
            clock_steps: Vec::new(),
            timeline: Vec::new(),
            clock_ref: None,
            video: Duration::ZERO,
            preroll: Duration::ZERO,
        };
        w.append(&Journal::Start {
            recording_id: id.into(),
            device_id: device_id.into(),
            trigger: trigger.into(),
            utc: utc(now),
            recipient_key_id: recipient.key_id().0,
        })?;
        fsutil::sync_dir(&w.dir)?;
        Ok(w)
    }

    /// The recording id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The recording directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Video claimed so far.
    pub fn duration(&self) -> Duration {
        self.video
    }

    /// Number of fragments claimed so far.
    pub fn fragment_count(&self) -> usize {
        self.fragments.len()
    }

    fn append(&mut self, event: &Journal) -> Result<(), StoreError> {
        let mut line = serde_json::to_vec(event).expect("journal events serialize");
        line.push(b'\n');
        let path = self.dir.join("journal.jsonl");
        let before = self.journal.metadata().map(|m| m.len());
        let written = self
            .journal
            .write_all(&line)
            .map_err(StoreError::io("append", &path))
            .and_then(|()| {
                self.journal
                    .sync_data()
                    .map_err(StoreError::io("fsync", &path))
            });
        if written.is_err()
            && let Ok(len) = before
        {
            // A full disk can take half a line; the retry appends it whole, and recovery reads
            // the journal only up to its first unreadable line. Cut the half line off.
            let _ = self.journal.set_len(len);
        }
        written
    }

    fn wrap_and_write_key(
        &self,
        key: &DataKey,
        sealed: &[u8],
        key_file: &str,
        what: &str,
    ) -> Result<String, StoreError> {
        let wrapped = key
            .wrap(&self.recipient, sealed)
            .map_err(|source| StoreError::Seal {
                what: what.into(),
                source,
            })?;
        fsutil::write_atomic(&self.dir.join(key_file), wrapped.as_bytes(), 0o600)?;
        Ok(neoflix_seal::sha256_hex(wrapped.as_bytes()))
    }

    fn claim_init(&mut self, init: &StreamInit) -> Result<u64, StoreError> {
        let index = self.inits.len() as u64;
        let file = format!("init-{index:03}.nfx");
        // The ring keeps its init segment for later recordings: copy the sealed bytes.
        let sealed = fs::read(&init.path).map_err(StoreError::io("read", &init.path))?;
        let key_sha256 = self.wrap_and_write_key(
            &init.key,
            &sealed,
            &key_name(&file),
            &format!("init segment {index}"),
        )?;
        fsutil::write_atomic(&self.dir.join(&file), &sealed, 0o600)?;
        self.inits.push(ObjectEntry {
            index,
            key_file: key_name(&file),
            size: sealed.len() as u64,
            sha256: neoflix_seal::sha256_hex(&sealed),
            file,
            key_sha256,
            init: None,
            duration_ms: None,
        });
        self.init_streams.push(init.stream);
        Ok(index)
    }

    /// Claims a fragment of the ring. `init` is the init segment of its stream. The ring keeps
    /// its own file and key (as the pre-roll of a next recording, see [`crate::Ring::keep`]):
    /// the recording gets a second link to the sealed file, or a copy where the ring is on
    /// another file system, and its own wrapped key. A failed claim loses nothing, and a claim
    /// may be tried again after a failure at any step.
    ///
    /// Order matters for crash safety: the wrapped key is on disk before the sealed fragment is
    /// placed, so a fragment in a recording always has its key; the fragment's bytes are synced
    /// before the journal line, which comes last: the fragment counts only once it is written.
    pub fn claim(
        &mut self,
        entry: &RingEntry,
        init: &StreamInit,
        preroll: bool,
    ) -> Result<(), StoreError> {
        let init_index = match self.init_streams.iter().position(|s| *s == entry.stream) {
            Some(i) => i as u64,
            None => self.claim_init(init)?,
        };
        let index = self.fragments.len() as u64;
        let file = format!("frag-{index:06}.nfx");
        let dest = self.dir.join(&file);
        let what = format!("fragment {index}");
        // Only the header is needed to bind the wrapped key to the object.
        let mut header = vec![0u8; neoflix_seal::HEADER_LEN];
        File::open(&entry.path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header))
            .map_err(StoreError::io("read", &entry.path))?;
        let key_sha256 = self.wrap_and_write_key(&entry.key, &header, &key_name(&file), &what)?;
        // An earlier attempt may have left a file there (placed, then a later step failed, and
        // its removal too), perhaps of another fragment since evicted: placed afresh, and
        // synced, every time.
        match fs::remove_file(&dest) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::io("remove", &dest)(e));
            }
            _ => {}
        }
        fsutil::link_or_copy(&entry.path, &dest)?;
        let duration_ms = entry.duration.as_millis() as u64;
        let journaled = fsutil::sync_dir(&self.dir).and_then(|()| {
            self.append(&Journal::Fragment {
                index,
                init: init_index,
                duration_ms,
                captured_utc: utc(entry.captured),
                preroll,
            })
        });
        if let Err(e) = journaled {
            // Not a part of the recording yet: the ring still has it, so that nothing (the
            // upload) finds it half-claimed. If even the removal fails, the retry finds it here.
            let _ = fs::remove_file(&dest);
            return Err(e);
        }
        self.first_frame.get_or_insert(entry.captured);
        self.note_clock(entry);
        self.timeline.push((entry.began, self.video));
        self.video += entry.duration;
        if preroll {
            self.preroll += entry.duration;
        }
        self.fragments.push(ObjectEntry {
            index,
            key_file: key_name(&file),
            file,
            size: entry.size,
            sha256: entry.sha256.clone(),
            key_sha256,
            init: Some(init_index),
            duration_ms: Some(duration_ms),
        });
        Ok(())
    }

    /// Notes a step of the wall clock between the last claimed fragment and `entry`.
    fn note_clock(&mut self, entry: &RingEntry) {
        let Some((mono, wall)) = self.clock_ref.replace((entry.began, entry.captured)) else {
            return;
        };
        let mono = entry.began.saturating_duration_since(mono).as_secs_f64();
        let wall = match entry.captured.duration_since(wall) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        let step = wall - mono;
        if step.abs() >= CLOCK_STEP.as_secs_f64() && self.clock_steps.len() < MAX_CLOCK_STEPS {
            let s = ClockStep {
                offset_secs: round_ms(self.video),
                step_secs: (step * 1000.0).round() / 1000.0,
                utc: utc(entry.captured),
            };
            // A note, not the video: the fragment is claimed already, and a journal that
            // cannot take the line costs recovery only the note.
            if let Err(e) = self.append(&Journal::ClockStep(s.clone())) {
                log::warn!(recording = self.id.as_str(); "clock step not journaled: {e}");
            }
            log::warn!(recording = self.id.as_str(), offset_secs = s.offset_secs, step_secs = s.step_secs; "the wall clock stepped during the recording: offsets keep to the video, its UTC stamps show the step");
            self.clock_steps.push(s);
        }
    }

    /// Where `at` (this machine's monotonic clock) falls in the recording's video: into the
    /// claimed fragment it falls in, or past the last one claimed by as long as it came after
    /// it began (the video after it is on its way).
    fn video_offset(&self, at: Instant) -> Duration {
        let Some(i) = self.timeline.iter().rposition(|(began, _)| *began <= at) else {
            return Duration::ZERO;
        };
        let (began, offset) = self.timeline[i];
        let into = at.saturating_duration_since(began);
        match self.timeline.get(i + 1) {
            // Within a run of claimed video: no further than where the next fragment begins
            // (a marker in a camera restart's gap sits at the gap).
            Some((_, next)) => (offset + into).min(*next),
            None => offset + into,
        }
    }

    /// Adds a marker set at `at_mono` (this machine's monotonic clock; `now` is the wall
    /// clock's reading then). Its label is sealed to the department before anything is
    /// written: the text a clinician typed is about a patient, and never lands on the box's
    /// storage.
    pub fn mark(
        &mut self,
        label: &str,
        by: &str,
        now: SystemTime,
        at_mono: Instant,
    ) -> Result<Marker, StoreError> {
        let offset = self.video_offset(at_mono);
        let at = utc(now);
        let sealed_label = if label.is_empty() {
            None
        } else {
            Some(
                neoflix_seal::seal_label(&self.recipient, &self.id, &at, label).map_err(|e| {
                    StoreError::Seal {
                        what: "a marker's label".into(),
                        source: e,
                    }
                })?,
            )
        };
        let m = Marker {
            utc: at,
            offset_secs: round_ms(offset),
            label: String::new(),
            sealed_label,
            by: by.into(),
        };
        self.append(&Journal::Marker(m.clone()))?;
        self.markers.push(m.clone());
        Ok(m)
    }

    /// Notes that a stop was asked for and post-roll runs.
    pub fn stop_requested(&mut self, reason: &str, now: SystemTime) -> Result<(), StoreError> {
        self.append(&Journal::StopRequested {
            utc: utc(now),
            reason: reason.into(),
        })
    }

    /// Writes the manifest, signed by `signer` when the box has a signing identity, which closes
    /// the recording. On failure nothing is lost: call it again once storage works.
    pub fn finalize(
        &self,
        reason: &str,
        now: SystemTime,
        signer: Option<&SigningIdentity>,
    ) -> Result<Manifest, StoreError> {
        let chain = manifest::chain(&self.id, &self.inits, &self.fragments);
        let m = Manifest {
            format: FORMAT.into(),
            device_id: self.device_id.clone(),
            recording_id: self.id.clone(),
            renamed_from: None,
            status: Status::Complete,
            trigger: self.trigger.clone(),
            stop_reason: reason.into(),
            first_frame_utc: self.first_frame.map(utc),
            trigger_utc: utc(self.trigger_utc),
            stop_utc: utc(now),
            preroll_secs: round_ms(self.preroll),
            duration_secs: round_ms(self.video),
            recipient_key_id: self.recipient.key_id().0,
            markers: self.markers.clone(),
            clock_steps: self.clock_steps.clone(),
            init_segments: self.inits.clone(),
            fragments: self.fragments.clone(),
            chain,
        };
        write_manifest(&self.dir, &m, signer, now)?;
        Ok(m)
    }
}

fn round_ms(d: Duration) -> f64 {
    d.as_millis() as f64 / 1000.0
}

/// Writes `manifest.sig` (when there is a signer), then `manifest.json`: the manifest's
/// presence is what closes a recording, so a signed recording is never seen without its
/// signature. A signature left by an earlier attempt is replaced: it is over other bytes.
fn write_manifest(
    dir: &Path,
    m: &Manifest,
    signer: Option<&SigningIdentity>,
    now: SystemTime,
) -> Result<(), StoreError> {
    let mut json = serde_json::to_vec_pretty(m).expect("manifest serializes");
    json.push(b'\n');
    let sig_path = dir.join(SIGNATURE_FILE);
    match signer {
        Some(id) => {
            let sig =
                id.sign(Purpose::Manifest, &json, now)
                    .map_err(|source| StoreError::Sign {
                        recording: m.recording_id.clone(),
                        source,
                    })?;
            fsutil::write_atomic(&sig_path, &sig.to_json(), 0o600)?;
        }
        None => match fs::remove_file(&sig_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("remove", &sig_path)(e)),
        },
    }
    fsutil::write_atomic(&dir.join(MANIFEST_FILE), &json, 0o600)
}

/// Renames the finalized recording `from` under `root` to `to`: the server holds another
/// recording under `from` (docs/upload-protocol.md, "A recording id the server already
/// holds"). The directory is renamed first, then [`readdress`] gives the manifest the new id;
/// a crash in between leaves a directory whose manifest names another id, which [`readdress`]
/// finishes. Returns the new directory.
pub fn rename(
    root: &Path,
    from: &str,
    to: &str,
    signer: Option<&SigningIdentity>,
    now: SystemTime,
) -> Result<PathBuf, StoreError> {
    let (old, new) = (root.join(from), root.join(to));
    if new.exists() {
        return Err(StoreError::io("rename to", &new)(std::io::Error::from(
            std::io::ErrorKind::AlreadyExists,
        )));
    }
    fs::rename(&old, &new).map_err(StoreError::io("rename", &old))?;
    File::open(root)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("sync", root))?;
    readdress(&new, signer, now)?;
    Ok(new)
}

/// Makes a finalized recording's manifest name the recording by its directory's name: a new
/// `recording_id`, the chain over it, `renamed_from` the first id the recording had (its
/// marker labels are sealed to that one), signed again. Nothing to do when they agree.
pub fn readdress(
    dir: &Path,
    signer: Option<&SigningIdentity>,
    now: SystemTime,
) -> Result<(), StoreError> {
    let id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = dir.join(MANIFEST_FILE);
    let bytes =
        neoflix_format::files::read_regular(&path, neoflix_format::manifest::MAX_MANIFEST_BYTES)
            .map_err(StoreError::io("read", &path))?;
    let mut m = neoflix_format::verify::parse_manifest(&bytes).map_err(|e| {
        StoreError::io("read", &path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    })?;
    if m.recording_id == id {
        return Ok(());
    }
    let first = m.renamed_from.take().unwrap_or(m.recording_id);
    m.renamed_from = Some(first);
    m.chain = manifest::chain(&id, &m.init_segments, &m.fragments);
    m.recording_id = id;
    write_manifest(dir, &m, signer, now)
}

/// The recording directories under `root` that `keep` accepts, in id order, with their ids.
fn recording_dirs(root: &Path, keep: impl Fn(&Path) -> bool) -> Vec<(PathBuf, String)> {
    let Ok(list) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<(PathBuf, String)> = list
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| (e.path(), e.file_name().to_string_lossy().to_string()))
        .filter(|(d, _)| keep(d))
        .collect();
    dirs.sort();
    dirs
}

/// Seals every recording under `root` that has no manifest as `interrupted`. Returns their ids.
///
/// What survives is what was claimed completely: a fragment file with its key record. The
/// fragment being claimed at the crash may be lost; nothing before it is.
pub fn recover(
    root: &Path,
    recipient_key_id: &str,
    now: SystemTime,
    signer: Option<&SigningIdentity>,
) -> Result<Vec<String>, StoreError> {
    let mut done = Vec::new();
    for (dir, id) in recording_dirs(root, |d| !d.join(MANIFEST_FILE).exists()) {
        if recover_one(&dir, &id, recipient_key_id, now, signer)? {
            done.push(id);
        }
    }
    Ok(done)
}

/// Signs every finalized recording under `root` that has no signature: recordings closed before
/// this box had a signing identity (an upgrade, a certificate installed later), which a server
/// that requires signatures would otherwise refuse for ever. Like crash recovery, the box vouches
/// for what its own disk holds. Returns the ids signed. A recording that cannot be signed (its
/// manifest unreadable) is logged and left as it is: it must not keep the box from recording.
pub fn sign_unsigned(root: &Path, signer: &SigningIdentity, now: SystemTime) -> Vec<String> {
    let unsigned = |d: &Path| d.join(MANIFEST_FILE).exists() && !d.join(SIGNATURE_FILE).exists();
    let mut done = Vec::new();
    for (dir, id) in recording_dirs(root, unsigned) {
        match sign_existing(&dir, &id, signer, now) {
            Ok(()) => done.push(id),
            Err(e) => {
                log::warn!(recording = id.as_str(), error = e.to_string().as_str(); "cannot sign a recording finalized unsigned: it stays unsigned (the server will refuse it)")
            }
        }
    }
    done
}

fn sign_existing(
    dir: &Path,
    id: &str,
    signer: &SigningIdentity,
    now: SystemTime,
) -> Result<(), StoreError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes =
        neoflix_format::files::read_regular(&path, neoflix_format::manifest::MAX_MANIFEST_BYTES)
            .map_err(StoreError::io("read", &path))?;
    // Signing vouches for what the disk holds: only for a manifest, and one of this box's.
    let not_ours = |why: String| StoreError::NotOurs {
        recording: id.to_string(),
        why,
    };
    let m = neoflix_format::verify::parse_manifest(&bytes)
        .map_err(|e| not_ours(format!("{MANIFEST_FILE}: {e}")))?;
    if m.device_id != signer.name() {
        return Err(not_ours(format!(
            "its manifest is of device {}, and this box signs as {}",
            m.device_id.escape_debug(),
            signer.name()
        )));
    }
    let sig = signer
        .sign(Purpose::Manifest, &bytes, now)
        .map_err(|source| StoreError::Sign {
            recording: id.to_string(),
            source,
        })?;
    fsutil::write_atomic(&dir.join(SIGNATURE_FILE), &sig.to_json(), 0o600)
}

/// A journal is a line per event; far below this even for a day-long recording.
const MAX_JOURNAL_BYTES: u64 = 64 << 20;

fn read_journal(dir: &Path) -> Vec<Journal> {
    // Only a regular file of sane size: recovery must not hang on a FIFO or eat a planted
    // endless file.
    let Ok((f, len)) = neoflix_format::files::open_regular(&dir.join("journal.jsonl")) else {
        return Vec::new();
    };
    if len > MAX_JOURNAL_BYTES {
        log::error!(dir = dir.display().to_string().as_str(), bytes = len; "journal too large to be one: recording not recovered");
        return Vec::new();
    }
    let f = std::io::Read::take(f, MAX_JOURNAL_BYTES);
    // A torn last line (power cut mid-append) ends the journal; everything before it counts.
    BufReader::new(f)
        .lines()
        .map_while(|l| l.ok().and_then(|l| serde_json::from_str(&l).ok()))
        .collect()
}

/// The largest sealed object recovery reads: a header's plaintext bound plus its framing.
const MAX_OBJECT_BYTES: u64 = neoflix_seal::MAX_PLAINTEXT_LEN + (1 << 20);

fn entry_from_files(
    dir: &Path,
    index: u64,
    file: String,
) -> Result<Option<ObjectEntry>, StoreError> {
    let key_file = key_name(&file);
    let (Ok(sealed), Ok(key)) = (
        neoflix_format::files::read_regular(&dir.join(&file), MAX_OBJECT_BYTES),
        neoflix_format::files::read_regular(&dir.join(&key_file), 64 << 10),
    ) else {
        return Ok(None);
    };
    Ok(Some(ObjectEntry {
        index,
        size: sealed.len() as u64,
        sha256: neoflix_seal::sha256_hex(&sealed),
        key_sha256: neoflix_seal::sha256_hex(&key),
        file,
        key_file,
        init: None,
        duration_ms: None,
    }))
}

fn recover_one(
    dir: &Path,
    id: &str,
    recipient_key_id: &str,
    now: SystemTime,
    signer: Option<&SigningIdentity>,
) -> Result<bool, StoreError> {
    let journal = read_journal(dir);
    let mut m = Manifest {
        format: FORMAT.into(),
        device_id: String::new(),
        recording_id: id.into(),
        renamed_from: None,
        status: Status::Interrupted,
        trigger: "unknown".into(),
        stop_reason: "interrupted".into(),
        first_frame_utc: None,
        trigger_utc: String::new(),
        stop_utc: utc(now),
        preroll_secs: 0.0,
        duration_secs: 0.0,
        recipient_key_id: recipient_key_id.into(),
        markers: Vec::new(),
        clock_steps: Vec::new(),
        init_segments: Vec::new(),
        fragments: Vec::new(),
        chain: String::new(),
    };
    let mut frag_meta = std::collections::HashMap::new();
    for ev in journal {
        match ev {
            Journal::Start {
                device_id,
                trigger,
                utc,
                recipient_key_id,
                ..
            } => {
                m.device_id = device_id;
                m.trigger = trigger;
                m.trigger_utc = utc;
                m.recipient_key_id = recipient_key_id;
            }
            Journal::Fragment {
                index,
                init,
                duration_ms,
                captured_utc,
                preroll,
            } => {
                if index == 0 {
                    m.first_frame_utc = Some(captured_utc);
                }
                frag_meta.insert(index, (init, duration_ms, preroll));
            }
            Journal::Marker(mk) => m.markers.push(mk),
            Journal::ClockStep(s) if m.clock_steps.len() < MAX_CLOCK_STEPS => m.clock_steps.push(s),
            Journal::ClockStep(_) => {}
            Journal::StopRequested { .. } => {}
        }
    }
    while let Some(e) = entry_from_files(
        dir,
        m.init_segments.len() as u64,
        format!("init-{:03}.nfx", m.init_segments.len()),
    )? {
        m.init_segments.push(e);
    }
    let last_init = m.init_segments.len().saturating_sub(1) as u64;
    // Fragments count only while contiguous and complete (sealed file and key record).
    while let Some(mut e) = entry_from_files(
        dir,
        m.fragments.len() as u64,
        format!("frag-{:06}.nfx", m.fragments.len()),
    )? {
        let (init, ms, preroll) = frag_meta
            .get(&e.index)
            .copied()
            .unwrap_or((last_init, 0, false));
        // The journal is only trusted as far as the files agree: an init segment that is not
        // there would make the recovered recording unreadable as a whole.
        let known = (init as usize) < m.init_segments.len();
        e.init = Some(if known { init } else { last_init });
        e.duration_ms = Some(ms);
        m.duration_secs += ms as f64 / 1000.0;
        if preroll {
            m.preroll_secs += ms as f64 / 1000.0;
        }
        m.fragments.push(e);
    }
    if m.fragments.is_empty() {
        // The crash came before the first fragment was claimed: there is no video to keep, and
        // an empty recording would only sit in the upload queue forever.
        log::warn!(recording = id; "interrupted before any video was recorded: removing the empty recording");
        fs::remove_dir_all(dir).map_err(StoreError::io("remove", dir))?;
        return Ok(false);
    }
    m.duration_secs = (m.duration_secs * 1000.0).round() / 1000.0;
    m.preroll_secs = (m.preroll_secs * 1000.0).round() / 1000.0;
    // Leftovers of the interrupted claim: a key record without its fragment, temporary files.
    let listed: Vec<&str> = m
        .init_segments
        .iter()
        .chain(&m.fragments)
        .flat_map(|e| [e.file.as_str(), e.key_file.as_str()])
        .collect();
    if let Ok(list) = fs::read_dir(dir) {
        for e in list.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().to_string();
            let ours = name.ends_with(".nfx") || name.ends_with(".key") || name.ends_with(".tmp");
            if ours && !listed.contains(&name.as_str()) {
                log::warn!(recording = id, file = name.as_str(); "removing incomplete leftover of the interrupted claim");
                fs::remove_file(e.path()).map_err(StoreError::io("remove", e.path()))?;
            }
        }
    }
    m.chain = manifest::chain(id, &m.init_segments, &m.fragments);
    write_manifest(dir, &m, signer, now)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ring;
    use neoflix_format::verify;
    use neoflix_open::DepartmentSecretKey;
    use neoflix_seal::{Kind, ObjectId, seal};

    fn ring_with(dir: &Path, n: u64) -> Ring {
        let (mut ring, _) = Ring::open(dir, Duration::from_secs(100), 1 << 30).unwrap();
        let (k, s) = seal(
            &ObjectId {
                stream: [3; 16],
                seq: 0,
                kind: Kind::Init,
            },
            b"init",
        )
        .unwrap();
        ring.begin_stream([3; 16], &s, k).unwrap();
        for seq in 0..n {
            let (k, s) = seal(
                &ObjectId {
                    stream: [3; 16],
                    seq,
                    kind: Kind::Fragment,
                },
                &[seq as u8; 300],
            )
            .unwrap();
            ring.push(
                seq,
                &s,
                k,
                Duration::from_secs(1),
                SystemTime::now(),
                std::time::Instant::now(),
            )
            .unwrap();
        }
        ring
    }

    fn record(root: &Path, ring: &mut Ring, dept: &DepartmentSecretKey) -> RecordingWriter {
        let mut w = RecordingWriter::create(
            root,
            "rec-1",
            "room-1",
            "pedal",
            &dept.public_key(),
            SystemTime::now(),
        )
        .unwrap();
        claim_all(&mut w, ring, None);
        w
    }

    /// Claims every fragment after `after`, as the daemon does; the ring keeps them.
    fn claim_all(w: &mut RecordingWriter, ring: &mut Ring, mut after: Option<u64>) {
        let init = ring.init(&[3; 16]).unwrap();
        while let Some(e) = ring.next_after(after) {
            w.claim(e, &init, true).unwrap();
            let seq = e.seq;
            ring.keep(seq);
            after = Some(seq);
        }
    }

    #[test]
    fn a_finalized_recording_verifies_and_names_a_damaged_fragment() {
        let t = tempfile::tempdir().unwrap();
        let dept = DepartmentSecretKey::generate().unwrap();
        let mut ring = ring_with(&t.path().join("ring"), 5);
        let mut w = record(&t.path().join("rec"), &mut ring, &dept);
        w.mark("intubation", "control", SystemTime::now(), Instant::now())
            .unwrap();
        let m = w.finalize("control", SystemTime::now(), None).unwrap();
        assert_eq!(m.fragments.len(), 5);
        assert_eq!(m.init_segments.len(), 1);
        assert_eq!(m.duration_secs, 5.0);
        assert_eq!(m.preroll_secs, 5.0);
        // Sealed: neither the manifest nor the journal holds the words.
        let mk = &m.markers[0];
        assert_eq!(mk.label, "");
        let sealed = mk.sealed_label.as_deref().unwrap();
        assert_eq!(
            neoflix_open::open_label(&dept, "rec-1", &mk.utc, sealed).unwrap(),
            "intubation"
        );
        let dir = t.path().join("rec/rec-1");
        for f in ["manifest.json", "journal.jsonl"] {
            if let Ok(text) = fs::read_to_string(dir.join(f)) {
                assert!(!text.contains("intubation"), "{f}: {text}");
            }
        }
        verify(&dir).unwrap();
        // The ring keeps what it still counts as pre-roll, and no file more.
        let ring_fragments = fs::read_dir(t.path().join("ring"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("frag-")
            })
            .count();
        assert_eq!(ring_fragments, ring.len());

        let f = dir.join("frag-000003.nfx");
        let mut bytes = fs::read(&f).unwrap();
        bytes[100] ^= 1;
        fs::write(&f, &bytes).unwrap();
        let err = verify(&dir).unwrap_err().to_string();
        assert!(err.contains("fragment 3 (frag-000003.nfx)"), "{err}");
        bytes[100] ^= 1;
        fs::write(&f, &bytes).unwrap();

        fs::remove_file(dir.join("frag-000002.nfx")).unwrap();
        let err = verify(&dir).unwrap_err().to_string();
        assert!(
            err.contains("fragment 2 (frag-000002.nfx)") && err.contains("missing"),
            "{err}"
        );

        // Editing the manifest to hide the deletion breaks the chain.
        let mut m = neoflix_format::read_manifest(&dir).unwrap();
        m.fragments.remove(2);
        for (i, e) in m.fragments.iter_mut().enumerate() {
            e.index = i as u64;
        }
        fs::write(dir.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        let err = verify(&dir).unwrap_err().to_string();
        assert!(err.contains("hash chain"), "{err}");
    }

    #[test]
    fn a_failed_claim_loses_nothing_and_can_be_tried_again() {
        let t = tempfile::tempdir().unwrap();
        let dept = DepartmentSecretKey::generate().unwrap();
        let mut ring = ring_with(&t.path().join("ring"), 3);
        let root = t.path().join("rec");
        let mut w = RecordingWriter::create(
            &root,
            "rec-1",
            "room-1",
            "pedal",
            &dept.public_key(),
            SystemTime::now(),
        )
        .unwrap();
        let init = ring.init(&[3; 16]).unwrap();
        w.claim(ring.next_after(None).unwrap(), &init, true)
            .unwrap();
        ring.keep(0);
        // The recording's directory goes away (a disk unmounted under us): the claim fails and
        // the fragment, file and key, is still the ring's.
        let dir = root.join("rec-1");
        let aside = t.path().join("aside");
        fs::rename(&dir, &aside).unwrap();
        assert!(
            w.claim(ring.next_after(Some(0)).unwrap(), &init, true)
                .is_err()
        );
        assert_eq!(ring.next_after(Some(0)).unwrap().seq, 1);
        assert!(ring.next_after(Some(0)).unwrap().path.exists());
        fs::rename(&aside, &dir).unwrap();
        claim_all(&mut w, &mut ring, Some(0));
        let m = w.finalize("control", SystemTime::now(), None).unwrap();
        assert_eq!(m.fragments.len(), 3);
        let v = verify::verify(&dir).unwrap();
        assert_eq!(v.manifest.fragments.len(), 3);
    }

    #[test]
    fn recovery_does_not_wait_on_a_fifo_journal() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("rec-fifo");
        fs::create_dir_all(&dir).unwrap();
        let journal = dir.join("journal.jsonl");
        let c = std::ffi::CString::new(journal.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Returning is the test: before, opening the FIFO waited for a writer for ever.
        recover(t.path(), "k", SystemTime::now(), None).unwrap();
    }

    #[test]
    fn recovery_trusts_the_journal_only_as_far_as_the_files_agree() {
        let t = tempfile::tempdir().unwrap();
        let dept = DepartmentSecretKey::generate().unwrap();
        let mut ring = ring_with(&t.path().join("ring"), 2);
        drop(record(&t.path().join("rec"), &mut ring, &dept)); // the crash
        let dir = t.path().join("rec/rec-1");
        // A journal naming an init segment the recording does not have.
        let journal = fs::read_to_string(dir.join("journal.jsonl")).unwrap();
        assert!(journal.contains("\"init\":0"), "{journal}");
        fs::write(
            dir.join("journal.jsonl"),
            journal.replace("\"init\":0", "\"init\":7"),
        )
        .unwrap();
        recover(&t.path().join("rec"), "k", SystemTime::now(), None).unwrap();
        // Before, the recovered manifest pointed at init 7 and nothing could read the recording.
        let v = verify(&dir).unwrap();
        assert_eq!(v.manifest.fragments.len(), 2);
    }

    #[test]
    fn recovery_seals_an_open_recording_as_interrupted() {
        let t = tempfile::tempdir().unwrap();
        let dept = DepartmentSecretKey::generate().unwrap();
        let mut ring = ring_with(&t.path().join("ring"), 4);
        let mut w = record(&t.path().join("rec"), &mut ring, &dept);
        w.mark("", "pedal", SystemTime::now(), Instant::now())
            .unwrap();
        drop(w); // the crash
        let dir = t.path().join("rec/rec-1");
        // A claim cut short: the key record was written, the fragment never moved in.
        fs::write(dir.join("frag-000004.key"), b"orphan").unwrap();
        fs::write(dir.join(".frag-000005.key.tmp"), b"torn").unwrap();
        // And a torn journal line.
        fs::OpenOptions::new()
            .append(true)
            .open(dir.join("journal.jsonl"))
            .unwrap()
            .write_all(b"{\"event\":\"frag")
            .unwrap();

        let ids = recover(
            &t.path().join("rec"),
            &dept.public_key().key_id().0,
            SystemTime::now(),
            None,
        )
        .unwrap();
        assert_eq!(ids, vec!["rec-1".to_string()]);
        let v = verify(&dir).unwrap();
        assert_eq!(v.manifest.status, Status::Interrupted);
        assert_eq!(v.manifest.fragments.len(), 4);
        assert_eq!(v.manifest.device_id, "room-1");
        assert_eq!(v.manifest.trigger, "pedal");
        assert_eq!(v.manifest.markers.len(), 1);
        assert_eq!(v.manifest.duration_secs, 4.0);
        assert!(!dir.join("frag-000004.key").exists());
        assert!(!dir.join(".frag-000005.key.tmp").exists());
        // A recording cut off before its first fragment holds no video: it is removed, not queued.
        let empty = RecordingWriter::create(
            &t.path().join("rec"),
            "rec-2",
            "room-1",
            "pedal",
            &dept.public_key(),
            SystemTime::now(),
        )
        .unwrap();
        drop(empty);
        assert!(
            recover(&t.path().join("rec"), "x", SystemTime::now(), None)
                .unwrap()
                .is_empty()
        );
        assert!(!t.path().join("rec/rec-2").exists());
        // Idempotent: a sealed recording is left alone.
        assert!(
            recover(&t.path().join("rec"), "x", SystemTime::now(), None)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn recordings_finalized_without_a_signer_are_signed_once_one_is_installed() {
        let t = tempfile::tempdir().unwrap();
        let dept = DepartmentSecretKey::generate().unwrap();
        let mut ring = ring_with(&t.path().join("ring"), 3);
        let w = record(&t.path().join("rec"), &mut ring, &dept);
        w.finalize("control", SystemTime::now(), None).unwrap();
        let dir = w.dir().to_path_buf();
        assert!(!dir.join(SIGNATURE_FILE).exists());
        let ca_dir = t.path().join("ca");
        let ca = neoflix_pki::Ca::init(&ca_dir, "CA").unwrap();
        let (crt, key) = ca.issue("room-1", neoflix_pki::Role::Device, None).unwrap();
        let id =
            SigningIdentity::from_pem(&fs::read(crt).unwrap(), &fs::read(key).unwrap()).unwrap();
        // A FIFO posing as another recording's manifest is skipped, not waited on, and does not
        // stop the real one from being signed.
        let odd = t.path().join("rec/odd");
        fs::create_dir_all(&odd).unwrap();
        let c = std::ffi::CString::new(odd.join(MANIFEST_FILE).to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Nor is a file that is not a manifest, nor another device's manifest, vouched for.
        let garbage = t.path().join("rec/garbage");
        fs::create_dir_all(&garbage).unwrap();
        fs::write(garbage.join(MANIFEST_FILE), b"not a manifest").unwrap();
        let foreign = t.path().join("rec/foreign");
        fs::create_dir_all(&foreign).unwrap();
        let mut theirs: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
        theirs["device_id"] = "room-2".into();
        fs::write(
            foreign.join(MANIFEST_FILE),
            serde_json::to_vec(&theirs).unwrap(),
        )
        .unwrap();
        let signed = sign_unsigned(&t.path().join("rec"), &id, SystemTime::now());
        assert_eq!(signed, vec!["rec-1".to_string()]);
        for other in [&garbage, &foreign] {
            assert!(!other.join(SIGNATURE_FILE).exists(), "{}", other.display());
        }
        let trust =
            neoflix_format::TrustAnchors::from_pem(&fs::read(ca_dir.join("ca.crt")).unwrap(), None)
                .unwrap();
        let (bytes, m) = neoflix_format::verify::read_manifest_bytes(&dir).unwrap();
        let custody = neoflix_format::custody::check_recording(&dir, &bytes, &m, Some(&trust));
        assert!(
            matches!(custody, Ok(neoflix_format::custody::Custody::Signed(_))),
            "{custody:?}"
        );
        // Already signed ones are left alone.
        assert!(sign_unsigned(&t.path().join("rec"), &id, SystemTime::now()).is_empty());
    }

    /// Issue 15: a marker's offset came from the wall clock, so a step of +1 h mid-recording
    /// put a marker 3600 s past the end of a 13-s video. Offsets now come from the video's
    /// timeline, and the manifest (and recovery, from the journal) says when the clock stepped.
    #[test]
    fn a_clock_step_moves_no_marker_and_the_manifest_says_when_it_came() {
        let t = tempfile::tempdir().unwrap();
        let dept = DepartmentSecretKey::generate().unwrap();
        let (mut ring, _) =
            Ring::open(&t.path().join("ring"), Duration::from_secs(100), 1 << 30).unwrap();
        let (k, s) = seal(
            &ObjectId {
                stream: [3; 16],
                seq: 0,
                kind: Kind::Init,
            },
            b"init",
        )
        .unwrap();
        ring.begin_stream([3; 16], &s, k).unwrap();
        let (mono0, wall0) = (Instant::now(), SystemTime::now());
        let mut w = RecordingWriter::create(
            &t.path().join("rec"),
            "rec-1",
            "room-1",
            "pedal",
            &dept.public_key(),
            wall0,
        )
        .unwrap();
        let mut claimed = None;
        for seq in 0..8u64 {
            let (k, s) = seal(
                &ObjectId {
                    stream: [3; 16],
                    seq,
                    kind: Kind::Fragment,
                },
                &[seq as u8; 300],
            )
            .unwrap();
            // The clock is set an hour ahead between the fourth fragment and the fifth.
            let jump = if seq >= 4 { 3600 } else { 0 };
            ring.push(
                seq,
                &s,
                k,
                Duration::from_secs(1),
                wall0 + Duration::from_secs(seq + jump),
                mono0 + Duration::from_secs(seq),
            )
            .unwrap();
            claim_all(&mut w, &mut ring, claimed);
            claimed = Some(seq);
        }
        // 6.5 s into the video, by the monotonic clock; the wall clock says an hour more.
        let mk = w
            .mark(
                "",
                "pedal",
                wall0 + Duration::from_millis(3_600_000 + 6500),
                mono0 + Duration::from_millis(6500),
            )
            .unwrap();
        assert_eq!(mk.offset_secs, 6.5);
        // Past the last claimed fragment: where the video on its way will be.
        let late = w
            .mark(
                "",
                "pedal",
                SystemTime::now(),
                mono0 + Duration::from_millis(9250),
            )
            .unwrap();
        assert_eq!(late.offset_secs, 9.25);
        let m = w.finalize("control", SystemTime::now(), None).unwrap();
        assert_eq!(m.duration_secs, 8.0);
        assert_eq!(m.clock_steps.len(), 1, "{:?}", m.clock_steps);
        assert_eq!(m.clock_steps[0].offset_secs, 4.0);
        assert!((m.clock_steps[0].step_secs - 3600.0).abs() < 0.01);
        verify::verify(w.dir()).unwrap();

        // Recovery rebuilds both from the journal.
        fs::remove_file(w.dir().join(MANIFEST_FILE)).unwrap();
        let dir = w.dir().to_path_buf();
        drop(w);
        recover(&t.path().join("rec"), "k", SystemTime::now(), None).unwrap();
        let (_, r) = verify::read_manifest_bytes(&dir).unwrap();
        assert_eq!(r.clock_steps, m.clock_steps);
        assert_eq!(r.markers[0].offset_secs, 6.5);
    }

    /// A renamed recording verifies under its new id, signed again, its label opening with
    /// the first id; a rename a crash cut short (the directory renamed, the manifest not yet)
    /// is finished by `readdress`, which has nothing to do the second time.
    #[test]
    fn a_renamed_recording_verifies_under_its_new_id_and_keeps_its_labels() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("rec");
        let dept = DepartmentSecretKey::generate().unwrap();
        let mut ring = ring_with(&t.path().join("ring"), 3);
        let mut w = record(&root, &mut ring, &dept);
        w.mark("adrenaline", "control", SystemTime::now(), Instant::now())
            .unwrap();
        w.finalize("control", SystemTime::now(), None).unwrap();
        let ca_dir = t.path().join("ca");
        let ca = neoflix_pki::Ca::init(&ca_dir, "CA").unwrap();
        let (crt, key) = ca.issue("room-1", neoflix_pki::Role::Device, None).unwrap();
        let id =
            SigningIdentity::from_pem(&fs::read(crt).unwrap(), &fs::read(key).unwrap()).unwrap();
        let trust =
            neoflix_format::TrustAnchors::from_pem(&fs::read(ca_dir.join("ca.crt")).unwrap(), None)
                .unwrap();
        let check = |dir: &Path, rid: &str, first: &str| {
            let v = verify::verify(dir).unwrap();
            assert_eq!(v.manifest.recording_id, rid);
            assert_eq!(v.manifest.renamed_from.as_deref(), Some(first));
            let (bytes, m) = verify::read_manifest_bytes(dir).unwrap();
            let custody = neoflix_format::custody::check_recording(dir, &bytes, &m, Some(&trust));
            assert!(
                matches!(custody, Ok(neoflix_format::custody::Custody::Signed(_))),
                "{custody:?}"
            );
            let mk = &m.markers[0];
            let label = neoflix_open::open_label(
                &dept,
                m.label_recording_id(),
                &mk.utc,
                mk.sealed_label.as_deref().unwrap(),
            );
            assert_eq!(label.unwrap(), "adrenaline");
        };

        let dir = rename(&root, "rec-1", "rec-2", Some(&id), SystemTime::now()).unwrap();
        assert_eq!(dir, root.join("rec-2"));
        assert!(!root.join("rec-1").exists());
        check(&dir, "rec-2", "rec-1");
        // Renamed again, it keeps the first id for its labels.
        assert!(rename(&root, "rec-2", "rec-2", Some(&id), SystemTime::now()).is_err());
        fs::rename(root.join("rec-2"), root.join("rec-3")).unwrap();
        readdress(&root.join("rec-3"), Some(&id), SystemTime::now()).unwrap();
        check(&root.join("rec-3"), "rec-3", "rec-1");
        let before = fs::read(root.join("rec-3").join(MANIFEST_FILE)).unwrap();
        readdress(&root.join("rec-3"), Some(&id), SystemTime::now()).unwrap();
        assert_eq!(
            fs::read(root.join("rec-3").join(MANIFEST_FILE)).unwrap(),
            before
        );
    }
}
