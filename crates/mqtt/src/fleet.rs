//! The fleet view without I/O, shared by `neoflix fleet` and the department server's
//! `/api/fleet`: what each device's status topic retains, read once into a [`Retained`] (the
//! box's [`Status`], the last will, or something unreadable), and the rows and table rendered
//! from them for a given time, sorted by device.

use std::collections::BTreeMap;

use neoflix_control::{State, Status};
// Text from outside (device ids, reasons) is printed with control characters escaped.
use neoflix_logging::escape_controls as printable;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What a device's status topic retains, read once.
#[derive(Debug, Clone, PartialEq)]
pub enum Retained {
    /// The box's status.
    Status(Box<Status>),
    /// `{"state":"offline"}`: the box's last will, or its clean stop.
    Offline,
    /// Neither: a box of another version, or something that is not a box. The error says why.
    Unreadable(String),
}

/// The last will, exactly: a status that merely says "offline" among other fields is not one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Will {
    #[allow(dead_code)] // Read to check it is there and says offline.
    state: Offline,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Offline {
    Offline,
}

impl Retained {
    /// Reads a retained status payload.
    pub fn parse(payload: &[u8]) -> Retained {
        match serde_json::from_slice::<Status>(payload) {
            Ok(s) => Retained::Status(Box::new(s)),
            Err(e) => match serde_json::from_slice::<Will>(payload) {
                Ok(_) => Retained::Offline,
                Err(_) => Retained::Unreadable(e.to_string()),
            },
        }
    }

    /// The state column: the box's state, `offline` or `unreadable`.
    pub fn state_name(&self) -> &'static str {
        match self {
            Retained::Status(s) => s.state.as_str(),
            Retained::Offline => "offline",
            Retained::Unreadable(_) => "unreadable",
        }
    }

    fn status(&self) -> Option<&Status> {
        match self {
            Retained::Status(s) => Some(s),
            _ => None,
        }
    }
}

/// A status older than this is shown as stale: the box publishes at least every
/// `mqtt.status_interval_secs` (at most an hour, 30 s by default) and on every change.
pub const STALE_SECS: i64 = 180;

/// Seconds since the box took `status`, by its own clock (`time_utc`); `None` when it has none.
pub fn age_secs(status: &Status, now: OffsetDateTime) -> Option<i64> {
    let t = OffsetDateTime::parse(
        &status.time_utc,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()?;
    Some((now - t).whole_seconds().max(0))
}

/// One device, as `--once --json` prints it (documented in `docs/mqtt.md`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row<'a> {
    /// The device id, from the topic.
    pub device: &'a str,
    /// `starting` ... `fault`, `offline` or `unreadable`.
    pub state: &'static str,
    /// Whether a trigger now captures everything; false unless the box says so.
    pub ready: bool,
    /// Why not ready.
    pub reasons: &'a [String],
    /// The open recording.
    pub recording: Option<&'a str>,
    /// Its video so far.
    pub recording_secs: Option<f64>,
    /// Recordings waiting for the department.
    pub upload_recordings: Option<usize>,
    /// Their bytes.
    pub upload_bytes: Option<u64>,
    /// The last upload failure.
    pub upload_last_error: Option<&'a str>,
    /// Free space for recordings.
    pub storage_free_bytes: Option<u64>,
    /// Whether one more full-length recording fits.
    pub full_recording_fits: Option<bool>,
    /// Seconds since the status was taken.
    pub last_seen_secs: Option<i64>,
    /// The whole status, when there is one.
    pub status: Option<&'a Status>,
    /// Why the status could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

/// Every device's retained status, by device id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fleet {
    devices: BTreeMap<String, Retained>,
}

impl Fleet {
    /// Takes a retained message of `device`'s status topic; an empty one (a retained message
    /// cleared) forgets the device.
    pub fn update(&mut self, device: &str, payload: &[u8]) {
        if payload.is_empty() {
            self.devices.remove(device);
        } else {
            self.devices
                .insert(device.to_string(), Retained::parse(payload));
        }
    }

    /// How many devices have a status.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether no device has a status.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// What `device`'s topic retains.
    pub fn get(&self, device: &str) -> Option<&Retained> {
        self.devices.get(device)
    }

    /// One row per device, sorted by device id.
    pub fn rows(&self, now: OffsetDateTime) -> Vec<Row<'_>> {
        self.devices
            .iter()
            .map(|(device, r)| {
                let s = r.status();
                let upload = s.and_then(|s| s.upload.as_ref());
                Row {
                    device,
                    state: r.state_name(),
                    ready: s.is_some_and(|s| s.ready),
                    reasons: s.map(|s| &s.reasons[..]).unwrap_or_default(),
                    recording: s.and_then(|s| s.recording.as_deref()),
                    recording_secs: s.and_then(|s| s.recording_secs),
                    upload_recordings: upload.map(|u| u.recordings),
                    upload_bytes: upload.map(|u| u.bytes),
                    upload_last_error: upload.and_then(|u| u.last_error.as_deref()),
                    storage_free_bytes: s.and_then(|s| s.storage_free_bytes),
                    full_recording_fits: s.map(|s| s.full_recording_fits),
                    last_seen_secs: s.and_then(|s| age_secs(s, now)),
                    status: s,
                    error: match r {
                        Retained::Unreadable(e) => Some(e),
                        _ => None,
                    },
                }
            })
            .collect()
    }

    /// The rows as the JSON array `--once --json` prints.
    pub fn json(&self, now: OffsetDateTime) -> String {
        serde_json::to_string_pretty(&self.rows(now)).expect("rows serialize")
    }

    /// The table for people: one line per device, sorted by device id. Everything from the
    /// boxes is printed with control characters escaped, so a box cannot drive the terminal.
    pub fn table(&self, now: OffsetDateTime) -> String {
        let line = |cells: [&str; 9]| {
            let l = format!(
                "{:<16} {:<10} {:<5} {:<9} {:<11} {:<9} {:<9} {:<8} {}",
                cells[0],
                cells[1],
                cells[2],
                cells[3],
                cells[4],
                cells[5],
                cells[6],
                cells[7],
                cells[8]
            );
            format!("{}\n", l.trim_end())
        };
        let mut out = line([
            "DEVICE",
            "STATE",
            "READY",
            "RECORDING",
            "QUEUE",
            "FREE",
            "SEEN",
            "MIC",
            "WHY NOT READY",
        ]);
        for row in self.rows(now) {
            let recording = row
                .recording_secs
                .map(|t| format!("{}:{:02}", t as u64 / 60, t as u64 % 60))
                .unwrap_or_else(|| "-".into());
            let queue = match (row.upload_recordings, row.upload_bytes) {
                (Some(n), Some(b)) => format!("{n} / {} MB", b / 1_000_000),
                _ => "-".into(),
            };
            let free = row
                .storage_free_bytes
                .map(|b| format!("{:.1} GB", b as f64 / 1e9))
                .unwrap_or_else(|| "-".into());
            let seen = match row.last_seen_secs {
                Some(a) if a > STALE_SECS => format!("{a}s STALE"),
                Some(a) => format!("{a}s ago"),
                None => "-".into(),
            };
            // The microphone's level, so a dead or muted one shows before a review finds a
            // silent recording.
            let mic = match row.status.and_then(|s| s.audio.as_ref()) {
                None => "-".to_string(),
                Some(a) if a.missing.is_some() => "missing".into(),
                Some(a) if !a.flowing => "no sound".into(),
                Some(a) => match a.peak_dbfs {
                    Some(p) if p <= -90.0 => "silent".into(),
                    Some(p) => format!("{p:.0} dB"),
                    None => "-".into(),
                },
            };
            let why = match row.error {
                Some(e) => format!("cannot read its status: {e}"),
                None => row.reasons.join("; "),
            };
            out.push_str(&line([
                &printable(row.device),
                row.state,
                if row.ready { "yes" } else { "NO" },
                &recording,
                &queue,
                &free,
                &seen,
                &mic,
                &printable(&why),
            ]));
        }
        if self.devices.is_empty() {
            out.push_str("(no device has published a status yet)\n");
        }
        out
    }

    /// How many devices are in `state`.
    pub fn count(&self, state: State) -> usize {
        self.devices
            .values()
            .filter(|r| r.status().is_some_and(|s| s.state == state))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-26 03:15:00 UTC);

    /// A status as a box publishes it, with `fields` changed.
    fn status(fields: Value) -> Vec<u8> {
        let mut s = json!({
            "device_id": "room", "state": "ready", "ready": true, "reasons": [],
            "preroll_secs": 60.0, "encoder": "x264enc", "recordings_finalized": 0,
            "time_utc": "2026-11-26T03:14:50Z"
        });
        for (k, v) in fields.as_object().unwrap() {
            s[k] = v.clone();
        }
        serde_json::to_vec(&s).unwrap()
    }

    #[test]
    fn retained_payloads_are_read_once_into_a_status_the_last_will_or_an_error() {
        let Retained::Status(s) = Retained::parse(&status(json!({"state": "recording"}))) else {
            panic!()
        };
        assert_eq!(s.state, State::Recording);
        assert_eq!(
            Retained::parse(crate::OFFLINE.as_bytes()),
            Retained::Offline
        );
        // "offline" among other fields is neither a status nor the will.
        for bad in [
            &br#"{"state":"offline","forged":true}"#[..],
            &status(json!({"state": "exploded"})),
            b"not json",
        ] {
            let r = Retained::parse(bad);
            assert!(matches!(r, Retained::Unreadable(_)), "{r:?}");
            assert_eq!(r.state_name(), "unreadable");
        }
        let Retained::Unreadable(e) = Retained::parse(&status(json!({"state": "exploded"}))) else {
            panic!()
        };
        assert!(e.contains("exploded"), "{e}");
    }

    #[test]
    fn rows_are_sorted_by_device_and_say_what_is_known() {
        let mut f = Fleet::default();
        f.update(
            "room-2",
            &status(json!({"state": "recording", "recording": "room-2-x", "recording_secs": 75.5,
                "upload": {"recordings": 1, "bytes": 2_000_000, "delivered": 0, "last_error": "503"},
                "storage_free_bytes": 5_000_000_000u64})),
        );
        f.update("room-1", crate::OFFLINE.as_bytes());
        f.update("room-3", b"{}");
        let rows = f.rows(NOW);
        let devices: Vec<_> = rows.iter().map(|r| r.device).collect();
        assert_eq!(devices, ["room-1", "room-2", "room-3"]);
        let (off, rec, bad) = (&rows[0], &rows[1], &rows[2]);
        assert_eq!((off.state, off.ready, off.status), ("offline", false, None));
        assert_eq!(off.last_seen_secs, None);
        assert_eq!((rec.state, rec.ready), ("recording", true));
        assert_eq!(rec.recording, Some("room-2-x"));
        assert_eq!(
            (rec.upload_recordings, rec.upload_bytes),
            (Some(1), Some(2_000_000))
        );
        assert_eq!(rec.upload_last_error, Some("503"));
        assert_eq!(rec.last_seen_secs, Some(10));
        assert_eq!(rec.full_recording_fits, Some(true));
        assert_eq!(bad.state, "unreadable");
        assert!(bad.error.is_some_and(|e| e.contains("missing field")));
        assert_eq!(f.count(State::Recording), 1);

        // An empty retained message clears the device.
        f.update("room-3", b"");
        assert_eq!(f.len(), 2);
        assert!(f.get("room-3").is_none());
    }

    #[test]
    fn json_output_has_the_documented_fields() {
        let mut f = Fleet::default();
        f.update("room-1", &status(json!({})));
        f.update("room-9", b"[]");
        let v: Value = serde_json::from_str(&f.json(NOW)).unwrap();
        let rows = v.as_array().unwrap();
        let fields: Vec<&str> = rows[0]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        for documented in [
            "device",
            "state",
            "ready",
            "reasons",
            "recording",
            "recording_secs",
            "upload_recordings",
            "upload_bytes",
            "upload_last_error",
            "storage_free_bytes",
            "full_recording_fits",
            "last_seen_secs",
            "status",
        ] {
            assert!(fields.contains(&documented), "{documented} missing: {v}");
        }
        assert_eq!(rows[0]["state"], "ready");
        assert_eq!(rows[0]["status"]["encoder"], "x264enc");
        assert!(rows[0].get("error").is_none());
        assert_eq!(rows[1]["status"], Value::Null);
        assert!(rows[1]["error"].is_string());
    }

    #[test]
    fn the_table_shows_each_microphone_so_a_dead_one_is_seen() {
        let mut f = Fleet::default();
        let mic = |audio: serde_json::Value| status(json!({ "audio": audio }));
        f.update(
            "a",
            &mic(json!({"device": "hw:1", "flowing": true, "peak_dbfs": -23.4})),
        );
        f.update(
            "b",
            &mic(json!({"device": "hw:1", "flowing": true, "peak_dbfs": -100.0})),
        );
        f.update(
            "c",
            &mic(json!({"device": "hw:1", "flowing": false, "missing": "no card"})),
        );
        f.update("d", &mic(json!({"device": "hw:1", "flowing": false})));
        f.update("e", &status(json!({})));
        let t = f.table(NOW);
        let mics: Vec<&str> = t
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().nth(8).unwrap_or(""))
            .collect();
        assert!(t.lines().next().unwrap().contains(" MIC "), "{t}");
        assert_eq!(mics, ["-23", "silent", "missing", "no", "-"], "{t}");
    }

    #[test]
    fn the_table_marks_stale_boxes_and_escapes_what_boxes_send() {
        let mut f = Fleet::default();
        assert!(f.table(NOW).contains("no device has published"));
        f.update(
            "room-1",
            &status(
                json!({"ready": false, "reasons": ["clock not synchronised\u{1b}[2J"],
                "time_utc": "2026-11-26T03:00:00Z"}),
            ),
        );
        f.update(
            "room-2",
            &status(json!({"state": "recording", "recording_secs": 75.0})),
        );
        f.update("room-9\u{7}", crate::OFFLINE.as_bytes());
        let t = f.table(NOW);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(
            lines[1].starts_with("room-1") && lines[1].contains("900s STALE"),
            "{t}"
        );
        assert!(
            lines[1].contains(" NO ") && lines[1].contains("clock not synchronised"),
            "{t}"
        );
        assert!(
            lines[2].contains("recording") && lines[2].contains("1:15"),
            "{t}"
        );
        assert!(
            lines[2].contains("10s ago") && !lines[2].contains("STALE"),
            "{t}"
        );
        assert!(lines[3].contains("offline"), "{t}");
        assert!(!t.contains('\u{1b}') && !t.contains('\u{7}'), "{t:?}");
        assert!(
            t.contains(r"\u{1b}[2J") && t.contains(r"room-9\u{7}"),
            "{t}"
        );
    }
}
