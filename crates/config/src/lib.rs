//! `neoflixd.toml`: the room daemon's configuration, read strictly.
//!
//! [`load`] reads a file, [`parse`] a string. Every problem is collected before anything is
//! refused, so an installer fixes a config in one pass: unknown options, wrong types, values out
//! of range and files that do not exist are each reported as a [`Problem`] naming the file, the
//! line and the option (`capture.fps`). Warnings (valid but probably unintended settings) come
//! back with the [`Config`].
//!
//! Every option, its unit and its default is documented in `docs/config.md`.
//!
//! ```
//! let err = neoflix_config::parse("x.toml", r#"
//! device_id = "room-1"
//! [capture]
//! fps = 250
//! [recordings]
//! recipient = "/nonexistent/department.pub"
//! "#).unwrap_err().to_string();
//! assert!(err.contains("x.toml:4: capture.fps: 250 is out of range"));
//! assert!(err.contains("x.toml:6: recordings.recipient: cannot read"));
//! ```
#![deny(missing_docs)]

mod walk;

use std::path::{Path, PathBuf};

pub use neoflix_confwalk::{Choice, ConfigError, MAX_CONFIG_BYTES, Problem, UnknownChoice};

neoflix_confwalk::choice! {
    /// `capture.source`: where frames come from.
    pub enum SourceKind {
        /// GStreamer's test pattern.
        Test = "test",
        /// The test pattern as a camera that encodes H.264 itself (a keyframe every 2 s),
        /// passed through: for trying a UVC H.264 camera's behaviour without one.
        TestH264 = "test-h264",
        /// A black picture with a white frame each second, for checking sound and picture
        /// against each other with the test tone (`[audio] source = "test"`).
        TestSync = "test-sync",
        /// A V4L2 camera.
        V4l2 = "v4l2",
    }
}

neoflix_confwalk::choice! {
    /// `audio.source`: where sound comes from.
    pub enum AudioSourceKind {
        /// GStreamer's test tone: a tick every second.
        Test = "test",
        /// An ALSA capture device.
        Alsa = "alsa",
    }
}

neoflix_confwalk::choice! {
    /// `capture.input_format`: what a V4L2 camera is asked to deliver.
    pub enum InputFormat {
        /// Uncompressed if the camera delivers the size at the rate so, else Motion JPEG.
        Auto = "auto",
        /// Uncompressed frames, encoded here.
        Raw = "raw",
        /// Motion JPEG, decoded and encoded here.
        Mjpeg = "mjpeg",
        /// The camera's own H.264, passed through without encoding.
        H264 = "h264",
    }
}

neoflix_confwalk::choice! {
    /// `capture.encoder`: which H.264 encoder, or probe for one.
    pub enum EncoderChoice {
        /// Probe: hardware first (Jetson, Pi 4), then x264.
        Auto = "auto",
        /// Software x264.
        X264 = "x264enc",
        /// The Raspberry Pi 4's V4L2 memory-to-memory encoder.
        V4l2 = "v4l2h264enc",
        /// NVIDIA Jetson NVENC.
        NvV4l2 = "nvv4l2h264enc",
    }
}

neoflix_confwalk::choice! {
    /// `capture.x264_preset`: x264's speed preset; slower ones than `medium` cannot keep up
    /// with live video on a room box.
    pub enum X264Preset {
        /// Least CPU, largest files at a given quality.
        Ultrafast = "ultrafast",
        /// Between `ultrafast` and `veryfast`.
        Superfast = "superfast",
        /// The default.
        Veryfast = "veryfast",
        /// A little more CPU than `veryfast`.
        Faster = "faster",
        /// More CPU again.
        Fast = "fast",
        /// The slowest offered: most CPU, smallest files.
        Medium = "medium",
    }
}

neoflix_confwalk::choice! {
    /// `bias` of a GPIO input: the line's pull resistor.
    pub enum Bias {
        /// Leave the line as the board configured it.
        AsIs = "as-is",
        /// No pull.
        Disabled = "disabled",
        /// Pull up (a switch to ground, with `active_low = true`).
        PullUp = "pull-up",
        /// Pull down (a switch to 3.3 V).
        PullDown = "pull-down",
    }
}

/// `[capture]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// `test` or `v4l2`.
    pub source: SourceKind,
    /// V4L2 device: a stable name (`/dev/v4l/by-id/...`) or a node.
    pub device: PathBuf,
    /// Or the camera with this USB serial number, wherever it is plugged in.
    pub serial: Option<String>,
    /// What a V4L2 camera is asked to deliver.
    pub input_format: InputFormat,
    /// `[capture.controls]`: camera controls, applied at every start of capture (so after every
    /// re-plug), in the file's order.
    pub controls: Vec<(String, ControlValue)>,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// Fragment length (and keyframe interval) in seconds.
    pub fragment_secs: u32,
    /// The encoder, or `auto`.
    pub encoder: EncoderChoice,
    /// Target bitrate.
    pub bitrate_kbps: u32,
    /// x264 speed preset.
    pub x264_preset: X264Preset,
}

/// `[second_camera]`: a second view (the resuscitaire from above, say), recorded as a second
/// video track on the first camera's clock, rate and fragment boundaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecondCamera {
    /// `v4l2` (the default here), or a test source.
    pub source: SourceKind,
    /// V4L2 device: a stable name (`/dev/v4l/by-id/...`) or a node; empty when not given
    /// (then `serial` is, or the source is a test one).
    pub device: PathBuf,
    /// Or the camera with this USB serial number.
    pub serial: Option<String>,
    /// What it is asked to deliver: never H.264.
    pub input_format: InputFormat,
    /// `[second_camera.controls]`, as `[capture.controls]`.
    pub controls: Vec<(String, ControlValue)>,
    /// Frame width in pixels (default: the first camera's).
    pub width: u32,
    /// Frame height in pixels (default: the first camera's).
    pub height: u32,
    /// Target bitrate (default: the first camera's).
    pub bitrate_kbps: u32,
}

/// The setting of one camera control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlValue {
    /// `"auto"`: the camera decides.
    Auto,
    /// A number (or a boolean, as 0 and 1).
    Value(i64),
    /// A menu entry's name, e.g. `"50hz"`.
    Entry(String),
}

/// `[audio]`: sound, muxed with the video. Absent: recordings are silent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audio {
    /// `test` or `alsa`.
    pub source: AudioSourceKind,
    /// The ALSA device name, e.g. `hw:CARD=Mic,DEV=0` or `default`.
    pub device: String,
    /// 1 or 2.
    pub channels: u32,
    /// Samples per second: 8000, 12000, 16000, 24000 or 48000 (Opus' rates).
    pub rate: u32,
    /// Opus bitrate.
    pub bitrate_kbps: u32,
}

/// The sample rates Opus encodes natively; others would be resampled to one of them anyway.
pub const OPUS_RATES: [u32; 5] = [8000, 12000, 16000, 24000, 48000];

/// `[ring]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    /// Directory of the sealed pre-roll (tmpfs for short pre-rolls).
    pub dir: PathBuf,
    /// Seconds of video kept before a trigger.
    pub preroll_secs: u32,
    /// Upper bound on the ring's sealed bytes.
    pub max_bytes: u64,
}

/// `[recordings]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recordings {
    /// Where recordings are kept until uploaded.
    pub dir: PathBuf,
    /// The department public key file.
    pub recipient: PathBuf,
    /// A recording stops by itself after this long.
    pub max_duration_secs: u32,
    /// Recording goes on this long after a stop.
    pub post_roll_secs: u32,
    /// Holding the pedal this long stops a recording.
    pub long_press_ms: u32,
}

/// `[control]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    /// The local control socket (mode 0660).
    pub socket: PathBuf,
}

/// `[upload]`: where sealed recordings go. Absent: they stay on the box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// Base URLs of the department's ingest servers (`https://...`), in order of preference: the
    /// box sends to one and moves to the next when a pass fails (replicas on one store).
    pub urls: Vec<String>,
    /// CA certificate that issued the server's certificate.
    pub ca: PathBuf,
    /// This device's certificate (its common name is the device id the server uses).
    pub cert: PathBuf,
    /// This device's private key.
    pub key: PathBuf,
}

/// `[signing]`: the identity each recording's manifest is signed with — a device certificate
/// from the department CA and its key. Absent: the `[upload]` certificate and key; with
/// neither, recordings are unsigned and the status says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signing {
    /// This device's certificate (PEM, its common name the device id; intermediates may follow).
    pub cert: PathBuf,
    /// This device's private key (PEM).
    pub key: PathBuf,
}

/// A GPIO line, by name or offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineRef {
    /// The line's name (`gpioinfo` shows them).
    Name(String),
    /// The line's offset on its chip.
    Offset(u32),
}

/// `[pedal]`, `[light]`, `[privacy_switch]`: one GPIO line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpioLine {
    /// `/dev/gpiochipN` or the chip's label.
    pub chip: String,
    /// The line.
    pub line: LineRef,
    /// The line is low when the pedal is pressed / the light is on.
    pub active_low: bool,
    /// Inputs: the line's pull.
    pub bias: Bias,
    /// Inputs: the kernel's debounce period (0: none).
    pub debounce_ms: u32,
}

/// `[mqtt]`: the department broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mqtt {
    /// `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub url: String,
    /// The CA of the broker's certificate (mqtts).
    pub ca: Option<PathBuf>,
    /// This device's certificate and key (mutual TLS).
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Topic prefix.
    pub prefix: String,
    /// The status is re-published at least this often.
    pub status_interval_secs: u32,
    /// Publish Home Assistant discovery messages.
    pub home_assistant: bool,
    /// Home Assistant's discovery prefix.
    pub discovery_prefix: String,
}

/// `[foot_switch]`: a USB HID foot switch read through evdev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FootSwitch {
    /// The event device, e.g. `/dev/input/by-id/usb-...-event-kbd`.
    pub device: Option<PathBuf>,
    /// Or the device's name as the kernel reports it.
    pub name: Option<String>,
    /// The key the pedal sends (`KEY_B`, `BTN_LEFT`, ...).
    pub key: evdev::KeyCode,
    /// Grab the device so its key reaches nothing else.
    pub grab: bool,
}

/// `[readiness]`: what `ready` demands beyond pre-roll and camera.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// The system clock must be synchronised (NTP): recording times are evidence.
    pub require_clock_sync: bool,
    /// `ready` turns false when the device certificate has fewer days left.
    pub cert_min_days: u32,
}

/// About how many bytes `secs` of pre-roll take at `kbps` (every track's bitrate together):
/// the encoders' targets plus a tenth for the container, the sealing and a bitrate that
/// overshoots.
pub fn preroll_bytes(secs: u32, kbps: u64) -> u64 {
    u64::from(secs) * kbps * 1000 / 8 * 11 / 10
}

impl Config {
    /// About how many bytes the configured pre-roll takes ([`preroll_bytes`]).
    pub fn preroll_bytes(&self) -> u64 {
        let kbps = u64::from(self.capture.bitrate_kbps)
            + self
                .second_camera
                .as_ref()
                .map_or(0, |s| u64::from(s.bitrate_kbps))
            + self.audio.as_ref().map_or(0, |a| u64::from(a.bitrate_kbps));
        preroll_bytes(self.ring.preroll_secs, kbps)
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This room box's name: in recording ids, manifests and status.
    pub device_id: String,
    /// `[capture]`
    pub capture: Capture,
    /// `[second_camera]`, when the room has one.
    pub second_camera: Option<SecondCamera>,
    /// `[audio]`, if configured.
    pub audio: Option<Audio>,
    /// `[ring]`
    pub ring: Ring,
    /// `[recordings]`
    pub recordings: Recordings,
    /// `[control]`
    pub control: Control,
    /// `[upload]`, if configured.
    pub upload: Option<Upload>,
    /// The signing identity: `[signing]`, else the `[upload]` certificate and key, else none.
    pub signing: Option<Signing>,
    /// `[mqtt]`, if configured.
    pub mqtt: Option<Mqtt>,
    /// `[pedal]`, a GPIO foot pedal, if configured.
    pub pedal: Option<GpioLine>,
    /// `[light]`, the recording light, if configured.
    pub light: Option<GpioLine>,
    /// `[privacy_switch]`, a GPIO privacy switch, if configured.
    pub privacy_switch: Option<GpioLine>,
    /// `[foot_switch]`, a USB HID foot switch, if configured.
    pub foot_switch: Option<FootSwitch>,
    /// `[readiness]`
    pub readiness: Readiness,
}

/// Why an MQTT topic prefix is unusable, if it is: 1 to 64 characters, no wildcards (`+`, `#`),
/// no leading or trailing `/`. Shared by the config check and `neoflix fleet --prefix`.
pub fn check_topic_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty()
        || prefix.len() > 64
        || prefix.starts_with('/')
        || prefix.ends_with('/')
        || prefix.contains(['+', '#', '\0'])
    {
        return Err(format!(
            "'{prefix}' is not a usable topic prefix: 1 to 64 characters, no '+', '#', leading or trailing '/'"
        ));
    }
    Ok(())
}

/// The default config path.
pub const DEFAULT_PATH: &str = "/etc/neoflix/neoflixd.toml";

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<(Config, Vec<Problem>), ConfigError> {
    let text = neoflix_confwalk::read(path)?;
    parse(&path.display().to_string(), &text)
}

/// Validates config text; `file` names it in messages.
pub fn parse(file: &str, text: &str) -> Result<(Config, Vec<Problem>), ConfigError> {
    walk::parse(file, text)
}
