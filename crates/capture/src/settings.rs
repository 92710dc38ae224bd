//! What a capture pipeline is built from.

use std::path::PathBuf;

/// Where frames come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// GStreamer's `videotestsrc`, live: runs on any machine (tests, demo).
    Test,
    /// A black picture that turns white for the one frame in which each whole second of the
    /// pipeline's clock falls: with the test tone (a tick each second) it is a clapperboard, so
    /// sound and picture can be checked against each other in what a player decodes.
    TestSync,
    /// The test pattern delivered as a UVC camera with its own H.264 encoder delivers it: encoded
    /// with a fixed keyframe interval of its own (which ignores the muxer's requests) and passed
    /// through, so fragments follow that interval.
    TestH264 {
        /// The "camera's" keyframe interval, in seconds.
        keyframe_secs: u32,
    },
    /// A V4L2 (UVC or CSI bridge) camera.
    V4l2 {
        /// Device node, e.g. `/dev/video0`.
        device: PathBuf,
        /// What the camera is asked to deliver.
        format: InputFormat,
    },
}

/// The pixel format asked of a V4L2 camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// Uncompressed frames (YUYV, NV12, ...), converted to I420 for the encoder.
    Raw,
    /// Motion JPEG, decoded before encoding (most USB webcams above 720p30).
    Mjpeg,
    /// The camera encodes H.264 itself: passed through, no encoder used.
    H264,
}

/// Which H.264 encoder to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoder {
    /// NVIDIA Jetson NVENC.
    NvV4l2,
    /// Raspberry Pi 4 V4L2 M2M encoder.
    V4l2,
    /// Software x264 (Pi 5, Jetson Orin Nano, x86).
    X264,
    /// No encoder: the camera already delivers H.264.
    Passthrough,
}

impl Encoder {
    /// The GStreamer factory name.
    pub fn factory(&self) -> &'static str {
        match self {
            Encoder::NvV4l2 => "nvv4l2h264enc",
            Encoder::V4l2 => "v4l2h264enc",
            Encoder::X264 => "x264enc",
            Encoder::Passthrough => "passthrough",
        }
    }

    /// Parses a factory name as written in the config.
    pub fn from_factory(name: &str) -> Option<Self> {
        Some(match name {
            "nvv4l2h264enc" => Encoder::NvV4l2,
            "v4l2h264enc" => Encoder::V4l2,
            "x264enc" => Encoder::X264,
            _ => return None,
        })
    }

    /// Probe order: hardware first.
    pub const PROBE_ORDER: [Encoder; 3] = [Encoder::NvV4l2, Encoder::V4l2, Encoder::X264];
}

/// x264's speed preset: how much CPU it spends per frame. The slower presets beyond `Medium`
/// cannot keep up with live video on a room box, so they are not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum X264Preset {
    /// Least CPU, largest files at a given quality.
    Ultrafast,
    /// Between `Ultrafast` and `Veryfast`.
    Superfast,
    /// The default.
    Veryfast,
    /// A little more CPU than `Veryfast`.
    Faster,
    /// More CPU again.
    Fast,
    /// The slowest offered.
    Medium,
}

impl X264Preset {
    /// x264enc's name for it (its `speed-preset` property).
    pub fn nick(self) -> &'static str {
        match self {
            X264Preset::Ultrafast => "ultrafast",
            X264Preset::Superfast => "superfast",
            X264Preset::Veryfast => "veryfast",
            X264Preset::Faster => "faster",
            X264Preset::Fast => "fast",
            X264Preset::Medium => "medium",
        }
    }
}

/// Everything the pipeline is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSettings {
    /// Frame source.
    pub source: Source,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// Fragment length in seconds; each fragment starts on a keyframe requested on time.
    pub fragment_secs: u32,
    /// Encoder named in the config; `None` probes.
    pub encoder: Option<Encoder>,
    /// Target bitrate in kbit/s.
    pub bitrate_kbps: u32,
    /// x264 speed preset, used only by x264enc.
    pub x264_preset: X264Preset,
    /// Sound, muxed into the same fragments; `None`: a silent recording.
    pub audio: Option<AudioSettings>,
    /// A second camera, muxed as a second video track into the same fragments on the same
    /// clock; `None`: one view.
    pub second: Option<View>,
}

/// A second camera: its own source, size and bitrate; the frame rate, fragment length and
/// encoder are the first view's, so both tracks are cut on the same keyframe requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Frame source.
    pub source: Source,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Target bitrate in kbit/s.
    pub bitrate_kbps: u32,
}

/// Where sound comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioSource {
    /// GStreamer's `audiotestsrc`, live: a short tick at every whole second of the pipeline's
    /// clock, so sound and picture can be checked against each other.
    Test,
    /// An ALSA capture device.
    Alsa {
        /// The ALSA name, e.g. `hw:CARD=Mic,DEV=0` or `default`.
        device: String,
    },
}

/// How sound is captured and encoded (Opus).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioSettings {
    /// Sound source.
    pub source: AudioSource,
    /// 1 (mono) or 2.
    pub channels: u32,
    /// Samples per second: one of Opus' rates (8, 12, 16, 24 or 48 kHz).
    pub rate: u32,
    /// Opus target bitrate in kbit/s.
    pub bitrate_kbps: u32,
}

impl AudioSettings {
    /// The device, as the status names it.
    pub fn device_name(&self) -> String {
        match &self.source {
            AudioSource::Test => "test".into(),
            AudioSource::Alsa { device } => device.clone(),
        }
    }
}

impl Default for CaptureSettings {
    fn default() -> Self {
        Self {
            source: Source::Test,
            width: 1280,
            height: 720,
            fps: 30,
            fragment_secs: 1,
            encoder: None,
            bitrate_kbps: 4000,
            x264_preset: X264Preset::Veryfast,
            audio: None,
            second: None,
        }
    }
}
