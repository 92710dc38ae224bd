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
//! The pipeline is behind [`Launcher`] and [`Pipeline`] ([`Gstreamer`] in production), so the
//! restart logic is unit-tested with a fake one and paused time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use neoflix_capture::{Capture, CaptureEvent, CaptureSettings, FrameStats, Output};
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
/// The frame rate in the status is measured over this long.
const FPS_WINDOW: Duration = Duration::from_secs(5);

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

/// What capture supervision shows the status and the watchdog.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// The H.264 encoder of the last pipeline started.
    pub encoder: String,
    /// Frames delivered by the camera since start, across pipelines (the watchdog's evidence).
    pub frames: u64,
    /// Frames the camera skipped since start.
    pub dropped: u64,
    /// Frames per second lately.
    pub fps: f64,
    /// Capture is stopped on purpose (privacy mode).
    pub paused: bool,
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
}

impl Sink {
    fn new(storage: mpsc::Sender<ToStorage>, seq: Arc<AtomicU64>) -> Sink {
        Sink {
            storage,
            seq,
            stopping: Arc::default(),
            delivered: Arc::default(),
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
                    mut data, duration, ..
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
                    let captured = SystemTime::now()
                        .checked_sub(duration)
                        .unwrap_or_else(SystemTime::now);
                    ToStorage::Fragment {
                        seq: n,
                        sealed,
                        key,
                        duration,
                        captured,
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
    /// Why the pipeline stopped working, if it did. Never waits.
    fn failure(&self) -> Option<String>;
    /// Stops it, first letting the fragment in progress out for up to `drain`. Blocks.
    fn stop(self, drain: Option<Duration>);
}

/// Starts pipelines.
pub trait Launcher: Send + 'static {
    /// What it starts.
    type Pipeline: Pipeline;
    /// Builds and starts a pipeline whose output goes to `sink`. Blocks.
    fn launch(&mut self, sink: Sink) -> Result<Self::Pipeline, String>;
}

/// The real pipeline: GStreamer, through `neoflix-capture`.
#[derive(Debug, Clone)]
pub struct Gstreamer(pub CaptureSettings);

impl Launcher for Gstreamer {
    type Pipeline = Capture;

    fn launch(&mut self, sink: Sink) -> Result<Capture, String> {
        Capture::start(&self.0, sink.into_callback()).map_err(|e| e.to_string())
    }
}

impl Pipeline for Capture {
    fn encoder(&self) -> String {
        Capture::encoder(self).factory().to_string()
    }

    fn frame_stats(&self) -> FrameStats {
        Capture::frame_stats(self)
    }

    fn failure(&self) -> Option<String> {
        match self.next_event(Duration::ZERO)? {
            CaptureEvent::Error(e) => Some(e.to_string()),
            CaptureEvent::Eos => Some("the camera stream ended".to_string()),
        }
    }

    fn stop(self, drain: Option<Duration>) {
        match drain {
            Some(d) => Capture::stop(self, d),
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
}

/// A started pipeline and the flags its sink shares with supervision.
struct Running<P> {
    pipeline: P,
    stopping: Arc<AtomicBool>,
    delivered: Arc<AtomicU64>,
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

struct Supervisor<L: Launcher> {
    device: String,
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
    let mut s = Supervisor {
        device,
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
            // Back from privacy: at once, not after a back-off.
            Wanted::Running if s.running.is_none() && s.restart_at.is_none() => {
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
            _ = poll.tick() => s.poll().await,
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
        let (stopping, delivered) = (sink.stopping.clone(), sink.delivered.clone());
        let launcher = self.launcher.clone();
        let started = tokio::task::spawn_blocking(move || {
            launcher
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .launch(sink)
        })
        .await
        .unwrap_or_else(|e| Err(format!("starting the pipeline panicked: {e}")));
        match started {
            Ok(pipeline) => {
                let encoder = pipeline.encoder();
                log::info!(device = self.device.as_str(), encoder = encoder.as_str(); "capture started");
                self.links.facts.send_modify(|f| f.encoder = encoder);
                self.running = Some(Running {
                    pipeline,
                    stopping,
                    delivered,
                });
            }
            Err(reason) => self.failed(reason).await,
        }
    }

    async fn poll(&mut self) {
        self.links.pulse.beat();
        if let Some(r) = &self.running {
            if let Some(reason) = r.pipeline.failure() {
                self.stop_pipeline(None).await;
                self.failed(reason).await;
            } else if r.delivered.load(Ordering::Relaxed) > 0 {
                self.backoff.reset();
            }
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

    async fn failed(&mut self, reason: String) {
        let wait = self.backoff.failed();
        log::error!(device = self.device.as_str(), retry_secs = wait.as_secs();
            "capture failed: {reason}; check the camera cable and capture.device; retrying");
        self.restart_at = Some(Instant::now() + wait);
        let _ = self.links.reports.send(Report::Failed { reason }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// What the fake camera does when started.
    enum Plan {
        /// Refuses to start.
        Refuse(&'static str),
        /// Starts; delivers an init segment and a fragment if `video`.
        Start { video: bool },
    }

    #[derive(Default)]
    struct Shared {
        plans: VecDeque<Plan>,
        launches: Vec<Instant>,
        /// Set by the test: the running pipeline fails with this.
        fail: Option<String>,
        /// How each pipeline was stopped.
        stops: Vec<Option<Duration>>,
    }

    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<Shared>>);

    struct FakePipeline(Arc<Mutex<Shared>>);

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
        fn failure(&self) -> Option<String> {
            self.0.lock().unwrap().fail.take()
        }
        fn stop(self, drain: Option<Duration>) {
            self.0.lock().unwrap().stops.push(drain);
        }
    }

    impl Launcher for Fake {
        type Pipeline = FakePipeline;
        fn launch(&mut self, sink: Sink) -> Result<FakePipeline, String> {
            let mut s = self.0.lock().unwrap();
            s.launches.push(Instant::now());
            match s.plans.pop_front().unwrap_or(Plan::Refuse("no plan left")) {
                Plan::Refuse(why) => Err(why.to_string()),
                Plan::Start { video } => {
                    if video {
                        let mut out = sink.into_callback();
                        out(Output::Init { data: vec![1; 32] })?;
                        out(Output::Fragment {
                            data: vec![2; 64],
                            pts: Duration::ZERO,
                            duration: Duration::from_secs(1),
                        })?;
                    }
                    Ok(FakePipeline(self.0.clone()))
                }
            }
        }
    }

    struct Harness {
        fake: Fake,
        wanted: watch::Sender<Wanted>,
        reports: mpsc::Receiver<Report>,
        storage: mpsc::Receiver<ToStorage>,
        facts: watch::Receiver<Facts>,
        t0: Instant,
    }

    fn harness(plans: Vec<Plan>) -> Harness {
        let fake = Fake::default();
        fake.0.lock().unwrap().plans = plans.into();
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

    #[test]
    fn backoff_doubles_to_its_cap() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..7).map(|_| b.failed().as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 30, 30]);
        b.reset();
        assert_eq!(b.failed(), Backoff::FIRST);
    }
}
