//! Is this room ready? The one bit a clinician and IT both trust, and the reasons when it is not.
//!
//! [`reasons`] decides from facts gathered elsewhere (pure, unit-tested); [`free_bytes`] and
//! [`clock_synced`] gather the facts only the kernel knows. [`light_pattern`] turns the outcome
//! into what the recording light shows.

use std::collections::BTreeMap;
use std::path::Path;

/// What the readiness decision is made from.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// The recorder's own verdict (pre-roll, camera, privacy) and its reason.
    pub recorder_ready: bool,
    /// Why the recorder is not ready.
    pub recorder_reason: Option<&'a str>,
    /// The last storage error, unresolved.
    pub storage_error: Option<&'a str>,
    /// Free bytes on the recordings file system, if known.
    pub free_bytes: Option<u64>,
    /// What one recording of the maximum duration needs.
    pub needed_bytes: u64,
    /// Whether the kernel reports the clock synchronised.
    pub clock_synced: bool,
    /// Whether `ready` demands that.
    pub require_clock_sync: bool,
    /// Days left on the device certificate, when upload is configured.
    pub cert_days_left: Option<i64>,
    /// Fewer days than this turn `ready` false.
    pub cert_min_days: i64,
    /// The uplink's last error, unresolved.
    pub upload_error: Option<&'a str>,
    /// Input and output devices and their state (`ok` or what is wrong).
    pub devices: &'a BTreeMap<String, String>,
    /// The microphone, when sound is configured.
    pub audio: Option<Sound<'a>>,
    /// The second camera, when configured: its device, and why it is missing while it is.
    pub second_camera: Option<(&'a str, Option<&'a str>)>,
}

/// The microphone's part in readiness: a recording without the sound it was set up to have is
/// not everything the settings promise, though the video goes on.
#[derive(Debug, Clone, Copy)]
pub struct Sound<'a> {
    /// The configured device.
    pub device: &'a str,
    /// Why it is missing, while it is.
    pub missing: Option<&'a str>,
    /// The camera runs but no sound has arrived lately.
    pub silent: bool,
}

/// Every reason the room is not ready, most urgent first; empty means ready.
pub fn reasons(f: &Facts) -> Vec<String> {
    let mut r = Vec::new();
    if !f.recorder_ready {
        r.push(f.recorder_reason.unwrap_or("not ready").to_string());
    }
    if let Some(e) = f.storage_error {
        r.push(format!("storage: {e}"));
    }
    if let Some(free) = f.free_bytes
        && free < f.needed_bytes
    {
        r.push(format!(
            "storage: {} MB free, a full-length recording needs {} MB",
            free / 1_000_000,
            f.needed_bytes / 1_000_000
        ));
    }
    for (name, state) in f.devices {
        if state != "ok" {
            r.push(format!("{name}: {state}"));
        }
    }
    match &f.audio {
        Some(Sound {
            device,
            missing: Some(why),
            ..
        }) => r.push(format!(
            "microphone {device} missing: recording video without sound ({why})"
        )),
        Some(Sound {
            device,
            silent: true,
            ..
        }) => r.push(format!("microphone {device}: no sound arriving")),
        _ => {}
    }
    if let Some((device, Some(why))) = f.second_camera {
        r.push(format!(
            "second camera {device} missing: recording the first view alone ({why})"
        ));
    }
    if f.require_clock_sync && !f.clock_synced {
        r.push("clock not synchronised: check NTP (systemd-timesyncd or chrony)".into());
    }
    match f.cert_days_left {
        Some(d) if d < 0 => r.push("device certificate expired: issue a new one".into()),
        Some(d) if d < f.cert_min_days => r.push(format!(
            "device certificate expires in {d} days: issue a new one"
        )),
        _ => {}
    }
    if let Some(e) = f.upload_error {
        r.push(format!("upload failing: {e}"));
    }
    r
}

/// What the recording light shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Not recording, ready (or privacy mode, which the room chose).
    Off,
    /// Recording.
    On,
    /// Not recording and not ready: the next resuscitation would not be captured fully.
    SlowBlink,
    /// Recording, but something is wrong (camera lost, disk full).
    FastBlink,
}

/// The light for a state: steady while recording, dark while ready, blinking when not ready, so
/// staff always know whether the room is being recorded. While recording only the camera
/// matters: a clock or upload problem must not make the light look like a stopped recording.
pub fn light_pattern(recording: bool, video_flowing: bool, ready: bool, privacy: bool) -> Pattern {
    if recording {
        if video_flowing {
            Pattern::On
        } else {
            Pattern::FastBlink
        }
    } else if privacy || ready {
        Pattern::Off
    } else {
        Pattern::SlowBlink
    }
}

/// Free bytes for an unprivileged writer on the file system holding `path` (or, before `path`
/// exists, its nearest existing parent).
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let existing = path.ancestors().find(|p| p.exists())?;
    let c = std::ffi::CString::new(existing.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Whether the kernel considers the clock synchronised (what NTP daemons report to it).
pub fn clock_synced() -> bool {
    let mut t: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: modes = 0 only reads; `t` is a writable timex.
    let state = unsafe { libc::adjtimex(&mut t) };
    state != libc::TIME_ERROR && state >= 0 && t.status & libc::STA_UNSYNC == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(devices: &BTreeMap<String, String>) -> Facts<'_> {
        Facts {
            recorder_ready: true,
            recorder_reason: None,
            storage_error: None,
            free_bytes: Some(10_000_000_000),
            needed_bytes: 3_000_000_000,
            clock_synced: true,
            require_clock_sync: true,
            cert_days_left: Some(200),
            cert_min_days: 14,
            upload_error: None,
            devices,
            audio: None,
            second_camera: None,
        }
    }

    #[test]
    fn a_missing_or_silent_microphone_is_a_reason() {
        let none = BTreeMap::new();
        let sound = |missing, silent| Facts {
            audio: Some(Sound {
                device: "hw:CARD=Mic",
                missing,
                silent,
            }),
            ..facts(&none)
        };
        assert!(reasons(&sound(None, false)).is_empty());
        assert_eq!(
            reasons(&sound(Some("no such card"), false)),
            ["microphone hw:CARD=Mic missing: recording video without sound (no such card)"]
        );
        assert_eq!(
            reasons(&sound(None, true)),
            ["microphone hw:CARD=Mic: no sound arriving"]
        );
    }

    #[test]
    fn ready_needs_every_fact_and_says_which_fails() {
        let none = BTreeMap::new();
        assert!(reasons(&facts(&none)).is_empty());
        let mut devices = BTreeMap::new();
        devices.insert("foot_switch".to_string(), "unplugged".to_string());
        devices.insert("pedal".to_string(), "ok".to_string());
        let f = Facts {
            recorder_ready: false,
            recorder_reason: Some("pre-roll filling (3 of 60 s)"),
            free_bytes: Some(1_000_000_000),
            clock_synced: false,
            cert_days_left: Some(5),
            upload_error: Some("connection refused"),
            ..facts(&devices)
        };
        assert_eq!(
            reasons(&f),
            vec![
                "pre-roll filling (3 of 60 s)",
                "storage: 1000 MB free, a full-length recording needs 3000 MB",
                "foot_switch: unplugged",
                "clock not synchronised: check NTP (systemd-timesyncd or chrony)",
                "device certificate expires in 5 days: issue a new one",
                "upload failing: connection refused",
            ]
        );
        let lab = Facts {
            clock_synced: false,
            require_clock_sync: false,
            cert_days_left: None,
            ..facts(&none)
        };
        assert!(reasons(&lab).is_empty());
        let expired = Facts {
            cert_days_left: Some(-1),
            ..facts(&none)
        };
        assert_eq!(
            reasons(&expired),
            vec!["device certificate expired: issue a new one"]
        );
    }

    #[test]
    fn the_light_never_looks_like_recording_when_it_is_not() {
        for bits in 0..8u8 {
            let (video, ready, privacy) = (bits & 1 != 0, bits & 2 != 0, bits & 4 != 0);
            assert!(matches!(
                light_pattern(false, video, ready, privacy),
                Pattern::Off | Pattern::SlowBlink
            ));
            assert!(matches!(
                light_pattern(true, video, ready, privacy),
                Pattern::On | Pattern::FastBlink
            ));
        }
        assert_eq!(light_pattern(false, true, false, false), Pattern::SlowBlink);
        assert_eq!(light_pattern(false, true, true, false), Pattern::Off);
        assert_eq!(light_pattern(true, true, false, false), Pattern::On);
        assert_eq!(light_pattern(true, false, false, false), Pattern::FastBlink);
    }

    #[test]
    fn free_space_is_read_from_the_nearest_existing_directory() {
        // Before the recordings directory exists, its parent's file system answers.
        let missing = std::env::temp_dir().join("neoflix-no-such-dir/recordings");
        assert!(!missing.exists());
        assert!(free_bytes(&missing).is_some());
        assert!(free_bytes(Path::new("")).is_none());
    }
}
