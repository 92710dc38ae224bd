//! The recordings on the box's storage: the open one and those stopped but not yet closed on disk,
//! each with the storage work it still owes (creating its directory, claiming its fragments from
//! the ring, markers, the stop note, its manifest).
//!
//! The recorder decides; this carries out, on the storage thread ([`crate::storage`]). Work is
//! recorded first and done in [`Recordings::sync`], oldest recording first; a failure leaves the
//! work pending (fragments stay in the ring, held there for the recording) and is returned, so
//! storage can report it and the recorder asks for a retry. Storage that recovers within the
//! ring's `max_bytes` loses nothing.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use neoflix_recorder::{StopReason, Trigger};
use neoflix_seal::DepartmentPublicKey;
use neoflix_store::{Marker, RecordingWriter, Ring, SigningIdentity, StoreError};

/// Markers kept for a recording whose storage fails; past this they are dropped (and logged).
const MAX_PENDING_MARKS: usize = 1000;
/// Stopped recordings waiting for storage to close them; past this the oldest is given up: what
/// it has on disk is sealed as `interrupted` at the next start, what it still owed is lost.
const MAX_CLOSING: usize = 8;
/// Longest one [`Recordings::sync`] works: catching up on a long outage (hundreds of fragments,
/// several fsyncs each) must not stall the storage loop, whose progress systemd's watchdog checks.
const SYNC_BUDGET: Duration = Duration::from_millis(250);

/// What storage work finished, for logs, events and the upload.
#[derive(Debug)]
pub enum Done {
    /// The recording's directory exists and its pre-roll is in.
    Opened {
        /// The recording.
        id: String,
        /// Its trigger.
        trigger: Trigger,
    },
    /// A marker is in the recording's journal.
    Marked {
        /// The recording.
        id: String,
        /// The marker.
        marker: Marker,
    },
    /// The manifest is written: the recording is complete.
    Finalized {
        /// The recording.
        id: String,
        /// Why it stopped.
        reason: StopReason,
        /// Fragments in it.
        fragments: usize,
        /// Seconds of video in it.
        duration_secs: f64,
    },
}

/// One recording and the work it still owes.
struct Pending {
    id: String,
    trigger: Trigger,
    trigger_utc: SystemTime,
    /// Once its directory exists.
    writer: Option<RecordingWriter>,
    /// Fragments up to this one were in the ring at the trigger: its pre-roll.
    preroll_through: Option<u64>,
    /// Unclaimed fragments up to this one belong to recordings before it, never to this one.
    after: Option<u64>,
    /// The first fragment of its pre-roll: the oldest within the pre-roll at the trigger.
    from: Option<u64>,
    /// The last fragment it claimed: it claims on from there, kept fragments included.
    claimed: Option<u64>,
    marks: VecDeque<(String, Trigger, SystemTime, std::time::Instant)>,
    stop_note: Option<(StopReason, SystemTime)>,
    /// [`Done::Opened`] was given: its directory and pre-roll are on disk.
    opened: bool,
}

/// A stopped recording waiting to be closed.
struct Closing {
    rec: Pending,
    reason: StopReason,
    stop_utc: SystemTime,
    /// The last fragment in the ring that belongs to it.
    through: Option<u64>,
}

/// The recordings being written.
pub struct Recordings {
    root: PathBuf,
    device: String,
    recipient: DepartmentPublicKey,
    /// Signs each manifest; `None` on a box without a signing identity.
    signer: Option<Arc<SigningIdentity>>,
    open: Option<Pending>,
    closing: VecDeque<Closing>,
    /// The last sync ran out of time with work left (not a failure: it goes on at the next).
    behind: bool,
}

impl Recordings {
    /// Recordings of `device` under `root`, keys wrapped to `recipient`.
    pub fn new(
        root: PathBuf,
        device: String,
        recipient: DepartmentPublicKey,
        signer: Option<Arc<SigningIdentity>>,
    ) -> Self {
        Recordings {
            root,
            device,
            recipient,
            signer,
            open: None,
            closing: VecDeque::new(),
            behind: false,
        }
    }

    /// The open recording's id (also before its directory could be created).
    pub fn open_id(&self) -> Option<&str> {
        self.open.as_ref().map(|p| p.id.as_str())
    }

    /// Video claimed into the open recording.
    pub fn open_duration(&self) -> Option<std::time::Duration> {
        self.open.as_ref().map(|p| {
            p.writer
                .as_ref()
                .map(RecordingWriter::duration)
                .unwrap_or_default()
        })
    }

    /// Whether any storage work is owed.
    pub fn owes_work(&self) -> bool {
        self.behind
            || !self.closing.is_empty()
            || self.open.as_ref().is_some_and(|p| p.writer.is_none())
    }

    /// Whether the last [`Recordings::sync`] stopped for time with work left: call it again soon.
    pub fn behind(&self) -> bool {
        self.behind
    }

    /// Opens recording `id` (decided by the conductor, see [`crate::conductor::RecordingIds`]);
    /// fragments up to `preroll_through` (the last one the recorder had seen at the trigger) are
    /// its pre-roll, everything after belongs to it too.
    pub fn start(
        &mut self,
        id: String,
        trigger: Trigger,
        now: SystemTime,
        preroll_through: Option<u64>,
        ring: &mut Ring,
    ) {
        let after = self.closing.back().and_then(|c| c.through);
        self.open = Some(Pending {
            id,
            trigger,
            trigger_utc: now,
            writer: None,
            preroll_through,
            after,
            from: ring.preroll_start(preroll_through),
            claimed: None,
            marks: VecDeque::new(),
            stop_note: None,
            opened: false,
        });
        self.hold(ring);
    }

    /// A marker for the open recording.
    pub fn mark(&mut self, label: String, by: Trigger, now: SystemTime, at: std::time::Instant) {
        if let Some(p) = &mut self.open {
            if p.marks.len() >= MAX_PENDING_MARKS {
                log::error!(recording = p.id.as_str(); "storage failing and too many markers waiting: one dropped");
                return;
            }
            p.marks.push_back((label, by, now, at));
        }
    }

    /// Notes in the open recording that a stop was asked for.
    pub fn stop_requested(&mut self, reason: StopReason, now: SystemTime) {
        if let Some(p) = &mut self.open {
            p.stop_note = Some((reason, now));
        }
    }

    /// Closes the open recording: fragments up to `through` (the last one the recorder had seen
    /// when it decided to stop) still belong to it; later ones are the next pre-roll.
    pub fn finalize(
        &mut self,
        reason: StopReason,
        now: SystemTime,
        through: Option<u64>,
        ring: &mut Ring,
    ) {
        let Some(rec) = self.open.take() else { return };
        if self.closing.len() >= MAX_CLOSING
            && let Some(lost) = self.closing.pop_front()
        {
            // Its fragments must not slide into the next recording: forget them.
            let gone = match lost.through {
                Some(t) => ring.discard_through(t).unwrap_or_default().len(),
                None => 0,
            };
            log::error!(recording = lost.rec.id.as_str(), fragments_lost = gone, on_disk = lost.rec.writer.is_some();
                "storage has failed for too long: recording given up (what reached the disk is sealed as interrupted at the next start)");
        }
        self.closing.push_back(Closing {
            rec,
            reason,
            stop_utc: now,
            through,
        });
        self.hold(ring);
    }

    /// Does all owed work, oldest recording first; stops at the first failure, which is
    /// returned with the work still owed. What finished is appended to `done`.
    pub fn sync(&mut self, ring: &mut Ring, done: &mut Vec<Done>) -> Result<(), StoreError> {
        let deadline = Instant::now() + SYNC_BUDGET;
        let result = self.sync_all(ring, done, deadline);
        self.behind = matches!(result, Ok(false));
        self.hold(ring);
        result.map(|_| ())
    }

    /// `Ok(true)` when all is done, `Ok(false)` when time ran out first.
    fn sync_all(
        &mut self,
        ring: &mut Ring,
        done: &mut Vec<Done>,
        deadline: Instant,
    ) -> Result<bool, StoreError> {
        while let Some(c) = self.closing.front_mut() {
            let (root, device, recipient) = (&self.root, &self.device, &self.recipient);
            let to = Claims {
                through: c.through,
                deadline,
            };
            if !bring_up_to_date(&mut c.rec, to, ring, root, device, recipient, done)? {
                return Ok(false);
            }
            let w = c.rec.writer.as_ref().expect("opened above");
            let manifest = w.finalize(c.reason.as_str(), c.stop_utc, self.signer.as_deref())?;
            let c = self.closing.pop_front().expect("front exists");
            done.push(Done::Finalized {
                id: c.rec.id,
                reason: c.reason,
                fragments: manifest.fragments.len(),
                duration_secs: manifest.duration_secs,
            });
        }
        if let Some(p) = &mut self.open {
            let to = Claims {
                through: None,
                deadline,
            };
            return bring_up_to_date(p, to, ring, &self.root, &self.device, &self.recipient, done);
        }
        Ok(true)
    }

    /// The ring keeps what recordings still have to claim: unclaimed fragments, and kept ones
    /// that a recording has yet to claim as its pre-roll.
    fn hold(&self, ring: &mut Ring) {
        let through = if self.open.is_some() {
            Some(u64::MAX)
        } else {
            self.closing.back().and_then(|c| c.through)
        };
        ring.hold_through(through);
        // Kept fragments wait while any recording, open or stopped but not yet closed (storage
        // failing or behind), has yet to claim its pre-roll.
        let owes_preroll = |p: &Pending| {
            p.preroll_through
                .is_some_and(|t| p.claimed.is_none_or(|c| c < t))
        };
        let waiting = self.open.as_ref().is_some_and(owes_preroll)
            || self.closing.iter().any(|c| owes_preroll(&c.rec));
        if let Err(e) = ring.hold_kept(waiting) {
            log::error!("ring: {e}");
        }
    }
}

/// Notes, once, that the recording's directory and its pre-roll are on disk: a crash from here
/// on costs it at most the fragment being written.
fn opened(opened: &mut bool, id: &str, trigger: Trigger, done: &mut Vec<Done>) {
    if !*opened {
        *opened = true;
        done.push(Done::Opened {
            id: id.to_string(),
            trigger,
        });
    }
}

/// How far a recording claims in one go.
struct Claims {
    /// Its last fragment, if it is stopped; `None`: everything in the ring.
    through: Option<u64>,
    /// When to stop for now.
    deadline: Instant,
}

/// Creates the recording if needed, claims its fragments (up to `to.through`, or all), writes its
/// pending markers and stop note. `Ok(false)` when the deadline came first.
fn bring_up_to_date(
    p: &mut Pending,
    to: Claims,
    ring: &mut Ring,
    root: &std::path::Path,
    device: &str,
    recipient: &DepartmentPublicKey,
    done: &mut Vec<Done>,
) -> Result<bool, StoreError> {
    if p.writer.is_none() {
        p.writer = Some(RecordingWriter::create(
            root,
            &p.id,
            device,
            p.trigger.as_str(),
            recipient,
            p.trigger_utc,
        )?);
    }
    let w = p.writer.as_mut().expect("created above");
    // Anything unclaimed and older belongs to a recording before this one (given up).
    if let Some(after) = p.after {
        ring.discard_through(after)?;
    }
    // Kept fragments first (the end of the recordings before, within the pre-roll), then the
    // unclaimed ones.
    let begin = p.from.and_then(|f| f.checked_sub(1));
    while let Some(entry) = ring.next_after(p.claimed.or(begin)) {
        if to.through.is_some_and(|t| entry.seq > t) {
            break;
        }
        if Instant::now() >= to.deadline {
            return Ok(false);
        }
        let seq = entry.seq;
        let init = ring
            .init(&entry.stream)
            .ok_or(StoreError::NotInRing { seq })?;
        let preroll = p.preroll_through.is_some_and(|t| seq <= t);
        w.claim(entry, &init, preroll)?;
        // Claimed: noted first, so that nothing after can make it claimed twice; the ring
        // keeps it as pre-roll for a next recording while it is within it.
        p.claimed = Some(seq);
        ring.keep(seq);
        log::debug!(recording = p.id.as_str(), fragment = seq; "claimed");
        // Its pre-roll is in: the `start` answer need not wait for the catching up after it
        // (a slow disk, fragments that came meanwhile).
        if p.preroll_through.is_some_and(|t| seq >= t) {
            opened(&mut p.opened, &p.id, p.trigger, done);
        }
    }
    // Everything in the ring up to now is in, whatever of the pre-roll it still held.
    opened(&mut p.opened, &p.id, p.trigger, done);
    while let Some((label, by, at, at_mono)) = p.marks.front() {
        let marker = w.mark(label, by.as_str(), *at, *at_mono)?;
        p.marks.pop_front();
        done.push(Done::Marked {
            id: p.id.clone(),
            marker,
        });
    }
    if let Some((reason, at)) = p.stop_note {
        w.stop_requested(reason.as_str(), at)?;
        p.stop_note = None;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use neoflix_seal::{DepartmentPublicKey, Kind, ObjectId, seal};

    const STREAM: [u8; 16] = [7; 16];

    /// Syncs until nothing is owed: one sync may run out of its time budget on a busy disk.
    fn settle(recs: &mut Recordings, ring: &mut Ring, done: &mut Vec<Done>) {
        recs.sync(ring, done).unwrap();
        while recs.behind() {
            recs.sync(ring, done).unwrap();
        }
    }

    /// A ring under `dir` with `preroll_secs` of pre-roll and a capture stream begun.
    fn ring(dir: &std::path::Path, preroll_secs: u64) -> Ring {
        let (mut ring, _) = Ring::open(
            &dir.join("ring"),
            Duration::from_secs(preroll_secs),
            1 << 30,
        )
        .unwrap();
        let init = ObjectId {
            stream: STREAM,
            seq: 0,
            kind: Kind::Init,
        };
        let (k, s) = seal(&init, b"init").unwrap();
        ring.begin_stream(STREAM, &s, k).unwrap();
        ring
    }

    fn push(ring: &mut Ring, seq: u64) {
        let id = ObjectId {
            stream: STREAM,
            seq,
            kind: Kind::Fragment,
        };
        let (k, s) = seal(&id, &[seq as u8; 64]).unwrap();
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

    /// With the recordings path unusable (a file where the directory should be: refused even
    /// to root), stopped recordings pile up; the oldest past the limit is given up, and its
    /// fragments must not end up in a later recording once storage works again.
    #[test]
    fn stopped_recordings_wait_for_storage_and_keep_to_their_own_fragments() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("recordings");
        std::fs::write(&root, b"not a directory").unwrap();
        let mut ring = ring(t.path(), 2);
        // Any public key: nothing is opened here.
        let dept = DepartmentPublicKey::from_bytes(&[9; 32]).unwrap();
        let mut recs = Recordings::new(root.clone(), "room-1".into(), dept, None);
        let mut done = Vec::new();
        let mut seq = 0;
        let mut ids = Vec::new();
        // Ten recordings of three fragments each, every one refused by storage.
        for n in 0..MAX_CLOSING + 2 {
            let id = format!("room-1-{n}");
            let preroll = ring.newest_seq();
            recs.start(
                id.clone(),
                Trigger::Pedal,
                SystemTime::now(),
                preroll,
                &mut ring,
            );
            ids.push(id);
            for _ in 0..3 {
                push(&mut ring, seq);
                seq += 1;
                assert!(recs.sync(&mut ring, &mut done).is_err());
            }
            recs.mark(
                "m".into(),
                Trigger::Control,
                SystemTime::now(),
                std::time::Instant::now(),
            );
            let through = ring.newest_seq();
            recs.finalize(StopReason::Shutdown, SystemTime::now(), through, &mut ring);
            assert!(recs.sync(&mut ring, &mut done).is_err());
        }
        assert!(recs.owes_work());
        assert!(done.is_empty());
        // Storage works again: every recording still waited for is closed, in order, each with
        // exactly its own three fragments; the two given up are gone with their fragments.
        std::fs::remove_file(&root).unwrap();
        while recs.owes_work() {
            settle(&mut recs, &mut ring, &mut done);
        }
        let finalized: Vec<(String, usize)> = done
            .iter()
            .filter_map(|d| match d {
                Done::Finalized { id, fragments, .. } => Some((id.clone(), *fragments)),
                _ => None,
            })
            .collect();
        // Each has the last 2 s of the one before as its pre-roll, but for the first one left:
        // the one before it was given up, and its fragments with it.
        let expected: Vec<(String, usize)> = ids[2..]
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), if i == 0 { 3 } else { 5 }))
            .collect();
        assert_eq!(finalized, expected);
        // What is left is the last recording's end, kept as the next one's pre-roll.
        assert!(
            ring.duration() <= Duration::from_secs(2),
            "{:?}",
            ring.duration()
        );
        let marks = done
            .iter()
            .filter(|d| matches!(d, Done::Marked { .. }))
            .count();
        assert_eq!(marks, MAX_CLOSING);
    }

    /// Twins: a recording started soon after another stopped gets its full pre-roll, the end of
    /// the one before included, each recording with its own file and wrapped key.
    #[test]
    fn a_recording_started_soon_after_a_stop_gets_its_full_preroll() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("recordings");
        let mut ring = ring(t.path(), 3);
        let dept = DepartmentPublicKey::from_bytes(&[9; 32]).unwrap();
        let mut recs = Recordings::new(root.clone(), "room-1".into(), dept, None);
        let mut done = Vec::new();
        for seq in 0..5 {
            push(&mut ring, seq);
        }
        // The first: 3 s of pre-roll (2, 3, 4) and 3 s after the trigger (5, 6, 7).
        recs.start(
            "a".into(),
            Trigger::Pedal,
            SystemTime::now(),
            Some(4),
            &mut ring,
        );
        settle(&mut recs, &mut ring, &mut done);
        for seq in 5..8 {
            push(&mut ring, seq);
            settle(&mut recs, &mut ring, &mut done);
        }
        recs.finalize(StopReason::Shutdown, SystemTime::now(), Some(7), &mut ring);
        settle(&mut recs, &mut ring, &mut done);
        // One second later the second: its pre-roll is 6, 7 (the first one's end) and 8. (The
        // ring keeps the pre-roll and the newest fragment.)
        assert_eq!(ring.duration(), Duration::from_secs(4));
        push(&mut ring, 8);
        assert_eq!(ring.duration(), Duration::from_secs(4));
        recs.start(
            "b".into(),
            Trigger::Pedal,
            SystemTime::now(),
            Some(8),
            &mut ring,
        );
        // Fragments arriving before storage gets to it do not push the kept ones out.
        push(&mut ring, 9);
        push(&mut ring, 10);
        settle(&mut recs, &mut ring, &mut done);
        recs.finalize(StopReason::Shutdown, SystemTime::now(), Some(10), &mut ring);
        settle(&mut recs, &mut ring, &mut done);
        let read = |id: &str| -> neoflix_store::Manifest {
            serde_json::from_slice(&std::fs::read(root.join(id).join("manifest.json")).unwrap())
                .unwrap()
        };
        let (a, b) = (read("a"), read("b"));
        assert_eq!((a.fragments.len(), a.preroll_secs), (6, 3.0));
        assert_eq!((b.fragments.len(), b.preroll_secs), (5, 3.0));
        // The same sealed fragments, each recording with its own file and key record.
        assert_eq!(a.fragments[4].sha256, b.fragments[0].sha256);
        assert_eq!(a.fragments[5].sha256, b.fragments[1].sha256);
        assert_ne!(a.fragments[4].key_sha256, b.fragments[0].key_sha256);
        std::fs::remove_file(root.join("a").join(&a.fragments[4].file)).unwrap();
        assert!(root.join("b").join(&b.fragments[0].file).exists());
        // Nothing older than the pre-roll (and the newest fragment) keeps its key in the ring.
        assert!(ring.duration() <= Duration::from_secs(4));
    }

    /// Found by the one-hour network soak under load (3 of 775 recordings): storage had a
    /// fragment the recorder had not heard of yet when the start reached it, and counted the
    /// pre-roll back from that one, so the pre-roll (up to the last fragment the recorder had
    /// seen) came a fragment short.
    #[test]
    fn the_preroll_is_counted_back_from_what_the_recorder_had_seen() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("recordings");
        let mut ring = ring(t.path(), 3);
        let dept = DepartmentPublicKey::from_bytes(&[9; 32]).unwrap();
        let mut recs = Recordings::new(root.clone(), "room-1".into(), dept, None);
        let mut done = Vec::new();
        // The recorder has seen 0..=4 when it decides; 5 is in the ring already.
        for seq in 0..6 {
            push(&mut ring, seq);
        }
        recs.start(
            "a".into(),
            Trigger::Pedal,
            SystemTime::now(),
            Some(4),
            &mut ring,
        );
        settle(&mut recs, &mut ring, &mut done);
        recs.finalize(StopReason::Shutdown, SystemTime::now(), Some(5), &mut ring);
        settle(&mut recs, &mut ring, &mut done);
        let m: neoflix_store::Manifest =
            serde_json::from_slice(&std::fs::read(root.join("a").join("manifest.json")).unwrap())
                .unwrap();
        // 2, 3, 4 before the trigger; 5 after.
        assert_eq!((m.fragments.len(), m.preroll_secs), (4, 3.0));
    }
}
