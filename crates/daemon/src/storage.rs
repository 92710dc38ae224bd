//! Storage: the ring of sealed pre-roll and the recordings on disk, on a thread of its own.
//!
//! Everything neoflixd writes to the box's storage is written here, off the async runtime, so a
//! slow or failing disk never holds up a decision, a reply or the light. Sealed objects from the
//! capture pipeline go into the [`Ring`]; the conductor's commands (open a recording, claim,
//! mark, stop note, finalize, purge) become the work [`Recordings`] owes and does. Both arrive in
//! order through one bounded inbox ([`ToStorage`]). What the recorder must hear comes back as
//! [`Report`]s (a fragment is in the ring, the recordings' storage failed or works again); what
//! the status shows is published as [`Facts`]. A failure never drops work: it is reported, and
//! the recorder's retry ([`ToStorage::Sync`]) does it later.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use neoflix_recorder::{StopReason, Trigger};
use neoflix_seal::{DataKey, DepartmentPublicKey};
use neoflix_store::Ring;
use tokio::sync::{Notify, mpsc, watch};

use crate::Events;
use crate::recordings::{Done, Recordings};
use crate::systemd::Pulse;

/// At shutdown, how long storage may go on catching up after an outage: systemd waits 30 s
/// (`TimeoutStopSec`) for the whole stop.
const SHUTDOWN_CATCH_UP: Duration = Duration::from_secs(20);

/// What storage receives, in order.
pub enum ToStorage {
    /// A sealed init segment: a capture stream begins.
    Init {
        /// The new stream's id.
        stream: [u8; 16],
        /// Sealed bytes.
        sealed: Vec<u8>,
        /// Its data key.
        key: DataKey,
    },
    /// A sealed fragment.
    Fragment {
        /// Its sequence number.
        seq: u64,
        /// Sealed bytes.
        sealed: Vec<u8>,
        /// Its data key.
        key: DataKey,
        /// Video it holds.
        duration: Duration,
        /// Wall-clock time of its first frame.
        captured: SystemTime,
        /// When its last moment was captured (monotonic).
        ends: Instant,
    },
    /// Open a recording.
    Start {
        /// Its id, decided by the conductor.
        id: String,
        /// What started it.
        trigger: Trigger,
        /// When.
        at: SystemTime,
        /// Fragments up to this one are its pre-roll: the last one the recorder had seen.
        preroll_through: Option<u64>,
    },
    /// Do the storage work the recordings owe (claim what waits in the ring, after a fragment or
    /// as the recorder's retry).
    Sync,
    /// A marker for the open recording.
    Mark {
        /// Its label.
        label: String,
        /// Who added it.
        by: Trigger,
        /// When, by the wall clock.
        at: SystemTime,
        /// When, by this machine's monotonic clock: where it falls in the video.
        at_mono: Instant,
    },
    /// Note in the open recording that a stop was asked for (post-roll running).
    StopRequested {
        /// Why.
        reason: StopReason,
        /// When.
        at: SystemTime,
    },
    /// Close the open recording.
    Finalize {
        /// Why it stopped.
        reason: StopReason,
        /// When.
        at: SystemTime,
        /// Its last fragment: the last one the recorder had seen when it decided.
        through: Option<u64>,
    },
    /// Delete what the ring holds for no recording, and forget its keys (privacy).
    PurgeRing,
    /// About every 100 ms, never more than one waiting ([`TickGate`]): storage is alive, and
    /// catching up after an outage goes on a slice at a time.
    Tick,
    /// Answer [`Report::Drained`] once everything sent before is done.
    Drain,
    /// Catch up (for a while), empty the ring and end.
    Shutdown,
}

/// What storage tells the conductor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// A fragment is in the ring.
    Stored {
        /// Its sequence number.
        seq: u64,
        /// Video in the ring now.
        ring: Duration,
        /// When its last moment was captured.
        ends: Instant,
    },
    /// The recordings' storage work failed; it stays owed.
    Failed {
        /// What failed.
        reason: String,
    },
    /// Every owed storage work is done again, after a failure.
    Recovered,
    /// Everything sent before [`ToStorage::Drain`] is done.
    Drained,
    /// A recording's directory and its whole pre-roll are on disk: from now on a crash costs
    /// it at most the fragment being written.
    Opened {
        /// The recording.
        id: String,
    },
}

/// What the status shows of storage.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// The open recording and the video claimed into it so far.
    pub open: Option<(String, Duration)>,
    /// Recordings finalized since start.
    pub finalized: u64,
    /// The last storage error, until storage works again.
    pub error: Option<String>,
}

/// Lets at most one [`ToStorage::Tick`] wait in storage's inbox: storage that has fallen behind
/// (a slow disk, catching up after an outage) must not find the next command queued behind a
/// pile of ticks, each worth a slice of catching up.
#[derive(Debug, Clone, Default)]
pub struct TickGate(Arc<AtomicBool>);

impl TickGate {
    /// Whether a tick may go now; from now on one counts as waiting.
    pub fn take(&self) -> bool {
        !self.0.swap(true, Ordering::AcqRel)
    }

    /// The waiting tick was handled (or could not be sent).
    pub fn release(&self) {
        self.0.store(false, Ordering::Release);
    }
}

/// What storage needs.
pub struct StorageSettings {
    /// This room box.
    pub device_id: String,
    /// Where recordings go.
    pub recordings_dir: std::path::PathBuf,
    /// The department key data keys are wrapped to.
    pub recipient: DepartmentPublicKey,
    /// Signs each recording's manifest; `None`: recordings are unsigned (the status says so).
    pub signer: Option<Arc<neoflix_store::SigningIdentity>>,
    /// Where fleet events go.
    pub events: Events,
    /// Woken when a recording opens, claims a fragment, gets a marker or is finalized, when
    /// upload is configured.
    pub uplink_wake: Option<Arc<Notify>>,
    /// Shared with the conductor, who sends the ticks.
    pub ticks: TickGate,
}

/// The ring and the recordings, and what storage remembers of its own health.
pub struct Storage {
    device: String,
    ring: Ring,
    recordings: Recordings,
    events: Events,
    uplink_wake: Option<Arc<Notify>>,
    ticks: TickGate,
    /// The last storage error, reported until storage works again.
    error: Option<String>,
    /// The recordings' owed work failed at the last try (and the recorder heard so).
    recordings_failing: bool,
    finalized: u64,
    facts: watch::Sender<Facts>,
    /// Beaten for every message handled, for the watchdog.
    pulse: Pulse,
}

impl Storage {
    /// Storage over `ring` (already opened and wiped).
    pub fn new(
        settings: StorageSettings,
        ring: Ring,
        facts: watch::Sender<Facts>,
        pulse: Pulse,
    ) -> Storage {
        Storage {
            recordings: Recordings::new(
                settings.recordings_dir,
                settings.device_id.clone(),
                settings.recipient,
                settings.signer,
            ),
            device: settings.device_id,
            ring,
            events: settings.events,
            uplink_wake: settings.uplink_wake,
            ticks: settings.ticks,
            error: None,
            recordings_failing: false,
            finalized: 0,
            facts,
            pulse,
        }
    }

    /// Runs storage on a thread of its own until [`ToStorage::Shutdown`] (or until its inbox
    /// closes).
    pub fn spawn(
        mut self,
        mut inbox: mpsc::Receiver<ToStorage>,
        reports: mpsc::Sender<Report>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("neoflix-storage".into())
            .spawn(move || {
                loop {
                    // Behind after an outage: catch up whenever nothing else waits.
                    let msg = if self.recordings.behind() {
                        match inbox.try_recv() {
                            Ok(msg) => msg,
                            Err(mpsc::error::TryRecvError::Empty) => {
                                for r in self.catch_up() {
                                    let _ = reports.blocking_send(r);
                                }
                                continue;
                            }
                            Err(mpsc::error::TryRecvError::Disconnected) => ToStorage::Shutdown,
                        }
                    } else {
                        inbox.blocking_recv().unwrap_or(ToStorage::Shutdown)
                    };
                    let (out, last) = self.step(msg);
                    for r in out {
                        // The conductor always drains its reports; gone means shutting down.
                        let _ = reports.blocking_send(r);
                    }
                    if last {
                        return;
                    }
                }
            })
    }

    /// Handles one message; true when it was the last.
    pub fn step(&mut self, msg: ToStorage) -> (Vec<Report>, bool) {
        self.pulse.beat();
        let last = matches!(msg, ToStorage::Shutdown);
        let out = if last {
            self.shutdown()
        } else {
            self.handle(msg)
        };
        self.publish();
        (out, last)
    }

    /// One slice of catching up, with nothing else to do.
    fn catch_up(&mut self) -> Vec<Report> {
        self.pulse.beat();
        let out = self.sync().into_iter().collect();
        self.publish();
        out
    }

    fn handle(&mut self, msg: ToStorage) -> Vec<Report> {
        let mut out = Vec::new();
        match msg {
            ToStorage::Init {
                stream,
                sealed,
                key,
            } => {
                if let Err(e) = self.ring.begin_stream(stream, &sealed, key) {
                    self.failed(e.to_string());
                }
            }
            ToStorage::Fragment {
                seq,
                sealed,
                key,
                duration,
                captured,
                ends,
            } => match self.ring.push(
                seq,
                &sealed,
                key,
                duration,
                captured,
                ends.checked_sub(duration).unwrap_or(ends),
            ) {
                Ok(evicted) => {
                    if !evicted.is_empty() {
                        log::debug!(fragments = format!("{evicted:?}").as_str(); "evicted from ring, keys zeroized");
                    }
                    if self.ring.out_of_room() {
                        let msg = format!(
                            "ring: its filesystem ({}) is full at {:.0} s of video, less than the pre-roll: give it more room or make ring.max_bytes fit it",
                            self.ring.dir().display(),
                            self.ring.duration().as_secs_f64()
                        );
                        // Once, not at every fragment: the text changes with the seconds.
                        if !self
                            .error
                            .as_deref()
                            .is_some_and(|e| e.starts_with("ring: "))
                        {
                            self.failed(msg);
                        }
                    } else if !self.recordings_failing && self.error.take().is_some() {
                        log::info!(device = self.device.as_str(); "storage works again");
                    }
                    out.push(Report::Stored {
                        seq,
                        ring: self.ring.duration(),
                        ends,
                    });
                }
                Err(e) => self.failed(e.to_string()),
            },
            ToStorage::Start {
                id,
                trigger,
                at,
                preroll_through,
            } => {
                self.recordings
                    .start(id, trigger, at, preroll_through, &mut self.ring);
                out.extend(self.sync());
            }
            ToStorage::Sync => out.extend(self.sync()),
            ToStorage::Mark {
                label,
                by,
                at,
                at_mono,
            } => {
                self.recordings.mark(label, by, at, at_mono);
                out.extend(self.sync());
            }
            ToStorage::StopRequested { reason, at } => {
                self.recordings.stop_requested(reason, at);
                if let Some(id) = self.recordings.open_id() {
                    log::info!(recording = id, reason = reason.as_str(); "stop requested, post-roll running");
                }
                out.extend(self.sync());
            }
            ToStorage::Finalize {
                reason,
                at,
                through,
            } => {
                self.recordings
                    .finalize(reason, at, through, &mut self.ring);
                out.extend(self.sync());
            }
            ToStorage::PurgeRing => {
                if let Err(e) = self.ring.purge() {
                    self.failed(e.to_string());
                }
            }
            ToStorage::Tick => {
                self.ticks.release();
                if self.recordings.behind() {
                    out.extend(self.sync());
                }
            }
            ToStorage::Drain => out.push(Report::Drained),
            ToStorage::Shutdown => out.extend(self.shutdown()),
        }
        out
    }

    /// Still catching up after an outage: finish while systemd waits for us, a slice at a time;
    /// a failure ends it. Then the ring dies with its keys.
    fn shutdown(&mut self) -> Vec<Report> {
        let mut out = Vec::new();
        let stopping = Instant::now();
        while self.recordings.behind() && stopping.elapsed() < SHUTDOWN_CATCH_UP {
            out.extend(self.sync());
        }
        if self.recordings.owes_work() {
            log::error!(device = self.device.as_str();
                "stopping before the recordings storage caught up: what reached the disk is sealed as interrupted at the next start; the rest is lost with its keys");
        }
        // What is left in the ring is pre-roll (or was owed to a recording that storage
        // refused): it dies with its keys.
        self.ring.hold_through(None);
        let _ = self.ring.purge();
        log::info!(device = self.device.as_str(); "storage stopped");
        out
    }

    /// Does the storage work the recordings owe; the outcome is the recorder's to hear.
    fn sync(&mut self) -> Vec<Report> {
        let mut done = Vec::new();
        let claimed_before = self.recordings.open_duration();
        let result = self.recordings.sync(&mut self.ring, &mut done);
        if self.recordings.open_duration() != claimed_before
            && let Some(w) = &self.uplink_wake
        {
            // A fragment is in: the uplink sends it now rather than at its next idle pass.
            w.notify_one();
        }
        let mut out: Vec<Report> = done.into_iter().filter_map(|d| self.announce(d)).collect();
        match result {
            Ok(()) if self.recordings_failing => {
                log::info!(device = self.device.as_str(); "recordings storage works again: nothing was lost");
                self.recordings_failing = false;
                self.error = None;
                out.push(Report::Recovered);
            }
            Ok(()) => {}
            Err(e) => {
                let reason = e.to_string();
                self.failed(reason.clone());
                self.recordings_failing = true;
                out.push(Report::Failed { reason });
            }
        }
        out
    }

    fn failed(&mut self, msg: String) {
        if self.error.is_none() {
            self.events.send(neoflix_mqtt::Event::Fault {
                component: "storage".into(),
                reason: msg.clone(),
            });
        }
        let hint = if msg.starts_with("ring: ") || msg.contains(&*self.ring.dir().to_string_lossy())
        {
            "the pre-roll ring's directory (ring.dir)"
        } else {
            "the recordings disk"
        };
        log::error!(device = self.device.as_str(); "storage: {msg}; free space on {hint} or fix its permissions");
        self.error = Some(msg);
    }

    /// Logs, publishes and hands on what storage work finished; what the conductor is to hear.
    fn announce(&mut self, done: Done) -> Option<Report> {
        let device = self.device.as_str();
        let mut report = None;
        match done {
            Done::Opened { id, trigger } => {
                log::info!(device = device, recording = id.as_str(), trigger = trigger.as_str(); "recording started, pre-roll on disk");
                report = Some(Report::Opened { id });
            }
            Done::Marked { id, marker } => {
                // The label is sealed in the recording; neither the journal nor the broker gets it.
                let labelled = marker.sealed_label.is_some();
                log::info!(recording = id.as_str(), offset_secs = marker.offset_secs, by = marker.by.as_str(), labelled = labelled; "marker");
                self.events.send(neoflix_mqtt::Event::Marker {
                    recording: id,
                    offset_secs: marker.offset_secs,
                    by: marker.by,
                    labelled,
                });
            }
            Done::Finalized {
                id,
                reason,
                fragments,
                duration_secs,
            } => {
                self.finalized += 1;
                log::info!(device = device, recording = id.as_str(), reason = reason.as_str(),
                    fragments = fragments, duration_secs = duration_secs; "recording finalized");
                self.events.send(neoflix_mqtt::Event::RecordingStopped {
                    recording: id,
                    reason: reason.as_str().into(),
                    duration_secs,
                });
            }
        }
        if let Some(w) = &self.uplink_wake {
            w.notify_one();
        }
        report
    }

    fn publish(&self) {
        let facts = Facts {
            open: self.recordings.open_id().map(|id| {
                (
                    id.to_string(),
                    self.recordings.open_duration().unwrap_or_default(),
                )
            }),
            finalized: self.finalized,
            error: self.error.clone(),
        };
        self.facts.send_if_modified(|f| {
            let changed = *f != facts;
            *f = facts;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_one_tick_waits() {
        let gate = TickGate::default();
        let storage = gate.clone();
        assert!(gate.take());
        assert!(!gate.take(), "a second tick while one waits");
        storage.release();
        assert!(gate.take());
    }
}
