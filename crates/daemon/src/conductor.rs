//! The conductor: the one task that drives the recorder.
//!
//! Everything that happens reaches it as a typed message: commands from `neoflix ctl` and MQTT
//! and edges of the pedal and the privacy switch ([`Input`]), storage's [`storage::Report`]s,
//! capture supervision's [`capture::Report`]s, and its own 100 ms tick. It turns each into a
//! recorder [`Event`] stamped with when it happened (a pedal edge with the kernel's time of the
//! edge, not the time it was read here), hands it to the pure [`Recorder`], and carries the
//! actions out as messages: storage commands ([`ToStorage`], in order), what capture should do
//! ([`Wanted`], a watch), fleet events. How a storage action went comes back later as an event
//! of its own (`StorageFailed`, `StorageRecovered`), so the recorder hears about every action
//! that failed. After every message it publishes the status ([`status::Publisher`]).
//!
//! It never waits for storage or capture. Storage commands that find storage's inbox full wait in
//! a small outbox and go as room appears, while storage's reports keep being read, so the two can
//! never wait on each other; capture is told through a watch.

use std::collections::{BTreeSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use neoflix_control::{Reply, Request};
use neoflix_recorder::{Action, Event, Recorder, Trigger};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, Interval};

use crate::capture::{self, Wanted};
use crate::status::{self, Environment, Facts, OpenRecording, Published, StatusSettings};
use crate::storage::{self, ToStorage};
use crate::systemd::Pulse;
use crate::uplink::UploadStatus;
use crate::{Devices, Events};

/// How often time passes for the recorder (post-roll, long press, camera watchdog, retries).
const TICK: Duration = Duration::from_millis(100);
/// Storage commands waiting for room in storage's inbox, at most. They wait only while storage
/// is stuck (the watchdog then restarts neoflixd within `WatchdogSec`), and only people make new
/// ones meanwhile: fragments, and so claims, come through storage.
const MAX_OUTBOX: usize = 1024;
/// How long a `start` reply waits for its recording and pre-roll to be on disk. Storage answers
/// in milliseconds; this bounds a reply behind a disk that hangs (which storage then reports).
const START_REPLY_WAIT: Duration = Duration::from_secs(2);
/// `start` replies waiting at most; more are answered at once.
const MAX_WAITING_REPLIES: usize = 16;

/// A `start` reply held until storage has the recording and its pre-roll on disk, so that an
/// answered start survives a crash the moment after.
struct WaitingReply {
    /// The recording storage is to open.
    id: String,
    /// The answer, decided already: only its sending waits.
    reply: Reply,
    /// The asker.
    to: oneshot::Sender<Reply>,
    /// When it began to wait, for [`START_REPLY_WAIT`].
    since: Instant,
}

/// A command from `neoflix ctl` or MQTT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Start a recording.
    Start,
    /// Stop the recording (post-roll applies).
    Stop,
    /// Add a marker to the recording.
    Mark {
        /// Free text.
        label: String,
    },
    /// Switch privacy mode.
    Privacy {
        /// On or off.
        on: bool,
    },
}

impl Command {
    /// The command a control request asks for; `None` for `status`, which the published status
    /// answers without the conductor.
    pub fn of(req: Request) -> Option<Command> {
        match req {
            Request::Start {} => Some(Command::Start),
            Request::Stop {} => Some(Command::Stop),
            Request::Mark { label } => Some(Command::Mark { label }),
            Request::Privacy { on } => Some(Command::Privacy { on }),
            Request::Status {} => None,
        }
    }
}

/// What reaches the conductor from outside.
#[derive(Debug)]
pub enum Input {
    /// A command, with where to send the reply.
    Command {
        /// The command.
        command: Command,
        /// Who sent it.
        by: Trigger,
        /// Where the answer goes.
        reply: oneshot::Sender<Reply>,
    },
    /// The foot pedal (GPIO or USB) went down or up.
    Pedal {
        /// Pressed.
        down: bool,
        /// When the edge happened (the kernel's timestamp, on this clock).
        at: Instant,
    },
    /// The privacy switch moved.
    PrivacySwitch {
        /// Privacy on.
        on: bool,
        /// When the edge happened.
        at: Instant,
    },
    /// An input or output device changed its state (see [`crate::Devices`]).
    DevicesChanged,
    /// Finalize and stop.
    Shutdown,
}

/// Recording ids: `<device>-<UTC trigger time, YYYYMMDDTHHMMSSZ>-<8 random hex digits>`.
///
/// The time is for people; the random part is what keeps an id unique. The names on disk are
/// gone once a recording is delivered, and a clock stepped back (NTP, a box without a
/// real-time clock booting with an old saved time) would otherwise hand out an id the server
/// already holds, which it refuses for ever (docs/upload-protocol.md). A persisted counter
/// would not survive a reflashed SD card; 32 random bits collide only within one clock second,
/// about once in four billion. A clash with a name on disk at start or one given out since
/// draws again.
pub struct RecordingIds {
    device: String,
    taken: BTreeSet<String>,
    random: Box<dyn FnMut() -> u32 + Send>,
}

impl std::fmt::Debug for RecordingIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingIds")
            .field("device", &self.device)
            .field("taken", &self.taken.len())
            .finish_non_exhaustive()
    }
}

/// A new id for a recording whose id the server already holds: its random part drawn again
/// (one of an old form without it gets one), so the time people read stays.
pub fn renamed_id(id: &str, random: u32) -> String {
    let kept = match id.rsplit_once('-') {
        Some((head, tail)) if tail.len() == 8 && tail.bytes().all(|b| b.is_ascii_hexdigit()) => {
            head
        }
        _ => id,
    };
    // Ids are at most 128 characters (docs/upload-protocol.md); counted in characters, so
    // that a directory name that is no id (not ASCII) cannot split one.
    let kept: String = kept.chars().take(128 - 9).collect();
    format!("{kept}-{random:08x}")
}

/// 32 bits from the operating system's generator.
pub fn os_random() -> u32 {
    let mut b = [0u8; 4];
    // getrandom fails only where the kernel has no generator at all; then the clock's
    // nanoseconds still tell two ids of one second apart.
    if getrandom::fill(&mut b).is_err() {
        return SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
    }
    u32::from_be_bytes(b)
}

impl RecordingIds {
    /// Ids for `device`, none of `taken`, their random part from the operating system.
    pub fn new(device: String, taken: impl IntoIterator<Item = String>) -> RecordingIds {
        RecordingIds::with_random(device, taken, os_random)
    }

    /// Ids whose random part comes from `random` (tests).
    pub fn with_random(
        device: String,
        taken: impl IntoIterator<Item = String>,
        random: impl FnMut() -> u32 + Send + 'static,
    ) -> RecordingIds {
        RecordingIds {
            device,
            taken: taken.into_iter().collect(),
            random: Box::new(random),
        }
    }

    /// Ids for `device`, none of the names under `root` (a missing directory holds none).
    pub fn on_disk(device: String, root: &Path) -> std::io::Result<RecordingIds> {
        let taken = match std::fs::read_dir(root) {
            Ok(dir) => dir
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<Vec<_>, _>>()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(RecordingIds::new(device, taken))
    }

    /// A new id for a recording triggered at `now`.
    pub fn next(&mut self, now: SystemTime) -> String {
        let t = time::OffsetDateTime::from(now);
        let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
        let base = format!("{}-{}", self.device, t.format(&fmt).unwrap_or_default());
        loop {
            let id = format!("{base}-{:08x}", (self.random)());
            if self.taken.insert(id.clone()) {
                return id;
            }
        }
    }
}

/// What the conductor needs.
pub struct ConductorSettings {
    /// This room box.
    pub device_id: String,
    /// The recorder's timing.
    pub recorder: neoflix_recorder::Settings,
    /// What the status needs.
    pub status: StatusSettings,
    /// Where recording ids come from.
    pub ids: RecordingIds,
    /// Where fleet events go (MQTT), when configured.
    pub events: Events,
    /// The pedal, foot switch, privacy switch and light, and their state.
    pub devices: Devices,
    /// The upload queue, for the status, when upload is configured.
    pub upload_status: Option<Arc<Mutex<UploadStatus>>>,
}

/// The conductor's channels.
pub struct Links {
    /// Commands and device edges.
    pub inbox: mpsc::Receiver<Input>,
    /// Storage's inbox.
    pub storage: mpsc::Sender<ToStorage>,
    /// Shared with storage: at most one tick waits in its inbox.
    pub storage_ticks: storage::TickGate,
    /// What storage reports.
    pub storage_reports: mpsc::Receiver<storage::Report>,
    /// What storage shows the status.
    pub storage_facts: watch::Receiver<storage::Facts>,
    /// What capture should do.
    pub capture: watch::Sender<Wanted>,
    /// What capture supervision reports.
    pub capture_reports: mpsc::Receiver<capture::Report>,
    /// What capture shows the status.
    pub capture_facts: watch::Receiver<capture::Facts>,
    /// Kernel and file facts.
    pub environment: watch::Receiver<Environment>,
    /// Bumped after every upload pass, when upload is configured: the queue may have changed.
    pub upload_passes: Option<watch::Receiver<u64>>,
    /// Beaten every tick, for the watchdog.
    pub pulse: Pulse,
}

/// The conductor's state; runs as one task.
pub struct Conductor {
    device: String,
    /// Always present but while it handles an event.
    recorder: Option<Recorder>,
    ids: RecordingIds,
    events: Events,
    devices: Devices,
    upload_status: Option<Arc<Mutex<UploadStatus>>>,
    /// The recorder's time zero.
    epoch: Instant,
    /// The open recording, from the moment the recorder decided to start it.
    open: Option<OpenRecording>,
    /// `start` replies waiting for storage (oldest first).
    waiting_replies: VecDeque<WaitingReply>,
    /// The last fragment the recorder has seen, and the video in the ring then: a recording's
    /// pre-roll and last fragment are what the recorder decided on, not what storage has by the
    /// time it gets the command.
    last_seq: Option<u64>,
    last_ring: Duration,
    /// A fragment has been sealed into the ring (READY=1).
    capturing: bool,
    /// `None` from shutdown on: new commands are answered "shutting down".
    inbox: Option<mpsc::Receiver<Input>>,
    storage: mpsc::Sender<ToStorage>,
    storage_ticks: storage::TickGate,
    /// Storage commands waiting for room in storage's inbox, oldest first.
    outbox: VecDeque<ToStorage>,
    storage_reports: mpsc::Receiver<storage::Report>,
    /// Storage's thread still runs.
    storage_open: bool,
    storage_facts: watch::Receiver<storage::Facts>,
    /// Storage's facts can still change.
    storage_facts_open: bool,
    capture: watch::Sender<Wanted>,
    capture_reports: mpsc::Receiver<capture::Report>,
    /// Capture supervision still runs.
    capture_open: bool,
    capture_facts: watch::Receiver<capture::Facts>,
    environment: watch::Receiver<Environment>,
    upload_passes: Option<watch::Receiver<u64>>,
    tick: Interval,
    pulse: Pulse,
    status: status::Publisher,
}

/// One thing that happened.
enum Step {
    Input(Option<Input>),
    Storage(Option<storage::Report>),
    Capture(Option<capture::Report>),
    /// A waiting storage command went out.
    Sent,
    /// What storage or the uplink shows the status changed: publish it now, not at the next tick.
    Changed,
    Tick,
}

async fn recv<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Waits for a change; a closed watch is forgotten.
async fn changed<T>(rx: &mut Option<watch::Receiver<T>>) {
    if let Some(w) = rx
        && w.changed().await.is_ok()
    {
        return;
    }
    *rx = None;
    std::future::pending().await
}

impl Conductor {
    /// A conductor; it starts with the recorder's first state published.
    pub fn new(settings: ConductorSettings, links: Links) -> Conductor {
        let recorder = Recorder::new(settings.recorder);
        let status = status::Publisher::new(
            settings.status,
            settings.events.clone(),
            &Facts {
                recorder: &recorder.status(),
                recording: None,
                storage: &links.storage_facts.borrow(),
                capture: &links.capture_facts.borrow(),
                environment: &links.environment.borrow(),
                devices: &settings.devices.snapshot(),
                upload: None,
                capturing: false,
            },
        );
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Conductor {
            device: settings.device_id,
            recorder: Some(recorder),
            ids: settings.ids,
            events: settings.events,
            devices: settings.devices,
            upload_status: settings.upload_status,
            epoch: Instant::now(),
            open: None,
            waiting_replies: VecDeque::new(),
            last_seq: None,
            last_ring: Duration::ZERO,
            capturing: false,
            inbox: Some(links.inbox),
            storage: links.storage,
            storage_ticks: links.storage_ticks,
            outbox: VecDeque::new(),
            storage_reports: links.storage_reports,
            storage_open: true,
            storage_facts: links.storage_facts,
            storage_facts_open: true,
            capture: links.capture,
            capture_reports: links.capture_reports,
            capture_open: true,
            capture_facts: links.capture_facts,
            environment: links.environment,
            upload_passes: links.upload_passes,
            tick,
            pulse: links.pulse,
            status,
        }
    }

    /// A reader of the published status.
    pub fn status(&self) -> watch::Receiver<Published> {
        self.status.subscribe()
    }

    /// Runs until [`Input::Shutdown`]; then stops capture, lets storage finish what the
    /// pipeline's last output and the recorder's last actions owe, finalizes the open recording
    /// and returns once storage has stopped.
    pub async fn run(mut self) {
        loop {
            match self.next().await {
                Step::Input(None | Some(Input::Shutdown)) => break,
                Step::Input(Some(input)) => self.input(input),
                step => self.background(step),
            }
            self.publish();
        }
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        // Commands from here on are answered "shutting down".
        self.inbox = None;
        self.want(Wanted::Stopped);
        // End of stream makes the muxer flush the fragment in progress; it still belongs to an
        // open recording.
        while self.capture_open {
            let step = self.next().await;
            self.background(step);
            self.publish();
        }
        // Everything the pipeline emitted is in storage's inbox before this.
        self.send_storage(ToStorage::Drain);
        while self.storage_open {
            match self.next().await {
                Step::Storage(Some(storage::Report::Drained)) => break,
                step => self.background(step),
            }
            self.publish();
        }
        let at = self.now();
        self.feed(Event::Shutdown { at });
        self.send_storage(ToStorage::Shutdown);
        while self.storage_open {
            let step = self.next().await;
            self.background(step);
        }
        self.answer_waiting(|_| true);
        self.publish();
    }

    async fn next(&mut self) -> Step {
        tokio::select! {
            biased;
            r = self.storage_reports.recv(), if self.storage_open => Step::Storage(r),
            r = self.capture_reports.recv(), if self.capture_open => Step::Capture(r),
            // Before the tick: an edge read before it is handled before it.
            i = recv(&mut self.inbox) => Step::Input(i),
            permit = self.storage.reserve(), if !self.outbox.is_empty() => {
                match permit {
                    Ok(p) => p.send(self.outbox.pop_front().expect("not empty")),
                    Err(_) => self.outbox.clear(),
                }
                Step::Sent
            }
            r = self.storage_facts.changed(), if self.storage_facts_open => {
                // Closed: storage has stopped; its last reports are still read above.
                self.storage_facts_open = r.is_ok();
                Step::Changed
            }
            _ = changed(&mut self.upload_passes) => Step::Changed,
            _ = self.tick.tick() => Step::Tick,
        }
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::Command { command, by, reply } => {
                let started = command == Command::Start;
                let r = self.command(command, by);
                // Whoever reads the status next sees what this reply says.
                self.publish();
                match r.recording.clone() {
                    Some(id)
                        if started
                            && r.ok
                            && self.storage_open
                            && self.waiting_replies.len() < MAX_WAITING_REPLIES =>
                    {
                        self.waiting_replies.push_back(WaitingReply {
                            id,
                            reply: r,
                            to: reply,
                            since: Instant::now(),
                        });
                    }
                    _ => {
                        let _ = reply.send(r);
                    }
                }
            }
            Input::Pedal { down, at } => {
                let at = at.saturating_duration_since(self.epoch);
                log::debug!(device = self.device.as_str(), down = down; "pedal");
                let event = if down {
                    Event::PedalDown { at }
                } else {
                    Event::PedalUp { at }
                };
                for reason in self.feed(event) {
                    log::warn!(device = self.device.as_str(); "pedal press ignored: {reason}");
                }
            }
            Input::PrivacySwitch { on, at } => {
                let at = at.saturating_duration_since(self.epoch);
                self.feed(Event::Privacy { at, on });
            }
            Input::DevicesChanged | Input::Shutdown => {}
        }
    }

    /// Storage and capture reports, ticks.
    fn background(&mut self, step: Step) {
        let at = self.now();
        match step {
            Step::Storage(Some(storage::Report::Stored { seq, ring, ends })) => {
                self.last_seq = Some(seq);
                self.last_ring = ring;
                self.capturing = true;
                let ends = Instant::from_std(ends).saturating_duration_since(self.epoch);
                self.feed(Event::Fragment {
                    at,
                    seq,
                    ring,
                    ends,
                });
            }
            Step::Storage(Some(storage::Report::Opened { id })) => {
                self.answer_waiting(|w| w.id == id);
            }
            Step::Storage(Some(storage::Report::Failed { reason })) => {
                // The recording goes on in the ring until storage works again; the room hears
                // of the failure from the status, not by a start left unanswered.
                self.answer_waiting(|_| true);
                self.feed(Event::StorageFailed { at, reason });
            }
            Step::Storage(Some(storage::Report::Recovered)) => {
                self.feed(Event::StorageRecovered { at });
            }
            Step::Storage(Some(storage::Report::Drained))
            | Step::Sent
            | Step::Changed
            | Step::Input(_) => {}
            Step::Storage(None) => {
                if self.inbox.is_some() {
                    log::error!(device = self.device.as_str(); "the storage thread has stopped: nothing more can be recorded; restart neoflixd (systemd's watchdog does)");
                }
                self.storage_open = false;
                self.outbox.clear();
                self.answer_waiting(|_| true);
            }
            Step::Capture(Some(capture::Report::Failed { reason })) => {
                self.feed(Event::CameraLost { at, reason });
            }
            Step::Capture(Some(capture::Report::Stopped) | None) => self.capture_open = false,
            Step::Tick => {
                self.pulse.beat();
                self.answer_waiting(|w| w.since.elapsed() >= START_REPLY_WAIT);
                if self.outbox.is_empty()
                    && self.storage_ticks.take()
                    && self.storage.try_send(ToStorage::Tick).is_err()
                {
                    self.storage_ticks.release();
                }
                self.feed(Event::Tick { at });
            }
        }
    }

    /// Sends the held `start` replies that `pick` picks.
    fn answer_waiting(&mut self, pick: impl Fn(&WaitingReply) -> bool) {
        let (go, stay): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.waiting_replies)
            .into_iter()
            .partition(|w| pick(w));
        self.waiting_replies = stay;
        for w in go {
            let _ = w.to.send(w.reply);
        }
    }

    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.epoch)
    }

    fn command(&mut self, command: Command, by: Trigger) -> Reply {
        let at = self.now();
        let event = match command {
            Command::Start => Event::Start { at, by },
            Command::Stop => Event::Stop { at, by },
            Command::Mark { label } => Event::Mark { at, by, label },
            Command::Privacy { on } => Event::Privacy { at, on },
        };
        let before = self.open.as_ref().map(|o| o.id.clone());
        if let Some(reason) = self.feed(event).into_iter().next() {
            return Reply::error(reason);
        }
        let mut r = Reply::ok();
        r.recording = self.open.as_ref().map(|o| o.id.clone()).or(before);
        r
    }

    /// Hands an event to the recorder and carries out its actions; returns its refusals.
    fn feed(&mut self, event: Event) -> Vec<String> {
        let recorder = self.recorder.take().expect("recorder is always put back");
        let (recorder, actions) = recorder.handle(event);
        self.recorder = Some(recorder);
        let mut refusals = Vec::new();
        for action in actions {
            match action {
                Action::Refuse { reason } => refusals.push(reason),
                action => self.act(action),
            }
        }
        refusals
    }

    fn act(&mut self, action: Action) {
        let now = SystemTime::now();
        match action {
            Action::StartRecording { trigger } => {
                let id = self.ids.next(now);
                self.open = Some(OpenRecording {
                    id: id.clone(),
                    started_utc: status::rfc3339(now),
                });
                self.send_storage(ToStorage::Start {
                    id: id.clone(),
                    trigger,
                    at: now,
                    preroll_through: self.last_seq,
                });
                self.events.send(neoflix_mqtt::Event::RecordingStarted {
                    recording: id,
                    trigger: trigger.as_str().into(),
                    preroll_secs: self.last_ring.as_secs_f64(),
                });
            }
            Action::Claim { .. } | Action::Retry => self.send_storage(ToStorage::Sync),
            Action::Mark { by, label } => {
                self.send_storage(ToStorage::Mark {
                    label,
                    by,
                    at: now,
                    at_mono: std::time::Instant::now(),
                });
            }
            Action::StopRequested { reason } => {
                self.send_storage(ToStorage::StopRequested { reason, at: now });
            }
            Action::Finalize { reason } => {
                self.send_storage(ToStorage::Finalize {
                    reason,
                    at: now,
                    through: self.last_seq,
                });
                self.open = None;
            }
            Action::PurgeRing => self.send_storage(ToStorage::PurgeRing),
            Action::PauseCapture => {
                self.want(Wanted::Paused);
                log::info!(device = self.device.as_str(); "privacy mode on: capture stopped, ring purged");
            }
            Action::ResumeCapture => {
                self.want(Wanted::Running);
                log::info!(device = self.device.as_str(); "privacy mode off: capture resumes");
            }
            Action::Light { on } => {
                log::debug!(device = self.device.as_str(), light = if on { "on" } else { "off" }; "recording light");
            }
            Action::Refuse { .. } => {}
        }
    }

    /// Tells capture what to do; a stop for shutdown is final.
    fn want(&mut self, wanted: Wanted) {
        self.capture.send_if_modified(|w| {
            let changed = *w != wanted && *w != Wanted::Stopped;
            if changed {
                *w = wanted;
            }
            changed
        });
    }

    /// Sends a command to storage now, or as soon as its inbox has room, after those waiting.
    fn send_storage(&mut self, msg: ToStorage) {
        if !self.storage_open {
            return;
        }
        // One claim of everything owed is as good as several.
        if matches!(msg, ToStorage::Sync) && matches!(self.outbox.back(), Some(ToStorage::Sync)) {
            return;
        }
        let msg = if self.outbox.is_empty() {
            match self.storage.try_send(msg) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(msg)) => msg,
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        } else {
            msg
        };
        if self.outbox.len() >= MAX_OUTBOX {
            log::error!(device = self.device.as_str(); "storage has not taken a command for long: one dropped (the watchdog restarts a stuck neoflixd)");
            return;
        }
        self.outbox.push_back(msg);
    }

    fn publish(&mut self) {
        let recorder = self.recorder.as_ref().expect("recorder present").status();
        let storage = self.storage_facts.borrow().clone();
        let capture = self.capture_facts.borrow().clone();
        let environment = self.environment.borrow().clone();
        let devices = self.devices.snapshot();
        let upload = self
            .upload_status
            .as_ref()
            .map(|u| u.lock().expect("status lock").clone());
        self.status.publish(&Facts {
            recorder: &recorder,
            recording: self.open.as_ref(),
            storage: &storage,
            capture: &capture,
            environment: &environment,
            devices: &devices,
            upload: upload.as_ref(),
            capturing: self.capturing,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neoflix_recorder::StopReason;
    use neoflix_seal::{Kind, ObjectId, seal};

    fn recorder_settings() -> neoflix_recorder::Settings {
        neoflix_recorder::Settings {
            preroll: Duration::from_secs(2),
            long_press: Duration::from_secs(2),
            max_duration: Duration::from_secs(600),
            post_roll: Duration::ZERO,
            camera_timeout: Duration::from_secs(5),
        }
    }

    /// A conductor and the other ends of its channels.
    struct Rig {
        inbox: mpsc::Sender<Input>,
        storage_tx: mpsc::Sender<ToStorage>,
        storage_rx: Option<mpsc::Receiver<ToStorage>>,
        reports: mpsc::Sender<storage::Report>,
        storage_facts: Option<watch::Sender<storage::Facts>>,
        ticks: storage::TickGate,
        status: watch::Receiver<Published>,
        _capture: (
            watch::Receiver<Wanted>,
            mpsc::Sender<capture::Report>,
            watch::Sender<capture::Facts>,
            watch::Sender<Environment>,
        ),
    }

    fn rig() -> Rig {
        let (inbox, inbox_rx) = mpsc::channel(64);
        let (storage_tx, storage_rx) = mpsc::channel(64);
        let (reports, reports_rx) = mpsc::channel(64);
        let (storage_facts, storage_facts_rx) = watch::channel(storage::Facts::default());
        let (wanted_tx, wanted_rx) = watch::channel(Wanted::Running);
        let (capture_reports, capture_reports_rx) = mpsc::channel(8);
        let (capture_facts, capture_facts_rx) = watch::channel(capture::Facts::default());
        let ticks = storage::TickGate::default();
        let (environment, environment_rx) = watch::channel(Environment {
            free_bytes: None,
            clock_synced: true,
            cert_days_left: None,
        });
        let conductor = Conductor::new(
            ConductorSettings {
                device_id: "room-1".into(),
                recorder: recorder_settings(),
                status: StatusSettings {
                    device_id: "room-1".into(),
                    full_recording_bytes: 1,
                    readiness: neoflix_config::Readiness {
                        require_clock_sync: true,
                        cert_min_days: 14,
                    },
                    signer: None,
                },
                ids: RecordingIds::new("room-1".into(), []),
                events: Events::default(),
                devices: Devices::default(),
                upload_status: None,
            },
            Links {
                inbox: inbox_rx,
                storage: storage_tx.clone(),
                storage_ticks: ticks.clone(),
                storage_reports: reports_rx,
                storage_facts: storage_facts_rx,
                capture: wanted_tx,
                capture_reports: capture_reports_rx,
                capture_facts: capture_facts_rx,
                environment: environment_rx,
                upload_passes: None,
                pulse: Pulse::default(),
            },
        );
        let status = conductor.status();
        tokio::spawn(conductor.run());
        Rig {
            inbox,
            storage_tx,
            storage_rx: Some(storage_rx),
            reports,
            storage_facts: Some(storage_facts),
            ticks,
            status,
            _capture: (wanted_rx, capture_reports, capture_facts, environment),
        }
    }

    impl Rig {
        async fn command(&self, command: Command) -> Reply {
            let (reply, rx) = oneshot::channel();
            self.inbox
                .send(Input::Command {
                    command,
                    by: Trigger::Control,
                    reply,
                })
                .await
                .unwrap();
            rx.await.unwrap()
        }

        async fn wait_for(&mut self, what: &str, cond: impl Fn(&neoflix_control::Status) -> bool) {
            let waited = matches!(
                tokio::time::timeout(
                    Duration::from_secs(60),
                    self.status.wait_for(|p| cond(&p.status)),
                )
                .await,
                Ok(Ok(_))
            );
            assert!(waited, "no {what}: {:?}", self.status.borrow().status);
        }
    }

    /// A storage that only notes what it was asked to do, but ticks, and opens a recording at
    /// once.
    fn note_commands(
        mut rx: mpsc::Receiver<ToStorage>,
        reports: mpsc::Sender<storage::Report>,
    ) -> Arc<Mutex<Vec<String>>> {
        let noted = Arc::new(Mutex::new(Vec::new()));
        let n = noted.clone();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                let what = match m {
                    ToStorage::Tick => continue,
                    ToStorage::Start { trigger, id, .. } => {
                        let _ = reports.send(storage::Report::Opened { id }).await;
                        format!("start by {}", trigger.as_str())
                    }
                    ToStorage::Mark { by, .. } => format!("mark by {}", by.as_str()),
                    ToStorage::Finalize { reason, .. } => format!("finalize: {}", reason.as_str()),
                    ToStorage::Sync => "sync".into(),
                    ToStorage::StopRequested { .. } => "stop requested".into(),
                    _ => "other".into(),
                };
                n.lock().unwrap().push(what);
            }
        });
        noted
    }

    #[tokio::test(start_paused = true)]
    async fn a_press_is_measured_from_edge_to_edge_not_from_when_it_was_read() {
        let mut rig = rig();
        let storage = note_commands(rig.storage_rx.take().unwrap(), rig.reports.clone());
        assert!(rig.command(Command::Start).await.ok);

        // A short press whose two edges reach the conductor 3 s late (read late, or the
        // conductor was busy): still a short press, a marker.
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let edge = |down, at| Input::Pedal { down, at };
        rig.inbox.try_send(edge(true, t0)).unwrap();
        rig.inbox
            .try_send(edge(false, t0 + Duration::from_millis(500)))
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(rig.status.borrow().status.recording.is_some());

        // A press held 2.5 s on the pedal, read equally late: a stop, though both edges were
        // read within a moment of each other.
        let t1 = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        rig.inbox.try_send(edge(true, t1)).unwrap();
        rig.inbox
            .try_send(edge(false, t1 + Duration::from_millis(2500)))
            .unwrap();
        // This rig has no camera: the fragment in progress is waited for until the camera
        // timeout.
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(
            *storage.lock().unwrap(),
            vec![
                "start by control",
                "mark by pedal",
                "stop requested",
                "finalize: pedal"
            ]
        );
        assert!(rig.status.borrow().status.recording.is_none());
    }

    /// The camera, as storage sees it: sealed objects of one stream.
    struct Camera {
        tx: mpsc::Sender<ToStorage>,
        seq: u64,
    }

    const STREAM: [u8; 16] = [9; 16];

    impl Camera {
        async fn start(tx: mpsc::Sender<ToStorage>) -> Camera {
            let id = ObjectId {
                stream: STREAM,
                seq: 0,
                kind: Kind::Init,
            };
            let (key, sealed) = seal(&id, b"init").unwrap();
            tx.send(ToStorage::Init {
                stream: STREAM,
                sealed,
                key,
            })
            .await
            .unwrap();
            Camera { tx, seq: 0 }
        }

        /// One second of video, one fragment.
        async fn second(&mut self) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let id = ObjectId {
                stream: STREAM,
                seq: self.seq,
                kind: Kind::Fragment,
            };
            let (key, sealed) = seal(&id, &[self.seq as u8; 64]).unwrap();
            self.tx
                .send(ToStorage::Fragment {
                    seq: self.seq,
                    sealed,
                    key,
                    duration: Duration::from_secs(1),
                    captured: SystemTime::now(),
                    // The test's clock, which may be paused.
                    ends: Instant::now().into_std(),
                })
                .await
                .unwrap();
            self.seq += 1;
        }
    }

    /// The real storage over `dir` (recordings in `dir/recordings`), on the test's runtime
    /// instead of a thread of its own: the timing is the conductor's and the recorder's, the disk
    /// work the real one. It takes `start_delay` before a recording's start (a slow disk). Returns
    /// when each sync was asked for.
    fn real_storage(rig: &mut Rig, dir: &Path, start_delay: Duration) -> Arc<Mutex<Vec<Instant>>> {
        let (ring, _) =
            neoflix_store::Ring::open(&dir.join("ring"), Duration::from_secs(2), 1 << 30).unwrap();
        // Any public key: nothing is opened here.
        let dept = neoflix_seal::DepartmentPublicKey::from_bytes(&[9; 32]).unwrap();
        let mut storage = storage::Storage::new(
            storage::StorageSettings {
                device_id: "room-1".into(),
                recordings_dir: dir.join("recordings"),
                recipient: dept,
                signer: None,
                events: Events::default(),
                uplink_wake: None,
                ticks: rig.ticks.clone(),
            },
            ring,
            rig.storage_facts.take().unwrap(),
            Pulse::default(),
        );
        let syncs = Arc::new(Mutex::new(Vec::new()));
        let (mut inbox, reports, seen) = (
            rig.storage_rx.take().unwrap(),
            rig.reports.clone(),
            syncs.clone(),
        );
        tokio::spawn(async move {
            while let Some(m) = inbox.recv().await {
                match m {
                    ToStorage::Sync => seen.lock().unwrap().push(Instant::now()),
                    ToStorage::Start { .. } => tokio::time::sleep(start_delay).await,
                    _ => {}
                }
                let (out, last) = storage.step(m);
                for r in out {
                    reports.send(r).await.unwrap();
                }
                if last {
                    return;
                }
            }
        });
        syncs
    }

    /// Regression (found by scripts/chaos): `start` was answered as soon as the recorder
    /// decided, before storage had the recording on disk; a crash just after the answer lost
    /// the recording, or its pre-roll, whose keys were still only in memory.
    #[tokio::test(start_paused = true)]
    async fn an_answered_start_has_its_recording_and_preroll_on_disk() {
        let t = tempfile::tempdir().unwrap();
        let mut rig = rig();
        real_storage(&mut rig, t.path(), Duration::from_millis(300));
        let mut camera = Camera::start(rig.storage_tx.clone()).await;
        for _ in 0..3 {
            camera.second().await;
        }
        rig.wait_for("ready", |s| s.ready).await;
        let started = rig.command(Command::Start).await;
        assert!(started.ok, "{started:?}");
        let dir = t.path().join("recordings").join(started.recording.unwrap());
        // What a crash now leaves: recovery seals it as interrupted from the journal.
        let journal = std::fs::read_to_string(dir.join("journal.jsonl"))
            .expect("the recording is on disk when start is answered");
        let fragments = journal.matches("\"event\":\"fragment\"").count();
        assert!(fragments >= 2, "the 2 s pre-roll is in: {journal}");
    }

    /// The failed start of a recording was once a silently lost recording. Now storage's
    /// failure goes to the recorder, which reports it and asks for retries with a growing
    /// back-off (0.5 s, 1 s, 2 s, 4 s, ...); the fragments wait in the ring meanwhile, and the
    /// retry after the disk came back claims them all.
    #[tokio::test(start_paused = true)]
    async fn a_recording_whose_storage_fails_is_retried_with_backoff_and_loses_nothing() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("recordings");
        // A file where the directory should be: refused even to root.
        std::fs::write(&root, b"not a directory").unwrap();
        let mut rig = rig();
        let syncs = real_storage(&mut rig, t.path(), Duration::ZERO);

        let mut camera = Camera::start(rig.storage_tx.clone()).await;
        for _ in 0..3 {
            camera.second().await;
        }
        rig.wait_for("ready", |s| s.ready).await;
        // Between two fragments, so that no claim of one crosses the first failure.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = rig.command(Command::Start).await;
        assert!(
            started.ok,
            "a start is never refused for storage: {started:?}"
        );
        let id = started.recording.unwrap();
        let failed_at = Instant::now();
        rig.wait_for("a storage fault", |s| {
            s.state == neoflix_control::State::Fault
        })
        .await;
        let s = rig.status.borrow().status.clone();
        assert!(!s.ready && s.recording.as_deref() == Some(id.as_str()));
        assert!(
            s.reason.unwrap().starts_with("storage: "),
            "{:?}",
            s.reasons
        );

        // Video goes on for 7 s; the disk comes back after 5.
        for n in 0..7 {
            camera.second().await;
            if n == 4 {
                std::fs::remove_file(&root).unwrap();
            }
        }
        rig.wait_for("recording again", |s| {
            s.state == neoflix_control::State::Recording && s.ready
        })
        .await;
        let retries: Vec<Duration> = syncs
            .lock()
            .unwrap()
            .iter()
            .map(|t| *t - failed_at)
            .take(4)
            .collect();
        assert_eq!(
            retries,
            [500, 1500, 3500, 7500].map(Duration::from_millis),
            "retries after the failure"
        );

        camera.second().await;
        // The recorder has seen it before it is told to stop.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(rig.command(Command::Stop).await.ok);
        rig.wait_for("the recording finalized", |s| s.recordings_finalized == 1)
            .await;
        let v = neoflix_format::verify(&root.join(&id)).expect("the recording verifies");
        assert_eq!(
            v.manifest.stop_reason,
            StopReason::Requested(Trigger::Control).as_str()
        );
        let seqs: Vec<u64> = v.fragment_ids.iter().map(|f| f.seq).collect();
        // The pre-roll, then every fragment sealed after the trigger, through the stop.
        assert_eq!(seqs.last(), Some(&10), "{seqs:?}");
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        assert!(seqs[0] <= 1, "the pre-roll is in: {seqs:?}");
    }

    #[test]
    fn recording_ids_never_clash() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        // A generator that repeats itself: the id on disk and the one given out are drawn
        // again.
        let mut draws = [7u32, 9, 7, 9, 11, 7].into_iter();
        let mut ids = RecordingIds::with_random(
            "room-1".into(),
            ["room-1-20270115T080000Z-00000007".to_string()],
            move || draws.next().unwrap(),
        );
        assert_eq!(ids.next(now), "room-1-20270115T080000Z-00000009");
        assert_eq!(ids.next(now), "room-1-20270115T080000Z-0000000b");
        assert_eq!(
            ids.next(now + Duration::from_secs(1)),
            "room-1-20270115T080001Z-00000007"
        );
    }

    #[test]
    fn a_renamed_id_keeps_its_time_and_draws_its_random_part_again() {
        assert_eq!(
            renamed_id("room-1-20270115T080000Z-0000000b", 0xdead_beef),
            "room-1-20270115T080000Z-deadbeef"
        );
        // Ids from before the random part.
        assert_eq!(
            renamed_id("room-1-20270115T080000Z", 1),
            "room-1-20270115T080000Z-00000001"
        );
        assert_eq!(
            renamed_id("room-1-20270115T080000Z-2", 1),
            "room-1-20270115T080000Z-2-00000001"
        );
        let long = "r".repeat(128);
        let renamed = renamed_id(&long, 1);
        assert_eq!(renamed.len(), 128);
        assert!(neoflix_format::protocol::valid_recording_id(&renamed));
    }

    /// Issue 15: the clock stepped back to a second whose recording was delivered (its
    /// directory gone) gave that recording's id again, which the server refuses for ever.
    #[test]
    fn a_clock_stepped_back_does_not_give_a_delivered_recordings_id_again() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut ids = RecordingIds::new("room-1".into(), []);
        let delivered = ids.next(at);
        // Delivered and deleted from the box; the daemon restarts with nothing on disk, and
        // the clock says the same second again.
        let mut after_restart = RecordingIds::new("room-1".into(), []);
        let again = after_restart.next(at);
        assert_ne!(again, delivered);
        assert!(again.starts_with("room-1-20270115T080000Z-"), "{again}");
        assert!(
            neoflix_format::protocol::valid_recording_id(&again),
            "{again}"
        );
    }
}
