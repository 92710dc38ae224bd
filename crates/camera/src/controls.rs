//! Control settings, as the config and `neoflix camera set` give them, mapped to V4L2 control
//! writes (pure): `power_line_frequency`, `exposure`, `white_balance` and `focus` by their
//! standard V4L2 ids (stable across kernels, unlike their names), any other control by the name
//! `v4l2-ctl -L` shows.

use crate::Control;

const POWER_LINE_FREQUENCY: u32 = 0x0098_0918;
const AUTO_WHITE_BALANCE: u32 = 0x0098_090c;
const WHITE_BALANCE_TEMPERATURE: u32 = 0x0098_091a;
const EXPOSURE_AUTO: u32 = 0x009a_0901;
const EXPOSURE_ABSOLUTE: u32 = 0x009a_0902;
const FOCUS_ABSOLUTE: u32 = 0x009a_090a;
const FOCUS_AUTO: u32 = 0x009a_090c;
/// `V4L2_CID_MPEG_VIDEO_H264_I_PERIOD` and `V4L2_CID_MPEG_VIDEO_GOP_SIZE`: a camera's own
/// encoder's keyframe interval, in frames.
pub const KEYFRAME_INTERVAL: [u32; 2] = [0x0099_0a66, 0x0099_09cb];
/// `V4L2_EXPOSURE_AUTO` and `V4L2_EXPOSURE_APERTURE_PRIORITY` (what UVC cameras call auto),
/// `V4L2_EXPOSURE_MANUAL`.
const EXPOSURE_MODE_AUTO: i64 = 0;
const EXPOSURE_MODE_MANUAL: i64 = 1;
const EXPOSURE_MODE_APERTURE_PRIORITY: i64 = 3;

/// A setting of one control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    /// The camera decides (exposure, white balance, focus).
    Auto,
    /// A fixed value (exposure in 100 µs units, white balance in kelvin, focus in the camera's
    /// units, any other control its integer or boolean value).
    Value(i64),
    /// A menu entry by name, e.g. `50hz` for power-line frequency (case, spaces and
    /// punctuation do not matter).
    Entry(String),
}

/// One control and its setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlSetting {
    /// `power_line_frequency`, `exposure`, `white_balance`, `focus`, or a control's name.
    pub name: String,
    /// What to set it to.
    pub setting: Setting,
}

impl ControlSetting {
    /// Parses `NAME=VALUE` as `neoflix camera set` takes it: `auto`, an integer, `true`/`false`,
    /// or a menu entry's name.
    pub fn parse(text: &str) -> Result<ControlSetting, String> {
        let (name, value) = text.split_once('=').ok_or_else(|| {
            format!("'{text}': expected NAME=VALUE, e.g. power_line_frequency=50hz")
        })?;
        let name = normalize(name);
        if name.is_empty() || value.is_empty() || value.len() > 64 {
            return Err(format!("'{text}': expected NAME=VALUE, e.g. exposure=auto"));
        }
        let setting = match value.trim() {
            "auto" => Setting::Auto,
            "true" | "on" => Setting::Value(1),
            "false" | "off" => Setting::Value(0),
            v => match v.parse::<i64>() {
                Ok(n) => Setting::Value(n),
                Err(_) => Setting::Entry(v.to_string()),
            },
        };
        Ok(ControlSetting { name, setting })
    }
}

/// A control's name as `v4l2-ctl` shows it: lower case, runs of other characters as one `_`.
pub fn normalize(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_string()
}

fn squash(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// One write to the camera.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The control's name.
    pub name: String,
    /// Its id.
    pub id: u32,
    /// The value.
    pub value: i64,
    /// Written as a boolean.
    pub boolean: bool,
}

type Problem = (String, String);

fn find<'a>(controls: &'a [Control], id: u32, what: &str) -> Result<&'a Control, Problem> {
    controls.iter().find(|c| c.id == id).ok_or_else(|| {
        (
            what.to_string(),
            "this camera has no such control (neoflix camera list shows the ones it has)".into(),
        )
    })
}

fn value_of(c: &Control, setting: &Setting, what: &str) -> Result<Write, Problem> {
    let problem = |p: String| (what.to_string(), p);
    if c.read_only {
        return Err(problem(format!("{} is read-only", c.name)));
    }
    let value = match setting {
        Setting::Auto => {
            return Err(problem(format!(
                "{} has no automatic mode: give a value",
                c.name
            )));
        }
        Setting::Value(v) => *v,
        Setting::Entry(name) => c
            .menu
            .iter()
            .find(|(_, n)| squash(n) == squash(name))
            .map(|(v, _)| *v)
            .ok_or_else(|| {
                let names: Vec<&str> = c.menu.iter().map(|(_, n)| n.as_str()).collect();
                problem(format!(
                    "'{name}' is not one of its settings: {}",
                    if names.is_empty() {
                        "it takes a number".to_string()
                    } else {
                        names.join(", ")
                    }
                ))
            })?,
    };
    if value < c.min || value > c.max {
        return Err(problem(format!(
            "{value} is outside its range {}..{}",
            c.min, c.max
        )));
    }
    if !c.menu.is_empty() && !c.menu.iter().any(|(v, _)| *v == value) {
        return Err(problem(format!("{value} is not one of its menu entries")));
    }
    Ok(Write {
        name: c.name.clone(),
        id: c.id,
        value,
        boolean: c.kind == "boolean",
    })
}

/// The writes that carry out `settings` on a camera with `controls`, in order (an automatic
/// mode is switched off before its fixed value is written). A setting the camera cannot take
/// is named with the reason.
pub fn plan(controls: &[Control], settings: &[ControlSetting]) -> Result<Vec<Write>, Problem> {
    let mut writes = Vec::new();
    for s in settings {
        let what = s.name.as_str();
        // `auto` and the fixed value of one of the paired controls.
        let pair = |auto: u32, fixed: u32, on: i64, off: i64| -> Result<Vec<Write>, Problem> {
            let a = find(controls, auto, what)?;
            match &s.setting {
                Setting::Auto => Ok(vec![value_of(a, &Setting::Value(on), what)?]),
                v => {
                    let f = find(controls, fixed, what)?;
                    Ok(vec![
                        value_of(a, &Setting::Value(off), what)?,
                        value_of(f, v, what)?,
                    ])
                }
            }
        };
        match what {
            "power_line_frequency" => {
                let c = find(controls, POWER_LINE_FREQUENCY, what)?;
                writes.push(value_of(c, &s.setting, what)?);
            }
            "exposure" => {
                let mode = find(controls, EXPOSURE_AUTO, what)?;
                let auto = if mode
                    .menu
                    .iter()
                    .any(|(v, _)| *v == EXPOSURE_MODE_APERTURE_PRIORITY)
                {
                    EXPOSURE_MODE_APERTURE_PRIORITY
                } else {
                    EXPOSURE_MODE_AUTO
                };
                writes.extend(pair(
                    EXPOSURE_AUTO,
                    EXPOSURE_ABSOLUTE,
                    auto,
                    EXPOSURE_MODE_MANUAL,
                )?);
            }
            "white_balance" => {
                writes.extend(pair(AUTO_WHITE_BALANCE, WHITE_BALANCE_TEMPERATURE, 1, 0)?)
            }
            "focus" => writes.extend(pair(FOCUS_AUTO, FOCUS_ABSOLUTE, 1, 0)?),
            name => {
                let c = controls.iter().find(|c| c.name == name).ok_or_else(|| {
                    let names: Vec<&str> = controls.iter().map(|c| c.name.as_str()).collect();
                    (
                        name.to_string(),
                        format!(
                            "this camera has no such control; it has: {}",
                            names.join(", ")
                        ),
                    )
                })?;
                writes.push(value_of(c, &s.setting, what)?);
            }
        }
    }
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(
        id: u32,
        name: &str,
        kind: &str,
        range: (i64, i64),
        menu: &[(i64, &str)],
    ) -> Control {
        Control {
            name: name.into(),
            id,
            kind: kind.into(),
            min: range.0,
            max: range.1,
            step: 1,
            default: range.0,
            value: Some(range.0),
            menu: menu.iter().map(|(v, n)| (*v, n.to_string())).collect(),
            inactive: false,
            read_only: false,
        }
    }

    /// The controls of a typical UVC webcam.
    fn uvc() -> Vec<Control> {
        vec![
            control(0x0098_0900, "brightness", "integer", (0, 255), &[]),
            control(
                POWER_LINE_FREQUENCY,
                "power_line_frequency",
                "menu",
                (0, 2),
                &[(0, "Disabled"), (1, "50 Hz"), (2, "60 Hz")],
            ),
            control(
                EXPOSURE_AUTO,
                "auto_exposure",
                "menu",
                (0, 3),
                &[(1, "Manual Mode"), (3, "Aperture Priority Mode")],
            ),
            control(
                EXPOSURE_ABSOLUTE,
                "exposure_time_absolute",
                "integer",
                (3, 2047),
                &[],
            ),
            control(
                AUTO_WHITE_BALANCE,
                "white_balance_automatic",
                "boolean",
                (0, 1),
                &[],
            ),
            control(
                WHITE_BALANCE_TEMPERATURE,
                "white_balance_temperature",
                "integer",
                (2000, 6500),
                &[],
            ),
            control(
                FOCUS_AUTO,
                "focus_automatic_continuous",
                "boolean",
                (0, 1),
                &[],
            ),
            control(FOCUS_ABSOLUTE, "focus_absolute", "integer", (0, 250), &[]),
        ]
    }

    fn set(texts: &[&str]) -> Result<Vec<(String, i64)>, Problem> {
        let settings: Vec<ControlSetting> = texts
            .iter()
            .map(|t| ControlSetting::parse(t).unwrap())
            .collect();
        plan(&uvc(), &settings).map(|w| w.into_iter().map(|w| (w.name, w.value)).collect())
    }

    #[test]
    fn a_wall_camera_gets_mains_frequency_fixed_focus_and_its_exposure_either_way() {
        let w = set(&[
            "power_line_frequency=50hz",
            "exposure=auto",
            "white_balance=4500",
            "focus=30",
            "Brightness=140",
        ])
        .unwrap();
        let w: Vec<(&str, i64)> = w.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        assert_eq!(
            w,
            [
                ("power_line_frequency", 1),
                ("auto_exposure", 3),
                ("white_balance_automatic", 0),
                ("white_balance_temperature", 4500),
                ("focus_automatic_continuous", 0),
                ("focus_absolute", 30),
                ("brightness", 140),
            ]
        );
        let w = set(&["exposure=300", "white_balance=auto", "focus=auto"]).unwrap();
        assert_eq!(
            w,
            [
                ("auto_exposure".to_string(), 1),
                ("exposure_time_absolute".to_string(), 300),
                ("white_balance_automatic".to_string(), 1),
                ("focus_automatic_continuous".to_string(), 1),
            ]
        );
    }

    #[test]
    fn what_the_camera_cannot_take_is_named_with_what_it_can() {
        let e = set(&["power_line_frequency=55hz"]).unwrap_err();
        assert_eq!(
            e,
            (
                "power_line_frequency".into(),
                "'55hz' is not one of its settings: Disabled, 50 Hz, 60 Hz".into()
            )
        );
        let e = set(&["focus=9000"]).unwrap_err();
        assert_eq!(e.1, "9000 is outside its range 0..250");
        let e = set(&["zoom=2"]).unwrap_err();
        assert!(
            e.1.starts_with(
                "this camera has no such control; it has: brightness, power_line_frequency"
            ),
            "{e:?}"
        );
        let e = set(&["brightness=auto"]).unwrap_err();
        assert_eq!(e.1, "brightness has no automatic mode: give a value");
        let e = plan(
            &uvc()[..1],
            &[ControlSetting::parse("exposure=auto").unwrap()],
        )
        .unwrap_err();
        assert!(e.1.contains("no such control"), "{e:?}");
        assert!(ControlSetting::parse("exposure").is_err());
        assert_eq!(
            normalize("Exposure Time, Absolute"),
            "exposure_time_absolute"
        );
    }
}
