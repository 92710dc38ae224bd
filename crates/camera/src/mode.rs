//! Choosing the camera's mode for the configured size and rate: pure, so every rule is tested
//! without a camera.

use serde::{Deserialize, Serialize};

/// What a V4L2 format is, as far as capture cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Uncompressed (YUYV, NV12, ...): encoded here.
    Raw,
    /// Motion JPEG: decoded, then encoded here.
    Mjpeg,
    /// The camera's own H.264: passed through.
    H264,
    /// Anything else (HEVC, Bayer, depth): not used.
    Other,
}

impl Kind {
    /// The kind of a four-character code.
    pub fn of(fourcc: &str) -> Kind {
        match fourcc {
            "MJPG" | "JPEG" => Kind::Mjpeg,
            "H264" | "AVC1" => Kind::H264,
            "YUYV" | "UYVY" | "YVYU" | "VYUY" | "NV12" | "NV21" | "NV16" | "NV61" | "YU12"
            | "YV12" | "I420" | "RGB3" | "BGR3" | "RGBP" | "XR24" | "AR24" | "BA24" | "XB24"
            | "GREY" => Kind::Raw,
            _ => Kind::Other,
        }
    }
}

/// One size of one format (or a range of sizes) and the frame rates it offers there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeRates {
    /// Width in pixels (the smallest, for a range).
    pub width: u32,
    /// Height in pixels (the smallest, for a range).
    pub height: u32,
    /// A driver that takes any size in a range (CSI bridges, some USB cameras) says so here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_to: Option<Steps>,
    /// Frame rates offered, highest first (for a range of sizes: at its largest).
    pub fps: Vec<f64>,
    /// A driver that takes any rate in a range: lowest and highest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fps_range: Option<(f64, f64)>,
}

/// The largest size of a range of sizes and its steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Steps {
    /// Largest width.
    pub max_width: u32,
    /// Largest height.
    pub max_height: u32,
    /// Width step.
    pub step_width: u32,
    /// Height step.
    pub step_height: u32,
}

impl SizeRates {
    /// Whether it offers `width`×`height`.
    pub fn has_size(&self, width: u32, height: u32) -> bool {
        match self.up_to {
            None => self.width == width && self.height == height,
            Some(s) => {
                let on = |v: u32, min: u32, max: u32, step: u32| {
                    (min..=max).contains(&v) && (v - min).is_multiple_of(step.max(1))
                };
                on(width, self.width, s.max_width, s.step_width)
                    && on(height, self.height, s.max_height, s.step_height)
            }
        }
    }

    /// Whether it offers `fps` frames per second. A camera gives the rates it lists, not others
    /// (nothing here drops or repeats frames), so a listed rate must be the one asked for;
    /// 29.97 serves 30.
    pub fn has_rate(&self, fps: u32) -> bool {
        let fps = f64::from(fps);
        self.fps.iter().any(|r| (r - fps).abs() <= 0.06)
            || self
                .fps_range
                .is_some_and(|(lo, hi)| lo - 0.06 <= fps && fps <= hi + 0.06)
    }

    /// The highest rate it offers.
    pub fn best_rate(&self) -> Option<f64> {
        let listed = self.fps.first().copied();
        match (listed, self.fps_range) {
            (Some(a), Some((_, b))) => Some(a.max(b)),
            (a, r) => a.or(r.map(|(_, hi)| hi)),
        }
    }
}

/// One format a camera offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Format {
    /// The four-character code, e.g. `YUYV`, `MJPG`, `H264`.
    pub fourcc: String,
    /// The driver's description.
    pub description: String,
    /// What capture makes of it.
    pub kind: Kind,
    /// Its sizes and rates.
    pub sizes: Vec<SizeRates>,
}

/// What capture is asked for: `input_format` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// Raw if the camera delivers the size at the rate uncompressed, else MJPEG.
    Auto,
    /// Only this kind.
    Only(Kind),
}

/// The mode chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Mode {
    /// Raw, MJPEG or H.264.
    pub kind: Kind,
    /// The format's code.
    pub fourcc: String,
    /// The frame rate asked of the camera: the configured one.
    pub fps: u32,
}

/// Why no mode fits: says what the camera offers instead, so the installer can pick a size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NoMode(pub String);

/// Picks the mode for `width`×`height` at `fps`: uncompressed when the camera offers that (a
/// USB 2 camera lists raw only at the rates its bus carries), else Motion JPEG; H.264 only when
/// asked for. When nothing fits, says what the camera offers at that size or, failing that, its
/// sizes at that rate.
pub fn choose(
    formats: &[Format],
    wanted: Wanted,
    width: u32,
    height: u32,
    fps: u32,
) -> Result<Mode, NoMode> {
    let order: &[Kind] = match wanted {
        Wanted::Auto => &[Kind::Raw, Kind::Mjpeg],
        Wanted::Only(Kind::Raw) => &[Kind::Raw],
        Wanted::Only(Kind::Mjpeg) => &[Kind::Mjpeg],
        Wanted::Only(Kind::H264) => &[Kind::H264],
        Wanted::Only(Kind::Other) => &[],
    };
    for kind in order {
        for f in formats.iter().filter(|f| f.kind == *kind) {
            let fits = f
                .sizes
                .iter()
                .any(|s| s.has_size(width, height) && s.has_rate(fps));
            if fits {
                return Ok(Mode {
                    kind: *kind,
                    fourcc: f.fourcc.clone(),
                    fps,
                });
            }
        }
    }
    let what = match wanted {
        Wanted::Auto => "uncompressed or MJPEG".to_string(),
        Wanted::Only(k) => format!("{k:?}").to_uppercase(),
    };
    let at_size: Vec<String> = formats
        .iter()
        .filter(|f| f.kind != Kind::Other)
        .filter_map(|f| {
            let s = f.sizes.iter().find(|s| s.has_size(width, height))?;
            let rates: Vec<String> = s.fps.iter().map(|r| format!("{r}")).collect();
            match s.fps_range {
                Some((lo, hi)) => Some(format!("{} at {lo}–{hi} fps", f.fourcc)),
                None => Some(format!("{} at {} fps", f.fourcc, rates.join("/"))),
            }
        })
        .collect();
    let hint = if !at_size.is_empty() {
        format!(
            "at {width}x{height} it offers {}: set capture.fps to one of those rates or capture.input_format",
            at_size.join(", ")
        )
    } else {
        let mut sizes: Vec<String> = formats
            .iter()
            .filter(|f| order.contains(&f.kind))
            .flat_map(|f| f.sizes.iter())
            .filter(|s| s.has_rate(fps))
            .map(|s| match s.up_to {
                None => format!("{}x{}", s.width, s.height),
                Some(u) => format!(
                    "{}x{} to {}x{}",
                    s.width, s.height, u.max_width, u.max_height
                ),
            })
            .collect();
        sizes.sort();
        sizes.dedup();
        if sizes.is_empty() {
            format!("it offers no {what} mode at {fps} fps at all")
        } else {
            format!(
                "at {fps} fps it offers {}: set capture.width and capture.height to one of them",
                sizes.join(", ")
            )
        }
    };
    Err(NoMode(format!(
        "the camera offers no {what} mode of {width}x{height} at {fps} fps; {hint}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format(fourcc: &str, sizes: &[(u32, u32, &[f64])]) -> Format {
        Format {
            fourcc: fourcc.into(),
            description: String::new(),
            kind: Kind::of(fourcc),
            sizes: sizes
                .iter()
                .map(|(w, h, r)| SizeRates {
                    width: *w,
                    height: *h,
                    up_to: None,
                    fps: r.to_vec(),
                    fps_range: None,
                })
                .collect(),
        }
    }

    /// A typical USB 2 webcam: raw only at small sizes or low rates, MJPEG everywhere.
    fn webcam() -> Vec<Format> {
        vec![
            format(
                "YUYV",
                &[
                    (640, 480, &[30.0, 15.0]),
                    (1280, 720, &[10.0, 5.0]),
                    (1920, 1080, &[5.0]),
                ],
            ),
            format(
                "MJPG",
                &[
                    (640, 480, &[30.0]),
                    (1280, 720, &[30.0]),
                    (1920, 1080, &[30.0]),
                ],
            ),
            format("H264", &[(1920, 1080, &[30.0])]),
        ]
    }

    #[test]
    fn raw_when_the_bus_carries_it_else_mjpeg_and_h264_only_when_asked() {
        let c = webcam();
        let pick = |w, h, fps, wanted| choose(&c, wanted, w, h, fps).map(|m| m.fourcc);
        assert_eq!(pick(640, 480, 30, Wanted::Auto).unwrap(), "YUYV");
        assert_eq!(pick(1280, 720, 30, Wanted::Auto).unwrap(), "MJPG");
        assert_eq!(pick(1280, 720, 10, Wanted::Auto).unwrap(), "YUYV");
        // A rate it does not list is not offered: the camera would refuse 20 fps.
        assert_eq!(
            pick(640, 480, 20, Wanted::Auto).map_err(|e| !e.0.is_empty()),
            Err(true)
        );
        assert_eq!(
            pick(1920, 1080, 30, Wanted::Only(Kind::H264)).unwrap(),
            "H264"
        );
        assert_eq!(
            pick(1920, 1080, 30, Wanted::Only(Kind::Mjpeg)).unwrap(),
            "MJPG"
        );
        // 29.97 serves 30.
        let ntsc = vec![format("YUYV", &[(640, 480, &[29.97])])];
        assert!(choose(&ntsc, Wanted::Auto, 640, 480, 30).is_ok());
    }

    #[test]
    fn nothing_fits_says_what_the_camera_offers() {
        let c = webcam();
        let e = choose(&c, Wanted::Only(Kind::Raw), 1920, 1080, 30).unwrap_err();
        assert_eq!(
            e.0,
            "the camera offers no RAW mode of 1920x1080 at 30 fps; at 1920x1080 it offers YUYV at 5 fps, MJPG at 30 fps, H264 at 30 fps: set capture.fps to one of those rates or capture.input_format"
        );
        let e = choose(&c, Wanted::Auto, 1024, 768, 30).unwrap_err();
        assert!(
            e.0.ends_with("at 30 fps it offers 1280x720, 1920x1080, 640x480: set capture.width and capture.height to one of them"),
            "{e}"
        );
        // A CSI bridge: any size in steps of 2 (rates at the largest), any rate up to 30.
        let csi = vec![Format {
            fourcc: "YUYV".into(),
            description: String::new(),
            kind: Kind::Raw,
            sizes: vec![SizeRates {
                width: 32,
                height: 32,
                up_to: Some(Steps {
                    max_width: 3280,
                    max_height: 2464,
                    step_width: 2,
                    step_height: 2,
                }),
                fps: vec![],
                fps_range: Some((1.0, 30.0)),
            }],
        }];
        assert!(choose(&csi, Wanted::Auto, 1280, 720, 25).is_ok());
        assert!(choose(&csi, Wanted::Auto, 1281, 720, 25).is_err());
        assert!(choose(&csi, Wanted::Auto, 1280, 720, 60).is_err());
        let e = choose(&c, Wanted::Auto, 1024, 768, 60).unwrap_err();
        assert!(
            e.0.ends_with("it offers no uncompressed or MJPEG mode at 60 fps at all"),
            "{e}"
        );
    }
}
