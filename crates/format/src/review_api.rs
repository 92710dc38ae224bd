//! The review page's messages, typed once for the server that writes or reads them and the
//! page's WebAssembly that reads or writes them (`docs/review.md`, "The JSON API").

use serde::{Deserialize, Serialize};

use crate::manifest::{Manifest, Marker, Status};
use crate::reviewer::Kdf;

/// `POST /api/login/params` and the first half of `POST /api/login`: who signs in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamsRequest {
    /// The sign-in name.
    pub user: String,
}

/// The answer to `POST /api/login/params`: how to stretch the passphrase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// Argon2id parameters and salt (made up, stably, for a name the server does not know).
    pub kdf: Kdf,
}

/// `POST /api/login`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginRequest {
    /// The sign-in name.
    pub user: String,
    /// Base64 of the auth key the passphrase gives.
    pub auth: String,
}

/// The answer to a right `POST /api/login`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginAnswer {
    /// The reviewer's name, bound into the wrapped key.
    pub user: String,
    /// The session's CSRF token, for the `X-Neoflix-CSRF` header.
    pub csrf: String,
    /// Base64 of nonce || AES-256-GCM(wrap key, department secret key).
    pub wrapped_key: String,
    /// The department key the wrapped key is.
    pub department_key_id: String,
    /// The reviewer's salt: the page checks it is the one it stretched with.
    pub salt: String,
    /// When the session ends at the latest unless used (RFC 3339 UTC).
    pub expires_utc: String,
}

/// The answer to `GET /api/session`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionAnswer {
    /// The reviewer signed in.
    pub user: String,
    /// The session's CSRF token.
    pub csrf: String,
    /// When the session ends at the latest unless used.
    pub expires_utc: String,
}

/// `POST /api/recordings/{id}/download`: what the page is about to make, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadRequest {
    /// Start, seconds from the first frame; `None`: the beginning.
    pub from_secs: Option<f64>,
    /// End, seconds from the first frame; `None`: the end.
    pub to_secs: Option<f64>,
}

impl DownloadRequest {
    /// Why the range cannot be one the page makes, if it cannot: what the audit log records
    /// must be a range of the recording.
    pub fn problem(&self) -> Option<&'static str> {
        let ok = |v: Option<f64>| v.is_none_or(|s| s.is_finite() && s >= 0.0);
        if !ok(self.from_secs) || !ok(self.to_secs) {
            return Some(
                "from_secs and to_secs are seconds from the first frame: finite, not negative",
            );
        }
        match (self.from_secs, self.to_secs) {
            (Some(f), Some(t)) if t <= f => Some("to_secs must be after from_secs"),
            _ => None,
        }
    }
}

/// Where a recording stands on the server: its objects are arriving, or its manifest was
/// accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Upload {
    /// Objects have arrived, the manifest not yet: listed, not yet opened.
    Uploading,
    /// The manifest was checked and accepted.
    Complete,
}

impl Upload {
    /// The name on the wire and in the server's index.
    pub fn as_str(self) -> &'static str {
        match self {
            Upload::Uploading => "uploading",
            Upload::Complete => "complete",
        }
    }

    /// The state [`Upload::as_str`] names.
    pub fn parse(s: &str) -> Option<Upload> {
        match s {
            "uploading" => Some(Upload::Uploading),
            "complete" => Some(Upload::Complete),
            _ => None,
        }
    }
}

/// A recording in the list (`docs/review.md`, "A recording Summary"). The fields from the
/// manifest are `None` while it is uploading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The box's recording id.
    pub id: String,
    /// The box.
    pub device: String,
    /// Uploading or complete.
    pub upload: Upload,
    /// Complete or interrupted.
    pub status: Option<Status>,
    /// What started it.
    pub trigger: Option<String>,
    /// Why it stopped.
    pub stop_reason: Option<String>,
    /// First frame (start of the pre-roll).
    pub first_frame_utc: Option<String>,
    /// The trigger.
    pub trigger_utc: Option<String>,
    /// The stop.
    pub stop_utc: Option<String>,
    /// Seconds before the trigger.
    pub preroll_secs: Option<f64>,
    /// Seconds in all.
    pub duration_secs: Option<f64>,
    /// The manifest's markers.
    #[serde(default)]
    pub markers: Vec<Marker>,
    /// The device certificate that signed the manifest.
    pub signer: Option<String>,
}

/// The answer to `GET /api/recordings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordingsAnswer {
    /// Newest first.
    pub recordings: Vec<Summary>,
    /// There are more than were listed: narrow the filter.
    pub truncated: bool,
}

/// The answer to `GET /api/recordings/{id}`: what the page checks and plays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordingAnswer {
    /// The box.
    pub device: String,
    /// The recording id.
    pub id: String,
    /// Its row in the list.
    pub summary: Summary,
    /// The server's copy of its manifest.
    pub manifest: Manifest,
    /// Where its objects are: this, then an object's name.
    pub objects: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_states_have_one_name_on_the_wire_and_in_the_index() {
        for u in [Upload::Uploading, Upload::Complete] {
            assert_eq!(Upload::parse(u.as_str()), Some(u));
            assert_eq!(
                serde_json::to_string(&u).unwrap(),
                format!("\"{}\"", u.as_str())
            );
        }
        assert_eq!(Upload::parse("done"), None);
    }

    #[test]
    fn a_download_range_must_be_one_the_page_could_make() {
        let r = |from_secs, to_secs| DownloadRequest { from_secs, to_secs }.problem();
        assert_eq!(r(None, None), None);
        assert_eq!(r(Some(0.0), Some(12.5)), None);
        assert_eq!(r(Some(3.0), None), None);
        assert!(r(Some(-1.0), None).is_some());
        assert!(r(None, Some(f64::INFINITY)).is_some());
        assert!(r(Some(f64::NAN), Some(1.0)).is_some());
        assert!(r(Some(5.0), Some(5.0)).is_some());
        assert!(r(Some(5.0), Some(2.0)).is_some());
    }

    #[test]
    fn unknown_download_fields_are_refused() {
        assert!(serde_json::from_str::<DownloadRequest>(r#"{"from_secs":1,"x":2}"#).is_err());
        let d: DownloadRequest = serde_json::from_str("{}").unwrap();
        assert_eq!((d.from_secs, d.to_secs), (None, None));
    }
}
