//! Building and running the capture pipeline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use crate::board::Memory;
use crate::{
    AudioSettings, AudioSource, CaptureError, CaptureSettings, Encoder, InputFormat, Source,
};

/// One piece of fMP4 out of the muxer.
#[derive(Debug)]
pub enum Output {
    /// The init segment (`ftyp` + `moov`): once per pipeline run.
    Init {
        /// The bytes.
        data: Vec<u8>,
    },
    /// One media fragment (`moof` + `mdat`), starting on a keyframe.
    Fragment {
        /// The bytes.
        data: Vec<u8>,
        /// Running time of the fragment's first frame.
        pts: Duration,
        /// Duration of the fragment.
        duration: Duration,
        /// When its last moment was captured, on this machine's monotonic clock: the
        /// muxer hands a fragment out a few frames later than that.
        ends: Instant,
    },
}

/// Something the pipeline reports while it runs.
#[derive(Debug)]
pub enum CaptureEvent {
    /// The pipeline failed; it is stopped and must be rebuilt.
    Error(CaptureError),
    /// The stream ended (after [`Capture::stop`], or a source that ran dry).
    Eos,
}

/// A running capture pipeline. Dropping it stops the pipeline.
pub struct Capture {
    pipeline: gst::Pipeline,
    encoder: Encoder,
    frames: Arc<FrameCounter>,
    audio: Option<Arc<AudioMeter>>,
}

/// The loudness of the sound leaving the audio source, for the level meter in the status.
///
/// Written by the streaming thread (one buffer at a time), read by supervision: the peak of the
/// second of media before the last completed one, so a reader always sees a whole second.
#[derive(Debug)]
pub struct AudioMeter {
    buffers: AtomicU64,
    /// Start of the second being measured, media time in ns (`u64::MAX`: none yet).
    window_start: AtomicU64,
    /// Peak sample magnitude of the second being measured.
    peak_now: AtomicU64,
    /// Peak of the last whole second (`u64::MAX`: none yet).
    peak_last: AtomicU64,
}

impl Default for AudioMeter {
    fn default() -> Self {
        AudioMeter {
            buffers: AtomicU64::new(0),
            window_start: AtomicU64::new(u64::MAX),
            peak_now: AtomicU64::new(0),
            peak_last: AtomicU64::new(u64::MAX),
        }
    }
}

/// A snapshot of [`AudioMeter`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AudioStats {
    /// Buffers of sound delivered by the source since the pipeline started.
    pub buffers: u64,
    /// Peak level over the last whole second, dBFS (0 is full scale; digital silence reads
    /// [`SILENCE_DBFS`]); `None` before the first second is complete.
    pub peak_dbfs: Option<f64>,
}

/// What digital silence reads on the meter: below the quietest 16-bit sample.
pub const SILENCE_DBFS: f64 = -100.0;

/// The largest magnitude among interleaved signed 16-bit little-endian samples.
pub fn peak_s16le(samples: &[u8]) -> u64 {
    samples
        .chunks_exact(2)
        .map(|s| u64::from(i16::from_le_bytes([s[0], s[1]]).unsigned_abs()))
        .max()
        .unwrap_or(0)
}

/// A 16-bit sample magnitude in dBFS, rounded to 0.1 dB.
pub fn dbfs(peak: u64) -> f64 {
    if peak == 0 {
        return SILENCE_DBFS;
    }
    let db = 20.0 * (peak.min(32768) as f64 / 32768.0).log10();
    (db * 10.0).round() / 10.0
}

impl AudioMeter {
    const WINDOW_NS: u64 = 1_000_000_000;

    /// Counts one buffer of S16LE sound that starts at media time `pts_ns`.
    pub fn measure(&self, pts_ns: Option<u64>, samples: &[u8]) {
        self.buffers.fetch_add(1, Ordering::Relaxed);
        let peak = peak_s16le(samples);
        let Some(pts) = pts_ns else {
            self.peak_now.fetch_max(peak, Ordering::Relaxed);
            return;
        };
        let start = self.window_start.load(Ordering::Relaxed);
        if start == u64::MAX {
            self.window_start.store(pts, Ordering::Relaxed);
        } else if pts.saturating_sub(start) >= Self::WINDOW_NS {
            let done = self.peak_now.swap(0, Ordering::Relaxed);
            self.peak_last.store(done, Ordering::Relaxed);
            self.window_start.store(pts, Ordering::Relaxed);
        }
        self.peak_now.fetch_max(peak, Ordering::Relaxed);
    }

    /// What has been measured so far.
    pub fn stats(&self) -> AudioStats {
        let last = self.peak_last.load(Ordering::Relaxed);
        AudioStats {
            buffers: self.buffers.load(Ordering::Relaxed),
            peak_dbfs: (last != u64::MAX).then(|| dbfs(last)),
        }
    }
}

/// Frames seen leaving the source, and frames it skipped, since the pipeline started.
#[derive(Debug, Default)]
pub struct FrameCounter {
    frames: AtomicU64,
    dropped: AtomicU64,
    last_pts: AtomicU64,
}

/// A snapshot of [`FrameCounter`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameStats {
    /// Frames delivered by the source.
    pub frames: u64,
    /// Frames missing: gaps in the timestamps longer than one frame interval (a camera that
    /// drops frames in low light or on a saturated USB bus).
    pub dropped: u64,
}

impl FrameCounter {
    /// Counts one frame with presentation time `pts_ns`, given the nominal interval.
    fn count(&self, pts_ns: Option<u64>, interval_ns: u64) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        let Some(pts) = pts_ns else { return };
        let last = self.last_pts.swap(pts + 1, Ordering::Relaxed);
        if last == 0 || interval_ns == 0 {
            return;
        }
        let gap = pts.saturating_sub(last - 1);
        // Half a frame of slack: timestamps of live sources jitter.
        let missing = (gap + interval_ns / 2) / interval_ns;
        if missing > 1 {
            self.dropped.fetch_add(missing - 1, Ordering::Relaxed);
        }
    }

    fn stats(&self) -> FrameStats {
        FrameStats {
            frames: self.frames.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// Chooses the encoder: the one named, if installed, else the first of
/// [`Encoder::PROBE_ORDER`] whose factory exists.
pub fn probe_encoder(named: Option<&Encoder>) -> Result<Encoder, CaptureError> {
    crate::init()?;
    if let Some(enc) = named {
        if *enc == Encoder::Passthrough || gst::ElementFactory::find(enc.factory()).is_some() {
            return Ok(enc.clone());
        }
        return Err(CaptureError::MissingElement {
            element: enc.factory().into(),
            package: "the board's GStreamer encoder plugin (or set capture.encoder = \"auto\")",
        });
    }
    Encoder::PROBE_ORDER
        .iter()
        .find(|e| gst::ElementFactory::find(e.factory()).is_some())
        .cloned()
        .ok_or_else(|| CaptureError::NoEncoder {
            tried: Encoder::PROBE_ORDER.map(|e| e.factory()).join(", "),
        })
}

fn make(factory: &str, name: &str) -> Result<gst::Element, CaptureError> {
    gst::ElementFactory::make(factory)
        .name(name)
        .build()
        .map_err(|_| CaptureError::MissingElement {
            element: factory.into(),
            package: package_of(factory),
        })
}

fn package_of(factory: &str) -> &'static str {
    match factory {
        "videotestsrc" | "videoconvert" | "capsfilter" | "queue" | "appsink" => {
            "gstreamer1.0-plugins-base"
        }
        "v4l2src" | "jpegdec" | "v4l2convert" | "v4l2jpegdec" => "gstreamer1.0-plugins-good",
        "nvvidconv" => "nvidia-l4t-gstreamer",
        "h264parse" => "gstreamer1.0-plugins-bad",
        "audiotestsrc" | "audioconvert" | "audioresample" | "opusenc" | "fakesink" => {
            "gstreamer1.0-plugins-base"
        }
        "alsasrc" => "gstreamer1.0-alsa",
        "x264enc" => "gstreamer1.0-plugins-ugly",
        _ => "the GStreamer plugin that provides it",
    }
}

impl Capture {
    /// Builds the pipeline, starts it, and hands every muxer output to `sink`.
    ///
    /// `sink` runs on a streaming thread; returning `Err(message)` stops the pipeline with an
    /// error naming the appsink.
    pub fn start<F>(settings: &CaptureSettings, sink: F) -> Result<Capture, CaptureError>
    where
        F: FnMut(Output) -> Result<(), String> + Send + 'static,
    {
        crate::init()?;
        let encoder = if camera_encodes(&settings.source) {
            Encoder::Passthrough
        } else {
            probe_encoder(settings.encoder.as_ref())?
        };
        let pipeline = build(settings, &encoder, sink)?;
        let frames = Arc::new(FrameCounter::default());
        count_frames(&pipeline, settings.fps, frames.clone())?;
        let audio = match &settings.audio {
            Some(_) => Some(meter_audio(&pipeline)?),
            None => None,
        };
        if let Err(e) = pipeline.set_state(gst::State::Playing) {
            // The real reason is on the bus, naming the element; take it from there if it is
            // already posted.
            let posted = pipeline
                .bus()
                .and_then(|b| {
                    b.timed_pop_filtered(
                        gst::ClockTime::from_mseconds(500),
                        &[gst::MessageType::Error],
                    )
                })
                .map(|m| error_from_message(&m));
            let _ = pipeline.set_state(gst::State::Null);
            return Err(posted.unwrap_or_else(|| CaptureError::Start(e.to_string())));
        }
        Ok(Capture {
            pipeline,
            encoder,
            frames,
            audio,
        })
    }

    /// What the sound's level meter measured, when the pipeline has sound.
    pub fn audio_stats(&self) -> Option<AudioStats> {
        self.audio.as_ref().map(|m| m.stats())
    }

    /// Frames delivered and dropped by the source so far.
    pub fn frame_stats(&self) -> FrameStats {
        self.frames.stats()
    }

    /// The encoder in use.
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// Waits up to `timeout` for an error or end of stream.
    pub fn next_event(&self, timeout: Duration) -> Option<CaptureEvent> {
        let bus = self.pipeline.bus()?;
        let msg = bus.timed_pop_filtered(
            gst::ClockTime::from_nseconds(timeout.as_nanos() as u64),
            &[
                gst::MessageType::Error,
                gst::MessageType::Eos,
                gst::MessageType::Warning,
            ],
        )?;
        match msg.view() {
            gst::MessageView::Eos(_) => Some(CaptureEvent::Eos),
            gst::MessageView::Error(_) => Some(CaptureEvent::Error(error_from_message(&msg))),
            gst::MessageView::Warning(w) => {
                log::warn!(element = source_name(&msg).as_str(); "capture warning: {}", w.error());
                None
            }
            _ => None,
        }
    }

    /// Stops the pipeline: sends end-of-stream so the muxer flushes its last fragment, waits up to
    /// `drain` for it, then shuts the pipeline down. Returns whether the end came through (the
    /// last fragment is out).
    pub fn stop(self, drain: Duration) -> bool {
        let deadline = std::time::Instant::now() + drain;
        self.pipeline.send_event(gst::event::Eos::new());
        let mut done = self.wait_for_eos(deadline - drain / 2);
        if done.is_none() {
            // A second camera that is gone or failed sends no end of stream, and the muxer waits
            // for it: its branch is ended at the muxer, so the first view's fragment comes out.
            // (Only now: a working camera's own end of stream lets its last frames in.)
            if let Some(pad) = self
                .pipeline
                .by_name(&format!("{SECOND_PREFIX}h264-caps"))
                .and_then(|e| e.static_pad("src"))
                .and_then(|p| p.peer())
            {
                pad.send_event(gst::event::Eos::new());
                done = self.wait_for_eos(deadline);
            }
        }
        // Drop sets the state to Null.
        done == Some(true)
    }

    /// Waits until `deadline` for the end of stream: `Some(true)` when it came, `Some(false)`
    /// when the first view or the output failed (no end will come), `None` at the deadline.
    /// The second view's errors (a failing source posts more than one) do not end the wait.
    fn wait_for_eos(&self, deadline: std::time::Instant) -> Option<bool> {
        let bus = self.pipeline.bus()?;
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            let msg = bus.timed_pop_filtered(
                gst::ClockTime::from_nseconds(left.as_nanos() as u64),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            )?;
            match msg.view() {
                gst::MessageView::Eos(_) => return Some(true),
                _ if source_name(&msg).starts_with(SECOND_PREFIX) => continue,
                _ => return Some(false),
            }
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Counts buffers leaving the source element.
fn count_frames(
    pipeline: &gst::Pipeline,
    fps: u32,
    counter: Arc<FrameCounter>,
) -> Result<(), CaptureError> {
    let pad = pipeline
        .by_name("source")
        .and_then(|s| s.static_pad("src"))
        .ok_or_else(|| CaptureError::Build("the source has no src pad".into()))?;
    let interval_ns = 1_000_000_000 / u64::from(fps.max(1));
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(buffer) = info.buffer() {
            counter.count(buffer.pts().map(|t| t.nseconds()), interval_ns);
        }
        gst::PadProbeReturn::Ok
    });
    Ok(())
}

/// Whether the sound source of `audio` delivers samples now: a short pipeline of the source, its
/// conversion and a fake sink, run until the first buffer (or an error, or `timeout`). Blocks.
/// Supervision uses it to notice that a missing microphone is back without disturbing the
/// running capture.
pub fn probe_audio(audio: &AudioSettings, timeout: Duration) -> Result<(), CaptureError> {
    crate::init()?;
    let pipeline = gst::Pipeline::with_name("neoflix-audio-probe");
    let mut chain = audio_chain(audio)?;
    chain.truncate(4); // source, convert, resample, caps: not the encoder
    chain.push(make("fakesink", "audio-probe-sink")?);
    pipeline
        .add_many(&chain)
        .map_err(|e| CaptureError::Build(e.to_string()))?;
    gst::Element::link_many(&chain).map_err(|e| CaptureError::Build(e.to_string()))?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    if let Some(pad) = pipeline
        .by_name("audio-caps")
        .and_then(|c| c.static_pad("src"))
    {
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            let _ = tx.try_send(());
            gst::PadProbeReturn::Remove
        });
    }
    let result = (|| {
        let bus = pipeline
            .bus()
            .ok_or_else(|| CaptureError::Build("no bus".into()))?;
        if let Err(e) = pipeline.set_state(gst::State::Playing) {
            return Err(bus
                .timed_pop_filtered(
                    gst::ClockTime::from_mseconds(500),
                    &[gst::MessageType::Error],
                )
                .map(|m| error_from_message(&m))
                .unwrap_or_else(|| CaptureError::Start(e.to_string())));
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if rx.try_recv().is_ok() {
                return Ok(());
            }
            if let Some(m) = bus.timed_pop_filtered(
                gst::ClockTime::from_mseconds(50),
                &[gst::MessageType::Error],
            ) {
                return Err(error_from_message(&m));
            }
            if std::time::Instant::now() >= deadline {
                return Err(CaptureError::Element {
                    element: "audio-source".into(),
                    message: format!("no sound within {} s", timeout.as_secs_f32()),
                    debug: None,
                });
            }
        }
    })();
    let _ = pipeline.set_state(gst::State::Null);
    result
}

/// Measures the sound where it is S16LE at the configured rate, before the encoder.
fn meter_audio(pipeline: &gst::Pipeline) -> Result<Arc<AudioMeter>, CaptureError> {
    let pad = pipeline
        .by_name("audio-caps")
        .and_then(|s| s.static_pad("src"))
        .ok_or_else(|| CaptureError::Build("the audio caps filter has no src pad".into()))?;
    let meter = Arc::new(AudioMeter::default());
    let m = meter.clone();
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(buffer) = info.buffer()
            && let Ok(map) = buffer.map_readable()
        {
            m.measure(buffer.pts().map(|t| t.nseconds()), map.as_slice());
        }
        gst::PadProbeReturn::Ok
    });
    Ok(meter)
}

fn source_name(msg: &gst::Message) -> String {
    msg.src()
        .map(|s| s.name().to_string())
        .unwrap_or_else(|| "pipeline".into())
}

fn error_from_message(msg: &gst::Message) -> CaptureError {
    match msg.view() {
        gst::MessageView::Error(e) => CaptureError::Element {
            element: source_name(msg),
            message: e.error().to_string(),
            debug: e.debug().map(|d| d.to_string()),
        },
        _ => CaptureError::Build("unexpected message".into()),
    }
}

/// Prefix of the names of the second camera's elements: an error they post is known to be the
/// second view's ([`CaptureError::part`]).
pub const SECOND_PREFIX: &str = "view2-";

/// What one video branch is built from: the first view's settings, or the second's with the
/// first's rate, fragment length and encoder.
struct Branch<'a> {
    /// Prefix of its elements' names (empty for the first view).
    prefix: &'a str,
    source: &'a Source,
    width: u32,
    height: u32,
    fps: u32,
    fragment_secs: u32,
    bitrate_kbps: u32,
    x264_preset: crate::X264Preset,
}

impl Branch<'_> {
    fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn make(&self, factory: &str, name: &str) -> Result<gst::Element, CaptureError> {
        make(factory, &self.name(name))
    }

    fn caps_filter(&self, name: &str, caps: gst::Caps) -> Result<gst::Element, CaptureError> {
        caps_filter(&self.name(name), caps)
    }

    /// Uncompressed I420 at the branch's size and rate: what x264 is fed (without `format`, it
    /// picks High 4:4:4, which browsers do not play).
    fn i420_caps(&self) -> gst::Caps {
        self.raw_caps(Memory::SystemI420)
    }

    /// Uncompressed frames at the branch's size and rate, in `memory`.
    fn raw_caps(&self, memory: Memory) -> gst::Caps {
        let (width, height) = (self.width as i32, self.height as i32);
        let framerate = gst::Fraction::new(self.fps as i32, 1);
        match memory {
            Memory::SystemI420 => gst::Caps::builder("video/x-raw")
                .field("format", "I420")
                .field("width", width)
                .field("height", height)
                .field("framerate", framerate)
                .build(),
            Memory::NvmmNv12 => gst::Caps::builder("video/x-raw")
                .features(["memory:NVMM"])
                .field("format", "NV12")
                .field("width", width)
                .field("height", height)
                .field("framerate", framerate)
                .build(),
        }
    }
}

fn caps_filter(name: &str, caps: gst::Caps) -> Result<gst::Element, CaptureError> {
    let f = make("capsfilter", name)?;
    f.set_property("caps", caps);
    Ok(f)
}

/// Whether the source delivers H.264 itself, passed through without an encoder.
fn camera_encodes(source: &Source) -> bool {
    matches!(
        source,
        Source::V4l2 {
            format: InputFormat::H264,
            ..
        } | Source::TestH264 { .. }
    )
}

/// The encoder a branch uses: passthrough for a camera with its own H.264, else `probed`.
fn encoder_of(source: &Source, probed: &Encoder) -> Encoder {
    if camera_encodes(source) {
        Encoder::Passthrough
    } else {
        probed.clone()
    }
}

/// Builds the whole pipeline. Element names (`source`, `decoder`, `encoder`, `muxer`, ...) are
/// what errors name; the second view's carry [`SECOND_PREFIX`].
fn build<F>(s: &CaptureSettings, encoder: &Encoder, sink: F) -> Result<gst::Pipeline, CaptureError>
where
    F: FnMut(Output) -> Result<(), String> + Send + 'static,
{
    let pipeline = gst::Pipeline::with_name("neoflix-capture");
    let first = Branch {
        prefix: "",
        source: &s.source,
        width: s.width,
        height: s.height,
        fps: s.fps,
        fragment_secs: s.fragment_secs,
        bitrate_kbps: s.bitrate_kbps,
        x264_preset: s.x264_preset,
    };
    let mut chain = video_chain(&first, encoder)?;
    let frame = Duration::from_secs(1) / s.fps.max(1);
    let mut fragment = Duration::from_secs(u64::from(s.fragment_secs));
    if s.second.is_some()
        && let Some(pad) = chain.last().and_then(|e| e.static_pad("src"))
    {
        delay_keyframes(&pad, frame);
        // The next boundary is counted from the delayed keyframe (at 1 fps with 1 s fragments
        // there is no room: fragments then run a frame long).
        if fragment > frame {
            fragment -= frame;
        }
    }
    let mux = make("isofmp4mux", "muxer")?;
    mux.set_property("fragment-duration", fragment.as_nanos() as u64);
    chain.push(mux.clone());

    let appsink = gst_app::AppSink::builder()
        .name("sink")
        .sync(false)
        .buffer_list(true)
        .max_buffers(4)
        .build();
    appsink.set_callbacks(appsink_callbacks(sink));
    chain.push(appsink.upcast());

    pipeline
        .add_many(&chain)
        .map_err(|e| CaptureError::Build(e.to_string()))?;
    gst::Element::link_many(&chain).map_err(|e| CaptureError::Build(e.to_string()))?;
    // The muxer puts video tracks before sound: the first view is track 1, then the second view,
    // then the sound.
    let mut branches = Vec::new();
    if let Some(a) = &s.audio {
        branches.push(("the sound", audio_chain(a)?));
    }
    if let Some(v) = &s.second {
        let second = Branch {
            prefix: SECOND_PREFIX,
            source: &v.source,
            width: v.width,
            height: v.height,
            bitrate_kbps: v.bitrate_kbps,
            ..first
        };
        let probed = match encoder {
            Encoder::Passthrough => probe_encoder(s.encoder.as_ref())?,
            e => e.clone(),
        };
        branches.push((
            "the second view",
            video_chain(&second, &encoder_of(&v.source, &probed))?,
        ));
    }
    for (what, branch) in branches {
        pipeline
            .add_many(&branch)
            .map_err(|e| CaptureError::Build(e.to_string()))?;
        gst::Element::link_many(&branch).map_err(|e| CaptureError::Build(e.to_string()))?;
        if let Some(last) = branch.last() {
            last.link(&mux)
                .map_err(|e| CaptureError::Build(format!("linking {what} to the muxer: {e}")))?;
        }
    }
    Ok(pipeline)
}

/// Moves the muxer's keyframe requests passing upstream through `pad` one frame later.
///
/// The muxer ends a fragment at the first view's keyframe at or after the boundary, and takes
/// of the second view only keyframe intervals that end by then, yet only once one ends at or
/// after the boundary. Two cameras tick independently: asked for the same moment, the second
/// view's keyframe comes after the first's half the time, its interval misses the fragment and
/// the view lags a whole fragment behind. With the first view asked a frame later, the second
/// view's keyframe (the first frame at or after the boundary) always comes before the first
/// view's, so both views start every fragment within two frames of each other.
fn delay_keyframes(pad: &gst::Pad, frame: Duration) {
    let by = frame.as_nanos() as u64;
    pad.add_probe(gst::PadProbeType::EVENT_UPSTREAM, move |_, info| {
        let moved = info.event().and_then(|e| {
            let s = e.structure()?;
            if e.type_() != gst::EventType::CustomUpstream || s.name() != "GstForceKeyUnit" {
                return None;
            }
            let at = s.get::<u64>("running-time").ok()?;
            if at == u64::MAX {
                // "As soon as possible": nothing to move.
                return None;
            }
            let mut s = s.to_owned();
            s.set("running-time", at.saturating_add(by));
            Some(gst::event::CustomUpstream::new(s))
        });
        if let Some(event) = moved {
            info.data = Some(gst::PadProbeData::Event(event));
        }
        gst::PadProbeReturn::Ok
    });
}

/// Makes white the luma of each I420 frame passing `pad` whose time span holds a whole second
/// of running time (the frame in which the test tone ticks); `luma` is the luma plane's size.
fn flash_each_second(pad: &gst::Pad, luma: u64) {
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let Some(buffer) = info.buffer_mut() else {
            return gst::PadProbeReturn::Ok;
        };
        let (Some(pts), Some(duration)) = (buffer.pts(), buffer.duration()) else {
            return gst::PadProbeReturn::Ok;
        };
        let (start, end) = (pts.nseconds(), pts.nseconds() + duration.nseconds());
        let second = 1_000_000_000;
        // The frame spans [start, end): it holds a whole second when one lies in that span.
        let flash = start % second == 0 || start / second != (end - 1) / second;
        if flash && let Ok(mut map) = buffer.make_mut().map_writable() {
            let n = usize::try_from(luma).unwrap_or(usize::MAX).min(map.len());
            map[..n].fill(235);
        }
        gst::PadProbeReturn::Ok
    });
}

/// One view's branch, camera to H.264 in the muxer's stream format.
fn video_chain(b: &Branch<'_>, encoder: &Encoder) -> Result<Vec<gst::Element>, CaptureError> {
    let fps = b.fps as i32;
    // Keyframes come from the muxer's force-keyunit requests at each fragment boundary, which
    // follow the clock. The encoder's own interval is only a safety net, set beyond one fragment:
    // counted in frames, it drifts from the clock whenever a camera drops frames (low light, a
    // busy CPU), and every drifted keyframe would split a fragment in two.
    let keyint = 2 * b.fps * b.fragment_secs;
    let framerate = gst::Fraction::new(fps, 1);
    let mut chain: Vec<gst::Element> = Vec::new();
    let conv = crate::board::conversion(encoder, |f| gst::ElementFactory::find(f).is_some())?;

    match b.source {
        Source::Test => {
            let src = b.make("videotestsrc", "source")?;
            src.set_property("is-live", true);
            if !b.prefix.is_empty() {
                // Told apart from the first view at a glance.
                src.set_property_from_str("pattern", "ball");
            }
            chain.push(src);
        }
        Source::TestSync => {
            let src = b.make("videotestsrc", "source")?;
            src.set_property("is-live", true);
            src.set_property_from_str("pattern", "black");
            chain.push(src);
            let caps = b.caps_filter("camera-caps", b.i420_caps())?;
            if let Some(pad) = caps.static_pad("src") {
                // I420's luma rows are padded to 4 bytes.
                let stride = u64::from(b.width).div_ceil(4) * 4;
                flash_each_second(&pad, stride * u64::from(b.height));
            }
            chain.push(caps);
        }
        Source::TestH264 { keyframe_secs } => {
            let src = b.make("videotestsrc", "source")?;
            src.set_property("is-live", true);
            chain.push(src);
            chain.push(b.caps_filter("camera-caps", b.i420_caps())?);
            // The "camera's" encoder: part of the camera, so the muxer's keyframe requests never
            // reach it, as they never reach a USB camera's.
            let enc = b.make("x264enc", "camera-encoder")?;
            enc.set_property_from_str("tune", "zerolatency");
            enc.set_property_from_str("speed-preset", "ultrafast");
            enc.set_property("key-int-max", b.fps * keyframe_secs);
            enc.set_property("bitrate", b.bitrate_kbps);
            enc.set_property("option-string", "scenecut=0");
            if let Some(pad) = enc.static_pad("src") {
                pad.add_probe(gst::PadProbeType::EVENT_UPSTREAM, |_, info| {
                    let keyframe_request = info.event().is_some_and(|e| {
                        e.type_() == gst::EventType::CustomUpstream
                            && e.structure().is_some_and(|s| s.name() == "GstForceKeyUnit")
                    });
                    if keyframe_request {
                        gst::PadProbeReturn::Drop
                    } else {
                        gst::PadProbeReturn::Ok
                    }
                });
            }
            chain.push(enc);
        }
        Source::V4l2 { device, format } => {
            let src = b.make("v4l2src", "source")?;
            src.set_property("device", device.to_string_lossy().to_string());
            chain.push(src);
            let media = match format {
                InputFormat::Raw => "video/x-raw",
                InputFormat::Mjpeg => "image/jpeg",
                InputFormat::H264 => "video/x-h264",
            };
            chain.push(
                b.caps_filter(
                    "camera-caps",
                    gst::Caps::builder(media)
                        .field("width", b.width as i32)
                        .field("height", b.height as i32)
                        .field("framerate", framerate)
                        .build(),
                )?,
            );
            if *format == InputFormat::Mjpeg {
                // A board's hardware decoder is the encoder's part: the fallback to x264
                // replaces it with the CPU's (crate::board); the CPU's own is the camera's
                // (a corrupt picture from it).
                let name = if conv.jpeg_decoder == "jpegdec" {
                    "decoder"
                } else {
                    "hw-decoder"
                };
                chain.push(b.make(conv.jpeg_decoder, name)?);
            }
        }
    }

    if *encoder != Encoder::Passthrough {
        chain.push(b.make(conv.converter, "convert")?);
        chain.push(b.caps_filter("raw-caps", b.raw_caps(conv.memory))?);
        let q = b.make("queue", "encode-queue")?;
        // Bounded and leaky-free: a slow encoder backs up to the source, which drops frames
        // itself, instead of this queue growing.
        q.set_property("max-size-buffers", 2 * b.fps);
        q.set_property("max-size-bytes", 0u32);
        q.set_property("max-size-time", 0u64);
        chain.push(q);
        let enc = b.make(encoder.factory(), "encoder")?;
        match encoder {
            Encoder::X264 => {
                enc.set_property_from_str("tune", "zerolatency");
                enc.set_property_from_str("speed-preset", b.x264_preset.nick());
                enc.set_property("key-int-max", keyint);
                enc.set_property("bitrate", b.bitrate_kbps);
                // The test pattern (and a cut in the room) makes x264 insert scene-cut keyframes,
                // which would split fragments unevenly.
                enc.set_property("option-string", "scenecut=0");
            }
            Encoder::V4l2 => {
                let controls = gst::Structure::builder("controls")
                    .field("h264_i_frame_period", keyint as i32)
                    .field("video_bitrate", (b.bitrate_kbps * 1000) as i32)
                    .field("repeat_sequence_header", 1i32)
                    .build();
                enc.set_property("extra-controls", controls);
            }
            Encoder::NvV4l2 => {
                enc.set_property("iframeinterval", keyint);
                enc.set_property("bitrate", b.bitrate_kbps * 1000);
                enc.set_property("insert-sps-pps", true);
            }
            Encoder::Passthrough => unreachable!("checked above"),
        }
        chain.push(enc);
        if *encoder == Encoder::V4l2 {
            // The Pi's encoder needs a level that fits the frame size, or it refuses to start.
            chain.push(
                b.caps_filter(
                    "encoder-caps",
                    gst::Caps::builder("video/x-h264")
                        .field("level", "4")
                        .build(),
                )?,
            );
        }
    }

    chain.push(b.make("h264parse", "parser")?);
    chain.push(
        b.caps_filter(
            "h264-caps",
            gst::Caps::builder("video/x-h264")
                .field("stream-format", "avc")
                .field("alignment", "au")
                .build(),
        )?,
    );
    Ok(chain)
}

/// The sound's branch, source to Opus encoder. Its elements are named `audio-*`, so an error
/// they post is known to be the sound's ([`CaptureError::part`]).
fn audio_chain(a: &AudioSettings) -> Result<Vec<gst::Element>, CaptureError> {
    let src = match &a.source {
        AudioSource::Test => {
            let src = make("audiotestsrc", "audio-source")?;
            src.set_property("is-live", true);
            src.set_property_from_str("wave", "ticks");
            src.set_property("volume", 0.5f64);
            src
        }
        AudioSource::Alsa { device } => {
            let src = make("alsasrc", "audio-source")?;
            src.set_property("device", device);
            // The pipeline keeps the system clock, which fragment boundaries and the video
            // follow; the sound card's clock is slaved to it instead of driving it.
            src.set_property("provide-clock", false);
            src
        }
    };
    let caps = caps_filter(
        "audio-caps",
        gst::Caps::builder("audio/x-raw")
            .field("format", "S16LE")
            .field("layout", "interleaved")
            .field("rate", a.rate as i32)
            .field("channels", a.channels as i32)
            .build(),
    )?;
    let queue = make("queue", "audio-queue")?;
    // Bounded by time: a stalled encoder backs up to the source, which drops samples itself.
    queue.set_property("max-size-buffers", 0u32);
    queue.set_property("max-size-bytes", 0u32);
    queue.set_property("max-size-time", 2_000_000_000u64);
    let enc = make("opusenc", "audio-encoder")?;
    enc.set_property("bitrate", (a.bitrate_kbps * 1000) as i32);
    Ok(vec![
        src,
        make("audioconvert", "audio-convert")?,
        make("audioresample", "audio-resample")?,
        caps,
        queue,
        enc,
    ])
}

fn appsink_callbacks<F>(mut sink: F) -> gst_app::AppSinkCallbacks
where
    F: FnMut(Output) -> Result<(), String> + Send + 'static,
{
    gst_app::AppSinkCallbacks::builder()
        .new_sample(move |appsink| {
            let sample = appsink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
            // The pipeline's running time now, to place the fragment's end on `Instant`'s clock.
            let running = appsink
                .clock()
                .map(|c| c.time())
                .zip(appsink.base_time())
                .and_then(|(now, base)| now.checked_sub(base))
                .map(|r| Duration::from_nanos(r.nseconds()));
            let outputs = match split_sample(&sample, running, Instant::now()) {
                Ok(o) => o,
                Err(msg) => {
                    gst::element_error!(appsink, gst::StreamError::Format, ("{}", msg));
                    return Err(gst::FlowError::Error);
                }
            };
            for out in outputs {
                if let Err(msg) = sink(out) {
                    gst::element_error!(appsink, gst::ResourceError::Write, ("{}", msg));
                    return Err(gst::FlowError::Error);
                }
            }
            Ok(gst::FlowSuccess::Ok)
        })
        .build()
}

/// Splits one muxer sample into an optional init segment and an optional fragment. `running`
/// is the pipeline's running time at `now`, when known.
fn split_sample(
    sample: &gst::Sample,
    running: Option<Duration>,
    now: Instant,
) -> Result<Vec<Output>, String> {
    let list = sample
        .buffer_list()
        .ok_or("muxer output without a buffer list")?;
    let mut outputs = Vec::with_capacity(2);
    let mut rest = list.iter().peekable();
    if let Some(first) = rest.peek()
        && first
            .flags()
            .contains(gst::BufferFlags::DISCONT | gst::BufferFlags::HEADER)
    {
        let map = first
            .map_readable()
            .map_err(|_| "unreadable init segment")?;
        outputs.push(Output::Init {
            data: map.as_slice().to_vec(),
        });
        rest.next();
    }
    let Some(head) = rest.peek() else {
        return Ok(outputs);
    };
    // The fragment header buffer (moof) carries the fragment's timing.
    let segment = sample
        .segment()
        .and_then(|s| s.downcast_ref::<gst::ClockTime>().cloned());
    let running_pts = head
        .pts()
        .and_then(|p| segment.as_ref().and_then(|s| s.to_running_time(p)));
    let pts = running_pts.unwrap_or(gst::ClockTime::ZERO);
    let duration = head.duration().unwrap_or(gst::ClockTime::ZERO);
    let bufs: Vec<&gst::BufferRef> = rest.collect();
    let mut data = Vec::with_capacity(bufs.iter().map(|b| b.size()).sum());
    for b in bufs {
        let map = b.map_readable().map_err(|_| "unreadable fragment buffer")?;
        data.extend_from_slice(map.as_slice());
    }
    let pts = Duration::from_nanos(pts.nseconds());
    let duration = Duration::from_nanos(duration.nseconds());
    // Without a clock or a timestamp (neither happens while playing) the fragment is taken to
    // end now: a stop then waits for the next one, never for a fragment long gone.
    let late = match (running, running_pts) {
        (Some(r), Some(_)) => r.saturating_sub(pts + duration),
        _ => Duration::ZERO,
    };
    outputs.push(Output::Fragment {
        data,
        pts,
        duration,
        ends: now.checked_sub(late).unwrap_or(now),
    });
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::View;
    use std::sync::mpsc;

    fn small() -> CaptureSettings {
        CaptureSettings {
            width: 320,
            height: 240,
            fps: 10,
            bitrate_kbps: 300,
            ..Default::default()
        }
    }

    #[test]
    fn test_source_yields_an_init_segment_then_keyframe_aligned_fragments() {
        let (tx, rx) = mpsc::sync_channel(64);
        let cap = Capture::start(&small(), move |o| tx.send(o).map_err(|e| e.to_string()))
            .expect("pipeline starts");
        assert_eq!(cap.encoder().factory(), "x264enc");
        let first = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        let Output::Init { data } = first else {
            panic!("first output is not the init segment: {first:?}")
        };
        assert_eq!(&data[4..8], b"ftyp");
        assert!(data.windows(4).any(|w| w == b"moov"));
        let mut last_pts = None;
        for _ in 0..3 {
            match rx.recv_timeout(Duration::from_secs(20)).unwrap() {
                Output::Fragment {
                    data,
                    pts,
                    duration,
                    ends,
                } => {
                    // Its end is placed on this machine's clock: passed, and not by hours
                    // (a clock mix-up), only by the muxer's few frames of delay.
                    let late = Instant::now().checked_duration_since(ends);
                    assert!(late.is_some_and(|l| l < Duration::from_secs(5)), "{late:?}");
                    // isofmp4mux writes a `styp` box before each `moof`.
                    assert!(
                        data[..64].windows(4).any(|w| w == b"moof"),
                        "{:?}",
                        &data[..16]
                    );
                    assert_eq!(duration, Duration::from_secs(1));
                    if let Some(prev) = last_pts {
                        assert_eq!(pts, prev + Duration::from_secs(1));
                    }
                    last_pts = Some(pts);
                }
                other => panic!("expected a fragment, got {other:?}"),
            }
        }
        cap.stop(Duration::from_secs(2));
    }

    /// Each track fragment's start, seconds, by handler.
    fn starts(info: &neoflix_mp4::InitInfo, fragment: &[u8]) -> Vec<(neoflix_mp4::Handler, f64)> {
        neoflix_mp4::parse_fragment(info, fragment, 0)
            .unwrap()
            .iter()
            .map(|t| {
                let track = info.track(t.track_id).unwrap();
                let first = t.samples.first().expect("a track fragment with samples");
                let pts = first.decode_time as f64 + f64::from(first.composition_offset);
                (track.handler, pts / f64::from(track.timescale))
            })
            .collect()
    }

    /// A fragment's end is its last timestamp placed on `Instant`'s clock by the running time
    /// now: what a stop is compared with. Without a timestamp it is taken to end now, so that a
    /// stop waits for the next fragment rather than for one long gone.
    #[test]
    fn a_fragments_end_is_placed_on_this_machines_clock() {
        gst::init().unwrap();
        let sample = |pts: Option<gst::ClockTime>| {
            let mut header = gst::Buffer::from_slice(b"moof".to_vec());
            {
                let h = header.get_mut().unwrap();
                h.set_pts(pts);
                h.set_duration(gst::ClockTime::from_seconds(1));
            }
            let mut list = gst::BufferList::new();
            {
                let l = list.get_mut().unwrap();
                l.add(header);
                l.add(gst::Buffer::from_slice(b"mdat".to_vec()));
            }
            let segment = gst::FormattedSegment::<gst::ClockTime>::new();
            gst::Sample::builder()
                .buffer_list(&list)
                .segment(&segment)
                .build()
        };
        let now = Instant::now();
        let running = Some(Duration::from_millis(2_500));
        let end = |s: &gst::Sample| match split_sample(s, running, now).unwrap().pop() {
            Some(Output::Fragment { ends, .. }) => ends,
            other => panic!("{other:?}"),
        };
        // From 1 s to 2 s of running time, handed out at 2.5 s: it ended 0.5 s ago.
        let ends = end(&sample(Some(gst::ClockTime::from_seconds(1))));
        assert_eq!(now - ends, Duration::from_millis(500));
        assert_eq!(end(&sample(None)), now);
    }

    #[test]
    fn sound_is_an_opus_track_in_the_same_fragments_starting_with_the_picture() {
        let settings = CaptureSettings {
            audio: Some(AudioSettings {
                source: AudioSource::Test,
                channels: 1,
                rate: 48_000,
                bitrate_kbps: 32,
            }),
            ..small()
        };
        let (tx, rx) = mpsc::sync_channel(64);
        let cap = Capture::start(&settings, move |o| tx.send(o).map_err(|e| e.to_string()))
            .expect("pipeline starts");
        let Output::Init { data } = rx.recv_timeout(Duration::from_secs(20)).unwrap() else {
            panic!("no init segment first")
        };
        let info = neoflix_mp4::InitInfo::parse(&data).unwrap();
        let mime = info.mime_codecs().unwrap();
        assert!(
            mime.starts_with("video/mp4; codecs=\"avc1.") && mime.ends_with(",opus\""),
            "{mime}"
        );
        assert_eq!(info.tracks[1].handler, neoflix_mp4::Handler::Audio);
        let frame = 1.0 / f64::from(settings.fps);
        for _ in 0..3 {
            let Output::Fragment { data, .. } = rx.recv_timeout(Duration::from_secs(20)).unwrap()
            else {
                panic!("expected a fragment")
            };
            let s = starts(&info, &data);
            assert_eq!(s.len(), 2, "both tracks in every fragment: {s:?}");
            let (video, audio) = (s[0].1, s[1].1);
            assert!(
                (video - audio).abs() <= frame,
                "sound starts {:.4} s from the picture: {s:?}",
                audio - video
            );
        }
        let stats = cap.audio_stats().expect("a meter");
        assert!(stats.buffers > 0);
        // The test source ticks at half volume: about -6 dBFS at its peak.
        let peak = stats.peak_dbfs.expect("a whole second measured");
        assert!((-12.0..=0.0).contains(&peak), "{peak}");
        cap.stop(Duration::from_secs(2));
    }

    #[test]
    fn a_second_camera_is_a_second_video_track_cut_on_the_same_keyframes() {
        let settings = CaptureSettings {
            audio: Some(AudioSettings {
                source: AudioSource::Test,
                channels: 1,
                rate: 48_000,
                bitrate_kbps: 32,
            }),
            second: Some(View {
                source: Source::Test,
                width: 160,
                height: 120,
                bitrate_kbps: 200,
            }),
            ..small()
        };
        let (tx, rx) = mpsc::sync_channel(64);
        let cap = Capture::start(&settings, move |o| tx.send(o).map_err(|e| e.to_string()))
            .expect("pipeline starts");
        let Output::Init { data } = rx.recv_timeout(Duration::from_secs(20)).unwrap() else {
            panic!("no init segment first")
        };
        let info = neoflix_mp4::InitInfo::parse(&data).unwrap();
        use neoflix_mp4::Handler::{Audio, Video};
        let handlers: Vec<_> = info.tracks.iter().map(|t| t.handler).collect();
        assert_eq!(handlers, [Video, Video, Audio]);
        let frame = 1.0 / f64::from(settings.fps);
        for _ in 0..6 {
            let Output::Fragment { data, duration, .. } =
                rx.recv_timeout(Duration::from_secs(20)).unwrap()
            else {
                panic!("expected a fragment")
            };
            assert!(
                duration.abs_diff(Duration::from_secs(1)) < Duration::from_millis(60),
                "{duration:?}"
            );
            let trafs = neoflix_mp4::parse_fragment(&info, &data, 0).unwrap();
            assert_eq!(trafs.len(), 3, "every track in every fragment");
            for t in trafs.iter().filter(|t| t.track_id != info.tracks[2].id) {
                assert!(
                    t.samples.first().is_some_and(|s| s.sync),
                    "track {} does not start its fragment on a keyframe",
                    t.track_id
                );
            }
            let s = starts(&info, &data);
            let (first, second) = (s[0].1, s[1].1);
            assert!(
                (first - second).abs() <= 2.0 * frame + 1e-6,
                "the views start {:.4} s apart: {s:?}",
                second - first
            );
        }
        cap.stop(Duration::from_secs(2));
    }

    #[test]
    fn a_stop_lets_the_last_fragment_out_when_the_second_camera_has_gone_silent() {
        stop_with_a_dead_second_camera(false);
    }

    #[test]
    fn a_stop_lets_the_last_fragment_out_when_the_second_camera_has_failed() {
        stop_with_a_dead_second_camera(true);
    }

    fn stop_with_a_dead_second_camera(failed: bool) {
        let settings = CaptureSettings {
            second: Some(View {
                source: Source::Test,
                width: 160,
                height: 120,
                bitrate_kbps: 200,
            }),
            ..small()
        };
        let (tx, rx) = mpsc::sync_channel(64);
        let cap = Capture::start(&settings, move |o| tx.send(o).map_err(|e| e.to_string()))
            .expect("pipeline starts");
        for _ in 0..2 {
            rx.recv_timeout(Duration::from_secs(20)).unwrap();
        }
        // The second camera stops delivering, as an unplugged one does: no error, no end.
        let pad = cap
            .pipeline
            .by_name("view2-source")
            .and_then(|e| e.static_pad("src"))
            .unwrap();
        pad.add_probe(gst::PadProbeType::DATA_DOWNSTREAM, |_, _| {
            gst::PadProbeReturn::Drop
        });
        std::thread::sleep(Duration::from_millis(700));
        if failed {
            // It fails as a source does: its own error, then the stream's.
            let src = cap.pipeline.by_name("view2-source").unwrap();
            for what in [
                "Could not read from the device",
                "Internal data stream error",
            ] {
                gst::element_error!(src, gst::ResourceError::Read, ("{}", what));
            }
            match cap.next_event(Duration::from_secs(5)) {
                Some(CaptureEvent::Error(e)) => assert_eq!(e.part(), crate::Part::SecondView),
                other => panic!("{other:?}"),
            }
        }
        while rx.try_recv().is_ok() {}
        assert!(
            cap.stop(Duration::from_secs(5)),
            "the end of stream came through"
        );
        // The first view's fragment in progress came out at the stop.
        let last = rx.try_iter().last();
        assert!(
            matches!(last, Some(Output::Fragment { .. })),
            "no last fragment: {last:?}"
        );
    }

    #[test]
    fn a_failing_second_camera_is_an_error_of_the_second_view() {
        let settings = CaptureSettings {
            second: Some(View {
                source: Source::V4l2 {
                    device: "/dev/neoflix-no-such-camera".into(),
                    format: InputFormat::Raw,
                },
                width: 320,
                height: 240,
                bitrate_kbps: 300,
            }),
            ..small()
        };
        let e = match Capture::start(&settings, |_| Ok(())) {
            Err(e) => e,
            Ok(cap) => loop {
                match cap.next_event(Duration::from_secs(10)) {
                    Some(CaptureEvent::Error(e)) => break e,
                    Some(CaptureEvent::Eos) => panic!("end of stream instead of an error"),
                    None => {}
                }
            },
        };
        assert_eq!(e.part(), crate::Part::SecondView, "{e}");
        assert!(e.summary().contains("view2-source"), "{}", e.summary());
    }

    #[test]
    fn an_absent_microphone_is_an_error_of_the_sound() {
        let settings = CaptureSettings {
            audio: Some(AudioSettings {
                source: AudioSource::Alsa {
                    device: "hw:CARD=NoSuchCard,DEV=0".into(),
                },
                channels: 1,
                rate: 48_000,
                bitrate_kbps: 32,
            }),
            ..small()
        };
        let err = match Capture::start(&settings, |_| Ok(())) {
            Err(e) => e,
            Ok(cap) => match cap.next_event(Duration::from_secs(5)) {
                Some(CaptureEvent::Error(e)) => e,
                other => panic!("no error for a missing microphone: {other:?}"),
            },
        };
        assert_eq!(err.part(), crate::Part::Audio, "{err}");
        let probed =
            probe_audio(settings.audio.as_ref().unwrap(), Duration::from_secs(2)).unwrap_err();
        assert_eq!(probed.part(), crate::Part::Audio, "{probed}");
        let test_tone = AudioSettings {
            source: AudioSource::Test,
            ..settings.audio.clone().unwrap()
        };
        probe_audio(&test_tone, Duration::from_secs(5)).expect("the test tone delivers samples");
    }

    #[test]
    fn a_camera_with_its_own_h264_sets_the_fragment_length_by_its_keyframe_interval() {
        let settings = CaptureSettings {
            source: Source::TestH264 { keyframe_secs: 2 },
            ..small()
        };
        let (tx, rx) = mpsc::sync_channel(64);
        let cap = Capture::start(&settings, move |o| tx.send(o).map_err(|e| e.to_string()))
            .expect("pipeline starts");
        assert_eq!(cap.encoder(), &Encoder::Passthrough);
        let mut durations = Vec::new();
        while durations.len() < 3 {
            if let Output::Fragment { duration, .. } =
                rx.recv_timeout(Duration::from_secs(20)).unwrap()
            {
                durations.push(duration);
            }
        }
        // The muxer asks for a keyframe each second; the camera keeps to its own 2 s.
        assert_eq!(durations, [Duration::from_secs(2); 3]);
        cap.stop(Duration::from_secs(2));
    }

    #[test]
    fn missing_v4l2_device_is_a_start_error_naming_the_device() {
        let s = CaptureSettings {
            source: Source::V4l2 {
                device: "/dev/video-does-not-exist".into(),
                format: InputFormat::Raw,
            },
            ..small()
        };
        let err = match Capture::start(&s, |_| Ok(())) {
            Err(e) => e.to_string(),
            Ok(cap) => {
                // Some GStreamer versions fail asynchronously, on the bus.
                match cap.next_event(Duration::from_secs(5)) {
                    Some(CaptureEvent::Error(e)) => e.to_string(),
                    other => panic!("no error for a missing device: {other:?}"),
                }
            }
        };
        assert!(err.contains("video-does-not-exist"), "{err}");
    }

    #[test]
    fn a_named_but_absent_encoder_is_refused() {
        let err = probe_encoder(Some(&Encoder::NvV4l2)).unwrap_err();
        assert!(err.to_string().contains("nvv4l2h264enc"), "{err}");
    }
}

#[cfg(test)]
mod frame_tests {
    use super::{AudioMeter, FrameCounter, SILENCE_DBFS, dbfs, peak_s16le};

    fn s16(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    #[test]
    fn the_meter_reports_the_peak_of_the_last_whole_second() {
        assert_eq!(peak_s16le(&s16(&[3, -32768, 7])), 32768);
        assert_eq!(dbfs(32768), 0.0);
        assert_eq!(dbfs(16384), -6.0);
        assert_eq!(dbfs(0), SILENCE_DBFS);
        let m = AudioMeter::default();
        let ms = 1_000_000u64;
        m.measure(Some(0), &s16(&[100, -16384]));
        m.measure(Some(500 * ms), &s16(&[3000]));
        assert_eq!(m.stats().peak_dbfs, None, "no whole second yet");
        m.measure(Some(1000 * ms), &s16(&[0, 1]));
        assert_eq!(m.stats().peak_dbfs, Some(-6.0));
        m.measure(Some(2000 * ms), &s16(&[0]));
        assert_eq!(m.stats().peak_dbfs, Some(dbfs(1)));
        assert_eq!(m.stats().buffers, 4);
    }

    #[test]
    fn gaps_in_timestamps_count_as_dropped_frames() {
        let c = FrameCounter::default();
        let i = 33_333_333;
        for n in [0u64, 1, 2, 5, 6, 7] {
            c.count(Some(n * i + (n % 2) * 2_000_000), i);
        }
        c.count(None, i);
        let s = c.stats();
        assert_eq!((s.frames, s.dropped), (7, 2));
    }
}
