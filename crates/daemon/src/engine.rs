//! The engine: one thread that owns the ring, the open recording, the recorder and the capture
//! pipeline, and carries out the recorder's actions. All storage I/O happens here, off the async
//! runtime; everything reaches it through one bounded inbox.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use neoflix_capture::{Capture, CaptureEvent, CaptureSettings, Output};
use neoflix_control::{Reply, Request, Status};
use neoflix_recorder::{Action, Event, Recorder, Trigger};
use neoflix_seal::{DataKey, DepartmentPublicKey, Kind, ObjectId};
use neoflix_store::{RecordingWriter, Ring};
use tokio::sync::{mpsc, oneshot};
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
    /// Woken after every claim and finalize, when upload is configured.
    pub uplink_wake: Option<Arc<tokio::sync::Notify>>,
    /// The upload queue, for the status.
    pub upload_status: Option<Arc<std::sync::Mutex<crate::uplink::UploadStatus>>>,
    /// This device's certificate, for days-to-expiry in the status.
    pub device_cert: Option<PathBuf>,
}

/// The engine's state; lives on its own thread.
pub struct Engine {
    settings: EngineSettings,
    ring: Ring,
    recorder: Option<Recorder>,
    recording: Option<RecordingWriter>,
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
}

fn recording_id(device: &str, now: SystemTime, dir: &std::path::Path) -> String {
    let t = time::OffsetDateTime::from(now);
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let base = format!("{device}-{}", t.format(&fmt).unwrap_or_default());
    let mut id = base.clone();
    let mut n = 2;
    while dir.join(&id).exists() {
        id = format!("{base}-{n}");
        n += 1;
    }
    id
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
        Engine {
            settings,
            ring,
            recorder: Some(recorder),
            recording: None,
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
            r.stop(None);
        }
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
        while let Some(input) = inbox.blocking_recv() {
            if let Input::Shutdown = input {
                break;
            }
            self.handle(input);
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
                Input::Tick | Input::Shutdown => {}
            }
        }
        let at = self.now();
        self.feed(Event::Shutdown { at });
        // What is left in the ring is pre-roll: it dies with its keys.
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
                    if failures == self.storage_failures && self.storage_error.take().is_some() {
                        log::info!(device = self.settings.device_id.as_str(); "storage works again");
                    }
                }
                Err(e) => self.storage_failed(e.to_string()),
            },
            Input::Request(req, by, reply) => {
                let r = self.request(req, by);
                let _ = reply.send(r);
            }
            Input::Tick => self.tick(),
            Input::Shutdown => {}
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
        let at = self.now();
        self.feed(Event::Tick { at });
    }

    fn storage_failed(&mut self, msg: String) {
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
        let recording_before = self.recording.as_ref().map(|r| r.id().to_string());
        let refusals = self.feed(event);
        if let Some(reason) = refusals.into_iter().next() {
            return Reply::error(reason);
        }
        let mut r = Reply::ok();
        r.recording = self
            .recording
            .as_ref()
            .map(|r| r.id().to_string())
            .or(recording_before);
        r
    }

    /// Hands an event to the recorder and carries out its actions; returns refusals.
    fn feed(&mut self, event: Event) -> Vec<String> {
        let recorder = self.recorder.take().expect("recorder is always put back");
        let (recorder, actions) = recorder.handle(event);
        self.recorder = Some(recorder);
        let mut refusals = Vec::new();
        for action in actions {
            if let Action::Refuse { reason } = &action {
                refusals.push(reason.clone());
                continue;
            }
            if let Err(e) = self.act(action) {
                self.storage_failed(e.to_string());
            }
        }
        refusals
    }

    fn act(&mut self, action: Action) -> Result<(), neoflix_store::StoreError> {
        let device = self.settings.device_id.clone();
        match action {
            Action::StartRecording { trigger } => {
                let now = SystemTime::now();
                let id = recording_id(&device, now, &self.settings.recordings_dir);
                let mut w = RecordingWriter::create(
                    &self.settings.recordings_dir,
                    &id,
                    &device,
                    trigger.as_str(),
                    &self.settings.recipient,
                    now,
                )?;
                let preroll = self.ring.take_all();
                let n = preroll.len();
                for entry in preroll {
                    let init = self
                        .ring
                        .init(&entry.stream)
                        .ok_or(neoflix_store::StoreError::NotInRing { seq: entry.seq })?;
                    w.claim(entry, &init, true)?;
                }
                log::info!(device = device.as_str(), recording = id.as_str(), trigger = trigger.as_str(),
                    preroll_fragments = n; "recording started");
                self.recording = Some(w);
                self.wake_uplink();
            }
            Action::Claim { seq } => {
                if self.recording.is_none() {
                    // The recording could not be created (reported then); the fragment stays
                    // in the ring as pre-roll rather than being lost.
                    return Ok(());
                }
                let entry = self.ring.take(seq)?;
                let init = self
                    .ring
                    .init(&entry.stream)
                    .ok_or(neoflix_store::StoreError::NotInRing { seq })?;
                if let Some(w) = self.recording.as_mut() {
                    w.claim(entry, &init, false)?;
                    log::debug!(recording = w.id(), fragment = seq; "claimed");
                }
                self.wake_uplink();
            }
            Action::Mark { by, label } => {
                if let Some(w) = self.recording.as_mut() {
                    let m = w.mark(&label, by.as_str(), SystemTime::now())?;
                    log::info!(recording = w.id(), offset_secs = m.offset_secs, by = by.as_str(), label = label.as_str(); "marker");
                }
            }
            Action::StopRequested { reason } => {
                if let Some(w) = self.recording.as_mut() {
                    w.stop_requested(reason.as_str(), SystemTime::now())?;
                    log::info!(recording = w.id(), reason = reason.as_str(); "stop requested, post-roll running");
                }
            }
            Action::Finalize { reason } => {
                if let Some(w) = self.recording.take() {
                    let id = w.id().to_string();
                    let m = w.finalize(reason.as_str(), SystemTime::now())?;
                    self.finalized += 1;
                    self.wake_uplink();
                    log::info!(device = device.as_str(), recording = id.as_str(), reason = reason.as_str(),
                        fragments = m.fragments.len(), duration_secs = m.duration_secs; "recording finalized");
                }
            }
            Action::PurgeRing => self.ring.purge()?,
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
                log::info!(device = device.as_str(), light = if on { "on" } else { "off" }; "recording light");
            }
            Action::Refuse { .. } => {}
        }
        Ok(())
    }

    fn wake_uplink(&self) {
        if let Some(w) = &self.settings.uplink_wake {
            w.notify_one();
        }
    }

    fn status(&self) -> Status {
        let s = self.recorder.as_ref().expect("recorder present").status();
        Status {
            device_id: self.settings.device_id.clone(),
            state: s.state.to_string(),
            ready: s.ready && self.storage_error.is_none(),
            reason: s
                .reason
                .or_else(|| self.storage_error.as_ref().map(|e| format!("storage: {e}"))),
            preroll_secs: s.preroll.as_millis() as f64 / 1000.0,
            recording: self.recording.as_ref().map(|r| r.id().to_string()),
            recording_secs: self
                .recording
                .as_ref()
                .map(|r| r.duration().as_millis() as f64 / 1000.0),
            encoder: self.encoder.clone(),
            recordings_finalized: self.finalized,
            storage_error: self.storage_error.clone(),
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
            cert_days_left: self
                .settings
                .device_cert
                .as_ref()
                .and_then(|p| std::fs::read(p).ok())
                .and_then(|pem| neoflix_pki::days_left(&pem).ok()),
        }
    }
}
