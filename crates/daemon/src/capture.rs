//! Capture supervision: keeps one pipeline running while the recorder wants video, restarts it
//! with back-off when it fails, and seals everything it emits before it leaves the streaming
//! thread.
//!
//! [`supervise`] is a task on the runtime; the pipeline's blocking calls (build and start, stop)
//! run in `spawn_blocking`. It hears what the conductor wants through a watch ([`Wanted`]:
//! running, paused for privacy, stopped at shutdown), so the conductor never waits for it; it
//! reports each failure and the final stop as a [`Report`] and publishes [`Facts`] (encoder,
//! frames, frame rate, paused) for the status and the watchdog. Sealed output goes straight
//! into storage's inbox ([`Sink`]), with back-pressure on the streaming thread rather than an
//! unbounded queue.
//!
//! Three parts may fail without costing the video. A microphone that is missing or fails
//! ([`Part::Audio`]) makes the pipeline start again at once without sound; the microphone is
//! probed every [`AUDIO_RETRY`] and taken back with a restart only while no recording is open, so
//! a recording never has a gap for it. A second camera that fails or is unplugged
//! ([`Part::SecondView`]) is handled the same way ([`VIEW_RETRY`]), its pipeline's last fragment
//! let out first. A hardware encoder that fails [`ENCODER_ATTEMPTS`] times
//! in a row ([`Part::Encoder`]) is replaced by x264 until the daemon restarts, unless the config
//! names the encoder. Both show in [`Facts`], so the status says so.
//!
//! The pipeline is behind [`Launcher`] and [`Pipeline`] ([`Gstreamer`] in production), so the
//! restart logic is unit-tested with a fake one and paused time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

pub use neoflix_capture::Part;
use std::path::PathBuf;

use neoflix_capture::{
    AudioStats, Capture, CaptureEvent, CaptureSettings, Encoder, FrameStats, InputFormat, Output,
    Source,
};
use neoflix_seal::{Kind, ObjectId};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use zeroize::Zeroize;

use crate::storage::ToStorage;
use crate::systemd::Pulse;

/// How often the running pipeline is checked for a failure and its frames counted.
const POLL: Duration = Duration::from_millis(100);
/// How long the fragment in progress may take to come out of the muxer at shutdown.
const DRAIN: Duration = Duration::from_secs(2);
/// How often supervision looks whether the camera is plugged in.
const PRESENCE_EVERY: Duration = Duration::from_millis(300);
/// The frame rate in the status is measured over this long.
const FPS_WINDOW: Duration = Duration::from_secs(5);
/// A missing microphone is probed this often. After each failure in the pipeline the first
/// probe waits twice as long as the last time, up to [`AUDIO_RETRY_MAX`]: one that answers a
/// probe but fails in the pipeline would otherwise cost the pre-roll two restarts every 30 s.
pub const AUDIO_RETRY: Duration = Duration::from_secs(30);
/// The longest wait between probes of a missing microphone.
pub const AUDIO_RETRY_MAX: Duration = Duration::from_secs(600);
/// Sound that has worked this long makes the next failure wait [`AUDIO_RETRY`] again.
const AUDIO_SETTLED: Duration = Duration::from_secs(300);
/// How long a probe may wait for the microphone's first samples.
const AUDIO_PROBE: Duration = Duration::from_secs(2);
/// Sound that has not arrived for this long is not flowing.
const AUDIO_STALL: Duration = Duration::from_secs(2);
/// A second camera that failed (in the pipeline, or unplugged) is tried again after this, then
/// twice as long after each further failure, up to [`AUDIO_RETRY_MAX`]; one still unplugged
/// then, as soon as it is back. Either way only while no recording is open.
pub const VIEW_RETRY: Duration = Duration::from_secs(30);
/// Consecutive failures of a probed hardware encoder before x264 takes over.
pub const ENCODER_ATTEMPTS: u32 = 3;

/// What the conductor wants from capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// Video, always: a failed pipeline is restarted.
    Running,
    /// No video (privacy mode): the pipeline is stopped at once, its last fragment not wanted.
    Paused,
    /// Shutdown: the pipeline is stopped after its last fragment came out, then supervision ends.
    Stopped,
}

/// What capture supervision tells the conductor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The pipeline failed (or could not start); a restart is scheduled.
    Failed {
        /// What failed, for the status and the log.
        reason: String,
    },
    /// Stopped for good, as wanted; everything the pipeline emitted is in storage's inbox.
    Stopped,
}

/// Why a pipeline failed, and which part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What failed, for the status and the log.
    pub reason: String,
    /// Camera, encoder, sound or output.
    pub part: Part,
}

impl Failure {
    /// A failure of `part`.
    pub fn new(part: Part, reason: impl Into<String>) -> Failure {
        Failure {
            reason: reason.into(),
            part,
        }
    }
}

/// How the next pipeline is to be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// With the configured sound (false: the microphone is missing, video alone).
    pub audio: bool,
    /// With the configured second camera (false: it is missing, the first view alone).
    pub second: bool,
    /// With x264 in place of the probed hardware encoder.
    pub fallback: bool,
}

/// The sound, as the status shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioFacts {
    /// The configured device (`test` for the test tone).
    pub device: String,
    /// Samples arrived lately.
    pub flowing: bool,
    /// Peak level over the last second, dBFS.
    pub peak_dbfs: Option<f64>,
    /// Why there is no sound, while the microphone is missing.
    pub missing: Option<String>,
}

/// The second camera, as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewFacts {
    /// The configured device (`test` for a test source).
    pub device: String,
    /// Why it is not recorded, while it is missing.
    pub missing: Option<String>,
}

/// What capture supervision shows the status and the watchdog.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// The H.264 encoder of the last pipeline started.
    pub encoder: String,
    /// Why x264 replaced the hardware encoder, once it did.
    pub encoder_fallback: Option<String>,
    /// The sound, when configured.
    pub audio: Option<AudioFacts>,
    /// The second camera, when configured.
    pub second: Option<ViewFacts>,
    /// Frames delivered by the camera since start, across pipelines (the watchdog's evidence).
    pub frames: u64,
    /// Frames the camera skipped since start.
    pub dropped: u64,
    /// Frames per second lately.
    pub fps: f64,
    /// Capture is stopped on purpose (privacy mode).
    pub paused: bool,
    /// The length of the last fragment, seconds (0 before the first).
    pub fragment_secs: f64,
}

/// The wait before restarting a failed pipeline: 1 s, doubling to 30 s, back to 1 s once a
/// pipeline delivered video.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    /// The first wait.
    pub const FIRST: Duration = Duration::from_secs(1);
    /// The longest wait: a camera plugged back in is used within this.
    pub const MAX: Duration = Duration::from_secs(30);

    /// A failure: the wait before the next start.
    pub fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(Self::MAX);
        wait
    }

    /// Video flowed: the next failure waits [`Backoff::FIRST`] again.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Self::FIRST }
    }
}

/// Where one pipeline's output goes: sealed, into storage's inbox.
pub struct Sink {
    storage: mpsc::Sender<ToStorage>,
    /// Fragment sequence numbers stay unique across pipeline restarts.
    seq: Arc<AtomicU64>,
    /// Raised before the pipeline is stopped: a full inbox then means give up, not wait.
    stopping: Arc<AtomicBool>,
    /// Fragments this pipeline delivered; video flows once there is one.
    delivered: Arc<AtomicU64>,
    /// The length of the last fragment, ms: the keyframe interval decides it when a camera's
    /// own H.264 is passed through.
    fragment_ms: Arc<AtomicU64>,
}

impl Sink {
    fn new(storage: mpsc::Sender<ToStorage>, seq: Arc<AtomicU64>) -> Sink {
        Sink {
            storage,
            seq,
            stopping: Arc::default(),
            delivered: Arc::default(),
            fragment_ms: Arc::default(),
        }
    }

    /// The capture callback: seals each output in memory, then sends it on. Plaintext never
    /// leaves this function except as ciphertext.
    pub fn into_callback(self) -> impl FnMut(Output) -> Result<(), String> + Send + 'static {
        let mut stream: Option<[u8; 16]> = None;
        move |out| {
            let fragment = matches!(out, Output::Fragment { .. });
            let msg = match out {
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
                    ToStorage::Init {
                        stream: id,
                        sealed,
                        key,
                    }
                }
                Output::Fragment {
                    mut data,
                    duration,
                    ends,
                    ..
                } => {
                    let stream = stream.ok_or("fragment before the init segment")?;
                    let n = self.seq.fetch_add(1, Ordering::Relaxed);
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
                    self.fragment_ms
                        .store(duration.as_millis() as u64, Ordering::Relaxed);
                    // The same moment as `ends - duration`, on the wall clock: both clocks read
                    // together here, so a fragment sealed late (the pipeline held back by
                    // storage) is not taken for a step of the clock.
                    let (wall, mono) = (SystemTime::now(), std::time::Instant::now());
                    let captured = wall
                        .checked_sub(mono.saturating_duration_since(ends) + duration)
                        .unwrap_or(wall);
                    ToStorage::Fragment {
                        seq: n,
                        sealed,
                        key,
                        duration,
                        captured,
                        ends,
                    }
                }
            };
            // Waits when storage is behind: back-pressure on the pipeline instead of an
            // unbounded queue, until supervision stops this pipeline.
            let mut msg = msg;
            loop {
                match self.storage.try_send(msg) {
                    Ok(()) => {
                        if fragment {
                            self.delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        return Ok(());
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        return Err("neoflixd is shutting down".into());
                    }
                    Err(mpsc::error::TrySendError::Full(back)) => {
                        if self.stopping.load(Ordering::Relaxed) {
                            return Err("capture is stopping".into());
                        }
                        msg = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        }
    }
}

/// A running pipeline, as supervision sees it.
pub trait Pipeline: Send + 'static {
    /// The encoder in use (its GStreamer factory name).
    fn encoder(&self) -> String;
    /// Frames delivered and dropped by the camera so far.
    fn frame_stats(&self) -> FrameStats;
    /// The sound's meter, when this pipeline has sound.
    fn audio(&self) -> Option<AudioStats>;
    /// Why the pipeline stopped working, if it did. Never waits.
    fn failure(&self) -> Option<Failure>;
    /// Stops it, first letting the fragment in progress out for up to `drain`. Blocks.
    fn stop(self, drain: Option<Duration>);
}

/// Starts pipelines.
pub trait Launcher: Send + 'static {
    /// What it starts.
    type Pipeline: Pipeline;
    /// Builds and starts a pipeline whose output goes to `sink`. Blocks.
    fn launch(&mut self, sink: Sink, attempt: Attempt) -> Result<Self::Pipeline, Failure>;
    /// The configured sound device, if sound is configured.
    fn audio_device(&self) -> Option<String>;
    /// Whether the microphone delivers samples now. Blocks for up to a few seconds.
    fn probe_audio(&mut self) -> Result<(), String>;
    /// Whether the camera is plugged in now; `None` for a source that cannot be unplugged.
    /// Cheap (a `stat`, or a walk of `/dev` and sysfs for a serial number): asked a few times
    /// a second.
    fn camera_present(&self) -> Option<bool>;
    /// The encoder a failing one may be replaced with: `Some` only when the last launch used a
    /// hardware encoder that was probed, not named in the config.
    fn fallback_encoder(&self) -> Option<String>;
    /// The configured second camera, if one is configured.
    fn second_device(&self) -> Option<String>;
    /// Whether the second camera is plugged in now; `None` for a source that cannot be
    /// unplugged (or none configured). Cheap, as [`Launcher::camera_present`].
    fn second_present(&self) -> Option<bool>;
}

/// How a V4L2 camera is found and set up at each start of capture (so after every re-plug).
#[derive(Debug, Clone)]
pub struct CameraChoice {
    /// The configured device: a stable name (`/dev/v4l/by-id/...`) or a node.
    pub device: PathBuf,
    /// Or the camera with this USB serial number.
    pub serial: Option<String>,
    /// What to ask of it.
    pub wanted: neoflix_camera::Wanted,
    /// Controls to set.
    pub controls: Vec<neoflix_camera::ControlSetting>,
}

impl CameraChoice {
    /// Finds the camera, chooses its mode for `size` at `settings`' rate, sets its controls and
    /// returns the source to build the pipeline from. Blocks (a few ioctls).
    fn prepare(&self, settings: &CaptureSettings, size: (u32, u32)) -> Result<Source, Failure> {
        let (width, height) = size;
        let camera_failure = |reason: String| Failure::new(Part::Camera, reason);
        let node = match &self.serial {
            Some(serial) => neoflix_camera::by_serial(serial)
                .map_err(|e| camera_failure(format!("missing: {e}")))?,
            None => self.device.clone(),
        };
        if !node.exists() {
            return Err(camera_failure(format!(
                "missing: {} is not there (unplugged? neoflix camera list shows the cameras)",
                node.display()
            )));
        }
        let camera = neoflix_camera::describe(&node).map_err(|e| camera_failure(e.to_string()))?;
        let mode =
            neoflix_camera::mode::choose(&camera.formats, self.wanted, width, height, settings.fps)
                .map_err(|e| {
                    camera_failure(format!("{} ({}): {e}", node.display(), camera.card))
                })?;
        log::info!(device = node.display().to_string().as_str(), card = camera.card.as_str(),
            format = mode.fourcc.as_str(), width = width, height = height, fps = mode.fps;
            "camera mode chosen");
        if mode.kind == neoflix_camera::Kind::H264 {
            // Passed through, its keyframes are the camera's: ask for one per fragment.
            let frames = settings.fps * settings.fragment_secs;
            match neoflix_camera::set_keyframe_interval(&camera.path, frames) {
                Ok(Some(set)) => {
                    log::info!(device = node.display().to_string().as_str(), frames = set;
                    "camera keyframe interval set")
                }
                Ok(None) => log::warn!(device = node.display().to_string().as_str();
                    "the camera offers no keyframe interval control: fragments follow its own keyframes (the status shows their length)"),
                Err(e) => {
                    log::warn!(device = node.display().to_string().as_str(); "camera keyframe interval not set: {e}")
                }
            }
        }
        // One by one: a control this camera lacks costs only itself. The picture matters more
        // than its tuning: the camera records with what it has.
        let mut set = Vec::new();
        for control in &self.controls {
            match neoflix_camera::set_controls(&camera.path, std::slice::from_ref(control)) {
                Ok(done) => set.extend(done.iter().map(|(n, v)| format!("{n}={v}"))),
                Err(e) => log::warn!(device = node.display().to_string().as_str();
                    "camera control not set: {e}; check the camera's controls in the config against neoflix camera list"),
            }
        }
        if !set.is_empty() {
            log::info!(device = node.display().to_string().as_str(), controls = set.join(" ").as_str(); "camera controls set");
        }
        Ok(Source::V4l2 {
            device: camera.path,
            format: match mode.kind {
                neoflix_camera::Kind::Mjpeg => InputFormat::Mjpeg,
                neoflix_camera::Kind::H264 => InputFormat::H264,
                _ => InputFormat::Raw,
            },
        })
    }

    /// Whether the camera is there now (its node, or a device with its serial number).
    fn present(&self) -> bool {
        match &self.serial {
            Some(serial) => neoflix_camera::serial_present(serial),
            None => self.device.exists(),
        }
    }
}

/// The real pipeline: GStreamer, through `neoflix-capture`.
#[derive(Debug, Clone)]
pub struct Gstreamer {
    settings: CaptureSettings,
    /// The V4L2 camera, when the source is one.
    camera: Option<CameraChoice>,
    /// The second camera, when it is a V4L2 one.
    second: Option<CameraChoice>,
    /// The encoder the last launch probed, when the config leaves it to the probe.
    probed: Option<Encoder>,
}

impl Gstreamer {
    /// Pipelines built from `settings`, from the cameras `camera` and `second` find.
    pub fn new(
        settings: CaptureSettings,
        camera: Option<CameraChoice>,
        second: Option<CameraChoice>,
    ) -> Gstreamer {
        Gstreamer {
            settings,
            camera,
            second,
            probed: None,
        }
    }
}

impl Launcher for Gstreamer {
    type Pipeline = Capture;

    fn launch(&mut self, sink: Sink, attempt: Attempt) -> Result<Capture, Failure> {
        let mut settings = self.settings.clone();
        if let Some(camera) = &self.camera {
            settings.source = camera.prepare(&settings, (settings.width, settings.height))?;
        }
        if !attempt.audio {
            settings.audio = None;
        }
        if !attempt.second {
            settings.second = None;
        }
        if let Some(camera) = &self.second
            && let Some(size) = settings.second.as_ref().map(|v| (v.width, v.height))
        {
            let source = camera
                .prepare(&settings, size)
                .map_err(|f| Failure::new(Part::SecondView, f.reason))?;
            if let Some(view) = settings.second.as_mut() {
                view.source = source;
            }
        }
        if attempt.fallback {
            settings.encoder = Some(Encoder::X264);
        } else if settings.encoder.is_none() {
            self.probed = neoflix_capture::probe_encoder(None).ok();
        }
        Capture::start(&settings, sink.into_callback()).map_err(|e| {
            log::debug!("capture start failed: {e}");
            Failure::new(e.part(), e.summary())
        })
    }

    fn audio_device(&self) -> Option<String> {
        self.settings.audio.as_ref().map(|a| a.device_name())
    }

    fn probe_audio(&mut self) -> Result<(), String> {
        let Some(audio) = &self.settings.audio else {
            return Ok(());
        };
        neoflix_capture::probe_audio(audio, AUDIO_PROBE).map_err(|e| e.summary())
    }

    fn camera_present(&self) -> Option<bool> {
        self.camera.as_ref().map(CameraChoice::present)
    }

    fn fallback_encoder(&self) -> Option<String> {
        match &self.probed {
            Some(Encoder::NvV4l2 | Encoder::V4l2) => Some(Encoder::X264.factory().to_string()),
            _ => None,
        }
    }

    fn second_device(&self) -> Option<String> {
        self.settings.second.as_ref()?;
        Some(match &self.second {
            Some(c) => match &c.serial {
                Some(serial) => format!("serial {serial}"),
                None => c.device.display().to_string(),
            },
            None => "test".into(),
        })
    }

    fn second_present(&self) -> Option<bool> {
        self.second.as_ref().map(CameraChoice::present)
    }
}

impl Pipeline for Capture {
    fn encoder(&self) -> String {
        Capture::encoder(self).factory().to_string()
    }

    fn frame_stats(&self) -> FrameStats {
        Capture::frame_stats(self)
    }

    fn audio(&self) -> Option<AudioStats> {
        self.audio_stats()
    }

    fn failure(&self) -> Option<Failure> {
        match self.next_event(Duration::ZERO)? {
            CaptureEvent::Error(e) => {
                log::debug!("capture failed: {e}");
                Some(Failure::new(e.part(), e.summary()))
            }
            CaptureEvent::Eos => Some(Failure::new(Part::Camera, "the camera stream ended")),
        }
    }

    fn stop(self, drain: Option<Duration>) {
        match drain {
            Some(d) => {
                if !Capture::stop(self, d) {
                    log::warn!(
                        "capture stopped without its end of stream: the last fragment is lost"
                    );
                }
            }
            None => drop(self),
        }
    }
}

/// What supervision is connected to.
pub struct Links {
    /// Storage's inbox, where sealed output goes.
    pub storage: mpsc::Sender<ToStorage>,
    /// What the conductor wants.
    pub wanted: watch::Receiver<Wanted>,
    /// Failures and the final stop, to the conductor.
    pub reports: mpsc::Sender<Report>,
    /// For the status and the watchdog.
    pub facts: watch::Sender<Facts>,
    /// Beaten every poll, for the watchdog.
    pub pulse: Pulse,
    /// Whether a recording is open: the microphone is taken back only while none is.
    pub recording: Box<dyn Fn() -> bool + Send + Sync>,
}

/// A started pipeline and the flags its sink shares with supervision.
struct Running<P> {
    pipeline: P,
    stopping: Arc<AtomicBool>,
    delivered: Arc<AtomicU64>,
    fragment_ms: Arc<AtomicU64>,
}

impl<P: Pipeline> Running<P> {
    /// Stops the pipeline. The flag goes up first: its streaming thread may be waiting for room
    /// in storage's inbox.
    async fn stop(self, drain: Option<Duration>) {
        self.stopping.store(true, Ordering::Relaxed);
        let pipeline = self.pipeline;
        let _ = tokio::task::spawn_blocking(move || pipeline.stop(drain)).await;
    }
}

/// Frames counted across pipelines, and the frame rate.
struct Tally {
    /// Frames counted by pipelines that have since stopped.
    before: FrameStats,
    /// When the frame rate was last measured, and the frame count then.
    checked: (Instant, u64),
    fps: f64,
}

impl Tally {
    fn total(&self, current: Option<FrameStats>) -> FrameStats {
        let now = current.unwrap_or_default();
        FrameStats {
            frames: self.before.frames + now.frames,
            dropped: self.before.dropped + now.dropped,
        }
    }

    fn retire(&mut self, last: FrameStats) {
        self.before = self.total(Some(last));
    }
}

/// A part that may be missing without costing the first view (the sound, the second camera),
/// as supervision keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Extra {
    /// Not configured.
    Off,
    /// Configured and used.
    On,
    /// Configured, but it failed: pipelines start without it.
    Missing {
        reason: String,
        /// When to try it again.
        probe_at: Instant,
    },
}

struct Supervisor<L: Launcher> {
    device: String,
    sound: Extra,
    /// The second camera.
    second: Extra,
    /// The wait before the second camera is tried again after it fails in the pipeline.
    second_retry: Duration,
    /// When the sound's buffer count last grew (or its pipeline started), and the count then.
    heard: (Instant, u64),
    /// The wait before the next probe of a microphone that goes missing.
    audio_retry: Duration,
    /// When the running pipeline started with sound.
    sound_since: Option<Instant>,
    /// When the running pipeline started with the second camera.
    second_since: Option<Instant>,
    /// Consecutive encoder failures without video in between.
    encoder_failures: u32,
    /// x264 replaced the probed hardware encoder.
    fallback: bool,
    /// The camera is unplugged: it is started again the moment it is back, not on a back-off.
    camera_gone: bool,
    /// When the camera's presence was last looked at.
    presence_checked: Instant,
    /// Shared with the blocking thread that starts a pipeline.
    launcher: Arc<Mutex<L>>,
    links: Links,
    seq: Arc<AtomicU64>,
    backoff: Backoff,
    /// When to start a pipeline (at once at first and after privacy; later after a failure).
    restart_at: Option<Instant>,
    running: Option<Running<L::Pipeline>>,
    tally: Tally,
}

/// Supervises capture until the conductor wants it [`Wanted::Stopped`] (or is gone), then stops
/// the pipeline, letting its last fragment out, and reports [`Report::Stopped`].
pub async fn supervise<L: Launcher>(launcher: L, device: String, links: Links) {
    let now = Instant::now();
    let sound = match launcher.audio_device() {
        Some(_) => Extra::On,
        None => Extra::Off,
    };
    let second = match launcher.second_device() {
        Some(_) => Extra::On,
        None => Extra::Off,
    };
    let mut s = Supervisor {
        device,
        sound,
        second,
        second_retry: VIEW_RETRY,
        heard: (now, 0),
        audio_retry: AUDIO_RETRY,
        sound_since: None,
        second_since: None,
        encoder_failures: 0,
        fallback: false,
        camera_gone: false,
        presence_checked: now,
        launcher: Arc::new(Mutex::new(launcher)),
        links,
        seq: Arc::default(),
        backoff: Backoff::default(),
        restart_at: Some(now),
        running: None,
        tally: Tally {
            before: FrameStats::default(),
            checked: (now, 0),
            fps: 0.0,
        },
    };
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wanted = *s.links.wanted.borrow_and_update();
        match wanted {
            Wanted::Stopped => break,
            Wanted::Paused => {
                s.stop_pipeline(None).await;
                s.restart_at = None;
            }
            // Back from privacy: at once, not after a back-off (an unplugged camera waits).
            Wanted::Running if s.running.is_none() && s.restart_at.is_none() && !s.camera_gone => {
                s.restart_at = Some(Instant::now());
            }
            Wanted::Running => {}
        }
        s.links.facts.send_if_modified(|f| {
            std::mem::replace(&mut f.paused, wanted == Wanted::Paused) != f.paused
        });
        let start_at = s.restart_at.filter(|_| s.running.is_none());
        tokio::select! {
            r = s.links.wanted.changed() => if r.is_err() { break },
            _ = sleep_until(start_at), if start_at.is_some() => s.start().await,
            _ = poll.tick() => {
                s.poll().await;
                s.retry_sound().await;
                s.retry_second().await;
            }
        }
    }
    s.stop_pipeline(Some(DRAIN)).await;
    let _ = s.links.reports.send(Report::Stopped).await;
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl<L: Launcher> Supervisor<L> {
    async fn start(&mut self) {
        self.restart_at = None;
        let sink = Sink::new(self.links.storage.clone(), self.seq.clone());
        let (stopping, delivered, fragment_ms) = (
            sink.stopping.clone(),
            sink.delivered.clone(),
            sink.fragment_ms.clone(),
        );
        let launcher = self.launcher.clone();
        let attempt = Attempt {
            audio: self.sound == Extra::On,
            second: self.second == Extra::On,
            fallback: self.fallback,
        };
        let started = tokio::task::spawn_blocking(move || {
            launcher
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .launch(sink, attempt)
        })
        .await
        .unwrap_or_else(|e| {
            Err(Failure::new(
                Part::Camera,
                format!("starting the pipeline panicked: {e}"),
            ))
        });
        match started {
            Ok(pipeline) => {
                let encoder = pipeline.encoder();
                log::info!(device = self.device.as_str(), encoder = encoder.as_str(), audio = attempt.audio, second_view = attempt.second; "capture started");
                self.links.facts.send_modify(|f| f.encoder = encoder);
                self.heard = (Instant::now(), 0);
                self.sound_since = attempt.audio.then(Instant::now);
                self.second_since = attempt.second.then(Instant::now);
                self.publish_second();
                self.running = Some(Running {
                    pipeline,
                    stopping,
                    delivered,
                    fragment_ms,
                });
            }
            Err(failure) => self.failed(failure).await,
        }
    }

    /// Probes a missing microphone when it is time and no recording is open; when it answers,
    /// the pipeline is restarted with it (its last fragment let out first).
    async fn retry_sound(&mut self) {
        let Extra::Missing { probe_at, .. } = &self.sound else {
            return;
        };
        let now = Instant::now();
        if now < *probe_at
            || (self.links.recording)()
            || *self.links.wanted.borrow() != Wanted::Running
        {
            return;
        }
        let launcher = self.launcher.clone();
        let probed = tokio::task::spawn_blocking(move || {
            launcher
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .probe_audio()
        })
        .await
        .unwrap_or_else(|e| Err(format!("probing the microphone panicked: {e}")));
        match probed {
            // A recording may have started while the probe ran: it must not get a gap.
            Ok(()) if (self.links.recording)() => {}
            Ok(()) => {
                log::info!(device = self.device.as_str(); "microphone is back: restarting capture with sound");
                self.sound = Extra::On;
                self.stop_pipeline(Some(DRAIN)).await;
                self.restart_at = Some(Instant::now());
            }
            Err(reason) => {
                // A probe disturbs nothing: tried again at the first pace.
                log::debug!(device = self.device.as_str(); "microphone still missing: {reason}");
                self.sound = Extra::Missing {
                    reason,
                    probe_at: Instant::now() + AUDIO_RETRY,
                };
            }
        }
        self.publish_sound(None);
    }

    /// Takes a missing second camera back when it is time, it is plugged in and no recording
    /// is open: the pipeline is restarted with it (its last fragment let out first).
    async fn retry_second(&mut self) {
        let Extra::Missing { probe_at, .. } = &self.second else {
            return;
        };
        if Instant::now() < *probe_at
            || (self.links.recording)()
            || *self.links.wanted.borrow() != Wanted::Running
        {
            return;
        }
        let present = self.second_present().await;
        // A recording may have started while presence was looked at: it must not get a gap.
        if present == Some(false) || (self.links.recording)() {
            if let Extra::Missing { probe_at, .. } = &mut self.second {
                *probe_at = Instant::now() + PRESENCE_EVERY;
            }
            return;
        }
        log::info!(device = self.device.as_str(); "trying the second camera again: restarting capture with both views");
        self.second = Extra::On;
        // Only a running pipeline is restarted for it; one waiting for its own restart (the
        // first camera unplugged, a back-off) takes the second camera when it starts.
        if self.running.is_some() {
            self.stop_pipeline(Some(DRAIN)).await;
            self.restart_at = Some(Instant::now());
        }
        self.publish_second();
    }

    /// Publishes the second camera's facts.
    fn publish_second(&mut self) {
        let Some(device) = self
            .launcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .second_device()
        else {
            return;
        };
        let view = ViewFacts {
            device,
            missing: match &self.second {
                Extra::Missing { reason, .. } => Some(reason.clone()),
                _ => None,
            },
        };
        self.links.facts.send_if_modified(|f| {
            let changed = f.second.as_ref() != Some(&view);
            f.second = Some(view);
            changed
        });
    }

    /// Publishes the sound's facts; `stats` from the running pipeline.
    fn publish_sound(&mut self, stats: Option<AudioStats>) {
        let Some(device) = self.launcher_audio_device() else {
            return;
        };
        let now = Instant::now();
        if let Some(st) = stats
            && st.buffers > self.heard.1
        {
            self.heard = (now, st.buffers);
        }
        let audio = AudioFacts {
            device,
            flowing: stats.is_some() && now - self.heard.0 < AUDIO_STALL,
            peak_dbfs: stats.and_then(|s| s.peak_dbfs),
            missing: match &self.sound {
                Extra::Missing { reason, .. } => Some(reason.clone()),
                _ => None,
            },
        };
        self.links.facts.send_if_modified(|f| {
            let changed = f.audio.as_ref() != Some(&audio);
            f.audio = Some(audio);
            changed
        });
    }

    /// Off the runtime: for a camera chosen by serial number it walks `/dev` and sysfs.
    async fn camera_present(&self) -> Option<bool> {
        let launcher = self.launcher.clone();
        tokio::task::spawn_blocking(move || {
            launcher
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .camera_present()
        })
        .await
        .ok()
        .flatten()
    }

    /// Off the runtime, as [`Supervisor::camera_present`].
    async fn second_present(&self) -> Option<bool> {
        let launcher = self.launcher.clone();
        tokio::task::spawn_blocking(move || {
            launcher
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .second_present()
        })
        .await
        .ok()
        .flatten()
    }

    fn launcher_audio_device(&self) -> Option<String> {
        self.launcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .audio_device()
    }

    async fn poll(&mut self) {
        self.links.pulse.beat();
        // Presence is a stat of the device (a walk of /dev and sysfs when the camera is chosen
        // by serial number): every few polls is soon enough.
        let look = Instant::now() - self.presence_checked >= PRESENCE_EVERY;
        if look {
            self.presence_checked = Instant::now();
        }
        if look && self.camera_gone && self.camera_present().await == Some(true) {
            log::info!(device = self.device.as_str(); "camera is back: starting capture");
            self.camera_gone = false;
            self.backoff.reset();
            self.restart_at = Some(Instant::now());
        }
        if look && self.running.is_some() && self.camera_present().await == Some(false) {
            // A V4L2 camera unbound mid-stream leaves the pipeline waiting for frames that
            // never come, without an error: its node going away is the sign.
            self.stop_pipeline(None).await;
            self.failed(Failure::new(
                Part::Camera,
                "missing: unplugged (its device node is gone); plug it back in",
            ))
            .await;
        }
        if look
            && self.running.is_some()
            && self.second == Extra::On
            && self.second_present().await == Some(false)
        {
            // As the first camera: an unbound device posts no error, its node goes away. The
            // first view's fragment in progress is let out (the second view's branch is ended
            // at the muxer, see Capture::stop), so the first view loses only the restart.
            self.stop_pipeline(Some(DRAIN)).await;
            self.failed(Failure::new(
                Part::SecondView,
                "missing: unplugged (its device node is gone); plug it back in",
            ))
            .await;
        }
        if let Some(r) = &self.running {
            if let Some(failure) = r.pipeline.failure() {
                // The second view failing leaves the rest of the pipeline working: its fragment
                // in progress is let out.
                let drain = (failure.part == Part::SecondView).then_some(DRAIN);
                self.stop_pipeline(drain).await;
                self.failed(failure).await;
            } else if r.delivered.load(Ordering::Relaxed) > 0 {
                self.backoff.reset();
                self.encoder_failures = 0;
            }
        }
        let sound = self.running.as_ref().and_then(|r| r.pipeline.audio());
        self.publish_sound(sound);
        if let Some(ms) = self
            .running
            .as_ref()
            .map(|r| r.fragment_ms.load(Ordering::Relaxed))
            .filter(|ms| *ms > 0)
        {
            let secs = ms as f64 / 1000.0;
            self.links.facts.send_if_modified(|f| {
                let changed = f.fragment_secs != secs;
                f.fragment_secs = secs;
                changed
            });
        }
        let now = Instant::now();
        let total = self
            .tally
            .total(self.running.as_ref().map(|r| r.pipeline.frame_stats()));
        let (at, frames_then) = self.tally.checked;
        if now - at >= FPS_WINDOW {
            self.tally.fps =
                total.frames.saturating_sub(frames_then) as f64 / (now - at).as_secs_f64();
            self.tally.checked = (now, total.frames);
        }
        let fps = self.tally.fps;
        self.links.facts.send_if_modified(|f| {
            let changed = (f.frames, f.dropped, f.fps) != (total.frames, total.dropped, fps);
            (f.frames, f.dropped, f.fps) = (total.frames, total.dropped, fps);
            changed
        });
    }

    /// Stops the running pipeline, if any, keeping its frame count.
    async fn stop_pipeline(&mut self, drain: Option<Duration>) {
        if let Some(r) = self.running.take() {
            self.tally.retire(r.pipeline.frame_stats());
            r.stop(drain).await;
        }
    }

    async fn failed(&mut self, failure: Failure) {
        let Failure { reason, part } = failure;
        let now = Instant::now();
        if part == Part::Audio && self.sound == Extra::On {
            // The video must not wait for the microphone: start again at once without it.
            if self.sound_since.is_some_and(|t| now - t >= AUDIO_SETTLED) {
                self.audio_retry = AUDIO_RETRY;
            }
            let wait = self.audio_retry;
            self.audio_retry = (wait * 2).min(AUDIO_RETRY_MAX);
            log::warn!(device = self.device.as_str(), retry_secs = wait.as_secs();
                "microphone failed: {reason}; recording video without sound; check the microphone and audio.device");
            self.sound = Extra::Missing {
                reason,
                probe_at: now + wait,
            };
            self.restart_at = Some(now);
            self.publish_sound(None);
            return;
        }
        if part == Part::SecondView && self.second == Extra::On {
            // The first view must not wait for the second: start again at once without it.
            if self.second_since.is_some_and(|t| now - t >= AUDIO_SETTLED) {
                self.second_retry = VIEW_RETRY;
            }
            let wait = self.second_retry;
            self.second_retry = (wait * 2).min(AUDIO_RETRY_MAX);
            log::warn!(device = self.device.as_str(), retry_secs = wait.as_secs();
                "second camera failed: {reason}; recording the first view alone; check the second camera and [second_camera]");
            self.second = Extra::Missing {
                reason,
                probe_at: now + wait,
            };
            self.restart_at = Some(now);
            self.publish_second();
            return;
        }
        if part == Part::Encoder && !self.fallback {
            let hardware = self
                .launcher
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .fallback_encoder();
            if let Some(replacement) = hardware {
                self.encoder_failures += 1;
                if self.encoder_failures >= ENCODER_ATTEMPTS {
                    let encoder = self.links.facts.borrow().encoder.clone();
                    let why = format!(
                        "the hardware encoder failed {} times in a row ({reason}); using {replacement} until neoflixd restarts",
                        self.encoder_failures
                    );
                    log::error!(device = self.device.as_str(), encoder = encoder.as_str(); "{why}");
                    self.fallback = true;
                    self.backoff.reset();
                    self.restart_at = Some(now);
                    self.links
                        .facts
                        .send_modify(|f| f.encoder_fallback = Some(why));
                    let _ = self.links.reports.send(Report::Failed { reason }).await;
                    return;
                }
            }
        }
        if part == Part::Camera && self.camera_present().await == Some(false) {
            // Unplugged: watched for at every poll, started again the moment it is back.
            let reason = if reason.starts_with("missing") {
                reason
            } else {
                format!("missing ({reason})")
            };
            log::error!(device = self.device.as_str(); "camera {reason}: capture starts again the moment it is back");
            self.camera_gone = true;
            self.restart_at = None;
            let _ = self.links.reports.send(Report::Failed { reason }).await;
            return;
        }
        let wait = self.backoff.failed();
        log::error!(device = self.device.as_str(), retry_secs = wait.as_secs();
            "capture failed: {reason}; check the camera cable and capture.device; retrying");
        self.restart_at = Some(now + wait);
        let _ = self.links.reports.send(Report::Failed { reason }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// What the fake camera does when started.
    enum Plan {
        /// Refuses to start: the camera is at fault.
        Refuse(&'static str),
        /// Refuses to start, `part` at fault.
        RefuseAs(Part, &'static str),
        /// Starts; delivers an init segment and a fragment if `video`.
        Start { video: bool },
    }

    #[derive(Default)]
    struct Shared {
        plans: VecDeque<Plan>,
        launches: Vec<Instant>,
        /// How each launch was asked to build its pipeline.
        attempts: Vec<Attempt>,
        /// Set by the test: the running pipeline fails with this.
        fail: Option<String>,
        /// How each pipeline was stopped.
        stops: Vec<Option<Duration>>,
        /// Sound configured, on this device.
        audio_device: Option<String>,
        /// What each microphone probe answers, and when they were made.
        probes: VecDeque<Result<(), String>>,
        probed: Vec<Instant>,
        /// The encoder is a probed hardware one.
        hardware: bool,
        /// Whether the camera is plugged in, for a camera that can be unplugged.
        present: Option<bool>,
        /// A second camera configured, on this device.
        second_device: Option<String>,
        /// Whether the second camera is plugged in.
        second_present: Option<bool>,
    }

    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<Shared>>);

    struct FakePipeline(Arc<Mutex<Shared>>, bool);

    impl Pipeline for FakePipeline {
        fn encoder(&self) -> String {
            "fakeenc".into()
        }
        fn frame_stats(&self) -> FrameStats {
            FrameStats {
                frames: 30,
                dropped: 1,
            }
        }
        fn audio(&self) -> Option<AudioStats> {
            self.1.then_some(AudioStats {
                buffers: 1,
                peak_dbfs: Some(-20.0),
            })
        }
        fn failure(&self) -> Option<Failure> {
            let reason = self.0.lock().unwrap().fail.take()?;
            Some(Failure::new(Part::Camera, reason))
        }
        fn stop(self, drain: Option<Duration>) {
            self.0.lock().unwrap().stops.push(drain);
        }
    }

    impl Launcher for Fake {
        type Pipeline = FakePipeline;
        fn launch(&mut self, sink: Sink, attempt: Attempt) -> Result<FakePipeline, Failure> {
            let mut s = self.0.lock().unwrap();
            s.launches.push(Instant::now());
            s.attempts.push(attempt);
            match s.plans.pop_front().unwrap_or(Plan::Refuse("no plan left")) {
                Plan::Refuse(why) => Err(Failure::new(Part::Camera, why)),
                Plan::RefuseAs(part, why) => Err(Failure::new(part, why)),
                Plan::Start { video } => {
                    if video {
                        let mut out = sink.into_callback();
                        let fail = |e| Failure::new(Part::Output, e);
                        out(Output::Init { data: vec![1; 32] }).map_err(fail)?;
                        out(Output::Fragment {
                            data: vec![2; 64],
                            pts: Duration::ZERO,
                            duration: Duration::from_secs(1),
                            ends: std::time::Instant::now(),
                        })
                        .map_err(fail)?;
                    }
                    Ok(FakePipeline(self.0.clone(), attempt.audio))
                }
            }
        }
        fn audio_device(&self) -> Option<String> {
            self.0.lock().unwrap().audio_device.clone()
        }
        fn probe_audio(&mut self) -> Result<(), String> {
            let mut s = self.0.lock().unwrap();
            s.probed.push(Instant::now());
            s.probes
                .pop_front()
                .unwrap_or(Err("no probe planned".into()))
        }
        fn fallback_encoder(&self) -> Option<String> {
            self.0.lock().unwrap().hardware.then(|| "x264enc".into())
        }
        fn camera_present(&self) -> Option<bool> {
            self.0.lock().unwrap().present
        }
        fn second_device(&self) -> Option<String> {
            self.0.lock().unwrap().second_device.clone()
        }
        fn second_present(&self) -> Option<bool> {
            self.0.lock().unwrap().second_present
        }
    }

    struct Harness {
        fake: Fake,
        wanted: watch::Sender<Wanted>,
        reports: mpsc::Receiver<Report>,
        storage: mpsc::Receiver<ToStorage>,
        facts: watch::Receiver<Facts>,
        t0: Instant,
        /// Whether a recording is open, as supervision sees it.
        recording: Arc<AtomicBool>,
    }

    fn harness(plans: Vec<Plan>) -> Harness {
        harness_with(plans, |_| {})
    }

    fn harness_with(plans: Vec<Plan>, setup: impl FnOnce(&mut Shared)) -> Harness {
        let fake = Fake::default();
        fake.0.lock().unwrap().plans = plans.into();
        setup(&mut fake.0.lock().unwrap());
        let recording = Arc::new(AtomicBool::new(false));
        let (storage_tx, storage) = mpsc::channel(16);
        let (wanted, wanted_rx) = watch::channel(Wanted::Running);
        let (reports_tx, reports) = mpsc::channel(16);
        let (facts_tx, facts) = watch::channel(Facts::default());
        let links = Links {
            storage: storage_tx,
            wanted: wanted_rx,
            reports: reports_tx,
            facts: facts_tx,
            pulse: Pulse::default(),
            recording: {
                let r = recording.clone();
                Box::new(move || r.load(Ordering::Relaxed))
            },
        };
        let t0 = Instant::now();
        tokio::spawn(supervise(fake.clone(), "room-1".into(), links));
        Harness {
            fake,
            wanted,
            reports,
            storage,
            facts,
            t0,
            recording,
        }
    }

    impl Harness {
        /// Launch times, as offsets from the start.
        fn launches(&self) -> Vec<Duration> {
            let s = self.fake.0.lock().unwrap();
            s.launches.iter().map(|t| *t - self.t0).collect()
        }
    }

    fn secs(s: &[f64]) -> Vec<Duration> {
        s.iter().map(|s| Duration::from_secs_f64(*s)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_camera_is_retried_with_backoff_that_starts_over_once_video_flows() {
        let mut h = harness(vec![
            Plan::Refuse("no such device"),
            Plan::Refuse("no such device"),
            Plan::Refuse("no such device"),
            Plan::Start { video: true },
            Plan::Refuse("unplugged"),
            Plan::Refuse("unplugged"),
            Plan::Start { video: false },
        ]);
        // At once, then 1, 2 and 4 s later.
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert_eq!(h.launches(), secs(&[0.0, 1.0, 3.0, 7.0]));
        for _ in 0..3 {
            assert!(
                matches!(h.reports.try_recv(), Ok(Report::Failed { reason }) if reason == "no such device")
            );
        }
        assert!(h.reports.try_recv().is_err(), "the fourth start worked");
        // Its video went to storage, sealed.
        assert!(matches!(h.storage.try_recv(), Ok(ToStorage::Init { .. })));
        assert!(matches!(
            h.storage.try_recv(),
            Ok(ToStorage::Fragment { seq: 0, .. })
        ));
        assert_eq!(h.facts.borrow().encoder, "fakeenc");

        // It fails 2 s later: video had flowed, so the back-off starts over at 1 s.
        tokio::time::sleep(Duration::from_secs(2)).await;
        h.fake.0.lock().unwrap().fail = Some("the camera stream ended".into());
        tokio::time::sleep(Duration::from_secs(8)).await;
        let l = h.launches();
        assert_eq!(l.len(), 7, "{l:?}");
        // Noticed within one poll (100 ms), restarted 1 s later, then 2 s and 4 s.
        let failed_at = l[4] - Duration::from_secs(1);
        assert!(
            failed_at >= Duration::from_secs(10) && failed_at <= Duration::from_millis(10_100),
            "{l:?}"
        );
        assert_eq!(l[5] - l[4], Duration::from_secs(2));
        assert_eq!(l[6] - l[5], Duration::from_secs(4));
        let failures: Vec<Report> = std::iter::from_fn(|| h.reports.try_recv().ok()).collect();
        assert_eq!(failures.len(), 3, "{failures:?}");
        assert_eq!(
            failures[0],
            Report::Failed {
                reason: "the camera stream ended".into()
            }
        );
        // Frames of stopped pipelines still count.
        assert_eq!(h.facts.borrow().frames, 60);
    }

    #[tokio::test(start_paused = true)]
    async fn privacy_stops_capture_at_once_and_shutdown_lets_the_last_fragment_out() {
        let mut h = harness(vec![
            Plan::Start { video: false },
            Plan::Start { video: false },
        ]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        h.wanted.send_replace(Wanted::Paused);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(h.launches(), secs(&[0.0]), "nothing starts in privacy mode");
        assert!(h.facts.borrow().paused);
        assert_eq!(h.fake.0.lock().unwrap().stops, vec![None]);
        h.wanted.send_replace(Wanted::Running);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(h.launches(), secs(&[0.0, 31.0]), "back at once");
        assert!(!h.facts.borrow().paused);
        h.wanted.send_replace(Wanted::Stopped);
        assert_eq!(h.reports.recv().await, Some(Report::Stopped));
        assert_eq!(h.fake.0.lock().unwrap().stops, vec![None, Some(DRAIN)]);
        assert!(h.reports.recv().await.is_none(), "supervision has ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_microphone_costs_no_video_and_comes_back_only_between_recordings() {
        let mut h = harness_with(
            vec![
                Plan::RefuseAs(Part::Audio, "alsasrc: no such card"),
                Plan::Start { video: true },
                Plan::Start { video: true },
            ],
            |s| {
                s.audio_device = Some("hw:CARD=Mic".into());
                s.probes = vec![Err("still no card".into()), Ok(())].into();
            },
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Video at once, without sound; the camera is not at fault.
        assert_eq!(h.launches(), secs(&[0.0, 0.0]));
        let attempts = h.fake.0.lock().unwrap().attempts.clone();
        assert_eq!(
            attempts.iter().map(|a| a.audio).collect::<Vec<_>>(),
            [true, false]
        );
        assert!(h.reports.try_recv().is_err(), "{:?}", h.reports.try_recv());
        assert!(matches!(h.storage.try_recv(), Ok(ToStorage::Init { .. })));
        let audio = h.facts.borrow().audio.clone().unwrap();
        assert_eq!(audio.device, "hw:CARD=Mic");
        assert!(!audio.flowing);
        assert_eq!(audio.missing.as_deref(), Some("alsasrc: no such card"));

        // A recording is open: the microphone is not probed, so its return costs no gap.
        h.recording.store(true, Ordering::Relaxed);
        tokio::time::sleep(AUDIO_RETRY + Duration::from_secs(5)).await;
        assert!(h.fake.0.lock().unwrap().probed.is_empty());
        // Between recordings it is probed: still missing, then back 30 s later.
        h.recording.store(false, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(h.fake.0.lock().unwrap().probed.len(), 1);
        assert_eq!(h.launches().len(), 2);
        tokio::time::sleep(AUDIO_RETRY).await;
        {
            let s = h.fake.0.lock().unwrap();
            assert_eq!(s.probed.len(), 2);
            assert_eq!(s.attempts.last().map(|a| a.audio), Some(true));
            assert_eq!(s.launches.len(), 3);
            assert_eq!(
                s.stops,
                vec![Some(DRAIN)],
                "the last fragment let out first"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let audio = h.facts.borrow().audio.clone().unwrap();
        assert_eq!(audio.missing, None);
        assert!(audio.flowing);
        assert_eq!(audio.peak_dbfs, Some(-20.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_or_unplugged_second_camera_costs_the_first_view_nothing() {
        let mut h = harness_with(
            vec![
                Plan::RefuseAs(Part::SecondView, "view2-source: no such device"),
                Plan::Start { video: true },
                Plan::Start { video: true },
                Plan::Start { video: true },
            ],
            |s| {
                s.second_device = Some("/dev/v4l/by-id/overhead".into());
                s.second_present = Some(true);
            },
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The first view at once, alone; nothing reported as a camera failure.
        assert_eq!(h.launches(), secs(&[0.0, 0.0]));
        let seconds = |h: &Harness| -> Vec<bool> {
            let s = h.fake.0.lock().unwrap();
            s.attempts.iter().map(|a| a.second).collect()
        };
        assert_eq!(seconds(&h), [true, false]);
        assert!(h.reports.try_recv().is_err());
        assert!(matches!(h.storage.try_recv(), Ok(ToStorage::Init { .. })));
        let view = h.facts.borrow().second.clone().unwrap();
        assert_eq!(view.device, "/dev/v4l/by-id/overhead");
        assert_eq!(
            view.missing.as_deref(),
            Some("view2-source: no such device")
        );

        // Not taken back while a recording is open: that would cost the first view a gap.
        h.recording.store(true, Ordering::Relaxed);
        tokio::time::sleep(VIEW_RETRY + Duration::from_secs(5)).await;
        assert_eq!(h.launches().len(), 2);
        h.recording.store(false, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(seconds(&h), [true, false, true]);
        assert_eq!(h.fake.0.lock().unwrap().stops, vec![Some(DRAIN)]);
        assert_eq!(h.facts.borrow().second.clone().unwrap().missing, None);

        // Unplugged mid-stream (no pipeline error, its node goes): at once without it.
        h.fake.0.lock().unwrap().second_present = Some(false);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(seconds(&h), [true, false, true, false]);
        assert_eq!(
            h.fake.0.lock().unwrap().stops,
            vec![Some(DRAIN), Some(DRAIN)],
            "the first view's fragment in progress let out"
        );
        let missing = h.facts.borrow().second.clone().unwrap().missing.unwrap();
        assert!(missing.starts_with("missing: unplugged"), "{missing}");
        assert!(
            h.reports.try_recv().is_err(),
            "not a fault of the room's camera"
        );
        // Still unplugged when its time comes: not tried; plugged back: taken back.
        tokio::time::sleep(VIEW_RETRY * 4).await;
        assert_eq!(h.launches().len(), 4);
        h.fake.0.lock().unwrap().second_present = Some(true);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(seconds(&h), [true, false, true, false, true]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_microphone_that_answers_probes_but_fails_in_the_pipeline_is_tried_less_often() {
        let mut plans = Vec::new();
        for _ in 0..4 {
            plans.push(Plan::RefuseAs(Part::Audio, "alsasrc: I/O error"));
            plans.push(Plan::Start { video: true });
        }
        let h = harness_with(plans, |s| {
            s.audio_device = Some("hw:CARD=Mic".into());
            s.probes = (0..4).map(|_| Ok(())).collect();
        });
        tokio::time::sleep(Duration::from_secs(1000)).await;
        let s = h.fake.0.lock().unwrap();
        let probes: Vec<u64> = s.probed.iter().map(|t| (*t - h.t0).as_secs()).collect();
        // 30 s after the first failure, then 60 and 120 s after the next ones.
        assert_eq!(probes, [30, 90, 210, 450], "{probes:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_hardware_encoder_gives_way_to_x264_after_three_attempts() {
        let mut h = harness_with(
            vec![
                Plan::RefuseAs(Part::Encoder, "encoder: device busy"),
                Plan::RefuseAs(Part::Encoder, "encoder: device busy"),
                Plan::Refuse("camera: unplugged"),
                Plan::RefuseAs(Part::Encoder, "encoder: device busy"),
                Plan::Start { video: true },
            ],
            |s| s.hardware = true,
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        // A camera failure in between does not count; the third encoder failure switches at
        // once.
        assert_eq!(h.launches(), secs(&[0.0, 1.0, 3.0, 7.0, 7.0]));
        let s = h.fake.0.lock().unwrap();
        assert_eq!(
            s.attempts.iter().map(|a| a.fallback).collect::<Vec<_>>(),
            [false, false, false, false, true]
        );
        drop(s);
        let why = h.facts.borrow().encoder_fallback.clone().unwrap();
        assert!(
            why.contains("failed 3 times") && why.contains("x264enc"),
            "{why}"
        );
        assert_eq!(std::iter::from_fn(|| h.reports.try_recv().ok()).count(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unplugged_camera_is_started_again_the_moment_it_is_back() {
        let mut h = harness_with(
            vec![Plan::Start { video: true }, Plan::Start { video: true }],
            |s| s.present = Some(true),
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Unplugged mid-recording: the node is gone, and the pipeline waits for frames without
        // an error (as v4l2src does when vivid is unbound). Noticed within a poll.
        h.fake.0.lock().unwrap().present = Some(false);
        tokio::time::sleep(Duration::from_millis(150)).await;
        match h.reports.try_recv() {
            Ok(Report::Failed { reason }) => {
                assert!(reason.starts_with("missing: unplugged"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            h.fake.0.lock().unwrap().stops,
            vec![None],
            "stopped, nothing to drain"
        );
        // No restarts while it is away, however long, nor a back-off to wait out when it is
        // back (a privacy toggle meanwhile does not start it either).
        h.wanted.send_replace(Wanted::Paused);
        tokio::time::sleep(Duration::from_secs(1)).await;
        h.wanted.send_replace(Wanted::Running);
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert_eq!(h.launches().len(), 1);
        h.fake.0.lock().unwrap().present = Some(true);
        tokio::time::sleep(Duration::from_millis(150)).await;
        let l = h.launches();
        assert_eq!(l.len(), 2, "{l:?}");
        assert!(h.reports.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn an_encoder_named_in_the_config_is_never_replaced() {
        let h = harness(
            (0..6)
                .map(|_| Plan::RefuseAs(Part::Encoder, "busy"))
                .collect(),
        );
        tokio::time::sleep(Duration::from_secs(40)).await;
        let s = h.fake.0.lock().unwrap();
        assert_eq!(s.attempts.len(), 6);
        assert!(s.attempts.iter().all(|a| !a.fallback));
        drop(s);
        assert_eq!(h.facts.borrow().encoder_fallback, None);
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..7).map(|_| b.failed().as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 30, 30]);
        b.reset();
        assert_eq!(b.failed(), Backoff::FIRST);
    }
}
