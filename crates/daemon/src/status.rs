//! The daemon's status: built in one place, published once.
//!
//! [`build`] makes a [`Published`] — the typed [`Status`] that `neoflix ctl status` and MQTT
//! show, what the recording light shows, whether a fragment has been sealed yet — from what each
//! part reports (pure, unit-tested). The conductor calls [`Publisher::publish`] after everything
//! it handles; the publisher sends the result through a `watch` when its substance changed, and
//! at least once a second for its clock fields. The control socket, the MQTT publisher, systemd's
//! notifier and the light read that watch: nobody asks anybody for the status, so no reader can
//! hold up the recorder and none sees an older state than another.
//!
//! [`watch_environment`] gathers what only the kernel and files know (free space, clock sync,
//! certificate expiry) every few seconds, off the runtime.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use neoflix_control::{Status, UploadQueue};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::health::{self, Pattern};
use crate::uplink::UploadStatus;
use crate::{Events, capture, storage};

/// How often the kernel facts are gathered again.
const ENVIRONMENT_EVERY: Duration = Duration::from_secs(5);
/// The clock fields (`time_utc`, `uptime_secs`) are at most this old.
const REFRESH: Duration = Duration::from_secs(1);

/// What every reader of the status gets.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// What `neoflix ctl status` and MQTT show.
    pub status: Status,
    /// What the recording light shows.
    pub light: Pattern,
    /// A fragment has been sealed into the ring: systemd may hear READY=1.
    pub capturing: bool,
}

/// What the status needs to know that never changes while the daemon runs.
#[derive(Debug, Clone)]
pub struct StatusSettings {
    /// This room box.
    pub device_id: String,
    /// Bytes one recording of the maximum duration needs.
    pub full_recording_bytes: u64,
    /// What `ready` demands beyond the recorder.
    pub readiness: neoflix_config::Readiness,
    /// Who signs the recordings (the signing certificate's name); `None`: they are unsigned.
    pub signer: Option<String>,
}

/// Facts from the kernel and files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment {
    /// Free bytes on the recordings file system, if known.
    pub free_bytes: Option<u64>,
    /// Whether the kernel reports the clock synchronised.
    pub clock_synced: bool,
    /// Days left on the device certificate, when upload is configured and it is readable.
    pub cert_days_left: Option<i64>,
}

impl Environment {
    /// Gathers the facts (blocking: a statvfs, an adjtimex, a small file read).
    pub fn gather(recordings_dir: &Path, device_cert: Option<&Path>) -> Environment {
        Environment {
            free_bytes: health::free_bytes(recordings_dir),
            clock_synced: health::clock_synced(),
            cert_days_left: device_cert
                .and_then(|p| std::fs::read(p).ok())
                .and_then(|pem| neoflix_pki::days_left(&pem).ok()),
        }
    }
}

/// The open recording, as the conductor knows it from the moment it decided to start it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRecording {
    /// Its id.
    pub id: String,
    /// When it was triggered, RFC 3339 UTC.
    pub started_utc: String,
}

/// Everything the status is made from, one field per source.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// The recorder's own view (state, pre-roll, camera, storage outcome).
    pub recorder: &'a neoflix_recorder::Status,
    /// The open recording.
    pub recording: Option<&'a OpenRecording>,
    /// What storage reports.
    pub storage: &'a storage::Facts,
    /// What capture supervision reports.
    pub capture: &'a capture::Facts,
    /// Kernel and file facts.
    pub environment: &'a Environment,
    /// Input and output devices and their state.
    pub devices: &'a BTreeMap<String, String>,
    /// The upload queue, when upload is configured.
    pub upload: Option<&'a UploadStatus>,
    /// A fragment has been sealed into the ring since start.
    pub capturing: bool,
}

/// RFC 3339 UTC, as the status has always shown times.
pub fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn secs(d: Duration) -> f64 {
    d.as_millis() as f64 / 1000.0
}

/// The published status for `facts`, taken at `now`, `uptime` after start.
pub fn build(
    settings: &StatusSettings,
    facts: &Facts,
    now: SystemTime,
    uptime: Duration,
) -> Published {
    let r = facts.recorder;
    let env = facts.environment;
    let reasons = health::reasons(&health::Facts {
        recorder_ready: r.ready,
        recorder_reason: r.reason.as_deref(),
        storage_error: facts.storage.error.as_deref(),
        free_bytes: env.free_bytes,
        needed_bytes: settings.full_recording_bytes,
        clock_synced: env.clock_synced,
        require_clock_sync: settings.readiness.require_clock_sync,
        cert_days_left: env.cert_days_left,
        cert_min_days: settings.readiness.cert_min_days.into(),
        upload_error: facts.upload.and_then(|u| u.last_error.as_deref()),
        devices: facts.devices,
        audio: facts.capture.audio.as_ref().map(|a| health::Sound {
            device: &a.device,
            missing: a.missing.as_deref(),
            // Sound is expected only while the camera's pipeline runs.
            silent: !a.flowing && !facts.capture.paused && r.ready,
        }),
        second_camera: facts
            .capture
            .second
            .as_ref()
            .map(|v| (v.device.as_str(), v.missing.as_deref())),
    });
    let state = crate::control::wire_state(r.state);
    let privacy = state == neoflix_control::State::Privacy;
    let light = health::light_pattern(r.recording, r.ready, reasons.is_empty(), privacy);
    // Video claimed so far; zero until storage has opened it (the conductor knows it first).
    let recording_secs = facts.recording.map(|open| match &facts.storage.open {
        Some((id, d)) if *id == open.id => secs(*d),
        _ => 0.0,
    });
    let status = Status {
        device_id: settings.device_id.clone(),
        state,
        ready: reasons.is_empty(),
        reason: reasons.first().cloned(),
        privacy,
        reasons,
        preroll_secs: secs(r.preroll),
        recording: facts.recording.map(|o| o.id.clone()),
        recording_secs,
        recording_started_utc: facts.recording.map(|o| o.started_utc.clone()),
        encoder: facts.capture.encoder.clone(),
        encoder_fallback: facts.capture.encoder_fallback.clone(),
        audio: facts
            .capture
            .audio
            .as_ref()
            .map(|a| neoflix_control::AudioStatus {
                device: a.device.clone(),
                flowing: a.flowing,
                peak_dbfs: a.peak_dbfs,
                missing: a.missing.clone(),
            }),
        second_camera: facts
            .capture
            .second
            .as_ref()
            .map(|v| neoflix_control::ViewStatus {
                device: v.device.clone(),
                missing: v.missing.clone(),
            }),
        recordings_finalized: facts.storage.finalized,
        storage_error: facts.storage.error.clone(),
        storage_free_bytes: env.free_bytes,
        full_recording_fits: env
            .free_bytes
            .is_none_or(|f| f >= settings.full_recording_bytes),
        camera_fps: (facts.capture.fps * 10.0).round() / 10.0,
        camera_dropped_frames: facts.capture.dropped,
        fragment_secs: facts.capture.fragment_secs,
        clock_synced: env.clock_synced,
        inputs: facts.devices.clone(),
        upload: facts.upload.map(|u| UploadQueue {
            recordings: u.recordings_pending,
            bytes: u.bytes_pending,
            last_success_utc: u.last_success_utc.clone(),
            last_error: u.last_error.clone(),
            delivered: u.delivered,
            server: u.server.clone(),
        }),
        cert_days_left: env.cert_days_left,
        signer: settings.signer.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_secs: uptime.as_secs(),
        time_utc: rfc3339(now),
    };
    Published {
        status,
        light,
        capturing: facts.capturing,
    }
}

/// Equal but for the clock fields.
fn same_substance(a: &Published, b: &Published) -> bool {
    a.light == b.light
        && a.capturing == b.capturing
        && Status {
            time_utc: b.status.time_utc.clone(),
            uptime_secs: b.status.uptime_secs,
            ..a.status.clone()
        } == b.status
}

/// What MQTT's status publication is judged by: the substance, not the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    state: neoflix_control::State,
    reasons: Vec<String>,
    recording: Option<String>,
    upload_pending: Option<usize>,
}

impl Summary {
    /// The summary of a status.
    pub fn of(s: &Status) -> Summary {
        Summary {
            state: s.state,
            reasons: s.reasons.clone(),
            recording: s.recording.clone(),
            upload_pending: s.upload.as_ref().map(|u| u.recordings),
        }
    }
}

/// The one line `systemctl status` shows: "ready", "recording ID" or "not ready: first reason".
pub fn status_line(s: &Status) -> String {
    match (&s.recording, s.reasons.first()) {
        (Some(id), _) => format!("recording {id}"),
        (None, None) => "ready".to_string(),
        (None, Some(why)) => format!("not ready: {why}"),
    }
}

/// Builds and publishes the status; owned by the conductor.
#[derive(Debug)]
pub struct Publisher {
    settings: StatusSettings,
    tx: watch::Sender<Published>,
    /// For the one fault event per camera failure.
    events: Events,
    /// When the daemon started, for `uptime_secs`.
    started: Instant,
    /// When the status was last sent.
    sent: Instant,
    /// A camera fault event went out and the camera has not recovered since.
    camera_fault_reported: bool,
    /// The same for the microphone.
    microphone_fault_reported: bool,
    /// The same for the second camera.
    second_camera_fault_reported: bool,
    /// The encoder fallback's fault event went out (once: it lasts until a restart).
    encoder_fault_reported: bool,
}

impl Publisher {
    /// A publisher whose watch starts with `initial`.
    pub fn new(settings: StatusSettings, events: Events, initial: &Facts) -> Publisher {
        let now = Instant::now();
        let first = build(&settings, initial, SystemTime::now(), Duration::ZERO);
        Publisher {
            settings,
            tx: watch::channel(first).0,
            events,
            started: now,
            sent: now,
            camera_fault_reported: false,
            microphone_fault_reported: false,
            second_camera_fault_reported: false,
            encoder_fault_reported: false,
        }
    }

    /// A reader of the published status.
    pub fn subscribe(&self) -> watch::Receiver<Published> {
        self.tx.subscribe()
    }

    /// Builds the status from `facts` and sends it if it changed in substance, or if the last one
    /// sent is a second old.
    pub fn publish(&mut self, facts: &Facts) {
        let now = Instant::now();
        let new = build(&self.settings, facts, SystemTime::now(), now - self.started);
        self.camera_fault_event(facts.recorder);
        self.capture_fault_events(facts.capture);
        let changed = {
            let old = self.tx.borrow();
            if old.status.reasons != new.status.reasons {
                log::info!(device = self.settings.device_id.as_str(), ready = new.status.ready,
                    reasons = new.status.reasons.join("; ").as_str(); "readiness changed");
            }
            !same_substance(&old, &new)
        };
        if changed || now - self.sent >= REFRESH {
            self.tx.send_replace(new);
            self.sent = now;
        }
    }

    /// One fault event when the camera stops delivering (pipeline error or silent stall), not
    /// one per retry.
    fn camera_fault_event(&mut self, r: &neoflix_recorder::Status) {
        let camera = r.reason.as_ref().filter(|r| r.starts_with("camera"));
        match (camera, self.camera_fault_reported) {
            (Some(reason), false) => {
                self.events.send(neoflix_mqtt::Event::Fault {
                    component: "camera".into(),
                    reason: reason.trim_start_matches("camera: ").to_string(),
                });
                self.camera_fault_reported = true;
            }
            (None, true) => self.camera_fault_reported = false,
            _ => {}
        }
    }
}

impl Publisher {
    /// One fault event when the microphone or the second camera goes missing (again after it
    /// came back), and one when x264 replaces the hardware encoder.
    fn capture_fault_events(&mut self, c: &capture::Facts) {
        let missing = c.audio.as_ref().and_then(|a| a.missing.as_ref());
        match (missing, self.microphone_fault_reported) {
            (Some(reason), false) => {
                self.events.send(neoflix_mqtt::Event::Fault {
                    component: "microphone".into(),
                    reason: reason.clone(),
                });
                self.microphone_fault_reported = true;
            }
            (None, true) => self.microphone_fault_reported = false,
            _ => {}
        }
        let missing = c.second.as_ref().and_then(|v| v.missing.as_ref());
        match (missing, self.second_camera_fault_reported) {
            (Some(reason), false) => {
                self.events.send(neoflix_mqtt::Event::Fault {
                    component: "second_camera".into(),
                    reason: reason.clone(),
                });
                self.second_camera_fault_reported = true;
            }
            (None, true) => self.second_camera_fault_reported = false,
            _ => {}
        }
        if let (Some(reason), false) = (&c.encoder_fallback, self.encoder_fault_reported) {
            self.events.send(neoflix_mqtt::Event::Fault {
                component: "encoder".into(),
                reason: reason.clone(),
            });
            self.encoder_fault_reported = true;
        }
    }
}

/// Gathers the [`Environment`] every few seconds, off the runtime, until `stop`.
pub async fn watch_environment(
    recordings_dir: PathBuf,
    device_cert: Option<PathBuf>,
    tx: watch::Sender<Environment>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ENVIRONMENT_EVERY) => {}
            _ = stop.changed() => return,
        }
        let (dir, cert) = (recordings_dir.clone(), device_cert.clone());
        if let Ok(env) =
            tokio::task::spawn_blocking(move || Environment::gather(&dir, cert.as_deref())).await
        {
            tx.send_if_modified(|e| {
                let changed = *e != env;
                *e = env;
                changed
            });
        }
    }
}

#[cfg(test)]
impl Published {
    /// A ready room, for tests of the readers.
    pub(crate) fn for_tests() -> Published {
        let recorder = neoflix_recorder::Status {
            state: neoflix_recorder::Phase::Ready,
            ready: true,
            recording: false,
            preroll: Duration::from_secs(2),
            reason: None,
        };
        let facts = Facts {
            recorder: &recorder,
            recording: None,
            storage: &storage::Facts::default(),
            capture: &capture::Facts::default(),
            environment: &Environment {
                free_bytes: None,
                clock_synced: true,
                cert_days_left: None,
            },
            devices: &BTreeMap::new(),
            upload: None,
            capturing: false,
        };
        build(
            &StatusSettings {
                device_id: "room-1".into(),
                full_recording_bytes: 1,
                readiness: neoflix_config::Readiness {
                    require_clock_sync: false,
                    cert_min_days: 0,
                },
                signer: None,
            },
            &facts,
            SystemTime::now(),
            Duration::ZERO,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder(
        state: neoflix_recorder::Phase,
        recording: bool,
        reason: Option<&str>,
    ) -> neoflix_recorder::Status {
        neoflix_recorder::Status {
            state,
            ready: reason.is_none(),
            recording,
            preroll: Duration::from_millis(2500),
            reason: reason.map(str::to_string),
        }
    }

    fn settings() -> StatusSettings {
        StatusSettings {
            device_id: "room-1".into(),
            full_recording_bytes: 1000,
            readiness: neoflix_config::Readiness {
                require_clock_sync: true,
                cert_min_days: 14,
            },
            signer: None,
        }
    }

    #[test]
    fn the_status_says_what_each_part_reports() {
        let r = recorder(neoflix_recorder::Phase::Recording, true, None);
        let open = OpenRecording {
            id: "room-1-x".into(),
            started_utc: "2026-01-01T00:00:00Z".into(),
        };
        let storage = storage::Facts {
            open: Some(("room-1-x".into(), Duration::from_millis(12_300))),
            finalized: 2,
            error: None,
        };
        let capture = capture::Facts {
            encoder: "x264enc".into(),
            frames: 100,
            dropped: 3,
            fps: 14.96,
            paused: false,
            encoder_fallback: Some("the hardware encoder failed 3 times in a row".into()),
            fragment_secs: 2.0,
            audio: Some(capture::AudioFacts {
                device: "hw:CARD=Mic".into(),
                flowing: true,
                peak_dbfs: Some(-23.5),
                missing: None,
            }),
            second: Some(capture::ViewFacts {
                device: "/dev/v4l/by-id/overhead".into(),
                missing: Some("missing: unplugged".into()),
            }),
        };
        let env = Environment {
            free_bytes: Some(500),
            clock_synced: true,
            cert_days_left: None,
        };
        let devices = BTreeMap::from([("pedal".to_string(), "ok".to_string())]);
        let facts = Facts {
            recorder: &r,
            recording: Some(&open),
            storage: &storage,
            capture: &capture,
            environment: &env,
            devices: &devices,
            upload: None,
            capturing: true,
        };
        let p = build(
            &settings(),
            &facts,
            SystemTime::UNIX_EPOCH,
            Duration::from_secs(7),
        );
        let s = &p.status;
        assert_eq!(s.recording.as_deref(), Some("room-1-x"));
        assert_eq!(s.recording_secs, Some(12.3));
        assert_eq!(s.preroll_secs, 2.5);
        assert_eq!(
            (s.encoder.as_str(), s.camera_fps, s.camera_dropped_frames),
            ("x264enc", 15.0, 3)
        );
        assert_eq!(s.recordings_finalized, 2);
        assert!(s.encoder_fallback.as_deref().unwrap().contains("3 times"));
        assert_eq!(s.fragment_secs, 2.0);
        let audio = s.audio.as_ref().unwrap();
        assert_eq!(
            (audio.device.as_str(), audio.flowing, audio.peak_dbfs),
            ("hw:CARD=Mic", true, Some(-23.5))
        );
        let second = s.second_camera.as_ref().unwrap();
        assert_eq!(second.missing.as_deref(), Some("missing: unplugged"));
        assert!(s.reasons.contains(
            &"second camera /dev/v4l/by-id/overhead missing: recording the first view alone (missing: unplugged)".to_string()
        ), "{:?}", s.reasons);
        assert_eq!(s.uptime_secs, 7);
        assert_eq!(s.time_utc, "1970-01-01T00:00:00Z");
        // Too little room for a full recording: not ready, and said so; the light still says
        // "recording" (only the camera matters for it while recording).
        assert!(!s.ready && !s.full_recording_fits);
        assert!(
            s.reason
                .as_deref()
                .unwrap()
                .starts_with("storage: 0 MB free")
        );
        assert_eq!(p.light, Pattern::On);
        assert_eq!(status_line(s), "recording room-1-x");

        // The conductor knows of a new recording before storage opened it: no stale duration.
        let newer = OpenRecording {
            id: "room-1-y".into(),
            ..open.clone()
        };
        let facts = Facts {
            recording: Some(&newer),
            ..facts
        };
        let p = build(&settings(), &facts, SystemTime::UNIX_EPOCH, Duration::ZERO);
        assert_eq!(p.status.recording_secs, Some(0.0));
    }

    #[test]
    fn only_the_clock_fields_changing_is_no_change_in_substance() {
        let a = Published::for_tests();
        let mut b = a.clone();
        b.status.time_utc = "later".into();
        b.status.uptime_secs += 5;
        assert!(same_substance(&a, &b));
        b.status.preroll_secs += 1.0;
        assert!(!same_substance(&a, &b));
        let mut c = a.clone();
        c.light = Pattern::FastBlink;
        assert!(!same_substance(&a, &c));
    }
}
