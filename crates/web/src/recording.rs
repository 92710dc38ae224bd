//! The server's answer to `GET /api/recordings/{id}`, checked once before the page plays or
//! downloads anything: the page works from the [`Recording`] this gives, never from the raw
//! answer.
//!
//! The server (or a room box, whose manifest it passes on) is outside data. The checks refuse
//! an answer about another recording than the one asked for (another id or room, a summary
//! that differs from the manifest, an objects address of another recording), a recording
//! sealed to another department key (named, instead of a failure to open every object), a
//! manifest whose fragments name an init segment it does not list, and lengths no recording
//! has; they cap what would otherwise grow the page without bound (markers, text). Each
//! fragment's place on the timeline is computed here, once, from the manifest's lengths.

use neoflix_format::ObjectEntry;
use neoflix_format::manifest::FORMAT;
use neoflix_format::review_api::{RecordingAnswer, Upload};
use neoflix_mp4::chapters::safe_title;
use serde::Serialize;

use crate::WebError;

/// The longest fragment accepted: a fragment is one keyframe interval, about a second.
pub const MAX_FRAGMENT_MS: u64 = 600_000;

/// The longest recording accepted: a week, beyond any review session and within what the
/// download's sample tables hold (`neoflix_mp4::MAX_SAMPLES_PER_TRACK`).
pub const MAX_DURATION_SECS: f64 = 7.0 * 24.0 * 3600.0;

/// The most markers the page lists: each is a button and a pin on the timeline, and a
/// manifest may be 64 MiB.
pub const MAX_MARKERS: usize = 1000;

/// The longest short text shown (trigger, stop reason, times), in bytes.
const MAX_TEXT_BYTES: usize = 100;

/// How far the manifest's total may differ from the sum of its fragments' lengths (they are
/// written from the same lengths, rounded to milliseconds).
const DURATION_SLACK_SECS: f64 = 0.5;

/// What the page asked for: `/recordings/<id>[?device=<room>]`.
#[derive(Clone)]
pub struct Asked<'a> {
    /// The recording id in the page's address.
    pub id: &'a str,
    /// The room in the page's address, if it names one.
    pub device: Option<&'a str>,
    /// The department key unlocked in this tab (its id).
    pub key_id: &'a str,
    /// The key itself, to open the markers' sealed labels; without it they show as sealed.
    pub keyring: Option<&'a crate::Keyring>,
}

/// One sealed object and its key record, as the page fetches and opens them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Object {
    /// The sealed object's name (under [`Recording::objects`]).
    pub file: String,
    /// The key record's name.
    pub key_file: String,
    /// The manifest's SHA-256 of the sealed bytes.
    pub sha256: String,
    /// The manifest's SHA-256 of the key record.
    pub key_sha256: String,
}

/// A fragment and its place on the recording's timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fragment {
    /// The sealed fragment.
    #[serde(flatten)]
    pub object: Object,
    /// The index of its init segment in [`Recording::inits`] (checked to exist).
    pub init: usize,
    /// Where it starts, seconds from the first frame: the lengths of the fragments before it.
    pub start_secs: f64,
    /// Where it ends.
    pub end_secs: f64,
}

/// A marker the page shows: a chapter of the player and of downloads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Marker {
    /// Seconds from the first frame, within the recording.
    pub offset_secs: f64,
    /// The label, made safe (`neoflix_mp4::chapters::safe_title`), or `Marker N` (its number in
    /// the manifest) when it has none.
    pub label: String,
}

/// A recording the page may play: the checked, typed form of the answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recording {
    /// The recording id (the one asked for).
    pub id: String,
    /// The room box (the one asked for, when the address names one).
    pub device: String,
    /// Where its objects are: `/api/recordings/<id>/objects/`.
    pub objects: String,
    /// What started it.
    pub trigger: String,
    /// Why it stopped.
    pub stop_reason: String,
    /// `complete` or `interrupted`.
    pub status: String,
    /// The trigger's wall-clock time (RFC 3339, as the box wrote it).
    pub trigger_utc: String,
    /// The first frame's wall-clock time, when the manifest has it.
    pub first_frame_utc: Option<String>,
    /// Seconds before the trigger, within the recording.
    pub preroll_secs: f64,
    /// The sum of the fragments' lengths: the timeline the page plays.
    pub duration_secs: f64,
    /// The init segments, by index.
    pub inits: Vec<Object>,
    /// The fragments in playback order.
    pub fragments: Vec<Fragment>,
    /// The markers within the recording, in the manifest's order, at most [`MAX_MARKERS`].
    pub markers: Vec<Marker>,
    /// Markers of the manifest not in [`Recording::markers`] (beyond the cap, or outside the
    /// recording).
    pub markers_left_out: usize,
}

fn refuse(why: String) -> WebError {
    WebError::Answer(why)
}

/// A name the server can put in a path as it is: what recording ids, rooms and object names
/// are (`A-Z a-z 0-9 - _ .`, not starting with a dot).
fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn short(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_TEXT_BYTES {
            out.push('…');
            break;
        }
        out.push(c);
    }
    out
}

fn object(what: &str, e: &ObjectEntry) -> Result<Object, WebError> {
    if !plain(&e.file) || !plain(&e.key_file) {
        return Err(refuse(format!(
            "the manifest names {what} {} by a name no recording has",
            e.index
        )));
    }
    Ok(Object {
        file: e.file.clone(),
        key_file: e.key_file.clone(),
        sha256: e.sha256.clone(),
        key_sha256: e.key_sha256.clone(),
    })
}

impl Recording {
    /// Parses and checks the answer's JSON text against what the page asked for.
    pub fn check(answer_json: &str, asked: &Asked<'_>) -> Result<Recording, WebError> {
        let a: RecordingAnswer = serde_json::from_str(answer_json)
            .map_err(|e| refuse(format!("the server's answer is not a recording: {e}")))?;
        let m = &a.manifest;
        if !plain(asked.id) {
            return Err(WebError::Argument(format!(
                "{:?} is not a recording id",
                short(asked.id)
            )));
        }
        // Every id the answer carries must be the one asked for: a server that answers with
        // another recording would have the reviewer watch (and the audit log name) the wrong one.
        let ids = [&a.id, &a.summary.id, &m.recording_id];
        if ids.iter().any(|i| i.as_str() != asked.id) {
            return Err(refuse(format!(
                "asked for recording {}, the server answered with {}",
                asked.id,
                ids.iter()
                    .find(|i| i.as_str() != asked.id)
                    .map_or(String::new(), |i| short(i))
            )));
        }
        let rooms = [&a.summary.device, &m.device_id];
        if rooms.iter().any(|d| **d != a.device)
            || asked.device.is_some_and(|d| d != a.device)
            || !plain(&a.device)
        {
            return Err(refuse(format!(
                "the answer's room ({}) is not the recording's or the one asked for",
                short(&a.device)
            )));
        }
        let objects = format!("/api/recordings/{}/objects/", asked.id);
        if a.objects != objects {
            return Err(refuse(format!(
                "the recording's objects are at {objects}, the server says {}",
                short(&a.objects)
            )));
        }
        if a.summary.upload != Upload::Complete {
            return Err(refuse("the recording is still uploading".into()));
        }
        if m.format != FORMAT {
            return Err(refuse(format!(
                "the manifest's format is {}, not {FORMAT}",
                short(&m.format)
            )));
        }
        if m.recipient_key_id != asked.key_id {
            return Err(refuse(format!(
                "the recording is sealed to department key {}, this reviewer holds {}: enrol the reviewer with that key",
                short(&m.recipient_key_id),
                asked.key_id
            )));
        }
        if a.summary
            .trigger_utc
            .as_ref()
            .is_some_and(|t| *t != m.trigger_utc)
        {
            return Err(refuse(
                "the recordings list and the manifest give different trigger times".into(),
            ));
        }
        if m.init_segments.is_empty() || m.fragments.is_empty() {
            return Err(refuse("the manifest lists no video".into()));
        }
        let inits = m
            .init_segments
            .iter()
            .map(|e| object("init segment", e))
            .collect::<Result<Vec<_>, _>>()?;

        let mut fragments = Vec::with_capacity(m.fragments.len());
        let mut at_ms: u64 = 0;
        for e in &m.fragments {
            let ms = e.duration_ms.unwrap_or(0);
            if ms == 0 || ms > MAX_FRAGMENT_MS {
                return Err(refuse(format!(
                    "the manifest gives fragment {} a length of {ms} ms",
                    e.index
                )));
            }
            let init = usize::try_from(e.init.unwrap_or(0))
                .ok()
                .filter(|&i| i < inits.len())
                .ok_or_else(|| {
                    refuse(format!(
                        "fragment {} names init segment {}, which the manifest does not list",
                        e.index,
                        e.init.unwrap_or(0)
                    ))
                })?;
            let start_secs = at_ms as f64 / 1000.0;
            at_ms = at_ms.saturating_add(ms);
            fragments.push(Fragment {
                object: object("fragment", e)?,
                init,
                start_secs,
                end_secs: at_ms as f64 / 1000.0,
            });
        }
        let duration_secs = at_ms as f64 / 1000.0;
        if duration_secs > MAX_DURATION_SECS {
            return Err(refuse(format!(
                "the manifest's fragments last {duration_secs} s, more than any recording"
            )));
        }
        let total_ok = |d: f64| (d - duration_secs).abs() <= DURATION_SLACK_SECS;
        if !total_ok(m.duration_secs) || !a.summary.duration_secs.is_none_or(total_ok) {
            return Err(refuse(format!(
                "the manifest's fragments last {duration_secs} s, but it says {} s (and the list {})",
                m.duration_secs,
                a.summary
                    .duration_secs
                    .map_or("nothing".into(), |d| format!("{d} s"))
            )));
        }
        if !(m.preroll_secs.is_finite() && (0.0..=duration_secs).contains(&m.preroll_secs)) {
            return Err(refuse(format!(
                "the manifest's pre-roll of {} s is not within the recording",
                m.preroll_secs
            )));
        }

        let mut markers = Vec::new();
        for (n, mk) in m.markers.iter().enumerate() {
            if markers.len() == MAX_MARKERS {
                break;
            }
            if (0.0..=duration_secs).contains(&mk.offset_secs) {
                let label = match (&mk.sealed_label, asked.keyring) {
                    (None, _) => safe_title(&mk.label),
                    (Some(s), Some(k)) => match k.open_label(m.label_recording_id(), &mk.utc, s) {
                        Ok(l) => safe_title(&l),
                        Err(_) => format!("Marker {} (its label does not open)", n + 1),
                    },
                    (Some(_), None) => format!("Marker {} (label sealed)", n + 1),
                };
                markers.push(Marker {
                    offset_secs: mk.offset_secs,
                    label: if label.trim().is_empty() {
                        format!("Marker {}", n + 1)
                    } else {
                        label
                    },
                });
            }
        }
        Ok(Recording {
            id: a.id,
            device: a.device,
            objects,
            trigger: short(&m.trigger),
            stop_reason: short(&m.stop_reason),
            status: m.status.as_str().into(),
            trigger_utc: short(&m.trigger_utc),
            first_frame_utc: m.first_frame_utc.as_deref().map(short),
            preroll_secs: m.preroll_secs,
            duration_secs,
            inits,
            fragments,
            markers_left_out: m.markers.len() - markers.len(),
            markers,
        })
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::{Value, json};

    const ID: &str = "0b5c2d6e-1f20-4a8b-9c3d-5e6f7a8b9c0d";
    const KEY: &str = "3f2a9c0d4e5b6a71";

    fn entry(i: u64, init: Option<u64>, ms: Option<u64>) -> Value {
        json!({ "index": i, "file": format!("frag-{i:06}.nfx"), "size": 100,
                "sha256": "ab".repeat(32), "key_file": format!("frag-{i:06}.key"),
                "key_sha256": "cd".repeat(32), "init": init, "duration_ms": ms })
    }

    /// What the server answers for a 3 s recording of room-1 with two markers.
    fn answer() -> Value {
        let manifest = json!({
            "format": FORMAT, "device_id": "room-1", "recording_id": ID,
            "status": "complete", "trigger": "pedal", "stop_reason": "pedal",
            "first_frame_utc": "2026-11-28T10:00:00.000Z", "trigger_utc": "2026-11-28T10:00:01.000Z",
            "stop_utc": "2026-11-28T10:00:03.000Z", "preroll_secs": 1.0, "duration_secs": 3.0,
            "recipient_key_id": KEY,
            "markers": [
                { "utc": "", "offset_secs": 1.5, "label": "cord\nclamped", "by": "control" },
                { "utc": "", "offset_secs": 2.5, "label": "", "by": "pedal" },
            ],
            "init_segments": [{ "index": 0, "file": "init-000000.nfx", "size": 100,
                "sha256": "ef".repeat(32), "key_file": "init-000000.key", "key_sha256": "01".repeat(32) }],
            "fragments": [entry(0, Some(0), Some(1000)), entry(1, Some(0), Some(1000)), entry(2, Some(0), Some(1000))],
            "chain": "00",
        });
        json!({
            "device": "room-1", "id": ID, "manifest": manifest,
            "summary": { "id": ID, "device": "room-1", "upload": "complete",
                         "trigger_utc": "2026-11-28T10:00:01.000Z", "duration_secs": 3.0 },
            "objects": format!("/api/recordings/{ID}/objects/"),
        })
    }

    fn asked() -> Asked<'static> {
        Asked {
            id: ID,
            device: Some("room-1"),
            key_id: KEY,
            keyring: None,
        }
    }

    fn check(a: &Value) -> Result<Recording, WebError> {
        Recording::check(&a.to_string(), &asked())
    }

    fn refused(a: &Value, why: &str) {
        let err = check(a).unwrap_err();
        assert!(matches!(err, WebError::Answer(_)), "{err}");
        assert!(err.to_string().contains(why), "{why}: {err}");
    }

    #[test]
    fn a_good_answer_gives_each_fragment_its_place() {
        let r = check(&answer()).unwrap();
        assert_eq!((r.id.as_str(), r.device.as_str()), (ID, "room-1"));
        let places: Vec<_> = r
            .fragments
            .iter()
            .map(|f| (f.start_secs, f.end_secs))
            .collect();
        assert_eq!(places, [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]);
        assert_eq!(r.duration_secs, 3.0);
        assert_eq!(r.markers[0].label, "cord clamped", "control characters go");
        assert_eq!(r.markers[1].label, "Marker 2");
        // Without a room in the address, the answer's is taken.
        let any_room = Asked {
            device: None,
            ..asked()
        };
        assert!(Recording::check(&answer().to_string(), &any_room).is_ok());
    }

    #[test]
    fn sealed_labels_open_with_the_tabs_key_and_only_for_their_own_marker() {
        let dept = neoflix_open::DepartmentSecretKey::generate().unwrap();
        let keyring = crate::Keyring::new(dept.clone());
        let mut a = answer();
        a["manifest"]["recipient_key_id"] = keyring.key_id().into();
        let (utc, moved) = ("2026-11-28T10:00:01.500Z", "2026-11-28T10:00:02.500Z");
        let seal = |at: &str, text: &str| {
            neoflix_seal::seal_label(&dept.public_key(), ID, at, text).unwrap()
        };
        a["manifest"]["markers"] = json!([
            { "utc": utc, "offset_secs": 1.5, "label": "", "sealed_label": seal(utc, "adrenaline <b>0.1</b>"), "by": "mqtt" },
            // Moved from the marker before: it does not open here.
            { "utc": moved, "offset_secs": 2.5, "label": "", "sealed_label": seal(utc, "moved"), "by": "mqtt" },
        ]);
        let asked = Asked {
            key_id: keyring.key_id(),
            keyring: Some(&keyring),
            ..asked()
        };
        let r = Recording::check(&a.to_string(), &asked).unwrap();
        assert_eq!(
            r.markers[0].label, "adrenaline <b>0.1</b>",
            "text, set as text"
        );
        assert_eq!(r.markers[1].label, "Marker 2 (its label does not open)");
        let without = Asked {
            keyring: None,
            ..asked
        };
        let r = Recording::check(&a.to_string(), &without).unwrap();
        assert_eq!(r.markers[0].label, "Marker 1 (label sealed)");
    }

    #[test]
    fn an_answer_about_another_recording_is_refused() {
        let mut a = answer();
        a["manifest"]["recording_id"] = "another".into();
        refused(&a, "answered with another");
        let mut a = answer();
        a["id"] = "another".into();
        refused(&a, "answered with another");
        let mut a = answer();
        a["summary"]["id"] = "another".into();
        refused(&a, "answered with another");
        let mut a = answer();
        a["manifest"]["device_id"] = "room-2".into();
        refused(&a, "room");
        let other_room = Asked {
            device: Some("room-2"),
            ..asked()
        };
        assert!(Recording::check(&answer().to_string(), &other_room).is_err());
        let mut a = answer();
        a["objects"] = "/api/recordings/another/objects/".into();
        refused(&a, "objects");
        let mut a = answer();
        a["objects"] = "https://elsewhere.example/".into();
        refused(&a, "objects");
        let mut a = answer();
        a["summary"]["trigger_utc"] = "2026-11-28T11:00:00.000Z".into();
        refused(&a, "trigger times");
        let mut a = answer();
        a["summary"]["duration_secs"] = 60.0.into();
        refused(&a, "the list 60 s");
    }

    #[test]
    fn another_departments_recording_is_named_not_failed_object_by_object() {
        let mut a = answer();
        a["manifest"]["recipient_key_id"] = "0000000000000000".into();
        refused(&a, "sealed to department key 0000000000000000");
    }

    #[test]
    fn absurd_lengths_and_dangling_indexes_are_refused() {
        let mut a = answer();
        a["manifest"]["fragments"][1] = entry(1, Some(0), Some(MAX_FRAGMENT_MS + 1));
        refused(&a, "a length of");
        let mut a = answer();
        a["manifest"]["fragments"][1] = entry(1, Some(0), None);
        refused(&a, "a length of 0 ms");
        let mut a = answer();
        a["manifest"]["fragments"][2] = entry(2, Some(1), Some(1000));
        refused(&a, "init segment 1");
        let mut a = answer();
        a["manifest"]["duration_secs"] = 1e12.into();
        refused(&a, "but it says");
        let mut a = answer();
        a["manifest"]["preroll_secs"] = (-1.0).into();
        refused(&a, "pre-roll");
        let mut a = answer();
        a["manifest"]["fragments"] = json!([]);
        refused(&a, "no video");
        let mut a = answer();
        a["manifest"]["fragments"][0]["file"] = "../../etc/passwd".into();
        refused(&a, "by a name");
        let mut a = answer();
        a["summary"]["upload"] = "uploading".into();
        refused(&a, "still uploading");
        refused(&json!({"device": "room-1"}), "not a recording");
    }

    #[test]
    fn markers_are_capped_and_kept_within_the_recording() {
        let mut a = answer();
        let many: Vec<Value> = (0..MAX_MARKERS + 10)
            .map(|i| json!({ "utc": "", "offset_secs": 1.0, "label": "x".repeat(10_000 + i), "by": "mqtt" }))
            .chain([json!({ "utc": "", "offset_secs": 99.0, "label": "after", "by": "mqtt" })])
            .collect();
        a["manifest"]["markers"] = many.into();
        let r = check(&a).unwrap();
        assert_eq!(r.markers.len(), MAX_MARKERS);
        assert_eq!(r.markers_left_out, 11);
        assert!(r.markers.iter().all(|m| m.label.len() <= 255));
        let mut a = answer();
        a["manifest"]["markers"][0]["offset_secs"] = (-5.0).into();
        a["manifest"]["trigger"] = "p".repeat(1 << 20).into();
        let r = check(&a).unwrap();
        assert_eq!((r.markers.len(), r.markers_left_out), (1, 1));
        assert!(r.trigger.len() <= MAX_TEXT_BYTES + 3);
    }
}
