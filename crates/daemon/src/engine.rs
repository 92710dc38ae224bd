//! The engine: one thread that owns the ring, the open recording, the recorder and the capture
//! pipeline, and carries out the recorder's actions. All storage I/O happens here, off the async
//! runtime; everything reaches it through one bounded inbox.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use neoflix_capture::{Capture, CaptureEvent, CaptureSettings, Output};
use neoflix_control::{Reply, Request, Status};
use neoflix_recorder::{Action, Event, Phase, Recorder, Trigger};
use neoflix_seal::{DataKey, DepartmentPublicKey, Kind, ObjectId};
use neoflix_store::Ring;
use tokio::sync::{mpsc, oneshot, watch};

use crate::health::Pattern;
use crate::recordings::{Done, Recordings};
use zeroize::Zeroize;

/// What the engine receives.
pub enum Input {
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
    },
    /// A control request, with where to send the reply.
    Request(Request, Trigger, oneshot::Sender<Reply>),
    /// The foot pedal (GPIO or USB) went down or up.
    Pedal {
        /// Pressed.
        down: bool,
    },
    /// The privacy switch moved.
    PrivacySwitch {
        /// Privacy on.
        on: bool,
    },
    /// An input or output device changed its state (see [`crate::Devices`]).
    DevicesChanged,
    /// About every 100 ms.
    Tick,
    /// Finalize and stop.
    Shutdown,
}

/// What the engine needs to run.
pub struct EngineSettings {
    /// This room box.
    pub device_id: String,
    /// The pipeline.
    pub capture: CaptureSettings,
    /// The recorder's timing.
    pub recorder: neoflix_recorder::Settings,
    /// Where recordings go.
    pub recordings_dir: PathBuf,
    /// The department key data keys are wrapped to.
    pub recipient: DepartmentPublicKey,
    /// Signs each recording's manifest; `None`: recordings are unsigned (the status says so).
    pub signer: Option<Arc<neoflix_store::SigningIdentity>>,
    /// Woken after every claim and finalize, when upload is configured.
    pub uplink_wake: Option<Arc<tokio::sync::Notify>>,
    /// The upload queue, for the status.
    pub upload_status: Option<Arc<std::sync::Mutex<crate::uplink::UploadStatus>>>,
    /// This device's certificate, for days-to-expiry in the status.
    pub device_cert: Option<PathBuf>,
    /// Where fleet events go (MQTT), when configured.
    pub events: crate::Events,
    /// Bumped whenever what the status says changes in substance.
    pub changes: watch::Sender<u64>,
    /// What the recording light shows.
    pub light: watch::Sender<Pattern>,
    /// The pedal, foot switch, privacy switch and light, and their state.
    pub devices: crate::Devices,
    /// What `ready` demands beyond the recorder.
    pub readiness: neoflix_config::Readiness,
    /// Bytes one recording of the maximum duration needs.
    pub full_recording_bytes: u64,
    /// systemd's watchdog period, when the service has one (`WatchdogSec=`).
    pub watchdog: Option<Duration>,
}

/// Facts from the kernel and files, refreshed every few seconds.
#[derive(Debug, Default)]
struct Environment {
    checked: Option<Instant>,
    free_bytes: Option<u64>,
    clock_synced: bool,
    cert_days_left: Option<i64>,
    camera_fps: f64,
    frames_at_check: u64,
}

/// What a status change is judged by: the substance, not the counters.
#[derive(Debug, PartialEq)]
struct Summary {
    state: Phase,
    reasons: Vec<String>,
    recording: Option<String>,
    upload_pending: Option<usize>,
}

/// The engine's state; lives on its own thread.
pub struct Engine {
    settings: EngineSettings,
    ring: Ring,
    recorder: Option<Recorder>,
    recordings: Recordings,
    capture: Option<Running>,
    /// The inbox's sending side, handed to each new capture pipeline.
    inbox: mpsc::Sender<Input>,
    /// Fragment sequence numbers stay unique across pipeline restarts.
    seq: Arc<AtomicU64>,
    epoch: Instant,
    /// When to try starting the pipeline again after a failure, and the next back-off.
    restart: Option<Instant>,
    /// Wait before the next restart; doubles per failure, back to 1 s once video flows.
    backoff: Duration,
    paused: bool,
    encoder: String,
    finalized: u64,
    /// The last storage error, reported in the status until a fragment goes through cleanly.
    storage_error: Option<String>,
    storage_failures: u64,
    started: Instant,
    env: Environment,
    /// Frames counted by pipelines that have since stopped.
    frames_before: neoflix_capture::FrameStats,
    recording_started_utc: Option<String>,
    summary: Option<Summary>,
    generation: u64,
    camera_fault_reported: bool,
    /// READY=1 went to systemd (after the first sealed fragment).
    notified_ready: bool,
    /// Frames counted at the last check, and when that count last grew.
    frames_seen: (u64, Instant),
    last_ping: Option<Instant>,
}

fn utc(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A running pipeline and the flag that tells its callback to give up waiting for the inbox.
struct Running {
    capture: Capture,
    stopping: Arc<AtomicBool>,
}

impl Running {
    /// Stops the pipeline, after draining its last fragment for up to `drain`. The flag goes up
    /// first: the streaming thread may be waiting for room in the inbox, which this (engine)
    /// thread would otherwise never make.
    fn stop(self, drain: Option<Duration>) {
        self.stopping.store(true, Ordering::Relaxed);
        match drain {
            Some(d) => self.capture.stop(d),
            None => drop(self.capture),
        }
    }
}

/// The capture callback: seals each output in memory, then sends it on. Plaintext never leaves
/// this function except as ciphertext.
fn sealing_sink(
    inbox: mpsc::Sender<Input>,
    seq: Arc<AtomicU64>,
    stopping: Arc<AtomicBool>,
) -> impl FnMut(Output) -> Result<(), String> + Send + 'static {
    let mut stream: Option<[u8; 16]> = None;
    move |out| {
        let input = match out {
            Output::Init { mut data } => {
                let mut id = [0u8; 16];
                getrandom::fill(&mut id).map_err(|e| e.to_string())?;
                stream = Some(id);
                let sealed = neoflix_seal::seal(
                    &ObjectId {
                        stream: id,
                        seq: 0,
                        kind: Kind::Init,
                    },
                    &data,
                );
                data.zeroize();
                let (key, sealed) = sealed.map_err(|e| e.to_string())?;
                Input::Init {
                    stream: id,
                    sealed,
                    key,
                }
            }
            Output::Fragment {
                mut data, duration, ..
            } => {
                let stream = stream.ok_or("fragment before the init segment")?;
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let sealed = neoflix_seal::seal(
                    &ObjectId {
                        stream,
                        seq: n,
                        kind: Kind::Fragment,
                    },
                    &data,
                );
                data.zeroize();
                let (key, sealed) = sealed.map_err(|e| e.to_string())?;
                let captured = SystemTime::now()
                    .checked_sub(duration)
                    .unwrap_or_else(SystemTime::now);
                Input::Fragment {
                    seq: n,
                    sealed,
                    key,
                    duration,
                    captured,
                }
            }
        };
        // Waits when the engine is behind: back-pressure on the pipeline instead of an
        // unbounded queue, until the engine stops this pipeline.
        let mut input = input;
        loop {
            match inbox.try_send(input) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err("neoflixd is shutting down".into());
                }
                Err(mpsc::error::TrySendError::Full(back)) => {
                    if stopping.load(Ordering::Relaxed) {
                        return Err("capture is stopping".into());
                    }
                    input = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
}

impl Engine {
    /// Creates the engine. `ring` is already opened (and wiped).
    pub fn new(settings: EngineSettings, ring: Ring, inbox: mpsc::Sender<Input>) -> Self {
        let recorder = Recorder::new(settings.recorder.clone());
        let recordings = Recordings::new(
            settings.recordings_dir.clone(),
            settings.device_id.clone(),
            settings.recipient.clone(),
            settings.signer.clone(),
        );
        Engine {
            settings,
            ring,
            recorder: Some(recorder),
            recordings,
            capture: None,
            inbox,
            seq: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
            restart: Some(Instant::now()),
            backoff: Duration::from_secs(1),
            paused: false,
            encoder: String::new(),
            finalized: 0,
            storage_error: None,
            storage_failures: 0,
            started: Instant::now(),
            env: Environment::default(),
            frames_before: Default::default(),
            recording_started_utc: None,
            summary: None,
            generation: 0,
            camera_fault_reported: false,
            notified_ready: false,
            frames_seen: (0, Instant::now()),
            last_ping: None,
        }
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn start_capture(&mut self) {
        let stopping = Arc::new(AtomicBool::new(false));
        let sink = sealing_sink(self.inbox.clone(), self.seq.clone(), stopping.clone());
        match Capture::start(&self.settings.capture, sink) {
            Ok(c) => {
                self.encoder = c.encoder().factory().to_string();
                log::info!(device = self.settings.device_id.as_str(), encoder = self.encoder.as_str(),
                    width = self.settings.capture.width, height = self.settings.capture.height,
                    fps = self.settings.capture.fps; "capture started");
                self.capture = Some(Running {
                    capture: c,
                    stopping,
                });
                self.restart = None;
            }
            Err(e) => self.capture_failed(e.to_string()),
        }
    }

    /// Stops the pipeline at once (failure, privacy): its last partial fragment is not wanted.
    fn stop_capture(&mut self) {
        if let Some(r) = self.capture.take() {
            self.keep_frame_stats(&r);
            r.stop(None);
        }
    }

    fn keep_frame_stats(&mut self, r: &Running) {
        let s = r.capture.frame_stats();
        self.frames_before.frames += s.frames;
        self.frames_before.dropped += s.dropped;
    }

    fn frame_stats(&self) -> neoflix_capture::FrameStats {
        let mut s = self.frames_before;
        if let Some(r) = &self.capture {
            let now = r.capture.frame_stats();
            s.frames += now.frames;
            s.dropped += now.dropped;
        }
        s
    }

    fn capture_failed(&mut self, reason: String) {
        self.stop_capture();
        let backoff = self.backoff;
        log::error!(device = self.settings.device_id.as_str(), retry_secs = backoff.as_secs();
            "capture failed: {reason}; check the camera cable and capture.device; retrying");
        self.restart = Some(Instant::now() + backoff);
        self.backoff = (backoff * 2).min(Duration::from_secs(30));
        let at = self.now();
        self.feed(Event::CameraLost { at, reason });
    }

    /// Runs until shutdown; returns when the open recording is finalized.
    pub fn run(mut self, mut inbox: mpsc::Receiver<Input>) {
        self.refresh_environment();
        while let Some(input) = inbox.blocking_recv() {
            if let Input::Shutdown = input {
                break;
            }
            self.handle(input);
            self.publish_changes();
        }
        // End of stream makes the muxer flush the fragment in progress; it still belongs to an
        // open recording, so take it (and anything else queued) before finalizing.
        if let Some(r) = self.capture.take() {
            r.stop(Some(Duration::from_secs(2)));
        }
        while let Ok(input) = inbox.try_recv() {
            match input {
                Input::Init { .. } | Input::Fragment { .. } => self.handle(input),
                Input::Request(_, _, reply) => {
                    let _ = reply.send(Reply::error("neoflixd is shutting down"));
                }
                Input::Tick
                | Input::Shutdown
                | Input::Pedal { .. }
                | Input::PrivacySwitch { .. }
                | Input::DevicesChanged => {}
            }
        }
        let at = self.now();
        self.feed(Event::Shutdown { at });
        // Still catching up after an outage: finish while systemd waits for us (it waits 30 s,
        // TimeoutStopSec), a slice at a time; a failure ends it.
        let stopping = Instant::now();
        while self.recordings.behind() && stopping.elapsed() < Duration::from_secs(20) {
            if let Some(outcome) = self.sync_recordings() {
                self.feed(outcome);
            }
        }
        self.publish_changes();
        if self.recordings.owes_work() {
            log::error!(device = self.settings.device_id.as_str();
                "stopping before the recordings storage caught up: what reached the disk is sealed as interrupted at the next start; the rest is lost with its keys");
        }
        // What is left in the ring is pre-roll (or was owed to a recording that storage refused):
        // it dies with its keys.
        self.ring.hold_through(None);
        let _ = self.ring.purge();
        log::info!(device = self.settings.device_id.as_str(); "stopped");
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Init {
                stream,
                sealed,
                key,
            } => {
                if let Err(e) = self.ring.begin_stream(stream, &sealed, key) {
                    self.storage_failed(e.to_string());
                }
            }
            Input::Fragment {
                seq,
                sealed,
                key,
                duration,
                captured,
            } => match self.ring.push(seq, &sealed, key, duration, captured) {
                Ok(evicted) => {
                    if !evicted.is_empty() {
                        log::debug!(fragments = format!("{evicted:?}").as_str(); "evicted from ring, keys zeroized");
                    }
                    self.backoff = Duration::from_secs(1);
                    let (at, ring) = (self.now(), self.ring.duration());
                    let failures = self.storage_failures;
                    self.feed(Event::Fragment { at, seq, ring });
                    if !self.notified_ready {
                        // systemd's "started" means what the room needs: video is being sealed.
                        let _ = sd_notify::notify(&[
                            sd_notify::NotifyState::Ready,
                            sd_notify::NotifyState::Status("capturing: first fragment sealed"),
                        ]);
                        self.notified_ready = true;
                    }
                    let recordings_failing = self
                        .recorder
                        .as_ref()
                        .is_some_and(Recorder::storage_failing);
                    if failures == self.storage_failures
                        && !recordings_failing
                        && self.storage_error.take().is_some()
                    {
                        log::info!(device = self.settings.device_id.as_str(); "storage works again");
                    }
                }
                Err(e) => self.storage_failed(e.to_string()),
            },
            Input::Request(req, by, reply) => {
                let r = self.request(req, by);
                let _ = reply.send(r);
            }
            Input::Pedal { down } => {
                let at = self.now();
                log::debug!(device = self.settings.device_id.as_str(), down = down; "pedal");
                let event = if down {
                    Event::PedalDown { at }
                } else {
                    Event::PedalUp { at }
                };
                for reason in self.feed(event) {
                    log::warn!(device = self.settings.device_id.as_str(); "pedal press ignored: {reason}");
                }
            }
            Input::PrivacySwitch { on } => {
                let at = self.now();
                self.feed(Event::Privacy { at, on });
            }
            Input::Tick => self.tick(),
            Input::DevicesChanged | Input::Shutdown => {}
        }
    }

    /// Refreshes the kernel facts every few seconds (cheap, but not worth doing at 10 Hz).
    fn refresh_environment(&mut self) {
        let due = self
            .env
            .checked
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
        if !due {
            return;
        }
        let frames = self.frame_stats().frames;
        if let Some(t) = self.env.checked {
            let secs = t.elapsed().as_secs_f64();
            self.env.camera_fps =
                (frames.saturating_sub(self.env.frames_at_check)) as f64 / secs.max(0.001);
        }
        self.env.frames_at_check = frames;
        self.env.checked = Some(Instant::now());
        self.env.free_bytes = crate::health::free_bytes(&self.settings.recordings_dir);
        self.env.clock_synced = crate::health::clock_synced();
        self.env.cert_days_left = self
            .settings
            .device_cert
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|pem| neoflix_pki::days_left(&pem).ok());
    }

    /// Every reason the room is not ready, most urgent first.
    fn reasons(&self) -> Vec<String> {
        let s = self.recorder.as_ref().expect("recorder present").status();
        let devices = self.settings.devices.snapshot();
        let upload_error = self
            .settings
            .upload_status
            .as_ref()
            .and_then(|u| u.lock().expect("status lock").last_error.clone());
        crate::health::reasons(&crate::health::Facts {
            recorder_ready: s.ready,
            recorder_reason: s.reason.as_deref(),
            storage_error: self.storage_error.as_deref(),
            free_bytes: self.env.free_bytes,
            needed_bytes: self.settings.full_recording_bytes,
            clock_synced: self.env.clock_synced,
            require_clock_sync: self.settings.readiness.require_clock_sync,
            cert_days_left: self.env.cert_days_left,
            cert_min_days: self.settings.readiness.cert_min_days.into(),
            upload_error: upload_error.as_deref(),
            devices: &devices,
        })
    }

    /// Tells the status publisher and the light when something that matters changed.
    fn publish_changes(&mut self) {
        let s = self.recorder.as_ref().expect("recorder present").status();
        let reasons = self.reasons();
        let privacy = s.state == Phase::Privacy;
        let pattern =
            crate::health::light_pattern(s.recording, s.ready, reasons.is_empty(), privacy);
        self.settings.light.send_if_modified(|p| {
            let changed = *p != pattern;
            *p = pattern;
            changed
        });
        // One fault event when the camera stops delivering (pipeline error or silent stall),
        // not one per retry.
        let camera = s.reason.as_ref().filter(|r| r.starts_with("camera"));
        match (camera, self.camera_fault_reported) {
            (Some(r), false) => {
                self.settings.events.send(neoflix_mqtt::Event::Fault {
                    component: "camera".into(),
                    reason: r.trim_start_matches("camera: ").to_string(),
                });
                self.camera_fault_reported = true;
            }
            (None, true) => self.camera_fault_reported = false,
            _ => {}
        }
        let summary = Summary {
            state: s.state,
            reasons,
            recording: self.recordings.open_id().map(str::to_string),
            upload_pending: self
                .settings
                .upload_status
                .as_ref()
                .map(|u| u.lock().expect("status lock").recordings_pending),
        };
        if self.summary.as_ref() != Some(&summary) {
            if let Some(old) = &self.summary
                && old.reasons != summary.reasons
            {
                log::info!(device = self.settings.device_id.as_str(), ready = summary.reasons.is_empty(),
                    reasons = summary.reasons.join("; ").as_str(); "readiness changed");
            }
            let text = match (&summary.recording, summary.reasons.first()) {
                (Some(id), _) => format!("recording {id}"),
                (None, None) => "ready".to_string(),
                (None, Some(why)) => format!("not ready: {why}"),
            };
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&text)]);
            self.summary = Some(summary);
            self.generation += 1;
            self.settings.changes.send_replace(self.generation);
        }
    }

    fn tick(&mut self) {
        if let Some(r) = &self.capture
            && let Some(ev) = r.capture.next_event(Duration::ZERO)
        {
            let reason = match ev {
                CaptureEvent::Error(e) => e.to_string(),
                CaptureEvent::Eos => "the camera stream ended".to_string(),
            };
            self.capture_failed(reason);
        }
        if !self.paused
            && self.capture.is_none()
            && let Some(when) = self.restart
            && Instant::now() >= when
        {
            self.start_capture();
        }
        self.refresh_environment();
        self.watchdog();
        // Catching up after a storage outage goes on a slice at a time.
        if self.recordings.behind()
            && let Some(outcome) = self.sync_recordings()
        {
            self.feed(outcome);
        }
        let at = self.now();
        self.feed(Event::Tick { at });
    }

    /// Pings systemd's watchdog only while frames flow out of the camera (or capture is paused
    /// on purpose, in privacy mode): a stalled camera or pipeline makes systemd restart us.
    fn watchdog(&mut self) {
        let Some(period) = self.settings.watchdog else {
            return;
        };
        let frames = self.frame_stats().frames;
        if frames != self.frames_seen.0 {
            self.frames_seen = (frames, Instant::now());
        }
        let flowing = self.frames_seen.1.elapsed() < Duration::from_secs(2);
        let due = self
            .last_ping
            .is_none_or(|t| t.elapsed() >= (period / 4).max(Duration::from_millis(500)));
        if (flowing || self.paused) && self.notified_ready && due {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            self.last_ping = Some(Instant::now());
        }
    }

    fn storage_failed(&mut self, msg: String) {
        if self.storage_error.is_none() {
            self.settings.events.send(neoflix_mqtt::Event::Fault {
                component: "storage".into(),
                reason: msg.clone(),
            });
        }
        log::error!(device = self.settings.device_id.as_str(); "storage: {msg}; free space on the recordings disk or fix its permissions");
        self.storage_error = Some(msg);
        self.storage_failures += 1;
    }

    fn request(&mut self, req: Request, by: Trigger) -> Reply {
        let at = self.now();
        let event = match req {
            Request::Status {} => {
                let mut r = Reply::ok();
                r.status = Some(self.status());
                return r;
            }
            Request::Start {} => Event::Start { at, by },
            Request::Stop {} => Event::Stop { at, by },
            Request::Mark { label } => Event::Mark { at, by, label },
            Request::Privacy { on } => Event::Privacy { at, on },
        };
        let recording_before = self.recordings.open_id().map(str::to_string);
        let refusals = self.feed(event);
        if let Some(reason) = refusals.into_iter().next() {
            return Reply::error(reason);
        }
        let mut r = Reply::ok();
        r.recording = self
            .recordings
            .open_id()
            .map(str::to_string)
            .or(recording_before);
        r
    }

    /// Hands an event to the recorder and carries out its actions, then the outcomes of those
    /// actions, in turn; returns refusals.
    fn feed(&mut self, event: Event) -> Vec<String> {
        let mut events = std::collections::VecDeque::from([event]);
        let mut refusals = Vec::new();
        while let Some(event) = events.pop_front() {
            let recorder = self.recorder.take().expect("recorder is always put back");
            let (recorder, actions) = recorder.handle(event);
            self.recorder = Some(recorder);
            for action in actions {
                if let Action::Refuse { reason } = &action {
                    refusals.push(reason.clone());
                    continue;
                }
                events.extend(self.act(action));
            }
        }
        refusals
    }

    /// Carries out one action; what the recorder must hear about it comes back.
    fn act(&mut self, action: Action) -> Option<Event> {
        let device = self.settings.device_id.clone();
        let now = SystemTime::now();
        match action {
            Action::StartRecording { trigger } => {
                let preroll_secs = self.ring.duration().as_secs_f64();
                let id = self.recordings.start(trigger, now, &mut self.ring);
                self.recording_started_utc = Some(utc(now));
                self.settings
                    .events
                    .send(neoflix_mqtt::Event::RecordingStarted {
                        recording: id,
                        trigger: trigger.as_str().into(),
                        preroll_secs,
                    });
                return self.sync_recordings();
            }
            Action::Claim { .. } | Action::Retry => return self.sync_recordings(),
            Action::Mark { by, label } => {
                self.recordings.mark(label, by, now);
                return self.sync_recordings();
            }
            Action::StopRequested { reason } => {
                self.recordings.stop_requested(reason, now);
                if let Some(id) = self.recordings.open_id() {
                    log::info!(recording = id, reason = reason.as_str(); "stop requested, post-roll running");
                }
                return self.sync_recordings();
            }
            Action::Finalize { reason } => {
                self.recordings.finalize(reason, now, &mut self.ring);
                self.recording_started_utc = None;
                return self.sync_recordings();
            }
            Action::PurgeRing => {
                if let Err(e) = self.ring.purge() {
                    self.storage_failed(e.to_string());
                }
            }
            Action::PauseCapture => {
                self.paused = true;
                self.stop_capture();
                log::info!(device = device.as_str(); "privacy mode on: capture stopped, ring purged");
            }
            Action::ResumeCapture => {
                self.paused = false;
                self.restart = Some(Instant::now());
                log::info!(device = device.as_str(); "privacy mode off: capture resumes");
            }
            Action::Light { on } => {
                log::debug!(device = device.as_str(), light = if on { "on" } else { "off" }; "recording light");
            }
            Action::Refuse { .. } => {}
        }
        None
    }

    /// Does the storage work the recordings owe; the outcome is the recorder's to hear.
    fn sync_recordings(&mut self) -> Option<Event> {
        let mut done = Vec::new();
        let result = self.recordings.sync(&mut self.ring, &mut done);
        for d in done {
            self.announce(d);
        }
        let failing = self
            .recorder
            .as_ref()
            .is_some_and(Recorder::storage_failing);
        let at = self.now();
        match result {
            Ok(()) if failing => {
                log::info!(device = self.settings.device_id.as_str(); "recordings storage works again: nothing was lost");
                self.storage_error = None;
                Some(Event::StorageRecovered { at })
            }
            Ok(()) => None,
            Err(e) => {
                let reason = e.to_string();
                self.storage_failed(reason.clone());
                Some(Event::StorageFailed { at, reason })
            }
        }
    }

    /// Logs, publishes and hands on what storage work finished.
    fn announce(&mut self, done: Done) {
        let device = self.settings.device_id.as_str();
        match done {
            Done::Opened { id, trigger } => {
                log::info!(device = device, recording = id.as_str(), trigger = trigger.as_str(); "recording started");
            }
            Done::Marked { id, marker } => {
                log::info!(recording = id.as_str(), offset_secs = marker.offset_secs, by = marker.by.as_str(), label = marker.label.as_str(); "marker");
                self.settings.events.send(neoflix_mqtt::Event::Marker {
                    recording: id,
                    offset_secs: marker.offset_secs,
                    by: marker.by,
                    label: marker.label,
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
                self.settings
                    .events
                    .send(neoflix_mqtt::Event::RecordingStopped {
                        recording: id,
                        reason: reason.as_str().into(),
                        duration_secs,
                    });
            }
        }
        self.wake_uplink();
    }

    fn wake_uplink(&self) {
        if let Some(w) = &self.settings.uplink_wake {
            w.notify_one();
        }
    }

    fn status(&self) -> Status {
        let s = self.recorder.as_ref().expect("recorder present").status();
        let reasons = self.reasons();
        let frames = self.frame_stats();
        Status {
            device_id: self.settings.device_id.clone(),
            state: crate::control::wire_state(s.state),
            ready: reasons.is_empty(),
            reason: reasons.first().cloned(),
            privacy: s.state == Phase::Privacy,
            reasons,
            preroll_secs: s.preroll.as_millis() as f64 / 1000.0,
            recording: self.recordings.open_id().map(str::to_string),
            recording_secs: self
                .recordings
                .open_duration()
                .map(|d| d.as_millis() as f64 / 1000.0),
            recording_started_utc: self
                .recordings
                .open_id()
                .and(self.recording_started_utc.clone()),
            encoder: self.encoder.clone(),
            recordings_finalized: self.finalized,
            storage_error: self.storage_error.clone(),
            storage_free_bytes: self.env.free_bytes,
            full_recording_fits: self
                .env
                .free_bytes
                .is_none_or(|f| f >= self.settings.full_recording_bytes),
            camera_fps: (self.env.camera_fps * 10.0).round() / 10.0,
            camera_dropped_frames: frames.dropped,
            clock_synced: self.env.clock_synced,
            inputs: self.settings.devices.snapshot(),
            upload: self.settings.upload_status.as_ref().map(|s| {
                let s = s.lock().expect("status lock");
                neoflix_control::UploadQueue {
                    recordings: s.recordings_pending,
                    bytes: s.bytes_pending,
                    last_success_utc: s.last_success_utc.clone(),
                    last_error: s.last_error.clone(),
                    delivered: s.delivered,
                }
            }),
            cert_days_left: self.env.cert_days_left,
            signer: self.settings.signer.as_ref().map(|s| s.name().to_string()),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            time_utc: utc(SystemTime::now()),
        }
    }
}
