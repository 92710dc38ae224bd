//! The manifest written when a recording stops, and the hash chain over its objects.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest's file name in a recording directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The largest manifest read: 64 MiB, several times that of a 24-hour recording of 1-second
/// fragments.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// The manifest format tag.
pub const FORMAT: &str = "neoflix-recording-v1";

/// How a recording ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Stopped and finalized by the daemon.
    Complete,
    /// Sealed after a crash or power cut: lacks at most the fragment being written.
    Interrupted,
}

impl Status {
    /// The name in the manifest, and in the server's index.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Complete => "complete",
            Status::Interrupted => "interrupted",
        }
    }

    /// The status [`Status::as_str`] names.
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "complete" => Some(Status::Complete),
            "interrupted" => Some(Status::Interrupted),
            _ => None,
        }
    }
}

/// A marker a clinician added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    /// Wall-clock time of the marker.
    pub utc: String,
    /// Seconds from the first frame of the recording.
    pub offset_secs: f64,
    /// Free text in clear: only in manifests written before labels were sealed; empty since.
    pub label: String,
    /// The label sealed to the department key (`docs/sealed-format.md`, "Marker labels"):
    /// base64 of the HPKE encapsulated key (32 bytes) and ciphertext. `None` for a marker
    /// without a label (a pedal's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_label: Option<String>,
    /// `pedal`, `mqtt` or `control`.
    pub by: String,
}

/// A step of the box's wall clock seen during a recording (NTP setting it, someone changing
/// it): between two fragments the clock moved `step_secs` more than the video did. Offsets
/// (markers, this) are on the video's own timeline and do not move with the clock; the UTC
/// stamps are the clock's view at the time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClockStep {
    /// Where, in seconds from the first frame.
    pub offset_secs: f64,
    /// By how much, in seconds: positive when the clock jumped ahead, negative when back.
    pub step_secs: f64,
    /// What the clock read there, after the step.
    pub utc: String,
}

/// The HPKE `info` of a sealed marker label.
pub const LABEL_INFO: &[u8] = b"neoflix marker label v1";
/// The longest label sealed, in bytes: longer text is cut at a character boundary.
pub const MAX_LABEL_BYTES: usize = 1024;
/// The longest `sealed_label` read, in characters.
pub const MAX_SEALED_LABEL_CHARS: usize = 4 * (32 + MAX_LABEL_BYTES + 16).div_ceil(3);

/// The HPKE associated data of a marker's sealed label: `"neoflix-marker-v1" 0x00 recording id
/// 0x00 the marker's utc`. A label moved to another recording or marker does not open.
pub fn label_aad(recording_id: &str, utc: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(20 + recording_id.len() + utc.len());
    aad.extend_from_slice(b"neoflix-marker-v1\0");
    aad.extend_from_slice(recording_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(utc.as_bytes());
    aad
}

/// `text` cut to at most `max` bytes at a character boundary.
pub fn cut_to(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// One sealed object (init segment or fragment) and its wrapped key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEntry {
    /// Position within the recording, from 0.
    pub index: u64,
    /// Sealed file name, in the recording directory.
    pub file: String,
    /// Sealed size in bytes.
    pub size: u64,
    /// SHA-256 of the sealed bytes, hex.
    pub sha256: String,
    /// Wrapped-key file name.
    pub key_file: String,
    /// SHA-256 of the wrapped-key record, hex.
    pub key_sha256: String,
    /// For fragments: index of the init segment they decode with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<u64>,
    /// For fragments: milliseconds of video.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// A recording's manifest (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// The room box.
    pub device_id: String,
    /// The recording.
    pub recording_id: String,
    /// The id the box first gave this recording, when the server already held another
    /// recording under that id and the box renamed this one (docs/upload-protocol.md). Its
    /// markers' labels stay sealed to that first id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renamed_from: Option<String>,
    /// Complete or interrupted.
    pub status: Status,
    /// What started it: `pedal`, `mqtt`, `control`.
    pub trigger: String,
    /// Why it stopped (`interrupted` after a crash).
    pub stop_reason: String,
    /// Wall-clock time of the first frame (start of the pre-roll).
    pub first_frame_utc: Option<String>,
    /// Wall-clock time of the trigger.
    pub trigger_utc: String,
    /// Wall-clock time of the stop.
    pub stop_utc: String,
    /// Seconds of video before the trigger.
    pub preroll_secs: f64,
    /// Seconds of video in all.
    pub duration_secs: f64,
    /// Key id of the department public key the data keys are wrapped to.
    pub recipient_key_id: String,
    /// Markers, in order.
    pub markers: Vec<Marker>,
    /// Steps of the wall clock during the recording, in order (none: the clock ran evenly).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clock_steps: Vec<ClockStep>,
    /// Sealed init segments.
    pub init_segments: Vec<ObjectEntry>,
    /// Sealed fragments, in playback order.
    pub fragments: Vec<ObjectEntry>,
    /// Hash chain over `recording_id`, the init segments and the fragments.
    pub chain: String,
}

impl Manifest {
    /// The recording id its marker labels are sealed to: the first one it had.
    pub fn label_recording_id(&self) -> &str {
        self.renamed_from.as_deref().unwrap_or(&self.recording_id)
    }
}

/// Computes the hash chain: `h0 = SHA-256("neoflix-chain-v1" 0x00 recording_id)`, then for each
/// init segment and then each fragment `h = SHA-256(h | kind | index | sha256 | key_sha256)`.
/// A removed, inserted, reordered or replaced entry changes the result.
pub fn chain(recording_id: &str, inits: &[ObjectEntry], fragments: &[ObjectEntry]) -> String {
    let mut h: [u8; 32] = Sha256::new()
        .chain_update(b"neoflix-chain-v1\0")
        .chain_update(recording_id.as_bytes())
        .finalize()
        .into();
    for (kind, list) in [(b'I', inits), (b'F', fragments)] {
        for o in list {
            h = Sha256::new()
                .chain_update(h)
                .chain_update([kind])
                .chain_update(o.index.to_be_bytes())
                .chain_update(o.sha256.as_bytes())
                .chain_update(o.key_sha256.as_bytes())
                .finalize()
                .into();
        }
    }
    hex::encode(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(i: u64) -> ObjectEntry {
        ObjectEntry {
            index: i,
            file: format!("frag-{i:06}.nfx"),
            size: 1,
            sha256: format!("{i:064x}"),
            key_file: String::new(),
            key_sha256: format!("{:064x}", i + 100),
            init: Some(0),
            duration_ms: Some(1000),
        }
    }

    #[test]
    fn times_and_lengths_read_back_exactly_as_written() {
        // Regression (the manifest fuzz target): serde_json's fast float parsing can be one ulp
        // off, so a manifest the server parses, writes and parses again (the review page's
        // answer) came back different; with `float_roundtrip` every f64 reads back exactly.
        let m = Marker {
            utc: "t".into(),
            offset_secs: 0.0,
            label: String::new(),
            sealed_label: None,
            by: "pedal".into(),
        };
        for text in [
            "9.60402102123842989e-300",
            "8.36705911238380268e-296",
            "12.3",
        ] {
            let json = format!(r#"{{"utc":"t","offset_secs":{text},"label":"","by":"pedal"}}"#);
            let first: Marker = serde_json::from_str(&json).unwrap();
            let again: Marker =
                serde_json::from_str(&serde_json::to_string(&first).unwrap()).unwrap();
            assert_eq!(again, first, "{text}");
            assert_ne!(first, m);
        }
    }

    #[test]
    fn chain_changes_with_every_edit_of_the_list() {
        let inits = vec![obj(0)];
        let frags: Vec<_> = (0..4).map(obj).collect();
        let base = chain("r", &inits, &frags);
        let mut removed = frags.clone();
        removed.remove(2);
        let mut swapped = frags.clone();
        swapped.swap(1, 2);
        let mut replaced = frags.clone();
        replaced[3].sha256 = "0".repeat(64);
        for other in [removed, swapped, replaced] {
            assert_ne!(chain("r", &inits, &other), base);
        }
        assert_ne!(chain("other", &inits, &frags), base);
        assert_eq!(chain("r", &inits, &frags), base);
    }
}
