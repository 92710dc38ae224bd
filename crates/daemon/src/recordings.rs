//! The recordings on the box's storage: the open one and those stopped but not yet closed on disk,
//! each with the storage work it still owes (creating its directory, claiming its fragments from
//! the ring, markers, the stop note, its manifest).
//!
//! The recorder decides; this carries out. Work is recorded first and done in [`Recordings::sync`],
//! oldest recording first; a failure leaves the work pending (fragments stay in the ring, held
//! there for the recording) and is returned, so the engine can tell the recorder, which asks for
//! a retry. Storage that recovers within the ring's `max_bytes` loses nothing.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::SystemTime;

use neoflix_recorder::{StopReason, Trigger};
use neoflix_seal::DepartmentPublicKey;
use neoflix_store::{Marker, RecordingWriter, Ring, StoreError};

/// Markers kept for a recording whose storage fails; past this they are dropped (and logged).
const MAX_PENDING_MARKS: usize = 1000;
/// Stopped recordings waiting for storage to close them; past this the oldest is left for the
/// recovery at the next start (sealed as `interrupted`), with what it has on disk.
const MAX_CLOSING: usize = 8;

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
    marks: VecDeque<(String, Trigger, SystemTime)>,
    stop_note: Option<(StopReason, SystemTime)>,
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
    open: Option<Pending>,
    closing: VecDeque<Closing>,
}

impl Recordings {
    /// Recordings of `device` under `root`, keys wrapped to `recipient`.
    pub fn new(root: PathBuf, device: String, recipient: DepartmentPublicKey) -> Self {
        Recordings {
            root,
            device,
            recipient,
            open: None,
            closing: VecDeque::new(),
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
        !self.closing.is_empty() || self.open.as_ref().is_some_and(|p| p.writer.is_none())
    }

    /// A new recording; everything now in the ring is its pre-roll. Returns its id.
    pub fn start(&mut self, trigger: Trigger, now: SystemTime, ring: &mut Ring) -> String {
        let id = self.new_id(now);
        self.open = Some(Pending {
            id: id.clone(),
            trigger,
            trigger_utc: now,
            writer: None,
            preroll_through: ring.newest_seq(),
            marks: VecDeque::new(),
            stop_note: None,
        });
        self.hold(ring);
        id
    }

    /// A marker for the open recording.
    pub fn mark(&mut self, label: String, by: Trigger, now: SystemTime) {
        if let Some(p) = &mut self.open {
            if p.marks.len() >= MAX_PENDING_MARKS {
                log::error!(recording = p.id.as_str(); "storage failing and too many markers waiting: one dropped");
                return;
            }
            p.marks.push_back((label, by, now));
        }
    }

    /// Notes in the open recording that a stop was asked for.
    pub fn stop_requested(&mut self, reason: StopReason, now: SystemTime) {
        if let Some(p) = &mut self.open {
            p.stop_note = Some((reason, now));
        }
    }

    /// Closes the open recording: what is in the ring now still belongs to it.
    pub fn finalize(&mut self, reason: StopReason, now: SystemTime, ring: &mut Ring) {
        let Some(rec) = self.open.take() else { return };
        if self.closing.len() >= MAX_CLOSING
            && let Some(lost) = self.closing.pop_front()
        {
            log::error!(recording = lost.rec.id.as_str();
                "storage has failed for too long: this recording is left as it is on disk, sealed as interrupted at the next start");
        }
        self.closing.push_back(Closing {
            rec,
            reason,
            stop_utc: now,
            through: ring.newest_seq(),
        });
        self.hold(ring);
    }

    /// Does all owed work, oldest recording first; stops at the first failure, which is
    /// returned with the work still owed. What finished is appended to `done`.
    pub fn sync(&mut self, ring: &mut Ring, done: &mut Vec<Done>) -> Result<(), StoreError> {
        let result = self.sync_all(ring, done);
        self.hold(ring);
        result
    }

    fn sync_all(&mut self, ring: &mut Ring, done: &mut Vec<Done>) -> Result<(), StoreError> {
        while let Some(c) = self.closing.front_mut() {
            let (root, device, recipient) = (&self.root, &self.device, &self.recipient);
            bring_up_to_date(&mut c.rec, c.through, ring, root, device, recipient, done)?;
            let w = c.rec.writer.as_ref().expect("opened above");
            let manifest = w.finalize(c.reason.as_str(), c.stop_utc)?;
            let c = self.closing.pop_front().expect("front exists");
            done.push(Done::Finalized {
                id: c.rec.id,
                reason: c.reason,
                fragments: manifest.fragments.len(),
                duration_secs: manifest.duration_secs,
            });
        }
        if let Some(p) = &mut self.open {
            bring_up_to_date(
                p,
                None,
                ring,
                &self.root,
                &self.device,
                &self.recipient,
                done,
            )?;
        }
        Ok(())
    }

    /// The ring keeps what recordings still have to claim.
    fn hold(&self, ring: &mut Ring) {
        let through = if self.open.is_some() {
            Some(u64::MAX)
        } else {
            self.closing.back().and_then(|c| c.through)
        };
        ring.hold_through(through);
    }

    fn new_id(&self, now: SystemTime) -> String {
        let t = time::OffsetDateTime::from(now);
        let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
        let base = format!("{}-{}", self.device, t.format(&fmt).unwrap_or_default());
        let taken = |id: &str| {
            self.root.join(id).exists()
                || self.open.as_ref().is_some_and(|p| p.id == id)
                || self.closing.iter().any(|c| c.rec.id == id)
        };
        let mut id = base.clone();
        let mut n = 2;
        while taken(&id) {
            id = format!("{base}-{n}");
            n += 1;
        }
        id
    }
}

/// Creates the recording if needed, claims its fragments (up to `through`, or all), writes its
/// pending markers and stop note.
fn bring_up_to_date(
    p: &mut Pending,
    through: Option<u64>,
    ring: &mut Ring,
    root: &std::path::Path,
    device: &str,
    recipient: &DepartmentPublicKey,
    done: &mut Vec<Done>,
) -> Result<(), StoreError> {
    if p.writer.is_none() {
        p.writer = Some(RecordingWriter::create(
            root,
            &p.id,
            device,
            p.trigger.as_str(),
            recipient,
            p.trigger_utc,
        )?);
        done.push(Done::Opened {
            id: p.id.clone(),
            trigger: p.trigger,
        });
    }
    let w = p.writer.as_mut().expect("created above");
    while let Some(entry) = ring.oldest() {
        if through.is_some_and(|t| entry.seq > t) {
            break;
        }
        let seq = entry.seq;
        let init = ring
            .init(&entry.stream)
            .ok_or(StoreError::NotInRing { seq })?;
        let preroll = p.preroll_through.is_some_and(|t| seq <= t);
        w.claim(entry, &init, preroll)?;
        // Claimed: out of the ring, its key zeroized as the entry drops.
        ring.take(seq)?;
        log::debug!(recording = p.id.as_str(), fragment = seq; "claimed");
    }
    while let Some((label, by, at)) = p.marks.front() {
        let marker = w.mark(label, by.as_str(), *at)?;
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
    Ok(())
}
