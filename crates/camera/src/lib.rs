//! V4L2 cameras through the `v4l` crate, for what GStreamer does not do well: finding the
//! capture devices and their stable names, listing their formats, sizes, rates and controls,
//! choosing the mode for a configured size and rate ([`mode::choose`]), and setting controls
//! (power-line frequency, exposure, white balance, focus) by name.
//!
//! Everything a device reports is outside data. The `v4l` crate unwraps some of it (names that
//! are not UTF-8, control types newer than it knows), so every call into it runs under
//! [`std::panic::catch_unwind`] and a panic there comes back as [`CameraError::Driver`]: a
//! strange camera is refused with a reason, it never takes the daemon down.
//!
//! Layout: this file opens devices and reads them; [`mode`] chooses a mode (pure);
//! [`controls`] maps the config's control settings to V4L2 controls (pure) and applies them.
#![deny(missing_docs)]

pub mod controls;
pub mod mode;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use v4l::video::Capture;

pub use controls::{ControlSetting, Setting};
pub use mode::{Format, Kind, Mode, NoMode, SizeRates, Wanted};

/// What went wrong with a camera.
#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    /// The device could not be opened or asked.
    #[error("{path}: {what}: {source}")]
    Io {
        /// The device.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
    /// The device is not a video capture device (a metadata node, a codec, an output).
    #[error("{0}: not a video capture device")]
    NotCapture(PathBuf),
    /// The device reported something the `v4l` crate cannot read.
    #[error("{path}: the driver reported something unreadable while {what}")]
    Driver {
        /// The device.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
    },
    /// No capture device has this USB serial number.
    #[error("no camera with serial number '{0}' (neoflix camera list shows the serial numbers)")]
    NoSerial(String),
    /// A control setting the camera refuses.
    #[error("{path}: control {control}: {problem}")]
    Control {
        /// The device.
        path: PathBuf,
        /// The control's name.
        control: String,
        /// What is wrong.
        problem: String,
    },
}

/// One control of a camera.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Control {
    /// Its name as `v4l2-ctl` shows it: lower case, words joined by `_`
    /// (`power_line_frequency`).
    pub name: String,
    /// The V4L2 control id.
    pub id: u32,
    /// `integer`, `boolean`, `menu`, `integer_menu`, `button` or `other`.
    pub kind: String,
    /// Lowest value.
    pub min: i64,
    /// Highest value.
    pub max: i64,
    /// Step between values.
    pub step: u64,
    /// The driver's default.
    pub default: i64,
    /// The value now, where it can be read.
    pub value: Option<i64>,
    /// Menu entries: value and name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub menu: Vec<(i64, String)>,
    /// Inactive now (e.g. exposure time while exposure is automatic).
    pub inactive: bool,
    /// Cannot be set.
    pub read_only: bool,
}

/// A V4L2 capture device and what it offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Camera {
    /// The device node, e.g. `/dev/video0` (its number changes across boots).
    pub path: PathBuf,
    /// Stable names udev made for it (`/dev/v4l/by-id/...`, `/dev/v4l/by-path/...`).
    pub stable_names: Vec<PathBuf>,
    /// The driver's name for the card, e.g. `HD Pro Webcam C920`.
    pub card: String,
    /// The driver, e.g. `uvcvideo`.
    pub driver: String,
    /// The bus, e.g. `usb-0000:01:00.0-1.3`.
    pub bus: String,
    /// The USB serial number, where there is one.
    pub serial: Option<String>,
    /// Formats, sizes and rates.
    pub formats: Vec<Format>,
    /// Controls.
    pub controls: Vec<Control>,
}

/// Runs `f` on the device, turning a panic inside the `v4l` crate into an error.
fn guarded<T>(
    path: &Path,
    what: &'static str,
    f: impl FnOnce() -> std::io::Result<T>,
) -> Result<T, CameraError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(CameraError::Io {
            path: path.to_owned(),
            what,
            source,
        }),
        Err(_) => Err(CameraError::Driver {
            path: path.to_owned(),
            what,
        }),
    }
}

/// The video device nodes, `/dev/video*`, in order of their number.
pub fn nodes() -> Vec<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_prefix("video")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, p)| p).collect()
}

/// Every video capture device and what it offers; devices that cannot be read are named in
/// the second list with the reason.
pub fn list() -> (Vec<Camera>, Vec<CameraError>) {
    let mut cameras = Vec::new();
    let mut errors = Vec::new();
    for node in nodes() {
        match describe(&node) {
            Ok(c) => cameras.push(c),
            Err(CameraError::NotCapture(_)) => {}
            Err(e) => errors.push(e),
        }
    }
    (cameras, errors)
}

/// What the capture device at `path` offers (a stable name is followed to its node).
pub fn describe(path: &Path) -> Result<Camera, CameraError> {
    let node = std::fs::canonicalize(path).map_err(|source| CameraError::Io {
        path: path.to_owned(),
        what: "finding the device",
        source,
    })?;
    let dev = guarded(&node, "opening", || v4l::Device::with_path(&node))?;
    let caps = guarded(&node, "asking its capabilities", || dev.query_caps())?;
    if !caps
        .capabilities
        .contains(v4l::capability::Flags::VIDEO_CAPTURE)
    {
        return Err(CameraError::NotCapture(node));
    }
    let formats = formats(&node, &dev)?;
    if formats.is_empty() {
        // A metadata node of a UVC camera says it captures but offers no picture format.
        return Err(CameraError::NotCapture(node));
    }
    let controls = guarded(&node, "listing its controls", || {
        let described = dev.query_controls()?;
        Ok(described
            .into_iter()
            .filter(|d| d.typ != v4l::control::Type::CtrlClass)
            .map(|d| {
                let value = match dev.control(d.id).map(|c| c.value) {
                    Ok(v4l::control::Value::Integer(v)) => Some(v),
                    Ok(v4l::control::Value::Boolean(b)) => Some(i64::from(b)),
                    _ => None,
                };
                let kind = match d.typ {
                    v4l::control::Type::Integer | v4l::control::Type::Integer64 => "integer",
                    v4l::control::Type::Boolean => "boolean",
                    v4l::control::Type::Menu => "menu",
                    v4l::control::Type::IntegerMenu => "integer_menu",
                    v4l::control::Type::Button => "button",
                    _ => "other",
                };
                Control {
                    name: controls::normalize(&d.name),
                    id: d.id,
                    kind: kind.into(),
                    min: d.minimum,
                    max: d.maximum,
                    step: d.step,
                    default: d.default,
                    value,
                    menu: d
                        .items
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(i, item)| (i64::from(i), item.to_string()))
                        .collect(),
                    inactive: d.flags.contains(v4l::control::Flags::INACTIVE),
                    read_only: d.flags.contains(v4l::control::Flags::READ_ONLY),
                }
            })
            .collect::<Vec<_>>())
    })
    .unwrap_or_else(|e| {
        log::warn!("{e}");
        Vec::new()
    });
    Ok(Camera {
        stable_names: stable_names(&node),
        serial: usb_serial(&node),
        path: node,
        card: caps.card,
        driver: caps.driver,
        bus: caps.bus,
        formats,
        controls,
    })
}

/// Sizes listed per format at most.
const MAX_SIZES: usize = 64;

fn formats(node: &Path, dev: &v4l::Device) -> Result<Vec<Format>, CameraError> {
    guarded(node, "listing its formats", || {
        let mut out = Vec::new();
        for d in dev.enum_formats()? {
            let fourcc = d.fourcc.str().unwrap_or("????").to_string();
            let mut sizes = Vec::new();
            for fs in dev.enum_framesizes(d.fourcc).unwrap_or_default() {
                if sizes.len() >= MAX_SIZES {
                    break;
                }
                // A range is one entry: its rates are asked at its largest size, where they
                // are lowest.
                let (w, h, up_to) = match fs.size {
                    v4l::framesize::FrameSizeEnum::Discrete(s) => (s.width, s.height, None),
                    v4l::framesize::FrameSizeEnum::Stepwise(s) => (
                        s.min_width,
                        s.min_height,
                        Some(mode::Steps {
                            max_width: s.max_width,
                            max_height: s.max_height,
                            step_width: s.step_width,
                            step_height: s.step_height,
                        }),
                    ),
                };
                let (qw, qh) = up_to.map_or((w, h), |u| (u.max_width, u.max_height));
                let rate = |f: v4l::Fraction| {
                    (f.numerator > 0).then(|| {
                        let r = f64::from(f.denominator) / f64::from(f.numerator);
                        (r * 100.0).round() / 100.0
                    })
                };
                let mut fps = Vec::new();
                let mut fps_range = None;
                for i in dev
                    .enum_frameintervals(d.fourcc, qw, qh)
                    .unwrap_or_default()
                {
                    match i.interval {
                        v4l::frameinterval::FrameIntervalEnum::Discrete(f) => fps.extend(rate(f)),
                        // The longest interval is the lowest rate.
                        v4l::frameinterval::FrameIntervalEnum::Stepwise(s) => {
                            if let (Some(lo), Some(hi)) = (rate(s.max), rate(s.min)) {
                                fps_range = Some((lo.min(hi), lo.max(hi)));
                            }
                        }
                    }
                }
                fps.sort_by(|a, b| b.total_cmp(a));
                fps.dedup();
                sizes.push(SizeRates {
                    width: w,
                    height: h,
                    up_to,
                    fps,
                    fps_range,
                });
            }
            out.push(Format {
                kind: Kind::of(&fourcc),
                fourcc,
                description: d.description,
                sizes,
            });
        }
        Ok(out)
    })
}

/// The udev links to `node` under `/dev/v4l/by-id` and `/dev/v4l/by-path`.
fn stable_names(node: &Path) -> Vec<PathBuf> {
    let mut names = Vec::new();
    for dir in ["/dev/v4l/by-id", "/dev/v4l/by-path"] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if std::fs::canonicalize(e.path()).is_ok_and(|t| t == node) {
                names.push(e.path());
            }
        }
    }
    names.sort();
    names
}

/// The USB serial number of the device behind `node`, from sysfs.
fn usb_serial(node: &Path) -> Option<String> {
    let name = node.file_name()?.to_str()?;
    // /sys/class/video4linux/videoN/device is the USB interface; its parent is the device.
    let iface = std::fs::canonicalize(format!("/sys/class/video4linux/{name}/device")).ok()?;
    let serial = std::fs::read_to_string(iface.parent()?.join("serial")).ok()?;
    let serial = serial.trim();
    (!serial.is_empty() && serial.len() <= 128 && !serial.chars().any(char::is_control))
        .then(|| serial.to_string())
}

/// Whether a video device with USB serial number `serial` is plugged in (sysfs only: cheap).
pub fn serial_present(serial: &str) -> bool {
    nodes()
        .iter()
        .any(|n| usb_serial(n).as_deref() == Some(serial))
}

/// The device node of the capture device with USB serial number `serial`.
pub fn by_serial(serial: &str) -> Result<PathBuf, CameraError> {
    nodes()
        .into_iter()
        .filter(|n| usb_serial(n).as_deref() == Some(serial))
        .find(|n| describe(n).is_ok())
        .ok_or_else(|| CameraError::NoSerial(serial.to_string()))
}

/// Asks a camera that encodes H.264 itself for a keyframe every `frames` frames, through the
/// standard H.264 I-frame period or GOP size control (UVC 1.5 cameras offer one of them).
/// `Ok(None)` when it offers neither: its fragments then follow its own keyframe interval.
pub fn set_keyframe_interval(path: &Path, frames: u32) -> Result<Option<i64>, CameraError> {
    let camera = describe(path)?;
    let Some(control) = camera
        .controls
        .iter()
        .find(|c| controls::KEYFRAME_INTERVAL.contains(&c.id) && !c.read_only)
    else {
        return Ok(None);
    };
    let set = set_controls(
        &camera.path,
        &[ControlSetting {
            name: control.name.clone(),
            // A driver may report its range upside down: taken as it comes, never a panic.
            setting: Setting::Value(
                i64::from(frames)
                    .max(control.min.min(control.max))
                    .min(control.max.max(control.min)),
            ),
        }],
    )?;
    Ok(set.first().map(|(_, v)| *v))
}

/// Sets controls on the camera at `path`, in order; returns each control's value after.
pub fn set_controls(
    path: &Path,
    settings: &[ControlSetting],
) -> Result<Vec<(String, i64)>, CameraError> {
    let camera = describe(path)?;
    let writes = controls::plan(&camera.controls, settings).map_err(|(control, problem)| {
        CameraError::Control {
            path: camera.path.clone(),
            control,
            problem,
        }
    })?;
    let node = camera.path.clone();
    guarded(&node, "setting controls", || {
        let dev = v4l::Device::with_path(&node)?;
        let mut after = Vec::new();
        for w in &writes {
            dev.set_control(v4l::control::Control {
                id: w.id,
                value: if w.boolean {
                    v4l::control::Value::Boolean(w.value != 0)
                } else {
                    v4l::control::Value::Integer(w.value)
                },
            })
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", w.name)))?;
            let now = match dev.control(w.id).map(|c| c.value) {
                Ok(v4l::control::Value::Integer(v)) => v,
                Ok(v4l::control::Value::Boolean(b)) => i64::from(b),
                _ => w.value,
            };
            after.push((w.name.clone(), now));
        }
        Ok(after)
    })
}
