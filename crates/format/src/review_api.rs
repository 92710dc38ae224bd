//! The review page's messages, typed once for the server that writes or reads them and the
//! page's WebAssembly that reads or writes them (`docs/review.md`, "The JSON API").

use serde::{Deserialize, Serialize};

use crate::manifest::{Manifest, Marker, Status};
use crate::reviewer::{Kdf, Role};

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
    /// What the person may do.
    pub roles: Vec<Role>,
    /// Base64 of nonce || AES-256-GCM(wrap key, department secret key); `None` for roles that
    /// do not watch video.
    pub wrapped_key: Option<String>,
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
    /// What the person may do (as the server holds it now).
    pub roles: Vec<Role>,
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

/// The three consent questions (`docs/privacy.md`, "Consent").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Question {
    /// To be filmed at all.
    Filmed,
    /// To be watched by the review team.
    Review,
    /// To be used for teaching or research.
    Use,
}

impl Question {
    /// Every question, in the order the page asks them.
    pub const ALL: [Question; 3] = [Question::Filmed, Question::Review, Question::Use];

    /// The name on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Question::Filmed => "filmed",
            Question::Review => "review",
            Question::Use => "use",
        }
    }

    /// The question [`Question::as_str`] names.
    pub fn parse(s: &str) -> Option<Question> {
        Question::ALL.into_iter().find(|q| q.as_str() == s)
    }
}

/// An answer to a consent question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Not asked or not answered yet.
    #[default]
    Pending,
    /// Given.
    Granted,
    /// Refused.
    Refused,
}

impl Answer {
    /// The name on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Pending => "pending",
            Answer::Granted => "granted",
            Answer::Refused => "refused",
        }
    }

    /// The answer [`Answer::as_str`] names.
    pub fn parse(s: &str) -> Option<Answer> {
        [Answer::Pending, Answer::Granted, Answer::Refused]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

/// One question's answer as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Recorded {
    /// The answer.
    pub answer: Answer,
    /// Who recorded it (a chair's name); `None` while never recorded.
    pub by: Option<String>,
    /// When (RFC 3339 UTC).
    pub utc: Option<String>,
    /// The chair's note.
    #[serde(default)]
    pub note: String,
    /// The consent form's reference.
    #[serde(default)]
    pub form_ref: String,
}

/// A recording's consent, one answer per question.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Consent {
    /// To be filmed.
    pub filmed: Recorded,
    /// To be reviewed.
    pub review: Recorded,
    /// To be used for teaching or research.
    #[serde(rename = "use")]
    pub use_: Recorded,
}

impl Consent {
    /// The answer to `q`.
    pub fn get(&self, q: Question) -> &Recorded {
        match q {
            Question::Filmed => &self.filmed,
            Question::Review => &self.review,
            Question::Use => &self.use_,
        }
    }

    /// The answer to `q`, to change.
    pub fn get_mut(&mut self, q: Question) -> &mut Recorded {
        match q {
            Question::Filmed => &mut self.filmed,
            Question::Review => &mut self.review,
            Question::Use => &mut self.use_,
        }
    }

    /// Whether a refusal means the recording must go: refusing to be filmed or reviewed.
    pub fn refused(&self) -> Option<Question> {
        [Question::Filmed, Question::Review]
            .into_iter()
            .find(|q| self.get(*q).answer == Answer::Refused)
    }
}

/// Longest consent note or withdrawal reason, in characters.
pub const MAX_NOTE_CHARS: usize = 500;
/// Longest consent form reference, in characters.
pub const MAX_FORM_REF_CHARS: usize = 100;

/// Unicode's bidirectional overrides and isolates: text that shows in another order than it
/// reads, in the page and in an export.
fn reorders(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}')
}

/// Why a free text cannot go into the log: too long, or with control characters (which could
/// forge lines in an export) or bidirectional overrides (which could make it read otherwise).
fn text_problem(what: &str, text: &str, max: usize, required: bool) -> Option<String> {
    if required && text.trim().is_empty() {
        return Some(format!(
            "{what} must not be empty: it goes into the audit log"
        ));
    }
    if text.chars().count() > max {
        return Some(format!("{what} is longer than {max} characters"));
    }
    if text.chars().any(|c| c.is_control() || reorders(c)) {
        return Some(format!(
            "{what} must be one line without control characters or direction overrides"
        ));
    }
    None
}

/// `POST /api/recordings/{id}/consent`: a chair records one answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRequest {
    /// The question.
    pub question: Question,
    /// The answer.
    pub answer: Answer,
    /// A note (at most [`MAX_NOTE_CHARS`]).
    #[serde(default)]
    pub note: String,
    /// The consent form's reference (at most [`MAX_FORM_REF_CHARS`]).
    #[serde(default)]
    pub form_ref: String,
}

impl ConsentRequest {
    /// What is wrong with it, if anything.
    pub fn problem(&self) -> Option<String> {
        text_problem("note", &self.note, MAX_NOTE_CHARS, false)
            .or_else(|| text_problem("form_ref", &self.form_ref, MAX_FORM_REF_CHARS, false))
    }
}

/// `POST /api/recordings/{id}/withdraw`: a chair withdraws a recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WithdrawRequest {
    /// Why (at most [`MAX_NOTE_CHARS`]), for the audit log.
    pub reason: String,
}

impl WithdrawRequest {
    /// What is wrong with it, if anything.
    pub fn problem(&self) -> Option<String> {
        text_problem("reason", &self.reason, MAX_NOTE_CHARS, true)
    }
}

/// `POST /api/recordings/{id}/teaching`: a chair moves a recording into the teaching library
/// (`days`: kept that long from now) or out of it (`days: null`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeachingRequest {
    /// Days to keep it from now; `None` takes it out of the library.
    pub days: Option<u32>,
}

/// A recording's place in its lifecycle (`docs/privacy.md`, "Retention").
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Lifecycle {
    /// When it is deleted (RFC 3339 UTC); `None` while nothing deletes it (no retention
    /// configured, or a legal hold past its date).
    pub delete_after_utc: Option<String>,
    /// Under a legal hold.
    pub held: bool,
    /// In the teaching library until then.
    pub teaching_until_utc: Option<String>,
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
    /// When its first object reached the server, by the server's clock: what retention counts
    /// from.
    #[serde(default)]
    pub received_utc: String,
    /// The answers to the consent questions.
    #[serde(default)]
    pub consent: Consent,
    /// When it is deleted, held, or in the teaching library.
    #[serde(default)]
    pub lifecycle: Lifecycle,
}

/// The answer to `GET /api/recordings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordingsAnswer {
    /// Newest first.
    pub recordings: Vec<Summary>,
    /// There are more than were listed: narrow the filter.
    pub truncated: bool,
    /// The department's policy: a recording whose review consent is pending may be opened.
    pub review_while_pending: bool,
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
    fn notes_and_reasons_are_one_line_of_plain_text() {
        let c = |note: &str| ConsentRequest {
            question: Question::Review,
            answer: Answer::Granted,
            note: note.into(),
            form_ref: String::new(),
        };
        assert_eq!(c("mother, at the bedside").problem(), None);
        assert_eq!(c("").problem(), None);
        for bad in [
            "two\nlines",
            "tab\there",
            "evil\u{202E}txt.exe",
            &"x".repeat(501),
        ] {
            assert!(c(bad).problem().is_some(), "{bad:?}");
        }
        let w = |reason: &str| WithdrawRequest {
            reason: reason.into(),
        };
        assert!(w("  ").problem().is_some(), "a withdrawal says why");
        assert_eq!(w("parents withdrew").problem(), None);
        assert!(
            serde_json::from_str::<ConsentRequest>(r#"{"question":"sharing","answer":"granted"}"#)
                .is_err()
        );
    }

    #[test]
    fn unknown_download_fields_are_refused() {
        assert!(serde_json::from_str::<DownloadRequest>(r#"{"from_secs":1,"x":2}"#).is_err());
        let d: DownloadRequest = serde_json::from_str("{}").unwrap();
        assert_eq!((d.from_secs, d.to_secs), (None, None));
    }
}
